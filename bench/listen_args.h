/* SPDX-License-Identifier: MIT */
/*
 * The baselines' one command-line argument, `--listen ADDR`, parsed the
 * same way in bench-raw-echo and bench-thread-echo.
 */
#ifndef BENCH_LISTEN_ARGS_H
#define BENCH_LISTEN_ARGS_H

#include <uvs.h>

/* Parses `--listen ADDR` (or `--listen=ADDR`) and `--help` into `*addr`,
 * keeping the text as given in `*text`. Prints `usage` and exits 0 for
 * --help; exits 2 with one line on stderr, naming `prog`, for anything
 * else: an unknown or missing argument, an address that does not parse, a
 * unixgram: address. */
void bench_parse_listen(int argc,
                        char** argv,
                        const char* prog,
                        const char* usage,
                        uvs_address_t* addr,
                        const char** text);

/* Prints "PROG: bad address 'TEXT': WHY" on stderr and exits 2. */
_Noreturn void bench_bad_address(const char* prog,
                                 const char* text,
                                 const char* why);

#endif
