"""fairseq-generate --score-reference with --task multimodal_translation
(fairseq's SequenceScorer through task.build_generator/inference_step): it
scores every reference of the split, for NMT and for MMT with the pairs'
regions, as the model's own teacher-forced log-probabilities."""

import math
import re
from collections import defaultdict

import pytest
import torch

from tests.conftest import REPO, run_fairseq
from vtlm_fairseq.hub import load_checkpoint

USER_DIR = ["--user-dir", REPO / "vtlm_fairseq"]


def generate_output(log):
    """fairseq-generate's lines by sentence id: ``S``, ``T`` (text), ``H``
    [(score, text)] and ``P`` [[positional scores]], one per hypothesis,
    in fairseq's base 2."""
    out = defaultdict(lambda: {"H": [], "P": []})
    for kind, i, rest in re.findall(r"^([STHP])-(\d+)\t(.*)$", log, re.M):
        entry = out[int(i)]
        if kind in "ST":
            entry[kind] = rest
        elif kind == "H":
            score, text = rest.split("\t")
            entry["H"].append((float(score), text))
        else:
            entry["P"].append([float(x) for x in rest.split()])
    return dict(out)


def fairseq_generate(toy_data, checkpoint, *extra, features=True):
    """fairseq-generate on the test split of the toy data (batches of 8)."""
    data, store, _ = toy_data
    args = [data, *USER_DIR, "--task", "multimodal_translation", "--path", checkpoint, "--gen-subset", "test",
            "--batch-size", "8", "--cpu", *extra]  # fmt: skip
    if features:
        args += ["--region-features", store]
    return generate_output(run_fairseq("fairseq-generate", args))


def score_reference(toy_data, checkpoint, features=True):
    return fairseq_generate(toy_data, checkpoint, "--score-reference", features=features)


@pytest.fixture(scope="module", params=["mmt", "nmt"])
def scored(request, toy_data):
    """(kind, checkpoint, --score-reference output)"""
    checkpoint = request.getfixturevalue(f"{request.param}_checkpoint")
    return request.param, checkpoint, score_reference(toy_data, checkpoint, features=request.param == "mmt")


def teacher_forced(model, task, split, with_regions=True):
    """Per pair id, the log-probability (natural log) of each target token,
    from the model's forward pass over the split's batches."""
    task.load_dataset(split)
    batches = task.get_batch_iterator(task.dataset(split), max_sentences=8).next_epoch_itr(shuffle=False)
    out = {}
    with torch.no_grad():
        for batch in batches:
            net_input = {k: v for k, v in batch["net_input"].items() if with_regions or not k.startswith("region_")}
            lprobs = model.get_normalized_probs(model(**net_input), log_probs=True)
            target = batch["target"]
            per_token = lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            for i, row, tokens in zip(batch["id"].tolist(), per_token, target):
                out[i] = row[tokens.ne(task.target_dictionary.pad())]
    return out


def test_score_reference_scores_every_reference(scored, toy_data):
    kind, checkpoint, out = scored
    data, store, _ = toy_data
    pairs = len((data / "test.order").read_text().split())
    assert sorted(out) == list(range(pairs))
    model, task, _ = load_checkpoint(str(checkpoint), {"data": str(data), "region_features": str(store)})
    assert (task.store is not None) == (kind == "mmt")
    expected = teacher_forced(model, task, "test")
    for i, entry in out.items():
        ((score, text),) = entry["H"]
        assert text == entry["T"].replace("<<unk>>", "<unk>")  # the reference is what was scored (T- escapes unk)
        (positional,) = entry["P"]
        tokens = expected[i]
        assert len(positional) == len(tokens)  # every target token and the final </s>
        assert positional == pytest.approx((tokens / math.log(2)).tolist(), abs=1e-3)  # printed with 4 decimals
        assert score == pytest.approx(float(tokens.mean()) / math.log(2), abs=1e-5)
    if kind == "mmt":  # the scorer saw the regions: without them the scores are not these
        blind = teacher_forced(model, task, "test", with_regions=False)
        gaps = [abs(out[i]["H"][0][0] - float(blind[i].mean()) / math.log(2)) for i in out]
        assert max(gaps) > 1e-4
