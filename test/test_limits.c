/* SPDX-License-Identifier: MIT */
/*
 * Limits, connection timeouts, the graceful drain and the stats, against
 * what include/uvs.h promises for them: max_connections (a connection past
 * it closed at once, or waiting in the backlog with
 * max_connections_pause), idle_timeout_ms (a silent client closed, an
 * active one or one receiving a long reply not), read_timeout_ms (event
 * mode through uvs_conn_request_pending, the blocking modes per read
 * call), write_timeout_ms (a peer that does not read is reset, a slow one
 * that does is not, whether the reply is one write or many),
 * a write that reports after its connection began to close (the write
 * timeout stays off), uvs_server_drain (ending by itself, at the deadline
 * with the echo of what arrived before it, refusing new clients,
 * UV_EALREADY, cancelled by a close, also from on_open during its backlog
 * pass, threading handlers woken at the deadline), uvs_conn_close from
 * another thread on a threading handler busy outside uvs I/O (shut down at
 * once, bounded by close_timeout_ms), and uvs_server_stats (exact counts
 * for a known exchange, a reset counted in sync and threading mode, read
 * from another thread while serving).
 *
 * Threads: the limit, timeout and stats servers run serve_forever on a
 * pthread while the test thread plays the clients; the drain cases run the
 * loop on the test thread, since uvs_server_drain is called on the loop's
 * thread, and drive nonblocking clients between loop iterations. Every
 * wait has a deadline; time bounds are liveness bounds, far above what
 * the work needs, except that a timeout must not fire long before its
 * time.
 */
#define TEST_CASE_TIMEOUT 90
#include "test.h"

#include "internal.h"

#include <stdatomic.h>
#include <sys/time.h>

#define IO_TIMEOUT   5000 /* ms; every client read is bounded by this */
#define QUIET_MS     300  /* ms waited for something that must not come */
#define SMALL_RCVBUF 65536
#define CHUNK        65536
#define MIB          ((size_t) 1 << 20)

static char zero_chunk[1 << 20];


/* ---- What the cases observe ----------------------------------------- */

typedef struct {
  atomic_int opened;     /* on_open, or setup */
  atomic_int closed;     /* on_close, or finish */
  atomic_int errors;     /* handle_error calls */
  atomic_int last_error; /* the last handle_error status */
  atomic_int timed_out;  /* on_close or a request I/O call saw ETIMEDOUT */
  atomic_int cancelled;  /* a request I/O call saw UV_ECANCELED */
  atomic_int last_close; /* the last on_close status */
  atomic_int result;     /* a handler's recorded result (1: none) */
} obs_t;

static obs_t obs;

static void obs_reset(void) {
  atomic_store(&obs.opened, 0);
  atomic_store(&obs.closed, 0);
  atomic_store(&obs.errors, 0);
  atomic_store(&obs.last_error, 0);
  atomic_store(&obs.timed_out, 0);
  atomic_store(&obs.cancelled, 0);
  atomic_store(&obs.last_close, 1);
  atomic_store(&obs.result, 1);
}

static void record_error(uvs_server_t* server,
                         uvs_conn_t* conn,
                         const uvs_address_t* peer,
                         int status) {
  atomic_store(&obs.last_error, status);
  atomic_fetch_add(&obs.errors, 1);
}

static void record_io(ssize_t r) {
  if (r == UV_ETIMEDOUT)
    atomic_fetch_add(&obs.timed_out, 1);
  if (r == UV_ECANCELED)
    atomic_fetch_add(&obs.cancelled, 1);
}

#define WAIT_UNTIL(cond, ms)                                 \
 do {                                                        \
  uint64_t wait_deadline_ = test_now_ms() + (uint64_t) (ms); \
  while (!(cond)) {                                          \
   if (test_now_ms() > wait_deadline_)                       \
    TEST__FAIL("waited %d ms for %s", (int) (ms), #cond);    \
   usleep(1000);                                             \
  }                                                          \
 } while (0)

/* Runs the loop (on this thread) until `cond` holds, failing after
 * `ms`. */
#define RUN_UNTIL(loop, cond, ms)                               \
 do {                                                           \
  uint64_t run_deadline_ = test_now_ms() + (uint64_t) (ms);     \
  while (!(cond)) {                                             \
   if (test_now_ms() > run_deadline_)                           \
    TEST__FAIL("ran the loop %d ms for %s", (int) (ms), #cond); \
   uv_run((loop), UV_RUN_NOWAIT);                               \
   if (!(cond))                                                 \
    usleep(500);                                                \
  }                                                             \
 } while (0)

static void run_for(uv_loop_t* loop, int ms) {
  uint64_t until = test_now_ms() + (uint64_t) ms;
  while (test_now_ms() < until) {
    uv_run(loop, UV_RUN_NOWAIT);
    usleep(500);
  }
}

static const char* mode_name(uvs_mode_t mode) {
  switch (mode) {
  case UVS_MODE_EVENT:
    return "event";
  case UVS_MODE_SYNC:
    return "sync";
  case UVS_MODE_THREADING:
    return "threading";
  case UVS_MODE_FORKING:
    return "forking";
  default:
    return "?";
  }
}

static uvs_stats_t stats_of(const uvs_server_t* server) {
  uvs_stats_t st;
  ASSERT_OK(uvs_server_stats(server, &st));
  return st;
}


/* ---- Servers -------------------------------------------------------- */

typedef struct {
  pthread_t thread;
  uvs_server_t* server;
  int result;
} serve_thread_t;

static void* serve_main(void* arg) {
  serve_thread_t* t = arg;
  t->result = uvs_server_serve_forever(t->server, 0);
  return NULL;
}

/* A server on a loop of its own at `address` (NULL: tcp://127.0.0.1:0)
 * with the recording handle_error, serving on a pthread. */
static uvs_server_t* serve_start(serve_thread_t* t,
                                 const char* address,
                                 const uvs_handler_t* handler,
                                 uvs_config_t* config) {
  if (config->hooks.handle_error == NULL)
    config->hooks.handle_error = record_error;
  t->server = NULL;
  ASSERT_OK(uvs_server_new(NULL,
                           &t->server,
                           address != NULL ? address : "tcp://127.0.0.1:0",
                           handler,
                           config));
  t->result = -12345;
  ASSERT_OK(pthread_create(&t->thread, NULL, serve_main, t));
  return t->server;
}

static void serve_stop(serve_thread_t* t) {
  ASSERT_OK(uvs_server_shutdown(t->server));
  ASSERT_OK(pthread_join(t->thread, NULL));
  ASSERT_OK(t->result);
  ASSERT_OK(uvs_server_close(t->server, NULL));
}


/* ---- Clients -------------------------------------------------------- */

static void set_timeouts(int fd) {
  struct timeval tv;
  tv.tv_sec = IO_TIMEOUT / 1000;
  tv.tv_usec = 0;
  ASSERT_OK(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)));
  ASSERT_OK(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)));
}

/* Connects to 127.0.0.1:`port`; returns the socket, or -errno when the
 * connect fails. `rcvbuf` > 0 sets a small window first. */
static int try_connect(int port, int rcvbuf) {
  struct sockaddr_in sin;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int err;
  if (fd < 0)
    TEST__FAIL("socket: %s", strerror(errno));
  if (rcvbuf > 0) {
    ASSERT_OK(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)));
  }
  memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  sin.sin_port = htons((uint16_t) port);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr*) &sin, sizeof(sin)) != 0) {
    err = errno;
    close(fd);
    return -err;
  }
  set_timeouts(fd);
  return fd;
}

static int connect_to(int port, int rcvbuf) {
  int fd = try_connect(port, rcvbuf);
  if (fd < 0)
    TEST__FAIL("connect to port %d: %s", port, strerror(-fd));
  return fd;
}

/* 1 when the peer's EOF (recv 0) comes within `ms` with no byte before
 * it, 0 when nothing comes, -errno for a reset. Fails on data. */
static int eof_within(int fd, int ms) {
  struct pollfd pfd = { fd, POLLIN, 0 };
  char c;
  ssize_t n;
  int r = poll(&pfd, 1, ms);
  ASSERT_GE(r, 0);
  if (r == 0)
    return 0;
  n = recv(fd, &c, 1, MSG_DONTWAIT);
  if (n < 0)
    return -errno;
  if (n > 0)
    TEST__FAIL("got a byte (%d) instead of EOF", c);
  return 1;
}

static void echo_check(int fd, const char* msg) {
  char got[256];
  size_t len = strlen(msg);
  ASSERT_LT(len, sizeof(got));
  test_send_all(fd, msg, len);
  ASSERT_EQ(test_recv_n(fd, got, len, IO_TIMEOUT), (ssize_t) len);
  ASSERT_MEM_EQ(got, msg, len);
}

/* Ends a client: shutdown first, since a forked child holds a copy of
 * every client socket the test had open when it was forked. */
static void client_close(int fd) {
  shutdown(fd, SHUT_RDWR);
  ASSERT_OK(close(fd));
}

static void rst_close(int fd) {
  struct linger lg = { 1, 0 };
  ASSERT_OK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)));
  ASSERT_OK(close(fd));
}

/* Loop-driven clients: the loop runs on this thread between tries. */
static void loop_send_all(uv_loop_t* loop,
                          int fd,
                          const void* data,
                          size_t len) {
  const char* p = data;
  uint64_t deadline = test_now_ms() + 20000;
  while (len > 0) {
    ssize_t n = send(fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      p += n;
      len -= (size_t) n;
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR)
      TEST__FAIL("send: %s", strerror(errno));
    ASSERT_LT(test_now_ms(), deadline);
    uv_run(loop, UV_RUN_NOWAIT);
    usleep(200);
  }
}

