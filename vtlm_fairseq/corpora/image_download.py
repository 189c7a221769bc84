"""Downloading images by URL into one folder, named by their id, with
img2dataset as the engine (multiprocessing on one machine, pyspark or ray
across many), and the bookkeeping around it that makes reruns exact.

Naming convention: the image of id ``X`` is ``X.jpg``, ``X.png``, ``X.gif``
or ``X.webp``, the extension given by the bytes (Pillow's format, not the
URL or the server's Content-Type). The file name is the image's name
everywhere after: order files, the feature extractor's image list, the
feature store.

Layout of an output folder OUT:

- ``OUT/<id>.<ext>``: the images, the bytes as served (no resize, no
  re-encoding).
- ``OUT/.img2dataset/run-NNNN/``: one img2dataset run: ``input.parquet``
  (id as a string, url: the ids this run downloads), img2dataset's own
  shard files (``SSSSS.parquet``, ``SSSSS_stats.json``) and our record of
  each shard, ``SSSSS.images.parquet`` (id, url, status, error_message,
  file), written once the shard's images are checked and moved into OUT.
  ``run-NNNN.json`` beside it holds the run's img2dataset arguments.
- ``OUT/.img2dataset/lock``: held while a download runs there.

An id's status is its row in the latest run that has it: ``success`` (with
its file), ``failed_to_download`` (img2dataset's message: ``HTTP Error 404:
Not Found``, ``timed out``, ...), ``invalid_image`` (Pillow's message) or
``too_large``. A rerun downloads every id without a success whose file is
there, except permanent failures (see ``is_permanent``), retried only when
asked; an id whose URL changed is tried again.

Killed at any moment (SIGKILL too), the next run continues: shards that
img2dataset finished (their ``_stats.json`` is written last) are checked
and recorded first, half-done shards are removed and their ids downloaded
again, and an image moved into OUT before its shard's record was written is
recognised (its downloaded file is gone, ``OUT/<id>.<ext>`` is there)."""

import fcntl
import importlib.util
import io
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from ..errors import InputError
from ..output_paths import make_output_dir

logger = logging.getLogger(__name__)

# format -> file extension; the order is the preference when one id has
# several files (written by hand or by other tools)
IMAGE_EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "gif": ".gif", "webp": ".webp"}
FORMAT_OF_EXTENSION = {ext: fmt for fmt, ext in IMAGE_EXTENSIONS.items()}
# what the feature extractor's decoder (TensorFlow's decode_image) reads:
# WebP is recognised, but only accepted when asked for
DEFAULT_FORMATS = ("jpeg", "png", "gif")
# Pillow's format names; MPO is the JPEG of many cameras (a JPEG first image)
_PILLOW_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "GIF": "gif", "WEBP": "webp"}

RECORDS_DIR = ".img2dataset"
RECORD_SUFFIX = ".images.parquet"
RECORD_COLUMNS = ("id", "url", "status", "error_message", "file")
_RUN_DIR = re.compile(r"run-(\d+)")
_SHARD_ENTRY = re.compile(r"(\d+)(?:\.parquet|_stats\.json|\.images\.parquet)?")
SUCCESS, FAILED_TO_DOWNLOAD, INVALID_IMAGE, TOO_LARGE = "success", "failed_to_download", "invalid_image", "too_large"

INSTALL_HINT = "pip install -e '.[download]'"
DISTRIBUTORS = ("multiprocessing", "pyspark", "ray")
# img2dataset's default: images whose X-Robots-Tag header says so are skipped
DEFAULT_DISALLOWED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
RUNNER = Path(__file__).with_name("img2dataset_run.py")
POLL_SECONDS = 0.5  # how often a running download is looked at for finished shards
LOCK_WAIT_SECONDS = 10.0  # a killed run's processes take a moment to go


# -- naming ------------------------------------------------------------------

def image_file_name(image_id: str, fmt: str) -> str:
    return image_id + IMAGE_EXTENSIONS[fmt]


