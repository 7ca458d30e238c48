/* Hugging Face directory loader (src/hf_model.c) on tiny checkpoints written here (config.json,
 * tokenizer.json, safetensors via tests/testutil/st_writer): a valid single-file and a sharded
 * checkpoint load and run; llama3 rope_scaling, tied embeddings and Qwen2 biases map as
 * documented; and each bad input of issue 12 is an error naming the file and the tensor: a missing
 * shard, an index that names a tensor in the wrong file, a shape or dtype that disagrees with
 * config.json, malformed JSON (config, index, tokenizer), an unsupported architecture, a shard
 * header length past the end of the file, a missing lm_head without tie_word_embeddings. */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "src/engine.h"
#include "src/gguf_build.h"
#include "src/hf_model.h"
#include "src/tokenizer.h"
#include "tests/testutil/st_writer.h"
#include "tests/testutil/testutil.h"

enum { E = 8, H = 2, KV = 1, HD = 4, FF = 16, L = 2, V = 260 };

typedef struct opts {
  const char *arch, *dtype, *torch_dtype, *extra_config; /* extra: raw JSON members appended */
  bool tied, shards, bias, unpadded; /* unpadded: headers not padded to 8 bytes (data misaligned) */
  const char *wrong_index_file; /* tensor model.norm.weight listed under this file */
  const char *bad_tensor;       /* this tensor written with a wrong shape */
  int64_t q_rows;               /* 0 = right */
} opts_t;

static char dir[256];

