import re
import shutil

import numpy as np
import pytest
import torch

from tests.conftest import TINY_DIMS, setup_fairseq
from vtlm_fairseq.checkpoints import CheckpointError
from vtlm_fairseq.data.feature_store import FeatureStore, FeatureStoreWriter, RegionFeatures
from vtlm_fairseq.errors import InputError
from vtlm_fairseq.models.vtlm_translation import VTLMTranslationModel, text_positions


def build(toy_data, *extra, features=True, task="multimodal_translation", store=None, from_checkpoint=False):
    """(cfg, task, model) as fairseq-train builds them (``from_checkpoint``:
    as the loaders of a trained model do)."""
    data, toy_store, _ = toy_data
    # a save dir without checkpoint_last.pt: a run that starts, not one that resumes
    argv = [str(data), "--task", task, "--arch", "vtlm_translation_tiny", *TINY_DIMS,
            "--criterion", "cross_entropy", "--save-dir", str(data / "no-run-here"), *extra]  # fmt: skip
    if features:
        argv += ["--region-features", str(store or toy_store)]
    cfg, task = setup_fairseq(argv)
    return cfg, task, task.build_model(cfg.model, from_checkpoint=from_checkpoint)


def test_initialisation_copies_encoder_into_both_sides(toy_data, vtlm_checkpoint):
    _, _, model = build(toy_data, "--pretrained-checkpoint", str(vtlm_checkpoint))
    pre = torch.load(vtlm_checkpoint)["model"]
    own = model.state_dict()
    for name in ("embed_tokens.weight", "embed_langs.weight", "text_embedding.embed_positions.weight",
                 "text_embedding.layer_norm.weight", "layers.1.self_attn.k_proj.weight",
                 "layers.0.fc1.weight", "layers.1.final_layer_norm.bias", "lm_bias"):  # fmt: skip
        if name != "lm_bias":
            assert torch.equal(own[f"encoder.{name}"], pre[f"encoder.{name}"]), name
        assert torch.equal(own[f"decoder.{name}"], pre[f"encoder.{name}"]), name
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        for i in (0, 1):
            assert torch.equal(
                own[f"decoder.layers.{i}.encoder_attn.{proj}.weight"], pre[f"encoder.layers.{i}.self_attn.{proj}.weight"]
            )
    assert torch.equal(own["encoder.region_embedding.feature_proj.weight"], pre["encoder.region_embedding.feature_proj.weight"])
    report = model.load_pretrained(str(vtlm_checkpoint))
    assert report["initialised_fresh"] == [
        f"decoder.layers.{i}.encoder_attn_layer_norm.{p}" for i in (0, 1) for p in ("bias", "weight")
    ]
    assert report["unused"] == ["region_classifier.bias", "region_classifier.weight"]


