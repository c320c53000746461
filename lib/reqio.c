/* SPDX-License-Identifier: MIT */
/*
 * Blocking requests: the handler lifecycle (setup, handle, finish) and the
 * request I/O a handler uses, socketserver's rfile and wfile.
 *
 * Both blocking modes read through the same input queue, so recv,
 * read_exact and readline are written once; they differ only in how more
 * input arrives and how output leaves:
 * - threading: the socket stays in the loop (conn.c). Waiting for input is
 *   a wait on the connection's condition variable, which the loop signals
 *   as it appends. Output goes straight to the socket from the worker
 *   (send with MSG_DONTWAIT, under the lock) when nothing is queued ahead
 *   of it and the loop has not begun closing; what the socket does not
 *   take is appended to the output queue and one mailbox message asks the
 *   loop to send it. Handing every write to the loop cost two thread
 *   switches per reply, the larger part of a small echo. Workers never
 *   wait on the socket, so the loop can wake any blocked handler (a close,
 *   a reset) and writes from other threads (fan-out) are safe: the loop
 *   sets io->shut under the lock before it shuts down or closes the
 *   descriptor, and io->inflight keeps a direct send from overtaking
 *   queued bytes. Backpressure is exact: the loop stops reading above
 *   input_high and the worker asks again below half of it; uvs_sendall
 *   waits while more than output_high bytes are unsent.
 * - sync: the handler runs on the loop thread, so it reads and writes the
 *   descriptor itself, waiting in poll(2); reads go through the input queue
 *   too, so readline may read past a line without losing bytes.
 *
 * Every wait has a deadline from the request timeout, which fails the call
 * only, and from the connection timeouts, which end the connection: a
 * read call must finish within read_timeout_ms; in sync mode and in a
 * forked child, where no loop watches the socket, a wait also ends at
 * idle_timeout_ms after the last byte either way, a send at
 * write_timeout_ms without progress, and (sync) a wait still blocked at a
 * drain's deadline with UV_ECANCELED. The end of a connection is sticky in
 * io->error (UV_ECANCELED when the server or uvs_conn_close ended it:
 * returned at once, even with input queued).
 *
 * A datagram request (DatagramRequestHandler) is the same with its whole
 * input queued up front and EOF after it, so reading never waits; writes
 * collect in the output queue as the reply, capped at max_packet_size,
 * which the loop sends as one datagram once the handler is done
 * (conn.c).
 */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

/* The most a writer appends at once while waiting for room, so output
 * stays within output_high plus this. */
#define UVS__WRITE_PIECE ((size_t) 65536)

#define NO_DEADLINE UINT64_MAX


/* ---- Lifecycle ------------------------------------------------------ */

int uvs__reqio_new(uvs_conn_t* conn) {
  const uvs_server_t* server = conn->server;
  uvs__io_t* io;

  io = uvs__calloc(1, sizeof(*io));
  if (io == NULL)
    return UV_ENOMEM;
  if (uv_mutex_init(&io->lock) != 0) {
    uvs__free(io);
    return UV_ENOMEM;
  }
  if (uv_cond_init(&io->cond) != 0) {
    uv_mutex_destroy(&io->lock);
    uvs__free(io);
    return UV_ENOMEM;
  }
  io->conn = conn;
  uvs__list_init(&io->job);
  uvs__buf_init(&io->in);
  uvs__buf_init(&io->out);
  io->threaded = server->config.mode == UVS_MODE_THREADING;
  io->setup = server->handler.setup;
  io->handle = server->handler.handle;
  io->finish = server->handler.finish;
  io->input_high = server->config.input_high_water;
  io->output_high = server->config.output_high_water;
  io->max_queue = server->config.max_write_queue;
  io->wbufsize = server->config.wbufsize;
  io->max_reply = server->config.max_packet_size;
  io->timeout_ms = server->config.request_timeout_ms;
  io->read_timeout_ms = server->config.read_timeout_ms;
  if (!io->threaded) {
    /* In threading mode the loop times these (timeout.c). */
    io->idle_timeout_ms = server->config.idle_timeout_ms;
    io->write_timeout_ms = server->config.write_timeout_ms;
    io->last_io_ns = uv_hrtime();
  }
  conn->io = io;
  return 0;
}


