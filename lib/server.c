/* SPDX-License-Identifier: MIT */
/*
 * The server's lifecycle: new, bind, activate, start/stop, serve_forever,
 * shutdown, handle_request, close (socketserver's BaseServer).
 *
 * serve_forever and shutdown follow an explicit state machine (idle-new,
 * serving, stopped) guarded by `lock`, so a shutdown before the first
 * serve_forever, after one has returned, twice in a row, or from inside a
 * callback on the loop thread each has one defined result and none of them
 * deadlocks or leaves a stale flag (socketserver-reference.md 2.3, 4.1).
 * Other threads reach the loop only through the loop's mailbox
 * (mailbox.c), with `stop_msg`.
 *
 * Closing is asynchronous underneath (libuv's close-callback rule): every
 * handle the server owns is counted in `pending_closes`, every connection
 * stays on `conns` until its close completes, and the server is freed when
 * both reach zero. uvs_server_close with no callback runs the loop until
 * then, which is socketserver's synchronous server_close.
 */
#include "internal.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_stop_msg(uvs__msg_t* msg);
static void on_service_timer(uv_timer_t* handle);
static void on_request_timeout(uv_timer_t* handle);
static void on_handle_closed(uv_handle_t* handle);
static void close_server_handle(uvs_server_t* server, uv_handle_t* handle);
static void finish_close(uvs_server_t* server);
static void release_mailbox(uvs_server_t* server);
static void free_server(void* arg);


_Thread_local int uvs__callback_depth;


/* Every server of the process, for a forked child to close what it
 * inherited (fork.c). */
static uv_once_t registry_once = UV_ONCE_INIT;
static uv_mutex_t registry_lock;
static uvs__list_t registry = { &registry, &registry };

static void registry_init(void) {
  if (uv_mutex_init(&registry_lock) != 0)
    abort();
}

static void registry_add(uvs_server_t* server) {
  uv_once(&registry_once, registry_init);
  uv_mutex_lock(&registry_lock);
  uvs__list_push(&registry, &server->registry_node);
  uv_mutex_unlock(&registry_lock);
}

static void registry_remove(uvs_server_t* server) {
  if (server->registry_node.next == NULL)
    return; /* never added */
  uv_mutex_lock(&registry_lock);
  uvs__list_remove(&server->registry_node);
  uv_mutex_unlock(&registry_lock);
}


/* SIGPIPE's default action kills the process on a write to a reset
 * connection. Ignore it once per process, unless the application has set a
 * handler of its own, which is left alone. */
static uv_once_t sigpipe_once = UV_ONCE_INIT;

static void ignore_sigpipe(void) {
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) != 0)
    return;
  if ((sa.sa_flags & SA_SIGINFO) == 0 && sa.sa_handler == SIG_DFL) {
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPIPE, &sa, NULL);
  }
}


static int check_config(const uvs_config_t* config) {
  if (config->request_queue_size < 0 || config->accept_batch == 0 ||
      config->read_buffer_size == 0 || config->timeout_ms < -1 ||
      config->request_timeout_ms < -1 || config->output_high_water == 0 ||
      config->max_packet_size == 0 || config->max_children == 0 ||
      config->accept_retry_ms == 0) {
    return UV_EINVAL;
  }
  switch (config->mode) {
  case UVS_MODE_EVENT:
  case UVS_MODE_SYNC:
  case UVS_MODE_THREADING:
  case UVS_MODE_FORKING:
    return 0;
  }
  return UV_EINVAL;
}


