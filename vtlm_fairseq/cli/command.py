"""What every console command of ours does around its work: fairseq's log
format on stderr, bad input as one line with exit status 2, Ctrl-C as one
line with status 130, never a traceback for either."""

import sys
from typing import Callable, Optional

from ..errors import USAGE_ERROR_STATUS, InputError, print_input_error
from .logging_setup import setup_logging

INTERRUPTED_STATUS = 130


def run_command(work: Callable[[], Optional[int]]) -> None:
    """Runs ``work`` and exits with its status (None: 0)."""
    setup_logging()
    try:
        status = work()
    except InputError as e:
        print_input_error(e)
        sys.exit(USAGE_ERROR_STATUS)
    except KeyboardInterrupt:
        print_input_error("interrupted (Ctrl-C); what was written so far is kept, a rerun continues")
        sys.exit(INTERRUPTED_STATUS)
    except BrokenPipeError:  # `vtlm-... | head`
        sys.stderr.close()
        sys.exit(1)
    sys.exit(status or 0)
