/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for blocking request I/O (lib/reqio.c): uvs_readline,
 * uvs_read_exact and uvs_recv over the input queue of lib/buf.c, with the
 * stream split into any chunks. The library's own functions run as in
 * sync mode, fd-direct: the connection's descriptor is one end of an
 * AF_UNIX SOCK_SEQPACKET pair, and a writer thread sends the chunks into
 * the other end and then shuts it for EOF. A seqpacket socket keeps each
 * chunk a message, and no chunk is larger than the server's read buffer
 * (read_buffer_size, which the input picks), so each recv the library
 * makes takes exactly one chunk: the library sees the split the input
 * asks for. The same reads then run on a datagram request (the whole
 * stream queued, EOF after it), which never touches a socket.
 *
 * Each result is checked against the stream, as uvs.h specifies: a line
 * up to and including its '\n', NUL-terminated, at most size - 1 bytes,
 * else UV_ENOBUFS with size - 1 bytes consumed; at EOF the last partial
 * line, then 0. read_exact: n bytes, fewer only at EOF. recv: 1 to n
 * bytes that continue the stream, 0 at EOF. Misuse: UV_EINVAL and
 * nothing consumed. After the reads, the rest of the stream must come out
 * intact, then EOF for good.
 *
 * Input layout (bytes past the end read as 0):
 *   byte 0       read_buffer_size: 1 + byte % 64
 *   byte 1       n, then n bytes: chunk lengths, 1 + byte, used in turn
 *                until the stream ends; a chunk longer than
 *                read_buffer_size goes as several messages
 *   1 byte       m, then m reads of 3 bytes: kind, a 16-bit size
 *                (little-endian); reads cut short by the input's end are
 *                dropped
 *   the rest     the stream, at most FUZZ_STREAM_MAX bytes
 * test/fuzz/corpus.py writes the seed corpus in this layout.
 */
#include "fuzz.h"
#include "test.h"

#include "internal.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/socket.h>

#define FUZZ_STREAM_MAX 4096
/* Sizes of reads: beyond the stream, to reach EOF in one read. */
#define FUZZ_SIZE_MAX (FUZZ_STREAM_MAX + 128)
/* A writer thread feeds every read, so one waits only for scheduling;
 * running into this is a lost wake-up. Below libFuzzer's -timeout. */
#define FUZZ_TIMEOUT_MS 4000

typedef struct {
  size_t read_buffer_size;
  const uint8_t* lens;
  size_t nlens;
  const uint8_t* reads; /* 3 bytes each */
  size_t nreads;
  const char* stream;
  size_t len;
} input_t;

/* The stream and how much of it the reads have taken. */
typedef struct {
  const char* data;
  size_t len;
  size_t pos;
} model_t;

typedef struct {
  int fd;
  const input_t* in;
} writer_t;


/* ---- Input ----------------------------------------------------------- */

static uint8_t take_byte(const uint8_t** data, size_t* size) {
  if (*size == 0)
    return 0;
  (*size)--;
  return *(*data)++;
}


static void decode(const uint8_t* data, size_t size, input_t* in) {
  size_t n;

  in->read_buffer_size = 1 + take_byte(&data, &size) % 64;
  n = take_byte(&data, &size);
  in->nlens = n < size ? n : size;
  in->lens = data;
  data += in->nlens;
  size -= in->nlens;
  n = take_byte(&data, &size);
  in->nreads = n < size / 3 ? n : size / 3;
  in->reads = data;
  data += in->nreads * 3;
  size -= in->nreads * 3;
  in->stream = (const char*) data;
  in->len = size < FUZZ_STREAM_MAX ? size : FUZZ_STREAM_MAX;
}


/* ---- The peer -------------------------------------------------------- */

