"""Converted reference checkpoints reproduce the reference code's recorded
outputs (../shared/fixtures/reference_vtlm): hidden states, masked-LM and
region logits, losses, decoder logits, greedy and beam-search decodes.
Tolerance: 1e-4 absolute in float32 (the reference itself moves by up to
3e-6 between one and two threads)."""

import json

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import shared_path

TOL = 1e-4


@pytest.fixture(scope="module")
def converted(reference_store, tmp_path_factory):
    """kind -> (model, task, fixture tensors, reference id -> our id, the
    reference checkpoint itself)."""
    from fairseq import checkpoint_utils

    from vtlm_fairseq.convert.reference_checkpoint import convert
    from vtlm_fairseq.convert.safe_load import load_reference_checkpoint

    root, store = reference_store
    out = tmp_path_factory.mktemp("converted")
    models = {}
    for kind, ckpt, fixture in (
        ("vtlm", "vtlm_pretrained", "reference_vtlm.pt"),
        ("tlm", "tlm_pretrained", "reference_tlm.pt"),
        ("mmt", "mmt_finetuned_from_vtlm", "reference_mmt.pt"),
    ):
        convert(root / "checkpoints" / f"{ckpt}.pth", out / kind, region_features=str(store))
        (model,), _, task = checkpoint_utils.load_model_ensemble_and_task([str(out / kind / "checkpoint.pt")])
        model.eval()
        reference = torch.load(root / fixture, weights_only=True)
        ref_ckpt = load_reference_checkpoint(root / "checkpoints" / f"{ckpt}.pth")
        id_map = torch.tensor([task.source_dictionary.index(w) if w not in SPECIAL_NAMES else
                               SPECIAL_NAMES[w](task) for _, w in sorted(ref_ckpt["dico_id2word"].items())])  # fmt: skip
        models[kind] = (model, task, reference, id_map, ref_ckpt)
    return models


SPECIAL_NAMES = {
    "<s>": lambda t: t.source_dictionary.bos(),
    "</s>": lambda t: t.source_dictionary.eos(),
    "<pad>": lambda t: t.source_dictionary.pad(),
    "<unk>": lambda t: t.source_dictionary.unk(),
    "<special1>": lambda t: t.mask_idx,
}


def close(ours, theirs, what):
    diff = (ours - theirs).abs().max().item()
    assert diff <= TOL, f"{what}: max abs difference {diff:.2e} > {TOL}"
    return diff


def language_map(task, ref_ckpt):
    """Reference language id -> ours (the converter maps them by name)."""
    ours = task.lang_ids
    lang2id = ref_ckpt["params"]["lang2id"]
    out = torch.full((max(lang2id.values()) + 1,), -1, dtype=torch.long)
    for lang, ref_id in lang2id.items():
        out[ref_id] = ours.get(lang, -1)
    return out


def encoder_inputs(ref, id_map, lang_map, masked: bool, regions: bool):
    x = ref["input__x_masked" if masked else "input__x"].t()  # batch-major
    net_input = {
        "src_tokens": id_map[x],
        "src_langs": lang_map[ref["input__langs"].t()],
        "src_positions": ref["input__positions"].t(),
    }
    if regions:
        feats = ref["input__img_feats_masked_input" if masked else "input__img_feats"]
        net_input.update(
            region_features=feats,
            region_boxes=ref["input__img_boxes"],
            region_mask=torch.ones(feats.shape[:2], dtype=torch.bool),
            region_masked_input=ref["input__img_mask_pos"][..., 0] if masked else None,
        )
    return net_input


