"""Checkpoint formats: the real stories260K, round trips, and the errors bad files get."""

import io
import json
import pickle
import struct

import pytest
import torch

from llama2_et.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_llama2c_bin,
    save_llama2c_bin,
    save_meta,
    to_hf,
)
from llama2_et.model import Transformer
from llama2_et.preproc import Preproc


def logits(model, n=16):
    tokens = torch.arange(n)[None] % model.args.vocab_size
    with torch.no_grad():
        return model(tokens, *Preproc(model.args).full(n))


def test_stories260k_header(data_dir):
    args, state = read_llama2c_bin(data_dir / "stories260K.bin")
    assert (args.dim, args.ffn_hidden_dim, args.n_layers, args.n_heads, args.kv_heads) == (64, 172, 5, 8, 4)
    assert (args.vocab_size, args.max_seq_len, args.tie_embeddings) == (512, 512, True)
    assert "output.weight" not in state


def test_resaved_bin_is_byte_identical_to_karpathys(tmp_path, data_dir, stories260k):
    out = save_llama2c_bin(stories260k, tmp_path / "re.bin")
    assert out.read_bytes() == (data_dir / "stories260K.bin").read_bytes()
    assert torch.equal(logits(load_checkpoint(out)), logits(stories260k))


def test_untied_classifier_round_trip(tmp_path, stories260k):
    untied = Transformer(stories260k.args.replace(tie_embeddings=False))
    state = stories260k.state_dict()
    untied.load_state_dict(state | {"output.weight": state["tok_embeddings.weight"] * 0.5})
    path = save_llama2c_bin(untied, tmp_path / "untied.bin")
    assert struct.unpack_from("7i", path.read_bytes())[5] == -512  # negative vocab = untied
    again = load_checkpoint(path)
    assert not again.args.tie_embeddings
    assert torch.equal(logits(again), logits(untied))


def test_meta_round_trip(tmp_path, stories260k):
    folder = save_meta(stories260k, tmp_path / "meta")
    params = json.loads((folder / "params.json").read_text())
    assert params["hidden_dim"] == 172 and params["n_kv_heads"] == 4
    assert torch.equal(logits(load_checkpoint(folder)), logits(stories260k))
    assert torch.equal(logits(load_checkpoint(folder / "consolidated.00.pth")), logits(stories260k))


def test_hf_folder_round_trip(tmp_path, stories260k):
    from safetensors.torch import save_file

    state, config = to_hf(stories260k)
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(state, tmp_path / "model.safetensors")
    assert (logits(load_checkpoint(tmp_path)) - logits(stories260k)).abs().max() == 0


def test_llama2c_train_pt_with_compiled_prefixes(tmp_path, stories260k):
    a = stories260k.args
    state = {f"_orig_mod.{k}": v for k, v in stories260k.state_dict().items()}
    model_args = dict(dim=a.dim, n_layers=a.n_layers, n_heads=a.n_heads, n_kv_heads=a.kv_heads)
    model_args |= dict(vocab_size=a.vocab_size, multiple_of=4, max_seq_len=a.max_seq_len, dropout=0.0)
    torch.save(
        {"model": state, "model_args": model_args, "iter_num": 10, "config": {"lr": 1e-3}},
        tmp_path / "ckpt.pt",
    )
    assert torch.equal(logits(load_checkpoint(tmp_path / "ckpt.pt")), logits(stories260k))


def test_truncated_bin_names_the_sizes(tmp_path, data_dir):
    data = (data_dir / "stories260K.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.*1,056,540 bytes but the file has 528,270"):
        load_checkpoint(tmp_path / "cut.bin")
    (tmp_path / "tiny.bin").write_bytes(data[:10])
    with pytest.raises(CheckpointError, match="too short"):
        load_checkpoint(tmp_path / "tiny.bin")


def test_header_that_does_not_match_the_weights(tmp_path, data_dir):
    data = bytearray((data_dir / "stories260K.bin").read_bytes())
    struct.pack_into("i", data, 8, 6)  # n_layers 5 -> 6
    (tmp_path / "bad.bin").write_bytes(data)
    with pytest.raises(CheckpointError, match="n_layers=6.*implies"):
        load_checkpoint(tmp_path / "bad.bin")
    struct.pack_into("i", data, 12, 7)  # n_heads 8 -> 7: dim 64 is not divisible
    (tmp_path / "bad.bin").write_bytes(data)
    with pytest.raises(CheckpointError, match="valid llama2.c header"):
        load_checkpoint(tmp_path / "bad.bin")


class Payload:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_pt_with_executable_pickle_is_refused(tmp_path, capsys):
    buf = io.BytesIO()
    torch.save({"model": {}, "model_args": Payload()}, buf)
    (tmp_path / "evil.pt").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="arbitrary code"):
        load_checkpoint(tmp_path / "evil.pt")
    assert "this ran" not in capsys.readouterr().out
    assert pickle  # the payload above is a real pickle reduce hook


def test_wrong_shapes_and_formats(tmp_path, stories260k):
    folder = save_meta(stories260k, tmp_path / "meta")
    params = json.loads((folder / "params.json").read_text())
    (folder / "params.json").write_text(json.dumps(params | {"hidden_dim": 100}))
    with pytest.raises(CheckpointError, match=r"w1.weight: file \(172, 64\) vs args \(100, 64\)"):
        load_checkpoint(folder)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.bin")
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        load_checkpoint(tmp_path / "x.gguf")
