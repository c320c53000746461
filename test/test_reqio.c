/* SPDX-License-Identifier: MIT */
/*
 * Request I/O (lib/reqio.c), socketserver's rfile and wfile, over real
 * loopback connections: uvs_readline (pieces, the size cap, EOF, CRLF, bad
 * sizes), uvs_recv, uvs_read_exact, the request timeout (INT64_MAX
 * included), uvs_write's buffer and uvs_flush, uvs_conn_write from the
 * handler (behind the buffer, and after uvs_conn_close), TCP_NODELAY,
 * UV_ENOTSUP in event mode, threading mode's backpressure and bounded
 * memory, a peer reset while a handler waits, a close that cancels a waiting
 * handler, and CPython's SocketWriterTest.test_write. Each behaviour runs in
 * both blocking modes (a `_threading` and a `_sync` case) unless it only
 * makes sense in one.
 *
 * Threads: each case makes its own server on an owned loop and runs
 * serve_forever on a pthread (handle_request on the test thread for the
 * CPython port, whose client is a pthread). In threading mode the handler
 * runs on a worker, in sync mode on the serving thread. Handlers assert
 * inline (an abort there fails the case like one on the test thread) and
 * report through a ctx_t hung on the server: the handler and the client
 * wait for each other's numbered steps, and plain fields are read only
 * after the step or the `handled` count that follows their write. Every
 * wait and every client read is bounded.
 */
#define TEST_CASE_TIMEOUT 60
#include "test.h"

#include "internal.h"

#include <fcntl.h>
#include <stdatomic.h>
#include <sys/resource.h>

#define IO_TIMEOUT 5000  /* ms: handler I/O and client reads */
#define WAIT_MS    10000 /* ms: a step that does not come fails the case */
#define BIG_ECHO   ((size_t) 64 << 20)
/* CPython's test.support.SOCK_MAX_SIZE. */
#define SOCK_MAX_SIZE ((size_t) 16 * 1024 * 1024 + 1)


/* ---- Fixtures -------------------------------------------------------- */

typedef struct {
  atomic_int server_step; /* advanced by the handler */
  atomic_int client_step; /* advanced by the client */
  atomic_int handled;     /* handlers that returned */
  atomic_int errors;      /* handle_error calls */
  atomic_int error_status;
  /* Backpressure: bytes the handler echoed, and whether it is inside
   * uvs_sendall now. */
  atomic_llong echoed;
  atomic_int in_sendall;
  atomic_int last_result; /* blocked_reader_handle's uvs_recv */
  _Atomic(uvs_conn_t*) conn;
  /* The handler's thread, published by server_step 1 (test_write). */
  pthread_t handler_thread;
  /* Written by the handler before a step or `handled`, read after. */
  ssize_t result;
  uint64_t elapsed_ms;
  int nodelay;
  size_t max_out;
  size_t max_in;
} ctx_t;


static ctx_t* ctx_of(uvs_conn_t* conn) {
  return uvs_server_get_data(uvs_conn_server(conn));
}


/* Sets a step; the other side waits for it with wait_step. */
static void step(atomic_int* s, int value) {
  atomic_store(s, value);
}

static void wait_step(atomic_int* s, int value) {
  uint64_t deadline = test_now_ms() + WAIT_MS;
  while (atomic_load(s) < value) {
    if (test_now_ms() > deadline)
      TEST__FAIL("waited for step %d, have %d", value, atomic_load(s));
    usleep(1000);
  }
}


static void count_error(uvs_server_t* server,
                        uvs_conn_t* conn,
                        const uvs_address_t* peer,
                        int status) {
  ctx_t* ctx = uvs_server_get_data(server);
  atomic_store(&ctx->error_status, status);
  atomic_fetch_add(&ctx->errors, 1);
}


/* Defaults for `mode`, with every request I/O call bounded and handler
 * errors counted rather than logged. */
static void config_for(uvs_config_t* config, uvs_mode_t mode) {
  uvs_config_init(config);
  config->mode = mode;
  config->request_timeout_ms = IO_TIMEOUT;
  config->hooks.handle_error = count_error;
}


typedef struct {
  uvs_server_t* server;
  pthread_t thread;
  int port;
  int result;
} fixture_t;

static void* serve_main(void* arg) {
  fixture_t* fx = arg;
  fx->result = uvs_server_serve_forever(fx->server, 0);
  return NULL;
}


/* A server with `handler` on an owned loop and `ctx` as its data;
 * serve_forever runs on a pthread unless `serve` is 0. */
static void start_handler(fixture_t* fx,
                          ctx_t* ctx,
                          const uvs_handler_t* handler,
                          const uvs_config_t* config,
                          int serve) {
  memset(ctx, 0, sizeof(*ctx));
  fx->server = NULL;
  ASSERT_OK(
      uvs_server_new(NULL, &fx->server, "tcp://127.0.0.1:0", handler, config));
  uvs_server_set_data(fx->server, ctx);
  fx->port = test_server_port(fx->server);
  fx->result = -12345;
  if (serve)
    ASSERT_OK(pthread_create(&fx->thread, NULL, serve_main, fx));
}


/* The same with `handle` as the only handler step. */
static void start(fixture_t* fx,
                  ctx_t* ctx,
                  uvs_request_cb handle,
                  const uvs_config_t* config,
                  int serve) {
  uvs_handler_t handler;
  memset(&handler, 0, sizeof(handler));
  handler.handle = handle;
  start_handler(fx, ctx, &handler, config, serve);
}


static void stop(fixture_t* fx) {
  ASSERT_OK(uvs_server_shutdown(fx->server));
  ASSERT_OK(pthread_join(fx->thread, NULL));
  ASSERT_OK(fx->result);
  ASSERT_OK(uvs_server_close(fx->server, NULL));
}


/* Every behaviour in both blocking modes: BOTH(name) makes the two case
 * functions, CASES(name) their table entries. */
#define BOTH(name)                    \
 static void name##_threading(void) { \
  name(UVS_MODE_THREADING);           \
 }                                    \
 static void name##_sync(void) {      \
  name(UVS_MODE_SYNC);                \
 }

/* clang-format off */
#define CASES(name) \
 { #name "_threading", name##_threading }, { #name "_sync", name##_sync }
/* clang-format on */


/* ---- Client helpers -------------------------------------------------- */

static int readable_within(int fd, int timeout_ms) {
  struct pollfd pfd = { fd, POLLIN, 0 };
  return poll(&pfd, 1, timeout_ms) == 1;
}


static void sleep_ms(int ms) {
  usleep((useconds_t) ms * 1000);
}


/* Reads exactly `len` bytes and compares them with `want`. */
static void expect_bytes(int fd, const void* want, size_t len) {
  char* got = malloc(len + 1);
  ASSERT_NOT_NULL(got);
  ASSERT_EQ(test_recv_n(fd, got, len, IO_TIMEOUT), (ssize_t) len);
  ASSERT_MEM_EQ(got, want, len);
  free(got);
}


/* Byte `i` of the test stream. Every 4-byte word differs from all others
 * within 16 GiB, so a lost, doubled or reordered block shows. */
static char pattern_at(uint64_t i) {
  uint32_t x = (uint32_t) (i >> 2) * 2654435761u;
  x ^= x >> 16;
  x *= 0x45d9f3bu;
  x ^= x >> 16;
  return (char) (x >> ((i & 3) * 8));
}

static void pattern_fill(char* dst, uint64_t offset, size_t len) {
  size_t i;
  for (i = 0; i < len; i++)
    dst[i] = pattern_at(offset + i);
}

/* Index of the first byte of `got` that is not the stream at `offset`,
 * or `len`. */
static size_t pattern_check(const char* got, uint64_t offset, size_t len) {
  size_t i;
  for (i = 0; i < len; i++) {
    if (got[i] != pattern_at(offset + i))
      return i;
  }
  return len;
}


/* A line of `len` bytes without '\n' but its last (printable, so
 * readline's only '\n' is the end). */
static void line_fill(char* dst, size_t len) {
  size_t i;
  for (i = 0; i + 1 < len; i++)
    dst[i] = (char) ('a' + i % 26);
  dst[len - 1] = '\n';
}


/* The common client: sends `pieces` with `pause_ms` between them, then
 * shuts down its write side (the handler sees EOF), advances client_step
 * to 1, and waits for the server's close and the handler's return. */
static void client_script(fixture_t* fx,
                          ctx_t* ctx,
                          const char* const* pieces,
                          const size_t* lens,
                          size_t n,
                          int pause_ms) {
  int fd = test_connect("127.0.0.1", fx->port);
  size_t i;

  for (i = 0; i < n; i++) {
    if (i > 0 && pause_ms > 0)
      sleep_ms(pause_ms);
    test_send_all(fd, pieces[i], lens[i]);
  }
  ASSERT_OK(shutdown(fd, SHUT_WR));
  step(&ctx->client_step, 1);
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  wait_step(&ctx->handled, 1);
  ASSERT_EQ(atomic_load(&ctx->errors), 0);
}


/* Runs `handle` in `mode` against client_script with C-string pieces. */
static void run_text(uvs_mode_t mode,
                     uvs_request_cb handle,
                     const char* const* pieces,
                     size_t n,
                     int pause_ms) {
  size_t lens[16];
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  size_t i;

  ASSERT_LE(n, 16);
  for (i = 0; i < n; i++)
    lens[i] = strlen(pieces[i]);
  config_for(&config, mode);
  start(&fx, &ctx, handle, &config, 1);
  client_script(&fx, &ctx, pieces, lens, n, pause_ms);
  stop(&fx);
}


/* ---- uvs_readline ---------------------------------------------------- */

#define LONG_LINE 10000

/* Lines that arrive in pieces, several lines in one piece, and a line
 * longer than the input queue's chunks, itself sent in pieces. */
static int readline_pieces_handle(uvs_conn_t* conn) {
  char buf[64];
  char* big = malloc(LONG_LINE + 64);
  char* want = malloc(LONG_LINE);

  ASSERT_NOT_NULL(big);
  ASSERT_NOT_NULL(want);
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 13);
  ASSERT_STR_EQ(buf, "hello, world\n");
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 2);
  ASSERT_STR_EQ(buf, "a\n");
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 3);
  ASSERT_STR_EQ(buf, "bb\n");
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 4);
  ASSERT_STR_EQ(buf, "ccc\n");
  line_fill(want, LONG_LINE);
  ASSERT_EQ(uvs_readline(conn, big, LONG_LINE + 64), LONG_LINE);
  ASSERT_MEM_EQ(big, want, LONG_LINE);
  ASSERT_EQ(big[LONG_LINE], '\0');
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 0);
  ASSERT_STR_EQ(buf, "");
  free(big);
  free(want);
  atomic_fetch_add(&ctx_of(conn)->handled, 1);
  return 0;
}

