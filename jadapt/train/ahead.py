"""Compile a jitted step for the batch shapes a run will meet, ahead, in a background thread.

Length bucketing gives a run several batch widths, each its own program. Compiled on first
use, every new width stalls the loop for its trace + lower + compile (or cache load) while the
device waits. ``CompileAhead`` walks the widths in the order the run meets them and calls
``fn.lower(*args).compile()`` for each; that fills the same caches ``fn(*args)`` uses, so the
loop's call at that width finds its program ready. The loop calls ``wait(key)`` before the
first step at a width, so a width is never traced twice at once.

Arguments are described by ``jax.ShapeDtypeStruct`` (``abstract``), never by live arrays:
the train state is donated by the first step while the thread may still be lowering.
A failed compile is dropped silently: the loop's own call then compiles (or raises) as usual.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Hashable, Sequence

import jax


def abstract(tree: Any) -> Any:
    """Shapes, dtypes, weak types and (for committed jax arrays) shardings of ``tree``'s
    leaves: what ``jax.jit`` keys its programs on (an uncommitted array has no sharding to
    keep, and naming one would compile a different program)."""

    def spec(x):
        sharding = x.sharding if isinstance(x, jax.Array) and x.committed else None
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding, weak_type=getattr(x, "weak_type", False))

    return jax.tree.map(spec, tree)


class CompileAhead:
    """Background ``fn.lower(*args).compile()`` for each ``(key, fn, args)``, in order.

    >>> ahead = CompileAhead([(16, train_step, (state_spec, frozen_spec, batch16_spec))])
    >>> ahead.wait(16); state, m = train_step(state, frozen, batch16)
    """

    def __init__(self, jobs: Sequence[tuple[Hashable, Callable, tuple]]):
        self._jobs = list(jobs)
        self._done = {key: threading.Event() for key, _, _ in self._jobs}
        self._stop = threading.Event()
        self.errors: dict[Hashable, BaseException] = {}
        self._thread = threading.Thread(target=self._run, name="jadapt-compile-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for key, fn, args in self._jobs:
            if self._stop.is_set():
                break
            try:
                fn.lower(*args).compile()
            except Exception as e:  # noqa: BLE001 -- the loop's own call compiles (and raises) instead
                self.errors[key] = e
            finally:
                self._done[key].set()
        for event in self._done.values():  # stopped early: release every waiter
            event.set()

    def wait(self, key: Hashable) -> None:
        """Block until ``key``'s program is compiled (or was dropped); unknown keys return at once."""
        event = self._done.get(key)
        if event is not None:
            event.wait()

    def waiting(self, fn: Callable, kind: str) -> Callable:
        """``fn(*args)`` that first waits for key ``(kind, width)``, the width being that of the
        last argument's ``input_ids`` (jadapt's batch dicts)."""

        def call(*args):
            self.wait((kind, args[-1]["input_ids"].shape[1]))
            return fn(*args)

        return call

    def close(self) -> None:
        """Skip what is not started yet and wait for the compile in progress."""
        self._stop.set()
        self._thread.join()
