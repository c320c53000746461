/* SPDX-License-Identifier: MIT */
/*
 * Event-mode connections (lib/conn.c): echo of binary and large payloads,
 * half-close, many concurrent clients, graceful close that flushes, abort,
 * read pause and resume, zero-copy writes, per-connection state and the
 * on_close statuses. The server runs serve_forever on its own thread; the
 * test thread is a blocking client.
 */
#include "test.h"

#include <stdatomic.h>

typedef struct {
  uvs_server_t* server;
  pthread_t thread;
  int port;
} running_t;

static atomic_int opened;
static atomic_int closed;
static atomic_int close_status;
static atomic_int state_was_zero;
static atomic_int frees;


static void* serve_thread(void* arg) {
  running_t* run = arg;
  if (uvs_server_serve_forever(run->server, 0) != 0)
    abort();
  return NULL;
}


static void start(running_t* run,
                  const char* address,
                  const uvs_handler_t* handler,
                  const uvs_config_t* config) {
  atomic_store(&opened, 0);
  atomic_store(&closed, 0);
  atomic_store(&close_status, 1);
  atomic_store(&state_was_zero, 1);
  atomic_store(&frees, 0);
  ASSERT_OK(uvs_server_new(NULL, &run->server, address, handler, config));
  run->port = test_server_port(run->server);
  ASSERT_EQ(pthread_create(&run->thread, NULL, serve_thread, run), 0);
}


static void stop(running_t* run) {
  ASSERT_OK(uvs_server_shutdown(run->server));
  ASSERT_EQ(pthread_join(run->thread, NULL), 0);
  ASSERT_OK(uvs_server_close(run->server, NULL));
}


static void wait_for(atomic_int* counter, int value) {
  uint64_t deadline = test_now_ms() + 10000;
  while (atomic_load(counter) < value) {
    if (test_now_ms() > deadline)
      TEST__FAIL("waited for %d, have %d", value, atomic_load(counter));
    usleep(1000);
  }
}


/* ---- The echo handler ------------------------------------------------ */

static void echo_open(uvs_conn_t* conn) {
  const unsigned char* state = uvs_conn_state(conn);
  size_t i;
  if (state != NULL) {
    for (i = 0; i < 64; i++) {
      if (state[i] != 0)
        atomic_store(&state_was_zero, 0);
    }
    memset(uvs_conn_state(conn), 0xab, 64);
  }
  atomic_fetch_add(&opened, 1);
}

static void echo_data(uvs_conn_t* conn, const char* data, size_t len) {
  if (uvs_conn_write(conn, data, len) != 0)
    abort();
  /* Backpressure: a client that does not read stops our reading. */
  if (uvs_conn_write_queue_size(conn) > (1u << 20))
    uvs_conn_read_stop(conn);
}

static void echo_drain(uvs_conn_t* conn) {
  uvs_conn_read_start(conn);
}

static void echo_close(uvs_conn_t* conn, int status) {
  atomic_store(&close_status, status);
  atomic_fetch_add(&closed, 1);
}

static uvs_handler_t echo_handler(void) {
  uvs_handler_t handler;
  memset(&handler, 0, sizeof(handler));
  handler.state_size = 64;
  handler.on_open = echo_open;
  handler.on_data = echo_data;
  handler.on_drain = echo_drain;
  handler.on_close = echo_close;
  return handler;
}


/* Sends `len` bytes from a second thread while this one reads the echo, so
 * neither side's socket buffer can fill up and stall the other. */
typedef struct {
  int fd;
  const char* data;
  size_t len;
  int shut;
} sender_t;

static void* send_thread(void* arg) {
  sender_t* s = arg;
  test_send_all(s->fd, s->data, s->len);
  if (s->shut)
    shutdown(s->fd, SHUT_WR);
  return NULL;
}

