/* SPDX-License-Identifier: MIT */
/*
 * The datagram listener's edges (lib/listen_dgram.c), each case a defect a
 * review found, failing before its fix: the in-flight bound on unixgram
 * requests in threading mode, uvs_server_send_to on an unbound socket, a
 * datagram reply written through wbufsize, sync mode serving one UDP
 * request per loop iteration, and an empty reply that has to wait.
 *
 * Threads: the test thread runs the server's loop by hand; a client
 * pthread floods in the bound case. Every wait is bounded.
 */
#include "test.h"

#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/un.h>

#define IO_TIMEOUT 5000 /* ms */


/* ---- Helpers --------------------------------------------------------- */

typedef struct {
  char dir[64];
  char path[96];
  char addr[128];
} tmp_path_t;

static void tmp_path(tmp_path_t* t, const char* scheme) {
  snprintf(t->dir, sizeof(t->dir), "/tmp/uvs-dgram-XXXXXX");
  ASSERT_NOT_NULL(mkdtemp(t->dir));
  snprintf(t->path, sizeof(t->path), "%s/s", t->dir);
  snprintf(t->addr, sizeof(t->addr), "%s:%s", scheme, t->path);
}

static void tmp_path_done(tmp_path_t* t) {
  unlink(t->path);
  ASSERT_EQ(rmdir(t->dir), 0);
}

