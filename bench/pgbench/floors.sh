#!/usr/bin/env bash
# Run from the repository root after `cargo build --release -p cairn --bins`, with `wrk`
# installed (Debian package wrk). How far "3× pgbench" is on this machine, in one
# sitting: pgbench's single-row rate at 64 clients beside the cheapest each half of an
# append can be (PostgreSQL's INSERT … SELECT of 100 rows; an HTTP exchange that does
# nothing, GET /health/live) and Cairn's appends, each with the machine's busy CPU
# (jiffies from /proc/stat, 100 a second per core) and the load generator's CPU.
# 3 interleaved rounds on the system PostgreSQL, a CHECKPOINT before every run.
set -u
B="${CAIRN:-./target/release/cairn}"
PG=postgres://postgres@127.0.0.1:5432
busy() { awk '/^cpu / {print $2+$3+$4+$7+$8}' /proc/stat; }
quiet() { psql $PG/postgres -qc CHECKPOINT >/dev/null 2>&1; sleep 2; }
for r in 1 2 3; do
  quiet; a=$(busy)
  rate=$(CLIENTS=64 BATCH_CLIENTS= DURATION=10 bench/pgbench/run.sh $PG/cairn_ceiling | tail -1 | awk '{print $NF}')
  echo "r$r pgbench single-row 64: $rate/s, busy $(( $(busy) - a )) jiffies"
  quiet; psql $PG/cairn_ceiling -q -f bench/pgbench/schema.sql >/dev/null 2>&1; a=$(busy)
  out=$( { /usr/bin/time -f "cpu %U %S" pgbench -n -f bench/pgbench/batch100.sql -c 16 -j 2 -T 10 $PG/cairn_ceiling; } 2>&1 )
  echo "r$r pgbench INSERT…SELECT 100 rows, 16: $(echo "$out" | awk -F'= ' '/^tps/ {split($2,v," "); printf "%.0f", v[1]*100}') rows/s, busy $(( $(busy) - a )) jiffies, pgbench $(echo "$out" | awk '/^cpu / {print $2+$3}') s"
  psql $PG/postgres -qc 'DROP DATABASE IF EXISTS cairn_floors' -c 'CREATE DATABASE cairn_floors' >/dev/null 2>&1
  rm -rf "${TMPDIR:-/tmp}/cairn-floors"
  $B serve --database-url $PG/cairn_floors --data-dir "${TMPDIR:-/tmp}/cairn-floors" --listen 127.0.0.1:7300 --log-level warn >/dev/null 2>&1 &
  pid=$!; sleep 2
  quiet; a=$(busy)
  out=$( { /usr/bin/time -f "cpu %U %S" wrk -t2 -c64 -d10s http://127.0.0.1:7300/health/live; } 2>&1 )
  echo "r$r wrk GET /health/live 64: $(echo "$out" | awk '/Requests\/sec/ {print $2}')/s, busy $(( $(busy) - a )) jiffies, wrk $(echo "$out" | awk '/^cpu / {print $2+$3}') s"
  quiet; a=$(busy)
  out=$( { /usr/bin/time -f "cpu %U %S" wrk -t2 -c64 -d10s -s bench/wrk/append-streams.lua http://127.0.0.1:7300; } 2>&1 )
  echo "r$r wrk appends 64: $(echo "$out" | awk '/Requests\/sec/ {print $2}')/s, busy $(( $(busy) - a )) jiffies, wrk $(echo "$out" | awk '/^cpu / {print $2+$3}') s"
  kill $pid; wait $pid 2>/dev/null
done
