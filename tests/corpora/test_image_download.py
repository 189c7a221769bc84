"""vtlm-cc download (img2dataset as the engine) against a small HTTP server
on 127.0.0.1 that serves good images, broken files, slow responses, 404s,
5xx, redirects and oversized files; the checks of each downloaded file, the
records, reruns, and runs killed at any moment."""

import contextlib
import importlib.util
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vtlm_fairseq.corpora import image_download
from vtlm_fairseq.corpora.image_download import (
    FAILED_TO_DOWNLOAD,
    INVALID_IMAGE,
    RECORDS_DIR,
    SUCCESS,
    TOO_LARGE,
    check_image,
    check_shard,
    failure_kind,
    image_id_of,
    is_permanent,
    read_records,
    recorded_images,
    scan_image_dir,
    unchecked_downloads,
)

if importlib.util.find_spec("img2dataset") is None:  # a failure, not a skip: CI installs it
    raise ImportError("img2dataset is not installed: pip install -e '.[download]'")

VTLM_CC = str(Path(sys.executable).parent / "vtlm-cc")


# -- images, made with Pillow ---------------------------------------------------

def _noise(width, height, seed) -> Image.Image:
    pixels = np.random.default_rng(seed).random((height, width, 3)) * 255
    return Image.fromarray(pixels.astype("uint8"))


def image_bytes(fmt="JPEG", width=40, height=30, seed=0, **kw) -> bytes:
    out = io.BytesIO()
    _noise(width, height, seed).save(out, format=fmt, **kw)
    return out.getvalue()


def gif_bytes() -> bytes:
    frames = [_noise(8, 8, seed).convert("P") for seed in range(2)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    return out.getvalue()


GOOD_JPG = image_bytes("JPEG", seed=1)
GOOD_PNG = image_bytes("PNG", seed=2)
PNG_WITHOUT_EXT = image_bytes("PNG", 20, 20, seed=3)
FLAKY_PNG = image_bytes("PNG", 12, 4, seed=9)
GIF = gif_bytes()
WEBP = image_bytes("WEBP", seed=4)
BMP = image_bytes("BMP", 8, 8, seed=5)
HUGE_JPG = image_bytes("JPEG", 120, 120, seed=6, quality=95)  # over 10K
TRUNCATED_JPG = image_bytes("JPEG", 60, 40, seed=7)[:700]


# -- the server --------------------------------------------------------------

SLOW_SECONDS = 10.0  # far beyond the timeout: a run without one would take this long
FTP_URL = "ftp://127.0.0.1:1/image.jpg"  # loopback only, should anything try it


class ImageServer:
    """A threaded HTTP server on 127.0.0.1 (port 0) with fixed routes; counts
    the requests per path."""

    def __init__(self):
        self.hits = Counter()
        self.stop = threading.Event()
        self.routes = {
            "/good.jpg": self._image(GOOD_JPG, "image/jpeg"),
            "/good.png": self._image(GOOD_PNG, "image/png"),
            "/image-without-extension": self._image(PNG_WITHOUT_EXT, "image/png"),
            "/animation.gif": self._image(GIF, "image/gif"),
            "/photo.webp": self._image(WEBP, "image/webp"),
            "/picture.bmp": self._image(BMP, "image/bmp"),
            "/broken.jpg": self._image(b"this is a text file, not a picture\n" * 5, "image/jpeg"),
            "/soft404.jpg": self._image(b"<html><body>Photo not found</body></html>", "text/html"),
            "/truncated.jpg": self._image(TRUNCATED_JPG, "image/jpeg"),
            "/missing.jpg": self._status(404, "Not Found"),
            "/gone.jpg": self._status(410, "Gone"),
            "/down.jpg": self._status(503, "Service Unavailable"),
            "/flaky.png": self._flaky(),
            "/redirect.png": self._redirect("/good.png"),
            "/redirect-loop.jpg": self._redirect("/redirect-loop.jpg"),
            # only http(s) is followed: neither of these is ever opened
            "/redirect-file.jpg": self._redirect("file:///etc/passwd"),
            "/redirect-ftp.jpg": self._redirect(FTP_URL),
            "/huge.jpg": self._image(HUGE_JPG, "image/jpeg"),
            "/noai.jpg": self._image(GOOD_JPG, "image/jpeg", headers={"X-Robots-Tag": "noai"}),
            "/slow.jpg": self._slow(),
        }
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] += 1
                route = server.routes.get(self.path)
                if route is None and self.path.startswith("/delayed/"):
                    route = server._delayed
                try:
                    (route or server._status(404, "Not Found"))(self)
                except OSError:  # the client gave up (timeout): nothing to do
                    pass

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False  # slow handlers must not hold up the test's end
            request_queue_size = 128

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def _image(data, content_type, headers=None):
        def route(h):
            h.send_response(200)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                h.send_header(name, value)
            h.end_headers()
            h.wfile.write(data)

        return route

    @staticmethod
    def _status(code, message):
        def route(h):
            h.send_error(code, message)

        return route

    def _flaky(self):
        good = self._image(FLAKY_PNG, "image/png")

        def route(h):
            if self.hits[h.path] == 1:
                h.send_error(500, "Internal Server Error")
            else:
                good(h)

        return route

    @staticmethod
    def _redirect(location):
        def route(h):
            h.send_response(302)
            h.send_header("Location", location)
            h.end_headers()

        return route

    def _slow(self):
        def route(h):
            self.stop.wait(SLOW_SECONDS)  # returns at once when the server stops
            self._image(GOOD_JPG, "image/jpeg")(h)

        return route

    def _delayed(self, h):
        """/delayed/SECONDS/NAME: a PNG of its own after a pause ('404' as
        NAME: a 404 after the pause)."""
        _, _, seconds, name = h.path.split("/", 3)
        self.stop.wait(float(seconds))
        if name == "404":
            h.send_error(404, "Not Found")
        else:
            self._image(image_bytes("PNG", 10, 10, seed=sum(map(ord, name))), "image/png")(h)


