#!/usr/bin/env bash
# Memory per idle client connection, plain HTTP/1.1 and HTTPS side by side:
# drawbridge and HAProxy 2.6 with the same certificate
# (tests/fixtures/tls/default.*), one worker thread each, in front of one
# demo upstream on loopback. For each proxy and protocol, IDLE_CONNS
# keep-alive clients send one request each and stay idle
# (bench/idle_conns.py); the figure is the growth of the proxy's RSS divided
# by the connections held.
#
# Needs haproxy and python3; builds nothing (uses target/release/drawbridge).
# Stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE_CONNS=${IDLE_CONNS:-2000}
BIN=${BIN:-target/release/drawbridge}
FIX=tests/fixtures/tls
W=$(mktemp -d /tmp/drawbridge-idle-tls.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

cat "$FIX/default.pem" "$FIX/default.key" > "$W/haproxy.pem"
cat > "$W/haproxy.cfg" <<CFG
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 2s
    timeout client 300s
    timeout server 30s
    timeout http-keep-alive 300s
    option http-keep-alive
frontend plain
    bind 127.0.0.1:18480
    default_backend app
frontend https
    bind 127.0.0.1:18443 ssl crt $W/haproxy.pem alpn h2,http/1.1
    default_backend app
backend app
    server app-01 127.0.0.1:18081
CFG
cat > "$W/drawbridge.yaml" <<CFG
server: { threads: 1, upgrade_sock: $W/up.sock, pid_file: $W/pid }
admin: { listen: 127.0.0.1:19090 }
metrics: { listen: 127.0.0.1:19091 }
state_file: $W/state.json
limits: { max_connections: 15000, keepalive_timeout: 300s }
listeners:
  - { name: web, listen: 127.0.0.1:19480 }
  - name: websecure
    listen: 127.0.0.1:19443
    tls: { cert: $PWD/$FIX/default.pem, key: $PWD/$FIX/default.key }
sites:
  - { name: app, backend: app }
backends:
  - name: app
    servers:
      - { name: app-01, addr: 127.0.0.1:18081 }
CFG
"$BIN" demo-upstream --name app-01 --listen 127.0.0.1:18081 >"$W/up.log" 2>&1 &
pids+=($!)

# start PROXY: a fresh process (freed memory of an earlier measurement
# would otherwise be reused and hide the growth); prints its pid.
start() {
  if [ "$1" = haproxy ]; then
    haproxy -f "$W/haproxy.cfg" -db >>"$W/haproxy.log" 2>&1 &
  else
    RUST_LOG=warn "$BIN" run -c "$W/drawbridge.yaml" >>"$W/drawbridge.log" 2>&1 &
  fi
  echo $!
}

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# held PID PORT [--tls]: prints "KB per connection, connections held"
held() {
  local pid=$1 port=$2; shift 2
  local before after n out=$W/idle.out idle
  # A few connections first, so that buffers made once are not counted.
  python3 bench/idle_conns.py --port "$port" --conns 10 --hold 1 "$@" >/dev/null 2>&1
  before=$(rss "$pid")
  : >"$out"
  python3 bench/idle_conns.py --port "$port" --conns "$IDLE_CONNS" --hold 60 "$@" >"$out" 2>"$W/idle.err" &
  idle=$!
  for _ in $(seq 600); do grep -q '^ready' "$out" && break; sleep 0.1; done
  n=$(sed -n 's/^ready opened=\([0-9]*\).*/\1/p' "$out")
  sleep 1
  after=$(rss "$pid")
  kill "$idle" 2>/dev/null || true
  wait "$idle" 2>/dev/null || true
  awk -v a="$after" -v b="$before" -v n="${n:-0}" 'BEGIN {printf "%.1f %d", (n>0)?(a-b)/n:0, n}'
}

printf '%-11s %-7s %12s %8s\n' proxy proto KB/conn held
for p in haproxy drawbridge; do
  if [ $p = haproxy ]; then plain=18480; tls=18443; else plain=19480; tls=19443; fi
  for proto in plain https; do
    pid=$(start "$p"); pids+=("$pid")
    sleep 2
    if [ $proto = plain ]; then
      read -r kb n <<<"$(held "$pid" "$plain")"
    else
      read -r kb n <<<"$(held "$pid" "$tls" --tls)"
    fi
    printf '%-11s %-7s %12s %8s\n' "$p" "$proto" "$kb" "$n"
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    sleep 1
  done
done
