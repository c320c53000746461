#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Contract test for uvs-chat (DESIGN.md section 4), stdlib only.

Usage: test_chat.py /path/to/uvs-chat

Every protocol case runs once per mode (event, thread), each on its own
server on port 0 (or, for unix:, in a private temporary directory); the
listening line gives the address, and the server is killed by pid when the
case ends. Every socket operation has a timeout and every load loop a
bound. Prints TAP and exits 1 when a case fails.
"""

import os
import re
import shutil
import signal
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import demo_server  # noqa: E402 (the folder of this script)
from demo_server import (Skip, check, expand_listen,  # noqa: E402
                         listening_regex, short_tempdir, sockaddr, TIMEOUT)

EXE = None
MiB = 1024 * 1024
MODES = ("event", "thread")
TCP = "tcp://127.0.0.1:0"
WELCOME_RE = re.compile(rb"^\* welcome (guest(\d+))\n$")
FLAGS = ["--listen", "--mode", "--threads", "--max-line", "--max-queue",
         "--help"]


# ---- Server processes -----------------------------------------------------

class Server(demo_server.DemoServer):
    """A running uvs-chat; use as a context manager (always killed).
    `listen` may hold "{tmp}", replaced by a new private directory that is
    removed with the server."""

    def __init__(self, *args, mode=None, listen=TCP, env=None):
        listen, tmpdir = expand_listen(listen)
        argv = [EXE]
        if listen is not None:
            argv += ["--listen", listen]
        if mode is not None:
            argv += ["--mode", mode]
        argv += list(args)
        super().__init__(argv, listening_regex(listen or TCP), env=env,
                         tmpdir=tmpdir)

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.stop_cleanly()
        finally:
            self.kill()
        return False

    def stop_cleanly(self):
        """The case passed and closed its clients: SIGTERM must end the
        server with 0 and nothing from a sanitizer (so ASan's leak check
        and the close paths run after every case, not only the signal
        ones)."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            # A client that just closed may still count until its FIN has
            # been read; the drain waits for it, 5 s at most.
            status, _ = self.wait(8.0)
            check(status == 0, "exit %r after the final SIGTERM; stderr %r"
                  % (status, self.read_stderr()[-2000:]))
        err = self.read_stderr()
        for marker in (b"Sanitizer", b"runtime error:", b"LeakSanitizer"):
            check(marker not in err, "sanitizer report: %r" % err[-4000:])

    def rss_kib(self):
        """The server's resident set size in KiB (/proc/PID/status)."""
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc/%d/status" % self.proc.pid)


def run_usage(*args):
    """Runs uvs-chat to completion; returns (status, stdout, stderr)."""
    return demo_server.run_usage(EXE, *args)


def expect_usage_error(*args, status=2):
    return demo_server.expect_usage_error(EXE, *args, status=status)


# ---- Clients --------------------------------------------------------------

class Client:
    """One chat connection with a line reader; every wait has a timeout."""

    def __init__(self, target, rcvbuf=None):
        """`target`: a port on 127.0.0.1, or a demo address (Server.target
        gives the right one)."""
        if isinstance(target, int):
            family, addr = socket.AF_INET, ("127.0.0.1", target)
        else:
            family, _, addr = sockaddr(target)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so the window the server sees is small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        try:
            self.sock.connect(addr)
        except BaseException:
            self.sock.close()
            raise
        self.buf = b""
        self.name = None

    def __repr__(self):
        return "<client %s>" % (self.name or "?")

    def send(self, data):
        self.sock.settimeout(TIMEOUT)
        self.sock.sendall(data)

    def line(self, timeout=TIMEOUT):
        """The next line, with its '\\n'; fails on EOF or timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            check(left > 0, "%s: no line within %.1f s (have %r)"
                  % (self.name, timeout, self.buf[:200]))
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            check(chunk != b"", "%s: EOF while waiting for a line (have %r)"
                  % (self.name, self.buf[:200]))
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def expect(self, want, timeout=TIMEOUT):
        got = self.line(timeout)
        check(got == want, "%s: got %r, want %r"
              % (self.name, got[:200], want[:200]))

    def expect_error(self):
        got = self.line()
        check(got.startswith(b"! error: ") and len(got) > 10,
              "%s: got %r, want '! error: ...'" % (self.name, got[:200]))
        return got

    def sync(self):
        """Sends /who; returns (lines that came before its answer, the
        answer). Lines sent to this client before the /who arrive first."""
        self.send(b"/who\n")
        before = []
        for _ in range(10000):
            got = self.line()
            if got.startswith(b"* online: "):
                return before, got
            before.append(got)
        raise AssertionError("%s: no /who answer in 10000 lines" % self.name)

    def expect_quiet(self):
        """Nothing arrived for this client since its last line."""
        before, _ = self.sync()
        check(before == [], "%s: unexpected lines %r" % (self.name, before))

    def who(self):
        before, answer = self.sync()
        check(before == [], "%s: unexpected lines %r" % (self.name, before))
        return answer

    def expect_eof(self, timeout=TIMEOUT, limit=64 * MiB):
        """Reads until EOF or a reset; returns what came before it (a
        reset may destroy part of it)."""
        data = bytearray(self.buf)
        self.buf = b""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            check(left > 0, "%s: no EOF within %.1f s" % (self.name, timeout))
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return bytes(data)
            if chunk == b"":
                return bytes(data)
            data += chunk
            check(len(data) <= limit, "%s: more than %d bytes before EOF"
                  % (self.name, limit))

    def reset(self):
        """Closes with a TCP reset (SO_LINGER 0)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.sock.close()

    def close(self):
        self.sock.close()


