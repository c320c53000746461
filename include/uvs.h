/* SPDX-License-Identifier: MIT */
/*
 * uvs: Python's socketserver, rebuilt in C on libuv.
 *
 * A user writes a handler (what to do with one client), picks a server kind
 * by its address (tcp://HOST:PORT, udp://HOST:PORT, unix:PATH,
 * unixgram:PATH) and a mode (event, sync, threading or forking), and uvs
 * does the rest: binding, accepting, reading, writing, shutdown.
 * A server runs on the caller's uv_loop_t (embedding) or on a loop of its own
 * (uvs_server_serve_forever).
 *
 * Conventions, as libuv's: functions return 0 (or a count) on success and a
 * negative libuv error code (UV_EINVAL, UV_ENOMEM, ...) on failure; a function
 * that takes a callback and fails never runs it. Unless its comment says
 * otherwise, a function may be called only from the thread that runs the
 * server's loop ("Threads: loop."). Pointers passed to a callback are
 * borrowed until it returns.
 */
#ifndef UVS_H
#define UVS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif


/* ---- Export and version --------------------------------------------- */

#if defined(__GNUC__) || defined(__clang__)
# define UVS_EXTERN __attribute__((visibility("default")))
#else
# define UVS_EXTERN
#endif

#define UVS_VERSION_MAJOR 0
#define UVS_VERSION_MINOR 1
#define UVS_VERSION_PATCH 0
/* (major << 16) | (minor << 8) | patch, as UV_VERSION_HEX. */
#define UVS_VERSION_HEX \
 ((UVS_VERSION_MAJOR << 16) | (UVS_VERSION_MINOR << 8) | (UVS_VERSION_PATCH))


/* ---- Error codes ----------------------------------------------------- */

/* uvs's own codes, below libuv's range (UV_ERRNO_MAX), in the same
 * negative style: XX(name, value, message). */
#define UVS_ERRNO_MAP(XX) \
 XX(ESTOP, -4200, "the handler asked the server to stop")

typedef enum uvs_errno_e {
#define UVS__ERRNO_ENUM(name, value, message) UVS_##name = (value),
  UVS_ERRNO_MAP(UVS__ERRNO_ENUM)
#undef UVS__ERRNO_ENUM
  UVS_ERRNO_MIN = -4727 /* the lowest uvs code (UVS_ECHILD_SIGNAL(127)) */
} uvs_errno_t;

/* Forking mode: how a child ended badly, as the status handle_error gets
 * in the parent (with a NULL conn and the request's peer): an exit status
 * from 3 to 255, or the number of the signal that killed it. */
#define UVS_ECHILD_EXIT(n)        (-4300 - (n))
#define UVS_ECHILD_SIGNAL(s)      (-4600 - (s))
#define UVS_IS_ECHILD_EXIT(e)     ((e) <= -4301 && (e) >= -4555)
#define UVS_IS_ECHILD_SIGNAL(e)   ((e) <= -4601 && (e) >= -4727)
#define UVS_ECHILD_EXIT_STATUS(e) (-4300 - (e))
#define UVS_ECHILD_SIGNAL_NUM(e)  (-4600 - (e))


/* ---- Opaque types ---------------------------------------------------- */

typedef struct uvs_server_s uvs_server_t;
typedef struct uvs_conn_s uvs_conn_t;


/* ---- Enums ----------------------------------------------------------- */

/* The transport, chosen by the address scheme. */
typedef enum uvs_transport_e {
  UVS_TRANSPORT_TCP = 1, /* tcp://HOST:PORT */
  UVS_TRANSPORT_UDP,     /* udp://HOST:PORT */
  UVS_TRANSPORT_UNIX,    /* unix:PATH (stream) */
  UVS_TRANSPORT_UNIXGRAM /* unixgram:PATH (datagram) */
} uvs_transport_t;

/* How handlers run (socketserver's mixins), on every transport. */
typedef enum uvs_mode_e {
  UVS_MODE_EVENT = 0, /* on_open/on_data/on_close on the loop thread */
  UVS_MODE_SYNC,      /* plain TCPServer: blocking handle(), one at a time */
  UVS_MODE_THREADING, /* ThreadingMixIn: blocking handle() on a worker pool */
  UVS_MODE_FORKING    /* ForkingMixIn: a child process per request; see
                       * "Forking mode" below uvs_server_child_count */
} uvs_mode_t;


/* ---- Addresses ------------------------------------------------------- */

/* Longest text uvs_address_format writes, with its NUL: "unixgram:" plus
 * the longest sockaddr_un path, which is the longest form. */
#define UVS_ADDRSTRLEN 128

/* A parsed, resolved address: a plain struct the caller may fill or read.
 * For TCP and UDP `sa` holds a sockaddr_in or sockaddr_in6; for the Unix
 * transports a sockaddr_un (an abstract name starts with a NUL byte).
 * `len` is the length of the sockaddr in bytes. */
typedef struct uvs_address_s {
  uvs_transport_t transport;
  socklen_t len;
  union {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
    struct sockaddr_un un;
    struct sockaddr_storage storage;
  } u;
} uvs_address_t;


/* ---- Callbacks ------------------------------------------------------- */

/* Blocking-mode handler steps (setup, handle, finish). Return 0; a
 * negative error code, which reaches handle_error (socketserver's
 * Exception); or UVS_ESTOP, which does not reach handle_error and stops
 * the server instead: serve_forever and handle_request return UVS_ESTOP
 * (socketserver's SystemExit). */
typedef int (*uvs_request_cb)(uvs_conn_t* conn);
/* A connection was accepted (event mode). */
typedef void (*uvs_open_cb)(uvs_conn_t* conn);
/* `len` bytes arrived (event mode). `data` is borrowed until return. */
typedef void (*uvs_data_cb)(uvs_conn_t* conn, const char* data, size_t len);
/* The peer shut down its write side (event mode). */
typedef void (*uvs_eof_cb)(uvs_conn_t* conn);
/* Everything queued has been sent: uvs_conn_write_queue_size went from
 * above zero back to zero (event mode; use it to resume reading). */
