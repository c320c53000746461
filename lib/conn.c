/* SPDX-License-Identifier: MIT */
/*
 * One connection in event mode: the read path, the write queue, half-close
 * and the three ways a connection ends.
 *
 * Reads land in the server's one read buffer and go straight to on_data, so
 * an idle connection holds no buffer. Writes try uv_try_write first and
 * queue only what the socket did not take (copied, or the caller's bytes for
 * a nocopy write). The peer's EOF never discards pending output: the default
 * on_eof is a graceful close.
 *
 * Endings: a graceful close (uvs_conn_close) stops delivering data, lets
 * uv_shutdown flush the queue and send our FIN, then waits up to
 * close_linger_ms for the peer's FIN while discarding its input, because
 * closing a socket with unread input makes the kernel send a reset that can
 * destroy the reply on its way. An abort sends a reset at once. An error
 * (or the server's close) closes at once with a status. All three end in
 * close_now, which calls uv_close on every handle the connection owns; the
 * last close callback runs on_close and frees the connection, so a pointer
 * stays valid for the rest of any callback that closed it.
 */
#include "internal.h"

#include <limits.h>
#include <stdalign.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_alloc(uv_handle_t* handle, size_t size, uv_buf_t* buf);
static void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
static void on_write(uv_write_t* req, int status);
static void on_shutdown(uv_shutdown_t* req, int status);
static void on_close_timer(uv_timer_t* handle);
static void on_tcp_closed(uv_handle_t* handle);
static void on_timer_closed(uv_handle_t* handle);

/* The largest piece one uv_buf_t carries (its length is an unsigned int). */
#define UVS__MAX_CHUNK ((size_t) 1 << 30)


static size_t state_offset(void) {
  size_t align = alignof(max_align_t);
  return (sizeof(uvs_conn_t) + align - 1) / align * align;
}


int uvs__conn_accept(uvs_server_t* server,
                     uv_os_sock_t fd,
                     const uvs_address_t* peer,
                     uint64_t* id) {
  uvs_conn_t* conn;
  int r;

  conn = uvs__calloc(1, state_offset() + server->handler.state_size);
  if (conn == NULL) {
    close(fd);
    return UV_ENOMEM;
  }
  r = uv_tcp_init(server->loop, &conn->tcp);
  if (r != 0) {
    close(fd);
    uvs__free(conn);
    return r;
  }
  conn->server = server;
  conn->peer = *peer;
  conn->id = ++server->next_conn_id;
  if (server->handler.state_size > 0)
    conn->state = (char*) conn + state_offset();
  uvs__list_push(&server->conns, &conn->node);
  server->nconns++;

  r = uv_tcp_open(&conn->tcp, fd);
  if (r != 0) {
    /* The handle does not own fd yet. */
    close(fd);
    uvs__conn_close_now(conn, UV_ECANCELED);
    return r;
  }
  r = uv_read_start((uv_stream_t*) &conn->tcp, on_alloc, on_read);
  if (r != 0) {
    uvs__conn_close_now(conn, UV_ECANCELED);
    return r;
  }

  *id = conn->id;
  conn->opened = true;
  if (server->handler.on_open != NULL) {
    uvs__callback_depth++;
    server->handler.on_open(conn);
    uvs__callback_depth--;
  }
  return 0;
}


/* The shutdown_request hook runs once per connection, when its close
 * begins, while the descriptor is still open. */
static void notify_shutdown_request(uvs_conn_t* conn) {
  if (conn->shutdown_notified || !conn->opened)
    return;
  conn->shutdown_notified = true;
  uvs__server_shutdown_request(conn->server,
                               uvs_conn_fileno(conn),
                               &conn->peer);
}


void uvs__conn_close_now(uvs_conn_t* conn, int status) {
  uvs_server_t* server = conn->server;

  if (conn->handle_closing)
    return;
  conn->handle_closing = true;
  conn->closing = true;
  if (conn->status == 0)
    conn->status = status;
  /* socketserver's order: handle_error, then shutdown_request, then close.
   * A cancel by the server is not an error of the request. */
  if (status < 0 && status != UV_ECANCELED && conn->opened)
    uvs__server_error(server, conn, &conn->peer, status);
  notify_shutdown_request(conn);
  if (conn->close_timer != NULL) {
    conn->pending_closes++;
    uv_close((uv_handle_t*) conn->close_timer, on_timer_closed);
  }
  conn->pending_closes++;
  uv_close((uv_handle_t*) &conn->tcp, on_tcp_closed);
}


