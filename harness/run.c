/* moebench run: one configuration from flags; its row printed as markdown,
 * and written with --out. */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "flags.h"
#include "commands.h"
#include "moe/backend.h"
#include "moe/clock.h"
#include "moe/cuda.h"
#include "moe/publish.h"
#include "results.h"
#include "row.h"
#include "runner.h"
#include "suite.h"

/* run's options. */
typedef struct run_opts {
  flags_run r;
  const char *policy, *plugin, *out, *trace_path, *routing_log;
  char hw_path[1200];
  char *orig[128]; /* getopt permutes argv; kept as given for the metadata */
  int n_orig;
  long requests, warmup;
  double link_ratio; /* > 0: the link cap from a gpu-only warm-up (runner_link_for_ratio) */
  uint64_t seed, prompt_seed;
  bool have_seed, have_routing;
  moe_routing routing;
  const moe_policy *pol; /* resolved */
  const char *cache;     /* its expert cache spec, or NULL */
} run_opts;

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

void run_usage(FILE *f) {
  fprintf(f, "usage: moebench run (--preset NAME | --model-dir DIR) [options]\n\n"
          "Measures one configuration and prints its result row (markdown); with --out,\n"
          "also writes PREFIX.csv and PREFIX.json.\n\n"
          "  --preset NAME       model preset\n"
          "  --model-dir DIR     a Hugging Face checkpoint directory instead; the row's\n"
          "                      model is DIR's base name @ a hash of its config and index\n"
          "  --policy NAME       gpu-only (default), ondemand, prefetch-all, pregated,\n"
          "                      pregated-spec, host-compute, fiddler, pregated-hybrid\n"
          "                      ('moebench list policies'); NAME+KIND:SIZE adds a cache of\n"
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
          "  --link-ratio R      instead: the cap at which one expert's copy takes R times a\n"
          "                      decoder MoE block window's compute (a gpu-only warm-up\n"
          "                      measures it; cpu backend)\n"
          "  --device-mem SIZE   device-memory budget (default capacity)\n"
          "  --backend NAME      cpu (default), cuda, sim, auto (see 'moebench list backends')\n"
          "  --hardware NAME     sim: the hardware profile the times are modeled on\n"
          "                      ('moebench list hardware'); every time is then modeled.\n"
          "                      Other backends: only the figures fiddler weighs (times\n"
          "                      stay measured)\n"
          "  --sim-routing SPEC  sim: uniform (default), zipf:S, correlated:P, or both;\n"
          "                      trace:FILE replays a run's --record-routing log\n"
          "  --record-routing FILE  every MoE block's router choice of the last\n"
          "                      repetition ('step layer row experts' lines), for\n"
          "                      --sim-routing trace:FILE\n"
          "  --threads N         math threads (default 1)\n"
          "  --host-threads N    math threads of the experts a host-compute policy\n"
          "                      computes on the host (default 1)\n"
          "  --host-gbps X       cpu backend: cap the emulated host's memory bandwidth (a\n"
          "                      host job takes its weights' bytes at X GB/s at least);\n"
          "                      with a link cap and no --hardware, fiddler weighs these\n"
          "  -o, --out PREFIX    write PREFIX.csv and PREFIX.json\n"
          "  --trace FILE        the last repetition's backend operations as Chrome\n"
          "                      trace-event JSON (Perfetto): compute and copy tracks\n"
          "  -h, --help          this text\n");
}

/* One flag's value into o; false when refused. */
static bool run_flag(run_opts *o, int c, const char *arg) {
  const int rc = flags_take_run(&o->r, c, arg);
  if (rc != 1) return rc == 0;
  switch (c) {
    case 'P': return flag_text(&o->policy, arg) == 0;
    case 'X': return flag_text(&o->plugin, arg) == 0;
    case 'T': return flag_text(&o->trace_path, arg) == 0;
    case 'Y': return flag_text(&o->routing_log, arg) == 0;
    case 'R': o->have_routing = true; return moe_routing_parse(arg, &o->routing) == 0;
    case 'q': return flag_long(FLAG_REQUESTS, arg, &o->requests);
    case 'w': return flag_long(FLAG_WARMUP, arg, &o->warmup);
    case 's': o->have_seed = true; return flag_u64(FLAG_SEED, arg, &o->seed);
    case 'S': return flag_u64(FLAG_PROMPT_SEED, arg, &o->prompt_seed);
    case 'Q': return flag_double(FLAG_LINK_RATIO, arg, &o->link_ratio);
    default: return false;
  }
}

static int run_take(void *ctx, int c, const char *arg) {
  run_opts *o = ctx;
  if (c != 'o') return run_flag(o, c, arg) ? 0 : -1;
  if (cli_check_prefix("run", arg) != 0) return 2;
  o->out = arg;
  return 0;
}

