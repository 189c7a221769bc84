"""Downloading images by URL into one folder, named by their id: a bounded
pool of threads, a time limit per attempt, retries with exponential back-off
on transient errors, a size cap, a structural check that each file is an
image, atomic writes, and a JSON-lines report of every failure. A rerun
fetches only what is missing and skips earlier permanent failures. Only
http(s) URLs are fetched, redirects included. Ctrl-C stops the running
attempts within one time limit and keeps what is done.

Naming convention: the image of id ``X`` is ``X.jpg``, ``X.png``, ``X.gif``
or ``X.webp``, the extension given by the bytes (not by the URL or the
server's Content-Type). The file name is the image's name everywhere after:
order files, the feature extractor's image list, the feature store."""

import http.client
import io
import json
import logging
import os
import socket
import ssl
import struct
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple
from urllib.parse import urljoin, urlsplit

from tqdm import tqdm

from ..errors import InputError
from ..output_paths import make_output_dir

logger = logging.getLogger(__name__)

# format -> file extension; the order is the preference when one id has
# several files (written by hand or by other tools)
IMAGE_EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "gif": ".gif", "webp": ".webp"}
FORMAT_OF_EXTENSION = {ext: fmt for fmt, ext in IMAGE_EXTENSIONS.items()}
# what the feature extractor's decoder (TensorFlow's decode_image) reads:
# WebP is recognised, but only downloaded when asked for
DEFAULT_FORMATS = ("jpeg", "png", "gif")
PART_SUFFIX = ".part"  # files being written; never an image
FAILURE_REPORT = "download_failures.jsonl"
USER_AGENT = "Mozilla/5.0 (compatible; vtlm-fairseq image downloader)"
URL_SCHEMES = ("http", "https")  # the only ones fetched, redirects included


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


def scan_image_dir(directory) -> Dict[str, str]:
    """id -> file name of the images in a folder (one listing, no reads)."""
    names = [e.name for e in _list_dir(directory) if e.is_file()]
    return index_image_names(names, str(directory))


# -- checking the bytes ------------------------------------------------------

class InvalidImage(ValueError):
    """The bytes are not a complete image; ``truncated`` when they look like a
    cut-off download (worth another attempt) rather than not an image at all."""

    def __init__(self, reason: str, truncated: bool = False):
        super().__init__(reason)
        self.truncated = truncated


def detect_format(data: bytes) -> Optional[str]:
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _truncated(fmt: str, what: str) -> InvalidImage:
    return InvalidImage(f"{fmt} is truncated ({what})", truncated=True)


