"""Tokenizers stored inside the checkpoint: a word-level one built from the training questions, and
BERT's WordPiece (for imported text encoders that bring their own `vocab.txt`)."""

from __future__ import annotations

import abc
import re
import unicodedata
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ..errors import BadInputError

__all__ = ["WordTokenizer", "WordPieceTokenizer", "tokenizer_from_dict", "PAD", "UNK", "CLS", "SEP"]

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
_WORD = re.compile(r"[a-z0-9]+")


class _Padder(abc.ABC):
    """`encode` and `decode` for tokenizers that define `encode_one`, `max_len`, `pad_id` and `vocab`."""

    max_len: int
    pad_id: int
    vocab: list[str]

    @abc.abstractmethod
    def encode_one(self, text: str) -> list[int]:
        """One text -> ids, [CLS] first, at most `max_len`."""

    def encode(self, texts: Sequence[str], pad_to: int | None = None) -> tuple[Tensor, Tensor]:
        """-> input_ids (B, L) int64 and attention_mask (B, L) int64, L = longest (or pad_to)."""
        rows = [self.encode_one(t) for t in texts]
        length = max(len(r) for r in rows) if pad_to is None else pad_to
        if length > self.max_len:
            raise BadInputError(f"text length {length} exceeds the model's max_text_len {self.max_len}")
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.int64)
        mask = torch.zeros(len(rows), length, dtype=torch.int64)
        for i, r in enumerate(rows):
            r = r[:length]
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids, mask

    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.vocab[i] if 0 <= i < len(self.vocab) else UNK for i in ids]


class WordTokenizer(_Padder):
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

    def to_dict(self) -> dict:
        return {"type": "word", "vocab": list(self.vocab), "max_len": self.max_len}

    @classmethod
    def from_dict(cls, d: dict) -> WordTokenizer:
        if d.get("type") != "word":
            raise BadInputError(f"unknown tokenizer type {d.get('type')!r}")
        return cls(d["vocab"], int(d["max_len"]))


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


class WordPieceTokenizer(_Padder):
    """BERT's tokenizer: basic split (lower case, accents stripped, punctuation split off), then greedy
    longest-match WordPiece with `##` continuations; texts are [CLS] pieces [SEP]. Same ids as the
    Hugging Face tokenizer of the same `vocab.txt` for ordinary text (no Chinese-character splitting)."""

    def __init__(self, vocab: Sequence[str], max_len: int, *, lowercase: bool = True,
                 strip_accents: bool | None = None) -> None:
        self.vocab = list(vocab)
        self.max_len = max_len
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else bool(strip_accents)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        missing = [t for t in (PAD, UNK, CLS, SEP) if t not in self.index]
        if missing:
            raise BadInputError(f"WordPiece vocabulary lacks {', '.join(missing)}")
        if max_len < 3:
            raise BadInputError("tokenizer max_len must be >= 3 ([CLS], a word, [SEP])")

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return self.index[PAD]

    def _basic(self, text: str) -> list[str]:
        # BERT's clean-up: drop NUL, U+FFFD and control/format characters; other whitespace becomes a space
        text = "".join(" " if ch in "\t\n\r" or unicodedata.category(ch) == "Zs" else ch for ch in text
                       if ch not in "\x00\ufffd" and (ch in "\t\n\r" or not unicodedata.category(ch).startswith("C")))
        if self.lowercase:
            text = text.lower()
        if self.strip_accents:
            text = "".join(ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) != "Mn")
        out: list[str] = []
        for word in text.split():
            cur = ""
            for ch in word:
                if _is_punct(ch):
                    if cur:
                        out.append(cur)
                    out.append(ch)
                    cur = ""
                else:
                    cur += ch
            if cur:
                out.append(cur)
        return out

    def _pieces(self, word: str) -> list[str]:
        if len(word) > 100:
            return [UNK]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                if sub in self.index:
                    pieces.append(sub)
                    break
                end -= 1
            else:
                return [UNK]
            start = end
        return pieces

    def words(self, text: str) -> list[str]:
        """The tokens after [CLS] (WordPiece pieces, then [SEP])."""
        return [p for w in self._basic(text) for p in self._pieces(w)] + [SEP]

    def encode_one(self, text: str) -> list[int]:
        pieces = self.words(text)
        if len(pieces) == 1:
            raise BadInputError(f"empty text: {text!r} has no words")
        ids = [self.index[CLS]] + [self.index[p] for p in pieces]
        if len(ids) > self.max_len:  # truncated, [SEP] kept last
            ids = ids[: self.max_len - 1] + [self.index[SEP]]
        return ids

    def to_dict(self) -> dict:
        return {"type": "wordpiece", "vocab": list(self.vocab), "max_len": self.max_len,
                "lowercase": self.lowercase, "strip_accents": self.strip_accents}

    @classmethod
    def from_dict(cls, d: dict) -> WordPieceTokenizer:
        return cls(d["vocab"], int(d["max_len"]), lowercase=bool(d.get("lowercase", True)),
                   strip_accents=d.get("strip_accents"))


def tokenizer_from_dict(d: dict) -> WordTokenizer | WordPieceTokenizer:
    """The tokenizer a checkpoint or an ONNX file stores."""
    kinds = {"word": WordTokenizer, "wordpiece": WordPieceTokenizer}
    if d.get("type") not in kinds:
        raise BadInputError(f"unknown tokenizer type {d.get('type')!r}; known: {', '.join(kinds)}")
    return kinds[d["type"]].from_dict(d)
