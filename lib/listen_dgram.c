/* SPDX-License-Identifier: MIT */
/*
 * The datagram listener: socketserver's UDPServer and UnixDatagramServer.
 * Each datagram is a request. uvs creates and binds the socket itself
 * (sock.c); UDP is then watched by a uv_udp_t reading with recvmmsg
 * (UV_UDP_RECVMMSG), and a Unix datagram socket, for which libuv has no
 * handle, by a uv_poll_t with non-blocking recvfrom.
 *
 * Receiving: a datagram longer than max_packet_size is never handed on
 * truncated. UDP reads into 64 KiB slots, which hold any UDP payload, and
 * recvfrom(MSG_TRUNC) returns a Unix datagram's real length, so an over-size
 * one is seen whole; it is dropped, counted, and reported to handle_error
 * as UV_EMSGSIZE. verify_request runs before anything is allocated. In
 * event mode on_datagram gets the bytes; in the blocking modes conn.c makes
 * a request of them. Stopping (uvs_server_stop, handle_request's one
 * datagram, a sync-mode shutdown) takes effect after the datagrams libuv
 * has already read in one recvmmsg batch, which are served, never lost;
 * where only one may be taken (sync mode, handle_request) the batch is one
 * datagram.
 *
 * Sending: uv_udp_try_send, then libuv's queue. Unix datagram replies use
 * sendto; when the receiver's queue is full the kernel refuses them
 * (EAGAIN), and poll cannot say when it has room (an unconnected socket
 * polls writable regardless), so refused replies wait in a queue retried
 * on a backing-off timer. A reply keeps its place behind earlier ones to
 * the same receiver, a full receiver does not stop replies to others from
 * being tried, and one still refused after UVS__DGRAM_RETRY_MAX_MS is
 * dropped, as the network would. (Linux charges unread replies to the
 * server socket's send buffer, so receivers that read nothing can still
 * fill it for everyone: the README says so.) Both queues are bounded by
 * output_high_water bytes. A reply to a Unix client that has no bound name, or
 * has gone, is dropped without an error (Python logs a traceback for each:
 * gh-152024).
 */
#include "internal.h"

#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* libuv's recvmmsg slot per datagram, and the slots per batch. */
#define UDP_SLOT  ((size_t) 65536)
#define UDP_BATCH 8
/* Unix datagrams read per wake-up at most. */
#define UNIXGRAM_BATCH 32
/* The retry timer's first and longest interval. */
#define RETRY_MIN_MS 1
#define RETRY_MAX_MS 64
/* Receivers one retry pass can remember as full. */
#define BLOCKED_MAX 16

/* A Unix datagram reply waiting for its receiver. */
typedef struct {
  uvs__list_t node;
  uint64_t since; /* loop time it was first refused */
  uvs_address_t peer;
  size_t len;
  char data[];
} pending_t;

/* A UDP datagram in libuv's send queue, with its bytes. */
typedef struct {
  uv_udp_send_t req;
  uvs_server_t* server;
  uvs_address_t peer;
  size_t len;
  char data[];
} udp_send_t;

static void on_udp_alloc(uv_handle_t* handle, size_t size, uv_buf_t* buf);
static void on_udp_recv(uv_udp_t* handle,
                        ssize_t nread,
                        const uv_buf_t* buf,
                        const struct sockaddr* addr,
                        unsigned flags);
static void on_unixgram_readable(uv_poll_t* handle, int status, int events);
static void on_udp_sent(uv_udp_send_t* req, int status);
static void on_retry(uv_timer_t* handle);
static void on_sync_resume(uv_timer_t* handle);
static void on_handle_closed(uv_handle_t* handle);


static bool is_udp(const uvs_server_t* server) {
  return server->address.transport == UVS_TRANSPORT_UDP;
}


/* The buffer datagrams are read into: recvmmsg slots for UDP, one
 * datagram for unixgram. */
