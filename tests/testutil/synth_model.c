/* Synthetic llama / qwen2 GGUF writer (see synth_model.h for the weight rule). */
#include "tests/testutil/synth_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/testutil/gguf_writer.h"
#include "tests/testutil/testutil.h"

/* U+0120 (GPT-2's byte-level space) is written "G" below and replaced by "\xC4\xA0". */
static const char *const MERGES[] = {
    "G t", "h e", "i n", "e r", "a n", "o n", "r e", "G a", "G s", "G w", "G o", "G c", "e n",
    "a t", "o r", "G b", "e d", "G f", "i s", "e s", "i t", "G p", "G m", "a r", "G d", "G h",
    "a l", "G i", "o u", "G l", "l e", "s t", "n g", "Gt he", "Ga n", "Gan d", "i ng", "Go f",
    "Gt o", "Gi n",
};
#define N_MERGES ((int)(sizeof MERGES / sizeof MERGES[0]))
#define N_VOCAB (256 + N_MERGES + 1)

int mk_synth_n_vocab(void) { return N_VOCAB; }
int mk_synth_eot_id(void) { return N_VOCAB - 1; }

void mk_synth_params_default(mk_synth_params_t *p) {
  memset(p, 0, sizeof *p);
  p->n_layer = 2;
  p->n_head = 8;
  p->n_kv_head = 2;
  p->head_dim = 16;
  p->n_ff = 256;
  p->n_ctx = 512;
  p->wtype = MK_TYPE_F32;
  p->tied_output = false;
  p->rope_theta = 10000.0f;
  p->norm_eps = 1e-5f;
  p->seed = 1234;
  p->arch = MK_SYNTH_LLAMA;
  p->with_rope_freqs = false;
}

static void *xmalloc(size_t n) {
  void *q = calloc(n, 1);
  if (!q) {
    fprintf(stderr, "mk_synth_model_write: out of memory\n");
    abort();
  }
  return q;
}

/* GPT-2's byte -> code point map: printable Latin-1 bytes map to themselves, the others to
 * 256, 257, ... in byte order. */
static int byte_cp(int b) {
  if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) return b;
  int n = 0;
  for (int x = 0; x < b; x++)
    if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
  return 256 + n;
}

static int utf8_put(int cp, char *out) {
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  out[0] = (char)(0xC0 | (cp >> 6));
  out[1] = (char)(0x80 | (cp & 0x3F));
  return 2; /* code points here are < 0x800 */
}

/* "G" -> U+0120 in a merge part; returns the length written (out must hold 2*strlen+1). */
static size_t expand_space(const char *s, size_t n, char *out) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == 'G') {
      out[k++] = (char)0xC4;
      out[k++] = (char)0xA0;
    } else {
      out[k++] = s[i];
    }
  }
  out[k] = 0;
  return k;
}

/* Writes the tokenizer metadata. */
static void put_tokenizer(mk_gguf_writer_t *w) {
  char *texts[N_VOCAB];
  char *merges[N_MERGES];
  int32_t types[N_VOCAB];
  for (int b = 0; b < 256; b++) {
    texts[b] = xmalloc(4);
    utf8_put(byte_cp(b), texts[b]);
    types[b] = 1; /* normal */
  }
  for (int i = 0; i < N_MERGES; i++) {
    const char *m = MERGES[i], *sp = strchr(m, ' ');
    size_t la = (size_t)(sp - m), lb = strlen(sp + 1);
    char a[32], bpart[32];
    size_t na = expand_space(m, la, a), nb = expand_space(sp + 1, lb, bpart);
    merges[i] = xmalloc(na + nb + 2);
    texts[256 + i] = xmalloc(na + nb + 1);
    snprintf(merges[i], na + nb + 2, "%s %s", a, bpart);
    snprintf(texts[256 + i], na + nb + 1, "%s%s", a, bpart);
    types[256 + i] = 1;
  }
  texts[N_VOCAB - 1] = xmalloc(16);
  snprintf(texts[N_VOCAB - 1], 16, "%s", "<|endoftext|>");
  types[N_VOCAB - 1] = 3; /* control */
  mk_gw_kv_str(w, "tokenizer.ggml.model", "gpt2");
  mk_gw_kv_str(w, "tokenizer.ggml.pre", "gpt2");
  mk_gw_kv_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)texts, N_VOCAB);
  mk_gw_kv_arr(w, "tokenizer.ggml.token_type", MK_GGUF_INT32, types, N_VOCAB);
  mk_gw_kv_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges, N_MERGES);
  mk_gw_kv_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)(N_VOCAB - 1));
  mk_gw_kv_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)(N_VOCAB - 1));
  mk_gw_kv_bool(w, "tokenizer.ggml.add_bos_token", false);
  for (int i = 0; i < N_VOCAB; i++) free(texts[i]);
  for (int i = 0; i < N_MERGES; i++) free(merges[i]);
}

