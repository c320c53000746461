/* SPDX-License-Identifier: MIT */
/*
 * Blocking requests: the handler lifecycle (setup, handle, finish) and the
 * request I/O a handler uses, socketserver's rfile and wfile.
 *
 * Both blocking modes share recv, read_exact and readline and the input
 * queue behind them (what a read took past what its caller wanted); they
 * differ only in how more input arrives and how output leaves:
 * - threading: the worker reads its own socket while its handler runs; the
 *   loop does not read it until the connection closes. A read receives
 *   straight into the caller's buffer. Without a deadline the worker
 *   waits in a blocking recv, without the lock, on the socket switched to
 *   blocking mode with a HOT_WAIT_MS receive timeout (can_block,
 *   recv_blocking): one system call per read, as a thread per connection
 *   makes. The loop switches the socket back before libuv reads or writes
 *   it, and keeps the descriptor open while the worker is in recv
 *   (io->in_recv). Otherwise recv with MSG_DONTWAIT, under the lock, and
 *   with nothing there a wait in poll(2), without the lock, on the socket
 *   and on the request's eventfd, which the loop writes to end the wait (a
 *   close, a timeout, a drain: io->error). Either wait quiet for
 *   HOT_WAIT_MS turns cold: the eventfd is closed and the loop reads once
 *   for the worker into io->in (wait_cold). Readline
 *   keeps bytes past its line in io->in too, so uvs holds at most one read
 *   or line buffer of input and TCP flow control does the rest. Output
 *   goes straight to the socket too (send with MSG_DONTWAIT, under the
 *   lock) when nothing is queued ahead of it; what the socket does not
 *   take is appended to the output queue and one mailbox message asks the
 *   loop to send it, and uvs_sendall waits while more than output_high
 *   bytes are unsent. Going through the loop cost two thread switches per
 *   read and per write, most of a small echo's time. The loop sets
 *   io->shut under the lock (and wakes the worker) before it shuts down or
 *   closes the descriptor, so no direct recv or send reaches a closed or
 *   reused descriptor or follows our FIN, and io->inflight keeps a direct
 *   send from overtaking queued bytes; writes from other threads (fan-out)
 *   always queue.
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
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

/* The most a writer appends at once while waiting for room, so output
 * stays within output_high plus this. */
#define UVS__WRITE_PIECE ((size_t) 65536)

#define NO_DEADLINE UINT64_MAX

/* A worker waiting for input this long without a byte hands the wait to
 * the loop (wait_cold). Also a blocking recv's receive timeout, so the
 * longest a graceful end of the connection, which does not shut the
 * socket's read side, takes to reach the worker (recv_blocking). */
#define HOT_WAIT_MS 100


/* ---- Lifecycle ------------------------------------------------------ */

/* Eventfds that hot-waiting workers hold (wait_socket), in the whole
 * process: at most a quarter of RLIMIT_NOFILE, so they never take many of
 * the descriptors accept needs. Past that, or when eventfd fails, a wait
 * is cold from the start. */
static _Atomic unsigned live_wake_fds;

static int make_wake_fd(void) {
  struct rlimit lim;
  unsigned budget = UINT_MAX;
  int fd;

  if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY &&
      lim.rlim_cur / 4 < UINT_MAX) {
    budget = (unsigned) (lim.rlim_cur / 4);
  }
  if (atomic_fetch_add(&live_wake_fds, 1) >= budget) {
    atomic_fetch_sub(&live_wake_fds, 1);
    return -1;
  }
  fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0)
    atomic_fetch_sub(&live_wake_fds, 1);
  return fd;
}


