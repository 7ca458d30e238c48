/* Continuous batching (src/batch.h): admission under the KV budget, chunked prefill, per-sequence
 * sampling and stop rules. Invariant: the steps depend only on the requests and the parameters
 * (no clock, no rank), so all ranks of a run stay in lockstep.
 *
 * Pipeline stages (mk_engine_pipe_depth D > 1): each step is one tick of the engine's pipeline, a
 * micro-batch enters and the one that entered D - 1 ticks ago comes back with its logits. A
 * sequence whose sample is in flight (its item wanted logits) waits for it; a prompt chunk that
 * wants none does not, so a long prompt's chunks follow each other through the stages. A
 * micro-batch carries at most ceil(slots / D) items, so D micro-batches in flight share the
 * sequences and every stage has work. D = 1 is the plain schedule (every sequence, every pass).
 * Under stages only the last stage has the logits: it samples (each sequence's own sampler) and
 * every rank gets the token ids, 4 bytes each, instead of the logit rows. */
#define _POSIX_C_SOURCE 200809L
#include "src/batch.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "src/tokenizer.h"

enum { SEQ_FREE = 0, SEQ_PREFILL, SEQ_DECODE };

typedef struct pending {
  mk_batch_request_t r; /* prompt and stop owned */
  size_t cost;
  double t_submit;
} pending_t;

typedef struct bseq {
  int state;
  pending_t p;
  int fed;         /* prompt tokens fed */
  int32_t *hist;   /* prompt + generated */
  int n_hist, n_gen;
  int32_t next;    /* the token to feed next (decode) */
  mk_sampler_t *smp;
  mk_tok_stream_t stream;
  char *text;
  size_t len, cap;
  size_t stop_from; /* a stop string cannot start before this byte */
  long long order; /* admission number: prefills are fed oldest first */
  bool waiting;    /* its sample is in the pipeline */
  double t_admit, t_prefilled;
} bseq_t;

struct mk_batch {
  mk_engine_t *e;
  mk_batch_params_t p;
  int n_slots_head;   /* cache slots per head */
  size_t slot_bytes;  /* K/V bytes of one slot over all layers and heads (all ranks) */
  size_t state_bytes; /* bounded policies: policy state of one sequence (all ranks) */
  bool full;          /* full cache: cost by prompt + max_new */
  int n_seq;
  bseq_t *seqs;
  pending_t *queue;
  int q_head, q_len, q_cap;
  size_t reserved;
  int done, max_running;
  long long generated, steps, n_admitted;
  double t0;
  bool started;
  mk_batch_pass_t *passes;
  size_t passes_cap;
  mk_engine_item_t *items;
  int *item_seq;
  float *logits;
  /* the pipeline: flight[t % depth] = the sequences of tick t's items that want logits */
  int depth, per_tick; /* mk_engine_pipe_depth; items per micro-batch */
  int **flight, *n_flight;
  int32_t *picked;     /* (slots) the tokens of the micro-batch that came back */
  int n_flying;        /* ticks in flight that wait for logits */
  long long tick;
};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

size_t mk_batch_seq_bytes(const mk_batch_t *b, int n_prompt, int max_new_tokens) {
  if (b->full) return b->slot_bytes * ((size_t)n_prompt + (size_t)max_new_tokens);
  return b->slot_bytes * (size_t)b->n_slots_head + b->state_bytes;
}

int mk_batch_slots(const mk_batch_t *b) { return b->n_seq; }

