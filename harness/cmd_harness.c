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
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "moe/clock.h"
#include "cli.h"
#include "commands.h"
#include "moe/cuda.h"
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
  moe_model *model;
  const workload *wl;
  int batch;
  const moe_policy *policy;
  moe_routing routing;
  const char *backend;
  size_t budget;
  double link_gbps;
  int threads, reps, warmup;
  const int32_t *prompts;
  int n_prompts;
} row_config;

static const char *status_word(moe_status st) {
  return st == MOE_OK ? "ok" : st == MOE_ERR_OOM ? "OOM" : "error";
}

/* Runs warm-up and measured repetitions of one configuration and fills a
 * result row.  ref (may be NULL) is gpu-only's result on the same inputs,
 * for parity; *keep receives this run's last result when keep is non-NULL. */
static void run_row(const row_config *rc, res_row *row, const run_result *ref, run_result *keep,
                    bool want_logits) {
  res_set(row, "model", rc->model_name);
  res_set(row, "workload", rc->wl->name);
  res_set(row, "policy", rc->policy->name);
  res_set(row, "routing", moe_routing_name(rc->routing));
  res_set(row, "backend", rc->backend);
  res_setf(row, "device_mem_budget_bytes", "%zu", rc->budget);
  res_setf(row, "batch", "%d", rc->batch);
  res_setf(row, "prompt_len", "%d", rc->wl->prompt_len);
  res_setf(row, "gen_len", "%d", rc->wl->gen_len);
  res_setf(row, "requests", "%d", rc->wl->requests);
  res_setf(row, "link_gbps", "%g", rc->link_gbps);
  res_setf(row, "repetitions", "%d", rc->reps);
  run_spec sp = {.model = rc->model, .policy = rc->policy, .routing = rc->routing,
                 .backend = rc->backend, .threads = rc->threads, .link_gbps = rc->link_gbps,
                 .device_mem = rc->budget, .batch = rc->batch, .prompt_len = rc->wl->prompt_len,
                 .gen_len = rc->wl->gen_len, .prompt_seed = rc->wl->seed, .prompts = rc->prompts,
                 .n_prompts = rc->n_prompts, .requests = rc->wl->requests};
  run_result r = {0};
  for (int i = 0; i < rc->warmup; i++) {
    runner_run(&sp, &r);
    run_result_free(&r);
    if (r.status != MOE_OK) break;
  }
  double tps[128], ttft[128], e2e[128], stall[128], p50[128], p90[128], p99[128];
  int n = 0;
  for (int i = 0; i < rc->reps && i < 128; i++) {
    sp.keep_logits = want_logits && i == rc->reps - 1;
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
    double mn = tps[0], mx = tps[0];
    for (int i = 1; i < n; i++) mn = fmin(mn, tps[i]), mx = fmax(mx, tps[i]);
    res_setf(row, "tokens_per_s", "%.6g", runner_median(tps, n));
    res_setf(row, "tokens_per_s_min", "%.6g", mn);
    res_setf(row, "tokens_per_s_max", "%.6g", mx);
    res_setf(row, "ttft_s", "%.6g", runner_median(ttft, n));
    res_setf(row, "token_latency_p50_s", "%.6g", runner_median(p50, n));
    res_setf(row, "token_latency_p90_s", "%.6g", runner_median(p90, n));
    res_setf(row, "token_latency_p99_s", "%.6g", runner_median(p99, n));
    res_setf(row, "e2e_s", "%.6g", runner_median(e2e, n));
    res_setf(row, "stall_s", "%.6g", runner_median(stall, n));
    res_setf(row, "peak_device_bytes", "%zu", r.peak_bytes);
    static const char *cat_cols[MOE_MEM_CATEGORIES] = {
        "peak_dense_bytes", "peak_expert_slots_bytes", "peak_kv_cache_bytes",
        "peak_activations_bytes", "peak_workspace_bytes"};
    for (int c = 0; c < MOE_MEM_CATEGORIES; c++) res_setf(row, cat_cols[c], "%zu", r.peak_by_cat[c]);
    res_setf(row, "planned_device_bytes", "%zu", r.planned_bytes);
    res_setf(row, "expert_slots", "%d", r.stats.slots);
    res_setf(row, "h2d_bytes", "%llu", r.stats.bytes_h2d);
    res_setf(row, "expert_fetches", "%llu", r.stats.fetches);
    res_setf(row, "expert_misses", "%llu", r.stats.misses);
    res_setf(row, "expert_recopies", "%llu", r.stats.recopies);
    if (r.stats.pregate_total)
      res_setf(row, "pregate_hit_rate", "%.6f",
               (double)r.stats.pregate_hits / (double)r.stats.pregate_total);
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
  char cuda[256];
  moe_error err = {0};
  json_object_set_new(m, "cuda_device", moe_cuda_probe(cuda, sizeof cuda, &err) == MOE_OK
                                            ? json_string(cuda) : json_string(err.msg));
  json_object_set_new(m, "link_gbps", json_real(link));
  json_object_set_new(m, "hardware_profile", json_string("none: every figure is measured on this machine (no cost model yet)"));
  json_object_set_new(m, "start_time", json_string(start));
  return m;
}

static moe_status write_outputs(const char *prefix, const res_table *t, json_t *meta, moe_error *err) {
  char path[1100];
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

static void mkdir_parent(const char *prefix) {
  char d[1100];
  snprintf(d, sizeof d, "%s", prefix);
  for (char *p = d + 1; *p; p++)
    if (*p == '/') {
      *p = '\0';
      mkdir(d, 0777);
      *p = '/';
    }
}

static int read_token_file(const workload *w, int32_t **ids, int *n) {
  FILE *f = fopen(w->token_file, "r");
  if (f == NULL) {
    cli_error("%s: workload '%s': cannot open token file", w->token_file, w->name);
    return -1;
  }
  char *line = NULL;
  size_t cap = 0;
  int count = 0, lineno = 0;
  int32_t *all = NULL;
  while (getline(&line, &cap, f) >= 0) {
    lineno++;
    int32_t *x;
    int k = cli_parse_ids(line, &x);
    if (k == 0) {
      free(x);
      continue;
    }
    if (k != w->prompt_len) {
      cli_error("%s:%d: workload '%s' wants %d ids per prompt, the line has %d", w->token_file,
                lineno, w->name, w->prompt_len, k < 0 ? 0 : k);
      if (k > 0) free(x);
      free(all);
      free(line);
      fclose(f);
      return -1;
    }
    all = realloc(all, (size_t)(count + 1) * (size_t)k * sizeof *all);
    memcpy(all + (size_t)count * (size_t)k, x, (size_t)k * sizeof *x);
    free(x);
    count++;
  }
  free(line);
  fclose(f);
  if (count == 0) {
    cli_error("%s: no prompts in token file", w->token_file);
    return -1;
  }
  *ids = all;
  *n = count;
  return 0;
}

/* ------------------------------------------------------------ sweep */

static void sweep_usage(FILE *f) {
  fprintf(f,
          "usage: moebench sweep SUITE [options]\n\n"
          "Runs every configuration of a suite (workloads/suites/SUITE.json or a path):\n"
          "models x workloads (x batch sizes) x device budgets x policies.  Rows are written\n"
          "to PREFIX.csv and PREFIX.json after each run (temporary file + rename).\n\n"
          "  -o, --out PREFIX   output prefix (default results/runs/SUITE)\n"
          "  --resume           keep rows already in PREFIX.csv and skip their runs\n"
          "  --reps N           override the suite's repetitions\n"
          "  --quiet            no progress output\n"
          "  -h, --help         this text\n");
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

int cmd_sweep(int argc, char **argv) {
  static const struct option opts[] = {{"out", required_argument, 0, 'o'},
                                       {"resume", no_argument, 0, 'R'},
                                       {"reps", required_argument, 0, 'r'},
                                       {"quiet", no_argument, 0, 'q'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *out = NULL;
  bool resume = false, quiet = false;
  long reps = 0;
  char *orig[128]; /* getopt permutes argv; keep it as given for the metadata */
  const int n_orig = argc < 128 ? argc : 128;
  memcpy(orig, argv, (size_t)n_orig * sizeof *orig);
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
    switch (c) {
      case 'o': out = optarg; break;
      case 'R': resume = true; break;
      case 'q': quiet = true; break;
      case 'r':
        if (!cli_parse_int(optarg, 1, 100, &reps)) {
          cli_error("sweep: invalid value '%s' for --reps", optarg);
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
  suite *s = calloc(1, sizeof *s);
  moe_error err = {0};
  if (suite_load(s, argv[optind], &err) != MOE_OK) {
    free(s);
    return cli_fail(&err);
  }
  if (reps) s->repetitions = (int)reps;
  /* validate names before spending time */
  for (int i = 0; i < s->n_policies; i++)
    if (moe_policy_find(s->policies[i]) == NULL) {
      cli_error("%s: unknown policy '%s' in field 'policies'", s->path, s->policies[i]);
      free(s);
      return 1;
    }
  cli_preset *presets = calloc((size_t)s->n_models, sizeof *presets);
  for (int i = 0; i < s->n_models; i++)
    if (cli_preset_load(&presets[i], s->models[i], &err) != MOE_OK) {
      free(presets);
      free(s);
      return cli_fail(&err);
    }
  const char *backend = s->backend;
  if (strcmp(backend, "auto") == 0) {
    char d[128];
    moe_error e2 = {0};
    backend = moe_cuda_probe(d, sizeof d, &e2) == MOE_OK && moe_backend_find("cuda") ? "cuda" : "cpu";
  }
  /* a GPU copies over its real link: the emulated cap is for the cpu backend */
  if (strcmp(backend, "cuda") == 0) s->link_gbps = 0.0;
  char prefix[1024];
  if (out)
    snprintf(prefix, sizeof prefix, "%s", out);
  else
    snprintf(prefix, sizeof prefix, "results/runs/%s", s->name);
  mkdir_parent(prefix);
  res_table t;
  res_table_init(&t);
  char path[1100];
  snprintf(path, sizeof path, "%s.csv", prefix);
  if (resume && access(path, F_OK) == 0 && res_read_csv(path, &t, &err) != MOE_OK) {
    free(presets);
    free(s);
    return cli_fail(&err);
  }
  char start[32];
  iso_now(start, sizeof start);
  json_t *meta = metadata(argv_json(n_orig, orig), s->name, backend, s->link_gbps, start);
  json_t *seeds = json_object();
  for (int i = 0; i < s->n_models; i++) json_object_set_new(seeds, presets[i].name, json_integer((json_int_t)presets[i].seed));
  json_object_set_new(meta, "model_seeds", seeds);
  json_t *wseeds = json_object();
  for (int i = 0; i < s->n_workloads; i++)
    json_object_set_new(wseeds, s->workloads[i].name,
                        s->workloads[i].token_file[0] ? json_string(s->workloads[i].token_file)
                                                      : json_integer((json_int_t)s->workloads[i].seed));
  json_object_set_new(meta, "prompt_seeds", wseeds);

  progress pr = {0, 0, moe_clock_s(), isatty(2) != 0, quiet};
  for (int w = 0; w < s->n_workloads; w++) pr.total += s->workloads[w].n_batches;
  pr.total *= s->n_models * s->n_budgets * s->n_policies;
  int rc = 0, ran = 0, skipped = 0;
  for (int mi = 0; mi < s->n_models && rc == 0; mi++) {
    moe_model *model = NULL;
    for (int w = 0; w < s->n_workloads && rc == 0; w++) {
      const workload *wl = &s->workloads[w];
      int32_t *file_ids = NULL;
      int n_file = 0;
      if (wl->token_file[0] && read_token_file(wl, &file_ids, &n_file) != 0) {
        rc = 1;
        break;
      }
      for (int bi = 0; bi < wl->n_batches && rc == 0; bi++) {
        /* The parity reference: gpu-only on the same model and inputs.  The
         * budget does not change the math, so a gpu-only run that fitted an
         * earlier budget also serves the budgets where gpu-only is OOM. */
        run_result ref = {0};
        bool have_ref = false;
        for (int bu = 0; bu < s->n_budgets && rc == 0; bu++) {
          /* gpu-only first: it is the parity reference of the others */
          int order[SUITE_MAX], no = 0;
          for (int p = 0; p < s->n_policies; p++)
            if (!strcmp(s->policies[p], "gpu-only")) order[no++] = p;
          for (int p = 0; p < s->n_policies; p++)
            if (strcmp(s->policies[p], "gpu-only")) order[no++] = p;
          for (int k = 0; k < no && rc == 0; k++) {
            const moe_policy *pol = moe_policy_find(s->policies[order[k]]);
            moe_routing routing =
                !strcmp(s->routing, "pregated") ? MOE_ROUTING_PREGATED
                : !strcmp(s->routing, "conventional") ? MOE_ROUTING_CONVENTIONAL
                : pol->default_routing == MOE_POLICY_ROUTING_PREGATED ? MOE_ROUTING_PREGATED
                                                                : MOE_ROUTING_CONVENTIONAL;
            char what[256];
            snprintf(what, sizeof what, "%s/%s/b%d/%s", presets[mi].name, wl->name, wl->batches[bi],
                     pol->name);
            res_table probe;
            res_table_init(&probe);
            res_row *pr_row = res_table_add(&probe);
            res_set(pr_row, "model", presets[mi].name);
            res_set(pr_row, "workload", wl->name);
            res_set(pr_row, "policy", pol->name);
            res_set(pr_row, "routing", moe_routing_name(routing));
            res_set(pr_row, "backend", backend);
            res_setf(pr_row, "device_mem_budget_bytes", "%zu", s->budgets[bu]);
            res_setf(pr_row, "batch", "%d", wl->batches[bi]);
            bool done_before = resume && res_find(&t, pr_row) >= 0;
            res_table_free(&probe);
            const bool is_ref = !strcmp(pol->name, "gpu-only");
            if (done_before && (!is_ref || have_ref)) {
              pr.done++;
              skipped++;
              progress_show(&pr, what);
              continue;
            }
            if (model == NULL) {
              moe_synth_options so = cli_preset_synth(&presets[mi]);
              if (moe_model_synthetic(&model, &presets[mi].cfg, &so, &err) != MOE_OK) {
                rc = cli_fail(&err);
                break;
              }
            }
            row_config rcfg = {presets[mi].name, model, wl, wl->batches[bi], pol, routing, backend,
                               s->budgets[bu], s->link_gbps, s->threads, s->repetitions, s->warmup,
                               file_ids, n_file};
            const moe_config *mc = moe_model_config(model);
            bool want_logits = (double)wl->batches[bi] * wl->gen_len * mc->vocab <= 64e6;
            progress_show(&pr, what);
            run_result cur = {0};
            res_table scratch;
            res_table_init(&scratch);
            /* a finished gpu-only row is rerun, not re-recorded, only to be the reference */
            res_row *row = done_before ? res_table_add(&scratch) : res_table_add(&t);
            run_row(&rcfg, row, have_ref ? &ref : NULL, is_ref ? &cur : NULL, want_logits);
            res_table_free(&scratch);
            if (is_ref && cur.status == MOE_OK) {
              run_result_free(&ref);
              ref = cur;
              have_ref = true;
            } else if (is_ref) {
              run_result_free(&cur);
            }
            if (!done_before) {
              ran++;
              if (write_outputs(prefix, &t, meta, &err) != MOE_OK) rc = cli_fail(&err);
            }
            pr.done++;
          }
        }
        run_result_free(&ref);
      }
      free(file_ids);
    }
    moe_model_free(model);
  }
  if (!quiet) {
    if (pr.tty) fprintf(stderr, "\n");
    fprintf(stderr, "sweep %s: %d runs, %d skipped (--resume), %.0f s; wrote %s.csv and %s.json\n",
            s->name, ran, skipped, moe_clock_s() - pr.start, prefix, prefix);
  }
  if (rc == 0 && ran == 0 && write_outputs(prefix, &t, meta, &err) != MOE_OK) rc = cli_fail(&err);
  json_decref(meta);
  res_table_free(&t);
  free(presets);
  free(s);
  return rc;
}

/* ------------------------------------------------------------ run */

int cmd_run(int argc, char **argv) {
  static const struct option opts[] = {
      {"preset", required_argument, 0, 'p'},   {"policy", required_argument, 0, 'P'},
      {"routing", required_argument, 0, 'R'},  {"batch", required_argument, 0, 'b'},
      {"prompt-len", required_argument, 0, 'l'}, {"gen-len", required_argument, 0, 'g'},
      {"requests", required_argument, 0, 'q'}, {"reps", required_argument, 0, 'r'},
      {"warmup", required_argument, 0, 'w'},   {"link-gbps", required_argument, 0, 'L'},
      {"device-mem", required_argument, 0, 'm'}, {"backend", required_argument, 0, 'B'},
      {"threads", required_argument, 0, 't'},  {"seed", required_argument, 0, 's'},
      {"out", required_argument, 0, 'o'},      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  const char *preset = NULL, *policy = "gpu-only", *backend = "cpu", *out = NULL;
  char *orig[128]; /* getopt permutes argv; keep it as given for the metadata */
  const int n_orig = argc < 128 ? argc : 128;
  memcpy(orig, argv, (size_t)n_orig * sizeof *orig);
  long batch = 1, plen = 32, glen = 32, requests = 1, reps = 1, warmup = 0, threads = 1;
  uint64_t seed = 1;
  double link = 0;
  size_t devmem = 0;
  bool have_routing = false;
  moe_routing routing = MOE_ROUTING_CONVENTIONAL;
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
    bool ok = true;
    switch (c) {
      case 'p': preset = optarg; break;
      case 'P': policy = optarg; break;
      case 'R': ok = moe_routing_parse(optarg, &routing) == 0; have_routing = true; break;
      case 'b': ok = cli_parse_int(optarg, 1, 4096, &batch); break;
      case 'l': ok = cli_parse_int(optarg, 1, 1 << 16, &plen); break;
      case 'g': ok = cli_parse_int(optarg, 2, 1 << 16, &glen); break;
      case 'q': ok = cli_parse_int(optarg, 1, 1 << 16, &requests); break;
      case 'r': ok = cli_parse_int(optarg, 1, 100, &reps); break;
      case 'w': ok = cli_parse_int(optarg, 0, 100, &warmup); break;
      case 'L': ok = cli_parse_double(optarg, &link) && link >= 0; break;
      case 'm': ok = cli_parse_bytes(optarg, &devmem) && devmem > 0; break;
      case 'B': backend = optarg; break;
      case 't': ok = cli_parse_int(optarg, 1, 1024, &threads); break;
      case 's': ok = cli_parse_u64(optarg, &seed); break;
      case 'o': out = optarg; break;
      case 'h':
        printf("usage: moebench run --preset NAME [options]\n\n"
               "Measures one configuration and prints its result row (markdown); with --out,\n"
               "also writes PREFIX.csv and PREFIX.json.\n\n"
               "  --preset NAME       model preset\n"
               "  --policy NAME       gpu-only (default), ondemand, prefetch-all, pregated\n"
               "  --routing MODE      conventional or pregated (default: by policy)\n"
               "  --batch B           sequences (default 1)\n"
               "  --prompt-len N      prompt tokens (default 32)\n"
               "  --gen-len N         generated tokens (default 32)\n"
               "  --requests N        generate calls per repetition (default 1)\n"
               "  --reps N            measured repetitions (default 1)\n"
               "  --warmup N          unmeasured warm-up runs (default 0)\n"
               "  --seed N            prompt seed (default 1)\n"
               "  --link-gbps X       cpu backend: host-to-device link cap\n"
               "  --device-mem SIZE   device-memory budget (default capacity)\n"
               "  --backend NAME      cpu (default)\n"
               "  --threads N         math threads (default 1)\n"
               "  -o, --out PREFIX    write PREFIX.csv and PREFIX.json\n"
               "  -h, --help          this text\n");
        return 0;
      default:
        cli_error("run: unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
        return 2;
    }
    if (!ok) {
      cli_error("run: invalid value '%s'", optarg);
      return 2;
    }
  }
  if (preset == NULL || optind < argc) {
    cli_error("run: --preset is required; no positional arguments");
    return 2;
  }
  const moe_policy *pol = moe_policy_find(policy);
  if (pol == NULL) {
    cli_error("run: unknown policy '%s' (see 'moebench list policies')", policy);
    return 2;
  }
  if (!have_routing)
    routing = pol->default_routing == MOE_POLICY_ROUTING_PREGATED ? MOE_ROUTING_PREGATED : MOE_ROUTING_CONVENTIONAL;
  cli_preset p;
  moe_error err = {0};
  moe_model *m = NULL;
  if (cli_preset_model(preset, &p, &m, &err) != MOE_OK) return cli_fail(&err);
  workload wl = {.n_batches = 1, .prompt_len = (int)plen, .gen_len = (int)glen,
                 .requests = (int)requests, .seed = seed};
  snprintf(wl.name, sizeof wl.name, "p%ld-g%ld", plen, glen);
  wl.batches[0] = (int)batch;
  row_config rc = {p.name, m, &wl, (int)batch, pol, routing, backend, devmem, link, (int)threads,
                   (int)reps, (int)warmup, NULL, 0};
  res_table t;
  res_table_init(&t);
  res_row *row = res_table_add(&t);
  run_row(&rc, row, NULL, NULL, false);
  printf("| model | workload | policy | routing | status | tokens/s | ttft s | p50 ms | peak device bytes | slots | h2d bytes | fetches | misses | stall s |\n");
  printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  const char *p50 = res_get(row, "token_latency_p50_s");
  printf("| %s | %s | %s | %s | %s | %s | %s | %.3g | %s | %s | %s | %s | %s | %s |\n",
         res_get(row, "model"), res_get(row, "workload"), res_get(row, "policy"),
         res_get(row, "routing"), res_get(row, "status"), res_get(row, "tokens_per_s"),
         res_get(row, "ttft_s"), p50[0] ? atof(p50) * 1e3 : NAN, res_get(row, "peak_device_bytes"),
         res_get(row, "expert_slots"), res_get(row, "h2d_bytes"), res_get(row, "expert_fetches"),
         res_get(row, "expert_misses"), res_get(row, "stall_s"));
  if (strcmp(res_get(row, "status"), "ok") != 0) printf("error: %s\n", res_get(row, "error"));
  int rc_exit = strcmp(res_get(row, "status"), "ok") == 0 ? 0 : 1;
  if (out) {
    mkdir_parent(out);
    char start[32];
    iso_now(start, sizeof start);
    json_t *meta = metadata(argv_json(n_orig, orig), NULL, backend, link, start);
    if (write_outputs(out, &t, meta, &err) != MOE_OK) rc_exit = cli_fail(&err);
    json_decref(meta);
  }
  res_table_free(&t);
  moe_model_free(m);
  return rc_exit;
}