static void readline_across_chunks(uvs_mode_t mode) {
  char* line = malloc(LONG_LINE);
  const char* pieces[8];
  size_t lens[8];
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;

  ASSERT_NOT_NULL(line);
  line_fill(line, LONG_LINE);
  pieces[0] = "hel";
  pieces[1] = "lo, wor";
  pieces[2] = "ld\n";
  pieces[3] = "a\nbb\nccc\n";
  pieces[4] = line;        /* 3000 */
  pieces[5] = line + 3000; /* 1 */
  pieces[6] = line + 3001; /* 4500 */
  pieces[7] = line + 7501; /* the rest, with the '\n' */
  lens[0] = 3;
  lens[1] = 7;
  lens[2] = 3;
  lens[3] = 9;
  lens[4] = 3000;
  lens[5] = 1;
  lens[6] = 4500;
  lens[7] = LONG_LINE - 7501;
  config_for(&config, mode);
  start(&fx, &ctx, readline_pieces_handle, &config, 1);
  client_script(&fx, &ctx, pieces, lens, 8, 30);
  stop(&fx);
  free(line);
}
BOTH(readline_across_chunks)


/* A line of exactly size - 1 bytes, '\n' included, fits. */
static int readline_at_cap_handle(uvs_conn_t* conn) {
  char buf[8];
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 7);
  ASSERT_STR_EQ(buf, "abcdef\n");
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 2);
  ASSERT_STR_EQ(buf, "z\n");
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 0);
  atomic_fetch_add(&ctx_of(conn)->handled, 1);
  return 0;
}

static void readline_at_cap(uvs_mode_t mode) {
  const char* pieces[] = { "abcdef\nz\n" };
  run_text(mode, readline_at_cap_handle, pieces, 1, 0);
}
BOTH(readline_at_cap)


/* One byte over: UV_ENOBUFS with the first size - 1 bytes consumed and
 * in buf, the rest still readable; a line many times the cap comes out
 * in pieces, and the next line is intact. */
static int readline_over_cap_handle(uvs_conn_t* conn) {
  char buf[8];
  ASSERT_ERR(uvs_readline(conn, buf, sizeof(buf)), UV_ENOBUFS);
  ASSERT_STR_EQ(buf, "abcdefg");
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 1);
  ASSERT_STR_EQ(buf, "\n");
  ASSERT_ERR(uvs_readline(conn, buf, sizeof(buf)), UV_ENOBUFS);
  ASSERT_STR_EQ(buf, "0123456");
  ASSERT_ERR(uvs_readline(conn, buf, sizeof(buf)), UV_ENOBUFS);
  ASSERT_STR_EQ(buf, "789ABCD");
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 7);
  ASSERT_STR_EQ(buf, "EFGHIJ\n");
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 5);
  ASSERT_STR_EQ(buf, "next\n");
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 0);
  atomic_fetch_add(&ctx_of(conn)->handled, 1);
  return 0;
}

static void readline_over_cap(uvs_mode_t mode) {
  const char* pieces[] = { "abcdefg\n0123456789ABCDEFGHIJ\nnext\n" };
  run_text(mode, readline_over_cap_handle, pieces, 1, 0);
}
BOTH(readline_over_cap)


/* No '\n' before the peer's EOF: the partial line, then 0, and 0 again. */
static int readline_eof_handle(uvs_conn_t* conn) {
  char buf[64];
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 5);
  ASSERT_STR_EQ(buf, "full\n");
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 7);
  ASSERT_STR_EQ(buf, "partial");
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 0);
  ASSERT_STR_EQ(buf, "");
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 0);
  atomic_fetch_add(&ctx_of(conn)->handled, 1);
  return 0;
}

static void readline_eof_without_newline(uvs_mode_t mode) {
  const char* pieces[] = { "full\npar", "tial" };
  run_text(mode, readline_eof_handle, pieces, 2, 30);
}
BOTH(readline_eof_without_newline)


/* "\r\n" stays as is: the line ends at '\n' only; a lone '\r' is data. */
static int readline_crlf_handle(uvs_conn_t* conn) {
  char buf[64];
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 6);
  ASSERT_STR_EQ(buf, "line\r\n");
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 4);
  ASSERT_STR_EQ(buf, "a\rb\n");
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 2);
  ASSERT_STR_EQ(buf, "\r\n");
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 0);
  atomic_fetch_add(&ctx_of(conn)->handled, 1);
  return 0;
}

static void readline_crlf(uvs_mode_t mode) {
  const char* pieces[] = { "line\r", "\na\rb\n\r\n" };
  run_text(mode, readline_crlf_handle, pieces, 2, 30);
}
BOTH(readline_crlf)


/* size < 2 (no room for a byte and the NUL), a NULL buffer or connection:
 * UV_EINVAL, and nothing is consumed. */
static int readline_einval_handle(uvs_conn_t* conn) {
  char buf[64];
  buf[0] = 'x';
  ASSERT_ERR(uvs_readline(conn, buf, 1), UV_EINVAL);
  ASSERT_ERR(uvs_readline(conn, buf, 0), UV_EINVAL);
  ASSERT_ERR(uvs_readline(conn, NULL, sizeof(buf)), UV_EINVAL);
  ASSERT_ERR(uvs_readline(NULL, buf, sizeof(buf)), UV_EINVAL);
  ASSERT_EQ(buf[0], 'x');
  ASSERT_ERR(uvs_readline(conn, buf, 2), UV_ENOBUFS);
  ASSERT_STR_EQ(buf, "o");
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 3);
  ASSERT_STR_EQ(buf, "ne\n");
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 0);
  atomic_fetch_add(&ctx_of(conn)->handled, 1);
  return 0;
}

static void readline_einval(uvs_mode_t mode) {
  const char* pieces[] = { "one\n" };
  run_text(mode, readline_einval_handle, pieces, 1, 0);
}
BOTH(readline_einval)


/* ---- uvs_recv and uvs_read_exact ------------------------------------ */

/* What is queued comes before the EOF behind it: the handler starts
 * reading only after the client has sent everything and shut down. */
static int recv_eof_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char buf[64];

  wait_step(&ctx->client_step, 1);
  sleep_ms(100); /* the FIN is in (threading: queued behind the bytes) */
  ASSERT_EQ(uvs_recv(conn, buf, 0), 0);
  ASSERT_EQ(uvs_recv(conn, buf, 2), 2);
  ASSERT_MEM_EQ(buf, "ab", 2);
  ASSERT_EQ(uvs_recv(conn, buf, sizeof(buf)), 4);
  ASSERT_MEM_EQ(buf, "cdef", 4);
  ASSERT_EQ(uvs_recv(conn, buf, sizeof(buf)), 0);
  ASSERT_EQ(uvs_recv(conn, buf, sizeof(buf)), 0);
  ASSERT_ERR(uvs_recv(NULL, buf, sizeof(buf)), UV_EINVAL);
  ASSERT_ERR(uvs_recv(conn, NULL, sizeof(buf)), UV_EINVAL);
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

static void recv_buffered_then_eof(uvs_mode_t mode) {
  const char* pieces[] = { "abcdef" };
  run_text(mode, recv_eof_handle, pieces, 1, 0);
}
BOTH(recv_buffered_then_eof)


/* uvs_recv waits for the first byte and returns what is there. */
static int recv_waits_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char buf[64];
  uint64_t start = test_now_ms();

  step(&ctx->server_step, 1);
  ASSERT_EQ(uvs_recv(conn, buf, sizeof(buf)), 5);
  ASSERT_MEM_EQ(buf, "later", 5);
  ASSERT_GE(test_now_ms() - start, 90);
  ASSERT_EQ(uvs_recv(conn, buf, sizeof(buf)), 0);
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

