"""Task data: answer sets, tokenizers and (from the training issue on) datasets."""

from __future__ import annotations

from ..errors import BadInputError
from .tokenizer import WordTokenizer

__all__ = ["WordTokenizer", "DATASETS", "task_vocabulary"]

DATASETS = ("easyvqa",)


def task_vocabulary(name: str) -> tuple[list[str], list[str]]:
    """(labels, training texts) of a dataset: what `trimkit init` needs to size a model."""
    if name == "easyvqa":
        from . import easyvqa

        texts, _, _ = easyvqa.questions("train")
        return easyvqa.answers(), texts
    raise BadInputError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
