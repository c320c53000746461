/* SPDX-License-Identifier: MIT */
/*
 * uvs-echo: the echo server of DESIGN.md section 4, on every transport
 * (tcp://, unix: streams; udp://, unixgram: datagrams) in four modes.
 * Stream: every byte a client sends comes back in order; on the client's
 * EOF what is pending is sent and the connection is closed. Datagram: each
 * datagram goes back to its sender unchanged, as one datagram.
 *
 * - event (the default): on_data writes the bytes back on the loop thread.
 *   A client that sends but never reads cannot grow memory: above
 *   ECHO_HIGH_WATER queued bytes the connection stops reading, and on_drain
 *   resumes it once the queue is empty. A datagram is answered from
 *   on_datagram with uvs_server_send_to, an empty one with an empty one.
 * - thread: a blocking handler (uvs_recv, then uvs_sendall) on a worker
 *   thread per client; --threads N caps the workers (more clients wait in
 *   arrival order), without it the pool grows with the clients
 *   (config.max_threads 0). uvs paces reading and writing by itself, so
 *   the handler needs no backpressure code.
 * - sync: the same blocking handler on the loop thread, one client at a
 *   time; the next waits in the listen backlog (socketserver's TCPServer).
 * - fork: the same blocking handler in a child process per client
 *   (socketserver's ForkingMixIn); uvs forks, reaps and caps the children
 *   (config.max_children, 40: later clients wait in the backlog).
 *
 * In thread, sync and fork mode a datagram is a request of its own
 * (socketserver's DatagramRequestHandler): handle_datagram reads it whole
 * (uvs_read_exact stops at its end) and writes it back, and uvs sends what
 * was written as one datagram after finish. uvs sends nothing for an empty
 * reply, so an empty datagram gets no answer in these modes; event mode
 * answers it, since the contract says each datagram is sent back.
 *
 * A unixgram client that did not bind a name has no address to answer:
 * its datagrams are served and the replies dropped, silently (uvs does that
 * itself in the blocking modes; on_datagram does not even try). A reply
 * to a client that has gone is dropped silently too; any other failure to
 * answer (the server's send queue is full) is logged once until a reply
 * goes out again, as uvs logs the blocking modes' dropped replies.
 *
 * --max-conns and --idle-timeout are uvs's config.max_connections (a
 * client past the limit is accepted and closed at once, so it sees EOF
 * rather than waiting in the backlog) and config.idle_timeout_ms; both
 * apply to stream addresses only. In fork mode the 40-children cap is
 * raised above --max-conns, so that the limit closes rather than pauses.
 *
 * Stopping is uvs_server_drain (DESIGN.md's three verbs): the first
 * SIGINT/SIGTERM starts it with --drain as the deadline; uvs stops
 * accepting (the listener is closed, so new clients are refused), lets
 * open connections and fork mode's children run until they end, closes
 * what is left at the deadline (queued output flushed) and calls
 * on_drained, which ends serve_forever; uvs_server_close then has nothing
 * left to close. A second signal exits at once with status 1. SIGUSR1
 * prints the server's counters (uvs_server_stats) as one line to stderr.
 * In event, thread and fork mode the loop always runs, so uv_signal_t
 * delivers the signals, and the signal handles stay open until the close
 * has returned, so a second signal still exits at once.
 *
 * Fork mode: a child ignores SIGINT, SIGUSR1 and any SIGTERM but its
 * parent's, so that a Ctrl-C (sent to the terminal's whole process group)
 * or a group-wide SIGTERM does not cut its client off before the drain:
 * the parent alone decides when children end. The parent's SIGTERM is the
 * drain's deadline: the child stops reading, echoes what came and closes
 * gracefully; uvs kills a child still there close_linger_ms later. On
 * Linux a child also asks for SIGKILL when the parent dies
 * (PR_SET_PDEATHSIG), so after a second signal, or when the parent is
 * killed, no child goes on serving as an orphan.
 *
 * Sync mode cannot use uv_signal_t: while a client is served the loop thread
 * is inside handle() and no loop callback runs. So sync mode installs plain
 * sigaction handlers, which only do async-signal-safe things: record the
 * signal (the first SIGINT/SIGTERM with its CLOCK_MONOTONIC time) in
 * lock-free atomics, wake the loop with uv_async_send (documented as
 * async-signal-safe) for the case that no client is being served, and
 * _exit(1) on a second signal. The handler waits in uvs_recv with a short
 * request timeout, and before each send it waits for the socket to be
 * writable in short steps, so it looks at the flags at least every
 * SYNC_POLL_MS: it prints the counters for SIGUSR1, and after the first
 * SIGINT/SIGTERM it starts the drain itself (uvs allows that on the loop
 * thread), goes on echoing until the client closes or the drain deadline
 * passes (uvs's deadline timer cannot run while the handler holds the
 * loop), and then returns. A handler that starts after the signal resets
 * its client at once, so a client taken from the backlog after the signal
 * is closed, never served. The sends go out in slices of SYNC_SEND_SLICE
 * bytes after poll() has reported the socket writable, because a blocked
 * uvs_sendall could not look at the flags, and one that timed out would
 * leave it unknown how much was sent.
 *
 * The command line is a contract (scripts and test/demos/test_echo.py drive
 * it): a bad flag, value or address prints one line to stderr and exits 2.
 */
