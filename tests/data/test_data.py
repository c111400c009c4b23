import json

import numpy as np
import pytest
import torch

from trimkit.data import WordTokenizer, load_dataset, read_jsonl, task_vocabulary
from trimkit.data.shapes import QUESTION_TYPES, generate, labels
from trimkit.errors import BadInputError


def test_shapes_is_seeded_and_consistent():
    a, b, c = generate(30, seed=1), generate(30, seed=1), generate(30, seed=2)
    assert np.array_equal(a["images"], b["images"]) and a["questions"] == b["questions"]
    assert not np.array_equal(a["images"], c["images"])
    assert set(a["answers"]) <= set(labels())
    n = a["extra"]["n_objects"]
    assert min(n) >= 1 and max(n) <= 6
    scenes = a["scenes"]  # (images, colours, shapes) object counts, consistent with the answers
    assert scenes.shape == (30, 6, 3)
    for q, ans, k, i in zip(a["questions"], a["answers"], n, a["image_index"]):
        assert scenes[i].sum() == k
        if q == "how many objects are there?":
            assert ans == str(k)
        elif q.startswith("how many "):
            shape = q.split()[2][:-1]  # "how many circles are there?"
            assert ans == str(scenes[i][:, ("circle", "square", "triangle").index(shape)].sum())
    assert [QUESTION_TYPES[i] for i in a["extra"]["qtype_id"]] == a["extra"]["qtype"]
    assert {QUESTION_TYPES[i] for i in a["extra"]["qtype_id"]} == set(QUESTION_TYPES)


def test_easyvqa_splits():
    lab, texts = task_vocabulary("easyvqa")
    assert len(lab) == 13 and len(texts) == 38_575
    tok = WordTokenizer.build(texts, max_len=16)
    data = load_dataset("easyvqa", tokenizer=tok, labels=lab, image_size=32, seed=0)
    assert len(data.train) + len(data.val) == 38_575 and len(data.test) == 9_673
    # validation is carved by image: no image is in both
    tr = set(data.train.image_index.tolist())
    va = set(data.val.image_index.tolist())
    assert not tr & va and 0.08 < len(va) / 4000 < 0.12
    pv, ids, mask, y = data.test.batch(torch.arange(5))
    assert pv.shape == (5, 3, 32, 32) and pv.min() >= -1 and pv.max() <= 1
    assert (ids[:, 0] == 2).all() and y.max() < 13
    again = load_dataset("easyvqa", tokenizer=tok, labels=lab, image_size=32, seed=0, splits=("val",))
    assert torch.equal(again.val.labels, data.val.labels)


def test_jsonl_round_trip(jsonl_data):
    raw = read_jsonl(jsonl_data)
    assert len(raw["questions"]) == 180
    lab, texts = task_vocabulary(str(jsonl_data))
    assert lab == sorted(set(raw["answers"]))
    tok = WordTokenizer.build(texts, max_len=16)
    data = load_dataset(str(jsonl_data), tokenizer=tok, labels=lab, image_size=32)
    assert len(data.train) + len(data.val) == 180


def _write(tmp_path, lines):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")
    return p


@pytest.mark.parametrize("record,message", [
    ({"image": "missing.png", "question": "what?", "answer": "yes"}, "does not exist"),
    ({"image": "img.png", "question": "  ?? ", "answer": "yes"}, "empty question"),
    ({"image": "img.png", "question": "is it?"}, "missing or non-string field"),
    ("{not json", "not valid JSON"),
    ({"image": "broken.png", "question": "is it red?", "answer": "yes"}, "broken.png is not readable"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, record, message):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = {"image": "img.png", "question": "is it red?", "answer": "yes"}
    p = _write(tmp_path, [good, record])
    with pytest.raises(BadInputError, match=f"{p}:2: .*{message}"):
        read_jsonl(p)


def test_non_utf8_jsonl_names_the_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'\n{"question": "caf\xe9"}\n')  # line 1 blank, line 2 Latin-1
    with pytest.raises(BadInputError, match=f"{p}:2: not UTF-8 text"):
        read_jsonl(p)


def test_unknown_answers_are_refused(jsonl_data):
    lab, texts = task_vocabulary(str(jsonl_data))
    tok = WordTokenizer.build(texts, max_len=16)
    first = next(n for n, line in enumerate(jsonl_data.read_text().splitlines(), 1)
                 if json.loads(line)["answer"] == lab[-1])
    with pytest.raises(BadInputError, match=f"{jsonl_data}:{first}: answers not among the model's labels"):
        load_dataset(str(jsonl_data), tokenizer=tok, labels=lab[:-1], image_size=32)


def test_tokenizer():
    tok = WordTokenizer.build(["What color is the shape?", "is it red"], max_len=5)
    ids, mask = tok.encode(["what color is the red shape", "zebra"])
    assert ids.shape == (2, 5) and mask.tolist()[1] == [1, 1, 0, 0, 0]
    assert tok.decode(ids[1, :2].tolist()) == ["[CLS]", "[UNK]"]
    with pytest.raises(BadInputError, match="empty text"):
        tok.encode(["?!"])
    assert WordTokenizer.from_dict(tok.to_dict()).vocab == tok.vocab
