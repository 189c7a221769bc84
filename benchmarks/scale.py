"""Conceptual Captions at scale (issue 15): a synthetic Conceptual Captions
of 10k, 100k and 1M pairs through every stage, as a user runs them, each
stage a command of its own with its wall time and peak RSS:

- **download**: ``vtlm-cc download`` of the TSVs' images, served from
  127.0.0.1 (sizes up to ``--download-max``; above, the images are those of
  the feature store);
- **filter**: ``vtlm-cc filter`` against the downloaded images (records)
  and the feature store;
- **prepare**: ``vtlm-cc prepare`` (streamed tokenisation, BPE,
  fairseq-preprocess);
- **store open**: the extraction's shards opened as one store and every
  image of the training split looked up, as a training process builds its
  dataset (``RegionFeatureDataset.from_order_file``);
- **training start-up**: ``fairseq-train`` VTLM (``vtlm_tiny``) on the
  data-bin and the shards, to its first update;
- **100 updates**: the same run to update 100.

The corpus is made with the plugin's own generators: the toy world's scenes
and captions (English and German) and its region renderer, one image per
pair, written as extraction shards of ``--shard-images`` (``--regions`` x
``--feature-dim`` float16, small so that 1M images fit the disk: 36 x 64 is
4.6 KB an image). The table gives each stage's time and memory per size and
their growth from the smallest to the largest size: time must grow no faster
than the data, and memory must stay flat where data is streamed (training
start-up RSS at most 1.2x from 10k to 1M images).

    python benchmarks/scale.py --json work_dirs/bench/scale.json
    python benchmarks/scale.py --sizes 2000 20000        # a quick look
"""

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script too

import numpy as np  # noqa: E402

from benchmarks.benchlib import Report, Row, base_parser, fairseq_command, peak_rss_mb  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STAGES = ("download", "filter", "prepare", "store open", "training start-up", "100 updates")
# stages whose data is streamed: their memory must not grow with the corpus
STREAMED = {"prepare": 1.2, "training start-up": 1.2, "100 updates": 1.2, "download": 1.2}


# -- the corpus ----------------------------------------------------------------