@pytest.mark.parametrize("kind", ["vtlm", "tlm"])
def test_pretrained_encoder_reproduces_reference(converted, kind):
    model, task, ref, id_map, ref_ckpt = converted[kind]
    lang_map = language_map(task, ref_ckpt)
    regions = kind == "vtlm"
    text_real = ref["input__x"].t().ne(ref_ckpt["dico_word2id"]["<pad>"])
    n_regions = ref["input__img_feats"].shape[1] if regions else 0
    for forward in ("clean", "masked"):
        with torch.no_grad():
            inputs = encoder_inputs(ref, id_map, lang_map, forward == "masked", regions)
            lm_logits, region_logits, out = model(**inputs)
        states = out["states"]
        hidden = ref[f"output__{forward}__hidden"].transpose(0, 1)
        real = torch.cat([torch.ones(len(text_real), n_regions, dtype=torch.bool), text_real], dim=1)
        close(states[real], hidden[real], f"{kind} {forward} hidden states")
        # our vocabulary order -> the reference's columns
        logits = lm_logits[:, :, id_map]
        close(logits[text_real], ref[f"output__{forward}__lm_logits_all_positions"].transpose(0, 1)[text_real],
              f"{kind} {forward} masked-LM logits")  # fmt: skip
        if regions:
            all_regions = model.encoder.region_classifier(states[:, :n_regions])
            close(all_regions, ref[f"output__{forward}__region_logits_all"], f"{forward} region logits")
    # the masked forward's training quantities, in the reference's row orders
    pred_mask = ref["input__pred_mask"].t()
    masked_inputs = encoder_inputs(ref, id_map, lang_map, True, regions)
    with torch.no_grad():
        lm, reg, _ = model(**masked_inputs, masked_tokens=pred_mask,
                           masked_regions=ref["input__img_pred_mask"] if regions else None)  # fmt: skip
    # ours: batch-major; the reference's x[pred_mask] is position-major
    order = torch.nonzero(pred_mask.t())  # (position, batch) in reference order
    rank = torch.zeros_like(pred_mask, dtype=torch.long)
    rank[pred_mask] = torch.arange(int(pred_mask.sum()))
    lm = lm[rank[order[:, 1], order[:, 0]]][:, id_map]
    close(lm, ref["output__masked__mlm_logits_masked"], f"{kind} logits at masked tokens")
    y = ref["input__y"]
    close(F.cross_entropy(lm, y), ref["output__masked__mlm_loss"][0], f"{kind} masked-LM loss")
    if regions:
        close(reg, ref["output__masked__region_logits_predicted"], "logits at classified regions")
        close(F.cross_entropy(reg, ref["input__img_y"]), ref["output__masked__mrc_loss"][0], "MRC loss")


def mmt_sample(ref, id_map, sources, image_index, pad):
    """A fairseq batch of reference sources (each ``</s> ... </s>``), padded
    with our ``pad``."""
    src = [id_map[torch.as_tensor(s)] for s in sources]
    width = max(len(s) for s in src)
    tokens = torch.full((len(src), width), pad, dtype=torch.long)
    for i, s in enumerate(src):
        tokens[i, : len(s)] = s
    image = torch.as_tensor(image_index)
    features = ref["input__img_feats"][image]
    return {
        "net_input": {
            "src_tokens": tokens,
            "src_lengths": torch.tensor([len(s) for s in src]),
            "region_features": features,
            "region_boxes": ref["input__img_boxes"][image],
            "region_mask": torch.ones(features.shape[:2], dtype=torch.bool),
        }
    }


def test_mmt_reproduces_reference_states_and_logits(converted):
    model, task, ref, id_map, ref_ckpt = converted["mmt"]
    ref_ids = ref_ckpt["dico_word2id"]
    sources = columns(ref["input__src_x"], ref["input__src_len"])
    sample = mmt_sample(ref, id_map, sources, list(range(len(sources))), task.source_dictionary.pad())  # image i
    with torch.no_grad():
        enc = model.encoder(**sample["net_input"])
        states = enc["encoder_out"][0]  # T x B x C
        regions = sample["net_input"]["region_mask"]
        src_real = torch.cat([regions, ref["input__src_x"].t().ne(ref_ids["<pad>"])], dim=1)
        close(states.transpose(0, 1)[src_real], ref["output__encoder_output"].transpose(0, 1)[src_real],
              "MMT encoder states")  # fmt: skip
        tgt = ref["input__tgt_x"].t()
        hidden, _ = model.decoder(id_map[tgt], encoder_out=enc, features_only=True)
        logits = model.decoder.output_layer(hidden)[:, :, id_map]
    tgt_real = tgt.ne(ref_ids["<pad>"])
    close(hidden[tgt_real], ref["output__decoder_hidden"].transpose(0, 1)[tgt_real], "decoder states")
    close(logits[tgt_real], ref["output__decoder_logits"].transpose(0, 1)[tgt_real], "decoder logits")
    # the reference's loss: mean over t < len-1 of logits[t] against tgt[t+1]
    steps = tgt_real[:, 1:]
    loss = F.cross_entropy(logits[:, :-1][steps], tgt[:, 1:][steps])
    close(loss, ref["output__decoder_xent_loss"][0], "decoder cross-entropy")


