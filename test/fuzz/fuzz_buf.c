/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for the byte queue (lib/buf.c) alone: any sequence of
 * appends (small ones that share a chunk, large ones past the minimum
 * chunk size, appends whose allocation fails), reads, line reads, takes
 * and clears, checked after every step against a flat copy of the queued
 * bytes, with the queue's invariants: `len` is the sum of its chunks, no
 * chunk is empty or overruns its capacity, `tail` is the last chunk. A
 * failed append must return UV_ENOMEM and leave the queue as it was, and
 * fail only when it needed memory.
 *
 * Input layout: steps of 3 bytes (kind, a 16-bit size, little-endian;
 * bytes past the end read as 0). A literal append's bytes follow its
 * step. test/fuzz/corpus.py writes the seed corpus in this layout.
 */
#include "fuzz.h"
#include "test.h"

#include "internal.h"

/* Sizes of appends and reads: past the queue's minimum chunk (4096), so
 * data spans chunks and one append can need a chunk of its own. */
#define FUZZ_SIZE_MAX 9000
/* At most this much queued: memory stays small whatever the input. */
#define FUZZ_QUEUE_MAX 65536

/* The queued bytes, head first. */
typedef struct {
  char data[FUZZ_QUEUE_MAX];
  size_t len;
} model_t;


static uint8_t take_byte(const uint8_t** data, size_t* size) {
  if (*size == 0)
    return 0;
  (*size)--;
  return *(*data)++;
}


/* Bytes from a seed, with a '\n' about every `every` bytes. */
static void make_bytes(char* dst, size_t n, uint32_t seed, unsigned every) {
  uint32_t x = seed | 1;
  size_t i;
  for (i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    dst[i] = (x >> 8) % every == 0 ? '\n' : (char) (x & 0xff);
  }
}


static void check_queue(const uvs__buf_t* buf, const model_t* m) {
  const uvs__chunk_t* c;
  const uvs__chunk_t* last = NULL;
  size_t pos = 0;

  for (c = buf->head; c != NULL; c = c->next) {
    ASSERT_LT(c->start, c->end);
    ASSERT_LE(c->end, c->cap);
    ASSERT_LE(c->end - c->start, m->len - pos);
    ASSERT_MEM_EQ(c->data + c->start, m->data + pos, c->end - c->start);
    pos += c->end - c->start;
    last = c;
  }
  ASSERT_PTR_EQ(buf->tail, last);
  ASSERT_EQ(buf->len, m->len);
  ASSERT_EQ(pos, m->len);
}


static void consume(model_t* m, size_t n) {
  memmove(m->data, m->data + n, m->len - n);
  m->len -= n;
}


static void append(uvs__buf_t* buf, model_t* m, const char* data, size_t n) {
  ASSERT_OK(uvs__buf_append(buf, data, n));
  memcpy(m->data + m->len, data, n);
  m->len += n;
}


/* With allocation failing: it succeeds only within the tail's room. */
static void append_failing(uvs__buf_t* buf,
                           model_t* m,
                           const char* data,
                           size_t n) {
  uvs__chunk_t* head = buf->head;
  uvs__chunk_t* tail = buf->tail;
  size_t room = tail != NULL ? tail->cap - tail->end : 0;
  int r;

  uvs__alloc_fail_after(0);
  r = uvs__buf_append(buf, data, n);
  uvs__alloc_fail_after(-1);
  if (n <= room) {
    ASSERT_OK(r);
    memcpy(m->data + m->len, data, n);
    m->len += n;
  } else {
    ASSERT_ERR(r, UV_ENOMEM);
    ASSERT_PTR_EQ(buf->head, head);
    ASSERT_PTR_EQ(buf->tail, tail);
    if (tail != NULL)
      ASSERT_EQ(tail->cap - tail->end, room);
  }
}


static void read_some(uvs__buf_t* buf, model_t* m, size_t n) {
  size_t want = n < m->len ? n : m->len;
  char* dst = malloc(n > 0 ? n : 1); /* exact: ASan sees overruns */
  ASSERT_NOT_NULL(dst);
  ASSERT_EQ(uvs__buf_read(buf, dst, n), want);
  ASSERT_MEM_EQ(dst, m->data, want);
  consume(m, want);
  free(dst);
}


static void read_line(uvs__buf_t* buf, model_t* m, size_t n) {
  size_t limit = n < m->len ? n : m->len;
  const char* nl = memchr(m->data, '\n', limit);
  size_t want = nl != NULL ? (size_t) (nl - m->data) + 1 : limit;
  char* dst = malloc(n > 0 ? n : 1);
  bool newline = true;
  ASSERT_NOT_NULL(dst);
  ASSERT_EQ(uvs__buf_read_line(buf, dst, n, &newline), want);
  ASSERT_EQ(newline, nl != NULL);
  ASSERT_MEM_EQ(dst, m->data, want);
  consume(m, want);
  free(dst);
}


static void take_all(uvs__buf_t* buf, model_t* m) {
  uvs__chunk_t* chunks;
  const uvs__chunk_t* c;
  size_t len = 1;
  size_t pos = 0;

  chunks = uvs__buf_take(buf, &len);
  ASSERT_EQ(len, m->len);
  for (c = chunks; c != NULL; c = c->next) {
    ASSERT_LT(c->start, c->end);
    ASSERT_LE(c->end - c->start, m->len - pos);
    ASSERT_MEM_EQ(c->data + c->start, m->data + pos, c->end - c->start);
    pos += c->end - c->start;
  }
  ASSERT_EQ(pos, m->len);
  uvs__buf_free_chunks(chunks);
  m->len = 0;
}


int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static model_t m;
  static char bytes[FUZZ_SIZE_MAX];
  uvs__buf_t buf;
  uint32_t steps = 0;

  m.len = 0;
  uvs__buf_init(&buf);
  check_queue(&buf, &m);
  while (size > 0) {
    uint8_t kind = take_byte(&data, &size);
    size_t v = take_byte(&data, &size);
    size_t n;
    v |= (size_t) take_byte(&data, &size) << 8;
    steps++;
    switch (kind % 7) {
    case 0:
    case 6:
      n = 1 + v % FUZZ_SIZE_MAX;
      if (n > FUZZ_QUEUE_MAX - m.len)
        break;
      make_bytes(bytes, n, (uint32_t) v * 2654435761u + steps, 1 + kind / 7);
      if (kind % 7 == 0)
        append(&buf, &m, bytes, n);
      else
        append_failing(&buf, &m, bytes, n);
      break;
    case 1:
      /* The input's own bytes: the fuzzer places each '\n'. */
      n = v % 64 < size ? v % 64 : size;
      if (n > FUZZ_QUEUE_MAX - m.len)
        break;
      append(&buf, &m, (const char*) data, n);
      data += n;
      size -= n;
      break;
    case 2:
      read_some(&buf, &m, v % FUZZ_SIZE_MAX);
      break;
    case 3:
      read_line(&buf, &m, v % FUZZ_SIZE_MAX);
      break;
    case 4:
      take_all(&buf, &m);
      break;
    default:
      uvs__buf_clear(&buf);
      m.len = 0;
      break;
    }
    check_queue(&buf, &m);
  }
  uvs__buf_clear(&buf);
  return 0;
}
