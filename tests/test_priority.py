"""Training yields the CPU to calls: the tuning commands run as idle work (nice 19, SCHED_IDLE on Linux), and the
threads they start afterwards (torch's) inherit it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from innkeeper.cli import app
from innkeeper.core.settings import PROJECT_ROOT, get_settings

PROBE = """
import json, os, threading
from innkeeper.core.priority import yield_cpu_to_calls
applied = yield_cpu_to_calls()
seen = {}
def probe():
    seen["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
    seen["idle"] = os.sched_getscheduler(0) == os.SCHED_IDLE
worker = threading.Thread(target=probe)
worker.start()
worker.join()
print(json.dumps({"applied": applied, "thread": seen}))
"""


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_background_work_runs_idle_and_its_later_threads_too():
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["applied"] == ["nice 19", "SCHED_IDLE"]
    assert result["thread"] == {"nice": 19, "idle": True}
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # this process was not touched


@pytest.fixture
def settings_read_afresh():
    get_settings.cache_clear()  # the CLI reads INNKEEPER_* once per process
    yield
    get_settings.cache_clear()


@pytest.mark.usefixtures("settings_read_afresh")
def test_the_nightly_command_yields_the_cpu_unless_told_not_to(monkeypatch, tmp_path):
    from tuning import nightly

    order: list[str] = []
    monkeypatch.setattr("innkeeper.core.priority.yield_cpu_to_calls", lambda: order.append("yield") or [])

    def fake_run(settings, **_):
        order.append("train")
        raise RuntimeError("stop here")

    monkeypatch.setattr(nightly, "run_nightly", fake_run)
    monkeypatch.setenv("INNKEEPER_HOME", str(tmp_path))
    runner = CliRunner()
    assert runner.invoke(app, ["tune", "nightly"]).exit_code == 1
    assert order == ["yield", "train"]  # before any training thread exists
    order.clear()
    monkeypatch.setenv("INNKEEPER_TUNE_YIELDS_CPU", "0")
    get_settings.cache_clear()
    assert runner.invoke(app, ["tune", "nightly"]).exit_code == 1
    assert order == ["train"]
