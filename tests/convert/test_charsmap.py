"""The precompiled charsmap compiler against its own reader and the ``tokenizers`` library."""
from __future__ import annotations

import numpy as np
import pytest

from jadapt.convert.charsmap import charsmap_lookup, compile_charsmap


def _table(seed=0, n=600):
    rng = np.random.default_rng(seed)
    cps = set(rng.integers(1, 0x3000, n).tolist()) | set(rng.integers(0x10000, 0x1F000, 40).tolist())
    out = {}
    for cp in sorted(cps):
        k = int(rng.integers(0, 4))
        out[cp] = tuple(int(c) for c in rng.integers(0x20, 0x2FFF, k))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_every_key_maps_to_its_replacement(seed):
    table = _table(seed)
    cm = compile_charsmap(table)
    for cp, out in table.items():
        assert charsmap_lookup(cm, chr(cp)) == "".join(map(chr, out)), hex(cp)
    absent = next(c for c in range(1, 0x3000) if c not in table)
    assert charsmap_lookup(cm, chr(absent)) is None


def test_tokenizers_precompiled_reads_the_blob():
    from tokenizers import normalizers

    table = _table(2, n=300)
    norm = normalizers.Precompiled(compile_charsmap(table))
    for cp, out in list(table.items())[:200]:
        assert norm.normalize_str(chr(cp)) == "".join(map(chr, out)), hex(cp)
    assert norm.normalize_str("plain ascii") == "".join(
        "".join(map(chr, table[ord(c)])) if ord(c) in table else c for c in "plain ascii")


def test_nul_key_is_refused():
    with pytest.raises(ValueError, match="NUL"):
        compile_charsmap({0: (0x20,)})
