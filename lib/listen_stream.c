/* SPDX-License-Identifier: MIT */
/*
 * The stream listener, for TCP and Unix streams. uvs creates the listening
 * socket itself (sock.c), so it can set SO_REUSEPORT and IPV6_V6ONLY on any
 * libuv and handle stale Unix socket files, watches it with a uv_poll_t,
 * and calls accept4 in bounded batches. That gives what uv_listen lacks:
 * accepting can pause and resume (stop, handle_request's one connection, the
 * EMFILE back-off), and verify_request runs before anything is allocated for a
 * connection. Each accepted descriptor is adopted by conn.c with uv_tcp_open or
 * uv_pipe_open.
 *
 * Invariant: the poll handle is started exactly when the user wants
 * accepting, the socket listens, no back-off or one-shot limit holds, and
 * the server is not closing (uvs__listen_stream_update). Accept errors never
 * spin the loop: transient ones (the peer gave up) are skipped; running out
 * of descriptors or memory pauses accepting for config.accept_retry_ms and
 * is reported once per burst.
 *
 * Admission control comes before any allocation: past max_connections a
 * connection is closed at once (or, with max_connections_pause, accepting
 * pauses), and verify_request runs next. A refused client sees our FIN at
 * once; its unread input is drained first, so the close does not turn
 * into a reset that would hide the FIN.
 */
#include "internal.h"

#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_readable(uv_poll_t* handle, int status, int events);
static void on_poll_closed(uv_handle_t* handle);


int uvs__listen_stream_activate(uvs_server_t* server) {
  if (server->fd < 0 || !server->bound)
    return UV_EINVAL;
  if (server->listening)
    return UV_EALREADY;
  if (listen(server->fd, server->config.request_queue_size) != 0)
    return UVS__ERR(errno);
  server->listening = true;
  return 0;
}


int uvs__listen_stream_update(uvs_server_t* server) {
  bool want =
      server->accepting && server->listening && server->poll_inited &&
      !server->closing && !server->accept_backoff &&
      !(server->one_shot && server->one_shot_taken) &&
      !uvs__fork_full(server) &&
      !(server->config.max_connections_pause && uvs__server_at_limit(server));
  int r;

  if (want == server->poll_active)
    return 0;
  if (want) {
    r = uv_poll_start(&server->poll, UV_READABLE, on_readable);
    if (r != 0)
      return r;
  } else {
    uv_poll_stop(&server->poll);
  }
  server->poll_active = want;
  return 0;
}


void uvs__listen_stream_close(uvs_server_t* server) {
  if (server->poll_inited) {
    uv_poll_stop(&server->poll);
    server->poll_active = false;
    uvs__server_closing_handle(server);
    uv_close((uv_handle_t*) &server->poll, on_poll_closed);
    server->poll_inited = false;
  }
  /* The poll handle no longer watches the descriptor: closing it now is
   * safe, and frees the port at once. */
  if (server->fd >= 0) {
    close(server->fd);
    server->fd = -1;
  }
  server->listening = false;
}


static void on_poll_closed(uv_handle_t* handle) {
  uvs_server_t* server = container_of(handle, uvs_server_t, poll);
  uvs__server_handle_closed(server);
}


/* Errors that mean "this one connection went away before we took it": skip
 * it and go on accepting. */
static bool is_transient(int err) {
  switch (err) {
  case EINTR:
  case ECONNABORTED:
  case EPROTO:
  case EPERM: /* a firewall rule refused it */
  case ENETDOWN:
  case ENOPROTOOPT:
  case EHOSTDOWN:
  case ENONET:
  case EHOSTUNREACH:
  case EOPNOTSUPP:
  case ENETUNREACH:
    return true;
  default:
    return false;
  }
}


/* Refuses an accepted connection: the client sees EOF at once
 * (bpo-26309). Input it sent already is read and dropped (a few reads at
 * most), since closing over unread input sends a reset instead. */
static void refuse(uvs_server_t* server, int fd, const uvs_address_t* peer) {
  int i;

  uvs__server_shutdown_request(server, fd, peer);
  shutdown(fd, SHUT_WR);
  for (i = 0; i < 4; i++) {
    if (recv(fd, server->read_buf, server->config.read_buffer_size, 0) <= 0)
      break;
  }
  close(fd);
  if (server->one_shot)
    server->one_shot_done = true;
}


