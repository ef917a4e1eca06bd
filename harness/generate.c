/* moebench generate: load or synthesise a model, prefill prompts, decode
 * greedily, print the generated ids and throughput. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/rng.h"
#include "cli.h"
#include "flags.h"
#include "moe/trace.h"
#include "suite.h"
#include "commands.h"
#include "moe/backend.h"
#include "moe/model.h"
#include "moe/policy.h"

void generate_usage(FILE *f) {
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
          "  --lookahead K         a block's pre-gate predicts the K-th MoE block after it\n"
          "                        (1..3, default 1; K > 1 uses the derived pre-gate)\n"
          "  --pregate-second      a prediction also names each token's next choice (the\n"
          "                        pre-gate's best expert outside its top-k), copied last\n"
          "                        while slots are left; the summary adds its hit rate\n"
          "  --pregate-stacks S    encoder-decoder models: which stacks pre-gate, both\n"
          "                        (default), decoder (as the paper's artifact) or encoder\n"
          "  --device-mem SIZE     device-memory budget, e.g. 24GiB (default: device capacity)\n"
          "  --link-gbps X         cpu backend: cap host-to-device copies at X GB/s\n"
          "  --backend NAME        cpu (default)\n"
          "  --threads N           math threads (default 1)\n"
          "  --trace FILE          write every backend operation to FILE as Chrome trace-event\n"
          "                        JSON (Perfetto, chrome://tracing): compute and copy tracks\n"
          "  --quiet               print only the summary line\n"
          "  -h, --help            this text\n");
}

/* Everything generate's flags set. */
typedef struct gen_opts {
  const char *model_dir, *preset, *save, *ids_arg, *pfile, *backend, *policy_name, *plugin_path;
  const char *trace;
  bool have_routing, have_seed, have_dtype, have_skew, quiet, second;
  unsigned stacks;
  moe_routing routing;
  size_t device_mem;
  double link_gbps, skew;
  uint64_t seed, prompt_seed;
  moe_dtype dtype;
  long plen, batch, max_new, threads, lookahead;
} gen_opts;

/* The flags together; -1 to go on, else the exit code. */
static int gen_check(const gen_opts *o) {
  if ((o->model_dir == NULL) == (o->preset == NULL)) {
    cli_error("generate: give exactly one of --model-dir or --preset");
    return 2;
  }
  if (o->ids_arg && o->pfile) {
    cli_error("generate: give at most one of --prompt-ids and --prompt-file");
    return 2;
  }
  if (o->policy_name && o->plugin_path) {
    cli_error("generate: give at most one of --policy and --policy-plugin");
    return 2;
  }
  if (cli_check_names("generate", o->preset, o->backend) != 0) return 2;
  if (cli_backend_modeled(o->backend)) {
    cli_error("generate: the sim backend computes no tokens (it models time); use run or "
              "bench-policies with --backend sim --hardware NAME");
    return 2;
  }
  return -1;
}

/* generate's long options without a short letter. */
enum { O_MODEL = 256, O_PRESET, O_SEED, O_DTYPE, O_SKEW, O_SAVE, O_IDS, O_PFILE, O_PLEN, O_PSEED,
       O_BATCH, O_MAXNEW, O_BACKEND, O_THREADS, O_QUIET, O_POLICY, O_PLUGIN, O_ROUTING,
       O_DEVMEM, O_LINK, O_TRACE, O_STACKS, O_LOOKAHEAD, O_SECOND };