#include "../common.h"

#include <uvs.h>

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
# include <sys/prctl.h>
#endif

/* Queued output above which a connection stops reading (1 MiB). */
#define ECHO_HIGH_WATER ((size_t) 1024 * 1024)

/* Bytes a blocking handler reads at a time. Small enough that 200 worker
 * threads touch little stack; uvs buffers the input anyway. */
#define ECHO_CHUNK 16384

/* The largest datagram served (config.max_packet_size, uvs's default),
 * which holds the largest UDP payload (65507 bytes); the blocking modes'
 * handler reads a datagram into a buffer of this size. */
#define ECHO_MAX_DATAGRAM 65536

/* Sync mode: the longest the handler waits in one uvs_recv or poll()
 * before it looks at the signal flags again, in milliseconds. */
#define SYNC_POLL_MS 100

/* Sync mode: bytes sent per uvs_sendall once poll() has reported the socket
 * writable. Linux reports POLLOUT only while at least a third of the send
 * buffer is free, and its smallest default buffer (16 KiB) leaves room
 * for this, so the call does not block even for a peer that stops
 * reading. */
#define SYNC_SEND_SLICE 4096

/* Sync mode: the request timeout for a slice's uvs_sendall. It should
 * never be reached (see SYNC_SEND_SLICE); it only keeps a blocked send from
 * outliving a drain. */
#define SYNC_SEND_TIMEOUT_MS 1000

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* The sync-mode signal handler may touch only lock-free atomics. */
#if ATOMIC_INT_LOCK_FREE != 2 || ATOMIC_LLONG_LOCK_FREE != 2
# error "uvs-echo needs lock-free atomic int and long long"
#endif

typedef struct echo_options_s {
  const char* listen;
  uvs_mode_t mode;
  unsigned threads;   /* 0: --threads not given */
  unsigned max_conns; /* 0: no limit */
  uint64_t idle_ms;   /* 0: no idle timeout */
  uint64_t drain_ms;
  int quiet;
} echo_options_t;

/* The program's state, hung on the server (uvs_server_set_data). */
typedef struct echo_app_s {
  uvs_server_t* server;
  uv_signal_t signals[DEMO_SIGNAL_COUNT]; /* event, thread and fork mode */
  uv_async_t wake;                        /* sync mode: a signal arrived */
  uint64_t drain_ms;
  uint64_t deadline_ms; /* CLOCK_MONOTONIC ms at which the drain ends */
  uint64_t idle_ms;     /* sync mode: --idle-timeout, 0 for none */
  int quiet;
  int draining;         /* the first signal has arrived */
  int closing;          /* serve_forever has returned */
  int send_error_shown; /* event mode: a dropped reply was logged */
} echo_app_t;

/* Per-connection state (handler.state_size), event mode. */
typedef struct echo_state_s {
  int paused; /* reading stopped for backpressure */
} echo_state_t;

/* What the sync-mode signal handler shares with the loop thread. A signal
 * may run on any thread, so these are lock-free atomics (checked above),
 * which C11 allows a signal handler to use. */
static atomic_int sync_signals;          /* first signals seen: 0 or 1 */
static atomic_int sync_stats;            /* SIGUSR1 not yet answered */
static atomic_ullong sync_signal_ms;     /* its CLOCK_MONOTONIC time */
static atomic_int sync_wake_live;        /* app.wake may be sent to */
static uv_async_t* sync_wake;            /* set before the handlers */
static char sync_second_msg[2][64];      /* for SIGINT, SIGTERM */
static volatile sig_atomic_t sync_quiet; /* --quiet */

/* Fork mode: the parent's pid, for a child to see whether the parent died
 * before the child asked to die with it. */
static pid_t fork_parent;
/* Fork mode, in a stream child: its connection's descriptor, for
 * on_child_sigterm. */
static volatile sig_atomic_t fork_child_fd = -1;

