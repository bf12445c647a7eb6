"""``dali_cutmix_trainer/engine.py``: occlusion, evaluation under AMP, the agreed stop signal."""

import pytest
import torch
import torch.distributed as dist


def test_occlusion_hides_a_centred_quarter():
    from dali_cutmix_trainer.engine import occluded

    images = torch.ones(2, 3, 32, 48)
    out = occluded(images, 0.25)
    assert (out == 0).float().mean() == 0.25 and (out[..., 8:24, 12:36] == 0).all() and (images == 1).all()


@pytest.mark.parametrize("amp", [True, False], ids=["amp", "no-amp"])
def test_evaluation_follows_the_amp_flag(monkeypatch, amp):
    from contextlib import nullcontext

    from dali_cutmix_trainer import engine

    seen = []
    monkeypatch.setattr(engine, "autocast", lambda device, enabled: seen.append(enabled) or nullcontext())
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    batches = [(torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]))] * 2
    result = engine.evaluate(model, batches, torch.device("cpu"), 1, amp=amp)
    assert seen == [amp, amp] and result["val_images"] == 8


def test_ranks_agree_on_a_stop_every_n_steps_only(monkeypatch):
    """Under DDP agreeing costs an all-reduce and a read back (a device sync on CUDA): every
    ``every`` steps, and once more at the end of the epoch (step 0), never in between."""
    from dali_cutmix_trainer.engine import Stop

    calls = []
    monkeypatch.setattr(dist, "all_reduce", lambda flag, op=None: calls.append(flag.item()))
    stop = Stop(every=20)
    assert not any(stop.agreed(2, torch.device("cpu"), step) for step in range(1, 40) if step != 20)
    assert calls == []
    stop.signal = 15
    assert stop.agreed(2, torch.device("cpu"), 20) and calls == [1.0]
    assert stop.agreed(1, torch.device("cpu"), 7)  # alone: every step, no collective


def test_evaluation_counts_on_the_host_not_with_a_tensor_per_batch(monkeypatch):
    """A tensor made from a Python int each batch is a blocking host-to-device copy on CUDA."""
    import torch

    from dali_cutmix_trainer import engine

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    batches = [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])) for _ in range(3)]
    made = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(a) or real(*a, **k))
    result = engine.evaluate(model, batches, torch.device("cpu"), 1, amp=False)
    assert made == [] and result["val_images"] == 12


def test_the_optimizer_is_sgd_with_nesterov_and_no_decay_on_norms_and_biases():
    import torch

    from dali_cutmix_trainer.engine import sgd

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    opt = sgd(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and [p.ndim for p in decay["params"]] == [2]
    assert no_decay["weight_decay"] == 0 and len(no_decay["params"]) == 3 and decay["nesterov"]
    assert not decay["fused"]  # fused on CUDA only


def test_momentum_starts_at_zero_so_a_skipped_first_step_leaves_nothing_undefined():
    """The fused CUDA kernel makes fresh momentum with empty_like and writes nothing when
    GradScaler skips the step: the buffers exist, zeroed, from the start. With them the first
    step is exactly plain SGD's, whose first step copies the gradient into a new buffer."""
    import torch

    from dali_cutmix_trainer.engine import sgd

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    twin = __import__("copy").deepcopy(model)
    ours = sgd(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    assert all(torch.equal(ours.state[p]["momentum_buffer"], torch.zeros_like(p)) for p in model.parameters())
    decay = [p for p in twin.parameters() if p.ndim > 1]
    rest = [p for p in twin.parameters() if p.ndim <= 1]
    plain = torch.optim.SGD([{"params": decay, "weight_decay": 1e-4}, {"params": rest, "weight_decay": 0.0}],
                            lr=0.1, momentum=0.9, nesterov=True)  # fmt: skip
    x = torch.randn(8, 4)
    for _ in range(3):
        for m, opt in ((model, ours), (twin, plain)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
