/* SPDX-License-Identifier: MIT */
/*
 * The test harness: libuv-style asserts that print both operands and abort
 * (never assert(), which NDEBUG removes), TAP output for meson, a per-case
 * timeout, an open-fd check around every case, and blocking client helpers
 * for loopback tests. Each test file lists its cases in one array and ends
 * with TEST_MAIN(cases). `test_x name` runs one case.
 */
#ifndef UVS_TEST_H
#define UVS_TEST_H

#include "uvs.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- Asserts --------------------------------------------------------- */

/* A failing case first ends the rest of its process group when it leads
 * one (meson runs each test in a session of its own; a test started from
 * a shell does not lead its group and leaves it alone): a forking server's
 * children would otherwise outlive the test, holding its output pipe open
 * so that meson waits for them forever. Async-signal-safe. */
static inline void test__end_group(void) {
  if (getpgrp() == getpid()) {
    signal(SIGTERM, SIG_IGN);
    kill(0, SIGTERM);
  }
}

#define TEST__FAIL(...)                                       \
 do {                                                         \
  fprintf(stdout, "# %s:%d: ", __FILE__, __LINE__);           \
  fprintf(stdout, __VA_ARGS__);                               \
  fprintf(stdout, "\nBail out! %s:%d\n", __FILE__, __LINE__); \
  fflush(stdout);                                             \
  test__end_group();                                          \
  abort();                                                    \
 } while (0)

#define TEST__CMP(a, op, b)                               \
 do {                                                     \
  int64_t test_a_ = (int64_t) (a);                        \
  int64_t test_b_ = (int64_t) (b);                        \
  if (!(test_a_ op test_b_))                              \
   TEST__FAIL("ASSERT %s %s %s: %" PRId64 " vs %" PRId64, \
              #a,                                         \
              #op,                                        \
              #b,                                         \
              test_a_,                                    \
              test_b_);                                   \
 } while (0)

#define ASSERT_EQ(a, b) TEST__CMP(a, ==, b)
#define ASSERT_NE(a, b) TEST__CMP(a, !=, b)
#define ASSERT_LT(a, b) TEST__CMP(a, <, b)
#define ASSERT_LE(a, b) TEST__CMP(a, <=, b)
#define ASSERT_GT(a, b) TEST__CMP(a, >, b)
#define ASSERT_GE(a, b) TEST__CMP(a, >=, b)
#define ASSERT_TRUE(a)  TEST__CMP(!!(a), ==, 1)
#define ASSERT_FALSE(a) TEST__CMP(!!(a), ==, 0)

