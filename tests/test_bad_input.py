"""Bad input, as a user types it: exit status 2 and exactly one stderr line
``jadapt: error: ...`` that names the flag or the file (and line); no traceback, nothing after.

One table, run under transformers 5 (the main venv) and 4.57 (the peers' venv, ``.ci/run``).
Cases run in-process through ``jadapt.cli.main`` (fast: one JAX import for the table); cases
marked ``subprocess`` run ``python -m jadapt.cli``, because what they guard against (a stray
traceback from background threads) shows only when the interpreter exits.
"""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]  # {placeholders} filled from the ``paths`` fixture
    expect: tuple[str, ...]  # substrings of the one error line
    subprocess: bool = False
    env: tuple[tuple[str, str], ...] = ()  # set for the case; ("NAME", "") unsets NAME


CASES = [
    Case("epochs-inf", ("train", "--task", "rte", "--epochs", "inf", "--out", "{tmp}/o"), ("--epochs", "'inf'")),
    Case("epochs-nan", ("train", "--task", "rte", "--epochs", "nan", "--out", "{tmp}/o"), ("--epochs", "'nan'")),
    Case("epochs-zero", ("train", "--task", "rte", "--epochs", "0", "--out", "{tmp}/o"), ("--epochs",)),
    Case("epochs-word", ("train", "--task", "rte", "--epochs", "three", "--out", "{tmp}/o"), ("--epochs",)),
    Case("batch-size-zero", ("train", "--task", "rte", "--batch-size", "0", "--out", "{tmp}/o"), ("--batch-size",)),
    Case("train-size-negative", ("train", "--task", "rte", "--train-size", "-5", "--out", "{tmp}/o"),
         ("--train-size", "'-5'")),
    Case("k-shot-zero", ("train", "--task", "rte", "--k-shot", "0", "--out", "{tmp}/o"), ("--k-shot",)),
    Case("max-length-zero", ("train", "--task", "rte", "--max-length", "0", "--out", "{tmp}/o"), ("--max-length",)),
    Case("bottleneck-zero", ("train", "--task", "rte", "--bottleneck", "0", "--out", "{tmp}/o"), ("--bottleneck",)),
    Case("lora-r-negative", ("train", "--task", "rte", "--lora-r", "-1", "--out", "{tmp}/o"), ("--lora-r",)),
    Case("save-every-negative", ("train", "--task", "rte", "--save-every", "-1", "--out", "{tmp}/o"),
         ("--save-every",)),
    Case("eval-batch-size-zero", ("eval", "--checkpoint", "{run}", "--batch-size", "0", "--out", "{tmp}/o"),
         ("--batch-size",)),
    Case("unknown-task", ("train", "--task", "nosuchtask", "--out", "{tmp}/o"), ("unknown task 'nosuchtask'",)),
    Case("unknown-method", ("train", "--task", "rte", "--method", "nosuchmethod", "--out", "{tmp}/o"),
         ("--method", "'nosuchmethod'")),
    Case("missing-out", ("train", "--task", "rte"), ("--out",)),
    Case("missing-checkpoint-flag", ("eval", "--out", "{tmp}/o"), ("--checkpoint",)),
    Case("missing-checkpoint-path", ("eval", "--checkpoint", "{tmp}/nowhere", "--out", "{tmp}/o"),
         ("--checkpoint", "{tmp}/nowhere")),
    Case("export-missing-checkpoint", ("export", "--checkpoint", "{tmp}/nowhere", "--format", "adapterhub",
                                       "--out", "{tmp}/o"), ("--checkpoint", "{tmp}/nowhere")),
    Case("checkpoint-is-no-checkpoint", ("eval", "--checkpoint", "{plain}", "--out", "{tmp}/o"),
         ("{plain}", "missing metadata.json", "`jadapt train --out` folder")),
    Case("run-without-best", ("eval", "--checkpoint", "{unfinished}", "--out", "{tmp}/o"),
         ("{unfinished}", "no best/", "has not finished an evaluation yet")),
    Case("weightless-model", ("train", "--task", "rte", "--model", "{weightless}", "--data-dir", "{data}",
                              "--out", "{tmp}/o"), ("{weightless}", "has no weights")),
    Case("missing-model", ("train", "--task", "rte", "--model", "{tmp}/no/model", "--out", "{tmp}/o"),
         ("{tmp}/no/model",)),
    Case("non-utf8-data", ("train", "--task", "rte", "--model", "{model}", "--data-dir", "{latin1}",
                           "--no-progress", "--out", "{tmp}/o"), ("{latin1}/rte/train.jsonl:3:", "not UTF-8")),
    Case("missing-data-dir", ("train", "--task", "rte", "--model", "{model}", "--data-dir", "{tmp}/nodata",
                              "--out", "{tmp}/o"), ("{tmp}/nodata",)),
    Case("eval-a-merge", ("eval", "--checkpoint", "{merged}", "--task", "rte", "--data-dir", "{data}",
                          "--out", "{tmp}/o"), ("{merged}", "no task head", "--init-adapter {merged}")),
    Case("no-data-offline", ("train", "--task", "rte", "--model", "{model}", "--out", "{tmp}/o"),
         ("--data-dir", "JADAPT_DATA_DIR"), subprocess=True,  # datasets reads the offline flags at import
         env=(("JADAPT_DATA_DIR", ""), ("HF_DATASETS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "1"))),
    Case("truncated-array-file", ("eval", "--checkpoint", "{truncated}", "--data-dir", "{data}", "--out", "{tmp}/o"),
         ("{truncated}/params", "truncated or corrupt"), subprocess=True),
    Case("empty-array-file", ("eval", "--checkpoint", "{emptied}", "--data-dir", "{data}", "--out", "{tmp}/o"),
         ("{emptied}/params", "truncated or corrupt"), subprocess=True),
]

# ---- Reliability cases (issue 21): append Case(...) entries here -------------------------------
# (--out an existing file / read-only, --max-steps 0, --lr inf, eval task mismatch, the --out lock)
_TINY = ("--model", "{model}", "--data-dir", "{data}", "--max-length", "16", "--batch-size", "8", "--no-progress",
         "--no-compile-ahead")
RELIABILITY_CASES: list[Case] = [
    Case("out-is-a-file", ("train", "--task", "rte", *_TINY, "--out", "{file}"), ("--out", "{file}")),
    Case("out-read-only", ("train", "--task", "rte", *_TINY, "--out", "/proc/jadapt-test/o"),
         ("--out", "/proc/jadapt-test/o")),
    Case("eval-out-is-a-file", ("eval", "--checkpoint", "{run}/best", "--data-dir", "{data}", "--out", "{file}"),
         ("--out", "{file}")),
    Case("max-steps-zero", ("train", "--task", "rte", "--max-steps", "0", "--out", "{tmp}/o"), ("--max-steps",)),
    Case("lr-inf", ("train", "--task", "rte", *_TINY, "--lr", "inf", "--out", "{tmp}/lr-inf"),
         ("the run stopped", "step", "--lr")),
    Case("eval-task-mismatch", ("eval", "--checkpoint", "{run}/best", "--task", "mrpc", "--data-dir", "{data}",
                                "--out", "{tmp}/o"), ("'rte'", "'mrpc'", "--allow-task-mismatch")),
    Case("resume-other-settings", ("train", "--task", "rte", *_TINY, "--train-size", "8", "--out", "{run}"),
         ("{run}", "train_size", "--restart")),
]
# ------------------------------------------------------------------------------------------------

ALL = CASES + RELIABILITY_CASES


def _damage(checkpoint: Path, size) -> None:
    """Cut every orbax data file of ``checkpoint`` to ``size(old size)`` bytes."""
    files = [f for f in (checkpoint / "params").rglob("*") if f.is_file() and f.parent.name == "d"]
    assert files, "no orbax data files found to damage"
    for f in files:
        with open(f, "r+b") as fh:
            fh.truncate(size(f.stat().st_size))


@pytest.fixture(scope="module")
def paths(tiny_runs, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bad_input")
    weightless = root / "weightless"  # what transformers 4.57's BERT tokenizer met with a TypeError
    weightless.mkdir()
    shutil.copy(tiny_runs.model / "config.json", weightless / "config.json")
    latin1 = root / "latin1"  # line 3 of rte/train.jsonl written in Latin-1
    shutil.copytree(tiny_runs.data / "rte", latin1 / "rte")
    lines = (latin1 / "rte" / "train.jsonl").read_bytes().splitlines(keepends=True)
    lines[2] = b'{"sentence1": "caf\xe9", "sentence2": "x", "label": 0, "idx": 2}\n'
    (latin1 / "rte" / "train.jsonl").write_bytes(b"".join(lines))
    plain = root / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("not a checkpoint")
    a_file = root / "a-file"
    a_file.write_text("not a folder")
    unfinished = root / "unfinished"
    (unfinished / "checkpoints" / "4").mkdir(parents=True)
    truncated, emptied = root / "truncated", root / "emptied"
    shutil.copytree(tiny_runs.rte / "best", truncated)
    shutil.copytree(tiny_runs.rte / "best", emptied)
    _damage(truncated, lambda n: n // 2)
    _damage(emptied, lambda n: 0)
    merged = root / "merged"  # what `jadapt merge` writes: the averaged adapters, no head
    from jadapt.checkpoint import load_adapter, save_adapter
    from jadapt.merge import merge_adapters, unify_names

    (a, meta), (b, _) = load_adapter(tiny_runs.rte), load_adapter(tiny_runs.mrpc)
    adapters = unify_names([{"encoder": x["encoder"]} for x in (a, b)])
    save_adapter(merged, merge_adapters(adapters, "average"), {**meta, "head": None})
    names = ("tmp", "run", "model", "data", "weightless", "latin1", "plain", "unfinished", "truncated", "emptied",
             "merged", "file")
    values = (root / "tmp", tiny_runs.rte, tiny_runs.model, tiny_runs.data, weightless, latin1, plain, unfinished,
              truncated, emptied, merged, a_file)
    return {n: str(v) for n, v in zip(names, values)}


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_bad_input_is_one_line(case: Case, paths, capfd, monkeypatch):
    argv = [a.format(**paths) for a in case.argv]
    monkeypatch.setenv("JADAPT_ALLOCATOR", "system")
    for name, value in case.env:
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)
    if case.subprocess:
        p = subprocess.run([sys.executable, "-m", "jadapt.cli", *argv], capture_output=True, text=True, timeout=300)
        rc, out, err = p.returncode, p.stdout, p.stderr
    else:
        from jadapt.cli import main

        capfd.readouterr()
        rc = main(argv)
        out, err = capfd.readouterr()
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = err.splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("jadapt: error: "), err
    for want in case.expect:
        assert want.format(**paths) in lines[0], lines[0]
    assert out == "", out
