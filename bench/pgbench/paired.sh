#!/usr/bin/env bash
# Run from the repository root after `cargo build --release -p cairn --bins`.
# "3× pgbench" as paired short runs: pgbench's single-row transactions and Cairn's
# single-event appends, both at CLIENTS (default 64), take turns in slices of SLICE
# seconds (default 5), PAIRS times (default 12), a CHECKPOINT before every slice. Each
# pair's ratio is Cairn's rate over the pgbench rate measured just before it, so the
# machine's speed, which drifts on this shared box by a factor of two within minutes,
# moves both sides of a ratio alike. Prints every pair, then the median ratio and its
# spread, and how many pairs were above the target (3, or 1 for batches; ratios.py).
# Both tables grow through the run (neither is recreated between slices).
# SCENARIO=batch pairs the batch target the same way instead: pgbench's 100-row
# `INSERT ... SELECT` transactions (batch100.sql) against Cairn's 100-event batches,
# both at CLIENTS (default 16 then), in rows and events a second.
#
#   CAIRN=./target/release/cairn PAIRS=12 SLICE=5 CLIENTS=64 bench/pgbench/paired.sh
#   SCENARIO=batch bench/pgbench/paired.sh
set -eu
B="${CAIRN:-./target/release/cairn}"
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
pairs="${PAIRS:-12}"
slice="${SLICE:-5}"
scenario="${SCENARIO:-single}"
case "$scenario" in
  single) script=single.sql rows=1 clients="${CLIENTS:-64}" cairn_args=(append) mark=3 ;;
  batch) script=batch100.sql rows=100 clients="${CLIENTS:-16}" cairn_args=(append-batch --batch-size 100) mark=1 ;;
  *) echo "SCENARIO is single or batch, not $scenario" >&2; exit 2 ;;
esac
here="$(cd "$(dirname "$0")" && pwd)"
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
data="$(mktemp -d)"
quiet() { psql "$PG/postgres" -qc CHECKPOINT >/dev/null; sleep 1; }
for db in cairn_ceiling cairn_paired; do
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
done
psql "$PG/cairn_ceiling" -q -f "$here/schema.sql" >/dev/null
"$B" serve --database-url "$PG/cairn_paired" --data-dir "$data" --listen 127.0.0.1:7300 \
  --log-level warn >/dev/null 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"
  psql "$PG/postgres" -qc 'DROP DATABASE IF EXISTS cairn_paired' >/dev/null 2>&1 || true
}
trap cleanup EXIT
sleep 2
ratios=()
printf '%-5s %14s %14s %7s\n' pair pgbench/s cairn/s ratio
for ((i = 1; i <= pairs; i++)); do
  quiet
  p=$(pgbench -n -f "$here/$script" -c "$clients" -j 2 -T "$slice" "$PG/cairn_ceiling" 2>/dev/null |
    awk -F'= ' -v rows="$rows" '/^tps/ { split($2, v, " "); printf "%.0f", v[1] * rows }')
  quiet
  c=$("$B" bench "${cairn_args[@]}" --clients "$clients" --duration "${slice}s" --url http://127.0.0.1:7300 --json 2>/dev/null |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["events_per_s"]))')
  r=$(python3 -c "print(f'{$c/$p:.2f}')")
  ratios+=("$r")
  printf '%-5s %14s %14s %7s\n' "$i" "$p" "$c" "$r"
done
python3 "$here/ratios.py" Cairn/pgbench "$mark" "${ratios[@]}"
