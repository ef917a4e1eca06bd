/* One measured generation run: the unit every benchmark of the harness is
 * built from.  A run opens its own device (so peaks are its own), builds an
 * engine for one policy, generates from seeded random prompts and collects
 * measured figures; failures (OOM included) are results, not crashes. */
#ifndef MOEBENCH_RUNNER_H
#define MOEBENCH_RUNNER_H

#include <stdbool.h>
#include <stdint.h>

#include "moe/model.h"
#include "moe/policy.h"
#include "moe/trace.h"

/* The most repetitions runner_medians takes (a suite's SUITE_MAX_REPS). */
#define RUNNER_MAX_REPS 100

typedef struct run_spec {
  moe_model *model;             /* built once, shared by runs */
  const moe_policy *policy;
  moe_routing routing;
  const char *backend;
  const char *hardware;         /* sim backend: the profile file its times are modeled on;
                                   any backend: the figures a policy that weighs costs
                                   (fiddler) decides by (moe_engine_options.cost_profile) */
  int host_threads;             /* math threads of experts computed on the host (0 = 1) */
  double host_gbps;             /* measured backends: the emulated host's memory bandwidth
                                   cap (moe_engine_options.host_gbps; 0: none).  With a link
                                   cap and no hardware profile, the two are the figures a
                                   cost-weighing policy decides by */
  const char *sim_routing;      /* sim backend: its routing source (NULL: uniform) */
  int threads;
  double link_gbps;
  size_t device_mem;            /* 0: device capacity */
  int batch, prompt_len, gen_len;
  uint64_t prompt_seed;         /* random prompts: request r uses seed + r */
  const int32_t *prompts;       /* or ids from a file: n_prompts x prompt_len, cycled */
  int n_prompts;
  int requests;                 /* generate calls, each a new batch of prompts (>= 1) */
  bool keep_logits;             /* keep every step's logits (first request), for parity */
  const char *trace_path;       /* write the run's op trace here (NULL: none) */
  const char *routing_log;      /* write every MoE block's router choice here (NULL: none):
                                   the sim's routing source trace:FILE replays it */
  const int32_t *eval_windows;  /* quality windows [eval_n][eval_len] (NULL: none), run after
                                   the generation on an engine of the same policy, routing,
                                   backend and budget that keeps all logits */
  int eval_n, eval_len;
  int lookahead;                /* moe_engine_options.pregate_lookahead (0 = 1) */
  int pregate_second;           /* moe_engine_options.pregate_second (bench-policies only:
                                   no results key says it) */
  const char *cache;            /* an expert cache "KIND:SIZE" (cli_cache_experts), or NULL;
                                   static learns its placement from a warm-up generation
                                   on other prompts (seed + 7919) */
} run_spec;

typedef struct run_result {
  moe_status status;            /* MOE_OK, MOE_ERR_OOM, ... */
  char error[640];              /* one line when status != MOE_OK */
  double total_s, prefill_s, decode_s; /* summed over requests; prefill_s is the
                                          first request's (time to first token) */
  double tokens_per_s;          /* generated tokens (all sequences, requests) / total_s */
  unsigned long long prefill_bytes_h2d;
  double prefill_stall_s;
  double step_p50_s, step_p90_s, step_p99_s;
  size_t peak_bytes;
  size_t peak_by_cat[MOE_MEM_CATEGORIES]; /* breakdown at the peak */
  size_t planned_bytes;
  moe_run_stats stats;
  int32_t *tokens;              /* [batch][gen_len], first request */
  float *step_logits;           /* [gen_len][batch][vocab] when keep_logits, first request */
  char device[256];              /* the backend's device name */
  bool modeled;                 /* times are the backend's modeled clock, not measured */
  bool has_eval;
  moe_eval_result eval;         /* over spec->eval_windows */
  double link_achieved_gbps;    /* bytes copied / the copy stream's time on them, as the
                                   backend observed them (0: not observed: a modeled or
                                   traced run, or no copies) */
  bool has_counts;              /* traced: the trace's backend calls and host waits */
  moe_trace_counts counts;
} run_result;

/* Runs spec once.  Never fails as a call: the run's outcome (MOE_OK,
 * MOE_ERR_OOM, ...) and its one-line message are in out->status and
 * out->error. */
void runner_run(const run_spec *spec, run_result *out);
void run_result_free(run_result *r);

/* Parity of r against ref (same inputs): share of generated tokens equal
 * position by position, and the largest |logit difference| over all steps
 * (NAN when either lacks logits). */
void runner_parity(const run_result *ref, const run_result *r, int batch, int gen_len, int vocab,
                   double *token_match, double *max_logit_diff);

/* The link cap (GB/s) at which one expert's copy takes `ratio` times the
 * compute of one decoder MoE block window (a decode step's time over its
 * MoE blocks: a block and the layers up to the next, what a pre-gated copy
 * hides behind), the window measured by a gpu-only run of spec's model,
 * backend, threads, batch and prompt length with up to 16 generated tokens
 * and no cap.  Returns the cap, or NAN with why set (a run that failed, a
 * model without MoE blocks, a cap outside what the backend emulates).
 * *window_s and *copy_s (may be NULL) receive the measured window and the
 * copy time the cap gives. */
double runner_link_for_ratio(const run_spec *spec, double ratio, double *window_s, double *copy_s,
                             char *why, size_t cap);

/* Runs n specs `reps` times interleaved (spec 0, 1, ..., n-1, then again),
 * so that a machine's drift spreads over all of them; res[r * n + i] is
 * repetition r of spec i.  Only the last repetition keeps logits (when its
 * spec asks).  done (may be NULL) is called after each run. */
void runner_interleaved(const run_spec *specs, int n, int reps, run_result *res,
                        void (*done)(void *ctx, int rep, int i, const run_result *r), void *ctx);

/* Medians over the reps repetitions of spec i of runner_interleaved's
 * results: tokens/s, decode seconds per generated token after the first
 * (gen_len - 1 steps), total seconds (any may be NULL). */
void runner_medians(const run_result *res, int n, int reps, int i, int gen_len, double *tokens_per_s,
                    double *decode_per_token_s, double *total_s);

/* Decode seconds per generated token (medians of reps interleaved
 * repetitions) of gpu-only, ondemand and pregated (the paper's four but
 * prefetch-all) on base's configuration (its policy and routing ignored).
 * MOE_OK, else the first failed run's status with "POLICY: message" in why. */
moe_status runner_paper_three_steps(const run_spec *base, int reps, double step[3], char *why,
                                    size_t cap);

/* The routing a policy runs when none is named: its default_routing. */
moe_routing runner_policy_routing(const moe_policy *p);

double runner_median(double *v, int n);
double runner_percentile(double *v, int n, double p);

#endif