static void take_connection(uvs_server_t* server,
                            int fd,
                            const struct sockaddr* sa,
                            socklen_t len) {
  uvs_address_t peer;
  uint64_t id = 0;
  int r;

  uvs__addr_peer(&peer, server->address.transport, sa, len);
  uvs__stat_add(&server->stats.accepted, 1);
  if (server->one_shot) {
    server->one_shot_taken = true;
    uvs__listen_stream_update(server);
  }

  /* The limit and verify_request before any allocation: a flood of
   * refused clients costs no memory. */
  if (uvs__server_at_limit(server) && !server->closing) {
    uvs__stat_add(&server->stats.rejected_limit, 1);
    refuse(server, fd, &peer);
    return;
  }
  if (!uvs__server_verify_request(server, &peer) || server->closing) {
    refuse(server, fd, &peer);
    return;
  }

  if (server->config.mode == UVS_MODE_FORKING) {
    r = uvs__fork_request(server, fd, &peer, NULL, 0);
    if (r != 0) {
      /* Python's process_request failing: handle_error, then
       * shutdown_request. */
      uvs__server_error(server, NULL, &peer, r);
      uvs__server_shutdown_request(server, fd, &peer);
      close(fd);
      if (server->one_shot)
        server->one_shot_done = true;
    }
    uvs__listen_stream_update(server); /* pauses at max_children */
    return;
  }
  r = uvs__conn_accept(server, fd, &peer, &id);
  if (r != 0) {
    uvs__stat_add(&server->stats.accept_errors, 1);
    uvs__server_error(server, NULL, &peer, r);
    if (server->one_shot)
      server->one_shot_done = true;
    return;
  }
  if (server->one_shot)
    server->one_shot_id = id;
  /* At the limit with max_connections_pause: stop until one closes. */
  if (server->config.max_connections_pause)
    uvs__listen_stream_update(server);
}


/* Accepts up to `max` connections: while the listener is watched, or
 * regardless for a drain (which then closes the listener). */
static void accept_some(uvs_server_t* server, unsigned max, bool drain) {
  bool sync = server->config.mode == UVS_MODE_SYNC;
  unsigned i;

  for (i = 0; i < max; i++) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int fd;
    /* A callback may have stopped accepting, or closed the server. */
    if (drain ? server->fd < 0 || server->closing : !server->poll_active)
      break;
    /* A sync-mode request blocks the loop: a shutdown asked meanwhile
     * must stop the server before the next client is taken. */
    if (sync && uvs__server_stop_requested(server))
      break;
    fd = accept4(server->fd,
                 (struct sockaddr*) &ss,
                 &len,
                 SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK)
        break;
      if (is_transient(err))
        continue;
      /* EMFILE, ENFILE, ENOBUFS, ENOMEM and anything unknown: the
       * connection stays in the backlog; retrying now would spin. */
      uvs__server_listen_error(server, UVS__ERR(err));
      break;
    }
    server->accept_error_logged = false;
    take_connection(server, fd, (struct sockaddr*) &ss, len);
    /* Sync mode serves one request per wake-up, so the loop sees signals,
     * timers and shutdowns between requests. */
    if (sync && !drain)
      break;
  }
}


static void on_readable(uv_poll_t* handle, int status, int events) {
  uvs_server_t* server = container_of(handle, uvs_server_t, poll);

  if (status < 0) {
    uvs__server_listen_error(server, status);
    return;
  }
  accept_some(server, server->config.accept_batch, false);
}


void uvs__listen_stream_take_backlog(uvs_server_t* server) {
  /* The backlog holds at most request_queue_size connections (the kernel
   * may allow one more); past the limit they are refused, not served. */
  unsigned max = (unsigned) server->config.request_queue_size + 1;
  /* Sync mode would serve each of them to its end inside this call. */
  if (server->fd < 0 || !server->listening || server->one_shot ||
      server->config.mode == UVS_MODE_SYNC) {
    return;
  }
  accept_some(server, max, true);
}