typedef void (*uvs_drain_cb)(uvs_conn_t* conn);
/* The connection is closed; the last callback for it. `status` is 0 for an
 * orderly close, UV_ECANCELED when the server closed it, else the error
 * that ended it (UV_ECONNRESET, UV_EPIPE, ...). */
typedef void (*uvs_close_cb)(uvs_conn_t* conn, int status);
/* A datagram of `len` bytes (0 for an empty one) arrived from `peer`
 * (event mode, udp:// and unixgram:). `data` and `peer` are borrowed until
 * return; answer with uvs_server_send_to. An unbound unixgram client has
 * an unnamed `peer` (its text form is "unixgram:") and cannot be
 * answered. */
typedef void (*uvs_datagram_cb)(uvs_server_t* server,
                                const char* data,
                                size_t len,
                                const uvs_address_t* peer);
/* Frees the buffer given to uvs_conn_write_nocopy. */
typedef void (*uvs_free_cb)(void* data, void* arg);

/* Hooks (socketserver's overridable server methods). */
/* Return nonzero to accept the connection from `peer`, 0 to reject it
 * (it is shut down and closed at once). Runs before uvs allocates anything
 * for the connection. */
typedef int (*uvs_verify_request_cb)(uvs_server_t* server,
                                     const uvs_address_t* peer);
/* An error happened while processing the request from `peer`. `conn` may
 * be NULL when the error has no connection (an accept error). In
 * threading mode it runs on the worker thread for a handler's error, as in
 * Python; in forking mode a handler's error is reported in the child
 * process, and the parent hears only of children that crashed or exited
 * with another status (UVS_ECHILD_*); otherwise it runs on the loop
 * thread. */
typedef void (*uvs_handle_error_cb)(uvs_server_t* server,
                                    uvs_conn_t* conn,
                                    const uvs_address_t* peer,
                                    int status);
/* uvs_server_handle_request timed out; its return value is returned by
 * uvs_server_handle_request. */
typedef int (*uvs_handle_timeout_cb)(uvs_server_t* server);
/* Runs every poll interval while uvs_server_serve_forever runs. */
typedef void (*uvs_service_actions_cb)(uvs_server_t* server);
/* A request is about to be shut down (write side) and closed: once per
 * accepted connection, served or refused (by verify_request or
 * max_connections; not for one uvs failed to take in, which reaches
 * handle_error). `fd` is still
 * open. Runs on the loop thread, after finish in the blocking modes, except
 * that a threading connection that ends while its handler still runs (a
 * reset, a server close, uvs_conn_close) is shut down at that moment. */
typedef void (*uvs_shutdown_request_cb)(uvs_server_t* server,
                                        uv_os_sock_t fd,
                                        const uvs_address_t* peer);
/* uvs_server_close finished; `server` is freed when this returns. */
typedef void (*uvs_server_close_cb)(uvs_server_t* server);
/* uvs_server_drain finished: `status` is 0 when every connection ended
 * by itself before the deadline, UV_ETIMEDOUT when some had to be closed
 * at the deadline, UV_ECANCELED when uvs_server_close came first. */
typedef void (*uvs_server_drain_cb)(uvs_server_t* server, int status);
/* Called by uvs_server_foreach for one connection; `conn` is valid until
 * it returns. It must not block or wait for the loop. */
typedef void (*uvs_foreach_cb)(uvs_conn_t* conn, void* arg);


/* ---- Plain structs the caller fills ---------------------------------- */

/* socketserver's overridable server methods. A NULL entry means
 * socketserver's default, given per field. */
typedef struct uvs_hooks_s {
  uvs_verify_request_cb verify_request;     /* default: accept all */
  uvs_handle_error_cb handle_error;         /* default: one line to stderr */
  uvs_handle_timeout_cb handle_timeout;     /* default: return UV_ETIMEDOUT */
  uvs_service_actions_cb service_actions;   /* default: nothing */
  uvs_shutdown_request_cb shutdown_request; /* default: nothing */
} uvs_hooks_t;

