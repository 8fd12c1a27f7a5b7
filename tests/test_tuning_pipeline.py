"""End to end on a tiny random model: align → domain tuning → evaluation, as the CLI runs them."""

from __future__ import annotations

import json

import pytest

from agent.reply.llm import ChatModel, build_tiny_chat_model
from innkeeper.core.settings import Settings
from innkeeper.models.artifacts import verify_artifact
from innkeeper.models.resolve import guarded_dir, start_model_dir
from innkeeper.simulation.scripted_bookings import measure_into
from tuning.data.dialogues import import_dialogues, load_shared_dialogues
from tuning.methods.projected import ProjectedConfig
from tuning.pipeline import CorpusSize, align, evaluate_model, run_domain_tuning

SIZE = CorpusSize(text_tokens=512, chats=2, safety=4, max_len=128)


@pytest.fixture(scope="module")
def tiny_settings(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("tuning")
    model_dir = build_tiny_chat_model(root / "tiny")
    settings = Settings(home=root / "home", llm_model=str(model_dir))
    if not (settings.shared_data / "dialogues").is_dir():
        pytest.skip(f"shared data not found at {settings.shared_data}")
    return settings


def test_align_then_tune_then_eval(tiny_settings, sqlite_db):
    cfg = ProjectedConfig(steps=3, batch_size=2, eps=0.9, lr=1e-3, eval_every=1, progress=False)

    guarded = align(tiny_settings, cfg, size=SIZE)
    assert verify_artifact(guarded.artifact) == []
    assert start_model_dir(tiny_settings) == guarded_dir(tiny_settings)
    ChatModel(guarded_dir(tiny_settings))  # the exported guarded base loads as a plain model

    import_dialogues(sqlite_db, load_shared_dialogues(tiny_settings.shared_data, ("star_hotel",))[:40])
    tuned = run_domain_tuning(tiny_settings, method="projected", cfg=cfg, db=sqlite_db, size=SIZE)
    assert verify_artifact(tuned.artifact) == []
    manifest = json.loads((tuned.artifact / "manifest.json").read_text())
    assert manifest["lineage"]["dialogues"] and all(d.startswith("star:") for d in manifest["lineage"]["dialogues"])
    assert tuned.metrics["steps"] == 3 and 0.0 < tuned.metrics["mean_kept_fraction"] <= 1.0
    assert tuned.metrics["projection_memory_mb"] > 0
    assert tuned.base_dir == guarded_dir(tiny_settings)

    result, base_result, table = evaluate_model(
        tiny_settings,
        tuned.artifact,
        size="tiny",
        extra_measure=lambda result, model: measure_into(result, model, tiny_settings, 2),
    )
    assert result["base_model"] == base_result["model"]
    assert "general" in json.dumps(result["measures"]).lower()
    for measured in (result, base_result):  # the random tiny model words nothing; the brain books anyway
        bookings = measured["measures"]["scripted_bookings"]
        assert (bookings["calls"], bookings["exact"], bookings["model_worded"]) == (2, 2, 0)
    assert "scripted bookings made as asked" in table


def test_the_configured_method_options_reach_the_method(tiny_settings, sqlite_db):
    """INNKEEPER_TUNE_METHOD_OPTIONS: rehearsal toward the start model's predictions, as the nightly would run it."""
    options = {"ratio": 0.25, "anchor": "kl", "anchor_weight": 4.0}
    settings = tiny_settings.model_copy(update={"tune_method": "projected_replay", "tune_method_options": options})
    cfg = ProjectedConfig(steps=2, batch_size=2, eps=0.9, lr=1e-3, progress=False)
    import_dialogues(sqlite_db, load_shared_dialogues(settings.shared_data, ("star_hotel",))[:20])
    tuned = run_domain_tuning(settings, method="projected_replay", cfg=cfg, db=sqlite_db, size=SIZE)
    config = json.loads((tuned.artifact / "manifest.json").read_text())["config"]
    assert config["method"] == "projected_replay" and {k: config[k] for k in options} == options
    with pytest.raises(TypeError, match="nonsense"):  # an option the method does not take is an error, not ignored
        run_domain_tuning(
            settings.model_copy(update={"tune_method_options": {"nonsense": 1}}),
            method="projected_replay",
            cfg=cfg,
            db=sqlite_db,
            size=SIZE,
        )


def test_full_fine_tuning_does_not_build_the_protected_corpus(tiny_settings, sqlite_db, monkeypatch):
    import tuning.pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the protected corpus was built for a method that never reads it")

    monkeypatch.setattr(tuning.pipeline, "protected_examples", refuse)
    cfg = ProjectedConfig(steps=1, batch_size=2, lr=1e-3, progress=False)
    import_dialogues(sqlite_db, load_shared_dialogues(tiny_settings.shared_data, ("star_hotel",))[:10])
    tuned = run_domain_tuning(tiny_settings, method="full", cfg=cfg, db=sqlite_db, size=SIZE)
    assert verify_artifact(tuned.artifact) == [] and tuned.metrics["steps"] == 1