void uvs_config_init(uvs_config_t* config) {
  memset(config, 0, sizeof(*config));
  config->mode = UVS_MODE_EVENT;
  config->bind_and_activate = 1;
  config->request_queue_size = SOMAXCONN;
  config->allow_reuse_address = 1;
  config->allow_reuse_port = 0;
  config->ipv6_only = 0;
  config->timeout_ms = -1;
  config->accept_batch = 16;
  config->close_linger_ms = 2000;
  config->close_timeout_ms = 30000;
  config->read_buffer_size = 65536;
  config->accept_retry_ms = 1000;
  config->max_connections = 0;
  config->max_connections_pause = 0;
  config->idle_timeout_ms = 0;
  config->read_timeout_ms = 0;
  config->write_timeout_ms = 0;
  config->max_threads = 256;
  config->thread_idle_ms = 10000;
  config->thread_stack_size = 0;
  config->block_on_close = 1;
  config->daemon_threads = 0;
  config->max_children = 40;
  config->children_wait_ms = 300000;
  config->request_timeout_ms = -1;
  config->wbufsize = 0;
  config->disable_nagle_algorithm = 1;
  config->output_high_water = 262144;
  config->max_write_queue = 0;
  config->max_packet_size = 65536;
  config->unlink_on_close = 1;
}


/* Frees what uvs_server_new allocated before any handle existed. */
static void free_unstarted(uvs_server_t* server) {
  if (server->fd >= 0)
    close(server->fd);
  uvs__sock_unlink(server);
  if (server->pool != NULL)
    uvs__pool_close(server->pool, true, NULL, NULL);
  if (server->owned_loop != NULL) {
    uv_loop_close(server->owned_loop);
    uvs__free(server->owned_loop);
  }
  uvs__free(server->read_buf);
  uvs__free(server);
}


int uvs_server_new(uv_loop_t* loop,
                   uvs_server_t** server_out,
                   const char* address,
                   const uvs_handler_t* handler,
                   const uvs_config_t* config) {
  uvs_config_t defaults;
  uvs_server_t* server;
  int r;

  if (server_out == NULL)
    return UV_EINVAL;
  *server_out = NULL;
  if (address == NULL || handler == NULL)
    return UV_EINVAL;
  /* Per-request state is allocated with the connection: keep the sum far
   * from overflowing. */
  if (handler->state_size > SIZE_MAX / 2)
    return UV_EINVAL;
  if (config == NULL) {
    uvs_config_init(&defaults);
    config = &defaults;
  }
  r = check_config(config);
  if (r != 0)
    return r;

  uv_once(&sigpipe_once, ignore_sigpipe);

  server = uvs__calloc(1, sizeof(*server));
  if (server == NULL)
    return UV_ENOMEM;
  server->fd = -1;
  server->handler = *handler;
  server->config = *config;
  uvs__list_init(&server->conns);

  r = uvs_address_parse(address, &server->address);
  if (r != 0)
    goto fail;
  server->dgram = server->address.transport == UVS_TRANSPORT_UDP ||
                  server->address.transport == UVS_TRANSPORT_UNIXGRAM;
  server->read_buf = uvs__malloc(
      server->dgram
          ? uvs__listen_dgram_buffer_size(config, server->address.transport)
          : config->read_buffer_size);
  if (server->read_buf == NULL) {
    r = UV_ENOMEM;
    goto fail;
  }
  if (loop == NULL) {
    server->owned_loop = uvs__malloc(sizeof(*server->owned_loop));
    if (server->owned_loop == NULL) {
      r = UV_ENOMEM;
      goto fail;
    }
    r = uv_loop_init(server->owned_loop);
    if (r != 0) {
      uvs__free(server->owned_loop);
      server->owned_loop = NULL;
      goto fail;
    }
    loop = server->owned_loop;
  }
  server->loop = loop;

  /* The socket first, and bound before any handle exists, so that the
   * common failures (EADDRINUSE, EACCES) unwind synchronously. */
  r = uvs__sock_open(server);
  if (r != 0)
    goto fail;
  if (config->bind_and_activate) {
    r = uvs_server_bind(server);
    if (r == 0)
      r = uvs_server_activate(server);
    if (r != 0)
      goto fail;
  }

  if (config->mode == UVS_MODE_THREADING) {
    r = uvs__pool_new(&server->pool,
                      config->max_threads,
                      config->thread_idle_ms,
                      config->thread_stack_size,
                      uvs__conn_run_job);
    if (r != 0)
      goto fail;
  }
  if (uv_mutex_init(&server->lock) != 0) {
    r = UV_ENOMEM;
    goto fail;
  }
  /* Recursive: a uvs_server_foreach callback may close a connection, whose
   * hooks may ask for the connection count on the same thread. */
  if (uv_mutex_init_recursive(&server->conns_lock) != 0) {
    uv_mutex_destroy(&server->lock);
    r = UV_ENOMEM;
    goto fail;
  }
  if (uv_cond_init(&server->cond) != 0) {
    uv_mutex_destroy(&server->conns_lock);
    uv_mutex_destroy(&server->lock);
    r = UV_ENOMEM;
    goto fail;
  }
  r = uvs__mailbox_acquire(loop, &server->mailbox);
  if (r != 0) {
    uv_cond_destroy(&server->cond);
    uv_mutex_destroy(&server->conns_lock);
    uv_mutex_destroy(&server->lock);
    goto fail;
  }
  server->stop_msg.run = on_stop_msg;
  uv_timer_init(loop, &server->service_timer);
  uv_timer_init(loop, &server->accept_retry);
  uv_timer_init(loop, &server->dgram_retry);
  uv_handle_set_data((uv_handle_t*) &server->service_timer, server);
  uv_handle_set_data((uv_handle_t*) &server->accept_retry, server);
  uv_handle_set_data((uv_handle_t*) &server->dgram_retry, server);
  uvs__timeout_init(server);
  uvs__drain_init(server);
  if (server->dgram) {
    r = uvs__listen_dgram_init(server);
  } else {
    r = uv_poll_init_socket(loop, &server->poll, server->fd);
    if (r == 0) {
      uv_handle_set_data((uv_handle_t*) &server->poll, server);
      server->poll_inited = true;
    }
  }
  if (r == 0 && config->mode == UVS_MODE_FORKING)
    r = uvs__fork_init(server);
  if (r != 0) {
    /* Handles exist now: unwind through the close path. */
    server->closing = true;
    server->close_sync = server->owned_loop != NULL;
    release_mailbox(server);
    uvs__server_close_listener(server);
    uvs__fork_close(server);
    close_server_handle(server, (uv_handle_t*) &server->service_timer);
    close_server_handle(server, (uv_handle_t*) &server->accept_retry);
    close_server_handle(server, (uv_handle_t*) &server->dgram_retry);
    uvs__timeout_close(server);
    uvs__drain_close(server);
    if (server->owned_loop != NULL) {
      while (server->pending_closes > 0)
        uv_run(loop, UV_RUN_ONCE);
      finish_close(server);
    }
    return r;
  }

  registry_add(server);
  *server_out = server;
  return 0;

fail:
  free_unstarted(server);
  return r;
}