/* Server options. Fill with uvs_config_init, then change fields. */
typedef struct uvs_config_s {
  /* How handlers run. Default UVS_MODE_EVENT. */
  uvs_mode_t mode;
  /* Bind and listen inside uvs_server_new (socketserver's
   * bind_and_activate). Default 1. Set 0 to call uvs_server_bind and
   * uvs_server_activate yourself, with socket options set in between. */
  int bind_and_activate;
  /* listen() backlog (request_queue_size). Default SOMAXCONN, not Python's
   * 5: a burst of connects overflows 5 and clients see resets or stalls;
   * the kernel clamps it to net.core.somaxconn anyway. */
  int request_queue_size;
  /* SO_REUSEADDR (allow_reuse_address). Default 1, not Python's 0: a
   * restarted server must not fail with EADDRINUSE because of TIME_WAIT
   * sockets; on POSIX it never lets two live listeners share a port. It
   * is never set on UDP, where Linux would let two live sockets share a
   * port (use allow_reuse_port for that). */
  int allow_reuse_address;
  /* SO_REUSEPORT (allow_reuse_port). Default 0: it lets several live
   * sockets share one port, which must be asked for. */
  int allow_reuse_port;
  /* IPV6_V6ONLY for IPv6 addresses. Default 0 (dual stack: tcp://[::]:P
   * also accepts IPv4 clients), set explicitly so the result does not
   * depend on the net.ipv6.bindv6only sysctl. */
  int ipv6_only;
  /* uvs_server_handle_request's wait for a request, in milliseconds
   * (socketserver's timeout). Default -1: wait forever (Python's None). */
  int64_t timeout_ms;
  /* Connections accepted per listener wake-up at most, so one busy
   * listener cannot starve the rest of the loop. Default 16. */
  unsigned accept_batch;
  /* After a graceful close has sent everything and shut down the write
   * side, how long uvs waits for the peer's FIN (discarding what it
   * still sends) before closing. Closing at once would make the kernel
   * answer unread input with a reset, which can destroy the reply on its
   * way to the peer. Milliseconds, default 2000. */
  uint64_t close_linger_ms;
  /* The longest a graceful close may take from uvs_conn_close until the
   * last queued byte is sent: a peer that stops reading would otherwise
   * hold the connection and its output forever. Past it the connection is
   * reset and on_close gets UV_ETIMEDOUT. Milliseconds, default 30000; 0:
   * no limit. */
  uint64_t close_timeout_ms;
  /* Size of the server's one read buffer that the loop reads every
   * connection into (an idle connection holds none; a threading handler's
   * reads receive into its own buffer). Default 65536. */
  size_t read_buffer_size;
  /* After accept (or a datagram receive) fails for lack of descriptors
   * or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), accepting pauses this
   * long instead of spinning the loop, and the failure is reported to
   * handle_error once per burst. Milliseconds, default 1000 (as Netty and
   * asyncio). Must be above 0. */
  uint64_t accept_retry_ms;

  /* ---- Limits and timeouts (stream connections) ---- */
  /* Most connections open at once (forking mode: children alive at once;
   * max_children, which pauses accepting, applies first when it is not
   * above this). A connection past it is accepted and closed
   * at once: its client sees EOF at once instead of waiting in the
   * backlog, and it is counted in uvs_stats_t.rejected_limit; open
   * connections are unaffected. Default 0: no limit. Ignored by datagram
   * servers. */
  unsigned max_connections;
  /* At max_connections, stop accepting instead (connections wait in the
   * backlog until one closes), as max_children does. Default 0. */
  int max_connections_pause;
  /* A connection with no byte received or sent for this long is closed
   * gracefully; on_close (and, in the blocking modes, the handler's
   * request I/O) sees UV_ETIMEDOUT. Milliseconds, default 0: none. */
  uint64_t idle_timeout_ms;
  /* A request that arrives too slowly (slowloris) closes its connection
   * with UV_ETIMEDOUT. Blocking modes: each read call (uvs_recv,
   * uvs_read_exact, uvs_readline) must complete within it however the
   * bytes trickle in. Event mode: it runs while the handler has marked a
   * request incomplete with uvs_conn_request_pending. Milliseconds,
   * default 0: none. */
  uint64_t read_timeout_ms;
  /* A peer that does not read: while output waits, the socket must take
   * some of it within this long, else the connection is reset with
   * UV_ETIMEDOUT. A slow peer that keeps reading is not cut off.
   * Milliseconds, default 0: none (max_write_queue and close_timeout_ms
   * still bound memory and closing). */
  uint64_t write_timeout_ms;
  /* socketserver's overridable methods. Default: all NULL. */
  uvs_hooks_t hooks;

  /* ---- Threading mode (ThreadingMixIn) ---- */
  /* Most worker threads at once. Default 256, not Python's unbounded: a
   * flood of connections must not become a flood of threads. Requests
   * beyond it wait for a free worker in arrival order. 0: no cap, one
   * thread per concurrent request (Python's behaviour); long-lived
   * handlers such as a chat need that, or a cap above their clients. */
  unsigned max_threads;
  /* An idle worker exits after this many milliseconds without a request;
   * the pool grows again on demand. Default 10000. */
  uint64_t thread_idle_ms;
  /* Stack size of each worker thread in bytes; 0 (the default) uses the
   * system's default. */
  size_t thread_stack_size;
  /* socketserver's block_on_close: uvs_server_close waits for every
   * running handler to return. Default 1. Handlers blocked in request I/O
   * return UV_ECANCELED at once when the server closes, so the wait is
   * only for work a handler does outside uvs. */
  int block_on_close;
  /* socketserver's daemon_threads: 1 means uvs_server_close never waits
   * for handlers, whatever block_on_close says. Default 0. */
  int daemon_threads;

  /* ---- Forking mode (ForkingMixIn) ---- */
  /* Most children alive at once (max_children). Default 40, as Python.
   * At the limit accepting pauses (connections wait in the backlog,
   * datagrams in the socket's buffer) until a child exits. */
  unsigned max_children;
  /* With block_on_close, the longest uvs_server_close waits for running
   * children; the ones still alive then are killed (SIGKILL) and reaped,
   * so no zombie outlives the close. Milliseconds, default 300000 (Python's
   * ForkingMixIn.timeout). Without block_on_close the children are left to
   * finish and a background thread reaps them. */
  uint64_t children_wait_ms;

  /* ---- Request I/O (StreamRequestHandler) ---- */
  /* Each blocking request I/O call (uvs_recv, uvs_readline, uvs_sendall,
   * ...) fails with UV_ETIMEDOUT when it cannot finish within this many
   * milliseconds (StreamRequestHandler.timeout). Default -1: no timeout,
   * as Python; uvs_conn_set_timeout changes it for one request. */
  int64_t request_timeout_ms;
  /* Bytes uvs_write collects before sending (StreamRequestHandler's
   * wbufsize). Default 0: unbuffered, every uvs_write is a uvs_sendall,
   * as Python. */
  size_t wbufsize;
  /* Set TCP_NODELAY on each connection (disable_nagle_algorithm). Default
   * 1, not Python's 0: uvs sends what a handler writes at once, and with
   * Nagle's algorithm a reply written in pieces (a header, then a body; a
   * large uvs_sendall) holds its last small piece until the peer's
   * delayed ACK, 40 ms on Linux. 0 lets the kernel coalesce small writes.
   * Ignored for Unix streams, which have no Nagle algorithm (Python's
   * setup fails there with EOPNOTSUPP). */
  int disable_nagle_algorithm;
  /* Threading mode: unsent bytes above which uvs_sendall and uvs_flush
   * wait for the socket to take them. Default 262144. */
  size_t output_high_water;
  /* Unsent bytes a connection may hold from uvs_conn_write, which never
   * blocks: a write past it closes the connection (UV_ENOBUFS), so a
   * peer that stops reading cannot grow memory or hold up a writer that
   * fans out to many connections. Default 0: no cap. uvs_sendall waits
   * instead and is never cut off by it. In threading mode bytes count once
   * the socket has refused some (the loop picking writes up late is not a
   * slow peer), and all unsent bytes count against four times the cap. */
  size_t max_write_queue;

  /* ---- Datagrams (udp://, unixgram:) ---- */
  /* The largest datagram served (max_packet_size), in both directions.
   * Default 65536, not Python's 8192, which silently truncates longer
   * datagrams: 65536 holds every UDP payload (65507 bytes over IPv4). A
   * longer datagram is never truncated: it is dropped, counted, and
   * reported to handle_error as UV_EMSGSIZE with a NULL conn and the
   * sender's address. A reply that would grow past it fails with
   * UV_EMSGSIZE. Replies the socket cannot take at once wait in a queue
   * of at most output_high_water bytes; past it a reply is dropped
   * (UV_ENOBUFS). */
  size_t max_packet_size;

  /* ---- Unix sockets (unix:, unixgram:) ---- */
  /* Remove the socket file uvs created when the server closes, or when
   * uvs_server_drain closes the listener (Python never does). Default 1; 0
   * keeps it. The file is removed only when it is still the one uvs bound. A
   * stale socket file at the path (nobody listening) is always replaced at
   * bind; a live one gives UV_EADDRINUSE; a path that is not a socket is never
   * removed. */
  int unlink_on_close;
} uvs_config_t;

