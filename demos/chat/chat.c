/* SPDX-License-Identifier: MIT */
/*
 * The chat protocol of DESIGN.md section 4, independent of how a front end
 * reads lines: the room keeps its clients in join order (the order /who
 * prints), names each guestN after uvs_conn_id, applies the nick rules,
 * parses commands and formats every message.
 *
 * Every message goes out with uvs_conn_write, which copies and never
 * blocks, so one slow reader cannot hold up a sender or the room. A write
 * that fails (the receiver's unsent output passed config.max_write_queue,
 * or it is closing) means uvs is closing that connection: the client is
 * marked cut, and at the end of the operation sweep() takes it out of the
 * room and tells the others it left. Nothing else is written to it after
 * that, so a client never sees lines after its own end.
 *
 * In thread mode each public function holds the room's lock from start to
 * end, writes included. That is what keeps ordering simple: a client is in
 * the room (and welcomed) before any line reaches it, each sender's lines
 * reach every receiver in the order they were sent, and a client removed
 * under the lock is never written to again, so its connection may be freed
 * once its finish has returned. In event mode everything runs on the loop
 * thread and no lock is taken.
 */
#include "chat.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void room_lock(chat_room_t* room);
static void room_unlock(chat_room_t* room);
static void sweep(chat_room_t* room);

static const char err_too_long[] = "! error: line too long\n";
static const char err_unknown[] =
    "! error: unknown command (try /nick NAME, /who or /quit)\n";
static const char err_nick_usage[] = "! error: usage: /nick NAME\n";
static const char err_nick_chars[] =
    "! error: a name is 1 to 32 of A-Z a-z 0-9 _ -\n";
static const char err_nick_guest[] =
    "! error: names guestN are kept for new clients\n";
static const char err_nick_taken[] = "! error: that name is taken\n";
static const char err_nick_same[] = "! error: that is your name already\n";
static const char err_who_usage[] = "! error: /who takes no argument\n";
static const char err_quit_usage[] = "! error: /quit takes no argument\n";
static const char err_nomem[] = "! error: out of memory\n";


/* ---- Room ------------------------------------------------------------ */

int chat_room_init(chat_room_t* room, size_t max_line, int threaded) {
  int r;

  memset(room, 0, sizeof(*room));
  room->max_line = max_line;
  room->threaded = threaded != 0;
  /* "NAME: " + TEXT + "\n", a line as the others receive it; the other
   * messages are formatted in small buffers of their own. */
  room->scratch_size = CHAT_NAME_MAX + 2 + max_line + 1;
  room->scratch = malloc(room->scratch_size);
  if (room->scratch == NULL) {
    return UV_ENOMEM;
  }
  if (room->threaded) {
    r = uv_mutex_init(&room->lock);
    if (r != 0) {
      free(room->scratch);
      room->scratch = NULL;
      return r;
    }
  }
  return 0;
}


void chat_room_free(chat_room_t* room) {
  if (room->threaded) {
    uv_mutex_destroy(&room->lock);
  }
  free(room->scratch);
  room->scratch = NULL;
}


static void room_lock(chat_room_t* room) {
  if (room->threaded) {
    uv_mutex_lock(&room->lock);
  }
}


static void room_unlock(chat_room_t* room) {
  if (room->threaded) {
    uv_mutex_unlock(&room->lock);
  }
}


/* ---- Sending (room lock held) ---------------------------------------- */

/* A failed write means uvs is closing the connection (UV_ENOBUFS past
 * max_write_queue, UV_EPIPE when closing, UV_ENOMEM): stop writing to it;
 * sweep() removes it from the room. */
static void send_to(chat_client_t* client, const char* data, size_t len) {
  if (client->cut) {
    return;
  }
  if (uvs_conn_write(client->conn, data, len) != 0) {
    client->cut = true;
  }
}


static void send_text(chat_client_t* client, const char* text) {
  send_to(client, text, strlen(text));
}


/* Sends to every client in the room but `except` (NULL: to all). */
static void broadcast(chat_room_t* room,
                      const chat_client_t* except,
                      const char* data,
                      size_t len) {
  chat_client_t* c;

  for (c = room->first; c != NULL; c = c->next) {
    if (c != except) {
      send_to(c, data, len);
    }
  }
}


static void room_add(chat_room_t* room, chat_client_t* client) {
  client->prev = room->last;
  client->next = NULL;
  if (room->last != NULL) {
    room->last->next = client;
  } else {
    room->first = client;
  }
  room->last = client;
  client->in_room = true;
}


