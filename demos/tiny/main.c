/* SPDX-License-Identifier: MIT */
/* The smallest complete uvs server: an event-mode TCP echo. The README
 * quotes this file. Usage: uvs-tiny [ADDR] (default tcp://127.0.0.1:9999). */
#include <stdio.h>
#include <uvs.h>

static void on_data(uvs_conn_t* conn, const char* data, size_t len) {
  uvs_conn_write(conn, data, len); /* copies; queued if the socket is full */
}

int main(int argc, char** argv) {
  uvs_handler_t handler = { .on_data = on_data }; /* EOF: flush, then close */
  uvs_server_t* server;
  char addr[UVS_ADDRSTRLEN];
  size_t size = sizeof(addr);
  int r = uvs_server_new(NULL,
                         &server,
                         argc > 1 ? argv[1] : "tcp://127.0.0.1:9999",
                         &handler,
                         NULL);
  if (r != 0) {
    fprintf(stderr, "uvs-tiny: %s\n", uvs_strerror(r));
    return 1;
  }
  uvs_server_address(server, addr, &size);
  printf("listening on %s\n", addr);
  fflush(stdout);
  uvs_server_serve_forever(server, 0); /* until uvs_server_shutdown */
  uvs_server_close(server, NULL);
  return 0;
}
