/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for the address URIs (lib/addr.c). An input is text for
 * uvs_address_parse; an input that starts with a 0 byte (as text only the
 * empty string) is instead the bytes of a uvs_address_t to format.
 * Properties, each an abort when broken:
 * - parse reads nothing past the text's NUL (the text is an exact-size
 *   heap copy, so ASan sees an overread), and a long text with no NUL in
 *   its first FUZZ_READ_MAX bytes parses the same without any: addr.c
 *   reads a bounded prefix;
 * - a failed parse leaves the output as it was and returns an error
 *   uvs.h lists;
 * - a parsed address is well formed for its family and formats, in fewer
 *   than UVS_ADDRSTRLEN bytes, to text that parses back to it;
 * - format into a buffer too small returns UV_ENOBUFS with the size
 *   needed and writes nothing; into exactly that size it succeeds;
 * - any uvs_address_t formats, or fails with UV_EINVAL where uvs.h says
 *   it does; a TCP or UDP one that formats parses back to the same
 *   address, and a Unix one to an address that formats the same.
 *
 * Host names: uvs_address_parse resolves them with getaddrinfo, which may
 * ask a DNS server and block for seconds. A fuzz run must not depend on
 * the network, so this file defines getaddrinfo and freeaddrinfo: the
 * library's objects are linked into this program, so their calls come
 * here instead of to libc. The stand-in answers from a hash of the name
 * (addresses, error codes, lists with entries to skip), which also checks
 * what parse makes of each answer. The first input proves that the
 * stand-in is the one called.
 */
#include "fuzz.h"
#include "test.h"

#include <net/if.h>
#include <netdb.h>
#include <stdbool.h>
#include <strings.h>
#include <sys/un.h>

/* Well above the longest text addr.c reads: "tcp://[" + a 254-byte host
 * + "]:" + 5 digits. */
#define FUZZ_READ_MAX 512

#define UNIX_PATH_OFFSET offsetof(struct sockaddr_un, sun_path)
#define COUNT_OF(a)      (sizeof(a) / sizeof((a)[0]))


/* ---- The resolver stand-in ------------------------------------------- */

typedef struct {
  struct addrinfo ai; /* first: freeaddrinfo frees the whole record */
  struct sockaddr_storage ss;
} fake_entry_t;

/* What the last lookup answered, and so what parse must return. */
static struct {
  unsigned calls;
  int want_err; /* the uvs error parse must return, or 0 */
  bool any_err; /* any error will do (an answer uvs.h does not map) */
  int want_family;
  struct sockaddr_in6 want6; /* the address parse must pick */
  struct sockaddr_in want4;
} fake;


static void fake_reset(void) {
  memset(&fake, 0, sizeof(fake));
}


/* FNV-1a over the lower-cased name: names differing in case are one
 * host, as in DNS. */
static uint32_t name_hash(const char* name) {
  uint32_t h = 2166136261u;
  for (; *name != '\0'; name++) {
    unsigned char c = (unsigned char) *name;
    if (c >= 'A' && c <= 'Z')
      c = (unsigned char) (c - 'A' + 'a');
    h = (h ^ c) * 16777619u;
  }
  return h;
}


static struct addrinfo* fake_add(struct addrinfo*** tail,
                                 int family,
                                 socklen_t len,
                                 int socktype) {
  fake_entry_t* e = calloc(1, sizeof(*e));
  ASSERT_NOT_NULL(e);
  e->ai.ai_family = family;
  e->ai.ai_socktype = socktype;
  e->ai.ai_addrlen = len;
  e->ai.ai_addr = (struct sockaddr*) &e->ss;
  e->ss.ss_family = (sa_family_t) family;
  **tail = &e->ai;
  *tail = &e->ai.ai_next;
  return &e->ai;
}


/* An IPv4 entry; getaddrinfo without a service gives port 0, but parse
 * must set its own port whatever the entry holds. */
