"""Throughput, concurrency and small round trips through our tunnel vs ``ssh -N -L``, same sshd.

Run: ``.venv/bin/python benchmarks/bench_tunnel.py [--mib 100] [--repeat 3]``. Needs /usr/sbin/sshd
and ssh. Every path ends at the same byte server (its own process); the measuring client is this
process; our tunnel runs in its own process through the CLI, as ``ssh -L`` does, so neither shares
the client's GIL. Bars (issue #4): throughput >= 50 % of ``ssh -L``; p90 round trip <= 5 ms.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "ensemble_mcp"))

from sshd import Sshd, free_port, sshd_missing_reason, start_sshd  # noqa: E402

# Reply to each line "N\n" with N bytes; to "-N\n" by reading N bytes, then answering "ok\n".
SERVER = r"""
import os, socket, sys, threading
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()  # parent gone
block = b"x" * (1 << 20)
def serve(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = conn.makefile("rb")
    for line in f:
        n = int(line)
        if n < 0:
            while n < 0:
                n += len(f.read1(min(-n, 1 << 20)))
            conn.sendall(b"ok\n")
        while n > 0:
            conn.sendall(block[: min(n, len(block))]); n -= len(block)
    conn.close()
s = socket.create_server(("127.0.0.1", 0), backlog=256)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def fetch(sock: socket.socket, nbytes: int, buf: bytearray) -> None:
    sock.sendall(b"%d\n" % nbytes)
    view = memoryview(buf)
    while nbytes > 0:
        got = sock.recv_into(view[: min(nbytes, len(buf))])
        if got == 0:
            raise ConnectionError("closed early")
        nbytes -= got


def throughput(port: int, nbytes: int) -> float:
    buf = bytearray(1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as s:
        t = time.perf_counter()
        fetch(s, nbytes, buf)
        return nbytes / (time.perf_counter() - t) / 2**20


def upload(port: int, nbytes: int) -> float:
    block = b"y" * (1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as s:
        t = time.perf_counter()
        s.sendall(b"-%d\n" % nbytes)
        for sent in range(0, nbytes, len(block)):
            s.sendall(block[: nbytes - sent])
        if s.recv(3) != b"ok\n":
            raise ConnectionError("no acknowledgement")
        return nbytes / (time.perf_counter() - t) / 2**20


def round_trips(port: int, n: int = 400) -> list[float]:
    buf = bytearray(64)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fetch(s, 64, buf)
            times.append((time.perf_counter() - t) * 1e3)
        return times


def concurrent(port: int, clients: int = 50, nbytes: int = 1 << 20) -> tuple[int, float]:
    ok: list[bool] = []
    start = threading.Barrier(clients + 1)

    def one() -> None:
        buf = bytearray(1 << 16)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            start.wait()
            fetch(s, nbytes, buf)
            ok.append(True)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for th in threads:
        th.start()
    start.wait()
    t = time.perf_counter()
    for th in threads:
        th.join()
    return len(ok), time.perf_counter() - t


def wait_listening(port: int, proc: subprocess.Popen[bytes], limit_s: float = 10) -> None:
    """Ssh -L has no readiness signal we can read without a log pipe; try to connect, bounded."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ssh exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("ssh -L did not listen in time")


@contextmanager
def ssh_forward(sshd: Sshd, target_port: int, pty: bool) -> Iterator[int]:
    port = free_port()
    argv = [
        "ssh",
        "-N",
        "-L",
        f"127.0.0.1:{port}:localhost:{target_port}",
        "-p",
        str(sshd.port),
        "-i",
        str(sshd.user_key),
        "-o",
        f"UserKnownHostsFile={sshd.known_hosts}",
        "-o",
        "BatchMode=yes",
        "-o",
        "ExitOnForwardFailure=yes",
        "-F",
        "/dev/null",
        f"{sshd.user}@127.0.0.1",
    ]
    if pty:
        argv = [*argv[:1], "-tt", *argv[2:], "sleep", "600"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def our_forward(sshd: Sshd, target_port: int) -> Iterator[int]:
    argv = [
        sys.executable,
        "-m",
        "ensemble_mcp.tunnel_cli",
        f"{sshd.user}@127.0.0.1",
        str(target_port),
        "--local-port",
        "0",
        "-i",
        str(sshd.user_key),
        "--known-hosts",
        str(sshd.known_hosts),
        "-p",
        str(sshd.port),
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        yield int(line.split()[1].rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(10)


def measure(name: str, port: int, mib: int, repeat: int) -> dict[str, float]:
    rates = [throughput(port, mib << 20) for _ in range(repeat)]
    ups = [upload(port, mib << 20) for _ in range(repeat)]
    served, took = concurrent(port)
    rtt = sorted(round_trips(port))
    row = {
        "MiB/s": statistics.median(rates),
        "best": max(rates),
        "up": statistics.median(ups),
        "conc": served,
        "conc_s": took,
        "p50": rtt[len(rtt) // 2],
        "p90": rtt[int(len(rtt) * 0.9)],
    }
    print(
        f"{name:26s} {row['MiB/s']:6.0f} {row['best']:6.0f} {row['up']:6.0f}  {served:3d}/50 in "
        f"{took:5.2f} s {row['p50']:7.2f} {row['p90']:7.2f}",
        flush=True,
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-ups on `timeout`
    if reason := sshd_missing_reason():
        print(f"skipped: {reason}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        sshd = start_sshd(Path(tmp))
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            target = int(server.stdout.readline())
            print(
                f"{args.mib} MiB x {args.repeat} each way (MiB/s), 50 x 1 MiB concurrent, "
                f"400 x 64 B round trips; cores={os.cpu_count()}"
            )
            print(
                f"{'path':26s} {'down':>6s} {'best':>6s} {'up':>6s}  {'concurrent':>17s} "
                f"{'p50 ms':>7s} {'p90 ms':>7s}"
            )
            measure("direct (no tunnel)", target, args.mib, args.repeat)
            with ssh_forward(sshd, target, pty=False) as port:
                ssh = measure("ssh -N -L", port, args.mib, args.repeat)
            with ssh_forward(sshd, target, pty=True) as port:
                measure("ssh -tt -L (pty session)", port, args.mib, args.repeat)
            with our_forward(sshd, target) as port:
                ours = measure("ensemble-mcp tunnel", port, args.mib, args.repeat)
        finally:
            server.kill()
            server.wait()
            sshd.stop()
    ratio = ours["MiB/s"] / ssh["MiB/s"]
    print(
        f"download ours / ssh -N -L = {ratio:.0%} (bar >= 50%), upload "
        f"{ours['up'] / ssh['up']:.0%}; "
        f"p90 {ours['p90']:.2f} ms (bar <= 5 ms); concurrent {ours['conc']:.0f}/50"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
