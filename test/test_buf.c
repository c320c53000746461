/* SPDX-License-Identifier: MIT */
/*
 * The byte queue (lib/buf.c) that connection input and request output go
 * through: appends that fill the tail chunk before starting a new one,
 * reads and line reads across chunk boundaries, taking every chunk at
 * once, clearing, and a randomized check (fixed seed, bounded) that any
 * split of a text into appends, read back by any mix of reads and line
 * reads, gives the text back. Allocation failures (uvs__alloc_fail_after)
 * must return UV_ENOMEM and leave the queue as it was. No sockets, no
 * threads: every case checks the queue's invariants after each step.
 */
#include "test.h"

#include "internal.h"


/* ---- Helpers --------------------------------------------------------- */

/* The queue's invariants: `len` is the sum of the chunks' bytes, no chunk
 * is empty, every chunk's bytes lie within its capacity, and `tail` is the
 * last chunk (both NULL when empty). */
static void check_buf(const uvs__buf_t* buf) {
  const uvs__chunk_t* c;
  const uvs__chunk_t* last = NULL;
  size_t sum = 0;

  for (c = buf->head; c != NULL; c = c->next) {
    ASSERT_LT(c->start, c->end);
    ASSERT_LE(c->end, c->cap);
    sum += c->end - c->start;
    last = c;
  }
  ASSERT_PTR_EQ(buf->tail, last);
  ASSERT_EQ(buf->len, sum);
  if (buf->head == NULL)
    ASSERT_EQ(buf->len, 0);
}


static size_t count_chunks(const uvs__buf_t* buf) {
  const uvs__chunk_t* c;
  size_t n = 0;
  for (c = buf->head; c != NULL; c = c->next)
    n++;
  return n;
}


/* The capacity a small append gets: the queue's minimum chunk size, read
 * back rather than copied from buf.c. */
static size_t min_chunk(void) {
  uvs__buf_t buf;
  size_t cap;
  uvs__buf_init(&buf);
  ASSERT_OK(uvs__buf_append(&buf, "x", 1));
  ASSERT_NOT_NULL(buf.head);
  cap = buf.head->cap;
  uvs__buf_clear(&buf);
  ASSERT_GT(cap, 1);
  return cap;
}


/* Deterministic bytes: byte `i` of a stream seeded by `seed`. */
static char pattern(size_t i, unsigned seed) {
  uint32_t x = (uint32_t) i * 2654435761u + seed;
  x ^= x >> 15;
  x *= 2246822519u;
  x ^= x >> 13;
  return (char) (x & 0xff);
}


static void fill(char* dst, size_t len, unsigned seed) {
  size_t i;
  for (i = 0; i < len; i++)
    dst[i] = pattern(i, seed);
}


/* Appends `text` (a C string) and checks the queue. */
static void append_str(uvs__buf_t* buf, const char* text) {
  ASSERT_OK(uvs__buf_append(buf, text, strlen(text)));
  check_buf(buf);
}


/* One line read of at most `n` bytes, expected to give `want` and to have
 * moved a '\n' or not. */
static void expect_line(uvs__buf_t* buf,
                        size_t n,
                        const char* want,
                        bool want_newline) {
  char got[256];
  size_t len = strlen(want);
  bool newline = !want_newline;

  ASSERT_LE(n, sizeof(got));
  ASSERT_EQ(uvs__buf_read_line(buf, got, n, &newline), len);
  ASSERT_MEM_EQ(got, want, len);
  ASSERT_EQ(newline, want_newline);
  check_buf(buf);
}


/* ---- Appending ------------------------------------------------------- */

/* Small appends share the tail chunk until it is exactly full; the next
 * byte starts a second chunk; an append larger than the minimum fills the
 * tail's room first and puts the rest in one chunk of its own size. */
