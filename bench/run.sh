#!/usr/bin/env bash
# drawbridge benchmark: drawbridge vs HAProxy vs a bare Pingora proxy, on the
# same two nginx upstreams, on loopback. See bench/README.md.
#
#   bench/run.sh                          # full run (~5 minutes)
#   ROUNDS=1 DURATION=2s bench/run.sh     # quick smoke run
#   bench/run.sh --only haproxy,bare      # leave drawbridge out (or PROXIES=...)
#
# Options (each also an environment variable):
#   --only LIST        PROXIES     proxies to measure: haproxy,drawbridge,bare
#   --workloads LIST   WORKLOADS   new,sticky,maint,idle
#   --rounds N         ROUNDS      alternating rounds per workload (3)
#   --duration D       DURATION    wrk duration per measurement, Ns or Nm (5s)
#   --quick                        ROUNDS=1 DURATION=2s IDLE_CONNS=1000
#   --together         TOGETHER=1  measure the proxies of a round at the same time, each
#                                    with its own wrk, instead of one after the other: a
#                                    shared machine's changing speed then hits them alike
#                                    (only the req/CPU-s ratios mean something then)
#   --instructions     INSTRUCTIONS=1  instead of timing, count user-space instructions
#                                    per request under valgrind (callgrind), with its
#                                    simulated L1 cache misses and mispredicted branches;
#                                    results in bench/results/instructions.json (~4 minutes)
#                      CONNECTIONS wrk connections (64)
#                      IDLE_CONNS  idle keep-alive connections held (5000)
#                      NO_INSTALL=1  never apt-get install; fail if a tool is missing
#                      BUILD_PROFILE cargo profile both Pingora proxies are built with
#                                    (production: fat LTO, what the container ships)
#                      PGO           1 (default, production profile only): build both
#                                    with profile-guided optimisation (deploy/pgo/build.sh
#                                    --bare, as the container); 0: the plain profile
#                      NO_BUILD=1    use the binaries already built (target/pgo and
#                                    target/pgo-bare with PGO, else target/$BUILD_PROFILE)
#                      MAX_SECONDS   hard limit for the whole run, build included (2700)
#                      QUIET_WAIT    before each measurement, wait up to this many
#                                    seconds for the machine to be idle (0)
#                      QUIET_PCT     "idle" means at most this % CPU busy (15)
#                      BARE_FLAGS    extra flags for bare_pingora, e.g. --work-stealing
#
# Output: one table on stdout; bench/results/latest.json (instructions.json
# with --instructions) and a timestamped copy; raw wrk outputs and process logs in a /tmp/drawbridge-bench.* folder.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-64}
IDLE_CONNS=${IDLE_CONNS:-5000}
PROXIES=${PROXIES:-haproxy,drawbridge,bare}
WORKLOADS=${WORKLOADS:-new,sticky,maint,idle}
MAX_SECONDS=${MAX_SECONDS:-2700}
QUIET_WAIT=${QUIET_WAIT:-0}
QUIET_PCT=${QUIET_PCT:-15}
BARE_FLAGS=${BARE_FLAGS:-}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1800}
NO_INSTALL=${NO_INSTALL:-0}
NO_BUILD=${NO_BUILD:-0}
BUILD_PROFILE=${BUILD_PROFILE:-production}
PGO=${PGO:-1}
[[ $BUILD_PROFILE == production ]] || PGO=0
INSTRUCTIONS=${INSTRUCTIONS:-0}
TOGETHER=${TOGETHER:-0}

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --only) PROXIES=$2; shift 2 ;;
        --only=*) PROXIES=${1#*=}; shift ;;
        --workloads) WORKLOADS=$2; shift 2 ;;
        --workloads=*) WORKLOADS=${1#*=}; shift ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --quick) ROUNDS=1; DURATION=2s; IDLE_CONNS=1000; shift ;;
        --instructions) INSTRUCTIONS=1; shift ;;
        --together) TOGETHER=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench/run.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

# ---- fixed layout (matches bench/haproxy.cfg, bench/drawbridge.yaml) ----------
HOST=127.0.0.1
PORT_HAPROXY=18080
PORT_APP1=18081
PORT_APP2=18082
PORT_DRAWBRIDGE=18090
PORT_BARE=18100
PORT_BARE_MAINT=18101
PORT_ADMIN=19090
PORT_METRICS=19091
HAPROXY_SOCK=/tmp/anchor-haproxy.sock
HAPROXY_PAGE=/tmp/anchor-maintenance.html
DRAWBRIDGE_STATE=/tmp/bench-drawbridge-state.json
DRAWBRIDGE_CONF=$BENCH_DIR/drawbridge.yaml
if [[ $PGO = 1 ]]; then
    DRAWBRIDGE_BIN=${DRAWBRIDGE_BIN:-$REPO_DIR/target/pgo/production/drawbridge}
    BARE_BIN=$REPO_DIR/target/pgo-bare/production/examples/bare_pingora
else
    DRAWBRIDGE_BIN=${DRAWBRIDGE_BIN:-$REPO_DIR/target/$BUILD_PROFILE/drawbridge}
    BARE_BIN=$REPO_DIR/target/$BUILD_PROFILE/examples/bare_pingora
fi
ALL_PROXIES=(haproxy drawbridge bare)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Instruction counts: every proxy runs under callgrind; one measurement per
# workload and proxy (instruction counts do not drift like time does); idle
# memory means nothing under valgrind.
UNDER=()
START_WAIT=10
if [[ $INSTRUCTIONS = 1 ]]; then
    ROUNDS=1
    WORKLOADS=$(tr ',' '\n' <<<"$WORKLOADS" | grep -vx idle | paste -sd, -)
    START_WAIT=60
