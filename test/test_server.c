/* SPDX-License-Identifier: MIT */
/*
 * The server's lifecycle (lib/server.c, lib/listen_stream.c): binding port
 * 0, bind and activate called separately, verify_request before any
 * allocation, server_close with open connections, embedding on the
 * caller's loop next to its own timer, closing from inside a callback, and
 * the accept back-off when descriptors run out.
 */
#include "test.h"

#include "internal.h"

#include <stdatomic.h>
#include <sys/resource.h>

static atomic_int opened;
static atomic_int closed;
static atomic_int cancelled;
static atomic_int errors;
static atomic_int last_error;


static void echo_open(uvs_conn_t* conn) {
  atomic_fetch_add(&opened, 1);
}

static void echo_data(uvs_conn_t* conn, const char* data, size_t len) {
  uvs_conn_write(conn, data, len);
}

static void echo_close(uvs_conn_t* conn, int status) {
  if (status == UV_ECANCELED)
    atomic_fetch_add(&cancelled, 1);
  atomic_fetch_add(&closed, 1);
}

static void count_error(uvs_server_t* server,
                        uvs_conn_t* conn,
                        const uvs_address_t* peer,
                        int status) {
  atomic_store(&last_error, status);
  atomic_fetch_add(&errors, 1);
}

static uvs_handler_t echo_handler(void) {
  uvs_handler_t handler;
  memset(&handler, 0, sizeof(handler));
  handler.on_open = echo_open;
  handler.on_data = echo_data;
  handler.on_close = echo_close;
  return handler;
}

static void reset_counters(void) {
  atomic_store(&opened, 0);
  atomic_store(&closed, 0);
  atomic_store(&cancelled, 0);
  atomic_store(&errors, 0);
  atomic_store(&last_error, 0);
}

/* Runs `loop` until `*flag` reaches `value` (10 s at most). */
static void run_until(uv_loop_t* loop, atomic_int* flag, int value) {
  uint64_t deadline = test_now_ms() + 10000;
  while (atomic_load(flag) < value) {
    if (test_now_ms() > deadline)
      TEST__FAIL("waited for %d, have %d", value, atomic_load(flag));
    uv_run(loop, UV_RUN_NOWAIT);
    usleep(500);
  }
}

/* Sends `msg` and runs `loop` until its echo is back: for clients on the
 * loop's own thread. */
static void echo_on_loop(uv_loop_t* loop, int fd, const char* msg) {
  uint64_t deadline = test_now_ms() + 10000;
  size_t len = strlen(msg);
  size_t got = 0;
  char buf[64];
  test_send_all(fd, msg, len);
  while (got < len) {
    ssize_t n = recv(fd, buf + got, len - got, MSG_DONTWAIT);
    if (n > 0)
      got += (size_t) n;
    ASSERT_LT(test_now_ms(), deadline);
    uv_run(loop, UV_RUN_NOWAIT);
    usleep(200);
  }
  ASSERT_MEM_EQ(buf, msg, len);
}

static void echo_once(int fd, const char* msg) {
  char got[64];
  size_t len = strlen(msg);
  test_send_all(fd, msg, len);
  ASSERT_EQ(test_recv_n(fd, got, len, 5000), (ssize_t) len);
  ASSERT_MEM_EQ(got, msg, len);
}


/* ---- Cases ----------------------------------------------------------- */

/* Port 0 becomes a real port, reported in the address and matching the
 * socket's own name (CPython asserts server_address == getsockname()). */
static void bind_port_zero(void) {
  uvs_handler_t handler = echo_handler();
  uvs_server_t* server;
  struct sockaddr_in sin;
  socklen_t len = sizeof(sin);
  char buf[UVS_ADDRSTRLEN];
  size_t size = sizeof(buf);
  char small[8];
  size_t small_size = sizeof(small);
  int port;

  ASSERT_OK(uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, 0));
  ASSERT_OK(uvs_server_address(server, buf, &size));
  ASSERT_EQ(size, strlen(buf));
  ASSERT_EQ(strncmp(buf, "tcp://127.0.0.1:", 16), 0);
  port = atoi(buf + 16);
  ASSERT_GT(port, 0);
  ASSERT_GE(uvs_server_fileno(server), 0);
  ASSERT_EQ(
      getsockname(uvs_server_fileno(server), (struct sockaddr*) &sin, &len),
      0);
  ASSERT_EQ(ntohs(sin.sin_port), port);
  ASSERT_ERR(uvs_server_address(server, small, &small_size), UV_ENOBUFS);
  ASSERT_EQ(small_size, strlen(buf) + 1);
  ASSERT_OK(uvs_server_close(server, NULL));
}