static void drop_wake_fd(uvs__io_t* io) {
  if (io->wake_fd < 0)
    return;
  close(io->wake_fd);
  io->wake_fd = -1;
  atomic_fetch_sub(&live_wake_fds, 1);
}


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
  io->wake_fd = -1;
  uvs__list_init(&io->job);
  uvs__buf_init(&io->in);
  uvs__buf_init(&io->out);
  io->threaded = server->config.mode == UVS_MODE_THREADING;
  io->setup = server->handler.setup;
  io->handle = server->handler.handle;
  io->finish = server->handler.finish;
  io->output_high = server->config.output_high_water;
  io->max_queue = server->config.max_write_queue;
  io->wbufsize = server->config.wbufsize;
  io->max_reply = server->config.max_packet_size;
  io->timeout_ms = server->config.request_timeout_ms;
  io->read_timeout_ms = server->config.read_timeout_ms;
  io->idle_tracked = io->threaded && server->config.idle_timeout_ms > 0;
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
  drop_wake_fd(io);
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
/* io->lock in threading mode; nothing otherwise. */
static void lock(uvs__io_t* io);
static void unlock(uvs__io_t* io);


int uvs__reqio_run(uvs_conn_t* conn) {
  uvs__io_t* io = conn->io;
  uvs_server_t* server = conn->server;
  bool stop = false;
  bool orphaned;
  bool cancelled;
  bool timed_out;
  int err = 0;
  int r;

  /* Under the lock: other threads read it (uvs__reqio_write_any). */
  lock(io);
  io->handler = uv_thread_self();
  io->handler_set = true;
  unlock(io);
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
  drop_wake_fd(io); /* no wait can follow: nothing writes it now */
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
  uvs__reqio_wake(io);
  uv_mutex_unlock(&io->lock);
}


/* ---- Threading: waking a waiting worker ------------------------------ */

/* Threading, lock held: the worker's own receive or send failed with
 * `err` (a reset): the connection ends with it, and the loop closes it
 * (io->failed). Returns `err`. */
static int socket_failed(uvs_conn_t* conn, int err) {
  uvs__io_t* io = conn->io;
  io->error = err;
  io->failed = err;
  uvs__mailbox_post(conn->server->mailbox, &conn->io->msg);
  return err;
}


/* Threading, lock held: the worker received or sent a byte, which is
 * progress the loop's idle timeout looks at (conn.c). Without one the
 * clock is not read: a read per receive and per send showed in profiles. */
static void note_direct_io(uvs__io_t* io) {
  if (io->idle_tracked)
    io->direct_ms = uv_hrtime() / 1000000;
}


/* Threading, lock held: the descriptor is still the worker's to receive
 * from, send on or wait on. The loop sets io->fd_closed or io->shut under
 * the lock before it reads it for the FIN, shuts it down or closes it,
 * and io->orphaned after. */
static bool socket_ours(const uvs__io_t* io) {
  return !io->shut && !io->fd_closed && !io->orphaned;
}

/* A request's worker makes one eventfd when it starts a hot wait for input
 * and closes it when the wait turns cold or the request ends
 * (uvs__reqio_run): a descriptor per request that received or waited in
 * the last HOT_WAIT_MS, within the budget of make_wake_fd; none for an
 * idle connection or an idle worker. */
void uvs__reqio_wake(uvs__io_t* io) {
  uv_cond_broadcast(&io->cond);
  if (io->polling && io->wake_fd >= 0) {
    uint64_t one = 1;
    ssize_t n;
    /* EAGAIN: the counter is full, so the thread wakes anyway. */
    do
      n = write(io->wake_fd, &one, sizeof(one));
    while (n < 0 && errno == EINTR);
  }
}


