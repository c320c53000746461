#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Contract test for uvs-echo (DESIGN.md section 4), stdlib only.

Usage: test_echo.py /path/to/uvs-echo

The echo and signal cases run in each mode (event, thread, sync); a few
more check what only thread mode (a worker per client, --threads caps them)
or sync mode (one client at a time) promises. Every case starts its own
server on port 0, reads the listening line, and kills the server by pid in
a finally block. Every socket operation has a
timeout. Prints TAP and exits 1 when a case fails.
"""

import functools
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

EXE = None
MiB = 1024 * 1024
TIMEOUT = 10.0  # seconds for any one socket operation or wait
LISTEN_RE = re.compile(rb"^listening on tcp://127\.0\.0\.1:(\d+)\n$")
LISTEN6_RE = re.compile(rb"^listening on tcp://\[::1\]:(\d+)\n$")
FLAGS = ["--listen", "--mode", "--threads", "--max-conns", "--idle-timeout",
         "--drain", "--quiet", "--help"]


class Skip(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


# ---- Server processes -----------------------------------------------------

class Server:
    """A running uvs-echo; use as a context manager (always killed)."""

    def __init__(self, *args, listen="tcp://127.0.0.1:0",
                 regex=LISTEN_RE, env=None):
        self.stderr = tempfile.TemporaryFile()
        argv = [EXE] + (["--listen", listen] if listen else []) + list(args)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=self.stderr, bufsize=0,
                                     env=env)
        self.line = b""
        self.port = None
        self.regex = regex

    def __enter__(self):
        try:
            self.line = self.read_line(5.0)
            m = self.regex.match(self.line)
            check(m is not None,
                  "listening line %r does not match %s; stderr: %r"
                  % (self.line, self.regex.pattern, self.read_stderr()))
            self.port = int(m.group(1))
            check(0 < self.port < 65536, "bad port %d" % self.port)
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, *exc):
        self.kill()
        return False

    @property
    def pid(self):
        return self.proc.pid

    def read_line(self, timeout):
        """Reads stdout up to and including the first newline."""
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            check(left > 0, "no listening line within %.1f s (got %r)"
                  % (timeout, buf))
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1)  # byte by byte: leave the rest unread
            check(chunk != b"", "stdout closed before the listening line "
                  "(got %r, exit %r, stderr %r)"
                  % (buf, self.proc.poll(), self.read_stderr()))
            buf += chunk
        return buf

    def rest_of_stdout(self):
        """What the server printed after the listening line (after exit)."""
        return self.proc.stdout.read() or b""

    def read_stderr(self):
        self.stderr.seek(0)
        return self.stderr.read()

    def signal(self, signum):
        os.kill(self.proc.pid, signum)

    def wait(self, timeout):
        """Returns (exit status, seconds waited); None status on timeout."""
        start = time.monotonic()
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            status = None
        return status, time.monotonic() - start

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc.stdout.close()
        self.stderr.close()


def run_usage(*args):
    """Runs uvs-echo to completion; returns (status, stdout, stderr)."""
    try:
        p = subprocess.run([EXE] + list(args), stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=5)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("uvs-echo %s did not exit within 5 s (stdout %r)"
                             % (" ".join(args), e.stdout))
    return p.returncode, p.stdout, p.stderr


def expect_usage_error(*args, status=2):
    code, out, err = run_usage(*args)
    check(code == status, "uvs-echo %s: exit %d, want %d (stderr %r)"
          % (" ".join(args), code, status, err))
    check(out == b"", "uvs-echo %s: stdout not empty: %r"
          % (" ".join(args), out))
    check(err.endswith(b"\n") and err.count(b"\n") == 1 and len(err) > 1,
          "uvs-echo %s: want exactly one stderr line, got %r"
          % (" ".join(args), err))
    return err


# ---- Clients --------------------------------------------------------------

def connect(port, host="127.0.0.1"):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    try:
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


def recv_exact(s, n, timeout=TIMEOUT):
    """Reads exactly n bytes or fails (EOF, timeout)."""
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while len(buf) < n:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(min(n - len(buf), 1 << 20))
        except socket.timeout:
            raise AssertionError("timed out after %d of %d bytes"
                                 % (len(buf), n))
        check(chunk != b"", "EOF after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return bytes(buf)


def recv_until_eof(s, limit, timeout=TIMEOUT):
    """Reads until EOF; fails past `limit` bytes or on timeout."""
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(1 << 20)
        except socket.timeout:
            raise AssertionError("no EOF after %d bytes" % len(buf))
        if chunk == b"":
            return bytes(buf)
        buf += chunk
        check(len(buf) <= limit, "more than %d bytes back" % limit)


def echo_stream(port, data, half_close=True, host="127.0.0.1"):
    """Sends `data` from a writer thread while reading the echo; with
    half_close the writer then shuts down its side and the echo must end
    in EOF right after len(data) bytes. Returns the bytes received."""
    errors = []
    s = connect(port, host)

    def writer():
        try:
            view = memoryview(data)
            for off in range(0, len(data), 256 * 1024):
                s.sendall(view[off:off + 256 * 1024])
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except Exception as e:  # reported by the reader's thread
            errors.append(repr(e))

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        if half_close:
            got = recv_until_eof(s, len(data), timeout=30)
        else:
            got = recv_exact(s, len(data), timeout=30)
    finally:
        t.join(TIMEOUT)
        s.close()
    check(not errors, "writer: %s" % errors)
    return got


def payload(n, seed):
    return random.Random(seed).randbytes(n)


def same(got, want, what):
    if got == want:
        return
    i = next((k for k in range(min(len(got), len(want)))
              if got[k] != want[k]), min(len(got), len(want)))
    raise AssertionError("%s: %d bytes back, want %d; first difference at "
                         "byte %d" % (what, len(got), len(want), i))


def ipv6_available():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# ---- Cases: command line ----------------------------------------------

def case_listening_line():
    with Server() as srv:
        check(srv.port != 0, "port 0 in the listening line")
        srv.signal(signal.SIGTERM)
        status, _ = srv.wait(TIMEOUT)
        check(status == 0, "exit %r after SIGTERM" % status)
        rest = srv.rest_of_stdout()
        check(rest == b"", "more on stdout after the line: %r" % rest)


def case_listen_equals_form():
    with Server("--listen=tcp://127.0.0.1:0", "--mode=event", "--drain=0.5",
                "--quiet", listen=None) as srv:
        data = b"flag=value\n"
        same(echo_stream(srv.port, data), data, "echo")


def case_threads_equals_form_any_order():
    # --threads may come before --mode; both take the '=' form.
    with Server("--threads=3", "--mode=thread") as srv:
        data = b"threads=3\n"
        same(echo_stream(srv.port, data), data, "echo")


def case_ipv6_listening_line():
    if not ipv6_available():
        raise Skip("no IPv6 loopback")
    with Server(listen="tcp://[::1]:0", regex=LISTEN6_RE) as srv:
        data = bytes(range(256)) * 4
        same(echo_stream(srv.port, data, host="::1"), data, "IPv6 echo")


def case_help():
    code, out, err = run_usage("--help")
    check(code == 0, "--help: exit %d" % code)
    check(err == b"", "--help wrote to stderr: %r" % err)
    text = out.decode()
    check("usage" in text.lower(), "no 'usage' in --help")
    for flag in FLAGS:
        check(flag in text, "--help does not mention %s" % flag)
    for mode in ("event", "sync", "thread", "fork"):
        check(mode in text, "--help does not mention mode %s" % mode)


def case_unknown_flag():
    expect_usage_error("--bogus")


def case_listen_without_value():
    expect_usage_error("--listen")


def case_bad_address_no_port():
    expect_usage_error("--listen", "tcp://127.0.0.1")


def case_bad_address_nonsense():
    expect_usage_error("--listen", "nonsense")


def case_mode_fork_not_supported():
    err = expect_usage_error("--listen", "tcp://127.0.0.1:0", "--mode",
                             "fork")
    check(b"not supported" in err, "message %r" % err)


def case_mode_bogus():
    expect_usage_error("--listen", "tcp://127.0.0.1:0", "--mode", "bogus")


def case_later_flags_not_supported():
    for flag, value in (("--max-conns", "4"), ("--idle-timeout", "1")):
        err = expect_usage_error("--listen", "tcp://127.0.0.1:0", flag,
                                 value)
        check(flag.encode() in err and b"not supported" in err,
              "message %r" % err)


def case_bad_threads():
    for value in ("0", "x", "", "-1", "+2", " 2", "2 ", "1.5", "0x10",
                  "4294967296", "99999999999999999999"):
        err = expect_usage_error("--listen", "tcp://127.0.0.1:0", "--mode",
                                 "thread", "--threads", value)
        check(b"--threads" in err, "--threads %r: message %r" % (value, err))
    expect_usage_error("--listen", "tcp://127.0.0.1:0", "--mode=thread",
                       "--threads=0")
    expect_usage_error("--listen", "tcp://127.0.0.1:0", "--mode", "thread",
                       "--threads")


def case_threads_needs_thread_mode():
    for args in (["--threads", "4"],
                 ["--mode", "event", "--threads", "4"],
                 ["--threads", "4", "--mode", "event"],
                 ["--mode", "sync", "--threads", "4"],
                 ["--threads", "4", "--mode", "thread", "--mode", "sync"]):
        err = expect_usage_error("--listen", "tcp://127.0.0.1:0", *args)
        check(b"--threads" in err and b"--mode thread" in err,
              "%s: message %r" % (" ".join(args), err))


def case_udp_not_supported():
    expect_usage_error("--listen", "udp://127.0.0.1:0")


def case_bad_drain():
    for value in ("-1", "abc", "", "1x"):
        expect_usage_error("--listen", "tcp://127.0.0.1:0", "--drain", value)


def case_address_in_use():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        for mode in MODES:
            expect_usage_error("--listen", "tcp://127.0.0.1:%d" % port,
                               "--mode", mode, status=1)


# ---- Helpers for the cases below ------------------------------------------

MODES = ("event", "thread", "sync")


def mode_args(mode):
    """Event mode is the default: test it without --mode, as before."""
    return [] if mode == "event" else ["--mode", mode]


def rss_bytes(pid):
    """The process's resident set size, or None without /proc."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_silent(socks, wait, what):
    """Fails if any of `socks` becomes readable within `wait` seconds."""
    if not socks:
        return
    r, _, _ = select.select(socks, [], [], wait)
    check(not r, "%s: %d socket(s) got bytes or EOF early"
          % (what, len(r)))