/* bind_and_activate = 0: the socket exists unbound; the caller binds and
 * activates, and may set options in between. */
static void bind_and_activate_separately(void) {
  uvs_handler_t handler = echo_handler();
  uvs_config_t config;
  uvs_server_t* server;
  uv_loop_t loop;
  char buf[UVS_ADDRSTRLEN];
  size_t size = sizeof(buf);
  int fd;
  int on = 1;

  reset_counters();
  ASSERT_OK(uv_loop_init(&loop));
  uvs_config_init(&config);
  config.bind_and_activate = 0;
  ASSERT_OK(
      uvs_server_new(&loop, &server, "tcp://127.0.0.1:0", &handler, &config));
  ASSERT_ERR(uvs_server_address(server, buf, &size), UV_EINVAL);
  ASSERT_ERR(uvs_server_activate(server), UV_EINVAL);
  ASSERT_GE(uvs_server_fileno(server), 0);
  ASSERT_EQ(setsockopt(uvs_server_fileno(server),
                       SOL_SOCKET,
                       SO_KEEPALIVE,
                       &on,
                       sizeof(on)),
            0);
  ASSERT_OK(uvs_server_bind(server));
  ASSERT_ERR(uvs_server_bind(server), UV_EALREADY);
  ASSERT_OK(uvs_server_activate(server));
  ASSERT_ERR(uvs_server_activate(server), UV_EALREADY);
  ASSERT_OK(uvs_server_start(server));
  ASSERT_OK(uvs_server_start(server));
  fd = test_connect("127.0.0.1", test_server_port(server));
  test_send_all(fd, "x", 1);
  run_until(&loop, &opened, 1);
  close(fd);
  run_until(&loop, &closed, 1);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
}


/* verify_request rejects before uvs allocates anything for the connection;
 * the client sees EOF at once; shutdown_request runs once; the server goes
 * on serving. */
static unsigned long allocs_at_verify;
static atomic_int verified;
static atomic_int shutdowns;
static atomic_int rejected_without_alloc;

static int reject_first(uvs_server_t* server, const uvs_address_t* peer) {
  char buf[UVS_ADDRSTRLEN];
  size_t size = sizeof(buf);
  ASSERT_OK(uvs_address_format(peer, buf, &size));
  ASSERT_EQ(strncmp(buf, "tcp://127.0.0.1:", 16), 0);
  allocs_at_verify = uvs__alloc_count();
  return atomic_fetch_add(&verified, 1) > 0;
}

static void count_shutdown(uvs_server_t* server,
                           uv_os_sock_t fd,
                           const uvs_address_t* peer) {
  ASSERT_GE(fd, 0);
  if (atomic_load(&shutdowns) == 0 && uvs__alloc_count() == allocs_at_verify)
    atomic_store(&rejected_without_alloc, 1);
  atomic_fetch_add(&shutdowns, 1);
}

static void verify_request_rejects(void) {
  uvs_handler_t handler = echo_handler();
  uvs_config_t config;
  uvs_server_t* server;
  uv_loop_t loop;
  char byte;
  int fd;

  reset_counters();
  atomic_store(&verified, 0);
  atomic_store(&shutdowns, 0);
  atomic_store(&rejected_without_alloc, 0);
  ASSERT_OK(uv_loop_init(&loop));
  uvs_config_init(&config);
  config.hooks.verify_request = reject_first;
  config.hooks.shutdown_request = count_shutdown;
  ASSERT_OK(
      uvs_server_new(&loop, &server, "tcp://127.0.0.1:0", &handler, &config));
  ASSERT_OK(uvs_server_start(server));

  fd = test_connect("127.0.0.1", test_server_port(server));
  run_until(&loop, &shutdowns, 1);
  ASSERT_EQ(recv(fd, &byte, 1, 0), 0); /* EOF at once */
  close(fd);
  ASSERT_EQ(atomic_load(&rejected_without_alloc), 1);
  ASSERT_EQ(atomic_load(&opened), 0);
  ASSERT_EQ(uvs_server_connection_count(server), 0);

  fd = test_connect("127.0.0.1", test_server_port(server));
  test_send_all(fd, "ok", 2);
  run_until(&loop, &opened, 1);
  close(fd);
  run_until(&loop, &closed, 1);
  ASSERT_EQ(atomic_load(&shutdowns), 2);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
}


