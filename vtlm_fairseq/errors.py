"""The one error type for a user's mistake or bad input.

Its message names the file (and line, or image) and the problem. Console
commands print it alone and exit with status 2 (``cli.command.run_command``);
inside fairseq's own entry points the plugin's exception hook does the same,
so bad input never shows as a traceback."""

import logging
import os
import sys
import time

USAGE_ERROR_STATUS = 2


class InputError(ValueError):
    """Bad input or a user's mistake; ``str(e)`` is the whole message."""


def print_input_error(error: BaseException) -> None:
    """One line on stderr, in fairseq's log format."""
    logging.getLogger("vtlm_fairseq").error("%s", error)
    for handler in logging.getLogger().handlers:
        handler.flush()


# fairseq's own errors that are a user's mistake, reported as ours
_FAIRSEQ_USER_ERRORS = ((OSError, "Model file not found:"),)


def _is_user_error(exc_type, exc) -> bool:
    if issubclass(exc_type, InputError):
        return True
    return any(issubclass(exc_type, kind) and str(exc).startswith(text) for kind, text in _FAIRSEQ_USER_ERRORS)


def _input_error_hook(previous):
    def hook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt):
            sys.stdout.flush()
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            sys.stderr.write(f"{stamp} | ERROR | vtlm_fairseq | interrupted (Ctrl-C); a rerun of the same "
                             "command continues from the last checkpoint\n")  # fmt: skip
            sys.stderr.flush()
            os._exit(130)
        if _is_user_error(exc_type, exc):
            # fairseq logs to stdout; the error goes to stderr all the same
            sys.stdout.flush()
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            sys.stderr.write(f"{stamp} | ERROR | vtlm_fairseq | {exc}\n")
            sys.stderr.flush()
            # the interpreter would exit with 1 after any hook
            os._exit(USAGE_ERROR_STATUS)
        previous(exc_type, exc, tb)

    hook.vtlm_input_error_hook = True
    return hook


def install_input_error_hook() -> None:
    """fairseq-train/generate/... report our InputErrors as one line and exit 2."""
    if not getattr(sys.excepthook, "vtlm_input_error_hook", False):
        sys.excepthook = _input_error_hook(sys.excepthook)
