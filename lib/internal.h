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
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>


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
/* initial-exec: the hot path counts every callback, and the default model
 * of a shared library reaches a thread-local through __tls_get_addr. */
extern _Thread_local int uvs__callback_depth
    __attribute__((tls_model("initial-exec")));


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
/* A request's peer from what the kernel returned; an address uvs cannot
 * read becomes an unnamed peer of `transport`. */
void uvs__addr_peer(uvs_address_t* peer,
                    uvs_transport_t transport,
                    const struct sockaddr* sa,
                    socklen_t len);


/* ---- buf.c ----------------------------------------------------------- */

/* A chunk of a byte queue: bytes [start, end) of data[cap] are queued. */
typedef struct uvs__chunk_s {
  struct uvs__chunk_s* next;
  size_t cap;
  size_t start;
  size_t end;
  char data[];
} uvs__chunk_t;

/* A byte queue: append at the tail, consume from the head. */
typedef struct uvs__buf_s {
  uvs__chunk_t* head;
  uvs__chunk_t* tail;
  size_t len; /* bytes queued */
} uvs__buf_t;

void uvs__buf_init(uvs__buf_t* buf);
/* Frees every chunk; the queue is empty after. */
void uvs__buf_clear(uvs__buf_t* buf);
/* Copies `len` bytes in. Returns 0 or UV_ENOMEM (nothing appended). */
int uvs__buf_append(uvs__buf_t* buf, const void* data, size_t len);
/* Moves up to `n` bytes out into `dst`; returns how many. */
size_t uvs__buf_read(uvs__buf_t* buf, void* dst, size_t n);
/* Moves bytes out into `dst` up to and including the first '\n', at most
 * `n`; sets `*newline` when the '\n' was moved. Returns how many. */
size_t uvs__buf_read_line(uvs__buf_t* buf, char* dst, size_t n, bool* newline);
/* Detaches every chunk (the caller frees them with uvs__buf_free_chunks)
 * and stores the byte count in `*len`; the queue is empty after. */
uvs__chunk_t* uvs__buf_take(uvs__buf_t* buf, size_t* len);
void uvs__buf_free_chunks(uvs__chunk_t* chunk);


/* ---- mailbox.c ------------------------------------------------------- */

/* A wake-up for the loop thread, embedded in the object it concerns. */
typedef struct uvs__msg_s {
  uvs__list_t node;
  void (*run)(struct uvs__msg_s* msg); /* on the loop thread */
  bool queued;                         /* guarded by the mailbox lock */
} uvs__msg_t;

typedef struct uvs__mailbox_s {
  uv_loop_t* loop;
  uv_async_t async;
  uv_mutex_t lock;
  uvs__list_t queue;         /* of uvs__msg_t, under `lock` */
  uvs__list_t registry_node; /* under the registry lock */
  int refs;                  /* servers using it, under the registry lock */
  unsigned holds;            /* loop thread: reasons to keep the loop alive */
  uvs_server_t* closing_server;
} uvs__mailbox_t;

/* The mailbox of `loop`, made on first use; counted per server. Loop
 * thread. Returns 0 or UV_ENOMEM. */
int uvs__mailbox_acquire(uv_loop_t* loop, uvs__mailbox_t** out);
/* Drops `server`'s count; the last one closes the handle, counted in
 * server's pending closes. Loop thread. */
void uvs__mailbox_release(uvs__mailbox_t* mb, uvs_server_t* server);
/* Queues `msg` (once) and wakes the loop. Any thread. */
void uvs__mailbox_post(uvs__mailbox_t* mb, uvs__msg_t* msg);
/* Unqueues `msg` if queued: before its object is freed. Loop thread. */
void uvs__mailbox_cancel(uvs__mailbox_t* mb, uvs__msg_t* msg);
/* Keep the loop alive (the async handle referenced) while held. Loop
 * thread. */
void uvs__mailbox_hold(uvs__mailbox_t* mb);
void uvs__mailbox_unhold(uvs__mailbox_t* mb);


/* ---- pool.c ---------------------------------------------------------- */

typedef struct uvs__pool_s uvs__pool_t;