static void write_text(const char *name, const char *text) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  FILE *f = fopen(p, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

/* Byte-level vocabulary: the 256 GPT-2 byte characters, 3 merges, one special token. */
static void write_tokenizer(void) {
  json_t *vocab = json_object();
  for (int b = 0, n = 0; b < 256; b++) {
    bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    unsigned cp = keep ? (unsigned)b : (unsigned)(256 + n++);
    char s[4] = {0};
    if (cp < 0x80) s[0] = (char)cp;
    else s[0] = (char)(0xC0 | (cp >> 6)), s[1] = (char)(0x80 | (cp & 0x3F));
    json_object_set_new(vocab, s, json_integer(b));
  }
  json_object_set_new(vocab, "he", json_integer(256));
  json_object_set_new(vocab, "ll", json_integer(257));
  json_object_set_new(vocab, "hell", json_integer(258));
  json_object_set_new(vocab, "<|end|>", json_integer(259));
  json_t *tj = json_pack("{s:[{s:i,s:s,s:b}],s:n,s:{s:s,s:[{s:s,s:b},{s:s,s:b,s:b}]},s:{s:s},s:{s:s,s:o,s:[s,s,s]}}",
                         "added_tokens", "id", 259, "content", "<|end|>", "special", 1, "normalizer",
                         "pre_tokenizer", "type", "Sequence", "pretokenizers", "type", "Digits", "individual_digits", 1,
                         "type", "ByteLevel", "add_prefix_space", 0, "use_regex", 1, "decoder", "type", "ByteLevel",
                         "model", "type", "BPE", "vocab", vocab, "merges", "h e", "l l", "he ll");
  assert_non_null(tj);
  char p[512];
  snprintf(p, sizeof p, "%s/tokenizer.json", dir);
  assert_int_equal(json_dump_file(tj, p, 0), 0);
  json_decref(tj);
  write_text("tokenizer_config.json", "{\"eos_token\": \"<|end|>\", \"add_bos_token\": false, "
                                      "\"chat_template\": \"{{ '<|im_start|>' + message['role'] }}\"}");
}

static void write_config(const opts_t *o) {
  char buf[2048];
  snprintf(buf, sizeof buf,
           "{\"architectures\": [\"%s\"], \"hidden_size\": %d, \"intermediate_size\": %d, \"num_hidden_layers\": %d, "
           "\"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"vocab_size\": %d, \"rms_norm_eps\": 1e-5, "
           "\"rope_theta\": 10000.0, \"max_position_embeddings\": 64, \"tie_word_embeddings\": %s, "
           "\"torch_dtype\": \"%s\", \"eos_token_id\": 259%s%s}",
           o->arch ? o->arch : "LlamaForCausalLM", E, FF, L, H, KV, V, o->tied ? "true" : "false",
           o->torch_dtype ? o->torch_dtype : "bfloat16", o->extra_config ? ", " : "",
           o->extra_config ? o->extra_config : "");
  write_text("config.json", buf);
}

/* Deterministic weights of the given row-major shape, as dtype. */
static void add(mk_st_writer_t *w, const char *name, const char *dtype, int64_t r, int64_t c, uint64_t *seed) {
  int64_t n = r * (c ? c : 1);
  size_t es = strcmp(dtype, "F32") == 0 ? 4 : 2;
  uint8_t *b = malloc((size_t)n * es);
  for (int64_t i = 0; i < n; i++) {
    float f = 0.5f * mk_test_rand_f32(seed) + (strstr(name, "norm") ? 1.0f : 0.0f);
    uint16_t h = strcmp(dtype, "F16") == 0 ? mk_f32_to_f16(f) : mk_f32_to_bf16(f);
    if (es == 4) memcpy(b + 4 * i, &f, 4);
    else memcpy(b + 2 * i, &h, 2);
  }
  int64_t shape[2] = {r, c};
  mk_stw_tensor(w, name, dtype, c ? 2 : 1, shape, b, (size_t)n * es);
  free(b);
}

static void write_layer(mk_st_writer_t *w, const opts_t *o, int l, const char *dt, uint64_t *seed) {
  char n[128];
#define ADD(suf, r, c) (snprintf(n, sizeof n, "model.layers.%d.%s", l, suf), add(w, n, dt, r, c, seed))
  ADD("input_layernorm.weight", E, 0);
  ADD("post_attention_layernorm.weight", E, 0);
  ADD("self_attn.q_proj.weight", o->q_rows ? o->q_rows : H * HD, E);
  ADD("self_attn.k_proj.weight", KV * HD, E);
  ADD("self_attn.v_proj.weight", KV * HD, E);
  ADD("self_attn.o_proj.weight", E, H * HD);
  ADD("mlp.gate_proj.weight", FF, E);
  ADD("mlp.up_proj.weight", FF, E);
  ADD("mlp.down_proj.weight", E, FF);
  if (o->bias) {
    ADD("self_attn.q_proj.bias", H * HD, 0);
    ADD("self_attn.k_proj.bias", KV * HD, 0);
    ADD("self_attn.v_proj.bias", KV * HD, 0);
  }
#undef ADD
}

static void write_file(mk_st_writer_t *w, const char *name) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  assert_int_equal(mk_stw_write_file(w, p), 0);
  mk_stw_free(w);
}