static void echo_exactly(int fd, const char* data, size_t len, int shut) {
  sender_t s = { fd, data, len, shut };
  pthread_t thread;
  char* got = malloc(len + 1);
  ASSERT_NOT_NULL(got);
  ASSERT_EQ(pthread_create(&thread, NULL, send_thread, &s), 0);
  ASSERT_EQ(test_recv_n(fd, got, len, 15000), (ssize_t) len);
  ASSERT_EQ(pthread_join(thread, NULL), 0);
  ASSERT_MEM_EQ(got, data, len);
  free(got);
}


/* Reads until the connection fails: it must be a reset, which may come
 * after bytes that were already on their way. */
static void expect_reset(int fd) {
  char buf[4096];
  ssize_t n;
  do {
    n = recv(fd, buf, sizeof(buf), 0);
  } while (n > 0);
  ASSERT_EQ(n, -1);
  ASSERT_EQ(errno, ECONNRESET);
}


/* ---- Cases ----------------------------------------------------------- */

static void echo_binary(void) {
  uvs_handler_t handler = echo_handler();
  running_t run;
  char bytes[256];
  int fd;
  int i;

  for (i = 0; i < 256; i++)
    bytes[i] = (char) i;
  start(&run, "tcp://127.0.0.1:0", &handler, NULL);
  fd = test_connect("127.0.0.1", run.port);
  echo_exactly(fd, bytes, sizeof(bytes), 0);
  echo_exactly(fd, bytes, 1, 0);
  close(fd);
  wait_for(&closed, 1);
  ASSERT_EQ(atomic_load(&close_status), 0);
  ASSERT_EQ(atomic_load(&state_was_zero), 1);
  stop(&run);
}


static void echo_8mib(void) {
  uvs_handler_t handler = echo_handler();
  size_t len = 8u << 20;
  char* data = malloc(len);
  running_t run;
  uint32_t x = 2463534242u;
  size_t i;
  int fd;

  ASSERT_NOT_NULL(data);
  for (i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    data[i] = (char) x;
  }
  start(&run, "tcp://127.0.0.1:0", &handler, NULL);
  fd = test_connect("127.0.0.1", run.port);
  echo_exactly(fd, data, len, 0);
  close(fd);
  stop(&run);
  free(data);
}


/* The client shuts down its write side and still receives every byte: the
 * peer's EOF does not discard pending output. Then the server closes. */
static void half_close(void) {
  uvs_handler_t handler = echo_handler();
  size_t len = 2u << 20;
  char* data = malloc(len);
  running_t run;
  int fd;

  ASSERT_NOT_NULL(data);
  memset(data, 'h', len);
  start(&run, "tcp://127.0.0.1:0", &handler, NULL);
  fd = test_connect("127.0.0.1", run.port);
  echo_exactly(fd, data, len, 1);
  ASSERT_EQ(test_wait_eof(fd, 5000), 1);
  close(fd);
  wait_for(&closed, 1);
  ASSERT_EQ(atomic_load(&close_status), 0);
  stop(&run);
  free(data);
}


static void ipv6_loopback(void) {
  uvs_handler_t handler = echo_handler();
  running_t run;
  char buf[UVS_ADDRSTRLEN];
  size_t size = sizeof(buf);
  int fd = socket(AF_INET6, SOCK_STREAM, 0);
  struct sockaddr_in6 probe;

  /* Skip where the machine has no IPv6 loopback. */
  memset(&probe, 0, sizeof(probe));
  probe.sin6_family = AF_INET6;
  probe.sin6_addr = in6addr_loopback;
  if (fd < 0 || bind(fd, (struct sockaddr*) &probe, sizeof(probe)) != 0) {
    if (fd >= 0)
      close(fd);
    printf("# SKIP no IPv6 loopback\n");
    return;
  }
  close(fd);
  start(&run, "tcp://[::1]:0", &handler, NULL);
  ASSERT_OK(uvs_server_address(run.server, buf, &size));
  ASSERT_EQ(strncmp(buf, "tcp://[::1]:", 12), 0);
  fd = test_connect("::1", run.port);
  echo_exactly(fd, "over six\n", 9, 0);
  close(fd);
  stop(&run);
}


#define NCLIENTS 200

