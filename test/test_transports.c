/* SPDX-License-Identifier: MIT */
/*
 * The transports other than TCP: CPython's test_socketserver matrix for
 * UnixStreamServer, UDPServer and UnixDatagramServer and their Threading
 * variants (socketserver-reference.md section 3.1, cases 4, 5, 7, 8, 10
 * and 11), each also in the modes Python does not have, then the rules uvs
 * adds where Python leaves the user alone (reference 3.6): byte-exact
 * datagram echo across the whole size range, over-size datagrams dropped
 * and reported instead of truncated, the empty-reply rule, Unix socket
 * files (stale, live, not a socket, too long, unwritable directory, the
 * unlink policy), abstract names, IPv6 UDP, the peer name of a Unix stream
 * client, and handle_request taking one datagram.
 *
 * The handlers are the suite's MyHandler: a stream line echo (readline,
 * write) and DatagramRequestHandler's (readline from the datagram, write
 * the reply); in event mode on_data gathers a line and on_datagram answers
 * with uvs_server_send_to. A second datagram handler echoes any bytes
 * whole, except "quiet" (it writes nothing), "abort" (it writes, then
 * aborts), "slow" (it waits 200 ms first) and "twice:..." (it writes the
 * datagram twice, so the reply would pass max_packet_size when the
 * datagram is over half of it).
 *
 * Threads: serve_forever runs on a pthread while the test thread plays the
 * clients, or handle_request runs on the test thread after its clients
 * have sent. Every client socket has SO_RCVTIMEO and SO_SNDTIMEO, and every
 * read polls with a deadline. Unix paths live in a mkdtemp directory that
 * each case removes; IP servers bind 127.0.0.1 or ::1 on port 0.
 */
#define TEST_CASE_TIMEOUT 60
#include "test.h"

#include <ftw.h>
#include <grp.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>

#define TEST_STR     "hello world\n"
#define TEST_STR_LEN (sizeof(TEST_STR) - 1)
#define IO_TIMEOUT   5000 /* ms; every client read is bounded by this */
#define QUIET_MS     300  /* ms waited for a reply that must not come */
#define LINE_MAX_LEN 256
#define DGRAM_MAX    65536 /* the default max_packet_size */
#define UDP_MAX      65507 /* the largest UDP payload over IPv4 */
#define PATH_CAP     256
#define ADDR_CAP     (PATH_CAP + 16)

#define SUN_PATH_SIZE (sizeof(((struct sockaddr_un*) NULL)->sun_path))
#define ARRAY_LEN(a)  (sizeof(a) / sizeof((a)[0]))


static int path_is_socket(const char* path) {
  struct stat st;
  return lstat(path, &st) == 0 && S_ISSOCK(st.st_mode);
}

static ino_t path_inode(const char* path) {
  struct stat st;
  if (lstat(path, &st) != 0)
    TEST__FAIL("lstat %s: %s", path, strerror(errno));
  return st.st_ino;
}

#define ASSERT_NO_FILE(path)               \
 do {                                      \
  struct stat test_st_;                    \
  errno = 0;                               \
  ASSERT_EQ(lstat((path), &test_st_), -1); \
  ASSERT_EQ(errno, ENOENT);                \
 } while (0)


/* ---- What the cases observe ----------------------------------------- */

/* Hung on the server with uvs_server_set_data. Handlers run on the loop
 * thread or on workers while the test thread reads: counters are atomic,
 * strings are under the lock. */
typedef struct {
  atomic_int requests;        /* datagrams handled (handle, on_datagram) */
  atomic_int finished;        /* finish calls (blocking modes) */
  atomic_int empty;           /* datagrams of 0 bytes handled */
  atomic_int lines;           /* stream lines echoed */
  atomic_int eof_errors;      /* a datagram read that did not end in EOF */
  atomic_int send_errors;     /* uvs_server_send_to failures */
  atomic_int last_send_error; /* the last of them */
  atomic_int oversize_result; /* the over-size reply's result (1: none) */
  atomic_int errors;          /* handle_error calls */
  atomic_int emsgsize;        /* of which UV_EMSGSIZE */
  atomic_int last_error;      /* the last handle_error status */
  atomic_int peer_len;        /* the last request's peer's sockaddr length */
  size_t max_packet;          /* the server's max_packet_size */
  uv_mutex_t lock;
  char error_peer[UVS_ADDRSTRLEN]; /* handle_error's peer */
  char peer[UVS_ADDRSTRLEN];       /* the last request's peer */
} ctx_t;

static void ctx_init(ctx_t* ctx) {
  memset(ctx, 0, sizeof(*ctx));
  atomic_store(&ctx->oversize_result, 1);
  ASSERT_OK(uv_mutex_init(&ctx->lock));
}

static void ctx_destroy(ctx_t* ctx) {
  uv_mutex_destroy(&ctx->lock);
}

static ctx_t* ctx_of(uvs_server_t* server) {
  return uvs_server_get_data(server);
}

/* Stores `peer`'s text form in one of the ctx strings. */
static void ctx_set(ctx_t* ctx, char* field, const uvs_address_t* peer) {
  char text[UVS_ADDRSTRLEN];
  size_t size = sizeof(text);
  if (field == ctx->peer)
    atomic_store(&ctx->peer_len, peer != NULL ? (int) peer->len : -1);
  if (peer == NULL)
    snprintf(text, sizeof(text), "(null)");
  else
    ASSERT_OK(uvs_address_format(peer, text, &size));
  uv_mutex_lock(&ctx->lock);
  memcpy(field, text, sizeof(text));
  uv_mutex_unlock(&ctx->lock);
}

static void ctx_get(ctx_t* ctx, const char* field, char* out) {
  uv_mutex_lock(&ctx->lock);
  memcpy(out, field, UVS_ADDRSTRLEN);
  uv_mutex_unlock(&ctx->lock);
}

#define ASSERT_CTX_STR(ctx, field, want)   \
 do {                                      \
  char test_got_[UVS_ADDRSTRLEN];          \
  ctx_get((ctx), (ctx)->field, test_got_); \
  ASSERT_STR_EQ(test_got_, (want));        \
 } while (0)

/* handle_error: counted, with its status and peer. */
static void record_error(uvs_server_t* server,
                         uvs_conn_t* conn,
                         const uvs_address_t* peer,
                         int status) {
  ctx_t* ctx = ctx_of(server);
  if (status == UV_EMSGSIZE)
    ASSERT_NULL(conn);
  ctx_set(ctx, ctx->error_peer, peer);
  atomic_store(&ctx->last_error, status);
  if (status == UV_EMSGSIZE)
    atomic_fetch_add(&ctx->emsgsize, 1);
  atomic_fetch_add(&ctx->errors, 1);
}

/* Waits until *v reaches `want`, failing after IO_TIMEOUT. */
static void wait_count(atomic_int* v, int want, const char* what) {
  uint64_t deadline = test_now_ms() + IO_TIMEOUT;
  while (atomic_load(v) < want) {
    if (test_now_ms() >= deadline)
      TEST__FAIL("%s: %d after %d ms, want %d",
                 what,
                 atomic_load(v),
                 IO_TIMEOUT,
                 want);
    usleep(1000);
  }
}

static int is_word(const char* data, size_t len, const char* word) {
  return len == strlen(word) && memcmp(data, word, len) == 0;
}

static int has_prefix(const char* data, size_t len, const char* prefix) {
  return len >= strlen(prefix) && memcmp(data, prefix, strlen(prefix)) == 0;
}


/* ---- Handlers ------------------------------------------------------- */

/* Event-mode MyHandler: the line read so far. */
typedef struct {
  size_t len;
  char line[LINE_MAX_LEN];
} echo_state_t;

static void record_open(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(uvs_conn_server(conn));
  ctx_set(ctx, ctx->peer, uvs_conn_peer(conn));
}

/* MyHandler.handle in event mode: gather a line, write it back, close. */
static void echo_on_data(uvs_conn_t* conn, const char* data, size_t len) {
  echo_state_t* st = uvs_conn_state(conn);
  ctx_t* ctx = ctx_of(uvs_conn_server(conn));
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
  atomic_fetch_add(&ctx->lines, 1);
}

/* Blocking modes: the request's peer, as socketserver's client_address. */
static int record_setup(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(uvs_conn_server(conn));
  ctx_set(ctx, ctx->peer, uvs_conn_peer(conn));
  return 0;
}

static int count_finish(uvs_conn_t* conn) {
  atomic_fetch_add(&ctx_of(uvs_conn_server(conn))->finished, 1);
  return 0;
}

/* StreamRequestHandler MyHandler: line = rfile.readline();
 * wfile.write(line). */
static int stream_line_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(uvs_conn_server(conn));
  char line[LINE_MAX_LEN];
  ssize_t n = uvs_readline(conn, line, sizeof(line));
  if (n < 0)
    return (int) n;
  atomic_fetch_add(&ctx->lines, 1);
  return uvs_write(conn, line, (size_t) n);
}

/* DatagramRequestHandler MyHandler: the same on the datagram, which then
 * reads as EOF. */
static int dgram_line_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(uvs_conn_server(conn));
  char line[LINE_MAX_LEN];
  char extra;
  ssize_t n = uvs_readline(conn, line, sizeof(line));
  if (n < 0)
    return (int) n;
  if (uvs_recv(conn, &extra, 1) != 0)
    atomic_fetch_add(&ctx->eof_errors, 1);
  atomic_fetch_add(&ctx->requests, 1);
  return uvs_write(conn, line, (size_t) n);
}

/* Echoes the whole datagram (0 bytes: writes 0 bytes), but "quiet" writes
 * nothing, "abort" aborts after writing, "slow" sleeps first, and
 * "twice:..." writes twice. */
