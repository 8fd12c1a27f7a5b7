"""Which engine serves the model on CPU: torch vs CTranslate2, on the agent's own prompts.

For each engine (one decoding thread, the way a call's turn runs): load time and resident memory; a caller
turn read into a typed action under the JSON-schema constraint (SGD dev turns, the reading prompt); a reply
worded from a plan (the wording prompt: time to the first text and decoding speed); and the same readings
from 4 callers at once (4 threads, each speaking THINK_S between its turns; the engine serves one generation
at a time, so this is the queueing a 4-call machine sees). Prints an 80-column table and writes
`benchmarks/results/serving_engines.json`.

    .venv/bin/python benchmarks/serving_engines.py [--model DIR] [--turns 24]

`--model` is an HF directory (default: the bundled model; a reader taught by
benchmarks/understanding_model.py shows realistic action lengths).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from agent.dialogue.state import ReplyPlan
from agent.reply.understand import ModelReader, action_text
from agent.reply.wording import ReplyWriter
from innkeeper.core.hotel import load_hotel
from innkeeper.core.provision import bundled_llm_path
from innkeeper.core.settings import Settings
from tuning.data.actions import sgd_action_examples

THINK_S = 1.5  # a caller's own speaking time between two of their turns (the agent's reply and their answer)
RESULTS = Path(__file__).resolve().parent / "results" / "serving_engines.json"
SGD_DEV = "dialogues/sgd_hotels/dev_hotels_only.jsonl"
PLANS = [
    ("I need a room for two nights from Friday.", "Arriving Friday, December 11. How many guests will stay?"),
    ("Is breakfast included?", "Breakfast is served from 6:30 to 10:30. Is there anything else I can help with?"),
    ("What's the price for the king?", "The Deluxe King is 219 dollars a night. Shall I book it for you?"),
]


def reading_turns(settings: Settings, limit: int) -> list[tuple[str | None, str]]:
    turns: list[tuple[str | None, str]] = []
    with open(settings.shared_data / SGD_DEV, encoding="utf-8") as lines:
        for line in lines:
            turns += [(e.agent_text, e.caller_text) for e in sgd_action_examples(json.loads(line))]
            if len(turns) >= limit:
                return turns[:limit]
    return turns


def load(engine: str, hf_dir: Path, scratch: Path) -> tuple[Any, float, float]:
    rss_before, started = resident_mb(), time.perf_counter()
    if engine == "torch":
        import torch

        from agent.reply.llm import ChatModel

        torch.set_num_threads(1)
        model = ChatModel(hf_dir)
    else:
        from agent.reply.ct2 import Ct2ChatModel, export

        compute_type = engine.split(":")[1]
        exported = export(hf_dir, scratch / compute_type, quantization=compute_type.replace("_float32", ""))
        model = Ct2ChatModel(exported, hf_dir, compute_type=compute_type)
    return model, time.perf_counter() - started, resident_mb() - rss_before


def resident_mb() -> float:
    """This process's resident memory now (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_reading(model: Any, turns: list[tuple[str | None, str]]) -> tuple[list[float], list[str]]:
    reader = ModelReader(model)
    reader.read(None, "Hello")  # builds the schema's token filter and warms the prefix cache
    seconds, actions = [], []
    for agent_text, caller_text in turns:
        started = time.perf_counter()
        action = reader.read(agent_text, caller_text)
        seconds.append(time.perf_counter() - started)
        actions.append(action_text(action) if action is not None else "(failed)")
    return seconds, actions


def measure_wording(model: Any, hotel_file: Path) -> tuple[list[float], float]:
    wording = ReplyWriter(load_hotel(hotel_file), llm=None)
    first_text, rates = [], []
    for caller, draft in PLANS * 2:
        messages = wording._messages(ReplyPlan(act="answer", sentences=[draft]), caller)
        started = time.perf_counter()
        first, text = None, ""
        for piece in model.stream(messages, max_new_tokens=32):
            first = first or time.perf_counter()
            text += piece
        ended = time.perf_counter()
        tokens = len(model.tokenizer.encode(text, add_special_tokens=False))
        if first is not None:
            first_text.append(first - started)
            rates.append(tokens / (ended - started))
    return first_text, statistics.median(rates) if rates else 0.0


def measure_concurrent(model: Any, turns: list[tuple[str | None, str]], callers: int = 4) -> list[float]:
    """Readings from `callers` threads, each caller pausing THINK_S between its turns as a caller speaks."""
    reader, seconds, lock = ModelReader(model), [], threading.Lock()

    def caller(index: int, mine: list[tuple[str | None, str]]) -> None:
        time.sleep(index * THINK_S / callers)  # callers do not all finish speaking at the same instant
        for agent_text, caller_text in mine:
            time.sleep(THINK_S)
            started = time.perf_counter()
            reader.read(agent_text, caller_text)
            with lock:
                seconds.append(time.perf_counter() - started)

    threads = [threading.Thread(target=caller, args=(i, turns[i::callers])) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return seconds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="an HF model directory (default: the bundled model)")
    parser.add_argument("--turns", type=int, default=24, help="SGD dev caller turns to read per engine")
    parser.add_argument("--engines", default="torch,ctranslate2:int8,ctranslate2:int8_float32,ctranslate2:float32")
    args = parser.parse_args(argv)
    settings = Settings()
    hf_dir = args.model or bundled_llm_path(settings)
    turns = reading_turns(settings, args.turns)
    console, rows, readings = Console(width=80), [], {}
    with tempfile.TemporaryDirectory(prefix="innkeeper-engines-") as tmp:
        for engine in args.engines.split(","):
            console.print(f"[bold]{engine}[/]: loading, reading {len(turns)} turns, wording, 4 callers")
            model, load_s, rss_mb = load(engine, hf_dir, Path(tmp))
            read_s, readings[engine] = measure_reading(model, turns)
            first_s, rate = measure_wording(model, settings.hotel_file)
            together = measure_concurrent(model, turns)
            rows.append(
                {
                    "engine": engine,
                    "load_s": round(load_s, 2),
                    "rss_mb": round(rss_mb),
                    "read_p50_s": round(statistics.median(read_s), 3),
                    "read_p95_s": round(percentile(read_s, 0.95), 3),
                    "word_first_text_s": round(statistics.median(first_s), 3) if first_s else None,
                    "word_tokens_per_s": round(rate, 1),
                    "read_4_callers_p50_s": round(statistics.median(together), 3),
                    "read_4_callers_p95_s": round(percentile(together, 0.95), 3),
                }
            )
            del model
    reference = readings[next(iter(readings))]
    for row in rows:
        same = sum(a == b for a, b in zip(readings[row["engine"]], reference, strict=True))
        row["same_action_as_first"] = f"{same}/{len(reference)}"
    table = Table(
        title=f"serving engines, 1 thread, {hf_dir}",
        caption="seconds: load; read50/95: one reading; 4×95: 4 callers; 1st: first worded text",
        width=80,
    )
    for column in ("engine", "load", "MB", "read50", "read95", "4×95", "1st", "tok/s", "same"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["engine"].replace("ctranslate2:", "ct2 "), f"{r['load_s']:.1f}", str(r["rss_mb"]),
            f"{r['read_p50_s']:.2f}", f"{r['read_p95_s']:.2f}", f"{r['read_4_callers_p95_s']:.2f}",
            f"{r['word_first_text_s']:.2f}", f"{r['word_tokens_per_s']:.0f}",
            r["same_action_as_first"],
        )  # fmt: skip
    console.print(table)
    RESULTS.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                "model": str(hf_dir),
                "turns": len(turns),
                "rows": rows,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
