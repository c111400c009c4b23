"""Word-level tokenizer built from training questions and stored inside the checkpoint."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ..errors import BadInputError

__all__ = ["WordTokenizer", "PAD", "UNK", "CLS"]

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
_WORD = re.compile(r"[a-z0-9]+")


class WordTokenizer:
    """Lower-cased alphanumeric words; ids 0/1/2 are [PAD]/[UNK]/[CLS]; [CLS] starts every text."""

    def __init__(self, vocab: Sequence[str], max_len: int) -> None:
        if list(vocab[:3]) != [PAD, UNK, CLS]:
            raise BadInputError("tokenizer vocabulary must start with [PAD], [UNK], [CLS]")
        if max_len < 2:
            raise BadInputError("tokenizer max_len must be >= 2")
        self.vocab = list(vocab)
        self.max_len = max_len
        self.index = {w: i for i, w in enumerate(self.vocab)}
        if len(self.index) != len(self.vocab):
            raise BadInputError("tokenizer vocabulary has duplicate words")

    @staticmethod
    def words(text: str) -> list[str]:
        return _WORD.findall(text.lower())

    @classmethod
    def build(cls, texts: Iterable[str], max_len: int) -> WordTokenizer:
        words = sorted({w for t in texts for w in cls.words(t)})
        return cls([PAD, UNK, CLS, *words], max_len)

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return 0

    def encode_one(self, text: str) -> list[int]:
        words = self.words(text)
        if not words:
            raise BadInputError(f"empty text: {text!r} has no words")
        ids = [self.index[CLS]] + [self.index.get(w, self.index[UNK]) for w in words]
        return ids[: self.max_len]  # longer texts are truncated to the position-embedding limit

    def encode(self, texts: Sequence[str], pad_to: int | None = None) -> tuple[Tensor, Tensor]:
        """-> input_ids (B, L) int64 and attention_mask (B, L) int64, L = longest (or pad_to)."""
        rows = [self.encode_one(t) for t in texts]
        length = max(len(r) for r in rows) if pad_to is None else pad_to
        if length > self.max_len:
            raise BadInputError(f"text length {length} exceeds the model's max_text_len {self.max_len}")
        ids = torch.zeros(len(rows), length, dtype=torch.int64)
        mask = torch.zeros(len(rows), length, dtype=torch.int64)
        for i, r in enumerate(rows):
            r = r[:length]
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids, mask

    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.vocab[i] if 0 <= i < len(self.vocab) else UNK for i in ids]

    def to_dict(self) -> dict:
        return {"type": "word", "vocab": list(self.vocab), "max_len": self.max_len}

    @classmethod
    def from_dict(cls, d: dict) -> WordTokenizer:
        if d.get("type") != "word":
            raise BadInputError(f"unknown tokenizer type {d.get('type')!r}")
        return cls(d["vocab"], int(d["max_len"]))