static const char usage_text[] =
    "usage: uvs-echo [--listen ADDR] [--mode event|sync|thread|fork]\n"
    "                [--threads N] [--max-conns N] [--idle-timeout SEC]\n"
    "                [--drain SEC] [--quiet] [--help]\n"
    "\n"
    "An echo server on uvs. Streams: every byte a client sends comes back\n"
    "in order. Datagrams: each one goes back to its sender unchanged.\n"
    "\n"
    "  --listen ADDR       address to serve, default tcp://127.0.0.1:9999\n"
    "                      (port 0: any free port):\n"
    "                        tcp://HOST:PORT   TCP stream;\n"
    "                        udp://HOST:PORT   UDP datagrams, up to 65507\n"
    "                                          bytes;\n"
    "                        unix:PATH         Unix stream socket;\n"
    "                        unixgram:PATH     Unix datagram socket.\n"
    "                      HOST is an IPv4 address, [IPv6] or a name. A\n"
    "                      PATH of @NAME is a Linux abstract name (no\n"
    "                      file). A stale socket file at PATH is replaced;\n"
    "                      the file is removed at exit. A unixgram client\n"
    "                      must bind a name of its own to get replies.\n"
    "  --mode MODE         how clients are served:\n"
    "                        event   all on one thread, event-driven\n"
    "                                (the default);\n"
    "                        thread  a worker thread per client (per\n"
    "                                datagram);\n"
    "                        sync    one client (datagram) at a time, the\n"
    "                                next waits;\n"
    "                        fork    a child process per client (per\n"
    "                                datagram), at most 40 at once; more\n"
    "                                clients wait.\n"
    "                      An empty datagram is answered with an empty one\n"
    "                      in event mode only: thread, sync and fork mode\n"
    "                      send nothing for an empty reply.\n"
    "  --threads N         thread mode only: at most N worker threads\n"
    "                      (N >= 1); more clients wait for a free one in\n"
    "                      arrival order. Default: no cap, as many\n"
    "                      threads as clients.\n"
    "  --max-conns N       at most N connections open at once (N >= 1): a\n"
    "                      client past them is accepted and closed at once\n"
    "                      (it reads EOF), never served and never left\n"
    "                      waiting; once one of the N closes, new ones are\n"
    "                      served again. Fork mode: N children at most, in\n"
    "                      place of the cap of 40. Sync mode serves one at\n"
    "                      a time and accepts nobody while it does: the\n"
    "                      others wait in the backlog until it ends, so\n"
    "                      there N changes nothing.\n"
    "  --idle-timeout SEC  close a connection that has received and sent\n"
    "                      nothing for SEC seconds (> 0, fractions allowed).\n"
    "                      --max-conns and --idle-timeout apply to tcp://\n"
    "                      and unix: only: with udp:// or unixgram: they\n"
    "                      have no effect.\n"
    "  --drain SEC         after SIGINT/SIGTERM, serve open connections for\n"
    "                      up to SEC seconds, then close them (default 5;\n"
    "                      non-negative, fractions allowed): they are read\n"
    "                      no more, what is queued for them is still sent,\n"
    "                      and a client that has not closed its side 2 s\n"
    "                      later is reset (fork mode: its child is killed).\n"
    "                      A datagram server has no connections: it exits\n"
    "                      once the replies it holds are sent (a reply the\n"
    "                      peer refuses for a second is dropped).\n"
    "  --quiet             do not log connection errors to stderr.\n"
    "  --help              print this help to stdout and exit 0.\n"
    "\n";

/* The rest of --help (one string literal may hold only 4095 bytes in
 * ISO C). */
static const char usage_notes[] =
    "A flag's value may follow as the next argument or after '=':\n"
    "--drain 2 or --drain=2.\n"
    "\n"
    "When ready it prints one line to stdout, 'listening on ADDR', with the\n"
    "real port. On SIGINT or SIGTERM it stops accepting at once (new\n"
    "clients are refused), keeps serving open connections until they close\n"
    "or --drain runs out, then closes the rest and exits 0. A second signal\n"
    "exits at once with 1. SIGUSR1 prints the server's counters as one line\n"
    "to stderr, 'stats: accepted=N active=N ...' (connections, or\n"
    "datagrams, taken; bytes in and out, which fork mode's children keep to\n"
    "themselves; errors and timeouts), and serving goes on; in sync mode\n"
    "the line comes within 0.1 s, also while a client is being served.\n"
    "\n"
    "Exit status: 0 after a signal; 1 when the address cannot be bound\n"
    "(EADDRINUSE, EACCES, a PATH that is not a socket, ...), on another\n"
    "run-time error, or on a second signal; 2 for a bad flag, value or\n"
    "address.\n";


/* ---- Command line ---------------------------------------------------- */

/* Parses a non-negative number of seconds, fractions allowed, into
 * milliseconds. Returns 0, or -1 for anything else. */
static int parse_seconds(const char* text, uint64_t* ms) {
  char* end;
  double sec = strtod(text, &end);
  if (end == text || *end != '\0' || !(sec >= 0.0)) {
    return -1; /* empty, trailing junk, negative or NaN */
  }
  if (sec > 1e9) {
    sec = 1e9; /* about 31 years: "inf" and friends mean forever */
  }
  *ms = (uint64_t) (sec * 1000.0 + 0.5);
  return 0;
}


