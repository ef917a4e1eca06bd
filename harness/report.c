/* moebench report RESULTS: markdown tables of a result file, per group, with
 * the paper's ratios (--paper) and figures (--plots, report_plots.c). */
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

#include "moe/policy.h"
#include "moe/publish.h"
#include "cli.h"
#include "flags.h"
#include "commands.h"
#include "paper.h"
#include "report.h"
#include "results.h"

/* ------------------------------------------------------------ report */

double report_num(const res_row *r, const char *col) {
  const char *v = res_get(r, col);
  return v[0] ? atof(v) : NAN;
}

bool report_same_group(const res_row *a, const res_row *b) {
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
  while (j < t->n && report_same_group(&t->rows[j], &t->rows[i])) j++;
  res_table w = *t;
  w.rows = t->rows + i;
  w.n = j - i;
  return w;
}

const res_row *report_find_policy(const res_table *t, const res_row *like, const char *policy) {
  for (size_t i = 0; i < t->n; i++)
    if (report_same_group(&t->rows[i], like) && !strcmp(res_get(&t->rows[i], "policy"), policy) &&
        !strcmp(res_get(&t->rows[i], "status"), "ok"))
      return &t->rows[i];
  return NULL;
}

const res_row *report_find_role(const res_table *t, const res_row *like, moe_policy_role role) {
  const moe_policy *p = moe_policy_with_role(role);
  return p ? report_find_policy(t, like, p->name) : NULL;
}

void report_paper_rows(const res_table *t, const res_row *like, const res_row *rows[4]) {
  const moe_policy *four[4] = {NULL, NULL, NULL, NULL};
  moe_policy_paper_baselines(four, 4);
  for (int i = 0; i < 4; i++) rows[i] = four[i] ? report_find_policy(t, like, four[i]->name) : NULL;
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
    const res_row *four[4];
    report_paper_rows(t, g, four);
    const res_row *go = four[0], *od = four[1], *pf = four[2], *pg = four[3];
    if (res_row_modeled(g)) any_modeled = true;
    else any_measured = true;
    char a[32], b[32], c[32], d[32], e[32], f[32], r1[32], r2[32], r3[32], r4[32];
    const double tgo = go ? report_num(go, "tokens_per_s") : NAN, tod = od ? report_num(od, "tokens_per_s") : NAN,
                 tpf = pf ? report_num(pf, "tokens_per_s") : NAN, tpg = pg ? report_num(pg, "tokens_per_s") : NAN;
    const double mgo = go ? report_num(go, "peak_device_bytes") : NAN, mpg = pg ? report_num(pg, "peak_device_bytes") : NAN;
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
    if (!go && report_find_role(t, g, MOE_POLICY_ROLE_REFERENCE) == NULL) {
      for (size_t k = 0; k < t->n; k++)
        if (report_same_group(&t->rows[k], g) && !strcmp(res_get(&t->rows[k], "policy"), moe_policy_reference()->name))
          snprintf(a, sizeof a, "%s", res_get(&t->rows[k], "status"));
    }
    char budget[32] = "capacity";
    const double bb = report_num(g, "device_mem_budget_bytes");
    if (bb > 0) snprintf(budget, sizeof budget, "%.1f GiB", bb / 1073741824.0);
    fprintf(md, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
            res_get(g, "model"), res_get(g, "workload"), res_get(g, "batch"), res_get(g, "device"),
            budget, a, b, c, d, e, f, r1, r2, r3, r4);
  }
  char p[8][32];
  fprintf(md, "| *Pre-gated MoE paper (A100 PCIe4, Switch, batch 1)* | | | | | | | | | | | %s | "
              "%s | %s avg, %s max | %s avg, %s max |\n\n",
          paper_fmt(p[0], 32, "pregated_vs_gpu_only_throughput"),
          paper_fmt(p[1], 32, "pregated_vs_gpu_only_peak_memory"),
          paper_fmt(p[2], 32, "pregated_vs_ondemand_avg"), paper_fmt(p[3], 32, "pregated_vs_ondemand_max"),
          paper_fmt(p[4], 32, "pregated_vs_prefetch_avg"), paper_fmt(p[5], 32, "pregated_vs_prefetch_max"));
  fprintf(md, "%s%sThe paper reports for Switch-Large-128: pregated about %s, ondemand %s, "
              "prefetch %s (gpu-only OOM).\n",
          any_modeled ? "Rows on the sim backend are MODELED (the cost model on the row's hardware "
                        "profile, deterministic), not measured. " : "",
          any_measured ? "Rows on other backends are measured wall clock. " : "",
          paper_fmt(p[0], 32, "large128_pregated_tokens_per_s"),
          paper_fmt(p[1], 32, "large128_ondemand_tokens_per_s"),
          paper_fmt(p[2], 32, "large128_prefetch_tokens_per_s"));
}