size_t uvs__listen_dgram_buffer_size(const uvs_config_t* config,
                                     uvs_transport_t transport) {
  if (transport == UVS_TRANSPORT_UDP)
    return UDP_SLOT * UDP_BATCH;
  return config->max_packet_size;
}


int uvs__listen_dgram_init(uvs_server_t* server) {
  int r;

  uvs__list_init(&server->dgram_queue);
  if (!is_udp(server)) {
    r = uv_poll_init_socket(server->loop, &server->poll, server->fd);
    if (r != 0)
      return r;
    uv_handle_set_data((uv_handle_t*) &server->poll, server);
    server->poll_inited = true;
    return 0;
  }
  r = uv_udp_init_ex(server->loop, &server->udp, AF_UNSPEC | UV_UDP_RECVMMSG);
  if (r != 0)
    return r;
  uv_handle_set_data((uv_handle_t*) &server->udp, server);
  server->udp_inited = true;
  r = uv_udp_open(&server->udp, server->fd);
  if (r != 0)
    return r;
  server->udp_opened = true;
  /* libuv sets SO_REUSEADDR on a socket it adopts: clear it (sock.c). */
  return uvs__sock_set_reuse(server);
}


int uvs__listen_dgram_update(uvs_server_t* server) {
  /* A flood of datagrams must not become a flood of queued requests:
   * past the limit they wait in the socket's buffer (and the kernel drops
   * what does not fit, as for any slow UDP reader). */
  bool want = server->accepting && server->listening && !server->closing &&
              !server->draining && !server->accept_backoff &&
              !(server->one_shot && server->one_shot_taken) &&
              server->nconns < UVS__DGRAM_REQUESTS_MAX &&
              !uvs__fork_full(server) && !server->sync_paused &&
              (server->udp_opened || server->poll_inited);
  int r;

  /* A sync-mode handler blocks the loop: a shutdown it or another thread
   * asked for stops receiving before the next datagram. */
  if (want && server->config.mode == UVS_MODE_SYNC &&
      uvs__server_stop_requested(server)) {
    want = false;
  }
  if (want == server->poll_active)
    return 0;
  /* Datagrams of the current batch are read already: stop after them. */
  if (!want && server->in_batch)
    return 0;
  if (want) {
    if (is_udp(server))
      r = uv_udp_recv_start(&server->udp, on_udp_alloc, on_udp_recv);
    else
      r = uv_poll_start(&server->poll, UV_READABLE, on_unixgram_readable);
    if (r != 0)
      return r;
  } else if (is_udp(server)) {
    uv_udp_recv_stop(&server->udp);
  } else {
    uv_poll_stop(&server->poll);
  }
  server->poll_active = want;
  return 0;
}


static void drop_pending(uvs_server_t* server, pending_t* p) {
  uvs__list_remove(&p->node);
  server->dgram_queue_len--;
  server->dgram_queue_bytes -= p->len;
  uvs__free(p);
  uvs__drain_check(server);
}


void uvs__listen_dgram_close(uvs_server_t* server) {
  server->in_batch = false;
  server->poll_active = false;
  server->listening = false;
  if (server->udp_inited) {
    /* Stopping first also ends a recvmmsg batch in progress. */
    uv_udp_recv_stop(&server->udp);
    uvs__server_closing_handle(server);
    uv_close((uv_handle_t*) &server->udp, on_handle_closed);
    server->udp_inited = false;
    if (server->udp_opened) {
      server->udp_opened = false;
      server->fd = -1; /* closed by libuv with the handle */
    }
  }
  if (server->poll_inited) {
    uv_poll_stop(&server->poll);
    uvs__server_closing_handle(server);
    uv_close((uv_handle_t*) &server->poll, on_handle_closed);
    server->poll_inited = false;
  }
  while (!uvs__list_empty(&server->dgram_queue)) {
    drop_pending(server,
                 container_of(server->dgram_queue.next, pending_t, node));
  }
  if (server->fd >= 0) {
    close(server->fd);
    server->fd = -1;
  }
}