static void concurrent_200(void) {
  uvs_handler_t handler = echo_handler();
  static int fds[NCLIENTS];
  running_t run;
  char msg[64];
  char got[64];
  int i;
  int n;

  start(&run, "tcp://127.0.0.1:0", &handler, NULL);
  for (i = 0; i < NCLIENTS; i++)
    fds[i] = test_connect("127.0.0.1", run.port);
  wait_for(&opened, NCLIENTS);
  ASSERT_EQ(uvs_server_connection_count(run.server), NCLIENTS);
  for (i = 0; i < NCLIENTS; i++) {
    n = snprintf(msg, sizeof(msg), "client %d says hello\n", i);
    test_send_all(fds[i], msg, (size_t) n);
  }
  for (i = 0; i < NCLIENTS; i++) {
    n = snprintf(msg, sizeof(msg), "client %d says hello\n", i);
    ASSERT_EQ(test_recv_n(fds[i], got, (size_t) n, 10000), n);
    ASSERT_MEM_EQ(got, msg, (size_t) n);
  }
  for (i = 0; i < NCLIENTS; i++)
    close(fds[i]);
  wait_for(&closed, NCLIENTS);
  stop(&run);
}


/* A handler that writes a lot and closes at once: the graceful close
 * flushes everything before the FIN. */
static void big_then_close_open(uvs_conn_t* conn) {
  size_t len = 4u << 20;
  char* data = malloc(len);
  if (data == NULL)
    abort();
  memset(data, 'z', len);
  if (uvs_conn_write(conn, data, len) != 0)
    abort();
  free(data);
  if (uvs_conn_close(conn) != 0)
    abort();
  /* Closing already: more output is refused, a second close is a no-op. */
  if (uvs_conn_write(conn, "x", 1) != UV_EPIPE)
    abort();
  if (uvs_conn_close(conn) != 0)
    abort();
  atomic_fetch_add(&opened, 1);
}

static void close_flushes(void) {
  uvs_handler_t handler = echo_handler();
  size_t len = 4u << 20;
  char* got = malloc(len);
  running_t run;
  size_t i;
  int fd;

  ASSERT_NOT_NULL(got);
  handler.on_open = big_then_close_open;
  start(&run, "tcp://127.0.0.1:0", &handler, NULL);
  fd = test_connect("127.0.0.1", run.port);
  ASSERT_EQ(test_recv_n(fd, got, len, 15000), (ssize_t) len);
  for (i = 0; i < len; i++) {
    if (got[i] != 'z')
      TEST__FAIL("byte %zu is %d", i, got[i]);
  }
  ASSERT_EQ(test_wait_eof(fd, 5000), 1);
  close(fd);
  wait_for(&closed, 1);
  ASSERT_EQ(atomic_load(&close_status), 0);
  stop(&run);
  free(got);
}


/* A graceful close waits for the peer's FIN (discarding its input) before
 * closing, so input the server never read does not turn into a reset that
 * destroys the reply. */
static void reply_then_close_data(uvs_conn_t* conn,
                                  const char* data,
                                  size_t len) {
  uvs_conn_write(conn, "bye\n", 4);
  uvs_conn_close(conn);
}

static void close_lingers_for_fin(void) {
  uvs_handler_t handler = echo_handler();
  static char junk[256 * 1024];
  running_t run;
  char got[4];
  int fd;

  handler.on_data = reply_then_close_data;
  start(&run, "tcp://127.0.0.1:0", &handler, NULL);
  fd = test_connect("127.0.0.1", run.port);
  /* More than the server reads before it closes. */
  memset(junk, 'j', sizeof(junk));
  test_send_all(fd, junk, sizeof(junk));
  ASSERT_EQ(test_recv_n(fd, got, 4, 5000), 4);
  ASSERT_MEM_EQ(got, "bye\n", 4);
  ASSERT_EQ(test_wait_eof(fd, 5000), 1);
  close(fd);
  wait_for(&closed, 1);
  ASSERT_EQ(atomic_load(&close_status), 0);
  stop(&run);
}


