"""Which easy-VQA questions a backbone gets right: "what" questions (colour, shape) and yes/no questions split
by negation ("is there a red shape?" vs "is there not a red shape?"), what they ask about and the answer.

A backbone that answers yes/no from the wording alone gets every "is there a X?" -> no and every
"is there not a X?" -> yes right and every other one wrong: this table shows it at a glance.
Validation split (carved from train with the checkpoint's seed 0), `off` mode. Writes
benchmarks/results/answer_breakdown.{json,md}.

    python benchmarks/answer_breakdown.py NAME=CKPT [NAME=CKPT ...] [--questions 1500]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from _common import RESULTS, reproduce_command, save_json

from trimkit.checkpoint import load_checkpoint
from trimkit.data import load_dataset
from trimkit.data.easyvqa import SHAPES, negated

KINDS = ["what colour", "what shape", "is X: yes", "is X: no", "is not X: yes", "is not X: no"]


def kind_of(question: str, answer: str) -> str:
    if answer not in ("yes", "no"):
        return "what shape" if answer in SHAPES else "what colour"
    return ("is not X" if negated(question) else "is X") + f": {answer}"


@torch.no_grad()
def breakdown(ckpt: Path, questions: int, batch: int = 100) -> dict:
    model = load_checkpoint(ckpt).eval()
    data = load_dataset("easyvqa", tokenizer=model.tokenizer, labels=model.labels,
                        image_size=model.config.image_size, seed=0, splits=("train",))
    split = data.val
    idx = torch.arange(min(questions, len(split)))
    right = defaultdict(list)
    for i in range(0, len(idx), batch):
        rows = idx[i:i + batch]
        pv, ids, mask, y = split.batch(rows, trim_padding=True)
        hit = model(pv, ids, mask, mode="off").logits.argmax(-1) == y
        for r, h in zip(rows.tolist(), hit.tolist()):
            right[kind_of(split.questions[r], model.labels[int(split.labels[r])])].append(h)
    per = {k: {"questions": len(v), "accuracy": sum(v) / len(v)} for k, v in right.items()}
    total = sum(len(v) for v in right.values())
    return {"checkpoint": str(ckpt), "questions": total, "accuracy": sum(map(sum, right.values())) / total,
            "kinds": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="NAME=CKPT")
    ap.add_argument("--questions", type=int, default=1500)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rec = {"reproduce": reproduce_command("answer_breakdown.py", sys.argv[1:], {}), "runs": {}}
    for spec in args.checkpoints:
        name, _, path = spec.partition("=")
        rec["runs"][name] = breakdown(Path(path), args.questions)
        print(name, f"{100 * rec['runs'][name]['accuracy']:.2f}%", flush=True)
    rec["questions"] = args.questions
    save_json(RESULTS / "answer_breakdown.json", rec)
    write_markdown(rec)


def write_markdown(rec: dict) -> None:
    lines = ["# easy-VQA: which questions a backbone gets right", "",
             f"First {rec['questions']} validation questions, `off` mode. Reproduce: `{rec['reproduce']}`.", "",
             "| backbone | all | " + " | ".join(KINDS) + " |", "|---|---|" + "---|" * len(KINDS)]
    for name, r in rec["runs"].items():
        cells = [f"{100 * r['kinds'][k]['accuracy']:.0f}% ({r['kinds'][k]['questions']})" if k in r["kinds"] else ""
                 for k in KINDS]
        lines.append(f"| {name} | {100 * r['accuracy']:.2f}% | " + " | ".join(cells) + " |")
    lines += ["", "*is X* / *is not X*: yes/no questions without / with a negation, by their answer. Answering "
              "from the wording alone gives 100% on *is X: no* and *is not X: yes* and 0% on the other two.", ""]
    (RESULTS / "answer_breakdown.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
