/* SPDX-License-Identifier: MIT */
/*
 * uvs-loadgen: a closed-loop echo load generator on libuv, single-threaded,
 * for comparing echo servers side by side (uvs in its modes, a raw libuv
 * echo, a thread-per-connection echo). On the 2-core bench the generator
 * runs on one core and the server on the other, so the generator must cost
 * no more per message than the servers it measures: it batches writes,
 * never copies or allocates per message, reads into one buffer for the
 * whole loop, and takes one uv_hrtime per read callback or write batch.
 *
 * A run goes through phases: connect (at most --connect-concurrency
 * connections between their connect call and their first echoed message,
 * so that a storm never overflows the server's listen backlog), warmup,
 * measure, drain (nothing new is sent; 2 s or more for what is in flight)
 * and close. With --hold the connections instead stay open and idle after
 * their first round trip until stdin's EOF, a signal or --seconds.
 *
 * Every byte is checked. A stream carries a deterministic pattern: byte
 * number o of connection i is pattern[(o + seed(i)) % LG_PERIOD]. The
 * pattern buffer repeats its first LG_PERIOD bytes past that length, so
 * any range of a stream is a few contiguous slices of one immutable
 * buffer, which writes reference directly and reads memcmp against. A
 * datagram is an 8-byte sequence number followed by a pattern slice chosen
 * by it, and a reply must equal a datagram still in flight. Errors (failed
 * connects, mismatches, resets, lost datagrams, messages that never came
 * back) are counted and make the exit status 1; each kind is described on
 * stderr once. The result is one line on stdout; with --json one JSON
 * object whose keys are a contract with the scripts in bench/.
 */
#include <uvs.h>

#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>


/* ---- Constants and types --------------------------------------------- */

/* The pattern's period: a prime, so that it never lines up with message
 * sizes and connections differ at every offset. */
#define LG_PERIOD 65521u
/* The pattern's length past LG_PERIOD, unless the message size is more:
 * the shortest slice a write or a compare gets. */
#define LG_PATTERN_TAIL (256u * 1024)
#define LG_READ_SIZE    (256u * 1024) /* the loop's one read buffer */
/* Slices per write call: libuv keeps 4 in the request and allocates for
 * more. */
#define LG_MAX_BUFS   4
#define LG_MAX_SIZE   (16u * 1024 * 1024)
#define LG_UDP_HEADER 8u
#define LG_UDP_MAX    65507u
#define LG_UDP_PROBES 3u /* lost probes before a UDP socket gives up */
#define LG_TICK_MS    250u
#define LG_LOSS_NS    UINT64_C(1000000000)  /* a datagram's reply wait */
#define LG_CONNECT_NS UINT64_C(10000000000) /* connect and first echo */
#define LG_DRAIN_MS   UINT64_C(2000)
#define LG_SEEN_MAX   32u /* error kinds described on stderr */

/* Latency histogram: log-linear, 64 sub-buckets per power of two of
 * nanoseconds, so a bucket is at most 1/64 of its values wide and its
 * midpoint, which is reported, within 0.8 % of any sample in it. */
#define LG_HIST_SUB_BITS 6
#define LG_HIST_SUB      (1u << LG_HIST_SUB_BITS)
#define LG_HIST_BUCKETS  ((64u - LG_HIST_SUB_BITS + 1) * LG_HIST_SUB)

#define container_of(ptr, type, member) \
 ((type*) ((char*) (ptr) -offsetof(type, member)))

#if defined(__GNUC__) || defined(__clang__)
# define LG_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
# define LG_PRINTF(f, a)
#endif

typedef enum lg_phase_e {
  LG_PHASE_CONNECT, /* connecting; each connection's first round trip */
  LG_PHASE_HOLD,    /* --hold: every connection up and idle */
  LG_PHASE_WARMUP,  /* closed loop, not counted */
  LG_PHASE_MEASURE, /* closed loop, counted */
  LG_PHASE_DRAIN,   /* nothing new sent; waiting for what is in flight */
  LG_PHASE_CLOSE    /* closing everything */
} lg_phase_t;

/* A connection's states, in order: code compares them with < and >=. */
typedef enum lg_state_e {
  LG_CONN_IDLE,       /* not started */
  LG_CONN_CONNECTING, /* connect in progress */
  LG_CONN_PROBING,    /* connected, first message in flight */
  LG_CONN_READY,      /* first message echoed; waiting for the others */
  LG_CONN_RUNNING,    /* in the closed loop */
  LG_CONN_CLOSING,    /* shutdown or close requested */
  LG_CONN_CLOSED      /* close callback done */
} lg_state_t;

/* A datagram in flight; seq1 is its sequence number plus one, 0 for a
 * free slot. */
typedef struct lg_slot_s {
  uint64_t seq1;
  uint64_t sent_at;
} lg_slot_t;

typedef struct lg_conn_s {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
    uv_udp_t udp;
  } h;
  /* A stream connects first and shuts down last, never both at once. */
  union {
    uv_connect_t connect;
    uv_shutdown_t shutdown;
  } req;
  uint64_t tx;       /* stream: bytes sent */
  uint64_t rx;       /* stream: bytes received and checked */
  uint64_t next_seq; /* datagram: the next sequence number to try */
  uint64_t oldest;   /* datagram: nothing in flight was sent earlier */
  uint64_t started;  /* uv_hrtime of the connect call */
  unsigned index;
  unsigned seed;      /* the stream's start in the pattern */
  unsigned in_flight; /* messages sent and not yet echoed */
  unsigned tx_slot;   /* stream: ring slot of the next message sent */
  unsigned rx_slot;   /* stream: ring slot of the next message echoed */
  unsigned probes;    /* datagram: first messages lost */
  unsigned turn;      /* datagram: the loop turn `budget` is for */
  unsigned budget;    /* datagram: reads left in that turn */
  lg_state_t state;
} lg_conn_t;

/* A write or datagram send request. Completed requests go back on a free
 * list, so the steady state allocates nothing. */
typedef struct lg_req_s {
  union {
    uv_write_t write;
    uv_udp_send_t send;
  } u;
  uint64_t header; /* datagram: its sequence number, sent from here */
  struct lg_req_s* next;
} lg_req_t;

typedef struct lg_hist_s {
  uint64_t count;
  uint64_t max;
  uint64_t buckets[LG_HIST_BUCKETS];
} lg_hist_t;

typedef struct lg_options_s {
  uvs_address_t addr;
  char addr_text[UVS_ADDRSTRLEN];
  unsigned conns;
  unsigned size;
  unsigned pipeline;
  unsigned concurrency;
  double seconds; /* --hold without --seconds: 0, no limit */
  double warmup;
  bool hold;
  bool json;
} lg_options_t;

