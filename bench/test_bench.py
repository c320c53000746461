#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Smoke test of the echo benchmarks (bench/run.py's parts), stdlib only.

Usage: test_bench.py UVS-LOADGEN BENCH-RAW-ECHO BENCH-THREAD-ECHO UVS-ECHO

It proves that the parts of a benchmark run work, not how fast they are
(the machine is shared: no timing is asserted):
- every server (the raw libuv echo, the thread-per-connection echo,
  uvs-echo in event and thread mode) on every transport (tcp, unix, udp)
  carries a short uvs-loadgen run with no error;
- uvs-loadgen notices what it must: a flipped byte, a connection the
  server closes, lost datagrams; --hold keeps its connections open on the
  server until its stdin closes; bad arguments exit 2 with one line;
- the two baseline servers echo byte for byte by themselves (a Python
  client, no load generator), refuse bad arguments with exit 2, never
  replace an existing unix: path, and exit 0 on SIGTERM, removing their
  socket file.

Every server listens on port 0 or in a private temporary directory and is
killed by pid when its case ends; every wait has a timeout. The server
process helpers and the TAP runner are test/demos/demo_server.py's.
Prints TAP and exits 1 when a case fails.
"""

import functools
import json
import os
import select
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "test", "demos"))
import demo_server  # noqa: E402
from demo_server import (Skip, check, expand_listen,  # noqa: E402
                         listening_regex, sockaddr, TIMEOUT)

LOADGEN = RAW = THREAD = ECHO = None

LISTEN = {
    "tcp": "tcp://127.0.0.1:0",
    "unix": "unix:{tmp}/echo.sock",  # {tmp}: a private directory per server
    "udp": "udp://127.0.0.1:0",
}

# The keys of uvs-loadgen's --json line (its contract with run.py).
JSON_KEYS = {"transport", "conns", "size", "pipeline", "seconds", "msgs",
             "msgs_per_s", "mb_per_s", "p50_us", "p99_us", "p999_us",
             "max_us", "errors", "connect_errors", "mismatches", "lost",
             "timeouts", "client_cpu_s", "msgs_total"}

# A short closed-loop run, as the matrix uses it.
SHORT_RUN = ["--conns", "8", "--pipeline", "4", "--size", "64",
             "--seconds", "0.3", "--warmup", "0.1"]


# ---- Servers --------------------------------------------------------------

def server_argv(name):
    return {
        "raw": [RAW],
        "thread": [THREAD],
        "uvs-event": [ECHO, "--mode", "event", "--quiet"],
        "uvs-thread": [ECHO, "--mode", "thread", "--quiet"],
    }[name]


def server(name, transport):
    """A running echo server `name` on `transport`, as a context manager
    (demo_server.DemoServer: read up to its listening line, killed by pid
    at the end, its temporary directory removed)."""
    listen, tmpdir = expand_listen(LISTEN[transport])
    return demo_server.DemoServer(server_argv(name) + ["--listen", listen],
                                  listening_regex(listen), tmpdir=tmpdir)


class PyStreamServer:
    """A misbehaving TCP echo server in this process (socketserver with a
    thread per connection), as a context manager; `handler` is a
    socketserver.BaseRequestHandler. `address` is its tcp:// address."""

    def __init__(self, handler):
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0),
                                                      handler)
        self.address = "tcp://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05})

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()  # joins the connection threads
        self.thread.join(TIMEOUT)
        return False


class FlipHandler(socketserver.BaseRequestHandler):
    """Echoes, except that the byte at stream offset FLIP_AT is
    inverted."""
    FLIP_AT = 1000

    def handle(self):
        s = self.request
        s.settimeout(TIMEOUT)
        seen = 0
        while True:
            try:
                data = s.recv(65536)
                if not data:
                    return
                if seen <= self.FLIP_AT < seen + len(data):
                    data = bytearray(data)
                    data[self.FLIP_AT - seen] ^= 0xFF
                seen += len(data)
                s.sendall(data)
            except OSError:
                return


