/* moebench run | sweep | compare | report: the harness users touch.
 *
 * run     one configuration from flags
 * sweep   every run of a suite; progress on stderr; rows written as they
 *         complete (CSV + JSON, atomically); --resume skips finished rows
 * compare two result files; exit 1 on a regression past tolerance
 * report  a markdown table (and gnuplot PNGs when gnuplot is installed) */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "moe/clock.h"
#include "moe/publish.h"
#include "noise.h"
#include "cli.h"
#include "commands.h"
#include "moe/version.h"
#include "results.h"
#include "runner.h"
#include "suite.h"

static void iso_now(char *buf, size_t cap) {
  time_t t = time(NULL);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ------------------------------------------------------------ one row */

typedef struct row_config {
  const char *model_name;
  uint64_t model_seed;
  moe_model *model;
  moe_dtype dtype;
  const workload *wl;
  int batch;
  const moe_policy *policy;
  moe_routing routing;
  const char *backend;
  const char *device;           /* the backend's device name */
  size_t budget;
  double link_gbps;
  int threads, reps, warmup;
  const int32_t *prompts;
  int n_prompts;
  const char *trace_path;       /* run: --trace (the last repetition's) */
  const int32_t *eval;          /* quality windows (NULL: none) */
  int eval_n, eval_len;
  int lookahead;                /* pre-gate lookahead (0, 1: the next block) */
  const char *policy_label;     /* the policy column: NAME or NAME+KIND:SIZE (NULL: the name) */
  const char *cache;            /* the expert cache spec, or NULL */
  const char *hardware;         /* sim backend: the profile file (NULL otherwise) */
  const char *sim_routing;      /* sim backend: the routing source (NULL: uniform) */
  double link_ratio;            /* > 0: link_gbps was derived from this ratio (the key holds
                                   the ratio, link_gbps_derived the cap) */
  const char *routing_log;      /* run: --record-routing (the last repetition's) */
  double model_pin_s;           /* > 0: the sweep pinned the model, in this many seconds
                                   (the rows' own registrations then only share it) */
  const char *inputs;           /* the inputs column (cli_inputs_hash), or NULL */
} row_config;

static const char *status_word(moe_status st) {
  return st == MOE_OK ? "ok" : st == MOE_ERR_OOM ? "OOM" : "error";
}

/* The key columns of a row: every input that changes a figure. */
static void row_key_columns(const row_config *rc, res_row *row) {
  res_set(row, "model", rc->model_name);
  res_setf(row, "model_seed", "%llu", (unsigned long long)rc->model_seed);
  res_set(row, "dtype", moe_dtype_name(rc->dtype));
  res_set(row, "workload", rc->wl->name);
  res_set(row, "policy", rc->policy_label ? rc->policy_label : rc->policy->name);
  res_set(row, "routing", moe_routing_name(rc->routing));
  res_set(row, "backend", rc->backend);
  res_set(row, "device", rc->device);
  res_setf(row, "threads", "%d", rc->threads);
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

enum { MAX_REPS = 100 }; /* the most repetitions a row may ask for */
#define SHARD_MAX 1024    /* --shard K/N: N at most this */

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
  if (r->has_counts) {
    res_setf(row, "calls_per_step", "%.6g", r->counts.calls_per_step);
    res_setf(row, "host_syncs_per_step", "%.6g", r->counts.syncs_per_step);
  }
}

/* The row's noise columns (noise.h): what the machine did since before. */
static void noise_columns(res_row *row, const noise_sample *before) {
  const noise_sample after = noise_now();
  const noise_figures nf = noise_between(before, &after);
  if (!nf.ok) return;
  res_setf(row, "other_cores", "%.3f", nf.other_cores);
  res_setf(row, "steal_share", "%.4f", nf.steal_share);
  res_set(row, "noisy", nf.noisy ? "1" : "0");
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
static void run_row(const row_config *rc, res_row *row, const run_result *ref, run_result *keep,
                    bool want_logits) {
  row_key_columns(rc, row);
  if (rc->link_ratio > 0) res_setf(row, "link_gbps_derived", "%.6g", rc->link_gbps);
  run_spec sp = {.model = rc->model, .policy = rc->policy, .routing = rc->routing,
                 .backend = rc->backend, .threads = rc->threads, .link_gbps = rc->link_gbps,
                 .device_mem = rc->budget, .batch = rc->batch, .prompt_len = rc->wl->prompt_len,
                 .gen_len = rc->wl->gen_len, .prompt_seed = rc->wl->seed, .prompts = rc->prompts,
                 .n_prompts = rc->n_prompts, .requests = rc->wl->requests,
                 .lookahead = rc->lookahead, .cache = rc->cache, .hardware = rc->hardware,
                 .sim_routing = rc->sim_routing, .routing_log = rc->routing_log};
  run_result r = {0};
  /* the trace is of the last measured repetition (each run rewrites it) */
  for (int i = 0; i < rc->warmup; i++) {
    runner_run(&sp, &r);
    run_result_free(&r);
    if (r.status != MOE_OK) break;
  }
  double tps[MAX_REPS], ttft[MAX_REPS], e2e[MAX_REPS], stall[MAX_REPS], p50[MAX_REPS],
      p90[MAX_REPS], p99[MAX_REPS];
  int n = 0;
  const noise_sample before = noise_now(); /* what else the machine does meanwhile */
  for (int i = 0; i < rc->reps && i < MAX_REPS; i++) {
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
    if (!r.modeled) noise_columns(row, &before); /* modeled times do not depend on the machine */
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

/* ------------------------------------------------------------ backends */

/* Resolves a backend name ("auto": moe_backend_auto) and learns its device
 * name by opening it once.  A link cap on a backend that cannot emulate one
 * is dropped (*link = 0) with a note, since its copies use the real link.
 * Returns the table, or NULL after printing why. */
static const moe_backend_ops *resolve_backend(const char *name, int threads, double *link,
                                              const char *hardware, char *device, size_t cap) {
  const moe_backend_ops *o = strcmp(name, "auto") == 0 ? moe_backend_auto() : moe_backend_find(name);
  moe_error err = {0};
  if (o == NULL) {
    moe_device *probe = NULL;
    (void)moe_device_create(&probe, name, NULL, &err); /* the registry's own message */
    cli_fail(&err);
    return NULL;
  }
  if (*link != 0 && !(o->caps & MOE_BACKEND_CAP_LINK_CAP)) {
    fprintf(stderr, "moebench: note: the %s backend copies over its real link; link cap %g GB/s "
                    "ignored (rows record 0)\n", o->name, *link);
    *link = 0;
  }
  moe_device *dev = NULL;
  moe_backend_options bo = {.threads = threads, .link_gbps = *link, .hardware = hardware};
  if (moe_device_create_ops(&dev, o, &bo, &err) != MOE_OK) {
    cli_fail(&err);
    return NULL;
  }
  snprintf(device, cap, "%s", moe_device_name(dev));
  moe_device_destroy(dev);
  return o;
}

/* ------------------------------------------------------------ metadata */

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

/* argv as given, before getopt reorders it. */
static json_t *argv_json(int argc, char **argv) {
  json_t *av = json_array();
  json_array_append_new(av, json_string("moebench"));
  for (int i = 0; i < argc; i++) json_array_append_new(av, json_string(argv[i]));
  return av;
}

static json_t *metadata(json_t *av, const char *suite_name, const char *backend, double link,
                        const char *start) {
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
  json_object_set_new(m, "hardware_profile", json_string("none: every figure is measured on this machine (no cost model yet)"));
  json_object_set_new(m, "start_time", json_string(start));
  return m;
}

static moe_status write_outputs(const char *prefix, const res_table *t, json_t *meta, moe_error *err) {
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

static void mkdir_parent(const char *prefix) { cli_mkdir_parent(prefix); }

/* ------------------------------------------------------------ sweep */

static void sweep_usage(FILE *f) {
  fprintf(f,
          "usage: moebench sweep SUITE [options]\n\n"
          "Runs every configuration of a suite (workloads/suites/SUITE.json or a path):\n"
          "models x workloads (x batch sizes) x device budgets x policies.  Rows are written\n"
          "to PREFIX.csv and PREFIX.json after each run (temporary file + rename); a lock\n"
          "file PREFIX.lock keeps a second sweep from writing the same files.\n\n"
          "  -o, --out PREFIX   output prefix (default results/runs/SUITE)\n"
          "  --resume           keep rows already in PREFIX.csv whose key (every input that\n"
          "                     changes a figure) matches, and skip their runs\n"
          "  --reps N           override the suite's repetitions (1..%d)\n"
          "  --shard K/N        run the K-th of N shards: a deterministic share of the\n"
          "                     suite's (model, workload, batch) groups, balanced by their\n"
          "                     estimated cost; 'moebench merge' joins the shards' files\n"
          "  --quiet            no progress output\n"
          "  -h, --help         this text\n\n"
          "Exit status: 0 when every row's status is ok or OOM (a configuration that does\n"
          "not fit its budget is a result); 1 when any row's status is error (all rows,\n"
          "failed ones with their message, are still written) or a file could not be\n"
          "written; 2 bad arguments or a bad suite.\n",
          MAX_REPS);
}

typedef struct progress {
  int total, done;
  double start;
  bool tty, quiet;
} progress;

static void progress_show(progress *p, const char *what) {
  if (p->quiet) return;
  double el = moe_clock_s() - p->start;
  double eta = p->done > 0 ? el / p->done * (p->total - p->done) : 0;
  if (p->tty) {
    int width = 24, fill = p->total ? width * p->done / p->total : 0;
    fprintf(stderr, "\r\033[K[%.*s%*s] %d/%d %s  elapsed %.0fs  ETA %.0fs", fill,
            "########################", width - fill, "", p->done, p->total, what, el, eta);
  } else {
    fprintf(stderr, "[%d/%d] %s (elapsed %.0f s, ETA %.0f s)\n", p->done, p->total, what, el, eta);
  }
  fflush(stderr);
}

/* One sweep's state, shared by its loops. */
typedef struct sweep_ctx {
  suite *s;
  cli_preset *presets;
  const char *backend;
  char device[256];
  char prefix[MOE_PUBLISH_PATH_MAX + 1];
  bool resume;
  res_table t;
  json_t *meta;
  progress pr;
  int ran, skipped, reruns; /* rows run, rows kept by --resume, kept rows rerun as references */
  res_index *done_ix;    /* keys of the rows --resume kept (read once) */
  bool *kept;            /* [rows read by --resume]: the suite still has this row */
  size_t n_read;         /* rows read by --resume */
  const moe_policy *pol[SUITE_MAX];        /* the suite's policies, resolved */
  char label[SUITE_MAX][SUITE_NAME_MAX];   /* their rows' policy column */
  const char *cache[SUITE_MAX];            /* their expert caches (NULL: none) */
  moe_policy_library libs[SUITE_MAX];      /* plugins among them, open for the sweep */
  char plugin_path[SUITE_MAX][1200];       /* their files ("" for a built-in) */
  char model_hash[SUITE_MAX][17];          /* cli_model_hash of each model */
  moe_device *holder;    /* keeps the current model pinned across rows (NULL: none) */
  bool pinned;
  double pin_s;          /* how long pinning the current model took */
  int shard_k, shard_n;  /* --shard K/N (1-based); 0/0: every row */
  const int32_t *eval;   /* the current workload's quality windows (NULL: none) */
  int eval_n, eval_len;
  int *group_shard;      /* [model x workload x batch group] -> its shard (1-based) */
  int n_groups;
} sweep_ctx;

/* The index of group (model mi, workload w, batch bi) in loop order. */
static int group_of(const sweep_ctx *x, int mi, int w, int bi) {
  int g = 0;
  for (int m = 0; m < x->s->n_models; m++)
    for (int k = 0; k < x->s->n_workloads; k++)
      for (int b = 0; b < x->s->workloads[k].n_batches; b++, g++)
        if (m == mi && k == w && b == bi) return g;
  return -1;
}

/* Splits the suite's groups (one model, workload and batch with all their
 * budgets and policies: a group's rows share the gpu-only parity reference)
 * over N shards, balanced by an estimate of each group's cost (weight
 * bytes x tokens x batch x runs), largest first to the least loaded shard,
 * ties to the earlier group and the lower shard.  Depends on the suite
 * only, so every shard computes the same split and --resume keeps it. */
static int plan_shards(sweep_ctx *x) {
  const suite *s = x->s;
  int n = 0;
  for (int k = 0; k < s->n_workloads; k++) n += s->workloads[k].n_batches;
  n *= s->n_models;
  x->n_groups = n;
  x->group_shard = calloc((size_t)(n ? n : 1), sizeof *x->group_shard);
  double *cost = calloc((size_t)(n ? n : 1), sizeof *cost), load[SHARD_MAX] = {0};
  int *order = calloc((size_t)(n ? n : 1), sizeof *order);
  if (!x->group_shard || !cost || !order) {
    free(cost);
    free(order);
    cli_error("out of host memory planning shards");
    return 1;
  }
  int g = 0;
  for (int m = 0; m < s->n_models; m++) {
    size_t dense = 0, experts = 0;
    moe_error err = {0};
    if (moe_model_plan_layout(&x->presets[m].cfg, x->presets[m].dtype, &dense, &experts, &err) != MOE_OK)
      dense = experts = 1;
    for (int k = 0; k < s->n_workloads; k++)
      for (int b = 0; b < s->workloads[k].n_batches; b++, g++) {
        const workload *wl = &s->workloads[k];
        cost[g] = ((double)dense + (double)experts) * (double)(wl->prompt_len + wl->gen_len) *
                  (double)wl->batches[b] * (double)wl->requests *
                  (double)(s->repetitions + s->warmup) * s->n_budgets * s->n_policies;
        order[g] = g;
      }
  }
  for (int i = 1; i < n; i++) /* insertion sort: cost descending, index ascending */
    for (int j = i; j > 0 && cost[order[j]] > cost[order[j - 1]]; j--) {
      int t = order[j];
      order[j] = order[j - 1];
      order[j - 1] = t;
    }
  for (int i = 0; i < n; i++) {
    int best = 0;
    for (int k = 1; k < x->shard_n; k++)
      if (load[k] < load[best]) best = k;
    load[best] += cost[order[i]];
    x->group_shard[order[i]] = best + 1;
  }
  free(cost);
  free(order);
  return 0;
}

/* The routing a suite row runs: the suite's, else the policy's own. */
static moe_routing suite_routing(const suite *s, const moe_policy *pol) {
  if (!strcmp(s->routing, "pregated")) return MOE_ROUTING_PREGATED;
  if (!strcmp(s->routing, "conventional")) return MOE_ROUTING_CONVENTIONAL;
  return pol->default_routing == MOE_POLICY_ROUTING_PREGATED ? MOE_ROUTING_PREGATED
                                                            : MOE_ROUTING_CONVENTIONAL;
}

/* A finished row with rc's key is in the resumed table (an index lookup:
 * resuming a sweep of thousands of rows stays fast); it is marked kept. */
static bool row_done(sweep_ctx *x, const row_config *rc) {
  if (!x->resume || x->done_ix == NULL) return false;
  res_table probe;
  res_table_init(&probe);
  res_row *r = res_table_add(&probe);
  bool done = false;
  if (r) {
    row_key_columns(rc, r);
    char key[RES_KEY_MAX];
    res_key(r, key, sizeof key);
    long at = res_index_find(x->done_ix, key);
    done = at >= 0;
    if (done) x->kept[at] = true;
  }
  res_table_free(&probe);
  return done;
}

/* Pins a newly built model once for the whole sweep (a backend that pins
 * host memory would otherwise pin gigabytes again for every row); rows'
 * own registrations then share it.  Failure is only slower copies. */
static void sweep_pin(sweep_ctx *x, moe_model *m) {
  moe_error err = {0};
  const moe_backend_ops *o = moe_backend_find(x->backend);
  if (o == NULL || o->host_register == NULL || (o->caps & MOE_BACKEND_CAP_MODELED))
    return; /* this backend does not pin */
  if (x->holder == NULL) {
    moe_backend_options bo = {.threads = 1};
    if (moe_device_create(&x->holder, x->backend, &bo, &err) != MOE_OK) return;
  }
  const double t0 = moe_clock_s();
  x->pinned = moe_model_pin(m, x->holder, &err) == MOE_OK;
  x->pin_s = moe_clock_s() - t0;
  if (!x->pinned) fprintf(stderr, "moebench: note: %s; rows pin the model themselves\n", err.msg);
}

static void sweep_unpin(sweep_ctx *x, moe_model *m) {
  if (x->pinned && m) moe_model_unpin(m, x->holder);
  x->pinned = false;
}

/* The policies of one (model, workload, batch) across the budgets, gpu-only
 * first: it is the parity reference of the others.  The budget does not
 * change the math, so a gpu-only run that fitted an earlier budget also
 * serves the budgets where gpu-only is OOM. */
static int sweep_batch(sweep_ctx *x, int mi, moe_model **model, const workload *wl, int batch,
                       const int32_t *ids, int n_ids) {
  const suite *s = x->s;
  const cli_preset *ps = &x->presets[mi];
  moe_error err = {0};
  int rc = 0;
  run_result ref = {0};
  bool have_ref = false;
  int order[SUITE_MAX], no = 0;
  for (int p = 0; p < s->n_policies; p++)
    if (!strcmp(x->label[p], "gpu-only")) order[no++] = p;
  for (int p = 0; p < s->n_policies; p++)
    if (strcmp(x->label[p], "gpu-only")) order[no++] = p;
  /* link_ratio: this group's cap from a gpu-only warm-up on this machine */
  double link = s->link_gbps;
  bool derived = false;
  for (int bu = 0; bu < s->n_budgets && rc == 0; bu++)
    for (int k = 0; k < no && rc == 0; k++) {
      const moe_policy *pol = x->pol[order[k]];
      row_config rcfg = {ps->name,      ps->seed,          *model,     ps->dtype,   wl,
                         batch,         pol,               suite_routing(s, pol),  x->backend,
                         x->device,     s->budgets[bu],    link, s->threads,
                         s->repetitions, s->warmup,        ids,        n_ids,       NULL,
                         x->eval,       x->eval_n,         x->eval_len, s->lookahead,
                         x->label[order[k]], x->cache[order[k]],
                         s->hardware[0] ? s->hardware : NULL,
                         s->sim_routing[0] ? s->sim_routing : NULL, s->link_ratio, NULL,
                         x->pinned ? x->pin_s : 0.0, NULL};
      char inputs[17];
      if (!cli_inputs_hash(x->model_hash[mi], wl->token_file, wl->eval_file,
                           s->hardware, s->sim_routing,
                           x->plugin_path[order[k]], inputs)) {
        cli_error("sweep: an input of row %s cannot be read to key it", x->label[order[k]]);
        rc = 1;
        break;
      }
      rcfg.inputs = inputs;
      char what[512];
      char budget[32] = "capacity";
      if (s->budgets[bu]) snprintf(budget, sizeof budget, "%zuB", s->budgets[bu]);
      snprintf(what, sizeof what, "%s/%s/b%d/%s/%.120s", ps->name, wl->name, batch, budget,
               x->label[order[k]]);
      const bool done_before = row_done(x, &rcfg);
      const bool is_ref = !strcmp(x->label[order[k]], "gpu-only");
      if (done_before && (!is_ref || have_ref)) {
        x->pr.done++;
        x->skipped++;
        progress_show(&x->pr, what);
        continue;
      }
      if (*model == NULL) {
        /* the sim reads no weights: a virtual model of any size */
        if (cli_preset_build_for(ps, x->backend, model, &err) != MOE_OK) {
          rc = cli_fail(&err);
          break;
        }
        sweep_pin(x, *model);
      }
      rcfg.model = *model;
      if (s->link_ratio > 0 && !derived) {
        run_spec ws = {.model = *model, .backend = x->backend, .threads = s->threads,
                       .batch = batch, .prompt_len = wl->prompt_len, .gen_len = wl->gen_len,
                       .prompt_seed = wl->seed, .prompts = ids, .n_prompts = n_ids};
        char why[700];
        double window = 0, copy = 0;
        link = runner_link_for_ratio(&ws, s->link_ratio, &window, &copy, why, sizeof why);
        if (isnan(link)) {
          cli_error("%s: %s", ps->name, why);
          rc = 1;
          break;
        }
        derived = true;
        rcfg.link_gbps = link;
        if (!x->pr.quiet)
          fprintf(stderr, "moebench: %s/%s/b%d: link ratio %g: a decoder MoE block window "
                          "computes in %.2f ms (gpu-only warm-up, measured), so one expert's "
                          "copy takes %.2f ms: link %.3f GB/s\n",
                  ps->name, wl->name, batch, s->link_ratio, window * 1e3, copy * 1e3, link);
      }
      const moe_config *mc = moe_model_config(*model);
      bool want_logits = (double)batch * wl->gen_len * mc->vocab <= 64e6;
      progress_show(&x->pr, what);
      run_result cur = {0};
      res_table scratch;
      res_table_init(&scratch);
      /* a finished gpu-only row is rerun, not re-recorded, only to be the reference */
      res_row *row = done_before ? res_table_add(&scratch) : res_table_add(&x->t);
      if (row == NULL) {
        cli_error("out of host memory for result rows");
        res_table_free(&scratch);
        rc = 1;
        break;
      }
      run_row(&rcfg, row, have_ref ? &ref : NULL, is_ref ? &cur : NULL, want_logits);
      res_table_free(&scratch);
      if (is_ref && cur.status == MOE_OK) {
        run_result_free(&ref);
        ref = cur;
        have_ref = true;
      } else if (is_ref) {
        run_result_free(&cur);
      }
      if (done_before) {
        x->skipped++; /* kept; its run was only the parity reference */
        x->reruns++;
      } else {
        x->ran++;
        if (write_outputs(x->prefix, &x->t, x->meta, &err) != MOE_OK) rc = cli_fail(&err);
      }
      x->pr.done++;
    }
  run_result_free(&ref);
  return rc;
}

/* Every workload and batch of model mi; the model is built on first need. */
static int sweep_model(sweep_ctx *x, int mi) {
  moe_model *model = NULL;
  int rc = 0;
  /* the model's content keys its rows (a checkpoint's weights read whole, once) */
  if (!cli_model_hash(&x->presets[mi], x->model_hash[mi])) {
    cli_error("sweep: model %s cannot be read to key its rows", x->presets[mi].name);
    return 1;
  }
  for (int w = 0; w < x->s->n_workloads && rc == 0; w++) {
    const workload *wl = &x->s->workloads[w];
    int32_t *ids = NULL;
    int n_ids = 0, len = 0;
    if (wl->token_file[0] &&
        cli_read_token_file(wl->token_file, wl->prompt_len, &ids, &n_ids, &len) != 0) {
      rc = 1;
      break;
    }
    int32_t *ev = NULL;
    x->eval = NULL;
    x->eval_n = x->eval_len = 0;
    if (wl->eval_file[0]) {
      if (cli_read_token_file(wl->eval_file, -1, &ev, &x->eval_n, &x->eval_len) != 0) {
        free(ids);
        rc = 1;
        break;
      }
      if (x->eval_len < 2) {
        cli_error("%s: eval windows of %d token(s): at least 2 are needed", wl->eval_file, x->eval_len);
        free(ids);
        free(ev);
        rc = 1;
        break;
      }
      if (wl->eval_windows > 0 && wl->eval_windows < x->eval_n) x->eval_n = wl->eval_windows;
      x->eval = ev;
    }
    for (int bi = 0; bi < wl->n_batches && rc == 0; bi++)
      if (!x->shard_n || x->group_shard[group_of(x, mi, w, bi)] == x->shard_k)
        rc = sweep_batch(x, mi, &model, wl, wl->batches[bi], ids, n_ids);
    free(ids);
    free(ev);
    x->eval = NULL;
  }
  sweep_unpin(x, model);
  moe_model_free(model);
  return rc;
}

/* Metadata for the sweep's JSON: run facts plus the seeds of every model
 * and workload. */
static json_t *sweep_metadata(const sweep_ctx *x, int argc, char **argv) {
  char start[32];
  iso_now(start, sizeof start);
  json_t *meta = metadata(argv_json(argc, argv), x->s->name, x->backend, x->s->link_gbps, start);
  json_object_set_new(meta, "device", json_string(x->device));
  json_t *seeds = json_object();
  for (int i = 0; i < x->s->n_models; i++)
    json_object_set_new(seeds, x->presets[i].name, json_integer((json_int_t)x->presets[i].seed));
  json_object_set_new(meta, "model_seeds", seeds);
  json_t *wseeds = json_object();
  for (int i = 0; i < x->s->n_workloads; i++) {
    const workload *w = &x->s->workloads[i];
    json_object_set_new(wseeds, w->name,
                        w->token_file[0] ? json_string(w->token_file) : json_integer((json_int_t)w->seed));
  }
  json_object_set_new(meta, "prompt_seeds", wseeds);
  /* the suite file's contents: merge refuses shards of two versions of it */
  char hex[17];
  if (x->s->path[0] && cli_file_hash_hex(x->s->path, hex))
    json_object_set_new(meta, "suite_hash", json_string(hex));
  return meta;
}

/* Whether PREFIX.csv or .json would overwrite one of the suite's inputs:
 * the suite file, a workload's token or eval file, the hardware profile,
 * a routing trace.  Prints why and returns 1 when it would. */
static int sweep_clobbers(const sweep_ctx *x) {
  char csv[MOE_PUBLISH_PATH_MAX + 8], json[MOE_PUBLISH_PATH_MAX + 8];
  snprintf(csv, sizeof csv, "%s.csv", x->prefix);
  snprintf(json, sizeof json, "%s.json", x->prefix);
  const suite *s = x->s;
  const char *trace = !strncmp(s->sim_routing, "trace:", 6) ? s->sim_routing + 6 : NULL;
  const char *ins[3 + 2 * SUITE_MAX] = {s->path, s->hardware, trace};
  int n = 3;
  for (int w = 0; w < s->n_workloads && w < SUITE_MAX; w++) {
    ins[n++] = s->workloads[w].token_file;
    ins[n++] = s->workloads[w].eval_file;
  }
  for (int i = 0; i < n; i++)
    if (cli_output_clobbers("sweep", csv, ins[i]) || cli_output_clobbers("sweep", json, ins[i]))
      return 1;
  return 0;
}

/* --resume onto PREFIX.csv written by another suite would drop that
 * suite's rows (they are not this suite's): refused.  The suite is the
 * one PREFIX.json names; a CSV without its JSON is refused too (which
 * suite wrote it cannot be told).  Returns 1 after printing why. */
static int resume_other_suite(const sweep_ctx *x, const char *csv) {
  char path[MOE_PUBLISH_PATH_MAX + 8];
  snprintf(path, sizeof path, "%s.json", x->prefix);
  json_error_t je;
  json_t *j = json_load_file(path, 0, &je), *m = j ? json_object_get(j, "metadata") : NULL;
  const char *name = m ? json_string_value(json_object_get(m, "suite")) : NULL;
  int rc = 0;
  if (name == NULL) {
    cli_error("sweep --resume: %s has no %s naming the suite that wrote it; refusing to resume "
              "(its rows could be another suite's); move it away or run without --resume", csv, path);
    rc = 1;
  } else if (strcmp(name, x->s->name) != 0) {
    cli_error("sweep --resume: %s was written by suite '%s', not '%s'; refusing to resume onto "
              "it (that would drop its rows); use another -o", csv, name, x->s->name);
    rc = 1;
  }
  json_decref(j);
  return rc;
}

/* Removes the rows read by --resume that the suite did not visit (its
 * inputs changed, or the suite no longer lists them); returns how many. */
static int drop_stale_rows(sweep_ctx *x) {
  size_t w = 0;
  int dropped = 0;
  for (size_t i = 0; i < x->t.n; i++) {
    if (i < x->n_read && !x->kept[i]) {
      for (size_t c = 0; c < res_ncols; c++) free(x->t.rows[i].v[c]);
      free(x->t.rows[i].v);
      dropped++;
      continue;
    }
    x->t.rows[w++] = x->t.rows[i];
  }
  x->t.n = w;
  return dropped;
}

/* A suite's policy entry: a built-in name, or the path of a plugin (it has
 * a '/' or ends in .so), relative to the suite file.  Returns 0, or 1
 * after printing why. */
static int resolve_policy(const suite *s, const char *entry, const moe_policy **pol,
                          moe_policy_library *lib, char file[1200]) {
  memset(lib, 0, sizeof *lib);
  file[0] = '\0';
  const size_t n = strlen(entry);
  if (strchr(entry, '/') == NULL && !(n > 3 && strcmp(entry + n - 3, ".so") == 0)) {
    *pol = moe_policy_find(entry);
    if (*pol == NULL) {
      cli_error("%s: unknown policy '%s' in field 'policies' (a built-in name, or a plugin's path)",
                s->path, entry);
      return 1;
    }
    return 0;
  }
  char path[1200];
  if (entry[0] == '/') {
    snprintf(path, sizeof path, "%s", entry);
  } else {
    const char *slash = strrchr(s->path, '/');
    int dl = slash ? (int)(slash - s->path) : 1;
    snprintf(path, sizeof path, "%.*s/%s", dl, slash ? s->path : ".", entry);
  }
  moe_error err = {0};
  if (moe_policy_plugin_load(lib, path, &err) != MOE_OK) {
    cli_fail(&err);
    return 1;
  }
  *pol = lib->policy;
  memcpy(file, path, sizeof path < 1200 ? sizeof path : 1200);
  return 0;
}

/* Options of sweep; returns -1 to go on, else the exit code. */
static int sweep_args(int argc, char **argv, const char **suite_arg, const char **out, bool *resume,
                      bool *quiet, long *reps, int *shard_k, int *shard_n) {
  static const struct option opts[] = {{"out", required_argument, 0, 'o'},
                                       {"shard", required_argument, 0, 'S'},
                                       {"resume", no_argument, 0, 'R'},
                                       {"reps", required_argument, 0, 'r'},
                                       {"quiet", no_argument, 0, 'q'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
    switch (c) {
      case 'o':
        if (cli_check_prefix("sweep", optarg) != 0) return 2;
        *out = optarg;
        break;
      case 'R': *resume = true; break;
      case 'q': *quiet = true; break;
      case 'S': {
        char spec[64];
        snprintf(spec, sizeof spec, "%s", optarg); /* optarg may be read-only */
        char *slash = strchr(spec, '/');
        long k = 0, n = 0;
        bool ok = slash != NULL && strlen(optarg) < sizeof spec;
        if (ok) {
          *slash = '\0';
          ok = cli_parse_int(spec, 1, SHARD_MAX, &k) && cli_parse_int(slash + 1, 1, SHARD_MAX, &n) &&
               k <= n;
        }
        if (!ok) {
          cli_error("sweep: invalid value '%s' for --shard (K/N with 1 <= K <= N <= %d)", optarg,
                    SHARD_MAX);
          return 2;
        }
        *shard_k = (int)k;
        *shard_n = (int)n;
        break;
      }
      case 'r':
        if (!cli_parse_int(optarg, 1, MAX_REPS, reps)) {
          cli_error("sweep: invalid value '%s' for --reps (1..%d)", optarg, MAX_REPS);
          return 2;
        }
        break;
      case 'h': sweep_usage(stdout); return 0;
      default:
        cli_error("sweep: unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
        return 2;
    }
  }
  if (optind != argc - 1) {
    cli_error("sweep: give exactly one suite (see 'moebench list suites')");
    return 2;
  }
  *suite_arg = argv[optind];
  return -1;
}

int cmd_sweep(int argc, char **argv) {
  char *orig[128]; /* getopt permutes argv; keep it as given for the metadata */
  const int n_orig = argc < 128 ? argc : 128;
  memcpy(orig, argv, (size_t)n_orig * sizeof *orig);
  const char *suite_arg = NULL, *out = NULL;
  bool resume = false, quiet = false;
  long reps = 0;
  int shard_k = 0, shard_n = 0;
  int rc = sweep_args(argc, argv, &suite_arg, &out, &resume, &quiet, &reps, &shard_k, &shard_n);
  if (rc >= 0) return rc;
  sweep_ctx x = {.resume = resume, .shard_k = shard_k, .shard_n = shard_n};
  res_table_init(&x.t);
  x.s = calloc(1, sizeof *x.s);
  moe_error err = {0};
  int lock_fd = -1;
  rc = 1;
  if (x.s == NULL || suite_load(x.s, suite_arg, &err) != MOE_OK) {
    if (x.s) cli_fail(&err);
    goto done;
  }
  if (reps) x.s->repetitions = (int)reps;
  for (int i = 0; i < x.s->n_policies; i++) {
    /* NAME or NAME+KIND:SIZE (the policy with an expert cache) */
    char base[SUITE_NAME_MAX];
    if (!cli_split_policy(x.s->policies[i], base, sizeof base, &x.cache[i])) {
      cli_error("%s: policy entry '%s' is not NAME or NAME+KIND:SIZE (KIND lru, lfu, static or ring; "
                "SIZE experts, N%% or bytes)", x.s->path, x.s->policies[i]);
      goto done;
    }
    if (resolve_policy(x.s, base, &x.pol[i], &x.libs[i], x.plugin_path[i]) != 0) goto done;
    snprintf(x.label[i], sizeof x.label[i], "%s%s%s", x.pol[i]->name, x.cache[i] ? "+" : "",
             x.cache[i] ? x.cache[i] : "");
  }
  for (int i = 0; i < x.s->n_policies; i++)
    for (int j = 0; j < i; j++)
      if (strcmp(x.label[i], x.label[j]) == 0 || (x.pol[i] == x.pol[j] && !x.cache[i] && !x.cache[j])) {
        cli_error("%s: policies '%s' and '%s' are both named '%s'", x.s->path, x.s->policies[j],
                  x.s->policies[i], x.label[i]);
        goto done;
      }
  x.presets = calloc((size_t)x.s->n_models, sizeof *x.presets);
  for (int i = 0; i < x.s->n_models; i++) {
    /* a model entry with a '/' is a checkpoint directory, relative to the
     * suite file unless absolute */
    char mpath[1200];
    const char *entry = x.s->models[i];
    if (strchr(entry, '/') && entry[0] != '/') {
      const char *slash = strrchr(x.s->path, '/');
      snprintf(mpath, sizeof mpath, "%.*s/%s", slash ? (int)(slash - x.s->path) : 1,
               slash ? x.s->path : ".", entry);
      entry = mpath;
    }
    if (strchr(entry, '/') && cli_check_model_dir(x.s->path, entry) != 0) goto done;
    if (cli_preset_load(&x.presets[i], entry, &err) != MOE_OK) {
      cli_fail(&err);
      goto done;
    }
  }
  const moe_backend_ops *bo =
      resolve_backend(x.s->backend, x.s->threads, &x.s->link_gbps,
                      x.s->hardware[0] ? x.s->hardware : NULL, x.device, sizeof x.device);
  if (bo == NULL) goto done;
  x.backend = bo->name;
  if (x.s->link_ratio > 0 && !(bo->caps & MOE_BACKEND_CAP_LINK_CAP)) {
    /* as a link cap: the backend's own link is the one measured (or modeled) */
    fprintf(stderr, "moebench: note: the %s backend copies over its own link; link ratio %g "
                    "ignored (rows record none)\n", bo->name, x.s->link_ratio);
    x.s->link_ratio = 0;
  }
  if (out && cli_check_prefix("sweep", out) != 0) goto done;
  if (out)
    snprintf(x.prefix, sizeof x.prefix, "%s", out);
  else if (x.shard_n)
    snprintf(x.prefix, sizeof x.prefix, "results/runs/%s.shard%d-of-%d", x.s->name, x.shard_k,
             x.shard_n);
  else
    snprintf(x.prefix, sizeof x.prefix, "results/runs/%s", x.s->name);
  if (x.shard_n && plan_shards(&x) != 0) goto done;
  mkdir_parent(x.prefix);
  if ((lock_fd = cli_lock_prefix("sweep", x.prefix)) < 0 || sweep_clobbers(&x)) goto done;
  char path[MOE_PUBLISH_PATH_MAX + 8];
  snprintf(path, sizeof path, "%s.csv", x.prefix);
  if (resume && access(path, F_OK) == 0 && resume_other_suite(&x, path)) goto done;
  if (resume && access(path, F_OK) == 0 &&
      (res_read_csv(path, &x.t, &err) != MOE_OK || res_check_values(&x.t, path, &err) != MOE_OK)) {
    cli_fail(&err);
    goto done;
  }
  if (resume) {
    long dup = -1;
    x.done_ix = res_index_build(&x.t, NULL, &dup);
    x.n_read = x.t.n;
    x.kept = calloc(x.t.n ? x.t.n : 1, sizeof *x.kept);
    if (x.done_ix == NULL || x.kept == NULL) {
      cli_error("out of host memory indexing %s", path);
      goto done;
    }
    if (dup >= 0) {
      cli_error("%s: row %ld repeats the key of an earlier row; refusing to resume from it", path,
                dup + 1);
      goto done;
    }
  }
  x.meta = sweep_metadata(&x, n_orig, orig);
  x.pr = (progress){0, 0, moe_clock_s(), isatty(2) != 0, quiet};
  for (int w = 0; w < x.s->n_workloads; w++) x.pr.total += x.s->workloads[w].n_batches;
  x.pr.total *= x.s->n_models * x.s->n_budgets * x.s->n_policies;
  {
    const int suite_rows = x.pr.total;
    if (x.shard_n) {
      int groups_here = 0;
      for (int g = 0; g < x.n_groups; g++) groups_here += x.group_shard[g] == x.shard_k;
      x.pr.total = groups_here * x.s->n_budgets * x.s->n_policies;
      char shard[32];
      snprintf(shard, sizeof shard, "%d/%d", x.shard_k, x.shard_n);
      json_object_set_new(x.meta, "shard", json_string(shard));
    }
    json_object_set_new(x.meta, "suite_rows", json_integer(suite_rows));
    json_object_set_new(x.meta, "rows_expected", json_integer(x.pr.total));
  }
  rc = 0;
  for (int mi = 0; mi < x.s->n_models && rc == 0; mi++) rc = sweep_model(&x, mi);
  if (!quiet) {
    if (x.pr.tty) fprintf(stderr, "\n");
    fprintf(stderr,
            "sweep %s: %d rows: %d run, %d kept from the earlier file (--resume; %d of them run "
            "again only as the parity reference), %.0f s; wrote %s.csv and %s.json\n",
            x.s->name, x.pr.total, x.ran, x.skipped, x.reruns, moe_clock_s() - x.pr.start,
            x.prefix, x.prefix);
  }
  /* rows of an earlier file that this suite no longer has are dropped, so
   * the output is exactly this suite's rows; and, also when nothing ran, a
   * resumed CSV and JSON are published together */
  int dropped = 0;
  if (rc == 0 && x.resume) dropped = drop_stale_rows(&x);
  if (rc == 0 && (x.ran == 0 || dropped > 0) && write_outputs(x.prefix, &x.t, x.meta, &err) != MOE_OK)
    rc = cli_fail(&err);
  if (rc == 0 && dropped > 0 && !quiet)
    fprintf(stderr, "sweep %s: dropped %d row%s of the earlier file that this suite no longer has\n",
            x.s->name, dropped, dropped == 1 ? "" : "s");
  if (rc == 0) { /* the rule of --help: any row in error fails the sweep */
    size_t failed = 0;
    for (size_t i = 0; i < x.t.n; i++) failed += strcmp(res_get(&x.t.rows[i], "status"), "error") == 0;
    if (failed) {
      cli_error("sweep %s: %zu of %zu rows ended in an error (see their 'error' column in %s.csv)",
                x.s->name, failed, x.t.n, x.prefix);
      rc = 1;
    }
  }
done:
  for (int i = 0; i < SUITE_MAX; i++) moe_policy_plugin_close(&x.libs[i]);
  res_index_free(x.done_ix);
  free(x.kept);
  moe_device_destroy(x.holder);
  if (lock_fd >= 0) close(lock_fd);
  json_decref(x.meta);
  res_table_free(&x.t);
  free(x.presets);
  free(x.group_shard);
  free(x.s);
  return rc;
}

/* ------------------------------------------------------------ run */

static int run_one(const moe_policy *pol, const char *cache, bool have_routing, moe_routing routing,
                   int lookahead, const char *preset, bool have_seed, uint64_t seed, const char *backend,
                   int threads, double link, size_t devmem, int batch, int plen, int glen,
                   int requests, uint64_t prompt_seed, int reps, int warmup, const char *out,
                   const char *trace_path, const char *hardware, const char *sim_routing,
                   const char *routing_log, const char *plugin, int n_orig, char **orig);

/* Whether one of run's outputs (PREFIX.csv and .json, the trace, the
 * routing log) would overwrite an input (the sim's routing log, the
 * hardware profile) or another output; printed. */
static int run_clobbers(const char *out, const char *trace_path, const char *routing_log,
                        const char *sim_routing, const char *hw_name) {
  char csv[MOE_PUBLISH_PATH_MAX + 8] = "", json[MOE_PUBLISH_PATH_MAX + 8] = "";
  if (out) snprintf(csv, sizeof csv, "%s.csv", out), snprintf(json, sizeof json, "%s.json", out);
  const char *sim_trace = sim_routing && !strncmp(sim_routing, "trace:", 6) ? sim_routing + 6 : NULL;
  const char *outs[] = {csv, json, trace_path, routing_log}, *ins[] = {sim_trace, hw_name};
  for (int i = 0; i < 4; i++) {
    for (int j = 0; j < 2; j++)
      if (cli_output_clobbers("run", outs[i], ins[j])) return 1;
    for (int j = i + 1; j < 4; j++)
      if (cli_output_clobbers("run", outs[i], outs[j])) return 1;
  }
  return 0;
}

int cmd_run(int argc, char **argv) {
  static const struct option opts[] = {
      {"preset", required_argument, 0, 'p'},   {"policy", required_argument, 0, 'P'},
      {"model-dir", required_argument, 0, 'M'}, {"lookahead", required_argument, 0, 'K'},
      {"routing", required_argument, 0, 'R'},  {"batch", required_argument, 0, 'b'},
      {"prompt-len", required_argument, 0, 'l'}, {"gen-len", required_argument, 0, 'g'},
      {"requests", required_argument, 0, 'q'}, {"reps", required_argument, 0, 'r'},
      {"warmup", required_argument, 0, 'w'},   {"link-gbps", required_argument, 0, 'L'},
      {"device-mem", required_argument, 0, 'm'}, {"backend", required_argument, 0, 'B'},
      {"threads", required_argument, 0, 't'},  {"seed", required_argument, 0, 's'},
      {"prompt-seed", required_argument, 0, 'S'},
      {"policy-plugin", required_argument, 0, 'X'},
      {"trace", required_argument, 0, 'T'},    {"hardware", required_argument, 0, 'H'},
      {"sim-routing", required_argument, 0, 'U'}, {"record-routing", required_argument, 0, 'Y'},
      {"out", required_argument, 0, 'o'},      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  const char *preset = NULL, *policy = NULL, *plugin = NULL, *backend = "cpu", *out = NULL;
  const char *trace_path = NULL, *model_dir = NULL, *hw_name = NULL, *sim_routing = NULL;
  const char *routing_log = NULL;
  char hw_path[1200] = "";
  char *orig[128]; /* getopt permutes argv; keep it as given for the metadata */
  const int n_orig = argc < 128 ? argc : 128;
  memcpy(orig, argv, (size_t)n_orig * sizeof *orig);
  long batch = 1, plen = 32, glen = 32, requests = 1, reps = 1, warmup = 0, threads = 1;
  long lookahead = 1;
  uint64_t seed = 0, prompt_seed = 1;
  bool have_seed = false;
  double link = 0;
  size_t devmem = 0;
  bool have_routing = false;
  moe_routing routing = MOE_ROUTING_CONVENTIONAL;
  optind = 1;
  opterr = 0;
  int c;
  int idx = -1;
  while ((idx = -1, c = getopt_long(argc, argv, "ho:", opts, &idx)) != -1) {
    bool ok = true;
    switch (c) {
      case 'p': preset = optarg; break;
      case 'M': ok = optarg[0] != '\0'; model_dir = cli_model_dir_arg(optarg); break;
      case 'K': ok = cli_parse_int(optarg, 1, MOE_MAX_LOOKAHEAD, &lookahead); break;
      case 'P': ok = optarg[0] != '\0'; policy = optarg; break;
      case 'X': ok = optarg[0] != '\0'; plugin = optarg; break;
      case 'T': ok = optarg[0] != '\0'; trace_path = optarg; break;
      case 'H': ok = optarg[0] != '\0'; hw_name = optarg; break;
      case 'U': ok = optarg[0] != '\0'; sim_routing = optarg; break;
      case 'Y': ok = optarg[0] != '\0'; routing_log = optarg; break;
      case 'R': ok = moe_routing_parse(optarg, &routing) == 0; have_routing = true; break;
      case 'b': ok = cli_parse_int(optarg, 1, 4096, &batch); break;
      case 'l': ok = cli_parse_int(optarg, 1, 1 << 16, &plen); break;
      case 'g': ok = cli_parse_int(optarg, 2, 1 << 16, &glen); break;
      case 'q': ok = cli_parse_int(optarg, 1, 1 << 16, &requests); break;
      case 'r': ok = cli_parse_int(optarg, 1, MAX_REPS, &reps); break;
      case 'w': ok = cli_parse_int(optarg, 0, 100, &warmup); break;
      case 'L': ok = cli_parse_link(optarg, &link); break;
      case 'm': ok = cli_parse_bytes(optarg, &devmem) && devmem > 0; break;
      case 'B': backend = optarg; break;
      case 't': ok = cli_parse_int(optarg, 1, 1024, &threads); break;
      case 's': ok = cli_parse_u64(optarg, &seed); have_seed = true; break;
      case 'S': ok = cli_parse_u64(optarg, &prompt_seed); break;
      case 'o':
        if (cli_check_prefix("run", optarg) != 0) return 2;
        out = optarg;
        break;
      case 'h':
        printf("usage: moebench run (--preset NAME | --model-dir DIR) [options]\n\n"
               "Measures one configuration and prints its result row (markdown); with --out,\n"
               "also writes PREFIX.csv and PREFIX.json.\n\n"
               "  --preset NAME       model preset\n"
               "  --model-dir DIR     a Hugging Face checkpoint directory instead; the row's\n"
               "                      model is DIR's base name @ a hash of its config and index\n"
               "  --policy NAME       gpu-only (default), ondemand, prefetch-all, pregated,\n"
               "                      pregated-spec; NAME+KIND:SIZE adds an expert cache of\n"
               "                      SIZE (experts, N%% of all, or bytes) kept by KIND: lru,\n"
               "                      lfu, static (the most popular of a warm-up run), or\n"
               "                      ring (a block's next experts streamed ahead)\n"
               "  --policy-plugin SO  a policy from a shared object (docs/PLUGINS.md)\n"
               "  --routing MODE      conventional or pregated (default: the policy's own,\n"
               "                      pregated for pregated; the row's routing column says)\n"
               "  --lookahead K       a block's pre-gate predicts the K-th MoE block after it\n"
               "                      (1..3, default 1; K > 1 uses the derived pre-gate)\n"
               "  --batch B           sequences (default 1)\n"
               "  --prompt-len N      prompt tokens (default 32)\n"
               "  --gen-len N         generated tokens (default 32)\n"
               "  --requests N        generate calls per repetition (default 1)\n"
               "  --reps N            measured repetitions (default 1)\n"
               "  --warmup N          unmeasured warm-up runs (default 0)\n"
               "  --seed N            weight seed of the preset's model (default: the preset's)\n"
               "  --prompt-seed N     seed of the random prompts (default 1)\n"
               "  --link-gbps X       cpu backend: host-to-device link cap\n"
               "  --device-mem SIZE   device-memory budget (default capacity)\n"
               "  --backend NAME      cpu (default), cuda, sim, auto (see 'moebench list backends')\n"
               "  --hardware NAME     sim: the hardware profile the times are modeled on\n"
               "                      ('moebench list hardware'); every time is then modeled\n"
               "  --sim-routing SPEC  sim: uniform (default), zipf:S, correlated:P, or both;\n"
               "                      trace:FILE replays a run's --record-routing log\n"
               "  --record-routing FILE  every MoE block's router choice of the last\n"
               "                      repetition ('step layer row experts' lines), for\n"
               "                      --sim-routing trace:FILE\n"
               "  --threads N         math threads (default 1)\n"
               "  -o, --out PREFIX    write PREFIX.csv and PREFIX.json\n"
               "  --trace FILE        the last repetition's backend operations as Chrome\n"
               "                      trace-event JSON (Perfetto): compute and copy tracks\n"
               "  -h, --help          this text\n");
        return 0;
      default:
        cli_error("run: unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
        return 2;
    }
    if (!ok) {
      cli_bad_value("run", opts, idx, c, optarg);
      return 2;
    }
  }
  if (run_clobbers(out, trace_path, routing_log, sim_routing, hw_name)) return 2;
  if ((preset == NULL) == (model_dir == NULL) || optind < argc) {
    cli_error("run: give exactly one of --preset or --model-dir; no positional arguments");
    return 2;
  }
  if (model_dir) {
    if (have_seed) {
      cli_error("run: --seed draws a preset's weights; a checkpoint has its own");
      return 2;
    }
    if (cli_check_model_dir("run", model_dir) != 0) return 1;
    preset = model_dir;
  }
  if (policy && plugin) {
    cli_error("run: give at most one of --policy and --policy-plugin");
    return 2;
  }
  if (cli_check_names("run", preset, backend) != 0) return 2;
  if (cli_backend_modeled(backend) && hw_name == NULL) {
    cli_error("run: --backend sim needs --hardware NAME (see 'moebench list hardware')");
    return 2;
  }
  if (!cli_backend_modeled(backend) && (hw_name || sim_routing)) {
    cli_error("run: --hardware and --sim-routing are for --backend sim");
    return 2;
  }
  if (hw_name) cli_hw_path(hw_name, hw_path, sizeof hw_path);
  moe_policy_library lib = {0};
  char base[128];
  const char *cache = NULL;
  if (policy && !cli_split_policy(policy, base, sizeof base, &cache)) {
    cli_error("run: --policy '%s' is not NAME or NAME+KIND:SIZE (KIND lru, lfu, static or ring; SIZE "
              "experts, N%% or bytes)", policy);
    return 2;
  }
  const moe_policy *pol = moe_policy_find(policy ? base : "gpu-only");
  if (plugin) {
    moe_error perr = {0};
    if (moe_policy_plugin_load(&lib, plugin, &perr) != MOE_OK) return cli_fail(&perr);
    pol = lib.policy;
  }
  if (pol == NULL) {
    cli_error("run: unknown policy '%s' (see 'moebench list policies')", policy);
    return 2;
  }
  int rc_exit = run_one(pol, cache, have_routing, routing, (int)lookahead, preset, have_seed, seed, backend,
                        (int)threads, link, devmem, (int)batch, (int)plen, (int)glen,
                        (int)requests, prompt_seed, (int)reps, (int)warmup, out, trace_path,
                        hw_name ? hw_path : NULL, sim_routing, routing_log, plugin, n_orig, orig);
  moe_policy_plugin_close(&lib);
  return rc_exit;
}

/* The part of run after its flags: one row, printed (and written). */
static int run_one(const moe_policy *pol, const char *cache, bool have_routing, moe_routing routing,
                   int lookahead, const char *preset, bool have_seed, uint64_t seed, const char *backend,
                   int threads, double link, size_t devmem, int batch, int plen, int glen,
                   int requests, uint64_t prompt_seed, int reps, int warmup, const char *out,
                   const char *trace_path, const char *hardware, const char *sim_routing,
                   const char *routing_log, const char *plugin, int n_orig, char **orig) {
  if (!have_routing)
    routing = pol->default_routing == MOE_POLICY_ROUTING_PREGATED ? MOE_ROUTING_PREGATED : MOE_ROUTING_CONVENTIONAL;
  cli_preset p;
  moe_error err = {0};
  moe_model *m = NULL;
  if (cli_preset_load(&p, preset, &err) != MOE_OK) return cli_fail(&err);
  if (have_seed) p.seed = seed;
  if (cli_preset_build_for(&p, backend, &m, &err) != MOE_OK)
    return cli_fail(&err);
  char device[256];
  const moe_backend_ops *bops = resolve_backend(backend, threads, &link, hardware, device, sizeof device);
  if (bops == NULL) {
    moe_model_free(m);
    return 1;
  }
  backend = bops->name;
  workload wl = {.n_batches = 1, .prompt_len = plen, .gen_len = glen, .requests = requests,
                 .seed = prompt_seed};
  char label[200];
  snprintf(label, sizeof label, "%s%s%s", pol->name, cache ? "+" : "", cache ? cache : "");
  snprintf(wl.name, sizeof wl.name, "p%d-g%d", plen, glen);
  wl.batches[0] = batch;
  row_config rc = {p.name, p.seed,  m,       p.dtype, &wl,    batch, pol,    routing, backend,
                   device, devmem,  link,    threads, reps,   warmup, NULL,  0, trace_path, NULL, 0, 0,
                   lookahead, label, cache, hardware, sim_routing, 0, routing_log, 0.0, NULL};
  char model_hash[17], inputs[17];
  if (!cli_model_hash(&p, model_hash) ||
      !cli_inputs_hash(model_hash, NULL, NULL, hardware, sim_routing, plugin, inputs)) {
    cli_error("run: an input cannot be read to key the row");
    moe_model_free(m);
    return 1;
  }
  rc.inputs = inputs;
  res_table t;
  res_table_init(&t);
  res_row *row = res_table_add(&t);
  run_row(&rc, row, NULL, NULL, false);
  printf("| model | workload | policy | routing | status | tokens/s | ttft s | p50 ms | peak device bytes | slots | h2d bytes | fetches | misses | stall s |\n");
  printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  const char *p50 = res_get(row, "token_latency_p50_s");
  printf("| %s | %s | %s | %s | %s | %s | %s | %.3g | %s | %s | %s | %s | %s | %s |\n",
         cli_md(res_get(row, "model")), cli_md(res_get(row, "workload")), cli_md(res_get(row, "policy")),
         cli_md(res_get(row, "routing")), cli_md(res_get(row, "status")), cli_md(res_get(row, "tokens_per_s")),
         cli_md(res_get(row, "ttft_s")), p50[0] ? atof(p50) * 1e3 : NAN, cli_md(res_get(row, "peak_device_bytes")),
         cli_md(res_get(row, "expert_slots")), cli_md(res_get(row, "h2d_bytes")), cli_md(res_get(row, "expert_fetches")),
         cli_md(res_get(row, "expert_misses")), cli_md(res_get(row, "stall_s")));
  if (strcmp(res_get(row, "status"), "ok") != 0) printf("error: %s\n", cli_md(res_get(row, "error")));
  const char *pinned = res_get(row, "pinned");
  if (pinned[0])
    printf("expert weights: %s host memory (pinning took %s s)\n",
           strcmp(pinned, "1") == 0 ? "pinned" : "PAGEABLE (pinning failed: copies serialise with compute)",
           res_get(row, "pin_s"));
  if (res_get(row, "calls_per_step")[0])
    printf("per decode step (median, counted by the trace): %s backend calls, %s host waits "
           "(download, synchronize, event sync)\n",
           res_get(row, "calls_per_step"), res_get(row, "host_syncs_per_step"));
  int rc_exit = strcmp(res_get(row, "status"), "ok") == 0 ? 0 : 1;
  if (out) {
    mkdir_parent(out);
    const int lock = cli_lock_prefix("run", out);
    if (lock < 0) {
      res_table_free(&t);
      moe_model_free(m);
      return 1;
    }
    char start[32];
    iso_now(start, sizeof start);
    json_t *meta = metadata(argv_json(n_orig, orig), NULL, backend, link, start);
    if (write_outputs(out, &t, meta, &err) != MOE_OK) rc_exit = cli_fail(&err);
    json_decref(meta);
    close(lock);
  }
  res_table_free(&t);
  moe_model_free(m);
  return rc_exit;
}