typedef struct uvs__worker_s {
  uv_thread_t tid;
  uvs__list_t node; /* on threads, then on exited */
  uvs__pool_t* pool;
} uvs__worker_t;

struct uvs__pool_s {
  uv_mutex_t lock;
  uv_cond_t work; /* idle workers wait for a job */
  uv_cond_t gone; /* a worker exited */
  uvs__list_t jobs;
  uvs__list_t threads; /* live workers */
  uvs__list_t exited;  /* exited, not yet joined */
  size_t njobs;
  unsigned nthreads;
  unsigned nidle;
  unsigned max_threads; /* 0: no cap */
  uint64_t idle_ms;
  size_t stack_size;
  bool stopping;
  bool detached;
  void (*run)(uvs__list_t* job);
  void (*on_last)(void* arg); /* detached: after the last worker */
  void* on_last_arg;
};

int uvs__pool_new(uvs__pool_t** out,
                  unsigned max_threads,
                  uint64_t idle_ms,
                  size_t stack_size,
                  void (*run)(uvs__list_t* job));
/* Queues `job`, starting a worker when none is idle and the cap allows.
 * Returns 0, or the thread creation error when no worker exists to run it
 * (the job is not queued then). Loop thread. */
int uvs__pool_submit(uvs__pool_t* pool, uvs__list_t* job);
/* Unqueues every job no worker has started and passes each to `cb`. */
void uvs__pool_cancel_queued(uvs__pool_t* pool, void (*cb)(uvs__list_t* job));
/* Stops the pool: joins every worker (wait), or detaches them, the last
 * freeing the pool and then calling `on_last(arg)` (at once when none
 * runs). The pool is gone, or no longer the caller's, after. */
void uvs__pool_close(uvs__pool_t* pool,
                     bool wait,
                     void (*on_last)(void* arg),
                     void* arg);
/* Test hook: thread records held, live and exited. */
size_t uvs__pool_thread_records(uvs__pool_t* pool);


/* ---- server.c -------------------------------------------------------- */

/* The counters behind uvs_server_stats. Relaxed atomics: any thread reads
 * them. Counters only the loop thread writes (bytes_in, bytes_out) use
 * uvs__stat_loop_add, a plain load and store, so the event-mode hot path
 * pays no locked instruction; the others use uvs__stat_add. Threading
 * workers receive and send on their own: their bytes go to the
 * workers_* counters, which uvs_server_stats adds in. */
typedef struct uvs__stats_s {
  _Atomic uint64_t accepted;
  _Atomic uint64_t rejected_verify;
  _Atomic uint64_t rejected_limit;
  _Atomic uint64_t bytes_in;
  _Atomic uint64_t bytes_out;
  _Atomic uint64_t workers_bytes_in;
  _Atomic uint64_t workers_bytes_out;
  _Atomic uint64_t handler_errors;
  _Atomic uint64_t conn_errors;
  _Atomic uint64_t timeouts;
  _Atomic uint64_t accept_errors;
  _Atomic uint64_t datagrams_oversize;
  _Atomic uint64_t datagrams_dropped;
} uvs__stats_t;

static inline void uvs__stat_add(_Atomic uint64_t* counter, uint64_t n) {
  atomic_fetch_add_explicit(counter, n, memory_order_relaxed);
}

/* Loop thread only: no read-modify-write needed with one writer. */
static inline void uvs__stat_loop_add(_Atomic uint64_t* counter, uint64_t n) {
  atomic_store_explicit(counter,
                        atomic_load_explicit(counter, memory_order_relaxed) + n,
                        memory_order_relaxed);
}

/* The connection timeouts (timeout.c), one queue per kind. */
enum {
  UVS__TIMEOUT_IDLE = 0, /* idle_timeout_ms */
  UVS__TIMEOUT_READ,     /* read_timeout_ms (event mode) */
  UVS__TIMEOUT_WRITE,    /* write_timeout_ms */
  UVS__TIMEOUT_KINDS
};

