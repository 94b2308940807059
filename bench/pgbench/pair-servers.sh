#!/usr/bin/env bash
# Run from the repository root after `cargo build --release -p cairn --bins`.
# An A/B of two Cairn servers on a machine whose speed drifts: both run at once, each on
# its own fresh database on the system PostgreSQL, and `cairn bench` slices of SLICE
# seconds (default 5) alternate between them (A then B, then B then A), a CHECKPOINT
# before each, PAIRS times (default 12). Each pair's ratio B/A sees the same machine on
# both sides. Prints every pair, then the median ratio, its spread and the pairs B won
# (above 1; ratios.py).
# Both servers are driven by A's `cairn bench`, so only the servers differ.
#
#   A=./target/release/cairn B=/tmp/other-cairn B_ENV=CAIRN_WORKER_THREADS=1 \
#     SCENARIO=append CLIENTS=64 EXTRA="" bench/pgbench/pair-servers.sh
set -eu
A="${A:-./target/release/cairn}"
B="${B:-$A}"
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
pairs="${PAIRS:-12}"
slice="${SLICE:-5}"
clients="${CLIENTS:-64}"
scenario="${SCENARIO:-append}"
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
for db in cairn_pair_a cairn_pair_b; do
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
done
data_a="$(mktemp -d)"
data_b="$(mktemp -d)"
# A_ENV / B_ENV: variables for that side's server only, e.g. CAIRN_WORKER_THREADS=1.
env ${A_ENV:-} "$A" serve --database-url "$PG/cairn_pair_a" --data-dir "$data_a" \
  --listen 127.0.0.1:7311 --log-level warn >/dev/null 2>&1 &
pid_a=$!
env ${B_ENV:-} "$B" serve --database-url "$PG/cairn_pair_b" --data-dir "$data_b" \
  --listen 127.0.0.1:7312 --log-level warn >/dev/null 2>&1 &
pid_b=$!
cleanup() {
  kill "$pid_a" "$pid_b" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$data_a" "$data_b"
  psql "$PG/postgres" -qc 'DROP DATABASE IF EXISTS cairn_pair_a' \
    -c 'DROP DATABASE IF EXISTS cairn_pair_b' >/dev/null 2>&1 || true
}
trap cleanup EXIT
sleep 3
slice_of() { # port: events/s of one slice
  psql "$PG/postgres" -qc CHECKPOINT >/dev/null
  sleep 1
  # shellcheck disable=SC2086 # EXTRA holds several arguments
  "$A" bench "$scenario" --clients "$clients" --duration "${slice}s" \
    --url "http://127.0.0.1:$1" --json ${EXTRA:-} 2>/dev/null |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["events_per_s"]))'
}
ratios=()
printf '%-5s %12s %12s %7s\n' pair A B B/A
for ((i = 1; i <= pairs; i++)); do
  if ((i % 2)); then
    a=$(slice_of 7311)
    b=$(slice_of 7312)
  else
    b=$(slice_of 7312)
    a=$(slice_of 7311)
  fi
  r=$(python3 -c "print(f'{$b/$a:.3f}')")
  ratios+=("$r")
  printf '%-5s %12s %12s %7s\n' "$i" "$a" "$b" "$r"
done
python3 "$(dirname "$0")/ratios.py" B/A 1 "${ratios[@]}"
