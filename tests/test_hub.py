"""VTLMTranslator, fairseq's hub interface for our NMT/MMT: the same
hypotheses and scores as fairseq-generate (and --score-reference) on the same
sentences and images, in input order whatever the batches; images by name or
as arrays; .to(device); VTLMTranslationModel.from_pretrained. On bad input:
one-line InputErrors naming the file (checkpoint, data-bin, BPE codes, store)
or the image, and checkpoints read weights-only whatever
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says."""

import dataclasses
import math
import os
import re
import shutil

import numpy as np
import pytest
import torch

from tests.probing.probe_helpers import crafted_checkpoint, other_dictionary_bin
from tests.tasks.test_score_reference import fairseq_generate, score_reference
from vtlm_fairseq.data.feature_store import FeatureStore
from vtlm_fairseq.errors import InputError
from vtlm_fairseq.hub import VTLMTranslator
from vtlm_fairseq.models.vtlm_translation import VTLMTranslationModel

# decoding options given to fairseq-generate and to the API alike
DECODING = {"beam": 3, "nbest": 2, "lenpen": 1.2, "max_len_a": 1.5, "max_len_b": 10}


def load(checkpoint, **kwargs):
    return VTLMTranslator.from_pretrained(str(checkpoint.parent), checkpoint.name, beam=2, **kwargs)


@pytest.fixture(scope="module")
def translators(toy_data, mmt_checkpoint, nmt_checkpoint):
    data, store, _ = toy_data
    return load(mmt_checkpoint, data=str(data), region_features=str(store)), load(nmt_checkpoint, data=str(data))


@pytest.fixture(scope="module")
def test_split(toy_data):
    """The raw test sentences (source, target) and their images."""
    data, _, world = toy_data
    raw = [(world / "raw" / f"test.{lang}").read_text().splitlines() for lang in ("en", "de")]
    return raw[0], raw[1], (data / "test.order").read_text().split()


@pytest.fixture(scope="module", params=["mmt", "nmt"])
def reference_run(request, toy_data, translators):
    """(translator, its images of the test split or None, fairseq-generate
    output with DECODING, --score-reference output): one fairseq process
    each, per model."""
    mmt = request.param == "mmt"
    checkpoint = request.getfixturevalue(f"{request.param}_checkpoint")
    options = [a for k, v in DECODING.items() for a in (f"--{k.replace('_', '-')}", v)]
    generated = fairseq_generate(toy_data, checkpoint, *options, features=mmt)
    scored = score_reference(toy_data, checkpoint, features=mmt)
    images = (toy_data[0] / "test.order").read_text().split() if mmt else None
    return translators[0 if mmt else 1], images, generated, scored


def test_generate_equals_fairseq_generate(reference_run, test_split):
    mt, images, generated, _ = reference_run
    sources = test_split[0]
    tokens = [mt.encode(s) for s in sources]
    hypos = mt.generate(tokens, images, **DECODING)
    assert len(hypos) == len(sources) == len(generated)
    for i, (hyps, entry) in enumerate(zip(hypos, (generated[i] for i in range(len(sources))))):
        assert mt.string(tokens[i]) == entry["S"]  # the raw text prepared as the data-bin
        assert len(hyps) == len(entry["H"]) == DECODING["nbest"]
        for hyp, (score, text), positional in zip(hyps, entry["H"], entry["P"]):
            assert mt.string(hyp["tokens"]) == text
            assert float(hyp["score"]) / math.log(2) == pytest.approx(score, abs=1e-4)
            assert (hyp["positional_scores"] / math.log(2)).tolist() == pytest.approx(positional, abs=1e-3)
    # translate: the best hypothesis, detokenised; one sentence alone gives the same
    options = {k: v for k, v in DECODING.items() if k != "nbest"}
    best = mt.translate(sources, images, **options)
    assert best == [mt.decode(h[0]["tokens"]) for h in hypos]
    assert mt.translate(sources[1], None if images is None else images[1], **options) == best[1]


