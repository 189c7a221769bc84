"""The training data loader alone, at GPU rates (issue 15): how many images
a second fairseq's epoch iterator over the VTLM task delivers (pairs, their
regions, masks, collated batches of 64) from a sharded feature store larger
than this machine's RAM, with ``--num-workers`` 0, 2 and 4, cold (the
store's pages dropped from the page cache first, ``posix_fadvise``
DONTNEED) and warm (a split whose images were just read). The target is
10,000 images a second; each figure is also given as a ratio to the
**disk ceiling** measured in the same run: the shard files read back
sequentially in 1 MB blocks (bytes/s, as images/s of the store's image
size), the most any reader of this disk could deliver cold, and to the
**store ceiling**: ``read_row`` alone, one process, the same random order.

The store (``--store-gb``, default 40: 36 x 1536 float16 regions, 110 KB an
image, in shards of ``--shard-images``) and a data-bin of as many synthetic
pairs are built once under ``--work`` (kept for reruns; writing 40 GB takes
some minutes). Every row is wall time (I/O bound), ``--seconds`` of
batches per measurement.

    python benchmarks/loader.py --json work_dirs/bench/loader.json
    python benchmarks/loader.py --store-gb 2 --seconds 5        # a quick look
"""

import multiprocessing
import os
import random
import sys
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script too

import numpy as np  # noqa: E402

from benchmarks.benchlib import (  # noqa: E402
    Report,
    Row,
    Sample,
    base_parser,
    fairseq_setup,
    interleaved,
    quiet_logging,
    set_threads,
    timed_row,
    tree_cpu_time,
)

R, D = 36, 1536
IMAGE_BYTES = R * D * 2
TARGET = 10_000  # images/s: what one current GPU consumes at vtlm_base (issue 15)
WARM_IMAGES = 40_000  # 4.4 GB: fits the page cache of a 24 GB machine


# -- data ---------------------------------------------------------------------


def image_name(i: int) -> str:
    return f"img{i:07d}.jpg"


def build_store(folder: Path, images: int, shard_images: int) -> List[Path]:
    """Shards of ``shard_images`` images, written by the plugin's writer
    (validated as written); features from a pool of random images, so that
    writing is disk-bound. Finished shards are kept for reruns."""
    from vtlm_fairseq.data.feature_store import FeatureStoreWriter, RegionFeatures

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((64, R, D)).astype(np.float16)
    corner = rng.random((R, 2)).astype(np.float32) / 2
    boxes = np.concatenate([corner, corner + rng.random((R, 2)).astype(np.float32) / 2], axis=1)
    classes = rng.integers(0, 601, R).astype(np.int16)
    scores = np.sort(rng.random(R).astype(np.float32))[::-1].copy()
    paths = []
    for shard, start in enumerate(range(0, images, shard_images)):
        path = folder / f"shard-{shard:04d}.h5"
        paths.append(path)
        if path.exists():
            continue
        began = time.time()
        with FeatureStoreWriter(path, num_regions=R, feature_dim=D) as writer:
            for i in range(start, min(images, start + shard_images)):
                writer.add(image_name(i), RegionFeatures(pool[i % 64], boxes, classes, scores))
        print(f"  wrote {path.name}: {time.time() - began:.0f}s", file=sys.stderr, flush=True)
    return paths


def build_data_bin(work: Path, images: int) -> Path:
    """A pair per image (``train``: all, ``warm``: the first WARM_IMAGES),
    synthetic pretokenised text, prepared by vtlm-prepare."""
    from vtlm_fairseq.text.preparation import PrepareConfig, prepare

    data_bin = work / "data-bin"
    if (data_bin / "prepare.json").exists():
        return data_bin
    raw, splits = work / "raw", work / "image_splits"
    raw.mkdir(parents=True, exist_ok=True)
    splits.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    words = [f"w{i}" for i in range(2000)]
    for split, n in (("train", images), ("warm", min(images, WARM_IMAGES))):
        for lang in ("en", "de"):
            with open(raw / f"{split}.{lang}", "w") as f:
                for _ in range(n):
                    f.write(" ".join(rng.choices(words, k=rng.randint(8, 16))) + "\n")
        (splits / f"{split}.txt").write_text("".join(image_name(i) + "\n" for i in range(n)))
    prepare(PrepareConfig(raw_dir=str(raw), dest_dir=str(data_bin), image_splits_dir=str(splits),
                          pretokenized=["en", "de"], bpe_merges=500, workers=2))  # fmt: skip
    return data_bin


