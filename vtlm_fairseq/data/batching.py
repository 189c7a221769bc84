"""Batching that never loses a sentence.

fairseq's ``data_utils.batch_by_size`` drops the last batch when its size is
not a multiple of ``--required-batch-size-multiple`` (8 by default), in
training, validation and generation alike. Our datasets batch through this
mixin, which gives those sentences back as a final, smaller batch.
"""

import numpy as np
from fairseq.data import data_utils


def batch_by_size_keeping_all(indices, **kwargs):
    batches = data_utils.batch_by_size(indices, **kwargs)
    if kwargs.get("fixed_shapes") is not None:
        return batches
    indices = np.asarray(indices, dtype=np.int64)
    n_batched = sum(len(b) for b in batches)
    if n_batched < len(indices):
        # the dropped batch is the tail of the ordered indices
        batches = list(batches) + [indices[n_batched:]]
    return batches


def first_epoch_seed(seed: int):
    """The numpy seed under which a shuffled dataset orders its examples.

    fairseq seeds ``ordered_indices`` with (seed + the epoch at which it
    builds the batches): epoch 1 in a run from the start (the batches are
    then reused, shuffled per epoch), but the resumed epoch after a restart at
    an epoch boundary. Seeding with epoch 1 ourselves makes a resumed run
    draw the batches the uninterrupted one does."""
    return data_utils.numpy_seed(seed + 1)


class KeepAllBatchesMixin:
    """For FairseqDataset subclasses: batch_by_size without the dropped tail."""

    def batch_by_size(
        self,
        indices,
        max_tokens=None,
        max_sentences=None,
        required_batch_size_multiple=1,
    ):
        fixed_shapes = self.get_batch_shapes()
        if fixed_shapes is not None:
            return super().batch_by_size(
                indices, max_tokens, max_sentences, required_batch_size_multiple
            )
        num_tokens_vec = self.num_tokens_vec(indices)
        if num_tokens_vec is not None:  # fairseq's Cython batching wants int64
            num_tokens_vec = np.asarray(num_tokens_vec, dtype=np.int64)
        return batch_by_size_keeping_all(
            indices,
            num_tokens_fn=self.num_tokens,
            num_tokens_vec=num_tokens_vec,
            max_tokens=max_tokens,
            max_sentences=max_sentences,
            required_batch_size_multiple=required_batch_size_multiple,
        )