/* One line per model x workload x batch x budget: tokens/s of every policy
 * in the file (the copying policies and the host-compute class side by
 * side), which one is fastest, and how many
 * expert runs that one made on the host (report --host). */
static void host_table(const res_table *all, FILE *md) {
  /* the file's policies in order of appearance (at most 32 columns; a
   * note says when there were more) */
  const char *pol[32];
  int np = 0;
  bool dropped = false;
  for (size_t k = 0; k < all->n; k++) {
    const char *name = res_get(&all->rows[k], "policy");
    bool seen = false;
    for (int i = 0; i < np && !seen; i++) seen = strcmp(pol[i], name) == 0;
    if (!seen && np < 32) pol[np++] = name;
    else if (!seen) dropped = true;
  }
  bool any_modeled = false;
  fprintf(md, "| model | workload | batch | budget |");
  for (int i = 0; i < np; i++) fprintf(md, " %s tok/s |", pol[i]);
  fprintf(md, " fastest | its expert runs on the host |\n|---|---|---|---|");
  for (int i = 0; i < np; i++) fprintf(md, "---|");
  fprintf(md, "---|---|\n");
  for (size_t start = 0; start < all->n;) {
    const res_table win = group_window(all, start), *t = &win;
    start += win.n;
    const res_row *g = &t->rows[0];
    any_modeled |= res_row_modeled(g);
    char budget[32] = "capacity";
    const double bb = report_num(g, "device_mem_budget_bytes");
    if (bb > 0) snprintf(budget, sizeof budget, "%.1f GiB", bb / 1073741824.0);
    fprintf(md, "| %s | %s | %s | %s |", res_get(g, "model"), res_get(g, "workload"),
            res_get(g, "batch"), budget);
    const res_row *best = NULL;
    for (int i = 0; i < np; i++) {
      const res_row *r = report_find_policy(t, g, pol[i]);
      char v[32];
      fmt(v, sizeof v, r ? report_num(r, "tokens_per_s") : NAN, "%.3g");
      fprintf(md, " %s |", r ? v : "-");
      if (r && (best == NULL || report_num(r, "tokens_per_s") > report_num(best, "tokens_per_s")))
        best = r;
    }
    char share[32] = "-";
    if (best) fmt(share, sizeof share, report_num(best, "host_experts"), "%.0f");
    if (best && share[0] == '-') snprintf(share, sizeof share, "0");
    fprintf(md, " %s | %s |\n", best ? res_get(best, "policy") : "-", share);
  }
  if (dropped) fprintf(md, "\nThe file has more than 32 policies: the table shows the first 32.\n");
  fprintf(md, "\n%s'-': the policy failed there (most often OOM: its slots do not fit the "
              "budget).\n",
          any_modeled ? "Rows on the sim backend are MODELED (the cost model on the row's "
                        "hardware profile with its host section), not measured. " : "");
}