/* A whole checkpoint. Shards: layer 0 + embeddings in shard 1, the rest in shard 2. */
static void write_ckpt(const opts_t *o) {
  strcpy(dir, "/tmp/mk_hf_XXXXXX");
  assert_non_null(mkdtemp(dir));
  write_config(o);
  write_tokenizer();
  const char *dt = o->dtype ? o->dtype : "BF16";
  uint64_t seed = 42;
  mk_st_writer_t *w = mk_stw_new();
  mk_stw_set_pad(w, !o->unpadded);
  add(w, "model.embed_tokens.weight", dt, V, E, &seed);
  write_layer(w, o, 0, dt, &seed);
  if (o->shards) {
    write_file(w, "model-00001-of-00002.safetensors");
    w = mk_stw_new();
  }
  for (int l = 1; l < L; l++) write_layer(w, o, l, dt, &seed);
  add(w, "model.norm.weight", dt, E, 0, &seed);
  if (!o->tied) add(w, "lm_head.weight", dt, V, E, &seed);
  if (!o->shards) {
    write_file(w, "model.safetensors");
    return;
  }
  write_file(w, "model-00002-of-00002.safetensors");
  char idx[8192];
  int n = snprintf(idx, sizeof idx, "{\"metadata\": {}, \"weight_map\": {\"model.embed_tokens.weight\": "
                   "\"model-00001-of-00002.safetensors\", \"model.norm.weight\": \"%s\"",
                   o->wrong_index_file ? o->wrong_index_file : "model-00002-of-00002.safetensors");
  static const char *sufs[] = {"input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
                               "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                               "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"};
  for (int l = 0; l < L; l++)
    for (int s = 0; s < 9; s++)
      n += snprintf(idx + n, sizeof idx - (size_t)n, ", \"model.layers.%d.%s\": \"model-0000%d-of-00002.safetensors\"",
                    l, sufs[s], l == 0 ? 1 : 2);
  if (!o->tied) n += snprintf(idx + n, sizeof idx - (size_t)n, ", \"lm_head.weight\": \"model-00002-of-00002.safetensors\"");
  snprintf(idx + n, sizeof idx - (size_t)n, "}}");
  write_text("model.safetensors.index.json", idx);
}

static void rm_ckpt(void) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

/* Opens the checkpoint and expects failure with the given fragments in the message. */
static void expect_fail(const char *want1, const char *want2) {
  mk_hf_t *h = NULL;
  mk_error_t err = {{0}};
  int rc = mk_hf_open(dir, &h, &err);
  if (rc == 0 || !strstr(err.msg, want1) || (want2 && !strstr(err.msg, want2)))
    print_error("rc %d, message: %s (wanted '%s' and '%s')\n", rc, err.msg, want1, want2 ? want2 : "");
  assert_int_equal(rc, -1);
  assert_null(h);
  assert_non_null(strstr(err.msg, dir));
  assert_non_null(strstr(err.msg, want1));
  if (want2) assert_non_null(strstr(err.msg, want2));
  rm_ckpt();
}

static void check_valid_and_run(void) {
  mk_hf_t *h = NULL;
  mk_error_t err = {{0}};
  int rc = mk_hf_open(dir, &h, &err);
  if (rc) print_error("%s\n", err.msg);
  assert_int_equal(rc, 0);
  mk_tensor_source_t src = mk_hf_tensor_source(h);
  const mk_tensor_info_t *t = mk_tensor_find(&src, "blk.1.attn_q.weight");
  assert_non_null(t);
  assert_int_equal(t->ne[0], E);
  assert_int_equal(t->ne[1], H * HD);
  assert_int_equal(t->type, MK_TYPE_BF16);
  t = mk_tensor_find(&src, "output_norm.weight");
  assert_int_equal(t->type, MK_TYPE_F32);
  assert_non_null(mk_tensor_find(&src, "token_embd.weight"));
  mk_hf_close(h);
  /* the engine runs it, and the tokenizer came from tokenizer.json */
  mk_engine_t *e = NULL;
  mk_engine_params_t p = {.model_path = dir, .backend = {.kind = MK_BACKEND_CPU, .n_threads = 1, .simd = -1}};
  rc = mk_engine_open(&e, &p, NULL, &err);
  if (rc) print_error("%s\n", err.msg);
  assert_int_equal(rc, 0);
  const mk_tokenizer_t *tok = mk_engine_tokenizer(e);
  int32_t ids[16];
  assert_int_equal(mk_tok_encode(tok, "hello<|end|>", 12, false, true, ids, 16, &err), 3);
  assert_int_equal(ids[0], 258); /* "hell" by the merges */
  assert_int_equal(ids[1], 'o');
  assert_int_equal(ids[2], 259); /* the special added token */
  assert_int_equal(mk_tok_encode(tok, "12", 2, false, true, ids, 16, &err), 2); /* Digits: one per digit */
  assert_true(mk_tok_is_eog(tok, 259));
  mk_kv_config_t kv;
  mk_kv_config_default(&kv);
  assert_int_equal(mk_engine_begin(e, &kv, 1, 8, 8, &err), 0);
  float logits[V];
  assert_int_equal(mk_engine_step(e, 0, ids, 2, false, logits, &err), 0);
  for (int i = 0; i < V; i++) assert_true(isfinite(logits[i]));
  mk_engine_close(e);
}

static void test_valid_single_file(void **state) {
  (void)state;
  write_ckpt(&(opts_t){0});
  check_valid_and_run();
  rm_ckpt();
  write_ckpt(&(opts_t){.unpadded = true}); /* misaligned matrices get aligned copies */
  check_valid_and_run();
  rm_ckpt();
}

static void test_valid_sharded_tied_f16(void **state) {
  (void)state;
  write_ckpt(&(opts_t){.shards = true, .tied = true, .dtype = "F16", .torch_dtype = "float16"});
  mk_hf_t *h = NULL;
  mk_error_t err = {{0}};
  assert_int_equal(mk_hf_open(dir, &h, &err), 0);
  assert_int_equal(mk_hf_n_files(h), 2);
  mk_tensor_source_t src = mk_hf_tensor_source(h);
  assert_null(mk_tensor_find(&src, "output.weight")); /* tied: the binder uses token_embd */
  assert_int_equal(mk_tensor_find(&src, "blk.0.ffn_down.weight")->type, MK_TYPE_F16);
  mk_hf_close(h);
  rm_ckpt();
}

static void test_llama3_rope_and_qwen2_bias(void **state) {
  (void)state;
  write_ckpt(&(opts_t){.extra_config = "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
                                       "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
                                       "\"original_max_position_embeddings\": 64}"});
  mk_hf_t *h = NULL;
  mk_error_t err = {{0}};
  assert_int_equal(mk_hf_open(dir, &h, &err), 0);
  mk_tensor_source_t src = mk_hf_tensor_source(h);
  const mk_tensor_info_t *rf = mk_tensor_find(&src, "rope_freqs.weight");
  assert_non_null(rf);
  assert_int_equal(rf->ne[0], HD / 2);
  /* head_dim 4, theta 1e4: wavelengths 2*pi (< 64/4: factor 1) and 2*pi*100 (> 64/1: factor 8) */
  assert_float_equal(((const float *)rf->data)[0], 1.0f, 0);
  assert_float_equal(((const float *)rf->data)[1], 8.0f, 0);
  mk_hf_close(h);
  rm_ckpt();
  write_ckpt(&(opts_t){.arch = "Qwen2ForCausalLM", .bias = true});
  assert_int_equal(mk_hf_open(dir, &h, &err), 0);
  src = mk_hf_tensor_source(h);
  const mk_tensor_info_t *b = mk_tensor_find(&src, "blk.1.attn_k.bias");
  assert_non_null(b);
  assert_int_equal(b->type, MK_TYPE_F32); /* converted from BF16 */
  assert_int_equal(b->ne[0], KV * HD);
  mk_hf_close(h);
  mk_engine_t *e = NULL;
  mk_engine_params_t p = {.model_path = dir, .backend = {.kind = MK_BACKEND_CPU, .n_threads = 1, .simd = -1}};
  assert_int_equal(mk_engine_open(&e, &p, NULL, &err), 0);
  mk_engine_close(e);
  rm_ckpt();
}

static void test_bad_shards(void **state) {
  (void)state;
  write_ckpt(&(opts_t){.shards = true});
  char p[512];
  snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dir);
  assert_int_equal(unlink(p), 0);
  expect_fail("model-00002-of-00002.safetensors", "missing shard");
  write_ckpt(&(opts_t){.shards = true, .wrong_index_file = "model-00001-of-00002.safetensors"});
  expect_fail("model-00001-of-00002.safetensors: tensor 'model.norm.weight' is not in this file", NULL);
  write_ckpt(&(opts_t){.shards = true});
  snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dir);
  FILE *f = fopen(p, "wb"); /* header length 0xffffff, 2 header bytes */
  assert_int_equal(fwrite("\xff\xff\xff\x00\x00\x00\x00\x00{}", 1, 10, f), 10);
  assert_int_equal(fclose(f), 0);
  expect_fail("model-00002-of-00002.safetensors: header length", "past the end of the file");
  write_ckpt(&(opts_t){.shards = true});
  write_text("model.safetensors.index.json", "{\"weight_map\": {\"a\": ");
  expect_fail("model.safetensors.index.json: malformed JSON", NULL);
}

