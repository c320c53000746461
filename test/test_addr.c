/* SPDX-License-Identifier: MIT */
/*
 * lib/addr.c: address URIs parse, format and read back; every malformed
 * form is UV_EINVAL, over-long Unix paths UV_ENAMETOOLONG, buffers too
 * small UV_ENOBUFS with the size needed. No sockets are opened; the only
 * lookups are "localhost" (/etc/hosts) and one ".invalid" name, which
 * never resolves (RFC 6761).
 */
#include "internal.h"
#include "test.h"

#include <net/if.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>

/* The sun_path bytes a parse can fill: one is kept for the NUL (paths) or
 * the leading NUL (abstract names). */
#define PATH_MAX_LEN (sizeof(((struct sockaddr_un*) 0)->sun_path) - 1)


/* strcpy without the analyzer's insecureAPI finding: every source here is a
 * literal or a seed that fits. */
static void copy_str(char* dst, const char* src) {
  memcpy(dst, src, strlen(src) + 1);
}


/* Parses `text`, formats the result and checks it reads `want`; then
 * parses `want` and checks the same sockaddr comes back. */
static void check_round_trip(const char* text,
                             const char* want,
                             uvs_address_t* out) {
  uvs_address_t a;
  uvs_address_t b;
  char buf[UVS_ADDRSTRLEN];
  size_t size;

  ASSERT_OK(uvs_address_parse(text, &a));
  size = sizeof(buf);
  ASSERT_OK(uvs_address_format(&a, buf, &size));
  ASSERT_STR_EQ(buf, want);
  ASSERT_EQ(size, strlen(want));

  ASSERT_OK(uvs_address_parse(buf, &b));
  ASSERT_EQ(a.transport, b.transport);
  ASSERT_EQ(a.len, b.len);
  ASSERT_MEM_EQ(&a.u, &b.u, a.len);
  if (out != NULL)
    *out = a;
}


static void test_ipv4(void) {
  uvs_address_t a;
  check_round_trip("tcp://127.0.0.1:8080", "tcp://127.0.0.1:8080", &a);
  ASSERT_EQ(a.transport, UVS_TRANSPORT_TCP);
  ASSERT_EQ(a.len, sizeof(struct sockaddr_in));
  ASSERT_EQ(a.u.in.sin_family, AF_INET);
  ASSERT_EQ(ntohs(a.u.in.sin_port), 8080);
  ASSERT_EQ(ntohl(a.u.in.sin_addr.s_addr), 0x7f000001);
  check_round_trip("tcp://0.0.0.0:1", "tcp://0.0.0.0:1", NULL);
  check_round_trip("tcp://255.255.255.255:443",
                   "tcp://255.255.255.255:443",
                   NULL);
  /* Schemes are case-insensitive; the formatted one is lower case. */
  check_round_trip("TCP://10.0.0.1:80", "tcp://10.0.0.1:80", NULL);
}


static void test_port_bounds(void) {
  uvs_address_t a;
  check_round_trip("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", &a);
  ASSERT_EQ(a.u.in.sin_port, 0);
  check_round_trip("tcp://127.0.0.1:65535", "tcp://127.0.0.1:65535", &a);
  ASSERT_EQ(ntohs(a.u.in.sin_port), 65535);
  /* Leading zeros, up to five digits. */
  check_round_trip("tcp://127.0.0.1:00080", "tcp://127.0.0.1:80", NULL);
  check_round_trip("tcp://127.0.0.1:00000", "tcp://127.0.0.1:0", NULL);
  ASSERT_ERR(uvs_address_parse("tcp://127.0.0.1:65536", &a), UV_EINVAL);
  ASSERT_ERR(uvs_address_parse("tcp://127.0.0.1:000080", &a), UV_EINVAL);
  ASSERT_ERR(uvs_address_parse("tcp://[::1]:65536", &a), UV_EINVAL);
}


