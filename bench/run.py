#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Runs the echo benchmarks side by side and prints a table of ratios.

Four echo servers answer the same load, one at a time, interleaved:
raw (bench-raw-echo: the minimal raw-libuv server, the floor any libuv
framework pays), event (uvs-echo --mode event), tpc (bench-thread-echo: a
plain C thread-per-connection server, the floor for ThreadingMixIn) and
thread (uvs-echo --mode thread). For each profile every round runs each
server once, in an order that alternates from round to round (raw event
tpc thread, then thread tpc event raw, ...), so a slow phase of a shared
machine lands on every server alike. The table shows medians with the
min-max over the rounds. The ratios event/raw and thread/tpc are judged
against the targets as the median of the rounds' ratios: each round runs
the two servers of a pair back to back, so a slow phase of the machine
(on this one every server runs at half the speed for seconds at a time)
slows both and cancels out, where a ratio of medians depends on how many
rounds of each server landed in a slow phase. The ratio of the medians
is shown beside it, and a 95% bootstrap interval of the median ratio
(resampling the rounds, seeded, so a rerun on the same data prints the
same) says how far the run can pin the ratio down.

Runs are short (0.25 s after 0.1 s of warm-up) and rounds many (50),
because a machine's speed drifts: on this one two runs of the same
server one after the other differ by 10% (standard deviation) when they
last 1 s each and by 7% when they last 0.25 s, and a ratio is only as
precise as that spread over the square root of the rounds. 50 short
rounds pin most ratios to a few percent; 9 rounds of 2 s (the old
defaults) left about +-8%, which could not tell 0.94 from 1.00. The
10 000-client profile (c10k) runs 8 rounds of 0.5 s, a fresh server for
each run (--c10k-rounds, --c10k-seconds): its runs vary as much, and
connecting 10 000 clients costs more time than measuring them.

The server and the load generator are pinned to different cores
(taskset) unless --no-pin: on a two-core machine that keeps the two
from trading places on one core.

Besides msgs/s, each run records the server's own CPU time (from
/proc/PID/stat) per echoed message: when the load generator's core is
the limit, throughput converges for every server, and the CPU cost per
message still tells them apart.

Memory: RSS per idle connection, from /proc/PID/status before and after
uvs-loadgen --hold opens N idle connections (10 000 by default), for all
four servers; "beyond the handle" is the uvs server's figure minus raw
libuv's, whose per-connection cost is libuv's handle and its malloc.

Outputs (in --out): results.json (every run), table.md (the table the
README quotes) and chart.png (gnuplot, when it is installed).

Standard library only.
"""

import argparse
import datetime
import json
import os
import platform
import random
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

SERVERS = ["raw", "event", "tpc", "thread"]
LABELS = {
    "raw": "raw libuv",
    "event": "uvs event",
    "tpc": "thread/conn",
    "thread": "uvs thread",
}
# (name, transport, conns, size, pipeline, what it shows)
PROFILES = [
    ("p1", "tcp", 1, 64, 1, "1 conn, 64 B, 1 in flight (latency)"),
    ("p2", "tcp", 100, 64, 16, "100 conns, 64 B, 16 in flight"),
    ("p3", "tcp", 10, 65536, 1, "10 conns, 64 KiB, 1 in flight"),
    ("p4", "tcp", 1000, 64, 1, "1000 conns, 64 B, 1 in flight"),
    ("p5", "udp", 8, 64, 8, "UDP: 8 sockets, 64 B, 8 in flight"),
]
# ratio name -> (numerator, denominator, {profile: target})
TARGETS = {
    "event/raw": ("event", "raw",
                  {"p1": 0.97, "p2": 0.97, "p3": 0.97, "p4": 0.97,
                   "p5": 0.97, "c10k": 0.97}),
    "thread/tpc": ("thread", "tpc", {"p2": 0.8, "p3": 0.95, "p4": 0.8}),
}
RSS_TARGET_BEYOND = 512  # bytes per idle connection beyond raw libuv's
BOOTSTRAP_SAMPLES = 2000  # resamples for a ratio's 95% interval


class BenchError(Exception):
    pass


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---- Processes ---------------------------------------------------------

def pinned(cmd, core, pin):
    if pin and shutil.which("taskset"):
        return ["taskset", "-c", str(core)] + cmd
    return cmd


def read_line(proc, timeout):
    """One line of proc's stdout within timeout seconds, or None."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            if proc.poll() is not None:
                return None
            continue
        chunk = os.read(fd, 1)
        if not chunk:
            return None
        buf += chunk
        if chunk == b"\n":
            return buf.decode(errors="replace").rstrip("\n")
    return None


