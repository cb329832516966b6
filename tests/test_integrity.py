"""The sealed content hash: sealed files still run everywhere, damaged ones are refused before loading.

The fuzz test flips single bytes of a sealed stories260K program and runs both checks on each
copy: integrity.verify and the C++ runner. Without the seal, such flips load and then crash or
print other text (see test_unsealed_bad_op_index_is_an_error_not_a_crash for the case the runner
guards itself).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess

import pytest
import torch
from executorch.exir import to_edge
from executorch.exir._serialize._program import deserialize_pte_binary, serialize_pte_binary

from llama2_et import integrity
from llama2_et.cpp import build_runner
from llama2_et.runtime import PteDecoder

pytestmark = pytest.mark.slow

PROMPT = "Once upon a time"
DAMAGED = "damaged: content hash mismatch"


@pytest.fixture(scope="module")
def runner():
    return build_runner()


@pytest.fixture(scope="module")
def sealed_pte(stories260k_pte):
    """stories260K (gather design, XNNPACK) as export writes it: sealed."""
    return stories260k_pte("gather", "xnnpack")


@pytest.fixture(scope="module")
def unsealed_pte(sealed_pte, tmp_path_factory):
    """The same program without its trailer, as an older export or another exporter writes it."""
    path = tmp_path_factory.mktemp("unsealed") / "stories260K.pte"
    path.write_bytes(sealed_pte.read_bytes()[: -integrity.SEAL_SIZE])
    return path


def generate(runner, pte, data_dir) -> subprocess.CompletedProcess:
    args = ["--model", pte, "--tokenizer", data_dir / "tok512.bin", "--prompt", PROMPT, "--steps", 8]
    return subprocess.run(
        [str(runner), *map(str, args), "--print-tokens"], capture_output=True, text=True, timeout=60
    )


def test_seal_appends_the_hash_and_is_idempotent(unsealed_pte, sealed_pte, tmp_path):
    program = unsealed_pte.read_bytes()
    sealed = sealed_pte.read_bytes()
    assert sealed[: len(program)] == program and len(sealed) == len(program) + integrity.SEAL_SIZE
    assert sealed[len(program) :] == integrity.MAGIC + hashlib.sha256(program).digest()
    assert integrity.verify(sealed_pte) is True
    resealed = tmp_path / "resealed.pte"
    shutil.copyfile(sealed_pte, resealed)
    assert integrity.seal(resealed).read_bytes() == sealed  # the old trailer is replaced, not hashed
    shutil.copyfile(unsealed_pte, resealed)
    assert integrity.seal(resealed).read_bytes() == sealed  # sealing later gives what export writes


def test_unsealed_file_passes_unchecked(unsealed_pte):
    assert integrity.verify(unsealed_pte) is False


def test_missing_file_is_a_clear_error(tmp_path):
    for check in (integrity.seal, integrity.verify):
        with pytest.raises(FileNotFoundError, match="missing.pte"):
            check(tmp_path / "missing.pte")


def test_failed_seal_keeps_the_good_file(unsealed_pte, tmp_path, monkeypatch):
    path = tmp_path / "program.pte"
    shutil.copyfile(unsealed_pte, path)
    before = path.read_bytes()

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        integrity.seal(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["program.pte"]


def test_sealed_file_runs_unchanged_in_every_runtime(runner, unsealed_pte, sealed_pte, data_dir):
    """ExecuTorch ignores the trailer: Python runtime, our C++ runner and TextLLMRunner give the same output."""
    from executorch.runtime import Runtime

    from llama2_et.export_llm import TextRunner

    unsealed = unsealed_pte
    inputs = [torch.tensor([[1, 403, 407]]), torch.tensor([0])]
    logits = [
        Runtime.get().load_program(p).load_method("forward").execute(inputs)[0]
        for p in (unsealed, sealed_pte)
    ]
    assert torch.equal(logits[0], logits[1])
    runs = [generate(runner, p, data_dir) for p in (unsealed, sealed_pte)]
    assert runs[0].returncode == runs[1].returncode == 0 and runs[0].stdout == runs[1].stdout
    assert "content hash verified" in runs[1].stderr and "content hash absent" in runs[0].stderr
    texts = [
        TextRunner(p, data_dir / "tok512.model").generate(PROMPT, 16).text for p in (unsealed, sealed_pte)
    ]
    assert texts[0] == texts[1] and len(texts[0]) > 20


def test_single_byte_flips_are_detected_never_run(runner, sealed_pte, data_dir, tmp_path):
    """Seeded flips (program header, weights, trailer): a damage message, never a signal or other text."""
    good = sealed_pte.read_bytes()
    reference = generate(runner, sealed_pte, data_dir)
    assert reference.returncode == 0
    magic_at = len(good) - integrity.SEAL_SIZE
    rng = random.Random(0)
    offsets = (
        [rng.randrange(20_000) for _ in range(150)]  # the flatbuffer: operators, arguments, offsets
        + [rng.randrange(len(good)) for _ in range(120)]  # mostly weights
        + [magic_at + rng.randrange(integrity.SEAL_SIZE) for _ in range(30)]  # the trailer itself
    )
    damaged = tmp_path / "damaged.pte"
    outcomes = {"detected": 0, "unsealed, ran as before": 0}
    for offset in offsets:
        data = bytearray(good)
        data[offset] ^= rng.randrange(1, 256)
        damaged.write_bytes(data)
        in_magic = magic_at <= offset < magic_at + len(integrity.MAGIC)
        result = generate(runner, damaged, data_dir)
        assert result.returncode in (0, 1), (offset, result.returncode, result.stderr[-300:])  # < 0: a signal
        if in_magic:  # no trailer any more: the program bytes are intact and run as before
            assert integrity.verify(damaged) is False
            assert (result.returncode, result.stdout) == (0, reference.stdout), offset
            outcomes["unsealed, ran as before"] += 1
            continue
        with pytest.raises(ValueError, match=f"damaged.pte is {DAMAGED}.*re-export"):
            integrity.verify(damaged)
        with pytest.raises(ValueError, match=f"damaged.pte is {DAMAGED}"):
            PteDecoder(damaged)  # what `python -m llama2_et run` loads
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert result.returncode == 1 and len(errors) == 1 and DAMAGED in errors[0], (offset, result.stderr)
        outcomes["detected"] += 1
    assert outcomes["detected"] >= 250 and outcomes["unsealed, ran as before"] >= 5, outcomes


def test_unsealed_bad_op_index_is_an_error_not_a_crash(runner, tmp_path, data_dir):
    """ExecuTorch 1.5 logs "Op index out of range" at load, returns Ok, and would crash in execute."""

    class TwoOps(torch.nn.Module):
        def forward(self, x):
            return (x + 1) * 2  # two kernel calls: a later one resets the error of the first

    pte_file = deserialize_pte_binary(
        to_edge(torch.export.export(TwoOps(), (torch.ones(4),))).to_executorch().buffer
    )
    pte_file.program.execution_plan[0].chains[0].instructions[0].instr_args.op_index = 10**6
    path = tmp_path / "bad_op_index.pte"
    path.write_bytes(bytes(serialize_pte_binary(pte_file)))
    result = subprocess.run(
        [str(runner), "--model", str(path), "--tokenizer", str(data_dir / "tok512.bin")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert "bad_op_index.pte" in errors[0] and "Op index 1000000 out of range" in errors[0]


@pytest.mark.parametrize("size", [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, 70_000])
def test_cpp_sha256_agrees_with_hashlib(runner, tmp_path, data_dir, size):
    """Every SHA-256 padding case: the runner accepts the hash Python sealed, and sees one flipped bit."""
    path = tmp_path / "noise.pte"
    path.write_bytes(random.Random(size).randbytes(size))
    integrity.seal(path)
    command = [str(runner), "--model", str(path), "--tokenizer", str(data_dir / "tok512.bin")]
    intact = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert intact.returncode == 1 and "cannot load program" in intact.stderr and DAMAGED not in intact.stderr
    data = bytearray(path.read_bytes())
    data[size // 2 if size else -1] ^= 1
    path.write_bytes(data)
    flipped = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert flipped.returncode == 1 and DAMAGED in flipped.stderr
