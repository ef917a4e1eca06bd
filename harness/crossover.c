/* moebench crossover: where computing experts on the host beats copying
 * them (docs/POLICIES.md).
 *
 * MODELED on the sim backend, on one hardware profile with a host section
 * and a device budget the experts do not fit: tokens/s of the copying
 * policies (ondemand, pregated) and of the host-compute class
 * (host-compute, fiddler, pregated-hybrid: the registry's
 * MOE_POLICY_ROLE_HOST), against the host's memory bandwidth (batch 1) and
 * against the batch (the profile's host). */
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
#include "report.h"
#include "runner.h"

#define XO_MAX_POINTS 16
#define XO_MAX_POLICIES 8

typedef struct xo_opts {
  const char *preset, *hw_name, *out, *figure;
  char hw_path[1200];
  double gbps[XO_MAX_POINTS];
  long batches[XO_MAX_POINTS];
  int n_gbps, n_batches;
  long plen, glen;
  size_t devmem;
} xo_opts;

/* One point: tokens/s of every policy (NAN: the run failed). */
typedef struct xo_point {
  double x;
  double tps[XO_MAX_POLICIES];
  unsigned long long host_experts[XO_MAX_POLICIES];
} xo_point;

void crossover_usage(FILE *f) {
  fprintf(f,
          "usage: moebench crossover [options]\n\n"
          "Where computing experts on the host beats copying them: tokens/s of ondemand,\n"
          "pregated and the host-compute class (host-compute, fiddler, pregated-hybrid)\n"
          "against the host's memory bandwidth (batch 1) and against the batch, MODELED\n"
          "on the sim backend under a device budget the experts do not fit.\n\n"
          "options:\n"
          "  --preset NAME       model preset (default mixtral-8x7b)\n"
          "  --hardware NAME     profile with a host section (default h200)\n"
          "  --device-mem SIZE   device budget (default 24GiB)\n"
          "  --host-gbps LIST    host memory bandwidths, GB/s (default 25,50,100,200,400,800)\n"
          "  --batches LIST      batch sizes (default 1,2,4,8,16,32,64)\n"
          "  --prompt-len N      (default 32)   --gen-len N  (default 16)\n"
          "  -o PREFIX           write PREFIX.csv\n"
          "  --figure PNG        draw both panels with gnuplot (needs -o)\n");
}

/* A comma-separated ascending list of positive numbers into v. */
static int xo_list(const char *arg, double *v, int *n, flag_id id) {
  char buf[256];
  if (strlen(arg) >= sizeof buf) return -1; /* never cut: a cut number could still pass */
  snprintf(buf, sizeof buf, "%s", arg);
  *n = 0;
  for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    double d = 0;
    long l = 0;
    bool ok;
    if (id == FLAG_BATCH) {
      ok = flag_long(id, t, &l);
      d = (double)l;
    } else {
      ok = cli_parse_double(t, &d) && d > 0 && d < 1e6;
    }
    if (*n == XO_MAX_POINTS || !ok || (*n > 0 && d <= v[*n - 1])) return -1;
    v[(*n)++] = d;
  }
  return *n > 0 ? 0 : -1;
}

static int xo_take(void *ctx, int c, const char *arg) {
  xo_opts *o = ctx;
  double b[XO_MAX_POINTS];
  switch (c) {
  case 'p': return flag_text(&o->preset, arg);
  case 'H': return flag_text(&o->hw_name, arg);
  case 'm': return flag_size(FLAG_DEVICE_MEM, arg, &o->devmem) ? 0 : -1;
  case 'G': return xo_list(arg, o->gbps, &o->n_gbps, FLAG_LINK_GBPS);
  case 'b':
    if (xo_list(arg, b, &o->n_batches, FLAG_BATCH) != 0) return -1;
    for (int i = 0; i < o->n_batches; i++) o->batches[i] = (long)b[i];
    return 0;
  case 'l': return flag_long(FLAG_PROMPT_LEN, arg, &o->plen) ? 0 : -1;
  case 'g': return flag_long(FLAG_GEN_LEN, arg, &o->glen) ? 0 : -1;
  case 'o': return flag_text(&o->out, arg);
  case 'F': return flag_text(&o->figure, arg);
  default: return 2;
  }
}

