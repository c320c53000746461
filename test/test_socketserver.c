/* SPDX-License-Identifier: MIT */
/*
 * CPython's Lib/test/test_socketserver.py, ported to what uvs serves today:
 * TCP in event, sync and threading mode (socketserver-reference.md section
 * 3). Each case names the Python test it ports and its bpo. The handler is
 * the test suite's MyHandler, a StreamRequestHandler that echoes one line:
 * in the blocking modes literally (uvs_readline, uvs_write); in event mode
 * on_data gathers bytes in the per-connection state until a '\n', writes
 * the line back and closes gracefully.
 *
 * Threads: serve_forever runs on a pthread (Python's daemon thread) while
 * the test thread plays the client, or on the test thread itself when a
 * case is about calling shutdown from inside the loop. handle_request and
 * the cases that run the loop by hand use the test thread only; their
 * clients connect first and wait in the listen backlog. Every client
 * operation has a timeout; the harness alarm catches a hang, and its
 * descriptor count proves each case closed everything it opened.
 */
#include "test.h"

#include <stdatomic.h>

#define TEST_STR     "hello world\n"
#define TEST_STR_LEN (sizeof(TEST_STR) - 1)
#define IO_TIMEOUT   5000 /* ms; every client read is bounded by this */
#define LINE_MAX_LEN 256


/* ---- Fixtures -------------------------------------------------------- */

/* What the cases observe, hung on the server with uvs_server_set_data.
 * Fields touched by the loop while another thread reads them are atomic. */
typedef struct {
  atomic_int service_actions;
  atomic_int lines;
  int shutdown_on_line; /* on_data calls uvs_server_shutdown */
  int verify_result;    /* returned by verify_request */
  int shutdown_requests;
  int timeouts;
  int timeout_result; /* returned by handle_timeout */
  int errors;
  int error_status;
  int error_had_conn;
  char error_peer[UVS_ADDRSTRLEN];
  int opened;
  int closed;
  int close_status;
  size_t queued_at_open;
} ctx_t;

/* MyHandler's state: the line read so far. */
typedef struct {
  size_t len;
  char line[LINE_MAX_LEN];
} echo_state_t;


static ctx_t* ctx_of(uvs_server_t* server) {
  return uvs_server_get_data(server);
}


/* MyHandler.handle: line = rfile.readline(); wfile.write(line). */
static void echo_on_data(uvs_conn_t* conn, const char* data, size_t len) {
  echo_state_t* st = uvs_conn_state(conn);
  uvs_server_t* server = uvs_conn_server(conn);
  ctx_t* ctx = ctx_of(server);
  const char* nl = memchr(data, '\n', len);
  size_t take = nl != NULL ? (size_t) (nl - data) + 1 : len;

  if (st->len + take > sizeof(st->line)) {
    uvs_conn_abort(conn);
    return;
  }
  memcpy(st->line + st->len, data, take);
  st->len += take;
  if (nl == NULL)
    return;
  ASSERT_OK(uvs_conn_write(conn, st->line, st->len));
  ASSERT_OK(uvs_conn_close(conn));
  if (ctx != NULL) {
    atomic_fetch_add(&ctx->lines, 1);
    if (ctx->shutdown_on_line)
      ASSERT_OK(uvs_server_shutdown(server));
  }
}


static uvs_handler_t echo_handler(void) {
  uvs_handler_t handler;
  memset(&handler, 0, sizeof(handler));
  handler.state_size = sizeof(echo_state_t);
  handler.on_data = echo_on_data;
  return handler;
}


/* make_server: an echo server on an ephemeral loopback port, on a loop of
 * its own. */
static uvs_server_t* make_server(const uvs_config_t* config, ctx_t* ctx) {
  uvs_handler_t handler = echo_handler();
  uvs_server_t* server = NULL;
  ASSERT_OK(
      uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, config));
  ASSERT_NOT_NULL(server);
  if (ctx != NULL)
    uvs_server_set_data(server, ctx);
  return server;
}


/* serve_forever on a pthread (run_server's daemon thread). */
typedef struct {
  pthread_t thread;
  uvs_server_t* server;
  uint64_t poll_interval_ms;
  int result;
} serve_thread_t;

static void* serve_main(void* arg) {
  serve_thread_t* t = arg;
  t->result = uvs_server_serve_forever(t->server, t->poll_interval_ms);
  return NULL;
}

