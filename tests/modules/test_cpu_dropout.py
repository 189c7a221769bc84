import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fairseq.modules import FairseqDropout

from vtlm_fairseq.modules.cpu_dropout import LEVELS, CpuDropout, cpu_dropout, set_cpu_dropout, use_cpu_dropout


def test_drop_rate_and_expectation_match_p():
    n = 1 << 20
    for p in (0.1, 0.3, 0.5):
        torch.manual_seed(0)
        y = cpu_dropout(torch.ones(n), p)
        dropped = (y == 0).double().mean().item()
        exact = round(p * LEVELS) / LEVELS
        assert abs(exact - p) <= 0.5 / LEVELS
        assert abs(dropped - exact) < 5 * (exact * (1 - exact) / n) ** 0.5
        # kept values carry the inverse keep rate: the mean stays 1
        assert abs(y.double().mean().item() - 1) < 5 * (exact / (1 - exact) / n) ** 0.5
        assert torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / (1 - exact))))


def test_neighbouring_elements_are_independent():
    # four elements share one 64-bit draw: their masks must not be correlated
    torch.manual_seed(1)
    drop = cpu_dropout(torch.ones(1 << 20), 0.5) == 0
    for lag in (1, 2, 3, 4):
        both = (drop[:-lag] & drop[lag:]).double().mean().item()
        assert abs(both - 0.25) < 0.004, lag


def test_seeded_like_torch_and_different_each_call():
    torch.manual_seed(3)
    a, b = cpu_dropout(torch.ones(4096), 0.1), cpu_dropout(torch.ones(4096), 0.1)
    torch.manual_seed(3)
    assert torch.equal(cpu_dropout(torch.ones(4096), 0.1), a)
    assert not torch.equal(a, b)


def test_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(0)
    x = torch.randn(64, 33, requires_grad=True)
    y = cpu_dropout(x, 0.25)
    g = torch.randn_like(y)
    y.backward(g)
    kept = y.detach() != 0
    scale = LEVELS / (LEVELS - round(0.25 * LEVELS))
    assert torch.allclose(y.detach(), x.detach() * kept * scale)
    assert torch.allclose(x.grad, g * kept * scale)


def test_extreme_rates():
    x = torch.randn(100)
    assert torch.equal(cpu_dropout(x, 1.0), torch.zeros(100))
    assert cpu_dropout(x, 1e-7) is x


def test_module_follows_training_mode_and_switch():
    module = CpuDropout(0.5)
    x = torch.ones(1000)
    module.eval()
    assert module(x) is x
    module.train()
    torch.manual_seed(0)
    fast = module(x)
    torch.manual_seed(0)
    torch_dropout = F.dropout(x, 0.5, training=True)
    set_cpu_dropout(module, False)
    torch.manual_seed(0)
    assert torch.equal(module(x), torch_dropout)
    assert not torch.equal(fast, torch_dropout)


def test_replacement_keeps_settings_and_state():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), FairseqDropout(0.3, module_name="x"))
    net[1].apply_during_inference = True
    state = net.state_dict()
    use_cpu_dropout(net)
    assert isinstance(net[1], CpuDropout) and net[1].p == 0.3 and net[1].apply_during_inference
    assert net.state_dict().keys() == state.keys()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keeps_dtype(dtype):
    y = cpu_dropout(torch.ones(300, dtype=dtype, requires_grad=True), 0.1)
    y.sum().backward()
    assert y.dtype == dtype
