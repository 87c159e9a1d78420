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
# PROXIES picks and orders the proxies (default haproxy,drawbridge; the
# first is the reference of the ratios); openssl-spike is the OpenSSL build
# of bench/tls-spike-openssl (same certificate, chosen in its certificate
# callback), for choosing the TLS backend (bench/README.md).
#
#   PROXIES=haproxy,drawbridge,openssl-spike ROUNDS=3 DURATION=4 bench/tls.sh
#
# Needs haproxy, h2load (nghttp2-client) and wrk; builds nothing (uses
# target/release/drawbridge, or BIN=...; the spike's release binary, or
# SPIKE=...). Stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
BIN=${BIN:-target/release/drawbridge}
SPIKE=${SPIKE:-bench/tls-spike-openssl/target/release/tls-spike-openssl}
IFS=, read -r -a proxies <<<"${PROXIES:-haproxy,drawbridge}"
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
declare -A pid port
for p in "${proxies[@]}"; do
  case $p in
    haproxy) haproxy -f "$W/haproxy.cfg" -db >"$W/haproxy.log" 2>&1 &
             port[$p]=28443 ;;
    drawbridge) RUST_LOG=warn "$BIN" run -c "$W/drawbridge.yaml" >"$W/drawbridge.log" 2>&1 &
                port[$p]=29443 ;;
    openssl-spike) [ -x "$SPIKE" ] || { echo "no $SPIKE (cargo build --release in bench/tls-spike-openssl)" >&2; exit 2; }
                   mkdir -p "$W/certs"
                   cp "$FIX/default.pem" "$FIX/default.key" "$W/certs/"
                   "$SPIKE" 127.0.0.1:30443 "$W/certs" 127.0.0.1:28081 127.0.0.1:28082 >"$W/spike.log" 2>&1 &
                   port[$p]=30443 ;;
    *) echo "unknown proxy $p (haproxy, drawbridge, openssl-spike)" >&2; exit 2 ;;
  esac
  pids+=($!); pid[$p]=$!
done
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

wp=11; for p in "${proxies[@]}"; do [ ${#p} -gt $wp ] && wp=${#p}; done
printf "%-8s %-${wp}s %12s %12s %8s\n" workload proxy requests cpu_s req/cpu_s
declare -A sum
for w in new h2 https1; do
  for r in $(seq "$ROUNDS"); do
    for p in "${proxies[@]}"; do
      c0=$(cpu "${pid[$p]}"); n=$(run "$w" "${port[$p]}"); c1=$(cpu "${pid[$p]}")
      s=$(awk -v a="$c0" -v b="$c1" -v t="$tck" 'BEGIN {printf "%.2f", (b-a)/t}')
      rate=$(awk -v n="$n" -v s="$s" 'BEGIN {printf "%.0f", (s>0)?n/s:0}')
      printf "%-8s %-${wp}s %12s %12s %8s\n" "$w" "$p" "$n" "$s" "$rate"
      sum[$w,$p]="${sum[$w,$p]:-} $rate"
    done
  done
done
echo
label() { if [ "$1" = haproxy ]; then echo HAProxy; else echo "$1"; fi; }
ref=${proxies[0]}
others=("${proxies[@]:1}")
if [ ${#others[@]} -eq 1 ]; then
  echo "median req/CPU-s, ${others[0]}/$(label "$ref"):"
else
  echo "median req/CPU-s, ratios to $(label "$ref"):"
fi
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
for w in new h2 https1; do
  h=$(median "${sum[$w,$ref]}")
  line=$(awk -v w="$w" -v l="$(label "$ref")" -v h="$h" 'BEGIN {printf "  %-7s %s %8.0f", w, l, h}')
  for p in "${others[@]}"; do
    d=$(median "${sum[$w,$p]}")
    line+=$(awk -v l="$p" -v h="$h" -v d="$d" 'BEGIN {printf "  %s %8.0f  ratio %.2fx", l, d, (h>0)?d/h:0}')
  done
  echo "$line"
done
mem=""
for p in "${proxies[@]}"; do mem+="${mem:+, }$p $(awk '/VmRSS/ {print $2}' "/proc/${pid[$p]}/status")"; done
echo "memory (RSS, KB): $mem"
