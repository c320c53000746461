/* SPDX-License-Identifier: MIT */
/*
 * Forking mode (socketserver's ForkingMixIn): CPython's test_socketserver
 * matrix for ForkingTCPServer, ForkingUnixStreamServer, ForkingUDPServer
 * and ForkingUnixDatagramServer (socketserver-reference.md section 3.1,
 * cases 3, 6, 9 and 12), the ErrorHandlerTest cases test_forking_handled
 * and test_forking_not_handled (21, 22), then what section 4.3 asks of a
 * forking server: children reaped promptly and only its own (a foreign
 * child of the test and uv_spawn's children keep their exit status), 50
 * children at once, the max_children cap, crash isolation, close with and
 * without block_on_close (a child that must be killed, a close on the
 * caller's loop that waits without blocking it, a listening socket no
 * child keeps open), and handle_request serving one child to its end.
 *
 * The handler is the suite's MyHandler (readline, write), with a few
 * special lines: "block" waits for a token the test hands out, "barrier"
 * waits until the test lets every child go at once, "sleep" sleeps
 * sleep_ms first, "hang" sleeps for good, "crash:abort", "crash:segv" and
 * "exit:7" end the child badly, "stop" returns UVS_ESTOP and "stop:reply"
 * echoes first. Handlers run in the children, so everything the test
 * observes lives in a MAP_SHARED mapping (atomics) or, for the
 * ErrorHandlerTest log, in a file, as in Python. handle_error runs in the
 * child for a handler's error and in the test process for a child that
 * ended badly; it tells them apart by pid.
 *
 * Forked children inherit the test's open client sockets (the test is
 * client and server in one process), so a child never sees its client's
 * EOF while it holds a copy itself: every server lingers only LINGER_MS,
 * and the 50-client case runs its clients in processes of their own.
 * SIGCHLD interrupts the test's poll and sleeps: every wait retries on
 * EINTR against a deadline.
 *
 * Every case binds port 0 or a path in a mkdtemp directory, ends only the
 * processes it started, and ends by proving the test process has no child
 * left, running or <defunct> (a scan of /proc/<pid>/stat).
 */
#define TEST_CASE_TIMEOUT 60
#include "test.h"

#include <ftw.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#define TEST_STR     "hello world\n"
#define TEST_STR_LEN (sizeof(TEST_STR) - 1)
#define IO_TIMEOUT   5000  /* ms; every client read is bounded by this */
#define QUIET_MS     300   /* ms waited for something that must not come */
#define LINGER_MS    50    /* the servers' close_linger_ms */
#define HANDLER_MS   10000 /* ms a blocked handler waits before failing */
#define LINE_MAX_LEN 256
#define PATH_CAP     256
#define ADDR_CAP     (PATH_CAP + 16)
#define FOREIGN_EXIT 72 /* simple_subprocess's dummy child */

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))


/* ---- Shared state ---------------------------------------------------- */

/* One MAP_SHARED page per case: the handlers write it from the children,
 * handle_error from both sides, the test reads it. */
typedef struct {
  pid_t parent;                 /* the test process */
  atomic_int handled;           /* handlers that read their line */
  atomic_int finished;          /* finish calls */
  atomic_int shutdown_requests; /* shutdown_request calls */
  atomic_int active;            /* handlers running now */
  atomic_int peak;              /* most handlers running at once */
  atomic_int tokens;            /* "block" handlers go on, one per token */
  atomic_int go;                /* "barrier" handlers go on */
  atomic_int slept;             /* "sleep" handlers that slept to the end */
  atomic_int in_parent;         /* handlers that ran in the test process */
  atomic_int pid;               /* the last handler's process */
  atomic_int sleep_ms;          /* how long "sleep" sleeps */
  atomic_int child_errors;      /* handle_error calls in children */
  atomic_int child_error;       /* the last of them */
  atomic_int errors;            /* handle_error calls in the test process */
  atomic_int last_error;        /* the last of them */
  atomic_int error_had_conn;    /* ... had a conn */
  atomic_int closed;            /* the close callback ran */
  atomic_int children_at_close; /* uvs_server_child_count there */
  int bad_result;               /* what BadHandler.handle returns */
  char log_path[PATH_CAP];      /* the ErrorHandlerTest log */
  uv_mutex_t lock;              /* error_peer; test process only */
  char error_peer[UVS_ADDRSTRLEN];
} shared_t;

static shared_t* shared_new(void) {
  shared_t* sh = mmap(NULL,
                      sizeof(*sh),
                      PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS,
                      -1,
                      0);
  if (sh == MAP_FAILED)
    TEST__FAIL("mmap: %s", strerror(errno));
  memset(sh, 0, sizeof(*sh));
  sh->parent = getpid();
  atomic_store(&sh->children_at_close, -1);
  ASSERT_OK(uv_mutex_init(&sh->lock));
  return sh;
}

static void shared_free(shared_t* sh) {
  uv_mutex_destroy(&sh->lock);
  ASSERT_OK(munmap(sh, sizeof(*sh)));
}

/* Reads a shared counter: a function, so that a failed assert prints the
 * expression as written rather than atomic_load's expansion. */
static int seen(atomic_int* v) {
  return atomic_load(v);
}

static shared_t* sh_of(uvs_server_t* server) {
  return uvs_server_get_data(server);
}

static int in_child(const shared_t* sh) {
  return getpid() != sh->parent;
}

static void raise_peak(atomic_int* peak, int v) {
  int old = seen(peak);
  while (v > old && !atomic_compare_exchange_weak(peak, &old, v))
    ;
}

/* Sleeps `ms` whatever signals arrive meanwhile. */
static void sleep_ms(int ms) {
  uint64_t deadline = test_now_ms() + (uint64_t) ms;
  uint64_t now;
  while ((now = test_now_ms()) < deadline)
    usleep((useconds_t) ((deadline - now > 100 ? 100 : deadline - now) * 1000));
}

/* Waits until *v reaches `want`, failing after IO_TIMEOUT. */
static void wait_count(atomic_int* v, int want, const char* what) {
  uint64_t deadline = test_now_ms() + IO_TIMEOUT;
  while (seen(v) < want) {
    if (test_now_ms() >= deadline)
      TEST__FAIL("%s: %d after %d ms, want %d",
                 what,
                 seen(v),
                 IO_TIMEOUT,
                 want);
    usleep(1000);
  }
}

/* Waits until the server has `want` children, failing after IO_TIMEOUT. */
static void wait_child_count(uvs_server_t* server, unsigned want) {
  uint64_t deadline = test_now_ms() + IO_TIMEOUT;
  while (uvs_server_child_count(server) != want) {
    if (test_now_ms() >= deadline)
      TEST__FAIL("uvs_server_child_count: %u after %d ms, want %u",
                 uvs_server_child_count(server),
                 IO_TIMEOUT,
                 want);
    usleep(1000);
  }
}


/* ---- Processes ------------------------------------------------------- */

/* Counts the processes whose parent is this one, `except` aside; the ones
 * in state Z (<defunct>) go to *zombies too. With `print` each is listed.
 * /proc/<pid>/stat reads "pid (comm) state ppid ...", and comm may hold any
 * byte but NUL. */
static int count_children(pid_t except, int* zombies, int print) {
  DIR* dir = opendir("/proc");
  struct dirent* ent;
  pid_t self = getpid();
  int n = 0;

  if (dir == NULL)
    TEST__FAIL("opendir /proc: %s", strerror(errno));
  *zombies = 0;
  while ((ent = readdir(dir)) != NULL) {
    char path[sizeof(ent->d_name) + 16];
    char buf[512];
    const char* end;
    char state;
    int ppid;
    ssize_t len;
    int fd;

    if (ent->d_name[0] < '0' || ent->d_name[0] > '9' ||
        atoi(ent->d_name) == (int) except) {
      continue;
    }
    snprintf(path, sizeof(path), "/proc/%s/stat", ent->d_name);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      continue; /* gone meanwhile */
    len = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (len <= 0)
      continue;
    buf[len] = '\0';
    end = strrchr(buf, ')');
    if (end == NULL || sscanf(end + 1, " %c %d", &state, &ppid) != 2)
      continue;
    if (ppid != (int) self)
      continue;
    if (print)
      printf("# child %s of the test: state %c\n", ent->d_name, state);
    n++;
    if (state == 'Z')
      (*zombies)++;
  }
  closedir(dir);
  return n;
}

/* The test process has no child left but `except`: none running, none
 * <defunct>. */
static void assert_no_children(pid_t except) {
  int zombies;
  int n = count_children(except, &zombies, 0);
  if (n != 0)
    count_children(except, &zombies, 1);
  ASSERT_EQ(zombies, 0);
  ASSERT_EQ(n, 0);
}

/* The same, allowing `ms` for children that are still ending. */
static void wait_no_children(int ms) {
  uint64_t deadline = test_now_ms() + (uint64_t) ms;
  int zombies;
  while (count_children(0, &zombies, 0) != 0) {
    if (test_now_ms() >= deadline)
      break;
    usleep(10 * 1000);
  }
  assert_no_children(0);
}

