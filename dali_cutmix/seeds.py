"""Every random stream's seed, derived from the one ``seed`` a user gives, in one place."""

from __future__ import annotations

import numpy as np

STREAMS = ("shuffle", "augment", "loop_mixer")
MAX_SEED = 2**31 - 1


def derive_seed(seed: int, stream: str, *, origin: int = 0, shard: int = 0) -> int:
    """The seed of one random stream, an int in ``[0, 2**31)``.

    seed: the user's, an int in ``[0, MAX_SEED]``.
    stream: ``"shuffle"`` (a reader's order: the same on every shard, which then together read
        the data once an epoch), ``"augment"`` (a pipeline's crops, flips and mixing: one per
        shard) or ``"loop_mixer"`` (a training loop's mixer: one per shard).
    origin: the epoch a loader starts at without a saved state (a later one draws new
        augmentations, not epoch 0's again).
    shard: the shard (rank); ignored for ``"shuffle"``.
    """
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
    for name, value in (("seed", seed), ("origin", origin), ("shard", shard)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    words = (int(seed), STREAMS.index(stream), int(origin), 0 if stream == "shuffle" else int(shard))
    return int(np.random.SeedSequence(words).generate_state(1)[0] >> 1)