def test_score_equals_score_reference(reference_run, test_split):
    mt, images, _, scored = reference_run
    sources, targets, _ = test_split
    results = mt.score(sources, targets, images)
    assert len(results) == len(sources)
    for i, result in enumerate(results):
        ((score, text),) = scored[i]["H"]
        assert mt.string(result["tokens"]) == text  # the raw translation prepared as the data-bin's target
        assert float(result["score"]) / math.log(2) == pytest.approx(score, abs=1e-4)
        assert (result["positional_scores"] / math.log(2)).tolist() == pytest.approx(scored[i]["P"][0], abs=1e-3)
    one = mt.score(sources[2], targets[2], None if images is None else images[2])
    assert float(one["score"]) == pytest.approx(float(results[2]["score"]), abs=1e-5)
    # the entry point for code: token tensors, as encode / encode_target give them
    tokens = mt.score_tokens([mt.encode(s) for s in sources[:3]], [mt.encode_target(t) for t in targets[:3]],
                             None if images is None else images[:3])  # fmt: skip
    assert [float(r["score"]) for r in tokens] == pytest.approx([float(r["score"]) for r in results[:3]], abs=1e-5)


def test_tiny_batches_keep_the_input_order(translators, test_split, monkeypatch):
    mmt, _ = translators
    sources, targets, images = test_split
    order = list(range(len(sources)))[::-1]  # not the corpus order, nor sorted by length
    sources, targets, images = ([x[i] for i in order] for x in (sources, targets, images))
    whole = mmt.translate(sources, images, beam=2)
    whole_scores = [float(r["score"]) for r in mmt.score(sources, targets, images)]
    batch_sizes = []
    inference_step = mmt.task.inference_step

    def spy(generator, models, sample, **kwargs):
        batch_sizes.append(len(sample["id"]))
        return inference_step(generator, models, sample, **kwargs)

    monkeypatch.setattr(mmt.task, "inference_step", spy)
    monkeypatch.setitem(mmt.cfg.dataset, "batch_size", 2)
    assert mmt.translate(sources, images, beam=2) == whole
    assert [float(r["score"]) for r in mmt.score(sources, targets, images)] == pytest.approx(whole_scores, abs=1e-5)
    assert max(batch_sizes) == 2 and sum(batch_sizes) == 2 * len(sources)
    batch_sizes.clear()
    monkeypatch.setitem(mmt.cfg.dataset, "batch_size", None)
    monkeypatch.setitem(mmt.cfg.dataset, "max_tokens", max(len(mmt.encode(s)) for s in sources))
    assert mmt.translate(sources, images, beam=2) == whole
    assert len(batch_sizes) > 1


def test_images_as_arrays_and_tensors(toy_data, translators, test_split):
    _, store, _ = toy_data
    mmt, _ = translators
    sources, _, images = test_split
    regions = [FeatureStore(store).read(name) for name in images[:3]]
    by_name = mmt.generate([mmt.encode(s) for s in sources[:3]], images[:3], beam=2)
    given = [regions[0],
             (regions[1].features, regions[1].boxes),
             {"features": torch.from_numpy(regions[2].features.astype(np.float32)),
              "boxes": torch.from_numpy(regions[2].boxes)}]  # fmt: skip
    as_arrays = mmt.generate([mmt.encode(s) for s in sources[:3]], given, beam=2)
    for a, b in zip(by_name, as_arrays):
        assert torch.equal(a[0]["tokens"], b[0]["tokens"])
        assert float(a[0]["score"]) == pytest.approx(float(b[0]["score"]), abs=1e-5)
    # one image alone, as a pair of arrays
    assert mmt.translate(sources[1], (regions[1].features, regions[1].boxes), beam=2) == mmt.translate(
        sources[1], images[1], beam=2
    )


def test_sampling_and_options(translators, test_split):
    mmt, _ = translators
    sources, _, images = test_split
    tokens = mmt.encode(sources[0])
    torch.manual_seed(1)
    drawn = mmt.generate(tokens, images[0], beam=4, sampling=True, sampling_topk=20)
    torch.manual_seed(1)
    again = mmt.generate(tokens, images[0], beam=4, sampling=True, sampling_topk=20)
    assert len(drawn) == 4 and [h["tokens"].tolist() for h in drawn] == [h["tokens"].tolist() for h in again]
    searched = mmt.generate(tokens, images[0], beam=4)
    assert len({tuple(h["tokens"].tolist()) for h in drawn + searched}) > 1
    short = mmt.generate(tokens, images[0], beam=2, max_len_a=0, max_len_b=2)
    assert all(len(h["tokens"]) <= 3 for h in short)  # two tokens and </s>
    assert mmt.cfg.generation.beam == 2  # load()'s default, over the reference's 8