def expect_closed_unserved(s, what):
    """The server closes `s` without echoing: EOF or a reset, no data."""
    s.settimeout(TIMEOUT)
    try:
        data = s.recv(64)
    except socket.timeout:
        raise AssertionError("%s: neither served nor closed within %.0f s"
                             % (what, TIMEOUT))
    except ConnectionResetError:
        data = b""
    check(data == b"", "%s: served after the signal: %r" % (what, data))


# ---- Cases: echo, in every mode -------------------------------------------

def case_echo_all_byte_values(mode):
    with Server(*mode_args(mode)) as srv:
        s = connect(srv.port)
        try:
            data = bytes(range(256))
            s.sendall(data)
            same(recv_exact(s, len(data)), data, "256 byte values")
        finally:
            s.close()


def case_echo_8mib_concurrent(mode):
    with Server(*mode_args(mode)) as srv:
        data = payload(8 * MiB, 8)
        same(echo_stream(srv.port, data, half_close=False), data, "8 MiB")


def case_half_close(mode):
    with Server(*mode_args(mode)) as srv:
        data = payload(MiB, 1)
        same(echo_stream(srv.port, data, half_close=True), data,
             "1 MiB then EOF")


def many_clients(args, n, size):
    """n clients at once, each echoing `size` bytes then EOF."""
    with Server("--quiet", *args) as srv:
        results = {}

        def client(i):
            try:
                data = payload(size, 100 + i)
                same(echo_stream(srv.port, data), data, "client %d" % i)
                results[i] = None
            except Exception as e:
                results[i] = repr(e)

        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(n)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        for t in threads:
            t.join(max(0.01, deadline - time.monotonic()))
        bad = {i: r for i, r in results.items() if r is not None}
        check(len(results) == n, "%d of %d clients finished"
              % (len(results), n))
        check(not bad, "failed clients: %s" % bad)