typedef struct lg_run_s {
  lg_options_t opt;
  uv_loop_t loop;
  lg_conn_t* conns;
  uint64_t* ring;   /* stream: send times, `pipeline` per connection */
  lg_slot_t* slots; /* datagram: `slot_mask + 1` per connection */
  unsigned slot_mask;
  char* pattern; /* immutable once filled: writes point into it */
  size_t pattern_len;
  char* rbuf; /* the loop's one read buffer */
  lg_req_t* free_reqs;
  lg_phase_t phase;
  unsigned next_conn;   /* the next connection to start */
  unsigned in_progress; /* connecting or probing */
  unsigned live;        /* probing, ready or running */
  unsigned open;        /* handles initialized and not yet closed */
  unsigned ready;       /* connections whose first echo came back */
  unsigned turn;        /* loop turns, counted by `prepare` */
  uv_timer_t phase_timer;
  uv_timer_t tick_timer; /* connect deadlines and datagram loss */
  uv_prepare_t prepare;
  uv_signal_t sigint;
  uv_signal_t sigterm;
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_pipe_t pipe;
    uv_tty_t tty;
  } in; /* --hold: stdin, watched for EOF */
  bool in_open;
  bool aux_closed;
  uint64_t t_start; /* the window, in uv_hrtime */
  uint64_t t_end;
  double cpu_start;
  double cpu_end;
  uint64_t drain_ms;
  uint64_t msgs;       /* echoes completed in the window */
  uint64_t msgs_total; /* echoes completed in the whole run, warm-up and
                        * drain included: divides the server's CPU time */
  lg_hist_t hist;
  uint64_t connect_errors;
  uint64_t mismatches;
  uint64_t lost;
  uint64_t timeouts;
  uint64_t other_errors; /* resets, EOFs, send errors, extra bytes */
  const char* seen_kind[LG_SEEN_MAX];
  int seen_code[LG_SEEN_MAX];
  unsigned nseen;
} lg_run_t;

static void run_progress(lg_run_t* run);
static void conn_send(lg_run_t* run, lg_conn_t* c, unsigned n, uint64_t now);
static void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
static void on_dgram(uv_udp_t* handle,
                     ssize_t nread,
                     const uv_buf_t* buf,
                     const struct sockaddr* addr,
                     unsigned flags);


/* ---- Command line ---------------------------------------------------- */

static const char usage_text[] =
    "usage: uvs-loadgen [--conns N] [--size BYTES] [--pipeline K]\n"
    "                   [--seconds S] [--warmup S] [--connect-concurrency N]\n"
    "                   [--hold] [--json] [--help] ADDR\n"
    "\n"
    "A closed-loop echo load generator: each connection keeps K messages in\n"
    "flight, checks every byte echoed and measures the round trips.\n"
    "\n"
    "  ADDR                     tcp://HOST:PORT, unix:PATH or udp://HOST:PORT\n"
    "  --conns N                connections or UDP sockets, 1..100000 (1)\n"
    "  --size BYTES             message size, 1..16777216, udp 8..65507 (64)\n"
    "  --pipeline K             messages in flight per connection, 1..1024 "
    "(1)\n"
    "  --seconds S              measured time (5; --hold: no limit)\n"
    "  --warmup S               unmeasured time before it (0.5)\n"
    "  --connect-concurrency N  connections between connect and first echo\n"
    "                           at once (256)\n"
    "  --hold                   make every connection and one round trip on\n"
    "                           it, print 'ready N', keep them open and idle\n"
    "                           until stdin's EOF, SIGINT/SIGTERM or\n"
    "                           --seconds, then close them all\n"
    "  --json                   print the result as one JSON object\n"
    "  --help                   print this help and exit 0\n"
    "\n"
    "A value may follow its flag as the next argument or after '='.\n"
    "SIGINT/SIGTERM ends a run early. Exit status: 0 without errors; 1 after\n"
    "any (failed connects, wrong or missing bytes, resets, lost datagrams);\n"
    "2 for a bad flag, value or address.\n";

static void usage_error(const char* fmt, ...) LG_PRINTF(1, 2);

static void usage_error(const char* fmt, ...) {
  va_list ap;

  fputs("uvs-loadgen: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputs(" (see --help)\n", stderr);
  exit(2);
}

static unsigned parse_uint(const char* flag,
                           const char* text,
                           unsigned min,
                           unsigned max) {
  unsigned long long v = 0;
  char* end = (char*) text;

  /* strtoull would take a sign or leading spaces: digits only. */
  if (text[0] >= '0' && text[0] <= '9')
    v = strtoull(text, &end, 10);
  if (end == text || *end != '\0' || v < min || v > max)
    usage_error("%s: '%s' is not a whole number from %u to %u",
                flag,
                text,
                min,
                max);
  return (unsigned) v;
}

static double parse_seconds(const char* flag, const char* text, double min) {
  char* end = (char*) text;
  double v = 0;

  if ((text[0] >= '0' && text[0] <= '9') || text[0] == '.')
    v = strtod(text, &end);
  if (end == text || *end != '\0' || !isfinite(v) || v < min || v > 1e7)
    usage_error("%s: '%s' is not a number of seconds from %g to 1e7",
                flag,
                text,
                min);
  return v;
}

/* The flags that take a value, in the order parse_args handles them. */
static const char* const value_flags[] = {
  "--conns",   "--size",   "--pipeline",
  "--seconds", "--warmup", "--connect-concurrency",
};

static void parse_args(lg_options_t* opt, int argc, char** argv) {
  const char* addr = NULL;
  const char* arg;
  const char* value;
  const char* eq;
  size_t len;
  size_t k;
  int i;
  int r;

  memset(opt, 0, sizeof(*opt));
  opt->conns = 1;
  opt->size = 64;
  opt->pipeline = 1;
  opt->concurrency = 256;
  opt->seconds = -1; /* not given */
  opt->warmup = 0.5;
  for (i = 1; i < argc; i++) {
    arg = argv[i];
    if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
      if (addr != NULL)
        usage_error("one ADDR only, got '%s' and '%s'", addr, arg);
      addr = arg;
      continue;
    }
    eq = strchr(arg, '=');
    len = eq != NULL ? (size_t) (eq - arg) : strlen(arg);
#define FLAG(name) (len == strlen(name) && memcmp(arg, name, len) == 0)
    if (FLAG("--help") || FLAG("--hold") || FLAG("--json")) {
      if (eq != NULL)
        usage_error("%.*s takes no value", (int) len, arg);
      if (FLAG("--help")) {
        fputs(usage_text, stdout);
        exit(0);
      }
      if (FLAG("--hold"))
        opt->hold = true;
      else
        opt->json = true;
      continue;
    }
    for (k = 0; k < sizeof(value_flags) / sizeof(value_flags[0]); k++) {
      if (FLAG(value_flags[k]))
        break;
    }
#undef FLAG
    if (k == sizeof(value_flags) / sizeof(value_flags[0]))
      usage_error("unknown flag '%.*s'", (int) len, arg);
    if (eq == NULL && i + 1 >= argc)
      usage_error("%s needs a value", arg);
    value = eq != NULL ? eq + 1 : argv[++i];
    if (k == 0)
      opt->conns = parse_uint(value_flags[k], value, 1, 100000);
    else if (k == 1)
      opt->size = parse_uint(value_flags[k], value, 1, LG_MAX_SIZE);
    else if (k == 2)
      opt->pipeline = parse_uint(value_flags[k], value, 1, 1024);
    else if (k == 3)
      opt->seconds = parse_seconds(value_flags[k], value, 1e-3);
    else if (k == 4)
      opt->warmup = parse_seconds(value_flags[k], value, 0);
    else
      opt->concurrency = parse_uint(value_flags[k], value, 1, 100000);
  }
  if (opt->seconds < 0)
    opt->seconds = opt->hold ? 0 : 5;

  if (addr == NULL)
    usage_error("ADDR is missing");
  r = uvs_address_parse(addr, &opt->addr);
  if (r < 0)
    usage_error("bad address '%s': %s", addr, uv_strerror(r));
  if (opt->addr.transport == UVS_TRANSPORT_UDP &&
      (opt->size < LG_UDP_HEADER || opt->size > LG_UDP_MAX))
    usage_error("--size: udp messages are %u to %u bytes",
                LG_UDP_HEADER,
                LG_UDP_MAX);
  /* uv_pipe_connect takes a C string: libuv 1.44 cannot reach an
   * abstract socket, whose name starts with a NUL byte. */
  if (opt->addr.transport == UVS_TRANSPORT_UNIX &&
      opt->addr.u.un.sun_path[0] == '\0')
    usage_error("'%s': abstract unix names are not supported", addr);
  if (opt->addr.transport == UVS_TRANSPORT_UNIXGRAM)
    usage_error("'%s': only tcp://, unix: and udp:// are supported", addr);
  len = sizeof(opt->addr_text);
  if (uvs_address_format(&opt->addr, opt->addr_text, &len) < 0)
    snprintf(opt->addr_text, sizeof(opt->addr_text), "%s", addr);
}


