"""Scale-out on existing parts: two `innkeeper serve` workers behind haproxy (Debian's package, websocket-aware)
share one PostgreSQL database and one S3-protocol model registry (moto). Calls through the balancer reach both
workers and land in the one database; a promotion reaches both at once (the registry announces it on PostgreSQL;
no worker polls within the test); a worker killed with
SIGKILL leaves new calls to the other. `make test` installs haproxy with apt where missing; without it, or
without PostgreSQL, this test skips and says why.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from agent.call.calllog import CallLog
from innkeeper.core.settings import Settings
from innkeeper.models.registry import ModelRegistry
from innkeeper.simulation.call_report import call_url
from innkeeper.simulation.caller_lines import lines_from_text
from innkeeper.simulation.server_process import ServerProcess
from innkeeper.simulation.voice_caller import place_call
from tests.test_hot_swap import make_artifact, register

pytestmark = [pytest.mark.real_model, pytest.mark.postgres]

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
BUCKET_URL = "s3://innkeeper-models/registry"


def haproxy_config(port: int, workers: dict[str, int]) -> str:
    """Round robin over the workers, each health-checked on /healthz every 300 ms; a websocket is a tunnel."""
    servers = "\n".join(f"    server {name} 127.0.0.1:{p} check inter 300 fall 1 rise 2" for name, p in workers.items())
    return f"""global
    log stdout format raw local0 warning
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 300s
    option redispatch
    retries 2
frontend calls
    bind 127.0.0.1:{port}
    default_backend workers
backend workers
    balance roundrobin
    option httpchk GET /healthz
{servers}
"""


def health(http: str) -> dict:
    with urllib.request.urlopen(f"{http}/healthz", timeout=5) as response:
        return json.loads(response.read())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


@pytest.mark.usefixtures("one_torch_thread")
def test_two_workers_behind_a_balancer_share_calls_a_promotion_and_survive_one_dying(
    tmp_path,
    postgres_db,
    s3_server,
    tiny_model_dir,
    caller_voice,
):
    if not Path(HAPROXY).is_file():
        pytest.skip("no haproxy: `make test` installs Debian's haproxy (apt-get install haproxy)")
    database_url = postgres_db.engine.url.render_as_string(False)
    env = {
        "INNKEEPER_DATABASE_URL": database_url,
        "INNKEEPER_REGISTRY_URL": BUCKET_URL,
        "INNKEEPER_REGISTRY_STORAGE_OPTIONS": json.dumps(s3_server),
        "INNKEEPER_REGISTRY_POLL_S": "3600",  # the promotion must arrive as the registry's announcement
        "INNKEEPER_LLM_MODEL": str(tiny_model_dir),
        "INNKEEPER_VOICE_LLM": "1",
        "INNKEEPER_TODAY": "2026-11-26",
        "INNKEEPER_LLM_THREADS": "1",
    }
    workers = {name: ServerProcess(tmp_path / name, env={**env, "INNKEEPER_SERVER_ID": name}) for name in ("w1", "w2")}
    balancer_port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(balancer_port, {name: w.port for name, w in workers.items()}))
    lines = lines_from_text(["Do you have parking?", "Thanks, bye."], caller_voice)
    through_balancer = call_url(f"ws://127.0.0.1:{balancer_port}", "plain")

    def call_once():
        report = asyncio.run(place_call(through_balancer, lines, protocol="plain"))
        assert all(turn.answered for turn in report.turns), report.turns
        return report

    def servers_of_calls() -> list[str]:
        return [c.meta.get("server") for c in CallLog(postgres_db).search()]

    for worker in workers.values():
        worker.__enter__()
    balancer = subprocess.Popen([HAPROXY, "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _accepting(balancer_port), 10, "haproxy")
        # 1. calls spread over both workers, each written to the one shared database
        for _ in range(2):
            call_once()
        assert sorted(servers_of_calls()) == ["w1", "w2"]

        # 2. a version promoted in the shared registry (as `innkeeper models promote` would) reaches both workers
        settings = Settings(database_url=database_url, registry_url=BUCKET_URL, registry_storage_options=s3_server)
        registry = ModelRegistry.from_settings(settings, db=postgres_db)
        version = register(registry, make_artifact(tiny_model_dir, tmp_path / "delta", seed=1))
        registry.promote(version.id, actor="test", reason="reaches every worker")
        wait_for(lambda: all(health(w.http)["model_version"] == version.id for w in workers.values()), 120,
                 "both workers to serve the promoted version")  # fmt: skip

        # 3. one worker dies without a word (SIGKILL): new calls go to the other
        workers["w1"].kill()
        time.sleep(1.0)  # a few failed health checks: haproxy takes it out of rotation
        for _ in range(2):
            call_once()
        assert servers_of_calls()[:2] == ["w2", "w2"]
    finally:
        balancer.terminate()
        balancer.wait(10)
        for worker in workers.values():
            worker.stop()


def _accepting(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