/* A forked child of a server (fork.c). */
typedef struct uvs__child_s {
  pid_t pid;
  uint64_t id; /* its request's number, as uvs_conn_id */
  uvs_address_t peer;
} uvs__child_t;

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

  /* The server's socket (sock.c). */
  uv_os_sock_t fd; /* -1 when closed */
  bool dgram;      /* udp:// or unixgram: (listen_dgram.c) */
  bool bound;
  bool path_bound; /* uvs bound a Unix socket file: unlink it at close */
  dev_t path_dev;  /* which file that is */
  ino_t path_ino;

  /* Listener (listen_stream.c, listen_dgram.c). */
  bool listening;           /* listen() done; datagrams: activated */
  bool accepting;           /* the user wants accepting (start/serve) */
  bool poll_inited;         /* the poll handle exists */
  bool poll_active;         /* the poll handle is started */
  bool accept_error_logged; /* this burst of listener errors was reported */
  bool accept_backoff;      /* paused after EMFILE, retry timer running */
  uv_poll_t poll;           /* stream listener, unixgram socket */
  uv_timer_t accept_retry;
  uvs__stats_t stats;

  /* Datagrams (listen_dgram.c). */
  uv_udp_t udp;             /* udp:// */
  bool udp_inited;          /* the udp handle exists */
  bool udp_opened;          /* and owns fd */
  bool dgram_drop_logged;   /* this burst of dropped replies was reported */
  bool in_batch;            /* inside a recvmmsg batch's callbacks */
  bool sync_served;         /* sync UDP: a request was served this batch */
  bool sync_paused;         /* sync UDP: receiving waits a loop iteration */
  uvs__list_t dgram_queue;  /* unixgram replies the socket refused */
  size_t dgram_queue_bytes; /* their bytes */
  unsigned dgram_queue_len; /* their number */
  uv_timer_t dgram_retry;   /* retries them */
  uint64_t dgram_retry_ms;  /* its current interval */

  /* Connections (conn.c). `conns_lock` guards the list and the count for
   * uvs_server_foreach from other threads; the loop thread alone changes
   * them. */
  uv_mutex_t conns_lock;
  uvs__list_t conns;
  size_t nconns;
  size_t nopen; /* stream connections not closing yet (max_connections) */
  uint64_t next_conn_id;
  char* read_buf; /* the one buffer every connection reads into */

  /* Timeouts (timeout.c): per kind a queue of connections in deadline
   * order (every deadline of a kind is now + the same duration, so
   * appending keeps the order) and one timer for the earliest. */
  uvs__list_t timeouts[UVS__TIMEOUT_KINDS];
  uint64_t timeout_ms[UVS__TIMEOUT_KINDS]; /* 0: that kind is off */
  uv_timer_t timeout_timer;
  uint64_t timeout_due; /* when it fires (loop ms); 0: stopped */

  /* Drain (drain.c). */
  bool draining;    /* uvs_server_drain was called */
  bool drain_final; /* the deadline passed: closing what is left */
  bool drain_done;  /* its callback ran or is due */
  int drain_status; /* for the callback */
  uvs_server_drain_cb drain_cb;
  uv_timer_t drain_timer;     /* the deadline, then the final grace */
  uint64_t drain_deadline_ns; /* uv_hrtime() of the deadline, for sync I/O */

  /* serve_forever / shutdown, guarded by `lock`. */
  uv_mutex_t lock;
  uv_cond_t cond;
  uvs__serve_state_t serve_state;
  bool stop_requested;       /* stop the running serve_forever */
  bool stop_pending;         /* shutdown came before any serve_forever */
  uint64_t serve_generation; /* serve_forever runs that have returned */
  int shutdown_waiters;      /* threads inside uvs_server_shutdown */
  uv_thread_t serving_thread;
  int stop_status;         /* UVS_ESTOP once a handler asked, until returned */
  uvs__mailbox_t* mailbox; /* the loop's; other threads wake it */
  uvs__msg_t stop_msg;
  bool held; /* the mailbox keeps the loop alive for serve/handle_request */
  uv_timer_t service_timer;

  bool mailbox_gone; /* under `lock`: closing, no more posts */

  /* Threading mode. */
  uvs__pool_t* pool;
  bool pool_detached; /* closed without waiting for handlers */

  /* Forking mode (fork.c). `nchildren` is written on the loop thread
   * under `lock` (uvs_server_child_count reads it from any thread). */
  uvs__child_t* children; /* max_children entries */
  unsigned nchildren;
  uv_signal_t child_signal;
  uv_timer_t children_timer; /* bounds the wait at close */
  bool fork_inited;
  bool child_signal_inited;
  bool children_waiting; /* closing: waiting for the children */
  bool children_killed;  /* the wait is over: they were killed */

  /* Every server of the process (server.c), for a forked child. */
  uvs__list_t registry_node;

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
/* Runs the verify_request hook: true to serve `peer` (also without one). */
bool uvs__server_verify_request(uvs_server_t* server,
                                const uvs_address_t* peer);
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
/* Starts or stops the listener to match the server's state. */
int uvs__server_update_listener(uvs_server_t* server);
/* In a forked child: closes the listening sockets and open connections of
 * every uvs server in the process, except descriptor `keep`. */
