/* moebench bench-policies: the offload policies side by side on one model,
 * repetitions interleaved (policy A, B, C, D, then again), medians. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moe/clock.h"
#include "cli.h"
#include "flags.h"
#include "commands.h"
#include "paper.h"
#include "runner.h"
#include "suite.h"

/* Measured time of one expert copy over the backend's (capped) link. */
static double measure_expert_copy(const char *backend, double link_gbps, const char *hardware,
                                  size_t bytes) {
  moe_device *dev = NULL;
  moe_error err = {0};
  moe_backend_options bo = {.link_gbps = link_gbps,
                            .hardware = cli_backend_modeled(backend) ? hardware : NULL};
  if (moe_device_create(&dev, backend, &bo, &err) != MOE_OK) return NAN;
  const moe_backend_ops *o = moe_device_ops(dev);
  moe_backend *be = moe_device_backend(dev);
  const bool modeled = o->modeled_seconds != NULL; /* a modeled copy takes modeled time */
  void *src = NULL, *dst = NULL;
  moe_event *ev = NULL;
  double t[5] = {NAN, NAN, NAN, NAN, NAN};
  if (o->host_alloc(be, bytes, &src, &err) == MOE_OK &&
      moe_device_alloc(dev, MOE_MEM_WORKSPACE, bytes, "copy probe", &dst, &err) == MOE_OK &&
      o->event_create(be, &ev, &err) == MOE_OK) {
    if (!modeled) memset(src, 1, bytes);
    for (int i = 0; i < 5; i++) {
      double t0 = modeled ? o->modeled_seconds(be) : moe_clock_s();
      o->copy_h2d_async(be, dst, src, bytes, ev, &err);
      o->event_sync(be, ev, &err);
      t[i] = (modeled ? o->modeled_seconds(be) : moe_clock_s()) - t0;
    }
  }
  if (ev) o->event_destroy(be, ev);
  if (src) o->host_free(be, src);
  moe_device_destroy(dev);
  return runner_median(t, 5);
}

void bench_policies_usage(FILE *f) {
  fprintf(f,
          "usage: moebench bench-policies (--preset NAME | --model-dir DIR) [options]\n\n"
          "Runs the offload policies side by side on one model (repetitions\n"
          "interleaved, medians) and prints throughput, decode time per token, peak\n"
          "device bytes, copies, stalls and parity against gpu-only, then the ratios the\n"
          "paper reports.  All times are measured wall clock on this machine, except\n"
          "with --backend sim, where every time is modeled on a hardware profile.\n\n"
          "  --preset NAME        model preset (workloads/models)\n"
          "  --model-dir DIR      a Hugging Face checkpoint directory instead\n"
          "  --lookahead K        pre-gates predict the K-th MoE block ahead (1..3, default 1)\n"
          "  --pregate-second     predictions also name each token's next choice, copied\n"
          "                       last while slots are left (give the slots: NAME+lru:N)\n"
          "  --policies LIST      comma-separated (default gpu-only,ondemand,prefetch-all,pregated);\n"
          "                       an entry may add an expert cache as run's --policy does\n"
          "                       (ondemand+lru:4)\n"
          "  --batch B            sequences (default 1)\n"
          "  --prompt-len N       prompt tokens (default 64)\n"
          "  --gen-len N          generated tokens (default 64)\n"
          "  --reps N             measured repetitions per policy (default 3)\n"
          "  --link-gbps X        cap on the host-to-device link (cpu backend; default none)\n"
          "  --link-ratio R       instead: set the cap so that one expert's copy takes R times\n"
          "                       the compute of a decoder MoE block window (a decode step\n"
          "                       over its MoE blocks), measured by a gpu-only warm-up here\n"
          "  --device-mem SIZE    device-memory budget (default: capacity)\n"
          "  --threads N          math threads (default 1)\n"
          "  --backend NAME       cpu (default), cuda, or sim (modeled: needs --hardware)\n"
          "  --hardware NAME      sim: the hardware profile ('moebench list hardware')\n"
          "  --sim-routing SPEC   sim: uniform (default), zipf:S, correlated:P, or both;\n"
          "                       trace:FILE replays a run's --record-routing log\n"
          "  --policy-plugin SO   also run a policy from a shared object (up to 4 times)\n"
          "  -h, --help           this text\n\n"
          "Exit status: 0 when every policy ran (OOM, a policy that does not fit the\n"
          "budget, is a result, not a failure); 1 when any policy's run ended in an\n"
          "error (the table shows the others, the errors are printed); 2 bad arguments.\n");
}

