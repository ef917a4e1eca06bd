/* Driving the engine: greedy generation, evaluation windows, statistics. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"

/* A decode step whose logits nobody keeps: the greedy choice on the device
 * (argmax_rows) and n_seq ids downloaded, not n_seq x vocab logits.  The
 * same tokens as scanning the downloaded logits (the op's contract). */
static moe_status decode_step_on_device(moe_engine *e, const int32_t *tokens, int n_seq, int pos0,
                                        int32_t *next, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_backend_ops *o = e->dev->ops;
  MOE_TRY(engine_forward(e, tokens, n_seq, 1, pos0, NULL, err));
  /* e->rows (T x top_k ids) is free once the forward has gathered with it */
  int32_t *next_dev = e->rows; /* [n_seq] greedy ids */
  MOE_TRY(o->argmax_rows(e->dev->be, next_dev, e->logits, (size_t)n_seq, e->model->cfg.vocab, err));
  MOE_TRY(o->download(e->dev->be, next, next_dev, (size_t)n_seq * sizeof(int32_t), err));
cleanup:
  return st;
}

/* Stall since the last reset: measured by the device where the backend can
 * (stall_seconds), else by the store with the host clock. */
static double engine_stall(const moe_engine *e) {
  if (e->dev->ops->stall_seconds) return e->dev->ops->stall_seconds(e->dev->be) - e->stall_base;
  return e->store ? moe_expert_store_stats(e->store)->stall_s : 0.0;
}

moe_status moe_engine_generate(moe_engine *e, const int32_t *prompts, int n_seq, int prompt_len,
                               int max_new, int32_t *out, float *prefill_logits,
                               moe_gen_stats *stats, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = &e->model->cfg;
  const int V = c->vocab;
  const bool encdec = moe_config_is_encdec(c);
  /* an encoder-decoder prefill is the encoder plus the decoder's first
   * step (the start token): one logits row per sequence */
  const int pre_new = encdec ? 1 : prompt_len;
  const size_t rows = e->opt.all_logits ? (size_t)n_seq * (size_t)pre_new : (size_t)n_seq;
  float *logits = malloc(rows * (size_t)V * sizeof(float));
  int32_t *next = malloc((size_t)n_seq * sizeof(int32_t));
  MOE_CHECK(logits && next, err, MOE_ERR_OOM, "out of host memory for logits");
  MOE_CHECK(max_new >= 1, err, MOE_ERR_INVALID, "max new tokens must be >= 1 (got %d)", max_new);
  MOE_CHECK(prompt_len >= 1, err, MOE_ERR_INVALID, "prompt length must be >= 1 (got %d)", prompt_len);
  if (encdec)
    MOE_CHECK(prompt_len <= e->opt.max_prefill && max_new <= e->opt.max_seq, err, MOE_ERR_INVALID,
              "input (%d) or new tokens (%d) exceed the engine's limits (%d input tokens, %d "
              "decoder positions)", prompt_len, max_new, e->opt.max_prefill, e->opt.max_seq);
  else
    MOE_CHECK(prompt_len + max_new - 1 <= e->opt.max_seq, err, MOE_ERR_INVALID,
              "prompt (%d) + new tokens (%d) exceed the engine's sequence limit %d", prompt_len,
              max_new, e->opt.max_seq);
  /* decoder positions: the prompt's (decoder-only), or the start token's */
  const int dec0 = encdec ? 0 : prompt_len - 1;
  double t0 = now(e);
  if (encdec) {
    MOE_TRY(moe_engine_encode(e, prompts, n_seq, prompt_len, err));
    for (int b = 0; b < n_seq; b++) next[b] = c->decoder_start;
    MOE_TRY(moe_engine_forward(e, next, n_seq, 1, 0, logits, err));
  } else {
    MOE_TRY(moe_engine_forward(e, prompts, n_seq, prompt_len, 0, logits, err));
  }
  if (prefill_logits) memcpy(prefill_logits, logits, rows * (size_t)V * sizeof(float));
  float *keep = stats ? stats->step_logits : NULL;
  for (int b = 0; b < n_seq; b++) {
    size_t r = e->opt.all_logits ? (size_t)b * (size_t)pre_new + (size_t)pre_new - 1 : (size_t)b;
    next[b] = moe_argmax(logits + r * (size_t)V, V);
    out[(size_t)b * (size_t)max_new] = next[b];
    if (keep) memcpy(keep + (size_t)b * (size_t)V, logits + r * (size_t)V, (size_t)V * sizeof(float));
  }
  double t1 = now(e);
  if (stats && e->store) {
    stats->prefill_bytes_h2d = moe_expert_store_stats(e->store)->bytes_h2d;
    stats->prefill_stall_s = engine_stall(e);
  }
  /* (e->rows holds top_k ids per token: room for the n_seq ids) */
  const bool on_device = keep == NULL && e->dev->ops->argmax_rows != NULL && c->top_k >= 1;
  for (int step = 1; step < max_new; step++) {
    double ts = now(e);
    if (on_device) {
      MOE_TRY(decode_step_on_device(e, next, n_seq, dec0 + step, next, err));
    } else {
      MOE_TRY(moe_engine_forward(e, next, n_seq, 1, dec0 + step, logits, err));
      for (int b = 0; b < n_seq; b++) next[b] = moe_argmax(logits + (size_t)b * (size_t)V, V);
    }
    for (int b = 0; b < n_seq; b++) out[(size_t)b * (size_t)max_new + (size_t)step] = next[b];
    if (keep)
      memcpy(keep + (size_t)step * (size_t)n_seq * (size_t)V, logits,
             (size_t)n_seq * (size_t)V * sizeof(float));
    if (stats && stats->step_s) stats->step_s[step - 1] = now(e) - ts;
  }
  double t2 = now(e);
  if (stats) {
    stats->prefill_s = t1 - t0;
    stats->decode_s = t2 - t1;
    stats->total_s = t2 - t0;
    stats->generated = max_new;
  }
cleanup:
  free(logits);
  free(next);
  return st;
}