fi

# ---- validate settings ------------------------------------------------------------
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer"
[[ $IDLE_CONNS =~ ^[1-9][0-9]*$ ]] || die "IDLE_CONNS must be a positive integer"
[[ $QUIET_WAIT =~ ^[0-9]+$ ]] || die "QUIET_WAIT must be a number of seconds"
[[ $QUIET_PCT =~ ^[0-9]+$ ]] || die "QUIET_PCT must be a percentage"
case $DURATION in
    *[0-9]s) DUR_S=${DURATION%s} ;;
    *[0-9]m) DUR_S=$(( ${DURATION%m} * 60 )) ;;
    *) DUR_S=$DURATION; DURATION=${DURATION}s ;;
esac
[[ $DUR_S =~ ^[1-9][0-9]*$ ]] || die "DURATION must look like 5s or 1m, got '$DURATION'"

declare -A WANT=()
IFS=, read -r -a _req <<<"$PROXIES"
for p in "${_req[@]}"; do
    case $p in
        haproxy|drawbridge|bare) WANT[$p]=1 ;;
        "") ;;
        *) die "unknown proxy '$p' in PROXIES/--only (haproxy, drawbridge, bare)" ;;
    esac
done
[[ ${#WANT[@]} -gt 0 ]] || die "no proxy selected"
declare -A WL=()
IFS=, read -r -a _req <<<"$WORKLOADS"
for w in "${_req[@]}"; do
    case $w in
        new|sticky|maint|idle) WL[$w]=1 ;;
        "") ;;
        *) die "unknown workload '$w' (new, sticky, maint, idle)" ;;
    esac
done
wants() { [[ -n ${WANT[$1]:-} ]]; }
drop() { unset "WANT[$1]"; note "$1: left out: $2"; }

RUN_DIR=$(mktemp -d /tmp/drawbridge-bench.XXXXXX)
if [[ $INSTRUCTIONS = 1 ]]; then
    # With the simulated first-level caches and branch predictor: what an
    # instruction costs also depends on the code and data it touches.
    UNDER=(valgrind --tool=callgrind --cache-sim=yes --branch-sim=yes
        --callgrind-out-file="$RUN_DIR/callgrind.%p")
fi
: >"$RUN_DIR/instructions.tsv"
: >"$RUN_DIR/runs.tsv"
: >"$RUN_DIR/idle.tsv"
: >"$RUN_DIR/notes.txt"
note() { log "note: $*"; printf '%s\n' "$*" >>"$RUN_DIR/notes.txt"; }

# ---- process bookkeeping and cleanup ---------------------------------------------
declare -A PID=()        # role -> pid
declare -A STOPSIG=()    # pid -> signal that stops it quickly
EXTRA_PIDS=()            # helpers (idle client, watchdog)

running() {  # pid alive and not a zombie
    local st
    [[ -r /proc/$1/stat ]] || return 1
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $st && $st != Z && $st != X ]]
}

cleanup() {
    local rc=$? pid i
    set +e
    trap - EXIT INT TERM
    for pid in "${EXTRA_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${!STOPSIG[@]}"; do kill "-${STOPSIG[$pid]}" "$pid" 2>/dev/null; done
    for i in $(seq 1 50); do
        local left=0
        for pid in "${!STOPSIG[@]}" "${EXTRA_PIDS[@]}"; do running "$pid" && left=1; done
        [[ $left = 0 ]] && break
        sleep 0.1
    done
    for pid in "${!STOPSIG[@]}" "${EXTRA_PIDS[@]}"; do
        if running "$pid"; then
            log "process $pid did not stop; killing it"
            kill -KILL "$pid" 2>/dev/null
        fi
    done
    wait 2>/dev/null
    rm -f "$DRAWBRIDGE_STATE" "$DRAWBRIDGE_STATE".tmp* 2>/dev/null
    if [[ $rc -ne 0 ]]; then
        log "failed (exit $rc); logs and raw outputs in $RUN_DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# Hard limit for the whole run: every step is bounded, this is the backstop.
( trap 'kill $sp 2>/dev/null; exit 0' TERM
  sleep "$MAX_SECONDS" & sp=$!; wait $sp
  echo "[bench] overall limit of ${MAX_SECONDS}s reached, stopping" >&2
  kill -TERM $$ ) &
EXTRA_PIDS+=($!)

start_bg() {  # role stop-signal logfile cmd...
    local role=$1 sig=$2 logf=$3
    shift 3
    "$@" >"$logf" 2>&1 &
    PID[$role]=$!
    STOPSIG[$!]=$sig
}

stop_role() {  # role: stop one started process now (bounded)
    local pid=${PID[$1]:-} i
    [[ -n $pid ]] || return 0
    kill "-${STOPSIG[$pid]}" "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do running "$pid" || break; sleep 0.1; done
    running "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
    unset "STOPSIG[$pid]" "PID[$1]"
}

port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null; }

http_code() {  # url [curl args...]
    local url=$1
    shift
    curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$@" "$url" 2>/dev/null || true
}

wait_code() {  # seconds expected-code url [curl args...]
    local secs=$1 want=$2 url=$3 got=""
    shift 3
    local end=$((SECONDS + secs))
    while (( SECONDS < end )); do
        got=$(http_code "$url" "$@")
        [[ $got == "$want" ]] && return 0
        sleep 0.2
    done
    return 1
}