static void parse_args(int argc, char** argv, echo_options_t* opts) {
  uint64_t n;
  int i;

  opts->listen = "tcp://127.0.0.1:9999";
  opts->mode = UVS_MODE_EVENT;
  opts->threads = 0;
  opts->max_conns = 0;
  opts->idle_ms = 0;
  opts->drain_ms = 5000;
  opts->quiet = 0;

  for (i = 1; i < argc; i++) {
    const char* arg = argv[i];
    const char* eq = strchr(arg, '=');
    const char* value = eq != NULL ? eq + 1 : NULL;
    size_t len = eq != NULL ? (size_t) (eq - arg) : strlen(arg);

    if (strncmp(arg, "--", 2) != 0) {
      demo_usage_error("unexpected argument '%s' (see --help)", arg);
    }

    /* Flags without a value. */
    if (demo_flag_is(arg, len, "--help") || demo_flag_is(arg, len, "--quiet")) {
      if (value != NULL) {
        demo_usage_error("%.*s takes no value", (int) len, arg);
      }
      if (demo_flag_is(arg, len, "--help")) {
        fputs(usage_text, stdout);
        fputs(usage_notes, stdout);
        exit(0);
      }
      opts->quiet = 1;
      continue;
    }

    /* Every other flag takes a value: --flag VALUE or --flag=VALUE. */
    if (!demo_flag_is(arg, len, "--listen") &&
        !demo_flag_is(arg, len, "--mode") &&
        !demo_flag_is(arg, len, "--drain") &&
        !demo_flag_is(arg, len, "--threads") &&
        !demo_flag_is(arg, len, "--max-conns") &&
        !demo_flag_is(arg, len, "--idle-timeout")) {
      demo_usage_error("unknown flag '%.*s' (see --help)", (int) len, arg);
    }
    if (value == NULL) {
      if (i + 1 >= argc) {
        demo_usage_error("%s needs a value (see --help)", arg);
      }
      value = argv[++i];
    }

    if (demo_flag_is(arg, len, "--listen")) {
      opts->listen = value;
    } else if (demo_flag_is(arg, len, "--drain")) {
      if (parse_seconds(value, &opts->drain_ms) != 0) {
        demo_usage_error("bad --drain '%s': want seconds >= 0", value);
      }
    } else if (demo_flag_is(arg, len, "--idle-timeout")) {
      if (parse_seconds(value, &opts->idle_ms) != 0 || opts->idle_ms == 0) {
        demo_usage_error("bad --idle-timeout '%s': want seconds >= 0.001",
                         value);
      }
    } else if (demo_flag_is(arg, len, "--threads")) {
      if (demo_parse_count(value, 1, UINT_MAX, &n) != 0) {
        demo_usage_error("bad --threads '%s': want a whole number >= 1", value);
      }
      opts->threads = (unsigned) n;
    } else if (demo_flag_is(arg, len, "--max-conns")) {
      if (demo_parse_count(value, 1, UINT_MAX, &n) != 0) {
        demo_usage_error("bad --max-conns '%s': want a whole number >= 1",
                         value);
      }
      opts->max_conns = (unsigned) n;
    } else { /* --mode */
      if (strcmp(value, "event") == 0) {
        opts->mode = UVS_MODE_EVENT;
      } else if (strcmp(value, "thread") == 0) {
        opts->mode = UVS_MODE_THREADING;
      } else if (strcmp(value, "sync") == 0) {
        opts->mode = UVS_MODE_SYNC;
      } else if (strcmp(value, "fork") == 0) {
        opts->mode = UVS_MODE_FORKING;
      } else {
        demo_usage_error("bad --mode '%s': want event, sync, thread or fork",
                         value);
      }
    }
  }

  /* Checked after the loop so that the flags may come in any order. A cap
   * that would silently do nothing in another mode is more likely a
   * mistake than a wish, so it is refused rather than ignored. */
  if (opts->threads != 0 && opts->mode != UVS_MODE_THREADING) {
    demo_usage_error("--threads needs --mode thread");
  }
}


static int is_datagram(uvs_transport_t transport) {
  return transport == UVS_TRANSPORT_UDP || transport == UVS_TRANSPORT_UNIXGRAM;
}


/* ---- Stopping and counters (loop thread) ----------------------------- */

/* CLOCK_MONOTONIC in milliseconds; async-signal-safe (clock_gettime is). */
static uint64_t now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}


/* The drain is over: nothing is left open. serve_forever returns, and
 * main closes the server. */
static void on_drained(uvs_server_t* server, int status) {
  (void) status; /* UV_ETIMEDOUT when --drain ran out: still a clean stop */
  uvs_server_shutdown(server);
}


/* The first SIGINT/SIGTERM, which arrived at `signal_ms`: the graceful
 * stop, with the deadline counted from the signal. Runs once; in sync
 * mode it may run inside the handler (the loop thread). */
static void begin_drain(echo_app_t* app, uint64_t signal_ms) {
  uint64_t now = now_ms();
  int err;

  if (app->draining) {
    return;
  }
  app->draining = 1;
  app->deadline_ms = signal_ms + app->drain_ms;
  err = uvs_server_drain(app->server,
                         app->deadline_ms > now ? app->deadline_ms - now : 0,
                         on_drained);
  if (err != 0) {
    fprintf(stderr, "uvs-echo: cannot drain: %s\n", uvs_strerror(err));
    uvs_server_shutdown(app->server); /* uvs_server_close closes the rest */
  }
}


