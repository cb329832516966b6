"""TinyStories data: reading both published formats, the split, the tokenizer, shards and batches."""

import dataclasses
import json
import math
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sentencepiece import SentencePieceProcessor
from sentencepiece import sentencepiece_model_pb2 as spm_pb2

from llama2_et import assets, data
from llama2_et.data import (
    SAMPLE,
    TokenBatches,
    bigram_entropy,
    open_shard,
    prepare_data,
    pretokenize,
    read_stories,
    resolve_stories,
    split_stories,
    story_files,
    train_tokenizer,
    unigram_entropy,
)


@pytest.fixture(scope="module")
def stories(data_dir):
    return read_stories(data_dir / SAMPLE)


def test_sample_reads_as_2316_stories(stories, data_dir):
    text = (data_dir / SAMPLE).read_text(encoding="utf-8")
    assert len(stories) == 2316 == text.count("<|endoftext|>")  # the count data/README.md states
    assert stories[0].startswith("One day, a little girl named Lily found a needle in her room.")
    assert all(s == s.strip() and s and "<|endoftext|>" not in s for s in stories)


def test_json_shards_in_the_published_format(tmp_path, stories):
    """TinyStories_all_data/dataNN.json: a list of records whose 'story' field is the text."""
    for i, chunk in enumerate((stories[:3], stories[3:5])):
        records = [{"story": f"\n\n{s}  ", "instruction": {"words": []}, "source": "GPT-4"} for s in chunk]
        (tmp_path / f"data{i:02d}.json").write_text(json.dumps(records))
    assert [p.name for p in story_files(tmp_path)] == ["data00.json", "data01.json"]
    assert [s for f in story_files(tmp_path) for s in read_stories(f)] == stories[:5]


def test_split_is_deterministic_disjoint_and_complete(stories):
    train, val = split_stories(stories, val_fraction=0.05, seed=0)
    assert (len(train), len(val)) == (2200, 116)  # round(0.05 * 2316) held out
    assert sorted(train + val) == sorted(stories)
    assert (train, val) == split_stories(stories, 0.05, seed=0)
    assert val != split_stories(stories, 0.05, seed=1)[1]


