"""Task data: easy-VQA (from its package), the built-in `shapes` generator, and JSONL files."""

from __future__ import annotations

from .dataset import DATASETS, TaskData, VQASplit, load_dataset, read_jsonl, task_vocabulary
from .tokenizer import WordTokenizer

__all__ = ["WordTokenizer", "DATASETS", "TaskData", "VQASplit", "load_dataset", "read_jsonl", "task_vocabulary"]
