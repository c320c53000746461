#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Contract test for uvs-echo (DESIGN.md section 4), stdlib only.

Usage: test_echo.py /path/to/uvs-echo

The stream echo and signal cases run in each mode (event, thread, sync,
fork), over TCP and over a Unix stream socket; the datagram cases (udp://,
unixgram:) run in each mode too; a few more check what only thread mode (a
worker per client, --threads caps them), sync mode (one client at a time)
or fork mode (a child process per client, which the drain waits for and
no child outlives) promises. Every case starts its own server on port 0
or in a private temporary directory, reads the listening line, and kills
the server by pid when it ends; then no process the server forked may be
left (this script makes itself the reaper of the server's orphans, where
Linux allows, to see them). Every socket operation has a timeout. Prints
TAP and exits 1 when a case fails.
"""

import functools
import os
import random
import select
import shutil
import signal
import socket
import stat
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import demo_server  # noqa: E402 (the folder of this script)
from demo_server import (Skip, check, check_no_orphans,  # noqa: E402
                         children_of, expand_listen, listening_regex, live,
                         short_tempdir, sockaddr, TIMEOUT)

EXE = None
MiB = 1024 * 1024
TCP = "tcp://127.0.0.1:0"
UNIX = "unix:{tmp}/echo.sock"  # {tmp}: a private directory per server
FLAGS = ["--listen", "--mode", "--threads", "--max-conns", "--idle-timeout",
         "--drain", "--quiet", "--help"]


# ---- Server processes -----------------------------------------------------

class Server(demo_server.DemoServer):
    """A running uvs-echo; use as a context manager (always killed; then,
    unless the case failed already, no process it forked may be left).
    `listen` may hold "{tmp}", replaced by a new private directory that is
    removed with the server."""

    def __init__(self, *args, listen=TCP, env=None, session=False):
        listen, tmpdir = expand_listen(listen)
        argv = [EXE] + (["--listen", listen] if listen else []) + list(args)
        super().__init__(argv, listening_regex(listen or TCP), env=env,
                         tmpdir=tmpdir, session=session)
        self.seen = {}  # children seen while it ran (see children)

    def children(self):
        """The server's child processes now, zombies included; each is
        remembered for the check at exit."""
        now = children_of(self.pid)
        self.seen.update(now)
        return now

    def __exit__(self, *exc):
        super().__exit__(*exc)
        if exc[0] is None:
            check_no_orphans("after the server exited", self.seen)
        return False


def run_usage(*args):
    """Runs uvs-echo to completion; returns (status, stdout, stderr)."""
    return demo_server.run_usage(EXE, *args)


def expect_usage_error(*args, status=2):
    return demo_server.expect_usage_error(EXE, *args, status=status)


# ---- Clients --------------------------------------------------------------

def connect(target, host="127.0.0.1"):
    """A stream connection to `target`: a port on `host`, or a demo
    address (Server.target gives the right one)."""
    if isinstance(target, int):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        addr = (host, target)
    else:
        family, kind, addr = sockaddr(target)
        check(kind == socket.SOCK_STREAM, "%s is not a stream" % target)
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    try:
        s.connect(addr)
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


def echo_stream(target, data, half_close=True, host="127.0.0.1"):
    """Sends `data` from a writer thread while reading the echo; with
    half_close the writer then shuts down its side and the echo must end
    in EOF right after len(data) bytes. Returns the bytes received."""
    errors = []
    s = connect(target, host)

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
    with Server(listen="tcp://[::1]:0") as srv:
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
    check("not supported" not in text, "--help still says 'not supported'")
    for word in ("SIGUSR1", "stats:", "datagram"):
        check(word in text, "--help does not mention %s" % word)
    for scheme in ("tcp://", "udp://", "unix:", "unixgram:", "@NAME",
                   "65507"):
        check(scheme in text, "--help does not mention %s" % scheme)


def case_unknown_flag():
    expect_usage_error("--bogus")


def case_listen_without_value():
    expect_usage_error("--listen")


def case_bad_address_no_port():
    expect_usage_error("--listen", "tcp://127.0.0.1")


def case_bad_address_nonsense():
    expect_usage_error("--listen", "nonsense")


def case_mode_bogus():
    expect_usage_error("--listen", "tcp://127.0.0.1:0", "--mode", "bogus")


def case_bad_limits():
    for value in ("0", "x", "", "-1", "+2", " 2", "1.5", "0x10",
                  "4294967296"):
        err = expect_usage_error("--listen", "tcp://127.0.0.1:0",
                                 "--max-conns", value)
        check(b"--max-conns" in err, "--max-conns %r: message %r"
              % (value, err))
    for value in ("0", "0.0001", "-1", "abc", "", "1x", "nan"):
        err = expect_usage_error("--listen", "tcp://127.0.0.1:0",
                                 "--idle-timeout", value)
        check(b"--idle-timeout" in err, "--idle-timeout %r: message %r"
              % (value, err))
    expect_usage_error("--listen", "tcp://127.0.0.1:0", "--max-conns")


def case_limits_on_datagrams(mode):
    """--max-conns and --idle-timeout have no effect on a datagram
    address: the server starts, answers more datagrams than the limit from
    more senders, also after the idle time, and exits 0."""
    for listen in (udp_listen("127.0.0.1"), UNIXGRAM):
        with Server("--max-conns", "1", "--idle-timeout", "0.2",
                    *mode_args(mode), listen=listen) as srv:
            clients = [dgram_client(srv) for _ in range(3)]
            try:
                for rnd in range(2):
                    if rnd > 0:
                        time.sleep(0.3)  # past the idle time
                    for i, (s, dest) in enumerate(clients):
                        data = b"round %d client %d" % (rnd, i)
                        same(dgram_roundtrip(s, dest, data), data,
                             "datagram echo")
            finally:
                for s, _ in clients:
                    s.close()
            check(srv.read_stderr() == b"", "stderr: %r" % srv.read_stderr())
            stop_and_check_clean(srv)


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
                 ["--mode", "fork", "--threads", "4"],
                 ["--threads=1", "--mode=fork"],
                 ["--threads", "4", "--mode", "thread", "--mode", "sync"]):
        err = expect_usage_error("--listen", "tcp://127.0.0.1:0", *args)
        check(b"--threads" in err and b"--mode thread" in err,
              "%s: message %r" % (" ".join(args), err))


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

MODES = ("event", "thread", "sync", "fork")


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


def expect_refused(srv):
    """After the first signal the listener is closed: a new client is
    refused (unix: the socket file is gone too)."""
    try:
        s = connect(srv.target)
    except (ConnectionRefusedError, FileNotFoundError):
        return
    s.close()
    raise AssertionError("a new client connected after the signal")


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

def case_echo_all_byte_values(mode, listen=TCP):
    with Server(*mode_args(mode), listen=listen) as srv:
        s = connect(srv.target)
        try:
            data = bytes(range(256))
            s.sendall(data)
            same(recv_exact(s, len(data)), data, "256 byte values")
        finally:
            s.close()


def case_echo_8mib_concurrent(mode, listen=TCP):
    with Server(*mode_args(mode), listen=listen) as srv:
        data = payload(8 * MiB, 8)
        same(echo_stream(srv.target, data, half_close=False), data, "8 MiB")


def case_half_close(mode, listen=TCP):
    with Server(*mode_args(mode), listen=listen) as srv:
        data = payload(MiB, 1)
        same(echo_stream(srv.target, data, half_close=True), data,
             "1 MiB then EOF")


def many_clients(args, n, size, listen=TCP):
    """n clients at once, each echoing `size` bytes then EOF."""
    with Server("--quiet", *args, listen=listen) as srv:
        results = {}

        def client(i):
            try:
                data = payload(size, 100 + i)
                same(echo_stream(srv.target, data), data, "client %d" % i)
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


def case_50_clients(mode, listen=TCP):
    many_clients(mode_args(mode), 50, 64 * 1024, listen)


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


def case_backpressure(mode, listen=TCP):
    """A client that sends but never reads: the server must stop reading
    (the client's send blocks well before 64 MiB) without its memory
    growing, then echo all of it once the client reads."""
    with Server(*mode_args(mode), listen=listen,
                env=small_asan_quarantine()) as srv:
        # A first client warms the server up (in thread mode: starts the
        # worker, which then stays idle), so the baseline below counts
        # memory that grows with the bytes, not one-time costs.
        data = payload(MiB, 6)
        same(echo_stream(srv.target, data), data, "warm-up echo")
        base = rss_bytes(srv.pid)
        s = connect(srv.target)
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

def stop_with_no_clients(mode, signum, listen):
    with Server(*mode_args(mode), listen=listen) as srv:
        srv.signal(signum)
        status, took = srv.wait(2.0)
        check(status == 0, "exit %r after %s" % (status, signum))
        check(took < 2.0, "took %.2f s" % took)


def case_sigterm_no_clients(mode, listen=TCP):
    stop_with_no_clients(mode, signal.SIGTERM, listen)


def case_sigint_no_clients(mode, listen=TCP):
    stop_with_no_clients(mode, signal.SIGINT, listen)


def case_sigterm_drain(mode, listen=TCP):
    with Server("--drain", "1", *mode_args(mode), listen=listen) as srv:
        a = connect(srv.target)
        try:
            a.sendall(b"before")
            check(recv_exact(a, 6) == b"before", "echo before the signal")
            t0 = time.monotonic()
            srv.signal(signal.SIGTERM)
            time.sleep(0.3)
            check(srv.proc.poll() is None, "exited while a client is open")
            expect_refused(srv)
            # The open client is still served.
            a.sendall(b"after")
            check(recv_exact(a, 5) == b"after", "echo after the signal")
            # At the deadline the server closes it: EOF. The client closes
            # in turn, as a client should, and the server exits.
            recv_until_eof(a, 0, timeout=8.0)
            closed = time.monotonic() - t0
            a.close()
            status, _ = srv.wait(2.0)
            took = time.monotonic() - t0
            check(status == 0, "exit %r after the drain" % status)
            check(0.8 <= closed <= 2.0, "closed %.2f s after SIGTERM, want "
                  "about 1" % closed)
            check(took <= closed + 1.0, "exited %.2f s after SIGTERM, %.2f s "
                  "after the client closed" % (took, took - closed))
        finally:
            a.close()


def case_second_signal(mode, listen=TCP):
    with Server("--drain", "10", *mode_args(mode), listen=listen) as srv:
        a = connect(srv.target)
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


def case_drain_ends_for_stuck_client(mode, listen=TCP):
    """A client that sends but stops reading holds the server's output
    (and, in sync mode, a blocked send); the drain still ends on time."""
    with Server("--drain", "0.5", "--quiet", *mode_args(mode),
                listen=listen) as srv:
        s = connect(srv.target)
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
                _, w, _ = select.select([], [s], [], 0.5)
                if not w:
                    break  # the server stopped reading: it is blocked
            check(sent < 256 * MiB, "sent %d MiB without blocking"
                  % (sent // MiB))
            t0 = time.monotonic()
            srv.signal(signal.SIGTERM)
            status, _ = srv.wait(7.0)
            took = time.monotonic() - t0
            check(status == 0, "exit %r (None: still running) after the "
                  "drain" % status)
            # The deadline closes it gracefully: its queued output is
            # flushed, which the client does not read, for close_linger
            # (2 s) at most; then it is reset.
            check(0.3 <= took <= 0.5 + 2.0 + 1.5, "exited %.2f s after "
                  "SIGTERM, want about 0.5 (plus 2)" % took)
        finally:
            s.close()


def case_client_closes_during_drain(mode, listen=TCP):
    with Server("--drain", "10", *mode_args(mode), listen=listen) as srv:
        a = connect(srv.target)
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


# ---- Cases: limits, timeouts, counters, drains under load -----------------

def expect_eof_at_once(s, what, bound=2.0):
    """The server closes `s` without serving it: its FIN arrives within
    `bound` seconds, so recv returns b'' (no data, no reset, no hang in
    the backlog)."""
    s.settimeout(bound)
    try:
        data = s.recv(64)
    except socket.timeout:
        raise AssertionError("%s: not closed within %.1f s" % (what, bound))
    check(data == b"", "%s: served: %r" % (what, data))


def echo_roundtrip(s, data, what):
    s.sendall(data)
    same(recv_exact(s, len(data)), data, what)


def close_after_eof(s, what):
    """Ends a client as it should: half-close, read the server's EOF, then
    close, so that the server has seen the whole end."""
    s.shutdown(socket.SHUT_WR)
    check(recv_until_eof(s, 0) == b"", "%s: bytes before EOF" % what)
    s.close()


def connect_served(srv, what, timeout=3.0):
    """A new client that is served, after one has closed. The server takes
    a moment to count a closed connection out (fork mode: to reap its
    child), so a client refused meanwhile (EOF or a reset) is retried, for
    `timeout` seconds at most. Returns the socket, one echo done."""
    deadline = time.monotonic() + timeout
    while True:
        s = connect(srv.target)
        try:
            s.sendall(b"hello?")
            got = recv_exact(s, 6, timeout=2.0)
        except (AssertionError, OSError) as e:
            s.close()
            check(time.monotonic() < deadline, "%s: not served within %.1f "
                  "s: %s" % (what, timeout, e))
            time.sleep(0.05)
            continue
        check(got == b"hello?", "%s: got %r" % (what, got))
        return s


def case_max_conns(mode, listen=TCP):
    """--max-conns 3: three clients are served; a fourth is accepted and
    closed at once (EOF within 2 s) while the three go on; after one of
    them has closed, a new client is served."""
    n = 3
    with Server("--max-conns", str(n), "--quiet", *mode_args(mode),
                listen=listen) as srv:
        socks = []
        try:
            for i in range(n):
                socks.append(connect(srv.target))
                echo_roundtrip(socks[i], b"client %d" % i, "client %d" % i)
            for k in range(2):
                extra = connect(srv.target)
                try:
                    expect_eof_at_once(extra, "client past the limit")
                finally:
                    extra.close()
            for i, s in enumerate(socks):
                echo_roundtrip(s, b"still %d" % i, "client %d after the "
                               "refusals" % i)
            st = srv.stats()
            check(st["rejected_limit"] == 2, "stats: %r" % st)
            close_after_eof(socks.pop(0), "client 0")
            socks.append(connect_served(srv, "client after one closed"))
            for i, s in enumerate(socks):
                echo_roundtrip(s, b"again %d" % i, "client %d at the end" % i)
        finally:
            for s in socks:
                s.close()


def case_sync_max_conns(listen=TCP):
    """Sync mode serves one client at a time and accepts nobody while it
    does, so --max-conns 1 closes nobody: the next client waits in the
    backlog, unserved, and is served (not refused) once the first ends."""
    with Server("--mode", "sync", "--max-conns", "1", "--quiet",
                listen=listen) as srv:
        a = connect(srv.target)
        b = c = None
        try:
            echo_roundtrip(a, b"first", "first client")
            b = connect(srv.target)
            b.sendall(b"second")
            c = connect(srv.target)
            c.sendall(b"third")
            check_silent([b, c], 0.5, "clients while the first is served")
            echo_roundtrip(a, b"more", "first client again")
            close_after_eof(a, "first client")
            check(recv_exact(b, 6) == b"second", "second client not served "
                  "after the first closed")
            check_silent([c], 0.3, "third client while the second is served")
            close_after_eof(b, "second client")
            check(recv_exact(c, 5) == b"third", "third client not served")
            st = srv.stats()
            check(st["rejected_limit"] == 0 and st["accepted"] == 3,
                  "stats: %r" % st)
        finally:
            for s in (a, b, c):
                if s is not None:
                    s.close()


IDLE = 0.5  # --idle-timeout in the idle cases, seconds


def case_idle_timeout(mode, listen=TCP):
    """--idle-timeout: a client that sends every IDLE/3 seconds stays
    served for twice IDLE; a silent one is closed (EOF) about IDLE
    after it connected, and counted as a timeout. One client at a time, so
    that sync mode runs the same case."""
    with Server("--idle-timeout", str(IDLE), "--quiet", *mode_args(mode),
                listen=listen) as srv:
        active = connect(srv.target)
        try:
            for i in range(6):  # 2 * IDLE
                echo_roundtrip(active, b"tick %02d" % i, "active client")
                time.sleep(IDLE / 3)
            close_after_eof(active, "active client")
        finally:
            active.close()
        silent = connect(srv.target)
        try:
            t0 = time.monotonic()
            expect_eof_at_once(silent, "silent client", bound=IDLE + 3.0)
            took = time.monotonic() - t0
            check(IDLE - 0.15 <= took <= IDLE + 1.0, "closed %.2f s after "
                  "connecting, want about %.1f" % (took, IDLE))
        finally:
            silent.close()
        # The silent client was closed, the active one was not.
        if mode != "fork":  # a child's timeouts are its own (uvs_stats_t)
            st = srv.stats()
            check(st["timeouts"] == 1, "stats: %r" % st)
        echo_once(srv)


def case_stats(mode, listen=TCP):
    """SIGUSR1 prints one counters line with the right counts after a known
    exchange (fork mode: the parent sees connections and children, not
    their bytes), also while a client is being served, and the server
    goes on serving."""
    with Server(*mode_args(mode), listen=listen) as srv:
        st = srv.stats()
        check(all(v == 0 for v in st.values()), "stats at start: %r" % st)
        sizes = (1000, 70000)
        for i, size in enumerate(sizes):
            data = payload(size, 60 + i)
            same(echo_stream(srv.target, data), data, "client %d" % i)
        # The server counts a connection out a moment after the client's
        # EOF (fork mode: once the child is reaped).
        deadline = time.monotonic() + TIMEOUT
        while True:
            st = srv.stats()
            if st["active"] == 0 and st["children"] == 0:
                break
            check(time.monotonic() < deadline, "still open: %r" % st)
            time.sleep(0.05)
        check(st["accepted"] == 2, "stats: %r" % st)
        if mode != "fork":
            check(st["bytes_in"] == st["bytes_out"] == sum(sizes),
                  "bytes: %r, want %d each" % (st, sum(sizes)))
        for k in ("rejected_verify", "rejected_limit", "handler_errors",
                  "conn_errors", "timeouts", "accept_errors",
                  "datagrams_oversize", "datagrams_dropped"):
            check(st[k] == 0, "%s: %r" % (k, st))
        # While a client is served (sync mode: the loop is in its handler).
        s = connect(srv.target)
        try:
            echo_roundtrip(s, b"open", "open client")
            st = srv.stats(timeout=2.0)
            check(st["accepted"] == 3, "stats: %r" % st)
            if mode == "fork":
                check(st["children"] == 1, "stats: %r" % st)
            else:
                check(st["active"] == 1 and st["bytes_in"] == sum(sizes) + 4,
                      "stats: %r" % st)
            echo_roundtrip(s, b"served on", "open client after SIGUSR1")
        finally:
            s.close()
        check(srv.proc.poll() is None, "exited after SIGUSR1")


def case_sigterm_under_load(mode, listen=TCP):
    """8 clients stream data; SIGTERM comes while they are at it; each
    then sends the rest, shuts down its side and reads until EOF: it gets
    back exactly every byte it sent, in order. A new client is refused
    after the signal, and the server exits 0 once the clients are done."""
    n = 8
    size = 512 * 1024
    with Server("--drain", "10", "--quiet", *mode_args(mode),
                listen=listen) as srv:
        halfway = threading.Barrier(n + 1, timeout=TIMEOUT)
        signalled = threading.Event()
        results = {}

        def client(i):
            data = payload(size, 200 + i)
            errors = []
            try:
                s = connect(srv.target)
            except Exception as e:
                results[i] = "connect: %r" % e
                halfway.abort()
                return

            def writer():
                try:
                    view = memoryview(data)
                    for off in range(0, size, 8192):
                        if off == size // 2:
                            halfway.wait()
                            signalled.wait(TIMEOUT)
                        s.sendall(view[off:off + 8192])
                    s.shutdown(socket.SHUT_WR)
                except Exception as e:
                    errors.append(repr(e))
                    halfway.abort()

            t = threading.Thread(target=writer, daemon=True)
            t.start()
            try:
                got = recv_until_eof(s, size, timeout=30)
                same(got, data, "client %d" % i)
                t.join(TIMEOUT)
                check(not errors, "client %d writer: %s" % (i, errors))
                results[i] = None
            except Exception as e:
                results[i] = repr(e)
                halfway.abort()
            finally:
                t.join(TIMEOUT)
                s.close()

        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(n)]
        for t in threads:
            t.start()
        try:
            halfway.wait()
            srv.signal(signal.SIGTERM)
            time.sleep(0.3)
            expect_refused(srv)
        finally:
            signalled.set()
            deadline = time.monotonic() + 30
            for t in threads:
                t.join(max(0.01, deadline - time.monotonic()))
        bad = {i: r for i, r in results.items() if r is not None}
        check(len(results) == n, "%d of %d clients finished"
              % (len(results), n))
        check(not bad, "failed clients: %s" % bad)
        status, _ = srv.wait(5.0)
        check(status == 0, "exit %r (None: still running) after the clients "
              "ended" % status)


def case_drain_deadline(mode, listen=TCP):
    """A client still sending and reading at the --drain deadline: every
    byte it sent before the deadline comes back before the close, then
    EOF; the server exits 0 about --drain after the signal (plus
    close_linger, 2 s, at most)."""
    drain = 1.0
    with Server("--drain", str(drain), "--quiet", *mode_args(mode),
                listen=listen) as srv:
        s = connect(srv.target)
        data = payload(4 * MiB, 300)
        marks = []  # (time, bytes sent by then)
        stop = threading.Event()
        errors = []

        def writer():
            sent = 0
            try:
                while not stop.is_set() and sent + 1024 <= len(data):
                    s.sendall(data[sent:sent + 1024])
                    sent += 1024
                    marks.append((time.monotonic(), sent))
                    time.sleep(0.01)
            except OSError:
                pass  # the server has closed: fine after the deadline
            except Exception as e:
                errors.append(repr(e))

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        got = bytearray()
        end = None
        try:
            time.sleep(0.3)
            t0 = time.monotonic()
            srv.signal(signal.SIGTERM)
            deadline = time.monotonic() + drain + 6.0
            while end is None:
                check(time.monotonic() < deadline, "no end after %d bytes"
                      % len(got))
                if time.monotonic() > t0 + drain + 0.5:
                    stop.set()  # the server reads no more
                r, _, _ = select.select([s], [], [], 0.1)
                if not r:
                    continue
                try:
                    chunk = s.recv(1 << 16)
                except ConnectionResetError:
                    end = "reset"
                    break
                if chunk == b"":
                    end = "EOF"
                else:
                    got += chunk
            ended = time.monotonic() - t0
        finally:
            stop.set()
            t.join(TIMEOUT)
            s.close()
        check(not errors, "writer: %s" % errors)
        same(bytes(got), data[:len(got)], "echo up to the close")
        before = max([b for tm, b in marks if tm < t0 + drain - 0.2] or [0])
        check(len(got) >= before, "%d bytes back, but %d were sent before "
              "the deadline" % (len(got), before))
        check(end == "EOF", "the connection ended with a %s" % end)
        check(drain - 0.2 <= ended <= drain + 3.5, "closed %.2f s after "
              "SIGTERM, want about %.1f" % (ended, drain))
        status, _ = srv.wait(5.0)
        took = time.monotonic() - t0
        check(status == 0, "exit %r (None: still running)" % status)
        check(took <= drain + 2.0 + 1.5, "exited %.2f s after SIGTERM, want "
              "about %.1f (plus 2)" % (took, drain))


# ---- Cases: Unix sockets, in every mode ----------------------------------

UNIXGRAM = "unixgram:{tmp}/echo.sock"


def unix_listen(scheme):
    return UNIX if scheme == "unix" else UNIXGRAM


def is_socket_file(path):
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def unique_abstract_name(what):
    return "@uvs-test-echo-%s-%d-%d" % (what, os.getpid(),
                                         random.randrange(1 << 30))


def echo_once(srv, data=b"ping\n"):
    """One echo over the server's transport, stream or datagram."""
    if sockaddr(srv.address)[1] == socket.SOCK_STREAM:
        same(echo_stream(srv.target, data), data, "echo")
        return
    s, dest = dgram_client(srv)
    try:
        same(dgram_roundtrip(s, dest, data), data, "datagram echo")
    finally:
        s.close()


def stop_and_check_clean(srv, signum=signal.SIGTERM):
    """The signal ends the server with 0 at once (nothing is open), with
    nothing more on stdout, and its socket file is gone."""
    path = srv.path
    srv.signal(signum)
    status, took = srv.wait(TIMEOUT)
    check(status == 0, "exit %r after signal %d; stderr %r"
          % (status, signum, srv.read_stderr()))
    check(took < 2.0, "took %.2f s to exit" % took)
    rest = srv.rest_of_stdout()
    check(rest == b"", "more on stdout after the line: %r" % rest)
    if path is not None:
        check(not os.path.lexists(path), "%s left after exit" % path)


def case_socket_file_removed(mode, scheme):
    """unix:PATH and unixgram:PATH make a socket file at PATH, print the
    path as given, and remove the file when the server exits (SIGTERM)."""
    with Server(*mode_args(mode), listen=unix_listen(scheme)) as srv:
        check(is_socket_file(srv.path), "no socket file at %s" % srv.path)
        echo_once(srv)
        stop_and_check_clean(srv)


def case_stale_socket_replaced(mode, scheme):
    """A socket file nobody is bound to any more (a crashed server's) is
    replaced: the server starts and serves there."""
    d = short_tempdir()
    try:
        path = os.path.join(d, "stale.sock")
        kind = socket.SOCK_STREAM if scheme == "unix" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_UNIX, kind) as old:
            old.bind(path)
            if kind == socket.SOCK_STREAM:
                old.listen(1)
        check(is_socket_file(path), "the stale socket file was not made")
        with Server(*mode_args(mode), listen="%s:%s" % (scheme, path)) as srv:
            echo_once(srv, b"after a stale file\n")
            stop_and_check_clean(srv)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def case_live_socket_kept():
    """A socket somebody still serves on is never taken over: exit 1, one
    line, and the other server keeps its file and its clients."""
    d = short_tempdir()
    try:
        for scheme, kind in (("unix", socket.SOCK_STREAM),
                             ("unixgram", socket.SOCK_DGRAM)):
            path = os.path.join(d, scheme + ".sock")
            with socket.socket(socket.AF_UNIX, kind) as live:
                live.bind(path)
                if kind == socket.SOCK_STREAM:
                    live.listen(4)
                for mode in MODES:
                    expect_usage_error("--listen", "%s:%s" % (scheme, path),
                                       "--mode", mode, status=1)
                check(is_socket_file(path), "%s: the live file is gone"
                      % scheme)
                with socket.socket(socket.AF_UNIX, kind) as c:
                    c.settimeout(TIMEOUT)
                    c.connect(path)  # still the live socket's
    finally:
        shutil.rmtree(d, ignore_errors=True)


