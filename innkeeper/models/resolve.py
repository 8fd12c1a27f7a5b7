"""Which language model serves: the configured one ('bundled', a local directory, a cached hub id) or the guarded base.

The one place that reads `INNKEEPER_LLM_MODEL` and the tuning directory layout to find model weights.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from agent.reply.llm import ChatModel, model_version, resolve_path_or_id
from innkeeper.core.provision import bundled_llm_path
from innkeeper.core.settings import Settings

if TYPE_CHECKING:
    from agent.reply.ct2 import Ct2ChatModel


def resolve_model_dir(settings: Settings) -> Path:
    """The configured model's directory: 'bundled' (verified SmolLM2), a local directory, or a cached hub id."""
    if settings.llm_model == "bundled":
        return bundled_llm_path(settings)
    return resolve_path_or_id(settings.llm_model)[0]


def load_chat_model(settings: Settings) -> ChatModel | Ct2ChatModel:
    """The configured model, loaded on the configured engine (see `resolve_model_dir`, `serving_model`)."""
    source: str | Path = settings.llm_model
    if source == "bundled":
        source = bundled_llm_path(settings)
    # The version is named from what was configured (a hub id, not its snapshot directory's hash).
    return serving_model(settings, resolve_path_or_id(source)[0], version=model_version(source))


def serving_model(settings: Settings, hf_dir: Path, *, version: str | None = None) -> ChatModel | Ct2ChatModel:
    """The model in `hf_dir` on `settings.llm_engine`; CTranslate2 serves an export cached per version."""
    if settings.llm_engine == "torch":
        return ChatModel(hf_dir, threads=settings.llm_threads, version=version)
    from agent.reply.ct2 import Ct2ChatModel, export

    version = version or model_version(hf_dir)
    exported = serving_cache(settings) / f"{re.sub(r'[^A-Za-z0-9@._-]', '_', version)}-{settings.llm_compute_type}"
    if not (exported / "model.bin").is_file():
        export(hf_dir, exported, quantization=settings.llm_compute_type)
    return Ct2ChatModel(
        exported, hf_dir, version=version, threads=settings.llm_threads, compute_type=settings.llm_compute_type
    )


def serving_cache(settings: Settings) -> Path:
    """Where exports to the serving engine's format are kept (one per version and weight type)."""
    return settings.home / "serving"


def tuning_root(settings: Settings) -> Path:
    return settings.home / "tuning"


def guarded_dir(settings: Settings) -> Path:
    """The deployed base produced by `align` (a plain HF directory)."""
    return tuning_root(settings) / "guarded" / "model"


def start_model_dir(settings: Settings) -> Path:
    """What domain tuning starts from: the guarded base once it exists, else the configured model."""
    guarded = guarded_dir(settings)
    return guarded if (guarded / "config.json").exists() else resolve_model_dir(settings)
