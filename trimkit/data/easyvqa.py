"""easy-VQA, from the `easy-vqa` package (4,000 train / 1,000 test images, 13 answers)."""

from __future__ import annotations

from ..errors import import_optional

__all__ = ["answers", "questions", "image_paths", "SHAPES", "COLORS", "question_words", "negated"]

SHAPES = ("circle", "rectangle", "triangle")  # the shape and colour answers, in a fixed order
COLORS = ("red", "green", "blue", "yellow", "teal", "brown", "black", "gray")


def question_words(question: str) -> list[str]:
    return question.lower().rstrip("?").split()


def negated(question: str) -> bool:
    """A yes/no question asked the other way round: "is there not a red shape?", "is no circle present?"."""
    words = question_words(question)
    return "not" in words or "no" in words


def _pkg():
    return import_optional("easy_vqa", "easy-VQA needs the `easy-vqa` package: pip install easy-vqa")


def answers() -> list[str]:
    """The 13 answers, in the package's order (the label order of every easy-VQA model)."""
    return list(_pkg().get_answers())


def questions(split: str) -> tuple[list[str], list[str], list[int]]:
    """(questions, answers, image ids) of split `train` or `test`."""
    pkg = _pkg()
    if split == "train":
        q, a, i = pkg.get_train_questions()
    elif split == "test":
        q, a, i = pkg.get_test_questions()
    else:
        raise ValueError(f"easy-VQA has splits train and test, not {split!r}")
    return list(q), list(a), [int(x) for x in i]


def image_paths(split: str) -> dict[int, str]:
    pkg = _pkg()
    paths = pkg.get_train_image_paths() if split == "train" else pkg.get_test_image_paths()
    return {int(k): str(v) for k, v in paths.items()}