int uvs__reqio_new_datagram(uvs_conn_t* conn, const char* data, size_t len) {
  int r = uvs__reqio_new(conn);
  if (r != 0)
    return r;
  conn->io->dgram = true;
  conn->io->eof = true;
  r = uvs__buf_append(&conn->io->in, data, len);
  if (r != 0) {
    uvs__reqio_free(conn->io);
    conn->io = NULL;
  }
  return r;
}


void uvs__reqio_free(uvs__io_t* io) {
  uvs__buf_clear(&io->in);
  uvs__buf_clear(&io->out);
  uvs__free(io->wbuf);
  uv_cond_destroy(&io->cond);
  uv_mutex_destroy(&io->lock);
  uvs__free(io);
}


/* Sends what uvs_write buffered without waiting for the socket, as
 * Python's StreamRequestHandler.finish, ignoring errors. */
static void final_flush(uvs_conn_t* conn);


int uvs__reqio_run(uvs_conn_t* conn) {
  uvs__io_t* io = conn->io;
  uvs_server_t* server = conn->server;
  bool stop = false;
  bool orphaned;
  bool cancelled;
  bool timed_out;
  int err = 0;
  int r;

  uvs__callback_depth++;
  r = io->setup != NULL ? io->setup(conn) : 0;
  if (r == UVS_ESTOP)
    stop = true;
  else if (r < 0)
    err = r;
  if (r == 0) {
    /* finish runs even when handle fails (try/finally). */
    r = io->handle != NULL ? io->handle(conn) : 0;
    if (r == UVS_ESTOP)
      stop = true;
    else if (r < 0)
      err = r;
    r = io->finish != NULL ? io->finish(conn) : 0;
    if (r == UVS_ESTOP)
      stop = true;
    else if (r < 0 && err == 0)
      err = r;
  }
  final_flush(conn);
  uvs__callback_depth--;

  /* A server closed without waiting for us is no longer ours to call. */
  uv_mutex_lock(&io->lock);
  orphaned = io->orphaned;
  cancelled = io->error == UV_ECANCELED;
  timed_out = io->error == UV_ETIMEDOUT;
  uv_mutex_unlock(&io->lock);
  if (orphaned)
    return 0;
  /* socketserver: an Exception reaches handle_error; SystemExit does not,
   * and stops the server. A handler passing on the UV_ECANCELED of a close
   * by the server (or uvs_conn_close) reports no error of its own. A
   * forked child reports its stop through its exit status (fork.c). */
  if (err == UV_ECANCELED && cancelled)
    err = 0;
  /* Nor the UV_ETIMEDOUT of a connection timeout (idle, read, write),
   * counted in the stats instead; a request_timeout_ms expiry, which
   * fails only the call, is the handler's error, as in Python. */
  if (err == UV_ETIMEDOUT && timed_out)
    err = 0;
  if (err != 0) {
    uvs__stat_add(&server->stats.handler_errors, 1);
    uvs__server_error(server, conn, &conn->peer, err);
  }
  if (stop && !conn->forked)
    uvs__server_request_stop(server);
  return stop ? UVS_ESTOP : err;
}


void uvs__reqio_cancel(uvs_conn_t* conn, int err) {
  uvs__io_t* io = conn->io;
  uv_mutex_lock(&io->lock);
  io->fd_closed = true; /* the loop closes it now: uvs_conn_fileno */
  if (io->error == 0)
    io->error = err;
  uv_cond_signal(&io->cond);
  uv_mutex_unlock(&io->lock);
}


/* ---- Waiting --------------------------------------------------------- */

/* `ms` from `from` (uv_hrtime), or NO_DEADLINE when too far to add. */
static uint64_t after_ms(uint64_t from, uint64_t ms) {
  if (ms > (NO_DEADLINE - 1 - from) / 1000000)
    return NO_DEADLINE;
  return from + ms * 1000000;
}


static uint64_t deadline_of(const uvs__io_t* io) {
  if (io->timeout_ms < 0)
    return NO_DEADLINE;
  return after_ms(uv_hrtime(), (uint64_t) io->timeout_ms);
}


