"""`trimkit eval`: a checkpoint on a dataset split, in every trim mode."""

from __future__ import annotations

import os
from typing import Any

from .checkpoint import load_checkpoint
from .data import load_dataset
from .errors import BadInputError
from .train.evaluate import evaluate

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(path: str | os.PathLike, data: str, *, split: str = "test", samples: int | None = None,
                        batch_size: int = 256, seed: int = 0, modes: tuple[str, ...] = ("off", "mask", "prune"),
                        per_instance: bool = False) -> dict[str, Any]:
    model = load_checkpoint(path)
    if model.tokenizer is None:
        raise BadInputError(f"{path}: checkpoint has no tokenizer")
    if split not in ("train", "val", "test"):
        raise BadInputError(f"unknown split {split!r}; choose train, val or test")
    task = load_dataset(data, tokenizer=model.tokenizer, labels=model.labels, image_size=model.config.image_size,
                        seed=seed, splits=(split,))
    res = evaluate(model, task.split(split), modes=modes, samples=samples, batch_size=batch_size, seed=seed,
                   decisions=True)
    if not per_instance:
        res.pop("per_instance")
    c = model.config
    layers = [{"depth": d, "kind": "fusion" if c.is_fusion(d) else "encoder"}
              for d in range(model.trim.first_trimmed_layer, c.num_layers)]
    return {"checkpoint": str(path), "data": data, "split": split, "modes": list(modes), "trimmed_layers": layers,
            **res}
