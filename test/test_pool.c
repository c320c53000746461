/* SPDX-License-Identifier: MIT */
/*
 * The blocking modes (lib/pool.c, lib/reqio.c, lib/mailbox.c and their
 * parts of lib/server.c and lib/conn.c): socketserver's ThreadingMixIn and
 * plain TCPServer. Many concurrent handlers, the max_threads cap and its
 * FIFO queue, the elastic pool, bounded bookkeeping (bpo-37193, CPython's
 * test_threads_reaped), sync-mode serialization, handle_request's timeout,
 * CPython's ErrorHandlerTest (cases 17 to 20: an error reaches handle_error,
 * UVS_ESTOP stops the server instead), closing with handlers blocked in
 * request I/O or still running (block_on_close, daemon_threads), shutdown
 * from a handler, fan-out with uvs_server_foreach and max_write_queue, an
 * asynchronous close on the caller's loop, and two servers sharing one
 * loop's mailbox. Then the edges a review found (each case failed before
 * its fix): an accept that runs out of memory, an idle time of
 * UINT64_MAX, a sync server closed from its handler, a late UVS_ESTOP, a
 * close's UV_ECANCELED passed on by a handler, a close without waiting
 * after the loop closed a busy handler's connection, uvs_conn_fileno after
 * that, foreach and writes after a handler returned, a late write-cap
 * cut-off, the event-mode cap after a nocopy write, and a foreach callback
 * whose close runs a hook that counts connections.
 *
 * Threads: serve_forever runs on a pthread while the test thread plays the
 * clients, or on the test thread while a client pthread connects; cases that
 * must order the loop's steps against their own start the server on a loop
 * the test thread runs (RUN_UNTIL). Handlers find the case's context through
 * uvs_server_get_data, stashed in their per-request state on first use, so a
 * handler that outlives its server (block_on_close 0) never touches the
 * server again. What handlers and hooks record is atomic or under the
 * context's lock. Every client operation is bounded by a timeout, and no
 * case asserts a tight timing: the bounds allow for a loaded two-core
 * machine under TSan.
 */
#define TEST_CASE_TIMEOUT 60
#include "test.h"

#include "internal.h"

#include <stdatomic.h>


#define IO_TIMEOUT   10000 /* ms: every client read and every wait */
#define LINE_MAX_LEN 256


/* ---- Context --------------------------------------------------------- */

/* Permits a test hands to held handlers, one at a time or all at once. */
typedef struct {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int permits;
} gate_t;

/* What a case observes, hung on the server with uvs_server_set_data. */
typedef struct {
  atomic_int inflight; /* handlers inside handle() */
  atomic_int max_inflight;
  atomic_int entered; /* handle() calls begun */
  atomic_int left;    /* handle() calls returned */
  atomic_int finished;
  atomic_int errors;
  atomic_int error_status;
  atomic_int error_port; /* the peer's port handle_error was given */
  atomic_int error_had_conn;
  atomic_int shutdown_requests;
  atomic_int timeouts;
  atomic_int cancelled; /* request I/O that returned UV_ECANCELED */
  atomic_int read_error;
  atomic_int write_errors; /* uvs_conn_write failures but UV_ENOBUFS */
  atomic_int enobufs;
  atomic_ullong enobufs_id; /* the connection that got UV_ENOBUFS */
  atomic_int shutdown_result;
  atomic_int stopped_at_return; /* serve_forever was over when it returned */
  atomic_int opened;
  atomic_int closed;
  atomic_int close_status[4]; /* event mode, by connection id */
  atomic_ullong written[4];   /* event mode, bytes accepted by id */
  atomic_int close_other;     /* set: service_actions closes `other` */
  atomic_int other_closed;
  uvs_server_t* other;
  atomic_int release;        /* held handlers may return */
  atomic_int reset_seen;     /* the handler's uvs_recv saw the reset */
  atomic_int recv_result;    /* what that uvs_recv returned */
  atomic_int fd_before;      /* uvs_conn_fileno in the handler: first, */
  atomic_int fd_after;       /* and once the loop closed the connection */
  atomic_int handle_return;  /* what handle() returned */
  atomic_int close_result;   /* uvs_server_close from inside handle() */
  atomic_int server_closed;  /* its callback ran */
  atomic_int frees;          /* nocopy free callbacks */
  atomic_int hook_count;     /* connection count in shutdown_request */
  _Atomic(uvs_conn_t*) conn; /* the case's one connection */
  int hold_ms;               /* handlers sleep this long outside uvs */
  int setup_result;          /* returned by fail_setup */
  int handle_result;         /* returned by fail_handle */
  int timeout_result;        /* returned by handle_timeout */
  unsigned long long sink;   /* fan-out: the connection that never reads */
  gate_t gate;
  pthread_mutex_t lock; /* guards the fields below */
  char log[32];         /* one letter per step, in order */
  size_t log_len;
  uint64_t order[64]; /* connection ids in the order handlers started */
  size_t order_len;
} ctx_t;


static void gate_init(gate_t* g) {
  pthread_condattr_t attr;
  ASSERT_OK(pthread_mutex_init(&g->lock, NULL));
  ASSERT_OK(pthread_condattr_init(&attr));
  ASSERT_OK(pthread_condattr_setclock(&attr, CLOCK_MONOTONIC));
  ASSERT_OK(pthread_cond_init(&g->cond, &attr));
  ASSERT_OK(pthread_condattr_destroy(&attr));
  g->permits = 0;
}

static void gate_destroy(gate_t* g) {
  ASSERT_OK(pthread_cond_destroy(&g->cond));
  ASSERT_OK(pthread_mutex_destroy(&g->lock));
}

static void gate_open(gate_t* g, int n) {
  pthread_mutex_lock(&g->lock);
  g->permits += n;
  pthread_cond_broadcast(&g->cond);
  pthread_mutex_unlock(&g->lock);
}

/* Takes one permit, waiting IO_TIMEOUT at most. */
static void gate_pass(gate_t* g) {
  struct timespec deadline;
  clock_gettime(CLOCK_MONOTONIC, &deadline);
  deadline.tv_sec += IO_TIMEOUT / 1000;
  pthread_mutex_lock(&g->lock);
  while (g->permits == 0) {
    if (pthread_cond_timedwait(&g->cond, &g->lock, &deadline) == ETIMEDOUT)
      TEST__FAIL("gate_pass: no permit within %d ms", IO_TIMEOUT);
  }
  g->permits--;
  pthread_mutex_unlock(&g->lock);
}


static void ctx_init(ctx_t* ctx) {
  memset(ctx, 0, sizeof(*ctx));
  gate_init(&ctx->gate);
  ASSERT_OK(pthread_mutex_init(&ctx->lock, NULL));
}

static void ctx_destroy(ctx_t* ctx) {
  gate_destroy(&ctx->gate);
  ASSERT_OK(pthread_mutex_destroy(&ctx->lock));
}

/* Only the error cases read the log, whose few steps fit; the cases with
 * many requests just fill it. */
static void ctx_log(ctx_t* ctx, char step) {
  pthread_mutex_lock(&ctx->lock);
  if (ctx->log_len < sizeof(ctx->log) - 1) {
    ctx->log[ctx->log_len++] = step;
    ctx->log[ctx->log_len] = '\0';
  }
  pthread_mutex_unlock(&ctx->lock);
}

static void ctx_log_equals(ctx_t* ctx, const char* want) {
  char log[sizeof(ctx->log)];
  pthread_mutex_lock(&ctx->lock);
  memcpy(log, ctx->log, sizeof(log));
  pthread_mutex_unlock(&ctx->lock);
  ASSERT_STR_EQ(log, want);
}

static size_t ctx_order_len(ctx_t* ctx) {
  size_t n;
  pthread_mutex_lock(&ctx->lock);
  n = ctx->order_len;
  pthread_mutex_unlock(&ctx->lock);
  return n;
}

/* The case's context: read from the server on the first call (before any
 * close) and kept in the request's state for the calls that follow. */
static ctx_t* ctx_of(uvs_conn_t* conn) {
  ctx_t** slot = uvs_conn_state(conn);
  if (*slot == NULL)
    *slot = uvs_server_get_data(uvs_conn_server(conn));
  return *slot;
}

static void enter(ctx_t* ctx) {
  int now = atomic_fetch_add(&ctx->inflight, 1) + 1;
  int max = atomic_load(&ctx->max_inflight);
  while (now > max &&
         !atomic_compare_exchange_weak(&ctx->max_inflight, &max, now)) {
  }
  atomic_fetch_add(&ctx->entered, 1);
}

static void leave(ctx_t* ctx) {
  atomic_fetch_sub(&ctx->inflight, 1);
  atomic_fetch_add(&ctx->left, 1);
}


/* ---- Hooks ----------------------------------------------------------- */

static int port_of(const uvs_address_t* addr) {
  return ntohs(addr->u.in.sin_port);
}

static void record_error(uvs_server_t* server,
                         uvs_conn_t* conn,
                         const uvs_address_t* peer,
                         int status) {
  ctx_t* ctx = uvs_server_get_data(server);
  atomic_store(&ctx->error_status, status);
  atomic_store(&ctx->error_port, peer != NULL ? port_of(peer) : -1);
  atomic_store(&ctx->error_had_conn, conn != NULL);
  atomic_fetch_add(&ctx->errors, 1);
  ctx_log(ctx, 'E');
}

static void record_shutdown_request(uvs_server_t* server,
                                    uv_os_sock_t fd,
                                    const uvs_address_t* peer) {
  ctx_t* ctx = uvs_server_get_data(server);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(peer->transport, UVS_TRANSPORT_TCP);
  atomic_fetch_add(&ctx->shutdown_requests, 1);
  ctx_log(ctx, 'R');
}

static int count_timeout(uvs_server_t* server) {
  ctx_t* ctx = uvs_server_get_data(server);
  atomic_fetch_add(&ctx->timeouts, 1);
  return ctx->timeout_result;
}

/* shutdown_request that also asks for the connection count, which takes
 * the server's connection lock (event mode: on the loop thread, possibly
 * inside uvs_server_foreach). */
static void count_in_shutdown_request(uvs_server_t* server,
                                      uv_os_sock_t fd,
                                      const uvs_address_t* peer) {
  ctx_t* ctx = uvs_server_get_data(server);
  atomic_store(&ctx->hook_count, (int) uvs_server_connection_count(server));
  record_shutdown_request(server, fd, peer);
}

static void record_server_closed(uvs_server_t* server) {
  ctx_t* ctx = uvs_server_get_data(server);
  atomic_store(&ctx->server_closed, 1);
}

/* In service_actions, on the loop thread: close the other server that
 * shares this loop, with the asynchronous form a callback must use; the
 * closed server's context records the callback. */
static void on_other_closed(uvs_server_t* server) {
  ctx_t* ctx = uvs_server_get_data(server);
  atomic_store(&ctx->other_closed, 1);
}

static void close_other(uvs_server_t* server) {
  ctx_t* ctx = uvs_server_get_data(server);
  if (atomic_exchange(&ctx->close_other, 0) == 1)
    ASSERT_OK(uvs_server_close(ctx->other, on_other_closed));
}


/* ---- Handlers -------------------------------------------------------- */

/* Counts last: a case that waits for the count may then free the
 * context. */
static int count_finish(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  ctx_log(ctx, 'F');
  atomic_fetch_add(&ctx->finished, 1);
  return 0;
}

/* Ends a handler whose request I/O returned `n`: EOF and a cancel by the
 * server are normal ends. */
static int end_of(ctx_t* ctx, ssize_t n) {
  if (n == UV_ECANCELED) {
    atomic_fetch_add(&ctx->cancelled, 1);
    return 0;
  }
  return n < 0 ? (int) n : 0;
}

/* MyHandler, kept going: echo lines until EOF. */
static int echo_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char line[LINE_MAX_LEN];
  ssize_t n;

  enter(ctx);
  for (;;) {
    n = uvs_readline(conn, line, sizeof(line));
    if (n <= 0)
      break;
    n = uvs_sendall(conn, line, (size_t) n);
    if (n != 0)
      break;
  }
  leave(ctx);
  return end_of(ctx, n);
}

