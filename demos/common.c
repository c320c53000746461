/* SPDX-License-Identifier: MIT */
/*
 * The helpers uvs-echo (echo/main.c) and uvs-chat (chat/main.c) share,
 * compiled into both: the command line's usage errors, number and flag
 * parsing and address check; the exit status and the "cannot listen on"
 * line when uvs_server_new fails; the SIGUSR1 counters line; and the
 * SIGINT/SIGTERM/SIGUSR1 handles of the modes that run the loop. Every
 * message but the stats line starts with the program name given to
 * demo_set_program, so each demo prints exactly what it printed with its
 * own copy.
 */
#include "common.h"

#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The signals the demos handle, in the order of their uv_signal_t array. */
static const int signums[DEMO_SIGNAL_COUNT] = { SIGINT, SIGTERM, SIGUSR1 };

/* The name that starts every message: "uvs-echo" or "uvs-chat". */
static const char* program = "uvs-demo";


/* Set once, first thing in main, so that no call needs the name. */
void demo_set_program(const char* name) {
  program = name;
}


/* ---- Command line ---------------------------------------------------- */

/* Prints "PROGRAM: MESSAGE" as one line to stderr and exits 2. */
_Noreturn void demo_usage_error(const char* fmt, ...) {
  va_list ap;
  fprintf(stderr, "%s: ", program);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(2);
}


/* Parses a decimal integer in [min, max]: digits only, so no sign, no
 * spaces, no hex and no suffix (strtoul alone would take a sign, spaces
 * and "0x"). Returns 0, or -1 for anything else. */
int demo_parse_count(const char* text,
                     uint64_t min,
                     uint64_t max,
                     uint64_t* out) {
  uint64_t value = 0;
  const char* p;

  if (*text == '\0') {
    return -1;
  }
  for (p = text; *p != '\0'; p++) {
    uint64_t digit;
    if (*p < '0' || *p > '9') {
      return -1;
    }
    digit = (uint64_t) (*p - '0');
    if (digit > max || value > (max - digit) / 10) {
      return -1; /* past max, and never wrapping around */
    }
    value = value * 10 + digit;
  }
  if (value < min) {
    return -1;
  }
  *out = value;
  return 0;
}


/* Is `arg`, up to `len` bytes, the flag `name`? */
int demo_flag_is(const char* arg, size_t len, const char* name) {
  return strlen(name) == len && strncmp(arg, name, len) == 0;
}


/* Parses the address before anything is bound; exits 2 when it does not
 * parse. */
void demo_check_address(const char* text, uvs_address_t* addr) {
  int err = uvs_address_parse(text, addr);
  if (err != 0) {
    demo_usage_error("bad address '%s': %s", text, uvs_strerror(err));
  }
}


/* ---- Listening ------------------------------------------------------- */

/* Errors of uvs_server_new that mean "bad address or options" (exit 2)
 * rather than "could not bind" (exit 1). */
int demo_is_usage_error(int err) {
  switch (err) {
  case UV_EINVAL:
  case UV_ENOTSUP:
  case UV_ENAMETOOLONG:
  case UV_EAI_ADDRFAMILY:
  case UV_EAI_AGAIN:
  case UV_EAI_BADFLAGS:
  case UV_EAI_FAIL:
  case UV_EAI_FAMILY:
  case UV_EAI_NODATA:
  case UV_EAI_NONAME:
  case UV_EAI_SERVICE:
  case UV_EAI_SOCKTYPE:
    return 1;
  default:
    return 0;
  }
}


/* uvs_server_new failed for `text` with `err`: one line to stderr. uvs
 * never removes a file that is not a socket and reports it as
 * UV_EADDRINUSE, which would read as "somebody serves there"; say what it
 * is instead. */
void demo_report_listen_error(const char* text,
                              const uvs_address_t* addr,
                              int err) {
  const char* path = addr->u.un.sun_path;
  struct stat st;

  if (err == UV_EADDRINUSE &&
      (addr->transport == UVS_TRANSPORT_UNIX ||
       addr->transport == UVS_TRANSPORT_UNIXGRAM) &&
      addr->len > offsetof(struct sockaddr_un, sun_path) && path[0] != '\0' &&
      lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
    fprintf(stderr,
            "%s: cannot listen on %s: %s exists and is not a socket "
            "(left as it is)\n",
            program,
            text,
            path);
    return;
  }
  fprintf(stderr,
          "%s: cannot listen on %s: %s (%s)\n",
          program,
          text,
          uvs_strerror(err),
          uvs_err_name(err));
}


/* ---- Signals --------------------------------------------------------- */

/* SIGUSR1: every counter of uvs_stats_t, in its order, on one line. */
void demo_print_stats(const uvs_server_t* server) {
  uvs_stats_t s;

  if (uvs_server_stats(server, &s) != 0) {
    return;
  }
  fprintf(stderr,
          "stats: accepted=%" PRIu64 " active=%" PRIu64 " children=%" PRIu64
          " rejected_verify=%" PRIu64 " rejected_limit=%" PRIu64
          " bytes_in=%" PRIu64 " bytes_out=%" PRIu64 " handler_errors=%" PRIu64
          " conn_errors=%" PRIu64 " timeouts=%" PRIu64 " accept_errors=%" PRIu64
          " datagrams_oversize=%" PRIu64 " datagrams_dropped=%" PRIu64 "\n",
          s.accepted,
          s.active,
          s.children,
          s.rejected_verify,
          s.rejected_limit,
          s.bytes_in,
          s.bytes_out,
          s.handler_errors,
          s.conn_errors,
          s.timeouts,
          s.accept_errors,
          s.datagrams_oversize,
          s.datagrams_dropped);
}


/* The signals arrive as loop callbacks, where uvs may be called. It stops
 * at the first error: a handle not reached has no loop, which
 * demo_close_handle skips. */
int demo_start_signals(uv_loop_t* loop,
                       uv_signal_t* signals,
                       void* data,
                       uv_signal_cb on_signal) {
  size_t i;
  int err = 0;

  for (i = 0; i < DEMO_SIGNAL_COUNT && err == 0; i++) {
    signals[i].data = data;
    if ((err = uv_signal_init(loop, &signals[i])) == 0) {
      err = uv_signal_start(&signals[i], on_signal, signums[i]);
    }
  }
  return err;
}


/* Closes a handle that was initialized (uv_*_init sets its loop). */
void demo_close_handle(uv_handle_t* handle) {
  if (uv_handle_get_loop(handle) != NULL && !uv_is_closing(handle)) {
    uv_close(handle, NULL);
  }
}