static int dgram_echo_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(uvs_conn_server(conn));
  char* buf = malloc(DGRAM_MAX + 1);
  char extra;
  ssize_t n;
  int r = 0;

  ASSERT_NOT_NULL(buf);
  n = uvs_read_exact(conn, buf, DGRAM_MAX + 1);
  if (n < 0) {
    free(buf);
    return (int) n;
  }
  if (uvs_recv(conn, &extra, 1) != 0)
    atomic_fetch_add(&ctx->eof_errors, 1);
  atomic_fetch_add(&ctx->requests, 1);
  if (n == 0)
    atomic_fetch_add(&ctx->empty, 1);
  if (is_word(buf, (size_t) n, "slow"))
    usleep(200 * 1000);
  if (!is_word(buf, (size_t) n, "quiet")) {
    r = uvs_write(conn, buf, (size_t) n);
    if (r == 0 && is_word(buf, (size_t) n, "abort"))
      r = uvs_conn_abort(conn);
    if (r == 0 && has_prefix(buf, (size_t) n, "twice:"))
      atomic_store(&ctx->oversize_result, uvs_write(conn, buf, (size_t) n));
  }
  free(buf);
  return r;
}

/* Event mode: echo with uvs_server_send_to, same rules ("twice:" first
 * tries one byte over max_packet_size). */
static void echo_on_datagram(uvs_server_t* server,
                             const char* data,
                             size_t len,
                             const uvs_address_t* peer) {
  ctx_t* ctx = ctx_of(server);
  int r;

  ctx_set(ctx, ctx->peer, peer);
  atomic_fetch_add(&ctx->requests, 1);
  if (len == 0)
    atomic_fetch_add(&ctx->empty, 1);
  if (is_word(data, len, "quiet"))
    return;
  if (has_prefix(data, len, "twice:")) {
    char* big = calloc(1, ctx->max_packet + 1);
    ASSERT_NOT_NULL(big);
    atomic_store(&ctx->oversize_result,
                 uvs_server_send_to(server, peer, big, ctx->max_packet + 1));
    free(big);
  }
  r = uvs_server_send_to(server, peer, data, len);
  if (r != 0) {
    atomic_store(&ctx->last_send_error, r);
    atomic_fetch_add(&ctx->send_errors, 1);
  }
}


/* ---- Servers -------------------------------------------------------- */

enum {
  ECHO_LINE, /* MyHandler: one line */
  ECHO_WHOLE /* the whole datagram, with the special words */
};

static int is_dgram(uvs_transport_t transport) {
  return transport == UVS_TRANSPORT_UDP || transport == UVS_TRANSPORT_UNIXGRAM;
}

static uvs_transport_t transport_of(const char* address) {
  uvs_address_t addr;
  ASSERT_OK(uvs_address_parse(address, &addr));
  return addr.transport;
}

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

static uvs_handler_t make_handler(uvs_transport_t transport,
                                  uvs_mode_t mode,
                                  int kind) {
  uvs_handler_t handler;
  memset(&handler, 0, sizeof(handler));
  if (mode == UVS_MODE_EVENT) {
    if (is_dgram(transport)) {
      handler.on_datagram = echo_on_datagram;
    } else {
      handler.state_size = sizeof(echo_state_t);
      handler.on_open = record_open;
      handler.on_data = echo_on_data;
    }
    return handler;
  }
  handler.setup = record_setup;
  handler.finish = count_finish;
  if (!is_dgram(transport))
    handler.handle = stream_line_handle;
  else if (kind == ECHO_LINE)
    handler.handle = dgram_line_handle;
  else
    handler.handle = dgram_echo_handle;
  return handler;
}

/* The config every server of this file gets: `base` (NULL: defaults) in
 * `mode`, with the counting handle_error. */
static uvs_config_t make_config(const uvs_config_t* base, uvs_mode_t mode) {
  uvs_config_t config;
  if (base != NULL)
    config = *base;
  else
    uvs_config_init(&config);
  config.mode = mode;
  config.hooks.handle_error = record_error;
  return config;
}

/* make_server: a server on a loop of its own, observed through `ctx`. */
static uvs_server_t* new_server(const char* address,
                                uvs_mode_t mode,
                                int kind,
                                const uvs_config_t* base,
                                ctx_t* ctx) {
  uvs_handler_t handler = make_handler(transport_of(address), mode, kind);
  uvs_config_t config = make_config(base, mode);
  uvs_server_t* server = NULL;

  ctx->max_packet = config.max_packet_size;
  ASSERT_OK(uvs_server_new(NULL, &server, address, &handler, &config));
  ASSERT_NOT_NULL(server);
  uvs_server_set_data(server, ctx);
  return server;
}

/* uvs_server_new where it must fail: returns its error, and checks that
 * `*server` is NULL afterwards. */
static int new_server_error(const char* address,
                            uvs_mode_t mode,
                            const uvs_config_t* base) {
  uvs_address_t parsed;
  uvs_transport_t transport = uvs_address_parse(address, &parsed) == 0
                                  ? parsed.transport
                                  : UVS_TRANSPORT_UNIX;
  uvs_handler_t handler = make_handler(transport, mode, ECHO_LINE);
  uvs_config_t config = make_config(base, mode);
  uvs_server_t* server = (uvs_server_t*) &handler; /* overwritten */
  int r;

  r = uvs_server_new(NULL, &server, address, &handler, &config);
  if (r == 0) {
    ASSERT_OK(uvs_server_close(server, NULL));
    return 0;
  }
  ASSERT_NULL(server);
  return r;
}

/* The server's address, parsed back (a client's destination). */
static void server_addr(uvs_server_t* server, uvs_address_t* addr) {
  char text[UVS_ADDRSTRLEN];
  size_t size = sizeof(text);
  ASSERT_OK(uvs_server_address(server, text, &size));
  ASSERT_OK(uvs_address_parse(text, addr));
}

/* make_server's check: server_address == socket.getsockname(), with the
 * real port for port 0 and the path or abstract name as given. */
static void check_server_address(uvs_server_t* server, const char* address) {
  char text[UVS_ADDRSTRLEN];
  char want[ADDR_CAP];
  size_t size = sizeof(text);
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  int fd = uvs_server_fileno(server);

  ASSERT_GE(fd, 0);
  ASSERT_OK(uvs_server_address(server, text, &size));
  ASSERT_EQ(size, strlen(text));
  ASSERT_OK(getsockname(fd, (struct sockaddr*) &ss, &len));
  if (ss.ss_family == AF_UNIX) {
    uvs_address_t parsed;
    ASSERT_STR_EQ(text, address);
    ASSERT_OK(uvs_address_parse(text, &parsed));
    ASSERT_EQ(len, parsed.len);
    ASSERT_MEM_EQ(&ss, &parsed.u, len);
    return;
  }
  {
    /* "udp://127.0.0.1:0" -> "udp://127.0.0.1:<port>" */
    int port = ss.ss_family == AF_INET6
                   ? ntohs(((struct sockaddr_in6*) &ss)->sin6_port)
                   : ntohs(((struct sockaddr_in*) &ss)->sin_port);
    size_t keep = strlen(address) - 1;
    ASSERT_EQ(address[keep], '0');
    ASSERT_GT(port, 0);
    snprintf(want, sizeof(want), "%.*s%d", (int) keep, address, port);
    ASSERT_STR_EQ(text, want);
  }
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

/* shutdown, join: serve_forever returned 0. */
static void serve_stop(serve_thread_t* t) {
  ASSERT_OK(uvs_server_shutdown(t->server));
  ASSERT_OK(pthread_join(t->thread, NULL));
  ASSERT_OK(t->result);
}


/* ---- Clients -------------------------------------------------------- */

static void set_timeouts(int fd) {
  struct timeval tv;
  tv.tv_sec = IO_TIMEOUT / 1000;
  tv.tv_usec = 0;
  ASSERT_OK(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)));
  ASSERT_OK(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)));
}

/* A sockaddr_un for a path, or for a Linux abstract name ("@name"). */
static socklen_t unix_sockaddr(struct sockaddr_un* un, const char* name) {
  size_t n = strlen(name);
  memset(un, 0, sizeof(*un));
  un->sun_family = AF_UNIX;
  ASSERT_LT(n, SUN_PATH_SIZE);
  if (name[0] == '@') {
    memcpy(un->sun_path + 1, name + 1, n - 1);
    return (socklen_t) (offsetof(struct sockaddr_un, sun_path) + n);
  }
  memcpy(un->sun_path, name, n);
  return (socklen_t) (offsetof(struct sockaddr_un, sun_path) + n + 1);
}

/* A blocking client socket of `type` for `to`'s family. An IP client is
 * bound to the loopback address (so its port is known); a Unix client to
 * `name` when given, else it stays unnamed. */
static int client_open(const uvs_address_t* to, int type, const char* name) {
  int family = to->u.sa.sa_family;
  struct sockaddr_storage ss;
  socklen_t len = 0;
  int fd = socket(family, type | SOCK_CLOEXEC, 0);

  if (fd < 0)
    TEST__FAIL("socket: %s", strerror(errno));
  set_timeouts(fd);
  memset(&ss, 0, sizeof(ss));
  if (family == AF_UNIX) {
    if (name == NULL)
      return fd;
    len = unix_sockaddr((struct sockaddr_un*) &ss, name);
  } else if (family == AF_INET) {
    struct sockaddr_in* in = (struct sockaddr_in*) &ss;
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof(*in);
  } else {
    struct sockaddr_in6* in6 = (struct sockaddr_in6*) &ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_addr = in6addr_loopback;
    len = sizeof(*in6);
  }
  if (bind(fd, (struct sockaddr*) &ss, len) != 0)
    TEST__FAIL("bind client %s: %s", name ? name : "", strerror(errno));
  return fd;
}

static int stream_client(const uvs_address_t* to, const char* name) {
  int fd = client_open(to, SOCK_STREAM, name);
  if (connect(fd, &to->u.sa, to->len) != 0)
    TEST__FAIL("connect: %s", strerror(errno));
  return fd;
}

