/* One result row and the outputs of a result file (row.h). */
#include "row.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "moe/backend.h"
#include "moe/publish.h"
#include "moe/version.h"
#include "noise.h"

void iso_now(char *buf, size_t cap) {
  time_t t = time(NULL);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static const char *status_word(moe_status st) {
  return st == MOE_OK ? "ok" : st == MOE_ERR_OOM ? "OOM" : "error";
}

void row_key_columns(const row_config *rc, res_row *row) {
  res_set(row, "model", rc->model_name);
  res_setf(row, "model_seed", "%llu", (unsigned long long)rc->model_seed);
  res_set(row, "dtype", moe_dtype_name(rc->dtype));
  res_set(row, "workload", rc->wl->name);
  res_set(row, "policy", rc->policy_label ? rc->policy_label : rc->policy->name);
  res_set(row, "routing", moe_routing_name(rc->routing));
  res_set(row, "backend", rc->backend);
  res_set(row, "device", rc->device);
  res_setf(row, "threads", "%d", rc->threads);
  /* the host's settings key only the rows of a policy that computes on it:
   * the others' rows stay the rows they were (and compare with them) */
  const bool places = rc->policy && rc->policy->struct_size >= MOE_POLICY_SIZE_1_3 &&
                      rc->policy->place != NULL;
  if (places && rc->host_threads > 1) res_setf(row, "host_threads", "%d", rc->host_threads);
  if (places && rc->host_gbps > 0) res_setf(row, "host_gbps", "%g", rc->host_gbps);
  if (rc->link_ratio > 0) { /* the ratio is the input; the cap it gave is this machine's */
    res_set(row, "link_gbps", "");
    res_setf(row, "link_ratio", "%g", rc->link_ratio);
  } else {
    res_setf(row, "link_gbps", "%g", rc->link_gbps);
  }
  res_setf(row, "device_mem_budget_bytes", "%zu", rc->budget);
  res_setf(row, "batch", "%d", rc->batch);
  res_setf(row, "prompt_len", "%d", rc->wl->prompt_len);
  res_setf(row, "gen_len", "%d", rc->wl->gen_len);
  res_setf(row, "requests", "%d", rc->wl->requests);
  if (rc->wl->token_file[0])
    res_set(row, "prompt_seed", "");
  else
    res_setf(row, "prompt_seed", "%llu", (unsigned long long)rc->wl->seed);
  res_setf(row, "repetitions", "%d", rc->reps);
  /* empty for the default, so rows from before the column keep their keys */
  if (rc->lookahead > 1) res_setf(row, "pregate_lookahead", "%d", rc->lookahead);
  if (rc->inputs) res_set(row, "inputs", rc->inputs);
}


/* Fills the measured and counted columns of row from n repetitions. */
static void row_figures(res_row *row, const run_result *r, double *tps, double *ttft, double *e2e,
                        double *stall, double *p50, double *p90, double *p99, int n) {
  double mn = tps[0], mx = tps[0];
  for (int i = 1; i < n; i++) mn = fmin(mn, tps[i]), mx = fmax(mx, tps[i]);
  const double med = runner_median(tps, n);
  res_setf(row, "tokens_per_s", "%.6g", med);
  res_setf(row, "tokens_per_s_min", "%.6g", mn);
  res_setf(row, "tokens_per_s_max", "%.6g", mx);
  res_setf(row, "rel_spread", "%.4g", med > 0 ? (mx - mn) / med : 0.0);
  res_setf(row, "ttft_s", "%.6g", runner_median(ttft, n));
  res_setf(row, "token_latency_p50_s", "%.6g", runner_median(p50, n));
  res_setf(row, "token_latency_p90_s", "%.6g", runner_median(p90, n));
  res_setf(row, "token_latency_p99_s", "%.6g", runner_median(p99, n));
  res_setf(row, "e2e_s", "%.6g", runner_median(e2e, n));
  res_setf(row, "stall_s", "%.6g", runner_median(stall, n));
  res_setf(row, "peak_device_bytes", "%zu", r->peak_bytes);
  static const char *cat_cols[MOE_MEM_CATEGORIES] = {
      "peak_dense_bytes", "peak_expert_slots_bytes", "peak_kv_cache_bytes",
      "peak_activations_bytes", "peak_workspace_bytes"};
  for (int c = 0; c < MOE_MEM_CATEGORIES; c++) res_setf(row, cat_cols[c], "%zu", r->peak_by_cat[c]);
  res_setf(row, "planned_device_bytes", "%zu", r->planned_bytes);
  res_setf(row, "expert_slots", "%d", r->stats.slots);
  res_setf(row, "h2d_bytes", "%llu", r->stats.bytes_h2d);
  res_setf(row, "expert_fetches", "%llu", r->stats.fetches);
  res_setf(row, "expert_misses", "%llu", r->stats.misses);
  res_setf(row, "expert_recopies", "%llu", r->stats.recopies);
  res_setf(row, "expert_wasted_copies", "%llu", r->stats.wasted);
  if (r->stats.pregate_total)
    res_setf(row, "pregate_hit_rate", "%.6f",
             (double)r->stats.pregate_hits / (double)r->stats.pregate_total);
  res_setf(row, "cache_slots", "%d", r->stats.cache_slots);
  if (r->stats.gets)
    res_setf(row, "expert_hit_rate", "%.6f", (double)r->stats.reused / (double)r->stats.gets);
  if (r->stats.pinned >= 0) res_setf(row, "pinned", "%d", r->stats.pinned);
  if (r->stats.host_experts > 0) {
    res_setf(row, "host_experts", "%llu", r->stats.host_experts);
    res_setf(row, "host_xfer_bytes", "%llu", r->stats.host_xfer_bytes);
    res_setf(row, "host_wait_s", "%.6g", r->stats.host_wait_s);
  }
  if (r->has_counts) {
    res_setf(row, "calls_per_step", "%.6g", r->counts.calls_per_step);
    res_setf(row, "host_syncs_per_step", "%.6g", r->counts.syncs_per_step);
  }
}

/* The row's noise columns (noise.h): what the machine did since before,
 * how its compute probe and the link (capped at link GB/s, 0: not) ran. */
static void noise_columns(res_row *row, const noise_sample *before, double probe_before,
                          const run_result *r, double link) {
  const noise_sample after = noise_now();
  const noise_figures nf = noise_between(before, &after);
  const double probe = noise_compute_probe() / probe_before;
  const double avg_copy =
      r->stats.fetches > 0 ? (double)r->stats.bytes_h2d / (double)r->stats.fetches : 0.0;
  const bool noisy = (nf.ok && nf.noisy) ||
                     noise_rates_noisy(probe, r->link_achieved_gbps, link, avg_copy);
  if (nf.ok) {
    res_setf(row, "other_cores", "%.3f", nf.other_cores);
    res_setf(row, "steal_share", "%.4f", nf.steal_share);
  }
  if (isfinite(probe)) res_setf(row, "compute_probe_ratio", "%.3f", probe);
  if (r->link_achieved_gbps > 0) res_setf(row, "link_achieved_gbps", "%.4g", r->link_achieved_gbps);
  if (nf.ok || isfinite(probe)) res_set(row, "noisy", noisy ? "1" : "0");
}

/* The row's quality columns from r's eval, and their change against the
 * gpu-only reference ref (may be NULL) over the same tokens. */
static void eval_columns(res_row *row, const run_result *r, const run_result *ref) {
  const double ce = r->eval.nll / (double)r->eval.tokens;
  const double acc = (double)r->eval.correct / (double)r->eval.tokens;
  res_setf(row, "eval_tokens", "%llu", r->eval.tokens);
  res_setf(row, "eval_cross_entropy", "%.9g", ce);
  res_setf(row, "eval_perplexity", "%.9g", exp(ce));
  res_setf(row, "eval_accuracy", "%.9g", acc);
  if (ref && ref->status == MOE_OK && ref->has_eval && ref->eval.tokens == r->eval.tokens) {
    const double rce = ref->eval.nll / (double)ref->eval.tokens;
    res_setf(row, "eval_perplexity_change", "%.6g", exp(ce) / exp(rce) - 1.0);
    res_setf(row, "eval_accuracy_change", "%.6g",
             acc - (double)ref->eval.correct / (double)ref->eval.tokens);
  }
}

/* Runs warm-up and measured repetitions of one configuration and fills a
 * result row.  ref (may be NULL) is gpu-only's result on the same inputs,
 * for parity; *keep receives this run's last result when keep is non-NULL. */
void run_row(const row_config *rc, res_row *row, const run_result *ref, run_result *keep,
                    bool want_logits) {
  row_key_columns(rc, row);
  if (rc->link_ratio > 0) res_setf(row, "link_gbps_derived", "%.6g", rc->link_gbps);
  run_spec sp = {.model = rc->model, .policy = rc->policy, .routing = rc->routing,
                 .backend = rc->backend, .threads = rc->threads, .link_gbps = rc->link_gbps,
                 .device_mem = rc->budget, .batch = rc->batch, .prompt_len = rc->wl->prompt_len,
                 .gen_len = rc->wl->gen_len, .prompt_seed = rc->wl->seed, .prompts = rc->prompts,
                 .n_prompts = rc->n_prompts, .requests = rc->wl->requests,
                 .lookahead = rc->lookahead, .cache = rc->cache, .hardware = rc->hardware,
                 .sim_routing = rc->sim_routing, .routing_log = rc->routing_log,
                 .host_threads = rc->host_threads, .host_gbps = rc->host_gbps};
  run_result r = {0};
  /* the trace is of the last measured repetition (each run rewrites it) */
  for (int i = 0; i < rc->warmup; i++) {
    runner_run(&sp, &r);
    run_result_free(&r);
    if (r.status != MOE_OK) break;
  }
  double tps[SUITE_MAX_REPS], ttft[SUITE_MAX_REPS], e2e[SUITE_MAX_REPS], stall[SUITE_MAX_REPS], p50[SUITE_MAX_REPS],
      p90[SUITE_MAX_REPS], p99[SUITE_MAX_REPS];
  int n = 0;
  const noise_sample before = noise_now(); /* what else the machine does meanwhile */
  const double probe_before = noise_compute_probe();
  for (int i = 0; i < rc->reps && i < SUITE_MAX_REPS; i++) {
    sp.keep_logits = want_logits && i == rc->reps - 1;
    sp.trace_path = i == rc->reps - 1 ? rc->trace_path : NULL;
    /* quality once, on the last repetition */
    sp.eval_windows = i == rc->reps - 1 ? rc->eval : NULL;
    sp.eval_n = rc->eval_n;
    sp.eval_len = rc->eval_len;
    if (i > 0) run_result_free(&r);
    runner_run(&sp, &r);
    if (r.status != MOE_OK) break;
    tps[n] = r.tokens_per_s;
    ttft[n] = r.prefill_s;
    e2e[n] = r.total_s;
    stall[n] = r.stats.stall_s;
    p50[n] = r.step_p50_s;
    p90[n] = r.step_p90_s;
    p99[n] = r.step_p99_s;
    n++;
  }
  res_set(row, "status", status_word(r.status));
  if (r.status != MOE_OK) {
    res_set(row, "error", r.error);
  } else {
    row_figures(row, &r, tps, ttft, e2e, stall, p50, p90, p99, n);
    if (!r.modeled) /* modeled times do not depend on the machine */
      noise_columns(row, &before, probe_before, &r, rc->link_gbps);
    if (r.stats.pinned >= 0)
      res_setf(row, "pin_s", "%.6g", rc->model_pin_s > 0 ? rc->model_pin_s : r.stats.pin_s);
    if (r.has_eval) eval_columns(row, &r, ref);
    if (ref && ref->status == MOE_OK) {
      double match, diff;
      runner_parity(ref, &r, rc->batch, rc->wl->gen_len, moe_model_config(rc->model)->vocab,
                    &match, &diff);
      if (!isnan(match)) res_setf(row, "token_match_rate", "%.6f", match);
      if (!isnan(diff)) res_setf(row, "max_logit_diff", "%.6g", diff);
    }
  }
  if (keep) {
    *keep = r;
  } else {
    run_result_free(&r);
  }
}

static json_t *capture(const char *cmd) {
  FILE *p = popen(cmd, "r");
  if (p == NULL) return json_null();
  char buf[256] = "";
  size_t n = fread(buf, 1, sizeof buf - 1, p);
  buf[n] = '\0';
  int st = pclose(p);
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) buf[--n] = '\0';
  return st == 0 ? json_string(buf) : json_null();
}