def join(target, rcvbuf=None):
    """Connects and reads the welcome line; the client knows its name."""
    c = Client(target, rcvbuf)
    try:
        got = c.line()
        m = WELCOME_RE.match(got)
        check(m is not None, "first line %r is not '* welcome guestN'" % got)
        c.name = m.group(1)
    except BaseException:
        c.close()
        raise
    return c


def room(target, n, rcvbuf=None):
    """Joins n clients one after another; every earlier client reads the
    '* NAME joined' of each later one. Returns them in join order."""
    clients = []
    try:
        for _ in range(n):
            c = join(target, rcvbuf)
            for old in clients:
                old.expect(b"* " + c.name + b" joined\n")
            clients.append(c)
    except BaseException:
        close_all(clients)
        raise
    return clients


def close_all(clients):
    for c in clients:
        c.close()


# ---- Cases: command line (mode by mode where the mode matters) ------------

def case_listening_line():
    """Without --mode (the default, event) and without --listen's port."""
    with Server() as srv:
        check(srv.port != 0, "port 0 in the listening line")
        c = join(srv.port)
        try:
            check(c.name == b"guest1", "first client is %r" % c.name)
        finally:
            c.close()
        srv.signal(signal.SIGTERM)
        status, _ = srv.wait(TIMEOUT)
        check(status == 0, "exit %r after SIGTERM" % status)
        rest = srv.rest_of_stdout()
        check(rest == b"", "more on stdout after the line: %r" % rest)


def case_equals_form():
    with Server("--listen=tcp://127.0.0.1:0", "--mode=thread",
                "--threads=0", "--max-line=16", "--max-queue=65536",
                listen=None) as srv:
        a, b = room(srv.port, 2)
        try:
            a.send(b"x" * 16 + b"\n")
            b.expect(b"guest1: " + b"x" * 16 + b"\n")
            a.send(b"x" * 17 + b"\n")
            a.expect(b"! error: line too long\n")
        finally:
            close_all([a, b])


def case_help():
    code, out, err = run_usage("--help")
    check(code == 0, "--help: exit %d" % code)
    check(err == b"", "--help wrote to stderr: %r" % err)
    text = out.decode()
    check("usage" in text.lower(), "no 'usage' in --help")
    for word in FLAGS + ["event", "thread", "/nick", "/who", "/quit",
                         "SIGUSR1", "stats:"]:
        check(word in text, "--help does not mention %s" % word)


def case_flag_errors():
    expect_usage_error("--bogus")
    expect_usage_error("--listen")
    expect_usage_error("--help=1")
    expect_usage_error("stray")
    for mode in ("sync", "fork", "bogus", "", "Event"):
        expect_usage_error("--listen", "tcp://127.0.0.1:0", "--mode", mode)
    for value in ("-1", "abc", "", "1x", "99999999999999999999999"):
        expect_usage_error("--listen", "tcp://127.0.0.1:0", "--threads",
                           value)
    for flag in ("--max-line", "--max-queue"):
        for value in ("0", "-5", "abc", "", "4k", "0x10", " 5",
                      "99999999999999999999999"):
            expect_usage_error("--listen", "tcp://127.0.0.1:0", flag, value)
    # The queue must hold one full line: "NAME: " (up to 34) TEXT "\n".
    expect_usage_error("--listen", "tcp://127.0.0.1:0", "--max-line", "100",
                       "--max-queue", "134")
    expect_usage_error("--listen", "tcp://127.0.0.1:0", "--max-queue", "4130")