# SOFn markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not
_JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _check_jpeg(data: bytes) -> None:
    """Walks the segments up to the first scan: a frame header with a size,
    then scan data followed by an end-of-image marker. Bytes after that
    marker are tolerated (some cameras and CMSs pad files)."""
    n, pos, frame = len(data), 2, None
    while True:
        if pos >= n:
            raise _truncated("jpeg", "no image data")
        if data[pos] != 0xFF:
            raise InvalidImage(f"jpeg: no segment marker at byte {pos}")
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            raise _truncated("jpeg", "no image data")
        marker = data[pos]
        pos += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length field
            continue
        if marker == 0xD9:
            raise InvalidImage("jpeg ends before its image data")
        if pos + 2 > n:
            raise _truncated("jpeg", "no image data")
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            raise InvalidImage(f"jpeg: segment length {length} at byte {pos}")
        if pos + length > n:
            raise _truncated("jpeg", "inside a header segment")
        if marker in _JPEG_SOF:
            if length < 8:
                raise InvalidImage("jpeg: frame header too short")
            height, width = struct.unpack(">HH", data[pos + 3 : pos + 7])
            if width == 0:  # height 0 is legal (given later by a DNL segment)
                raise InvalidImage("jpeg: image width 0")
            frame = (width, height)
        if marker == 0xDA:
            if frame is None:
                raise InvalidImage("jpeg: image data before any frame header")
            scan_start = pos + length
            break
        pos += length
    # scan data never holds FF D9 (FF is stuffed), so the last one is the end
    end = data.rfind(b"\xff\xd9")
    if end < scan_start:
        raise _truncated("jpeg", "no end-of-image marker after the image data")
    if end == scan_start:
        raise InvalidImage("jpeg: empty image data")


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_raw_size(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> int:
    """Bytes of the filtered scanlines that the IDAT stream must inflate to."""
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    size = 0
    for x0, y0, dx, dy in passes:
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if w > 0 and h > 0:
            size += h * (1 + (w * bits_per_pixel + 7) // 8)
    return size


def _check_png(data: bytes) -> None:
    """Every chunk's CRC, IHDR first, and the IDAT stream inflated (in
    bounded pieces) to exactly the size that IHDR implies, then IEND."""
    n, pos = len(data), 8
    expected, inflated, inflater = None, 0, zlib.decompressobj()
    while True:
        if pos + 8 > n:
            raise _truncated("png", "no IEND chunk")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > n:
            raise _truncated("png", f"inside chunk {kind.decode('latin-1')!r}")
        body = data[pos + 8 : pos + 8 + length]
        if zlib.crc32(kind + body) != struct.unpack(">I", data[end - 4 : end])[0]:
            raise InvalidImage(f"png: chunk {kind.decode('latin-1')!r} at byte {pos} fails its CRC")
        if expected is None:
            if kind != b"IHDR" or length != 13:
                raise InvalidImage("png does not start with an IHDR chunk")
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if width == 0 or height == 0:
                raise InvalidImage(f"png: image size {width}x{height}")
            if depth not in _PNG_DEPTHS.get(color, ()):
                raise InvalidImage(f"png: bit depth {depth} with colour type {color}")
            expected = _png_raw_size(width, height, depth * _PNG_CHANNELS[color], interlace == 1)
        elif kind == b"IDAT":
            pending = body
            while pending:
                try:
                    inflated += len(inflater.decompress(pending, 1 << 20))
                except zlib.error as e:
                    raise InvalidImage(f"png: image data does not inflate ({e})") from None
                pending = inflater.unconsumed_tail
                if inflated > expected:
                    raise InvalidImage("png: more image data than its size allows")
        elif kind == b"IEND":
            break
        pos = end
    if not inflater.eof or inflated != expected:
        raise _truncated("png", f"{inflated} of {expected} bytes of image data")


def _check_gif(data: bytes) -> None:
    if len(data) < 13:
        raise _truncated("gif", "no screen descriptor")
    width, height = struct.unpack("<HH", data[6:10])
    if width == 0 or height == 0:
        raise InvalidImage(f"gif: image size {width}x{height}")
    if data.rstrip(b"\x00")[-1:] != b";":
        raise _truncated("gif", "no trailer byte")


def _check_webp(data: bytes) -> None:
    if len(data) < 20:
        raise _truncated("webp", "no image chunk")
    riff_size = struct.unpack("<I", data[4:8])[0]
    if 8 + riff_size > len(data):
        raise _truncated("webp", f"{len(data)} of {8 + riff_size} bytes")
    if data[12:16] not in (b"VP8 ", b"VP8L", b"VP8X"):
        raise InvalidImage(f"webp: unknown first chunk {data[12:16]!r}")


_CHECKS = {"jpeg": _check_jpeg, "png": _check_png, "gif": _check_gif, "webp": _check_webp}


@lru_cache(maxsize=None)
def _pillow():
    """Pillow's Image module where it is installed: a full decode on top of
    the structural checks. Not a dependency."""
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


def check_image(data: bytes, formats: Iterable[str] = tuple(IMAGE_EXTENSIONS)) -> str:
    """The image format of ``data``; raises InvalidImage with the reason when
    it is not a complete image of one of ``formats``."""
    fmt = detect_format(data)
    if fmt is None:
        head = data[:16]
        raise InvalidImage(f"not a JPEG, PNG, GIF or WebP image (starts with {head!r})")
    if fmt not in formats:
        raise InvalidImage(f"{fmt} images are not accepted (accepted: {', '.join(formats)})")
    _CHECKS[fmt](data)
    image_module = _pillow()
    if image_module is not None:
        try:
            with image_module.open(io.BytesIO(data)) as image:
                image.load()
        except Exception as e:  # Pillow raises many kinds; any means "unusable"
            raise InvalidImage(f"{fmt} does not decode ({type(e).__name__}: {e})") from None
    return fmt


# -- fetching ----------------------------------------------------------------

@dataclass
class DownloadConfig:
    out_dir: str
    workers: int = 64  # threads waiting on the network, not CPUs
    # seconds per attempt: for connecting, for each wait on the server and
    # for the whole transfer
    timeout: float = 10.0
    retries: int = 2  # further attempts after a transient failure
    backoff: float = 1.0  # seconds before the first retry, doubled after each
    max_bytes: int = 16 * 1024 * 1024
    max_redirects: int = 5
    formats: Tuple[str, ...] = DEFAULT_FORMATS
    user_agent: str = USER_AGENT
    report: Optional[str] = None  # default: OUT_DIR/download_failures.jsonl
    retry_failed: bool = False  # also retry earlier permanent failures
    verify_existing: bool = False  # re-check files already there (reads them)
    progress: Optional[bool] = None  # tqdm's default: a bar on a terminal

    @property
    def report_path(self) -> Path:
        return Path(self.report) if self.report else Path(self.out_dir) / FAILURE_REPORT


@dataclass
class DownloadJob:
    image_id: str
    url: str
    source: str = ""  # where it was asked for, "file:line"


class FetchError(Exception):
    """One failed attempt; ``transient`` failures are retried."""

    def __init__(self, reason: str, transient: bool):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


class _HttpRedirects(urllib.request.HTTPRedirectHandler):
    """At most ``limit`` redirects, each to an http(s) URL: urllib's own
    handler also follows ftp:// and refuses file: or data: with a message
    that reads like a redirect loop."""

    def __init__(self, limit: int):
        super().__init__()
        # a loop on one URL counts against the same limit
        self.max_redirections = self.max_repeats = limit

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("location", headers.get("uri"))
        # relative locations inherit the scheme of the URL redirected from
        if location is not None and urlsplit(urljoin(req.full_url, location)).scheme not in URL_SCHEMES:
            fp.close()
            raise FetchError(f"redirect to {location!r} refused: only http(s) URLs are followed", False)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def build_opener(cfg: DownloadConfig) -> urllib.request.OpenerDirector:
    """An opener that knows http(s) only: no ftp:, file: or data: handler
    (urllib's build_opener adds them), so no URL can reach them."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(), urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(), _HttpRedirects(cfg.max_redirects),
        urllib.request.HTTPErrorProcessor(), urllib.request.UnknownHandler(),
    ):  # fmt: skip
        opener.add_handler(handler)
    return opener


def _http_error(e: urllib.error.HTTPError, cfg: DownloadConfig) -> FetchError:
    if 300 <= e.code < 400:  # urllib gave up following: loop, limit or scheme
        return FetchError(f"redirect not followed (at most {cfg.max_redirects}): {e.reason}", False)
    # request timeout, rate limiting and server errors may pass
    transient = e.code in (408, 429) or e.code >= 500
    return FetchError(f"http {e.code} {e.reason}", transient)


def fetch_once(url: str, cfg: DownloadConfig, opener=None, stop: Optional[threading.Event] = None) -> bytes:
    """One attempt: the body, at most ``max_bytes``, within ``timeout``;
    given up when ``stop`` is set."""
    opener = opener or build_opener(cfg)
    deadline = time.monotonic() + cfg.timeout
    request = urllib.request.Request(url, headers={"User-Agent": cfg.user_agent, "Accept": "image/*,*/*;q=0.5"})
    try:
        with opener.open(request, timeout=cfg.timeout) as response:
            if response.status != 200:
                raise FetchError(f"http {response.status} {response.reason}", False)
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > cfg.max_bytes:
                raise FetchError(f"too large: {declared} bytes (limit {cfg.max_bytes})", False)
            body = bytearray()
            while True:
                if stop is not None and stop.is_set():
                    raise FetchError("interrupted", True)
                if time.monotonic() > deadline:
                    raise FetchError(f"timeout: transfer not done after {cfg.timeout:g}s", True)
                # read1: one socket read at most, so the deadline is checked
                # even when a server sends a trickle of bytes
                chunk = response.read1(64 * 1024)
                if not chunk:
                    break
                body += chunk
                if len(body) > cfg.max_bytes:
                    raise FetchError(f"too large: over {cfg.max_bytes} bytes", False)
            return bytes(body)
    except FetchError:
        raise
    except urllib.error.HTTPError as e:
        raise _http_error(e, cfg) from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise FetchError(f"timeout after {cfg.timeout:g}s (connecting)", True) from None
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise FetchError(f"TLS certificate rejected: {reason.verify_message}", False) from None
        if isinstance(reason, str):  # e.g. "unknown url type"
            raise FetchError(f"bad URL: {reason}", False) from None
        raise FetchError(f"connection failed: {reason}", True) from None
    except (TimeoutError, socket.timeout):
        raise FetchError(f"timeout: no answer within {cfg.timeout:g}s", True) from None
    except http.client.InvalidURL as e:
        raise FetchError(f"bad URL: {e}", False) from None
    except (http.client.HTTPException, OSError) as e:
        raise FetchError(f"connection failed: {type(e).__name__}: {e}", True) from None
    except ValueError as e:  # urllib's own URL checks
        raise FetchError(f"bad URL: {e}", False) from None


@dataclass
class FetchResult:
    job: DownloadJob
    file_name: Optional[str] = None  # set on success
    reason: Optional[str] = None  # set on failure
    permanent: bool = False
    attempts: int = 0
    size: int = 0

    @property
    def ok(self) -> bool:
        return self.file_name is not None


def _write_atomically(path: Path, data: bytes) -> None:
    """A killed run leaves a hidden .part file, never a partial image."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{PART_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def download_one(
    job: DownloadJob, cfg: DownloadConfig, opener=None, stop: Optional[threading.Event] = None
) -> FetchResult:
    """Fetch, check and store one image, retrying transient failures; when
    ``stop`` is set (Ctrl-C), no further attempt starts."""
    stop = stop or threading.Event()
    result = FetchResult(job)
    for attempt in range(cfg.retries + 1):
        # the back-off wait, cut short by a stop
        if stop.wait(cfg.backoff * 2 ** (attempt - 1) if attempt else 0):
            result.reason = "interrupted"
            return result
        result.attempts = attempt + 1
        try:
            data = fetch_once(job.url, cfg, opener, stop)
            fmt = check_image(data, cfg.formats)
        except FetchError as e:
            result.reason, result.permanent = e.reason, not e.transient
        except InvalidImage as e:
            result.reason, result.permanent = str(e), not e.truncated
        else:
            name = image_file_name(job.image_id, fmt)
            _write_atomically(Path(cfg.out_dir) / name, data)
            result.file_name, result.reason, result.size = name, None, len(data)
            return result
        if result.permanent:
            break
    if cfg.retries and not result.permanent:
        result.reason += f" ({result.attempts} attempts)"
    return result


# -- the failure report ------------------------------------------------------

def read_failure_report(path) -> Dict[str, dict]:
    """id -> latest record of a JSON-lines failure report (empty if none);
    a line cut by a killed run is ignored."""
    records: Dict[str, dict] = {}
    path = Path(path)
    if not path.is_file():
        return records
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, start=1):
                try:
                    record = json.loads(line)
                    records[record["id"]] = record
                except (json.JSONDecodeError, KeyError, TypeError):
                    logger.warning("%s:%d: unreadable report line ignored", path, lineno)
    except OSError as e:
        raise InputError(f"{path}: the failure report cannot be read ({e.strerror or e})") from None
    return records