static void room_remove(chat_room_t* room, chat_client_t* client) {
  if (client->prev != NULL) {
    client->prev->next = client->next;
  } else {
    room->first = client->next;
  }
  if (client->next != NULL) {
    client->next->prev = client->prev;
  } else {
    room->last = client->prev;
  }
  client->prev = NULL;
  client->next = NULL;
  client->in_room = false;
}


/* Takes `client` out of the room and tells the others; a no-op once it has
 * left. */
static void leave_locked(chat_room_t* room, chat_client_t* client) {
  char msg[CHAT_NAME_MAX + 16];
  int n;

  if (!client->in_room) {
    return;
  }
  room_remove(room, client);
  n = snprintf(msg, sizeof(msg), "* %s left\n", client->name);
  broadcast(room, NULL, msg, (size_t) n);
}


/* Removes every client a write failed on, announcing each. An announcement
 * can cut more clients (their queues are full too), so the scan restarts
 * after each removal; each client is removed once, so it ends. */
static void sweep(chat_room_t* room) {
  chat_client_t* c = room->first;

  while (c != NULL) {
    if (!c->cut) {
      c = c->next;
      continue;
    }
    leave_locked(room, c);
    c = room->first;
  }
}


/* ---- Commands (room lock held) --------------------------------------- */

static bool is_name_char(char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
         (ch >= '0' && ch <= '9') || ch == '_' || ch == '-';
}


static bool is_valid_name(const char* name, size_t len) {
  size_t i;

  if (len == 0 || len > CHAT_NAME_MAX) {
    return false;
  }
  for (i = 0; i < len; i++) {
    if (!is_name_char(name[i])) {
      return false;
    }
  }
  return true;
}


/* guest followed by digits only: the server gives such names to new
 * clients, so nobody may take one that a later client would get. */
static bool is_guest_name(const char* name, size_t len) {
  size_t i;

  if (len <= 5 || memcmp(name, "guest", 5) != 0) {
    return false;
  }
  for (i = 5; i < len; i++) {
    if (name[i] < '0' || name[i] > '9') {
      return false;
    }
  }
  return true;
}


static bool name_is(const chat_client_t* client, const char* name, size_t len) {
  return strlen(client->name) == len && memcmp(client->name, name, len) == 0;
}


static void cmd_nick(chat_room_t* room,
                     chat_client_t* client,
                     const char* arg,
                     size_t len) {
  char old[CHAT_NAME_MAX + 1];
  char msg[2 * CHAT_NAME_MAX + 32];
  chat_client_t* c;
  int n;

  if (len == 0) {
    send_text(client, err_nick_usage);
    return;
  }
  if (!is_valid_name(arg, len)) {
    send_text(client, err_nick_chars);
    return;
  }
  if (name_is(client, arg, len)) {
    send_text(client, err_nick_same);
    return;
  }
  if (is_guest_name(arg, len)) {
    send_text(client, err_nick_guest);
    return;
  }
  for (c = room->first; c != NULL; c = c->next) {
    if (name_is(c, arg, len)) {
      send_text(client, err_nick_taken);
      return;
    }
  }

  memcpy(old, client->name, sizeof(old));
  memcpy(client->name, arg, len);
  client->name[len] = '\0';
  n = snprintf(msg, sizeof(msg), "* you are now %s\n", client->name);
  send_to(client, msg, (size_t) n);
  n = snprintf(msg, sizeof(msg), "* %s is now %s\n", old, client->name);
  broadcast(room, client, msg, (size_t) n);
}


/* "* online: NAME1, NAME2, ...\n" in join order, to the asker. */
static void cmd_who(chat_room_t* room, chat_client_t* client) {
  static const char head[] = "* online: ";
  const chat_client_t* c;
  size_t size = sizeof(head) - 1 + 1;
  size_t len;
  char* msg;

  for (c = room->first; c != NULL; c = c->next) {
    size += strlen(c->name) + 2;
  }
  msg = malloc(size);
  if (msg == NULL) {
    send_text(client, err_nomem);
    return;
  }
  memcpy(msg, head, sizeof(head) - 1);
  len = sizeof(head) - 1;
  for (c = room->first; c != NULL; c = c->next) {
    size_t n = strlen(c->name);
    if (c != room->first) {
      memcpy(msg + len, ", ", 2);
      len += 2;
    }
    memcpy(msg + len, c->name, n);
    len += n;
  }
  msg[len++] = '\n';
  send_to(client, msg, len);
  free(msg);
}