/* What one connection does: socketserver's RequestHandlerClass. uvs copies
 * the table; NULL entries take the defaults given per field. */
typedef struct uvs_handler_s {
  /* Bytes of per-request state (the handler instance's attributes):
   * allocated and zeroed by uvs before the first callback, freed after
   * the last; see uvs_conn_state. Default 0. */
  size_t state_size;

  /* Blocking modes (sync, threading, forking), socketserver's order:
   * setup, then handle, then finish, which runs even when handle fails;
   * when setup fails neither runs. After finish uvs flushes uvs_write's
   * buffer, then shuts the connection down and closes it. A NULL step
   * does nothing. In threading mode they run on a worker thread, in sync
   * mode on the loop thread. */
  uvs_request_cb setup;
  uvs_request_cb handle;
  uvs_request_cb finish;

  /* Event mode, on the loop thread. Streams (tcp://, unix:): */
  uvs_open_cb on_open;   /* default: nothing */
  uvs_data_cb on_data;   /* default: the bytes are discarded */
  uvs_eof_cb on_eof;     /* default: uvs_conn_close (flush, then close) */
  uvs_drain_cb on_drain; /* default: nothing */
  uvs_close_cb on_close; /* default: nothing */
  /* Datagrams (udp://, unixgram:): one call per datagram. Default: the
   * datagram is discarded. */
  uvs_datagram_cb on_datagram;
} uvs_handler_t;


/* What a server has done, for uvs_server_stats. Counters only grow,
 * from uvs_server_new on, except the two gauges `active` and
 * `children`. In forking mode the bytes, handler errors and timeouts of
 * the children are theirs: the parent counts what it sees (connections
 * accepted, children that crashed or exited badly). */
typedef struct uvs_stats_s {
  uint64_t accepted;           /* connections accepted; datagrams received */
  uint64_t active;             /* open connections (connection_count) now */
  uint64_t children;           /* forking mode: children alive now */
  uint64_t rejected_verify;    /* refused by the verify_request hook */
  uint64_t rejected_limit;     /* closed at once past max_connections */
  uint64_t bytes_in;           /* bytes received (datagram payloads too) */
  uint64_t bytes_out;          /* bytes the socket took */
  uint64_t handler_errors;     /* errors handle_error reported for requests:
                                * a handler step's, a child's bad end */
  uint64_t conn_errors;        /* connections ended by a network error (a
                                * reset, a failed send) */
  uint64_t timeouts;           /* connections closed by the idle, read or
                                * write timeout */
  uint64_t accept_errors;      /* accept or receive failures (EMFILE, ...) */
  uint64_t datagrams_oversize; /* dropped: over max_packet_size */
  uint64_t datagrams_dropped;  /* replies dropped: queue full, peer gone */
} uvs_stats_t;


/* ---- Library --------------------------------------------------------- */

/** Returns UVS_VERSION_HEX of the library that is running. Threads: any. */
UVS_EXTERN unsigned int uvs_version(void);

/** Returns the running library's version as "MAJOR.MINOR.PATCH", a static
 * string. Threads: any. */
UVS_EXTERN const char* uvs_version_string(void);

/** Returns a static message for error code `err` (libuv's message for
 * libuv codes, "unknown error" otherwise). Threads: any. */
UVS_EXTERN const char* uvs_strerror(int err);

/** Returns the static name of error code `err` ("EINVAL", ...). Threads:
 * any. */
UVS_EXTERN const char* uvs_err_name(int err);


/* ---- Addresses ------------------------------------------------------- */