/* One flag's value into o (flags_getopt). */
static int gen_take(void *ctx, int c, const char *arg) {
  gen_opts *o = ctx;
  switch (c) {
    case O_MODEL: o->model_dir = cli_model_dir_arg(arg); return 0;
    case O_PRESET: o->preset = arg; return 0;
    case O_SEED: o->have_seed = true; return flag_u64(FLAG_SEED, arg, &o->seed) ? 0 : -1;
    case O_DTYPE: o->have_dtype = true; return moe_dtype_parse(arg, &o->dtype) == 0 ? 0 : -1;
    case O_SKEW: o->have_skew = true; return flag_double(FLAG_SKEW, arg, &o->skew) ? 0 : -1;
    case O_SAVE: return flag_text(&o->save, arg);
    case O_IDS: o->ids_arg = arg; return 0;
    case O_PFILE: return flag_text(&o->pfile, arg);
    case O_PLEN: return flag_long(FLAG_PROMPT_LEN, arg, &o->plen) ? 0 : -1;
    case O_PSEED: return flag_u64(FLAG_PROMPT_SEED, arg, &o->prompt_seed) ? 0 : -1;
    case O_BATCH: return flag_long(FLAG_BATCH, arg, &o->batch) ? 0 : -1;
    case O_MAXNEW: return flag_long(FLAG_GEN_LEN, arg, &o->max_new) ? 0 : -1;
    case O_BACKEND: return flag_text(&o->backend, arg);
    case O_THREADS: return flag_long(FLAG_THREADS, arg, &o->threads) ? 0 : -1;
    case O_QUIET: o->quiet = true; return 0;
    case O_POLICY: return flag_text(&o->policy_name, arg);
    case O_PLUGIN: return flag_text(&o->plugin_path, arg);
    case O_ROUTING: o->have_routing = true; return moe_routing_parse(arg, &o->routing) == 0 ? 0 : -1;
    case O_DEVMEM: return flag_size(FLAG_DEVICE_MEM, arg, &o->device_mem) ? 0 : -1;
    case O_LINK: return flag_double(FLAG_LINK_GBPS, arg, &o->link_gbps) ? 0 : -1;
    case O_TRACE: return flag_text(&o->trace, arg);
    case O_STACKS: return moe_pregate_stacks_parse(arg, &o->stacks) == 0 ? 0 : -1;
    case O_LOOKAHEAD: return flag_long(FLAG_LOOKAHEAD, arg, &o->lookahead) ? 0 : -1;
    case O_SECOND: o->second = true; return 0;
    default: return -1;
  }
}

/* Parses the flags; returns -1 to go on, else the exit code. */
static int gen_parse(int argc, char **argv, gen_opts *o) {
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
      {"trace", required_argument, 0, O_TRACE},
      {"pregate-stacks", required_argument, 0, O_STACKS},
      {"lookahead", required_argument, 0, O_LOOKAHEAD},
      {"pregate-second", no_argument, 0, O_SECOND},
      {"help", no_argument, 0, 'h'},                  {0, 0, 0, 0}};
  *o = (gen_opts){.backend = "cpu", .routing = MOE_ROUTING_CONVENTIONAL, .prompt_seed = 1,
                  .dtype = MOE_F32, .plen = 16, .max_new = 16, .threads = 1};
  const int rc = flags_getopt("generate", argc, argv, "h", opts, gen_take, o, generate_usage);
  if (rc >= 0) return rc;
  if (optind < argc) {
    cli_error("generate: unexpected argument '%s'", argv[optind]);
    return 2;
  }
  return gen_check(o);
}

/* The model: a preset's synthetic one (flags override its dtype, seed and
 * skew) or a checkpoint directory; saved when asked. */
static moe_status gen_model(const gen_opts *o, moe_model **model, moe_error *err) {
  if (o->preset) {
    cli_preset p;
    moe_status st = cli_preset_load(&p, o->preset, err);
    if (st != MOE_OK) return st;
    moe_synth_options so = cli_preset_synth(&p);
    if (o->have_dtype) so.dtype = o->dtype;
    if (o->have_seed) so.seed = o->seed;
    if (o->have_skew) so.routing_skew = o->skew;
    st = moe_model_synthetic(model, &p.cfg, &so, err);
    if (st != MOE_OK) return st;
  } else {
    moe_status st = moe_model_load(model, o->model_dir, o->have_dtype ? &o->dtype : NULL, err);
    if (st != MOE_OK) return st;
  }
  return o->save ? moe_model_save(*model, o->save, err) : MOE_OK;
}