/* server_close with connections open: each gets on_close(UV_ECANCELED),
 * every descriptor is closed (the harness compares /proc/self/fd) and the
 * loop has nothing left. */
static void close_with_open_connections(void) {
  uvs_handler_t handler = echo_handler();
  uvs_server_t* server;
  uv_loop_t loop;
  int fds[10];
  int port;
  int i;

  reset_counters();
  ASSERT_OK(uv_loop_init(&loop));
  ASSERT_OK(uvs_server_new(&loop, &server, "tcp://127.0.0.1:0", &handler, 0));
  ASSERT_OK(uvs_server_start(server));
  port = test_server_port(server);
  for (i = 0; i < 10; i++)
    fds[i] = test_connect("127.0.0.1", port);
  run_until(&loop, &opened, 10);
  ASSERT_EQ(uvs_server_connection_count(server), 10);
  ASSERT_OK(uvs_server_close(server, NULL));
  ASSERT_EQ(atomic_load(&closed), 10);
  ASSERT_EQ(atomic_load(&cancelled), 10);
  ASSERT_EQ(atomic_load(&errors), 0);
  for (i = 0; i < 10; i++) {
    ASSERT_EQ(test_wait_eof(fds[i], 5000), 1);
    close(fds[i]);
  }
  test_loop_close(&loop);
}


/* Embedding: the caller's loop runs the caller's timer and the server side
 * by side under the caller's uv_run; the server closes from inside the
 * timer callback with the asynchronous form. */
typedef struct {
  uvs_server_t* server;
  uv_timer_t timer;
  int ticks;
  int port;
  atomic_int client_done;
  int server_closed;
} embed_t;

static void* embed_client(void* arg) {
  embed_t* e = arg;
  int fd = test_connect("127.0.0.1", e->port);
  echo_once(fd, "embedded\n");
  close(fd);
  atomic_store(&e->client_done, 1);
  return NULL;
}

static void on_embed_closed(uvs_server_t* server) {
  embed_t* e = uvs_server_get_data(server);
  e->server_closed = 1;
}

static void on_embed_tick(uv_timer_t* timer) {
  embed_t* e = container_of(timer, embed_t, timer);
  e->ticks++;
  if (e->ticks >= 5 && atomic_load(&e->client_done) &&
      atomic_load(&closed) == 1) {
    ASSERT_OK(uvs_server_close(e->server, on_embed_closed));
    uv_close((uv_handle_t*) timer, NULL);
  }
}

static void embed_next_to_timer(void) {
  uvs_handler_t handler = echo_handler();
  uv_loop_t loop;
  pthread_t client;
  embed_t e;

  reset_counters();
  memset(&e, 0, sizeof(e));
  ASSERT_OK(uv_loop_init(&loop));
  ASSERT_OK(
      uvs_server_new(&loop, &e.server, "tcp://127.0.0.1:0", &handler, NULL));
  uvs_server_set_data(e.server, &e);
  ASSERT_PTR_EQ(uvs_server_get_data(e.server), &e);
  ASSERT_PTR_EQ(uvs_server_loop(e.server), &loop);
  ASSERT_OK(uvs_server_start(e.server));
  e.port = test_server_port(e.server);
  ASSERT_OK(uv_timer_init(&loop, &e.timer));
  ASSERT_OK(uv_timer_start(&e.timer, on_embed_tick, 5, 5));
  ASSERT_EQ(pthread_create(&client, NULL, embed_client, &e), 0);
  ASSERT_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ASSERT_EQ(pthread_join(client, NULL), 0);
  ASSERT_EQ(e.server_closed, 1);
  ASSERT_GE(e.ticks, 5);
  test_loop_close(&loop);
}


