/* SPDX-License-Identifier: MIT */
/*
 * One connection: the read path, the write queue, half-close and the three
 * ways a connection ends, in every mode.
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
 * close_now, which calls uv_close on every handle the connection owns
 * (threading: once the worker has left a blocking recv, see below); the
 * last close callback runs on_close and frees the connection, so a pointer
 * stays valid for the rest of any callback that closed it.
 *
 * Threading mode: while the handler runs, its worker reads the socket
 * itself (reqio.c) and the loop does not; the worker sends directly while
 * nothing is queued, and otherwise its writes collect in the output queue
 * and one mailbox message asks the loop to send them. A receive or send
 * the worker sees fail posts the error (io->failed) and the loop closes
 * with it. set_closing takes the socket back (io->shut, non-blocking mode
 * again, and a wake-up for a worker waiting in poll; one in a blocking
 * recv sees it within reqio.c's HOT_WAIT_MS) before the loop reads it for
 * the FIN, shuts it down or closes it; close_now shuts the read side of a
 * socket a worker is still receiving on, and closes its handles only once
 * the worker has posted that it left (worker_in_recv, on_conn_msg), so
 * its number is not reused under the recv. The loop also puts the socket
 * back in non-blocking mode before it writes queued output or reads for a
 * cold wait. An idle timeout due looks at the worker's last byte
 * (io->direct_ms) first. The connection is freed when both its handles
 * are closed and its worker has reported the request done (`worker_ref`),
 * so neither side ever holds a freed pointer. Sync mode runs the whole
 * request inside the accept callback with fd-direct I/O and then hands the
 * descriptor to the handle for the graceful close.
 */
#include "internal.h"

#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdalign.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_alloc(uv_handle_t* handle, size_t size, uv_buf_t* buf);
static void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
static void on_write(uv_write_t* req, int status);
static void on_shutdown(uv_shutdown_t* req, int status);
static void on_close_timer(uv_timer_t* handle);
static void on_handle_closed(uv_handle_t* handle);
static void on_timer_closed(uv_handle_t* handle);
static void on_conn_msg(uvs__msg_t* msg);
static void close_graceful(uvs_conn_t* conn);
static void abort_now(uvs_conn_t* conn);
static void set_reset_on_close(uvs_conn_t* conn);
static void free_conn(uvs_conn_t* conn);
static void hand_over(uvs_conn_t* conn);
static void dgram_done(uvs_conn_t* conn);
static bool worker_in_recv(uvs_conn_t* conn);
static void close_handles(uvs_conn_t* conn);

/* The largest piece one uv_buf_t carries (its length is an unsigned int). */
#define UVS__MAX_CHUNK ((size_t) 1 << 30)


static size_t state_offset(void) {
  size_t align = alignof(max_align_t);
  return (sizeof(uvs_conn_t) + align - 1) / align * align;
}


static bool is_pipe(const uvs_server_t* server) {
  return server->address.transport == UVS_TRANSPORT_UNIX;
}


/* The stream handle for the server's transport. */
static int init_handle(uvs_conn_t* conn) {
  uvs_server_t* server = conn->server;
  if (is_pipe(server))
    return uv_pipe_init(server->loop, &conn->h.pipe, 0);
  return uv_tcp_init(server->loop, &conn->h.tcp);
}


/* Gives the descriptor to the handle. */
static int adopt_fd(uvs_conn_t* conn) {
  if (is_pipe(conn->server))
    return uv_pipe_open(&conn->h.pipe, conn->fd);
  return uv_tcp_open(&conn->h.tcp, conn->fd);
}


/* Sync mode, after the handler: the handle takes the descriptor for the
 * graceful close (flushing nothing: sync writes are sent already), so the
 * loop need not block on the peer's FIN. */
static void sync_close(uvs_conn_t* conn) {
  bool abort;
  int r;

  /* The server closed (from inside the handler): the handle is closing
   * without the descriptor, which is still ours. */
  if (conn->handle_closing) {
    shutdown(conn->fd, SHUT_WR);
    close(conn->fd);
    return;
  }
  r = adopt_fd(conn);
  if (r != 0) {
    close(conn->fd);
    uvs__conn_close_now(conn, 0);
    return;
  }
  conn->fd_adopted = true;
  abort = conn->io->want_abort;
  if (abort) {
    uvs_conn_abort(conn);
    return;
  }
  if (uv_read_start(&conn->h.stream, on_alloc, on_read) != 0) {
    uvs__conn_close_now(conn, 0);
    return;
  }
  close_graceful(conn);
}


