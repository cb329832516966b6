"""SentencePiece tokenizer, and its export to llama2.c's tokenizer.bin (read by the C++ runner)."""

from __future__ import annotations

import struct
from pathlib import Path

from sentencepiece import SentencePieceProcessor

from .files import atomic_write, check_output_path


class Tokenizer:
    """Text <-> token ids with a SentencePiece model (llama2.c's tok512 or Llama 2's 32K)."""

    def __init__(self, model_path: str | Path):
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {path}")
        path.open("rb").close()  # an unreadable file is a PermissionError naming it, not "not a model"
        self.sp = SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except (RuntimeError, OSError) as exc:
            raise ValueError(
                f"{path} is not a SentencePiece model ({exc}); pass a .model file such as "
                "tok512.model (llama2.c's tokenizer.bin is for the C++ runner)"
            ) from None
        self.path = path
        self.vocab_size: int = self.sp.GetPieceSize()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of text, with BOS first and/or EOS last."""
        ids = self.sp.EncodeAsIds(text)
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: list[int]) -> str:
        """Text of token ids (BOS/EOS dropped)."""
        return self.sp.DecodeIds([int(i) for i in ids])

    def piece(self, token_id: int) -> str:
        """The vocabulary entry of one id, e.g. '▁Once' or '<0x0A>'."""
        return self.sp.IdToPiece(int(token_id))


def export_llama2c(model_path: str | Path, out_path: str | Path) -> Path:
    """Write llama2.c's tokenizer.bin: max_token_length, then (score f32, length i32, bytes) per id."""
    tok = Tokenizer(model_path)
    tokens, scores = [], []
    for i in range(tok.vocab_size):
        piece = tok.sp.IdToPiece(i)
        if i == tok.bos_id:
            piece = "\n<s>\n"
        elif i == tok.eos_id:
            piece = "\n</s>\n"
        tokens.append(piece.replace("\u2581", " ").encode("utf-8"))
        scores.append(tok.sp.GetScore(i))
    out = check_output_path(out_path)
    with atomic_write(out) as f:
        f.write(struct.pack("I", max(len(t) for t in tokens)))
        for token, score in zip(tokens, scores, strict=True):
            f.write(struct.pack("fI", score, len(token)))
            f.write(token)
    return out
