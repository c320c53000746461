/* SPDX-License-Identifier: MIT */
/*
 * Forking mode: socketserver's ForkingMixIn, for every transport.
 *
 * The parent forks once per request, closes its copy of the connection at
 * once and keeps a table of its children (pid, peer, request id), at most
 * max_children; the listeners pause while it is full. Reaping is prompt
 * and private: a uv_signal_t on SIGCHLD wakes the loop, and each of the
 * server's own pids is asked with waitpid(pid, WNOHANG). Never
 * waitpid(-1): that would steal the children of the application or of
 * uv_spawn (bpo-1540386), which libuv reaps by pid too, so both coexist on
 * one loop. A child that exits with a status uvs does not use, or dies of
 * a signal, is reported to handle_error; the server goes on.
 *
 * The child must not touch the parent's loop. Signals are blocked around
 * fork() and, in the child, every caught signal is reset to its default
 * before they are unblocked: libuv's handler would otherwise write the
 * child's signals into the pipe it shares with the parent's loop. The
 * child closes the listeners and connections of every uvs server in the
 * process (the registry in server.c, read without its lock: only this
 * thread exists in the child), runs the request with sync mode's
 * fd-direct request I/O (reqio.c), sends a datagram reply itself, runs
 * shutdown_request, closes and _exits.
 *
 * Closing: with block_on_close the server waits for its children, up to
 * children_wait_ms, then kills and reaps the rest, so no zombie outlives
 * the close; the wait runs on the loop (SIGCHLD and a timer), so an
 * asynchronous close does not block it. Without block_on_close the
 * remaining pids go to a detached thread that waits for each of them.
 */
#include "internal.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* How long a child tries to send its datagram reply when the receiver is
 * full, as the parent's retry queue does. */
#define CHILD_SEND_MS UVS__DGRAM_RETRY_MAX_MS

static void on_sigchld(uv_signal_t* handle, int signum);
static void on_wait_over(uv_timer_t* handle);
static void on_handle_closed(uv_handle_t* handle);


int uvs__fork_init(uvs_server_t* server) {
  int r;

  server->children =
      uvs__calloc(server->config.max_children, sizeof(*server->children));
  if (server->children == NULL)
    return UV_ENOMEM;
  uv_timer_init(server->loop, &server->children_timer);
  uv_handle_set_data((uv_handle_t*) &server->children_timer, server);
  server->fork_inited = true;
  r = uv_signal_init(server->loop, &server->child_signal);
  if (r != 0)
    return r;
  uv_handle_set_data((uv_handle_t*) &server->child_signal, server);
  server->child_signal_inited = true;
  r = uv_signal_start(&server->child_signal, on_sigchld, SIGCHLD);
  if (r != 0)
    return r;
  /* Referenced only while children live: a loop with no child to wait
   * for must still end, and one with children must not end before they
   * are reaped (an application's uv_run, with the listener paused at
   * max_children, would return and leave them as zombies). */
  uv_unref((uv_handle_t*) &server->child_signal);
  return 0;
}


unsigned uvs_server_child_count(const uvs_server_t* server) {
  unsigned n;
  if (server == NULL)
    return 0;
  uv_mutex_lock((uv_mutex_t*) &server->lock);
  n = server->nchildren;
  uv_mutex_unlock((uv_mutex_t*) &server->lock);
  return n;
}


bool uvs__fork_full(const uvs_server_t* server) {
  return server->config.mode == UVS_MODE_FORKING &&
         server->nchildren >= server->config.max_children;
}


/* ---- The child ------------------------------------------------------ */