class Server:
    """One echo server process, listening on a free port or a temp path."""

    def __init__(self, args, name, transport, tmpdir):
        bins = args.bins
        if transport == "tcp":
            addr = "tcp://127.0.0.1:0"
        elif transport == "udp":
            addr = "udp://127.0.0.1:0"
        else:
            addr = "unix:" + os.path.join(tmpdir, name + ".sock")
        if name == "raw":
            cmd = [bins["raw"], "--listen", addr]
        elif name == "tpc":
            cmd = [bins["tpc"], "--listen", addr]
        else:
            mode = "event" if name == "event" else "thread"
            cmd = [bins["echo"], "--listen", addr, "--mode", mode, "--quiet"]
        self.name = name
        self.proc = subprocess.Popen(pinned(cmd, 0, args.pin),
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE)
        line = read_line(self.proc, 10)
        if line is None or not line.startswith("listening on "):
            self.stop()
            raise BenchError("%s did not start (%r)" % (" ".join(cmd), line))
        self.addr = line[len("listening on "):]

    def cpu_seconds(self):
        """User + system CPU time of the server, all its threads."""
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def rss_bytes(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise BenchError("no VmRSS for %d" % self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


def loadgen_cmd(args, addr, conns, size, pipeline, seconds, extra=()):
    return pinned([args.bins["loadgen"], "--json",
                   "--conns", str(conns), "--size", str(size),
                   "--pipeline", str(pipeline),
                   "--seconds", "%g" % seconds,
                   "--warmup", "%g" % args.warmup] + list(extra) + [addr],
                  1, args.pin)


def run_load(args, server, conns, size, pipeline, seconds):
    """One loadgen run against server; its JSON plus the server's CPU."""
    cmd = loadgen_cmd(args, server.addr, conns, size, pipeline, seconds)
    cpu0 = server.cpu_seconds()
    try:
        out = subprocess.run(cmd, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE,
                             timeout=seconds + args.warmup + 120)
    except subprocess.TimeoutExpired:
        raise BenchError("loadgen did not end: %s" % " ".join(cmd))
    cpu1 = server.cpu_seconds()
    try:
        result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError("loadgen printed no result (%s): %s" % (
            " ".join(cmd), out.stderr.decode(errors="replace").strip()))
    result["server_cpu_s"] = cpu1 - cpu0
    result["exit"] = out.returncode
    if out.returncode != 0 or result.get("errors", 1) != 0:
        result["stderr"] = out.stderr.decode(errors="replace").strip()
    return result


def round_order(rnd, names):
    """A B C D, then D C B A, ...: each server leads and trails alike."""
    return list(names) if rnd % 2 == 0 else list(reversed(names))


# ---- Measurements ------------------------------------------------------

def measure_profiles(args, results):
    for name, transport, conns, size, pipeline, _ in args.profiles:
        runs = {s: [] for s in SERVERS}
        with tempfile.TemporaryDirectory(prefix="uvs-bench-") as tmp:
            servers = {}
            try:
                for s in SERVERS:
                    servers[s] = Server(args, s, transport, tmp)
                for rnd in range(args.rounds):
                    for s in round_order(rnd, SERVERS):
                        r = run_load(args, servers[s], conns, size,
                                     pipeline, args.seconds)
                        runs[s].append(r)
                        log("%s round %d %-6s %10.0f msgs/s  p50 %7.1f us"
                            "  p99 %8.1f us  errors %d" % (
                                name, rnd + 1, s, r["msgs_per_s"],
                                r["p50_us"], r["p99_us"], r["errors"]))
            finally:
                for srv in servers.values():
                    srv.stop()
        results["profiles"][name] = runs


def measure_c10k(args, results):
    """args.c10k concurrent echo clients, one message in flight each.
    Each run gets a fresh server (a new port), so the clients of one run
    never wait for ports the last run's connections still hold."""
    runs = {s: [] for s in SERVERS}
    with tempfile.TemporaryDirectory(prefix="uvs-bench-") as tmp:
        for rnd in range(args.c10k_rounds):
            for s in round_order(rnd, SERVERS):
                srv = Server(args, s, "tcp", tmp)
                try:
                    r = run_load(args, srv, args.c10k, 64, 1,
                                 args.c10k_seconds)
                finally:
                    srv.stop()
                runs[s].append(r)
                log("c10k round %d %-6s %10.0f msgs/s  errors %d" % (
                    rnd + 1, s, r["msgs_per_s"], r["errors"]))
    results["profiles"]["c10k"] = runs


def measure_rss(args, results):
    """RSS per idle connection with args.idle connections held open."""
    out = {s: [] for s in SERVERS}
    with tempfile.TemporaryDirectory(prefix="uvs-bench-") as tmp:
        for rnd in range(args.mem_rounds):
            for s in round_order(rnd, SERVERS):
                srv = Server(args, s, "tcp", tmp)
                hold = None
                try:
                    time.sleep(0.2)
                    rss0 = srv.rss_bytes()
                    cmd = pinned([args.bins["loadgen"], "--hold",
                                  "--conns", str(args.idle), "--size", "64",
                                  srv.addr], 1, args.pin)
                    hold = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE)
                    line = read_line(hold, 120)
                    if line != "ready %d" % args.idle:
                        raise BenchError("%s: loadgen --hold said %r" % (
                            s, line))
                    time.sleep(0.2)
                    rss1 = srv.rss_bytes()
                    hold.stdin.close()
                    if hold.wait(timeout=60) != 0:
                        raise BenchError("%s: loadgen --hold failed" % s)
                finally:
                    if hold is not None:
                        if hold.poll() is None:
                            hold.kill()
                            hold.wait()
                        hold.stdout.close()
                    srv.stop()
                per = (rss1 - rss0) / args.idle
                out[s].append({"rss0": rss0, "rss1": rss1, "per_conn": per})
                log("rss round %d %-6s %8.0f B per idle connection" % (
                    rnd + 1, s, per))
    results["rss"] = out


# ---- Report ------------------------------------------------------------

def med(values):
    return statistics.median(values) if values else float("nan")


def median_interval(values):
    """A 95% bootstrap interval of the median of values (the rounds'
    ratios): the median of BOOTSTRAP_SAMPLES resamples drawn with
    replacement, their 2.5th and 97.5th percentiles. Seeded, so the
    same data always gives the same interval."""
    if len(values) < 2:
        return values[0], values[0]
    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(values, k=len(values)))
                  for _ in range(BOOTSTRAP_SAMPLES))
    return (meds[int(0.025 * BOOTSTRAP_SAMPLES)],
            meds[int(0.975 * BOOTSTRAP_SAMPLES) - 1])


