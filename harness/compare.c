/* moebench compare BASE NEW: the CI gate; exit 1 on a regression past tolerance. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "moe/backend.h"
#include <unistd.h>

#include "moe/publish.h"
#include "cli.h"
#include "flags.h"
#include "commands.h"
#include "report.h"
#include "results.h"

/* ------------------------------------------------------------ compare */

typedef struct tolerance {
  double measured;              /* relative, for wall-clock metrics */
  double deterministic;         /* relative, for counted/computed metrics */
  double per_col[RES_MAX_COLS]; /* < 0: use the class default */
} tolerance;

/* A tolerance value: a fraction ("0.1") or a percentage ("10%"); finite and
 * >= 0.  Returns -1 otherwise. */
static double parse_tol_value(const char *v) {
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (errno || end == v || !isfinite(x) || x < 0) return -1;
  if (*end == '%') x /= 100.0, end++;
  return *end == '\0' ? x : -1;
}

/* SPEC: comma-separated NAME=VALUE; NAME a metric column, "measured" or
 * "deterministic". */
static int parse_tolerance(const char *spec, tolerance *t) {
  char buf[1024];
  if (spec[0] == '\0' || strlen(spec) >= sizeof buf) return -1;
  snprintf(buf, sizeof buf, "%s", spec);
  char *save = NULL;
  for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(tok, '=');
    if (eq == NULL) return -1;
    *eq = '\0';
    double x = parse_tol_value(eq + 1);
    if (x < 0) return -1;
    if (strcmp(tok, "measured") == 0) t->measured = x;
    else if (strcmp(tok, "deterministic") == 0) t->deterministic = x;
    else {
      int c = res_col(tok);
      if (c < 0 || res_columns[c].kind == RES_KEY || res_columns[c].kind == RES_TEXT ||
          res_columns[c].better == 0)
        return -1;
      t->per_col[c] = x;
    }
  }
  return 0;
}

/* Computed floating-point figures (sums of products over the model's
 * logits or losses): their last digits depend on the CPU's summation order
 * (which SIMD kernel OpenBLAS or the fused product picks on this
 * processor), so a rerun on another CPU of the same code may move them by
 * a few parts in a million.  Their default tolerance is this floor, not 0;
 * counts and bytes stay exact.  An explicit --tolerance NAME=VALUE
 * replaces the floor; deterministic=VALUE only raises it. */
#define FLOAT_SUM_TOL 1e-4
static bool float_summed(const res_column *col) {
  static const char *const names[] = {"max_logit_diff", "eval_cross_entropy", "eval_perplexity"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcmp(col->name, names[i]) == 0) return true;
  return false;
}

void compare_usage(FILE *f) {
  fprintf(f,
          "usage: moebench compare BASE.csv NEW.csv [options]\n\n"
          "Pairs rows by key (every input that changes a figure: model and its seed, dtype,\n"
          "workload, prompt and generated lengths, requests, prompt seed, policy, routing,\n"
          "backend, threads, link cap, budget, batch, repetitions) and prints every metric\n"
          "that changed.  'change' is always the relative change (NEW - BASE) / |BASE|.\n"
          "Rows measured on different devices are refused unless --allow-device-change\n"
          "(with --deterministic-only they are compared: counts and bytes do not depend on\n"
          "the device model, and the backend is part of the key).\n\n"
          "Verdicts: a deterministic figure (bytes, counts) is a REGRESSION when worse by more\n"
          "than its tolerance (default 0: exact).  A measured figure (wall clock) is a\n"
          "REGRESSION only when worse by more than its tolerance and by more than the noise\n"
          "of the two rows (the sum of their rel_spread columns: (max - min) / median of\n"
          "tokens/s over the repetitions); between the two it is 'noise'.  A row measured\n"
          "on a busy machine (its noisy column is 1: other processes kept more than half a\n"
          "core busy, or more than 5%% of the CPU time was stolen) has unknown times: worse\n"
          "is 'noise', never a regression.  Rows of a\n"
          "modeled backend (sim) have modeled times: deterministic, so compared as\n"
          "deterministic figures (within 1e-5 relative, the printed digits), also under\n"
          "--deterministic-only.  Computed floating-point figures (max_logit_diff,\n"
          "eval_cross_entropy, eval_perplexity) are held within 1e-4 relative: their last\n"
          "digits follow the CPU's summation order (its SIMD kernels), not the code.\n\n"
          "Exit status: 0 no regression; 1 a regression, or a BASE row missing from NEW;\n"
          "2 bad input: an unreadable, truncated or malformed file, a schema major-version\n"
          "mismatch, a duplicate key, a metric column or value BASE has and NEW lacks, a\n"
          "value that is not a finite number >= 0, rows from different devices.\n\n"
          "  --tolerance SPEC      NAME=VALUE,... with NAME a metric column, 'measured' or\n"
          "                        'deterministic'; VALUE a fraction (0.1) or a percentage\n"
          "                        (10%%), finite and >= 0.  Defaults: deterministic=0,\n"
          "                        measured=0.25\n"
          "  --deterministic-only  compare only counted/computed figures (CI gating)\n"
          "  --allow-missing       rows missing from NEW are reported, not failed\n"
          "  --allow-device-change compare rows measured on different devices\n"
          "  -h, --help            this text\n");
}