/* A read call's deadline: the request timeout's (the call fails), or the
 * read timeout's when earlier (the connection ends: `closes`). */
typedef struct {
  uint64_t at;
  bool closes;
} deadline_t;

static deadline_t read_deadline(const uvs__io_t* io) {
  deadline_t d;
  d.at = deadline_of(io);
  d.closes = false;
  if (io->read_timeout_ms > 0) {
    uint64_t at = after_ms(uv_hrtime(), io->read_timeout_ms);
    if (at <= d.at) {
      d.at = at;
      d.closes = true;
    }
  }
  return d;
}


/* A connection timeout ran out in request I/O: the connection ends with
 * UV_ETIMEDOUT (threading: the loop closes it; otherwise after finish,
 * with a reset for a peer that stopped reading). Threading: lock held. */
static int end_timed_out(uvs_conn_t* conn, bool reset) {
  uvs__io_t* io = conn->io;
  if (io->error != 0)
    return io->error;
  io->error = UV_ETIMEDOUT;
  uvs__stat_add(&conn->server->stats.timeouts, 1);
  if (reset)
    io->want_abort = true;
  if (io->threaded && !io->orphaned && !io->dgram) {
    io->want_close = true;
    uvs__mailbox_post(conn->server->mailbox, &conn->io->msg);
  }
  return UV_ETIMEDOUT;
}


/* Threading: waits on the condition (lock held) until signalled or the
 * deadline. Returns 0 or UV_ETIMEDOUT. */
static int cond_wait(uvs__io_t* io, uint64_t deadline) {
  uint64_t now;
  if (deadline == NO_DEADLINE) {
    uv_cond_wait(&io->cond, &io->lock);
    return 0;
  }
  now = uv_hrtime();
  if (now >= deadline)
    return UV_ETIMEDOUT;
  uv_cond_timedwait(&io->cond, &io->lock, deadline - now);
  return 0;
}


/* Sync: waits until the descriptor is ready for `events` or the deadline.
 * Returns 0 or UV_ETIMEDOUT (or a poll error). */
static int fd_wait(int fd, short events, uint64_t deadline) {
  for (;;) {
    struct pollfd pfd;
    int ms = -1;
    int n;
    if (deadline != NO_DEADLINE) {
      uint64_t now = uv_hrtime();
      if (now >= deadline)
        return UV_ETIMEDOUT;
      /* Round up, so a short remainder does not spin at 0 ms; a longer
       * one than poll takes is waited in steps. */
      uint64_t left = (deadline - now + 999999) / 1000000;
      ms = left > INT_MAX ? INT_MAX : (int) left;
    }
    pfd.fd = fd;
    pfd.events = events;
    pfd.revents = 0;
    n = poll(&pfd, 1, ms);
    if (n > 0)
      return 0;
    if (n < 0 && errno != EINTR)
      return UVS__ERR(errno);
  }
}


/* Sync, after recv or send failed with `errno`: returns 0 to try again
 * (interrupted, or ready for `events` within the deadline), UV_ETIMEDOUT,
 * or the socket's error, which also ends the connection. The wait ends at
 * `d`, or earlier at the idle timeout or a drain's deadline, which end
 * the connection. */
static int fd_again(uvs_conn_t* conn, short events, deadline_t d) {
  uvs__io_t* io = conn->io;
  uint64_t idle_at = NO_DEADLINE;
  uint64_t drain_at = NO_DEADLINE;
  uint64_t at = d.at;
  int r;

  if (errno == EINTR)
    return 0;
  if (errno != EAGAIN && errno != EWOULDBLOCK) {
    io->error = UVS__ERR(errno);
    uvs__stat_add(&conn->server->stats.conn_errors, 1);
    return io->error;
  }
  if (io->idle_timeout_ms > 0)
    idle_at = after_ms(io->last_io_ns, io->idle_timeout_ms);
  if (conn->server->draining && !conn->forked)
    drain_at = conn->server->drain_deadline_ns;
  if (idle_at < at)
    at = idle_at;
  if (drain_at < at)
    at = drain_at;
  r = fd_wait(conn->fd, events, at);
  if (r != UV_ETIMEDOUT)
    return r;
  if (at == drain_at) {
    /* As the drain's deadline in threading mode: what the handler
     * buffered still goes out after finish. */
    io->error = UV_ECANCELED;
    io->graceful = true;
    return UV_ECANCELED;
  }
  if (at == idle_at || d.closes)
    return end_timed_out(conn, events == POLLOUT && at != idle_at);
  return UV_ETIMEDOUT;
}