def case_address_errors():
    """Bad addresses, and datagram ones in either mode: one line, exit 2,
    nothing bound (no socket file)."""
    expect_usage_error("--listen", "tcp://127.0.0.1")
    expect_usage_error("--listen", "nonsense")
    d = short_tempdir()
    try:
        for mode in MODES:
            for listen in ("udp://127.0.0.1:0", "udp://[::1]:0",
                           "unixgram:" + os.path.join(d, "g.sock"),
                           "unixgram:@uvs-test-chat-%d" % os.getpid()):
                err = expect_usage_error("--listen", listen, "--mode", mode)
                check(b"datagram" in err, "%s: message %r" % (listen, err))
        check(os.listdir(d) == [], "files made: %r" % os.listdir(d))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def case_unix_chat(mode):
    """unix:PATH serves the chat as TCP does: the listening line shows the
    path, clients talk, and SIGTERM exits 0 and removes the socket
    file."""
    with Server(mode=mode, listen="unix:{tmp}/chat.sock") as srv:
        path = srv.path
        check(os.path.exists(path), "no socket file at %s" % path)
        a, b = room(srv.target, 2)
        try:
            check((a.name, b.name) == (b"guest1", b"guest2"),
                  "names %r, %r" % (a.name, b.name))
            a.send(b"hello over unix\n")
            b.expect(b"guest1: hello over unix\n")
            a.expect_quiet()
            b.send(b"/nick bob\n")
            b.expect(b"* you are now bob\n")
            a.expect(b"* guest2 is now bob\n")
            b.send(b"and back\r\n")
            a.expect(b"bob: and back\n")
            check(a.who() == b"* online: guest1, bob\n", "who")
            b.send(b"/quit\n")
            check(b.expect_eof() == b"* bye\n", "quit")
            a.expect(b"* bob left\n")
        finally:
            close_all([a, b])
        srv.stop_cleanly()
        check(not os.path.lexists(path), "%s left after exit" % path)
        rest = srv.rest_of_stdout()
        check(rest == b"", "more on stdout after the line: %r" % rest)


def case_unix_abstract():
    """unix:@NAME, a Linux abstract name."""
    if not sys.platform.startswith("linux"):
        raise Skip("abstract names are Linux only")
    name = "@uvs-test-chat-%d-%d" % (os.getpid(), int(time.time() * 1000))
    with Server(listen="unix:" + name) as srv:
        a, b = room(srv.target, 2)
        try:
            b.send(b"abstract\n")
            a.expect(b"guest2: abstract\n")
        finally:
            close_all([a, b])


def case_unix_not_a_socket():
    """A PATH that is not a socket is never removed: exit 1, one line."""
    d = short_tempdir()
    try:
        path = os.path.join(d, "precious.txt")
        with open(path, "wb") as f:
            f.write(b"keep\n")
        for mode in MODES:
            err = expect_usage_error("--listen", "unix:" + path,
                                     "--mode", mode, status=1)
            check(b"not a socket" in err, "message %r" % err)
        with open(path, "rb") as f:
            check(f.read() == b"keep\n", "%s was changed" % path)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def case_threads_cap():
    """--threads 2: a third client waits, not yet welcomed, until one of
    the two leaves; its name still counts from its connection."""
    with Server("--threads", "2", mode="thread") as srv:
        a, b = room(srv.port, 2)
        c = Client(srv.port)
        try:
            c.sock.settimeout(0.5)
            try:
                early = c.sock.recv(64)
            except socket.timeout:
                early = b""
            check(early == b"", "a client beyond --threads 2 got %r" % early)
            a.send(b"/quit\n")
            check(a.expect_eof() == b"* bye\n", "quit")
            a.close()
            b.expect(b"* guest1 left\n")
            c.expect(b"* welcome guest3\n")
            c.name = b"guest3"
            b.expect(b"* guest3 joined\n")
            c.send(b"hi\n")
            b.expect(b"guest3: hi\n")
        finally:
            close_all([a, b, c])


def case_address_in_use():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        for mode in MODES:
            expect_usage_error("--listen", "tcp://127.0.0.1:%d" % port,
                               "--mode", mode, status=1)


# ---- Cases: protocol (each runs in both modes) ----------------------------

