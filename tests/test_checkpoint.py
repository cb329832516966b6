"""Checkpoint formats: the real stories260K, round trips, and the errors bad files get."""

import io
import json
import os
import random
import re
import resource
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llama2_et.checkpoint import CheckpointError, load_checkpoint
from llama2_et.checkpoint.hf import to_hf
from llama2_et.checkpoint.llama2c import llama2c_bin_bytes, read_llama2c_bin, save_llama2c_bin
from llama2_et.checkpoint.meta import save_meta
from llama2_et.model import Transformer


def logits(model, n=16):
    tokens = torch.arange(n)[None] % model.args.vocab_size
    with torch.no_grad():
        return model(tokens)


REPO = Path(__file__).resolve().parents[1]


def test_stories260k_header(data_dir):
    path = data_dir / "stories260K.bin"
    header = struct.unpack_from("7i", path.read_bytes())
    args, state = read_llama2c_bin(path)
    assert (args.dim, args.ffn_hidden_dim, args.n_layers, args.n_heads, args.kv_heads) == header[:5]
    assert (args.vocab_size, args.max_seq_len, args.tie_embeddings) == (header[5], header[6], header[5] > 0)
    assert "output.weight" not in state
    assert llama2c_bin_bytes(args) == path.stat().st_size  # the size formula, on the real file
    freqs = 2 * args.max_seq_len * args.head_dim // 2  # the stored RoPE tables, which we drop
    assert 28 + 4 * (sum(t.numel() for t in state.values()) + freqs) == path.stat().st_size


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


def test_meta_round_trip(tmp_path, data_dir, stories260k):
    folder = save_meta(stories260k, tmp_path / "meta")
    params = json.loads((folder / "params.json").read_text())
    header = struct.unpack_from("7i", (data_dir / "stories260K.bin").read_bytes())
    assert (params["hidden_dim"], params["n_kv_heads"]) == (header[1], header[4])  # as llama2.c's header
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
    with pytest.raises(
        CheckpointError, match=f"truncated.*{len(data):,} bytes but the file has {len(data) // 2:,}"
    ):
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
    for seed in range(20):  # refused too, but called corrupt, not unsafe
        (tmp_path / "noise.pt").write_bytes(random.Random(seed).randbytes(3000))
        with pytest.raises(CheckpointError, match="noise.pt is corrupt or not a PyTorch checkpoint"):
            load_checkpoint(tmp_path / "noise.pt")


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


def limited_cli(*args, memory=2 << 30):
    """python -m llama2_et ... in a process whose address space is capped (a runaway allocation dies)."""

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "llama2_et", *args], capture_output=True, text=True, env=env, preexec_fn=cap
    )


@pytest.mark.slow  # fresh `python -m llama2_et` processes
@pytest.mark.parametrize(
    "field, value, message",
    [
        (2, 10**9, r"header \(.*n_layers=1000000000.*\) implies [\d,]+ bytes but the file has 1,056,540"),
        (3, -8, "not start with a valid llama2.c header .*n_heads=-8.*n_heads must be positive"),
        (0, 0, "dim must be positive"),
    ],
)
def test_hostile_header_is_an_error_not_an_allocation(tmp_path, data_dir, field, value, message):
    data = bytearray((data_dir / "stories260K.bin").read_bytes())
    struct.pack_into("i", data, 4 * field, value)
    (tmp_path / "bad.bin").write_bytes(data)
    r = limited_cli("info", "--checkpoint", str(tmp_path / "bad.bin"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("error: ")
    assert re.search(message, r.stderr), r.stderr


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, data_dir, stories260k):
    data = bytearray((data_dir / "stories260K.bin").read_bytes())
    data[28:] = struct.pack("<f", float("nan")) * ((len(data) - 28) // 4)  # an all-NaN checkpoint
    (tmp_path / "nan.bin").write_bytes(data)
    with pytest.raises(CheckpointError, match=r"tensor tok_embeddings.weight has 32,768 NaN"):
        load_checkpoint(tmp_path / "nan.bin")
    one = {k: v.clone() for k, v in stories260k.state_dict().items()}
    one["layers.3.feed_forward.w2.weight"][5, 7] = float("inf")
    torch.save({"model_args": stories260k.args.to_dict(), "model": one}, tmp_path / "inf.pt")
    with pytest.raises(CheckpointError, match=r"inf.pt: tensor layers.3.feed_forward.w2.weight has 1 NaN"):
        load_checkpoint(tmp_path / "inf.pt")


def test_malformed_meta_files_name_the_file_and_the_problem(tmp_path, stories260k):
    folder = save_meta(stories260k, tmp_path / "meta")
    params_file, weights = folder / "params.json", folder / "consolidated.00.pth"
    params = json.loads(params_file.read_text())
    params_file.write_text(json.dumps(params | {"dim": "64"}))
    with pytest.raises(
        CheckpointError, match=r"params.json: bad hyper-parameter: dim must be an integer, got '64'"
    ):
        load_checkpoint(folder)
    params_file.write_text(json.dumps(params)[:-5])
    with pytest.raises(CheckpointError, match=r"meta/params.json is not valid JSON \(.*line 1"):
        load_checkpoint(folder)
    params_file.write_text(json.dumps(params))
    state = torch.load(weights, weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "tok_embeddings.weight"}, weights)
    with pytest.raises(CheckpointError, match="consolidated.00.pth has no tensor 'tok_embeddings.weight'"):
        load_checkpoint(folder)
    torch.save(state["norm.weight"], weights)
    with pytest.raises(CheckpointError, match="consolidated.00.pth holds Tensor, not a state dict"):
        load_checkpoint(folder)


def test_malformed_pt_and_hf_files_name_the_problem(tmp_path, stories260k):
    torch.save({"model_args": [64, 5], "model": stories260k.state_dict()}, tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list.pt: model_args is a list, not a dict"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"model_args": stories260k.args.to_dict(), "model": [1, 2]}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad.pt\['model'\] holds list, not a state dict"):
        load_checkpoint(tmp_path / "bad.pt")
    state, config = to_hf(stories260k)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "hidden_size"}))
    with pytest.raises(
        CheckpointError, match="config.json has no hidden_size: it is not a Llama config.json"
    ):
        load_checkpoint(hf)
    (hf / "config.json").write_text(json.dumps(config))
    (hf / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="model.safetensors is not a readable safetensors file"):
        load_checkpoint(hf)
