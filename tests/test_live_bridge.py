"""The workers' channels on a shared PostgreSQL database: a call on one worker shows on another worker's live
page (LISTEN/NOTIFY), each event once; staff take over a call another worker holds; a change of the serving
model version reaches every worker when it commits; a database that is down never reaches the call path."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from innkeeper.models.registry import ModelRegistry, RegistryError
from innkeeper.models.store import ArtifactStore
from innkeeper.serve.live import LiveFeed
from innkeeper.serve.live_bridge import MAX_PAYLOAD, LiveBridge, _payload, conninfo
from tests.test_hot_swap import make_artifact, register


async def _next(queue: asyncio.Queue, timeout: float = 10.0) -> dict:
    return await asyncio.wait_for(queue.get(), timeout)


@pytest.mark.postgres
def test_a_call_on_one_worker_is_live_on_the_others_page(postgres_url):
    info = conninfo(postgres_url)
    assert info is not None and info.startswith("postgresql://")
    call_id = f"call-{uuid.uuid4().hex[:8]}"

    async def run() -> tuple[list[dict], list[dict], list[dict], set[str]]:
        here, there = LiveFeed(), LiveFeed()
        bridges = [LiveBridge(here, info, "w1"), LiveBridge(there, info, "w2")]
        for bridge in bridges:
            bridge.start()
        try:
            await asyncio.gather(*(asyncio.wait_for(b.listening.wait(), 10) for b in bridges))
            async with here.subscribe(set()) as own_page, there.subscribe(set()) as other_page:
                here.publish(call_id, "call_started", channel="twilio", caller="+15550100")
                here.publish(call_id, "transcript", role="caller", text="Do you have parking?", final=True)
                seen_there = [await _next(other_page) for _ in range(2)]
                remote_while_live = set(there.remote_calls)
                # a page opened mid-call on the other worker sees the call from its start
                async with there.subscribe(set()) as late_page:
                    replayed = [await _next(late_page) for _ in range(2)]
                here.publish(call_id, "call_ended")
                seen_there.append(await _next(other_page))
                own = [await _next(own_page) for _ in range(3)]
                await asyncio.sleep(0.5)  # anything echoed back would have arrived by now
                assert own_page.empty() and other_page.empty()
            return seen_there, replayed, own, remote_while_live
        finally:
            for bridge in bridges:
                await bridge.stop()

    seen_there, replayed, own, remote_while_live = asyncio.run(run())
    assert [e["type"] for e in seen_there] == ["call_started", "transcript", "call_ended"]
    assert all(e["call_id"] == call_id and "origin" not in e for e in seen_there)
    assert seen_there[1]["text"] == "Do you have parking?"
    assert [e["type"] for e in replayed] == ["call_started", "transcript"]
    assert remote_while_live == {call_id}
    assert [e["type"] for e in own] == ["call_started", "transcript", "call_ended"]  # once, not echoed


def test_a_database_that_is_down_leaves_the_local_feed_working():
    async def run() -> tuple[list[dict], bool]:
        feed = LiveFeed()
        bridge = LiveBridge(feed, "postgresql://innkeeper@127.0.0.1:1/innkeeper", "w1")
        bridge.start()
        try:
            async with feed.subscribe(set()) as page:
                feed.publish("c1", "call_started")
                feed.publish("c1", "transcript", role="agent", text="Hello", final=True)
                events = [await _next(page, 2.0) for _ in range(2)]
            await asyncio.sleep(0.2)
            return events, bridge.listening.is_set()
        finally:
            await bridge.stop()

    events, listening = asyncio.run(run())
    assert [e["type"] for e in events] == ["call_started", "transcript"] and not listening


def test_only_postgresql_gets_a_bridge_and_a_long_line_fits_a_notification():
    assert conninfo("sqlite:///tmp/innkeeper.db") is None
    event = {"call_id": "c1", "type": "transcript", "role": "caller", "text": "é" * 6000, "final": True}
    payload = _payload(event, "w1")
    assert len(payload.encode()) <= MAX_PAYLOAD
    decoded = json.loads(payload)
    assert decoded["origin"] == "w1" and decoded["text"].endswith("…") and decoded["call_id"] == "c1"


@pytest.mark.postgres
def test_staff_on_one_worker_take_over_a_call_another_worker_holds(postgres_url):
    info = conninfo(postgres_url)
    call_id = f"call-{uuid.uuid4().hex[:8]}"

    async def run() -> tuple[bool, list[tuple[str, str]], bool]:
        handed: list[tuple[str, str]] = []
        done = asyncio.Event()

        def take_over(held: str, reason: str) -> bool:
            handed.append((held, reason))
            done.set()
            return True

        holder, other = LiveFeed(), LiveFeed()
        bridges = [LiveBridge(holder, info, "w1", take_over=take_over), LiveBridge(other, info, "w2")]
        for bridge in bridges:
            bridge.start()
        try:
            await asyncio.gather(*(asyncio.wait_for(b.listening.wait(), 10) for b in bridges))
            unknown = bridges[1].ask_to_take_over(call_id, "too early")  # not live anywhere yet
            async with other.subscribe(set()) as page:
                holder.publish(call_id, "call_started", channel="twilio", caller="")
                await _next(page)
            asked = bridges[1].ask_to_take_over(call_id, "taken over by dana")
            await asyncio.wait_for(done.wait(), 10)
            return unknown, handed, asked
        finally:
            for bridge in bridges:
                await bridge.stop()

    unknown, handed, asked = asyncio.run(run())
    assert not unknown and asked and handed == [(call_id, "taken over by dana")]


@pytest.mark.postgres
def test_a_promotion_and_a_rollback_made_by_any_process_reach_every_worker_at_once(
    postgres_db, tiny_model_dir, tmp_path
):
    """The registry announces a change of the serving version when it commits (no poll needed); a promotion
    the registry refuses is never announced."""
    info = conninfo(postgres_db.engine.url.render_as_string(False))
    registry = ModelRegistry(postgres_db, ArtifactStore(f"file://{tmp_path / 'store'}"), tmp_path / "cache")
    version = register(registry, make_artifact(tiny_model_dir, tmp_path / "delta", seed=3))

    async def run() -> tuple[list[str], list[str]]:
        heard: dict[str, list[str]] = {"w1": [], "w2": []}
        arrived = asyncio.Event()

        def listener(worker: str):
            def serving_changed(version_id: str) -> None:
                heard[worker].append(version_id)
                arrived.set()

            return serving_changed

        bridges = [LiveBridge(LiveFeed(), info, w, serving_changed=listener(w)) for w in heard]
        for bridge in bridges:
            bridge.start()
        try:
            await asyncio.gather(*(asyncio.wait_for(b.listening.wait(), 10) for b in bridges))
            for change in (
                lambda: registry.promote(version.id, actor="test"),  # as `innkeeper models promote` would
                lambda: registry.rollback(actor="test"),
            ):
                arrived.clear()
                await asyncio.to_thread(change)
                await asyncio.wait_for(arrived.wait(), 10)
                await asyncio.sleep(0.3)  # the other worker's notice, and anything sent twice, arrive by now
            registry.mark_failed(version.id, "test: a version that does not load")
            with pytest.raises(RegistryError):
                await asyncio.to_thread(registry.promote, version.id, actor="test")
            await asyncio.sleep(0.5)
            return heard["w1"], heard["w2"]
        finally:
            for bridge in bridges:
                await bridge.stop()

    first, second = asyncio.run(run())
    assert first == second == [version.id, ""]  # promoted, then rolled back to the base; the refusal unheard
