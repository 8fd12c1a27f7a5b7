"""Conversations → supervised training examples: load dialogues (shared sets or the call log), split them
into fixed train/dev/test sets, and tokenize them with a loss mask on the agent's words only."""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from innkeeper.core.db.database import Database
from innkeeper.core.db.schema import Call, Turn, utcnow

IGNORE_INDEX = -100  # the label torch's cross-entropy skips
IMPORT_CHANNEL = "import"
SPLITS = ("train", "dev", "test")

SYSTEM_PROMPT = (
    "You are the front desk of a hotel, answering guests on the phone. Be warm and brief, "
    "ask for what you still need, and never make up facts."
)

_ROLES = {"USER": "caller", "SYSTEM": "agent"}
_CHAT_ROLES = {"caller": "user", "agent": "assistant"}
# Shared sets: folder → (id prefix, files). SGD dialogue ids repeat across its official splits, so every
# id from a file with a split also carries the split.
_SHARED_SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "star_hotel": ("star", ("star_hotel_only.jsonl",)),
    "sgd_hotels": ("sgd", ("train_hotels_only.jsonl", "dev_hotels_only.jsonl")),
    "multiwoz_hotel": ("multiwoz", ("dev_hotel_only.jsonl",)),
}
# Import call ids derive from dialogue ids, so importing twice (even concurrently) cannot duplicate one.
_IMPORT_NAMESPACE = uuid.UUID("5d0c1f4e-8f51-4b8e-9a5e-6f1c2b7a9d10")


@dataclass(frozen=True)
class Dialogue:
    """One conversation: turns are (role, text) with role 'caller' or 'agent'."""

    id: str
    source: str
    turns: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TrainingExample:
    """A tokenized sequence; `labels` is IGNORE_INDEX wherever no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    dialogue_id: str


# ---------------------------------------------------------------- loading


def load_shared_dialogues(
    shared_data: Path, sources: Sequence[str] = ("star_hotel", "sgd_hotels", "multiwoz_hotel")
) -> list[Dialogue]:
    """The hotel dialogues of the shared sets, ids prefixed with their source ("star:1021", "sgd:dev:6_00032")."""
    dialogues = []
    for source in sources:
        prefix, files = _SHARED_SOURCES[source]
        for name in files:
            with open(Path(shared_data) / "dialogues" / source / name, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
            dialogues += [d for row in rows if (d := _shared_dialogue(row, source, prefix)).turns]
    return dialogues


def _shared_dialogue(row: dict[str, Any], source: str, prefix: str) -> Dialogue:
    split = f"{row['split']}:" if row.get("split") else ""
    turns = tuple((_ROLES[t["speaker"]], t["utterance"].strip()) for t in row["turns"] if t["utterance"].strip())
    return Dialogue(id=f"{prefix}:{split}{row['dialogue_id']}", source=source, turns=turns)


def import_dialogues(db: Database, dialogues: Iterable[Dialogue]) -> int:
    """Store dialogues as calls on the 'import' channel; returns how many were new (re-imports are skipped)."""
    pending = {import_call_id(d.id): d for d in dialogues}

    def work(session: Session) -> int:
        existing = set(session.scalars(select(Call.id).where(Call.channel == IMPORT_CHANNEL)))
        new = {call_id: d for call_id, d in pending.items() if call_id not in existing}
        now = utcnow()
        for call_id, d in new.items():
            session.add_all(_import_records(call_id, d, now))
        return len(new)

    return db.transact(work)


def import_call_id(dialogue_id: str) -> str:
    """The call id an imported dialogue is stored under."""
    return str(uuid.uuid5(_IMPORT_NAMESPACE, dialogue_id))


def _import_records(call_id: str, dialogue: Dialogue, now: datetime) -> list[Call | Turn]:
    call = Call(
        id=call_id,
        channel=IMPORT_CHANNEL,
        started_at=now,
        ended_at=now,
        end_reason="imported",
        meta={"source": dialogue.source, "dialogue_id": dialogue.id},
    )
    return [
        call,
        *(
            Turn(call_id=call_id, index=i, role=role, text=text, started_at=now, ended_at=now)
            for i, (role, text) in enumerate(dialogue.turns)
        ),
    ]


def load_db_dialogues(db: Database, *, since: datetime | None = None, include_excluded: bool = False) -> list[Dialogue]:
    """Logged and imported calls as dialogues (spoken turns only), oldest first.

    Imported calls keep their original dialogue id, so a dialogue lands in the same split whether it is
    read from the shared files or from the database.
    """

    wanted = [Call.started_at >= since] if since is not None else []
    if not include_excluded:
        wanted.append(Call.training == "included")

    def work(session: Session) -> list[Dialogue]:
        calls = list(session.scalars(select(Call).where(*wanted).order_by(Call.started_at, Call.id)))
        turns = session.scalars(
            select(Turn)
            .join(Call, Turn.call_id == Call.id)
            .where(*wanted, Turn.role.in_(_CHAT_ROLES))
            .order_by(Turn.call_id, Turn.index)
        )
        by_call: dict[str, list[tuple[str, str]]] = {}
        for turn in turns:
            if turn.text.strip():
                by_call.setdefault(turn.call_id, []).append((turn.role, turn.text.strip()))
        return [_db_dialogue(call, by_call[call.id]) for call in calls if call.id in by_call]

    return db.transact(work, write=False)


def _db_dialogue(call: Call, turns: list[tuple[str, str]]) -> Dialogue:
    meta = call.meta or {}
    if call.channel == IMPORT_CHANNEL and "dialogue_id" in meta:
        return Dialogue(id=meta["dialogue_id"], source=meta.get("source", IMPORT_CHANNEL), turns=tuple(turns))
    return Dialogue(id=f"call:{call.id}", source=call.channel, turns=tuple(turns))


# ---------------------------------------------------------------- splitting


def split_dialogues(
    dialogues: Iterable[Dialogue], *, seed: int = 0, dev: float = 0.1, test: float = 0.1
) -> dict[str, list[Dialogue]]:
    """Assign each dialogue to 'train', 'dev' or 'test' by a hash of (seed, id) alone.

    A dialogue's split never depends on the others, so adding dialogues never moves an existing one.
    """
    splits: dict[str, list[Dialogue]] = {name: [] for name in SPLITS}
    for d in dialogues:
        u = unit_hash(f"{seed}:{d.id}")
        splits["test" if u < test else "dev" if u < test + dev else "train"].append(d)
    assert_disjoint(splits)
    return splits


def assert_disjoint(splits: dict[str, Sequence[Dialogue]]) -> None:
    """Raise ValueError if a dialogue id appears in more than one split (held-out data leaking into training)."""
    seen: dict[str, str] = {}
    for name, dialogues in splits.items():
        for d in dialogues:
            if seen.setdefault(d.id, name) != name:
                raise ValueError(f"dialogue {d.id!r} is in both {seen[d.id]!r} and {name!r}")


def unit_hash(key: str) -> float:
    """A stable number in [0, 1) (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


# ---------------------------------------------------------------- tokenizing


def build_examples(dialogues: Iterable[Dialogue], tokenizer: Any, *, max_tokens: int = 512) -> list[TrainingExample]:
    """Chat-formatted examples with the system prompt, learning only the agent's turns.

    Dialogues that have no agent turn, or whose first agent turn does not fit, yield no example.
    """
    examples = []
    for d in dialogues:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, *to_messages(d.turns)]
        if example := encode_chat(messages, tokenizer, max_tokens=max_tokens, example_id=d.id):
            examples.append(example)
    return examples


