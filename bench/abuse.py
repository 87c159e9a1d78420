#!/usr/bin/env python3
"""Half-open connections against a proxy, and what a normal client sees.

Opens CONNS connections from ATTACKER (e.g. 127.0.0.2) to TARGET, each
sending half a request head and then nothing, spread over several client
processes (one process may hold fewer files than that), and holds them.
Meanwhile, every second, a normal client (from 127.0.0.1) asks TARGET for
/ and the admin API for its status, each with a 2 s limit, and prints one
line. Stops by itself after --seconds. Loopback only.

    bench/abuse.py --target 127.0.0.1:8080 --admin 127.0.0.1:9090 \
                   --conns 21000 --seconds 30
"""

import argparse
import os
import resource
import socket
import subprocess
import sys
import time

HALF_HEAD = b"GET / HTTP/1.1\r\nHost: app\r\nX-Half: "
IP_BIND_ADDRESS_NO_PORT = 24  # Linux


def hold(target, attacker, count, seconds):
    """One client process: open `count` half-open connections, hold them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, port = target.rsplit(":", 1)
    pending, socks, failed = [], [], 0
    # Connect without waiting (a full backlog would make each wait), then
    # send half a head on every connection that got through.
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # The port is chosen at connect: bind() alone would search for
            # one among thousands of bound sockets each time.
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((attacker, 0))
            s.setblocking(False)
            s.connect_ex((host, int(port)))
            pending.append(s)
        except OSError:
            failed += 1
            s.close()
    time.sleep(2)
    for s in pending:
        try:
            s.send(HALF_HEAD)
            socks.append(s)
        except OSError:
            failed += 1
            s.close()
    print(f"held {len(socks)} failed {failed}", flush=True)
    time.sleep(seconds)


def probe(addr, path, limit=2.0):
    host, port = addr.rsplit(":", 1)
    start = time.monotonic()
    try:
        with socket.create_connection((host, int(port)), timeout=limit) as s:
            s.settimeout(limit)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = s.recv(64)
        if not data:
            return "closed"
        status = data.split(b" ", 2)[1].decode(errors="replace")
        return f"{status} {1000 * (time.monotonic() - start):.0f}ms"
    except OSError as e:
        return type(e).__name__


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--admin", required=True)
    ap.add_argument("--attacker", default="127.0.0.2")
    ap.add_argument("--conns", type=int, default=21000)
    # One process holds at most its hard open-file limit, less some room.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    fit = 8000 if hard == resource.RLIM_INFINITY else max(100, min(8000, hard - 100))
    ap.add_argument("--per-process", type=int, default=fit)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--hold", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    for addr in (a.target, a.admin):
        if not addr.startswith("127.") and not addr.startswith("[::1]"):
            sys.exit(f"{addr}: loopback only")
    if a.hold is not None:
        hold(a.target, a.attacker, a.hold, a.seconds)
        return
    procs, left = [], a.conns
    while left > 0:
        n = min(left, a.per_process)
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--target", a.target, "--admin", a.admin,
             "--attacker", a.attacker, "--hold", str(n), "--seconds", str(a.seconds + 5)],
            stdout=subprocess.PIPE, text=True))
        left -= n
    start = time.monotonic()
    print("t(s)  client GET /   admin status", flush=True)
    while time.monotonic() - start < a.seconds:
        t = time.monotonic() - start
        print(f"{t:4.0f}  {probe(a.target, '/'):<14} {probe(a.admin, '/api/v1/status')}",
              flush=True)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - start - t)))
    for p in procs:
        p.kill()
    for p in procs:
        out, _ = p.communicate()
        print("attacker process:", (out or "").strip() or "no report")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
