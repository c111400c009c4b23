"""Tiny-model training runs of a few steps on a small JSONL dataset."""

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import trimkit
from trimkit.calibration.budget import adaptive_profile
from trimkit.checkpoint import read_checkpoint
from trimkit.cli import main
from trimkit.data import load_dataset
from trimkit.errors import BadInputError
from trimkit.factory import new_model
from trimkit.train import SmartTrimObjective, TrainConfig, last_path, train
from trimkit.train.loop import TrainResult, budget_warning, resumed_config, with_trim_config
from trimkit.train.objective import kl_teacher_student
from trimkit.trimmers import BatchNoise

from ..conftest import make_inputs, randomize_trimmers


@pytest.fixture
def base_ckpt(jsonl_data, tmp_path):
    path = tmp_path / "base.pt"
    trimkit.save_checkpoint(new_model("tiny", str(jsonl_data), seed=0), path)
    return path


def cfg_for(jsonl_data, out, **kw):
    base = dict(data=str(jsonl_data), out=str(out), steps=6, batch_size=16, eval_every=3, eval_samples=None)
    return TrainConfig(**{**base, **kw})


def test_loss_falls_backbone(base_ckpt, jsonl_data, tmp_path):
    cfg = cfg_for(jsonl_data, tmp_path / "b.pt", steps=40, no_trim=True, lr=2e-3, eval_every=40)
    losses = []
    model = trimkit.load_checkpoint(base_ckpt)
    obj = SmartTrimObjective(model, cfg)
    from trimkit.data import load_dataset

    data = load_dataset(cfg.data, tokenizer=model.tokenizer, labels=model.labels, image_size=32, splits=("train",))
    batch = data.train.batch(torch.arange(32))
    opt = torch.optim.AdamW(model.backbone_parameters(), lr=2e-3)
    model.train()
    for _ in range(25):
        parts = obj(*batch, target=1.0)
        opt.zero_grad()
        parts.loss.backward()
        opt.step()
        losses.append(parts.loss.item())
    assert losses[-1] < 0.7 * losses[0] and sum(losses[-5:]) < sum(losses[:5])
    # and the real loop writes both checkpoints, the best one carrying its metrics
    result = train(base_ckpt, cfg, show_progress=False)
    assert result.out.exists() and result.last.exists() and result.steps_done == 40
    assert read_checkpoint(result.out)["meta"]["train"]["step"] == 40
    assert "train_state" in read_checkpoint(result.last)


def test_curriculum_schedule():
    cfg = TrainConfig(target_ratio=0.4, warmup_frac=0.5)
    assert cfg.target_at(0, 100) == 1.0
    assert cfg.target_at(25, 100) == pytest.approx(0.7)
    assert cfg.target_at(50, 100) == pytest.approx(0.4) and cfg.target_at(99, 100) == pytest.approx(0.4)
    assert not cfg.curriculum_done(49, 100) and cfg.curriculum_done(50, 100)
    flat = TrainConfig(target_ratio=0.4, no_curriculum=True)
    assert flat.target_at(0, 100) == 0.4 and flat.curriculum_done(0, 100)


def test_ratio_follows_the_curriculum(base_ckpt, jsonl_data, tmp_path):
    cfg = cfg_for(jsonl_data, tmp_path / "t.pt", steps=60, eval_every=20, target_ratio=0.5, warmup_frac=0.5,
                  trimmer_lr=2e-2, ratio_weight=20.0)
    result = train(base_ckpt, cfg, show_progress=False)
    targets = [h["target"] for h in result.history]
    ratios = [h["val_ratio_mean"] for h in result.history]
    assert targets == pytest.approx([1.0 - 0.5 * 19 / 30, 0.5, 0.5])  # target of the last step before each eval
    assert ratios[0] > ratios[-1]  # cost comes down as the target does
    assert abs(ratios[-1] - 0.5) < 0.15
    # the saved checkpoint carries the head keep rates `export --heads auto` reads, measured at its thresholds
    saved = trimkit.load_checkpoint(result.out)
    data = load_dataset(str(jsonl_data), tokenizer=saved.tokenizer, labels=saved.labels,
                        image_size=saved.config.image_size, seed=cfg.seed, val_fraction=cfg.val_fraction)
    rates = adaptive_profile(saved, data.val, samples=cfg.eval_samples, seed=cfg.seed)["head_batch_keep"]
    assert saved.trim.head_batch_keep == rates and len(rates) == len(saved.head_trimmers)


