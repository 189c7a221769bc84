"""The roofline's kernel recording and replay, and benchlib's process-tree
clock, on small torch modules (no fairseq model is built)."""

import multiprocessing
import time

import torch

from benchmarks.benchlib import tree_cpu_time
from benchmarks.roofline import KernelReplay, record_kernels


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.second(torch.softmax(self.first(x), dim=-1))


def criterion(model, sample):
    return model(sample).sum(), 1, {}


def test_records_the_matmuls_and_softmax_with_their_gradients():
    model, x = TwoLayers(), torch.randn(3, 5, 8)
    kernels = record_kernels(model, criterion, x)
    names = [k.op.overloadpacket.__name__ for k in kernels]
    assert names == ["addmm", "_softmax", "addmm"]
    first = kernels[0]
    # the input needs no gradient, the (transposed: non-contiguous) weight does
    assert [a.requires_grad for a in first.args] == [True, False, True] and first.non_contiguous == 1
    replay = KernelReplay(kernels)
    assert all(a.is_contiguous() for _, args, _, _ in replay.calls for a in args if torch.is_tensor(a))
    assert [len(leaves) for _, _, _, leaves in replay.calls] == [2, 1, 3]
    replay.run()  # forward and backward of each kernel alone
    assert model.first.weight.grad is None  # the model's own parameters are untouched


def _spin(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_tree_clock_counts_a_child_process():
    start_tree, start_own = tree_cpu_time(), time.process_time()
    child = multiprocessing.get_context("fork").Process(target=_spin, args=(0.3,))
    child.start()
    child.join()
    assert tree_cpu_time() - start_tree >= 0.25 + (time.process_time() - start_own)
