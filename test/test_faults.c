/* SPDX-License-Identifier: MIT */
/*
 * Faults a server must survive, each provoked once and its outcome
 * asserted: a peer that resets in the middle of a large reply, a peer that
 * half-closes and keeps reading, a peer that never reads, a slowloris
 * flood next to a normal client, descriptor exhaustion and the recovery
 * from it, and a churn of connections ended in every way a client can end
 * one. Event mode throughout; threading and sync mode where the fault
 * reaches the blocking request I/O.
 *
 * Threads: most servers run serve_forever on a pthread, on a loop of their
 * own, while the test thread plays the clients; the churn case runs the
 * loop on the test thread, so a client can close before the server has
 * accepted it. Every client socket has receive and send timeouts and every
 * wait has a deadline. Nothing here measures speed: the time and CPU
 * bounds are liveness bounds (served at all, not spinning), far above
 * what the work needs.
 */
#define TEST_CASE_TIMEOUT 90
#include "test.h"

#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/time.h>

#define IO_TIMEOUT   5000        /* ms; every client read is bounded by this */
#define SMALL_RCVBUF 65536       /* a client's receive buffer: a small window */
#define CHUNK        65536       /* bytes per write in the flooding handlers */
#define BIG_REPLY    (16u << 20) /* the event-mode reply that cannot go out */
#define MIB          ((size_t) 1 << 20)

/* One read-only source for every large write. */
static char zero_chunk[1 << 20];


/* ---- What the cases observe ----------------------------------------- */

/* Handlers run on the loop thread or on workers while the test thread
 * reads: every field is atomic. */
typedef struct {
  atomic_int opened;       /* on_open, or setup in the blocking modes */
  atomic_int closed;       /* on_close, or finish in the blocking modes */
  atomic_int errors;       /* handle_error calls */
  atomic_int last_error;   /* the last handle_error status */
  atomic_int emfile;       /* handle_error calls with UV_EMFILE */
  atomic_int etimedout;    /* handle_error calls with UV_ETIMEDOUT */
  atomic_int accepted;     /* verify_request calls */
  atomic_int last_close;   /* the last on_close status */
  atomic_int big_done;     /* the big or flooding request has ended */
  atomic_int big_result;   /* its on_close status or write result */
  atomic_int in_send;      /* its handler is sending */
  atomic_size_t queued;    /* write queue size just after the big write */
  atomic_size_t max_queue; /* the largest write queue size sampled */
  atomic_int samples;      /* how many samples */
  atomic_size_t written;   /* bytes the flooding handler got queued */
} obs_t;

static obs_t obs;

/* The connection a loop-side sampler reads the write queue of, in
 * threading mode; cleared by its finish under the lock, so it is never
 * read after it is freed. */
static pthread_mutex_t big_lock = PTHREAD_MUTEX_INITIALIZER;
static uvs_conn_t* big_conn;

static void obs_reset(void) {
  atomic_store(&obs.opened, 0);
  atomic_store(&obs.closed, 0);
  atomic_store(&obs.errors, 0);
  atomic_store(&obs.last_error, 0);
  atomic_store(&obs.emfile, 0);
  atomic_store(&obs.etimedout, 0);
  atomic_store(&obs.accepted, 0);
  atomic_store(&obs.last_close, 1);
  atomic_store(&obs.big_done, 0);
  atomic_store(&obs.big_result, 1);
  atomic_store(&obs.in_send, 0);
  atomic_store(&obs.queued, 0);
  atomic_store(&obs.max_queue, 0);
  atomic_store(&obs.samples, 0);
  atomic_store(&obs.written, 0);
  pthread_mutex_lock(&big_lock);
  big_conn = NULL;
  pthread_mutex_unlock(&big_lock);
}

static void record_error(uvs_server_t* server,
                         uvs_conn_t* conn,
                         const uvs_address_t* peer,
                         int status) {
  atomic_store(&obs.last_error, status);
  if (status == UV_EMFILE)
    atomic_fetch_add(&obs.emfile, 1);
  if (status == UV_ETIMEDOUT)
    atomic_fetch_add(&obs.etimedout, 1);
  atomic_fetch_add(&obs.errors, 1);
}

static int count_verify(uvs_server_t* server, const uvs_address_t* peer) {
  atomic_fetch_add(&obs.accepted, 1);
  return 1;
}

static void sample_max(size_t q) {
  size_t old = atomic_load(&obs.max_queue);
  while (q > old && !atomic_compare_exchange_weak(&obs.max_queue, &old, q)) {
  }
  atomic_fetch_add(&obs.samples, 1);
}

/* The service_actions hook: samples the published connection's write
 * queue on the loop thread. */
static void sample_big_queue(uvs_server_t* server) {
  pthread_mutex_lock(&big_lock);
  if (big_conn != NULL)
    sample_max(uvs_conn_write_queue_size(big_conn));
  pthread_mutex_unlock(&big_lock);
}

/* The published connection's write queue, read from the test thread
 * (Threads: any in threading mode); 0 when none is published. */
static size_t big_queue_size(void) {
  size_t q = 0;
  pthread_mutex_lock(&big_lock);
  if (big_conn != NULL)
    q = uvs_conn_write_queue_size(big_conn);
  pthread_mutex_unlock(&big_lock);
  return q;
}

static void publish_big(uvs_conn_t* conn) {
  pthread_mutex_lock(&big_lock);
  big_conn = conn;
  pthread_mutex_unlock(&big_lock);
}

/* Clears the published connection if it is `conn`; returns 1 if it was. */
static int unpublish_big(uvs_conn_t* conn) {
  int was;
  pthread_mutex_lock(&big_lock);
  was = big_conn == conn;
  if (was)
    big_conn = NULL;
  pthread_mutex_unlock(&big_lock);
  return was;
}