/* The flags; -1 to go on, else the exit code. */
static int run_parse(int argc, char **argv, run_opts *o) {
  static const struct option opts[] = {
      FLAGS_RUN_OPTIONS, {"policy", required_argument, 0, 'P'},
      {"routing", required_argument, 0, 'R'}, {"requests", required_argument, 0, 'q'},
      {"warmup", required_argument, 0, 'w'}, {"seed", required_argument, 0, 's'},
      {"prompt-seed", required_argument, 0, 'S'}, {"policy-plugin", required_argument, 0, 'X'},
      {"trace", required_argument, 0, 'T'}, {"record-routing", required_argument, 0, 'Y'},
      {"out", required_argument, 0, 'o'}, {"link-ratio", required_argument, 0, 'Q'},
      {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
  o->n_orig = argc < 128 ? argc : 128;
  memcpy(o->orig, argv, (size_t)o->n_orig * sizeof *o->orig);
  return flags_getopt("run", argc, argv, "ho:", opts, run_take, o, run_usage);
}

/* The flags together, and the policy resolved into o->pol (a plugin's in
 * lib); -1 to go on, else the exit code. */
static int run_check(run_opts *o, bool positional, moe_policy_library *lib) {
  if (run_clobbers(o->out, o->trace_path, o->routing_log, o->r.sim_routing, o->r.hw_name)) return 2;
  if ((o->r.preset == NULL) == (o->r.model_dir == NULL) || positional) {
    cli_error("run: give exactly one of --preset or --model-dir; no positional arguments");
    return 2;
  }
  if (o->r.model_dir) {
    if (o->have_seed) {
      cli_error("run: --seed draws a preset's weights; a checkpoint has its own");
      return 2;
    }
    if (cli_check_model_dir("run", o->r.model_dir) != 0) return 1;
    o->r.preset = o->r.model_dir;
  }
  if (o->policy && o->plugin) {
    cli_error("run: give at most one of --policy and --policy-plugin");
    return 2;
  }
  const moe_backend_ops *lo = moe_backend_find(o->r.backend);
  if (o->link_ratio > 0 && (o->r.link > 0 || (lo && (!(lo->caps & MOE_BACKEND_CAP_LINK_CAP) ||
                                                     (lo->caps & MOE_BACKEND_CAP_MODELED))))) {
    cli_error("run: --link-ratio sets the cpu backend's emulated link, instead of --link-gbps");
    return 2;
  }
  if (cli_check_names("run", o->r.preset, o->r.backend) != 0 ||
      cli_check_sim("run", o->r.backend, o->r.hw_name, o->r.sim_routing, o->hw_path, sizeof o->hw_path))
    return 2;
  char base[128];
  if (o->policy && !cli_split_policy(o->policy, base, sizeof base, &o->cache)) {
    cli_error("run: --policy '%s' is not NAME or NAME+KIND:SIZE (KIND lru, lfu, static or ring; SIZE "
              "experts, N%% or bytes)", o->policy);
    return 2;
  }
  o->pol = o->policy ? moe_policy_find(base) : moe_policy_reference();
  if (o->plugin) {
    moe_error perr = {0};
    if (moe_policy_plugin_load(lib, o->plugin, &perr) != MOE_OK) return cli_fail(&perr);
    o->pol = lib->policy;
  }
  if (o->pol == NULL) {
    cli_error("run: unknown policy '%s' (see 'moebench list policies')", o->policy);
    return 2;
  }
  return -1;
}

static int run_one(run_opts *o);

int cmd_run(int argc, char **argv) {
  run_opts o = {.r = {.backend = "cpu", .batch = 1, .plen = 32, .glen = 32, .reps = 1,
                      .threads = 1, .lookahead = 1},
                .requests = 1, .prompt_seed = 1, .routing = MOE_ROUTING_CONVENTIONAL};
  int rc = run_parse(argc, argv, &o);
  if (rc >= 0) return rc;
  moe_policy_library lib = {0};
  rc = run_check(&o, optind < argc, &lib);
  if (rc < 0) rc = run_one(&o);
  moe_policy_plugin_close(&lib);
  return rc;
}

/* The row printed as markdown, with its notes (pinning, counted calls). */
static void run_print(const res_row *row) {
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
  if (res_row_modeled(row))
    printf("times MODELED by the %s backend on %s (the cost model, deterministic; not measured); "
           "bytes, slots, fetches and misses counted by the engine\n",
           cli_md(res_get(row, "backend")), cli_md(res_get(row, "device")));
  else
    printf("times measured on this machine (wall clock)\n");
  const char *pinned = res_get(row, "pinned");
  if (pinned[0])
    printf("expert weights: %s host memory (pinning took %s s)\n",
           strcmp(pinned, "1") == 0 ? "pinned" : "PAGEABLE (pinning failed: copies serialise with compute)",
           res_get(row, "pin_s"));
  if (res_get(row, "calls_per_step")[0])
    printf("per decode step (median, counted by the trace): %s backend calls, %s host waits "
           "(download, synchronize, event sync)\n",
           res_get(row, "calls_per_step"), res_get(row, "host_syncs_per_step"));
}

/* --out: PREFIX.csv and .json under PREFIX.lock.  0, or 1 after printing why. */
static int run_write(const run_opts *o, const res_table *t, const char *backend, double link) {
  cli_mkdir_parent(o->out);
  const int lock = cli_lock_prefix("run", o->out);
  if (lock < 0) return 1;
  char start[32];
  iso_now(start, sizeof start);
  json_t *meta = row_metadata(row_argv_json(o->n_orig, (char **)o->orig), NULL, backend, link,
                              o->r.hw_name ? o->hw_path : NULL, start);
  moe_error err = {0};
  const int rc = row_write_outputs(o->out, t, meta, &err) != MOE_OK ? cli_fail(&err) : 0;
  json_decref(meta);
  close(lock);
  return rc;
}

/* The part of run after its flags: one row, printed (and written). */
static int run_one(run_opts *o) {
  const moe_policy *pol = o->pol;
  const char *hardware = o->r.hw_name ? o->hw_path : NULL;
  cli_preset p;
  moe_error err = {0};
  moe_model *m = NULL;
  if (cli_preset_load(&p, o->r.preset, &err) != MOE_OK) return cli_fail(&err);
  if (o->have_seed) p.seed = o->seed;
  if (cli_preset_build_for(&p, o->r.backend, &m, &err) != MOE_OK) return cli_fail(&err);
  char device[256], label[200], model_hash[17], inputs[17];
  double link = o->r.link;
  const moe_backend_ops *bops =
      cli_resolve_backend(o->r.backend, (int)o->r.threads, &link, hardware, device, sizeof device);
  if (bops != NULL && (!cli_model_hash(&p, model_hash) ||
                       !cli_inputs_hash(model_hash, NULL, NULL, hardware, o->r.sim_routing, o->plugin,
                                        inputs))) {
    cli_error("run: an input cannot be read to key the row");
    bops = NULL;
  }
  if (bops != NULL && o->link_ratio > 0) {
    char why[700];
    const run_spec ws = {.model = m, .backend = bops->name, .hardware = hardware,
                         .threads = (int)o->r.threads, .batch = (int)o->r.batch,
                         .prompt_len = (int)o->r.plen, .gen_len = (int)o->r.glen, .prompt_seed = 1};
    link = runner_link_for_ratio(&ws, o->link_ratio, NULL, NULL, why, sizeof why);
    if (isnan(link)) {
      cli_error("run: %s", why);
      bops = NULL;
    }
  }
  if (bops == NULL) {
    moe_model_free(m);
    return 1;
  }
  workload wl = {.n_batches = 1, .prompt_len = (int)o->r.plen, .gen_len = (int)o->r.glen,
                 .requests = (int)o->requests, .seed = o->prompt_seed, .batches = {(int)o->r.batch}};
  snprintf(label, sizeof label, "%s%s%s", pol->name, o->cache ? "+" : "", o->cache ? o->cache : "");
  snprintf(wl.name, sizeof wl.name, "p%ld-g%ld", o->r.plen, o->r.glen);
  const row_config rc = {
      .model_name = p.name, .model_seed = p.seed, .model = m, .dtype = p.dtype, .wl = &wl,
      .batch = (int)o->r.batch, .policy = pol,
      .routing = o->have_routing ? o->routing : runner_policy_routing(pol), .backend = bops->name,
      .device = device, .budget = o->r.devmem, .link_gbps = link, .link_ratio = o->link_ratio,
      .threads = (int)o->r.threads, .host_threads = (int)o->r.host_threads,
      .host_gbps = o->r.host_gbps,
      .reps = (int)o->r.reps, .warmup = (int)o->warmup, .trace_path = o->trace_path,
      .lookahead = (int)o->r.lookahead, .policy_label = label, .cache = o->cache,
      .hardware = hardware, .sim_routing = o->r.sim_routing, .routing_log = o->routing_log,
      .inputs = inputs};
  res_table t;
  res_table_init(&t);
  res_row *row = res_table_add(&t);
  run_result kept = {0};
  run_row(&rc, row, NULL, &kept, false);
  run_print(row);
  if (kept.has_counts && kept.counts.graphs > 0)
    printf("graph mode's model on these calls (MOE_CUDA_GRAPHS=1 would capture them so; "
           "engine/src/capture_gate.h's rules, counted by the trace): %.6g graphs per decode step "
           "(median), %.1f calls per graph (mean over the run, prefill included)\n",
           kept.counts.graphs_per_step, kept.counts.ops_per_graph);
  run_result_free(&kept);
  char graphs[600]; /* the cuda backend's graph mode (MOE_CUDA_GRAPHS=1), if it ran */
  if (moe_cuda_graph_summary(graphs, sizeof graphs) > 0)
    printf("cuda graphs: %s (counted by the backend)\n", graphs);
  int rc_exit = strcmp(res_get(row, "status"), "ok") == 0 ? 0 : 1;
  if (o->out && run_write(o, &t, bops->name, link) != 0) rc_exit = 1;
  res_table_free(&t);
  moe_model_free(m);
  return rc_exit;
}
