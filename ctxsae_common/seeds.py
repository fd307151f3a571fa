"""Seeded random streams. Every random choice of the workbench draws from a generator named by
the run's seed and a stream: `seeded_generator(seed, "holdout")` splits windows,
`seeded_generator(seed, "batches", epoch)` orders an epoch, and so on. Streams are named here,
once, so two choices never share a stream by accident and a name says what a stream is for."""

from __future__ import annotations

import numpy as np
import torch

# Stream name -> the integer mixed into the seed. Never renumber: that changes every run's draws.
STREAMS = {
    "holdout": 11,  # which windows (or images) are held out for evaluation
    "batches": 1,  # the order of training windows, per epoch
    "shuffle_train": 2,  # the shuffled-context control's permutations in training, per step
    "shuffle_eval": 99,  # the shuffled-context control's permutations in evaluation
    "data": 3,  # synthetic data and rendered-scene choices
    "model": 4,  # other model-side draws (an autoencoder's crops and batches)
    "probe": 5,  # rows sampled for linear probes
    "shuffle_calibrate": 6,  # the control's permutations of the batches its final threshold is set on
}


def seeded_generator(seed: int, stream: str, *keys: int) -> torch.Generator:
    """A CPU torch.Generator determined by the seed, a named stream and integer keys (e.g. a step)."""
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r}: name it in ctxsae_common.seeds.STREAMS")
    state = np.random.SeedSequence([int(seed), STREAMS[stream], *(int(k) for k in keys)]).generate_state(
        2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
