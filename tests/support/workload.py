"""Traffic for the end-to-end tests and benchmarks: real kernel TCP at its defaults.

Guest side (run in both guests, identically):
  workload.py serve PORT [--flip K]      GET downloads, ECHO round trips, HELLO short
                                         connections; --flip changes byte K of every download
  workload.py fetch HOST PORT SIZE       a guest-opened connection: asks HOST for SIZE bytes
                                         and answers with their sha256
Client side:
  workload.py download HOST PORT SIZE    prints: bytes sha256-ok MB/s
  workload.py rtt HOST PORT N            N 64-byte round trips on one connection; prints: N per-s
  workload.py short HOST PORT N          N sequential short connections; prints: N per-s
  workload.py give PORT SIZE             serves one guest-opened connection; prints: ok|bad

Downloads are deterministic bytes (see `pattern`), so both guests serve the same stream and
the client can check it without a copy. Nothing here changes a socket or kernel default.
"""

import hashlib
import socket
import sys
import threading
import time

CHUNK = 1 << 20


BASE = bytes((i * 7 + i // 251) & 0xFF for i in range(251 * 256))
BIG = BASE * (CHUNK // len(BASE) + 2)


def pattern(offset, n):
    """Bytes offset..offset+n (n <= CHUNK) of the download stream: BASE repeated (its period,
    251 * 256, is not a power of two, so a misplaced segment never looks right)."""
    pos = offset % len(BASE)
    return BIG[pos:pos + n]


def expected_sha256(size):
    h = hashlib.sha256()
    done = 0
    while done < size:
        n = min(CHUNK, size - done)
        h.update(pattern(done, n))
        done += n
    return h.hexdigest()


def read_line(conn):
    line = b""
    while not line.endswith(b"\n"):
        b = conn.recv(1)
        if not b:
            break
        line += b
    return line.decode().strip()


def serve_one(conn, flip):
    with conn:
        cmd = read_line(conn).split()
        if not cmd:
            return
        if cmd[0] == "GET":
            size = int(cmd[1])
            done = 0
            while done < size:
                n = min(CHUNK, size - done)
                data = pattern(done, n)
                if flip is not None and done <= flip < done + n:
                    data = bytearray(data)
                    data[flip - done] ^= 0xFF
                    data = bytes(data)
                conn.sendall(data)
                done += n
        elif cmd[0] == "ECHO":
            while True:
                b = conn.recv(4096)
                if not b:
                    break
                conn.sendall(b)
        elif cmd[0] == "HELLO":
            conn.sendall(b"OK\n")
            # Let the client close first, as a web client would.
            conn.recv(16)


def serve(port, flip):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(128)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve_one, args=(c, flip), daemon=True).start()


def download(host, port, size):
    c = socket.create_connection((host, port), timeout=60)
    t0 = time.monotonic()
    c.sendall(b"GET %d\n" % size)
    h = hashlib.sha256()
    got = 0
    while True:
        b = c.recv(CHUNK)
        if not b:
            break
        h.update(b)
        got += len(b)
    dt = time.monotonic() - t0
    c.close()
    ok = got == size and h.hexdigest() == expected_sha256(size)
    print(got, "sha256-ok" if ok else "sha256-bad", "%.1f" % (got / dt / 1e6))


def rtt(host, port, n):
    c = socket.create_connection((host, port), timeout=30)
    c.sendall(b"ECHO\n")
    msg = bytes(range(64))
    t0 = time.monotonic()
    for i in range(n):
        c.sendall(msg)
        got = b""
        while len(got) < len(msg):
            b = c.recv(len(msg) - len(got))
            if not b:
                raise SystemExit("echo connection closed after %d round trips" % i)
            got += b
        if got != msg:
            raise SystemExit("echo differs at round trip %d" % i)
    dt = time.monotonic() - t0
    c.close()
    print(n, "%.1f" % (n / dt))


def short(host, port, n):
    t0 = time.monotonic()
    for i in range(n):
        c = socket.create_connection((host, port), timeout=30)
        c.sendall(b"HELLO\n")
        if read_line(c) != "OK":
            raise SystemExit("short connection %d got no answer" % i)
        c.close()
    dt = time.monotonic() - t0
    print(n, "%.1f" % (n / dt))


def fetch(host, port, size):
    """Guest side of a guest-opened connection: both guests run it the same way."""
    c = socket.create_connection((host, port), timeout=60)
    c.sendall(b"GET %d\n" % size)
    h = hashlib.sha256()
    got = 0
    while got < size:
        b = c.recv(CHUNK)
        if not b:
            break
        h.update(b)
        got += len(b)
    c.sendall(h.hexdigest().encode() + b"\n")
    c.recv(16)
    c.close()


def give(port, size):
    """Client side of a guest-opened connection: serves one GET, checks the returned hash."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(4)
    s.settimeout(60)
    c, _ = s.accept()
    c.settimeout(60)
    cmd = read_line(c).split()
    n = int(cmd[1])
    done = 0
    while done < n:
        k = min(CHUNK, n - done)
        c.sendall(pattern(done, k))
        done += k
    answer = read_line(c)
    c.close()
    print("ok" if n == size and answer == expected_sha256(size) else "bad")


def main(argv):
    cmd = argv[1]
    if cmd == "serve":
        flip = int(argv[4]) if len(argv) > 4 and argv[3] == "--flip" else None
        serve(int(argv[2]), flip)
    elif cmd == "download":
        download(argv[2], int(argv[3]), int(argv[4]))
    elif cmd == "rtt":
        rtt(argv[2], int(argv[3]), int(argv[4]))
    elif cmd == "short":
        short(argv[2], int(argv[3]), int(argv[4]))
    elif cmd == "fetch":
        fetch(argv[2], int(argv[3]), int(argv[4]))
    elif cmd == "give":
        give(int(argv[2]), int(argv[3]))
    else:
        raise SystemExit("unknown command " + cmd)


if __name__ == "__main__":
    main(sys.argv)