static int dgram_client(const uvs_address_t* to, const char* name) {
  return client_open(to, SOCK_DGRAM, name);
}

/* The text form the server should give a datagram client's address. */
static void client_text(int fd, const char* name, char* out, size_t cap) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  ASSERT_OK(getsockname(fd, (struct sockaddr*) &ss, &len));
  if (ss.ss_family == AF_INET)
    snprintf(out,
             cap,
             "udp://127.0.0.1:%d",
             ntohs(((struct sockaddr_in*) &ss)->sin_port));
  else if (ss.ss_family == AF_INET6)
    snprintf(out,
             cap,
             "udp://[::1]:%d",
             ntohs(((struct sockaddr_in6*) &ss)->sin6_port));
  else
    snprintf(out, cap, "unixgram:%s", name);
}

static void dgram_send(int fd,
                       const uvs_address_t* to,
                       const void* data,
                       size_t len) {
  ssize_t n;
  do
    n = sendto(fd, data, len, 0, &to->u.sa, to->len);
  while (n < 0 && errno == EINTR);
  if (n < 0)
    TEST__FAIL("sendto, %zu bytes: %s", len, strerror(errno));
  ASSERT_EQ(n, len);
}

/* Waits up to `timeout_ms` for one datagram; returns its real length
 * (MSG_TRUNC: it may be above `cap`), or -1 when none came. */
static ssize_t dgram_recv(int fd, void* buf, size_t cap, int timeout_ms) {
  uint64_t deadline = test_now_ms() + (uint64_t) timeout_ms;
  for (;;) {
    struct pollfd pfd = { fd, POLLIN, 0 };
    uint64_t now = test_now_ms();
    ssize_t n;

    if (now >= deadline)
      return -1;
    if (poll(&pfd, 1, (int) (deadline - now)) <= 0)
      continue;
    n = recv(fd, buf, cap, MSG_TRUNC | MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
      continue;
    if (n < 0)
      TEST__FAIL("recv: %s", strerror(errno));
    return n;
  }
}

/* The next datagram is exactly `len` bytes of `data`. */
static void expect_reply(int fd, const void* data, size_t len) {
  char* buf = malloc(DGRAM_MAX + 1);
  ssize_t n;
  ASSERT_NOT_NULL(buf);
  n = dgram_recv(fd, buf, DGRAM_MAX + 1, IO_TIMEOUT);
  if (n < 0)
    TEST__FAIL("no reply to a %zu-byte datagram in %d ms", len, IO_TIMEOUT);
  ASSERT_EQ(n, len);
  ASSERT_MEM_EQ(buf, data, len);
  free(buf);
}

/* No datagram comes within `ms`. */
static void expect_silence(int fd, int ms) {
  char* buf = malloc(DGRAM_MAX + 1);
  ssize_t n;
  ASSERT_NOT_NULL(buf);
  n = dgram_recv(fd, buf, DGRAM_MAX + 1, ms);
  if (n >= 0)
    TEST__FAIL("an unexpected %zd-byte datagram came (\"%.*s\")",
               n,
               (int) (n < 16 ? n : 16),
               buf);
  free(buf);
}


/* receive() as the Python suite does it: 100 bytes at a time until a
 * '\n' or EOF, within `timeout_ms`; NUL-terminates `buf`. */
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

/* stream_examine: connect (bound to `name` when given), send TEST_STR,
 * read the echo back. */
static void stream_examine(const uvs_address_t* to, const char* name) {
  char buf[LINE_MAX_LEN];
  int fd = stream_client(to, name);
  test_send_all(fd, TEST_STR, TEST_STR_LEN);
  ASSERT_EQ(recv_line(fd, buf, sizeof(buf), IO_TIMEOUT), TEST_STR_LEN);
  ASSERT_STR_EQ(buf, TEST_STR);
  close(fd);
}

/* dgram_examine: a client (a Unix one bound to `name`, which it removes
 * after) sends TEST_STR and reads the echo; the server saw the client's
 * address as its peer. */
static void dgram_examine(const uvs_address_t* to,
                          const char* name,
                          ctx_t* ctx) {
  char buf[LINE_MAX_LEN];
  char peer[ADDR_CAP];
  int fd = dgram_client(to, name);
  ssize_t n;

  client_text(fd, name, peer, sizeof(peer));
  dgram_send(fd, to, TEST_STR, TEST_STR_LEN);
  n = dgram_recv(fd, buf, sizeof(buf), IO_TIMEOUT);
  ASSERT_EQ(n, TEST_STR_LEN);
  ASSERT_MEM_EQ(buf, TEST_STR, TEST_STR_LEN);
  ASSERT_CTX_STR(ctx, peer, peer);
  close(fd);
  if (name != NULL && name[0] != '@')
    ASSERT_OK(unlink(name));
}

/* One request through handle_request on the test thread: the client sends
 * first (a stream client also shuts down its write side, so the close
 * need not linger), then the server serves it, then the client reads. */
static void serve_one(uvs_server_t* server, const char* name) {
  uvs_address_t to;
  char buf[LINE_MAX_LEN];
  int fd;

  server_addr(server, &to);
  if (is_dgram(to.transport)) {
    fd = dgram_client(&to, name);
    dgram_send(fd, &to, TEST_STR, TEST_STR_LEN);
    ASSERT_OK(uvs_server_handle_request(server));
    ASSERT_EQ(dgram_recv(fd, buf, sizeof(buf), IO_TIMEOUT), TEST_STR_LEN);
    ASSERT_MEM_EQ(buf, TEST_STR, TEST_STR_LEN);
  } else {
    fd = stream_client(&to, name);
    test_send_all(fd, TEST_STR, TEST_STR_LEN);
    ASSERT_OK(shutdown(fd, SHUT_WR));
    ASSERT_OK(uvs_server_handle_request(server));
    ASSERT_EQ(recv_line(fd, buf, sizeof(buf), IO_TIMEOUT), TEST_STR_LEN);
    ASSERT_STR_EQ(buf, TEST_STR);
  }
  close(fd);
  if (name != NULL && name[0] != '@')
    ASSERT_OK(unlink(name));
}


/* ---- SocketServerTest: the matrix (cases 4, 5, 7, 8, 10, 11) -------- */

/* run_server: serve_forever(poll_interval=0.01) on a thread, three
 * examine calls (datagram clients of a Unix server bound to a path of
 * their own, as Python's dgram_examine does), shutdown, join,
 * server_close; then the socket is closed (Python: fileno() == -1; here
 * the descriptor uvs_server_fileno gave is no longer open, and nothing was
 * opened since that could reuse it) and the socket file is gone. */
static void run_server(const char* transport, uvs_mode_t mode) {
  uvs_transport_t tr;
  test_tmpdir_t dir;
  ctx_t ctx;
  serve_thread_t t;
  uvs_server_t* server;
  uvs_address_t to;
  char path[PATH_CAP];
  char address[ADDR_CAP];
  int unix_path = strcmp(transport, "udp") != 0;
  int fd;
  int i;

  test_tmpdir_make(&dir);
  ctx_init(&ctx);
  if (unix_path) {
    test_tmpdir_file(&dir, "server.sock", path, sizeof(path));
    snprintf(address, sizeof(address), "%s:%s", transport, path);
  } else {
    snprintf(address, sizeof(address), "udp://127.0.0.1:0");
  }
  tr = transport_of(address);
  server = new_server(address, mode, ECHO_LINE, NULL, &ctx);
  check_server_address(server, address);
  if (unix_path)
    ASSERT_TRUE(path_is_socket(path));
  server_addr(server, &to);
  fd = uvs_server_fileno(server);
  ASSERT_GE(fd, 0);

  serve_start(&t, server);
  for (i = 0; i < 3; i++) {
    if (!is_dgram(tr)) {
      stream_examine(&to, NULL);
    } else if (tr == UVS_TRANSPORT_UNIXGRAM) {
      char name[PATH_CAP];
      char file[32];
      snprintf(file, sizeof(file), "client%d.sock", i);
      test_tmpdir_file(&dir, file, name, sizeof(name));
      dgram_examine(&to, name, &ctx);
    } else {
      dgram_examine(&to, NULL, &ctx);
    }
  }
  serve_stop(&t);
  ASSERT_EQ(uvs_server_fileno(server), fd);
  ASSERT_OK(uvs_server_close(server, NULL));
  errno = 0;
  ASSERT_EQ(fcntl(fd, F_GETFD), -1);
  ASSERT_EQ(errno, EBADF);
  if (unix_path)
    ASSERT_NO_FILE(path);

  if (is_dgram(tr)) {
    ASSERT_EQ(atomic_load(&ctx.requests), 3);
    ASSERT_EQ(atomic_load(&ctx.eof_errors), 0);
    ASSERT_EQ(atomic_load(&ctx.send_errors), 0);
  } else {
    ASSERT_EQ(atomic_load(&ctx.lines), 3);
  }
  if (mode != UVS_MODE_EVENT)
    ASSERT_EQ(atomic_load(&ctx.finished), 3);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  ctx_destroy(&ctx);
  test_tmpdir_remove(&dir);
}

/* test_UnixStreamServer (case 4): UnixStreamServer + StreamRequestHandler,
 * plus its event-mode twin. */
static void unix_stream_server(void) {
  run_server("unix", UVS_MODE_EVENT);
}

static void unix_stream_server_sync(void) {
  run_server("unix", UVS_MODE_SYNC);
}

/* test_ThreadingUnixStreamServer (case 5). */
static void threading_unix_stream_server(void) {
  run_server("unix", UVS_MODE_THREADING);
}

/* test_UDPServer (case 7): UDPServer + DatagramRequestHandler. */
static void udp_server(void) {
  run_server("udp", UVS_MODE_EVENT);
}

static void udp_server_sync(void) {
  run_server("udp", UVS_MODE_SYNC);
}

/* test_ThreadingUDPServer (case 8). */
static void threading_udp_server(void) {
  run_server("udp", UVS_MODE_THREADING);
}

/* test_UnixDatagramServer (case 10): the client binds a path first. */
static void unix_datagram_server(void) {
  run_server("unixgram", UVS_MODE_EVENT);
}

static void unix_datagram_server_sync(void) {
  run_server("unixgram", UVS_MODE_SYNC);
}

/* test_ThreadingUnixDatagramServer (case 11). */
static void threading_unix_datagram_server(void) {
  run_server("unixgram", UVS_MODE_THREADING);
}


/* ---- 500 datagrams, byte-exact (reference 3.6) ---------------------- */

#define STRESS_N           500
#define STRESS_WINDOW      4            /* datagrams in flight at most */
#define STRESS_BYTES       (160 * 1024) /* and bytes in flight (one always) */
#define STRESS_RESEND      500          /* ms before UDP sends one again */
#define STRESS_RESENDS_MAX 20

typedef struct {
  size_t size;
  int state; /* 0 unsent, 1 in flight, 2 echoed */
  int resent;
  uint64_t sent_at;
} stress_item_t;

/* Sizes over the whole range: 1, 2, 3, max - 1 and max first, then small,
 * around one MTU, up to 16 KiB, and up to max in turn. */
static size_t stress_size(int seq, size_t max) {
  size_t s = (size_t) seq;
  switch (seq) {
  case 0:
    return 1;
  case 1:
    return 2;
  case 2:
    return 3;
  case 3:
    return max - 1;
  case 4:
    return max;
  default:
    break;
  }
  switch (seq % 4) {
  case 0:
    return 1 + (s * 37) % 64;
  case 1:
    return 64 + (s * 7919) % 1437;
  case 2:
    return 1501 + (s * 104729) % (16384 - 1501);
  default:
    return 16385 + (s * 1299709) % (max - 16385 + 1);
  }
}

/* Datagram `seq`: its number in the first two bytes, then xorshift bytes
 * seeded by it. */
static void stress_fill(char* buf, int seq, size_t len) {
  uint32_t x = (uint32_t) seq * 2654435761u + 1;
  size_t i;
  for (i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    buf[i] = (char) (x & 0xff);
  }
  buf[0] = (char) (seq & 0xff);
  if (len > 1)
    buf[1] = (char) (seq >> 8);
}

/* The datagram `reply` echoes: one in flight first, then one echoed
 * already (a UDP resend's second answer). Returns its number or -1. */
static int stress_match(const stress_item_t* items,
                        const char* reply,
                        size_t len,
                        char* scratch) {
  int pass;
  int k;
  for (pass = 1; pass <= 2; pass++) {
    for (k = 0; k < STRESS_N; k++) {
      if (items[k].state != pass || items[k].size != len ||
          (char) (k & 0xff) != reply[0]) {
        continue;
      }
      stress_fill(scratch, k, len);
      if (memcmp(scratch, reply, len) == 0)
        return k;
    }
  }
  return -1;
}

/* A client keeps up to STRESS_WINDOW datagrams in flight and matches each
 * reply byte for byte to one it sent. Unix datagrams are reliable: a
 * missing reply fails. UDP may drop on loopback under pressure: a missing
 * reply is sent again (at most STRESS_RESENDS_MAX times in all). */
static void stress_run(const char* transport, uvs_mode_t mode) {
  static stress_item_t items[STRESS_N];
  int udp = strcmp(transport, "udp") == 0;
  size_t max = udp ? UDP_MAX : DGRAM_MAX;
  char* out = malloc(DGRAM_MAX);
  char* in = malloc(DGRAM_MAX + 1);
  char* scratch = malloc(DGRAM_MAX + 1);
  test_tmpdir_t dir;
  ctx_t ctx;
  serve_thread_t t;
  uvs_server_t* server;
  uvs_address_t to;
  char path[PATH_CAP];
  char name[PATH_CAP];
  char address[ADDR_CAP];
  size_t inflight_bytes = 0;
  size_t total = 0;
  uint64_t start = test_now_ms();
  int inflight = 0;
  int echoed = 0;
  int resends = 0;
  int dups = 0;
  int next = 0;
  int bufsize = 1 << 20;
  int fd;
  int k;

  ASSERT_NOT_NULL(out);
  ASSERT_NOT_NULL(in);
  ASSERT_NOT_NULL(scratch);
  memset(items, 0, sizeof(items));
  test_tmpdir_make(&dir);
  ctx_init(&ctx);
  test_tmpdir_file(&dir, "server.sock", path, sizeof(path));
  test_tmpdir_file(&dir, "client.sock", name, sizeof(name));
  if (udp)
    snprintf(address, sizeof(address), "udp://127.0.0.1:0");
  else
    snprintf(address, sizeof(address), "unixgram:%s", path);
  server = new_server(address, mode, ECHO_WHOLE, NULL, &ctx);
  ASSERT_EQ(ctx.max_packet, DGRAM_MAX);
  server_addr(server, &to);
  serve_start(&t, server);
  fd = dgram_client(&to, udp ? NULL : name);
  /* Room for the replies in flight (the kernel may cap it lower). */
  ASSERT_OK(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof(bufsize)));

  for (k = 0; k < STRESS_N; k++)
    items[k].size = stress_size(k, max);
  while (echoed < STRESS_N) {
    ssize_t n;
    while (
        next < STRESS_N && inflight < STRESS_WINDOW &&
        (inflight == 0 || inflight_bytes + items[next].size <= STRESS_BYTES)) {
      stress_fill(out, next, items[next].size);
      dgram_send(fd, &to, out, items[next].size);
      items[next].state = 1;
      items[next].sent_at = test_now_ms();
      inflight++;
      inflight_bytes += items[next].size;
      next++;
    }
    n = dgram_recv(fd, in, DGRAM_MAX + 1, STRESS_RESEND);
    if (n < 0) {
      /* Nothing came: the oldest datagram in flight is late. */
      for (k = 0; k < STRESS_N && items[k].state != 1; k++)
        continue;
      ASSERT_LT(k, STRESS_N);
      if (!udp) {
        if (test_now_ms() - items[k].sent_at < IO_TIMEOUT)
          continue;
        TEST__FAIL("%s %s: no reply to datagram %d (%zu bytes) in %d ms",
                   transport,
                   mode_name(mode),
                   k,
                   items[k].size,
                   IO_TIMEOUT);
      }
      if (++resends > STRESS_RESENDS_MAX)
        TEST__FAIL("udp %s: %d resends, datagram %d (%zu bytes) unanswered",
                   mode_name(mode),
                   resends,
                   k,
                   items[k].size);
      stress_fill(out, k, items[k].size);
      dgram_send(fd, &to, out, items[k].size);
      items[k].resent = 1;
      continue;
    }
    if (n > DGRAM_MAX)
      TEST__FAIL("a reply of %zd bytes, above max_packet_size", n);
    k = stress_match(items, in, (size_t) n, scratch);
    if (k < 0)
      TEST__FAIL(
          "%s %s: a %zd-byte reply matches no datagram sent "
          "(%d echoed so far)",
          transport,
          mode_name(mode),
          n,
          echoed);
    if (items[k].state == 2) {
      /* A second answer can only follow a resend. */
      ASSERT_TRUE(items[k].resent);
      dups++;
      continue;
    }
    items[k].state = 2;
    inflight--;
    inflight_bytes -= items[k].size;
    total += items[k].size;
    echoed++;
  }
  printf("# %s %s: %d datagrams, %zu bytes, echoed in %" PRIu64
         " ms (%d resent, %d answered twice)\n",
         transport,
         mode_name(mode),
         STRESS_N,
         total,
         test_now_ms() - start,
         resends,
         dups);
  if (!udp)
    expect_silence(fd, 50);
  close(fd);
  serve_stop(&t);
  ASSERT_OK(uvs_server_close(server, NULL));
  if (udp) {
    ASSERT_GE(atomic_load(&ctx.requests), STRESS_N);
    ASSERT_LE(atomic_load(&ctx.requests), STRESS_N + resends);
  } else {
    ASSERT_EQ(atomic_load(&ctx.requests), STRESS_N);
    ASSERT_NO_FILE(path);
  }
  ASSERT_EQ(atomic_load(&ctx.eof_errors), 0);
  ASSERT_EQ(atomic_load(&ctx.send_errors), 0);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  ctx_destroy(&ctx);
  test_tmpdir_remove(&dir);
  free(out);
  free(in);
  free(scratch);
}

