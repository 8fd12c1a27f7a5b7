"""Jobs the dashboard starts: the nightly tuning run, as its own process (`python -m innkeeper.cli tune nightly`),
so training never shares the serving process's CPU time or memory, and a stopped run resumes next time.

One job at a time; its output goes to `nightly_dir/dashboard-job.log`. The web layer starts the command line,
never the training code itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from innkeeper.core.settings import Settings

NIGHTLY_COMMAND = ("-m", "innkeeper.cli", "tune", "nightly")


class JobBusy(RuntimeError):
    """A job started from the dashboard is still running."""


@dataclass
class Job:
    process: subprocess.Popen[bytes]
    started_by: str
    started_at: float

    @property
    def running(self) -> bool:
        return self.process.poll() is None


class NightlyJobs:
    """Starts and stops the one dashboard-launched nightly run."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.job: Job | None = None

    @property
    def log_path(self) -> Path:
        return self.settings.nightly_dir / "dashboard-job.log"

    def start(self, started_by: str) -> Job:
        if self.job is not None and self.job.running:
            raise JobBusy(f"a nightly run started by {self.job.started_by} is still running")
        self.settings.nightly_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, *NIGHTLY_COMMAND],
                env={**os.environ, **self.settings.as_environment(), "NO_COLOR": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a stop ends the run's own children too
            )
        self.job = Job(process, started_by, time.time())
        return self.job

    def stop(self, timeout_s: float = 20.0) -> bool:
        """End the running job (it resumes from its last finished step next time); False if none ran."""
        if self.job is None or not self.job.running:
            return False
        os.killpg(self.job.process.pid, signal.SIGTERM)
        try:
            self.job.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.job.process.pid, signal.SIGKILL)
            self.job.process.wait()
        return True
