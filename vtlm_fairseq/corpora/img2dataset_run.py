"""Runs ``img2dataset.download`` for ``vtlm-cc download``, as a program of
its own: ``python img2dataset_run.py ARGS.json``.

It is started by path, not with ``-m``: img2dataset starts its workers with
multiprocessing's spawn method, which imports the main module again in each
of them, and importing the ``vtlm_fairseq`` package would import torch there
too. So this file imports the standard library and img2dataset only.

ARGS.json holds ``parent_pid`` (the ``vtlm-cc`` process) and ``download``
(the keyword arguments of ``img2dataset.download``). The program runs as the leader of its own process
group, which its workers join; when its parent is gone (killed, even with
SIGKILL), it kills that whole group, so no download goes on writing behind a
rerun's back.

img2dataset fetches with ``urllib.request.urlopen``, whose default opener
also reads ftp: and file: URLs and follows redirects to ftp:. This module
installs an opener that speaks http(s) only, redirects included, in this
process and, as the module is imported again there, in every worker that
multiprocessing starts (not on pyspark or ray workers)."""

import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

URL_SCHEMES = ("http", "https")


class _HttpRedirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects (at most 10), to http(s) URLs only, refused with
    urllib's own words for a file: redirect."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme not in URL_SCHEMES:
            raise urllib.error.HTTPError(newurl, code, f"{msg} - Redirection to url '{newurl}' is not allowed",
                                         headers, fp)  # fmt: skip
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def http_only_opener() -> urllib.request.OpenerDirector:
    """An opener without ftp:, file: or data: handlers."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(), urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(), _HttpRedirects(), urllib.request.HTTPErrorProcessor(),
        urllib.request.UnknownHandler(),
    ):  # fmt: skip
        opener.add_handler(handler)
    return opener


urllib.request.install_opener(http_only_opener())


def _die_with_parent(parent_pid: int, interval: float = 0.2) -> None:
    while True:
        if os.getppid() != parent_pid:
            os.killpg(0, signal.SIGKILL)
        time.sleep(interval)


def _spark_session(processes: int) -> None:
    """A Spark session for img2dataset's pyspark distributor: the cluster
    that PYSPARK_SUBMIT_ARGS names (``--master spark://HOST:7077
    pyspark-shell``), else a local one with one core per process."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("vtlm-cc download")
    if "--master" not in os.environ.get("PYSPARK_SUBMIT_ARGS", ""):
        builder = builder.master(f"local[{processes}]")
    builder.getOrCreate()


def main(argv) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} ARGS.json", file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    threading.Thread(target=_die_with_parent, args=(int(spec["parent_pid"]),), daemon=True).start()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import download

    args = spec["download"]
    if args.get("distributor") == "pyspark":
        _spark_session(int(args.get("processes_count", 1)))
    download(**args)
    return 0


if __name__ == "__main__":  # spawned workers import this file again: no work there
    sys.exit(main(sys.argv))
