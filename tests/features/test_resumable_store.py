"""A store built by a job that is SIGKILLed at any moment: the rerun goes on,
and the result holds every image exactly once, equal to an uninterrupted
run. The job runs in a forked child (no re-import per run), killed by the
test at seeded random moments, or killing itself at chosen points."""

import multiprocessing
import os
import signal
import time

import numpy as np
import pytest

from tests.data.store_helpers import random_regions
from vtlm_fairseq.data.feature_store import FeatureStore, FeatureStoreError, partial_path
from vtlm_fairseq.features.resumable_store import ResumableStoreBuilder, parts_dir

R, D = 8, 64
PART = 4
FORK = multiprocessing.get_context("fork")


def image_names(n):
    return [f"img{i:04d}.jpg" for i in range(n)]


def regions_of(name):
    """The same regions for a name in every run, as a detector gives."""
    rng = np.random.default_rng(int(name[3:7]))
    return random_regions(rng, int(rng.integers(0, R + 1)), D)


def build(output, names, work_log=None, die_at=None):
    """The job: skip what is done, add the rest, finish. ``die_at``:
    (function name, call number) at which the process SIGKILLs itself."""
    if die_at is not None:
        _die_at(*die_at)
    builder = ResumableStoreBuilder(output, num_regions=R, part_images=PART, part_seconds=3600)
    log = open(work_log, "a") if work_log else None
    for name in names:
        if name in builder:
            continue
        if log:  # before the work, so that a kill cannot hide work done
            log.write(name + "\n")
            log.flush()
        builder.add(name, regions_of(name))
    builder.finish()


def _die_at(where, count):
    """Patches (in the child only) a function the store code calls so that its
    ``count``-th call kills the process, before or after doing its work."""
    import vtlm_fairseq.data.feature_store as fs

    calls = {"n": 0}

    def dying(original, before):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if before and calls["n"] == count:
                os.kill(os.getpid(), signal.SIGKILL)
            out = original(*args, **kwargs)
            if not before and calls["n"] == count:
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        return wrapper

    if where in ("replace-before", "replace-after"):
        fs.os.replace = dying(os.replace, where.endswith("before"))
    elif where == "add":
        fs.FeatureStoreWriter.add = dying(fs.FeatureStoreWriter.add, True)
    elif where in ("rmtree-before", "rmtree-after"):
        import vtlm_fairseq.features.resumable_store as rs

        rs.shutil.rmtree = dying(rs.shutil.rmtree, where.endswith("before"))
    else:
        raise AssertionError(where)


def run_child(target, *args, kill_after=None, kill_at_work=None):
    """Runs ``target`` in a forked child; SIGKILLs it after ``kill_after``
    seconds, or once its work log (``args[2]``) has ``kill_at_work`` lines
    (plus a moment, ``kill_after``), if it is still running. True when it
    finished by itself."""
    child = FORK.Process(target=target, args=args)
    child.start()
    if kill_at_work is not None:
        work_log = args[2]
        while child.is_alive() and (not work_log.exists() or len(work_log.read_text().split()) < kill_at_work):
            time.sleep(0.001)
    child.join(kill_after)
    if child.is_alive():
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    return child.exitcode == 0


def assert_same_store(path, reference):
    got, want = FeatureStore(path), FeatureStore(reference)
    assert sorted(got.names) == sorted(want.names) and len(set(got.names)) == len(got.names)
    for name in want.names:
        a, b = got.read(name), want.read(name)
        for key in ("features", "boxes", "classes", "scores"):
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=f"{name} {key}")
    assert not parts_dir(path).exists() and not partial_path(path).exists()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "ref.h5"
    names = image_names(60)
    start = time.monotonic()
    assert run_child(build, out, names)
    return out, names, time.monotonic() - start


def test_sigkill_at_random_moments(uninterrupted, tmp_path):
    """24 runs, each SIGKILLed at a seeded random moment of the job (after a
    random number of images, plus a random fraction of an image's time, up
    to the final merge), then resumed: every image once, values as
    uninterrupted, and no more work redone than the part being filled."""
    reference, names, duration = uninterrupted
    rng = np.random.default_rng(2021)
    per_image = duration / len(names)
    kills = 0
    for k in range(24):
        out, work_log = tmp_path / f"run{k}" / "f.h5", tmp_path / f"run{k}" / "work.log"
        out.parent.mkdir()
        at = int(rng.integers(0, len(names) + 1))  # len(names): during the final merge
        kills += not run_child(build, out, names, work_log, kill_after=rng.uniform(0, per_image), kill_at_work=at)
        assert run_child(build, out, names, work_log)
        assert_same_store(out, reference)
        redone = len(work_log.read_text().split()) - len(names)
        assert 0 <= redone <= PART
    assert kills >= 20, f"only {kills} of the runs were killed"


@pytest.mark.parametrize(
    "die_at",
    [("add", 1), ("add", PART + 2), ("replace-before", 1), ("replace-after", 1), ("replace-before", 3),
     ("add", 59), ("replace-before", 16), ("replace-after", 16), ("replace-after", 17), ("rmtree-before", 1),
     ("rmtree-after", 1)],
    ids=lambda d: f"{d[0]}#{d[1]}",
)  # fmt: skip
def test_sigkill_at_each_step_of_writing(uninterrupted, tmp_path, die_at):
    """Kills at chosen points: inside a part, as a part is renamed into place,
    around the final merge (renames 1-15: the 15 parts of 4; 16: the merged
    store into place beside OUTPUT; 17: the merged store replaces OUTPUT),
    and just before and after the parts are removed."""
    reference, names, _ = uninterrupted
    out = tmp_path / "f.h5"
    assert not run_child(build, out, names, None, die_at)
    assert run_child(build, out, names)
    assert_same_store(out, reference)


def test_resume_adds_new_images_to_a_finished_store(uninterrupted, tmp_path):
    reference, names, _ = uninterrupted
    out = tmp_path / "f.h5"
    assert run_child(build, out, names[:25])
    assert len(FeatureStore(out)) == 25
    assert not run_child(build, out, names, None, ("replace-after", 9))  # killed after the final merge
    assert run_child(build, out, names)
    assert_same_store(out, reference)


def test_a_store_of_another_layout_is_not_resumed(tmp_path):
    out = tmp_path / "f.h5"
    assert run_child(build, out, image_names(3))
    with pytest.raises(FeatureStoreError, match="region slots 8, this run asks for 4; pass --max-regions 8"):
        ResumableStoreBuilder(out, num_regions=4)
