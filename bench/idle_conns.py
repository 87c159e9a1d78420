#!/usr/bin/env python3
"""Hold N idle HTTP/1.1 keep-alive client connections open against a proxy.

Each connection sends one complete GET (keep-alive) and reads the whole
response, then stays open and idle. Once all are established the script prints
one line `ready opened=N failed=F` on stdout, holds them until it receives
SIGTERM/SIGINT or --hold seconds pass, then prints
`done still_open=K` (connections the proxy had not closed) and exits.

Used by bench/run.sh (and, with --tls, bench/tls.sh) to measure proxy memory
per idle client connection.
Loopback only: the target must be 127.0.0.1.
"""

import argparse
import resource
import signal
import socket
import ssl
import sys
import time


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
        except (ValueError, OSError):
            return soft
    return target


def read_response(sock, deadline):
    """Read one HTTP/1.1 response; True if complete and not 'Connection: close'."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            return False
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = None
    chunked = False
    close = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
        elif name == b"connection" and value == b"close":
            close = True
    while True:
        if length is not None and len(body) >= length:
            break
        if chunked and body.endswith(b"0\r\n\r\n"):
            break
        if length is None and not chunked:
            break  # no body expected (e.g. 204/304) or unknowable: stop here
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            return False
        body += chunk
    return not close


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--path", default="/")
    ap.add_argument("--batch", type=int, default=100,
                    help="connections set up concurrently")
    ap.add_argument("--hold", type=float, default=60.0,
                    help="seconds to hold at most once ready")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds allowed to set all connections up")
    ap.add_argument("--tls", action="store_true",
                    help="HTTPS (HTTP/1.1 by ALPN; the certificate is not verified)")
    args = ap.parse_args()
    tls = None
    if args.tls:
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        tls.set_alpn_protocols(["http/1.1"])

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("idle_conns.py: loopback targets only")

    limit = raise_nofile(args.conns + 100)
    if limit < args.conns + 20:
        sys.exit(f"idle_conns.py: open-file limit {limit} too low for {args.conns} connections")

    stop = {"now": False}

    def on_signal(_sig, _frm):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
               "User-Agent: drawbridge-bench-idle\r\nAccept: */*\r\n\r\n").encode()
    deadline = time.monotonic() + args.timeout
    held = []
    failed = 0
    remaining = args.conns
    while remaining > 0 and not stop["now"]:
        if time.monotonic() > deadline:
            failed += remaining
            break
        n = min(args.batch, remaining)
        remaining -= n
        batch = []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                s.connect((args.host, args.port))
                if tls is not None:
                    s = tls.wrap_socket(s, server_hostname="localhost")
                s.sendall(request)
                batch.append(s)
            except OSError:
                s.close()
                failed += 1
        for s in batch:
            try:
                if read_response(s, deadline):
                    held.append(s)
                else:
                    s.close()
                    failed += 1
            except (OSError, ValueError):
                s.close()
                failed += 1

    print(f"ready opened={len(held)} failed={failed}", flush=True)

    end = time.monotonic() + args.hold
    while not stop["now"] and time.monotonic() < end:
        time.sleep(0.1)

    still_open = 0
    for s in held:
        try:
            s.setblocking(False)
            data = s.recv(1)
            if data:  # unexpected bytes, but the connection is open
                still_open += 1
        except BlockingIOError:
            still_open += 1
        except OSError:
            pass
        finally:
            s.close()
    print(f"done still_open={still_open}", flush=True)


if __name__ == "__main__":
    main()
