/* Shared by the libFuzzer targets (tests/fuzz/README.md). A property that does not hold calls
 * FUZZ_CHECK's __builtin_trap path, which libFuzzer reports as a crash with the input saved. */
#ifndef MK_FUZZ_COMMON_H
#define MK_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define FUZZ_CHECK(cond, ...)                                          \
  do {                                                                 \
    if (!(cond)) {                                                     \
      fprintf(stderr, "fuzz property failed at %s:%d: %s: ", __FILE__, \
              __LINE__, #cond);                                        \
      fprintf(stderr, __VA_ARGS__);                                    \
      fputc('\n', stderr);                                             \
      __builtin_trap();                                                \
    }                                                                  \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
