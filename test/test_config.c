/* SPDX-License-Identifier: MIT */
/*
 * Config defaults (socketserver's, or a documented better one), version
 * and error text, and argument validation at uvs_server_new.
 */
#include "test.h"

#include "internal.h"


static void config_defaults(void) {
  uvs_config_t config;
  memset(&config, 0xff, sizeof(config));
  uvs_config_init(&config);
  ASSERT_EQ(config.mode, UVS_MODE_EVENT);
  ASSERT_EQ(config.bind_and_activate, 1);
  ASSERT_EQ(config.request_queue_size, SOMAXCONN);
  ASSERT_EQ(config.allow_reuse_address, 1);
  ASSERT_EQ(config.allow_reuse_port, 0);
  ASSERT_EQ(config.ipv6_only, 0);
  ASSERT_EQ(config.timeout_ms, -1);
  ASSERT_EQ(config.accept_batch, 16);
  ASSERT_EQ(config.close_linger_ms, 2000);
  ASSERT_EQ(config.close_timeout_ms, 30000);
  ASSERT_EQ(config.read_buffer_size, 65536);
  ASSERT_TRUE(config.hooks.verify_request == NULL);
  ASSERT_TRUE(config.hooks.handle_error == NULL);
  ASSERT_TRUE(config.hooks.handle_timeout == NULL);
  ASSERT_TRUE(config.hooks.service_actions == NULL);
  ASSERT_TRUE(config.hooks.shutdown_request == NULL);
  ASSERT_EQ(config.max_threads, 256);
  ASSERT_EQ(config.thread_idle_ms, 10000);
  ASSERT_EQ(config.thread_stack_size, 0);
  ASSERT_EQ(config.block_on_close, 1);
  ASSERT_EQ(config.daemon_threads, 0);
  ASSERT_EQ(config.request_timeout_ms, -1);
  ASSERT_EQ(config.wbufsize, 0);
  ASSERT_EQ(config.disable_nagle_algorithm, 1);
  ASSERT_EQ(config.output_high_water, 262144);
  ASSERT_EQ(config.max_write_queue, 0);
  ASSERT_EQ(config.max_packet_size, 65536);
  ASSERT_EQ(config.unlink_on_close, 1);
  ASSERT_EQ(config.max_children, 40);
  ASSERT_EQ(config.children_wait_ms, 300000);
}


static void version(void) {
  char want[32];
  ASSERT_EQ(uvs_version(), UVS_VERSION_HEX);
  snprintf(want,
           sizeof(want),
           "%d.%d.%d",
           UVS_VERSION_MAJOR,
           UVS_VERSION_MINOR,
           UVS_VERSION_PATCH);
  ASSERT_STR_EQ(uvs_version_string(), want);
}


