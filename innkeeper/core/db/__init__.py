"""The hotel database: its tables (`schema`), Alembic migrations and the `Database` connection."""
