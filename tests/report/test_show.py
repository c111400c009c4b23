"""`trimkit show` draws what each layer keeps."""

from pathlib import Path

import pytest
import torch

import trimkit
from trimkit.cli import main
from trimkit.data import easyvqa

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    return path.exists() and path.stat().st_size > 2000 and path.read_bytes()[:8] == PNG


@pytest.fixture(scope="module")
def image():
    return easyvqa.image_paths("test")[0]


def test_show_draws_the_kept_tokens(pruning_ckpt, tmp_path, image):
    from trimkit.report.show import explain

    out = tmp_path / "show.png"
    question = "what color is the shape in the image"
    assert main(["show", str(pruning_ckpt), image, question, "--out", str(out)]) == 0
    assert is_png(out)
    model = trimkit.load_checkpoint(pruning_ckpt)
    ex = explain(model, image, question)
    assert len(ex["layers"]) == len(model.token_trimmers)
    assert ex["answer"] in model.labels and 0 < ex["probability"] <= 1
    # the drawn masks are the model's own decisions: they add up to keep_counts (CLS always kept)
    from trimkit.data.dataset import _open_image, _resize

    pix = torch.from_numpy(_resize(_open_image(Path(image), "t"), model.config.image_size).copy())
    pix = pix.permute(2, 0, 1)[None].float().div(127.5).sub(1.0)
    ids, mask = model.tokenizer.encode([question])
    with torch.no_grad():
        counts = model(pix, ids, mask, mode="prune").keep_counts[0]
    for ti, layer in enumerate(ex["layers"]):
        assert int(layer["patches"].sum()) + 1 == int(counts[ti, 0])
        assert int(layer["words"].sum()) == int(counts[ti, 1])
    # this model prunes: some patch, word or head is gone somewhere
    assert any(not layer["patches"].all() or not layer["words"].all() or min(layer["heads"]) < ex["num_heads"]
               for layer in ex["layers"])
    assert main(["show", str(pruning_ckpt), image, question, "--out", str(out)]) == 2  # no overwrite


@pytest.mark.parametrize("img,question,message", [
    ("missing.png", "what shape", "does not exist"),
    (None, "   ", "empty"),
])
def test_show_bad_input(pruning_ckpt, tmp_path, image, img, question, message, capsys):
    path = str(tmp_path / img) if img else image
    assert main(["show", str(pruning_ckpt), path, question, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "x.png").exists()


def test_show_flags_unknown_words_and_truncation_and_explains_heads(pruning_ckpt, tmp_path, image, capsys):
    from trimkit.report.show import explain, heads_legend, notes

    model = trimkit.load_checkpoint(pruning_ckpt)
    n = model.tokenizer.max_len
    question = "what zorblax color is the " + " ".join(["shape"] * n)  # one unknown word, and too long
    ex = explain(model, image, question)
    assert ex["unknown_words"] == ["zorblax"] and ex["unknown_positions"] == [2]
    assert ex["text_tokens"] == n + 6 and ex["max_text_len"] == n and ex["dropped"] == ["shape"] * 6
    lines = notes(ex)
    assert len(lines) == 2 and "zorblax" in lines[0] and f"{n + 6} tokens, the model reads {n}" in lines[1]
    legend = heads_legend(ex["layers"])
    kinds = {layer["kind"] for layer in ex["layers"]}
    assert ("encoder layers: vision self / text self" in legend) == ("encoder" in kinds)
    assert ("fusion layers: vision self / vision cross / text self / text cross" in legend) == ("fusion" in kinds)
    assert all(len(layer["heads"]) == len(layer["modules"]) == len(layer["heads_of"]) for layer in ex["layers"])

    out = tmp_path / "show.png"
    assert main(["show", str(pruning_ckpt), image, question, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "note: not in the model's vocabulary, read as unknown ([UNK]): zorblax" in printed
    assert f"note: question truncated: {n + 6} tokens" in printed
    assert is_png(out)
    # a question the model reads whole prints no note
    assert main(["show", str(pruning_ckpt), image, "what shape is in the image", "--out", str(out), "--force"]) == 0
    assert "note:" not in capsys.readouterr().out


@pytest.mark.parametrize("suffix,magic", [(".jpg", b"\xff\xd8\xff"), (".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_show_writes_the_format_its_suffix_names(pruning_ckpt, tmp_path, image, suffix, magic):
    out = tmp_path / f"show{suffix}"
    assert main(["show", str(pruning_ckpt), image, "what shape", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(magic)


@pytest.mark.parametrize("name", ["show.gif", "show.PNG.txt", "show"])
def test_show_refuses_a_suffix_it_does_not_write_before_any_work(tmp_path, image, name, capsys):
    # the checkpoint does not exist: the suffix is refused first, when the options are parsed
    assert main(["show", str(tmp_path / "none.pt"), image, "what shape", "--out", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trimkit writes figures as .png" in err[0] and "none.pt" not in err[0]
    assert not list(tmp_path.iterdir())