/* MyHandler itself: line = rfile.readline(); wfile.write(line). */
static int echo_one_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char line[LINE_MAX_LEN];
  ssize_t n;

  enter(ctx);
  n = uvs_readline(conn, line, sizeof(line));
  if (n > 0)
    n = uvs_sendall(conn, line, (size_t) n);
  leave(ctx);
  return end_of(ctx, n);
}

/* Records its start, holds for hold_ms, then waits for a permit from the
 * test before it echoes one line. */
static int held_echo_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char line[LINE_MAX_LEN];
  ssize_t n;

  enter(ctx);
  pthread_mutex_lock(&ctx->lock);
  ASSERT_LT(ctx->order_len, ARRAY_SIZE(ctx->order));
  ctx->order[ctx->order_len++] = uvs_conn_id(conn);
  pthread_mutex_unlock(&ctx->lock);
  if (ctx->hold_ms > 0)
    usleep((useconds_t) ctx->hold_ms * 1000);
  gate_pass(&ctx->gate);
  n = uvs_readline(conn, line, sizeof(line));
  if (n > 0)
    n = uvs_sendall(conn, line, (size_t) n);
  leave(ctx);
  return end_of(ctx, n);
}

/* Waits in uvs_recv for bytes that never come; once the server's close
 * fails it, works hold_ms longer outside uvs (a handler finishing a job). */
static int recv_then_sleep_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char buf[64];
  ssize_t n;

  enter(ctx);
  n = uvs_recv(conn, buf, sizeof(buf));
  if (n == UV_ECANCELED)
    atomic_fetch_add(&ctx->cancelled, 1);
  else
    atomic_store(&ctx->read_error, (int) n);
  if (ctx->hold_ms > 0)
    usleep((useconds_t) ctx->hold_ms * 1000);
  leave(ctx);
  return 0;
}

/* BadHandler (ErrorHandlerTest): logs, then fails with handle_result. */
static int fail_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  ctx_log(ctx, 'H');
  return ctx->handle_result;
}

static int fail_setup(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  ctx_log(ctx, 'S');
  return ctx->setup_result;
}

/* Echoes one line, waits until the socket took it, then stops the server
 * from the handler's own thread. */
static int shutdown_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  uvs_server_t* server = uvs_conn_server(conn);
  char line[LINE_MAX_LEN];
  ssize_t n;

  enter(ctx);
  n = uvs_readline(conn, line, sizeof(line));
  if (n > 0)
    n = uvs_sendall(conn, line, (size_t) n);
  if (n == 0)
    n = uvs_flush(conn);
  if (n == 0) {
    atomic_store(&ctx->shutdown_result, uvs_server_shutdown(server));
    if (server->config.mode == UVS_MODE_THREADING) {
      /* From another thread, shutdown returns once serve_forever has. */
      uv_mutex_lock(&server->lock);
      atomic_store(&ctx->stopped_at_return,
                   server->serve_state == UVS__STOPPED);
      uv_mutex_unlock(&server->lock);
    }
  }
  leave(ctx);
  return end_of(ctx, n);
}

/* Fan-out: every line a client sends goes to every other connection. */
typedef struct {
  uvs_conn_t* from;
  ctx_t* ctx;
  const char* line;
  size_t len;
} fan_t;

static void fan_cb(uvs_conn_t* conn, void* arg) {
  fan_t* f = arg;
  int r;

  if (conn == f->from)
    return;
  r = uvs_conn_write(conn, f->line, f->len);
  if (r == UV_ENOBUFS) {
    atomic_store(&f->ctx->enobufs_id, uvs_conn_id(conn));
    atomic_fetch_add(&f->ctx->enobufs, 1);
  } else if (r != 0) {
    atomic_fetch_add(&f->ctx->write_errors, 1);
  }
}

static int fanout_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  uvs_server_t* server = uvs_conn_server(conn);
  char line[2048];
  ssize_t n;

  /* The client that never reads gets a small send buffer, so the cap is
   * reached after a few KiB rather than the kernel's autotuned MiBs. */
  if (uvs_conn_id(conn) == ctx->sink) {
    int size = 4096;
    ASSERT_OK(setsockopt(uvs_conn_fileno(conn),
                         SOL_SOCKET,
                         SO_SNDBUF,
                         &size,
                         sizeof(size)));
  }
  enter(ctx);
  for (;;) {
    fan_t f;
    n = uvs_readline(conn, line, sizeof(line));
    if (n <= 0)
      break;
    f.from = conn;
    f.ctx = ctx;
    f.line = line;
    f.len = (size_t) n;
    ASSERT_GE(uvs_server_foreach(server, fan_cb, &f), 0);
  }
  if (n < 0 && n != UV_ECANCELED)
    atomic_store(&ctx->read_error, (int) n);
  leave(ctx);
  return 0;
}


/* Works outside uvs until the test sets `release`, or IO_TIMEOUT passed
 * (a case that fails never leaves a worker behind for long). */
static void hold_until_released(ctx_t* ctx) {
  uint64_t deadline = test_now_ms() + IO_TIMEOUT;
  while (!atomic_load(&ctx->release) && test_now_ms() < deadline)
    usleep(1000);
}

/* Reads the client's byte, then waits in uvs_recv for the peer's reset;
 * then works outside uvs until released and asks for its descriptor. */
static int reset_then_hold_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char c;
  ssize_t n;

  atomic_store(&ctx->fd_before, uvs_conn_fileno(conn));
  n = uvs_recv(conn, &c, 1);
  ASSERT_EQ(n, 1);
  enter(ctx);
  n = uvs_recv(conn, &c, 1);
  atomic_store(&ctx->recv_result, (int) n);
  atomic_store(&ctx->reset_seen, 1);
  hold_until_released(ctx);
  atomic_store(&ctx->fd_after, uvs_conn_fileno(conn));
  leave(ctx);
  return 0;
}

/* The README's handler: it passes request I/O errors on, the UV_ECANCELED
 * of a server close included. */
static int readme_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char line[LINE_MAX_LEN];
  ssize_t n;
  int r = 0;

  enter(ctx);
  while ((n = uvs_readline(conn, line, sizeof(line))) > 0) {
    r = uvs_sendall(conn, line, (size_t) n);
    if (r != 0)
      break;
  }
  if (r == 0)
    r = n < 0 ? (int) n : 0;
  atomic_store(&ctx->handle_return, r);
  leave(ctx);
  return r;
}

/* Publishes its connection and returns at once. */
static int stash_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  atomic_store(&ctx->conn, conn);
  enter(ctx);
  leave(ctx);
  return 0;
}

/* More than the loopback socket buffers hold, for a peer that does not
 * read. */
#define BIG_SIZE ((size_t) 8 << 20)
static char big[BIG_SIZE];

/* Publishes its connection, then sends BIG_SIZE bytes to a client that
 * never reads: it waits in uvs_sendall until the server cuts it off. */
static int sendall_big_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  int r;

  atomic_store(&ctx->conn, conn);
  enter(ctx);
  r = uvs_sendall(conn, big, BIG_SIZE);
  leave(ctx);
  return end_of(ctx, r);
}

/* The first request waits until released and then returns UVS_ESTOP;
 * the ones after it echo a line. */
static int late_estop_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char line[LINE_MAX_LEN];
  ssize_t n;

  if (atomic_fetch_add(&ctx->entered, 1) == 0) {
    hold_until_released(ctx);
    return UVS_ESTOP;
  }
  n = uvs_readline(conn, line, sizeof(line));
  if (n > 0)
    n = uvs_sendall(conn, line, (size_t) n);
  return end_of(ctx, n);
}

/* Sync mode: closes the whole server from inside handle(), with a
 * callback, as a uvs callback must. */
static int close_server_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  enter(ctx);
  atomic_store(&ctx->close_result,
               uvs_server_close(uvs_conn_server(conn), record_server_closed));
  leave(ctx);
  return 0;
}


/* ---- Fixtures -------------------------------------------------------- */

static uvs_config_t blocking_config(uvs_mode_t mode) {
  uvs_config_t config;
  uvs_config_init(&config);
  config.mode = mode;
  config.hooks.handle_error = record_error;
  config.hooks.shutdown_request = record_shutdown_request;
  return config;
}

static uvs_handler_t blocking_handler(uvs_request_cb handle) {
  uvs_handler_t handler;
  memset(&handler, 0, sizeof(handler));
  handler.state_size = sizeof(ctx_t*);
  handler.handle = handle;
  handler.finish = count_finish;
  return handler;
}

static uvs_server_t* make_server(uv_loop_t* loop,
                                 const uvs_handler_t* handler,
                                 const uvs_config_t* config,
                                 ctx_t* ctx) {
  uvs_server_t* server = NULL;
  ASSERT_OK(
      uvs_server_new(loop, &server, "tcp://127.0.0.1:0", handler, config));
  ASSERT_NOT_NULL(server);
  uvs_server_set_data(server, ctx);
  return server;
}


/* serve_forever on a pthread (run_server's daemon thread). */
typedef struct {
  pthread_t thread;
  uvs_server_t* server;
  int result;
} serve_thread_t;

static void* serve_main(void* arg) {
  serve_thread_t* t = arg;
  t->result = uvs_server_serve_forever(t->server, 10);
  return NULL;
}

static void serve_start(serve_thread_t* t, uvs_server_t* server) {
  t->server = server;
  t->result = -12345;
  ASSERT_OK(pthread_create(&t->thread, NULL, serve_main, t));
}

static int serve_join(serve_thread_t* t) {
  ASSERT_OK(pthread_join(t->thread, NULL));
  return t->result;
}

/* shutdown from the test thread, join, close: the usual end of a case. */
static void serve_stop_and_close(serve_thread_t* t, uvs_server_t* server) {
  ASSERT_OK(uvs_server_shutdown(server));
  ASSERT_OK(serve_join(t));
  ASSERT_OK(uvs_server_close(server, NULL));
}


#define WAIT_UNTIL(cond, timeout_ms)                                 \
 do {                                                                \
  uint64_t wait_deadline_ = test_now_ms() + (uint64_t) (timeout_ms); \
  while (!(cond)) {                                                  \
   if (test_now_ms() >= wait_deadline_)                              \
    TEST__FAIL("waited %d ms for %s", (int) (timeout_ms), #cond);    \
   usleep(1000);                                                     \
  }                                                                  \
 } while (0)


/* WAIT_UNTIL for a case whose test thread runs the server's loop: the
 * condition is checked between loop iterations, never during one. */
#define RUN_UNTIL(loop, cond, timeout_ms)                               \
 do {                                                                   \
  uint64_t run_deadline_ = test_now_ms() + (uint64_t) (timeout_ms);     \
  while (!(cond)) {                                                     \
   if (test_now_ms() >= run_deadline_)                                  \
    TEST__FAIL("ran the loop %d ms for %s", (int) (timeout_ms), #cond); \
   uv_run((loop), UV_RUN_NOWAIT);                                       \
   usleep(500);                                                         \
  }                                                                     \
 } while (0)


/* Every connection still on the server's list has all its handles closed
 * (the loop is done with it; a worker may still hold it). Loop thread. */
static int conns_loop_done(uvs_server_t* server) {
  uvs__list_t* node;
  int done = 1;

  uv_mutex_lock(&server->conns_lock);
  for (node = server->conns.next; node != &server->conns; node = node->next)
    done = done && container_of(node, uvs_conn_t, node)->loop_done;
  uv_mutex_unlock(&server->conns_lock);
  return done;
}

/* Bytes the loop took from a threading connection and has not yet seen
 * sent: above 0, the socket has refused bytes. */
static size_t conn_inflight(uvs_conn_t* conn) {
  size_t n;
  uv_mutex_lock(&conn->io->lock);
  n = conn->io->inflight;
  uv_mutex_unlock(&conn->io->lock);
  return n;
}


/* Live workers of a threading server's pool. */
static unsigned live_workers(uvs_server_t* server) {
  unsigned n;
  uv_mutex_lock(&server->pool->lock);
  n = server->pool->nthreads;
  uv_mutex_unlock(&server->pool->lock);
  return n;
}

/* Workers waiting for a request: such a worker has finished everything
 * of its last one, what its handler returned included. */
static unsigned idle_workers(uvs_server_t* server) {
  unsigned n;
  uv_mutex_lock(&server->pool->lock);
  n = server->pool->nidle;
  uv_mutex_unlock(&server->pool->lock);
  return n;
}

/* The process's threads at one moment, by kernel thread id. A joined
 * thread can stay listed in /proc/self/task for a moment after
 * pthread_join returns (the kernel releases the task after it wakes the
 * joiner), so a plain count taken then is one too high and a later wait
 * for "back to that count" never ends. Comparing ids is exact. */
typedef struct {
  long tid[256];
  int n;
} task_set_t;

static void task_snapshot(task_set_t* set) {
  DIR* dir = opendir("/proc/self/task");
  struct dirent* ent;
  ASSERT_NOT_NULL(dir);
  set->n = 0;
  while ((ent = readdir(dir)) != NULL) {
    if (ent->d_name[0] == '.')
      continue;
    ASSERT_LT(set->n, (int) ARRAY_SIZE(set->tid));
    set->tid[set->n++] = strtol(ent->d_name, NULL, 10);
  }
  closedir(dir);
}

/* How many threads are alive now that were not in `base`. */
static int count_new_tasks(const task_set_t* base) {
  task_set_t now;
  int fresh = 0;
  int i;
  int j;

  task_snapshot(&now);
  for (i = 0; i < now.n; i++) {
    for (j = 0; j < base->n && base->tid[j] != now.tid[i]; j++)
      ;
    if (j == base->n)
      fresh++;
  }
  return fresh;
}

static void* noop_main(void* arg) {
  return arg;
}

/* The process's threads with nothing of the case running, after one
 * thread has come and gone (a sanitizer starts its helper thread on the
 * first pthread_create). */
static void thread_baseline(task_set_t* base) {
  pthread_t thread;
  ASSERT_OK(pthread_create(&thread, NULL, noop_main, NULL));
  ASSERT_OK(pthread_join(thread, NULL));
  task_snapshot(base);
}


/* ---- Clients --------------------------------------------------------- */

static int connect_client(int port) {
  return test_connect("127.0.0.1", port);
}

/* A client whose receive buffer is `rcvbuf` bytes, set before connecting
 * so the window stays small. */
static int connect_rcvbuf(int port, int rcvbuf) {
  struct sockaddr_in in;
  int fd;

  memset(&in, 0, sizeof(in));
  in.sin_family = AF_INET;
  in.sin_port = htons((uint16_t) port);
  in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  ASSERT_OK(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)));
  ASSERT_OK(connect(fd, (struct sockaddr*) &in, sizeof(in)));
  return fd;
}

