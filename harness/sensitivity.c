/* moebench sensitivity: how a modeled table's ratios move with the cost
 * model's two estimated figures, the per-kernel launch overhead and the
 * per-copy transfer latency (a profile's sources say "estimate" for
 * both).  Each combination is a copy of the profile with those two
 * figures changed, written to a temporary directory; the policies run on
 * the sim backend on it.  The launch overhead's share of gpu-only's decode
 * step (the step at that overhead against the step at next to none) says
 * whether the estimate or the datasheet figures dominate. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "flags.h"
#include "moe/cost.h"
#include "runner.h"

#define SENS_MAX 8

typedef struct sens_opts {
  const char *preset, *hw_name;
  char hw_path[1200];
  double launch[SENS_MAX], latency[SENS_MAX];
  int n_launch, n_latency;
  long plen, glen;
} sens_opts;

void sensitivity_usage(FILE *f) {
  fprintf(f,
          "usage: moebench sensitivity [options]\n\n"
          "How the MODELED ratios (pregated / gpu-only, pregated / ondemand) move with the\n"
          "hardware profile's two estimated figures: the per-kernel launch overhead and the\n"
          "per-copy transfer latency. Every figure is MODELED on the sim backend.\n\n"
          "options:\n"
          "  --preset NAME       model preset (default switch-base-8)\n"
          "  --hardware NAME     the profile (default a100-80g-pcie4)\n"
          "  --launch-us LIST    launch overheads to try (default 2,5,10)\n"
          "  --latency-us LIST   transfer latencies to try (default 5,10,20)\n"
          "  --prompt-len N      (default 256)   --gen-len N  (default 64)\n");
}

/* A comma list of up to SENS_MAX positive numbers (microseconds). */
static int sens_list(const char *arg, double *out, int *n) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s", arg);
  *n = 0;
  for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    char *end;
    errno = 0;
    const double v = strtod(t, &end);
    if (*n == SENS_MAX || end == t || *end || errno || !(v > 0 && v <= 1e5)) return -1;
    out[(*n)++] = v;
  }
  return *n > 0 ? 0 : -1;
}

static int sens_take(void *ctx, int c, const char *arg) {
  sens_opts *o = ctx;
  switch (c) {
  case 'p': return flag_text(&o->preset, arg);
  case 'H': return flag_text(&o->hw_name, arg);
  case 'L': return sens_list(arg, o->launch, &o->n_launch);
  case 'T': return sens_list(arg, o->latency, &o->n_latency);
  case 'l': return flag_long(FLAG_PROMPT_LEN, arg, &o->plen) ? 0 : -1;
  case 'g': return flag_long(FLAG_GEN_LEN, arg, &o->glen) ? 0 : -1;
  default: return 2;
  }
}

static int sens_parse(int argc, char **argv, sens_opts *o) {
  static const struct option opts[] = {
      {"preset", required_argument, 0, 'p'},     {"hardware", required_argument, 0, 'H'},
      {"launch-us", required_argument, 0, 'L'},  {"latency-us", required_argument, 0, 'T'},
      {"prompt-len", required_argument, 0, 'l'}, {"gen-len", required_argument, 0, 'g'},
      {"help", no_argument, 0, 'h'},             {0, 0, 0, 0}};
  int rc = flags_getopt("sensitivity", argc, argv, "h", opts, sens_take, o, sensitivity_usage);
  if (rc >= 0) return rc;
  if (optind < argc) {
    cli_error("sensitivity: unexpected argument '%s'", argv[optind]);
    return 2;
  }
  if (cli_check_names("sensitivity", o->preset, "sim") != 0 ||
      cli_check_sim("sensitivity", "sim", o->hw_name, NULL, o->hw_path, sizeof o->hw_path) != 0)
    return 2;
  return -1;
}

/* Decode seconds per token of gpu-only, ondemand and pregated on profile
 * file hw; 0, or 1 after a line. */
static int sens_steps(const sens_opts *o, moe_model *m, const char *hw, double step[3]) {
  const run_spec base = {.model = m, .backend = "sim", .hardware = hw, .threads = 1, .batch = 1,
                         .prompt_len = (int)o->plen, .gen_len = (int)o->glen, .prompt_seed = 1,
                         .requests = 1};
  char why[700];
  if (runner_paper_three_steps(&base, 1, step, why, sizeof why) == MOE_OK) return 0;
  cli_error("sensitivity: %s", why);
  return 1;
}