moe_status moe_engine_eval(moe_engine *e, const int32_t *windows, int n_windows, int len,
                           moe_eval_result *out, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = &e->model->cfg;
  const int V = c->vocab, B = e->opt.max_batch;
  float *logits = NULL;
  MOE_CHECK(!moe_config_is_encdec(c), err, MOE_ERR_UNSUPPORTED,
            "eval scores a decoder-only language model; this model is encoder-decoder");
  MOE_CHECK(e->opt.all_logits, err, MOE_ERR_INVALID,
            "eval needs an engine that keeps all logits (all_logits)");
  MOE_CHECK(len >= 2 && n_windows >= 1, err, MOE_ERR_INVALID,
            "eval needs windows of at least 2 tokens (got %d windows of %d)", n_windows, len);
  logits = malloc((size_t)B * (size_t)len * (size_t)V * sizeof *logits);
  MOE_CHECK_ALLOC(logits, err, (size_t)B * (size_t)len * (size_t)V * sizeof *logits);
  for (int w0 = 0; w0 < n_windows; w0 += B) {
    const int nb = n_windows - w0 < B ? n_windows - w0 : B;
    const int32_t *ids = windows + (size_t)w0 * (size_t)len;
    MOE_TRY(moe_engine_forward(e, ids, nb, len, 0, logits, err));
    for (int b = 0; b < nb; b++)
      for (int t = 0; t + 1 < len; t++) {
        const float *l = logits + ((size_t)b * (size_t)len + (size_t)t) * (size_t)V;
        const int32_t target = ids[(size_t)b * (size_t)len + (size_t)t + 1];
        const int best = moe_argmax(l, V);
        double sum = 0.0;
        for (int v = 0; v < V; v++) sum += exp((double)l[v] - (double)l[best]);
        const double nll = (double)l[best] + log(sum) - (double)l[target];
        out->nll += nll;
        out->correct += best == target;
        out->tokens++;
        if (out->window_nll) out->window_nll[w0 + b] += nll;
        if (out->window_correct) out->window_correct[w0 + b] += best == target;
      }
  }
cleanup:
  free(logits);
  return st;
}

void moe_engine_stats(const moe_engine *e, moe_run_stats *out) {
  memset(out, 0, sizeof *out);
  out->slots = e->slots;
  if (e->store) {
    const moe_expert_stats *s = moe_expert_store_stats(e->store);
    out->fetches = s->fetches;
    out->bytes_h2d = s->bytes_h2d;
    out->misses = s->misses;
    out->refused = s->refused;
    out->recopies = s->recopies;
    out->wasted = s->wasted;
    out->copies_cancelled = s->cancelled;
    out->copies_urged = s->urged;
  }
  out->stall_s = engine_stall(e);
  out->invalid_requests = e->invalid_requests;
  out->cache_slots = e->cache_slots;
  if (e->store) {
    out->gets = moe_expert_store_stats(e->store)->gets;
    out->reused = moe_expert_store_stats(e->store)->reused;
  }
  out->first_block_hits = e->first_hits;
  out->first_block_total = e->first_total;
  out->pregate_hits = e->pregate_hits;
  out->pregate_total = e->pregate_total;
  out->pregate_second_hits = e->pregate_second_hits;
  out->warm_bytes = e->warm_bytes;
  out->pinned = -1;
  if (e->store) moe_expert_store_pinning(e->store, &out->pinned, &out->pin_s);
  out->host_experts = e->host_experts;
  out->host_tokens = e->host_tokens;
  out->host_xfer_bytes = e->host_xfer_bytes;
  out->host_wait_s = e->host_wait_s;
  /* a modeled backend counts the wait for the host's results as stall:
   * it is reported apart */
  if (e->dev->ops->modeled_seconds && out->stall_s >= e->host_wait_s) out->stall_s -= e->host_wait_s;
}

void moe_engine_reset_stats(moe_engine *e) {
  if (e->store) moe_expert_store_reset_stats(e->store);
  if (e->dev->ops->stall_seconds) e->stall_base = e->dev->ops->stall_seconds(e->dev->be);
  e->pregate_hits = e->pregate_total = e->pregate_second_hits = 0;
  e->invalid_requests = 0;
  e->first_hits = e->first_total = 0;
  e->host_experts = e->host_tokens = e->host_xfer_bytes = 0;
  e->host_wait_s = 0;
}

struct moe_expert_store *moe_engine_store(moe_engine *e) { return e->store; }

moe_status moe_engine_residual_rms(moe_engine *e, double *rms, moe_error *err) {
  const size_t n = e->last_rows * (size_t)e->model->cfg.hidden;
  *rms = 0.0;
  if (n == 0) return MOE_OK;
  float *h = malloc(n * sizeof *h);
  if (h == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "out of host memory");
  moe_status st = e->dev->ops->download(e->dev->be, h, e->x, n * sizeof *h, err);
  double ss = 0.0;
  for (size_t i = 0; i < n && st == MOE_OK; i++) ss += (double)h[i] * h[i];
  free(h);
  *rms = sqrt(ss / (double)n);
  return st;
}