static void serve_start(serve_thread_t* t,
                        uvs_server_t* server,
                        uint64_t poll_interval_ms) {
  t->server = server;
  t->poll_interval_ms = poll_interval_ms;
  t->result = -12345;
  ASSERT_OK(pthread_create(&t->thread, NULL, serve_main, t));
}

/* Joins the thread and returns serve_forever's result. */
static int serve_join(serve_thread_t* t) {
  ASSERT_OK(pthread_join(t->thread, NULL));
  return t->result;
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


/* receive() as the Python suite does it: 100 bytes at a time until a
 * '\n' or EOF, all within `timeout_ms`. Returns the bytes read, which it
 * NUL-terminates in `buf`. */
static size_t recv_line(int fd, char* buf, size_t cap, int timeout_ms) {
  uint64_t deadline = test_now_ms() + (uint64_t) timeout_ms;
  size_t got = 0;

  while (got + 1 < cap && memchr(buf, '\n', got) == NULL) {
    struct pollfd pfd = { fd, POLLIN, 0 };
    size_t want = cap - 1 - got < 100 ? cap - 1 - got : 100;
    uint64_t now = test_now_ms();
    ssize_t n;

    if (now >= deadline)
      break;
    if (poll(&pfd, 1, (int) (deadline - now)) <= 0)
      continue;
    n = recv(fd, buf + got, want, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    got += (size_t) n;
  }
  buf[got] = '\0';
  return got;
}


/* stream_examine: connect, send TEST_STR, read the echo back. */
static void stream_examine(int port) {
  char buf[LINE_MAX_LEN];
  int fd = test_connect("127.0.0.1", port);
  test_send_all(fd, TEST_STR, TEST_STR_LEN);
  ASSERT_EQ(recv_line(fd, buf, sizeof(buf), IO_TIMEOUT), TEST_STR_LEN);
  ASSERT_STR_EQ(buf, TEST_STR);
  close(fd);
}


/* Runs the server's loop on this thread until *flag is set, failing after
 * `timeout_ms`. A repeating timer bounds each uv_run. */
static void on_tick(uv_timer_t* timer) {
  (void) timer;
}

static void run_until(uvs_server_t* server, const int* flag, int timeout_ms) {
  uv_loop_t* loop = uvs_server_loop(server);
  uint64_t deadline = test_now_ms() + (uint64_t) timeout_ms;
  uv_timer_t tick;

  ASSERT_OK(uv_timer_init(loop, &tick));
  ASSERT_OK(uv_timer_start(&tick, on_tick, 10, 10));
  while (!*flag) {
    if (test_now_ms() >= deadline)
      TEST__FAIL("run_until: no event within %d ms", timeout_ms);
    uv_run(loop, UV_RUN_ONCE);
  }
  uv_close((uv_handle_t*) &tick, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}


/* MyHandler for the blocking modes: line = rfile.readline();
 * wfile.write(line). */
static int blocking_echo_handle(uvs_conn_t* conn) {
  char line[LINE_MAX_LEN];
  ssize_t n = uvs_readline(conn, line, sizeof(line));
  if (n < 0)
    return (int) n;
  return uvs_write(conn, line, (size_t) n);
}


static uvs_server_t* make_blocking_server(uvs_mode_t mode) {
  uvs_handler_t handler;
  uvs_config_t config;
  uvs_server_t* server = NULL;

  memset(&handler, 0, sizeof(handler));
  handler.handle = blocking_echo_handle;
  uvs_config_init(&config);
  config.mode = mode;
  ASSERT_OK(
      uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, &config));
  return server;
}


/* ---- SocketServerTest ------------------------------------------------ */

/* test_TCPServer, through run_server: serve_forever(poll_interval=0.01) on
 * a thread, stream_examine three times, shutdown, join, server_close, and
 * the listening socket is gone (Python: fileno() == -1). */
static void tcp_server(void) {
  serve_thread_t t;
  uvs_server_t* server = make_server(NULL, NULL);
  int port = test_server_port(server);
  int i;

  ASSERT_GT(port, 0);
  serve_start(&t, server, 10);
  for (i = 0; i < 3; i++)
    stream_examine(port);
  ASSERT_OK(uvs_server_shutdown(server));
  ASSERT_OK(serve_join(&t));
  ASSERT_OK(uvs_server_close(server, NULL));
  ASSERT_ERR(try_connect(port), -ECONNREFUSED);
}


/* run_server with a blocking StreamRequestHandler: test_TCPServer proper
 * (sync mode, socketserver's plain TCPServer) and test_ThreadingTCPServer
 * (threading mode; the harness checks nothing is left behind, Python's
 * reap_threads: close joins every worker). */
static void run_blocking_server(uvs_mode_t mode) {
  serve_thread_t t;
  uvs_server_t* server = make_blocking_server(mode);
  int port = test_server_port(server);
  int fd;
  int i;

  serve_start(&t, server, 10);
  for (i = 0; i < 3; i++)
    stream_examine(port);
  ASSERT_OK(uvs_server_shutdown(server));
  ASSERT_OK(serve_join(&t));
  fd = uvs_server_fileno(server);
  ASSERT_GE(fd, 0);
  ASSERT_OK(uvs_server_close(server, NULL));
  ASSERT_ERR(try_connect(port), -ECONNREFUSED);
}

static void tcp_server_sync(void) {
  run_blocking_server(UVS_MODE_SYNC);
}

static void threading_tcp_server(void) {
  run_blocking_server(UVS_MODE_THREADING);
}


/* test_shutdown (bpo-2302): shutdown always makes serve_forever return,
 * even when it runs before the thread has entered serve_forever. */
static void shutdown_20_servers(void) {
  enum {
    N = 20
  };
  uvs_server_t* servers[N];
  serve_thread_t threads[N];
  int i;

  for (i = 0; i < N; i++)
    servers[i] = make_server(NULL, NULL);
  for (i = 0; i < N; i++) {
    serve_start(&threads[i], servers[i], 10);
    ASSERT_OK(uvs_server_shutdown(servers[i]));
  }
  for (i = 0; i < N; i++) {
    ASSERT_OK(serve_join(&threads[i]));
    ASSERT_OK(uvs_server_close(servers[i], NULL));
  }
}


/* test_close_immediately: server_close with no request ever served, on an
 * owned loop and on the caller's loop. */
static void close_immediately(void) {
  uvs_handler_t handler = echo_handler();
  uvs_server_t* server = NULL;
  uv_loop_t loop;

  ASSERT_OK(uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, NULL));
  ASSERT_OK(uvs_server_close(server, NULL));

  ASSERT_OK(uv_loop_init(&loop));
  ASSERT_OK(
      uvs_server_new(&loop, &server, "tcp://127.0.0.1:0", &handler, NULL));
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
}


/* test_tcpserver_bind_leak (bpo-22435): a constructor that fails to bind
 * closes its socket, so a thousand failures exhaust nothing. Python binds
 * port -1; here a port in use fails the bind itself (with and without
 * SO_REUSEADDR: a live listener conflicts either way on Linux), and an
 * invalid port fails before any socket exists. */
static void bind_leak(void) {
  uvs_handler_t handler = echo_handler();
  uvs_server_t* holder = make_server(NULL, NULL);
  uvs_server_t* server;
  uvs_config_t config;
  char address[64];
  int before = test_count_fds();
  int i;

  snprintf(address,
           sizeof(address),
           "tcp://127.0.0.1:%d",
           test_server_port(holder));
  uvs_config_init(&config);
  config.allow_reuse_address = 0;
  for (i = 0; i < 1100; i++) {
    server = holder;
    ASSERT_ERR(uvs_server_new(NULL, &server, address, &handler, &config),
               UV_EADDRINUSE);
    ASSERT_NULL(server);
  }
  config.allow_reuse_address = 1;
  for (i = 0; i < 300; i++) {
    server = holder;
    ASSERT_ERR(uvs_server_new(NULL, &server, address, &handler, &config),
               UV_EADDRINUSE);
    ASSERT_NULL(server);
  }
  for (i = 0; i < 1100; i++) {
    server = holder;
    ASSERT_ERR(
        uvs_server_new(NULL, &server, "tcp://127.0.0.1:-1", &handler, NULL),
        UV_EINVAL);
    ASSERT_NULL(server);
    ASSERT_ERR(
        uvs_server_new(NULL, &server, "tcp://127.0.0.1:65536", &handler, NULL),
        UV_EINVAL);
    ASSERT_NULL(server);
  }
  ASSERT_EQ(test_count_fds(), before);
  ASSERT_OK(uvs_server_close(holder, NULL));
}


/* test_context_manager (bpo-26404): the server has a listening socket until
 * server_close, and none after (Python: fileno() == -1). Nothing is opened
 * between the close and the check, so the number cannot be reused. */
static void context_manager(void) {
  uvs_server_t* server = make_server(NULL, NULL);
  int fd = uvs_server_fileno(server);
  int listening = 0;
  socklen_t len = sizeof(listening);

  ASSERT_GE(fd, 0);
  ASSERT_NE(fcntl(fd, F_GETFD), -1);
  ASSERT_OK(getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len));
  ASSERT_EQ(listening, 1);
  ASSERT_OK(uvs_server_close(server, NULL));
  errno = 0;
  ASSERT_EQ(fcntl(fd, F_GETFD), -1);
  ASSERT_EQ(errno, EBADF);
}