int uvs_server_bind(uvs_server_t* server) {
  if (server == NULL || server->closing)
    return UV_EINVAL;
  return uvs__sock_bind(server);
}


int uvs_server_activate(uvs_server_t* server) {
  if (server == NULL || server->closing)
    return UV_EINVAL;
  if (!server->dgram)
    return uvs__listen_stream_activate(server);
  /* Python's UDPServer.server_activate does nothing: a datagram socket
   * receives once bound. */
  if (server->fd < 0 || !server->bound)
    return UV_EINVAL;
  if (server->listening)
    return UV_EALREADY;
  server->listening = true;
  return 0;
}


int uvs__server_update_listener(uvs_server_t* server) {
  if (server->dgram)
    return uvs__listen_dgram_update(server);
  return uvs__listen_stream_update(server);
}


void uvs__server_close_listener(uvs_server_t* server) {
  if (server->dgram)
    uvs__listen_dgram_close(server);
  else
    uvs__listen_stream_close(server);
  uvs__sock_unlink(server);
}


int uvs_server_start(uvs_server_t* server) {
  int r;
  if (server == NULL || server->closing)
    return UV_EINVAL;
  /* A drain closed the listener for good; the loop may still run. */
  if (server->draining)
    return 0;
  if (!server->bound) {
    r = uvs_server_bind(server);
    if (r != 0)
      return r;
  }
  if (!server->listening) {
    r = uvs_server_activate(server);
    if (r != 0)
      return r;
  }
  server->accepting = true;
  return uvs__server_update_listener(server);
}


int uvs_server_stop(uvs_server_t* server) {
  if (server == NULL)
    return UV_EINVAL;
  server->accepting = false;
  if (server->closing)
    return 0;
  return uvs__server_update_listener(server);
}


