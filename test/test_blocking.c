/* SPDX-License-Identifier: MIT */
/*
 * Blocking-mode edge cases a review of the threading and sync modes found:
 * each case failed before its fix (lib/conn.c, lib/reqio.c, lib/server.c)
 * and names what it guards. The loop runs on the test thread (spin), the
 * clients are blocking sockets on the same thread, and handler results
 * travel through atomics.
 */
#define TEST_CASE_TIMEOUT 30
#include "test.h"

#include "internal.h"

#include <stdatomic.h>

#define WAIT_MS 10000


/* Runs `loop` for about `ms` milliseconds without blocking for long. */
static void spin(uv_loop_t* loop, int ms) {
  uint64_t end = test_now_ms() + (uint64_t) ms;
  while (test_now_ms() < end) {
    uv_run(loop, UV_RUN_NOWAIT);
    usleep(1000);
  }
}


/* Runs `loop` until *flag is set, failing after WAIT_MS. */
static void spin_until(uv_loop_t* loop, atomic_int* flag) {
  uint64_t end = test_now_ms() + WAIT_MS;
  while (!atomic_load(flag)) {
    if (test_now_ms() > end)
      TEST__FAIL("no event within %d ms", WAIT_MS);
    uv_run(loop, UV_RUN_NOWAIT);
    usleep(1000);
  }
}


static void quiet_error(uvs_server_t* server,
                        uvs_conn_t* conn,
                        const uvs_address_t* peer,
                        int status) {
}


static uvs_server_t* start_threading(uv_loop_t* loop,
                                     uvs_request_cb handle,
                                     uvs_config_t* config) {
  uvs_handler_t handler;
  uvs_server_t* server = NULL;

  memset(&handler, 0, sizeof(handler));
  handler.handle = handle;
  config->mode = UVS_MODE_THREADING;
  ASSERT_OK(
      uvs_server_new(loop, &server, "tcp://127.0.0.1:0", &handler, config));
  ASSERT_OK(uvs_server_start(server));
  return server;
}


/* ---- Accepting ------------------------------------------------------- */

/* The request side failing for lack of memory after the connection was
 * allocated must not leave a freed handle on the loop: the loop closes
 * cleanly and the server serves the next client. */
static atomic_int served;

static int count_served(uvs_conn_t* conn) {
  atomic_fetch_add(&served, 1);
  return 0;
}

static void accept_out_of_memory(void) {
  uv_loop_t loop;
  uvs_config_t config;
  uvs_server_t* server;
  int fd;

  atomic_store(&served, 0);
  ASSERT_OK(uv_loop_init(&loop));
  uvs_config_init(&config);
  config.hooks.handle_error = quiet_error;
  server = start_threading(&loop, count_served, &config);
  fd = test_connect("127.0.0.1", test_server_port(server));
  uvs__alloc_fail_after(1); /* the connection, not its request side */
  spin(&loop, 100);
  uvs__alloc_fail_after(-1);
  ASSERT_EQ(test_wait_eof(fd, WAIT_MS), 1);
  close(fd);
  ASSERT_EQ(atomic_load(&served), 0);
  fd = test_connect("127.0.0.1", test_server_port(server));
  spin_until(&loop, &served);
  close(fd);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
}


/* ---- Closing ---------------------------------------------------------- */

static atomic_int busy_started;
static atomic_int busy_returned;
static atomic_int busy_fd;
static _Atomic(uvs_conn_t*) busy_conn;

/* Reads one byte, then works outside uvs until told to stop; reports its
 * descriptor after the connection has gone. */
static atomic_int busy_release;

static int busy_handle(uvs_conn_t* conn) {
  char c;
  uint64_t end = test_now_ms() + WAIT_MS;
  ASSERT_EQ(uvs_recv(conn, &c, 1), 1);
  atomic_store(&busy_conn, conn);
  atomic_store(&busy_started, 1);
  while (!atomic_load(&busy_release) && test_now_ms() < end)
    usleep(1000);
  atomic_store(&busy_fd, uvs_conn_fileno(conn));
  atomic_store(&busy_returned, 1);
  return 0;
}

static void busy_reset(void) {
  atomic_store(&busy_conn, NULL);
  atomic_store(&busy_started, 0);
  atomic_store(&busy_returned, 0);
  atomic_store(&busy_release, 0);
  atomic_store(&busy_fd, 12345);
}


/* daemon_threads: a close does not wait for a busy handler, also when the
 * loop had closed that handler's connection already. A handler that does
 * not read does not see its peer's reset (the loop does not read while
 * the handler owns the socket), so another thread aborts it. */