static void udp_echo_500(void) {
  stress_run("udp", UVS_MODE_EVENT);
}

static void udp_echo_500_sync(void) {
  stress_run("udp", UVS_MODE_SYNC);
}

static void threading_udp_echo_500(void) {
  stress_run("udp", UVS_MODE_THREADING);
}

static void unixgram_echo_500(void) {
  stress_run("unixgram", UVS_MODE_EVENT);
}

static void unixgram_echo_500_sync(void) {
  stress_run("unixgram", UVS_MODE_SYNC);
}

static void threading_unixgram_echo_500(void) {
  stress_run("unixgram", UVS_MODE_THREADING);
}


/* ---- One datagram at a time (a client per variant) ------------------ */

static const uvs_mode_t all_modes[] = {
  UVS_MODE_EVENT,
  UVS_MODE_SYNC,
  UVS_MODE_THREADING,
};

/* A served datagram server with one client, for the cases below. */
typedef struct {
  test_tmpdir_t dir;
  ctx_t ctx;
  serve_thread_t thread;
  uvs_server_t* server;
  uvs_address_t to;
  char path[PATH_CAP];
  char name[PATH_CAP];
  char client[ADDR_CAP]; /* the client's address as the server formats it */
  int fd;
  int udp;
} dgram_fixture_t;

