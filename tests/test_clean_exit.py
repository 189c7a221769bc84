"""fairseq's batch-prefetching thread is stopped at exit, whatever it is
doing: waiting for room in its full queue, or making a batch."""

import time

from fairseq.data.iterators import BufferedIterator

from vtlm_fairseq.clean_exit import stop_prefetch_threads


class SlowBatches:
    """Batches that take a while to make (as collation inside torch does)."""

    def __init__(self, n, seconds):
        self.n, self.seconds, self.made = n, seconds, 0

    def __len__(self):
        return self.n

    def __iter__(self):
        for i in range(self.n):
            time.sleep(self.seconds)
            self.made += 1
            yield i


def test_a_thread_with_a_full_queue_and_one_making_a_batch_both_end():
    full = BufferedIterator(2, SlowBatches(1000, 0.0))
    busy = BufferedIterator(2, SlowBatches(1000, 0.3))
    assert next(full) == 0 and next(busy) == 0
    time.sleep(0.1)  # full: blocked on its queue; busy: making its second batch
    threads = [full._consumer, busy._consumer]
    assert all(t.is_alive() for t in threads)
    assert stop_prefetch_threads(wait_seconds=5) == 0
    assert not any(t.is_alive() for t in threads)
    assert busy._iterable.made <= 3  # it stopped after the batch in hand, not at the end
