"""`trimkit import`: which pretrained source a command line names, and the model it becomes.

One dispatch, so that a new source kind is one more entry here: a single directory (SOURCE) is read
by its Hugging Face `model_type`; a pair of encoders (--vision/--text) is composed METER-style.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInputError
from ..models import MeterModel

__all__ = ["import_model", "SOURCE_KINDS"]

# model_type of a single-directory SOURCE -> what it holds
SOURCE_KINDS = {"blip": "BLIP (BlipForQuestionAnswering, BlipForImageTextRetrieval)"}


def import_model(source: str | Path | None = None, *, vision: str | Path | None = None,
                 text: str | Path | None = None, data: str, fusion_layers: int = 2, image_size: int | None = None,
                 max_text_len: int = 40, fusion_hidden: int | None = None, fusion_heads: int | None = None,
                 pool_product: bool = False, seed: int = 0) -> MeterModel:
    """A trimkit model (trimmers attached, all keeping) from a pretrained SOURCE directory or a
    --vision/--text encoder pair; bad combinations are one-line BadInputErrors."""
    from .compose import import_blip, import_meter

    if fusion_layers < 0:
        raise BadInputError("--fusion-layers must be >= 0")
    if source is not None:
        if vision is not None or text is not None:
            raise BadInputError("give either a BLIP SOURCE directory or --vision and --text, not both")
        from .hf import read_config

        kind = read_config(Path(source)).get("model_type")
        if kind not in SOURCE_KINDS:
            raise BadInputError(f"{source}: a {kind!r} model is one encoder: compose it with --vision DIR --text DIR "
                                "(SOURCE is for BLIP)")
        return import_blip(source, data=data, image_size=image_size, max_text_len=max_text_len,
                           pool_product=pool_product, seed=seed)
    if vision is None or text is None:
        raise BadInputError("import needs a BLIP SOURCE directory, or both --vision DIR and --text DIR; supported: "
                            "blip (BlipForQuestionAnswering, BlipForImageTextRetrieval), vit, dinov2 (--vision), "
                            "bert (--text)")
    return import_meter(vision, text, data=data, fusion_layers=fusion_layers, image_size=image_size,
                        max_text_len=max_text_len, fusion_hidden=fusion_hidden, fusion_heads=fusion_heads,
                        pool_product=pool_product, seed=seed)