/* Reads until `len` bytes, EOF (returns fewer) or `ms`; fails on a read
 * error. */
static size_t loop_recv_n(uv_loop_t* loop,
                          int fd,
                          void* buf,
                          size_t len,
                          int ms) {
  char* p = buf;
  size_t got = 0;
  uint64_t deadline = test_now_ms() + (uint64_t) ms;
  while (got < len && test_now_ms() < deadline) {
    ssize_t n = recv(fd, p + got, len - got, MSG_DONTWAIT);
    if (n > 0) {
      got += (size_t) n;
      continue;
    }
    if (n == 0)
      break;
    if (errno != EAGAIN && errno != EINTR)
      TEST__FAIL("recv after %zu bytes: %s", got, strerror(errno));
    uv_run(loop, UV_RUN_NOWAIT);
    usleep(200);
  }
  return got;
}

/* 1 at EOF within `ms` (no byte first), 0 when nothing came; fails on a
 * byte or an error. */
static int loop_eof_within(uv_loop_t* loop, int fd, int ms) {
  uint64_t deadline = test_now_ms() + (uint64_t) ms;
  for (;;) {
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
    if (n == 0)
      return 1;
    if (n > 0)
      TEST__FAIL("got a byte (%d) instead of EOF", c);
    if (errno != EAGAIN && errno != EINTR)
      TEST__FAIL("recv: %s", strerror(errno));
    if (test_now_ms() >= deadline)
      return 0;
    uv_run(loop, UV_RUN_NOWAIT);
    usleep(200);
  }
}

static void loop_echo(uv_loop_t* loop, int fd, const char* msg) {
  char got[256];
  size_t len = strlen(msg);
  loop_send_all(loop, fd, msg, len);
  ASSERT_EQ(loop_recv_n(loop, fd, got, len, IO_TIMEOUT), len);
  ASSERT_MEM_EQ(got, msg, len);
}


/* ---- Handlers ------------------------------------------------------- */

static void ev_open(uvs_conn_t* conn) {
  atomic_fetch_add(&obs.opened, 1);
}

static void ev_echo(uvs_conn_t* conn, const char* data, size_t len) {
  uvs_conn_write(conn, data, len);
}

static void ev_close(uvs_conn_t* conn, int status) {
  if (status == UV_ETIMEDOUT)
    atomic_fetch_add(&obs.timed_out, 1);
  atomic_store(&obs.last_close, status);
  atomic_fetch_add(&obs.closed, 1);
}

static int bl_setup(uvs_conn_t* conn) {
  atomic_fetch_add(&obs.opened, 1);
  return 0;
}

/* Echo until EOF; the error that ends it is recorded and returned. */
static int bl_echo(uvs_conn_t* conn) {
  char buf[CHUNK];
  for (;;) {
    ssize_t n = uvs_recv(conn, buf, sizeof(buf));
    int r;
    if (n <= 0) {
      record_io(n);
      return (int) n;
    }
    r = uvs_sendall(conn, buf, (size_t) n);
    if (r != 0) {
      record_io(r);
      return r;
    }
  }
}

static int bl_finish(uvs_conn_t* conn) {
  atomic_fetch_add(&obs.closed, 1);
  return 0;
}

static uvs_handler_t echo_handler(uvs_mode_t mode) {
  uvs_handler_t handler;
  memset(&handler, 0, sizeof(handler));
  if (mode == UVS_MODE_EVENT) {
    handler.on_open = ev_open;
    handler.on_data = ev_echo;
    handler.on_close = ev_close;
  } else {
    handler.setup = bl_setup;
    handler.handle = bl_echo;
    handler.finish = bl_finish;
  }
  return handler;
}

/* Connections (event, threading) or children (forking) being served. */
static size_t served_now(uvs_server_t* server, uvs_mode_t mode) {
  if (mode == UVS_MODE_FORKING)
    return uvs_server_child_count(server);
  return uvs_server_connection_count(server);
}


/* ---- 7. max_connections --------------------------------------------- */

#define LIMIT 3

static void max_connections(uvs_mode_t mode) {
  uvs_handler_t handler = echo_handler(mode);
  uvs_config_t config;
  serve_thread_t t;
  uvs_server_t* server;
  int fds[LIMIT];
  int extra;
  int port;
  int i;

  printf("# mode %s\n", mode_name(mode));
  obs_reset();
  uvs_config_init(&config);
  config.mode = mode;
  config.max_connections = LIMIT;
  server = serve_start(&t, NULL, &handler, &config);
  port = test_server_port(server);

  for (i = 0; i < LIMIT; i++) {
    fds[i] = connect_to(port, 0);
    echo_check(fds[i], "served\n");
  }
  /* A forked child can answer its client before the parent, back from
   * fork(), has counted it. */
  WAIT_UNTIL(served_now(server, mode) == LIMIT, IO_TIMEOUT);

  /* One past the limit: accepted and closed at once, so the client sees
   * EOF instead of hanging. */
  extra = connect_to(port, 0);
  ASSERT_EQ(eof_within(extra, 2000), 1);
  ASSERT_OK(close(extra));
  ASSERT_EQ(stats_of(server).rejected_limit, 1);
  ASSERT_EQ(stats_of(server).accepted, LIMIT + 1);

  /* The three are unaffected. */
  for (i = 0; i < LIMIT; i++)
    echo_check(fds[i], "still served\n");

  /* One goes: a new client is served in its place. */
  client_close(fds[0]);
  WAIT_UNTIL(served_now(server, mode) == LIMIT - 1, IO_TIMEOUT);
  fds[0] = connect_to(port, 0);
  echo_check(fds[0], "in its place\n");
  ASSERT_EQ(stats_of(server).rejected_limit, 1);

  for (i = 0; i < LIMIT; i++)
    client_close(fds[i]);
  WAIT_UNTIL(served_now(server, mode) == 0, IO_TIMEOUT);
  ASSERT_EQ(atomic_load(&obs.errors), 0);
  serve_stop(&t);
}

static void max_connections_event(void) {
  max_connections(UVS_MODE_EVENT);
}

static void max_connections_threading(void) {
  max_connections(UVS_MODE_THREADING);
}

static void max_connections_forking(void) {
  max_connections(UVS_MODE_FORKING);
}


/* max_connections_pause: the one past the limit waits in the backlog,
 * neither closed nor served, until one of the others closes. */
static void max_connections_pause(uvs_mode_t mode) {
  uvs_handler_t handler = echo_handler(mode);
  uvs_config_t config;
  serve_thread_t t;
  uvs_server_t* server;
  int fds[LIMIT];
  char got[16];
  int extra;
  int port;
  int i;

  printf("# mode %s\n", mode_name(mode));
  obs_reset();
  uvs_config_init(&config);
  config.mode = mode;
  config.max_connections = LIMIT;
  config.max_connections_pause = 1;
  server = serve_start(&t, NULL, &handler, &config);
  port = test_server_port(server);

  for (i = 0; i < LIMIT; i++) {
    fds[i] = connect_to(port, 0);
    echo_check(fds[i], "served\n");
  }
  extra = connect_to(port, 0);
  test_send_all(extra, "waiting\n", 8);
  ASSERT_EQ(eof_within(extra, QUIET_MS), 0); /* no EOF, no echo */
  ASSERT_EQ(served_now(server, mode), LIMIT);
  ASSERT_EQ(atomic_load(&obs.opened), LIMIT);

  ASSERT_OK(close(fds[0]));
  ASSERT_EQ(test_recv_n(extra, got, 8, IO_TIMEOUT), 8);
  ASSERT_MEM_EQ(got, "waiting\n", 8);
  fds[0] = extra;
  for (i = 0; i < LIMIT; i++)
    echo_check(fds[i], "all served\n");
  ASSERT_EQ(stats_of(server).rejected_limit, 0);

  for (i = 0; i < LIMIT; i++)
    ASSERT_OK(close(fds[i]));
  WAIT_UNTIL(served_now(server, mode) == 0, IO_TIMEOUT);
  ASSERT_EQ(atomic_load(&obs.opened), LIMIT + 1);
  serve_stop(&t);
}

static void max_connections_pause_event(void) {
  max_connections_pause(UVS_MODE_EVENT);
}

static void max_connections_pause_threading(void) {
  max_connections_pause(UVS_MODE_THREADING);
}


/* ---- 8. Timeouts: idle ---------------------------------------------- */

#define IDLE_MS 400

/* One byte every IDLE_MS / 3 for four idle timeouts, each echoed; then
 * silence until the server closes. */
typedef struct {
  pthread_t thread;
  int port;
  int trips;
  int closed_early;
  atomic_int done;
} active_t;

static void* active_main(void* arg) {
  active_t* a = arg;
  int fd = connect_to(a->port, 0);
  int i;
  for (i = 0; i < 12; i++) {
    char c = 0;
    usleep(IDLE_MS / 3 * 1000);
    test_send_all(fd, "a", 1);
    if (test_recv_n(fd, &c, 1, IO_TIMEOUT) != 1 || c != 'a') {
      a->closed_early = 1;
      break;
    }
    a->trips++;
  }
  if (!a->closed_early) {
    uint64_t t0 = test_now_ms();
    ASSERT_EQ(eof_within(fd, IO_TIMEOUT), 1);
    ASSERT_GE(test_now_ms() - t0, IDLE_MS * 3 / 4);
  }
  close(fd);
  atomic_store(&a->done, 1);
  return NULL;
}