/* The handle_error hook for --quiet: log nothing. */
static void on_error_quiet(uvs_server_t* server,
                           uvs_conn_t* conn,
                           const uvs_address_t* peer,
                           int status) {
  (void) server;
  (void) conn;
  (void) peer;
  (void) status;
}


/* ---- Echo handler (event mode, on the loop thread) ------------------- */

static void on_data(uvs_conn_t* conn, const char* data, size_t len) {
  echo_state_t* state = uvs_conn_state(conn);

  if (uvs_conn_write(conn, data, len) != 0) {
    uvs_conn_abort(conn); /* out of memory: drop this client, keep going */
    return;
  }
  /* Backpressure: a client that sends but does not read would otherwise
   * make its queue grow without bound. */
  if (!state->paused && uvs_conn_write_queue_size(conn) > ECHO_HIGH_WATER) {
    state->paused = 1;
    uvs_conn_read_stop(conn);
  }
}


/* The write queue is empty again: resume reading if we paused it. */
static void on_drain(uvs_conn_t* conn) {
  echo_state_t* state = uvs_conn_state(conn);

  if (state->paused) {
    state->paused = 0;
    (void) uvs_conn_read_start(conn); /* UV_EPIPE when closing: fine */
  }
}


/* ---- Datagram echo (event mode, on the loop thread) ------------------ */

/* An unbound unixgram client: its address has no name (formats as
 * "unix:"), so there is nowhere to send a reply. */
static int is_unnamed(const uvs_address_t* peer) {
  return peer->transport == UVS_TRANSPORT_UNIXGRAM &&
         peer->len <= offsetof(struct sockaddr_un, sun_path);
}


/* Sends the datagram back as it came, an empty one included. */
static void on_datagram(uvs_server_t* server,
                        const char* data,
                        size_t len,
                        const uvs_address_t* peer) {
  echo_app_t* app = uvs_server_get_data(server);
  char text[UVS_ADDRSTRLEN];
  size_t size = sizeof(text);
  int err;

  if (is_unnamed(peer)) {
    return; /* no return address: nothing to answer, nothing to report */
  }
  err = uvs_server_send_to(server, peer, data, len);
  if (err == 0) {
    app->send_error_shown = 0;
    return;
  }
  /* A unixgram client that has gone (its socket closed or its file
   * removed) is as silent as a lost UDP reply. Other failures (a full
   * send queue under a flood) are logged once until a reply goes out
   * again, so a flood cannot flood stderr too. */
  if (err == UV_ECONNREFUSED || err == UV_ENOENT || err == UV_ENOTDIR ||
      app->quiet || app->send_error_shown) {
    return;
  }
  app->send_error_shown = 1;
  if (uvs_address_format(peer, text, &size) != 0) {
    snprintf(text, sizeof(text), "?");
  }
  fprintf(stderr,
          "uvs-echo: reply to %s dropped: %s (%s)\n",
          text,
          uvs_strerror(err),
          uvs_err_name(err));
}


/* ---- Datagram echo (thread, sync and fork mode) ---------------------- */

/* One datagram is one request: read it whole (uvs_read_exact stops at its
 * end, the request's EOF) and write it back; uvs sends the reply after
 * finish, or nothing for an empty one. It never waits for the network, so
 * sync mode needs none of handle_sync's signal polling. The buffer is on
 * the stack: a worker thread has the system's default stack (megabytes),
 * and only the handlers running at once touch theirs. */
static int handle_datagram(uvs_conn_t* conn) {
  char buf[ECHO_MAX_DATAGRAM];
  ssize_t n;
  int err;

  n = uvs_read_exact(conn, buf, sizeof(buf));
  if (n <= 0) {
    return n == UV_ECANCELED ? 0 : (int) n;
  }
  err = uvs_sendall(conn, buf, (size_t) n);
  return err == UV_ECANCELED ? 0 : err;
}


/* ---- Echo handler (thread mode on a worker thread; fork mode) -------- */

/* How a request's I/O error ends the handler: UV_ECANCELED (the server
 * closed the connection: the drain ran out) and UV_ETIMEDOUT (the idle
 * timeout closed it) are planned ends, counted in the stats and not worth
 * a line on stderr; other errors reach handle_error. */
static int request_end(ssize_t err) {
  return err == UV_ECANCELED || err == UV_ETIMEDOUT ? 0 : (int) err;
}


/* Returns at the client's EOF; uvs then flushes and closes. In fork mode
 * it runs in the client's child process, whose request I/O works on the
 * descriptor directly: uvs_sendall has sent every byte when it returns,
 * and the child closes gracefully after it. */
