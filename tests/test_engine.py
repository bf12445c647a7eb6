"""``dali_cutmix_trainer/engine.py``: occlusion, evaluation under AMP, the agreed stop signal."""

import pytest
import torch
import torch.distributed as dist


def test_occlusion_hides_a_centred_quarter():
    from dali_cutmix_trainer.engine import occluded

    images = torch.ones(2, 3, 32, 48)
    out = occluded(images, 0.25)
    assert (out == 0).float().mean() == 0.25 and (out[..., 8:24, 12:36] == 0).all() and (images == 1).all()


@pytest.mark.parametrize("amp", [torch.float16, torch.bfloat16, None], ids=["fp16", "bf16", "no-amp"])
def test_evaluation_follows_the_amp_flag(monkeypatch, amp):
    from contextlib import nullcontext

    from dali_cutmix_trainer import engine

    seen = []
    monkeypatch.setattr(engine, "autocast", lambda device, dtype: seen.append(dtype) or nullcontext())
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    batches = [(torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]))] * 2
    result = engine.evaluate(model, batches, torch.device("cpu"), 1, amp=amp)
    assert seen == [amp, amp] and result["val_images"] == 8


def test_ranks_agree_on_a_stop_every_n_steps_only(monkeypatch):
    """Under DDP agreeing costs an all-reduce and a read back (a device sync on CUDA): every
    ``every`` steps and once at the epoch's end, never in between; the flags carry the stop and
    every rank's first non-finite step."""
    from dali_cutmix_trainer.engine import EpochBooks, Stop, train_epoch

    calls = []
    monkeypatch.setattr(dist, "all_reduce", lambda flags, op=None: calls.append(flags.tolist()))
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    stop = Stop()
    loader = FakeLoader(45)
    books = EpochBooks(torch.device("cpu"), every=20, world=2)
    row = train_epoch(model, loader, optimizer, scheduler, None, epoch=0, device=torch.device("cpu"), stop=stop,
                      books=books, world=2, show=False)  # fmt: skip
    assert row["steps"] == 45 and not row["stopped"] and len(calls) == 3  # steps 20 and 40, and the end
    assert all(flags == [0.0, -1.0, -1.0] for flags in calls)
    stop.signal = 15
    calls.clear()
    assert EpochBooks(torch.device("cpu"), world=2).agree(stop, 0) and calls == [[1.0, -1.0, -1.0]]


class FakeLoader:
    """Batches for a Linear(2, 2): ``n`` steps, ``bad`` the steps whose images are NaN."""

    def __init__(self, n: int, bad=()):
        self.n, self.bad, self.finished = n, set(bad), 0

    def __len__(self):
        return self.n

    def __iter__(self):
        for i in range(self.n):
            x = torch.full((4, 2), float("nan")) if i in self.bad else torch.randn(4, 2)
            yield x, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long), torch.full((4,), 0.7)

    def finish_epoch(self):
        self.finished += 1


def _epoch(loader, books, **kwargs):
    from dali_cutmix_trainer.engine import Stop, train_epoch

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return train_epoch(model, loader, optimizer, scheduler, None, epoch=3, device=torch.device("cpu"),
                       stop=kwargs.pop("stop", Stop()), books=books, show=False, **kwargs)  # fmt: skip


def test_the_books_cost_the_same_every_step_however_long_the_epoch():
    """The loss sum and the non-finite flag are added on the device each step: the same operators
    on every step of a 200-step epoch, the first ones and the last ones, and a read every 20 steps."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from dali_cutmix_trainer.engine import EpochBooks

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append((str(func), tuple(getattr(a, "numel", lambda: 0)() for a in args if torch.is_tensor(a))))
            return func(*args, **(kwargs or {}))

    books = EpochBooks(torch.device("cpu"), every=20)
    per_step = []
    loss = torch.tensor(1.5)
    for step in range(200):
        with Count() as counted:
            books.add(loss, step, 4)
        per_step.append(counted.ops)
    assert all(ops == per_step[0] for ops in per_step)  # step 199 does what step 0 does, on scalars
    assert all(size <= 1 for ops in per_step for _, sizes in ops for size in sizes)
    reads = []
    real = EpochBooks.agree
    row = _epoch(FakeLoader(200), _Spy(real, reads, every=20))
    assert len(reads) == 200 // 20 and row["train_images"] == 800 and row["steps"] == 200  # steps 20..180, the end


class _Spy:
    """EpochBooks counting its reads."""

    def __new__(cls, real, reads, every):
        from dali_cutmix_trainer.engine import EpochBooks

        books = EpochBooks(torch.device("cpu"), every=every)
        original = books.agree
        books.agree = lambda *a, **k: reads.append(1) or original(*a, **k)
        return books


def test_a_non_finite_loss_is_found_at_the_next_read_naming_its_step():
    from dali_cutmix_trainer.engine import EpochBooks

    with pytest.raises(FloatingPointError, match=r"^non-finite loss at epoch 3, step 7$"):
        _epoch(FakeLoader(30, bad={7, 9}), EpochBooks(torch.device("cpu"), every=20))


def test_an_epoch_resumed_from_its_books_reports_the_whole_epochs_row(monkeypatch):
    """Steps 0..12, books saved, then 13..29 from the saved books: the row counts all 30 steps, its
    loss the mean over all of them, its lr the epoch's first."""
    from dali_cutmix_trainer import engine
    from dali_cutmix_trainer.engine import EpochBooks, Stop

    losses, real = [], engine.train_step
    monkeypatch.setattr(engine, "train_step", lambda *a, **k: losses.append(real(*a, **k)) or losses[-1])
    stop = Stop()
    first = EpochBooks(torch.device("cpu"), every=5, lr=0.5)

    class StopAt12(FakeLoader):
        def __iter__(self):
            for i, batch in enumerate(super().__iter__()):
                if i == 12:
                    stop.signal = 15
                yield batch

    part = _epoch(StopAt12(30), first, stop=stop)
    assert part["stopped"] and part["steps"] == 13
    saved = first.state()
    rest = _epoch(FakeLoader(30), EpochBooks(torch.device("cpu"), every=5, state=saved), start_step=13)
    assert len(losses) == 30 and rest["steps"] == 30 and rest["train_images"] == 120 and rest["lr"] == 0.5
    expected = sum(loss.double() for loss in losses).item() / 30
    assert rest["train_loss"] == pytest.approx(expected, rel=1e-12)
    assert rest["epoch_seconds"] >= part["epoch_seconds"] and rest["data_wait_s"] >= part["data_wait_s"]


def test_evaluation_counts_on_the_host_not_with_a_tensor_per_batch(monkeypatch):
    """A tensor made from a Python int each batch is a blocking host-to-device copy on CUDA."""
    import torch

    from dali_cutmix_trainer import engine

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    batches = [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])) for _ in range(3)]
    made = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(a) or real(*a, **k))
    result = engine.evaluate(model, batches, torch.device("cpu"), 1, amp=None)
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