/* serve_forever and handle_request keep the loop alive through the
 * mailbox while they run (a paused connection has no active handle). */
static void hold(uvs_server_t* server, bool on) {
  if (on == server->held)
    return;
  server->held = on;
  if (on)
    uvs__mailbox_hold(server->mailbox);
  else
    uvs__mailbox_unhold(server->mailbox);
}


static bool server_waits_for_handlers(const uvs_server_t* server) {
  return server->config.block_on_close && !server->config.daemon_threads;
}


static bool stop_requested(uvs_server_t* server) {
  bool stop;
  uv_mutex_lock(&server->lock);
  stop = server->stop_requested;
  uv_mutex_unlock(&server->lock);
  return stop;
}


bool uvs__server_stop_requested(uvs_server_t* server) {
  return stop_requested(server);
}


int uvs_server_serve_forever(uvs_server_t* server, uint64_t poll_interval_ms) {
  int r;

  if (server == NULL || server->closing)
    return UV_EINVAL;
  if (uvs__callback_depth > 0)
    return UV_EBUSY; /* a loop already runs on this thread */
  uv_mutex_lock(&server->lock);
  if (server->serve_state == UVS__SERVING || server->running) {
    uv_mutex_unlock(&server->lock);
    return UV_EBUSY;
  }
  if (server->stop_pending) {
    /* shutdown came first (the test_shutdown race): serve nothing. */
    server->stop_pending = false;
    server->serve_state = UVS__STOPPED;
    server->serve_generation++;
    uv_cond_broadcast(&server->cond);
    uv_mutex_unlock(&server->lock);
    return 0;
  }
  server->serve_state = UVS__SERVING;
  server->stop_requested = false;
  server->serving_thread = uv_thread_self();
  server->running = true;
  uv_mutex_unlock(&server->lock);

  r = uvs_server_start(server);
  if (r == 0) {
    hold(server, true);
    if (poll_interval_ms > 0 && server->config.hooks.service_actions != NULL) {
      uv_timer_start(&server->service_timer,
                     on_service_timer,
                     poll_interval_ms,
                     poll_interval_ms);
    }
    /* uv_run also returns when the application calls uv_stop on its loop;
     * only a shutdown ends serve_forever. */
    while (!stop_requested(server))
      uv_run(server->loop, UV_RUN_DEFAULT);
    uv_timer_stop(&server->service_timer);
    hold(server, false);
    uvs_server_stop(server);
  }

  uv_mutex_lock(&server->lock);
  if (r == 0)
    r = server->stop_status;
  server->stop_status = 0;
  server->running = false;
  server->serve_state = UVS__STOPPED;
  server->stop_requested = false;
  server->serve_generation++;
  uv_cond_broadcast(&server->cond);
  uv_mutex_unlock(&server->lock);
  return r;
}


int uvs_server_shutdown(uvs_server_t* server) {
  uint64_t generation;
  uv_thread_t self;

  if (server == NULL)
    return UV_EINVAL;
  self = uv_thread_self();
  uv_mutex_lock(&server->lock);
  switch (server->serve_state) {
  case UVS__IDLE_NEW:
    server->stop_pending = true;
    break;
  case UVS__STOPPED:
    break;
  case UVS__SERVING:
    server->stop_requested = true;
    if (uv_thread_equal(&self, &server->serving_thread)) {
      /* Inside a callback: waiting here would wait for ourselves. */
      uv_stop(server->loop);
      break;
    }
    /* Wait for this serve_forever to return, not for one that the
     * serving thread may start right after it (a restart loop). */
    generation = server->serve_generation;
    server->shutdown_waiters++;
    if (!server->mailbox_gone)
      uvs__mailbox_post(server->mailbox, &server->stop_msg);
    while (server->serve_generation == generation)
      uv_cond_wait(&server->cond, &server->lock);
    /* uvs_server_close waits for the last waiter before it frees. */
    if (--server->shutdown_waiters == 0)
      uv_cond_broadcast(&server->cond);
    break;
  }
  uv_mutex_unlock(&server->lock);
  return 0;
}