static void append_fills_tail_then_new_chunk(void) {
  size_t cap = min_chunk();
  size_t big = 3 * cap + 5;
  size_t total = cap + 1 + big;
  char* data = malloc(total);
  char* got = malloc(total);
  uvs__buf_t buf;

  ASSERT_NOT_NULL(data);
  ASSERT_NOT_NULL(got);
  fill(data, total, 1);
  uvs__buf_init(&buf);
  ASSERT_NULL(buf.head);
  ASSERT_EQ(buf.len, 0);

  ASSERT_OK(uvs__buf_append(&buf, data, 100));
  check_buf(&buf);
  ASSERT_EQ(count_chunks(&buf), 1);
  ASSERT_EQ(buf.head->end, 100);

  ASSERT_OK(uvs__buf_append(&buf, data + 100, cap - 100));
  check_buf(&buf);
  ASSERT_EQ(count_chunks(&buf), 1);
  ASSERT_EQ(buf.head->end, cap);
  ASSERT_EQ(buf.len, cap);

  ASSERT_OK(uvs__buf_append(&buf, data + cap, 1));
  check_buf(&buf);
  ASSERT_EQ(count_chunks(&buf), 2);
  ASSERT_EQ(buf.tail->start, 0);
  ASSERT_EQ(buf.tail->end, 1);

  /* The tail has cap - 1 bytes of room: they are used first. */
  ASSERT_OK(uvs__buf_append(&buf, data + cap + 1, big));
  check_buf(&buf);
  ASSERT_EQ(count_chunks(&buf), 3);
  ASSERT_EQ(buf.head->next->end, cap);
  ASSERT_EQ(buf.tail->end, big - (cap - 1));
  ASSERT_GE(buf.tail->cap, big - (cap - 1));
  ASSERT_EQ(buf.len, total);

  ASSERT_EQ(uvs__buf_read(&buf, got, total), total);
  ASSERT_MEM_EQ(got, data, total);
  check_buf(&buf);
  ASSERT_NULL(buf.head);
  free(data);
  free(got);
}


/* An empty append allocates nothing, with or without data. */
static void append_empty(void) {
  uvs__buf_t buf;
  unsigned long before;

  uvs__buf_init(&buf);
  before = uvs__alloc_count();
  ASSERT_OK(uvs__buf_append(&buf, NULL, 0));
  ASSERT_OK(uvs__buf_append(&buf, "abc", 0));
  ASSERT_EQ(uvs__alloc_count(), before);
  ASSERT_NULL(buf.head);
  check_buf(&buf);

  append_str(&buf, "abc");
  ASSERT_OK(uvs__buf_append(&buf, "", 0));
  ASSERT_EQ(buf.len, 3);
  check_buf(&buf);
  uvs__buf_clear(&buf);
}


/* ---- Reading --------------------------------------------------------- */

/* Reads that start and end inside chunks, end exactly on a boundary, span
 * a whole chunk, ask for more than is queued, and find the queue empty. */
static void read_across_chunks(void) {
  size_t cap = min_chunk();
  size_t total = 3 * cap;
  char* data = malloc(total);
  char* got = malloc(total);
  size_t done = 0;
  uvs__buf_t buf;

  ASSERT_NOT_NULL(data);
  ASSERT_NOT_NULL(got);
  fill(data, total, 2);
  uvs__buf_init(&buf);
  /* Three full chunks: one per append of exactly the minimum. */
  ASSERT_OK(uvs__buf_append(&buf, data, cap));
  ASSERT_OK(uvs__buf_append(&buf, data + cap, cap));
  ASSERT_OK(uvs__buf_append(&buf, data + 2 * cap, cap));
  check_buf(&buf);
  ASSERT_EQ(count_chunks(&buf), 3);

  /* Inside the first chunk. */
  ASSERT_EQ(uvs__buf_read(&buf, got, 10), 10);
  done += 10;
  check_buf(&buf);
  ASSERT_EQ(count_chunks(&buf), 3);
  ASSERT_EQ(buf.head->start, 10);
  /* From inside the first to inside the second. */
  ASSERT_EQ(uvs__buf_read(&buf, got + done, cap), cap);
  done += cap;
  check_buf(&buf);
  ASSERT_EQ(count_chunks(&buf), 2);
  ASSERT_EQ(buf.head->start, 10);
  /* Exactly to the end of the second chunk: it is freed. */
  ASSERT_EQ(uvs__buf_read(&buf, got + done, cap - 10), cap - 10);
  done += cap - 10;
  check_buf(&buf);
  ASSERT_EQ(count_chunks(&buf), 1);
  ASSERT_EQ(buf.head->start, 0);
  /* More than is left. */
  ASSERT_EQ(uvs__buf_read(&buf, got + done, total), cap);
  done += cap;
  ASSERT_EQ(done, total);
  ASSERT_MEM_EQ(got, data, total);
  check_buf(&buf);
  ASSERT_NULL(buf.head);
  ASSERT_NULL(buf.tail);
  /* Empty queue, and a zero-byte read. */
  ASSERT_EQ(uvs__buf_read(&buf, got, 10), 0);
  append_str(&buf, "abc");
  ASSERT_EQ(uvs__buf_read(&buf, got, 0), 0);
  ASSERT_EQ(buf.len, 3);
  check_buf(&buf);
  /* After draining, appends start a fresh chunk. */
  ASSERT_EQ(uvs__buf_read(&buf, got, 3), 3);
  append_str(&buf, "def");
  ASSERT_EQ(count_chunks(&buf), 1);
  ASSERT_EQ(uvs__buf_read(&buf, got, 10), 3);
  ASSERT_MEM_EQ(got, "def", 3);
  check_buf(&buf);
  free(data);
  free(got);
}