int uvs__conn_accept(uvs_server_t* server,
                     uv_os_sock_t fd,
                     const uvs_address_t* peer,
                     uint64_t* id) {
  uvs_mode_t mode = server->config.mode;
  uvs_conn_t* conn;
  int r;

  if (server->config.disable_nagle_algorithm && !is_pipe(server)) {
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
  }
  conn = uvs__calloc(1, state_offset() + server->handler.state_size);
  if (conn == NULL) {
    close(fd);
    return UV_ENOMEM;
  }
  conn->server = server;
  conn->peer = *peer;
  conn->fd = fd;
  if (server->handler.state_size > 0)
    conn->state = (char*) conn + state_offset();
  /* Everything that can fail comes before the handle exists: a handle,
   * once on the loop, can only go away through uv_close. */
  if (mode != UVS_MODE_EVENT) {
    r = uvs__reqio_new(conn);
    if (r != 0) {
      close(fd);
      uvs__free(conn);
      return r;
    }
    conn->io->msg.run = on_conn_msg;
  }
  r = init_handle(conn);
  if (r != 0) {
    close(fd);
    if (conn->io != NULL)
      uvs__reqio_free(conn->io);
    uvs__free(conn);
    return r;
  }
  conn->id = ++server->next_conn_id;
  uv_mutex_lock(&server->conns_lock);
  uvs__list_push(&server->conns, &conn->node);
  server->nconns++;
  uv_mutex_unlock(&server->conns_lock);
  server->nopen++;
  *id = conn->id;

  if (mode == UVS_MODE_SYNC) {
    conn->opened = true;
    uvs__reqio_run(conn);
    sync_close(conn);
    return 0;
  }

  r = adopt_fd(conn);
  if (r != 0) {
    /* The handle does not own fd yet. */
    close(fd);
    uvs__conn_close_now(conn, UV_ECANCELED);
    return r;
  }
  conn->fd_adopted = true;
  /* A threading worker reads the socket itself (reqio.c). */
  if (mode != UVS_MODE_THREADING) {
    r = uv_read_start(&conn->h.stream, on_alloc, on_read);
    if (r != 0) {
      uvs__conn_close_now(conn, UV_ECANCELED);
      return r;
    }
  }
  uvs__timeout_arm(conn, UVS__TIMEOUT_IDLE);

  conn->opened = true;
  if (mode == UVS_MODE_THREADING) {
    conn->worker_ref = true;
    uvs__mailbox_hold(server->mailbox);
    r = uvs__pool_submit(server->pool, &conn->io->job);
    if (r != 0) {
      conn->worker_ref = false;
      uvs__mailbox_unhold(server->mailbox);
      conn->opened = false; /* never served: no shutdown_request */
      uvs__conn_close_now(conn, UV_ECANCELED);
      return r;
    }
    return 0;
  }
  if (server->handler.on_open != NULL) {
    uvs__callback_depth++;
    server->handler.on_open(conn);
    uvs__callback_depth--;
  }
  return 0;
}


/* The connection starts to close: it no longer counts against
 * max_connections (a server-side close that lingers for the peer's FIN
 * is over for the client), and a listener paused at the limit may
 * resume. */
static void set_closing(uvs_conn_t* conn) {
  uvs_server_t* server = conn->server;
  if (conn->closing)
    return;
  conn->closing = true;
  if (conn->dgram)
    return;
  if (conn->io != NULL && conn->io->threaded) {
    /* From now on the socket is the loop's alone: the worker neither
     * receives (the loop reads to see the FIN) nor sends (no byte may
     * follow our FIN or reach a closed descriptor). */
    uv_mutex_lock(&conn->io->lock);
    conn->io->shut = true;
    if (conn->io->eof)
      conn->eof = true; /* the worker received the FIN */
    uvs__reqio_nonblocking(conn->io);
    uvs__reqio_wake(conn->io);
    uv_mutex_unlock(&conn->io->lock);
  }
  server->nopen--;
  if (server->config.max_connections_pause && !server->closing)
    uvs__server_update_listener(server);
}


/* The shutdown_request hook runs once per connection, when its close
 * begins, while the descriptor is still open. */
static void notify_shutdown_request(uvs_conn_t* conn) {
  if (conn->shutdown_notified || !conn->opened)
    return;
  conn->shutdown_notified = true;
  uvs__server_shutdown_request(conn->server, conn->fd, &conn->peer);
}