static void test_bad_config(void **state) {
  (void)state;
  write_ckpt(&(opts_t){.q_rows = 6});
  expect_fail("model.safetensors: tensor 'model.layers.0.self_attn.q_proj.weight' has shape [6, 8]", "needs [8, 8]");
  write_ckpt(&(opts_t){.torch_dtype = "float16"});
  expect_fail("model.safetensors: tensor 'model.embed_tokens.weight' is bfloat16", "torch_dtype float16");
  write_ckpt(&(opts_t){.arch = "GPT2LMHeadModel"});
  expect_fail("config.json: unsupported architecture 'GPT2LMHeadModel'", NULL);
  write_ckpt(&(opts_t){.tied = true, .extra_config = "\"x\": 1"});
  write_text("config.json", "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 8,,}");
  expect_fail("config.json: malformed JSON at line 1", NULL);
  write_ckpt(&(opts_t){.tied = true});
  write_config(&(opts_t){.tied = false});
  expect_fail("no tensor 'lm_head.weight'", "tie_word_embeddings");
  write_ckpt(&(opts_t){.extra_config = "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0}"});
  expect_fail("config.json: rope_scaling type 'yarn' is not supported", NULL);
  write_ckpt(&(opts_t){0});
  write_text("tokenizer.json", "{\"model\": [}");
  expect_fail("tokenizer.json: malformed JSON", NULL);
  write_ckpt(&(opts_t){.extra_config = "\"num_hidden_layers_x\": 1"});
  write_text("tokenizer.json", "{\"model\": {\"type\": \"Unigram\"}, \"decoder\": {\"type\": \"ByteLevel\"}}");
  expect_fail("tokenizer.json: tokenizer model 'Unigram' is not supported", NULL);
}