def case_welcome_joined(mode):
    with Server(mode=mode) as srv:
        a = join(srv.port)
        try:
            check(a.name == b"guest1", "first client is %r" % a.name)
            b = join(srv.port)
            check(b.name == b"guest2", "second client is %r" % b.name)
            a.expect(b"* guest2 joined\n")
            b.expect_quiet()  # no "joined" about itself
            # N counts connections: a name is never reused.
            b.close()
            a.expect(b"* guest2 left\n")
            c = join(srv.port)
            check(c.name == b"guest3", "third client is %r" % c.name)
            a.expect(b"* guest3 joined\n")
            c.close()
        finally:
            a.close()


def case_broadcast(mode):
    with Server(mode=mode) as srv:
        a, b, c = room(srv.port, 3)
        try:
            a.send(b"hello world\n")
            b.expect(b"guest1: hello world\n")
            c.expect(b"guest1: hello world\n")
            a.expect_quiet()  # the sender does not get its own line
            # Bytes pass through as they are, spaces and all.
            b.send(b"  two  spaces \t\n")
            a.expect(b"guest2:   two  spaces \t\n")
            c.expect(b"guest2:   two  spaces \t\n")
            b.expect_quiet()
            # A line split over several sends is one line.
            c.send(b"par")
            time.sleep(0.1)
            c.send(b"ts of ")
            time.sleep(0.1)
            c.send(b"a line\nand another\n")
            for r in (a, b):
                r.expect(b"guest3: parts of a line\n")
                r.expect(b"guest3: and another\n")
        finally:
            close_all([a, b, c])


def case_nick_valid(mode):
    with Server(mode=mode) as srv:
        a, b = room(srv.port, 2)
        try:
            a.send(b"/nick alice\n")
            a.expect(b"* you are now alice\n")
            b.expect(b"* guest1 is now alice\n")
            a.send(b"hi\n")
            b.expect(b"alice: hi\n")
            check(b.who() == b"* online: alice, guest2\n", "who after nick")
            longest = b"A-z_09" * 5 + b"_-"  # 32 bytes
            a.send(b"/nick " + longest + b"\n")
            a.expect(b"* you are now " + longest + b"\n")
            b.expect(b"* alice is now " + longest + b"\n")
            # Spaces around the argument do not count.
            b.send(b"/nick   bob  \n")
            b.expect(b"* you are now bob\n")
            a.expect(b"* guest2 is now bob\n")
            # A name given up is free again.
            a.send(b"/nick x\n")
            a.expect(b"* you are now x\n")
            b.expect(b"* " + longest + b" is now x\n")
            b.send(b"/nick " + longest + b"\n")
            b.expect(b"* you are now " + longest + b"\n")
            a.expect(b"* bob is now " + longest + b"\n")
        finally:
            close_all([a, b])


def case_nick_invalid(mode):
    with Server(mode=mode) as srv:
        a, b = room(srv.port, 2)
        try:
            for arg in (b"", b" ", b"x" * 33, b"a b", b"a!", b"caf\xc3\xa9",
                        b"a.b", b"a\tb", b"a/b"):
                a.send(b"/nick " + arg + b"\n")
                a.expect_error()
            a.send(b"/nick\n")
            a.expect_error()
            check(a.who() == b"* online: guest1, guest2\n",
                  "a name changed after an invalid /nick")
            b.expect_quiet()  # the others hear nothing of it
        finally:
            close_all([a, b])


def case_nick_taken(mode):
    with Server(mode=mode) as srv:
        a, b = room(srv.port, 2)
        try:
            a.send(b"/nick alice\n")
            a.expect(b"* you are now alice\n")
            b.expect(b"* guest1 is now alice\n")
            b.send(b"/nick alice\n")
            b.expect_error()
            a.send(b"/nick alice\n")  # one's own name
            a.expect_error()
            # guestN, another's or a future client's, is not for taking.
            a.send(b"/nick guest2\n")
            a.expect_error()
            a.send(b"/nick guest7\n")
            a.expect_error()
            check(b.who() == b"* online: alice, guest2\n", "who")
            a.expect_quiet()
        finally:
            close_all([a, b])


def case_who_order(mode):
    with Server(mode=mode) as srv:
        a, b, c = room(srv.port, 3)
        d = None
        try:
            check(a.who() == b"* online: guest1, guest2, guest3\n", "who 1")
            b.send(b"/nick bee\n")
            b.expect(b"* you are now bee\n")
            a.expect(b"* guest2 is now bee\n")
            c.expect(b"* guest2 is now bee\n")
            # A rename keeps the place in the order of joining.
            check(c.who() == b"* online: guest1, bee, guest3\n", "who 2")
            a.close()
            b.expect(b"* guest1 left\n")
            c.expect(b"* guest1 left\n")
            d = join(srv.port)
            b.expect(b"* guest4 joined\n")
            c.expect(b"* guest4 joined\n")
            check(d.who() == b"* online: bee, guest3, guest4\n", "who 3")
            d.send(b"/who extra\n")
            d.expect_error()
        finally:
            close_all([a, b, c] + ([d] if d else []))