def image_id_of(file_name: str) -> Optional[str]:
    """``123.jpg`` -> ``123``; None for names that are not downloaded images."""
    if file_name.startswith("."):
        return None
    stem, dot, ext = file_name.rpartition(".")
    if not dot or not stem or "." + ext not in FORMAT_OF_EXTENSION:
        return None
    return stem


def index_image_names(names: Iterable[str], where: str = "") -> Dict[str, str]:
    """id -> image file name, for names that follow the convention; with
    several files for one id the preferred extension wins (with a warning)."""
    rank = {ext: k for k, ext in enumerate(IMAGE_EXTENSIONS.values())}
    index: Dict[str, str] = {}
    clashes = 0
    for name in names:
        image_id = image_id_of(name)
        if image_id is None:
            continue
        if image_id in index:
            clashes += 1
            if rank[Path(name).suffix] >= rank[Path(index[image_id]).suffix]:
                continue
        index[image_id] = name
    if clashes:
        logger.warning("%s: %d ids have more than one image file; kept one per id", where, clashes)
    return index


def _list_dir(directory) -> List[os.DirEntry]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError as e:
        raise InputError(f"{directory}: cannot be read as a folder ({e.strerror or e})") from None


def _image_names(directory) -> List[str]:
    """The names of the image files in a folder (one listing, no reads)."""
    return [e.name for e in _list_dir(directory) if image_id_of(e.name) is not None and e.is_file()]


def scan_image_dir(directory) -> Dict[str, str]:
    """id -> file name of the images in a folder (one listing, no reads)."""
    return index_image_names(_image_names(directory), str(directory))


def _files_of_id(out_dir: Path, image_id: str) -> List[str]:
    return [n for n in (image_id + ext for ext in IMAGE_EXTENSIONS.values()) if (out_dir / n).is_file()]


# -- checking an image -------------------------------------------------------

def check_image(data: bytes, formats: Iterable[str] = tuple(IMAGE_EXTENSIONS)) -> Tuple[Optional[str], Optional[str]]:
    """(format, None) when Pillow decodes ``data`` as a whole image of one of
    ``formats``, else (None, the reason). A JPEG is decoded at 1/8 scale,
    which reads all its data (a cut-off file fails) at a fraction of the
    cost."""
    from PIL import Image, UnidentifiedImageError

    formats = tuple(formats)
    try:
        with warnings.catch_warnings():
            # between Pillow's two limits a warning; above them, an error
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                fmt = _PILLOW_FORMATS.get(image.format)
                if fmt not in formats:
                    return None, f"{image.format} images are not accepted (accepted: {', '.join(formats)})"
                if fmt == "jpeg":
                    image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
    except UnidentifiedImageError:
        return None, f"not an image Pillow reads (starts with {data[:16]!r})"
    except Exception as e:  # Pillow raises many kinds; any means "unusable"
        return None, f"{type(e).__name__}: {e}"
    return fmt, None


# -- what a failure is ---------------------------------------------------------

_HTTP_ERROR = re.compile(r"HTTP Error (\d{3})")
_CONNECTION_ERRORS = ("<urlopen error", "Connection", "Remote end closed", "IncompleteRead")


def is_permanent(status: str, error: Optional[str]) -> bool:
    """Failures a rerun does not retry unless asked: HTTP 4xx (but 408 and
    429), a redirect not followed (a loop, more than 10, or to anything but
    http(s)), an X-Robots-Tag refusal, a file that is no accepted image or
    too large. Timeouts, 5xx and connection errors may pass."""
    if status in (INVALID_IMAGE, TOO_LARGE):
        return True
    if status != FAILED_TO_DOWNLOAD or not error:
        return False
    if "X-Robots-Tag" in error:
        return True
    match = _HTTP_ERROR.match(error)
    if match:
        code = int(match[1])
        return 300 <= code < 500 and code not in (408, 429)
    return False