/* Connects to 127.0.0.1:port; returns 0 (and closes) or -errno. */
static int try_connect(int port) {
  struct sockaddr_in in;
  int fd;
  int r = 0;

  memset(&in, 0, sizeof(in));
  in.sin_family = AF_INET;
  in.sin_port = htons((uint16_t) port);
  in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  if (connect(fd, (struct sockaddr*) &in, sizeof(in)) != 0)
    r = -errno;
  close(fd);
  return r;
}

/* Closes a client with a TCP reset instead of a FIN. */
static void reset_close(int fd) {
  struct linger lg = { 1, 0 };
  ASSERT_OK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)));
  close(fd);
}

static int local_port(int fd) {
  struct sockaddr_in in;
  socklen_t len = sizeof(in);
  ASSERT_OK(getsockname(fd, (struct sockaddr*) &in, &len));
  return ntohs(in.sin_port);
}

static int readable_within(int fd, int timeout_ms) {
  struct pollfd pfd = { fd, POLLIN, 0 };
  return poll(&pfd, 1, timeout_ms) == 1;
}

/* Reads until a '\n' or EOF, all within `timeout_ms`, one byte at a time
 * so nothing after the line is consumed. Returns the bytes read, which it
 * NUL-terminates in `buf`. */
static size_t recv_line(int fd, char* buf, size_t cap, int timeout_ms) {
  uint64_t deadline = test_now_ms() + (uint64_t) timeout_ms;
  size_t got = 0;

  while (got + 1 < cap && (got == 0 || buf[got - 1] != '\n')) {
    uint64_t now = test_now_ms();
    ssize_t n;
    if (now >= deadline)
      break;
    if (!readable_within(fd, (int) (deadline - now)))
      continue;
    n = recv(fd, buf + got, 1, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    got++;
  }
  buf[got] = '\0';
  return got;
}

/* Sends `msg` (one line) and expects it back. */
static void echo_check(int fd, const char* msg) {
  char buf[LINE_MAX_LEN];
  test_send_all(fd, msg, strlen(msg));
  ASSERT_EQ(recv_line(fd, buf, sizeof(buf), IO_TIMEOUT), strlen(msg));
  ASSERT_STR_EQ(buf, msg);
}

/* One request as CPython's clients make it: connect, one line, read the
 * echo, then close once the server has closed (so the server, which
 * closes first, holds the TIME_WAIT and no client port is tied up). */
static void one_request(int port, const char* msg) {
  int fd = connect_client(port);
  echo_check(fd, msg);
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
}

/* The same for a handler that echoes until EOF: the client closes
 * first. */
static void echo_and_close(int port, const char* msg) {
  int fd = connect_client(port);
  echo_check(fd, msg);
  close(fd);
}

/* A client on a pthread, for cases whose test thread runs the loop:
 * connect, then either one request (msg set) or close at once. */
typedef struct {
  pthread_t thread;
  int port;
  const char* msg;
  atomic_int local_port;
  atomic_int done; /* closed its socket: join it without waiting */
} client_thread_t;

static void* client_main(void* arg) {
  client_thread_t* c = arg;
  int fd = connect_client(c->port);
  atomic_store(&c->local_port, local_port(fd));
  if (c->msg != NULL) {
    echo_check(fd, c->msg);
    ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  }
  close(fd);
  atomic_store(&c->done, 1);
  return NULL;
}

static void client_start(client_thread_t* c, int port, const char* msg) {
  c->port = port;
  c->msg = msg;
  atomic_store(&c->local_port, 0);
  atomic_store(&c->done, 0);
  ASSERT_OK(pthread_create(&c->thread, NULL, client_main, c));
}

static void client_join(client_thread_t* c) {
  ASSERT_OK(pthread_join(c->thread, NULL));
}


/* Line reader for clients driven by one poll() loop. */
typedef struct {
  int fd;
  size_t len;
  char buf[8192];
} reader_t;

typedef void (*line_cb)(void* arg, int client, const char* line, size_t len);

/* Reads what `r` has now and hands each complete line to `cb`. */
static void reader_pump(reader_t* r, int client, line_cb cb, void* arg) {
  ssize_t n;
  char* nl;

  n = recv(r->fd, r->buf + r->len, sizeof(r->buf) - r->len, MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR))
    return;
  if (n <= 0)
    TEST__FAIL("client %d: recv %zd (%s)", client, n, strerror(errno));
  r->len += (size_t) n;
  while ((nl = memchr(r->buf, '\n', r->len)) != NULL) {
    size_t len = (size_t) (nl - r->buf) + 1;
    cb(arg, client, r->buf, len);
    memmove(r->buf, r->buf + len, r->len - len);
    r->len -= len;
  }
  ASSERT_LT(r->len, sizeof(r->buf));
}

/* Polls `n` readers for `timeout_ms` at most and pumps the readable ones.
 * Returns when the timeout passes or something was read. */
static void readers_poll(reader_t* readers,
                         int n,
                         int timeout_ms,
                         line_cb cb,
                         void* arg) {
  struct pollfd pfds[256];
  int i;

  ASSERT_LE(n, (int) ARRAY_SIZE(pfds));
  for (i = 0; i < n; i++) {
    pfds[i].fd = readers[i].fd;
    pfds[i].events = POLLIN;
    pfds[i].revents = 0;
  }
  if (poll(pfds, (nfds_t) n, timeout_ms) <= 0)
    return;
  for (i = 0; i < n; i++) {
    if (pfds[i].revents != 0)
      reader_pump(&readers[i], i, cb, arg);
  }
}


/* ---- Many clients ---------------------------------------------------- */

#define MANY 200

typedef struct {
  int got[MANY];
} many_t;

static void many_line(void* arg, int client, const char* line, size_t len) {
  many_t* m = arg;
  char want[32];
  snprintf(want, sizeof(want), "client %d\n", client);
  ASSERT_EQ(len, strlen(want));
  ASSERT_MEM_EQ(line, want, len);
  m->got[client]++;
}

/* test_ThreadingTCPServer at scale: 200 clients at once, each served by
 * its own worker (all 200 handlers are inside handle() together before
 * any client sends), each echoed its own line. */
static void many_clients(void) {
  uvs_config_t config = blocking_config(UVS_MODE_THREADING);
  uvs_handler_t handler = blocking_handler(echo_handle);
  static reader_t readers[MANY];
  many_t m;
  serve_thread_t t;
  uvs_server_t* server;
  ctx_t ctx;
  uint64_t deadline;
  int done;
  int port;
  int i;

  ctx_init(&ctx);
  memset(&m, 0, sizeof(m));
  server = make_server(NULL, &handler, &config, &ctx);
  port = test_server_port(server);
  serve_start(&t, server);
  for (i = 0; i < MANY; i++) {
    memset(&readers[i], 0, sizeof(readers[i]));
    readers[i].fd = connect_client(port);
  }
  WAIT_UNTIL(atomic_load(&ctx.inflight) == MANY, IO_TIMEOUT);
  for (i = 0; i < MANY; i++) {
    char line[32];
    snprintf(line, sizeof(line), "client %d\n", i);
    test_send_all(readers[i].fd, line, strlen(line));
  }
  deadline = test_now_ms() + IO_TIMEOUT;
  do {
    ASSERT_LT(test_now_ms(), deadline);
    readers_poll(readers, MANY, 100, many_line, &m);
    done = 0;
    for (i = 0; i < MANY; i++)
      done += m.got[i] == 1;
  } while (done < MANY);
  for (i = 0; i < MANY; i++)
    close(readers[i].fd);
  WAIT_UNTIL(atomic_load(&ctx.finished) == MANY, IO_TIMEOUT);
  ASSERT_EQ(atomic_load(&ctx.max_inflight), MANY);
  ASSERT_EQ(atomic_load(&ctx.entered), MANY);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  /* shutdown_request runs on the loop after the worker reports done. */
  WAIT_UNTIL(atomic_load(&ctx.shutdown_requests) == MANY, IO_TIMEOUT);
  serve_stop_and_close(&t, server);
  ctx_destroy(&ctx);
}


/* ---- Accepting ------------------------------------------------------ */

/* Threading mode: the connection is allocated, then its request side
 * fails for lack of memory. That reaches handle_error (with no connection)
 * and closes the client; nothing freed is left on the loop (ASan: the next
 * accept links its handle after it; uv_loop_close would find it), and the
 * server serves the next client and closes cleanly. */
static void accept_out_of_memory(void) {
  uvs_config_t config = blocking_config(UVS_MODE_THREADING);
  uvs_handler_t handler = blocking_handler(echo_one_handle);
  uvs_server_t* server;
  client_thread_t c;
  uv_loop_t loop;
  ctx_t ctx;
  int port;
  int fd;

  ctx_init(&ctx);
  ASSERT_OK(uv_loop_init(&loop));
  server = make_server(&loop, &handler, &config, &ctx);
  port = test_server_port(server);
  ASSERT_OK(uvs_server_start(server));

  fd = connect_client(port);
  uvs__alloc_fail_after(1); /* the connection: yes; its request side: no */
  RUN_UNTIL(&loop, atomic_load(&ctx.errors) == 1, IO_TIMEOUT);
  uvs__alloc_fail_after(-1);
  ASSERT_ERR(atomic_load(&ctx.error_status), UV_ENOMEM);
  ASSERT_EQ(atomic_load(&ctx.error_had_conn), 0);
  ASSERT_EQ(atomic_load(&ctx.error_port), local_port(fd));
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  ASSERT_EQ(atomic_load(&ctx.entered), 0);
  ASSERT_EQ(atomic_load(&ctx.shutdown_requests), 0);

  client_start(&c, port, "next\n");
  RUN_UNTIL(&loop, atomic_load(&c.done) == 1, IO_TIMEOUT);
  client_join(&c);
  ASSERT_EQ(atomic_load(&ctx.finished), 1);
  ASSERT_EQ(atomic_load(&ctx.errors), 1);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
  ctx_destroy(&ctx);
}


/* ---- The pool -------------------------------------------------------- */

