import pytest

from vtlm_fairseq.toy_world.ambiguity import ambiguous_word_accuracy

BAT = {"en": "bat", "de": "Fledermaus", "class": "Bat", "alternatives": ["Schläger"]}
BALL = {"en": "ball", "de": "Fußball", "class": "Football", "alternatives": ["Tennisball"]}


def test_counts_correct_and_wrong_senses():
    hyps = [
        "Eine rote Fledermaus ist neben einem Auto.",  # correct, raw text
        "ein roter schlager liegt auf dem boden .",  # wrong sense, tokenised
        "ein mann halt einen fuß@@ ball .",  # correct, BPE'd and accent-stripped
        "ein mann halt etwas .",  # neither
        "Ein Hund.",  # no ambiguous word in the source
    ]
    annotations = [[BAT], [BAT], [BALL], [BALL], []]
    result = ambiguous_word_accuracy(hyps, annotations)
    assert result == {"ambiguous_words": 4, "correct": 2, "wrong_sense": 1, "accuracy": 50.0}


def test_whole_words_only_and_length_check():
    # "Tennisball" must not count as "Fußball" or the reverse
    assert ambiguous_word_accuracy(["ein Tennisball"], [[BALL]])["correct"] == 0
    with pytest.raises(ValueError, match="2 hypotheses but 1 annotated sources"):
        ambiguous_word_accuracy(["a", "b"], [[]])


@pytest.mark.parametrize(
    "text, message",
    [
        ("[]\n{broken\n", r"a\.jsonl:2: not JSON"),
        ("[]\n\n[]\n", r"a\.jsonl:2: empty line"),
        ('{"en": "bat"}\n', r"a\.jsonl:1: not a list of ambiguous words"),
        ('[{"en": "bat", "de": "Fledermaus", "de_np": "eine Fledermaus"}]\n', r"a\.jsonl:1: not a list"),
        ('[{"en": "bat", "de": 3, "de_np": "x", "alternatives": []}]\n', r"a\.jsonl:1: not a list"),
    ],
)
def test_bad_annotation_lines_name_file_and_line(tmp_path, text, message):
    from vtlm_fairseq.text.corpus import CorpusError
    from vtlm_fairseq.toy_world import read_annotations

    (tmp_path / "a.jsonl").write_text(text)
    with pytest.raises(CorpusError, match=message):
        read_annotations(tmp_path / "a.jsonl")
