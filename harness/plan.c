/* moebench plan: the engine's device-memory plan of a model under every
 * policy, without running it (and without its weights: a table-only model,
 * so paper-scale models plan on any machine), checked against a hardware
 * profile's memory; plus, labelled modeled, the copy time of one expert
 * over the profile's host link.
 *
 * Hardware profiles: workloads/hardware/NAME.json ($MOE_HARDWARE_DIR):
 * memory, memory and host-link bandwidth, matmul rates, latencies, each
 * figure with its source (moebench list hardware, list.c). */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "flags.h"
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

void plan_usage(FILE *f) {
  fprintf(f, "usage: moebench plan (--preset NAME | --model-dir DIR) [--hardware NAME] [options]\n\n"
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
          "  --policy-plugin SO  also plan a policy plugin's slots (a row after the built-ins)\n"
          "  -h, --help          this text\n");
}

/* The table: one line per built-in policy, the engine's plan of its slots
 * and device memory (against hw's memory when given).  0, or 1. */
static int plan_table(const moe_model *m, const moe_hw_profile *hw, long batch, long plen, long glen,
                      const moe_policy *plugin) {
  const moe_config *cfg = moe_model_config(m);
  moe_error err = {0};
  printf("\n| policy | expert slots | planned device GB (exact) | of which expert slots | %s |\n",
         hw ? "fits the profile's memory" : "-");
  printf("|---|---|---|---|---|\n");
  int rc = 0;
  for (size_t i = 0; i < moe_policy_count() + (plugin != NULL); i++) {
    const moe_policy *pol = i < moe_policy_count() ? moe_policy_at(i) : plugin;
    moe_engine_options eo = {.max_batch = (int)batch,
                             .max_seq = moe_config_is_encdec(cfg) ? (int)(plen > glen ? plen : glen)
                                                                  : (int)(plen + glen),
                             .max_prefill = (int)plen, .policy = pol};
    int slots = 0, cache = 0;
    size_t cats[MOE_MEM_CATEGORIES], total = 0, fixed = 0;
    /* what the profile's memory leaves for slots, as the engine computes
     * it: a policy that sizes its slots to the budget (the host class)
     * plans to fit */
    moe_engine_plan_memory(m, NULL, &eo, 0, cats, &fixed);
    const size_t budget = hw ? (hw->memory_bytes > (double)fixed ? (size_t)(hw->memory_bytes - (double)fixed) : 0)
                             : SIZE_MAX / 4;
    if (moe_engine_plan_slots(m, &eo, pol, budget, &slots, &cache, &err) != MOE_OK) {
      rc = cli_fail(&err);
      break;
    }
    moe_engine_plan_memory(m, NULL, &eo, slots, cats, &total);
    const long all = (long)moe_config_n_moe_layers(cfg) * cfg->n_experts;
    char fits[96] = "-";
    if (hw) snprintf(fits, sizeof fits, "%s", (double)total <= hw->memory_bytes ? "yes" : "no (OOM)");
    if (hw && moe_policy_has_role(pol, MOE_POLICY_ROLE_HOST) && slots < all)
      snprintf(fits, sizeof fits, "%s: %d of %ld experts resident, the rest on the host",
               (double)total <= hw->memory_bytes ? "yes" : "no (OOM)", slots, all);
    printf("| %s | %d | %.2f | %.2f | %s |\n", pol->name, slots, (double)total / 1e9,
           (double)cats[MOE_MEM_EXPERTS] / 1e9, fits);
  }
  return rc;
}

/* Where one expert is better computed: on the host where it lives, or
 * copied to the device (the profile's host section; MODELED). */
