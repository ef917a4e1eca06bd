/* One measured generation run. */
#include "runner.h"

#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moe/expert_store.h"
#include "moe/rng.h"
#include "moe/publish.h"
#include "moe/trace.h"

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double runner_percentile(double *v, int n, double p) {
  if (n <= 0) return NAN;
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  /* nearest-rank on the sorted samples */
  int k = (int)ceil(p / 100.0 * n);
  if (k < 1) k = 1;
  if (k > n) k = n;
  return v[k - 1];
}

double runner_median(double *v, int n) {
  if (n <= 0) return NAN;
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void run_result_free(run_result *r) {
  free(r->tokens);
  free(r->step_logits);
  r->tokens = NULL;
  r->step_logits = NULL;
}

/* A static cache's placement: how often each expert was acquired in a
 * warm-up generation on other prompts (seed + 7919), on an engine of the
 * spec's policy and routing without a cache.  The warm-up's device
 * memory is freed before the measured run; its peak is reset. */
static moe_status learn_popularity(const run_spec *sp, moe_device *dev, unsigned long long **out,
                                   moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = moe_model_config(sp->model);
  const int n_moe = moe_config_n_moe_layers(c);
  const size_t keys = (size_t)n_moe * (size_t)c->n_experts, B = (size_t)sp->batch;
  moe_engine *e = NULL;
  int32_t *prompts = malloc(B * (size_t)sp->prompt_len * sizeof *prompts);
  int32_t *toks = malloc(B * (size_t)sp->gen_len * sizeof *toks);
  *out = calloc(keys ? keys : 1, sizeof **out);
  MOE_CHECK(prompts && toks && *out, err, MOE_ERR_OOM, "out of host memory (cache warm-up)");
  moe_rng r;
  moe_rng_seed(&r, sp->prompt_seed + 7919, 0);
  for (size_t i = 0; i < B * (size_t)sp->prompt_len; i++)
    prompts[i] = (int32_t)(moe_rng_next(&r) % (uint64_t)c->vocab);
  moe_engine_options eo = {.max_batch = sp->batch, .max_seq = sp->prompt_len + sp->gen_len,
                           .policy = sp->policy, .routing = sp->routing,
                           .pregate_lookahead = sp->lookahead};
  MOE_TRY(moe_engine_create(&e, sp->model, dev, &eo, err));
  MOE_TRY(moe_engine_generate(e, prompts, sp->batch, sp->prompt_len, sp->gen_len, toks, NULL, NULL, err));
  for (int l = 0, mi = 0; l < c->n_layers; l++)
    if (c->is_moe[l]) {
      for (int x = 0; x < c->n_experts; x++)
        (*out)[(size_t)mi * (size_t)c->n_experts + (size_t)x] =
            moe_expert_store_uses(moe_engine_store(e), l, x);
      mi++;
    }
cleanup:
  moe_engine_free(e);
  moe_device_reset_peak(dev);
  free(prompts);
  free(toks);
  return st;
}

/* The routing log: "step layer row expert..." lines (moe_engine_options.on_route). */
typedef struct route_log {
  FILE *f;
  int failed;
} route_log;

static void log_route(void *ctx, int layer, unsigned long long step, const int32_t *idx,
                      size_t rows, int k) {
  route_log *lg = ctx;
  for (size_t r = 0; r < rows; r++) {
    if (fprintf(lg->f, "%llu %d %zu", step, layer, r) < 0) lg->failed = 1;
    for (int j = 0; j < k; j++)
      if (fprintf(lg->f, " %d", (int)idx[r * (size_t)k + (size_t)j]) < 0) lg->failed = 1;
    if (fputc('\n', lg->f) == EOF) lg->failed = 1;
  }
}

void runner_run(const run_spec *sp, run_result *out) {
  memset(out, 0, sizeof *out);
  moe_error err = {0};
  moe_device *dev = NULL;
  moe_engine *e = NULL;
  moe_trace *trace = NULL;
  int32_t *prompts = NULL;
  double *steps = NULL;
  unsigned long long *popularity = NULL;
  route_log rlog = {NULL, 0};
  moe_publish log_pub = {0};
  const moe_config *c = moe_model_config(sp->model);
  const size_t B = (size_t)sp->batch, G = (size_t)sp->gen_len;
  moe_backend_options bo = {.threads = sp->threads, .link_gbps = sp->link_gbps,
                            .device_budget = sp->device_mem, .hardware = sp->hardware,
                            .routing = sp->sim_routing, .seed = sp->prompt_seed};
  if (moe_device_create(&dev, sp->backend, &bo, &err) != MOE_OK) goto done;
  out->modeled = moe_device_ops(dev)->modeled_seconds != NULL;
  if (sp->trace_path && (moe_trace_open(&trace, sp->trace_path, &err) != MOE_OK ||
                         moe_device_trace(dev, trace, &err) != MOE_OK))
    goto done;
  snprintf(out->device, sizeof out->device, "%s", moe_device_name(dev));
  moe_engine_options eo = {.max_batch = sp->batch, .max_seq = sp->prompt_len + sp->gen_len,
                           .policy = sp->policy, .routing = sp->routing,
                           .pregate_lookahead = sp->lookahead};
  if (sp->routing_log) {
    /* published whole (moe/publish.h) */
    if (moe_publish_open(&log_pub, sp->routing_log, "the routing log", &err) != MOE_OK) goto done;
    rlog.f = log_pub.f;
    fprintf(rlog.f, "# moebench routing log: step layer row experts (top-%d, the router's choice)\n",
            c->top_k);
    eo.on_route = log_route;
    eo.on_route_ctx = &rlog;
  }
  if (sp->cache) {
    const int n = cli_cache_experts(sp->cache, sp->model, &eo.cache);
    if (n < 0) {
      MOE_FAIL(&err, MOE_ERR_INVALID, "expert cache '%s' is not KIND:SIZE (SIZE: 1..16777216 "
               "experts, N%%, or bytes with a unit)", sp->cache);
      goto done;
    }
    if (n == 0) {
      MOE_FAIL(&err, MOE_ERR_INVALID, "expert cache '%s' holds no whole expert (one expert is "
               "%zu bytes)", sp->cache, moe_model_expert_bytes(sp->model));
      goto done;
    }
    eo.cache_experts = n;
    if (eo.cache == MOE_CACHE_STATIC &&
        learn_popularity(sp, dev, &popularity, &err) != MOE_OK)
      goto done;
    eo.cache_popularity = popularity;
  }
  if (moe_engine_create(&e, sp->model, dev, &eo, &err) != MOE_OK) goto done;
  moe_run_stats rs;
  moe_engine_stats(e, &rs);
  size_t by_cat[MOE_MEM_CATEGORIES];
  moe_engine_plan_memory(sp->model, dev, &eo, rs.slots, by_cat, &out->planned_bytes);
  const int R = sp->requests > 0 ? sp->requests : 1;
  prompts = malloc(B * (size_t)sp->prompt_len * sizeof *prompts);
  out->tokens = malloc(B * G * sizeof *out->tokens);
  int32_t *scratch_tokens = malloc(B * G * sizeof *scratch_tokens);
  const size_t n_steps = (size_t)R * (G > 1 ? G - 1 : 1);
  steps = calloc(n_steps, sizeof *steps);
  if (sp->keep_logits) out->step_logits = malloc(G * B * (size_t)c->vocab * sizeof(float));
  if (!prompts || !out->tokens || !scratch_tokens || !steps ||
      (sp->keep_logits && !out->step_logits)) {
    free(scratch_tokens);
    MOE_FAIL(&err, MOE_ERR_OOM, "out of host memory for the run's buffers");
    goto done;
  }
  for (int q = 0; q < R; q++) {
    if (sp->prompts && sp->n_prompts > 0) {
      for (size_t b = 0; b < B; b++)
        memcpy(prompts + b * (size_t)sp->prompt_len,
               sp->prompts + ((size_t)q * B + b) % (size_t)sp->n_prompts * (size_t)sp->prompt_len,
               (size_t)sp->prompt_len * sizeof *prompts);
    } else {
      /* seeded random prompt ids, as the paper's workloads */
      moe_rng r;
      moe_rng_seed(&r, sp->prompt_seed + (uint64_t)q, 0);
      for (size_t i = 0; i < B * (size_t)sp->prompt_len; i++)
        prompts[i] = (int32_t)(moe_rng_next(&r) % (uint64_t)c->vocab);
    }
    moe_gen_stats gs = {.step_s = steps + (size_t)q * (G > 1 ? G - 1 : 1),
                        .step_logits = q == 0 ? out->step_logits : NULL};
    if (moe_engine_generate(e, prompts, sp->batch, sp->prompt_len, sp->gen_len,
                            q == 0 ? out->tokens : scratch_tokens, NULL, &gs, &err) != MOE_OK) {
      free(scratch_tokens);
      goto done;
    }
    out->total_s += gs.total_s;
    out->decode_s += gs.decode_s;
    if (q == 0) {
      out->prefill_s = gs.prefill_s;
      out->prefill_bytes_h2d = gs.prefill_bytes_h2d;
      out->prefill_stall_s = gs.prefill_stall_s;
    }
  }
  free(scratch_tokens);
  moe_engine_stats(e, &out->stats);
  out->tokens_per_s = (double)(B * G * (size_t)R) / out->total_s;
  int n = (int)(G > 1 ? n_steps : 0);
  if (n > 0) {
    out->step_p50_s = runner_percentile(steps, n, 50);
    out->step_p90_s = runner_percentile(steps, n, 90);
    out->step_p99_s = runner_percentile(steps, n, 99);
  }
  out->peak_bytes = moe_device_mem(dev)->peak_total;
  memcpy(out->peak_by_cat, moe_device_mem(dev)->at_peak, sizeof out->peak_by_cat);
  if (sp->eval_windows && sp->eval_n > 0 && !out->modeled) { /* a modeled backend has no logits */
    /* quality after the measured runs (their peak is already taken): an
     * engine that keeps every position's logits */
    moe_engine_free(e);
    e = NULL;
    moe_engine_options ev = {.max_batch = sp->eval_n < 8 ? sp->eval_n : 8, .max_seq = sp->eval_len,
                             .all_logits = true, .policy = sp->policy, .routing = sp->routing,
                             .pregate_lookahead = sp->lookahead};
    if (moe_engine_create(&e, sp->model, dev, &ev, &err) != MOE_OK ||
        moe_engine_eval(e, sp->eval_windows, sp->eval_n, sp->eval_len, &out->eval, &err) != MOE_OK)
      goto done;
    out->has_eval = true;
  }
done:
  out->status = err.status;
  if (err.status != MOE_OK) {
    cli_error_text(&err, out->error, sizeof out->error);
    if (dev) out->peak_bytes = moe_device_mem(dev)->peak_total;
  }
  if (trace && out->status == MOE_OK) { /* before the teardown's calls */
    moe_trace_get_counts(trace, &out->counts);
    out->has_counts = true;
  }
  moe_engine_free(e);
  moe_device_destroy(dev); /* copies done: the trace is complete */
  if (rlog.f) { /* published only whole, and only from a run that succeeded */
    if (out->status != MOE_OK) {
      moe_publish_abort(&log_pub);
    } else {
      moe_error lerr = {0};
      if (rlog.failed) moe_publish_fail(&log_pub);
      if (moe_publish_commit(&log_pub, &lerr) != MOE_OK) {
        out->status = MOE_ERR_IO;
        cli_error_text(&lerr, out->error, sizeof out->error);
      }
    }
  }
  if (trace) {
    moe_error terr = {0};
    if (moe_trace_close(trace, &terr) != MOE_OK && out->status == MOE_OK) {
      out->status = terr.status;
      cli_error_text(&terr, out->error, sizeof out->error);
    }
  }
  free(prompts);
  free(steps);
  free(popularity);
}

double runner_link_for_ratio(const run_spec *spec, double ratio, double *window_s, double *copy_s,
                             char *why, size_t cap) {
  const moe_config *c = moe_model_config(spec->model);
  int n_moe = 0;
  for (int l = moe_config_is_encdec(c) ? c->n_enc_layers : 0; l < c->n_layers; l++) n_moe += c->is_moe[l];
  if (n_moe == 0 || !(ratio > 0)) {
    snprintf(why, cap, "link ratio: the model has no decoder MoE block (or the ratio is not > 0)");
    return NAN;
  }
  run_spec sp = *spec;
  sp.policy = moe_policy_find("gpu-only");
  sp.routing = MOE_ROUTING_CONVENTIONAL;
  sp.link_gbps = 0;
  sp.device_mem = 0;
  sp.gen_len = spec->gen_len < 17 ? spec->gen_len : 17;
  if (sp.gen_len < 2) sp.gen_len = 2;
  sp.requests = 1;
  sp.keep_logits = false;
  sp.trace_path = NULL;
  sp.eval_windows = NULL;
  sp.cache = NULL;
  run_result r;
  runner_run(&sp, &r);
  const bool ok = r.status == MOE_OK;
  const double step = ok ? r.decode_s / (double)(sp.gen_len - 1) : NAN;
  if (!ok) snprintf(why, cap, "link ratio: the gpu-only warm-up failed: %s", r.error);
  run_result_free(&r);
  if (!ok) return NAN;
  const double window = step / n_moe, copy = ratio * window;
  const double gbps = (double)moe_model_expert_bytes(spec->model) / copy / 1e9;
  if (window_s) *window_s = window;
  if (copy_s) *copy_s = copy;
  if (!(gbps >= MOE_LINK_GBPS_MIN && gbps <= MOE_LINK_GBPS_MAX)) {
    snprintf(why, cap, "link ratio %g: the cap it gives, %g GB/s, is outside %g..%g", ratio, gbps,
             MOE_LINK_GBPS_MIN, MOE_LINK_GBPS_MAX);
    return NAN;
  }
  return gbps;
}

void runner_parity(const run_result *ref, const run_result *r, int batch, int gen_len, int vocab,
                   double *token_match, double *max_logit_diff) {
  *token_match = NAN;
  *max_logit_diff = NAN;
  if (ref->status != MOE_OK || r->status != MOE_OK || !ref->tokens || !r->tokens) return;
  size_t n = (size_t)batch * (size_t)gen_len, same = 0;
  for (size_t i = 0; i < n; i++) same += ref->tokens[i] == r->tokens[i];
  *token_match = (double)same / (double)n;
  if (!ref->step_logits || !r->step_logits) return;
  double d = 0;
  for (size_t i = 0; i < n * (size_t)vocab; i++) {
    double x = fabs((double)ref->step_logits[i] - (double)r->step_logits[i]);
    if (x > d || isnan(x)) d = x;
  }
  *max_logit_diff = d;
}