/* simple_subprocess: a child of the test that exits at once with
 * `status`, which nobody but the test may reap (bpo-1540386). */
static pid_t foreign_child(int status) {
  pid_t pid;
  fflush(stdout);
  pid = fork();
  if (pid < 0)
    TEST__FAIL("fork: %s", strerror(errno));
  if (pid == 0)
    _exit(status);
  return pid;
}

/* Reaps `pid` and checks it exited with `status`. */
static void reap_foreign(pid_t pid, int status) {
  int st = 0;
  pid_t r;
  do
    r = waitpid(pid, &st, 0);
  while (r < 0 && errno == EINTR);
  if (r != pid)
    TEST__FAIL("waitpid(%d): %d (%s): somebody else reaped it",
               (int) pid,
               (int) r,
               strerror(errno));
  ASSERT_TRUE(WIFEXITED(st));
  ASSERT_EQ(WEXITSTATUS(st), status);
}

/* The process `pid` is gone and reaped: kill(pid, 0) fails with ESRCH (a
 * zombie would still take the signal). */
static int process_gone(pid_t pid) {
  return kill(pid, 0) == -1 && errno == ESRCH;
}

static void wait_process_gone(pid_t pid, int ms) {
  uint64_t deadline = test_now_ms() + (uint64_t) ms;
  while (!process_gone(pid)) {
    if (test_now_ms() >= deadline)
      TEST__FAIL("process %d still exists after %d ms", (int) pid, ms);
    usleep(5 * 1000);
  }
}


/* ---- Temporary directories ------------------------------------------ */


/* ---- Handlers -------------------------------------------------------- */

static int is_line(const char* line, ssize_t n, const char* word) {
  size_t len = strlen(word);
  return (size_t) n >= len && memcmp(line, word, len) == 0;
}

/* A crash should not write a core file. */
static void no_core(void) {
  struct rlimit rl = { 0, 0 };
  setrlimit(RLIMIT_CORE, &rl);
}

/* Takes one token; fails after HANDLER_MS. */
static int take_token(shared_t* sh) {
  uint64_t deadline = test_now_ms() + HANDLER_MS;
  for (;;) {
    int t = seen(&sh->tokens);
    if (t > 0 && atomic_compare_exchange_weak(&sh->tokens, &t, t - 1))
      return 0;
    if (test_now_ms() >= deadline)
      return UV_ETIMEDOUT;
    usleep(1000);
  }
}

static int wait_go(shared_t* sh) {
  uint64_t deadline = test_now_ms() + HANDLER_MS;
  while (!seen(&sh->go)) {
    if (test_now_ms() >= deadline)
      return UV_ETIMEDOUT;
    usleep(1000);
  }
  return 0;
}

/* What a special line asks for before the echo: 0 to echo, 1 to echo
 * and return UVS_ESTOP, else what the handler returns. */
static int act(shared_t* sh, const char* line, ssize_t n) {
  if (is_line(line, n, "crash:abort")) {
    no_core();
    abort();
  }
  if (is_line(line, n, "crash:segv")) {
    no_core();
    raise(SIGSEGV);
    _exit(99); /* not reached */
  }
  if (is_line(line, n, "exit:7"))
    _exit(7);
  if (is_line(line, n, "stop:reply"))
    return 1; /* the echo, then UVS_ESTOP */
  if (is_line(line, n, "stop"))
    return UVS_ESTOP;
  if (is_line(line, n, "block"))
    return take_token(sh);
  if (is_line(line, n, "barrier"))
    return wait_go(sh);
  if (is_line(line, n, "sleep")) {
    sleep_ms(seen(&sh->sleep_ms));
    atomic_fetch_add(&sh->slept, 1);
  }
  if (is_line(line, n, "hang"))
    sleep_ms(HANDLER_MS * 2);
  return 0;
}

/* MyHandler: line = rfile.readline(); wfile.write(line), after what the
 * line asks for. Stream and datagram requests alike. */
static int line_handle(uvs_conn_t* conn) {
  shared_t* sh = sh_of(uvs_conn_server(conn));
  char line[LINE_MAX_LEN];
  ssize_t n = uvs_readline(conn, line, sizeof(line));
  int r;

  if (n < 0)
    return (int) n;
  if (!in_child(sh))
    atomic_fetch_add(&sh->in_parent, 1);
  atomic_store(&sh->pid, (int) getpid());
  raise_peak(&sh->peak, atomic_fetch_add(&sh->active, 1) + 1);
  atomic_fetch_add(&sh->handled, 1);
  r = act(sh, line, n);
  atomic_fetch_sub(&sh->active, 1);
  if (r == 1) {
    r = uvs_write(conn, line, (size_t) n);
    return r != 0 ? r : UVS_ESTOP;
  }
  if (r != 0)
    return r;
  return uvs_write(conn, line, (size_t) n);
}

static int count_finish(uvs_conn_t* conn) {
  atomic_fetch_add(&sh_of(uvs_conn_server(conn))->finished, 1);
  return 0;
}

static void count_shutdown_request(uvs_server_t* server,
                                   uv_os_sock_t fd,
                                   const uvs_address_t* peer) {
  (void) fd;
  (void) peer;
  atomic_fetch_add(&sh_of(server)->shutdown_requests, 1);
}

/* Appends `line` to the ErrorHandlerTest log (from any process). */
static void log_line(shared_t* sh, const char* line) {
  int fd = open(sh->log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0)
    return;
  (void) !write(fd, line, strlen(line));
  close(fd);
}

/* handle_error. In a child (a handler's error): counted and logged as
 * Python's "Error handled". In the test process (a child that ended
 * badly): counted with its status, conn and peer. */
static void record_error(uvs_server_t* server,
                         uvs_conn_t* conn,
                         const uvs_address_t* peer,
                         int status) {
  shared_t* sh = sh_of(server);
  char text[UVS_ADDRSTRLEN];
  size_t size = sizeof(text);

  if (in_child(sh)) {
    atomic_store(&sh->child_error, status);
    atomic_fetch_add(&sh->child_errors, 1);
    if (sh->log_path[0] != '\0')
      log_line(sh, "Error handled\n");
    return;
  }
  if (peer == NULL || uvs_address_format(peer, text, &size) != 0)
    snprintf(text, sizeof(text), "(none)");
  uv_mutex_lock(&sh->lock);
  memcpy(sh->error_peer, text, sizeof(text));
  uv_mutex_unlock(&sh->lock);
  atomic_store(&sh->error_had_conn, conn != NULL);
  atomic_store(&sh->last_error, status);
  atomic_fetch_add(&sh->errors, 1);
}

static void error_peer(shared_t* sh, char* out) {
  uv_mutex_lock(&sh->lock);
  memcpy(out, sh->error_peer, UVS_ADDRSTRLEN);
  uv_mutex_unlock(&sh->lock);
}


/* ---- Servers --------------------------------------------------------- */

/* The config of every server here: forking, a short linger, the
 * recording hooks; `base` (NULL: defaults) gives the rest. */
static uvs_config_t fork_config(const uvs_config_t* base) {
  uvs_config_t config;
  if (base != NULL)
    config = *base;
  else
    uvs_config_init(&config);
  config.mode = UVS_MODE_FORKING;
  config.close_linger_ms = LINGER_MS;
  config.hooks.handle_error = record_error;
  config.hooks.shutdown_request = count_shutdown_request;
  return config;
}

/* A forking MyHandler server on `loop` (NULL: a loop of its own). */
static uvs_server_t* new_server(uv_loop_t* loop,
                                const char* address,
                                const uvs_config_t* base,
                                shared_t* sh) {
  uvs_config_t config = fork_config(base);
  uvs_handler_t handler;
  uvs_server_t* server = NULL;

  memset(&handler, 0, sizeof(handler));
  handler.handle = line_handle;
  handler.finish = count_finish;
  ASSERT_OK(uvs_server_new(loop, &server, address, &handler, &config));
  ASSERT_NOT_NULL(server);
  uvs_server_set_data(server, sh);
  ASSERT_EQ(uvs_server_child_count(server), 0);
  return server;
}

static void on_closed(uvs_server_t* server) {
  shared_t* sh = sh_of(server);
  atomic_store(&sh->children_at_close, (int) uvs_server_child_count(server));
  atomic_store(&sh->closed, 1);
}

/* uvs_server_close on an owned loop: synchronous, and its callback saw no
 * child left (bpo-31151: active_children empty after server_close). */
static void close_server(uvs_server_t* server, shared_t* sh) {
  atomic_store(&sh->closed, 0);
  ASSERT_OK(uvs_server_close(server, on_closed));
  ASSERT_EQ(seen(&sh->closed), 1);
  ASSERT_EQ(seen(&sh->children_at_close), 0);
}