/* max_threads = 3 and 12 clients whose handlers hold about 100 ms: never
 * more than 3 handlers at once, and the queued requests start in arrival
 * order. The test frees one slot at a time (a permit), so which request
 * starts next is never a race between two workers. */
static void max_threads_fifo(void) {
  enum {
    CAP = 3,
    N = 12
  };
  uvs_config_t config = blocking_config(UVS_MODE_THREADING);
  uvs_handler_t handler = blocking_handler(held_echo_handle);
  serve_thread_t t;
  uvs_server_t* server;
  ctx_t ctx;
  int fds[N];
  int port;
  int i;

  ctx_init(&ctx);
  ctx.hold_ms = 100;
  config.max_threads = CAP;
  server = make_server(NULL, &handler, &config, &ctx);
  port = test_server_port(server);
  serve_start(&t, server);

  /* Arrival order is accept order: each connect is accepted (and the
   * first three started) before the next client connects. */
  for (i = 0; i < N; i++) {
    char line[16];
    fds[i] = connect_client(port);
    snprintf(line, sizeof(line), "%d\n", i);
    test_send_all(fds[i], line, strlen(line));
    if (i < CAP)
      WAIT_UNTIL(ctx_order_len(&ctx) == (size_t) i + 1, IO_TIMEOUT);
    else
      WAIT_UNTIL(uvs_server_connection_count(server) == (size_t) i + 1,
                 IO_TIMEOUT);
    usleep(5000);
  }
  /* The other nine wait: no fourth worker, nothing started. */
  usleep(200 * 1000);
  ASSERT_EQ(ctx_order_len(&ctx), CAP);
  ASSERT_EQ(live_workers(server), CAP);

  for (i = CAP; i < N; i++) {
    gate_open(&ctx.gate, 1);
    WAIT_UNTIL(ctx_order_len(&ctx) == (size_t) i + 1, IO_TIMEOUT);
    ASSERT_LE(live_workers(server), CAP);
    ASSERT_LE(atomic_load(&ctx.max_inflight), CAP);
  }
  gate_open(&ctx.gate, CAP);

  for (i = 0; i < N; i++) {
    char want[16];
    char buf[LINE_MAX_LEN];
    snprintf(want, sizeof(want), "%d\n", i);
    ASSERT_EQ(recv_line(fds[i], buf, sizeof(buf), IO_TIMEOUT), strlen(want));
    ASSERT_STR_EQ(buf, want);
    ASSERT_EQ(test_wait_eof(fds[i], IO_TIMEOUT), 1);
    close(fds[i]);
  }
  WAIT_UNTIL(atomic_load(&ctx.finished) == N, IO_TIMEOUT);
  pthread_mutex_lock(&ctx.lock);
  for (i = 0; i < N; i++)
    ASSERT_EQ(ctx.order[i], i + 1);
  pthread_mutex_unlock(&ctx.lock);
  ASSERT_EQ(atomic_load(&ctx.max_inflight), CAP);
  ASSERT_LE(uvs__pool_thread_records(server->pool), CAP);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  serve_stop_and_close(&t, server);
  ctx_destroy(&ctx);
}


/* Runs one burst of `n` clients whose handlers are all held until every
 * one of them has started; returns the live workers seen then. */
static unsigned burst(uvs_server_t* server, ctx_t* ctx, int port, int n) {
  int base = atomic_load(&ctx->finished);
  unsigned live;
  int fds[16];
  int i;

  ASSERT_LE(n, (int) ARRAY_SIZE(fds));
  for (i = 0; i < n; i++) {
    fds[i] = connect_client(port);
    test_send_all(fds[i], "burst\n", 6);
  }
  WAIT_UNTIL(atomic_load(&ctx->inflight) == n, IO_TIMEOUT);
  live = live_workers(server);
  gate_open(&ctx->gate, n);
  for (i = 0; i < n; i++) {
    char buf[LINE_MAX_LEN];
    ASSERT_EQ(recv_line(fds[i], buf, sizeof(buf), IO_TIMEOUT), 6);
    ASSERT_STR_EQ(buf, "burst\n");
    ASSERT_EQ(test_wait_eof(fds[i], IO_TIMEOUT), 1);
    close(fds[i]);
  }
  WAIT_UNTIL(atomic_load(&ctx->finished) == base + n, IO_TIMEOUT);
  return live;
}

/* The elastic pool: thread_idle_ms = 50. A burst of 6 grows the pool to
 * 6 workers; once idle they all exit (the pool and the process both count
 * none left); the next burst of 4 grows it again, and the exited workers'
 * records are gone by then. */
static void elastic_pool(void) {
  uvs_config_t config = blocking_config(UVS_MODE_THREADING);
  uvs_handler_t handler = blocking_handler(held_echo_handle);
  serve_thread_t t;
  uvs_server_t* server;
  ctx_t ctx;
  task_set_t base;
  int port;

  ctx_init(&ctx);
  config.thread_idle_ms = 50;
  server = make_server(NULL, &handler, &config, &ctx);
  port = test_server_port(server);
  thread_baseline(&base);
  serve_start(&t, server);

  ASSERT_EQ(burst(server, &ctx, port, 6), 6);
  WAIT_UNTIL(live_workers(server) == 0, IO_TIMEOUT);
  WAIT_UNTIL(count_new_tasks(&base) == 1, IO_TIMEOUT); /* serve thread */

  ASSERT_EQ(burst(server, &ctx, port, 4), 4);
  ASSERT_LE(uvs__pool_thread_records(server->pool), 4);
  WAIT_UNTIL(live_workers(server) == 0, IO_TIMEOUT);
  WAIT_UNTIL(count_new_tasks(&base) == 1, IO_TIMEOUT);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  serve_stop_and_close(&t, server);
  ctx_destroy(&ctx);
}


/* thread_idle_ms = UINT64_MAX is forever, not a wrapped zero: the worker
 * of a finished request is still alive and waiting a while later. */
static void idle_worker_kept(void) {
  uvs_config_t config = blocking_config(UVS_MODE_THREADING);
  uvs_handler_t handler = blocking_handler(echo_one_handle);
  serve_thread_t t;
  uvs_server_t* server;
  ctx_t ctx;
  int port;

  ctx_init(&ctx);
  config.thread_idle_ms = UINT64_MAX;
  server = make_server(NULL, &handler, &config, &ctx);
  port = test_server_port(server);
  serve_start(&t, server);
  one_request(port, "x\n");
  WAIT_UNTIL(atomic_load(&ctx.finished) == 1, IO_TIMEOUT);
  usleep(300 * 1000);
  ASSERT_EQ(live_workers(server), 1);
  one_request(port, "y\n");
  WAIT_UNTIL(atomic_load(&ctx.finished) == 2, IO_TIMEOUT);
  ASSERT_EQ(live_workers(server), 1);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  serve_stop_and_close(&t, server);
  ctx_destroy(&ctx);
}


/* bpo-37193: the pool's bookkeeping is bounded by the workers alive at
 * once, not by the requests served. 10 000 sequential requests (connect,
 * one line, close) leave a handful of thread records, never thousands. */
static void bookkeeping_bounded(void) {
  enum {
    N = 10000
  };
  uvs_config_t config = blocking_config(UVS_MODE_THREADING);
  uvs_handler_t handler = blocking_handler(echo_one_handle);
  serve_thread_t t;
  uvs_server_t* server;
  size_t most = 0;
  uint64_t start;
  ctx_t ctx;
  int port;
  int i;

  ctx_init(&ctx);
  server = make_server(NULL, &handler, &config, &ctx);
  port = test_server_port(server);
  serve_start(&t, server);
  start = test_now_ms();
  for (i = 0; i < N; i++) {
    one_request(port, "x\n");
    if (i % 100 == 0) {
      size_t records = uvs__pool_thread_records(server->pool);
      if (records > most)
        most = records;
    }
  }
  printf("# %d requests in %" PRIu64 " ms, at most %zu thread records\n",
         N,
         test_now_ms() - start,
         most);
  ASSERT_LT(test_now_ms() - start, 50000);
  WAIT_UNTIL(atomic_load(&ctx.finished) == N, IO_TIMEOUT);
  ASSERT_LE(most, 8);
  ASSERT_LE(uvs__pool_thread_records(server->pool), 8);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  serve_stop_and_close(&t, server);
  ctx_destroy(&ctx);
}


/* test_threads_reaped (bpo-37193): 10 times, a client connects and
 * handle_request serves it while the connection is open; afterwards the
 * pool holds fewer than 10 records. uvs's handle_request serves the
 * request to its end, so the client runs on a pthread. */
static void threads_reaped(void) {
  uvs_config_t config = blocking_config(UVS_MODE_THREADING);
  uvs_handler_t handler = blocking_handler(echo_one_handle);
  uvs_server_t* server;
  client_thread_t c;
  ctx_t ctx;
  int port;
  int i;

  ctx_init(&ctx);
  server = make_server(NULL, &handler, &config, &ctx);
  port = test_server_port(server);
  for (i = 0; i < 10; i++) {
    client_start(&c, port, "hello world\n");
    ASSERT_OK(uvs_server_handle_request(server));
    client_join(&c);
    ASSERT_EQ(atomic_load(&ctx.finished), i + 1);
  }
  ASSERT_LT(uvs__pool_thread_records(server->pool), 10);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  ASSERT_OK(uvs_server_close(server, NULL));
  ctx_destroy(&ctx);
}


/* ---- Sync mode ------------------------------------------------------- */

/* Sync mode (plain TCPServer) serves one request at a time: a second
 * client's line is not echoed while the first is connected, and is as
 * soon as the first closes. handle() never runs twice at once. */
static void sync_serializes(void) {
  uvs_config_t config = blocking_config(UVS_MODE_SYNC);
  uvs_handler_t handler = blocking_handler(echo_handle);
  char buf[LINE_MAX_LEN];
  serve_thread_t t;
  uvs_server_t* server;
  ctx_t ctx;
  int port;
  int a;
  int b;

  ctx_init(&ctx);
  server = make_server(NULL, &handler, &config, &ctx);
  port = test_server_port(server);
  serve_start(&t, server);

  a = connect_client(port);
  echo_check(a, "a1\n");
  b = connect_client(port);
  test_send_all(b, "b1\n", 3);
  ASSERT_FALSE(readable_within(b, 300));
  echo_check(a, "a2\n");
  ASSERT_FALSE(readable_within(b, 0));
  close(a);

  ASSERT_EQ(recv_line(b, buf, sizeof(buf), IO_TIMEOUT), 3);
  ASSERT_STR_EQ(buf, "b1\n");
  echo_check(b, "b2\n");
  close(b);
  WAIT_UNTIL(atomic_load(&ctx.finished) == 2, IO_TIMEOUT);
  ASSERT_EQ(atomic_load(&ctx.max_inflight), 1);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  serve_stop_and_close(&t, server);
  ctx_destroy(&ctx);
}


/* Sync mode, uvs_server_close(server, cb) from inside handle() on the
 * caller's loop: it returns 0 at once, finish still runs, the callback
 * follows on the loop, the client sees the connection end, and no
 * descriptor is left open (the harness counts them). */
static void sync_close_from_handler(void) {
  uvs_config_t config = blocking_config(UVS_MODE_SYNC);
  uvs_handler_t handler = blocking_handler(close_server_handle);
  uvs_server_t* server;
  uv_loop_t loop;
  ctx_t ctx;
  int fd;

  ctx_init(&ctx);
  atomic_store(&ctx.close_result, -1);
  ASSERT_OK(uv_loop_init(&loop));
  server = make_server(&loop, &handler, &config, &ctx);
  ASSERT_OK(uvs_server_start(server));
  fd = connect_client(test_server_port(server));
  RUN_UNTIL(&loop, atomic_load(&ctx.server_closed) == 1, IO_TIMEOUT);
  ASSERT_OK(atomic_load(&ctx.close_result));
  ASSERT_EQ(atomic_load(&ctx.left), 1);
  ASSERT_EQ(atomic_load(&ctx.finished), 1);
  ASSERT_EQ(atomic_load(&ctx.shutdown_requests), 1);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  test_loop_close(&loop);
  ctx_destroy(&ctx);
}


/* ---- handle_request -------------------------------------------------- */

/* handle_request with timeout_ms, in sync and threading mode: no client
 * within the timeout returns handle_timeout's value; a client waiting is
 * served (one request, to its end). */