/* The '\n' is in a later chunk than the line's start: the whole line moves
 * out, through the chunk boundary, and the rest stays. Also a '\n' that is
 * the last byte of a chunk and one that is the first byte of the next. */
static void read_line_newline_in_later_chunk(void) {
  size_t cap = min_chunk();
  char* data = malloc(cap + 64);
  char* got = malloc(cap + 64);
  bool newline = false;
  uvs__buf_t buf;

  ASSERT_NOT_NULL(data);
  ASSERT_NOT_NULL(got);
  uvs__buf_init(&buf);
  memset(data, 'a', cap);
  ASSERT_OK(uvs__buf_append(&buf, data, cap));
  append_str(&buf, "bc\nrest");
  ASSERT_EQ(count_chunks(&buf), 2);
  ASSERT_EQ(uvs__buf_read_line(&buf, got, cap + 64, &newline), cap + 3);
  ASSERT_TRUE(newline);
  ASSERT_MEM_EQ(got, data, cap);
  ASSERT_MEM_EQ(got + cap, "bc\n", 3);
  check_buf(&buf);
  ASSERT_EQ(count_chunks(&buf), 1);
  ASSERT_EQ(buf.len, 4);
  uvs__buf_clear(&buf);

  /* '\n' as the last byte of the first chunk. */
  memset(data, 'a', cap - 1);
  data[cap - 1] = '\n';
  ASSERT_OK(uvs__buf_append(&buf, data, cap));
  append_str(&buf, "next\n");
  ASSERT_EQ(count_chunks(&buf), 2);
  ASSERT_EQ(uvs__buf_read_line(&buf, got, cap + 64, &newline), cap);
  ASSERT_TRUE(newline);
  ASSERT_MEM_EQ(got, data, cap);
  check_buf(&buf);
  ASSERT_EQ(count_chunks(&buf), 1);
  expect_line(&buf, 64, "next\n", true);
  ASSERT_NULL(buf.head);

  /* '\n' as the first byte of the second chunk. */
  memset(data, 'a', cap);
  ASSERT_OK(uvs__buf_append(&buf, data, cap));
  append_str(&buf, "\ntail");
  ASSERT_EQ(uvs__buf_read_line(&buf, got, cap + 64, &newline), cap + 1);
  ASSERT_TRUE(newline);
  ASSERT_EQ(got[cap], '\n');
  check_buf(&buf);
  expect_line(&buf, 64, "tail", false);
  ASSERT_NULL(buf.head);
  free(data);
  free(got);
}


/* A line read stops at `n` bytes when no '\n' came first, and the rest of
 * the line stays for the next read, also when `n` ends inside a later
 * chunk. */
static void read_line_stops_at_n(void) {
  size_t cap = min_chunk();
  char* data = malloc(2 * cap);
  char* got = malloc(2 * cap);
  bool newline = true;
  uvs__buf_t buf;

  ASSERT_NOT_NULL(data);
  ASSERT_NOT_NULL(got);
  uvs__buf_init(&buf);
  append_str(&buf, "abcdef\n");
  expect_line(&buf, 3, "abc", false);
  expect_line(&buf, 10, "def\n", true);
  ASSERT_NULL(buf.head);

  /* Across a boundary, stopping 5 bytes into the second chunk. */
  memset(data, 'q', 2 * cap);
  ASSERT_OK(uvs__buf_append(&buf, data, cap));
  ASSERT_OK(uvs__buf_append(&buf, data, 20));
  append_str(&buf, "\n");
  ASSERT_EQ(count_chunks(&buf), 2);
  ASSERT_EQ(uvs__buf_read_line(&buf, got, cap + 5, &newline), cap + 5);
  ASSERT_FALSE(newline);
  ASSERT_MEM_EQ(got, data, cap + 5);
  check_buf(&buf);
  ASSERT_EQ(buf.len, 16);
  ASSERT_EQ(uvs__buf_read_line(&buf, got, 100, &newline), 16);
  ASSERT_TRUE(newline);
  ASSERT_EQ(got[15], '\n');
  check_buf(&buf);
  ASSERT_NULL(buf.head);
  free(data);
  free(got);
}