def case_regular_file_kept():
    """A PATH that is not a socket is never removed: the server exits 1
    with one clear line, and the file is as it was."""
    d = short_tempdir()
    try:
        path = os.path.join(d, "precious.txt")
        content = b"not a socket\n"
        with open(path, "wb") as f:
            f.write(content)
        for scheme in ("unix", "unixgram"):
            for mode in MODES:
                err = expect_usage_error("--listen", "%s:%s" % (scheme, path),
                                         "--mode", mode, status=1)
                check(b"not a socket" in err and path.encode() in err,
                      "%s [%s]: message %r" % (scheme, mode, err))
                st = os.lstat(path)
                check(stat.S_ISREG(st.st_mode), "%s is no longer a regular "
                      "file" % path)
                with open(path, "rb") as f:
                    check(f.read() == content, "%s was changed" % path)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def case_unix_abstract(mode):
    """unix:@NAME and unixgram:@NAME: Linux abstract names, no file."""
    if not sys.platform.startswith("linux"):
        raise Skip("abstract names are Linux only")
    name = unique_abstract_name("stream")
    with Server(*mode_args(mode), listen="unix:" + name) as srv:
        data = payload(256 * 1024, 11)
        same(echo_stream(srv.target, data), data, "echo then EOF")
        stop_and_check_clean(srv)
    name = unique_abstract_name("dgram")
    with Server(*mode_args(mode), listen="unixgram:" + name) as srv:
        s, dest = dgram_client(srv)
        try:
            for n in (1, 1000, 65507):
                data = payload(n, n)
                same(dgram_roundtrip(s, dest, data), data,
                     "%d-byte datagram" % n)
        finally:
            s.close()
        stop_and_check_clean(srv)


