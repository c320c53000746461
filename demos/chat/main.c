/* SPDX-License-Identifier: MIT */
/*
 * uvs-chat: the line chat of DESIGN.md section 4, one protocol (chat.c)
 * over uvs's two handler styles, on a stream address (tcp:// or unix:;
 * a datagram address exits 2). This file holds the command line and the
 * signal handling (on the helpers it shares with uvs-echo, common.c) and
 * the two front ends, whose only job is to turn bytes into lines and tell
 * the room when a client comes and goes:
 *
 * - event mode (the default): on_open joins; on_data assembles lines in a
 *   per-connection buffer that exists only while a line is incomplete and
 *   never holds more than --max-line + 1 bytes (the +1 is a '\r' before
 *   the '\n'); on_eof hands over an unfinished last line, leaves and closes;
 *   on_close leaves (a no-op when the client left already).
 * - thread mode: setup joins; handle reads with uvs_readline into a buffer
 *   of --max-line + 2 bytes (text, '\r' and the NUL). uvs_readline reports
 *   a full buffer without '\n' (UV_ENOBUFS) once a further byte has come:
 *   the line is too long unless the buffer ends in '\r' and that byte is
 *   the '\n'; a last line at EOF comes back whole and chat_line checks its
 *   length. finish leaves. A client holds its worker for its whole
 *   session, so the pool is uncapped unless --threads says otherwise.
 *
 * In both modes every byte to a client goes out with uvs_conn_write, which
 * never blocks; config.max_write_queue = --max-queue makes uvs reset a
 * client whose unsent output would pass it, so a reader that stops reading
 * costs at most that much memory and never slows the others.
 *
 * Stopping follows uvs-echo: the first SIGINT/SIGTERM starts
 * uvs_server_drain with a 5 s deadline. uvs stops accepting (new clients
 * are refused) and serves open connections until they have all closed or
 * the deadline has passed; then it closes the rest gracefully (in thread
 * mode a handler blocked in uvs_readline gets UV_ECANCELED and its finish
 * still runs) and on_drained ends serve_forever. A second signal exits at
 * once with status 1. SIGUSR1 prints the server's counters
 * (uvs_server_stats) as one line to stderr.
 *
 * The command line is a contract (test/demos/test_chat.py): a bad flag,
 * value, mode or address prints one line to stderr and exits 2; an address
 * that cannot be bound exits 1.
 */
#include "chat.h"
#include "../common.h"

#include <uvs.h>

#include <inttypes.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* How long open connections are served after the first signal (the
 * contract's fixed drain; uvs-chat has no --drain flag). */
#define CHAT_DRAIN_MS 5000
/* Largest --max-line: the thread front end allocates --max-line + 2 bytes
 * per client, the event one up to --max-line + 1. */
#define CHAT_MAX_LINE_LIMIT ((uint64_t) 64 * 1024 * 1024)
/* Largest --max-queue (1 TiB): anything above is no cap in practice. */
#define CHAT_MAX_QUEUE_LIMIT ((uint64_t) 1 << 40)
/* Largest --threads. */
#define CHAT_MAX_THREADS_LIMIT 65536

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

typedef struct chat_options_s {
  const char* listen;
  uvs_mode_t mode;
  unsigned threads;
  size_t max_line;
  size_t max_queue;
} chat_options_t;

/* The program's state, hung on the server (uvs_server_set_data). */
typedef struct chat_app_s {
  uvs_server_t* server;
  chat_room_t room;
  /* SIGINT, SIGTERM and SIGUSR1, started by demo_start_signals. */
  uv_signal_t signals[DEMO_SIGNAL_COUNT];
  int draining; /* the first SIGINT/SIGTERM has arrived */
} chat_app_t;

/* Per-connection state (handler.state_size), zeroed by uvs. */
typedef struct chat_conn_s {
  chat_client_t client;
  /* Event mode: the unfinished line, NULL when there is none. */
  char* line;
  size_t line_len;
  size_t line_cap;
} chat_conn_t;