static void on_handle_closed(uv_handle_t* handle) {
  uvs__server_handle_closed(uv_handle_get_data(handle));
}


/* ---- Receiving ------------------------------------------------------ */

/* A receive error that is not about one datagram (it ends any batch):
 * the listener's back-off, as for accept errors (server.c). */
static void recv_error(uvs_server_t* server, int err) {
  server->in_batch = false;
  uvs__server_listen_error(server, err);
}


/* One datagram, whole (`oversize`: longer than max_packet_size, or cut by
 * the kernel). */
static void take_datagram(uvs_server_t* server,
                          const char* data,
                          size_t len,
                          bool oversize,
                          const struct sockaddr* sa,
                          socklen_t salen) {
  uvs_transport_t transport = server->address.transport;
  uvs_address_t peer;
  int r;

  if (server->closing)
    return;
  server->accept_error_logged = false;
  uvs__addr_peer(&peer, transport, sa, salen);
  uvs__stat_add(&server->stats.accepted, 1);
  uvs__stat_loop_add(&server->stats.bytes_in, len);
  if (oversize || len > server->config.max_packet_size) {
    uvs__stat_add(&server->stats.datagrams_oversize, 1);
    uvs__server_error(server, NULL, &peer, UV_EMSGSIZE);
    return;
  }
  if (server->one_shot) {
    server->one_shot_taken = true;
    uvs__listen_dgram_update(server);
  }

  if (!uvs__server_verify_request(server, &peer) || server->closing) {
    uvs__server_shutdown_request(server, server->fd, &peer);
    if (server->one_shot)
      server->one_shot_done = true;
    return;
  }

  if (server->config.mode == UVS_MODE_EVENT) {
    if (server->handler.on_datagram != NULL) {
      uvs__callback_depth++;
      server->handler.on_datagram(server, data, len, &peer);
      uvs__callback_depth--;
    }
    if (server->one_shot)
      server->one_shot_done = true;
    return;
  }
  if (server->config.mode == UVS_MODE_FORKING) {
    r = uvs__fork_request(server, server->fd, &peer, data, len);
    uvs__listen_dgram_update(server); /* pauses at max_children */
  } else {
    r = uvs__conn_datagram(server, data, len, &peer);
    uvs__listen_dgram_update(server); /* pauses at the in-flight bound */
  }
  if (r != 0) {
    uvs__server_error(server, NULL, &peer, r);
    if (server->one_shot)
      server->one_shot_done = true;
  }
}


/* Sync mode served a UDP request: libuv would read on (up to 32 per
 * wake-up), so receiving pauses until the next loop iteration, as a
 * stream's sync mode serves one request per wake-up and timers, signals
 * and shutdowns run in between. The retry timer, which only unixgram
 * uses otherwise, resumes it. */
static void sync_yield(uvs_server_t* server) {
  server->sync_served = false;
  if (server->closing)
    return;
  server->sync_paused = true;
  uv_timer_start(&server->dgram_retry, on_sync_resume, 0, 0);
}


static void on_sync_resume(uv_timer_t* handle) {
  uvs_server_t* server = uv_handle_get_data((uv_handle_t*) handle);
  server->sync_paused = false;
  uvs__listen_dgram_update(server);
}


static void on_udp_alloc(uv_handle_t* handle, size_t size, uv_buf_t* buf) {
  uvs_server_t* server = uv_handle_get_data(handle);
  (void) size;
  /* One slot where only one datagram may be taken per read (sync mode,
   * handle_request, forking at max_children): the rest of a batch would be
   * read before a stop could take effect. */
  buf->base = server->read_buf;
  buf->len = server->one_shot || server->config.mode == UVS_MODE_SYNC ||
                     server->config.mode == UVS_MODE_FORKING
                 ? UDP_SLOT
                 : UDP_SLOT * UDP_BATCH;
}