bool report_ascii_alnum(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* A file-name part from a CSV field: [A-Za-z0-9._-] kept, anything else
 * '_', never empty, never starting with '.', at most 48 characters. */
void report_safe_name(char *out, size_t cap, const char *v) {
  size_t n = 0;
  for (const char *c = v; *c && n + 1 < cap && n < 48; c++) {
    const bool keep = report_ascii_alnum((unsigned char)*c) || *c == '-' || *c == '_' || (*c == '.' && n > 0);
    out[n++] = keep ? *c : '_';
  }
  if (n == 0) out[n++] = '_';
  out[n] = '\0';
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
  double budget = report_num(g, "device_mem_budget_bytes");
  char link[160];
  if (res_get(g, "link_ratio")[0])
    snprintf(link, sizeof link, "link ratio %s: one expert's copy = %s x a decoder MoE block's "
             "compute, %s GB/s here", res_get(g, "link_ratio"), res_get(g, "link_ratio"),
             res_get(g, "link_gbps_derived"));
  else if (report_num(g, "link_gbps") > 0)
    snprintf(link, sizeof link, "link capped at %s GB/s", res_get(g, "link_gbps"));
  else if (res_row_modeled(g))
    snprintf(link, sizeof link, "link: the hardware profile's, modeled");
  else
    snprintf(link, sizeof link, "link: the backend's own, uncapped");
  fprintf(md, "### %s, workload %s, batch %s, %s backend, device budget %s (%s)\n\n",
          res_get(g, "model"), res_get(g, "workload"), res_get(g, "batch"), res_get(g, "backend"),
          budget == 0 ? "= capacity" : res_get(g, "device_mem_budget_bytes"), link);
  fprintf(md, "| policy | routing | status | tokens/s (± spread) | TTFT s | p50 ms/token | p99 ms/token | peak device MB "
              "| expert slots | copied MB (whole run) | fetches | misses | stall s | pre-gate hit | token match | max logit diff |\n");
  fprintf(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (size_t k = i; k < t->n; k++) {
    const res_row *r = &t->rows[k];
    if (!report_same_group(r, g)) continue;
    char a[48], b[32], cc[32], d[32], e[32], f2[32], h[32], s2[32];
    fmt(a, sizeof a, report_num(r, "tokens_per_s"), "%.2f");
    /* the spread over the repetitions, next to the median */
    const double sp = report_num(r, "rel_spread");
    if (!isnan(sp) && !isnan(report_num(r, "tokens_per_s"))) {
      size_t al = strlen(a);
      snprintf(a + al, sizeof a - al, " (±%.0f%%)", 100.0 * sp);
    }
    fmt(b, sizeof b, report_num(r, "ttft_s"), "%.3f");
    fmt(cc, sizeof cc, report_num(r, "token_latency_p50_s") * 1e3, "%.2f");
    fmt(d, sizeof d, report_num(r, "token_latency_p99_s") * 1e3, "%.2f");
    fmt(e, sizeof e, report_num(r, "peak_device_bytes") / 1e6, "%.1f");
    fmt(f2, sizeof f2, report_num(r, "h2d_bytes") / 1e6, "%.1f");
    fmt(h, sizeof h, report_num(r, "stall_s"), "%.3f");
    fmt(s2, sizeof s2, report_num(r, "pregate_hit_rate"), "%.3f");
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
  for (size_t k = i; k < t->n; k++) any_eval |= report_same_group(&t->rows[k], g) && res_get(&t->rows[k], "eval_tokens")[0];
  if (!any_eval) return;
  fprintf(md, "\nQuality over the workload's eval windows (the engine's; change against the "
              "gpu-only row of the same model):\n\n| policy | routing | eval tokens | perplexity | "
              "top-1 accuracy | change in perplexity | change in accuracy |\n|---|---|---|---|---|---|---|\n");
  for (size_t k = i; k < t->n; k++) {
    const res_row *r = &t->rows[k];
    if (!report_same_group(r, g) || !res_get(r, "eval_tokens")[0]) continue;
    char p1[32], p2[32], p3[32], p4[32];
    fmt(p1, sizeof p1, report_num(r, "eval_perplexity"), "%.4f");
    fmt(p2, sizeof p2, report_num(r, "eval_accuracy"), "%.4f");
    fmt(p3, sizeof p3, 100 * report_num(r, "eval_perplexity_change"), "%+.2f%%");
    fmt(p4, sizeof p4, 100 * report_num(r, "eval_accuracy_change"), "%+.2f pt");
    fprintf(md, "| %s | %s | %s | %s | %s | %s | %s |\n", res_get(r, "policy"), res_get(r, "routing"),
            res_get(r, "eval_tokens"), p1, p2, p3, p4);
  }
}

/* How a table's times were had: modeled or measured. */
static void group_times_note(const res_row *g, FILE *md) {
  if (res_row_modeled(g))
    fprintf(md, "\nAll times are MODELED by the %s backend on the %s hardware profile (the cost "
                "model, deterministic; not measured); bytes, slots, fetches and misses are "
                "counted by the engine running unchanged on it.\n",
            res_get(g, "backend"), res_get(g, "device"));
  else
    fprintf(md, "\nAll times are wall clock measured on the machine that wrote the file (%s; "
                "medians of %s repetitions; the spread is (max - min) / median of tokens/s over "
                "them); bytes, slots, fetches and misses are counted by the engine.\n",
            res_get(g, "device"), res_get(g, "repetitions"));
}

/* report --paper: pregated's ratios next to the paper's. */
static void group_paper(const res_table *t, size_t i, FILE *md) {
  const res_row *g = &t->rows[i];
  const res_row *four[4];
  report_paper_rows(t, g, four);
  const res_row *go = four[0], *od = four[1], *pf = four[2], *pg = four[3];
  fprintf(md, "\n| comparison | this run (%s) | Pre-gated MoE paper (A100, Switch, batch 1) |\n|---|---|---|\n",
          res_row_modeled(g) ? "modeled" : "measured");
  char x[64], p1[32], p2[32];
  paper_fmt(p1, sizeof p1, "pregated_vs_gpu_only_throughput");
  paper_fmt(p2, sizeof p2, "pregated_vs_gpu_only_peak_memory");
  if (pg && go) {
    fmt(x, sizeof x, 100 * report_num(pg, "tokens_per_s") / report_num(go, "tokens_per_s"), "%.0f%%");
    fprintf(md, "| pregated throughput vs gpu-only | %s | %s |\n", x, p1);
    fmt(x, sizeof x, 100 * report_num(pg, "peak_device_bytes") / report_num(go, "peak_device_bytes"), "%.0f%%");
    fprintf(md, "| pregated peak device memory vs gpu-only | %s | %s |\n", x, p2);
  } else {
    fprintf(md, "| pregated vs gpu-only | gpu-only %s | %s throughput, %s memory |\n",
            go ? "ok" : "not run or OOM", p1, p2);
  }
  if (pg && od) {
    fmt(x, sizeof x, report_num(pg, "tokens_per_s") / report_num(od, "tokens_per_s"), "%.2fx");
    fprintf(md, "| pregated throughput vs ondemand | %s | %s avg, %s max |\n", x,
            paper_fmt(p1, sizeof p1, "pregated_vs_ondemand_avg"),
            paper_fmt(p2, sizeof p2, "pregated_vs_ondemand_max"));
    fmt(x, sizeof x, 100 * report_num(pg, "peak_device_bytes") / report_num(od, "peak_device_bytes") - 100, "%+.1f%%");
    fprintf(md, "| pregated peak memory vs ondemand | %s | %s |\n", x,
            paper_fmt(p1, sizeof p1, "pregated_vs_ondemand_peak_memory"));
  }
  if (pg && pf) {
    fmt(x, sizeof x, report_num(pg, "tokens_per_s") / report_num(pf, "tokens_per_s"), "%.1fx");
    fprintf(md, "| pregated throughput vs prefetch-all | %s | %s avg, %s max |\n", x,
            paper_fmt(p1, sizeof p1, "pregated_vs_prefetch_avg"),
            paper_fmt(p2, sizeof p2, "pregated_vs_prefetch_max"));
  }
  fprintf(md, "\nThe paper's figures are from its A100 (PCIe Gen4) runs of Switch Transformers; "
              "this machine's figures come from the engine named above. Compare ratios, not "
              "absolute numbers.\n");
}

void report_usage(FILE *f) {
  fputs("usage: moebench report RESULTS.csv [options]\n\n"
         "Prints a markdown table per model x workload x batch x budget.\n\n"
         "  -o, --out FILE   write the markdown to FILE (temporary file + rename)\n"
         "  --paper          add pregated's ratios next to the Pre-gated MoE paper's\n"
         "  --host           one table instead: a line per model x workload x batch x\n"
         "                   budget with tokens/s of each policy in the file (the\n"
         "                   copying and the host-compute ones side by side), the\n"
         "                   fastest, and its expert runs on the host\n"
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
        f);
}

typedef struct report_opts {
  const char *out, *plots, *figure;
  const char *input; /* the results file read */
  bool paper, summary, host;
} report_opts;

/* One flag into o (flags_getopt). */
static int report_take(void *ctx, int c, const char *arg) {
  report_opts *o = ctx;
  switch (c) {
    case 'o': o->out = arg; return 0;
    case 'P': o->plots = arg; return 0;
    case 'F': o->figure = arg; return 0;
    case 'p': o->paper = true; return 0;
    case 's': o->summary = true; return 0;
    case 'O': o->host = true; return 0;
    default: return -1;
  }
}

/* The options; -1 to go on, else the exit status. */
static int report_parse(int argc, char **argv, report_opts *o) {
  static const struct option opts[] = {
      {"out", required_argument, 0, 'o'}, {"plots", required_argument, 0, 'P'},
      {"figure", required_argument, 0, 'F'}, {"paper", no_argument, 0, 'p'},
      {"summary", no_argument, 0, 's'}, {"host", no_argument, 0, 'O'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  const int rc = flags_getopt("report", argc, argv, "ho:", opts, report_take, o, report_usage);
  if (rc >= 0) return rc;
  if (argc - optind != 1) {
    cli_error("report: give one results file");
    return 2;
  }
  if (o->host && (o->summary || o->paper || o->plots || o->figure)) {
    cli_error("report: --host is a table of its own: give it without --summary, --paper, --plots "
              "and --figure");
    return 2;
  }
  if (o->plots && report_check_plot_path("--plots", o->plots) != 0) return 2;
  if (o->figure && report_check_plot_path("--figure", o->figure) != 0) return 2;
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
  if (o->host) host_table(t, md);
  for (size_t start = 0; start < t->n && !o->summary && !o->host;) {
    const res_table win = group_window(t, start);
    group_table(&win, 0, md);
    group_eval(&win, 0, md);
    group_times_note(&win.rows[0], md);
    if (o->paper) group_paper(&win, 0, md);
    /* the plots span groups (a model's scatter, a workload's batches): the
     * whole table, from the group's first row */
    if (gnuplot && report_group_plots(t, start, o->plots, md) != 0) return 1;
    fprintf(md, "\n");
    start += win.n;
  }
  if (o->figure && t->n > 0) {
    if (!have_gnuplot()) {
      cli_error("report: --figure needs gnuplot (not installed)");
      return 1;
    }
    return report_headline_figure(t, 0, o->figure);
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