def fmt_rate(x):
    if x >= 1e6:
        return "%.2fM" % (x / 1e6)
    if x >= 1e3:
        return "%.1fk" % (x / 1e3)
    return "%.0f" % x


def summarize(results):
    """Medians, ranges and ratios per profile and server."""
    summary = {}
    for prof, runs in results["profiles"].items():
        row = {}
        for s, rs in runs.items():
            if not rs:
                continue
            rates = [r["msgs_per_s"] for r in rs]
            cpu = [r["server_cpu_s"] * 1e6 / max(r.get("msgs_total",
                                                       r["msgs"]), 1)
                   for r in rs]
            row[s] = {
                "msgs_per_s": med(rates), "min": min(rates),
                "max": max(rates),
                "mb_per_s": med([r["mb_per_s"] for r in rs]),
                "p50_us": med([r["p50_us"] for r in rs]),
                "p99_us": med([r["p99_us"] for r in rs]),
                "max_us": max(r["max_us"] for r in rs),
                "cpu_us_per_msg": med(cpu),
                "client_load": med([r["client_cpu_s"] / r["seconds"]
                                    for r in rs if r["seconds"] > 0]),
                "errors": sum(r["errors"] for r in rs),
            }
        for ratio, (a, b, targets) in TARGETS.items():
            if a in row and b in row and row[b]["msgs_per_s"] > 0:
                # Each round's pair ran back to back (round_order keeps
                # them adjacent), so a slow phase of the machine slows
                # both: the median of the rounds' ratios cancels it,
                # where a ratio of medians mixes phases.
                pairs = [x["msgs_per_s"] / y["msgs_per_s"]
                         for x, y in zip(runs[a], runs[b])
                         if y["msgs_per_s"] > 0]
                low, high = median_interval(pairs)
                row[ratio] = {
                    "value": med(pairs), "min": min(pairs),
                    "max": max(pairs), "ci_low": low, "ci_high": high,
                    "of_medians": row[a]["msgs_per_s"] /
                    row[b]["msgs_per_s"],
                    "target": targets.get(prof)}
        summary[prof] = row
    rss = {}
    for s, rs in results.get("rss", {}).items():
        if rs:
            rss[s] = med([r["per_conn"] for r in rs])
    if "raw" in rss:
        for s in ("event", "thread", "tpc"):
            if s in rss:
                rss[s + "_beyond_raw"] = rss[s] - rss["raw"]
    summary["rss"] = rss
    return summary


