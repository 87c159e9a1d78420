#!/usr/bin/env bash
# Checks the OpenSSL spike end to end on loopback:
#   1. SNI selects the certificate: shop.test gets CN=shop.test, default.test
#      and an unknown name get CN=default.test (exact names only);
#   2. ALPN: curl --http2 gets HTTP/2, plain curl --http1.1 gets 1.1;
#   3. reload: shop.pem/key replaced by a new certificate; the next handshake
#      still gets the old one until SIGHUP, then the new one; a connection
#      opened before keeps working (a second request on it after the reload);
#   4. a broken file on reload keeps the previous set.
# Needs curl, openssl and python3; uses the spike's release binary and
# drawbridge's demo upstream (DRAWBRIDGE=...). Stops by itself; exit 0 on success.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
SPIKE=${SPIKE:-$here/target/release/tls-spike-openssl}
DRAWBRIDGE=${DRAWBRIDGE:-$root/target/release/drawbridge}
FIX=$root/tests/fixtures/tls
PORT=${PORT:-30443}
W=$(mktemp -d /tmp/tls-spike-check.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

fails=0
ok() { echo "ok    $*"; }
bad() { echo "FAIL  $*"; fails=$((fails + 1)); }
expect() { # expect WHAT GOT WANT
  if [ "$2" = "$3" ]; then ok "$1: $2"; else bad "$1: got '$2', want '$3'"; fi
}

mkdir "$W/certs"
cp "$FIX"/default.pem "$FIX"/default.key "$FIX"/shop.pem "$FIX"/shop.key "$W/certs/"
for i in 1 2; do
  "$DRAWBRIDGE" demo-upstream --name "app-0$i" --listen "127.0.0.1:3808$i" >"$W/up$i.log" 2>&1 &
  pids+=($!)
done
"$SPIKE" "127.0.0.1:$PORT" "$W/certs" 127.0.0.1:38081 127.0.0.1:38082 >"$W/spike.log" 2>&1 &
spike=$!
pids+=($spike)
for _ in $(seq 50); do
  curl -sk -o /dev/null "https://127.0.0.1:$PORT/" && break
  sleep 0.2
done

# subject NAME [curl args]: the subject of the certificate served for NAME
subject() {
  local name=$1; shift
  curl -skv "$@" --resolve "$name:$PORT:127.0.0.1" -o /dev/null "https://$name:$PORT/" 2>&1 |
    sed -n 's/^\*  *subject: *//p' | head -1
}
# status NAME: HTTP status and version of a request for NAME
version() {
  local name=$1; shift
  curl -sk "$@" --resolve "$name:$PORT:127.0.0.1" -o /dev/null -w '%{http_code} %{http_version}' "https://$name:$PORT/"
}

echo "== SNI"
expect "shop.test" "$(subject shop.test)" "CN=shop.test"
expect "default.test" "$(subject default.test)" "CN=default.test"
expect "unknown.test (default)" "$(subject unknown.test)" "CN=default.test"
expect "www.shop.test (wildcard, exact only: default)" "$(subject www.shop.test)" "CN=default.test"

echo "== ALPN"
expect "curl --http2" "$(version shop.test --http2)" "200 2"
expect "curl --http1.1" "$(version shop.test --http1.1)" "200 1.1"

echo "== reload"
# A connection opened before the reload: one request now, one after.
mkfifo "$W/go"
python3 - "$PORT" "$W/go" >"$W/client.out" 2>&1 <<'PY' &
import hashlib, http.client, socket, ssl, sys
port, go = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
# SNI and Host shop.test, the socket to loopback
conn = http.client.HTTPSConnection("shop.test", port, context=ctx, timeout=10)
conn._create_connection = lambda *a, **k: socket.create_connection(("127.0.0.1", port), 10)
conn.request("GET", "/")
r = conn.getresponse(); r.read()
sock = conn.sock
print("first", r.status, hashlib.sha256(sock.getpeercert(binary_form=True)).hexdigest(), flush=True)
open(go).read()
conn.request("GET", "/")
r = conn.getresponse(); r.read()
print("second", r.status, "same-connection" if conn.sock is sock else "new-connection", flush=True)
PY
client=$!
pids+=($client)
for _ in $(seq 50); do grep -q first "$W/client.out" 2>/dev/null && break; sleep 0.1; done
fp() { openssl x509 -in "$1" -outform der | sha256sum | cut -d' ' -f1; }
old_fp=$(fp "$W/certs/shop.pem")
expect "open connection, first request" "$(awk '/^first/ {print $2, ($3 == "'"$old_fp"'") ? "old-cert" : $3}' "$W/client.out")" "200 old-cert"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -keyout "$W/new.key" -out "$W/new.pem" -subj "/CN=shop-renewed.test" \
  -addext "subjectAltName=DNS:shop.test" 2>/dev/null
cp "$W/new.key" "$W/certs/shop.key"
cp "$W/new.pem" "$W/certs/shop.pem"
expect "files replaced, no reload yet" "$(subject shop.test)" "CN=shop.test"
kill -HUP "$spike"
for _ in $(seq 50); do grep -q reloaded "$W/spike.log" && break; sleep 0.1; done
expect "after SIGHUP, next handshake" "$(subject shop.test)" "CN=shop-renewed.test"
expect "after SIGHUP, default unchanged" "$(subject default.test)" "CN=default.test"
timeout 5 sh -c "echo >'$W/go'" || true
wait "$client" || true
expect "open connection, request after reload" "$(awk '/^second/ {print $2, $3}' "$W/client.out")" "200 same-connection"

echo "== broken file on reload"
echo "not a certificate" >"$W/certs/shop.pem"
kill -HUP "$spike"
for _ in $(seq 50); do grep -q "reload failed" "$W/spike.log" && break; sleep 0.1; done
expect "reload refused" "$(grep -c 'reload failed' "$W/spike.log")" "1"
expect "previous set kept" "$(subject shop.test)" "CN=shop-renewed.test"
kill -0 "$spike" 2>/dev/null && ok "spike still running" || bad "spike exited"

echo
if [ "$fails" -eq 0 ]; then echo "all checks passed"; else echo "$fails check(s) failed"; cat "$W/spike.log"; exit 1; fi