/* Waits until `cond` holds, failing after `ms` milliseconds. */
#define WAIT_UNTIL(cond, ms)                                 \
 do {                                                        \
  uint64_t wait_deadline_ = test_now_ms() + (uint64_t) (ms); \
  while (!(cond)) {                                          \
   if (test_now_ms() > wait_deadline_)                       \
    TEST__FAIL("waited %d ms for %s", (int) (ms), #cond);    \
   usleep(1000);                                             \
  }                                                          \
 } while (0)

static const char* mode_name(uvs_mode_t mode) {
  switch (mode) {
  case UVS_MODE_EVENT:
    return "event";
  case UVS_MODE_SYNC:
    return "sync";
  case UVS_MODE_THREADING:
    return "threading";
  default:
    return "?";
  }
}


/* ---- Servers -------------------------------------------------------- */

/* serve_forever on a pthread, on the server's own loop. */
typedef struct {
  pthread_t thread;
  uvs_server_t* server;
  uint64_t interval;
  int result;
} serve_thread_t;

static void* serve_main(void* arg) {
  serve_thread_t* t = arg;
  t->result = uvs_server_serve_forever(t->server, t->interval);
  return NULL;
}

/* A server on a loop of its own for tcp://127.0.0.1:0 with the recording
 * handle_error, serving on a pthread (service_actions every `interval`
 * ms, 0: never). */
static uvs_server_t* serve_start(serve_thread_t* t,
                                 const uvs_handler_t* handler,
                                 uvs_config_t* config,
                                 uint64_t interval) {
  if (config->hooks.handle_error == NULL)
    config->hooks.handle_error = record_error;
  t->server = NULL;
  ASSERT_OK(
      uvs_server_new(NULL, &t->server, "tcp://127.0.0.1:0", handler, config));
  t->interval = interval;
  t->result = -12345;
  ASSERT_OK(pthread_create(&t->thread, NULL, serve_main, t));
  return t->server;
}

/* shutdown, join (serve_forever returned 0), close. */
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

static void loopback(struct sockaddr_in* sin, int port) {
  memset(sin, 0, sizeof(*sin));
  sin->sin_family = AF_INET;
  sin->sin_port = htons((uint16_t) port);
  sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

/* A blocking client of 127.0.0.1:`port` on socket `fd`; with `rcvbuf` >
 * 0 its receive buffer (and so the window it offers) is set first. */
static void connect_fd(int fd, int port, int rcvbuf) {
  struct sockaddr_in sin;
  if (rcvbuf > 0) {
    ASSERT_OK(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)));
  }
  loopback(&sin, port);
  if (connect(fd, (struct sockaddr*) &sin, sizeof(sin)) != 0)
    TEST__FAIL("connect to port %d: %s", port, strerror(errno));
  set_timeouts(fd);
}

static int new_socket(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    TEST__FAIL("socket: %s", strerror(errno));
  return fd;
}

static int connect_to(int port, int rcvbuf) {
  int fd = new_socket();
  connect_fd(fd, port, rcvbuf);
  return fd;
}

/* Closes with a TCP reset (SO_LINGER {1, 0}). */
static void rst_close(int fd) {
  struct linger lg = { 1, 0 };
  ASSERT_OK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)));
  ASSERT_OK(close(fd));
}

/* Sends `msg` and reads its echo back within `ms`. */
static void echo_check_within(int fd, const char* msg, int ms) {
  char got[256];
  size_t len = strlen(msg);
  ASSERT_LT(len, sizeof(got));
  test_send_all(fd, msg, len);
  ASSERT_EQ(test_recv_n(fd, got, len, ms), (ssize_t) len);
  ASSERT_MEM_EQ(got, msg, len);
}

static void echo_check(int fd, const char* msg) {
  echo_check_within(fd, msg, IO_TIMEOUT);
}

static int is_reset_status(int status) {
  return status == UV_ECONNRESET || status == UV_EPIPE;
}


/* ---- Handlers ------------------------------------------------------- */

/* Event mode: echo every byte; on_close records its status. */
static void ev_open(uvs_conn_t* conn) {
  atomic_fetch_add(&obs.opened, 1);
}

static void ev_echo(uvs_conn_t* conn, const char* data, size_t len) {
  uvs_conn_write(conn, data, len);
}

static void ev_close(uvs_conn_t* conn, int status) {
  atomic_store(&obs.last_close, status);
  atomic_fetch_add(&obs.closed, 1);
}

static uvs_handler_t ev_echo_handler(void) {
  uvs_handler_t handler;
  memset(&handler, 0, sizeof(handler));
  handler.on_open = ev_open;
  handler.on_data = ev_echo;
  handler.on_close = ev_close;
  return handler;
}

/* Blocking modes: echo until EOF; an error is returned (handle_error). */
static int bl_setup(uvs_conn_t* conn) {
  atomic_fetch_add(&obs.opened, 1);
  return 0;
}

static int bl_echo_rest(uvs_conn_t* conn) {
  char buf[CHUNK];
  for (;;) {
    ssize_t n = uvs_recv(conn, buf, sizeof(buf));
    int r;
    if (n <= 0)
      return (int) n;
    r = uvs_sendall(conn, buf, (size_t) n);
    if (r != 0)
      return r;
  }
}

static int bl_finish(uvs_conn_t* conn) {
  if (unpublish_big(conn))
    atomic_store(&obs.big_done, 1);
  atomic_fetch_add(&obs.closed, 1);
  return 0;
}

static uvs_handler_t bl_echo_handler(void) {
  uvs_handler_t handler;
  memset(&handler, 0, sizeof(handler));
  handler.setup = bl_setup;
  handler.handle = bl_echo_rest;
  handler.finish = bl_finish;
  return handler;
}

static uvs_handler_t echo_handler(uvs_mode_t mode) {
  return mode == UVS_MODE_EVENT ? ev_echo_handler() : bl_echo_handler();
}


/* ---- 1. Peer reset in the middle of a large reply ------------------- */

/* The client that sends 'B' first gets a reply larger than the socket
 * and the peer's window hold; any other client gets an echo. */
typedef struct {
  int seen;
  int big;
} rst_state_t;

