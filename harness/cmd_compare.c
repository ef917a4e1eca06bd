/* moebench compare BASE NEW and moebench report RESULTS. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "results.h"

/* ------------------------------------------------------------ compare */

typedef struct tolerance {
  double measured;       /* relative, for wall-clock metrics */
  double deterministic;  /* relative, for counted/computed metrics */
  double per_col[128];   /* < 0: use the class default */
} tolerance;

/* SPEC: comma-separated NAME=VALUE, VALUE a fraction or a percentage;
 * NAME a column, "measured" or "deterministic". */
static int parse_tolerance(const char *spec, tolerance *t) {
  char buf[1024];
  snprintf(buf, sizeof buf, "%s", spec);
  for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
    char *eq = strchr(tok, '=');
    if (eq == NULL) return -1;
    *eq = '\0';
    char *v = eq + 1, *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || x < 0) return -1;
    if (*end == '%') x /= 100.0, end++;
    if (*end != '\0') return -1;
    if (strcmp(tok, "measured") == 0) t->measured = x;
    else if (strcmp(tok, "deterministic") == 0) t->deterministic = x;
    else {
      int c = res_col(tok);
      if (c < 0 || res_columns[c].kind == RES_KEY || res_columns[c].kind == RES_TEXT) return -1;
      t->per_col[c] = x;
    }
  }
  return 0;
}

static void compare_usage(FILE *f) {
  fprintf(f,
          "usage: moebench compare BASE.csv NEW.csv [options]\n\n"
          "Matches rows by key (model, workload, policy, routing, backend, budget, batch) and\n"
          "prints every metric that changed.  Exit status: 0 no regression, 1 a metric\n"
          "regressed past its tolerance or a BASE row is missing from NEW, 2 bad input\n"
          "(unreadable file, schema major-version mismatch).  Improvements never fail.\n\n"
          "  --tolerance SPEC      e.g. 'measured=25%%,tokens_per_s=10%%,deterministic=0'\n"
          "                        defaults: deterministic figures exact, measured 25%%\n"
          "  --deterministic-only  compare only counted/computed figures (CI gating)\n"
          "  --allow-missing       rows missing from NEW are reported, not failed\n"
          "  -h, --help            this text\n");
}

