/* One measured generation run. */
#include "runner.h"

#include "common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moe/cost.h"
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

moe_routing runner_policy_routing(const moe_policy *p) {
  return p->default_routing == MOE_POLICY_ROUTING_PREGATED ? MOE_ROUTING_PREGATED
                                                          : MOE_ROUTING_CONVENTIONAL;
}

void runner_interleaved(const run_spec *specs, int n, int reps, run_result *res,
                        void (*done)(void *ctx, int rep, int i, const run_result *r), void *ctx) {
  for (int r = 0; r < reps; r++)
    for (int i = 0; i < n; i++) {
      run_spec sp = specs[i];
      sp.keep_logits = specs[i].keep_logits && r == reps - 1;
      runner_run(&sp, &res[r * n + i]);
      if (done) done(ctx, r, i, &res[r * n + i]);
    }
}

void runner_medians(const run_result *res, int n, int reps, int i, int gen_len, double *tokens_per_s,
                    double *decode_per_token_s, double *total_s) {
  double a[RUNNER_MAX_REPS], b[RUNNER_MAX_REPS], t[RUNNER_MAX_REPS];
  const int k = reps < RUNNER_MAX_REPS ? reps : RUNNER_MAX_REPS;
  for (int r = 0; r < k; r++) {
    a[r] = res[r * n + i].tokens_per_s;
    b[r] = res[r * n + i].decode_s / (double)(gen_len - 1);
    t[r] = res[r * n + i].total_s;
  }
  if (tokens_per_s) *tokens_per_s = runner_median(a, k);
  if (decode_per_token_s) *decode_per_token_s = runner_median(b, k);
  if (total_s) *total_s = runner_median(t, k);
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
                           .pregate_lookahead = sp->lookahead, .pregate_second = sp->pregate_second};
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

/* One run's resources, released by run_teardown. */
/* Copies as the backend's copy stream saw them (set_copy_observer, from
 * its thread): bytes and the time they took, for the link rate achieved. */
typedef struct copy_acc {
  _Atomic unsigned long long bytes, ns;
} copy_acc;

static void on_copy(void *ctx, size_t bytes, double t0, double t1) {
  copy_acc *a = ctx;
  a->bytes += bytes;
  a->ns += t1 > t0 ? (unsigned long long)((t1 - t0) * 1e9) : 0;
}

typedef struct run_state {
  copy_acc copies;   /* observed when the backend can (and no trace owns the observer) */
  bool observing;
  moe_device *dev;
  moe_engine *e;
  moe_trace *trace;
  int32_t *prompts, *scratch_tokens;
  double *steps;
  unsigned long long *popularity;
  route_log rlog;
  moe_publish log_pub;
  moe_hw_profile hw;    /* sp->hardware's figures, for a policy that weighs costs */
  bool has_hw;
} run_state;

/* The expert cache of sp into eo (a static one learns its placement). */
static moe_status run_cache(const run_spec *sp, run_state *s, moe_engine_options *eo,
                            moe_error *err) {
  const int n = cli_cache_experts(sp->cache, sp->model, &eo->cache);
  if (n < 0)
    return MOE_FAIL(err, MOE_ERR_INVALID, "expert cache '%s' is not KIND:SIZE (SIZE: 1..16777216 "
                    "experts, N%%, or bytes with a unit)", sp->cache);
  if (n == 0)
    return MOE_FAIL(err, MOE_ERR_INVALID, "expert cache '%s' holds no whole expert (one expert is "
                    "%zu bytes)", sp->cache, moe_model_expert_bytes(sp->model));
  eo->cache_experts = n;
  if (eo->cache == MOE_CACHE_STATIC) {
    const moe_status st = learn_popularity(sp, s->dev, &s->popularity, err);
    if (st != MOE_OK) return st;
  }
  eo->cache_popularity = s->popularity;
  return MOE_OK;
}

/* The emulation's own figures as a profile, for a policy that weighs
 * costs (fiddler): the capped link and the capped host; the host's FLOP
 * rate is taken as ample (the cap, a bandwidth, is what binds a decode). */