void uvs__conn_close_now(uvs_conn_t* conn, int status) {
  uvs_server_t* server = conn->server;

  if (conn->handle_closing)
    return;
  conn->handle_closing = true;
  /* A handler blocked in request I/O returns at once, with this status
   * (set before set_closing takes the socket back from its worker). */
  if (conn->io != NULL && server->config.mode == UVS_MODE_THREADING)
    uvs__reqio_cancel(conn, status < 0 ? status : UV_ECANCELED);
  set_closing(conn);
  uvs__timeout_clear(conn);
  if (conn->status == 0)
    conn->status = status;
  /* A network error (a reset, a failed send), not uvs's own reasons. */
  if (status < 0 && status != UV_ECANCELED && status != UV_ETIMEDOUT &&
      status != UV_ENOBUFS && status != UV_ENOMEM) {
    uvs__stat_add(&server->stats.conn_errors, 1);
  }
  if (conn->dgram) {
    /* No handle to close, and the reply is dropped: the request's memory
     * goes once its handler is done with it (or with the handler, when
     * the server closes without waiting). */
    notify_shutdown_request(conn);
    if (!conn->worker_ref)
      free_conn(conn);
    else if (server->pool_detached)
      hand_over(conn);
    return;
  }
  /* socketserver's order: handle_error, then shutdown_request, then close.
   * A cancel by the server is not an error of the request. In the blocking
   * modes the handler's calls report errors; reqio.c passes them on. */
  if (status < 0 && status != UV_ECANCELED && conn->opened &&
      server->config.mode == UVS_MODE_EVENT) {
    uvs__server_error(server, conn, &conn->peer, status);
  }
  notify_shutdown_request(conn);
  if (worker_in_recv(conn)) {
    conn->close_deferred = true; /* on_conn_msg closes */
    return;
  }
  close_handles(conn);
}


/* Threading: a worker in a blocking recv (reqio.c) still uses the
 * descriptor's number: closing it now could let a new connection take the
 * number and the worker receive its bytes. Shutting the read side ends
 * the recv at once (the socket closes now, without a linger for the
 * peer's FIN that the shut side would spoil), and the worker posts once
 * out (io->close_wait). */
static bool worker_in_recv(uvs_conn_t* conn) {
  bool in;
  if (conn->io == NULL || !conn->io->threaded || conn->dgram)
    return false;
  uv_mutex_lock(&conn->io->lock);
  in = conn->io->in_recv;
  conn->io->close_wait = in;
  if (in)
    shutdown(conn->fd, SHUT_RD);
  uv_mutex_unlock(&conn->io->lock);
  return in;
}


static void close_handles(uvs_conn_t* conn) {
  if (conn->close_timer != NULL) {
    conn->pending_closes++;
    uv_close((uv_handle_t*) conn->close_timer, on_timer_closed);
  }
  conn->pending_closes++;
  uv_close(&conn->h.handle, on_handle_closed);
}


/* Unlinks the connection from its server; it is no longer counted. */
static void unlink_conn(uvs_conn_t* conn) {
  uvs_server_t* server = conn->server;
  uv_mutex_lock(&server->conns_lock);
  /* A removed node points at itself: unlinking twice counts once. */
  if (conn->node.next != &conn->node) {
    uvs__list_remove(&conn->node);
    server->nconns--;
  }
  uv_mutex_unlock(&server->conns_lock);
}


/* Gives a connection whose loop side is done to its still-running worker
 * (the server closes without waiting for handlers), or frees it when the
 * worker has finished meanwhile. */
static void hand_over(uvs_conn_t* conn) {
  uvs_server_t* server = conn->server;
  uint64_t id = conn->id;
  bool orphan = false;

  conn->worker_ref = false;
  uvs__mailbox_unhold(server->mailbox);
  /* Everything the loop does with the connection happens before it is
   * handed over: once `orphaned` is set and the lock released, the worker
   * may free it at any moment. Cancelling under the I/O lock catches any
   * message the worker posted (it posts under that lock, and never once
   * orphaned). */
  unlink_conn(conn);
  uv_mutex_lock(&conn->io->lock);
  if (!conn->io->done) {
    conn->io->orphaned = true;
    orphan = true;
  }
  uvs__mailbox_cancel(server->mailbox, &conn->io->msg);
  uv_mutex_unlock(&conn->io->lock);
  if (orphan)
    uvs__server_conn_done(server, id);
  else
    free_conn(conn);
}


void uvs__conn_hand_over_all(uvs_server_t* server) {
  uvs__list_t* node;
  uvs__list_t* next;
  for (node = server->conns.next; node != &server->conns; node = next) {
    uvs_conn_t* conn = container_of(node, uvs_conn_t, node);
    next = node->next;
    if (conn->loop_done && conn->worker_ref)
      hand_over(conn);
  }
}


/* Every handle is closed. The memory goes now, or when the worker reports
 * done, or (the server closed without waiting) the worker frees it. */
static void finish(uvs_conn_t* conn) {
  conn->loop_done = true;
  if (conn->worker_ref) {
    if (conn->server->pool_detached)
      hand_over(conn);
    return;
  }
  free_conn(conn);
}


static void free_conn(uvs_conn_t* conn) {
  uvs_server_t* server = conn->server;
  uint64_t id = conn->id;

  uvs__timeout_clear(conn);
  unlink_conn(conn);
  if (conn->opened && server->config.mode == UVS_MODE_EVENT &&
      server->handler.on_close != NULL) {
    uvs__callback_depth++;
    server->handler.on_close(conn, conn->status);
    uvs__callback_depth--;
  }
  if (conn->io != NULL) {
    uvs__mailbox_cancel(server->mailbox, &conn->io->msg);
    uvs__reqio_free(conn->io);
  }
  uvs__free(conn);
  uvs__server_conn_done(server, id);
}


