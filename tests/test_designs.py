"""designs.py: the three program designs compute the same logits as the eager model with preproc slicing.

Reference: the eager Transformer fed by `Preproc.window` (checked against transformers' Llama in
test_model.py). Run time: under a second.
"""

import pytest
import torch

from llama2_et.config import ModelArgs
from llama2_et.contract import DESIGNS, SIGNATURES
from llama2_et.designs import PROGRAMS, program_and_inputs
from llama2_et.model import Transformer
from llama2_et.preproc import Preproc

GQA = ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=97, max_seq_len=32)


@pytest.mark.parametrize("design", DESIGNS)
def test_design_equals_eager_with_preproc_slicing(design):
    torch.manual_seed(0)
    model = Transformer(GQA).eval().setup_kv_cache()
    pre = Preproc.for_model(GQA)
    tokens = torch.randint(0, GQA.vocab_size, (1, 9))
    with torch.no_grad():
        expected = [model.last_logits(tokens[:, :6], *pre.window(0, 6))]
        expected.append(model.last_logits(tokens[:, 6:9], *pre.window(6, 3)))
        model.reset_kv_cache()
        program, example, _ = program_and_inputs(model, design)
        assert len(example) == len(SIGNATURES[design].names)
        if design == "preproc":
            got = [program(tokens[:, :6], *pre.window(0, 6)), program(tokens[:, 6:9], *pre.window(6, 3))]
        else:
            got = [program(tokens[:, :6], torch.tensor([0])), program(tokens[:, 6:9], torch.tensor([6]))]
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)


def test_every_design_has_one_program_class():
    assert set(PROGRAMS) == set(DESIGNS)
    with pytest.raises(ValueError, match="unknown design 'fused'; choose one of narrow, preproc, gather"):
        program_and_inputs(Transformer(GQA), "fused")
