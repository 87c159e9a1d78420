#!/usr/bin/env bash
# Build drawbridge with profile-guided optimisation (PGO):
#
#   1. build an instrumented drawbridge (production profile);
#   2. run it on loopback in front of two `drawbridge demo-upstream` apps
#      (deploy/pgo/train.yaml) and drive traffic through it with wrk: new
#      clients with browser-like headers, API clients with few headers,
#      sticky clients with other cookies, form posts, maintenance answers,
#      bypass-cookie holders;
#   3. merge the profile and build the production binary with it.
#
#   deploy/pgo/build.sh            # -> target/pgo/production/drawbridge
#   deploy/pgo/build.sh --bare     # also bench's bare_pingora, trained with the same
#                                  # loads on its proxy and 503 modes, built with its
#                                  # own profile -> target/pgo-bare/production/examples/
#
# Environment: TRAIN_SECONDS (3) per training load; NO_INSTALL=1 never installs
# wrk (apt-get) or llvm-tools (rustup); CARGO_FLAGS extra cargo flags (e.g. --locked).
# Everything it starts is stopped when it exits, also on failure.
set -euo pipefail

PGO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$PGO_DIR/../.." && pwd)
TRAIN_SECONDS=${TRAIN_SECONDS:-3}
NO_INSTALL=${NO_INSTALL:-0}
read -r -a CARGO_FLAGS <<<"${CARGO_FLAGS:-}"
WITH_BARE=0
case ${1:-} in
    --bare) WITH_BARE=1 ;;
    "") ;;
    *) echo "usage: deploy/pgo/build.sh [--bare]" >&2; exit 2 ;;
esac

GEN_DIR=$REPO_DIR/target/pgo-gen
USE_DIR=$REPO_DIR/target/pgo
BARE_DIR=$REPO_DIR/target/pgo-bare
DATA_DIR=$REPO_DIR/target/pgo-data
HOST=127.0.0.1
PROXY=$HOST:38080
ADMIN=$HOST:38090
UP1=$HOST:38081
UP2=$HOST:38082
BARE=$HOST:38100
BARE_MAINT=$HOST:38101
STATE=/tmp/drawbridge-pgo-state.json

log() { echo "pgo: $*" >&2; }
die() { log "error: $*"; exit 1; }

PIDS=()
stop() {  # PID...: SIGINT (the profile is written on exit), SIGKILL after 15 s
    local p i
    kill -INT "$@" 2>/dev/null || true
    for p in "$@"; do
        for i in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}
cleanup() {
    stop "${PIDS[@]}"
    rm -f "$STATE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- tools ----------------------------------------------------------------------------
host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
if [[ ! -x $profdata ]]; then
    [[ $NO_INSTALL = 1 ]] && die "llvm-profdata missing: rustup component add llvm-tools (NO_INSTALL=1)"
    log "adding rustup component llvm-tools (for llvm-profdata)"
    rustup component add llvm-tools >&2 || die "rustup component add llvm-tools failed"
    [[ -x $profdata ]] || die "llvm-profdata not found at $profdata"
fi
for t in wrk curl; do
    command -v "$t" >/dev/null 2>&1 && continue
    [[ $NO_INSTALL = 1 ]] && die "$t missing (NO_INSTALL=1)"
    command -v apt-get >/dev/null 2>&1 || die "$t missing; install it"
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo -n)
    log "installing $t (apt-get)"
    "${sudo[@]}" apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$t" >&2
done

targets=(--bin drawbridge)
[[ $WITH_BARE = 1 ]] && targets+=(--example bare_pingora)

# ---- 1. instrumented build --------------------------------------------------------------
cd "$REPO_DIR"
log "building instrumented binaries (${targets[*]})"
CARGO_TARGET_DIR=$GEN_DIR RUSTFLAGS="-Cprofile-generate=$DATA_DIR/build" \
    cargo build --profile production "${CARGO_FLAGS[@]}" "${targets[@]}" >&2
rm -rf "$DATA_DIR"  # drops the build scripts' own profiles
mkdir -p "$DATA_DIR/scratch"

# ---- 2. training ------------------------------------------------------------------------
GEN=$GEN_DIR/production
for port in 38080 38081 38082 38090 38091 38100 38101; do
    if (exec 3<>"/dev/tcp/$HOST/$port") 2>/dev/null; then
        die "port $HOST:$port is in use; the training needs 38080-38082, 38090-38091, 38100-38101"
    fi
done

wait_code() {  # URL CODE: wait up to 20 s for CODE
    local i
    for i in $(seq 100); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true) == "$2" ]] && return 0
        sleep 0.2
    done
    die "$1 did not answer $2"
}
load() {  # wrk arguments...
    wrk -t1 -c32 -d"${TRAIN_SECONDS}s" "$@" | awk '/Requests\/sec/ {print "pgo:   " $0}' >&2
}
BROWSER=(-H "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0"
    -H "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    -H "Accept-Language: en-US,en;q=0.5" -H "Accept-Encoding: gzip, deflate"
    -H "Connection: keep-alive")

