/* SPDX-License-Identifier: MIT */
/*
 * Address URIs: the text a user writes (tcp://HOST:PORT, udp://HOST:PORT,
 * unix:PATH, unixgram:PATH) and the uvs_address_t, a transport plus the
 * sockaddr the kernel takes, that the listeners bind and the connections
 * report. uvs_address_parse reads text, uvs_address_format writes it back,
 * and uvs__addr_from_sockaddr wraps what accept, recvfrom and getsockname
 * return. server.c parses the address given to uvs_server_new and formats
 * the bound one; the listeners wrap every peer.
 *
 * Invariants: text that format writes parses back into the same sockaddr
 * (except an unnamed Unix socket or an empty abstract name, which name
 * nothing to bind, and sin6_flowinfo, which is not written), and a parse never
 * truncates: an address is taken whole or refused. The parser reads the
 * text strictly, because addresses come from command lines and config
 * files and a typo must fail loudly rather than bind something else: one
 * scheme, one host, one decimal port, nothing after it. Parse reads at
 * most a bounded prefix of the text, allocates nothing but what
 * getaddrinfo does, and leaves `addr` unchanged when it fails.
 */
#include "internal.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* A DNS name is at most 253 bytes, 254 with its trailing dot; an IPv6
 * literal with a scope is far shorter. Anything longer is refused before
 * it reaches the resolver. */
#define ADDR_HOST_MAX  254
#define ADDR_LABEL_MAX 63
/* "65535": more digits are refused even when they are leading zeros, so a
 * port can never be a long run of text. */
#define ADDR_PORT_MAX 5
/* The longest text after "tcp://": "[" HOST "]:" PORT. */
#define ADDR_INET_MAX (ADDR_HOST_MAX + 3 + ADDR_PORT_MAX)

/* One table serves parse and format, so the two cannot disagree. */
static const struct {
  const char* prefix;
  size_t len;
  uvs_transport_t transport;
} schemes[] = {
  { "tcp://", sizeof("tcp://") - 1, UVS_TRANSPORT_TCP },
  { "udp://", sizeof("udp://") - 1, UVS_TRANSPORT_UDP },
  { "unix:", sizeof("unix:") - 1, UVS_TRANSPORT_UNIX },
  { "unixgram:", sizeof("unixgram:") - 1, UVS_TRANSPORT_UNIXGRAM },
};

static bool is_inet(uvs_transport_t transport);
static int parse_port(const char* text, size_t len, uint16_t* port);
static int parse_scope(const char* text, uint32_t* scope_id);
static int parse_ipv6(char* host, uvs_address_t* addr);
static bool is_host_name(const char* host, size_t len);
static int eai_error(int eai);
static int resolve(const char* host, uvs_address_t* addr);
static int parse_inet(const char* text, uvs_address_t* addr);
static int parse_unix(const char* text, uvs_address_t* addr);
static int format_inet(const uvs_address_t* addr,
                       const char* prefix,
                       char* text,
                       size_t* len);
static int format_unix(const uvs_address_t* addr,
                       const char* prefix,
                       size_t prefix_len,
                       char* text,
                       size_t* len);


int uvs_address_parse(const char* text, uvs_address_t* addr) {
  uvs_address_t parsed;
  size_t i;
  int r;

  if (text == NULL || addr == NULL)
    return UV_EINVAL;

  /* Parse into a copy: the caller's address changes only on success. */
  memset(&parsed, 0, sizeof(parsed));
  r = UV_EINVAL;
  for (i = 0; i < ARRAY_SIZE(schemes); i++) {
    /* Schemes are case-insensitive (RFC 3986, 3.1); strncasecmp stops at
     * the text's NUL, so a short text cannot be overread. */
    if (strncasecmp(text, schemes[i].prefix, schemes[i].len) != 0)
      continue;
    parsed.transport = schemes[i].transport;
    if (is_inet(parsed.transport))
      r = parse_inet(text + schemes[i].len, &parsed);
    else
      r = parse_unix(text + schemes[i].len, &parsed);
    break;
  }

  if (r == 0)
    *addr = parsed;
  return r;
}


