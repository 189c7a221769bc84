"""vtlm-probe contrastive: the toy world's contrastive set scored by an MMT
with its images and with shuffled ones (per-example log-probabilities
recomputed by hand), CoMMuTE's real text scored by an NMT, bad input."""

import json
import logging
import math
import shutil

import pytest
import torch

from tests.conftest import SHARED, shared_path
from tests.probing.probe_helpers import run_probe
from vtlm_fairseq.errors import InputError
from vtlm_fairseq.probing.contrastive import derangement

COMMUTE = SHARED / "data" / "commute" / "en-de"


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def rows_of(out: str):
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_derangement_never_gives_an_example_its_own_image():
    names = [f"img{i % 7}" for i in range(40)] + ["lonely"]
    perm = derangement(names, seed=3)
    assert sorted(perm.tolist()) == list(range(len(names)))
    assert all(names[p] != name for p, name in zip(perm, names))
    assert (perm == derangement(names, seed=3)).all() and not (perm == derangement(names, seed=4)).all()
    with pytest.raises(InputError, match=r"img\.order: 3 of the 5 examples show 'a'"):
        derangement(["a", "a", "a", "b", "c"], seed=1)


@pytest.fixture(scope="module")
def mmt_rows(mmt_checkpoint, toy_data, tmp_path_factory):
    data, store, world = toy_data
    out = tmp_path_factory.mktemp("contrastive") / "rows.json"
    cset = world / "contrastive" / "test"
    assert run_probe(["contrastive", mmt_checkpoint, cset, "--data", data, "--region-features", store,
                      "--seeds", "1", "2", "--json", out]) == 0  # fmt: skip
    return json.loads(out.read_text()), cset


def test_mmt_with_correct_and_shuffled_images(mmt_rows, toy_data, capsys):
    rows, cset = mmt_rows
    images = lines(cset / "img.order")
    n = len(lines(cset / "src.en"))
    assert [(r["images"], r.get("seed")) for r in rows] == [("aligned", None), ("shuffled", 1), ("shuffled", 2)]
    for row in rows:
        examples = row["per_example"]
        assert row["examples"] == len(examples) == n
        assert row["right"] == sum(e["right"] for e in examples) and row["accuracy"] == row["right"] / n
        assert row["right_sum"] == sum(e["correct_logprob"] > e["incorrect_logprob"] for e in examples)
        for e in examples:
            for side in ("correct", "incorrect"):
                mean = e[f"{side}_logprob"] / e[f"{side}_tokens"]
                assert e[f"{side}_logprob"] < 0 and math.isclose(e[f"{side}_ppl"], math.exp(-mean))
        with capsys.disabled():
            print(f"\ncontrastive toy test, MMT, images {row['images']} (seed {row.get('seed')}): accuracy "
                  f"{row['accuracy']:.3f} per token, {row['accuracy_sum']:.3f} summed, {n} examples")  # fmt: skip
    aligned, shuffled = rows[0]["per_example"], rows[1]["per_example"]
    assert [e["image"] for e in aligned] == images
    # a derangement of the images: each example another image, the same images in all
    assert all(s["image"] != a["image"] for s, a in zip(shuffled, aligned))
    assert sorted(e["image"] for e in shuffled) == sorted(images)
    # the images reach the model: the same texts score differently
    assert any(s["correct_logprob"] != a["correct_logprob"] for s, a in zip(shuffled, aligned))


def test_log_probs_equal_the_model_s_by_hand(mmt_rows, mmt_checkpoint, toy_data):
    """The first example's correct translation is a test sentence of the data-bin:
    its tokens and image from the task's own test split, the model run by
    hand, the target's log-probabilities summed."""
    from vtlm_fairseq.hub import load_checkpoint

    rows, cset = mmt_rows
    data, store, world = toy_data
    example = rows[0]["per_example"][0]
    key = (lines(cset / "src.en")[0], lines(cset / "correct.de")[0], lines(cset / "img.order")[0])
    test = list(zip(lines(world / "raw" / "test.en"), lines(world / "raw" / "test.de"),
                    lines(world / "image_splits" / "test.txt")))  # fmt: skip
    index = test.index(key)
    model, task, _ = load_checkpoint(str(mmt_checkpoint), {"data": str(data), "region_features": str(store)})
    task.load_dataset("test")
    dataset = task.dataset("test")
    sample = dataset.collater([dataset[index]])
    with torch.no_grad():
        lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
    target = sample["target"][0]
    by_hand = lprobs[0].gather(1, target.unsqueeze(1)).sum().item()
    assert example["correct_tokens"] == len(target)
    assert math.isclose(example["correct_logprob"], by_hand, rel_tol=1e-4, abs_tol=1e-4)


