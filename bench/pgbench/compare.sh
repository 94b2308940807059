#!/usr/bin/env bash
# Run from the repository root after `cargo build --release -p cairn --bins --examples`.
# Interleaved: pgbench ceiling vs cairn bench on the system PostgreSQL, 3 rounds,
# a CHECKPOINT before every measurement so that no run pays for the previous one's WAL.
# With `wrk` installed (Debian package wrk), each round also drives single appends at
# 64 connections from it, a load generator that leaves more of the CPU to the server.
set -u
B="${CAIRN:-./target/release/cairn}"
PG=postgres://postgres@127.0.0.1:5432
quiet() { psql $PG/postgres -qc CHECKPOINT >/dev/null 2>&1; sleep 2; }
cairn() { # scenario clients extra...
  quiet
  $B bench "$1" --clients "$2" --duration 10s --url http://127.0.0.1:7300 --json "${@:3}" 2>/dev/null |
    python3 -c "import json,sys; d=json.load(sys.stdin); print('cairn r$round $1', $2, round(d['events_per_s']), d['latency_ms']['p99'])"
}
for round in 1 2 3; do
  for n in 1 16 64; do quiet; CLIENTS=$n BATCH_CLIENTS= DURATION=10 bench/pgbench/run.sh $PG/cairn_ceiling | tail -1 | sed "s/^/pgbench r$round /"; done
  quiet; CLIENTS= BATCH_CLIENTS=16 DURATION=10 bench/pgbench/run.sh $PG/cairn_ceiling | tail -2 | sed "s/^/pgbench r$round /"
  psql $PG/postgres -qc 'DROP DATABASE IF EXISTS cairn_bench' -c 'CREATE DATABASE cairn_bench' 2>/dev/null
  rm -rf "${TMPDIR:-/tmp}/cairn-pg-bench"
  $B serve --database-url $PG/cairn_bench --data-dir "${TMPDIR:-/tmp}/cairn-pg-bench" --listen 127.0.0.1:7300 --log-level warn > /dev/null 2>&1 &
  pid=$!
  sleep 2
  for c in 1 16 64; do cairn append $c; done
  cairn append-batch 16 --batch-size 100
  if command -v wrk >/dev/null; then # the same appends from a lean C load generator
    quiet
    wrk -t2 -c64 -d10s --latency -s bench/wrk/append-streams.lua http://127.0.0.1:7300 |
      awk -v r="$round" '/Requests\/sec/ {rps=$2} / 99%/ {p99=$2} END {print "wrk r" r " append 64", int(rps), p99}'
  fi
  kill $pid; wait $pid 2>/dev/null
done