int uvs_address_format(const uvs_address_t* addr, char* buf, size_t* size) {
  char text[UVS_ADDRSTRLEN];
  size_t len;
  size_t i;
  int r;

  if (addr == NULL || buf == NULL || size == NULL)
    return UV_EINVAL;
  if (addr->len > sizeof(addr->u))
    return UV_EINVAL;

  r = UV_EINVAL;
  len = 0;
  for (i = 0; i < ARRAY_SIZE(schemes); i++) {
    if (schemes[i].transport != addr->transport)
      continue;
    if (is_inet(addr->transport))
      r = format_inet(addr, schemes[i].prefix, text, &len);
    else
      r = format_unix(addr, schemes[i].prefix, schemes[i].len, text, &len);
    break;
  }
  if (r != 0)
    return r;

  /* Nothing is written unless it all fits, NUL included. */
  if (len + 1 > *size) {
    *size = len + 1;
    return UV_ENOBUFS;
  }
  memcpy(buf, text, len + 1);
  *size = len;
  return 0;
}


int uvs__addr_from_sockaddr(uvs_address_t* addr,
                            uvs_transport_t transport,
                            const struct sockaddr* sa,
                            socklen_t len) {
  uvs_address_t copy;
  size_t need;

  if (addr == NULL || sa == NULL)
    return UV_EINVAL;
  if ((size_t) len > sizeof(copy.u))
    return UV_EINVAL;

  memset(&copy, 0, sizeof(copy));
  copy.transport = transport;

  switch (transport) {
  case UVS_TRANSPORT_TCP:
  case UVS_TRANSPORT_UDP:
    if (len < sizeof(sa_family_t))
      return UV_EINVAL;
    if (sa->sa_family == AF_INET)
      need = sizeof(struct sockaddr_in);
    else if (sa->sa_family == AF_INET6)
      need = sizeof(struct sockaddr_in6);
    else
      return UV_EINVAL;
    if (len < need)
      return UV_EINVAL;
    /* A caller may pass its whole buffer's length: keep only the family's
     * own size, so equal addresses compare equal over `len`. */
    memcpy(&copy.u, sa, need);
    copy.len = (socklen_t) need;
    break;

  case UVS_TRANSPORT_UNIX:
  case UVS_TRANSPORT_UNIXGRAM:
    /* recvfrom gives a length of 0 for a datagram from an unbound Unix
     * socket: that is an unnamed peer, not an error. */
    if (len < sizeof(sa_family_t)) {
      copy.u.un.sun_family = AF_UNIX;
      copy.len = 0;
      break;
    }
    if (sa->sa_family != AF_UNIX)
      return UV_EINVAL;
    memcpy(&copy.u, sa, len);
    copy.len = len;
    break;

  default:
    return UV_EINVAL;
  }

  *addr = copy;
  return 0;
}


static bool is_inet(uvs_transport_t transport) {
  return transport == UVS_TRANSPORT_TCP || transport == UVS_TRANSPORT_UDP;
}


/* Decimal digits only: strtoul would take a sign, spaces and "0x". */
static int parse_port(const char* text, size_t len, uint16_t* port) {
  unsigned long value;
  size_t i;

  if (len == 0 || len > ADDR_PORT_MAX)
    return UV_EINVAL;
  value = 0;
  for (i = 0; i < len; i++) {
    if (text[i] < '0' || text[i] > '9')
      return UV_EINVAL;
    value = value * 10 + (unsigned long) (text[i] - '0');
  }
  if (value > UINT16_MAX)
    return UV_EINVAL;
  *port = (uint16_t) value;
  return 0;
}


/* The part after '%' in an IPv6 literal (RFC 4007): an interface index in
 * decimal or an interface name. We read it ourselves with if_nametoindex
 * rather than through getaddrinfo(AI_NUMERICHOST), so a bad literal is
 * UV_EINVAL, an unknown interface UV_EAI_NONAME (the host does not
 * resolve on this machine), and nothing is allocated. */
static int parse_scope(const char* text, uint32_t* scope_id) {
  unsigned long long value;
  unsigned int index;
  size_t len;
  size_t i;

  len = strlen(text);
  if (len == 0 || len >= IF_NAMESIZE)
    return UV_EINVAL;

  if (strspn(text, "0123456789") == len) {
    /* At most 15 digits: this cannot overflow before the check. */
    value = 0;
    for (i = 0; i < len; i++)
      value = value * 10 + (unsigned long long) (text[i] - '0');
    if (value > UINT32_MAX)
      return UV_EINVAL;
    *scope_id = (uint32_t) value;
    return 0;
  }

  errno = 0;
  index = if_nametoindex(text);
  if (index == 0) {
    if (errno == ENODEV || errno == ENXIO || errno == 0)
      return UV_EAI_NONAME;
    return UVS__ERR(errno);
  }
  *scope_id = index;
  return 0;
}


