"""Training: schedule, optimizer groups, resume == uninterrupted, torchrun DDP == accumulation, bad inputs."""

import dataclasses
import functools
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llama2_et.__main__ import main
from llama2_et.checkpoint import CheckpointError, load_checkpoint
from llama2_et.config import ModelArgs
from llama2_et.data import SAMPLE, bigram_entropy, open_shard, read_stories, unigram_entropy
from llama2_et.model import Transformer
from llama2_et.optimizer import lr_at, make_optimizer
from llama2_et.train import init_weights, train
from llama2_et.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stories_file(data_dir, tmp_path_factory):
    """The first 200 real stories, in the published .txt format (fast to pretokenize)."""
    path = tmp_path_factory.mktemp("stories") / "stories.txt"
    path.write_text("".join(f"{s}\n<|endoftext|>\n" for s in read_stories(data_dir / SAMPLE)[:200]))
    return path


@pytest.fixture
def tiny(tmp_path, stories_file, data_dir):
    """A config of a few steps on a 2-layer model (GQA: 2 query heads, 1 key/value head)."""

    def make(name: str, model: dict | None = None, **changes) -> TrainConfig:
        args = ModelArgs(
            dim=16, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=512, multiple_of=8, max_seq_len=32
        )
        cfg = TrainConfig(
            data=str(stories_file),
            out_dir=str(tmp_path / name),
            tokenizer=str(data_dir / "tok512.model"),
            model=args.replace(**(model or {})),
            batch_size=4,
            max_steps=6,
            warmup_steps=2,
            learning_rate=1e-2,
            min_lr=1e-3,
            eval_interval=2,
            eval_windows=8,
        )
        return dataclasses.replace(cfg, **changes)

    return make


def flags(cfg: TrainConfig) -> list[str]:
    """The command-line flags that give this config (its model's fields are flags too)."""
    out = []
    for obj, f in [(cfg.model, f) for f in dataclasses.fields(cfg.model)] + [
        (cfg, f) for f in dataclasses.fields(cfg) if f.name != "model"
    ]:
        value, flag = getattr(obj, f.name), "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            out += [flag, str(value)]
    return out


def test_schedule_matches_torch_warmup_then_cosine():
    cfg = TrainConfig(max_steps=50, warmup_steps=10, learning_rate=1e-2, min_lr=1e-3)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.learning_rate)
    warmup = torch.optim.lr_scheduler.LinearLR(opt, 1 / cfg.warmup_steps, 1.0, cfg.warmup_steps - 1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.max_steps - cfg.warmup_steps, cfg.min_lr)
    schedule = torch.optim.lr_scheduler.SequentialLR(opt, [warmup, cosine], milestones=[cfg.warmup_steps])
    reference = []
    for _ in range(cfg.max_steps):
        reference.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert [lr_at(s, cfg) for s in range(cfg.max_steps)] == pytest.approx(reference, rel=1e-6)
    assert lr_at(cfg.max_steps, cfg) == pytest.approx(cfg.min_lr)


def test_weight_decay_on_matrices_only_and_tied_weights_once():
    model = Transformer(ModelArgs(dim=16, n_layers=2, n_heads=2, vocab_size=64, max_seq_len=8))
    decay, no_decay = make_optimizer(model, TrainConfig()).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert {id(p) for p in decay["params"] + no_decay["params"]} == {id(p) for p in model.parameters()}
    assert sum(p is model.tok_embeddings.weight for p in decay["params"]) == 1  # also the classifier


