/* moebench plan: the engine's device-memory plan of a model under every
 * policy, without running it (and without its weights: a table-only model,
 * so paper-scale models plan on any machine), checked against a hardware
 * profile's memory; plus, labelled modeled, the copy time of one expert
 * over the profile's host link.
 *
 * Hardware profiles: workloads/hardware/NAME.json ($MOE_HARDWARE_DIR):
 * memory, memory and host-link bandwidth, matmul rates, latencies, each
 * figure with its source. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "moe/cost.h"
#include "moe/model.h"
#include "moe/policy.h"
#include "suite.h"

static moe_status hw_profile_load(moe_hw_profile *p, const char *name, moe_error *err) {
  char path[1200];
  cli_hw_path(name, path, sizeof path);
  return moe_hw_profile_load(p, path, err);
}

static int print_hw(const char *path, void *ctx) {
  moe_hw_profile p;
  moe_error err = {0};
  if (hw_profile_load(&p, path, &err) != MOE_OK) return *(int *)ctx = cli_fail(&err), 0;
  printf("%-16s %6.0f GiB  %6.0f GB/s memory  %5.1f GB/s pinned link  %s\n", p.name,
         p.memory_bytes / 1073741824.0, p.memory_gbps, p.h2d_pinned_gbps, p.description);
  return 0;
}

int hw_list(void) {
  int rc = 0;
  if (cli_for_each_json(cli_hw_dir(), print_hw, &rc) < 0) {
    cli_error("%s: cannot list", cli_hw_dir());
    return 1;
  }
  return rc;
}

int cmd_plan(int argc, char **argv) {
  static const struct option opts[] = {
      {"preset", required_argument, 0, 'p'},    {"model-dir", required_argument, 0, 'M'},
      {"hardware", required_argument, 0, 'H'},  {"batch", required_argument, 0, 'b'},
      {"prompt-len", required_argument, 0, 'l'}, {"gen-len", required_argument, 0, 'g'},
      {"help", no_argument, 0, 'h'},            {0, 0, 0, 0}};
  const char *preset = NULL, *model_dir = NULL, *hw_name = NULL;
  long batch = 1, plen = 256, glen = 256;
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    bool ok = true;
    switch (c) {
      case 'p': ok = optarg[0] != '\0'; preset = optarg; break;
      case 'M': ok = optarg[0] != '\0'; model_dir = cli_model_dir_arg(optarg); break;
      case 'H': ok = optarg[0] != '\0'; hw_name = optarg; break;
      case 'b': ok = cli_parse_int(optarg, 1, SUITE_MAX_BATCH, &batch); break;
      case 'l': ok = cli_parse_int(optarg, 1, SUITE_MAX_LEN, &plen); break;
      case 'g': ok = cli_parse_int(optarg, 1, SUITE_MAX_LEN, &glen); break;
      case 'h':
        printf("usage: moebench plan (--preset NAME | --model-dir DIR) [--hardware NAME] [options]\n\n"
               "The engine's device-memory plan of a model under every built-in policy, from\n"
               "its shapes alone (no weights are made or read: paper-scale models plan on any\n"
               "machine), against a hardware profile's memory; and, labelled modeled, one\n"
               "expert's copy time over the profile's host link.\n\n"
               "  --preset NAME       model preset\n"
               "  --model-dir DIR     a checkpoint directory (its config.json and index)\n"
               "  --hardware NAME     workloads/hardware/NAME.json ('moebench list hardware')\n"
               "  --batch B           sequences (default 1)\n"
               "  --prompt-len N      prompt (encoder input) tokens (default 256, the paper's)\n"
               "  --gen-len N         generated tokens (default 256)\n"
               "  -h, --help          this text\n");
        return 0;
      default:
        cli_error("plan: unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
        return 2;
    }
    if (!ok) {
      cli_bad_value("plan", opts, -1, c, optarg);
      return 2;
    }
  }
  if ((preset == NULL) == (model_dir == NULL) || optind < argc) {
    cli_error("plan: give exactly one of --preset or --model-dir (see --help)");
    return 2;
  }
  if (preset && cli_check_names("plan", preset, NULL) != 0) return 2;
  if (model_dir && cli_check_model_dir("plan", model_dir) != 0) return 1;
  moe_error err = {0};
  moe_hw_profile hw;
  if (hw_name && hw_profile_load(&hw, hw_name, &err) != MOE_OK) return cli_fail(&err);
  cli_preset p;
  if (cli_preset_load(&p, model_dir ? model_dir : preset, &err) != MOE_OK) return cli_fail(&err);
  moe_model *m = NULL;
  if (moe_model_plan_only(&m, &p.cfg, p.dtype, &err) != MOE_OK) return cli_fail(&err);
  const moe_config *cfg = moe_model_config(m);
  const double eb = (double)moe_model_expert_bytes(m);
  printf("# %s (%s): dense weights %.2f GB, experts %.2f GB, one expert %.1f MB (the engine's "
         "layout, exact)\n", p.name, moe_dtype_name(p.dtype), (double)moe_model_dense_bytes(m) / 1e9,
         (double)(moe_model_total_bytes(m) - moe_model_dense_bytes(m)) / 1e9, eb / 1e6);
  if (hw_name)
    printf("# hardware %s: %.1f GiB; one expert's copy %.3f ms pinned, %.3f ms pageable "
           "(modeled: latency + bytes / link bandwidth of the profile)\n", hw.name,
           hw.memory_bytes / 1073741824.0, (hw.h2d_latency_us * 1e-6 + eb / (hw.h2d_pinned_gbps * 1e9)) * 1e3,
           (hw.h2d_latency_us * 1e-6 + eb / (hw.h2d_pageable_gbps * 1e9)) * 1e3);
  printf("\n| policy | expert slots | planned device GB (exact) | of which expert slots | %s |\n",
         hw_name ? "fits the profile's memory" : "-");
  printf("|---|---|---|---|---|\n");
  int rc = 0;
  for (size_t i = 0; i < moe_policy_count(); i++) {
    const moe_policy *pol = moe_policy_at(i);
    moe_engine_options eo = {.max_batch = (int)batch,
                             .max_seq = moe_config_is_encdec(cfg) ? (int)(plen > glen ? plen : glen)
                                                                  : (int)(plen + glen),
                             .max_prefill = (int)plen, .policy = pol};
    int slots = 0, cache = 0;
    size_t cats[MOE_MEM_CATEGORIES], total = 0;
    if (moe_engine_plan_slots(m, &eo, pol, SIZE_MAX / 4, &slots, &cache, &err) != MOE_OK) {
      rc = cli_fail(&err);
      break;
    }
    moe_engine_plan_memory(m, NULL, &eo, slots, cats, &total);
    printf("| %s | %d | %.2f | %.2f | %s |\n", pol->name, slots, (double)total / 1e9,
           (double)cats[MOE_MEM_EXPERTS] / 1e9,
           hw_name ? ((double)total <= hw.memory_bytes ? "yes" : "no (OOM)") : "-");
  }
  printf("\nPlanned bytes are the engine's size table for this batch and these lengths (what a run "
         "allocates; a backend's matmul workspace comes on top); the profile's figures are its "
         "sources' (workloads/hardware).\n");
  moe_model_free(m);
  return rc;
}
