"""The HDF5 feature store against the reference's one-pickle-per-image layout
(issue area 4):

- random access: images/s of batch-sized reads of random images, as the
  data loaders do them (``FeatureStore.read_row`` per image; the reference
  ``pickle.load`` per image), with the page cache warm and with the files'
  pages evicted first (posix_fadvise DONTNEED: data pages only, directory
  and inode caches stay warm, which favours the pickles); target >= 10x.
- bytes on disk: float16 store vs float32 pickles of the same images;
  target about half (<= 0.55).
- peak RSS of a VTLM training run (fairseq-train, vtlm_tiny, in-process
  data loading) whose store holds N images, the same training images plus
  synthetic ones: it must not grow with N (<= 1.05x the smallest store); and
  the peak RSS of opening (validating) each store.

    python benchmarks/feature_io.py --json work_dirs/bench/feature_io.json
"""

import os
import pickle
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script too

from benchmarks.benchlib import (  # noqa: E402
    Report,
    Row,
    base_parser,
    fairseq_command,
    interleaved,
    peak_rss_mb,
    quiet_logging,
    timed_row,
    toy_data,
    USER_DIR,
)

# the training run of the RSS test: a small toy world at the real feature size
RSS_WORLD = dict(train_pairs=2000, valid_pairs=100, test_pairs=100, captions_per_image=10,
                 eval_captions_per_image=5, num_regions=36, feature_dim=1536)  # fmt: skip
RSS_TRAIN = ["--task", "visual_tlm", "--arch", "vtlm_tiny", "--criterion", "vtlm_loss", "--optimizer", "adam",
             "--lr", "1e-4", "--batch-size", "64", "--cpu", "--num-workers", "0", "--disable-validation",
             "--no-save", "--seed", "1", "--log-format", "none"]  # fmt: skip


def evict(paths: Sequence[Path]) -> None:
    """Drops the files' pages from the page cache (our files only)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def reference_pickles(store_path: Path, out_dir: Path) -> Dict[str, Path]:
    """Every image of the store as a reference-format pickle (float32), made
    once with the plugin's exporter."""
    from vtlm_fairseq.data.feature_store import FeatureStore
    from vtlm_fairseq.features.reference_features import export_reference_pickles

    names = FeatureStore(store_path, validate="none").names
    done = out_dir / "complete"
    if not done.exists():
        print(f"exporting {len(names)} reference pickles to {out_dir} ...", flush=True)
        export_reference_pickles(store_path, names, out_dir)
        done.touch()
    return {name: out_dir / f"{name}.pkl" for name in names}


def batch_reader(names: List[str], batch_size: int, batches: int, read_one: Callable[[str], object],
                 seed: int = 0) -> Callable[[], float]:  # fmt: skip
    """A block reading ``batches`` batches of random images; every reader
    built with the same seed reads the same images in the same order."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def block() -> float:
        for _ in range(batches):
            for index in rng.choice(len(names), batch_size, replace=False):
                read_one(names[index])
        return float(batch_size * batches)

    return block


def load_pickle(path: Path):
    """As the reference reads its features: a plain pickle.load per image."""
    with open(path, "rb") as f:
        return pickle.load(f)


def random_access_rows(store_path: Path, pickles: Dict[str, Path], args) -> List[Row]:
    from vtlm_fairseq.data.feature_store import FeatureStore

    store = FeatureStore(store_path)
    names = store.names

    def read_store(name):
        return store.read_row(store.row(name))

    def read_pickle(name):
        return load_pickle(pickles[name])

    rows = []
    for cache in ("warm", "cold"):
        variants = {f"HDF5 store ({cache})": read_store, f"reference pickles ({cache})": read_pickle}
        blocks = {k: batch_reader(names, args.batch_size, args.batches, read) for k, read in variants.items()}
        if cache == "warm":
            for path in [store_path, *pickles.values()]:
                path.read_bytes()
            before = None
        else:
            files = {f"HDF5 store ({cache})": [store_path], f"reference pickles ({cache})": list(pickles.values())}

            def before(name, files=files):
                evict(files[name])

        samples = interleaved(blocks, args.repeats, args.warmup, before=before)
        rows.append(timed_row("4 random access", f"images/s, batches of {args.batch_size}", samples,
                              f"HDF5 store ({cache})", f"reference pickles ({cache})", ">= 10", clock="wall"))  # fmt: skip
    return rows


def disk_rows(store_path: Path, pickles: Dict[str, Path]) -> List[Row]:
    store_bytes = store_path.stat().st_size
    pickle_bytes = sum(p.stat().st_size for p in pickles.values())
    return [Row("4 bytes on disk", f"MB for {len(pickles)} images", "HDF5 store (float16)",
                "reference pickles (float32)", store_bytes / 1e6, pickle_bytes / 1e6, store_bytes / pickle_bytes,
                target="<= 0.55")]  # fmt: skip


def grown_store(data, size: int, out: Path) -> Path:
    """A store with the toy world's images and synthetic ones up to ``size``,
    written with the plugin's FeatureStoreWriter (made once)."""
    import numpy as np

    from vtlm_fairseq.data.feature_store import FeatureStore, FeatureStoreWriter, RegionFeatures

    done = out.with_suffix(".complete")
    if done.exists():
        return out
    source = FeatureStore(data.store, validate="none")
    if size < len(source):
        raise ValueError(f"a store of {size} images cannot hold the {len(source)} of {data.store}")
    print(f"writing {out} ({size} images) ...", flush=True)
    rng = np.random.default_rng(0)
    R, D = source.num_regions, source.feature_dim
    # a few random feature blocks, reused: the values do not matter here
    features = [rng.standard_normal((R, D), dtype=np.float32).astype(source.dtype) for _ in range(16)]
    boxes = np.tile(np.array([[0.1, 0.2, 0.6, 0.7]], dtype=np.float32), (R, 1))
    scores = np.linspace(0.9, 0.1, R, dtype=np.float32)
    with FeatureStoreWriter(out, num_regions=R, feature_dim=D, dtype=str(source.dtype)) as writer:
        for row, name in enumerate(source.names):
            writer.add(name, source.read_row(row))
        for i in range(size - len(source)):
            classes = rng.integers(0, writer.num_classes, R)
            writer.add(f"synthetic_{i:07d}", RegionFeatures(features[i % len(features)], boxes, classes, scores))
    done.touch()
    return out


