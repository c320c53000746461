/* SPDX-License-Identifier: MIT */
/*
 * Private structures and uvs__ prototypes shared by the lib/ sources, one
 * section per file. Nothing here is installed; the public surface is
 * include/uvs.h.
 */
#ifndef UVS_INTERNAL_H
#define UVS_INTERNAL_H

#include "uvs.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>


/* ---- Helpers --------------------------------------------------------- */

#define UVS__ERR(e)   (-(e))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define container_of(ptr, type, member) \
 ((type*) ((char*) (ptr) -offsetof(type, member)))

/* An intrusive doubly linked list; an empty list points at itself. */
typedef struct uvs__list_s {
  struct uvs__list_s* next;
  struct uvs__list_s* prev;
} uvs__list_t;

static inline void uvs__list_init(uvs__list_t* list) {
  list->next = list;
  list->prev = list;
}

static inline bool uvs__list_empty(const uvs__list_t* list) {
  return list->next == list;
}

static inline void uvs__list_push(uvs__list_t* list, uvs__list_t* node) {
  node->prev = list->prev;
  node->next = list;
  list->prev->next = node;
  list->prev = node;
}

static inline void uvs__list_remove(uvs__list_t* node) {
  node->prev->next = node->next;
  node->next->prev = node->prev;
  uvs__list_init(node);
}


/* ---- Callbacks ------------------------------------------------------ */

/* > 0 while this thread runs a uvs user callback, of any server: a loop is
 * running on this thread then, so nothing may run a loop again (libuv's
 * uv_run is not re-entrant). Defined in server.c. */
extern _Thread_local int uvs__callback_depth;


/* ---- alloc.c --------------------------------------------------------- */

/* Every allocation in lib/ goes through these: one place for tests to inject
 * failures (uvs__alloc_fail_after). */
void* uvs__malloc(size_t size);
void* uvs__calloc(size_t count, size_t size);
void uvs__free(void* ptr);
/* Test hook: the next `n` allocations succeed, then all fail; -1 disables. */
void uvs__alloc_fail_after(long n);
/* Test hook: how many allocations were asked for so far. */
unsigned long uvs__alloc_count(void);


/* ---- addr.c ---------------------------------------------------------- */

/* Fills `addr` from a sockaddr the kernel returned (accept, getsockname,
 * recvfrom). TCP and UDP lengths are cut to the family's own size; a Unix
 * length too short to hold a path is an unnamed peer. Returns 0, or
 * UV_EINVAL for a family uvs does not know, one that does not match
 * `transport`, or a length larger than uvs_address_t holds. */
int uvs__addr_from_sockaddr(uvs_address_t* addr,
                            uvs_transport_t transport,
                            const struct sockaddr* sa,
                            socklen_t len);


/* ---- server.c -------------------------------------------------------- */

/* serve_forever's state machine (socketserver-reference.md 4.1). */
typedef enum {
  UVS__IDLE_NEW = 0, /* no serve_forever has run */
  UVS__SERVING,      /* serve_forever is running */
  UVS__STOPPED       /* a serve_forever has returned */
} uvs__serve_state_t;

struct uvs_server_s {
  uv_loop_t* loop;
  uv_loop_t* owned_loop; /* == loop when uvs made it, else NULL */
  uvs_handler_t handler;
  uvs_config_t config;
  uvs_address_t address; /* requested, then as bound */
  void* data;

  /* Listener (listen_stream.c). */
  uv_os_sock_t fd; /* -1 when closed */
  bool bound;
  bool listening;
  bool accepting;           /* the user wants accepting (start/serve) */
  bool poll_inited;         /* the poll handle exists */
  bool poll_active;         /* the poll handle is started */
  bool accept_error_logged; /* this burst of accept errors was reported */
  bool accept_backoff;      /* paused after EMFILE, retry timer running */
  uv_poll_t poll;
  uv_timer_t accept_retry;
  uint64_t accept_errors;

  /* Connections (conn.c). */
  uvs__list_t conns;
  size_t nconns;
  uint64_t next_conn_id;
  char* read_buf; /* the one buffer every connection reads into */