class CloseHandler(socketserver.BaseRequestHandler):
    """Echoes the first CLOSE_AFTER bytes of a connection, then closes
    it."""
    CLOSE_AFTER = 500

    def handle(self):
        s = self.request
        s.settimeout(TIMEOUT)
        seen = 0
        while seen < self.CLOSE_AFTER:
            try:
                data = s.recv(self.CLOSE_AFTER - seen)
                if not data:
                    return
                seen += len(data)
                s.sendall(data)
            except OSError:
                return


class DroppingUdpServer:
    """A UDP echo server in this process that drops every DROP_EVERY-th
    datagram, as a context manager; `address` is its udp:// address."""
    DROP_EVERY = 50

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.address = "udp://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self):
        count = 0
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65536)
                count += 1
                if count % self.DROP_EVERY != 0:
                    self.sock.sendto(data, peer)
            except OSError:
                continue  # a timeout: look at the stop flag

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(TIMEOUT)
        self.sock.close()
        return False


def unused_address(kind):
    """(socket, address): a bound socket that nobody serves on, on a port
    the kernel chose, held open so that the port stays ours. For command
    line checks, which must fail before any connection is tried."""
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    scheme = "tcp" if kind == socket.SOCK_STREAM else "udp"
    return s, "%s://127.0.0.1:%d" % (scheme, s.getsockname()[1])


# ---- The load generator ---------------------------------------------------

def run_loadgen(args, timeout):
    """Runs uvs-loadgen --json with `args`; returns (exit status, the JSON
    result or None, stderr text, seconds it ran)."""
    start = time.monotonic()
    try:
        p = subprocess.run([LOADGEN, "--json"] + list(args),
                           stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("uvs-loadgen %s did not end within %.0f s"
                             % (" ".join(args), timeout))
    elapsed = time.monotonic() - start
    err = p.stderr.decode(errors="replace")
    lines = p.stdout.decode(errors="replace").splitlines()
    result = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except ValueError:
            pass
    check(isinstance(result, dict), "uvs-loadgen %s (exit %d) printed no "
          "JSON object: stdout %r, stderr %r"
          % (" ".join(args), p.returncode, p.stdout, err))
    missing = JSON_KEYS - set(result)
    check(not missing, "JSON lacks %s: %r" % (sorted(missing), result))
    return p.returncode, result, err, elapsed


def expect_clean_run(args, timeout=30):
    status, res, err, _ = run_loadgen(args, timeout)
    check(status == 0 and res["errors"] == 0 and res["msgs"] > 0,
          "uvs-loadgen %s: exit %d, errors %s, msgs %s; stderr %r"
          % (" ".join(args), status, res["errors"], res["msgs"], err))
    return res


def read_line(proc, timeout):
    """Reads proc's stdout up to a newline, within `timeout` seconds."""
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        check(left > 0, "no line within %.0f s (got %r)" % (timeout, buf))
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 1)
            check(chunk != b"", "stdout closed (got %r, exit %r)"
                  % (buf, proc.poll()))
            buf += chunk
    return buf


def sockets_of(pid):
    """How many sockets process `pid` has open (from /proc)."""
    n = 0
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        raise Skip("no /proc/PID/fd")
    for name in names:
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, name)).startswith(
                    "socket:"):
                n += 1
        except OSError:
            pass  # closed meanwhile
    return n


# ---- Cases: every server, every transport ---------------------------------

def case_load(name, transport, extra=()):
    with server(name, transport) as srv:
        res = expect_clean_run(SHORT_RUN + list(extra) + [srv.address])
        check(res["transport"] == transport, "transport %r, want %r"
              % (res["transport"], transport))
        check(srv.proc.poll() is None, "the server exited (%r)"
              % srv.proc.poll())


# ---- Cases: what the load generator must notice ---------------------------

def case_detects_flipped_byte():
    with PyStreamServer(FlipHandler) as py:
        status, res, err, _ = run_loadgen(SHORT_RUN + [py.address], 30)
    check(status == 1 and res["mismatches"] >= 1 and res["errors"] >= 1,
          "exit %d, mismatches %s, errors %s, want 1, >= 1, >= 1; stderr %r"
          % (status, res["mismatches"], res["errors"], err))


def case_detects_closed_connection():
    with PyStreamServer(CloseHandler) as py:
        status, res, err, _ = run_loadgen(SHORT_RUN + [py.address], 30)
    check(status == 1 and res["errors"] >= 1,
          "exit %d, errors %s, want 1 and >= 1; stderr %r"
          % (status, res["errors"], err))


