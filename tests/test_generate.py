"""Generation: greedy stories260K against llama2.c's documented sample and transformers' generate."""

import pytest
import torch
import transformers

from llama2_et.checkpoint.hf import to_hf
from llama2_et.generate import (
    EagerDecoder,
    NoCacheDecoder,
    Sampler,
    StepTimes,
    generate,
    generate_text,
    teacher_forced,
)

# The first line of llama2.c's doc/stories260K.md greedy sample (run.c -t 0.0 -i "Once upon a time")
LLAMA2C_GREEDY = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
    "One day, she saw a big, red ball. She wanted to play with it, but it was too high."
)


def test_greedy_text_equals_llama2c_reference(stories260k, tok512):
    text = "".join(generate_text(EagerDecoder(stories260k), tok512, "Once upon a time", 60, Sampler()))
    assert text.startswith(LLAMA2C_GREEDY)


def test_greedy_tokens_equal_transformers_generate(stories260k, tok512):
    state, config = to_hf(stories260k)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config, attn_implementation="eager")).eval()
    hf.load_state_dict(state, strict=False)
    prompt = tok512.encode("Once upon a time")
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=120, do_sample=False, eos_token_id=[1, 2])
    theirs = [t for t in out[0, len(prompt) :].tolist()]
    theirs = theirs[: next((i for i, t in enumerate(theirs) if t in (1, 2)), len(theirs))]
    ours = list(generate(EagerDecoder(stories260k), prompt, 120, Sampler()))
    assert len(ours) > 50 and ours == theirs


def test_cache_and_no_cache_generate_the_same(stories260k, tok512):
    prompt = tok512.encode("Tom had a dog")
    cached = list(generate(EagerDecoder(stories260k), prompt, 40, Sampler(temperature=0.8, seed=7)))
    uncached = list(generate(NoCacheDecoder(stories260k), prompt, 40, Sampler(temperature=0.8, seed=7)))
    assert cached == uncached and len(cached) > 10


def test_seed_reproduces_and_changes_samples(stories260k, tok512):
    prompt = tok512.encode("Once upon a time")

    def run(seed):
        return list(
            generate(EagerDecoder(stories260k), prompt, 30, Sampler(temperature=1.0, top_p=0.9, seed=seed))
        )

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.allclose(Sampler(1.0, top_k=2).probabilities(logits), torch.tensor([0.625, 0.375, 0, 0]))
    # nucleus 0.7: 0.5 alone is not enough, 0.5 + 0.3 is: keep the first two
    assert torch.allclose(Sampler(1.0, top_p=0.7).probabilities(logits), torch.tensor([0.625, 0.375, 0, 0]))
    assert torch.allclose(Sampler(1.0, top_p=0.5).probabilities(logits), torch.tensor([1.0, 0, 0, 0]))
    low_temperature = Sampler(0.1).probabilities(logits)
    assert low_temperature[0] > 0.99
    draws = [Sampler(1.0, top_p=0.7, seed=s)(logits) for s in range(200)]
    assert set(draws) == {0, 1}


class StopAt:
    """A decoder whose logits always favour one token: generation must stop on it."""

    max_seq_len, vocab_size, stop_ids = 64, 8, (1, 2)

    def __init__(self, token):
        self.token = token

    def reset(self):
        pass

    def step(self, tokens, start_pos):
        return torch.nn.functional.one_hot(torch.tensor(self.token), 8).float()


@pytest.mark.parametrize("stop", [1, 2])
def test_generation_stops_at_the_decoders_stop_ids(stop):
    assert list(generate(StopAt(stop), [1, 5], 10, Sampler())) == []
    assert list(generate(StopAt(3), [1, 5], 4, Sampler())) == [3, 3, 3, 3]
    assert list(generate(StopAt(stop), [1, 5], 3, Sampler(), stop_ids=(3,))) == [stop] * 3


def test_step_times_count_one_prefill_and_n_minus_one_decode_steps():
    times = StepTimes()
    assert list(generate(StopAt(3), [1, 5], 4, Sampler(), times=times)) == [3, 3, 3, 3]
    assert len(times.decode) == 3  # the first token comes from the prefill


def test_bad_lengths_are_clear_errors(stories260k, tok512):
    decoder = EagerDecoder(stories260k)
    with pytest.raises(
        ValueError, match=r"prompt \(5 tokens\) \+ max_new_tokens \(508\) = 513 exceeds .* 512"
    ):
        next(generate_text(decoder, tok512, "Once upon a time", 508, Sampler()))
    with pytest.raises(ValueError, match="no tokens"):
        next(generate(decoder, [], 5, Sampler()))
    # an empty text prompt is just BOS: generation starts a story from nothing
    text = "".join(generate_text(decoder, tok512, "", 20, Sampler()))
    assert len(text.split()) > 3
    with pytest.raises(ValueError, match="temperature"):
        Sampler(temperature=-1)


def test_teacher_forcing_feeds_the_given_tokens(stories260k):
    prompt, forced = [1, 403, 407], [261, 378, 12, 40]
    decoder = EagerDecoder(stories260k)
    got = teacher_forced(decoder, prompt, forced)
    decoder.reset()
    expected = [decoder.step(prompt, 0)]
    expected += [decoder.step([t], len(prompt) + i) for i, t in enumerate(forced[:-1])]
    assert len(got) == len(forced)
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)
