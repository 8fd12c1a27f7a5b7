"""Shared test fixtures: the hotel profile and migrated, seeded hotel databases on SQLite and PostgreSQL.

- `hotel`: the profile from the configured hotel file (data/hotel.yaml by default).
- `sqlite_db`: a migrated, seeded SQLite file database in the test's tmp_path.
- `postgres_db`: the same on PostgreSQL. The server comes from INNKEEPER_TEST_POSTGRES_URL or, when that
  is unset, from the .innkeeper/postgres.env written by scripts/start_postgres.sh. Each test run works
  in a private schema that is dropped afterwards; every test starts with freshly seeded, otherwise
  empty tables. Without a server these tests are skipped (an unreachable server named by the env var
  is an error, since CI set it on purpose).
- `db`: runs the test once per backend; the PostgreSQL run is marked `postgres`.
- `tiny_model_dir`, `one_torch_thread`: a tiny random chat model for tests where wording is not the point.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy.engine import make_url

from agent.reply.llm import build_tiny_chat_model
from innkeeper.core.db.database import Database, DatabaseUnavailable
from innkeeper.core.db.schema import Base
from innkeeper.core.hotel import HotelProfile, load_hotel
from innkeeper.core.settings import PROJECT_ROOT, Settings
from innkeeper.simulation.server_process import serve_in_thread as serving  # noqa: F401 (tests import it here)

POSTGRES_URL_VAR = "INNKEEPER_TEST_POSTGRES_URL"


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread: the tiny model is dispatch-bound, and OpenMP spinning on a busy box costs 100x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny, randomly initialised chat model with a real tokenizer (agent.reply.llm.build_tiny_chat_model)."""
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "tiny-chat")


POSTGRES_ENV_FILE = PROJECT_ROOT / ".innkeeper" / "postgres.env"


@pytest.fixture(scope="session")
def caller_voice():
    """The simulated caller's voice: Piper without its random prosody, so a script sounds the same on every run
    (with it, a line now and then came out so that Whisper misheard it, and a call test failed by chance)."""
    from innkeeper.serve.speech import load_synthesizer

    return load_synthesizer(Settings(tts_threads=1), variation=False)


@pytest.fixture(scope="session")
def hotel() -> HotelProfile:
    return load_hotel(Settings().hotel_file)


@pytest.fixture
def sqlite_db(tmp_path, hotel: HotelProfile) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'innkeeper.db'}")
    db.migrate()
    db.seed(hotel)
    yield db
    db.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a migrated private schema for this test run (via the connection's search_path)."""
    server_url = _postgres_server_url()
    admin = Database(server_url)
    try:
        admin.ping()
    except DatabaseUnavailable as exc:
        if os.environ.get(POSTGRES_URL_VAR):
            raise
        pytest.skip(f"PostgreSQL from {POSTGRES_ENV_FILE} is not running ({exc}); run scripts/start_postgres.sh")
    schema = f"innkeeper_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection, connection.begin():
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = make_url(server_url).update_query_dict({"options": f"-csearch_path={schema}"})
    url_text = url.render_as_string(hide_password=False)
    try:
        migrated = Database(url_text)
        migrated.migrate()
        migrated.close()
        yield url_text
    finally:
        with admin.connect() as connection, connection.begin():
            connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


@pytest.fixture
def postgres_db(postgres_url: str, hotel: HotelProfile) -> Iterator[Database]:
    db = Database(postgres_url)
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    with db.connect() as connection, connection.begin():
        connection.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    db.seed(hotel)
    yield db
    db.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest) -> Database:
    return request.getfixturevalue(f"{request.param}_db")


def _postgres_server_url() -> str:
    url = os.environ.get(POSTGRES_URL_VAR) or _url_from_env_file()
    if not url:
        pytest.skip(
            f"{POSTGRES_URL_VAR} is unset and {POSTGRES_ENV_FILE} does not exist; "
            "run scripts/start_postgres.sh to test on PostgreSQL"
        )
    return url


def _url_from_env_file() -> str | None:
    if not POSTGRES_ENV_FILE.is_file():
        return None
    for line in POSTGRES_ENV_FILE.read_text().splitlines():
        name, _, value = line.partition("=")
        if name.strip() == POSTGRES_URL_VAR:
            return value.strip()
    return None


@pytest.fixture(scope="module")
def s3_server() -> Iterator[dict[str, Any]]:
    """A real S3-protocol HTTP server (moto) on a free port, with one bucket; yields the fsspec storage options."""
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    credentials = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}
    boto3.client("s3", endpoint_url=endpoint, **credentials).create_bucket(Bucket="innkeeper-models")
    yield {"endpoint_url": endpoint, "key": "test", "secret": "test", "client_kwargs": {"region_name": "us-east-1"}}
    server.stop()