static void daemon_close_after_abort(void) {
  uv_loop_t loop;
  uvs_config_t config;
  uvs_server_t* server;
  uint64_t start;
  int fd;

  busy_reset();
  ASSERT_OK(uv_loop_init(&loop));
  uvs_config_init(&config);
  config.daemon_threads = 1;
  config.hooks.handle_error = quiet_error;
  server = start_threading(&loop, busy_handle, &config);
  fd = test_connect("127.0.0.1", test_server_port(server));
  test_send_all(fd, "x", 1);
  spin_until(&loop, &busy_started);
  ASSERT_OK(uvs_conn_abort(atomic_load(&busy_conn)));
  spin(&loop, 200); /* the loop closes its side */
  ASSERT_EQ(test_wait_eof(fd, WAIT_MS), 1);
  close(fd);
  start = test_now_ms();
  ASSERT_OK(uvs_server_close(server, NULL));
  ASSERT_LT(test_now_ms() - start, 2000);
  ASSERT_EQ(atomic_load(&busy_returned), 0);
  atomic_store(&busy_release, 1);
  spin_until(&loop, &busy_returned);
  /* The detached worker frees the connection and the server, then exits;
   * give it a moment before the harness counts descriptors. */
  usleep(100000);
  test_loop_close(&loop);
}


/* A handler whose connection the loop has closed gets UV_EBADF from
 * uvs_conn_fileno, never a number another socket may have reused. */
static void fileno_after_close(void) {
  uv_loop_t loop;
  uvs_config_t config;
  uvs_server_t* server;
  int fd;
  int other;

  busy_reset();
  ASSERT_OK(uv_loop_init(&loop));
  uvs_config_init(&config);
  config.hooks.handle_error = quiet_error;
  server = start_threading(&loop, busy_handle, &config);
  fd = test_connect("127.0.0.1", test_server_port(server));
  test_send_all(fd, "x", 1);
  spin_until(&loop, &busy_started);
  ASSERT_OK(uvs_conn_abort(atomic_load(&busy_conn)));
  spin(&loop, 200);
  ASSERT_EQ(test_wait_eof(fd, WAIT_MS), 1);
  close(fd);
  other = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0); /* may reuse it */
  ASSERT_GE(other, 0);
  atomic_store(&busy_release, 1);
  spin_until(&loop, &busy_returned);
  ASSERT_EQ(atomic_load(&busy_fd), UV_EBADF);
  close(other);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
}


/* A handler returning the UV_ECANCELED of a server close reports no error
 * of its own: handle_error is not called. */
static atomic_int errors;

static void count_error(uvs_server_t* server,
                        uvs_conn_t* conn,
                        const uvs_address_t* peer,
                        int status) {
  atomic_fetch_add(&errors, 1);
}

static atomic_int reading;

static int readline_handle(uvs_conn_t* conn) {
  char line[64];
  ssize_t n;
  atomic_store(&reading, 1);
  n = uvs_readline(conn, line, sizeof(line));
  return n < 0 ? (int) n : 0;
}

static void cancel_is_not_an_error(void) {
  uv_loop_t loop;
  uvs_config_t config;
  uvs_server_t* server;
  int fd;

  atomic_store(&errors, 0);
  atomic_store(&reading, 0);
  ASSERT_OK(uv_loop_init(&loop));
  uvs_config_init(&config);
  config.hooks.handle_error = count_error;
  server = start_threading(&loop, readline_handle, &config);
  fd = test_connect("127.0.0.1", test_server_port(server));
  spin_until(&loop, &reading);
  spin(&loop, 50);
  ASSERT_OK(uvs_server_close(server, NULL));
  ASSERT_EQ(atomic_load(&errors), 0);
  close(fd);
  test_loop_close(&loop);
}


/* ---- Fan-out --------------------------------------------------------- */

/* Once its handler has returned, a connection is not visited by
 * uvs_server_foreach and writes to it fail instead of vanishing. */
static int visited;
static int late_write;

static void write_late(uvs_conn_t* conn, void* arg) {
  visited++;
  late_write = uvs_conn_write(conn, "late\n", 5);
}

static void foreach_skips_finished(void) {
  uv_loop_t loop;
  uvs_config_t config;
  uvs_server_t* server;
  int fd;

  atomic_store(&served, 0);
  visited = 0;
  late_write = 0;
  ASSERT_OK(uv_loop_init(&loop));
  uvs_config_init(&config);
  server = start_threading(&loop, count_served, &config);
  fd = test_connect("127.0.0.1", test_server_port(server));
  spin_until(&loop, &served);
  spin(&loop, 100); /* the loop closes it gracefully, lingering */
  ASSERT_EQ(uvs_server_foreach(server, write_late, NULL), 0);
  ASSERT_EQ(visited, 0);
  close(fd);
  spin(&loop, 50);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
}


/* Event mode: once a nocopy write took the queue past max_write_queue,
 * the next copying write is refused (the cap check must not wrap). */