/* `host` is the text between the brackets, a writable copy. */
static int parse_ipv6(char* host, uvs_address_t* addr) {
  struct sockaddr_in6* in6;
  char* scope;
  int r;

  in6 = &addr->u.in6;
  scope = strchr(host, '%');
  if (scope != NULL)
    *scope++ = '\0';
  /* inet_pton refuses an empty host, an IPv4 literal and any junk. */
  if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
    return UV_EINVAL;
  if (scope != NULL) {
    r = parse_scope(scope, &in6->sin6_scope_id);
    if (r != 0)
      return r;
  }
  in6->sin6_family = AF_INET6;
  addr->len = sizeof(*in6);
  return 0;
}


/* Host name syntax (RFC 1123): dot-separated labels of 1 to 63 letters,
 * digits, '-' or '_' (common in container and service names), at most 253
 * bytes plus an optional trailing dot. The last label must not be a
 * number: top-level domains never are (RFC 3696, 2), and glibc's resolver
 * would otherwise read "127.1" or "0x7f000001" as inet_aton forms. So an
 * IPv4 address is only ever the dotted quad inet_pton takes, and text that
 * is neither that nor a name fails without a lookup. */
static bool is_host_name(const char* host, size_t len) {
  const char* label;
  size_t label_len;
  size_t i;
  char c;

  if (len > 0 && host[len - 1] == '.')
    len--;
  if (len == 0 || len > ADDR_HOST_MAX - 1)
    return false;

  label = host;
  label_len = 0;
  for (i = 0; i < len; i++) {
    c = host[i];
    if (c == '.') {
      if (label_len == 0)
        return false;
      label = host + i + 1;
      label_len = 0;
      continue;
    }
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '-' || c == '_'))
      return false;
    if (++label_len > ADDR_LABEL_MAX)
      return false;
  }
  if (label_len == 0)
    return false;

  /* A number: all decimal digits, or "0x" and hex digits. */
  if (strspn(label, "0123456789") >= label_len)
    return false;
  if (label_len >= 2 && label[0] == '0' &&
      (label[1] == 'x' || label[1] == 'X') &&
      strspn(label + 2, "0123456789abcdefABCDEF") >= label_len - 2)
    return false;
  return true;
}


/* libuv's own translation is internal (uv__getaddrinfo_translate_error). */
static int eai_error(int eai) {
  switch (eai) {
  case EAI_AGAIN:
    return UV_EAI_AGAIN;
  case EAI_BADFLAGS:
    return UV_EAI_BADFLAGS;
  case EAI_FAIL:
    return UV_EAI_FAIL;
  case EAI_FAMILY:
    return UV_EAI_FAMILY;
  case EAI_MEMORY:
    return UV_EAI_MEMORY;
  case EAI_NONAME:
    return UV_EAI_NONAME;
  case EAI_OVERFLOW:
    return UV_EAI_OVERFLOW;
  case EAI_SERVICE:
    return UV_EAI_SERVICE;
  case EAI_SOCKTYPE:
    return UV_EAI_SOCKTYPE;
#if defined(EAI_ADDRFAMILY)
  case EAI_ADDRFAMILY:
    return UV_EAI_ADDRFAMILY;
#endif
#if defined(EAI_NODATA) && EAI_NODATA != EAI_NONAME
  case EAI_NODATA:
    return UV_EAI_NODATA;
#endif
#if defined(EAI_CANCELED)
  case EAI_CANCELED:
    return UV_EAI_CANCELED;
#endif
  case EAI_SYSTEM:
    /* errno 0 would turn the failure into a success. */
    return errno != 0 ? UVS__ERR(errno) : UV_EAI_FAIL;
  default:
    return UV_EAI_FAIL;
  }
}


/* Resolves a host name, blocking, as Python's socketserver does. IPv4 is
 * preferred because Python's servers default to AF_INET, so "localhost"
 * means 127.0.0.1 wherever /etc/hosts also lists ::1. The port is set by
 * the caller. */
