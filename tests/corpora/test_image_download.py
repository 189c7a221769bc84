"""The image downloader against a small HTTP server on 127.0.0.1 that serves
good images, broken files, slow and trickling responses, 404s, 5xx,
redirects and oversized files; and the structural image checks."""

import json
import socket
import struct
import sys
import threading
import time
import types
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vtlm_fairseq.corpora import image_download
from vtlm_fairseq.corpora.image_download import (
    DownloadConfig,
    DownloadJob,
    InvalidImage,
    check_image,
    download_images,
    image_id_of,
    read_failure_report,
    scan_image_dir,
)


ORIGINAL_PILLOW = image_download._pillow


@pytest.fixture(autouse=True)
def structural_checks_only(monkeypatch):
    """The same checks whether or not Pillow happens to be installed (the
    WebP below is a structure only; Pillow would not decode it)."""
    monkeypatch.setattr(image_download, "_pillow", lambda: None)


# -- tiny valid images, built here (no image library needed) ----------------

def png_bytes(width=4, height=3, seed=0) -> bytes:
    """An 8-bit greyscale PNG."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + bytes((seed + x + y) % 256 for x in range(width)) for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def jpeg_bytes(padding: int = 0, comment: bytes = b"") -> bytes:
    """A baseline 8x8 greyscale JPEG: one block, DC and AC Huffman tables of a
    single one-bit code each, so the scan is DC 'no change' + EOB: two zero
    bits, padded with ones (0x3F). ``padding`` bytes of comment make it bigger."""
    def segment(marker, body):
        return bytes((0xFF, marker)) + struct.pack(">H", len(body) + 2) + body

    dqt = segment(0xDB, b"\x00" + b"\x01" * 64)
    sof = segment(0xC0, struct.pack(">BHHB", 8, 8, 8, 1) + b"\x01\x11\x00")
    dht_dc = segment(0xC4, b"\x00" + b"\x01" + b"\x00" * 15 + b"\x00")
    dht_ac = segment(0xC4, b"\x10" + b"\x01" + b"\x00" * 15 + b"\x00")
    sos = segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    comments = b""
    body = comment + b"x" * padding
    while body:  # a comment segment holds at most 65533 bytes
        comments += segment(0xFE, body[:65533])
        body = body[65533:]
    return b"\xff\xd8" + comments + dqt + sof + dht_dc + dht_ac + sos + b"\x3f" + b"\xff\xd9"


GIF_1x1 = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)


def webp_bytes() -> bytes:
    payload = b"\x2f" + b"\x00" * 9  # a VP8L header's worth of bytes
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


# -- the structural checks ---------------------------------------------------

@pytest.mark.parametrize(
    "data, fmt",
    [(jpeg_bytes(), "jpeg"), (jpeg_bytes(padding=100), "jpeg"), (jpeg_bytes() + b"\x00" * 7, "jpeg"),
     (png_bytes(), "png"), (png_bytes(1, 1), "png"), (GIF_1x1, "gif"), (webp_bytes(), "webp")],
)  # fmt: skip
def test_complete_images_pass(data, fmt):
    assert check_image(data) == fmt


def _png_with_raw_rows(rows: bytes, width=4, height=3) -> bytes:
    good = png_bytes(width, height)
    start = good.index(b"IDAT") - 4
    end = good.index(b"IEND") - 4
    body = zlib.compress(rows)
    idat = struct.pack(">I", len(body)) + b"IDAT" + body + struct.pack(">I", zlib.crc32(b"IDAT" + body))
    return good[:start] + idat + good[end:]


@pytest.mark.parametrize(
    "data, reason, truncated",
    [
        (b"<!DOCTYPE html><html>gone</html>", "not a JPEG, PNG, GIF or WebP image", False),
        (b"", "not a JPEG", False),
        (jpeg_bytes()[:-2], "jpeg is truncated (no end-of-image marker", True),
        (jpeg_bytes(padding=50)[:30], "jpeg is truncated", True),
        (jpeg_bytes().replace(b"\xff\xc0", b"\xff\xe1"), "image data before any frame header", False),
        (b"\xff\xd8\xff\xd9", "jpeg ends before its image data", False),
        (png_bytes()[:-12], "png is truncated (no IEND chunk)", True),
        (png_bytes()[:45], "png is truncated (inside chunk 'IDAT')", True),
        (png_bytes()[:-1] + b"\x00", "fails its CRC", False),
        (_png_with_raw_rows(b"\x00" * 10), "png is truncated (10 of 15 bytes", True),
        (_png_with_raw_rows(b"\x00" * 40), "more image data than its size allows", False),
        (GIF_1x1[:-1], "gif is truncated", True),
        (webp_bytes()[:-3], "webp is truncated", True),
    ],
)
def test_broken_images_are_rejected_with_a_reason(data, reason, truncated):
    with pytest.raises(InvalidImage) as e:
        check_image(data)
    assert reason in str(e.value)
    assert e.value.truncated == truncated


def test_png_raw_size_of_interlaced_images():
    # Adam7 passes of an 8x8 greyscale image, counted by hand: 2+2+3+6+10+20+36
    assert image_download._png_raw_size(8, 8, 8, interlaced=True) == 79
    assert image_download._png_raw_size(8, 8, 8, interlaced=False) == 72
    assert image_download._png_raw_size(1, 1, 8, interlaced=True) == 2


def test_formats_can_be_restricted():
    with pytest.raises(InvalidImage, match="webp images are not accepted"):
        check_image(webp_bytes(), formats=("jpeg", "png"))
    # the downloader's default: what the feature extractor can decode
    assert "webp" not in DownloadConfig(out_dir="x").formats


def test_pillow_decodes_in_full_where_installed(monkeypatch):
    """Pillow is not a dependency; where it is importable, an image must also
    decode with it."""
    class Undecodable:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def load(self):
            raise OSError("broken data stream")

    fake = types.ModuleType("PIL")
    fake.Image = types.SimpleNamespace(open=lambda stream: Undecodable())
    monkeypatch.setitem(sys.modules, "PIL", fake)
    monkeypatch.setattr(image_download, "_pillow", ORIGINAL_PILLOW)
    ORIGINAL_PILLOW.cache_clear()
    try:
        with pytest.raises(InvalidImage, match="jpeg does not decode .*broken data stream"):
            check_image(jpeg_bytes())
    finally:
        ORIGINAL_PILLOW.cache_clear()


def test_naming_convention(tmp_path):
    assert image_id_of("123.jpg") == "123" and image_id_of("a.b.png") == "a.b"
    assert image_id_of("123") is None and image_id_of(".123.jpg.x.part") is None
    assert image_id_of("notes.txt") is None
    for name in ("1.jpg", "2.png", "2.jpg", ".3.jpg.ab12.part", "download_failures.jsonl"):
        (tmp_path / name).write_bytes(b"x")
    assert scan_image_dir(tmp_path) == {"1": "1.jpg", "2": "2.jpg"}


# -- the server --------------------------------------------------------------

TIMEOUT = 1.0  # generous for a loaded machine: a good image must never time out
FTP_URL = "ftp://127.0.0.1/image.jpg"  # loopback only, should anything try it
SLOW_SECONDS = 10.0  # far beyond the timeout: a run without one would take this long


class ImageServer:
    """A threaded HTTP server on 127.0.0.1 (port 0) with fixed routes; counts
    the requests per path."""

    def __init__(self):
        self.hits = Counter()
        self.stop = threading.Event()
        self.routes = {
            "/good.jpg": self._image(jpeg_bytes(padding=300), "image/jpeg"),
            "/good.png": self._image(png_bytes(), "image/png"),
            "/image-without-extension": self._image(png_bytes(5, 5, seed=3), "image/png"),
            "/animation.gif": self._image(GIF_1x1, "image/gif"),
            "/broken.jpg": self._image(b"this is a text file, not a picture\n" * 5, "image/jpeg"),
            "/soft404.jpg": self._image(b"<html><body>Photo not found</body></html>", "text/html"),
            "/truncated.jpg": self._image(jpeg_bytes(padding=300)[:200], "image/jpeg"),
            "/missing.jpg": self._status(404, "Not Found"),
            "/gone.jpg": self._status(410, "Gone"),
            "/down.jpg": self._status(503, "Service Unavailable"),
            "/flaky.png": self._flaky(),
            "/redirect.png": self._redirect("/good.png"),
            "/redirect-loop.jpg": self._redirect("/redirect-loop.jpg"),
            # only http(s) may be followed; none of these is ever opened
            "/redirect-ftp.jpg": self._redirect(FTP_URL),
            "/redirect-file.jpg": self._redirect("file:///etc/passwd"),
            "/redirect-data.png": self._redirect("data:image/png;base64,iVBORw0KGgo="),
            "/redirect-chain.jpg": self._redirect("/redirect-ftp.jpg"),
            "/huge.jpg": self._image(jpeg_bytes(padding=5000), "image/jpeg"),
            "/huge-stream.jpg": self._image(jpeg_bytes(padding=5000), "image/jpeg", length=False),
            "/slow.jpg": self._slow(),
            "/trickle.jpg": self._trickle(),
        }
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] += 1
                route = server.routes.get(self.path, server._status(404, "Not Found"))
                try:
                    route(self)
                except OSError:  # the client gave up (timeout): nothing to do
                    pass

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False  # slow handlers must not hold up the test's end
            # socketserver's default backlog of 5 drops connections of a busy
            # pool on a loaded machine: they would time out for the test's sake
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
    def _image(data, content_type, length=True):
        def route(h):
            h.send_response(200)
            h.send_header("Content-Type", content_type)
            if length:
                h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)

        return route

    @staticmethod
    def _status(code, message):
        def route(h):
            h.send_error(code, message)

        return route

    def _flaky(self):
        good = self._image(png_bytes(6, 2, seed=9), "image/png")

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
            self._image(jpeg_bytes(), "image/jpeg")(h)

        return route

    def _trickle(self):
        def route(h):
            # every piece arrives within the timeout; the whole does not
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.end_headers()
            for piece in jpeg_bytes(padding=40):
                if self.stop.wait(0.15):
                    return
                h.wfile.write(bytes([piece]))
                h.wfile.flush()

        return route


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quick_config(out_dir, **kw) -> DownloadConfig:
    kw = {"workers": 8, "timeout": TIMEOUT, "retries": 1, "backoff": 0.01, "max_bytes": 4000,
          "max_redirects": 3, "progress": False, **kw}  # fmt: skip
    return DownloadConfig(out_dir=str(out_dir), **kw)


GOOD = {"good_jpg": ("/good.jpg", "good_jpg.jpg"), "good_png": ("/good.png", "good_png.png"),
        "no_ext": ("/image-without-extension", "no_ext.png"), "gif": ("/animation.gif", "gif.gif"),
        "flaky": ("/flaky.png", "flaky.png"), "redirected": ("/redirect.png", "redirected.png")}  # fmt: skip
BAD = {
    "broken": ("/broken.jpg", "not a JPEG, PNG, GIF or WebP image", True),
    "soft404": ("/soft404.jpg", "not a JPEG, PNG, GIF or WebP image", True),
    "truncated": ("/truncated.jpg", "jpeg is truncated", False),
    "missing": ("/missing.jpg", "http 404 Not Found", True),
    "gone": ("/gone.jpg", "http 410 Gone", True),
    "down": ("/down.jpg", "http 503 Service Unavailable (2 attempts)", False),
    "loop": ("/redirect-loop.jpg", "redirect not followed (at most 3)", True),
    "to_ftp": ("/redirect-ftp.jpg", f"redirect to '{FTP_URL}' refused: only http(s)", True),
    "to_file": ("/redirect-file.jpg", "redirect to 'file:///etc/passwd' refused: only http(s)", True),
    "to_data": ("/redirect-data.png", "redirect to 'data:image/png;base64,iVBORw0KGgo=' refused", True),
    # a redirect to http first, then to ftp: refused at the second step
    "chain_to_ftp": ("/redirect-chain.jpg", f"redirect to '{FTP_URL}' refused", True),
    "huge": ("/huge.jpg", "too large: 5", True),
    "huge_stream": ("/huge-stream.jpg", "too large: over 4000 bytes", True),
    "slow": ("/slow.jpg", "timeout", False),
    "trickle": ("/trickle.jpg", "timeout", False),
}


def all_jobs(server):
    jobs = [DownloadJob(i, server.url + path, f"t.tsv:{k}") for k, (i, (path, _)) in enumerate(GOOD.items())]
    jobs += [DownloadJob(i, server.url + path, f"t.tsv:{k}") for k, (i, (path, _, _)) in enumerate(BAD.items())]
    jobs.append(DownloadJob("refused", f"http://127.0.0.1:{closed_port()}/x.jpg", "t.tsv:90"))
    jobs.append(DownloadJob("no_host", "http://", "t.tsv:91"))
    jobs.append(DownloadJob("good_jpg", server.url + "/good.jpg", "t.tsv:92"))  # asked twice
    return jobs


def test_download_fetches_good_images_and_reports_every_failure(server, tmp_path):
    out = tmp_path / "images"
    start = time.monotonic()
    summary = download_images(all_jobs(server), quick_config(out))
    elapsed = time.monotonic() - start
    # slow and trickling servers would hold a run without time limits for
    # SLOW_SECONDS; two attempts of TIMEOUT each (plus a last read) are allowed
    assert elapsed < 5.0, f"the run took {elapsed:.1f}s"

    files = sorted(p.name for p in out.iterdir() if not p.name.endswith(".jsonl"))
    assert files == sorted(name for _, name in GOOD.values())
    assert (out / "good_jpg.jpg").read_bytes() == jpeg_bytes(padding=300)
    assert (out / "flaky.png").read_bytes() == png_bytes(6, 2, seed=9)
    assert summary.downloaded == len(GOOD) and summary.duplicates == 1
    assert server.hits["/flaky.png"] == 2  # 500, then the image

    report = read_failure_report(out / "download_failures.jsonl")
    assert set(report) == set(BAD) | {"refused", "no_host"}
    for image_id, (path, reason, permanent) in BAD.items():
        record = report[image_id]
        assert reason in record["reason"], record
        assert record["permanent"] == permanent, record
        assert record["url"] == server.url + path and record["source"].startswith("t.tsv:")
    assert "connection failed" in report["refused"]["reason"] and not report["refused"]["permanent"]
    assert "bad URL" in report["no_host"]["reason"] and report["no_host"]["permanent"]
    assert summary.failed == len(report)
    assert summary.failure_kinds["http 404"] == 1 and summary.failure_kinds["timeout"] == 2
    # permanent failures are tried once, transient ones retried
    assert server.hits["/missing.jpg"] == 1 and server.hits["/down.jpg"] == 2
    assert server.hits["/huge.jpg"] == 1 and server.hits["/redirect-loop.jpg"] == 4
    assert server.hits["/redirect-chain.jpg"] == 1 and server.hits["/redirect-ftp.jpg"] == 2
    assert summary.failure_kinds["redirect"] == 5  # the loop and the four refusals


def test_only_http_urls_are_opened(tmp_path):
    """The opener has no ftp, file or data handler: such a URL, given
    directly, is a permanent 'bad URL' and never opened."""
    cfg = quick_config(tmp_path)
    for url in (FTP_URL, "file:///etc/passwd", "data:image/gif;base64,R0lGODlhAQABAAAAACw="):
        result = image_download.download_one(DownloadJob("x", url), cfg)
        assert result.permanent and result.attempts == 1, result
        assert result.reason.startswith("bad URL: unknown url type"), result
    assert list(tmp_path.iterdir()) == []


def test_second_run_downloads_nothing_new(server, tmp_path):
    out = tmp_path / "images"
    download_images(all_jobs(server), quick_config(out))
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.*g")}
    first = Counter(server.hits)

    summary = download_images(all_jobs(server), quick_config(out))
    second = server.hits - first
    assert summary.downloaded == 0 and summary.already_present == len(GOOD)
    permanent = {path for path, _, perm in BAD.values() if perm}
    for path in [p for p, _ in GOOD.values()] + sorted(permanent):
        assert second[path] == 0, f"{path} fetched again"
    # transient failures are worth another try on a rerun
    assert second["/down.jpg"] == 2 and second["/slow.jpg"] >= 1
    assert summary.skipped_failed_before == len(permanent) + 1  # + no_host
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.*g")} == mtimes
    # the report still lists every failed id, once
    lines = (out / "download_failures.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(set(BAD) | {"refused", "no_host"})

    third_before = Counter(server.hits)
    download_images(all_jobs(server), quick_config(out, retry_failed=True))
    assert (server.hits - third_before)["/missing.jpg"] == 1


def test_an_image_that_arrives_later_leaves_the_report(server, tmp_path):
    out = tmp_path / "images"
    job = DownloadJob("later", server.url + "/down.jpg")
    download_images([job], quick_config(out))
    assert "later" in read_failure_report(out / "download_failures.jsonl")
    server.routes["/down.jpg"] = server.routes["/good.png"]
    summary = download_images([job], quick_config(out))
    assert summary.downloaded == 1 and (out / "later.png").is_file()
    assert read_failure_report(out / "download_failures.jsonl") == {}


def test_a_changed_url_is_tried_despite_an_earlier_permanent_failure(server, tmp_path):
    out = tmp_path / "images"
    download_images([DownloadJob("x", server.url + "/missing.jpg")], quick_config(out))
    summary = download_images([DownloadJob("x", server.url + "/good.jpg")], quick_config(out))
    assert summary.downloaded == 1 and (out / "x.jpg").is_file()


def test_interrupted_writes_leave_no_half_files(server, tmp_path, monkeypatch):
    out = tmp_path / "images"
    out.mkdir()
    (out / ".old.jpg.1234abcd.part").write_bytes(b"half")  # from a killed run

    def fail_midway(tmp, final):
        raise OSError("disk full")

    monkeypatch.setattr(image_download.os, "replace", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        image_download.download_one(DownloadJob("a", server.url + "/good.jpg"), quick_config(out))
    assert list(out.iterdir()) == [out / ".old.jpg.1234abcd.part"]
    monkeypatch.undo()
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    download_images([DownloadJob("a", server.url + "/good.jpg")], quick_config(out))
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "download_failures.jsonl"]


def test_verify_existing_replaces_a_broken_file(server, tmp_path):
    out = tmp_path / "images"
    out.mkdir()
    (out / "a.jpg").write_bytes(jpeg_bytes()[:-2])  # left by some other tool
    job = DownloadJob("a", server.url + "/good.png")
    assert download_images([job], quick_config(out)).already_present == 1
    summary = download_images([job], quick_config(out, verify_existing=True))
    assert summary.downloaded == 1
    assert sorted(p.name for p in out.glob("a.*")) == ["a.png"]


def test_at_most_the_given_number_of_requests_run_at_once(server, tmp_path):
    active, peak, lock = [0], [0], threading.Lock()
    good = server.routes["/good.png"]

    def counted(h):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        good(h)

    server.routes["/good.png"] = counted
    jobs = [DownloadJob(f"i{k}", server.url + "/good.png") for k in range(24)]
    summary = download_images(jobs, quick_config(tmp_path / "images", workers=3))
    assert summary.downloaded == 24
    assert 1 < peak[0] <= 3
