#!/usr/bin/env bash
# Checks the running server against its own OpenAPI document with schemathesis: starts
# the built `cairn serve` on a free loopback port with a temporary data directory, an
# admin token and a small read side, runs a bounded schemathesis session against
# /openapi.json, stops the server, and fails on any finding.
#
# Usage: .ci/schemathesis.sh [extra schemathesis options]; CAIRN_BINARY names the binary
# (default: target/debug/cairn, built first). Paths among the options must be absolute.
# SCHEMATHESIS_MAX_EXAMPLES (default 100) bounds the cases per operation.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
target_dir=${CARGO_TARGET_DIR:-target}
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-100}

if [ -n "${CAIRN_BINARY:-}" ]; then
    binary=$CAIRN_BINARY
else
    # A no-op when `cargo test` has just built it.
    cargo build -q -p cairn
    binary=$target_dir/debug/cairn
fi

# schemathesis, pinned, in a virtual environment under the target directory.
mkdir -p "$target_dir"
venv=$(cd "$target_dir" && pwd)/schemathesis-venv
hooks=$(pwd)/.ci
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "version $SCHEMATHESIS_VERSION\$"; then
    if ! python3 -m venv "$venv" 2>/dev/null; then
        echo "installing python3-venv"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q python3-venv python3-pip
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -INT "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# A free loopback port (asked of the kernel, then released for the server).
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
# An admin token: its secret for schemathesis, its [[auth.tokens]] block for the server.
"$binary" token create --name schemathesis --scopes admin >"$work/token.txt"
token=$(sed -n 's/^token: //p' "$work/token.txt")
sed -n '/^\[\[auth.tokens\]\]/,$p' "$work/token.txt" >"$work/cairn.toml"
rm "$work/token.txt"
# A small read side, so that the projection and query routes have something to serve.
cat >>"$work/cairn.toml" <<'EOF'

[[projections]]
name = "orders"
filter = { category = "order" }
setup = ["CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT, total NUMERIC)"]
teardown = ["DROP TABLE IF EXISTS orders"]
[projections.on]
OrderPlaced = ["INSERT OR REPLACE INTO orders (id, customer, total) VALUES (:data.id, :data.customer, :data.total)"]

[[queries]]
name = "orders_by_customer"
sql = "SELECT id, total FROM orders WHERE customer = :customer ORDER BY id LIMIT :limit"
params = { customer = "text", limit = { type = "int", default = 50, max = 500 } }
EOF
echo "starting cairn on 127.0.0.1:$port"
"$binary" serve --config "$work/cairn.toml" --listen "127.0.0.1:$port" \
    --data-dir "$work/data" --log-format json --log-level warn 2>"$work/server.log" &
server_pid=$!
ready=false
for _ in $(seq 1 300); do
    if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
        "http://127.0.0.1:$port/health/ready" 2>/dev/null; then
        ready=true
        break
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
if [ "$ready" != true ]; then
    echo "cairn serve did not become ready:" >&2
    cat "$work/server.log" >&2
    exit 1
fi

started=$(date +%s)
status=0
# The hooks cap generated long-poll waits (see the file); the seed makes runs repeatable.
# One worker: hypothesis parses lambdas' source with `ast`, which is not thread-safe on
# Python 3.11 ("AST constructor recursion depth mismatch" with several workers).
# It runs in the temporary directory, where it leaves its caches.
(cd "$work" && PYTHONPATH="$hooks" SCHEMATHESIS_HOOKS=schemathesis_hooks \
    "$venv/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
    --exclude-path /v1/subscribe \
    --max-examples "$max_examples" \
    --seed 1 \
    --generation-database none \
    --workers 1 \
    --request-timeout 20 \
    --no-color "$@") || status=$?
echo "schemathesis took $(( $(date +%s) - started ))s"
if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "cairn serve died during the run:" >&2
    cat "$work/server.log" >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "server log (warnings and errors):" >&2
    tail -n 50 "$work/server.log" >&2
fi
exit "$status"