static chat_result_t cmd_quit(chat_room_t* room, chat_client_t* client) {
  send_text(client, "* bye\n");
  leave_locked(room, client);
  return CHAT_CLOSE;
}


/* The length of `line` without trailing spaces and tabs. */
static size_t trim_end(const char* line, size_t len) {
  while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t')) {
    len--;
  }
  return len;
}


/* A line starting with '/'. The command word runs to the first space or
 * tab; its argument is the rest, without the spaces around it. */
static chat_result_t command(chat_room_t* room,
                             chat_client_t* client,
                             const char* line,
                             size_t len) {
  size_t end = trim_end(line, len);
  size_t word = 0;
  size_t arg;

  while (word < end && line[word] != ' ' && line[word] != '\t') {
    word++;
  }
  arg = word;
  while (arg < end && (line[arg] == ' ' || line[arg] == '\t')) {
    arg++;
  }

  if (word == 5 && memcmp(line, "/nick", 5) == 0) {
    cmd_nick(room, client, line + arg, end - arg);
  } else if (word == 4 && memcmp(line, "/who", 4) == 0) {
    if (arg < end) {
      send_text(client, err_who_usage);
    } else {
      cmd_who(room, client);
    }
  } else if (word == 5 && memcmp(line, "/quit", 5) == 0) {
    if (arg < end) {
      send_text(client, err_quit_usage);
    } else {
      return cmd_quit(room, client);
    }
  } else {
    send_text(client, err_unknown);
  }
  return CHAT_KEEP;
}


/* "NAME: TEXT\n" to everyone but the sender. */
static void say(chat_room_t* room,
                chat_client_t* client,
                const char* text,
                size_t len) {
  size_t name_len = strlen(client->name);
  char* msg = room->scratch;

  /* len <= max_line, so it fits: see chat_room_init. */
  memcpy(msg, client->name, name_len);
  memcpy(msg + name_len, ": ", 2);
  memcpy(msg + name_len + 2, text, len);
  msg[name_len + 2 + len] = '\n';
  broadcast(room, client, msg, name_len + 2 + len + 1);
}


static chat_result_t too_long_locked(chat_room_t* room, chat_client_t* client) {
  send_text(client, err_too_long);
  leave_locked(room, client);
  return CHAT_CLOSE;
}


/* ---- Entry points ---------------------------------------------------- */

void chat_join(chat_room_t* room, chat_client_t* client, uvs_conn_t* conn) {
  char msg[CHAT_NAME_MAX + 16];
  int n;

  client->conn = conn;
  /* "guest" and at most 20 digits: always within CHAT_NAME_MAX. */
  snprintf(client->name,
           sizeof(client->name),
           "guest%" PRIu64,
           uvs_conn_id(conn));

  room_lock(room);
  room_add(room, client);
  n = snprintf(msg, sizeof(msg), "* welcome %s\n", client->name);
  send_to(client, msg, (size_t) n);
  n = snprintf(msg, sizeof(msg), "* %s joined\n", client->name);
  broadcast(room, client, msg, (size_t) n);
  sweep(room);
  room_unlock(room);
}


chat_result_t chat_line(chat_room_t* room,
                        chat_client_t* client,
                        const char* line,
                        size_t len) {
  chat_result_t result = CHAT_KEEP;

  /* CRLF: the '\r' is not part of the line, nor of its length. */
  if (len > 0 && line[len - 1] == '\r') {
    len--;
  }

  room_lock(room);
  if (!client->in_room) {
    result = CHAT_CLOSE; /* cut off by another client's write */
  } else if (len > room->max_line) {
    result = too_long_locked(room, client);
  } else if (len == 0) {
    /* Empty lines are ignored: they would only send "NAME: " around. */
  } else if (line[0] == '/') {
    result = command(room, client, line, len);
  } else if (trim_end(line, len) == 4 && memcmp(line, "quit", 4) == 0) {
    result = cmd_quit(room, client);
  } else {
    say(room, client, line, len);
  }
  sweep(room);
  if (!client->in_room) {
    result = CHAT_CLOSE; /* a write to the sender itself failed */
  }
  room_unlock(room);
  return result;
}


chat_result_t chat_line_too_long(chat_room_t* room, chat_client_t* client) {
  room_lock(room);
  if (client->in_room) {
    too_long_locked(room, client);
  }
  sweep(room);
  room_unlock(room);
  return CHAT_CLOSE;
}


void chat_leave(chat_room_t* room, chat_client_t* client) {
  room_lock(room);
  leave_locked(room, client);
  sweep(room);
  room_unlock(room);
}
