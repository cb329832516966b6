"""What is benched: the models, their fixed prompts, and fp32 eager's greedy run as the reference."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import assets
from ..checkpoint import load_checkpoint
from ..config import preset
from ..model import Transformer
from ..tokenizer import Tokenizer

MODELS = ("stories15M-shape", "stories260K")  # the default run
LONG_CONTEXT_MODEL, LONG_CONTEXT = "stories15M-shape-1k", 1024  # the stories15M shape, 1024 positions
KNOWN_MODELS = (*MODELS, LONG_CONTEXT_MODEL)


@dataclass
class BenchModel:
    """A model to bench with its tokenizer and fixed prompt."""

    name: str
    model: Transformer
    tokenizer: Tokenizer
    prompt: str
    prompt_ids: list[int]
    trained: bool  # real weights: perplexity means something (random weights' is astronomical)


def build_model(name: str, prompt_tokens: int) -> BenchModel:
    """The model called `name` and a prompt of <= prompt_tokens ids.

    stories15M-shape: the stories15M hyper-parameters with random weights (seed 0);
    stories15M-shape-1k: the same with a 1024-position context; stories260K: the real checkpoint.
    """
    if name in ("stories15M-shape", LONG_CONTEXT_MODEL):
        context = LONG_CONTEXT if name == LONG_CONTEXT_MODEL else preset("stories15M").max_seq_len
        return shaped_model(name, "stories15M", context, prompt_tokens)
    if name != "stories260K":
        raise ValueError(f"unknown bench model {name!r}; choose from {', '.join(KNOWN_MODELS)}")
    model = load_checkpoint(assets.resolve_checkpoint("stories260K"))
    tokenizer = Tokenizer(assets.resolve_tokenizer("stories260K"))
    prompt, ids = fixed_prompt(tokenizer, prompt_tokens)
    return BenchModel(name, model.eval(), tokenizer, prompt, ids, trained=True)


TOKENIZER_OF_VOCAB = {32000: "llama2", 512: "stories260K"}  # the tokenizers of the presets' vocabularies


def shaped_model(name: str, shape: str, context: int, prompt_tokens: int) -> BenchModel:
    """A model with the hyper-parameters of preset `shape`, `context` positions and random weights (seed 0)."""
    args = preset(shape).replace(max_seq_len=context)
    torch.manual_seed(0)
    model = Transformer(args)
    tokenizer = Tokenizer(assets.resolve_tokenizer(TOKENIZER_OF_VOCAB[args.vocab_size]))
    prompt, ids = fixed_prompt(tokenizer, prompt_tokens)
    return BenchModel(name, model.eval(), tokenizer, prompt, ids, trained=False)


STORY = (
    "Once upon a time, there was a little girl named Lily. She lived in a small house near a big forest "
    "with her mom, her dad and her dog Max. Every morning Lily and Max went for a walk under the tall "
    "trees. They looked for red leaves, round stones and little birds. One day, Lily found a shiny key "
    "under an old log. She did not know what it could open, so she put it in her pocket and ran home to "
    "show her mom. Her mom smiled and said they would look for the lock together after lunch."
)


def fixed_prompt(tokenizer: Tokenizer, max_tokens: int) -> tuple[str, list[int]]:
    """The longest word prefix of STORY, told again and again, whose ids (BOS first) fit max_tokens.

    Text, not ids, because the runners take text: a whole-word prefix re-encodes to the same ids.
    """
    story = STORY.split(" ")
    prompt, ids = "", []
    for n in range(1, max_tokens + 1):  # a word is at least one token
        text = " ".join(story[i % len(story)] for i in range(n))
        text_ids = tokenizer.encode(text, bos=True)
        if len(text_ids) > max_tokens:
            break
        prompt, ids = text, text_ids
    if not prompt:
        raise ValueError(f"prompt_tokens={max_tokens} leaves no room for a word after BOS")
    return prompt, ids


@torch.no_grad()
def eager_reference(model: Transformer, prompt_ids: list[int], new_tokens: int) -> dict:
    """fp32 eager greedy: the new tokens and the logits that chose each, (new_tokens, V)."""
    from ..generate import EagerDecoder, Recorder, Sampler, generate

    recorder = Recorder(EagerDecoder(model))
    tokens = list(generate(recorder, prompt_ids, new_tokens, Sampler(), stop_ids=()))
    return {"tokens": tokens, "logits": torch.stack(recorder.logits)}  # logits (N, V)
