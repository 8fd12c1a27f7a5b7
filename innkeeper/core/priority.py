"""CPU priority of background work: training on the machine that answers calls must never slow a caller.

A nightly run beside live calls took both cores and pushed voice-to-voice from ~0.6 s to seconds. The tuning
commands therefore run as idle work: the highest niceness and, on Linux, the SCHED_IDLE class, under which
the kernel gives them a core only when no normal process wants it. On a machine that only trains this
costs nothing; beside calls the training simply waits while a caller is being answered.
"""

from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger(__name__)

IDLE_NICENESS = 19


def yield_cpu_to_calls() -> list[str]:
    """Run this process, and every thread it starts from now on, only on cores nothing else wants.

    Call it first thing (threads started before keep their priority: Linux schedules threads, not
    processes). Lowering one's own priority needs no privilege; what could not be applied is skipped.
    Returns what was applied (for the log).
    """
    applied = []
    with contextlib.suppress(OSError):
        current = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, max(current, IDLE_NICENESS))
        applied.append(f"nice {max(current, IDLE_NICENESS)}")
    if hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            applied.append("SCHED_IDLE")
    log.info("background work yields the CPU to calls: %s", ", ".join(applied) or "nothing could be applied")
    return applied