static void recv_waits_for_data(uvs_mode_t mode) {
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  int fd;

  config_for(&config, mode);
  start(&fx, &ctx, recv_waits_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  wait_step(&ctx.server_step, 1);
  sleep_ms(150);
  test_send_all(fd, "later", 5);
  ASSERT_OK(shutdown(fd, SHUT_WR));
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  wait_step(&ctx.handled, 1);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  stop(&fx);
}
BOTH(recv_waits_for_data)


#define EXACT_LEN 10000

/* read_exact gathers pieces into exactly n; at EOF it returns fewer (what
 * there was), then 0. */
static int read_exact_handle(uvs_conn_t* conn) {
  char* buf = malloc(EXACT_LEN);
  char small[16];

  ASSERT_NOT_NULL(buf);
  ASSERT_EQ(uvs_read_exact(conn, buf, 0), 0);
  ASSERT_EQ(uvs_read_exact(conn, buf, EXACT_LEN), EXACT_LEN);
  ASSERT_EQ(pattern_check(buf, 0, EXACT_LEN), EXACT_LEN);
  ASSERT_EQ(uvs_read_exact(conn, small, 10), 3);
  ASSERT_MEM_EQ(small, "xyz", 3);
  ASSERT_EQ(uvs_read_exact(conn, small, 5), 0);
  ASSERT_ERR(uvs_read_exact(NULL, small, 5), UV_EINVAL);
  free(buf);
  atomic_fetch_add(&ctx_of(conn)->handled, 1);
  return 0;
}

static void read_exact_short_at_eof(uvs_mode_t mode) {
  char* data = malloc(EXACT_LEN);
  const char* pieces[5];
  size_t lens[5];
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;

  ASSERT_NOT_NULL(data);
  pattern_fill(data, 0, EXACT_LEN);
  pieces[0] = data;
  pieces[1] = data + 3000;
  pieces[2] = data + 3001;
  pieces[3] = data + 7001;
  pieces[4] = "xyz";
  lens[0] = 3000;
  lens[1] = 1;
  lens[2] = 4000;
  lens[3] = EXACT_LEN - 7001;
  lens[4] = 3;
  config_for(&config, mode);
  start(&fx, &ctx, read_exact_handle, &config, 1);
  client_script(&fx, &ctx, pieces, lens, 5, 20);
  stop(&fx);
  free(data);
}
BOTH(read_exact_short_at_eof)


/* ---- Timeouts -------------------------------------------------------- */

/* Times one uvs_recv that gets no data; it must time out, not earlier than
 * the timeout and well before the case's limits. */
static void expect_recv_timeout(uvs_conn_t* conn, uint64_t timeout_ms) {
  char buf[16];
  uint64_t start = test_now_ms();
  uint64_t elapsed;

  ASSERT_ERR(uvs_recv(conn, buf, sizeof(buf)), UV_ETIMEDOUT);
  elapsed = test_now_ms() - start;
  /* 1 ms of slack for the millisecond clock's truncation. */
  if (timeout_ms > 0)
    ASSERT_GE(elapsed, timeout_ms - 1);
  ASSERT_LT(elapsed, timeout_ms + 3000);
}


/* config.request_timeout_ms bounds each call; the connection works after
 * a timeout. */
static int config_timeout_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char buf[64];
  uint64_t start;

  expect_recv_timeout(conn, 200);
  start = test_now_ms();
  ASSERT_ERR(uvs_readline(conn, buf, sizeof(buf)), UV_ETIMEDOUT);
  ASSERT_GE(test_now_ms() - start, 199);
  /* The client sends once it sees this step; wait generously for it. */
  ASSERT_OK(uvs_conn_set_timeout(conn, IO_TIMEOUT));
  step(&ctx->server_step, 1);
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 5);
  ASSERT_STR_EQ(buf, "ping\n");
  ASSERT_OK(uvs_sendall(conn, "pong\n", 5));
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 0);
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

static void request_timeout_from_config(uvs_mode_t mode) {
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  int fd;

  config_for(&config, mode);
  config.request_timeout_ms = 200;
  start(&fx, &ctx, config_timeout_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  wait_step(&ctx.server_step, 1);
  test_send_all(fd, "ping\n", 5);
  expect_bytes(fd, "pong\n", 5);
  ASSERT_OK(shutdown(fd, SHUT_WR));
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  wait_step(&ctx.handled, 1);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  stop(&fx);
}
BOTH(request_timeout_from_config)


/* uvs_conn_set_timeout changes this request's timeout only: the first
 * connection shortens it, the second starts from the config's again. */
static int set_timeout_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char buf[64];

  if (uvs_conn_id(conn) == 1) {
    ASSERT_ERR(uvs_conn_set_timeout(conn, -2), UV_EINVAL);
    ASSERT_ERR(uvs_conn_set_timeout(NULL, 100), UV_EINVAL);
    ASSERT_OK(uvs_conn_set_timeout(conn, 100));
    expect_recv_timeout(conn, 100);
    ASSERT_OK(uvs_conn_set_timeout(conn, 0));
    expect_recv_timeout(conn, 0);
    ASSERT_OK(uvs_conn_set_timeout(conn, IO_TIMEOUT));
    step(&ctx->server_step, 1);
    ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 4);
    ASSERT_STR_EQ(buf, "one\n");
  } else {
    expect_recv_timeout(conn, 400);
    ASSERT_OK(uvs_conn_set_timeout(conn, IO_TIMEOUT));
    step(&ctx->server_step, 2);
    ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 4);
    ASSERT_STR_EQ(buf, "two\n");
  }
  ASSERT_EQ(uvs_readline(conn, buf, sizeof(buf)), 0);
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