void uvs__server_close_inherited(uv_os_sock_t keep);
/* The listener failed for lack of descriptors or memory (or for a reason
 * it cannot tell apart): counted, reported once per burst, and accepting
 * pauses for config.accept_retry_ms instead of spinning. */
void uvs__server_listen_error(uvs_server_t* server, int err);
/* Closes the listener's handles and socket, and the Unix socket file. */
void uvs__server_close_listener(uvs_server_t* server);
/* Stream connections open, or children alive in forking mode, are at
 * config.max_connections. */
bool uvs__server_at_limit(const uvs_server_t* server);
/* A shutdown asked the running serve_forever to return. Any thread. */
bool uvs__server_stop_requested(uvs_server_t* server);
/* A handler returned UVS_ESTOP: stop serve_forever (or make the running
 * handle_request return it) without waiting. Any thread. */
void uvs__server_request_stop(uvs_server_t* server);


/* ---- sock.c ---------------------------------------------------------- */

/* Creates the server's socket for its transport. Returns 0 or the error. */
int uvs__sock_open(uvs_server_t* server);
/* Sets the options, makes room at a Unix path, binds, and reads the real
 * address back. Returns 0, UV_EALREADY, or the error. */
int uvs__sock_bind(uvs_server_t* server);
/* Sets SO_REUSEADDR as configured (never for UDP). */
int uvs__sock_set_reuse(uvs_server_t* server);
/* Removes the Unix socket file this server bound, if configured and still
 * the same file. */
void uvs__sock_unlink(uvs_server_t* server);


/* ---- timeout.c ------------------------------------------------------- */

/* Makes the server's timer (server_new). */
void uvs__timeout_init(uvs_server_t* server);
/* Closes it, counted with uvs__server_closing_handle. */
void uvs__timeout_close(uvs_server_t* server);
/* (Re)starts the connection's timeout of `kind`: it fires its duration
 * from now unless re-armed or disarmed first. Loop thread. */
void uvs__timeout_arm(uvs_conn_t* conn, int kind);
/* The same, measured from `since_ms` (loop milliseconds, not after now):
 * progress the loop learns of late, a threading worker's own I/O. */
void uvs__timeout_arm_since(uvs_conn_t* conn, int kind, uint64_t since_ms);
void uvs__timeout_disarm(uvs_conn_t* conn, int kind);
/* Disarms every kind. */
void uvs__timeout_clear(uvs_conn_t* conn);


/* ---- drain.c --------------------------------------------------------- */

/* Makes the drain timer (server_new). */
void uvs__drain_init(uvs_server_t* server);
/* Something ended (a connection, a child, a queued reply): finishes the
 * drain once nothing is left. */
void uvs__drain_check(uvs_server_t* server);
/* The server closes: a drain under way ends with UV_ECANCELED (its
 * callback runs from finish_close) and its timer closes. */
void uvs__drain_close(uvs_server_t* server);
/* From finish_close: runs a cancelled drain's callback. */
void uvs__drain_cancelled(uvs_server_t* server);


/* ---- listen_stream.c ------------------------------------------------- */

int uvs__listen_stream_activate(uvs_server_t* server);
/* Watches the listener when server->accepting says so and no backoff or
 * limit holds it; stops watching otherwise. Idempotent. */
int uvs__listen_stream_update(uvs_server_t* server);
/* Stops watching and closes the socket; the poll handle's close is counted
 * with uvs__server_closing_handle. */
