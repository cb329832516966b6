"""The command line as a user runs it: python -m llama2_et ..."""

import subprocess
import sys

from test_generate import LLAMA2C_GREEDY


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "llama2_et", *args], capture_output=True, text=True, timeout=300
    )


def test_generate_prints_only_the_text():
    r = cli("generate", "--checkpoint", "stories260K", "--tokenizer", "stories260K", "--prompt", "Once upon a time",
            "--max-new-tokens", "50", "--temperature", "0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(LLAMA2C_GREEDY[:60]) and r.stdout.count("\n") <= 3


def test_info(data_dir):
    r = cli("info", "--checkpoint", str(data_dir / "stories260K.bin"))
    assert r.returncode == 0 and "parameters: 260,032" in r.stdout and "n_kv_heads: 4" in r.stdout


def test_errors_are_one_line_messages(tmp_path):
    r = cli("generate", "--checkpoint", "stories260K", "--tokenizer", "stories260K", "--prompt", "hi",
            "--max-new-tokens", "600")  # fmt: skip
    assert r.returncode == 1 and r.stdout == "" and r.stderr.startswith("error: prompt (3 tokens)")
    assert "Traceback" not in r.stderr
    r = cli("generate", "--checkpoint", "stories260K", "--tokenizer", "llama2", "--prompt", "hi")
    assert r.returncode == 1 and "32000 tokens but the model has 512" in r.stderr
    r = cli("info", "--checkpoint", str(tmp_path / "missing.bin"))
    assert r.returncode == 1 and "neither an existing path nor a preset" in r.stderr