static int resolve(const char* host, uvs_address_t* addr) {
  struct addrinfo hints;
  struct addrinfo* res;
  const struct addrinfo* ai;
  const struct addrinfo* v4;
  const struct addrinfo* v6;
  const struct addrinfo* pick;
  int eai;
  int r;

  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  /* One result per address instead of one per socket type. No
   * AI_ADDRCONFIG: glibc then finds nothing for "localhost" on a machine
   * whose only interface is loopback. */
  hints.ai_socktype =
      addr->transport == UVS_TRANSPORT_TCP ? SOCK_STREAM : SOCK_DGRAM;

  errno = 0;
  eai = getaddrinfo(host, NULL, &hints, &res);
  if (eai != 0)
    return eai_error(eai);

  v4 = NULL;
  v6 = NULL;
  for (ai = res; ai != NULL; ai = ai->ai_next) {
    if (ai->ai_addr == NULL)
      continue;
    if (ai->ai_family == AF_INET && v4 == NULL &&
        ai->ai_addrlen >= sizeof(struct sockaddr_in))
      v4 = ai;
    if (ai->ai_family == AF_INET6 && v6 == NULL &&
        ai->ai_addrlen >= sizeof(struct sockaddr_in6))
      v6 = ai;
  }
  pick = v4 != NULL ? v4 : v6;

  r = UV_EAI_NODATA;
  if (pick == NULL)
    goto out;
  if (pick->ai_family == AF_INET) {
    memcpy(&addr->u.in, pick->ai_addr, sizeof(addr->u.in));
    addr->len = sizeof(addr->u.in);
  } else {
    memcpy(&addr->u.in6, pick->ai_addr, sizeof(addr->u.in6));
    addr->len = sizeof(addr->u.in6);
  }
  r = 0;

out:
  freeaddrinfo(res);
  return r;
}


/* `text` follows "tcp://" or "udp://". */
static int parse_inet(const char* text, uvs_address_t* addr) {
  char host[ADDR_HOST_MAX + 1];
  const char* close;
  const char* colon;
  const char* port_text;
  size_t text_len;
  size_t host_len;
  size_t i;
  uint16_t port;
  int r;

  /* Bounded: the longest valid text is short, and the rest of an overlong
   * string is never read. */
  text_len = strnlen(text, ADDR_INET_MAX + 1);
  if (text_len > ADDR_INET_MAX)
    return UV_EINVAL;

  if (text[0] == '[') {
    /* An IPv6 literal: brackets keep its colons apart from the port's. */
    close = memchr(text, ']', text_len);
    if (close == NULL || close[1] != ':')
      return UV_EINVAL;
    host_len = (size_t) (close - text) - 1;
    port_text = close + 2;
  } else {
    colon = NULL;
    for (i = 0; i < text_len; i++) {
      if (text[i] == ':')
        colon = text + i;
    }
    if (colon == NULL)
      return UV_EINVAL;
    host_len = (size_t) (colon - text);
    port_text = colon + 1;
  }
  if (host_len == 0 || host_len > ADDR_HOST_MAX)
    return UV_EINVAL;

  /* The port first: malformed text must not cost a lookup. */
  r = parse_port(port_text, text_len - (size_t) (port_text - text), &port);
  if (r != 0)
    return r;

  memcpy(host, text[0] == '[' ? text + 1 : text, host_len);
  host[host_len] = '\0';

  if (text[0] == '[') {
    r = parse_ipv6(host, addr);
  } else if (inet_pton(AF_INET, host, &addr->u.in.sin_addr) == 1) {
    addr->u.in.sin_family = AF_INET;
    addr->len = sizeof(addr->u.in);
    r = 0;
  } else if (is_host_name(host, host_len)) {
    /* Also refuses "::1": an IPv6 literal needs its brackets. */
    r = resolve(host, addr);
  } else {
    r = UV_EINVAL;
  }
  if (r != 0)
    return r;

  /* sin_port and sin6_port sit at the same offset, but say which. */
  if (addr->u.sa.sa_family == AF_INET)
    addr->u.in.sin_port = htons(port);
  else
    addr->u.in6.sin6_port = htons(port);
  return 0;
}


/* `text` follows "unix:" or "unixgram:": the path, every byte of it. A
 * leading '@' names a Linux abstract socket; a file whose name starts with
 * '@' is reached as "./@name". */
static int parse_unix(const char* text, uvs_address_t* addr) {
  struct sockaddr_un* un;
  size_t len;

  un = &addr->u.un;
  /* Read one byte past what can fit, to tell "fits" from "too long". */
  len = strnlen(text, sizeof(un->sun_path) + 1);

  /* An empty path or abstract name names no socket. It is also what
   * uvs_address_format writes for an unnamed one ("unix:", "unix:@"),
   * which therefore does not parse back: there is nothing to bind. */
  if (len == 0 || (text[0] == '@' && len == 1))
    return UV_EINVAL;

  un->sun_family = AF_UNIX;
  if (text[0] == '@') {
    /* sun_path[0] == '\0', then the name; the length bounds the name,
     * which is not NUL-terminated. */
    if (len > sizeof(un->sun_path))
      return UV_ENAMETOOLONG;
    memcpy(un->sun_path + 1, text + 1, len - 1);
    addr->len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + len);
  } else {
    /* Keep room for the NUL: Linux would take a full sun_path without one,
     * but unlink and every other path call need it. */
    if (len + 1 > sizeof(un->sun_path))
      return UV_ENAMETOOLONG;
    memcpy(un->sun_path, text, len);
    addr->len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + len + 1);
  }
  return 0;
}


