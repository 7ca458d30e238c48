/* Writes the synthetic test model (tests/testutil/synth_model.h, default params: llama, 8 query
 * heads over 2 KV heads, F32) to PATH, for tests that run the CLI on it.
 *   mk_synth_write PATH [HEAD_DIM]    (default 16; the CUDA backend's attention needs 64, 128, 256) */
#include <stdio.h>
#include <stdlib.h>

#include "tests/testutil/synth_model.h"

int main(int argc, char **argv) {
  if (argc != 2 && argc != 3) {
    fprintf(stderr, "usage: mk_synth_write PATH [HEAD_DIM]\n");
    return 2;
  }
  mk_synth_params_t p;
  mk_synth_params_default(&p);
  if (argc == 3) p.head_dim = atoi(argv[2]);
  return mk_synth_model_write(argv[1], &p) == 0 ? 0 : 1;
}