def decode(model, task, ref, id_map, ref_ids, sources, images, beam, max_len):
    """fairseq's SequenceGenerator, set up as the reference decodes: the
    reference's max_len counts the start symbol and the final </s>, fairseq's
    does not count the start symbol and allows one more step."""
    from fairseq.sequence_generator import SequenceGenerator

    generator = SequenceGenerator([model], task.target_dictionary, beam_size=beam, max_len_a=0,
                                  len_penalty=ref["meta__length_penalty"], max_len_b=max_len - 2)  # fmt: skip
    hypos = generator.generate([model], mmt_sample(ref, id_map, sources, images, task.source_dictionary.pad()))
    ref_of_ours = torch.empty(len(task.target_dictionary), dtype=torch.long)
    ref_of_ours[id_map] = torch.arange(len(id_map))
    # "</s> ... </s>" as theirs: their start symbol is </s>
    return [[ref_ids["</s>"]] + ref_of_ours[h[0]["tokens"]].tolist() for h in hypos]


def columns(ids, lengths):
    return [ids[: int(n), i].tolist() for i, n in enumerate(lengths)]


@pytest.mark.parametrize("name", ["greedy", "beam"])
def test_mmt_decodes_as_reference(converted, name):
    model, task, ref, id_map, ref_ckpt = converted["mmt"]
    ref_ids = ref_ckpt["dico_word2id"]
    beam = 1 if name == "greedy" else ref["meta__beam_size"]
    sources = columns(ref["input__src_x"], ref["input__src_len"])
    batch = decode(model, task, ref, id_map, ref_ids, sources, list(range(len(sources))), beam,
                   int(ref["input__max_len_batch"]))  # fmt: skip
    assert batch == columns(ref[f"output__{name}_ids"], ref[f"output__{name}_len"])
    for i, source in enumerate(sources):
        single = decode(model, task, ref, id_map, ref_ids, [source], [i], beam, int(ref["input__max_len_single"][i]))
        assert single == [ref[f"output__{name}_ids_single"][i]], f"source {i}"
    extra = ref["input__extra_src_ids"]
    images = ref["input__extra_image_index"]
    for i, (source, image, max_len, why) in enumerate(
        zip(extra, images, ref["input__extra_max_len"], ref["input__extra_case_kind"])
    ):
        single = decode(model, task, ref, id_map, ref_ids, [source], [image], beam, max_len)
        assert single == [ref[f"output__extra_{name}_ids_single"][i]], f"extra source {i} ({why})"
    batch_max = int(1.5 * max(len(s) for s in extra) + 10)
    batch = decode(model, task, ref, id_map, ref_ids, extra, images, beam, batch_max)
    assert batch == columns(ref[f"output__extra_{name}_ids_batch"], ref[f"output__extra_{name}_len_batch"])


def test_fixture_checksums_match():
    """The fixtures are the ones the README describes (a changed file would
    make the comparisons meaningless)."""
    import hashlib

    root = shared_path("fixtures", "reference_vtlm")
    files = json.loads((root / "fixtures.json").read_text())["files"]
    for name in ("reference_vtlm.pt", "reference_tlm.pt", "reference_mmt.pt", "checkpoints/vtlm_pretrained.pth"):
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == files[name]["sha256"], name