def test_initial_loss_is_uniform_over_the_vocabulary():
    args = ModelArgs(dim=64, n_layers=4, n_heads=4, vocab_size=512, max_seq_len=64)
    torch.manual_seed(0)
    model = Transformer(args)
    init_weights(model)
    tokens = torch.randint(0, 512, (4, 65))
    with torch.no_grad():
        logits = model(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    assert loss.item() == pytest.approx(math.log(512), abs=0.05)


@pytest.mark.slow  # three training runs
def test_resume_continues_the_uninterrupted_run_exactly(tiny, capsys):
    """With dropout on, so the restored RNG state matters too."""
    tiny = functools.partial(tiny, model={"dropout": 0.1})
    assert main(["train", *flags(tiny("straight"))]) == 0  # the CLI: trains, reloads model.bin, samples
    out = capsys.readouterr().out
    assert "greedy sample from" in out and "Once upon a time" in out
    straight = torch.load(f"{tiny('straight').out_dir}/ckpt.pt", weights_only=True)

    first = train(tiny("resumed", stop_at_step=3), progress=False)
    assert first.history["step"] == [0, 1, 2]
    second = train(tiny("resumed", resume=True), progress=False)
    assert second.history["step"] == list(range(6))
    assert second.history["train_loss"] == straight["history"]["train_loss"]  # bit for bit
    resumed_val = dict(zip(second.history["val_step"], second.history["val_loss"], strict=True))
    assert {s: resumed_val[s] for s in (2, 4, 6)} == dict(
        zip(straight["history"]["val_step"], straight["history"]["val_loss"], strict=True)
    )
    model = load_checkpoint(second.checkpoint)  # the core loader reads the training checkpoint
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, straight["model"][name]), name
    assert straight["history"]["val_loss"][-1] < straight["history"]["val_loss"][0] < math.log(512)

    from_bin = load_checkpoint(second.llama2c_bin)
    tokens = torch.arange(32)[None] * 7 % 512
    with torch.no_grad():
        expected = model(tokens)
        assert torch.equal(from_bin(tokens), expected)
    assert second.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    val_tokens = np.concatenate([open_shard(s) for s in second.data.val_shards])
    assert (second.unigram_entropy, second.bigram_entropy) == (
        unigram_entropy(val_tokens),
        bigram_entropy(val_tokens),
    )  # the references the log and the plot show are those of the held-out tokens

    # a run without --resume never silently replaces a trained model; --overwrite does, on purpose
    kept = Path(second.checkpoint).read_bytes(), Path(second.llama2c_bin).read_bytes()
    with pytest.raises(
        ValueError, match=r"already holds a trained model \(ckpt.pt, model.bin\); pass --resume"
    ):
        train(tiny("resumed"), progress=False)
    assert (Path(second.checkpoint).read_bytes(), Path(second.llama2c_bin).read_bytes()) == kept
    replaced = train(tiny("resumed", overwrite=True, stop_at_step=1), progress=False)
    assert torch.load(replaced.checkpoint, weights_only=True)["iter_num"] == 1

    with pytest.raises(ValueError, match="other model settings: ModelArgs"):
        train(tiny("resumed", resume=True, model={"dropout": 0.1, "dim": 32}), progress=False)
    # a new 400-piece tokenizer (trained on the same stories) cannot continue a 512-token model
    with pytest.raises(ValueError, match="vocab_size 512 vs 400 \\(tokenizer/model mismatch\\)"):
        train(
            tiny("resumed", resume=True, tokenizer=None, model={"dropout": 0.1, "vocab_size": 400}),
            progress=False,
        )