static void finish(uvs_conn_t* conn) {
  uvs_server_t* server = conn->server;
  uint64_t id = conn->id;

  server->nconns--;
  if (conn->opened && server->handler.on_close != NULL) {
    uvs__callback_depth++;
    server->handler.on_close(conn, conn->status);
    uvs__callback_depth--;
  }
  uvs__list_remove(&conn->node);
  uvs__free(conn);
  uvs__server_conn_done(server, id);
}


static void on_tcp_closed(uv_handle_t* handle) {
  uvs_conn_t* conn = container_of(handle, uvs_conn_t, tcp);
  if (--conn->pending_closes == 0)
    finish(conn);
}


static void on_timer_closed(uv_handle_t* handle) {
  uvs_conn_t* conn = uv_handle_get_data(handle);
  uvs__free(handle);
  conn->close_timer = NULL;
  if (--conn->pending_closes == 0)
    finish(conn);
}


/* ---- Reading -------------------------------------------------------- */

static void on_alloc(uv_handle_t* handle, size_t size, uv_buf_t* buf) {
  uvs_conn_t* conn = container_of(handle, uvs_conn_t, tcp);
  uvs_server_t* server = conn->server;
  /* Every connection reads into the server's buffer: on_read hands the
   * bytes to on_data before the loop reads anything else. */
  buf->base = server->read_buf;
  buf->len = server->config.read_buffer_size;
}


static void on_eof(uvs_conn_t* conn) {
  uvs_server_t* server = conn->server;

  conn->eof = true;
  if (conn->closing) {
    if (conn->shut_done)
      uvs__conn_close_now(conn, 0);
    return;
  }
  if (server->handler.on_eof != NULL) {
    uvs__callback_depth++;
    server->handler.on_eof(conn);
    uvs__callback_depth--;
  } else {
    uvs_conn_close(conn);
  }
}


static void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  uvs_conn_t* conn = container_of(stream, uvs_conn_t, tcp);
  uvs_server_t* server = conn->server;

  if (nread > 0) {
    /* While closing, input is read only to see the peer's FIN. */
    if (conn->closing || server->handler.on_data == NULL)
      return;
    uvs__callback_depth++;
    server->handler.on_data(conn, buf->base, (size_t) nread);
    uvs__callback_depth--;
    return;
  }
  if (nread == 0)
    return;
  if (nread == UV_EOF) {
    on_eof(conn);
    return;
  }
  /* A reset after our FIN went out loses nothing we promised. */
  uvs__conn_close_now(conn, conn->shut_done ? 0 : (int) nread);
}


int uvs_conn_read_stop(uvs_conn_t* conn) {
  conn->read_paused = true;
  /* A closing connection keeps reading to see the FIN. */
  if (!conn->closing)
    uv_read_stop((uv_stream_t*) &conn->tcp);
  return 0;
}


int uvs_conn_read_start(uvs_conn_t* conn) {
  if (conn->closing)
    return UV_EPIPE;
  if (!conn->read_paused)
    return 0;
  conn->read_paused = false;
  if (conn->eof)
    return 0;
  return uv_read_start((uv_stream_t*) &conn->tcp, on_alloc, on_read);
}


/* ---- Writing -------------------------------------------------------- */

/* Queues `len` bytes at `data`, copied or not, in pieces a uv_buf_t can
 * carry; the free callback travels with the last piece. Returns 0 or an
 * error after which the connection is closing. */
