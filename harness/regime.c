/* moebench regime: the regime map (docs/PERFORMANCE.md, "The regime map").
 *
 * For each R = one expert's copy time / one MoE block window's compute,
 * gpu-only, ondemand and pregated side by side: measured on the cpu
 * backend (its emulated link capped so a copy takes R windows, the window
 * measured by a gpu-only warm-up) and modeled on the sim backend (the
 * hardware profile's link scaled the same way, its window modeled), each
 * beside the regime model's figure from that side's own gpu-only step
 * (moe/regime.h).  Ratios are of decode time per generated token. */
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
#include "moe/publish.h"
#include "moe/regime.h"
#include "report.h"
#include "runner.h"

#define REGIME_MAX_R 16
/* The band of R the paper's Switch-Large-128 figures allow (derived in
 * docs/PERFORMANCE.md): a free encoder, and the artifact's on-demand one. */
#define REGIME_PAPER_LO 0.72
#define REGIME_PAPER_HI 1.07

typedef struct regime_opts {
  const char *preset, *hw_name, *out, *figure;
  char hw_path[1200];
  double r[REGIME_MAX_R];
  int n_r;
  long reps, plen, glen, threads;
  bool modeled_only;
} regime_opts;

/* One side's figures at one R: decode seconds per token of the three
 * policies (measured medians or modeled) and the model's. */
typedef struct regime_point {
  double r, link;
  double step[3];  /* gpu-only, ondemand, pregated */
  double model[3]; /* the regime model from this side's gpu-only step */
  double host;     /* MODELED side: host-compute's step with half the experts resident and
                      the rest computed on the profile's host (no copies: the same at
                      every R); NAN elsewhere */
} regime_point;

void regime_usage(FILE *f) {
  fprintf(f,
          "usage: moebench regime [options]\n\n"
          "The regime map: pregated against gpu-only and ondemand as R = one expert's\n"
          "copy time / one MoE block window's compute varies. Measured on the cpu\n"
          "backend (the link capped so a copy takes R windows of a gpu-only warm-up)\n"
          "and MODELED on the sim backend (the profile's link scaled the same way),\n"
          "each beside the regime model (docs/PERFORMANCE.md). Ratios of decode time\n"
          "per generated token; the paper's figures allow R in %.2f..%.2f.\n\n"
          "options:\n"
          "  --preset NAME       model preset (default switch-base-8)\n"
          "  --ratios LIST       comma-separated R values (default 0.25,0.5,0.72,1,1.5,2.6,4)\n"
          "  --hardware NAME     the modeled side's profile (default a100-80g-pcie4)\n"
          "  --reps N            measured repetitions, interleaved; medians (default 3)\n"
          "  --prompt-len N      (default 32)   --gen-len N  (default 32)\n"
          "  --threads N         cpu backend threads (default 1)\n"
          "  --modeled-only      skip the measured side\n"
          "  -o PREFIX           write PREFIX.csv\n"
          "  --figure PNG        draw the map with gnuplot\n",
          REGIME_PAPER_LO, REGIME_PAPER_HI);
}

/* --ratios: ascending positive numbers up to FLAG_MAX_LINK_RATIO. */
static int regime_ratios(regime_opts *o, const char *arg) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s", arg);
  o->n_r = 0;
  for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    double v;
    if (o->n_r == REGIME_MAX_R || !flag_double(FLAG_LINK_RATIO, t, &v) ||
        (o->n_r > 0 && v <= o->r[o->n_r - 1]))
      return -1;
    o->r[o->n_r++] = v;
  }
  return o->n_r > 0 ? 0 : -1;
}

static int regime_take(void *ctx, int c, const char *arg) {
  regime_opts *o = ctx;
  switch (c) {
  case 'p': return flag_text(&o->preset, arg);
  case 'R': return regime_ratios(o, arg);
  case 'H': return flag_text(&o->hw_name, arg);
  case 'r': return flag_long(FLAG_REPS, arg, &o->reps) ? 0 : -1;
  case 'l': return flag_long(FLAG_PROMPT_LEN, arg, &o->plen) ? 0 : -1;
  case 'g': return flag_long(FLAG_GEN_LEN, arg, &o->glen) ? 0 : -1;
  case 't': return flag_long(FLAG_THREADS, arg, &o->threads) ? 0 : -1;
  case 'M': o->modeled_only = true; return 0;
  case 'o': return flag_text(&o->out, arg);
  case 'F': return flag_text(&o->figure, arg);
  default: return 2;
  }
}