static void test_ipv6(void) {
  uvs_address_t a;
  struct in6_addr loopback = IN6ADDR_LOOPBACK_INIT;
  struct in6_addr any = IN6ADDR_ANY_INIT;

  check_round_trip("tcp://[::1]:80", "tcp://[::1]:80", &a);
  ASSERT_EQ(a.len, sizeof(struct sockaddr_in6));
  ASSERT_EQ(a.u.in6.sin6_family, AF_INET6);
  ASSERT_EQ(ntohs(a.u.in6.sin6_port), 80);
  ASSERT_EQ(a.u.in6.sin6_scope_id, 0);
  ASSERT_MEM_EQ(&a.u.in6.sin6_addr, &loopback, sizeof(loopback));

  check_round_trip("tcp://[::]:0", "tcp://[::]:0", &a);
  ASSERT_MEM_EQ(&a.u.in6.sin6_addr, &any, sizeof(any));

  check_round_trip("udp://[2001:DB8::0:1]:53", "udp://[2001:db8::1]:53", NULL);
  /* What accept gives an IPv4 client on a dual-stack listener. */
  check_round_trip("tcp://[::ffff:127.0.0.1]:9",
                   "tcp://[::ffff:127.0.0.1]:9",
                   NULL);
}


/* A numeric scope is taken as an interface index; a name goes through
 * if_nametoindex; format writes the name when there is one. */
static void test_ipv6_scope(void) {
  uvs_address_t a;
  char text[UVS_ADDRSTRLEN];
  char want[UVS_ADDRSTRLEN];
  char name[IF_NAMESIZE];
  unsigned lo;

  check_round_trip("tcp://[fe80::1%4000000000]:80",
                   "tcp://[fe80::1%4000000000]:80",
                   &a);
  ASSERT_EQ(a.u.in6.sin6_scope_id, 4000000000u);
  /* %0 is "no scope". */
  check_round_trip("tcp://[fe80::1%0]:80", "tcp://[fe80::1]:80", NULL);

  ASSERT_ERR(uvs_address_parse("tcp://[fe80::1%4294967296]:80", &a), UV_EINVAL);
  ASSERT_ERR(uvs_address_parse("tcp://[fe80::1%no-such-if0]:80", &a),
             UV_EAI_NONAME);

  lo = if_nametoindex("lo");
  if (lo == 0) {
    printf("# no interface lo: named scope not checked\n");
    return;
  }
  check_round_trip("tcp://[fe80::1%lo]:80", "tcp://[fe80::1%lo]:80", &a);
  ASSERT_EQ(a.u.in6.sin6_scope_id, lo);
  /* Its index reads back as its name. */
  ASSERT_NOT_NULL(if_indextoname(lo, name));
  snprintf(text, sizeof(text), "tcp://[fe80::1%%%u]:80", lo);
  snprintf(want, sizeof(want), "tcp://[fe80::1%%%s]:80", name);
  check_round_trip(text, want, NULL);
}


static void test_localhost(void) {
  uvs_address_t a;
  check_round_trip("tcp://localhost:80", "tcp://127.0.0.1:80", &a);
  ASSERT_EQ(a.u.in.sin_family, AF_INET);
  ASSERT_EQ(ntohl(a.u.in.sin_addr.s_addr), 0x7f000001);
  check_round_trip("udp://localhost:53", "udp://127.0.0.1:53", &a);
  ASSERT_EQ(a.transport, UVS_TRANSPORT_UDP);
}


static void test_unresolvable(void) {
  uvs_address_t a;
  int r;
  memset(&a, 0xa5, sizeof(a));
  r = uvs_address_parse("tcp://does-not-exist.invalid:80", &a);
  printf("# does-not-exist.invalid: %s\n", uvs_err_name(r));
  ASSERT_LT(r, 0);
  ASSERT_NE(r, UV_EINVAL);
  /* A failed parse leaves the address alone. */
  ASSERT_EQ(a.len, 0xa5a5a5a5u);
}


static void test_udp(void) {
  uvs_address_t a;
  check_round_trip("udp://127.0.0.1:53", "udp://127.0.0.1:53", &a);
  ASSERT_EQ(a.transport, UVS_TRANSPORT_UDP);
  ASSERT_EQ(a.u.in.sin_family, AF_INET);
  ASSERT_EQ(ntohs(a.u.in.sin_port), 53);
  check_round_trip("udp://[::1]:0", "udp://[::1]:0", &a);
  ASSERT_EQ(a.transport, UVS_TRANSPORT_UDP);
}


