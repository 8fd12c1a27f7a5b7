"""Tests for the model registry: registering verified artifacts (once per run), promotion and rollback,
failures falling back, events, lineage lookups, a remote-style (memory://) store, and the `models` CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import fsspec
import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from innkeeper.cli import app
from innkeeper.cli import common as cli_common
from innkeeper.core.db.database import Database
from innkeeper.core.settings import Settings, get_settings
from innkeeper.models.artifacts import DELTA_FILE, MANIFEST_FILE, save_delta, verify_artifact, weights_sha256
from innkeeper.models.registry import ModelRegistry, ModelVersion, RegistryError, VersionStatus
from innkeeper.models.store import COMPLETE_MARKER, ArtifactStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def artifacts(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three different delta artifacts against the tiny model, as a nightly run would write them."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    base_state = {name: t.clone() for name, t in model.state_dict().items()}
    param = model.get_parameter("model.layers.0.mlp.down_proj.weight")
    generator = torch.Generator().manual_seed(0)
    runs = tmp_path_factory.mktemp("runs")
    made = []
    for n in range(3):
        with torch.no_grad():
            param.add_(0.01 * torch.randn(param.shape, generator=generator))
        made.append(
            save_delta(
                base_state,
                model,
                runs / f"run-{n}",
                base_id="tiny-chat",
                base_sha256=weights_sha256(tiny_model_dir),
                lineage={"call_ids": [f"call-{n}"]},
                config={"lr": 1e-4},
                metrics={"domain_nll": 1.5 - n / 10},
            )
        )
    return made


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def registry(db: Database, store_dir: Path, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(db, ArtifactStore(f"file://{store_dir}"), tmp_path / "cache")


@pytest.fixture(params=["memory", "s3"])
def remote_registry(request, db: Database, tmp_path: Path) -> Iterator[ModelRegistry]:
    """The registry on an object store: fsspec's memory://, and an S3 bucket configured through settings."""
    prefix = f"registry-{uuid.uuid4().hex[:8]}"
    if request.param == "memory":
        url, options = f"memory://{prefix}", {}
        registry = ModelRegistry(db, ArtifactStore(url), tmp_path / "cache")
    else:
        url, options = f"s3://innkeeper-models/{prefix}", request.getfixturevalue("s3_server")
        settings = Settings(
            home=tmp_path / "home",
            registry_url=url,
            registry_storage_options=options,
            registry_cache=tmp_path / "cache",
        )
        registry = ModelRegistry.from_settings(settings, db)
    yield registry
    fs, root = fsspec.core.url_to_fs(url, **options)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def register(registry: ModelRegistry, artifact: Path, calls: list[str], **kwargs) -> ModelVersion:
    return registry.register(artifact, metrics=kwargs.pop("metrics", {}), lineage={"call_ids": calls}, **kwargs)


def stored_names(store_dir: Path) -> list[str]:
    return sorted(p.name for p in store_dir.iterdir()) if store_dir.exists() else []


def flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- registering and reading


def test_register_round_trips_through_get_and_list(
    registry: ModelRegistry, artifacts: list[Path], tiny_model_dir: Path
) -> None:
    lineage = {"call_ids": ["c-1", "c-2"], "method": "projected", "dialogue_ids": ["star:1"]}
    metrics = {"domain_gain": 0.12, "retention": {"arc": 0.98}}
    gate = {"decision": "pass", "reasons": []}
    v = registry.register(artifacts[0], metrics=metrics, lineage=lineage, gate=gate, run_id="night-1", note="first")

    assert v.status is VersionStatus.CANDIDATE
    assert v.id.startswith("v0001-")
    assert (v.metrics, v.lineage, v.gate, v.run_id, v.note) == (metrics, lineage, gate, "night-1", "first")
    assert (v.base_id, v.base_sha256) == ("tiny-chat", weights_sha256(tiny_model_dir))
    assert v.manifest_sha256 == hashlib.sha256((artifacts[0] / MANIFEST_FILE).read_bytes()).hexdigest()
    assert v.created_at.tzinfo is not None and v.created_at.utcoffset() == UTC.utcoffset(None)
    assert v.promoted_at is None
    assert registry.get(v.id) == v
    assert registry.get("v1") == v  # the number alone is enough on the command line

    stored = Path(v.artifact_uri.removeprefix("file://"))
    assert v.artifact_uri.startswith("file://") and stored.name == v.id
    assert verify_artifact(stored) == [] and (stored / COMPLETE_MARKER).is_file()

    v2 = register(registry, artifacts[1], ["c-3"])
    assert v2.id.startswith("v0002-")
    assert registry.list() == [v2, v]
    assert registry.list(limit=1) == [v2]
    assert [(e["action"], e["actor"]) for e in registry.events(v.id)] == [("registered", "nightly")]