void uvs__reqio_nonblocking(uvs__io_t* io) {
  int on = 1;
  if (!io->blocking)
    return;
  /* Cannot fail on an open socket, which this one is until the loop
   * closes it after set_closing. */
  (void) ioctl(io->conn->fd, FIONBIO, &on);
  io->blocking = false;
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


/* Threading, lock held: a cold wait for input. The loop reads the socket
 * once for the worker (conn.c: io->loop_reads) and wakes it on the
 * condition (go_cold asks it to). Returns 0 to look again, or the request
 * timeout's error. */
static void go_cold(uvs_conn_t* conn) {
  uvs__io_t* io = conn->io;
  drop_wake_fd(io);
  if (!io->loop_reads) {
    io->loop_reads = true;
    uvs__mailbox_post(conn->server->mailbox, &conn->io->msg);
  }
}

static int wait_cold(uvs_conn_t* conn, deadline_t d) {
  int r;

  go_cold(conn);
  r = cond_wait(conn->io, d.at);
  if (r == UV_ETIMEDOUT && d.closes)
    return end_timed_out(conn, false);
  return r;
}


/* Threading, lock held: the worker waits for its socket, hot or cold.
 * Hot: poll(2), without the lock, on the socket and the request's eventfd,
 * which the loop writes to end the wait (uvs__reqio_wake). A wait longer
 * than HOT_WAIT_MS, or one that finds no eventfd in the budget, turns
 * cold: the eventfd is closed and the worker waits on the condition while
 * the loop reads the socket once for it (conn.c: io->loop_reads), as an
 * idle connection costs no descriptor beyond its socket. Returns 0 to
 * look again, or the request timeout's error. */
static int wait_socket(uvs_conn_t* conn, deadline_t d) {
  uvs__io_t* io = conn->io;
  struct pollfd pfd[2];
  uint64_t now = uv_hrtime();
  int ms = HOT_WAIT_MS;
  int r;

  if (d.at != NO_DEADLINE) {
    uint64_t left;
    if (now >= d.at)
      return d.closes ? end_timed_out(conn, false) : UV_ETIMEDOUT;
    left = (d.at - now + 999999) / 1000000; /* rounded up */
    if (left < (uint64_t) ms)
      ms = (int) left;
  }
  if (!io->loop_reads && io->wake_fd < 0)
    io->wake_fd = make_wake_fd();
  if (io->loop_reads || io->wake_fd < 0)
    return wait_cold(conn, d);
  pfd[0].fd = conn->fd;
  pfd[0].events = POLLIN;
  pfd[0].revents = 0;
  pfd[1].fd = io->wake_fd;
  pfd[1].events = POLLIN;
  pfd[1].revents = 0;
  io->polling = true;
  uv_mutex_unlock(&io->lock);
  /* A close by the loop now (which may let the descriptor's number be
   * reused) comes with a wake-up, so this poll returns, and nothing is
   * received before the lock is held again and io->shut checked. */
  r = poll(pfd, 2, ms);
  if (r > 0 && (pfd[1].revents & POLLIN)) {
    uint64_t count;
    ssize_t ignored = read(pfd[1].fd, &count, sizeof(count));
    (void) ignored;
  }
  uv_mutex_lock(&io->lock);
  io->polling = false;
  /* Quiet for a while, no deadline reached, and (the lock was let go)
   * still ours to wait on: turn cold. */
  if (r == 0 && ms == HOT_WAIT_MS && io->error == 0 && socket_ours(io))
    go_cold(conn);
  return 0;
}


/* Threading, lock held: whether the worker may wait for input in a
 * blocking recv, as a thread per connection does: one system call, where
 * poll and then recv are two. Only without a deadline, which poll keeps.
 * The socket is switched to blocking mode here, with a receive timeout of
 * HOT_WAIT_MS (SO_RCVTIMEO, which stays set), only while the loop has no
 * libuv read or write of its own on it, which must never block; the loop
 * switches it back (uvs__reqio_nonblocking, io->blocking false) before it
 * starts one. Sends stay non-blocking (MSG_DONTWAIT). */
static bool can_block(uvs_conn_t* conn, deadline_t d) {
  uvs__io_t* io = conn->io;
  int off = 0;

  if (d.at != NO_DEADLINE || io->loop_reads)
    return false;
  if (io->blocking)
    return true;
  if (io->inflight > 0 || io->out.len > 0 || io->want_flush)
    return false;
  if (!io->rcvtimeo_set) {
    struct timeval tv;
    tv.tv_sec = HOT_WAIT_MS / 1000;
    tv.tv_usec = (HOT_WAIT_MS % 1000) * 1000;
    if (setsockopt(conn->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0)
      return false;
    io->rcvtimeo_set = true;
  }
  if (ioctl(conn->fd, FIONBIO, &off) != 0)
    return false;
  io->blocking = true;
  return true;
}


/* Threading, lock held (let go during the call): one blocking recv, which
 * returns with bytes, the peer's EOF, an error (EINTR for a signal), or
 * after HOT_WAIT_MS with EAGAIN; or at once, with 0, when the loop closes
 * the connection now (uvs__conn_close_now shuts the read side). A
 * graceful end reaches it by the timeout. The loop keeps the descriptor
 * open meanwhile: it closes only once in_recv is clear, when this posts
 * (close_wait), so the recv never reaches a descriptor number that a new
 * connection has taken. */
static ssize_t recv_blocking(uvs_conn_t* conn, char* dst, size_t n, int flags) {
  uvs__io_t* io = conn->io;
  ssize_t got;
  int err;

  io->in_recv = true;
  uv_mutex_unlock(&io->lock);
  got = recv(conn->fd, dst, n, flags);
  err = errno;
  uv_mutex_lock(&io->lock);
  io->in_recv = false;
  if (io->close_wait) {
    io->close_wait = false;
    uvs__mailbox_post(conn->server->mailbox, &conn->io->msg);
  }
  errno = err;
  return got;
}


/* Threading, lock held: receives up to `n` bytes (n > 0) into `dst` (with
 * MSG_PEEK, leaves them in the socket), waiting while there are none in a
 * blocking recv (can_block) or else with wait_socket. Bytes the loop read for a
 * cold wait land in io->in: then it returns 0 with `*queued` set, and the
 * caller reads the queue (they come before anything still in the socket).
 * Otherwise it returns the count, 0 at the peer's EOF (io->eof), or an error:
 * the connection's end, the request timeout's UV_ETIMEDOUT, or a receive
 * error (a reset), which ends the connection and asks the loop to close
 * it. Without a blocking recv, after a receive that emptied the socket
 * (fewer bytes than asked) the next one waits first: in a conversation the
 * next bytes are rarely there yet, and a recv that fails with EAGAIN is a
 * system call for nothing. */
static ssize_t thread_recv(uvs_conn_t* conn,
                           char* dst,
                           size_t n,
                           int flags,
                           deadline_t d,
                           bool* queued) {
  uvs__io_t* io = conn->io;
  /* Past the deadline a read still takes what is there. */
  bool wait_first = io->drained && !(flags & MSG_PEEK) &&
                    (d.at == NO_DEADLINE || uv_hrtime() < d.at);

  *queued = false;
  for (;;) {
    ssize_t got;
    bool block;
    int r;

    if (io->error == UV_ECANCELED)
      return UV_ECANCELED;
    if (io->in.len > 0) {
      *queued = true;
      return 0;
    }
    if (io->eof)
      return 0;
    if (io->error != 0)
      return io->error;
    /* The loop began closing (it sets io->error first wherever a handler
     * may still run). */
    if (!socket_ours(io)) {
      io->error = UV_ECANCELED;
      return UV_ECANCELED;
    }
    /* While the loop reads for us, only it may take bytes. */
    block = can_block(conn, d);
    if (block || (!wait_first && !io->loop_reads)) {
      if (block) {
        got = recv_blocking(conn, dst, n, flags);
        /* The connection ended meanwhile, or a signal came: the checks
         * above say whether to receive again. */
        if (io->error != 0 || !socket_ours(io) || (got < 0 && errno == EINTR))
          continue;
        /* Quiet for HOT_WAIT_MS (the loop did not make the socket
         * non-blocking): the wait turns cold at once. */
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) &&
            io->blocking) {
          r = wait_cold(conn, d);
          if (r != 0)
            return r;
          continue;
        }
      } else {
        do
          got = recv(conn->fd, dst, n, flags | MSG_DONTWAIT);
        while (got < 0 && errno == EINTR);
      }
      if (got > 0) {
        if (!(flags & MSG_PEEK)) {
          io->drained = (size_t) got < n;
          note_direct_io(io);
          uvs__stat_add(&conn->server->stats.workers_bytes_in, (uint64_t) got);
        }
        return got;
      }
      if (got == 0) {
        io->eof = true;
        return 0;
      }
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        return socket_failed(conn, UVS__ERR(errno));
    }
    wait_first = false;
    r = wait_socket(conn, d);
    if (r != 0)
      return r;
  }
}