static int xo_parse(int argc, char **argv, xo_opts *o) {
  static const struct option opts[] = {
      {"preset", required_argument, 0, 'p'},     {"hardware", required_argument, 0, 'H'},
      {"device-mem", required_argument, 0, 'm'}, {"host-gbps", required_argument, 0, 'G'},
      {"batches", required_argument, 0, 'b'},    {"prompt-len", required_argument, 0, 'l'},
      {"gen-len", required_argument, 0, 'g'},    {"figure", required_argument, 0, 'F'},
      {"help", no_argument, 0, 'h'},             {0, 0, 0, 0}};
  int rc = flags_getopt("crossover", argc, argv, "o:h", opts, xo_take, o, crossover_usage);
  if (rc >= 0) return rc;
  if (optind < argc) {
    cli_error("crossover: unexpected argument '%s'", argv[optind]);
    return 2;
  }
  if (cli_check_names("crossover", o->preset, "sim") != 0) return 2;
  if (cli_check_sim("crossover", "sim", o->hw_name, NULL, o->hw_path, sizeof o->hw_path) != 0) return 2;
  return report_check_figure_out("crossover", o->out, o->figure) != 0 ? 2 : -1;
}

/* The policies compared: ondemand, pregated, then the host class. */
static int xo_policies(const moe_policy **pol) {
  int n = 0;
  pol[n++] = moe_policy_with_role(MOE_POLICY_ROLE_ONDEMAND);
  pol[n++] = moe_policy_with_role(MOE_POLICY_ROLE_PREGATED);
  const size_t host = moe_policy_with_roles(MOE_POLICY_ROLE_HOST, pol + n, XO_MAX_POLICIES - (size_t)n);
  n += host < XO_MAX_POLICIES - (size_t)n ? (int)host : XO_MAX_POLICIES - n;
  return n;
}

/* Every policy at one point: batch b on the profile file hw. */
static void xo_point_run(const xo_opts *o, moe_model *m, const char *hw, int b, const moe_policy **pol,
                         int np, xo_point *pt) {
  for (int i = 0; i < np; i++) {
    const run_spec sp = {.model = m, .policy = pol[i], .routing = runner_policy_routing(pol[i]),
                         .backend = "sim", .hardware = hw, .threads = 1, .device_mem = o->devmem,
                         .batch = b, .prompt_len = (int)o->plen, .gen_len = (int)o->glen,
                         .prompt_seed = 1, .requests = 1};
    run_result r;
    runner_run(&sp, &r);
    pt->tps[i] = r.status == MOE_OK ? r.tokens_per_s : NAN;
    pt->host_experts[i] = r.stats.host_experts;
    if (r.status != MOE_OK)
      fprintf(stderr, "crossover: %s at x=%g: %s\n", pol[i]->name, pt->x, r.error);
    run_result_free(&r);
  }
}

/* The host-bandwidth axis: the profile rewritten (a temporary file) with
 * each host memory bandwidth.  0, or 1 after a line. */
static int xo_host_axis(const xo_opts *o, moe_model *m, const moe_policy **pol, int np, xo_point *pts) {
  moe_hw_profile prof;
  moe_error err = {0};
  if (moe_hw_profile_load(&prof, o->hw_path, &err) != MOE_OK) return cli_fail(&err);
  if (!(prof.host_memory_gbps > 0)) {
    cli_error("crossover: %s has no host section (cores, memory bandwidth, matmul rate)", o->hw_path);
    return 1;
  }
  char dir[1024], path[1200];
  if (cli_temp_dir("crossover", dir, sizeof dir) != 0) return 1;
  snprintf(path, sizeof path, "%s/profile.json", dir);
  int rc = 0;
  for (int k = 0; k < o->n_gbps && rc == 0; k++) {
    prof.host_memory_gbps = o->gbps[k];
    if (moe_hw_profile_save(&prof, path, "crossover: the profile's host bandwidth varied", &err) != MOE_OK) {
      rc = cli_fail(&err);
      break;
    }
    pts[k].x = o->gbps[k];
    fprintf(stderr, "crossover: host %g GB/s\n", o->gbps[k]);
    xo_point_run(o, m, path, 1, pol, np, &pts[k]);
  }
  unlink(path);
  rmdir(dir);
  return rc;
}

static void xo_table(const char *axis, const xo_point *pts, int n, const moe_policy **pol, int np) {
  printf("\n| %s |", axis);
  for (int i = 0; i < np; i++) printf(" %s |", pol[i]->name);
  printf("\n|---|");
  for (int i = 0; i < np; i++) printf("---|");
  printf("\n");
  for (int k = 0; k < n; k++) {
    printf("| %g |", pts[k].x);
    for (int i = 0; i < np; i++) {
      if (isnan(pts[k].tps[i])) printf(" failed |");
      else printf(" %.3g%s |", pts[k].tps[i], pts[k].host_experts[i] ? "" : " (no host)");
    }
    printf("\n");
  }
}