/* Slots per head, slot bytes and state bytes, as kvcache/kvcache.c sizes them. */
static int size_costs(mk_batch_t *b, mk_error_t *err) {
  const mk_model_config_t *c = mk_engine_config(b->e);
  const mk_kv_policy_ops_t *ops = mk_kv_policy_get(b->p.kv.policy);
  if (!ops) return mk_fail(err, "--kv-policy %s: not available", mk_kv_policy_name(b->p.kv.policy));
  b->full = b->p.kv.policy == MK_KV_FULL;
  /* a prompt longer than a chunk is fed in pieces: the cache then holds the budget + a chunk */
  int prompt = b->p.max_prompt;
  if (!b->full && prompt > b->p.prefill_chunk) prompt = b->p.kv.capacity + b->p.prefill_chunk;
  b->n_slots_head = ops->slots_needed(&b->p.kv, prompt, b->p.max_total);
  const size_t heads = (size_t)c->n_layer * (size_t)c->n_kv_head;
  b->slot_bytes = 2 * (size_t)c->head_dim * mk_kv_elem_bytes(b->p.kv.dtype) * heads;
  size_t st = ops->state_bytes(&b->p.kv, b->n_slots_head, c->head_dim, c->n_head / c->n_kv_head);
  b->state_bytes = ((st + 63) & ~(size_t)63) * heads;
  return 0;
}

int mk_batch_new(mk_batch_t **out, mk_engine_t *e, const mk_batch_params_t *p, mk_error_t *err) {
  *out = NULL;
  if (p->max_seqs < 1) return mk_fail(err, "--max-seqs %d: must be >= 1", p->max_seqs);
  if (p->prefill_chunk < 1) return mk_fail(err, "--prefill-chunk %d: must be >= 1", p->prefill_chunk);
  if (p->max_prompt < 1 || p->max_total < p->max_prompt || p->min_total < 1)
    return mk_fail(err, "batch: no request to run (longest prompt %d, longest total %d)", p->max_prompt, p->max_total);
  mk_batch_t *b = calloc(1, sizeof *b);
  if (!b) return mk_fail(err, "out of memory");
  b->e = e;
  b->p = *p;
  if (size_costs(b, err) != 0) {
    free(b);
    return -1;
  }
  long n = p->max_seqs;
  if (p->kv_memory > 0) {
    /* the cheapest sequence of the run: the shortest total under the full cache */
    const size_t least = b->full ? b->slot_bytes * (size_t)p->min_total : mk_batch_seq_bytes(b, 0, 0);
    if (least > p->kv_memory) {
      mk_fail(err, "--kv-memory %zu bytes holds not even one sequence: one needs %zu bytes (%s: %s; %zu K/V bytes "
              "per token slot over %d layers x %d KV heads%s)", p->kv_memory, least, mk_kv_policy_name(p->kv.policy),
              b->full ? "prompt + max_new_tokens slots" : "constant slots", b->slot_bytes,
              mk_engine_config(e)->n_layer, mk_engine_config(e)->n_kv_head, b->full ? "" : " + policy state");
      free(b);
      return -1;
    }
    if ((size_t)n > p->kv_memory / least) n = (long)(p->kv_memory / least);
  }
  b->n_seq = (int)n;
  b->seqs = calloc((size_t)n, sizeof *b->seqs);
  b->items = calloc((size_t)n, sizeof *b->items);
  b->item_seq = calloc((size_t)n, sizeof *b->item_seq);
  b->logits = malloc(sizeof(float) * (size_t)n * (size_t)mk_engine_n_vocab(e));
  b->depth = mk_engine_pipe_depth(e);
  b->per_tick = (int)((n + b->depth - 1) / b->depth);
  b->flight = calloc((size_t)b->depth, sizeof *b->flight);
  b->picked = calloc((size_t)n, sizeof *b->picked);
  b->n_flight = calloc((size_t)b->depth, sizeof *b->n_flight);
  for (int i = 0; b->flight && i < b->depth; i++)
    if (!(b->flight[i] = malloc(sizeof(int) * (size_t)n))) b->n_flight = NULL; /* reported below */
  if (!b->seqs || !b->items || !b->item_seq || !b->logits || !b->flight || !b->n_flight || !b->picked) {
    mk_batch_free(b);
    return mk_fail(err, "out of memory for a batch of %ld sequences", n);
  }
  int prompt = p->max_prompt;
  if (!b->full && prompt > p->prefill_chunk) prompt = p->kv.capacity + p->prefill_chunk;
  if (prompt > p->max_total) prompt = p->max_total;
  if (mk_engine_begin(e, &p->kv, b->n_seq, prompt, p->max_total, err) != 0) {
    mk_batch_free(b);
    return -1;
  }
  *out = b;
  return 0;
}

