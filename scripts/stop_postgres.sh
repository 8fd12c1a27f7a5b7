#!/usr/bin/env bash
# Stop the test PostgreSQL server started by scripts/start_postgres.sh (its data is kept for reuse).
set -euo pipefail
cd "$(dirname "$0")/.."

# Outside the checkout: the server runs as the postgres user, who cannot enter a private (0700) checkout.
PG_HOME="${INNKEEPER_PG_HOME:-/var/tmp/innkeeper-pg-$(printf %s "$PWD" | cksum | cut -d' ' -f1)}"
PGDATA="$PG_HOME/data"
ENV_FILE="$PWD/.innkeeper/postgres.env"

rm -f "$ENV_FILE"
[ -f "$PGDATA/postmaster.pid" ] || { echo "stop_postgres: not running" >&2; exit 0; }

PG_CTL="/usr/lib/postgresql/$(cat "$PGDATA/PG_VERSION")/bin/pg_ctl"
[ -x "$PG_CTL" ] || PG_CTL=$(command -v pg_ctl)
if [ "$(id -u)" -eq 0 ]; then
  (cd / && runuser -u postgres -- "$PG_CTL" -D "$PGDATA" -m fast -w -t 60 stop)
else
  "$PG_CTL" -D "$PGDATA" -m fast -w -t 60 stop
fi