static void abort_open(uvs_conn_t* conn) {
  uvs_conn_write(conn, "doomed", 6);
  uvs_conn_abort(conn);
  if (uvs_conn_write(conn, "x", 1) != UV_EPIPE)
    abort();
  atomic_fetch_add(&opened, 1);
}

static void abort_resets(void) {
  uvs_handler_t handler = echo_handler();
  running_t run;
  int fd;

  handler.on_open = abort_open;
  start(&run, "tcp://127.0.0.1:0", &handler, NULL);
  fd = test_connect("127.0.0.1", run.port);
  wait_for(&closed, 1);
  ASSERT_EQ(atomic_load(&close_status), 0);
  expect_reset(fd);
  close(fd);
  stop(&run);
}


/* Paused reading delivers nothing until resumed, and nothing is lost. */
static atomic_int received;

static void pause_open(uvs_conn_t* conn) {
  uvs_conn_read_stop(conn);
  atomic_fetch_add(&opened, 1);
}

static void pause_data(uvs_conn_t* conn, const char* data, size_t len) {
  atomic_fetch_add(&received, (int) len);
  uvs_conn_write(conn, data, len);
}

static void pause_eof(uvs_conn_t* conn) {
  uvs_conn_close(conn);
}

/* The loop thread resumes on a timer started from on_open. */
static void on_resume_timer(uv_timer_t* timer) {
  uvs_conn_t* conn = uv_handle_get_data((uv_handle_t*) timer);
  ASSERT_OK(uvs_conn_read_start(conn));
  uv_close((uv_handle_t*) timer, (uv_close_cb) free);
}

static void pause_open_with_timer(uvs_conn_t* conn) {
  uv_timer_t* timer = malloc(sizeof(*timer));
  pause_open(conn);
  ASSERT_NOT_NULL(timer);
  uv_timer_init(uvs_server_loop(uvs_conn_server(conn)), timer);
  uv_handle_set_data((uv_handle_t*) timer, conn);
  uv_timer_start(timer, on_resume_timer, 300, 0);
}

static void read_pause_resume(void) {
  uvs_handler_t handler = echo_handler();
  running_t run;
  char got[5];
  int fd;

  atomic_store(&received, 0);
  handler.on_open = pause_open_with_timer;
  handler.on_data = pause_data;
  handler.on_eof = pause_eof;
  start(&run, "tcp://127.0.0.1:0", &handler, NULL);
  fd = test_connect("127.0.0.1", run.port);
  test_send_all(fd, "hello", 5);
  usleep(150 * 1000);
  ASSERT_EQ(atomic_load(&received), 0);
  ASSERT_EQ(test_recv_n(fd, got, 5, 5000), 5);
  ASSERT_MEM_EQ(got, "hello", 5);
  ASSERT_EQ(atomic_load(&received), 5);
  shutdown(fd, SHUT_WR);
  ASSERT_EQ(test_wait_eof(fd, 5000), 1);
  close(fd);
  wait_for(&closed, 1);
  stop(&run);
}


/* Zero-copy writes: the free callback runs exactly once per write, sent or
 * queued, and the bytes arrive intact. */
static void count_free(void* data, void* arg) {
  ASSERT_PTR_EQ(arg, &frees);
  free(data);
  atomic_fetch_add(&frees, 1);
}

static void nocopy_open(uvs_conn_t* conn) {
  size_t sizes[] = { 10, 3u << 20, 0, 5 };
  size_t i;
  for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
    char* data = malloc(sizes[i] + 1);
    if (data == NULL)
      abort();
    memset(data, (int) ('a' + i), sizes[i]);
    if (uvs_conn_write_nocopy(conn, data, sizes[i], count_free, &frees) != 0)
      abort();
  }
  uvs_conn_close(conn);
  atomic_fetch_add(&opened, 1);
}

