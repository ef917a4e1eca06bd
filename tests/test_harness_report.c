/* moebench report: --figure and --plots, never through a shell, hostile
 * names against a real gnuplot, exit codes when a plot is not drawn, and
 * unsafe plot paths refused. */
#include <check.h>
#include <dirent.h>
#include <sys/stat.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "flags.h"
#include "moe/policy.h"
#include "moe/config.h"
#include "noise.h"
#include "results.h"
#include "suite.h"
#include "harness_util.h"
#include "testutil.h"

/* report --plots with hostile names in the CSV: nothing reaches a shell,
 * gnuplot gets one argument (the script), every string in the script stays
 * a string.  A stand-in gnuplot on PATH records how it was called. */
START_TEST(report_plots_never_run_a_shell) {
  char bin[1100], fake[1200], log[1100], pwned[1100], pwned2[1100];
  snprintf(bin, sizeof bin, "%s/bin", g_dir);
  ck_assert_int_eq(mkdir(bin, 0755), 0);
  snprintf(fake, sizeof fake, "%s/gnuplot", bin);
  snprintf(log, sizeof log, "%s/gnuplot.log", g_dir);
  snprintf(pwned, sizeof pwned, "%s/PWNED", g_dir);
  snprintf(pwned2, sizeof pwned2, "%s/PWNED2", g_dir);
  FILE *f = fopen(fake, "w");
  ck_assert_ptr_nonnull(f);
  /* it draws: a whole (blank) PNG at each 'set output' path, as report
   * lists only plots that were drawn */
  fprintf(f, "#!/bin/sh\necho \"$#\" >> '%s'\n"
             "sed -n \"s/^set output '\\(.*\\)'$/\\1/p\" \"$1\" | while read -r p; do\n"
             "  printf '\\211PNG\\r\\n\\032\\n\\000\\000\\000\\000IEND\\256B`\\202' > \"$p\"\ndone\nexit 0\n",
          log);
  fclose(f);
  ck_assert_int_eq(chmod(fake, 0755), 0);
  res_table t;
  res_table_init(&t);
  char model[4000], policy[1500];
  /* relative names (no '/'), run from g_dir: an injected command would
   * create g_dir/PWNED */
  snprintf(model, sizeof model, "x'; touch PWNED; echo '\"$(touch PWNED)`touch PWNED`");
  snprintf(policy, sizeof policy, "p\"\nsystem \"touch PWNED2\"\n\"");
  for (int i = 0; i < 3; i++) {
    res_row *r = res_table_add(&t);
    res_set(r, "model", model);
    res_set(r, "workload", "w");
    res_set(r, "policy", i == 1 ? "gpu-only" : i == 2 ? "ondemand" : policy);
    res_set(r, "routing", "conventional");
    res_set(r, "backend", "cpu");
    res_set(r, "device_mem_budget_bytes", "0");
    res_set(r, "batch", "1");
    res_set(r, "status", i == 1 ? "OOM" : "ok");
    res_set(r, "tokens_per_s", i == 1 ? "" : "10");
    res_set(r, "tokens_per_s_min", i == 1 ? "" : "9");
    res_set(r, "tokens_per_s_max", i == 1 ? "" : "12");
    res_set(r, "peak_device_bytes", "1000");
  }
  moe_error err = {0};
  ck_assert(res_write_csv(tmp_path("hostile.csv"), &t, &err) == MOE_OK);
  res_table_free(&t);
  char plots[1100];
  snprintf(plots, sizeof plots, "%s/plots", g_dir); /* missing: report creates it */
  const char *old_path = getenv("PATH");
  char path[8192];
  snprintf(path, sizeof path, "%s:%s", bin, old_path ? old_path : "/usr/bin:/bin");
  setenv("PATH", path, 1);
  char cwd[4096];
  ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
  ck_assert_int_eq(chdir(g_dir), 0);
  int rc = call(cmd_report, "report", "hostile.csv", "--plots", "plots", "-o", "hostile.md", NULL);
  ck_assert_int_eq(chdir(cwd), 0);
  setenv("PATH", old_path ? old_path : "/usr/bin:/bin", 1);
  ck_assert_int_eq(rc, 0);
  ck_assert_msg(access(pwned, F_OK) != 0, "a shell ran a command from a model name");
  ck_assert_msg(access(pwned2, F_OK) != 0, "a command ran from a policy name");
  /* gnuplot was called, once, with exactly one argument */
  f = fopen(log, "r");
  ck_assert_ptr_nonnull(f);
  char line[64];
  ck_assert_ptr_nonnull(fgets(line, sizeof line, f));
  ck_assert_str_eq(line, "1\n");
  fclose(f);
  /* the script and data stayed inside the plots directory, and every line
   * of the script is a command of its own (no string broke out) */
  DIR *d = opendir(plots);
  ck_assert_ptr_nonnull(d);
  int n_gp = 0;
  for (struct dirent *de; (de = readdir(d)) != NULL;) {
    if (!strstr(de->d_name, ".gp")) continue;
    n_gp++;
    char gp[2400];
    snprintf(gp, sizeof gp, "%s/%s", plots, de->d_name);
    f = fopen(gp, "r");
    ck_assert_ptr_nonnull(f);
    char l[4096];
    bool bars = false, titled = false;
    while (fgets(l, sizeof l, f)) {
      ck_assert_msg(!strncmp(l, "set ", 4) || !strncmp(l, "plot ", 5), "script line: %s", l);
      bars |= strstr(l, "yerrorbars") != NULL;
      titled |= !strncmp(l, "set title", 9) && strstr(l, "batch 1, budget capacity") != NULL;
    }
    fclose(f);
    if (strstr(de->d_name, "-scatter.gp")) continue; /* the per-model scatter: lines checked */
    ck_assert(bars && titled);
    /* the OOM row stays in the plot, labelled */
    char dat[2400];
    snprintf(dat, sizeof dat, "%s/%s", plots, de->d_name);
    strcpy(strstr(dat, ".gp"), ".dat");
    f = fopen(dat, "r");
    ck_assert_ptr_nonnull(f);
    char all[8192];
    size_t n = fread(all, 1, sizeof all - 1, f);
    all[n] = '\0';
    fclose(f);
    ck_assert_ptr_nonnull(strstr(all, "\"gpu-only (OOM)\" 0"));
    ck_assert_ptr_nonnull(strstr(all, "\"ondemand\" 10 9 12"));
  }
  closedir(d);
  ck_assert_int_eq(n_gp, 2); /* the table's bars and the model's scatter */
}
END_TEST