static int queue_write(uvs_conn_t* conn,
                       const char* data,
                       size_t len,
                       bool copy,
                       uvs_free_cb free_cb,
                       void* free_data,
                       void* free_arg) {
  while (len > 0) {
    size_t piece = len < UVS__MAX_CHUNK ? len : UVS__MAX_CHUNK;
    bool last = piece == len;
    uvs__write_t* w;
    uv_buf_t buf;
    int r;

    w = uvs__malloc(sizeof(*w) + (copy ? piece : 0));
    if (w == NULL)
      return UV_ENOMEM;
    memset(w, 0, sizeof(*w));
    w->conn = conn;
    w->len = piece;
    if (copy) {
      memcpy(w + 1, data, piece);
      buf = uv_buf_init((char*) (w + 1), (unsigned int) piece);
    } else {
      buf = uv_buf_init((char*) data, (unsigned int) piece);
    }
    if (last) {
      w->free_cb = free_cb;
      w->free_data = free_data;
      w->free_arg = free_arg;
    }
    r = uv_write(&w->req, (uv_stream_t*) &conn->tcp, &buf, 1, on_write);
    if (r != 0) {
      uvs__free(w);
      return r;
    }
    conn->write_queued += piece;
    data += piece;
    len -= piece;
  }
  return 0;
}


/* Sends what the socket takes now when nothing is queued ahead. Returns
 * the bytes sent, or a negative error (not UV_EAGAIN). */
static ssize_t try_write(uvs_conn_t* conn, const char* data, size_t len) {
  uv_buf_t buf;
  int n;

  if (conn->write_queued > 0)
    return 0;
  buf =
      uv_buf_init((char*) data,
                  (unsigned int) (len < UVS__MAX_CHUNK ? len : UVS__MAX_CHUNK));
  n = uv_try_write((uv_stream_t*) &conn->tcp, &buf, 1);
  if (n == UV_EAGAIN)
    return 0;
  return n;
}


static int write_common(uvs_conn_t* conn,
                        const char* data,
                        size_t len,
                        bool copy,
                        uvs_free_cb free_cb,
                        void* free_arg) {
  ssize_t sent;
  int r;

  if (conn->closing)
    return UV_EPIPE;
  sent = try_write(conn, data, len);
  if (sent < 0) {
    /* The connection is broken; its end reaches on_close. The caller's
     * bytes are done with. */
    uvs__conn_close_now(conn, (int) sent);
    if (free_cb != NULL)
      free_cb((void*) data, free_arg);
    return 0;
  }
  if ((size_t) sent == len) {
    if (free_cb != NULL)
      free_cb((void*) data, free_arg);
    return 0;
  }
  r = queue_write(conn,
                  data + sent,
                  len - (size_t) sent,
                  copy,
                  free_cb,
                  (void*) data,
                  free_arg);
  if (r != 0) {
    /* Part of the bytes may be out: the stream cannot go on without the
     * rest, so the connection ends. Out of memory, the caller keeps its
     * bytes; otherwise they are done with. */
    uvs__conn_close_now(conn, r);
    if (r == UV_ENOMEM)
      return r;
    if (free_cb != NULL)
      free_cb((void*) data, free_arg);
  }
  return 0;
}


int uvs_conn_write(uvs_conn_t* conn, const void* data, size_t len) {
  if (conn == NULL || (data == NULL && len > 0))
    return UV_EINVAL;
  if (len == 0)
    return conn->closing ? UV_EPIPE : 0;
  return write_common(conn, data, len, true, NULL, NULL);
}


int uvs_conn_write_nocopy(uvs_conn_t* conn,
                          void* data,
                          size_t len,
                          uvs_free_cb free_cb,
                          void* arg) {
  if (conn == NULL || free_cb == NULL || (data == NULL && len > 0))
    return UV_EINVAL;
  if (conn->closing)
    return UV_EPIPE;
  if (len == 0) {
    free_cb(data, arg);
    return 0;
  }
  return write_common(conn, data, len, false, free_cb, arg);
}


static void on_write(uv_write_t* req, int status) {
  uvs__write_t* w = container_of(req, uvs__write_t, req);
  uvs_conn_t* conn = w->conn;
  uvs_server_t* server = conn->server;

  conn->write_queued -= w->len;
  if (w->free_cb != NULL) {
    uvs__callback_depth++;
    w->free_cb(w->free_data, w->free_arg);
    uvs__callback_depth--;
  }
  uvs__free(w);
  if (status == UV_ECANCELED)
    return;
  if (status < 0) {
    uvs__conn_close_now(conn, status);
    return;
  }
  if (conn->write_queued == 0 && !conn->closing &&
      server->handler.on_drain != NULL) {
    uvs__callback_depth++;
    server->handler.on_drain(conn);
    uvs__callback_depth--;
  }
}