static void fake_add4(struct addrinfo*** tail, uint32_t h, int socktype) {
  struct addrinfo* ai =
      fake_add(tail, AF_INET, sizeof(struct sockaddr_in), socktype);
  struct sockaddr_in* in = (struct sockaddr_in*) ai->ai_addr;
  in->sin_addr.s_addr = htonl(h);
  in->sin_port = htons((uint16_t) (h >> 7));
}


static void fake_add6(struct addrinfo*** tail, uint32_t h, int socktype) {
  static const uint32_t scopes[] = { 0, 1, 7777 };
  struct addrinfo* ai =
      fake_add(tail, AF_INET6, sizeof(struct sockaddr_in6), socktype);
  struct sockaddr_in6* in6 = (struct sockaddr_in6*) ai->ai_addr;
  size_t i;
  for (i = 0; i < sizeof(in6->sin6_addr.s6_addr); i++)
    in6->sin6_addr.s6_addr[i] = (uint8_t) (h >> (i % 4 * 8)) ^ (uint8_t) i;
  in6->sin6_scope_id = scopes[(h >> 3) % COUNT_OF(scopes)];
  in6->sin6_flowinfo = (h >> 5) & 1 ? htonl(h & 0xfffff) : 0;
  in6->sin6_port = htons((uint16_t) (h >> 9));
}


/* The answer parse must pick: the first usable IPv4 entry, else the
 * first usable IPv6 one (uvs.h: IPv4 results first), else none. */
static void fake_expect(const struct addrinfo* list) {
  const struct addrinfo* ai;
  const struct addrinfo* v6 = NULL;
  for (ai = list; ai != NULL; ai = ai->ai_next) {
    if (ai->ai_addr == NULL)
      continue;
    if (ai->ai_family == AF_INET &&
        ai->ai_addrlen >= sizeof(struct sockaddr_in)) {
      fake.want_family = AF_INET;
      memcpy(&fake.want4, ai->ai_addr, sizeof(fake.want4));
      return;
    }
    if (ai->ai_family == AF_INET6 && v6 == NULL &&
        ai->ai_addrlen >= sizeof(struct sockaddr_in6))
      v6 = ai;
  }
  if (v6 != NULL) {
    fake.want_family = AF_INET6;
    memcpy(&fake.want6, v6->ai_addr, sizeof(fake.want6));
  } else {
    fake.any_err = true;
  }
}


static int fake_fail(int eai, int err) {
  if (err != 0)
    fake.want_err = err;
  else
    fake.any_err = true;
  return eai;
}