static void plan_host(const moe_model *m, const moe_hw_profile *hw, moe_dtype dt) {
  if (!(hw->host_memory_gbps > 0)) return;
  const double eb = (double)moe_model_expert_bytes(m);
  const double flops = 2.0 * eb / (double)moe_dtype_size(dt); /* a multiply-add per weight */
  const double copy = hw->h2d_latency_us * 1e-6 + eb / (hw->h2d_pinned_gbps * 1e9);
  const double rate = (dt == MOE_F32 ? hw->host_gflops_f32 : hw->host_gflops_bf16) * 1e9;
  /* the host's time grows with the tokens once its FLOPs outlast reading the weights */
  const double crossover = copy * rate / flops;
  printf("# host (%g cores, %g GB/s): one expert computed where it lives takes %.3f ms for 1 "
         "token, %.3f ms for 16, against %.3f ms to copy it: the host is faster up to about %.0f "
         "tokens of one expert per step (MODELED from the profile's host section)\n",
         hw->host_cores, hw->host_memory_gbps, moe_cost_host_expert(hw, eb, flops, 1, dt) * 1e3,
         moe_cost_host_expert(hw, eb, flops, 16, dt) * 1e3, copy * 1e3,
         crossover >= 1 ? crossover : 0.0);
}

/* plan's options. */
typedef struct plan_opts {
  const char *preset, *model_dir, *hw_name, *plugin;
  long batch, plen, glen;
} plan_opts;

/* One flag into a plan_opts (flags_getopt). */
static int plan_take(void *ctx, int c, const char *arg) {
  plan_opts *o = ctx;
  switch (c) {
    case 'p': return flag_text(&o->preset, arg);
    case 'M': o->model_dir = cli_model_dir_arg(arg); return arg[0] ? 0 : -1;
    case 'H': return flag_text(&o->hw_name, arg);
    case 'X': return flag_text(&o->plugin, arg);
    case 'b': return flag_long(FLAG_BATCH, arg, &o->batch) ? 0 : -1;
    case 'l': return flag_long(FLAG_PROMPT_LEN, arg, &o->plen) ? 0 : -1;
    case 'g': return flag_long(FLAG_GEN_LEN, arg, &o->glen) ? 0 : -1;
    default: return -1;
  }
}

int cmd_plan(int argc, char **argv) {
  static const struct option opts[] = {
      {"preset", required_argument, 0, 'p'},    {"model-dir", required_argument, 0, 'M'},
      {"hardware", required_argument, 0, 'H'},  {"batch", required_argument, 0, 'b'},
      {"prompt-len", required_argument, 0, 'l'}, {"gen-len", required_argument, 0, 'g'},
      {"policy-plugin", required_argument, 0, 'X'}, {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  plan_opts o = {.batch = 1, .plen = 256, .glen = 256};
  const int prc = flags_getopt("plan", argc, argv, "h", opts, plan_take, &o, plan_usage);
  if (prc >= 0) return prc;
  const char *preset = o.preset, *model_dir = o.model_dir, *hw_name = o.hw_name;
  const long batch = o.batch, plen = o.plen, glen = o.glen;
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
  const double eb = (double)moe_model_expert_bytes(m);
  printf("# %s (%s): dense weights %.2f GB, experts %.2f GB, one expert %.1f MB (the engine's "
         "layout, exact)\n", p.name, moe_dtype_name(p.dtype), (double)moe_model_dense_bytes(m) / 1e9,
         (double)(moe_model_total_bytes(m) - moe_model_dense_bytes(m)) / 1e9, eb / 1e6);
  if (hw_name)
    printf("# hardware %s: %.1f GiB; one expert's copy %.3f ms pinned, %.3f ms pageable "
           "(modeled: latency + bytes / link bandwidth of the profile)\n", hw.name,
           hw.memory_bytes / 1073741824.0, (hw.h2d_latency_us * 1e-6 + eb / (hw.h2d_pinned_gbps * 1e9)) * 1e3,
           (hw.h2d_latency_us * 1e-6 + eb / (hw.h2d_pageable_gbps * 1e9)) * 1e3);
  if (hw_name) plan_host(m, &hw, p.dtype);
  moe_policy_library lib = {0};
  if (o.plugin && moe_policy_plugin_load(&lib, o.plugin, &err) != MOE_OK) {
    moe_model_free(m);
    return cli_fail(&err);
  }
  const int rc = plan_table(m, hw_name ? &hw : NULL, batch, plen, glen, lib.policy);
  moe_policy_plugin_close(&lib);
  printf("\nPlanned bytes are the engine's size table for this batch and these lengths (what a run "
         "allocates; a backend's matmul workspace comes on top); the profile's figures are its "
         "sources' (workloads/hardware).\n");
  moe_model_free(m);
  return rc;
}