static void rst_ev_data(uvs_conn_t* conn, const char* data, size_t len) {
  rst_state_t* st = uvs_conn_state(conn);
  if (!st->seen) {
    st->seen = 1;
    st->big = data[0] == 'B';
    if (st->big) {
      char* big = calloc(1, BIG_REPLY);
      ASSERT_NOT_NULL(big);
      ASSERT_OK(uvs_conn_write(conn, big, BIG_REPLY));
      free(big);
      atomic_store(&obs.queued, uvs_conn_write_queue_size(conn));
      return;
    }
  }
  if (!st->big)
    uvs_conn_write(conn, data, len);
}

static void rst_ev_close(uvs_conn_t* conn, int status) {
  rst_state_t* st = uvs_conn_state(conn);
  if (st->big) {
    atomic_store(&obs.big_result, status);
    atomic_store(&obs.big_done, 1);
  } else {
    atomic_store(&obs.last_close, status);
  }
  atomic_fetch_add(&obs.closed, 1);
}

/* Blocking modes: 'B' makes the handler send 64 MiB in 1 MiB sendalls,
 * which block once output passes the high mark; the first error ends
 * it and is returned. */
static int rst_bl_handle(uvs_conn_t* conn) {
  char c;
  ssize_t n = uvs_recv(conn, &c, 1);
  int r = 0;
  int i;

  if (n <= 0)
    return (int) n;
  if (c != 'B') {
    r = uvs_sendall(conn, &c, 1);
    return r != 0 ? r : bl_echo_rest(conn);
  }
  publish_big(conn);
  atomic_store(&obs.in_send, 1);
  for (i = 0; i < 64 && r == 0; i++)
    r = uvs_sendall(conn, zero_chunk, sizeof(zero_chunk));
  atomic_store(&obs.big_result, r);
  return r;
}

static void rst_mid_write(uvs_mode_t mode) {
  uvs_handler_t handler;
  uvs_config_t config;
  serve_thread_t t;
  uvs_server_t* server;
  char buf[4096];
  int small;
  int big;
  int port;

  printf("# mode %s\n", mode_name(mode));
  obs_reset();
  memset(&handler, 0, sizeof(handler));
  if (mode == UVS_MODE_EVENT) {
    handler.state_size = sizeof(rst_state_t);
    handler.on_open = ev_open;
    handler.on_data = rst_ev_data;
    handler.on_close = rst_ev_close;
  } else {
    handler = bl_echo_handler();
    handler.handle = rst_bl_handle;
  }
  uvs_config_init(&config);
  config.mode = mode;
  server = serve_start(&t, &handler, &config, 0);
  port = test_server_port(server);

  /* A normal client, served before, during (not in sync mode, which
   * serves one client at a time) and after the reset. */
  small = -1;
  if (mode != UVS_MODE_SYNC) {
    small = connect_to(port, 0);
    echo_check(small, "before\n");
  }

  big = connect_to(port, SMALL_RCVBUF);
  test_send_all(big, "B", 1);
  /* The reply is flowing and the rest waits in uvs. */
  ASSERT_GT(test_recv_n(big, buf, sizeof(buf), IO_TIMEOUT), 0);
  if (mode == UVS_MODE_EVENT) {
    WAIT_UNTIL(atomic_load(&obs.queued) > 0, IO_TIMEOUT);
    printf("# %zu bytes queued\n", atomic_load(&obs.queued));
    ASSERT_GT(atomic_load(&obs.queued), BIG_REPLY / 2);
  } else if (mode == UVS_MODE_THREADING) {
    /* uvs_sendall is waiting: the output is at its high mark. */
    WAIT_UNTIL(big_queue_size() >= config.output_high_water, IO_TIMEOUT);
  } else {
    /* Sync: the handler is inside the send loop; let it block. */
    WAIT_UNTIL(atomic_load(&obs.in_send), IO_TIMEOUT);
    usleep(200 * 1000);
    /* It waits in the backlog until the big request ends. */
    small = connect_to(port, 0);
  }
  if (mode != UVS_MODE_SYNC)
    echo_check(small, "during\n");
  rst_close(big);

  WAIT_UNTIL(atomic_load(&obs.big_done), IO_TIMEOUT);
  printf("# the big request ended with %s\n",
         uvs_err_name(atomic_load(&obs.big_result)));
  ASSERT_TRUE(is_reset_status(atomic_load(&obs.big_result)));
  /* One report, of that error (event mode: from the connection's end;
   * blocking modes: the handler's return). */
  WAIT_UNTIL(atomic_load(&obs.errors) == 1, IO_TIMEOUT);
  ASSERT_EQ(atomic_load(&obs.last_error), atomic_load(&obs.big_result));

  echo_check(small, "after\n");
  ASSERT_OK(close(small));
  WAIT_UNTIL(atomic_load(&obs.closed) == 2, IO_TIMEOUT);
  WAIT_UNTIL(uvs_server_connection_count(server) == 0, IO_TIMEOUT);
  if (mode == UVS_MODE_EVENT)
    ASSERT_EQ(atomic_load(&obs.last_close), 0);
  ASSERT_EQ(atomic_load(&obs.errors), 1);
  ASSERT_EQ(atomic_load(&obs.opened), 2);
  serve_stop(&t);
}

static void rst_mid_write_event(void) {
  rst_mid_write(UVS_MODE_EVENT);
}

static void rst_mid_write_threading(void) {
  rst_mid_write(UVS_MODE_THREADING);
}

static void rst_mid_write_sync(void) {
  rst_mid_write(UVS_MODE_SYNC);
}


/* ---- 2. Peer half-close --------------------------------------------- */

static unsigned char pattern_byte(size_t i) {
  return (unsigned char) ((i * 131u) ^ (i >> 9));
}

/* Sends `total` bytes while reading their echo, then shuts down its write
 * side and reads on: every byte comes back, in order, then EOF. */