static void test_unix_path(void) {
  uvs_address_t a;
  check_round_trip("unix:/tmp/uvs.sock", "unix:/tmp/uvs.sock", &a);
  ASSERT_EQ(a.transport, UVS_TRANSPORT_UNIX);
  ASSERT_EQ(a.u.un.sun_family, AF_UNIX);
  ASSERT_STR_EQ(a.u.un.sun_path, "/tmp/uvs.sock");
  ASSERT_EQ(
      a.len,
      offsetof(struct sockaddr_un, sun_path) + strlen("/tmp/uvs.sock") + 1);

  check_round_trip("unixgram:rel/d.sock", "unixgram:rel/d.sock", &a);
  ASSERT_EQ(a.transport, UVS_TRANSPORT_UNIXGRAM);
  /* Every byte after the colon is the path, spaces and colons included. */
  check_round_trip("unix: a:b ", "unix: a:b ", &a);
  ASSERT_STR_EQ(a.u.un.sun_path, " a:b ");
  /* A file whose name starts with '@'. */
  check_round_trip("unix:./@x", "unix:./@x", NULL);
}


static void test_unix_abstract(void) {
  uvs_address_t a;
  check_round_trip("unix:@uvs-test", "unix:@uvs-test", &a);
  ASSERT_EQ(a.u.un.sun_family, AF_UNIX);
  ASSERT_EQ(a.u.un.sun_path[0], '\0');
  ASSERT_MEM_EQ(a.u.un.sun_path + 1, "uvs-test", 8);
  ASSERT_EQ(a.len, offsetof(struct sockaddr_un, sun_path) + 1 + 8);
  check_round_trip("unixgram:@d", "unixgram:@d", &a);
  ASSERT_EQ(a.transport, UVS_TRANSPORT_UNIXGRAM);
  ASSERT_EQ(a.len, offsetof(struct sockaddr_un, sun_path) + 2);
}


static void test_unix_too_long(void) {
  char text[4096];
  char buf[UVS_ADDRSTRLEN];
  size_t size;
  uvs_address_t a;

  /* The longest path that fits, NUL included, and the longest formatted
   * text, which UVS_ADDRSTRLEN must hold. */
  copy_str(text, "unixgram:/");
  memset(text + 10, 'p', PATH_MAX_LEN - 1);
  text[9 + PATH_MAX_LEN] = '\0';
  check_round_trip(text, text, &a);
  ASSERT_EQ(a.len, sizeof(struct sockaddr_un));
  size = sizeof(buf);
  ASSERT_OK(uvs_address_format(&a, buf, &size));
  ASSERT_LT(size, UVS_ADDRSTRLEN);

  /* One byte more. */
  copy_str(text, "unix:/");
  memset(text + 6, 'p', PATH_MAX_LEN);
  text[5 + PATH_MAX_LEN + 1] = '\0';
  ASSERT_ERR(uvs_address_parse(text, &a), UV_ENAMETOOLONG);

  /* Far longer: refused the same way, not read to the end. */
  memset(text + 6, 'p', sizeof(text) - 7);
  text[sizeof(text) - 1] = '\0';
  ASSERT_ERR(uvs_address_parse(text, &a), UV_ENAMETOOLONG);

  /* Abstract: the longest name, then one byte more. */
  copy_str(text, "unix:@");
  memset(text + 6, 'n', PATH_MAX_LEN);
  text[6 + PATH_MAX_LEN] = '\0';
  check_round_trip(text, text, &a);
  ASSERT_EQ(a.len, sizeof(struct sockaddr_un));
  text[6 + PATH_MAX_LEN] = 'n';
  text[7 + PATH_MAX_LEN] = '\0';
  ASSERT_ERR(uvs_address_parse(text, &a), UV_ENAMETOOLONG);
}


