/* Placeholder until the fidelity harness lands (helper 'kv' replaces this file). */
#include "src/eval.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

int mk_eval_main(int argc, char **argv, mk_ctx_t *ctx) {
  bool help = false;
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) help = true;
  if (ctx->rank == 0) {
    if (help)
      printf("usage: morphkv eval --model M --prompts FILE.jsonl --new-tokens N --policies LIST "
             "--capacity C1,C2,... --window W --out DIR\n(not implemented yet)\n");
    else
      fprintf(stderr, "eval: not implemented yet\n");
  }
  return help ? 0 : 2;
}
