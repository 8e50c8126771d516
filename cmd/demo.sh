#!/usr/bin/env bash
# The main job, as the README's quick start runs it: a ringframe server and
# clients talking to it over loopback, then a clean shutdown.
set -euo pipefail
bin=${1:?usage: demo.sh BUILD_DIR/cmd}
log=$(mktemp)
trap 'kill "$srv" 2>/dev/null || true; rm -f "$log"' EXIT

"$bin/ringframe-server" --mode echo 127.0.0.1 0 >"$log" 2>&1 &
srv=$!
for _ in $(seq 100); do grep -q "^Listening on" "$log" && break; sleep 0.05; done
port=$(sed -n "s/^Listening on ('127.0.0.1', \([0-9]*\))$/\1/p" "$log")
[ -n "$port" ] || { echo "demo: the server did not start:"; cat "$log"; exit 1; }
echo "== ringframe-server --mode echo listening on 127.0.0.1:$port"

echo "== ringframe-client echo 127.0.0.1 $port"
"$bin/ringframe-client" echo 127.0.0.1 "$port"
echo "== ringframe-client multiconn 127.0.0.1 $port 2"
"$bin/ringframe-client" multiconn 127.0.0.1 "$port" 2
echo "== ringframe-client --quiet multiconn 127.0.0.1 $port 200"
"$bin/ringframe-client" --quiet multiconn 127.0.0.1 "$port" 200

kill -INT "$srv"
wait "$srv"
echo "== server log (last lines)"
tail -n 3 "$log"