/* `morphkv inspect DIR` and `morphkv generate --model DIR` on the tiny checkpoint. The CLI runs
 * MPI_Init, whose own allocations LeakSanitizer reports at exit (as for a GGUF): leak detection is
 * off for the child; this process checks the loader's own memory. */
static void test_cli_inspect_generate(void **state) {
  (void)state;
  const char *bin = getenv("MORPHKV_BINARY");
  if (!bin) skip();
  write_ckpt(&(opts_t){.shards = true});
  char cmd[1024], out[16384];
  snprintf(cmd, sizeof cmd, "ASAN_OPTIONS=detect_leaks=0 OMP_NUM_THREADS=1 '%s' inspect '%s' 2>&1", bin, dir);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  size_t n = fread(out, 1, sizeof out - 1, p);
  out[n] = 0;
  int rc = pclose(p);
  if (rc != 0) print_error("%s\n", out);
  assert_int_equal(rc, 0);
  assert_non_null(strstr(out, "Hugging Face checkpoint: 2 safetensors files"));
  assert_non_null(strstr(out, "n_layer 2, n_embd 8, n_head 2, n_kv_head 1, head_dim 4, n_ff 16"));
  assert_non_null(strstr(out, "rope neox"));
  assert_non_null(strstr(out, "<- model.layers.1.mlp.down_proj.weight (model-00002-of-00002.safetensors, BF16)"));
  snprintf(cmd, sizeof cmd, "ASAN_OPTIONS=detect_leaks=0 OMP_NUM_THREADS=1 '%s' generate --model '%s' --prompt hello --temperature 0 "
           "--max-new-tokens 3 --ignore-eos --quiet 2>&1", bin, dir);
  p = popen(cmd, "r");
  assert_non_null(p);
  n = fread(out, 1, sizeof out - 1, p);
  out[n] = 0;
  rc = pclose(p);
  if (rc != 0) print_error("%s\n", out);
  assert_int_equal(rc, 0);
  rm_ckpt();
}