static void silent_client(int port) {
  int fd = connect_to(port, 0);
  uint64_t t0 = test_now_ms();
  uint64_t took;
  ASSERT_EQ(eof_within(fd, IO_TIMEOUT), 1);
  took = test_now_ms() - t0;
  printf("# a silent client closed after %" PRIu64 " ms\n", took);
  ASSERT_GE(took, IDLE_MS * 3 / 4);
  ASSERT_OK(close(fd));
}

static void idle_timeout(uvs_mode_t mode) {
  uvs_handler_t handler = echo_handler(mode);
  uvs_config_t config;
  serve_thread_t t;
  uvs_server_t* server;
  active_t a;

  printf("# mode %s\n", mode_name(mode));
  obs_reset();
  uvs_config_init(&config);
  config.mode = mode;
  config.idle_timeout_ms = IDLE_MS;
  server = serve_start(&t, NULL, &handler, &config);
  memset(&a, 0, sizeof(a));
  a.port = test_server_port(server);

  if (mode == UVS_MODE_SYNC) {
    /* One request at a time. */
    silent_client(a.port);
    active_main(&a);
  } else {
    ASSERT_OK(pthread_create(&a.thread, NULL, active_main, &a));
    silent_client(a.port);
    ASSERT_OK(pthread_join(a.thread, NULL));
  }
  ASSERT_EQ(a.closed_early, 0);
  ASSERT_EQ(a.trips, 12);
  WAIT_UNTIL(uvs_server_connection_count(server) == 0, IO_TIMEOUT);
  ASSERT_EQ(stats_of(server).timeouts, 2);
  /* Both saw the timeout: on_close, or the handler's read. */
  ASSERT_EQ(atomic_load(&obs.timed_out), 2);
  ASSERT_EQ(atomic_load(&obs.closed), 2);
  serve_stop(&t);
}

static void idle_timeout_event(void) {
  idle_timeout(UVS_MODE_EVENT);
}

static void idle_timeout_threading(void) {
  idle_timeout(UVS_MODE_THREADING);
}

static void idle_timeout_sync(void) {
  idle_timeout(UVS_MODE_SYNC);
}


/* ---- 8. Timeouts: read ---------------------------------------------- */

#define READ_MS 300

/* Event mode: a line echo that marks a partial line pending. */
typedef struct {
  size_t len;
  char line[256];
} line_state_t;

static void line_ev_data(uvs_conn_t* conn, const char* data, size_t len) {
  line_state_t* st = uvs_conn_state(conn);
  while (len > 0) {
    const char* nl = memchr(data, '\n', len);
    size_t take = nl != NULL ? (size_t) (nl - data) + 1 : len;
    if (st->len + take > sizeof(st->line)) {
      uvs_conn_abort(conn);
      return;
    }
    memcpy(st->line + st->len, data, take);
    st->len += take;
    data += take;
    len -= take;
    if (nl != NULL) {
      ASSERT_OK(uvs_conn_write(conn, st->line, st->len));
      st->len = 0;
    }
  }
  ASSERT_OK(uvs_conn_request_pending(conn, st->len > 0));
}

/* Blocking modes: readline, echo, until EOF. */
static int line_bl_handle(uvs_conn_t* conn) {
  char line[256];
  for (;;) {
    ssize_t n = uvs_readline(conn, line, sizeof(line));
    int r;
    if (n <= 0) {
      record_io(n);
      return (int) n;
    }
    r = uvs_sendall(conn, line, (size_t) n);
    if (r != 0)
      return r;
  }
}

/* A normal client: ten lines, each sent in two halves 50 ms apart (a
 * request pending for a while, well under the timeout), all echoed; in
 * event mode it also pauses between requests for longer than the read
 * timeout, which runs only while a request is pending. */
typedef struct {
  pthread_t thread;
  int port;
  int pause_ms;
  int lines;
} liner_t;

static void* liner_main(void* arg) {
  liner_t* l = arg;
  int fd = connect_to(l->port, 0);
  int i;
  for (i = 0; i < 10; i++) {
    char line[32];
    char got[32];
    int len = snprintf(line, sizeof(line), "line %d\n", i);
    test_send_all(fd, line, 3);
    usleep(50 * 1000);
    test_send_all(fd, line + 3, (size_t) len - 3);
    if (test_recv_n(fd, got, (size_t) len, IO_TIMEOUT) != len ||
        memcmp(got, line, (size_t) len) != 0) {
      break;
    }
    l->lines++;
    if (l->pause_ms > 0 && i % 3 == 0)
      usleep((useconds_t) l->pause_ms * 1000);
  }
  close(fd);
  return NULL;
}

/* One byte of a line that never ends every READ_MS / 3, until the server
 * closes; returns how long that took from the first byte. */
static uint64_t dribble_until_closed(int port) {
  int fd = connect_to(port, 0);
  uint64_t t0 = test_now_ms();
  int i;
  for (i = 0; i < 60; i++) {
    int r;
    if (send(fd, "d", 1, MSG_NOSIGNAL) != 1)
      break;
    r = eof_within(fd, READ_MS / 3);
    ASSERT_GE(r, 0);
    if (r == 1)
      break;
  }
  ASSERT_LT(i, 60);
  ASSERT_OK(close(fd));
  return test_now_ms() - t0;
}

static void read_timeout(uvs_mode_t mode) {
  uvs_handler_t handler = echo_handler(mode);
  uvs_config_t config;
  serve_thread_t t;
  uvs_server_t* server;
  liner_t l;
  uint64_t took;

  printf("# mode %s\n", mode_name(mode));
  obs_reset();
  if (mode == UVS_MODE_EVENT) {
    handler.state_size = sizeof(line_state_t);
    handler.on_data = line_ev_data;
  } else {
    handler.handle = line_bl_handle;
  }
  uvs_config_init(&config);
  config.mode = mode;
  config.read_timeout_ms = READ_MS;
  server = serve_start(&t, NULL, &handler, &config);
  memset(&l, 0, sizeof(l));
  l.port = test_server_port(server);
  /* Blocking modes time every read call, the wait for the next line
   * included. */
  l.pause_ms = mode == UVS_MODE_EVENT ? 2 * READ_MS : 0;
  ASSERT_OK(pthread_create(&l.thread, NULL, liner_main, &l));
  took = dribble_until_closed(l.port);
  printf("# a dribbling client closed after %" PRIu64 " ms\n", took);
  ASSERT_GE(took, READ_MS * 3 / 4);
  ASSERT_OK(pthread_join(l.thread, NULL));
  ASSERT_EQ(l.lines, 10);
  WAIT_UNTIL(uvs_server_connection_count(server) == 0, IO_TIMEOUT);
  ASSERT_EQ(stats_of(server).timeouts, 1);
  /* The dribbler's on_close, or its handler's read, saw the timeout. */
  ASSERT_EQ(atomic_load(&obs.timed_out), 1);
  serve_stop(&t);
}

static void read_timeout_event(void) {
  read_timeout(UVS_MODE_EVENT);
}

static void read_timeout_threading(void) {
  read_timeout(UVS_MODE_THREADING);
}

/* uvs_conn_request_pending outside event mode. */
static int pending_handle(uvs_conn_t* conn) {
  atomic_store(&obs.result, uvs_conn_request_pending(conn, 1));
  return 0;
}

static void request_pending_not_supported(void) {
  uvs_handler_t handler = echo_handler(UVS_MODE_THREADING);
  uvs_config_t config;
  serve_thread_t t;
  uvs_server_t* server;
  int fd;

  obs_reset();
  handler.handle = pending_handle;
  uvs_config_init(&config);
  config.mode = UVS_MODE_THREADING;
  server = serve_start(&t, NULL, &handler, &config);
  fd = connect_to(test_server_port(server), 0);
  ASSERT_EQ(eof_within(fd, IO_TIMEOUT), 1);
  ASSERT_OK(close(fd));
  ASSERT_ERR(atomic_load(&obs.result), UV_ENOTSUP);
  WAIT_UNTIL(uvs_server_connection_count(server) == 0, IO_TIMEOUT);
  serve_stop(&t);
}


/* ---- 8. Timeouts: write --------------------------------------------- */

#define WRITE_MS     300
#define FLOOD        (4 * MIB)
#define SLOW_PIECE   (128 * 1024)
#define SMALL_SNDBUF 65536

/* A small kernel send buffer on the server's side of the connection: the
 * socket then becomes writable again as soon as the reader has taken a
 * little, instead of after it has drained a third of a large autotuned
 * buffer (which at a slow reader's pace can take longer than the
 * timeout). */
static void small_sndbuf(uvs_conn_t* conn) {
  int size = SMALL_SNDBUF;
  int fd = uvs_conn_fileno(conn);
  ASSERT_GE(fd, 0);
  ASSERT_OK(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size)));
}

static void flood_ev_open(uvs_conn_t* conn) {
  small_sndbuf(conn);
  ev_open(conn);
}

static int flood_bl_setup(uvs_conn_t* conn) {
  small_sndbuf(conn);
  return bl_setup(conn);
}

/* The first byte asks for FLOOD bytes: in event mode in writes of
 * flood_piece bytes, in the blocking modes uvs_sendall in 1 MiB calls. */
/* Event mode writes the flood as FLOOD / flood_piece writes, all at
 * once. Set before the server starts. */
static size_t flood_piece = FLOOD;

static void flood_ev_data(uvs_conn_t* conn, const char* data, size_t len) {
  char* big;
  size_t done;
  if (uvs_conn_write_queue_size(conn) > 0)
    return;
  big = calloc(1, flood_piece);
  ASSERT_NOT_NULL(big);
  for (done = 0; done < FLOOD; done += flood_piece)
    ASSERT_OK(uvs_conn_write(conn, big, flood_piece));
  free(big);
}

