"""Tests for the tuning data: loss masks, truncation, fixed splits, the DB import, batching, and the protected
corpus keeping clear of every evaluation row."""

from __future__ import annotations

import csv
import itertools
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from agent.call.calllog import CallLog
from innkeeper.core.db.database import Database
from innkeeper.core.settings import Settings
from tuning.data import corpus
from tuning.data.dialogues import (
    IGNORE_INDEX,
    SYSTEM_PROMPT,
    Dialogue,
    TrainingExample,
    assert_disjoint,
    batches,
    build_examples,
    collate,
    import_call_id,
    import_dialogues,
    load_db_dialogues,
    load_shared_dialogues,
    split_dialogues,
)

SHARED = Settings().shared_data
needs_shared = pytest.mark.skipif(not (SHARED / "eval").is_dir(), reason=f"shared data not at {SHARED}")

BOOKING = Dialogue(
    id="test:booking",
    source="test",
    turns=(
        ("caller", "Hello, I need a room for Friday."),
        ("agent", "Of course. How many nights will you stay?"),
        ("caller", "Two nights."),
        ("caller", "Two adults."),
        ("agent", "We have a deluxe king room with a harbor view."),
        ("agent", "Shall I book it?"),
        ("caller", "Yes please."),
        ("agent", "Your booking is confirmed. Goodbye!"),
    ),
)
AGENT_FIRST = Dialogue(
    id="test:greeting",
    source="test",
    turns=(
        ("agent", "Good evening, Harbor View Inn."),
        ("caller", "Is breakfast included?"),
        ("agent", "Breakfast is served from six thirty."),
    ),
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_dir)


def labelled_spans(example: TrainingExample, tokenizer: Any) -> list[str]:
    """The decoded text of each run of supervised tokens."""
    spans: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in example.labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                spans.append([])
            spans[-1].append(label)
        previous = label
    return [tokenizer.decode(span) for span in spans]


def agent_replies(dialogue: Dialogue) -> list[str]:
    """The agent's turns as the chat shows them: consecutive turns merged with a space."""
    replies: list[str] = []
    previous = None
    for role, text in dialogue.turns:
        if role == "agent" and previous == "agent":
            replies[-1] += " " + text
        elif role == "agent":
            replies.append(text)
        previous = role
    return replies


def dialogues(n: int, start: int = 0) -> list[Dialogue]:
    return [Dialogue(f"test:{i}", "test", (("caller", f"call {i}"), ("agent", "ok"))) for i in range(start, n)]


# ---------------------------------------------------------------- loss masks and truncation


@pytest.mark.parametrize("dialogue", [BOOKING, AGENT_FIRST], ids=["caller_first", "agent_first"])
def test_labels_cover_exactly_the_agent_turns_and_their_end(dialogue: Dialogue, tokenizer: Any) -> None:
    (example,) = build_examples([dialogue], tokenizer)
    assert labelled_spans(example, tokenizer) == [f"{reply}<|im_end|>" for reply in agent_replies(dialogue)]
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(example.labels, example.input_ids, strict=True))
    assert example.dialogue_id == dialogue.id


def test_chat_has_the_system_prompt_and_merges_consecutive_turns(tokenizer: Any) -> None:
    booking, greeting = (tokenizer.decode(e.input_ids) for e in build_examples([BOOKING, AGENT_FIRST], tokenizer))
    assert booking.startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nHello")
    assert "<|im_start|>user\nTwo nights. Two adults.<|im_end|>" in booking
    assert greeting.startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>assistant\nGood evening")


def test_truncation_drops_whole_turns_from_the_end(tokenizer: Any) -> None:
    (full,) = build_examples([BOOKING], tokenizer)
    (cut,) = build_examples([BOOKING], tokenizer, max_tokens=len(full.input_ids) - 1)
    replies = agent_replies(BOOKING)
    assert labelled_spans(cut, tokenizer) == [f"{reply}<|im_end|>" for reply in replies[:2]]
    assert cut.input_ids == full.input_ids[: len(cut.input_ids)]
    assert tokenizer.decode(cut.input_ids).endswith(f"{replies[1]}<|im_end|>\n")

    (first,) = build_examples([BOOKING], tokenizer, max_tokens=len(cut.input_ids) - 1)
    assert labelled_spans(first, tokenizer) == [f"{replies[0]}<|im_end|>"]
    assert build_examples([BOOKING], tokenizer, max_tokens=len(first.input_ids) - 1) == []