static int regime_parse(int argc, char **argv, regime_opts *o) {
  static const struct option opts[] = {
      {"preset", required_argument, 0, 'p'},    {"ratios", required_argument, 0, 'R'},
      {"hardware", required_argument, 0, 'H'},  {"reps", required_argument, 0, 'r'},
      {"prompt-len", required_argument, 0, 'l'}, {"gen-len", required_argument, 0, 'g'},
      {"threads", required_argument, 0, 't'},   {"modeled-only", no_argument, 0, 'M'},
      {"figure", required_argument, 0, 'F'},    {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  int rc = flags_getopt("regime", argc, argv, "o:h", opts, regime_take, o, regime_usage);
  if (rc >= 0) return rc;
  if (optind < argc) {
    cli_error("regime: unexpected argument '%s'", argv[optind]);
    return 2;
  }
  if (cli_check_names("regime", o->preset, "cpu") != 0) return 2;
  if (cli_check_sim("regime", "sim", o->hw_name, NULL, o->hw_path, sizeof o->hw_path) != 0) return 2;
  return report_check_figure_out("regime", o->out, o->figure) != 0 ? 2 : -1;
}

/* The regime model's steps from a side's gpu-only step at ratio r. */
static void regime_model(const moe_model *m, regime_point *p) {
  const moe_config *c = moe_model_config(m);
  int n = 0;
  for (int l = moe_config_is_encdec(c) ? c->n_enc_layers : 0; l < c->n_layers; l++) n += c->is_moe[l];
  const double w = n > 0 ? p->step[0] / n : NAN;
  const moe_regime rg = {n, c->top_k, c->n_experts, p->step[0], w, p->r * w};
  p->model[0] = moe_regime_step_s(&rg, MOE_REGIME_GPU_ONLY);
  p->model[1] = moe_regime_step_s(&rg, MOE_REGIME_ONDEMAND);
  p->model[2] = moe_regime_step_s(&rg, MOE_REGIME_PREGATED);
}

/* host-compute's decode seconds per token on the sim in the budget of
 * half the decoder's experts (the engine's plan for them): an
 * encoder-decoder model's encoder and the first half of its decoder's MoE
 * blocks then run on the profile's host; NAN when it cannot run (a
 * profile without a host section). */
static double regime_host_step(const run_spec *base, moe_model *m) {
  const moe_policy *hc = moe_policy_with_role(MOE_POLICY_ROLE_HOST);
  const moe_config *c = moe_model_config(m);
  moe_engine_options eo = {.max_batch = base->batch, .max_seq = base->prompt_len + base->gen_len,
                           .policy = hc};
  size_t cats[MOE_MEM_CATEGORIES], total = 0;
  int dec = 0;
  for (int l = c->n_enc_layers; l < c->n_layers; l++) dec += c->is_moe[l];
  moe_engine_plan_memory(m, NULL, &eo, dec * c->n_experts / 2, cats, &total);
  run_spec sp = *base;
  sp.policy = hc;
  sp.routing = MOE_ROUTING_CONVENTIONAL;
  sp.device_mem = total;
  run_result r;
  runner_run(&sp, &r);
  const double step = r.status == MOE_OK && sp.gen_len > 1 ? r.decode_s / (sp.gen_len - 1) : NAN;
  run_result_free(&r);
  return step;
}

/* One side (backend "cpu" measured, or "sim" modeled) at every R: the
 * window from one gpu-only warm-up, then the three policies interleaved.
 * 0, or 1 after a line saying why. */
static int regime_side(const regime_opts *o, const char *backend, moe_model *m, regime_point *pts) {
  const bool sim = strcmp(backend, "sim") == 0;
  run_spec base = {.model = m, .backend = backend, .hardware = sim ? o->hw_path : NULL,
                   .threads = (int)o->threads, .batch = 1, .prompt_len = (int)o->plen,
                   .gen_len = (int)o->glen, .prompt_seed = 1, .requests = 1};
  char why[700];
  const double link1 = runner_link_for_ratio(&base, 1.0, NULL, NULL, why, sizeof why);
  if (isnan(link1)) {
    cli_error("regime: %s side: %s", backend, why);
    return 1;
  }
  const double host = sim ? regime_host_step(&base, m) : NAN;
  for (int k = 0; k < o->n_r; k++) {
    regime_point *p = &pts[k];
    p->host = host;
    p->r = o->r[k];
    p->link = base.link_gbps = link1 / o->r[k];
    fprintf(stderr, "regime: %s R %g (link %.3f GB/s)\n", backend, p->r, p->link);
    if (runner_paper_three_steps(&base, sim ? 1 : (int)o->reps, p->step, why, sizeof why) != MOE_OK) {
      cli_error("regime: %s side: %s", backend, why);
      return 1;
    }
    regime_model(m, p);
  }
  return 0;
}

/* The A100-style profile's own R: one expert's copy at the profile's
 * pinned rate over the modeled window (the sim's link1 gives a copy of one
 * window: R = link1 / pinned). */
static double regime_profile_r(const regime_opts *o, moe_model *m) {
  moe_hw_profile prof;
  moe_error err = {0};
  if (moe_hw_profile_load(&prof, o->hw_path, &err) != MOE_OK) return NAN;
  run_spec base = {.model = m, .backend = "sim", .hardware = o->hw_path, .batch = 1,
                   .prompt_len = (int)o->plen, .gen_len = (int)o->glen, .prompt_seed = 1,
                   .requests = 1, .threads = 1};
  char why[700];
  return runner_link_for_ratio(&base, 1.0, NULL, NULL, why, sizeof why) / prof.h2d_pinned_gbps;
}

/* The 1-minute load average (NAN where /proc/loadavg is unreadable). */
static double loadavg(void) {
  double v = NAN;
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fscanf(f, "%lf", &v) != 1) v = NAN;
    fclose(f);
  }
  return v;
}