def verdict(value, target):
    if target is None:
        return ""
    return " ok" if value >= target else " BELOW %.2f" % target


def table(results, summary):
    lines = []
    m = results["machine"]
    lines.append("Machine: %s, %d cores, Linux %s, libuv %s; %d rounds of "
                 "%g s (+%g s warm-up) per server and profile, c10k %d "
                 "rounds of %g s%s." % (
                     m["cpu"], m["cores"], m["kernel"], m["libuv"],
                     results["rounds"], results["seconds"],
                     results["warmup"], results.get("c10k_rounds", 1),
                     results.get("c10k_seconds", results["seconds"]),
                     ", server and load generator pinned to different "
                     "cores" if results["pin"] else ", unpinned"))
    lines.append("")
    lines.append("| profile | server | msgs/s median (min-max) | MB/s | "
                 "p50 us | p99 us | server CPU us/msg | load generator "
                 "CPU | errors |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    descr = {p[0]: p[5] for p in PROFILES}
    descr["c10k"] = "%d conns, 64 B, 1 in flight" % results["c10k"]
    for prof, row in summary.items():
        if prof == "rss":
            continue
        for s in SERVERS:
            if s not in row:
                continue
            c = row[s]
            lines.append("| %s | %s | %s (%s-%s) | %.2f | %.1f | %.1f | "
                         "%.2f | %.0f%% | %d |" % (
                             prof + ": " + descr.get(prof, "")
                             if s == SERVERS[0] else "",
                             LABELS[s], fmt_rate(c["msgs_per_s"]),
                             fmt_rate(c["min"]), fmt_rate(c["max"]),
                             c["mb_per_s"], c["p50_us"], c["p99_us"],
                             c["cpu_us_per_msg"], 100 * c["client_load"],
                             c["errors"]))
    lines.append("")
    lines.append("Ratios: the median of the rounds' ratios (each round "
                 "runs the pair back to back), judged against the target; "
                 "in brackets its 95% bootstrap interval, the min-max of "
                 "the rounds' ratios, and the ratio of the medians above.")
    lines.append("")
    lines.append("| profile | uvs event / raw libuv | uvs thread / "
                 "thread-per-connection |")
    lines.append("| --- | --- | --- |")
    for prof, row in summary.items():
        if prof == "rss":
            continue
        cells = []
        for ratio in TARGETS:
            if ratio in row:
                v = row[ratio]
                cells.append("%.3f%s (%.3f-%.3f; %.2f-%.2f; %.3f)" % (
                    v["value"], verdict(v["value"], v["target"]),
                    v["ci_low"], v["ci_high"], v["min"], v["max"],
                    v["of_medians"]))
            else:
                cells.append("-")
        lines.append("| %s | %s |" % (prof, " | ".join(cells)))
    rss = summary.get("rss")
    if rss:
        lines.append("")
        lines.append("RSS per idle connection at %d idle connections "
                     "(median of %d rounds):" % (results["idle"],
                                                 results["mem_rounds"]))
        lines.append("")
        lines.append("| server | bytes per connection | beyond raw libuv |")
        lines.append("| --- | --- | --- |")
        for s in SERVERS:
            if s not in rss:
                continue
            beyond = rss.get(s + "_beyond_raw")
            cell = "-" if beyond is None else "%+.0f" % beyond
            if s == "event" and beyond is not None:
                cell += verdict(-beyond, -RSS_TARGET_BEYOND).replace(
                    "BELOW -", "ABOVE ")
            lines.append("| %s | %.0f | %s |" % (LABELS[s], rss[s], cell))
    return "\n".join(lines) + "\n"


def chart(out_dir, summary):
    """Grouped bars of msgs/s by profile and server, min-max as error bars."""
    gnuplot = shutil.which("gnuplot")
    if gnuplot is None:
        log("gnuplot not found: no chart (apt-get install gnuplot-nox)")
        return None
    data = os.path.join(out_dir, "chart.dat")
    png = os.path.join(out_dir, "chart.png")
    with open(data, "w") as f:
        f.write("# profile " + " ".join(
            "%s %s_min %s_max" % (s, s, s) for s in SERVERS) + "\n")
        for prof, row in summary.items():
            if prof == "rss":
                continue
            cells = []
            for s in SERVERS:
                c = row.get(s)
                if c is None:
                    cells.append("NaN NaN NaN")
                else:
                    cells.append("%g %g %g" % (c["msgs_per_s"], c["min"],
                                               c["max"]))
            f.write("%s %s\n" % (prof, " ".join(cells)))
    plots = []
    for i, s in enumerate(SERVERS):
        plots.append("%s using %d:%d:%d%s title '%s'" % (
            "'%s'" % data if i == 0 else "''", 2 + 3 * i, 3 + 3 * i,
            4 + 3 * i, ":xtic(1)" if i == 0 else "", LABELS[s]))
    script = "\n".join([
        "set terminal pngcairo size 900,480 font 'sans,10'",
        "set output '%s'" % png,
        "set title 'Echo throughput by profile and server (median, "
        "min-max bars)'",
        "set ylabel 'messages per second'",
        "set logscale y",
        "set format y '%.0s%c'",
        "set grid ytics",
        "set key top right",
        "set style data histogram",
        "set style histogram errorbars gap 2 lw 1",
        "set style fill solid 0.8 border -1",
        "set boxwidth 0.9",
        "plot " + ", ".join(plots),
    ]) + "\n"
    r = subprocess.run([gnuplot], input=script.encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0 or not os.path.exists(png):
        raise BenchError("gnuplot failed: %s" % r.stderr.decode().strip())
    return png


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    libuv = "?"
    try:
        libuv = subprocess.run(["pkg-config", "--modversion", "libuv"],
                               stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL).stdout.decode(
                                   ).strip() or "?"
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count() or 0,
            "kernel": platform.release(), "libuv": libuv}


# ---- Main --------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Echo benchmarks side by side: uvs event vs raw libuv, "
        "uvs thread vs thread-per-connection.")
    p.add_argument("--build", default="build",
                   help="meson build directory (default: build)")
    p.add_argument("--out", default=None,
                   help="where results go (default: BUILD/bench-results)")
    p.add_argument("--rounds", type=int, default=50,
                   help="rounds per profile, at least 3 for a median "
                   "with a range (default 50)")
    p.add_argument("--seconds", type=float, default=0.25,
                   help="measured seconds per run (default 0.25)")
    p.add_argument("--warmup", type=float, default=0.1,
                   help="unmeasured seconds before each run (default 0.1)")
    p.add_argument("--profiles", default="p1,p2,p3,p4,p5,c10k,rss",
                   help="comma-separated subset of p1..p5, c10k, rss")
    p.add_argument("--c10k", type=int, default=10000,
                   help="clients of the c10k profile (default 10000)")
    p.add_argument("--c10k-rounds", type=int, default=8,
                   help="rounds of the c10k profile (default 8)")
    p.add_argument("--c10k-seconds", type=float, default=0.5,
                   help="measured seconds of a c10k run (default 0.5)")
    p.add_argument("--idle", type=int, default=10000,
                   help="idle connections for the RSS figure (default 10000)")
    p.add_argument("--mem-rounds", type=int, default=3,
                   help="rounds of the RSS measurement (default 3)")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not pin server and load generator to cores")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 round of 0.3 s, 500 clients, "
                   "500 idle connections (checks the harness, not speed)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 0.3, 0.1
        args.c10k_seconds, args.c10k_rounds = 0.3, 1
        args.c10k, args.idle, args.mem_rounds = 500, 500, 1
    if (args.rounds < 1 or args.seconds <= 0 or args.mem_rounds < 1 or
            args.c10k_rounds < 1 or args.c10k_seconds <= 0):
        p.error("--rounds, --mem-rounds, --seconds, --c10k-rounds and "
                "--c10k-seconds must be positive")
    wanted = set(args.profiles.split(","))
    unknown = wanted - {p[0] for p in PROFILES} - {"c10k", "rss"}
    if unknown:
        p.error("unknown profile: %s" % ", ".join(sorted(unknown)))
    args.wanted = wanted
    args.profiles = [p for p in PROFILES if p[0] in wanted]
    if args.out is None:
        args.out = os.path.join(args.build, "bench-results")
    args.bins = {
        "loadgen": os.path.join(args.build, "bench", "uvs-loadgen"),
        "raw": os.path.join(args.build, "bench", "bench-raw-echo"),
        "tpc": os.path.join(args.build, "bench", "bench-thread-echo"),
        "echo": os.path.join(args.build, "demos", "uvs-echo"),
    }
    for path in args.bins.values():
        if not os.access(path, os.X_OK):
            p.error("%s is missing: run `meson compile -C %s bench` first" % (
                path, args.build))
    return args


