"""`trimkit pretrain`: labels from the data; --task tokens trains the vision encoder only, --task match the
backbone (not the classifier, not the trimmers)."""

import contextlib
import io
import subprocess

import pytest
import torch

import trimkit
from trimkit.checkpoint import read_checkpoint
from trimkit.cli import main
from trimkit.config import TEXT, VISION
from trimkit.data import load_dataset
from trimkit.factory import new_model
from trimkit.train.pretrain import (
    EASYVQA_COLORS,
    EASYVQA_SHAPES,
    _easyvqa_object_labels,
    foreground,
    match_texts,
    patch_labels,
    token_targets,
)


def test_foreground_and_patch_labels():
    img = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    img[:, :] = torch.tensor([200, 190, 180], dtype=torch.uint8)[:, None, None]  # background
    img[0, :, 8:16, 0:6] = torch.tensor([255, 0, 0], dtype=torch.uint8)[:, None, None]  # an object
    img[0, :, 8, 0] = torch.tensor([205, 185, 180], dtype=torch.uint8)  # noise near the background colour
    fg = foreground(img)
    expected = torch.zeros(1, 16, 16, dtype=torch.bool)
    expected[0, 8:16, 0:6] = True
    expected[0, 8, 0] = False
    assert torch.equal(fg, expected)
    maps = torch.where(fg, torch.tensor(3), torch.tensor(0))
    # 8x8 patches in row-major order: only the bottom-left one is covered (>= 25%) by the object
    assert patch_labels(maps, 8, classes=5).tolist() == [[0, 0, 3, 0]]
    # a patch covered by less than min_cover stays background
    assert patch_labels(maps, 8, classes=5, min_cover=0.8).tolist() == [[0, 0, 0, 0]]


def test_easyvqa_labels_agree_with_every_answer(tiny_model):
    data = load_dataset("easyvqa", tokenizer=tiny_model.tokenizer, labels=tiny_model.labels, image_size=32,
                        splits=("train",))
    shape, colour = _easyvqa_object_labels(data.train, tiny_model.labels)
    checked = 0
    for img, label in zip(data.train.image_index.tolist(), data.train.labels.tolist()):
        answer = tiny_model.labels[label]
        if answer in EASYVQA_SHAPES:
            assert EASYVQA_SHAPES[shape[img]] == answer
            checked += 1
        elif answer in EASYVQA_COLORS:
            assert EASYVQA_COLORS[colour[img]] == answer
            checked += 1
    assert checked > 5000
    t = token_targets("easyvqa", tiny_model)
    # most images are labelled, training and held-out images are the train and validation parts
    assert t.source["train_images"] > 0.75 * 3600 and t.source["held_out_images"] > 0.75 * 400
    assert t.train_labels.shape == (t.source["train_images"], 16) and t.classes == 1 + 3 * 8
    has_object = (t.train_labels > 0).any(1).float().mean()
    assert has_object > 0.9  # the object shows up under some token of nearly every image (32 px, 4x4 tokens)
    assert (t.train_labels > 0).float().mean() < 0.5  # and most tokens are background
    # the held-out images are the validation part `trimkit train --seed 0` carves: none is trained on
    assert not set(t.held_rows.tolist()) & set(t.train_rows.tolist())
    val_rows = set(torch.unique(data.val.image_index).tolist())
    assert set(t.held_rows.tolist()) <= val_rows and not set(t.train_rows.tolist()) & val_rows


def test_easyvqa_questions_read_with_their_negation():
    from trimkit.data.dataset import VQASplit

    labels = ["yes", "no", "circle", "rectangle", "triangle", "red", "blue"]
    asked = [  # (image, question, answer)
        (0, "is there not a red shape?", "no"),  # not absent -> red
        (0, "does the image contain a triangle?", "yes"),
        (1, "does the image not contain a circle?", "yes"),  # absent: says nothing
        (1, "is no blue shape present?", "no"),  # blue
        (1, "what is the blue shape?", "rectangle"),
        (2, "is there a red shape in the image?", "no"),  # absent: says nothing
        (2, "what color is the shape?", "blue"),
    ]
    n = len(asked)
    split = VQASplit(images=torch.zeros(3, 3, 8, 8, dtype=torch.uint8),
                     image_index=torch.tensor([i for i, _, _ in asked]), input_ids=torch.zeros(n, 2, dtype=torch.long),
                     attention_mask=torch.ones(n, 2, dtype=torch.long),
                     labels=torch.tensor([labels.index(a) for _, _, a in asked]), questions=[q for _, q, _ in asked])
    shape, colour = _easyvqa_object_labels(split, labels)
    assert [EASYVQA_SHAPES[i] if i >= 0 else None for i in shape.tolist()] == ["triangle", "rectangle", None]
    assert [EASYVQA_COLORS[i] if i >= 0 else None for i in colour.tolist()] == ["red", "blue", "blue"]


