"""TensorRT optimization profiles: parsing and validation, no TensorRT needed.

A profile gives min:opt:max for each dynamic axis: `batch` and `text` (text length; alias
`text_len`). `--profile batch=1:4:16 --profile text=2:16:40` builds one profile; each
`--profile-set "batch=1:1:1,text=2:8:16"` adds another. Axes a profile leaves out default to
batch=1:8:8 and text=2:max_text_len:max_text_len, so that an engine built without `--profile` runs every
shape `trimkit verify` tries with its defaults (batch sizes 1 and 8, any text length the model takes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import ModelConfig
from ..contract import INPUT_NAMES, MAX_BATCH, TOPK_MAX_K, stream_attention_runs
from ..errors import BadInputError

__all__ = ["Profile", "ProfileSpec", "resolve_profiles", "parse_profiles", "validate_profiles", "AXES", "DEFAULT_BATCH", "shapes_outside",
           "check_shapes_in_profiles", "describe_profiles"]

AXES = ("batch", "text")
_ALIASES = {"batch": "batch", "text": "text", "text_len": "text"}
# verify's default --batch-sizes are 1,8: the default profile covers both (opt at 8, the batch a server fills)
DEFAULT_BATCH = (1, 8, 8)


@dataclass(frozen=True)
class Profile:
    batch: tuple[int, int, int]
    text: tuple[int, int, int]

    def input_shapes(self, config: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """min/opt/max shapes of each ONNX input."""
        s = config.image_size
        pix = tuple((b, config.num_channels, s, s) for b in self.batch)
        txt = tuple((b, t) for b, t in zip(self.batch, self.text))
        return dict(zip(INPUT_NAMES, (pix, txt, txt)))

    def contains(self, batch: int, text: int) -> bool:
        return self.batch[0] <= batch <= self.batch[2] and self.text[0] <= text <= self.text[2]

    def to_dict(self) -> dict[str, Any]:
        return {"batch": list(self.batch), "text": list(self.text)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Profile:
        return cls(tuple(d["batch"]), tuple(d["text"]))


def _parse_axis(item: str) -> tuple[str, tuple[int, int, int]]:
    if "=" not in item:
        raise BadInputError(f"profile {item!r}: expected NAME=min:opt:max (names: {', '.join(AXES)})")
    name, _, spec = item.partition("=")
    name = name.strip()
    if name not in _ALIASES:
        raise BadInputError(f"profile {item!r}: unknown axis {name!r}; the dynamic axes are {', '.join(AXES)}")
    parts = spec.split(":")
    if len(parts) == 1:
        parts = parts * 3
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise BadInputError(f"profile {item!r}: min:opt:max must be integers") from None
    if len(values) != 3:
        raise BadInputError(f"profile {item!r}: expected min:opt:max")
    return _ALIASES[name], values  # type: ignore[return-value]


def _profile_from(items: list[str], config: ModelConfig) -> Profile:
    axes: dict[str, tuple[int, int, int]] = {}
    for item in items:
        name, values = _parse_axis(item)
        if name in axes:
            raise BadInputError(f"profile: axis {name!r} given twice")
        axes[name] = values
    t = config.max_text_len
    return Profile(batch=axes.get("batch", DEFAULT_BATCH), text=axes.get("text", (2, t, t)))


@dataclass(frozen=True)
class ProfileSpec:
    """`--profile` items and `--profile-set` strings as the user gave them; they become profiles once the model's
    config is known (`resolve_profiles`), so that the CLI need not load the model to parse them."""

    profile: tuple[str, ...] = ()
    sets: tuple[str, ...] = ()


def resolve_profiles(profiles: ProfileSpec | list[Profile] | None, config: ModelConfig) -> list[Profile]:
    """Profiles checked against `config`: parsed from a spec (None: the defaults), or validated as given."""
    if profiles is None or isinstance(profiles, ProfileSpec):
        spec = profiles or ProfileSpec()
        return parse_profiles(list(spec.profile), list(spec.sets), config)
    validate_profiles(list(profiles), config)
    return list(profiles)


def parse_profiles(profile: list[str] | None, profile_sets: list[str] | None, config: ModelConfig) -> list[Profile]:
    """`--profile` items form the first profile; every `--profile-set` adds one; validated."""
    profiles = []
    if profile:
        profiles.append(_profile_from(profile, config))
    for s in profile_sets or []:
        profiles.append(_profile_from([x for x in s.split(",") if x.strip()], config))
    if not profiles:
        profiles.append(_profile_from([], config))
    validate_profiles(profiles, config)
    return profiles


def validate_profiles(profiles: list[Profile], config: ModelConfig, *, num_heads: int | None = None) -> None:
    """min <= opt <= max, bounds of the exported graph, and TensorRT's TopK K limit."""
    for i, p in enumerate(profiles):
        for name, (lo, opt, hi) in (("batch", p.batch), ("text", p.text)):
            if not lo <= opt <= hi:
                raise BadInputError(f"profile {i}: {name}={lo}:{opt}:{hi} needs min <= opt <= max")
        if p.batch[0] < 1 or p.batch[2] > MAX_BATCH:
            raise BadInputError(f"profile {i}: batch must lie in 1..{MAX_BATCH}")
        if p.text[0] < 2:
            raise BadInputError(f"profile {i}: text length must be >= 2 ([CLS] and one word)")
        if p.text[2] > config.max_text_len:
            raise BadInputError(
                f"profile {i}: text max {p.text[2]} exceeds the model's max_text_len {config.max_text_len}")
    largest_k = max_topk_k(profiles, config, num_heads=num_heads)
    if largest_k > TOPK_MAX_K:
        raise BadInputError(f"TopK K can reach {largest_k} here (tokens per layer), above TensorRT's limit of "
                            f"{TOPK_MAX_K}: lower the text length or the image size")
    batch = max(p.batch[2] for p in profiles)
    if batch > TOPK_MAX_K and max(stream_attention_runs(config)) > 1:
        raise BadInputError(f"batch max {batch}: the packed graph sorts a batch's samples by keep count (a TopK "
                            f"over the batch), and TensorRT's TopK takes at most {TOPK_MAX_K}")


def max_topk_k(profiles: list[Profile], config: ModelConfig, *, num_heads: int | None = None) -> int:
    """The largest K any TopK in the graph can see: a modality's token count, or the head count."""
    text = max(p.text[2] for p in profiles)
    return max(config.num_patches + 1, text, num_heads or config.max_heads)


def describe_profiles(profiles: list[Profile]) -> str:
    """'batch 1..8, text 2..16; batch 1..1, text 2..8' (what an engine accepts, for messages)."""
    return "; ".join(f"batch {p.batch[0]}..{p.batch[2]}, text {p.text[0]}..{p.text[2]}" for p in profiles)


def shapes_outside(profiles: list[Profile], shapes) -> list[tuple[int, int]]:
    """The (batch, text_len) shapes no profile contains, in order, without repeats."""
    out: list[tuple[int, int]] = []
    for b, n in shapes:
        if (b, n) not in out and not any(p.contains(b, n) for p in profiles):
            out.append((b, n))
    return out


def check_shapes_in_profiles(profiles: list[Profile], shapes, artifact) -> None:
    """BadInputError naming every shape that fits no optimization profile (checked before any work)."""
    outside = shapes_outside(profiles, shapes)
    if outside:
        listed = ", ".join(f"batch {b} x text {n}" for b, n in outside[:6])
        more = f" and {len(outside) - 6} more" if len(outside) > 6 else ""
        raise BadInputError(f"{artifact}: {listed}{more} outside every optimization profile "
                            f"({describe_profiles(profiles)})")
