"""Hot-swapping the serving LLM: a turn in progress keeps its model, the next turn gets the new one, a damaged
or foreign artifact is refused while the old model keeps serving, and three live calls survive a promotion
through the admin API with every logged turn naming the version that produced it.

Models are the tiny random chat model (`build_tiny_chat_model`) and real deltas on it (`save_delta`); the
registry, the database and, in the live tests, uvicorn, the websockets and the speech models are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from agent.call.turns import TurnsInProgress
from agent.reply.llm import ChatModel
from innkeeper.core.db.database import Database
from innkeeper.core.settings import Settings
from innkeeper.models.artifacts import DELTA_FILE, save_delta, weights_sha256
from innkeeper.models.registry import ModelRegistry, ModelVersion, VersionStatus
from innkeeper.models.slot import (
    ModelLoadError,
    ModelSlot,
    SwapInProgress,
    load_version,
    load_version_beside_calls,
)
from innkeeper.serve.admin import NO_LLM, AdminError, ModelAdmin
from innkeeper.serve.app import create_app
from innkeeper.serve.runtime import AgentRuntime

from .conftest import serving

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TODAY = date(2026, 11, 26)
TOKEN = "test-admin-token"
TUNED_TENSOR = "model.layers.0.mlp.down_proj.weight"


# ------------------------------------------------------------------------------------------ helpers


def make_artifact(base_dir: Path, out_dir: Path, *, seed: int, base_sha256: str | None = None) -> Path:
    """A real delta artifact: one tensor of the base nudged by seeded noise."""
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        param = model.get_parameter(TUNED_TENSOR)
        param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return save_delta(
        base_state,
        model,
        out_dir,
        base_id="tiny-chat",
        base_sha256=base_sha256 or weights_sha256(base_dir),
        lineage={"call_ids": []},
        config={"seed": seed},
        metrics={"domain_nll": 1.0},
    )


def register(registry: ModelRegistry, artifact: Path, **kwargs) -> ModelVersion:
    return registry.register(artifact, metrics={"domain_nll": 1.0}, lineage={"call_ids": []}, **kwargs)


def stored_delta(registry: ModelRegistry, version: ModelVersion) -> Path:
    return registry.store.fetch(version.artifact_uri, registry.cache_dir) / DELTA_FILE


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


class Recording:
    """A real ChatModel that counts the replies it was asked to word (which model a turn used)."""

    def __init__(self, model: ChatModel):
        self.model = model
        self.version = model.version
        self.streams = 0

    def astream(self, messages: list[dict[str, str]], **options) -> AsyncIterator[str]:
        self.streams += 1
        return self.model.astream(messages, **options)


def settings_for(home: Path, db: Database, base_dir: Path, **extra) -> Settings:
    return Settings(
        home=home,
        today=TODAY,
        database_url=db.engine.url.render_as_string(False),
        llm_model=str(base_dir),
        voice_llm=True,
        registry_poll_s=0,
        **extra,
    )


def served_by(turn) -> str:
    """The model an agent turn was served by (a random tiny model's wording fails its grounding check, so
    templates speak and the turn's own model_version says "template")."""
    return next(c["meta"] for c in turn.tool_calls if "meta" in c)["serving"]


def agent_versions(runtime: AgentRuntime, call_id: str) -> list[str]:
    return [served_by(t) for t in runtime.call_log.transcript(call_id) if t.role == "agent" and t.tool_calls]


@pytest.fixture(scope="module")
def base_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def artifacts(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "a": make_artifact(base_dir, root / "run-a", seed=1),
        "b": make_artifact(base_dir, root / "run-b", seed=2),
        "foreign": make_artifact(base_dir, root / "run-foreign", seed=3, base_sha256="0" * 64),
    }


@pytest.fixture
def settings(tmp_path, sqlite_db, base_dir) -> Settings:
    return settings_for(tmp_path, sqlite_db, base_dir)


@pytest.fixture
def registry(settings, sqlite_db) -> ModelRegistry:
    return ModelRegistry.from_settings(settings, db=sqlite_db)


@pytest.fixture
def runtime(settings, sqlite_db, base_dir) -> AgentRuntime:
    return AgentRuntime(settings, llm=load_version(base_dir, None, version=None), db=sqlite_db)


@pytest.fixture
def admin(settings, runtime, registry) -> ModelAdmin:
    return ModelAdmin(settings, runtime, registry, llm_enabled=True)


async def one_turn(runtime: AgentRuntime, text: str = "Do you have a pool?") -> str:
    """A new text conversation with one turn; the version its reply was logged with."""
    convo = runtime.new_conversation()
    await convo.reply(text)
    return agent_versions(runtime, convo.call_id)[-1]


# ------------------------------------------------------------------------------------------ loading


def test_load_version_applies_the_delta_and_names_the_version(base_dir, artifacts):
    base = load_version(base_dir, None, version=None)
    tuned = load_version(base_dir, artifacts["a"], version="v-a")
    assert tuned.version == "v-a" and base.version.startswith("tiny-chat@")
    changed = tuned.model.get_parameter(TUNED_TENSOR) - base.model.get_parameter(TUNED_TENSOR)
    assert changed.abs().max() > 1e-3
    untouched = tuned.model.get_parameter("model.layers.1.mlp.down_proj.weight")
    torch.testing.assert_close(untouched, base.model.get_parameter("model.layers.1.mlp.down_proj.weight"))


@pytest.mark.parametrize("damage", [flip_a_byte, truncate], ids=["flipped-byte", "truncated"])
def test_load_version_refuses_a_damaged_artifact(base_dir, artifacts, tmp_path, damage):
    import shutil

    copy = Path(shutil.copytree(artifacts["a"], tmp_path / "copy"))
    damage(copy / DELTA_FILE)
    with pytest.raises(ModelLoadError, match="does not verify"):
        load_version(base_dir, copy, version="v-bad")


def test_load_version_refuses_a_delta_made_for_another_base(base_dir, artifacts):
    with pytest.raises(ModelLoadError, match="made for base weights"):
        load_version(base_dir, artifacts["foreign"], version="v-foreign")


def test_the_loader_process_gives_the_same_model_and_refuses_what_load_version_refuses(base_dir, artifacts, tmp_path):
    scratch_before = set(Path("/dev/shm").glob("innkeeper-load-*"))
    serving = load_version(base_dir, None, version=None)
    beside = load_version_beside_calls(
        base_dir, artifacts["a"], version="v-a", tokenizer_from=serving, scratch=tmp_path
    )
    inline = load_version(base_dir, artifacts["a"], version="v-a")
    assert beside.version == "v-a" and beside.path == base_dir and beside.tokenizer is serving.tokenizer
    mapped, loaded = beside.model.state_dict(), inline.model.state_dict()
    assert list(mapped) == list(loaded)
    for name, tensor in mapped.items():
        torch.testing.assert_close(tensor, loaded[name], rtol=0, atol=0, msg=name)
    messages = [{"role": "user", "content": "Is breakfast included?"}]
    assert list(beside.stream(messages, max_new_tokens=8)) == list(inline.stream(messages, max_new_tokens=8))
    with pytest.raises(ModelLoadError, match="made for base weights"):
        load_version_beside_calls(base_dir, artifacts["foreign"], version="v-foreign", scratch=tmp_path)
    # the loaded weights' directory is gone (in /dev/shm, or in `scratch` where /dev/shm is small)
    assert not any(tmp_path.glob("innkeeper-load-*"))
    assert set(Path("/dev/shm").glob("innkeeper-load-*")) <= scratch_before


def test_the_loader_process_can_serve_a_version_through_ctranslate2(base_dir, artifacts, tmp_path):
    from agent.reply.ct2 import Ct2ChatModel

    inline = load_version(base_dir, artifacts["a"], version="v-a")
    served = load_version_beside_calls(
        base_dir, artifacts["a"], version="v-a", tokenizer_from=inline, scratch=tmp_path, ctranslate2="float32"
    )
    assert isinstance(served, Ct2ChatModel) and served.version == "v-a" and served.path == base_dir
    messages = [{"role": "user", "content": "Is breakfast included?"}]
    # the delta was applied before the export: the version decodes as its torch weights do
    assert "".join(served.stream(messages, max_new_tokens=8)) == "".join(inline.stream(messages, max_new_tokens=8))
    assert not any(tmp_path.glob("innkeeper-load-*"))


def test_the_loader_process_waits_while_turns_are_worked_on(base_dir, artifacts, tmp_path):
    """Stopped while `busy()`: the load only finishes once the serving process has a gap."""
    busy = threading.Event()
    busy.set()
    loaded: list = []
    loader = threading.Thread(
        target=lambda: loaded.append(
            load_version_beside_calls(base_dir, artifacts["a"], version="v-a", scratch=tmp_path, busy=busy.is_set)
        )
    )
    loader.start()
    unpaused = time.perf_counter()
    load_version_beside_calls(base_dir, artifacts["b"], version="v-b", scratch=tmp_path)  # the same work, no pauses
    unpaused = time.perf_counter() - unpaused
    loader.join(timeout=2 * unpaused + 2)
    assert loader.is_alive() and not loaded, "the load went on while busy"
    busy.clear()
    loader.join(timeout=120)
    assert not loader.is_alive() and loaded[0].version == "v-a"


# ------------------------------------------------------------------------------------------ the slot


def test_a_turn_in_flight_finishes_on_its_model_and_the_next_turn_uses_the_new_one(runtime, base_dir, artifacts):
    old = Recording(runtime.llm)
    runtime.slot.current = old
    new: list[Recording] = []

    def loader() -> Recording:
        new.append(Recording(load_version(base_dir, artifacts["a"], version="v-a")))
        return new[0]

    async def scenario():
        convo = runtime.new_conversation()
        reply = convo.respond("Do you have a pool?")
        first = await anext(reply)  # the turn is under way: decided, model asked, first chunk out
        assert old.streams == 1
        swap = await runtime.slot.swap_to("v-a", loader)
        rest = [chunk async for chunk in reply]
        first_turn = convo.last_turn
        await convo.reply("What time is breakfast?")
        return convo, swap, first_turn, [first, *rest]

    convo, swap, first_turn, chunks = asyncio.run(scenario())
    assert chunks and all(chunks)
    assert (swap.previous, swap.version, runtime.slot.version) == (old.version, "v-a", "v-a")
    assert old.streams == 1 and new[0].streams == 1  # the old model worded turn 1 only, the new one turn 2
    assert first_turn.model_version == old.version and convo.last_turn.model_version == "v-a"
    assert agent_versions(runtime, convo.call_id) == [old.version, "v-a"]
    assert runtime.llm is new[0] and runtime.slot.previous is old


def test_a_loader_waits_for_the_whole_turn_not_only_the_generation(runtime):
    """Understanding, the database and the call log come before the model generates: a load waits for those too."""
    seen: list[tuple[str, bool]] = []

    class Watching:
        version = "watching"
        generating = False

        async def astream(self, messages, **options):
            seen.append(("model asked", runtime.slot.busy()))
            yield "We have a pool on the roof."

    runtime.slot.current = Watching()
    convo = runtime.new_conversation()
    real_decide = convo._decide

    async def decide(text):
        seen.append(("deciding", runtime.slot.busy()))
        return await real_decide(text)

    convo._decide = decide

    async def scenario():
        assert not runtime.slot.busy()
        await convo.reply("Do you have a pool?")
        seen.append(("after the reply", runtime.slot.busy()))
        await convo.close()

    asyncio.run(scenario())
    assert seen == [("deciding", True), ("model asked", True), ("after the reply", False)]


def test_a_turn_left_open_stops_holding_loads_back(monkeypatch):
    turns = TurnsInProgress()
    stuck = turns.during()
    stuck.__enter__()  # a reply stream its consumer never closed
    assert turns
    monkeypatch.setattr("agent.call.turns.TURN_BUSY_MAX_S", 0.0)
    assert not turns


def test_a_failed_load_leaves_the_current_model_serving(runtime):
    serving = runtime.llm

    def broken() -> ChatModel:
        raise OSError("disk went away")

    with pytest.raises(ModelLoadError, match="disk went away"):
        asyncio.run(runtime.slot.swap_to("v-broken", broken))
    assert runtime.llm is serving
    assert asyncio.run(one_turn(runtime)) == serving.version


def test_one_swap_at_a_time(base_dir):
    slot = ModelSlot(load_version(base_dir, None, version="v0"))
    release = threading.Event()

    def slow() -> ChatModel:
        release.wait(10)
        return load_version(base_dir, None, version="v1")

    async def scenario():
        first = asyncio.create_task(slot.swap_to("v1", slow))
        await asyncio.sleep(0.05)
        with pytest.raises(SwapInProgress, match="'v1' is still loading"):
            await slot.swap_to("v2", lambda: load_version(base_dir, None, version="v2"))
        assert slot.version == "v0"  # nothing changes until the load has finished
        release.set()
        return await first

    assert asyncio.run(scenario()).version == "v1" and slot.version == "v1"


# ------------------------------------------------------------------------------------------ the admin


@pytest.mark.parametrize("damage", [flip_a_byte, truncate], ids=["flipped-byte", "truncated"])
def test_a_damaged_version_is_refused_and_marked_failed(admin, runtime, registry, artifacts, damage):
    serving = runtime.llm.version
    version = register(registry, artifacts["a"])
    damage(stored_delta(registry, version))
    with pytest.raises(AdminError, match="does not verify") as refused:
        asyncio.run(admin.promote(version.id))
    assert refused.value.status == 422
    assert runtime.slot.version == serving and admin.error and version.id in admin.error
    assert registry.get(version.id).status is VersionStatus.FAILED
    failure = registry.events(version.id)[0]
    assert (failure["action"], failure["actor"]) == ("load_failed", "server")
    assert registry.serving() is None
    assert asyncio.run(admin.sync()) is None  # polling leaves it alone
    assert asyncio.run(one_turn(runtime)) == serving


def test_a_delta_for_another_base_is_refused(admin, runtime, registry, artifacts):
    serving = runtime.llm.version
    version = register(registry, artifacts["foreign"])
    with pytest.raises(AdminError, match="made for base weights"):
        asyncio.run(admin.promote(version.id))
    assert runtime.slot.version == serving
    assert registry.get(version.id).status is VersionStatus.FAILED


def test_promote_then_rollback_serves_the_previous_version_at_the_next_turn(admin, runtime, registry, artifacts):
    base_version = runtime.llm.version
    a, b = register(registry, artifacts["a"]), register(registry, artifacts["b"])

    async def scenario():
        swaps = [await admin.promote(a.id)]
        versions = [await one_turn(runtime)]
        swaps.append(await admin.promote(b.id))
        versions.append(await one_turn(runtime))
        swaps.append(await admin.rollback())  # b -> a: the kept previous model, no load
        versions.append(await one_turn(runtime))
        swaps.append(await admin.rollback())  # a -> the base
        versions.append(await one_turn(runtime))
        with pytest.raises(AdminError, match="nothing to roll back") as nothing:
            await admin.rollback()
        return swaps, versions, nothing.value.status

    swaps, versions, status = asyncio.run(scenario())
    assert versions == [a.id, b.id, a.id, base_version]
    assert [s.version for s in swaps] == [a.id, b.id, a.id, base_version]
    assert [s.reused for s in swaps] == [False, False, True, False]
    assert all(s.load_s >= 0 and s.pause_ms < 50 for s in swaps)
    assert status == 409 and runtime.slot.version == base_version and registry.serving() is None
    # newest first: the base took over from a, a came back by rollback, a was promoted and loaded
    actions = [e["action"] for e in registry.events(a.id)]
    assert actions == ["rolled_back", "loaded", "loaded", "promoted", "registered"]


def test_promote_names_an_unknown_version_and_does_not_reload_the_serving_one(admin, runtime, registry, artifacts):
    a = register(registry, artifacts["a"])
    with pytest.raises(AdminError, match="no model version 'v0099'") as unknown:
        asyncio.run(admin.promote("v0099"))
    assert unknown.value.status == 404
    asyncio.run(admin.promote(a.id))
    serving = runtime.llm
    again = asyncio.run(admin.promote(a.id))
    assert runtime.llm is serving and again.version == a.id and again.load_s == 0


def test_polling_follows_the_registry(admin, runtime, registry, artifacts):
    base_version = runtime.llm.version
    a = register(registry, artifacts["a"])

    async def scenario():
        idle = await admin.sync()
        registry.promote(a.id, actor="cli")
        promoted = await admin.sync()
        again = await admin.sync()
        registry.rollback(actor="cli")
        rolled_back = await admin.sync()
        return idle, promoted, again, rolled_back

    idle, promoted, again, rolled_back = asyncio.run(scenario())
    assert idle is None and again is None
    assert promoted.version == a.id and rolled_back.version == base_version
    assert runtime.slot.version == base_version


def test_startup_loads_the_serving_version_and_survives_a_broken_one(settings, sqlite_db, registry, artifacts):
    good = register(registry, artifacts["a"], status=VersionStatus.PROMOTED)
    runtime = AgentRuntime(settings, llm=None, db=sqlite_db)
    asyncio.run(ModelAdmin(settings, runtime, registry, llm_enabled=True).startup())
    assert runtime.slot.version == good.id

    broken = register(registry, artifacts["b"], status=VersionStatus.PROMOTED)
    flip_a_byte(stored_delta(registry, broken))
    runtime = AgentRuntime(settings, llm=None, db=sqlite_db)
    admin = ModelAdmin(settings, runtime, registry, llm_enabled=True)
    asyncio.run(admin.startup())
    assert runtime.slot.version == runtime.llm.version != broken.id
    assert runtime.slot.version.startswith("tiny-chat@")  # the base: a failed start-up never leaves none
    assert admin.error and broken.id in admin.error
    assert registry.get(broken.id).status is VersionStatus.FAILED
    assert registry.serving().id == good.id  # the registry fell back too; the next poll will swap to it


def test_without_an_llm_swaps_are_refused(settings, sqlite_db, registry, artifacts):
    runtime = AgentRuntime(settings, llm=None, db=sqlite_db)
    admin = ModelAdmin(settings, runtime, registry, llm_enabled=False)
    version = register(registry, artifacts["a"])
    asyncio.run(admin.startup())
    with pytest.raises(AdminError, match="without a language model") as refused:
        asyncio.run(admin.promote(version.id))
    assert refused.value.status == 409 and runtime.llm is None
    assert registry.get(version.id).status is VersionStatus.CANDIDATE  # refused before touching the registry


# ------------------------------------------------------------------------------------------ live server


def http(method: str, url: str, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def speech_models():
    from innkeeper.serve.speech import load_speech_models

    return load_speech_models(Settings(partial_transcripts_ms=None, endpoint_silence_ms=640))


@pytest.mark.real_model
def test_admin_api_needs_its_token_or_a_signed_in_admin(tmp_path, sqlite_db, base_dir, speech_models):
    settings = settings_for(tmp_path, sqlite_db, base_dir, admin_token=None)
    settings.voice_llm = False  # and no LLM: the refusal names the cause
    runtime = AgentRuntime(settings, llm=None, db=sqlite_db)
    with serving(create_app(settings, runtime=runtime, models=speech_models)) as host:
        base = f"http://{host}/admin/models"
        records = f"http://{host}/api/calls"  # a call record holds the caller's name and number
        disabled = [
            http("GET", base, TOKEN),
            http("POST", f"{base}/v1/promote", TOKEN),
            http("POST", f"{base}/rollback"),
            http("GET", f"{records}/some-call"),
            http("GET", f"{records}?call_sid=CA1", TOKEN),
        ]
        # no token configured: a script's token is refused, and nobody is signed in
        assert [status for status, _ in disabled] == [401] * 5
        assert [("token access is off" in body["error"]) for _, body in disabled] == [True, True, False, False, True]

        settings.admin_token = TOKEN
        wrong = [
            http("GET", base, "not-the-token"),
            http("POST", f"{base}/v1/promote"),
            http("POST", f"{base}/rollback", "not-the-token"),
            http("GET", f"{records}/some-call"),
            http("GET", f"{records}?call_sid=CA1", "not-the-token"),
        ]
        assert [status for status, _ in wrong] == [401] * 5
        assert [http("GET", f"{records}/some-call", TOKEN)[0], http("GET", f"{records}?call_sid=CA1", TOKEN)[0]] == [
            404,
            404,
        ]

        status, listing = http("GET", base, TOKEN)
        assert status == 200 and listing["versions"] == [] and listing["serving"]["model_version"] == "template"
        status, refused = http("POST", f"{base}/v1/promote", TOKEN)
        assert status == 409 and refused["error"] == NO_LLM


@pytest.mark.real_model
def test_three_calls_survive_a_promotion_through_the_admin_api(
    tmp_path, sqlite_db, base_dir, artifacts, speech_models, caller_voice
):
    """The issue's test: live calls over the plain websocket while the admin API promotes a new version."""
    from innkeeper.simulation.caller_lines import lines_from_text
    from innkeeper.simulation.voice_caller import place_call

    settings = settings_for(tmp_path, sqlite_db, base_dir, admin_token=TOKEN)
    registry = ModelRegistry.from_settings(settings, db=sqlite_db)
    tuned = register(registry, artifacts["a"])
    app = create_app(settings, models=speech_models)  # the server loads the base itself, as in production
    scripts = [
        ("Do you have a pool?", "What time is breakfast?", "Is there parking?"),
        ("Is breakfast included?", "Do you allow dogs?", "What time is check out?"),
        ("Is there a gym?", "How far is the airport?", "Thank you, goodbye."),
    ]
    lines = [lines_from_text(script, caller_voice) for script in scripts]

    with serving(app) as host:
        runtime: AgentRuntime = app.state.services.runtime
        base_version = runtime.slot.version
        assert base_version.startswith("tiny-chat@")

        def answered_calls() -> int:
            """Calls whose first caller line has been answered (an agent turn after a caller turn)."""
            answered = 0
            for call_id in list(app.state.services.active):
                with contextlib.suppress(Exception):
                    roles = [t.role for t in runtime.call_log.transcript(call_id)]
                    answered += "caller" in roles and roles[roles.index("caller") :].count("agent") >= 1
            return answered

        async def scenario():
            # Each caller says their first line, then holds the line until the promotion has answered: the
            # swap happens mid-call on every call however slow the machine is.
            promoted = asyncio.Event()
            held = [[first, *(dataclasses.replace(line, after=promoted) for line in rest)] for first, *rest in lines]
            calls = [
                asyncio.create_task(place_call(f"ws://{host}/ws/call", script, protocol="plain")) for script in held
            ]
            deadline = time.monotonic() + 120
            while answered_calls() < len(calls) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert answered_calls() == len(calls) == len(app.state.services.active), "a call was not answered"
            before = datetime.now(UTC)
            status, body = await asyncio.to_thread(
                http, "POST", f"http://{host}/admin/models/{tuned.id}/promote", TOKEN
            )
            after = datetime.now(UTC)
            promoted.set()
            reports = await asyncio.gather(*calls)
            return reports, (status, body), before, after

        reports, (status, body), before, after = asyncio.run(asyncio.wait_for(scenario(), 300))
        health = http("GET", f"http://{host}/healthz")[1]

    assert status == 200, body
    assert body["swap"]["version"] == tuned.id and body["swap"]["previous"] == base_version
    assert body["swap"]["load_s"] > 0 and body["swap"]["pause_ms"] < 50
    assert health["model_version"] == tuned.id and health["model_error"] is None
    for report in reports:
        assert all(turn.answered for turn in report.turns), [(t.text, t.answered) for t in report.turns]
        assert not report.server_errors and not report.bad_messages

    # Each agent reply carries the version of the model its turn began with: the caller turn's start is
    # when `respond` took the model, so replies to words heard before the promotion was asked for are the
    # base's, and replies to words heard after it answered are the tuned version's.
    early, late, worded = [], [], []
    for report in reports:
        turns = runtime.call_log.transcript(report.call_id)
        replies = [
            (turns[i - 1], t) for i, t in enumerate(turns) if t.role == "agent" and i and turns[i - 1].role == "caller"
        ]
        # At least one reply per line (a line heard in two parts gets two).
        assert len(replies) >= 3, [(t.role, t.text, t.model_version) for t in turns]
        versions = [served_by(reply) for _, reply in replies]
        assert versions == sorted(versions, key=lambda v: v == tuned.id), versions  # never back to the old one
        assert set(versions) <= {base_version, tuned.id}
        worded.extend("llm_first_token_ms" in (reply.latencies or {}) for _, reply in replies)
        for caller, reply in replies:
            assert reply.text.strip(), (caller.text, reply)
            if caller.started_at < before:
                early.append(served_by(reply))
            elif caller.started_at > after:
                late.append(served_by(reply))
    assert any(worded), "the LLM never worded a voice reply (voice_llm is on)"
    assert early and set(early) == {base_version}
    assert late and set(late) == {tuned.id}
    assert registry.serving().id == tuned.id
    assert [e["action"] for e in registry.events(tuned.id)][:2] == ["loaded", "promoted"]