static void emulated_profile(const run_spec *sp, moe_hw_profile *p) {
  memset(p, 0, sizeof *p);
  snprintf(p->name, sizeof p->name, "emulated");
  p->memory_bytes = 1e12;
  p->memory_gbps = 100;
  p->tflops[MOE_F32] = p->tflops[MOE_F16] = p->tflops[MOE_BF16] = 1;
  p->h2d_pinned_gbps = p->h2d_pageable_gbps = sp->link_gbps;
  p->h2d_latency_us = p->launch_us = p->transfer_latency_us = 10;
  p->copy_slowdown = 1;
  p->host_cores = sp->host_threads > 0 ? sp->host_threads : 1;
  p->host_memory_gbps = sp->host_gbps;
  p->host_gflops_f32 = p->host_gflops_bf16 = 1e6;
}

/* The device (traced when asked) and the engine of sp. */
static moe_status run_open(const run_spec *sp, run_state *s, run_result *out, moe_engine_options *eo,
                           moe_error *err) {
  /* a measured backend takes no profile: there it only gives a cost-weighing
   * policy its figures (cost_profile below) */
  moe_backend_options bo = {.threads = sp->threads, .link_gbps = sp->link_gbps,
                            .device_budget = sp->device_mem,
                            .hardware = cli_backend_modeled(sp->backend) ? sp->hardware : NULL,
                            .routing = sp->sim_routing, .seed = sp->prompt_seed};
  moe_status st = moe_device_create(&s->dev, sp->backend, &bo, err);
  if (st != MOE_OK) return st;
  out->modeled = moe_device_ops(s->dev)->modeled_seconds != NULL;
  if (sp->trace_path && ((st = moe_trace_open(&s->trace, sp->trace_path, err)) != MOE_OK ||
                         (st = moe_device_trace(s->dev, s->trace, err)) != MOE_OK))
    return st;
  snprintf(out->device, sizeof out->device, "%s", moe_device_name(s->dev));
  const moe_backend_ops *o = moe_device_ops(s->dev);
  if (o->set_copy_observer && !out->modeled) { /* a trace's wrapper has none: it owns it */
    o->set_copy_observer(moe_device_backend(s->dev), on_copy, &s->copies);
    s->observing = true;
  }
  if (sp->hardware && (st = moe_hw_profile_load(&s->hw, sp->hardware, err)) != MOE_OK) return st;
  s->has_hw = sp->hardware != NULL;
  if (!s->has_hw && !out->modeled && sp->link_gbps > 0 && sp->host_gbps > 0) {
    emulated_profile(sp, &s->hw);
    s->has_hw = true;
  }
  *eo = (moe_engine_options){.max_batch = sp->batch, .max_seq = sp->prompt_len + sp->gen_len,
                             .policy = sp->policy, .routing = sp->routing,
                             .pregate_lookahead = sp->lookahead, .pregate_second = sp->pregate_second, .host_threads = sp->host_threads,
                             .host_gbps = sp->host_gbps, .cost_profile = s->has_hw ? &s->hw : NULL};
  if (sp->routing_log) {
    /* published whole (moe/publish.h) */
    if ((st = moe_publish_open(&s->log_pub, sp->routing_log, "the routing log", err)) != MOE_OK)
      return st;
    s->rlog.f = s->log_pub.f;
    fprintf(s->rlog.f, "# moebench routing log: step layer row experts (top-%d, the router's choice)\n",
            moe_model_config(sp->model)->top_k);
    eo->on_route = log_route;
    eo->on_route_ctx = &s->rlog;
  }
  if (sp->cache && (st = run_cache(sp, s, eo, err)) != MOE_OK) return st;
  return moe_engine_create(&s->e, sp->model, s->dev, eo, err);
}

/* Request q's prompts: from the file's ids (cycled), or seeded random ids
 * as the paper's workloads. */
static void run_prompts(const run_spec *sp, int q, int32_t *prompts) {
  const size_t B = (size_t)sp->batch, L = (size_t)sp->prompt_len;
  if (sp->prompts && sp->n_prompts > 0) {
    for (size_t b = 0; b < B; b++)
      memcpy(prompts + b * L, sp->prompts + ((size_t)q * B + b) % (size_t)sp->n_prompts * L,
             L * sizeof *prompts);
    return;
  }
  moe_rng r;
  moe_rng_seed(&r, sp->prompt_seed + (uint64_t)q, 0);
  const int vocab = moe_model_config(sp->model)->vocab;
  for (size_t i = 0; i < B * L; i++) prompts[i] = (int32_t)(moe_rng_next(&r) % (uint64_t)vocab);
}

