"""Sampling and generation: prefill the prompt, then decode one token at a time.

A *decoder* is anything with `max_seq_len`, `vocab_size`, `stop_ids`, `reset()` and
`step(tokens, start_pos) -> logits (V,)` for the last of `tokens` placed at positions
start_pos.. . The eager decoders below and the .pte runtime (runtime.py) all fit, so one
generation loop (`generate`, which also times its steps) and one sampler serve every runtime,
and greedy output can match token for token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from . import contract
from .model import Transformer
from .tokenizer import Tokenizer


class Decoder(Protocol):
    max_seq_len: int
    vocab_size: int
    stop_ids: tuple[int, ...]  # generation ends when one of them is sampled

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
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if seed is not None and not 0 <= seed < 2**64:
            raise ValueError(f"seed must be in 0..2**64-1, got {seed}")
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
        self.max_seq_len, self.vocab_size = model.args.max_seq_len, model.args.vocab_size
        self.stop_ids = contract.STOP_IDS

    def reset(self) -> None:
        self.model.reset_kv_cache()

    @torch.no_grad()
    def step(self, tokens: list[int], start_pos: int) -> torch.Tensor:
        check_context(self.max_seq_len, len(tokens), start_pos, context="the KV cache")
        x = torch.tensor([tokens], dtype=torch.long)  # (1, L)
        return self.model(x, torch.tensor([start_pos]))[0]  # (V,)


class NoCacheDecoder:
    """The eager Transformer without cache: every step recomputes the whole sequence (O(L^2))."""

    def __init__(self, model: Transformer):
        self.model = model.eval()
        self.max_seq_len, self.vocab_size = model.args.max_seq_len, model.args.vocab_size
        self.stop_ids = contract.STOP_IDS
        self.tokens: list[int] = []

    def reset(self) -> None:
        self.tokens = []

    @torch.no_grad()
    def step(self, tokens: list[int], start_pos: int) -> torch.Tensor:
        self.tokens = self.tokens[:start_pos] + list(tokens)
        x = torch.tensor([self.tokens], dtype=torch.long)  # (1, start_pos + L)
        return self.model(x)[0, -1]  # (V,)


class Recorder:
    """Wraps a decoder and keeps the logits (V,) of every step, in order: teacher forcing and comparisons."""

    def __init__(self, decoder: Decoder):
        self.decoder, self.logits = decoder, []
        self.max_seq_len, self.vocab_size = decoder.max_seq_len, decoder.vocab_size
        self.stop_ids = decoder.stop_ids

    def reset(self) -> None:
        self.decoder.reset()
        self.logits = []

    def step(self, tokens: list[int], start_pos: int) -> torch.Tensor:
        logits = self.decoder.step(tokens, start_pos)
        self.logits.append(logits)
        return logits


def teacher_forced(decoder: Decoder, prompt_ids: list[int], tokens: list[int]) -> list[torch.Tensor]:
    """Logits (V,) of a prefill and of decode steps fed `tokens` instead of the decoder's own choices.

    One list per call: the logits that chose tokens[0] (after the prompt), then after each token
    but the last. The same loop as `generate`, with a "sampler" that replays the given tokens.
    """
    recorder, forced = Recorder(decoder), iter(tokens)
    list(generate(recorder, prompt_ids, len(tokens), lambda logits: next(forced), stop_ids=()))
    return recorder.logits


def check_vocabulary(
    vocab_size: int,
    tokens: Iterable[int] = (),
    tokenizer: Tokenizer | None = None,
    source: str = "",
    fix: str = "use the tokenizer the model was trained with",
) -> None:
    """Raise a ValueError when a tokenizer's vocabulary is not vocab_size or a token id is outside it."""
    if tokenizer is not None and tokenizer.vocab_size != vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens but the model has {vocab_size} "
            f"(vocab_size); {fix}"
        )
    bad = [t for t in tokens if not 0 <= t < vocab_size]
    if bad:
        where = f"{source}: " if source else ""
        raise ValueError(f"{where}token ids {bad[:5]} are outside the vocabulary 0..{vocab_size - 1}; {fix}")


