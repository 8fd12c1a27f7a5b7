"""The `innkeeper` command line, one module per command group; this module assembles them into `app`.

It is the top layer: it may import everything, including the simulation harnesses behind `demo` and `call`.
"""

from __future__ import annotations

import typer

from innkeeper.cli.calls import call, chat, serve
from innkeeper.cli.database import bookings_app, db_app
from innkeeper.cli.demo import demo
from innkeeper.cli.evaluate import eval_app
from innkeeper.cli.models import models_app
from innkeeper.cli.review import review_app
from innkeeper.cli.tuning import data_app, tune_app
from innkeeper.cli.users import users_app

app = typer.Typer(help="Innkeeper: a self-hosted voice agent for hotels.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(bookings_app, name="bookings")
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(tune_app, name="tune")
app.add_typer(eval_app, name="eval")
app.add_typer(review_app, name="review")
app.add_typer(users_app, name="users")
for command in (chat, demo, serve, call):
    app.command()(command)
