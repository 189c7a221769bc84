"""The toy world's contrastive set (WORLD/contrastive/{split}/, CoMMuTE's
layout) against the world's text, images and ambiguity annotations."""

import json
import re

from tests.toy_world.test_world import ADJ_ENDING, GENDER_ARTICLES
from vtlm_fairseq.toy_world.ambiguity import words
from vtlm_fairseq.toy_world.contrastive import FILES
from vtlm_fairseq.toy_world.lexicon import ALL_NOUNS, COLOURS

SPLITS = ("train", "valid", "test")


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_one_example_per_ambiguous_word_and_other_sense(toy_data):
    _, _, world = toy_data
    stats = json.loads((world / "world.json").read_text())["splits"]
    for split in SPLITS:
        en, de = lines(world / "raw" / f"{split}.en"), lines(world / "raw" / f"{split}.de")
        images = lines(world / "image_splits" / f"{split}.txt")
        annotations = [json.loads(x) for x in lines(world / "ambiguity" / f"{split}.jsonl")]
        expected = [(i, item, alt) for i, items in enumerate(annotations) for item in items
                    for alt in item["alternatives"]]  # fmt: skip
        src, correct, incorrect, order = (lines(world / "contrastive" / split / name) for name in FILES)
        assert len(src) == len(correct) == len(incorrect) == len(order) == len(expected)
        assert stats[split]["contrastive_examples"] == len(expected) > 0
        for (i, item, alt), s, c, w, image in zip(expected, src, correct, incorrect, order):
            assert (s, c, image) == (en[i], de[i], images[i])
            # the same sentence but for the noun phrase, which names the other sense
            start = c.lower().index(item["de_np"].lower())
            before, after = c[:start], c[start + len(item["de_np"]) :]
            assert w.startswith(before) and w.endswith(after), (c, w)
            other_np = words(w[len(before) : len(w) - len(after)])
            assert other_np[-1] == words(alt)[-1] and len(other_np) == len(words(item["de_np"]))


def test_other_sense_agrees_in_gender(toy_data):
    """Where the senses differ in gender (Fledermaus / Schläger), article and
    adjective of the incorrect caption follow the other sense."""
    _, _, world = toy_data
    gender = {n.de: n.gender for n in ALL_NOUNS}
    stems = {c.de for c in COLOURS}
    changed = 0
    for split in SPLITS:
        folder = world / "contrastive" / split
        for c, w in zip(lines(folder / "correct.de"), lines(folder / "incorrect.de")):
            tokens = re.findall(r"\w+", w)
            (noun,) = [t for t in tokens if t in gender and t not in re.findall(r"\w+", c)]
            i = tokens.index(noun)
            adjective = next((s for s in stems if tokens[i - 1].startswith(s)), None)
            article = tokens[i - 2 if adjective else i - 1].lower()
            assert article in GENDER_ARTICLES[gender[noun]], w
            if adjective:
                assert ADJ_ENDING[(article, gender[noun])] == tokens[i - 1][len(adjective) :], w
            changed += len(set(re.findall(r"\w+", c.lower())) ^ set(re.findall(r"\w+", w.lower()))) > 2
    assert changed > 0  # some other sense has another gender: more than the noun changed