int uvs_server_handle_request(uvs_server_t* server) {
  bool was_accepting;
  int r;

  if (server == NULL || server->closing || server->draining)
    return UV_EINVAL;
  if (uvs__callback_depth > 0)
    return UV_EBUSY; /* a loop already runs on this thread */
  uv_mutex_lock(&server->lock);
  if (server->serve_state == UVS__SERVING || server->running) {
    uv_mutex_unlock(&server->lock);
    return UV_EBUSY;
  }
  server->running = true;
  uv_mutex_unlock(&server->lock);

  was_accepting = server->accepting;
  server->one_shot = true;
  server->one_shot_taken = false;
  server->one_shot_done = false;
  server->one_shot_timed_out = false;
  server->one_shot_id = 0;
  r = uvs_server_start(server);
  if (r == 0) {
    /* Keep the loop alive while the connection pauses its reading, so
     * UV_RUN_ONCE blocks instead of spinning. */
    hold(server, true);
    if (server->config.timeout_ms >= 0) {
      /* The loop's clock may be stale (the loop sat idle): the timeout
       * counts from this call. */
      uv_update_time(server->loop);
      uv_timer_start(&server->service_timer,
                     on_request_timeout,
                     (uint64_t) server->config.timeout_ms,
                     0);
    }
    while (!server->one_shot_done && !server->one_shot_timed_out) {
      uv_run(server->loop, UV_RUN_ONCE);
      /* The deadline passed: one last look, without blocking, for a
       * connection that is already waiting (Python's select(0)). */
      if (server->one_shot_timed_out && !server->one_shot_taken)
        uv_run(server->loop, UV_RUN_NOWAIT);
      if (server->one_shot_taken)
        server->one_shot_timed_out = false;
    }
    uv_timer_stop(&server->service_timer);
    hold(server, false);
  }
  server->one_shot = false;
  server->accepting = was_accepting;
  uvs__server_update_listener(server);

  if (r == 0 && server->one_shot_timed_out) {
    if (server->config.hooks.handle_timeout != NULL) {
      uvs__callback_depth++;
      r = server->config.hooks.handle_timeout(server);
      uvs__callback_depth--;
    } else {
      r = UV_ETIMEDOUT;
    }
  }
  uv_mutex_lock(&server->lock);
  if (r == 0)
    r = server->stop_status;
  server->stop_status = 0;
  server->running = false;
  uv_mutex_unlock(&server->lock);
  return r;
}


static void close_server_handle(uvs_server_t* server, uv_handle_t* handle) {
  uvs__server_closing_handle(server);
  uv_close(handle, on_handle_closed);
}


int uvs_server_close(uvs_server_t* server, uvs_server_close_cb cb) {
  uvs__list_t* node;
  uvs__list_t* next;
  bool busy;

  if (server == NULL)
    return UV_EINVAL;
  uv_mutex_lock(&server->lock);
  busy = server->running || server->serve_state == UVS__SERVING;
  uv_mutex_unlock(&server->lock);
  if (busy)
    return UV_EBUSY;
  if (server->closing)
    return 0;
  /* An owned loop is run by uvs alone and must be closed from outside it. */
  if (server->owned_loop != NULL && uvs__callback_depth > 0)
    return UV_EBUSY;
  server->closing = true;
  server->close_cb = cb;
  server->accepting = false;
  hold(server, false);

  uvs__server_close_listener(server);
  close_server_handle(server, (uv_handle_t*) &server->service_timer);
  close_server_handle(server, (uv_handle_t*) &server->accept_retry);
  close_server_handle(server, (uv_handle_t*) &server->dgram_retry);
  uvs__timeout_close(server);
  uvs__drain_close(server);
  /* Children: waited for, or left to a reaper thread (fork.c). */
  uvs__fork_close(server);
  /* Requests no worker has started are dropped; running handlers are
   * woken with UV_ECANCELED by their connection's close. */
  if (server->pool != NULL)
    uvs__pool_cancel_queued(server->pool, uvs__conn_cancel_job);
  for (node = server->conns.next; node != &server->conns; node = next) {
    next = node->next;
    uvs__conn_close_now(container_of(node, uvs_conn_t, node), UV_ECANCELED);
  }
  /* Without block_on_close the close does not wait for running handlers:
   * their connections are handed to them as their loop side finishes
   * (conn.c), and the pool is detached at the end. */
  server->pool_detached =
      server->pool != NULL && !server_waits_for_handlers(server);
  /* Connections the loop closed before (a reset, a close from the handler)
   * wait for their worker: hand them over now. */
  if (server->pool_detached)
    uvs__conn_hand_over_all(server);

  /* Run the loop here unless a caller's callback is on the stack (the loop
   * is running then) and the loop is not ours; an owned loop is run by
   * nobody else. */
  if (server->owned_loop != NULL || (cb == NULL && uvs__callback_depth == 0)) {
    server->close_sync = true;
    /* Running handlers report through the mailbox: it goes last. */
    while (!uvs__list_empty(&server->conns))
      uv_run(server->loop, UV_RUN_ONCE);
    release_mailbox(server);
    while (server->pending_closes > 0)
      uv_run(server->loop, UV_RUN_ONCE);
    finish_close(server);
  }
  return 0;
}


