"""The memory roofline of decoding: bytes a decode step reads, the machine's read bandwidth, the fraction reached.

A decode step multiplies one token's activations by every weight matrix, so it reads all of them
from memory; at that size the arithmetic is cheap and the read is the floor of the step's time.
tok/s x bytes/token / bandwidth is how close a runtime comes to that floor.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from ..config import ModelArgs, kv_cache_bytes, param_count
from .rows import Row


def bytes_per_token(
    args: ModelArgs, kv_positions: float, quantized_file_bytes: int | None = None, embedding_bits: int = 32
) -> float:
    """Bytes one decode step reads: the weights it multiplies by and the K, V it attends to.

    Weights: every parameter except the token-embedding table, of which only the token's row is
    read; with tied embeddings the table is also the classifier, read whole. fp32 weights are
    counted from the parameter count; a quantized program's from its file, less the embedding table
    it stores (embedding_bits per entry) beside the quantized classifier. The cache: K and V of
    kv_positions positions in every layer, fp32. Activations are left out: at one token they are a
    few KiB.
    """
    if quantized_file_bytes is None:
        embedding = args.vocab_size * args.dim * 4
        weights = 4 * param_count(args) - (0 if args.tie_embeddings else embedding)
    else:
        weights = quantized_file_bytes - args.vocab_size * args.dim * embedding_bits // 8
    kv_per_position = kv_cache_bytes(args) / args.max_seq_len
    return weights + args.dim * embedding_bits / 8 + kv_per_position * kv_positions


def kv_positions_read(kv_read: str, max_seq_len: int, prompt_tokens: int, new_tokens: int) -> float:
    """Cache positions a decode step reads, averaged over a run's new_tokens - 1 decode steps.

    "all": attention over the whole static cache (masked); "filled": over the positions written so
    far, prompt_tokens + 1 at the first step up to prompt_tokens + new_tokens - 1; "none": no cache.
    """
    if kv_read == "all":
        return float(max_seq_len)
    if kv_read == "filled":
        return prompt_tokens + new_tokens / 2
    if kv_read == "none":
        return 0.0
    raise ValueError(f"unknown kv_read {kv_read!r}; choose all, filled or none")


def read_bandwidth(buffer_bytes: int = 2**30, passes: int = 5) -> dict:
    """Read bandwidth of this machine with torch's thread pool as set: median of passes summing a buffer.

    The buffer should be far larger than the last-level cache, so that each pass reads from memory.
    """
    buffer = torch.ones(buffer_bytes // 4, dtype=torch.float32)  # written once, so its pages exist
    seconds = []
    for _ in range(passes + 1):  # the first pass warms up the thread pool
        start = time.perf_counter()
        buffer.sum()
        seconds.append(time.perf_counter() - start)
    per_pass = [buffer.nbytes / s for s in seconds[1:]]
    return {
        "bytes_per_s": statistics.median(per_pass),
        "per_pass": per_pass,
        "buffer_bytes": buffer.nbytes,
        "threads": torch.get_num_threads(),
        "last_level_cache_bytes": last_level_cache_bytes(),
    }


def last_level_cache_bytes() -> int | None:
    """Size of CPU 0's last-level cache from Linux's sysfs, or None where sysfs does not say.

    A program that reads fewer bytes per token than this can be served from the cache, above the roof.
    """
    sizes = {}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        size = (index / "size").read_text().strip()  # e.g. 32768K
        units = {"K": 2**10, "M": 2**20}
        sizes[int((index / "level").read_text())] = int(size.rstrip("KM")) * units.get(size[-1], 1)
    return sizes[max(sizes)] if sizes else None


def add_roofline(
    results: list[dict],
    rows: list[Row],
    args: ModelArgs,
    prompt_tokens: int,
    new_tokens: int,
    bandwidth: float,
) -> None:
    """Each row's bytes per decoded token and the fraction of the read bandwidth its decode speed reaches.

    `bandwidth` is the run's, measured once at its start. A row that measured the bandwidth right before
    each of its runs (the C++ runner's, `read_bandwidth_per_run`) takes the median of each run's own
    fraction instead: the machine's bandwidth moves during a long run, by ±10% on a shared host.
    """
    for result, row in zip(results, rows, strict=True):
        kv = kv_positions_read(row.kv_read, args.max_seq_len, prompt_tokens, new_tokens)
        quantized = result["file_bytes"] if row.weights != "fp32" else None
        embedding_bits = 8 if row.weights.endswith("-e8") else 32
        result["kv_positions_read"] = kv
        result["bytes_per_token"] = bytes_per_token(args, kv, quantized, embedding_bits)
        per_run = result.get("read_bandwidth_per_run")
        if per_run:
            fractions = [tps / per_s for tps, per_s in zip(result["decode_tps_all"], per_run, strict=True)]
            result["roof_fraction"] = statistics.median(fractions) * result["bytes_per_token"]
        else:
            result["roof_fraction"] = result["decode_tps"] * result["bytes_per_token"] / bandwidth