def test_tokenizer_is_trained_like_llama2c_tok512(tmp_path, stories, data_dir):
    model_path = train_tokenizer(stories[:400], tmp_path / "tok", vocab_size=512, num_threads=1)
    ours, ref = spm_pb2.ModelProto(), spm_pb2.ModelProto()
    ours.ParseFromString(model_path.read_bytes())
    ref.ParseFromString((data_dir / "tok512.model").read_bytes())  # made by llama2.c train_vocab
    for name in ("model_type", "vocab_size", "character_coverage", "split_digits", "byte_fallback"):
        assert getattr(ours.trainer_spec, name) == getattr(ref.trainer_spec, name), name
    assert ours.trainer_spec.allow_whitespace_only_pieces == ref.trainer_spec.allow_whitespace_only_pieces
    assert ours.normalizer_spec.name == ref.normalizer_spec.name == "identity"
    sp = SentencePieceProcessor(model_file=str(model_path))
    assert (sp.vocab_size(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (512, 0, 1, 2)
    text = stories[500] + " Zoë paid 42 € 🙂"  # unseen story; accents, digits and emoji via byte fallback
    assert sp.decode(sp.encode(text)) == text
    assert sp.unk_id() not in sp.encode(text)


def test_pretokenize_writes_bos_and_story_ids_in_shards(tmp_path, stories, data_dir):
    tokenizer = data_dir / "tok512.model"
    shards = pretokenize(stories[:60], tokenizer, tmp_path, "train", shard_tokens=5000)
    sp = SentencePieceProcessor(model_file=str(tokenizer))
    expected = np.concatenate([[sp.bos_id(), *sp.encode(s)] for s in stories[:60]])
    assert len(shards) > 1 and [p.name for p in shards][:2] == ["train_000.bin", "train_001.bin"]
    assert all(open_shard(p)[0] == sp.bos_id() for p in shards)  # stories never straddle shards
    assert np.array_equal(np.concatenate([open_shard(p) for p in shards]), expected)


def counting_shards(tmp_path, sizes):
    """Shards whose tokens count up (shard k starts at 10,000 k) so a window shows where it came from."""
    paths = []
    for k, n in enumerate(sizes):
        paths.append(tmp_path / f"train_{k:03d}.bin")
        (np.arange(n) + 10_000 * k).astype(np.uint16).tofile(paths[-1])
    return paths


def test_batches_are_shifted_contiguous_windows_and_seeded(tmp_path):
    shards = counting_shards(tmp_path, [3000, 1000])
    batches = TokenBatches(shards, seq_len=16, batch_size=64, seed=7)
    x, y = batches.batch(0)
    assert x.shape == y.shape == (64, 16) and str(x.dtype) == "torch.int64"
    assert (y == x + 1).all() and (x[:, 1:] == x[:, :-1] + 1).all()  # one contiguous window per row
    shard = x[:, 0] // 10_000
    assert (y[:, -1] - 10_000 * shard < torch.where(shard == 0, 3000, 1000)).all()  # inside its shard
    assert 0 < shard.sum() < 64  # both shards drawn
    assert (x == batches.batch(0)[0]).all() and not (x == batches.batch(1)[0]).all()
    assert not (x == TokenBatches(shards, 16, 64, seed=8).batch(0)[0]).all()


def test_windows_cover_the_shards_without_overlap(tmp_path):
    shards = counting_shards(tmp_path, [100, 40])
    x, y = TokenBatches(shards, seq_len=16, batch_size=4).windows()
    assert x.shape == (6 + 2, 16)  # (100 - 1) // 16 + (40 - 1) // 16 windows
    assert x[:, 0].tolist() == [0, 16, 32, 48, 64, 80, 10_000, 10_016]
    assert (y == x + 1).all()
    assert len(TokenBatches(shards, 16, 4).windows(max_windows=3)[0]) == 3


def test_unigram_entropy_matches_the_definition():
    tokens = np.random.default_rng(0).integers(0, 50, size=5000) ** 2 % 97
    counts = Counter(tokens.tolist())
    expected = -sum(c / len(tokens) * math.log(c / len(tokens)) for c in counts.values())
    assert unigram_entropy(tokens) == pytest.approx(expected, rel=1e-12)
    assert unigram_entropy(np.arange(256).repeat(3)) == pytest.approx(math.log(256))


def test_bigram_entropy_matches_the_definition():
    tokens = np.random.default_rng(0).integers(0, 50, size=5000) ** 2 % 97
    pairs = Counter(zip(tokens[:-1].tolist(), tokens[1:].tolist(), strict=True))
    firsts = Counter(tokens[:-1].tolist())
    n = len(tokens) - 1
    expected = -sum(c / n * math.log(c / firsts[a]) for (a, _), c in pairs.items())
    assert bigram_entropy(tokens) == pytest.approx(expected, rel=1e-12)
    assert bigram_entropy(np.tile(np.arange(7), 100)) == 0.0  # each token fixes the next
    # a de Bruijn cycle holds each of the 16 pairs of 4 ids once: the previous id says nothing, H = ln 4
    de_bruijn = np.array([0, 0, 1, 0, 2, 0, 3, 1, 1, 2, 1, 3, 2, 2, 3, 3])
    assert bigram_entropy(np.append(np.tile(de_bruijn, 30), 0)) == pytest.approx(math.log(4), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        bigram_entropy(np.array([5]))


def llama2c_tokenizer_scores(path: str) -> list[float]:
    """The scores of a llama2.c tokenizer.bin, parsed by its format: max length, then (score, length, bytes)."""
    data, offset, scores = Path(path).read_bytes(), 4, []
    while offset < len(data):
        score, length = struct.unpack_from("fI", data, offset)
        scores.append(score)
        offset += 8 + length
    assert offset == len(data)
    return scores


def test_prepare_data_splits_tokenizes_and_reuses(tmp_path, data_dir):
    prepared = prepare_data(data_dir / SAMPLE, tmp_path, vocab_size=512)
    assert (prepared.train_stories, prepared.val_stories) == (2200, 116)
    sp = SentencePieceProcessor(model_file=prepared.tokenizer_model)
    assert sp.vocab_size() == 512
    assert llama2c_tokenizer_scores(prepared.tokenizer_bin) == [sp.GetScore(i) for i in range(512)]
    train_tokens = np.concatenate([open_shard(p) for p in prepared.train_shards])
    assert len(train_tokens) == prepared.train_tokens and (train_tokens == 1).sum() == 2200  # one BOS each
    stamp = [open(p, "rb").read() for p in prepared.train_shards]
    assert prepare_data(data_dir / SAMPLE, tmp_path, vocab_size=512) == prepared  # from the manifest
    assert [open(p, "rb").read() for p in prepared.train_shards] == stamp


def test_missing_and_empty_data_get_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no_such.txt"):
        prepare_data(tmp_path / "no_such.txt", tmp_path / "out")
    (tmp_path / "empty.txt").write_text("\n<|endoftext|>\n")
    with pytest.raises(ValueError, match="no stories in .*empty.txt"):
        prepare_data(tmp_path / "empty.txt", tmp_path / "out")
    (tmp_path / "bad.json").write_text(json.dumps([{"text": "no story field"}]))
    with pytest.raises(ValueError, match="'story' field"):
        read_stories(tmp_path / "bad.json")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="no .json or .txt"):
        story_files(tmp_path / "folder")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.bin"):
        open_shard(tmp_path / "empty.bin")
    with pytest.raises(ValueError, match="too few for one window"):
        TokenBatches(counting_shards(tmp_path, [10]), seq_len=16, batch_size=1)
    with pytest.raises(ValueError, match="too few to hold out"):
        split_stories(["one story"], 0.05, seed=0)


def test_published_files_resolve_locally_or_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA2_ET_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"LLAMA2_ET_DATA={tmp_path} must hold TinyStories-valid.txt"):
        resolve_stories("TinyStories-valid.txt")
    (tmp_path / "TinyStories-valid.txt").write_text("A story.\n<|endoftext|>\n")
    assert read_stories(resolve_stories("TinyStories-valid.txt")) == ["A story."]
    # offline and nothing cached: the error names the URL and the folder to put the file in
    monkeypatch.delenv("LLAMA2_ET_DATA")
    monkeypatch.setenv("LLAMA2_ET_CACHE", str(tmp_path / "cache"))
    offline = dataclasses.replace(assets.ASSETS["TinyStories-train.txt"], url="http://127.0.0.1:9/x.txt")
    monkeypatch.setitem(assets.ASSETS, "TinyStories-train.txt", offline)
    with pytest.raises(FileNotFoundError, match="could not download .*TinyStories-train.txt"):
        resolve_stories("TinyStories-train.txt")
    offline = dataclasses.replace(assets.ASSETS[SAMPLE], url="http://127.0.0.1:9/sample.txt")
    monkeypatch.setitem(assets.ASSETS, SAMPLE, offline)
    with pytest.raises(FileNotFoundError, match=f"could not download .*{SAMPLE}"):
        resolve_stories(SAMPLE)


def test_non_utf8_text_names_the_file_and_the_byte(tmp_path):
    good = b"Once upon a time.\n<|endoftext|>\nTom was happy.\n"
    (tmp_path / "latin1.txt").write_bytes(good + "Zoë".encode("latin1"))
    with pytest.raises(ValueError, match=f"latin1.txt is not UTF-8 text: byte {len(good) + 2} is 0xeb"):
        read_stories(tmp_path / "latin1.txt")


def test_an_interrupted_prepare_never_leaves_a_manifest_without_its_shards(tmp_path, data_dir, monkeypatch):
    stories = tmp_path / "stories.txt"
    stories.write_text("".join(f"{s}\n<|endoftext|>\n" for s in read_stories(data_dir / SAMPLE)[:60]))
    tokenizer = data_dir / "tok512.model"
    prepared = prepare_data(stories, tmp_path / "out", tokenizer_model=tokenizer, val_fraction=0.1)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "pretokenize", interrupted)
    with pytest.raises(KeyboardInterrupt):  # another split: the old shards are deleted, then it stops
        prepare_data(stories, tmp_path / "out", tokenizer_model=tokenizer, val_fraction=0.2)
    monkeypatch.undo()
    assert not (tmp_path / "out" / "manifest.json").exists()
    again = prepare_data(stories, tmp_path / "out", tokenizer_model=tokenizer, val_fraction=0.1)
    assert again == prepared and all(open_shard(p).size for p in again.train_shards)