/* The batch's prompts: ids, a token file or seeded random ids, repeated
 * cyclically to fill the batch.  Returns 0, 1 (printed) or 2 (usage). */
static int gen_prompts(const gen_opts *o, const moe_config *cfg, int32_t **batch_prompts, int *B,
                       int *len) {
  int32_t *prompts = NULL;
  int n_prompts = 1;
  *len = (int)o->plen;
  if (o->ids_arg) {
    *len = cli_parse_ids(o->ids_arg, &prompts);
    if (*len <= 0) {
      if (*len == 0) free(prompts);
      cli_error("generate: --prompt-ids must be a non-empty list of non-negative ids");
      return 2;
    }
  } else if (o->pfile) {
    if (cli_read_token_file(o->pfile, -1, &prompts, &n_prompts, len) != 0) return 1;
  } else {
    n_prompts = o->batch > 0 ? (int)o->batch : 1;
    prompts = malloc((size_t)n_prompts * (size_t)*len * sizeof *prompts);
    if (prompts == NULL) {
      cli_error("generate: out of host memory for prompts");
      return 1;
    }
    moe_rng r;
    moe_rng_seed(&r, o->prompt_seed, 0);
    for (size_t i = 0; i < (size_t)n_prompts * (size_t)*len; i++)
      prompts[i] = (int32_t)(moe_rng_next(&r) % (uint64_t)cfg->vocab);
  }
  *B = o->batch > 0 ? (int)o->batch : n_prompts;
  *batch_prompts = malloc((size_t)*B * (size_t)*len * sizeof **batch_prompts);
  if (*batch_prompts == NULL) {
    free(prompts);
    cli_error("generate: out of host memory for prompts");
    return 1;
  }
  for (int b = 0; b < *B; b++)
    memcpy(*batch_prompts + (size_t)b * (size_t)*len,
           prompts + (size_t)(b % n_prompts) * (size_t)*len, (size_t)*len * sizeof *prompts);
  free(prompts);
  return 0;
}

/* The tokens (unless quiet) and the summary lines, every figure labelled. */
static void gen_print(const gen_opts *o, moe_device *dev, moe_engine *eng, const moe_policy *policy,
                      moe_routing routing, const int32_t *out, int B, int len,
                      const moe_gen_stats *gs) {
  const long max_new = o->max_new;
  const moe_backend_ops *ops = moe_device_ops(dev);
  const moe_mem_stats *mem = moe_device_mem(dev);
  if (!o->quiet)
    for (int b = 0; b < B; b++) {
      printf("seq %d:", b);
      for (long t = 0; t < max_new; t++) printf(" %d", out[(size_t)b * (size_t)max_new + (size_t)t]);
      printf("\n");
    }
  double gen_tps = (double)B * (double)max_new / gs->total_s;
  moe_run_stats rs;
  moe_engine_stats(eng, &rs);
  printf("# %s on %s: policy %s, routing %s; batch %d, prompt %d, generated %ld per sequence; "
         "prefill %.3f s, decode %.3f s; %.2f generated tokens/s (measured, wall clock)\n",
         o->preset ? o->preset : o->model_dir, ops->describe(moe_device_backend(dev)), policy->name,
         moe_routing_name(routing), B, len, max_new, gs->prefill_s, gs->decode_s, gen_tps);
  printf("# peak device bytes %zu (measured by the allocator; expert slots %d: %zu bytes); "
         "copied host-to-device %llu bytes in %llu fetches, %llu misses, %llu re-copies, "
         "stall %.3f s (measured)",
         mem->peak_total, rs.slots, mem->at_peak[MOE_MEM_EXPERTS], rs.bytes_h2d,
         rs.fetches, rs.misses, rs.recopies, rs.stall_s);
  if (rs.pregate_total)
    printf("; pre-gate hit rate %.3f", (double)rs.pregate_hits / (double)rs.pregate_total);
  if (rs.pregate_total && o->second)
    printf(" (%.3f with each token's next choice)",
           (double)(rs.pregate_hits + rs.pregate_second_hits) / (double)rs.pregate_total);
  if (rs.first_block_total)
    printf("; first-block prediction hit rate %.3f",
           (double)rs.first_block_hits / (double)rs.first_block_total);
  if (rs.invalid_requests)
    printf("; %llu policy requests refused (layer or expert out of range)", rs.invalid_requests);
  printf("\n");
  if (ops->device_used)
    printf("# device memory: %zu bytes accounted by the engine, %zu bytes in use as the driver "
           "reports it (cudaMemGetInfo; includes the CUDA context and cuBLAS)\n",
           mem->current_total, ops->device_used(moe_device_backend(dev)));
}