/* A server on the caller's loop that is never started keeps that loop from
 * nothing: uv_run returns at once. */
static void idle_server_does_not_hold_loop(void) {
  uvs_handler_t handler = echo_handler();
  uvs_server_t* server;
  uv_loop_t loop;

  ASSERT_OK(uv_loop_init(&loop));
  ASSERT_OK(uvs_server_new(&loop, &server, "tcp://127.0.0.1:0", &handler, 0));
  ASSERT_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ASSERT_OK(uvs_server_start(server));
  ASSERT_OK(uvs_server_stop(server));
  ASSERT_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
}


/* uvs_server_close(server, NULL) from inside one of the server's own
 * callbacks completes once the callback returns; the connection's
 * on_close still runs, with UV_ECANCELED. */
static void close_in_data(uvs_conn_t* conn, const char* data, size_t len) {
  ASSERT_OK(uvs_server_close(uvs_conn_server(conn), NULL));
  /* The connection is still valid for the rest of this callback. */
  ASSERT_ERR(uvs_conn_write(conn, data, len), UV_EPIPE);
}

static void close_from_callback(void) {
  uvs_handler_t handler = echo_handler();
  uvs_server_t* server;
  uv_loop_t loop;
  int fd;

  reset_counters();
  handler.on_data = close_in_data;
  ASSERT_OK(uv_loop_init(&loop));
  ASSERT_OK(uvs_server_new(&loop, &server, "tcp://127.0.0.1:0", &handler, 0));
  ASSERT_OK(uvs_server_start(server));
  fd = test_connect("127.0.0.1", test_server_port(server));
  test_send_all(fd, "bye", 3);
  ASSERT_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ASSERT_EQ(atomic_load(&cancelled), 1);
  ASSERT_EQ(test_wait_eof(fd, 5000), 1);
  close(fd);
  test_loop_close(&loop);
}


/* Descriptors run out: accept fails with EMFILE. The server must not spin
 * (it pauses accepting and retries about once a second), reports the burst
 * once, and serves again when descriptors come back. */
static void accept_backs_off_on_emfile(void) {
  uvs_handler_t handler = echo_handler();
  uvs_config_t config;
  uvs_server_t* server;
  uv_loop_t loop;
  struct rlimit old_limit;
  struct rlimit limit;
  struct sockaddr_in sin;
  uint64_t until;
  int clients[3];
  int spare;
  int port;
  int i;

  /* valgrind keeps RLIMIT_NOFILE to itself and closes an accepted
   * descriptor above it: the connection is lost, not deferred. */
  if (getenv("UVS_TEST_VALGRIND") != NULL) {
    printf("# SKIP valgrind virtualizes RLIMIT_NOFILE\n");
    return;
  }
  reset_counters();
  ASSERT_OK(uv_loop_init(&loop));
  uvs_config_init(&config);
  config.hooks.handle_error = count_error;
  ASSERT_OK(
      uvs_server_new(&loop, &server, "tcp://127.0.0.1:0", &handler, &config));
  ASSERT_OK(uvs_server_start(server));
  port = test_server_port(server);
  memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  sin.sin_port = htons((uint16_t) port);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

  /* Make the client sockets first, then cap descriptors just above the
   * highest one in use: connect needs no new descriptor, accept does. */
  spare = -1;
  for (i = 0; i < 3; i++) {
    clients[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(clients[i], 0);
    if (clients[i] > spare)
      spare = clients[i];
  }
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old_limit), 0);
  limit = old_limit;
  limit.rlim_cur = (rlim_t) spare + 1;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &limit), 0);
  for (i = 0; i < 3; i++) {
    ASSERT_EQ(connect(clients[i], (struct sockaddr*) &sin, sizeof(sin)), 0);
  }

  /* 300 ms of a readable listener that cannot accept. */
  until = test_now_ms() + 300;
  while (test_now_ms() < until) {
    uv_run(&loop, UV_RUN_NOWAIT);
    usleep(1000);
  }
  ASSERT_EQ(atomic_load(&errors), 1);
  ASSERT_EQ(atomic_load(&last_error), UV_EMFILE);
  /* Paused, not spinning: at most the first try and one retry. */
  ASSERT_LE(server->stats.accept_errors, 2);
  ASSERT_EQ(atomic_load(&opened), 0);

  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &old_limit), 0);
  run_until(&loop, &opened, 3);
  for (i = 0; i < 3; i++) {
    echo_on_loop(&loop, clients[i], "back\n");
    close(clients[i]);
  }
  run_until(&loop, &closed, 3);
  ASSERT_EQ(atomic_load(&errors), 1);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
}