/** Parses `text` (tcp://HOST:PORT, udp://HOST:PORT, unix:PATH,
 * unixgram:PATH; the scheme is case-insensitive) into `addr`. HOST is an
 * IPv4 literal, an IPv6 literal in brackets with an optional %scope
 * (`[fe80::1%eth0]`), or a host name, resolved with getaddrinfo (blocking;
 * IPv4 results first, as Python's AF_INET default). PORT is 0 to 65535 (0:
 * any free port). PATH is not empty; `@name` is a Linux abstract name
 * (`./@x` names a file). Returns 0; UV_EINVAL for malformed text;
 * UV_ENAMETOOLONG for a path longer than sockaddr_un holds (never
 * truncated); a UV_EAI_* code when the host or scope does not resolve. On
 * failure `addr` is unchanged. Threads: any. */
UVS_EXTERN int uvs_address_parse(const char* text, uvs_address_t* addr);

/** Formats `addr` as text that uvs_address_parse reads back into `buf`
 * of `*size` bytes (UVS_ADDRSTRLEN is always enough), and sets `*size` to
 * its length without the NUL. An unnamed Unix socket (an unbound client)
 * formats as its scheme alone ("unix:" or "unixgram:"), which does not
 * parse back. Returns 0, UV_EINVAL for
 * an address it cannot format (unknown transport, an abstract name with a
 * NUL byte), or UV_ENOBUFS with `*size` set to the bytes needed, NUL
 * included, and nothing written. Threads: any. */
UVS_EXTERN int uvs_address_format(const uvs_address_t* addr,
                                  char* buf,
                                  size_t* size);


/* ---- Config ---------------------------------------------------------- */

/** Fills `config` with the defaults documented on each field of
 * uvs_config_t. Threads: any. */
UVS_EXTERN void uvs_config_init(uvs_config_t* config);


/* ---- Server: lifecycle ----------------------------------------------- */

/** Makes a server for `address` on `loop` and stores it in `*server`.
 * With a NULL `loop` the server makes and owns a loop of its own
 * (uvs_server_loop returns it). With config->bind_and_activate (the
 * default) it also binds and listens, so the port is known on return; it
 * does not accept until uvs_server_start, serve_forever or handle_request.
 * uvs copies `address`, `handler` and `config` (NULL config: defaults).
 * Returns 0, UV_EINVAL (bad address, handler or config), UV_ENOMEM, or
 * the bind or listen error (UV_EADDRINUSE, UV_EACCES, ...). On failure
 * `*server` is NULL and nothing is left open (in the one rare case where
 * handles were already made on the caller's loop, they finish closing when that
 * loop next runs). Threads: the loop's, or any thread for a NULL loop. */
UVS_EXTERN int uvs_server_new(uv_loop_t* loop,
                              uvs_server_t** server,
                              const char* address,
                              const uvs_handler_t* handler,
                              const uvs_config_t* config);

/** Binds the server's socket (socketserver's server_bind), applying
 * SO_REUSEADDR, SO_REUSEPORT and IPV6_V6ONLY as configured. Returns 0,
 * UV_EALREADY when bound already, or the bind error. */
UVS_EXTERN int uvs_server_bind(uvs_server_t* server);

/** Listens with the configured backlog (socketserver's server_activate);
 * for a datagram server it only marks the server active, as Python's does
 * nothing. Returns 0, UV_EINVAL when not bound, UV_EALREADY when active,
 * or the listen error. */
UVS_EXTERN int uvs_server_activate(uvs_server_t* server);

/** Starts accepting on the loop without running it, for programs that run
 * the loop themselves (embedding); binds and activates first when that has
 * not been done. Returns 0 (also when accepting already, and after
 * uvs_server_drain, which stopped accepting for good) or the bind or
 * listen error. */
UVS_EXTERN int uvs_server_start(uvs_server_t* server);

/** Stops accepting; open connections go on being served, and connections
 * that arrive wait in the listen backlog until uvs_server_start (datagrams
 * wait in the socket's receive buffer). Returns 0. */
UVS_EXTERN int uvs_server_stop(uvs_server_t* server);

/** Starts accepting and runs the server's loop until uvs_server_shutdown,
 * calling the service_actions hook every `poll_interval_ms` (0: never).
 * Unlike Python, the interval does not delay a shutdown. When it returns
 * the server no longer accepts; open connections stay open, unserved,
 * until the loop runs again or uvs_server_close. If shutdown was requested
 * before any serve_forever ran, returns 0 at once. Returns 0; UVS_ESTOP
 * when a handler step returned UVS_ESTOP; UV_EBUSY
 * while serve_forever or handle_request runs, or from inside any uvs
 * callback (a loop runs on this thread already); UV_EINVAL while closing;
 * or a bind or listen error. Threads: one thread at a time, which becomes
 * the loop's thread. */
UVS_EXTERN int uvs_server_serve_forever(uvs_server_t* server,
                                        uint64_t poll_interval_ms);

/** Stops uvs_server_serve_forever. From another thread it wakes the loop
 * at once and returns when serve_forever has returned. From the loop
 * thread (inside a callback) it asks the loop to stop and returns at once;
 * serve_forever returns when the callback has returned: never a deadlock.
 * When serve_forever has run and returned already, it does nothing (no
 * stale flag: the next serve_forever serves normally). When no
 * serve_forever has run yet, the request is remembered and the first one
 * returns at once (it does not wait for it). Returns 0. Call it only
 * before uvs_server_close; a close waits for shutdown calls still
 * returning. Threads: any. */
UVS_EXTERN int uvs_server_shutdown(uvs_server_t* server);

/** Serves exactly one request: waits up to config->timeout_ms for a
 * connection, accepts it and runs the loop until that connection is
 * closed, then returns 0 with accepting as it was before the call. A
 * connection rejected by verify_request counts as the request. On timeout
 * it calls the handle_timeout hook and returns its value (default
 * UV_ETIMEDOUT); the timeout covers the wait for a request only, as in
 * Python, and a connection already waiting is served even with timeout 0.
 * In every mode the request is served to its end before this returns
 * (Python's threading mode returns once the thread has started; uvs's
 * request I/O needs the loop to run). Returns UVS_ESTOP when a handler
 * step returned it, UV_EBUSY while serve_forever or handle_request runs or from
 * inside any uvs callback, UV_EINVAL while closing or after
 * uvs_server_drain, or a bind or listen error. */