size_t uvs_conn_write_queue_size(const uvs_conn_t* conn) {
  return conn->write_queued;
}


/* ---- Closing -------------------------------------------------------- */

/* SO_LINGER with a zero timeout makes close() send a reset. */
static void set_reset_on_close(uvs_conn_t* conn) {
  struct linger lg;
  lg.l_onoff = 1;
  lg.l_linger = 0;
  setsockopt(uvs_conn_fileno(conn), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}


/* (Re)starts the connection's one timer, made on first use so that an open
 * connection carries none. */
static int start_close_timer(uvs_conn_t* conn, uint64_t ms) {
  if (conn->close_timer == NULL) {
    conn->close_timer = uvs__malloc(sizeof(*conn->close_timer));
    if (conn->close_timer == NULL)
      return UV_ENOMEM;
    uv_timer_init(conn->server->loop, conn->close_timer);
    uv_handle_set_data((uv_handle_t*) conn->close_timer, conn);
  }
  return uv_timer_start(conn->close_timer, on_close_timer, ms, 0);
}


int uvs_conn_close(uvs_conn_t* conn) {
  int r;

  if (conn == NULL)
    return UV_EINVAL;
  if (conn->closing)
    return 0;
  conn->closing = true;
  notify_shutdown_request(conn);
  /* Keep reading (and discarding) so the peer's FIN is seen. */
  if (!conn->eof && conn->read_paused)
    uv_read_start((uv_stream_t*) &conn->tcp, on_alloc, on_read);
  /* uv_shutdown runs after every queued write has completed. */
  r = uv_shutdown(&conn->shutdown_req, (uv_stream_t*) &conn->tcp, on_shutdown);
  if (r != 0) {
    uvs__conn_close_now(conn, r == UV_ENOTCONN ? 0 : r);
    return 0;
  }
  /* Without memory for the timer the flush is unbounded, as before. */
  if (conn->write_queued > 0 && conn->server->config.close_timeout_ms > 0)
    start_close_timer(conn, conn->server->config.close_timeout_ms);
  return 0;
}


static void on_shutdown(uv_shutdown_t* req, int status) {
  uvs_conn_t* conn = container_of(req, uvs_conn_t, shutdown_req);
  uvs_server_t* server = conn->server;

  if (conn->handle_closing)
    return;
  if (status < 0) {
    uvs__conn_close_now(conn, status == UV_ENOTCONN ? 0 : status);
    return;
  }
  conn->shut_done = true;
  if (conn->eof || server->config.close_linger_ms == 0 ||
      start_close_timer(conn, server->config.close_linger_ms) != 0) {
    uvs__conn_close_now(conn, 0);
  }
}


/* Before our FIN is out the deadline is close_timeout_ms, and the peer is
 * not reading: reset. After it, the linger for the peer's FIN is over:
 * close. */
static void on_close_timer(uv_timer_t* handle) {
  uvs_conn_t* conn = uv_handle_get_data((uv_handle_t*) handle);
  if (conn->shut_done) {
    uvs__conn_close_now(conn, 0);
    return;
  }
  set_reset_on_close(conn);
  uvs__conn_close_now(conn, UV_ETIMEDOUT);
}


int uvs_conn_abort(uvs_conn_t* conn) {
  if (conn == NULL)
    return UV_EINVAL;
  if (conn->handle_closing)
    return 0;
  set_reset_on_close(conn);
  uvs__conn_close_now(conn, 0);
  return 0;
}


/* ---- Properties ----------------------------------------------------- */

const uvs_address_t* uvs_conn_peer(const uvs_conn_t* conn) {
  return &conn->peer;
}


uvs_server_t* uvs_conn_server(const uvs_conn_t* conn) {
  return conn->server;
}


void* uvs_conn_state(const uvs_conn_t* conn) {
  return conn->state;
}


int uvs_conn_fileno(const uvs_conn_t* conn) {
  uv_os_fd_t fd;
  if (uv_fileno((const uv_handle_t*) &conn->tcp, &fd) != 0)
    return UV_EBADF;
  return fd;
}


uint64_t uvs_conn_id(const uvs_conn_t* conn) {
  return conn->id;
}
