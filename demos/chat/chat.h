/* SPDX-License-Identifier: MIT */
/*
 * The chat room of uvs-chat (DESIGN.md section 4): names, join order, the
 * nick rules, command parsing and message formatting, shared by the event
 * and the thread front ends in main.c. A front end turns bytes into lines
 * and tells the room about joins, lines and leaves; the room decides what
 * every client receives and sends it with uvs_conn_write, which never
 * blocks in either mode.
 */
#ifndef CHAT_H
#define CHAT_H

#include <uvs.h>

#include <stdbool.h>
#include <stddef.h>

/* The longest name /nick accepts, in bytes. */
#define CHAT_NAME_MAX 32

/* What a front end does after chat_line or chat_line_too_long. */
typedef enum chat_result_e {
  CHAT_KEEP = 0, /* go on reading lines from this client */
  CHAT_CLOSE     /* stop reading and close it: /quit, an error, a cut */
} chat_result_t;

/* One client in the room. The front end embeds it in the connection's
 * state and zeroes it (uvs does); the room owns every field. */
typedef struct chat_client_s chat_client_t;
struct chat_client_s {
  uvs_conn_t* conn;
  chat_client_t* prev; /* join order */
  chat_client_t* next;
  bool in_room; /* joined and not left yet: others see it in /who */
  bool cut;     /* a write to it failed, so uvs is closing it */
  char name[CHAT_NAME_MAX + 1];
};

/* The room: every client that has joined and not left, in join order. */
typedef struct chat_room_s {
  uv_mutex_t lock; /* held around every room operation in thread mode */
  bool threaded;
  size_t max_line; /* longest line in bytes, without its "\n" or "\r\n" */
  char* scratch;   /* room for one "NAME: TEXT\n", used under the lock */
  size_t scratch_size;
  chat_client_t* first;
  chat_client_t* last;
} chat_room_t;

/* Makes an empty room. `threaded`: the room is used from several threads
 * and takes its lock; in event mode everything runs on the loop thread and
 * no lock is taken. Returns 0, UV_ENOMEM or a uv_mutex_init error. */
int chat_room_init(chat_room_t* room, size_t max_line, int threaded);

/* Frees what chat_room_init made; the room must be empty of callers. */
void chat_room_free(chat_room_t* room);

/* Names `client` guestN after its connection's number, adds it to the
 * room, sends it "* welcome NAME" and tells the others it joined. */
void chat_join(chat_room_t* room, chat_client_t* client, uvs_conn_t* conn);

/* Handles one line from `client`: `len` bytes at `line` without the '\n'
 * (a last '\r' is dropped here). Returns CHAT_CLOSE when the client must
 * be closed (it quit, the line was too long, or it was cut off); it has
 * left the room then. */
chat_result_t chat_line(chat_room_t* room,
                        chat_client_t* client,
                        const char* line,
                        size_t len);

/* The front end saw a line longer than the room's max_line before its end:
 * sends "! error: line too long" and makes the client leave. Returns
 * CHAT_CLOSE. */
chat_result_t chat_line_too_long(chat_room_t* room, chat_client_t* client);

/* The client is gone (EOF, reset, server close): removes it from the room
 * and tells the others it left, unless it has left already. The client's
 * connection is never written to after this returns. */
void chat_leave(chat_room_t* room, chat_client_t* client);

#endif /* CHAT_H */