static int flood_bl_handle(uvs_conn_t* conn) {
  char c;
  ssize_t n = uvs_recv(conn, &c, 1);
  size_t i;
  int r = 0;
  if (n <= 0)
    return (int) n;
  for (i = 0; i < FLOOD / sizeof(zero_chunk) && r == 0; i++)
    r = uvs_sendall(conn, zero_chunk, sizeof(zero_chunk));
  record_io(r);
  atomic_store(&obs.result, r);
  return r == UV_ETIMEDOUT ? 0 : r;
}

/* Reads SLOW_PIECE every WRITE_MS / 3: slow, but the socket always takes
 * some of the output within the timeout. Returns the bytes read before
 * EOF. */
static size_t slow_reader(int port) {
  static char buf[SLOW_PIECE];
  int fd = connect_to(port, SMALL_RCVBUF);
  size_t total = 0;
  test_send_all(fd, "S", 1);
  for (;;) {
    ssize_t n;
    usleep(WRITE_MS / 3 * 1000);
    n = test_recv_n(fd, buf, sizeof(buf), IO_TIMEOUT);
    if (n <= 0)
      break;
    total += (size_t) n;
    if (total == FLOOD)
      break;
  }
  ASSERT_OK(close(fd));
  return total;
}

static void write_timeout(uvs_mode_t mode, size_t piece) {
  uvs_handler_t handler = echo_handler(mode);
  uvs_config_t config;
  serve_thread_t t;
  uvs_server_t* server;
  size_t slow;
  int port;
  int fd;

  printf("# mode %s, writes of %zu bytes\n", mode_name(mode), piece);
  obs_reset();
  flood_piece = piece;
  if (mode == UVS_MODE_EVENT) {
    handler.on_open = flood_ev_open;
    handler.on_data = flood_ev_data;
  } else {
    handler.setup = flood_bl_setup;
    handler.handle = flood_bl_handle;
  }
  uvs_config_init(&config);
  config.mode = mode;
  config.write_timeout_ms = WRITE_MS;
  server = serve_start(&t, NULL, &handler, &config);
  port = test_server_port(server);

  /* A client that never reads is reset once nothing leaves for
   * WRITE_MS. */
  fd = connect_to(port, SMALL_RCVBUF);
  test_send_all(fd, "F", 1);
  WAIT_UNTIL(stats_of(server).timeouts == 1, IO_TIMEOUT);
  WAIT_UNTIL(atomic_load(&obs.closed) == 1, IO_TIMEOUT);
  if (mode == UVS_MODE_EVENT)
    ASSERT_ERR(atomic_load(&obs.last_close), UV_ETIMEDOUT);
  else
    ASSERT_ERR(atomic_load(&obs.result), UV_ETIMEDOUT);
  {
    /* Reset: the unread bytes are dropped with the connection. */
    char buf[CHUNK];
    ssize_t n;
    do {
      n = test_recv_n(fd, buf, sizeof(buf), IO_TIMEOUT);
    } while (n == (ssize_t) sizeof(buf));
    ASSERT_ERR(n, -ECONNRESET);
  }
  ASSERT_OK(close(fd));

  /* A slow reader that keeps reading is not cut off. */
  slow = slow_reader(port);
  printf("# the slow reader got %zu of %zu bytes\n", slow, (size_t) FLOOD);
  ASSERT_EQ(slow, FLOOD);
  WAIT_UNTIL(uvs_server_connection_count(server) == 0, IO_TIMEOUT);
  ASSERT_EQ(stats_of(server).timeouts, 1);
  serve_stop(&t);
}

/* The reply is one uvs_conn_write: the socket takes some of it every
 * WRITE_MS / 3 while the reader reads, yet no write completes. */
static void write_timeout_event(void) {
  write_timeout(UVS_MODE_EVENT, FLOOD);
}

static void write_timeout_event_pieces(void) {
  write_timeout(UVS_MODE_EVENT, CHUNK);
}

static void write_timeout_threading(void) {
  write_timeout(UVS_MODE_THREADING, FLOOD);
}


/* The idle timeout during a long reply to a slow reader: bytes leave all
 * the time, so the connection is not idle. Event mode, the reply in one
 * write. */
static void idle_timeout_slow_transfer(void) {
  uvs_handler_t handler = echo_handler(UVS_MODE_EVENT);
  uvs_config_t config;
  serve_thread_t t;
  uvs_server_t* server;
  size_t got;

  obs_reset();
  flood_piece = FLOOD;
  handler.on_open = flood_ev_open;
  handler.on_data = flood_ev_data;
  uvs_config_init(&config);
  config.idle_timeout_ms = WRITE_MS;
  server = serve_start(&t, NULL, &handler, &config);
  got = slow_reader(test_server_port(server));
  ASSERT_EQ(got, FLOOD);
  WAIT_UNTIL(uvs_server_connection_count(server) == 0, IO_TIMEOUT);
  printf("# on_close got %s\n", uvs_err_name(atomic_load(&obs.last_close)));
  ASSERT_EQ(stats_of(server).timeouts, 0);
  ASSERT_EQ(atomic_load(&obs.last_close), 0);
  serve_stop(&t);
}


/* A write that reports after its connection began to close. A uv_write
 * that completes inside uv_write (the socket had room) reports after the
 * loop's poll phase; when the connection closes first (an abort,
 * max_write_queue, the peer's reset), libuv runs that report, with status
 * 0, from the close, while later writes still count as queued. The write
 * timeout must stay off then: a connection left on the server's
 * write-timeout queue is freed with it, and the queue's timer reads the
 * freed memory.
 *
 * Left to itself the state needs the peer to free room between
 * uv_try_write and uv_write inside one uvs_conn_write, a race. The case
 * reaches it every time by holding the connection's write_queued above 0
 * for one call, which makes uvs skip uv_try_write: the uv_write of a few
 * bytes on a fresh socket then completes inside the call. A free callback
 * on that write tells when its report ran. */
#define REPORT_FIRST 1000
#define REPORT_CAP   (2 * FLOOD)
#define REPORT_READ  1024 /* read_buffer_size, and what the client sends */

typedef enum {
  REPORT_END_ABORT,    /* uvs_conn_abort */
  REPORT_END_OVER_CAP, /* a write past max_write_queue */
  REPORT_END_RESET     /* the peer resets; the loop reads it next */
} report_end_t;

static struct {
  report_end_t end;
  char first[REPORT_FIRST];
  char* big;
  int client;       /* the client's socket */
  int reached;      /* the first write completed, its report pending */
  int reports;      /* its free callback ran */
  int after_close;  /* ... once the close had begun */
  int armed_at_end; /* on_close found the write timeout armed */
} report;

static uvs_server_t* loop_server(uv_loop_t* loop,
                                 const char* address,
                                 const uvs_handler_t* handler,
                                 uvs_config_t* config);

static void report_freed(void* data, void* arg) {
  uvs_conn_t* conn = arg;
  report.reports++;
  report.after_close = conn->handle_closing;
}

static void report_ev_data(uvs_conn_t* conn, const char* data, size_t len) {
  if (conn->closing || report.reached)
    return;
  /* The first write completes inside the call; its report waits. */
  conn->write_queued++;
  ASSERT_OK(uvs_conn_write_nocopy(conn,
                                  report.first,
                                  sizeof(report.first),
                                  report_freed,
                                  conn));
  conn->write_queued--;
  ASSERT_EQ(conn->write_queued, REPORT_FIRST);
  ASSERT_EQ(uv_stream_get_write_queue_size(&conn->h.stream), 0);
  ASSERT_EQ(report.reports, 0);
  /* The write timeout runs, as after any write that had to queue. */
  uvs__timeout_arm(conn, UVS__TIMEOUT_WRITE);
  /* More than the socket takes from a peer that does not read: most of
   * it stays queued in libuv. */
  ASSERT_OK(uvs_conn_write(conn, report.big, FLOOD));
  ASSERT_EQ(conn->write_queued, REPORT_FIRST + FLOOD);
  ASSERT_GT(uv_stream_get_write_queue_size(&conn->h.stream), 0);
  report.reached = 1;
  switch (report.end) {
  case REPORT_END_ABORT:
    ASSERT_OK(uvs_conn_abort(conn));
    break;
  case REPORT_END_OVER_CAP:
    ASSERT_ERR(uvs_conn_write(conn, report.big, REPORT_CAP), UV_ENOBUFS);
    break;
  case REPORT_END_RESET:
    /* The read filled the buffer, so libuv reads again on return and
     * finds the reset (Linux's loopback delivers it before close
     * returns). */
    rst_close(report.client);
    report.client = -1;
    break;
  }
}

static void report_ev_close(uvs_conn_t* conn, int status) {
  report.armed_at_end = uvs__timeout_armed(conn, UVS__TIMEOUT_WRITE);
  ev_close(conn, status);
}

