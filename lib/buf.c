/* SPDX-License-Identifier: MIT */
/*
 * The byte queue that connections and request I/O share: a singly linked
 * list of chunks, appended at the tail and consumed from the head, so
 * bytes are copied once in and once out and a consumer never waits for a
 * reallocation. Its length is what limits are checked against (input high
 * water, output caps); it never grows by itself.
 *
 * The line and framing logic lives here as plain functions over a queue
 * (no locks, no sockets), so it can be tested and fuzzed over any split of
 * the input into chunks. Callers hold whatever lock guards the queue.
 */
#include "internal.h"

#include <string.h>

/* A new chunk holds at least this much, so small appends share chunks. */
#define UVS__CHUNK_MIN 4096


void uvs__buf_init(uvs__buf_t* buf) {
  buf->head = NULL;
  buf->tail = NULL;
  buf->len = 0;
}


void uvs__buf_free_chunks(uvs__chunk_t* chunk) {
  while (chunk != NULL) {
    uvs__chunk_t* next = chunk->next;
    uvs__free(chunk);
    chunk = next;
  }
}


void uvs__buf_clear(uvs__buf_t* buf) {
  uvs__buf_free_chunks(buf->head);
  uvs__buf_init(buf);
}


int uvs__buf_append(uvs__buf_t* buf, const void* data, size_t len) {
  const char* p = data;
  uvs__chunk_t* tail = buf->tail;
  uvs__chunk_t* chunk = NULL;
  size_t room = 0;
  size_t rest;
  size_t cap;

  if (len == 0)
    return 0;
  if (tail != NULL)
    room = tail->cap - tail->end;
  if (room > len)
    room = len;
  rest = len - room;
  /* Allocate before copying anything, so a failure appends nothing. */
  if (rest > 0) {
    cap = rest > UVS__CHUNK_MIN ? rest : UVS__CHUNK_MIN;
    chunk = uvs__malloc(sizeof(*chunk) + cap);
    if (chunk == NULL)
      return UV_ENOMEM;
    chunk->next = NULL;
    chunk->cap = cap;
    chunk->start = 0;
    chunk->end = rest;
    memcpy(chunk->data, p + room, rest);
  }
  if (room > 0) {
    memcpy(tail->data + tail->end, p, room);
    tail->end += room;
  }
  if (chunk != NULL) {
    if (tail != NULL)
      tail->next = chunk;
    else
      buf->head = chunk;
    buf->tail = chunk;
  }
  buf->len += len;
  return 0;
}


/* Drops `n` bytes from the head; they must be there. */
static void consume(uvs__buf_t* buf, size_t n) {
  buf->len -= n;
  while (n > 0 && buf->head != NULL) {
    uvs__chunk_t* head = buf->head;
    size_t have = head->end - head->start;
    if (n < have) {
      head->start += n;
      return;
    }
    n -= have;
    buf->head = head->next;
    if (buf->head == NULL)
      buf->tail = NULL;
    uvs__free(head);
  }
}


size_t uvs__buf_read(uvs__buf_t* buf, void* dst, size_t n) {
  char* out = dst;
  size_t done = 0;
  const uvs__chunk_t* c;

  if (n > buf->len)
    n = buf->len;
  for (c = buf->head; c != NULL && done < n; c = c->next) {
    size_t have = c->end - c->start;
    if (have > n - done)
      have = n - done;
    memcpy(out + done, c->data + c->start, have);
    done += have;
  }
  consume(buf, done);
  return done;
}


size_t uvs__buf_read_line(uvs__buf_t* buf, char* dst, size_t n, bool* newline) {
  size_t done = 0;
  const uvs__chunk_t* c;

  *newline = false;
  for (c = buf->head; c != NULL && done < n && !*newline; c = c->next) {
    const char* from = c->data + c->start;
    size_t have = c->end - c->start;
    const char* nl;
    if (have > n - done)
      have = n - done;
    nl = memchr(from, '\n', have);
    if (nl != NULL) {
      have = (size_t) (nl - from) + 1;
      *newline = true;
    }
    memcpy(dst + done, from, have);
    done += have;
  }
  consume(buf, done);
  return done;
}


uvs__chunk_t* uvs__buf_take(uvs__buf_t* buf, size_t* len) {
  uvs__chunk_t* head = buf->head;
  *len = buf->len;
  uvs__buf_init(buf);
  return head;
}