# ---- Cases: datagrams, in every mode --------------------------------------

# Datagram sizes echoed byte for byte: around the usual MTU payloads, and
# the largest UDP payload over IPv4.
DGRAM_SIZES = (1, 2, 100, 1472, 1473, 8192, 32768, 65507)


def udp_listen(host):
    return "udp://%s:0" % host


def dgram_client(srv, bound=True):
    """A datagram socket for talking to `srv`, and the address to send
    to. A unixgram client binds a name (a file next to the server's
    socket, or an abstract name) unless `bound` is false: an unbound
    one cannot be answered."""
    family, kind, dest = sockaddr(srv.address)
    check(kind == socket.SOCK_DGRAM, "%s is not datagram" % srv.address)
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.settimeout(TIMEOUT)
        if family == socket.AF_UNIX and bound:
            name = "client-%d-%d" % (os.getpid(), random.randrange(1 << 30))
            if srv.path is not None:
                s.bind(os.path.join(os.path.dirname(srv.path),
                                    name + ".sock"))
            else:
                s.bind("\0uvs-test-echo-" + name)
    except BaseException:
        s.close()
        raise
    return s, dest


def recv_datagram(s, what, timeout=TIMEOUT):
    """The next datagram on `s` (and its sender), or a failure."""
    r, _, _ = select.select([s], [], [], timeout)
    check(r, "%s: no datagram within %.1f s" % (what, timeout))
    return s.recvfrom(1 << 17)


