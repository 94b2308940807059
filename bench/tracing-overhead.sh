#!/usr/bin/env bash
# Run from the repository root after `cargo build --release -p cairn --bins --examples`.
# Tracing overhead: the core scenarios against `cairn serve` (embedded store) with
# tracing off and with OTLP export at 1% sampling to a local sink, interleaved, 3 rounds.
set -u
B="${CAIRN:-./target/release/cairn}"
"${OTLP_SINK:-./target/release/examples/otlp_sink}" 127.0.0.1:4317 > "${TMPDIR:-/tmp}/otlp-sink.log" 2>&1 &
sink=$!
run() { # mode scenario clients extra
  rm -rf "${TMPDIR:-/tmp}/cairn-trace-bench"
  if [ "$1" = on ]; then
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01 \
      $B serve --data-dir "${TMPDIR:-/tmp}/cairn-trace-bench" --listen 127.0.0.1:7301 --log-level warn > /dev/null 2>&1 &
  else
    $B serve --data-dir "${TMPDIR:-/tmp}/cairn-trace-bench" --listen 127.0.0.1:7301 --log-level warn > /dev/null 2>&1 &
  fi
  pid=$!
  sleep 1.5
  $B bench "$2" --clients "$3" --duration 10s --url http://127.0.0.1:7301 --json "${@:4}" 2>/dev/null |
    python3 -c "import json,sys; d=json.load(sys.stdin); print('$1 $2', $3, round(d['events_per_s']), round(d['requests_per_s']), d['latency_ms']['p99'])"
  kill $pid; wait $pid 2>/dev/null
}
for round in 1 2 3; do
  for mode in off on; do
    run $mode append 64
    run $mode append-batch 16 --batch-size 100
    [ "${WITH_READ:-0}" = 1 ] && run $mode read 64
  done
done
kill $sink
tail -1 "${TMPDIR:-/tmp}/otlp-sink.log"
