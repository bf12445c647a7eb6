"""Values that change with the epoch, piecewise constant: the one schedule type of the house
(the chance of mixing, ``MixConfig.prob_schedule``; the crop side, ``pipelines.settings.SizeSchedule``),
with its one parser for the ``EPOCH:VALUE,...`` text the command lines take."""

from __future__ import annotations

from collections.abc import Iterable

from .errors import UserError


def schedule_steps(pairs, value_type: type, what: str) -> tuple[tuple[int, float | int], ...]:
    """``pairs`` (``(epoch, value)`` pairs, or a dict) as sorted ``(int, value_type)`` pairs; a
    :class:`UserError` naming ``what`` for anything else: a non-integer epoch, an epoch below 0 or
    given twice, a value not of ``value_type`` (ints for ints: 32.7 is no side)."""
    items = pairs.items() if isinstance(pairs, dict) else pairs
    steps = []
    try:
        for epoch, value in items:
            if isinstance(epoch, bool) or not float(epoch).is_integer():
                raise ValueError(f"epoch {epoch!r} is not a whole number")
            if value_type is int and (isinstance(value, bool) or not float(value).is_integer()):
                raise ValueError(f"{value!r} is not a whole number")
            steps.append((int(epoch), value_type(value)))
    except (TypeError, ValueError) as e:
        reason = str(e) if "whole number" in str(e) else "must be (epoch, value) pairs"
        raise UserError(f"{what} {reason}, got {pairs!r}") from None
    epochs = [e for e, _ in steps]
    for epoch in epochs:
        if epoch < 0:
            raise UserError(f"{what} needs epochs >= 0, got {epoch}")
        if epochs.count(epoch) > 1:
            raise UserError(f"{what} gives epoch {epoch} twice")
    return tuple(sorted(steps))


def value_at(steps: Iterable[tuple[int, float | int]], epoch: int, default):
    """The value in force in ``epoch``: the last step at or before it, else ``default``."""
    value = default
    for start, v in steps:
        if epoch >= start:
            value = v
    return value


def parse_schedule(text: str, value_type: type, what: str, example: str) -> tuple[tuple[int, float | int], ...]:
    """``"0:160,10:192"`` -> ``((0, 160), (10, 192))``: the text of every ``--...-schedule`` flag; a
    :class:`UserError` naming ``what`` and showing ``example`` (``"EPOCH:SIDE pairs such as
    0:160,10:192"``) for text of another form."""
    try:
        pairs = [tuple(item.split(":")) for item in str(text).split(",") if item.strip()]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise ValueError(text)
        pairs = [(int(e), value_type(v) if value_type is float else int(v)) for e, v in pairs]
    except ValueError:
        raise UserError(f"{what} {text!r}: expected {example}") from None
    return schedule_steps(pairs, value_type, what)


def schedule_text(steps: Iterable[tuple[int, float | int]]) -> str:
    """The schedule as its flag spells it, in epoch order: one spelling a schedule."""
    return ",".join(f"{e}:{v}" for e, v in steps)


class EpochFeed:
    """An external source's callback (``batch=True, batch_info=True``): every sample of a batch
    gets ``value_at(epoch)`` of the batch's epoch (the chance of mixing, the crop side).

    DALI prefetches, so a loader's notion of "current epoch" runs behind the pipeline; the batch's
    own iteration number (``BatchInfo.iteration``, which DALI's checkpoints restore) tells its
    epoch exactly, so a resumed pipeline sees the schedule where it left it.

    value_at: epoch -> value. dtype: the NumPy type of the values. batch_size: samples a batch.
    steps_per_epoch: pipeline runs an epoch. start_epoch: the epoch of the pipeline's first batch.
    """

    def __init__(self, value_at, dtype, batch_size: int, steps_per_epoch: int, start_epoch: int = 0):
        if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be an int >= 1 (pipeline runs an epoch), got {steps_per_epoch!r}")
        self.value_at, self.dtype, self.batch_size = value_at, dtype, batch_size
        self.steps_per_epoch, self.start_epoch = steps_per_epoch, start_epoch

    def __call__(self, info):
        import numpy as np

        epoch = self.start_epoch + info.iteration // self.steps_per_epoch
        return [np.asarray(self.value_at(epoch), self.dtype)] * self.batch_size
