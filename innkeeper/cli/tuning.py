"""`innkeeper data` and `innkeeper tune`: import training dialogues; align, run, evaluate and the nightly job."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from innkeeper.cli.common import cli_settings, console
from innkeeper.core.settings import Settings

tune_app = typer.Typer(help="Forgetting-resistant tuning: align, run, eval.", no_args_is_help=True)
data_app = typer.Typer(help="Training data: import the shared hotel dialogues.", no_args_is_help=True)


# ---------------------------------------------------------------------- data
@data_app.command("import")
def data_import(
    sources: Annotated[
        list[str] | None, typer.Option("--source", help="star_hotel, sgd_hotels or multiwoz_hotel (repeatable)")
    ] = None,
) -> None:
    """Import the real hotel dialogues from the shared data folder as calls (idempotent)."""
    from innkeeper.core.db.database import Database
    from tuning.data.dialogues import import_dialogues, load_shared_dialogues

    settings = cli_settings()
    dialogues = (
        load_shared_dialogues(settings.shared_data, tuple(sources))
        if sources
        else load_shared_dialogues(settings.shared_data)
    )
    db = Database.from_settings(settings)
    db.migrate()
    added = import_dialogues(db, dialogues)
    console.print(f"{len(dialogues)} dialogues read from {settings.shared_data / 'dialogues'}; {added} new imported")


# ---------------------------------------------------------------------- tuning
def _tune_config(settings: Settings, **overrides: object):
    from tuning.pipeline import tune_config

    return tune_config(settings, **overrides)


def training_settings() -> Settings:
    """The settings of a tuning command; the process then yields the CPU to calls (`tune_yields_cpu`)."""
    settings = cli_settings()
    if settings.tune_yields_cpu:
        from innkeeper.core.priority import yield_cpu_to_calls

        yield_cpu_to_calls()
    return settings


@tune_app.command("align")
def tune_align(
    steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    eps: Annotated[float | None, typer.Option(help="Protected energy fraction.")] = None,
) -> None:
    """Make the guarded base: teach refusals and hotel policies with the projected method."""
    from innkeeper.models.resolve import guarded_dir
    from tuning.pipeline import align, outcome_summary

    settings = training_settings()
    outcome = align(settings, _tune_config(settings, steps=steps, eps=eps))
    console.print_json(json.dumps(outcome_summary(outcome), default=str))
    console.print(
        f"guarded base exported to {guarded_dir(settings)}; evaluate it with "
        f"`innkeeper tune eval --model {guarded_dir(settings)} --base <raw model dir>`"
    )


@tune_app.command("run")
def tune_run(
    method: Annotated[str | None, typer.Option(help="projected | full | lora | replay | projected_replay")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    eps: Annotated[float | None, typer.Option(help="Protected energy fraction.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    row_budget: Annotated[float | None, typer.Option(help="Fraction of output rows allowed to change.")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Micro-batches per step (× processes).")] = None,
) -> None:
    """Domain tuning on the logged and imported conversations, from the guarded base.

    Data-parallel under `accelerate launch --multi_gpu --num_processes N -m innkeeper.cli tune run` (gloo on CPUs,
    NCCL on GPUs): each rank runs its share of every step's micro-batches (`--grad-accum`, a multiple of N).
    """
    from innkeeper.core.db.database import Database
    from tuning import distributed
    from tuning.pipeline import outcome_summary, run_domain_tuning

    settings = training_settings()  # before the process group starts its threads: they inherit the priority
    distributed.start()
    db = Database.from_settings(settings)
    db.migrate()
    cfg = _tune_config(settings, steps=steps, eps=eps, lr=lr, row_budget=row_budget, grad_accum=grad_accum)
    outcome = run_domain_tuning(settings, method=method or settings.tune_method, cfg=cfg, db=db)
    if distributed.is_main():
        console.print_json(json.dumps(outcome_summary(outcome), default=str))


@tune_app.command("nightly")
def tune_nightly(
    force: Annotated[bool, typer.Option(help="Train even when no new calls came in since the last run.")] = False,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (default: nightly_steps or tune_steps).")] = None,
) -> None:
    """Learn from the logged calls: curate, train, evaluate, gate, register, promote (resumes a killed run)."""
    from tuning.nightly import run_nightly

    settings = training_settings()
    try:
        report = run_nightly(settings, force=force, console=console, overrides={"steps": steps} if steps else None)
    except Exception as err:  # the top of a cron job: say what failed; the next run resumes from that step
        logging.getLogger("innkeeper.nightly").exception("nightly run failed")
        console.print(f"[red]nightly run failed: {type(err).__name__}: {err}[/] (the next run resumes from this step)")
        raise typer.Exit(1) from err
    if report.gate:
        checks = Table("check", "value", "limit", "passed", title=f"gate for {report.version_id}")
        for name, check in report.gate["checks"].items():
            value, limit = check["value"], check["limit"]
            checks.add_row(name, _fmt(value), _fmt(limit), "[green]yes" if check["passed"] else "[red]no")
        console.print(checks)
    steps_table = Table("step", "seconds", title=f"nightly {report.run_id}: {report.status}")
    for step, seconds in report.seconds.items():
        steps_table.add_row(step, f"{seconds:.1f}")
    steps_table.add_row("peak memory", f"{report.peak_rss_mb:.0f} MB")
    console.print(steps_table)
    if report.status == "failed":
        raise typer.Exit(1)


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@tune_app.command("eval")
def tune_eval(
    model: Annotated[Path, typer.Option(help="A model directory or a tuning artifact directory.")],
    base: Annotated[Path | None, typer.Option(help="Compare against this model (default: its base).")] = None,
    size: Annotated[str | None, typer.Option(help="tiny | small | medium | large")] = None,
    booking_calls: Annotated[
        int, typer.Option(min=0, help="Scripted booking calls through the brain, worded by each model (0: none).")
    ] = 8,
) -> None:
    """Domain proficiency, retention, knowledge and safety of a model against its base."""
    from innkeeper.simulation.scripted_bookings import measure_into
    from tuning.pipeline import evaluate_model

    settings = training_settings()

    def booking_calls_measure(result: dict, chat_model: object) -> bool:
        return measure_into(result, chat_model, settings, booking_calls)

    _, _, table = evaluate_model(
        settings, model, base_path=base, size=size or settings.tune_eval_size, extra_measure=booking_calls_measure
    )
    print(table)
