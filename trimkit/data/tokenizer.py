"""Tokenizers stored inside the checkpoint: a word-level one built from the training questions, BERT's
WordPiece (for imported text encoders that bring their own `vocab.txt`) and RoBERTa's byte-level BPE
(imported METER checkpoints, from a tokenizer's `vocab.json` + `merges.txt`)."""

from __future__ import annotations

import abc
import re
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache

import torch
from torch import Tensor

from ..errors import BadInputError

__all__ = ["WordTokenizer", "WordPieceTokenizer", "ByteBPETokenizer", "tokenizer_from_dict", "PAD", "UNK", "CLS", "SEP"]

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

    # whether the text's closing token ([SEP], </s>) stays last when a text is cut to max_len
    keeps_last = False

    def unknown_words(self, text: str) -> list[str]:
        """The text's words the vocabulary lacks (each read as the unknown token), once each, in order."""
        return []

    def dropped(self, text: str) -> list[str]:
        """The tokens `encode_one` cuts off to fit `max_len` (empty when the text fits)."""
        tokens = self.words(text)
        if 1 + len(tokens) <= self.max_len:
            return []
        return tokens[self.max_len - 2: -1] if self.keeps_last else tokens[self.max_len - 1:]

    def text_length(self, text: str) -> int:
        """Tokens the text needs, [CLS] included, before any cut to `max_len`."""
        return 1 + len(self.words(text))


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

    def unknown_words(self, text: str) -> list[str]:
        return list(dict.fromkeys(w for w in self.words(text) if w not in self.index))

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

    keeps_last = True

    def unknown_words(self, text: str) -> list[str]:
        return list(dict.fromkeys(w for w in self._basic(text) if self._pieces(w) == [UNK]))

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


# GPT-2 / RoBERTa pre-tokenization: contractions, letter runs, digit runs, other symbols, each with at most one
# leading space; whitespace runs keep their last space for the next word
_BPE_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@lru_cache(maxsize=1)
def _byte_chars() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (printable Latin-1 bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), ord("\xff") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class ByteBPETokenizer(_Padder):
    """RoBERTa's tokenizer: byte-level BPE over GPT-2's pre-tokenized pieces (no prefix space); texts are
    `<s> pieces </s>`, padded with `<pad>`. Same ids as the Hugging Face RoBERTa tokenizer of the same
    `vocab.json` + `merges.txt`. `vocab` lists the tokens in id order (ids past the file's tokens, if the
    embedding table is larger, are unreachable placeholders)."""

    specials = ("<s>", "<pad>", "</s>", "<unk>")

    def __init__(self, vocab: Sequence[str], merges: Sequence[str], max_len: int) -> None:
        self.vocab = list(vocab)
        self.merges = list(merges)
        self.max_len = max_len
        self.index = {w: i for i, w in enumerate(self.vocab)}
        missing = [t for t in self.specials if t not in self.index]
        if missing:
            raise BadInputError(f"BPE vocabulary lacks {', '.join(missing)}")
        if max_len < 3:
            raise BadInputError("tokenizer max_len must be >= 3 (<s>, a word, </s>)")
        pairs = [tuple(m.split(" ")) for m in self.merges]
        bad = [m for m, p in zip(self.merges, pairs) if len(p) != 2]
        if bad:
            raise BadInputError(f"BPE merge {bad[0]!r} is not two symbols separated by one space")
        self.ranks = {p: i for i, p in enumerate(pairs)}
        self.cls_id, self.sep_id, self.unk_id = self.index["<s>"], self.index["</s>"], self.index["<unk>"]
        self.first_word_id = 1 + max(self.index[t] for t in self.specials)  # random export inputs start here
        self._cache: dict[str, list[str]] = {}
        self._split = None

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return self.index["<pad>"]

    def _bpe(self, piece: str) -> list[str]:
        """Merge the byte characters of one pre-tokenized piece by rank, lowest first."""
        hit = self._cache.get(piece)
        if hit is not None:
            return hit
        word = list(piece)
        while len(word) > 1:
            ranked = [(self.ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(word, word[1:]))]
            ranked = [(r, i) for r, i in ranked if r is not None]
            if not ranked:
                break
            best = min(ranked)[0]
            first, second = self.merges[best].split(" ")
            out, i = [], 0
            while i < len(word):  # merge every occurrence of the best pair, left to right
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    out.append(first + second)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        self._cache[piece] = word
        return word

    keeps_last = True

    def unknown_words(self, text: str) -> list[str]:
        return list(dict.fromkeys(p for p in self.words(text)[:-1] if p not in self.index))

    def words(self, text: str) -> list[str]:
        """The BPE tokens after <s> (then </s>)."""
        if self._split is None:
            from ..errors import import_optional

            # \p{L} / \p{N} classes: the standard library's re has none
            regex = import_optional("regex", "RoBERTa's tokenizer needs the regex package: pip install regex")
            self._split = regex.compile(_BPE_SPLIT)
        table = _byte_chars()
        out: list[str] = []
        for piece in self._split.findall(text):
            out += self._bpe("".join(table[b] for b in piece.encode("utf-8")))
        return out + ["</s>"]

    def encode_one(self, text: str) -> list[int]:
        pieces = self.words(text)
        if len(pieces) == 1 or not text.strip():
            raise BadInputError(f"empty text: {text!r} has no words")
        ids = [self.cls_id] + [self.index.get(p, self.unk_id) for p in pieces]
        if len(ids) > self.max_len:  # truncated, </s> kept last
            ids = ids[: self.max_len - 1] + [self.sep_id]
        return ids

    def to_dict(self) -> dict:
        return {"type": "bpe", "vocab": list(self.vocab), "merges": list(self.merges), "max_len": self.max_len}

    @classmethod
    def from_dict(cls, d: dict) -> ByteBPETokenizer:
        return cls(d["vocab"], d["merges"], int(d["max_len"]))


def tokenizer_from_dict(d: dict) -> WordTokenizer | WordPieceTokenizer | ByteBPETokenizer:
    """The tokenizer a checkpoint or an ONNX file stores."""
    kinds = {"word": WordTokenizer, "wordpiece": WordPieceTokenizer, "bpe": ByteBPETokenizer}
    if d.get("type") not in kinds:
        raise BadInputError(f"unknown tokenizer type {d.get('type')!r}; known: {', '.join(kinds)}")
    return kinds[d["type"]].from_dict(d)