/* The '\n' is exactly the n-th byte: it is moved and reported. */
static void read_line_newline_at_n(void) {
  uvs__buf_t buf;

  uvs__buf_init(&buf);
  append_str(&buf, "abc\nxyz");
  expect_line(&buf, 4, "abc\n", true);
  ASSERT_EQ(buf.len, 3);
  /* And one byte short of it: not moved. */
  append_str(&buf, "\n");
  expect_line(&buf, 3, "xyz", false);
  expect_line(&buf, 1, "\n", true);
  ASSERT_NULL(buf.head);
  /* Empty lines, one byte each. */
  append_str(&buf, "\n\n");
  expect_line(&buf, 1, "\n", true);
  expect_line(&buf, 5, "\n", true);
  ASSERT_NULL(buf.head);
}


/* An empty queue gives nothing and clears `*newline`; n == 0 moves
 * nothing; a queue without '\n' gives everything it holds. */
static void read_line_empty_and_zero(void) {
  char got[16];
  bool newline = true;
  uvs__buf_t buf;

  uvs__buf_init(&buf);
  ASSERT_EQ(uvs__buf_read_line(&buf, got, sizeof(got), &newline), 0);
  ASSERT_FALSE(newline);
  check_buf(&buf);

  append_str(&buf, "ab\n");
  newline = true;
  ASSERT_EQ(uvs__buf_read_line(&buf, got, 0, &newline), 0);
  ASSERT_FALSE(newline);
  ASSERT_EQ(buf.len, 3);
  check_buf(&buf);
  uvs__buf_clear(&buf);

  append_str(&buf, "no newline");
  expect_line(&buf, sizeof(got), "no newline", false);
  ASSERT_NULL(buf.head);
  newline = true;
  ASSERT_EQ(uvs__buf_read_line(&buf, got, sizeof(got), &newline), 0);
  ASSERT_FALSE(newline);
}


/* ---- Take and clear -------------------------------------------------- */

/* take detaches every chunk with the byte count and leaves the queue
 * empty and usable; the chunks hold the bytes in order. */
static void take_detaches_all(void) {
  size_t cap = min_chunk();
  size_t total = 2 * cap + 123;
  char* data = malloc(total);
  char* got = malloc(total);
  uvs__chunk_t* chunks;
  const uvs__chunk_t* c;
  size_t len = 1;
  size_t done = 0;
  uvs__buf_t buf;

  ASSERT_NOT_NULL(data);
  ASSERT_NOT_NULL(got);
  fill(data, total, 3);
  uvs__buf_init(&buf);
  ASSERT_NULL(uvs__buf_take(&buf, &len));
  ASSERT_EQ(len, 0);

  ASSERT_OK(uvs__buf_append(&buf, data, 7));
  ASSERT_OK(uvs__buf_append(&buf, data + 7, total - 7));
  check_buf(&buf);
  chunks = uvs__buf_take(&buf, &len);
  ASSERT_NOT_NULL(chunks);
  ASSERT_EQ(len, total);
  ASSERT_NULL(buf.head);
  ASSERT_NULL(buf.tail);
  ASSERT_EQ(buf.len, 0);
  for (c = chunks; c != NULL; c = c->next) {
    ASSERT_LE(done + (c->end - c->start), total);
    memcpy(got + done, c->data + c->start, c->end - c->start);
    done += c->end - c->start;
  }
  ASSERT_EQ(done, total);
  ASSERT_MEM_EQ(got, data, total);
  uvs__buf_free_chunks(chunks);
  uvs__buf_free_chunks(NULL);

  append_str(&buf, "again");
  ASSERT_EQ(uvs__buf_read(&buf, got, sizeof("again")), 5);
  ASSERT_MEM_EQ(got, "again", 5);
  free(data);
  free(got);
}


/* clear frees every chunk, on a full, a partly read and an empty queue,
 * and the queue works after. */