static void fixture_start(dgram_fixture_t* f,
                          const char* transport,
                          uvs_mode_t mode,
                          const uvs_config_t* config) {
  char address[ADDR_CAP];
  printf("# %s, %s mode\n", transport, mode_name(mode));
  f->udp = strcmp(transport, "udp") == 0;
  test_tmpdir_make(&f->dir);
  ctx_init(&f->ctx);
  test_tmpdir_file(&f->dir, "server.sock", f->path, sizeof(f->path));
  test_tmpdir_file(&f->dir, "client.sock", f->name, sizeof(f->name));
  if (f->udp)
    snprintf(address, sizeof(address), "udp://127.0.0.1:0");
  else
    snprintf(address, sizeof(address), "unixgram:%s", f->path);
  f->server = new_server(address, mode, ECHO_WHOLE, config, &f->ctx);
  server_addr(f->server, &f->to);
  f->fd = dgram_client(&f->to, f->udp ? NULL : f->name);
  client_text(f->fd, f->name, f->client, sizeof(f->client));
  serve_start(&f->thread, f->server);
}

static void fixture_stop(dgram_fixture_t* f) {
  close(f->fd);
  serve_stop(&f->thread);
  ASSERT_OK(uvs_server_close(f->server, NULL));
  ASSERT_EQ(atomic_load(&f->ctx.eof_errors), 0);
  ASSERT_EQ(atomic_load(&f->ctx.send_errors), 0);
  ctx_destroy(&f->ctx);
  test_tmpdir_remove(&f->dir);
}


/* Over-size datagrams (reference 3.6, "a datagram bigger than the receive
 * buffer is truncated, or flagged"): with max_packet_size 1000, a 1500-byte
 * datagram gets no reply and reaches handle_error once as UV_EMSGSIZE with
 * a NULL conn and the sender's address; the server goes on: 500 bytes and
 * exactly 1000 are echoed. A reply that would pass the limit fails with
 * UV_EMSGSIZE (uvs_write adds nothing; uvs_server_send_to sends nothing),
 * and the request's reply is what fit. */
static void oversize_variant(const char* transport, uvs_mode_t mode) {
  dgram_fixture_t f;
  uvs_config_t config;
  char big[1500];
  char data[1000];

  uvs_config_init(&config);
  config.max_packet_size = 1000;
  fixture_start(&f, transport, mode, &config);

  memset(big, 'x', sizeof(big));
  dgram_send(f.fd, &f.to, big, sizeof(big));
  memset(data, 'a', 500);
  dgram_send(f.fd, &f.to, data, 500);
  expect_reply(f.fd, data, 500);
  ASSERT_EQ(atomic_load(&f.ctx.errors), 1);
  ASSERT_EQ(atomic_load(&f.ctx.emsgsize), 1);
  ASSERT_ERR(atomic_load(&f.ctx.last_error), UV_EMSGSIZE);
  ASSERT_CTX_STR(&f.ctx, error_peer, f.client);
  ASSERT_EQ(atomic_load(&f.ctx.requests), 1);

  memset(data, 'b', sizeof(data));
  dgram_send(f.fd, &f.to, data, sizeof(data));
  expect_reply(f.fd, data, sizeof(data));

  memset(data, 'c', 600);
  memcpy(data, "twice:", 6);
  dgram_send(f.fd, &f.to, data, 600);
  expect_reply(f.fd, data, 600);
  ASSERT_ERR(atomic_load(&f.ctx.oversize_result), UV_EMSGSIZE);

  expect_silence(f.fd, QUIET_MS);
  ASSERT_EQ(atomic_load(&f.ctx.requests), 3);
  ASSERT_EQ(atomic_load(&f.ctx.errors), 1);
  fixture_stop(&f);
}

static void oversize_udp(void) {
  size_t i;
  for (i = 0; i < ARRAY_LEN(all_modes); i++)
    oversize_variant("udp", all_modes[i]);
}

static void oversize_unixgram(void) {
  size_t i;
  for (i = 0; i < ARRAY_LEN(all_modes); i++)
    oversize_variant("unixgram", all_modes[i]);
}


/* The empty-reply rule (DatagramRequestHandler, where Python sends an
 * empty datagram): a handler that writes nothing ("quiet", or an empty
 * request echoed as 0 bytes) sends nothing back, nor does one whose reply
 * was aborted; the server still answers the next datagram. In event mode
 * an empty datagram reaches on_datagram with len 0, and its echo through
 * uvs_server_send_to is an empty datagram. */
static void empty_reply_variant(const char* transport, uvs_mode_t mode) {
  dgram_fixture_t f;
  char buf[16];

  fixture_start(&f, transport, mode, NULL);
  if (mode == UVS_MODE_EVENT) {
    dgram_send(f.fd, &f.to, "quiet", 5);
    wait_count(&f.ctx.requests, 1, "on_datagram calls");
    expect_silence(f.fd, QUIET_MS);
    dgram_send(f.fd, &f.to, "", 0);
    wait_count(&f.ctx.requests, 2, "on_datagram calls");
    ASSERT_EQ(atomic_load(&f.ctx.empty), 1);
    ASSERT_EQ(dgram_recv(f.fd, buf, sizeof(buf), IO_TIMEOUT), 0);
  } else {
    dgram_send(f.fd, &f.to, "quiet", 5);
    wait_count(&f.ctx.finished, 1, "finish calls");
    dgram_send(f.fd, &f.to, "", 0);
    wait_count(&f.ctx.finished, 2, "finish calls");
    ASSERT_EQ(atomic_load(&f.ctx.empty), 1);
    dgram_send(f.fd, &f.to, "abort", 5);
    wait_count(&f.ctx.finished, 3, "finish calls");
    expect_silence(f.fd, QUIET_MS);
    ASSERT_EQ(atomic_load(&f.ctx.requests), 3);
  }
  dgram_send(f.fd, &f.to, "next", 4);
  expect_reply(f.fd, "next", 4);
  ASSERT_CTX_STR(&f.ctx, peer, f.client);
  ASSERT_EQ(atomic_load(&f.ctx.errors), 0);
  fixture_stop(&f);
}

static void empty_reply_udp(void) {
  size_t i;
  for (i = 0; i < ARRAY_LEN(all_modes); i++)
    empty_reply_variant("udp", all_modes[i]);
}

static void empty_reply_unixgram(void) {
  size_t i;
  for (i = 0; i < ARRAY_LEN(all_modes); i++)
    empty_reply_variant("unixgram", all_modes[i]);
}


/* A unixgram client without a bound name cannot be answered: its request
 * is served with an unnamed peer ("unixgram:"), no reply is attempted in the
 * blocking modes and none reaches handle_error; in event mode
 * uvs_server_send_to refuses the peer with UV_EINVAL. A bound client that
 * has gone (closed and removed its file) before its reply is sent loses
 * the reply, again without handle_error. The server goes on serving. */
static void unixgram_unanswerable_variant(uvs_mode_t mode) {
  dgram_fixture_t f;
  int fd;

  fixture_start(&f, "unixgram", mode, NULL);
  fd = dgram_client(&f.to, NULL);
  dgram_send(fd, &f.to, "hello", 5);
  wait_count(&f.ctx.requests, 1, "requests");
  if (mode == UVS_MODE_EVENT) {
    wait_count(&f.ctx.send_errors, 1, "send_to failures");
    ASSERT_ERR(atomic_load(&f.ctx.last_send_error), UV_EINVAL);
    atomic_store(&f.ctx.send_errors, 0);
  } else {
    wait_count(&f.ctx.finished, 1, "finish calls");
  }
  /* Unnamed: no byte of sun_path (its text form: unixgram_unnamed_peer). */
  ASSERT_LE(atomic_load(&f.ctx.peer_len),
            offsetof(struct sockaddr_un, sun_path));
  close(fd);

  if (mode != UVS_MODE_EVENT) {
    char gone[PATH_CAP];
    test_tmpdir_file(&f.dir, "gone.sock", gone, sizeof(gone));
    fd = dgram_client(&f.to, gone);
    dgram_send(fd, &f.to, "slow", 4);
    close(fd);
    ASSERT_OK(unlink(gone));
    wait_count(&f.ctx.finished, 2, "finish calls");
  }
  dgram_send(f.fd, &f.to, "next", 4);
  expect_reply(f.fd, "next", 4);
  ASSERT_CTX_STR(&f.ctx, peer, f.client);
  ASSERT_EQ(atomic_load(&f.ctx.errors), 0);
  fixture_stop(&f);
}

static void unixgram_unanswerable_clients(void) {
  size_t i;
  for (i = 0; i < ARRAY_LEN(all_modes); i++)
    unixgram_unanswerable_variant(all_modes[i]);
}


/* The text form of an unbound unixgram client, as uvs.h gives it for
 * on_datagram's peer and for uvs_address_format's unnamed Unix socket:
 * its scheme alone, "unixgram:". */
static void unixgram_unnamed_peer(void) {
  dgram_fixture_t f;
  uvs_address_t unnamed;
  char text[UVS_ADDRSTRLEN];
  size_t size = sizeof(text);
  int fd;

  memset(&unnamed, 0, sizeof(unnamed));
  unnamed.transport = UVS_TRANSPORT_UNIXGRAM;
  unnamed.u.un.sun_family = AF_UNIX;
  unnamed.len = sizeof(sa_family_t);
  ASSERT_OK(uvs_address_format(&unnamed, text, &size));
  ASSERT_STR_EQ(text, "unixgram:");

  fixture_start(&f, "unixgram", UVS_MODE_EVENT, NULL);
  fd = dgram_client(&f.to, NULL);
  dgram_send(fd, &f.to, "hello", 5);
  wait_count(&f.ctx.send_errors, 1, "send_to failures");
  ASSERT_CTX_STR(&f.ctx, peer, "unixgram:");
  atomic_store(&f.ctx.send_errors, 0);
  close(fd);
  fixture_stop(&f);
}


/* handle_request serves exactly one datagram (reference 3.6): with two
 * waiting, the first call answers the first only, the second call the
 * other. */
