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
#include "commands.h"
#include "runner.h"
#include "suite.h"

/* Measured time of one expert copy over the backend's (capped) link. */
static double measure_expert_copy(const char *backend, double link_gbps, const char *hardware,
                                  size_t bytes) {
  moe_device *dev = NULL;
  moe_error err = {0};
  moe_backend_options bo = {.link_gbps = link_gbps, .hardware = hardware};
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

static void usage(FILE *f) {
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
          "  --policies LIST      comma-separated (default gpu-only,ondemand,prefetch-all,pregated)\n"
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

int cmd_bench_policies(int argc, char **argv) {
  static const struct option opts[] = {
      {"preset", required_argument, 0, 'p'},   {"policies", required_argument, 0, 'P'},
      {"model-dir", required_argument, 0, 'M'}, {"lookahead", required_argument, 0, 'K'},
      {"batch", required_argument, 0, 'b'},    {"prompt-len", required_argument, 0, 'l'},
      {"gen-len", required_argument, 0, 'g'},  {"reps", required_argument, 0, 'r'},
      {"link-gbps", required_argument, 0, 'L'}, {"device-mem", required_argument, 0, 'm'},
      {"threads", required_argument, 0, 't'},  {"backend", required_argument, 0, 'B'},
      {"policy-plugin", required_argument, 0, 'X'}, {"hardware", required_argument, 0, 'H'},
      {"sim-routing", required_argument, 0, 'R'}, {"link-ratio", required_argument, 0, 'Q'},
      {"help", no_argument, 0, 'h'},           {0, 0, 0, 0}};
  const char *preset = NULL, *plist = "gpu-only,ondemand,prefetch-all,pregated", *backend = "cpu";
  const char *model_dir = NULL, *hw_name = NULL, *sim_routing = NULL;
  char hw_path[1200] = "";
  const char *plugins[4];
  int n_plugins = 0;
  long batch = 1, plen = 64, glen = 64, reps = 3, threads = 1, lookahead = 1;
  double link = 0, link_ratio = 0;
  size_t devmem = 0;
  optind = 1;
  opterr = 0;
  int c;
  int idx = -1;
  while ((idx = -1, c = getopt_long(argc, argv, "h", opts, &idx)) != -1) {
    bool ok = true;
    switch (c) {
      case 'p': preset = optarg; break;
      case 'M': ok = optarg[0] != '\0'; model_dir = cli_model_dir_arg(optarg); break;
      case 'K': ok = cli_parse_int(optarg, 1, MOE_MAX_LOOKAHEAD, &lookahead); break;
      case 'P': plist = optarg; break;
      case 'b': ok = cli_parse_int(optarg, 1, 4096, &batch); break;
      case 'l': ok = cli_parse_int(optarg, 1, 1 << 16, &plen); break;
      case 'g': ok = cli_parse_int(optarg, 2, 1 << 16, &glen); break;
      case 'r': ok = cli_parse_int(optarg, 1, SUITE_MAX_REPS, &reps); break;
      case 'L': ok = cli_parse_link(optarg, &link); break;
      case 'm': ok = cli_parse_bytes(optarg, &devmem) && devmem > 0; break;
      case 't': ok = cli_parse_int(optarg, 1, 1024, &threads); break;
      case 'B': ok = optarg[0] != '\0'; backend = optarg; break;
      case 'H': ok = optarg[0] != '\0'; hw_name = optarg; break;
      case 'R': ok = optarg[0] != '\0'; sim_routing = optarg; break;
      case 'Q': ok = cli_parse_double(optarg, &link_ratio) && link_ratio > 0 && link_ratio <= 100; break;
      case 'X':
        ok = optarg[0] != '\0' && n_plugins < 4;
        if (ok) plugins[n_plugins++] = optarg;
        break;
      case 'h': usage(stdout); return 0;
      default:
        cli_error("bench-policies: unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
        return 2;
    }
    if (!ok) {
      cli_bad_value("bench-policies", opts, idx, c, optarg);
      return 2;
    }
  }
  if ((preset == NULL) == (model_dir == NULL) || optind < argc) {
    cli_error("bench-policies: give exactly one of --preset or --model-dir; no positional "
              "arguments");
    return 2;
  }
  if (model_dir) {
    if (cli_check_model_dir("bench-policies", model_dir) != 0) return 1;
    preset = model_dir;
  }
  if (cli_check_names("bench-policies", preset, backend) != 0) return 2;
  const bool sim = cli_backend_modeled(backend);
  if (sim && hw_name == NULL) {
    cli_error("bench-policies: --backend sim needs --hardware NAME (see 'moebench list hardware')");
    return 2;
  }
  if (!sim && (hw_name || sim_routing)) {
    cli_error("bench-policies: --hardware and --sim-routing are for --backend sim");
    return 2;
  }
  if (hw_name) cli_hw_path(hw_name, hw_path, sizeof hw_path);
  const moe_policy *pol[8];
  int np = 0;
  if (cli_parse_policies("bench-policies", plist, pol, 8, &np) != 0) return 2;
  moe_error err = {0};
  moe_policy_library libs[4] = {{0}};
  for (int i = 0; i < n_plugins; i++) {
    if (np == 8 || moe_policy_plugin_load(&libs[i], plugins[i], &err) != MOE_OK) {
      if (np == 8) cli_error("bench-policies: at most 8 policies");
      else cli_fail(&err);
      for (int j = 0; j < i; j++) moe_policy_plugin_close(&libs[j]);
      return np == 8 ? 2 : 1;
    }
    pol[np++] = libs[i].policy;
  }
  moe_model *m = NULL;
  if (cli_preset_model_for(preset, backend, NULL, &m, &err) != MOE_OK) {
    for (int j = 0; j < n_plugins; j++) moe_policy_plugin_close(&libs[j]);
    return cli_fail(&err);
  }
  const moe_config *cfg = moe_model_config(m);
  double ratio_window = 0, ratio_copy = 0;
  if (link_ratio > 0) {
    const moe_backend_ops *bops = moe_backend_find(backend);
    if (link > 0 || bops == NULL || !(bops->caps & MOE_BACKEND_CAP_LINK_CAP)) {
      cli_error("bench-policies: --link-ratio sets an emulated link (cpu backend), instead of "
                "--link-gbps");
      moe_model_free(m);
      for (int j = 0; j < n_plugins; j++) moe_policy_plugin_close(&libs[j]);
      return 2;
    }
    run_spec ws = {.model = m, .backend = backend, .threads = (int)threads, .batch = (int)batch,
                   .prompt_len = (int)plen, .gen_len = (int)glen, .prompt_seed = 1};
    char why[700];
    link = runner_link_for_ratio(&ws, link_ratio, &ratio_window, &ratio_copy, why, sizeof why);
    if (isnan(link)) {
      cli_error("bench-policies: %s", why);
      moe_model_free(m);
      for (int j = 0; j < n_plugins; j++) moe_policy_plugin_close(&libs[j]);
      return 1;
    }
    fprintf(stderr, "link ratio %g: a decoder MoE block window computes in %.2f ms (measured), one "
                    "expert's copy should take %.2f ms: link %.3f GB/s\n",
            link_ratio, ratio_window * 1e3, ratio_copy * 1e3, link);
  }

  run_result *res = calloc((size_t)np * (size_t)reps, sizeof *res);
  for (int r = 0; r < reps; r++)
    for (int i = 0; i < np; i++) {
      run_spec sp = {.model = m,
                     .policy = pol[i],
                     .routing = pol[i]->default_routing == MOE_POLICY_ROUTING_PREGATED
                                    ? MOE_ROUTING_PREGATED
                                    : MOE_ROUTING_CONVENTIONAL,
                     .backend = backend,
                     .hardware = hw_name ? hw_path : NULL,
                     .sim_routing = sim_routing,
                     .threads = (int)threads,
                     .link_gbps = link,
                     .device_mem = devmem,
                     .batch = (int)batch,
                     .prompt_len = (int)plen,
                     .gen_len = (int)glen,
                     .prompt_seed = 1,
                     .lookahead = (int)lookahead,
                     .requests = 1,
                     .keep_logits = r == reps - 1};
      run_result *o = &res[r * np + i];
      runner_run(&sp, o);
      fprintf(stderr, "rep %d/%ld %-13s %s\n", r + 1, reps, pol[i]->name,
              o->status == MOE_OK ? "ok" : o->error);
    }
  /* medians per policy */
  double tps[8], tpt[8], total[8];
  const run_result *last[8];
  for (int i = 0; i < np; i++) {
    double a[100], b[100], t[100];
    for (int r = 0; r < reps; r++) {
      a[r] = res[r * np + i].tokens_per_s;
      b[r] = res[r * np + i].decode_s / (double)(glen - 1);
      t[r] = res[r * np + i].total_s;
    }
    tps[i] = runner_median(a, (int)reps);
    tpt[i] = runner_median(b, (int)reps);
    total[i] = runner_median(t, (int)reps);
    last[i] = &res[(reps - 1) * np + i];
  }
  int ref = -1;
  for (int i = 0; i < np; i++)
    if (strcmp(pol[i]->name, "gpu-only") == 0) ref = i;
  printf("## %s: batch %ld, prompt %ld, generated %ld, %s, link %s\n", preset, batch, plen, glen,
         moe_dtype_name(moe_model_dtype(m)), link > 0 ? "capped" : "uncapped");
  if (link_ratio > 0)
    printf("link set by ratio %g: a decoder MoE block window computed in %.2f ms in a gpu-only "
           "warm-up (measured), so the cap is %.3f GB/s (one expert's copy %.2f ms)\n", link_ratio,
           ratio_window * 1e3, link, ratio_copy * 1e3);
  if (sim)
    printf("device: %s (sim backend, routing %s); every figure below is MODELED on that profile "
           "(deterministic: medians of %ld identical repetitions)\n\n",
           last[0]->device, sim_routing ? sim_routing : "uniform", reps);
  else
    printf("device: %s; medians of %ld interleaved repetitions (measured, wall clock)\n\n",
           last[0]->device, reps);
  printf("| policy | routing | tokens/s | total s | decode ms/token | peak device MB | expert slots "
         "| copied MB (decode) | fetches | misses | stall s (decode) | pre-gate hit | token match | max logit diff |\n");
  printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (int i = 0; i < np; i++) {
    const run_result *o = last[i];
    if (o->status != MOE_OK) {
      printf("| %s | - | %s | | | | | | | | | | | |\n", pol[i]->name,
             o->status == MOE_ERR_OOM ? "OOM" : "error");
      continue;
    }
    double match = NAN, diff = NAN;
    if (ref >= 0)
      runner_parity(last[ref], o, (int)batch, (int)glen, cfg->vocab, &match, &diff);
    char hit[32] = "-", match_s[32] = "n/a", diff_s[32] = "n/a";
    if (!isnan(match)) snprintf(match_s, sizeof match_s, "%.3f", match);
    if (!isnan(diff)) snprintf(diff_s, sizeof diff_s, "%.3g", diff);
    if (o->stats.pregate_total)
      snprintf(hit, sizeof hit, "%.3f", (double)o->stats.pregate_hits / (double)o->stats.pregate_total);
    printf("| %s | %s | %.2f | %.3f | %.2f | %.1f | %d | %.1f | %llu | %llu | %.3f | %s | %s | %s |\n",
           pol[i]->name,
           pol[i]->default_routing == MOE_POLICY_ROUTING_PREGATED ? "pregated" : "conventional",
           tps[i], total[i], tpt[i] * 1e3, (double)o->peak_bytes / 1e6, o->stats.slots,
           (double)(o->stats.bytes_h2d - o->prefill_bytes_h2d) / 1e6, o->stats.fetches,
           o->stats.misses, o->stats.stall_s - o->prefill_stall_s, hit, match_s, diff_s);
  }
  /* the paper's comparisons and this machine's regime */
  int go = -1, od = -1, pf = -1, pg = -1;
  for (int i = 0; i < np; i++) {
    const char *n = pol[i]->name;
    if (last[i]->status != MOE_OK) continue;
    if (!strcmp(n, "gpu-only")) go = i;
    if (!strcmp(n, "ondemand")) od = i;
    if (!strcmp(n, "prefetch-all")) pf = i;
    if (!strcmp(n, "pregated")) pg = i;
  }
  printf("\n");
  size_t eb = moe_model_expert_bytes(m);
  double copy_s = measure_expert_copy(backend, link, hw_name ? hw_path : NULL, eb);
  const char *how = sim ? "modeled" : "measured";
  printf("one expert: %.1f MB, copy over this link %.2f ms (%s) = %.2f GB/s host-to-device\n",
         (double)eb / 1e6, copy_s * 1e3, how, (double)eb / copy_s * 1e-9);
  if (go >= 0) {
    /* the MoE blocks a decode step runs: an encoder-decoder model's
     * encoder ran once, in the prefill */
    int n_moe = 0;
    for (int l = cfg->n_enc_layers; l < cfg->n_layers; l++) n_moe += cfg->is_moe[l];
    if (n_moe == 0) n_moe = 1;
    printf("gpu-only decode: %.2f ms/token = %.2f ms per decoder MoE block and the layers up to the next "
           "(%s); copy/compute ratio per block %.2f\n",
           tpt[go] * 1e3, tpt[go] * 1e3 / n_moe, how, copy_s / (tpt[go] / n_moe));
  }
  /* every other policy's share of the copy time it hides, on the same scale */
  if (go >= 0 && od >= 0)
    for (int i = 0; i < np; i++) {
      if (i == go || i == od || i == pg || last[i]->status != MOE_OK) continue;
      printf("copy time hidden by %s, (T_ondemand - T_%s) / (T_ondemand - T_gpu_only), decode per "
             "token: %.2f\n", pol[i]->name, pol[i]->name, (tpt[od] - tpt[i]) / (tpt[od] - tpt[go]));
    }
  if (go >= 0 && od >= 0 && pg >= 0) {
    double hidden = (tpt[od] - tpt[pg]) / (tpt[od] - tpt[go]);
    printf("copy time hidden by pregated, (T_ondemand - T_pregated) / (T_ondemand - T_gpu_only), "
           "decode per token: %.2f\n", hidden);
    printf("pregated vs ondemand: %.2fx tokens/s, %.2fx decode speed; paper: 1.5x avg\n",
           tps[pg] / tps[od], tpt[od] / tpt[pg]);
    printf("pregated vs gpu-only: %.0f%% of tokens/s, %.0f%% of peak device memory; paper: 81%%, 23%%\n",
           100 * tps[pg] / tps[go], 100.0 * (double)last[pg]->peak_bytes / (double)last[go]->peak_bytes);
  }
  if (pf >= 0 && pg >= 0) {
    bool slowest = true;
    for (int i = 0; i < np; i++)
      if (i != pf && last[i]->status == MOE_OK && tps[i] < tps[pf]) slowest = false;
    printf("pregated vs prefetch-all: %.1fx tokens/s; paper: 27x avg (prefetch-all %s)\n",
           tps[pg] / tps[pf], slowest ? "slowest" : "not slowest");
  }
  if (go >= 0 && pg >= 0 && link > 0) {
    double copy_per_token = (double)(last[pg]->stats.bytes_h2d - last[pg]->prefill_bytes_h2d) /
                            (double)(glen - 1) / (link * 1e9);
    double floor = fmax(tpt[go], copy_per_token);
    printf("pregated floor max(T_gpu_only %.2f ms, T_copy %.2f ms at the link cap) = %.2f ms; "
           "pregated %.2f ms = %.2fx the floor (%s-bound regime)\n",
           tpt[go] * 1e3, copy_per_token * 1e3, floor * 1e3, tpt[pg] * 1e3, tpt[pg] / floor,
           copy_per_token > tpt[go] ? "copy" : "compute");
  }
  int failed = 0; /* runs that ended in an error (OOM is a result) */
  for (int i = 0; i < np; i++)
    if (last[i]->status != MOE_OK && last[i]->status != MOE_ERR_OOM) {
      fprintf(stderr, "moebench: bench-policies: %s: %s\n", pol[i]->name, last[i]->error);
      failed++;
    }
  for (int i = 0; i < np * reps; i++) run_result_free(&res[i]);
  free(res);
  moe_model_free(m);
  for (int j = 0; j < n_plugins; j++) moe_policy_plugin_close(&libs[j]);
  return failed ? 1 : 0;
}