void uvs__listen_stream_close(uvs_server_t* server);
/* Drain: takes every connection waiting in the backlog now. */
void uvs__listen_stream_take_backlog(uvs_server_t* server);


/* ---- listen_dgram.c -------------------------------------------------- */

/* A unixgram reply the socket refused for longer than this is dropped. */
#define UVS__DGRAM_RETRY_MAX_MS 1000
/* At most this many unixgram replies wait for the socket. */
#define UVS__DGRAM_QUEUE_MAX 1024
/* At most this many datagram requests wait for a worker or run; past it
 * receiving pauses until one is done. */
#define UVS__DGRAM_REQUESTS_MAX 1024

/* Makes the loop's handle for the datagram socket (uv_udp_t for UDP,
 * uv_poll_t for unixgram) and the retry timer. Returns 0 or the error;
 * on failure no handle was made. */
int uvs__listen_dgram_init(uvs_server_t* server);
/* Bytes of the buffer datagrams are read into. */
size_t uvs__listen_dgram_buffer_size(const uvs_config_t* config,
                                     uvs_transport_t transport);
/* Receives when server->accepting says so and no limit holds; stops
 * otherwise. Idempotent. */
int uvs__listen_dgram_update(uvs_server_t* server);
/* Stops receiving, drops queued replies and closes the socket; handle
 * closes are counted with uvs__server_closing_handle. */
void uvs__listen_dgram_close(uvs_server_t* server);
/* Sends a blocking-mode request's reply: the `len` bytes of `chunks` to
 * `peer`. Takes the chunks. Loop thread. */
void uvs__listen_dgram_reply(uvs_server_t* server,
                             const uvs_address_t* peer,
                             uvs__chunk_t* chunks,
                             size_t len);


/* ---- fork.c ---------------------------------------------------------- */

/* Allocates the child table and starts watching SIGCHLD. Returns 0 or the
 * error; uvs__fork_close closes what was made. */
int uvs__fork_init(uvs_server_t* server);
/* Forks for one request: the connection `fd` (stream) or the datagram
 * `data`, `len` (`fd` is the server's socket then). Returns 0 or the fork
 * error (the caller still owns `fd`). */
int uvs__fork_request(uvs_server_t* server,
                      uv_os_sock_t fd,
                      const uvs_address_t* peer,
                      const char* data,
                      size_t len);
/* max_children are alive: the listeners pause. */
bool uvs__fork_full(const uvs_server_t* server);
/* At server close: waits for, kills or hands off the children, and closes
 * the handles (counted with uvs__server_closing_handle). */
void uvs__fork_close(uvs_server_t* server);
/* Sends `signum` to every child alive (drain). */
void uvs__fork_signal_all(uvs_server_t* server, int signum);
void uvs__fork_free(uvs_server_t* server);


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

/* A blocking-mode connection's request side (reqio.c). In threading mode
 * the loop and the worker share it under `lock`; in sync mode only the
 * loop thread uses it. */