/* Sync: one recv into the queue. Returns 0 (bytes or EOF arrived) or an
 * error, which also becomes the connection's end. */
static int fd_fill(uvs_conn_t* conn, deadline_t deadline) {
  uvs__io_t* io = conn->io;
  /* The loop is blocked in this handler: its read buffer is free. */
  char* buf = conn->server->read_buf;
  size_t size = conn->server->config.read_buffer_size;

  for (;;) {
    ssize_t n = recv(conn->fd, buf, size, 0);
    int r;
    if (n >= 0)
      io->last_io_ns = uv_hrtime();
    if (n > 0) {
      uvs__stat_loop_add(&conn->server->stats.bytes_in, (uint64_t) n);
      /* Bytes taken from the socket and not kept would break the stream:
       * the failure ends it, as in threading mode. */
      r = uvs__buf_append(&io->in, buf, (size_t) n);
      if (r != 0)
        io->error = r;
      return r;
    }
    if (n == 0) {
      io->eof = true;
      return 0;
    }
    r = fd_again(conn, POLLIN, deadline);
    if (r != 0)
      return r;
  }
}


/* Waits until input is queued (1), the peer's EOF is next (0), or an
 * error. Threading: called with the lock held. */
static int wait_input(uvs_conn_t* conn, deadline_t deadline) {
  uvs__io_t* io = conn->io;
  for (;;) {
    int r;
    if (io->error == UV_ECANCELED)
      return UV_ECANCELED;
    if (io->in.len > 0)
      return 1;
    if (io->eof)
      return 0;
    if (io->error != 0)
      return io->error;
    if (!io->threaded) {
      r = fd_fill(conn, deadline);
    } else {
      r = cond_wait(io, deadline.at);
      if (r == UV_ETIMEDOUT && deadline.closes)
        r = end_timed_out(conn, false);
    }
    if (r != 0)
      return r;
  }
}


/* Threading, lock held: after the handler consumed input, ask the loop to
 * read again once the queue is below half the high mark. */
static void consumed(uvs_conn_t* conn) {
  uvs__io_t* io = conn->io;
  if (io->threaded && io->read_paused && !io->want_read &&
      io->in.len <= io->input_high / 2 && !io->orphaned) {
    io->want_read = true;
    uvs__mailbox_post(conn->server->mailbox, &conn->io->msg);
  }
}


static void lock(uvs__io_t* io) {
  if (io->threaded)
    uv_mutex_lock(&io->lock);
}


static void unlock(uvs__io_t* io) {
  if (io->threaded)
    uv_mutex_unlock(&io->lock);
}


/* ---- Reading --------------------------------------------------------- */

ssize_t uvs_recv(uvs_conn_t* conn, void* buf, size_t n) {
  uvs__io_t* io;
  ssize_t r;

  if (conn == NULL || (buf == NULL && n > 0))
    return UV_EINVAL;
  io = conn->io;
  if (io == NULL)
    return UV_ENOTSUP;
  if (n == 0)
    return 0;
  if (n > SSIZE_MAX)
    n = SSIZE_MAX;
  lock(io);
  r = wait_input(conn, read_deadline(io));
  if (r > 0) {
    r = (ssize_t) uvs__buf_read(&io->in, buf, n);
    consumed(conn);
  }
  unlock(io);
  return r;
}


ssize_t uvs_read_exact(uvs_conn_t* conn, void* buf, size_t n) {
  uvs__io_t* io;
  deadline_t deadline;
  size_t done = 0;
  ssize_t r = 0;

  if (conn == NULL || (buf == NULL && n > 0) || n > SSIZE_MAX)
    return UV_EINVAL;
  io = conn->io;
  if (io == NULL)
    return UV_ENOTSUP;
  deadline = read_deadline(io);
  lock(io);
  while (done < n) {
    r = wait_input(conn, deadline);
    if (r <= 0)
      break;
    done += uvs__buf_read(&io->in, (char*) buf + done, n - done);
    consumed(conn);
  }
  unlock(io);
  if (r < 0)
    return r;
  return (ssize_t) done;
}