static const char usage_text[] =
    "usage: uvs-chat [--listen ADDR] [--mode event|thread] [--threads N]\n"
    "                [--max-line BYTES] [--max-queue BYTES] [--help]\n"
    "\n"
    "A line chat on uvs. Each client is named guestN (N counts connections\n"
    "from 1) and gets '* welcome NAME'; the others get '* NAME joined'.\n"
    "A line TEXT reaches every other client as 'NAME: TEXT'. Commands:\n"
    "  /nick NEW   take the name NEW: 1 to 32 of A-Z a-z 0-9 _ -, not\n"
    "              taken (names compare byte for byte) and not guest\n"
    "              followed by digits, which new clients get.\n"
    "  /who        list who is online, in order of joining.\n"
    "  /quit       (or the line 'quit') say bye and leave.\n"
    "Lines end in \\n; a \\r before it is dropped. Empty lines are\n"
    "ignored; a last line without \\n before the client's EOF counts.\n"
    "A command's word and argument are split at the first space; spaces\n"
    "around the argument are ignored. Errors are answered with\n"
    "'! error: ...'.\n"
    "\n"
    "  --listen ADDR      address to serve, default tcp://127.0.0.1:9999\n"
    "                     (port 0: any free port). Stream addresses only:\n"
    "                     tcp://HOST:PORT or unix:PATH (@NAME: a Linux\n"
    "                     abstract name; a stale socket file at PATH is\n"
    "                     replaced, and the file is removed at exit);\n"
    "                     udp:// and unixgram: exit 2.\n"
    "  --mode MODE        event (the default: callbacks on one loop thread)\n"
    "                     or thread (a blocking handler per client on a\n"
    "                     worker thread).\n"
    "  --threads N        thread mode: most worker threads; clients beyond\n"
    "                     N wait, not yet welcomed, until one leaves.\n"
    "                     Default 0: no cap, a thread per client. Ignored\n"
    "                     in event mode.\n"
    "  --max-line BYTES   longest line, not counting its \\n or \\r\\n\n"
    "                     (default 4096, 1 to 67108864). A longer line gets\n"
    "                     '! error: line too long' and the client is closed.\n"
    "  --max-queue BYTES  most unsent output per client (default 1048576;\n"
    "                     at least --max-line + 35, one full line). A\n"
    "                     client that stops reading is cut off once its\n"
    "                     output passes it; the others go on.\n"
    "  --help             print this help to stdout and exit 0.\n"
    "\n"
    "A flag's value may follow as the next argument or after '=':\n"
    "--mode thread or --mode=thread.\n"
    "\n"
    "When ready it prints one line to stdout, 'listening on ADDR', with the\n"
    "real port. On SIGINT or SIGTERM it stops accepting at once, keeps\n"
    "serving open connections until they close or 5 seconds pass, then\n"
    "closes the rest and exits 0. A second signal exits at once with 1.\n"
    "SIGUSR1 prints the server's counters as one line to stderr,\n"
    "'stats: accepted=N active=N ...', and serving goes on.\n"
    "\n"
    "Exit status: 0 after a signal; 1 when the address cannot be bound\n"
    "(EADDRINUSE, EACCES, a PATH that is not a socket, ...), on another\n"
    "run-time error, or on a second signal; 2 for a bad flag, value, mode\n"
    "or address.\n";


/* ---- Command line ---------------------------------------------------- */