int getaddrinfo(const char* restrict node,
                const char* restrict service,
                const struct addrinfo* restrict hints,
                struct addrinfo** restrict res) {
  static const struct {
    int eai;
    int err;
  } errors[] = {
    { EAI_FAIL, UV_EAI_FAIL },         { EAI_MEMORY, UV_EAI_MEMORY },
    { EAI_FAMILY, UV_EAI_FAMILY },     { EAI_SERVICE, UV_EAI_SERVICE },
    { EAI_BADFLAGS, UV_EAI_BADFLAGS }, { EAI_SOCKTYPE, UV_EAI_SOCKTYPE },
    { EAI_OVERFLOW, UV_EAI_OVERFLOW }, { EAI_NODATA, UV_EAI_NODATA },
    { EAI_CANCELED, UV_EAI_CANCELED }, { -9999, 0 },
  };
  struct addrinfo* list = NULL;
  struct addrinfo** tail = &list;
  struct addrinfo* ai;
  uint32_t h;
  int type;

  fake.calls++;
  ASSERT_NOT_NULL(node);
  ASSERT_NULL(service);
  ASSERT_NOT_NULL(hints);
  ASSERT_NOT_NULL(res);
  type = hints->ai_socktype;
  ASSERT_TRUE(type == SOCK_STREAM || type == SOCK_DGRAM);
  h = name_hash(node);

  if (strcasecmp(node, "localhost") == 0) {
    /* As /etc/hosts often lists them: ::1 first, yet 127.0.0.1 wins. */
    fake_add6(&tail, 0, type);
    memset(&((struct sockaddr_in6*) list->ai_addr)->sin6_addr, 0, 16);
    ((struct sockaddr_in6*) list->ai_addr)->sin6_addr.s6_addr[15] = 1;
    fake_add4(&tail, 0x7f000001u, type);
  } else {
    switch (h % 10) {
    case 0:
      return fake_fail(EAI_NONAME, UV_EAI_NONAME);
    case 1:
      return fake_fail(EAI_AGAIN, UV_EAI_AGAIN);
    case 2:
      /* A system error travels in errno; without one parse must still
       * fail. */
      errno = (h >> 8) & 1 ? EIO : 0;
      return fake_fail(EAI_SYSTEM, errno != 0 ? UV_EIO : 0);
    case 3:
      h = (h >> 8) % COUNT_OF(errors);
      return fake_fail(errors[h].eai, errors[h].err);
    case 4:
      fake_add4(&tail, h, type);
      break;
    case 5:
      fake_add6(&tail, h, type);
      break;
    case 6:
      fake_add6(&tail, h, type);
      fake_add4(&tail, h * 31, type);
      break;
    case 7:
      /* Entries parse must skip: no address, a foreign family, lengths
       * too short; then maybe a usable one. */
      ai = fake_add(&tail, AF_INET, sizeof(struct sockaddr_in), type);
      ai->ai_addr = NULL;
      fake_add(&tail, AF_UNIX, sizeof(struct sockaddr_un), type);
      fake_add(&tail, AF_INET, sizeof(struct sockaddr_in) - 1, type);
      fake_add(&tail, AF_INET6, sizeof(struct sockaddr_in6) - 1, type);
      if ((h >> 8) & 1)
        fake_add6(&tail, h, type);
      break;
    default:
      fake_add4(&tail, h, type);
      fake_add6(&tail, h * 7, type);
      break;
    }
  }
  fake_expect(list);
  *res = list;
  return 0;
}


void freeaddrinfo(struct addrinfo* list) {
  while (list != NULL) {
    struct addrinfo* next = list->ai_next;
    /* An entry whose address was taken away still owns its record. */
    free(list);
    list = next;
  }
}


/* After a parse: when it looked a name up, it returned what the answer
 * says. */
static void check_lookup(int r, const uvs_address_t* addr) {
  if (fake.calls == 0)
    return;
  ASSERT_EQ(fake.calls, 1);
  if (fake.want_err != 0) {
    ASSERT_ERR(r, fake.want_err);
  } else if (fake.any_err) {
    ASSERT_LT(r, 0);
  } else {
    ASSERT_OK(r);
    ASSERT_EQ(addr->u.sa.sa_family, fake.want_family);
    if (fake.want_family == AF_INET) {
      ASSERT_EQ(addr->len, sizeof(struct sockaddr_in));
      ASSERT_EQ(addr->u.in.sin_addr.s_addr, fake.want4.sin_addr.s_addr);
    } else {
      ASSERT_EQ(addr->len, sizeof(struct sockaddr_in6));
      ASSERT_MEM_EQ(&addr->u.in6.sin6_addr, &fake.want6.sin6_addr, 16);
      ASSERT_EQ(addr->u.in6.sin6_scope_id, fake.want6.sin6_scope_id);
    }
  }
}


/* ---- Checks ---------------------------------------------------------- */

static bool is_inet(uvs_transport_t transport) {
  return transport == UVS_TRANSPORT_TCP || transport == UVS_TRANSPORT_UDP;
}


static bool is_unix(uvs_transport_t transport) {
  return transport == UVS_TRANSPORT_UNIX || transport == UVS_TRANSPORT_UNIXGRAM;
}


static const char* scheme_of(uvs_transport_t transport) {
  switch (transport) {
  case UVS_TRANSPORT_TCP:
    return "tcp://";
  case UVS_TRANSPORT_UDP:
    return "udp://";
  case UVS_TRANSPORT_UNIX:
    return "unix:";
  case UVS_TRANSPORT_UNIXGRAM:
    return "unixgram:";
  }
  return "";
}


/* A parsed address: the family's own length, a Unix path with its NUL or
 * an abstract name of at least one byte, without NUL. */