@pytest.fixture(scope="module")
def image_server():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        server = ImageServer()
        yield server
        server.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tsv(path: Path, urls: dict) -> Path:
    lines = [f"{image_id}\t{url}\ta photo of {image_id} .\tEin Foto von {image_id}." for image_id, url in urls.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def vtlm_cc_download(*argv) -> dict:
    """``vtlm-cc download`` in this process; its JSON summary."""
    from vtlm_fairseq.cli import conceptual_captions as cc

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        cc.run(["download", *map(str, argv)])
    return json.loads(stdout.getvalue())


def latest_records(out) -> dict:
    """id -> (status, error_message, file) of the latest record."""
    table = read_records(out)
    columns = [table[c].to_pylist() for c in ("id", "status", "error_message", "file")]
    return {i: (s, e, f) for i, s, e, f in zip(*columns)}


def image_files(out) -> dict:
    return {p.name: p.read_bytes() for p in Path(out).iterdir() if image_id_of(p.name)}


# -- the checks of one file ----------------------------------------------------

@pytest.mark.parametrize(
    "data, fmt",
    [(GOOD_JPG, "jpeg"), (HUGE_JPG, "jpeg"), (image_bytes("JPEG", progressive=True), "jpeg"), (GOOD_PNG, "png"),
     (GIF, "gif"), (WEBP, "webp")],
)  # fmt: skip
def test_complete_images_pass(data, fmt):
    assert check_image(data) == (fmt, None)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"<!DOCTYPE html><html>gone</html>", "not an image Pillow reads (starts with b'<!DOCTYPE html><')"),
        (b"", "not an image Pillow reads (starts with b'')"),
        (TRUNCATED_JPG, "OSError: image file is truncated"),
        (GOOD_JPG[: len(GOOD_JPG) // 2], "image file is truncated"),
        (GOOD_PNG[: len(GOOD_PNG) // 2], "image file is truncated"),
        (BMP, "BMP images are not accepted (accepted: jpeg, png, gif, webp)"),
    ],
)
def test_broken_images_are_refused_with_pillows_reason(data, reason):
    fmt, error = check_image(data)
    assert fmt is None and reason in error


def test_formats_can_be_restricted():
    assert check_image(WEBP, formats=("jpeg", "png")) == (None, "WEBP images are not accepted (accepted: jpeg, png)")
    # the downloader's default: what the feature extractor can decode
    assert "webp" not in image_download.DownloadConfig(out_dir="x").formats


@pytest.mark.parametrize(
    "status, error, permanent, kind",
    [
        (FAILED_TO_DOWNLOAD, "HTTP Error 404: Not Found", True, "http 404"),
        (FAILED_TO_DOWNLOAD, "HTTP Error 410: Gone", True, "http 410"),
        (FAILED_TO_DOWNLOAD, "HTTP Error 408: Request Timeout", False, "http 408"),
        (FAILED_TO_DOWNLOAD, "HTTP Error 429: Too Many Requests", False, "http 429"),
        (FAILED_TO_DOWNLOAD, "HTTP Error 500: Internal Server Error", False, "http 500"),
        (FAILED_TO_DOWNLOAD, "HTTP Error 302: Found - Redirection to url 'file:///x' is not allowed", True, "http 302"),
        (FAILED_TO_DOWNLOAD, "timed out", False, "timeout"),
        (FAILED_TO_DOWNLOAD, "<urlopen error timed out>", False, "timeout"),
        (FAILED_TO_DOWNLOAD, "<urlopen error [Errno 111] Connection refused>", False, "connection failed"),
        (FAILED_TO_DOWNLOAD, "Use of image disallowed by X-Robots-Tag directive", True, "x-robots-tag"),
        (INVALID_IMAGE, "OSError: image file is truncated", True, "invalid_image"),
        (TOO_LARGE, "20000 bytes, over the limit of 10000", True, "too_large"),
    ],
)
def test_which_failures_are_permanent(status, error, permanent, kind):
    assert is_permanent(status, error) == permanent
    assert failure_kind(status, error) == kind


def test_the_runner_opens_http_urls_only(image_server):
    """img2dataset_run installs an opener without ftp:, file: or data:
    handlers, which refuses redirects to them."""
    import urllib.request

    spec = importlib.util.spec_from_file_location("runner_under_test", image_download.RUNNER)
    runner = importlib.util.module_from_spec(spec)
    before = urllib.request._opener
    try:
        spec.loader.exec_module(runner)
    finally:
        urllib.request.install_opener(before)  # this process keeps its own
    opener = runner.http_only_opener()
    with opener.open(image_server.url + "/redirect.png", timeout=5) as response:
        assert response.read() == GOOD_PNG
    for url, message in [(image_server.url + "/redirect-ftp.jpg", f"Redirection to url '{FTP_URL}' is not allowed"),
                         (image_server.url + "/redirect-file.jpg", "Redirection to url 'file:///etc/passwd'"),
                         (FTP_URL, "unknown url type: ftp"), ("file:///etc/passwd", "unknown url type: file")]:
        with pytest.raises(urllib.error.URLError, match=re.escape(message)):
            opener.open(url, timeout=5)


def test_naming_convention(tmp_path):
    assert image_id_of("123.jpg") == "123" and image_id_of("a.b.png") == "a.b"
    assert image_id_of("123") is None and image_id_of(".123.jpg.tmp") is None
    assert image_id_of("notes.txt") is None
    for name in ("1.jpg", "2.png", "2.jpg", ".3.jpg.tmp", "download_failures.jsonl"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / RECORDS_DIR).mkdir()
    assert scan_image_dir(tmp_path) == {"1": "1.jpg", "2": "2.jpg"}


# -- a shard as img2dataset leaves it, checked with and without interruptions ------

def fake_shard(run_dir: Path, shard: str, rows) -> None:
    """img2dataset's output for one shard: (id, status, error, bytes) rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (run_dir / shard).mkdir(parents=True)
    columns = {"id": [], "url": [], "key": [], "status": [], "error_message": []}
    for k, (image_id, status, error, data) in enumerate(rows):
        key = f"{shard}{k:04d}"
        for column, value in zip(columns, (image_id, f"http://x.org/{image_id}", key, status, error)):
            columns[column].append(value)
        if data is not None:
            (run_dir / shard / f"{key}.jpg").write_bytes(data)
            (run_dir / shard / f"{key}.json").write_text("{}")
    pq.write_table(pa.table(columns), run_dir / f"{shard}.parquet")
    (run_dir / f"{shard}_stats.json").write_text(json.dumps({"count": len(rows)}))


SHARD_ROWS = [
    ("a", SUCCESS, None, GOOD_JPG),
    ("b", SUCCESS, None, GOOD_PNG),
    ("c", SUCCESS, None, b"<html>soft 404</html>"),
    ("d", FAILED_TO_DOWNLOAD, "HTTP Error 404:\nNot Found", None),
    ("e", SUCCESS, None, HUGE_JPG),
    ("0001", SUCCESS, None, GIF),
]
SHARD_RECORDS = {
    "a": (SUCCESS, None, "a.jpg"),
    "b": (SUCCESS, None, "b.png"),
    "c": (INVALID_IMAGE, "not an image Pillow reads (starts with b'<html>soft 404</')", None),
    "d": (FAILED_TO_DOWNLOAD, "HTTP Error 404: Not Found", None),  # one line
    "e": (TOO_LARGE, f"{len(HUGE_JPG)} bytes, over the limit of 10000", None),
    "0001": (SUCCESS, None, "0001.gif"),
}


def test_a_shard_is_checked_moved_and_recorded(tmp_path):
    out = tmp_path / "images"
    run = out / RECORDS_DIR / "run-0000"
    fake_shard(run, "00000", SHARD_ROWS)
    (out / "b.jpg").write_bytes(GOOD_JPG)  # the id's image of an earlier URL: replaced
    assert unchecked_downloads(out) == 1
    assert check_shard(run, "00000", out, 10000, ("jpeg", "png", "gif")) == (3, 3)
    assert latest_records(out) == SHARD_RECORDS
    assert image_files(out) == {"a.jpg": GOOD_JPG, "b.png": GOOD_PNG, "0001.gif": GIF}
    assert not (run / "00000").exists() and unchecked_downloads(out) == 0
    images = recorded_images(out)
    assert images.images == {"a": "a.jpg", "b": "b.png", "0001": "0001.gif"}
    assert images.reasons["d"] == "failed_to_download: HTTP Error 404: Not Found"


def test_a_check_stopped_after_moving_images_is_finished_exactly(tmp_path, monkeypatch):
    """Killed after the images were moved but before the shard's record was
    written: the next start finds the shard unrecorded, its moved files gone
    from the shard and in OUT, and records them as successes."""
    import pyarrow.parquet as pq

    out = tmp_path / "images"
    run = out / RECORDS_DIR / "run-0000"
    fake_shard(run, "00000", SHARD_ROWS)
    (run / "00001").mkdir()  # a shard img2dataset had begun: no stats
    (run / "00001" / "000010000.jpg").write_bytes(GOOD_JPG)
    (run / "00001.parquet").write_bytes(b"PAR1 half")

    def killed(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", killed)
    with pytest.raises(KeyboardInterrupt):
        check_shard(run, "00000", out, 10000, ("jpeg", "png", "gif"))
    monkeypatch.undo()
    assert set(image_files(out)) == {"a.jpg", "b.png", "0001.gif"} and read_records(out) is None

    assert image_download._tidy_run(run) == ["00000"]
    assert not (run / "00001").exists() and not (run / "00001.parquet").exists()
    check_shard(run, "00000", out, 10000, ("jpeg", "png", "gif"))
    assert latest_records(out) == SHARD_RECORDS
    assert image_files(out) == {"a.jpg": GOOD_JPG, "b.png": GOOD_PNG, "0001.gif": GIF}
    assert image_download._tidy_run(run) == []


def test_a_damaged_shard_is_downloaded_again(tmp_path):
    out = tmp_path / "images"
    run = out / RECORDS_DIR / "run-0000"
    fake_shard(run, "00000", SHARD_ROWS[:2])
    (run / "00000.parquet").write_bytes(b"PAR1 not really")
    assert check_shard(run, "00000", out, 10000, ("jpeg",)) == (0, 0)
    assert sorted(p.name for p in run.iterdir()) == [] and image_files(out) == {}


def test_the_latest_run_of_an_id_decides(tmp_path):
    out = tmp_path / "images"
    fake_shard(out / RECORDS_DIR / "run-0000", "00000", [("a", FAILED_TO_DOWNLOAD, "timed out", None)])
    fake_shard(out / RECORDS_DIR / "run-0001", "00000", [("a", SUCCESS, None, GOOD_JPG)])
    fake_shard(out / RECORDS_DIR / "run-0002", "00000", [("b", SUCCESS, None, GOOD_PNG)])
    for number in range(3):
        run = out / RECORDS_DIR / f"run-{number:04d}"
        check_shard(run, "00000", out, 10000, ("jpeg", "png"))
    assert latest_records(out) == {"a": (SUCCESS, None, "a.jpg"), "b": (SUCCESS, None, "b.png")}


# -- whole runs against the server ---------------------------------------------------

TIMEOUT = "1"  # generous for a loaded machine: a good image must never time out
QUICK = ["--processes", "1", "--threads", "8", "--shard-size", "8", "--timeout", TIMEOUT, "--retries", "1",
         "--max-bytes", "10K"]  # fmt: skip
GOOD = {  # id -> (path, file, bytes)
    "good_jpg": ("/good.jpg", "good_jpg.jpg", GOOD_JPG),
    "good_png": ("/good.png", "good_png.png", GOOD_PNG),
    "no_ext": ("/image-without-extension", "no_ext.png", PNG_WITHOUT_EXT),
    "gif": ("/animation.gif", "gif.gif", GIF),
    "flaky": ("/flaky.png", "flaky.png", FLAKY_PNG),  # 500, then the image (--retries 1)
    "redirected": ("/redirect.png", "redirected.png", GOOD_PNG),
    "0000007": ("/good.jpg", "0000007.jpg", GOOD_JPG),  # an id that looks like a number stays a string
}
BAD = {  # id -> (path, status, part of the error, permanent)
    "broken": ("/broken.jpg", INVALID_IMAGE, "not an image Pillow reads (starts with b'this is a text f'", True),
    "soft404": ("/soft404.jpg", INVALID_IMAGE, "not an image Pillow reads (starts with b'<html><body>Phot'", True),
    "truncated": ("/truncated.jpg", INVALID_IMAGE, "image file is truncated", True),
    "webp": ("/photo.webp", INVALID_IMAGE, "WEBP images are not accepted", True),
    "bmp": ("/picture.bmp", INVALID_IMAGE, "BMP images are not accepted", True),
    "huge": ("/huge.jpg", TOO_LARGE, f"{len(HUGE_JPG)} bytes, over the limit of 10240", True),
    "missing": ("/missing.jpg", FAILED_TO_DOWNLOAD, "HTTP Error 404: Not Found", True),
    "gone": ("/gone.jpg", FAILED_TO_DOWNLOAD, "HTTP Error 410: Gone", True),
    "loop": ("/redirect-loop.jpg", FAILED_TO_DOWNLOAD, "redirect error that would lead to an infinite loop", True),
    "to_file": ("/redirect-file.jpg", FAILED_TO_DOWNLOAD, "Redirection to url 'file:///etc/passwd' is not", True),
    "to_ftp": ("/redirect-ftp.jpg", FAILED_TO_DOWNLOAD, f"Redirection to url '{FTP_URL}' is not allowed", True),
    "noai": ("/noai.jpg", FAILED_TO_DOWNLOAD, "Use of image disallowed by X-Robots-Tag directive", True),
    "down": ("/down.jpg", FAILED_TO_DOWNLOAD, "HTTP Error 503: Service Unavailable", False),
    "slow": ("/slow.jpg", FAILED_TO_DOWNLOAD, "timed out", False),
}
PERMANENT = {i for i, (_, _, _, permanent) in BAD.items() if permanent}


@pytest.fixture(scope="module")
def runs(image_server, tmp_path_factory):
    """Three runs on one folder: the first; a rerun, with one id's URL
    changed; a rerun with --retry-failed, X-Robots-Tag ignored and WebP
    accepted. Each: (summary, server requests during the run, files)."""
    tmp = tmp_path_factory.mktemp("runs")
    out = tmp / "images"
    urls = {i: image_server.url + path for i, (path, _, _) in GOOD.items()}
    urls |= {i: image_server.url + path for i, (path, _, _, _) in BAD.items()}
    urls["refused"] = f"http://127.0.0.1:{closed_port()}/x.jpg"
    tsv = write_tsv(tmp / "cc.tsv.train", urls)
    result = {}

    def run(name, *argv):
        before = Counter(image_server.hits)
        start = time.monotonic()
        summary = vtlm_cc_download(*argv, "--out", out, *QUICK)
        result[name] = {
            "summary": summary, "hits": image_server.hits - before, "seconds": time.monotonic() - start,
            "records": latest_records(out), "files": image_files(out),
            "mtimes": {p.name: p.stat().st_mtime_ns for p in out.iterdir()},
        }  # fmt: skip

    run("first", tsv)
    changed = write_tsv(tmp / "changed.tsv.train", {**urls, "gone": image_server.url + "/good.png"})
    run("rerun", changed)
    run("retry_failed", changed, "--retry-failed", "--disallowed-header-directives", "--formats", "jpeg", "png",
        "gif", "webp")  # fmt: skip
    result["out"] = out
    return result


def test_good_images_are_saved_as_served(runs):
    first = runs["first"]
    assert first["files"] == {name: data for _, name, data in GOOD.values()}
    assert first["hits"]["/flaky.png"] == 2  # 500, then the image
    summary = first["summary"]
    assert summary["downloaded"] == len(GOOD) and summary["ids"] == len(GOOD) + len(BAD) + 1
    assert summary["already_present"] == 0 and summary["unfinished"] == 0 and summary["recovered"] == 0
    # the slow server holds a request for 10 s; two attempts of 1 s each were allowed
    assert first["seconds"] < 60


def test_every_failure_is_recorded_with_its_reason(runs):
    first = runs["first"]
    records = first["records"]
    for image_id, (path, status, error, _) in BAD.items():
        assert records[image_id][0] == status and error in records[image_id][1], (image_id, records[image_id])
        assert records[image_id][2] is None
    assert records["refused"][0] == FAILED_TO_DOWNLOAD and "Connection refused" in records["refused"][1]
    for image_id, (_, name, _) in GOOD.items():
        assert records[image_id] == (SUCCESS, None, name)
    summary = first["summary"]
    assert summary["failed"] == len(BAD) + 1 and summary["without_image"] == len(BAD) + 1
    assert summary["failure_kinds"]["invalid_image"] == 5 and summary["failure_kinds"]["http 404"] == 1
    assert summary["failure_kinds"]["timeout"] == 1 and summary["failure_kinds"]["too_large"] == 1
    # nothing of img2dataset's is left but its records
    run = runs["out"] / RECORDS_DIR / "run-0000"
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == []
    assert unchecked_downloads(runs["out"]) == 0


def test_a_rerun_downloads_nothing_new_but_retries_transient_failures(runs, image_server):
    rerun = runs["rerun"]
    summary, hits = rerun["summary"], rerun["hits"]
    for path in {GOOD[i][0] for i in GOOD} | {BAD[i][0] for i in PERMANENT}:
        if path not in ("/good.png",):  # the changed URL's
            assert hits[path] == 0, f"{path} fetched again"
    assert hits["/down.jpg"] == 2 and hits["/slow.jpg"] >= 1  # transient: retried
    assert hits["/gone.jpg"] == 0 and hits["/good.png"] == 1  # the changed URL, tried at once
    assert summary["already_present"] == len(GOOD)
    assert summary["skipped_failed_before"] == len(PERMANENT) - 1  # gone has another URL now
    assert summary["to_download"] == 4 and summary["downloaded"] == 1  # down, slow, refused; gone
    assert rerun["records"]["gone"] == (SUCCESS, None, "gone.png")
    before, after = runs["first"]["mtimes"], rerun["mtimes"]
    assert {n: after[n] for n in before if image_id_of(n)} == {n: t for n, t in before.items() if image_id_of(n)}


def test_retry_failed_retries_permanent_failures(runs):
    retry = runs["retry_failed"]
    hits, records = retry["hits"], retry["records"]
    assert hits["/missing.jpg"] == 2 and hits["/broken.jpg"] == 1 and hits["/good.jpg"] == 0
    # X-Robots-Tag ignored, WebP accepted: two more images
    assert records["noai"] == (SUCCESS, None, "noai.jpg") and records["webp"] == (SUCCESS, None, "webp.webp")
    assert retry["files"]["webp.webp"] == WEBP
    assert records["missing"][0] == FAILED_TO_DOWNLOAD and records["bmp"][0] == INVALID_IMAGE
    assert retry["summary"]["skipped_failed_before"] == 0
    assert len(list((runs["out"] / RECORDS_DIR).glob("run-*.json"))) == 3


def test_one_download_at_a_time_per_folder(tmp_path, monkeypatch):
    import fcntl

    from vtlm_fairseq.errors import InputError

    out = tmp_path / "images"
    (out / RECORDS_DIR).mkdir(parents=True)
    tsv = write_tsv(tmp_path / "cc.tsv.train", {"1": "http://127.0.0.1:9/1.jpg"})
    monkeypatch.setattr(image_download, "LOCK_WAIT_SECONDS", 0.3)
    with open(out / RECORDS_DIR / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(InputError, match="another vtlm-cc download is running there"):
            vtlm_cc_download(tsv, "--out", out)
    assert sorted(p.name for p in (out / RECORDS_DIR).iterdir()) == ["lock"]


# -- killed at any moment ------------------------------------------------------------

def kill_when(condition, argv, deadline=120):
    """Starts vtlm-cc download in a process group of its own and SIGKILLs
    the group as soon as ``condition()`` holds; False when the run ended
    first."""
    proc = subprocess.Popen([VTLM_CC, "download", *map(str, argv)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    end = time.monotonic() + deadline
    try:
        while not condition():
            if proc.poll() is not None:
                return False
            assert time.monotonic() < end, "the moment never came"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        return True
    finally:
        proc.kill()
        proc.communicate()


def test_runs_killed_at_any_moment_end_as_an_uninterrupted_one(image_server, tmp_path):
    urls = {f"i{k:02d}": f"{image_server.url}/delayed/0.25/{k}" for k in range(14)}
    urls["i03"] = f"{image_server.url}/delayed/0.25/404"
    urls["broken"] = image_server.url + "/broken.jpg"
    tsv = write_tsv(tmp_path / "cc.tsv.train", urls)
    # 4 shards of about a second each (img2dataset starts a process anew after 5 shards: slow)
    options = ["--processes", "1", "--threads", "1", "--shard-size", "4", "--timeout", "5"]

    reference = tmp_path / "reference"
    vtlm_cc_download(tsv, "--out", reference, *options)

    out = tmp_path / "images"
    meta = out / RECORDS_DIR
    argv = [tsv, "--out", out, *options]
    # before img2dataset has finished anything
    assert kill_when(lambda: any(meta.glob("run-*/input.parquet")), argv)
    # once a shard is checked and recorded, with others downloading
    assert kill_when(lambda: any(meta.glob("run-*/*.images.parquet")), argv)
    # once images of a new run are recorded too
    recorded = set(meta.glob("run-*/*.images.parquet"))
    kill_when(lambda: bool(set(meta.glob("run-*/*.images.parquet")) - recorded), argv)
    summary = vtlm_cc_download(*argv)

    assert image_files(out) == image_files(reference)
    assert latest_records(out) == latest_records(reference)
    assert summary["without_image"] == 2 and unchecked_downloads(out) == 0
    for run in filter(Path.is_dir, meta.glob("run-*")):  # no half shard left anywhere
        assert not [p for p in run.iterdir() if p.is_dir() or p.name.endswith(".tmp")], list(run.iterdir())
    # a last rerun has nothing to do
    again = vtlm_cc_download(*argv)
    assert again["to_download"] == 0 and again["run"] is None  # img2dataset not even started
    assert again["already_present"] == 13 and again["skipped_failed_before"] == 2  # a 404, a broken file