static void parse_args(int argc, char** argv, chat_options_t* opts) {
  uint64_t n;
  int i;

  opts->listen = "tcp://127.0.0.1:9999";
  opts->mode = UVS_MODE_EVENT;
  opts->threads = 0;
  opts->max_line = 4096;
  opts->max_queue = (size_t) 1024 * 1024;

  for (i = 1; i < argc; i++) {
    const char* arg = argv[i];
    const char* eq = strchr(arg, '=');
    const char* value = eq != NULL ? eq + 1 : NULL;
    size_t len = eq != NULL ? (size_t) (eq - arg) : strlen(arg);

    if (strncmp(arg, "--", 2) != 0) {
      demo_usage_error("unexpected argument '%s' (see --help)", arg);
    }

    if (demo_flag_is(arg, len, "--help")) {
      if (value != NULL) {
        demo_usage_error("--help takes no value");
      }
      fputs(usage_text, stdout);
      exit(0);
    }

    /* Every other flag takes a value: --flag VALUE or --flag=VALUE. */
    if (!demo_flag_is(arg, len, "--listen") &&
        !demo_flag_is(arg, len, "--mode") &&
        !demo_flag_is(arg, len, "--threads") &&
        !demo_flag_is(arg, len, "--max-line") &&
        !demo_flag_is(arg, len, "--max-queue")) {
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
    } else if (demo_flag_is(arg, len, "--mode")) {
      if (strcmp(value, "event") == 0) {
        opts->mode = UVS_MODE_EVENT;
      } else if (strcmp(value, "thread") == 0) {
        opts->mode = UVS_MODE_THREADING;
      } else {
        demo_usage_error("bad --mode '%s': want event or thread", value);
      }
    } else if (demo_flag_is(arg, len, "--threads")) {
      if (demo_parse_count(value, 0, CHAT_MAX_THREADS_LIMIT, &n) != 0) {
        demo_usage_error("bad --threads '%s': want 0 to %d",
                         value,
                         CHAT_MAX_THREADS_LIMIT);
      }
      opts->threads = (unsigned) n;
    } else if (demo_flag_is(arg, len, "--max-line")) {
      if (demo_parse_count(value, 1, CHAT_MAX_LINE_LIMIT, &n) != 0) {
        demo_usage_error("bad --max-line '%s': want bytes, 1 to %" PRIu64,
                         value,
                         CHAT_MAX_LINE_LIMIT);
      }
      opts->max_line = (size_t) n;
    } else {
      if (demo_parse_count(value, 1, CHAT_MAX_QUEUE_LIMIT, &n) != 0) {
        demo_usage_error("bad --max-queue '%s': want bytes, 1 to %" PRIu64,
                         value,
                         CHAT_MAX_QUEUE_LIMIT);
      }
      opts->max_queue = (size_t) n;
    }
  }

  /* A queue that cannot hold one "NAME: TEXT\n" would cut off a client
   * that reads as fast as it can, on the first long line. */
  if (opts->max_queue < opts->max_line + CHAT_NAME_MAX + 3) {
    demo_usage_error(
        "--max-queue %zu cannot hold a line of --max-line %zu: "
        "want at least %zu",
        opts->max_queue,
        opts->max_line,
        opts->max_line + CHAT_NAME_MAX + 3);
  }
}


/* Exits 2 for an address that does not parse or is not a stream, before
 * anything is bound. */
static void check_address(const char* text, uvs_address_t* addr) {
  demo_check_address(text, addr);
  if (addr->transport != UVS_TRANSPORT_TCP &&
      addr->transport != UVS_TRANSPORT_UNIX) {
    demo_usage_error(
        "'%s' is a datagram address; the chat needs a stream "
        "(tcp:// or unix:)",
        text);
  }
}


static chat_app_t* app_of(uvs_conn_t* conn) {
  return uvs_server_get_data(uvs_conn_server(conn));
}


/* ---- Event front end (on the loop thread) ---------------------------- */

static void on_open(uvs_conn_t* conn) {
  chat_conn_t* cc = uvs_conn_state(conn);

  chat_join(&app_of(conn)->room, &cc->client, conn);
}


static void drop_line(chat_conn_t* cc) {
  free(cc->line);
  cc->line = NULL;
  cc->line_len = 0;
  cc->line_cap = 0;
}


/* Appends `len` bytes to the unfinished line; the caller has checked that
 * the total stays within max_line + 1. Returns 0 or UV_ENOMEM. */
static int append_line(chat_conn_t* cc,
                       const char* data,
                       size_t len,
                       size_t limit) {
  if (cc->line_len + len > cc->line_cap) {
    size_t cap = cc->line_cap > 0 ? cc->line_cap : 256;
    char* grown;
    while (cap < cc->line_len + len) {
      cap *= 2;
    }
    if (cap > limit) {
      cap = limit;
    }
    grown = realloc(cc->line, cap);
    if (grown == NULL) {
      return UV_ENOMEM;
    }
    cc->line = grown;
    cc->line_cap = cap;
  }
  memcpy(cc->line + cc->line_len, data, len);
  cc->line_len += len;
  return 0;
}


