"""benchmarks/_common.run_stage: a stage runs once, and a stopped training stage is continued, not redone."""

import trimkit
from benchmarks._common import run_stage
from trimkit.checkpoint import read_checkpoint
from trimkit.factory import new_model
from trimkit.train import TrainConfig, last_path, train


def test_run_stage_resumes_a_stopped_training_run(jsonl_data, tmp_path):
    base = tmp_path / "base.pt"
    trimkit.save_checkpoint(new_model("tiny", str(jsonl_data), seed=0), base)
    out = tmp_path / "b.pt"
    args = ["train", base, "--data", jsonl_data, "--no-trim", "--steps", "6", "--batch-size", "16",
            "--eval-every", "5", "--eval-samples", "20", "--out", out, "--quiet"]
    cfg = TrainConfig(data=str(jsonl_data), out=str(out), steps=6, batch_size=16, eval_every=5, eval_samples=20,
                      no_trim=True)
    train(base, cfg, show_progress=False, stop_at_step=2)  # stopped before its first evaluation: no `out` yet
    assert not out.exists() and read_checkpoint(last_path(out))["train_state"]["step"] == 2
    rec, log = {}, tmp_path / "log.txt"
    run_stage("backbone", args, out, log, rec)
    state = read_checkpoint(last_path(out))["train_state"]
    assert out.exists() and state["step"] == 6
    assert "--resume" in log.read_text() and rec["seconds"]["backbone"] == round(state["seconds"], 1)
    # the same weights as one uninterrupted run
    whole = train(base, TrainConfig(**{**cfg.to_dict(), "out": str(tmp_path / "w.pt")}), show_progress=False)
    a, b = read_checkpoint(whole.last)["state_dict"], read_checkpoint(last_path(out))["state_dict"]
    assert all((a[k] == b[k]).all() for k in a)
    # finished: skipped, its time recorded from the train state when the record lacks it
    rec2 = {}
    run_stage("backbone", args, out, log, rec2)
    assert log.read_text().count("$ ") == 1 and rec2["seconds"]["backbone"] == rec["seconds"]["backbone"]
