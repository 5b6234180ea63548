"""Put batches on device ahead of the step that needs them, from a background thread.

The host work (gathering, slicing) and the host->device copy of the next ``size`` batches
overlap the current step. ``put`` decides placement, e.g.
``lambda b: jax.device_put(b, sharding)``; its results are yielded in order. Errors in the
producer are re-raised in the consumer; closing the generator early stops the thread.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator

_END = object()


def prefetch(batches: Iterable[Any], put: Callable[[Any], Any] | None = None, size: int = 2) -> Iterator[Any]:
    """Yield ``put(batch)`` for each batch, keeping at most ``size`` ready ahead.
    ``put`` defaults to ``jax.device_put`` (default device)."""
    if size < 1:
        raise ValueError(f"prefetch size must be >= 1, got {size}")
    if put is None:
        import jax

        put = jax.device_put
    return _run(iter(batches), put, size)


def _run(batches: Iterator[Any], put: Callable[[Any], Any], size: int) -> Iterator[Any]:
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for b in batches:
                if not offer((put(b), None)):
                    return
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer
            offer((_END, e))
            return
        offer((_END, None))

    thread = threading.Thread(target=produce, name="jadapt-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, err = q.get()
            if item is _END:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5.0)
