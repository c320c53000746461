# SPDX-License-Identifier: MIT
"""What the demo contract tests (test_echo.py, test_chat.py,
test_valgrind.py) share, stdlib only: a demo server process read up to its
listening line and always killed by pid, its SIGUSR1 counters line,
one-shot runs for the command-line errors, the client side of the demos'
address syntax, the processes a demo forks (from /proc), and the TAP
runner.

Not a test by itself: the test scripts import it from their own folder.
"""

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

TIMEOUT = 10.0  # seconds for any one socket operation or wait

# The fields of uvs_stats_t, in its order: the SIGUSR1 line of both demos.
STATS_FIELDS = ("accepted", "active", "children", "rejected_verify",
                "rejected_limit", "bytes_in", "bytes_out", "handler_errors",
                "conn_errors", "timeouts", "accept_errors",
                "datagrams_oversize", "datagrams_dropped")
STATS_RE = re.compile(rb"^stats: " + rb" ".join(
    f.encode() + rb"=(?P<" + f.encode() + rb">\d+)" for f in STATS_FIELDS) +
    rb"\n$")


class Skip(Exception):
    """A case that cannot run here; reported as TAP '# SKIP'."""


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


# ---- Addresses ------------------------------------------------------------

def listening_regex(listen):
    """The listening line a demo must print for --listen `listen`: the
    address as written, with the real port (group 'port') for port 0."""
    text = listen.encode()
    if re.match(rb"^(tcp|udp)://", text) and text.endswith(b":0"):
        return re.compile(rb"^listening on " + re.escape(text[:-1]) +
                          rb"(?P<port>\d+)\n$")
    return re.compile(rb"^listening on " + re.escape(text) + rb"\n$")


def sockaddr(address):
    """(family, type, address for socket.connect/sendto) for a demo
    address: tcp://HOST:PORT, udp://HOST:PORT, unix:PATH, unixgram:PATH
    (@NAME: a Linux abstract name)."""
    for scheme, kind in (("tcp://", socket.SOCK_STREAM),
                         ("udp://", socket.SOCK_DGRAM)):
        if address.startswith(scheme):
            host, _, port = address[len(scheme):].rpartition(":")
            if host.startswith("["):
                return socket.AF_INET6, kind, (host[1:-1], int(port))
            return socket.AF_INET, kind, (host, int(port))
    for scheme, kind in (("unixgram:", socket.SOCK_DGRAM),
                         ("unix:", socket.SOCK_STREAM)):
        if address.startswith(scheme):
            path = address[len(scheme):]
            if path.startswith("@"):
                path = "\0" + path[1:]
            return socket.AF_UNIX, kind, path
    raise ValueError("not a demo address: %r" % address)


def short_tempdir():
    """A new private directory for Unix socket files, with a path short
    enough for sockaddr_un (108 bytes) even under a long TMPDIR. The
    caller removes it (shutil.rmtree)."""
    d = tempfile.mkdtemp(prefix="uvs-")
    if len(d) > 60:
        os.rmdir(d)
        d = tempfile.mkdtemp(prefix="uvs-", dir="/tmp")
    return d


def expand_listen(listen):
    """(listen, tmpdir): a "{tmp}" in `listen` is replaced by a new private
    directory (see short_tempdir), returned for DemoServer to remove; None
    when there is none."""
    if listen is None or "{tmp}" not in listen:
        return listen, None
    tmpdir = short_tempdir()
    return listen.replace("{tmp}", tmpdir), tmpdir


# ---- Server processes -----------------------------------------------------

RUNNING = set()  # pids of the DemoServer processes not yet killed