static void handle_request_timeout(void) {
  static const uvs_mode_t modes[] = { UVS_MODE_SYNC, UVS_MODE_THREADING };
  size_t m;

  for (m = 0; m < ARRAY_SIZE(modes); m++) {
    uvs_config_t config = blocking_config(modes[m]);
    uvs_handler_t handler = blocking_handler(echo_handle);
    char buf[LINE_MAX_LEN];
    uvs_server_t* server;
    uint64_t start;
    uint64_t elapsed;
    ctx_t ctx;
    int fd;

    ctx_init(&ctx);
    ctx.timeout_result = 4242;
    config.timeout_ms = 100;
    config.hooks.handle_timeout = count_timeout;
    server = make_server(NULL, &handler, &config, &ctx);

    start = test_now_ms();
    ASSERT_EQ(uvs_server_handle_request(server), 4242);
    elapsed = test_now_ms() - start;
    ASSERT_GE(elapsed, 90);
    ASSERT_LT(elapsed, IO_TIMEOUT);
    ASSERT_EQ(atomic_load(&ctx.timeouts), 1);
    ASSERT_EQ(atomic_load(&ctx.entered), 0);

    fd = connect_client(test_server_port(server));
    test_send_all(fd, "one\n", 4);
    ASSERT_OK(shutdown(fd, SHUT_WR));
    ASSERT_OK(uvs_server_handle_request(server));
    ASSERT_EQ(atomic_load(&ctx.timeouts), 1);
    ASSERT_EQ(atomic_load(&ctx.finished), 1);
    ASSERT_EQ(atomic_load(&ctx.shutdown_requests), 1);
    ASSERT_EQ(recv_line(fd, buf, sizeof(buf), IO_TIMEOUT), 4);
    ASSERT_STR_EQ(buf, "one\n");
    ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
    close(fd);

    /* Timed out again afterwards: the served request left no state. */
    ASSERT_EQ(uvs_server_handle_request(server), 4242);
    ASSERT_EQ(atomic_load(&ctx.timeouts), 2);
    ASSERT_EQ(atomic_load(&ctx.errors), 0);
    ASSERT_OK(uvs_server_close(server, NULL));
    ctx_destroy(&ctx);
  }
}


/* ---- ErrorHandlerTest ------------------------------------------------ */

/* How the error case drives the server. */
typedef enum {
  DRIVE_HANDLE_REQUEST, /* client connects and closes, handle_request */
  DRIVE_SERVE_FOREVER   /* serve_forever here, client on a pthread */
} drive_t;

/* CPython's BaseErrorTestServer: a client connects and closes at once,
 * the server serves that one request, then closes. Returns what
 * handle_request or serve_forever returned; the context's log has a
 * letter per step: S setup, H handle, F finish, E handle_error, R
 * shutdown_request. */
static int run_error_case(ctx_t* ctx,
                          uvs_mode_t mode,
                          uvs_request_cb setup,
                          drive_t drive,
                          int* client_port) {
  uvs_config_t config = blocking_config(mode);
  uvs_handler_t handler = blocking_handler(fail_handle);
  uvs_server_t* server;
  client_thread_t c;
  int port;
  int r;
  int fd;

  handler.setup = setup;
  server = make_server(NULL, &handler, &config, ctx);
  port = test_server_port(server);
  if (drive == DRIVE_HANDLE_REQUEST) {
    fd = connect_client(port);
    *client_port = local_port(fd);
    close(fd);
    r = uvs_server_handle_request(server);
  } else {
    client_start(&c, port, NULL);
    r = uvs_server_serve_forever(server, 10);
    client_join(&c);
    *client_port = atomic_load(&c.local_port);
  }
  ASSERT_OK(uvs_server_close(server, NULL));
  return r;
}

/* test_sync_handled, test_threading_handled: a handler's error (Python's
 * ValueError) reaches handle_error once, with the request's peer, after
 * finish; shutdown_request still runs once; the server goes on (the call
 * returns 0). */
static void error_handled(void) {
  static const uvs_mode_t modes[] = { UVS_MODE_SYNC, UVS_MODE_THREADING };
  size_t m;

  for (m = 0; m < ARRAY_SIZE(modes); m++) {
    ctx_t ctx;
    int port;
    ctx_init(&ctx);
    ctx.handle_result = UV_EPROTO;
    ASSERT_OK(
        run_error_case(&ctx, modes[m], NULL, DRIVE_HANDLE_REQUEST, &port));
    ctx_log_equals(&ctx, "HFER");
    ASSERT_EQ(atomic_load(&ctx.errors), 1);
    ASSERT_EQ(atomic_load(&ctx.error_status), UV_EPROTO);
    ASSERT_EQ(atomic_load(&ctx.error_port), port);
    ASSERT_EQ(atomic_load(&ctx.error_had_conn), 1);
    ASSERT_EQ(atomic_load(&ctx.finished), 1);
    ASSERT_EQ(atomic_load(&ctx.shutdown_requests), 1);
    ctx_destroy(&ctx);
  }
}

/* test_sync_not_handled, test_threading_not_handled: UVS_ESTOP (Python's
 * SystemExit) does not reach handle_error; finish and shutdown_request
 * still run once; handle_request and serve_forever return UVS_ESTOP, in
 * both modes. */
static void estop_not_handled(void) {
  static const uvs_mode_t modes[] = { UVS_MODE_SYNC, UVS_MODE_THREADING };
  static const drive_t drives[] = { DRIVE_HANDLE_REQUEST, DRIVE_SERVE_FOREVER };
  size_t m;
  size_t d;

  for (m = 0; m < ARRAY_SIZE(modes); m++) {
    for (d = 0; d < ARRAY_SIZE(drives); d++) {
      ctx_t ctx;
      int port;
      ctx_init(&ctx);
      ctx.handle_result = UVS_ESTOP;
      ASSERT_ERR(run_error_case(&ctx, modes[m], NULL, drives[d], &port),
                 UVS_ESTOP);
      ctx_log_equals(&ctx, "HFR");
      ASSERT_EQ(atomic_load(&ctx.errors), 0);
      ASSERT_EQ(atomic_load(&ctx.finished), 1);
      ASSERT_EQ(atomic_load(&ctx.shutdown_requests), 1);
      ctx_destroy(&ctx);
    }
  }
}

/* setup fails: neither handle nor finish runs (socketserver's __init__
 * calls them only after setup returned); handle_error gets setup's error
 * and shutdown_request still runs. */
static void setup_fails(void) {
  static const uvs_mode_t modes[] = { UVS_MODE_SYNC, UVS_MODE_THREADING };
  size_t m;

  for (m = 0; m < ARRAY_SIZE(modes); m++) {
    ctx_t ctx;
    int port;
    ctx_init(&ctx);
    ctx.setup_result = UV_EACCES;
    ctx.handle_result = 0;
    ASSERT_OK(run_error_case(&ctx,
                             modes[m],
                             fail_setup,
                             DRIVE_HANDLE_REQUEST,
                             &port));
    ctx_log_equals(&ctx, "SER");
    ASSERT_EQ(atomic_load(&ctx.errors), 1);
    ASSERT_EQ(atomic_load(&ctx.error_status), UV_EACCES);
    ASSERT_EQ(atomic_load(&ctx.error_port), port);
    ASSERT_EQ(atomic_load(&ctx.finished), 0);
    ASSERT_EQ(atomic_load(&ctx.shutdown_requests), 1);
    ctx_destroy(&ctx);
  }
}


/* A handler's UVS_ESTOP that comes after serve_forever has returned
 * belongs to no call: the next handle_request, or the next serve_forever,
 * serves a request that returns 0 and returns 0 itself. */
static void late_estop_not_reported(void) {
  static const drive_t drives[] = { DRIVE_HANDLE_REQUEST, DRIVE_SERVE_FOREVER };
  size_t d;

  for (d = 0; d < ARRAY_SIZE(drives); d++) {
    uvs_config_t config = blocking_config(UVS_MODE_THREADING);
    uvs_handler_t handler = blocking_handler(late_estop_handle);
    uvs_server_t* server;
    serve_thread_t t;
    client_thread_t c;
    ctx_t ctx;
    int port;
    int fd;

    ctx_init(&ctx);
    server = make_server(NULL, &handler, &config, &ctx);
    port = test_server_port(server);
    serve_start(&t, server);
    fd = connect_client(port);
    WAIT_UNTIL(atomic_load(&ctx.entered) == 1, IO_TIMEOUT);
    ASSERT_OK(uvs_server_shutdown(server));
    ASSERT_OK(serve_join(&t));

    /* The handler returns UVS_ESTOP with nothing running; once its
     * worker is idle again, that has been reported. */
    atomic_store(&ctx.release, 1);
    WAIT_UNTIL(atomic_load(&ctx.finished) == 1, IO_TIMEOUT);
    WAIT_UNTIL(idle_workers(server) == 1, IO_TIMEOUT);
    close(fd);

    if (drives[d] == DRIVE_HANDLE_REQUEST) {
      client_start(&c, port, "after\n");
      ASSERT_OK(uvs_server_handle_request(server));
      client_join(&c);
    } else {
      serve_start(&t, server);
      one_request(port, "after\n");
      WAIT_UNTIL(atomic_load(&ctx.finished) == 2, IO_TIMEOUT);
      ASSERT_OK(uvs_server_shutdown(server));
      ASSERT_OK(serve_join(&t));
    }
    ASSERT_EQ(atomic_load(&ctx.finished), 2);
    ASSERT_EQ(atomic_load(&ctx.errors), 0);
    ASSERT_OK(uvs_server_close(server, NULL));
    ctx_destroy(&ctx);
  }
}


/* ---- Closing with handlers running ----------------------------------- */

/* Several clients connected and silent, their handlers blocked in
 * uvs_recv: server_close after shutdown returns promptly; each handler's
 * recv returned UV_ECANCELED and its finish ran; each client sees the
 * connection end. */
static void close_cancels_blocked_recv(void) {
  enum {
    N = 5
  };
  uvs_config_t config = blocking_config(UVS_MODE_THREADING);
  uvs_handler_t handler = blocking_handler(recv_then_sleep_handle);
  serve_thread_t t;
  uvs_server_t* server;
  uint64_t start;
  ctx_t ctx;
  int fds[N];
  int port;
  int i;

  ctx_init(&ctx);
  server = make_server(NULL, &handler, &config, &ctx);
  port = test_server_port(server);
  serve_start(&t, server);
  for (i = 0; i < N; i++)
    fds[i] = connect_client(port);
  WAIT_UNTIL(atomic_load(&ctx.entered) == N, IO_TIMEOUT);
  ASSERT_OK(uvs_server_shutdown(server));
  ASSERT_OK(serve_join(&t));
  ASSERT_EQ(atomic_load(&ctx.finished), 0);

  start = test_now_ms();
  ASSERT_OK(uvs_server_close(server, NULL));
  ASSERT_LT(test_now_ms() - start, 5000);
  ASSERT_EQ(atomic_load(&ctx.cancelled), N);
  ASSERT_EQ(atomic_load(&ctx.finished), N);
  ASSERT_EQ(atomic_load(&ctx.read_error), 0);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  ASSERT_EQ(atomic_load(&ctx.shutdown_requests), N);
  for (i = 0; i < N; i++) {
    ASSERT_EQ(test_wait_eof(fds[i], IO_TIMEOUT), 1);
    close(fds[i]);
  }
  ctx_destroy(&ctx);
}


/* The README's handler passes on the UV_ECANCELED its uvs_readline got
 * from a server close: that is the server's doing, not an error of the
 * request, so handle_error does not run. A handler that returns
 * UV_ECANCELED of its own accord (no close) still reaches it. */