int uvs_server_address(const uvs_server_t* server, char* buf, size_t* size) {
  if (server == NULL || !server->bound)
    return UV_EINVAL;
  return uvs_address_format(&server->address, buf, size);
}


int uvs_server_fileno(const uvs_server_t* server) {
  if (server == NULL || server->fd < 0)
    return UV_EBADF;
  return server->fd;
}


uv_loop_t* uvs_server_loop(const uvs_server_t* server) {
  return server->loop;
}


size_t uvs_server_connection_count(const uvs_server_t* server) {
  size_t n;
  uv_mutex_lock((uv_mutex_t*) &server->conns_lock);
  n = server->nconns;
  uv_mutex_unlock((uv_mutex_t*) &server->conns_lock);
  return n;
}


int uvs_server_foreach(uvs_server_t* server, uvs_foreach_cb cb, void* arg) {
  uvs__list_t* node;
  int n = 0;

  if (server == NULL || cb == NULL)
    return UV_EINVAL;
  /* The loop frees a connection only after unlinking it under this lock,
   * so every conn on the list stays valid while `cb` runs. */
  uv_mutex_lock(&server->conns_lock);
  for (node = server->conns.next; node != &server->conns; node = node->next) {
    uvs_conn_t* conn = container_of(node, uvs_conn_t, node);
    if (!uvs__conn_is_open(conn))
      continue;
    cb(conn, arg);
    n++;
  }
  uv_mutex_unlock(&server->conns_lock);
  return n;
}


int uvs_server_stats(const uvs_server_t* server, uvs_stats_t* stats) {
  const uvs__stats_t* c;

  if (server == NULL || stats == NULL)
    return UV_EINVAL;
  c = &server->stats;
  memset(stats, 0, sizeof(*stats));
#define UVS__READ(field) \
 stats->field = atomic_load_explicit(&c->field, memory_order_relaxed)
  UVS__READ(accepted);
  UVS__READ(rejected_verify);
  UVS__READ(rejected_limit);
  UVS__READ(bytes_in);
  UVS__READ(bytes_out);
  stats->bytes_in +=
      atomic_load_explicit(&c->workers_bytes_in, memory_order_relaxed);
  stats->bytes_out +=
      atomic_load_explicit(&c->workers_bytes_out, memory_order_relaxed);
  UVS__READ(handler_errors);
  UVS__READ(conn_errors);
  UVS__READ(timeouts);
  UVS__READ(accept_errors);
  UVS__READ(datagrams_oversize);
  UVS__READ(datagrams_dropped);
#undef UVS__READ
  stats->active = uvs_server_connection_count(server);
  stats->children = uvs_server_child_count(server);
  return 0;
}


void* uvs_server_get_data(const uvs_server_t* server) {
  return server->data;
}


void uvs_server_set_data(uvs_server_t* server, void* data) {
  server->data = data;
}


/* ---- Internal ------------------------------------------------------- */

