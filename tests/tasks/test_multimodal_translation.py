import re

import pytest
import torch

from tests.conftest import REPO, TINY_DIMS, finetune, run_fairseq, setup_fairseq
from vtlm_fairseq.data.feature_store import FeatureStore

USER_DIR = ["--user-dir", REPO / "vtlm_fairseq"]


@pytest.fixture(scope="module")
def mmt(mmt_checkpoint):
    return mmt_checkpoint


@pytest.fixture(scope="module")
def nmt(nmt_checkpoint):
    return nmt_checkpoint


def generate(toy_data, checkpoint, *extra, features=True):
    data, store, _ = toy_data
    args = [data, *USER_DIR, "--task", "multimodal_translation", "--path", checkpoint, "--gen-subset", "test",
            "--beam", "3", "--batch-size", "8", "--cpu", *extra]  # fmt: skip
    if features:
        args += ["--region-features", store]
    return run_fairseq("fairseq-generate", args)


def hypotheses(log):
    return [(int(m.group(1)), m.group(2)) for m in re.finditer(r"^H-(\d+)\t[^\t]*\t(.*)$", log, re.M)]


@pytest.mark.parametrize("kind", ["mmt", "nmt"])
def test_generate_translates_every_sentence_in_corpus_order(toy_data, kind, request):
    checkpoint = request.getfixturevalue(kind)
    log = generate(toy_data, checkpoint, features=kind == "mmt")
    ids = [i for i, _ in hypotheses(log)]
    assert ids == list(range(21))  # 21 test pairs, batches of 8: nothing dropped


def test_shuffled_images_at_decoding(toy_data, mmt):
    data, store, _ = toy_data
    _, task = setup_fairseq([str(data), "--task", "multimodal_translation", "--region-features", str(store),
                             "--image-order", "shuffled", "--arch", "vtlm_translation_tiny"])  # fmt: skip
    task.load_dataset("test")
    shuffled = task.dataset("test").regions.rows
    order = (data / "test.order").read_text().split()
    aligned = [FeatureStore(store).index[n] for n in order]
    assert sorted(shuffled.tolist()) == sorted(aligned) and shuffled.tolist() != aligned
    log = generate(toy_data, mmt, "--image-order", "shuffled")
    assert len(hypotheses(log)) == 21


@pytest.fixture(scope="module")
def generated_beam2(toy_data, mmt):
    """fairseq-generate's hypotheses of the test split, by id."""
    return dict(hypotheses(generate(toy_data, mmt, "--beam", "2")))


def interactive(toy_data, checkpoint, lines, *extra, features=True):
    """fairseq-interactive's CompletedProcess on ``lines``."""
    import subprocess

    from tests.conftest import fairseq_command

    data, store, _ = toy_data
    args = [data, *USER_DIR, "--task", "multimodal_translation", "--path", checkpoint, "--beam", "2", "--cpu", *extra]
    if features:
        args += ["--region-features", store]
    return subprocess.run([fairseq_command("fairseq-interactive")] + [str(a) for a in args],
                          input="".join(f"{line}\n" for line in lines), capture_output=True, text=True)  # fmt: skip