static void close_cancel_not_an_error(void) {
  uvs_config_t config = blocking_config(UVS_MODE_THREADING);
  uvs_handler_t handler = blocking_handler(readme_handle);
  serve_thread_t t;
  uvs_server_t* server;
  ctx_t ctx;
  int port;
  int fd;

  ctx_init(&ctx);
  server = make_server(NULL, &handler, &config, &ctx);
  serve_start(&t, server);
  fd = connect_client(test_server_port(server));
  echo_check(fd, "hello\n");
  ASSERT_OK(uvs_server_shutdown(server));
  ASSERT_OK(serve_join(&t));
  ASSERT_OK(uvs_server_close(server, NULL));
  ASSERT_EQ(atomic_load(&ctx.left), 1);
  ASSERT_ERR(atomic_load(&ctx.handle_return), UV_ECANCELED);
  ASSERT_EQ(atomic_load(&ctx.finished), 1);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  ASSERT_EQ(atomic_load(&ctx.shutdown_requests), 1);
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  ctx_destroy(&ctx);

  ctx_init(&ctx);
  ctx.handle_result = UV_ECANCELED;
  ASSERT_OK(run_error_case(&ctx,
                           UVS_MODE_THREADING,
                           NULL,
                           DRIVE_HANDLE_REQUEST,
                           &port));
  ctx_log_equals(&ctx, "HFER");
  ASSERT_ERR(atomic_load(&ctx.error_status), UV_ECANCELED);
  ctx_destroy(&ctx);
}


/* One client, its handler blocked in uvs_recv; after the close fails that
 * recv, the handler works hold_ms longer. Returns how long server_close
 * took. */
static uint64_t close_with_busy_handler(ctx_t* ctx,
                                        int block_on_close,
                                        int daemon_threads,
                                        int* fd) {
  uvs_config_t config = blocking_config(UVS_MODE_THREADING);
  uvs_handler_t handler = blocking_handler(recv_then_sleep_handle);
  serve_thread_t t;
  uvs_server_t* server;
  uint64_t start;

  config.block_on_close = block_on_close;
  config.daemon_threads = daemon_threads;
  server = make_server(NULL, &handler, &config, ctx);
  serve_start(&t, server);
  *fd = connect_client(test_server_port(server));
  WAIT_UNTIL(atomic_load(&ctx->entered) == 1, IO_TIMEOUT);
  ASSERT_OK(uvs_server_shutdown(server));
  ASSERT_OK(serve_join(&t));
  start = test_now_ms();
  ASSERT_OK(uvs_server_close(server, NULL));
  return test_now_ms() - start;
}

/* block_on_close = 1 (the default): server_close waits for the handler,
 * whose finish has run when close returns (Python joins the thread). */
static void block_on_close_waits(void) {
  uint64_t elapsed;
  ctx_t ctx;
  int fd;

  ctx_init(&ctx);
  ctx.hold_ms = 300;
  elapsed = close_with_busy_handler(&ctx, 1, 0, &fd);
  ASSERT_EQ(atomic_load(&ctx.finished), 1);
  ASSERT_EQ(atomic_load(&ctx.cancelled), 1);
  ASSERT_GE(elapsed, 250);
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  ctx_destroy(&ctx);
}

/* block_on_close = 0, and daemon_threads = 1 with block_on_close = 1:
 * server_close returns while the handler still works; the handler then
 * finishes on its own without touching freed memory (ASan, TSan), and its
 * thread exits. The case waits for both before it ends. */
static void close_does_not_wait(void) {
  static const int modes[][2] = { { 0, 0 }, { 1, 1 } };
  size_t m;

  for (m = 0; m < ARRAY_SIZE(modes); m++) {
    uint64_t elapsed;
    ctx_t ctx;
    task_set_t base;
    int fd;

    ctx_init(&ctx);
    ctx.hold_ms = 2000;
    thread_baseline(&base);
    elapsed = close_with_busy_handler(&ctx, modes[m][0], modes[m][1], &fd);
    ASSERT_EQ(atomic_load(&ctx.finished), 0);
    ASSERT_LT(elapsed, 1500);
    ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
    close(fd);
    WAIT_UNTIL(atomic_load(&ctx.finished) == 1, IO_TIMEOUT);
    ASSERT_EQ(atomic_load(&ctx.cancelled), 1);
    /* The detached worker frees the connection and the server, then
     * exits: nothing of the case may outlive it. */
    WAIT_UNTIL(count_new_tasks(&base) == 0, IO_TIMEOUT);
    ASSERT_EQ(atomic_load(&ctx.errors), 0);
    ctx_destroy(&ctx);
  }
}


/* A client sends a byte and then resets the connection while its handler
 * works outside uvs; the test runs the loop until the loop has closed
 * the connection (all its handles) and returns with the handler still
 * held. */
static uvs_server_t* reset_under_busy_handler(uv_loop_t* loop,
                                              uvs_config_t* config,
                                              ctx_t* ctx) {
  uvs_handler_t handler = blocking_handler(reset_then_hold_handle);
  uvs_server_t* server;
  int fd;

  ASSERT_OK(uv_loop_init(loop));
  server = make_server(loop, &handler, config, ctx);
  ASSERT_OK(uvs_server_start(server));
  fd = connect_client(test_server_port(server));
  test_send_all(fd, "x", 1);
  RUN_UNTIL(loop, atomic_load(&ctx->entered) == 1, IO_TIMEOUT);
  ASSERT_GE(atomic_load(&ctx->fd_before), 0);
  reset_close(fd);
  RUN_UNTIL(loop,
            atomic_load(&ctx->reset_seen) == 1 && conns_loop_done(server),
            IO_TIMEOUT);
  ASSERT_ERR(atomic_load(&ctx->recv_result), UV_ECONNRESET);
  ASSERT_EQ(atomic_load(&ctx->left), 0);
  return server;
}

/* block_on_close = 0, and daemon_threads = 1: server_close does not wait
 * for a busy handler also when the loop had closed that handler's
 * connection already (the peer reset it). The handler is still held when
 * close returns; released, it finishes on its own and its thread exits. */
static void daemon_close_after_reset(void) {
  static const int modes[][2] = { { 0, 0 }, { 1, 1 } };
  size_t m;

  for (m = 0; m < ARRAY_SIZE(modes); m++) {
    uvs_config_t config = blocking_config(UVS_MODE_THREADING);
    uvs_server_t* server;
    uv_loop_t loop;
    ctx_t ctx;
    task_set_t base;

    ctx_init(&ctx);
    thread_baseline(&base);
    config.block_on_close = modes[m][0];
    config.daemon_threads = modes[m][1];
    server = reset_under_busy_handler(&loop, &config, &ctx);
    ASSERT_OK(uvs_server_close(server, NULL));
    ASSERT_EQ(atomic_load(&ctx.left), 0);
    atomic_store(&ctx.release, 1);
    WAIT_UNTIL(atomic_load(&ctx.finished) == 1, IO_TIMEOUT);
    WAIT_UNTIL(count_new_tasks(&base) == 0, IO_TIMEOUT);
    ASSERT_EQ(atomic_load(&ctx.errors), 0);
    test_loop_close(&loop);
    ctx_destroy(&ctx);
  }
}

/* Once the loop has closed a threading connection, uvs_conn_fileno in its
 * still-running handler returns UV_EBADF, never the old number, which a
 * socket opened meanwhile may have taken. */
static void fileno_after_reset(void) {
  uvs_config_t config = blocking_config(UVS_MODE_THREADING);
  uvs_server_t* server;
  uv_loop_t loop;
  ctx_t ctx;
  int other;

  ctx_init(&ctx);
  server = reset_under_busy_handler(&loop, &config, &ctx);
  other = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(other, 0);
  if (other == atomic_load(&ctx.fd_before))
    printf("# descriptor %d was reused meanwhile\n", other);
  atomic_store(&ctx.release, 1);
  RUN_UNTIL(&loop, atomic_load(&ctx.finished) == 1, IO_TIMEOUT);
  ASSERT_ERR(atomic_load(&ctx.fd_after), UV_EBADF);
  close(other);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
  ctx_destroy(&ctx);
}


/* uvs_server_shutdown from inside a handler, in threading mode (from a
 * worker: it returns once serve_forever has) and in sync mode (on the
 * loop thread: it returns at once and serve_forever follows): no
 * deadlock, the reply went out, and the server closes. */
static void shutdown_from_handler(void) {
  static const uvs_mode_t modes[] = { UVS_MODE_THREADING, UVS_MODE_SYNC };
  size_t m;

  for (m = 0; m < ARRAY_SIZE(modes); m++) {
    uvs_config_t config = blocking_config(modes[m]);
    uvs_handler_t handler = blocking_handler(shutdown_handle);
    serve_thread_t t;
    uvs_server_t* server;
    ctx_t ctx;
    int fd;

    ctx_init(&ctx);
    atomic_store(&ctx.shutdown_result, -1);
    server = make_server(NULL, &handler, &config, &ctx);
    serve_start(&t, server);
    fd = connect_client(test_server_port(server));
    echo_check(fd, "stop\n");
    ASSERT_OK(serve_join(&t));
    WAIT_UNTIL(atomic_load(&ctx.left) == 1, IO_TIMEOUT);
    ASSERT_EQ(atomic_load(&ctx.shutdown_result), 0);
    if (modes[m] == UVS_MODE_THREADING)
      ASSERT_EQ(atomic_load(&ctx.stopped_at_return), 1);
    ASSERT_OK(uvs_server_close(server, NULL));
    ASSERT_EQ(atomic_load(&ctx.finished), 1);
    ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
    close(fd);
    ASSERT_EQ(atomic_load(&ctx.errors), 0);
    ctx_destroy(&ctx);
  }
}


/* ---- Fan-out --------------------------------------------------------- */

#define FAN_MAX 10

/* What each client has received from each sender. */
typedef struct {
  int next[FAN_MAX][FAN_MAX]; /* [receiver][sender]: next line number */
  int lines[FAN_MAX];
  int sink; /* client index that never reads, or -1 */
} fan_check_t;

/* A fanned-out line is "SENDER SEQ padding\n": from another client, and
 * the next in that sender's order. */
static void fan_line(void* arg, int client, const char* line, size_t len) {
  fan_check_t* f = arg;
  int sender;
  int seq;

  ASSERT_GE(len, 4);
  ASSERT_EQ(sscanf(line, "%d %d", &sender, &seq), 2);
  ASSERT_TRUE(sender >= 0 && sender < FAN_MAX);
  ASSERT_NE(sender, client);
  ASSERT_NE(sender, f->sink);
  ASSERT_EQ(seq, f->next[client][sender]);
  f->next[client][sender]++;
  f->lines[client]++;
}

/* Formats client `i`'s line `seq`, `size` bytes with its '\n'. */
static size_t fan_format(char* buf, size_t size, int i, int seq) {
  int n = snprintf(buf, size, "%d %d ", i, seq);
  ASSERT_GT(n, 0);
  ASSERT_LT((size_t) n, size);
  memset(buf + n, 'x', size - 1 - (size_t) n);
  buf[size - 1] = '\n';
  return size;
}

/* Each handler reads lines and, from its worker thread, writes each to
 * every other connection with uvs_server_foreach + uvs_conn_write. 10
 * clients send 50 lines each: every client receives every other client's
 * lines, each sender's in order, and none of its own. */
static void fan_out(void) {
  enum {
    N = 10,
    LINES = 50
  };
  uvs_config_t config = blocking_config(UVS_MODE_THREADING);
  uvs_handler_t handler = blocking_handler(fanout_handle);
  static reader_t readers[N];
  static fan_check_t check;
  serve_thread_t t;
  uvs_server_t* server;
  uint64_t deadline;
  ctx_t ctx;
  int done;
  int port;
  int i;
  int k;

  ctx_init(&ctx);
  memset(&check, 0, sizeof(check));
  check.sink = -1;
  server = make_server(NULL, &handler, &config, &ctx);
  port = test_server_port(server);
  serve_start(&t, server);
  for (i = 0; i < N; i++) {
    memset(&readers[i], 0, sizeof(readers[i]));
    readers[i].fd = connect_client(port);
  }
  /* Everyone is a reader before anyone speaks. */
  WAIT_UNTIL(atomic_load(&ctx.entered) == N, IO_TIMEOUT);
  ASSERT_EQ(uvs_server_connection_count(server), N);
  for (k = 0; k < LINES; k++) {
    for (i = 0; i < N; i++) {
      char line[32];
      size_t len = fan_format(line, sizeof(line), i, k);
      test_send_all(readers[i].fd, line, len);
    }
  }
  deadline = test_now_ms() + IO_TIMEOUT;
  do {
    ASSERT_LT(test_now_ms(), deadline);
    readers_poll(readers, N, 100, fan_line, &check);
    done = 0;
    for (i = 0; i < N; i++)
      done += check.lines[i] == (N - 1) * LINES;
  } while (done < N);
  /* Nothing more arrives. */
  readers_poll(readers, N, 100, fan_line, &check);
  for (i = 0; i < N; i++) {
    ASSERT_EQ(check.lines[i], (N - 1) * LINES);
    for (k = 0; k < N; k++)
      ASSERT_EQ(check.next[i][k], k == i ? 0 : LINES);
  }
  for (i = 0; i < N; i++)
    close(readers[i].fd);
  WAIT_UNTIL(atomic_load(&ctx.finished) == N, IO_TIMEOUT);
  ASSERT_EQ(atomic_load(&ctx.write_errors), 0);
  ASSERT_EQ(atomic_load(&ctx.enobufs), 0);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  serve_stop_and_close(&t, server);
  ctx_destroy(&ctx);
}