static void test_malformed(void) {
  static char long_port[64];
  static char long_host[300];
  static char long_label[128];
  const char* bad[] = {
    "",
    "tcp",
    "tcp:",
    "tcp:/",
    "tcp://",
    "tcp://127.0.0.1",
    "tcp://127.0.0.1:",
    "tcp://127.0.0.1:-1",
    "tcp://127.0.0.1:+80",
    "tcp://127.0.0.1:80x",
    "tcp://127.0.0.1: 80",
    "tcp://127.0.0.1:80 ",
    "tcp://127.0.0.1 :80",
    " tcp://127.0.0.1:80",
    "tcp://127.0.0.1:0x50",
    "tcp://127.0.0.1:80/",
    "tcp://127.0.0.1:80:80",
    "tcp://127.0.0.1:99999",
    "tcp://127.0.0.1:999999",
    "tcp://127.0.0.1:6553500",
    long_port,
    "tcp://[::1:80",
    "tcp://[::1]",
    "tcp://[::1]:",
    "tcp://[::1]80",
    "tcp://[::1]:80]",
    "tcp://[[::1]]:80",
    "tcp://::1:80",
    "tcp://::1",
    "tcp://[127.0.0.1]:80",
    "tcp://[localhost]:80",
    "tcp://[]:80",
    "tcp://[%1]:80",
    "tcp://[::1%]:80",
    "tcp://[::1%1234567890123456]:80",
    "tcp://[::1]%1:80",
    "tcp://127.0.0.1%1:80",
    "tcp://:80",
    "udp://:80",
    "tcp://:",
    "http://x:1",
    "TCP//a:1",
    "tcp:127.0.0.1:80",
    "tcp:/127.0.0.1:80",
    "tcp//127.0.0.1:80",
    "tcpx://127.0.0.1:80",
    "unix",
    "unix:",
    "unixgram:",
    "unix:@",
    "unixgram:@",
    "udp",
    /* Not dotted quads: no inet_aton forms, no lookup either. */
    "tcp://127.1:80",
    "tcp://0x7f000001:80",
    "tcp://2130706433:80",
    "tcp://256.0.0.1:80",
    "tcp://1.2.3.4.5:80",
    "tcp://01.2.3.4:80",
    "tcp://1.2.3.4.:80",
    /* Not host names. */
    "tcp://a b:80",
    "tcp://a..b:80",
    "tcp://.a:80",
    "tcp://..:80",
    "tcp://a/b:80",
    "tcp://user@host:80",
    "tcp://h\xc3\xa9:80",
    "tcp://a\tb:80",
    long_host,
    long_label,
  };
  uvs_address_t a;
  size_t i;
  int r;

  copy_str(long_port, "tcp://127.0.0.1:");
  memset(long_port + 16, '9', sizeof(long_port) - 17);
  copy_str(long_host, "tcp://");
  memset(long_host + 6, 'a', sizeof(long_host) - 6);
  for (i = 6 + 60; i < sizeof(long_host) - 10; i += 61)
    long_host[i] = '.';
  copy_str(long_host + sizeof(long_host) - 4, ":80");
  copy_str(long_label, "tcp://");
  memset(long_label + 6, 'a', 64);
  copy_str(long_label + 70, ".example:80");

  ASSERT_GE(ARRAY_SIZE(bad), 30);
  for (i = 0; i < ARRAY_SIZE(bad); i++) {
    memset(&a, 0xa5, sizeof(a));
    r = uvs_address_parse(bad[i], &a);
    if (r != UV_EINVAL)
      TEST__FAIL("\"%s\": got %d (%s), want UV_EINVAL",
                 bad[i],
                 r,
                 uvs_err_name(r));
    ASSERT_EQ(a.len, 0xa5a5a5a5u);
  }
}