def test_dialogue_without_agent_turn_gives_no_example(tokenizer: Any) -> None:
    silent = Dialogue("test:silent", "test", (("caller", "Hello?"),))
    assert build_examples([silent], tokenizer) == []


def test_collate_pads_right_and_never_learns_padding(tokenizer: Any) -> None:
    examples = build_examples([BOOKING, AGENT_FIRST], tokenizer)
    batch = collate(examples, pad_id=0)
    long, short = (len(e.input_ids) for e in examples)
    assert batch["input_ids"].shape == (2, long)
    assert batch["attention_mask"][1].tolist() == [1] * short + [0] * (long - short)
    assert (batch["labels"][1, short:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][1, short:] == 0).all()
    assert batch["labels"][0].tolist() == examples[0].labels


def test_batches_are_seeded_and_cover_every_example_once() -> None:
    examples = [TrainingExample([i, i], [IGNORE_INDEX, i], f"e{i}") for i in range(10)]

    def order(seed: int) -> list[int]:
        return [int(t) for b in batches(examples, 3, pad_id=0, seed=seed) for t in b["input_ids"][:, 0]]

    assert order(1) == order(1) != order(2)
    assert sorted(order(1)) == list(range(10))
    plain = [b["input_ids"][:, 0].tolist() for b in batches(examples, 4, pad_id=0, seed=1, shuffle=False)]
    assert plain == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


# ---------------------------------------------------------------- splits


def test_splits_are_stable_when_dialogues_are_added_and_disjoint() -> None:
    before = split_dialogues(dialogues(300), seed=3)
    after = split_dialogues(dialogues(300) + dialogues(600, start=300), seed=3)
    where = {d.id: name for name, ds in after.items() for d in ds}
    assert all(where[d.id] == name for name, ds in before.items() for d in ds)
    counts = {name: len(ds) for name, ds in after.items()}
    assert counts["train"] > 420 and 30 < counts["dev"] < 90 and 30 < counts["test"] < 90
    assert before != split_dialogues(dialogues(300), seed=4)


def test_assert_disjoint_catches_a_held_out_dialogue_in_train() -> None:
    splits = split_dialogues(dialogues(50))
    with pytest.raises(ValueError, match="in both"):
        assert_disjoint({**splits, "train": [*splits["train"], splits["test"][0]]})


@needs_shared
def test_shared_dialogues_load_with_unique_prefixed_ids() -> None:
    loaded = load_shared_dialogues(SHARED)
    assert len({d.id for d in loaded}) == len(loaded)
    assert set(Counter(d.source for d in loaded)) == {"star_hotel", "sgd_hotels", "multiwoz_hotel"}
    assert all(d.id.split(":")[0] in {"star", "sgd", "multiwoz"} for d in loaded)
    assert all(d.turns and all(role in {"caller", "agent"} and text for role, text in d.turns) for d in loaded)
    with open(SHARED / "dialogues" / "multiwoz_hotel" / "dev_hotel_only.jsonl") as f:
        first = json.loads(f.readline())
    (match,) = [d for d in loaded if d.id == f"multiwoz:dev:{first['dialogue_id']}"]
    assert match.turns[0] == ("caller", first["turns"][0]["utterance"].strip())


# ---------------------------------------------------------------- the database