def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft


def main(argv):
    args = parse_args(argv)
    # Threading mode: a waiting request may hold an eventfd, up to a quarter
    # of the limit (lib/reqio.c), on top of its socket.
    need = max(args.c10k, args.idle) * 3 // 2 + 256
    if raise_fd_limit(need) < need:
        log("the descriptor limit is below %d: raise `ulimit -n`" % need)
        return 1
    os.makedirs(args.out, exist_ok=True)
    started = time.monotonic()
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "machine": machine(), "rounds": args.rounds,
        "seconds": args.seconds, "warmup": args.warmup, "pin": args.pin,
        "c10k": args.c10k, "c10k_seconds": args.c10k_seconds,
        "c10k_rounds": args.c10k_rounds, "idle": args.idle,
        "mem_rounds": args.mem_rounds, "profiles": {},
    }
    try:
        measure_profiles(args, results)
        if "c10k" in args.wanted:
            measure_c10k(args, results)
        if "rss" in args.wanted:
            measure_rss(args, results)
    except BenchError as e:
        log("bench: %s" % e)
        return 1
    results["elapsed_s"] = time.monotonic() - started
    summary = summarize(results)
    results["summary"] = summary
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    text = table(results, summary)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text)
    print(text, end="")
    try:
        png = chart(args.out, summary)
    except BenchError as e:
        log("bench: %s" % e)
        return 1
    errors = sum(row[s]["errors"] for prof, row in summary.items()
                 if prof != "rss" for s in SERVERS if s in row)
    log("results in %s%s; %.0f s in all" % (
        args.out, " (chart.png)" if png else "", results["elapsed_s"]))
    if errors:
        log("bench: %d errors (see results.json)" % errors)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