cpu_ticks() {  # utime+stime of a process (all threads), in clock ticks
    local rest
    rest=$(sed 's/.*) //' "/proc/$1/stat") || return 1
    awk '{print $12 + $13}' <<<"$rest"
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

machine_busy_ticks() {  # all CPUs: user nice system irq steal, in clock ticks
    # softirq ($8) is left out: it is mostly the loopback traffic of the measurement itself,
    # which the kernel does not charge to any process.
    awk '/^cpu / {print $2 + $3 + $4 + $7 + $9}' /proc/stat
}

nginx_ticks() {  # nginx master and its workers
    local pid=${PID[nginx]:-} sum=0 t c
    [[ -n $pid ]] || { echo 0; return 0; }
    for c in "$pid" $(pgrep -P "$pid" 2>/dev/null || true); do
        t=$(cpu_ticks "$c" 2>/dev/null || echo 0)
        sum=$((sum + t))
    done
    echo "$sum"
}

children_ticks() {  # CPU of this shell's finished children (bash 'times', 2nd line)
    times >"$RUN_DIR/.times"
    awk -v hz="$CLK_TCK" 'NR == 2 {
        n = split($0, f, " "); total = 0;
        for (i = 1; i <= n; i++) { v = f[i]; sub(/s$/, "", v); split(v, ms, "m"); total += ms[1] * 60 + ms[2] }
        printf "%.0f", total * hz }' "$RUN_DIR/.times"
}

cpu_busy_pct() {  # [seconds]: share of all CPUs busy over that time (1 s), in percent
    local a b
    a=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    sleep "${1:-1}"
    b=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN {split(a, x, " "); split(b, y, " ");
        busy = y[1] - x[1]; idle = y[2] - x[2];
        total = busy + idle; pct = 0; if (total > 0) pct = 100 * busy / total;
        printf "%.0f", pct}'
}

# ---- tools ------------------------------------------------------------------------------
ensure_tools() {
    local missing=() c
    declare -A pkg=([haproxy]=haproxy [nginx]=nginx [wrk]=wrk [python3]=python3
                    [socat]=socat [curl]=curl)
    local tools=(haproxy nginx wrk python3 socat curl)
    if [[ $INSTRUCTIONS = 1 ]]; then
        pkg[valgrind]=valgrind
        pkg[callgrind_control]=valgrind
        tools+=(valgrind callgrind_control)
    fi
    for c in "${tools[@]}"; do
        command -v "$c" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v "$c" >/dev/null 2>&1 \
            || missing+=("${pkg[$c]}")
    done
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')
    export PATH=$PATH:/usr/sbin:/sbin
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ $NO_INSTALL = 1 ]] && die "missing tools: ${missing[*]} (NO_INSTALL=1)"
    command -v apt-get >/dev/null 2>&1 || die "missing tools: ${missing[*]}; install them (no apt-get here)"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo -n)
    log "installing ${missing[*]} (apt-get)"
    timeout 600 "${sudo[@]}" apt-get update -qq >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive timeout 900 "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >&2 \
        || die "apt-get install ${missing[*]} failed"
}

# ---- build --------------------------------------------------------------------------------
build() {
    cd "$REPO_DIR"
    if [[ $NO_BUILD = 1 ]]; then
        log "NO_BUILD=1: using binaries already built"
    elif [[ $PGO = 1 ]] && { wants drawbridge || wants bare; }; then
        # drawbridge is built either way: the training runs its demo upstreams.
        log "building drawbridge and bare_pingora with PGO (deploy/pgo/build.sh --bare; log: $RUN_DIR/build.log)"
        if ! timeout "$BUILD_TIMEOUT" "$REPO_DIR/deploy/pgo/build.sh" --bare >"$RUN_DIR/build.log" 2>&1; then
            tail -n 15 "$RUN_DIR/build.log" >&2
            note "the PGO build failed (log: $RUN_DIR/build.log); PGO=0 measures the plain build"
            if wants drawbridge; then drop drawbridge "the PGO build failed"; fi
            if wants bare; then drop bare "the PGO build failed"; fi
        fi
    elif wants drawbridge; then
        log "building drawbridge and bare_pingora (cargo build --profile $BUILD_PROFILE)"
        if ! timeout "$BUILD_TIMEOUT" cargo build --profile "$BUILD_PROFILE" --bin drawbridge --example bare_pingora \
                >"$RUN_DIR/build.log" 2>&1; then
            tail -n 15 "$RUN_DIR/build.log" >&2
            note "cargo build of drawbridge failed (log: $RUN_DIR/build.log)"
            drop drawbridge "it does not build"
            if [[ -x $BARE_BIN ]]; then
                note "bare_pingora: using the binary from an earlier build ($BARE_BIN)"
            fi
        fi
    else
        log "building bare_pingora (cargo build --profile $BUILD_PROFILE --example bare_pingora)"
        if ! timeout "$BUILD_TIMEOUT" cargo build --profile "$BUILD_PROFILE" --example bare_pingora \
                >"$RUN_DIR/build.log" 2>&1; then
            tail -n 15 "$RUN_DIR/build.log" >&2
            if [[ -x $BARE_BIN ]]; then
                note "bare_pingora: build failed; using the binary from an earlier build"
            else
                drop bare "bare_pingora does not build (log: $RUN_DIR/build.log)"
            fi
        fi
    fi
    if wants bare && [[ ! -x $BARE_BIN ]]; then drop bare "no binary at $BARE_BIN"; fi
    if wants drawbridge && [[ ! -x $DRAWBRIDGE_BIN ]]; then
        drop drawbridge "no binary at $DRAWBRIDGE_BIN"
    fi
}

