#!/usr/bin/env bash
# HTTPS side by side: drawbridge and HAProxy 2.6 terminating TLS with the
# same certificate (tests/fixtures/tls/default.*, P-256), one worker thread
# each, in front of two demo upstreams, on loopback. Per workload and
# proxy, alternating, ROUNDS times: requests per CPU-second of the proxy
# process (user+system time from /proc), and the ratio drawbridge/HAProxy.
#
#   new     a full handshake and one request per connection (h2load --h1,
#           as many clients as requests)
#   h2      HTTP/2 over kept connections (h2load -c 64 -m 10)
#   https1  HTTPS/1.1 keep-alive (wrk -t1 -c64)
#
# Needs haproxy, h2load (nghttp2-client) and wrk; builds nothing (uses
# target/release/drawbridge). Stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
BIN=target/release/drawbridge
FIX=tests/fixtures/tls
W=$(mktemp -d /tmp/drawbridge-tls-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

cat "$FIX/default.pem" "$FIX/default.key" > "$W/haproxy.pem"
cat > "$W/haproxy.cfg" <<CFG
global
    nbthread 1
    maxconn 8000
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend https
    bind 127.0.0.1:28443 ssl crt $W/haproxy.pem alpn h2,http/1.1
    default_backend app
backend app
    balance roundrobin
    cookie SERVERID insert indirect nocache
    server app-01 127.0.0.1:28081 cookie s1
    server app-02 127.0.0.1:28082 cookie s2
CFG
cat > "$W/drawbridge.yaml" <<CFG
server: { threads: 1, upgrade_sock: $W/up.sock, pid_file: $W/pid }
admin: { listen: 127.0.0.1:29090 }
metrics: { listen: 127.0.0.1:29091 }
state_file: $W/state.json
limits: { max_connections: 15000 }
listeners:
  - name: websecure
    listen: 127.0.0.1:29443
    tls: { cert: $PWD/$FIX/default.pem, key: $PWD/$FIX/default.key }
sites:
  - { name: app, backend: app }
backends:
  - name: app
    sticky: { cookie: SERVERID }
    servers:
      - { name: app-01, addr: 127.0.0.1:28081 }
      - { name: app-02, addr: 127.0.0.1:28082 }
CFG
for i in 1 2; do
  "$BIN" demo-upstream --name "app-0$i" --listen "127.0.0.1:2808$i" >"$W/up$i.log" 2>&1 &
  pids+=($!)
done
haproxy -f "$W/haproxy.cfg" -db >"$W/haproxy.log" 2>&1 &
pids+=($!); hp=$!
RUST_LOG=warn "$BIN" run -c "$W/drawbridge.yaml" >"$W/drawbridge.log" 2>&1 &
pids+=($!); db=$!
sleep 2

cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)

# run WORKLOAD PORT: prints "requests cpu_seconds"
run() {
  local w=$1 port=$2 out n
  case $w in
    new) out=$(h2load --h1 -n 2000 -c 2000 -t 1 "https://127.0.0.1:$port/" 2>&1)
         n=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' <<<"$out") ;;
    h2) out=$(h2load -c 64 -m 10 -t 1 -D "$DURATION" "https://127.0.0.1:$port/" 2>&1)
        n=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' <<<"$out") ;;
    https1) out=$(wrk -t1 -c64 -d"${DURATION}s" "https://127.0.0.1:$port/" 2>&1)
            n=$(awk '/requests in/ {print $1}' <<<"$out") ;;
  esac
  echo "${n:-0}"
}

printf '%-8s %-11s %12s %12s %8s\n' workload proxy requests cpu_s req/cpu_s
declare -A sum
for w in new h2 https1; do
  for r in $(seq "$ROUNDS"); do
    for p in haproxy drawbridge; do
      if [ $p = haproxy ]; then pid=$hp; port=28443; else pid=$db; port=29443; fi
      c0=$(cpu "$pid"); n=$(run "$w" "$port"); c1=$(cpu "$pid")
      s=$(awk -v a="$c0" -v b="$c1" -v t="$tck" 'BEGIN {printf "%.2f", (b-a)/t}')
      rate=$(awk -v n="$n" -v s="$s" 'BEGIN {printf "%.0f", (s>0)?n/s:0}')
      printf '%-8s %-11s %12s %12s %8s\n' "$w" "$p" "$n" "$s" "$rate"
      sum[$w,$p]="${sum[$w,$p]:-} $rate"
    done
  done
done
echo
echo "median req/CPU-s, drawbridge/HAProxy:"
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
for w in new h2 https1; do
  h=$(median "${sum[$w,haproxy]}"); d=$(median "${sum[$w,drawbridge]}")
  awk -v w="$w" -v h="$h" -v d="$d" 'BEGIN {printf "  %-7s HAProxy %8.0f  drawbridge %8.0f  ratio %.2fx\n", w, h, d, (h>0)?d/h:0}'
done
echo "memory (RSS, KB): haproxy $(awk '/VmRSS/ {print $2}' /proc/$hp/status), drawbridge $(awk '/VmRSS/ {print $2}' /proc/$db/status)"