def _failure_record(result: FetchResult) -> dict:
    return {
        "id": result.job.image_id,
        "url": result.job.url,
        "reason": result.reason,
        "permanent": result.permanent,
        "attempts": result.attempts,
        "source": result.job.source,
    }


def _compact_report(path: Path, present: Dict[str, str]) -> int:
    """Rewrites the report with one line per id still without an image."""
    records = {k: r for k, r in read_failure_report(path).items() if k not in present}
    tmp = path.with_name(f".{path.name}{PART_SUFFIX}")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records.values():
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return len(records)


# -- the pool ----------------------------------------------------------------

@dataclass
class DownloadSummary:
    downloaded: int = 0
    already_present: int = 0
    skipped_failed_before: int = 0  # permanent failures of an earlier run
    duplicates: int = 0  # ids asked for twice in the input
    failed: int = 0
    bytes: int = 0
    failure_kinds: Counter = field(default_factory=Counter)
    report: str = ""
    failures_in_report: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "failure_kinds"}
        out["failure_kinds"] = dict(self.failure_kinds.most_common())
        return out


def failure_kind(reason: str) -> str:
    """A short class of a failure reason for counting: 'http 404',
    'timeout', 'too large', 'not an image', ..."""
    if reason.startswith("http "):
        return " ".join(reason.split()[:2])
    if reason.startswith("not a JPEG"):
        return "not an image"
    for prefix in ("timeout", "too large", "redirect", "bad URL", "connection failed", "TLS"):
        if reason.startswith(prefix):
            return prefix
    return reason.split(" (")[0].split(":")[0]