/* A burst of clients that connect and reset before being accepted is
 * absorbed: the live client behind them is served. */
static void reset_before_accept(void) {
  uvs_handler_t handler = echo_handler();
  uvs_config_t config;
  uvs_server_t* server;
  uv_loop_t loop;
  struct linger lg = { 1, 0 };
  int port;
  int fd;
  int i;

  reset_counters();
  ASSERT_OK(uv_loop_init(&loop));
  uvs_config_init(&config);
  config.hooks.handle_error = count_error;
  ASSERT_OK(
      uvs_server_new(&loop, &server, "tcp://127.0.0.1:0", &handler, &config));
  port = test_server_port(server);
  for (i = 0; i < 50; i++) {
    fd = test_connect("127.0.0.1", port);
    ASSERT_EQ(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
    close(fd);
  }
  ASSERT_OK(uvs_server_start(server));
  fd = test_connect("127.0.0.1", port);
  test_send_all(fd, "z", 1);
  /* Every connection is accepted or skipped; the live one is served. */
  {
    uint64_t deadline = test_now_ms() + 10000;
    char c = 0;
    while (recv(fd, &c, 1, MSG_DONTWAIT) != 1) {
      ASSERT_LT(test_now_ms(), deadline);
      uv_run(&loop, UV_RUN_NOWAIT);
      usleep(500);
    }
    ASSERT_EQ(c, 'z');
  }
  /* Those accepted before their reset was seen end with an error each. */
  ASSERT_LE(atomic_load(&errors), 50);
  close(fd);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
}


/* The default handle_error writes exactly one line per failed request,
 * naming the peer and the error. */
static void flood_open(uvs_conn_t* conn) {
  size_t len = 16u << 20;
  char* data = calloc(1, len);
  ASSERT_NOT_NULL(data);
  uvs_conn_write(conn, data, len);
  free(data);
  atomic_fetch_add(&opened, 1);
}

static void default_handle_error_logs_once(void) {
  uvs_handler_t handler = echo_handler();
  struct linger lg = { 1, 0 };
  uvs_server_t* server;
  uv_loop_t loop;
  char path[] = "/tmp/uvs-test-stderr-XXXXXX";
  char text[1024];
  char want[64];
  int saved;
  int log;
  int fd;
  ssize_t n;
  char* line2;

  reset_counters();
  handler.on_open = flood_open;
  log = mkstemp(path);
  ASSERT_GE(log, 0);
  unlink(path);
  saved = dup(2);
  ASSERT_GE(saved, 0);
  ASSERT_EQ(dup2(log, 2), 2);

  ASSERT_OK(uv_loop_init(&loop));
  ASSERT_OK(uvs_server_new(&loop, &server, "tcp://127.0.0.1:0", &handler, 0));
  ASSERT_OK(uvs_server_start(server));
  /* 16 MiB is more than the socket buffers hold: output stays queued. */
  fd = test_connect("127.0.0.1", test_server_port(server));
  run_until(&loop, &opened, 1);
  ASSERT_EQ(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
  snprintf(want,
           sizeof(want),
           "%s",
           "uvs: error processing request from tcp://127.0.0.1:");
  close(fd);
  run_until(&loop, &closed, 1);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);

  ASSERT_EQ(dup2(saved, 2), 2);
  close(saved);
  n = pread(log, text, sizeof(text) - 1, 0);
  close(log);
  ASSERT_GT(n, 0);
  text[n] = '\0';
  printf("# logged: %s", text);
  ASSERT_EQ(strncmp(text, want, strlen(want)), 0);
  ASSERT_TRUE(strstr(text, "(ECONNRESET)\n") != NULL ||
              strstr(text, "(EPIPE)\n") != NULL);
  line2 = strchr(text, '\n');
  ASSERT_NOT_NULL(line2);
  ASSERT_EQ(line2[1], '\0');
}


/* A shutdown from another thread, then close as soon as serve_forever
 * returns (Python's usual pattern): the shutdown caller may still be
 * leaving, and close must not free the server under it. */
static void* shutdown_thread(void* arg) {
  ASSERT_OK(uvs_server_shutdown(arg));
  return NULL;
}

static void close_right_after_shutdown(void) {
  uvs_handler_t handler = echo_handler();
  uvs_server_t* server;
  pthread_t thread;
  int i;

  for (i = 0; i < 200; i++) {
    ASSERT_OK(uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, 0));
    ASSERT_EQ(pthread_create(&thread, NULL, shutdown_thread, server), 0);
    ASSERT_OK(uvs_server_serve_forever(server, 0));
    ASSERT_OK(uvs_server_close(server, NULL));
    ASSERT_EQ(pthread_join(thread, NULL), 0);
  }
}


