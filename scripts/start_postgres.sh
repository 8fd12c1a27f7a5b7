#!/usr/bin/env bash
# Start a private PostgreSQL server for the test suite and write .innkeeper/postgres.env.
#
# The cluster lives in /var/tmp/innkeeper-pg-<checkout hash> (data, socket, log), listens on 127.0.0.1 only, and is reused
# when it is already running. Installs the Debian `postgresql` package when no server binaries exist.
# Every wait is bounded, so CI fails instead of hanging. Stop it with scripts/stop_postgres.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE="$PWD/.innkeeper"
# Outside the checkout: the server runs as the postgres user, who cannot enter a private (0700) checkout.
PG_HOME="${INNKEEPER_PG_HOME:-/var/tmp/innkeeper-pg-$(printf %s "$PWD" | cksum | cut -d' ' -f1)}"
PGDATA="$PG_HOME/data"
SOCKET_DIR="$PG_HOME/run"
LOG_FILE="$PG_HOME/server.log"
ENV_FILE="$STATE/postgres.env"
FIRST_PORT="${INNKEEPER_PG_PORT:-54329}"
DB_NAME=innkeeper_test
DB_USER=innkeeper
DB_PASSWORD=innkeeper
START_TIMEOUT_S=60
APT_TIMEOUT_S=900

log() { echo "start_postgres: $*" >&2; }

find_bindir() {
  local dir
  for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV); do
    if [ -x "$dir/pg_ctl" ] && [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
  done
  if command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then
    dirname "$(command -v pg_ctl)"
    return 0
  fi
  return 1
}

install_postgres() {
  [ "$(id -u)" -eq 0 ] || { log "PostgreSQL is not installed and installing it needs root"; exit 1; }
  log "installing PostgreSQL with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  timeout "$APT_TIMEOUT_S" apt-get update -q
  timeout "$APT_TIMEOUT_S" apt-get install -y -q postgresql
}

# initdb and the server refuse to run as root, so root runs them as the `postgres` user.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

ensure_owner_account() {
  [ "$(id -u)" -eq 0 ] || return 0
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_port() {
  local port
  for port in $(seq "$FIRST_PORT" $((FIRST_PORT + 20))); do
    if ! port_in_use "$port"; then echo "$port"; return 0; fi
  done
  log "no free port in $FIRST_PORT..$((FIRST_PORT + 20))"
  return 1
}

init_cluster() {
  mkdir -p "$STATE" "$PG_HOME" "$SOCKET_DIR"
  [ "$(id -u)" -ne 0 ] || chown -R postgres: "$PG_HOME"
  [ -f "$PGDATA/PG_VERSION" ] && return 0
  log "creating a cluster in $PGDATA"
  # Local socket: trust (only this machine's users can reach the private socket dir); TCP: password.
  as_owner timeout "$START_TIMEOUT_S" "$BINDIR/initdb" -D "$PGDATA" -U postgres -E UTF8 --no-locale \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
}

server_running() { as_owner "$BINDIR/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

start_server() {
  local port=$1
  log "starting the server on 127.0.0.1:$port"
  # Throwaway test data: durability is not worth the fsyncs.
  as_owner "$BINDIR/pg_ctl" -D "$PGDATA" -l "$LOG_FILE" -w -t "$START_TIMEOUT_S" \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $SOCKET_DIR -c fsync=off -c full_page_writes=off" \
    start >/dev/null || { tail -n 20 "$LOG_FILE" >&2 || true; return 1; }
}

running_port() { sed -n 4p "$PGDATA/postmaster.pid"; }

psql_admin() {
  as_owner timeout 30 "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKET_DIR" -p "$PORT" -U postgres \
    -d postgres -tA "$@"
}

ensure_database() {
  if [ -z "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'")" ]; then
    psql_admin -c "CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASSWORD'"
  fi
  if [ -z "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" ]; then
    psql_admin -c "CREATE DATABASE $DB_NAME OWNER $DB_USER"
  fi
}

wait_ready() {
  local deadline=$((SECONDS + START_TIMEOUT_S))
  until "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PORT" -d "$DB_NAME"; do
    [ "$SECONDS" -lt "$deadline" ] || { log "server not ready after ${START_TIMEOUT_S}s"; return 1; }
    sleep 0.5
  done
}

BINDIR=$(find_bindir) || { install_postgres; BINDIR=$(find_bindir); }
ensure_owner_account
init_cluster
if server_running; then
  PORT=$(running_port)
  log "reusing the server already running on port $PORT"
else
  PORT=$(pick_port)
  start_server "$PORT"
fi
ensure_database
wait_ready
echo "INNKEEPER_TEST_POSTGRES_URL=postgresql+psycopg://$DB_USER:$DB_PASSWORD@127.0.0.1:$PORT/$DB_NAME" \
  >"$ENV_FILE"
log "ready; wrote $ENV_FILE"
