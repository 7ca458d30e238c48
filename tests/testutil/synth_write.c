/* Writes the synthetic test model (tests/testutil/synth_model.h, default params: llama, 8 query
 * heads over 2 KV heads, F32) to PATH, for tests that run the CLI on it.
 *   mk_synth_write PATH */
#include <stdio.h>

#include "tests/testutil/synth_model.h"

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: mk_synth_write PATH\n");
    return 2;
  }
  mk_synth_params_t p;
  mk_synth_params_default(&p);
  return mk_synth_model_write(argv[1], &p) == 0 ? 0 : 1;
}