def quit_case(mode, line):
    with Server(mode=mode) as srv:
        a, b, c = room(srv.port, 3)
        try:
            a.send(b"before\n" + line)
            b.expect(b"guest1: before\n")
            rest = a.expect_eof()
            check(rest == b"* bye\n", "after %r the quitter got %r, want "
                  "'* bye' then EOF" % (line, rest))
            b.expect(b"* guest1 left\n")
            c.expect(b"guest1: before\n")
            c.expect(b"* guest1 left\n")
            check(b.who() == b"* online: guest2, guest3\n", "who after quit")
        finally:
            close_all([a, b, c])


def case_quit_slash(mode):
    quit_case(mode, b"/quit\n")


def case_quit_word(mode):
    quit_case(mode, b"quit\n")


def case_quit_crlf(mode):
    quit_case(mode, b"quit\r\n")


def case_quit_lines_after(mode):
    """Lines after /quit in the same packet are not delivered."""
    quit_case(mode, b"/quit\nafter quit\n")


def case_left_on_disconnect(mode):
    with Server(mode=mode) as srv:
        a, b, c, d = room(srv.port, 4)
        try:
            a.close()
            for r in (b, c, d):
                r.expect(b"* guest1 left\n")
            b.reset()
            for r in (c, d):
                r.expect(b"* guest2 left\n")
            # Half-close: a last line without '\n' still counts.
            c.send(b"last words")
            c.sock.shutdown(socket.SHUT_WR)
            d.expect(b"guest3: last words\n")
            d.expect(b"* guest3 left\n")
            rest = c.expect_eof()
            check(rest == b"", "after EOF the client got %r" % rest)
            check(d.who() == b"* online: guest4\n", "who")
        finally:
            close_all([a, b, c, d])


def case_unknown_command(mode):
    with Server(mode=mode) as srv:
        a, b = room(srv.port, 2)
        try:
            for line in (b"/foo\n", b"/\n", b"/WHO\n", b"/nickname x\n",
                         b"/quit now\n", b"//who\n"):
                a.send(line)
                a.expect_error()
            b.expect_quiet()
            a.send(b"still here\n")
            b.expect(b"guest1: still here\n")
        finally:
            close_all([a, b])


def case_empty_lines(mode):
    with Server(mode=mode) as srv:
        a, b = room(srv.port, 2)
        try:
            a.send(b"\n\r\n\n")
            a.expect_quiet()
            b.expect_quiet()
            a.send(b"x\n")
            b.expect(b"guest1: x\n")
        finally:
            close_all([a, b])


def case_crlf(mode):
    with Server(mode=mode) as srv:
        a, b = room(srv.port, 2)
        try:
            a.send(b"hi there\r\n")
            b.expect(b"guest1: hi there\n")
            a.send(b"/nick bob\r\n")
            a.expect(b"* you are now bob\n")
            b.expect(b"* guest1 is now bob\n")
            b.send(b"/who\r\n")
            b.expect(b"* online: bob, guest2\n")
            # Only the '\r' right before '\n' is dropped.
            a.send(b"a\rb\r\r\n")
            b.expect(b"bob: a\rb\r\n")
        finally:
            close_all([a, b])


def case_line_limit(mode):
    """--max-line counts the text without its '\\n' or '\\r\\n'."""
    with Server(mode=mode) as srv:
        a, b, c = room(srv.port, 3)
        try:
            text = bytes(range(ord("a"), ord("z") + 1)) * 158  # 4108 bytes
            a.send(text[:4096] + b"\n")
            b.expect(b"guest1: " + text[:4096] + b"\n")
            a.send(text[:4096] + b"\r\n")
            b.expect(b"guest1: " + text[:4096] + b"\n")
            c.expect(b"guest1: " + text[:4096] + b"\n")
            c.expect(b"guest1: " + text[:4096] + b"\n")
            a.expect_quiet()
            # One byte more: an error to the sender, who is closed.
            a.send(b"ok\n" + text[:4097] + b"\nnever\n")
            b.expect(b"guest1: ok\n")
            rest = a.expect_eof()
            check(rest == b"! error: line too long\n",
                  "the sender of a long line got %r" % rest[:200])
            b.expect(b"* guest1 left\n")
            c.expect(b"guest1: ok\n")
            c.expect(b"* guest1 left\n")
            b.expect_quiet()
            # The same with a '\r': 4097 bytes of text are too many.
            b.send(text[:4097] + b"\r\n")
            rest = b.expect_eof()
            check(rest == b"! error: line too long\n",
                  "the sender of a long CRLF line got %r" % rest[:200])
            c.expect(b"* guest2 left\n")
        finally:
            close_all([a, b, c])


