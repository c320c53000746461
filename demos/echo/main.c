/* SPDX-License-Identifier: MIT */
/*
 * uvs-echo: the echo server of DESIGN.md section 4, served in event mode.
 * Every byte a client sends comes back in order; on the client's EOF the
 * default on_eof sends what is pending and closes. A client that sends but
 * never reads cannot grow memory: above ECHO_HIGH_WATER queued bytes the
 * connection stops reading, and on_drain resumes it once the queue is empty.
 *
 * Stopping follows DESIGN.md's three verbs. The first SIGINT/SIGTERM stops
 * accepting (uvs_server_stop); open connections are still served until they
 * have all closed or --drain seconds have passed; then uvs_server_shutdown
 * ends serve_forever and uvs_server_close closes what is left. A second
 * signal exits at once with status 1.
 *
 * The command line is a contract (scripts and test/demos/test_echo.py drive
 * it): a bad flag, value or address prints one line to stderr and exits 2.
 */
#include <uvs.h>

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Queued output above which a connection stops reading (1 MiB). */
#define ECHO_HIGH_WATER ((size_t) 1024 * 1024)

#if defined(__GNUC__) || defined(__clang__)
# define ECHO_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
# define ECHO_PRINTF(f, a)
#endif

typedef struct echo_options_s {
  const char* listen;
  uint64_t drain_ms;
  int quiet;
} echo_options_t;

/* The program's state, hung on the server (uvs_server_set_data). */
typedef struct echo_app_s {
  uvs_server_t* server;
  uv_signal_t sigint;
  uv_signal_t sigterm;
  uv_timer_t drain_timer;
  uint64_t drain_ms;
  int quiet;
  int stopping; /* the first signal has arrived */
  int done;     /* uvs_server_shutdown has been asked */
} echo_app_t;

/* Per-connection state (handler.state_size). */
typedef struct echo_state_s {
  int paused; /* reading stopped for backpressure */
} echo_state_t;

static const char usage_text[] =
    "usage: uvs-echo [--listen ADDR] [--mode event|sync|thread|fork]\n"
    "                [--threads N] [--max-conns N] [--idle-timeout SEC]\n"
    "                [--drain SEC] [--quiet] [--help]\n"
    "\n"
    "An echo server on uvs: every byte a client sends comes back in order.\n"
    "\n"
    "  --listen ADDR       address to serve, default tcp://127.0.0.1:9999\n"
    "                      (port 0: any free port). This release serves\n"
    "                      tcp://HOST:PORT; udp://, unix: and unixgram:\n"
    "                      addresses are not supported yet.\n"
    "  --mode MODE         how clients are served: event (the default);\n"
    "                      sync, thread and fork are not supported yet.\n"
    "  --threads N         cap on worker threads in thread mode\n"
    "                      (not supported yet).\n"
    "  --max-conns N       connections served at once at most; more are\n"
    "                      closed at once (not supported yet).\n"
    "  --idle-timeout SEC  close a connection idle for SEC seconds\n"
    "                      (not supported yet).\n"
    "  --drain SEC         after SIGINT/SIGTERM, serve open connections for\n"
    "                      up to SEC seconds, then close them (default 5;\n"
    "                      non-negative, fractions allowed).\n"
    "  --quiet             do not log connection errors to stderr.\n"
    "  --help              print this help to stdout and exit 0.\n"
    "\n"
    "A flag's value may follow as the next argument or after '=':\n"
    "--drain 2 or --drain=2.\n"
    "\n"
    "When ready it prints one line to stdout, 'listening on ADDR', with the\n"
    "real port. On SIGINT or SIGTERM it stops accepting at once, keeps\n"
    "serving open connections until they close or --drain runs out, then\n"
    "closes the rest and exits 0. A second signal exits at once with 1.\n"
    "\n"
    "Exit status: 0 after a signal; 1 when the address cannot be bound\n"
    "(EADDRINUSE, EACCES, ...), on another run-time error, or on a second\n"
    "signal; 2 for a bad flag, value or address.\n";


/* ---- Command line ---------------------------------------------------- */

/* Prints "uvs-echo: MESSAGE" as one line to stderr and exits 2. */
static _Noreturn void usage_error(const char* fmt, ...) ECHO_PRINTF(1, 2);

