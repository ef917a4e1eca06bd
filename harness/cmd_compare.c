/* moebench compare BASE NEW and moebench report RESULTS. */
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
#include "commands.h"
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

/* Whether a row's times are modeled (a modeled backend: sim) rather than
 * measured. */
static bool row_modeled(const res_row *r) {
  const moe_backend_ops *o = moe_backend_find(res_get(r, "backend"));
  return o && (o->caps & MOE_BACKEND_CAP_MODELED);
}

static void compare_usage(FILE *f) {
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
    } else {
      const bool modeled = row_modeled(b);
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
      if (o->det_only && col->kind == RES_MEASURED && !row_modeled(&base->rows[i])) continue;
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

int cmd_compare(int argc, char **argv) {
  static const struct option opts[] = {{"tolerance", required_argument, 0, 't'},
                                       {"deterministic-only", no_argument, 0, 'd'},
                                       {"allow-missing", no_argument, 0, 'a'},
                                       {"allow-device-change", no_argument, 0, 'D'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  compare_opts o = {.tol = {.measured = 0.25, .deterministic = 0.0}};
  for (int i = 0; i < RES_MAX_COLS; i++) o.tol.per_col[i] = -1;
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
      case 't':
        if (parse_tolerance(optarg, &o.tol) != 0) {
          cli_error("compare: bad --tolerance '%s' (NAME=VALUE[%%],... with NAME a metric column, "
                    "measured or deterministic, VALUE finite and >= 0)", optarg);
          return 2;
        }
        break;
      case 'd': o.det_only = true; break;
      case 'a': o.allow_missing = true; break;
      case 'D': o.allow_device = true; break;
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
  int rc = compare_tables(&o, argv[optind], &base, argv[optind + 1], &neu);
  res_table_free(&base);
  res_table_free(&neu);
  return rc;
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

/* Reports run per group (model, workload, backend, budget, batch): the
 * rows of a group are put next to each other, groups in the order of their
 * first row, rows in file order within a group (a stable sort by group,
 * n log n), so each group is a window of the table and no pass looks at
 * more than its own rows (it was quadratic: 32,000 rows took a minute). */
typedef struct group_sort_item {
  char *key;
  size_t index, group;
} group_sort_item;

static int by_key_then_index(const void *a, const void *b) {
  const group_sort_item *x = a, *y = b;
  const int c = strcmp(x->key, y->key);
  return c ? c : (x->index > y->index) - (x->index < y->index);
}

static int by_group_then_index(const void *a, const void *b) {
  const group_sort_item *x = a, *y = b;
  if (x->group != y->group) return (x->group > y->group) - (x->group < y->group);
  return (x->index > y->index) - (x->index < y->index);
}

static char *group_key(const res_row *r) {
  static const char *g[] = {"model", "workload", "backend", "device_mem_budget_bytes", "batch"};
  size_t n = 1;
  for (size_t i = 0; i < 5; i++) n += strlen(res_get(r, g[i])) + 1;
  char *k = malloc(n);
  if (k == NULL) return NULL;
  k[0] = '\0';
  for (size_t i = 0; i < 5; i++) strcat(strcat(k, res_get(r, g[i])), "\x1f");
  return k;
}

/* 0, or 1 when out of memory (the table is then unchanged). */
static int group_rows(res_table *t) {
  group_sort_item *it = calloc(t->n ? t->n : 1, sizeof *it);
  res_row *rows = malloc((t->n ? t->n : 1) * sizeof *rows);
  int rc = it && rows ? 0 : 1;
  for (size_t i = 0; i < t->n && rc == 0; i++) {
    it[i] = (group_sort_item){group_key(&t->rows[i]), i, 0};
    rc = it[i].key ? 0 : 1;
  }
  if (rc == 0) {
    qsort(it, t->n, sizeof *it, by_key_then_index);
    for (size_t i = 0; i < t->n; i++) /* a group's id: the index of its first row */
      it[i].group = i > 0 && !strcmp(it[i].key, it[i - 1].key) ? it[i - 1].group : it[i].index;
    qsort(it, t->n, sizeof *it, by_group_then_index);
    for (size_t i = 0; i < t->n; i++) rows[i] = t->rows[it[i].index];
    memcpy(t->rows, rows, t->n * sizeof *rows);
  }
  for (size_t i = 0; it && i < t->n; i++) free(it[i].key);
  free(it);
  free(rows);
  return rc;
}

/* The group starting at row i of a grouped table, as a table of its own
 * (a window: the rows are t's). */
static res_table group_window(const res_table *t, size_t i) {
  size_t j = i + 1;
  while (j < t->n && same_group(&t->rows[j], &t->rows[i])) j++;
  res_table w = *t;
  w.rows = t->rows + i;
  w.n = j - i;
  return w;
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


/* One line per model x workload x batch x budget: the four built-in
 * policies' throughput, peak memory and pregated's ratios, then the
 * paper's (report --summary). */
static void summary_table(const res_table *all, FILE *md) {
  bool any_modeled = false, any_measured = false;
  fprintf(md, "| model | workload | batch | device | budget | gpu-only tok/s | ondemand tok/s | "
              "prefetch-all tok/s | pregated tok/s | gpu-only peak GB | pregated peak GB | pregated "
              "/ gpu-only throughput | pregated / gpu-only memory | pregated / ondemand | pregated "
              "/ prefetch-all |\n");
  fprintf(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (size_t start = 0; start < all->n;) {
    const res_table win = group_window(all, start), *t = &win;
    start += win.n;
    const res_row *g = &t->rows[0];
    const res_row *go = find_policy(t, g, "gpu-only"), *od = find_policy(t, g, "ondemand"),
                  *pf = find_policy(t, g, "prefetch-all"), *pg = find_policy(t, g, "pregated");
    if (row_modeled(g)) any_modeled = true;
    else any_measured = true;
    char a[32], b[32], c[32], d[32], e[32], f[32], r1[32], r2[32], r3[32], r4[32];
    const double tgo = go ? num(go, "tokens_per_s") : NAN, tod = od ? num(od, "tokens_per_s") : NAN,
                 tpf = pf ? num(pf, "tokens_per_s") : NAN, tpg = pg ? num(pg, "tokens_per_s") : NAN;
    const double mgo = go ? num(go, "peak_device_bytes") : NAN, mpg = pg ? num(pg, "peak_device_bytes") : NAN;
    fmt(a, sizeof a, tgo, "%.2f");
    fmt(b, sizeof b, tod, "%.2f");
    fmt(c, sizeof c, tpf, "%.3g");
    fmt(d, sizeof d, tpg, "%.2f");
    fmt(e, sizeof e, mgo / 1e9, "%.2f");
    fmt(f, sizeof f, mpg / 1e9, "%.2f");
    fmt(r1, sizeof r1, 100 * tpg / tgo, "%.0f%%");
    fmt(r2, sizeof r2, 100 * mpg / mgo, "%.0f%%");
    fmt(r3, sizeof r3, tpg / tod, "%.2fx");
    fmt(r4, sizeof r4, tpg / tpf, "%.1fx");
    /* a policy that ran out of memory says so */
    if (!go && find_policy(t, g, "gpu-only") == NULL) {
      for (size_t k = 0; k < t->n; k++)
        if (same_group(&t->rows[k], g) && !strcmp(res_get(&t->rows[k], "policy"), "gpu-only"))
          snprintf(a, sizeof a, "%s", res_get(&t->rows[k], "status"));
    }
    char budget[32] = "capacity";
    const double bb = num(g, "device_mem_budget_bytes");
    if (bb > 0) snprintf(budget, sizeof budget, "%.1f GiB", bb / 1073741824.0);
    fprintf(md, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
            res_get(g, "model"), res_get(g, "workload"), res_get(g, "batch"), res_get(g, "device"),
            budget, a, b, c, d, e, f, r1, r2, r3, r4);
  }
  fprintf(md, "| *Pre-gated MoE paper (A100 PCIe4, Switch, batch 1)* | | | | | | | | | | | 81%% | "
              "23%% | 1.5x avg, 1.6x max | 27x avg, 55x max |\n\n");
  fprintf(md, "%s%s%s\n",
          any_modeled ? "Rows on the sim backend are MODELED (the cost model on the row's hardware "
                        "profile, deterministic), not measured. " : "",
          any_measured ? "Rows on other backends are measured wall clock. " : "",
          "The paper reports for Switch-Large-128: pregated about 42 tokens/s, ondemand 26, "
          "prefetch 0.8 (gpu-only OOM).");
}

static bool ascii_alnum(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* A file-name part from a CSV field: [A-Za-z0-9._-] kept, anything else
 * '_', never empty, never starting with '.', at most 48 characters. */
static void safe_name(char *out, size_t cap, const char *v) {
  size_t n = 0;
  for (const char *c = v; *c && n + 1 < cap && n < 48; c++) {
    const bool keep = ascii_alnum((unsigned char)*c) || *c == '-' || *c == '_' || (*c == '.' && n > 0);
    out[n++] = keep ? *c : '_';
  }
  if (n == 0) out[n++] = '_';
  out[n] = '\0';
}

/* ------------------------------------------------ what reaches gnuplot
 *
 * gnuplot evaluates parts of its script text: a backquoted command inside a
 * double-quoted string runs in a shell, '@' expands a macro, an output or
 * data file name starting with '|' or '<' is a pipe to a shell.  So no byte
 * of a results file reaches a script as it came: every field a plot shows
 * goes through gp_clean (a whitelist); every string in a script is written
 * by gp_quote, single-quoted (gnuplot substitutes nothing in those); labels
 * in data files by gp_datum (the data reader substitutes nothing); figures
 * are printed from doubles; and plot paths are refused unless made of
 * plot_path_char (check_plot_path). */

/* The bytes a field from a results file keeps in a plot. */
#define GP_SAFE_CHARS "ASCII letters, digits, space and - _ . , : + / ( ) %"
static bool gp_safe_char(int c) {
  return ascii_alnum(c) || (c != '\0' && strchr(" -_.,:+/()%", c) != NULL);
}

/* A field from a results file made a plot label: each byte outside
 * gp_safe_char becomes '?'; at most cap - 1 bytes. */
static void gp_clean(char *out, size_t cap, const char *v) {
  size_t n = 0;
  for (const char *c = v; *c && n + 1 < cap; c++) out[n++] = gp_safe_char((unsigned char)*c) ? *c : '?';
  out[n] = '\0';
}

/* Script and data-file text: cleaned labels joined by this file's own
 * words, which may also use ; ' @.  Any other byte is written as '?'. */
static bool gp_text_char(int c) { return gp_safe_char(c) || (c != '\0' && strchr(";'@", c) != NULL); }

/* A single-quoted gnuplot string (a ' in it doubled): the only way text
 * enters a script. */
static void gp_quote(FILE *f, const char *v) {
  fputc('\'', f);
  for (const char *c = v; *c; c++) {
    if (*c == '\'') fputs("''", f);
    else fputc(gp_text_char((unsigned char)*c) ? *c : '?', f);
  }
  fputc('\'', f);
}

/* A label in a data file, double-quoted (gp_text_char has no '"', no '\'
 * and no newline, which would end it or the line). */
static void gp_datum(FILE *f, const char *v) {
  fputc('"', f);
  for (const char *c = v; *c; c++) fputc(gp_text_char((unsigned char)*c) ? *c : '?', f);
  fputc('"', f);
}

/* "set WHAT 'TEXT'" */
static void gp_set(FILE *f, const char *what, const char *text) {
  fprintf(f, "set %s ", what);
  gp_quote(f, text);
  fputc('\n', f);
}

/* A table's inputs, cleaned for plot titles. */
typedef struct gp_names {
  char model[96], workload[96], batch[32], budget[40], backend[48];
} gp_names;

static void gp_names_of(const res_row *g, gp_names *n) {
  const char *bu = res_get(g, "device_mem_budget_bytes");
  gp_clean(n->model, sizeof n->model, res_get(g, "model"));
  gp_clean(n->workload, sizeof n->workload, res_get(g, "workload"));
  gp_clean(n->batch, sizeof n->batch, res_get(g, "batch"));
  gp_clean(n->budget, sizeof n->budget, strcmp(bu, "0") ? bu : "capacity");
  gp_clean(n->backend, sizeof n->backend, res_get(g, "backend"));
}

/* Plot paths (--plots DIR, --figure PNG) are written into the scripts
 * (set output, plot 'FILE'): only these characters, so none is a quote, a
 * pipe ('|', '<'), a backquote, '$', '@', '~' or a control character.
 * Each is also a gp_text_char: gp_quote writes a plot path unchanged. */
#define PLOT_PATH_CHARS "ASCII letters, digits, space and / . _ - + , :"
#define PLOT_PATH_MAX 512 /* the plots' file names are built in 1 KiB buffers */
#define PLOT_PATH_MAX_S "512"
static bool plot_path_char(int c) {
  return ascii_alnum(c) || (c != '\0' && strchr(" /._-+,:", c) != NULL);
}

/* 0 when path may be a plot path; else 2 after a line naming the option
 * and the first character refused. */
static int check_plot_path(const char *opt, const char *path) {
  if (path[0] == '\0' || strlen(path) > PLOT_PATH_MAX) {
    cli_error("report: %s: %s", opt, path[0] ? "the path is longer than " PLOT_PATH_MAX_S " bytes" : "an empty path");
    return 2;
  }
  for (const char *c = path; *c; c++) {
    const unsigned char u = (unsigned char)*c;
    if (plot_path_char(u)) continue;
    char shown[256], what[16];
    size_t n = 0;
    for (const char *s = path; *s && n + 1 < sizeof shown; s++)
      shown[n++] = *s > 0x20 && *s < 0x7f ? *s : '?'; /* the message stays one line */
    shown[n] = '\0';
    if (u > 0x20 && u < 0x7f) snprintf(what, sizeof what, "'%c'", u);
    else snprintf(what, sizeof what, "byte 0x%02x", u);
    cli_error("report: %s '%s': %s is not allowed in a plot path (allowed: %s)", opt, shown, what,
              PLOT_PATH_CHARS);
    return 2;
  }
  return 0;
}

/* Runs gnuplot on script without a shell (fork + execvp, argument vector;
 * a relative script as ./SCRIPT, never read as an option); returns its exit
 * status, or -1. */
static int run_gnuplot(const char *script) {
  char arg[1300];
  snprintf(arg, sizeof arg, "%s%s", script[0] == '/' ? "" : "./", script);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) dup2(devnull, 2), dup2(devnull, 1);
    char *const argv[] = {(char *)"gnuplot", arg, NULL};
    execvp("gnuplot", argv);
    _exit(127);
  }
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Whether path holds a whole PNG: its signature first, its IEND chunk last
 * (a full disk leaves the file empty or cut short). */
static bool png_complete(const char *path) {
  static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  static const unsigned char iend[12] = {0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82};
  FILE *f = fopen(path, "rb");
  if (f == NULL) return false;
  unsigned char a[8], b[12];
  const bool ok = fread(a, 1, 8, f) == 8 && memcmp(a, sig, 8) == 0 && fseek(f, -12, SEEK_END) == 0 &&
                  fread(b, 1, 12, f) == 12 && memcmp(b, iend, 12) == 0;
  fclose(f);
  return ok;
}

/* Draws script gp, whose outputs are png[0..n-1]: each is removed first (a
 * stale file is no drawing), and must be a whole PNG after gnuplot exits 0.
 * Returns 0, or 1 after a line naming the file. */
static int draw(const char *gp, const char *const *png, int n) {
  for (int k = 0; k < n; k++) remove(png[k]);
  const int st = run_gnuplot(gp);
  if (st != 0) {
    cli_error("report: %s: not drawn: gnuplot %s on %s", png[0],
              st == 127 ? "could not be run" : "failed", gp);
    return 1;
  }
  for (int k = 0; k < n; k++)
    if (!png_complete(png[k])) {
      cli_error("report: %s: not drawn: gnuplot left no whole PNG (missing, empty or cut short: "
                "a full disk?)", png[k]);
      return 1;
    }
  return 0;
}

/* Opens path for writing, never through a link planted at it (O_NOFOLLOW);
 * NULL after a line naming it. */
static FILE *plot_file(const char *path) {
  const int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0666);
  FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
  if (f == NULL) {
    cli_error("report: %s: cannot create: %s", path, strerror(errno));
    if (fd >= 0) close(fd);
  }
  return f;
}

/* Closes a script or data file: 0, or 1 after a line naming it (a full
 * disk shows here first). */
static int plot_close(FILE *f, const char *path) {
  const bool bad = ferror(f) != 0;
  if (fclose(f) != 0 || bad) {
    cli_error("report: %s: write failed: %s", path, errno ? strerror(errno) : "I/O error");
    return 1;
  }
  return 0;
}

/* DIR/MODEL-WORKLOAD-bBATCH-BUDGET: a table's plot files, less suffix. */
static void group_base(char *out, size_t cap, const res_row *g, const char *dir) {
  char m[64], w[64], b[64], bu[64];
  safe_name(m, sizeof m, res_get(g, "model"));
  safe_name(w, sizeof w, res_get(g, "workload"));
  safe_name(b, sizeof b, res_get(g, "batch"));
  safe_name(bu, sizeof bu, res_get(g, "device_mem_budget_bytes"));
  snprintf(out, cap, "%s/%s-%s-b%s-%s", dir, m, w, b, bu);
}

/* A table's bars, a line per policy: label, tokens/s median, min, max,
 * peak MB; a row that did not run (OOM, error) stays in the plot at 0,
 * labelled with its status. */
static int write_group_data(const res_table *t, size_t first, const char *dat) {
  const res_row *g = &t->rows[first];
  FILE *f = plot_file(dat);
  if (f == NULL) return 1;
  for (size_t i = first; i < t->n; i++) {
    const res_row *r = &t->rows[i];
    if (!same_group(r, g)) continue;
    const bool ok = !strcmp(res_get(r, "status"), "ok");
    char pol[96], st[48], label[160];
    gp_clean(pol, sizeof pol, res_get(r, "policy"));
    gp_clean(st, sizeof st, res_get(r, "status"));
    if (ok) snprintf(label, sizeof label, "%s", pol);
    else snprintf(label, sizeof label, "%s (%s)", pol, st);
    gp_datum(f, label);
    if (ok) {
      const double med = num(r, "tokens_per_s"), lo = num(r, "tokens_per_s_min"),
                   hi = num(r, "tokens_per_s_max");
      fprintf(f, " %.6g %.6g %.6g %.3f\n", med, isnan(lo) ? med : lo, isnan(hi) ? med : hi,
              num(r, "peak_device_bytes") / 1e6);
    } else {
      fprintf(f, " 0 0 0 0\n");
    }
  }
  return plot_close(f, dat);
}

/* Per table: tokens/s (bars min..max) and peak device memory per policy. */
static int plot_group(const res_table *t, size_t first, const char *dir, FILE *md) {
  const res_row *g = &t->rows[first];
  char base[1024], dat[1100], gp[1100], tput[1100], mem[1100], what[400], title[600];
  group_base(base, sizeof base, g, dir);
  snprintf(dat, sizeof dat, "%s.dat", base);
  snprintf(gp, sizeof gp, "%s.gp", base);
  snprintf(tput, sizeof tput, "%s-throughput.png", base);
  snprintf(mem, sizeof mem, "%s-memory.png", base);
  if (write_group_data(t, first, dat) != 0) return 1;
  FILE *f = plot_file(gp);
  if (f == NULL) return 1;
  gp_names n;
  gp_names_of(g, &n);
  snprintf(what, sizeof what, "%s, %s, batch %s, budget %s", n.model, n.workload, n.batch, n.budget);
  fputs("set terminal png size 900,520 noenhanced\nset style fill solid 0.6\nset boxwidth 0.6\n"
        "set grid y\nset yrange [0:*]\nset xtics rotate by -20\n", f);
  gp_set(f, "output", tput);
  snprintf(title, sizeof title, "%s: generated tokens/s (measured; median, bars min..max)", what);
  gp_set(f, "title", title);
  fputs("plot ", f), gp_quote(f, dat), fputs(" using 0:2:xtic(1) with boxes notitle, ", f);
  gp_quote(f, dat), fputs(" using 0:2:3:4 with yerrorbars notitle\n", f);
  gp_set(f, "output", mem);
  snprintf(title, sizeof title, "%s: peak device MB (allocator)", what);
  gp_set(f, "title", title);
  fputs("plot ", f), gp_quote(f, dat), fputs(" using 0:5:xtic(1) with boxes notitle\n", f);
  if (plot_close(f, gp) != 0 || draw(gp, (const char *const[]){tput, mem}, 2) != 0) return 1;
  fprintf(md, "\nPlots: `%s-throughput.png`, `%s-memory.png`\n", base, base);
  return 0;
}

/* The headline figure's data: a line per policy of the table (label,
 * tokens/s median, min, max, peak MB; 0 for a row that did not run).
 * Returns the number of lines, or -1 after a message. */
static int write_headline_data(const res_table *t, size_t first, const char *dat) {
  const res_row *g = &t->rows[first];
  FILE *f = plot_file(dat);
  if (f == NULL) return -1;
  int n = 0;
  for (size_t i = first; i < t->n; i++) {
    const res_row *r = &t->rows[i];
    if (!same_group(r, g)) continue;
    const bool ok = !strcmp(res_get(r, "status"), "ok");
    char pol[96];
    gp_clean(pol, sizeof pol, res_get(r, "policy"));
    gp_datum(f, pol);
    const double med = ok ? num(r, "tokens_per_s") : 0, lo = num(r, "tokens_per_s_min"),
                 hi = num(r, "tokens_per_s_max");
    fprintf(f, " %.6g %.6g %.6g %.3f\n", med, ok && !isnan(lo) ? lo : med, ok && !isnan(hi) ? hi : med,
            ok ? num(r, "peak_device_bytes") / 1e6 : 0.0);
    n++;
  }
  return plot_close(f, dat) == 0 ? n : -1;
}

/* The headline figure's script: two panels, with pregated's ratios to
 * gpu-only next to the paper's. */
static void write_headline_script(FILE *f, const res_table *t, size_t first, const char *png,
                                  const char *dat, int n) {
  const res_row *g = &t->rows[first];
  const res_row *go = find_policy(t, g, "gpu-only"), *pg = find_policy(t, g, "pregated");
  char tput[160] = "", mem[160] = "", title[600];
  if (go && pg) {
    snprintf(tput, sizeof tput, "pregated: %.0f%% of gpu-only's tokens/s (paper: 81%%)",
             100 * num(pg, "tokens_per_s") / num(go, "tokens_per_s"));
    snprintf(mem, sizeof mem, "pregated: %.0f%% of gpu-only's peak memory (paper: 23%%)",
             100 * num(pg, "peak_device_bytes") / num(go, "peak_device_bytes"));
  }
  gp_names nm;
  gp_names_of(g, &nm);
  fprintf(f, "set terminal pngcairo size 1200,520 noenhanced font ',11'\n");
  gp_set(f, "output", png);
  snprintf(title, sizeof title, "%s, workload %s, batch %s, %s backend (measured)", nm.model, nm.workload,
           nm.batch, nm.backend);
  gp_set(f, "multiplot layout 1,2 title", title);
  fprintf(f, "set style fill solid 0.6\nset boxwidth 0.6\nset grid y\nset yrange [0:*]\n"
             "set offsets 0, 0, graph 0.18, 0\nset rmargin 6\n" /* room for the ratio, and the last label */
             "set xrange [-0.6:%d.6]\nset xtics rotate by -20\n", n - 1);
  gp_set(f, "title", "generated tokens/s (median; bars: min..max)");
  if (tput[0]) fputs("set label 1 ", f), gp_quote(f, tput), fputs(" at graph 0.02, graph 0.95 front\n", f);
  fputs("plot ", f), gp_quote(f, dat);
  fputs(" using 0:2:xtic(1) with boxes lc rgb '#4477aa' notitle, ", f), gp_quote(f, dat);
  fputs(" using 0:2:3:4 with yerrorbars lc rgb 'black' pt 0 notitle\nunset label 1\n", f);
  gp_set(f, "title", "peak device memory, MB (allocator)");
  if (mem[0]) fputs("set label 2 ", f), gp_quote(f, mem), fputs(" at graph 0.02, graph 0.95 front\n", f);
  fputs("plot ", f), gp_quote(f, dat);
  fputs(" using 0:5:xtic(1) with boxes lc rgb '#cc6677' notitle\nunset multiplot\n", f);
}

/* The headline figure of group `first` (report --figure PNG): generated
 * tokens/s and peak device memory per policy, side by side.  0, or 1
 * after a line naming the file. */
static int headline_figure(const res_table *t, size_t first, const char *png) {
  char dat[1200], gp[1200];
  snprintf(dat, sizeof dat, "%s.dat", png);
  snprintf(gp, sizeof gp, "%s.gp", png);
  const int n = write_headline_data(t, first, dat);
  FILE *f = n < 0 ? NULL : plot_file(gp);
  int rc = 1;
  if (f != NULL) {
    write_headline_script(f, t, first, png, dat, n);
    rc = plot_close(f, gp) == 0 && draw(gp, &png, 1) == 0 ? 0 : 1;
  }
  remove(dat); /* intermediate files: the figure is the output */
  remove(gp);
  return rc;
}

/* One gnuplot inline data series ('-'): the points sorted by x, then "e". */
static void inline_series(FILE *f, double *xs, double *ys, int n) {
  for (int a = 1; a < n; a++)
    for (int c = a; c > 0 && xs[c] < xs[c - 1]; c--) {
      double tx = xs[c], ty = ys[c];
      xs[c] = xs[c - 1], ys[c] = ys[c - 1];
      xs[c - 1] = tx, ys[c - 1] = ty;
    }
  for (int a = 0; a < n; a++) fprintf(f, "%g %.6g\n", xs[a], ys[a]);
  fputs("e\n", f);
}

/* The scatter's points: peak MB, tokens/s, label (policy @budget). */
static int write_scatter_data(const res_table *t, const res_row *g, const char *dat, int *n) {
  FILE *f = plot_file(dat);
  if (f == NULL) return 1;
  *n = 0;
  for (size_t i = 0; i < t->n; i++) {
    const res_row *r = &t->rows[i];
    if (strcmp(res_get(r, "model"), res_get(g, "model")) || strcmp(res_get(r, "workload"), res_get(g, "workload")) ||
        strcmp(res_get(r, "batch"), res_get(g, "batch")) || strcmp(res_get(r, "status"), "ok"))
      continue;
    char pol[96], bu[40], label[160];
    gp_clean(pol, sizeof pol, res_get(r, "policy"));
    gp_clean(bu, sizeof bu, res_get(r, "device_mem_budget_bytes"));
    if (strcmp(bu, "0")) snprintf(label, sizeof label, "%s @%s", pol, bu);
    else snprintf(label, sizeof label, "%s", pol);
    fprintf(f, "%.3f %.6g ", num(r, "peak_device_bytes") / 1e6, num(r, "tokens_per_s"));
    gp_datum(f, label);
    fputc('\n', f);
    (*n)++;
  }
  return plot_close(f, dat);
}

/* Per model: tokens/s against peak device memory, one point per policy
 * and budget (every workload and batch of the model in one picture, one
 * point style per workload and batch would crowd it: the first group's
 * workload and batch are used). */
static int plot_scatter(const res_table *t, size_t first, const char *dir, FILE *md) {
  const res_row *g = &t->rows[first];
  char m[64], base[1024], dat[1100], gp[1100], png[1100], title[600];
  safe_name(m, sizeof m, res_get(g, "model"));
  snprintf(base, sizeof base, "%s/%s-scatter", dir, m);
  snprintf(dat, sizeof dat, "%s.dat", base);
  snprintf(gp, sizeof gp, "%s.gp", base);
  snprintf(png, sizeof png, "%s.png", base);
  int n = 0;
  if (write_scatter_data(t, g, dat, &n) != 0) return 1;
  if (n == 0) return 0;
  FILE *f = plot_file(gp);
  if (f == NULL) return 1;
  fprintf(f, "set terminal pngcairo size 900,560 noenhanced\nset grid\n"
             "set xlabel 'peak device memory, MB (allocator)'\nset ylabel 'generated tokens/s (measured)'\n"
             "set yrange [0:*]\nset xrange [0:*]\n");
  gp_set(f, "output", png);
  gp_names nm;
  gp_names_of(g, &nm);
  snprintf(title, sizeof title, "%s, workload %s, batch %s: throughput against memory, per policy and budget",
           nm.model, nm.workload, nm.batch);
  gp_set(f, "title", title);
  fputs("plot ", f), gp_quote(f, dat);
  fputs(" using 1:2 with points pt 7 ps 1.5 notitle, ", f), gp_quote(f, dat);
  fputs(" using 1:2:3 with labels offset 1,1 left notitle\n", f);
  if (plot_close(f, gp) != 0 || draw(gp, (const char *const[]){png}, 1) != 0) return 1;
  fprintf(md, "\nScatter: `%s`\n", png);
  return 0;
}

/* The points of a line plot: at most 32 lines of 64 points. */
typedef struct gp_lines {
  char title[32][96]; /* cleaned */
  double xs[32][64], ys[32][64];
  int n[32], lines;
} gp_lines;

/* Adds a point (finite only: gnuplot refuses a series of none). */
static void gp_point(gp_lines *l, int k, double x, double y) {
  if (isfinite(x) && isfinite(y) && l->n[k] < 64) l->xs[k][l->n[k]] = x, l->ys[k][l->n[k]++] = y;
}

/* The plot command and inline data of the lines that have points;
 * nothing when none has. */
static void gp_write_lines(FILE *f, gp_lines *l) {
  bool any = false;
  for (int k = 0; k < l->lines; k++) {
    if (l->n[k] == 0) continue;
    fputs(any ? ", '-' using 1:2 with linespoints title " : "plot '-' using 1:2 with linespoints title ", f);
    gp_quote(f, l->title[k]);
    any = true;
  }
  fputc('\n', f);
  for (int k = 0; k < l->lines; k++)
    if (l->n[k] > 0) inline_series(f, l->xs[k], l->ys[k], l->n[k]);
}

static int gp_points(const gp_lines *l) {
  int n = 0;
  for (int k = 0; k < l->lines; k++) n += l->n[k];
  return n;
}

/* Writes the script gp (set commands, title, lines) and draws png. */
static int plot_lines(const char *gp, const char *png, const char *sets, const char *title, gp_lines *l) {
  FILE *f = plot_file(gp);
  if (f == NULL) return 1;
  fputs(sets, f);
  gp_set(f, "output", png);
  gp_set(f, "title", title);
  gp_write_lines(f, l);
  return plot_close(f, gp) != 0 || draw(gp, (const char *const[]){png}, 1) != 0 ? 1 : 0;
}

static bool same_model_workload(const res_row *a, const res_row *b) {
  return !strcmp(res_get(a, "model"), res_get(b, "model")) && !strcmp(res_get(a, "workload"), res_get(b, "workload"));
}

/* The batch plot's lines: a line per policy (first-seen order), a point
 * per batch (budget = capacity rows that ran).  Returns the number of
 * distinct batches. */
static int batch_lines(const res_table *t, const res_row *g, gp_lines *l) {
  const char *pols[32];
  char seen[64][16];
  int batches = 0;
  l->lines = 0;
  for (size_t i = 0; i < t->n; i++) {
    const res_row *r = &t->rows[i];
    if (!same_model_workload(r, g)) continue;
    int k = 0;
    while (k < l->lines && strcmp(pols[k], res_get(r, "policy"))) k++;
    if (k == l->lines && k < 32) {
      pols[k] = res_get(r, "policy");
      gp_clean(l->title[k], sizeof l->title[k], pols[k]);
      l->n[l->lines++] = 0;
    }
    bool have = false;
    for (int b = 0; b < batches; b++) have |= !strcmp(seen[b], res_get(r, "batch"));
    if (!have && batches < 64) snprintf(seen[batches++], 16, "%s", res_get(r, "batch"));
    if (k < l->lines && !strcmp(res_get(r, "status"), "ok") && !strcmp(res_get(r, "device_mem_budget_bytes"), "0"))
      gp_point(l, k, num(r, "batch"), num(r, "tokens_per_s"));
  }
  return batches;
}

/* Per model and workload with several batch sizes: tokens/s against the
 * batch, one line per policy (budget = capacity rows). */
static int plot_batches(const res_table *t, size_t first, const char *dir, FILE *md) {
  const res_row *g = &t->rows[first];
  char m[64], w[64], base[1024], gp[1100], png[1100], title[600];
  safe_name(m, sizeof m, res_get(g, "model"));
  safe_name(w, sizeof w, res_get(g, "workload"));
  snprintf(base, sizeof base, "%s/%s-%s-batch", dir, m, w);
  snprintf(gp, sizeof gp, "%s.gp", base);
  snprintf(png, sizeof png, "%s.png", base);
  gp_lines *l = calloc(1, sizeof *l);
  if (l == NULL) return 1;
  int rc = 0;
  if (batch_lines(t, g, l) >= 2 && gp_points(l) > 0) {
    gp_names nm;
    gp_names_of(g, &nm);
    snprintf(title, sizeof title, "%s, workload %s: throughput against batch", nm.model, nm.workload);
    rc = plot_lines(gp, png,
                    "set terminal pngcairo size 900,560 noenhanced\nset grid\nset logscale x 2\n"
                    "set xlabel 'batch (sequences)'\nset ylabel 'generated tokens/s (measured)'\n"
                    "set yrange [0:*]\nset key left top\n",
                    title, l);
    if (rc == 0) fprintf(md, "\nBatch plot: `%s`\n", png);
  }
  free(l);
  return rc;
}

/* The cache plot's lines, a line per NAME+KIND of the table's policies
 * NAME+KIND:SIZE (at most 16); a point per size, and NAME without a cache
 * at 0 slots. */
static void cache_lines(const res_table *t, size_t first, gp_lines *l) {
  const res_row *g = &t->rows[first];
  char names[16][96];
  l->lines = 0;
  for (size_t i = first; i < t->n; i++) {
    const res_row *r = &t->rows[i];
    const char *pol = res_get(r, "policy"), *colon = strrchr(pol, ':'), *plus = strrchr(pol, '+');
    if (!same_group(r, g) || !plus || !colon || colon < plus) continue;
    char line[96];
    snprintf(line, sizeof line, "%.*s", (int)(colon - pol), pol);
    bool have = false;
    for (int k = 0; k < l->lines; k++) have |= !strcmp(names[k], line);
    if (have || l->lines == 16) continue;
    snprintf(names[l->lines], sizeof names[0], "%s", line);
    gp_clean(l->title[l->lines], sizeof l->title[0], line);
    l->n[l->lines++] = 0;
  }
  for (int k = 0; k < l->lines; k++) {
    const char *plus = strrchr(names[k], '+');
    const size_t blen = plus ? (size_t)(plus - names[k]) : strlen(names[k]), len = strlen(names[k]);
    for (size_t i = first; i < t->n; i++) {
      const res_row *r = &t->rows[i];
      const char *pol = res_get(r, "policy");
      if (!same_group(r, g) || strcmp(res_get(r, "status"), "ok")) continue;
      const bool bare = strlen(pol) == blen && !strncmp(pol, names[k], blen);
      const bool mine = !strncmp(pol, names[k], len) && pol[len] == ':';
      if (!bare && !mine) continue;
      const double tokens = num(r, "batch") * num(r, "gen_len") * num(r, "requests");
      gp_point(l, k, bare ? 0 : num(r, "cache_slots"), num(r, "h2d_bytes") / 1e6 / (tokens > 0 ? tokens : 1));
    }
  }
}

/* Per table (model, workload, batch, budget) with expert caches
 * (policies NAME+KIND:SIZE): bytes copied per generated token against the
 * cache's slots, a line per NAME+KIND, starting from NAME without a cache
 * at 0. */
static int plot_cache(const res_table *t, size_t first, const char *dir, FILE *md) {
  const res_row *g = &t->rows[first];
  char base[1024], gp[1100], png[1100], title[600];
  gp_lines *l = calloc(1, sizeof *l);
  if (l == NULL) return 1;
  cache_lines(t, first, l);
  int rc = 0;
  if (gp_points(l) > 0) {
    char m[64], w[64], b[64], bu[64];
    safe_name(m, sizeof m, res_get(g, "model"));
    safe_name(w, sizeof w, res_get(g, "workload"));
    safe_name(b, sizeof b, res_get(g, "batch"));
    safe_name(bu, sizeof bu, res_get(g, "device_mem_budget_bytes"));
    snprintf(base, sizeof base, "%s/%s-%s-b%s-%s-cache", dir, m, w, b, bu);
    snprintf(gp, sizeof gp, "%s.gp", base);
    snprintf(png, sizeof png, "%s.png", base);
    gp_names nm;
    gp_names_of(g, &nm);
    snprintf(title, sizeof title, "%s, workload %s, batch %s: bytes moved against cache size (counted)",
             nm.model, nm.workload, nm.batch);
    rc = plot_lines(gp, png,
                    "set terminal pngcairo size 900,560 noenhanced\nset grid\n"
                    "set xlabel 'expert cache slots'\nset ylabel 'MB copied host-to-device per generated token'\n"
                    "set yrange [0:*]\nset key right top\n",
                    title, l);
    if (rc == 0) fprintf(md, "\nCache plot: `%s`\n", png);
  }
  free(l);
  return rc;
}

/* The plots of table `first` (report --plots): its bars and cache plot,
 * and where its model (model and workload) shows up first, the model's
 * scatter (the workload's batch plot).  0, or 1 after a line naming the
 * file not drawn. */
static int group_plots(const res_table *t, size_t first, const char *dir, FILE *md) {
  const res_row *g = &t->rows[first];
  bool first_model = true, first_workload = true;
  for (size_t k = 0; k < first; k++) {
    first_model &= strcmp(res_get(&t->rows[k], "model"), res_get(g, "model")) != 0;
    first_workload &= !same_model_workload(&t->rows[k], g);
  }
  if (plot_group(t, first, dir, md) != 0 || plot_cache(t, first, dir, md) != 0) return 1;
  if (first_model && plot_scatter(t, first, dir, md) != 0) return 1;
  if (first_workload && plot_batches(t, first, dir, md) != 0) return 1;
  return 0;
}

/* gnuplot on PATH, found without a shell. */
static bool have_gnuplot(void) {
  const char *path = getenv("PATH");
  if (path == NULL) return false;
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", path);
  char *save = NULL;
  for (char *d = strtok_r(buf, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
    char p[4200];
    snprintf(p, sizeof p, "%s/gnuplot", d[0] ? d : ".");
    if (access(p, X_OK) == 0) return true;
  }
  return false;
}

/* A table's heading and its line per policy. */
static void group_table(const res_table *t, size_t i, FILE *md) {
  const res_row *g = &t->rows[i];
  double budget = num(g, "device_mem_budget_bytes");
  char link[160];
  if (res_get(g, "link_ratio")[0])
    snprintf(link, sizeof link, "link ratio %s: one expert's copy = %s x a decoder MoE block's "
             "compute, %s GB/s here", res_get(g, "link_ratio"), res_get(g, "link_ratio"),
             res_get(g, "link_gbps_derived"));
  else
    snprintf(link, sizeof link, "link %s GB/s", res_get(g, "link_gbps"));
  fprintf(md, "### %s, workload %s, batch %s, %s backend, device budget %s (%s)\n\n",
          res_get(g, "model"), res_get(g, "workload"), res_get(g, "batch"), res_get(g, "backend"),
          budget == 0 ? "= capacity" : res_get(g, "device_mem_budget_bytes"), link);
  fprintf(md, "| policy | routing | status | tokens/s (± spread) | TTFT s | p50 ms/token | p99 ms/token | peak device MB "
              "| expert slots | copied MB (whole run) | fetches | misses | stall s | pre-gate hit | token match | max logit diff |\n");
  fprintf(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (size_t k = i; k < t->n; k++) {
    const res_row *r = &t->rows[k];
    if (!same_group(r, g)) continue;
    char a[48], b[32], cc[32], d[32], e[32], f2[32], h[32], s2[32];
    fmt(a, sizeof a, num(r, "tokens_per_s"), "%.2f");
    /* the spread over the repetitions, next to the median */
    const double sp = num(r, "rel_spread");
    if (!isnan(sp) && !isnan(num(r, "tokens_per_s"))) {
      size_t al = strlen(a);
      snprintf(a + al, sizeof a - al, " (±%.0f%%)", 100.0 * sp);
    }
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
}

/* A table's quality lines, when its rows have eval figures. */
static void group_eval(const res_table *t, size_t i, FILE *md) {
  const res_row *g = &t->rows[i];
  bool any_eval = false;
  for (size_t k = i; k < t->n; k++) any_eval |= same_group(&t->rows[k], g) && res_get(&t->rows[k], "eval_tokens")[0];
  if (!any_eval) return;
  fprintf(md, "\nQuality over the workload's eval windows (the engine's; change against the "
              "gpu-only row of the same model):\n\n| policy | routing | eval tokens | perplexity | "
              "top-1 accuracy | change in perplexity | change in accuracy |\n|---|---|---|---|---|---|---|\n");
  for (size_t k = i; k < t->n; k++) {
    const res_row *r = &t->rows[k];
    if (!same_group(r, g) || !res_get(r, "eval_tokens")[0]) continue;
    char p1[32], p2[32], p3[32], p4[32];
    fmt(p1, sizeof p1, num(r, "eval_perplexity"), "%.4f");
    fmt(p2, sizeof p2, num(r, "eval_accuracy"), "%.4f");
    fmt(p3, sizeof p3, 100 * num(r, "eval_perplexity_change"), "%+.2f%%");
    fmt(p4, sizeof p4, 100 * num(r, "eval_accuracy_change"), "%+.2f pt");
    fprintf(md, "| %s | %s | %s | %s | %s | %s | %s |\n", res_get(r, "policy"), res_get(r, "routing"),
            res_get(r, "eval_tokens"), p1, p2, p3, p4);
  }
}

/* How a table's times were had: modeled or measured. */
static void group_times_note(const res_row *g, FILE *md) {
  if (row_modeled(g))
    fprintf(md, "\nAll times are MODELED by the %s backend on the %s hardware profile (the cost "
                "model, deterministic; not measured); bytes, slots, fetches and misses are "
                "counted by the engine running unchanged on it.\n",
            res_get(g, "backend"), res_get(g, "device"));
  else
    fprintf(md, "\nAll times are wall clock measured on this machine (medians of %s repetitions; "
                "the spread is (max - min) / median of tokens/s over them); "
                "bytes, slots, fetches and misses are counted by the engine.\n",
            res_get(g, "repetitions"));
}

/* report --paper: pregated's ratios next to the paper's. */
static void group_paper(const res_table *t, size_t i, FILE *md) {
  const res_row *g = &t->rows[i];
  const res_row *go = find_policy(t, g, "gpu-only"), *od = find_policy(t, g, "ondemand"),
                *pf = find_policy(t, g, "prefetch-all"), *pg = find_policy(t, g, "pregated");
  fprintf(md, "\n| comparison | this run (%s) | Pre-gated MoE paper (A100, Switch, batch 1) |\n|---|---|---|\n",
          row_modeled(g) ? "modeled" : "measured");
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

static void report_usage(void) {
  fputs("usage: moebench report RESULTS.csv [options]\n\n"
         "Prints a markdown table per model x workload x batch x budget.\n\n"
         "  -o, --out FILE   write the markdown to FILE (temporary file + rename)\n"
         "  --paper          add pregated's ratios next to the Pre-gated MoE paper's\n"
         "  --summary        one table instead: a line per model x workload x batch x\n"
         "                   budget with the four policies' throughput, peak memory and\n"
         "                   pregated's ratios, and the paper's beside them\n"
         "  --plots DIR      PNG plots (needs gnuplot; skipped with a note when it is not\n"
         "                   installed): throughput and peak memory per policy for each\n"
         "                   table, throughput against memory per model (a point per\n"
         "                   policy and budget), throughput against batch per policy,\n"
         "                   bytes copied per token against cache slots for expert\n"
         "                   caches (policies NAME+KIND:SIZE).  DIR is created (its\n"
         "                   parent must exist); plots of the same names are replaced\n"
         "  --figure PNG     the headline figure of the first table: throughput and peak\n"
         "                   memory per policy with pregated's ratios and the paper's\n"
         "                   (needs gnuplot; exit 1 without it); an existing PNG is\n"
         "                   replaced\n"
         "  -h, --help       this text\n\n"
         "Plot paths (DIR, PNG) are written into gnuplot's scripts, so they may hold only\n"
         "ASCII letters, digits, space and / . _ - + , : and at most 512 bytes (else they\n"
         "are refused: exit 2, naming the character).  Names from the results file (model,\n"
         "workload, policy, ...) reach the plots (scripts and data files) only as ASCII\n"
         "letters, digits, space and - _ . , : + / ( ) %; every other byte shows as '?'.\n"
         "A plot is listed in the markdown only when gnuplot exited 0 and left a whole PNG.\n\n"
         "Exit status: 0 done; 1 an unreadable results file, a plot not drawn (gnuplot\n"
         "failed, or its PNG is missing, empty or cut short, as on a full disk; the line\n"
         "names the file, and -o FILE is then not written), the plots directory cannot be\n"
         "made, --figure without gnuplot, a failed write; 2 bad usage or a refused path.\n",
        stdout);
}

typedef struct report_opts {
  const char *out, *plots, *figure;
  const char *input; /* the results file read */
  bool paper, summary;
} report_opts;

/* The options; -1 to go on, else the exit status. */
static int report_parse(int argc, char **argv, report_opts *o) {
  static const struct option opts[] = {{"out", required_argument, 0, 'o'},
                                       {"plots", required_argument, 0, 'P'},
                                       {"figure", required_argument, 0, 'F'},
                                       {"paper", no_argument, 0, 'p'},
                                       {"summary", no_argument, 0, 's'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
    switch (c) {
      case 'o': o->out = optarg; break;
      case 'P': o->plots = optarg; break;
      case 'F': o->figure = optarg; break;
      case 'p': o->paper = true; break;
      case 's': o->summary = true; break;
      case 'h': report_usage(); return 0;
      default:
        cli_error("report: unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
        return 2;
    }
  }
  if (argc - optind != 1) {
    cli_error("report: give one results file");
    return 2;
  }
  if (o->plots && check_plot_path("--plots", o->plots) != 0) return 2;
  if (o->figure && check_plot_path("--figure", o->figure) != 0) return 2;
  return -1;
}

/* The plots directory: made when missing, a directory.  0, or 1 after a
 * line naming it. */
static int plots_dir(const char *dir) {
  struct stat st;
  if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
    cli_error("report: cannot create the plots directory %s: %s", dir, strerror(errno));
    return 1;
  }
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    cli_error("report: the plots directory %s is not a directory", dir);
    return 1;
  }
  return 0;
}

/* The markdown (and plots, and figure) of t.  0, or 1 after a line. */
static int report_write(const res_table *t, const report_opts *o, bool gnuplot, FILE *md) {
  if (o->summary) summary_table(t, md);
  for (size_t start = 0; start < t->n && !o->summary;) {
    const res_table win = group_window(t, start);
    group_table(&win, 0, md);
    group_eval(&win, 0, md);
    group_times_note(&win.rows[0], md);
    if (o->paper) group_paper(&win, 0, md);
    /* the plots span groups (a model's scatter, a workload's batches): the
     * whole table, from the group's first row */
    if (gnuplot && group_plots(t, start, o->plots, md) != 0) return 1;
    fprintf(md, "\n");
    start += win.n;
  }
  if (o->figure && t->n > 0) {
    if (!have_gnuplot()) {
      cli_error("report: --figure needs gnuplot (not installed)");
      return 1;
    }
    return headline_figure(t, 0, o->figure);
  }
  return 0;
}

/* Writes the report to o->out (a temporary file, renamed when whole) or
 * stdout. */
static int report_output(const res_table *t, const report_opts *o, bool gnuplot) {
  if (o->out == NULL) {
    int rc = report_write(t, o, gnuplot, stdout);
    if (fflush(stdout) != 0 || ferror(stdout)) {
      cli_error("report: standard output: write failed");
      rc = 1;
    }
    return rc;
  }
  moe_publish pub;
  moe_error err = {0};
  if (cli_output_clobbers("report", o->out, o->input)) return 2;
  if (moe_publish_open(&pub, o->out, "the report", &err) != MOE_OK) return cli_fail(&err);
  int rc = report_write(t, o, gnuplot, pub.f);
  if (rc != 0) {
    moe_publish_abort(&pub);
    return rc;
  }
  if (moe_publish_commit(&pub, &err) != MOE_OK) rc = cli_fail(&err);
  return rc;
}

/* The report shows text cells in markdown tables and headings: every key
 * and text value escaped once, at load ('|' and newlines in a name would
 * break the table).  Plots clean their labels themselves. */
static void md_escape_table(res_table *t) {
  char buf[2048];
  for (size_t i = 0; i < t->n; i++)
    for (size_t c = 0; c < res_ncols; c++) {
      if (res_columns[c].kind != RES_KEY && res_columns[c].kind != RES_TEXT) continue;
      const char *v = t->rows[i].v[c];
      if (strcspn(v, "|\\\n\r\t") == strlen(v)) continue;
      cli_md_into(buf, sizeof buf, v);
      res_set(&t->rows[i], res_columns[c].name, buf);
    }
}

int cmd_report(int argc, char **argv) {
  report_opts o = {0};
  const int parsed = report_parse(argc, argv, &o);
  if (parsed >= 0) return parsed;
  res_table t;
  moe_error err = {0};
  o.input = argv[optind];
  if (res_read_csv(argv[optind], &t, &err) != MOE_OK) return cli_fail(&err);
  md_escape_table(&t);
  if (group_rows(&t) != 0) {
    res_table_free(&t);
    cli_error("report: out of host memory grouping %s", argv[optind]);
    return 1;
  }
  const bool gnuplot = o.plots && have_gnuplot();
  if (o.plots && !gnuplot) fprintf(stderr, "moebench: report: gnuplot is not installed; no plots\n");
  int rc = gnuplot ? plots_dir(o.plots) : 0;
  if (rc == 0) rc = report_output(&t, &o, gnuplot);
  res_table_free(&t);
  return rc;
}
