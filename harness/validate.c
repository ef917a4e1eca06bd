/* moebench validate: the cost model against measured runs: per policy,
 * measured on the cpu backend (untraced repetitions) and modeled from a
 * traced run replayed on a (calibrated) profile, with the error. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "flags.h"
#include "commands.h"
#include "moe/backend.h"
#include "moe/clock.h"
#include "moe/cost.h"
#include "moe/model.h"
#include "moe/policy.h"
#include "replay.h"
#include "calibration.h"
#include "runner.h"
#include "suite.h"

void validate_usage(FILE *f) {
  fprintf(f,
          "usage: moebench validate (--preset NAME | --model-dir DIR) [--hardware PROFILE] [options]\n\n"
          "The cost model against measured runs.  Per policy: the run measured on the\n"
          "backend (cpu, or cuda on a GPU; untraced, repetitions interleaved, medians),\n"
          "and one traced run\n"
          "of the same inputs replayed on a profile of this machine; prints both with\n"
          "the model's error (modeled / measured - 1).  Without --hardware the profile\n"
          "is calibrated in the same run, once before each repetition's runs and the\n"
          "median taken (as 'moebench calibrate', with the same --link-gbps and\n"
          "--threads, on the model's own weight shapes), so that machine noise hits\n"
          "both sides alike.\n\n"
          "  --hardware NAME      a profile to replay on instead (calibrated earlier)\n"
          "  --preset NAME        model preset (or --model-dir DIR)\n"
          "  --policies LIST      default gpu-only,ondemand,prefetch-all,pregated\n"
          "  --backend NAME       cpu (default) or cuda: the backend measured and calibrated\n"
          "  --link-gbps X        the cpu backend's link cap (default none)\n"
          "  --threads N          math threads (default 1)\n"
          "  --batch B            sequences (default 1)\n"
          "  --prompt-len N       prompt tokens (default 32)\n"
          "  --gen-len N          generated tokens (default 32)\n"
          "  --reps N             measured repetitions per policy (default 3)\n"
          "  -h, --help           this text\n");
}

/* validate's options and what it measured. */
typedef struct val_opts {
  const char *hw, *preset, *plist, *backend;
  long threads, batch, plen, glen, reps;
  double link;
  const moe_policy *pol[8];
  int np;
  double meas_total[8][SUITE_MAX_REPS], meas_step[8][SUITE_MAX_REPS];
} val_opts;

/* One flag into o (flags_getopt). */
static int val_take(void *ctx, int c, const char *arg) {
  val_opts *o = ctx;
  switch (c) {
    case 'H': return flag_text(&o->hw, arg);
    case 'p': return flag_text(&o->preset, arg);
    case 'M': o->preset = cli_model_dir_arg(arg); return arg[0] ? 0 : -1;
    case 'P': return flag_text(&o->plist, arg);
    case 'L': return flag_double(FLAG_LINK_GBPS, arg, &o->link) ? 0 : -1;
    case 't': return flag_long(FLAG_THREADS, arg, &o->threads) ? 0 : -1;
    case 'b': return flag_long(FLAG_BATCH, arg, &o->batch) ? 0 : -1;
    case 'l': return flag_long(FLAG_PROMPT_LEN, arg, &o->plen) ? 0 : -1;
    case 'g': return flag_long(FLAG_GEN_LEN, arg, &o->glen) ? 0 : -1;
    case 'r': return flag_long(FLAG_REPS, arg, &o->reps) ? 0 : -1;
    case 'B': return flag_backend_measured(&o->backend, arg);
    default: return -1;
  }
}