def test_run_id_makes_registering_idempotent(registry: ModelRegistry, artifacts: list[Path], store_dir: Path) -> None:
    first = register(registry, artifacts[0], ["c-1"], run_id="night-7")
    again = register(registry, artifacts[1], ["c-9"], run_id="night-7", metrics={"changed": 1.0})

    assert again == first
    assert registry.list() == [first]
    assert stored_names(store_dir) == [first.id]
    assert len(registry.events(first.id)) == 1


def test_a_broken_artifact_is_refused_at_registration(
    registry: ModelRegistry, artifacts: list[Path], store_dir: Path, tmp_path: Path
) -> None:
    truncated = tmp_path / "truncated"
    shutil.copytree(artifacts[0], truncated)
    delta = truncated / DELTA_FILE
    delta.write_bytes(delta.read_bytes()[:-100])

    with pytest.raises(RegistryError, match=r"refusing to register .*delta\.safetensors.*truncated"):
        register(registry, truncated, ["c-1"])
    with pytest.raises(RegistryError, match=r"manifest\.json: missing"):
        register(registry, tmp_path, ["c-1"])
    with pytest.raises(RegistryError, match="call_ids"):
        registry.register(artifacts[0], metrics={}, lineage={"dialogue_ids": ["x"]})
    assert registry.list() == []
    assert stored_names(store_dir) == []


def test_a_stored_copy_that_was_damaged_is_refused_when_loaded(registry: ModelRegistry, artifacts: list[Path]) -> None:
    v = register(registry, artifacts[0], ["c-1"])
    path = registry.local_artifact(v)
    assert verify_artifact(path) == []

    flip_byte(path / DELTA_FILE)
    with pytest.raises(RegistryError, match=rf"{v.id}: the artifact .* does not verify: .*sha256 mismatch"):
        registry.local_artifact(v)


def test_a_manifest_swapped_for_another_artifacts_is_refused(registry: ModelRegistry, artifacts: list[Path]) -> None:
    v = register(registry, artifacts[0], ["c-1"])
    stored = Path(v.artifact_uri.removeprefix("file://"))
    for name in (MANIFEST_FILE, DELTA_FILE):  # a complete, valid artifact, but not the one registered
        shutil.copyfile(artifacts[1] / name, stored / name)

    with pytest.raises(RegistryError, match="not the manifest registered"):
        registry.local_artifact(v)


def test_a_failed_database_write_leaves_no_stored_copy(hotel, artifacts: list[Path], tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'broken.db'}")
    db.migrate()
    with db.connect() as connection, connection.begin():
        connection.exec_driver_sql("DROP TABLE model_events")  # the event insert after the copy will fail
    store_dir = tmp_path / "store"
    registry = ModelRegistry(db, ArtifactStore(str(store_dir)), tmp_path / "cache")

    with pytest.raises(Exception, match="model_events"):
        register(registry, artifacts[0], ["c-1"])
    assert registry.list() == []
    assert stored_names(store_dir) == []
    db.close()


def test_versions_trained_on_a_call(registry: ModelRegistry, artifacts: list[Path]) -> None:
    v1 = register(registry, artifacts[0], ["a", "b"])
    v2 = register(registry, artifacts[1], ["b", "c"])

    assert registry.versions_trained_on("b") == [v2, v1]
    assert registry.versions_trained_on("a") == [v1]
    assert registry.versions_trained_on("z") == []