static void write_report_after_close(report_end_t end, int want_status) {
  uvs_handler_t handler = echo_handler(UVS_MODE_EVENT);
  uvs_config_t config;
  uvs_server_t* server;
  uv_loop_t loop;
  uvs_stats_t st;

  obs_reset();
  memset(&report, 0, sizeof(report));
  report.end = end;
  report.armed_at_end = -1;
  report.client = -1;
  report.big = calloc(1, REPORT_CAP);
  ASSERT_NOT_NULL(report.big);
  handler.on_open = flood_ev_open;
  handler.on_data = report_ev_data;
  handler.on_close = report_ev_close;
  uvs_config_init(&config);
  config.write_timeout_ms = WRITE_MS;
  config.max_write_queue = REPORT_CAP;
  config.read_buffer_size = REPORT_READ;
  server = loop_server(&loop, NULL, &handler, &config);
  /* Sent before the loop runs: the first read takes all of it. */
  report.client = connect_to(test_server_port(server), SMALL_RCVBUF);
  test_send_all(report.client, report.big, REPORT_READ);
  RUN_UNTIL(&loop, atomic_load(&obs.closed) == 1, IO_TIMEOUT);
  /* Past the write timeout: the queue's timer must find nothing of the
   * freed connection (under ASan, reading it is reported here). */
  run_for(&loop, 2 * WRITE_MS);
  printf("# reached %d, report after the close %d, armed at on_close %d\n",
         report.reached,
         report.after_close,
         report.armed_at_end);
  ASSERT_EQ(report.reached, 1);
  ASSERT_EQ(report.reports, 1);
  ASSERT_EQ(report.after_close, 1);
  ASSERT_EQ(report.armed_at_end, 0);
  ASSERT_TRUE(uvs__list_empty(&server->timeouts[UVS__TIMEOUT_WRITE]));
  ASSERT_ERR(atomic_load(&obs.last_close), want_status);
  st = stats_of(server);
  ASSERT_EQ(st.timeouts, 0);
  ASSERT_EQ(st.conn_errors, end == REPORT_END_RESET ? 1 : 0);
  ASSERT_EQ(st.active, 0);
  if (report.client >= 0)
    ASSERT_OK(close(report.client));
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
  free(report.big);
}

static void write_report_after_abort(void) {
  write_report_after_close(REPORT_END_ABORT, 0);
}

static void write_report_after_over_cap(void) {
  write_report_after_close(REPORT_END_OVER_CAP, UV_ENOBUFS);
}

static void write_report_after_reset(void) {
  write_report_after_close(REPORT_END_RESET, UV_ECONNRESET);
}


/* ---- 9. Drain ------------------------------------------------------- */

static atomic_int drain_calls;
static atomic_int drain_status;

static void on_drained(uvs_server_t* server, int status) {
  atomic_store(&drain_status, status);
  atomic_fetch_add(&drain_calls, 1);
}

static void drain_reset(void) {
  atomic_store(&drain_calls, 0);
  atomic_store(&drain_status, 1);
}

/* A server on the test thread's loop. */
static uvs_server_t* loop_server(uv_loop_t* loop,
                                 const char* address,
                                 const uvs_handler_t* handler,
                                 uvs_config_t* config) {
  uvs_server_t* server = NULL;
  config->hooks.handle_error = record_error;
  ASSERT_OK(uv_loop_init(loop));
  ASSERT_OK(uvs_server_new(loop,
                           &server,
                           address != NULL ? address : "tcp://127.0.0.1:0",
                           handler,
                           config));
  ASSERT_OK(uvs_server_start(server));
  return server;
}

/* A connection that ends by itself before the deadline: the callback
 * gets 0, long before the deadline, and every byte was echoed. */
static void drain_ends_by_itself(void) {
  uvs_handler_t handler = echo_handler(UVS_MODE_EVENT);
  uvs_config_t config;
  uvs_server_t* server;
  uv_loop_t loop;
  uint64_t t0;
  int fd;

  obs_reset();
  drain_reset();
  uvs_config_init(&config);
  server = loop_server(&loop, NULL, &handler, &config);
  fd = connect_to(test_server_port(server), 0);
  loop_echo(&loop, fd, "before the drain\n");

  t0 = test_now_ms();
  ASSERT_OK(uvs_server_drain(server, 10000, on_drained));
  ASSERT_EQ(atomic_load(&drain_calls), 0); /* never inside the call */
  ASSERT_ERR(uvs_server_drain(server, 10000, on_drained), UV_EALREADY);
  loop_echo(&loop, fd, "during the drain\n");
  run_for(&loop, 50);
  ASSERT_EQ(atomic_load(&drain_calls), 0);
  ASSERT_OK(shutdown(fd, SHUT_WR));
  ASSERT_EQ(loop_eof_within(&loop, fd, IO_TIMEOUT), 1);
  ASSERT_OK(close(fd));
  RUN_UNTIL(&loop, atomic_load(&drain_calls) == 1, IO_TIMEOUT);
  ASSERT_LT(test_now_ms() - t0, 10000);
  ASSERT_OK(atomic_load(&drain_status));
  ASSERT_EQ(atomic_load(&obs.last_close), 0);
  ASSERT_ERR(uvs_server_drain(server, 10000, on_drained), UV_EALREADY);
  ASSERT_OK(uvs_server_close(server, NULL));
  ASSERT_EQ(atomic_load(&drain_calls), 1);
  test_loop_close(&loop);
}


/* A drain with nothing open ends at once (on the loop, not inside the
 * call); bad arguments are refused. */
static void drain_idle_server(void) {
  uvs_handler_t handler = echo_handler(UVS_MODE_EVENT);
  uvs_config_t config;
  uvs_server_t* server;
  uv_loop_t loop;

  drain_reset();
  uvs_config_init(&config);
  server = loop_server(&loop, NULL, &handler, &config);
  ASSERT_ERR(uvs_server_drain(server, 1000, NULL), UV_EINVAL);
  ASSERT_OK(uvs_server_drain(server, 60000, on_drained));
  ASSERT_EQ(atomic_load(&drain_calls), 0);
  RUN_UNTIL(&loop, atomic_load(&drain_calls) == 1, IO_TIMEOUT);
  ASSERT_OK(atomic_load(&drain_status));
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
}


/* A connection that does not end: closed at the deadline, after the echo
 * of everything that arrived before it, when the client reads on; the
 * callback gets UV_ETIMEDOUT. A client waiting in the backlog when the
 * drain starts is served; one that comes later is refused. */
#define DRAIN_MS   600
#define DRAIN_ECHO (4 * MIB)

static void drain_deadline(void) {
  uvs_handler_t handler = echo_handler(UVS_MODE_EVENT);
  uvs_config_t config;
  uvs_server_t* server;
  uv_loop_t loop;
  char* out;
  char* in;
  uint64_t t0;
  size_t got;
  size_t i;
  int backlog;
  int stays;
  int port;
  int r;

  obs_reset();
  drain_reset();
  uvs_config_init(&config);
  server = loop_server(&loop, NULL, &handler, &config);
  port = test_server_port(server);
  out = malloc(DRAIN_ECHO);
  in = malloc(DRAIN_ECHO);
  ASSERT_NOT_NULL(out);
  ASSERT_NOT_NULL(in);
  for (i = 0; i < DRAIN_ECHO; i++)
    out[i] = (char) (i * 7 + (i >> 12));

  stays = connect_to(port, SMALL_RCVBUF);
  RUN_UNTIL(&loop, atomic_load(&obs.opened) == 1, IO_TIMEOUT);
  backlog = connect_to(port, 0); /* the loop has not run: not accepted */

  t0 = test_now_ms();
  ASSERT_OK(uvs_server_drain(server, DRAIN_MS, on_drained));
  /* Refused, not left waiting. */
  r = try_connect(port, 0);
  if (r >= 0)
    close(r);
  ASSERT_ERR(r, -ECONNREFUSED);
  /* The one in the backlog was taken first, and is served. */
  loop_echo(&loop, backlog, "from the backlog\n");
  ASSERT_OK(close(backlog));
  ASSERT_EQ(atomic_load(&obs.opened), 2);

  /* Bytes that arrive before the deadline, echoed into a window that
   * takes little: most of the echo waits in uvs at the deadline. */
  loop_send_all(&loop, stays, out, DRAIN_ECHO);
  while (test_now_ms() - t0 < DRAIN_MS + 100) {
    uv_run(&loop, UV_RUN_NOWAIT);
    usleep(1000);
  }
  ASSERT_EQ(atomic_load(&drain_calls), 0);
  got = loop_recv_n(&loop, stays, in, DRAIN_ECHO, IO_TIMEOUT);
  ASSERT_EQ(got, DRAIN_ECHO);
  ASSERT_MEM_EQ(in, out, DRAIN_ECHO);
  /* Then the server's FIN, and the client's end finishes the drain. */
  ASSERT_EQ(loop_eof_within(&loop, stays, IO_TIMEOUT), 1);
  ASSERT_OK(close(stays));
  RUN_UNTIL(&loop, atomic_load(&drain_calls) == 1, IO_TIMEOUT);
  printf("# drained with %s after %" PRIu64 " ms; on_close got %s\n",
         uvs_err_name(atomic_load(&drain_status)),
         test_now_ms() - t0,
         uvs_err_name(atomic_load(&obs.last_close)));
  ASSERT_ERR(atomic_load(&drain_status), UV_ETIMEDOUT);
  ASSERT_GE(test_now_ms() - t0, DRAIN_MS);
  ASSERT_EQ(atomic_load(&obs.closed), 2);
  ASSERT_OK(uvs_server_close(server, NULL));
  ASSERT_EQ(atomic_load(&drain_calls), 1);
  test_loop_close(&loop);
  free(out);
  free(in);
}


/* A peer that neither reads nor closes: past the deadline and
 * close_linger_ms it is reset, and the drain still ends. */
