/* SPDX-License-Identifier: MIT */
/*
 * bench-raw-echo: the echo server one writes with libuv alone, single
 * threaded on one uv_loop_t. It is the benchmarks' floor for event mode:
 * what any framework on libuv pays at least, so that uvs-echo's figures can
 * be read as "libuv plus this much". It is meant to be the best plain
 * libuv echo, not a strawman: it uses from uvs only uvs_address_parse and
 * uvs_address_format, for the address text the benchmark scripts speak.
 *
 * Streams (tcp://, unix:): one malloc'd handle per connection and nothing
 * else while it is idle. Every read lands in one loop-wide 64 KiB buffer,
 * which is safe because libuv calls read_cb right after alloc_cb and the
 * bytes are either written at once (uv_try_write) or copied into the
 * write request that queues them. So the fast path, a read echoed whole by
 * uv_try_write, allocates nothing. A client that sends but does not read
 * cannot grow memory: above ECHO_HIGH_WATER queued bytes the connection
 * stops reading until its write queue has drained. On the client's EOF
 * the pending output is flushed by uv_shutdown and the connection closed;
 * on an error it is closed at once.
 *
 * Datagrams (udp://): each datagram goes back to its sender, sent with
 * uv_udp_try_send from the same loop-wide buffer; only when the socket
 * would block is a request with a copy queued. Above ECHO_HIGH_WATER
 * queued bytes replies are dropped, as the network may drop them, rather
 * than held in memory.
 *
 * SIGINT or SIGTERM closes every handle; the loop then runs to its end and
 * the program exits 0 after uv_loop_close, so a memory checker sees every
 * allocation freed. A unix: path is never replaced: binding fails when the
 * file exists, and the file is removed at exit only when this process made
 * it. Bad arguments print one line to stderr and exit 2; a failure to
 * listen exits 1.
 */
#include "listen_args.h"

#include <uvs.h>

#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The loop-wide read buffer: it holds the largest UDP payload (65507). */
#define ECHO_BUF_SIZE 65536

/* Queued output above which a connection stops reading, and above which a
 * UDP reply is dropped (1 MiB). */
#define ECHO_HIGH_WATER ((size_t) 1024 * 1024)

/* One client connection. `handle` is first, so a uv_handle_t* of a
 * connection is its conn_t*; handle.data points back to it, which tells
 * connections from the listener when every handle is closed at exit. */
typedef struct conn_s {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  int paused; /* reading stopped until the write queue drains */
} conn_t;

/* A queued stream write and the bytes it owns, one allocation. */
typedef struct write_req_s {
  uv_write_t req;
  char data[];
} write_req_t;

/* A queued UDP reply and the bytes it owns, one allocation. */
typedef struct send_req_s {
  uv_udp_send_t req;
  char data[];
} send_req_t;

static uv_loop_t loop;
static const char* listen_text; /* --listen as given, for messages */
static uvs_address_t listen_addr;
static union {
  uv_handle_t handle;
  uv_stream_t stream;
  uv_tcp_t tcp;
  uv_pipe_t pipe;
  uv_udp_t udp;
} listener;
static uv_signal_t signals[2];
static char read_buf[ECHO_BUF_SIZE];
/* The socket file this process created, removed at exit; empty if none. */
static char unix_path[sizeof(listen_addr.u.un.sun_path) + 1];

static const char usage_text[] =
    "usage: bench-raw-echo --listen ADDR\n"
    "\n"
    "A minimal echo server on libuv alone, one thread, one loop: the\n"
    "baseline of the benchmarks. ADDR is tcp://HOST:PORT, unix:PATH or\n"
    "udp://HOST:PORT (port 0: any free port). A unix: PATH must not exist;\n"
    "it is removed at exit. When ready it prints 'listening on ADDR' with\n"
    "the real port. SIGINT or SIGTERM closes everything and exits 0.\n"
    "Exit status: 2 for bad arguments, 1 when it cannot listen.\n";


/* ---- Streams --------------------------------------------------------- */

static void on_alloc(uv_handle_t* handle, size_t suggested, uv_buf_t* buf) {
  *buf = uv_buf_init(read_buf, sizeof(read_buf));
}


static void on_conn_close(uv_handle_t* handle) {
  free(handle->data);
}


static void conn_close(conn_t* conn) {
  if (!uv_is_closing(&conn->h.handle)) {
    uv_close(&conn->h.handle, on_conn_close);
  }
}


static void on_shutdown(uv_shutdown_t* req, int status) {
  conn_close(req->handle->data);
  free(req);
}


static void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);

