"""Voice-to-voice latency of phone calls to the real server, at 1, 2 and 4 concurrent calls.

Starts `innkeeper serve` on a free port (fresh INNKEEPER_HOME, INNKEEPER_TODAY=2026-11-26), or uses --url, and
places scripted booking calls over the Twilio protocol with the simulated caller
(innkeeper/simulation/voice_caller.py: the Piper voice through an 8 kHz mu-law line, 20 ms frames in real
time, Twilio's mark and clear behaviour).
Latency counts from the caller's last speech frame to the first agent audio frame it receives. Adds the
server's own per-stage latencies from its call records (`/api/calls`), and the real-time factors of ASR
and TTS measured in this process before the server starts. Prints tables and writes
`benchmarks/results/voice_latency.json`.

    .venv/bin/python benchmarks/voice_latency.py [--calls 1 2 4] [--url ws://127.0.0.1:8080]
    .venv/bin/python benchmarks/voice_latency.py --capacity --finished-words   # ramp 1, 2, 3, … calls until p95 > 1.5 s
    .venv/bin/python benchmarks/voice_latency.py --calls 1 2 --beside-training idle     # while `tune run` trains

`--capacity` measures one machine's capacity: the server admits any number of calls (INNKEEPER_MAX_CALLS
lifted), the levels rise one call at a time until a level's p95 passes `--p95-limit-ms` or a turn goes
unanswered, and a plot of p50 / p95 and answered turns per level is written beside the JSON.

Targets: p50 <= 800 ms and p95 <= 1200 ms at 1 call; p95 <= 2000 ms at 4 calls.
Caveat: the caller runs on the same CPU as the server; its own work is small (a table look-up and a
websocket message every 20 ms per call) but it is not zero.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from agent.speech.tts import Synthesizer
from innkeeper.core.settings import Settings
from innkeeper.serve.speech import load_recognizer, load_synthesizer
from innkeeper.simulation.call_report import CallError, CallReport, call_url, fetch_call_record, http_base
from innkeeper.simulation.caller_lines import CallerLine, lines_from_text
from innkeeper.simulation.server_process import ServerProcess
from innkeeper.simulation.voice_caller import place_call
from telephony.codec import pcm16_to_float32
from telephony.resample import ASR_RATE, resample

RESULTS = Path(__file__).resolve().parent / "results" / "voice_latency.json"
TODAY = "2026-11-26"
STAGGER_S = 0.7  # calls start this far apart so that their turn ends do not all coincide
SETTLE_S = 2.0  # pause between concurrency levels
RTF_LINES = 3
BOOKING_CALL = (
    "Hi, I'd like to book a room for two nights starting December seventh.",
    "Two adults.",
    "The Deluxe King, please.",
    "My name is Maria Lopez.",
    "Six one seven, five five five, zero one two three.",
    "Yes, that's right.",
    "No, that's all, thank you.",
)
# (concurrency, statistic) -> target ms
TARGETS = {(1, "p50"): 800.0, (1, "p95"): 1200.0, (4, "p95"): 2000.0}

console = Console()


# ---------------------------------------------------------------- the server


# ---------------------------------------------------------------- models in this process


def speech_rtf(settings: Settings, synthesizer: Synthesizer, lines: list[CallerLine]) -> dict[str, float]:
    """Processing seconds per audio second of TTS and ASR on a few caller lines (phone-line audio for ASR)."""
    texts = BOOKING_CALL[:RTF_LINES]
    started = time.perf_counter()
    seconds = sum(len(audio) / rate for audio, rate in map(synthesizer.synthesize, texts))
    tts_rtf = (time.perf_counter() - started) / seconds
    recognizer = load_recognizer(settings)
    heard = [pcm16_to_float32(resample(line.audio, line.rate, ASR_RATE)) for line in lines[:RTF_LINES]]
    recognizer.transcribe(heard[0])  # warm-up: the first call pays for allocations
    started = time.perf_counter()
    for audio in heard:
        recognizer.transcribe(audio)
    asr_rtf = (time.perf_counter() - started) / (sum(len(a) for a in heard) / ASR_RATE)
    return {"tts_rtf": tts_rtf, "asr_rtf": asr_rtf, "threads": settings.asr_threads}


# ---------------------------------------------------------------- calls


async def run_level(url: str, lines: list[CallerLine], calls: int) -> list[CallReport | str]:
    """`calls` concurrent calls, staggered; a call that could not be placed is its error message."""

    async def one(index: int) -> CallReport | str:
        await asyncio.sleep(index * STAGGER_S)
        try:
            return await place_call(
                call_url(url, "twilio"),
                lines,
                protocol="twilio",
                caller_id=f"+1555555{index:04d}",
                twilio_auth_token=Settings().twilio_auth_token,  # the server checks streams when one is set
            )
        except CallError as exc:
            return str(exc)

    return await asyncio.gather(*(one(i) for i in range(calls)))


async def server_stages(url: str, reports: list[CallReport], token: str | None) -> tuple[dict[str, float], int]:
    """Mean of every numeric per-turn latency the server recorded (whatever keys it has), and records found."""
    records = await asyncio.gather(
        *(fetch_call_record(http_base(url), call_sid=r.call_id, token=token) for r in reports)
    )
    values: dict[str, list[float]] = defaultdict(list)
    for record in filter(None, records):
        for turn in record.get("turns") or []:
            latencies = turn.get("latencies") if isinstance(turn, dict) else None
            for key, value in (latencies or {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    values[key].append(float(value))
    return {key: float(np.mean(v)) for key, v in sorted(values.items())}, sum(r is not None for r in records)


def summarize(calls: int, outcomes: list[CallReport | str]) -> dict[str, Any]:
    reports = [o for o in outcomes if isinstance(o, CallReport)]
    v2v = [ms for report in reports for ms in report.v2v_ms()]
    turns = sum(len(r.turns) for r in reports)

    def pct(q: float) -> float | None:
        return float(np.percentile(v2v, q)) if v2v else None

    return {
        "concurrency": calls,
        "failed_calls": [o for o in outcomes if isinstance(o, str)],
        "turns": turns,
        "answered": len(v2v),
        "lines_unsaid": sum(r.lines_unsaid for r in reports),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "max_ms": max(v2v) if v2v else None,
        "v2v_ms": [round(ms, 1) for ms in v2v],
        "server_errors": [e for r in reports for e in r.server_errors],
        "bad_messages": [m for r in reports for m in r.bad_messages],
    }


def target_verdicts(level: dict[str, Any]) -> list[str]:
    verdicts = []
    for (calls, stat), limit in TARGETS.items():
        if calls == level["concurrency"]:
            value = level[f"{stat}_ms"]
            ok = value is not None and value <= limit
            verdicts.append(f"{stat} ≤ {limit:.0f} {'[green]met' if ok else '[red]missed'}[/]")
    return verdicts


async def measure(
    url: str, lines: list[CallerLine], levels: list[int], token: str | None, p95_limit_ms: float | None = None
) -> list[dict[str, Any]]:
    """Each level in turn; with `p95_limit_ms`, stop after the first level past it or with a turn unanswered."""
    results = []
    for calls in levels:
        console.print(f"placing {calls} concurrent call(s) of {len(lines)} lines…")
        outcomes = await run_level(url, lines, calls)
        level = summarize(calls, outcomes)
        level["server_stages_ms"], level["records_found"] = await server_stages(
            url, [o for o in outcomes if isinstance(o, CallReport)], token
        )
        results.append(level)
        if p95_limit_ms is not None and past_capacity(level, p95_limit_ms):
            break
        await asyncio.sleep(SETTLE_S)
    return results


def past_capacity(level: dict[str, Any], p95_limit_ms: float) -> bool:
    """A level the machine does not carry: p95 over the limit, a call not placed, or a turn not answered."""
    p95 = level["p95_ms"]
    return p95 is None or p95 > p95_limit_ms or bool(level["failed_calls"]) or level["answered"] < level["turns"]


def plot_capacity(levels: list[dict[str, Any]], p95_limit_ms: float, path: Path) -> None:
    """p50 / p95 voice-to-voice and the share of turns answered against concurrent calls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    calls = [level["concurrency"] for level in levels]
    fig, (latency, answered) = plt.subplots(1, 2, figsize=(10, 4))
    for stat in ("p50", "p95"):
        latency.plot(calls, [level[f"{stat}_ms"] for level in levels], marker="o", label=stat)
    latency.axhline(p95_limit_ms, color="red", linestyle="--", label=f"p95 limit {p95_limit_ms:.0f} ms")
    latency.set(xlabel="concurrent calls", ylabel="voice-to-voice, ms", title="latency at the caller")
    latency.legend()
    share = [100 * level["answered"] / max(level["turns"], 1) for level in levels]
    answered.plot(calls, share, marker="o")
    answered.set(xlabel="concurrent calls", ylabel="turns answered, %", ylim=(0, 105), title="turns answered")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------- output