static void clear_and_reuse(void) {
  size_t cap = min_chunk();
  char* data = malloc(3 * cap);
  char got[8];
  uvs__buf_t buf;

  ASSERT_NOT_NULL(data);
  fill(data, 3 * cap, 4);
  uvs__buf_init(&buf);
  uvs__buf_clear(&buf);
  check_buf(&buf);
  ASSERT_OK(uvs__buf_append(&buf, data, 3 * cap));
  ASSERT_OK(uvs__buf_append(&buf, data, 10));
  ASSERT_EQ(uvs__buf_read(&buf, got, 5), 5);
  uvs__buf_clear(&buf);
  check_buf(&buf);
  ASSERT_NULL(buf.head);
  append_str(&buf, "ok\n");
  expect_line(&buf, sizeof(got), "ok\n", true);
  uvs__buf_clear(&buf);
  free(data);
}


/* ---- Randomized ------------------------------------------------------ */

/* xorshift32 with a fixed seed: every run checks the same splits. */
static uint32_t rng_state;

static uint32_t rng(void) {
  uint32_t x = rng_state;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  rng_state = x;
  return x;
}


/* 1..max, small values far more likely than large ones, so that splits
 * hit single bytes and exact chunk sizes as well as big appends. */
static size_t rng_size(size_t max) {
  size_t n;
  switch (rng() % 4) {
  case 0:
    n = 1 + rng() % 8;
    break;
  case 1:
    n = 1 + rng() % 100;
    break;
  case 2:
    n = 1 + rng() % 5000;
    break;
  default:
    n = 1 + rng() % 20000;
    break;
  }
  return n < max ? n : max;
}


/* Random text (lines of random length, some empty, binary bytes too) is
 * appended in random pieces, interleaved with random reads and line reads
 * of random sizes; what comes out, in order, must be the text. Each line
 * read must stop exactly after the first '\n', or at its limit, or when
 * the queue is empty. */
static void randomized_split_and_read(void) {
  enum {
    ITERATIONS = 300,
    MAX_TEXT = 60000
  };
  char* text = malloc(MAX_TEXT);
  char* out = malloc(MAX_TEXT);
  char* piece = malloc(MAX_TEXT);
  int iter;

  ASSERT_NOT_NULL(text);
  ASSERT_NOT_NULL(out);
  ASSERT_NOT_NULL(piece);
  rng_state = 0x2545f491u;
  for (iter = 0; iter < ITERATIONS; iter++) {
    size_t len = 1 + rng() % MAX_TEXT;
    /* One '\n' every `gap` bytes on average: long lines and short. */
    uint32_t gap = 1 + rng() % (iter % 3 == 0 ? 10000 : 60);
    size_t in = 0;
    size_t done = 0;
    size_t i;
    uvs__buf_t buf;

    for (i = 0; i < len; i++) {
      char ch = (char) ('a' + rng() % 26);
      if (rng() % 16 == 0)
        ch = (char) (rng() & 0xff); /* binary, '\r' and '\0' included */
      if (ch == '\n' || rng() % gap == 0)
        ch = '\n';
      text[i] = ch;
    }
    uvs__buf_init(&buf);
    while (done < len) {
      /* Append some, unless all is in; then read some. */
      if (in < len && (buf.len == 0 || rng() % 2 == 0)) {
        size_t n = rng_size(len - in);
        ASSERT_OK(uvs__buf_append(&buf, text + in, n));
        in += n;
        check_buf(&buf);
        ASSERT_EQ(buf.len, in - done);
        continue;
      }
      if (rng() % 2 == 0) {
        size_t n = rng_size(MAX_TEXT);
        size_t got = uvs__buf_read(&buf, piece, n);
        size_t had = in - done;
        ASSERT_EQ(got, n < had ? n : had);
        memcpy(out + done, piece, got);
        done += got;
      } else {
        size_t n = rng_size(MAX_TEXT);
        bool newline = false;
        size_t had = in - done;
        size_t got = uvs__buf_read_line(&buf, piece, n, &newline);
        const char* nl = memchr(text + done, '\n', had < n ? had : n);
        if (nl != NULL) {
          ASSERT_TRUE(newline);
          ASSERT_EQ(got, (size_t) (nl - (text + done)) + 1);
        } else {
          ASSERT_FALSE(newline);
          ASSERT_EQ(got, had < n ? had : n);
        }
        memcpy(out + done, piece, got);
        done += got;
      }
      check_buf(&buf);
      ASSERT_EQ(buf.len, in - done);
      ASSERT_MEM_EQ(out, text, done);
    }
    ASSERT_EQ(done, len);
    ASSERT_MEM_EQ(out, text, len);
    ASSERT_NULL(buf.head);
    uvs__buf_clear(&buf);
  }
  free(text);
  free(out);
  free(piece);
}