/* Fan-out with max_write_queue = 64 KiB and one client that never reads:
 * while the others keep sending, that client's connection is reset (its
 * uvs_conn_write returns UV_ENOBUFS once, and foreach skips it from then
 * on), the others receive everything, and the connection count drops by
 * one. */
static void fan_out_slow_reader(void) {
  enum {
    ACTIVE = 3,
    LINES = 300,
    LINE_SIZE = 1000
  };
  uvs_config_t config = blocking_config(UVS_MODE_THREADING);
  uvs_handler_t handler = blocking_handler(fanout_handle);
  static reader_t readers[ACTIVE];
  static fan_check_t check;
  serve_thread_t t;
  uvs_server_t* server;
  uint64_t deadline;
  ctx_t ctx;
  int sink;
  int done;
  int port;
  int i;
  int k;

  ctx_init(&ctx);
  memset(&check, 0, sizeof(check));
  check.sink = ACTIVE;
  config.max_write_queue = 64 * 1024;
  ctx.sink = ACTIVE + 1; /* the connection id of the last client */
  server = make_server(NULL, &handler, &config, &ctx);
  port = test_server_port(server);
  serve_start(&t, server);
  for (i = 0; i < ACTIVE; i++) {
    memset(&readers[i], 0, sizeof(readers[i]));
    readers[i].fd = connect_client(port);
  }
  WAIT_UNTIL(atomic_load(&ctx.entered) == ACTIVE, IO_TIMEOUT);
  sink = connect_rcvbuf(port, 4096);
  WAIT_UNTIL(atomic_load(&ctx.entered) == ACTIVE + 1, IO_TIMEOUT);
  ASSERT_EQ(uvs_server_connection_count(server), ACTIVE + 1);

  /* One line per active client per round, in lockstep: a round ends when
   * every active client has received the others' lines. The readers
   * never fall behind by more than a round, so only the sink's output
   * grows. (Unpaced senders can outrun the loop thread: the cap counts
   * bytes the loop has not yet handed to the socket too.) */
  for (k = 0; k < LINES; k++) {
    for (i = 0; i < ACTIVE; i++) {
      char line[LINE_SIZE];
      size_t len = fan_format(line, sizeof(line), i, k);
      test_send_all(readers[i].fd, line, len);
    }
    deadline = test_now_ms() + IO_TIMEOUT;
    do {
      ASSERT_LT(test_now_ms(), deadline);
      readers_poll(readers, ACTIVE, 100, fan_line, &check);
      done = 0;
      for (i = 0; i < ACTIVE; i++)
        done += check.lines[i] == (ACTIVE - 1) * (k + 1);
    } while (done < ACTIVE);
  }
  for (i = 0; i < ACTIVE; i++) {
    for (k = 0; k < ACTIVE; k++)
      ASSERT_EQ(check.next[i][k], k == i ? 0 : LINES);
  }

  ASSERT_EQ(atomic_load(&ctx.enobufs), 1);
  ASSERT_EQ(atomic_load(&ctx.enobufs_id), ctx.sink);
  ASSERT_EQ(atomic_load(&ctx.write_errors), 0);
  WAIT_UNTIL(uvs_server_connection_count(server) == ACTIVE, IO_TIMEOUT);
  ASSERT_EQ(test_wait_eof(sink, IO_TIMEOUT), 1);
  close(sink);
  if (atomic_load(&ctx.read_error) != 0) {
    printf("# the cut-off handler's readline returned %s\n",
           uvs_err_name(atomic_load(&ctx.read_error)));
  }
  for (i = 0; i < ACTIVE; i++)
    close(readers[i].fd);
  WAIT_UNTIL(atomic_load(&ctx.finished) == ACTIVE + 1, IO_TIMEOUT);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  serve_stop_and_close(&t, server);
  ctx_destroy(&ctx);
}


static void count_visit(uvs_conn_t* conn, void* arg) {
  (*(int*) arg)++;
}

/* Once its handler has returned, a connection is closing (its FIN sent,
 * lingering for the peer's): uvs_server_foreach no longer visits it, and a
 * uvs_conn_write to it returns UV_EPIPE instead of accepting bytes that
 * will never go out. The test thread runs the loop, so the connection,
 * still counted, cannot be freed while the test holds it. */
static void foreach_skips_finished(void) {
  uvs_config_t config = blocking_config(UVS_MODE_THREADING);
  uvs_handler_t handler = blocking_handler(stash_handle);
  uvs_server_t* server;
  uvs_conn_t* conn;
  uv_loop_t loop;
  char buf[16];
  int visited = 0;
  ctx_t ctx;
  int fd;

  ctx_init(&ctx);
  config.close_linger_ms = 4 * IO_TIMEOUT;
  ASSERT_OK(uv_loop_init(&loop));
  server = make_server(&loop, &handler, &config, &ctx);
  ASSERT_OK(uvs_server_start(server));
  fd = connect_client(test_server_port(server));
  RUN_UNTIL(&loop, atomic_load(&ctx.shutdown_requests) == 1, IO_TIMEOUT);
  ASSERT_EQ(atomic_load(&ctx.finished), 1);
  ASSERT_EQ(uvs_server_connection_count(server), 1);
  conn = atomic_load(&ctx.conn);
  ASSERT_EQ(uvs_server_foreach(server, count_visit, &visited), 0);
  ASSERT_EQ(visited, 0);
  ASSERT_ERR(uvs_conn_write(conn, "late\n", 5), UV_EPIPE);

  RUN_UNTIL(&loop, readable_within(fd, 0), IO_TIMEOUT);
  ASSERT_EQ(recv(fd, buf, sizeof(buf), 0), 0);
  close(fd);
  RUN_UNTIL(&loop, uvs_server_connection_count(server) == 0, IO_TIMEOUT);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
  ctx_destroy(&ctx);
}


/* Threading, max_write_queue = 1, a client that never reads: a
 * uvs_conn_write past the cap posts the cut-off (SO_LINGER 0, then
 * close) to the loop; the server closes the connection before the loop
 * runs that. By then a socket opened meanwhile may have the connection's
 * old descriptor number, and the late cut-off must leave it alone. The
 * test thread runs the loop, so the order is fixed. */
static void over_cap_after_close(void) {
  uvs_config_t config = blocking_config(UVS_MODE_THREADING);
  uvs_handler_t handler = blocking_handler(sendall_big_handle);
  uvs_server_t* server;
  struct linger lg;
  socklen_t len = sizeof(lg);
  uvs_conn_t* conn;
  uv_loop_t loop;
  ctx_t ctx;
  int victim = -1;
  int conn_fd;
  int fd;

  ctx_init(&ctx);
  config.max_write_queue = 1;
  ASSERT_OK(uv_loop_init(&loop));
  server = make_server(&loop, &handler, &config, &ctx);
  ASSERT_OK(uvs_server_start(server));
  fd = connect_rcvbuf(test_server_port(server), 4096);
  RUN_UNTIL(&loop,
            atomic_load(&ctx.conn) != NULL &&
                conn_inflight(atomic_load(&ctx.conn)) > 0,
            IO_TIMEOUT);
  conn = atomic_load(&ctx.conn);
  conn_fd = uvs_conn_fileno(conn);
  ASSERT_GE(conn_fd, 0);
  ASSERT_ERR(uvs_conn_write(conn, "x", 1), UV_ENOBUFS);

  ASSERT_OK(uvs_server_close(server, record_server_closed));
  /* The close has closed the descriptor (or it is still open, and nothing
   * can have its number): a new socket takes the number. */
  if (fcntl(conn_fd, F_GETFD) == -1 && errno == EBADF) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(s, 0);
    victim = dup2(s, conn_fd);
    ASSERT_EQ(victim, conn_fd);
    close(s);
  } else {
    printf("# descriptor %d is still open after close\n", conn_fd);
  }
  ASSERT_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ASSERT_EQ(atomic_load(&ctx.server_closed), 1);
  if (victim >= 0) {
    ASSERT_OK(getsockopt(victim, SOL_SOCKET, SO_LINGER, &lg, &len));
    ASSERT_EQ(lg.l_onoff, 0);
    close(victim);
  }
  ASSERT_EQ(atomic_load(&ctx.cancelled), 1);
  ASSERT_EQ(atomic_load(&ctx.finished), 1);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  test_loop_close(&loop);
  ctx_destroy(&ctx);
}


/* ---- Event mode's write cap ------------------------------------------ */

#define EVENT_CAP   ((size_t) 64 * 1024)
#define EVENT_CHUNK ((size_t) 8 * 1024)

/* Connection 1 never reads: writes up to the cap succeed, the one past it
 * returns UV_ENOBUFS, and the connection is then closed (UV_EPIPE for a
 * further write). Connection 2 reads: its writes fill the queue to exactly
 * the cap and nothing happens. */
static void cap_on_open(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  uint64_t id = uvs_conn_id(conn);
  static char chunk[EVENT_CHUNK];
  size_t total = 0;
  int i;

  ASSERT_TRUE(id == 1 || id == 2);
  memset(chunk, 'a' + (int) id, sizeof(chunk));
  for (i = 0; i < 4096; i++) {
    if (uvs_conn_write_queue_size(conn) + EVENT_CHUNK > EVENT_CAP)
      break;
    ASSERT_OK(uvs_conn_write(conn, chunk, EVENT_CHUNK));
    total += EVENT_CHUNK;
  }
  ASSERT_GT(uvs_conn_write_queue_size(conn), EVENT_CAP - EVENT_CHUNK);
  ASSERT_LE(uvs_conn_write_queue_size(conn), EVENT_CAP);
  if (id == 1) {
    ASSERT_ERR(uvs_conn_write(conn, chunk, EVENT_CHUNK), UV_ENOBUFS);
    ASSERT_ERR(uvs_conn_write(conn, chunk, 1), UV_EPIPE);
  } else {
    size_t room = EVENT_CAP - uvs_conn_write_queue_size(conn);
    if (room > 0)
      ASSERT_OK(uvs_conn_write(conn, chunk, room));
    total += room;
    ASSERT_EQ(uvs_conn_write_queue_size(conn), EVENT_CAP);
  }
  atomic_store(&ctx->written[id], total);
  atomic_fetch_add(&ctx->opened, 1);
}

static void cap_on_close(uvs_conn_t* conn, int status) {
  ctx_t* ctx = ctx_of(conn);
  atomic_store(&ctx->close_status[uvs_conn_id(conn)], status);
  atomic_fetch_add(&ctx->closed, 1);
}

/* Runs `loop` until `*flag` reaches `value`. */
static void run_until(uv_loop_t* loop, atomic_int* flag, int value) {
  uint64_t deadline = test_now_ms() + IO_TIMEOUT;
  while (atomic_load(flag) < value) {
    if (test_now_ms() >= deadline)
      TEST__FAIL("waited for %d, have %d", value, atomic_load(flag));
    uv_run(loop, UV_RUN_NOWAIT);
    usleep(500);
  }
}

/* Event mode with max_write_queue: a uvs_conn_write past the cap returns
 * UV_ENOBUFS and the connection's on_close gets UV_ENOBUFS; the peer is
 * reset. Below the cap (up to exactly it) nothing happens: the reading
 * peer gets every byte and the close is orderly. */