static void pending_free(pending_t *q) {
  free((void *)q->r.prompt);
  for (int i = 0; i < q->r.n_stop; i++) free(q->r.stop[i]);
  free((void *)q->r.stop);
  memset(q, 0, sizeof *q);
}

static void seq_release(bseq_t *s) {
  pending_free(&s->p);
  free(s->hist);
  free(s->text);
  mk_sampler_free(s->smp);
  memset(s, 0, sizeof *s);
}

void mk_batch_free(mk_batch_t *b) {
  if (!b) return;
  for (int i = 0; b->seqs && i < b->n_seq; i++) seq_release(&b->seqs[i]);
  for (int i = b->q_head; i < b->q_head + b->q_len; i++) pending_free(&b->queue[i % b->q_cap]);
  free(b->seqs);
  free(b->queue);
  free(b->items);
  free(b->item_seq);
  free(b->passes);
  free(b->logits);
  for (int i = 0; b->flight && i < b->depth; i++) free(b->flight[i]);
  free(b->flight);
  free(b->n_flight);
  free(b->picked);
  free(b);
}

static int copy_request(const mk_batch_request_t *r, pending_t *q, mk_error_t *err) {
  memset(q, 0, sizeof *q);
  q->r = *r;
  int32_t *ids = malloc(sizeof *ids * (size_t)r->n_prompt);
  char **stop = r->n_stop ? calloc((size_t)r->n_stop, sizeof *stop) : NULL;
  q->r.prompt = ids;
  q->r.stop = stop;
  q->r.n_stop = 0;
  if (!ids || (r->n_stop && !stop)) return mk_fail(err, "out of memory");
  memcpy(ids, r->prompt, sizeof *ids * (size_t)r->n_prompt);
  for (int i = 0; i < r->n_stop; i++) {
    if (!(stop[i] = strdup(r->stop[i]))) return mk_fail(err, "out of memory");
    q->r.n_stop++;
  }
  return 0;
}

int mk_batch_submit(mk_batch_t *b, const mk_batch_request_t *r, mk_error_t *err) {
  if (r->n_prompt < 1 || r->max_new_tokens < 0) return mk_fail(err, "empty prompt or negative max_new_tokens");
  if (r->n_prompt > b->p.max_prompt || r->n_prompt + r->max_new_tokens > b->p.max_total)
    return mk_fail(err, "%d prompt + %d new tokens: outside the run's sizing (prompt <= %d, total <= %d)",
                   r->n_prompt, r->max_new_tokens, b->p.max_prompt, b->p.max_total);
  const size_t cost = mk_batch_seq_bytes(b, r->n_prompt, r->max_new_tokens);
  if (b->p.kv_memory > 0 && cost > b->p.kv_memory)
    return mk_fail(err, "needs %zu KV bytes (%d prompt + %d new tokens x %zu bytes per token slot), more than "
                   "--kv-memory %zu", cost, r->n_prompt, r->max_new_tokens, b->slot_bytes, b->p.kv_memory);
  if (b->q_len == b->q_cap) {
    int cap = b->q_cap ? 2 * b->q_cap : 64;
    pending_t *q = malloc(sizeof *q * (size_t)cap);
    if (!q) return mk_fail(err, "out of memory");
    for (int i = 0; i < b->q_len; i++) q[i] = b->queue[(b->q_head + i) % b->q_cap];
    free(b->queue);
    b->queue = q;
    b->q_cap = cap;
    b->q_head = 0;
  }
  pending_t *q = &b->queue[(b->q_head + b->q_len) % b->q_cap];
  if (copy_request(r, q, err) != 0) {
    pending_free(q);
    return -1;
  }
  q->cost = cost;
  q->t_submit = now_s();
  b->q_len++;
  return 0;
}

