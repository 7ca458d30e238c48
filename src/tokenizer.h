/* Tokenizer built from GGUF metadata (tokenizer.ggml.*).
 *
 * Models: "gpt2" = byte-level BPE (SmolLM2, Llama 3, Qwen2) with the regex pre-tokenizer named by
 * tokenizer.ggml.pre (PCRE2); "llama" = SentencePiece-style BPE over scores with byte fallback
 * (Llama 2, Mistral). Special/control tokens in the text are matched first when
 * parse_special is set. Decoding is streamed through mk_tok_stream_t, which never emits a
 * partial UTF-8 character. */
#ifndef MK_TOKENIZER_H
#define MK_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "src/gguf.h"
#include "src/mk_error.h"

typedef enum mk_tok_kind { MK_TOK_BPE = 0, MK_TOK_SPM = 1 } mk_tok_kind_t;

typedef struct mk_tokenizer mk_tokenizer_t;

int mk_tok_load(const mk_gguf_t *g, mk_tokenizer_t **out, mk_error_t *err);
void mk_tok_free(mk_tokenizer_t *t);

mk_tok_kind_t mk_tok_kind(const mk_tokenizer_t *t);
const char *mk_tok_pre_name(const mk_tokenizer_t *t); /* e.g. "smollm", "llama3", "qwen2" */
/* false when tokenizer.ggml.pre named no known regex set and llama.cpp's default set is used */
bool mk_tok_pre_known(const mk_tokenizer_t *t);
int mk_tok_n_vocab(const mk_tokenizer_t *t);
int32_t mk_tok_bos(const mk_tokenizer_t *t); /* -1 if none */
int32_t mk_tok_eos(const mk_tokenizer_t *t);
bool mk_tok_add_bos(const mk_tokenizer_t *t); /* tokenizer.ggml.add_bos_token */
/* true for EOS, EOT (<|eot_id|>, <|im_end|>, <|endoftext|>) and other end-of-generation ids */
bool mk_tok_is_eog(const mk_tokenizer_t *t, int32_t id);
/* Id of a token text, or -1. */
int32_t mk_tok_find(const mk_tokenizer_t *t, const char *text);
/* The vocabulary text of a token (NUL-terminated, valid while t lives), or NULL for a bad id. */
const char *mk_tok_text(const mk_tokenizer_t *t, int32_t id);

/* Encodes text (len bytes). add_bos: prepend BOS if the model has one. parse_special: text like
 * "<|im_start|>" becomes the special token. Returns the count written, or -1 with err; if the
 * result exceeds cap, returns the needed count (call again with a larger buffer). */
int mk_tok_encode(const mk_tokenizer_t *t, const char *text, size_t len, bool add_bos,
                  bool parse_special, int32_t *ids, int cap, mk_error_t *err);

/* The raw bytes of one token as the model sees them (after byte-level / SPM decoding), written
 * to buf; returns byte count (may be > cap: then nothing useful was written), -1 for a bad id. */
int mk_tok_piece(const mk_tokenizer_t *t, int32_t id, char *buf, int cap);

/* Streaming detokenizer: holds back bytes of an incomplete UTF-8 character. */
typedef struct mk_tok_stream {
  char pending[8];
  int n_pending;
} mk_tok_stream_t;
/* Appends token id's text; writes complete UTF-8 bytes to out (cap >= 256 is enough for any
 * token); returns bytes written. The output is always valid UTF-8 (an invalid byte sequence
 * becomes U+FFFD). -1 for a bad id or if out is too small (then nothing is consumed). */
int mk_tok_stream_push(const mk_tokenizer_t *t, mk_tok_stream_t *s, int32_t id, char *out, int cap);
/* Flushes what is pending (invalid sequences become U+FFFD). */
int mk_tok_stream_flush(mk_tok_stream_t *s, char *out, int cap);

/* Chat templates. */
typedef enum mk_chat_tmpl { MK_CHAT_NONE = 0, MK_CHAT_CHATML, MK_CHAT_LLAMA3, MK_CHAT_LLAMA2 } mk_chat_tmpl_t;
/* Picks a template from tokenizer.chat_template (substring tests), or NONE. */
mk_chat_tmpl_t mk_chat_detect(const mk_gguf_t *g);
int mk_chat_parse(const char *name, mk_chat_tmpl_t *out); /* "chatml", "llama3", "llama2" */
/* Renders one user turn (with the model's default system prompt where the template has one, or
 * `system` if non-NULL) followed by the assistant prefix. Returns a malloc'd string. */
char *mk_chat_render(mk_chat_tmpl_t tmpl, const char *system, const char *user);
/* Notes on mk_chat_render: system == NULL means the template's default (ChatML: SmolLM2's
 * "You are a helpful AI assistant named SmolLM, trained by Hugging Face"; Llama 2/3: none); a
 * non-NULL system (even "") renders a system turn. No template writes the BOS text (as in
 * llama.cpp's built-in templates): encode the result with add_bos = mk_tok_add_bos(t) and
 * parse_special = true. Llama 2/3 trim the contents as their Jinja templates do.
 * The default system prompt written literally in the model's ChatML template
 * ("<|im_start|>system\n...<|im_end|>"), malloc'd, or NULL if it has none: pass it as `system`
 * to match another ChatML model exactly. */
char *mk_chat_default_system(const mk_gguf_t *g);

#endif