def test_to_device_moves_the_models(translators, test_split):
    mmt, _ = translators
    sources, _, images = test_split
    assert mmt.to("cpu") is mmt and mmt.device == torch.device("cpu")
    hyp = mmt.generate([mmt.encode(sources[0])], [images[0]], beam=2)[0][0]
    assert hyp["tokens"].device == hyp["positional_scores"].device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda(translators, test_split):
    mmt, _ = translators
    sources, targets, images = test_split
    on_cpu = mmt.translate(sources[:4], images[:4], beam=2)
    cpu_scores = [float(r["score"]) for r in mmt.score(sources[:4], targets[:4], images[:4])]
    mmt.cuda()
    try:
        assert mmt.device.type == "cuda" and next(mmt.models[0].parameters()).is_cuda
        assert mmt.translate(sources[:4], images[:4], beam=2) == on_cpu
        scores = mmt.score(sources[:4], targets[:4], images[:4])
        assert scores[0]["positional_scores"].is_cuda
        assert [float(r["score"]) for r in scores] == pytest.approx(cpu_scores, abs=1e-4)
    finally:
        mmt.cpu()


def test_fairseq_model_from_pretrained(toy_data, mmt_checkpoint, test_split):
    data, store, _ = toy_data
    sources, _, images = test_split
    # fairseq's way in: the model class, data_name_or_path, overrides as keyword arguments
    hub = VTLMTranslationModel.from_pretrained(str(mmt_checkpoint.parent), mmt_checkpoint.name, str(data),
                                               region_features=str(store), beam=2, user_dir="vtlm_fairseq")  # fmt: skip
    assert isinstance(hub, VTLMTranslator)
    assert hub.translate(sources[0], images[0]) == load(mmt_checkpoint, data=str(data),
                                                        region_features=str(store)).translate(sources[0], images[0])
    # "." (fairseq's default): the model's folder has no dictionary, so the data-bin it was trained on
    default = VTLMTranslationModel.from_pretrained(str(mmt_checkpoint.parent), mmt_checkpoint.name,
                                                   region_features=str(store))  # fmt: skip
    assert default.cfg.generation.beam == 8 and isinstance(default.translate(sources[0], images[0]), str)



def test_ensembles(toy_data, mmt_checkpoint, nmt_checkpoint, test_split):
    data, store, _ = toy_data
    sources, targets, images = test_split
    folder, options = str(mmt_checkpoint.parent), {"data": str(data), "region_features": str(store), "beam": 2}
    ensemble = VTLMTranslator.from_pretrained(folder, os.pathsep.join(["checkpoint_last.pt", "checkpoint_best.pt"]),
                                              **options)  # fmt: skip
    assert len(ensemble.models) == 2 and isinstance(ensemble.translate(sources[0], images[0]), str)
    assert ensemble.score(sources[0], targets[0], images[0])["score"] < 0
    mixed = os.pathsep.join(map(str, (mmt_checkpoint, nmt_checkpoint)))
    with pytest.raises(InputError, match="an ensemble of NMT and MMT"):
        VTLMTranslator.from_pretrained(folder, mixed, **options)


