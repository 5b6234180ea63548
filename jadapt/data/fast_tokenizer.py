"""BERT WordPiece tokenisation straight from ``tokenizer.json``, without importing transformers.

Why: ``import transformers`` takes seconds and, where torch is installed, imports torch with
its resident memory -- paid by every ``jadapt train`` / ``eval`` / ``merge`` only to
tokenise. The Rust ``tokenizers`` library that transformers' fast tokenizers wrap reads the
same file; :func:`open_fast_tokenizer` uses it where the folder's files say exactly what
transformers would do, and returns None otherwise (the caller then uses ``AutoTokenizer``):

- ``tokenizer.json`` holds a WordPiece model with ``BertNormalizer`` / ``BertPreTokenizer``
  and a ``[CLS] A [SEP] (B [SEP])`` template (what BERT-family checkpoints ship);
- ``tokenizer_config.json`` names a BERT tokenizer class and its ``do_lower_case`` /
  ``strip_accents`` / ``tokenize_chinese_chars`` agree with the normaliser (transformers
  rebuilds the normaliser from them when they disagree);
- padding is on the right, and no tokens beyond the file's own are configured;

or ``tokenizer_config.json`` names ``PreTrainedTokenizerFast``, the class that runs
``tokenizer.json`` as written whatever its pipeline (e.g. the XLM-R Unigram folders that
``jadapt convert`` writes), under the same padding and added-token conditions.

Tests compare every id, type id and length with ``AutoTokenizer`` on real rows, single texts
and pairs, with truncation, under transformers 4.57 and 5.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from jadapt.folders import read_folder_json

_BERT_CLASSES = {"BertTokenizer", "BertTokenizerFast"}


class FastTokenizer:
    """The slice of a transformers tokenizer that :func:`jadapt.data.encode` calls."""

    padding_side = "right"

    def __init__(self, backend: Any, *, special: dict[str, str], model_max_length: int | None, path: str):
        self._backend = backend
        self.pad_token = special.get("pad_token", "[PAD]")
        ids = {k: backend.token_to_id(v) for k, v in special.items()}
        self.pad_token_id = ids.get("pad_token") if ids.get("pad_token") is not None else 0
        self.cls_token_id, self.sep_token_id = ids.get("cls_token"), ids.get("sep_token")
        self.unk_token_id, self.mask_token_id = ids.get("unk_token"), ids.get("mask_token")
        self.model_max_length = model_max_length if model_max_length is not None else int(1e30)
        self.name_or_path = path
        self.vocab_size = backend.get_vocab_size()

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def __call__(self, text: Sequence[str], text_pair: Sequence[str] | None = None, *, truncation: bool = True,
                 max_length: int | None = None, padding: bool = False, return_attention_mask: bool = False,
                 return_token_type_ids: bool = True) -> dict:
        """Batch-encode ``text`` (and ``text_pair``): ``{"input_ids", "token_type_ids"}`` lists.

        Truncation is transformers' ``longest_first``; no padding (``encode`` pads)."""
        if padding or return_attention_mask:
            raise ValueError("FastTokenizer does not pad; jadapt.data.encode pads into fixed arrays")
        tok = self._backend
        tok.no_padding()
        if truncation and max_length is not None:
            tok.enable_truncation(int(max_length), strategy="longest_first")
        else:
            tok.no_truncation()
        inputs = list(text) if text_pair is None else list(zip(text, text_pair))
        encs = tok.encode_batch(inputs, add_special_tokens=True)
        out = {"input_ids": [e.ids for e in encs]}
        if return_token_type_ids:
            out["token_type_ids"] = [e.type_ids for e in encs]
        return out


def _is_plain_bert(spec: dict, config: dict, model_type: str | None) -> bool:
    """True where ``tokenizer.json`` is a BERT WordPiece pipeline that ``tokenizer_config`` agrees with.

    ``model_type`` (from ``config.json``) is what ``AutoTokenizer`` goes by when
    ``tokenizer_config`` names no class."""
    norm, pre, post, model = (spec.get(k) or {} for k in ("normalizer", "pre_tokenizer", "post_processor", "model"))
    if model.get("type") != "WordPiece" or norm.get("type") != "BertNormalizer":
        return False
    if pre.get("type") != "BertPreTokenizer" or post.get("type") not in ("TemplateProcessing", "BertProcessing"):
        return False
    if config.get("tokenizer_class", "BertTokenizer" if model_type == "bert" else None) not in _BERT_CLASSES:
        return False
    expect = {"lowercase": config.get("do_lower_case", True), "strip_accents": config.get("strip_accents"),
              "handle_chinese_chars": config.get("tokenize_chinese_chars", True)}
    if any(norm.get(k) != v for k, v in expect.items()):
        return False
    return _file_rules(spec, config)


def _is_verbatim(spec: dict, config: dict) -> bool:
    """True where transformers would run ``tokenizer.json`` unchanged (``PreTrainedTokenizerFast``)."""
    return config.get("tokenizer_class") == "PreTrainedTokenizerFast" and _file_rules(spec, config)


def _file_rules(spec: dict, config: dict) -> bool:
    """Right padding and truncation, and no tokens beyond ``tokenizer.json``'s own (tokens added
    in ``tokenizer_config`` but absent from the file would change the vocabulary)."""
    if config.get("padding_side", "right") != "right" or config.get("truncation_side", "right") != "right":
        return False
    known = {t.get("content") for t in spec.get("added_tokens", [])}
    decoder = config.get("added_tokens_decoder") or {}
    return all((v or {}).get("content") in known for v in decoder.values())


def open_fast_tokenizer(path: str | os.PathLike) -> FastTokenizer | None:
    """A :class:`FastTokenizer` for the model folder ``path``, or None where transformers is needed."""
    folder = Path(path)
    spec = read_folder_json(folder, "tokenizer.json")
    config = read_folder_json(folder, "tokenizer_config.json") or {}
    model_type = (read_folder_json(folder, "config.json") or {}).get("model_type")
    if spec is None or not (_is_plain_bert(spec, config, model_type) or _is_verbatim(spec, config)):
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    special_map = read_folder_json(folder, "special_tokens_map.json") or {}
    special = {}
    for key, default in (("pad_token", "[PAD]"), ("cls_token", "[CLS]"), ("sep_token", "[SEP]"),
                         ("unk_token", "[UNK]"), ("mask_token", "[MASK]")):
        tok = config.get(key, special_map.get(key, default))
        tok = tok.get("content") if isinstance(tok, dict) else tok
        if tok is not None:
            special[key] = tok
    limit = config.get("model_max_length")
    limit = int(limit) if isinstance(limit, (int, float)) and limit < 10**9 else None
    return FastTokenizer(backend, special=special, model_max_length=limit, path=str(folder))