/* ---- Pattern --------------------------------------------------------- */

/* splitmix64: a fixed-seed generator, so that every run sends the same
 * bytes. */
static uint64_t splitmix64(uint64_t* x) {
  uint64_t z = (*x += UINT64_C(0x9E3779B97F4A7C15));

  z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
  return z ^ (z >> 31);
}

static int pattern_init(lg_run_t* run) {
  uint64_t x = 20240521;
  uint64_t v;
  size_t i;

  run->pattern_len =
      LG_PERIOD +
      (run->opt.size > LG_PATTERN_TAIL ? run->opt.size : LG_PATTERN_TAIL);
  run->pattern = malloc(run->pattern_len);
  if (run->pattern == NULL)
    return UV_ENOMEM;
  for (i = 0; i < LG_PERIOD; i += sizeof(v)) {
    v = splitmix64(&x);
    memcpy(run->pattern + i, &v, i + 8 <= LG_PERIOD ? 8 : LG_PERIOD - i);
  }
  /* The tail repeats the head: pattern[p] == pattern[p % LG_PERIOD]
   * everywhere, so a slice may start anywhere below LG_PERIOD. */
  for (i = LG_PERIOD; i < run->pattern_len; i++)
    run->pattern[i] = run->pattern[i - LG_PERIOD];
  return 0;
}

/* Fills `bufs` with the slices of the bytes [off, off + len) of a stream
 * starting at `seed`, at most LG_MAX_BUFS of them, and stores the bytes
 * they cover in `*covered`. Returns the number of slices. */
static unsigned pattern_bufs(const lg_run_t* run,
                             unsigned seed,
                             uint64_t off,
                             uint64_t len,
                             uv_buf_t* bufs,
                             uint64_t* covered) {
  size_t pos = (size_t) ((off + seed) % LG_PERIOD);
  size_t chunk;
  unsigned n = 0;

  for (*covered = 0; *covered < len && n < LG_MAX_BUFS; *covered += chunk) {
    chunk = run->pattern_len - pos;
    if (chunk > len - *covered)
      chunk = (size_t) (len - *covered);
    bufs[n++] = uv_buf_init(run->pattern + pos, (unsigned) chunk);
    pos = (pos + chunk) % LG_PERIOD;
  }
  return n;
}

/* Compares `n` received bytes with those of a stream starting at `seed`
 * from offset `off`. Returns the index of the first that differs, or n. */
static size_t pattern_compare(const lg_run_t* run,
                              unsigned seed,
                              uint64_t off,
                              const char* data,
                              size_t n) {
  size_t pos = (size_t) ((off + seed) % LG_PERIOD);
  size_t done;
  size_t chunk;
  size_t i;

  for (done = 0; done < n; done += chunk) {
    chunk =
        run->pattern_len - pos < n - done ? run->pattern_len - pos : n - done;
    if (memcmp(data + done, run->pattern + pos, chunk) != 0) {
      for (i = 0; data[done + i] == run->pattern[pos + i]; i++)
        continue;
      return done + i;
    }
    pos = (pos + chunk) % LG_PERIOD;
  }
  return n;
}

/* The offset in the pattern of the payload of datagram `seq`; the slice
 * there is at least LG_PATTERN_TAIL long, more than any payload. */
static size_t dgram_pos(const lg_run_t* run, const lg_conn_t* c, uint64_t seq) {
  return (size_t) ((c->seed + seq * run->opt.size) % LG_PERIOD);
}


/* ---- Latency histogram ----------------------------------------------- */

static unsigned hist_index(uint64_t v) {
  unsigned e;

  if (v < LG_HIST_SUB)
    return (unsigned) v;
  e = 63u - (unsigned) __builtin_clzll(v); /* at least LG_HIST_SUB_BITS */
  return (e - LG_HIST_SUB_BITS + 1) * LG_HIST_SUB +
         (unsigned) ((v >> (e - LG_HIST_SUB_BITS)) & (LG_HIST_SUB - 1));
}

/* Records `count` samples of `v` ns at once: the messages of one write
 * batch echoed in one read have the same round trip. */
static void hist_add(lg_hist_t* h, uint64_t v, uint64_t count) {
  h->buckets[hist_index(v)] += count;
  h->count += count;
  if (v > h->max)
    h->max = v;
}

/* Returns the q-quantile in ns: the midpoint of the bucket holding the
 * sample of that rank, but never more than the largest sample. */
static double hist_quantile(const lg_hist_t* h, double q) {
  uint64_t rank = (uint64_t) ceil(q * (double) h->count);
  uint64_t seen = 0;
  uint64_t width;
  unsigned i;
  double mid;

  if (h->count == 0)
    return 0;
  for (i = 0; i < LG_HIST_BUCKETS - 1; i++) {
    seen += h->buckets[i];
    if (seen >= rank && seen > 0)
      break;
  }
  if (i < LG_HIST_SUB)
    return i;
  width = UINT64_C(1) << (i / LG_HIST_SUB - 1);
  mid = (double) ((LG_HIST_SUB + i % LG_HIST_SUB) * width) +
        (double) (width - 1) / 2;
  return mid < (double) h->max ? mid : (double) h->max;
}


/* ---- Errors and requests --------------------------------------------- */

/* Prints a line to stderr the first time a (kind, code) pair happens, so
 * that a thousand connections failing alike print one line. */