def test_nmt_on_commute_text(nmt_checkpoint, toy_data, tmp_path, capsys):
    shared_path("data", "commute", "en-de")  # fails, naming it, where the shared data is absent
    data, store, _ = toy_data
    out = tmp_path / "rows.json"
    assert run_probe(["contrastive", nmt_checkpoint, COMMUTE, "--data", data, "--region-features", store,
                      "--json", out]) == 0  # fmt: skip
    printed = rows_of(capsys.readouterr().out)
    (row,) = json.loads(out.read_text())
    assert printed == [{k: v for k, v in row.items() if k != "per_example"}]
    src, correct, incorrect = (lines(COMMUTE / name) for name in ("src.en", "correct.de", "incorrect.de"))
    assert row["images"] == "none" and row["examples"] == len(src) == len(row["per_example"])
    assert 0 <= row["accuracy"] <= 1 and 0 <= row["accuracy_sum"] <= 1
    examples = row["per_example"]
    assert all(math.isfinite(e[f"{s}_logprob"]) for e in examples for s in ("correct", "incorrect"))
    assert "image" not in examples[0]
    # without the image, an example and its twin (same source, translations
    # swapped) get the same two scores: exactly one of the two is right
    where = {(s, c, w): i for i, (s, c, w) in enumerate(zip(src, correct, incorrect))}
    twins = [(i, where[(s, w, c)]) for i, (s, c, w) in enumerate(zip(src, correct, incorrect)) if (s, w, c) in where]
    assert len(twins) > len(src) // 2
    for i, j in twins:
        a, b = examples[i], examples[j]
        assert math.isclose(a["correct_logprob"], b["incorrect_logprob"], rel_tol=1e-5, abs_tol=1e-4)
        assert a["right"] != b["right"] or a["correct_mean_logprob"] == a["incorrect_mean_logprob"]
    print(f"CoMMuTE en-de text, toy NMT: accuracy {row['accuracy']:.3f} ({len(src)} examples)")


@pytest.fixture
def broken_set(toy_data, tmp_path):
    _, _, world = toy_data
    folder = tmp_path / "set"
    shutil.copytree(world / "contrastive" / "test", folder)
    return folder


def bad_line(folder, name, lineno, text):
    path = folder / name
    content = lines(path)
    content[lineno - 1] = text
    path.write_text("".join(x + "\n" for x in content), encoding="utf-8")


def drop_last_line(folder, name):
    path = folder / name
    path.write_text("".join(x + "\n" for x in lines(path)[:-1]), encoding="utf-8")


CASES = {
    "incorrect.de one line short": (lambda f: drop_last_line(f, "incorrect.de"),
                                    lambda f: [f / "src.en", f":{len(lines(f / 'src.en'))}:", "incorrect.de"]),
    "unknown image": (lambda f: bad_line(f, "img.order", 2, "nope.jpg"),
                      lambda f: [f"{f / 'img.order'}:2: image 'nope.jpg' is not in"]),
    "empty line": (lambda f: bad_line(f, "correct.de", 3, ""), lambda f: [f"{f / 'correct.de'}:3: empty line"]),
    "no incorrect.de": (lambda f: (f / "incorrect.de").unlink(), lambda f: [f / "incorrect.de", "no such file"]),
    "not a folder": (lambda f: shutil.rmtree(f), lambda f: [f, "no such folder"]),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_naming_file_and_line(case, broken_set, mmt_checkpoint, toy_data, caplog):
    data, store, _ = toy_data
    breaks, named = CASES[case]
    breaks(broken_set)
    caplog.set_level(logging.INFO)
    assert run_probe(["contrastive", mmt_checkpoint, broken_set, "--data", data, "--region-features", store]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    for part in named(broken_set):
        assert str(part) in errors[0], errors[0]


def test_mmt_without_img_order(broken_set, mmt_checkpoint, toy_data, caplog):
    data, store, _ = toy_data
    (broken_set / "img.order").unlink()
    assert run_probe(["contrastive", mmt_checkpoint, broken_set, "--data", data, "--region-features", store]) == 2
    assert f"{broken_set / 'img.order'}: no such file; a multimodal model (MMT) needs an image" in caplog.text


def test_derangement_of_single_image_set_is_refused(broken_set, mmt_checkpoint, toy_data, caplog):
    data, store, _ = toy_data
    n = len(lines(broken_set / "img.order"))
    first = lines(broken_set / "img.order")[0]
    (broken_set / "img.order").write_text(f"{first}\n" * n)
    assert run_probe(["contrastive", mmt_checkpoint, broken_set, "--data", data, "--region-features", store]) == 2
    assert f"{n} of the {n} examples show '{first}'" in caplog.text