json_t *row_argv_json(int argc, char **argv) {
  json_t *av = json_array();
  json_array_append_new(av, json_string("moebench"));
  for (int i = 0; i < argc; i++) json_array_append_new(av, json_string(argv[i]));
  return av;
}

json_t *row_metadata(json_t *av, const char *suite_name, const char *backend, double link,
                     const char *hardware, const char *start) {
  json_t *m = json_object();
  json_object_set_new(m, "schema_version", json_string(RES_SCHEMA_VERSION));
  json_object_set_new(m, "moebench_version", json_string(moe_version()));
  json_object_set_new(m, "git_commit", capture("git -C '" MOE_SOURCE_DIR "' rev-parse HEAD 2>/dev/null"));
  json_t *dirty = capture("git -C '" MOE_SOURCE_DIR "' status --porcelain --untracked-files=no 2>/dev/null | head -c 1");
  json_object_set_new(m, "git_dirty", json_is_string(dirty) ? json_boolean(json_string_length(dirty) > 0) : json_null());
  json_decref(dirty);
  json_object_set_new(m, "argv", av);
  json_object_set_new(m, "suite", suite_name ? json_string(suite_name) : json_null());
  json_object_set_new(m, "host_cpu", capture("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'"));
  json_object_set_new(m, "host_cores", json_integer(sysconf(_SC_NPROCESSORS_ONLN)));
  json_object_set_new(m, "host_memory_bytes",
                      json_integer((json_int_t)sysconf(_SC_PHYS_PAGES) * sysconf(_SC_PAGESIZE)));
  json_object_set_new(m, "backend", json_string(backend));
  /* what each compiled-in backend finds on this machine */
  json_t *devs = json_object();
  for (size_t i = 0; i < moe_backend_count(); i++) {
    const moe_backend_ops *o = moe_backend_at(i);
    char desc[256] = "present";
    moe_error err = {0};
    const bool absent = o->probe && o->probe(desc, sizeof desc, &err) != MOE_OK;
    json_object_set_new(devs, o->name, json_string(absent ? err.msg : desc));
  }
  json_object_set_new(m, "devices", devs);
  json_object_set_new(m, "link_gbps", json_real(link));
  char hw[1300];
  if (hardware && hardware[0])
    snprintf(hw, sizeof hw, "%s: every time is MODELED on this profile (the sim backend's cost model)",
             hardware);
  else
    snprintf(hw, sizeof hw, "none: every time is measured on this machine");
  json_object_set_new(m, "hardware_profile", json_string(hw));
  json_object_set_new(m, "start_time", json_string(start));
  return m;
}

moe_status row_write_outputs(const char *prefix, const res_table *t, json_t *meta, moe_error *err) {
  char path[MOE_PUBLISH_PATH_MAX + 8]; /* the prefix was checked (cli_check_prefix) */
  snprintf(path, sizeof path, "%s.csv", prefix);
  moe_status st = res_write_csv(path, t, err);
  if (st != MOE_OK) return st;
  char end[32];
  iso_now(end, sizeof end);
  json_t *m = json_deep_copy(meta);
  json_object_set_new(m, "end_time", json_string(end));
  snprintf(path, sizeof path, "%s.json", prefix);
  return res_write_json(path, t, m, err);
}
