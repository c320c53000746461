/* SPDX-License-Identifier: MIT */
/*
 * The graceful stop, uvs_server_drain, built from DESIGN.md's three stop
 * verbs:
 * 1. stop accepting: a stream listener takes what already waits in its
 *    backlog (the kernel has acknowledged those clients), then closes, so
 *    new clients are refused instead of left waiting; a datagram server
 *    stops receiving and keeps its socket for replies;
 * 2. drain: connections, handlers and children go on until they end by
 *    themselves, up to the deadline;
 * 3. at the deadline every connection left is read no more and closed
 *    gracefully (its queued output flushed, the peer's FIN awaited),
 *    children get SIGTERM; after close_linger_ms more, what is left is
 *    reset and children are killed.
 * The callback runs once nothing is left, always from the drain timer
 * (never inside the call or inside a connection's close), or with
 * UV_ECANCELED from the server's close. Loop thread only.
 */
#include "internal.h"

#include <signal.h>

static void on_deadline(uv_timer_t* handle);
static void on_grace_over(uv_timer_t* handle);
static void on_done(uv_timer_t* handle);
static void on_timer_closed(uv_handle_t* handle);


void uvs__drain_init(uvs_server_t* server) {
  uv_timer_init(server->loop, &server->drain_timer);
  uv_handle_set_data((uv_handle_t*) &server->drain_timer, server);
}


/* Nothing of the server's is left running. */
static bool drained(const uvs_server_t* server) {
  return server->nconns == 0 && server->nchildren == 0 &&
         server->dgram_queue_len == 0;
}


int uvs_server_drain(uvs_server_t* server,
                     uint64_t deadline_ms,
                     uvs_server_drain_cb cb) {
  uint64_t now_ns;

  if (server == NULL || cb == NULL || server->closing)
    return UV_EINVAL;
  if (server->draining)
    return UV_EALREADY;
  server->draining = true;
  server->drain_cb = cb;
  now_ns = uv_hrtime();
  server->drain_deadline_ns = deadline_ms > (UINT64_MAX - now_ns) / 1000000
                                  ? UINT64_MAX
                                  : now_ns + deadline_ms * 1000000;

  /* 1. Stop accepting. */
  if (server->dgram) {
    uvs__listen_dgram_update(server);
  } else {
    if (server->listening)
      uvs__listen_stream_take_backlog(server);
    uvs__server_close_listener(server);
  }

  /* 2. Let everything run to the deadline. */
  uv_update_time(server->loop);
  if (drained(server)) {
    server->drain_done = true;
    uv_timer_start(&server->drain_timer, on_done, 0, 0);
  } else {
    uv_timer_start(&server->drain_timer, on_deadline, deadline_ms, 0);
  }
  return 0;
}


/* 3. The deadline: close gracefully what is left, signal children. */
static void on_deadline(uv_timer_t* handle) {
  uvs_server_t* server = uv_handle_get_data((uv_handle_t*) handle);
  uvs__list_t* node;
  uvs__list_t* next;

  server->drain_final = true;
  server->drain_status = UV_ETIMEDOUT;
  for (node = server->conns.next; node != &server->conns; node = next) {
    next = node->next;
    uvs__conn_drain_close(container_of(node, uvs_conn_t, node), false);
  }
  uvs__fork_signal_all(server, SIGTERM);
  /* A connection that closed at once may have ended the drain already
   * (the timer then runs on_done). */
  uvs__drain_check(server);
  if (server->drain_done)
    return;
  uv_timer_start(&server->drain_timer,
                 on_grace_over,
                 server->config.close_linger_ms,
                 0);
}


/* The grace is over: reset what is left, kill the children. */
static void on_grace_over(uv_timer_t* handle) {
  uvs_server_t* server = uv_handle_get_data((uv_handle_t*) handle);
  uvs__list_t* node;
  uvs__list_t* next;

  for (node = server->conns.next; node != &server->conns; node = next) {
    next = node->next;
    uvs__conn_drain_close(container_of(node, uvs_conn_t, node), true);
  }
  uvs__fork_signal_all(server, SIGKILL);
}


void uvs__drain_check(uvs_server_t* server) {
  if (!server->draining || server->drain_done || server->closing ||
      !drained(server)) {
    return;
  }
  server->drain_done = true;
  uv_timer_start(&server->drain_timer, on_done, 0, 0);
}


static void on_done(uv_timer_t* handle) {
  uvs_server_t* server = uv_handle_get_data((uv_handle_t*) handle);
  uvs_server_drain_cb cb = server->drain_cb;

  server->drain_cb = NULL;
  if (cb == NULL)
    return;
  uvs__callback_depth++;
  cb(server, server->drain_status);
  uvs__callback_depth--;
}


void uvs__drain_close(uvs_server_t* server) {
  uv_timer_stop(&server->drain_timer);
  uvs__server_closing_handle(server);
  uv_close((uv_handle_t*) &server->drain_timer, on_timer_closed);
}


void uvs__drain_cancelled(uvs_server_t* server) {
  uvs_server_drain_cb cb = server->drain_cb;

  server->drain_cb = NULL;
  if (cb == NULL)
    return;
  uvs__callback_depth++;
  cb(server, UV_ECANCELED);
  uvs__callback_depth--;
}


static void on_timer_closed(uv_handle_t* handle) {
  uvs__server_handle_closed(uv_handle_get_data(handle));
}