static void half_close_exchange(int port, size_t total) {
  unsigned char* out = malloc(total);
  unsigned char buf[CHUNK];
  uint64_t deadline = test_now_ms() + 20000;
  size_t sent = 0;
  size_t got = 0;
  int shut = 0;
  int eof = 0;
  size_t i;
  int fd;

  ASSERT_NOT_NULL(out);
  for (i = 0; i < total; i++)
    out[i] = pattern_byte(i);
  fd = connect_to(port, 0);
  while (!eof) {
    struct pollfd pfd;
    uint64_t now = test_now_ms();
    if (now >= deadline)
      TEST__FAIL("half-close: sent %zu, got %zu of %zu", sent, got, total);
    if (sent == total && !shut) {
      ASSERT_OK(shutdown(fd, SHUT_WR));
      shut = 1;
    }
    pfd.fd = fd;
    pfd.events = (short) (POLLIN | (sent < total ? POLLOUT : 0));
    pfd.revents = 0;
    if (poll(&pfd, 1, (int) (deadline - now)) <= 0)
      continue;
    if ((pfd.revents & POLLOUT) && sent < total) {
      size_t want = total - sent < CHUNK ? total - sent : CHUNK;
      ssize_t n = send(fd, out + sent, want, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0)
        sent += (size_t) n;
      else if (errno != EAGAIN && errno != EINTR)
        TEST__FAIL("send: %s", strerror(errno));
    }
    if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
      if (n > 0) {
        ASSERT_LE(got + (size_t) n, sent);
        ASSERT_MEM_EQ(buf, out + got, (size_t) n);
        got += (size_t) n;
      } else if (n == 0) {
        eof = 1;
      } else if (errno != EAGAIN && errno != EINTR) {
        TEST__FAIL("recv after %zu bytes: %s", got, strerror(errno));
      }
    }
  }
  ASSERT_EQ(shut, 1);
  ASSERT_EQ(sent, total);
  ASSERT_EQ(got, total);
  ASSERT_OK(close(fd));
  free(out);
}

static void half_close(uvs_mode_t mode) {
  uvs_handler_t handler = echo_handler(mode);
  uvs_config_t config;
  serve_thread_t t;
  uvs_server_t* server;
  int port;

  printf("# mode %s\n", mode_name(mode));
  obs_reset();
  uvs_config_init(&config);
  config.mode = mode;
  server = serve_start(&t, &handler, &config, 0);
  port = test_server_port(server);
  half_close_exchange(port, 4 * MIB);
  half_close_exchange(port, 1);
  WAIT_UNTIL(atomic_load(&obs.closed) == 2, IO_TIMEOUT);
  WAIT_UNTIL(uvs_server_connection_count(server) == 0, IO_TIMEOUT);
  ASSERT_EQ(atomic_load(&obs.opened), 2);
  ASSERT_EQ(atomic_load(&obs.errors), 0);
  if (mode == UVS_MODE_EVENT)
    ASSERT_EQ(atomic_load(&obs.last_close), 0);
  serve_stop(&t);
}

static void half_close_event(void) {
  half_close(UVS_MODE_EVENT);
}

static void half_close_threading(void) {
  half_close(UVS_MODE_THREADING);
}

static void half_close_sync(void) {
  half_close(UVS_MODE_SYNC);
}


/* ---- 3. A client that never reads ----------------------------------- */

/* Event mode: a timer writes CHUNK bytes every millisecond until a write
 * fails, sampling the write queue before and after each write. */
typedef struct {
  uv_timer_t* timer;
} flood_state_t;

static void flood_tick(uv_timer_t* timer) {
  uvs_conn_t* conn = uv_handle_get_data((uv_handle_t*) timer);
  int r;

  sample_max(uvs_conn_write_queue_size(conn));
  r = uvs_conn_write(conn, zero_chunk, CHUNK);
  sample_max(uvs_conn_write_queue_size(conn));
  if (r == 0) {
    atomic_fetch_add(&obs.written, CHUNK);
    return;
  }
  atomic_store(&obs.big_result, r);
  uv_timer_stop(timer);
}

static void free_timer(uv_handle_t* handle) {
  free(handle);
}

static void flood_open(uvs_conn_t* conn) {
  flood_state_t* st = uvs_conn_state(conn);
  st->timer = malloc(sizeof(*st->timer));
  ASSERT_NOT_NULL(st->timer);
  ASSERT_OK(uv_timer_init(uvs_server_loop(uvs_conn_server(conn)), st->timer));
  uv_handle_set_data((uv_handle_t*) st->timer, conn);
  ASSERT_OK(uv_timer_start(st->timer, flood_tick, 1, 1));
  atomic_fetch_add(&obs.opened, 1);
}

static void flood_close(uvs_conn_t* conn, int status) {
  flood_state_t* st = uvs_conn_state(conn);
  uv_close((uv_handle_t*) st->timer, free_timer);
  atomic_store(&obs.last_close, status);
  atomic_store(&obs.big_done, 1);
  atomic_fetch_add(&obs.closed, 1);
}

static void never_reads_event(void) {
  uvs_handler_t handler;
  uvs_config_t config;
  serve_thread_t t;
  uvs_server_t* server;
  int fd;

  obs_reset();
  memset(&handler, 0, sizeof(handler));
  handler.state_size = sizeof(flood_state_t);
  handler.on_open = flood_open;
  handler.on_close = flood_close;
  uvs_config_init(&config);
  config.max_write_queue = MIB;
  server = serve_start(&t, &handler, &config, 0);
  fd = connect_to(test_server_port(server), SMALL_RCVBUF);

  WAIT_UNTIL(atomic_load(&obs.big_done), 20000);
  printf("# %zu bytes accepted, largest queue %zu in %d samples\n",
         atomic_load(&obs.written),
         atomic_load(&obs.max_queue),
         atomic_load(&obs.samples));
  ASSERT_ERR(atomic_load(&obs.big_result), UV_ENOBUFS);
  ASSERT_ERR(atomic_load(&obs.last_close), UV_ENOBUFS);
  /* Memory stayed bounded by the cap, which was reached: more than the
   * cap went through uvs before the cut. */
  ASSERT_LE(atomic_load(&obs.max_queue), config.max_write_queue);
  ASSERT_GT(atomic_load(&obs.max_queue), config.max_write_queue - CHUNK);
  ASSERT_GT(atomic_load(&obs.written), config.max_write_queue);
  ASSERT_EQ(atomic_load(&obs.errors), 1);
  ASSERT_ERR(atomic_load(&obs.last_error), UV_ENOBUFS);
  /* The client sees its connection end (reset), not a hang. */
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  ASSERT_OK(close(fd));
  WAIT_UNTIL(uvs_server_connection_count(server) == 0, IO_TIMEOUT);
  serve_stop(&t);
}