static void drain_resets_stragglers(void) {
  uvs_handler_t handler = echo_handler(UVS_MODE_EVENT);
  uvs_config_t config;
  uvs_server_t* server;
  uv_loop_t loop;
  uint64_t t0;
  int fd;
  int i;

  obs_reset();
  drain_reset();
  uvs_config_init(&config);
  config.close_linger_ms = 300;
  server = loop_server(&loop, NULL, &handler, &config);
  fd = connect_to(test_server_port(server), SMALL_RCVBUF);
  RUN_UNTIL(&loop, atomic_load(&obs.opened) == 1, IO_TIMEOUT);
  for (i = 0; i < 8; i++)
    loop_send_all(&loop, fd, zero_chunk, sizeof(zero_chunk));
  t0 = test_now_ms();
  ASSERT_OK(uvs_server_drain(server, 300, on_drained));
  RUN_UNTIL(&loop, atomic_load(&drain_calls) == 1, IO_TIMEOUT);
  ASSERT_ERR(atomic_load(&drain_status), UV_ETIMEDOUT);
  ASSERT_GE(test_now_ms() - t0, 300);
  ASSERT_EQ(atomic_load(&obs.closed), 1);
  ASSERT_EQ(uvs_server_connection_count(server), 0);
  ASSERT_OK(close(fd));
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
}


/* unix: new clients are refused once the drain has started; the open
 * one is still served. With unlink_on_close (the default) the socket file
 * may already be gone (ENOENT); kept, it refuses (ECONNREFUSED). */
static void drain_refuses_unix(int unlink_on_close) {
  uvs_handler_t handler = echo_handler(UVS_MODE_EVENT);
  uvs_config_t config;
  uvs_server_t* server;
  uv_loop_t loop;
  test_tmpdir_t dir;
  struct sockaddr_un un;
  char path[128];
  char address[160];
  int late;
  int err;
  int fd;

  obs_reset();
  drain_reset();
  test_tmpdir_make(&dir);
  test_tmpdir_file(&dir, "drain.sock", path, sizeof(path));
  snprintf(address, sizeof(address), "unix:%s", path);
  uvs_config_init(&config);
  config.unlink_on_close = unlink_on_close;
  server = loop_server(&loop, address, &handler, &config);
  memset(&un, 0, sizeof(un));
  un.sun_family = AF_UNIX;
  memcpy(un.sun_path, path, strlen(path) + 1);

  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  ASSERT_OK(connect(fd, (struct sockaddr*) &un, sizeof(un)));
  loop_echo(&loop, fd, "unix\n");
  ASSERT_OK(uvs_server_drain(server, 5000, on_drained));

  late = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(late, 0);
  err = connect(late, (struct sockaddr*) &un, sizeof(un)) == 0 ? 0 : errno;
  ASSERT_OK(close(late));
  printf("# unlink_on_close %d: a late client gets %s\n",
         unlink_on_close,
         err != 0 ? strerror(err) : "connected");
  if (unlink_on_close)
    ASSERT_TRUE(err == ECONNREFUSED || err == ENOENT);
  else
    ASSERT_EQ(err, ECONNREFUSED);

  loop_echo(&loop, fd, "still served\n");
  ASSERT_OK(close(fd));
  RUN_UNTIL(&loop, atomic_load(&drain_calls) == 1, IO_TIMEOUT);
  ASSERT_OK(atomic_load(&drain_status));
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
  test_tmpdir_remove(&dir);
}

static void drain_refuses_unix_unlinked(void) {
  drain_refuses_unix(1);
}

static void drain_refuses_unix_kept(void) {
  drain_refuses_unix(0);
}


/* uvs_server_close during a drain: the callback gets UV_ECANCELED, once. */
static void drain_cancelled_by_close(void) {
  uvs_handler_t handler = echo_handler(UVS_MODE_EVENT);
  uvs_config_t config;
  uvs_server_t* server;
  uv_loop_t loop;
  int fd;

  obs_reset();
  drain_reset();
  uvs_config_init(&config);
  server = loop_server(&loop, NULL, &handler, &config);
  fd = connect_to(test_server_port(server), 0);
  loop_echo(&loop, fd, "open\n");
  ASSERT_OK(uvs_server_drain(server, 60000, on_drained));
  run_for(&loop, 20);
  ASSERT_OK(uvs_server_close(server, NULL));
  ASSERT_EQ(atomic_load(&drain_calls), 1);
  ASSERT_ERR(atomic_load(&drain_status), UV_ECANCELED);
  ASSERT_ERR(atomic_load(&obs.last_close), UV_ECANCELED);
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  ASSERT_OK(close(fd));
  test_loop_close(&loop);
}


/* uvs_server_close from on_open while uvs_server_drain takes the
 * clients waiting in the backlog: the backlog pass stops there, without
 * an accept on the closed listener (no EBADF reaching handle_error or
 * accept_errors); the drain callback gets UV_ECANCELED, once. */
static atomic_int close_calls;
static uvs_stats_t stats_at_close;

static void on_closed_keep_stats(uvs_server_t* server) {
  stats_at_close = stats_of(server);
  atomic_fetch_add(&close_calls, 1);
}

static void close_in_open(uvs_conn_t* conn) {
  ev_open(conn);
  if (atomic_load(&obs.opened) == 1)
    ASSERT_OK(uvs_server_close(uvs_conn_server(conn), on_closed_keep_stats));
}

static void drain_closed_in_backlog_pass(void) {
  uvs_handler_t handler = echo_handler(UVS_MODE_EVENT);
  uvs_config_t config;
  uvs_server_t* server;
  uv_loop_t loop;
  int fds[3];
  int port;
  int i;

  obs_reset();
  drain_reset();
  atomic_store(&close_calls, 0);
  memset(&stats_at_close, 0, sizeof(stats_at_close));
  handler.on_open = close_in_open;
  uvs_config_init(&config);
  server = loop_server(&loop, NULL, &handler, &config);
  port = test_server_port(server);
  /* The loop has not run: all three wait in the backlog. */
  for (i = 0; i < 3; i++)
    fds[i] = connect_to(port, 0);
  ASSERT_OK(uvs_server_drain(server, 5000, on_drained));
  RUN_UNTIL(&loop,
            atomic_load(&close_calls) == 1 && atomic_load(&drain_calls) == 1,
            IO_TIMEOUT);
  run_for(&loop, 20);
  printf("# opened %d, handle_error %d (%s), accept_errors %" PRIu64 "\n",
         atomic_load(&obs.opened),
         atomic_load(&obs.errors),
         uvs_err_name(atomic_load(&obs.last_error)),
         (uint64_t) stats_at_close.accept_errors);
  ASSERT_EQ(atomic_load(&obs.opened), 1);
  ASSERT_EQ(atomic_load(&obs.errors), 0);
  ASSERT_EQ(stats_at_close.accept_errors, 0);
  ASSERT_EQ(stats_at_close.accepted, 1);
  ASSERT_EQ(atomic_load(&close_calls), 1);
  ASSERT_EQ(atomic_load(&drain_calls), 1);
  ASSERT_ERR(atomic_load(&drain_status), UV_ECANCELED);
  ASSERT_EQ(atomic_load(&obs.closed), 1);
  for (i = 0; i < 3; i++)
    ASSERT_OK(close(fds[i]));
  test_loop_close(&loop);
}


/* Threading: a handler blocked in uvs_recv at the deadline gets
 * UV_ECANCELED, its finish runs, and what it had sent is flushed before
 * the server's FIN. */
#define DRAIN_SENT MIB

static int drain_bl_handle(uvs_conn_t* conn) {
  char c;
  ssize_t n;
  int r = uvs_sendall(conn, zero_chunk, DRAIN_SENT);
  if (r != 0)
    return r;
  n = uvs_recv(conn, &c, 1);
  atomic_store(&obs.result, (int) n);
  record_io(n);
  return n < 0 ? (int) n : 0;
}

static void drain_threading(void) {
  uvs_handler_t handler = echo_handler(UVS_MODE_THREADING);
  uvs_config_t config;
  uvs_server_t* server;
  uv_loop_t loop;
  char* in;
  int fd;

  obs_reset();
  drain_reset();
  handler.handle = drain_bl_handle;
  uvs_config_init(&config);
  config.mode = UVS_MODE_THREADING;
  server = loop_server(&loop, NULL, &handler, &config);
  in = malloc(DRAIN_SENT);
  ASSERT_NOT_NULL(in);
  fd = connect_to(test_server_port(server), SMALL_RCVBUF);
  RUN_UNTIL(&loop, atomic_load(&obs.opened) == 1, IO_TIMEOUT);
  ASSERT_OK(uvs_server_drain(server, DRAIN_MS, on_drained));
  run_for(&loop, DRAIN_MS + 100);
  /* The handler was woken at the deadline; it has finished. */
  RUN_UNTIL(&loop, atomic_load(&obs.closed) == 1, IO_TIMEOUT);
  ASSERT_ERR(atomic_load(&obs.result), UV_ECANCELED);
  ASSERT_EQ(atomic_load(&drain_calls), 0); /* the output still waits */
  ASSERT_EQ(loop_recv_n(&loop, fd, in, DRAIN_SENT, IO_TIMEOUT), DRAIN_SENT);
  ASSERT_EQ(loop_eof_within(&loop, fd, IO_TIMEOUT), 1);
  ASSERT_OK(close(fd));
  RUN_UNTIL(&loop, atomic_load(&drain_calls) == 1, IO_TIMEOUT);
  ASSERT_ERR(atomic_load(&drain_status), UV_ETIMEDOUT);
  ASSERT_EQ(atomic_load(&obs.errors), 0); /* a cancel is no error */
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
  free(in);
}


/* Threading, with a write buffer: bytes a handler wrote with uvs_write
 * (accepted, buffered) before it blocked are flushed after its finish, as
 * Python's StreamRequestHandler.finish flushes wfile. */