typedef struct compare_opts {
  tolerance tol;
  bool det_only, allow_missing, allow_device;
} compare_opts;

#define RES_MAX_ROWS_SUMMARY 4096

typedef struct compare_count {
  int regressions, improvements, noise, changed, missing, added;
} compare_count;

/* The key columns rows are paired without: the device (two machines'
 * rows pair, refused later unless allowed), and the inputs hash when
 * either file is from before it (schema < 2.5: its rows carry none, so
 * their inputs cannot be told apart; said once on stderr). */
static const char *pair_skip(const res_table *base, const res_table *neu) {
  const int c = res_col("inputs");
  const bool old = (base->from_file && !base->has[c]) || (neu->from_file && !neu->has[c]);
  static bool said;
  if (old && !said) {
    said = true;
    fprintf(stderr, "moebench: compare: a file has no 'inputs' column (schema < 2.5): rows are "
                    "paired without the contents of their inputs\n");
  }
  return old ? "device,inputs" : "device";
}

/* Checks that NEW has every metric column BASE has, and neither file
 * repeats a key.  Prints the problem and returns 2, else 0. */
static int compare_inputs(const char *bp, const res_table *base, const char *np,
                          const res_table *neu, res_index **bix, res_index **nix) {
  if (base->n == 0) { /* a gate with nothing to compare must not pass */
    cli_error("%s: no result rows: nothing to compare against", bp);
    return 2;
  }
  for (size_t k = 0; k < res_ncols; k++)
    if (res_columns[k].kind != RES_KEY && res_columns[k].kind != RES_TEXT && base->has[k] &&
        !neu->has[k]) {
      cli_error("%s: column '%s' is missing (%s has it)", np, res_columns[k].name, bp);
      return 2;
    }
  long dup = -1;
  *bix = res_index_build(base, pair_skip(base, neu), &dup);
  if (*bix == NULL || dup >= 0) {
    if (dup >= 0) cli_error("%s: row %ld repeats the key of another row", bp, dup + 2);
    return 2;
  }
  *nix = res_index_build(neu, pair_skip(base, neu), &dup);
  if (*nix == NULL || dup >= 0) {
    if (dup >= 0) cli_error("%s: row %ld repeats the key of another row", np, dup + 2);
    return 2;
  }
  return 0;
}

/* Compares one metric of a row pair; prints a line when it changed.
 * Returns 2 for a bad value, else 0. */