def test_cross_attention_init_can_be_switched_off(toy_data, vtlm_checkpoint):
    _, _, model = build(toy_data, "--pretrained-checkpoint", str(vtlm_checkpoint), "--no-cross-attention-init")
    pre = torch.load(vtlm_checkpoint)["model"]
    own = model.state_dict()
    assert not torch.equal(own["decoder.layers.0.encoder_attn.q_proj.weight"], pre["encoder.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(own["decoder.layers.0.self_attn.q_proj.weight"], pre["encoder.layers.0.self_attn.q_proj.weight"])


def test_mismatched_shapes_name_the_file_and_the_data_bin(toy_data, vtlm_checkpoint):
    data = toy_data[0]
    with pytest.raises(CheckpointError) as e:
        build(toy_data, "--pretrained-checkpoint", str(vtlm_checkpoint), "--encoder-embed-dim", "48")
    assert str(e.value).startswith(f"{vtlm_checkpoint}: ") and f"data-bin {data}" in str(e.value)
    assert "\n" not in str(e.value)
    assert re.search(r"'(text_embedding\.)?embed_tokens\.weight' has shape \(\d+, 32\), "
                     r"'encoder\.(text_embedding\.)?embed_tokens\.weight' needs \(\d+, 48\)", str(e.value))


def test_building_a_model_never_reads_the_pretrained_file(toy_data, tmp_path):
    # what every loader of a fine-tuned model does (its config still names
    # the pre-trained file, here one that is gone)
    gone = tmp_path / "pretraining" / "checkpoint_best.pt"
    cfg, task, model = build(toy_data, "--pretrained-checkpoint", str(gone), from_checkpoint=True)
    assert isinstance(model, VTLMTranslationModel)
    VTLMTranslationModel.build_model(cfg.model, task)


def test_missing_pretrained_file_at_training_start_is_named(toy_data, tmp_path):
    gone = tmp_path / "checkpoint_best.pt"
    with pytest.raises(InputError, match=f"^{re.escape(str(gone))}: no such file"):
        build(toy_data, "--pretrained-checkpoint", str(gone))


@pytest.mark.parametrize("restore", ["save_dir", "--restore-file", "--finetune-from-model", "--continue-once"])
def test_resumed_run_is_not_initialised(toy_data, tmp_path, restore, caplog):
    # fairseq-train restores the weights from this file: the pre-trained one
    # (gone here) is not needed
    checkpoint = tmp_path / ("checkpoint_last.pt" if restore == "save_dir" else "other.pt")
    checkpoint.write_bytes(b"")
    option = ["--save-dir", str(tmp_path)] if restore == "save_dir" else [restore, str(checkpoint)]
    gone = tmp_path / "gone" / "checkpoint_best.pt"
    with caplog.at_level("INFO"):
        build(toy_data, "--pretrained-checkpoint", str(gone), *option)
    assert f"the run resumes from {checkpoint}" in caplog.text


def test_restore_file_that_does_not_exist_starts_from_the_pretrained_file(toy_data, tmp_path):
    # fairseq-train trains from scratch when --restore-file is absent
    gone = tmp_path / "checkpoint_best.pt"
    with pytest.raises(InputError, match="no such file"):
        build(toy_data, "--pretrained-checkpoint", str(gone), "--restore-file", str(tmp_path / "absent.pt"))


def test_pretrained_checkpoint_needs_our_task(toy_data, vtlm_checkpoint):
    with pytest.raises(InputError, match="--task translation would ignore it"):
        build(toy_data, "--pretrained-checkpoint", str(vtlm_checkpoint), task="translation", features=False)
    # text-only NMT under fairseq's own task still builds
    _, _, model = build(toy_data, task="translation", features=False)
    assert model.encoder.region_embedding is None


def store_of_dim(path, source: FeatureStore, dim: int):
    """A one-image store of ``dim``-dim features."""
    name = source.names[0]
    r = source.read(name)
    features = np.resize(r.features, (len(r), dim))
    with FeatureStoreWriter(path, num_regions=source.num_regions, feature_dim=dim) as w:
        w.add(name, RegionFeatures(features, r.boxes, r.classes, r.scores))
    return path


def test_trained_weights_that_do_not_fit_are_one_input_error(toy_data, tmp_path):
    data, store, _ = toy_data
    _, _, mmt = build(toy_data)
    _, _, nmt = build(toy_data, features=False)
    dim = FeatureStore(store).feature_dim
    other = store_of_dim(tmp_path / "other.h5", FeatureStore(store), dim + 8)
    _, _, wider = build(toy_data, store=other)
    cases = [
        (nmt, mmt, f"is an MMT taking {dim}-dim region features: give --region-features"),
        (mmt, nmt, f"--region-features {store}: the checkpoint \\(--path\\) is text-only"),
        (wider, mmt, f"^{other}: {dim + 8}-dim region features, the checkpoint \\(--path\\) was trained on {dim}-dim"),
    ]
    for model, trained, message in cases:
        with pytest.raises(InputError, match=message):
            model.load_state_dict(trained.state_dict())
    bigger = tmp_path / "bin"
    shutil.copytree(data, bigger)
    for f in bigger.glob("dict.*.txt"):
        f.write_text(f.read_text() + "an_extra_word 1\n")
    _, _, other_dict = build((bigger, store, None))
    with pytest.raises(InputError, match=f"^data-bin {bigger}: its dictionary has {len(mmt.encoder.dictionary) + 1} types"):
        other_dict.load_state_dict(mmt.state_dict())
    other_dict.load_state_dict(other_dict.state_dict())  # a fitting checkpoint loads


def test_nmt_from_vtlm_reports_region_layers_unused(toy_data, vtlm_checkpoint):
    _, _, model = build(toy_data, "--pretrained-checkpoint", str(vtlm_checkpoint), features=False)
    report = model.load_pretrained(str(vtlm_checkpoint))
    assert "region_embedding.feature_proj.weight" in report["unused"]
    assert model.encoder.region_embedding is None


@pytest.mark.parametrize("features", [True, False])
def test_incremental_decoding_equals_full_forward(toy_data, features):
    _, task, model = build(toy_data, features=features)
    model.eval()
    task.load_dataset("valid")
    ds = task.dataset("valid")
    batch = ds.collater([ds[i] for i in range(5)])
    net = batch["net_input"]
    with torch.no_grad():
        full, _ = model(**net)
        enc = model.encoder(**{k: v for k, v in net.items() if k != "prev_output_tokens"})
        state = {}
        prev = net["prev_output_tokens"]
        steps = []
        for t in range(prev.shape[1]):
            out, _ = model.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=state)
            steps.append(out[:, -1])
    inc = torch.stack(steps, dim=1)
    real = prev.ne(task.target_dictionary.pad())
    torch.testing.assert_close(inc[real], full[real], rtol=1e-4, atol=1e-4)
    assert ("region_features" in net) == features


def test_text_positions_ignore_padding():
    tokens = torch.tensor([[1, 1, 5, 6, 7], [5, 6, 7, 8, 1]])
    assert text_positions(tokens, 1).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 0]]


@pytest.mark.parametrize("setting, fast", [([], True), (["--cpu-dropout", "torch"], False)])
def test_cpu_dropout_setting_reaches_every_dropout(toy_data, setting, fast):
    from vtlm_fairseq.modules.cpu_dropout import CpuDropout

    _, _, model = build(toy_data, *setting)
    dropouts = [m for m in model.modules() if isinstance(m, CpuDropout)]
    # embeddings (2 + regions), and per layer: the layer's own, its activation's, its attentions'
    layers = len(model.encoder.layers) + len(model.decoder.layers)
    assert len(dropouts) == 3 + 2 * layers + len(model.encoder.layers) + 2 * len(model.decoder.layers)
    assert all(d.fast is fast for d in dropouts)


def test_checkpoint_saved_before_cpu_dropout_existed_loads(mmt_checkpoint, tmp_path):
    """A cfg without ``cpu_dropout`` (older checkpoints) loads, with the default."""
    from vtlm_fairseq.checkpoints import load_trained_model, read_fairseq_checkpoint

    from omegaconf import OmegaConf

    state = read_fairseq_checkpoint(mmt_checkpoint)
    state["cfg"] = OmegaConf.to_container(state["cfg"], resolve=True, enum_to_str=True)  # as fairseq saves it
    del state["cfg"]["model"]["cpu_dropout"]
    old = tmp_path / "old.pt"
    torch.save(state, old)
    models, cfg, _ = load_trained_model(old)
    assert cfg.model.cpu_dropout == "fast"
    assert torch.equal(models[0].state_dict()["decoder.lm_bias"], state["model"]["decoder.lm_bias"])