ssize_t uvs_readline(uvs_conn_t* conn, char* buf, size_t size) {
  uvs__io_t* io;
  deadline_t deadline;
  bool newline = false;
  size_t done = 0;
  ssize_t r = 0;

  if (conn == NULL || buf == NULL || size < 2 || size - 1 > SSIZE_MAX)
    return UV_EINVAL;
  io = conn->io;
  if (io == NULL)
    return UV_ENOTSUP;
  deadline = read_deadline(io);
  lock(io);
  /* Bytes move into the caller's buffer as they arrive, so a long line
   * never grows the queue past its high mark. */
  while (!newline && done < size - 1) {
    r = wait_input(conn, deadline);
    if (r <= 0)
      break;
    done += uvs__buf_read_line(&io->in, buf + done, size - 1 - done, &newline);
    consumed(conn);
  }
  /* Full without a '\n': the line is too long only if more of it
   * follows; a last line of exactly size - 1 bytes ends at EOF. */
  if (r > 0 && !newline && done == size - 1)
    r = wait_input(conn, deadline);
  unlock(io);
  buf[done] = '\0';
  if (r < 0)
    return r;
  if (r > 0 && !newline && done == size - 1)
    return UV_ENOBUFS;
  return (ssize_t) done;
}


/* ---- Writing --------------------------------------------------------- */

/* The error a write sees once the connection has ended. */
static int write_error(const uvs__io_t* io) {
  return io->error == UV_ECANCELED ? UV_ECANCELED : io->error;
}


/* Sync: sends everything on the descriptor. */
static int fd_send(uvs_conn_t* conn, const char* data, size_t len) {
  uvs__io_t* io = conn->io;
  uint64_t call_at = deadline_of(io);

  if (io->error != 0)
    return write_error(io);
  while (len > 0) {
    ssize_t n = send(conn->fd, data, len, MSG_NOSIGNAL);
    deadline_t d;
    int r;
    if (n >= 0) {
      io->last_io_ns = uv_hrtime();
      uvs__stat_add(&conn->server->stats.bytes_out, (uint64_t) n);
      data += n;
      len -= (size_t) n;
      continue;
    }
    /* The write timeout counts from the last progress. */
    d.at = call_at;
    d.closes = false;
    if (io->write_timeout_ms > 0) {
      uint64_t at = after_ms(io->last_io_ns, io->write_timeout_ms);
      if (at <= d.at) {
        d.at = at;
        d.closes = true;
      }
    }
    r = fd_again(conn, POLLOUT, d);
    if (r != 0)
      return r;
  }
  return 0;
}


/* Threading, lock held: appends and asks the loop to send. */
static int queue_out(uvs_conn_t* conn, const char* data, size_t len) {
  uvs__io_t* io = conn->io;
  int r = uvs__buf_append(&io->out, data, len);
  if (r != 0)
    return r;
  if (!io->want_flush && !io->orphaned) {
    io->want_flush = true;
    uvs__mailbox_post(conn->server->mailbox, &conn->io->msg);
  }
  return 0;
}


/* A datagram request: adds to the reply, within max_packet_size. Other
 * threads may add too (uvs_conn_write) while the handler runs. */
static int reply_append(uvs_conn_t* conn, const char* data, size_t len) {
  uvs__io_t* io = conn->io;
  int r;
  lock(io);
  if (io->error != 0)
    r = write_error(io);
  else if (len > io->max_reply || io->out.len > io->max_reply - len)
    r = UV_EMSGSIZE;
  else
    r = uvs__buf_append(&io->out, data, len);
  unlock(io);
  return r;
}


/* Threading, lock held: sends what the socket takes now from this thread,
 * when nothing is queued or in flight ahead of these bytes and the loop
 * has not begun closing (it sets io->shut or io->fd_closed under this lock
 * before a shutdown or close, so the descriptor is ours while we hold
 * it). Returns the bytes sent; 0 leaves the bytes to the loop's queue,
 * also after an error, which the loop's write then meets and ends the
 * connection with, counted as every other. */