static _Noreturn void usage_error(const char* fmt, ...) {
  va_list ap;
  fputs("uvs-echo: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(2);
}


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


/* Is `arg`, up to `len` bytes, the flag `name`? */
static int flag_is(const char* arg, size_t len, const char* name) {
  return strlen(name) == len && strncmp(arg, name, len) == 0;
}


static void parse_args(int argc, char** argv, echo_options_t* opts) {
  static const char* const later[] = { "--threads",
                                       "--max-conns",
                                       "--idle-timeout" };
  int i;
  size_t k;

  opts->listen = "tcp://127.0.0.1:9999";
  opts->drain_ms = 5000;
  opts->quiet = 0;

  for (i = 1; i < argc; i++) {
    const char* arg = argv[i];
    const char* eq = strchr(arg, '=');
    const char* value = eq != NULL ? eq + 1 : NULL;
    size_t len = eq != NULL ? (size_t) (eq - arg) : strlen(arg);

    if (strncmp(arg, "--", 2) != 0) {
      usage_error("unexpected argument '%s' (see --help)", arg);
    }

    /* Flags without a value. */
    if (flag_is(arg, len, "--help") || flag_is(arg, len, "--quiet")) {
      if (value != NULL) {
        usage_error("%.*s takes no value", (int) len, arg);
      }
      if (flag_is(arg, len, "--help")) {
        fputs(usage_text, stdout);
        exit(0);
      }
      opts->quiet = 1;
      continue;
    }

    /* Every other flag takes a value: --flag VALUE or --flag=VALUE. */
    if (!flag_is(arg, len, "--listen") && !flag_is(arg, len, "--mode") &&
        !flag_is(arg, len, "--drain") && !flag_is(arg, len, "--threads") &&
        !flag_is(arg, len, "--max-conns") &&
        !flag_is(arg, len, "--idle-timeout")) {
      usage_error("unknown flag '%.*s' (see --help)", (int) len, arg);
    }
    if (value == NULL) {
      if (i + 1 >= argc) {
        usage_error("%s needs a value (see --help)", arg);
      }
      value = argv[++i];
    }

    if (flag_is(arg, len, "--listen")) {
      opts->listen = value;
    } else if (flag_is(arg, len, "--drain")) {
      if (parse_seconds(value, &opts->drain_ms) != 0) {
        usage_error("bad --drain '%s': want seconds >= 0", value);
      }
    } else if (flag_is(arg, len, "--mode")) {
      if (strcmp(value, "sync") == 0 || strcmp(value, "thread") == 0 ||
          strcmp(value, "fork") == 0) {
        usage_error("--mode %s is not supported yet", value);
      }
      if (strcmp(value, "event") != 0) {
        usage_error("bad --mode '%s': want event, sync, thread or fork", value);
      }
    } else {
      for (k = 0; k < sizeof(later) / sizeof(later[0]); k++) {
        if (flag_is(arg, len, later[k])) {
          usage_error("%s is not supported yet", later[k]);
        }
      }
    }
  }
}


/* Exits 2 for an address this release cannot serve or that does not
 * parse, before anything is bound. */
static void check_address(const char* text) {
  static const char* const later[] = { "udp://", "unix:", "unixgram:" };
  uvs_address_t addr;
  size_t k;
  int err;

  for (k = 0; k < sizeof(later) / sizeof(later[0]); k++) {
    if (strncmp(text, later[k], strlen(later[k])) == 0) {
      usage_error("%s addresses are not supported yet", later[k]);
    }
  }
  err = uvs_address_parse(text, &addr);
  if (err != 0) {
    usage_error("bad address '%s': %s", text, uvs_strerror(err));
  }
  if (addr.transport != UVS_TRANSPORT_TCP) {
    usage_error("only tcp:// addresses are supported yet, not '%s'", text);
  }
}


/* Errors of uvs_server_new that mean "bad address or options" (exit 2)
 * rather than "could not bind" (exit 1). */
static int is_usage_error(int err) {
  switch (err) {
  case UV_EINVAL:
  case UV_ENOTSUP:
  case UV_ENAMETOOLONG:
  case UV_EAI_ADDRFAMILY:
  case UV_EAI_AGAIN:
  case UV_EAI_BADFLAGS:
  case UV_EAI_FAIL:
  case UV_EAI_FAMILY:
  case UV_EAI_NODATA:
  case UV_EAI_NONAME:
  case UV_EAI_SERVICE:
  case UV_EAI_SOCKTYPE:
    return 1;
  default:
    return 0;
  }
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


/* Asks serve_forever to return; runs once. */
static void finish(echo_app_t* app) {
  if (app->done) {
    return;
  }
  app->done = 1;
  uv_timer_stop(&app->drain_timer);
  uvs_server_shutdown(app->server);
}


/* During on_close the count no longer includes `conn`, so the last
 * connection to close while draining ends the program at once. */
static void on_close(uvs_conn_t* conn, int status) {
  echo_app_t* app = uvs_server_get_data(uvs_conn_server(conn));

  (void) status;
  if (app->stopping && !app->done &&
      uvs_server_connection_count(app->server) == 0) {
    finish(app);
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


/* ---- Signals --------------------------------------------------------- */

static void on_drain_timeout(uv_timer_t* timer) {
  finish(timer->data);
}


static void on_signal(uv_signal_t* handle, int signum) {
  echo_app_t* app = handle->data;

  if (app->stopping) {
    if (!app->quiet) {
      fprintf(stderr, "uvs-echo: second signal %d, exiting now\n", signum);
    }
    _exit(1);
  }
  app->stopping = 1;
  uvs_server_stop(app->server);
  if (uvs_server_connection_count(app->server) == 0) {
    finish(app);
  } else {
    uv_timer_start(&app->drain_timer, on_drain_timeout, app->drain_ms, 0);
  }
}


/* Closes a handle that was initialized (uv_*_init sets its loop). */
static void close_handle(uv_handle_t* handle) {
  if (uv_handle_get_loop(handle) != NULL && !uv_is_closing(handle)) {
    uv_close(handle, NULL);
  }
}


/* ---- main ------------------------------------------------------------ */

int main(int argc, char** argv) {
  echo_options_t opts;
  echo_app_t app = { 0 };
  uvs_config_t config;
  /* on_eof stays NULL: the default flushes what is pending, then closes. */
  uvs_handler_t handler = { .state_size = sizeof(echo_state_t),
                            .on_data = on_data,
                            .on_drain = on_drain,
                            .on_close = on_close };
  uv_loop_t* loop;
  char address[UVS_ADDRSTRLEN];
  size_t size = sizeof(address);
  int status = 0;
  int err;

  parse_args(argc, argv, &opts);
  check_address(opts.listen);

  uvs_config_init(&config);
  if (opts.quiet) {
    config.hooks.handle_error = on_error_quiet;
  }
  app.drain_ms = opts.drain_ms;
  app.quiet = opts.quiet;

  /* A NULL loop: the server makes and owns one; it binds and listens now. */
  err = uvs_server_new(NULL, &app.server, opts.listen, &handler, &config);
  if (err != 0) {
    fprintf(stderr,
            "uvs-echo: cannot listen on %s: %s (%s)\n",
            opts.listen,
            uvs_strerror(err),
            uvs_err_name(err));
    return is_usage_error(err) ? 2 : 1;
  }
  uvs_server_set_data(app.server, &app);
  loop = uvs_server_loop(app.server);

  uv_timer_init(loop, &app.drain_timer);
  app.drain_timer.data = &app;
  if ((err = uv_signal_init(loop, &app.sigint)) != 0 ||
      (err = uv_signal_init(loop, &app.sigterm)) != 0 ||
      (err = uv_signal_start(&app.sigint, on_signal, SIGINT)) != 0 ||
      (err = uv_signal_start(&app.sigterm, on_signal, SIGTERM)) != 0 ||
      (err = uvs_server_address(app.server, address, &size)) != 0) {
    fprintf(stderr, "uvs-echo: %s\n", uvs_strerror(err));
    status = 1;
    goto cleanup;
  }
  app.sigint.data = &app;
  app.sigterm.data = &app;

  printf("listening on %s\n", address);
  fflush(stdout);

  /* Returns once finish() has called uvs_server_shutdown. */
  err = uvs_server_serve_forever(app.server, 0);
  if (err != 0) {
    fprintf(stderr, "uvs-echo: %s\n", uvs_strerror(err));
    status = 1;
  }

cleanup:
  close_handle((uv_handle_t*) &app.sigint);
  close_handle((uv_handle_t*) &app.sigterm);
  close_handle((uv_handle_t*) &app.drain_timer);
  /* Let the closes complete before uvs_server_close closes the loop. */
  uv_run(loop, UV_RUN_NOWAIT);
  /* Closes the connections still open (after --drain) and the loop. */
  uvs_server_close(app.server, NULL);
  return status;
}