def _parts(model, cfg, batch, target=0.6):
    torch.manual_seed(0)
    model.train()
    return SmartTrimObjective(model, cfg)(*batch, target=target, noise=BatchNoise(3, batch[0].shape[0]))


def test_objective_terms_and_ablations(pruning_model):
    pv, ids, mask = make_inputs(pruning_model, 6, 9)
    batch = (pv, ids, mask, torch.arange(6) % 13)
    cfg = TrainConfig(full_task_weight=0.7, distill_weight=1.3, ratio_weight=4.0)
    p = _parts(pruning_model, cfg, batch)
    assert p.kl > 0 and p.ce_full > 0 and p.ratio < 1
    expected = p.ce + 0.7 * p.ce_full + 1.3 * p.kl + 4.0 * (p.ratio - 0.6) ** 2
    torch.testing.assert_close(p.loss, expected)
    # --no-distill drops exactly the KL term
    nd = _parts(pruning_model, TrainConfig(full_task_weight=0.7, distill_weight=1.3, ratio_weight=4.0,
                                           no_distill=True), batch)
    torch.testing.assert_close(nd.loss, p.loss - 1.3 * p.kl)
    assert nd.kl == 0
    # --no-trim: plain cross-entropy of the untrimmed model
    nt = _parts(pruning_model, TrainConfig(no_trim=True), batch)
    with torch.no_grad():
        off = pruning_model(pv, ids, mask, mode="off").logits
    torch.testing.assert_close(nt.loss, torch.nn.functional.cross_entropy(off, batch[3]))
    # the KL is teacher-detached: no gradient flows into the full pass through it
    t = torch.randn(4, 5, requires_grad=True)
    s = torch.randn(4, 5, requires_grad=True)
    kl_teacher_student(t, s).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


def test_decision_margin_term(pruning_model):
    pv, ids, mask = make_inputs(pruning_model, 6, 9)
    batch = (pv, ids, mask, torch.arange(6) % 13)
    p = _parts(pruning_model, TrainConfig(), batch)
    assert p.margin == 0
    # --decision-margin M adds exactly margin_weight x the hinge; nothing else changes
    pm = _parts(pruning_model, TrainConfig(decision_margin=3.0, margin_weight=0.4), batch)
    assert 0 < pm.margin < 1
    torch.testing.assert_close(pm.loss, p.loss + 0.4 * pm.margin)
    torch.testing.assert_close(pm.ce, p.ce)
    # its gradient pushes every logit inside the band away from the threshold, in the way it leans
    pruning_model.train()
    out = pruning_model(pv, ids, mask, mode="mask", noise=BatchNoise(3, 6), margin=1e6, details=True)
    for d in out.decisions:
        d.distance.retain_grad()
    out.margin_penalty.backward()
    moved = [d.distance.grad * d.distance.sign() for d in out.decisions]  # descent moves a logit by -grad
    # every deciding logit moves away from the threshold; the others ([CLS], padding, pruned) not at all
    assert all(((m < 0) == d.decides).all() and (m <= 0).all() for m, d in zip(moved, out.decisions))
    tokens = [d.decides for d in out.decisions if not d.decides.all()]
    assert tokens and not any(decides[:, 0].any() for decides in tokens)  # [CLS] never decides
    # not in prune mode, and not without a margin
    pruning_model.eval()
    with torch.no_grad():
        assert pruning_model(pv, ids, mask, mode="prune", margin=2.0).margin_penalty is None
        assert pruning_model(pv, ids, mask, mode="mask").margin_penalty is None


def test_decision_margin_at_stable_init(base_ckpt, jsonl_data, tmp_path):
    """Every trimmer logit is init_keep_logit (5) at stable init: the hinge is 1 - 5/M for M > 5, 0 below."""
    model = trimkit.load_checkpoint(base_ckpt).train()
    inputs = make_inputs(model, 4, 8)
    for m, expected in ((10.0, 0.5), (8.0, 1 - 5 / 8), (4.0, 0.0)):
        out = model(*inputs, mode="mask", noise=BatchNoise(0, 4), margin=m)
        torch.testing.assert_close(out.margin_penalty, torch.tensor(expected))
    with pytest.raises(ValueError, match="decision-margin"):
        TrainConfig(decision_margin=-1.0)