def case_50_clients(mode):
    many_clients(mode_args(mode), 50, 64 * 1024)


# Growth of the server's resident memory allowed while a client sends and
# does not read. Its own buffers hold a few MiB at most (event mode queues
# up to 1 MiB; thread mode 64 KiB in and 256 KiB out); the rest is slack
# for the allocator.
RSS_BOUND = 4 * MiB


def small_asan_quarantine():
    """The environment for a server whose memory is measured. Under ASan
    every freed block waits in a quarantine (256 MiB by default) before
    reuse, so resident memory grows with the bytes copied even when the
    server holds none of them; a 1 MiB quarantine keeps the measure about
    the server. Programs built without ASan ignore the variable."""
    env = dict(os.environ)
    old = env.get("ASAN_OPTIONS", "")
    env["ASAN_OPTIONS"] = (old + ":" if old else "") + "quarantine_size_mb=1"
    return env


def case_backpressure(mode):
    """A client that sends but never reads: the server must stop reading
    (the client's send blocks well before 64 MiB) without its memory
    growing, then echo all of it once the client reads."""
    with Server(*mode_args(mode), env=small_asan_quarantine()) as srv:
        # A first client warms the server up (in thread mode: starts the
        # worker, which then stays idle), so the baseline below counts
        # memory that grows with the bytes, not one-time costs.
        data = payload(MiB, 6)
        same(echo_stream(srv.port, data), data, "warm-up echo")
        base = rss_bytes(srv.pid)
        s = connect(srv.port)
        try:
            data = payload(64 * MiB, 7)
            view = memoryview(data)
            sent = 0
            s.setblocking(False)
            while sent < len(data):
                try:
                    sent += s.send(view[sent:sent + 64 * 1024])
                    continue
                except BlockingIOError:
                    pass
                _, w, _ = select.select([], [s], [], 1.0)
                if not w:
                    break  # blocked for a second: the server stopped reading
            check(sent < len(data),
                  "sent %d MiB without blocking: no backpressure"
                  % (sent // MiB))
            check(srv.proc.poll() is None, "server died")
            rss = rss_bytes(srv.pid)
            if base is not None and rss is not None:
                check(rss - base < RSS_BOUND,
                      "server memory grew by %.1f MiB while the client "
                      "did not read (%.1f MiB sent)"
                      % ((rss - base) / MiB, sent / MiB))
            # Read it all back: reading resumes after the queue drains.
            got = bytearray()
            deadline = time.monotonic() + 30
            while len(got) < sent:
                check(time.monotonic() < deadline,
                      "timed out after %d of %d bytes" % (len(got), sent))
                r, _, _ = select.select([s], [], [], 1.0)
                if r:
                    more = s.recv(1 << 20)
                    check(more != b"", "EOF after %d bytes" % len(got))
                    got += more
            same(bytes(got), data[:sent], "echo after backpressure")
        finally:
            s.close()


# ---- Cases: signals, in every mode ----------------------------------------

def stop_with_no_clients(mode, signum):
    with Server(*mode_args(mode)) as srv:
        srv.signal(signum)
        status, took = srv.wait(2.0)
        check(status == 0, "exit %r after %s" % (status, signum))
        check(took < 2.0, "took %.2f s" % took)


def case_sigterm_no_clients(mode):
    stop_with_no_clients(mode, signal.SIGTERM)


def case_sigint_no_clients(mode):
    stop_with_no_clients(mode, signal.SIGINT)


def case_sigterm_drain(mode):
    with Server("--drain", "2", *mode_args(mode)) as srv:
        a = connect(srv.port)
        try:
            a.sendall(b"before")
            check(recv_exact(a, 6) == b"before", "echo before the signal")
            t0 = time.monotonic()
            srv.signal(signal.SIGTERM)
            time.sleep(0.3)
            check(srv.proc.poll() is None, "exited while a client is open")
            # A new client is not served: refused, no echo, or EOF/reset.
            try:
                b = connect(srv.port)
            except OSError:
                b = None
            if b is not None:
                try:
                    b.sendall(b"new")
                    b.settimeout(0.5)
                    try:
                        data = b.recv(16)
                    except socket.timeout:
                        data = b""
                    except OSError:
                        data = b""
                    check(data == b"", "new client served after the "
                          "signal: %r" % data)
                finally:
                    b.close()
            # The open client is still served.
            a.sendall(b"after")
            check(recv_exact(a, 5) == b"after", "echo after the signal")
            status, _ = srv.wait(8.0)
            took = time.monotonic() - t0
            check(status == 0, "exit %r after the drain" % status)
            check(1.5 <= took <= 6.0, "exited %.2f s after SIGTERM, want "
                  "about 2" % took)
        finally:
            a.close()


def case_second_signal(mode):
    with Server("--drain", "10", *mode_args(mode)) as srv:
        a = connect(srv.port)
        try:
            a.sendall(b"x")
            recv_exact(a, 1)
            srv.signal(signal.SIGTERM)
            time.sleep(0.3)
            check(srv.proc.poll() is None, "exited while a client is open")
            t0 = time.monotonic()
            srv.signal(signal.SIGTERM)
            status, _ = srv.wait(1.0)
            took = time.monotonic() - t0
            check(status is not None, "still running 1 s after a second "
                  "SIGTERM")
            check(status != 0, "second signal: exit 0, want nonzero")
            check(took < 1.0, "took %.2f s" % took)
        finally:
            a.close()


def case_drain_ends_for_stuck_client(mode):
    """A client that sends but stops reading holds the server's output
    (and, in sync mode, a blocked send); the drain still ends on time."""
    with Server("--drain", "1", "--quiet", *mode_args(mode)) as srv:
        s = connect(srv.port)
        try:
            chunk = payload(64 * 1024, 9)
            sent = 0
            s.setblocking(False)
            while sent < 256 * MiB:
                try:
                    sent += s.send(chunk)
                    continue
                except BlockingIOError:
                    pass
                _, w, _ = select.select([], [s], [], 1.0)
                if not w:
                    break  # the server stopped reading: it is blocked
            check(sent < 256 * MiB, "sent %d MiB without blocking"
                  % (sent // MiB))
            t0 = time.monotonic()
            srv.signal(signal.SIGTERM)
            status, _ = srv.wait(5.0)
            took = time.monotonic() - t0
            check(status == 0, "exit %r (None: still running) after the "
                  "drain" % status)
            check(0.7 <= took <= 3.0, "exited %.2f s after SIGTERM, want "
                  "about 1" % took)
        finally:
            s.close()


def case_client_closes_during_drain(mode):
    with Server("--drain", "10", *mode_args(mode)) as srv:
        a = connect(srv.port)
        closed = False
        try:
            a.sendall(b"x")
            recv_exact(a, 1)
            srv.signal(signal.SIGTERM)
            time.sleep(0.3)
            check(srv.proc.poll() is None, "exited while a client is open")
            a.sendall(b"still here")
            check(recv_exact(a, 10) == b"still here",
                  "echo after the signal")
            t0 = time.monotonic()
            a.close()
            closed = True
            status, _ = srv.wait(1.5)
            took = time.monotonic() - t0
            check(status == 0, "exit %r (None: still running) after the "
                  "last client closed" % status)
            check(took < 1.5, "took %.2f s" % took)
        finally:
            if not closed:
                a.close()


# ---- Cases: thread mode ---------------------------------------------------

def case_thread_200_clients():
    many_clients(["--mode", "thread"], 200, 16 * 1024)


def case_thread_no_cap():
    """Without --threads every client is served at once: 300 clients (more
    than uvs's default cap of 256 workers) all hold their connections open
    and each gets its echo while all are open."""
    n = 300
    with Server("--mode", "thread", "--quiet") as srv:
        socks = []
        try:
            for i in range(n):
                socks.append(connect(srv.port))
            for i, s in enumerate(socks):
                s.sendall(b"client %d\n" % i)
            for i, s in enumerate(socks):
                want = b"client %d\n" % i
                got = recv_exact(s, len(want))
                check(got == want, "client %d got %r" % (i, got))
        finally:
            for s in socks:
                s.close()


def case_threads_cap_fifo():
    """--threads 2: two clients are served, the others wait (their bytes
    are not echoed), and each close lets the next in arrival order in."""
    with Server("--mode", "thread", "--threads", "2", "--quiet") as srv:
        socks = []
        try:
            for i in range(6):
                s = connect(srv.port)
                socks.append(s)
                s.sendall(b"%d" % i)
                time.sleep(0.05)  # so that arrival order is index order
            for i in (0, 1):
                check(recv_exact(socks[i], 1) == b"%d" % i,
                      "client %d not served" % i)
            check_silent(socks[2:], 0.3, "with 2 threads busy")
            for i in range(2, 6):
                socks[i - 2].close()
                check(recv_exact(socks[i], 1) == b"%d" % i,
                      "client %d not served after client %d closed"
                      % (i, i - 2))
                check_silent(socks[i + 1:], 0.1,
                             "after client %d closed" % (i - 2))
            for i in (4, 5):
                socks[i].sendall(b"more")
                check(recv_exact(socks[i], 4) == b"more",
                      "client %d: second echo" % i)
        finally:
            for s in socks:
                s.close()


# ---- Cases: sync mode -----------------------------------------------------

def case_sync_one_at_a_time():
    with Server("--mode", "sync") as srv:
        a = connect(srv.port)
        b = None
        try:
            a.sendall(b"first")
            check(recv_exact(a, 5) == b"first", "first client's echo")
            b = connect(srv.port)
            b.sendall(b"second")
            check_silent([b], 0.5, "second client while the first is open")
            a.sendall(b"again")
            check(recv_exact(a, 5) == b"again", "first client's 2nd echo")
            check_silent([b], 0.2, "second client while the first is open")
            a.close()
            check(recv_exact(b, 6) == b"second",
                  "second client not served after the first closed")
            b.sendall(b"more")
            check(recv_exact(b, 4) == b"more", "second client's 2nd echo")
        finally:
            a.close()
            if b is not None:
                b.close()


def case_sync_backlog_after_signal():
    """A client waiting in the backlog when the signal comes is closed,
    never served, while the client being served goes on until it closes."""
    with Server("--mode", "sync", "--drain", "10") as srv:
        a = connect(srv.port)
        b = None
        try:
            a.sendall(b"a")
            check(recv_exact(a, 1) == b"a", "first client's echo")
            b = connect(srv.port)
            b.sendall(b"b")
            check_silent([b], 0.3, "waiting client before the signal")
            srv.signal(signal.SIGTERM)
            time.sleep(0.3)
            check(srv.proc.poll() is None, "exited while a client is open")
            a.sendall(b"after")
            check(recv_exact(a, 5) == b"after", "echo after the signal")
            a.close()
            expect_closed_unserved(b, "waiting client")
            status, _ = srv.wait(2.0)
            check(status == 0, "exit %r (None: still running) after the "
                  "served client closed" % status)
        finally:
            a.close()
            if b is not None:
                b.close()


def case_sync_sigterm_mid_stream():
    """SIGTERM while the one client streams: it is served to its end
    (EOF after every byte), then the server exits 0."""
    with Server("--mode", "sync", "--drain", "10") as srv:
        data = payload(4 * MiB, 4)
        s = connect(srv.port)
        errors = []

        def writer():
            try:
                view = memoryview(data)
                for off in range(0, len(data), 64 * 1024):
                    s.sendall(view[off:off + 64 * 1024])
                    if off == MiB:
                        srv.signal(signal.SIGTERM)
                    time.sleep(0.002)
                s.shutdown(socket.SHUT_WR)
            except Exception as e:
                errors.append(repr(e))

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        try:
            got = recv_until_eof(s, len(data), timeout=30)
        finally:
            t.join(TIMEOUT)
            s.close()
        check(not errors, "writer: %s" % errors)
        same(got, data, "echo across the signal")
        status, _ = srv.wait(2.0)
        check(status == 0, "exit %r (None: still running) after the "
              "client closed" % status)


CASES = [
    ("listening line format", case_listening_line),
    ("--flag=value form", case_listen_equals_form),
    ("--threads=N before --mode=thread", case_threads_equals_form_any_order),
    ("IPv6 [::1] listening line and echo", case_ipv6_listening_line),
    ("--help", case_help),
    ("unknown flag exits 2", case_unknown_flag),
    ("--listen without value exits 2", case_listen_without_value),
    ("address without port exits 2", case_bad_address_no_port),
    ("nonsense address exits 2", case_bad_address_nonsense),
    ("--mode fork not supported yet", case_mode_fork_not_supported),
    ("--mode bogus exits 2", case_mode_bogus),
    ("--max-conns, --idle-timeout not supported yet",
     case_later_flags_not_supported),
    ("bad --threads values exit 2", case_bad_threads),
    ("--threads without --mode thread exits 2",
     case_threads_needs_thread_mode),
    ("udp:// not supported yet", case_udp_not_supported),
    ("bad --drain values exit 2", case_bad_drain),
    ("address in use exits 1", case_address_in_use),
]

MODE_CASES = [
    ("echo of all 256 byte values", case_echo_all_byte_values),
    ("8 MiB echo, concurrent writer and reader", case_echo_8mib_concurrent),
    ("half-close: 1 MiB back then EOF", case_half_close),
    ("50 concurrent clients x 64 KiB", case_50_clients),
    ("backpressure for a client that does not read", case_backpressure),
    ("SIGTERM with no clients exits 0", case_sigterm_no_clients),
    ("SIGINT with no clients exits 0", case_sigint_no_clients),
    ("SIGTERM drains open clients, refuses new", case_sigterm_drain),
    ("second SIGTERM exits at once, nonzero", case_second_signal),
    ("last client closing ends the drain", case_client_closes_during_drain),
    ("the drain ends for a client that does not read",
     case_drain_ends_for_stuck_client),
]

for _mode in MODES:
    for _name, _fn in MODE_CASES:
        CASES.append(("%s [%s]" % (_name, _mode),
                      functools.partial(_fn, _mode)))

CASES += [
    ("200 concurrent clients [thread]", case_thread_200_clients),
    ("no thread cap: 300 clients open at once [thread]", case_thread_no_cap),
    ("--threads 2: 6 clients wait their turn in order [thread]",
     case_threads_cap_fifo),
    ("one client at a time [sync]", case_sync_one_at_a_time),
    ("client waiting in the backlog at SIGTERM is not served [sync]",
     case_sync_backlog_after_signal),
    ("SIGTERM mid-stream: the client is served to its end [sync]",
     case_sync_sigterm_mid_stream),
]


def main():
    global EXE
    if len(sys.argv) != 2:
        sys.stderr.write("usage: test_echo.py /path/to/uvs-echo\n")
        return 2
    EXE = os.path.abspath(sys.argv[1])
    only = os.environ.get("TEST_ECHO_ONLY")  # substring of a case name
    cases = [c for c in CASES if only is None or only in c[0]]
    print("1..%d" % len(cases), flush=True)
    failed = 0
    for n, (name, fn) in enumerate(cases, 1):
        start = time.monotonic()
        try:
            fn()
        except Skip as e:
            print("ok %d - %s # SKIP %s" % (n, name, e), flush=True)
            continue
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            failed += 1
            print("not ok %d - %s" % (n, name))
            for line in traceback.format_exc().rstrip().splitlines():
                print("# " + line)
            sys.stdout.flush()
            continue
        print("ok %d - %s (%.2f s)" % (n, name, time.monotonic() - start),
              flush=True)
    if failed:
        print("# %d of %d failed" % (failed, len(cases)), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