/* report --figure: a PNG (its magic bytes) of the first table with no
 * intermediate files left, when gnuplot is there; exit 1 without it.
 * --plots adds the scatter per model and the batch plot per workload. */
START_TEST(report_figure_and_plots) {
  char cmd[2048], out[4096];
  const bool have = tu_run("command -v gnuplot >/dev/null 2>&1", out, sizeof out) == 0;
  write_file("bsuite.json",
             "{\"name\": \"b\", \"models\": [\"ci-small\"], \"policies\": [\"gpu-only\", "
             "\"pregated\"], \"workloads\": [{\"name\": \"w\", \"prompt_len\": 4, \"gen_len\": 4, "
             "\"batch\": [1, 2]}]}");
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("bsuite.json"), "-o", tmp_path("bs"), "--quiet", NULL), 0);
  char csv[1200], png[1200], dir[1200];
  snprintf(csv, sizeof csv, "%s.csv", tmp_path("bs"));
  snprintf(png, sizeof png, "%s", tmp_path("fig.png"));
  snprintf(dir, sizeof dir, "%s", tmp_path("plots"));
  int rc = call(cmd_report, "report", csv, "--figure", png, "--plots", dir, "-o", tmp_path("r.md"), NULL);
  if (!have) {
    ck_assert_int_eq(rc, 1);
    return;
  }
  ck_assert_int_eq(rc, 0);
  FILE *f = fopen(png, "rb");
  ck_assert_ptr_nonnull(f);
  unsigned char magic[8] = {0};
  ck_assert_uint_eq(fread(magic, 1, 8, f), 8);
  fclose(f);
  ck_assert_int_eq(memcmp(magic, "\x89PNG\r\n\x1a\n", 8), 0);
  snprintf(cmd, sizeof cmd, "%s.gp", png);
  ck_assert_int_ne(access(cmd, F_OK), 0);
  snprintf(cmd, sizeof cmd, "%s/ci-small-scatter.png", dir);
  ck_assert_int_eq(access(cmd, F_OK), 0);
  snprintf(cmd, sizeof cmd, "%s/ci-small-w-batch.png", dir);
  ck_assert_int_eq(access(cmd, F_OK), 0);
}
END_TEST