/* ---- MiscTestCase ---------------------------------------------------- */

static int reject_all(uvs_server_t* server, const uvs_address_t* peer) {
  (void) peer;
  return ctx_of(server)->verify_result;
}

static void count_shutdown_request(uvs_server_t* server,
                                   uv_os_sock_t fd,
                                   const uvs_address_t* peer) {
  ASSERT_GE(fd, 0);
  ASSERT_EQ(peer->transport, UVS_TRANSPORT_TCP);
  ctx_of(server)->shutdown_requests++;
}

/* test_shutdown_request_called_if_verify_request_false (bpo-26309): a
 * rejected request is still shut down, exactly once, and counts as the
 * request handle_request serves. Python's client connects and closes at
 * once; a second client stays connected to see the EOF the fix gives it. */
static void shutdown_request_once_when_rejected(void) {
  ctx_t ctx;
  uvs_config_t config;
  uvs_server_t* server;
  int port;
  int fd;

  memset(&ctx, 0, sizeof(ctx));
  ctx.verify_result = 0;
  uvs_config_init(&config);
  config.hooks.verify_request = reject_all;
  config.hooks.shutdown_request = count_shutdown_request;
  server = make_server(&config, &ctx);
  port = test_server_port(server);

  fd = test_connect("127.0.0.1", port);
  close(fd);
  ASSERT_OK(uvs_server_handle_request(server));
  ASSERT_EQ(ctx.shutdown_requests, 1);
  ASSERT_EQ(atomic_load(&ctx.lines), 0);

  fd = test_connect("127.0.0.1", port);
  ASSERT_OK(uvs_server_handle_request(server));
  ASSERT_EQ(ctx.shutdown_requests, 2);
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  ASSERT_EQ(atomic_load(&ctx.lines), 0);
  ASSERT_EQ(uvs_server_connection_count(server), 0);
  close(fd);
  ASSERT_OK(uvs_server_close(server, NULL));
}


