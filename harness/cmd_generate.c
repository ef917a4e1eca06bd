/* moebench generate: load or synthesise a model, prefill prompts, decode
 * greedily, print the generated ids and throughput. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/rng.h"
#include "cli.h"
#include "commands.h"
#include "moe/backend.h"
#include "moe/model.h"
#include "moe/policy.h"

static void generate_usage(FILE *f) {
  fprintf(f,
          "usage: moebench generate (--model-dir DIR | --preset NAME) [options]\n"
          "\n"
          "model:\n"
          "  --model-dir DIR       Hugging Face style directory: config.json + model.safetensors\n"
          "                        (or model.safetensors.index.json with shards)\n"
          "  --preset NAME         synthetic model from workloads/models/NAME.json\n"
          "  --seed N              weight seed for --preset (default: the preset's)\n"
          "  --dtype T             storage dtype f32|f16|bf16 (default: checkpoint's / preset's)\n"
          "  --routing-skew S      Zipf exponent of expert popularity for --preset (default: preset's)\n"
          "  --save DIR            write the model (safetensors + config.json) to DIR and go on\n"
          "prompts (all prompts must have the same length):\n"
          "  --prompt-ids LIST     one prompt, ids separated by commas or spaces\n"
          "  --prompt-file FILE    one prompt per line\n"
          "  --prompt-len N        N seeded random ids per prompt (default 16)\n"
          "  --prompt-seed N       seed for random prompts (default 1)\n"
          "  --batch B             number of sequences (default: number of prompts, or 1);\n"
          "                        prompts are repeated cyclically to fill the batch\n"
          "run:\n"
          "  --gen-len N           tokens to generate per sequence (default 16)\n"
          "  --policy NAME         offload policy: gpu-only (default), ondemand, prefetch-all,\n"
          "                        pregated (see 'moebench list policies')\n"
          "  --policy-plugin PATH  load the policy from a shared object instead\n"
          "  --routing MODE        conventional or pregated (default: the policy's own:\n"
          "                        pregated for the pregated policy, conventional for the\n"
          "                        others; the summary line says which routing ran)\n"
          "  --device-mem SIZE     device-memory budget, e.g. 24GiB (default: device capacity)\n"
          "  --link-gbps X         cpu backend: cap host-to-device copies at X GB/s\n"
          "  --backend NAME        cpu (default)\n"
          "  --threads N           math threads (default 1)\n"
          "  --quiet               print only the summary line\n"
          "  -h, --help            this text\n");
}

int cmd_generate(int argc, char **argv) {
  enum { O_MODEL = 256, O_PRESET, O_SEED, O_DTYPE, O_SKEW, O_SAVE, O_IDS, O_PFILE, O_PLEN, O_PSEED,
         O_BATCH, O_MAXNEW, O_BACKEND, O_THREADS, O_QUIET, O_POLICY, O_PLUGIN, O_ROUTING,
         O_DEVMEM, O_LINK };
  static const struct option opts[] = {
      {"model-dir", required_argument, 0, O_MODEL},   {"preset", required_argument, 0, O_PRESET},
      {"seed", required_argument, 0, O_SEED},         {"dtype", required_argument, 0, O_DTYPE},
      {"routing-skew", required_argument, 0, O_SKEW}, {"save", required_argument, 0, O_SAVE},
      {"prompt-ids", required_argument, 0, O_IDS},    {"prompt-file", required_argument, 0, O_PFILE},
      {"prompt-len", required_argument, 0, O_PLEN},   {"prompt-seed", required_argument, 0, O_PSEED},
      {"batch", required_argument, 0, O_BATCH},       {"gen-len", required_argument, 0, O_MAXNEW},
      {"backend", required_argument, 0, O_BACKEND},   {"threads", required_argument, 0, O_THREADS},
      {"quiet", no_argument, 0, O_QUIET},             {"policy", required_argument, 0, O_POLICY},
      {"policy-plugin", required_argument, 0, O_PLUGIN}, {"routing", required_argument, 0, O_ROUTING},
      {"device-mem", required_argument, 0, O_DEVMEM}, {"link-gbps", required_argument, 0, O_LINK},
      {"help", no_argument, 0, 'h'},                  {0, 0, 0, 0}};
  const char *model_dir = NULL, *preset = NULL, *save = NULL, *ids_arg = NULL, *pfile = NULL;
  const char *backend = "cpu", *policy_name = NULL, *plugin_path = NULL;
  bool have_routing = false;
  moe_routing routing = MOE_ROUTING_CONVENTIONAL;
  size_t device_mem = 0;
  double link_gbps = 0.0;
  bool have_seed = false, have_dtype = false, have_skew = false, quiet = false;
  uint64_t seed = 0, prompt_seed = 1;
  moe_dtype dtype = MOE_F32;
  double skew = 0.0;
  long plen = 16, batch = 0, max_new = 16, threads = 1;
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    bool ok = true;
    switch (c) {
      case O_MODEL: model_dir = optarg; break;
      case O_PRESET: preset = optarg; break;
      case O_SEED: ok = cli_parse_u64(optarg, &seed); have_seed = true; break;
      case O_DTYPE: ok = moe_dtype_parse(optarg, &dtype) == 0; have_dtype = true; break;
      case O_SKEW: ok = cli_parse_double(optarg, &skew) && skew >= 0; have_skew = true; break;
      case O_SAVE: save = optarg; break;
      case O_IDS: ids_arg = optarg; break;
      case O_PFILE: pfile = optarg; break;
      case O_PLEN: ok = cli_parse_int(optarg, 1, 1 << 20, &plen); break;
      case O_PSEED: ok = cli_parse_u64(optarg, &prompt_seed); break;
      case O_BATCH: ok = cli_parse_int(optarg, 1, 1 << 16, &batch); break;
      case O_MAXNEW: ok = cli_parse_int(optarg, 1, 1 << 20, &max_new); break;
      case O_BACKEND: backend = optarg; break;
      case O_THREADS: ok = cli_parse_int(optarg, 1, 1024, &threads); break;
      case O_QUIET: quiet = true; break;
      case O_POLICY: policy_name = optarg; break;
      case O_PLUGIN: plugin_path = optarg; break;
      case O_ROUTING: ok = moe_routing_parse(optarg, &routing) == 0; have_routing = true; break;
      case O_DEVMEM: ok = cli_parse_bytes(optarg, &device_mem) && device_mem > 0; break;
      case O_LINK: ok = cli_parse_link(optarg, &link_gbps); break;
      case 'h': generate_usage(stdout); return 0;
      default:
        cli_error("generate: unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
        return 2;
    }
    if (!ok) {
      cli_error("generate: invalid value '%s' for --%s", optarg, opts[c - O_MODEL].name);
      return 2;
    }
  }
  if (optind < argc) {
    cli_error("generate: unexpected argument '%s'", argv[optind]);
    return 2;
  }
  if ((model_dir == NULL) == (preset == NULL)) {
    cli_error("generate: give exactly one of --model-dir or --preset");
    return 2;
  }
  if (ids_arg && pfile) {
    cli_error("generate: give at most one of --prompt-ids and --prompt-file");
    return 2;
  }
  if (policy_name && plugin_path) {
    cli_error("generate: give at most one of --policy and --policy-plugin");
    return 2;
  }
  const moe_policy *policy = moe_policy_find(policy_name ? policy_name : "gpu-only");
  if (policy == NULL) {
    cli_error("generate: unknown policy '%s' (see 'moebench list policies')", policy_name);
    return 2;
  }

  int rc = 1;
  moe_error err = {0};
  moe_policy_library plugin = {0};
  moe_model *model = NULL;
  moe_device dev = {0};
  moe_engine *eng = NULL;
  int32_t *prompts = NULL, *batch_prompts = NULL, *out = NULL;
  int n_prompts = 1, len = (int)plen;

  if (plugin_path) {
    if (moe_policy_plugin_load(&plugin, plugin_path, &err) != MOE_OK) goto done;
    policy = plugin.policy;
  }
  if (!have_routing)
    routing = policy->default_routing == MOE_POLICY_ROUTING_PREGATED ? MOE_ROUTING_PREGATED : MOE_ROUTING_CONVENTIONAL;
  if (preset) {
    cli_preset p;
    if (cli_preset_load(&p, preset, &err) != MOE_OK) goto done;
    moe_synth_options so = cli_preset_synth(&p);
    if (have_dtype) so.dtype = dtype;
    if (have_seed) so.seed = seed;
    if (have_skew) so.routing_skew = skew;
    if (moe_model_synthetic(&model, &p.cfg, &so, &err) != MOE_OK) goto done;
  } else {
    if (moe_model_load(&model, model_dir, have_dtype ? &dtype : NULL, &err) != MOE_OK) goto done;
  }
  if (save && moe_model_save(model, save, &err) != MOE_OK) goto done;
  const moe_config *cfg = moe_model_config(model);

  if (ids_arg) {
    len = cli_parse_ids(ids_arg, &prompts);
    if (len <= 0) {
      cli_error("generate: --prompt-ids must be a non-empty list of non-negative ids");
      rc = 2;
      goto done;
    }
  } else if (pfile) {
    if (cli_read_token_file(pfile, -1, &prompts, &n_prompts, &len) != 0) goto done;
  } else {
    n_prompts = batch > 0 ? (int)batch : 1;
    prompts = malloc((size_t)n_prompts * (size_t)len * sizeof *prompts);
    if (prompts == NULL) goto done;
    moe_rng r;
    moe_rng_seed(&r, prompt_seed, 0);
    for (size_t i = 0; i < (size_t)n_prompts * (size_t)len; i++)
      prompts[i] = (int32_t)(moe_rng_next(&r) % (uint64_t)cfg->vocab);
  }
  int B = batch > 0 ? (int)batch : n_prompts;
  batch_prompts = malloc((size_t)B * (size_t)len * sizeof *batch_prompts);
  out = malloc((size_t)B * (size_t)max_new * sizeof *out);
  if (batch_prompts == NULL || out == NULL) goto done;
  for (int b = 0; b < B; b++)
    memcpy(batch_prompts + (size_t)b * (size_t)len, prompts + (size_t)(b % n_prompts) * (size_t)len,
           (size_t)len * sizeof *prompts);

  moe_backend_options bo = {.threads = (int)threads, .link_gbps = link_gbps,
                            .device_budget = device_mem};
  if (moe_device_open(&dev, backend, &bo, &err) != MOE_OK) goto done;
  moe_engine_options eo = {.max_batch = B, .max_seq = len + (int)max_new, .policy = policy,
                           .routing = routing};
  if (moe_engine_create(&eng, model, &dev, &eo, &err) != MOE_OK) goto done;
  moe_gen_stats gs = {0};
  if (moe_engine_generate(eng, batch_prompts, B, len, (int)max_new, out, NULL, &gs, &err) != MOE_OK)
    goto done;
  if (!quiet)
    for (int b = 0; b < B; b++) {
      printf("seq %d:", b);
      for (long t = 0; t < max_new; t++) printf(" %d", out[(size_t)b * (size_t)max_new + (size_t)t]);
      printf("\n");
    }
  double gen_tps = (double)B * (double)max_new / gs.total_s;
  moe_run_stats rs;
  moe_engine_stats(eng, &rs);
  printf("# %s on %s: policy %s, routing %s; batch %d, prompt %d, generated %ld per sequence; "
         "prefill %.3f s, decode %.3f s; %.2f generated tokens/s (measured, wall clock)\n",
         preset ? preset : model_dir, dev.ops->describe(dev.be), policy->name,
         moe_routing_name(routing), B, len, max_new, gs.prefill_s, gs.decode_s, gen_tps);
  printf("# peak device bytes %zu (measured by the allocator; expert slots %d: %zu bytes); "
         "copied host-to-device %llu bytes in %llu fetches, %llu misses, %llu re-copies, "
         "stall %.3f s (measured)",
         dev.mem.peak_total, rs.slots, dev.mem.at_peak[MOE_MEM_EXPERTS], rs.bytes_h2d, rs.fetches,
         rs.misses, rs.recopies, rs.stall_s);
  if (rs.pregate_total)
    printf("; pre-gate hit rate %.3f", (double)rs.pregate_hits / (double)rs.pregate_total);
  if (rs.invalid_requests)
    printf("; %llu policy requests refused (layer or expert out of range)", rs.invalid_requests);
  printf("\n");
  if (dev.ops->device_used)
    printf("# device memory: %zu bytes accounted by the engine, %zu bytes in use as the driver "
           "reports it (cudaMemGetInfo; includes the CUDA context and cuBLAS)\n",
           dev.mem.current_total, dev.ops->device_used(dev.be));
  rc = 0;
done:
  if (rc != 0 && err.status != MOE_OK) cli_fail(&err);
  moe_engine_free(eng);
  moe_device_close(&dev);
  moe_model_free(model);
  moe_policy_plugin_close(&plugin);
  free(prompts);
  free(batch_prompts);
  free(out);
  return rc;
}