static void test_null_args(void) {
  uvs_address_t a;
  char buf[UVS_ADDRSTRLEN];
  size_t size;
  struct sockaddr_in in;

  ASSERT_ERR(uvs_address_parse(NULL, &a), UV_EINVAL);
  ASSERT_ERR(uvs_address_parse("tcp://127.0.0.1:80", NULL), UV_EINVAL);
  ASSERT_ERR(uvs_address_parse(NULL, NULL), UV_EINVAL);

  ASSERT_OK(uvs_address_parse("tcp://127.0.0.1:80", &a));
  size = sizeof(buf);
  ASSERT_ERR(uvs_address_format(NULL, buf, &size), UV_EINVAL);
  ASSERT_ERR(uvs_address_format(&a, NULL, &size), UV_EINVAL);
  ASSERT_ERR(uvs_address_format(&a, buf, NULL), UV_EINVAL);

  memset(&in, 0, sizeof(in));
  in.sin_family = AF_INET;
  ASSERT_ERR(uvs__addr_from_sockaddr(NULL,
                                     UVS_TRANSPORT_TCP,
                                     (struct sockaddr*) &in,
                                     sizeof(in)),
             UV_EINVAL);
  ASSERT_ERR(uvs__addr_from_sockaddr(&a, UVS_TRANSPORT_TCP, NULL, sizeof(in)),
             UV_EINVAL);
}


static void test_format_errors(void) {
  uvs_address_t a;
  char buf[UVS_ADDRSTRLEN];
  size_t size;

  ASSERT_OK(uvs_address_parse("tcp://127.0.0.1:80", &a));
  size = sizeof(buf);
  a.transport = (uvs_transport_t) 0;
  ASSERT_ERR(uvs_address_format(&a, buf, &size), UV_EINVAL);
  a.transport = (uvs_transport_t) 99;
  ASSERT_ERR(uvs_address_format(&a, buf, &size), UV_EINVAL);
  /* An inet sockaddr under a Unix transport, and the other way round. */
  a.transport = UVS_TRANSPORT_UNIX;
  ASSERT_ERR(uvs_address_format(&a, buf, &size), UV_EINVAL);
  ASSERT_OK(uvs_address_parse("unix:/x", &a));
  a.transport = UVS_TRANSPORT_TCP;
  ASSERT_ERR(uvs_address_format(&a, buf, &size), UV_EINVAL);
  /* A length shorter than the family's sockaddr, or past the union. */
  ASSERT_OK(uvs_address_parse("tcp://[::1]:80", &a));
  a.len = sizeof(struct sockaddr_in);
  ASSERT_ERR(uvs_address_format(&a, buf, &size), UV_EINVAL);
  a.len = sizeof(a.u) + 1;
  ASSERT_ERR(uvs_address_format(&a, buf, &size), UV_EINVAL);
  /* An abstract name with a NUL inside cannot be written as text. */
  ASSERT_OK(uvs_address_parse("unix:@abc", &a));
  a.u.un.sun_path[2] = '\0';
  ASSERT_ERR(uvs_address_format(&a, buf, &size), UV_EINVAL);
  ASSERT_EQ(size, sizeof(buf));
}


static void test_format_small_buffer(void) {
  static const char* texts[] = {
    "tcp://127.0.0.1:80",
    "udp://[2001:db8::1]:65535",
    "unix:/tmp/s",
    "unixgram:@n",
  };
  uvs_address_t a;
  char buf[UVS_ADDRSTRLEN];
  size_t need;
  size_t size;
  size_t i;
  size_t j;

  for (i = 0; i < ARRAY_SIZE(texts); i++) {
    ASSERT_OK(uvs_address_parse(texts[i], &a));
    size = 0;
    ASSERT_ERR(uvs_address_format(&a, buf, &size), UV_ENOBUFS);
    need = size;
    ASSERT_EQ(need, strlen(texts[i]) + 1);

    /* One byte short: refused, and the buffer is not touched. */
    memset(buf, 'Z', sizeof(buf));
    size = need - 1;
    ASSERT_ERR(uvs_address_format(&a, buf, &size), UV_ENOBUFS);
    ASSERT_EQ(size, need);
    for (j = 0; j < sizeof(buf); j++)
      ASSERT_EQ(buf[j], 'Z');

    size = need;
    ASSERT_OK(uvs_address_format(&a, buf, &size));
    ASSERT_EQ(size, need - 1);
    ASSERT_STR_EQ(buf, texts[i]);
    ASSERT_EQ(buf[need], 'Z');
  }
}