/* A serving thread that restarts serve_forever at once: each shutdown
 * returns when the run it stopped has returned, never waiting for the
 * next run. */
static atomic_int restart_done;
static atomic_int restart_exited;
static atomic_int restart_runs;

static void* restart_thread(void* arg) {
  while (!atomic_load(&restart_done)) {
    ASSERT_OK(uvs_server_serve_forever(arg, 0));
    atomic_fetch_add(&restart_runs, 1);
  }
  atomic_store(&restart_exited, 1);
  return NULL;
}

static bool is_serving(uvs_server_t* server) {
  bool serving;
  uv_mutex_lock(&server->lock);
  serving = server->serve_state == UVS__SERVING;
  uv_mutex_unlock(&server->lock);
  return serving;
}

static void shutdown_with_restarts(void) {
  uvs_handler_t handler = echo_handler();
  uvs_server_t* server;
  pthread_t thread;
  uint64_t deadline;
  int i;

  atomic_store(&restart_done, 0);
  atomic_store(&restart_exited, 0);
  atomic_store(&restart_runs, 0);
  ASSERT_OK(uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, 0));
  ASSERT_EQ(pthread_create(&thread, NULL, restart_thread, server), 0);
  for (i = 0; i < 100; i++) {
    deadline = test_now_ms() + 5000;
    while (!is_serving(server)) {
      ASSERT_LT(test_now_ms(), deadline);
      sched_yield();
    }
    ASSERT_OK(uvs_server_shutdown(server));
  }
  /* Each shutdown returned once its run had ended; the serving thread
   * counts the run just after serve_forever returns. */
  deadline = test_now_ms() + 5000;
  while (atomic_load(&restart_runs) < 100) {
    ASSERT_LT(test_now_ms(), deadline);
    sched_yield();
  }
  atomic_store(&restart_done, 1);
  while (!atomic_load(&restart_exited)) {
    ASSERT_OK(uvs_server_shutdown(server));
    usleep(1000);
  }
  ASSERT_EQ(pthread_join(thread, NULL), 0);
  ASSERT_OK(uvs_server_close(server, NULL));
}


/* A server on a loop of its own, run by hand, closed from inside its own
 * callback: that would free the loop under uv_run, so it is refused. So
 * are serve_forever and handle_request from inside any callback, which
 * would run a loop inside a loop. */
static uvs_server_t* other_server;

static void refuse_in_data(uvs_conn_t* conn, const char* data, size_t len) {
  uvs_server_t* server = uvs_conn_server(conn);
  ASSERT_ERR(uvs_server_close(server, NULL), UV_EBUSY);
  ASSERT_ERR(uvs_server_serve_forever(server, 0), UV_EBUSY);
  ASSERT_ERR(uvs_server_handle_request(server), UV_EBUSY);
  ASSERT_ERR(uvs_server_serve_forever(other_server, 0), UV_EBUSY);
  ASSERT_ERR(uvs_server_handle_request(other_server), UV_EBUSY);
  uvs_server_stop(server);
  uvs_conn_abort(conn);
  atomic_fetch_add(&cancelled, 1);
}