#define ASSERT_OK(expr)                                                        \
 do {                                                                          \
  int test_r_ = (int) (expr);                                                  \
  if (test_r_ != 0)                                                            \
   TEST__FAIL("ASSERT_OK %s: %d (%s)", #expr, test_r_, uvs_strerror(test_r_)); \
 } while (0)

#define ASSERT_ERR(expr, err)                        \
 do {                                                \
  int test_r_ = (int) (expr);                        \
  if (test_r_ != (err))                              \
   TEST__FAIL("ASSERT_ERR %s: got %d (%s), want %s", \
              #expr,                                 \
              test_r_,                               \
              uvs_err_name(test_r_),                 \
              #err);                                 \
 } while (0)

#define ASSERT_PTR_EQ(a, b)                                                  \
 do {                                                                        \
  const void* test_a_ = (const void*) (a);                                   \
  const void* test_b_ = (const void*) (b);                                   \
  if (test_a_ != test_b_)                                                    \
   TEST__FAIL("ASSERT_PTR_EQ %s == %s: %p vs %p", #a, #b, test_a_, test_b_); \
 } while (0)

#define ASSERT_NULL(a)     ASSERT_PTR_EQ(a, NULL)
#define ASSERT_NOT_NULL(a) ASSERT_TRUE((a) != NULL)

#define ASSERT_STR_EQ(a, b)                                                \
 do {                                                                      \
  const char* test_a_ = (a);                                               \
  const char* test_b_ = (b);                                               \
  if (test_a_ == NULL || test_b_ == NULL || strcmp(test_a_, test_b_) != 0) \
   TEST__FAIL("ASSERT_STR_EQ %s == %s: \"%s\" vs \"%s\"",                  \
              #a,                                                          \
              #b,                                                          \
              test_a_ ? test_a_ : "(null)",                                \
              test_b_ ? test_b_ : "(null)");                               \
 } while (0)

#define ASSERT_MEM_EQ(a, b, n)                                                \
 do {                                                                         \
  if (memcmp((a), (b), (n)) != 0)                                             \
   TEST__FAIL("ASSERT_MEM_EQ %s == %s over %zu bytes", #a, #b, (size_t) (n)); \
 } while (0)

/* ---- Cases and TAP --------------------------------------------------- */

typedef struct {
  const char* name;
  void (*fn)(void);
} test_case_t;

/* Seconds one case may take before it is killed (alarm). */
#ifndef TEST_CASE_TIMEOUT
# define TEST_CASE_TIMEOUT 20
#endif

static inline int test_count_fds(void) {
  int n = 0;
  DIR* dir = opendir("/proc/self/fd");
  struct dirent* ent;
  if (dir == NULL)
    return -1;
  while ((ent = readdir(dir)) != NULL) {
    if (ent->d_name[0] != '.')
      n++;
  }
  closedir(dir);
  return n - 1; /* the directory's own descriptor */
}

static inline void test_on_alarm(int sig) {
  static const char msg[] = "Bail out! case timed out\n";
  (void) sig;
  (void) !write(1, msg, sizeof(msg) - 1);
  test__end_group();
  _exit(1);
}

static inline int test_run(const test_case_t* cases,
                           size_t count,
                           int argc,
                           char** argv) {
  size_t i;
  size_t n = 0;
  uv_loop_t warm;
  setvbuf(stdout, NULL, _IOLBF, 0);
  /* libuv opens descriptors of its own, for the life of the process, at
   * the first uv_loop_init (its signal pipe): take them before counting. */
  if (uv_loop_init(&warm) == 0)
    uv_loop_close(&warm);
  signal(SIGALRM, test_on_alarm);
  for (i = 0; i < count; i++) {
    if (argc < 2 || strcmp(argv[1], cases[i].name) == 0)
      n++;
  }
  printf("1..%zu\n", n);
  n = 0;
  for (i = 0; i < count; i++) {
    int before;
    int after;
    if (argc >= 2 && strcmp(argv[1], cases[i].name) != 0)
      continue;
    n++;
    before = test_count_fds();
    alarm(TEST_CASE_TIMEOUT);
    cases[i].fn();
    alarm(0);
    after = test_count_fds();
    if (before != after)
      TEST__FAIL("case %s leaked descriptors: %d before, %d after",
                 cases[i].name,
                 before,
                 after);
    printf("ok %zu - %s\n", n, cases[i].name);
  }
  return 0;
}

#define TEST_MAIN(cases)                                                  \
 int main(int argc, char** argv) {                                        \
  return test_run(cases, sizeof(cases) / sizeof((cases)[0]), argc, argv); \
 }

/* ---- Loops ----------------------------------------------------------- */

static inline void test_walk_cb(uv_handle_t* handle, void* arg) {
  (void) arg;
  printf("# open handle: %s%s\n",
         uv_handle_type_name(uv_handle_get_type(handle)),
         uv_is_closing(handle) ? " (closing)" : "");
}

/* Ends a case's loop: nothing may be left open on it. */
static inline void test_loop_close(uv_loop_t* loop) {
  int r;
  uv_run(loop, UV_RUN_NOWAIT);
  r = uv_loop_close(loop);
  if (r != 0) {
    uv_walk(loop, test_walk_cb, NULL);
    TEST__FAIL("uv_loop_close: %s", uv_strerror(r));
  }
}

static inline uint64_t test_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

/* ---- Blocking clients (run on threads other than the loop's) --------- */

/* The port of a formatted tcp address ("tcp://127.0.0.1:4321" -> 4321). */
static inline int test_server_port(uvs_server_t* server) {
  char buf[UVS_ADDRSTRLEN];
  size_t size = sizeof(buf);
  const char* colon;
  if (uvs_server_address(server, buf, &size) != 0)
    TEST__FAIL("uvs_server_address failed");
  colon = strrchr(buf, ':');
  if (colon == NULL)
    TEST__FAIL("no port in %s", buf);
  return atoi(colon + 1);
}

/* Connects a blocking TCP client to `host` ("127.0.0.1" or "::1"). */
static inline int test_connect(const char* host, int port) {
  struct sockaddr_storage ss;
  socklen_t len;
  int fd;
  memset(&ss, 0, sizeof(ss));
  if (strchr(host, ':') != NULL) {
    struct sockaddr_in6* in6 = (struct sockaddr_in6*) &ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t) port);
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
      TEST__FAIL("bad host %s", host);
    len = sizeof(*in6);
  } else {
    struct sockaddr_in* in = (struct sockaddr_in*) &ss;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t) port);
    if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
      TEST__FAIL("bad host %s", host);
    len = sizeof(*in);
  }
  fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    TEST__FAIL("socket: %s", strerror(errno));
  if (connect(fd, (struct sockaddr*) &ss, len) != 0)
    TEST__FAIL("connect %s:%d: %s", host, port, strerror(errno));
  return fd;
}