UVS_EXTERN int uvs_server_handle_request(uvs_server_t* server);

/** Stops listening, closes the listening socket and every connection
 * (their on_close gets UV_ECANCELED; a handler blocked in request I/O gets
 * UV_ECANCELED at once), and frees the server. In threading mode it first
 * waits for running handlers to return when config->block_on_close is set
 * and daemon_threads is not; otherwise those handlers go on in the
 * background, must no longer use the server, and their memory is freed
 * when they return. Queued requests that no worker started are dropped
 * without running. With a NULL
 * `cb` it runs the loop until all is closed and returns with everything
 * freed; called from inside a uvs callback (the loop is running) it
 * returns at once and the rest completes on the loop. With a `cb` it
 * returns at once and `cb` runs on the loop once all is closed; the server
 * is freed when `cb` returns. A server that owns its loop (NULL loop at
 * uvs_server_new) always closes synchronously, runs `cb` before returning,
 * and frees the loop too; it must be closed from outside that loop.
 * Returns 0; UV_EBUSY (nothing done) while serve_forever or handle_request
 * runs, or for an owned loop from inside one of its callbacks. */
UVS_EXTERN int uvs_server_close(uvs_server_t* server, uvs_server_close_cb cb);


/** Drains the server, the graceful stop: stops accepting at once (a
 * stream listener first takes the connections already waiting in its
 * backlog, then closes, so new clients are refused rather than left
 * waiting; in sync mode, whose requests run one at a time on the loop,
 * the clients waiting in the backlog are refused with the listener; a
 * datagram server stops receiving and keeps its socket for replies), and
 * lets open connections, handlers and children go on until
 * they end by themselves, up to `deadline_ms` milliseconds. At the
 * deadline every connection left stops being read and is closed
 * gracefully: output already queued is flushed and the peer's FIN awaited
 * for at most config->close_linger_ms more; then what is left is reset
 * (children get SIGTERM at the deadline and SIGKILL after that grace).
 * Blocked request I/O returns UV_ECANCELED at the deadline (a threading
 * handler waiting for input without a request timeout within 100 ms of
 * it, README "Request I/O"). `cb` runs on
 * the loop once nothing is left, never before this returns; the server
 * then only awaits uvs_server_close. Returns 0, UV_EALREADY when a drain
 * runs or ran, or UV_EINVAL (NULL `cb`, closing). */
UVS_EXTERN int uvs_server_drain(uvs_server_t* server,
                                uint64_t deadline_ms,
                                uvs_server_drain_cb cb);


/* ---- Server: properties ---------------------------------------------- */

/** Fills `stats` with the server's counters (see uvs_stats_t). Returns 0
 * or UV_EINVAL. Each counter is read atomically, the set is not a single
 * snapshot. Threads: any, until uvs_server_close is called. */
UVS_EXTERN int uvs_server_stats(const uvs_server_t* server, uvs_stats_t* stats);

/** Formats the bound address (the real port after binding port 0) as a
 * URI into `buf` of `*size` bytes, as uvs_address_format. Returns 0,
 * UV_ENOBUFS with `*size` set to the bytes needed, or UV_EINVAL when not
 * bound. */
UVS_EXTERN int uvs_server_address(const uvs_server_t* server,
                                  char* buf,
                                  size_t* size);

/** Returns the listening socket's descriptor (socketserver's fileno), or
 * UV_EBADF when it has none. The server still owns it. */
UVS_EXTERN int uvs_server_fileno(const uvs_server_t* server);

/** Returns the loop the server runs on (the owned one for a NULL loop). */
UVS_EXTERN uv_loop_t* uvs_server_loop(const uvs_server_t* server);

/** Returns the number of connections accepted and not yet closed: one
 * stops counting just before its on_close runs. For a datagram server in
 * sync and threading mode, the datagram requests being served. Forking
 * mode keeps no connections (uvs_server_child_count counts children). Threads:
 * any in threading mode. */
UVS_EXTERN size_t uvs_server_connection_count(const uvs_server_t* server);

/** Calls `cb(conn, arg)` for every open connection, in the order they
 * were accepted, for fan-out (a chat broadcast). No connection is freed
 * while `cb` runs, and connections closed meanwhile are skipped; `cb` may
 * call uvs_conn_write, uvs_conn_close and the property getters, and must
 * not block. Returns the number of connections visited, or UV_EINVAL.
 * Threads: any in threading mode; the loop's in event and sync mode. */
UVS_EXTERN int uvs_server_foreach(uvs_server_t* server,
                                  uvs_foreach_cb cb,
                                  void* arg);

/** Returns the user data set with uvs_server_set_data (initially NULL).
 * Threads: any. */
UVS_EXTERN void* uvs_server_get_data(const uvs_server_t* server);

/** Stores `data` on the server; uvs never reads or frees it. Threads: any,
 * before other threads read it. */
UVS_EXTERN void uvs_server_set_data(uvs_server_t* server, void* data);


/** Sends `len` bytes of `data` (copied) as one datagram to `peer`, from
 * the server's socket (udp:// and unixgram: servers, any mode). What the
 * socket cannot take at once is queued and sent in order. Returns 0 (sent
 * or queued); UV_EINVAL (not a datagram server, a `peer` of another
 * transport, or an unnamed unixgram peer, which cannot be answered);
 * UV_EMSGSIZE when `len` is above config->max_packet_size; UV_ENOBUFS when
 * the queue is over config->output_high_water (the datagram is dropped);
 * UV_ENOMEM; or the send error (for unixgram: UV_ECONNREFUSED or
 * UV_ENOENT when the client has gone). A queued datagram the socket still
 * refuses after a second is dropped, as the network would. */
