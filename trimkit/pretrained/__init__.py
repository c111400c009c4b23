"""Pretrained backbones: Hugging Face encoders saved locally, composed METER-style with trimmers attached."""

from __future__ import annotations

from .compose import compose_meter, import_meter, load_encoder_weights
from .hf import SUPPORTED, HFEncoder, read_encoder

__all__ = ["SUPPORTED", "HFEncoder", "read_encoder", "compose_meter", "import_meter", "load_encoder_weights"]
