"""The device pack: what a grid chunk on a GPU machine carries (encoder + task data), and that
a pack has one identity wherever it lies, so chunks made there and here merge."""
from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import device_pack
from experiments.study import Tuner
from tests.conftest import write_synthetic_task


def test_pack_is_an_fp16_twin_with_its_own_identity(tiny_model_dir, tmp_path):
    from jadapt.models.hf import read_state_dict

    data = tmp_path / "data"
    write_synthetic_task(data, "rte", n_train=40, n_dev=10, seed=0)
    out = device_pack.main(["--tasks", "rte", "--model", str(tiny_model_dir), "--data-dir", str(data),
                            "--out", str(tmp_path / "pack"), "--name", "tiny-bert"])
    assert out["total"] < device_pack.LIMIT
    packed, orig = read_state_dict(tmp_path / "pack" / "model"), read_state_dict(tiny_model_dir)
    assert set(packed) == set(orig)
    for k, v in orig.items():
        assert packed[k].dtype == np.float16  # (the loader's convert_state_dict casts to fp32)
        np.testing.assert_allclose(packed[k].astype(np.float32), v, rtol=2 ** -10, atol=1e-7)
    assert any(not np.array_equal(packed[k].astype(np.float32), v) for k, v in orig.items())  # another encoder
    assert (tmp_path / "pack" / "data" / "rte" / "train.jsonl").is_file()
    # the same identity in run keys wherever the pack lies
    moved = tmp_path / "elsewhere"
    (tmp_path / "pack").rename(moved)
    tuner = Tuner(str(moved / "model"), max_length=32, data_dir=str(moved / "data"))
    assert tuner.model_name == "tiny-bert (fp16-rounded weights, experiments.device_pack)"
    assert Tuner(str(tiny_model_dir), max_length=32).model_name == str(tiny_model_dir)
    assert len(tuner.encoded("rte", "train")["labels"]) == 40


def test_pack_refuses_a_missing_task_folder(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "data"
    write_synthetic_task(data, "rte", n_train=20, n_dev=10, seed=0)
    with pytest.raises(SystemExit):
        device_pack.main(["--tasks", "rte,mrpc", "--model", str(tiny_model_dir), "--data-dir", str(data),
                          "--out", str(tmp_path / "pack")])
    assert "task mrpc: no folder" in capsys.readouterr().err


def test_device_study_script_refuses_without_a_pack(tmp_path):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "device_study.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    r = subprocess.run(["bash", str(script), "1", "experiments.effectiveness"], cwd=tmp_path, capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path)})
    assert r.returncode == 2 and "no .carry pack" in r.stdout