static size_t send_direct(uvs_conn_t* conn, const char* data, size_t len) {
  uvs__io_t* io = conn->io;
  ssize_t n;

  if (io->out.len > 0 || io->inflight > 0 || io->error != 0 || io->shut ||
      io->fd_closed || io->orphaned) {
    return 0;
  }
  do
    n = send(conn->fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n <= 0)
    return 0;
  io->sent_direct = true;
  uvs__stat_add(&conn->server->stats.bytes_out, (uint64_t) n);
  return (size_t) n;
}


/* Sends all of `data`, waiting for room above the high mark. */
static int send_all(uvs_conn_t* conn, const char* data, size_t len) {
  uvs__io_t* io = conn->io;
  uint64_t deadline;
  int r = 0;

  if (io->dgram)
    return reply_append(conn, data, len);
  if (!io->threaded)
    return fd_send(conn, data, len);
  deadline = deadline_of(io);
  uv_mutex_lock(&io->lock);
  while (len > 0) {
    size_t piece;
    if (io->error != 0) {
      r = write_error(io);
      break;
    }
    if (io->out.len + io->inflight >= io->output_high) {
      io->wait_room = true;
      r = cond_wait(io, deadline);
      io->wait_room = false;
      if (r != 0)
        break;
      continue;
    }
    piece = send_direct(conn, data, len);
    if (piece > 0) {
      data += piece;
      len -= piece;
      continue;
    }
    piece = len < UVS__WRITE_PIECE ? len : UVS__WRITE_PIECE;
    r = queue_out(conn, data, piece);
    if (r != 0)
      break;
    data += piece;
    len -= piece;
  }
  uv_mutex_unlock(&io->lock);
  return r;
}


/* Sends uvs_write's buffer. */
static int send_wbuf(uvs_conn_t* conn) {
  uvs__io_t* io = conn->io;
  int r;
  if (io->wlen == 0)
    return 0;
  r = send_all(conn, io->wbuf, io->wlen);
  io->wlen = 0;
  return r;
}


int uvs_sendall(uvs_conn_t* conn, const void* data, size_t len) {
  int r;
  if (conn == NULL || (data == NULL && len > 0))
    return UV_EINVAL;
  if (conn->io == NULL)
    return UV_ENOTSUP;
  r = send_wbuf(conn);
  if (r != 0)
    return r;
  return send_all(conn, data, len);
}


int uvs_write(uvs_conn_t* conn, const void* data, size_t len) {
  uvs__io_t* io;
  int r;

  if (conn == NULL || (data == NULL && len > 0))
    return UV_EINVAL;
  io = conn->io;
  if (io == NULL)
    return UV_ENOTSUP;
  /* A datagram's reply is a buffer already, checked against
   * max_packet_size on every write. */
  if (io->wbufsize == 0 || io->dgram)
    return uvs_sendall(conn, data, len);
  if (len == 0)
    return 0;
  if (io->wbuf == NULL) {
    io->wbuf = uvs__malloc(io->wbufsize);
    if (io->wbuf == NULL)
      return UV_ENOMEM;
  }
  /* As Python's BufferedWriter: fill the buffer; a write that does not
   * fit sends the buffer first, and one larger than it goes out
   * directly. */
  if (len > io->wbufsize - io->wlen) {
    r = send_wbuf(conn);
    if (r != 0)
      return r;
    if (len >= io->wbufsize)
      return send_all(conn, data, len);
  }
  memcpy(io->wbuf + io->wlen, data, len);
  io->wlen += len;
  return 0;
}


int uvs_flush(uvs_conn_t* conn) {
  uvs__io_t* io;
  uint64_t deadline;
  int r;

  if (conn == NULL)
    return UV_EINVAL;
  io = conn->io;
  if (io == NULL)
    return UV_ENOTSUP;
  r = send_wbuf(conn);
  if (r != 0 || !io->threaded || io->dgram)
    return r;
  /* Sync sends are done on return; threading waits for the loop. */
  deadline = deadline_of(io);
  uv_mutex_lock(&io->lock);
  while (r == 0 && io->out.len + io->inflight > 0) {
    if (io->error != 0) {
      r = write_error(io);
    } else {
      io->wait_room = true;
      r = cond_wait(io, deadline);
      io->wait_room = false;
    }
  }
  uv_mutex_unlock(&io->lock);
  return r;
}


