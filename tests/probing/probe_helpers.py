"""Running vtlm-probe in the test's process, and bad inputs for the probes
and the Python API derived from the toy world's data-bin, store and
checkpoints."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vtlm_fairseq.data.feature_store import FeatureStore, FeatureStoreWriter, RegionFeatures


def run_probe(argv) -> int:
    """vtlm-probe's exit status (its console entry point always exits)."""
    from vtlm_fairseq.cli import probe

    with pytest.raises(SystemExit) as e:
        probe.cli_main([str(a) for a in argv])
    return e.value.code


def write_marker(path):
    """What a malicious checkpoint runs when it is unpickled."""
    Path(path).write_text("code from the checkpoint ran\n")


class RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (write_marker, (self.marker,))


def crafted_checkpoint(source, path, marker) -> Path:
    """``source`` (a real fairseq checkpoint) plus an entry that writes
    ``marker`` when unpickled without weights-only."""
    state = torch.load(source, map_location="cpu", weights_only=False)  # our own fixture
    state["payload"] = RunsCode(marker)  # an entry fairseq ignores
    torch.save(state, path)
    return Path(path)


def edited_checkpoint(source, path, **task_cfg) -> Path:
    """``source`` with its task config changed, e.g. a data-bin that is gone."""
    state = torch.load(source, map_location="cpu", weights_only=False)  # our own fixture
    for key, value in task_cfg.items():
        state["cfg"]["task"][key] = value
    torch.save(state, path)
    return Path(path)


def other_dictionary_bin(data, dest) -> Path:
    """A copy of the data-bin whose dictionaries have extra words (so the
    model's embedding sizes differ)."""
    shutil.copytree(data, dest)
    for dictionary in Path(dest).glob("dict.*.txt"):
        with open(dictionary, "a") as f:
            f.writelines(f"extraword{i} 1\n" for i in range(5))
    return Path(dest)


def wider_store(store, path) -> Path:
    """The store's images with features of twice the dimension."""
    source = FeatureStore(store)
    with FeatureStoreWriter(path, num_regions=source.num_regions, feature_dim=2 * source.feature_dim,
                            dtype="float32", num_classes=source.num_classes) as writer:  # fmt: skip
        for name in source.index:
            r = source.read(name)
            features = np.concatenate([r.features, r.features], axis=1).astype(np.float32)
            writer.add(name, RegionFeatures(features=features, boxes=r.boxes, classes=r.classes, scores=r.scores))
    return Path(path)