UVS_EXTERN int uvs_server_send_to(uvs_server_t* server,
                                  const uvs_address_t* peer,
                                  const void* data,
                                  size_t len);


/** Returns the number of forked children alive and not yet reaped
 * (forking mode; 0 in the other modes). Threads: any. */
UVS_EXTERN unsigned uvs_server_child_count(const uvs_server_t* server);

/* Forking mode (ForkingMixIn). For each request the parent forks; it
 * closes its copy of the connection at once, counts the child, and reaps
 * it on SIGCHLD (a uv_signal_t) with waitpid on its own children only,
 * never waitpid(-1), so children of the application and of uv_spawn are
 * left alone. The child runs setup, handle and finish with the same
 * request I/O as sync mode (on the descriptor), then shutdown_request,
 * closes the connection and _exits: status 0 when served, 1 after a
 * handler error (reported by handle_error in the child, as Python), 2
 * after UVS_ESTOP (the parent then stops serving, as in the other
 * modes). In the parent, any other exit status, or a signal that killed
 * the child (a crash), reaches handle_error as UVS_ECHILD_EXIT(n) or
 * UVS_ECHILD_SIGNAL(s); the server goes on serving. A datagram child
 * sends its reply itself, from the server's socket.
 *
 * In the child, a handler may use the request I/O calls, the uvs_conn_*
 * getters, uvs_conn_write (sent at once), uvs_conn_close, uvs_conn_abort,
 * and anything of its own that is safe after fork. It must return rather
 * than exit, and must not use the loop or any other uvs_server_* call:
 * the child only has the thread that forked, the loop belongs to the
 * parent, and signal handlers are reset to their defaults (a libuv
 * handler would report the child's signals to the parent's loop). The
 * child closes every listening socket and open connection of every uvs
 * server in the process, except its own connection (and a datagram
 * server's socket, for the reply); the application's other descriptors
 * stay open. Forking from a multi-threaded process copies only the
 * forking thread: locks other threads hold stay locked in the child. */


/* ---- Connection ------------------------------------------------------ */

/* For a stream server a uvs_conn_t is one client connection. For a
 * datagram server in the blocking modes it is one datagram request
 * (DatagramRequestHandler): the handler reads the datagram with the
 * request I/O calls (then EOF), and what it writes (uvs_sendall,
 * uvs_write, uvs_conn_write) is sent back to the sender as one datagram
 * after finish; nothing is sent when it wrote nothing, unlike Python,
 * which sends an empty datagram. uvs_conn_abort discards the reply;
 * uvs_conn_close ends the request's I/O and keeps the reply. A reply to
 * a unixgram client that has gone (or has no bound name) is dropped
 * without an error. uvs_conn_fileno returns the server's socket. */

/** Sends `len` bytes of `data`, copied: the caller keeps `data`. Bytes go
 * out in order, from a handler behind what its uvs_write buffered; what
 * the socket does not take at once is queued; it never blocks (except in
 * sync mode, where it is uvs_sendall). Returns 0,
 * UV_EPIPE after uvs_conn_close or an abort, UV_ENOBUFS when the write
 * would take the unsent bytes past config->max_write_queue (the
 * connection is reset, since its peer is not reading, and nothing more is
 * sent), or UV_ENOMEM (in event mode part of the bytes may be out, so the
 * connection is closed too; in threading mode nothing of `data` was queued,
 * though what the handler's uvs_write buffered may have been). A send error
 * closes the connection and reaches on_close and handle_error. Threads:
 * any in threading mode (fan-out to other connections); the loop's
 * otherwise. */
UVS_EXTERN int uvs_conn_write(uvs_conn_t* conn, const void* data, size_t len);

/** Sends `len` bytes of `data` without copying. `free_cb(data, arg)` runs
 * exactly once when uvs is done with the bytes (sent, failed or
 * cancelled), possibly before this returns; until then the caller must
 * not change them. On failure (UV_EPIPE, UV_ENOMEM, UV_ENOTSUP outside
 * event mode) `free_cb` does not run and the caller still owns `data`. */
UVS_EXTERN int uvs_conn_write_nocopy(uvs_conn_t* conn,
                                     void* data,
                                     size_t len,
                                     uvs_free_cb free_cb,
                                     void* arg);

/** Returns the bytes written but not yet taken by the socket. Threads:
 * any in threading mode. */
UVS_EXTERN size_t uvs_conn_write_queue_size(const uvs_conn_t* conn);

/** Closes gracefully: stops delivering data, sends everything queued
 * (within config->close_timeout_ms, else the connection is reset with
 * UV_ETIMEDOUT), shuts down the write side, waits up to
 * config->close_linger_ms for the peer's EOF, then closes. on_close
 * follows with 0, or the error that ended it first (a send error,
 * UV_ETIMEDOUT, UV_ECANCELED when the server closes meanwhile). Returns 0
 * (also when closing already). In threading mode the handler's request I/O
 * then fails with UV_ECANCELED (within 100 ms for one waiting for input
 * without a request timeout) while its finish still runs. Threads: any in
 * threading mode; the loop's otherwise. */
UVS_EXTERN int uvs_conn_close(uvs_conn_t* conn);

/** Closes at once with a TCP reset; queued output is discarded. on_close
 * follows with status 0. Returns 0 (also when closing already). Threads:
 * any in threading mode; the loop's otherwise. */
UVS_EXTERN int uvs_conn_abort(uvs_conn_t* conn);

/** Stops reading: on_data and on_eof do not run until
 * uvs_conn_read_start (backpressure). Returns 0, or UV_ENOTSUP outside
 * event mode (request I/O paces reading by itself). */
UVS_EXTERN int uvs_conn_read_stop(uvs_conn_t* conn);