  /* serve_forever / shutdown, guarded by `lock`. */
  uv_mutex_t lock;
  uv_cond_t cond;
  uvs__serve_state_t serve_state;
  bool stop_requested;       /* stop the running serve_forever */
  bool stop_pending;         /* shutdown came before any serve_forever */
  uint64_t serve_generation; /* serve_forever runs that have returned */
  int shutdown_waiters;      /* threads inside uvs_server_shutdown */
  uv_thread_t serving_thread;
  uv_async_t async; /* wakes the loop from other threads */
  uv_timer_t service_timer;

  /* handle_request. */
  bool running;            /* serve_forever or handle_request runs */
  bool one_shot;           /* accept one connection, then stop */
  bool one_shot_taken;     /* that connection was accepted */
  bool one_shot_done;      /* and is finished (or was rejected) */
  bool one_shot_timed_out; /* no connection came within timeout_ms */
  uint64_t one_shot_id;    /* its uvs_conn_id, 0 when rejected */

  /* Closing. */
  bool closing;
  bool close_sync;    /* uvs_server_close runs the loop itself */
  int pending_closes; /* handles whose close callback is due */
  uvs_server_close_cb close_cb;
};

/* Runs the handle_error hook, or the default one-line log. */
void uvs__server_error(uvs_server_t* server,
                       uvs_conn_t* conn,
                       const uvs_address_t* peer,
                       int status);
/* Runs the shutdown_request hook, if any, for a request about to close. */
void uvs__server_shutdown_request(uvs_server_t* server,
                                  uv_os_sock_t fd,
                                  const uvs_address_t* peer);
/* Counts one more handle whose uv_close callback is due; its callback calls
 * uvs__server_handle_closed. */
void uvs__server_closing_handle(uvs_server_t* server);
void uvs__server_handle_closed(uvs_server_t* server);
/* A connection finished; handle_request uses this to know it is done. */
void uvs__server_conn_done(uvs_server_t* server, uint64_t id);


/* ---- listen_stream.c ------------------------------------------------- */

/* After accept fails for lack of descriptors or memory, accepting pauses
 * this long (Netty and asyncio use 1 s) instead of spinning. */
#define UVS__ACCEPT_RETRY_MS 1000

int uvs__listen_stream_open(uvs_server_t* server);
int uvs__listen_stream_bind(uvs_server_t* server);
int uvs__listen_stream_activate(uvs_server_t* server);
/* Watches the listener when server->accepting says so and no backoff or
 * limit holds it; stops watching otherwise. Idempotent. */
int uvs__listen_stream_update(uvs_server_t* server);
/* Stops watching and closes the socket; the poll handle's close is counted
 * with uvs__server_closing_handle. */
void uvs__listen_stream_close(uvs_server_t* server);


/* ---- conn.c ---------------------------------------------------------- */

/* Write request: one allocation holds the libuv request and, for a copying
 * write, the bytes. */
typedef struct uvs__write_s {
  uv_write_t req;
  struct uvs_conn_s* conn;
  size_t len;          /* bytes still owned by this request */
  uvs_free_cb free_cb; /* nocopy writes */
  void* free_data;
  void* free_arg;
} uvs__write_t;

struct uvs_conn_s {
  uv_tcp_t tcp; /* first: the handle's close callback finds the conn */
  uvs_server_t* server;
  uvs__list_t node;
  uvs_address_t peer;
  uint64_t id;
  size_t write_queued; /* bytes in queued uv_write requests */
  uv_shutdown_t shutdown_req;
  uv_timer_t* close_timer;
  void* state;
  int status; /* reason for on_close */
  int pending_closes;
  bool opened;         /* on_open ran */
  bool eof;            /* the peer's FIN arrived */
  bool read_paused;    /* by uvs_conn_read_stop */
  bool closing;        /* graceful close or abort under way */
  bool shut_done;      /* our FIN is out: everything was sent */
  bool handle_closing; /* uv_close called */
  bool shutdown_notified;
};

/* Adopts accepted socket `fd` from `peer`: allocates the connection, starts
 * reading and runs on_open. On failure closes `fd` and returns the error. */
int uvs__conn_accept(uvs_server_t* server,
                     uv_os_sock_t fd,
                     const uvs_address_t* peer,
                     uint64_t* id);
/* Closes at once with `status` (server close: UV_ECANCELED). */
void uvs__conn_close_now(uvs_conn_t* conn, int status);


#endif /* UVS_INTERNAL_H */