/* ---- report --plots: hostile names against a real gnuplot, and exit codes */

static char g_saved_cwd[4096], g_saved_path[8192];

/* Runs the report from g_dir (relative names: an injected command would
 * create its marker there), with bin (NULL: none) first on PATH. */
static void report_enter(const char *bin) {
  ck_assert_ptr_nonnull(getcwd(g_saved_cwd, sizeof g_saved_cwd));
  const char *old = getenv("PATH");
  snprintf(g_saved_path, sizeof g_saved_path, "%s", old ? old : "/usr/bin:/bin");
  if (bin) {
    char path[8400];
    snprintf(path, sizeof path, "%s:%s", bin, g_saved_path);
    setenv("PATH", path, 1);
  }
  ck_assert_int_eq(chdir(g_dir), 0);
}

static void report_leave(void) {
  ck_assert_int_eq(chdir(g_saved_cwd), 0);
  setenv("PATH", g_saved_path, 1);
}

/* One row of a plot table: batch, policy, cache slots ("" for none). */
static void plot_row(res_table *t, const char *model, const char *wl, const char *backend,
                     const char *batch, const char *policy, const char *slots) {
  res_row *r = res_table_add(t);
  res_set(r, "model", model);
  res_set(r, "workload", wl);
  res_set(r, "policy", policy);
  res_set(r, "routing", "conventional");
  res_set(r, "backend", backend);
  res_set(r, "device", "cpu: test");
  res_set(r, "device_mem_budget_bytes", "0");
  res_set(r, "batch", batch);
  res_set(r, "gen_len", "4");
  res_set(r, "requests", "1");
  res_set(r, "repetitions", "1");
  res_set(r, "status", "ok");
  res_set(r, "tokens_per_s", batch[0] == '1' ? "10" : "18");
  res_set(r, "tokens_per_s_min", "9");
  res_set(r, "tokens_per_s_max", "20");
  res_set(r, "peak_device_bytes", slots[0] ? "3000000" : "2000000");
  res_set(r, "h2d_bytes", slots[0] ? "4000" : "9000");
  if (slots[0]) res_set(r, "cache_slots", slots);
}

/* A results file whose every name a plot shows is hostile to gnuplot:
 * two batches (the batch plot), a cache policy (the cache plot). */
static void hostile_plot_csv(const char *name) {
  const char *model = "m`touch PWNED1`$(touch PWNED2)\"; system(\"touch PWNED3\"); '\n@x";
  const char *wl = "w`touch PWNED4`'\"\nsystem \"touch PWNED5\"\n@GPVAL_PWD";
  const char *backend = "cpu`touch PWNED6`";
  const char *pol = "p`touch PWNED7`\",system('touch PWNED8'),\"";
  char cached[256];
  snprintf(cached, sizeof cached, "%s+lru:4", pol);
  res_table t;
  res_table_init(&t);
  const char *batches[2] = {"1", "2"};
  for (int b = 0; b < 2; b++) {
    plot_row(&t, model, wl, backend, batches[b], "gpu-only", "");
    plot_row(&t, model, wl, backend, batches[b], "pregated", "");
    plot_row(&t, model, wl, backend, batches[b], pol, "");
    plot_row(&t, model, wl, backend, batches[b], cached, "4");
  }
  moe_error err = {0};
  ck_assert(res_write_csv(tmp_path(name), &t, &err) == MOE_OK);
  res_table_free(&t);
}

static long file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* Hostile model, workload, backend and policy names (backquotes, $(...),
 * system(), quotes, newlines, @ macros) run nothing through a real
 * gnuplot, and every plot is still drawn.  Skipped without gnuplot. */