/* bench-policies' options. */
typedef struct bp_opts {
  flags_run r;
  const char *plist;
  char hw_path[1200];
  const char *plugins[4];
  int n_plugins;
  double link_ratio;
  bool second;
} bp_opts;

/* One flag's value into o (flags_getopt). */
static int bp_take(void *ctx, int c, const char *arg) {
  bp_opts *o = ctx;
  const int rc = flags_take_run(&o->r, c, arg);
  if (rc != 1) return rc;
  switch (c) {
    case 'P': o->plist = arg; return 0;
    case 'Q': return flag_double(FLAG_LINK_RATIO, arg, &o->link_ratio) ? 0 : -1;
    case 'N': o->second = true; return 0;
    case 'X':
      if (arg[0] == '\0' || o->n_plugins == 4) return -1;
      o->plugins[o->n_plugins++] = arg;
      return 0;
    default: return -1;
  }
}

/* The flags; -1 to go on, else the exit code. */
static int bp_parse(int argc, char **argv, bp_opts *o) {
  static const struct option opts[] = {
      FLAGS_RUN_OPTIONS, {"policies", required_argument, 0, 'P'},
      {"policy-plugin", required_argument, 0, 'X'}, {"link-ratio", required_argument, 0, 'Q'},
      {"pregate-second", no_argument, 0, 'N'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
  const int rc = flags_getopt("bench-policies", argc, argv, "h", opts, bp_take, o,
                              bench_policies_usage);
  if (rc >= 0) return rc;
  return optind < argc ? (cli_error("bench-policies: give exactly one of --preset or --model-dir; "
                                    "no positional arguments"), 2) : -1;
}

/* The checks of the flags together; -1 to go on, else the exit code. */
static int bp_check(bp_opts *o) {
  if ((o->r.preset == NULL) == (o->r.model_dir == NULL)) {
    cli_error("bench-policies: give exactly one of --preset or --model-dir; no positional "
              "arguments");
    return 2;
  }
  if (o->r.model_dir) {
    if (cli_check_model_dir("bench-policies", o->r.model_dir) != 0) return 1;
    o->r.preset = o->r.model_dir;
  }
  if (cli_check_names("bench-policies", o->r.preset, o->r.backend) != 0) return 2;
  return cli_check_sim("bench-policies", o->r.backend, o->r.hw_name, o->r.sim_routing, o->hw_path,
                       sizeof o->hw_path) ? 2 : -1;
}

/* The policies: --policies (default: the paper's four), then the plugins,
 * at most 8.  0, or the exit code after printing why. */
static int bp_policies(const bp_opts *o, const moe_policy **pol, int *np, moe_policy_library *libs,
                       char (*cache)[CLI_CACHE_MAX]) {
  if (o->plist == NULL) {
    *np = (int)moe_policy_paper_baselines(pol, 8);
  } else if (cli_parse_policies("bench-policies", o->plist, pol, cache, 8, np) != 0) {
    return 2;
  }
  moe_error err = {0};
  for (int i = 0; i < o->n_plugins; i++) {
    if (*np == 8 || moe_policy_plugin_load(&libs[i], o->plugins[i], &err) != MOE_OK) {
      if (*np == 8) cli_error("bench-policies: at most 8 policies");
      else cli_fail(&err);
      for (int j = 0; j < i; j++) moe_policy_plugin_close(&libs[j]);
      return *np == 8 ? 2 : 1;
    }
    pol[(*np)++] = libs[i].policy;
  }
  return 0;
}

/* --link-ratio: the cap from a gpu-only warm-up on m.  0, or the exit code. */
static int bp_link_ratio(bp_opts *o, moe_model *m, double *window, double *copy) {
  const moe_backend_ops *bops = moe_backend_find(o->r.backend);
  if (o->r.link > 0 || bops == NULL || !(bops->caps & MOE_BACKEND_CAP_LINK_CAP)) {
    cli_error("bench-policies: --link-ratio sets an emulated link (cpu backend), instead of "
              "--link-gbps");
    return 2;
  }
  run_spec ws = {.model = m, .backend = o->r.backend, .hardware = o->r.hw_name ? o->hw_path : NULL,
                 .threads = (int)o->r.threads,
                 .batch = (int)o->r.batch, .prompt_len = (int)o->r.plen, .gen_len = (int)o->r.glen,
                 .prompt_seed = 1};
  char why[700];
  o->r.link = runner_link_for_ratio(&ws, o->link_ratio, window, copy, why, sizeof why);
  if (isnan(o->r.link)) {
    cli_error("bench-policies: %s", why);
    return 1;
  }
  fprintf(stderr, "link ratio %g: a decoder MoE block window computes in %.2f ms (measured), one "
                  "expert's copy should take %.2f ms: link %.3f GB/s\n",
          o->link_ratio, *window * 1e3, *copy * 1e3, o->r.link);
  return 0;
}

/* The measured side: every policy's runs and their medians. */
typedef struct bp_results {
  int np;
  const moe_policy *const *pol;
  char cache[8][CLI_CACHE_MAX];   /* each entry's expert cache "KIND:SIZE" ("" none) */
  char label[8][CLI_CACHE_MAX + 64]; /* NAME or NAME+KIND:SIZE, as printed */
  long reps;
  run_result *res;          /* [reps][np] */
  double tps[8], tpt[8], total[8];
  const run_result *last[8]; /* each policy's last repetition */
} bp_results;

static void bp_progress(void *ctx, int rep, int i, const run_result *r) {
  const bp_results *b = ctx;
  fprintf(stderr, "rep %d/%ld %-13s %s\n", rep + 1, b->reps, b->label[i],
          r->status == MOE_OK ? "ok" : r->error);
}

/* Runs the policies on the runner, repetitions interleaved; medians. */
static int bp_run(const bp_opts *o, moe_model *m, bp_results *b) {
  run_spec sp[8];
  for (int i = 0; i < b->np; i++)
    sp[i] = (run_spec){.model = m, .policy = b->pol[i], .routing = runner_policy_routing(b->pol[i]),
                       .backend = o->r.backend, .hardware = o->r.hw_name ? o->hw_path : NULL,
                       .sim_routing = o->r.sim_routing, .threads = (int)o->r.threads,
                       .link_gbps = o->r.link, .device_mem = o->r.devmem, .batch = (int)o->r.batch,
                       .prompt_len = (int)o->r.plen, .gen_len = (int)o->r.glen, .prompt_seed = 1,
                       .lookahead = (int)o->r.lookahead, .pregate_second = o->second,
                       .requests = 1, .keep_logits = true,
                       .cache = b->cache[i][0] ? b->cache[i] : NULL,
                       .host_threads = (int)o->r.host_threads, .host_gbps = o->r.host_gbps};
  b->res = calloc((size_t)b->np * (size_t)b->reps, sizeof *b->res);
  if (b->res == NULL) {
    cli_error("bench-policies: out of host memory");
    return 1;
  }
  runner_interleaved(sp, b->np, (int)b->reps, b->res, bp_progress, b);
  for (int i = 0; i < b->np; i++) {
    runner_medians(b->res, b->np, (int)b->reps, i, (int)o->r.glen, &b->tps[i], &b->tpt[i],
                   &b->total[i]);
    b->last[i] = &b->res[(b->reps - 1) * b->np + i];
  }
  return 0;
}

/* The index of the policy that plays role (ok: whose last run ended ok), or -1. */
static int bp_role(const bp_results *b, moe_policy_role role, bool ok) {
  int at = -1;
  for (int i = 0; i < b->np; i++)
    if (moe_policy_has_role(b->pol[i], role) && !b->cache[i][0] && /* a cached one plays none */
        (!ok || b->last[i]->status == MOE_OK))
      at = i;
  return at;
}

/* The heading and the table, one line per policy. */
static void bp_table(const bp_opts *o, const bp_results *b, const moe_model *m, double window,
                     double copy) {
  const int ref = bp_role(b, MOE_POLICY_ROLE_REFERENCE, false);
  printf("## %s: batch %ld, prompt %ld, generated %ld, %s, link %s\n", o->r.preset, o->r.batch, o->r.plen,
         o->r.glen, moe_dtype_name(moe_model_dtype(m)), o->r.link > 0 ? "capped" : "uncapped");
  if (o->second)
    printf("predictions also name each token's next choice (--pregate-second), copied while "
           "slots are left\n");
  if (o->link_ratio > 0)
    printf("link set by ratio %g: a decoder MoE block window computed in %.2f ms in a gpu-only "
           "warm-up (measured), so the cap is %.3f GB/s (one expert's copy %.2f ms)\n",
           o->link_ratio, window * 1e3, o->r.link, copy * 1e3);
  if (cli_backend_modeled(o->r.backend))
    printf("device: %s (sim backend, routing %s); every figure below is MODELED on that profile "
           "(deterministic: medians of %ld identical repetitions)\n\n",
           b->last[0]->device, o->r.sim_routing ? o->r.sim_routing : "uniform", b->reps);
  else
    printf("device: %s; medians of %ld interleaved repetitions (measured, wall clock)\n\n",
           b->last[0]->device, b->reps);
  printf("| policy | routing | tokens/s | total s | decode ms/token | peak device MB | expert slots "
         "| copied MB (decode) | fetches | misses | stall s (decode) | pre-gate hit | token match | max logit diff |\n");
  printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (int i = 0; i < b->np; i++) {
    const run_result *r = b->last[i];
    if (r->status != MOE_OK) {
      printf("| %s | - | %s | | | | | | | | | | | |\n", b->label[i],
             r->status == MOE_ERR_OOM ? "OOM" : "error");
      continue;
    }
    double match = NAN, diff = NAN;
    if (ref >= 0)
      runner_parity(b->last[ref], r, (int)o->r.batch, (int)o->r.glen, moe_model_config(m)->vocab,
                    &match, &diff);
    char hit[32] = "-", match_s[32] = "n/a", diff_s[32] = "n/a";
    if (!isnan(match)) snprintf(match_s, sizeof match_s, "%.3f", match);
    if (!isnan(diff)) snprintf(diff_s, sizeof diff_s, "%.3g", diff);
    if (r->stats.pregate_total)
      snprintf(hit, sizeof hit, "%.3f", (double)r->stats.pregate_hits / (double)r->stats.pregate_total);
    printf("| %s | %s | %.2f | %.3f | %.2f | %.1f | %d | %.1f | %llu | %llu | %.3f | %s | %s | %s |\n",
           b->label[i], moe_routing_name(runner_policy_routing(b->pol[i])), b->tps[i],
           b->total[i], b->tpt[i] * 1e3, (double)r->peak_bytes / 1e6, r->stats.slots,
           (double)(r->stats.bytes_h2d - r->prefill_bytes_h2d) / 1e6, r->stats.fetches,
           r->stats.misses, r->stats.stall_s - r->prefill_stall_s, hit, match_s, diff_s);
  }
}

/* This machine's regime: one expert's copy against gpu-only's decode. */
static void bp_regime(const bp_opts *o, const bp_results *b, const moe_model *m, int go) {
  const moe_config *cfg = moe_model_config(m);
  const size_t eb = moe_model_expert_bytes(m);
  const double copy_s = measure_expert_copy(o->r.backend, o->r.link, o->r.hw_name ? o->hw_path : NULL, eb);
  const char *how = cli_backend_modeled(o->r.backend) ? "modeled" : "measured";
  printf("one expert: %.1f MB, copy over this link %.2f ms (%s) = %.2f GB/s host-to-device\n",
         (double)eb / 1e6, copy_s * 1e3, how, (double)eb / copy_s * 1e-9);
  if (go < 0) return;
  /* the MoE blocks a decode step runs: an encoder-decoder model's encoder
   * ran once, in the prefill */
  int n_moe = 0;
  for (int l = cfg->n_enc_layers; l < cfg->n_layers; l++) n_moe += cfg->is_moe[l];
  if (n_moe == 0) n_moe = 1;
  printf("gpu-only decode: %.2f ms/token = %.2f ms per decoder MoE block and the layers up to the next "
         "(%s); copy/compute ratio per block %.2f\n",
         b->tpt[go] * 1e3, b->tpt[go] * 1e3 / n_moe, how, copy_s / (b->tpt[go] / n_moe));
}

/* The paper's comparisons (pregated against ondemand, gpu-only and
 * prefetch-all) and the share of copy time each policy hides. */
static void bp_ratios(const bp_opts *o, const bp_results *b, const moe_model *m) {
  const int go = bp_role(b, MOE_POLICY_ROLE_REFERENCE, true), od = bp_role(b, MOE_POLICY_ROLE_ONDEMAND, true),
            pf = bp_role(b, MOE_POLICY_ROLE_PREFETCH_ALL, true), pg = bp_role(b, MOE_POLICY_ROLE_PREGATED, true);
  const double *tps = b->tps, *tpt = b->tpt;
  printf("\n");
  bp_regime(o, b, m, go);
  /* every other policy's share of the copy time it hides, on the same scale */
  if (go >= 0 && od >= 0)
    for (int i = 0; i < b->np; i++) {
      if (i == go || i == od || i == pg || b->last[i]->status != MOE_OK) continue;
      printf("copy time hidden by %s, (T_ondemand - T_%s) / (T_ondemand - T_gpu_only), decode per "
             "token: %.2f\n", b->label[i], b->label[i], (tpt[od] - tpt[i]) / (tpt[od] - tpt[go]));
    }
  if (go >= 0 && od >= 0 && pg >= 0) {
    printf("copy time hidden by pregated, (T_ondemand - T_pregated) / (T_ondemand - T_gpu_only), "
           "decode per token: %.2f\n", (tpt[od] - tpt[pg]) / (tpt[od] - tpt[go]));
    char p1[32], p2[32];
    printf("pregated vs ondemand: %.2fx tokens/s, %.2fx decode speed; paper: %s avg\n",
           tps[pg] / tps[od], tpt[od] / tpt[pg], paper_fmt(p1, sizeof p1, "pregated_vs_ondemand_avg"));
    printf("pregated vs gpu-only: %.0f%% of tokens/s, %.0f%% of peak device memory; paper: %s, %s\n",
           100 * tps[pg] / tps[go], 100.0 * (double)b->last[pg]->peak_bytes / (double)b->last[go]->peak_bytes,
           paper_fmt(p1, sizeof p1, "pregated_vs_gpu_only_throughput"),
           paper_fmt(p2, sizeof p2, "pregated_vs_gpu_only_peak_memory"));
  }
  if (pf >= 0 && pg >= 0) {
    bool slowest = true;
    for (int i = 0; i < b->np; i++)
      if (i != pf && b->last[i]->status == MOE_OK && tps[i] < tps[pf]) slowest = false;
    char p1[32];
    printf("pregated vs prefetch-all: %.1fx tokens/s; paper: %s avg (prefetch-all %s)\n",
           tps[pg] / tps[pf], paper_fmt(p1, sizeof p1, "pregated_vs_prefetch_avg"),
           slowest ? "slowest" : "not slowest");
  }
  if (go >= 0 && pg >= 0 && o->r.link > 0) {
    const run_result *p = b->last[pg];
    const double copy_per_token = (double)(p->stats.bytes_h2d - p->prefill_bytes_h2d) /
                                  (double)(o->r.glen - 1) / (o->r.link * 1e9);
    const double floor = fmax(tpt[go], copy_per_token);
    printf("pregated floor max(T_gpu_only %.2f ms, T_copy %.2f ms at the link cap) = %.2f ms; "
           "pregated %.2f ms = %.2fx the floor (%s-bound regime)\n",
           tpt[go] * 1e3, copy_per_token * 1e3, floor * 1e3, tpt[pg] * 1e3, tpt[pg] / floor,
           copy_per_token > tpt[go] ? "copy" : "compute");
  }
}

int cmd_bench_policies(int argc, char **argv) {
  bp_opts o = {.r = {.backend = "cpu", .batch = 1, .plen = 64, .glen = 64, .reps = 3, .threads = 1,
                     .lookahead = 1}};
  int rc = bp_parse(argc, argv, &o);
  if (rc < 0) rc = bp_check(&o);
  if (rc >= 0) return rc;
  const moe_policy *pol[8];
  moe_policy_library libs[4] = {{0}};
  bp_results b = {.pol = pol, .reps = o.r.reps};
  if ((rc = bp_policies(&o, pol, &b.np, libs, b.cache)) != 0) return rc;
  for (int i = 0; i < b.np; i++)
    snprintf(b.label[i], sizeof b.label[i], "%s%s%s", pol[i]->name, b.cache[i][0] ? "+" : "",
             b.cache[i]);
  moe_model *m = NULL;
  moe_error err = {0};
  double window = 0, copy = 0;
  if (cli_preset_model_for(o.r.preset, o.r.backend, NULL, &m, &err) != MOE_OK) rc = cli_fail(&err);
  else if (o.link_ratio > 0) rc = bp_link_ratio(&o, m, &window, &copy);
  if (rc == 0) rc = bp_run(&o, m, &b);
  if (rc == 0) {
    bp_table(&o, &b, m, window, copy);
    bp_ratios(&o, &b, m);
    for (int i = 0; i < b.np; i++) /* runs that ended in an error (OOM is a result) */
      if (b.last[i]->status != MOE_OK && b.last[i]->status != MOE_ERR_OOM) {
        fprintf(stderr, "moebench: bench-policies: %s: %s\n", b.label[i], b.last[i]->error);
        rc = 1;
      }
  }
  for (int i = 0; b.res && i < b.np * o.r.reps; i++) run_result_free(&b.res[i]);
  free(b.res);
  moe_model_free(m);
  for (int j = 0; j < o.n_plugins; j++) moe_policy_plugin_close(&libs[j]);
  return rc;
}