/* The server's address, parsed back (a client's destination). */
static void server_addr(uvs_server_t* server, uvs_address_t* addr) {
  char text[UVS_ADDRSTRLEN];
  size_t size = sizeof(text);
  ASSERT_OK(uvs_server_address(server, text, &size));
  ASSERT_OK(uvs_address_parse(text, addr));
}


/* serve_forever on a pthread (run_server's daemon thread). */
typedef struct {
  pthread_t thread;
  uvs_server_t* server;
  int result;
  atomic_int returned;
} serve_thread_t;

static void* serve_main(void* arg) {
  serve_thread_t* t = arg;
  t->result = uvs_server_serve_forever(t->server, 10);
  atomic_store(&t->returned, 1);
  return NULL;
}

static void serve_start(serve_thread_t* t, uvs_server_t* server) {
  t->server = server;
  t->result = -12345;
  atomic_store(&t->returned, 0);
  ASSERT_OK(pthread_create(&t->thread, NULL, serve_main, t));
}

/* Joins a serve_forever that must return by itself (a UVS_ESTOP), failing
 * after IO_TIMEOUT rather than waiting for ever; returns its result. */
static int serve_join(serve_thread_t* t) {
  wait_count(&t->returned, 1, "serve_forever returned");
  ASSERT_OK(pthread_join(t->thread, NULL));
  return t->result;
}

/* shutdown, join; returns serve_forever's result. */
static int serve_stop(serve_thread_t* t) {
  ASSERT_OK(uvs_server_shutdown(t->server));
  ASSERT_OK(pthread_join(t->thread, NULL));
  return t->result;
}


/* Counts into the int its handle's data points to (may be NULL). */
static void on_tick(uv_timer_t* timer) {
  int* ticks = uv_handle_get_data((uv_handle_t*) timer);
  if (ticks != NULL)
    (*ticks)++;
}

/* Runs `loop` until `cond` holds, failing after IO_TIMEOUT; the case keeps
 * a repeating timer on the loop, so each uv_run returns in time to look. */
#define RUN_UNTIL(loop, cond)                            \
 do {                                                    \
  uint64_t test_deadline_ = test_now_ms() + IO_TIMEOUT;  \
  while (!(cond)) {                                      \
   if (test_now_ms() >= test_deadline_)                  \
    TEST__FAIL("no %s within %d ms", #cond, IO_TIMEOUT); \
   uv_run((loop), UV_RUN_ONCE);                          \
  }                                                      \
 } while (0)


/* ---- Clients --------------------------------------------------------- */

/* connect(2) that survives a signal: after EINTR the connection goes on
 * in the background, so wait for it. Returns 0 or an errno. */
static int connect_retry(int fd, const struct sockaddr* sa, socklen_t len) {
  struct pollfd pfd;
  int err = 0;
  socklen_t errlen = sizeof(err);

  if (connect(fd, sa, len) == 0)
    return 0;
  if (errno != EINTR)
    return errno;
  pfd.fd = fd;
  pfd.events = POLLOUT;
  pfd.revents = 0;
  while (poll(&pfd, 1, IO_TIMEOUT) < 0 && errno == EINTR)
    ;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errlen) != 0)
    return errno;
  return err;
}

