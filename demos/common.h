/* SPDX-License-Identifier: MIT */
/*
 * What the command-line demos uvs-echo and uvs-chat share: the usage
 * errors and number parsing of their command lines, the exit status and
 * message of a failed listen, the SIGUSR1 counters line and the
 * SIGINT/SIGTERM/SIGUSR1 handles. Their command lines and output are
 * contracts (test/demos), so these functions print exactly what the demos
 * printed when each had its own copy; the program name in the messages is
 * set once with demo_set_program.
 */
#ifndef DEMO_COMMON_H
#define DEMO_COMMON_H

#include <uvs.h>

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
# define DEMO_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
# define DEMO_PRINTF(f, a)
#endif

/* How many signals demo_start_signals handles: SIGINT, SIGTERM, SIGUSR1. */
#define DEMO_SIGNAL_COUNT 3

/* Sets the name that starts every message below ("uvs-echo"); call first. */
void demo_set_program(const char* name);

/* Prints "PROGRAM: MESSAGE" as one line to stderr and exits 2. */
_Noreturn void demo_usage_error(const char* fmt, ...) DEMO_PRINTF(1, 2);

/* Parses a decimal integer in [min, max]; returns 0, or -1 if it is not. */
int demo_parse_count(const char* text,
                     uint64_t min,
                     uint64_t max,
                     uint64_t* out);

/* Is `arg`, up to `len` bytes, the flag `name`? */
int demo_flag_is(const char* arg, size_t len, const char* name);

/* Parses the address into `addr`; exits 2 when it does not parse. */
void demo_check_address(const char* text, uvs_address_t* addr);

/* Nonzero when uvs_server_new's `err` means exit 2 rather than 1. */
int demo_is_usage_error(int err);

/* Prints the "cannot listen on ..." line for uvs_server_new's `err`. */
void demo_report_listen_error(const char* text,
                              const uvs_address_t* addr,
                              int err);

/* Prints the server's counters as one "stats: ..." line to stderr. */
void demo_print_stats(const uvs_server_t* server);

/* Starts `signals` (DEMO_SIGNAL_COUNT of them) with `data` and `on_signal`;
 * returns 0 or the first libuv error. */
int demo_start_signals(uv_loop_t* loop,
                       uv_signal_t* signals,
                       void* data,
                       uv_signal_cb on_signal);

/* Closes `handle` if it was initialized and is not closing already. */
void demo_close_handle(uv_handle_t* handle);

#endif /* DEMO_COMMON_H */
