"""Shared fixtures: the real files in LLAMA2_ET_DATA (default: ../shared/data beside the repo)."""

import fcntl
import os
from pathlib import Path

import pytest

DATA = Path(os.environ["LLAMA2_ET_DATA"])  # set by the root conftest.py


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "stories260K.bin").is_file():
        pytest.fail(
            f"real test data missing: set LLAMA2_ET_DATA to a folder with stories260K.bin (now {DATA})"
        )
    return DATA


@pytest.fixture(scope="session")
def stories260k(data_dir):
    from llama2_et.checkpoint import load_checkpoint

    return load_checkpoint(data_dir / "stories260K.bin")


@pytest.fixture(scope="session")
def tok512(data_dir):
    from llama2_et.tokenizer import Tokenizer

    return Tokenizer(data_dir / "tok512.model")


PTE_CONTEXT = 128  # max_seq_len of the test programs: room for every test prompt and its new tokens


@pytest.fixture(scope="session")
def pte_context() -> int:
    """The max_seq_len of the programs `stories260k_pte` exports."""
    return PTE_CONTEXT


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """A folder that every worker of this pytest run sees (pytest-xdist gives each its own basetemp)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if "PYTEST_XDIST_WORKER" in os.environ else base


@pytest.fixture(scope="session")
def stories260k_pte(stories260k, run_dir):
    """stories260K exported to .pte once per run per (design, backend): exports dominate test time.

    The first worker to need a program exports it under a lock; the others wait and read its file
    (export_pte writes to a temporary file and renames, so a finished file is a complete one).
    """
    from llama2_et.export import export_pte

    folder = run_dir / "pte"
    folder.mkdir(exist_ok=True)

    def get(design: str = "gather", backend: str = "xnnpack") -> Path:
        path = folder / f"stories260K_{design}_{backend}.pte"
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.is_file():
                export_pte(stories260k, path, design, backend, max_seq_len=PTE_CONTEXT)
        return path

    return get


@pytest.fixture(scope="session")
def stories260k_eos_pte(stories260k, tok512, tmp_path_factory):
    """stories260K (gather, XNNPACK) declaring as EOS a token greedy decoding first emits mid-story.

    Returns the .pte, the prompt ids, and the greedy ids up to (not including) that EOS.
    """
    from llama2_et.export import export_pte
    from llama2_et.generate import EagerDecoder, Sampler, generate

    prompt = tok512.encode("Once upon a time", bos=True)
    free = list(generate(EagerDecoder(stories260k), prompt, 60, Sampler(), stop_ids=()))
    step = next(k for k in range(10, len(free)) if free[k] not in free[:k])  # its first appearance
    path = tmp_path_factory.mktemp("eos") / "stories260K_eos.pte"
    export_pte(stories260k, path, "gather", "xnnpack", max_seq_len=PTE_CONTEXT, eos_ids=(free[step],))
    return path, prompt, free[:step]