typedef struct uvs__io_s {
  struct uvs_conn_s* conn;
  uvs__list_t job; /* threading: the pool's queue */
  uvs__msg_t msg;  /* threading: wake-ups for the loop */
  uv_mutex_t lock;
  uv_cond_t cond;     /* the worker waits for output room or an end */
  uvs__buf_t in;      /* received, not yet read by the handler */
  uvs__buf_t out;     /* written by threads, not yet taken by the loop */
  size_t inflight;    /* taken by the loop, not yet sent */
  int error;          /* the end seen by request I/O: UV_ECANCELED, a reset */
  int failed;         /* threading: the worker's recv or send failed with
                       * this: the loop closes the connection with it */
  int wake_fd;        /* threading: the polling worker's eventfd (`polling`) */
  uint64_t direct_ms; /* threading: uv_hrtime in ms of the worker's last
                       * byte either way (0: none yet), idle progress;
                       * kept only with an idle timeout (`idle_tracked`) */
  bool idle_tracked;  /* threading: the server has an idle timeout */
  bool eof;           /* the peer's FIN follows the bytes in `in` */
  bool polling;       /* threading: the worker waits in poll(2) for input */
  bool blocking;      /* threading: the socket is in blocking mode, for the
                       * worker's recv; the loop makes it non-blocking
                       * before libuv reads or writes it */
  bool rcvtimeo_set;  /* threading: SO_RCVTIMEO is HOT_WAIT_MS (reqio.c) */
  bool in_recv;       /* threading: the worker is in (or entering) a
                       * blocking recv: the descriptor must stay open */
  bool close_wait;    /* threading: the loop waits for in_recv to clear
                       * to close the descriptor (conn->close_deferred) */
  bool drained;       /* threading: the worker's last recv emptied the socket */
  bool loop_reads;    /* threading: the worker waits cold; the loop reads
                       * once for it into `in` (only it takes bytes) */
  bool want_flush;    /* `out` has bytes for the loop */
  bool want_close;    /* uvs_conn_close from a thread */
  bool graceful;    /* ended by a graceful close: the final flush still goes */
  bool want_abort;  /* uvs_conn_abort, or over max_write_queue */
  bool over_cap;    /* the abort is for max_write_queue (UV_ENOBUFS) */
  bool done;        /* the handler has finished */
  bool orphaned;    /* the server closed without waiting: the worker frees */
  bool threaded;    /* threading mode (else sync: fd-direct, no lock) */
  bool fd_closed;   /* threading: the loop closed the descriptor */
  bool handler_set; /* `handler` is the thread running the handler */
  uv_thread_t handler; /* under the lock: uvs_conn_write from it goes
                        * behind what uvs_write buffered */
  bool shut;           /* threading: the loop began closing: the socket is
                        * the loop's alone (no direct recv or send) */
  int wait_room;       /* threading: threads waiting for output to leave */
  /* Copied from the server, which a detached worker may outlive. */
  uvs_request_cb setup;
  uvs_request_cb handle;
  uvs_request_cb finish;
  size_t output_high;
  size_t max_queue;
  size_t wbufsize;
  size_t max_reply; /* a datagram request's reply cap: max_packet_size */
  bool dgram;       /* a datagram request */
  uint64_t read_timeout_ms;  /* 0: none */
  uint64_t write_timeout_ms; /* 0: none (threading: the loop times it) */
  uint64_t idle_timeout_ms;  /* 0: none (threading: the loop times it) */
  uint64_t last_io_ns;       /* sync and forked: uv_hrtime of the last byte */
  /* Handler thread only. */
  int64_t timeout_ms;
  char* wbuf;
  size_t wlen;
} uvs__io_t;

/* Field order is for the event-mode hot path: what a read, a write and
 * uvs_conn_state touch per message follows the handle, and the per-request
 * state follows that, so a message touches libuv's handle and one or two
 * lines more; what only opening, closing, timeouts and the blocking modes
 * use comes first. */
struct uvs_conn_s {
  uvs__list_t node;
  uvs_address_t peer;
  uint64_t id;
  /* Timeouts (timeout.c): a node on the server's queue of each kind
   * (next == NULL: not armed) and its deadline in loop milliseconds. */
  struct {
    uvs__list_t node;
    uint64_t due;
  } timeout[UVS__TIMEOUT_KINDS];
  size_t write_mark; /* libuv's write queue size at the last look */
  uv_shutdown_t shutdown_req;
  uv_timer_t* close_timer;
  int status; /* reason for on_close */
  int pending_closes;
  uv_os_sock_t fd;
  bool worker_ref;     /* threading: a job holds the conn (loop's view) */
  bool worker_read;    /* threading: reading once for a cold-waiting worker */
  bool loop_done;      /* every handle is closed */
  bool fd_adopted;     /* the handle owns the fd (sync: after the handler) */
  bool opened;         /* on_open ran */
  bool eof;            /* the peer's FIN arrived */
  bool shut_done;      /* our FIN is out: everything was sent */
  bool close_deferred; /* threading: uv_close waits for the worker to leave
                        * a blocking recv (io->in_recv) */
  bool shutdown_notified;
  bool request_pending; /* uvs_conn_request_pending: read timeout runs */
  bool dgram;  /* a datagram request: no handle, `fd` is the server's */
  bool forked; /* in a forked child: never touches the loop */
  union {
    uv_tcp_t tcp;   /* tcp:// */
    uv_pipe_t pipe; /* unix: */
    uv_stream_t stream;
    uv_handle_t handle;
  } h; /* unused by a datagram request, which has no handle */
  /* Per message. */
  uvs_server_t* server;
  uvs__io_t* io; /* blocking modes */
  void* state;
  size_t write_queued; /* bytes in queued uv_write requests */
  bool read_paused;    /* by uvs_conn_read_stop */
  bool closing;        /* graceful close or abort under way */
  bool handle_closing; /* uv_close called, or deferred (close_deferred) */
};

