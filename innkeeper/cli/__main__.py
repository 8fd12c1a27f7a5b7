"""`python -m innkeeper.cli …`: the same command line as `innkeeper …` (the dashboard starts jobs this way)."""

from innkeeper.cli import app

app()
