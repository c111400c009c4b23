"""Pretrained backbones: Hugging Face encoders saved locally, composed METER-style with trimmers attached."""

from __future__ import annotations

from .compose import compose_blip, compose_meter, import_blip, import_meter, load_encoder_weights
from .hf import BLIP_ARCHITECTURES, SUPPORTED, HFEncoder, read_blip, read_encoder
from .importer import SOURCE_KINDS, import_model

__all__ = ["SUPPORTED", "BLIP_ARCHITECTURES", "HFEncoder", "read_encoder", "read_blip", "compose_meter",
           "compose_blip", "import_meter", "import_blip", "load_encoder_weights", "import_model", "SOURCE_KINDS"]