static void on_udp_recv(uv_udp_t* handle,
                        ssize_t nread,
                        const uv_buf_t* buf,
                        const struct sockaddr* addr,
                        unsigned flags) {
  uvs_server_t* server = uv_handle_get_data((uv_handle_t*) handle);
  socklen_t salen;

  if (nread < 0) {
    recv_error(server, (int) nread);
    return;
  }
  if (addr == NULL) {
    /* The end of a batch, or nothing more to read: a stop asked during
     * the batch takes effect now. */
    server->in_batch = false;
    if (server->sync_served)
      sync_yield(server);
    uvs__listen_dgram_update(server);
    return;
  }
  server->in_batch = (flags & UV_UDP_MMSG_CHUNK) != 0;
  salen = addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                      : sizeof(struct sockaddr_in);
  take_datagram(server,
                buf->base,
                (size_t) nread,
                (flags & UV_UDP_PARTIAL) != 0,
                addr,
                salen);
  if (server->config.mode == UVS_MODE_SYNC) {
    server->sync_served = true;
    if (!server->in_batch)
      sync_yield(server);
  }
  if (!server->in_batch)
    uvs__listen_dgram_update(server);
}


static void on_unixgram_readable(uv_poll_t* handle, int status, int events) {
  uvs_server_t* server = uv_handle_get_data((uv_handle_t*) handle);
  size_t size = server->config.max_packet_size;
  int i;

  (void) events;
  if (status < 0) {
    recv_error(server, status);
    return;
  }
  for (i = 0; i < UNIXGRAM_BATCH && server->poll_active; i++) {
    struct sockaddr_storage ss;
    socklen_t salen = sizeof(ss);
    ssize_t n;

    /* MSG_TRUNC: the datagram's real length, even past the buffer. */
    n = recvfrom(server->fd,
                 server->read_buf,
                 size,
                 MSG_TRUNC | MSG_DONTWAIT,
                 (struct sockaddr*) &ss,
                 &salen);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        recv_error(server, UVS__ERR(errno));
      break;
    }
    take_datagram(server,
                  server->read_buf,
                  (size_t) n < size ? (size_t) n : size,
                  (size_t) n > size,
                  (struct sockaddr*) &ss,
                  salen);
    /* Sync mode serves one request per wake-up, as for streams. */
    if (server->config.mode == UVS_MODE_SYNC)
      break;
  }
}


/* ---- Sending -------------------------------------------------------- */

static bool is_unnamed(const uvs_address_t* peer) {
  return peer->u.sa.sa_family != AF_UNIX ||
         peer->len <= offsetof(struct sockaddr_un, sun_path);
}


static bool same_peer(const uvs_address_t* a, const uvs_address_t* b) {
  return a->len == b->len && memcmp(&a->u, &b->u, a->len) == 0;
}


/* The receiver is gone: its socket file was removed, or nobody is bound
 * to it any more. */
static bool peer_gone(int err) {
  return err == UV_ECONNREFUSED || err == UV_ENOENT || err == UV_ENOTDIR;
}


static int unix_sendto(uvs_server_t* server,
                       const uvs_address_t* peer,
                       const char* data,
                       size_t len) {
  ssize_t n;
  do
    n = sendto(server->fd,
               data,
               len,
               MSG_DONTWAIT | MSG_NOSIGNAL,
               &peer->u.sa,
               peer->len);
  while (n < 0 && errno == EINTR);
  if (n < 0)
    return UVS__ERR(errno);
  uvs__stat_add(&server->stats.bytes_out, len);
  return 0;
}