static void handle_request_variant(const char* transport, uvs_mode_t mode) {
  test_tmpdir_t dir;
  ctx_t ctx;
  uvs_server_t* server;
  uvs_address_t to;
  char path[PATH_CAP];
  char name[PATH_CAP];
  char address[ADDR_CAP];
  int udp = strcmp(transport, "udp") == 0;
  int fd;

  printf("# %s, %s mode\n", transport, mode_name(mode));
  test_tmpdir_make(&dir);
  ctx_init(&ctx);
  test_tmpdir_file(&dir, "server.sock", path, sizeof(path));
  test_tmpdir_file(&dir, "client.sock", name, sizeof(name));
  if (udp)
    snprintf(address, sizeof(address), "udp://127.0.0.1:0");
  else
    snprintf(address, sizeof(address), "unixgram:%s", path);
  server = new_server(address, mode, ECHO_WHOLE, NULL, &ctx);
  server_addr(server, &to);
  fd = dgram_client(&to, udp ? NULL : name);
  dgram_send(fd, &to, "one", 3);
  dgram_send(fd, &to, "two", 3);

  ASSERT_OK(uvs_server_handle_request(server));
  ASSERT_EQ(atomic_load(&ctx.requests), 1);
  expect_reply(fd, "one", 3);
  expect_silence(fd, QUIET_MS);
  ASSERT_EQ(atomic_load(&ctx.requests), 1);

  ASSERT_OK(uvs_server_handle_request(server));
  ASSERT_EQ(atomic_load(&ctx.requests), 2);
  expect_reply(fd, "two", 3);
  if (mode != UVS_MODE_EVENT)
    ASSERT_EQ(atomic_load(&ctx.finished), 2);

  close(fd);
  ASSERT_OK(uvs_server_close(server, NULL));
  ASSERT_EQ(atomic_load(&ctx.requests), 2);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  ctx_destroy(&ctx);
  test_tmpdir_remove(&dir);
}

static void handle_request_one_datagram(void) {
  size_t i;
  for (i = 0; i < ARRAY_LEN(all_modes); i++) {
    handle_request_variant("udp", all_modes[i]);
    handle_request_variant("unixgram", all_modes[i]);
  }
}


/* ---- Unix socket files (reference 3.6: stale paths, unlink policy) --- */

/* A socket file nobody listens on: bound, then closed without unlink, as
 * a crashed server leaves it. */
static void make_stale(const char* path, int type) {
  struct sockaddr_un un;
  socklen_t len = unix_sockaddr(&un, path);
  int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  ASSERT_OK(bind(fd, (struct sockaddr*) &un, len));
  close(fd);
  ASSERT_TRUE(path_is_socket(path));
}

static void write_file(const char* path, const char* text) {
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, text, strlen(text)), strlen(text));
  close(fd);
}

static void assert_file_text(const char* path, const char* text) {
  char buf[64];
  struct stat st;
  ssize_t n;
  int fd;

  ASSERT_OK(lstat(path, &st));
  ASSERT_TRUE(S_ISREG(st.st_mode));
  fd = open(path, O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  ASSERT_GE(n, 0);
  buf[n] = '\0';
  ASSERT_STR_EQ(buf, text);
}

/* A stale socket file (of either socket type) is replaced at bind; a live
 * one gives UV_EADDRINUSE and keeps serving, its file untouched, also
 * against a server of the other type; a regular file or a directory at the
 * path gives UV_EADDRINUSE and stays as it was. The stale servers run in
 * sync mode through handle_request on the test thread, the live one in
 * event mode on a serve_forever thread (live_path_probe_unseen checks
 * what the failed servers' probes do to it). */
static void socket_files(const char* transport) {
  int dgram = strcmp(transport, "unixgram") == 0;
  const char* other = dgram ? "unix" : "unixgram";
  int types[2];
  test_tmpdir_t dir;
  ctx_t ctx;
  uvs_server_t* server;
  char path[PATH_CAP];
  char name[PATH_CAP];
  char address[ADDR_CAP];
  char other_address[ADDR_CAP];
  const char* client;
  serve_thread_t t;
  uvs_address_t to;
  ino_t ino;
  int i;

  types[0] = dgram ? SOCK_DGRAM : SOCK_STREAM;
  types[1] = dgram ? SOCK_STREAM : SOCK_DGRAM;
  test_tmpdir_make(&dir);
  ctx_init(&ctx);
  test_tmpdir_file(&dir, "server.sock", path, sizeof(path));
  test_tmpdir_file(&dir, "client.sock", name, sizeof(name));
  client = dgram ? name : NULL;
  snprintf(address, sizeof(address), "%s:%s", transport, path);
  snprintf(other_address, sizeof(other_address), "%s:%s", other, path);

  /* Stale. */
  for (i = 0; i < 2; i++) {
    make_stale(path, types[i]);
    server = new_server(address, UVS_MODE_SYNC, ECHO_LINE, NULL, &ctx);
    ASSERT_TRUE(path_is_socket(path));
    serve_one(server, client);
    ASSERT_OK(uvs_server_close(server, NULL));
    ASSERT_NO_FILE(path);
  }

  /* Live: served on a thread while two servers fail on its path. */
  server = new_server(address, UVS_MODE_EVENT, ECHO_LINE, NULL, &ctx);
  ino = path_inode(path);
  server_addr(server, &to);
  serve_start(&t, server);
  ASSERT_ERR(new_server_error(address, UVS_MODE_SYNC, NULL), UV_EADDRINUSE);
  ASSERT_ERR(new_server_error(other_address, UVS_MODE_SYNC, NULL),
             UV_EADDRINUSE);
  ASSERT_TRUE(path_is_socket(path));
  ASSERT_EQ(path_inode(path), ino);
  if (dgram)
    dgram_examine(&to, name, &ctx);
  else
    stream_examine(&to, NULL);
  serve_stop(&t);
  ASSERT_OK(uvs_server_close(server, NULL));
  ASSERT_NO_FILE(path);

  /* Not a socket. */
  write_file(path, "precious\n");
  ASSERT_ERR(new_server_error(address, UVS_MODE_SYNC, NULL), UV_EADDRINUSE);
  assert_file_text(path, "precious\n");
  ASSERT_OK(unlink(path));
  ASSERT_OK(mkdir(path, 0755));
  ASSERT_ERR(new_server_error(address, UVS_MODE_SYNC, NULL), UV_EADDRINUSE);
  {
    struct stat st;
    ASSERT_OK(lstat(path, &st));
    ASSERT_TRUE(S_ISDIR(st.st_mode));
  }
  ASSERT_OK(rmdir(path));

  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  ctx_destroy(&ctx);
  test_tmpdir_remove(&dir);
}

/* The probe that tells a live socket file from a stale one is not a
 * request to the live server: after a second server failed on its path,
 * the first has nothing waiting, and handle_request times out. */
static void live_path_probe_unseen(void) {
  static const char* transports[] = { "unixgram", "unix" };
  test_tmpdir_t dir;
  ctx_t ctx;
  uvs_config_t config;
  char path[PATH_CAP];
  char address[ADDR_CAP];
  size_t i;

  test_tmpdir_make(&dir);
  ctx_init(&ctx);
  test_tmpdir_file(&dir, "server.sock", path, sizeof(path));
  uvs_config_init(&config);
  config.timeout_ms = 100;
  for (i = 0; i < ARRAY_LEN(transports); i++) {
    uvs_server_t* server;
    snprintf(address, sizeof(address), "%s:%s", transports[i], path);
    printf("# %s\n", address);
    server = new_server(address, UVS_MODE_SYNC, ECHO_LINE, &config, &ctx);
    ASSERT_ERR(new_server_error(address, UVS_MODE_SYNC, NULL), UV_EADDRINUSE);
    ASSERT_ERR(uvs_server_handle_request(server), UV_ETIMEDOUT);
    ASSERT_EQ(atomic_load(&ctx.finished), 0);
    ASSERT_OK(uvs_server_close(server, NULL));
  }
  ctx_destroy(&ctx);
  test_tmpdir_remove(&dir);
}

static void unix_socket_files(void) {
  socket_files("unix");
}

static void unixgram_socket_files(void) {
  socket_files("unixgram");
}


/* Paths up to sizeof(sun_path) - 1 bytes bind (the NUL needs the last
 * byte); one byte more, or far more, gives UV_ENAMETOOLONG and creates
 * nothing, not even a truncated path. */
static void long_paths(void) {
  static const char* transports[] = { "unix", "unixgram" };
  test_tmpdir_t dir;
  ctx_t ctx;
  char longest[PATH_CAP];
  char over[PATH_CAP];
  char far_over[PATH_CAP];
  char name[PATH_CAP];
  char address[ADDR_CAP];
  size_t i;
  size_t n;

  test_tmpdir_make(&dir);
  ctx_init(&ctx);
  test_tmpdir_file(&dir, "client.sock", name, sizeof(name));
  n = strlen(dir.path) + 1;
  snprintf(longest, sizeof(longest), "%s/", dir.path);
  memset(longest + n, 'a', SUN_PATH_SIZE - 1 - n);
  longest[SUN_PATH_SIZE - 1] = '\0';
  ASSERT_EQ(strlen(longest), SUN_PATH_SIZE - 1);
  snprintf(over, sizeof(over), "%sb", longest);
  snprintf(far_over, sizeof(far_over), "%s%s", longest, longest + n);
  ASSERT_GT(strlen(far_over), SUN_PATH_SIZE + 50);

  for (i = 0; i < ARRAY_LEN(transports); i++) {
    uvs_server_t* server;
    int dgram = i == 1;

    snprintf(address, sizeof(address), "%s:%s", transports[i], longest);
    server = new_server(address, UVS_MODE_SYNC, ECHO_LINE, NULL, &ctx);
    check_server_address(server, address);
    ASSERT_TRUE(path_is_socket(longest));
    serve_one(server, dgram ? name : NULL);
    ASSERT_OK(uvs_server_close(server, NULL));
    ASSERT_NO_FILE(longest);

    snprintf(address, sizeof(address), "%s:%s", transports[i], over);
    ASSERT_ERR(new_server_error(address, UVS_MODE_SYNC, NULL), UV_ENAMETOOLONG);
    snprintf(address, sizeof(address), "%s:%s", transports[i], far_over);
    ASSERT_ERR(new_server_error(address, UVS_MODE_THREADING, NULL),
               UV_ENAMETOOLONG);
    ASSERT_NO_FILE(over);
    ASSERT_NO_FILE(longest);
  }
  ctx_destroy(&ctx);
  test_tmpdir_remove(&dir);
}


/* The unlink policy: config.unlink_on_close = 0 keeps the socket file
 * (Python's behaviour), and the next server replaces it as stale; with
 * the default, a server removes its file only while it is still the one
 * it bound: when another server took the path over meanwhile, that one's
 * file stays. */
static void unlink_policy(void) {
  static const char* transports[] = { "unix", "unixgram" };
  test_tmpdir_t dir;
  ctx_t ctx;
  uvs_config_t keep;
  char path[PATH_CAP];
  char name[PATH_CAP];
  char address[ADDR_CAP];
  size_t i;

  test_tmpdir_make(&dir);
  ctx_init(&ctx);
  test_tmpdir_file(&dir, "server.sock", path, sizeof(path));
  test_tmpdir_file(&dir, "client.sock", name, sizeof(name));
  uvs_config_init(&keep);
  keep.unlink_on_close = 0;

  for (i = 0; i < ARRAY_LEN(transports); i++) {
    const char* client = i == 1 ? name : NULL;
    uvs_server_t* a;
    uvs_server_t* b;
    ino_t ino;

    snprintf(address, sizeof(address), "%s:%s", transports[i], path);
    a = new_server(address, UVS_MODE_SYNC, ECHO_LINE, &keep, &ctx);
    serve_one(a, client);
    ino = path_inode(path);
    ASSERT_OK(uvs_server_close(a, NULL));
    ASSERT_TRUE(path_is_socket(path));
    ASSERT_EQ(path_inode(path), ino);

    a = new_server(address, UVS_MODE_SYNC, ECHO_LINE, NULL, &ctx);
    serve_one(a, client);
    /* The path taken over while `a` runs: `b` owns the file now. */
    ASSERT_OK(unlink(path));
    b = new_server(address, UVS_MODE_SYNC, ECHO_LINE, NULL, &ctx);
    ino = path_inode(path);
    ASSERT_OK(uvs_server_close(a, NULL));
    ASSERT_TRUE(path_is_socket(path));
    ASSERT_EQ(path_inode(path), ino);
    serve_one(b, client);
    ASSERT_OK(uvs_server_close(b, NULL));
    ASSERT_NO_FILE(path);
  }
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  ctx_destroy(&ctx);
  test_tmpdir_remove(&dir);
}


/* What the permission case checks, as the user it runs as: binding in a
 * directory without write permission gives UV_EACCES and creates nothing,
 * while the same in a writable directory works. Returns 0, or 1 after
 * printing why. */
static int permission_checks(const char* ro, const char* rw) {
  static const char* transports[] = { "unix", "unixgram" };
  char address[ADDR_CAP];
  size_t i;

  for (i = 0; i < ARRAY_LEN(transports); i++) {
    int r;
    snprintf(address, sizeof(address), "%s:%s/server.sock", transports[i], ro);
    r = new_server_error(address, UVS_MODE_SYNC, NULL);
    if (r != UV_EACCES) {
      printf("# %s: got %d (%s), want EACCES\n", address, r, uvs_err_name(r));
      return 1;
    }
    snprintf(address, sizeof(address), "%s:%s/server.sock", transports[i], rw);
    r = new_server_error(address, UVS_MODE_SYNC, NULL);
    if (r != 0) {
      printf("# %s: got %d (%s), want 0\n", address, r, uvs_err_name(r));
      return 1;
    }
  }
  return 0;
}

/* A directory without write permission gives UV_EACCES. Root bypasses the
 * permission, so as root a child drops to nobody (uid and gid 65534) and
 * checks there, reporting through its exit status. */
static void permission_denied(void) {
  test_tmpdir_t dir;
  char ro[PATH_CAP];
  char rw[PATH_CAP];
  DIR* d;
  struct dirent* ent;
  int entries = 0;

  test_tmpdir_make(&dir);
  test_tmpdir_file(&dir, "ro", ro, sizeof(ro));
  test_tmpdir_file(&dir, "rw", rw, sizeof(rw));
  ASSERT_OK(mkdir(ro, 0700));
  ASSERT_OK(mkdir(rw, 0700));
  ASSERT_OK(chmod(ro, 0555));
  ASSERT_OK(chmod(rw, 0777));
  ASSERT_OK(chmod(dir.path, 0755)); /* nobody may pass through */
  if (geteuid() == 0) {
    int status;
    pid_t pid;
    fflush(stdout);
    pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0) {
        printf("# dropping to uid 65534: %s\n", strerror(errno));
        _exit(2);
      }
      _exit(permission_checks(ro, rw));
    }
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_EQ(WEXITSTATUS(status), 0);
  } else {
    ASSERT_EQ(permission_checks(ro, rw), 0);
  }
  d = opendir(ro);
  ASSERT_NOT_NULL(d);
  while ((ent = readdir(d)) != NULL) {
    if (strcmp(ent->d_name, ".") != 0 && strcmp(ent->d_name, "..") != 0)
      entries++;
  }
  closedir(d);
  ASSERT_EQ(entries, 0);
  {
    char file[PATH_CAP];
    test_tmpdir_file(&dir, "rw/server.sock", file, sizeof(file));
    ASSERT_NO_FILE(file);
  }
  ASSERT_OK(chmod(ro, 0700));
  test_tmpdir_remove(&dir);
}