def test_decision_margin_run_keeps_the_farthest_of_equal_checkpoints(base_ckpt, jsonl_data, tmp_path):
    """With a decision margin each evaluation measures the closest decisions (p1 over questions, relative to
    their scale), and the best checkpoint is the most accurate one, ties going to the larger p1."""
    start = tmp_path / "random-trimmers.pt"  # decisions near their thresholds, for the margin to push away
    trimkit.save_checkpoint(randomize_trimmers(trimkit.load_checkpoint(base_ckpt), seed=2), start)
    cfg = cfg_for(jsonl_data, tmp_path / "m.pt", steps=6, eval_every=1, warmup_frac=0.0, target_ratio=0.5,
                  trimmer_lr=5e-2, decision_margin=4.0, relative_margin=0.2, margin_weight=5.0)
    result = train(start, cfg, show_progress=False)
    ranks = [(h["val_accuracy"], h["val_closest_p1"]) for h in result.history]
    assert len(ranks) == 6 and all(p1 is not None and p1 >= 0 for _, p1 in ranks)
    best = max(range(6), key=lambda i: ranks[i])  # first of equals, as the loop keeps it
    assert result.best["step"] == result.history[best]["step"]
    assert read_checkpoint(result.out)["meta"]["train"]["step"] == result.best["step"]
    top = max(a for a, _ in ranks)
    assert len({p1 for a, p1 in ranks if a == top}) > 1, "no tie of accuracy with differing p1: test is vacuous"
    # without a margin nothing extra is measured
    plain = train(base_ckpt, cfg_for(jsonl_data, tmp_path / "p.pt", steps=2, eval_every=1), show_progress=False)
    assert all("val_closest_p1" not in h for h in plain.history)


def test_no_curriculum_and_local_only_change_the_model(base_ckpt, jsonl_data, tmp_path):
    from trimkit.train.loop import _prepare

    stable, _, _ = _prepare(base_ckpt, cfg_for(jsonl_data, tmp_path / "a.pt"), False)
    ablated, _, _ = _prepare(base_ckpt, cfg_for(jsonl_data, tmp_path / "a.pt", no_curriculum=True), False)
    inputs = make_inputs(stable, 4, 8)
    with torch.no_grad():
        assert stable(*inputs, mode="prune").flops_ratio.min() == 1.0  # stable init keeps all
        assert ablated(*inputs, mode="prune").flops_ratio.max() < 1.0  # random init prunes at step 0
        assert not torch.equal(stable(*inputs, mode="prune").logits, ablated(*inputs, mode="prune").logits)
    assert TrainConfig(no_curriculum=True, target_ratio=0.5).target_at(0, 10) == 0.5
    local, _, _ = _prepare(base_ckpt, cfg_for(jsonl_data, tmp_path / "a.pt", local_only=True), False)
    assert local.trim.local_only and not hasattr(local.token_trimmers[0][0], "cls_proj")
    # local-only logits ignore the [CLS] tokens; the full trimmer's do not
    randomize_trimmers(local)
    tt = local.token_trimmers[0][0]
    x = torch.randn(2, 5, 64)
    assert torch.equal(tt(x, torch.randn(2, 64), torch.randn(2, 64)), tt(x, torch.randn(2, 64), torch.randn(2, 64)))
    full = randomize_trimmers(with_trim_config(local, stable.trim)).token_trimmers[0][0]
    assert not torch.equal(full(x, torch.randn(2, 64), torch.randn(2, 64)), full(x, torch.randn(2, 64), torch.randn(2, 64)))