static inline void test_send_all(int fd, const void* data, size_t len) {
  const char* p = data;
  while (len > 0) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      TEST__FAIL("send: %s", strerror(errno));
    p += n;
    len -= (size_t) n;
  }
}

/* Reads until `len` bytes, EOF or `timeout_ms`; returns the bytes read, or
 * -errno on a read error. */
static inline ssize_t test_recv_n(int fd,
                                  void* buf,
                                  size_t len,
                                  int timeout_ms) {
  char* p = buf;
  size_t got = 0;
  uint64_t deadline = test_now_ms() + (uint64_t) timeout_ms;
  while (got < len) {
    struct pollfd pfd;
    ssize_t n;
    uint64_t now = test_now_ms();
    if (now >= deadline)
      break;
    pfd.fd = fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    if (poll(&pfd, 1, (int) (deadline - now)) <= 0)
      continue;
    n = recv(fd, p + got, len - got, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -errno;
    if (n == 0)
      break;
    got += (size_t) n;
  }
  return (ssize_t) got;
}

/* Returns 1 when the peer has closed (recv gives 0 or a reset) within
 * `timeout_ms`, 0 when it has not. Data that arrives first is discarded. */
static inline int test_wait_eof(int fd, int timeout_ms) {
  char buf[4096];
  ssize_t n;
  do {
    n = test_recv_n(fd, buf, sizeof(buf), timeout_ms);
  } while (n == (ssize_t) sizeof(buf));
  if (n < 0)
    return 1;
  /* test_recv_n stops early only at EOF or at the deadline. */
  {
    struct pollfd pfd = { fd, POLLIN, 0 };
    if (poll(&pfd, 1, 0) == 1) {
      n = recv(fd, buf, 1, MSG_DONTWAIT);
      return n <= 0;
    }
  }
  return 0;
}

/* A temporary directory under /tmp, removed with everything left in it;
 * Unix socket paths of a case live in one. */
typedef struct {
  char path[64];
} test_tmpdir_t;

static inline void test_tmpdir_make(test_tmpdir_t* dir) {
  snprintf(dir->path, sizeof(dir->path), "/tmp/uvs-test-XXXXXX");
  if (mkdtemp(dir->path) == NULL)
    TEST__FAIL("mkdtemp: %s", strerror(errno));
}

/* `out` = the directory's path, '/', `name`. */
static inline void test_tmpdir_file(const test_tmpdir_t* dir,
                                    const char* name,
                                    char* out,
                                    size_t cap) {
  int n = snprintf(out, cap, "%s/%s", dir->path, name);
  ASSERT_TRUE(n > 0 && (size_t) n < cap);
}

static inline int test_tmpdir_remove_entry(const char* path,
                                           const struct stat* st,
                                           int flag,
                                           struct FTW* ftw) {
  (void) st;
  (void) ftw;
  if (flag == FTW_DP)
    return rmdir(path);
  return unlink(path);
}

/* Removes the directory and everything left in it. */
static inline void test_tmpdir_remove(const test_tmpdir_t* dir) {
  if (nftw(dir->path, test_tmpdir_remove_entry, 8, FTW_DEPTH | FTW_PHYS) != 0)
    TEST__FAIL("removing %s: %s", dir->path, strerror(errno));
}


#endif /* UVS_TEST_H */