/* ---- Abstract names, IPv6, peer names ------------------------------- */

/* Linux abstract names (unix:@name, unixgram:@name): the echo works, with
 * clients bound to abstract names too, and no file appears, neither
 * "@name" nor "name" in the working directory; the name is free again
 * once the server closed. */
static void abstract_names(void) {
#ifndef __linux__
  printf("# SKIP abstract names are Linux only\n");
#else
  static const char* transports[] = { "unix", "unixgram" };
  size_t i;

  for (i = 0; i < ARRAY_LEN(transports); i++) {
    int dgram = i == 1;
    ctx_t ctx;
    serve_thread_t t;
    uvs_server_t* server;
    uvs_address_t to;
    char name[64];
    char client[64];
    char address[ADDR_CAP];
    char peer[ADDR_CAP];
    int k;

    ctx_init(&ctx);
    snprintf(name,
             sizeof(name),
             "@uvs-test-%d-%s",
             (int) getpid(),
             transports[i]);
    snprintf(address, sizeof(address), "%s:%s", transports[i], name);
    server = new_server(address, UVS_MODE_EVENT, ECHO_LINE, NULL, &ctx);
    check_server_address(server, address);
    server_addr(server, &to);
    ASSERT_EQ(to.u.un.sun_path[0], '\0');
    serve_start(&t, server);
    for (k = 0; k < 3; k++) {
      snprintf(client,
               sizeof(client),
               "@uvs-test-%d-client%d",
               (int) getpid(),
               k);
      if (dgram) {
        dgram_examine(&to, client, &ctx);
      } else {
        stream_examine(&to, client);
        snprintf(peer, sizeof(peer), "unix:%s", client);
        ASSERT_CTX_STR(&ctx, peer, peer);
      }
    }
    serve_stop(&t);
    ASSERT_NO_FILE(name);
    ASSERT_NO_FILE(name + 1);
    ASSERT_OK(uvs_server_close(server, NULL));
    ASSERT_NO_FILE(name);
    ASSERT_NO_FILE(name + 1);

    server = new_server(address, UVS_MODE_SYNC, ECHO_LINE, NULL, &ctx);
    serve_one(server, dgram ? client : NULL);
    ASSERT_OK(uvs_server_close(server, NULL));
    ASSERT_EQ(atomic_load(&ctx.errors), 0);
    ctx_destroy(&ctx);
  }
#endif
}


/* UDPServer on ::1 (address_family AF_INET6), each mode: echo, the bound
 * address with its port, and the client's IPv6 address as the peer. */
static void udp_ipv6(void) {
  struct sockaddr_in6 probe;
  size_t i;
  int fd = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);

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
  for (i = 0; i < ARRAY_LEN(all_modes); i++) {
    ctx_t ctx;
    serve_thread_t t;
    uvs_server_t* server;
    uvs_address_t to;
    int k;

    ctx_init(&ctx);
    server = new_server("udp://[::1]:0", all_modes[i], ECHO_LINE, NULL, &ctx);
    check_server_address(server, "udp://[::1]:0");
    server_addr(server, &to);
    ASSERT_EQ(to.u.sa.sa_family, AF_INET6);
    serve_start(&t, server);
    for (k = 0; k < 3; k++)
      dgram_examine(&to, NULL, &ctx);
    serve_stop(&t);
    ASSERT_OK(uvs_server_close(server, NULL));
    ASSERT_EQ(atomic_load(&ctx.requests), 3);
    ASSERT_EQ(atomic_load(&ctx.send_errors), 0);
    ASSERT_EQ(atomic_load(&ctx.errors), 0);
    ctx_destroy(&ctx);
  }
}


/* A Unix stream client's address is its socket name (client_address): an
 * unbound client is unnamed and formats as "unix:"; a client bound to a
 * path, or to an abstract name, reports it. Each mode. */