def test_interactive_with_an_image_per_line(toy_data, mmt, generated_beam2):
    data, _, world = toy_data
    order = (data / "test.order").read_text().split()
    raw = (world / "raw" / "test.en").read_text().splitlines()
    tok = (data / "bpe" / "test.en").read_text().splitlines()
    proc = interactive(toy_data, mmt, [f"{order[i]}\t{tok[i]}" for i in range(5)],
                       "--batch-size", "2", "--buffer-size", "3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    inter = dict(hypotheses(proc.stdout))
    assert len(inter) == 5
    # the same sentences through fairseq-generate (same images) give the same output
    assert all(inter[i] == generated_beam2[i] for i in range(5)), (inter, generated_beam2, raw[:5])


def test_interactive_reports_bad_lines_and_goes_on(toy_data, mmt, generated_beam2):
    data, store, _ = toy_data
    order = (data / "test.order").read_text().split()
    tok = (data / "bpe" / "test.en").read_text().splitlines()
    unknown = f"unknown_{order[6]}"
    assert unknown not in FeatureStore(store)
    # line i is test pair i, spoilt on the bad lines; with buffers of 3 the
    # second buffer is all bad
    bad = {
        1: (f"{order[1]}\tx\t{tok[1]}", "2 tabs"),
        3: (tok[3], "no tab"),
        4: ("", "empty line"),
        5: (order[5], f"image '{order[5]}' without a sentence"),
        7: (f"{unknown}\t{tok[7]}", f"image '{unknown}' is not in {store}"),
    }
    lines = [bad[i][0] if i in bad else f"{order[i]}\t{tok[i]}" for i in range(9)]
    good = [i for i in range(len(lines)) if i not in bad]
    proc = interactive(toy_data, mmt, lines, "--batch-size", "2", "--buffer-size", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i, (_, problem) in bad.items():
        assert re.search(rf"input line {i + 1}: {re.escape(problem)}.*; skipped \(no output for id {i}\)",
                         proc.stderr), proc.stderr[-3000:]  # fmt: skip
    out = hypotheses(proc.stdout)
    # the good lines keep their ids, and each id is its own line's translation
    assert [i for i, _ in out] == good
    assert all(h == generated_beam2[i] for i, h in out)
    assert [int(i) for i in re.findall(r"^S-(\d+)\t", proc.stdout, re.M)] == good


def test_interactive_text_only_reports_image_lines(toy_data, nmt):
    data, _, _ = toy_data
    order = (data / "test.order").read_text().split()
    tok = (data / "bpe" / "test.en").read_text().splitlines()
    proc = interactive(toy_data, nmt, [f"{order[0]}\t{tok[0]}", tok[1]], features=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"input line 1: a tab: .*need --region-features", proc.stderr)
    assert [i for i, _ in hypotheses(proc.stdout)] == [1]


def test_finetuned_model_needs_no_pretraining_folder(toy_data, vtlm_checkpoint, tmp_path, monkeypatch):
    import shutil

    from vtlm_fairseq.hub import VTLMTranslator

    data, store, world = toy_data
    # our own copy of the shared VTLM, named by a relative path as a recipe would
    (tmp_path / "pretraining").mkdir()
    shutil.copy(vtlm_checkpoint, tmp_path / "pretraining" / "checkpoint_last.pt")
    monkeypatch.chdir(tmp_path)
    pretrained = "pretraining/checkpoint_last.pt"
    finetune(toy_data, tmp_path / "mmt", pretrained=pretrained)
    shutil.rmtree(tmp_path / "pretraining")
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "mmt", moved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    log = run_fairseq("fairseq-generate", [data, *USER_DIR, "--task", "multimodal_translation",
                      "--region-features", store, "--path", moved / "checkpoint_last.pt", "--gen-subset", "test",
                      "--beam", "2", "--batch-size", "8", "--cpu"], cwd=elsewhere)  # fmt: skip
    assert [i for i, _ in hypotheses(log)] == list(range(len((data / "test.order").read_text().split())))
    monkeypatch.chdir(elsewhere)
    mt = VTLMTranslator.from_pretrained(str(moved), "checkpoint_last.pt", data=str(data),
                                        region_features=str(store), beam=2)  # fmt: skip
    raw = (world / "raw" / "test.en").read_text().splitlines()
    assert isinstance(mt.translate(raw[0], images=(data / "test.order").read_text().split()[0]), str)
    # a killed run resumes from its checkpoint_last.pt, not from the (gone) VTLM
    monkeypatch.chdir(tmp_path)
    resumed = finetune(toy_data, tmp_path / "mmt", pretrained=pretrained, updates=12)
    assert f"the run resumes from {tmp_path / 'mmt' / 'checkpoint_last.pt'}" in resumed
    assert "num_updates: 12 >= max_update: 12" in resumed


def test_checkpoint_that_does_not_fit_is_one_line_exit_2(toy_data, mmt):
    import subprocess

    from tests.conftest import fairseq_command

    data, _, _ = toy_data
    # an MMT without --region-features
    proc = subprocess.run([fairseq_command("fairseq-generate"), str(data), *map(str, USER_DIR), "--task",
                           "multimodal_translation", "--path", str(mmt), "--gen-subset", "test", "--cpu"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert re.search(r"is an MMT taking \d+-dim region features: give --region-features", proc.stderr)


def test_missing_split_and_data_bin_are_input_errors(toy_data, tmp_path):
    from vtlm_fairseq.errors import InputError

    data, store, _ = toy_data
    _, task = setup_fairseq([str(data), "--task", "multimodal_translation", "--arch", "vtlm_translation_tiny"])
    with pytest.raises(InputError, match=r"split 'test_9999' not found"):
        task.load_dataset("test_9999")
    with pytest.raises(InputError, match=f"^{re.escape(str(tmp_path / 'nope'))}: no such data-bin folder"):
        setup_fairseq([str(tmp_path / "nope"), "--task", "multimodal_translation", "--arch", "vtlm_translation_tiny"])


def test_constraints_and_images_are_refused(toy_data):
    from vtlm_fairseq.errors import InputError

    data, store, _ = toy_data
    _, task = setup_fairseq([str(data), "--task", "multimodal_translation", "--region-features", str(store),
                             "--arch", "vtlm_translation_tiny"])  # fmt: skip
    name = FeatureStore(store).names[0]
    tokens, lengths = task.get_interactive_tokens_and_lengths([f"{name}\ta sentence"], lambda x: x)
    with pytest.raises(InputError, match="--constraints cannot be used with --region-features"):
        task.build_dataset_for_inference(tokens, lengths, constraints=torch.zeros(1, 1, dtype=torch.long))


def test_hub_interface(toy_data, mmt, nmt):
    from vtlm_fairseq.hub import VTLMTranslator

    data, store, world = toy_data
    mt = VTLMTranslator.from_pretrained(str(mmt.parent), "checkpoint_last.pt", data=str(data),
                                        region_features=str(store), beam=2)  # fmt: skip
    order = (data / "test.order").read_text().split()
    raw = (world / "raw" / "test.en").read_text().splitlines()
    one = mt.translate(raw[0], images=order[0])
    assert isinstance(one, str)
    both = mt.translate(raw[:2], images=order[:2])
    assert both[0] == one and len(both) == 2
    assert mt.translate(raw[0], images=FeatureStore(store).read(order[0])) == one
    with pytest.raises(ValueError, match="give an image"):
        mt.translate(raw[0])
    text_only = VTLMTranslator.from_pretrained(str(nmt.parent), "checkpoint_last.pt", data=str(data), beam=2)
    assert isinstance(text_only.translate(raw[0]), str)
    with pytest.raises(ValueError, match="without images"):
        text_only.translate(raw[0], images=order[0])


def test_missing_images_drop_policy(toy_data, tmp_path):
    import shutil

    data, store, _ = toy_data
    local = tmp_path / "bin"
    shutil.copytree(data, local)
    order = (local / "valid.order").read_text().splitlines()
    order[2] = "gone.jpg"
    (local / "valid.order").write_text("\n".join(order) + "\n")
    _, task = setup_fairseq([str(local), "--task", "multimodal_translation", "--region-features", str(store),
                             "--missing-images", "drop", "--arch", "vtlm_translation_tiny"])  # fmt: skip
    task.load_dataset("valid")
    ds = task.dataset("valid")
    assert len(ds) == 36 and 2 not in ds.pair_indices
    batch = ds.collater([ds[i] for i in range(4)])
    assert batch["id"].tolist() == [0, 1, 2, 3]  # corpus order within the batch
    rows = FeatureStore(store).index
    assert torch.equal(batch["net_input"]["region_mask"].sum(1) > 0, torch.ones(4, dtype=torch.bool))
    assert rows[order[3]] == ds.regions.rows[ds.pair_indices[2]]


def test_validate_scores_every_pair(toy_data, mmt):
    data, store, _ = toy_data
    log = run_fairseq("fairseq-validate", [data, *USER_DIR, "--task", "multimodal_translation",
                      "--region-features", store, "--path", mmt, "--valid-subset", "valid,test",
                      "--batch-size", "8", "--cpu"])  # fmt: skip
    # 37 and 21 pairs, batches of 8: the remainder batches count too
    assert re.search(r"valid on 'valid' subset .*\| bsz 37\b", log)
    assert re.search(r"valid on 'test' subset .*\| bsz 21\b", log)


def test_resume_at_an_epoch_boundary_continues_the_same_run(toy_data, tmp_path):
    """fairseq orders a dataset under (seed + the epoch it builds batches
    at); the task pins that to epoch 1, so a run stopped at the end of epoch
    1 and resumed trains on the batches the uninterrupted run does."""
    from tests.test_fairseq_train import records

    data, store, _ = toy_data
    common = [data, "--user-dir", REPO / "vtlm_fairseq", "--task", "multimodal_translation",
              "--region-features", store, "--arch", "vtlm_translation_tiny", "--encoder-embed-dim", "32",
              "--encoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
              "--criterion", "label_smoothed_cross_entropy", "--optimizer", "adam", "--lr", "1e-3",
              "--batch-size", "16", "--cpu", "--seed", "7", "--disable-validation", "--num-workers", "0",
              "--log-interval", "1", "--log-format", "json"]  # fmt: skip
    straight = records(run_fairseq("fairseq-train", common + ["--max-epoch", "2", "--save-dir", tmp_path / "a"]))
    epoch_end = max(int(r["num_updates"]) for r in straight if r["epoch"] == 1)
    run_fairseq("fairseq-train", common + ["--max-update", epoch_end, "--save-dir", tmp_path / "b"])
    resumed = records(run_fairseq("fairseq-train", common + ["--max-epoch", "2", "--save-dir", tmp_path / "b"]))
    assert resumed and resumed[0]["num_updates"] == str(epoch_end + 1)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight[epoch_end:]]


@pytest.mark.parametrize("case", ["vtlm-checkpoint", "missing-path", "tlm-task-generates"])
def test_wrong_checkpoint_for_generate_is_one_line_exit_2(toy_data, vtlm_checkpoint, case, tmp_path):
    """A (V)TLM given to fairseq-generate, a --path that does not exist
    (fairseq's own error, reported as ours), a (V)TLM task asked to translate."""
    import subprocess

    from tests.conftest import fairseq_command

    data, store, _ = toy_data
    task, path, message = {
        "vtlm-checkpoint": ("multimodal_translation", vtlm_checkpoint, "a (V)TLM of pre-training"),
        "missing-path": ("multimodal_translation", tmp_path / "nosuch.pt", "Model file not found"),
        "tlm-task-generates": ("visual_tlm", vtlm_checkpoint, "a (V)TLM does not translate"),
    }[case]
    proc = subprocess.run([fairseq_command("fairseq-generate"), str(data), *map(str, USER_DIR), "--task", task,
                           "--region-features", str(store), "--path", str(path), "--gen-subset", "test", "--cpu"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "| ERROR |" in line]
    assert len(errors) == 1 and message in errors[0]


def test_wrong_criterion_and_pretrained_kind_are_input_errors(toy_data, mmt):
    from vtlm_fairseq.errors import InputError

    data, store, _ = toy_data
    tiny = ["--arch", "vtlm_translation_tiny", *TINY_DIMS]
    cfg, task = setup_fairseq([str(data), "--task", "multimodal_translation", *tiny, "--criterion", "vtlm_loss"])
    with pytest.raises(InputError, match="vtlm_loss is the \\(V\\)TLM pre-training loss"):
        task.build_criterion(cfg.criterion)
    cfg, task = setup_fairseq([str(data), "--task", "multimodal_translation", "--region-features", str(store), *tiny,
                               "--pretrained-checkpoint", str(mmt), "--save-dir", str(mmt.parent / "never")])  # fmt: skip
    with pytest.raises(InputError, match="a fine-tuned translation model \\(it has a decoder\\)"):
        task.build_model(cfg.model)
    cfg, task = setup_fairseq([str(data), "--task", "visual_tlm", "--region-features", str(store), "--arch",
                               "vtlm_tiny", *TINY_DIMS, "--criterion", "label_smoothed_cross_entropy"])  # fmt: skip
    with pytest.raises(InputError, match="trains with --criterion vtlm_loss"):
        task.build_criterion(cfg.criterion)


def test_a_store_without_any_image_of_a_split_and_a_negative_seed(toy_data, tmp_path):
    from tests.data.test_feature_store import make_store
    from vtlm_fairseq.errors import InputError

    data, store, _ = toy_data
    make_store(tmp_path / "other.h5")  # images of another corpus
    tiny = ["--arch", "vtlm_translation_tiny", *TINY_DIMS]
    _, task = setup_fairseq([str(data), "--task", "multimodal_translation", "--region-features",
                             str(tmp_path / "other.h5"), "--missing-images", "drop", *tiny])  # fmt: skip
    with pytest.raises(InputError, match=r"test.order: none of the \d+ images of split 'test' is in"):
        task.load_dataset("test")
    _, task = setup_fairseq([str(data), "--task", "multimodal_translation", "--region-features", str(store),
                             "--image-order", "shuffled", "--image-order-seed", "-5", *tiny])  # fmt: skip
    with pytest.raises(InputError, match="--image-order-seed must be at least 0, not -5"):
        task.load_dataset("test")


def test_source_degradation_masks_training_entities_only(toy_data):
    """--source-entity-mask-prob 1 masks every entity word of the training
    sources (a <mask> per word), and leaves validation sources alone."""
    data, store, world = toy_data
    _, task = setup_fairseq([str(data), "--task", "multimodal_translation", "--region-features", str(store),
                             "--arch", "vtlm_translation_tiny", "--source-entity-mask-prob", "1",
                             "--entity-words", str(world / "lexicon.json")])  # fmt: skip
    for split in ("train", "valid"):
        task.load_dataset(split)
    train, valid = task.dataset("train"), task.dataset("valid")
    train.set_epoch(1)
    mask = task.mask_idx
    masked = [int((train[i]["source"] == mask).sum()) for i in range(20)]
    assert all(n >= 1 for n in masked)  # every toy caption names an object
    assert all(int((valid[i]["source"] == mask).sum()) == 0 for i in range(20))
    plain = task.datasets["train"].src[0]  # the binarised source, untouched
    assert len(train[0]["source"]) <= len(plain) + 1 and mask not in plain.tolist()