static void report_once(lg_run_t* run,
                        const char* kind,
                        int code,
                        const char* fmt,
                        va_list ap) LG_PRINTF(4, 0);

static void report_once(lg_run_t* run,
                        const char* kind,
                        int code,
                        const char* fmt,
                        va_list ap) {
  unsigned i;

  for (i = 0; i < run->nseen; i++) {
    if (run->seen_kind[i] == kind && run->seen_code[i] == code)
      return;
  }
  if (run->nseen == LG_SEEN_MAX)
    return;
  run->seen_kind[run->nseen] = kind;
  run->seen_code[run->nseen++] = code;
  fputs("uvs-loadgen: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

static void report(lg_run_t* run, const char* kind, const char* fmt, ...)
    LG_PRINTF(3, 4);

static void report(lg_run_t* run, const char* kind, const char* fmt, ...) {
  va_list ap;

  va_start(ap, fmt);
  report_once(run, kind, 0, fmt, ap);
  va_end(ap);
}

static void conn_close(lg_run_t* run, lg_conn_t* c, bool graceful);

/* Counts an error in `*counter`, describes its kind once, and takes the
 * connection out of the run. */
static void conn_error(lg_run_t* run,
                       lg_conn_t* c,
                       uint64_t* counter,
                       const char* kind,
                       int code,
                       const char* fmt,
                       ...) LG_PRINTF(6, 7);

static void conn_error(lg_run_t* run,
                       lg_conn_t* c,
                       uint64_t* counter,
                       const char* kind,
                       int code,
                       const char* fmt,
                       ...) {
  va_list ap;

  (*counter)++;
  va_start(ap, fmt);
  report_once(run, kind, code, fmt, ap);
  va_end(ap);
  conn_close(run, c, false);
}

/* A send or receive failed. Before the first echo this is a connection
 * that could not be made (a UDP server that is not there answers the
 * first datagram with ECONNREFUSED). */
static void conn_io_error(lg_run_t* run,
                          lg_conn_t* c,
                          const char* kind,
                          int code) {
  uint64_t* counter =
      c->state <= LG_CONN_PROBING ? &run->connect_errors : &run->other_errors;

  if (code == UV_EOF)
    conn_error(run, c, counter, kind, code, "the server closed a connection");
  else
    conn_error(run, c, counter, kind, code, "%s: %s", kind, uv_strerror(code));
}

static lg_req_t* req_get(lg_run_t* run) {
  lg_req_t* req = run->free_reqs;

  if (req != NULL)
    run->free_reqs = req->next;
  else
    req = malloc(sizeof(*req));
  return req;
}

static void req_put(lg_run_t* run, lg_req_t* req) {
  req->next = run->free_reqs;
  run->free_reqs = req;
}

/* A write or datagram send completed: UV_ECANCELED means the connection
 * was closed first. */
static void req_done(lg_run_t* run, lg_req_t* req, lg_conn_t* c, int status) {
  req_put(run, req);
  if (status < 0 && status != UV_ECANCELED && c->state < LG_CONN_CLOSING) {
    conn_io_error(run, c, "send", status);
    run_progress(run);
  }
}

static void on_write(uv_write_t* req, int status) {
  req_done(req->handle->loop->data,
           container_of(req, lg_req_t, u.write),
           req->handle->data,
           status);
}

static void on_dgram_sent(uv_udp_send_t* req, int status) {
  req_done(req->handle->loop->data,
           container_of(req, lg_req_t, u.send),
           req->handle->data,
           status);
}

static void on_prepare(uv_prepare_t* prepare) {
  lg_run_t* run = prepare->loop->data;

  run->turn++;
}

static void on_alloc(uv_handle_t* handle, size_t suggested, uv_buf_t* buf) {
  lg_run_t* run = handle->loop->data;
  lg_conn_t* c = handle->data;

  /* libuv reads a UDP socket until EAGAIN: a wasted recvmsg per event,
   * a third of the syscalls with one datagram in flight. No more replies
   * can wait than datagrams are in flight, so a socket gets that many
   * reads per loop turn (at least one, so that a stray datagram is read
   * too); then an empty buffer ends libuv's loop with UV_ENOBUFS, and
   * level-triggered epoll reports what is left on the next turn. */
  if (handle->type == UV_UDP) {
    if (c->turn != run->turn) {
      c->turn = run->turn;
      c->budget = c->in_flight > 0 ? c->in_flight : 1;
    }
    if (c->budget == 0) {
      *buf = uv_buf_init(NULL, 0);
      return;
    }
    c->budget--;
  }
  /* Each read callback consumes its bytes before it returns, so one
   * buffer serves every connection, as in an echo server. */
  *buf = uv_buf_init(run->rbuf, LG_READ_SIZE);
}


/* ---- Connection lifecycle -------------------------------------------- */

static bool is_udp(const lg_run_t* run) {
  return run->opt.addr.transport == UVS_TRANSPORT_UDP;
}

static void on_conn_close(uv_handle_t* handle) {
  lg_conn_t* c = handle->data;
  lg_run_t* run = handle->loop->data;

  c->state = LG_CONN_CLOSED;
  run->open--;
  run_progress(run);
}

static void on_shutdown(uv_shutdown_t* req, int status) {
  if (!uv_is_closing((uv_handle_t*) req->handle))
    uv_close((uv_handle_t*) req->handle, on_conn_close);
}

/* Takes a connection out of the run: its counters change at once, its
 * handle closes later. A graceful close of a stream shuts down the write
 * side first, after the queued writes. It does not call run_progress, so
 * any callback may call it at any depth. */
static void conn_close(lg_run_t* run, lg_conn_t* c, bool graceful) {
  lg_state_t prev = c->state;

  if (prev == LG_CONN_IDLE || prev >= LG_CONN_CLOSING)
    return;
  c->state = LG_CONN_CLOSING;
  if (prev <= LG_CONN_PROBING)
    run->in_progress--;
  if (prev >= LG_CONN_PROBING)
    run->live--;
  if (graceful && prev >= LG_CONN_PROBING && !is_udp(run) &&
      uv_shutdown(&c->req.shutdown, &c->h.stream, on_shutdown) == 0)
    return;
  uv_close(&c->h.handle, on_conn_close);
}

static void connect_error(lg_run_t* run, lg_conn_t* c, int code) {
  conn_error(run,
             c,
             &run->connect_errors,
             "connect",
             code,
             "connect to %s: %s",
             run->opt.addr_text,
             uv_strerror(code));
}

/* The connection is made: read, and send a first message, whose echo
 * proves the server has accepted and served it. */
static void conn_up(lg_run_t* run, lg_conn_t* c) {
  int r;

  c->state = LG_CONN_PROBING;
  run->live++;
  if (is_udp(run)) {
    r = uv_udp_recv_start(&c->h.udp, on_alloc, on_dgram);
  } else {
    if (run->opt.addr.transport == UVS_TRANSPORT_TCP)
      uv_tcp_nodelay(&c->h.tcp, 1);
    r = uv_read_start(&c->h.stream, on_alloc, on_read);
  }
  if (r < 0)
    conn_io_error(run, c, "receive", r);
  else
    conn_send(run, c, 1, uv_hrtime());
}

static void on_connect(uv_connect_t* req, int status) {
  lg_conn_t* c = req->handle->data;
  lg_run_t* run = req->handle->loop->data;

  /* A connection closed while connecting gets UV_ECANCELED here. */
  if (c->state != LG_CONN_CONNECTING)
    return;
  if (status < 0)
    connect_error(run, c, status);
  else
    conn_up(run, c);
  run_progress(run);
}

static void conn_start(lg_run_t* run, lg_conn_t* c) {
  const uvs_address_t* addr = &run->opt.addr;
  int r;

  /* These cannot fail: libuv makes the socket in the connect call. */
  if (addr->transport == UVS_TRANSPORT_TCP)
    uv_tcp_init(&run->loop, &c->h.tcp);
  else if (addr->transport == UVS_TRANSPORT_UNIX)
    uv_pipe_init(&run->loop, &c->h.pipe, 0);
  else
    uv_udp_init(&run->loop, &c->h.udp);
  c->h.handle.data = c;
  c->state = LG_CONN_CONNECTING;
  c->started = uv_hrtime();
  run->in_progress++;
  run->open++;
  r = 0;
  if (addr->transport == UVS_TRANSPORT_TCP) {
    r = uv_tcp_connect(&c->req.connect, &c->h.tcp, &addr->u.sa, on_connect);
  } else if (addr->transport == UVS_TRANSPORT_UNIX) {
    uv_pipe_connect(&c->req.connect,
                    &c->h.pipe,
                    addr->u.un.sun_path,
                    on_connect);
  } else {
    /* A connected UDP socket: the kernel sends to the server only, takes
     * datagrams from it only, and reports its ICMP errors. */
    r = uv_udp_connect(&c->h.udp, &addr->u.sa);
    if (r == 0)
      conn_up(run, c);
  }
  if (r < 0)
    connect_error(run, c, r);
}

/* After `done` messages were echoed (or as many datagrams lost): the
 * first echo makes the connection ready; in the closed loop it sends as
 * many messages again, in one batch; in the drain it closes once nothing
 * is in flight. */
static void conn_completed(lg_run_t* run,
                           lg_conn_t* c,
                           unsigned done,
                           uint64_t now) {
  if (c->state == LG_CONN_PROBING && c->in_flight == 0) {
    c->state = LG_CONN_READY;
    run->in_progress--;
    run->ready++;
  } else if (c->state == LG_CONN_RUNNING) {
    if (run->phase == LG_PHASE_WARMUP || run->phase == LG_PHASE_MEASURE)
      conn_send(run, c, done, now);
    else if (run->phase == LG_PHASE_DRAIN && c->in_flight == 0)
      conn_close(run, c, true);
  }
}


/* ---- Stream I/O (tcp, unix) ------------------------------------------ */

/* Sends `n` messages in one batch stamped `now`: uv_try_write takes what
 * the socket accepts at once, uv_write queues the rest. Both point into
 * the pattern, which never changes, so nothing is copied. */
static void stream_send(lg_run_t* run, lg_conn_t* c, unsigned n, uint64_t now) {
  uint64_t* ring = run->ring + (size_t) c->index * run->opt.pipeline;
  uint64_t left = (uint64_t) n * run->opt.size;
  uint64_t off = c->tx;
  uint64_t covered;
  uv_buf_t bufs[LG_MAX_BUFS];
  lg_req_t* req;
  bool queue = false;
  unsigned nbufs;
  unsigned i;
  int r;

  for (i = 0; i < n; i++) {
    ring[c->tx_slot] = now;
    c->tx_slot = c->tx_slot + 1 == run->opt.pipeline ? 0 : c->tx_slot + 1;
  }
  c->in_flight += n;
  c->tx += left;
  while (left > 0) {
    nbufs = pattern_bufs(run, c->seed, off, left, bufs, &covered);
    if (!queue) {
      /* UV_EAGAIN also means that earlier writes are still queued. */
      r = uv_try_write(&c->h.stream, bufs, nbufs);
      if (r < 0 && r != UV_EAGAIN) {
        conn_io_error(run, c, "send", r);
        return;
      }
      r = r < 0 ? 0 : r;
      off += (uint64_t) r;
      left -= (uint64_t) r;
      queue = (uint64_t) r < covered;
      continue;
    }
    req = req_get(run);
    r = req == NULL
            ? UV_ENOMEM
            : uv_write(&req->u.write, &c->h.stream, bufs, nbufs, on_write);
    if (r < 0) {
      if (req != NULL)
        req_put(run, req);
      conn_io_error(run, c, "send", r);
      return;
    }
    off += covered;
    left -= covered;
  }
}

/* Checks `n` received bytes, then completes the messages they end. */
static void stream_received(lg_run_t* run,
                            lg_conn_t* c,
                            const char* data,
                            size_t n,
                            uint64_t now) {
  uint64_t* ring = run->ring + (size_t) c->index * run->opt.pipeline;
  uint64_t first = c->rx / run->opt.size;
  uint64_t ts = 0;
  unsigned done;
  unsigned same = 0;
  unsigned i;
  size_t bad;

  if (n > c->tx - c->rx) {
    conn_error(run,
               c,
               &run->other_errors,
               "extra",
               0,
               "connection %u: %zu bytes at offset %" PRIu64
               ", but only %" PRIu64 " were sent",
               c->index,
               n,
               c->rx,
               c->tx);
    return;
  }
  bad = pattern_compare(run, c->seed, c->rx, data, n);
  if (bad != n) {
    conn_error(
        run,
        c,
        &run->mismatches,
        "mismatch",
        0,
        "connection %u: mismatch at offset %" PRIu64
        ": expected 0x%02x, got 0x%02x",
        c->index,
        c->rx + bad,
        (unsigned char) run->pattern[(c->rx + bad + c->seed) % LG_PERIOD],
        (unsigned char) data[bad]);
    return;
  }
  c->rx += n;
  done = (unsigned) (c->rx / run->opt.size - first);
  if (done == 0)
    return;
  c->in_flight -= done;
  run->msgs_total += done;
  if (run->phase == LG_PHASE_MEASURE) {
    /* Messages of one batch share a send time: one sample per run. */
    run->msgs += done;
    for (i = 0; i < done; i++) {
      if (same > 0 && ring[c->rx_slot] != ts) {
        hist_add(&run->hist, now - ts, same);
        same = 0;
      }
      ts = ring[c->rx_slot];
      same++;
      c->rx_slot = c->rx_slot + 1 == run->opt.pipeline ? 0 : c->rx_slot + 1;
    }
    hist_add(&run->hist, now - ts, same);
  } else {
    c->rx_slot = (c->rx_slot + done) % run->opt.pipeline;
  }
  conn_completed(run, c, done, now);
}

static void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  lg_conn_t* c = stream->data;
  lg_run_t* run = stream->loop->data;

  /* After our own shutdown the server's EOF is expected. */
  if (nread == 0 || c->state >= LG_CONN_CLOSING)
    return;
  if (nread < 0)
    conn_io_error(run, c, "receive", (int) nread);
  else
    stream_received(run, c, buf->base, (size_t) nread, uv_hrtime());
  run_progress(run);
}


/* ---- Datagram I/O (udp) ---------------------------------------------- */

static lg_slot_t* conn_slots(const lg_run_t* run, const lg_conn_t* c) {
  return run->slots + (size_t) c->index * (run->slot_mask + 1);
}

/* Sends `n` datagrams stamped `now`, one per message (libuv 1.44 has no
 * batch send). A sequence number whose slot an older datagram in flight
 * still holds is skipped: there are twice as many slots as the pipeline
 * allows in flight, so a free one is near. */
static void dgram_send(lg_run_t* run, lg_conn_t* c, unsigned n, uint64_t now) {
  lg_slot_t* slots = conn_slots(run, c);
  lg_req_t* req;
  uv_buf_t bufs[2];
  uint64_t header;
  uint64_t seq;
  unsigned nbufs = run->opt.size > LG_UDP_HEADER ? 2 : 1;
  unsigned i;
  int r;

  for (i = 0; i < n; i++) {
    for (seq = c->next_seq; slots[seq & run->slot_mask].seq1 != 0; seq++)
      continue;
    c->next_seq = seq + 1;
    slots[seq & run->slot_mask].seq1 = seq + 1;
    slots[seq & run->slot_mask].sent_at = now;
    if (c->in_flight++ == 0)
      c->oldest = now;
    header = seq;
    bufs[0] = uv_buf_init((char*) &header, LG_UDP_HEADER);
    bufs[1] = uv_buf_init(run->pattern + dgram_pos(run, c, seq),
                          run->opt.size - LG_UDP_HEADER);
    r = uv_udp_try_send(&c->h.udp, bufs, nbufs, NULL);
    if (r == UV_EAGAIN) {
      /* The header must outlive this call: it moves into the request. */
      req = req_get(run);
      r = UV_ENOMEM;
      if (req != NULL) {
        req->header = seq;
        bufs[0].base = (char*) &req->header;
        r = uv_udp_send(&req->u.send,
                        &c->h.udp,
                        bufs,
                        nbufs,
                        NULL,
                        on_dgram_sent);
        if (r < 0)
          req_put(run, req);
      }
    }
    if (r < 0) {
      conn_io_error(run, c, "send", r);
      return;
    }
  }
}

static void on_dgram(uv_udp_t* handle,
                     ssize_t nread,
                     const uv_buf_t* buf,
                     const struct sockaddr* addr,
                     unsigned flags) {
  lg_conn_t* c = handle->data;
  lg_run_t* run = handle->loop->data;
  size_t payload = run->opt.size - LG_UDP_HEADER;
  const char* wrong = NULL;
  lg_slot_t* slot;
  uint64_t now;
  uint64_t seq = 0;
  size_t bad = 0;

  /* Nothing more to read (nread 0, no address), or on_alloc ended the
   * turn's reads (UV_ENOBUFS). */
  if ((nread == 0 && addr == NULL) || nread == UV_ENOBUFS ||
      c->state >= LG_CONN_CLOSING)
    return;
  if (nread < 0) {
    conn_io_error(run, c, "receive", (int) nread);
    run_progress(run);
    return;
  }
  now = uv_hrtime();
  if ((size_t) nread != run->opt.size || (flags & UV_UDP_PARTIAL) != 0) {
    wrong = "wrong size";
  } else {
    memcpy(&seq, buf->base, sizeof(seq));
    slot = &conn_slots(run, c)[seq & run->slot_mask];
    if (slot->seq1 != seq + 1)
      wrong = "sequence number not in flight";
    else if ((bad = pattern_compare(run,
                                    0,
                                    dgram_pos(run, c, seq),
                                    buf->base + LG_UDP_HEADER,
                                    payload)) != payload)
      wrong = "wrong byte";
  }
  if (wrong != NULL) {
    conn_error(run,
               c,
               &run->mismatches,
               "mismatch",
               0,
               "connection %u: bad reply, %s: %zd bytes (sent %u), "
               "sequence %" PRIu64 ", byte %zu",
               c->index,
               wrong,
               nread,
               run->opt.size,
               seq,
               LG_UDP_HEADER + bad);
    run_progress(run);
    return;
  }
  slot->seq1 = 0;
  c->in_flight--;
  run->msgs_total++;
  if (run->phase == LG_PHASE_MEASURE) {
    run->msgs++;
    hist_add(&run->hist, now - slot->sent_at, 1);
  }
  conn_completed(run, c, 1, now);
  run_progress(run);
}

/* Datagrams in flight for LG_LOSS_NS are lost: counted, and replaced
 * while the loop runs, so that a lossy server does not stall it. Only a
 * connection whose `oldest`, a lower bound of its send times in flight,
 * is that old has its slots scanned. */
static void dgram_expire(lg_run_t* run, lg_conn_t* c, uint64_t now) {
  lg_slot_t* slots = conn_slots(run, c);
  uint64_t oldest = now;
  unsigned lost = 0;
  unsigned i;

  for (i = 0; i <= run->slot_mask; i++) {
    if (slots[i].seq1 != 0 && now - slots[i].sent_at >= LG_LOSS_NS) {
      slots[i].seq1 = 0;
      lost++;
    } else if (slots[i].seq1 != 0 && slots[i].sent_at < oldest) {
      oldest = slots[i].sent_at;
    }
  }
  c->oldest = oldest;
  if (lost == 0)
    return;
  c->in_flight -= lost;
  run->lost += lost;
  report(run, "lost", "%u datagrams got no reply within 1 s", lost);
  if (c->state != LG_CONN_PROBING)
    conn_completed(run, c, lost, now);
  else if (++c->probes < LG_UDP_PROBES)
    dgram_send(run, c, 1, now);
  else
    connect_error(run, c, UV_ETIMEDOUT);
}

/* Every LG_TICK_MS: stream connections not up after LG_CONNECT_NS fail,
 * and datagrams without a reply for LG_LOSS_NS are lost. */
static void on_tick(uv_timer_t* timer) {
  lg_run_t* run = timer->loop->data;
  uint64_t now = uv_hrtime();
  lg_conn_t* c;
  unsigned i;

  for (i = 0; i < run->next_conn; i++) {
    c = &run->conns[i];
    if (c->state >= LG_CONN_CLOSING)
      continue;
    if (is_udp(run) && c->in_flight > 0 && now - c->oldest >= LG_LOSS_NS)
      dgram_expire(run, c, now);
    else if (c->state <= LG_CONN_PROBING && now - c->started >= LG_CONNECT_NS)
      connect_error(run, c, UV_ETIMEDOUT);
  }
  run_progress(run);
}


/* ---- Run phases ------------------------------------------------------ */

static void on_phase_timer(uv_timer_t* timer);

static void phase_timer_start(lg_run_t* run, uint64_t ms) {
  /* The loop's time may be a long callback old: count from now. */
  uv_update_time(&run->loop);
  uv_timer_start(&run->phase_timer, on_phase_timer, ms, 0);
}

static uint64_t seconds_ms(double s) {
  return (uint64_t) ceil(s * 1000);
}

static double cpu_seconds(void) {
  struct rusage ru;

  if (getrusage(RUSAGE_SELF, &ru) != 0)
    return 0;
  return (double) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         (double) (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* Closes every connection left, streams gracefully unless `graceful` is
 * false (the server is not reading: a shutdown might never complete). */
static void run_close(lg_run_t* run, bool graceful) {
  unsigned i;

  run->phase = LG_PHASE_CLOSE;
  uv_timer_stop(&run->phase_timer);
  uv_timer_stop(&run->tick_timer);
  for (i = 0; i < run->next_conn; i++)
    conn_close(run, &run->conns[i], graceful);
}

static void measure_start(lg_run_t* run) {
  run->phase = LG_PHASE_MEASURE;
  run->msgs = 0;
  memset(&run->hist, 0, sizeof(run->hist));
  run->cpu_start = cpu_seconds();
  run->t_start = uv_hrtime();
  phase_timer_start(run, seconds_ms(run->opt.seconds));
}

/* Ends the window, if one is open, and the closed loop. Connections with
 * nothing in flight close now, the others when their last echo comes or
 * at the drain's deadline: LG_DRAIN_MS, or twice the longest round trip
 * measured if longer, since a slow server with much in flight (1000
 * connections of 16 x 64 KiB is 1 GiB) is not one that lost messages. */
static void run_end(lg_run_t* run) {
  lg_conn_t* c;
  unsigned i;

  if (run->phase == LG_PHASE_MEASURE || run->phase == LG_PHASE_HOLD) {
    run->t_end = uv_hrtime();
    run->cpu_end = cpu_seconds();
  }
  if (run->phase == LG_PHASE_HOLD) {
    run_close(run, true);
    return;
  }
  run->phase = LG_PHASE_DRAIN;
  for (i = 0; i < run->next_conn; i++) {
    c = &run->conns[i];
    if (c->state == LG_CONN_RUNNING && c->in_flight == 0)
      conn_close(run, c, true);
  }
  run->drain_ms = 2 * (run->hist.max / 1000000 + 1);
  if (run->drain_ms < LG_DRAIN_MS)
    run->drain_ms = LG_DRAIN_MS;
  phase_timer_start(run, run->drain_ms);
}

/* The drain's deadline: what is still in flight never came back. */
static void drain_timeout(lg_run_t* run) {
  uint64_t missing = 0;
  unsigned i;

  for (i = 0; i < run->next_conn; i++) {
    if (run->conns[i].state < LG_CONN_CLOSING)
      missing += run->conns[i].in_flight;
  }
  run->timeouts += missing;
  if (missing > 0)
    report(run,
           "timeout",
           "%" PRIu64 " messages got no echo within %" PRIu64 " ms of the end",
           missing,
           run->drain_ms);
  run_close(run, false);
}

static void on_stdin(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  lg_run_t* run = stream->loop->data;

  /* What stdin says is ignored; its end, or an error, ends the hold. */
  if (nread >= 0)
    return;
  uv_read_stop(stream);
  if (run->phase == LG_PHASE_HOLD)
    run_end(run);
  run_progress(run);
}

/* Watches stdin for EOF if it is a pipe, socket or terminal. A file or
 * /dev/null (a background job's stdin) would end the hold at once, so it
 * is not watched: a signal or --seconds ends the hold then. */
static void stdin_watch(lg_run_t* run) {
  uv_handle_type type = uv_guess_handle(0);
  int r = 0;

  if (type == UV_NAMED_PIPE) {
    uv_pipe_init(&run->loop, &run->in.pipe, 0);
    run->in_open = true;
    r = uv_pipe_open(&run->in.pipe, 0);
  } else if (type == UV_TTY) {
    r = uv_tty_init(&run->loop, &run->in.tty, 0, 1);
    run->in_open = r == 0;
  }
  if (run->in_open && r == 0)
    r = uv_read_start(&run->in.stream, on_alloc, on_stdin);
  if (r < 0)
    report(run, "stdin", "cannot watch stdin: %s", uv_strerror(r));
}

/* Every connection has had its chance to come up: hold them, or start
 * the closed loop on each with a full pipeline in one batch. */
static void run_all_up(lg_run_t* run) {
  unsigned i;

  uv_timer_stop(&run->tick_timer);
  if (run->live == 0) {
    fprintf(stderr,
            "uvs-loadgen: no connection could be made to %s\n",
            run->opt.addr_text);
    run_close(run, false);
    return;
  }
  if (is_udp(run))
    uv_timer_start(&run->tick_timer, on_tick, LG_TICK_MS, LG_TICK_MS);
  if (run->opt.hold) {
    run->phase = LG_PHASE_HOLD;
    printf("ready %u\n", run->live);
    fflush(stdout);
    run->cpu_start = cpu_seconds();
    run->t_start = uv_hrtime();
    if (run->opt.seconds > 0)
      phase_timer_start(run, seconds_ms(run->opt.seconds));
    stdin_watch(run);
    return;
  }
  run->phase = LG_PHASE_WARMUP;
  for (i = 0; i < run->next_conn; i++) {
    if (run->conns[i].state == LG_CONN_READY) {
      run->conns[i].state = LG_CONN_RUNNING;
      conn_send(run, &run->conns[i], run->opt.pipeline, uv_hrtime());
    }
  }
  if (run->opt.warmup > 0)
    phase_timer_start(run, seconds_ms(run->opt.warmup));
  else
    measure_start(run);
}

static void on_phase_timer(uv_timer_t* timer) {
  lg_run_t* run = timer->loop->data;

  if (run->phase == LG_PHASE_WARMUP)
    measure_start(run);
  else if (run->phase == LG_PHASE_MEASURE || run->phase == LG_PHASE_HOLD)
    run_end(run);
  else if (run->phase == LG_PHASE_DRAIN)
    drain_timeout(run);
  run_progress(run);
}

/* SIGINT/SIGTERM ends the run early, with a shorter window; during the
 * drain it gives up on what is in flight. While connecting, a first
 * message may still be queued for a server that does not read, so the
 * connections are not shut down gracefully: that might never finish. */
static void on_signal(uv_signal_t* handle, int signum) {
  lg_run_t* run = handle->loop->data;

  if (run->phase == LG_PHASE_CONNECT)
    run_close(run, false);
  else if (run->phase == LG_PHASE_DRAIN)
    drain_timeout(run);
  else if (run->phase != LG_PHASE_CLOSE)
    run_end(run);
  run_progress(run);
}

static void aux_close(lg_run_t* run) {
  if (run->aux_closed)
    return;
  run->aux_closed = true;
  uv_close((uv_handle_t*) &run->phase_timer, NULL);
  uv_close((uv_handle_t*) &run->tick_timer, NULL);
  uv_close((uv_handle_t*) &run->prepare, NULL);
  uv_close((uv_handle_t*) &run->sigint, NULL);
  uv_close((uv_handle_t*) &run->sigterm, NULL);
  if (run->in_open)
    uv_close(&run->in.handle, NULL);
}

/* One step of the run after any event: start connects up to the
 * concurrency, move on once every connection is up, or none is left, or
 * the last handle has closed. */
static void run_step(lg_run_t* run) {
  switch (run->phase) {
  case LG_PHASE_CONNECT:
    while (run->in_progress < run->opt.concurrency &&
           run->next_conn < run->opt.conns)
      conn_start(run, &run->conns[run->next_conn++]);
    if (run->next_conn == run->opt.conns && run->in_progress == 0)
      run_all_up(run);
    break;
  case LG_PHASE_HOLD:
  case LG_PHASE_WARMUP:
  case LG_PHASE_MEASURE:
    if (run->live == 0)
      run_end(run);
    break;
  case LG_PHASE_DRAIN:
    if (run->live == 0)
      run_close(run, true);
    break;
  case LG_PHASE_CLOSE:
    if (run->open == 0)
      aux_close(run);
    break;
  }
}

static void run_progress(lg_run_t* run) {
  lg_phase_t before;

  do {
    before = run->phase;
    run_step(run);
  } while (run->phase != before);
}

static void conn_send(lg_run_t* run, lg_conn_t* c, unsigned n, uint64_t now) {
  if (is_udp(run))
    dgram_send(run, c, n, now);
  else
    stream_send(run, c, n, now);
}


/* ---- Results and main ------------------------------------------------ */

static uint64_t run_errors(const lg_run_t* run) {
  return run->connect_errors + run->mismatches + run->lost + run->timeouts +
         run->other_errors;
}

/* Prints the result as JSON or as key=value pairs: the same keys. */
static void print_result(const lg_run_t* run) {
  const lg_options_t* opt = &run->opt;
  double window = run->t_end > run->t_start
                      ? (double) (run->t_end - run->t_start) / 1e9
                      : 0;
  double per_s = window > 0 ? 1 / window : 0;
  struct {
    const char* key;
    double value;
    int decimals;
  } f[] = {
    { "conns", opt->conns, 0 },
    { "size", opt->size, 0 },
    { "pipeline", opt->pipeline, 0 },
    { "seconds", window, 3 },
    { "msgs", (double) run->msgs, 0 },
    { "msgs_per_s", (double) run->msgs * per_s, 1 },
    { "mb_per_s", (double) run->msgs * opt->size / 1e6 * per_s, 2 },
    { "p50_us", hist_quantile(&run->hist, 0.50) / 1e3, 1 },
    { "p99_us", hist_quantile(&run->hist, 0.99) / 1e3, 1 },
    { "p999_us", hist_quantile(&run->hist, 0.999) / 1e3, 1 },
    { "max_us", (double) run->hist.max / 1e3, 1 },
    { "errors", (double) run_errors(run), 0 },
    { "connect_errors", (double) run->connect_errors, 0 },
    { "mismatches", (double) run->mismatches, 0 },
    { "lost", (double) run->lost, 0 },
    { "timeouts", (double) run->timeouts, 0 },
    { "client_cpu_s", run->cpu_end - run->cpu_start, 3 },
    { "msgs_total", (double) run->msgs_total, 0 },
  };
  const char* transport = is_udp(run)                                ? "udp"
                          : opt->addr.transport == UVS_TRANSPORT_TCP ? "tcp"
                                                                     : "unix";
  size_t i;

  printf(opt->json ? "{\"transport\":\"%s\"" : "transport=%s", transport);
  for (i = 0; i < sizeof(f) / sizeof(f[0]); i++)
    printf(opt->json ? ",\"%s\":%.*f" : " %s=%.*f",
           f[i].key,
           f[i].decimals,
           f[i].value);
  printf(opt->json ? "}\n" : "\n");
  fflush(stdout);
}

static int run_init(lg_run_t* run) {
  size_t n = run->opt.conns;
  uint64_t x = 7;
  unsigned i;
  int r;

  run->conns = calloc(n, sizeof(*run->conns));
  run->rbuf = malloc(LG_READ_SIZE);
  if (is_udp(run)) {
    for (i = 1; i < 2 * run->opt.pipeline; i *= 2)
      continue;
    run->slot_mask = i - 1;
    run->slots = calloc(n * i, sizeof(*run->slots));
  } else {
    run->ring = calloc(n * run->opt.pipeline, sizeof(*run->ring));
  }
  if (run->conns == NULL || run->rbuf == NULL ||
      (run->slots == NULL && run->ring == NULL) || pattern_init(run) < 0)
    return UV_ENOMEM;
  for (i = 0; i < run->opt.conns; i++) {
    run->conns[i].index = i;
    run->conns[i].seed = (unsigned) (splitmix64(&x) % LG_PERIOD);
  }
  r = uv_loop_init(&run->loop);
  if (r < 0)
    return r;
  run->loop.data = run;
  uv_timer_init(&run->loop, &run->phase_timer);
  uv_timer_init(&run->loop, &run->tick_timer);
  uv_prepare_init(&run->loop, &run->prepare);
  uv_signal_init(&run->loop, &run->sigint);
  uv_signal_init(&run->loop, &run->sigterm);
  /* The turn counter must not keep the loop alive. */
  uv_unref((uv_handle_t*) &run->prepare);
  uv_prepare_start(&run->prepare, on_prepare);
  uv_timer_start(&run->tick_timer, on_tick, LG_TICK_MS, LG_TICK_MS);
  r = uv_signal_start(&run->sigint, on_signal, SIGINT);
  return r < 0 ? r : uv_signal_start(&run->sigterm, on_signal, SIGTERM);
}

static void run_free(lg_run_t* run) {
  lg_req_t* req;

  while ((req = run->free_reqs) != NULL) {
    run->free_reqs = req->next;
    free(req);
  }
  free(run->conns);
  free(run->ring);
  free(run->slots);
  free(run->pattern);
  free(run->rbuf);
}

int main(int argc, char** argv) {
  static lg_run_t run; /* large (the histogram), so not on the stack */
  int status = 0;
  int r;

  parse_args(&run.opt, argc, argv);
  /* A server that resets a connection must not kill us in write(). */
  signal(SIGPIPE, SIG_IGN);
  r = run_init(&run);
  if (r < 0) {
    fprintf(stderr, "uvs-loadgen: cannot start: %s\n", uv_strerror(r));
    run_free(&run);
    return 1;
  }
  run.phase = LG_PHASE_CONNECT;
  run_progress(&run);
  uv_run(&run.loop, UV_RUN_DEFAULT);
  /* Every handle has closed in that run: one still open is a bug. */
  r = uv_loop_close(&run.loop);
  if (r != 0) {
    fprintf(stderr, "uvs-loadgen: handles left open: %s\n", uv_strerror(r));
    status = 1;
  }
  print_result(&run);
  if (run_errors(&run) > 0 || run.ready == 0)
    status = 1;
  run_free(&run);
  return status;
}