def failure_kind(status: str, error: Optional[str]) -> str:
    """A short class of a failure for counting: 'http 404', 'timeout',
    'connection failed', 'x-robots-tag', 'invalid_image', 'too_large', ..."""
    if status != FAILED_TO_DOWNLOAD:
        return status
    error = error or ""
    match = _HTTP_ERROR.match(error)
    if match:
        return f"http {match[1]}"
    if "timed out" in error:
        return "timeout"
    if "X-Robots-Tag" in error:
        return "x-robots-tag"
    if any(text in error for text in _CONNECTION_ERRORS):
        return "connection failed"
    return "other"


def _one_line(text: Optional[str]) -> Optional[str]:
    return None if text is None else " ".join(text.split())


# -- records -------------------------------------------------------------------

def _pyarrow():
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.parquet
    except ImportError:
        raise InputError(f"pyarrow is not installed; it comes with img2dataset: {INSTALL_HINT}") from None
    return pyarrow


def _record_schema():
    pa = _pyarrow()
    return pa.schema([(name, pa.string()) for name in RECORD_COLUMNS])


def _run_dirs(meta: Path) -> List[Path]:
    """The run folders, oldest first."""
    if not meta.is_dir():
        return []
    runs = [(int(m[1]), e.path) for e in _list_dir(meta) if (m := _RUN_DIR.fullmatch(e.name)) and e.is_dir()]
    return [Path(path) for _, path in sorted(runs)]


def record_files(out_dir) -> List[Path]:
    """Every shard record under OUT/.img2dataset, oldest run first."""
    files = []
    for run in _run_dirs(Path(out_dir) / RECORDS_DIR):
        files += sorted(run / e.name for e in _list_dir(run) if e.name.endswith(RECORD_SUFFIX) and e.name[0] != ".")
    return files


def read_records(out_dir, files: Optional[List[Path]] = None):
    """The latest record of every id (a pyarrow Table with RECORD_COLUMNS),
    or None where no download has been recorded."""
    files = record_files(out_dir) if files is None else files
    if not files:
        return None
    pa = _pyarrow()
    schema = _record_schema()
    tables = []
    for path in files:
        try:
            tables.append(pa.parquet.read_table(path, columns=list(RECORD_COLUMNS)).cast(schema))
        except (OSError, ValueError, pa.ArrowException) as e:
            raise InputError(f"{path}: cannot be read as a download record ({e})") from None
    table = pa.concat_tables(tables)
    table = table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
    latest = table.group_by("id", use_threads=False).aggregate([("_row", "max")])["_row_max"]
    return table.take(latest.sort()).drop_columns(["_row"])


def unchecked_downloads(out_dir) -> int:
    """Shards img2dataset finished that no download has checked yet (a run
    was stopped): a rerun of ``vtlm-cc download`` records them."""
    count = 0
    for run in _run_dirs(Path(out_dir) / RECORDS_DIR):
        for stats in run.glob("*_stats.json"):
            count += not (run / (stats.name[: -len("_stats.json")] + RECORD_SUFFIX)).is_file()
    return count


@dataclass
class RecordedImages:
    """What the download records say: id -> image file for the ids whose
    latest record is a success with its file there, and id -> why not for
    the other recorded ids."""

    images: Dict[str, str]
    reasons: Dict[str, str]


def recorded_images(out_dir) -> Optional[RecordedImages]:
    """The images that the download records of ``out_dir`` vouch for; None
    where there are no records (a folder filled by other means)."""
    latest = read_records(out_dir)
    if latest is None:
        return None
    pa = _pyarrow()
    pc = pa.compute
    # column by column: millions of ids, few Python objects per id
    success = pc.equal(latest["status"], SUCCESS)
    there = pc.is_in(latest["file"], value_set=pa.array(_image_names(out_dir), pa.string()))
    good = latest.filter(pc.and_(success, there))
    images = dict(zip(good["id"].to_pylist(), good["file"].to_pylist()))
    gone = latest.filter(pc.and_(success, pc.invert(there)))
    reasons = {image_id: f"downloaded as {name}, which is gone" for image_id, name in
               zip(gone["id"].to_pylist(), gone["file"].to_pylist())}  # fmt: skip
    failed = latest.filter(pc.invert(success))
    why = pc.coalesce(pc.binary_join_element_wise(failed["status"], failed["error_message"], ": "), failed["status"])
    reasons.update(zip(failed["id"].to_pylist(), why.to_pylist()))
    return RecordedImages(images, reasons)