/* ---- ErrorHandlerTest ------------------------------------------------ */

#define BIG_WRITE ((size_t) 8 << 20)

static void flood_on_open(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(uvs_conn_server(conn));
  char* big = malloc(BIG_WRITE);
  ASSERT_NOT_NULL(big);
  memset(big, 'x', BIG_WRITE);
  ASSERT_OK(uvs_conn_write(conn, big, BIG_WRITE));
  free(big);
  ctx->queued_at_open = uvs_conn_write_queue_size(conn);
  ctx->opened++;
}

static void record_close(uvs_conn_t* conn, int status) {
  ctx_t* ctx = ctx_of(uvs_conn_server(conn));
  ctx->closed++;
  ctx->close_status = status;
}

static void record_error(uvs_server_t* server,
                         uvs_conn_t* conn,
                         const uvs_address_t* peer,
                         int status) {
  ctx_t* ctx = ctx_of(server);
  size_t size = sizeof(ctx->error_peer);
  ctx->errors++;
  ctx->error_status = status;
  ctx->error_had_conn = conn != NULL;
  ctx->error_peer[0] = '\0';
  if (peer != NULL)
    ASSERT_OK(uvs_address_format(peer, ctx->error_peer, &size));
}

/* test_sync_handled, adapted: an error while a request is being served
 * reaches handle_error once, with the request's peer, and the connection's
 * on_close reports the same status. Python's handler raises ValueError;
 * in event mode the error is the peer resetting the connection while the
 * server still has output queued for it. */