static int drain_wbuf_handle(uvs_conn_t* conn) {
  char c;
  ssize_t n;
  int r = uvs_write(conn, "buffered\n", 9);
  if (r != 0)
    return r;
  n = uvs_recv(conn, &c, 1);
  atomic_store(&obs.result, (int) n);
  return n < 0 ? (int) n : 0;
}

static void drain_threading_flushes_wbuf(void) {
  uvs_handler_t handler = echo_handler(UVS_MODE_THREADING);
  uvs_config_t config;
  uvs_server_t* server;
  uv_loop_t loop;
  char in[16];
  int fd;

  obs_reset();
  drain_reset();
  handler.handle = drain_wbuf_handle;
  uvs_config_init(&config);
  config.mode = UVS_MODE_THREADING;
  config.wbufsize = 4096;
  server = loop_server(&loop, NULL, &handler, &config);
  fd = connect_to(test_server_port(server), 0);
  RUN_UNTIL(&loop, atomic_load(&obs.opened) == 1, IO_TIMEOUT);
  ASSERT_OK(uvs_server_drain(server, 200, on_drained));
  RUN_UNTIL(&loop, atomic_load(&obs.closed) == 1, IO_TIMEOUT);
  ASSERT_ERR(atomic_load(&obs.result), UV_ECANCELED);
  ASSERT_EQ(loop_recv_n(&loop, fd, in, 9, IO_TIMEOUT), 9);
  ASSERT_MEM_EQ(in, "buffered\n", 9);
  ASSERT_EQ(loop_eof_within(&loop, fd, IO_TIMEOUT), 1);
  ASSERT_OK(close(fd));
  RUN_UNTIL(&loop, atomic_load(&drain_calls) == 1, IO_TIMEOUT);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
}


/* ---- 9. Closing a busy threading connection from another thread ----- */

/* uvs_conn_close from another thread while the handler works outside
 * uvs I/O: the connection is shut down at that moment (the client sees
 * EOF, shutdown_request runs) rather than when the handler returns. */
#define BUSY_MS  2500
#define CLOSE_MS 500

static _Atomic(uvs_conn_t*) busy_conn;
static atomic_int busy_release;
static atomic_int busy_ended;
static atomic_int shutdown_calls;
static atomic_ullong shutdown_at;

static void busy_reset(void) {
  atomic_store(&busy_conn, NULL);
  atomic_store(&busy_release, 0);
  atomic_store(&busy_ended, 0);
  atomic_store(&shutdown_calls, 0);
  atomic_store(&shutdown_at, 0);
}

static void record_shutdown(uvs_server_t* server,
                            uv_os_sock_t fd,
                            const uvs_address_t* peer) {
  atomic_store(&shutdown_at, test_now_ms());
  atomic_fetch_add(&shutdown_calls, 1);
}

static int busy_handle(uvs_conn_t* conn) {
  uint64_t until = test_now_ms() + BUSY_MS;
  atomic_store(&busy_conn, conn);
  while (!atomic_load(&busy_release) && test_now_ms() < until)
    usleep(1000);
  atomic_store(&busy_ended, 1);
  return 0;
}

static void close_busy_handler(void) {
  uvs_handler_t handler = echo_handler(UVS_MODE_THREADING);
  uvs_config_t config;
  serve_thread_t t;
  uvs_server_t* server;
  uint64_t t0;
  int fd;

  obs_reset();
  busy_reset();
  handler.handle = busy_handle;
  uvs_config_init(&config);
  config.mode = UVS_MODE_THREADING;
  config.close_timeout_ms = CLOSE_MS;
  config.hooks.shutdown_request = record_shutdown;
  server = serve_start(&t, NULL, &handler, &config);
  fd = connect_to(test_server_port(server), 0);
  WAIT_UNTIL(atomic_load(&busy_conn) != NULL, IO_TIMEOUT);
  t0 = test_now_ms();
  ASSERT_OK(uvs_conn_close(atomic_load(&busy_conn)));
  ASSERT_EQ(eof_within(fd, 1000), 1);
  printf("# EOF after %" PRIu64 " ms\n", test_now_ms() - t0);
  ASSERT_EQ(atomic_load(&busy_ended), 0); /* still working */
  ASSERT_EQ(atomic_load(&shutdown_calls), 1);
  ASSERT_LT(atomic_load(&shutdown_at) - t0, 1000);
  atomic_store(&busy_release, 1);
  WAIT_UNTIL(atomic_load(&obs.closed) == 1, IO_TIMEOUT);
  ASSERT_OK(close(fd));
  WAIT_UNTIL(uvs_server_connection_count(server) == 0, IO_TIMEOUT);
  ASSERT_EQ(atomic_load(&shutdown_calls), 1);
  ASSERT_EQ(atomic_load(&obs.errors), 0);
  serve_stop(&t);
}


/* After that close, a handler whose uvs_sendall to a peer that does not
 * read fails, and whose finish buffers a last line with uvs_write
 * (wbufsize > 0) and returns, leaves nothing waiting for room in the
 * output: the connection is gone within close_timeout_ms and a margin. */
static atomic_int finish_wrote;

static int stuck_handle(uvs_conn_t* conn) {
  int r = 0;
  int i;
  atomic_store(&busy_conn, conn);
  for (i = 0; i < 16 && r == 0; i++)
    r = uvs_sendall(conn, zero_chunk, sizeof(zero_chunk));
  atomic_store(&obs.result, r);
  return 0;
}

static int stuck_finish(uvs_conn_t* conn) {
  atomic_store(&finish_wrote, uvs_write(conn, "bye\n", 4));
  return bl_finish(conn);
}

static void close_final_flush_bounded(void) {
  uvs_handler_t handler = echo_handler(UVS_MODE_THREADING);
  uvs_config_t config;
  serve_thread_t t;
  uvs_server_t* server;
  uint64_t t0;
  int fd;

  obs_reset();
  busy_reset();
  atomic_store(&finish_wrote, 1);
  handler.handle = stuck_handle;
  handler.finish = stuck_finish;
  uvs_config_init(&config);
  config.mode = UVS_MODE_THREADING;
  config.wbufsize = 8192;
  config.close_timeout_ms = CLOSE_MS;
  config.close_linger_ms = 200;
  config.hooks.shutdown_request = record_shutdown;
  server = serve_start(&t, NULL, &handler, &config);
  fd = connect_to(test_server_port(server), 4096); /* never reads */
  WAIT_UNTIL(atomic_load(&busy_conn) != NULL, IO_TIMEOUT);
  usleep(200 * 1000); /* the output fills up */
  t0 = test_now_ms();
  ASSERT_OK(uvs_conn_close(atomic_load(&busy_conn)));
  WAIT_UNTIL(uvs_server_connection_count(server) == 0, CLOSE_MS + 1500);
  printf("# gone after %" PRIu64 " ms\n", test_now_ms() - t0);
  ASSERT_ERR(atomic_load(&obs.result), UV_ECANCELED);
  ASSERT_EQ(atomic_load(&obs.closed), 1);
  ASSERT_OK(atomic_load(&finish_wrote));
  ASSERT_EQ(atomic_load(&shutdown_calls), 1);
  ASSERT_EQ(atomic_load(&obs.errors), 0);
  ASSERT_OK(close(fd));
  serve_stop(&t);
}


/* ---- 10. Stats ------------------------------------------------------ */

#define EXCHANGE 1000

/* A known exchange: two clients echo EXCHANGE bytes each. */
static void stats_exact(uvs_mode_t mode) {
  uvs_handler_t handler = echo_handler(mode);
  uvs_config_t config;
  serve_thread_t t;
  uvs_server_t* server;
  uvs_stats_t st;
  char out[EXCHANGE];
  char in[EXCHANGE];
  int fds[2];
  int port;
  int i;

  printf("# mode %s\n", mode_name(mode));
  obs_reset();
  uvs_config_init(&config);
  config.mode = mode;
  server = serve_start(&t, NULL, &handler, &config);
  port = test_server_port(server);
  st = stats_of(server);
  ASSERT_EQ(st.accepted, 0);
  ASSERT_EQ(st.bytes_in, 0);
  ASSERT_EQ(st.bytes_out, 0);
  memset(out, 'q', sizeof(out));
  for (i = 0; i < 2; i++) {
    fds[i] = connect_to(port, 0);
    test_send_all(fds[i], out, sizeof(out));
    ASSERT_EQ(test_recv_n(fds[i], in, sizeof(in), IO_TIMEOUT), EXCHANGE);
    ASSERT_MEM_EQ(in, out, sizeof(in));
  }
  /* The loop counts a write just after the socket took it: the echo may
   * reach the client first. */
  WAIT_UNTIL(stats_of(server).bytes_out >= 2 * EXCHANGE, IO_TIMEOUT);
  st = stats_of(server);
  ASSERT_EQ(st.accepted, 2);
  ASSERT_EQ(st.active, 2);
  ASSERT_EQ(st.bytes_in, 2 * EXCHANGE);
  ASSERT_EQ(st.bytes_out, 2 * EXCHANGE);
  ASSERT_EQ(st.children, 0);

  /* One ends normally, one with a reset. */
  ASSERT_OK(close(fds[0]));
  rst_close(fds[1]);
  WAIT_UNTIL(uvs_server_connection_count(server) == 0, IO_TIMEOUT);
  st = stats_of(server);
  ASSERT_EQ(st.accepted, 2);
  ASSERT_EQ(st.active, 0);
  ASSERT_EQ(st.bytes_in, 2 * EXCHANGE);
  ASSERT_EQ(st.bytes_out, 2 * EXCHANGE);
  ASSERT_EQ(st.conn_errors, 1);
  ASSERT_EQ(st.rejected_verify, 0);
  ASSERT_EQ(st.rejected_limit, 0);
  ASSERT_EQ(st.timeouts, 0);
  ASSERT_EQ(st.accept_errors, 0);
  ASSERT_EQ(st.datagrams_oversize, 0);
  ASSERT_EQ(st.datagrams_dropped, 0);
  serve_stop(&t);
}

