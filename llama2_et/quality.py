"""Quality of a model or program as a number: perplexity on held-out TinyStories text.

Perplexity is exp of the mean negative log-likelihood of each token given the ones before it: the
number of tokens the model is, on average, as unsure between as a uniform guess would be. A model
that knew nothing would score the vocabulary size (512 for stories260K); lower is better. Every
decoder of generate.py (eager or a .pte) is measured by the same loop, `teacher_forced`, so the
numbers of fp32 eager, an fp32 program and a quantized program compare directly.
"""

from __future__ import annotations

import math

import torch

from .data import default_stories, read_stories, resolve_stories, split_stories, story_files
from .generate import Decoder, check_vocabulary, teacher_forced
from .tokenizer import Tokenizer
from .train_config import TrainConfig

SPLIT_SEED = 0  # prepare_data's default seed, the one `train` splits its stories with


def held_out_stories(source: str | None = None, val_fraction: float = TrainConfig.val_fraction) -> list[str]:
    """The validation stories of `train`'s split of source (default: the stories `train` reads).

    The same files, fraction and seed as `prepare_data`, so a model trained by `train` never saw them.
    """
    files = story_files(resolve_stories(source or default_stories()))
    stories = [story for f in files for story in read_stories(f)]
    return split_stories(stories, val_fraction, SPLIT_SEED)[1]


def held_out_tokens(tokenizer: Tokenizer, n_tokens: int, source: str | None = None) -> list[int]:
    """The first n_tokens of the held-out stories, each encoded with BOS first, as `train`'s shards hold them."""
    if n_tokens < 2:
        raise ValueError(f"n_tokens must be >= 2 (one to condition on, one to predict), got {n_tokens}")
    tokens: list[int] = []
    stories = held_out_stories(source)
    for story in stories:
        tokens += tokenizer.encode(story, bos=True)
        if len(tokens) >= n_tokens:
            return tokens[:n_tokens]
    raise ValueError(
        f"the {len(stories)} held-out stories hold {len(tokens):,} tokens, fewer than the {n_tokens:,} "
        "asked for; ask for fewer tokens or use more stories"
    )


def perplexity(decoder: Decoder, tokens: list[int]) -> float:
    """exp(mean NLL) of tokens[1:], each predicted from the tokens before it, by the decoder.

    Text longer than the decoder's context (max_seq_len) is cut into windows of max_seq_len tokens
    that overlap by one: each window starts from an empty cache, conditions on its first token
    (the previous window's last) and predicts the rest, so every token but the very first is
    predicted exactly once, from at most max_seq_len - 1 tokens before it.
    """
    if len(tokens) < 2:
        raise ValueError(
            f"perplexity needs at least 2 tokens (one to condition on, one to predict), got {len(tokens)}"
        )
    check_vocabulary(decoder.vocab_size, tokens)
    context = decoder.max_seq_len
    if context < 2:
        raise ValueError(f"a context of {context} token cannot condition one token on another")
    nll, count = 0.0, 0
    for start in range(0, len(tokens) - 1, context - 1):
        window = tokens[start : start + context]
        logits = torch.stack(teacher_forced(decoder, window[:1], window[1:]))  # (len(window) - 1, V)
        targets = torch.tensor(window[1:])
        nll -= torch.log_softmax(logits.double(), dim=-1).gather(1, targets[:, None]).sum().item()
        count += len(targets)
    return math.exp(nll / count)