def case_detects_lost_datagrams():
    # Longer than the 1 s after which a missing reply counts as lost.
    seconds = 1.5
    args = ["--conns", "8", "--pipeline", "4", "--size", "64",
            "--seconds", str(seconds), "--warmup", "0.1"]
    with DroppingUdpServer() as py:
        status, res, err, elapsed = run_loadgen(args + [py.address], 30)
    check(status == 1 and res["lost"] >= 1 and res["errors"] >= 1,
          "exit %d, lost %s, errors %s, want 1, >= 1, >= 1; stderr %r"
          % (status, res["lost"], res["errors"], err))
    check(elapsed < 0.1 + seconds + 5, "the run took %.1f s: it stalled"
          % elapsed)


# ---- Cases: --hold ---------------------------------------------------------

def case_hold():
    conns = 50
    with server("raw", "tcp") as srv:
        before = sockets_of(srv.pid)
        stderr = tempfile.TemporaryFile()
        p = subprocess.Popen([LOADGEN, "--conns", str(conns), "--hold",
                              srv.address], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=stderr)
        try:
            line = read_line(p, 20)
            check(line == b"ready %d\n" % conns, "got %r, want 'ready %d'"
                  % (line, conns))
            # Each was served one round trip before `ready`: all accepted.
            now = sockets_of(srv.pid)
            check(now == before + conns, "the server has %d sockets, want "
                  "%d + %d" % (now, before, conns))
            p.stdin.close()
            try:
                status = p.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                raise AssertionError("uvs-loadgen --hold did not end within "
                                     "%.0f s of its stdin closing" % TIMEOUT)
            stderr.seek(0)
            check(status == 0, "exit %d after stdin closed; stderr %r"
                  % (status, stderr.read()))
            deadline = time.monotonic() + TIMEOUT
            while sockets_of(srv.pid) != before:
                check(time.monotonic() < deadline, "the server still has "
                      "%d sockets, want %d" % (sockets_of(srv.pid), before))
                time.sleep(0.02)
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()
            stderr.close()


# ---- Cases: the load generator's command line ------------------------------

def case_loadgen_usage(args, kind=socket.SOCK_STREAM):
    s, address = unused_address(kind)
    with s:
        argv = [a.replace("{addr}", address) for a in args]
        demo_server.expect_usage_error(LOADGEN, *argv)


# ---- Cases: the baseline servers by themselves ------------------------------

def connect(address):
    family, kind, addr = sockaddr(address)
    s = socket.socket(family, kind)
    s.settimeout(TIMEOUT)
    try:
        if kind == socket.SOCK_STREAM:
            s.connect(addr)
    except BaseException:
        s.close()
        raise
    return s


def case_stream_echo(exe, transport):
    """1 MiB of every byte value, sent by a writer thread that then shuts
    its side: all of it comes back in order, then EOF."""
    data = bytes(range(256)) * 4096
    with server(exe, transport) as srv, connect(srv.address) as s:
        errors = []

        def writer():
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            except OSError as e:
                errors.append(e)

        t = threading.Thread(target=writer)
        t.start()
        got = bytearray()
        deadline = time.monotonic() + TIMEOUT
        while True:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            got += chunk
            check(len(got) <= len(data), "more bytes back than sent")
        t.join(TIMEOUT)
        check(not errors, "writer failed: %r" % errors)
        check(bytes(got) == data, "%d bytes back of %d, or not the same"
              % (len(got), len(data)))


def case_datagram_echo(exe):
    with server(exe, "udp") as srv, connect(srv.address) as s:
        _, _, addr = sockaddr(srv.address)
        for n in (1, 0, 1000, 65507):
            data = os.urandom(n)
            s.sendto(data, addr)
            got, peer = s.recvfrom(65536)
            check(got == data, "%d bytes back for %d, or not the same"
                  % (len(got), n))


def case_sigterm(exe, transport):
    with server(exe, transport) as srv:
        path = srv.path
        srv.signal(signal.SIGTERM)
        status, _ = srv.wait(TIMEOUT)
        check(status == 0, "exit %r after SIGTERM, want 0; stderr %r"
              % (status, srv.read_stderr()))
        check(path is None or not os.path.exists(path),
              "%s is left after exit" % path)


