"""The nightly tuning runs as the dashboard shows them, read from the files each run writes
(`state.json`, `report.json`, `progress.json` under `Settings.nightly_dir`, see tuning/nightly.py).
The web layer reads files only: it never imports the training package."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NIGHTLY_STEPS = ("curate", "train", "evaluate", "gate", "register", "promote")
STALE_PROGRESS_S = 600  # a step this recent: a run started elsewhere (cron) is still training


@dataclass(frozen=True)
class RunView:
    id: str
    status: str  # running | unfinished (resumes next run) | promoted | registered | rejected | skipped | failed
    done: list[str]
    progress: dict[str, Any] | None  # the train step: {step, of, loss, at}
    report: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def gate_reasons(self) -> list[str]:
        gate = self.report.get("gate") or {}
        return [str(reason) for reason in gate.get("reasons", [])]

    @property
    def percent(self) -> int:
        if not self.progress or not self.progress.get("of"):
            return 0
        return int(100 * self.progress["step"] / self.progress["of"])


def list_runs(nightly_dir: Path, *, job_running: bool = False, limit: int = 30) -> list[RunView]:
    """The newest runs first. `job_running`: a run started from the dashboard is alive (the newest is it)."""
    if not nightly_dir.is_dir():
        return []
    folders = sorted((p for p in nightly_dir.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True)
    return [_view(folder, alive=job_running and n == 0) for n, folder in enumerate(folders[:limit])]


def _view(folder: Path, *, alive: bool) -> RunView:
    state = _read(folder / "state.json") or {}
    report = _read(folder / "report.json") or {}
    progress = _read(folder / "progress.json")
    done = [step for step in NIGHTLY_STEPS if step in state.get("done", {})]
    if report:
        status = str(report.get("status", "finished"))
    elif state.get("error"):
        status = "failed"
    elif alive or (progress and time.time() - float(progress.get("at", 0)) < STALE_PROGRESS_S):
        status = "running"
    else:
        status = "unfinished"  # stopped or killed: the next run resumes it
    return RunView(folder.name, status, done, progress, report, state.get("error"))


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or being replaced this instant