/* tokenizer.json beyond the demo model's (tests/golden/hf/make_hf_tokenizer_golden.py): a
 * SentencePiece-style one (Prepend/Replace normalizer, byte fallback) and a byte-level one with
 * Llama 3's Split regex, against the ids of the `tokenizers` library. */
static void check_tokenizer_dir(const char *name, json_t *golden) {
  char key[64], d[512];
  snprintf(key, sizeof key, "%s_n_vocab", name);
  int n_vocab = (int)json_integer_value(json_object_get(golden, key));
  snprintf(d, sizeof d, "%s", mk_test_source_path("tests/golden/hf/tok_"));
  strncat(d, name, sizeof d - strlen(d) - 1);
  json_t *config = json_object();
  mk_gb_t b = {0};
  mk_error_t err = {{0}};
  int rc = mk_hf_tokenizer_meta(d, config, n_vocab, &b, &err);
  if (rc) print_error("%s\n", err.msg);
  assert_int_equal(rc, 0);
  size_t n = 0;
  uint8_t *buf = mk_gb_finish(&b, &n);
  mk_gguf_t *g = NULL;
  assert_int_equal(mk_gguf_open_memory(buf, n, name, &g, &err), 0);
  mk_tokenizer_t *tok = NULL;
  rc = mk_tok_load(g, &tok, &err);
  if (rc) print_error("%s\n", err.msg);
  assert_int_equal(rc, 0);
  const json_t *cases = json_object_get(golden, name);
  int bad = 0;
  for (size_t i = 0; i < json_array_size(cases); i++) {
    const json_t *c = json_array_get(cases, i), *want = json_object_get(c, "ids");
    const char *text = json_string_value(json_object_get(c, "text"));
    int32_t ids[256];
    int got = mk_tok_encode(tok, text, strlen(text), false, true, ids, 256, &err);
    bool same = got == (int)json_array_size(want);
    for (int k = 0; same && k < got; k++) same = ids[k] == json_integer_value(json_array_get(want, (size_t)k));
    if (!same) {
      bad++;
      fprintf(stderr, "%s: '%s': %d ids (", name, text, got);
      for (int k = 0; k < got; k++) fprintf(stderr, "%s%d", k ? " " : "", ids[k]);
      fprintf(stderr, "), tokenizers %zu\n", json_array_size(want));
    }
  }
  assert_int_equal(bad, 0);
  mk_tok_free(tok);
  mk_gguf_close(g);
  free(buf);
  json_decref(config);
}

static void test_tokenizer_json_families(void **state) {
  (void)state;
  json_error_t je;
  json_t *golden = json_load_file(mk_test_source_path("tests/golden/hf/hf_tok_cases.json"), 0, &je);
  assert_non_null(golden);
  check_tokenizer_dir("split", golden);
  check_tokenizer_dir("spm", golden);
  json_decref(golden);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_valid_single_file),   cmocka_unit_test(test_valid_sharded_tied_f16),
      cmocka_unit_test(test_llama3_rope_and_qwen2_bias), cmocka_unit_test(test_bad_shards),
      cmocka_unit_test(test_bad_config),          cmocka_unit_test(test_cli_inspect_generate),
      cmocka_unit_test(test_tokenizer_json_families),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
