#!/usr/bin/env bash
# Run from the repository root after `cargo build --release -p cairn --bins --examples`.
# Tracing overhead in instructions, which do not depend on what else the machine is
# doing: the server runs under `valgrind --tool=callgrind` (Debian: valgrind), its
# counters are zeroed after a 5 s warm-up, then SECONDS (default 20) of `cairn bench`
# load; prints the server's user-space instructions (all threads) per event appended
# (append scenarios), or per request (the others, whose set-up appends are not counted).
#
#   bench/tracing-instructions.sh off|on [SCENARIO CLIENTS [bench options...]]
#   e.g. bench/tracing-instructions.sh on append-batch 16 --batch-size 100
set -eu
B="${CAIRN:-./target/release/cairn}"
mode="${1:?off or on}"; scenario="${2:-append}"; clients="${3:-64}"; shift $(( $# < 3 ? $# : 3 ))
seconds="${SECONDS_OF_LOAD:-20}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ "$mode" = on ]; then
  "${OTLP_SINK:-./target/release/examples/otlp_sink}" 127.0.0.1:4317 > "$work/sink.log" 2>&1 &
  sink=$!
  trap 'kill $sink 2>/dev/null; rm -rf "$work"' EXIT
  export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01
fi
valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
  $B serve --data-dir "$work/data" --listen 127.0.0.1:7302 --log-level warn > "$work/server.log" 2>&1 &
pid=$!
unset OTEL_EXPORTER_OTLP_ENDPOINT
for _ in $(seq 120); do curl -sf http://127.0.0.1:7302/health/live > /dev/null && break; sleep 1; done
head_position() { curl -s http://127.0.0.1:7302/health/ready | python3 -c "import json,sys; print(json.load(sys.stdin)['head_position'])"; }
$B bench "$scenario" --clients "$clients" --duration 5s --url http://127.0.0.1:7302 --json "$@" > /dev/null 2>&1
before="$(head_position)"
callgrind_control -z "$pid" > /dev/null 2>&1
requests="$($B bench "$scenario" --clients "$clients" --duration "${seconds}s" --url http://127.0.0.1:7302 --json "$@" 2>/dev/null |
  python3 -c "import json,sys; print(json.load(sys.stdin)['requests'])")"
after="$(head_position)"
callgrind_control -d "$pid" > /dev/null 2>&1
sleep 2
kill "$pid"; wait "$pid" 2>/dev/null || true
instructions="$(grep -h '^summary:\|^totals:' "$(ls -t "$work"/cg."$pid".* | head -1)" | head -1 | awk '{print $2}')"
events=$(( after - before ))
if [ "${scenario#append}" != "$scenario" ]; then
  echo "$mode $scenario $clients: $events events, $instructions instructions, $(( instructions / events )) per event"
else
  echo "$mode $scenario $clients: $requests requests, $instructions instructions, $(( instructions / requests )) per request"
fi