static char* big;
static int cap_results[4];

static void no_free(void* data, void* arg) {
}

static void flood_open(uvs_conn_t* conn) {
  size_t i;
  ASSERT_OK(uvs_conn_write_nocopy(conn, big, (size_t) 8 << 20, no_free, NULL));
  for (i = 0; i < ARRAY_SIZE(cap_results); i++)
    cap_results[i] = uvs_conn_write(conn, big, 60000);
}

static void cap_after_nocopy(void) {
  uv_loop_t loop;
  uvs_handler_t handler;
  uvs_config_t config;
  uvs_server_t* server = NULL;
  int rcvbuf = 4096;
  int fd;

  big = calloc(1, (size_t) 8 << 20);
  ASSERT_NOT_NULL(big);
  memset(cap_results, 0x7f, sizeof(cap_results));
  ASSERT_OK(uv_loop_init(&loop));
  memset(&handler, 0, sizeof(handler));
  handler.on_open = flood_open;
  uvs_config_init(&config);
  config.max_write_queue = 65536;
  config.hooks.handle_error = quiet_error;
  ASSERT_OK(
      uvs_server_new(&loop, &server, "tcp://127.0.0.1:0", &handler, &config));
  ASSERT_OK(uvs_server_start(server));
  fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  ASSERT_OK(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)));
  {
    struct sockaddr_in in;
    memset(&in, 0, sizeof(in));
    in.sin_family = AF_INET;
    in.sin_port = htons((uint16_t) test_server_port(server));
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_OK(connect(fd, (struct sockaddr*) &in, sizeof(in)));
  }
  spin(&loop, 200);
  ASSERT_EQ(cap_results[0], UV_ENOBUFS);
  ASSERT_EQ(cap_results[1], UV_EPIPE);
  close(fd);
  spin(&loop, 50);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
  free(big);
}


/* ---- Stop results ---------------------------------------------------- */

/* A handler's UVS_ESTOP reported after serve_forever returned belongs to
 * no call: the next handle_request, whose request returns 0, returns 0. */
static atomic_int estop_calls;
static atomic_int estop_go;
static atomic_int estop_done;

static int estop_first(uvs_conn_t* conn) {
  uint64_t end = test_now_ms() + WAIT_MS;
  if (atomic_fetch_add(&estop_calls, 1) != 0)
    return 0;
  while (!atomic_load(&estop_go) && test_now_ms() < end)
    usleep(1000);
  atomic_store(&estop_done, 1);
  return UVS_ESTOP;
}

static void* serve_main(void* arg) {
  ASSERT_OK(uvs_server_serve_forever(arg, 0));
  return NULL;
}

static void* late_client(void* arg) {
  int fd = test_connect("127.0.0.1", *(int*) arg);
  test_wait_eof(fd, WAIT_MS);
  close(fd);
  return NULL;
}

static void stale_estop(void) {
  uvs_handler_t handler;
  uvs_config_t config;
  uvs_server_t* server = NULL;
  pthread_t thread;
  uint64_t end;
  int port;
  int fd;

  atomic_store(&estop_calls, 0);
  atomic_store(&estop_go, 0);
  atomic_store(&estop_done, 0);
  memset(&handler, 0, sizeof(handler));
  handler.handle = estop_first;
  uvs_config_init(&config);
  config.mode = UVS_MODE_THREADING;
  ASSERT_OK(
      uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, &config));
  port = test_server_port(server);
  ASSERT_OK(pthread_create(&thread, NULL, serve_main, server));
  fd = test_connect("127.0.0.1", port);
  end = test_now_ms() + WAIT_MS;
  while (atomic_load(&estop_calls) == 0 && test_now_ms() < end)
    usleep(1000);
  ASSERT_OK(uvs_server_shutdown(server));
  ASSERT_OK(pthread_join(thread, NULL));
  atomic_store(&estop_go, 1); /* the first handler returns UVS_ESTOP now */
  while (!atomic_load(&estop_done) && test_now_ms() < end)
    usleep(1000);
  usleep(50000);
  close(fd);
  ASSERT_OK(pthread_create(&thread, NULL, late_client, &port));
  ASSERT_OK(uvs_server_handle_request(server));
  ASSERT_OK(pthread_join(thread, NULL));
  ASSERT_OK(uvs_server_close(server, NULL));
}


static const test_case_t cases[] = {
  { "accept_out_of_memory", accept_out_of_memory },
  { "daemon_close_after_abort", daemon_close_after_abort },
  { "fileno_after_close", fileno_after_close },
  { "cancel_is_not_an_error", cancel_is_not_an_error },
  { "foreach_skips_finished", foreach_skips_finished },
  { "cap_after_nocopy", cap_after_nocopy },
  { "stale_estop", stale_estop },
};

TEST_MAIN(cases)
