"""The epoch loop: which batch each step sees, and when an epoch ends.

``fit`` (the CLI's run) and ``Runner.run`` (every study's run) both train through
``run_steps``, so a study trains on exactly the batches, in exactly the order, that
``jadapt train`` would use for the same data, seed and budget; they differ only in what
they do around the steps (checkpoints and logs for ``fit``, nothing for the studies).

Step ``s`` (0-based) lies in epoch ``s // steps_per_epoch`` at position ``s % steps_per_epoch``
of that epoch's seeded order (``jadapt.data.epoch_batches``), so a run resumed at any step
sees the batches an uninterrupted run would.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from jadapt import data

StepHook = Callable[[int, int, dict, Any], None]  # (steps done, epoch, state, step metrics)
EpochHook = Callable[[int, int, dict], None]  # (steps done, epoch that ended, state)


def run_steps(train_step, state: dict, frozen: dict, train: dict, *, batch_size: int, seed: int,
              steps_per_epoch: int, start: int, stop: int, total: int, buckets=None,
              put: Optional[Callable] = None, on_step: Optional[StepHook] = None,
              on_epoch_end: Optional[EpochHook] = None) -> tuple[dict, int]:
    """Train from step ``start`` to ``stop`` (<= ``total``, the run's full budget); returns (state, step).

    ``on_step`` runs after every step; ``on_epoch_end`` after the last step of an epoch, and
    after step ``total`` (the run's end, which may fall inside an epoch), but not when the loop
    stops early at ``stop`` < ``total`` (a ``--max-steps`` run: no epoch ended). ``put``: moves
    each host batch to the devices, in a background thread (``jadapt.data.prefetch``).
    """
    step = start
    while step < stop:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        batches = data.epoch_batches(train, batch_size, seed=seed, epoch=epoch, start_step=in_epoch, buckets=buckets)
        for batch in (batches if put is None else data.prefetch(batches, put)):
            state, metrics = train_step(state, frozen, batch)
            step, in_epoch = step + 1, in_epoch + 1
            if on_step is not None:
                on_step(step, epoch, state, metrics)
            if step >= stop:
                break
        if on_epoch_end is not None and (in_epoch >= steps_per_epoch or step >= total):
            on_epoch_end(step, epoch, state)
    return state, step