/* Threading mode: uvs_sendall blocks at the high mark; the request
 * timeout ends the wait. */
static int stall_handle(uvs_conn_t* conn) {
  size_t total = 0;
  int r = 0;

  publish_big(conn);
  while (r == 0 && total < 512 * MIB) {
    r = uvs_sendall(conn, zero_chunk, CHUNK);
    if (r == 0)
      total += CHUNK;
  }
  atomic_store(&obs.written, total);
  atomic_store(&obs.big_result, r);
  return r;
}

static void never_reads_threading(void) {
  uvs_handler_t handler = bl_echo_handler();
  uvs_config_t config;
  serve_thread_t t;
  uvs_server_t* server;
  int fd;

  obs_reset();
  handler.handle = stall_handle;
  uvs_config_init(&config);
  config.mode = UVS_MODE_THREADING;
  config.output_high_water = 256 * 1024;
  config.request_timeout_ms = 500;
  config.hooks.service_actions = sample_big_queue;
  server = serve_start(&t, &handler, &config, 5);
  fd = connect_to(test_server_port(server), SMALL_RCVBUF);

  WAIT_UNTIL(atomic_load(&obs.big_done), 20000);
  printf("# %zu bytes accepted, largest queue %zu in %d samples\n",
         atomic_load(&obs.written),
         atomic_load(&obs.max_queue),
         atomic_load(&obs.samples));
  ASSERT_ERR(atomic_load(&obs.big_result), UV_ETIMEDOUT);
  ASSERT_GT(atomic_load(&obs.samples), 0);
  /* Blocked at the high mark, never more than one piece past it. */
  ASSERT_GE(atomic_load(&obs.max_queue), config.output_high_water);
  ASSERT_LE(atomic_load(&obs.max_queue), config.output_high_water + CHUNK);
  WAIT_UNTIL(atomic_load(&obs.errors) == 1, IO_TIMEOUT);
  ASSERT_ERR(atomic_load(&obs.last_error), UV_ETIMEDOUT);
  /* The client goes; unread data makes its close a reset. */
  ASSERT_OK(close(fd));
  WAIT_UNTIL(uvs_server_connection_count(server) == 0, IO_TIMEOUT);
  serve_stop(&t);
}


/* ---- 4. Slowloris --------------------------------------------------- */

#define LORIS       1000
#define LORIS_FDS   2300 /* both ends of every connection, and spares */
#define LORIS_TRIPS 20
#define LINE_CAP    4096

/* Raises RLIMIT_NOFILE's soft limit to `need`, keeping the old one in
 * `old`. Returns 0 when the hard limit is too low. */
static int raise_nofile(rlim_t need, struct rlimit* old) {
  struct rlimit lim;
  ASSERT_OK(getrlimit(RLIMIT_NOFILE, old));
  if (old->rlim_cur != RLIM_INFINITY && old->rlim_cur >= need)
    return 1;
  if (old->rlim_cur == RLIM_INFINITY)
    return 1;
  if (old->rlim_max != RLIM_INFINITY && old->rlim_max < need)
    return 0;
  lim = *old;
  lim.rlim_cur = need;
  ASSERT_OK(setrlimit(RLIMIT_NOFILE, &lim));
  return 1;
}

/* Event mode: a line echo; the line so far is the connection's state. */
typedef struct {
  size_t len;
  char line[LINE_CAP];
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
      uvs_conn_write(conn, st->line, st->len);
      st->len = 0;
    }
  }
}

/* Blocking modes: readline, echo, until EOF. */
static int line_bl_handle(uvs_conn_t* conn) {
  char line[LINE_CAP];
  for (;;) {
    ssize_t n = uvs_readline(conn, line, sizeof(line));
    int r;
    if (n <= 0)
      return (int) n;
    r = uvs_sendall(conn, line, (size_t) n);
    if (r != 0)
      return r;
  }
}

/* The normal client: LORIS_TRIPS round trips on one connection, the
 * first within `first_ms` (it may wait for a worker), the rest within
 * IO_TIMEOUT each. */
typedef struct {
  pthread_t thread;
  int port;
  int first_ms;
  atomic_int done;
  int trips;
  uint64_t first_rtt;
  uint64_t max_rtt;
} normal_t;

static void* normal_main(void* arg) {
  normal_t* nc = arg;
  int fd = connect_to(nc->port, 0);
  int i;

  for (i = 0; i < LORIS_TRIPS; i++) {
    char line[64];
    char got[64];
    uint64_t t0 = test_now_ms();
    uint64_t rtt;
    int len =
        snprintf(line, sizeof(line), "request %d of the normal client\n", i);
    test_send_all(fd, line, (size_t) len);
    if (test_recv_n(fd,
                    got,
                    (size_t) len,
                    i == 0 ? nc->first_ms : IO_TIMEOUT) != len) {
      break;
    }
    if (memcmp(got, line, (size_t) len) != 0)
      break;
    rtt = test_now_ms() - t0;
    if (i == 0)
      nc->first_rtt = rtt;
    else if (rtt > nc->max_rtt)
      nc->max_rtt = rtt;
    nc->trips++;
  }
  close(fd);
  atomic_store(&nc->done, 1);
  return NULL;
}

/* The slowloris clients: nonblocking, connected, one byte of a line that
 * never ends every ~200 ms. */
typedef struct {
  int fd[LORIS];
  int open;  /* how many still open */
  int ended; /* how many saw the server end the connection */
  struct pollfd pfd[LORIS];
} loris_t;

