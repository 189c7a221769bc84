"""fairseq commands end without ``terminate called without an active
exception`` (status 134 after a finished run).

fairseq fills its batch buffer in a daemon thread (``BufferedIterator``'s
``BackgroundConsumer``). When training stops (``--max-update`` reached) that
thread is usually still collating the next batches, inside torch's C++ code
with the GIL released; the interpreter then finalises, the thread is torn
down in the middle of a C++ frame, and the C++ runtime aborts the process.
At exit, before finalisation, this asks each such thread to stop after the
batch it is making and empties its queue so that it can put that batch and
its end marker, then waits (a few seconds at most) for it to end."""

import atexit
import queue
import threading
import time

WAIT_SECONDS = 10.0


def _consumers():
    from fairseq.data.iterators import BackgroundConsumer

    return [t for t in threading.enumerate() if isinstance(t, BackgroundConsumer) and t.is_alive()]


def stop_prefetch_threads(wait_seconds: float = WAIT_SECONDS) -> int:
    """Stops fairseq's live batch-prefetching threads; returns how many
    were still running when it gave up waiting (0: all ended)."""
    consumers = _consumers()
    for consumer in consumers:
        consumer._max_len = 0  # its loop ends once the batch in hand is put
    deadline = time.monotonic() + wait_seconds
    while consumers and time.monotonic() < deadline:
        for consumer in consumers:
            try:  # room for the batch in hand and the end marker
                while True:
                    consumer._queue.get_nowait()
            except queue.Empty:
                pass
            consumer.join(timeout=0.01)
        consumers = [c for c in consumers if c.is_alive()]
    return len(consumers)


def install() -> None:
    atexit.register(stop_prefetch_threads)
