/* SPDX-License-Identifier: MIT */
/*
 * The server's own socket, for every transport: create it, set the options
 * socketserver's server_bind sets, bind it, and remove a Unix socket file
 * once the server is done with it.
 *
 * Unix paths follow three rules that Python's UnixStreamServer and
 * UnixDatagramServer leave to the user: a stale socket file (one nobody
 * listens on any more, left by a crash) is replaced at bind; a live one
 * gives UV_EADDRINUSE; anything that is not a socket is never removed. A
 * probe connect() tells stale from live: the kernel refuses it
 * (ECONNREFUSED) only when no socket is bound to the file. The probe is a
 * datagram socket whatever the server's type: connecting one sends
 * nothing, and against a live stream listener it fails with EPROTOTYPE
 * instead of leaving a connection in that server's backlog. At close the
 * file is removed when it is still the one this server bound (same device
 * and inode), so a server that took the path over since keeps its file.
 * Linux abstract names (a leading NUL) have no file and need neither step.
 *
 * UDP gets SO_REUSEADDR only when asked through allow_reuse_port: on Linux
 * SO_REUSEADDR lets two live UDP sockets share a port, which must not
 * happen by default (libuv sets it when it adopts a UDP socket, so the
 * datagram listener clears it again with uvs__sock_set_reuse).
 */
#include "internal.h"

#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>


static bool is_unix(const uvs_server_t* server) {
  return server->address.u.sa.sa_family == AF_UNIX;
}


/* A file-system path (not abstract, not unnamed) of a Unix address. */
static const char* unix_path(const uvs_server_t* server) {
  const struct sockaddr_un* un = &server->address.u.un;
  if (!is_unix(server) ||
      server->address.len <= offsetof(struct sockaddr_un, sun_path) ||
      un->sun_path[0] == '\0') {
    return NULL;
  }
  return un->sun_path; /* addr.c keeps file paths NUL-terminated */
}


static int socket_type(const uvs_server_t* server) {
  return server->dgram ? SOCK_DGRAM : SOCK_STREAM;
}


int uvs__sock_open(uvs_server_t* server) {
  int fd = socket(server->address.u.sa.sa_family,
                  socket_type(server) | SOCK_NONBLOCK | SOCK_CLOEXEC,
                  0);
  if (fd < 0)
    return UVS__ERR(errno);
  server->fd = fd;
  return 0;
}


static int set_flag(int fd, int level, int name, int on) {
  if (setsockopt(fd, level, name, &on, sizeof(on)) != 0)
    return UVS__ERR(errno);
  return 0;
}


int uvs__sock_set_reuse(uvs_server_t* server) {
  bool udp = server->address.transport == UVS_TRANSPORT_UDP;
  int on = udp ? 0 : server->config.allow_reuse_address != 0;
  if (is_unix(server))
    return 0;
  return set_flag(server->fd, SOL_SOCKET, SO_REUSEADDR, on);
}


/* Makes room at a Unix path: a stale socket file goes, anything else stays
 * and the bind reports it. Returns 0 or the error that stops the bind. */
static int unix_prepare(uvs_server_t* server) {
  const char* path = unix_path(server);
  struct stat st;
  int probe;
  int err;

  if (path == NULL)
    return 0;
  if (lstat(path, &st) != 0)
    return errno == ENOENT ? 0 : UVS__ERR(errno);
  if (!S_ISSOCK(st.st_mode))
    return UV_EADDRINUSE; /* a file, a directory: never ours to remove */
  probe = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (probe < 0)
    return UVS__ERR(errno);
  err = 0;
  if (connect(probe, &server->address.u.sa, server->address.len) != 0)
    err = errno;
  close(probe);
  if (err != ECONNREFUSED) {
    /* Connected (a live datagram socket) or EPROTOTYPE (a live stream
     * socket): somebody serves there. Any other failure (EACCES) is the
     * answer the bind would give too. */
    if (err == 0 || err == EAGAIN || err == EINPROGRESS || err == EPROTOTYPE)
      return UV_EADDRINUSE;
    return UVS__ERR(err);
  }
  /* Another server may have replaced the stale file since the lstat:
   * remove only the file that was probed. (Two servers starting on one
   * stale path at the same instant can still race between this check and
   * the unlink; the window is this check.) */
  {
    struct stat now;
    if (lstat(path, &now) != 0)
      return errno == ENOENT ? 0 : UVS__ERR(errno);
    if (now.st_dev != st.st_dev || now.st_ino != st.st_ino)
      return UV_EADDRINUSE;
  }
  if (unlink(path) != 0 && errno != ENOENT)
    return UVS__ERR(errno);
  return 0;
}


int uvs__sock_bind(uvs_server_t* server) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  const char* path;
  struct stat st;
  int r;

  if (server->fd < 0)
    return UV_EBADF;
  if (server->bound)
    return UV_EALREADY;
  r = uvs__sock_set_reuse(server);
  if (r != 0)
    return r;
  if (server->config.allow_reuse_port && !is_unix(server)) {
    r = set_flag(server->fd, SOL_SOCKET, SO_REUSEPORT, 1);
    if (r != 0)
      return r;
  }
  if (server->address.u.sa.sa_family == AF_INET6) {
    r = set_flag(server->fd,
                 IPPROTO_IPV6,
                 IPV6_V6ONLY,
                 server->config.ipv6_only ? 1 : 0);
    if (r != 0)
      return r;
  }
  r = unix_prepare(server);
  if (r != 0)
    return r;
  if (bind(server->fd, &server->address.u.sa, server->address.len) != 0)
    return UVS__ERR(errno);
  /* Remember which file is ours, for the unlink at close. */
  path = unix_path(server);
  if (path != NULL && stat(path, &st) == 0) {
    server->path_bound = true;
    server->path_dev = st.st_dev;
    server->path_ino = st.st_ino;
  }
  /* Port 0 becomes the real port (socketserver's server_address). */
  if (getsockname(server->fd, (struct sockaddr*) &ss, &len) != 0)
    return UVS__ERR(errno);
  /* Linux reports a Unix name as given; keep the parsed one, which is
   * what the user wrote. */
  if (!is_unix(server)) {
    r = uvs__addr_from_sockaddr(&server->address,
                                server->address.transport,
                                (struct sockaddr*) &ss,
                                len);
    if (r != 0)
      return r;
  }
  server->bound = true;
  return 0;
}


void uvs__sock_unlink(uvs_server_t* server) {
  const char* path = unix_path(server);
  struct stat st;

  if (!server->path_bound || path == NULL)
    return;
  server->path_bound = false;
  if (!server->config.unlink_on_close)
    return;
  if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode) &&
      st.st_dev == server->path_dev && st.st_ino == server->path_ino) {
    unlink(path);
  }
}