static void loris_connect(loris_t* l, int port) {
  struct sockaddr_in sin;
  uint64_t deadline = test_now_ms() + 20000;
  int pending = LORIS;
  int i;

  loopback(&sin, port);
  for (i = 0; i < LORIS; i++) {
    l->fd[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (l->fd[i] < 0)
      TEST__FAIL("socket %d: %s", i, strerror(errno));
    if (connect(l->fd[i], (struct sockaddr*) &sin, sizeof(sin)) != 0 &&
        errno != EINPROGRESS) {
      TEST__FAIL("connect %d: %s", i, strerror(errno));
    }
    l->pfd[i].fd = l->fd[i];
    l->pfd[i].events = POLLOUT;
  }
  l->open = LORIS;
  l->ended = 0;
  /* Every connect completes. */
  while (pending > 0) {
    ASSERT_LT(test_now_ms(), deadline);
    ASSERT_GE(poll(l->pfd, LORIS, 100), 0);
    pending = 0;
    for (i = 0; i < LORIS; i++) {
      int err = 0;
      socklen_t len = sizeof(err);
      if (l->pfd[i].fd < 0)
        continue;
      if (!(l->pfd[i].revents & (POLLOUT | POLLERR | POLLHUP))) {
        pending++;
        continue;
      }
      ASSERT_OK(getsockopt(l->fd[i], SOL_SOCKET, SO_ERROR, &err, &len));
      ASSERT_EQ(err, 0);
      l->pfd[i].fd = -1;
    }
  }
}

/* One byte to every open slowloris; then reads what the server did:
 * an end (EOF or reset) closes our side. Returns the count of ends seen
 * now. */
static int loris_step(loris_t* l) {
  int ended = 0;
  int i;
  for (i = 0; i < LORIS; i++) {
    if (l->fd[i] < 0)
      continue;
    (void) send(l->fd[i], "x", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
    l->pfd[i].fd = l->fd[i];
    l->pfd[i].events = POLLIN;
    l->pfd[i].revents = 0;
  }
  ASSERT_GE(poll(l->pfd, LORIS, 0), 0);
  for (i = 0; i < LORIS; i++) {
    char buf[64];
    ssize_t n;
    if (l->fd[i] < 0 || l->pfd[i].revents == 0)
      continue;
    n = recv(l->fd[i], buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0)
      TEST__FAIL("slowloris %d got %zd bytes of an unfinished line", i, n);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
      continue;
    ASSERT_OK(close(l->fd[i]));
    l->fd[i] = -1;
    l->pfd[i].fd = -1;
    l->open--;
    l->ended++;
    ended++;
  }
  return ended;
}

static void loris_close(loris_t* l) {
  int i;
  for (i = 0; i < LORIS; i++) {
    if (l->fd[i] >= 0) {
      ASSERT_OK(close(l->fd[i]));
      l->fd[i] = -1;
    }
  }
  l->open = 0;
}

static void slowloris(uvs_mode_t mode) {
  uvs_handler_t handler;
  uvs_config_t config;
  struct rlimit old_limit;
  serve_thread_t t;
  uvs_server_t* server;
  normal_t nc;
  loris_t* l;
  uint64_t deadline;
  int port;

  printf("# mode %s\n", mode_name(mode));
  if (!raise_nofile(LORIS_FDS, &old_limit)) {
    printf("# SKIP RLIMIT_NOFILE hard limit below %d\n", LORIS_FDS);
    return;
  }
  obs_reset();
  memset(&handler, 0, sizeof(handler));
  uvs_config_init(&config);
  config.mode = mode;
  if (mode == UVS_MODE_EVENT) {
    handler.state_size = sizeof(line_state_t);
    handler.on_open = ev_open;
    handler.on_data = line_ev_data;
    handler.on_close = ev_close;
  } else {
    handler = bl_echo_handler();
    handler.handle = line_bl_handle;
    /* Far fewer workers than clients, and each read call must complete
     * within the request timeout however its bytes trickle in. Requests
     * wait for a worker in arrival order, so the normal client, behind
     * LORIS slow ones, waits about LORIS * timeout / max_threads. */
    config.max_threads = 64;
    config.request_timeout_ms = 300;
  }
  config.hooks.verify_request = count_verify;
  server = serve_start(&t, &handler, &config, 0);
  port = test_server_port(server);
  l = calloc(1, sizeof(*l));
  ASSERT_NOT_NULL(l);

  loris_connect(l, port);
  WAIT_UNTIL(atomic_load(&obs.accepted) == LORIS, 20000);

  memset(&nc, 0, sizeof(nc));
  nc.port = port;
  nc.first_ms = mode == UVS_MODE_EVENT ? IO_TIMEOUT : 20000;
  ASSERT_OK(pthread_create(&nc.thread, NULL, normal_main, &nc));
  deadline = test_now_ms() + 40000;
  while (!atomic_load(&nc.done) || (mode != UVS_MODE_EVENT && l->open > 0)) {
    ASSERT_LT(test_now_ms(), deadline);
    loris_step(l);
    usleep(200 * 1000);
  }
  ASSERT_OK(pthread_join(nc.thread, NULL));
  printf("# normal client: %d round trips, first %" PRIu64
         " ms, then at most %" PRIu64 " ms; %d slowloris ended\n",
         nc.trips,
         nc.first_rtt,
         nc.max_rtt,
         l->ended);
  ASSERT_EQ(nc.trips, LORIS_TRIPS);

  if (mode == UVS_MODE_EVENT) {
    /* Served while every slowloris was held open. */
    ASSERT_EQ(l->ended, 0);
    WAIT_UNTIL(uvs_server_connection_count(server) == LORIS, IO_TIMEOUT);
    ASSERT_EQ(atomic_load(&obs.errors), 0);
  } else {
    /* Every slowloris timed out in its readline and was closed. */
    ASSERT_EQ(l->ended, LORIS);
    WAIT_UNTIL(atomic_load(&obs.etimedout) == LORIS, IO_TIMEOUT);
    ASSERT_EQ(atomic_load(&obs.errors), LORIS);
  }
  loris_close(l);
  free(l);
  WAIT_UNTIL(uvs_server_connection_count(server) == 0, 20000);
  ASSERT_EQ(atomic_load(&obs.closed), LORIS + 1);
  serve_stop(&t);
  ASSERT_OK(setrlimit(RLIMIT_NOFILE, &old_limit));
}

static void slowloris_event(void) {
  slowloris(UVS_MODE_EVENT);
}

static void slowloris_threading(void) {
  slowloris(UVS_MODE_THREADING);
}


/* ---- 5. Descriptor exhaustion and recovery -------------------------- */

#define HELD    4
#define PENDING 2
#define FILLERS 4096

static int highest_fd(void) {
  DIR* dir = opendir("/proc/self/fd");
  struct dirent* ent;
  int top = -1;
  int self;
  ASSERT_NOT_NULL(dir);
  self = dirfd(dir);
  while ((ent = readdir(dir)) != NULL) {
    int fd;
    if (ent->d_name[0] == '.')
      continue;
    fd = atoi(ent->d_name);
    if (fd != self && fd > top)
      top = fd;
  }
  closedir(dir);
  return top;
}

/* Takes every free descriptor below the limit. Returns how many. */
static int fill_fds(int* fillers, int cap) {
  int n = 0;
  while (n < cap) {
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      ASSERT_EQ(errno, EMFILE);
      return n;
    }
    fillers[n++] = fd;
  }
  TEST__FAIL("more than %d descriptors free under the limit", cap);
  return n;
}

static void close_all(int* fds, int n) {
  int i;
  for (i = 0; i < n; i++)
    ASSERT_OK(close(fds[i]));
}

static double cpu_seconds(void) {
  struct rusage ru;
  ASSERT_OK(getrusage(RUSAGE_SELF, &ru));
  return (double) ru.ru_utime.tv_sec + (double) ru.ru_utime.tv_usec / 1e6 +
         (double) ru.ru_stime.tv_sec + (double) ru.ru_stime.tv_usec / 1e6;
}

static void emfile_recovery(void) {
  uvs_handler_t handler = ev_echo_handler();
  uvs_config_t config;
  serve_thread_t t;
  uvs_server_t* server;
  struct rlimit old_limit;
  struct rlimit limit;
  int held[HELD];
  int pending1[PENDING];
  int pending2[PENDING];
  int* fillers;
  int nfill1;
  int nfill2;
  int fresh;
  int port;
  double cpu;
  uint64_t t0;
  int i;

  /* valgrind keeps RLIMIT_NOFILE to itself and closes an accepted
   * descriptor above it: the connection is lost, not deferred. */
  if (getenv("UVS_TEST_VALGRIND") != NULL) {
    printf("# SKIP valgrind virtualizes RLIMIT_NOFILE\n");
    return;
  }
  obs_reset();
  fillers = calloc(2 * FILLERS, sizeof(*fillers));
  ASSERT_NOT_NULL(fillers);
  uvs_config_init(&config);
  config.accept_retry_ms = 1000;
  server = serve_start(&t, &handler, &config, 0);
  port = test_server_port(server);

  for (i = 0; i < HELD; i++) {
    held[i] = connect_to(port, 0);
    echo_check(held[i], "held\n");
  }
  WAIT_UNTIL(uvs_server_connection_count(server) == HELD, IO_TIMEOUT);
  /* Every socket a client needs later is made now: under the lowered
   * limit the test thread can open nothing either. */
  for (i = 0; i < PENDING; i++) {
    pending1[i] = new_socket();
    pending2[i] = new_socket();
  }
  fresh = new_socket();

  /* Burst 1: no descriptor left below the limit. */
  ASSERT_OK(getrlimit(RLIMIT_NOFILE, &old_limit));
  limit = old_limit;
  limit.rlim_cur = (rlim_t) highest_fd() + 1;
  ASSERT_OK(setrlimit(RLIMIT_NOFILE, &limit));
  nfill1 = fill_fds(fillers, FILLERS);
  for (i = 0; i < PENDING; i++)
    connect_fd(pending1[i], port, 0);
  WAIT_UNTIL(atomic_load(&obs.emfile) == 1, IO_TIMEOUT);

  /* While exhausted the server waits, it does not spin: the back-off
   * retries once a second. */
  cpu = cpu_seconds();
  usleep(1500 * 1000);
  cpu = cpu_seconds() - cpu;
  printf("# %.3f s of CPU in 1.5 s of exhaustion\n", cpu);
  ASSERT_LT(cpu * 1000, 300);
  ASSERT_EQ(atomic_load(&obs.emfile), 1); /* once per burst */
  ASSERT_EQ(atomic_load(&obs.errors), 1);
  ASSERT_EQ(atomic_load(&obs.opened), HELD); /* nothing accepted */

  /* Releasing the held connections frees descriptors: the waiting
   * clients and a new one are served, under the same limit. */
  for (i = 0; i < HELD; i++)
    ASSERT_OK(close(held[i]));
  t0 = test_now_ms();
  connect_fd(fresh, port, 0);
  echo_check_within(fresh, "fresh\n", 3000);
  printf("# a new client served %" PRIu64 " ms after the release\n",
         test_now_ms() - t0);
  for (i = 0; i < PENDING; i++)
    echo_check(pending1[i], "was waiting\n");
  WAIT_UNTIL(uvs_server_connection_count(server) == PENDING + 1, IO_TIMEOUT);
  ASSERT_EQ(atomic_load(&obs.opened), HELD + PENDING + 1);
  ASSERT_EQ(atomic_load(&obs.emfile), 1);

  /* Burst 2: exhausted again, reported again, once. */
  nfill2 = fill_fds(fillers + nfill1, FILLERS);
  for (i = 0; i < PENDING; i++)
    connect_fd(pending2[i], port, 0);
  WAIT_UNTIL(atomic_load(&obs.emfile) == 2, IO_TIMEOUT);
  usleep(1200 * 1000); /* a retry or two fail, unreported */
  ASSERT_EQ(atomic_load(&obs.emfile), 2);
  ASSERT_EQ(atomic_load(&obs.errors), 2);

  /* The limit comes back: served again. */
  ASSERT_OK(setrlimit(RLIMIT_NOFILE, &old_limit));
  for (i = 0; i < PENDING; i++)
    echo_check_within(pending2[i], "limit back\n", 3000);
  ASSERT_EQ(atomic_load(&obs.opened), HELD + 2 * PENDING + 1);

  close_all(fillers, nfill1 + nfill2);
  free(fillers);
  close_all(pending1, PENDING);
  close_all(pending2, PENDING);
  ASSERT_OK(close(fresh));
  WAIT_UNTIL(uvs_server_connection_count(server) == 0, IO_TIMEOUT);
  ASSERT_EQ(atomic_load(&obs.errors), 2);
  serve_stop(&t);
}


/* ---- 6. Connect and close churn ------------------------------------- */

#define CHURN 2000

enum {
  CHURN_CLOSE,       /* plain close once accepted */
  CHURN_DATA,        /* send bytes, close at once */
  CHURN_RESET,       /* reset once accepted */
  CHURN_EARLY_CLOSE, /* plain close before the server accepted */
  CHURN_EARLY_RESET, /* reset before the server accepted */
  CHURN_KINDS
};

/* Runs the loop until `cond` holds, failing after `ms`. */
#define RUN_UNTIL(loop, cond, ms)                               \
 do {                                                           \
  uint64_t run_deadline_ = test_now_ms() + (uint64_t) (ms);     \
  while (!(cond)) {                                             \
   if (test_now_ms() > run_deadline_)                           \
    TEST__FAIL("ran the loop %d ms for %s", (int) (ms), #cond); \
   uv_run((loop), UV_RUN_NOWAIT);                               \
   if (!(cond))                                                 \
    usleep(100);                                                \
  }                                                             \
 } while (0)

static void churn(uvs_mode_t mode) {
  uvs_handler_t handler = echo_handler(mode);
  uvs_config_t config;
  uvs_server_t* server;
  uv_loop_t loop;
  int early_resets = 0;
  int fds_before;
  int port;
  int i;

  printf("# mode %s\n", mode_name(mode));
  obs_reset();
  ASSERT_OK(uv_loop_init(&loop));
  uvs_config_init(&config);
  config.mode = mode;
  config.hooks.handle_error = record_error;
  config.hooks.verify_request = count_verify;
  ASSERT_OK(
      uvs_server_new(&loop, &server, "tcp://127.0.0.1:0", &handler, &config));
  ASSERT_OK(uvs_server_start(server));
  port = test_server_port(server);
  /* The loop's first stream opens libuv's reserve descriptor, which
   * lives as long as the loop: one connection first, then the count. */
  {
    int fd = connect_to(port, 0);
    RUN_UNTIL(&loop, atomic_load(&obs.opened) == 1, IO_TIMEOUT);
    ASSERT_OK(close(fd));
    RUN_UNTIL(&loop,
              atomic_load(&obs.closed) == 1 &&
                  uvs_server_connection_count(server) == 0,
              IO_TIMEOUT);
    obs_reset();
  }
  fds_before = test_count_fds();

  for (i = 0; i < CHURN; i++) {
    int kind = i % CHURN_KINDS;
    int fd = connect_to(port, 0);
    switch (kind) {
    case CHURN_CLOSE:
      RUN_UNTIL(&loop, atomic_load(&obs.accepted) > i, IO_TIMEOUT);
      ASSERT_OK(close(fd));
      break;
    case CHURN_DATA:
      test_send_all(fd, "churn\n", 6);
      ASSERT_OK(close(fd));
      break;
    case CHURN_RESET:
      RUN_UNTIL(&loop, atomic_load(&obs.accepted) > i, IO_TIMEOUT);
      rst_close(fd);
      break;
    case CHURN_EARLY_CLOSE:
      /* The loop has not run since connect: not accepted yet. */
      ASSERT_LE(atomic_load(&obs.accepted), i);
      ASSERT_OK(close(fd));
      break;
    default:
      ASSERT_LE(atomic_load(&obs.accepted), i);
      rst_close(fd);
      early_resets++;
      break;
    }
    uv_run(&loop, UV_RUN_NOWAIT);
  }

  /* Every connection was taken and has ended exactly once; nothing is
   * left open. A connection reset in the backlog may be dropped by the
   * kernel before accept. */
  RUN_UNTIL(&loop,
            atomic_load(&obs.accepted) >= CHURN - early_resets &&
                uvs_server_connection_count(server) == 0 &&
                atomic_load(&obs.closed) == atomic_load(&obs.accepted),
            20000);
  printf("# %d accepted, %d ended with an error\n",
         atomic_load(&obs.accepted),
         atomic_load(&obs.errors));
  ASSERT_LE(atomic_load(&obs.accepted), CHURN);
  ASSERT_EQ(atomic_load(&obs.opened), atomic_load(&obs.accepted));
  ASSERT_EQ(test_count_fds(), fds_before);
  ASSERT_EQ(uvs_server_connection_count(server), 0);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
}

static void churn_event(void) {
  churn(UVS_MODE_EVENT);
}

static void churn_threading(void) {
  churn(UVS_MODE_THREADING);
}


static const test_case_t cases[] = {
  { "rst_mid_write_event", rst_mid_write_event },
  { "rst_mid_write_threading", rst_mid_write_threading },
  { "rst_mid_write_sync", rst_mid_write_sync },
  { "half_close_event", half_close_event },
  { "half_close_threading", half_close_threading },
  { "half_close_sync", half_close_sync },
  { "never_reads_event", never_reads_event },
  { "never_reads_threading", never_reads_threading },
  { "slowloris_event", slowloris_event },
  { "slowloris_threading", slowloris_threading },
  { "emfile_recovery", emfile_recovery },
  { "churn_event", churn_event },
  { "churn_threading", churn_threading },
};

TEST_MAIN(cases)