static void test_from_sockaddr(void) {
  struct sockaddr_storage ss;
  struct sockaddr_in* in;
  struct sockaddr_in6* in6;
  struct sockaddr_un* un;
  uvs_address_t a;
  char buf[UVS_ADDRSTRLEN];
  size_t size;
  socklen_t len;

  memset(&ss, 0, sizeof(ss));
  in = (struct sockaddr_in*) &ss;
  in->sin_family = AF_INET;
  in->sin_port = htons(4321);
  in->sin_addr.s_addr = htonl(0x7f000001);
  /* A caller's whole buffer length: only the sockaddr_in is kept. */
  ASSERT_OK(uvs__addr_from_sockaddr(&a,
                                    UVS_TRANSPORT_TCP,
                                    (struct sockaddr*) &ss,
                                    sizeof(ss)));
  ASSERT_EQ(a.transport, UVS_TRANSPORT_TCP);
  ASSERT_EQ(a.len, sizeof(*in));
  ASSERT_MEM_EQ(&a.u.in, in, sizeof(*in));
  size = sizeof(buf);
  ASSERT_OK(uvs_address_format(&a, buf, &size));
  ASSERT_STR_EQ(buf, "tcp://127.0.0.1:4321");
  ASSERT_ERR(
      uvs__addr_from_sockaddr(&a, UVS_TRANSPORT_TCP, (struct sockaddr*) &ss, 8),
      UV_EINVAL);

  memset(&ss, 0, sizeof(ss));
  in6 = (struct sockaddr_in6*) &ss;
  in6->sin6_family = AF_INET6;
  in6->sin6_port = htons(53);
  in6->sin6_addr = in6addr_loopback;
  ASSERT_OK(uvs__addr_from_sockaddr(&a,
                                    UVS_TRANSPORT_UDP,
                                    (struct sockaddr*) &ss,
                                    sizeof(*in6)));
  ASSERT_EQ(a.len, sizeof(*in6));
  size = sizeof(buf);
  ASSERT_OK(uvs_address_format(&a, buf, &size));
  ASSERT_STR_EQ(buf, "udp://[::1]:53");
  ASSERT_ERR(uvs__addr_from_sockaddr(&a,
                                     UVS_TRANSPORT_UDP,
                                     (struct sockaddr*) &ss,
                                     sizeof(struct sockaddr_in)),
             UV_EINVAL);

  memset(&ss, 0, sizeof(ss));
  un = (struct sockaddr_un*) &ss;
  un->sun_family = AF_UNIX;
  copy_str(un->sun_path, "/run/x.sock");
  len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + 12);
  ASSERT_OK(uvs__addr_from_sockaddr(&a,
                                    UVS_TRANSPORT_UNIX,
                                    (struct sockaddr*) &ss,
                                    len));
  ASSERT_EQ(a.len, len);
  size = sizeof(buf);
  ASSERT_OK(uvs_address_format(&a, buf, &size));
  ASSERT_STR_EQ(buf, "unix:/run/x.sock");

  /* A full sun_path without a NUL, as Linux allows. */
  memset(un->sun_path, 'q', sizeof(un->sun_path));
  ASSERT_OK(uvs__addr_from_sockaddr(&a,
                                    UVS_TRANSPORT_UNIXGRAM,
                                    (struct sockaddr*) &ss,
                                    sizeof(struct sockaddr_un)));
  size = sizeof(buf);
  ASSERT_OK(uvs_address_format(&a, buf, &size));
  ASSERT_EQ(size, strlen("unixgram:") + sizeof(un->sun_path));

  /* An abstract name as the kernel reports it. */
  memset(un->sun_path, 0, sizeof(un->sun_path));
  memcpy(un->sun_path + 1, "00a1f", 5);
  len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + 6);
  ASSERT_OK(uvs__addr_from_sockaddr(&a,
                                    UVS_TRANSPORT_UNIX,
                                    (struct sockaddr*) &ss,
                                    len));
  size = sizeof(buf);
  ASSERT_OK(uvs_address_format(&a, buf, &size));
  ASSERT_STR_EQ(buf, "unix:@00a1f");

  /* An unnamed peer (an unbound client): "unix:", which does not parse. */
  len = (socklen_t) offsetof(struct sockaddr_un, sun_path);
  ASSERT_OK(uvs__addr_from_sockaddr(&a,
                                    UVS_TRANSPORT_UNIX,
                                    (struct sockaddr*) &ss,
                                    len));
  size = sizeof(buf);
  ASSERT_OK(uvs_address_format(&a, buf, &size));
  ASSERT_STR_EQ(buf, "unix:");
  ASSERT_ERR(uvs_address_parse(buf, &a), UV_EINVAL);
  /* recvfrom's zero length for an unbound datagram sender. */
  ASSERT_OK(uvs__addr_from_sockaddr(&a,
                                    UVS_TRANSPORT_UNIXGRAM,
                                    (struct sockaddr*) &ss,
                                    0));
  ASSERT_EQ(a.len, 0);
  size = sizeof(buf);
  ASSERT_OK(uvs_address_format(&a, buf, &size));
  ASSERT_STR_EQ(buf, "unixgram:");

  /* Families and transports that do not go together, a bad transport, a
   * length past the union. */
  memset(&ss, 0, sizeof(ss));
  ss.ss_family = AF_PACKET;
  ASSERT_ERR(uvs__addr_from_sockaddr(&a,
                                     UVS_TRANSPORT_TCP,
                                     (struct sockaddr*) &ss,
                                     sizeof(ss)),
             UV_EINVAL);
  ASSERT_ERR(uvs__addr_from_sockaddr(&a,
                                     UVS_TRANSPORT_UNIX,
                                     (struct sockaddr*) &ss,
                                     sizeof(ss)),
             UV_EINVAL);
  ss.ss_family = AF_UNIX;
  ASSERT_ERR(uvs__addr_from_sockaddr(&a,
                                     UVS_TRANSPORT_TCP,
                                     (struct sockaddr*) &ss,
                                     sizeof(struct sockaddr_un)),
             UV_EINVAL);
  ss.ss_family = AF_INET;
  ASSERT_ERR(uvs__addr_from_sockaddr(&a,
                                     UVS_TRANSPORT_UNIX,
                                     (struct sockaddr*) &ss,
                                     sizeof(struct sockaddr_in)),
             UV_EINVAL);
  ASSERT_ERR(uvs__addr_from_sockaddr(&a,
                                     (uvs_transport_t) 0,
                                     (struct sockaddr*) &ss,
                                     sizeof(struct sockaddr_in)),
             UV_EINVAL);
  ASSERT_ERR(uvs__addr_from_sockaddr(&a,
                                     UVS_TRANSPORT_TCP,
                                     (struct sockaddr*) &ss,
                                     (socklen_t) sizeof(a.u) + 1),
             UV_EINVAL);
}