/* ---- Allocation failure ---------------------------------------------- */

/* Snapshot of a queue's bytes, for "unchanged" checks. */
static size_t snapshot(const uvs__buf_t* buf, char* dst, size_t cap) {
  const uvs__chunk_t* c;
  size_t n = 0;
  for (c = buf->head; c != NULL; c = c->next) {
    ASSERT_LE(n + (c->end - c->start), cap);
    memcpy(dst + n, c->data + c->start, c->end - c->start);
    n += c->end - c->start;
  }
  return n;
}


/* An append that needs a chunk and cannot get one returns UV_ENOMEM and
 * appends nothing: on an empty queue, and on a queue whose last chunk is
 * full. */
static void append_enomem_needs_chunk(void) {
  size_t cap = min_chunk();
  char* data = malloc(cap);
  char before[64];
  uvs__buf_t buf;

  ASSERT_NOT_NULL(data);
  fill(data, cap, 5);
  uvs__buf_init(&buf);
  uvs__alloc_fail_after(0);
  ASSERT_ERR(uvs__buf_append(&buf, "abc", 3), UV_ENOMEM);
  uvs__alloc_fail_after(-1);
  check_buf(&buf);
  ASSERT_NULL(buf.head);
  ASSERT_EQ(buf.len, 0);

  ASSERT_OK(uvs__buf_append(&buf, data, cap));
  ASSERT_EQ(buf.tail->end, buf.tail->cap);
  uvs__alloc_fail_after(0);
  ASSERT_ERR(uvs__buf_append(&buf, "abc", 3), UV_ENOMEM);
  ASSERT_ERR(uvs__buf_append(&buf, data, cap), UV_ENOMEM);
  uvs__alloc_fail_after(-1);
  check_buf(&buf);
  ASSERT_EQ(count_chunks(&buf), 1);
  ASSERT_EQ(buf.len, cap);

  /* The queue still works, and holds exactly what was appended. */
  ASSERT_OK(uvs__buf_append(&buf, "xyz", 3));
  ASSERT_EQ(uvs__buf_read(&buf, data, cap), cap);
  ASSERT_EQ(snapshot(&buf, before, sizeof(before)), 3);
  ASSERT_MEM_EQ(before, "xyz", 3);
  uvs__buf_clear(&buf);
  free(data);
}


/* An append larger than the room left in the last chunk, whose new chunk
 * cannot be allocated, must not keep the part that fitted: buf.h promises
 * "nothing appended", so a caller that gives up (or retries) does not
 * leave half a write in the stream. */
static void append_enomem_with_room_in_tail(void) {
  size_t cap = min_chunk();
  char* data = malloc(2 * cap);
  char* before = malloc(2 * cap);
  char* after = malloc(2 * cap);
  size_t before_len;
  uvs__buf_t buf;

  ASSERT_NOT_NULL(data);
  ASSERT_NOT_NULL(before);
  ASSERT_NOT_NULL(after);
  fill(data, 2 * cap, 6);
  uvs__buf_init(&buf);
  append_str(&buf, "head");
  before_len = snapshot(&buf, before, 2 * cap);
  uvs__alloc_fail_after(0);
  ASSERT_ERR(uvs__buf_append(&buf, data, cap), UV_ENOMEM);
  uvs__alloc_fail_after(-1);
  check_buf(&buf);
  ASSERT_EQ(buf.len, before_len);
  ASSERT_EQ(snapshot(&buf, after, 2 * cap), before_len);
  ASSERT_MEM_EQ(after, before, before_len);
  uvs__buf_clear(&buf);
  free(data);
  free(before);
  free(after);
}


static const test_case_t cases[] = {
  { "append_fills_tail_then_new_chunk", append_fills_tail_then_new_chunk },
  { "append_empty", append_empty },
  { "read_across_chunks", read_across_chunks },
  { "read_line_newline_in_later_chunk", read_line_newline_in_later_chunk },
  { "read_line_stops_at_n", read_line_stops_at_n },
  { "read_line_newline_at_n", read_line_newline_at_n },
  { "read_line_empty_and_zero", read_line_empty_and_zero },
  { "take_detaches_all", take_detaches_all },
  { "clear_and_reuse", clear_and_reuse },
  { "randomized_split_and_read", randomized_split_and_read },
  { "append_enomem_needs_chunk", append_enomem_needs_chunk },
  { "append_enomem_with_room_in_tail", append_enomem_with_room_in_tail },
};

TEST_MAIN(cases)