class DemoServer:
    """A running demo started with `argv`. On entry it reads stdout up to
    the listening line, which must match `regex` (see listening_regex);
    on exit the process is killed by pid and `tmpdir`, if any, removed.
    With `session` it leads a process group of its own (a terminal's
    foreground job), which its children join. `start_timeout`: seconds
    allowed until the listening line."""

    def __init__(self, argv, regex, env=None, tmpdir=None, session=False,
                 start_timeout=5.0):
        self.tmpdir = tmpdir
        self.start_timeout = start_timeout
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=self.stderr, bufsize=0, env=env,
                                     start_new_session=session)
        RUNNING.add(self.proc.pid)
        self.regex = regex
        self.line = b""
        self.address = None  # the text after "listening on "
        self.port = None     # tcp:// and udp:// only

    def __enter__(self):
        try:
            self.line = self.read_line(self.start_timeout)
            m = self.regex.match(self.line)
            check(m is not None,
                  "listening line %r does not match %s; stderr: %r"
                  % (self.line, self.regex.pattern, self.read_stderr()))
            self.address = self.line[len(b"listening on "):-1].decode()
            if "port" in m.groupdict():
                self.port = int(m.group("port"))
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

    @property
    def target(self):
        """What connect() takes: the port for tcp://127.0.0.1, else the
        address."""
        if self.address.startswith("tcp://127.0.0.1:"):
            return self.port
        return self.address

    @property
    def path(self):
        """The socket file of a unix: or unixgram: address (None for an
        abstract name or an IP address)."""
        family, _, path = sockaddr(self.address)
        if family != socket.AF_UNIX or path.startswith("\0"):
            return None
        return path

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
        """All the server wrote to stderr so far. pread leaves the file
        offset, which the server shares, alone: a seek while it writes
        would make it overwrite its own output."""
        fd = self.stderr.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0)

    def signal(self, signum):
        os.kill(self.proc.pid, signum)

    def stats(self, timeout=TIMEOUT):
        """Sends SIGUSR1 and returns the counters line it prints to stderr
        as {name: int}, checking its form: 'stats: ' and every field of
        uvs_stats_t, in order, as name=value, on one line."""
        def complete_lines():
            err = self.read_stderr()
            return err, [line for line in err.split(b"\n")[:-1]
                         if line.startswith(b"stats: ")]

        before = len(complete_lines()[1])
        self.signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while True:
            err, lines = complete_lines()
            if len(lines) > before:
                break
            check(time.monotonic() < deadline, "no stats line within %.1f "
                  "s of SIGUSR1; stderr %r" % (timeout, err[-2000:]))
            check(self.proc.poll() is None, "exited (%r) after SIGUSR1; "
                  "stderr %r" % (self.proc.poll(), err[-2000:]))
            time.sleep(0.02)
        m = STATS_RE.match(lines[before] + b"\n")
        check(m is not None, "stats line %r does not read '%s'"
              % (lines[before], STATS_RE.pattern.decode()))
        return {k: int(v) for k, v in m.groupdict().items()}

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
        RUNNING.discard(self.proc.pid)
        self.proc.stdout.close()
        self.stderr.close()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


# ---- Processes a demo forks -----------------------------------------------

def proc_stat(pid):
    """(state, parent pid, start time) of process `pid` from /proc, or None
    when there is no such process."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The name, in parentheses, may hold anything: fields follow the last
    # ')'. They start at the state (field 3); the start time is field 22.
    fields = data[data.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[1]), int(fields[19])


def children_of(pid):
    """{pid: (state, start time)} of the processes whose parent is `pid`,
    zombies ('Z') included. Empty without /proc."""
    found = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        st = proc_stat(int(name))
        if st is not None and st[1] == pid:
            found[int(name)] = (st[0], st[2])
    return found


def live(procs):
    """The pids of `procs` ({pid: (state, start time)}, as children_of
    gives) that are still the same process and not a zombie."""
    alive = []
    for pid, (_, start) in procs.items():
        st = proc_stat(pid)
        if st is not None and st[2] == start and st[0] != "Z":
            alive.append(pid)
    return alive


def become_subreaper():
    """Makes this process the reaper of the orphans of its descendants
    (Linux PR_SET_CHILD_SUBREAPER), so that a process a demo forked and
    left behind becomes our child, where check_no_orphans finds it.
    Returns False where that is not available."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def check_no_orphans(what, seen=None, timeout=2.0):
    """After a demo has exited and been waited for: no process it forked
    is left. Orphans reparented to us (become_subreaper) are reaped once
    dead and must all die within `timeout` (a child killed with its parent
    takes a moment); so must the processes in `seen` ({pid: (state, start
    time)}, children the demo had while running), wherever they went.
    Leftovers are killed, so that nothing outlives the case, and fail it."""
    seen = dict(seen or {})
    deadline = time.monotonic() + timeout
    while True:
        ours = {pid: v for pid, v in children_of(os.getpid()).items()
                if pid not in RUNNING}  # a demo's status is Popen's
        for pid, (state, _) in ours.items():
            if state == "Z":
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        ours = {pid: v for pid, v in ours.items() if v[0] != "Z"}
        seen.update(ours)
        left = live(seen)
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for pid in left:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # not ours: init reaps it
    check(not left, "%s: %d process(es) the demo forked outlive it: %s"
          % (what, len(left), sorted(left)))


# ---- One-shot runs --------------------------------------------------------

def run_usage(exe, *args):
    """Runs the demo to completion; returns (status, stdout, stderr)."""
    name = os.path.basename(exe)
    try:
        p = subprocess.run([exe] + list(args), stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=5)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("%s %s did not exit within 5 s (stdout %r)"
                             % (name, " ".join(args), e.stdout))
    return p.returncode, p.stdout, p.stderr


def expect_usage_error(exe, *args, status=2):
    """The demo exits `status` with nothing on stdout and exactly one line
    on stderr, which is returned."""
    name = os.path.basename(exe)
    code, out, err = run_usage(exe, *args)
    check(code == status, "%s %s: exit %d, want %d (stderr %r)"
          % (name, " ".join(args), code, status, err))
    check(out == b"", "%s %s: stdout not empty: %r"
          % (name, " ".join(args), out))
    check(err.endswith(b"\n") and err.count(b"\n") == 1 and len(err) > 1,
          "%s %s: want exactly one stderr line, got %r"
          % (name, " ".join(args), err))
    return err


# ---- TAP ------------------------------------------------------------------

def run_cases(cases, only=None):
    """Runs [(name, fn)], those whose name contains `only` when given, as
    TAP on stdout. Returns the exit status: 1 when a case failed."""
    cases = [c for c in cases if only is None or only in c[0]]
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