static int unix_send(uvs_server_t* server,
                     const uvs_address_t* peer,
                     const char* data,
                     size_t len) {
  uvs__list_t* node;
  pending_t* p;
  int r;

  /* Behind a reply to the same receiver that waits, this one waits too. */
  for (node = server->dgram_queue.next; node != &server->dgram_queue;
       node = node->next) {
    if (same_peer(&container_of(node, pending_t, node)->peer, peer))
      break;
  }
  if (node == &server->dgram_queue) {
    r = unix_sendto(server, peer, data, len);
    if (r != UV_EAGAIN && r != UV_ENOBUFS)
      return r;
  }
  if (server->dgram_queue_len >= UVS__DGRAM_QUEUE_MAX ||
      server->dgram_queue_bytes + len > server->config.output_high_water) {
    return UV_ENOBUFS;
  }
  p = uvs__malloc(sizeof(*p) + len);
  if (p == NULL)
    return UV_ENOMEM;
  p->since = uv_now(server->loop);
  p->peer = *peer;
  p->len = len;
  if (len > 0) /* an empty reply may come with data NULL */
    memcpy(p->data, data, len);
  uvs__list_push(&server->dgram_queue, &p->node);
  server->dgram_queue_len++;
  server->dgram_queue_bytes += len;
  if (!uv_is_active((uv_handle_t*) &server->dgram_retry)) {
    server->dgram_retry_ms = RETRY_MIN_MS;
    uv_timer_start(&server->dgram_retry, on_retry, RETRY_MIN_MS, 0);
  }
  return 0;
}


/* A reply was dropped (a full queue, a receiver that stayed full):
 * counted, and reported once until a send succeeds again. */
static void reply_dropped(uvs_server_t* server,
                          const uvs_address_t* peer,
                          int err) {
  uvs__stat_add(&server->stats.datagrams_dropped, 1);
  if (!server->dgram_drop_logged) {
    server->dgram_drop_logged = true;
    uvs__server_error(server, NULL, peer, err);
  }
}


/* One pass over the refused replies, in order: a receiver still full is
 * skipped for the rest of the pass (its order kept), one full for too long
 * loses its reply. */
static void on_retry(uv_timer_t* handle) {
  uvs_server_t* server = uv_handle_get_data((uv_handle_t*) handle);
  const uvs_address_t* blocked[BLOCKED_MAX];
  uint64_t now = uv_now(server->loop);
  uint64_t interval;
  unsigned nblocked = 0;
  bool progress = false;
  uvs__list_t* node;
  uvs__list_t* next;

  for (node = server->dgram_queue.next; node != &server->dgram_queue;
       node = next) {
    pending_t* p = container_of(node, pending_t, node);
    unsigned k;
    int r;

    next = node->next;
    for (k = 0; k < nblocked; k++) {
      if (same_peer(blocked[k], &p->peer))
        break;
    }
    if (k < nblocked)
      continue;
    r = unix_sendto(server, &p->peer, p->data, p->len);
    if (r == UV_EAGAIN || r == UV_ENOBUFS) {
      if (now - p->since >= UVS__DGRAM_RETRY_MAX_MS) {
        reply_dropped(server, &p->peer, UV_EAGAIN);
        drop_pending(server, p);
        continue;
      }
      if (nblocked == BLOCKED_MAX)
        break;
      blocked[nblocked++] = &p->peer;
      continue;
    }
    progress = true;
    if (r == 0)
      server->dgram_drop_logged = false;
    else if (peer_gone(r))
      uvs__stat_add(&server->stats.datagrams_dropped, 1);
    else
      reply_dropped(server, &p->peer, r);
    drop_pending(server, p);
  }
  if (uvs__list_empty(&server->dgram_queue))
    return;
  /* Back off while nothing moves; start over once something did. */
  interval = server->dgram_retry_ms;
  if (progress)
    interval = RETRY_MIN_MS;
  else if (interval < RETRY_MAX_MS)
    interval *= 2;
  server->dgram_retry_ms = interval;
  uv_timer_start(handle, on_retry, interval, 0);
}