static int compare_metric(const compare_opts *o, size_t k, const char *key, const res_row *b,
                          const res_row *n, const char *bp, const char *np, long bi, long ni,
                          compare_count *cnt) {
  const res_column *col = &res_columns[k];
  const char *bv = b->v[k], *nv = n->v[k];
  if (strcmp(bv, nv) == 0) return 0;
  const char *verdict = "changed";
  double change = NAN;
  if (strcmp(col->name, "status") == 0) {
    verdict = strcmp(bv, "ok") == 0 ? "REGRESSION" : strcmp(nv, "ok") == 0 ? "improved" : "changed";
  } else if (strcmp(res_get(b, "status"), "ok") != 0 || strcmp(res_get(n, "status"), "ok") != 0) {
    verdict = "changed"; /* figures of a failed run are not compared */
  } else {
    double x = bv[0] ? res_strict_number(bv) : 0, y = nv[0] ? res_strict_number(nv) : 0;
    if (x < 0) {
      cli_error("%s: row %ld, column '%s': '%s' is not a finite number >= 0", bp, bi + 2, col->name, bv);
      return 2;
    }
    if (y < 0) {
      cli_error("%s: row %ld, column '%s': '%s' is not a finite number >= 0", np, ni + 2, col->name, nv);
      return 2;
    }
    if (bv[0] && !nv[0]) {
      cli_error("%s: row %ld, column '%s': no value, where %s has %s", np, ni + 2, col->name, bp, bv);
      return 2;
    }
    if (!bv[0]) {
      verdict = "new value";
    } else if (col->kind == RES_MEASURED && !res_row_modeled(b) &&
               strcmp(res_get(b, "device"), res_get(n, "device")) != 0) {
      /* another machine's times: compared as ratios (compare_ratios), not here */
      verdict = "other device";
      change = x != 0 ? (y - x) / fabs(x) : NAN;
    } else {
      const bool modeled = res_row_modeled(b);
      double t = o->tol.per_col[k] >= 0 ? o->tol.per_col[k]
                 : col->kind == RES_MEASURED && !modeled ? o->tol.measured
                                                          : o->tol.deterministic;
      if (modeled && col->kind == RES_MEASURED && o->tol.per_col[k] < 0 && t < 1e-5) t = 1e-5;
      if (float_summed(col) && o->tol.per_col[k] < 0 && t < FLOAT_SUM_TOL) t = FLOAT_SUM_TOL;
      change = x != 0 ? (y - x) / fabs(x) : (y > 0 ? INFINITY : 0.0);
      if (col->better == 0) {
        verdict = fabs(change) > t ? "REGRESSION" : "ok";
      } else {
        double worse = col->better > 0 ? -change : change;
        double noise = 0;
        if (col->kind == RES_MEASURED && !modeled) {
          double sb = res_strict_number(res_get(b, "rel_spread")), sn = res_strict_number(res_get(n, "rel_spread"));
          noise = (sb > 0 ? sb : 0) + (sn > 0 ? sn : 0);
        }
        /* a row measured on a busy machine (its 'noisy' column): its times
         * are unknown, never a regression */
        const bool busy = col->kind == RES_MEASURED && !modeled &&
                          (!strcmp(res_get(b, "noisy"), "1") || !strcmp(res_get(n, "noisy"), "1"));
        verdict = worse > t && busy                  ? "noise"
                  : worse > t && worse > noise       ? "REGRESSION"
                  : worse > t                        ? "noise"
                  : worse < 0                        ? "improved"
                                                     : "ok";
      }
    }
  }
  if (!strcmp(verdict, "REGRESSION")) cnt->regressions++;
  else if (!strcmp(verdict, "improved")) cnt->improvements++;
  else if (!strcmp(verdict, "noise")) cnt->noise++;
  else cnt->changed++;
  if (isnan(change))
    printf("| %s | %s | %s | %s | | %s |\n", cli_md(key), col->name, cli_md(bv), cli_md(nv), verdict);
  else if (isinf(change))
    printf("| %s | %s | %s | %s | from 0 | %s |\n", cli_md(key), col->name, cli_md(bv), cli_md(nv), verdict);
  else
    printf("| %s | %s | %s | %s | %+.2f%% | %s |\n", cli_md(key), col->name, cli_md(bv), cli_md(nv),
           100 * change, verdict);
  return 0;
}

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Rows measured on another device: their times say how fast that machine
 * is, so they are summarised (the median speed ratio) and compared as
 * ratios to the reference policy of their group (pregated / gpu-only here
 * vs there), which a faster or slower machine leaves alone.  A ratio worse
 * by more than the measured tolerance and the two rows' spreads is a
 * regression, unless a row is noisy. */