# ---- start everything -----------------------------------------------------------------
check_ports_free() {
    local p busy=()
    for p in "$@"; do port_open "$p" && busy+=("$p"); done
    [[ ${#busy[@]} -eq 0 ]] && return 0
    die "port(s) ${busy[*]} on $HOST already in use (another benchmark still running?); see: ss -ltnp"
}

start_upstreams() {
    check_ports_free $PORT_APP1 $PORT_APP2
    mkdir -p "$RUN_DIR/nginx"
    start_bg nginx TERM "$RUN_DIR/nginx.log" \
        nginx -p "$RUN_DIR/nginx/" -e "$RUN_DIR/nginx-error.log" -c "$BENCH_DIR/nginx-backends.conf"
    wait_code 10 200 "http://$HOST:$PORT_APP1/healthz" && wait_code 5 200 "http://$HOST:$PORT_APP2/healthz" \
        || { cat "$RUN_DIR/nginx.log" >&2; die "nginx upstreams did not come up"; }
    log "nginx upstreams up on :$PORT_APP1 :$PORT_APP2 (pid ${PID[nginx]})"
}

start_haproxy() {
    check_ports_free $PORT_HAPROXY
    # The page drawbridge and bare Pingora serve, so every proxy answers the same bytes.
    sed -e 's/{{site}}/app/g; s/{{message}}//g; s/{{retry_after}}/10 minutes/g' \
        "$BENCH_DIR/../static/maintenance.html" >"$HAPROXY_PAGE"
    haproxy -c -q -f "$BENCH_DIR/haproxy.cfg" >"$RUN_DIR/haproxy-check.log" 2>&1 \
        || { cat "$RUN_DIR/haproxy-check.log" >&2; die "bench/haproxy.cfg does not validate"; }
    start_bg haproxy TERM "$RUN_DIR/haproxy.log" "${UNDER[@]}" haproxy -db -f "$BENCH_DIR/haproxy.cfg"
    if ! wait_code "$START_WAIT" 200 "http://$HOST:$PORT_HAPROXY/"; then
        cat "$RUN_DIR/haproxy.log" >&2
        die "HAProxy did not come up on :$PORT_HAPROXY"
    fi
    log "HAProxy $(haproxy -v | head -n1 | awk '{print $3}') up on :$PORT_HAPROXY (pid ${PID[haproxy]})"
}

start_bare() {
    check_ports_free $PORT_BARE $PORT_BARE_MAINT
    local extra=()
    read -r -a extra <<<"$BARE_FLAGS"
    start_bg bare INT "$RUN_DIR/bare.log" "${UNDER[@]}" "$BARE_BIN" "${extra[@]}" \
        --listen "$HOST:$PORT_BARE" \
        --upstream "$HOST:$PORT_APP1" --upstream "$HOST:$PORT_APP2" \
        --pid-file /tmp/bench-bare-pingora.pid --upgrade-sock /tmp/bench-bare-pingora-upgrade.sock
    if [[ -n ${WL[maint]:-} ]]; then
        start_bg bare_maint INT "$RUN_DIR/bare-maint.log" "${UNDER[@]}" "$BARE_BIN" "${extra[@]}" \
            --listen "$HOST:$PORT_BARE_MAINT" \
            --maintenance --upstream "$HOST:$PORT_APP1" \
            --pid-file /tmp/bench-bare-pingora-maint.pid \
            --upgrade-sock /tmp/bench-bare-pingora-maint-upgrade.sock
    fi
    if ! wait_code "$START_WAIT" 200 "http://$HOST:$PORT_BARE/"; then
        cat "$RUN_DIR/bare.log" >&2
        stop_role bare
        stop_role bare_maint
        drop bare "bare_pingora did not come up on :$PORT_BARE"
        return 0
    fi
    if [[ -n ${WL[maint]:-} ]] && ! wait_code "$START_WAIT" 503 "http://$HOST:$PORT_BARE_MAINT/"; then
        cat "$RUN_DIR/bare-maint.log" >&2
        note "bare_pingora --maintenance did not answer 503 on :$PORT_BARE_MAINT; no bare maint figures"
        stop_role bare_maint
    fi
    log "bare Pingora up on :$PORT_BARE (pid ${PID[bare]})${PID[bare_maint]:+, maintenance instance on :$PORT_BARE_MAINT (pid ${PID[bare_maint]})}"
}

start_drawbridge() {
    local out
    if ! out=$(cd "$REPO_DIR" && timeout 20 "$DRAWBRIDGE_BIN" check -c "$DRAWBRIDGE_CONF" 2>&1); then
        printf '%s\n' "$out" >&2
        drop drawbridge "'drawbridge check -c bench/drawbridge.yaml' failed: $(head -n3 <<<"$out" | tr '\n' ' ')"
        return 0
    fi
    log "drawbridge check: $out"
    if port_open $PORT_DRAWBRIDGE || port_open $PORT_ADMIN || port_open $PORT_METRICS; then
        drop drawbridge "port $PORT_DRAWBRIDGE, $PORT_ADMIN or $PORT_METRICS already in use"
        return 0
    fi
    rm -f "$DRAWBRIDGE_STATE"
    # Access logs off (RUST_LOG=warn), as HAProxy logs nothing in bench/haproxy.cfg.
    start_bg drawbridge INT "$RUN_DIR/drawbridge.log" \
        env RUST_LOG="${DRAWBRIDGE_RUST_LOG:-warn}" "${UNDER[@]}" "$DRAWBRIDGE_BIN" run -c "$DRAWBRIDGE_CONF"
    local end=$((SECONDS + 2 * START_WAIT)) ok=0
    while (( SECONDS < end )); do
        [[ $(http_code "http://$HOST:$PORT_DRAWBRIDGE/") == 200 ]] && { ok=1; break; }
        running "${PID[drawbridge]}" || break
        sleep 0.2
    done
    if [[ $ok != 1 ]]; then
        tail -n 20 "$RUN_DIR/drawbridge.log" >&2
        if running "${PID[drawbridge]}"; then
            stop_role drawbridge
            drop drawbridge "did not answer 200 on :$PORT_DRAWBRIDGE within $((2 * START_WAIT))s (log: $RUN_DIR/drawbridge.log)"
        else
            stop_role drawbridge
            drop drawbridge "'drawbridge run -c bench/drawbridge.yaml' exited at start (log: $RUN_DIR/drawbridge.log)"
        fi
        return 0
    fi
    log "drawbridge up on :$PORT_DRAWBRIDGE (pid ${PID[drawbridge]}), admin :$PORT_ADMIN"
}

# ---- measuring --------------------------------------------------------------------------
declare -A URL=([haproxy]="http://$HOST:$PORT_HAPROXY/" [drawbridge]="http://$HOST:$PORT_DRAWBRIDGE/"
                [bare]="http://$HOST:$PORT_BARE/")
declare -A HDR=()      # proxy -> extra request header for the current workload
declare -A SKIP=()     # "workload/proxy" -> reason

active_proxies() {  # in table order, the ones still measured
    local p
    for p in "${ALL_PROXIES[@]}"; do
        if wants "$p"; then printf '%s\n' "$p"; fi
    done
    return 0
}

wrk_brief() {  # one-line summary of a wrk output file
    awk '/Requests\/sec:/ {rps=$2} /^ +99%/ {p99=$2} /Non-2xx/ {n=$5}
         END {printf "%s req/s, p99 %s%s", rps ? rps : "?", p99 ? p99 : "?", n ? ", non-2xx " n : ""}' "$1"
}

target() {  # workload proxy round: sets T_PID, T_URL, T_HDR (header or ""); fails if not running
    local wl=$1 p=$2 r=$3 role=$2
    T_URL=${URL[$p]}
    if [[ $wl == maint && $p == bare ]]; then
        role=bare_maint
        T_URL="http://$HOST:$PORT_BARE_MAINT/"
    fi
    T_PID=${PID[$role]:-}
    T_HDR=${HDR[$p]:-}
    if [[ -z $T_PID ]] || ! running "$T_PID"; then
        [[ -n $T_PID ]] && note "$p ($role) is no longer running; skipped from $wl round $r on"
        SKIP[$wl/$p]="not running"
        return 1
    fi
}

wait_quiet() {  # prints how busy the machine is with other work (%), after QUIET_WAIT
    local busy waited=0
    busy=$(cpu_busy_pct 0.5)
    while (( busy > QUIET_PCT && waited < QUIET_WAIT )); do
        (( waited == 0 )) && log "machine ${busy}% busy with other work; waiting up to ${QUIET_WAIT}s for it to calm down"
        busy=$(cpu_busy_pct 1)
        waited=$((waited + 1))
    done
    echo "$busy"
}

other_pct() {  # machine_ticks proxies_ticks nginx_ticks children_ticks wall0 wall1
    awk -v m="$1" -v t="$2" -v n="$3" -v c="$4" -v w0="$5" -v w1="$6" -v hz="$CLK_TCK" \
        -v cpus="$NCPU" 'BEGIN {
            cap = (w1 - w0) * hz * cpus; o = m - t - n - c; if (o < 0) o = 0;
            pct = 0; if (cap > 0) pct = 100 * o / cap; printf "%.0f", pct }'
}

ticks_to_s() { awk -v a="$1" -v b="$2" -v hz="$CLK_TCK" 'BEGIN {printf "%.3f", (b - a) / hz}'; }

run_wrk() {  # out url [wrk args...]: one measured load, its output in $RUN_DIR/out
    local out=$1 url=$2
    shift 2
    timeout $((DUR_S + 30)) wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url" \
        >"$RUN_DIR/$out" 2>&1
}

record() {  # workload proxy round cpu out busy other how: one row of runs.tsv, and its log line
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$7" >>"$RUN_DIR/runs.tsv"
    log "$1 r$3 $(printf '%-10s' "$2") $(wrk_brief "$RUN_DIR/$5"), $4 CPU-s" \
        "($8other work: $6% before, ${7:-?}% during)"
}

measure() {  # workload proxy round
    local wl=$1 p=$2 r=$3 t0 t1 cpu out
    target "$wl" "$p" "$r" || return 0
    local pid=$T_PID url=$T_URL hdr=(${T_HDR:+-H "$T_HDR"})
    if [[ $INSTRUCTIONS = 1 ]]; then
        measure_instructions "$wl" "$p" "$pid" "$url" "${hdr[@]}"
        return 0
    fi
    # How busy is the machine with other work right now (the proxies are idle)?
    local busy
    busy=$(wait_quiet)
    out="wrk-$wl-$p-r$r.txt"
    # CPU used meanwhile by anything but the proxy, nginx and wrk ("other"), to flag noisy runs.
    local m0 m1 n0 n1 c0 c1 w0 w1 other=""
    m0=$(machine_busy_ticks)
    n0=$(nginx_ticks)
    if ! t0=$(cpu_ticks "$pid" 2>/dev/null); then
        note "$p is no longer running; skipped from $wl round $r on"
        SKIP[$wl/$p]="not running"
        return 0
    fi
    w0=$EPOCHREALTIME
    c0=$(children_ticks)
    local wrk_rc=0
    run_wrk "$out" "$url" "${hdr[@]}" || wrk_rc=$?
    c1=$(children_ticks)
    w1=$EPOCHREALTIME
    t1=$(cpu_ticks "$pid" 2>/dev/null || echo "")
    n1=$(nginx_ticks)
    m1=$(machine_busy_ticks)
    [[ $wrk_rc -eq 0 ]] || note "wrk exited with $wrk_rc for $wl/$p round $r (see $RUN_DIR/$out)"
    if [[ -n $t1 ]]; then
        other=$(other_pct $((m1 - m0)) $((t1 - t0)) $((n1 - n0)) $((c1 - c0)) "$w0" "$w1")
        cpu=$(ticks_to_s "$t0" "$t1")
    else
        cpu=nan
        note "$p died during $wl round $r"
    fi
    record "$wl" "$p" "$r" "$cpu" "$out" "$busy" "$other" ""
}

measure_together() {  # workload round proxy...: all at once, each with its own wrk
    local wl=$1 r=$2 p
    shift 2
    local procs=() pids=() urls=() hdrs=() outs=() wrk_pids=() t0=() t1=()
    for p in "$@"; do
        target "$wl" "$p" "$r" || continue
        procs+=("$p")
        pids+=("$T_PID")
        urls+=("$T_URL")
        hdrs+=("$T_HDR")
    done
    (( ${#procs[@]} > 0 )) || return 0
    local busy
    busy=$(wait_quiet)
    local m0 m1 n0 n1 c0 c1 w0 w1 i sum=0 other=""
    m0=$(machine_busy_ticks)
    n0=$(nginx_ticks)
    for i in "${!procs[@]}"; do
        t0[i]=$(cpu_ticks "${pids[i]}" 2>/dev/null || echo "")
    done
    w0=$EPOCHREALTIME
    c0=$(children_ticks)
    for i in "${!procs[@]}"; do
        outs[i]="wrk-$wl-${procs[i]}-r$r.txt"
        run_wrk "${outs[i]}" "${urls[i]}" ${hdrs[i]:+-H "${hdrs[i]}"} &
        wrk_pids[i]=$!
    done
    for i in "${!procs[@]}"; do
        wait "${wrk_pids[i]}" || note "wrk exited with $? for $wl/${procs[i]} round $r (see $RUN_DIR/${outs[i]})"
    done
    c1=$(children_ticks)
    w1=$EPOCHREALTIME
    for i in "${!procs[@]}"; do
        t1[i]=$(cpu_ticks "${pids[i]}" 2>/dev/null || echo "")
    done
    n1=$(nginx_ticks)
    m1=$(machine_busy_ticks)
    for i in "${!procs[@]}"; do
        [[ -n ${t0[i]} && -n ${t1[i]} ]] && sum=$((sum + t1[i] - t0[i]))
    done
    other=$(other_pct $((m1 - m0)) "$sum" $((n1 - n0)) $((c1 - c0)) "$w0" "$w1")
    for i in "${!procs[@]}"; do
        p=${procs[i]}
        local cpu=nan
        if [[ -n ${t0[i]} && -n ${t1[i]} ]]; then
            cpu=$(ticks_to_s "${t0[i]}" "${t1[i]}")
        else
            note "$p died during $wl round $r"
        fi
        record "$wl" "$p" "$r" "$cpu" "${outs[i]}" "$busy" "$other" "together; "
    done
}

dumps_of() {  # pid: its callgrind dump files, oldest first
    find "$RUN_DIR" -maxdepth 1 -name "callgrind.$1.*" -printf '%T@ %p\n' | sort -n | cut -d' ' -f2
}

measure_instructions() {  # workload proxy pid url [-H header]: user-space instructions per request
    local wl=$1 p=$2 pid=$3 url=$4 out="wrk-$wl-$p.txt" dump before requests events ir i1 d1r d1w bcm bim
    shift 4
    # Warm (connection pools, caches), then count a fixed-length run from zero.
    timeout 60 wrk -t1 -c"$CONNECTIONS" -d2s "$@" "$url" >/dev/null 2>&1 || true
    timeout 20 callgrind_control -z "$pid" >/dev/null 2>&1 \
        || { note "$p: callgrind_control -z failed for $wl"; return 0; }
    timeout $((DUR_S + 60)) wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "$@" "$url" >"$RUN_DIR/$out" 2>&1 || true
    before=$(dumps_of "$pid" | wc -l)
    timeout 60 callgrind_control -d "$pid" >/dev/null 2>&1 \
        || { note "$p: callgrind_control -d failed for $wl"; return 0; }
    for _ in $(seq 1 100); do
        (( $(dumps_of "$pid" | wc -l) > before )) && break
        sleep 0.1
    done
    dump=$(dumps_of "$pid" | tail -n1)
    # The events callgrind counted, by name: Ir first, then the simulated
    # L1 misses and mispredicted branches.
    events=$(awk '
        /^events:/ { for (i = 2; i <= NF; i++) col[$i] = i }
        /^(summary|totals):/ {
            n = split("Ir I1mr D1mr D1mw Bcm Bim", ev, " ")
            for (k = 1; k <= n; k++) printf "%s ", (ev[k] in col) ? $(col[ev[k]]) : "-"
            print ""; exit
        }' "$dump" 2>/dev/null || true)
    read -r ir i1 d1r d1w bcm bim <<<"$events"
    requests=$(awk '/ requests in / {print $1; exit}' "$RUN_DIR/$out")
    if [[ -z $ir || $ir == - || -z $requests || $requests == 0 ]]; then
        note "$p: no instruction count for $wl (dump ${dump:-none}, wrk: $(wrk_brief "$RUN_DIR/$out"))"
        return 0
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$wl" "$p" "$ir" "$requests" "$out" \
        "$i1" "$d1r" "$d1w" "$bcm" "$bim" >>"$RUN_DIR/instructions.tsv"
    log "$wl $(printf '%-10s' "$p") $requests requests, $((ir / requests)) instructions per request"
}

run_rounds() {  # workload: ROUNDS alternating rounds over the proxies, rotating the order
    local wl=$1 r i n p
    local order=()
    mapfile -t order < <(active_proxies)
    n=${#order[@]}
    if [[ $TOGETHER = 1 && $INSTRUCTIONS != 1 ]]; then
        local now=()
        for ((r = 1; r <= ROUNDS; r++)); do
            now=()
            for p in "${order[@]}"; do
                [[ -n ${SKIP[$wl/$p]:-} ]] || now+=("$p")
            done
            measure_together "$wl" "$r" "${now[@]}"
        done
        return 0
    fi
    for ((r = 1; r <= ROUNDS; r++)); do
        for ((i = 0; i < n; i++)); do
            p=${order[$(((i + r - 1) % n))]}
            [[ -n ${SKIP[$wl/$p]:-} ]] && continue
            measure "$wl" "$p" "$r"
        done
    done
    return 0
}

warm_up() {
    local p
    for p in $(active_proxies); do
        timeout 20 wrk -t1 -c"$CONNECTIONS" -d1s "${URL[$p]}" >/dev/null 2>&1 || true
    done
}

haproxy_maint() {  # 0|1
    echo "experimental-mode on; set var proc.maint int($1)" \
        | timeout 5 socat stdio "$HAPROXY_SOCK" >>"$RUN_DIR/haproxy-cli.log" 2>&1
}

drawbridge_maint() {  # true|false
    local code
    code=$(curl -s -o "$RUN_DIR/admin-maint.json" -w '%{http_code}' --max-time 5 -X PUT \
        -H 'Content-Type: application/json' -d "{\"enabled\":$1}" \
        "http://$HOST:$PORT_ADMIN/api/v1/sites/app/maintenance" 2>/dev/null || true)
    [[ $code == 200 ]]
}

workload_new() {
    log "workload new: proxied requests from new clients (no cookie)"
    HDR=()
    run_rounds new
}

workload_sticky() {
    log "workload sticky: proxied requests carrying a valid sticky cookie"
    HDR=([haproxy]="Cookie: SERVERID=s1" [bare]="Cookie: SERVERID=s1")
    if wants haproxy; then
        local h
        h=$(curl -s -D - --max-time 3 -H "${HDR[haproxy]}" "${URL[haproxy]}" | tr -d '\r' || true)
        grep -q '^app-01 ok' <<<"$h" || note "HAProxy: sticky request did not reach app-01"
        grep -qi '^set-cookie:' <<<"$h" && note "HAProxy: set a cookie on a sticky request"
    fi
    if wants drawbridge; then
        local cookie h
        cookie=$(curl -s -D - -o /dev/null --max-time 3 "${URL[drawbridge]}" | tr -d '\r' \
            | sed -nE 's/^[Ss][Ee][Tt]-[Cc][Oo][Oo][Kk][Ii][Ee]: *SERVERID=([^;]*).*/\1/p' | head -n1 || true)
        if [[ -z $cookie ]]; then
            note "drawbridge: no 'Set-Cookie: SERVERID=' on a first request; no sticky figures"
            SKIP[sticky/drawbridge]="no cookie"
        else
            HDR[drawbridge]="Cookie: SERVERID=$cookie"
            h=$(curl -s -D - -o /dev/null --max-time 3 -H "${HDR[drawbridge]}" "${URL[drawbridge]}" \
                | tr -d '\r' || true)
            grep -qi '^set-cookie: *SERVERID=' <<<"$h" \
                && note "drawbridge: set a new SERVERID cookie on a request carrying a valid one"
            log "drawbridge sticky cookie: SERVERID=$cookie"
        fi
    fi
    run_rounds sticky
    HDR=()
}

workload_maint() {
    log "workload maint: local 503 maintenance answers"
    HDR=()
    if wants haproxy; then
        haproxy_maint 1 || note "HAProxy: could not switch maintenance on through $HAPROXY_SOCK"
        [[ $(http_code "${URL[haproxy]}") == 503 ]] \
            || { note "HAProxy: maintenance on does not answer 503; no maint figures"; SKIP[maint/haproxy]=off; }
    fi
    if wants drawbridge; then
        if drawbridge_maint true && [[ $(http_code "${URL[drawbridge]}") == 503 ]]; then
            :
        else
            note "drawbridge: PUT /api/v1/sites/app/maintenance {\"enabled\":true} did not give 503 answers; no maint figures"
            SKIP[maint/drawbridge]=off
        fi
    fi
    if wants bare && [[ -z ${PID[bare_maint]:-} ]]; then SKIP[maint/bare]="no instance"; fi
    run_rounds maint
    if wants haproxy; then
        haproxy_maint 0 || true
        [[ $(http_code "${URL[haproxy]}") == 200 ]] || note "HAProxy: maintenance off did not restore 200"
    fi
    if wants drawbridge && [[ -z ${SKIP[maint/drawbridge]:-} ]]; then
        drawbridge_maint false || true
        [[ $(http_code "${URL[drawbridge]}") == 200 ]] || note "drawbridge: maintenance off did not restore 200"
    fi
}

measure_idle() {  # proxy
    local p=$1 port pid before after outf cpid status opened failed still i
    case $p in
        haproxy) port=$PORT_HAPROXY ;;
        drawbridge) port=$PORT_DRAWBRIDGE ;;
        bare) port=$PORT_BARE ;;
    esac
    pid=${PID[$p]:-}
    [[ -n $pid ]] && running "$pid" || { note "$p not running; no idle figures"; return 0; }
    sleep 1
    before=$(rss_kb "$pid")
    outf="$RUN_DIR/idle-$p.txt"
    python3 "$BENCH_DIR/idle_conns.py" --port "$port" --conns "$IDLE_CONNS" --hold 120 --timeout 90 \
        >"$outf" 2>&1 &
    cpid=$!
    EXTRA_PIDS+=("$cpid")
    for ((i = 0; i < 1000; i++)); do  # up to 100 s
        grep -q '^ready' "$outf" 2>/dev/null && break
        running "$cpid" || break
        sleep 0.1
    done
    if ! grep -q '^ready' "$outf"; then
        kill -TERM "$cpid" 2>/dev/null || true
        wait "$cpid" 2>/dev/null || true
        note "$p: idle client did not get ready: $(tail -n2 "$outf" | tr '\n' ' ')"
        return 0
    fi
    sleep 2  # let the proxy settle
    after=$(rss_kb "$pid")
    kill -TERM "$cpid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do running "$cpid" || break; sleep 0.1; done
    running "$cpid" && kill -KILL "$cpid" 2>/dev/null
    wait "$cpid" 2>/dev/null || true
    status=$(grep '^ready' "$outf")
    opened=$(sed -nE 's/.*opened=([0-9]+).*/\1/p' <<<"$status")
    failed=$(sed -nE 's/.*failed=([0-9]+).*/\1/p' <<<"$status")
    still=$(sed -nE 's/^done still_open=([0-9]+).*/\1/p' "$outf")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$IDLE_CONNS" "$before" "$after" "$opened" "$failed" \
        "${still:--}" >>"$RUN_DIR/idle.tsv"
    log "idle $(printf '%-10s' "$p") $opened conns: VmRSS ${before} -> ${after} KB," \
        "$(awk -v a="$before" -v b="$after" -v n="$opened" 'BEGIN {printf "%.1f", n ? (b - a) / n : 0}') KB/conn"
    sleep 1
}

workload_idle() {
    log "workload idle: $IDLE_CONNS idle keep-alive client connections"
    local p
    for p in $(active_proxies); do measure_idle "$p"; done
}

# ---- main -------------------------------------------------------------------------------
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (( $(ulimit -n) < IDLE_CONNS + 200 )); then
    log "warning: open-file limit $(ulimit -n) is below IDLE_CONNS+200"
fi
CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)

ensure_tools
build

log "run folder: $RUN_DIR"
BUSY_BEFORE=$(cpu_busy_pct)
if (( BUSY_BEFORE > 20 )); then
    note "the machine was ${BUSY_BEFORE}% busy before the run (other work, e.g. a cargo build): absolute figures will be low and noisy; ratios hold better"
fi
start_upstreams
wants haproxy && start_haproxy
wants bare && start_bare
wants drawbridge && start_drawbridge
[[ -n $(active_proxies) ]] || die "no proxy left to measure"

log "warming up"
warm_up
sleep 2  # at least one health-check pass for both proxies
[[ -n ${WL[new]:-} ]] && workload_new
[[ -n ${WL[sticky]:-} ]] && workload_sticky
[[ -n ${WL[maint]:-} ]] && workload_maint
[[ -n ${WL[idle]:-} ]] && workload_idle

{
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "rounds=$ROUNDS"
    echo "duration=$DURATION"
    echo "connections=$CONNECTIONS"
    echo "idle_conns=$IDLE_CONNS"
    echo "proxies=$(active_proxies | paste -sd, -)"
    echo "workloads=$WORKLOADS"
    echo "host=$(hostname)"
    echo "cpus=$(nproc)"
    echo "cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "kernel=$(uname -r)"
    echo "cpu_busy_before_pct=$BUSY_BEFORE"
    echo "loadavg_after=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "quiet_wait=$QUIET_WAIT"
    echo "quiet_pct=$QUIET_PCT"
    echo "bare_flags=$BARE_FLAGS"
    echo "together=$TOGETHER"
    echo "profile=$BUILD_PROFILE$([[ $PGO = 1 ]] && echo +pgo)"
    echo "haproxy=$(haproxy -v 2>/dev/null | head -n1)"
    echo "nginx=$(nginx -v 2>&1 | head -n1)"
    echo "wrk=$(wrk -v 2>&1 | head -n1)"
    echo "git_rev=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo none)"
    echo "raw=$RUN_DIR"
} >"$RUN_DIR/meta.env"

mkdir -p "$BENCH_DIR/results"
STAMP=$(date -u +%Y%m%d-%H%M%S)
if [[ $INSTRUCTIONS = 1 ]]; then
    python3 "$BENCH_DIR/instructions.py" "$RUN_DIR" "$BENCH_DIR/results/instructions.json" \
        "$BENCH_DIR/results/instructions-$STAMP.json"
    log "results: bench/results/instructions.json and bench/results/instructions-$STAMP.json; raw: $RUN_DIR"
else
    python3 "$BENCH_DIR/report.py" "$RUN_DIR" "$BENCH_DIR/results/latest.json" \
        "$BENCH_DIR/results/$STAMP.json"
    log "results: bench/results/latest.json and bench/results/$STAMP.json; raw: $RUN_DIR"
fi
