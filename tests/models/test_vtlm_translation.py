import pytest
import torch

from tests.conftest import TINY_DIMS, setup_fairseq
from vtlm_fairseq.models.vtlm_translation import text_positions


def build(toy_data, *extra, features=True):
    data, store, _ = toy_data
    argv = [str(data), "--task", "multimodal_translation", "--arch", "vtlm_translation_tiny", *TINY_DIMS,
            "--criterion", "cross_entropy", *extra]  # fmt: skip
    if features:
        argv += ["--region-features", str(store)]
    cfg, task = setup_fairseq(argv)
    return cfg, task, task.build_model(cfg.model)


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


def test_mismatched_shapes_are_named(toy_data, vtlm_checkpoint):
    with pytest.raises(ValueError, match=r"'(text_embedding\.)?embed_tokens\.weight' has shape \(\d+, 32\), "
                       r"'encoder\.(text_embedding\.)?embed_tokens\.weight' needs \(\d+, 48\)"):
        build(toy_data, "--pretrained-checkpoint", str(vtlm_checkpoint), "--encoder-embed-dim", "48")


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