@pytest.mark.slow  # two torchrun processes: 15 s or more
def test_torchrun_two_processes_equal_one_process_accumulating_two(tiny):
    ddp = tiny("ddp", max_steps=4, grad_accum=1)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run = subprocess.run(
        [*command, "-m", "llama2_et", "train", *flags(ddp)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    two = torch.load(f"{ddp.out_dir}/ckpt.pt", weights_only=True)
    assert len(two["rng_states"]) == 2
    one = train(tiny("accumulate", max_steps=4, grad_accum=2), progress=False)
    assert two["history"]["train_loss"] == pytest.approx(one.history["train_loss"], rel=1e-5)
    assert two["history"]["val_loss"] == pytest.approx(one.history["val_loss"], rel=1e-5)
    single = load_checkpoint(one.checkpoint).state_dict()
    for name, tensor in two["model"].items():
        torch.testing.assert_close(tensor, single[name], rtol=1e-4, atol=1e-5)

    empty = Path(ddp.out_dir) / "empty.txt"
    empty.write_text("")
    bad = dataclasses.replace(ddp, data=str(empty), out_dir=str(Path(ddp.out_dir) / "bad"))
    run = subprocess.run(
        [*command, "-m", "llama2_et", "train", *flags(bad)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # rank 1 must not wait forever for rank 0's data
    )
    assert run.returncode != 0 and "error: no stories in" in run.stderr
    assert "error: rank 0 could not prepare the data" in run.stderr


def test_corrupt_or_missing_checkpoint_errors_say_so(tiny, tmp_path):
    cfg = tiny("broken", resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        train(cfg, progress=False)
    os.makedirs(cfg.out_dir, exist_ok=True)
    path = f"{cfg.out_dir}/ckpt.pt"
    with open(path, "wb") as f:
        f.write(os.urandom(3000))
    with pytest.raises(CheckpointError, match="ckpt.pt is corrupt"):
        train(cfg, progress=False)
    torch.save({"model": {}, "iter_num": 3}, path)
    with pytest.raises(CheckpointError, match="missing \\['model_args'"):
        train(cfg, progress=False)
    torch.save({"model": {"w": torch.zeros(1000)}, "padding": torch.ones(1000)}, path)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CheckpointError, match="corrupt"):
        train(cfg, progress=False)


def test_vocab_mismatch_and_bad_data_get_clear_errors(tiny, tmp_path, capsys):
    with pytest.raises(
        ValueError, match="has 512 tokens but the model has 256 \\(vocab_size\\); pass --vocab-size 512"
    ):
        train(tiny("vocab", model={"vocab_size": 256}), progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="no stories in .*empty.txt"):
        train(tiny("empty", data=str(empty)), progress=False)
    assert main(["train", "--data", str(tmp_path / "missing.txt"), "--out-dir", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error: stories") and "missing.txt" in err
    with pytest.raises(ValueError, match="warmup_steps=10 must be in"):
        TrainConfig(max_steps=10, warmup_steps=10)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-seq-len", "0"], "max_seq_len must be positive, got 0"),
        (["--max-seq-len", "-8"], "max_seq_len must be positive, got -8"),
        (["--seed", str(10**23)], "seed must be an integer in 0..2\\*\\*64-1, got 1000"),
        (["--seed", "-1"], "seed must be an integer in 0..2\\*\\*64-1, got -1"),
        (
            ["--device", "cuda"],
            "device 'cuda': this PyTorch .* (is a CPU-only build|sees no GPU); use --device cpu",
        ),
        (["--device", "gpu0"], "device 'gpu0' is not a device name; use cpu or cuda"),
        (["--resume", "--overwrite"], "resume continues the checkpoint in out_dir and overwrite replaces it"),
    ],
)
def test_bad_train_flags_are_one_line_errors(tmp_path, capsys, extra, message):
    if extra[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is valid here")
    assert main(["train", "--out-dir", str(tmp_path / "out"), *extra]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and re.match(f"error: {message}", err), err
    assert not (tmp_path / "out").exists()  # refused before preparing any data


def test_train_out_dir_that_is_a_file_and_non_utf8_stories(tmp_path, capsys, tiny):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert main(["train", "--out-dir", str(a_file)]) == 1
    assert (
        capsys.readouterr().err == f"error: {a_file} is a file, not a folder; choose another output folder\n"
    )
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Once upon a time, Zoë sang.\n<|endoftext|>\n".encode("latin1"))
    with pytest.raises(ValueError, match=f"{latin1} is not UTF-8 text: byte 20 is 0xeb"):
        train(tiny("latin1", data=str(latin1)), progress=False)