/* Waits until input is queued or waits in the socket (1), the peer's EOF
 * is next (0), or an error. Threading: called with the lock held. */
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
    if (io->threaded) {
      bool queued;
      char c;
      /* A datagram request's input is all queued, EOF included. */
      r = (int) thread_recv(conn, &c, 1, MSG_PEEK, deadline, &queued);
      if (queued)
        continue;
      return r;
    }
    r = fd_fill(conn, deadline);
    if (r != 0)
      return r;
  }
}


/* Threading, lock held: the next bytes come from the socket straight into
 * the caller's buffer (thread_recv), none being queued ahead of them. */
static bool receives_direct(const uvs__io_t* io) {
  return io->threaded && io->in.len == 0 && io->error != UV_ECANCELED &&
         !io->eof;
}


/* Moves up to `n` (> 0) bytes of input into `dst`, waiting for some.
 * Queued bytes go first; with none queued a threading worker receives
 * straight into `dst`. Returns the count, 0 at EOF, or an error.
 * Threading: lock held. */
static ssize_t take_input(uvs_conn_t* conn,
                          char* dst,
                          size_t n,
                          deadline_t deadline) {
  uvs__io_t* io = conn->io;
  ssize_t r;

  if (receives_direct(io)) {
    bool queued;
    r = thread_recv(conn, dst, n, 0, deadline, &queued);
    if (!queued)
      return r;
  }
  r = wait_input(conn, deadline);
  if (r > 0)
    r = (ssize_t) uvs__buf_read(&io->in, dst, n);
  return r;
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
  r = take_input(conn, buf, n, read_deadline(io));
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
    r = take_input(conn, (char*) buf + done, n - done, deadline);
    if (r <= 0)
      break;
    done += (size_t) r;
  }
  unlock(io);
  if (r < 0)
    return r;
  return (ssize_t) done;
}


