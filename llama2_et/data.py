"""TinyStories: read the stories, split them, train a tokenizer, pretokenize into shards, serve batches.

The pipeline (each arrow one function):
stories (.txt / .json shards) -> `split_stories` -> `train_tokenizer` (sentencepiece BPE)
-> `pretokenize` (uint16 .bin shards, BOS before each story) -> `TokenBatches` (random (x, y) windows).
`prepare_data` runs it once into a folder and reuses it while the inputs stay the same.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sentencepiece import SentencePieceProcessor, SentencePieceTrainer
from tqdm.auto import tqdm

from . import assets
from .contract import BOS_ID, EOS_ID
from .files import atomic_write_bytes, atomic_write_text

END_OF_TEXT = "<|endoftext|>"  # separates stories in the published TinyStories-*.txt files
TOKEN_DTYPE = np.uint16  # as llama2.c: every vocabulary up to 65,536 ids fits
# Published files of roneneldan/TinyStories (see assets.ASSETS)
TINYSTORIES_FILES = (
    "TinyStories_all_data.tar.gz",  # 50 JSON shards data00..data49.json (llama2.c uses these)
    "TinyStories-train.txt",
    "TinyStories-valid.txt",
    "TinyStoriesV2-GPT4-train.txt",
    "TinyStoriesV2-GPT4-valid.txt",
)
TOKENIZER_STORIES = 200_000  # stories a tokenizer trains on at most (the full train split has ~2.1M)
# 2,316 real stories of the training split (2 MB): an asset cut from a published byte range (see assets)
SAMPLE = "tinystories_train_sample.txt"


def default_stories() -> str:
    """The stories `train` and the bench's perplexity use unless told: the 2,316-story sample, read from
    LLAMA2_ET_DATA or downloaded, cut and sha256-checked once (`assets.fetch`), so every run reads the
    same bytes."""
    return SAMPLE


def resolve_stories(name_or_path: str | Path) -> Path:
    """An existing file or folder of stories, or a TinyStories file name (an asset: see `assets.fetch`).

    A .tar.gz of JSON shards is unpacked beside itself once, and the folder is used from then on.
    """
    path = Path(name_or_path)
    if path.exists():
        return path
    name = str(name_or_path)
    if name not in (*TINYSTORIES_FILES, SAMPLE):
        raise FileNotFoundError(
            f"stories {name!r} not found: pass a TinyStories .txt/.json file or a folder of them, "
            f"or one of the published files {', '.join(TINYSTORIES_FILES)} or {SAMPLE}"
        )
    if (unpacked := _extracted_dir(assets.local_path(name))).is_dir():
        return unpacked
    return _extracted(assets.fetch(name))


def _extracted_dir(archive: Path) -> Path:
    """The folder a .tar.gz unpacks into (the archive's own path for other files)."""
    return archive.with_name(archive.name.removesuffix(".tar.gz"))


def _extracted(path: Path) -> Path:
    """A .tar.gz of JSON shards unpacked beside itself (once); other paths unchanged."""
    if not path.name.endswith(".tar.gz"):
        return path
    folder = _extracted_dir(path)
    if not folder.is_dir():
        tmp = folder.with_name(folder.name + ".partial")
        with tarfile.open(path) as archive:
            archive.extractall(tmp, filter="data")
        tmp.rename(folder)
    return folder


def story_files(path: str | Path) -> list[Path]:
    """The story files of a path: itself, or a folder's *.json then *.txt files in name order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"stories not found: {path}")
    files = sorted(path.glob("*.json")) + sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path} holds no .json or .txt story files")
    return files


def read_stories(path: str | Path) -> list[str]:
    """Stories of one file: a TinyStories JSON shard (list of {'story': ...}) or <|endoftext|>-separated text."""
    path = Path(path)
    if path.suffix == ".json":
        try:
            records = json.loads(_read_utf8(path))
            texts = [record["story"] for record in records]
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise ValueError(
                f"{path} is not a TinyStories JSON shard (a list of objects with a 'story' field): {exc!r}"
            ) from None
    elif path.suffix == ".txt":
        texts = _read_utf8(path).split(END_OF_TEXT)
    else:
        raise ValueError(f"{path}: expected a TinyStories .json shard or .txt file, got {path.suffix!r}")
    return [story for text in texts if (story := text.strip())]


def _read_utf8(path: Path) -> str:
    """A file's text, or a ValueError naming the file and the byte offset where it stops being UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path} is not UTF-8 text: byte {exc.start:,} is 0x{data[exc.start]:02x} ({exc.reason}); "
            "convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None


def split_stories(stories: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A deterministic (train, val) split: a seeded permutation picks round(val_fraction * n) stories."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = round(val_fraction * len(stories))
    if n_val < 1 or n_val >= len(stories):
        raise ValueError(
            f"{len(stories)} stories are too few to hold out {val_fraction:.0%} for validation; "
            "give more stories or change val_fraction"
        )
    is_val = np.zeros(len(stories), dtype=bool)
    is_val[np.random.default_rng(seed).permutation(len(stories))[:n_val]] = True
    train = [s for s, v in zip(stories, is_val, strict=True) if not v]
    val = [s for s, v in zip(stories, is_val, strict=True) if v]
    return train, val


def train_tokenizer(
    stories: Iterable[str], model_prefix: str | Path, vocab_size: int = 512, num_threads: int | None = None
) -> Path:
    """Train a SentencePiece BPE tokenizer as llama2.c's `tinystories.py train_vocab`; returns the .model.

    Byte fallback (any UTF-8 text encodes), digits split, the identity normalizer (text is kept
    as is), ids unk=0 and contract.py's BOS_ID, EOS_ID. Each line of a story is one training sentence.
    """
    lines = (line for story in stories for line in story.splitlines() if line.strip())
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    try:
        SentencePieceTrainer.train(
            sentence_iterator=lines,
            model_prefix=str(model_prefix),
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=1.0,
            num_threads=num_threads or os.cpu_count() or 1,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            byte_fallback=True,
            normalization_rule_name="identity",
            unk_id=0,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise ValueError(f"sentencepiece could not train a {vocab_size}-piece tokenizer: {exc}") from None
    return model_prefix.with_suffix(".model")


def pretokenize(
    stories: list[str],
    tokenizer_model: str | Path,
    out_dir: str | Path,
    split: str,
    shard_tokens: int = 1 << 24,
) -> list[Path]:
    """Encode stories (BOS before each) into uint16 shards `{split}_000.bin`, ...; returns their paths.

    A shard closes after the story that takes it past shard_tokens tokens, so stories never straddle shards.
    """
    sp = SentencePieceProcessor(model_file=str(tokenizer_model))
    if sp.vocab_size() > np.iinfo(TOKEN_DTYPE).max + 1:
        raise ValueError(f"{tokenizer_model}: {sp.vocab_size()} ids do not fit uint16 shards")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        path = atomic_write_bytes(
            out_dir / f"{split}_{len(shards):03d}.bin", np.concatenate(pending).tobytes()
        )
        shards.append(path)
        pending.clear()

    pending_tokens = 0
    chunk = 512  # stories encoded per call (sentencepiece encodes a list in parallel)
    with tqdm(total=len(stories), desc=f"pretokenize {split}", unit="story") as bar:
        for start in range(0, len(stories), chunk):
            for ids in sp.encode(stories[start : start + chunk]):
                pending.append(np.array([sp.bos_id(), *ids], dtype=TOKEN_DTYPE))
                pending_tokens += len(pending[-1])
                if pending_tokens >= shard_tokens:
                    flush()
                    pending_tokens = 0
            bar.update(len(stories[start : start + chunk]))
    if pending:
        flush()
    return shards


def open_shard(path: str | Path) -> np.memmap:
    """A token shard as a read-only uint16 memmap (clear errors for missing or empty files)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token shard not found: {path}; run pretokenize (or prepare_data) first")
    if path.stat().st_size < 2 or path.stat().st_size % 2:
        raise ValueError(f"{path} is not a uint16 token shard ({path.stat().st_size} bytes)")
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy (nats/token) of the token frequencies: the loss of the best model that ignores context."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def bigram_entropy(tokens: np.ndarray) -> float:
    """Conditional entropy H(next | previous) (nats/token) of the stream's adjacent pairs.

    The loss of the best model that sees only the previous token, fitted to these very tokens: no
    bigram table scores lower on them, so a model that does is using more context than one token.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) < 2:
        raise ValueError(f"a bigram entropy needs at least 2 tokens, got {len(tokens)}")
    ids = int(tokens.max()) + 1
    pairs, pair_counts = np.unique(
        tokens[:-1] * ids + tokens[1:], return_counts=True
    )  # pair = prev * ids + next
    previous_counts = np.bincount(tokens[:-1])[pairs // ids]  # how often each pair's first token leads a pair
    p = pair_counts / pair_counts.sum()
    return float(-(p * np.log(pair_counts / previous_counts)).sum())


class TokenBatches:
    """Fixed-length (x, y) windows from memory-mapped shards; y is x shifted by one token.

    `batch(index)` is a pure function of (seed, index), so a resumed or distributed run draws
    exactly the batches an uninterrupted single-process run would.
    """

    def __init__(self, shards: list[str | Path], seq_len: int, batch_size: int, seed: int = 0):
        self.tokens = [open_shard(p) for p in shards]
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        usable = np.array([max(len(t) - seq_len, 0) for t in self.tokens])  # window starts per shard
        if usable.sum() == 0:
            raise ValueError(
                f"shards {[str(p) for p in shards]} hold {sum(map(len, self.tokens))} tokens, too few for "
                f"one window of seq_len + 1 = {seq_len + 1}; give more stories or a shorter max_seq_len"
            )
        self.shard_weights = usable / usable.sum()

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The index-th random batch: x, y (B, L) int64, windows chosen uniformly over all shards."""
        rng = np.random.default_rng([self.seed, index])
        shard_ids = rng.choice(len(self.tokens), size=self.batch_size, p=self.shard_weights)
        rows = []
        for s in shard_ids:
            start = int(rng.integers(0, len(self.tokens[s]) - self.seq_len))
            rows.append(self.tokens[s][start : start + self.seq_len + 1])
        chunk = torch.from_numpy(np.stack(rows).astype(np.int64))  # (B, L + 1)
        return chunk[:, :-1], chunk[:, 1:]

    def windows(self, max_windows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Consecutive non-overlapping windows x, y (N, L) in shard order: a fixed evaluation set."""
        rows = [
            tokens[start : start + self.seq_len + 1]
            for tokens in self.tokens
            for start in range(0, len(tokens) - self.seq_len, self.seq_len)
        ][:max_windows]
        chunk = torch.from_numpy(np.stack(rows).astype(np.int64))  # (N, L + 1)
        return chunk[:, :-1], chunk[:, 1:]


@dataclass
class PreparedData:
    """What `prepare_data` made: tokenizer files, shards, and the split sizes."""

    tokenizer_model: str
    tokenizer_bin: str | None
    train_shards: list[str]
    val_shards: list[str]
    train_stories: int
    val_stories: int
    train_tokens: int
    val_tokens: int


def prepare_data(
    source: str | Path,
    out_dir: str | Path,
    vocab_size: int = 512,
    tokenizer_model: str | Path | None = None,
    val_fraction: float = 0.05,
    seed: int = 0,
    shard_tokens: int = 1 << 24,
) -> PreparedData:
    """Stories -> split -> tokenizer (trained on the train split unless given) -> shards, cached in out_dir.

    The result is reused while the source files (names, sizes, mtimes) and settings are unchanged.
    """
    files = story_files(resolve_stories(source))
    out_dir = Path(out_dir)
    recipe = {
        "files": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files],
        "vocab_size": vocab_size,
        "tokenizer": str(Path(tokenizer_model).resolve()) if tokenizer_model else None,
        "val_fraction": val_fraction,
        "seed": seed,
        "shard_tokens": shard_tokens,
    }
    manifest = out_dir / "manifest.json"
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        if saved["recipe"] == recipe:
            return PreparedData(**saved["prepared"])
    stories = [story for f in files for story in read_stories(f)]
    if not stories:
        raise ValueError(f"no stories in {', '.join(map(str, files))}: the files are empty")
    train, val = split_stories(stories, val_fraction, seed)
    tokenizer_bin = None
    if tokenizer_model is None:
        tokenizer_model = train_tokenizer(train[:TOKENIZER_STORIES], out_dir / f"tok{vocab_size}", vocab_size)
        from .tokenizer import export_llama2c

        tokenizer_bin = str(export_llama2c(tokenizer_model, out_dir / f"tok{vocab_size}.bin"))
    manifest.unlink(missing_ok=True)  # the old shards go next: never leave a manifest that lists them
    for old in [*out_dir.glob("train_*.bin"), *out_dir.glob("val_*.bin")]:
        old.unlink()
    train_shards = pretokenize(train, tokenizer_model, out_dir, "train", shard_tokens)
    val_shards = pretokenize(val, tokenizer_model, out_dir, "val", shard_tokens)
    prepared = PreparedData(
        tokenizer_model=str(tokenizer_model),
        tokenizer_bin=tokenizer_bin,
        train_shards=[str(p) for p in train_shards],
        val_shards=[str(p) for p in val_shards],
        train_stories=len(train),
        val_stories=len(val),
        train_tokens=sum(p.stat().st_size // 2 for p in train_shards),
        val_tokens=sum(p.stat().st_size // 2 for p in val_shards),
    )
    atomic_write_text(manifest, json.dumps({"recipe": recipe, "prepared": asdict(prepared)}, indent=1))
    return prepared