/* Writes "PREFIX1.2.3.4:80" or "PREFIX[::1%lo]:80" into `text`, which has
 * UVS_ADDRSTRLEN bytes, and its length to `len`. sin6_flowinfo is not
 * written: it is per-flow, not part of an address a user names. */
static int format_inet(const uvs_address_t* addr,
                       const char* prefix,
                       char* text,
                       size_t* len) {
  char host[INET6_ADDRSTRLEN];
  char scope[IF_NAMESIZE + 1];
  char name[IF_NAMESIZE];
  const struct sockaddr_in6* in6;
  unsigned port;
  int n;

  if (addr->u.sa.sa_family == AF_INET &&
      addr->len >= sizeof(struct sockaddr_in)) {
    if (inet_ntop(AF_INET, &addr->u.in.sin_addr, host, sizeof(host)) == NULL)
      return UV_EINVAL;
    port = ntohs(addr->u.in.sin_port);
    n = snprintf(text, UVS_ADDRSTRLEN, "%s%s:%u", prefix, host, port);
  } else if (addr->u.sa.sa_family == AF_INET6 &&
             addr->len >= sizeof(struct sockaddr_in6)) {
    in6 = &addr->u.in6;
    if (inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host)) == NULL)
      return UV_EINVAL;
    scope[0] = '\0';
    if (in6->sin6_scope_id != 0) {
      /* The name reads better, but only when it parses back to the same
       * index: a name with ']' or '%', or made of digits, would not. */
      if (if_indextoname(in6->sin6_scope_id, name) != NULL &&
          strpbrk(name, "]%") == NULL &&
          strspn(name, "0123456789") != strlen(name)) {
        snprintf(scope, sizeof(scope), "%%%s", name);
      } else {
        snprintf(scope, sizeof(scope), "%%%u", (unsigned) in6->sin6_scope_id);
      }
    }
    port = ntohs(in6->sin6_port);
    n = snprintf(text,
                 UVS_ADDRSTRLEN,
                 "%s[%s%s]:%u",
                 prefix,
                 host,
                 scope,
                 port);
  } else {
    return UV_EINVAL;
  }

  if (n < 0 || (size_t) n >= UVS_ADDRSTRLEN)
    return UV_EINVAL;
  *len = (size_t) n;
  return 0;
}


/* Writes "PREFIXPATH" or "PREFIX@NAME" into `text` (UVS_ADDRSTRLEN bytes,
 * which the longest sun_path fits) and its length to `len`. Path bytes are
 * copied as they are. */
static int format_unix(const uvs_address_t* addr,
                       const char* prefix,
                       size_t prefix_len,
                       char* text,
                       size_t* len) {
  const struct sockaddr_un* un;
  const char* path;
  size_t path_len;
  size_t room;

  un = &addr->u.un;
  if (un->sun_family != AF_UNIX)
    return UV_EINVAL;

  memcpy(text, prefix, prefix_len);
  *len = prefix_len;

  /* An unbound socket (an unnamed peer) has no path: "unix:", which
   * uvs_address_parse refuses on purpose. */
  if (addr->len <= offsetof(struct sockaddr_un, sun_path)) {
    text[*len] = '\0';
    return 0;
  }

  room = addr->len - offsetof(struct sockaddr_un, sun_path);
  if (un->sun_path[0] == '\0') {
    /* Abstract: the name is every byte the length covers. A NUL inside it
     * could not be written as text and read back. */
    path = un->sun_path + 1;
    path_len = room - 1;
    if (memchr(path, '\0', path_len) != NULL)
      return UV_EINVAL;
    text[(*len)++] = '@';
  } else {
    /* The kernel may count the NUL, or not for a full sun_path. */
    path = un->sun_path;
    path_len = strnlen(path, room);
  }

  if (*len + path_len >= UVS_ADDRSTRLEN)
    return UV_EINVAL;
  memcpy(text + *len, path, path_len);
  *len += path_len;
  text[*len] = '\0';
  return 0;
}


void uvs__addr_peer(uvs_address_t* peer,
                    uvs_transport_t transport,
                    const struct sockaddr* sa,
                    socklen_t len) {
  if (uvs__addr_from_sockaddr(peer, transport, sa, len) != 0) {
    memset(peer, 0, sizeof(*peer));
    peer->transport = transport;
  }
}
