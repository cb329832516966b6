"""Sampling and generation: prefill the prompt, then decode one token at a time.

A *decoder* is anything with `max_seq_len`, `vocab_size`, `reset()` and
`step(tokens, start_pos) -> logits (V,)` for the last of `tokens` placed at positions
start_pos.. . The eager decoders below, the .pte runtime (runtime.py) all fit, so one
generation loop and one sampler serve every runtime and greedy output can match token for token.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

import torch

from .model import Transformer
from .preproc import Preproc


class Decoder(Protocol):
    max_seq_len: int
    vocab_size: int

    def reset(self) -> None: ...

    def step(self, tokens: list[int], start_pos: int) -> torch.Tensor: ...


class Sampler:
    """Greedy (temperature 0), or temperature sampling restricted by top-k and/or top-p."""

    def __init__(
        self,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generator = torch.Generator()
        self.generator.manual_seed(seed if seed is not None else torch.seed())

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution sampled from (V,), after temperature, top-k and top-p."""
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_k is not None and self.top_k < probs.numel():
            kth = torch.topk(probs, self.top_k).values[-1]
            probs = torch.where(probs >= kth, probs, 0.0)
        if self.top_p is not None and self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            mass_before = torch.cumsum(sorted_probs, 0) - sorted_probs
            sorted_probs = torch.where(mass_before < self.top_p * probs.sum(), sorted_probs, 0.0)
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return probs / probs.sum()

    def __call__(self, logits: torch.Tensor) -> int:
        """One token id from logits (V,)."""
        if self.temperature == 0.0:
            return int(torch.argmax(logits))
        return int(torch.multinomial(self.probabilities(logits), 1, generator=self.generator))


class EagerDecoder:
    """The eager Transformer with its static KV cache: prefill once, then one token per step."""

    def __init__(self, model: Transformer):
        self.model = model.eval()
        if model.layers[0].attention.kv_cache is None:
            model.setup_kv_cache()
        self.preproc = Preproc(model.args)
        self.max_seq_len, self.vocab_size = model.args.max_seq_len, model.args.vocab_size

    def reset(self) -> None:
        self.model.reset_kv_cache()

    @torch.no_grad()
    def step(self, tokens: list[int], start_pos: int) -> torch.Tensor:
        cos, sin, mask, input_pos = self.preproc.window(start_pos, len(tokens))
        x = torch.tensor([tokens], dtype=torch.long)  # (1, L)
        return self.model.last_logits(x, cos, sin, mask, input_pos)[0]  # (V,)


class NoCacheDecoder:
    """The eager Transformer without cache: every step recomputes the whole sequence (O(L^2))."""

    def __init__(self, model: Transformer):
        self.model = model.eval()
        self.preproc = Preproc(model.args)
        self.max_seq_len, self.vocab_size = model.args.max_seq_len, model.args.vocab_size
        self.tokens: list[int] = []

    def reset(self) -> None:
        self.tokens = []

    @torch.no_grad()
    def step(self, tokens: list[int], start_pos: int) -> torch.Tensor:
        self.tokens = self.tokens[:start_pos] + list(tokens)
        x = torch.tensor([self.tokens], dtype=torch.long)  # (1, start_pos + L)
        return self.model.last_logits(x, *self.preproc.full(x.shape[1]))[0]  # (V,)


def check_fits(n_prompt: int, max_new_tokens: int, max_seq_len: int) -> None:
    """Raise a ValueError naming the numbers when prompt + new tokens exceed the context."""
    if n_prompt == 0:
        raise ValueError("the prompt has no tokens; encode it with bos=True to start from BOS")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if n_prompt + max_new_tokens > max_seq_len:
        raise ValueError(
            f"prompt ({n_prompt} tokens) + max_new_tokens ({max_new_tokens}) = "
            f"{n_prompt + max_new_tokens} exceeds the model's context of {max_seq_len} tokens "
            "(max_seq_len); shorten the prompt or ask for fewer new tokens"
        )


def generate(
    decoder: Decoder,
    prompt_ids: list[int],
    max_new_tokens: int,
    sampler: Sampler,
    stop_ids: Iterable[int] = (1, 2),
) -> Iterator[int]:
    """Yield new token ids: prefill the prompt, then decode; stop at a stop id (BOS/EOS, as llama2.c)."""
    check_fits(len(prompt_ids), max_new_tokens, decoder.max_seq_len)
    stop = set(stop_ids)
    decoder.reset()
    logits = decoder.step(list(prompt_ids), 0)  # prefill: (V,) for the last prompt token
    pos = len(prompt_ids)
    for i in range(max_new_tokens):
        token = sampler(logits)
        if token in stop:
            return
        yield token
        if i + 1 < max_new_tokens:
            logits = decoder.step([token], pos)
            pos += 1


def generate_text(
    decoder: Decoder, tokenizer, prompt: str, max_new_tokens: int, sampler: Sampler
) -> Iterator[str]:
    """Stream text: the prompt first, then each new piece as soon as it decodes to whole characters."""
    ids = tokenizer.encode(prompt, bos=True)
    check_fits(len(ids), max_new_tokens, decoder.max_seq_len)  # before any text is streamed
    emitted = tokenizer.decode(ids)
    yield emitted
    stop_ids = (tokenizer.bos_id, tokenizer.eos_id)
    for token in generate(decoder, ids, max_new_tokens, sampler, stop_ids):
        ids.append(token)
        text = tokenizer.decode(ids)
        if text.endswith("\ufffd") or not text.startswith(emitted):
            continue  # an incomplete UTF-8 byte sequence: wait for its next byte
        yield text[len(emitted) :]
        emitted = text
    text = tokenizer.decode(ids)
    if text != emitted and text.startswith(emitted):
        yield text[len(emitted) :]