static void no_loop_inside_a_loop(void) {
  uvs_handler_t handler = echo_handler();
  uvs_server_t* server;
  int fd;

  reset_counters();
  handler.on_data = refuse_in_data;
  ASSERT_OK(uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, 0));
  ASSERT_OK(
      uvs_server_new(NULL, &other_server, "tcp://127.0.0.1:0", &handler, 0));
  ASSERT_OK(uvs_server_start(server));
  fd = test_connect("127.0.0.1", test_server_port(server));
  test_send_all(fd, "x", 1);
  ASSERT_EQ(uv_run(uvs_server_loop(server), UV_RUN_DEFAULT), 0);
  ASSERT_EQ(atomic_load(&cancelled), 1); /* refuse_in_data ran */
  close(fd);
  ASSERT_OK(uvs_server_close(server, NULL));
  ASSERT_OK(uvs_server_close(other_server, NULL));
}


/* handle_request blocks, not spins, while its one connection has paused
 * reading (no handle is active then): a check handle counts the loop's
 * iterations over 200 ms. */
static atomic_int iterations;

static void count_iteration(uv_check_t* check) {
  atomic_fetch_add(&iterations, 1);
}

static void close_paused(uv_timer_t* timer) {
  uvs_conn_close(uv_handle_get_data((uv_handle_t*) timer));
  uv_close((uv_handle_t*) timer, (uv_close_cb) free);
}

static void pause_in_open(uvs_conn_t* conn) {
  uv_loop_t* loop = uvs_server_loop(uvs_conn_server(conn));
  uv_timer_t* timer = malloc(sizeof(*timer));
  ASSERT_NOT_NULL(timer);
  ASSERT_OK(uvs_conn_read_stop(conn));
  uv_timer_init(loop, timer);
  uv_handle_set_data((uv_handle_t*) timer, conn);
  uv_timer_start(timer, close_paused, 200, 0);
  uv_unref((uv_handle_t*) timer); /* the timer alone keeps nothing alive */
}

static void handle_request_blocks_while_paused(void) {
  uvs_handler_t handler = echo_handler();
  uvs_server_t* server;
  uv_check_t check;
  int fd;

  handler.on_open = pause_in_open;
  atomic_store(&iterations, 0);
  ASSERT_OK(uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, 0));
  ASSERT_OK(uv_check_init(uvs_server_loop(server), &check));
  ASSERT_OK(uv_check_start(&check, count_iteration));
  uv_unref((uv_handle_t*) &check);
  fd = test_connect("127.0.0.1", test_server_port(server));
  shutdown(fd, SHUT_WR);
  ASSERT_OK(uvs_server_handle_request(server));
  ASSERT_LT(atomic_load(&iterations), 100);
  uv_close((uv_handle_t*) &check, NULL);
  close(fd);
  ASSERT_OK(uvs_server_close(server, NULL));
}


static const test_case_t cases[] = {
  { "close_right_after_shutdown", close_right_after_shutdown },
  { "shutdown_with_restarts", shutdown_with_restarts },
  { "no_loop_inside_a_loop", no_loop_inside_a_loop },
  { "handle_request_blocks_while_paused", handle_request_blocks_while_paused },
  { "default_handle_error_logs_once", default_handle_error_logs_once },
  { "bind_port_zero", bind_port_zero },
  { "bind_and_activate_separately", bind_and_activate_separately },
  { "verify_request_rejects", verify_request_rejects },
  { "close_with_open_connections", close_with_open_connections },
  { "embed_next_to_timer", embed_next_to_timer },
  { "idle_server_does_not_hold_loop", idle_server_does_not_hold_loop },
  { "close_from_callback", close_from_callback },
  { "accept_backs_off_on_emfile", accept_backs_off_on_emfile },
  { "reset_before_accept", reset_before_accept },
};

TEST_MAIN(cases)