/* ---- Fuzz ------------------------------------------------------------ */

static uint64_t fuzz_state = 0x9e3779b97f4a7c15u;

static uint32_t fuzz_next(void) {
  /* xorshift64*: fixed seed, so a failure reproduces. */
  fuzz_state ^= fuzz_state >> 12;
  fuzz_state ^= fuzz_state << 25;
  fuzz_state ^= fuzz_state >> 27;
  return (uint32_t) ((fuzz_state * 0x2545f4914f6cdd1du) >> 32);
}

static char fuzz_char(void) {
  static const char set[] = "tcp:/[]:@0123456789.abcdef%unixgrm-_ ";
  if (fuzz_next() % 8 == 0)
    return (char) (1 + fuzz_next() % 255);
  return set[fuzz_next() % (sizeof(set) - 1)];
}

/* True when parsing `text` could ask getaddrinfo about a name: an
 * unbracketed tcp/udp host with anything but digits and dots. The fuzz
 * loop skips those, so it never waits on DNS. */
static bool fuzz_may_resolve(const char* text) {
  const char* host;
  const char* colon;
  const char* p;

  if (strncasecmp(text, "tcp://", 6) != 0 &&
      strncasecmp(text, "udp://", 6) != 0)
    return false;
  host = text + 6;
  if (host[0] == '[')
    return false;
  colon = strrchr(host, ':');
  if (colon == NULL)
    return false;
  for (p = host; p < colon; p++) {
    if ((*p < '0' || *p > '9') && *p != '.')
      return true;
  }
  return false;
}