static double ratio(double a, double b) { return a > 0 && b > 0 ? a / b : NAN; }

/* The markdown table of one side. */
static void regime_table(const char *title, const regime_point *pts, int n) {
  if (title[0]) printf("\n%s\n", title);
  printf("\n| R | link GB/s | gpu-only ms/token | ondemand | pregated | pregated / gpu-only "
         "| model | pregated / ondemand | model |\n|---|---|---|---|---|---|---|---|---|\n");
  for (int k = 0; k < n; k++) {
    const regime_point *p = &pts[k];
    printf("| %g | %.3f | %.2f | %.2f | %.2f | %.0f%% | %.0f%% | %.2fx | %.2fx |\n", p->r, p->link,
           p->step[0] * 1e3, p->step[1] * 1e3, p->step[2] * 1e3, 100 * ratio(p->step[0], p->step[2]),
           100 * ratio(p->model[0], p->model[2]), ratio(p->step[1], p->step[2]),
           ratio(p->model[1], p->model[2]));
  }
}

/* PREFIX.csv: one line per side and R. */
static int regime_csv(const char *prefix, const regime_point *meas, const regime_point *mod, int n,
                      double profile_r) {
  char path[1200];
  snprintf(path, sizeof path, "%s.csv", prefix);
  moe_publish pub = {0};
  moe_error err = {0};
  if (moe_publish_open(&pub, path, "the regime map", &err) != MOE_OK) return cli_fail(&err);
  fprintf(pub.f, "side,ratio,link_gbps,gpu_only_s_per_token,ondemand_s_per_token,"
                 "pregated_s_per_token,pregated_vs_gpu_only,model_pregated_vs_gpu_only,"
                 "pregated_vs_ondemand,model_pregated_vs_ondemand,paper_r_lo,paper_r_hi,profile_r,"
                 "host_compute_vs_gpu_only\n");
  for (int s = 0; s < 2; s++) {
    const regime_point *pts = s ? mod : meas;
    for (int k = 0; pts && k < n; k++) {
      const regime_point *p = &pts[k];
      fprintf(pub.f, "%s,%g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%g,%g,%.4g,%.6g\n",
              s ? "modeled" : "measured", p->r, p->link, p->step[0], p->step[1], p->step[2],
              ratio(p->step[0], p->step[2]), ratio(p->model[0], p->model[2]),
              ratio(p->step[1], p->step[2]), ratio(p->model[1], p->model[2]), REGIME_PAPER_LO,
              REGIME_PAPER_HI, profile_r, ratio(p->step[0], p->host));
    }
  }
  return moe_publish_commit(&pub, &err) == MOE_OK ? 0 : cli_fail(&err);
}

/* The figure: pregated / gpu-only and pregated / ondemand against R (log
 * scale), measured points, modeled and model lines, the paper's band and
 * the profile's R.  Script beside the PNG; reads PREFIX.csv. */