static int handle_thread(uvs_conn_t* conn) {
  char buf[ECHO_CHUNK];
  ssize_t n;
  int err;

  for (;;) {
    n = uvs_recv(conn, buf, sizeof(buf));
    if (n <= 0) {
      return request_end(n);
    }
    err = uvs_sendall(conn, buf, (size_t) n);
    if (err != 0) {
      return request_end(err);
    }
  }
}


/* ---- Fork mode: the child's setup ----------------------------------- */

/* In a child: a SIGTERM from the parent is the drain's deadline. The
 * stream child stops reading (shutdown of its own connection's read side
 * is async-signal-safe and makes uvs_recv see EOF), so the handler echoes
 * what came and returns, and the child closes gracefully, as the other
 * modes do at the deadline. A SIGTERM from anyone else (a group-wide one)
 * is ignored. */
static void on_child_sigterm(int signum, siginfo_t* info, void* context) {
  int saved_errno = errno;

  (void) signum;
  (void) context;
  if (info->si_pid == getppid() && fork_child_fd >= 0) {
    shutdown(fork_child_fd, SHUT_RD);
  }
  errno = saved_errno;
}


/* Runs first in each child (stream and datagram). The parent alone ends
 * its children: a SIGINT or SIGTERM sent to the whole process group (a
 * Ctrl-C in the terminal) must not cut a client off before the drain, so
 * the child ignores them (and SIGUSR1, whose default would kill it), all
 * but the parent's SIGTERM at the drain's deadline. A datagram child
 * never waits for the network, and its descriptor is the server's own
 * socket, which it must not shut down. On Linux the child dies with the
 * parent (second signal, or the parent killed), so no orphan goes on
 * serving; a parent that died before the request took effect is seen by
 * getppid. */
static int fork_child_setup(uvs_conn_t* conn) {
  struct sigaction sa;

  signal(SIGINT, SIG_IGN);
  signal(SIGUSR1, SIG_IGN);
  memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = on_child_sigterm;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (!is_datagram(uvs_conn_peer(conn)->transport)) {
    fork_child_fd = uvs_conn_fileno(conn);
  }
  sigaction(SIGTERM, &sa, NULL);
#ifdef __linux__
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) == 0 && getppid() != fork_parent) {
    raise(SIGKILL);
  }
#endif
  return 0;
}


/* ---- Echo handler (sync mode, on the loop thread) -------------------- */

/* Takes note of the signals the sigaction handler recorded: prints the
 * counters for a SIGUSR1; the first SIGINT/SIGTERM starts the drain.
 * Returns nonzero once SIGINT/SIGTERM has arrived. */
static int sync_poll_signal(echo_app_t* app) {
  if (atomic_exchange(&sync_stats, 0) != 0) {
    demo_print_stats(app->server);
  }
  if (atomic_load(&sync_signals) == 0) {
    return 0;
  }
  begin_drain(app, atomic_load(&sync_signal_ms));
  return 1;
}


/* Nonzero when a signal has arrived and its drain has run out. uvs's own
 * deadline timer cannot run while the handler holds the loop; uvs's
 * request I/O ends a wait at the deadline, but a client that keeps the
 * handler busy never makes it wait. */
static int sync_drain_over(echo_app_t* app) {
  return sync_poll_signal(app) && now_ms() >= app->deadline_ms;
}


/* Waits until the socket takes more bytes. Returns 0, or UV_ECANCELED when
 * the drain ran out first. It also stops waiting once the connection has
 * been idle for --idle-timeout since `last_io_ms`: the uvs_sendall that
 * follows then ends the connection with uvs's idle timeout, which uvs
 * applies to a blocked send as to a blocked read. poll() on the
 * descriptor uvs owns only reads its state; the socket error or hang-up it
 * may report is left for uvs_sendall to return. */
static int sync_wait_writable(echo_app_t* app, int fd, uint64_t last_io_ms) {
  struct pollfd pfd;

  for (;;) {
    pfd.fd = fd;
    pfd.events = POLLOUT;
    pfd.revents = 0;
    if (poll(&pfd, 1, SYNC_POLL_MS) > 0) {
      return 0;
    }
    if (sync_drain_over(app)) {
      return UV_ECANCELED;
    }
    if (app->idle_ms > 0 && now_ms() - last_io_ms >= app->idle_ms) {
      return 0;
    }
  }
}


/* Sends `len` bytes in slices that each fit the socket's free space (see
 * SYNC_SEND_SLICE), so the wait for a slow reader happens in
 * sync_wait_writable, which keeps looking at the signal flags.
 * `*last_io_ms` is when bytes last went either way. */
static int sync_send(echo_app_t* app,
                     uvs_conn_t* conn,
                     const char* data,
                     size_t len,
                     uint64_t* last_io_ms) {
  int fd = uvs_conn_fileno(conn);
  size_t slice;
  int err;

  if (fd < 0) {
    return fd; /* UV_EBADF: closed meanwhile */
  }
  while (len > 0) {
    slice = len < SYNC_SEND_SLICE ? len : SYNC_SEND_SLICE;
    err = sync_wait_writable(app, fd, *last_io_ms);
    if (err == 0) {
      err = uvs_sendall(conn, data, slice);
    }
    if (err != 0) {
      return err;
    }
    *last_io_ms = now_ms();
    data += slice;
    len -= slice;
  }
  return 0;
}