def test_trim_tokens_of_one_modality(base_ckpt, jsonl_data, tmp_path):
    """--trim-tokens vision: the text keeps every token (heads are still trimmed); switching back restores
    stable text trimmers; the checkpoint round-trips."""
    from trimkit.train.loop import _prepare
    from trimkit.trimmers import Idle

    model, _, _ = _prepare(base_ckpt, cfg_for(jsonl_data, tmp_path / "a.pt", trim_tokens="vision"), False)
    assert all(isinstance(pair[1], Idle) and not isinstance(pair[0], Idle) for pair in model.token_trimmers)
    randomize_trimmers(model).eval()
    ids_len = 8
    pv, ids, mask = make_inputs(model, 4, ids_len, ragged=False)
    with torch.no_grad():
        out = model(pv, ids, mask, mode="prune")
        ref = model(pv, ids, mask, mode="mask")
    n_vision = model.config.num_patches + 1
    assert (out.keep_counts[:, :, 1] == ids_len).all() and (out.keep_counts[:, -1, 0] < n_vision).all()
    assert (out.flops_ratio < 1).all() and torch.allclose(out.logits, ref.logits, atol=1e-5)
    trimkit.save_checkpoint(model, tmp_path / "v.pt")
    again = trimkit.load_checkpoint(tmp_path / "v.pt")
    assert again.trim.token_modalities == "vision" and torch.equal(again(pv, ids, mask).logits, out.logits)
    both = with_trim_config(again, dataclasses.replace(again.trim, token_modalities="both"))
    text_trimmer = both.token_trimmers[0][1]
    assert not isinstance(text_trimmer, Idle)  # back, at the stable init: every logit is init_keep_logit
    x = torch.randn(2, 5, model.config.hidden_size)
    cls = torch.randn(2, model.config.hidden_size)
    assert torch.allclose(text_trimmer(x, cls, cls), torch.full((2, 5), both.trim.init_keep_logit))
    with pytest.raises(ValueError, match="trim-tokens"):
        TrainConfig(trim_tokens="audio")


def test_freeze_keeps_an_encoder_fixed(base_ckpt, jsonl_data, tmp_path):
    """--freeze vision: the image encoder (embeddings, layers, norms) ends bit-identical, while the text
    encoder, the fusion, the classifier and the trimmers train; the setting is stored for --resume."""
    from trimkit.config import VISION

    before = trimkit.load_checkpoint(base_ckpt)
    result = train(base_ckpt, cfg_for(jsonl_data, tmp_path / "f.pt", freeze="vision", lr=2e-3), show_progress=False)
    after = trimkit.load_checkpoint(result.last)
    frozen = {id(p) for p in before.encoder_parameters(VISION)}
    names = [n for n, p in before.named_parameters() if id(p) in frozen]
    assert any(n.startswith("vision_layers.") for n in names) and "vision_pos" in names
    assert not any(n.startswith(("text_", "token_", "vision_fusion", "token_trimmers")) for n in names)
    b, a = dict(before.named_parameters()), dict(after.named_parameters())
    assert all(torch.equal(b[n], a[n]) for n in names)
    moved = [n for n in b if n not in names and not torch.equal(b[n], a[n])]
    assert any(n.startswith("text_layers.") for n in moved) and any(n.startswith("classifier.") for n in moved)
    assert any(n.startswith("token_trimmers.") for n in moved)
    assert read_checkpoint(result.last)["train_state"]["config"]["freeze"] == "vision"
    with pytest.raises(ValueError, match="freeze"):
        TrainConfig(freeze="fusion")