def test_unknown_versions_are_clear_errors(registry: ModelRegistry, artifacts: list[Path]) -> None:
    register(registry, artifacts[0], ["c-1"])
    for call in (
        lambda: registry.get("v0099"),
        lambda: registry.promote("nope"),
        lambda: registry.reject("v9", ["x"]),
        lambda: registry.mark_failed("v9", "boom"),
        lambda: registry.record_event("v9", "loaded", actor="server"),
        lambda: registry.events("v9"),
    ):
        with pytest.raises(RegistryError, match="no model version"):
            call()


# ---------------------------------------------------------------- promotion, rollback, failure


def test_promote_and_rollback_walk_back_through_the_promoted_versions(
    registry: ModelRegistry, artifacts: list[Path]
) -> None:
    v1 = register(registry, artifacts[0], ["c-1"])
    v2 = register(registry, artifacts[1], ["c-2"])
    assert registry.serving() is None

    promoted = registry.promote(v1.id, reason="looks good")
    assert promoted.status is VersionStatus.PROMOTED and promoted.promoted_at is not None
    assert registry.serving() == promoted == registry.get(v1.id)
    registry.promote(v2.id)
    assert registry.serving().id == v2.id

    assert registry.rollback(reason="guests confused").id == v1.id
    assert registry.serving().id == v1.id
    assert registry.get(v2.id).status is VersionStatus.ROLLED_BACK
    assert registry.rollback() is None
    assert registry.serving() is None
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()

    registry.promote(v2.id)  # a rolled-back version can be promoted again
    assert registry.serving().id == v2.id


def test_an_operator_may_override_a_rejection_but_not_a_failure(registry: ModelRegistry, artifacts: list[Path]) -> None:
    v1 = register(registry, artifacts[0], ["c-1"], gate={"decision": "pass"})
    v2 = register(registry, artifacts[1], ["c-2"])

    rejected = registry.reject(v1.id, ["retention fell 3%", "safety 0.91 < 0.95"])
    assert rejected.status is VersionStatus.REJECTED
    assert registry.get(v1.id).gate == {"decision": "rejected", "reasons": ["retention fell 3%", "safety 0.91 < 0.95"]}
    assert registry.promote(v1.id, actor="admin-api", reason="tested by hand").status is VersionStatus.PROMOTED
    event = registry.events(v1.id)[0]
    assert (event["action"], event["actor"]) == ("promoted", "admin-api")
    assert "overrides the rejection (retention fell 3%" in event["detail"] and "tested by hand" in event["detail"]

    registry.mark_failed(v2.id, "delta does not fit the base")
    with pytest.raises(RegistryError, match="cannot be promoted"):
        registry.promote(v2.id)
    assert registry.serving().id == v1.id


def test_a_serving_version_that_fails_to_load_falls_back(registry: ModelRegistry, artifacts: list[Path]) -> None:
    v1 = register(registry, artifacts[0], ["c-1"])
    v2 = register(registry, artifacts[1], ["c-2"])
    registry.promote(v1.id)
    registry.promote(v2.id)

    registry.mark_failed(v2.id, "sha256 mismatch in delta.safetensors")
    assert registry.get(v2.id).status is VersionStatus.FAILED
    assert registry.serving().id == v1.id
    event = registry.events(v2.id)[0]
    assert (event["action"], event["actor"], event["detail"]) == (
        "load_failed",
        "server",
        "sha256 mismatch in delta.safetensors",
    )
    registry.mark_failed(v1.id, "out of memory")
    assert registry.serving() is None


def test_events_record_who_did_what_newest_first(registry: ModelRegistry, artifacts: list[Path]) -> None:
    v1 = register(registry, artifacts[0], ["c-1"], actor="nightly")
    v2 = register(registry, artifacts[1], ["c-2"], actor="cli")
    registry.promote(v1.id, actor="admin-api", reason="approved")
    registry.record_event(v1.id, "loaded", actor="server", detail="pid 42")

    assert [(e["action"], e["actor"], e["detail"]) for e in registry.events(v1.id)] == [
        ("loaded", "server", "pid 42"),
        ("promoted", "admin-api", "approved"),
        ("registered", "nightly", ""),
    ]
    everything = registry.events()
    assert [e["version_id"] for e in everything] == [v1.id, v1.id, v2.id, v1.id]
    assert all(e["at"].tzinfo is not None for e in everything)
    assert len(registry.events(limit=2)) == 2
    with pytest.raises(RegistryError, match="actor"):
        registry.record_event(v1.id, "loaded", actor="")