static int udp_send(uvs_server_t* server,
                    const uvs_address_t* peer,
                    const char* data,
                    size_t len) {
  uv_buf_t buf = uv_buf_init((char*) data, (unsigned int) len);
  udp_send_t* s;
  int r;

  r = uv_udp_try_send(&server->udp, &buf, 1, &peer->u.sa);
  if (r >= 0) {
    uvs__stat_add(&server->stats.bytes_out, len);
    return 0;
  }
  if (r != UV_EAGAIN)
    return r;
  if (uv_udp_get_send_queue_size(&server->udp) + len >
      server->config.output_high_water) {
    return UV_ENOBUFS;
  }
  s = uvs__malloc(sizeof(*s) + len);
  if (s == NULL)
    return UV_ENOMEM;
  s->server = server;
  s->peer = *peer;
  s->len = len;
  if (len > 0) /* an empty reply may come with data NULL */
    memcpy(s->data, data, len);
  buf = uv_buf_init(s->data, (unsigned int) len);
  r = uv_udp_send(&s->req, &server->udp, &buf, 1, &peer->u.sa, on_udp_sent);
  if (r != 0)
    uvs__free(s);
  return r;
}


static void on_udp_sent(uv_udp_send_t* req, int status) {
  udp_send_t* s = container_of(req, udp_send_t, req);
  uvs_server_t* server = s->server;
  if (status < 0 && status != UV_ECANCELED) {
    reply_dropped(server, &s->peer, status);
  } else if (status == 0) {
    server->dgram_drop_logged = false;
    uvs__stat_add(&server->stats.bytes_out, s->len);
  }
  uvs__free(s);
}


static int send_datagram(uvs_server_t* server,
                         const uvs_address_t* peer,
                         const char* data,
                         size_t len) {
  int r;
  if (is_udp(server))
    r = udp_send(server, peer, data, len);
  else
    r = unix_send(server, peer, data, len);
  if (r == 0)
    server->dgram_drop_logged = false;
  return r;
}


int uvs_server_send_to(uvs_server_t* server,
                       const uvs_address_t* peer,
                       const void* data,
                       size_t len) {
  if (server == NULL || peer == NULL || (data == NULL && len > 0))
    return UV_EINVAL;
  if (!server->dgram || server->closing || server->fd < 0 || !server->bound ||
      peer->transport != server->address.transport ||
      peer->len > sizeof(peer->u) || (!is_udp(server) && is_unnamed(peer))) {
    return UV_EINVAL;
  }
  if (len > server->config.max_packet_size)
    return UV_EMSGSIZE;
  return send_datagram(server, peer, data, len);
}


void uvs__listen_dgram_reply(uvs_server_t* server,
                             const uvs_address_t* peer,
                             uvs__chunk_t* chunks,
                             size_t len) {
  char* flat = NULL;
  const char* data;
  int r;

  /* No return address (an unbound Unix client), or the server is
   * closing: nothing to send, nothing to report. */
  if (server->closing || server->fd < 0 ||
      (!is_udp(server) && is_unnamed(peer))) {
    uvs__buf_free_chunks(chunks);
    return;
  }
  data = chunks->data + chunks->start;
  if (chunks->next != NULL) {
    uvs__chunk_t* c;
    size_t off = 0;
    flat = uvs__malloc(len);
    if (flat == NULL) {
      uvs__buf_free_chunks(chunks);
      reply_dropped(server, peer, UV_ENOMEM);
      return;
    }
    for (c = chunks; c != NULL; c = c->next) {
      memcpy(flat + off, c->data + c->start, c->end - c->start);
      off += c->end - c->start;
    }
    data = flat;
  }
  r = send_datagram(server, peer, data, len);
  uvs__free(flat);
  uvs__buf_free_chunks(chunks);
  if (r == 0)
    return;
  if (!is_udp(server) && peer_gone(r))
    uvs__stat_add(&server->stats.datagrams_dropped, 1);
  else
    reply_dropped(server, peer, r);
}