/** Resumes reading after uvs_conn_read_stop. Returns 0, UV_EPIPE when
 * the connection is closing, or UV_ENOTSUP outside event mode. */
UVS_EXTERN int uvs_conn_read_start(uvs_conn_t* conn);

/** Event mode: marks whether the handler holds part of a request and
 * waits for the rest (`pending` nonzero) or not (0). While a request is
 * pending, config->read_timeout_ms runs from the moment it was marked,
 * and a request still pending when it runs out closes the connection
 * with UV_ETIMEDOUT (slowloris). Returns 0, UV_EPIPE when closing, or
 * UV_ENOTSUP outside event mode (read calls are timed there). */
UVS_EXTERN int uvs_conn_request_pending(uvs_conn_t* conn, int pending);

/** Returns the peer's address (socketserver's client_address); borrowed
 * for the connection's life. Threads: any. */
UVS_EXTERN const uvs_address_t* uvs_conn_peer(const uvs_conn_t* conn);

/** Returns the server the connection belongs to (socketserver's
 * self.server). Threads: any. */
UVS_EXTERN uvs_server_t* uvs_conn_server(const uvs_conn_t* conn);

/** Returns the connection's zeroed state_size bytes (NULL when state_size
 * is 0), valid until on_close (event mode) or finish (blocking modes)
 * returns, aligned for any type. Threads: any. */
UVS_EXTERN void* uvs_conn_state(const uvs_conn_t* conn);

/** Returns the connection's socket descriptor, owned by uvs (socketserver's
 * self.request.fileno()), or UV_EBADF once it is closed. Threads: any. */
UVS_EXTERN int uvs_conn_fileno(const uvs_conn_t* conn);

/** Returns the connection's number: 1 for the server's first accepted
 * connection, then counting up, never reused. Threads: any. */
UVS_EXTERN uint64_t uvs_conn_id(const uvs_conn_t* conn);


/* ---- Request I/O (blocking modes) ------------------------------------ */

/* socketserver's rfile and wfile, for setup/handle/finish in sync,
 * threading and forking mode ("Threads: handler": only the thread running
 * this connection's handler). Each call blocks at most the request timeout
 * (config->request_timeout_ms, uvs_conn_set_timeout) and then fails with
 * UV_ETIMEDOUT. When the server closes the connection a blocked call
 * returns UV_ECANCELED at once (in threading mode, one waiting for input
 * without a request timeout within 100 ms of a uvs_conn_close, a drain's
 * deadline or the idle timeout); after a reset or a send error calls fail
 * with that error (received bytes are still read first). They use the
 * descriptor directly: in threading mode while the loop lets the worker
 * have the socket, waiting for input in a blocking recv (no request
 * timeout: the socket is then in blocking mode, with a 100 ms SO_RCVTIMEO)
 * or in poll(2), in sync mode and in a forked child with blocking calls.
 * In event mode they return UV_ENOTSUP. */

/** Reads up to `n` bytes into `buf`, waiting until at least one is there.
 * Returns the count, 0 at the peer's EOF (or for n == 0), or an error.
 * Threads: handler. */
UVS_EXTERN ssize_t uvs_recv(uvs_conn_t* conn, void* buf, size_t n);

/** Reads exactly `n` bytes into `buf`. Returns `n`, or fewer when the
 * peer's EOF comes first (the bytes before it are in `buf`, as Python's
 * rfile.read(n)), or an error (bytes read before it are lost). Threads:
 * handler. */
UVS_EXTERN ssize_t uvs_read_exact(uvs_conn_t* conn, void* buf, size_t n);

/** Reads one line, up to and including its '\n', into `buf` of `size`
 * bytes and NUL-terminates it: a line may be size - 1 bytes long. Returns
 * its length; at EOF the last line without '\n', then 0. A longer line
 * returns UV_ENOBUFS with its first size - 1 bytes consumed and in `buf`;
 * the rest stays unread (a line that fills the buffer waits for its next
 * byte or the EOF to tell which it is). Memory never grows with the line.
 * Returns UV_EINVAL when size < 2. Threads: handler. */
UVS_EXTERN ssize_t uvs_readline(uvs_conn_t* conn, char* buf, size_t size);

/** Sends all `len` bytes of `data` (copied), waiting while the unsent
 * output is above config->output_high_water. Returns 0 once every byte is
 * queued (as Python's sendall, never a partial write), or an error.
 * Buffered uvs_write bytes go first. Threads: handler. */
UVS_EXTERN int uvs_sendall(uvs_conn_t* conn, const void* data, size_t len);

/** Writes `len` bytes through the request's write buffer of
 * config->wbufsize bytes (wfile.write): with wbufsize 0, the same as
 * uvs_sendall; otherwise bytes collect until the buffer is full, uvs_flush,
 * or the handler's uvs_conn_write (which sends after them). Returns 0 or
 * an error. Datagram requests: every write goes
 * into the reply, which must stay within config->max_packet_size
 * (UV_EMSGSIZE, nothing of that write added). Threads: handler. */
UVS_EXTERN int uvs_write(uvs_conn_t* conn, const void* data, size_t len);

/** Sends what uvs_write buffered and waits until the socket has taken
 * every byte written so far (wfile.flush). Returns 0 or an error. uvs
 * flushes after finish too, ignoring errors, as Python. For a datagram
 * request it only moves buffered bytes into the reply, which leaves after
 * finish. Threads: handler. */
UVS_EXTERN int uvs_flush(uvs_conn_t* conn);

/** Sets this request's I/O timeout in milliseconds (-1: none), for the
 * calls that follow; its start value is config->request_timeout_ms.
 * Returns 0, or UV_EINVAL for a value below -1 or in event mode.
 * Threads: handler. */
UVS_EXTERN int uvs_conn_set_timeout(uvs_conn_t* conn, int64_t timeout_ms);

#ifdef __cplusplus
}
#endif

#endif /* UVS_H */