START_TEST(report_plots_hostile_names_real_gnuplot) {
  char out[256];
  if (tu_run("command -v gnuplot >/dev/null 2>&1", out, sizeof out) != 0) {
    printf("report_plots_hostile_names_real_gnuplot: gnuplot is not installed; skipped\n");
    return;
  }
  hostile_plot_csv("hostile.csv");
  report_enter(NULL);
  int rc = call(cmd_report, "report", "hostile.csv", "--plots", "plots", "--figure", "fig.png", "-o",
                "hostile.md", NULL);
  report_leave();
  for (int k = 1; k <= 8; k++) {
    char marker[64];
    snprintf(marker, sizeof marker, "PWNED%d", k);
    ck_assert_msg(access(tmp_path(marker), F_OK) != 0, "gnuplot ran an injected command: %s exists", marker);
  }
  ck_assert_int_eq(rc, 0);
  ck_assert_int_gt(file_size(tmp_path("fig.png")), 0);
  /* every plot the markdown lists exists and is not empty */
  FILE *f = fopen(tmp_path("hostile.md"), "r");
  ck_assert_ptr_nonnull(f);
  char line[4096];
  int listed = 0;
  while (fgets(line, sizeof line, f)) {
    for (char *p = strchr(line, '`'); p && strchr(p + 1, '`'); p = strchr(strchr(p + 1, '`') + 1, '`')) {
      char png[256];
      snprintf(png, sizeof png, "%.*s", (int)(strchr(p + 1, '`') - p - 1), p + 1);
      if (!strstr(png, ".png")) continue;
      listed++;
      ck_assert_msg(file_size(tmp_path(png)) > 0, "listed but not drawn: %s", png);
    }
  }
  fclose(f);
  ck_assert_int_ge(listed, 5); /* throughput, memory, cache, scatter, batch */
}
END_TEST

/* Writes an executable stand-in gnuplot in g_dir/bin with body after the
 * #! line; returns the bin directory. */
static const char *fake_gnuplot(const char *body) {
  static char bin[1100];
  snprintf(bin, sizeof bin, "%s/bin", g_dir);
  mkdir(bin, 0755);
  char fake[1200];
  snprintf(fake, sizeof fake, "%s/gnuplot", bin);
  FILE *f = fopen(fake, "w");
  ck_assert_ptr_nonnull(f);
  fprintf(f, "#!/bin/sh\n%s\n", body);
  fclose(f);
  ck_assert_int_eq(chmod(fake, 0755), 0);
  return bin;
}

/* Runs cmd_report on a NULL-terminated argument list from g_dir with bin
 * first on PATH; its stderr goes to g_dir/err.txt, read back into err. */
static int report_capturing(const char *bin, char *err, size_t cap, const char *const *args) {
  char *argv[16];
  int argc = 0;
  for (; args[argc] && argc < 15; argc++) argv[argc] = (char *)args[argc];
  argv[argc] = NULL;
  report_enter(bin);
  fflush(stdout);
  fflush(stderr);
  int saved = dup(2);
  FILE *ef = fopen("err.txt", "w");
  ck_assert(saved >= 0 && ef != NULL);
  dup2(fileno(ef), 2);
  fclose(ef);
  int rc = cmd_report(argc, argv);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  report_leave();
  FILE *f = fopen(tmp_path("err.txt"), "r");
  ck_assert_ptr_nonnull(f);
  size_t n = fread(err, 1, cap - 1, f);
  err[n] = '\0';
  fclose(f);
  return rc;
}

/* report --plots / --figure fail, naming the file, when a plot was not
 * drawn: gnuplot exits 1, gnuplot "succeeds" but writes nothing or a
 * truncated PNG (a full disk), the plots directory is a regular file or
 * lies under one; and the markdown is not written. */