static void on_handle_closed(uv_handle_t* handle) {
  uvs_conn_t* conn = container_of(handle, uvs_conn_t, h);
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
  uvs_conn_t* conn = container_of(handle, uvs_conn_t, h);
  uvs_server_t* server = conn->server;
  /* Every connection reads into the server's buffer: on_read hands the
   * bytes to on_data before the loop reads anything else. */
  buf->base = server->read_buf;
  buf->len = server->config.read_buffer_size;
}


/* Threading: what the loop read for a worker waiting cold (reqio.c:
 * io->loop_reads) goes to its input queue, and the socket is the worker's
 * again. One read at a time, so the queue holds at most one read buffer. */
static void worker_data(uvs_conn_t* conn, const char* data, size_t len) {
  uvs__io_t* io = conn->io;
  int r = 0;

  uv_read_stop(&conn->h.stream);
  conn->worker_read = false;
  uv_mutex_lock(&io->lock);
  if (len > 0)
    r = uvs__buf_append(&io->in, data, len);
  else
    io->eof = true;
  /* Bytes dropped for lack of memory: the stream cannot go on, and the
   * worker must not receive what follows them. */
  if (r != 0 && io->error == 0)
    io->error = r;
  io->loop_reads = false;
  uv_cond_broadcast(&io->cond);
  uv_mutex_unlock(&io->lock);
  if (r != 0)
    uvs__conn_close_now(conn, r);
}


/* Otherwise the loop reads a blocking-mode connection only once it is
 * closing (a sync handler reads it itself before that). */