/* The flags; -1 to go on, else the exit code. */
static int val_parse(int argc, char **argv, val_opts *o) {
  static const struct option opts[] = {
      {"hardware", required_argument, 0, 'H'}, {"preset", required_argument, 0, 'p'},
      {"model-dir", required_argument, 0, 'M'}, {"policies", required_argument, 0, 'P'},
      {"link-gbps", required_argument, 0, 'L'}, {"threads", required_argument, 0, 't'},
      {"batch", required_argument, 0, 'b'},    {"prompt-len", required_argument, 0, 'l'},
      {"gen-len", required_argument, 0, 'g'},  {"reps", required_argument, 0, 'r'},
      {"backend", required_argument, 0, 'B'},  {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  const int rc = flags_getopt("validate", argc, argv, "h", opts, val_take, o, validate_usage);
  if (rc >= 0) return rc;
  if (o->preset == NULL || optind < argc) {
    cli_error("validate: give --preset (or --model-dir); see --help");
    return 2;
  }
  if (strchr(o->preset, '/') ? cli_check_model_dir("validate", o->preset) != 0
                             : cli_check_names("validate", o->preset, NULL) != 0)
    return 2;
  if (o->plist == NULL) o->np = (int)moe_policy_paper_baselines(o->pol, 8);
  else if (cli_parse_policies("validate", o->plist, o->pol, NULL, 8, &o->np) != 0) return 2;
  return -1;
}

/* The model's own weight shapes (attention, experts, dense FFN) to
 * calibrate on; the default shapes when it has none. */
static cal_shapes val_shapes(const moe_model *m) {
  const moe_config *mc = moe_model_config(m);
  cal_shapes shapes = {{0}, {0}, 0};
  const size_t H = (size_t)mc->hidden, QD = (size_t)mc->n_heads * (size_t)mc->head_dim;
  const size_t EF = (size_t)mc->expert_ffn, DF = (size_t)mc->dense_ffn;
  const size_t sr[] = {QD, H, EF, H, DF, H}, sc[] = {H, QD, H, EF, H, DF};
  for (int k = 0; k < 6; k++)
    if (sr[k] > 0 && sc[k] > 0) {
      bool dup = false;
      for (int q = 0; q < shapes.n; q++) dup |= shapes.rows[q] == sr[k] && shapes.cols[q] == sc[k];
      if (!dup) shapes.rows[shapes.n] = sr[k], shapes.cols[shapes.n++] = sc[k];
    }
  return shapes.n ? shapes : cal_default_shapes;
}

/* A run of policy i on m (traced to trace_path when not NULL). */
static void val_run(const val_opts *o, moe_model *m, int i, const char *trace_path, run_result *r) {
  run_spec sp = {.model = m, .policy = o->pol[i], .routing = runner_policy_routing(o->pol[i]),
                 .backend = o->backend, .threads = (int)o->threads, .link_gbps = o->link,
                 .batch = (int)o->batch, .prompt_len = (int)o->plen, .gen_len = (int)o->glen,
                 .prompt_seed = 1, .requests = 1, .trace_path = trace_path};
  runner_run(&sp, r);
}

/* The measured side: untraced runs, repetitions interleaved, each
 * repetition after a calibration into cal[r] (when cal).  0, or 1. */
static int val_measure(val_opts *o, moe_model *m, moe_hw_profile *cal) {
  const cal_shapes shapes = val_shapes(m);
  moe_error err = {0};
  int rc = 0;
  for (int r = 0; r < o->reps && rc == 0; r++)
    for (int i = 0; i < o->np && rc == 0; i++) {
      if (i == 0 && cal) {
        if (calibrate_measure(o->backend, (int)o->threads, o->link, &shapes, true, &cal[r], &err) != MOE_OK)
          return cli_fail(&err);
        fprintf(stderr, "validate: rep %d/%ld calibrated\n", r + 1, o->reps);
      }
      run_result res;
      val_run(o, m, i, NULL, &res);
      if (res.status != MOE_OK) {
        cli_error("validate: %s: %s", o->pol[i]->name, res.error);
        rc = 1;
      }
      o->meas_total[i][r] = res.total_s;
      o->meas_step[i][r] = res.decode_s / (double)(o->glen - 1);
      run_result_free(&res);
      fprintf(stderr, "validate: rep %d/%ld %s measured\n", r + 1, o->reps, o->pol[i]->name);
    }
  return rc;
}

/* The modeled side of policy i: a traced run replayed on prof, printed
 * beside the measured medians.  0, or 1. */
static int val_row(val_opts *o, moe_model *m, int i, const char *dir, const moe_hw_profile *prof) {
  char tpath[1200];
  snprintf(tpath, sizeof tpath, "%s/%s.trace.json", dir, o->pol[i]->name);
  run_result res;
  val_run(o, m, i, tpath, &res);
  replay_result rr = {0};
  moe_error err = {0};
  int rc = 0;
  if (res.status != MOE_OK || replay_trace(tpath, prof, &rr, &err) != MOE_OK) {
    if (res.status != MOE_OK) cli_error("validate: %s (traced): %s", o->pol[i]->name, res.error);
    else cli_fail(&err);
    rc = 1;
  } else {
    const double mt = runner_median(o->meas_total[i], (int)o->reps),
                 ms = runner_median(o->meas_step[i], (int)o->reps);
    /* decode: every forward after the prefill's (an encoder-decoder
     * prefill is two: the encoder and the decoder's first step) */
    const int first = moe_config_is_encdec(moe_model_config(m)) ? 2 : 1;
    double dec = 0;
    for (int k = first; k < rr.n_forwards; k++) dec += rr.fwd_modeled[k];
    const int n_dec = rr.n_forwards - first;
    const double mdl_step = n_dec > 0 ? dec / n_dec : NAN;
    printf("| %s | %.4f | %.4f | %+.1f%% | %.3f | %.3f | %+.1f%% | %.4f | %.2f |\n", o->pol[i]->name,
           mt, rr.modeled_s, 100 * (rr.modeled_s / mt - 1), ms * 1e3, mdl_step * 1e3,
           100 * (mdl_step / ms - 1), rr.stall_s, rr.hidden_share);
  }
  replay_result_free(&rr);
  run_result_free(&res);
  remove(tpath);
  return rc;
}

/* The table: its heading, then one traced run per policy in a temporary
 * directory.  0, or 1. */
static int val_table(val_opts *o, moe_model *m, const moe_hw_profile *prof) {
  char dir[1100];
  if (cli_temp_dir("validate", dir, sizeof dir) != 0) return 1;
  printf("## %s on the %s backend: batch %ld, prompt %ld, generated %ld, link %s, %ld thread%s; "
         "profile %s\n\n", o->preset, o->backend, o->batch, o->plen, o->glen,
         o->link > 0 ? "capped" : "uncapped", o->threads, o->threads == 1 ? "" : "s", prof->name);
  if (o->link > 0) printf("link cap %g GB/s\n\n", o->link);
  printf("| policy | total s measured | total s modeled | error | decode ms/token measured | "
         "decode ms/token modeled | error | modeled stall s | modeled hidden share |\n");
  printf("|---|---|---|---|---|---|---|---|---|\n");
  int rc = 0;
  for (int i = 0; i < o->np && rc == 0; i++) rc = val_row(o, m, i, dir, prof);
  rmdir(dir);
  return rc;
}

int cmd_validate(int argc, char **argv) {
  val_opts *o = calloc(1, sizeof *o);
  if (o == NULL) return cli_error("validate: out of host memory"), 1;
  *o = (val_opts){.backend = "cpu", .threads = 1, .batch = 1, .plen = 32, .glen = 32, .reps = 3};
  int rc = val_parse(argc, argv, o);
  moe_hw_profile prof, *cal = NULL;
  moe_model *m = NULL;
  moe_error err = {0};
  char hw_path[1200];
  if (rc >= 0) goto done;
  rc = 1;
  if (o->hw) {
    cli_hw_path(o->hw, hw_path, sizeof hw_path);
    if (moe_hw_profile_load(&prof, hw_path, &err) != MOE_OK) goto failed;
  } else if ((cal = calloc((size_t)o->reps, sizeof *cal)) == NULL) {
    cli_error("validate: out of host memory");
    goto done;
  }
  if (cli_preset_model(o->preset, NULL, &m, &err) != MOE_OK) goto failed;
  rc = val_measure(o, m, cal);
  if (rc == 0 && cal) {
    profile_median(cal, (int)o->reps, &prof);
    snprintf(prof.name, sizeof prof.name, "this machine, calibrated in this run");
  }
  if (rc == 0) rc = val_table(o, m, &prof);
  if (rc == 0 && cal)
    printf("\nprofile (measured, medians of %ld calibrations interleaved with the runs): matmul "
           "%.1f GFLOP/s at 1 row .. %.1f at %g rows; thin-product weight reads %.2f GB/s; other "
           "ops %.2f GFLOP/s, %.2f GB/s; op overhead %.2f us; link %.2f GB/s, latency %.1f us; "
           "compute slowdown under a copy %.2fx\n",
           o->reps, prof.rate_gflops[0], prof.rate_gflops[prof.n_rates - 1],
           prof.rate_m[prof.n_rates - 1], prof.memory_gbps, prof.vector_gflops, prof.vector_gbps,
           prof.launch_us, prof.h2d_pinned_gbps, prof.h2d_latency_us, prof.copy_slowdown);
  if (rc == 0)
    printf("\nmeasured: wall clock of untraced runs on this machine (medians of %ld); modeled: a "
           "traced run of the same inputs replayed on %s (deterministic)\n", o->reps, prof.name);
  goto done;
failed:
  rc = cli_fail(&err);
done:
  moe_model_free(m);
  free(cal);
  free(o);
  return rc;
}