def rss_rows(args) -> List[Row]:
    """Peak RSS of opening each store and of training with it, in rounds over
    the store sizes (the prefetch thread and the allocator move a training
    run's peak by a few percent from run to run): medians, and the min-max
    of the per-round ratios."""
    data = toy_data(args.work / "toy-rss", **RSS_WORLD)
    stores = {size: grown_store(data, size, args.work / f"store-{size}.h5") for size in args.store_sizes}
    open_script = "import sys; from vtlm_fairseq.data.feature_store import FeatureStore; FeatureStore(sys.argv[1])"
    runs: Dict[str, Dict[int, List[float]]] = {"train": {s: [] for s in stores}, "open store": {s: [] for s in stores}}
    for _ in range(args.rss_repeats):
        for size, path in stores.items():
            runs["open store"][size].append(peak_rss_mb([sys.executable, "-c", open_script, path])[0])
            runs["train"][size].append(peak_rss_mb([fairseq_command("fairseq-train"), data.data_bin, "--user-dir",
                                                    USER_DIR, "--region-features", path, *RSS_TRAIN,
                                                    "--max-update", str(args.rss_updates)])[0])  # fmt: skip
            print(f"store of {size} images: open {runs['open store'][size][-1]:.0f} MB, "
                  f"training {runs['train'][size][-1]:.0f} MB", flush=True)  # fmt: skip
    smallest = min(stores)
    rows = []
    for size in stores:
        if size == smallest:
            continue
        for what, peaks in runs.items():
            ratios = [a / b for a, b in zip(peaks[size], peaks[smallest])]
            measure = f"MB, {args.rss_updates} updates" if what == "train" else "MB"
            rows.append(Row("4 peak RSS vs store size", measure, f"{what}, {size} images", f"{what}, {smallest} images",
                            statistics.median(peaks[size]), statistics.median(peaks[smallest]),
                            statistics.median(ratios), target="<= 1.05", repeats=len(ratios), ratio_min=min(ratios),
                            ratio_max=max(ratios), note=f"store {stores[size].stat().st_size / 1e9:.1f} GB"))  # fmt: skip
    return rows


AREAS = ("access", "disk", "rss")


def main(argv: Optional[List[str]] = None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0], repeats=9)
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch")
    parser.add_argument("--batches", type=int, default=4, help="batches per timed block")
    parser.add_argument("--store-sizes", type=int, nargs="+", default=[1000, 10000, 50000],
                        help="images in the stores of the RSS test (D=1536 float16: 110 KB each)")  # fmt: skip
    parser.add_argument("--rss-updates", type=int, default=30, help="training updates of each RSS run")
    parser.add_argument("--rss-repeats", type=int, default=3, help="rounds over the store sizes")
    parser.add_argument("--areas", nargs="+", choices=AREAS, default=list(AREAS))
    args = parser.parse_args(argv)
    quiet_logging()
    report = Report("feature store I/O", args)
    if {"access", "disk"} & set(args.areas):
        data = toy_data(args.work / "toy")
        pickles = reference_pickles(data.store, args.work / "reference-pickles")
        if "access" in args.areas:
            for row in random_access_rows(data.store, pickles, args):
                report.add(row)
        if "disk" in args.areas:
            for row in disk_rows(data.store, pickles):
                report.add(row)
    if "rss" in args.areas:
        for row in rss_rows(args):
            report.add(row)
    report.finish()


if __name__ == "__main__":
    main()