static void fuzz_make(char* text, size_t size) {
  static const char* seeds[] = {
    "tcp://127.0.0.1:80",
    "udp://[::1]:53",
    "tcp://[fe80::1%1]:8080",
    "tcp://[::ffff:1.2.3.4]:65535",
    "tcp://0.0.0.0:0",
    "unix:/tmp/x.sock",
    "unix:@abc",
    "unixgram:/tmp/d",
    "unixgram:@",
    "tcp://[",
  };
  size_t len;
  size_t want;
  size_t pos;
  unsigned n;
  unsigned mode;

  mode = fuzz_next() % 3;
  len = 0;
  if (mode > 0) {
    copy_str(text, seeds[fuzz_next() % ARRAY_SIZE(seeds)]);
    len = strlen(text);
  }
  if (mode < 2) {
    /* Random characters, appended to a seed or from nothing. */
    want = fuzz_next() % 65;
    while (len < want && len < size - 1)
      text[len++] = fuzz_char();
    text[len] = '\0';
    return;
  }
  /* Mutations of a valid address: replace, insert or delete bytes. */
  for (n = 1 + fuzz_next() % 4; n > 0; n--) {
    pos = len == 0 ? 0 : fuzz_next() % (len + 1);
    switch (fuzz_next() % 3) {
    case 0:
      if (pos < len)
        text[pos] = fuzz_char();
      break;
    case 1:
      if (len + 1 < size) {
        memmove(text + pos + 1, text + pos, len - pos + 1);
        text[pos] = fuzz_char();
        len++;
      }
      break;
    default:
      if (pos < len) {
        memmove(text + pos, text + pos + 1, len - pos);
        len--;
      }
      break;
    }
  }
  text[len] = '\0';
}

static void test_fuzz(void) {
  char text[128];
  char buf[UVS_ADDRSTRLEN];
  uvs_address_t a;
  uvs_address_t b;
  size_t size;
  unsigned parsed;
  unsigned skipped;
  unsigned i;
  uint64_t start;
  int r;

  memset(text, 0, sizeof(text));
  parsed = 0;
  skipped = 0;
  start = test_now_ms();
  for (i = 0; i < 20000; i++) {
    fuzz_make(text, sizeof(text));
    if (fuzz_may_resolve(text)) {
      skipped++;
      continue;
    }
    memset(&a, 0xa5, sizeof(a));
    r = uvs_address_parse(text, &a);
    if (r > 0)
      TEST__FAIL("case %u \"%s\": returned %d", i, text, r);
    if (r < 0) {
      /* A failure leaves the address alone. */
      ASSERT_EQ(a.len, 0xa5a5a5a5u);
      continue;
    }
    parsed++;
    size = sizeof(buf);
    r = uvs_address_format(&a, buf, &size);
    if (r != 0)
      TEST__FAIL("case %u \"%s\": format: %s", i, text, uvs_err_name(r));
    ASSERT_EQ(size, strlen(buf));
    r = uvs_address_parse(buf, &b);
    if (r != 0)
      TEST__FAIL("case %u \"%s\" -> \"%s\": %s", i, text, buf, uvs_err_name(r));
    ASSERT_EQ(a.transport, b.transport);
    ASSERT_EQ(a.len, b.len);
    ASSERT_MEM_EQ(&a.u, &b.u, a.len);
  }
  printf("# fuzz: %u parsed, %u skipped (names), %" PRIu64 " ms\n",
         parsed,
         skipped,
         test_now_ms() - start);
  ASSERT_GT(parsed, 1000);
}


static const test_case_t cases[] = {
  { "ipv4", test_ipv4 },
  { "port_bounds", test_port_bounds },
  { "ipv6", test_ipv6 },
  { "ipv6_scope", test_ipv6_scope },
  { "localhost", test_localhost },
  { "unresolvable", test_unresolvable },
  { "udp", test_udp },
  { "unix_path", test_unix_path },
  { "unix_abstract", test_unix_abstract },
  { "unix_too_long", test_unix_too_long },
  { "malformed", test_malformed },
  { "null_args", test_null_args },
  { "format_errors", test_format_errors },
  { "format_small_buffer", test_format_small_buffer },
  { "from_sockaddr", test_from_sockaddr },
  { "fuzz", test_fuzz },
};

TEST_MAIN(cases)