static void stats_exact_event(void) {
  stats_exact(UVS_MODE_EVENT);
}

static void stats_exact_threading(void) {
  stats_exact(UVS_MODE_THREADING);
}


/* verify_request refusals and handler errors. */
static atomic_int verify_calls;

static int refuse_second(uvs_server_t* server, const uvs_address_t* peer) {
  return atomic_fetch_add(&verify_calls, 1) != 1;
}

static int failing_handle(uvs_conn_t* conn) {
  char buf[16];
  ssize_t n = uvs_readline(conn, buf, sizeof(buf));
  if (n < 0)
    return (int) n;
  if (n == 4 && memcmp(buf, "bad\n", 4) == 0)
    return UV_EPROTO;
  return uvs_sendall(conn, buf, (size_t) n);
}

static void stats_refusals_and_errors(void) {
  uvs_handler_t handler = echo_handler(UVS_MODE_THREADING);
  uvs_config_t config;
  serve_thread_t t;
  uvs_server_t* server;
  uvs_stats_t st;
  int port;
  int fd;

  obs_reset();
  atomic_store(&verify_calls, 0);
  handler.handle = failing_handle;
  uvs_config_init(&config);
  config.mode = UVS_MODE_THREADING;
  config.hooks.verify_request = refuse_second;
  server = serve_start(&t, NULL, &handler, &config);
  port = test_server_port(server);

  fd = connect_to(port, 0);
  echo_check(fd, "good\n");
  ASSERT_EQ(eof_within(fd, IO_TIMEOUT), 1);
  ASSERT_OK(close(fd));

  fd = connect_to(port, 0); /* refused */
  ASSERT_EQ(eof_within(fd, IO_TIMEOUT), 1);
  ASSERT_OK(close(fd));

  fd = connect_to(port, 0);
  test_send_all(fd, "bad\n", 4);
  ASSERT_EQ(eof_within(fd, IO_TIMEOUT), 1);
  ASSERT_OK(close(fd));

  WAIT_UNTIL(atomic_load(&obs.closed) == 2, IO_TIMEOUT);
  WAIT_UNTIL(uvs_server_connection_count(server) == 0, IO_TIMEOUT);
  st = stats_of(server);
  ASSERT_EQ(st.accepted, 3);
  ASSERT_EQ(st.rejected_verify, 1);
  ASSERT_EQ(st.handler_errors, 1);
  ASSERT_EQ(atomic_load(&obs.errors), 1);
  ASSERT_ERR(atomic_load(&obs.last_error), UV_EPROTO);
  ASSERT_EQ(st.bytes_in, 5 + 4);
  ASSERT_EQ(st.bytes_out, 5);
  ASSERT_EQ(st.conn_errors, 0);
  serve_stop(&t);
}


/* uvs_server_stats from another thread while the loop serves: every
 * counter only grows, and the last reading is exact. */
typedef struct {
  uv_thread_t thread;
  uvs_server_t* server;
  atomic_int stop;
  int reads;
  int went_back;
} reader_t;

static void reader_main(void* arg) {
  reader_t* r = arg;
  uvs_stats_t last;
  memset(&last, 0, sizeof(last));
  while (!atomic_load(&r->stop)) {
    uvs_stats_t st;
    ASSERT_OK(uvs_server_stats(r->server, &st));
    if (st.accepted < last.accepted || st.bytes_in < last.bytes_in ||
        st.bytes_out < last.bytes_out) {
      r->went_back++;
    }
    last = st;
    r->reads++;
    usleep(100);
  }
}

static void stats_from_thread(uvs_mode_t mode) {
  uvs_handler_t handler = echo_handler(mode);
  uvs_config_t config;
  serve_thread_t t;
  uvs_server_t* server;
  uvs_stats_t st;
  reader_t reader;
  int port;
  int i;

  printf("# mode %s\n", mode_name(mode));
  obs_reset();
  uvs_config_init(&config);
  config.mode = mode;
  server = serve_start(&t, NULL, &handler, &config);
  port = test_server_port(server);
  memset(&reader, 0, sizeof(reader));
  reader.server = server;
  ASSERT_OK(uv_thread_create(&reader.thread, reader_main, &reader));
  for (i = 0; i < 50; i++) {
    int fd = connect_to(port, 0);
    echo_check(fd, "counted\n");
    ASSERT_OK(close(fd));
  }
  WAIT_UNTIL(uvs_server_connection_count(server) == 0, IO_TIMEOUT);
  atomic_store(&reader.stop, 1);
  ASSERT_OK(uv_thread_join(&reader.thread));
  printf("# %d readings\n", reader.reads);
  ASSERT_GT(reader.reads, 0);
  ASSERT_EQ(reader.went_back, 0);
  st = stats_of(server);
  ASSERT_EQ(st.accepted, 50);
  ASSERT_EQ(st.bytes_in, 50 * 8);
  ASSERT_EQ(st.bytes_out, 50 * 8);
  ASSERT_EQ(st.active, 0);
  serve_stop(&t);
}

static void stats_from_thread_event(void) {
  stats_from_thread(UVS_MODE_EVENT);
}

static void stats_from_thread_threading(void) {
  stats_from_thread(UVS_MODE_THREADING);
}


/* A client reset counts in conn_errors, once, whether the handler's
 * reads go through the loop (threading) or the descriptor (sync); an
 * ordinary end does not. */
static void stats_reset(uvs_mode_t mode) {
  uvs_handler_t handler = echo_handler(mode);
  uvs_config_t config;
  serve_thread_t t;
  uvs_server_t* server;
  uvs_stats_t st;
  int port;
  int fd;

  printf("# mode %s\n", mode_name(mode));
  obs_reset();
  uvs_config_init(&config);
  config.mode = mode;
  server = serve_start(&t, NULL, &handler, &config);
  port = test_server_port(server);
  fd = connect_to(port, 0);
  echo_check(fd, "ends\n");
  ASSERT_OK(close(fd));
  WAIT_UNTIL(atomic_load(&obs.closed) == 1, IO_TIMEOUT);
  fd = connect_to(port, 0);
  echo_check(fd, "resets\n");
  rst_close(fd);
  WAIT_UNTIL(atomic_load(&obs.closed) == 2, IO_TIMEOUT);
  WAIT_UNTIL(uvs_server_connection_count(server) == 0, IO_TIMEOUT);
  st = stats_of(server);
  printf("# conn_errors %" PRIu64 ", handler_errors %" PRIu64 "\n",
         (uint64_t) st.conn_errors,
         (uint64_t) st.handler_errors);
  ASSERT_EQ(st.accepted, 2);
  ASSERT_EQ(st.active, 0);
  ASSERT_EQ(st.conn_errors, 1);
  ASSERT_EQ(st.timeouts, 0);
  serve_stop(&t);
}

static void stats_reset_sync(void) {
  stats_reset(UVS_MODE_SYNC);
}

static void stats_reset_threading(void) {
  stats_reset(UVS_MODE_THREADING);
}


static const test_case_t cases[] = {
  { "max_connections_event", max_connections_event },
  { "max_connections_threading", max_connections_threading },
  { "max_connections_forking", max_connections_forking },
  { "max_connections_pause_event", max_connections_pause_event },
  { "max_connections_pause_threading", max_connections_pause_threading },
  { "idle_timeout_event", idle_timeout_event },
  { "idle_timeout_threading", idle_timeout_threading },
  { "idle_timeout_sync", idle_timeout_sync },
  { "read_timeout_event", read_timeout_event },
  { "read_timeout_threading", read_timeout_threading },
  { "request_pending_not_supported", request_pending_not_supported },
  { "write_timeout_event_pieces", write_timeout_event_pieces },
  { "write_timeout_threading", write_timeout_threading },
  { "drain_ends_by_itself", drain_ends_by_itself },
  { "drain_idle_server", drain_idle_server },
  { "drain_deadline", drain_deadline },
  { "drain_resets_stragglers", drain_resets_stragglers },
  { "drain_refuses_unix_unlinked", drain_refuses_unix_unlinked },
  { "drain_refuses_unix_kept", drain_refuses_unix_kept },
  { "drain_cancelled_by_close", drain_cancelled_by_close },
  { "drain_threading", drain_threading },
  { "stats_exact_event", stats_exact_event },
  { "stats_exact_threading", stats_exact_threading },
  { "stats_refusals_and_errors", stats_refusals_and_errors },
  { "stats_from_thread_event", stats_from_thread_event },
  { "stats_from_thread_threading", stats_from_thread_threading },
  { "write_timeout_event", write_timeout_event },
  { "idle_timeout_slow_transfer", idle_timeout_slow_transfer },
  { "drain_threading_flushes_wbuf", drain_threading_flushes_wbuf },
  { "write_report_after_abort", write_report_after_abort },
  { "write_report_after_over_cap", write_report_after_over_cap },
  { "write_report_after_reset", write_report_after_reset },
  { "stats_reset_sync", stats_reset_sync },
  { "stats_reset_threading", stats_reset_threading },
  { "drain_closed_in_backlog_pass", drain_closed_in_backlog_pass },
  { "close_busy_handler", close_busy_handler },
  { "close_final_flush_bounded", close_final_flush_bounded },
};

TEST_MAIN(cases)