static void error_reaches_handle_error(void) {
  ctx_t ctx;
  uvs_config_t config;
  uvs_handler_t handler;
  uvs_server_t* server = NULL;
  struct linger lg;
  int rcvbuf = 4096;
  int port;
  int fd;

  memset(&ctx, 0, sizeof(ctx));
  memset(&handler, 0, sizeof(handler));
  handler.on_open = flood_on_open;
  handler.on_close = record_close;
  uvs_config_init(&config);
  config.hooks.handle_error = record_error;
  ASSERT_OK(
      uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, &config));
  uvs_server_set_data(server, &ctx);
  port = test_server_port(server);
  ASSERT_OK(uvs_server_start(server));

  /* A small receive window keeps most of the 8 MiB queued on the server. */
  fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  ASSERT_OK(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)));
  {
    struct sockaddr_in in;
    memset(&in, 0, sizeof(in));
    in.sin_family = AF_INET;
    in.sin_port = htons((uint16_t) port);
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_OK(connect(fd, (struct sockaddr*) &in, sizeof(in)));
  }
  run_until(server, &ctx.opened, IO_TIMEOUT);
  ASSERT_EQ(ctx.opened, 1);
  ASSERT_GT(ctx.queued_at_open, 0);
  ASSERT_EQ(ctx.errors, 0);

  lg.l_onoff = 1;
  lg.l_linger = 0;
  ASSERT_OK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)));
  close(fd);
  run_until(server, &ctx.closed, IO_TIMEOUT);

  ASSERT_EQ(ctx.errors, 1);
  ASSERT_LT(ctx.error_status, 0);
  ASSERT_TRUE(ctx.error_status == UV_ECONNRESET ||
              ctx.error_status == UV_EPIPE);
  ASSERT_TRUE(ctx.error_had_conn);
  ASSERT_EQ(strncmp(ctx.error_peer, "tcp://127.0.0.1:", 16), 0);
  ASSERT_EQ(ctx.closed, 1);
  ASSERT_EQ(ctx.close_status, ctx.error_status);
  ASSERT_EQ(uvs_server_connection_count(server), 0);
  ASSERT_OK(uvs_server_stop(server));
  ASSERT_OK(uvs_server_close(server, NULL));
  ASSERT_EQ(ctx.errors, 1);
}


/* ErrorHandlerTest proper (cases 17 to 20): BadHandler.handle logs
 * "Handler called" and fails; handle_error logs "Error handled". The
 * server takes one request with handle_request from a client that
 * connects and closes at once, then closes. A plain error is "handled"
 * (two lines); UVS_ESTOP is socketserver's SystemExit: not handled (one
 * line) and it stops the server, so handle_request returns it, in sync mode
 * as in Python and in threading mode too (Python's threads ignore it).
 * shutdown_request runs either way (the threading tests' done event). */
typedef struct {
  char log[128];
  int result; /* what BadHandler.handle returns */
  atomic_int finished;
  atomic_int shutdown_requests;
  uv_mutex_t lock;
} error_log_t;

static void log_line(error_log_t* log, const char* line) {
  uv_mutex_lock(&log->lock);
  snprintf(log->log + strlen(log->log),
           sizeof(log->log) - strlen(log->log),
           "%s",
           line);
  uv_mutex_unlock(&log->lock);
}

static int bad_handle(uvs_conn_t* conn) {
  error_log_t* log = uvs_server_get_data(uvs_conn_server(conn));
  log_line(log, "Handler called\n");
  return log->result;
}

static int bad_finish(uvs_conn_t* conn) {
  error_log_t* log = uvs_server_get_data(uvs_conn_server(conn));
  atomic_fetch_add(&log->finished, 1);
  return 0;
}

static void log_error(uvs_server_t* server,
                      uvs_conn_t* conn,
                      const uvs_address_t* peer,
                      int status) {
  error_log_t* log = uvs_server_get_data(server);
  ASSERT_NOT_NULL(conn);
  ASSERT_EQ(peer->transport, UVS_TRANSPORT_TCP);
  ASSERT_EQ(status, UV_EINVAL);
  log_line(log, "Error handled\n");
}

static void log_shutdown_request(uvs_server_t* server,
                                 uv_os_sock_t fd,
                                 const uvs_address_t* peer) {
  error_log_t* log = uvs_server_get_data(server);
  atomic_fetch_add(&log->shutdown_requests, 1);
}

