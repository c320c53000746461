/* SPDX-License-Identifier: MIT */
/*
 * bench-thread-echo: a plain C echo server with one blocking thread per
 * connection and no event loop, the benchmarks' floor for uvs's thread
 * mode (socketserver's ThreadingMixIn): what a thread per client costs
 * without any framework. uvs is used only to parse and format the address
 * text (uvs_address_parse, uvs_address_format); libuv is not used at all.
 *
 * Streams (tcp://, unix:): the main thread accepts; each connection gets a
 * detached thread that reads ECHO_CHUNK bytes at a time into a buffer on
 * its stack (the chunk uvs-echo's thread mode reads) and sends them all
 * back before it reads again, until EOF or an error, then closes. That
 * blocking send is the backpressure: a client that does not read stops its
 * own thread, and nothing is buffered beyond the socket.
 *
 * Datagrams (udp://): one thread answers every datagram with a blocking
 * recvfrom/sendto loop. A thread per connection means nothing for
 * datagrams, which have no connection, and a thread per datagram would
 * measure thread creation rather than echoing.
 *
 * Stopping: SIGINT and SIGTERM write a byte to a self-pipe (the only
 * thing the handler does, since little is async-signal-safe). The main
 * thread waits on that pipe together with the listening socket, in poll
 * before each accept4, so a signal can never be lost between a check and
 * a blocking call; it then removes the unix: socket file, if this process
 * made it, and exits 0 at once, leaving the connection threads to die
 * with the process. A unix: path is never replaced: bind fails when the
 * file exists. Bad arguments print one line to stderr and exit 2; a
 * failure to listen exits 1.
 */
#include "listen_args.h"

#include <uvs.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Bytes a connection thread reads at a time, on its stack. */
#define ECHO_CHUNK 16384

/* Stack of a connection thread. The default (8 MiB on Linux) would
 * reserve 80 GB of address space for 10 000 idle connections, past what
 * overcommit limits and RLIMIT_AS usually allow; 256 KiB reserves 2.5 GB
 * and is still many times the ECHO_CHUNK buffer and libc's needs. Only
 * the pages touched count towards memory either way. */
#define ECHO_STACK_SIZE ((size_t) 256 * 1024)

static const char* listen_text; /* --listen as given, for messages */
static uvs_address_t listen_addr;
static int listen_fd = -1;
static int stop_pipe[2] = { -1, -1 };
/* The socket file this process created, removed at exit; empty if none. */
static char unix_path[sizeof(listen_addr.u.un.sun_path) + 1];
/* The datagram thread's buffer: it holds the largest UDP payload. */
static char dgram_buf[65536];

static const char usage_text[] =
    "usage: bench-thread-echo --listen ADDR\n"
    "\n"
    "A thread-per-connection blocking echo server in plain C: the\n"
    "baseline of the benchmarks for thread mode. ADDR is tcp://HOST:PORT,\n"
    "unix:PATH or udp://HOST:PORT (port 0: any free port); udp:// is\n"
    "served by one thread. A unix: PATH must not exist; it is removed at\n"
    "exit. When ready it prints 'listening on ADDR' with the real port.\n"
    "SIGINT or SIGTERM exits 0 at once. Exit status: 2 for bad arguments,\n"
    "1 when it cannot listen.\n";


/* ---- Serving --------------------------------------------------------- */

/* Sends all `len` bytes. Returns 0, or -1 when the connection failed. */
static int send_all(int fd, const char* data, size_t len) {
  ssize_t n;

  while (len > 0) {
    n = send(fd, data, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return -1;
    }
    data += n;
    len -= (size_t) n;
  }
  return 0;
}


static void* serve_conn(void* arg) {
  int fd = (int) (intptr_t) arg;
  char buf[ECHO_CHUNK];
  ssize_t n;

  for (;;) {
    n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0 || send_all(fd, buf, (size_t) n) != 0) {
      break; /* EOF after everything was echoed, or an error */
    }
  }
  close(fd);
  return NULL;
}


static void* serve_datagrams(void* arg) {
  struct sockaddr_storage peer;
  socklen_t peer_len;
  ssize_t n;

  for (;;) {
    peer_len = sizeof(peer);
    /* MSG_TRUNC returns a datagram's real length: one longer than the
     * buffer cannot be echoed unchanged, so it is dropped. */
    n = recvfrom(listen_fd,
                 dgram_buf,
                 sizeof(dgram_buf),
                 MSG_TRUNC,
                 (struct sockaddr*) &peer,
                 &peer_len);
    if (n < 0 || (size_t) n > sizeof(dgram_buf)) {
      continue; /* EINTR, or an error that concerns one peer only */
    }
    /* A failed reply is a lost datagram, which the client accounts for. */
    (void) sendto(listen_fd,
                  dgram_buf,
                  (size_t) n,
                  0,
                  (struct sockaddr*) &peer,
                  peer_len);
  }
  return NULL;
}


/* Waits until a signal or, when `fd` >= 0, `fd` is readable. Returns 1
 * when a signal came, 0 when `fd` is readable. */
static int wait_signal_or(int fd) {
  struct pollfd p[2];

  p[0].fd = stop_pipe[0];
  p[0].events = POLLIN;
  p[1].fd = fd;
  p[1].events = POLLIN;
  for (;;) {
    p[0].revents = 0;
    p[1].revents = 0;
    if (poll(p, fd >= 0 ? 2 : 1, -1) < 0) {
      continue; /* EINTR: the pipe now holds the signal's byte */
    }
    if (p[0].revents != 0) {
      return 1;
    }
    if (p[1].revents != 0) {
      return 0;
    }
  }
}


