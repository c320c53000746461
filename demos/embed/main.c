/* SPDX-License-Identifier: MIT */
/*
 * uvs-embed: uvs inside a libuv program that owns its loop. One uv_loop_t
 * runs a timer of the program's own, a uvs echo server and a libuv client
 * of that server. The client sends a line, checks the echo byte for byte,
 * waits for a few timer ticks (the server did not take the loop over), then
 * everything is closed and uv_run returns by itself: uv_loop_close must
 * find nothing left open. It doubles as the test `embed-demo`.
 */
#include <uvs.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char message[] = "hello, embed\n";

static uv_loop_t loop;
static uv_timer_t ticker;   /* the program's own work: a 10 ms tick */
static uv_timer_t watchdog; /* fails the run if it hangs */
static uv_tcp_t client;
static uv_connect_t connect_req;
static uv_write_t write_req;
static uvs_server_t* server;

static char reply[sizeof(message)];
static size_t reply_len;
static int ticks;
static int stopping;
static int server_closed;
static const char* failure; /* NULL while all goes well */

static void on_server_closed(uvs_server_t* closed) {
  (void) closed;
  server_closed = 1; /* `closed` is freed when this returns */
}

/* Closes everything; uv_run returns once the closes complete. */
static void stop(const char* why) {
  if (stopping) {
    return;
  }
  stopping = 1;
  failure = why;
  /* We are inside a callback of the running loop, so the asynchronous
   * form: the server closes its listener and connections, then calls
   * on_server_closed. */
  uvs_server_close(server, on_server_closed);
  uv_close((uv_handle_t*) &ticker, NULL);
  uv_close((uv_handle_t*) &watchdog, NULL);
  uv_close((uv_handle_t*) &client, NULL);
}

/* The server's handler: echo in event mode, on the loop thread. */
static void on_data(uvs_conn_t* conn, const char* data, size_t len) {
  if (uvs_conn_write(conn, data, len) != 0) { /* it copies `data` */
    stop("uvs_conn_write failed");
  }
}

/* Done when the echo is complete and the timer has kept ticking. */
static void check_done(void) {
  if (reply_len == strlen(message) && ticks >= 3) {
    stop(memcmp(reply, message, reply_len) == 0 ? NULL : "echo differs");
  }
}

static void on_tick(uv_timer_t* timer) {
  (void) timer;
  ticks++;
  check_done();
}

static void on_watchdog(uv_timer_t* timer) {
  (void) timer;
  fprintf(stderr, "embed: timed out after 5 s (%d ticks)\n", ticks);
  exit(1);
}

static void on_alloc(uv_handle_t* handle, size_t hint, uv_buf_t* buf) {
  (void) handle;
  (void) hint;
  buf->base = reply + reply_len;
  buf->len = sizeof(reply) - reply_len; /* one spare byte catches excess */
}

static void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  (void) stream;
  (void) buf;
  if (nread < 0) {
    stop("connection closed before the echo arrived");
    return;
  }
  reply_len += (size_t) nread;
  if (reply_len > strlen(message)) {
    stop("echo longer than the message");
    return;
  }
  check_done();
}

static void on_write(uv_write_t* req, int status) {
  (void) req;
  if (status != 0) {
    stop("write failed");
  }
}

static void on_connect(uv_connect_t* req, int status) {
  uv_buf_t buf = uv_buf_init((char*) message, (unsigned) strlen(message));

  (void) req;
  if (status != 0) {
    stop("connect failed");
    return;
  }
  if (uv_write(&write_req, (uv_stream_t*) &client, &buf, 1, on_write) != 0 ||
      uv_read_start((uv_stream_t*) &client, on_alloc, on_read) != 0) {
    stop("write or read_start failed");
  }
}

int main(void) {
  uvs_handler_t handler = { .on_data = on_data }; /* the rest: defaults */
  uvs_config_t config;
  uvs_address_t addr;
  char text[UVS_ADDRSTRLEN];
  size_t size = sizeof(text);
  int err;

  /* The program's loop and its own timers. */
  uv_loop_init(&loop);
  uv_timer_init(&loop, &ticker);
  uv_timer_start(&ticker, on_tick, 10, 10);
  uv_timer_init(&loop, &watchdog);
  uv_timer_start(&watchdog, on_watchdog, 5000, 0);

  /* A uvs echo server on the same loop: port 0 picks a free port, and
   * uvs_server_start accepts without running the loop. */
  uvs_config_init(&config);
  config.mode = UVS_MODE_EVENT;
  err = uvs_server_new(&loop, &server, "tcp://127.0.0.1:0", &handler, &config);
  if (err == 0) {
    err = uvs_server_start(server);
  }
  /* The real address, as a URI, parsed back into a sockaddr. */
  if (err == 0) {
    err = uvs_server_address(server, text, &size);
  }
  if (err == 0) {
    err = uvs_address_parse(text, &addr);
  }
  if (err != 0) {
    fprintf(stderr, "embed: server: %s\n", uvs_strerror(err));
    return 1;
  }

  /* A plain libuv client of that server, on the same loop. */
  uv_tcp_init(&loop, &client);
  err = uv_tcp_connect(&connect_req, &client, &addr.u.sa, on_connect);
  if (err != 0) {
    fprintf(stderr, "embed: connect: %s\n", uv_strerror(err));
    return 1;
  }

  /* Runs until stop() has closed everything: nothing is left to run. */
  uv_run(&loop, UV_RUN_DEFAULT);
  if (failure == NULL && !server_closed) {
    failure = "the server's close callback did not run";
  }
  if (failure == NULL && uv_loop_close(&loop) != 0) {
    failure = "uv_loop_close: handles left open";
  }
  if (failure != NULL) {
    fprintf(stderr, "embed: %s\n", failure);
    return 1;
  }
  printf("embed: ok (%d ticks)\n", ticks);
  return 0;
}
