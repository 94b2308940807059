#!/usr/bin/env bash
# Read throughput with and without a streaming replica: a throw-away PostgreSQL primary
# and a replica made with `pg_basebackup -R` (Debian binaries, run as the postgres user,
# on ports 55432/55433 in $DIR), then `cairn bench read` against `cairn serve` on the
# primary alone and on the primary plus the replica, interleaved, 3 rounds.
# Run as root from the repository root after `cargo build --release -p cairn --bins`.
set -eu
B="${CAIRN:-./target/release/cairn}"
DIR="${DIR:-/tmp/cairn-replica-bench}"
BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
as_pg() { runuser -u postgres -- "$@"; }
cleanup() {
  as_pg "$BIN/pg_ctl" -D "$DIR/replica" -m immediate stop >/dev/null 2>&1 || true
  as_pg "$BIN/pg_ctl" -D "$DIR/primary" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT
cleanup
mkdir -p "$DIR" && chown postgres "$DIR"
as_pg "$BIN/initdb" -D "$DIR/primary" -A trust -U postgres >/dev/null
cat >> "$DIR/primary/postgresql.conf" <<CONF
port = 55432
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
wal_level = replica
max_wal_senders = 4
CONF
echo "host replication all 127.0.0.1/32 trust" >> "$DIR/primary/pg_hba.conf"
as_pg "$BIN/pg_ctl" -D "$DIR/primary" -l "$DIR/primary.log" -w start >/dev/null
as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p 55432 -U postgres -D "$DIR/replica" -R
echo "port = 55433" >> "$DIR/replica/postgresql.conf"
as_pg "$BIN/pg_ctl" -D "$DIR/replica" -l "$DIR/replica.log" -w start >/dev/null

PRIMARY=postgres://postgres@127.0.0.1:55432/postgres
REPLICA=postgres://postgres@127.0.0.1:55433/postgres
run() { # label extra-serve-args...
  rm -rf "$DIR/data"
  $B serve --database-url "$PRIMARY" "${@:2}" --data-dir "$DIR/data" --listen 127.0.0.1:7302 --log-level warn >/dev/null 2>&1 &
  pid=$!
  sleep 2
  $B bench read --clients 64 --duration 10s --url http://127.0.0.1:7302 --json 2>/dev/null |
    python3 -c "import json,sys; d=json.load(sys.stdin); print('$1', round(d['requests_per_s']), round(d['events_per_s']), d['latency_ms']['p99'])"
  curl -s http://127.0.0.1:7302/metrics | grep '^cairn_store_reads_total' | sed "s/^/  $1 /"
  kill $pid; wait $pid 2>/dev/null || true
}
echo "label requests/s events/s p99_ms"
for round in 1 2 3; do
  run "primary-only"
  run "with-replica" --replica-url "$REPLICA"
done