def case_server_usage(exe, *args):
    demo_server.expect_usage_error(server_argv(exe)[0], *args)


def case_existing_path(exe):
    tmpdir = demo_server.short_tempdir()
    path = os.path.join(tmpdir, "taken")
    try:
        with open(path, "w") as f:
            f.write("not a socket")
        err = demo_server.expect_usage_error(server_argv(exe)[0], "--listen",
                                             "unix:" + path, status=1)
        with open(path) as f:
            check(f.read() == "not a socket", "the file was changed")
        check(b"taken" in err, "the message does not name the path: %r"
              % err)
    finally:
        os.unlink(path)
        os.rmdir(tmpdir)


# ---- Case list and main ----------------------------------------------------

CASES = []
for _name in ("raw", "thread", "uvs-event", "uvs-thread"):
    for _transport in ("tcp", "unix", "udp"):
        CASES.append(("loadgen: 8 conns, pipeline 4, 64 B, clean [%s, %s]"
                      % (_name, _transport),
                      functools.partial(case_load, _name, _transport)))
    CASES.append(("loadgen: 2 conns, 64 KiB messages, clean [%s, tcp]"
                  % _name,
                  functools.partial(case_load, _name, "tcp",
                                    ["--size", "65536", "--conns", "2"])))

CASES += [
    ("loadgen: a flipped byte is a mismatch, exit 1",
     case_detects_flipped_byte),
    ("loadgen: a connection the server closes is an error, exit 1",
     case_detects_closed_connection),
    ("loadgen: dropped datagrams are lost, exit 1, no stall",
     case_detects_lost_datagrams),
    ("loadgen --hold: 50 connections held until stdin closes", case_hold),
    ("loadgen usage: --conns 0",
     functools.partial(case_loadgen_usage, ["--conns", "0", "{addr}"])),
    ("loadgen usage: --size 0",
     functools.partial(case_loadgen_usage, ["--size", "0", "{addr}"])),
    ("loadgen usage: a bad address",
     functools.partial(case_loadgen_usage, ["nonsense://{addr}"])),
    ("loadgen usage: udp with --size 4",
     functools.partial(case_loadgen_usage, ["--size", "4", "{addr}"],
                       socket.SOCK_DGRAM)),
]

for _name in ("raw", "thread"):
    CASES += [
        ("echo 1 MiB then EOF [%s, tcp]" % _name,
         functools.partial(case_stream_echo, _name, "tcp")),
        ("echo 1 MiB then EOF [%s, unix]" % _name,
         functools.partial(case_stream_echo, _name, "unix")),
        ("datagrams of 1, 0, 1000 and 65507 bytes [%s, udp]" % _name,
         functools.partial(case_datagram_echo, _name)),
        ("no --listen: exit 2 [%s]" % _name,
         functools.partial(case_server_usage, _name)),
        ("a bad address: exit 2 [%s]" % _name,
         functools.partial(case_server_usage, _name, "--listen", "bogus")),
        ("unixgram: exit 2 [%s]" % _name,
         functools.partial(case_server_usage, _name, "--listen",
                           "unixgram:/nonexistent/x")),
        ("an existing unix: path: exit 1, file untouched [%s]" % _name,
         functools.partial(case_existing_path, _name)),
    ]
    for _transport in ("tcp", "unix", "udp"):
        CASES.append(("SIGTERM: exit 0, nothing left [%s, %s]"
                      % (_name, _transport),
                      functools.partial(case_sigterm, _name, _transport)))


def main():
    global LOADGEN, RAW, THREAD, ECHO
    if len(sys.argv) != 5:
        sys.stderr.write("usage: test_bench.py UVS-LOADGEN BENCH-RAW-ECHO "
                         "BENCH-THREAD-ECHO UVS-ECHO\n")
        return 2
    LOADGEN, RAW, THREAD, ECHO = (os.path.abspath(p) for p in sys.argv[1:])
    # TEST_BENCH_ONLY: run the cases whose name holds this substring.
    return demo_server.run_cases(CASES, os.environ.get("TEST_BENCH_ONLY"))


if __name__ == "__main__":
    sys.exit(main())