def test_concurrent_rollbacks_each_roll_back_one_version(registry: ModelRegistry, artifacts: list[Path]) -> None:
    versions = [register(registry, a, [f"c-{n}"]) for n, a in enumerate(artifacts)]
    for v in versions:
        registry.promote(v.id)
    barrier = threading.Barrier(2)
    results: list[object] = []

    def roll_back() -> None:
        barrier.wait()
        results.append(registry.rollback(actor="admin-api"))

    threads = [threading.Thread(target=roll_back) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(r.id for r in results) == [versions[0].id, versions[1].id]
    assert registry.serving().id == versions[0].id
    assert [registry.get(v.id).status for v in versions] == [
        VersionStatus.PROMOTED,
        VersionStatus.ROLLED_BACK,
        VersionStatus.ROLLED_BACK,
    ]


# ---------------------------------------------------------------- object stores (memory://, s3:// on moto)


def test_an_object_store_works_through_the_same_code(remote_registry: ModelRegistry, artifacts: list[Path]) -> None:
    registry = remote_registry
    v = register(registry, artifacts[0], ["c-1"], run_id="night-1")
    assert v.artifact_uri.split("://")[0] == registry.store.url.split("://")[0]  # memory:// or s3://
    fs, remote = fsspec.core.url_to_fs(v.artifact_uri, **registry.store.storage_options)
    assert fs.cat_file(f"{remote}/{COMPLETE_MARKER}").decode() == v.manifest_sha256
    assert not [p for p in fs.find(registry.store.root) if "/.tmp-" in p]

    local = registry.local_artifact(v)
    assert local.is_relative_to(registry.cache_dir) and verify_artifact(local) == []
    stamp = (local / DELTA_FILE).stat().st_mtime_ns
    assert registry.local_artifact(v) == local
    assert (local / DELTA_FILE).stat().st_mtime_ns == stamp  # the cached copy was reused

    flip_byte(local / DELTA_FILE)  # a damaged cache is replaced by a fresh download
    assert verify_artifact(registry.local_artifact(v)) == []

    data = bytearray(fs.cat_file(f"{remote}/{DELTA_FILE}"))
    data[-1] ^= 0xFF
    fs.pipe_file(f"{remote}/{DELTA_FILE}", bytes(data))
    shutil.rmtree(local)
    with pytest.raises(RegistryError, match=r"does not verify: .*sha256 mismatch"):
        registry.local_artifact(v)

    fs.rm_file(f"{remote}/{COMPLETE_MARKER}")  # an upload that never finished
    with pytest.raises(RegistryError, match="incomplete"):
        registry.local_artifact(v)

    registry.store.remove(v.artifact_uri)
    assert not fs.exists(remote)


def test_with_the_object_store_down_a_cached_version_still_loads_and_nothing_half_registers(
    db: Database, artifacts: list[Path], tmp_path: Path, s3_server: dict
) -> None:
    url = f"s3://innkeeper-models/down-{uuid.uuid4().hex[:8]}"
    up = ModelRegistry(db, ArtifactStore(url, **s3_server), tmp_path / "cache")
    served = register(up, artifacts[0], ["c-1"])
    never_fetched = register(up, artifacts[1], ["c-2"])
    cached = up.local_artifact(served)
    # The same bucket seen through an endpoint where nothing answers (one attempt, a short timeout).
    refused = {**s3_server, "endpoint_url": "http://127.0.0.1:1", "config_kwargs": {"retries": {"max_attempts": 1}}}
    down = ModelRegistry(db, ArtifactStore(url, **refused), tmp_path / "cache")

    assert down.local_artifact(served) == cached and verify_artifact(cached) == []
    with pytest.raises(RegistryError, match=f"{never_fetched.id}: cannot fetch"):
        down.local_artifact(never_fetched)
    before = [v.id for v in down.list()]
    with pytest.raises(RegistryError, match="cannot store"):
        register(down, artifacts[2], ["c-3"], run_id="night-down")
    assert [v.id for v in down.list()] == before  # no row for an artifact the store never took
    (cached / DELTA_FILE).write_bytes(b"damaged")  # a damaged cache is no fallback
    with pytest.raises(RegistryError, match=served.id):
        down.local_artifact(served)


def test_an_artifact_name_is_never_overwritten(tmp_path: Path, artifacts: list[Path]) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    uri = store.put(artifacts[0], "v0001-x")
    with pytest.raises(FileExistsError):
        store.put(artifacts[1], "v0001-x")
    assert store.fetch(uri, tmp_path / "cache") == tmp_path / "store" / "v0001-x"
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["v0001-x"]  # no temporary left behind


def test_an_unusable_store_url_is_a_clear_error() -> None:
    with pytest.raises(RegistryError, match="artifact store"):
        ArtifactStore("nosuchscheme://bucket/x")


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def cli(db: Database, store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("INNKEEPER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("INNKEEPER_DATABASE_URL", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("INNKEEPER_REGISTRY_URL", f"file://{store_dir}")
    monkeypatch.setattr(cli_common.console, "width", 200)  # rich wraps the table at 80 columns otherwise
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def test_cli_lists_shows_promotes_and_rolls_back(
    cli: CliRunner, registry: ModelRegistry, artifacts: list[Path]
) -> None:
    v1 = register(registry, artifacts[0], ["c-1", "c-2"], metrics={"domain_gain": 0.125}, gate={"decision": "pass"})
    v2 = register(registry, artifacts[1], ["c-3"])

    result = cli.invoke(app, ["models", "promote", "v1", "--reason", "approved"])
    assert result.exit_code == 0, result.output
    assert f"{v1.id} promoted" in result.output

    listed = cli.invoke(app, ["models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["status"], r["serving"]) for r in rows] == [
        (v2.id, "candidate", False),
        (v1.id, "promoted", True),
    ]

    table = cli.invoke(app, ["models", "list"])
    assert table.exit_code == 0
    assert v1.id in table.output and "domain_gain=0.125" in table.output and "▶" in table.output

    shown = cli.invoke(app, ["models", "show", v1.id, "--json"])
    data = json.loads(shown.stdout)
    assert (data["id"], data["serving"], data["lineage"]["call_ids"]) == (v1.id, True, ["c-1", "c-2"])
    assert [(e["action"], e["actor"], e["detail"]) for e in data["events"]] == [
        ("promoted", "cli", "approved"),
        ("registered", "nightly", ""),
    ]
    assert cli.invoke(app, ["models", "show", v1.id]).exit_code == 0

    rolled = cli.invoke(app, ["models", "rollback", "--reason", "bad night"])
    assert rolled.exit_code == 0 and "the base model" in rolled.output
    assert registry.serving() is None
    assert registry.events(v1.id)[0]["detail"].endswith("bad night")


def test_cli_errors_are_one_line_and_a_nonzero_exit(cli: CliRunner, registry: ModelRegistry) -> None:
    for args, message in (
        (["models", "show", "v0042"], "no model version"),
        (["models", "promote", "nope"], "no model version"),
        (["models", "rollback"], "nothing to roll back"),
    ):
        result = cli.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert message in result.output
        assert "Traceback" not in result.output
        assert isinstance(result.exception, SystemExit)  # typer.Exit(1), not an escaped error


def test_the_bare_models_group_lists_the_registry_commands() -> None:
    result = CliRunner().invoke(app, ["models", "--help"])
    assert result.exit_code == 0
    assert all(name in result.output for name in ("list", "show", "promote", "rollback", "--force"))


@pytest.mark.real_model
def test_bare_models_still_provisions_the_bundled_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INNKEEPER_HOME", str(tmp_path))
    monkeypatch.setattr(cli_common.console, "width", 200)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["models"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "smollm2-135m-instruct" in result.output and "verified" in result.output
