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

# The framed protocol: the tutorial's app server and client.
: >"$log"
"$bin/ringframe-server" --mode app 127.0.0.1 0 >"$log" 2>&1 &
srv=$!
for _ in $(seq 100); do grep -q "^Listening on" "$log" && break; sleep 0.05; done
port=$(sed -n "s/^Listening on ('127.0.0.1', \([0-9]*\))$/\1/p" "$log")
[ -n "$port" ] || { echo "demo: the app server did not start:"; cat "$log"; exit 1; }
echo
echo "== ringframe-server --mode app listening on 127.0.0.1:$port"
echo "== ringframe-client app 127.0.0.1 $port search morpheus"
"$bin/ringframe-client" app 127.0.0.1 "$port" search morpheus
echo "== ringframe-client app 127.0.0.1 $port search 🐶"
"$bin/ringframe-client" app 127.0.0.1 "$port" search 🐶
echo "== ringframe-client app 127.0.0.1 $port find morpheus   (a binary request)"
"$bin/ringframe-client" app 127.0.0.1 "$port" find morpheus
echo "== ringframe-client --quiet --repeat 20000 --pipeline 16 app 127.0.0.1 $port search ring"
"$bin/ringframe-client" --quiet --repeat 20000 --pipeline 16 app 127.0.0.1 "$port" search ring
kill -INT "$srv"
wait "$srv"
echo "== server log (last line)"
tail -n 1 "$log"