static void check_parsed(const uvs_address_t* addr) {
  const struct sockaddr_un* un = &addr->u.un;
  size_t n;

  if (is_inet(addr->transport)) {
    if (addr->u.sa.sa_family == AF_INET) {
      ASSERT_EQ(addr->len, sizeof(struct sockaddr_in));
    } else {
      ASSERT_EQ(addr->u.sa.sa_family, AF_INET6);
      ASSERT_EQ(addr->len, sizeof(struct sockaddr_in6));
    }
    return;
  }
  ASSERT_TRUE(is_unix(addr->transport));
  ASSERT_EQ(un->sun_family, AF_UNIX);
  ASSERT_GT(addr->len, UNIX_PATH_OFFSET + 1);
  ASSERT_LE(addr->len, sizeof(struct sockaddr_un));
  n = addr->len - UNIX_PATH_OFFSET;
  if (un->sun_path[0] == '\0') {
    ASSERT_NULL(memchr(un->sun_path + 1, '\0', n - 1));
  } else {
    ASSERT_EQ(un->sun_path[n - 1], '\0');
    ASSERT_EQ(strlen(un->sun_path), n - 1);
  }
}


/* The same address: transport and what the family defines (not
 * sin6_flowinfo, which format does not write, nor sin_zero). `same_len`:
 * `len` too, which a hand-made TCP or UDP address may overstate. */
static void check_same(const uvs_address_t* a,
                       const uvs_address_t* b,
                       bool same_len) {
  ASSERT_EQ(a->transport, b->transport);
  ASSERT_EQ(a->u.sa.sa_family, b->u.sa.sa_family);
  if (same_len)
    ASSERT_EQ(a->len, b->len);
  switch (a->u.sa.sa_family) {
  case AF_INET:
    ASSERT_EQ(b->len, sizeof(struct sockaddr_in));
    ASSERT_EQ(a->u.in.sin_port, b->u.in.sin_port);
    ASSERT_EQ(a->u.in.sin_addr.s_addr, b->u.in.sin_addr.s_addr);
    break;
  case AF_INET6:
    ASSERT_EQ(b->len, sizeof(struct sockaddr_in6));
    ASSERT_EQ(a->u.in6.sin6_port, b->u.in6.sin6_port);
    ASSERT_MEM_EQ(&a->u.in6.sin6_addr, &b->u.in6.sin6_addr, 16);
    ASSERT_EQ(a->u.in6.sin6_scope_id, b->u.in6.sin6_scope_id);
    break;
  default:
    ASSERT_EQ(a->u.sa.sa_family, AF_UNIX);
    ASSERT_EQ(a->len, b->len);
    ASSERT_MEM_EQ(&a->u, &b->u, a->len);
    break;
  }
}


/* Formats `addr` into `text` (UVS_ADDRSTRLEN bytes) and checks the size
 * rules of uvs_address_format. Returns its result, 0 or UV_EINVAL. */
static int format_checked(const uvs_address_t* addr, char* text) {
  size_t size = UVS_ADDRSTRLEN;
  size_t tries[3];
  size_t len;
  size_t i;
  size_t j;
  char* buf;
  int r;

  memset(text, 'Z', UVS_ADDRSTRLEN);
  r = uvs_address_format(addr, text, &size);
  if (r != 0) {
    /* UVS_ADDRSTRLEN is always enough: never UV_ENOBUFS. */
    ASSERT_ERR(r, UV_EINVAL);
    return r;
  }
  len = size;
  ASSERT_LT(len, UVS_ADDRSTRLEN);
  ASSERT_EQ(text[len], '\0');
  ASSERT_EQ(strlen(text), len);

  /* Too small, by every margin down to nothing: UV_ENOBUFS, the size
   * needed, and the buffer (exactly that big: ASan) untouched. */
  tries[0] = 0;
  tries[1] = len / 2;
  tries[2] = len;
  for (i = 0; i < COUNT_OF(tries); i++) {
    buf = malloc(tries[i] + 1);
    ASSERT_NOT_NULL(buf);
    memset(buf, 'Z', tries[i] + 1);
    size = tries[i];
    ASSERT_ERR(uvs_address_format(addr, buf, &size), UV_ENOBUFS);
    ASSERT_EQ(size, len + 1);
    for (j = 0; j < tries[i] + 1; j++)
      ASSERT_EQ(buf[j], 'Z');
    free(buf);
  }

  /* Exactly enough. */
  buf = malloc(len + 1);
  ASSERT_NOT_NULL(buf);
  size = len + 1;
  ASSERT_OK(uvs_address_format(addr, buf, &size));
  ASSERT_EQ(size, len);
  ASSERT_MEM_EQ(buf, text, len + 1);
  free(buf);
  return 0;
}