def drop_from_page_cache(paths: List[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# -- measurements ---------------------------------------------------------------


def disk_ceiling(paths: List[Path], seconds: float) -> float:
    """Images/s of plain sequential 1 MB reads of the cold shard files."""
    drop_from_page_cache(paths)
    done, start = 0, time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                done += len(chunk)
                if time.perf_counter() - start > seconds:
                    return done / IMAGE_BYTES / (time.perf_counter() - start)
    return done / IMAGE_BYTES / (time.perf_counter() - start)


def store_reads(store, rows: np.ndarray, seconds: float) -> float:
    """Images/s of ``read_row`` alone, in the given order, one process."""
    done, start = 0, time.perf_counter()
    for row in rows:
        store.read_row(int(row))
        done += 1
        if done % 64 == 0 and time.perf_counter() - start > seconds:
            break
    return done / (time.perf_counter() - start)


def iterator_rate(data_bin: Path, store_dir: Path, split: str, workers: int, seconds: float) -> Dict[str, float]:
    """Images/s of fairseq's epoch iterator over the visual_tlm task: what
    fairseq-train's loop receives (the task's batches of 64, collated), and
    the CPU each image costs in the main process and in the workers."""
    cfg, task = fairseq_setup([data_bin, "--task", "visual_tlm", "--region-features", store_dir,
                               "--arch", "vtlm_tiny", "--criterion", "vtlm_loss", "--batch-size", "64",
                               "--num-workers", workers, "--train-subset", split, "--seed", "1",
                               "--region-mask-prob", "0.15", "--optimizer", "adam", "--lr", "1e-4"])  # fmt: skip
    task.load_dataset(split)
    dataset = task.dataset(split)
    itr = task.get_batch_iterator(dataset, max_sentences=64, seed=1, num_workers=workers,
                                  required_batch_size_multiple=1).next_epoch_itr(shuffle=True)  # fmt: skip
    first = next(itr)  # workers started
    warm_up = time.perf_counter()
    for _ in itr:  # untimed: each worker opens the shards it meets (their chunk indexes)
        if time.perf_counter() - warm_up > seconds / 4:
            break
    done, start = 0, time.perf_counter()
    main_cpu, tree_cpu = time.process_time(), tree_cpu_time()
    for sample in itr:
        done += int(sample["nsentences"])
        if time.perf_counter() - start > seconds:
            break
    wall = time.perf_counter() - start
    main = time.process_time() - main_cpu
    worker = tree_cpu_time() - tree_cpu - main
    del itr, first
    return {"rate": done / wall, "main_us": 1e6 * main / done, "worker_us": 1e6 * worker / done if workers else 0.0}


def in_child(function, *args):
    """function(*args) in a forked child process: its DataLoader workers are
    the only children there, so their CPU is counted alone, and nothing of an
    earlier measurement's iterator lives on into the next one's workers."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        return pool.submit(function, *args).result()


def read_paths(store, rows: np.ndarray, repeats: int) -> Dict[str, List[Sample]]:
    """read_row through pread (chunk_reads) and through HDF5 (the
    datasets' own reads), warm, in interleaved rounds."""
    shards = getattr(store, "shards", [store])

    def through(direct: bool):
        for shard in shards:
            shard.close()
            shard._layouts = None
            shard.prepare_reads()
            if not direct:  # no row layouts: every row read through HDF5
                shard._layouts = {key: None for key in shard._layouts}
        return lambda: store_reads(store, rows, 1e9)

    blocks = {"pread": lambda: through(True)(), "HDF5": lambda: through(False)()}
    return interleaved(blocks, repeats)


def write_paths(folder: Path, images: int, repeats: int) -> Dict[str, List[Sample]]:
    """The store writer gathering 256 images per write (as it does) against
    a write per image (its former way: blocks of one), interleaved."""
    from vtlm_fairseq.data import feature_store
    from vtlm_fairseq.data.feature_store import FeatureStoreWriter, RegionFeatures

    rng = np.random.default_rng(2)
    regions = RegionFeatures(rng.standard_normal((R, D)).astype(np.float16),
                             np.tile(np.array([0.1, 0.1, 0.5, 0.5], np.float32), (R, 1)),
                             np.arange(R, dtype=np.int16), np.linspace(1, 0.1, R, dtype=np.float32))  # fmt: skip

    def write(rows_per_block: int):
        def block():
            saved, feature_store._RowBlock.ROWS = feature_store._RowBlock.ROWS, rows_per_block
            try:
                with FeatureStoreWriter(folder / "write-test.h5", num_regions=R, feature_dim=D, overwrite=True) as w:
                    for i in range(images):
                        w.add(f"i{i}", regions)
            finally:
                feature_store._RowBlock.ROWS = saved
            return images
        return block

    try:
        return interleaved({"blocks of 256": write(256), "one image per write": write(1)}, repeats)
    finally:
        (folder / "write-test.h5").unlink(missing_ok=True)


def main():
    parser = base_parser(__doc__.split("\n\n")[0], repeats=1)
    parser.add_argument("--store-gb", type=float, default=40.0, help="size of the store's features (default 40)")
    parser.add_argument("--shard-images", type=int, default=10_000, help="images per shard (default 10,000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of batches per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4], help="--num-workers values")
    args = parser.parse_args()
    set_threads(args.threads)
    quiet_logging()
    work = args.work / "loader"
    images = int(args.store_gb * 1e9 / IMAGE_BYTES)
    print(f"store: {images} images of {IMAGE_BYTES / 1e3:.0f} KB ({images * IMAGE_BYTES / 1e9:.1f} GB) in "
          f"{work / 'store'}", file=sys.stderr, flush=True)  # fmt: skip
    shards = build_store(work / "store", images, args.shard_images)
    data_bin = build_data_bin(work, images)
    report = Report("loader", args)
    report.extra["store"] = {"images": images, "gigabytes": round(images * IMAGE_BYTES / 1e9, 1),
                             "shards": len(shards), "image_bytes": IMAGE_BYTES}  # fmt: skip

    from vtlm_fairseq.data.feature_store import open_store

    disk = disk_ceiling(shards, args.seconds)
    store = open_store(str(work / "store"))
    for start in store.offsets[:-1] if hasattr(store, "offsets") else [0]:
        store.read_row(int(start))  # every shard opened (its chunk index read) before any timing
    rows = np.random.default_rng(1).permutation(len(store))
    drop_from_page_cache(shards)
    cold_reads = store_reads(store, rows, args.seconds)
    store_reads(store, rows[:WARM_IMAGES], 1e9)  # the warm split's images, into the page cache
    warm_reads = store_reads(store, rows[:WARM_IMAGES], args.seconds)
    report.add(Row("loader", "images/s, cold", "read_row, 1 process", "disk ceiling", cold_reads, disk,
                   cold_reads / disk, note="random order over the whole store"))  # fmt: skip
    paths = read_paths(store, rows[: min(WARM_IMAGES, 20_000)], repeats=3)
    report.add(timed_row("loader", "images/s, warm", paths, "pread", "HDF5", clock="wall",
                         note="read_row, one pread per dataset vs h5py's reads"))  # fmt: skip
    writes = write_paths(work, 2000, repeats=3)
    report.add(timed_row("loader", "images/s written", writes, "blocks of 256", "one image per write", clock="wall",
                         note="FeatureStoreWriter, 36 x 1536 float16, fsync at close"))  # fmt: skip
    report.add(Row("loader", "images/s, warm", "read_row, 1 process", "target", warm_reads, TARGET,
                   warm_reads / TARGET))  # fmt: skip

    rates: Dict[str, dict] = {}
    for condition, split in (("cold", "train"), ("warm", "warm")):
        for workers in args.workers:
            if condition == "cold":
                drop_from_page_cache(shards)
            else:  # every image of the split read once
                store_reads(store, np.arange(min(WARM_IMAGES, len(store))), 1e9)
            m = in_child(iterator_rate, data_bin, work / "store", split, workers, args.seconds)
            rates[f"{condition} {workers}"] = m
            ceiling = f"{m['rate'] / (disk if condition == 'cold' else warm_reads):.2f}x the " + (
                "disk" if condition == "cold" else "warm read_row") + " ceiling"
            cpu = (f"CPU per image: main {m['main_us']:.0f} us" +
                   (f", workers {m['worker_us']:.0f} us" if workers else ""))  # fmt: skip
            report.add(Row("loader", f"images/s, {condition}", f"fairseq iterator, --num-workers {workers}",
                           "target", m["rate"], TARGET, m["rate"] / TARGET, target=">= 1.0",
                           note=f"{ceiling}; {cpu}"))  # fmt: skip
    # what W workers give where each has a core of its own: W images per
    # worker-CPU-time, until the main process (receiving batches) saturates
    for condition in ("cold", "warm"):
        measured = [(w, rates[f"{condition} {w}"]) for w in args.workers if w and f"{condition} {w}" in rates]
        if measured:
            w, m = max(measured, key=lambda x: x[0])
            per_worker, main_ceiling = 1e6 / m["worker_us"], 1e6 / max(m["main_us"], 1e-9)
            for want in (4, 8, 16):
                projected = min(want * per_worker, main_ceiling)
                report.add(Row("loader", f"images/s, {condition}, projected", f"--num-workers {want}, a core each",
                               "target", projected, TARGET, projected / TARGET, target=">= 1.0",
                               note=f"from --num-workers {w}: {per_worker:.0f} images per worker-CPU-second, "
                               f"main process ceiling {main_ceiling:.0f}/s"))  # fmt: skip
    report.extra["rates"] = rates
    report.extra["ceilings"] = {"disk": disk, "read_row_cold": cold_reads, "read_row_warm": warm_reads}
    report.finish()


if __name__ == "__main__":
    main()
