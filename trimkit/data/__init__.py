"""Task data: easy-VQA (from its package), the built-in `shapes` generator, and JSONL files."""

from __future__ import annotations

from .dataset import DATASETS, TaskData, VQASplit, load_dataset, read_jsonl, task_vocabulary
from .tokenizer import WordPieceTokenizer, WordTokenizer, tokenizer_from_dict

__all__ = ["WordTokenizer", "WordPieceTokenizer", "tokenizer_from_dict", "DATASETS", "TaskData", "VQASplit",
           "load_dataset", "read_jsonl", "task_vocabulary"]