/* Parses `text` into `addr`, which is left as it was on failure. */
static int parse_checked(const char* text, uvs_address_t* addr) {
  uvs_address_t before;
  int r;

  memset(addr, 0xa5, sizeof(*addr));
  memcpy(&before, addr, sizeof(before));
  fake_reset();
  r = uvs_address_parse(text, addr);
  check_lookup(r, addr);
  if (r != 0) {
    ASSERT_LT(r, 0);
    ASSERT_MEM_EQ(addr, &before, sizeof(before));
  } else {
    check_parsed(addr);
  }
  return r;
}


/* Whatever parse accepts formats, and the text reads back the same,
 * without a lookup: it names no host. */
static void check_round_trip(const uvs_address_t* addr) {
  char text[UVS_ADDRSTRLEN];
  uvs_address_t back;

  ASSERT_OK(format_checked(addr, text));
  ASSERT_OK(parse_checked(text, &back));
  ASSERT_EQ(fake.calls, 0);
  check_same(addr, &back, true);
}


/* ---- The two inputs -------------------------------------------------- */

static void fuzz_text(const uint8_t* data, size_t size) {
  uvs_address_t addr;
  uvs_address_t again;
  char* text;
  char* raw;
  int r;

  text = malloc(size + 1);
  ASSERT_NOT_NULL(text);
  memcpy(text, data, size);
  text[size] = '\0';

  r = parse_checked(text, &addr);
  if (r == 0) {
    check_round_trip(&addr);
  } else if (fake.calls == 0) {
    /* Without a lookup: malformed, too long, or an unknown scope. */
    ASSERT_TRUE(r == UV_EINVAL || r == UV_ENAMETOOLONG || r == UV_EAI_NONAME);
  }

  /* The same text with no NUL anywhere near: parse must stop reading on
   * its own, and decide the same. */
  if (size >= FUZZ_READ_MAX && memchr(data, '\0', FUZZ_READ_MAX) == NULL) {
    raw = malloc(FUZZ_READ_MAX);
    ASSERT_NOT_NULL(raw);
    memcpy(raw, data, FUZZ_READ_MAX);
    memset(&again, 0xa5, sizeof(again));
    ASSERT_ERR(uvs_address_parse(raw, &again), r);
    if (r == 0)
      ASSERT_MEM_EQ(&again, &addr, sizeof(addr));
    free(raw);
  }
  free(text);
}


/* Must format: a known transport with its family and a length that
 * covers it, or an unnamed Unix socket, or a Unix path or abstract name
 * within sockaddr_un (an abstract name with a NUL must fail, as uvs.h
 * says). Returns 1 (must format), 0 (must fail), -1 (either). */
static int expect_format(const uvs_address_t* addr) {
  const struct sockaddr_un* un = &addr->u.un;
  sa_family_t family = addr->u.sa.sa_family;

  if (addr->len > sizeof(addr->u))
    return 0;
  if (is_inet(addr->transport)) {
    if (family == AF_INET)
      return addr->len >= sizeof(struct sockaddr_in);
    if (family == AF_INET6)
      return addr->len >= sizeof(struct sockaddr_in6);
    return 0;
  }
  if (!is_unix(addr->transport) || family != AF_UNIX)
    return 0;
  if (addr->len <= UNIX_PATH_OFFSET)
    return 1;
  if (addr->len > sizeof(struct sockaddr_un))
    return -1;
  if (un->sun_path[0] == '\0')
    return memchr(un->sun_path + 1, '\0', addr->len - UNIX_PATH_OFFSET - 1) ==
           NULL;
  return 1;
}