static void compare_ratios(const compare_opts *o, const res_table *base, const res_table *neu,
                           const res_index *nix, compare_count *cnt) {
  double speed[RES_MAX_ROWS_SUMMARY];
  int ns = 0, header = 0;
  char key[RES_KEY_MAX];
  for (size_t i = 0; i < base->n; i++) {
    const res_row *b = &base->rows[i];
    res_key_except(b, pair_skip(base, neu), key, sizeof key);
    const long j = res_index_find(nix, key);
    if (j < 0 || res_row_modeled(b) || strcmp(res_get(b, "status"), "ok") != 0 ||
        strcmp(res_get(&neu->rows[j], "status"), "ok") != 0 ||
        strcmp(res_get(b, "device"), res_get(&neu->rows[j], "device")) == 0)
      continue;
    const res_row *n = &neu->rows[j];
    const double tb = report_num(b, "tokens_per_s"), tn = report_num(n, "tokens_per_s");
    if (ns < RES_MAX_ROWS_SUMMARY && tb > 0 && tn > 0) speed[ns++] = tn / tb;
    const res_row *rb = report_find_role(base, b, MOE_POLICY_ROLE_REFERENCE),
                  *rn = report_find_role(neu, n, MOE_POLICY_ROLE_REFERENCE);
    if (rb == NULL || rn == NULL || rb == b) continue;
    const double qb = tb / report_num(rb, "tokens_per_s"), qn = tn / report_num(rn, "tokens_per_s");
    if (!(qb > 0) || !(qn > 0)) continue;
    const double worse = (qb - qn) / qb;
    const double noise = fmax(0, report_num(b, "rel_spread")) + fmax(0, report_num(n, "rel_spread")) +
                         fmax(0, report_num(rb, "rel_spread")) + fmax(0, report_num(rn, "rel_spread"));
    const bool busy = !strcmp(res_get(b, "noisy"), "1") || !strcmp(res_get(n, "noisy"), "1");
    const char *verdict = worse > o->tol.measured && !busy && worse > noise ? "REGRESSION"
                          : worse > o->tol.measured                        ? "noise"
                          : worse < 0                                      ? "improved"
                                                                           : "ok";
    if (!header++)
      printf("\n| row (another device) | tokens/s / %s's | base | new | change | verdict |\n"
             "|---|---|---|---|---|---|\n", moe_policy_reference()->name);
    printf("| %s | ratio | %.3f | %.3f | %+.2f%% | %s |\n", cli_md(key), qb, qn, -100 * worse, verdict);
    if (!strcmp(verdict, "REGRESSION")) cnt->regressions++;
    else if (!strcmp(verdict, "improved")) cnt->improvements++;
    else if (!strcmp(verdict, "noise")) cnt->noise++;
  }
  if (ns == 0) return;
  qsort(speed, (size_t)ns, sizeof *speed, cmp_double);
  const double med = ns % 2 ? speed[ns / 2] : (speed[ns / 2 - 1] + speed[ns / 2]) / 2;
  printf("\nAnother device: NEW ran %.0f%% %s than BASE (median tokens/s ratio over %d rows); "
         "its times are compared as ratios to %s, not one by one.\n",
         100 * fabs(med - 1), med >= 1 ? "faster" : "slower", ns, moe_policy_reference()->name);
}

/* Distinct values of column c in t, comma-joined (at most 6 listed). */
static void distinct_values(const res_table *t, size_t c, char *out, size_t cap) {
  const char *seen[6];
  int n = 0;
  bool more = false;
  out[0] = '\0';
  for (size_t i = 0; i < t->n; i++) {
    const char *v = t->rows[i].v[c];
    bool dup = false;
    for (int k = 0; k < n && !dup; k++) dup = strcmp(seen[k], v) == 0;
    if (dup) continue;
    if (n == 6) {
      more = true;
      continue;
    }
    seen[n++] = v;
  }
  /* sorted, so two files with the same values print the same */
  for (int a = 1; a < n; a++)
    for (int b = a; b > 0 && strcmp(seen[b - 1], seen[b]) > 0; b--) {
      const char *x = seen[b];
      seen[b] = seen[b - 1];
      seen[b - 1] = x;
    }
  size_t len = 0;
  for (int k = 0; k < n; k++) {
    int w = snprintf(out + len, len < cap ? cap - len : 0, "%s'%s'", k ? ", " : "", seen[k]);
    if (w > 0) len += (size_t)w;
  }
  if (more && len < cap) snprintf(out + len, cap - len, ", ...");
}

/* The inputs (key columns) whose values differ between the files: rows
 * with other inputs never pair, so say which inputs those are. */
static void print_input_differences(const res_table *base, const res_table *neu) {
  bool any = false;
  for (size_t c = 0; c < res_ncols; c++) {
    if (res_columns[c].kind != RES_KEY) continue;
    char a[512], b[512];
    distinct_values(base, c, a, sizeof a);
    distinct_values(neu, c, b, sizeof b);
    if (strcmp(a, b) == 0) continue;
    if (!any) printf("inputs that differ between the files (rows with other inputs do not pair):\n");
    any = true;
    printf("  %s: base %s; new %s\n", res_columns[c].name, a, b);
  }
  if (any) printf("\n");
}

