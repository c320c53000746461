/* SPDX-License-Identifier: MIT */
/*
 * What every fuzz target in this folder defines: libFuzzer's entry point,
 * called once per input. It returns 0 and aborts (through test.h's
 * ASSERT_* macros) when a property fails. The same sources link either
 * with libFuzzer (-Dfuzz=true) or with replay.c, which runs the seed
 * corpus through them in every build.
 */
#ifndef UVS_FUZZ_H
#define UVS_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

#endif /* UVS_FUZZ_H */