static void error_test(uvs_mode_t mode, int result) {
  error_log_t log;
  uvs_handler_t handler;
  uvs_config_t config;
  uvs_server_t* server = NULL;
  int fd;

  memset(&log, 0, sizeof(log));
  ASSERT_OK(uv_mutex_init(&log.lock));
  log.result = result;
  memset(&handler, 0, sizeof(handler));
  handler.handle = bad_handle;
  handler.finish = bad_finish;
  uvs_config_init(&config);
  config.mode = mode;
  config.hooks.handle_error = log_error;
  config.hooks.shutdown_request = log_shutdown_request;
  ASSERT_OK(
      uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, &config));
  uvs_server_set_data(server, &log);
  fd = test_connect("127.0.0.1", test_server_port(server));
  close(fd);
  ASSERT_ERR(uvs_server_handle_request(server),
             result == UVS_ESTOP ? result : 0);
  ASSERT_OK(uvs_server_close(server, NULL));
  ASSERT_STR_EQ(log.log,
                result == UVS_ESTOP ? "Handler called\n"
                                    : "Handler called\nError handled\n");
  ASSERT_EQ(atomic_load(&log.finished), 1);
  ASSERT_EQ(atomic_load(&log.shutdown_requests), 1);
  uv_mutex_destroy(&log.lock);
}

static void sync_handled(void) {
  error_test(UVS_MODE_SYNC, UV_EINVAL);
}

static void sync_not_handled(void) {
  error_test(UVS_MODE_SYNC, UVS_ESTOP);
}

static void threading_handled(void) {
  error_test(UVS_MODE_THREADING, UV_EINVAL);
}

static void threading_not_handled(void) {
  error_test(UVS_MODE_THREADING, UVS_ESTOP);
}


/* ---- Behaviour checks (reference section 3.6) ------------------------ */

static int count_timeout(uvs_server_t* server) {
  ctx_t* ctx = ctx_of(server);
  ctx->timeouts++;
  return ctx->timeout_result;
}

/* handle_request honours timeout (BaseServer.timeout) and returns what
 * handle_timeout returns; the wait is measured from the call, however long
 * the server sat idle before it. */
static void handle_request_timeout(void) {
  ctx_t ctx;
  uvs_config_t config;
  uvs_server_t* server;
  uint64_t start;
  uint64_t elapsed;

  memset(&ctx, 0, sizeof(ctx));
  ctx.timeout_result = 4242;
  uvs_config_init(&config);
  config.timeout_ms = 100;
  config.hooks.handle_timeout = count_timeout;
  server = make_server(&config, &ctx);

  start = test_now_ms();
  ASSERT_EQ(uvs_server_handle_request(server), 4242);
  elapsed = test_now_ms() - start;
  ASSERT_GE(elapsed, 90);
  ASSERT_LT(elapsed, 5000);
  ASSERT_EQ(ctx.timeouts, 1);

  /* The same after the server sat idle longer than its timeout. */
  usleep(200 * 1000);
  start = test_now_ms();
  ASSERT_EQ(uvs_server_handle_request(server), 4242);
  elapsed = test_now_ms() - start;
  ASSERT_GE(elapsed, 90);
  ASSERT_LT(elapsed, 5000);
  ASSERT_EQ(ctx.timeouts, 2);
  ASSERT_OK(uvs_server_close(server, NULL));

  /* No hook: UV_ETIMEDOUT. */
  config.hooks.handle_timeout = NULL;
  server = make_server(&config, NULL);
  start = test_now_ms();
  ASSERT_ERR(uvs_server_handle_request(server), UV_ETIMEDOUT);
  elapsed = test_now_ms() - start;
  ASSERT_GE(elapsed, 90);
  ASSERT_LT(elapsed, 5000);
  ASSERT_OK(uvs_server_close(server, NULL));
}


/* timeout = 0 is a poll, as Python's select(0): with no client waiting
 * handle_request returns handle_timeout's value at once; with one waiting
 * it serves it. */
static void handle_request_timeout_zero(void) {
  ctx_t ctx;
  uvs_config_t config;
  uvs_server_t* server;
  char buf[LINE_MAX_LEN];
  uint64_t start;
  int fd;

  memset(&ctx, 0, sizeof(ctx));
  ctx.timeout_result = 4242;
  uvs_config_init(&config);
  config.timeout_ms = 0;
  config.hooks.handle_timeout = count_timeout;
  server = make_server(&config, &ctx);

  start = test_now_ms();
  ASSERT_EQ(uvs_server_handle_request(server), 4242);
  ASSERT_LT(test_now_ms() - start, 1000);
  ASSERT_EQ(ctx.timeouts, 1);

  fd = test_connect("127.0.0.1", test_server_port(server));
  test_send_all(fd, "a\n", 2);
  ASSERT_OK(shutdown(fd, SHUT_WR));
  ASSERT_OK(uvs_server_handle_request(server));
  ASSERT_EQ(ctx.timeouts, 1);
  ASSERT_EQ(atomic_load(&ctx.lines), 1);
  ASSERT_EQ(recv_line(fd, buf, sizeof(buf), IO_TIMEOUT), 2);
  ASSERT_STR_EQ(buf, "a\n");
  close(fd);
  ASSERT_OK(uvs_server_close(server, NULL));
}


