/* SPDX-License-Identifier: MIT */
/*
 * `--listen ADDR` for the baseline echo servers (listen_args.h): one
 * parser, so the two baselines accept and refuse exactly the same command
 * lines, as run.py and test_bench.py expect.
 */
#include "listen_args.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static _Noreturn void usage_error(const char* prog,
                                  const char* what,
                                  const char* arg) {
  fprintf(stderr, "%s: %s%s (see --help)\n", prog, what, arg);
  exit(2);
}


_Noreturn void bench_bad_address(const char* prog,
                                 const char* text,
                                 const char* why) {
  fprintf(stderr, "%s: bad address '%s': %s\n", prog, text, why);
  exit(2);
}


void bench_parse_listen(int argc,
                        char** argv,
                        const char* prog,
                        const char* usage,
                        uvs_address_t* addr,
                        const char** text) {
  const char* given = NULL;
  int err;
  int i;

  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0) {
      fputs(usage, stdout);
      exit(0);
    } else if (strncmp(argv[i], "--listen=", 9) == 0) {
      given = argv[i] + 9;
    } else if (strcmp(argv[i], "--listen") == 0) {
      if (i + 1 >= argc)
        usage_error(prog, "--listen needs a value", "");
      given = argv[++i];
    } else {
      usage_error(prog, "unknown argument: ", argv[i]);
    }
  }
  if (given == NULL)
    usage_error(prog, "--listen ADDR is required", "");
  err = uvs_address_parse(given, addr);
  if (err != 0)
    bench_bad_address(prog, given, uv_strerror(err));
  if (addr->transport == UVS_TRANSPORT_UNIXGRAM)
    bench_bad_address(prog, given, "want tcp://, unix: or udp://");
  *text = given;
}