static void error_text(void) {
  ASSERT_STR_EQ(uvs_err_name(UV_EINVAL), "EINVAL");
  ASSERT_STR_EQ(uvs_err_name(UV_EADDRINUSE), "EADDRINUSE");
  ASSERT_STR_EQ(uvs_strerror(UV_EINVAL), uv_strerror(UV_EINVAL));
  ASSERT_STR_EQ(uvs_strerror(0), "success");
  ASSERT_STR_EQ(uvs_err_name(0), "OK");
  /* Unknown codes answer without allocating (libuv's leak). */
  ASSERT_STR_EQ(uvs_strerror(-123456), "unknown error");
  ASSERT_STR_EQ(uvs_err_name(-123456), "UNKNOWN");
  ASSERT_STR_EQ(uvs_strerror(12), "unknown error");
  /* uvs's own codes. */
  ASSERT_STR_EQ(uvs_err_name(UVS_ESTOP), "ESTOP");
  ASSERT_STR_EQ(uvs_strerror(UVS_ESTOP),
                "the handler asked the server to stop");
  ASSERT_TRUE((int) UVS_ESTOP < (int) UV_ERRNO_MAX);
  /* A forked child's end, in the parent: its exit status or signal. */
  ASSERT_TRUE(UVS_IS_ECHILD_EXIT(UVS_ECHILD_EXIT(3)));
  ASSERT_TRUE(UVS_IS_ECHILD_EXIT(UVS_ECHILD_EXIT(255)));
  ASSERT_FALSE(UVS_IS_ECHILD_EXIT(UVS_ECHILD_SIGNAL(11)));
  ASSERT_TRUE(UVS_IS_ECHILD_SIGNAL(UVS_ECHILD_SIGNAL(11)));
  ASSERT_FALSE(UVS_IS_ECHILD_SIGNAL(UVS_ESTOP));
  ASSERT_EQ(UVS_ECHILD_EXIT_STATUS(UVS_ECHILD_EXIT(72)), 72);
  ASSERT_EQ(UVS_ECHILD_SIGNAL_NUM(UVS_ECHILD_SIGNAL(6)), 6);
  ASSERT_TRUE(UVS_ECHILD_SIGNAL(127) >= (int) UVS_ERRNO_MIN);
  ASSERT_TRUE(UVS_ECHILD_EXIT(1) < (int) UVS_ESTOP);
  ASSERT_STR_EQ(uvs_err_name(UVS_ECHILD_EXIT(72)), "ECHILDEXIT");
  ASSERT_STR_EQ(uvs_err_name(UVS_ECHILD_SIGNAL(9)), "ECHILDSIGNAL");
  ASSERT_STR_EQ(uvs_strerror(UVS_ECHILD_SIGNAL(11)),
                "a forked child was killed by a signal");
  ASSERT_STR_EQ(uvs_strerror(UVS_ECHILD_EXIT(3)),
                "a forked child exited with an error status");
}


static void new_rejects_bad_arguments(void) {
  uvs_handler_t handler;
  uvs_config_t config;
  uvs_server_t* server = (uvs_server_t*) &handler;

  memset(&handler, 0, sizeof(handler));
  ASSERT_ERR(uvs_server_new(NULL, NULL, "tcp://127.0.0.1:0", &handler, NULL),
             UV_EINVAL);
  ASSERT_ERR(uvs_server_new(NULL, &server, NULL, &handler, NULL), UV_EINVAL);
  ASSERT_NULL(server);
  ASSERT_ERR(uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", NULL, NULL),
             UV_EINVAL);
  ASSERT_ERR(uvs_server_new(NULL, &server, "tcp://127.0.0.1", &handler, NULL),
             UV_EINVAL);
  ASSERT_ERR(uvs_server_new(NULL, &server, "bogus", &handler, NULL), UV_EINVAL);
  ASSERT_NULL(server);

  handler.state_size = SIZE_MAX - 8; /* would wrap with the connection */
  ASSERT_ERR(uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, 0),
             UV_EINVAL);
  handler.state_size = 0;

  uvs_config_init(&config);
  config.accept_batch = 0;
  ASSERT_ERR(
      uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, &config),
      UV_EINVAL);
  uvs_config_init(&config);
  config.request_queue_size = -1;
  ASSERT_ERR(
      uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, &config),
      UV_EINVAL);
  uvs_config_init(&config);
  config.read_buffer_size = 0;
  ASSERT_ERR(
      uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, &config),
      UV_EINVAL);
  uvs_config_init(&config);
  config.timeout_ms = -2;
  ASSERT_ERR(
      uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, &config),
      UV_EINVAL);
  uvs_config_init(&config);
  config.max_children = 0;
  config.mode = UVS_MODE_FORKING;
  ASSERT_ERR(
      uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, &config),
      UV_EINVAL);
  uvs_config_init(&config);
  config.max_packet_size = 0;
  ASSERT_ERR(
      uvs_server_new(NULL, &server, "udp://127.0.0.1:0", &handler, &config),
      UV_EINVAL);
  uvs_config_init(&config);
  config.mode = (uvs_mode_t) 42;
  ASSERT_ERR(
      uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, &config),
      UV_EINVAL);
  ASSERT_NULL(server);
}


/* Every mode on every transport makes a server, which closes without
 * leaving a socket file behind. */