static int compare_tables(const compare_opts *o, const char *bp, const res_table *base,
                          const char *np, const res_table *neu) {
  res_index *bix = NULL, *nix = NULL;
  int rc = compare_inputs(bp, base, np, neu, &bix, &nix);
  compare_count cnt = {0};
  char key[RES_KEY_MAX];
  /* different devices make every measured figure mean something else;
   * counted figures (--deterministic-only) do not depend on the device
   * model, only on the backend, which is part of the key */
  for (size_t i = 0; i < base->n && rc == 0 && !o->allow_device && !o->det_only; i++) {
    res_key_except(&base->rows[i], pair_skip(base, neu), key, sizeof key);
    long j = res_index_find(nix, key);
    if (j >= 0 && strcmp(res_get(&base->rows[i], "device"), res_get(&neu->rows[j], "device")) != 0) {
      cli_error("%s and %s were measured on different devices ('%s' and '%s'); "
                "use --allow-device-change to compare them anyway",
                bp, np, res_get(&base->rows[i], "device"), res_get(&neu->rows[j], "device"));
      rc = 2;
    }
  }
  if (rc == 0) print_input_differences(base, neu);
  if (rc == 0) printf("| row | metric | base | new | change | verdict |\n|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < base->n && rc == 0; i++) {
    res_key_except(&base->rows[i], pair_skip(base, neu), key, sizeof key);
    long j = res_index_find(nix, key);
    if (j < 0) {
      printf("| %s | (row) | present | missing | | %s |\n", cli_md(key), o->allow_missing ? "missing" : "MISSING");
      cnt.missing++;
      continue;
    }
    for (size_t k = 0; k < res_ncols && rc == 0; k++) {
      const res_column *col = &res_columns[k];
      if (col->kind == RES_KEY || col->kind == RES_TEXT) continue;
      if (o->det_only && col->kind == RES_MEASURED && !res_row_modeled(&base->rows[i])) continue;
      rc = compare_metric(o, k, key, &base->rows[i], &neu->rows[j], bp, np, (long)i, j, &cnt);
    }
  }
  for (size_t j = 0; j < neu->n && rc == 0; j++) {
    res_key_except(&neu->rows[j], pair_skip(base, neu), key, sizeof key);
    if (res_index_find(bix, key) < 0) {
      printf("| %s | (row) | missing | present | | new |\n", cli_md(key));
      cnt.added++;
    }
  }
  if (rc == 0 && !o->det_only) compare_ratios(o, base, neu, nix, &cnt);
  res_index_free(bix);
  res_index_free(nix);
  if (rc != 0) return rc;
  printf("\n%d regression%s, %d improvement%s, %d within noise, %d other change%s within tolerance; "
         "%d row%s missing from NEW, %d new\n",
         cnt.regressions, cnt.regressions == 1 ? "" : "s", cnt.improvements,
         cnt.improvements == 1 ? "" : "s", cnt.noise, cnt.changed, cnt.changed == 1 ? "" : "s",
         cnt.missing, cnt.missing == 1 ? "" : "s", cnt.added);
  return cnt.regressions > 0 || (cnt.missing > 0 && !o->allow_missing) ? 1 : 0;
}

/* One flag into a compare_opts (flags_getopt). */
static int compare_take(void *ctx, int c, const char *arg) {
  compare_opts *o = ctx;
  switch (c) {
    case 't':
      if (parse_tolerance(arg, &o->tol) == 0) return 0;
      cli_error("compare: bad --tolerance '%s' (NAME=VALUE[%%],... with NAME a metric column, "
                "measured or deterministic, VALUE finite and >= 0)", arg);
      return 2;
    case 'd': o->det_only = true; return 0;
    case 'a': o->allow_missing = true; return 0;
    case 'D': o->allow_device = true; return 0;
    default: return -1;
  }
}

int cmd_compare(int argc, char **argv) {
  static const struct option opts[] = {{"tolerance", required_argument, 0, 't'},
                                       {"deterministic-only", no_argument, 0, 'd'},
                                       {"allow-missing", no_argument, 0, 'a'},
                                       {"allow-device-change", no_argument, 0, 'D'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  compare_opts o = {.tol = {.measured = 0.25, .deterministic = 0.0}};
  for (int i = 0; i < RES_MAX_COLS; i++) o.tol.per_col[i] = -1;
  const int rc0 = flags_getopt("compare", argc, argv, "h", opts, compare_take, &o, compare_usage);
  if (rc0 >= 0) return rc0;
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
  int rc = compare_tables(&o, argv[optind], &base, argv[optind + 1], &neu);
  res_table_free(&base);
  res_table_free(&neu);
  return rc;
}