def _cli(*args):
    """`trimkit ARGS` through `main`, as the console script runs it, in this process (a new process would pay
    torch's import again; tests/test_cli.py checks the real process): its exit code and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def _pretrain_shapes(tmp_path, *args, **model_options):
    """`trimkit pretrain ARGS` on a fresh tiny shapes model: (the model before, the model after)."""
    start, out = tmp_path / "init.pt", tmp_path / "out.pt"
    trimkit.save_checkpoint(new_model("tiny", "shapes", seed=0, **model_options), start)
    r = _cli("pretrain", start, "--data", "shapes", *args, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return trimkit.load_checkpoint(start), trimkit.load_checkpoint(out), r.stdout, read_checkpoint(out)["meta"]


def test_pretrain_tokens_trains_the_vision_encoder_only(tmp_path):
    a, b, stdout, meta = _pretrain_shapes(tmp_path, "--steps", "60", "--lr", "3e-3")
    assert "token accuracy" in stdout

    def changed(m):
        return [not torch.equal(p, q) for p, q in zip(a.encoder_parameters(m), b.encoder_parameters(m))]

    assert all(changed(VISION)) and not any(changed(TEXT))
    assert all(torch.equal(p, q) for p, q in zip(a.classifier.parameters(), b.classifier.parameters()))
    info = meta["vision_pretrain"]
    assert info["data"] == "shapes" and info["steps"] == 60 and len(info["curve"]) == 5
    first, last = info["curve"][0], info["curve"][-1]
    assert last["loss"] < first["loss"]
    assert last["object_token_accuracy"] > first["object_token_accuracy"]
    # the result goes on to `trimkit train` like any checkpoint
    assert b.config == a.config and b.labels == a.labels


@pytest.mark.parametrize("args, message", [
    (["--data", "{jsonl}"], "per-object labels"),
    (["--steps", "0"], "at least 1"),
    (["--batch-size", "0"], "at least 1"),
    (["--lr", "0"], "must be positive"),
    (["--data", "easyvqa"], "not easy-VQA's"),  # a shapes model
    (["--task", "captions"], "--task"),
])
def test_pretrain_bad_input(tmp_path, jsonl_data, args, message):
    start = tmp_path / "init.pt"
    trimkit.save_checkpoint(new_model("tiny", "shapes", seed=0), start)
    out = tmp_path / "vision.pt"
    r = _cli("pretrain", start, "--out", out, *[a.format(jsonl=jsonl_data) for a in args])
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_train_keeps_the_pretraining_seed(tmp_path):
    """pretrain and train carve easy-VQA's validation images with their seed: another seed is refused."""
    start = tmp_path / "init.pt"
    trimkit.save_checkpoint(new_model("tiny", "easyvqa", seed=0), start)
    vision = tmp_path / "vision.pt"
    assert _cli("pretrain", start, "--steps", "2", "--out", vision, "--quiet", "--seed", "1").returncode == 0
    r = _cli("train", vision, "--no-trim", "--steps", "1", "--out", tmp_path / "b.pt", "--quiet", "--seed", "0")
    assert r.returncode == 2 and "pre-trained (trimkit pretrain) with --seed 1" in r.stderr
    r = _cli("pretrain", vision, "--task", "match", "--steps", "1", "--out", tmp_path / "m.pt", "--seed", "0")
    assert r.returncode == 2 and "--seed 1" in r.stderr and not (tmp_path / "m.pt").exists()


def test_match_texts_are_balanced_and_true():
    colours, shapes = ("red", "blue", "green"), ("circle", "square")
    g = torch.Generator().manual_seed(0)
    objects = torch.zeros(600, 3, 2, dtype=torch.long)
    objects[:, 0, 1] = 1  # a red square in every image
    objects[::2, 2, 0] = 2  # and two green circles in every other one
    texts, labels = match_texts(objects, colours, shapes, g)
    assert 0.4 < labels.float().mean() < 0.6
    kinds = {"colour": 0, "shape": 0, "pair": 0}
    for obj, text, label in zip(objects, texts, labels.tolist()):
        words = text.split()
        if len(words) == 2:
            kinds["pair"] += 1
            named = bool(obj[colours.index(words[0]), shapes.index(words[1])] > 0)
        elif words[0] in colours:
            kinds["colour"] += 1
            named = bool(obj[colours.index(words[0])].sum() > 0)
        else:
            kinds["shape"] += 1
            named = bool(obj[:, shapes.index(words[0])].sum() > 0)
        assert named == bool(label), (text, obj)
    assert min(kinds.values()) > 150
    # an image with every shape has no absent shape to name: its shape texts are all true
    full = torch.ones(50, 3, 2, dtype=torch.long)
    texts, labels = match_texts(full, colours, shapes, g)
    assert labels.all()


# the product head (the one the classifier recipe uses) in make test; the concat head with the slow tests
@pytest.mark.parametrize("pool_product", [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=["concat-head", "product-head"])
def test_pretrain_match_trains_the_backbone_not_the_classifier(tmp_path, pool_product):
    """(With --pool-product the matching head reads the pooled states' product too, as the classifier does.)"""
    a, b, stdout, meta = _pretrain_shapes(tmp_path, "--task", "match", "--steps", "10", pool_product=pool_product)
    assert "match accuracy" in stdout
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    same = {k for k in pa if torch.equal(pa[k], pb[k])}
    fixed = {k for k in pa if k.startswith(("classifier.", "token_trimmers.", "head_trimmers."))}
    assert same == fixed  # everything else (both encoders, fusion, pooling) learned
    info = meta["match_pretrain"]
    assert info["task"] == "match" and info["steps"] == 10 and len(info["curve"]) == 5
    assert {"match_accuracy", "named_accuracy", "absent_accuracy"} <= set(info["curve"][-1])