static void on_write(uv_write_t* req, int status) {
  conn_t* conn = req->handle->data;

  free(req);
  if (status != 0) {
    conn_close(conn); /* also UV_ECANCELED: the connection is closing */
    return;
  }
  /* Resume reading only once everything queued is out, so a slow reader
   * is paced by its own consumption rather than by a low-water mark. */
  if (conn->paused && uv_stream_get_write_queue_size(&conn->h.stream) == 0 &&
      !uv_is_closing(&conn->h.handle)) {
    conn->paused = 0;
    if (uv_read_start(&conn->h.stream, on_alloc, on_read) != 0) {
      conn_close(conn);
    }
  }
}


/* Writes `len` bytes of the shared read buffer back: as much as the socket
 * takes now, and a copy of the rest queued behind anything already queued
 * (uv_try_write refuses while the queue is not empty, keeping the order).
 * Returns 0 or a negative libuv error. */
static int conn_echo(conn_t* conn, const char* data, size_t len) {
  uv_buf_t buf = uv_buf_init((char*) data, (unsigned) len);
  write_req_t* wr;
  int n;
  int err;

  n = uv_try_write(&conn->h.stream, &buf, 1);
  if (n == UV_EAGAIN) {
    n = 0;
  } else if (n < 0) {
    return n;
  }
  if ((size_t) n == len) {
    return 0;
  }
  len -= (size_t) n;
  wr = malloc(sizeof(*wr) + len);
  if (wr == NULL) {
    return UV_ENOMEM;
  }
  memcpy(wr->data, data + n, len);
  buf = uv_buf_init(wr->data, (unsigned) len);
  err = uv_write(&wr->req, &conn->h.stream, &buf, 1, on_write);
  if (err != 0) {
    free(wr);
    return err;
  }
  if (uv_stream_get_write_queue_size(&conn->h.stream) > ECHO_HIGH_WATER) {
    conn->paused = 1;
    return uv_read_stop(&conn->h.stream);
  }
  return 0;
}


static void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  conn_t* conn = stream->data;
  uv_shutdown_t* req;

  if (nread > 0) {
    if (conn_echo(conn, buf->base, (size_t) nread) != 0) {
      conn_close(conn);
    }
    return;
  }
  if (nread == 0) {
    return; /* EAGAIN: nothing read */
  }
  if (nread == UV_EOF) {
    /* uv_shutdown waits for the queued writes, then shuts our side. */
    req = malloc(sizeof(*req));
    if (req != NULL && uv_shutdown(req, stream, on_shutdown) == 0) {
      return;
    }
    free(req);
  }
  conn_close(conn);
}


static void on_connection(uv_stream_t* server, int status) {
  conn_t* conn;
  int err;

  /* An accept error (EMFILE, ECONNABORTED) concerns one client only;
   * libuv retries the listener on its own, so there is nothing to do. */
  if (status != 0) {
    return;
  }
  conn = malloc(sizeof(*conn));
  if (conn == NULL) {
    return; /* the client stays in the backlog until memory returns */
  }
  conn->paused = 0;
  if (listen_addr.transport == UVS_TRANSPORT_TCP) {
    err = uv_tcp_init(&loop, &conn->h.tcp);
  } else {
    err = uv_pipe_init(&loop, &conn->h.pipe, 0);
  }
  if (err != 0) {
    free(conn);
    return;
  }
  conn->h.handle.data = conn;
  err = uv_accept(server, &conn->h.stream);
  if (err == 0 && listen_addr.transport == UVS_TRANSPORT_TCP) {
    err = uv_tcp_nodelay(&conn->h.tcp, 1);
  }
  if (err == 0) {
    err = uv_read_start(&conn->h.stream, on_alloc, on_read);
  }
  if (err != 0) {
    conn_close(conn);
  }
}


/* ---- Datagrams ------------------------------------------------------- */

static void on_send(uv_udp_send_t* req, int status) {
  free(req);
}


static void on_recv(uv_udp_t* udp,
                    ssize_t nread,
                    const uv_buf_t* buf,
                    const struct sockaddr* peer,
                    unsigned flags) {
  uv_buf_t out;
  send_req_t* sr;
  int err;

  /* nread 0 with no peer: nothing more to read now. A truncated datagram
   * cannot be echoed unchanged, and an error (an ICMP report) concerns a
   * peer that has gone: both are dropped. */
  if (nread < 0 || peer == NULL || (flags & UV_UDP_PARTIAL) != 0) {
    return;
  }
  out = uv_buf_init(buf->base, (unsigned) nread);
  err = uv_udp_try_send(udp, &out, 1, peer);
  if (err != UV_EAGAIN) {
    return; /* sent, or refused for good: a datagram may be lost */
  }
  if (uv_udp_get_send_queue_size(udp) > ECHO_HIGH_WATER) {
    return;
  }
  sr = malloc(sizeof(*sr) + (size_t) nread);
  if (sr == NULL) {
    return;
  }
  memcpy(sr->data, buf->base, (size_t) nread);
  out = uv_buf_init(sr->data, (unsigned) nread);
  if (uv_udp_send(&sr->req, udp, &out, 1, peer, on_send) != 0) {
    free(sr);
  }
}