static void on_data(uvs_conn_t* conn, const char* data, size_t len) {
  chat_conn_t* cc = uvs_conn_state(conn);
  chat_room_t* room = &app_of(conn)->room;
  /* The most an unfinished line holds: the text and a '\r' that may turn
   * out to come right before the '\n'. */
  size_t limit = room->max_line + 1;

  while (len > 0) {
    const char* nl = memchr(data, '\n', len);
    size_t take = nl != NULL ? (size_t) (nl - data) : len;
    chat_result_t result;

    if (cc->line_len + take > limit) {
      chat_line_too_long(room, &cc->client);
      uvs_conn_close(conn);
      return;
    }
    if (nl == NULL) {
      if (append_line(cc, data, take, limit) != 0) {
        chat_leave(room, &cc->client);
        uvs_conn_abort(conn); /* out of memory: drop this client only */
      }
      return;
    }
    if (cc->line_len == 0) {
      /* The whole line is in this read: no copy. */
      result = chat_line(room, &cc->client, data, take);
    } else {
      if (append_line(cc, data, take, limit) != 0) {
        chat_leave(room, &cc->client);
        uvs_conn_abort(conn);
        return;
      }
      result = chat_line(room, &cc->client, cc->line, cc->line_len);
      /* Free it rather than keep it: an idle client holds no buffer. */
      drop_line(cc);
    }
    if (result == CHAT_CLOSE) {
      uvs_conn_close(conn); /* sends "* bye" or the error, then closes */
      return;
    }
    data += take + 1;
    len -= take + 1;
  }
}


/* The client shut down its side: a last line without '\n' still counts,
 * then it leaves; what is queued for it is sent before the close. */
static void on_eof(uvs_conn_t* conn) {
  chat_conn_t* cc = uvs_conn_state(conn);
  chat_room_t* room = &app_of(conn)->room;

  if (cc->line_len > 0) {
    chat_line(room, &cc->client, cc->line, cc->line_len);
    drop_line(cc);
  }
  chat_leave(room, &cc->client);
  uvs_conn_close(conn);
}


/* The last callback: a client that ended without quitting (reset, cut off,
 * server close) leaves here. */
static void on_close(uvs_conn_t* conn, int status) {
  chat_conn_t* cc = uvs_conn_state(conn);

  (void) status;
  chat_leave(&app_of(conn)->room, &cc->client);
  drop_line(cc);
}


/* ---- Thread front end (on a worker thread) --------------------------- */

static int thread_setup(uvs_conn_t* conn) {
  chat_conn_t* cc = uvs_conn_state(conn);

  chat_join(&app_of(conn)->room, &cc->client, conn);
  return 0;
}


/* How a session's end is reported. As in Python, an error in handle
 * reaches handle_error, whose default logs one line: a reset, or UV_ENOBUFS
 * when uvs cut the client off for not reading, the same lines event mode
 * logs. UV_ECANCELED means the server closed the connection (the drain is
 * over), which event mode does not report either. */
static int session_error(ssize_t err) {
  return err == UV_ECANCELED ? 0 : (int) err;
}


static int thread_handle(uvs_conn_t* conn) {
  chat_conn_t* cc = uvs_conn_state(conn);
  chat_room_t* room = &app_of(conn)->room;
  /* Text, '\r' and uvs_readline's NUL. */
  size_t size = room->max_line + 2;
  char* buf = malloc(size);
  int status = 0;

  if (buf == NULL) {
    return UV_ENOMEM; /* finish still runs and leaves */
  }
  for (;;) {
    ssize_t n;
    size_t len;
    char c = 0;

    /* A client cut off for passing --max-queue reads UV_ECANCELED. */
    n = uvs_readline(conn, buf, size);
    if (n == UV_ENOBUFS) {
      /* size - 1 bytes without '\n', and more follow: a line of max_line
       * and its '\r' whose '\n' comes next, or too long. The rest stays
       * unread; the close discards it. */
      if (buf[size - 2] != '\r' || uvs_recv(conn, &c, 1) != 1 || c != '\n') {
        chat_line_too_long(room, &cc->client);
        break;
      }
      n = (ssize_t) (size - 1);
    }
    if (n < 0) {
      status = session_error(n);
      break;
    }
    if (n == 0) {
      break; /* EOF: finish leaves */
    }
    len = (size_t) n;
    if (buf[len - 1] == '\n') {
      len--;
    }
    /* chat_line drops a last '\r' and refuses a line past max_line. */
    if (chat_line(room, &cc->client, buf, len) == CHAT_CLOSE) {
      break; /* uvs flushes "* bye" or the error, then closes */
    }
  }
  free(buf);
  return status;
}