static void pause_10ms(void) {
  struct timespec ts = { 0, 10 * 1000 * 1000 };
  nanosleep(&ts, NULL);
}


/* Accepts until a signal, starting a connection thread for each client. */
static void accept_loop(const pthread_attr_t* attr) {
  static const int one = 1;
  int reported = 0;
  pthread_t thread;
  int fd;
  int err;

  while (wait_signal_or(listen_fd) == 0) {
    fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
      /* Out of descriptors or memory: let clients end before retrying,
       * rather than spinning on a listener that stays readable. Anything
       * else (EINTR, ECONNABORTED) concerns one attempt only. */
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
          errno == ENOMEM) {
        pause_10ms();
      }
      continue;
    }
    if (listen_addr.transport == UVS_TRANSPORT_TCP) {
      (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    err = pthread_create(&thread, attr, serve_conn, (void*) (intptr_t) fd);
    if (err != 0) {
      /* Out of threads: this client is dropped; say so once per run. */
      close(fd);
      if (!reported) {
        fprintf(stderr, "bench-thread-echo: thread: %s\n", strerror(err));
        reported = 1;
      }
      pause_10ms();
    }
  }
}


/* ---- Start and stop -------------------------------------------------- */

static void on_signal(int signum) {
  int saved = errno;
  char byte = 0;
  ssize_t n = write(stop_pipe[1], &byte, 1);

  (void) n; /* a full pipe already holds a byte */
  errno = saved;
}


/* Opens, binds and (for streams) listens on listen_addr, writing the real
 * address (the bound port) into `bound`. Returns 0 or -1 with errno set. */
static int start_listener(uvs_address_t* bound) {
  static const int one = 1;
  int stream = listen_addr.transport != UVS_TRANSPORT_UDP;
  const char* path = listen_addr.u.un.sun_path;
  socklen_t len = sizeof(bound->u.storage);

  *bound = listen_addr;
  listen_fd = socket(listen_addr.u.sa.sa_family,
                     (stream ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC,
                     0);
  if (listen_fd < 0) {
    return -1;
  }
  /* As every TCP server does, so that a restart finds the port free. */
  if (listen_addr.transport == UVS_TRANSPORT_TCP &&
      setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) {
    return -1;
  }
  if (bind(listen_fd, &listen_addr.u.sa, listen_addr.len) != 0) {
    return -1;
  }
  if (listen_addr.transport == UVS_TRANSPORT_UNIX) {
    /* From here the file, unless the name is abstract, is ours. */
    if (path[0] != '\0') {
      memcpy(unix_path, path, strnlen(path, sizeof(unix_path) - 1));
    }
    return listen(listen_fd, SOMAXCONN);
  }
  if (stream && listen(listen_fd, SOMAXCONN) != 0) {
    return -1;
  }
  if (getsockname(listen_fd, &bound->u.sa, &len) != 0) {
    return -1;
  }
  bound->len = len;
  return 0;
}


int main(int argc, char** argv) {
  struct sigaction sa;
  pthread_attr_t attr;
  pthread_t thread;
  uvs_address_t bound;
  char text[UVS_ADDRSTRLEN];
  size_t size = sizeof(text);
  int err;

  bench_parse_listen(argc,
                     argv,
                     "bench-thread-echo",
                     usage_text,
                     &listen_addr,
                     &listen_text);

  /* SA_RESTART: the connection threads' recv and send, which the handler
   * may interrupt, go on by themselves; poll returns EINTR regardless. */
  if (pipe2(stop_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    fprintf(stderr, "bench-thread-echo: pipe: %s\n", strerror(errno));
    return 1;
  }
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0) {
    fprintf(stderr, "bench-thread-echo: sigaction: %s\n", strerror(errno));
    return 1;
  }

  if (start_listener(&bound) != 0) {
    fprintf(stderr,
            "bench-thread-echo: cannot listen on %s: %s\n",
            listen_text,
            strerror(errno));
    if (unix_path[0] != '\0') {
      (void) unlink(unix_path);
    }
    return 1;
  }
  err = pthread_attr_init(&attr);
  if (err == 0) {
    err = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  }
  if (err == 0) {
    err = pthread_attr_setstacksize(&attr, ECHO_STACK_SIZE);
  }
  if (err == 0 && listen_addr.transport == UVS_TRANSPORT_UDP) {
    err = pthread_create(&thread, &attr, serve_datagrams, NULL);
  }
  if (err == 0 && uvs_address_format(&bound, text, &size) != 0) {
    err = EINVAL;
  }
  if (err != 0) {
    fprintf(stderr, "bench-thread-echo: %s\n", strerror(err));
    if (unix_path[0] != '\0') {
      (void) unlink(unix_path);
    }
    return 1;
  }
  printf("listening on %s\n", text);
  fflush(stdout);

  if (listen_addr.transport == UVS_TRANSPORT_UDP) {
    (void) wait_signal_or(-1);
  } else {
    accept_loop(&attr);
  }
  if (unix_path[0] != '\0') {
    (void) unlink(unix_path);
  }
  exit(0);
}