static inline bool uvs__timeout_armed(const uvs_conn_t* conn, int kind) {
  return conn->timeout[kind].node.next != NULL;
}

/* Adopts accepted socket `fd` from `peer`: allocates the connection, starts
 * reading and runs on_open. On failure closes `fd` and returns the error. */
int uvs__conn_accept(uvs_server_t* server,
                     uv_os_sock_t fd,
                     const uvs_address_t* peer,
                     uint64_t* id);
/* Serves one datagram of `len` bytes from `peer` as a blocking-mode
 * request: at once in sync mode, on the pool in threading mode. Returns 0
 * or the error (nothing was served). */
int uvs__conn_datagram(uvs_server_t* server,
                       const char* data,
                       size_t len,
                       const uvs_address_t* peer);
/* In a forked child: the request for connection `fd` (or for datagram
 * `data`, `len`). Returns NULL without memory. */
uvs_conn_t* uvs__conn_new_forked(uvs_server_t* server,
                                 uv_os_sock_t fd,
                                 const uvs_address_t* peer,
                                 const char* data,
                                 size_t len,
                                 uint64_t id);
/* Closes at once with `status` (server close: UV_ECANCELED). */
void uvs__conn_close_now(uvs_conn_t* conn, int status);
/* Threading mode, server closing without waiting for handlers: hands
 * connections whose loop side is done to their running workers. */
void uvs__conn_hand_over_all(uvs_server_t* server);
/* Threading mode, server closing: drops a queued job's reference. */
void uvs__conn_cancel_job(uvs__list_t* job);
/* Threading mode: the pool's run function. */
void uvs__conn_run_job(uvs__list_t* job);
/* Not closing: uvs_server_foreach visits it. Any thread. */
bool uvs__conn_is_open(uvs_conn_t* conn);
/* Its timeout of `kind` ran out (timeout.c): closes it. */
void uvs__conn_timed_out(uvs_conn_t* conn, int kind);
/* Drain deadline: stop reading and close gracefully (`abort`: reset). */
void uvs__conn_drain_close(uvs_conn_t* conn, bool abort);


/* ---- reqio.c --------------------------------------------------------- */

/* Makes the request side of a blocking-mode connection; a datagram
 * request's input is `data`, followed by EOF. */
int uvs__reqio_new(uvs_conn_t* conn);
int uvs__reqio_new_datagram(uvs_conn_t* conn, const char* data, size_t len);
void uvs__reqio_free(uvs__io_t* io);
/* Runs setup, handle, finish, flushes uvs_write's buffer, then reports an
 * error to handle_error and a UVS_ESTOP to the server (not from a forked
 * child). Returns 0, the handler's error, or UVS_ESTOP. */
int uvs__reqio_run(uvs_conn_t* conn);
/* The loop closes a threading connection: wakes the handler with `err`. */
void uvs__reqio_cancel(uvs_conn_t* conn, int err);
/* Threading, lock held: wakes the handler from any wait (input, room), to
 * look at io->error again; a blocking recv sees it within HOT_WAIT_MS. */
void uvs__reqio_wake(uvs__io_t* io);
/* Threading, lock held, loop thread: the socket back in non-blocking mode
 * before libuv reads or writes it. */
void uvs__reqio_nonblocking(uvs__io_t* io);
/* uvs_conn_write in the blocking modes: queued and capped (threading, any
 * thread) or sent at once (sync). */
int uvs__reqio_write_any(uvs_conn_t* conn, const void* data, size_t len);
/* uvs_conn_close/abort in the blocking modes: the handler's I/O fails from
 * now on and the loop closes once it can. */
int uvs__reqio_close_any(uvs_conn_t* conn, bool abort);


#endif /* UVS_INTERNAL_H */