/* The measured generations: sp->requests of them, the first one's tokens
 * (and logits) kept; the figures into out. */
static moe_status run_requests(const run_spec *sp, run_state *s, run_result *out, moe_error *err) {
  const size_t B = (size_t)sp->batch, G = (size_t)sp->gen_len, per = G > 1 ? G - 1 : 1;
  const int R = sp->requests > 0 ? sp->requests : 1;
  s->prompts = malloc(B * (size_t)sp->prompt_len * sizeof *s->prompts);
  out->tokens = malloc(B * G * sizeof *out->tokens);
  s->scratch_tokens = malloc(B * G * sizeof *s->scratch_tokens);
  s->steps = calloc((size_t)R * per, sizeof *s->steps);
  if (sp->keep_logits)
    out->step_logits = malloc(G * B * (size_t)moe_model_config(sp->model)->vocab * sizeof(float));
  if (!s->prompts || !out->tokens || !s->scratch_tokens || !s->steps ||
      (sp->keep_logits && !out->step_logits))
    return MOE_FAIL(err, MOE_ERR_OOM, "out of host memory for the run's buffers");
  for (int q = 0; q < R; q++) {
    run_prompts(sp, q, s->prompts);
    moe_gen_stats gs = {.step_s = s->steps + (size_t)q * per,
                        .step_logits = q == 0 ? out->step_logits : NULL};
    const moe_status st = moe_engine_generate(s->e, s->prompts, sp->batch, sp->prompt_len,
                                              sp->gen_len, q == 0 ? out->tokens : s->scratch_tokens,
                                              NULL, &gs, err);
    if (st != MOE_OK) return st;
    out->total_s += gs.total_s;
    out->decode_s += gs.decode_s;
    if (q == 0) {
      out->prefill_s = gs.prefill_s;
      out->prefill_bytes_h2d = gs.prefill_bytes_h2d;
      out->prefill_stall_s = gs.prefill_stall_s;
    }
  }
  moe_engine_stats(s->e, &out->stats);
  out->tokens_per_s = (double)(B * G * (size_t)R) / out->total_s;
  const int n = (int)(G > 1 ? (size_t)R * per : 0);
  if (n > 0) {
    out->step_p50_s = runner_percentile(s->steps, n, 50);
    out->step_p90_s = runner_percentile(s->steps, n, 90);
    out->step_p99_s = runner_percentile(s->steps, n, 99);
  }
  out->peak_bytes = moe_device_mem(s->dev)->peak_total;
  memcpy(out->peak_by_cat, moe_device_mem(s->dev)->at_peak, sizeof out->peak_by_cat);
  return MOE_OK;
}

/* Quality after the measured runs (their peak is already taken): an
 * engine that keeps every position's logits. */
static moe_status run_eval(const run_spec *sp, run_state *s, run_result *out, moe_error *err) {
  moe_engine_free(s->e);
  s->e = NULL;
  moe_engine_options ev = {.max_batch = sp->eval_n < 8 ? sp->eval_n : 8, .max_seq = sp->eval_len,
                           .all_logits = true, .policy = sp->policy, .routing = sp->routing,
                           .pregate_lookahead = sp->lookahead, .pregate_second = sp->pregate_second, .host_threads = sp->host_threads,
                           .host_gbps = sp->host_gbps, .cost_profile = s->has_hw ? &s->hw : NULL};
  moe_status st = moe_engine_create(&s->e, sp->model, s->dev, &ev, err);
  if (st == MOE_OK) st = moe_engine_eval(s->e, sp->eval_windows, sp->eval_n, sp->eval_len, &out->eval, err);
  out->has_eval = st == MOE_OK;
  return st;
}

/* The run's outcome from err, then the teardown: the trace's counts, the
 * routing log published (only whole, only from a run that succeeded), the
 * trace closed. */
