"""The command line as a user runs it: python -m llama2_et ...; every bad input is one `error:` line."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llama2_et import __main__ as cli_module
from llama2_et.__main__ import main
from llama2_et.checkpoint.llama2c import read_llama2c_bin
from llama2_et.checkpoint.meta import save_meta
from llama2_et.config import ModelArgs
from llama2_et.generate import EagerDecoder, Sampler, generate_text
from llama2_et.model import Transformer

REPO = Path(__file__).resolve().parents[1]


def cli(*args, prefix=()):
    """Run the CLI in a fresh process (args may be bytes: arguments that are not UTF-8)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [*prefix, sys.executable, "-m", "llama2_et", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def in_private_mount(script: str) -> subprocess.CompletedProcess:
    """A shell script in a new user + mount namespace (root there: it may mount a tmpfs)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(["unshare", "-rm", "sh", "-euc", script], capture_output=True, text=True, env=env)


def one_error_line(stderr: str) -> str:
    """The single `error: ...` line a failed command prints (no traceback, no usage block)."""
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: "), stderr
    return stderr


@pytest.mark.slow  # fresh `python -m llama2_et` processes
def test_generate_prints_only_the_text(stories260k, tok512):
    expected = "".join(generate_text(EagerDecoder(stories260k), tok512, "Once upon a time", 50, Sampler(0.0)))
    r = cli("generate", "--checkpoint", "stories260K", "--tokenizer", "stories260K", "--prompt", "Once upon a time",
            "--max-new-tokens", "50", "--temperature", "0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected + "\n"


@pytest.mark.slow  # fresh `python -m llama2_et` processes
def test_info(data_dir):
    path = data_dir / "stories260K.bin"
    args, state = read_llama2c_bin(path)
    r = cli("info", "--checkpoint", str(path))
    assert r.returncode == 0, r.stderr
    assert f"parameters: {sum(t.numel() for t in state.values()):,}" in r.stdout  # counted from the file
    assert f"n_kv_heads: {args.n_kv_heads}" in r.stdout


@pytest.mark.slow  # fresh `python -m llama2_et` processes
def test_errors_are_one_line_messages(tmp_path):
    r = cli("generate", "--checkpoint", "stories260K", "--tokenizer", "stories260K", "--prompt", "hi",
            "--max-new-tokens", "600")  # fmt: skip
    assert r.returncode == 1 and r.stdout == ""
    assert one_error_line(r.stderr).startswith("error: prompt (3 tokens)")
    r = cli("generate", "--checkpoint", "stories260K", "--tokenizer", "llama2", "--prompt", "hi")
    assert r.returncode == 1 and "32000 tokens but the model has 512" in one_error_line(r.stderr)
    r = cli("info", "--checkpoint", str(tmp_path / "missing.bin"))
    assert r.returncode == 1 and "neither an existing path nor a preset" in one_error_line(r.stderr)
    r = cli(
        "generate",
        "--checkpoint",
        "stories260K",
        "--tokenizer",
        "stories260K",
        "--prompt",
        b"caf\xe9 au lait",
    )
    assert r.returncode == 2
    assert "argument --prompt: is not UTF-8 text (byte 3 is 0xe9)" in one_error_line(r.stderr)


SAMPLING = ["generate", "--checkpoint", "stories260K", "--tokenizer", "stories260K", "--prompt", "hi"]
EXPORT = ["export", "--checkpoint", "stories260K", "--out", "never.pte"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (SAMPLING + ["--seed", str(10**23)], "--seed: must be an integer in 0..2\\*\\*64-1, got 1000"),
        (SAMPLING + ["--seed", "-1"], "--seed: must be an integer in 0..2\\*\\*64-1, got -1"),
        (SAMPLING + ["--temperature", "nan"], "--temperature: must be a finite number >= 0 .*, got nan"),
        (SAMPLING + ["--temperature", "inf"], "--temperature: must be a finite number >= 0 .*, got inf"),
        (SAMPLING + ["--top-p", "1.5"], "--top-p: must be in \\(0, 1\\], got 1.5"),
        (SAMPLING + ["--top-k", "0"], "--top-k: must be a positive integer, got 0"),
        (EXPORT + ["--group-size", "0"], "--group-size: must be a positive integer, got 0"),
        (EXPORT + ["--group-size", "-4"], "--group-size: must be a positive integer, got -4"),
        (EXPORT + ["--max-seq-len", "0"], "--max-seq-len: must be a positive integer, got 0"),
        (EXPORT + ["--max-seq-len", "-8"], "--max-seq-len: must be a positive integer, got -8"),
        (
            EXPORT + ["--quantize-embedding", "2"],
            "--quantize-embedding: invalid choice: 2 \\(choose from 4, 8\\)",
        ),
        (EXPORT + ["--quantize-embedding", "int8"], "--quantize-embedding: invalid int value: 'int8'"),
        (
            ["bench", "--sweep", "--sweep-contexts", "256,1k"],
            "--sweep-contexts: must be comma-separated positive integers, got '256,1k'",
        ),
        (
            EXPORT + ["--embedding-group-size", "0"],
            "--embedding-group-size: must be a positive integer, got 0",
        ),
    ],
)
def test_bad_arguments_are_refused_before_any_work(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(cli_module, "load_checkpoint", lambda path: pytest.fail("loaded a checkpoint"))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = one_error_line(capsys.readouterr().err)
    assert re.search(f"error: argument {message}", err), err


def test_seed_range_ends_are_accepted(capsys):
    for seed in ("0", str(2**64 - 1)):
        assert main([*SAMPLING, "--max-new-tokens", "3", "--temperature", "1", "--seed", seed]) == 0
    assert capsys.readouterr().err == ""


def test_export_output_path_is_checked_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        cli_module, "load_checkpoint", lambda path: pytest.fail("loaded before checking --out")
    )
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    for out, message in [
        (a_file / "m.pte", "notes.txt is a file, not a folder"),
        (tmp_path, "is a folder; give a file path such as"),
        (tmp_path / "m.bin", "m.bin should end in .pte"),
    ]:
        assert main(["export", "--checkpoint", "stories260K", "--out", str(out)]) == 1
        assert message in one_error_line(capsys.readouterr().err)


def test_export_refuses_the_filled_attention_backend_outside_the_gather_design(tmp_path, capsys):
    out = tmp_path / "m.pte"
    assert (
        main(
            [
                "export",
                "--checkpoint",
                "stories260K",
                "--out",
                str(out),
                "--design",
                "preproc",
                "--backend",
                "xnnpack-filled",
            ]
        )
        == 1
    )
    assert "export it with design='gather' and no buckets" in one_error_line(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.slow  # fresh `python -m llama2_et` processes
def test_export_on_a_read_only_file_system_fails_first(tmp_path):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode:
        pytest.skip("no user namespaces here to mount a read-only tmpfs (test_files simulates one)")
    mount = tmp_path / "ro"
    mount.mkdir()
    script = (
        f"mount -t tmpfs -o ro tmpfs {mount}; exec {sys.executable} -m llama2_et export "
        f"--checkpoint stories260K --out {mount}/m.pte"
    )
    r = in_private_mount(script)
    assert r.returncode == 1
    assert f"{mount} is not writable (Read-only file system)" in one_error_line(r.stderr)


def test_group_size_that_quantizes_nothing_is_refused(capsys, tmp_path):
    out = tmp_path / "never.pte"
    argv = ["export", "--checkpoint", "stories260K", "--out", str(out), "--quantize", "8da4w"]
    assert main([*argv, "--group-size", "7"]) == 1  # refused before torch.export starts
    assert "group_size=7 divides none of the linears' input widths [64, 172]" in one_error_line(
        capsys.readouterr().err
    )
    assert not out.exists()


@pytest.mark.slow  # fresh `python -m llama2_et` processes
def test_unreadable_checkpoint_is_one_line(tmp_path, data_dir):
    path = tmp_path / "stories260K.bin"
    shutil.copy(data_dir / "stories260K.bin", path)
    path.chmod(0)
    prefix = ()
    if os.geteuid() == 0:  # root reads anything: drop to an unprivileged user in a user namespace
        prefix = ("unshare", "-U", "--map-user=1000", "--map-group=1000")
        if shutil.which("unshare") is None or subprocess.run([*prefix, "true"]).returncode:
            pytest.skip("running as root without user namespaces: every file is readable")
    r = cli("info", "--checkpoint", str(path), prefix=prefix)
    assert r.returncode == 1
    assert (
        one_error_line(r.stderr) == f"error: {path}: Permission denied; check the path and its permissions\n"
    )


def test_a_tokenizer_smaller_than_the_model_vocabulary_is_refused_at_load(tmp_path, capsys):
    """Such a model can sample ids the tokenizer cannot decode: refused before generating anything."""
    model = Transformer(ModelArgs(dim=8, n_layers=1, n_heads=2, vocab_size=32000, max_seq_len=16))
    folder = save_meta(model, tmp_path / "wide")
    argv = ["generate", "--checkpoint", str(folder), "--tokenizer", "stories260K", "--prompt", "hi"]
    assert main(argv) == 1
    out = capsys.readouterr()
    assert out.out == "" and "has 512 tokens but the model has 32000" in one_error_line(out.err)


def test_embedding_group_size_that_does_not_divide_dim_is_refused(capsys, tmp_path):
    out = tmp_path / "never.pte"
    argv = ["export", "--checkpoint", "stories260K", "--out", str(out)]
    assert main([*argv, "--quantize-embedding", "4", "--embedding-group-size", "48"]) == 1
    assert "embedding_group_size=48 must be a positive divisor of the model's dim 64" in one_error_line(
        capsys.readouterr().err
    )
    assert main([*argv, "--embedding-group-size", "32"]) == 1
    assert "embedding_group_size=32 given without quantize_embedding" in one_error_line(
        capsys.readouterr().err
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sweep", "--quick"], "--sweep sets its own models and prompts"),
        (["--sweep", "--sweep-models", "stories7B"], "unknown preset 'stories7B'"),
        (["--sweep", "--sweep-contexts", "256,64", "--new-tokens", "64"], "new_tokens=64 leaves no prompt"),
        (["--sweep", "--rows", "runner-ours,gpu"], "unknown rows \\['gpu'\\]"),
    ],
)
def test_sweep_refuses_bad_arguments_before_measuring(argv, message, capsys, monkeypatch):
    import llama2_et.bench

    monkeypatch.setattr(llama2_et.bench, "measure_bandwidth", lambda *_: pytest.fail("started measuring"))
    assert main(["bench", *argv]) == 1
    assert re.search(message, one_error_line(capsys.readouterr().err))
