"""`shapes`: a seeded generator of scenes with 1..N objects and questions whose answer needs
one object (existence, colour or shape of a named object), several (counting one shape) or all
of them (counting everything), so that the right amount of computation varies per image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["COLORS", "SHAPES", "QUESTION_TYPES", "labels", "generate", "draw_scene"]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (230, 200, 30), "purple": (140, 50, 170), "orange": (240, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
QUESTION_TYPES = ("exist", "color", "shape", "count_shape", "count_all")


def labels(max_objects: int = 6) -> list[str]:
    """The answer set: yes/no, colours, shapes, counts 0..max_objects."""
    return ["yes", "no", *COLORS, *SHAPES, *[str(i) for i in range(max_objects + 1)]]


def object_label(color: str, shape: str) -> int:
    """1 + colour index * len(SHAPES) + shape index (0 is the background in label maps)."""
    return 1 + list(COLORS).index(color) * len(SHAPES) + SHAPES.index(shape)


def draw_scene(objects: list[tuple[str, str, int, int, int]], size: int, *, labels: bool = False) -> np.ndarray:
    """objects: (color, shape, cx, cy, radius) on a light-gray canvas -> (size, size, 3) uint8.

    labels=True draws the label map instead: (size, size) uint8, 0 for the background and
    1 + colour index * len(SHAPES) + shape index under each object.
    """
    img = Image.new("L", (size, size), 0) if labels else Image.new("RGB", (size, size), (235, 235, 235))
    d = ImageDraw.Draw(img)
    for color, shape, cx, cy, r in objects:
        fill = object_label(color, shape) if labels else COLORS[color]
        if shape == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif shape == "square":
            d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return np.asarray(img, dtype=np.uint8)


def _place(rng: np.random.Generator, n: int, size: int) -> list[tuple[int, int, int]]:
    """n non-overlapping (cx, cy, r) placements (rejection sampling)."""
    out: list[tuple[int, int, int]] = []
    r_lo, r_hi = max(2, size // 16), max(3, size // 9)
    for _ in range(2000):
        if len(out) == n:
            break
        r = int(rng.integers(r_lo, r_hi + 1))
        cx, cy = (int(v) for v in rng.integers(r + 1, size - r - 1, size=2))
        if all((cx - x) ** 2 + (cy - y) ** 2 > (r + q + 2) ** 2 for x, y, q in out):
            out.append((cx, cy, r))
    return out


def _question(rng: np.random.Generator, objs: list[tuple[str, str, int, int, int]],
              max_objects: int) -> tuple[str, str, str]:
    """One (question, answer, type) about the scene."""
    colors = [o[0] for o in objs]
    shapes = [o[1] for o in objs]
    for _ in range(20):
        qtype = QUESTION_TYPES[int(rng.integers(len(QUESTION_TYPES)))]
        if qtype == "exist":
            if rng.random() < 0.5:  # ask about a present object half of the time
                c, s = objs[int(rng.integers(len(objs)))][:2]
            else:
                c, s = list(COLORS)[int(rng.integers(len(COLORS)))], SHAPES[int(rng.integers(3))]
            present = any(o[0] == c and o[1] == s for o in objs)
            return f"is there a {c} {s}?", "yes" if present else "no", qtype
        if qtype == "color":
            unique = [s for s in SHAPES if shapes.count(s) == 1]
            if unique:
                s = unique[int(rng.integers(len(unique)))]
                return f"what color is the {s}?", colors[shapes.index(s)], qtype
        elif qtype == "shape":
            unique = [c for c in COLORS if colors.count(c) == 1]
            if unique:
                c = unique[int(rng.integers(len(unique)))]
                return f"what shape is the {c} object?", shapes[colors.index(c)], qtype
        elif qtype == "count_shape":
            s = SHAPES[int(rng.integers(3))]
            return f"how many {s}s are there?", str(shapes.count(s)), qtype
        else:
            return "how many objects are there?", str(len(objs)), qtype
    return "how many objects are there?", str(len(objs)), "count_all"


def generate(n_images: int, *, max_objects: int = 6, image_size: int = 64, questions_per_image: int = 3,
             seed: int | list[int] = 0, label_maps: bool = False) -> dict:
    """A seeded split (seed: an int, or a list of ints for a separate stream): images (I, S, S, 3) uint8 and per-question lists.

    Returns dict(images, scenes, image_index, questions, answers, extra={"n_objects", "qtype", "qtype_id"});
    scenes (I, len(COLORS), len(SHAPES)) int64 counts the objects of each colour and shape in every image;
    with label_maps, "label_maps" (I, S, S) uint8 holds each pixel's object label (see `draw_scene`);
    qtype_id indexes QUESTION_TYPES (numeric extras travel with the dataset split).
    """
    rng = np.random.default_rng(seed)
    images = np.zeros((n_images, image_size, image_size, 3), dtype=np.uint8)
    scenes = np.zeros((n_images, len(COLORS), len(SHAPES)), dtype=np.int64)
    maps = np.zeros((n_images, image_size, image_size), dtype=np.uint8) if label_maps else None
    image_index, questions, answers, n_objs, qtypes = [], [], [], [], []
    for i in range(n_images):
        want = int(rng.integers(1, max_objects + 1))
        places = _place(rng, want, image_size)
        objs = [(list(COLORS)[int(rng.integers(len(COLORS)))], SHAPES[int(rng.integers(3))], cx, cy, r)
                for cx, cy, r in places]
        images[i] = draw_scene(objs, image_size)
        if label_maps:
            maps[i] = draw_scene(objs, image_size, labels=True)
        for color, shape, *_ in objs:
            scenes[i].reshape(-1)[object_label(color, shape) - 1] += 1
        for _ in range(questions_per_image):
            q, a, t = _question(rng, objs, max_objects)
            image_index.append(i)
            questions.append(q)
            answers.append(a)
            n_objs.append(len(objs))
            qtypes.append(t)
    out = {"label_maps": maps} if label_maps else {}
    return {**out, "images": images, "scenes": scenes, "image_index": image_index, "questions": questions,
            "answers": answers,
            "extra": {"n_objects": n_objs, "qtype": qtypes, "qtype_id": [QUESTION_TYPES.index(t) for t in qtypes]}}
