/* Error reporting for library code.
 *
 * Library functions never exit and never print: they return 0 on success or -1 on failure and,
 * on failure, fill an mk_error_t with one sentence that names the thing at fault (file, tensor,
 * key, rank). Only the CLI (src/main.c) and launch/ decide to abort. */
#ifndef MK_ERROR_H
#define MK_ERROR_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct mk_error {
  char msg[1024];
} mk_error_t;

/* Sets err->msg (printf-style) and returns -1, so callers can write `return mk_fail(err, ...)`.
 * err may be NULL. */
static inline int mk_fail(mk_error_t *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline int mk_fail(mk_error_t *err, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
  }
  return -1;
}

/* Prefixes an existing message with context ("loading model.gguf: <old message>"). */
static inline void mk_error_prefix(mk_error_t *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline void mk_error_prefix(mk_error_t *err, const char *fmt, ...) {
  if (!err) return;
  char head[512], old[sizeof err->msg];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(head, sizeof head, fmt, ap);
  va_end(ap);
  memcpy(old, err->msg, sizeof old);
  old[sizeof old - 1] = 0;
  /* truncation is fine here: a long message keeps its head */
  size_t h = strlen(head);
  if (h > sizeof err->msg - 3) h = sizeof err->msg - 3;
  memcpy(err->msg, head, h);
  err->msg[h] = ':';
  err->msg[h + 1] = ' ';
  size_t rest = sizeof err->msg - h - 3, o = strlen(old);
  if (o > rest) o = rest;
  memcpy(err->msg + h + 2, old, o);
  err->msg[h + 2 + o] = 0;
}

#endif
