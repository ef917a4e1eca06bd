/* moebench: the command-line front of the engine and harness.
 *
 *   moebench run ...             measure one configuration
 *   moebench sweep SUITE ...     every configuration of a suite, CSV + JSON
 *   moebench compare BASE NEW    the CI gate: regressions past tolerance
 *   moebench merge SHARD... -o OUT  join a sharded sweep's files
 *   moebench report RESULTS ...  markdown tables (and plots)
 *   moebench generate ...        run a model: prefill + greedy decode
 *   moebench eval ...            perplexity and accuracy over token windows
 *   moebench bench-ops ...       gemm overhead and decode bandwidth
 *   moebench bench-policies ...  the offload policies side by side
 *   moebench calibrate/replay/validate  the cost model (cmd_model.c)
 *   moebench list WHAT           backends, models, policies, suites, workloads
 *
 * Every subcommand takes --help.  Exit codes: 0 ok, 1 a run failed, 2 bad
 * usage. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "moe/backend.h"
#include "moe/cuda.h"
#include "moe/policy.h"
#include "moe/version.h"
#include "suite.h"

#include <stdlib.h>

#include "commands.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: moebench [--help] [--version] [--verbose] COMMAND [ARGS]\n"
          "\n"
          "Run Mixture-of-Experts models under expert-offload policies and measure them.\n"
          "\n"
          "commands:\n"
          "  run         measure one configuration (model preset, policy, workload flags)\n"
          "  sweep       run every configuration of a suite; CSV + JSON results\n"
          "  compare     compare two result files; exit 1 on a regression\n"
          "  merge       join the result files of a sharded sweep (sweep --shard K/N)\n"
          "  plan        device-memory plan of a model per policy against a hardware profile\n"
          "  timeline    one forward pass of an op trace as an SVG picture\n"
          "  calibrate   measure this machine's cpu backend as a hardware profile\n"
          "  replay      an op trace replayed on a hardware profile (modeled)\n"
          "  validate    the cost model against measured runs, per policy\n"
          "  report      markdown table (and plots) of a result file\n"
          "  generate    prefill prompts and greedy-decode (model dir or preset)\n"
          "  eval        perplexity and next-token accuracy over a token file\n"
          "  bench-ops   benchmark: gemm path overhead, batch-1 decode bandwidth\n"
          "  bench-policies  benchmark: offload policies side by side on one model\n"
          "  list        list backends, models, policies, suites or workloads\n"
          "\n"
          "Run 'moebench COMMAND --help' for a command's options.  --verbose (or\n"
          "MOE_VERBOSE=1) adds the source file:line to error messages.\n\n"
          "Exit status, every command: 0 success; 2 bad usage (an unknown command, flag,\n"
          "policy, preset or backend name, a bad flag value, a missing argument); 1 a\n"
          "failure at run time (a file given by path that is missing or bad, a device\n"
          "that is not there, a run that failed, a regression found by compare).\n"
          "compare also uses 2 for bad input files, so that a CI gate can tell a broken\n"
          "comparison from a regression.\n");
}

/* One line per JSON file of a presets/suites/profiles directory; a file
 * that does not parse is reported and makes the listing fail. */
static int print_model(const char *path, void *ctx) {
  cli_preset p;
  moe_error err = {0};
  if (cli_preset_load(&p, path, &err) != MOE_OK) return *(int *)ctx = cli_fail(&err), 0;
  printf("%-24s %-5s %s\n", p.name, moe_dtype_name(p.dtype), p.description);
  return 0;
}

static int print_suite(const char *path, void *ctx) {
  moe_error err = {0};
  suite *s = calloc(1, sizeof *s);
  if (s && suite_load(s, path, &err) == MOE_OK)
    printf("%-16s %s\n", s->name, s->description);
  else
    *(int *)ctx = cli_fail(&err);
  free(s);
  return 0;
}

static int print_workload(const char *path, void *ctx) {
  workload w;
  moe_error err = {0};
  if (workload_load(&w, path, &err) == MOE_OK)
    printf("%-22s %s\n", w.name, w.description);
  else
    *(int *)ctx = cli_fail(&err);
  return 0;
}

static int list_dir(const char *dir, int (*fn)(const char *, void *)) {
  int rc = 0;
  if (cli_for_each_json(dir, fn, &rc) < 0) {
    cli_error("%s: cannot list", dir);
    return 1;
  }
  return rc;
}