static void fuzz_struct(const uint8_t* data, size_t size) {
  static const int families[] = { AF_INET, AF_INET6, AF_UNIX };
  char text[UVS_ADDRSTRLEN];
  char again[UVS_ADDRSTRLEN];
  const char* scheme;
  const char* rest;
  uvs_address_t addr;
  uvs_address_t back;
  uint8_t head[4] = { 0 };
  int expect;
  int r;

  memcpy(head, data, size < sizeof(head) ? size : sizeof(head));
  data += size < sizeof(head) ? size : sizeof(head);
  size -= size < sizeof(head) ? size : sizeof(head);

  memset(&addr, 0, sizeof(addr));
  memcpy((char*) &addr.u + sizeof(sa_family_t),
         data,
         size < sizeof(addr.u) - sizeof(sa_family_t)
             ? size
             : sizeof(addr.u) - sizeof(sa_family_t));
  addr.transport = (uvs_transport_t) (head[0] % 6); /* 0 and 5: unknown */
  addr.len = (socklen_t) ((head[1] | head[2] << 8) % (sizeof(addr.u) + 16));
  addr.u.sa.sa_family =
      (sa_family_t) (head[3] < 3 * 64 ? families[head[3] % 3] : head[3]);

  expect = expect_format(&addr);
  r = format_checked(&addr, text);
  if (expect >= 0)
    ASSERT_EQ(r == 0, expect);
  if (r != 0)
    return;

  scheme = scheme_of(addr.transport);
  ASSERT_EQ(strncmp(text, scheme, strlen(scheme)), 0);
  rest = text + strlen(scheme);
  r = parse_checked(text, &back);
  ASSERT_EQ(fake.calls, 0);
  if (is_inet(addr.transport)) {
    ASSERT_OK(r);
    check_same(&addr, &back, false);
    return;
  }

  /* Unix: what the kernel reports need not be what parse makes (a path
   * without its NUL, bytes after it), but the text must name the same
   * socket again. Not parsed back, as uvs.h and addr.c say: an unnamed
   * socket, an empty abstract name, and a name longer than parse takes. */
  if (r == 0) {
    ASSERT_EQ(back.transport, addr.transport);
    ASSERT_OK(format_checked(&back, again));
    ASSERT_STR_EQ(again, text);
  } else if (r == UV_ENAMETOOLONG) {
    /* A path needs room for its NUL; an abstract name does not. */
    ASSERT_GE(strlen(rest), sizeof(addr.u.un.sun_path) + (rest[0] == '@'));
  } else {
    ASSERT_ERR(r, UV_EINVAL);
    ASSERT_TRUE(rest[0] == '\0' || strcmp(rest, "@") == 0);
    if (rest[0] == '\0')
      ASSERT_LE(addr.len, UNIX_PATH_OFFSET);
  }
}


/* ---- Entry ----------------------------------------------------------- */

/* The library must be calling this file's getaddrinfo: with libc's, a
 * fuzz run would send DNS queries. */
static void check_stand_in(void) {
  static bool done;
  uvs_address_t addr;

  if (done)
    return;
  done = true;
  fake_reset();
  ASSERT_OK(uvs_address_parse("tcp://LocalHost:1", &addr));
  if (fake.calls != 1)
    TEST__FAIL(
        "getaddrinfo is not this file's stand-in: fuzzing would "
        "look names up in DNS");
  ASSERT_EQ(addr.u.sa.sa_family, AF_INET);
  ASSERT_EQ(addr.u.in.sin_addr.s_addr, htonl(0x7f000001u));
  ASSERT_EQ(addr.u.in.sin_port, htons(1));
}


int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  check_stand_in();
  if (size > 0 && data[0] == 0)
    fuzz_struct(data + 1, size - 1);
  else
    fuzz_text(data, size);
  return 0;
}
