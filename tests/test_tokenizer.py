"""The tokenizer, and its llama2.c tokenizer.bin export checked byte for byte against llama2.c's."""

import pytest

from llama2_et.tokenizer import Tokenizer, export_llama2c


@pytest.mark.parametrize("name", ["tok512", "tokenizer"])
def test_export_equals_llama2c_tokenizer_bin(tmp_path, data_dir, name):
    out = export_llama2c(data_dir / f"{name}.model", tmp_path / f"{name}.bin")
    assert out.read_bytes() == (data_dir / f"{name}.bin").read_bytes()


def test_encode_decode(tok512, data_dir):
    ids = tok512.encode("Once upon a time", bos=True, eos=True)
    assert ids[0] == tok512.bos_id == 1 and ids[-1] == tok512.eos_id == 2
    assert tok512.decode(ids) == "Once upon a time"
    assert tok512.vocab_size == 512
    text = "Lily's café: 12 €, 猫 🐱"  # byte fallback round-trips anything
    assert tok512.decode(tok512.encode(text)) == text
    assert tok512.piece(ids[1]).startswith("\u2581")
    llama = Tokenizer(data_dir / "tokenizer.model")
    assert llama.vocab_size == 32000


def test_bad_tokenizer_files(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError):
        Tokenizer(tmp_path / "missing.model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Tokenizer(data_dir / "tok512.bin")
