#!/usr/bin/env bash
# Run from the repository root after `cargo build --release -p cairn --bins --examples`.
# Tracing overhead: the core scenarios against `cairn serve` (embedded store) with
# tracing off and with OTLP export at 1% sampling to a local sink, in ABBA order
# (off, on, on, off) for ROUNDS rounds (default 4). PIN=1 pins the server to CPU 0 and
# the load to CPU 1 (taskset), which halves the run-to-run spread on a 2-core machine.
# WITH_READ=1 adds the read scenario. For a figure the machine's noise cannot touch,
# see bench/tracing-instructions.sh.
set -u
B="${CAIRN:-./target/release/cairn}"
rounds="${ROUNDS:-4}"
server_pin=() client_pin=()
if [ "${PIN:-0}" = 1 ]; then server_pin=(taskset -c 0); client_pin=(taskset -c 1); fi
"${OTLP_SINK:-./target/release/examples/otlp_sink}" 127.0.0.1:4317 > "${TMPDIR:-/tmp}/otlp-sink.log" 2>&1 &
sink=$!
run() { # mode scenario clients extra
  rm -rf "${TMPDIR:-/tmp}/cairn-trace-bench"
  if [ "$1" = on ]; then
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01 \
      "${server_pin[@]}" $B serve --data-dir "${TMPDIR:-/tmp}/cairn-trace-bench" --listen 127.0.0.1:7301 --log-level warn > /dev/null 2>&1 &
  else
    "${server_pin[@]}" $B serve --data-dir "${TMPDIR:-/tmp}/cairn-trace-bench" --listen 127.0.0.1:7301 --log-level warn > /dev/null 2>&1 &
  fi
  pid=$!
  sleep 1.5
  "${client_pin[@]}" $B bench "$2" --clients "$3" --duration 10s --url http://127.0.0.1:7301 --json "${@:4}" 2>/dev/null |
    python3 -c "import json,sys; d=json.load(sys.stdin); print('$1 $2', $3, round(d['events_per_s']), round(d['requests_per_s']), d['latency_ms']['p99'])"
  kill $pid; wait $pid 2>/dev/null
}
for round in $(seq "$rounds"); do
  for mode in off on on off; do
    run $mode append 64
    run $mode append-batch 16 --batch-size 100
    [ "${WITH_READ:-0}" = 1 ] && run $mode read 64
  done
done
kill $sink
tail -1 "${TMPDIR:-/tmp}/otlp-sink.log"