static int readable_within(int fd, int timeout_ms) {
  struct pollfd pfd = { fd, POLLIN, 0 };
  return poll(&pfd, 1, timeout_ms) == 1;
}

/* handle_request serves exactly one request: with two clients waiting, one
 * call echoes one of them and leaves the other untouched. The clients shut
 * down their write side after the line, so the graceful close does not
 * wait for close_linger_ms. */
static void handle_request_serves_one(void) {
  ctx_t ctx;
  uvs_server_t* server;
  char buf[LINE_MAX_LEN];
  int fds[2];
  int served;
  int other;
  int port;
  int i;

  memset(&ctx, 0, sizeof(ctx));
  server = make_server(NULL, &ctx);
  port = test_server_port(server);
  for (i = 0; i < 2; i++) {
    fds[i] = test_connect("127.0.0.1", port);
    test_send_all(fds[i], "a\n", 2);
    ASSERT_OK(shutdown(fds[i], SHUT_WR));
  }

  ASSERT_OK(uvs_server_handle_request(server));
  ASSERT_EQ(atomic_load(&ctx.lines), 1);
  ASSERT_EQ(uvs_server_connection_count(server), 0);
  served = readable_within(fds[0], 0) ? 0 : 1;
  other = 1 - served;
  ASSERT_EQ(recv_line(fds[served], buf, sizeof(buf), IO_TIMEOUT), 2);
  ASSERT_STR_EQ(buf, "a\n");
  ASSERT_EQ(test_wait_eof(fds[served], IO_TIMEOUT), 1);
  ASSERT_FALSE(readable_within(fds[other], 200));

  ASSERT_OK(uvs_server_handle_request(server));
  ASSERT_EQ(atomic_load(&ctx.lines), 2);
  ASSERT_EQ(recv_line(fds[other], buf, sizeof(buf), IO_TIMEOUT), 2);
  ASSERT_STR_EQ(buf, "a\n");
  ASSERT_EQ(test_wait_eof(fds[other], IO_TIMEOUT), 1);

  close(fds[0]);
  close(fds[1]);
  ASSERT_OK(uvs_server_close(server, NULL));
}


static void count_service_actions(uvs_server_t* server) {
  atomic_fetch_add(&ctx_of(server)->service_actions, 1);
}

/* service_actions runs every poll interval while serve_forever runs, and
 * never after shutdown has returned. */
static void service_actions(void) {
  ctx_t ctx;
  uvs_config_t config;
  uvs_server_t* server;
  serve_thread_t t;
  int count;

  memset(&ctx, 0, sizeof(ctx));
  uvs_config_init(&config);
  config.hooks.service_actions = count_service_actions;
  server = make_server(&config, &ctx);
  serve_start(&t, server, 20);
  usleep(200 * 1000);
  ASSERT_GE(atomic_load(&ctx.service_actions), 3);
  ASSERT_OK(uvs_server_shutdown(server));
  count = atomic_load(&ctx.service_actions);
  usleep(100 * 1000);
  ASSERT_EQ(atomic_load(&ctx.service_actions), count);
  ASSERT_OK(serve_join(&t));
  ASSERT_EQ(atomic_load(&ctx.service_actions), count);
  ASSERT_OK(uvs_server_close(server, NULL));
}


/* A client on a helper thread, for cases whose test thread runs the
 * loop. */
typedef struct {
  pthread_t thread;
  int port;
  char reply[LINE_MAX_LEN];
  size_t reply_len;
} client_thread_t;

static void* client_main(void* arg) {
  client_thread_t* c = arg;
  int fd = test_connect("127.0.0.1", c->port);
  test_send_all(fd, TEST_STR, TEST_STR_LEN);
  c->reply_len = recv_line(fd, c->reply, sizeof(c->reply), IO_TIMEOUT);
  close(fd);
  return NULL;
}

/* Stopping the loop from inside a handler (reference 2.3: Python's
 * synchronous server deadlocks there). serve_forever on another thread,
 * then on the test thread itself. */