def _remove_stale_parts(out_dir: Path) -> None:
    for entry in _list_dir(out_dir):
        if entry.name.startswith(".") and entry.name.endswith(PART_SUFFIX):
            os.unlink(entry.path)


def _check_writable(out_dir: Path) -> None:
    """Fails before any download, not at the first image."""
    try:
        with tempfile.TemporaryFile(dir=out_dir, prefix=".", suffix=PART_SUFFIX):
            pass
    except OSError as e:
        raise InputError(f"{out_dir}: images cannot be written there ({e.strerror or e})") from None


def _open_report(path: Path):
    try:
        return open(path, "a", encoding="utf-8")
    except OSError as e:
        raise InputError(f"{path}: the failure report cannot be written ({e.strerror or e})") from None


def download_images(
    jobs: Iterable[DownloadJob], cfg: DownloadConfig, total: Optional[int] = None
) -> DownloadSummary:
    """Downloads every job's image into ``cfg.out_dir`` unless it is there
    already (or failed permanently before); returns counts, and keeps the
    failure report: appended to as failures happen, so an interrupted run
    loses nothing, and compacted at the end to one line per failed id.

    Ctrl-C (KeyboardInterrupt): queued jobs are dropped, running ones end
    at their next read or retry (at the latest after ``timeout``), then the
    interrupt goes on; the images and report lines written so far stay."""
    start = time.time()
    out_dir = make_output_dir(cfg.out_dir)
    _remove_stale_parts(out_dir)
    _check_writable(out_dir)
    present = scan_image_dir(out_dir)
    report_path = cfg.report_path
    make_output_dir(report_path.parent)
    failed_before = read_failure_report(report_path)
    summary = DownloadSummary(report=str(report_path))
    opener = build_opener(cfg)
    stop = threading.Event()
    seen = set()
    in_flight_limit = max(1, cfg.workers) * 4  # bounded: the input may hold millions

    def already_done(job: DownloadJob) -> bool:
        name = present.get(job.image_id)
        if name is not None:
            if not cfg.verify_existing:
                return True
            try:
                check_image((out_dir / name).read_bytes(), cfg.formats)
                return True
            except (InvalidImage, OSError) as e:
                logger.warning("%s: %s; downloading it again", out_dir / name, e)
                (out_dir / name).unlink(missing_ok=True)
                del present[job.image_id]
        return False

    bar = tqdm(total=total, unit="img", desc="download", disable=None if cfg.progress is None else not cfg.progress)
    with _open_report(report_path) as report, ThreadPoolExecutor(
        max_workers=cfg.workers, thread_name_prefix="download"
    ) as pool:

        def collect(done) -> None:
            for future in done:
                result: FetchResult = future.result()
                if result.ok:
                    summary.downloaded += 1
                    summary.bytes += result.size
                    present[result.job.image_id] = result.file_name
                else:
                    summary.failed += 1
                    summary.failure_kinds[failure_kind(result.reason)] += 1
                    report.write(json.dumps(_failure_record(result), ensure_ascii=False) + "\n")
                    report.flush()
                bar.update()
            bar.set_postfix(ok=summary.downloaded, failed=summary.failed, refresh=False)

        pending = set()
        try:
            for job in jobs:
                if job.image_id in seen:
                    summary.duplicates += 1
                    bar.update()
                    continue
                seen.add(job.image_id)
                if already_done(job):
                    summary.already_present += 1
                    bar.update()
                    continue
                before = failed_before.get(job.image_id)
                if before and before.get("permanent") and before.get("url") == job.url and not cfg.retry_failed:
                    summary.skipped_failed_before += 1
                    bar.update()
                    continue
                pending.add(pool.submit(download_one, job, cfg, opener, stop))
                if len(pending) >= in_flight_limit:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    collect(done)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                collect(done)
        except BaseException:
            # Ctrl-C: drop queued work and stop the running downloads; leaving
            # the pool waits for them, so that no image is left half written.
            # Their results are not collected: an interrupted attempt is no
            # failure to report, and a finished image is found by a rerun.
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            bar.close()
    summary.failures_in_report = _compact_report(report_path, present)
    summary.seconds = round(time.time() - start, 1)
    logger.info(
        "downloaded %d images (%.1f MB), %d there already, %d failed now, %d "
        "skipped as failed before; %d ids without image in %s (%.0fs)",
        summary.downloaded, summary.bytes / 1e6, summary.already_present, summary.failed,
        summary.skipped_failed_before, summary.failures_in_report, report_path, summary.seconds,
    )  # fmt: skip
    return summary