def check_context(
    max_seq_len: int,
    n_tokens: int,
    start_pos: int = 0,
    new_tokens: int | None = None,
    context: str = "the model's context",
) -> None:
    """Raise a ValueError when n_tokens at start_pos (then new_tokens more) run past max_seq_len positions.

    With new_tokens, a generation asked for: the message names the prompt and the new tokens.
    Without, one decoder step: the message names the positions that do not fit.
    """
    end = start_pos + n_tokens + (new_tokens or 0)
    if end <= max_seq_len:
        return
    if new_tokens is None:
        raise ValueError(
            f"positions {start_pos}..{end - 1} run past the end of {context} ({max_seq_len} positions, "
            "max_seq_len); shorten the prompt or generate fewer tokens"
        )
    raise ValueError(
        f"prompt ({n_tokens} tokens) + max_new_tokens ({new_tokens}) = {n_tokens + new_tokens} exceeds "
        f"{context} of {max_seq_len} tokens (max_seq_len); shorten the prompt or ask for fewer new tokens"
    )


def check_fits(
    n_prompt: int, max_new_tokens: int, max_seq_len: int, context: str = "the model's context"
) -> None:
    """Raise a ValueError naming the numbers when the prompt is empty or prompt + new tokens exceed the context."""
    if n_prompt == 0:
        raise ValueError("the prompt has no tokens; encode it with bos=True to start from BOS")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    check_context(max_seq_len, n_prompt, new_tokens=max_new_tokens, context=context)


@dataclass
class StepTimes:
    """Seconds spent in the decoder: the prefill step and each decode step."""

    prefill: float = 0.0
    decode: list[float] = field(default_factory=list)


def generate(
    decoder: Decoder,
    prompt_ids: list[int],
    max_new_tokens: int,
    sampler: Sampler,
    stop_ids: Iterable[int] | None = None,
    times: StepTimes | None = None,
) -> Iterator[int]:
    """Yield new token ids: prefill the prompt, then decode; stop at a stop id (decoder.stop_ids by default).

    The first new token comes from the prefill's logits, so n tokens take n - 1 decode steps.
    `times`, when given, receives the seconds of every decoder step.
    """
    check_fits(len(prompt_ids), max_new_tokens, decoder.max_seq_len)
    stop = set(decoder.stop_ids if stop_ids is None else stop_ids)
    times = times if times is not None else StepTimes()
    decoder.reset()
    started = time.perf_counter()
    logits = decoder.step(list(prompt_ids), 0)  # prefill: (V,) for the last prompt token
    times.prefill = time.perf_counter() - started
    pos = len(prompt_ids)
    for i in range(max_new_tokens):
        token = sampler(logits)
        if token in stop:
            return
        yield token
        if i + 1 < max_new_tokens:
            started = time.perf_counter()
            logits = decoder.step([token], pos)
            times.decode.append(time.perf_counter() - started)
            pos += 1


def generate_text(
    decoder: Decoder, tokenizer: Tokenizer, prompt: str, max_new_tokens: int, sampler: Sampler
) -> Iterator[str]:
    """Stream text: the prompt first, then each new piece as soon as it decodes to whole characters."""
    ids = tokenizer.encode(prompt, bos=True)
    check_fits(len(ids), max_new_tokens, decoder.max_seq_len)  # before any text is streamed
    emitted = tokenizer.decode(ids)
    yield emitted
    for token in generate(decoder, ids, max_new_tokens, sampler):
        ids.append(token)
        text = tokenizer.decode(ids)
        if text.endswith("\ufffd") or not text.startswith(emitted):
            continue  # an incomplete UTF-8 byte sequence: wait for its next byte
        yield text[len(emitted) :]
        emitted = text
    text = tokenizer.decode(ids)
    if text != emitted and text.startswith(emitted):
        yield text[len(emitted) :]