# -- checking the shards img2dataset wrote -------------------------------------

def _stats_done(run_dir: Path, shard: str) -> bool:
    """img2dataset writes a shard's stats last: a parseable one means the
    shard's parquet and files are complete."""
    try:
        json.loads((run_dir / f"{shard}_stats.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (run_dir / f"{shard}.parquet").is_file()


def _place_image(
    src: Path, image_id: str, out_dir: Path, max_bytes: int, formats
) -> Tuple[str, Optional[str], Optional[str]]:
    """(status, error, file) of one image img2dataset downloaded; a good
    one is moved to OUT/<id>.<ext>."""
    try:
        size = src.stat().st_size
    except FileNotFoundError:
        placed = _files_of_id(out_dir, image_id)
        if placed:  # moved by a check that was stopped before its record
            return SUCCESS, None, index_image_names(placed)[image_id]
        return FAILED_TO_DOWNLOAD, "the downloaded file is gone (removed before it was checked)", None
    if size > max_bytes:
        return TOO_LARGE, f"{size} bytes, over the limit of {max_bytes}", None
    fmt, error = check_image(src.read_bytes(), formats)
    if fmt is None:
        return INVALID_IMAGE, error, None
    name = image_file_name(image_id, fmt)
    for other in _files_of_id(out_dir, image_id):  # from an earlier URL or format
        if other != name:
            (out_dir / other).unlink(missing_ok=True)
    os.replace(src, out_dir / name)
    return SUCCESS, None, name


def check_shard(run_dir, shard: str, out_dir, max_bytes: int, formats) -> Tuple[int, int]:
    """Checks the images of one finished img2dataset shard (size, then
    Pillow), moves the good ones into OUT, writes the shard's record and
    removes what is left of its folder. Safe to repeat after an interruption
    at any point. Returns (successes, failures)."""
    pa = _pyarrow()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    columns = ["id", "url", "key", "status", "error_message"]
    try:
        source = pa.parquet.read_table(run_dir / f"{shard}.parquet", columns=columns)
    except (OSError, pa.ArrowException) as e:
        # damaged on disk: dropped whole, its ids are downloaded again
        logger.warning("%s: shard %s cannot be read (%s); its ids are downloaded again", run_dir, shard, e)
        shutil.rmtree(run_dir / shard, ignore_errors=True)
        for name in (f"{shard}.parquet", f"{shard}_stats.json"):
            (run_dir / name).unlink(missing_ok=True)
        return 0, 0
    rows: Dict[str, list] = {name: [] for name in RECORD_COLUMNS}
    successes = 0
    for row in source.to_pylist():
        status, error, name = row["status"], row["error_message"], None
        if status == SUCCESS:
            src = run_dir / shard / f"{row['key']}.jpg"  # img2dataset's name, whatever the format
            status, error, name = _place_image(src, str(row["id"]), out_dir, max_bytes, formats)
        successes += status == SUCCESS
        for column, value in zip(RECORD_COLUMNS, (str(row["id"]), row["url"], status, _one_line(error), name)):
            rows[column].append(value)
    record = run_dir / f"{shard}{RECORD_SUFFIX}"
    tmp = run_dir / f".{record.name}.tmp"
    pa.parquet.write_table(pa.table(rows, schema=_record_schema()), tmp)
    os.replace(tmp, record)
    shutil.rmtree(run_dir / shard, ignore_errors=True)
    return successes, source.num_rows - successes


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole foreground process group: the main process
    # decides, a checker finishes its shard
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _ShardChecker:
    """check_shard on finished shards, each once: in the calling process,
    or with more than one process in a pool of that many."""

    def __init__(self, out_dir: Path, cfg: "DownloadConfig"):
        self.args = (str(out_dir), cfg.max_bytes, tuple(cfg.formats))
        self.pool = None
        if cfg.processes > 1:
            methods = multiprocessing.get_all_start_methods()
            # fork: a worker starts at once, without importing the plugin again
            context = multiprocessing.get_context("fork" if "fork" in methods else None)
            self.pool = ProcessPoolExecutor(cfg.processes, mp_context=context, initializer=_ignore_sigint)
        self.seen = set()
        self.pending = set()
        self.successes = self.failures = 0

    def submit(self, run_dir: Path, shard: str) -> None:
        if (run_dir, shard) in self.seen:
            return
        if self.pool is None:
            self._count(check_shard(run_dir, shard, *self.args))
        else:
            self.pending.add(self.pool.submit(check_shard, run_dir, shard, *self.args))
        # after the check where it runs here: one cut short by Ctrl-C is done again
        self.seen.add((run_dir, shard))

    def collect(self, block: bool = False) -> None:
        if not self.pending:
            return
        done, self.pending = wait(self.pending, timeout=None if block else 0,
                                  return_when=ALL_COMPLETED if block else FIRST_COMPLETED)  # fmt: skip
        for future in done:
            self._count(future.result())

    def _count(self, result: Tuple[int, int]) -> None:
        self.successes += result[0]
        self.failures += result[1]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _finished_shards(run_dir: Path, seen) -> Iterator[str]:
    for stats in sorted(run_dir.glob("*_stats.json")):
        shard = stats.name[: -len("_stats.json")]
        if (run_dir, shard) not in seen and _stats_done(run_dir, shard):
            yield shard


def _tidy_run(run_dir: Path) -> List[str]:
    """Removes what a stopped run left half done (img2dataset's _tmp, shards
    without stats, temporary records, the folders of recorded shards);
    returns the finished shards not checked yet. Only while no download
    runs there (under the lock)."""
    shutil.rmtree(run_dir / "_tmp", ignore_errors=True)
    shards = set()
    for entry in _list_dir(run_dir):
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            os.unlink(entry.path)
        elif match := _SHARD_ENTRY.fullmatch(entry.name):
            shards.add(match[1])
    unchecked = []
    for shard in sorted(shards):
        if (run_dir / f"{shard}{RECORD_SUFFIX}").is_file():
            shutil.rmtree(run_dir / shard, ignore_errors=True)
        elif _stats_done(run_dir, shard):
            unchecked.append(shard)
        else:  # downloaded in part: its ids go into the next run
            shutil.rmtree(run_dir / shard, ignore_errors=True)
            for name in (f"{shard}.parquet", f"{shard}_stats.json"):
                (run_dir / name).unlink(missing_ok=True)
    return unchecked


# -- configuration ---------------------------------------------------------------

def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass
class DownloadConfig:
    out_dir: str
    processes: int = field(default_factory=_cpu_count)  # img2dataset's, and as many checking images
    threads: int = 64  # per process: downloads waiting on the network
    shard_size: int = 10000  # ids per img2dataset shard (each run may use its own)
    distributor: str = "multiprocessing"
    timeout: float = 10.0  # seconds per socket operation (connecting, each read)
    retries: int = 0  # immediate further attempts after any failure
    max_bytes: int = 16 * 1024 * 1024
    formats: Tuple[str, ...] = DEFAULT_FORMATS
    user_agent_token: Optional[str] = None
    disallowed_header_directives: Tuple[str, ...] = DEFAULT_DISALLOWED_DIRECTIVES
    retry_failed: bool = False  # also retry earlier permanent failures


@dataclass
class DownloadJob:
    image_id: str
    url: str
    source: str = ""  # where it was asked for, "file:line"


def require_img2dataset(distributor: str = "multiprocessing") -> None:
    """InputError (one line) unless img2dataset, and the distributor's
    package, can be imported."""
    if importlib.util.find_spec("img2dataset") is None:
        raise InputError(f"img2dataset is not installed; vtlm-cc download needs it: {INSTALL_HINT}")
    if distributor not in DISTRIBUTORS:
        raise InputError(f"unknown distributor {distributor!r} (one of {', '.join(DISTRIBUTORS)})")
    if distributor != "multiprocessing" and importlib.util.find_spec(distributor) is None:
        raise InputError(f"--distributor {distributor}: {distributor} is not installed (pip install {distributor})")


def _img2dataset_args(run_dir: Path, cfg: DownloadConfig) -> dict:
    return dict(
        url_list=str(run_dir / "input.parquet"), input_format="parquet", url_col="url", caption_col=None,
        save_additional_columns=["id"], output_folder=str(run_dir), output_format="files",
        # the bytes as served: no resize, no re-encoding (and no checks)
        resize_mode="no", disable_all_reencoding=True, extract_exif=False, compute_hash="sha256",
        processes_count=cfg.processes, thread_count=cfg.threads, number_sample_per_shard=cfg.shard_size,
        timeout=cfg.timeout, retries=cfg.retries, distributor=cfg.distributor,
        user_agent_token=cfg.user_agent_token,
        disallowed_header_directives=list(cfg.disallowed_header_directives),
        incremental_mode="incremental", enable_wandb=False,
    )  # fmt: skip


# -- a run ---------------------------------------------------------------------------

@dataclass
class DownloadSummary:
    ids: int = 0  # distinct ids asked for
    duplicates: int = 0  # ids asked for again (with the same URL)
    already_present: int = 0
    skipped_failed_before: int = 0  # permanent failures of an earlier run
    to_download: int = 0
    downloaded: int = 0
    failed: int = 0
    unfinished: int = 0  # sent to img2dataset, but no record (a shard it gave up on)
    recovered: int = 0  # images of an earlier, stopped run checked at this start
    without_image: int = 0  # ids still without an image after this run
    failure_kinds: Counter = field(default_factory=Counter)
    run: Optional[str] = None  # this run's folder; None when nothing was to download
    seconds: float = 0.0

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "failure_kinds"}
        out["failure_kinds"] = dict(self.failure_kinds.most_common())
        return out


@contextmanager
def _locked(meta: Path, out_dir: Path):
    """An exclusive lock on OUT/.img2dataset/lock for the whole run; the
    img2dataset process inherits it, so a killed run's last processes hold
    it until they are gone."""
    path = meta / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise InputError(f"{out_dir}: another vtlm-cc download is running there (it holds {path}); "
                                     "wait for it to end") from None  # fmt: skip
                time.sleep(0.1)
        yield fd
    finally:
        os.close(fd)


def _check_writable(out_dir: Path) -> None:
    """Fails before any download, not at the first image."""
    try:
        with tempfile.TemporaryFile(dir=out_dir, prefix=".", suffix=".tmp"):
            pass
    except OSError as e:
        raise InputError(f"{out_dir}: images cannot be written there ({e.strerror or e})") from None


def _jobs_table(jobs: Iterable[DownloadJob], chunk: int = 100_000):
    """(id, url, seq) of the distinct ids in input order (the first URL of
    an id asked for twice), and how many were asked for again."""
    pa = _pyarrow()
    batches, ids, urls = [], [], []

    def flush():
        if ids:
            columns = [pa.array(ids, pa.string()), pa.array(urls, pa.string())]
            batches.append(pa.record_batch(columns, names=["id", "url"]))
            ids.clear()
            urls.clear()

    for job in jobs:
        ids.append(job.image_id)
        urls.append(job.url)
        if len(ids) >= chunk:
            flush()
    flush()
    schema = pa.schema([("id", pa.string()), ("url", pa.string())])
    table = pa.Table.from_batches(batches, schema=schema)
    table = table.append_column("seq", pa.array(range(table.num_rows), pa.int64()))
    first = table.group_by("id", use_threads=False).aggregate([("seq", "min")])["seq_min"]
    distinct = table.take(first.sort())
    return distinct, table.num_rows - distinct.num_rows


def _plan(jobs, latest, present: List[str], retry_failed: bool):
    """Boolean arrays over ``jobs`` (in its order): already there, skipped
    as failed permanently before, to download, and whose URL changed."""
    import numpy as np

    pa = _pyarrow()
    pc = pa.compute
    n = jobs.num_rows
    if latest is None:
        no = pa.array(np.zeros(n, dtype=bool))
        return jobs, no, no, pc.invert(no), no
    rec = latest.rename_columns(["id", "rec_url", "rec_status", "rec_error", "rec_file"])
    joined = jobs.join(rec, keys="id", join_type="left outer").sort_by("seq")
    status = joined["rec_status"]
    recorded = pc.is_valid(status)
    success = pc.fill_null(pc.equal(status, SUCCESS), False)
    same_url = pc.fill_null(pc.equal(joined["url"], joined["rec_url"]), False)
    there = pc.fill_null(pc.is_in(joined["rec_file"], value_set=pa.array(present, pa.string())), False)
    # permanence per distinct (status, error): few, however many ids
    key = pc.binary_join_element_wise(status, pc.fill_null(joined["rec_error"], ""), "\x1f")
    failed = pc.and_(recorded, pc.invert(success))
    permanent_keys = [k for k in pc.unique(key.filter(failed)).to_pylist() if is_permanent(*k.split("\x1f", 1))]
    permanent = pc.fill_null(pc.is_in(key, value_set=pa.array(permanent_keys, pa.string())), False)
    already = pc.and_(pc.and_(success, same_url), there)
    skipped = pc.and_(pc.and_(same_url, failed), permanent)
    if retry_failed:
        skipped = pa.array(np.zeros(n, dtype=bool))
    download = pc.invert(pc.or_(already, skipped))
    changed = pc.and_(recorded, pc.invert(same_url))
    return joined, already, skipped, download, changed


def _count_true(mask) -> int:
    return _pyarrow().compute.sum(mask).as_py() or 0


def _stop(proc: subprocess.Popen) -> None:
    """Kills img2dataset's process group (its workers with it)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _run_img2dataset(run_dir: Path, cfg: DownloadConfig, lock_fd: int, checker: _ShardChecker) -> int:
    """Runs img2dataset on run_dir/input.parquet in a process group of its
    own, checking each shard as soon as it is finished; its exit status.
    Ctrl-C stops it, checks the shards it finished, and goes on."""
    args_file = run_dir.with_suffix(".json")
    args = {"parent_pid": os.getpid(), "download": _img2dataset_args(run_dir, cfg)}
    args_file.write_text(json.dumps(args, indent=2) + "\n", encoding="utf-8")
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_SILENT": "true"}
    # its stdout carries progress, not our summary: onto our stderr
    proc = subprocess.Popen([sys.executable, str(RUNNER), str(args_file)], stdin=subprocess.DEVNULL, stdout=2,
                            env=env, pass_fds=(lock_fd,), start_new_session=True)  # fmt: skip
    try:
        while True:
            status = proc.poll()
            for shard in _finished_shards(run_dir, checker.seen):
                checker.submit(run_dir, shard)
            checker.collect()
            if status is not None:  # the look above came after its end: nothing missed
                break
            time.sleep(POLL_SECONDS)
        checker.collect(block=True)
        return status
    except KeyboardInterrupt:
        _stop(proc)
        logger.info("interrupted: checking the shards img2dataset finished; the rest is downloaded by a rerun")
        for shard in _finished_shards(run_dir, checker.seen):
            checker.submit(run_dir, shard)
        checker.collect(block=True)
        _tidy_run(run_dir)  # the shards cut short: downloaded again by a rerun
        raise
    finally:
        _stop(proc)


def _run_summary(run_dir: Path, summary: DownloadSummary) -> None:
    pa = _pyarrow()
    files = sorted(p for p in run_dir.glob("*" + RECORD_SUFFIX) if not p.name.startswith("."))
    if not files:
        summary.unfinished = summary.to_download
        return
    table = pa.concat_tables([pa.parquet.read_table(p, columns=["status", "error_message"]) for p in files])
    key = pa.compute.binary_join_element_wise(table["status"], pa.compute.fill_null(table["error_message"], ""), "\x1f")
    for item in pa.compute.value_counts(key).to_pylist():
        status, error = item["values"].split("\x1f", 1)
        if status == SUCCESS:
            summary.downloaded += item["counts"]
        else:
            summary.failed += item["counts"]
            summary.failure_kinds[failure_kind(status, error)] += item["counts"]
    summary.unfinished = summary.to_download - table.num_rows


def download_images(jobs: Iterable[DownloadJob], cfg: DownloadConfig) -> DownloadSummary:
    """Downloads the image of every job into ``cfg.out_dir`` unless it is
    there already (or failed permanently before); returns counts.

    Ctrl-C (KeyboardInterrupt): img2dataset is stopped, the shards it
    finished are checked and recorded, then the interrupt goes on; a rerun
    downloads the rest."""
    start = time.time()
    require_img2dataset(cfg.distributor)
    out_dir = make_output_dir(cfg.out_dir)
    _check_writable(out_dir)
    jobs, duplicates = _jobs_table(jobs)  # reads every TSV line first: --strict stops here
    summary = DownloadSummary(ids=jobs.num_rows, duplicates=duplicates)
    meta = make_output_dir(out_dir / RECORDS_DIR)
    with _locked(meta, out_dir) as lock_fd:
        checker = _ShardChecker(out_dir, cfg)
        try:
            # what a stopped run left: its finished shards first
            for run_dir in _run_dirs(meta):
                for shard in _tidy_run(run_dir):
                    checker.submit(run_dir, shard)
            checker.collect(block=True)
            summary.recovered = checker.successes
            if checker.seen:
                logger.info("checked %d shards of a stopped run: %d images", len(checker.seen), checker.successes)
            for run_dir in _run_dirs(meta):
                if not any(run_dir.glob("*" + RECORD_SUFFIX)):  # stopped before any shard was done
                    shutil.rmtree(run_dir)
                    run_dir.with_suffix(".json").unlink(missing_ok=True)

            joined, already, skipped, download, changed = _plan(
                jobs, read_records(out_dir), _image_names(out_dir), cfg.retry_failed
            )
            summary.already_present = _count_true(already)
            summary.skipped_failed_before = _count_true(skipped)
            todo = joined.filter(download).select(["id", "url"])
            summary.to_download = todo.num_rows
            logger.info(
                "%d ids: %d with their image already, %d skipped (failed permanently before; --retry-failed "
                "retries them), %d to download", summary.ids, summary.already_present,
                summary.skipped_failed_before, summary.to_download,
            )  # fmt: skip
            # an image of an earlier URL is not this id's image
            for image_id in joined.filter(_pyarrow().compute.and_(changed, download))["id"].to_pylist():
                for name in _files_of_id(out_dir, image_id):
                    (out_dir / name).unlink()
            if todo.num_rows:
                runs = _run_dirs(meta)
                number = int(_RUN_DIR.fullmatch(runs[-1].name)[1]) + 1 if runs else 0
                run_dir = meta / f"run-{number:04d}"
                run_dir.mkdir()
                _pyarrow().parquet.write_table(todo, run_dir / "input.parquet")
                summary.run = str(run_dir)
                checker.seen.clear()
                checker.successes = checker.failures = 0
                status = _run_img2dataset(run_dir, cfg, lock_fd, checker)
                if status != 0:
                    _tidy_run(run_dir)
                    raise InputError(f"{run_dir}: img2dataset stopped with exit status {status} (its messages "
                                     "are above); the shards it finished are kept, a rerun goes on")  # fmt: skip
                _run_summary(run_dir, summary)
        finally:
            checker.close()
    summary.without_image = summary.ids - summary.already_present - summary.downloaded
    summary.seconds = round(time.time() - start, 1)
    logger.info(
        "downloaded %d images, %d there already, %d failed now, %d skipped as failed before, %d not done; "
        "%d ids without image (%.0fs)", summary.downloaded, summary.already_present, summary.failed,
        summary.skipped_failed_before, summary.unfinished, summary.without_image, summary.seconds,
    )  # fmt: skip
    return summary
