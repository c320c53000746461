/* SPDX-License-Identifier: MIT */
/*
 * Connection timeouts: idle (no byte either way), read (an event-mode
 * request left pending) and write (output waits and the socket takes
 * none of it), each closing only the connection it concerns (conn.c
 * decides how).
 *
 * A timer per connection would add a uv_timer_t to every idle connection
 * and a heap operation to every read. Instead each server keeps, per kind,
 * a queue of the connections whose timeout of that kind runs. Every
 * deadline of one kind is "now + the server's duration for it", so a
 * connection re-armed moves to the tail and the queue stays in deadline
 * order: arming, re-arming and disarming are O(1) list operations, and
 * only the queue heads matter. One uv_timer_t per server fires at the
 * earliest head; it is moved earlier when needed and never later (a
 * head re-armed meanwhile just makes it fire early, find nothing due, and
 * re-aim). Insertion walks back from the tail to keep that order: a
 * deadline from now stops at the tail at once; one measured from a moment
 * in the past (a threading worker's own I/O, which the loop learns of
 * only when the timeout comes due) passes over the few entries re-armed
 * since. Loop thread only.
 */
#include "internal.h"

static void on_timeout_timer(uv_timer_t* handle);
static void on_timer_closed(uv_handle_t* handle);


void uvs__timeout_init(uvs_server_t* server) {
  int kind;
  for (kind = 0; kind < UVS__TIMEOUT_KINDS; kind++)
    uvs__list_init(&server->timeouts[kind]);
  server->timeout_ms[UVS__TIMEOUT_IDLE] = server->config.idle_timeout_ms;
  server->timeout_ms[UVS__TIMEOUT_READ] = server->config.read_timeout_ms;
  server->timeout_ms[UVS__TIMEOUT_WRITE] = server->config.write_timeout_ms;
  uv_timer_init(server->loop, &server->timeout_timer);
  uv_handle_set_data((uv_handle_t*) &server->timeout_timer, server);
}


void uvs__timeout_close(uvs_server_t* server) {
  uvs__server_closing_handle(server);
  uv_close((uv_handle_t*) &server->timeout_timer, on_timer_closed);
}


static void on_timer_closed(uv_handle_t* handle) {
  uvs__server_handle_closed(uv_handle_get_data(handle));
}


/* Aims the timer at `due` unless it fires earlier already. */
static void aim(uvs_server_t* server, uint64_t due) {
  uint64_t now;
  if (server->timeout_due != 0 && server->timeout_due <= due)
    return;
  now = uv_now(server->loop);
  server->timeout_due = due;
  uv_timer_start(&server->timeout_timer,
                 on_timeout_timer,
                 due > now ? due - now : 0,
                 0);
}


void uvs__timeout_arm_since(uvs_conn_t* conn, int kind, uint64_t since_ms) {
  uvs_server_t* server = conn->server;
  uint64_t ms = server->timeout_ms[kind];
  uvs__list_t* queue = &server->timeouts[kind];
  uvs__list_t* at;
  uint64_t due;

  if (ms == 0 || server->closing || conn->handle_closing)
    return;
  if (uvs__timeout_armed(conn, kind))
    uvs__list_remove(&conn->timeout[kind].node);
  due = since_ms + ms;
  /* Insert after the last entry due no later: the queue stays sorted. */
  for (at = queue->prev; at != queue; at = at->prev) {
    if (container_of(at, uvs_conn_t, timeout[kind].node)->timeout[kind].due <=
        due)
      break;
  }
  conn->timeout[kind].due = due;
  uvs__list_push(at->next, &conn->timeout[kind].node);
  aim(server, due);
}


/* Measured from now, the usual case: the tail is due no later, so the
 * insertion above stops at once. */
void uvs__timeout_arm(uvs_conn_t* conn, int kind) {
  /* Without a timeout of this kind (the common case, on every read and
   * write) there is nothing to look up. */
  if (conn->server->timeout_ms[kind] == 0)
    return;
  uvs__timeout_arm_since(conn, kind, uv_now(conn->server->loop));
}


void uvs__timeout_disarm(uvs_conn_t* conn, int kind) {
  if (!uvs__timeout_armed(conn, kind))
    return;
  uvs__list_remove(&conn->timeout[kind].node);
  conn->timeout[kind].node.next = NULL;
}


void uvs__timeout_clear(uvs_conn_t* conn) {
  int kind;
  for (kind = 0; kind < UVS__TIMEOUT_KINDS; kind++)
    uvs__timeout_disarm(conn, kind);
}


/* The first connection of `kind` whose deadline has passed, unarmed, or
 * NULL. */
static uvs_conn_t* pop_due(uvs_server_t* server, int kind, uint64_t now) {
  uvs__list_t* queue = &server->timeouts[kind];
  uvs_conn_t* conn;

  if (uvs__list_empty(queue))
    return NULL;
  conn = container_of(queue->next, uvs_conn_t, timeout[kind].node);
  if (conn->timeout[kind].due > now)
    return NULL;
  uvs__timeout_disarm(conn, kind);
  return conn;
}


static void on_timeout_timer(uv_timer_t* handle) {
  uvs_server_t* server = uv_handle_get_data((uv_handle_t*) handle);
  uint64_t now = uv_now(server->loop);
  uint64_t next = 0;
  int kind;

  server->timeout_due = 0;
  for (kind = 0; kind < UVS__TIMEOUT_KINDS; kind++) {
    uvs_conn_t* conn;
    /* Closing a connection disarms it and may re-arm others, but only
     * at the tail: the head is always the next one to look at. */
    while ((conn = pop_due(server, kind, now)) != NULL)
      uvs__conn_timed_out(conn, kind);
  }
  for (kind = 0; kind < UVS__TIMEOUT_KINDS; kind++) {
    uvs__list_t* queue = &server->timeouts[kind];
    uint64_t due;
    if (uvs__list_empty(queue))
      continue;
    due = container_of(queue->next, uvs_conn_t, timeout[kind].node)
              ->timeout[kind]
              .due;
    if (next == 0 || due < next)
      next = due;
  }
  if (next != 0)
    aim(server, next);
}