def test_import_round_trip_is_idempotent(sqlite_db: Database) -> None:
    assert import_dialogues(sqlite_db, [BOOKING, AGENT_FIRST]) == 2
    assert import_dialogues(sqlite_db, [BOOKING, AGENT_FIRST]) == 0
    assert sorted(load_db_dialogues(sqlite_db), key=lambda d: d.id) == sorted(
        [BOOKING, AGENT_FIRST], key=lambda d: d.id
    )

    CallLog(sqlite_db).set_training(import_call_id(BOOKING.id), included=False)
    assert load_db_dialogues(sqlite_db) == [AGENT_FIRST]
    assert len(load_db_dialogues(sqlite_db, include_excluded=True)) == 2
    assert load_db_dialogues(sqlite_db, since=datetime.now(UTC) + timedelta(hours=1)) == []


def test_logged_calls_keep_only_spoken_turns(sqlite_db: Database) -> None:
    log = CallLog(sqlite_db)
    call_id = log.start_call(channel="twilio")
    now = datetime.now(UTC)
    for role, text in [("caller", "Any parking?"), ("tool", "{}"), ("agent", "Yes, valet parking."), ("system", "x")]:
        log.log_turn(call_id, role=role, text=text, started_at=now, ended_at=now)
    empty = log.start_call(channel="twilio")
    log.log_turn(empty, role="system", text="hung up", started_at=now, ended_at=now)
    assert load_db_dialogues(sqlite_db) == [
        Dialogue(f"call:{call_id}", "twilio", (("caller", "Any parking?"), ("agent", "Yes, valet parking.")))
    ]


# ---------------------------------------------------------------- the protected corpus


def unique_lines(path: Path, min_chars: int = 30) -> dict[str, int]:
    """Lines that occur once in the file, with their 0-based line number."""
    lines = path.read_text(encoding="utf-8").splitlines()
    counts = Counter(line.strip() for line in lines)
    return {
        line.strip(): i for i, line in enumerate(lines) if counts[line.strip()] == 1 and len(line.strip()) >= min_chars
    }


def chunk_lines(chunks: list[str]) -> set[str]:
    return {line.strip() for chunk in chunks for line in chunk.splitlines()}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@needs_shared
def test_calibration_and_heldout_parts_are_disjoint() -> None:
    calibration_lines = chunk_lines(corpus.general_text(SHARED, "calibration"))
    heldout_lines = chunk_lines(corpus.general_text(SHARED, "heldout"))
    for name in ("wikitext2/wiki_a.raw", "tinyshakespeare/input.txt"):
        lines = unique_lines(SHARED / "eval" / name)
        n_lines = len((SHARED / "eval" / name).read_text(encoding="utf-8").splitlines())
        cut = round(n_lines * corpus.TEXT_CALIBRATION_FRACTION)
        assert all((line in calibration_lines) == (i < cut) for line, i in lines.items())
        assert all((line in heldout_lines) == (i >= cut) for line, i in lines.items())

    def both(fn: Any) -> tuple[set[str], set[str]]:
        return set(fn("calibration")), set(fn("heldout"))

    for calibration, heldout in [
        both(lambda part: corpus.chat_prompts(SHARED, part, 10_000)),
        both(lambda part: corpus.harmful_prompts(SHARED, part)),
        both(lambda part: corpus.safe_prompts(SHARED, part)),
        both(lambda part: corpus.safety_prompts(SHARED, part)),
    ]:
        assert calibration and heldout and not calibration & heldout

    calibration_chat = "\n".join(corpus.chat_prompts(SHARED, "calibration", 10_000))
    for name in ("ARC-Easy-Dev.jsonl", "ARC-Challenge-Dev.jsonl"):
        with open(SHARED / "eval" / "arc" / name) as f:
            dev_stems = [json.loads(line)["question"]["stem"] for line in f]
        assert not [stem for stem in dev_stems if f"{stem.strip()} Is it " in calibration_chat]
    calibration_harmful = set(corpus.harmful_prompts(SHARED, "calibration"))
    assert not {row["Behavior"] for row in read_csv(SHARED / "eval/harmbench/harmbench_behaviors_text_val.csv")} & (
        calibration_harmful
    )