void uvs__server_error(uvs_server_t* server,
                       uvs_conn_t* conn,
                       const uvs_address_t* peer,
                       int status) {
  char text[UVS_ADDRSTRLEN];
  size_t size = sizeof(text);

  if (server->config.hooks.handle_error != NULL) {
    uvs__callback_depth++;
    server->config.hooks.handle_error(server, conn, peer, status);
    uvs__callback_depth--;
    return;
  }
  if (peer == NULL || uvs_address_format(peer, text, &size) != 0)
    snprintf(text, sizeof(text), "%s", "(no peer)");
  fprintf(stderr,
          "uvs: error processing request from %s: %s (%s)\n",
          text,
          uvs_strerror(status),
          uvs_err_name(status));
}


bool uvs__server_verify_request(uvs_server_t* server,
                                const uvs_address_t* peer) {
  int accept;
  if (server->config.hooks.verify_request == NULL)
    return true;
  uvs__callback_depth++;
  accept = server->config.hooks.verify_request(server, peer);
  uvs__callback_depth--;
  if (accept == 0)
    uvs__stat_add(&server->stats.rejected_verify, 1);
  return accept != 0;
}


bool uvs__server_at_limit(const uvs_server_t* server) {
  unsigned max = server->config.max_connections;
  if (max == 0 || server->dgram)
    return false;
  if (server->config.mode == UVS_MODE_FORKING)
    return server->nchildren >= max;
  return server->nopen >= max;
}


static void on_listen_retry(uv_timer_t* handle) {
  uvs_server_t* server = uv_handle_get_data((uv_handle_t*) handle);
  server->accept_backoff = false;
  uvs__server_update_listener(server);
}


void uvs__server_listen_error(uvs_server_t* server, int err) {
  uvs__stat_add(&server->stats.accept_errors, 1);
  if (!server->accept_error_logged) {
    server->accept_error_logged = true;
    uvs__server_error(server, NULL, NULL, err);
  }
  if (server->closing || server->accept_backoff)
    return;
  server->accept_backoff = true;
  uvs__server_update_listener(server);
  uv_timer_start(&server->accept_retry,
                 on_listen_retry,
                 server->config.accept_retry_ms,
                 0);
}


void uvs__server_shutdown_request(uvs_server_t* server,
                                  uv_os_sock_t fd,
                                  const uvs_address_t* peer) {
  if (server->config.hooks.shutdown_request == NULL)
    return;
  uvs__callback_depth++;
  server->config.hooks.shutdown_request(server, fd, peer);
  uvs__callback_depth--;
}


void uvs__server_close_inherited(uv_os_sock_t keep) {
  uvs__list_t* node;
  /* Only the forking thread exists in the child: no lock can be taken
   * safely, and none is needed. */
  for (node = registry.next; node != &registry; node = node->next) {
    uvs_server_t* server = container_of(node, uvs_server_t, registry_node);
    uvs__list_t* c;
    if (server->fd >= 0 && server->fd != keep)
      close(server->fd);
    for (c = server->conns.next; c != &server->conns; c = c->next) {
      uvs_conn_t* conn = container_of(c, uvs_conn_t, node);
      /* A close deferred for a worker in recv has not closed it yet. */
      if (!conn->dgram && (!conn->handle_closing || conn->close_deferred) &&
          conn->fd >= 0 && conn->fd != keep) {
        close(conn->fd);
      }
    }
  }
}


/* The asynchronous close ends when the last handle and the last connection
 * have closed; a synchronous close finishes after its own loop instead. */
static void maybe_finish_close(uvs_server_t* server) {
  if (!server->closing || server->close_sync ||
      !uvs__list_empty(&server->conns)) {
    return;
  }
  release_mailbox(server);
  if (server->pending_closes == 0)
    finish_close(server);
}


/* Once no connection is left, nothing will post for this server: leave
 * the loop's mailbox (its handle's close is counted when it is the last
 * user). */
static void release_mailbox(uvs_server_t* server) {
  if (server->mailbox == NULL)
    return;
  uv_mutex_lock(&server->lock);
  server->mailbox_gone = true;
  uv_mutex_unlock(&server->lock);
  uvs__mailbox_cancel(server->mailbox, &server->stop_msg);
  uvs__mailbox_release(server->mailbox, server);
  server->mailbox = NULL;
}