static void final_flush(uvs_conn_t* conn) {
  uvs__io_t* io = conn->io;
  bool graceful;

  if (io->wlen == 0)
    return;
  /* A graceful close ended the request I/O, but what uvs_write accepted
   * still goes out before the close where the close waits for the
   * handler: a drain's deadline, and uvs_conn_close in sync mode. */
  lock(io);
  graceful = io->error == UV_ECANCELED && io->graceful && !io->want_abort;
  if (graceful)
    io->error = 0;
  unlock(io);
  send_wbuf(conn);
  if (graceful) {
    lock(io);
    if (io->error == 0)
      io->error = UV_ECANCELED;
    unlock(io);
  }
}


int uvs_conn_set_timeout(uvs_conn_t* conn, int64_t timeout_ms) {
  if (conn == NULL || conn->io == NULL || timeout_ms < -1)
    return UV_EINVAL;
  conn->io->timeout_ms = timeout_ms;
  return 0;
}


/* ---- From any thread ------------------------------------------------- */

/* Would `len` more bytes take this connection past max_write_queue? As in
 * event mode, the cap is for a peer that does not read: it applies once
 * the socket has refused bytes (`inflight`). Bytes the loop has not picked
 * up yet are only the loop being busy, so they count against a hard bound
 * of four times the cap instead, which keeps memory bounded anyway. */
static bool over_queue_cap(const uvs__io_t* io, size_t len) {
  size_t cap = io->max_queue;
  size_t pending = io->out.len + io->inflight;
  size_t hard = cap <= SIZE_MAX / 4 ? cap * 4 : SIZE_MAX;

  if (cap == 0)
    return false;
  if (pending > hard || len > hard - pending)
    return true;
  return io->inflight > 0 && (pending > cap || len > cap - pending);
}


int uvs__reqio_write_any(uvs_conn_t* conn, const void* data, size_t len) {
  uvs__io_t* io = conn->io;
  int r;

  if (io->dgram) {
    r = reply_append(conn, data, len);
    return r == UV_ECANCELED ? UV_EPIPE : r;
  }
  if (!io->threaded) {
    /* Sync: uvs_sendall, behind what uvs_write buffered. */
    r = send_wbuf(conn);
    if (r == 0)
      r = fd_send(conn, data, len);
    return r == UV_ECANCELED ? UV_EPIPE : r;
  }
  uv_mutex_lock(&io->lock);
  if (io->error != 0) {
    r = io->error == UV_ECANCELED ? UV_EPIPE : io->error;
  } else if (over_queue_cap(io, len)) {
    /* The peer is not reading: cut it off rather than hold memory. Its
     * handler's request I/O sees the server's close (UV_ECANCELED), not
     * this writer's UV_ENOBUFS, which would read as a line too long. */
    io->error = UV_ECANCELED;
    io->want_abort = true;
    io->over_cap = true;
    uv_cond_signal(&io->cond);
    if (!io->orphaned)
      uvs__mailbox_post(conn->server->mailbox, &conn->io->msg);
    r = UV_ENOBUFS;
  } else {
    r = len > 0 ? queue_out(conn, data, len) : 0;
  }
  uv_mutex_unlock(&io->lock);
  return r;
}


int uvs__reqio_close_any(uvs_conn_t* conn, bool abort) {
  uvs__io_t* io = conn->io;

  uv_mutex_lock(&io->lock);
  if (io->error == 0) {
    io->error = UV_ECANCELED;
    io->graceful = !abort;
  }
  if (abort)
    io->want_abort = true;
  else
    io->want_close = true;
  uv_cond_signal(&io->cond);
  /* A datagram request has nothing on the loop to close: its reply, or
   * none after an abort, leaves when the handler is done. */
  if (io->threaded && !io->orphaned && !io->dgram)
    uvs__mailbox_post(conn->server->mailbox, &conn->io->msg);
  uv_mutex_unlock(&io->lock);
  return 0;
}