static void new_serves_every_mode(void) {
  static const uvs_mode_t modes[] = { UVS_MODE_EVENT,
                                      UVS_MODE_SYNC,
                                      UVS_MODE_THREADING,
                                      UVS_MODE_FORKING };
  char dir[] = "/tmp/uvs-config-XXXXXX";
  char addrs[4][96];
  uvs_handler_t handler;
  uvs_config_t config;
  uvs_server_t* server;
  size_t i;

  ASSERT_NOT_NULL(mkdtemp(dir));
  snprintf(addrs[0], sizeof(addrs[0]), "tcp://127.0.0.1:0");
  snprintf(addrs[1], sizeof(addrs[1]), "udp://127.0.0.1:0");
  snprintf(addrs[2], sizeof(addrs[2]), "unix:%s/s", dir);
  snprintf(addrs[3], sizeof(addrs[3]), "unixgram:%s/g", dir);
  memset(&handler, 0, sizeof(handler));
  for (i = 0; i < ARRAY_SIZE(addrs); i++) {
    size_t m;
    for (m = 0; m < ARRAY_SIZE(modes); m++) {
      uvs_config_init(&config);
      config.mode = modes[m];
      ASSERT_OK(uvs_server_new(NULL, &server, addrs[i], &handler, &config));
      ASSERT_OK(uvs_server_close(server, NULL));
    }
  }
  ASSERT_EQ(rmdir(dir), 0); /* empty: no socket file was left */
}


/* Every allocation uvs_server_new makes can fail, on every transport: each
 * failure returns UV_ENOMEM and leaves nothing behind (ASan checks the
 * leaks, the harness the descriptors, rmdir the socket files). */
static void new_survives_allocation_failures(void) {
  char dir[] = "/tmp/uvs-config-XXXXXX";
  char addrs[4][96];
  uvs_handler_t handler;
  uvs_server_t* server;
  size_t i;
  long n;
  int r;

  ASSERT_NOT_NULL(mkdtemp(dir));
  snprintf(addrs[0], sizeof(addrs[0]), "tcp://127.0.0.1:0");
  snprintf(addrs[1], sizeof(addrs[1]), "udp://127.0.0.1:0");
  snprintf(addrs[2], sizeof(addrs[2]), "unix:%s/s", dir);
  snprintf(addrs[3], sizeof(addrs[3]), "unixgram:%s/g", dir);
  memset(&handler, 0, sizeof(handler));
  for (i = 0; i < ARRAY_SIZE(addrs); i++) {
    for (n = 0; n < 64; n++) {
      uvs__alloc_fail_after(n);
      r = uvs_server_new(NULL, &server, addrs[i], &handler, NULL);
      uvs__alloc_fail_after(-1);
      if (r == 0) {
        ASSERT_OK(uvs_server_close(server, NULL));
        break;
      }
      ASSERT_ERR(r, UV_ENOMEM);
      ASSERT_NULL(server);
    }
    ASSERT_LT(n, 64);
    ASSERT_GT(n, 0);
  }
  ASSERT_EQ(rmdir(dir), 0);
}


/* SIGPIPE's default action would kill the process on a write to a reset
 * connection: a server turns it off (uvs leaves an application's own
 * handler alone). */
static void sigpipe_ignored(void) {
  uvs_handler_t handler;
  uvs_server_t* server;
  struct sigaction sa;
  int sv[2];

  memset(&handler, 0, sizeof(handler));
  ASSERT_OK(uvs_server_new(NULL, &server, "tcp://127.0.0.1:0", &handler, 0));
  ASSERT_EQ(sigaction(SIGPIPE, NULL, &sa), 0);
  ASSERT_TRUE(sa.sa_handler == SIG_IGN);
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  close(sv[1]);
  ASSERT_EQ(write(sv[0], "x", 1), -1);
  ASSERT_EQ(errno, EPIPE);
  close(sv[0]);
  ASSERT_OK(uvs_server_close(server, NULL));
}


static const test_case_t cases[] = {
  { "sigpipe_ignored", sigpipe_ignored },
  { "config_defaults", config_defaults },
  { "version", version },
  { "error_text", error_text },
  { "new_rejects_bad_arguments", new_rejects_bad_arguments },
  { "new_serves_every_mode", new_serves_every_mode },
  { "new_survives_allocation_failures", new_survives_allocation_failures },
};

TEST_MAIN(cases)