static void unix_stream_peer_address(void) {
  test_tmpdir_t dir;
  char path[PATH_CAP];
  char name[PATH_CAP];
  char address[ADDR_CAP];
  char want[ADDR_CAP];
  size_t i;

  test_tmpdir_make(&dir);
  test_tmpdir_file(&dir, "server.sock", path, sizeof(path));
  test_tmpdir_file(&dir, "client.sock", name, sizeof(name));
  snprintf(address, sizeof(address), "unix:%s", path);
  for (i = 0; i < ARRAY_LEN(all_modes); i++) {
    ctx_t ctx;
    uvs_server_t* server;
    int served = 2;

    printf("# %s mode\n", mode_name(all_modes[i]));
    ctx_init(&ctx);
    server = new_server(address, all_modes[i], ECHO_LINE, NULL, &ctx);

    serve_one(server, NULL);
    ASSERT_CTX_STR(&ctx, peer, "unix:");

    serve_one(server, name);
    snprintf(want, sizeof(want), "unix:%s", name);
    ASSERT_CTX_STR(&ctx, peer, want);
#ifdef __linux__
    {
      char abstract[64];
      snprintf(abstract, sizeof(abstract), "@uvs-test-%d-peer", (int) getpid());
      serve_one(server, abstract);
      snprintf(want, sizeof(want), "unix:%s", abstract);
      ASSERT_CTX_STR(&ctx, peer, want);
      served++;
    }
#endif
    ASSERT_OK(uvs_server_close(server, NULL));
    ASSERT_EQ(atomic_load(&ctx.lines), served);
    ASSERT_EQ(atomic_load(&ctx.errors), 0);
    ctx_destroy(&ctx);
  }
  test_tmpdir_remove(&dir);
}


/* ---- Threading mode's worker cap on a datagram server --------------- */

#define POOL_N           100  /* datagrams sent at once */
#define POOL_WORKERS     4    /* config.max_threads */
#define POOL_SLEEP_MS    50   /* each request's work */
#define POOL_RESEND_MS   1000 /* silence before UDP sends the rest again */
#define POOL_RESENDS_MAX 3
/* Threads of the case besides the workers: the serve_forever pthread. uvs
 * starts no other (libuv's own pool serves no datagram server). */
#define POOL_OTHER_THREADS 1

static atomic_int pool_busy;     /* handlers sleeping now */
static atomic_int pool_busy_max; /* the most at once */

/* The threads of this process: the entries of /proc/self/task, read
 * again from the start of `dir` (opendir'd once before any thread of the
 * case runs: a descriptor opened while uvs's threads open and close theirs
 * would look like a race to TSan). */
static int thread_count(DIR* dir) {
  struct dirent* ent;
  int n = 0;
  rewinddir(dir);
  while ((ent = readdir(dir)) != NULL) {
    if (ent->d_name[0] != '.')
      n++;
  }
  return n;
}

static void* pool_noop_thread(void* arg) {
  return arg;
}

/* Reads the datagram, works POOL_SLEEP_MS, echoes it. */
static int pool_slow_echo_handle(uvs_conn_t* conn) {
  ctx_t* ctx = ctx_of(uvs_conn_server(conn));
  char buf[LINE_MAX_LEN];
  ssize_t n = uvs_read_exact(conn, buf, sizeof(buf));
  int busy = atomic_fetch_add(&pool_busy, 1) + 1;
  int max = atomic_load(&pool_busy_max);

  while (busy > max &&
         !atomic_compare_exchange_weak(&pool_busy_max, &max, busy))
    continue;
  usleep(POOL_SLEEP_MS * 1000);
  atomic_fetch_sub(&pool_busy, 1);
  if (n < 0)
    return (int) n;
  atomic_fetch_add(&ctx->requests, 1);
  return uvs_write(conn, buf, (size_t) n);
}

/* ThreadingUDPServer with max_threads 4 and a handler that takes 50 ms:
 * 100 datagrams sent at once wait for the 4 workers instead of starting a
 * thread each. While they are served the process never has more threads
 * than before the server plus the serve_forever thread plus 4, at most 4
 * handlers run at once, and every datagram is answered. */
static void threading_udp_uses_pool(void) {
  static char answered[POOL_N];
  uvs_config_t config;
  uvs_handler_t handler;
  ctx_t ctx;
  serve_thread_t t;
  pthread_t warm;
  DIR* task;
  uvs_server_t* server = NULL;
  uvs_address_t to;
  char buf[LINE_MAX_LEN];
  uint64_t start;
  uint64_t last;
  int before;
  int peak;
  int replies = 0;
  int resends = 0;
  int fd;
  int k;

  memset(answered, 0, sizeof(answered));
  atomic_store(&pool_busy, 0);
  atomic_store(&pool_busy_max, 0);
  ctx_init(&ctx);
  /* A runtime may start a helper thread at the first pthread_create
   * (TSan's background thread): one thread made and joined first lets it
   * do so before the count. */
  ASSERT_OK(pthread_create(&warm, NULL, pool_noop_thread, NULL));
  ASSERT_OK(pthread_join(warm, NULL));
  task = opendir("/proc/self/task");
  if (task == NULL)
    TEST__FAIL("opendir /proc/self/task: %s", strerror(errno));
  before = thread_count(task);
  ASSERT_GT(before, 0);

  uvs_config_init(&config);
  config.max_threads = POOL_WORKERS;
  config = make_config(&config, UVS_MODE_THREADING);
  memset(&handler, 0, sizeof(handler));
  handler.handle = pool_slow_echo_handle;
  ASSERT_OK(
      uvs_server_new(NULL, &server, "udp://127.0.0.1:0", &handler, &config));
  uvs_server_set_data(server, &ctx);
  server_addr(server, &to);
  serve_start(&t, server);
  fd = dgram_client(&to, NULL);

  start = test_now_ms();
  for (k = 0; k < POOL_N; k++) {
    int len = snprintf(buf, sizeof(buf), "pool %d", k);
    dgram_send(fd, &to, buf, (size_t) len);
  }
  peak = thread_count(task);
  last = test_now_ms();
  while (replies < POOL_N) {
    ssize_t n = dgram_recv(fd, buf, sizeof(buf) - 1, 10);
    int now = thread_count(task);

    if (now > peak)
      peak = now;
    if (n < 0) {
      if (test_now_ms() - last < POOL_RESEND_MS)
        continue;
      /* Silence while replies are due: UDP lost some on loopback. */
      if (++resends > POOL_RESENDS_MAX)
        TEST__FAIL("%d of %d datagrams answered after %d resends",
                   replies,
                   POOL_N,
                   POOL_RESENDS_MAX);
      for (k = 0; k < POOL_N; k++) {
        if (!answered[k]) {
          int len = snprintf(buf, sizeof(buf), "pool %d", k);
          dgram_send(fd, &to, buf, (size_t) len);
        }
      }
      last = test_now_ms();
      continue;
    }
    ASSERT_LT(n, sizeof(buf));
    buf[n] = '\0';
    if (sscanf(buf, "pool %d", &k) != 1 || k < 0 || k >= POOL_N)
      TEST__FAIL("a reply that was never sent: \"%s\"", buf);
    last = test_now_ms();
    if (answered[k]) {
      ASSERT_GT(resends, 0); /* a second answer follows a resend only */
      continue;
    }
    answered[k] = 1;
    replies++;
  }
  printf("# %d datagrams answered in %" PRIu64
         " ms; threads: %d before, %d at most (%d resends)\n",
         POOL_N,
         test_now_ms() - start,
         before,
         peak,
         resends);
  close(fd);
  serve_stop(&t);
  ASSERT_OK(uvs_server_close(server, NULL));
  closedir(task);

  ASSERT_LE(peak, before + POOL_OTHER_THREADS + POOL_WORKERS);
  /* The samples saw the workers at work, and the cap was used. */
  ASSERT_GT(peak, before + POOL_OTHER_THREADS);
  ASSERT_EQ(atomic_load(&pool_busy_max), POOL_WORKERS);
  ASSERT_GE(atomic_load(&ctx.requests), POOL_N);
  ASSERT_EQ(atomic_load(&ctx.errors), 0);
  ctx_destroy(&ctx);
}


static const test_case_t cases[] = {
  { "unix_stream_server", unix_stream_server },
  { "unix_stream_server_sync", unix_stream_server_sync },
  { "threading_unix_stream_server", threading_unix_stream_server },
  { "udp_server", udp_server },
  { "udp_server_sync", udp_server_sync },
  { "threading_udp_server", threading_udp_server },
  { "unix_datagram_server", unix_datagram_server },
  { "unix_datagram_server_sync", unix_datagram_server_sync },
  { "threading_unix_datagram_server", threading_unix_datagram_server },
  { "udp_echo_500", udp_echo_500 },
  { "udp_echo_500_sync", udp_echo_500_sync },
  { "threading_udp_echo_500", threading_udp_echo_500 },
  { "unixgram_echo_500", unixgram_echo_500 },
  { "unixgram_echo_500_sync", unixgram_echo_500_sync },
  { "threading_unixgram_echo_500", threading_unixgram_echo_500 },
  { "oversize_udp", oversize_udp },
  { "oversize_unixgram", oversize_unixgram },
  { "empty_reply_udp", empty_reply_udp },
  { "empty_reply_unixgram", empty_reply_unixgram },
  { "unixgram_unanswerable_clients", unixgram_unanswerable_clients },
  { "unix_socket_files", unix_socket_files },
  { "unixgram_socket_files", unixgram_socket_files },
  { "abstract_names", abstract_names },
  { "long_paths", long_paths },
  { "unlink_policy", unlink_policy },
  { "permission_denied", permission_denied },
  { "udp_ipv6", udp_ipv6 },
  { "unix_stream_peer_address", unix_stream_peer_address },
  { "handle_request_one_datagram", handle_request_one_datagram },
  { "live_path_probe_unseen", live_path_probe_unseen },
  { "unixgram_unnamed_peer", unixgram_unnamed_peer },
  { "threading_udp_uses_pool", threading_udp_uses_pool },
};

TEST_MAIN(cases)