/* Quantizes one row of n floats (n a multiple of 32) into dst. */
static void quantize_row(mk_type_t t, const float *x, int64_t n, uint8_t *dst) {
  for (int64_t b = 0; b < n / 32; b++) {
    const float *v = x + b * 32;
    if (t == MK_TYPE_Q8_0) {
      float amax = 0;
      for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(v[i]));
      uint16_t dh = mk_f32_to_f16(amax / 127.0f);
      float d = mk_f16_to_f32(dh);
      memcpy(dst, &dh, 2);
      int8_t *q = (int8_t *)(dst + 2);
      for (int i = 0; i < 32; i++) {
        float r = d > 0 ? roundf(v[i] / d) : 0.0f;
        q[i] = (int8_t)fmaxf(-127.0f, fminf(127.0f, r));
      }
      dst += 34;
    } else { /* Q4_1: x = d * q + m, q in 0..15; elements i and i+16 share byte i */
      float lo = v[0], hi = v[0];
      for (int i = 1; i < 32; i++) {
        lo = fminf(lo, v[i]);
        hi = fmaxf(hi, v[i]);
      }
      uint16_t dh = mk_f32_to_f16((hi - lo) / 15.0f), mh = mk_f32_to_f16(lo);
      float d = mk_f16_to_f32(dh), m = mk_f16_to_f32(mh);
      memcpy(dst, &dh, 2);
      memcpy(dst + 2, &mh, 2);
      uint8_t *q = dst + 4;
      for (int i = 0; i < 16; i++) {
        int a = d > 0 ? (int)roundf((v[i] - m) / d) : 0, c = d > 0 ? (int)roundf((v[i + 16] - m) / d) : 0;
        a = a < 0 ? 0 : a > 15 ? 15 : a;
        c = c < 0 ? 0 : c > 15 ? 15 : c;
        q[i] = (uint8_t)(a | (c << 4));
      }
      dst += 20;
    }
  }
}

/* Adds a (rows, cols) matrix (GGUF ne = [cols, rows]) of uniform [-scale, scale) entries. */
static void put_matrix(mk_gguf_writer_t *w, const char *name, mk_type_t t, int64_t cols, int64_t rows, float scale,
                       uint64_t seed, uint64_t idx) {
  uint64_t s = seed ^ (0x9E3779B97F4A7C15ull * (idx + 1));
  mk_test_rand_u64(&s);
  float *x = xmalloc(sizeof(float) * (size_t)(rows * cols));
  for (int64_t i = 0; i < rows * cols; i++) x[i] = scale * mk_test_rand_f32(&s);
  int64_t ne[2] = {cols, rows};
  size_t nbytes = (size_t)rows * mk_type_row_bytes(t, cols);
  if (t == MK_TYPE_F32) {
    mk_gw_tensor(w, name, t, 2, ne, x, nbytes);
  } else {
    uint8_t *q = xmalloc(nbytes);
    for (int64_t r = 0; r < rows; r++) quantize_row(t, x + r * cols, cols, q + (size_t)r * mk_type_row_bytes(t, cols));
    mk_gw_tensor(w, name, t, 2, ne, q, nbytes);
    free(q);
  }
  free(x);
}

/* Adds an F32 vector of n entries add + mul * u (u uniform in [-1, 1)): norm weights, biases,
 * rope frequency factors. */
static void put_vec(mk_gguf_writer_t *w, const char *name, int64_t n, float add, float mul, uint64_t seed,
                    uint64_t idx) {
  uint64_t s = seed ^ (0x9E3779B97F4A7C15ull * (idx + 1));
  mk_test_rand_u64(&s);
  float *x = xmalloc(sizeof(float) * (size_t)n);
  for (int64_t i = 0; i < n; i++) x[i] = add + mul * mk_test_rand_f32(&s);
  int64_t ne[1] = {n};
  mk_gw_tensor(w, name, MK_TYPE_F32, 1, ne, x, sizeof(float) * (size_t)n);
  free(x);
}

static void put_norm(mk_gguf_writer_t *w, const char *name, int64_t n, uint64_t seed, uint64_t idx) {
  put_vec(w, name, n, 1.0f, 0.1f, seed, idx);
}