def print_tables(levels: list[dict[str, Any]], rtf: dict[str, float]) -> None:
    table = Table(title="Voice-to-voice latency, Twilio protocol (caller's last speech frame → first agent audio)")
    for column in ("calls", "turns", "answered", "p50 ms", "p95 ms", "max ms", "target"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for level in levels:
        failed = f" ({len(level['failed_calls'])} failed)" if level["failed_calls"] else ""
        table.add_row(
            f"{level['concurrency']}{failed}",
            str(level["turns"]),
            str(level["answered"]),
            *(_ms(level[key]) for key in ("p50_ms", "p95_ms", "max_ms")),
            ", ".join(target_verdicts(level)) or "—",
        )
    console.print(table)
    if any(level["server_stages_ms"] for level in levels):
        stages = Table(title="Where the time goes (server, mean per turn, from the end of caller speech)")
        stages.add_column("stage")
        for level in levels:
            stages.add_column(f"{level['concurrency']} call(s)", justify="right")
        for key, label, fmt in STAGE_ROWS:
            stages.add_row(label, *(fmt(level["server_stages_ms"].get(key)) for level in levels))
        console.print(stages)
    else:
        console.print("[yellow]no per-stage latencies: the server's /api/calls records were not found")
    console.print(f"in-process RTF ({rtf['threads']} thread): ASR {rtf['asr_rtf']:.3f}, TTS {rtf['tts_rtf']:.3f}")


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def _share(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


# (record key, label, format), in pipeline order; times count from the caller's last speech frame
STAGE_ROWS = (
    ("speech_ms", "caller speech (ms)", _ms),
    ("asr_early", "ASR done on the first pause (share of turns)", _share),
    ("endpoint_ms", "endpoint: silence until the turn ends (ms)", _ms),
    ("asr_wait_ms", "ASR still running after the endpoint (ms)", _ms),
    ("decide_ms", "dialogue decision + tools (ms)", _ms),
    ("first_chunk_ms", "reply text ready, after ASR (ms)", _ms),
    ("tts_first_ms", "first TTS audio ready (ms)", _ms),
    ("first_audio_sent_ms", "first audio frame sent = server v2v (ms)", _ms),
)


# ---------------------------------------------------------------- training beside the calls


class TrainingBeside:
    """`innkeeper tune run --method full` on the same machine while the calls are measured: the nightly job's
    work, as a hotel that trains on its only server would have it. `idle`: as shipped (the tuning commands
    yield the CPU to calls, INNKEEPER_TUNE_YIELDS_CPU=1); otherwise at normal priority, for comparison."""

    METHOD = "full"
    STEPS = re.compile(rf"{METHOD}:\s+\d+%\|[^|\r\n]*\|\s*(\d+)/\d+")  # the training's own progress bar

    def __init__(self, home: Path, *, idle: bool) -> None:
        self.idle = idle
        env = {**os.environ, "INNKEEPER_HOME": str(home), "INNKEEPER_TUNE_YIELDS_CPU": "1" if idle else "0"}
        command = [sys.executable, "-m", "innkeeper.cli", "tune", "run", "--method", self.METHOD, "--steps", "100000"]
        self.log = home / "training.log"
        home.mkdir(parents=True, exist_ok=True)
        self._out = self.log.open("wb")
        self.process = subprocess.Popen(command, env=env, stdout=self._out, stderr=subprocess.STDOUT)

    def steps(self) -> int:
        """Optimizer steps finished so far (from the run's progress bar)."""
        found = self.STEPS.findall(self.log.read_text(errors="replace"))
        return int(found[-1]) if found else 0

    def wait_until_training(self, timeout_s: float = 900.0) -> None:
        """Until the first optimizer step is done (the model loaded, the corpus built)."""
        deadline = time.monotonic() + timeout_s
        while self.steps() < 1:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the training beside the calls did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(2.0)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._out.close()


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 2, 4], help="concurrency levels")
    parser.add_argument("--url", help="a running server (ws://host:port); default: start one")
    parser.add_argument("--llm", action="store_true", help="let the LLM word replies (INNKEEPER_VOICE_LLM)")
    parser.add_argument("--reading", type=Path, help="a model directory that reads every turn (model understanding)")
    parser.add_argument("--no-read-ahead", action="store_true", help="with --reading: read only once a turn ends")
    parser.add_argument("--out", type=Path, help="results file (default: by mode, in benchmarks/results)")
    parser.add_argument("--capacity", action="store_true", help="ramp 1, 2, 3, … calls until p95 passes the limit")
    parser.add_argument(
        "--finished-words", action="store_true", help="end turns on finished words (INNKEEPER_END_ON_FINISHED_WORDS)"
    )
    parser.add_argument("--p95-limit-ms", type=float, default=1500.0, help="with --capacity: the p95 line")
    parser.add_argument("--max-calls", type=int, default=12, help="with --capacity: the highest level tried")
    parser.add_argument(
        "--beside-training",
        choices=("idle", "normal"),
        help="measure while `tune run` trains on the same machine: as shipped (idle priority) or at normal priority",
    )
    args = parser.parse_args()
    if args.capacity:
        args.calls = list(range(1, args.max_calls + 1))
    settings = Settings(asr_threads=1, tts_threads=1)
    synthesizer = load_synthesizer(settings, variation=False)  # the same caller audio every run
    lines = lines_from_text(BOOKING_CALL, synthesizer)
    rtf = speech_rtf(settings, synthesizer, lines)  # before the server starts: measured on a quiet CPU
    with tempfile.TemporaryDirectory(prefix="innkeeper-bench-") as home:
        env = {"INNKEEPER_TODAY": TODAY}
        if args.finished_words:
            env["INNKEEPER_END_ON_FINISHED_WORDS"] = "1"
        if args.capacity:  # admission control would refuse the calls past INNKEEPER_MAX_CALLS: lift it
            env["INNKEEPER_MAX_CALLS"] = str(args.max_calls + 1)
        if args.reading:  # the model reads each caller turn (first where it validates), templates still speak
            env |= {
                "INNKEEPER_MODEL_UNDERSTANDING": "1",
                "INNKEEPER_LLM_MODEL": str(args.reading.resolve()),
                "INNKEEPER_VOICE_LLM": "1" if args.llm else "0",
                "INNKEEPER_READ_AHEAD": str(not args.no_read_ahead),
            }
        server = None if args.url else ServerProcess(Path(home), env=env, llm=args.llm)
        try:
            url = args.url or server.__enter__().url
        except RuntimeError as exc:
            console.print(f"[red]could not start the server: {exc}")
            sys.exit(1)
        training, beside = None, None
        try:
            token = server.token if server is not None else settings.admin_token  # for the call records
            limit = args.p95_limit_ms if args.capacity else None
            if args.beside_training:
                training = TrainingBeside(Path(home) / "trainer", idle=args.beside_training == "idle")
                training.wait_until_training()
                steps_before, started = training.steps(), time.monotonic()
            levels = asyncio.run(measure(url, lines, args.calls, token, limit))
            if training is not None:
                trained = training.steps() - steps_before
                beside = {"priority": args.beside_training, "steps_during_calls": trained}
                beside["seconds"] = round(time.monotonic() - started, 1)
                console.print(f"training beside the calls ({args.beside_training} priority): {trained} steps")
        finally:
            if training is not None:
                training.stop()
            if server is not None:
                server.stop()
        if any(level["server_errors"] or level["failed_calls"] for level in levels) and server is not None:
            console.print(f"[yellow]server log tail:\n{server.log_tail()}")
    print_tables(levels, rtf)
    default = RESULTS.with_name("capacity.json") if args.capacity else RESULTS
    if args.beside_training:
        default = RESULTS.with_name(f"voice_latency_beside_training_{args.beside_training}.json")
    results = args.out or (RESULTS.with_name("voice_latency_llm.json") if args.llm else default)
    results.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "llm": "bundled SmolLM2-135M, INNKEEPER_VOICE_LLM_FIRST_SENTENCE_MS" if args.llm else "off (templates)",
        "reading": None if not args.reading else {"model": str(args.reading), "read_ahead": not args.no_read_ahead},
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "server": args.url or f"innkeeper serve (INNKEEPER_TODAY={TODAY}, fresh INNKEEPER_HOME)",
        "protocol": "twilio",
        "script": list(BOOKING_CALL),
        "stagger_s": STAGGER_S,
        "targets_ms": {f"{stat} at {calls} call(s)": limit for (calls, stat), limit in TARGETS.items()},
        "levels": levels,
        "speech_rtf": rtf,
        "beside_training": beside,
    }
    if args.capacity:
        carried = [level["concurrency"] for level in levels if not past_capacity(level, args.p95_limit_ms)]
        result["capacity_calls"] = max(carried, default=0)
        plot_capacity(levels, args.p95_limit_ms, results.with_suffix(".png"))
        console.print(f"capacity: {result['capacity_calls']} concurrent call(s) within p95 {args.p95_limit_ms:.0f} ms")
    results.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {results}")


if __name__ == "__main__":
    main()