static void on_eof(uvs_conn_t* conn) {
  uvs_server_t* server = conn->server;

  conn->eof = true;
  if (conn->closing) {
    if (conn->shut_done)
      uvs__conn_close_now(conn, 0);
    return;
  }
  if (conn->io != NULL) {
    worker_data(conn, NULL, 0);
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
  uvs_conn_t* conn = container_of(stream, uvs_conn_t, h);
  uvs_server_t* server = conn->server;

  if (nread > 0) {
    uvs__stat_loop_add(&server->stats.bytes_in, (uint64_t) nread);
    /* While closing, input is read only to see the peer's FIN. */
    if (conn->closing)
      return;
    uvs__timeout_arm(conn, UVS__TIMEOUT_IDLE);
    if (conn->io != NULL) {
      worker_data(conn, buf->base, (size_t) nread);
      return;
    }
    if (server->handler.on_data == NULL)
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
  if (conn->io != NULL)
    return UV_ENOTSUP;
  conn->read_paused = true;
  /* A peer is not slow while we do not read it. */
  uvs__timeout_disarm(conn, UVS__TIMEOUT_READ);
  /* A closing connection keeps reading to see the FIN. */
  if (!conn->closing)
    uv_read_stop(&conn->h.stream);
  return 0;
}


int uvs_conn_request_pending(uvs_conn_t* conn, int pending) {
  if (conn == NULL)
    return UV_EINVAL;
  if (conn->io != NULL)
    return UV_ENOTSUP;
  if (conn->closing)
    return UV_EPIPE;
  if (!pending) {
    conn->request_pending = false;
    uvs__timeout_disarm(conn, UVS__TIMEOUT_READ);
    return 0;
  }
  /* The clock runs from the first mark, not from the latest. */
  if (!conn->request_pending) {
    conn->request_pending = true;
    if (!conn->read_paused)
      uvs__timeout_arm(conn, UVS__TIMEOUT_READ);
  }
  return 0;
}


int uvs_conn_read_start(uvs_conn_t* conn) {
  if (conn->io != NULL)
    return UV_ENOTSUP;
  if (conn->closing)
    return UV_EPIPE;
  if (!conn->read_paused)
    return 0;
  conn->read_paused = false;
  if (conn->eof)
    return 0;
  if (conn->request_pending)
    uvs__timeout_arm(conn, UVS__TIMEOUT_READ);
  return uv_read_start(&conn->h.stream, on_alloc, on_read);
}


/* ---- Writing -------------------------------------------------------- */

/* The socket took bytes of a uv_write that has not completed (one long
 * write leaves in many pieces): libuv's queue shrank since the last look.
 * That is progress for the idle and write timeouts. */
static void note_progress(uvs_conn_t* conn) {
  size_t left = uv_stream_get_write_queue_size(&conn->h.stream);
  if (left < conn->write_mark) {
    if (uvs__timeout_armed(conn, UVS__TIMEOUT_WRITE))
      uvs__timeout_arm(conn, UVS__TIMEOUT_WRITE);
    if (!conn->closing)
      uvs__timeout_arm(conn, UVS__TIMEOUT_IDLE);
  }
  conn->write_mark = left;
}


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
    note_progress(conn);
    r = uv_write(&w->req, &conn->h.stream, &buf, 1, on_write);
    if (r != 0) {
      uvs__free(w);
      return r;
    }
    if (conn->write_queued == 0)
      uvs__timeout_arm(conn, UVS__TIMEOUT_WRITE);
    conn->write_mark = uv_stream_get_write_queue_size(&conn->h.stream);
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
  n = uv_try_write(&conn->h.stream, &buf, 1);
  if (n == UV_EAGAIN)
    return 0;
  if (n > 0) {
    uvs__stat_loop_add(&conn->server->stats.bytes_out, (uint64_t) n);
    if (!conn->closing)
      uvs__timeout_arm(conn, UVS__TIMEOUT_IDLE);
  }
  return n;
}


/* A peer over max_write_queue is not reading: waiting for it would hold
 * memory, so it is reset. */
static void over_cap(uvs_conn_t* conn) {
  if (conn->handle_closing)
    return; /* the descriptor may belong to another socket by now */
  set_reset_on_close(conn);
  uvs__conn_close_now(conn, UV_ENOBUFS);
}


/* Writes with uv_try_write first, queueing the rest. `cap` (0: none) is
 * max_write_queue for uvs_conn_write. */
static int write_common(uvs_conn_t* conn,
                        const char* data,
                        size_t len,
                        bool copy,
                        size_t cap,
                        uvs_free_cb free_cb,
                        void* free_arg) {
  ssize_t sent;
  int r;

  if (conn->closing)
    return UV_EPIPE;
  if (cap > 0 && conn->write_queued > 0 &&
      (conn->write_queued >= cap || len > cap - conn->write_queued)) {
    over_cap(conn);
    return UV_ENOBUFS;
  }
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
  if (cap > 0 && len - (size_t) sent > cap) {
    over_cap(conn);
    if (free_cb != NULL)
      free_cb((void*) data, free_arg);
    return UV_ENOBUFS;
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
  if (conn->io != NULL)
    return uvs__reqio_write_any(conn, data, len);
  if (len == 0)
    return conn->closing ? UV_EPIPE : 0;
  return write_common(conn,
                      data,
                      len,
                      true,
                      conn->server->config.max_write_queue,
                      NULL,
                      NULL);
}


int uvs_conn_write_nocopy(uvs_conn_t* conn,
                          void* data,
                          size_t len,
                          uvs_free_cb free_cb,
                          void* arg) {
  if (conn == NULL || free_cb == NULL || (data == NULL && len > 0))
    return UV_EINVAL;
  if (conn->io != NULL)
    return UV_ENOTSUP;
  if (conn->closing)
    return UV_EPIPE;
  if (len == 0) {
    free_cb(data, arg);
    return 0;
  }
  return write_common(conn, data, len, false, 0, free_cb, arg);
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
  if (status == 0)
    uvs__stat_loop_add(&server->stats.bytes_out, w->len);
  uvs__free(w);
  /* A write that completed inside uv_write reports later, possibly
   * after the connection began to close: its timeouts are cleared and
   * must stay so (the connection may be freed next). */
  if (status == UV_ECANCELED || conn->handle_closing)
    return;
  if (status < 0) {
    uvs__conn_close_now(conn, status);
    return;
  }
  /* Progress: the peer reads. */
  conn->write_mark = uv_stream_get_write_queue_size(&conn->h.stream);
  if (conn->write_queued > 0)
    uvs__timeout_arm(conn, UVS__TIMEOUT_WRITE);
  else
    uvs__timeout_disarm(conn, UVS__TIMEOUT_WRITE);
  if (!conn->closing)
    uvs__timeout_arm(conn, UVS__TIMEOUT_IDLE);
  if (conn->write_queued == 0 && !conn->closing &&
      server->handler.on_drain != NULL) {
    uvs__callback_depth++;
    server->handler.on_drain(conn);
    uvs__callback_depth--;
  }
}


size_t uvs_conn_write_queue_size(const uvs_conn_t* conn) {
  size_t n;
  if (conn->io == NULL)
    return conn->write_queued;
  uv_mutex_lock(&conn->io->lock);
  n = conn->io->out.len + conn->io->inflight;
  uv_mutex_unlock(&conn->io->lock);
  return n;
}


/* ---- Closing -------------------------------------------------------- */

/* SO_LINGER with a zero timeout makes close() send a reset. */
static void set_reset_on_close(uvs_conn_t* conn) {
  struct linger lg;
  lg.l_onoff = 1;
  lg.l_linger = 0;
  setsockopt(conn->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
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
  if (conn == NULL)
    return UV_EINVAL;
  if (conn->io != NULL)
    return uvs__reqio_close_any(conn, false);
  close_graceful(conn);
  return 0;
}


static void close_graceful(uvs_conn_t* conn) {
  int r;

  if (conn->closing)
    return;
  set_closing(conn);
  /* Closing has its own bounds: close_timeout_ms, close_linger_ms and the
   * write timeout. */
  uvs__timeout_disarm(conn, UVS__TIMEOUT_IDLE);
  uvs__timeout_disarm(conn, UVS__TIMEOUT_READ);
  notify_shutdown_request(conn);
  /* Read (and discard) so the peer's FIN is seen, also when reading was
   * paused by the handler (event mode) or was the worker's (threading
   * mode: set_closing took the socket back). */
  if (!conn->eof && !conn->worker_read &&
      (conn->read_paused || (conn->io != NULL && conn->io->threaded))) {
    uv_read_start(&conn->h.stream, on_alloc, on_read);
  }
  /* uv_shutdown runs after every queued write has completed. */
  r = uv_shutdown(&conn->shutdown_req, &conn->h.stream, on_shutdown);
  if (r != 0) {
    uvs__conn_close_now(conn, r == UV_ENOTCONN ? 0 : r);
    return;
  }
  /* Without memory for the timer the flush is unbounded, as before. */
  if (conn->write_queued > 0 && conn->server->config.close_timeout_ms > 0)
    start_close_timer(conn, conn->server->config.close_timeout_ms);
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
  if (conn->io != NULL && conn->server->config.mode == UVS_MODE_THREADING)
    return uvs__reqio_close_any(conn, true);
  if (conn->io != NULL && !conn->fd_adopted)
    return uvs__reqio_close_any(conn, true); /* sync, inside the handler */
  abort_now(conn);
  return 0;
}


static void abort_now(uvs_conn_t* conn) {
  if (conn->handle_closing)
    return;
  set_reset_on_close(conn);
  uvs__conn_close_now(conn, 0);
}


/* ---- Timeouts and drain --------------------------------------------- */

void uvs__conn_timed_out(uvs_conn_t* conn, int kind) {
  uvs_server_t* server = conn->server;

  if (conn->handle_closing)
    return;
  /* A threading worker's own reads and sends are progress the loop did
   * not see: the idle time counts from the last of them. */
  if (kind == UVS__TIMEOUT_IDLE && conn->io != NULL && conn->io->threaded &&
      !conn->dgram) {
    uint64_t now = uv_now(server->loop);
    uint64_t since;
    uv_mutex_lock(&conn->io->lock);
    since = conn->io->direct_ms;
    uv_mutex_unlock(&conn->io->lock);
    /* The worker's clock ran ahead of the loop's cached one: keep the
     * queue's deadlines in order (up to a loop iteration earlier). */
    if (since > now)
      since = now;
    if (since + server->timeout_ms[kind] > now) {
      uvs__timeout_arm_since(conn, kind, since);
      return;
    }
  }
  /* A long write that is still leaving is no idle or stuck peer. */
  if (kind != UVS__TIMEOUT_READ && !conn->dgram) {
    size_t left = uv_stream_get_write_queue_size(&conn->h.stream);
    if (left < conn->write_mark) {
      conn->write_mark = left;
      uvs__timeout_arm(conn, kind);
      return;
    }
  }
  uvs__stat_add(&server->stats.timeouts, 1);
  if (kind == UVS__TIMEOUT_WRITE) {
    /* Output cannot leave: flushing would wait forever. */
    set_reset_on_close(conn);
    uvs__conn_close_now(conn, UV_ETIMEDOUT);
    return;
  }
  if (conn->status == 0)
    conn->status = UV_ETIMEDOUT;
  if (conn->io != NULL) {
    /* The handler's request I/O fails with the timeout from now on. */
    uv_mutex_lock(&conn->io->lock);
    if (conn->io->error == 0)
      conn->io->error = UV_ETIMEDOUT;
    uvs__reqio_wake(conn->io);
    uv_mutex_unlock(&conn->io->lock);
  }
  close_graceful(conn);
}


void uvs__conn_drain_close(uvs_conn_t* conn, bool abort) {
  if (conn->handle_closing)
    return;
  if (conn->status == 0)
    conn->status = UV_ECANCELED;
  if (abort) {
    if (!conn->dgram)
      set_reset_on_close(conn);
    uvs__conn_close_now(conn, UV_ECANCELED);
    return;
  }
  /* Threading, handler running: its request I/O fails with UV_ECANCELED
   * and it returns; the close waits for it (the request's end closes
   * gracefully, on_conn_msg), so what it buffered with uvs_write after
   * finish still goes out. The drain's grace bounds the wait. */
  if (conn->io != NULL && conn->io->threaded && conn->worker_ref &&
      !conn->dgram) {
    uv_mutex_lock(&conn->io->lock);
    if (conn->io->error == 0) {
      conn->io->error = UV_ECANCELED;
      conn->io->graceful = true;
    }
    uvs__reqio_wake(conn->io);
    uv_mutex_unlock(&conn->io->lock);
    return;
  }
  if (conn->io != NULL && conn->io->threaded) {
    uvs__reqio_close_any(conn, false);
    return;
  }
  close_graceful(conn);
}


/* ---- Threading mode: the loop's side -------------------------------- */

/* The loop has sent (or dropped) an output chunk: the handler may have
 * room to write again. Output chunks are never consumed from the head, so
 * the bytes start at chunk->data. */
static void on_chunk_sent(void* data, void* arg) {
  uvs_conn_t* conn = arg;
  uvs__chunk_t* chunk =
      (uvs__chunk_t*) ((char*) data - offsetof(uvs__chunk_t, data));
  uv_mutex_lock(&conn->io->lock);
  conn->io->inflight -= chunk->end;
  /* Only a handler waiting for output to leave cares; one waiting for
   * input would wake for nothing (a thread switch per reply). */
  if (conn->io->wait_room > 0)
    uv_cond_broadcast(&conn->io->cond);
  uv_mutex_unlock(&conn->io->lock);
  uvs__free(chunk);
}


static void send_chunks(uvs_conn_t* conn, uvs__chunk_t* chunk) {
  while (chunk != NULL) {
    uvs__chunk_t* next = chunk->next;
    int r = UV_EPIPE;
    if (!conn->closing) {
      r = write_common(conn,
                       chunk->data,
                       chunk->end,
                       false,
                       0,
                       on_chunk_sent,
                       conn);
    }
    if (r != 0)
      on_chunk_sent(chunk->data, conn);
    chunk = next;
  }
}


/* A worker posted: send its output, resume reading, close, or finish the
 * request. Runs on the loop thread; everything it needs was set under the
 * I/O lock. */
static void on_conn_msg(uvs__msg_t* msg) {
  uvs__io_t* io = container_of(msg, uvs__io_t, msg);
  uvs_conn_t* conn = io->conn;
  uvs__chunk_t* chunks = NULL;
  size_t len = 0;
  int failed;
  bool read;
  bool close;
  bool abort;
  bool over;
  bool done;
  bool resume_close;

  if (conn->dgram) {
    /* A datagram request posts once: when its handler is done. */
    uv_mutex_lock(&io->lock);
    done = io->done;
    uv_mutex_unlock(&io->lock);
    if (done && conn->worker_ref) {
      conn->worker_ref = false;
      uvs__mailbox_unhold(conn->server->mailbox);
      dgram_done(conn);
    }
    return;
  }

  uv_mutex_lock(&io->lock);
  if (io->want_flush) {
    chunks = uvs__buf_take(&io->out, &len);
    io->inflight += len;
    io->want_flush = false;
  }
  failed = io->failed;
  io->failed = 0;
  read = io->loop_reads && !conn->worker_read;
  close = io->want_close;
  abort = io->want_abort;
  over = io->over_cap;
  io->want_close = false;
  io->want_abort = false;
  done = io->done;
  /* libuv's reads and writes must not block. */
  if (chunks != NULL || read)
    uvs__reqio_nonblocking(io);
  resume_close = conn->close_deferred && !io->in_recv;
  uv_mutex_unlock(&io->lock);

  if (resume_close) {
    conn->close_deferred = false;
    close_handles(conn);
  }
  if (chunks != NULL)
    send_chunks(conn, chunks);
  if (read && !conn->closing) {
    int r = uv_read_start(&conn->h.stream, on_alloc, on_read);
    if (r != 0)
      uvs__conn_close_now(conn, r);
    else
      conn->worker_read = true;
  }
  if (failed != 0)
    uvs__conn_close_now(conn, failed);
  else if (abort && over)
    over_cap(conn);
  else if (abort)
    abort_now(conn);
  else if (close)
    close_graceful(conn);
  if (done && conn->worker_ref) {
    conn->worker_ref = false;
    uvs__mailbox_unhold(conn->server->mailbox);
    if (conn->loop_done)
      free_conn(conn);
    else
      close_graceful(conn);
  }
}


void uvs__conn_run_job(uvs__list_t* job) {
  uvs__io_t* io = container_of(job, uvs__io_t, job);
  uvs_conn_t* conn = io->conn;
  bool orphaned;

  uvs__reqio_run(conn);
  uv_mutex_lock(&io->lock);
  orphaned = io->orphaned;
  /* The request is over: writes from other threads now fail, and
   * uvs_server_foreach skips it. */
  if (io->error == 0)
    io->error = UV_ECANCELED;
  if (!orphaned) {
    io->done = true;
    uvs__mailbox_post(conn->server->mailbox, &conn->io->msg);
  }
  uv_mutex_unlock(&io->lock);
  /* The server closed without waiting and gave the connection to us. */
  if (orphaned) {
    uvs__reqio_free(io);
    uvs__free(conn);
  }
}


void uvs__conn_cancel_job(uvs__list_t* job) {
  uvs_conn_t* conn = container_of(job, uvs__io_t, job)->conn;
  conn->worker_ref = false;
  uvs__mailbox_unhold(conn->server->mailbox);
  if (conn->loop_done)
    free_conn(conn);
}


bool uvs__conn_is_open(uvs_conn_t* conn) {
  bool open;
  if (conn->io == NULL || conn->server->config.mode != UVS_MODE_THREADING)
    return !conn->closing;
  uv_mutex_lock(&conn->io->lock);
  open = conn->io->error == 0;
  uv_mutex_unlock(&conn->io->lock);
  return open;
}


/* ---- Datagram requests (blocking modes) ----------------------------- */

int uvs__conn_datagram(uvs_server_t* server,
                       const char* data,
                       size_t len,
                       const uvs_address_t* peer) {
  uvs_conn_t* conn;
  int r;

  conn = uvs__calloc(1, state_offset() + server->handler.state_size);
  if (conn == NULL)
    return UV_ENOMEM;
  conn->server = server;
  conn->peer = *peer;
  conn->fd = server->fd;
  conn->dgram = true;
  conn->loop_done = true; /* it has no handle */
  if (server->handler.state_size > 0)
    conn->state = (char*) conn + state_offset();
  r = uvs__reqio_new_datagram(conn, data, len);
  if (r != 0) {
    uvs__free(conn);
    return r;
  }
  conn->io->msg.run = on_conn_msg;
  conn->id = ++server->next_conn_id;
  if (server->one_shot)
    server->one_shot_id = conn->id;
  uv_mutex_lock(&server->conns_lock);
  uvs__list_push(&server->conns, &conn->node);
  server->nconns++;
  uv_mutex_unlock(&server->conns_lock);
  conn->opened = true;
  /* worker_ref: a handler holds the request, so a close meanwhile (the
   * server's, from inside the handler) leaves its memory alone. */
  conn->worker_ref = true;
  if (server->config.mode == UVS_MODE_SYNC) {
    uvs__reqio_run(conn);
    conn->worker_ref = false;
    dgram_done(conn);
    return 0;
  }
  uvs__mailbox_hold(server->mailbox);
  r = uvs__pool_submit(server->pool, &conn->io->job);
  if (r != 0) {
    conn->worker_ref = false;
    uvs__mailbox_unhold(server->mailbox);
    conn->opened = false; /* never served: no shutdown_request */
    free_conn(conn);
    return r;
  }
  return 0;
}


/* The handler is done (loop thread): socketserver's finish sends the
 * reply, then shutdown_request runs; the request's memory goes. A request
 * the server closed meanwhile sends nothing. */
static void dgram_done(uvs_conn_t* conn) {
  uvs_server_t* server = conn->server;
  uvs__io_t* io = conn->io;
  uvs__chunk_t* chunks;
  size_t len;
  bool abort;

  if (conn->handle_closing) {
    free_conn(conn);
    return;
  }
  uv_mutex_lock(&io->lock);
  chunks = uvs__buf_take(&io->out, &len);
  abort = io->want_abort;
  uv_mutex_unlock(&io->lock);
  if (abort || len == 0)
    uvs__buf_free_chunks(chunks);
  else
    uvs__listen_dgram_reply(server, &conn->peer, chunks, len);
  conn->handle_closing = true;
  conn->closing = true;
  notify_shutdown_request(conn);
  free_conn(conn);
}


/* ---- Forked children ------------------------------------------------ */

uvs_conn_t* uvs__conn_new_forked(uvs_server_t* server,
                                 uv_os_sock_t fd,
                                 const uvs_address_t* peer,
                                 const char* data,
                                 size_t len,
                                 uint64_t id) {
  uvs_conn_t* conn;
  int r;

  if (server->config.disable_nagle_algorithm && !server->dgram &&
      !is_pipe(server)) {
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
  }
  conn = uvs__calloc(1, state_offset() + server->handler.state_size);
  if (conn == NULL)
    return NULL;
  conn->server = server;
  conn->peer = *peer;
  conn->fd = fd;
  conn->id = id;
  conn->dgram = server->dgram;
  conn->forked = true;
  conn->opened = true;
  if (server->handler.state_size > 0)
    conn->state = (char*) conn + state_offset();
  r = conn->dgram ? uvs__reqio_new_datagram(conn, data, len)
                  : uvs__reqio_new(conn);
  if (r != 0)
    return NULL; /* the child exits: nothing to free */
  return conn;
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
  /* Sync: open while the handler runs. Threading: until the loop closes
   * the connection (the number may then belong to another socket). */
  if (conn->io != NULL && conn->io->threaded) {
    bool closed;
    uv_mutex_lock(&conn->io->lock);
    closed = conn->io->fd_closed;
    uv_mutex_unlock(&conn->io->lock);
    return closed ? UV_EBADF : conn->fd;
  }
  if (conn->io != NULL)
    return conn->fd;
  if (uv_fileno(&conn->h.handle, &fd) != 0)
    return UV_EBADF;
  return fd;
}


uint64_t uvs_conn_id(const uvs_conn_t* conn) {
  return conn->id;
}