def dgram_roundtrip(s, dest, data):
    """Sends `data` to `dest` and returns the reply, which must come from
    `dest`."""
    s.sendto(data, dest)
    got, sender = recv_datagram(s, "reply to %d bytes" % len(data))
    if isinstance(dest, tuple):
        check(sender[1] == dest[1], "reply from port %r, want %r"
              % (sender[1], dest[1]))
    else:
        want = dest.encode() if dest.startswith("\0") else dest
        check(sender in (dest, want), "reply from %r, want %r"
              % (sender, dest))
    return got


def expect_no_datagram(s, wait, what):
    r, _, _ = select.select([s], [], [], wait)
    if r:
        got = s.recv(1 << 17)
        raise AssertionError("%s: got a %d-byte datagram %r"
                             % (what, len(got), got[:40]))


def dgram_echo_sizes(srv):
    """Each size in DGRAM_SIZES and all 256 byte values come back whole,
    then 40 datagrams with up to 5 in flight (thread mode may answer them
    out of order; none is lost on loopback)."""
    s, dest = dgram_client(srv)
    try:
        for n in DGRAM_SIZES:
            data = payload(n, 1000 + n)
            same(dgram_roundtrip(s, dest, data), data,
                 "%d-byte datagram" % n)
        data = bytes(range(256))
        same(dgram_roundtrip(s, dest, data), data, "256 byte values")
        want = [b"datagram %d " % i + payload(i * 37, i) for i in range(40)]
        got = []
        for i, data in enumerate(want):
            s.sendto(data, dest)
            if i >= 4:
                got.append(recv_datagram(s, "burst, reply %d" % len(got))[0])
        while len(got) < len(want):
            got.append(recv_datagram(s, "burst, reply %d" % len(got))[0])
        check(sorted(got) == sorted(want), "burst: %d of %d replies match"
              % (len(set(got) & set(want)), len(want)))
        expect_no_datagram(s, 0.1, "after the burst")
    finally:
        s.close()


