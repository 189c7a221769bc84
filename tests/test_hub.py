"""VTLMTranslator on bad input: InputErrors naming the file (checkpoint,
data-bin, BPE codes, store), and checkpoints read weights-only whatever
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says."""

import dataclasses
import re
import shutil

import numpy as np
import pytest

from tests.probing.probe_helpers import crafted_checkpoint, other_dictionary_bin
from vtlm_fairseq.data.feature_store import FeatureStore
from vtlm_fairseq.errors import InputError
from vtlm_fairseq.hub import VTLMTranslator


def load(checkpoint, **kwargs):
    return VTLMTranslator.from_pretrained(str(checkpoint.parent), checkpoint.name, beam=2, **kwargs)


@pytest.fixture(scope="module")
def translators(toy_data, mmt_checkpoint, nmt_checkpoint):
    data, store, _ = toy_data
    return load(mmt_checkpoint, data=str(data), region_features=str(store)), load(nmt_checkpoint, data=str(data))


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


def test_crafted_checkpoint_is_refused_without_running_it(nmt_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # would let torch.load run code
    marker = tmp_path / "marker"
    crafted = crafted_checkpoint(nmt_checkpoint, tmp_path / "checkpoint_best.pt", marker)
    with pytest.raises(InputError, match=f"{re.escape(str(crafted))}: refused to load.*write_marker"):
        VTLMTranslator.from_pretrained(str(tmp_path))
    assert not marker.exists()