/* Resets every caught signal to its default (ignored ones stay ignored). */
static void reset_signals(void) {
  int sig;
  for (sig = 1; sig < NSIG; sig++) {
    struct sigaction sa;
    if (sigaction(sig, NULL, &sa) != 0)
      continue;
    if ((sa.sa_flags & SA_SIGINFO) == 0 &&
        (sa.sa_handler == SIG_DFL || sa.sa_handler == SIG_IGN)) {
      continue;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
  }
}


/* Sends the reply datagram, waiting for a full receiver a bounded time. */
static void child_reply(uvs_conn_t* conn) {
  uvs__io_t* io = conn->io;
  const uvs_address_t* peer = &conn->peer;
  uint64_t deadline = uv_hrtime() + (uint64_t) CHILD_SEND_MS * 1000000;
  uvs__chunk_t* chunks;
  uvs__chunk_t* c;
  char* flat = NULL;
  size_t len;
  size_t off = 0;

  /* Everything is freed before the child exits, so memory checkers that
   * follow the child (valgrind) find no leak in it. */
  chunks = uvs__buf_take(&io->out, &len);
  if (io->want_abort || len == 0 ||
      (peer->u.sa.sa_family == AF_UNIX &&
       peer->len <= offsetof(struct sockaddr_un, sun_path))) {
    goto done;
  }
  flat = uvs__malloc(len);
  if (flat == NULL)
    goto done;
  for (c = chunks; c != NULL; c = c->next) {
    memcpy(flat + off, c->data + c->start, c->end - c->start);
    off += c->end - c->start;
  }
  for (;;) {
    ssize_t n = sendto(conn->fd,
                       flat,
                       len,
                       MSG_DONTWAIT | MSG_NOSIGNAL,
                       &peer->u.sa,
                       peer->len);
    if (n >= 0 || (errno != EAGAIN && errno != ENOBUFS && errno != EINTR))
      break;
    if (uv_hrtime() >= deadline)
      break;
    usleep(1000); /* a full Unix receiver cannot be polled for room */
  }
done:
  uvs__free(flat);
  uvs__buf_free_chunks(chunks);
}


/* Graceful end of a stream: our FIN, then the peer's, within the linger
 * time, so unread input does not turn the close into a reset that could
 * destroy the reply; an abort resets at once. */
static void child_close_stream(uvs_conn_t* conn) {
  uint64_t deadline =
      uv_hrtime() + conn->server->config.close_linger_ms * 1000000;
  char buf[4096];

  if (conn->io->want_abort) {
    struct linger lg = { 1, 0 };
    setsockopt(conn->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(conn->fd);
    return;
  }
  shutdown(conn->fd, SHUT_WR);
  for (;;) {
    struct pollfd pfd = { conn->fd, POLLIN, 0 };
    uint64_t now = uv_hrtime();
    ssize_t n;
    if (now >= deadline ||
        poll(&pfd, 1, (int) ((deadline - now) / 1000000) + 1) <= 0)
      break;
    n = recv(conn->fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
      break;
  }
  close(conn->fd);
}


_Noreturn static void child_main(uvs_server_t* server,
                                 uv_os_sock_t fd,
                                 const uvs_address_t* peer,
                                 const char* data,
                                 size_t len,
                                 uint64_t id) {
  uvs_conn_t* conn;
  int status = 0;
  int r;

  uvs__server_close_inherited(fd);
  conn = uvs__conn_new_forked(server, fd, peer, data, len, id);
  if (conn == NULL) {
    if (fd != server->fd)
      close(fd);
    _exit(1);
  }
  r = uvs__reqio_run(conn);
  if (r == UVS_ESTOP)
    status = 2;
  else if (r != 0)
    status = 1;
  if (conn->dgram)
    child_reply(conn);
  uvs__server_shutdown_request(server, fd, peer);
  if (!conn->dgram)
    child_close_stream(conn);
  _exit(status);
}


/* ---- The parent ----------------------------------------------------- */

int uvs__fork_request(uvs_server_t* server,
                      uv_os_sock_t fd,
                      const uvs_address_t* peer,
                      const char* data,
                      size_t len) {
  uint64_t id;
  sigset_t all;
  sigset_t old;
  pid_t pid;
  int err;

  /* The listeners pause at the limit; this only guards the table. */
  if (server->nchildren >= server->config.max_children)
    return UV_EAGAIN;
  id = ++server->next_conn_id;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pid = fork();
  if (pid == 0) {
    reset_signals();
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    child_main(server, fd, peer, data, len, id);
  }
  err = errno;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (pid < 0)
    return UVS__ERR(err);

  /* socketserver's close_request: the child owns the connection now. */
  if (!server->dgram)
    close(fd);
  uv_mutex_lock(&server->lock);
  server->children[server->nchildren].pid = pid;
  server->children[server->nchildren].peer = *peer;
  server->children[server->nchildren].id = id;
  server->nchildren++;
  uv_mutex_unlock(&server->lock);
  uv_ref((uv_handle_t*) &server->child_signal);
  if (server->one_shot)
    server->one_shot_id = id;
  return 0;
}


/* A child ended with wait status `st`: report what uvs did not cause. */
static void child_ended(uvs_server_t* server,
                        const uvs__child_t* child,
                        int st) {
  int err = 0;

  if (WIFSIGNALED(st))
    err = UVS_ECHILD_SIGNAL(WTERMSIG(st));
  else if (WIFEXITED(st) && WEXITSTATUS(st) == 2)
    uvs__server_request_stop(server);
  else if (WIFEXITED(st) && WEXITSTATUS(st) > 2)
    err = UVS_ECHILD_EXIT(WEXITSTATUS(st));
  /* Children signalled by the close or a drain's deadline are not errors
   * of theirs. A child's exit status 1 is a handler error the child
   * reported itself. */
  if (WIFEXITED(st) && WEXITSTATUS(st) == 1)
    uvs__stat_add(&server->stats.handler_errors, 1);
  if (err != 0 && !server->children_killed && !server->drain_final) {
    uvs__stat_add(&server->stats.handler_errors, 1);
    uvs__server_error(server, NULL, &child->peer, err);
  }
}


/* Reaps every child of this server that has ended; with `block`, waits
 * for each (after a kill). Returns how many remain. */
static unsigned reap(uvs_server_t* server, bool block) {
  unsigned i = 0;

  while (i < server->nchildren) {
    uvs__child_t child = server->children[i];
    int st = 0;
    pid_t r;

    do
      r = waitpid(child.pid, &st, block ? 0 : WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == 0) {
      i++;
      continue;
    }
    /* Reaped, or gone (ECHILD: somebody else reaped it). */
    uv_mutex_lock(&server->lock);
    server->children[i] = server->children[--server->nchildren];
    uv_mutex_unlock(&server->lock);
    if (r > 0)
      child_ended(server, &child, st);
    uvs__server_conn_done(server, child.id);
  }
  if (server->nchildren == 0 && !server->children_waiting)
    uv_unref((uv_handle_t*) &server->child_signal);
  return server->nchildren;
}


static void close_handles(uvs_server_t* server) {
  uv_timer_stop(&server->children_timer);
  uv_close((uv_handle_t*) &server->children_timer, on_handle_closed);
  uv_close((uv_handle_t*) &server->child_signal, on_handle_closed);
}


static void on_sigchld(uv_signal_t* handle, int signum) {
  uvs_server_t* server = uv_handle_get_data((uv_handle_t*) handle);
  (void) signum;
  if (reap(server, false) == 0 && server->children_waiting) {
    server->children_waiting = false;
    close_handles(server);
    return;
  }
  /* Room again: accepting resumes. */
  if (!server->closing)
    uvs__server_update_listener(server);
}


static void on_wait_over(uv_timer_t* handle) {
  uvs_server_t* server = uv_handle_get_data((uv_handle_t*) handle);
  unsigned i;

  if (!server->children_waiting)
    return;
  server->children_killed = true;
  for (i = 0; i < server->nchildren; i++)
    kill(server->children[i].pid, SIGKILL);
  reap(server, true);
  server->children_waiting = false;
  close_handles(server);
}


static void on_handle_closed(uv_handle_t* handle) {
  uvs__server_handle_closed(uv_handle_get_data(handle));
}


typedef struct {
  size_t n;
  pid_t pids[];
} orphans_t;


static void* reap_orphans(void* arg) {
  orphans_t* o = arg;
  size_t i;
  for (i = 0; i < o->n; i++) {
    while (waitpid(o->pids[i], NULL, 0) < 0 && errno == EINTR)
      ;
  }
  uvs__free(o);
  return NULL;
}


/* Without waiting: a detached thread reaps the children left, so none
 * stays a zombie. Returns false when no thread could take them. */
static bool leave_children(uvs_server_t* server) {
  pthread_attr_t attr;
  pthread_t thread;
  orphans_t* o;
  unsigned i;
  int r;

  o = uvs__malloc(sizeof(*o) + server->nchildren * sizeof(pid_t));
  if (o == NULL)
    return false;
  o->n = server->nchildren;
  for (i = 0; i < server->nchildren; i++)
    o->pids[i] = server->children[i].pid;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  r = pthread_create(&thread, &attr, reap_orphans, o);
  pthread_attr_destroy(&attr);
  if (r != 0) {
    uvs__free(o);
    return false;
  }
  uv_mutex_lock(&server->lock);
  server->nchildren = 0;
  uv_mutex_unlock(&server->lock);
  return true;
}


void uvs__fork_close(uvs_server_t* server) {
  if (!server->fork_inited)
    return;
  if (!server->child_signal_inited) {
    uvs__server_closing_handle(server);
    uv_close((uv_handle_t*) &server->children_timer, on_handle_closed);
    return;
  }
  /* Both handles will close: count them now, so the close waits. */
  uvs__server_closing_handle(server);
  uvs__server_closing_handle(server);
  reap(server, false);
  if (server->nchildren > 0 && server->config.block_on_close) {
    /* The SIGCHLD handle is referenced while children live (reap). */
    server->children_waiting = true;
    uv_timer_start(&server->children_timer,
                   on_wait_over,
                   server->config.children_wait_ms,
                   0);
    return;
  }
  if (server->nchildren > 0 && !leave_children(server)) {
    /* No thread for them: wait here rather than leave zombies. */
    reap(server, true);
  }
  close_handles(server);
}


void uvs__fork_signal_all(uvs_server_t* server, int signum) {
  unsigned i;
  for (i = 0; i < server->nchildren; i++)
    kill(server->children[i].pid, signum);
}


void uvs__fork_free(uvs_server_t* server) {
  uvs__free(server->children);
  server->children = NULL;
}