void uvs__server_conn_done(uvs_server_t* server, uint64_t id) {
  if (server->one_shot && server->one_shot_taken && server->one_shot_id == id)
    server->one_shot_done = true;
  /* A datagram request, a connection or a child less: receiving or
   * accepting may resume (in-flight bound, max_connections_pause). */
  if (!server->closing)
    uvs__server_update_listener(server);
  uvs__drain_check(server);
  maybe_finish_close(server);
}


void uvs__server_closing_handle(uvs_server_t* server) {
  server->pending_closes++;
}


void uvs__server_handle_closed(uvs_server_t* server) {
  server->pending_closes--;
  maybe_finish_close(server);
}


static void on_handle_closed(uv_handle_t* handle) {
  uvs__server_handle_closed(uv_handle_get_data(handle));
}


static void finish_close(uvs_server_t* server) {
  uv_loop_t* owned = server->owned_loop;

  /* A thread still leaving uvs_server_shutdown holds the lock. */
  uv_mutex_lock(&server->lock);
  while (server->shutdown_waiters > 0)
    uv_cond_wait(&server->cond, &server->lock);
  uv_mutex_unlock(&server->lock);
  uvs__drain_cancelled(server);
  if (server->close_cb != NULL) {
    uvs__callback_depth++;
    server->close_cb(server);
    uvs__callback_depth--;
  }
  uvs__free(server->read_buf);
  server->read_buf = NULL;
  if (owned != NULL) {
    uv_run(owned, UV_RUN_NOWAIT);
    uv_loop_close(owned);
    uvs__free(owned);
  }
  /* Detached handlers may still use the server (uvs_conn_server, hooks):
   * the last worker frees it. */
  if (server->pool != NULL) {
    uvs__pool_t* pool = server->pool;
    server->pool = NULL;
    if (server->pool_detached) {
      uvs__pool_close(pool, false, free_server, server);
      return;
    }
    uvs__pool_close(pool, true, NULL, NULL);
  }
  free_server(server);
}


static void free_server(void* arg) {
  uvs_server_t* server = arg;
  registry_remove(server);
  uvs__fork_free(server);
  uv_mutex_destroy(&server->lock);
  uv_mutex_destroy(&server->conns_lock);
  uv_cond_destroy(&server->cond);
  uvs__free(server);
}


static void on_stop_msg(uvs__msg_t* msg) {
  uvs_server_t* server = container_of(msg, uvs_server_t, stop_msg);
  if (stop_requested(server))
    uv_stop(server->loop);
}


void uvs__server_request_stop(uvs_server_t* server) {
  uv_mutex_lock(&server->lock);
  /* The result belongs to the serve_forever or handle_request that runs;
   * with none running it would surface in an unrelated later call. */
  if (server->running || server->serve_state == UVS__SERVING)
    server->stop_status = UVS_ESTOP;
  switch (server->serve_state) {
  case UVS__IDLE_NEW:
    if (!server->running)
      server->stop_pending = true;
    break;
  case UVS__STOPPED:
    break;
  case UVS__SERVING:
    server->stop_requested = true;
    if (!server->mailbox_gone)
      uvs__mailbox_post(server->mailbox, &server->stop_msg);
    break;
  }
  uv_mutex_unlock(&server->lock);
}


static void on_service_timer(uv_timer_t* handle) {
  uvs_server_t* server = container_of(handle, uvs_server_t, service_timer);
  uvs__callback_depth++;
  server->config.hooks.service_actions(server);
  uvs__callback_depth--;
}


static void on_request_timeout(uv_timer_t* handle) {
  uvs_server_t* server = container_of(handle, uvs_server_t, service_timer);
  /* The timeout covers the wait for a request, not its service. */
  if (!server->one_shot_taken) {
    server->one_shot_timed_out = true;
    /* It may fire in UV_RUN_ONCE's timer phase before the poll phase:
     * make that poll return at once instead of blocking for I/O. */
    uv_stop(server->loop);
  }
}