/* The head of the queue into free slots while it fits the budget (FIFO). */
static int admit(mk_batch_t *b, mk_error_t *err) {
  for (int i = 0; i < b->n_seq && b->q_len > 0; i++) {
    bseq_t *s = &b->seqs[i];
    if (s->state != SEQ_FREE) continue;
    pending_t *q = &b->queue[b->q_head];
    if (b->p.kv_memory > 0 && b->reserved + q->cost > b->p.kv_memory) break;
    s->p = *q;
    b->q_head = (b->q_head + 1) % b->q_cap;
    b->q_len--;
    b->reserved += s->p.cost;
    s->state = SEQ_PREFILL;
    s->order = b->n_admitted++;
    s->t_admit = now_s();
    s->hist = malloc(sizeof *s->hist * ((size_t)s->p.r.n_prompt + (size_t)s->p.r.max_new_tokens + 1));
    if (!s->hist) return mk_fail(err, "out of memory");
    memcpy(s->hist, s->p.r.prompt, sizeof *s->hist * (size_t)s->p.r.n_prompt);
    s->n_hist = s->p.r.n_prompt;
    if (mk_sampler_new(&s->p.r.sampling, mk_engine_n_vocab(b->e), &s->smp, err) != 0) return -1;
    mk_engine_reset_seq(b->e, i);
  }
  int running = 0;
  for (int i = 0; i < b->n_seq; i++) running += b->seqs[i].state != SEQ_FREE;
  if (running > b->max_running) b->max_running = running;
  return 0;
}

/* This pass's items: decodes, then prompt chunks (src/batch.h), of the sequences not waiting for
 * a sample, at most per_tick of them. Returns the item count. */
static int build_items(mk_batch_t *b) {
  int n = 0, budget = b->p.prefill_chunk;
  bool first = true;
  for (int i = 0; i < b->n_seq && n < b->per_tick; i++) {
    bseq_t *s = &b->seqs[i];
    if (s->state == SEQ_DECODE && !s->waiting) {
      b->items[n] = (mk_engine_item_t){.seq = i, .ids = &s->next, .n = 1, .want_logits = true};
      b->item_seq[n++] = i;
    }
  }
  for (;;) { /* prefills, oldest admission first */
    int pick = -1;
    for (int i = 0; i < b->n_seq; i++) {
      const bseq_t *s = &b->seqs[i];
      bool taken = false;
      for (int k = 0; k < n; k++) taken |= b->item_seq[k] == i;
      if (s->state == SEQ_PREFILL && !s->waiting && !taken && (pick < 0 || s->order < b->seqs[pick].order)) pick = i;
    }
    if (pick < 0 || budget <= 0 || n >= b->per_tick) break;
    bseq_t *s = &b->seqs[pick];
    int left = s->p.r.n_prompt - s->fed, take = left < budget ? left : budget;
    if (!first && take < left) break; /* only the oldest prefill is split */
    first = false;
    b->items[n] = (mk_engine_item_t){.seq = pick, .ids = s->p.r.prompt + s->fed, .n = take,
                                     .want_logits = take == left};
    b->item_seq[n++] = pick;
    budget -= take;
  }
  return n;
}

static int text_append(bseq_t *s, const char *piece, size_t n) {
  if (s->len + n + 1 > s->cap) {
    size_t cap = (s->len + n + 1) * 2;
    char *t = realloc(s->text, cap);
    if (!t) return -1;
    s->text = t;
    s->cap = cap;
  }
  memcpy(s->text + s->len, piece, n);
  s->len += n;
  s->text[s->len] = 0;
  return 0;
}

/* The first stop string that starts at or after stop_from cuts the text: true when one did. A
 * match never starts before stop_from, so every byte is searched once per stop string. */
static bool stop_scan(bseq_t *s) {
  size_t best = s->len + 1;
  size_t longest = 0;
  for (int i = 0; i < s->p.r.n_stop; i++) {
    const char *st = s->p.r.stop[i];
    size_t sl = strlen(st);
    if (sl > longest) longest = sl;
    for (size_t j = s->stop_from; sl && j + sl <= s->len && j < best; j++)
      if (s->text[j] == st[0] && memcmp(s->text + j, st, sl) == 0) {
        best = j;
        break;
      }
  }
  if (best <= s->len) {
    s->len = best;
    s->text[best] = 0;
    return true;
  }
  if (longest > 0 && s->len + 1 > longest) s->stop_from = s->len + 1 - longest;
  return false;
}