int cmd_generate(int argc, char **argv) {
  gen_opts o;
  int rc = gen_parse(argc, argv, &o);
  if (rc >= 0) return rc;
  const moe_policy *policy = o.policy_name ? moe_policy_find(o.policy_name) : moe_policy_reference();
  if (policy == NULL) {
    cli_error("generate: unknown policy '%s' (see 'moebench list policies')", o.policy_name);
    return 2;
  }
  rc = 1;
  moe_error err = {0};
  moe_policy_library plugin = {0};
  moe_model *model = NULL;
  moe_device *dev = NULL;
  moe_engine *eng = NULL;
  moe_trace *trace = NULL;
  int32_t *batch_prompts = NULL, *out = NULL;
  int B = 0, len = 0;
  if (o.plugin_path) {
    if (moe_policy_plugin_load(&plugin, o.plugin_path, &err) != MOE_OK) goto done;
    policy = plugin.policy;
  }
  moe_routing routing = o.routing;
  if (!o.have_routing)
    routing = policy->default_routing == MOE_POLICY_ROUTING_PREGATED ? MOE_ROUTING_PREGATED
                                                                     : MOE_ROUTING_CONVENTIONAL;
  if (gen_model(&o, &model, &err) != MOE_OK) goto done;
  int prc = gen_prompts(&o, moe_model_config(model), &batch_prompts, &B, &len);
  if (prc != 0) {
    rc = prc;
    goto done;
  }
  out = malloc((size_t)B * (size_t)o.max_new * sizeof *out);
  if (out == NULL) {
    MOE_FAIL(&err, MOE_ERR_OOM, "out of host memory for the generated tokens");
    goto done;
  }
  moe_backend_options bo = {.threads = (int)o.threads, .link_gbps = o.link_gbps,
                            .device_budget = o.device_mem};
  if (moe_device_create(&dev, o.backend, &bo, &err) != MOE_OK) goto done;
  if (o.trace && (moe_trace_open(&trace, o.trace, &err) != MOE_OK ||
                  moe_device_trace(dev, trace, &err) != MOE_OK))
    goto done;
  moe_engine_options eo = {.max_batch = B, .max_seq = len + (int)o.max_new, .policy = policy,
                           .routing = routing, .pregate_stacks = o.stacks,
                           .pregate_lookahead = (int)o.lookahead,
                           .pregate_second = o.second};
  if (moe_engine_create(&eng, model, dev, &eo, &err) != MOE_OK) goto done;
  moe_gen_stats gs = {0};
  if (moe_engine_generate(eng, batch_prompts, B, len, (int)o.max_new, out, NULL, &gs, &err) != MOE_OK)
    goto done;
  gen_print(&o, dev, eng, policy, routing, out, B, len, &gs);
  rc = 0;
done:
  if (rc != 0 && err.status != MOE_OK) cli_fail(&err);
  moe_engine_free(eng);
  moe_device_destroy(dev); /* the copies are done: the trace is complete */
  if (trace) {
    moe_error terr = {0};
    if (moe_trace_close(trace, &terr) != MOE_OK) rc = cli_fail(&terr);
    else if (rc == 0) printf("# trace: %s (Chrome trace-event JSON; open in Perfetto)\n", o.trace);
  }
  moe_model_free(model);
  moe_policy_plugin_close(&plugin);
  free(batch_prompts);
  free(out);
  return rc;
}
