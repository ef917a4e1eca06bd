/* The moebench command table (commands.h).  Adding a command: its file,
 * its MOEBENCH_COMMAND line in commands.h, one row here. */
#include "commands.h"

#include <string.h>

const moebench_command moebench_commands[] = {
    {"run", cmd_run, "measure one configuration (model preset, policy, workload flags)", run_usage},
    {"sweep", cmd_sweep, "run every configuration of a suite; CSV + JSON results", sweep_usage},
    {"compare", cmd_compare, "compare two result files; exit 1 on a regression", compare_usage},
    {"merge", cmd_merge, "join the result files of a sharded sweep (sweep --shard K/N)", merge_usage},
    {"plan", cmd_plan, "device-memory plan of a model per policy against a hardware profile",
     plan_usage},
    {"timeline", cmd_timeline, "one forward pass of an op trace as an SVG picture", timeline_usage},
    {"calibrate", cmd_calibrate, "measure this machine's cpu backend as a hardware profile",
     calibrate_usage},
    {"replay", cmd_replay, "an op trace replayed on a hardware profile (modeled)", replay_usage},
    {"validate", cmd_validate, "the cost model against measured runs, per policy", validate_usage},
    {"report", cmd_report, "markdown table (and plots) of a result file", report_usage},
    {"generate", cmd_generate, "prefill prompts and greedy-decode (model dir or preset)",
     generate_usage},
    {"eval", cmd_eval, "perplexity and next-token accuracy over a token file", eval_usage},
    {"bench-ops", cmd_bench_ops, "benchmark: gemm path overhead, batch-1 decode bandwidth",
     bench_ops_usage},
    {"bench-policies", cmd_bench_policies, "benchmark: offload policies side by side on one model",
     bench_policies_usage},
    {"regime", cmd_regime, "the regime map: pregated's ratios as copy / compute varies",
     regime_usage},
    {"crossover", cmd_crossover, "where computing experts on the host beats copying them (modeled)",
     crossover_usage},
    {"sensitivity", cmd_sensitivity, "how modeled ratios move with the profile's estimated figures",
     sensitivity_usage},
    {"list", cmd_list, "list backends, models, policies, suites or workloads", list_usage},
};
const size_t moebench_n_commands = sizeof moebench_commands / sizeof moebench_commands[0];

const moebench_command *moebench_command_find(const char *name) {
  for (size_t i = 0; i < moebench_n_commands; i++)
    if (strcmp(moebench_commands[i].name, name) == 0) return &moebench_commands[i];
  return NULL;
}

void moebench_usage(FILE *f) {
  fprintf(f,
          "usage: moebench [--help] [--version] [--verbose] COMMAND [ARGS]\n"
          "\n"
          "Run Mixture-of-Experts models under expert-offload policies and measure them.\n"
          "\n"
          "commands:\n");
  for (size_t i = 0; i < moebench_n_commands; i++)
    fprintf(f, "  %-10s  %s\n", moebench_commands[i].name, moebench_commands[i].summary);
  fprintf(f,
          "\n"
          "Run 'moebench COMMAND --help' (or 'moebench help COMMAND') for a command's options.\n"
          "--verbose (or MOE_VERBOSE=1) adds the source file:line to error messages.\n\n"
          "Exit status, every command: 0 success; 2 bad usage (an unknown command, flag,\n"
          "policy, preset or backend name, a bad flag value, a missing argument); 1 a\n"
          "failure at run time (a file given by path that is missing or bad, a device\n"
          "that is not there, a run that failed, a regression found by compare).\n"
          "compare also uses 2 for bad input files, so that a CI gate can tell a broken\n"
          "comparison from a regression.\n");
}