static void finish(mk_batch_t *b, int i, const char *reason, mk_batch_done_fn done, void *ctx) {
  bseq_t *s = &b->seqs[i];
  if (strcmp(reason, "stop_string") != 0) {
    char piece[512];
    int nb = mk_tok_stream_flush(&s->stream, piece, (int)sizeof piece);
    if (nb > 0 && text_append(s, piece, (size_t)nb) == 0 && stop_scan(s)) reason = "stop_string";
  }
  const double t = now_s();
  mk_batch_result_t r = {.id = s->p.r.id, .prompt_tokens = s->p.r.n_prompt, .generated_tokens = s->n_gen,
                         .output_ids = s->hist + s->p.r.n_prompt, .text = s->text ? s->text : "",
                         .stop_reason = reason, .queue_s = s->t_admit - s->p.t_submit,
                         .prefill_s = s->t_prefilled - s->t_admit, .decode_s = t - s->t_prefilled,
                         .kv_bytes = s->p.cost};
  if (done) done(ctx, &r);
  b->reserved -= s->p.cost;
  b->done++;
  seq_release(s);
}

/* Sequence i's next token from its logits row, or -1 when it needs none (max_new_tokens 0). */
static int32_t pick_token(mk_batch_t *b, int i, float *logits) {
  bseq_t *s = &b->seqs[i];
  return s->n_gen >= s->p.r.max_new_tokens ? -1 : mk_sampler_sample(s->smp, logits, s->hist, s->n_hist);
}

/* Sequence i's prompt is in, or its last token was fed, and id is what pick_token chose: apply
 * the stop rules in the order of `morphkv generate` (src/main.c gen_decode). */
static int after_token(mk_batch_t *b, int i, int32_t id, mk_batch_done_fn done, void *ctx, mk_error_t *err) {
  bseq_t *s = &b->seqs[i];
  const mk_tokenizer_t *tok = mk_engine_tokenizer(b->e);
  if (s->state == SEQ_PREFILL) s->t_prefilled = now_s();
  if (id < 0) {
    finish(b, i, "max_new_tokens", done, ctx);
    return 0;
  }
  if (!b->p.ignore_eos && mk_tok_is_eog(tok, id)) {
    finish(b, i, "eos", done, ctx);
    return 0;
  }
  s->n_gen++;
  b->generated++;
  s->hist[s->n_hist++] = id;
  char piece[512];
  int nb = mk_tok_stream_push(tok, &s->stream, id, piece, (int)sizeof piece);
  if (nb < 0 || text_append(s, piece, (size_t)nb) != 0)
    return mk_fail(err, "request %llu: detokenizing token %d failed", (unsigned long long)s->p.r.id, id);
  if (s->p.r.n_stop > 0 && stop_scan(s)) {
    finish(b, i, "stop_string", done, ctx);
    return 0;
  }
  if (s->n_gen == s->p.r.max_new_tokens) {
    finish(b, i, "max_new_tokens", done, ctx);
    return 0;
  }
  s->next = id;
  s->state = SEQ_DECODE;
  return 0;
}

/* The pass record of this tick (grows the list). */
static mk_batch_pass_t *new_pass(mk_batch_t *b, int n, mk_error_t *err) {
  if ((size_t)b->steps == b->passes_cap) {
    size_t cap = b->passes_cap ? 2 * b->passes_cap : 1024;
    mk_batch_pass_t *t = realloc(b->passes, sizeof *t * cap);
    if (!t) {
      mk_fail(err, "out of memory");
      return NULL;
    }
    b->passes = t;
    b->passes_cap = cap;
  }
  mk_batch_pass_t *ps = &b->passes[b->steps];
  *ps = (mk_batch_pass_t){0};
  for (int k = 0; k < n; k++) *(b->seqs[b->item_seq[k]].state == SEQ_DECODE ? &ps->decode : &ps->prefill) += b->items[k].n;
  return ps;
}