/* The profile with launch and latency changed, saved as path. */
static int sens_profile(const moe_hw_profile *base, double launch, double latency, const char *path) {
  moe_hw_profile p = *base;
  p.launch_us = launch;
  p.h2d_latency_us = latency;
  p.transfer_latency_us = latency;
  moe_error err = {0};
  return moe_hw_profile_save(&p, path, "moebench sensitivity: a variant of a shipped profile",
                             &err) == MOE_OK ? 0 : cli_fail(&err);
}

/* One line of the table: the shares from gpu-only's step with next to no
 * launch overhead (no_launch) and next to no latency (no_latency). */
static void sens_line(double launch, double latency, const double s[3], double no_launch,
                      double no_latency) {
  printf("| %g | %g | %.3f | %.0f%% | %.2fx | %.0f%% | %.0f%% |\n", launch, latency, s[0] * 1e3,
         100 * s[0] / s[2], s[1] / s[2], 100 * (1 - no_launch / s[0]),
         100 * (1 - no_latency / s[0]));
}

/* gpu-only's decode step on base with launch and latency changed. */
static int sens_gpu_step(const sens_opts *o, moe_model *m, const moe_hw_profile *base,
                         double launch, double latency, const char *path, double *step) {
  double s[3];
  if (sens_profile(base, launch, latency, path) || sens_steps(o, m, path, s)) return 1;
  *step = s[0];
  return 0;
}

static int sens_run(const sens_opts *o, moe_model *m, const char *dir) {
  moe_hw_profile base;
  moe_error err = {0};
  if (moe_hw_profile_load(&base, o->hw_path, &err) != MOE_OK) return cli_fail(&err);
  char path[1300];
  snprintf(path, sizeof path, "%s/variant.json", dir);
  double s[3], no_launch[SENS_MAX], no_latency[SENS_MAX];
  int rc = 0;
  for (int b = 0; b < o->n_latency && rc == 0; b++) /* next to no launch overhead */
    rc = sens_gpu_step(o, m, &base, 1e-3, o->latency[b], path, &no_launch[b]);
  for (int a = 0; a < o->n_launch && rc == 0; a++) /* next to no transfer latency */
    rc = sens_gpu_step(o, m, &base, o->launch[a], 1e-3, path, &no_latency[a]);
  printf("## Sensitivity of the MODELED ratios: %s on %s (sim backend), batch 1, prompt %ld, "
         "generated %ld\n\nThe profile's launch overhead (%g us) and transfer latency (%g us) are "
         "estimates; every figure below is MODELED. 'launch share' and 'latency share': the "
         "share of gpu-only's decode step that launch overheads and transfer latencies take "
         "(against its step with that figure at 0.001 us); the rest is the datasheet rooflines."
         "\n\n| launch us | latency us | gpu-only ms/token | pregated / gpu-only | pregated / "
         "ondemand | launch share | latency share |\n|---|---|---|---|---|---|---|\n",
         o->preset, base.name, o->plen, o->glen, base.launch_us, base.h2d_latency_us);
  for (int a = 0; a < o->n_launch && rc == 0; a++)
    for (int b = 0; b < o->n_latency && rc == 0; b++) {
      rc = sens_profile(&base, o->launch[a], o->latency[b], path) || sens_steps(o, m, path, s);
      if (rc == 0) sens_line(o->launch[a], o->latency[b], s, no_launch[b], no_latency[a]);
    }
  remove(path);
  return rc;
}

int cmd_sensitivity(int argc, char **argv) {
  sens_opts o = {.preset = "switch-base-8", .hw_name = "a100-80g-pcie4", .launch = {2, 5, 10},
                 .n_launch = 3, .latency = {5, 10, 20}, .n_latency = 3, .plen = 256, .glen = 64};
  int rc = sens_parse(argc, argv, &o);
  if (rc >= 0) return rc;
  char dir[1100];
  if (cli_temp_dir("sensitivity", dir, sizeof dir) != 0) return 1;
  moe_model *m = NULL;
  moe_error err = {0};
  rc = cli_preset_model_for(o.preset, "sim", NULL, &m, &err) != MOE_OK ? cli_fail(&err)
                                                                       : sens_run(&o, m, dir);
  moe_model_free(m);
  rmdir(dir);
  return rc;
}