def to_messages(turns: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """Chat messages with consecutive same-role turns merged (chat templates expect alternation)."""
    messages: list[dict[str, str]] = []
    for role, text in turns:
        chat_role = _CHAT_ROLES[role]
        if messages and messages[-1]["role"] == chat_role:
            messages[-1]["content"] += " " + text
        else:
            messages.append({"role": chat_role, "content": text})
    return messages


def encode_chat(
    messages: list[dict[str, str]], tokenizer: Any, *, max_tokens: int, example_id: str
) -> TrainingExample | None:
    """Tokenize a chat, labelling each assistant reply and its end-of-turn token.

    Reply boundaries come from tokenizing the chat prefix by prefix, so they are exact whatever the
    template adds around a message. Whole messages are dropped from the end until the chat fits;
    None when not even the first reply fits.
    """
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    spans: list[tuple[int, int]] = []
    ids: list[int] = []
    for i in replies:
        prompt = _render(tokenizer, messages[:i], generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if len(upto) > max_tokens:
            break
        if upto[: len(ids)] != ids or upto[: len(prompt)] != prompt:
            raise ValueError("the chat template does not render a chat's prefix as a prefix of its tokens")
        spans.append((len(prompt), _end_of_turn(upto, len(prompt), tokenizer)))
        ids = upto
    if not spans:
        return None
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        labels[start:end] = ids[start:end]
    return TrainingExample(input_ids=ids, labels=labels, dialogue_id=example_id)


def _render(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool) -> list[int]:
    return list(
        tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
        )["input_ids"]
    )


def _end_of_turn(ids: list[int], start: int, tokenizer: Any) -> int:
    """End (exclusive) of the reply starting at `start`: through its end-of-turn special token.

    What a template puts after that token (ChatML's newline) is never generated, so it is not learned.
    """
    special = set(tokenizer.all_special_ids)
    ends = [j for j in range(start, len(ids)) if ids[j] in special]
    return ends[-1] + 1 if ends else len(ids)


# ---------------------------------------------------------------- batching


def collate(examples: Sequence[TrainingExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels (padding is never learned)."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def batches(
    examples: Sequence[TrainingExample], batch_size: int, *, pad_id: int, seed: int, shuffle: bool = True
) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of collated batches, in a seeded order (the last batch may be smaller)."""
    order = list(range(len(examples)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for i in range(0, len(order), batch_size):
        yield collate([examples[j] for j in order[i : i + batch_size]], pad_id)