START_TEST(report_plots_fail_when_not_drawn) {
  static const char *const bodies[] = {
      "exit 1",
      "exit 0",
      /* the PNG's first 8 bytes only, as on a full disk, and exit 0 */
      ("sed -n \"s/^set output [\\\"']\\(.*\\)[\\\"']\\$/\\1/p\" \"$1\" | "
       "while read -r p; do printf '\\211PNG\\r\\n\\032\\n' > \"$p\"; done; exit 0"),
  };
  results_file("r.csv", RES_SCHEMA_VERSION, "1000", "10", true, "ok");
  char err[4096];
  for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
    const char *bin = fake_gnuplot(bodies[i]);
    const char *plots[] = {"report", "r.csv", "--plots", "plots", "-o", "r.md", NULL};
    int rc = report_capturing(bin, err, sizeof err, plots);
    ck_assert_msg(rc != 0, "gnuplot body %zu: exit 0 for plots never drawn", i);
    ck_assert_msg(strstr(err, "plots/") && strstr(err, ".png"), "body %zu: error names no file: %s", i, err);
    ck_assert_msg(access(tmp_path("r.md"), F_OK) != 0, "body %zu: the markdown was written", i);
    const char *fig[] = {"report", "r.csv", "--figure", "fig.png", "-o", "r.md", NULL};
    rc = report_capturing(bin, err, sizeof err, fig);
    ck_assert_msg(rc != 0, "gnuplot body %zu: --figure exit 0 for a figure never drawn", i);
    ck_assert_msg(strstr(err, "fig.png") != NULL, "body %zu: error names no file: %s", i, err);
    ck_assert_msg(access(tmp_path("r.md"), F_OK) != 0, "body %zu: the markdown was written", i);
  }
  /* a plots "directory" that is a regular file, or lies under one: fails
   * for root too */
  const char *bin = fake_gnuplot("exit 0");
  write_file("afile", "x");
  const char *dirs[] = {"afile", "afile/plots"};
  for (size_t i = 0; i < 2; i++) {
    const char *args[] = {"report", "r.csv", "--plots", dirs[i], "-o", "r.md", NULL};
    int rc = report_capturing(bin, err, sizeof err, args);
    ck_assert_msg(rc != 0, "--plots %s: exit 0", dirs[i]);
    ck_assert_msg(strstr(err, "afile") != NULL, "--plots %s: error names no file: %s", dirs[i], err);
    ck_assert_msg(access(tmp_path("r.md"), F_OK) != 0, "--plots %s: the markdown was written", dirs[i]);
  }
}
END_TEST

/* Plot paths go into gnuplot's script: a character outside the safe set
 * (a quote, '|', '<', '`', '$', a newline...) is refused with exit 2 and
 * the character named; nothing runs. */
START_TEST(report_refuses_unsafe_plot_paths) {
  results_file("r.csv", RES_SCHEMA_VERSION, "1000", "10", true, "ok");
  static const char *const bad[][2] = {
      {"--figure", "|touch PWNED1"}, {"--figure", "f`touch PWNED2`.png"},
      {"--plots", "<touch PWNED3;"}, {"--plots", "p'q"},
      {"--plots", "p\"q"},           {"--figure", "a\nb.png"},
      {"--plots", "$HOME"},          {"--plots", ""},
  };
  char err[4096];
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    const char *args[] = {"report", "r.csv", bad[i][0], bad[i][1], "-o", "r.md", NULL};
    int rc = report_capturing(NULL, err, sizeof err, args);
    ck_assert_msg(rc == 2, "%s '%s': exit %d, want 2 (%s)", bad[i][0], bad[i][1], rc, err);
    ck_assert_msg(strstr(err, bad[i][0]) != NULL, "%s '%s': message: %s", bad[i][0], bad[i][1], err);
    ck_assert_msg(access(tmp_path("r.md"), F_OK) != 0, "case %zu: the markdown was written", i);
  }
  for (int k = 1; k <= 3; k++) {
    char marker[64];
    snprintf(marker, sizeof marker, "PWNED%d", k);
    ck_assert_msg(access(tmp_path(marker), F_OK) != 0, "a plot path ran a command: %s exists", marker);
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("harness_report");
  TCase *tc = tcase_create("harness_report");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, report_plots_never_run_a_shell);
  tcase_add_test(tc, report_figure_and_plots);
  tcase_add_test(tc, report_plots_hostile_names_real_gnuplot);
  tcase_add_test(tc, report_plots_fail_when_not_drawn);
  tcase_add_test(tc, report_refuses_unsafe_plot_paths);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