def case_line_too_long_without_newline(mode):
    """A line is too long as soon as it cannot fit, before its end: the
    server does not wait for a '\\n' that may never come."""
    with Server("--max-line", "8", mode=mode) as srv:
        a, b = room(srv.port, 2)
        try:
            a.send(b"12345678\n")
            b.expect(b"guest1: 12345678\n")
            # 9 bytes could still be 8 and a '\r'; 10 cannot.
            a.send(b"1234567890")
            rest = a.expect_eof()
            check(rest == b"! error: line too long\n",
                  "got %r" % rest[:200])
            b.expect(b"* guest1 left\n")
        finally:
            close_all([a, b])


def case_many_clients(mode):
    """30 clients send 50 lines each at once; each receives all 1450 lines
    of the others, each sender's in the order sent."""
    n_clients, n_lines = 30, 50
    with Server(mode=mode) as srv:
        clients = room(srv.port, n_clients)
        results = {}

        def run(c):
            try:
                c.send(b"".join(b"m %s %d\n" % (c.name, k)
                                for k in range(n_lines)))
                want = (n_clients - 1) * n_lines
                seen = {}
                for _ in range(want):
                    got = c.line(timeout=30)
                    m = re.match(rb"^(guest\d+): m (guest\d+) (\d+)\n$", got)
                    check(m is not None and m.group(1) == m.group(2),
                          "%s got %r" % (c.name, got))
                    check(m.group(1) != c.name, "%s got its own line"
                          % c.name)
                    k = int(m.group(3))
                    prev = seen.get(m.group(1), -1)
                    check(k == prev + 1, "%s got line %d of %s after %d"
                          % (c.name, k, m.group(1), prev))
                    seen[m.group(1)] = k
                check(len(seen) == n_clients - 1 and
                      all(v == n_lines - 1 for v in seen.values()),
                      "%s: incomplete %r" % (c.name, seen))
                results[c.name] = None
            except Exception as e:
                results[c.name] = repr(e)

        try:
            threads = [threading.Thread(target=run, args=(c,), daemon=True)
                       for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            bad = {k: v for k, v in results.items() if v is not None}
            check(len(results) == n_clients, "%d of %d clients finished"
                  % (len(results), n_clients))
            check(not bad, "failed clients: %s" % bad)
            for c in clients:
                c.expect_quiet()
        finally:
            close_all(clients)


def case_slow_reader(mode):
    """A client that never reads is cut off once its unsent output passes
    --max-queue; the sender and a reader go on at full speed, nothing is
    lost for the reader, and the server's memory stays bounded while far
    more than that is sent."""
    total = 64 * MiB
    line_size = 1000
    window = 512  # lines the writer may be ahead of the reader
    # ASan keeps freed memory in a quarantine (256 MiB by default), which
    # would show as RSS; a small one keeps the measure about the server.
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") +
                           ":quarantine_size_mb=4").lstrip(":")
    with Server("--max-queue", str(MiB), mode=mode, env=env) as srv:
        w, r = room(srv.port, 2)
        # A tiny receive window so the kernel holds little for it.
        n = join(srv.port, rcvbuf=4096)
        w.expect(b"* " + n.name + b" joined\n")
        r.expect(b"* " + n.name + b" joined\n")
        left_line = b"* " + n.name + b" left\n"
        state = {"count": 0, "left": False, "error": None, "done": False}
        cond = threading.Condition()

        def reader():
            try:
                k = 0
                deadline = time.monotonic() + 120
                while True:
                    check(time.monotonic() < deadline, "reader: 120 s")
                    got = r.line(timeout=30)
                    if got == left_line:
                        with cond:
                            state["left"] = True
                        continue
                    if got == b"guest1: done\n":
                        break
                    check(got.startswith(b"guest1: %d " % k),
                          "reader: line %d is %r" % (k, got[:40]))
                    check(len(got) == line_size + len(b"guest1: "),
                          "reader: line %d has %d bytes" % (k, len(got)))
                    k += 1
                    if k % 64 == 0:
                        with cond:
                            state["count"] = k
                            cond.notify_all()
                with cond:
                    state["count"] = k
                    state["done"] = True
                    cond.notify_all()
            except Exception as e:
                with cond:
                    state["error"] = repr(e)
                    cond.notify_all()

        t = threading.Thread(target=reader, daemon=True)
        try:
            base = srv.rss_kib()
            peak = base
            t.start()
            sent = 0
            batch = 64
            n_lines = total // line_size
            while sent < n_lines:
                with cond:
                    ok = cond.wait_for(lambda: state["error"] is not None or
                                       state["count"] >= sent - window,
                                       timeout=30)
                    check(state["error"] is None, state["error"])
                    check(ok, "reader stuck at %d of %d lines"
                          % (state["count"], sent))
                w.send(b"".join(b"%d " % k + b"x" * (line_size - 1 -
                                                     len(b"%d " % k)) + b"\n"
                                for k in range(sent, sent + batch)))
                sent += batch
                if sent % 1024 == 0:
                    peak = max(peak, srv.rss_kib())
            w.send(b"done\n")
            t.join(60)
            check(not t.is_alive(), "reader did not finish")
            check(state["error"] is None, state["error"])
            check(state["done"] and state["count"] == sent,
                  "reader got %d of %d lines" % (state["count"], sent))
            check(state["left"], "the reader never heard %r" % left_line)
            peak = max(peak, srv.rss_kib())
            growth = (peak - base) / 1024.0
            check(growth < 24, "server RSS grew %.1f MiB (from %d KiB) while "
                  "%d MiB went to a client that does not read"
                  % (growth, base, total // MiB))
            # The cut-off client: what the kernel held, then EOF or reset.
            n.expect_eof(limit=8 * MiB)
            w.expect(left_line)
            w.expect_quiet()
            r.expect_quiet()
            check(srv.proc.poll() is None, "server died")
        finally:
            close_all([w, r, n])
            t.join(TIMEOUT)


# ---- Cases: signals (each runs in both modes) -----------------------------

def case_signal_no_clients(mode):
    for signum in (signal.SIGTERM, signal.SIGINT):
        with Server(mode=mode) as srv:
            srv.signal(signum)
            status, took = srv.wait(2.0)
            check(status == 0, "exit %r after %s" % (status, signum))
            check(took < 2.0, "took %.2f s" % took)


def case_sigterm_drain(mode):
    """Open clients go on chatting for the 5 s drain; a new one is
    refused; then the server closes the rest (EOF about 5 s after the
    signal), and once they have closed in turn it exits 0."""
    with Server(mode=mode) as srv:
        a, b = room(srv.port, 2)
        try:
            t0 = time.monotonic()
            srv.signal(signal.SIGTERM)
            time.sleep(0.3)
            check(srv.proc.poll() is None, "exited while clients are open")
            try:
                late = Client(srv.port)
            except ConnectionRefusedError:
                late = None
            if late is not None:
                late.close()
                raise AssertionError("a new client connected after SIGTERM")
            a.send(b"after the signal\n")
            b.expect(b"guest1: after the signal\n")
            a.expect_eof(timeout=9.0)
            closed = time.monotonic() - t0
            b.expect_eof(timeout=2.0)
            check(4.5 <= closed <= 6.5, "closed %.2f s after SIGTERM, want "
                  "about 5" % closed)
            close_all([a, b])
            status, _ = srv.wait(3.0)
            took = time.monotonic() - t0
            check(status == 0, "exit %r (None: still running) after the "
                  "drain" % status)
            check(took <= closed + 1.5, "exited %.2f s after the clients "
                  "were closed" % (took - closed))
        finally:
            close_all([a, b])


def case_drain_ends_when_clients_leave(mode):
    with Server(mode=mode) as srv:
        a, b = room(srv.port, 2)
        try:
            srv.signal(signal.SIGTERM)
            time.sleep(0.3)
            check(srv.proc.poll() is None, "exited while clients are open")
            a.send(b"/quit\n")
            check(a.expect_eof() == b"* bye\n", "quit during the drain")
            # Closing answers the server's FIN; until then uvs lingers for
            # it (close_linger_ms) and the connection still counts.
            a.close()
            b.expect(b"* guest1 left\n")
            time.sleep(0.2)
            check(srv.proc.poll() is None, "exited while a client is open")
            t0 = time.monotonic()
            b.close()
            status, _ = srv.wait(1.5)
            took = time.monotonic() - t0
            check(status == 0, "exit %r (None: still running) after the "
                  "last client left" % status)
            check(took < 1.5, "took %.2f s" % took)
        finally:
            close_all([a, b])


def case_stats(mode):
    """SIGUSR1 prints one counters line with the right counts after a known
    exchange, and the chat goes on."""
    with Server(mode=mode) as srv:
        a, b = room(srv.port, 2)
        try:
            a.send(b"hello\n")
            b.expect(b"guest1: hello\n")
            st = srv.stats()
            sent_out = len(b"* welcome guest1\n" + b"* welcome guest2\n" +
                           b"* guest2 joined\n" + b"guest1: hello\n")
            want = {"accepted": 2, "active": 2, "children": 0,
                    "bytes_in": len(b"hello\n"), "bytes_out": sent_out}
            for k, v in st.items():
                check(v == want.get(k, 0), "%s=%d, want %d; line %r"
                      % (k, v, want.get(k, 0), st))
            b.send(b"still here\n")
            a.expect(b"guest2: still here\n")
        finally:
            close_all([a, b])


def case_second_signal(mode):
    with Server(mode=mode) as srv:
        a = join(srv.port)
        try:
            srv.signal(signal.SIGTERM)
            time.sleep(0.3)
            check(srv.proc.poll() is None, "exited while a client is open")
            t0 = time.monotonic()
            srv.signal(signal.SIGINT)
            status, _ = srv.wait(1.0)
            took = time.monotonic() - t0
            check(status == 1, "second signal: exit %r, want 1" % status)
            check(took < 1.0, "took %.2f s" % took)
        finally:
            a.close()


COMMON = [
    ("listening line, default mode", case_listening_line),
    ("--flag=value form", case_equals_form),
    ("--help", case_help),
    ("bad flags and values exit 2", case_flag_errors),
    ("bad and datagram addresses exit 2", case_address_errors),
    ("[event] unix: chat, socket file removed at exit",
     lambda: case_unix_chat("event")),
    ("[thread] unix: chat, socket file removed at exit",
     lambda: case_unix_chat("thread")),
    ("unix:@NAME abstract name", case_unix_abstract),
    ("unix: a regular file at the path: exit 1, untouched",
     case_unix_not_a_socket),
    ("address in use exits 1", case_address_in_use),
    ("[thread] --threads caps the workers", case_threads_cap),
]

PER_MODE = [
    ("welcome, joined, guestN counts connections", case_welcome_joined),
    ("a line reaches the others, not the sender", case_broadcast),
    ("/nick valid", case_nick_valid),
    ("/nick invalid", case_nick_invalid),
    ("/nick taken or reserved", case_nick_taken),
    ("/who in order of joining", case_who_order),
    ("/quit", case_quit_slash),
    ("quit", case_quit_word),
    ("quit with CRLF", case_quit_crlf),
    ("nothing after /quit", case_quit_lines_after),
    ("left on close, reset and EOF", case_left_on_disconnect),
    ("unknown commands", case_unknown_command),
    ("empty lines are ignored", case_empty_lines),
    ("CRLF", case_crlf),
    ("line at --max-line passes, longer closes", case_line_limit),
    ("too long before the newline", case_line_too_long_without_newline),
    ("30 clients x 50 lines, per-sender order", case_many_clients),
    ("a client that never reads is cut off", case_slow_reader),
    ("SIGTERM/SIGINT with no clients exit 0", case_signal_no_clients),
    ("SIGTERM drains for 5 s, refuses new", case_sigterm_drain),
    ("SIGUSR1 prints the counters", case_stats),
    ("last client leaving ends the drain",
     case_drain_ends_when_clients_leave),
    ("second signal exits 1 at once", case_second_signal),
]


def all_cases():
    cases = list(COMMON)
    for mode in MODES:
        for name, fn in PER_MODE:
            cases.append(("[%s] %s" % (mode, name),
                          (lambda f, m: lambda: f(m))(fn, mode)))
    return cases


def main():
    global EXE
    if len(sys.argv) != 2:
        sys.stderr.write("usage: test_chat.py /path/to/uvs-chat\n")
        return 2
    EXE = os.path.abspath(sys.argv[1])
    # TEST_CHAT_ONLY: run the cases whose name holds this substring.
    return demo_server.run_cases(all_cases(), os.environ.get("TEST_CHAT_ONLY"))


if __name__ == "__main__":
    sys.exit(main())