static void shutdown_from_handler(void) {
  ctx_t ctx;
  uvs_server_t* server;
  serve_thread_t t;
  client_thread_t c;
  uint64_t start;

  memset(&ctx, 0, sizeof(ctx));
  ctx.shutdown_on_line = 1;
  server = make_server(NULL, &ctx);
  serve_start(&t, server, 10);
  stream_examine(test_server_port(server));
  ASSERT_OK(serve_join(&t));
  ASSERT_EQ(atomic_load(&ctx.lines), 1);
  ASSERT_OK(uvs_server_close(server, NULL));

  memset(&ctx, 0, sizeof(ctx));
  ctx.shutdown_on_line = 1;
  server = make_server(NULL, &ctx);
  memset(&c, 0, sizeof(c));
  c.port = test_server_port(server);
  ASSERT_OK(pthread_create(&c.thread, NULL, client_main, &c));
  start = test_now_ms();
  ASSERT_OK(uvs_server_serve_forever(server, 10));
  ASSERT_LT(test_now_ms() - start, IO_TIMEOUT);
  ASSERT_OK(pthread_join(c.thread, NULL));
  ASSERT_EQ(c.reply_len, TEST_STR_LEN);
  ASSERT_STR_EQ(c.reply, TEST_STR);
  ASSERT_EQ(atomic_load(&ctx.lines), 1);
  ASSERT_OK(uvs_server_close(server, NULL));
}


/* A shutdown after serve_forever has returned does nothing, twice in a row
 * too, and leaves no stale flag: Python's next serve_forever would return
 * at once (reference 2.3, 4.1). */
static void shutdown_twice_and_stale_flag(void) {
  ctx_t ctx;
  uvs_server_t* server;
  serve_thread_t t;
  uint64_t start;
  int port;

  memset(&ctx, 0, sizeof(ctx));
  server = make_server(NULL, &ctx);
  port = test_server_port(server);
  serve_start(&t, server, 10);
  stream_examine(port);
  ASSERT_OK(uvs_server_shutdown(server));
  ASSERT_OK(serve_join(&t));

  start = test_now_ms();
  ASSERT_OK(uvs_server_shutdown(server));
  ASSERT_OK(uvs_server_shutdown(server));
  ASSERT_LT(test_now_ms() - start, 1000);

  serve_start(&t, server, 10);
  stream_examine(port);
  stream_examine(port);
  ASSERT_OK(uvs_server_shutdown(server));
  ASSERT_OK(serve_join(&t));
  ASSERT_EQ(atomic_load(&ctx.lines), 3);
  ASSERT_OK(uvs_server_close(server, NULL));
}


/* A shutdown before any serve_forever is remembered: the first
 * serve_forever returns at once (the certbot pattern behind bpo-2302),
 * and the request is used up, so the next one serves. */
static void shutdown_before_serve(void) {
  ctx_t ctx;
  uvs_server_t* server;
  serve_thread_t t;
  uint64_t start;

  memset(&ctx, 0, sizeof(ctx));
  server = make_server(NULL, &ctx);
  ASSERT_OK(uvs_server_shutdown(server));
  start = test_now_ms();
  ASSERT_OK(uvs_server_serve_forever(server, 10));
  ASSERT_LT(test_now_ms() - start, 1000);

  serve_start(&t, server, 10);
  stream_examine(test_server_port(server));
  ASSERT_OK(uvs_server_shutdown(server));
  ASSERT_OK(serve_join(&t));
  ASSERT_EQ(atomic_load(&ctx.lines), 1);
  ASSERT_OK(uvs_server_close(server, NULL));
}


static const test_case_t cases[] = {
  { "tcp_server", tcp_server },
  { "tcp_server_sync", tcp_server_sync },
  { "threading_tcp_server", threading_tcp_server },
  { "shutdown_20_servers", shutdown_20_servers },
  { "close_immediately", close_immediately },
  { "bind_leak", bind_leak },
  { "context_manager", context_manager },
  { "shutdown_request_once_when_rejected",
    shutdown_request_once_when_rejected },
  { "error_reaches_handle_error", error_reaches_handle_error },
  { "sync_handled", sync_handled },
  { "sync_not_handled", sync_not_handled },
  { "threading_handled", threading_handled },
  { "threading_not_handled", threading_not_handled },
  { "handle_request_timeout", handle_request_timeout },
  { "handle_request_timeout_zero", handle_request_timeout_zero },
  { "handle_request_serves_one", handle_request_serves_one },
  { "service_actions", service_actions },
  { "shutdown_from_handler", shutdown_from_handler },
  { "shutdown_twice_and_stale_flag", shutdown_twice_and_stale_flag },
  { "shutdown_before_serve", shutdown_before_serve },
};

TEST_MAIN(cases)