static void run_teardown(run_state *s, run_result *out, const moe_error *err) {
  out->status = err->status;
  if (err->status != MOE_OK) {
    cli_error_text(err, out->error, sizeof out->error);
    if (s->dev) out->peak_bytes = moe_device_mem(s->dev)->peak_total;
  }
  if (s->trace && out->status == MOE_OK) { /* before the teardown's calls */
    moe_trace_get_counts(s->trace, &out->counts);
    out->has_counts = true;
  }
  moe_engine_free(s->e);
  if (s->observing) {
    moe_error ignored = {0};
    (void)moe_device_ops(s->dev)->synchronize(moe_device_backend(s->dev), &ignored);
    moe_device_ops(s->dev)->set_copy_observer(moe_device_backend(s->dev), NULL, NULL);
    if (s->copies.ns > 0)
      out->link_achieved_gbps = (double)s->copies.bytes / ((double)s->copies.ns * 1e-9) / 1e9;
  }
  moe_device_destroy(s->dev); /* copies done: the trace is complete */
  if (s->rlog.f && out->status != MOE_OK) {
    moe_publish_abort(&s->log_pub);
  } else if (s->rlog.f) {
    moe_error lerr = {0};
    if (s->rlog.failed) moe_publish_fail(&s->log_pub);
    if (moe_publish_commit(&s->log_pub, &lerr) != MOE_OK) {
      out->status = MOE_ERR_IO;
      cli_error_text(&lerr, out->error, sizeof out->error);
    }
  }
  moe_error terr = {0};
  if (s->trace && moe_trace_close(s->trace, &terr) != MOE_OK && out->status == MOE_OK) {
    out->status = terr.status;
    cli_error_text(&terr, out->error, sizeof out->error);
  }
  free(s->prompts);
  free(s->scratch_tokens);
  free(s->steps);
  free(s->popularity);
}

void runner_run(const run_spec *sp, run_result *out) {
  memset(out, 0, sizeof *out);
  moe_error err = {0};
  run_state s = {0};
  moe_engine_options eo;
  if (run_open(sp, &s, out, &eo, &err) == MOE_OK) {
    moe_run_stats rs;
    moe_engine_stats(s.e, &rs);
    size_t by_cat[MOE_MEM_CATEGORIES];
    moe_engine_plan_memory(sp->model, s.dev, &eo, rs.slots, by_cat, &out->planned_bytes);
    /* a modeled backend has no logits to evaluate */
    if (run_requests(sp, &s, out, &err) == MOE_OK && sp->eval_windows && sp->eval_n > 0 && !out->modeled)
      run_eval(sp, &s, out, &err);
  }
  run_teardown(&s, out, &err);
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
  sp.policy = moe_policy_reference();
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

moe_status runner_paper_three_steps(const run_spec *base, int reps, double step[3], char *why,
                                    size_t cap) {
  const moe_policy *paper[4];
  if (moe_policy_paper_baselines(paper, 4) != 4) {
    snprintf(why, cap, "the policy registry lacks the paper's four policies");
    return MOE_ERR_INTERNAL;
  }
  const moe_policy *pol[3] = {paper[0], paper[1], paper[3]}; /* gpu-only, ondemand, pregated */
  run_spec sp[3];
  run_result *res = calloc((size_t)reps * 3, sizeof *res);
  if (res == NULL) {
    snprintf(why, cap, "out of host memory");
    return MOE_ERR_OOM;
  }
  for (int i = 0; i < 3; i++) {
    sp[i] = *base;
    sp[i].policy = pol[i];
    sp[i].routing = runner_policy_routing(pol[i]);
  }
  runner_interleaved(sp, 3, reps, res, NULL, NULL);
  moe_status st = MOE_OK;
  for (int i = 0; i < 3; i++) {
    runner_medians(res, 3, reps, i, base->gen_len, NULL, &step[i], NULL);
    for (int r = 0; r < reps && st == MOE_OK; r++)
      if (res[r * 3 + i].status != MOE_OK) {
        snprintf(why, cap, "%s: %s", pol[i]->name, res[r * 3 + i].error);
        st = res[r * 3 + i].status;
      }
  }
  for (int i = 0; i < reps * 3; i++) run_result_free(&res[i]);
  free(res);
  return st;
}