def case_udp_echo(mode, host):
    if host.startswith("[") and not ipv6_available():
        raise Skip("no IPv6 loopback")
    with Server(*mode_args(mode), listen=udp_listen(host)) as srv:
        dgram_echo_sizes(srv)
        stop_and_check_clean(srv)


def case_unixgram_echo(mode):
    with Server(*mode_args(mode), listen=UNIXGRAM) as srv:
        dgram_echo_sizes(srv)
        stop_and_check_clean(srv)


def case_dgram_empty(mode, listen):
    """The contract sends each datagram back unchanged: event mode answers
    an empty datagram with an empty one. In thread and sync mode uvs sends
    nothing for an empty reply, so there is no answer (README)."""
    with Server(*mode_args(mode), listen=listen) as srv:
        s, dest = dgram_client(srv)
        try:
            s.sendto(b"", dest)
            if mode == "event":
                got, _ = recv_datagram(s, "reply to an empty datagram")
                check(got == b"", "empty datagram: got %r" % got[:40])
            else:
                expect_no_datagram(s, 0.5, "empty datagram [%s]" % mode)
            # The next reply is the next datagram's: no late empty one.
            same(dgram_roundtrip(s, dest, b"after"), b"after",
                 "datagram after the empty one")
            expect_no_datagram(s, 0.1, "after the echo")
        finally:
            s.close()
        check(srv.read_stderr() == b"", "stderr: %r" % srv.read_stderr())
        stop_and_check_clean(srv)


