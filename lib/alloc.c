/* SPDX-License-Identifier: MIT */
/*
 * Allocation. Every allocation in lib/ goes through uvs__malloc, uvs__calloc
 * and uvs__free, so that tests can make the Nth allocation fail and prove
 * that each failure path returns UV_ENOMEM and leaks nothing.
 */
#include "internal.h"

#include <stdatomic.h>
#include <stdlib.h>

/* Allocations left before failures start; negative: never fail. */
static atomic_long fail_after = -1;
/* Allocations made so far, for tests that prove a path allocates nothing. */
static atomic_ulong alloc_count;


static bool should_fail(void) {
  long left;
  atomic_fetch_add_explicit(&alloc_count, 1, memory_order_relaxed);
  left = atomic_load_explicit(&fail_after, memory_order_relaxed);
  if (left < 0)
    return false;
  if (left == 0)
    return true;
  atomic_fetch_sub_explicit(&fail_after, 1, memory_order_relaxed);
  return false;
}


void* uvs__malloc(size_t size) {
  if (should_fail())
    return NULL;
  return malloc(size);
}


void* uvs__calloc(size_t count, size_t size) {
  if (should_fail())
    return NULL;
  return calloc(count, size);
}


void uvs__free(void* ptr) {
  free(ptr);
}


void uvs__alloc_fail_after(long n) {
  atomic_store_explicit(&fail_after, n, memory_order_relaxed);
}


unsigned long uvs__alloc_count(void) {
  return atomic_load_explicit(&alloc_count, memory_order_relaxed);
}