/* PREFIX.csv: axis, x, then tokens/s of each policy. */
static int xo_csv(const char *prefix, const xo_point *host, int nh, const xo_point *batch, int nb,
                  const moe_policy **pol, int np) {
  char path[1200];
  snprintf(path, sizeof path, "%s.csv", prefix);
  moe_publish pub = {0};
  moe_error err = {0};
  if (moe_publish_open(&pub, path, "the crossover table", &err) != MOE_OK) return cli_fail(&err);
  fprintf(pub.f, "axis,x");
  for (int i = 0; i < np; i++) fprintf(pub.f, ",%s", pol[i]->name);
  fprintf(pub.f, "\n");
  for (int a = 0; a < 2; a++) {
    const xo_point *pts = a ? batch : host;
    for (int k = 0; k < (a ? nb : nh); k++) {
      fprintf(pub.f, "%s,%g", a ? "batch" : "host_gbps", pts[k].x);
      for (int i = 0; i < np; i++) fprintf(pub.f, ",%.6g", pts[k].tps[i]);
      fprintf(pub.f, "\n");
    }
  }
  return moe_publish_commit(&pub, &err) == MOE_OK ? 0 : cli_fail(&err);
}

static int xo_figure(const char *png, const char *csv, const moe_policy **pol, int np,
                     const char *title) {
  char gp[1300];
  snprintf(gp, sizeof gp, "%s.gp", png);
  moe_publish pub = {0};
  FILE *f = report_plot_file(&pub, gp);
  if (f == NULL) return 1;
  fputs("set terminal pngcairo size 1100,480 font ',10'\nset output ", f);
  report_gp_quote(f, png);
  fputs("\nset datafile separator ','\nset logscale xy 2\nset ylabel 'tokens/s (MODELED)'\n"
        "set key top left\nset grid\nset multiplot layout 1,2 title ",
        f);
  report_gp_quote(f, title);
  fputs("\n", f);
  static const char *const axes[2][2] = {{"host_gbps", "host memory bandwidth, GB/s (batch 1)"},
                                         {"batch", "batch (the host as profiled)"}};
  for (int a = 0; a < 2; a++) {
    fprintf(f, "set xlabel '%s'\nplot ", axes[a][1]);
    for (int i = 0; i < np; i++) {
      report_gp_quote(f, csv);
      fprintf(f, " using (strcol(1) eq '%s' ? $2 : 1/0):%d every ::1 with linespoints title ", axes[a][0],
              3 + i);
      report_gp_quote(f, pol[i]->name);
      fputs(i + 1 < np ? ", " : "\n", f);
    }
  }
  fputs("unset multiplot\n", f);
  if (report_plot_close(&pub) != 0) return 1;
  return report_draw(gp, (const char *const[]){png}, 1);
}

int cmd_crossover(int argc, char **argv) {
  xo_opts o = {.preset = "mixtral-8x7b", .hw_name = "h200", .plen = 32, .glen = 16,
               .devmem = (size_t)24 << 30, .gbps = {25, 50, 100, 200, 400, 800}, .n_gbps = 6,
               .batches = {1, 2, 4, 8, 16, 32, 64}, .n_batches = 7};
  int rc = xo_parse(argc, argv, &o);
  if (rc >= 0) return rc;
  const moe_policy *pol[XO_MAX_POLICIES];
  const int np = xo_policies(pol);
  moe_model *m = NULL;
  moe_error err = {0};
  if (cli_preset_model_for(o.preset, "sim", NULL, &m, &err) != MOE_OK) return cli_fail(&err);
  xo_point host[XO_MAX_POINTS], batch[XO_MAX_POINTS];
  rc = xo_host_axis(&o, m, pol, np, host);
  for (int k = 0; k < o.n_batches && rc == 0; k++) {
    batch[k].x = (double)o.batches[k];
    fprintf(stderr, "crossover: batch %ld\n", o.batches[k]);
    xo_point_run(&o, m, o.hw_path, (int)o.batches[k], pol, np, &batch[k]);
  }
  if (rc == 0) {
    char title[300];
    snprintf(title, sizeof title, "%s, %s profile, device budget %.0f GiB: tokens/s, MODELED (sim)",
             o.preset, o.hw_name, (double)o.devmem / (1 << 30));
    printf("## Crossover: %s\n\nPrompt %ld, generated %ld tokens. '(no host)': the policy computed "
           "nothing on the host there.\n",
           title, o.plen, o.glen);
    xo_table("host GB/s (batch 1)", host, o.n_gbps, pol, np);
    xo_table("batch", batch, o.n_batches, pol, np);
    if (o.out) rc = xo_csv(o.out, host, o.n_gbps, batch, o.n_batches, pol, np);
    if (rc == 0 && o.figure) {
      char csv[1200];
      snprintf(csv, sizeof csv, "%s.csv", o.out);
      rc = xo_figure(o.figure, csv, pol, np, title);
    }
  }
  moe_model_free(m);
  return rc;
}