/* ---- Start and stop -------------------------------------------------- */

static void close_one(uv_handle_t* handle, void* arg) {
  if (!uv_is_closing(handle)) {
    uv_close(handle, handle->data != NULL ? on_conn_close : NULL);
  }
}


static void on_signal(uv_signal_t* sig, int signum) {
  uv_walk(&loop, close_one, NULL);
}


/* Binds and starts `listener` on listen_addr, and writes its real address
 * (the bound port) into `addr`. Returns 0 or a negative libuv error. */
static int start_listener(uvs_address_t* addr) {
  const char* path = listen_addr.u.un.sun_path;
  int namelen = (int) sizeof(addr->u.storage);
  int err;

  *addr = listen_addr;
  switch (listen_addr.transport) {
  case UVS_TRANSPORT_TCP:
    err = uv_tcp_init(&loop, &listener.tcp);
    if (err == 0) {
      err = uv_tcp_bind(&listener.tcp, &listen_addr.u.sa, 0);
    }
    if (err == 0) {
      err = uv_listen(&listener.stream, SOMAXCONN, on_connection);
    }
    if (err == 0) {
      err = uv_tcp_getsockname(&listener.tcp, &addr->u.sa, &namelen);
    }
    break;
  case UVS_TRANSPORT_UNIX:
    err = uv_pipe_init(&loop, &listener.pipe, 0);
    if (err == 0) {
      err = uv_pipe_bind(&listener.pipe, path);
    }
    if (err == 0) {
      /* From here the file is ours to remove. */
      memcpy(unix_path, path, strlen(path) + 1);
      err = uv_listen(&listener.stream, SOMAXCONN, on_connection);
    }
    return err;
  default: /* UVS_TRANSPORT_UDP */
    err = uv_udp_init(&loop, &listener.udp);
    if (err == 0) {
      err = uv_udp_bind(&listener.udp, &listen_addr.u.sa, 0);
    }
    if (err == 0) {
      err = uv_udp_recv_start(&listener.udp, on_alloc, on_recv);
    }
    if (err == 0) {
      err = uv_udp_getsockname(&listener.udp, &addr->u.sa, &namelen);
    }
    break;
  }
  addr->len = (socklen_t) namelen;
  return err;
}


/* Reads --listen into listen_addr; exits 2 for anything else, or 0 after
 * --help. */
static void parse_args(int argc, char** argv) {
  bench_parse_listen(argc,
                     argv,
                     "bench-raw-echo",
                     usage_text,
                     &listen_addr,
                     &listen_text);
  /* uv_pipe_bind takes a C string, which cannot hold an abstract name. */
  if (listen_addr.transport == UVS_TRANSPORT_UNIX &&
      listen_addr.u.un.sun_path[0] == '\0') {
    bench_bad_address("bench-raw-echo",
                      listen_text,
                      "an abstract unix: name is not served");
  }
}


int main(int argc, char** argv) {
  static const int signums[] = { SIGINT, SIGTERM };
  uvs_address_t bound;
  char text[UVS_ADDRSTRLEN];
  size_t size = sizeof(text);
  int status = 0;
  int err;
  size_t i;

  parse_args(argc, argv);
  /* A write to a connection the peer has reset must fail with EPIPE, not
   * kill the process: libuv leaves SIGPIPE to the program. */
  signal(SIGPIPE, SIG_IGN);
  err = uv_loop_init(&loop);
  if (err != 0) {
    fprintf(stderr, "bench-raw-echo: %s\n", uv_strerror(err));
    return 1;
  }
  for (i = 0; i < 2 && err == 0; i++) {
    err = uv_signal_init(&loop, &signals[i]);
    if (err == 0) {
      err = uv_signal_start(&signals[i], on_signal, signums[i]);
    }
  }
  if (err == 0) {
    err = start_listener(&bound);
  }
  if (err == 0) {
    err = uvs_address_format(&bound, text, &size);
  }
  if (err != 0) {
    fprintf(stderr,
            "bench-raw-echo: cannot listen on %s: %s\n",
            listen_text,
            uv_strerror(err));
    status = 1;
    uv_walk(&loop, close_one, NULL);
  } else {
    printf("listening on %s\n", text);
    fflush(stdout);
  }

  /* Returns once a signal (or a failed start) has closed every handle. */
  uv_run(&loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop) != 0) {
    fprintf(stderr, "bench-raw-echo: handles left open at exit\n");
    status = 1;
  }
  if (unix_path[0] != '\0') {
    (void) unlink(unix_path);
  }
  return status;
}