int cmd_compare(int argc, char **argv) {
  static const struct option opts[] = {{"tolerance", required_argument, 0, 't'},
                                       {"deterministic-only", no_argument, 0, 'd'},
                                       {"allow-missing", no_argument, 0, 'a'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  tolerance tol = {.measured = 0.25, .deterministic = 0.0};
  for (int i = 0; i < 128; i++) tol.per_col[i] = -1;
  bool det_only = false, allow_missing = false;
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
      case 't':
        if (parse_tolerance(optarg, &tol) != 0) {
          cli_error("compare: bad --tolerance '%s' (NAME=VALUE[%%],... with NAME a metric column, "
                    "measured or deterministic)", optarg);
          return 2;
        }
        break;
      case 'd': det_only = true; break;
      case 'a': allow_missing = true; break;
      case 'h': compare_usage(stdout); return 0;
      default:
        cli_error("compare: unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
        return 2;
    }
  }
  if (argc - optind != 2) {
    cli_error("compare: give BASE and NEW result files");
    return 2;
  }
  res_table base, neu;
  moe_error err = {0};
  if (res_read_csv(argv[optind], &base, &err) != MOE_OK) {
    cli_fail(&err);
    return 2;
  }
  if (res_read_csv(argv[optind + 1], &neu, &err) != MOE_OK) {
    cli_fail(&err);
    res_table_free(&base);
    return 2;
  }
  int regressions = 0, improvements = 0, changed = 0, missing = 0, added = 0;
  printf("| row | metric | base | new | change | verdict |\n|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < base.n; i++) {
    char key[1024];
    res_key(&base.rows[i], key, sizeof key);
    long j = res_find(&neu, &base.rows[i]);
    if (j < 0) {
      printf("| %s | (row) | present | missing | | %s |\n", key, allow_missing ? "missing" : "MISSING");
      missing++;
      continue;
    }
    const res_row *b = &base.rows[i], *n = &neu.rows[j];
    for (size_t k = 0; k < res_ncols; k++) {
      const res_column *col = &res_columns[k];
      if (col->kind == RES_KEY || col->kind == RES_TEXT) continue;
      if (det_only && col->kind == RES_MEASURED) continue;
      const char *bv = b->v[k], *nv = n->v[k];
      if (strcmp(bv, nv) == 0) continue;
      const char *verdict = "changed";
      double change = NAN;
      if (strcmp(col->name, "status") == 0) {
        verdict = strcmp(bv, "ok") == 0 ? "REGRESSION" : strcmp(nv, "ok") == 0 ? "improved" : "changed";
      } else if (bv[0] == '\0' || nv[0] == '\0') {
        verdict = "changed";
      } else {
        double x = atof(bv), y = atof(nv);
        double t = tol.per_col[k] >= 0 ? tol.per_col[k]
                   : col->kind == RES_MEASURED ? tol.measured : tol.deterministic;
        double denom = fmax(fabs(x), col->kind == RES_MEASURED ? 1e-3 : 1e-12);
        change = (y - x) / denom;
        if (col->better == 0) {
          verdict = fabs(change) > t ? "REGRESSION" : "ok";
        } else {
          double worse = col->better > 0 ? -change : change;
          verdict = worse > t ? "REGRESSION" : worse < 0 ? "improved" : "ok";
        }
      }
      if (!strcmp(verdict, "REGRESSION")) regressions++;
      else if (!strcmp(verdict, "improved")) improvements++;
      else changed++;
      if (isnan(change))
        printf("| %s | %s | %s | %s | | %s |\n", key, col->name, bv, nv, verdict);
      else
        printf("| %s | %s | %s | %s | %+.2f%% | %s |\n", key, col->name, bv, nv, 100 * change, verdict);
    }
  }
  for (size_t j = 0; j < neu.n; j++)
    if (res_find(&base, &neu.rows[j]) < 0) {
      char key[1024];
      res_key(&neu.rows[j], key, sizeof key);
      printf("| %s | (row) | missing | present | | new |\n", key);
      added++;
    }
  printf("\n%d regression%s, %d improvement%s, %d other change%s within tolerance; %d row%s missing "
         "from NEW, %d new\n",
         regressions, regressions == 1 ? "" : "s", improvements, improvements == 1 ? "" : "s",
         changed, changed == 1 ? "" : "s", missing, missing == 1 ? "" : "s", added);
  res_table_free(&base);
  res_table_free(&neu);
  return regressions > 0 || (missing > 0 && !allow_missing) ? 1 : 0;
}

/* ------------------------------------------------------------ report */

static double num(const res_row *r, const char *col) {
  const char *v = res_get(r, col);
  return v[0] ? atof(v) : NAN;
}

static bool same_group(const res_row *a, const res_row *b) {
  static const char *g[] = {"model", "workload", "backend", "device_mem_budget_bytes", "batch"};
  for (size_t i = 0; i < sizeof g / sizeof g[0]; i++)
    if (strcmp(res_get(a, g[i]), res_get(b, g[i])) != 0) return false;
  return true;
}

static const res_row *find_policy(const res_table *t, const res_row *like, const char *policy) {
  for (size_t i = 0; i < t->n; i++)
    if (same_group(&t->rows[i], like) && !strcmp(res_get(&t->rows[i], "policy"), policy) &&
        !strcmp(res_get(&t->rows[i], "status"), "ok"))
      return &t->rows[i];
  return NULL;
}

static void fmt(char *b, size_t cap, double x, const char *f) {
  if (isnan(x)) snprintf(b, cap, "-");
  else snprintf(b, cap, f, x);
}

static void plot_group(const res_table *t, size_t first, const char *dir, FILE *md) {
  const res_row *g = &t->rows[first];
  char base[768], dat[900], gp[900];
  snprintf(base, sizeof base, "%s/%s-%s-b%s-%s", dir, res_get(g, "model"), res_get(g, "workload"),
           res_get(g, "batch"), res_get(g, "device_mem_budget_bytes"));
  snprintf(dat, sizeof dat, "%s.dat", base);
  snprintf(gp, sizeof gp, "%s.gp", base);
  FILE *f = fopen(dat, "w");
  if (f == NULL) return;
  for (size_t i = first; i < t->n && same_group(&t->rows[i], g); i++)
    if (!strcmp(res_get(&t->rows[i], "status"), "ok"))
      fprintf(f, "\"%s\" %s %.3f\n", res_get(&t->rows[i], "policy"), res_get(&t->rows[i], "tokens_per_s"),
              num(&t->rows[i], "peak_device_bytes") / 1e6);
  fclose(f);
  f = fopen(gp, "w");
  if (f == NULL) return;
  fprintf(f,
          "set terminal png size 800,480\nset style fill solid 0.6\nset boxwidth 0.6\nset grid y\n"
          "set yrange [0:*]\nset xtics rotate by -20\n"
          "set output '%s-throughput.png'\nset title 'generated tokens/s (measured)'\n"
          "plot '%s' using 0:2:xtic(1) with boxes notitle\n"
          "set output '%s-memory.png'\nset title 'peak device MB (allocator)'\n"
          "plot '%s' using 0:3:xtic(1) with boxes notitle\n",
          base, dat, base, dat);
  fclose(f);
  char cmd[2000];
  snprintf(cmd, sizeof cmd, "gnuplot '%s' 2>/dev/null", gp);
  if (system(cmd) == 0)
    fprintf(md, "\nPlots: `%s-throughput.png`, `%s-memory.png`\n", base, base);
}

int cmd_report(int argc, char **argv) {
  static const struct option opts[] = {{"out", required_argument, 0, 'o'},
                                       {"plots", required_argument, 0, 'P'},
                                       {"paper", no_argument, 0, 'p'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *out = NULL, *plots = NULL;
  bool paper = false;
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
    switch (c) {
      case 'o': out = optarg; break;
      case 'P': plots = optarg; break;
      case 'p': paper = true; break;
      case 'h':
        printf("usage: moebench report RESULTS.csv [options]\n\n"
               "Prints a markdown table per model x workload x batch x budget.\n\n"
               "  -o, --out FILE   write the markdown to FILE (temporary file + rename)\n"
               "  --paper          add pregated's ratios next to the Pre-gated MoE paper's\n"
               "  --plots DIR      PNG plots of throughput and peak memory per policy (needs\n"
               "                   gnuplot; skipped with a note when it is not installed)\n"
               "  -h, --help       this text\n");
        return 0;
      default:
        cli_error("report: unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
        return 2;
    }
  }
  if (argc - optind != 1) {
    cli_error("report: give one results file");
    return 2;
  }
  res_table t;
  moe_error err = {0};
  if (res_read_csv(argv[optind], &t, &err) != MOE_OK) return cli_fail(&err);
  char *tmp = NULL;
  FILE *md = stdout;
  if (out) {
    tmp = malloc(strlen(out) + 5);
    sprintf(tmp, "%s.tmp", out);
    md = fopen(tmp, "w");
    if (md == NULL) {
      cli_error("%s: cannot create", tmp);
      free(tmp);
      res_table_free(&t);
      return 1;
    }
  }
  bool have_gnuplot = plots && system("command -v gnuplot >/dev/null 2>&1") == 0;
  if (plots && !have_gnuplot) fprintf(stderr, "moebench: report: gnuplot is not installed; no plots\n");
  for (size_t i = 0; i < t.n; i++) {
    bool first = true;
    for (size_t k = 0; k < i; k++) first &= !same_group(&t.rows[k], &t.rows[i]);
    if (!first) continue;
    const res_row *g = &t.rows[i];
    double budget = num(g, "device_mem_budget_bytes");
    fprintf(md, "### %s, workload %s, batch %s, %s backend, device budget %s (link %s GB/s)\n\n",
            res_get(g, "model"), res_get(g, "workload"), res_get(g, "batch"), res_get(g, "backend"),
            budget == 0 ? "= capacity" : res_get(g, "device_mem_budget_bytes"), res_get(g, "link_gbps"));
    fprintf(md, "| policy | routing | status | tokens/s | TTFT s | p50 ms/token | p99 ms/token | peak device MB "
                "| expert slots | copied MB | fetches | misses | stall s | pre-gate hit | token match | max logit diff |\n");
    fprintf(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (size_t k = i; k < t.n; k++) {
      const res_row *r = &t.rows[k];
      if (!same_group(r, g)) continue;
      char a[32], b[32], cc[32], d[32], e[32], f2[32], h[32], s2[32];
      fmt(a, sizeof a, num(r, "tokens_per_s"), "%.2f");
      fmt(b, sizeof b, num(r, "ttft_s"), "%.3f");
      fmt(cc, sizeof cc, num(r, "token_latency_p50_s") * 1e3, "%.2f");
      fmt(d, sizeof d, num(r, "token_latency_p99_s") * 1e3, "%.2f");
      fmt(e, sizeof e, num(r, "peak_device_bytes") / 1e6, "%.1f");
      fmt(f2, sizeof f2, num(r, "h2d_bytes") / 1e6, "%.1f");
      fmt(h, sizeof h, num(r, "stall_s"), "%.3f");
      fmt(s2, sizeof s2, num(r, "pregate_hit_rate"), "%.3f");
      fprintf(md, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
              res_get(r, "policy"), res_get(r, "routing"), res_get(r, "status"), a, b, cc, d, e,
              res_get(r, "expert_slots")[0] ? res_get(r, "expert_slots") : "-", f2,
              res_get(r, "expert_fetches")[0] ? res_get(r, "expert_fetches") : "-",
              res_get(r, "expert_misses")[0] ? res_get(r, "expert_misses") : "-", h, s2,
              res_get(r, "token_match_rate")[0] ? res_get(r, "token_match_rate") : "-",
              res_get(r, "max_logit_diff")[0] ? res_get(r, "max_logit_diff") : "-");
    }
    fprintf(md, "\nAll times are wall clock measured on this machine (medians of %s repetitions); "
                "bytes, slots, fetches and misses are counted by the engine.\n",
            res_get(g, "repetitions"));
    if (paper) {
      const res_row *go = find_policy(&t, g, "gpu-only"), *od = find_policy(&t, g, "ondemand"),
                    *pf = find_policy(&t, g, "prefetch-all"), *pg = find_policy(&t, g, "pregated");
      fprintf(md, "\n| comparison | this run (measured) | Pre-gated MoE paper (A100, Switch, batch 1) |\n|---|---|---|\n");
      char x[64];
      if (pg && go) {
        fmt(x, sizeof x, 100 * num(pg, "tokens_per_s") / num(go, "tokens_per_s"), "%.0f%%");
        fprintf(md, "| pregated throughput vs gpu-only | %s | 81%% |\n", x);
        fmt(x, sizeof x, 100 * num(pg, "peak_device_bytes") / num(go, "peak_device_bytes"), "%.0f%%");
        fprintf(md, "| pregated peak device memory vs gpu-only | %s | 23%% |\n", x);
      } else {
        fprintf(md, "| pregated vs gpu-only | gpu-only %s | 81%% throughput, 23%% memory |\n",
                go ? "ok" : "not run or OOM");
      }
      if (pg && od) {
        fmt(x, sizeof x, num(pg, "tokens_per_s") / num(od, "tokens_per_s"), "%.2fx");
        fprintf(md, "| pregated throughput vs ondemand | %s | 1.5x avg, 1.6x max |\n", x);
        fmt(x, sizeof x, 100 * num(pg, "peak_device_bytes") / num(od, "peak_device_bytes") - 100, "%+.1f%%");
        fprintf(md, "| pregated peak memory vs ondemand | %s | +0.2%% |\n", x);
      }
      if (pg && pf) {
        fmt(x, sizeof x, num(pg, "tokens_per_s") / num(pf, "tokens_per_s"), "%.1fx");
        fprintf(md, "| pregated throughput vs prefetch-all | %s | 27x avg, 55x max |\n", x);
      }
      fprintf(md, "\nThe paper's figures are from its A100 (PCIe Gen4) runs of Switch Transformers; "
                  "this machine's figures come from the engine named above. Compare ratios, not "
                  "absolute numbers.\n");
    }
    if (have_gnuplot) plot_group(&t, i, plots, md);
    fprintf(md, "\n");
  }
  int rc = 0;
  if (out) {
    if (fclose(md) != 0 || rename(tmp, out) != 0) {
      cli_error("%s: write failed", out);
      remove(tmp);
      rc = 1;
    }
    free(tmp);
  }
  res_table_free(&t);
  return rc;
}