static int cmd_list(int argc, char **argv) {
  const char *what = argc > 1 ? argv[1] : "";
  if (strcmp(what, "--help") == 0 || strcmp(what, "-h") == 0 || argc != 2) {
    fprintf(argc == 2 ? stdout : stderr,
            "usage: moebench list backends|models|policies|suites|workloads|hardware\n\n"
            "  backends  compiled-in backends and whether their device is present\n"
            "  policies  built-in offload policies\n"
            "  models    model presets in the presets directory ($MOE_MODELS_DIR)\n"
            "  suites    benchmark suites ($MOE_SUITES_DIR)\n"
            "  workloads workload profiles ($MOE_PROFILES_DIR)\n"
            "  hardware  hardware profiles ($MOE_HARDWARE_DIR)\n");
    return argc == 2 ? 0 : 2;
  }
  if (strcmp(what, "backends") == 0) {
    for (size_t i = 0; i < moe_backend_count(); i++) {
      const moe_backend_ops *o = moe_backend_at(i);
      printf("%-8s %s\n", o->name, o->summary);
    }
    /* what each backend's probe finds, by table (no backend named here) */
    for (size_t i = 0; i < moe_backend_count(); i++) {
      const moe_backend_ops *o = moe_backend_at(i);
      if (o->probe == NULL) continue;
      char desc[256];
      moe_error err = {0};
      if (o->probe(desc, sizeof desc, &err) == MOE_OK)
        printf("%s device: %s\n", o->name, desc);
      else
        printf("%s device: none (%s)\n", o->name, err.msg);
    }
    printf("auto: %s\n", moe_backend_auto()->name);
    if (!moe_cuda_compiled()) printf("cuda: not compiled in this build (-DMOE_WITH_CUDA=ON)\n");
    return 0;
  }
  if (strcmp(what, "policies") == 0) {
    moe_error err = {0};
    if (moe_policy_registry_check(&err) != MOE_OK) return cli_fail(&err);
    for (size_t i = 0; i < moe_policy_count(); i++)
      printf("%-14s %s\n", moe_policy_at(i)->name, moe_policy_at(i)->summary);
    return 0;
  }
  if (strcmp(what, "models") == 0) return list_dir(cli_models_dir(), print_model);
  if (strcmp(what, "suites") == 0) return list_dir(suite_dir(), print_suite);
  if (strcmp(what, "workloads") == 0) return list_dir(suite_profiles_dir(), print_workload);
  if (strcmp(what, "hardware") == 0) return hw_list();
  cli_error("list: unknown category '%s' (expected backends, models, policies, suites, workloads or hardware)", what);
  return 2;
}

int main(int argc, char **argv) {
  if (argc >= 2 && (strcmp(argv[1], "--verbose") == 0 || strcmp(argv[1], "-v") == 0)) {
    setenv("MOE_VERBOSE", "1", 1); /* errors carry their source file:line */
    argc--, argv++;
    argv[0] = "moebench";
  }
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const char *cmd = argv[1];
  if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
    usage(stdout);
    return 0;
  }
  if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
    printf("moebench %s (cuda backend %s)\n", moe_version(),
           moe_cuda_compiled() ? "compiled" : "not compiled");
    return 0;
  }
  if (strcmp(cmd, "generate") == 0) return cmd_generate(argc - 1, argv + 1);
  if (strcmp(cmd, "bench-ops") == 0) return cmd_bench_ops(argc - 1, argv + 1);
  if (strcmp(cmd, "bench-policies") == 0) return cmd_bench_policies(argc - 1, argv + 1);
  if (strcmp(cmd, "run") == 0) return cmd_run(argc - 1, argv + 1);
  if (strcmp(cmd, "sweep") == 0) return cmd_sweep(argc - 1, argv + 1);
  if (strcmp(cmd, "compare") == 0) return cmd_compare(argc - 1, argv + 1);
  if (strcmp(cmd, "report") == 0) return cmd_report(argc - 1, argv + 1);
  if (strcmp(cmd, "list") == 0) return cmd_list(argc - 1, argv + 1);
  if (strcmp(cmd, "eval") == 0) return cmd_eval(argc - 1, argv + 1);
  if (strcmp(cmd, "merge") == 0) return cmd_merge(argc - 1, argv + 1);
  if (strcmp(cmd, "plan") == 0) return cmd_plan(argc - 1, argv + 1);
  if (strcmp(cmd, "timeline") == 0) return cmd_timeline(argc - 1, argv + 1);
  if (strcmp(cmd, "calibrate") == 0) return cmd_calibrate(argc - 1, argv + 1);
  if (strcmp(cmd, "replay") == 0) return cmd_replay(argc - 1, argv + 1);
  if (strcmp(cmd, "validate") == 0) return cmd_validate(argc - 1, argv + 1);
  cli_error("unknown command '%s' (run 'moebench --help' for the list)", cmd);
  return 2;
}