def held_out(n: int) -> int:
    return max(100, min(2000, n // 50))


def generate(folder: Path, pairs: int, regions: int, dim: int, shard_images: int, port_marker: str) -> Dict[str, Path]:
    """TSVs of train (``pairs``), valid and test (id, url, English, German)
    and the images' region stores as extraction shards. Kept for reruns
    (``done`` marker); URLs name ``port_marker``, replaced by the server's
    address at download time."""
    from vtlm_fairseq.data.feature_store import FeatureStoreWriter
    from vtlm_fairseq.toy_world.scenes import RegionRenderer, sample_caption, sample_scene

    tsvs = {split: folder / f"cc.tsv.{split}" for split in ("train", "valid", "test")}
    if (folder / "done").exists():
        return tsvs
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(pairs)
    renderer = RegionRenderer(1, regions, dim)
    shards = folder / "shards"
    shards.mkdir(exist_ok=True)
    writer, shard, written = None, 0, 0
    began = time.time()
    image = 0
    for split, n in (("train", pairs), ("valid", held_out(pairs)), ("test", held_out(pairs))):
        with open(tsvs[split], "w", encoding="utf-8") as tsv:
            for _ in range(n):
                scene = sample_scene(rng, 0.2)
                caption = sample_caption(rng, scene)
                image_id = f"{image:08d}"
                tsv.write(f"{image_id}\thttp://{port_marker}/{image_id}.jpg\t{caption.en.lower()}\t{caption.de}\n")
                if writer is None:
                    writer = FeatureStoreWriter(shards / f"shard-{shard:04d}.h5", num_regions=regions,
                                                feature_dim=dim, overwrite=True)  # fmt: skip
                writer.add(f"{image_id}.jpg", renderer.render(rng, scene))
                written += 1
                image += 1
                if written == shard_images:
                    writer.close()
                    writer, shard, written = None, shard + 1, 0
    if writer is not None:
        writer.close()
    (folder / "done").write_text(f"{time.time() - began:.1f} s\n")
    return tsvs


def jpeg_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(buf, format="JPEG")
    return buf.getvalue()


class ImageServer:
    """Every /<id>.jpg is the same small JPEG."""

    def __init__(self):
        data = jpeg_bytes()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# -- the stages ------------------------------------------------------------------


def run_stage(command: List[str], env: Optional[dict] = None) -> Dict[str, float]:
    start = time.perf_counter()
    rss, _ = peak_rss_mb(command, env=env)
    return {"seconds": time.perf_counter() - start, "rss_mb": rss}


STORE_OPEN = """import sys
from vtlm_fairseq.data.feature_store import open_store
from vtlm_fairseq.data.region_dataset import RegionFeatureDataset
store = open_store(sys.argv[1])
regions = RegionFeatureDataset.from_order_file(store, sys.argv[2])
print(len(store), "images,", len(regions), "pairs looked up")
"""


def stages_of(folder: Path, tsvs: Dict[str, Path], download: bool, server: Optional[ImageServer],
              workers: int, updates: int) -> Dict[str, Dict[str, float]]:  # fmt: skip
    vtlm_cc = fairseq_command("vtlm-cc")
    results = {}
    out = {}
    if download:
        live = {}
        (folder / "live").mkdir(exist_ok=True)
        for split, tsv in tsvs.items():  # the server's port of this run
            live[split] = folder / "live" / tsv.name
            live[split].write_text(tsv.read_text().replace("PORT_MARKER", server.address))
        images = folder / "images"
        shutil.rmtree(images, ignore_errors=True)  # a fresh download, not a rerun that finds everything there
        results["download"] = run_stage([vtlm_cc, "download", *map(str, live.values()), "--out", str(images),
                                         "--processes", str(workers), "--threads", "16", "--timeout", "10"],
                                        env={**os.environ, "no_proxy": "127.0.0.1"})  # fmt: skip
        out["images"] = ["--image-dir", str(images)]
    filtered = folder / "filtered"
    results["filter"] = run_stage([vtlm_cc, "filter", *map(str, tsvs.values()), "--out", str(filtered),
                                   "--features", str(folder / "shards"), "--force", *out.get("images", [])])
    data_bin = folder / "data-bin"
    results["prepare"] = run_stage([vtlm_cc, "prepare", str(filtered), str(data_bin), "--workers", str(workers),
                                    "--bpe-merges", "8000", "--force"])  # fmt: skip
    results["store open"] = run_stage([sys.executable, "-c", STORE_OPEN, str(folder / "shards"),
                                       str(data_bin / "train.order")])  # fmt: skip
    train = [fairseq_command("fairseq-train"), str(data_bin), "--user-dir", str(REPO / "vtlm_fairseq"),
             "--task", "visual_tlm", "--region-features", str(folder / "shards"), "--arch", "vtlm_tiny",
             "--criterion", "vtlm_loss", "--optimizer", "adam", "--lr", "1e-4", "--batch-size", "32",
             "--cpu", "--num-workers", "0", "--disable-validation", "--no-save", "--seed", "1",
             "--log-format", "simple", "--log-interval", "50"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results["training start-up"] = run_stage(train + ["--max-update", "1"], env=env)
    results["100 updates"] = run_stage(train + ["--max-update", str(updates)], env=env)
    return results


def finished_sizes(path: Optional[Path], report: Report) -> Dict[int, Dict[str, Dict[str, float]]]:
    """The sizes an earlier, killed run measured in full, if it ran the same
    commit with the same arguments; nothing otherwise."""
    if path is None or not Path(path).exists():
        return {}
    earlier = json.loads(Path(path).read_text())
    same_code = earlier.get("environment", {}).get("git_head") == report.environment().get("git_head")
    free = ("sizes", "resume", "json")
    same_arguments = {k: v for k, v in earlier.get("arguments", {}).items() if k not in free} == {
        k: str(v) for k, v in vars(report.args).items() if k not in free}  # fmt: skip
    if not (same_code and same_arguments):
        print(f"{path}: another commit or other arguments; measuring every size", file=sys.stderr)
        return {}
    return {int(size): stages for size, stages in earlier.get("stages", {}).items() if set(stages) == set(STAGES)}


def main():
    parser = base_parser(__doc__.split("\n\n")[0], repeats=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="training pairs of each corpus (default: 10k 100k 1M)")
    parser.add_argument("--download-max", type=int, default=100_000,
                        help="largest size whose images are downloaded from 127.0.0.1 (default 100k)")
    parser.add_argument("--regions", type=int, default=36, help="regions per image (default 36)")
    parser.add_argument("--feature-dim", type=int, default=64, help="feature dimension (default 64)")
    parser.add_argument("--shard-images", type=int, default=10_000, help="images per store shard (default 10k)")
    parser.add_argument("--workers", type=int, default=2, help="processes of download and prepare (default 2)")
    parser.add_argument("--updates", type=int, default=100, help="updates of the training stage (default 100)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the sizes that --json already holds in full from a run of the same commit "
                             "and arguments (a run killed part-way goes on with the next size)")
    args = parser.parse_args()
    report = Report("scale", args)
    measured = finished_sizes(args.json, report) if args.resume else {}
    server = ImageServer()
    try:
        for size in args.sizes:
            if size in measured:
                print(f"[{size}] kept from {args.json}", file=sys.stderr, flush=True)
                continue
            folder = args.work / "scale" / f"n{size}"
            began = time.time()
            tsvs = generate(folder, size, args.regions, args.feature_dim, args.shard_images, "PORT_MARKER")
            print(f"[{size}] corpus ready ({time.time() - began:.0f} s)", file=sys.stderr, flush=True)
            measured[size] = stages_of(folder, tsvs, size <= args.download_max, server, args.workers, args.updates)
            for stage, m in measured[size].items():
                print(f"[{size}] {stage}: {m['seconds']:.1f} s, {m['rss_mb']:.0f} MB", file=sys.stderr, flush=True)
            report.extra["stages"] = {str(k): v for k, v in sorted(measured.items())}
            report.save()
    finally:
        server.close()

    lines = ["| stage | " + " | ".join(f"{s:,} pairs" for s in args.sizes) + " | growth (time, RSS) |",
             "|---" * (len(args.sizes) + 2) + "|"]  # fmt: skip
    for stage in STAGES:
        have = [s for s in args.sizes if stage in measured[s]]
        if not have:
            continue
        cells = [f"{measured[s][stage]['seconds']:.1f} s, {measured[s][stage]['rss_mb']:.0f} MB" if s in have else "-"
                 for s in args.sizes]  # fmt: skip
        small, large = have[0], have[-1]
        data = large / small
        t = measured[large][stage]["seconds"] / measured[small][stage]["seconds"]
        m = measured[large][stage]["rss_mb"] / measured[small][stage]["rss_mb"]
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {t:.1f}x, {m:.2f}x (data {data:.0f}x) |")
        if large != small:
            report.add(Row("scale", f"{stage}: wall time", f"{large:,} pairs", f"{small:,} pairs",
                           measured[large][stage]["seconds"], measured[small][stage]["seconds"], t,
                           target=f"<= {data:g}", note="time grows no faster than the data"))  # fmt: skip
            report.add(Row("scale", f"{stage}: peak RSS MB", f"{large:,} pairs", f"{small:,} pairs",
                           measured[large][stage]["rss_mb"], measured[small][stage]["rss_mb"], m,
                           target=f"<= {STREAMED[stage]}" if stage in STREAMED else None,
                           note="streamed: flat" if stage in STREAMED else "holds an index of the images"))  # fmt: skip
    table = "\n".join(lines)
    report.extra["table"] = table
    report.finish()
    print("\n" + table)


if __name__ == "__main__":
    main()