static int regime_figure(const char *png, const char *csv, bool measured, double profile_r) {
  char gp[1300];
  snprintf(gp, sizeof gp, "%s.gp", png);
  moe_publish pub = {0};
  FILE *f = report_plot_file(&pub, gp);
  if (f == NULL) return 1;
  fputs("set terminal pngcairo size 1100,480 font ',10'\nset output ", f);
  report_gp_quote(f, png);
  fprintf(f, "\nset datafile separator ','\nset logscale x 2\nset xlabel 'R = expert copy / "
             "MoE block window compute'\nset key top right\nset grid\n"
             "set object 1 rect from %g, graph 0 to %g, graph 1 fillcolor rgb '#dddddd' "
             "fillstyle solid 0.5 noborder behind\n",
          REGIME_PAPER_LO, REGIME_PAPER_HI);
  if (profile_r > 0)
    fprintf(f, "set arrow 1 from %g, graph 0 to %g, graph 1 nohead dashtype 2\n", profile_r, profile_r);
  fputs("set multiplot layout 1,2 title 'Regime map (shaded: the R the paper allows; dashed: "
        "the profile''s R; measured: cpu backend; MODELED: sim)'\n",
        f);
  static const char *const what[2][3] = {{"7", "8", "pregated / gpu-only (decode time)"},
                                         {"9", "10", "pregated / ondemand (decode time)"}};
  for (int k = 0; k < 2; k++) {
    fprintf(f, "set title '%s'\nplot ", what[k][2]);
    if (measured) {
      report_gp_quote(f, csv);
      fprintf(f, " using (strcol(1) eq 'measured' ? $2 : 1/0):%s every ::1 with linespoints pt 7 title "
                 "'measured', ",
              what[k][0]);
    }
    report_gp_quote(f, csv);
    fprintf(f, " using (strcol(1) eq 'modeled' ? $2 : 1/0):%s every ::1 with lines lw 2 title "
               "'MODELED (sim)', ",
            what[k][0]);
    report_gp_quote(f, csv);
    fprintf(f, " using (strcol(1) eq 'modeled' ? $2 : 1/0):%s every ::1 with lines dashtype 3 "
               "title 'regime model'%s",
            what[k][1], k == 0 ? ", " : "\n");
    if (k == 0) { /* the host class: no copies, the same at every R */
      report_gp_quote(f, csv);
      fputs(" using (strcol(1) eq 'modeled' ? $2 : 1/0):14 every ::1 with lines lw 2 dashtype 2 "
            "title 'host-compute / gpu-only (MODELED)'\n",
            f);
    }
  }
  fputs("unset multiplot\n", f);
  if (report_plot_close(&pub) != 0) return 1;
  return report_draw(gp, (const char *const[]){png}, 1);
}

int cmd_regime(int argc, char **argv) {
  regime_opts o = {.preset = "switch-base-8", .hw_name = "a100-80g-pcie4", .reps = 3, .plen = 32,
                   .glen = 32, .threads = 1,
                   .r = {0.25, 0.5, 0.72, 1, 1.5, 2.6, 4}, .n_r = 7};
  int rc = regime_parse(argc, argv, &o);
  if (rc >= 0) return rc;
  rc = 0;
  moe_model *m = NULL, *virt = NULL;
  moe_error err = {0};
  regime_point meas[REGIME_MAX_R], mod[REGIME_MAX_R];
  if ((!o.modeled_only && cli_preset_model_for(o.preset, "cpu", NULL, &m, &err) != MOE_OK) ||
      cli_preset_model_for(o.preset, "sim", NULL, &virt, &err) != MOE_OK)
    rc = cli_fail(&err);
  const double load0 = loadavg();
  if (rc == 0 && (regime_side(&o, "sim", virt, mod) != 0 || (m && regime_side(&o, "cpu", m, meas) != 0)))
    rc = 1;
  const double load1 = loadavg();
  if (rc == 0) {
    const double profile_r = regime_profile_r(&o, virt);
    printf("## Regime map: %s, batch 1, prompt %ld, generated %ld; ratios of decode time per "
           "token\n\nThe paper's figures allow R in %.2f..%.2f; the %s profile's own R is %.2f "
           "(MODELED).\n",
           o.preset, o.plen, o.glen, REGIME_PAPER_LO, REGIME_PAPER_HI, o.hw_name, profile_r);
    if (m) {
      printf("\nMeasured on the cpu backend (medians of %ld interleaved repetitions; the link capped "
             "to give R; load average %.2f before, %.2f after on %ld cores: the copy thread needs a "
             "free core, so a loaded machine reads low):\n",
             o.reps, load0, load1, sysconf(_SC_NPROCESSORS_ONLN));
      regime_table("", meas, o.n_r);
    }
    regime_table("MODELED on the sim backend (the profile's link scaled to give R):", mod, o.n_r);
    printf("\n'model' columns: the regime model (moe/regime.h) from the same side's gpu-only "
           "step.\n");
    if (!isnan(mod[0].host))
      printf("\nhost-compute, MODELED in the budget of half the decoder's experts (the rest, and "
             "an encoder, computed on the %s profile's host): %.0f%% of gpu-only's decode rate at "
             "every R (it copies nothing); pregated falls below it where its share does.\n",
             o.hw_name, 100 * ratio(mod[0].step[0], mod[0].host));
    if (o.out) rc = regime_csv(o.out, m ? meas : NULL, mod, o.n_r, profile_r);
    if (rc == 0 && o.figure) {
      char csv[1200];
      snprintf(csv, sizeof csv, "%s.csv", o.out);
      rc = regime_figure(o.figure, csv, m != NULL, profile_r);
    }
  }
  moe_model_free(m);
  moe_model_free(virt);
  return rc;
}
