"""The multiple-choice benchmark items (HellaSwag, ARC, PIQA, CommonsenseQA, OpenBookQA, MMLU) as shared in
the evaluation data, prompted in cloze form as lm-eval-harness and lighteval prompt them, so that scores
compare with published ones."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question in cloze form: choices are continuations of `context`."""

    id: str
    context: str
    choices: tuple[str, ...]
    gold: int


def load_mc_tasks(eval_dir: Path) -> dict[str, list[MCItem]]:
    """The development items of every benchmark, prompted as in lm-eval-harness / lighteval cloze tasks."""
    return {name: load(Path(eval_dir)) for name, load in _MC_LOADERS.items()}


def _qa(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        yield from (json.loads(line) for line in f if line.strip())


def _hellaswag_clean(text: str) -> str:
    """lm-eval-harness's HellaSwag preprocessing (WikiHow bracket artefacts out)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(eval_dir: Path) -> list[MCItem]:
    """HellaSwag val as shared ("activity: ctx", llama.cpp's form): without ctx_a/ctx_b, ctx_b's first letter
    stays as written, where lm-eval-harness capitalises it."""
    return [
        MCItem(
            str(row["idx"]),
            _hellaswag_clean(row["ctx"]),
            tuple(" " + _hellaswag_clean(e) for e in row["endings"]),
            int(row["label"]),
        )
        for row in _jsonl(eval_dir / "hellaswag" / "hellaswag_val.jsonl")
    ]


def _ai2_format(path: Path) -> list[MCItem]:
    """ARC / OpenBookQA official format: question.stem, question.choices[{label, text}], answerKey."""
    items = []
    for row in _jsonl(path):
        choices = row["question"]["choices"]
        labels = [c["label"] for c in choices]
        items.append(
            MCItem(
                row["id"],
                _qa(row["question"]["stem"]),
                tuple(" " + c["text"] for c in choices),
                labels.index(row["answerKey"].strip()),
            )
        )
    return items


def _piqa(eval_dir: Path) -> list[MCItem]:
    return [
        MCItem(str(i), _qa(row["goal"]), (" " + row["sol1"], " " + row["sol2"]), int(row["label"]))
        for i, row in enumerate(_jsonl(eval_dir / "piqa" / "piqa_valid.jsonl"))
    ]


def _csqa(eval_dir: Path) -> list[MCItem]:
    return [
        MCItem(
            row["id"],
            _qa(row["question"]),
            tuple(" " + t for t in row["choices"]["text"]),
            row["choices"]["label"].index(row["answerKey"].strip()),
        )
        for row in _jsonl(eval_dir / "commonsenseqa" / "csqa_dev.jsonl")
    ]


def _mmlu(eval_dir: Path) -> list[MCItem]:
    items = []
    for path in sorted((eval_dir / "mmlu" / "val").glob("*_val.csv")):
        subject = path.name.removesuffix("_val.csv")
        with open(path, encoding="utf-8", newline="") as f:
            for i, (question, *choices, answer) in enumerate(csv.reader(f)):
                items.append(
                    MCItem(
                        f"{subject}/{i}", _qa(question), tuple(" " + c for c in choices), "ABCD".index(answer.strip())
                    )
                )
    return items


_MC_LOADERS: dict[str, Callable[[Path], list[MCItem]]] = {
    "hellaswag": _hellaswag,
    "arc_easy": lambda d: _ai2_format(d / "arc" / "ARC-Easy-Dev.jsonl"),
    "arc_challenge": lambda d: _ai2_format(d / "arc" / "ARC-Challenge-Dev.jsonl"),
    "piqa": _piqa,
    "commonsenseqa": _csqa,
    "openbookqa": lambda d: _ai2_format(d / "openbookqa" / "obqa_train.jsonl"),
    "mmlu": _mmlu,
}
