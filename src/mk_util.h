/* Small helpers shared by the core library (one definition each). */
#ifndef MK_UTIL_H
#define MK_UTIL_H

#include <stddef.h>

/* n rounded up to a multiple of 16 bytes (arena offsets of policy and backend state). */
static inline size_t mk_align16(size_t n) { return (n + 15) & ~(size_t)15; }

#endif