@needs_shared
def test_protected_batches_hold_no_eval_rows_and_reuse_cached_replies(
    tiny_dir: Path, tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    sizes = {"n_text_tokens": 400, "n_chat": 2, "n_safety": 7, "max_len": 320, "seed": 0}
    examples, provenance = corpus.build_protected_batches(
        model, tokenizer, SHARED, **sizes, cache_dir=tmp_path, model_id="tiny@test"
    )
    kinds = Counter(e.dialogue_id.split(":")[0] for e in examples)
    assert kinds["text"] >= 1 and kinds["policy"] == 4 and kinds["harmful"] == 2
    assert provenance["counts"]["text"]["tokens"] >= 400 and len(provenance["sha256"]) == 64
    assert all(len(e.input_ids) <= 320 and any(label != IGNORE_INDEX for label in e.labels) for e in examples)

    decoded = [tokenizer.decode(e.input_ids) for e in examples]
    heldout = [
        *corpus.chat_prompts(SHARED, "heldout", 10_000),
        *corpus.harmful_prompts(SHARED, "heldout"),
        *corpus.safe_prompts(SHARED, "heldout"),
        *(prompt for prompt, _ in corpus.safety_prompts(SHARED, "heldout")),
    ]
    assert not [item for item in heldout for text in decoded if item in text]

    def no_generation(*args: Any) -> str:
        raise AssertionError("the base replies should come from the cache")

    monkeypatch.setattr(corpus, "_greedy_reply", no_generation)
    again, again_provenance = corpus.build_protected_batches(
        model, tokenizer, SHARED, **sizes, cache_dir=tmp_path, model_id="tiny@test"
    )
    assert again == examples and again_provenance == provenance


def test_nightly_cycles_add_new_dialogues_each_night_and_keep_the_old() -> None:
    from benchmarks.forgetting_cycles import night_examples

    # Several examples per dialogue (a long call is cut into pieces): a dialogue is never split across nights.
    train = [TrainingExample([1, 2], [1, 2], f"d{i}") for i in range(23) for _ in range(i % 3 + 1)]
    nights = [night_examples(train, night, 5, seed=7) for night in range(1, 6)]
    ids = [{e.dialogue_id for e in examples} for examples in nights]
    assert [len(s) for s in ids] == [5, 10, 14, 19, 23]
    assert all(earlier < later for earlier, later in itertools.pairwise(ids))
    for examples, dialogues in zip(nights, ids, strict=True):
        assert len(examples) == sum(1 for e in train if e.dialogue_id in dialogues)
    assert nights[-1] == train
    assert night_examples(train, 1, 5, seed=7) == nights[0]  # the order is seeded
    assert {e.dialogue_id for e in night_examples(train, 1, 5, seed=8)} != ids[0]


def test_checkpoints_are_compared_with_the_reference_at_the_same_domain_gain() -> None:
    from benchmarks.forgetting_cycles import at_matched_gain

    def row(night: int, gain: float, kl: float) -> dict:
        measures = {"chat_kl": kl, "refusal": 0.5, "refusal_margin_delta": -kl, "general_nll_delta_pct": kl}
        return {"night": night, "total_steps": 10 * night, "domain_gain": gain, "refusal_base": 0.8, **measures}

    runs = {
        "full": {"method": "full", "nights": [row(2, 2.0, 0.2), row(1, 1.0, 0.1)]},  # rows need not be sorted
        "projected": {"method": "projected", "nights": [row(1, 0.5, 0.001), row(2, 1.5, 0.01), row(3, 2.5, 0.02)]},
    }
    matched = at_matched_gain(runs)

    assert [r["night"] for r in matched] == [1, 2, 3]  # only the non-reference run's rows
    below, between, beyond = matched
    # Below the reference's first checkpoint the start model (no gain, no change, base refusals) anchors it.
    assert below["reference_chat_kl"] == pytest.approx(0.05)
    assert below["reference_refusal"] == pytest.approx(0.65)
    assert between["reference_chat_kl"] == pytest.approx(0.15)
    assert between["reference_refusal_margin_delta"] == pytest.approx(-0.15)
    assert between["chat_kl"] == 0.01
    assert beyond["reference_chat_kl"] is None  # never extrapolated
