/* moebench report --plots: gnuplot scripts and PNGs of a result file's groups. */
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
#include "commands.h"
#include "paper.h"
#include "report.h"
#include "results.h"

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
  return report_ascii_alnum(c) || (c != '\0' && strchr(" -_.,:+/()%", c) != NULL);
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
void report_gp_quote(FILE *f, const char *v) {
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
  report_gp_quote(f, text);
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
  return report_ascii_alnum(c) || (c != '\0' && strchr(" /._-+,:", c) != NULL);
}

/* 0 when path may be a plot path; else 2 after a line naming the option
 * and the first character refused. */
int report_check_figure_out(const char *cmd, const char *out, const char *figure) {
  if (out && cli_check_prefix(cmd, out) != 0) return 2;
  if (figure == NULL) return 0;
  if (out == NULL) {
    cli_error("%s: --figure draws from the CSV of -o PREFIX: give -o", cmd);
    return 2;
  }
  return report_check_plot_path("--figure", figure) != 0 || report_check_plot_path("-o", out) != 0 ? 2 : 0;
}

int report_check_plot_path(const char *opt, const char *path) {
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
int report_draw(const char *gp, const char *const *png, int n) {
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

/* Opens path for writing through the one safe writer (moe/publish.h: a
 * temporary file renamed over path when whole, never through a link);
 * NULL after a line naming it. */
FILE *report_plot_file(moe_publish *pub, const char *path) {
  moe_error err = {0};
  if (moe_publish_open(pub, path, "a plot file", &err) != MOE_OK) {
    cli_fail(&err);
    return NULL;
  }
  return pub->f;
}

/* Publishes a script or data file: 0, or 1 after a line naming it (a full
 * disk shows here first). */
int report_plot_close(moe_publish *pub) {
  moe_error err = {0};
  return moe_publish_commit(pub, &err) == MOE_OK ? 0 : cli_fail(&err);
}

/* DIR/MODEL-WORKLOAD-bBATCH-BUDGET: a table's plot files, less suffix. */
static void group_base(char *out, size_t cap, const res_row *g, const char *dir) {
  char m[64], w[64], b[64], bu[64];
  report_safe_name(m, sizeof m, res_get(g, "model"));
  report_safe_name(w, sizeof w, res_get(g, "workload"));
  report_safe_name(b, sizeof b, res_get(g, "batch"));
  report_safe_name(bu, sizeof bu, res_get(g, "device_mem_budget_bytes"));
  snprintf(out, cap, "%s/%s-%s-b%s-%s", dir, m, w, b, bu);
}

/* A table's bars, a line per policy: label, tokens/s median, min, max,
 * peak MB; a row that did not run (OOM, error) stays in the plot at 0,
 * labelled with its status. */
static int write_group_data(const res_table *t, size_t first, const char *dat) {
  const res_row *g = &t->rows[first];
  moe_publish pub;
  FILE *f = report_plot_file(&pub, dat);
  if (f == NULL) return 1;
  for (size_t i = first; i < t->n; i++) {
    const res_row *r = &t->rows[i];
    if (!report_same_group(r, g)) continue;
    const bool ok = !strcmp(res_get(r, "status"), "ok");
    char pol[96], st[48], label[160];
    gp_clean(pol, sizeof pol, res_get(r, "policy"));
    gp_clean(st, sizeof st, res_get(r, "status"));
    if (ok) snprintf(label, sizeof label, "%s", pol);
    else snprintf(label, sizeof label, "%s (%s)", pol, st);
    gp_datum(f, label);
    if (ok) {
      const double med = report_num(r, "tokens_per_s"), lo = report_num(r, "tokens_per_s_min"),
                   hi = report_num(r, "tokens_per_s_max");
      fprintf(f, " %.6g %.6g %.6g %.3f\n", med, isnan(lo) ? med : lo, isnan(hi) ? med : hi,
              report_num(r, "peak_device_bytes") / 1e6);
    } else {
      fprintf(f, " 0 0 0 0\n");
    }
  }
  return report_plot_close(&pub);
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
  moe_publish pub;
  FILE *f = report_plot_file(&pub, gp);
  if (f == NULL) return 1;
  gp_names n;
  gp_names_of(g, &n);
  snprintf(what, sizeof what, "%s, %s, batch %s, budget %s", n.model, n.workload, n.batch, n.budget);
  fputs("set terminal png size 900,520 noenhanced\nset style fill solid 0.6\nset boxwidth 0.6\n"
        "set grid y\nset yrange [0:*]\nset xtics rotate by -20\n", f);
  gp_set(f, "output", tput);
  snprintf(title, sizeof title, "%s: generated tokens/s (measured; median, bars min..max)", what);
  gp_set(f, "title", title);
  fputs("plot ", f), report_gp_quote(f, dat), fputs(" using 0:2:xtic(1) with boxes notitle, ", f);
  report_gp_quote(f, dat), fputs(" using 0:2:3:4 with yerrorbars notitle\n", f);
  gp_set(f, "output", mem);
  snprintf(title, sizeof title, "%s: peak device MB (allocator)", what);
  gp_set(f, "title", title);
  fputs("plot ", f), report_gp_quote(f, dat), fputs(" using 0:5:xtic(1) with boxes notitle\n", f);
  if (report_plot_close(&pub) != 0 || report_draw(gp, (const char *const[]){tput, mem}, 2) != 0) return 1;
  fprintf(md, "\nPlots: `%s-throughput.png`, `%s-memory.png`\n", base, base);
  return 0;
}

/* The headline figure's data: a line per policy of the table (label,
 * tokens/s median, min, max, peak MB; 0 for a row that did not run).
 * Returns the number of lines, or -1 after a message. */
static int write_headline_data(const res_table *t, size_t first, const char *dat) {
  const res_row *g = &t->rows[first];
  moe_publish pub;
  FILE *f = report_plot_file(&pub, dat);
  if (f == NULL) return -1;
  int n = 0;
  for (size_t i = first; i < t->n; i++) {
    const res_row *r = &t->rows[i];
    if (!report_same_group(r, g)) continue;
    const bool ok = !strcmp(res_get(r, "status"), "ok");
    char pol[96];
    gp_clean(pol, sizeof pol, res_get(r, "policy"));
    gp_datum(f, pol);
    const double med = ok ? report_num(r, "tokens_per_s") : 0, lo = report_num(r, "tokens_per_s_min"),
                 hi = report_num(r, "tokens_per_s_max");
    fprintf(f, " %.6g %.6g %.6g %.3f\n", med, ok && !isnan(lo) ? lo : med, ok && !isnan(hi) ? hi : med,
            ok ? report_num(r, "peak_device_bytes") / 1e6 : 0.0);
    n++;
  }
  return report_plot_close(&pub) == 0 ? n : -1;
}

/* The headline figure's script: two panels, with pregated's ratios to
 * gpu-only next to the paper's. */
static void write_headline_script(FILE *f, const res_table *t, size_t first, const char *png,
                                  const char *dat, int n) {
  const res_row *g = &t->rows[first];
  const res_row *go = report_find_role(t, g, MOE_POLICY_ROLE_REFERENCE), *pg = report_find_role(t, g, MOE_POLICY_ROLE_PREGATED);
  char tput[160] = "", mem[160] = "", title[600];
  if (go && pg) {
    char p1[32], p2[32];
    snprintf(tput, sizeof tput, "pregated: %.0f%% of gpu-only's tokens/s (paper: %s)",
             100 * report_num(pg, "tokens_per_s") / report_num(go, "tokens_per_s"),
             paper_fmt(p1, sizeof p1, "pregated_vs_gpu_only_throughput"));
    snprintf(mem, sizeof mem, "pregated: %.0f%% of gpu-only's peak memory (paper: %s)",
             100 * report_num(pg, "peak_device_bytes") / report_num(go, "peak_device_bytes"),
             paper_fmt(p2, sizeof p2, "pregated_vs_gpu_only_peak_memory"));
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
  if (tput[0]) fputs("set label 1 ", f), report_gp_quote(f, tput), fputs(" at graph 0.02, graph 0.95 front\n", f);
  fputs("plot ", f), report_gp_quote(f, dat);
  fputs(" using 0:2:xtic(1) with boxes lc rgb '#4477aa' notitle, ", f), report_gp_quote(f, dat);
  fputs(" using 0:2:3:4 with yerrorbars lc rgb 'black' pt 0 notitle\nunset label 1\n", f);
  gp_set(f, "title", "peak device memory, MB (allocator)");
  if (mem[0]) fputs("set label 2 ", f), report_gp_quote(f, mem), fputs(" at graph 0.02, graph 0.95 front\n", f);
  fputs("plot ", f), report_gp_quote(f, dat);
  fputs(" using 0:5:xtic(1) with boxes lc rgb '#cc6677' notitle\nunset multiplot\n", f);
}

/* The headline figure of group `first` (report --figure PNG): generated
 * tokens/s and peak device memory per policy, side by side.  0, or 1
 * after a line naming the file. */
int report_headline_figure(const res_table *t, size_t first, const char *png) {
  char dat[1200], gp[1200];
  snprintf(dat, sizeof dat, "%s.dat", png);
  snprintf(gp, sizeof gp, "%s.gp", png);
  const int n = write_headline_data(t, first, dat);
  moe_publish pub;
  FILE *f = n < 0 ? NULL : report_plot_file(&pub, gp);
  int rc = 1;
  if (f != NULL) {
    write_headline_script(f, t, first, png, dat, n);
    rc = report_plot_close(&pub) == 0 && report_draw(gp, &png, 1) == 0 ? 0 : 1;
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
  moe_publish pub;
  FILE *f = report_plot_file(&pub, dat);
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
    fprintf(f, "%.3f %.6g ", report_num(r, "peak_device_bytes") / 1e6, report_num(r, "tokens_per_s"));
    gp_datum(f, label);
    fputc('\n', f);
    (*n)++;
  }
  return report_plot_close(&pub);
}

/* Per model: tokens/s against peak device memory, one point per policy
 * and budget (every workload and batch of the model in one picture, one
 * point style per workload and batch would crowd it: the first group's
 * workload and batch are used). */
static int plot_scatter(const res_table *t, size_t first, const char *dir, FILE *md) {
  const res_row *g = &t->rows[first];
  char m[64], base[1024], dat[1100], gp[1100], png[1100], title[600];
  report_safe_name(m, sizeof m, res_get(g, "model"));
  snprintf(base, sizeof base, "%s/%s-scatter", dir, m);
  snprintf(dat, sizeof dat, "%s.dat", base);
  snprintf(gp, sizeof gp, "%s.gp", base);
  snprintf(png, sizeof png, "%s.png", base);
  int n = 0;
  if (write_scatter_data(t, g, dat, &n) != 0) return 1;
  if (n == 0) return 0;
  moe_publish pub;
  FILE *f = report_plot_file(&pub, gp);
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
  fputs("plot ", f), report_gp_quote(f, dat);
  fputs(" using 1:2 with points pt 7 ps 1.5 notitle, ", f), report_gp_quote(f, dat);
  fputs(" using 1:2:3 with labels offset 1,1 left notitle\n", f);
  if (report_plot_close(&pub) != 0 || report_draw(gp, (const char *const[]){png}, 1) != 0) return 1;
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
    report_gp_quote(f, l->title[k]);
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
  moe_publish pub;
  FILE *f = report_plot_file(&pub, gp);
  if (f == NULL) return 1;
  fputs(sets, f);
  gp_set(f, "output", png);
  gp_set(f, "title", title);
  gp_write_lines(f, l);
  return report_plot_close(&pub) != 0 || report_draw(gp, (const char *const[]){png}, 1) != 0 ? 1 : 0;
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
      gp_point(l, k, report_num(r, "batch"), report_num(r, "tokens_per_s"));
  }
  return batches;
}

/* Per model and workload with several batch sizes: tokens/s against the
 * batch, one line per policy (budget = capacity rows). */
static int plot_batches(const res_table *t, size_t first, const char *dir, FILE *md) {
  const res_row *g = &t->rows[first];
  char m[64], w[64], base[1024], gp[1100], png[1100], title[600];
  report_safe_name(m, sizeof m, res_get(g, "model"));
  report_safe_name(w, sizeof w, res_get(g, "workload"));
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
    if (!report_same_group(r, g) || !plus || !colon || colon < plus) continue;
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
      if (!report_same_group(r, g) || strcmp(res_get(r, "status"), "ok")) continue;
      const bool bare = strlen(pol) == blen && !strncmp(pol, names[k], blen);
      const bool mine = !strncmp(pol, names[k], len) && pol[len] == ':';
      if (!bare && !mine) continue;
      const double tokens = report_num(r, "batch") * report_num(r, "gen_len") * report_num(r, "requests");
      gp_point(l, k, bare ? 0 : report_num(r, "cache_slots"), report_num(r, "h2d_bytes") / 1e6 / (tokens > 0 ? tokens : 1));
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
    report_safe_name(m, sizeof m, res_get(g, "model"));
    report_safe_name(w, sizeof w, res_get(g, "workload"));
    report_safe_name(b, sizeof b, res_get(g, "batch"));
    report_safe_name(bu, sizeof bu, res_get(g, "device_mem_budget_bytes"));
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
int report_group_plots(const res_table *t, size_t first, const char *dir, FILE *md) {
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

