import logging
import os
import sys


def setup_logging():
    """fairseq's console log format, so our commands read like its own, on
    stderr so that stdout carries only what a command prints for machines; a
    no-op where logging is configured already (inside fairseq's commands)."""
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        level=os.environ.get("LOGLEVEL", "INFO").upper(),
        stream=sys.stderr,
    )