int mk_synth_model_write(const char *path, const mk_synth_params_t *p) {
  const int ne = p->n_head * p->head_dim, nq = p->n_head * p->head_dim, nkv = p->n_kv_head * p->head_dim;
  if (p->n_layer < 1 || p->n_head < 1 || p->n_kv_head < 1 || p->n_head % p->n_kv_head || p->head_dim < 2 ||
      p->head_dim % 2 || p->n_ff < 1 || p->n_ctx < 1) {
    fprintf(stderr, "mk_synth_model_write: invalid params (layers %d, heads %d/%d, head_dim %d, n_ff %d, ctx %d)\n",
            p->n_layer, p->n_head, p->n_kv_head, p->head_dim, p->n_ff, p->n_ctx);
    return -1;
  }
  if (p->arch != MK_SYNTH_LLAMA && p->arch != MK_SYNTH_QWEN2) {
    fprintf(stderr, "mk_synth_model_write: unknown architecture %d\n", (int)p->arch);
    return -1;
  }
  if (p->wtype != MK_TYPE_F32 && p->wtype != MK_TYPE_Q8_0 && p->wtype != MK_TYPE_Q4_1) {
    fprintf(stderr, "mk_synth_model_write: weight type %s is not offered (F32, Q8_0, Q4_1)\n", mk_type_name(p->wtype));
    return -1;
  }
  if (p->wtype != MK_TYPE_F32 && (ne % 32 || p->n_ff % 32)) {
    fprintf(stderr, "mk_synth_model_write: %s needs n_embd (%d) and n_ff (%d) to be multiples of 32\n",
            mk_type_name(p->wtype), ne, p->n_ff);
    return -1;
  }
  const char *arch = p->arch == MK_SYNTH_QWEN2 ? "qwen2" : "llama";
  char key[96];
#define KEY(suffix) (snprintf(key, sizeof key, "%s." suffix, arch), key)
  mk_gguf_writer_t *w = mk_gw_new();
  mk_gw_kv_str(w, "general.architecture", arch);
  mk_gw_kv_str(w, "general.name", "morphkv-synthetic");
  mk_gw_kv_u32(w, KEY("block_count"), (uint32_t)p->n_layer);
  mk_gw_kv_u32(w, KEY("embedding_length"), (uint32_t)ne);
  mk_gw_kv_u32(w, KEY("feed_forward_length"), (uint32_t)p->n_ff);
  mk_gw_kv_u32(w, KEY("attention.head_count"), (uint32_t)p->n_head);
  mk_gw_kv_u32(w, KEY("attention.head_count_kv"), (uint32_t)p->n_kv_head);
  mk_gw_kv_u32(w, KEY("context_length"), (uint32_t)p->n_ctx);
  mk_gw_kv_u32(w, KEY("vocab_size"), (uint32_t)N_VOCAB);
  mk_gw_kv_u32(w, KEY("rope.dimension_count"), (uint32_t)p->head_dim);
  mk_gw_kv_f32(w, KEY("rope.freq_base"), p->rope_theta);
  mk_gw_kv_f32(w, KEY("attention.layer_norm_rms_epsilon"), p->norm_eps);
#undef KEY
  put_tokenizer(w);

  const uint64_t seed = p->seed;
  const mk_type_t t = p->wtype;
  uint64_t idx = 0;
  put_matrix(w, "token_embd.weight", t, ne, N_VOCAB, 1.0f, seed, idx++);
  put_norm(w, "output_norm.weight", ne, seed, idx++);
  if (!p->tied_output) put_matrix(w, "output.weight", t, ne, N_VOCAB, sqrtf(3.0f / (float)ne), seed, idx++);
  else idx++;
  char name[64];
#define NAME(s) (snprintf(name, sizeof name, "blk.%d." s, l), name)
  for (int l = 0; l < p->n_layer; l++) {
    put_norm(w, NAME("attn_norm.weight"), ne, seed, idx++);
    put_norm(w, NAME("ffn_norm.weight"), ne, seed, idx++);
    put_matrix(w, NAME("attn_q.weight"), t, ne, nq, sqrtf(3.0f / (float)ne), seed, idx++);
    put_matrix(w, NAME("attn_k.weight"), t, ne, nkv, sqrtf(3.0f / (float)ne), seed, idx++);
    put_matrix(w, NAME("attn_v.weight"), t, ne, nkv, sqrtf(3.0f / (float)ne), seed, idx++);
    put_matrix(w, NAME("attn_output.weight"), t, nq, ne, sqrtf(3.0f / (float)nq), seed, idx++);
    put_matrix(w, NAME("ffn_gate.weight"), t, ne, p->n_ff, sqrtf(3.0f / (float)ne), seed, idx++);
    put_matrix(w, NAME("ffn_up.weight"), t, ne, p->n_ff, sqrtf(3.0f / (float)ne), seed, idx++);
    put_matrix(w, NAME("ffn_down.weight"), t, p->n_ff, ne, sqrtf(3.0f / (float)p->n_ff), seed, idx++);
  }
  /* tensors added after the original layout take numbers after it, so that the original
   * tensors keep their values */
  idx = 3 + 9 * (uint64_t)p->n_layer;
  if (p->with_rope_freqs) put_vec(w, "rope_freqs.weight", p->head_dim / 2, 2.5f, 1.5f, seed, idx);
  idx++;
  if (p->arch == MK_SYNTH_QWEN2) {
    for (int l = 0; l < p->n_layer; l++) {
      put_vec(w, NAME("attn_q.bias"), nq, 0.0f, 0.5f, seed, idx++);
      put_vec(w, NAME("attn_k.bias"), nkv, 0.0f, 0.5f, seed, idx++);
      put_vec(w, NAME("attn_v.bias"), nkv, 0.0f, 0.5f, seed, idx++);
    }
  }
#undef NAME
  int rc = mk_gw_write_file(w, path);
  mk_gw_free(w);
  if (rc != 0) fprintf(stderr, "mk_synth_model_write: cannot write %s\n", path);
  return rc == 0 ? 0 : -1;
}