/* Tick t's items have entered: prompt tokens count as fed, and the sequences that want a sample
 * wait for it in flight[t % depth]. */
static void enter_flight(mk_batch_t *b, int n) {
  const int slot = (int)(b->tick % b->depth);
  b->n_flight[slot] = 0;
  for (int k = 0; k < n; k++) {
    bseq_t *s = &b->seqs[b->item_seq[k]];
    if (s->state == SEQ_PREFILL) s->fed += b->items[k].n;
    if (!b->items[k].want_logits) continue;
    s->waiting = true;
    b->flight[slot][b->n_flight[slot]++] = b->item_seq[k];
  }
  b->n_flying += b->n_flight[slot] > 0;
}

int mk_batch_step(mk_batch_t *b, mk_batch_done_fn done, void *ctx, mk_error_t *err) {
  if (!b->started) {
    b->started = true;
    b->t0 = now_s();
  }
  if (admit(b, err) != 0) return -1;
  const int n = build_items(b);
  if (n == 0 && b->n_flying == 0)
    return b->q_len > 0 ? mk_fail(err, "batch: %d requests queued but none can be admitted", b->q_len) : 0;
  mk_batch_pass_t *ps = new_pass(b, n, err);
  if (!ps) return -1;
  const double t0 = now_s();
  int n_back = 0;
  if (mk_engine_pipe_tick(b->e, b->items, n, b->logits, false, &n_back, err) != 0) return -1;
  ps->s = now_s() - t0;
  b->steps++;
  enter_flight(b, n);
  const long long t_back = b->tick - (b->depth - 1); /* the tick whose micro-batch came back */
  b->tick++;
  if (t_back < 0) return 1;
  const int slot = (int)(t_back % b->depth);
  if (n_back != b->n_flight[slot])
    return mk_fail(err, "batch: %d logit rows came back for %d sequences (tick %lld)", n_back, b->n_flight[slot], t_back);
  b->n_flying -= b->n_flight[slot] > 0;
  const size_t V = (size_t)mk_engine_n_vocab(b->e);
  const int n_ret = b->n_flight[slot];
  b->n_flight[slot] = 0;
  /* the ranks that hold the logits pick the tokens; under stages only the last does, and every
   * rank gets the ids (mk_engine_pipe_share_tokens) */
  for (int k = 0; k < n_ret && mk_engine_pipe_has_logits(b->e); k++)
    b->picked[k] = pick_token(b, b->flight[slot][k], b->logits + (size_t)k * V);
  if (b->depth > 1 && n_ret > 0 && mk_engine_pipe_share_tokens(b->e, b->picked, n_ret, err) != 0) return -1;
  for (int k = 0; k < n_ret; k++) {
    const int i = b->flight[slot][k];
    b->seqs[i].waiting = false;
    if (after_token(b, i, b->picked[k], done, ctx, err) != 0) return -1;
  }
  return 1;
}

void mk_batch_get_progress(const mk_batch_t *b, mk_batch_progress_t *p) {
  memset(p, 0, sizeof *p);
  p->done = b->done;
  p->queued = b->q_len;
  for (int i = 0; i < b->n_seq; i++) p->running += b->seqs[i].state != SEQ_FREE;
  p->generated = b->generated;
  p->steps = b->steps;
  p->elapsed_s = b->started ? now_s() - b->t0 : 0.0;
  p->kv_reserved = b->reserved;
  p->kv_budget = b->p.kv_memory;
  mk_engine_stats_t es;
  mk_engine_get_stats(b->e, &es);
  p->kv_live = es.kv_live_bytes;
  p->max_running = b->max_running;
}

const mk_batch_pass_t *mk_batch_passes(const mk_batch_t *b, long long *n) {
  *n = b->steps;
  return b->passes;
}