/* Threading, lock held: `got` bytes were received at `p` for a line. Keeps
 * them up to the first '\n' (setting `*newline`) and queues the rest for
 * the next read. Returns the bytes kept, or an error that ends the
 * connection (bytes that could not be kept would break the stream). */
static ssize_t line_end(uvs_conn_t* conn, char* p, size_t got, bool* newline) {
  uvs__io_t* io = conn->io;
  char* nl = memchr(p, '\n', got);
  size_t line;
  int r;

  if (nl == NULL)
    return (ssize_t) got;
  *newline = true;
  line = (size_t) (nl - p) + 1;
  r = uvs__buf_append(&io->in, nl + 1, got - line);
  if (r != 0) {
    io->error = r;
    io->want_abort = true;
    if (!io->orphaned)
      uvs__mailbox_post(conn->server->mailbox, &conn->io->msg);
    return r;
  }
  return (ssize_t) line;
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
   * never grows the queue. */
  while (!newline && done < size - 1) {
    if (receives_direct(io)) {
      bool queued;
      r = thread_recv(conn, buf + done, size - 1 - done, 0, deadline, &queued);
      if (queued)
        continue; /* a cold wait's read: the queue's path below */
      if (r <= 0)
        break;
      r = line_end(conn, buf + done, (size_t) r, &newline);
      if (r < 0)
        break;
      done += (size_t) r;
      continue;
    }
    r = wait_input(conn, deadline);
    if (r <= 0)
      break;
    done += uvs__buf_read_line(&io->in, buf + done, size - 1 - done, &newline);
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
 * it). At most output_high bytes go at once, so the loop never waits long
 * for the lock. Returns the bytes sent (0: leave them to the loop's
 * queue), or a send error (a reset), which ends the connection as a
 * failed receive does. */
static ssize_t send_direct(uvs_conn_t* conn, const char* data, size_t len) {
  uvs__io_t* io = conn->io;
  ssize_t n;

  if (io->out.len > 0 || io->inflight > 0 || io->error != 0 ||
      !socket_ours(io)) {
    return 0;
  }
  if (len > io->output_high)
    len = io->output_high;
  do
    n = send(conn->fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
    return 0;
  /* The socket reports an error once: keep it for the handler and the
   * loop, rather than let the loop's write meet a bare EPIPE. */
  if (n < 0)
    return socket_failed(conn, UVS__ERR(errno));
  note_direct_io(io);
  uvs__stat_add(&conn->server->stats.workers_bytes_out, (uint64_t) n);
  return n;
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
    ssize_t sent;
    size_t piece;
    if (io->error != 0) {
      r = write_error(io);
      break;
    }
    if (io->out.len + io->inflight >= io->output_high) {
      io->wait_room++;
      r = cond_wait(io, deadline);
      io->wait_room--;
      if (r != 0)
        break;
      continue;
    }
    sent = send_direct(conn, data, len);
    if (sent < 0) {
      r = (int) sent;
      break;
    }
    if (sent > 0) {
      data += sent;
      len -= (size_t) sent;
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
      io->wait_room++;
      r = cond_wait(io, deadline);
      io->wait_room--;
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


/* Threading, lock held: is the caller the request's handler (the owner of
 * wbuf)? */
static bool on_handler_thread(const uvs__io_t* io) {
  uv_thread_t self;
  if (!io->handler_set)
    return false;
  self = uv_thread_self();
  return uv_thread_equal(&self, &io->handler) != 0;
}


int uvs__reqio_write_any(uvs_conn_t* conn, const void* data, size_t len) {
  uvs__io_t* io = conn->io;
  size_t moved = 0;
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
  /* From the handler: behind what uvs_write buffered, as in sync mode,
   * without waiting (the buffer joins the queue first, and counts against
   * the cap with the new bytes). From another thread the two are not
   * ordered, and the buffer is not its to read. */
  if (len > 0 && on_handler_thread(io))
    moved = io->wlen;
  if (io->error != 0) {
    r = io->error == UV_ECANCELED ? UV_EPIPE : io->error;
  } else if (len > SIZE_MAX - moved || over_queue_cap(io, len + moved)) {
    /* The peer is not reading: cut it off rather than hold memory. Its
     * handler's request I/O sees the server's close (UV_ECANCELED), not
     * this writer's UV_ENOBUFS, which would read as a line too long. */
    io->error = UV_ECANCELED;
    io->want_abort = true;
    io->over_cap = true;
    uvs__reqio_wake(io);
    if (!io->orphaned)
      uvs__mailbox_post(conn->server->mailbox, &conn->io->msg);
    r = UV_ENOBUFS;
  } else {
    r = 0;
    if (moved > 0) {
      r = queue_out(conn, io->wbuf, moved);
      if (r == 0)
        io->wlen = 0;
    }
    if (r == 0 && len > 0)
      r = queue_out(conn, data, len);
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
  uvs__reqio_wake(io);
  /* A datagram request has nothing on the loop to close: its reply, or
   * none after an abort, leaves when the handler is done. */
  if (io->threaded && !io->orphaned && !io->dgram)
    uvs__mailbox_post(conn->server->mailbox, &conn->io->msg);
  uv_mutex_unlock(&io->lock);
  return 0;
}