/* A datagram client connected to the server's address. */
static int dgram_client(uvs_server_t* server) {
  char text[UVS_ADDRSTRLEN];
  size_t size = sizeof(text);
  uvs_address_t addr;
  int fd;

  ASSERT_OK(uvs_server_address(server, text, &size));
  ASSERT_OK(uvs_address_parse(text, &addr));
  fd = socket(addr.u.sa.sa_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(connect(fd, &addr.u.sa, addr.len), 0);
  return fd;
}


/* ---- The in-flight bound ---------------------------------------------- */

static atomic_int release_handlers;
static atomic_int flood_done;

static int held_handle(uvs_conn_t* conn) {
  uint64_t deadline = test_now_ms() + IO_TIMEOUT;
  (void) conn;
  while (!atomic_load(&release_handlers) && test_now_ms() < deadline)
    usleep(1000);
  return 0;
}

typedef struct {
  int fd;
  int count;
} flood_t;

static void* flood_main(void* arg) {
  flood_t* f = arg;
  int i;
  for (i = 0; i < f->count; i++) {
    /* Blocks while the server's receive queue is full. */
    if (send(f->fd, "x", 1, 0) != 1)
      break;
  }
  atomic_store(&flood_done, 1);
  return NULL;
}

/* Threading unixgram with two held workers and 3000 datagrams: receiving
 * pauses at UVS__DGRAM_REQUESTS_MAX requests (it did not: every wake-up
 * took 32 more, and memory grew with the flood). */
static void unixgram_inflight_bound(void) {
  uvs_handler_t handler;
  uvs_config_t config;
  uvs_server_t* server;
  uv_loop_t loop;
  tmp_path_t t;
  pthread_t thread;
  flood_t flood;
  size_t most = 0;
  uint64_t deadline;

  tmp_path(&t, "unixgram");
  ASSERT_OK(uv_loop_init(&loop));
  memset(&handler, 0, sizeof(handler));
  handler.handle = held_handle;
  uvs_config_init(&config);
  config.mode = UVS_MODE_THREADING;
  config.max_threads = 2;
  atomic_store(&release_handlers, 0);
  atomic_store(&flood_done, 0);
  ASSERT_OK(uvs_server_new(&loop, &server, t.addr, &handler, &config));
  ASSERT_OK(uvs_server_start(server));
  flood.fd = dgram_client(server);
  flood.count = 3000;
  ASSERT_OK(pthread_create(&thread, NULL, flood_main, &flood));

  /* Run until the flood is blocked on a full socket (or one second). */
  deadline = test_now_ms() + 1000;
  while (test_now_ms() < deadline) {
    size_t n;
    uv_run(&loop, UV_RUN_NOWAIT);
    n = uvs_server_connection_count(server);
    if (n > most)
      most = n;
    usleep(1000);
  }
  ASSERT_LE(most, UVS__DGRAM_REQUESTS_MAX);
  ASSERT_GE(most, UVS__DGRAM_REQUESTS_MAX / 2); /* the flood did arrive */

  /* Released, the handlers finish and receiving resumes. */
  atomic_store(&release_handlers, 1);
  deadline = test_now_ms() + IO_TIMEOUT;
  while (!atomic_load(&flood_done) && test_now_ms() < deadline) {
    uv_run(&loop, UV_RUN_NOWAIT);
    usleep(500);
  }
  ASSERT_TRUE(atomic_load(&flood_done));
  ASSERT_OK(pthread_join(thread, NULL));
  close(flood.fd);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
  tmp_path_done(&t);
}


/* ---- send_to before bind ---------------------------------------------- */

/* A UDP server made without binding: uvs_server_send_to refuses (the
 * kernel would bind the socket to a random port behind uvs's back, and
 * the later bind would fail). */
static void send_to_needs_bind(void) {
  uvs_handler_t handler;
  uvs_config_t config;
  uvs_server_t* server;
  uvs_address_t peer;
  uv_loop_t loop;

  ASSERT_OK(uv_loop_init(&loop));
  memset(&handler, 0, sizeof(handler));
  uvs_config_init(&config);
  config.bind_and_activate = 0;
  ASSERT_OK(
      uvs_server_new(&loop, &server, "udp://127.0.0.1:0", &handler, &config));
  ASSERT_OK(uvs_address_parse("udp://127.0.0.1:9", &peer));
  ASSERT_ERR(uvs_server_send_to(server, &peer, "x", 1), UV_EINVAL);
  ASSERT_OK(uvs_server_bind(server));
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
}


/* ---- wbufsize and datagram replies ------------------------------------ */

static atomic_int write_results[2];

static int buffered_handle(uvs_conn_t* conn) {
  atomic_store(&write_results[0], uvs_write(conn, "12345678", 8));
  atomic_store(&write_results[1], uvs_write(conn, "abcd", 4));
  return 0;
}

/* With wbufsize set, a write that would take the reply past
 * max_packet_size fails at once with UV_EMSGSIZE and the bytes before it
 * are still sent (they were buffered, the error came only at the final
 * flush and was ignored, and the whole reply was lost). */
static void dgram_reply_through_wbuf(void) {
  uvs_handler_t handler;
  uvs_config_t config;
  uvs_server_t* server;
  uv_loop_t loop;
  char reply[64];
  ssize_t n = -1;
  uint64_t deadline;
  int fd;

  ASSERT_OK(uv_loop_init(&loop));
  memset(&handler, 0, sizeof(handler));
  handler.handle = buffered_handle;
  uvs_config_init(&config);
  config.mode = UVS_MODE_SYNC;
  config.max_packet_size = 10;
  config.wbufsize = 100;
  ASSERT_OK(
      uvs_server_new(&loop, &server, "udp://127.0.0.1:0", &handler, &config));
  ASSERT_OK(uvs_server_start(server));
  fd = dgram_client(server);
  ASSERT_EQ(send(fd, "q", 1, 0), 1);
  deadline = test_now_ms() + IO_TIMEOUT;
  while (n < 0 && test_now_ms() < deadline) {
    uv_run(&loop, UV_RUN_NOWAIT);
    n = recv(fd, reply, sizeof(reply), MSG_DONTWAIT);
    if (n < 0)
      usleep(1000);
  }
  ASSERT_EQ(atomic_load(&write_results[0]), 0);
  ASSERT_EQ(atomic_load(&write_results[1]), UV_EMSGSIZE);
  ASSERT_EQ(n, 8);
  ASSERT_MEM_EQ(reply, "12345678", 8);
  close(fd);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
}


/* ---- Sync mode yields between UDP requests --------------------------- */

static int served;

static int count_handle(uvs_conn_t* conn) {
  (void) conn;
  served++;
  return 0;
}

/* Sync mode serves one request per loop iteration, so timers, signals and
 * shutdowns run between requests, on UDP as on unixgram and streams (UDP
 * served up to 32: libuv's receive loop went on). */
static void sync_one_per_iteration(const char* addr) {
  uvs_handler_t handler;
  uvs_config_t config;
  uvs_server_t* server;
  uv_loop_t loop;
  uint64_t deadline;
  int most = 0;
  int fd;
  int i;

  ASSERT_OK(uv_loop_init(&loop));
  memset(&handler, 0, sizeof(handler));
  handler.handle = count_handle;
  uvs_config_init(&config);
  config.mode = UVS_MODE_SYNC;
  ASSERT_OK(uvs_server_new(&loop, &server, addr, &handler, &config));
  fd = dgram_client(server);
  for (i = 0; i < 9; i++)
    ASSERT_EQ(send(fd, "x", 1, 0), 1);
  served = 0;
  ASSERT_OK(uvs_server_start(server));
  deadline = test_now_ms() + IO_TIMEOUT;
  while (served < 9 && test_now_ms() < deadline) {
    int before = served;
    uv_run(&loop, UV_RUN_NOWAIT);
    if (served - before > most)
      most = served - before;
  }
  ASSERT_EQ(served, 9);
  ASSERT_EQ(most, 1);
  close(fd);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
}

static void sync_udp_one_per_iteration(void) {
  sync_one_per_iteration("udp://127.0.0.1:0");
}

static void sync_unixgram_one_per_iteration(void) {
  tmp_path_t t;
  tmp_path(&t, "unixgram");
  sync_one_per_iteration(t.addr);
  tmp_path_done(&t);
}


/* ---- An empty reply that has to wait ---------------------------------- */

/* uvs_server_send_to with no bytes (data NULL, len 0) to a receiver whose
 * queue is full waits in the server's queue like any reply and arrives,
 * empty, after the ones before it (queueing it passed NULL to memcpy,
 * which UBSan reports). */
static void empty_send_to_waits(void) {
  uvs_handler_t handler;
  uvs_server_t* server;
  uvs_address_t peer;
  struct sockaddr_un sun;
  uv_loop_t loop;
  tmp_path_t t;
  char cpath[128];
  char caddr[160];
  char buf[16];
  uint64_t deadline;
  int sent = 0;
  int got = 0;
  ssize_t n = -1;
  int fd;

  tmp_path(&t, "unixgram");
  snprintf(cpath, sizeof(cpath), "%s/c", t.dir);
  snprintf(caddr, sizeof(caddr), "unixgram:%s", cpath);
  ASSERT_OK(uv_loop_init(&loop));
  memset(&handler, 0, sizeof(handler));
  ASSERT_OK(uvs_server_new(&loop, &server, t.addr, &handler, NULL));
  ASSERT_OK(uvs_server_start(server));
  fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  memset(&sun, 0, sizeof(sun));
  sun.sun_family = AF_UNIX;
  memcpy(sun.sun_path, cpath, strlen(cpath) + 1);
  ASSERT_EQ(bind(fd, (struct sockaddr*) &sun, sizeof(sun)), 0);
  ASSERT_OK(uvs_address_parse(caddr, &peer));

  /* Fill the client's receive queue until the server has to queue. */
  while (server->dgram_queue_len == 0 && sent < 4096) {
    ASSERT_OK(uvs_server_send_to(server, &peer, "d", 1));
    sent++;
  }
  ASSERT_EQ(server->dgram_queue_len, 1);
  ASSERT_OK(uvs_server_send_to(server, &peer, NULL, 0));
  ASSERT_EQ(server->dgram_queue_len, 2);

  /* Read everything: the queued replies follow, the empty one last. */
  deadline = test_now_ms() + IO_TIMEOUT;
  while (got <= sent && test_now_ms() < deadline) {
    uv_run(&loop, UV_RUN_NOWAIT);
    n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0) {
      ASSERT_TRUE(errno == EAGAIN || errno == EINTR);
      usleep(1000);
      continue;
    }
    got++;
    if (got <= sent) {
      ASSERT_EQ(n, 1);
      ASSERT_EQ(buf[0], 'd');
    }
  }
  ASSERT_EQ(got, sent + 1);
  ASSERT_EQ(n, 0);
  ASSERT_EQ(server->dgram_queue_len, 0);
  close(fd);
  unlink(cpath);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
  tmp_path_done(&t);
}


static const test_case_t cases[] = {
  { "unixgram_inflight_bound", unixgram_inflight_bound },
  { "send_to_needs_bind", send_to_needs_bind },
  { "dgram_reply_through_wbuf", dgram_reply_through_wbuf },
  { "sync_udp_one_per_iteration", sync_udp_one_per_iteration },
  { "sync_unixgram_one_per_iteration", sync_unixgram_one_per_iteration },
  { "empty_send_to_waits", empty_send_to_waits },
};

TEST_MAIN(cases)