static void send_message(int fd, const char* data, size_t len) {
  ssize_t n;
  do
    n = send(fd, data, len, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  /* The reader drains everything before it closes its end. */
  ASSERT_EQ(n, (ssize_t) len);
}


static void* write_chunks(void* arg) {
  const writer_t* w = arg;
  const input_t* in = w->in;
  size_t pos = 0;
  size_t i = 0;

  while (pos < in->len) {
    size_t chunk =
        in->nlens > 0 ? 1 + (size_t) in->lens[i++ % in->nlens] : in->len;
    if (chunk > in->len - pos)
      chunk = in->len - pos;
    /* Never an empty message: it would read as EOF. */
    while (chunk > 0) {
      size_t piece =
          chunk < in->read_buffer_size ? chunk : in->read_buffer_size;
      send_message(w->fd, in->stream + pos, piece);
      pos += piece;
      chunk -= piece;
    }
  }
  ASSERT_OK(shutdown(w->fd, SHUT_WR));
  return NULL;
}


/* ---- Reads against the model ----------------------------------------- */

static char* alloc_exact(size_t size) {
  /* Exactly `size` bytes, so ASan sees a write past them. */
  char* buf = malloc(size > 0 ? size : 1);
  ASSERT_NOT_NULL(buf);
  return buf;
}


static void check_readline(uvs_conn_t* conn, model_t* m, size_t size) {
  const char* rest = m->data + m->pos;
  size_t avail = m->len - m->pos;
  size_t limit = avail < size - 1 ? avail : size - 1;
  const char* nl = memchr(rest, '\n', limit);
  char* buf = alloc_exact(size);
  ssize_t r = uvs_readline(conn, buf, size);
  size_t want;

  if (nl != NULL) {
    want = (size_t) (nl - rest) + 1;
    ASSERT_EQ(r, want);
  } else if (avail > size - 1) {
    /* A line longer than size - 1 bytes: its first size - 1 bytes. */
    want = size - 1;
    ASSERT_ERR(r, UV_ENOBUFS);
  } else {
    /* EOF first: the last partial line (a line of exactly size - 1 bytes
     * fits), or 0. */
    want = avail;
    ASSERT_EQ(r, want);
  }
  ASSERT_MEM_EQ(buf, rest, want);
  ASSERT_EQ(buf[want], '\0');
  m->pos += want;
  free(buf);
}


static void check_read_exact(uvs_conn_t* conn, model_t* m, size_t n) {
  size_t avail = m->len - m->pos;
  size_t want = n < avail ? n : avail;
  char* buf = alloc_exact(n);
  ssize_t r = uvs_read_exact(conn, buf, n);

  ASSERT_EQ(r, want);
  ASSERT_MEM_EQ(buf, m->data + m->pos, want);
  m->pos += want;
  free(buf);
}


static void check_recv(uvs_conn_t* conn, model_t* m, size_t n) {
  size_t avail = m->len - m->pos;
  size_t most = n < avail ? n : avail;
  char* buf = alloc_exact(n);
  ssize_t r = uvs_recv(conn, buf, n);

  if (most == 0) {
    ASSERT_EQ(r, 0);
  } else {
    /* However much had arrived, but at least one byte. */
    ASSERT_GE(r, 1);
    ASSERT_LE(r, most);
    ASSERT_MEM_EQ(buf, m->data + m->pos, (size_t) r);
    m->pos += (size_t) r;
  }
  free(buf);
}


/* Calls uvs.h refuses: UV_EINVAL, nothing consumed; and the empty reads
 * a NULL buffer may do. */
static void check_misuse(uvs_conn_t* conn, unsigned which) {
  char buf[2];
  switch (which) {
  case 0:
    ASSERT_ERR(uvs_readline(conn, buf, 0), UV_EINVAL);
    break;
  case 1:
    ASSERT_ERR(uvs_readline(conn, buf, 1), UV_EINVAL);
    break;
  case 2:
    ASSERT_ERR(uvs_readline(conn, NULL, 2), UV_EINVAL);
    break;
  case 3:
    ASSERT_ERR(uvs_recv(conn, NULL, 1), UV_EINVAL);
    break;
  case 4:
    ASSERT_ERR(uvs_read_exact(conn, NULL, 1), UV_EINVAL);
    break;
  case 5:
    ASSERT_EQ(uvs_recv(conn, NULL, 0), 0);
    break;
  default:
    ASSERT_EQ(uvs_read_exact(conn, NULL, 0), 0);
    break;
  }
}


static void run_reads(uvs_conn_t* conn, const input_t* in) {
  model_t m = { in->stream, in->len, 0 };
  size_t i;

  for (i = 0; i < in->nreads; i++) {
    const uint8_t* op = in->reads + 3 * i;
    size_t v = (size_t) op[1] | (size_t) op[2] << 8;
    switch (op[0] % 4) {
    case 0:
      check_readline(conn, &m, 2 + v % (FUZZ_SIZE_MAX - 1));
      break;
    case 1:
      check_read_exact(conn, &m, v % FUZZ_SIZE_MAX);
      break;
    case 2:
      check_recv(conn, &m, v % FUZZ_SIZE_MAX);
      break;
    default:
      check_misuse(conn, (unsigned) (v % 7));
      break;
    }
  }
  /* The rest, intact, then EOF however it is asked. */
  check_read_exact(conn, &m, m.len - m.pos + 1);
  ASSERT_EQ(m.pos, m.len);
  check_recv(conn, &m, 16);
  check_readline(conn, &m, 16);
  check_read_exact(conn, &m, 16);
}


/* ---- Connections ----------------------------------------------------- */

/* What reqio needs of a server: its config and, in sync mode, the read
 * buffer every connection reads into. */
static uvs_server_t* server_new(const input_t* in) {
  uvs_server_t* server = calloc(1, sizeof(*server));
  ASSERT_NOT_NULL(server);
  uvs_config_init(&server->config);
  server->config.mode = UVS_MODE_SYNC;
  server->config.read_buffer_size = in->read_buffer_size;
  server->read_buf = alloc_exact(in->read_buffer_size);
  return server;
}


static void server_free(uvs_server_t* server) {
  free(server->read_buf);
  free(server);
}


static void fuzz_socket(uvs_server_t* server, const input_t* in) {
  uvs_conn_t* conn;
  pthread_t thread;
  writer_t writer;
  int sv[2];

  conn = calloc(1, sizeof(*conn));
  ASSERT_NOT_NULL(conn);
  ASSERT_OK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv));
  /* As accept4 gives it to a sync server. */
  ASSERT_OK(fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK));
  conn->server = server;
  conn->fd = sv[0];
  ASSERT_OK(uvs__reqio_new(conn));
  ASSERT_OK(uvs_conn_set_timeout(conn, FUZZ_TIMEOUT_MS));

  writer.fd = sv[1];
  writer.in = in;
  ASSERT_OK(pthread_create(&thread, NULL, write_chunks, &writer));
  run_reads(conn, in);
  ASSERT_OK(pthread_join(thread, NULL));

  uvs__reqio_free(conn->io);
  ASSERT_OK(close(sv[0]));
  ASSERT_OK(close(sv[1]));
  free(conn);
}


static void fuzz_datagram(uvs_server_t* server, const input_t* in) {
  uvs_conn_t* conn = calloc(1, sizeof(*conn));
  ASSERT_NOT_NULL(conn);
  conn->server = server;
  conn->fd = -1;
  conn->dgram = true;
  ASSERT_OK(uvs__reqio_new_datagram(conn, in->stream, in->len));
  run_reads(conn, in);
  uvs__reqio_free(conn->io);
  free(conn);
}


int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  uvs_server_t* server;
  input_t in;

  decode(data, size, &in);
  server = server_new(&in);
  fuzz_socket(server, &in);
  fuzz_datagram(server, &in);
  server_free(server);
  return 0;
}