static void event_max_write_queue(void) {
  uvs_config_t config = blocking_config(UVS_MODE_EVENT);
  uvs_handler_t handler;
  uvs_server_t* server;
  unsigned long long received = 0;
  uint64_t deadline;
  uv_loop_t loop;
  ctx_t ctx;
  int sink;
  int fd;

  ctx_init(&ctx);
  memset(&handler, 0, sizeof(handler));
  handler.state_size = sizeof(ctx_t*);
  handler.on_open = cap_on_open;
  handler.on_close = cap_on_close;
  config.max_write_queue = EVENT_CAP;
  ASSERT_OK(uv_loop_init(&loop));
  server = make_server(&loop, &handler, &config, &ctx);
  ASSERT_OK(uvs_server_start(server));

  sink = connect_rcvbuf(test_server_port(server), 4096);
  run_until(&loop, &ctx.closed, 1);
  ASSERT_EQ(atomic_load(&ctx.opened), 1);
  ASSERT_EQ(atomic_load(&ctx.close_status[1]), UV_ENOBUFS);
  ASSERT_EQ(test_wait_eof(sink, IO_TIMEOUT), 1);
  close(sink);

  fd = connect_client(test_server_port(server));
  run_until(&loop, &ctx.opened, 2);
  ASSERT_EQ(atomic_load(&ctx.closed), 1);
  deadline = test_now_ms() + IO_TIMEOUT;
  while (received < atomic_load(&ctx.written[2])) {
    char buf[65536];
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      ssize_t j;
      for (j = 0; j < n; j++)
        ASSERT_EQ(buf[j], 'a' + 2);
      received += (unsigned long long) n;
    }
    ASSERT_LT(test_now_ms(), deadline);
    uv_run(&loop, UV_RUN_NOWAIT);
    if (n <= 0)
      usleep(500);
  }
  ASSERT_EQ(received, atomic_load(&ctx.written[2]));
  ASSERT_GE(received, EVENT_CAP);
  ASSERT_OK(shutdown(fd, SHUT_WR));
  run_until(&loop, &ctx.closed, 2);
  ASSERT_EQ(atomic_load(&ctx.close_status[2]), 0);
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
  ctx_destroy(&ctx);
}


static void count_free(void* data, void* arg) {
  ctx_t* ctx = arg;
  atomic_fetch_add(&ctx->frees, 1);
}

/* A nocopy write is not capped, and a large one takes the queue past
 * max_write_queue; the next copying write must still see the cap (not
 * wrap around it): UV_ENOBUFS, then UV_EPIPE. The nocopy buffer is
 * released once, and on_close gets UV_ENOBUFS. */
static void nocopy_on_open(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);

  ASSERT_OK(uvs_conn_write_nocopy(conn, big, BIG_SIZE, count_free, ctx));
  ASSERT_GT(uvs_conn_write_queue_size(conn), EVENT_CAP);
  ASSERT_ERR(uvs_conn_write(conn, big, EVENT_CHUNK), UV_ENOBUFS);
  ASSERT_ERR(uvs_conn_write(conn, big, 1), UV_EPIPE);
  atomic_fetch_add(&ctx->opened, 1);
}

static void event_cap_after_nocopy(void) {
  uvs_config_t config = blocking_config(UVS_MODE_EVENT);
  uvs_handler_t handler;
  uvs_server_t* server;
  uv_loop_t loop;
  ctx_t ctx;
  int fd;

  ctx_init(&ctx);
  memset(&handler, 0, sizeof(handler));
  handler.state_size = sizeof(ctx_t*);
  handler.on_open = nocopy_on_open;
  handler.on_close = cap_on_close;
  config.max_write_queue = EVENT_CAP;
  ASSERT_OK(uv_loop_init(&loop));
  server = make_server(&loop, &handler, &config, &ctx);
  ASSERT_OK(uvs_server_start(server));
  fd = connect_rcvbuf(test_server_port(server), 4096);
  run_until(&loop, &ctx.closed, 1);
  ASSERT_EQ(atomic_load(&ctx.opened), 1);
  ASSERT_ERR(atomic_load(&ctx.close_status[1]), UV_ENOBUFS);
  ASSERT_EQ(atomic_load(&ctx.frees), 1);
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
  ctx_destroy(&ctx);
}


static void count_open(uvs_conn_t* conn) {
  atomic_fetch_add(&ctx_of(conn)->opened, 1);
}

static void close_each(uvs_conn_t* conn, void* arg) {
  ASSERT_OK(uvs_conn_close(conn));
}

/* Event mode: a uvs_server_foreach callback closes its connection, and
 * the shutdown_request hook that runs asks for the connection count: the
 * same thread takes the connection lock again, which must not deadlock
 * (a deadlock here ends the case at its timeout). */
static void foreach_close_hook_counts(void) {
  uvs_config_t config = blocking_config(UVS_MODE_EVENT);
  uvs_handler_t handler;
  uvs_server_t* server;
  uv_loop_t loop;
  ctx_t ctx;
  int fd;

  ctx_init(&ctx);
  atomic_store(&ctx.hook_count, -1);
  memset(&handler, 0, sizeof(handler));
  handler.state_size = sizeof(ctx_t*);
  handler.on_open = count_open;
  handler.on_close = cap_on_close;
  config.hooks.shutdown_request = count_in_shutdown_request;
  ASSERT_OK(uv_loop_init(&loop));
  server = make_server(&loop, &handler, &config, &ctx);
  ASSERT_OK(uvs_server_start(server));
  fd = connect_client(test_server_port(server));
  run_until(&loop, &ctx.opened, 1);
  ASSERT_EQ(uvs_server_foreach(server, close_each, NULL), 1);
  run_until(&loop, &ctx.shutdown_requests, 1);
  ASSERT_EQ(atomic_load(&ctx.hook_count), 1);
  RUN_UNTIL(&loop, readable_within(fd, 0), IO_TIMEOUT);
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  run_until(&loop, &ctx.closed, 1);
  ASSERT_EQ(atomic_load(&ctx.close_status[1]), 0);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
  ctx_destroy(&ctx);
}


/* ---- Embedding ------------------------------------------------------- */

static atomic_int async_closed;
static atomic_int finished_at_close;

static void on_async_closed(uvs_server_t* server) {
  ctx_t* ctx = uvs_server_get_data(server);
  atomic_store(&finished_at_close, atomic_load(&ctx->finished));
  atomic_fetch_add(&async_closed, 1);
}

/* uvs_server_close(server, cb) on the caller's loop with a worker still
 * running: it returns at once; the callback runs only after the handler
 * has returned (block_on_close); the loop then has nothing open. */
static void async_close_waits_for_worker(void) {
  uvs_config_t config = blocking_config(UVS_MODE_THREADING);
  uvs_handler_t handler = blocking_handler(recv_then_sleep_handle);
  uvs_server_t* server;
  uv_loop_t loop;
  ctx_t ctx;
  int fd;

  ctx_init(&ctx);
  ctx.hold_ms = 200;
  atomic_store(&async_closed, 0);
  atomic_store(&finished_at_close, -1);
  ASSERT_OK(uv_loop_init(&loop));
  server = make_server(&loop, &handler, &config, &ctx);
  ASSERT_OK(uvs_server_start(server));
  fd = connect_client(test_server_port(server));
  run_until(&loop, &ctx.entered, 1);

  ASSERT_OK(uvs_server_close(server, on_async_closed));
  ASSERT_EQ(atomic_load(&async_closed), 0);
  ASSERT_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ASSERT_EQ(atomic_load(&async_closed), 1);
  ASSERT_EQ(atomic_load(&finished_at_close), 1);
  ASSERT_EQ(atomic_load(&ctx.cancelled), 1);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  test_loop_close(&loop);
  ctx_destroy(&ctx);
}


/* Two threading servers on one uv_loop_t share its mailbox: A runs
 * serve_forever, B was started on the same loop; both serve. A's
 * service_actions then closes B (on the loop thread, while B's handler is
 * blocked reading); A keeps serving, also after serve_forever is run
 * again. */
static void two_servers_one_loop(void) {
  uvs_config_t config_a = blocking_config(UVS_MODE_THREADING);
  uvs_config_t config_b = blocking_config(UVS_MODE_THREADING);
  uvs_handler_t handler = blocking_handler(echo_handle);
  uvs_server_t* a;
  uvs_server_t* b;
  serve_thread_t t;
  uv_loop_t loop;
  ctx_t ctx_a;
  ctx_t ctx_b;
  int port_a;
  int port_b;
  int fd_a;
  int fd_b;
  int i;

  ctx_init(&ctx_a);
  ctx_init(&ctx_b);
  config_a.hooks.service_actions = close_other;
  ASSERT_OK(uv_loop_init(&loop));
  a = make_server(&loop, &handler, &config_a, &ctx_a);
  b = make_server(&loop, &handler, &config_b, &ctx_b);
  ASSERT_PTR_EQ(a->mailbox, b->mailbox);
  ctx_a.other = b;
  port_a = test_server_port(a);
  port_b = test_server_port(b);
  ASSERT_OK(uvs_server_start(b));
  serve_start(&t, a);

  fd_a = connect_client(port_a);
  fd_b = connect_client(port_b);
  echo_check(fd_a, "to a\n");
  echo_check(fd_b, "to b\n");
  echo_check(fd_a, "to a again\n");
  for (i = 0; i < 3; i++)
    echo_and_close(port_b, "b\n");

  /* Close B from A's loop thread, with B's first handler still reading
   * (and only it: the other three have seen their EOF). */
  WAIT_UNTIL(atomic_load(&ctx_b.finished) == 3, IO_TIMEOUT);
  atomic_store(&ctx_a.close_other, 1);
  WAIT_UNTIL(atomic_load(&ctx_b.other_closed) == 1, IO_TIMEOUT);
  ASSERT_EQ(test_wait_eof(fd_b, IO_TIMEOUT), 1);
  close(fd_b);
  ASSERT_EQ(atomic_load(&ctx_b.finished), 4);
  ASSERT_EQ(atomic_load(&ctx_b.cancelled), 1);
  ASSERT_ERR(try_connect(port_b), -ECONNREFUSED);

  echo_check(fd_a, "a after b\n");
  for (i = 0; i < 3; i++)
    echo_and_close(port_a, "a\n");
  ASSERT_OK(uvs_server_shutdown(a));
  ASSERT_OK(serve_join(&t));

  /* serve_forever again: the mailbox B left still serves A. */
  serve_start(&t, a);
  echo_check(fd_a, "a once more\n");
  echo_and_close(port_a, "a\n");
  close(fd_a);
  WAIT_UNTIL(atomic_load(&ctx_a.finished) == 5, IO_TIMEOUT);
  ASSERT_OK(uvs_server_shutdown(a));
  ASSERT_OK(serve_join(&t));
  ASSERT_OK(uvs_server_close(a, NULL));
  ASSERT_EQ(atomic_load(&ctx_a.errors), 0);
  ASSERT_EQ(atomic_load(&ctx_b.errors), 0);
  test_loop_close(&loop);
  ctx_destroy(&ctx_a);
  ctx_destroy(&ctx_b);
}


static const test_case_t cases[] = {
  { "many_clients", many_clients },
  { "accept_out_of_memory", accept_out_of_memory },
  { "max_threads_fifo", max_threads_fifo },
  { "elastic_pool", elastic_pool },
  { "idle_worker_kept", idle_worker_kept },
  { "bookkeeping_bounded", bookkeeping_bounded },
  { "threads_reaped", threads_reaped },
  { "sync_serializes", sync_serializes },
  { "sync_close_from_handler", sync_close_from_handler },
  { "handle_request_timeout", handle_request_timeout },
  { "error_handled", error_handled },
  { "estop_not_handled", estop_not_handled },
  { "setup_fails", setup_fails },
  { "late_estop_not_reported", late_estop_not_reported },
  { "close_cancels_blocked_recv", close_cancels_blocked_recv },
  { "close_cancel_not_an_error", close_cancel_not_an_error },
  { "block_on_close_waits", block_on_close_waits },
  { "close_does_not_wait", close_does_not_wait },
  { "daemon_close_after_reset", daemon_close_after_reset },
  { "fileno_after_reset", fileno_after_reset },
  { "shutdown_from_handler", shutdown_from_handler },
  { "fan_out", fan_out },
  { "fan_out_slow_reader", fan_out_slow_reader },
  { "foreach_skips_finished", foreach_skips_finished },
  { "over_cap_after_close", over_cap_after_close },
  { "event_max_write_queue", event_max_write_queue },
  { "event_cap_after_nocopy", event_cap_after_nocopy },
  { "foreach_close_hook_counts", foreach_close_hook_counts },
  { "async_close_waits_for_worker", async_close_waits_for_worker },
  { "two_servers_one_loop", two_servers_one_loop },
};

TEST_MAIN(cases)