def test_from_pretrained_names_the_file(toy_data, mmt_checkpoint, nmt_checkpoint, vtlm_checkpoint, tmp_path):
    data, store, _ = toy_data
    without_codes = tmp_path / "without_codes"
    shutil.copytree(data, without_codes)
    (without_codes / "bpe.codes").unlink()
    broken_manifest = tmp_path / "broken_manifest"
    shutil.copytree(data, broken_manifest)
    (broken_manifest / "prepare.json").write_text("{")
    other = other_dictionary_bin(data, tmp_path / "other_dict")
    cases = [  # (checkpoint, options, what the message names)
        (tmp_path / "nope.pt", {}, [tmp_path / "nope.pt", "no such"]),
        (nmt_checkpoint, {"data": str(tmp_path / "nowhere")}, [tmp_path / "nowhere", "no such data-bin folder"]),
        (nmt_checkpoint, {"data": str(without_codes)}, [without_codes / "bpe.codes", "BPE codes"]),
        (nmt_checkpoint, {"data": str(broken_manifest)}, [broken_manifest / "prepare.json"]),
        # the model's size tells the dictionary apart: the message names the checkpoint
        (nmt_checkpoint, {"data": str(other)}, [nmt_checkpoint, "dictionary"]),
        (mmt_checkpoint, {"data": str(other), "region_features": str(store)}, [mmt_checkpoint, "dictionary"]),
        (vtlm_checkpoint, {}, [vtlm_checkpoint, "pre-trained VTLM", "NMT or MMT"]),
    ]
    for checkpoint, options, named in cases:
        with pytest.raises(InputError) as e:
            load(checkpoint, **options)
        for part in named:
            assert str(part) in str(e.value), (options, str(e.value))


def test_translate_names_the_problem(toy_data, translators, mmt_checkpoint, nmt_checkpoint):
    data, store, world = toy_data
    mmt, nmt = translators
    order = (data / "test.order").read_text().split()
    raw = (world / "raw" / "test.en").read_text().splitlines()
    with pytest.raises(InputError, match=f"{re.escape(str(mmt_checkpoint))}: .*give an image"):
        mmt.translate(raw[0])
    with pytest.raises(InputError, match=f"{re.escape(str(store))}: no image 'missing.jpg'"):
        mmt.translate(raw[0], images="missing.jpg")
    with pytest.raises(InputError, match=f"{re.escape(str(mmt_checkpoint))}: 3 images for 2 sentences"):
        mmt.translate(raw[:2], images=order[:3])
    regions = FeatureStore(store).read(order[0])
    narrow = dataclasses.replace(regions, features=np.zeros((len(regions), 1), np.float32))
    with pytest.raises(InputError, match="image 0.*features have shape"):
        mmt.translate(raw[0], images=narrow)
    with pytest.raises(InputError, match=f"{re.escape(str(nmt_checkpoint))}: .*without images"):
        nmt.translate(raw[0], images=order[0])
    assert mmt.translate([], images=[]) == []
    bad = [  # (call, what the message says)
        (lambda: mmt.translate(raw[0], images=regions.features), "a name in .*a pair"),
        (lambda: mmt.translate(raw[0], images={"features": regions.features}), "'features' .* and 'boxes'"),
        (lambda: mmt.translate(raw[0], images=(regions.features, regions.boxes[:, :2])), "boxes have shape"),
        (lambda: mmt.translate(raw[0], images=(regions.features, regions.boxes * 5)), "outside \\[0, 1\\]"),
        (lambda: mmt.translate(raw[0], images=order[0], beam_size=3), "unknown generation option.*beam_size"),
        (lambda: mmt.translate(" ".join(raw * 40), images=order[0]), "sentence 0 has .* at most"),
        (lambda: mmt.score(raw[:2], raw[:1], images=order[:2]), "2 sentences and 1 translations"),
        (lambda: mmt.score(raw[0], raw[:1], images=order[0]), "a sentence and its translation"),
        (lambda: load(mmt_checkpoint, data=str(data), region_features=str(store), bpe="subword_nmt"),
         "unknown generation option.*bpe"),
    ]  # fmt: skip
    for call, message in bad:
        with pytest.raises(InputError, match=message) as e:
            call()
        assert "\n" not in str(e.value)


def test_crafted_checkpoint_is_refused_without_running_it(nmt_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # would let torch.load run code
    marker = tmp_path / "marker"
    crafted = crafted_checkpoint(nmt_checkpoint, tmp_path / "checkpoint_best.pt", marker)
    with pytest.raises(InputError, match=f"{re.escape(str(crafted))}: refused to load.*write_marker"):
        VTLMTranslator.from_pretrained(str(tmp_path))
    assert not marker.exists()