static void write_nocopy(void) {
  uvs_handler_t handler = echo_handler();
  size_t len = 10 + (3u << 20) + 5;
  char* got = malloc(len);
  running_t run;
  int fd;

  ASSERT_NOT_NULL(got);
  handler.on_open = nocopy_open;
  start(&run, "tcp://127.0.0.1:0", &handler, NULL);
  fd = test_connect("127.0.0.1", run.port);
  ASSERT_EQ(test_recv_n(fd, got, len, 10000), (ssize_t) len);
  ASSERT_EQ(got[0], 'a');
  ASSERT_EQ(got[10], 'b');
  ASSERT_EQ(got[len - 6], 'b');
  ASSERT_EQ(got[len - 5], 'd');
  ASSERT_EQ(got[len - 1], 'd');
  ASSERT_EQ(test_wait_eof(fd, 5000), 1);
  close(fd);
  wait_for(&closed, 1);
  ASSERT_EQ(atomic_load(&frees), 4);
  stop(&run);
  free(got);
}


/* A peer that resets while the server still has output queued ends the
 * connection with an error: on_close gets it, handle_error sees it once. */
static atomic_int errors;
static atomic_int error_status;

static void count_error(uvs_server_t* server,
                        uvs_conn_t* conn,
                        const uvs_address_t* peer,
                        int status) {
  ASSERT_NOT_NULL(conn);
  ASSERT_NOT_NULL(peer);
  atomic_store(&error_status, status);
  atomic_fetch_add(&errors, 1);
}

static void flood_open(uvs_conn_t* conn) {
  size_t len = 16u << 20;
  char* data = calloc(1, len);
  if (data == NULL)
    abort();
  uvs_conn_write(conn, data, len);
  free(data);
  atomic_fetch_add(&opened, 1);
}

static void reset_mid_write(void) {
  uvs_handler_t handler = echo_handler();
  uvs_config_t config;
  struct linger lg = { 1, 0 };
  running_t run;
  int fd;

  atomic_store(&errors, 0);
  uvs_config_init(&config);
  config.hooks.handle_error = count_error;
  handler.on_open = flood_open;
  start(&run, "tcp://127.0.0.1:0", &handler, &config);
  fd = test_connect("127.0.0.1", run.port);
  wait_for(&opened, 1);
  ASSERT_EQ(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
  close(fd);
  wait_for(&closed, 1);
  ASSERT_EQ(atomic_load(&errors), 1);
  ASSERT_LT(atomic_load(&close_status), 0);
  ASSERT_EQ(atomic_load(&close_status), atomic_load(&error_status));
  stop(&run);
}


/* A graceful close to a peer that never reads cannot hold the connection
 * and its output forever: past close_timeout_ms it is reset, with
 * UV_ETIMEDOUT. */
static void flood_then_close_open(uvs_conn_t* conn) {
  flood_open(conn);
  uvs_conn_close(conn);
}

static void close_times_out_on_stalled_peer(void) {
  uvs_handler_t handler = echo_handler();
  uvs_config_t config;
  running_t run;
  uint64_t started;
  int fd;

  atomic_store(&errors, 0);
  uvs_config_init(&config);
  config.close_timeout_ms = 300;
  config.hooks.handle_error = count_error;
  handler.on_open = flood_then_close_open;
  start(&run, "tcp://127.0.0.1:0", &handler, &config);
  started = test_now_ms();
  fd = test_connect("127.0.0.1", run.port);
  wait_for(&closed, 1);
  ASSERT_GE(test_now_ms() - started, 250);
  ASSERT_EQ(atomic_load(&close_status), UV_ETIMEDOUT);
  ASSERT_EQ(atomic_load(&errors), 1);
  expect_reset(fd);
  close(fd);
  stop(&run);
}


static const test_case_t cases[] = {
  { "close_times_out_on_stalled_peer", close_times_out_on_stalled_peer },
  { "echo_binary", echo_binary },
  { "echo_8mib", echo_8mib },
  { "half_close", half_close },
  { "ipv6_loopback", ipv6_loopback },
  { "concurrent_200", concurrent_200 },
  { "close_flushes", close_flushes },
  { "close_lingers_for_fin", close_lingers_for_fin },
  { "abort_resets", abort_resets },
  { "read_pause_resume", read_pause_resume },
  { "write_nocopy", write_nocopy },
  { "reset_mid_write", reset_mid_write },
};

TEST_MAIN(cases)
