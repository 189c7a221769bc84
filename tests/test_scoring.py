import json

import pytest

from vtlm_fairseq.cli import score as score_cli
from vtlm_fairseq.data.corpus import CorpusError
from vtlm_fairseq.scoring import read_hypotheses, score

REFS = ["Eine rote Fledermaus ist neben einem Auto.", "Ein Mann hält einen grünen Schläger."]
# what a lowercased, accent-stripped, BPE'd model writes
HYPS = ["eine rote fleder@@ maus ist neben einem auto .", "ein mann halt einen grunen schlager ."]


def test_generate_output_is_put_in_corpus_order(tmp_path):
    path = tmp_path / "gen.txt"
    path.write_text("S-1\tx\nH-1\t-0.5\tsecond\nD-1\t-0.5\tsecond\nH-0\t-0.1\tfirst\nP-0\t-0.1\n")
    assert read_hypotheses(path) == ["first", "second"]
    path.write_text("H-0\t-0.1\tfirst\nH-2\t-0.1\tthird\n")
    with pytest.raises(CorpusError, match=r"no hypothesis for sentence ids \[1\]"):
        read_hypotheses(path)
    plain = tmp_path / "plain.txt"
    plain.write_text("a\n\nb\n")
    assert read_hypotheses(plain) == ["a", "", "b"]


def test_both_bleus_are_computed_and_named():
    result = score(HYPS, REFS, "de")
    # the paper's BLEU compares in the model's own normalised space: perfect
    assert result["bleu_tok_lc"] == 100.0
    # detokenised, case-insensitive (auto: a lowercased model) but accents differ
    assert result["bleu_detok"] < 100.0
    assert "case:lc" in result["bleu_detok_signature"] and "tok:13a" in result["bleu_detok_signature"]
    exact = score([r.lower() for r in REFS], REFS, "de")
    assert exact["bleu_detok"] == 100.0 and exact["chrf"] == 100.0
    cased = score(REFS, REFS, "de")
    assert "case:mixed" in cased["bleu_detok_signature"]
    with pytest.raises(ValueError, match="1 hypotheses for 2 references"):
        score(HYPS[:1], REFS, "de")


def test_ambiguous_word_accuracy_and_command(tmp_path, capsys):
    ann = [[{"en": "bat", "de": "Fledermaus", "de_np": "Eine rote Fledermaus", "class": "Bat",
             "alternatives": ["Schläger"]}], [{"en": "bat", "de": "Schläger", "de_np": "einen grünen Schläger",
             "class": "Baseball bat", "alternatives": ["Fledermaus"]}]]  # fmt: skip
    (tmp_path / "ann.jsonl").write_text("".join(json.dumps(a) + "\n" for a in ann))
    (tmp_path / "hyp.txt").write_text("\n".join(HYPS) + "\n")
    (tmp_path / "ref.de").write_text("\n".join(REFS) + "\n")
    score_cli.cli_main(["--hyp", str(tmp_path / "hyp.txt"), "--ref", str(tmp_path / "ref.de"),
                        "--annotations", str(tmp_path / "ann.jsonl"), "--json", str(tmp_path / "s.json")])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["ambiguous_word_accuracy"] == 100.0 and out["sentences"] == 2
    assert json.loads((tmp_path / "s.json").read_text()) == out
    (tmp_path / "short.txt").write_text(HYPS[0] + "\n")
    with pytest.raises(SystemExit) as e:
        score_cli.cli_main(["--hyp", str(tmp_path / "short.txt"), "--ref", str(tmp_path / "ref.de")])
    assert e.value.code == 1 and "1 hypotheses for 2 references" in capsys.readouterr().err
