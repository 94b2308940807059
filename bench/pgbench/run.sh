#!/usr/bin/env bash
# The PostgreSQL ceiling for BENCHMARKS.md: pgbench inserting the rows Cairn stores,
# one per transaction and a hundred per transaction (from one INSERT ... SELECT, and
# from a hundred single-row INSERTs), at the client counts `cairn bench`
# uses, on the server Cairn is measured against (run both in the same sitting).
#
#   bench/pgbench/run.sh [CONNINFO]        default: postgres://postgres@127.0.0.1:5432/cairn_ceiling
#   CLIENTS="1 16 64" BATCH_CLIENTS=16 DURATION=10 bench/pgbench/run.sh   (empty: skip)
#
# Needs `pgbench` and `psql` (Debian: postgresql-client / postgresql-contrib).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
conninfo="${1:-postgres://postgres@127.0.0.1:5432/cairn_ceiling}"
clients="${CLIENTS-1 16 64}"
batch_clients="${BATCH_CLIENTS-16}"
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
duration="${DURATION:-10}"
threads="${THREADS:-2}"

database="${conninfo##*/}"
database="${database%%\?*}"
admin="${conninfo%/*}/postgres"
if ! psql "$conninfo" -qAtc 'SELECT 1' >/dev/null 2>&1; then
    psql "$admin" -qc "CREATE DATABASE \"$database\"" >/dev/null
fi

tps() { # script clients -> transactions per second, as pgbench reports it
    psql "$conninfo" -q -f "$here/schema.sql" >/dev/null
    pgbench -n -f "$here/$1" -c "$2" -j "$(( $2 < threads ? $2 : threads ))" \
        -T "$duration" "$conninfo" 2>/dev/null |
        awk -F'= ' '/^tps/ { split($2, v, " "); printf "%.0f", v[1] }'
}

printf '%-28s %8s %12s\n' scenario clients rows/s
for n in $clients; do
    printf '%-28s %8s %12s\n' "single-row transactions" "$n" "$(tps single.sql "$n")"
done
for n in $batch_clients; do
    t="$(tps batch100.sql "$n")"
    printf '%-28s %8s %12s\n' "100-row transactions" "$n" "$(( t * 100 ))"
    t="$(tps batch100-statements.sql "$n")"
    printf '%-28s %8s %12s\n' "100 INSERTs a transaction" "$n" "$(( t * 100 ))"
done