/* Connects and closes at once; returns 0 or -errno. */
static int try_connect(const uvs_address_t* to) {
  int fd = socket(to->u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int err;
  if (fd < 0)
    TEST__FAIL("socket: %s", strerror(errno));
  err = connect_retry(fd, &to->u.sa, to->len);
  close(fd);
  return -err;
}

static int stream_client(const uvs_address_t* to) {
  int fd = socket(to->u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int err;
  if (fd < 0)
    TEST__FAIL("socket: %s", strerror(errno));
  err = connect_retry(fd, &to->u.sa, to->len);
  if (err != 0)
    TEST__FAIL("connect: %s", strerror(err));
  return fd;
}

/* A datagram client: an IP one bound to the loopback address, a Unix
 * one to `name` (Python's dgram_examine binds it, or no reply could
 * come back). */
static int dgram_client(const uvs_address_t* to, const char* name) {
  int fd = socket(to->u.sa.sa_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct sockaddr_storage ss;
  socklen_t len;

  if (fd < 0)
    TEST__FAIL("socket: %s", strerror(errno));
  memset(&ss, 0, sizeof(ss));
  if (to->u.sa.sa_family == AF_UNIX) {
    struct sockaddr_un* un = (struct sockaddr_un*) &ss;
    ASSERT_NOT_NULL(name);
    ASSERT_LT(strlen(name), sizeof(un->sun_path));
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, name, strlen(name));
    len =
        (socklen_t) (offsetof(struct sockaddr_un, sun_path) + strlen(name) + 1);
  } else {
    struct sockaddr_in* in = (struct sockaddr_in*) &ss;
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof(*in);
  }
  if (bind(fd, (struct sockaddr*) &ss, len) != 0)
    TEST__FAIL("bind client: %s", strerror(errno));
  return fd;
}

/* An IPv4 client's own address, as the server formats its peer. */
static void client_text(int fd, const char* scheme, char* out, size_t cap) {
  struct sockaddr_in in;
  socklen_t len = sizeof(in);
  ASSERT_OK(getsockname(fd, (struct sockaddr*) &in, &len));
  ASSERT_EQ(in.sin_family, AF_INET);
  snprintf(out, cap, "%s://127.0.0.1:%d", scheme, ntohs(in.sin_port));
}

static void dgram_send(int fd, const uvs_address_t* to, const char* data) {
  size_t len = strlen(data);
  ssize_t n;
  do
    n = sendto(fd, data, len, 0, &to->u.sa, to->len);
  while (n < 0 && errno == EINTR);
  if (n < 0)
    TEST__FAIL("sendto: %s", strerror(errno));
  ASSERT_EQ(n, len);
}

/* Waits up to `timeout_ms` for one datagram; returns its length, or -1
 * when none came. */
static ssize_t dgram_recv(int fd, char* buf, size_t cap, int timeout_ms) {
  uint64_t deadline = test_now_ms() + (uint64_t) timeout_ms;
  for (;;) {
    struct pollfd pfd = { fd, POLLIN, 0 };
    uint64_t now = test_now_ms();
    ssize_t n;

    if (now >= deadline)
      return -1;
    if (poll(&pfd, 1, (int) (deadline - now)) <= 0)
      continue;
    n = recv(fd, buf, cap, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
      continue;
    if (n < 0)
      TEST__FAIL("recv: %s", strerror(errno));
    return n;
  }
}

/* receive(): 100 bytes at a time until a '\n' or EOF, within
 * `timeout_ms`; NUL-terminates `buf`. */
static size_t recv_line(int fd, char* buf, size_t cap, int timeout_ms) {
  uint64_t deadline = test_now_ms() + (uint64_t) timeout_ms;
  size_t got = 0;

  while (got + 1 < cap && memchr(buf, '\n', got) == NULL) {
    struct pollfd pfd = { fd, POLLIN, 0 };
    size_t want = cap - 1 - got < 100 ? cap - 1 - got : 100;
    uint64_t now = test_now_ms();
    ssize_t n;

    if (now >= deadline)
      break;
    if (poll(&pfd, 1, (int) (deadline - now)) <= 0)
      continue;
    n = recv(fd, buf + got, want, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
      continue;
    if (n <= 0)
      break;
    got += (size_t) n;
  }
  buf[got] = '\0';
  return got;
}

static int readable_within(int fd, int timeout_ms) {
  uint64_t deadline = test_now_ms() + (uint64_t) timeout_ms;
  for (;;) {
    struct pollfd pfd = { fd, POLLIN, 0 };
    uint64_t now = test_now_ms();
    int r = poll(&pfd, 1, now >= deadline ? 0 : (int) (deadline - now));
    if (r > 0)
      return 1;
    if (r == 0 || test_now_ms() >= deadline)
      return 0;
  }
}

/* stream_examine: connect, send TEST_STR, read the echo back. */
static void stream_examine(const uvs_address_t* to) {
  char buf[LINE_MAX_LEN];
  int fd = stream_client(to);
  test_send_all(fd, TEST_STR, TEST_STR_LEN);
  ASSERT_EQ(recv_line(fd, buf, sizeof(buf), IO_TIMEOUT), TEST_STR_LEN);
  ASSERT_STR_EQ(buf, TEST_STR);
  close(fd);
}

/* dgram_examine: a client (a Unix one bound to `name`, removed after)
 * sends TEST_STR and reads the echo. */
static void dgram_examine(const uvs_address_t* to, const char* name) {
  char buf[LINE_MAX_LEN];
  int fd = dgram_client(to, name);
  dgram_send(fd, to, TEST_STR);
  ASSERT_EQ(dgram_recv(fd, buf, sizeof(buf), IO_TIMEOUT), TEST_STR_LEN);
  ASSERT_MEM_EQ(buf, TEST_STR, TEST_STR_LEN);
  close(fd);
  if (name != NULL)
    ASSERT_OK(unlink(name));
}


/* ---- SocketServerTest: the forking matrix (cases 3, 6, 9, 12) -------- */

/* run_server with a forking server: serve_forever(poll_interval=0.01) on a
 * thread, three examine calls, shutdown, join, server_close; the socket
 * is closed after, the socket file gone, every child served in a child
 * (never in the test process), and none is left: the close callback saw
 * uvs_server_child_count 0 (with block_on_close) and the test process has
 * no child, running or <defunct>. With `foreign` it is wrapped in
 * simple_subprocess: a child of the test that exits with 72 before the
 * server exists must still be there for the test to reap afterwards; a
 * second one (73) exits while the server serves. */
static void run_server(const char* transport, int foreign) {
  test_tmpdir_t dir;
  shared_t* sh = shared_new();
  serve_thread_t t;
  uvs_server_t* server;
  uvs_address_t to;
  char path[PATH_CAP];
  char address[ADDR_CAP];
  pid_t early = 0;
  pid_t during = 0;
  int dgram;
  int fd;
  int i;

  path[0] = '\0';
  test_tmpdir_make(&dir);
  if (foreign)
    early = foreign_child(FOREIGN_EXIT);
  if (strcmp(transport, "tcp") == 0 || strcmp(transport, "udp") == 0) {
    snprintf(address, sizeof(address), "%s://127.0.0.1:0", transport);
  } else {
    test_tmpdir_file(&dir, "server.sock", path, sizeof(path));
    snprintf(address, sizeof(address), "%s:%s", transport, path);
  }
  server = new_server(NULL, address, NULL, sh);
  server_addr(server, &to);
  dgram = to.transport == UVS_TRANSPORT_UDP ||
          to.transport == UVS_TRANSPORT_UNIXGRAM;
  fd = uvs_server_fileno(server);
  ASSERT_GE(fd, 0);

  serve_start(&t, server);
  if (foreign)
    during = foreign_child(FOREIGN_EXIT + 1);
  for (i = 0; i < 3; i++) {
    if (!dgram) {
      stream_examine(&to);
    } else if (to.transport == UVS_TRANSPORT_UNIXGRAM) {
      char name[PATH_CAP];
      char file[32];
      snprintf(file, sizeof(file), "client%d.sock", i);
      test_tmpdir_file(&dir, file, name, sizeof(name));
      dgram_examine(&to, name);
    } else {
      dgram_examine(&to, NULL);
    }
  }
  ASSERT_OK(serve_stop(&t));
  close_server(server, sh);
  errno = 0;
  ASSERT_EQ(fcntl(fd, F_GETFD), -1);
  ASSERT_EQ(errno, EBADF);
  if (to.transport == UVS_TRANSPORT_UNIX ||
      to.transport == UVS_TRANSPORT_UNIXGRAM) {
    struct stat st;
    ASSERT_EQ(lstat(path, &st), -1);
  }

  ASSERT_EQ(seen(&sh->handled), 3);
  ASSERT_EQ(seen(&sh->finished), 3);
  ASSERT_EQ(seen(&sh->shutdown_requests), 3);
  ASSERT_EQ(seen(&sh->in_parent), 0);
  ASSERT_EQ(seen(&sh->errors), 0);
  ASSERT_EQ(seen(&sh->child_errors), 0);
  if (foreign) {
    /* uvs reaped none of them: both are still <defunct>, for us. */
    int zombies;
    ASSERT_EQ(count_children(0, &zombies, 1), 2);
    ASSERT_EQ(zombies, 2);
    reap_foreign(early, FOREIGN_EXIT);
    reap_foreign(during, FOREIGN_EXIT + 1);
  }
  assert_no_children(0);
  test_tmpdir_remove(&dir);
  shared_free(sh);
}

/* test_ForkingTCPServer (case 3), in simple_subprocess. */
static void forking_tcp_server(void) {
  run_server("tcp", 1);
}

/* test_ForkingUnixStreamServer (case 6), in simple_subprocess. */
static void forking_unix_stream_server(void) {
  run_server("unix", 1);
}

/* test_ForkingUDPServer (case 9), in simple_subprocess. */
static void forking_udp_server(void) {
  run_server("udp", 1);
}

/* test_ForkingUnixDatagramServer (case 12): no simple_subprocess, as
 * Python. */
static void forking_unix_datagram_server(void) {
  run_server("unixgram", 0);
}


/* ---- ErrorHandlerTest: test_forking_handled / _not_handled ----------- */

/* BadHandler.handle: logs "Handler called" (in the child), then fails. */
static int bad_handle(uvs_conn_t* conn) {
  shared_t* sh = sh_of(uvs_conn_server(conn));
  atomic_store(&sh->pid, (int) getpid());
  if (!in_child(sh))
    atomic_fetch_add(&sh->in_parent, 1);
  log_line(sh, "Handler called\n");
  return sh->bad_result;
}

static void read_log(const shared_t* sh, char* out, size_t cap) {
  int fd = open(sh->log_path, O_RDONLY | O_CLOEXEC);
  ssize_t n;
  out[0] = '\0';
  if (fd < 0)
    return;
  do
    n = read(fd, out, cap - 1);
  while (n < 0 && errno == EINTR);
  close(fd);
  out[n > 0 ? n : 0] = '\0';
}

/* BaseErrorTestServer with ForkingMixIn: a client connects and closes at
 * once, handle_request serves it, server_close; the log, written by the
 * child, must then read "Handler called" plus "Error handled" when the
 * error is handled (a plain error: handle_error runs in the child, which
 * exits 1, and the parent reports nothing more), "Handler called" alone
 * for UVS_ESTOP (SystemExit: no handle_error; the child exits 2 and
 * handle_request returns UVS_ESTOP in the parent). */
static void forking_error_test(int result) {
  test_tmpdir_t dir;
  shared_t* sh = shared_new();
  uvs_handler_t handler;
  uvs_config_t config = fork_config(NULL);
  uvs_server_t* server = NULL;
  uvs_address_t to;
  char log[128];
  int fd;

  test_tmpdir_make(&dir);
  test_tmpdir_file(&dir, "log", sh->log_path, sizeof(sh->log_path));
  sh->bad_result = result;
  memset(&handler, 0, sizeof(handler));
  handler.handle = bad_handle;
  handler.finish = count_finish;
  ASSERT_OK(
      uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, &config));
  uvs_server_set_data(server, sh);
  server_addr(server, &to);
  fd = stream_client(&to);
  close(fd);
  ASSERT_ERR(uvs_server_handle_request(server),
             result == UVS_ESTOP ? UVS_ESTOP : 0);
  ASSERT_EQ(uvs_server_child_count(server), 0);
  close_server(server, sh);

  read_log(sh, log, sizeof(log));
  ASSERT_STR_EQ(log,
                result == UVS_ESTOP ? "Handler called\n"
                                    : "Handler called\nError handled\n");
  ASSERT_EQ(seen(&sh->in_parent), 0);
  ASSERT_NE(seen(&sh->pid), (int) getpid());
  ASSERT_TRUE(process_gone((pid_t) seen(&sh->pid)));
  ASSERT_EQ(seen(&sh->finished), 1);
  ASSERT_EQ(seen(&sh->shutdown_requests), 1);
  if (result == UVS_ESTOP) {
    ASSERT_EQ(seen(&sh->child_errors), 0);
  } else {
    ASSERT_EQ(seen(&sh->child_errors), 1);
    ASSERT_EQ(seen(&sh->child_error), result);
  }
  /* Exit status 1 (handled in the child) and 2 (the stop) are not errors
   * of the parent's. */
  ASSERT_EQ(seen(&sh->errors), 0);
  assert_no_children(0);
  test_tmpdir_remove(&dir);
  shared_free(sh);
}

/* test_forking_handled (case 21). */
static void forking_handled(void) {
  forking_error_test(UV_EINVAL);
}

/* test_forking_not_handled (case 22). */
static void forking_not_handled(void) {
  forking_error_test(UVS_ESTOP);
}

/* UVS_ESTOP from a child stops serve_forever too (on a thread, between
 * echoes): it returns UVS_ESTOP in the parent, and nothing reaches
 * handle_error on either side. Then for a datagram handler that writes
 * its reply before returning UVS_ESTOP: finish still runs (Python's
 * try/finally), so the child sends the reply, and the server stops. */
static void forking_stop_serve_forever(void) {
  shared_t* sh = shared_new();
  serve_thread_t t;
  uvs_server_t* server = new_server(NULL, "tcp://127.0.0.1:0", NULL, sh);
  uvs_address_t to;
  char buf[LINE_MAX_LEN];
  int fd;

  server_addr(server, &to);
  serve_start(&t, server);
  stream_examine(&to);
  fd = stream_client(&to);
  test_send_all(fd, "stop\n", 5);
  ASSERT_ERR(serve_join(&t), UVS_ESTOP);
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  /* A shutdown after it returned does nothing. */
  ASSERT_OK(uvs_server_shutdown(server));
  close_server(server, sh);
  ASSERT_EQ(seen(&sh->handled), 2);
  ASSERT_EQ(seen(&sh->errors), 0);
  ASSERT_EQ(seen(&sh->child_errors), 0);
  assert_no_children(0);
  shared_free(sh);

  sh = shared_new();
  server = new_server(NULL, "udp://127.0.0.1:0", NULL, sh);
  server_addr(server, &to);
  serve_start(&t, server);
  dgram_examine(&to, NULL);
  fd = dgram_client(&to, NULL);
  dgram_send(fd, &to, "stop:reply\n");
  ASSERT_EQ(dgram_recv(fd, buf, sizeof(buf), IO_TIMEOUT), 11);
  ASSERT_MEM_EQ(buf, "stop:reply\n", 11);
  ASSERT_ERR(serve_join(&t), UVS_ESTOP);
  close(fd);
  close_server(server, sh);
  ASSERT_EQ(seen(&sh->handled), 2);
  ASSERT_EQ(seen(&sh->finished), 2);
  ASSERT_EQ(seen(&sh->errors), 0);
  ASSERT_EQ(seen(&sh->child_errors), 0);
  assert_no_children(0);
  shared_free(sh);
}


/* ---- 50 children at once --------------------------------------------- */

#define LOAD_N 50

/* A client in a process of its own, so the server's children inherit no
 * client socket from the test: connect, send "barrier <i>", expect it
 * back. Only system calls here (the test is multi-threaded). Exits 0 when
 * the echo came back whole. */
_Noreturn static void load_client(const uvs_address_t* to, int i) {
  char line[64];
  char buf[64];
  size_t len;
  size_t got = 0;
  uint64_t deadline;
  int fd;

  len = (size_t) snprintf(line, sizeof(line), "barrier %d\n", i);
  fd = socket(to->u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    _exit(10);
  if (connect_retry(fd, &to->u.sa, to->len) != 0)
    _exit(11);
  if (send(fd, line, len, MSG_NOSIGNAL) != (ssize_t) len)
    _exit(12);
  deadline = test_now_ms() + HANDLER_MS + IO_TIMEOUT;
  while (got < len) {
    struct pollfd pfd = { fd, POLLIN, 0 };
    uint64_t now = test_now_ms();
    ssize_t n;
    if (now >= deadline)
      _exit(13);
    if (poll(&pfd, 1, (int) (deadline - now)) <= 0)
      continue;
    n = recv(fd, buf + got, sizeof(buf) - got, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
      continue;
    if (n <= 0)
      _exit(14);
    got += (size_t) n;
  }
  if (got != len || memcmp(buf, line, len) != 0)
    _exit(15);
  close(fd);
  _exit(0);
}

/* 50 clients at once, each in a process of its own, with max_children 64:
 * every handler waits until the test has seen all 50 running, so 50
 * children are alive together (uvs_server_child_count says 50); then each
 * client gets its own echo, every child is reaped (count 0, nothing
 * <defunct>) while the server still serves, and again after close. */
static void fifty_children(void) {
  shared_t* sh = shared_new();
  uvs_config_t config;
  serve_thread_t t;
  uvs_server_t* server;
  uvs_address_t to;
  pid_t clients[LOAD_N];
  int i;

  uvs_config_init(&config);
  config.max_children = LOAD_N + 14;
  server = new_server(NULL, "tcp://127.0.0.1:0", &config, sh);
  server_addr(server, &to);
  serve_start(&t, server);
  fflush(stdout);
  for (i = 0; i < LOAD_N; i++) {
    clients[i] = fork();
    if (clients[i] < 0)
      TEST__FAIL("fork: %s", strerror(errno));
    if (clients[i] == 0)
      load_client(&to, i);
  }
  /* A child may reach its handler before the parent has counted it. */
  wait_count(&sh->handled, LOAD_N, "handlers running");
  wait_child_count(server, LOAD_N);
  ASSERT_EQ(seen(&sh->active), LOAD_N);
  atomic_store(&sh->go, 1);
  for (i = 0; i < LOAD_N; i++) {
    int st = 0;
    pid_t r;
    do
      r = waitpid(clients[i], &st, 0);
    while (r < 0 && errno == EINTR);
    ASSERT_EQ(r, clients[i]);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
      TEST__FAIL("client %d: wait status 0x%x", i, st);
  }
  wait_child_count(server, 0);
  ASSERT_EQ(seen(&sh->peak), LOAD_N);
  ASSERT_EQ(seen(&sh->handled), LOAD_N);
  ASSERT_EQ(seen(&sh->finished), LOAD_N);
  ASSERT_EQ(seen(&sh->in_parent), 0);
  assert_no_children(0); /* after the load, the server still up */
  ASSERT_OK(serve_stop(&t));
  close_server(server, sh);
  ASSERT_EQ(seen(&sh->errors), 0);
  ASSERT_EQ(seen(&sh->child_errors), 0);
  assert_no_children(0);
  shared_free(sh);
}


/* ---- max_children ---------------------------------------------------- */

#define CAP_CLIENTS_MAX 5

typedef struct {
  uvs_server_t* server;
  shared_t* sh;
  unsigned limit;    /* max_children */
  int n;             /* clients */
  unsigned max_seen; /* the most children the test saw */
  struct {
    int fd;
    size_t len;
    char buf[LINE_MAX_LEN];
  } r[CAP_CLIENTS_MAX];
} cap_t;

/* Reads what is there on every client without waiting; returns how many
 * have a whole line. */
static int pump_replies(cap_t* c) {
  int done = 0;
  int i;
  for (i = 0; i < c->n; i++) {
    ssize_t got;
    if (memchr(c->r[i].buf, '\n', c->r[i].len) == NULL) {
      got = recv(c->r[i].fd,
                 c->r[i].buf + c->r[i].len,
                 sizeof(c->r[i].buf) - c->r[i].len - 1,
                 MSG_DONTWAIT);
      if (got > 0)
        c->r[i].len += (size_t) got;
    }
    if (memchr(c->r[i].buf, '\n', c->r[i].len) != NULL)
      done++;
  }
  return done;
}

/* Polls for `ms`, or until `until_done` replies when that is >= 0: the
 * server never has more than `limit` children. Returns the replies. */
static int watch(cap_t* c, int ms, int until_done) {
  uint64_t deadline = test_now_ms() + (uint64_t) ms;
  for (;;) {
    unsigned n = uvs_server_child_count(c->server);
    int done;
    ASSERT_LE(n, c->limit);
    if (n > c->max_seen)
      c->max_seen = n;
    done = pump_replies(c);
    if ((until_done >= 0 && done >= until_done) || test_now_ms() >= deadline)
      return done;
    usleep(1000);
  }
}

/* max_children = `limit` with `n` clients whose handlers block until the
 * test hands out tokens: `limit` children run, never more, and the other
 * clients wait unserved (connections in the backlog, datagrams in the
 * socket's buffer); one token lets one child end, and only then is one
 * more client served while the last still waits; the rest of the tokens
 * serve everyone, and nothing was dropped (no handle_error). */
static void run_cap(const char* transport, unsigned limit, int n) {
  test_tmpdir_t dir;
  cap_t c;
  uvs_config_t config;
  serve_thread_t t;
  uvs_address_t to;
  char address[ADDR_CAP];
  int i;

  ASSERT_LE(n, CAP_CLIENTS_MAX);
  ASSERT_LT(limit + 1, (unsigned) n);
  test_tmpdir_make(&dir);
  memset(&c, 0, sizeof(c));
  c.sh = shared_new();
  c.limit = limit;
  c.n = n;
  if (strcmp(transport, "unixgram") == 0) {
    char path[PATH_CAP];
    test_tmpdir_file(&dir, "server.sock", path, sizeof(path));
    snprintf(address, sizeof(address), "unixgram:%s", path);
  } else {
    snprintf(address, sizeof(address), "%s://127.0.0.1:0", transport);
  }
  uvs_config_init(&config);
  config.max_children = limit;
  c.server = new_server(NULL, address, &config, c.sh);
  server_addr(c.server, &to);
  serve_start(&t, c.server);
  for (i = 0; i < n; i++) {
    char line[32];
    snprintf(line, sizeof(line), "block %d\n", i);
    if (to.transport == UVS_TRANSPORT_TCP) {
      c.r[i].fd = stream_client(&to);
      test_send_all(c.r[i].fd, line, strlen(line));
    } else {
      char name[PATH_CAP];
      char file[32];
      snprintf(file, sizeof(file), "client%d.sock", i);
      test_tmpdir_file(&dir, file, name, sizeof(name));
      c.r[i].fd = dgram_client(&to, name);
      dgram_send(c.r[i].fd, &to, line);
    }
  }

  wait_count(&c.sh->handled, (int) limit, "handlers running");
  ASSERT_EQ(watch(&c, QUIET_MS, -1), 0);
  ASSERT_EQ(c.max_seen, limit);
  ASSERT_EQ(seen(&c.sh->handled), (int) limit);

  /* One child may end: one more client is served after it, not with it,
   * and the last still waits. */
  atomic_fetch_add(&c.sh->tokens, 1);
  ASSERT_EQ(watch(&c, IO_TIMEOUT, 1), 1);
  {
    uint64_t deadline = test_now_ms() + IO_TIMEOUT;
    while (seen(&c.sh->handled) < (int) limit + 1) {
      ASSERT_LT(test_now_ms(), deadline);
      ASSERT_EQ(watch(&c, 1, -1), 1);
    }
  }
  ASSERT_EQ(watch(&c, QUIET_MS, -1), 1);
  ASSERT_EQ(seen(&c.sh->handled), (int) limit + 1);

  atomic_fetch_add(&c.sh->tokens, n - 1);
  ASSERT_EQ(watch(&c, IO_TIMEOUT, n), n);
  for (i = 0; i < n; i++) {
    char want[32];
    snprintf(want, sizeof(want), "block %d\n", i);
    c.r[i].buf[c.r[i].len] = '\0';
    ASSERT_STR_EQ(c.r[i].buf, want);
    close(c.r[i].fd);
  }
  ASSERT_EQ(c.max_seen, limit);
  ASSERT_EQ(seen(&c.sh->peak), (int) limit);
  ASSERT_EQ(seen(&c.sh->handled), n);
  wait_child_count(c.server, 0);
  ASSERT_OK(serve_stop(&t));
  close_server(c.server, c.sh);
  ASSERT_EQ(seen(&c.sh->finished), n);
  ASSERT_EQ(seen(&c.sh->errors), 0);
  ASSERT_EQ(seen(&c.sh->child_errors), 0);
  assert_no_children(0);
  shared_free(c.sh);
  test_tmpdir_remove(&dir);
}

/* max_children = 3, five TCP clients. */
static void max_children_caps(void) {
  run_cap("tcp", 3, 5);
}

/* max_children = 1, three datagrams, over UDP and unixgram. */
static void max_children_datagrams(void) {
  run_cap("udp", 1, 3);
  run_cap("unixgram", 1, 3);
}


/* ---- Crash isolation ------------------------------------------------- */

/* A child that dies of SIGABRT or SIGSEGV, or _exits with 7, reaches the
 * parent's handle_error as UVS_ECHILD_SIGNAL / UVS_ECHILD_EXIT, with a
 * NULL conn and the client's address; its client sees the connection
 * end; the next client is served as usual. Then a datagram child that
 * crashes, reported with the sender's address. */
static void crash_isolation(void) {
  static const struct {
    const char* line;
    int status;
  } crashes[] = {
    { "crash:abort\n", UVS_ECHILD_SIGNAL(SIGABRT) },
    { "crash:segv\n", UVS_ECHILD_SIGNAL(SIGSEGV) },
    { "exit:7\n", UVS_ECHILD_EXIT(7) },
  };
  shared_t* sh = shared_new();
  serve_thread_t t;
  uvs_server_t* server = new_server(NULL, "tcp://127.0.0.1:0", NULL, sh);
  uvs_address_t to;
  size_t i;

  server_addr(server, &to);
  serve_start(&t, server);
  for (i = 0; i < ARRAY_LEN(crashes); i++) {
    char want_peer[UVS_ADDRSTRLEN];
    char peer[UVS_ADDRSTRLEN];
    int status;
    int fd = stream_client(&to);

    client_text(fd, "tcp", want_peer, sizeof(want_peer));
    test_send_all(fd, crashes[i].line, strlen(crashes[i].line));
    wait_count(&sh->errors, (int) i + 1, "handle_error in the parent");
    status = seen(&sh->last_error);
    if (status != crashes[i].status)
      TEST__FAIL("%s: handle_error got %d (%s), want %d",
                 crashes[i].line,
                 status,
                 uvs_err_name(status),
                 crashes[i].status);
    ASSERT_FALSE(seen(&sh->error_had_conn));
    error_peer(sh, peer);
    ASSERT_STR_EQ(peer, want_peer);
    ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
    close(fd);
    stream_examine(&to);
  }
  ASSERT_TRUE(UVS_IS_ECHILD_SIGNAL(crashes[0].status));
  ASSERT_EQ(UVS_ECHILD_SIGNAL_NUM(crashes[1].status), SIGSEGV);
  ASSERT_TRUE(UVS_IS_ECHILD_EXIT(crashes[2].status));
  ASSERT_EQ(UVS_ECHILD_EXIT_STATUS(crashes[2].status), 7);
  ASSERT_FALSE(UVS_IS_ECHILD_EXIT(crashes[0].status));
  ASSERT_FALSE(UVS_IS_ECHILD_SIGNAL(crashes[2].status));
  wait_child_count(server, 0);
  ASSERT_OK(serve_stop(&t));
  close_server(server, sh);
  ASSERT_EQ(seen(&sh->errors), (int) ARRAY_LEN(crashes));
  ASSERT_EQ(seen(&sh->child_errors), 0);
  ASSERT_EQ(seen(&sh->handled), 2 * (int) ARRAY_LEN(crashes));
  assert_no_children(0);
  shared_free(sh);

  /* A datagram child: the peer is the sender. */
  sh = shared_new();
  server = new_server(NULL, "udp://127.0.0.1:0", NULL, sh);
  server_addr(server, &to);
  serve_start(&t, server);
  {
    char want_peer[UVS_ADDRSTRLEN];
    char peer[UVS_ADDRSTRLEN];
    int fd = dgram_client(&to, NULL);

    client_text(fd, "udp", want_peer, sizeof(want_peer));
    dgram_send(fd, &to, "crash:segv\n");
    wait_count(&sh->errors, 1, "handle_error in the parent");
    ASSERT_ERR(seen(&sh->last_error), UVS_ECHILD_SIGNAL(SIGSEGV));
    ASSERT_FALSE(seen(&sh->error_had_conn));
    error_peer(sh, peer);
    ASSERT_STR_EQ(peer, want_peer);
    close(fd);
  }
  dgram_examine(&to, NULL);
  wait_child_count(server, 0);
  ASSERT_OK(serve_stop(&t));
  close_server(server, sh);
  ASSERT_EQ(seen(&sh->errors), 1);
  ASSERT_EQ(seen(&sh->handled), 2);
  assert_no_children(0);
  shared_free(sh);
}


/* ---- Closing with children running ----------------------------------- */

/* Starts one "sleep" or "hang" request on a serve_forever thread, waits
 * until its child runs, then stops serve_forever. Returns the client and
 * the child's pid. */
static int start_one(uvs_server_t* server,
                     shared_t* sh,
                     const char* line,
                     pid_t* pid) {
  serve_thread_t t;
  uvs_address_t to;
  int fd;

  server_addr(server, &to);
  serve_start(&t, server);
  fd = stream_client(&to);
  test_send_all(fd, line, strlen(line));
  wait_count(&sh->handled, 1, "handler running");
  wait_child_count(server, 1);
  ASSERT_OK(serve_stop(&t));
  *pid = (pid_t) seen(&sh->pid);
  ASSERT_NE(*pid, getpid());
  ASSERT_EQ(kill(*pid, 0), 0);
  return fd;
}

/* block_on_close: server_close waits for a running child to finish on
 * its own, and the child's reply reaches the client. */
static void close_waits_for_children(void) {
  shared_t* sh = shared_new();
  uvs_server_t* server = new_server(NULL, "tcp://127.0.0.1:0", NULL, sh);
  char buf[LINE_MAX_LEN];
  uint64_t start;
  pid_t pid;
  int fd;

  atomic_store(&sh->sleep_ms, 400);
  fd = start_one(server, sh, "sleep\n", &pid);
  start = test_now_ms();
  close_server(server, sh);
  ASSERT_GE(test_now_ms() - start, 100);
  ASSERT_EQ(seen(&sh->slept), 1);
  ASSERT_EQ(seen(&sh->finished), 1);
  ASSERT_TRUE(process_gone(pid));
  ASSERT_EQ(recv_line(fd, buf, sizeof(buf), IO_TIMEOUT), 6);
  ASSERT_STR_EQ(buf, "sleep\n");
  close(fd);
  ASSERT_EQ(seen(&sh->errors), 0);
  assert_no_children(0);
  shared_free(sh);
}

/* block_on_close with children_wait_ms 200 and a child that hangs: the
 * close returns after about 200 ms with the child killed and reaped (no
 * zombie: kill(pid, 0) fails with ESRCH), without reporting the kill to
 * handle_error; the client sees its connection end. */
static void close_kills_after_wait(void) {
  shared_t* sh = shared_new();
  uvs_config_t config;
  uvs_server_t* server;
  uint64_t start;
  uint64_t elapsed;
  pid_t pid;
  int fd;

  uvs_config_init(&config);
  config.children_wait_ms = 200;
  server = new_server(NULL, "tcp://127.0.0.1:0", &config, sh);
  fd = start_one(server, sh, "hang\n", &pid);
  start = test_now_ms();
  close_server(server, sh);
  elapsed = test_now_ms() - start;
  ASSERT_GE(elapsed, 190);
  ASSERT_LT(elapsed, 3000);
  ASSERT_TRUE(process_gone(pid));
  ASSERT_EQ(seen(&sh->finished), 0);
  ASSERT_EQ(seen(&sh->errors), 0);
  ASSERT_EQ(test_wait_eof(fd, IO_TIMEOUT), 1);
  close(fd);
  assert_no_children(0);
  shared_free(sh);
}

/* Without block_on_close, server_close returns at once with the child
 * still running; the port is closed even so; the child finishes its
 * request, and is reaped soon after (nothing <defunct> within two
 * seconds of its end). */
static void close_without_blocking(void) {
  shared_t* sh = shared_new();
  uvs_config_t config;
  uvs_server_t* server;
  uvs_address_t to;
  char buf[LINE_MAX_LEN];
  uint64_t start;
  pid_t pid;
  int fd;

  uvs_config_init(&config);
  config.block_on_close = 0;
  server = new_server(NULL, "tcp://127.0.0.1:0", &config, sh);
  server_addr(server, &to);
  atomic_store(&sh->sleep_ms, 1000);
  fd = start_one(server, sh, "sleep\n", &pid);
  start = test_now_ms();
  close_server(server, sh);
  ASSERT_LT(test_now_ms() - start, 500);
  ASSERT_EQ(kill(pid, 0), 0); /* still there, sleeping */
  ASSERT_EQ(seen(&sh->slept), 0);
  /* The child closed its copy of the listening socket (Python's child
   * keeps it): the port refuses connections while the child runs. */
  ASSERT_ERR(try_connect(&to), -ECONNREFUSED);
  ASSERT_EQ(seen(&sh->slept), 0);
  ASSERT_EQ(recv_line(fd, buf, sizeof(buf), IO_TIMEOUT), 6);
  ASSERT_STR_EQ(buf, "sleep\n");
  ASSERT_EQ(seen(&sh->slept), 1);
  close(fd);
  wait_process_gone(pid, 2000);
  wait_no_children(2000);
  ASSERT_EQ(seen(&sh->errors), 0);
  shared_free(sh);
}


/* An asynchronous close (with a callback, on the test's loop) waits for
 * the children on the loop: uvs_server_close returns at once, the loop
 * goes on serving its other handles (a timer keeps ticking) while the
 * child finishes, and the callback runs once the child has been reaped,
 * with no child left. */
static void close_async_on_loop(void) {
  shared_t* sh = shared_new();
  uvs_server_t* server;
  uvs_address_t to;
  uv_timer_t tick;
  uv_loop_t loop;
  char buf[LINE_MAX_LEN];
  uint64_t start;
  int ticks = 0;
  int ticks_at_close;
  pid_t pid;
  int fd;

  ASSERT_OK(uv_loop_init(&loop));
  server = new_server(&loop, "tcp://127.0.0.1:0", NULL, sh);
  server_addr(server, &to);
  ASSERT_OK(uvs_server_start(server));
  ASSERT_OK(uv_timer_init(&loop, &tick));
  uv_handle_set_data((uv_handle_t*) &tick, &ticks);
  ASSERT_OK(uv_timer_start(&tick, on_tick, 5, 5));
  atomic_store(&sh->sleep_ms, 400);
  fd = stream_client(&to);
  test_send_all(fd, "sleep\n", 6);
  RUN_UNTIL(&loop, seen(&sh->handled) >= 1);
  RUN_UNTIL(&loop, uvs_server_child_count(server) == 1);
  pid = (pid_t) seen(&sh->pid);

  start = test_now_ms();
  ASSERT_OK(uvs_server_close(server, on_closed));
  ASSERT_LT(test_now_ms() - start, 100);
  ASSERT_EQ(seen(&sh->closed), 0);
  ticks_at_close = ticks;
  RUN_UNTIL(&loop, seen(&sh->closed));
  ASSERT_GE(test_now_ms() - start, 100);
  ASSERT_GT(ticks - ticks_at_close, 10);
  ASSERT_EQ(seen(&sh->children_at_close), 0);
  ASSERT_EQ(seen(&sh->slept), 1);
  ASSERT_TRUE(process_gone(pid));
  ASSERT_EQ(recv_line(fd, buf, sizeof(buf), IO_TIMEOUT), 6);
  ASSERT_STR_EQ(buf, "sleep\n");
  close(fd);
  uv_close((uv_handle_t*) &tick, NULL);
  test_loop_close(&loop);
  ASSERT_EQ(seen(&sh->errors), 0);
  assert_no_children(0);
  shared_free(sh);
}


/* Stops the server once it has served a request and has no child left;
 * an unreferenced timer, so it keeps no loop alive by itself. */
static void on_stop_when_done(uv_timer_t* timer) {
  uvs_server_t* server = uv_handle_get_data((uv_handle_t*) timer);
  if (seen(&sh_of(server)->handled) >= 1 &&
      uvs_server_child_count(server) == 0) {
    ASSERT_OK(uvs_server_stop(server));
  }
}

/* The application's own uv_run(UV_RUN_DEFAULT) must not return while a
 * child lives: at max_children the listener pauses, and then only the
 * server's SIGCHLD watcher can keep the loop running until the child is
 * reaped (else the loop ends and the child is left <defunct>). */
static void embedded_loop_waits_for_children(void) {
  shared_t* sh = shared_new();
  uvs_config_t config;
  uvs_server_t* server;
  uvs_address_t to;
  uv_timer_t timer;
  uv_loop_t loop;
  char buf[LINE_MAX_LEN];
  uint64_t start;
  int fd;

  ASSERT_OK(uv_loop_init(&loop));
  uvs_config_init(&config);
  config.max_children = 1;
  server = new_server(&loop, "tcp://127.0.0.1:0", &config, sh);
  server_addr(server, &to);
  atomic_store(&sh->sleep_ms, 300);
  fd = stream_client(&to);
  test_send_all(fd, "sleep\n", 6);
  ASSERT_OK(uvs_server_start(server));
  ASSERT_OK(uv_timer_init(&loop, &timer));
  uv_handle_set_data((uv_handle_t*) &timer, server);
  ASSERT_OK(uv_timer_start(&timer, on_stop_when_done, 5, 5));
  uv_unref((uv_handle_t*) &timer);

  start = test_now_ms();
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(uvs_server_child_count(server), 0);
  ASSERT_EQ(seen(&sh->handled), 1);
  ASSERT_EQ(seen(&sh->slept), 1);
  ASSERT_GE(test_now_ms() - start, 200);
  ASSERT_TRUE(process_gone((pid_t) seen(&sh->pid)));
  assert_no_children(0);
  ASSERT_EQ(recv_line(fd, buf, sizeof(buf), IO_TIMEOUT), 6);
  ASSERT_STR_EQ(buf, "sleep\n");
  close(fd);
  uv_close((uv_handle_t*) &timer, NULL);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
  ASSERT_EQ(seen(&sh->errors), 0);
  shared_free(sh);
}


/* Two forking servers in one process keep their children apart: each
 * reaps its own; closing B does not wait for A's running child, and B's
 * port refuses connections at once although A's child was forked while
 * B listened (the child closed its copy of B's listening socket). */
static void two_servers(void) {
  shared_t* sha = shared_new();
  shared_t* shb = shared_new();
  uvs_server_t* a = new_server(NULL, "tcp://127.0.0.1:0", NULL, sha);
  uvs_server_t* b = new_server(NULL, "tcp://127.0.0.1:0", NULL, shb);
  serve_thread_t ta;
  serve_thread_t tb;
  uvs_address_t to_a;
  uvs_address_t to_b;
  char buf[LINE_MAX_LEN];
  uint64_t start;
  int fd;

  server_addr(a, &to_a);
  server_addr(b, &to_b);
  serve_start(&ta, a);
  serve_start(&tb, b);
  atomic_store(&sha->sleep_ms, 1000);
  fd = stream_client(&to_a);
  test_send_all(fd, "sleep\n", 6);
  wait_count(&sha->handled, 1, "A's handler running");
  stream_examine(&to_b);
  wait_child_count(b, 0);
  ASSERT_EQ(uvs_server_child_count(a), 1);

  ASSERT_OK(serve_stop(&tb));
  start = test_now_ms();
  close_server(b, shb);
  ASSERT_LT(test_now_ms() - start, 500);
  ASSERT_EQ(seen(&sha->slept), 0); /* A's child still runs */
  ASSERT_ERR(try_connect(&to_b), -ECONNREFUSED);

  ASSERT_EQ(recv_line(fd, buf, sizeof(buf), IO_TIMEOUT), 6);
  ASSERT_STR_EQ(buf, "sleep\n");
  close(fd);
  wait_child_count(a, 0);
  ASSERT_OK(serve_stop(&ta));
  close_server(a, sha);
  ASSERT_EQ(seen(&sha->finished), 1);
  ASSERT_EQ(seen(&shb->finished), 1);
  ASSERT_EQ(seen(&sha->errors), 0);
  ASSERT_EQ(seen(&shb->errors), 0);
  assert_no_children(0);
  shared_free(sha);
  shared_free(shb);
}


/* ---- uv_spawn on the same loop --------------------------------------- */

typedef struct {
  uv_process_t proc;
  int exited;
  int64_t status;
  int term_signal;
} spawned_t;

static void on_spawn_exit(uv_process_t* proc, int64_t status, int sig) {
  spawned_t* s = uv_handle_get_data((uv_handle_t*) proc);
  s->exited = 1;
  s->status = status;
  s->term_signal = sig;
  uv_close((uv_handle_t*) proc, NULL);
}

static void spawn_sh(uv_loop_t* loop, spawned_t* s, const char* script) {
  char* args[4];
  uv_process_options_t opt;

  args[0] = (char*) "/bin/sh";
  args[1] = (char*) "-c";
  args[2] = (char*) script;
  args[3] = NULL;
  memset(&opt, 0, sizeof(opt));
  opt.file = args[0];
  opt.args = args;
  opt.exit_cb = on_spawn_exit;
  memset(s, 0, sizeof(*s));
  uv_handle_set_data((uv_handle_t*) &s->proc, s);
  ASSERT_OK(uv_spawn(loop, &s->proc, &opt));
}

typedef struct {
  pthread_t thread;
  uvs_address_t to;
  atomic_int done;
  char reply[LINE_MAX_LEN];
} spawn_client_t;

/* One slow request, then two echoes. */
static void* spawn_client_main(void* arg) {
  spawn_client_t* c = arg;
  int fd = stream_client(&c->to);
  test_send_all(fd, "sleep\n", 6);
  recv_line(fd, c->reply, sizeof(c->reply), IO_TIMEOUT);
  close(fd);
  stream_examine(&c->to);
  stream_examine(&c->to);
  atomic_store(&c->done, 1);
  return NULL;
}


/* A forking server embedded in the test's loop (uvs_server_start) beside
 * uv_spawn on the same loop: /bin/sh -c "exit 5" spawned before any
 * request and again while a forked child runs; each exit_cb gets exit
 * status 5, the server's children are reaped too (count 0, nothing
 * <defunct>), and a foreign child still waits for the test. */
static void uv_spawn_coexists(void) {
  shared_t* sh = shared_new();
  uvs_server_t* server;
  spawn_client_t c;
  spawned_t before;
  spawned_t during;
  uv_timer_t tick;
  uv_loop_t loop;
  pid_t foreign = foreign_child(FOREIGN_EXIT);

  ASSERT_OK(uv_loop_init(&loop));
  server = new_server(&loop, "tcp://127.0.0.1:0", NULL, sh);
  ASSERT_OK(uvs_server_start(server));
  ASSERT_OK(uv_timer_init(&loop, &tick));
  uv_handle_set_data((uv_handle_t*) &tick, NULL);
  ASSERT_OK(uv_timer_start(&tick, on_tick, 5, 5));
  atomic_store(&sh->sleep_ms, 300);

  spawn_sh(&loop, &before, "exit 5");
  memset(&c, 0, sizeof(c));
  server_addr(server, &c.to);
  ASSERT_OK(pthread_create(&c.thread, NULL, spawn_client_main, &c));
  RUN_UNTIL(&loop, seen(&sh->handled) >= 1);
  spawn_sh(&loop, &during, "exit 5");
  RUN_UNTIL(&loop,
            before.exited && during.exited && seen(&c.done) &&
                uvs_server_child_count(server) == 0);
  ASSERT_OK(pthread_join(c.thread, NULL));
  ASSERT_STR_EQ(c.reply, "sleep\n");

  ASSERT_EQ(before.status, 5);
  ASSERT_EQ(before.term_signal, 0);
  ASSERT_EQ(during.status, 5);
  ASSERT_EQ(during.term_signal, 0);
  ASSERT_EQ(seen(&sh->handled), 3);
  ASSERT_EQ(seen(&sh->finished), 3);
  ASSERT_EQ(seen(&sh->errors), 0);
  assert_no_children(foreign);

  uv_close((uv_handle_t*) &tick, NULL);
  ASSERT_OK(uvs_server_close(server, NULL));
  test_loop_close(&loop);
  reap_foreign(foreign, FOREIGN_EXIT);
  assert_no_children(0);
  shared_free(sh);
}


/* ---- handle_request -------------------------------------------------- */

/* handle_request in forking mode serves one request and returns once its
 * child has been reaped: with two clients waiting and a handler that
 * sleeps 200 ms, it takes at least that long, the child is gone (count
 * 0, kill(pid, 0) fails with ESRCH), one client has its echo, the other
 * nothing yet; the second call serves the other. Then the same for one
 * datagram. */
static void handle_request_one_child(void) {
  shared_t* sh = shared_new();
  uvs_server_t* server = new_server(NULL, "tcp://127.0.0.1:0", NULL, sh);
  uvs_address_t to;
  char buf[LINE_MAX_LEN];
  uint64_t start;
  int fds[2];
  int served = 0;
  int i;

  atomic_store(&sh->sleep_ms, 200);
  server_addr(server, &to);
  for (i = 0; i < 2; i++) {
    fds[i] = stream_client(&to);
    test_send_all(fds[i], "sleep\n", 6);
    ASSERT_OK(shutdown(fds[i], SHUT_WR));
  }
  for (i = 0; i < 2; i++) {
    start = test_now_ms();
    ASSERT_OK(uvs_server_handle_request(server));
    ASSERT_GE(test_now_ms() - start, 190);
    ASSERT_EQ(uvs_server_child_count(server), 0);
    ASSERT_EQ(seen(&sh->finished), i + 1);
    ASSERT_EQ(seen(&sh->slept), i + 1);
    ASSERT_TRUE(process_gone((pid_t) seen(&sh->pid)));
    assert_no_children(0);
    if (i == 0) {
      served = readable_within(fds[0], 0) ? 0 : 1;
      ASSERT_EQ(recv_line(fds[served], buf, sizeof(buf), IO_TIMEOUT), 6);
      ASSERT_STR_EQ(buf, "sleep\n");
      ASSERT_EQ(test_wait_eof(fds[served], IO_TIMEOUT), 1);
      ASSERT_FALSE(readable_within(fds[1 - served], QUIET_MS));
    } else {
      ASSERT_EQ(recv_line(fds[1 - served], buf, sizeof(buf), IO_TIMEOUT), 6);
      ASSERT_STR_EQ(buf, "sleep\n");
    }
  }
  close(fds[0]);
  close(fds[1]);
  close_server(server, sh);
  shared_free(sh);

  sh = shared_new();
  server = new_server(NULL, "udp://127.0.0.1:0", NULL, sh);
  server_addr(server, &to);
  fds[0] = dgram_client(&to, NULL);
  dgram_send(fds[0], &to, TEST_STR);
  ASSERT_OK(uvs_server_handle_request(server));
  ASSERT_EQ(uvs_server_child_count(server), 0);
  ASSERT_EQ(seen(&sh->finished), 1);
  ASSERT_TRUE(process_gone((pid_t) seen(&sh->pid)));
  ASSERT_EQ(dgram_recv(fds[0], buf, sizeof(buf), IO_TIMEOUT), TEST_STR_LEN);
  ASSERT_MEM_EQ(buf, TEST_STR, TEST_STR_LEN);
  close(fds[0]);
  close_server(server, sh);
  ASSERT_EQ(seen(&sh->errors), 0);
  assert_no_children(0);
  shared_free(sh);
}


static const test_case_t cases[] = {
  { "forking_tcp_server", forking_tcp_server },
  { "forking_unix_stream_server", forking_unix_stream_server },
  { "forking_udp_server", forking_udp_server },
  { "forking_unix_datagram_server", forking_unix_datagram_server },
  { "forking_handled", forking_handled },
  { "forking_not_handled", forking_not_handled },
  { "forking_stop_serve_forever", forking_stop_serve_forever },
  { "fifty_children", fifty_children },
  { "max_children_caps", max_children_caps },
  { "max_children_datagrams", max_children_datagrams },
  { "crash_isolation", crash_isolation },
  { "close_waits_for_children", close_waits_for_children },
  { "close_kills_after_wait", close_kills_after_wait },
  { "close_without_blocking", close_without_blocking },
  { "close_async_on_loop", close_async_on_loop },
  { "embedded_loop_waits_for_children", embedded_loop_waits_for_children },
  { "two_servers", two_servers },
  { "uv_spawn_coexists", uv_spawn_coexists },
  { "handle_request_one_child", handle_request_one_child },
};

TEST_MAIN(cases)
