"""METER checkpoints (CLIP-ViT image encoder + RoBERTa text encoder + BERT-style co-attention fusion, as the METER
authors publish them, e.g. `meter_clip16_288_roberta_vqa.ckpt`) as trimkit models, trimmers at their stable init:
keeping everything, the model computes METER's own forward.

The file is a PyTorch Lightning checkpoint read with `torch.load(weights_only=True)`; its `state_dict` holds
- `vit_model.visual.*`: OpenAI CLIP's visual transformer (`conv1` without bias, `class_embedding`,
  `positional_embedding` at the fine-tuning resolution, `ln_pre`, `transformer.resblocks.{i}` pre-LN blocks with a
  packed `attn.in_proj_weight` and a QuickGELU MLP, `ln_post` on every token); METER builds it with one block
  fewer than CLIP (11 for ViT-B/16). The CLIP text tower's leftovers (`vit_model.token_embedding`, ...) are unused;
- `text_transformer.*`: a Hugging Face `RobertaModel` of which METER runs the embeddings and the encoder layers
  (position ids start after the padding id; the pooler is unused);
- `cross_modal_{text,image}_transform` (Linear to the fusion width, applied whatever the widths),
  `token_type_embeddings` (text row 0, image row 1) added after them;
- `cross_modal_{text,image}_layers.{i}`: post-LN BERT layers (self-attention, cross-attention to the other
  stream's layer input, FFN); `cross_modal_{text,image}_pooler.dense` + tanh on each stream's first token;
- a head over cat(text, image): `vqa_classifier` (Linear, LayerNorm, GELU, Linear) or `itm_score.fc`.

The checkpoint carries no sizes that its tensors do not show: attention heads are width / `head_dim` (64 in
CLIP ViT-B/16, RoBERTa-base and METER's fusion); LayerNorm epsilons are METER's (CLIP and RoBERTa-base 1e-5,
the BERT-style fusion layers 1e-12, the head 1e-5). Pixels: METER normalizes with CLIP's mean and std; trimkit
feeds [-1, 1], and the difference is folded into the patch projection exactly.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..config import EncoderSpec, ModelConfig, TrimConfig
from ..data.tokenizer import ByteBPETokenizer
from ..errors import BadInputError
from ..models import MeterModel, build_model
from .compose import _fold_normalization
from .hf import interpolate_positions

__all__ = ["METER_TASKS", "CLIP_MEAN", "CLIP_STD", "MeterLayout", "read_meter_state", "meter_layout",
           "meter_shapes", "check_layout", "meter_config", "import_meter_checkpoint", "read_bpe_tokenizer"]

METER_TASKS = ("vqa", "itm")
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
ITM_LABELS = ["mismatch", "match"]  # METER's itm_score: row 1 scores a matching image-text pair
CLIP_EPS, ROBERTA_EPS, FUSION_EPS, HEAD_EPS = 1e-5, 1e-5, 1e-12, 1e-5

_W = ("weight", "bias")
# METER keys that its VQA/ITM forward never reads: the CLIP text tower's leftovers, RoBERTa's pooler and position
# buffers, and the heads of the other tasks (whichever one `task` does not use)
_UNUSED = re.compile(r"^(vit_model\.(token_embedding\.weight|positional_embedding|ln_final\.(weight|bias))"
                     r"|text_transformer\.(pooler\.dense\.(weight|bias)|embeddings\.(position_ids|token_type_ids))"
                     r"|(mlm_score|itm_score|vqa_classifier|nlvr2_classifier|snli_classifier|rank_output)\..+)$")


@dataclass
class MeterLayout:
    """The sizes a METER state dict shows (read from its tensors' shapes)."""

    vision: str  # key prefix of CLIP's visual transformer: "vit_model.visual." (or "vit_model." alone)
    vision_layers: int
    vision_width: int
    vision_mlp: int
    patch: int
    grid: int  # positional_embedding holds grid*grid + 1 rows
    text_layers: int
    text_width: int
    text_mlp: int
    vocab: int
    text_positions: int
    fusion_layers: int
    fusion_width: int
    fusion_mlp: int
    token_types: int
    task: str
    answers: int  # the head's outputs (vqa: answers; itm: 2)


def read_meter_state(path: str | Path) -> dict[str, Tensor]:
    """The `state_dict` of a METER (Lightning) checkpoint, read without unpickling code."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{p}: no such file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BadInputError(f"{p}: refused: the checkpoint needs more than tensors and plain containers to load "
                            f"(weights_only=True: {first[:160]}); trimkit never unpickles code") from None
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file is bad input
        raise BadInputError(f"{p}: not a readable PyTorch checkpoint ({type(e).__name__})") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not any(isinstance(k, str) and k.startswith("vit_model.") for k in state):
        raise BadInputError(f"{p}: not a METER checkpoint (no state_dict with vit_model.* weights)")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise BadInputError(f"{p}: state_dict entry {bad[0]!r} is not a tensor")
    return state


def _count(state: dict[str, Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return 1 + max(found) if found else 0


def meter_layout(state: dict[str, Tensor], task: str, path: str | Path = "<checkpoint>") -> MeterLayout:
    """Sizes from the tensors' shapes; a missing tensor the sizes need is one line naming it."""
    if task not in METER_TASKS:
        why = (" (NLVR2 runs two images through the model per example; trimkit's model takes one)"
               if task == "nlvr2" else "")
        raise BadInputError(f"--task {task}: not supported{why}; choose {' or '.join(METER_TASKS)}")
    vis = "vit_model.visual." if any(k.startswith("vit_model.visual.") for k in state) else "vit_model."

    def get(key: str) -> Tensor:
        if key not in state:
            raise BadInputError(f"{path}: not the METER layout: missing {key}")
        return state[key]

    conv = get(vis + "conv1.weight")  # (Dv, 3, p, p)
    n_pos = get(vis + "positional_embedding").shape[0]
    grid = int(round((n_pos - 1) ** 0.5))
    if grid * grid + 1 != n_pos:
        raise BadInputError(f"{path}: {vis}positional_embedding has {n_pos} rows, not a square grid + 1")
    fusion = get("cross_modal_text_transform.weight")  # (D, Dt)
    head_key = "vqa_classifier.3.weight" if task == "vqa" else "itm_score.fc.weight"
    if head_key not in state:
        heads = sorted({k.split(".")[0] for k in state if k.split(".")[0].endswith(("_classifier", "_score"))})
        hint = ("an NLVR2 checkpoint: NLVR2 runs two images through the model per example, trimkit's model "
                "takes one" if heads == ["nlvr2_classifier"] else
                f"its heads: {', '.join(heads) or 'none'}; --task vqa reads vqa_classifier, itm reads itm_score")
        raise BadInputError(f"{path}: no {task} head ({hint})")
    head = state[head_key]
    return MeterLayout(
        vision=vis, vision_layers=_count(state, re.escape(vis) + r"transformer\.resblocks\.(\d+)\."),
        vision_width=conv.shape[0], vision_mlp=get(vis + "transformer.resblocks.0.mlp.c_fc.weight").shape[0],
        patch=conv.shape[-1], grid=grid,
        text_layers=_count(state, r"text_transformer\.encoder\.layer\.(\d+)\."),
        text_width=get("text_transformer.embeddings.word_embeddings.weight").shape[1],
        text_mlp=get("text_transformer.encoder.layer.0.intermediate.dense.weight").shape[0],
        vocab=get("text_transformer.embeddings.word_embeddings.weight").shape[0],
        text_positions=get("text_transformer.embeddings.position_embeddings.weight").shape[0],
        fusion_layers=_count(state, r"cross_modal_text_layers\.(\d+)\."), fusion_width=fusion.shape[0],
        fusion_mlp=get("cross_modal_text_layers.0.intermediate.dense.weight").shape[0],
        token_types=get("token_type_embeddings.weight").shape[0], task=task, answers=head.shape[0])


def _bert_layer(prefix: str, d: int, mlp: int, *, cross: bool = False) -> dict[str, tuple]:
    """Key -> shape of one Hugging Face BERT/RoBERTa layer (with cross-attention: METER's BertCrossLayer)."""
    out: dict[str, tuple] = {}
    for att in ("attention", "crossattention") if cross else ("attention",):
        for p in ("query", "key", "value"):  # METER's streams meet at the fusion width: keys/values are d wide
            out[f"{prefix}{att}.self.{p}.weight"], out[f"{prefix}{att}.self.{p}.bias"] = (d, d), (d,)
        out[f"{prefix}{att}.output.dense.weight"], out[f"{prefix}{att}.output.dense.bias"] = (d, d), (d,)
        out[f"{prefix}{att}.output.LayerNorm.weight"] = out[f"{prefix}{att}.output.LayerNorm.bias"] = (d,)
    out[f"{prefix}intermediate.dense.weight"], out[f"{prefix}intermediate.dense.bias"] = (mlp, d), (mlp,)
    out[f"{prefix}output.dense.weight"], out[f"{prefix}output.dense.bias"] = (d, mlp), (d,)
    out[f"{prefix}output.LayerNorm.weight"] = out[f"{prefix}output.LayerNorm.bias"] = (d,)
    return out


def meter_shapes(lay: MeterLayout) -> dict[str, tuple[int, ...]]:
    """Every tensor METER's forward reads for `lay.task`, with its shape."""
    v, dv, d, dt = lay.vision, lay.vision_width, lay.fusion_width, lay.text_width
    s: dict[str, tuple[int, ...]] = {
        v + "conv1.weight": (dv, 3, lay.patch, lay.patch), v + "class_embedding": (dv,),
        v + "positional_embedding": (lay.grid * lay.grid + 1, dv),
    }
    for ln in ("ln_pre", "ln_post"):
        s[f"{v}{ln}.weight"] = s[f"{v}{ln}.bias"] = (dv,)
    for i in range(lay.vision_layers):
        b = f"{v}transformer.resblocks.{i}."
        s[b + "attn.in_proj_weight"], s[b + "attn.in_proj_bias"] = (3 * dv, dv), (3 * dv,)
        s[b + "attn.out_proj.weight"], s[b + "attn.out_proj.bias"] = (dv, dv), (dv,)
        s[b + "mlp.c_fc.weight"], s[b + "mlp.c_fc.bias"] = (lay.vision_mlp, dv), (lay.vision_mlp,)
        s[b + "mlp.c_proj.weight"], s[b + "mlp.c_proj.bias"] = (dv, lay.vision_mlp), (dv,)
        for ln in ("ln_1", "ln_2"):
            s[f"{b}{ln}.weight"] = s[f"{b}{ln}.bias"] = (dv,)
    e = "text_transformer.embeddings."
    s[e + "word_embeddings.weight"] = (lay.vocab, dt)
    s[e + "position_embeddings.weight"] = (lay.text_positions, dt)
    s[e + "token_type_embeddings.weight"] = (1, dt)
    s[e + "LayerNorm.weight"] = s[e + "LayerNorm.bias"] = (dt,)
    for i in range(lay.text_layers):
        s |= _bert_layer(f"text_transformer.encoder.layer.{i}.", dt, lay.text_mlp)
    s["cross_modal_text_transform.weight"], s["cross_modal_text_transform.bias"] = (d, dt), (d,)
    s["cross_modal_image_transform.weight"], s["cross_modal_image_transform.bias"] = (d, dv), (d,)
    s["token_type_embeddings.weight"] = (lay.token_types, d)
    for stream in ("text", "image"):
        for i in range(lay.fusion_layers):
            s |= _bert_layer(f"cross_modal_{stream}_layers.{i}.", d, lay.fusion_mlp, cross=True)
        s[f"cross_modal_{stream}_pooler.dense.weight"], s[f"cross_modal_{stream}_pooler.dense.bias"] = (d, d), (d,)
    if lay.task == "vqa":
        s["vqa_classifier.0.weight"], s["vqa_classifier.0.bias"] = (2 * d, 2 * d), (2 * d,)
        s["vqa_classifier.1.weight"] = s["vqa_classifier.1.bias"] = (2 * d,)
        s["vqa_classifier.3.weight"], s["vqa_classifier.3.bias"] = (lay.answers, 2 * d), (lay.answers,)
    else:
        s["itm_score.fc.weight"], s["itm_score.fc.bias"] = (2, 2 * d), (2,)
    return s


def _names(keys: list[str], limit: int = 6) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_layout(state: dict[str, Tensor], lay: MeterLayout, path: str | Path) -> list[str]:
    """Missing, unexpected and mis-shaped tensors -> one line naming them. Returns the keys METER's forward
    for this task does not read (other tasks' heads, the CLIP text tower's leftovers, RoBERTa's pooler)."""
    want = meter_shapes(lay)
    missing = [k for k in want if k not in state]
    unused = [k for k in state if k not in want and _UNUSED.match(k)]
    unexpected = [k for k in state if k not in want and not _UNUSED.match(k)]
    if missing or unexpected:
        parts = ([f"missing {_names(missing)}"] if missing else []) + (
            [f"unexpected {_names(unexpected)}"] if unexpected else [])
        raise BadInputError(f"{path}: not the METER layout ({lay.task} task): {'; '.join(parts)}")
    wrong = [f"{k} {tuple(state[k].shape)} (expected {want[k]})" for k in want if tuple(state[k].shape) != want[k]]
    if wrong:
        raise BadInputError(f"{path}: not the METER layout: {_names(wrong, 3)}")
    if lay.token_types not in (2, 3):
        raise BadInputError(f"{path}: token_type_embeddings has {lay.token_types} rows (METER: 2, or 3 for NLVR2)")
    return unused


def read_bpe_tokenizer(directory: str | Path | None, *, vocab_size: int, max_len: int) -> ByteBPETokenizer:
    """RoBERTa's byte-level BPE from a Hugging Face tokenizer directory (`vocab.json` + `merges.txt`), read
    offline. Ids past the file's tokens (an embedding table padded beyond the vocabulary) get placeholders."""
    if directory is None:
        raise BadInputError("a METER checkpoint carries no vocabulary: give --tokenizer DIR (RoBERTa's tokenizer "
                            "directory with vocab.json and merges.txt, e.g. roberta-base's)")
    d = Path(directory)
    vocab_file, merges_file = d / "vocab.json", d / "merges.txt"
    for f in (vocab_file, merges_file):
        if not f.is_file():
            raise BadInputError(f"{d}: no {f.name}: --tokenizer needs a byte-level BPE tokenizer directory "
                                "(vocab.json + merges.txt)")
    try:
        table = json.loads(vocab_file.read_text(encoding="utf-8"))
        lines = merges_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(f"{d}: cannot read the tokenizer ({type(e).__name__}: {e})") from None
    if not isinstance(table, dict) or not all(isinstance(i, int) for i in table.values()):
        raise BadInputError(f"{vocab_file}: not a token -> id mapping")
    too_big = [t for t, i in table.items() if not 0 <= i < vocab_size]
    if too_big:
        raise BadInputError(f"{vocab_file}: token {too_big[0]!r} has id {table[too_big[0]]}, but the checkpoint "
                            f"embeds {vocab_size} tokens")
    vocab = [f"<unused-{i}>" for i in range(vocab_size)]
    for tok, i in table.items():
        vocab[i] = tok
    merges = [m for m in lines if m.strip() and not m.startswith("#version")]
    return ByteBPETokenizer(vocab, merges, max_len)


def _linear(state: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    return {f"{dst}.{w}": state[f"{src}.{w}"] for w in _W}


def _bert_attention(state: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    """A Hugging Face BertAttention (`src` = `...attention`) as trimkit's Attention (q_proj, packed kv_proj)."""
    out = _linear(state, f"{src}.self.query", f"{dst}.q_proj") | _linear(state, f"{src}.output.dense",
                                                                          f"{dst}.out_proj")
    for w in _W:  # keys then values, one matmul
        out[f"{dst}.kv_proj.{w}"] = torch.cat([state[f"{src}.self.key.{w}"], state[f"{src}.self.value.{w}"]], dim=0)
    return out


def _trimkit_state(state: dict[str, Tensor], lay: MeterLayout, config: ModelConfig,
                   pad_id: int) -> dict[str, Tensor]:
    """METER's tensors under trimkit's names (every backbone and head tensor of the model; no trimmer)."""
    v, dv = lay.vision, lay.vision_width
    out: dict[str, Tensor] = {}
    # image: CLIP's visual transformer
    out["patch_embed.weight"], out["patch_embed.bias"] = _fold_normalization(
        state[v + "conv1.weight"], torch.zeros(dv, dtype=state[v + "conv1.weight"].dtype), CLIP_MEAN, CLIP_STD)
    out["vision_cls"] = state[v + "class_embedding"].reshape(1, 1, dv)
    out["vision_pos"] = interpolate_positions(state[v + "positional_embedding"][None], config.image_size // lay.patch)
    out |= _linear(state, v + "ln_pre", "vision_embed_norm") | _linear(state, v + "ln_post", "vision_final_norm")
    for i in range(lay.vision_layers):
        b, t = f"{v}transformer.resblocks.{i}.", f"vision_layers.{i}."
        qkv_w, qkv_b = state[b + "attn.in_proj_weight"], state[b + "attn.in_proj_bias"]  # (3Dv, Dv), (3Dv,): q, k, v
        out[t + "attn.q_proj.weight"], out[t + "attn.kv_proj.weight"] = qkv_w[:dv], qkv_w[dv:]
        out[t + "attn.q_proj.bias"], out[t + "attn.kv_proj.bias"] = qkv_b[:dv], qkv_b[dv:]
        out |= (_linear(state, b + "attn.out_proj", t + "attn.out_proj") | _linear(state, b + "ln_1", t + "norm1")
                | _linear(state, b + "ln_2", t + "norm2") | _linear(state, b + "mlp.c_fc", t + "mlp.fc1")
                | _linear(state, b + "mlp.c_proj", t + "mlp.fc2"))
    # text: RoBERTa's embeddings and layers. Position ids of real tokens are pad_id + 1 + index; every token is
    # segment 0, a constant folded into the positions.
    e = "text_transformer.embeddings."
    out["token_embed.weight"] = state[e + "word_embeddings.weight"]
    pos = state[e + "position_embeddings.weight"][pad_id + 1: pad_id + 1 + config.max_text_len]  # (Nt, Dt)
    out["text_pos"] = (pos + state[e + "token_type_embeddings.weight"][0])[None]  # (1, Nt, Dt)
    out |= _linear(state, e + "LayerNorm", "text_embed_norm")
    for i in range(lay.text_layers):
        b, t = f"text_transformer.encoder.layer.{i}.", f"text_layers.{i}."
        out |= (_bert_attention(state, b + "attention", t + "attn")
                | _linear(state, b + "attention.output.LayerNorm", t + "norm1")
                | _linear(state, b + "intermediate.dense", t + "mlp.fc1") | _linear(state, b + "output.dense", t + "mlp.fc2")
                | _linear(state, b + "output.LayerNorm", t + "norm2"))
    # fusion entry: trimkit's stream order is (vision, text); METER's token types are text 0, image 1
    out |= _linear(state, "cross_modal_image_transform", "fusion_proj.0")
    out |= _linear(state, "cross_modal_text_transform", "fusion_proj.1")
    tte = state["token_type_embeddings.weight"]
    out["type_embed"] = torch.stack([tte[1], tte[0]])  # (2, D)
    for stream, dst in (("image", "vision_fusion"), ("text", "text_fusion")):
        for i in range(lay.fusion_layers):
            b, t = f"cross_modal_{stream}_layers.{i}.", f"{dst}.{i}."
            out |= (_bert_attention(state, b + "attention", t + "self_attn")
                    | _linear(state, b + "attention.output.LayerNorm", t + "norm1")
                    | _bert_attention(state, b + "crossattention", t + "cross_attn")
                    | _linear(state, b + "crossattention.output.LayerNorm", t + "norm2")
                    | _linear(state, b + "intermediate.dense", t + "mlp.fc1")
                    | _linear(state, b + "output.dense", t + "mlp.fc2")
                    | _linear(state, b + "output.LayerNorm", t + "norm3"))
    out |= _linear(state, "cross_modal_image_pooler.dense", "vision_pool")
    out |= _linear(state, "cross_modal_text_pooler.dense", "text_pool")
    # head: METER reads cat(text, image), trimkit cat(image, text): the first Linear's input columns swap halves
    first = "vqa_classifier.0" if lay.task == "vqa" else "itm_score.fc"
    w = state[f"{first}.weight"]  # (out, 2D): columns [text D | image D]
    d = lay.fusion_width
    out["classifier.0.weight"] = torch.cat([w[:, d:], w[:, :d]], dim=1)
    out["classifier.0.bias"] = state[f"{first}.bias"]
    if lay.task == "vqa":
        out |= _linear(state, "vqa_classifier.1", "classifier.1") | _linear(state, "vqa_classifier.3", "classifier.3")
    return out


def meter_config(lay: MeterLayout, *, image_size: int, max_text_len: int, num_labels: int, vocab_size: int,
                 head_dim: int = 64) -> ModelConfig:
    """The trimkit backbone that computes METER's forward for a state dict of this layout."""
    if head_dim < 1:
        raise BadInputError(f"--head-dim {head_dim} must be >= 1")
    for name, width in (("image encoder", lay.vision_width), ("text encoder", lay.text_width),
                        ("fusion", lay.fusion_width)):
        if width % head_dim:
            raise BadInputError(f"the {name}'s width {width} is not a multiple of the head size {head_dim} "
                                "(--head-dim)")
    vision = EncoderSpec(lay.vision_layers, lay.vision_width, lay.vision_width // head_dim, lay.vision_mlp,
                         layer_norm_eps=CLIP_EPS, embed_norm=True, final_norm=True, activation="quick_gelu")
    text = EncoderSpec(lay.text_layers, lay.text_width, lay.text_width // head_dim, lay.text_mlp, norm="post",
                       layer_norm_eps=ROBERTA_EPS, embed_norm=True)
    try:
        return ModelConfig(
            vocab_size=vocab_size, max_text_len=max_text_len, image_size=image_size, patch_size=lay.patch,
            stem="patch", hidden_size=lay.fusion_width, num_heads=lay.fusion_width // head_dim,
            intermediate_size=lay.fusion_mlp, encoder_layers=max(lay.vision_layers, lay.text_layers),
            fusion_layers=lay.fusion_layers, num_labels=num_labels, layer_norm_eps=FUSION_EPS,
            vision_encoder=vision, text_encoder=text, fusion_style="coattn", fusion_norm="post",
            fusion_proj_always=True, pool_norm=False, classifier_norm_eps=HEAD_EPS,
            classifier_head="mlp" if lay.task == "vqa" else "linear")
    except ValueError as e:
        raise BadInputError(str(e)) from None


def _labels(lay: MeterLayout, labels: str | Path | list[str] | None, data: str | None,
            path: Path) -> tuple[list[str], str]:
    """(answers, where from). `--labels FILE` names the checkpoint's own answers in its order; without it the
    data's answers get a new answer layer (METER's answer order is not in the checkpoint)."""
    if lay.task == "itm":
        if labels is not None:
            raise BadInputError("--labels is for --task vqa; the ITM head's outputs are (mismatch, match)")
        return list(ITM_LABELS), "itm"
    if labels is not None:
        if isinstance(labels, (str, Path)):
            f = Path(labels)
            try:
                answers = [a.strip() for a in f.read_text(encoding="utf-8").splitlines() if a.strip()]
            except (OSError, UnicodeDecodeError) as e:
                raise BadInputError(f"{f}: cannot read the labels ({type(e).__name__})") from None
            source = str(f)
        else:
            answers, source = list(labels), "labels"
        if len(answers) != lay.answers:
            raise BadInputError(f"{source}: {len(answers)} answers, but the checkpoint's VQA classifier has "
                                f"{lay.answers} outputs")
        if len(set(answers)) != len(answers):
            raise BadInputError(f"{source}: duplicate answers")
        return answers, "checkpoint"
    if data is None:
        raise BadInputError(f"{path}: the answer vocabulary is not in a METER checkpoint: give --labels FILE "
                            f"(its {lay.answers} answers, one per line) or --data D (a new answer layer)")
    from ..data import task_vocabulary

    return list(task_vocabulary(data)[0]), "data"


def import_meter_checkpoint(path: str | Path, *, tokenizer: str | Path | None, task: str = "vqa",
                            image_size: int | None = None, labels: str | Path | list[str] | None = None,
                            data: str | None = None, max_text_len: int = 40, head_dim: int = 64,
                            trim: TrimConfig | None = None, seed: int = 0) -> MeterModel:
    """A METER checkpoint as a trimkit model (eval mode, trimmers at their stable init: METER's own forward).

    `image_size`: input size (default: the checkpoint's fine-tuning resolution; the positions are resampled
    bicubically as METER does); `labels`: the VQA answers in the checkpoint's order (a file, one per line, or a
    list); without them `data`'s answers get a new answer layer (seeded). `tokenizer`: RoBERTa's tokenizer
    directory (vocab.json + merges.txt)."""
    p = Path(path)
    state = read_meter_state(p)
    lay = meter_layout(state, task, p)
    unused = check_layout(state, lay, p)
    size = image_size or lay.grid * lay.patch
    if size % lay.patch:
        raise BadInputError(f"--image-size {size} is not a multiple of the patch size {lay.patch}")
    tok = read_bpe_tokenizer(tokenizer, vocab_size=lay.vocab, max_len=max_text_len)
    room = lay.text_positions - tok.pad_id - 1  # RoBERTa's positions start after the padding id
    if max_text_len > room:
        raise BadInputError(f"--max-text-len {max_text_len} must be at most {room} (RoBERTa's "
                            f"{lay.text_positions} positions after the padding offset)")
    answers, answers_from = _labels(lay, labels, data, p)
    config = meter_config(lay, image_size=size, max_text_len=max_text_len, num_labels=len(answers),
                          vocab_size=lay.vocab, head_dim=head_dim)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(config, trim)
    weights = _trimkit_state(state, lay, config, tok.pad_id)
    if answers_from == "data":  # a new answer layer keeps the model's own init (seeded above)
        del weights["classifier.3.weight"], weights["classifier.3.bias"]
    own = model.state_dict()
    trimmers = {k for k in own if k.startswith(("token_trimmers.", "head_trimmers."))}
    kept_init = {"classifier.3.weight", "classifier.3.bias"} if answers_from == "data" else set()
    uncovered = sorted(set(own) - set(weights) - trimmers - kept_init)
    extra = sorted(set(weights) - set(own))
    if uncovered or extra:  # the mapping and the model disagree: a trimkit bug, not the user's input
        raise RuntimeError(f"METER mapping incomplete: uncovered {uncovered[:5]}, extra {extra[:5]}")
    with torch.no_grad():
        for k, w in weights.items():
            if own[k].shape != w.shape:
                raise RuntimeError(f"METER mapping: {k} {tuple(w.shape)} vs the model's {tuple(own[k].shape)}")
            own[k].copy_(w.to(own[k].dtype))
    model.labels = answers
    model.tokenizer = tok
    model.meta = {"imported": {
        "vision": {"path": str(p), "family": "clip"},
        "text": {"path": str(p), "family": "roberta", "tokenizer": "bpe", "tokenizer_dir": str(tokenizer)},
        "fusion_layers": lay.fusion_layers,
        "meter": {"path": str(p), "task": task, "checkpoint_image_size": lay.grid * lay.patch,
                  "answers": {"checkpoint": f"the checkpoint's {lay.answers} (--labels)",
                              "data": f"a new answer layer over {data}'s {len(answers)} (the checkpoint's "
                                      f"{lay.answers}-answer layer is not used; --labels FILE keeps it)",
                              "itm": "mismatch, match"}[answers_from],
                  "checkpoint_answers": lay.answers, "unused_keys": len(unused), "head_dim": head_dim}},
        "data": data, "seed": seed}
    return model.eval()