/* Echoes until the client's EOF or the end of a drain. The short request
 * timeout is only a chance to look at the signal flags: that UV_ETIMEDOUT
 * consumes nothing, so the call is simply made again. The idle timeout
 * ends the connection with UV_ETIMEDOUT too, but before the call's own
 * timeout has run out, and from then on every call fails at once. */
static int handle_sync(uvs_conn_t* conn) {
  echo_app_t* app = uvs_server_get_data(uvs_conn_server(conn));
  char buf[ECHO_CHUNK];
  uint64_t last_io_ms = now_ms();
  uint64_t tick_end;
  ssize_t n;
  int err;

  /* A client taken from the backlog after the first signal (accepted in
   * the same loop turn as the wake-up) is reset without being served: the
   * contract stops accepting at the signal, and a graceful close would
   * keep the drain waiting for this client's EOF. */
  if (sync_poll_signal(app)) {
    uvs_conn_abort(conn);
    return 0;
  }
  while (!sync_drain_over(app)) {
    err = uvs_conn_set_timeout(conn, SYNC_POLL_MS);
    if (err != 0) {
      return err;
    }
    tick_end = now_ms() + SYNC_POLL_MS;
    n = uvs_recv(conn, buf, sizeof(buf));
    if (n == UV_ETIMEDOUT && now_ms() >= tick_end) {
      continue;
    }
    if (n <= 0) {
      return request_end(n);
    }
    last_io_ms = now_ms();
    err = uvs_conn_set_timeout(conn, SYNC_SEND_TIMEOUT_MS);
    if (err == 0) {
      err = sync_send(app, conn, buf, (size_t) n, &last_io_ms);
    }
    if (err != 0) {
      return request_end(err);
    }
  }
  return 0;
}


/* ---- Signals --------------------------------------------------------- */

/* Event, thread and fork mode: the loop is free to run this at once. */
static void on_signal(uv_signal_t* handle, int signum) {
  echo_app_t* app = handle->data;

  if (signum == SIGUSR1) {
    if (!app->closing) { /* uvs_server_stats is not for a closing server */
      demo_print_stats(app->server);
    }
    return;
  }
  /* While closing every signal is a second one: there is nothing left to
   * drain. */
  if (app->draining || app->closing) {
    if (!app->quiet) {
      fprintf(stderr, "uvs-echo: second signal %d, exiting now\n", signum);
    }
    _exit(1);
  }
  begin_drain(app, now_ms());
}


/* Sync mode: a sigaction handler, so only async-signal-safe calls. The
 * loop learns of the signal from sync_stats and sync_signals, in the
 * request handler or through `wake` when no client is being served. */
static void on_sync_signal(int signum) {
  int saved_errno = errno;
  const char* msg;

  if (signum == SIGUSR1) {
    atomic_store(&sync_stats, 1);
  } else if (atomic_load(&sync_signals) != 0) {
    if (!sync_quiet) {
      msg = sync_second_msg[signum == SIGINT ? 0 : 1];
      (void) !write(STDERR_FILENO, msg, strlen(msg));
    }
    _exit(1);
  } else {
    /* The time first: a reader that sees the flag must see the time. */
    atomic_store(&sync_signal_ms, now_ms());
    atomic_store(&sync_signals, 1);
  }
  if (atomic_load(&sync_wake_live)) {
    uv_async_send(sync_wake);
  }
  errno = saved_errno;
}


static void on_wake(uv_async_t* handle) {
  (void) sync_poll_signal(handle->data);
}


/* Installs the sync-mode signal handlers. Returns 0 or a libuv error. */
static int install_sync_signals(echo_app_t* app) {
  struct sigaction sa;

  snprintf(sync_second_msg[0],
           sizeof(sync_second_msg[0]),
           "uvs-echo: second signal %d, exiting now\n",
           SIGINT);
  snprintf(sync_second_msg[1],
           sizeof(sync_second_msg[1]),
           "uvs-echo: second signal %d, exiting now\n",
           SIGTERM);
  sync_quiet = app->quiet;
  sync_wake = &app->wake;
  atomic_store(&sync_wake_live, 1);

  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_sync_signal;
  /* One signal handler at a time, so a second signal always sees the
   * first one's flag. uvs's request I/O retries after EINTR by itself;
   * SA_RESTART spares the program's other calls (stdio) the error. */
  sigemptyset(&sa.sa_mask);
  sigaddset(&sa.sa_mask, SIGINT);
  sigaddset(&sa.sa_mask, SIGTERM);
  sigaddset(&sa.sa_mask, SIGUSR1);
  sa.sa_flags = SA_RESTART;
  if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0 ||
      sigaction(SIGUSR1, &sa, NULL) != 0) {
    return uv_translate_sys_error(errno);
  }
  return 0;
}


