#!/usr/bin/env bash
# What taking the head lock last would be worth, at the database alone: CONNS connections
# (default 2) each commit ROWS-row batches (default 32, the size of a Cairn batch at 64
# clients; 800 is one of 100-event batches at 16 clients) into the ceiling table, and
# every transaction updates one shared head row. "first": the head row is
# locked before the rows are written, as Cairn's writer does (a batch waits through the
# previous batch's writes and its WAL flush); "last": it is locked after them, so one
# batch's writes run while the other batch commits. Interleaved, a CHECKPOINT before
# every run; prints transactions/s and rows/s.
#
#   bench/pgbench/head-lock.sh [CONNINFO]   default: postgres://postgres@127.0.0.1:5432
#   ROUNDS=3 DURATION=6 ROWS=800 CONNS=2 bench/pgbench/head-lock.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
server="${1:-postgres://postgres@127.0.0.1:5432}"
rounds="${ROUNDS:-3}"
duration="${DURATION:-6}"
rows_per_tx="${ROWS:-32}"
conns="${CONNS:-2}"
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
work="$(mktemp -d)"
cleanup() {
  rm -rf "$work"
  psql -X "$server/postgres" -qc 'DROP DATABASE IF EXISTS cairn_head_lock' >/dev/null 2>&1 || true
}
trap cleanup EXIT
psql -X "$server/postgres" -qc 'DROP DATABASE IF EXISTS cairn_head_lock' -c 'CREATE DATABASE cairn_head_lock' >/dev/null
psql -X "$server/cairn_head_lock" -q -f "$here/schema.sql" >/dev/null
psql -X "$server/cairn_head_lock" -qc 'CREATE TABLE head (id int PRIMARY KEY, revision bigint NOT NULL); INSERT INTO head VALUES (1, 0)'
rows="INSERT INTO ceiling_events (id, stream_id, version, type, category, data, metadata, recorded_at)
SELECT ceiling_uuid_v7(), (random() * 1e12)::bigint, 1, 'Benchmarked', 'bench',
       '{\"n\":\"' || lpad(to_hex(g), 16, '0') || '\",\"pad\":\"' || repeat('x', 274) || '\"}',
       '{}', (extract(epoch from clock_timestamp()) * 1000000)::bigint
FROM generate_series(1, $rows_per_tx) AS g;"
head="UPDATE head SET revision = revision + 1 WHERE id = 1;"
printf 'BEGIN;\n%s\n%s\nCOMMIT;\n' "$head" "$rows" > "$work/first.sql"
printf 'BEGIN;\n%s\n%s\nCOMMIT;\n' "$rows" "$head" > "$work/last.sql"
printf '%-6s %-6s %8s %8s\n' round lock tx/s rows/s
for ((round = 1; round <= rounds; round++)); do
  for order in first last; do
    psql -X "$server/postgres" -qc CHECKPOINT
    tps=$(pgbench -n -f "$work/$order.sql" -c "$conns" -j "$conns" -T "$duration" "$server/cairn_head_lock" 2>/dev/null |
      awk -F'= ' '/^tps/ { split($2, v, " "); printf "%.0f", v[1] }')
    printf '%-6s %-6s %8s %8s\n' "$round" "$order" "$tps" "$((tps * rows_per_tx))"
  done
done
