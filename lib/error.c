/* SPDX-License-Identifier: MIT */
/*
 * Version and error text. uvs reports errors as negative libuv codes, so the
 * messages and names are libuv's, plus uvs's own few (UVS_ERRNO_MAP), which
 * sit below libuv's range.
 */
#include "internal.h"

#include <string.h>

#define UVS__STR2(x) #x
#define UVS__STR(x)  UVS__STR2(x)


unsigned int uvs_version(void) {
  return UVS_VERSION_HEX;
}


const char* uvs_version_string(void) {
  return UVS__STR(UVS_VERSION_MAJOR) "." UVS__STR(
      UVS_VERSION_MINOR) "." UVS__STR(UVS_VERSION_PATCH);
}


/* libuv allocates (and never frees) a string for a code it does not know,
 * so ask the reentrant form first and answer unknown codes ourselves. */
static bool is_known(int err) {
  char buf[64];
  if (err >= 0)
    return false;
  uv_err_name_r(err, buf, sizeof(buf));
  return strncmp(buf, "Unknown system error", 20) != 0;
}


const char* uvs_strerror(int err) {
#define UVS__ERRNO_MSG(name, value, message) \
 if (err == (value))                         \
  return message;
  UVS_ERRNO_MAP(UVS__ERRNO_MSG)
#undef UVS__ERRNO_MSG
  if (UVS_IS_ECHILD_EXIT(err))
    return "a forked child exited with an error status";
  if (UVS_IS_ECHILD_SIGNAL(err))
    return "a forked child was killed by a signal";
  if (err == 0)
    return "success";
  if (!is_known(err))
    return "unknown error";
  return uv_strerror(err);
}


const char* uvs_err_name(int err) {
#define UVS__ERRNO_NAME(name, value, message) \
 if (err == (value))                          \
  return #name;
  UVS_ERRNO_MAP(UVS__ERRNO_NAME)
#undef UVS__ERRNO_NAME
  if (UVS_IS_ECHILD_EXIT(err))
    return "ECHILDEXIT";
  if (UVS_IS_ECHILD_SIGNAL(err))
    return "ECHILDSIGNAL";
  if (err == 0)
    return "OK";
  if (!is_known(err))
    return "UNKNOWN";
  return uv_err_name(err);
}
