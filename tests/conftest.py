"""Shared fixtures: the real files in LLAMA2_ET_DATA (default: ../shared/data beside the repo)."""

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
def stories260k_pte(stories260k, tmp_path_factory):
    """stories260K exported to .pte once per session per (design, backend): exports dominate test time."""
    from llama2_et.export import export_pte

    folder, programs = tmp_path_factory.mktemp("pte"), {}

    def get(design: str = "gather", backend: str = "xnnpack") -> Path:
        if (design, backend) not in programs:
            path = folder / f"stories260K_{design}_{backend}.pte"
            programs[design, backend] = export_pte(
                stories260k, path, design, backend, max_seq_len=PTE_CONTEXT
            ).path
        return programs[design, backend]

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
