"""Which language model serves: the configured one ('bundled', a local directory, a cached hub id) or the guarded base.

The one place that reads `INNKEEPER_LLM_MODEL` and the tuning directory layout to find model weights.
"""

from __future__ import annotations

from pathlib import Path

from agent.reply.llm import ChatModel, resolve_path_or_id
from innkeeper.core.provision import bundled_llm_path
from innkeeper.core.settings import Settings


def resolve_model_dir(settings: Settings) -> Path:
    """The configured model's directory: 'bundled' (verified SmolLM2), a local directory, or a cached hub id."""
    if settings.llm_model == "bundled":
        return bundled_llm_path(settings)
    return resolve_path_or_id(settings.llm_model)[0]


def load_chat_model(settings: Settings) -> ChatModel:
    """The configured model, loaded (see `resolve_model_dir`)."""
    source: str | Path = settings.llm_model
    if source == "bundled":
        source = bundled_llm_path(settings)
    return ChatModel(source, threads=settings.llm_threads)


def tuning_root(settings: Settings) -> Path:
    return settings.home / "tuning"


def guarded_dir(settings: Settings) -> Path:
    """The deployed base produced by `align` (a plain HF directory)."""
    return tuning_root(settings) / "guarded" / "model"


def start_model_dir(settings: Settings) -> Path:
    """What domain tuning starts from: the guarded base once it exists, else the configured model."""
    guarded = guarded_dir(settings)
    return guarded if (guarded / "config.json").exists() else resolve_model_dir(settings)