def test_bf16_training(base_ckpt, jsonl_data, tmp_path):
    """--precision bf16: the passes run under bfloat16 autocast (the first loss differs from fp32, but only by
    rounding), the loss falls, and the saved weights stay fp32 (evaluation and export see fp32 models)."""
    model = trimkit.load_checkpoint(base_ckpt)
    from trimkit.data import load_dataset

    data = load_dataset(str(jsonl_data), tokenizer=model.tokenizer, labels=model.labels, image_size=32, splits=("train",))
    batch = data.train.batch(torch.arange(16))
    cfg = TrainConfig(target_ratio=0.6)
    fp32 = _parts(model, cfg, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = _parts(model, cfg, batch)
    assert bf16.loss.dtype == torch.float32 and bf16.loss != fp32.loss
    assert abs(bf16.loss - fp32.loss) < 0.05 * fp32.loss
    result = train(base_ckpt, cfg_for(jsonl_data, tmp_path / "bf.pt", steps=30, eval_every=30, no_trim=True, lr=2e-3,
                                      precision="bf16"), show_progress=False)
    trained = trimkit.load_checkpoint(result.out)
    before = _parts(model, TrainConfig(no_trim=True), batch).loss
    after = _parts(trained, TrainConfig(no_trim=True), batch).loss
    assert after < 0.8 * before
    ck = read_checkpoint(result.last)
    assert ck["train_state"]["config"]["precision"] == "bf16"
    assert all(v.dtype != torch.bfloat16 for v in ck["state_dict"].values())
    with pytest.raises(ValueError, match="--precision"):
        TrainConfig(precision="fp8")


def test_resume_equals_uninterrupted(base_ckpt, jsonl_data, tmp_path):
    cfg = cfg_for(jsonl_data, tmp_path / "full.pt", steps=8, eval_every=3)
    whole = train(base_ckpt, cfg, show_progress=False)
    cfg2 = cfg_for(jsonl_data, tmp_path / "part.pt", steps=8, eval_every=3)
    half = train(base_ckpt, cfg2, show_progress=False, stop_at_step=5)
    assert half.interrupted and half.steps_done == 5
    half_seconds = read_checkpoint(half.last)["train_state"]["seconds"]
    resumed = train(half.last, TrainConfig(out=""), resume=True, show_progress=False)
    assert resumed.steps_done == 8 and not resumed.interrupted
    a = read_checkpoint(whole.last)
    b = read_checkpoint(resumed.last)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["train_state"]["history"] == b["train_state"]["history"]
    # the run's wall time adds up over its sessions
    this_session = resumed.seconds - half_seconds  # resumed.seconds counts from the saved state's seconds
    assert 0 < half_seconds <= half.seconds and this_session > 0
    # the saved total counts the earlier session's seconds (how much of this session precedes the save depends on
    # the machine's load: a share of it made this test flaky)
    assert half_seconds < b["train_state"]["seconds"] <= resumed.seconds


def test_training_gate_ratio_is_recorded_beside_the_deterministic_one(base_ckpt, jsonl_data, tmp_path):
    kw = dict(steps=4, warmup_frac=0.5)
    twice = train(base_ckpt, cfg_for(jsonl_data, tmp_path / "t2.pt", eval_every=2, **kw), show_progress=False)
    once = train(base_ckpt, cfg_for(jsonl_data, tmp_path / "t4.pt", eval_every=4, **kw), show_progress=False)
    assert [h["step"] for h in twice.history] == [2, 4] and [h["step"] for h in once.history] == [4]
    # each evaluation averages the steps since the one before (the accumulator restarts there)
    for key in ("train_ratio_mean", "train_target_mean"):
        assert once.history[0][key] == pytest.approx(sum(h[key] for h in twice.history) / 2, abs=1e-6)
    cfg = twice.config  # the targets the curriculum set at steps 0-1 and 2-3 of 4 (ramp over 2 steps)
    assert [h["train_target_mean"] for h in twice.history] == pytest.approx(
        [(cfg.target_at(0, 4) + cfg.target_at(1, 4)) / 2, 0.5])
    assert twice.history[0]["train_ratio_mean"] != twice.history[1]["train_ratio_mean"]
    assert cfg.target_ratio == 0.5 and cfg.out == str(tmp_path / "t2.pt")
    backbone = train(base_ckpt, cfg_for(jsonl_data, tmp_path / "b.pt", steps=2, eval_every=2, no_trim=True),
                     show_progress=False)
    assert "train_ratio_mean" not in backbone.history[0]


def test_budget_warning_flags_a_checkpoint_off_its_target(tmp_path):
    out = tmp_path / "my runs" / "t.pt"

    def result(val, gates, **cfg):
        history = [{"step": 10, "val_ratio_mean": 0.9, "train_ratio_mean": 0.9, "train_target_mean": 0.8},
                   {"step": 20, "val_ratio_mean": val, "train_ratio_mean": gates, "train_target_mean": 0.5}]
        return TrainResult(out, last_path(out), 20, 20, False, {"step": 20, "val_accuracy": 0.9, "val_ratio_mean": val},
                           history, 1.0, TrainConfig(target_ratio=0.5, data="mine.jsonl", seed=3, **cfg))

    w = budget_warning(result(0.31, 0.505))
    assert w.startswith("warning:") and "0.310" in w and "0.505" in w and "0.500" in w and "Gumbel" in w
    assert f"`trimkit calibrate budget '{out}' --data mine.jsonl --target 0.5 --seed 3 --out OUT`" in w
    assert "\n" not in w
    w = budget_warning(result(0.7, 0.7))  # the training gates missed their target too: no claim about the noise
    assert "0.700" in w and "Gumbel" not in w
    assert budget_warning(result(0.54, 0.5)) is None  # within 0.05
    assert budget_warning(result(0.46, 0.3)) is None
    assert budget_warning(result(1.0, None, no_trim=True)) is None
    assert budget_warning(dataclasses.replace(result(0.3, 0.5), best=None)) is None  # stopped before any evaluation


def test_cli_warns_about_a_missed_budget_with_the_resumed_runs_own_target(base_ckpt, jsonl_data, tmp_path):
    # no ratio term: the gates (initialised to keep everything) stay near ratio 1.0, far from the target 0.3
    cfg = cfg_for(jsonl_data, tmp_path / "w.pt", steps=4, eval_every=2, target_ratio=0.3, ratio_weight=0.0,
                  no_curriculum=True, seed=2)
    half = train(base_ckpt, cfg, show_progress=False, stop_at_step=3)
    proc = _cli("train", str(half.last), "--resume", "--quiet")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "done: 4 steps" in stdout
    lines = [ln for ln in stderr.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "off --target-ratio 0.3 " in lines[0]
    assert f"--data {jsonl_data} --target 0.3 --seed 2 --out OUT" in lines[0]


def test_refuses_to_overwrite_and_resume_without_state(base_ckpt, jsonl_data, tmp_path):
    from trimkit.errors import BadInputError

    cfg = cfg_for(jsonl_data, base_ckpt)
    with pytest.raises(BadInputError, match="already exists"):
        train(base_ckpt, cfg, show_progress=False)
    with pytest.raises(BadInputError, match="no train state"):
        train(base_ckpt, TrainConfig(out=str(tmp_path / "x.pt")), resume=True, show_progress=False)


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "trimkit.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_ctrl_c_leaves_a_usable_checkpoint(base_ckpt, jsonl_data, tmp_path):
    out = tmp_path / "run.pt"
    proc = _cli("train", str(base_ckpt), "--data", str(jsonl_data), "--out", str(out), "--steps", "100000",
                "--batch-size", "16", "--eval-every", "2", "--eval-samples", "20", "--quiet")
    last = last_path(out)
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert last.exists(), proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "--resume" in stdout
    model = trimkit.load_checkpoint(last)  # loads, and carries what resume needs
    state = read_checkpoint(last)["train_state"]
    assert state["step"] >= 2 and model.config.num_labels == len(model.labels)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow  # starts two training processes: ~20 s
def test_two_process_ddp_equals_one_process(base_ckpt, jsonl_data, tmp_path):
    common = ["train", str(base_ckpt), "--data", str(jsonl_data), "--steps", "4", "--batch-size", "16",
              "--eval-every", "4", "--eval-samples", "20", "--quiet",
              "--decision-margin", "8"]  # its mean is over the global batch's decisions too
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "trimkit.cli", *common, "--out", str(tmp_path / "one.pt")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "trimkit.cli", *common, "--out", str(tmp_path / "two.pt")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr
    a = read_checkpoint(tmp_path / "one.last.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "two.last.pt")["state_dict"]
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    ha = read_checkpoint(tmp_path / "one.last.pt")["train_state"]["history"][-1]
    hb = read_checkpoint(tmp_path / "two.last.pt")["train_state"]["history"][-1]
    assert ha["train_ratio_mean"] == pytest.approx(hb["train_ratio_mean"], abs=1e-6)  # the global batch's ratio
    assert two.stderr.count("warning: the best checkpoint") == one.stderr.count("warning: the best checkpoint") <= 1
    changed = max((a[k].float() - read_checkpoint(base_ckpt)["state_dict"][k].float()).abs().max().item() for k in a)
    assert changed > 1e-4  # the runs did train


def test_epoch_order_groups_questions_of_one_image():
    from trimkit.train.loop import epoch_order

    image_index = torch.randint(0, 40, (500,), generator=torch.Generator().manual_seed(0))
    plain = epoch_order(image_index, 1, torch.Generator().manual_seed(7))
    assert torch.equal(plain, torch.randperm(500, generator=torch.Generator().manual_seed(7)))  # k = 1: unchanged
    for k in (2, 4, 9):
        order = epoch_order(image_index, k, torch.Generator().manual_seed(7))
        assert torch.equal(torch.sort(order).values, torch.arange(500))  # every question once
        assert torch.equal(order, epoch_order(image_index, k, torch.Generator().manual_seed(7)))  # seeded
        img = image_index[order].tolist()
        runs = [1]  # lengths of the runs of one image
        for a, b in zip(img, img[1:]):
            runs[-1:] = [runs[-1] + 1] if a == b else [runs[-1], 1]
        counts = torch.bincount(image_index, minlength=40)
        # an image's questions come in chunks of k: runs of up to k (two chunks of one image may meet)
        assert sum(-(-int(c) // k) for c in counts) >= len(runs)
        def neighbours(seq):  # adjacent pairs that share an image
            return sum(a == b for a, b in zip(seq, seq[1:]))

        assert neighbours(img) >= 0.5 * (1 - 1 / k) * 499 > 3 * neighbours(image_index[plain].tolist())


def test_questions_per_image_trains_with_shared_vision(base_ckpt, jsonl_data, tmp_path):
    """Grouped order + one vision pass per image: same losses as the per-question passes on those batches."""
    cfg = cfg_for(jsonl_data, tmp_path / "g.pt", steps=4, no_trim=True, questions_per_image=3)
    result = train(base_ckpt, cfg, show_progress=False)
    assert result.steps_done == 4 and result.out.exists()
    model = trimkit.load_checkpoint(base_ckpt)
    from trimkit.data import load_dataset

    data = load_dataset(cfg.data, tokenizer=model.tokenizer, labels=model.labels, image_size=32, splits=("train",))
    idx = torch.arange(12)
    groups = data.train.image_index[idx]
    assert groups.unique().numel() < 12
    for no_trim in (True, False):
        obj = SmartTrimObjective(model, dataclasses.replace(cfg, no_trim=no_trim)).train()
        noise = BatchNoise(1, 12, 0)
        shared = obj(*data.train.batch(idx), target=0.7, noise=noise, image_groups=groups)
        plain = obj(*data.train.batch(idx), target=0.7, noise=BatchNoise(1, 12, 0))
        torch.testing.assert_close(shared.loss, plain.loss, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="questions-per-image"):
        TrainConfig(questions_per_image=0)


def test_resume_refuses_options_that_differ_from_the_saved_run():
    saved = TrainConfig(lr=3e-4, target_ratio=0.4, out="a.pt")
    asked = TrainConfig(lr=0.1, target_ratio=0.4, out="")
    with pytest.raises(BadInputError, match=r"--lr 0\.1 \(saved: 0\.0003\)"):
        resumed_config("x.last.pt", saved, asked, given={"lr"})
    # the same value given again, a moved --out, or a non-default value not given on purpose: the saved run
    same = resumed_config("x.last.pt", saved, TrainConfig(target_ratio=0.4, out="b.pt"), given={"target_ratio", "out"})
    assert same.out == "b.pt" and same.lr == 3e-4
    assert resumed_config("x.last.pt", saved, asked, given=()).lr == 3e-4


def test_cli_resume_with_a_conflicting_option_is_one_line_exit_2(base_ckpt, jsonl_data, tmp_path, capsys):
    half = train(base_ckpt, cfg_for(jsonl_data, tmp_path / "r.pt", steps=4, eval_every=2), show_progress=False,
                 stop_at_step=1)
    before = half.last.read_bytes()
    assert main(["train", str(half.last), "--resume", "--quiet", "--target-ratio", "0.3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--target-ratio 0.3 (saved: 0.5)" in err[0]
    assert half.last.read_bytes() == before  # nothing trained, nothing written