# The loads both proxies are trained on; $sticky is drawbridge's cookie for app-01.
proxied_loads() {  # BASE_URL
    load "${BROWSER[@]}" "$1/"
    load "${BROWSER[@]}" "$1/account/orders?page=2&sort=date"
    load "$1/api/items"  # API clients and probes: few headers
    load "${BROWSER[@]}" -H "Cookie: $sticky" "$1/"
    load -H "Cookie: $sticky" "$1/api/items"
    load "${BROWSER[@]}" -H "Cookie: theme=dark; $sticky; _session=3f2a9c" "$1/cart"
    load -s "$PGO_DIR/post.lua" -H "Cookie: $sticky" "$1/comments"
}
maintenance_loads() {  # BASE_URL
    load "${BROWSER[@]}" "$1/"
    load -H "Accept: application/json" "$1/api/items"
}

# The upstream apps are the same instrumented binary; their profile is dropped.
for up in "app-01 $UP1" "app-02 $UP2"; do
    set -- $up
    LLVM_PROFILE_FILE=$DATA_DIR/scratch/up-%p.profraw RUST_LOG=warn \
        "$GEN/drawbridge" demo-upstream --name "$1" --listen "$2" --exit-with $$ \
        >"$DATA_DIR/scratch/$1.log" 2>&1 &
    PIDS+=($!)
done
wait_code "http://$UP1/healthz" 200
wait_code "http://$UP2/healthz" 200

rm -f "$STATE"
LLVM_PROFILE_FILE=$DATA_DIR/drawbridge-%p.profraw RUST_LOG=warn \
    "$GEN/drawbridge" run -c "$PGO_DIR/train.yaml" >"$DATA_DIR/scratch/drawbridge.log" 2>&1 &
DB_PID=$!
PIDS+=("$DB_PID")
wait_code "http://$PROXY/" 200
log "training drawbridge (${TRAIN_SECONDS}s per load)"
sticky=$(curl -s -o /dev/null -D - "http://$PROXY/" | sed -n 's/^[Ss]et-[Cc]ookie: \(SERVERID=[^;]*\).*/\1/p')
[[ -n $sticky ]] || die "no sticky cookie from the trained proxy"
proxied_loads "http://$PROXY"
curl -sf -o /dev/null -X PUT -H 'Content-Type: application/json' -d '{"enabled":true}' \
    "http://$ADMIN/api/v1/sites/app/maintenance" || die "cannot switch maintenance on"
wait_code "http://$PROXY/" 503
maintenance_loads "http://$PROXY"
bypass=$(curl -sf -X POST -H 'Content-Type: application/json' -d '{}' \
    "http://$ADMIN/api/v1/sites/app/bypass-tokens" | sed -n 's/.*"cookie": *"\([^"]*\)".*/\1/p')
[[ -n $bypass ]] || die "no bypass token from the admin API"
load "${BROWSER[@]}" -H "Cookie: $bypass; $sticky" "http://$PROXY/"
curl -sf -o /dev/null -X PUT -H 'Content-Type: application/json' -d '{"enabled":false}' \
    "http://$ADMIN/api/v1/sites/app/maintenance" || die "cannot switch maintenance off"
curl -sf -o /dev/null "http://$ADMIN/api/v1/status" || true
stop "$DB_PID"

if [[ $WITH_BARE = 1 ]]; then
    log "training bare_pingora"
    start_bare() {  # NAME LISTEN ARGS...: an instrumented bare_pingora; its pid in $!
        local name=$1 listen=$2
        shift 2
        LLVM_PROFILE_FILE=$DATA_DIR/bare-%p.profraw RUST_LOG=warn \
            "$GEN/examples/bare_pingora" --listen "$listen" "$@" \
            --pid-file "/tmp/drawbridge-pgo-$name.pid" --upgrade-sock "/tmp/drawbridge-pgo-$name.sock" \
            >"$DATA_DIR/scratch/$name.log" 2>&1 &
    }
    start_bare bare "$BARE" --upstream "$UP1" --upstream "$UP2"
    B1=$!
    start_bare bare-maint "$BARE_MAINT" --maintenance --upstream "$UP1"
    B2=$!
    PIDS+=("$B1" "$B2")
    wait_code "http://$BARE/" 200
    wait_code "http://$BARE_MAINT/" 503
    proxied_loads "http://$BARE"
    maintenance_loads "http://$BARE_MAINT"
    stop "$B1" "$B2"
fi

# ---- 3. merge and optimised builds ------------------------------------------------------
# Each binary is built with the profile of its own runs only. The optimised
# builds name the same cargo targets as the instrumented one: building an
# example turns on dev-dependency features, which changes the symbol names
# of shared crates, and a profile only applies to functions of the same name.
optimised() {  # NAME TARGET_DIR CARGO_TARGET_ARGS...
    local name=$1 dir=$2 raw
    shift 2
    shopt -s nullglob
    raw=("$DATA_DIR/$name"-*.profraw)
    shopt -u nullglob
    [[ ${#raw[@]} -gt 0 ]] || die "the training of $name left no profile"
    "$profdata" merge -o "$DATA_DIR/$name.profdata" "${raw[@]}"
    log "building the optimised $name with $DATA_DIR/$name.profdata"
    CARGO_TARGET_DIR=$dir RUSTFLAGS="-Cprofile-use=$DATA_DIR/$name.profdata" \
        cargo build --profile production "${CARGO_FLAGS[@]}" "$@" >&2
}
optimised drawbridge "$USE_DIR" "${targets[@]}"
log "done: $USE_DIR/production/drawbridge"
if [[ $WITH_BARE = 1 ]]; then
    optimised bare "$BARE_DIR" "${targets[@]}"
    log "done: $BARE_DIR/production/examples/bare_pingora"
fi
exit 0