/* Runs even when handle failed. The client leaves the room under the room
 * lock before this returns, so no other thread writes to the connection
 * once uvs may free it. */
static int thread_finish(uvs_conn_t* conn) {
  chat_conn_t* cc = uvs_conn_state(conn);

  chat_leave(&app_of(conn)->room, &cc->client);
  return 0;
}


/* ---- Signals --------------------------------------------------------- */

/* The drain is over: nothing is left open. */
static void on_drained(uvs_server_t* server, int status) {
  (void) status; /* UV_ETIMEDOUT when clients were still open: still 0 */
  uvs_server_shutdown(server);
}


static void on_signal(uv_signal_t* handle, int signum) {
  chat_app_t* app = handle->data;
  int err;

  if (signum == SIGUSR1) {
    demo_print_stats(app->server);
    return;
  }
  if (app->draining) {
    fprintf(stderr, "uvs-chat: second signal %d, exiting now\n", signum);
    _exit(1);
  }
  app->draining = 1;
  err = uvs_server_drain(app->server, CHAT_DRAIN_MS, on_drained);
  if (err != 0) {
    fprintf(stderr, "uvs-chat: cannot drain: %s\n", uvs_strerror(err));
    uvs_server_shutdown(app->server); /* uvs_server_close closes the rest */
  }
}


/* ---- main ------------------------------------------------------------ */

int main(int argc, char** argv) {
  chat_options_t opts;
  chat_app_t app = { 0 };
  uvs_address_t addr;
  uvs_config_t config;
  uvs_handler_t handler = { .state_size = sizeof(chat_conn_t) };
  uv_loop_t* loop;
  char address[UVS_ADDRSTRLEN];
  size_t size = sizeof(address);
  size_t i;
  int status = 0;
  int err;

  demo_set_program("uvs-chat");
  parse_args(argc, argv, &opts);
  check_address(opts.listen, &addr);

  uvs_config_init(&config);
  config.mode = opts.mode;
  config.max_write_queue = opts.max_queue;
  if (opts.mode == UVS_MODE_THREADING) {
    /* 0: a thread per client, since each client holds its worker. */
    config.max_threads = opts.threads;
    handler.setup = thread_setup;
    handler.handle = thread_handle;
    handler.finish = thread_finish;
  } else {
    handler.on_open = on_open;
    handler.on_data = on_data;
    handler.on_eof = on_eof;
    handler.on_close = on_close;
  }

  err =
      chat_room_init(&app.room, opts.max_line, opts.mode == UVS_MODE_THREADING);
  if (err != 0) {
    fprintf(stderr, "uvs-chat: %s\n", uvs_strerror(err));
    return 1;
  }

  /* A NULL loop: the server makes and owns one; it binds and listens now. */
  err = uvs_server_new(NULL, &app.server, opts.listen, &handler, &config);
  if (err != 0) {
    demo_report_listen_error(opts.listen, &addr, err);
    chat_room_free(&app.room);
    return demo_is_usage_error(err) ? 2 : 1;
  }
  uvs_server_set_data(app.server, &app);
  loop = uvs_server_loop(app.server);

  err = demo_start_signals(loop, app.signals, &app, on_signal);
  if (err == 0) {
    err = uvs_server_address(app.server, address, &size);
  }
  if (err != 0) {
    fprintf(stderr, "uvs-chat: %s\n", uvs_strerror(err));
    status = 1;
    goto cleanup;
  }

  printf("listening on %s\n", address);
  fflush(stdout);

  /* Returns once on_drained has called uvs_server_shutdown. */
  err = uvs_server_serve_forever(app.server, 0);
  if (err != 0) {
    fprintf(stderr, "uvs-chat: %s\n", uvs_strerror(err));
    status = 1;
  }

cleanup:
  for (i = 0; i < ARRAY_LEN(app.signals); i++) {
    demo_close_handle((uv_handle_t*) &app.signals[i]);
  }
  /* Let the closes complete before uvs_server_close closes the loop. */
  uv_run(loop, UV_RUN_NOWAIT);
  /* After a drain nothing is left but the server; after an error it
   * closes the connections still open (their clients leave the room in
   * on_close or finish), waits for thread-mode handlers to return, and
   * closes the loop. */
  uvs_server_close(app.server, NULL);
  chat_room_free(&app.room);
  return status;
}