static void request_timeout_per_request(uvs_mode_t mode) {
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  int fd;

  config_for(&config, mode);
  config.request_timeout_ms = 400;
  start(&fx, &ctx, set_timeout_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  wait_step(&ctx.server_step, 1);
  test_send_all(fd, "one\n", 4);
  ASSERT_OK(shutdown(fd, SHUT_WR));
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  wait_step(&ctx.handled, 1);

  fd = test_connect("127.0.0.1", fx.port);
  wait_step(&ctx.server_step, 2);
  test_send_all(fd, "two\n", 4);
  ASSERT_OK(shutdown(fd, SHUT_WR));
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  wait_step(&ctx.handled, 2);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  stop(&fx);
}
BOTH(request_timeout_per_request)


/* request_timeout_ms = INT64_MAX is practically forever: it must not wrap
 * to a deadline in the past. uvs_recv waits for a byte the client sends
 * 300 ms later; uvs_conn_set_timeout(INT64_MAX) does the same. */
static int forever_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  uint64_t start;
  char c;

  start = test_now_ms();
  step(&ctx->server_step, 1);
  ASSERT_EQ(uvs_recv(conn, &c, 1), 1);
  ASSERT_EQ(c, 'a');
  ASSERT_OK(uvs_conn_set_timeout(conn, INT64_MAX));
  step(&ctx->server_step, 2);
  ASSERT_EQ(uvs_recv(conn, &c, 1), 1);
  ASSERT_EQ(c, 'b');
  ctx->elapsed_ms = test_now_ms() - start;
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

static void request_timeout_forever(uvs_mode_t mode) {
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  int fd;

  config_for(&config, mode);
  config.request_timeout_ms = INT64_MAX;
  start(&fx, &ctx, forever_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  wait_step(&ctx.server_step, 1);
  sleep_ms(300);
  test_send_all(fd, "a", 1);
  wait_step(&ctx.server_step, 2);
  sleep_ms(300);
  test_send_all(fd, "b", 1);
  ASSERT_OK(shutdown(fd, SHUT_WR));
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  wait_step(&ctx.handled, 1);
  ASSERT_GE(ctx.elapsed_ms, 500);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  stop(&fx);
}
BOTH(request_timeout_forever)


/* uvs_sendall to a peer that does not read is bounded by the timeout
 * too. */
static int sendall_timeout_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  size_t len = (size_t) 1 << 20;
  char* data = calloc(1, len);
  int r = 0;
  int i;

  ASSERT_NOT_NULL(data);
  /* Far more than the socket buffers hold: one call has to wait. */
  for (i = 0; i < 256 && r == 0; i++) {
    uint64_t start = test_now_ms();
    r = uvs_sendall(conn, data, len);
    ctx->elapsed_ms = test_now_ms() - start;
  }
  ctx->result = r;
  free(data);
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

static void sendall_timeout(uvs_mode_t mode) {
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  int fd;

  config_for(&config, mode);
  config.request_timeout_ms = 300;
  start(&fx, &ctx, sendall_timeout_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  wait_step(&ctx.handled, 1);
  ASSERT_ERR(ctx.result, UV_ETIMEDOUT);
  ASSERT_GE(ctx.elapsed_ms, 299);
  ASSERT_LT(ctx.elapsed_ms, 3300);
  close(fd);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  stop(&fx);
}
BOTH(sendall_timeout)


/* ---- uvs_write, uvs_flush and wbufsize ------------------------------ */

#define WBUFSIZE 1024

/* Bytes collect until uvs_flush; a write that does not fit sends the
 * buffer first and is kept; one larger than the buffer goes straight out
 * (after what was buffered); the buffer is flushed after finish. */
static int wbuf_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char block[2000];

  ASSERT_OK(uvs_write(conn, "hello", 5));
  step(&ctx->server_step, 1);
  wait_step(&ctx->client_step, 1);
  ASSERT_OK(uvs_flush(conn));
  /* flush returns once the socket has taken every byte. */
  ASSERT_EQ(uvs_conn_write_queue_size(conn), 0);
  ASSERT_OK(uvs_flush(conn));

  memset(block, 'A', 600);
  ASSERT_OK(uvs_write(conn, block, 600));
  memset(block, 'B', 600);
  ASSERT_OK(uvs_write(conn, block, 600));
  step(&ctx->server_step, 2);
  wait_step(&ctx->client_step, 2);

  memset(block, 'C', sizeof(block));
  ASSERT_OK(uvs_write(conn, block, sizeof(block)));
  step(&ctx->server_step, 3);
  wait_step(&ctx->client_step, 3);

  ASSERT_OK(uvs_write(conn, "tail", 4));
  ASSERT_ERR(uvs_write(NULL, "x", 1), UV_EINVAL);
  ASSERT_ERR(uvs_flush(NULL), UV_EINVAL);
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

static void write_buffered(uvs_mode_t mode) {
  char want[2600];
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  int fd;

  config_for(&config, mode);
  config.wbufsize = WBUFSIZE;
  start(&fx, &ctx, wbuf_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);

  /* Written, not flushed: nothing arrives. */
  wait_step(&ctx.server_step, 1);
  ASSERT_FALSE(readable_within(fd, 200));
  step(&ctx.client_step, 1);
  expect_bytes(fd, "hello", 5);

  /* 600 + 600 does not fit in 1024: the first 600 went out, the second
   * waits. */
  wait_step(&ctx.server_step, 2);
  memset(want, 'A', 600);
  expect_bytes(fd, want, 600);
  ASSERT_FALSE(readable_within(fd, 200));
  step(&ctx.client_step, 2);

  /* 2000 > 1024: the buffered B's, then the C's, without a flush (the
   * handler waits for this step before it goes on). */
  wait_step(&ctx.server_step, 3);
  memset(want, 'B', 600);
  memset(want + 600, 'C', 2000);
  expect_bytes(fd, want, sizeof(want));
  step(&ctx.client_step, 3);

  /* Flushed after the handler returned. */
  expect_bytes(fd, "tail", 4);
  ASSERT_OK(shutdown(fd, SHUT_WR));
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  wait_step(&ctx.handled, 1);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  stop(&fx);
}
BOTH(write_buffered)


/* With a write buffer, uvs_conn_write from the handler sends after what
 * uvs_write buffered, never before it: in sync mode it is uvs_sendall
 * behind the buffer; in threading mode the buffer joins the output queue
 * first. */
static int write_order_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  ASSERT_OK(uvs_write(conn, "first ", 6));
  ASSERT_OK(uvs_conn_write(conn, "second ", 7));
  ASSERT_OK(uvs_write(conn, "third", 5));
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

static void conn_write_after_buffer(uvs_mode_t mode) {
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  int fd;

  config_for(&config, mode);
  config.wbufsize = WBUFSIZE;
  start(&fx, &ctx, write_order_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  expect_bytes(fd, "first second third", 18);
  ASSERT_OK(shutdown(fd, SHUT_WR));
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  wait_step(&ctx.handled, 1);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  stop(&fx);
}
BOTH(conn_write_after_buffer)


/* Threading: the buffer a handler's uvs_conn_write moves into the queue
 * counts against max_write_queue with the new bytes: 6000 buffered bytes
 * and 1 more are past four times a 1024-byte cap, however small the
 * write itself. */
static int buffered_cap_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  static const char block[6000];
  ASSERT_OK(uvs_write(conn, block, sizeof(block)));
  ctx->result = uvs_conn_write(conn, "x", 1);
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

static void conn_write_buffer_counts_in_cap(void) {
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  int fd;

  config_for(&config, UVS_MODE_THREADING);
  config.wbufsize = 8192;
  config.max_write_queue = 1024;
  start(&fx, &ctx, buffered_cap_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  wait_step(&ctx.handled, 1);
  ASSERT_ERR(ctx.result, UV_ENOBUFS);
  close(fd);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  stop(&fx);
}


/* After uvs_conn_close in the handler, uvs_conn_write returns UV_EPIPE (as
 * the header says) and sends nothing: the client reads EOF only. */
static int write_after_close_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  ASSERT_OK(uvs_conn_close(conn));
  ctx->result = uvs_conn_write(conn, "x", 1);
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

static void conn_write_after_close(uvs_mode_t mode) {
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  char c;
  int fd;

  config_for(&config, mode);
  start(&fx, &ctx, write_after_close_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  wait_step(&ctx.handled, 1);
  ASSERT_ERR(ctx.result, UV_EPIPE);
  ASSERT_EQ(test_recv_n(fd, &c, 1, IO_TIMEOUT), 0);
  close(fd);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  stop(&fx);
}
BOTH(conn_write_after_close)


/* wbufsize 0 (the default): every uvs_write is sent at once. */
static int unbuffered_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  ASSERT_OK(uvs_write(conn, "now", 3));
  step(&ctx->server_step, 1);
  wait_step(&ctx->client_step, 1);
  ASSERT_OK(uvs_flush(conn));
  ASSERT_OK(uvs_write(conn, "", 0));
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

static void write_unbuffered(uvs_mode_t mode) {
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  int fd;

  config_for(&config, mode);
  start(&fx, &ctx, unbuffered_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  wait_step(&ctx.server_step, 1);
  /* The handler waits for the next step: no flush, no close yet. */
  expect_bytes(fd, "now", 3);
  step(&ctx.client_step, 1);
  ASSERT_OK(shutdown(fd, SHUT_WR));
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  wait_step(&ctx.handled, 1);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  stop(&fx);
}
BOTH(write_unbuffered)


/* ---- Threading: the worker's direct sends ---------------------------- */

#define MIXED_ROUNDS 2000
#define MIXED_PIECE  97

/* Each round queues a piece with uvs_conn_write (the loop sends it) and
 * sends the next with uvs_sendall, which the worker sends itself when
 * nothing is queued: the second must never overtake the first. The client
 * does not read at first, so some sends are partial and the rest queues. */
static int mixed_writes_handle(uvs_conn_t* conn) {
  char piece[MIXED_PIECE];
  uint64_t offset = 0;
  int i;

  for (i = 0; i < MIXED_ROUNDS; i++) {
    pattern_fill(piece, offset, sizeof(piece));
    ASSERT_OK(uvs_conn_write(conn, piece, sizeof(piece)));
    offset += sizeof(piece);
    pattern_fill(piece, offset, sizeof(piece));
    ASSERT_OK(uvs_sendall(conn, piece, sizeof(piece)));
    offset += sizeof(piece);
  }
  atomic_fetch_add(&ctx_of(conn)->handled, 1);
  return 0;
}

static void direct_send_keeps_order(void) {
  size_t len = (size_t) MIXED_ROUNDS * 2 * MIXED_PIECE;
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  char* got;
  int fd;

  config_for(&config, UVS_MODE_THREADING);
  start(&fx, &ctx, mixed_writes_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  sleep_ms(50);
  got = malloc(len);
  ASSERT_NOT_NULL(got);
  ASSERT_EQ(test_recv_n(fd, got, len, IO_TIMEOUT), (ssize_t) len);
  ASSERT_EQ(pattern_check(got, 0, len), len);
  free(got);
  wait_step(&ctx.handled, 1);
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  stop(&fx);
}


#define TRICKLE_SENDS 12
#define TRICKLE_GAP   100 /* ms between sends */
#define TRICKLE_IDLE  350 /* ms: idle_timeout_ms, over three gaps */

/* Sends a byte every TRICKLE_GAP ms and never reads: the connection is
 * not idle, though the loop sees none of these bytes leave. */
static int trickle_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  int i;

  ctx->result = 0;
  for (i = 0; i < TRICKLE_SENDS && ctx->result == 0; i++) {
    sleep_ms(TRICKLE_GAP);
    ctx->result = uvs_sendall(conn, "t", 1);
  }
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

static void direct_sends_are_not_idle(void) {
  char got[TRICKLE_SENDS];
  uvs_config_t config;
  uvs_stats_t st;
  fixture_t fx;
  ctx_t ctx;
  int fd;

  config_for(&config, UVS_MODE_THREADING);
  config.idle_timeout_ms = TRICKLE_IDLE;
  start(&fx, &ctx, trickle_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  ASSERT_EQ(test_recv_n(fd, got, sizeof(got), IO_TIMEOUT),
            (ssize_t) sizeof(got));
  wait_step(&ctx.handled, 1);
  ASSERT_OK(ctx.result);
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  ASSERT_OK(uvs_server_stats(fx.server, &st));
  ASSERT_EQ(st.timeouts, 0);
  ASSERT_EQ(st.bytes_out, TRICKLE_SENDS);
  stop(&fx);
}


#define IDLE_MS 500

/* Whether the connection's socket is in blocking mode now. */
static int is_blocking(uvs_conn_t* conn) {
  int flags = fcntl(uvs_conn_fileno(conn), F_GETFL);
  ASSERT_GE(flags, 0);
  return (flags & O_NONBLOCK) == 0;
}

/* Echoes until the connection ends; counts its receives (ctx->max_out) and
 * notes whether the socket was blocking after the first (ctx->nodelay). */
static int echo_until_end_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char buf[64];
  ssize_t n;

  while ((n = uvs_recv(conn, buf, sizeof(buf))) > 0) {
    if (ctx->max_out++ == 0)
      ctx->nodelay = is_blocking(conn);
    if (uvs_sendall(conn, buf, (size_t) n) != 0)
      break;
  }
  ctx->result = n;
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

/* Threading: the idle timeout counts from the last byte the worker
 * received or sent itself, which the loop learns of only when the timeout
 * comes due: the connection closes one idle_timeout_ms after the echo,
 * not a period or two later. */
static void idle_counts_from_last_byte(void) {
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  uint64_t last;
  uint64_t idle;
  char c;
  int fd;

  config_for(&config, UVS_MODE_THREADING);
  config.idle_timeout_ms = IDLE_MS;
  start(&fx, &ctx, echo_until_end_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  sleep_ms(IDLE_MS * 3 / 5);
  test_send_all(fd, "x", 1);
  ASSERT_EQ(test_recv_n(fd, &c, 1, IO_TIMEOUT), 1);
  last = test_now_ms();
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  idle = test_now_ms() - last;
  printf("# closed %" PRIu64 " ms after the last byte\n", idle);
  ASSERT_GE(idle, IDLE_MS - 50);
  ASSERT_LT(idle, IDLE_MS * 3 / 2);
  close(fd);
  wait_step(&ctx.handled, 1);
  ASSERT_ERR(ctx.result, UV_ETIMEDOUT);
  stop(&fx);
}


/* The process's eventfds, by their /proc link. The directory is opened
 * beforehand, so counting opens no descriptor while workers open and
 * close theirs (a number reused across threads without a lock is a race
 * to ThreadSanitizer). */
static int count_eventfds(DIR* dir) {
  struct dirent* ent;
  char link[64];
  int n = 0;

  rewinddir(dir);
  while ((ent = readdir(dir)) != NULL) {
    ssize_t len;
    if (ent->d_name[0] == '.')
      continue;
    len = readlinkat(dirfd(dir), ent->d_name, link, sizeof(link) - 1);
    if (len <= 0)
      continue;
    link[len] = '\0';
    if (strcmp(link, "anon_inode:[eventfd]") == 0)
      n++;
  }
  return n;
}

/* Waits up to `ms` for the process to hold `want` eventfds. */
static bool eventfds_become(DIR* dir, int want, int ms) {
  uint64_t end = test_now_ms() + (uint64_t) ms;
  while (count_eventfds(dir) != want) {
    if (test_now_ms() > end)
      return false;
    sleep_ms(5);
  }
  return true;
}

/* Threading: a worker waiting for input holds an eventfd (so the loop can
 * wake it) only while the wait is hot; after a quiet spell it closes it
 * and the loop reads for it. Bytes arrive intact either way, so an idle
 * connection costs no descriptor beyond its socket. */
static void cold_wait_frees_eventfd(void) {
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  char got[2];
  DIR* dir;
  int cold;
  int fd;
  int i;

  dir = opendir("/proc/self/fd");
  ASSERT_NOT_NULL(dir);
  config_for(&config, UVS_MODE_THREADING);
  start(&fx, &ctx, echo_until_end_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  sleep_ms(400); /* accepted, waiting, cold by now */
  cold = count_eventfds(dir);
  for (i = 0; i < 3; i++) {
    test_send_all(fd, "ab", 2);
    ASSERT_EQ(test_recv_n(fd, got, 2, IO_TIMEOUT), 2);
    ASSERT_EQ(memcmp(got, "ab", 2), 0);
    /* Waiting hot again: one more eventfd, gone after the spell. */
    ASSERT_TRUE(eventfds_become(dir, cold + 1, 90));
    ASSERT_TRUE(eventfds_become(dir, cold, 2000));
  }
  close(fd);
  wait_step(&ctx.handled, 1);
  ASSERT_EQ(ctx.result, 0);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  stop(&fx);
  closedir(dir);
}


/* Echoes line by line through an 8-byte line buffer. */
static int small_lines_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char line[8];
  ssize_t n;

  while ((n = uvs_readline(conn, line, sizeof(line))) > 0) {
    if (uvs_sendall(conn, line, (size_t) n) != 0)
      break;
  }
  ctx->result = n;
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

/* Threading: lines that arrive together after a cold wait (the loop read
 * them, more than one line buffer) come back in order. readline once put
 * the bytes past its line behind the rest of that read. */
static void readline_after_cold_wait(void) {
  static const char lines[] = "ab\ncd\nef\ngh\n";
  char got[sizeof(lines) - 1];
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  int fd;

  config_for(&config, UVS_MODE_THREADING);
  start(&fx, &ctx, small_lines_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  sleep_ms(300); /* the handler's wait turns cold */
  test_send_all(fd, lines, sizeof(lines) - 1);
  ASSERT_EQ(test_recv_n(fd, got, sizeof(got), IO_TIMEOUT),
            (ssize_t) sizeof(got));
  ASSERT_EQ(memcmp(got, lines, sizeof(got)), 0);
  close(fd);
  wait_step(&ctx.handled, 1);
  ASSERT_EQ(ctx.result, 0);
  stop(&fx);
}


/* Reads one byte, then (told the rest is there) reads again with a zero
 * request timeout. */
static int zero_timeout_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char buf[16];

  ASSERT_EQ(uvs_recv(conn, buf, sizeof(buf)), 1);
  step(&ctx->server_step, 1);
  wait_step(&ctx->client_step, 1);
  ASSERT_OK(uvs_conn_set_timeout(conn, 0));
  ctx->result = uvs_recv(conn, buf, sizeof(buf));
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

/* Threading: a read with a zero timeout returns the bytes already there.
 * After a receive that emptied the socket, the next one waits first; at a
 * deadline already past it must still look. */
static void zero_timeout_reads_what_is_there(void) {
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  int fd;

  config_for(&config, UVS_MODE_THREADING);
  start(&fx, &ctx, zero_timeout_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  test_send_all(fd, "x", 1);
  wait_step(&ctx.server_step, 1);
  test_send_all(fd, "yz", 2);
  sleep_ms(50); /* arrived */
  step(&ctx.client_step, 1);
  wait_step(&ctx.handled, 1);
  ASSERT_EQ(ctx.result, 2);
  close(fd);
  stop(&fx);
}


#define BUDGET_CONNS 48

/* Echoes until the connection ends; many run at once. */
static int echo_many_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char buf[64];
  ssize_t n;

  while ((n = uvs_recv(conn, buf, sizeof(buf))) > 0) {
    if (uvs_sendall(conn, buf, (size_t) n) != 0)
      break;
  }
  if (n < 0)
    atomic_fetch_add(&ctx->errors, 1);
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

/* Threading: the eventfds of hot waits stay within a quarter of
 * RLIMIT_NOFILE, so they cannot take the descriptors accept needs; a
 * request past the budget waits cold from the start and is served all
 * the same. The clients connect before the server runs, so the test
 * thread opens no descriptor while workers open theirs. */
static void wake_fds_within_budget(void) {
  struct rlimit old;
  struct rlimit lim;
  uvs_config_t config;
  int fds[BUDGET_CONNS];
  fixture_t fx;
  ctx_t ctx;
  uint64_t end;
  DIR* dir;
  int budget;
  int base;
  int most = 0;
  int i;

  dir = opendir("/proc/self/fd");
  ASSERT_NOT_NULL(dir);
  config_for(&config, UVS_MODE_THREADING);
  start(&fx, &ctx, echo_many_handle, &config, 0);
  for (i = 0; i < BUDGET_CONNS; i++)
    fds[i] = test_connect("127.0.0.1", fx.port);
  base = count_eventfds(dir);
  /* Room for the accepted sockets, libuv's reserve descriptor and the
   * budget itself (a quarter of the limit), which falls short of the
   * connections. */
  ASSERT_OK(getrlimit(RLIMIT_NOFILE, &old));
  lim = old;
  lim.rlim_cur = (rlim_t) ((test_count_fds() + BUDGET_CONNS + 8) * 4 / 3 + 4);
  ASSERT_OK(setrlimit(RLIMIT_NOFILE, &lim));
  budget = (int) (lim.rlim_cur / 4);
  ASSERT_LT(budget, BUDGET_CONNS);
  ASSERT_OK(pthread_create(&fx.thread, NULL, serve_main, &fx));
  /* Every handler waits for input; count the eventfds for a while. */
  end = test_now_ms() + 300;
  while (test_now_ms() < end) {
    int hot = count_eventfds(dir) - base;
    if (hot > most)
      most = hot;
    sleep_ms(2);
  }
  printf("# at most %d eventfds, budget %d\n", most, budget);
  ASSERT_LE(most, budget);
  ASSERT_GT(most, 0);
  for (i = 0; i < BUDGET_CONNS; i++) {
    char got[3];
    test_send_all(fds[i], "xyz", 3);
    ASSERT_EQ(test_recv_n(fds[i], got, 3, IO_TIMEOUT), 3);
    ASSERT_EQ(memcmp(got, "xyz", 3), 0);
  }
  /* Every wait cold again before the clients go. */
  ASSERT_TRUE(eventfds_become(dir, base, 2000));
  for (i = 0; i < BUDGET_CONNS; i++)
    close(fds[i]);
  wait_step(&ctx.handled, BUDGET_CONNS);
  ASSERT_OK(setrlimit(RLIMIT_NOFILE, &old));
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  stop(&fx);
  closedir(dir);
}


/* Sends after the peer's reset has arrived. */
static int send_after_reset_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char c;

  ASSERT_EQ(uvs_recv(conn, &c, 1), 1);
  step(&ctx->server_step, 1);
  wait_step(&ctx->client_step, 1);
  ctx->result = uvs_sendall(conn, "y", 1);
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

/* Threading: a send that meets the peer's reset fails with it. The socket
 * reports the error once; left to the loop's write it came back as a
 * plain UV_EPIPE, after uvs_sendall had returned 0. */
static void direct_send_sees_reset(void) {
  uvs_config_t config;
  struct linger lg = { 1, 0 };
  uint64_t deadline;
  uvs_stats_t st;
  fixture_t fx;
  ctx_t ctx;
  int fd;

  config_for(&config, UVS_MODE_THREADING);
  start(&fx, &ctx, send_after_reset_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  test_send_all(fd, "x", 1);
  wait_step(&ctx.server_step, 1);
  ASSERT_OK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)));
  close(fd);
  sleep_ms(100); /* the reset arrives */
  step(&ctx.client_step, 1);
  wait_step(&ctx.handled, 1);
  ASSERT_ERR(ctx.result, UV_ECONNRESET);
  deadline = test_now_ms() + WAIT_MS;
  while (uvs_server_connection_count(fx.server) > 0) {
    ASSERT_LT(test_now_ms(), deadline);
    sleep_ms(10);
  }
  ASSERT_OK(uvs_server_stats(fx.server, &st));
  ASSERT_EQ(st.conn_errors, 1);
  stop(&fx);
}


/* ---- TCP_NODELAY ----------------------------------------------------- */

static int nodelay_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  int fd = uvs_conn_fileno(conn);
  int on = -1;
  socklen_t len = sizeof(on);

  ASSERT_GE(fd, 0);
  ASSERT_OK(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, &len));
  ctx->nodelay = on;
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

static void nodelay_once(uvs_mode_t mode, int disable_nagle, int want) {
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  int fd;

  config_for(&config, mode);
  config.disable_nagle_algorithm = disable_nagle;
  start(&fx, &ctx, nodelay_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  wait_step(&ctx.handled, 1);
  ASSERT_EQ(ctx.nodelay != 0, want);
  ASSERT_OK(shutdown(fd, SHUT_WR));
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  stop(&fx);
}

static void disable_nagle_algorithm(uvs_mode_t mode) {
  nodelay_once(mode, 1, 1);
  nodelay_once(mode, 0, 0);
}
BOTH(disable_nagle_algorithm)


/* ---- Event mode ------------------------------------------------------ */

/* Request I/O is for the blocking modes: in event mode every call returns
 * UV_ENOTSUP (uvs_conn_set_timeout: UV_EINVAL, as documented), at once. */
static void enotsup_open(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char buf[16];

  ASSERT_ERR(uvs_recv(conn, buf, sizeof(buf)), UV_ENOTSUP);
  ASSERT_ERR(uvs_read_exact(conn, buf, sizeof(buf)), UV_ENOTSUP);
  ASSERT_ERR(uvs_readline(conn, buf, sizeof(buf)), UV_ENOTSUP);
  ASSERT_ERR(uvs_sendall(conn, "x", 1), UV_ENOTSUP);
  ASSERT_ERR(uvs_write(conn, "x", 1), UV_ENOTSUP);
  ASSERT_ERR(uvs_flush(conn), UV_ENOTSUP);
  ASSERT_ERR(uvs_conn_set_timeout(conn, 100), UV_EINVAL);
  ASSERT_OK(uvs_conn_close(conn));
  atomic_fetch_add(&ctx->handled, 1);
}

static void event_mode_enotsup(void) {
  uvs_handler_t handler;
  fixture_t fx;
  ctx_t ctx;
  int fd;

  memset(&handler, 0, sizeof(handler));
  handler.on_open = enotsup_open;
  start_handler(&fx, &ctx, &handler, NULL, 1);
  fd = test_connect("127.0.0.1", fx.port);
  wait_step(&ctx.handled, 1);
  ASSERT_OK(shutdown(fd, SHUT_WR));
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  stop(&fx);
}


/* ---- Threading: backpressure ---------------------------------------- */

/* The most output uvs holds for a connection: output_high_water plus the
 * one piece a writer appends past it. */
#define PIECE ((size_t) 65536)

static void note_memory(uvs_conn_t* conn, ctx_t* ctx) {
  size_t out = uvs_conn_write_queue_size(conn);
  size_t in;
  uv_mutex_lock(&conn->io->lock);
  in = conn->io->in.len;
  uv_mutex_unlock(&conn->io->lock);
  if (out > ctx->max_out)
    ctx->max_out = out;
  if (in > ctx->max_in)
    ctx->max_in = in;
}

/* Echo with uvs_recv and uvs_sendall, counting what went back. */
static int echo_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char* buf = malloc(PIECE);
  ssize_t n;

  ASSERT_NOT_NULL(buf);
  atomic_store(&ctx->conn, conn);
  while ((n = uvs_recv(conn, buf, PIECE)) > 0) {
    note_memory(conn, ctx);
    atomic_store(&ctx->in_sendall, 1);
    ASSERT_OK(uvs_sendall(conn, buf, (size_t) n));
    atomic_store(&ctx->in_sendall, 0);
    atomic_fetch_add(&ctx->echoed, n);
    note_memory(conn, ctx);
  }
  ASSERT_EQ(n, 0);
  atomic_store(&ctx->conn, NULL);
  free(buf);
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}


typedef struct {
  int fd;
  size_t len;
} sender_t;

/* Sends `len` bytes of the test stream, then shuts down the write side. */
static void* send_stream(void* arg) {
  sender_t* s = arg;
  char* block = malloc(PIECE);
  size_t done = 0;

  ASSERT_NOT_NULL(block);
  while (done < s->len) {
    size_t n = s->len - done < PIECE ? s->len - done : PIECE;
    pattern_fill(block, done, n);
    test_send_all(s->fd, block, n);
    done += n;
  }
  ASSERT_OK(shutdown(s->fd, SHUT_WR));
  free(block);
  return NULL;
}

/* Reads `len` bytes of the test stream starting at `offset` and checks
 * every byte. */
static void recv_stream(int fd, uint64_t offset, size_t len) {
  char* block = malloc(PIECE);
  size_t done = 0;

  ASSERT_NOT_NULL(block);
  while (done < len) {
    size_t n = len - done < PIECE ? len - done : PIECE;
    size_t bad;
    ASSERT_EQ(test_recv_n(fd, block, n, 15000), (ssize_t) n);
    bad = pattern_check(block, offset + done, n);
    if (bad != n)
      TEST__FAIL("byte %" PRIu64 " differs", offset + done + bad);
    done += n;
  }
  free(block);
}

/* A client sends 64 MiB and reads nothing: the handler's uvs_sendall
 * blocks, the echoed count stops growing, and uvs's memory for the
 * connection stays within its high mark out and holds no input (the
 * handler receives straight into its buffer; unread bytes wait in the
 * kernel). Then the client reads: all 64 MiB come back intact, in order. */
static void backpressure_64mib(void) {
  uvs_config_t config;
  fixture_t fx;
  sender_t sender;
  pthread_t thread;
  ctx_t ctx;
  long long last = -1;
  int stable = 0;
  uint64_t deadline;
  uvs_conn_t* conn;
  size_t out;
  size_t in;

  config_for(&config, UVS_MODE_THREADING);
  /* The stall is watched for a while: no I/O timeout meanwhile. */
  config.request_timeout_ms = 30000;
  start(&fx, &ctx, echo_handle, &config, 1);
  sender.fd = test_connect("127.0.0.1", fx.port);
  sender.len = BIG_ECHO;
  ASSERT_OK(pthread_create(&thread, NULL, send_stream, &sender));

  /* Stalled: the same count for half a second, inside uvs_sendall. */
  deadline = test_now_ms() + 20000;
  while (stable < 5) {
    long long now = atomic_load(&ctx.echoed);
    if (test_now_ms() > deadline)
      TEST__FAIL("echo did not stall: %lld bytes echoed", now);
    if (now == last && now > 0 && atomic_load(&ctx.in_sendall))
      stable++;
    else
      stable = 0;
    last = now;
    sleep_ms(100);
  }
  ASSERT_LT(last, (long long) BIG_ECHO / 2);
  sleep_ms(300);
  ASSERT_EQ(atomic_load(&ctx.echoed), last);

  /* The handler is blocked until we read, so the connection is alive. */
  conn = atomic_load(&ctx.conn);
  ASSERT_NOT_NULL(conn);
  out = uvs_conn_write_queue_size(conn);
  uv_mutex_lock(&conn->io->lock);
  in = conn->io->in.len;
  uv_mutex_unlock(&conn->io->lock);
  printf("# stalled after %lld bytes: %zu queued out, %zu in\n", last, out, in);
  ASSERT_GE(out, config.output_high_water);
  ASSERT_LE(out, config.output_high_water + PIECE);
  ASSERT_EQ(in, 0);

  recv_stream(sender.fd, 0, BIG_ECHO);
  ASSERT_OK(pthread_join(thread, NULL));
  ASSERT_EQ(test_wait_eof(sender.fd, IO_TIMEOUT), 1);
  close(sender.fd);
  wait_step(&ctx.handled, 1);
  ASSERT_EQ(atomic_load(&ctx.echoed), (long long) BIG_ECHO);
  ASSERT_LE(ctx.max_out, config.output_high_water + PIECE);
  ASSERT_EQ(ctx.max_in, 0);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  stop(&fx);
}


/* ---- Ends while a handler waits -------------------------------------- */

/* The peer resets while the handler waits in uvs_recv: the call fails with
 * the reset at once, long before the request timeout. */
static int reset_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char buf[16];
  uint64_t start = test_now_ms();

  step(&ctx->server_step, 1);
  ctx->result = uvs_recv(conn, buf, sizeof(buf));
  ctx->elapsed_ms = test_now_ms() - start;
  /* The end is sticky. */
  ASSERT_EQ(uvs_recv(conn, buf, sizeof(buf)), ctx->result);
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

static void reset_while_in_recv(uvs_mode_t mode) {
  uvs_config_t config;
  struct linger lg = { 1, 0 };
  fixture_t fx;
  ctx_t ctx;
  int fd;

  config_for(&config, mode);
  config.request_timeout_ms = 20000;
  start(&fx, &ctx, reset_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  wait_step(&ctx.server_step, 1);
  sleep_ms(100);
  ASSERT_OK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)));
  close(fd);
  wait_step(&ctx.handled, 1);
  ASSERT_ERR(ctx.result, UV_ECONNRESET);
  ASSERT_LT(ctx.elapsed_ms, 5000);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  stop(&fx);
}
BOTH(reset_while_in_recv)


/* Threading: uvs_server_close wakes a handler blocked in request I/O with
 * UV_ECANCELED, and (block_on_close) returns once it has returned. */
static void close_cancels_recv(void) {
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  uint64_t start_ms;
  int fd;

  config_for(&config, UVS_MODE_THREADING);
  config.request_timeout_ms = -1;
  start(&fx, &ctx, reset_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  wait_step(&ctx.server_step, 1);
  sleep_ms(100);
  start_ms = test_now_ms();
  ASSERT_OK(uvs_server_shutdown(fx.server));
  ASSERT_OK(pthread_join(fx.thread, NULL));
  ASSERT_OK(fx.result);
  ASSERT_EQ(atomic_load(&ctx.handled), 0);
  ASSERT_OK(uvs_server_close(fx.server, NULL));
  ASSERT_LT(test_now_ms() - start_ms, 3000);
  ASSERT_EQ(atomic_load(&ctx.handled), 1);
  ASSERT_ERR(ctx.result, UV_ECANCELED);
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
}


/* ---- Threading: blocking receives ----------------------------------- */

/* Without a request timeout a threading worker waits for input in a
 * blocking recv on its socket, which it puts in blocking mode; the loop
 * puts it back before libuv reads or writes it. */

/* Waits (on the test thread) until the handler of `conn` has put its
 * socket in blocking mode: it is in, or entering, its blocking recv. */
static void wait_blocking(uvs_conn_t* conn) {
  uint64_t deadline = test_now_ms() + WAIT_MS;
  while (!is_blocking(conn)) {
    if (test_now_ms() > deadline)
      TEST__FAIL("the socket never became blocking");
    sleep_ms(1);
  }
}

static void round_trips(int fd, int count) {
  char got[5];
  int i;
  for (i = 0; i < count; i++) {
    test_send_all(fd, "ping\n", 5);
    ASSERT_EQ(test_recv_n(fd, got, 5, IO_TIMEOUT), 5);
    ASSERT_EQ(memcmp(got, "ping\n", 5), 0);
  }
}

/* Round trips back to back, then after waits past the hot spell (the
 * wait turns cold: the loop reads once, non-blocking), then back to back
 * again: every byte comes back, in both states. */
static void blocking_recv_echo(void) {
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  int fd;
  int i;

  config_for(&config, UVS_MODE_THREADING);
  config.request_timeout_ms = -1;
  start(&fx, &ctx, echo_until_end_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  round_trips(fd, 200);
  for (i = 0; i < 3; i++) {
    sleep_ms(250);
    round_trips(fd, 20);
  }
  close(fd);
  wait_step(&ctx.handled, 1);
  ASSERT_EQ(ctx.result, 0);
  ASSERT_EQ(ctx.nodelay, 1);
  ASSERT_EQ(ctx.max_out, (size_t) 260);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  stop(&fx);
}


/* Publishes the connection, shrinks its send buffer, then waits in
 * uvs_recv for one byte and echoes it, until EOF. */
static int blocked_reader_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  int size = 4096;
  char c;
  ssize_t n;

  ASSERT_OK(setsockopt(uvs_conn_fileno(conn),
                       SOL_SOCKET,
                       SO_SNDBUF,
                       &size,
                       sizeof(size)));
  atomic_store(&ctx->conn, conn);
  step(&ctx->server_step, 1);
  while ((n = uvs_recv(conn, &c, 1)) > 0) {
    if (uvs_sendall(conn, &c, 1) != 0)
      break;
  }
  atomic_store(&ctx->last_result, (int) n);
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

/* Threading: while a worker waits in a blocking recv, another thread
 * writes more than the socket holds to its connection (the peer does not
 * read yet). The loop sends it without blocking: it still accepts and
 * serves a second client meanwhile; then the peer gets every byte, and the
 * worker's receive still works. A loop writing to the socket in blocking
 * mode would hang in writev here. */
#define FANOUT_BYTES ((size_t) 4 << 20)

static void loop_write_while_blocked(void) {
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  char* big;
  char* got;
  char c;
  int fd;
  int fd2;

  big = malloc(FANOUT_BYTES);
  got = malloc(FANOUT_BYTES);
  ASSERT_NOT_NULL(big);
  ASSERT_NOT_NULL(got);
  pattern_fill(big, 0, FANOUT_BYTES);
  config_for(&config, UVS_MODE_THREADING);
  config.request_timeout_ms = -1;
  start(&fx, &ctx, blocked_reader_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  wait_step(&ctx.server_step, 1);
  wait_blocking(atomic_load(&ctx.conn));
  ASSERT_OK(uvs_conn_write(atomic_load(&ctx.conn), big, FANOUT_BYTES));
  sleep_ms(50);
  fd2 = test_connect("127.0.0.1", fx.port);
  test_send_all(fd2, "z", 1);
  ASSERT_EQ(test_recv_n(fd2, &c, 1, IO_TIMEOUT), 1);
  ASSERT_EQ(c, 'z');
  close(fd2);
  ASSERT_EQ(test_recv_n(fd, got, FANOUT_BYTES, IO_TIMEOUT), FANOUT_BYTES);
  ASSERT_EQ(memcmp(got, big, FANOUT_BYTES), 0);
  test_send_all(fd, "y", 1);
  ASSERT_EQ(test_recv_n(fd, &c, 1, IO_TIMEOUT), 1);
  ASSERT_EQ(c, 'y');
  close(fd);
  wait_step(&ctx.handled, 2);
  ASSERT_EQ(atomic_load(&ctx.last_result), 0);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  stop(&fx);
  free(big);
  free(got);
}


/* Threading: an end of the connection reaches a worker in a blocking
 * recv: an abort (the loop closes now) at once, as it shuts the read side;
 * uvs_conn_close from another thread within the receive timeout (100 ms).
 * A client that connects right after is served its own bytes: the
 * aborted connection's descriptor stays open until the worker has left
 * its recv, so the new connection cannot get its number while the worker
 * may still receive on it. */
static void end_reaches_blocking_recv(int aborting) {
  uint64_t took[10];
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  uint64_t start_ms;
  char c;
  int fast = 0;
  int fd;
  int fd2;
  int round;

  config_for(&config, UVS_MODE_THREADING);
  config.request_timeout_ms = -1;
  start(&fx, &ctx, blocked_reader_handle, &config, 1);
  for (round = 0; round < 10; round++) {
    atomic_store(&ctx.server_step, 0);
    fd = test_connect("127.0.0.1", fx.port);
    wait_step(&ctx.server_step, 1);
    wait_blocking(atomic_load(&ctx.conn));
    start_ms = test_now_ms();
    if (aborting)
      ASSERT_OK(uvs_conn_abort(atomic_load(&ctx.conn)));
    else
      ASSERT_OK(uvs_conn_close(atomic_load(&ctx.conn)));
    fd2 = test_connect("127.0.0.1", fx.port);
    wait_step(&ctx.handled, 2 * round + 1);
    took[round] = test_now_ms() - start_ms;
    ASSERT_ERR(atomic_load(&ctx.last_result), UV_ECANCELED);
    ASSERT_LT(took[round], 1000);
    if (!aborting)
      ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
    close(fd);
    test_send_all(fd2, "q", 1);
    ASSERT_EQ(test_recv_n(fd2, &c, 1, IO_TIMEOUT), 1);
    ASSERT_EQ(c, 'q');
    close(fd2);
    wait_step(&ctx.handled, 2 * round + 2);
    ASSERT_EQ(atomic_load(&ctx.last_result), 0);
  }
  for (round = 0; round < 10; round++)
    fast += took[round] < 60;
  printf("# %s: %d of 10 handlers returned within 60 ms\n",
         aborting ? "abort" : "close",
         fast);
  /* The receive timeout alone would take about 100 ms each time. */
  if (aborting)
    ASSERT_GE(fast, 6);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  stop(&fx);
}

static void close_reaches_blocking_recv(void) {
  end_reaches_blocking_recv(0);
}

static void abort_reaches_blocking_recv(void) {
  end_reaches_blocking_recv(1);
}


/* Threading: the idle timeout reaches a worker in a blocking recv (it
 * fires before the receive timeout) within that timeout. */
static void idle_reaches_blocking_recv(void) {
  uvs_config_t config;
  fixture_t fx;
  ctx_t ctx;
  uint64_t start_ms;
  uint64_t took;
  int fd;

  config_for(&config, UVS_MODE_THREADING);
  config.request_timeout_ms = -1;
  config.idle_timeout_ms = 50;
  start(&fx, &ctx, blocked_reader_handle, &config, 1);
  start_ms = test_now_ms();
  fd = test_connect("127.0.0.1", fx.port);
  wait_step(&ctx.handled, 1);
  took = test_now_ms() - start_ms;
  ASSERT_ERR(atomic_load(&ctx.last_result), UV_ETIMEDOUT);
  ASSERT_GE(took, 45);
  ASSERT_LT(took, 2000);
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  stop(&fx);
}


/* ---- CPython SocketWriterTest.test_write ----------------------------- */

/* The handler's first write is sent at once, without a flush; then it
 * reads the client's line and sends SOCK_MAX_SIZE bytes with one
 * uvs_sendall, which signals interrupt (no SA_RESTART) and which must
 * still arrive whole. handle_request runs on the test thread, the client
 * on a pthread, as in Python. */
static atomic_int interrupted;

static void on_sigusr1(int sig) {
  (void) sig;
  atomic_store(&interrupted, 1);
}

static int writer_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(conn);
  char line[64];
  char* big = malloc(SOCK_MAX_SIZE);

  ASSERT_NOT_NULL(big);
  ctx->handler_thread = pthread_self();
  step(&ctx->server_step, 1);
  ASSERT_OK(uvs_write(conn, "write data\n", 11));
  ASSERT_EQ(uvs_readline(conn, line, sizeof(line)), 16);
  ASSERT_STR_EQ(line, "client response\n");
  pattern_fill(big, 0, SOCK_MAX_SIZE);
  ASSERT_OK(uvs_sendall(conn, big, SOCK_MAX_SIZE));
  free(big);
  atomic_fetch_add(&ctx->handled, 1);
  return 0;
}

typedef struct {
  int port;
  ctx_t* ctx;
  size_t received2;
} writer_client_t;

static void* writer_client(void* arg) {
  writer_client_t* c = arg;
  char* block = malloc(PIECE);
  uint64_t offset = 100;
  int fd = test_connect("127.0.0.1", c->port);
  int tries;

  ASSERT_NOT_NULL(block);
  expect_bytes(fd, "write data\n", 11);
  wait_step(&c->ctx->server_step, 1);
  test_send_all(fd, "client response\n", 16);
  ASSERT_EQ(test_recv_n(fd, block, 100, IO_TIMEOUT), 100);
  ASSERT_EQ(pattern_check(block, 0, 100), 100);
  /* The handler now waits in uvs_sendall. Signal until it sees one. */
  for (tries = 0; !atomic_load(&interrupted); tries++) {
    ASSERT_LT(tries, 10);
    ASSERT_OK(pthread_kill(c->ctx->handler_thread, SIGUSR1));
    {
      uint64_t deadline = test_now_ms() + 1000;
      while (!atomic_load(&interrupted) && test_now_ms() < deadline)
        sleep_ms(1);
    }
  }
  for (;;) {
    ssize_t n = test_recv_n(fd, block, PIECE, IO_TIMEOUT);
    size_t bad;
    ASSERT_GE(n, 0);
    bad = pattern_check(block, offset, (size_t) n);
    if (bad != (size_t) n)
      TEST__FAIL("byte %" PRIu64 " differs", offset + bad);
    offset += (uint64_t) n;
    if ((size_t) n < PIECE)
      break;
  }
  c->received2 = (size_t) (offset - 100);
  ASSERT_OK(shutdown(fd, SHUT_WR));
  close(fd);
  free(block);
  return NULL;
}

static void socket_writer_test_write(uvs_mode_t mode) {
  struct sigaction sa;
  struct sigaction old;
  uvs_config_t config;
  writer_client_t client;
  pthread_t thread;
  fixture_t fx;
  ctx_t ctx;

  atomic_store(&interrupted, 0);
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_sigusr1;
  sigemptyset(&sa.sa_mask);
  ASSERT_OK(sigaction(SIGUSR1, &sa, &old));
  config_for(&config, mode);
  config.request_timeout_ms = 30000;
  start(&fx, &ctx, writer_handle, &config, 0);
  client.port = fx.port;
  client.ctx = &ctx;
  client.received2 = 0;
  ASSERT_OK(pthread_create(&thread, NULL, writer_client, &client));
  ASSERT_OK(uvs_server_handle_request(fx.server));
  ASSERT_OK(pthread_join(thread, NULL));
  ASSERT_OK(sigaction(SIGUSR1, &old, NULL));
  ASSERT_EQ(atomic_load(&ctx.handled), 1);
  ASSERT_EQ(atomic_load(&interrupted), 1);
  ASSERT_EQ(client.received2, SOCK_MAX_SIZE - 100);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  ASSERT_OK(uvs_server_close(fx.server, NULL));
}
BOTH(socket_writer_test_write)


/* Sync mode: bytes recv(2) took but could not queue (out of memory) end
 * the stream for good; the next read must not go on as if they never
 * came ("hello" lost, "world" read). */
static atomic_int enomem_step;
static ssize_t enomem_first;
static ssize_t enomem_second;

static int enomem_handle(uvs_conn_t* conn) {
  char buf[64];
  wait_step(&enomem_step, 1);
  sleep_ms(100); /* "hello" is in the socket */
  uvs__alloc_fail_after(0);
  enomem_first = uvs_recv(conn, buf, sizeof(buf));
  uvs__alloc_fail_after(-1);
  step(&enomem_step, 2);
  wait_step(&enomem_step, 3);
  enomem_second = uvs_recv(conn, buf, sizeof(buf));
  step(&enomem_step, 4); /* publishes both results */
  return 0;
}

static void sync_enomem_ends_stream(void) {
  fixture_t fx;
  ctx_t ctx;
  uvs_config_t config;
  int fd;

  atomic_store(&enomem_step, 0);
  config_for(&config, UVS_MODE_SYNC);
  start(&fx, &ctx, enomem_handle, &config, 1);
  fd = test_connect("127.0.0.1", fx.port);
  test_send_all(fd, "hello", 5);
  step(&enomem_step, 1);
  wait_step(&enomem_step, 2);
  test_send_all(fd, "world", 5);
  step(&enomem_step, 3);
  ASSERT_EQ(test_wait_eof(fd, WAIT_MS), 1);
  close(fd);
  wait_step(&enomem_step, 4);
  ASSERT_EQ(enomem_first, UV_ENOMEM);
  ASSERT_EQ(enomem_second, UV_ENOMEM);
  stop(&fx);
}


static const test_case_t cases[] = {
  CASES(readline_across_chunks),
  CASES(readline_at_cap),
  CASES(readline_over_cap),
  CASES(readline_eof_without_newline),
  CASES(readline_crlf),
  CASES(readline_einval),
  CASES(recv_buffered_then_eof),
  CASES(recv_waits_for_data),
  CASES(read_exact_short_at_eof),
  CASES(request_timeout_from_config),
  CASES(request_timeout_per_request),
  CASES(request_timeout_forever),
  CASES(sendall_timeout),
  CASES(write_buffered),
  CASES(conn_write_after_buffer),
  { "conn_write_buffer_counts_in_cap", conn_write_buffer_counts_in_cap },
  CASES(conn_write_after_close),
  CASES(write_unbuffered),
  CASES(disable_nagle_algorithm),
  { "direct_send_keeps_order", direct_send_keeps_order },
  { "direct_sends_are_not_idle", direct_sends_are_not_idle },
  { "idle_counts_from_last_byte", idle_counts_from_last_byte },
  { "cold_wait_frees_eventfd", cold_wait_frees_eventfd },
  { "wake_fds_within_budget", wake_fds_within_budget },
  { "readline_after_cold_wait", readline_after_cold_wait },
  { "zero_timeout_reads_what_is_there", zero_timeout_reads_what_is_there },
  { "direct_send_sees_reset", direct_send_sees_reset },
  { "event_mode_enotsup", event_mode_enotsup },
  { "backpressure_64mib", backpressure_64mib },
  CASES(reset_while_in_recv),
  { "close_cancels_recv", close_cancels_recv },
  { "blocking_recv_echo", blocking_recv_echo },
  { "loop_write_while_blocked", loop_write_while_blocked },
  { "close_reaches_blocking_recv", close_reaches_blocking_recv },
  { "abort_reaches_blocking_recv", abort_reaches_blocking_recv },
  { "idle_reaches_blocking_recv", idle_reaches_blocking_recv },
  CASES(socket_writer_test_write),
  { "sync_enomem_ends_stream", sync_enomem_ends_stream },
};

TEST_MAIN(cases)