/* ---- main ------------------------------------------------------------ */

/* Fills in the handler and the limits for the mode and the transport. */
static void choose_handler(const echo_options_t* opts,
                           uvs_transport_t transport,
                           uvs_config_t* config,
                           uvs_handler_t* handler) {
  if (opts->mode == UVS_MODE_THREADING) {
    /* 0 is uvs's "no cap": the pool grows with the clients. */
    config->max_threads = opts->threads;
  }
  if (opts->mode == UVS_MODE_FORKING) {
    handler->setup = fork_child_setup;
  }
  if (is_datagram(transport)) {
    if (opts->mode == UVS_MODE_EVENT) {
      handler->on_datagram = on_datagram;
    } else {
      handler->handle = handle_datagram;
    }
    return;
  }
  config->max_connections = opts->max_conns;
  config->idle_timeout_ms = opts->idle_ms;
  /* uvs pauses accepting at max_children: keep that cap above the limit,
   * whose clients are closed at once instead. */
  if (opts->max_conns >= config->max_children && opts->max_conns < UINT_MAX) {
    config->max_children = opts->max_conns + 1;
  }
  switch (opts->mode) {
  case UVS_MODE_THREADING:
  case UVS_MODE_FORKING:
    handler->handle = handle_thread;
    break;
  case UVS_MODE_SYNC:
    handler->handle = handle_sync;
    break;
  default:
    /* on_eof stays NULL: the default flushes what is pending, then
     * closes. */
    handler->state_size = sizeof(echo_state_t);
    handler->on_data = on_data;
    handler->on_drain = on_drain;
    break;
  }
}


int main(int argc, char** argv) {
  echo_options_t opts;
  echo_app_t app = { 0 };
  uvs_address_t addr;
  uvs_config_t config;
  uvs_handler_t handler = { 0 };
  uv_loop_t loop;
  char address[UVS_ADDRSTRLEN];
  size_t size = sizeof(address);
  size_t i;
  int status = 0;
  int err;

  demo_set_program("uvs-echo");
  parse_args(argc, argv, &opts);
  demo_check_address(opts.listen, &addr);

  uvs_config_init(&config);
  config.mode = opts.mode;
  config.max_packet_size = ECHO_MAX_DATAGRAM;
  if (opts.quiet) {
    config.hooks.handle_error = on_error_quiet;
  }
  choose_handler(&opts, addr.transport, &config, &handler);
  app.drain_ms = opts.drain_ms;
  app.idle_ms = opts.idle_ms;
  app.quiet = opts.quiet;
  fork_parent = getpid();

  /* The program's own loop rather than one the server owns: the signal
   * handles outlive uvs_server_close, which runs this loop, so that a
   * second signal still exits at once, and a server frees an owned loop at
   * the end of its close. */
  err = uv_loop_init(&loop);
  if (err != 0) {
    fprintf(stderr, "uvs-echo: %s\n", uvs_strerror(err));
    return 1;
  }
  /* It binds and listens now. */
  err = uvs_server_new(&loop, &app.server, opts.listen, &handler, &config);
  if (err != 0) {
    demo_report_listen_error(opts.listen, &addr, err);
    (void) uv_loop_close(&loop);
    return demo_is_usage_error(err) ? 2 : 1;
  }
  uvs_server_set_data(app.server, &app);

  if (opts.mode == UVS_MODE_SYNC) {
    if ((err = uv_async_init(&loop, &app.wake, on_wake)) == 0) {
      app.wake.data = &app;
      err = install_sync_signals(&app);
    }
  } else {
    err = demo_start_signals(&loop, app.signals, &app, on_signal);
  }
  if (err == 0) {
    err = uvs_server_address(app.server, address, &size);
  }
  if (err != 0) {
    fprintf(stderr, "uvs-echo: %s\n", uvs_strerror(err));
    status = 1;
    goto cleanup;
  }

  printf("listening on %s\n", address);
  fflush(stdout);

  /* Returns once on_drained has called uvs_server_shutdown. */
  err = uvs_server_serve_forever(app.server, 0);
  if (err != 0) {
    fprintf(stderr, "uvs-echo: %s\n", uvs_strerror(err));
    status = 1;
  }

cleanup:
  app.closing = 1;
  /* A signal from now on must not touch the async handle being closed;
   * the handler still counts it, so a second one still exits at once. */
  atomic_store(&sync_wake_live, 0);
  demo_close_handle((uv_handle_t*) &app.wake);
  /* After the drain nothing is left to close but the server itself. */
  uvs_server_close(app.server, NULL);
  for (i = 0; i < ARRAY_LEN(app.signals); i++) {
    demo_close_handle((uv_handle_t*) &app.signals[i]);
  }
  uv_run(&loop, UV_RUN_NOWAIT);
  if (uv_loop_close(&loop) != 0) {
    fprintf(stderr, "uvs-echo: handles left open at exit\n");
    status = 1;
  }
  return status;
}
