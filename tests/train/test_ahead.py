"""Compiling each batch width's step ahead, in a background thread (jadapt.train.ahead).

What must hold: the programs compiled ahead are the ones the loop's calls use (no compile in
the loop), each width is traced once (the loop waits instead of racing the thread), results
are bitwise those of a run without it, and a compile that fails ahead fails nowhere.
"""
from __future__ import annotations

import threading

import jax
import numpy as np
import pytest

from jadapt.data.batching import epoch_batches, first_batch_per_width
from jadapt.train.ahead import CompileAhead, abstract
from jadapt.train.config import TrainConfig
from jadapt.train.loop import fit
from test_recompile import _COUNTER, _data, _steps


def test_first_batch_per_width_follows_the_epoch():
    data = _data()
    batches = list(epoch_batches(data, batch_size=8, seed=3, epoch=1, start_step=1, buckets=(16, 32, 64)))
    widths = list(dict.fromkeys(b["input_ids"].shape[1] for b in batches))  # in first-seen order
    firsts = first_batch_per_width(data, batch_size=8, seed=3, epoch=1, start_step=1, buckets=(16, 32, 64))
    assert list(firsts) == widths and len(widths) >= 2
    for w, batch in firsts.items():
        expect = next(b for b in batches if b["input_ids"].shape[1] == w)
        for k in expect:
            np.testing.assert_array_equal(batch[k], expect[k])


@pytest.mark.parametrize("ahead", [True, False])
def test_loop_compiles_nothing_after_compile_ahead(ahead):
    """With the widths compiled ahead the epoch compiles nothing; without, once per width
    (so the count can fail). The state is donated by the first step while its spec is used."""
    data = _data()
    train, _, state, frozen = _steps("pfeiffer", "float32")
    firsts = first_batch_per_width(data, batch_size=8, seed=0, epoch=0, buckets=(32, 64))
    if ahead:
        worker = CompileAhead([(w, train, (abstract(state), abstract(frozen), abstract(b)))
                               for w, b in firsts.items()])
        for w in firsts:
            worker.wait(w)
        worker.close()
        assert worker.errors == {}
    with _COUNTER:
        before = _COUNTER.count
        for batch in epoch_batches(data, batch_size=8, seed=0, epoch=0, buckets=(32, 64)):
            state, m = train(state, frozen, batch)
        jax.block_until_ready(m["loss"])
        compiled_in_loop = _COUNTER.count - before
    assert compiled_in_loop == (0 if ahead else len(firsts)), compiled_in_loop


def test_failed_compile_is_dropped_and_waiters_released():
    class Broken:
        def lower(self, *args):
            raise RuntimeError("no such program")

    ok = jax.jit(lambda x: x + 1)
    worker = CompileAhead([("bad", Broken(), ()), ("good", ok, (jax.ShapeDtypeStruct((3,), np.float32),))])
    worker.wait("bad")
    worker.wait("good")
    worker.wait("never-asked")  # unknown keys do not block
    worker.close()
    assert isinstance(worker.errors["bad"], RuntimeError) and "good" not in worker.errors


def test_close_skips_what_has_not_started():
    gate = threading.Event()

    class Slow:
        def lower(self, *args):
            gate.wait()
            return self

        def compile(self):
            return None

    worker = CompileAhead([(i, Slow(), ()) for i in range(3)])
    closer = threading.Thread(target=worker.close)
    closer.start()
    gate.set()
    closer.join(timeout=30)
    assert not closer.is_alive()
    for i in range(3):
        worker.wait(i)  # released, started or not


def _cfg(tiny_model_dir, data_dir, out, **kw):
    base = dict(task="rte", method="pfeiffer", model=str(tiny_model_dir), data_dir=str(data_dir), out=str(out),
                epochs=2, batch_size=16, eval_batch_size=16, max_length=32, bottleneck=8, lr=3e-3,
                progress=False, buckets=(8, 16, 24, 32))
    base.update(kw)
    return TrainConfig(**base)


def test_fit_traces_each_width_once_and_matches_without(tiny_model_dir, synthetic_data_dir, tmp_path):
    traces = []
    listening = threading.Event()

    def on_event(event, duration, **kw):
        if listening.is_set() and event == "/jax/core/compile/jaxpr_trace_duration":
            traces.append(kw.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(on_event)
    listening.set()
    try:
        with_ahead = fit(_cfg(tiny_model_dir, synthetic_data_dir, tmp_path / "ahead"))
    finally:
        listening.clear()
    without = fit(_cfg(tiny_model_dir, synthetic_data_dir, tmp_path / "plain", compile_ahead=False))
    steps, evals = traces.count("step"), traces.count("eval_step")
    assert steps >= 2 and evals >= 1, traces  # several widths, all traced ...
    assert with_ahead["history"] == without["history"]  # same numbers to the last bit
    # ... once each: as many step traces as train widths (epoch 1 may add a width epoch 0 lacked)
    from jadapt import data as jd
    from jadapt.train.loop import prepare_data

    cfg = _cfg(tiny_model_dir, synthetic_data_dir, tmp_path / "x")
    train, dev = prepare_data(cfg, jd.get_task("rte"), tiny_model_dir, 512)
    widths = set()
    for epoch in range(2):
        widths |= set(first_batch_per_width(train, 16, seed=0, epoch=epoch, buckets=cfg.buckets))
    eval_widths = {b["input_ids"].shape[1] for b in jd.eval_batches(dev, 16, buckets=cfg.buckets, sort_by_length=True)}
    assert steps == len(widths) and evals == len(eval_widths), (traces, widths, eval_widths)