def case_unixgram_unbound(mode):
    """A client without a name cannot be answered: no reply, nothing
    printed for it (per datagram or otherwise), and the server goes on
    serving the others."""
    with Server(*mode_args(mode), listen=UNIXGRAM) as srv:
        u, dest = dgram_client(srv, bound=False)
        b, _ = dgram_client(srv)
        try:
            for data in (b"one", b"", payload(1000, 3), b"four"):
                u.sendto(data, dest)
            expect_no_datagram(u, 0.5, "unbound client")
            same(dgram_roundtrip(b, dest, b"still serving"), b"still serving",
                 "bound client after the unbound one")
            for i in range(20):
                u.sendto(b"more %d" % i, dest)
            same(dgram_roundtrip(b, dest, b"and now"), b"and now",
                 "bound client, again")
            expect_no_datagram(u, 0.2, "unbound client")
        finally:
            u.close()
            b.close()
        check(srv.read_stderr() == b"", "stderr: %r" % srv.read_stderr())
        stop_and_check_clean(srv)
        err = srv.read_stderr()
        check(err == b"", "stderr: %r" % err)


def case_dgram_signal(mode, listen):
    """A datagram server has nothing to drain: SIGTERM or SIGINT ends it
    at once with 0 even with --drain 10, also while datagrams keep
    coming."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        with Server("--drain", "10", "--quiet", *mode_args(mode),
                    listen=listen) as srv:
            echo_once(srv)
            s, dest = dgram_client(srv)
            stop = threading.Event()

            def flood():
                """About 2000 datagrams a second, replies unread."""
                while not stop.is_set():
                    for _ in range(10):
                        try:
                            s.sendto(b"flood", dest)
                        except OSError:
                            pass  # full, or the server is gone
                    time.sleep(0.005)

            t = threading.Thread(target=flood, daemon=True)
            t.start()
            try:
                time.sleep(0.2)
                check(srv.proc.poll() is None, "server died under a flood")
                stop_and_check_clean(srv, signum)
            finally:
                stop.set()
                t.join(TIMEOUT)
                s.close()


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


# ---- Cases: fork mode -----------------------------------------------------

def wait_children(srv, want, what, timeout=TIMEOUT):
    """Waits until the server has exactly `want` children, none of them a
    zombie (an unreaped child), and returns them."""
    deadline = time.monotonic() + timeout
    while True:
        kids = srv.children()
        alive = {pid: v for pid, v in kids.items() if v[0] != "Z"}
        if len(kids) == len(alive) == want:
            return alive
        if time.monotonic() >= deadline:
            raise AssertionError("%s: %d child processes (%d zombies), want "
                                 "%d" % (what, len(kids),
                                         len(kids) - len(alive), want))
        time.sleep(0.02)


def expect_cut_off(s, what, timeout=2.0):
    """The server side of `s` is gone: EOF or a reset, no more echo."""
    s.settimeout(timeout)
    try:
        data = s.recv(64)
    except socket.timeout:
        raise AssertionError("%s: connection still open after %.1f s"
                             % (what, timeout))
    except ConnectionResetError:
        data = b""
    check(data == b"", "%s: got %r" % (what, data))


def case_fork_clients(listen):
    """10 clients at once, each served by a child process of its own while
    all are open; each half-closes and gets its echo then EOF; the children
    are reaped as their clients go, while the server goes on."""
    n = 10
    with Server("--mode", "fork", listen=listen) as srv:
        socks = []
        try:
            for i in range(n):
                socks.append(connect(srv.target))
            for i, s in enumerate(socks):
                s.sendall(b"client %d\n" % i)
            for i, s in enumerate(socks):
                want = b"client %d\n" % i
                check(recv_exact(s, len(want)) == want,
                      "client %d: first echo" % i)
            kids = wait_children(srv, n, "%d clients open" % n)
            for i, s in enumerate(socks):
                s.sendall(b"last words %d" % i)
                s.shutdown(socket.SHUT_WR)
            for i, s in enumerate(socks):
                want = b"last words %d" % i
                same(recv_until_eof(s, len(want)), want,
                     "client %d after its half-close" % i)
        finally:
            for s in socks:
                s.close()
        wait_children(srv, 0, "after the clients closed")
        check(srv.proc.poll() is None, "the server exited")
        check(live(kids) == [], "children alive: %s" % live(kids))
        same(echo_stream(srv.target, b"one more\n"), b"one more\n",
             "a client after the others")
        stop_and_check_clean(srv)


def case_fork_drain(listen):
    """SIGTERM with --drain 10: accepting stops at once, the child of the
    client already connected goes on echoing it, and the server exits 0 as
    soon as that client closes, with no child left."""
    with Server("--mode", "fork", "--drain", "10", listen=listen) as srv:
        a = connect(srv.target)
        closed = False
        try:
            a.sendall(b"before")
            check(recv_exact(a, 6) == b"before", "echo before the signal")
            kids = wait_children(srv, 1, "one client")
            srv.signal(signal.SIGTERM)
            time.sleep(0.3)
            check(srv.proc.poll() is None, "exited while a client is open")
            check(sorted(live(kids)) == sorted(kids),
                  "the client's child died at the signal")
            expect_refused(srv)
            for i in range(3):
                a.sendall(b"after %d" % i)
                check(recv_exact(a, 7) == b"after %d" % i,
                      "echo %d after the signal" % i)
            a.sendall(b"bye")
            a.shutdown(socket.SHUT_WR)
            same(recv_until_eof(a, 3), b"bye", "echo then EOF")
            t0 = time.monotonic()
            a.close()
            closed = True
            status, _ = srv.wait(2.0)
            took = time.monotonic() - t0
            check(status == 0, "exit %r (None: still running) after the "
                  "client closed" % status)
            check(took < 2.0, "took %.2f s" % took)
            check_no_orphans("after the drain", kids)
            check(srv.read_stderr() == b"", "stderr: %r" % srv.read_stderr())
        finally:
            if not closed:
                a.close()


def case_fork_drain_runs_out(listen):
    """--drain 0.5 and a client that stays: at the deadline its child
    stops reading and closes the connection (the client sees it end), and
    the server exits 0 after about half a second."""
    with Server("--mode", "fork", "--drain", "0.5", "--quiet",
                listen=listen) as srv:
        a = connect(srv.target)
        try:
            a.sendall(b"x")
            check(recv_exact(a, 1) == b"x", "echo before the signal")
            kids = wait_children(srv, 1, "one client")
            t0 = time.monotonic()
            srv.signal(signal.SIGTERM)
            status, _ = srv.wait(5.0)
            took = time.monotonic() - t0
            check(status == 0, "exit %r (None: still running) after the "
                  "drain" % status)
            check(0.3 <= took <= 2.5, "exited %.2f s after SIGTERM, want "
                  "about 0.5" % took)
            expect_cut_off(a, "client after the drain")
            check_no_orphans("after the drain ran out", kids)
        finally:
            a.close()


def case_fork_second_signal(listen):
    """A second signal during the drain exits at once with 1, and the
    children die with the server rather than serve on as orphans."""
    with Server("--mode", "fork", "--drain", "10", listen=listen) as srv:
        a = connect(srv.target)
        try:
            a.sendall(b"x")
            check(recv_exact(a, 1) == b"x", "echo before the signal")
            kids = wait_children(srv, 1, "one client")
            srv.signal(signal.SIGTERM)
            time.sleep(0.3)
            check(srv.proc.poll() is None, "exited while a client is open")
            t0 = time.monotonic()
            srv.signal(signal.SIGINT)
            status, _ = srv.wait(1.0)
            took = time.monotonic() - t0
            check(status == 1, "second signal: exit %r, want 1" % status)
            check(took < 1.0, "took %.2f s" % took)
            expect_cut_off(a, "client after the second signal")
            check_no_orphans("after the second signal", kids)
        finally:
            a.close()


def case_fork_group_signal(signum):
    """Ctrl-C in a terminal sends SIGINT to the whole process group, the
    children too, and a service manager may send SIGTERM so: they go on
    serving their clients through the drain (the server alone ends them),
    and the server exits 0 when they are done."""
    with Server("--mode", "fork", "--drain", "10", session=True) as srv:
        a = connect(srv.target)
        closed = False
        try:
            a.sendall(b"x")
            check(recv_exact(a, 1) == b"x", "echo before the signal")
            kids = wait_children(srv, 1, "one client")
            os.killpg(srv.pid, signum)  # its own group (session)
            time.sleep(0.3)
            check(srv.proc.poll() is None, "exited while a client is open")
            check(sorted(live(kids)) == sorted(kids),
                  "the child died of the group's signal %d" % signum)
            a.sendall(b"still here")
            check(recv_exact(a, 10) == b"still here",
                  "echo after the group's signal %d" % signum)
            a.close()
            closed = True
            status, _ = srv.wait(2.0)
            check(status == 0, "exit %r (None: still running) after the "
                  "client closed" % status)
            check_no_orphans("after the group's signal %d" % signum, kids)
        finally:
            if not closed:
                a.close()


def case_fork_dgram(listen):
    """Each datagram is answered by a child of its own, from the server's
    address; the children are reaped at once, and SIGTERM ends the server
    with 0 and no child left."""
    with Server("--mode", "fork", listen=listen) as srv:
        s, dest = dgram_client(srv)
        try:
            want = [b"fork %d " % i + payload(i * 101, i) for i in range(30)]
            for data in want:
                same(dgram_roundtrip(s, dest, data), data, "datagram echo")
            # Ten at once: each is served, in whatever order.
            burst = [b"burst %d" % i for i in range(10)]
            for data in burst:
                s.sendto(data, dest)
            got = [recv_datagram(s, "burst reply %d" % i)[0]
                   for i in range(len(burst))]
            check(sorted(got) == sorted(burst), "burst: %r" % got)
            expect_no_datagram(s, 0.1, "after the burst")
        finally:
            s.close()
        wait_children(srv, 0, "after the replies")
        stop_and_check_clean(srv)


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
    ("--mode bogus exits 2", case_mode_bogus),
    ("bad --max-conns and --idle-timeout values exit 2", case_bad_limits),
    ("bad --threads values exit 2", case_bad_threads),
    ("--threads without --mode thread exits 2",
     case_threads_needs_thread_mode),
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

# Every stream case over TCP, then over a Unix stream socket, which
# behaves the same.
for _transport, _listen in (("tcp", TCP), ("unix", UNIX)):
    for _mode in MODES:
        for _name, _fn in MODE_CASES:
            _tag = _mode if _transport == "tcp" else "%s, unix" % _mode
            CASES.append(("%s [%s]" % (_name, _tag),
                          functools.partial(_fn, _mode, listen=_listen)))

for _mode in MODES:
    CASES += [
        ("udp echo, sizes up to 65507 and a burst [%s]" % _mode,
         functools.partial(case_udp_echo, _mode, "127.0.0.1")),
        ("udp echo over IPv6 [::1] [%s]" % _mode,
         functools.partial(case_udp_echo, _mode, "[::1]")),
        ("unixgram echo, bound client [%s]" % _mode,
         functools.partial(case_unixgram_echo, _mode)),
        ("empty datagram, udp [%s]" % _mode,
         functools.partial(case_dgram_empty, _mode, udp_listen("127.0.0.1"))),
        ("empty datagram, unixgram [%s]" % _mode,
         functools.partial(case_dgram_empty, _mode, UNIXGRAM)),
        ("unbound unixgram client: no reply, nothing printed [%s]" % _mode,
         functools.partial(case_unixgram_unbound, _mode)),
        ("SIGTERM/SIGINT end a udp server at once [%s]" % _mode,
         functools.partial(case_dgram_signal, _mode,
                           udp_listen("127.0.0.1"))),
        ("SIGTERM/SIGINT end a unixgram server at once [%s]" % _mode,
         functools.partial(case_dgram_signal, _mode, UNIXGRAM)),
        ("unix: socket file made, removed at exit [%s]" % _mode,
         functools.partial(case_socket_file_removed, _mode, "unix")),
        ("unixgram: socket file made, removed at exit [%s]" % _mode,
         functools.partial(case_socket_file_removed, _mode, "unixgram")),
        ("unix: stale socket file replaced [%s]" % _mode,
         functools.partial(case_stale_socket_replaced, _mode, "unix")),
        ("unixgram: stale socket file replaced [%s]" % _mode,
         functools.partial(case_stale_socket_replaced, _mode, "unixgram")),
        ("unix:@NAME and unixgram:@NAME abstract names [%s]" % _mode,
         functools.partial(case_unix_abstract, _mode)),
    ]

for _transport, _listen in (("tcp", TCP), ("unix", UNIX)):
    for _mode in MODES:
        _tag = _mode if _transport == "tcp" else "%s, unix" % _mode
        if _mode == "sync":
            CASES.append(("--max-conns 1 closes nobody: the next waits [%s]"
                          % _tag, functools.partial(case_sync_max_conns,
                                                    listen=_listen)))
        else:
            CASES.append(("--max-conns 3: the 4th gets EOF at once [%s]"
                          % _tag, functools.partial(case_max_conns, _mode,
                                                    listen=_listen)))
            CASES.append(("SIGTERM under load: every byte back, new refused "
                          "[%s]" % _tag,
                          functools.partial(case_sigterm_under_load, _mode,
                                            listen=_listen)))

for _mode in MODES:
    CASES += [
        ("--idle-timeout: silent closed, active kept [%s]" % _mode,
         functools.partial(case_idle_timeout, _mode)),
        ("SIGUSR1 prints the counters, serving goes on [%s]" % _mode,
         functools.partial(case_stats, _mode)),
        ("client open at the drain deadline: echo, then EOF [%s]" % _mode,
         functools.partial(case_drain_deadline, _mode)),
        ("--max-conns, --idle-timeout: no effect on datagrams [%s]" % _mode,
         functools.partial(case_limits_on_datagrams, _mode)),
    ]

CASES += [
    ("a live socket at the path: exit 1, left alone", case_live_socket_kept),
    ("a regular file at the path: exit 1, one line, file untouched",
     case_regular_file_kept),
    ("200 concurrent clients [thread]", case_thread_200_clients),
    ("no thread cap: 300 clients open at once [thread]", case_thread_no_cap),
    ("--threads 2: 6 clients wait their turn in order [thread]",
     case_threads_cap_fifo),
    ("one client at a time [sync]", case_sync_one_at_a_time),
    ("client waiting in the backlog at SIGTERM is not served [sync]",
     case_sync_backlog_after_signal),
    ("SIGTERM mid-stream: the client is served to its end [sync]",
     case_sync_sigterm_mid_stream),
    ("Ctrl-C to the process group: children serve on [fork]",
     functools.partial(case_fork_group_signal, signal.SIGINT)),
    ("SIGTERM to the process group: children serve on [fork]",
     functools.partial(case_fork_group_signal, signal.SIGTERM)),
]

for _transport, _listen in (("tcp", TCP), ("unix", UNIX)):
    CASES += [
        ("10 clients, a child each, reaped as they close [fork, %s]"
         % _transport, functools.partial(case_fork_clients, _listen)),
        ("SIGTERM: the open client's child serves on, exit 0 when it "
         "closes [fork, %s]" % _transport,
         functools.partial(case_fork_drain, _listen)),
        ("the drain runs out: children killed, exit 0 [fork, %s]"
         % _transport, functools.partial(case_fork_drain_runs_out, _listen)),
        ("second signal: exit 1, children die with it [fork, %s]"
         % _transport, functools.partial(case_fork_second_signal, _listen)),
    ]

CASES += [
    ("datagrams answered by children, reaped [fork, udp]",
     functools.partial(case_fork_dgram, udp_listen("127.0.0.1"))),
    ("datagrams answered by children, reaped [fork, unixgram]",
     functools.partial(case_fork_dgram, UNIXGRAM)),
]


def main():
    global EXE
    if len(sys.argv) != 2:
        sys.stderr.write("usage: test_echo.py /path/to/uvs-echo\n")
        return 2
    EXE = os.path.abspath(sys.argv[1])
    # Orphans of the server (children it left behind) become ours, where
    # Server's exit check finds them.
    demo_server.become_subreaper()
    # TEST_ECHO_ONLY: run the cases whose name holds this substring.
    return demo_server.run_cases(CASES, os.environ.get("TEST_ECHO_ONLY"))


if __name__ == "__main__":
    sys.exit(main())
