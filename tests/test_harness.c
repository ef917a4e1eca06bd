/* The harness: suite and workload parsing errors, CSV/JSON round trips read
 * back with libcsv and jansson, compare's verdicts and exit codes, sweep
 * resume, report. */
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
#include "testutil.h"

static char g_dir[512];
static void setup(void) { ck_assert_ptr_nonnull(tu_tempdir(g_dir, sizeof g_dir)); }
static void teardown(void) { tu_rmtree(g_dir); }

static const char *tmp_path(const char *name) {
  static char p[4][1024];
  static int k;
  k = (k + 1) % 4;
  snprintf(p[k], sizeof p[k], "%s/%s", g_dir, name);
  return p[k];
}

static void write_file(const char *name, const char *text) {
  FILE *f = fopen(tmp_path(name), "w");
  ck_assert_ptr_nonnull(f);
  fputs(text, f);
  fclose(f);
}

/* Runs a subcommand in-process with a NULL-terminated argument list. */
static int call(int (*cmd)(int, char **), ...) {
  char *argv[32];
  int argc = 0;
  va_list ap;
  va_start(ap, cmd);
  const char *a;
  while ((a = va_arg(ap, const char *)) != NULL && argc < 31) argv[argc++] = (char *)a;
  va_end(ap);
  argv[argc] = NULL;
  fflush(stdout);
  return cmd(argc, argv);
}

START_TEST(shipped_suites_and_workloads_parse) {
  const char *suites[] = {"ci", "headline", "paper", "batch"};
  for (size_t i = 0; i < 4; i++) {
    suite *s = calloc(1, sizeof *s);
    moe_error err = {0};
    ck_assert_msg(suite_load(s, suites[i], &err) == MOE_OK, "%s", err.msg);
    ck_assert_int_gt(s->n_models, 0);
    ck_assert_int_gt(s->n_policies, 0);
    free(s);
  }
  workload w;
  moe_error err = {0};
  ck_assert(workload_load(&w, "paper", &err) == MOE_OK);
  ck_assert_int_eq(w.prompt_len, 256);
  ck_assert_int_eq(w.gen_len, 256);
  ck_assert_int_eq(w.batches[0], 1);
  ck_assert(workload_load(&w, "batch-sweep", &err) == MOE_OK);
  ck_assert_int_eq(w.n_batches, 4);
  ck_assert_int_eq(w.batches[3], 64);
  ck_assert(workload_load(&w, "file-prompts", &err) == MOE_OK);
  ck_assert_ptr_nonnull(strstr(w.token_file, "prompts-example.txt"));
}
END_TEST

START_TEST(suite_errors_name_file_and_field) {
  static const struct {
    const char *text, *needle;
    moe_status code;
  } cases[] = {
      {"{\"name\": \"x\", \"models\": [\"ci-small\"]", "malformed JSON", MOE_ERR_FORMAT},
      {"{\"name\": \"x\", \"policies\": [\"ondemand\"], \"workloads\": [\"ci\"]}", "'models'", MOE_ERR_FORMAT},
      {"{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\"], \"workloads\": []}",
       "'workloads'", MOE_ERR_FORMAT},
      {"{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\"], \"workloads\": [\"ci\"], "
       "\"device_mem\": [\"lots\"]}", "device_mem", MOE_ERR_FORMAT},
      {"{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\"], \"workloads\": [\"ci\"], "
       "\"backend\": \"t p u\"}", "'backend'", MOE_ERR_FORMAT},
      /* duplicate names would make two rows share one key */
      {"{\"name\": \"x\", \"models\": [\"ci-small\", \"ci-small\"], \"policies\": [\"ondemand\"], "
       "\"workloads\": [\"ci\"]}", "'ci-small' twice", MOE_ERR_FORMAT},
      {"{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\", \"ondemand\"], "
       "\"workloads\": [\"ci\"]}", "'ondemand' twice", MOE_ERR_FORMAT},
      {"{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\"], "
       "\"workloads\": [\"ci\", \"ci\"]}", "two workloads are named 'ci'", MOE_ERR_FORMAT},
      {"{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\"], \"workloads\": [\"ci\"], "
       "\"device_mem\": [\"1MiB\", \"1048576\"]}", "same budget twice", MOE_ERR_FORMAT},
      {"{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\"], \"workloads\": "
       "[{\"name\": \"w\", \"batch\": [2, 2], \"prompt_len\": 4, \"gen_len\": 4}]}", "2 twice", MOE_ERR_FORMAT},
      /* caps are the same in every form: a scalar batch too, and the CLI's */
      {"{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\"], \"workloads\": "
       "[{\"name\": \"w\", \"batch\": 5000, \"prompt_len\": 4, \"gen_len\": 4}]}", "1..4096", MOE_ERR_FORMAT},
      {"{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\"], \"workloads\": [\"ci\"], "
       "\"repetitions\": 101}", "1..100", MOE_ERR_FORMAT},
      {"{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\"], \"workloads\": [\"ci\"], "
       "\"link_gbps\": 1e-9}", "'link_gbps'", MOE_ERR_FORMAT},
      {"{\"name\": \"x\", \"models\": [\"\"], \"policies\": [\"ondemand\"], \"workloads\": [\"ci\"]}",
       "must be a name", MOE_ERR_FORMAT},
      /* a typo is an error with a suggestion, never a silent default */
      {"{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\"], \"workloads\": [\"ci\"], "
       "\"repetitons\": 5}", "unknown field 'repetitons' (did you mean 'repetitions'?)", MOE_ERR_FORMAT},
      {"{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\"], \"workloads\": "
       "[{\"name\": \"w\", \"prompt_len\": 4, \"gen_len\": 4, \"btach\": 2}]}", "did you mean 'batch'", MOE_ERR_FORMAT},
      {"{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\"], \"workloads\": "
       "[{\"name\": \"w\", \"prompt_len\": 4, \"gen_len\": 4, \"tokens\": {\"source\": \"random\", \"sed\": 3}}]}",
       "did you mean 'seed'", MOE_ERR_FORMAT},
      {"{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\"], \"workloads\": [\"ci\"], "
       "\"colour\": 1}", "unknown field 'colour'", MOE_ERR_FORMAT},
      {"{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\"], \"workloads\": "
       "[{\"name\": \"w\", \"batch\": 0, \"prompt_len\": 4, \"gen_len\": 4}]}", "'batch'", MOE_ERR_FORMAT},
      {"{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\"], \"workloads\": "
       "[{\"name\": \"w\", \"prompt_len\": 4}]}", "'gen_len'", MOE_ERR_FORMAT},
      {"{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\"], \"workloads\": "
       "[{\"name\": \"w\", \"prompt_len\": 4, \"gen_len\": 4, \"tokens\": {\"source\": \"web\"}}]}",
       "'source'", MOE_ERR_FORMAT},
      {"{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\"], \"workloads\": [\"nope\"]}",
       "nope.json", MOE_ERR_IO},
      {"{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\"], \"workloads\": [\"ci\"], "
       "\"repetitions\": -1}", "'repetitions'", MOE_ERR_FORMAT},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char name[32];
    snprintf(name, sizeof name, "suite%zu.json", i);
    write_file(name, cases[i].text);
    suite *s = calloc(1, sizeof *s);
    moe_error err = {0};
    moe_status st = suite_load(s, tmp_path(name), &err);
    ck_assert_msg(st == cases[i].code, "case %zu: %s (%s)", i, moe_status_name(st), err.msg);
    ck_assert_msg(strstr(err.msg, cases[i].needle) != NULL, "case %zu: '%s' lacks '%s'", i, err.msg,
                  cases[i].needle);
    if (cases[i].code == MOE_ERR_FORMAT)
      ck_assert_msg(strstr(err.msg, name) != NULL, "case %zu: '%s' lacks the file name", i, err.msg);
    free(s);
  }
  /* an unknown policy is refused by sweep before any run */
  write_file("badpol.json", "{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"lifo\"], "
                            "\"workloads\": [\"ci\"]}");
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("badpol.json"), "-o", tmp_path("never"), NULL), 1);
  ck_assert_int_ne(access(tmp_path("never.csv"), F_OK), 0);
  /* so is a backend this build does not have */
  write_file("badbe.json", "{\"name\": \"x\", \"models\": [\"ci-small\"], \"policies\": [\"ondemand\"], "
                           "\"workloads\": [\"ci\"], \"backend\": \"tpu\"}");
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("badbe.json"), "-o", tmp_path("never"), NULL), 1);
  ck_assert_int_ne(access(tmp_path("never.csv"), F_OK), 0);
}
END_TEST

START_TEST(csv_and_json_round_trip) {
  res_table t;
  res_table_init(&t);
  res_row *r = res_table_add(&t);
  res_set(r, "model", "m,1");           /* a comma: must be quoted */
  res_set(r, "workload", "w \"q\"");    /* quotes: must be escaped */
  res_set(r, "policy", "ondemand");
  res_set(r, "status", "ok");
  res_set(r, "peak_device_bytes", "123456789012");
  res_set(r, "tokens_per_s", "12.5");
  r = res_table_add(&t);
  res_set(r, "model", "m2");
  res_set(r, "status", "OOM");
  res_set(r, "error", "line one, with comma");
  moe_error err = {0};
  ck_assert(res_write_csv(tmp_path("rt.csv"), &t, &err) == MOE_OK);
  ck_assert(res_write_json(tmp_path("rt.json"), &t, NULL, &err) == MOE_OK);
  /* no temporary file is left behind */
  DIR *dd = opendir(g_dir);
  ck_assert_ptr_nonnull(dd);
  for (struct dirent *de; (de = readdir(dd)) != NULL;)
    ck_assert_msg(strstr(de->d_name, ".tmp") == NULL, "left behind: %s", de->d_name);
  closedir(dd);
  res_table back;
  ck_assert_msg(res_read_csv(tmp_path("rt.csv"), &back, &err) == MOE_OK, "%s", err.msg);
  ck_assert_uint_eq(back.n, 2);
  for (size_t i = 0; i < 2; i++)
    for (size_t c = 0; c < res_ncols; c++) ck_assert_str_eq(back.rows[i].v[c], t.rows[i].v[c]);
  json_error_t je;
  json_t *j = json_load_file(tmp_path("rt.json"), 0, &je);
  ck_assert_ptr_nonnull(j);
  ck_assert_str_eq(json_string_value(json_object_get(j, "schema_version")), RES_SCHEMA_VERSION);
  json_t *rows = json_object_get(j, "rows");
  ck_assert_uint_eq(json_array_size(rows), 2);
  json_t *r0 = json_array_get(rows, 0);
  ck_assert(json_is_integer(json_object_get(r0, "peak_device_bytes")));
  ck_assert_int_eq(json_integer_value(json_object_get(r0, "peak_device_bytes")), 123456789012LL);
  ck_assert(json_is_real(json_object_get(r0, "tokens_per_s")));
  ck_assert(json_is_null(json_object_get(r0, "ttft_s")));
  ck_assert_str_eq(json_string_value(json_object_get(r0, "model")), "m,1");
  json_decref(j);
  res_table_free(&back);
  res_table_free(&t);
  /* malformed files are refused with file and line */
  char ragged[4096] = "";
  for (size_t c = 0; c < res_ncols; c++) {
    if (c) strcat(ragged, ",");
    strcat(ragged, res_columns[c].name);
  }
  strcat(ragged, "\n\"" RES_SCHEMA_VERSION "\",\"a\"\n");
  write_file("ragged.csv", ragged);
  moe_error_clear(&err);
  ck_assert_int_eq(res_read_csv(tmp_path("ragged.csv"), &back, &err), MOE_ERR_FORMAT);
  ck_assert_ptr_nonnull(strstr(err.msg, "ragged.csv:2"));
  write_file("other.csv", "a,b\n1,2\n");
  moe_error_clear(&err);
  ck_assert_int_eq(res_read_csv(tmp_path("other.csv"), &back, &err), MOE_ERR_FORMAT);
}
END_TEST

/* Builds a small results file with given values for two rows. */
static void results_file_dev(const char *name, const char *schema, const char *bytes_a,
                             const char *tps_a, bool with_b, const char *status_a,
                             const char *device, const char *spread) {
  res_table t;
  res_table_init(&t);
  const char *pols[2] = {"ondemand", "pregated"};
  for (int i = 0; i < (with_b ? 2 : 1); i++) {
    res_row *r = res_table_add(&t);
    res_set(r, "schema_version", schema);
    res_set(r, "model", "m");
    res_set(r, "model_seed", "1");
    res_set(r, "dtype", "f32");
    res_set(r, "workload", "w");
    res_set(r, "policy", pols[i]);
    res_set(r, "routing", "conventional");
    res_set(r, "backend", "cpu");
    res_set(r, "device", device);
    res_set(r, "threads", "1");
    res_set(r, "link_gbps", "0");
    res_set(r, "device_mem_budget_bytes", "0");
    res_set(r, "batch", "1");
    res_set(r, "prompt_len", "4");
    res_set(r, "gen_len", "4");
    res_set(r, "requests", "1");
    res_set(r, "prompt_seed", "1");
    res_set(r, "repetitions", "3");
    res_set(r, "status", i == 0 ? status_a : "ok");
    res_set(r, "rel_spread", spread);
    res_set(r, "h2d_bytes", i == 0 ? bytes_a : "500");
    res_set(r, "tokens_per_s", i == 0 ? tps_a : "10");
  }
  moe_error err = {0};
  ck_assert(res_write_csv(tmp_path(name), &t, &err) == MOE_OK);
  res_table_free(&t);
}

static void results_file(const char *name, const char *schema, const char *bytes_a,
                         const char *tps_a, bool with_b, const char *status_a) {
  results_file_dev(name, schema, bytes_a, tps_a, with_b, status_a, "cpu: test", "0");
}

START_TEST(compare_verdicts) {
  results_file("base.csv", RES_SCHEMA_VERSION, "1000", "10", true, "ok");
  /* identical: 0 */
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("base.csv"), NULL), 0);
  /* deterministic figure worse by one byte: regression, 1 */
  results_file("worse.csv", RES_SCHEMA_VERSION, "1001", "10", true, "ok");
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("worse.csv"), NULL), 1);
  /* better: improvement passes */
  results_file("better.csv", RES_SCHEMA_VERSION, "900", "30", true, "ok");
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("better.csv"), NULL), 0);
  /* wall clock 20% slower: inside the default 25%, outside an explicit 10% */
  results_file("slower.csv", RES_SCHEMA_VERSION, "1000", "8", true, "ok");
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("slower.csv"), NULL), 0);
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("slower.csv"),
                        "--tolerance", "tokens_per_s=10%", NULL), 1);
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("slower.csv"),
                        "--tolerance", "tokens_per_s=0.1", NULL), 1); /* a fraction, the same rule */
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("slower.csv"),
                        "--tolerance", "measured=10%", "--deterministic-only", NULL), 0);
  /* noise-aware: the same 20% slowdown from noisy rows (spread 0.15 each) is noise */
  results_file_dev("noisy-base.csv", RES_SCHEMA_VERSION, "1000", "10", true, "ok", "cpu: test", "0.15");
  results_file_dev("noisy-slow.csv", RES_SCHEMA_VERSION, "1000", "8", true, "ok", "cpu: test", "0.15");
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("noisy-base.csv"), tmp_path("noisy-slow.csv"),
                        "--tolerance", "tokens_per_s=10%", NULL), 0);
  /* a byte count may be given a tolerance too */
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("worse.csv"),
                        "--tolerance", "h2d_bytes=1%", NULL), 0);
  /* ok -> OOM is a regression */
  results_file("oom.csv", RES_SCHEMA_VERSION, "1000", "10", true, "OOM");
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("oom.csv"), NULL), 1);
  /* a row missing from NEW fails unless allowed; a new row does not */
  results_file("fewer.csv", RES_SCHEMA_VERSION, "1000", "10", false, "ok");
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("fewer.csv"), NULL), 1);
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("fewer.csv"),
                        "--allow-missing", NULL), 0);
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("fewer.csv"), tmp_path("base.csv"), NULL), 0);
  /* schema major mismatch: an error (2), not a verdict */
  results_file("v1.csv", "1.0", "1000", "10", true, "ok");
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("v1.csv"), NULL), 2);
  /* another device: refused unless allowed */
  results_file_dev("gpu.csv", RES_SCHEMA_VERSION, "1000", "10", true, "ok", "NVIDIA H200", "0");
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("gpu.csv"), NULL), 2);
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("gpu.csv"),
                        "--allow-device-change", NULL), 0);
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("gpu.csv"),
                        "--deterministic-only", NULL), 0);
  /* inputs that differ are named: the rows do not pair */
  res_table lt;
  moe_error lerr = {0};
  ck_assert(res_read_csv(tmp_path("base.csv"), &lt, &lerr) == MOE_OK);
  for (size_t i = 0; i < lt.n; i++) res_set(&lt.rows[i], "link_gbps", "6");
  ck_assert(res_write_csv(tmp_path("link6.csv"), &lt, &lerr) == MOE_OK);
  res_table_free(&lt);
  char cmdline[4096], outbuf[16384];
  snprintf(cmdline, sizeof cmdline, "%s compare %s %s", MOEBENCH_PATH, tmp_path("base.csv"),
           tmp_path("link6.csv"));
  ck_assert_int_eq(tu_run(cmdline, outbuf, sizeof outbuf), 1); /* base rows missing */
  ck_assert_msg(strstr(outbuf, "link_gbps: base '0'; new '6'") != NULL, "%s", outbuf);
  /* bad usage */
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), NULL), 2);
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("base.csv"),
                        "--tolerance", "peak=x", NULL), 2);
  const char *bad_tols[] = {"measured=nan", "measured=inf", "measured=-1", "tokens_per_s=", "", "x=1"};
  for (size_t i = 0; i < sizeof bad_tols / sizeof bad_tols[0]; i++)
    ck_assert_msg(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("base.csv"),
                       "--tolerance", bad_tols[i], NULL) == 2, "tolerance '%s' accepted", bad_tols[i]);
}
END_TEST

/* The CI gate fails closed: garbage in NEW is an error (2), never a pass. */
/* A base file with one row whose max_logit_diff is VALUE. */
static void logit_diff_file(const char *name, const char *value) {
  res_table t;
  res_table_init(&t);
  res_row *r = res_table_add(&t);
  ck_assert_ptr_nonnull(r);
  const char *kv[][2] = {{"model", "m"},         {"model_seed", "1"},    {"dtype", "f32"},
                         {"workload", "w"},      {"policy", "pregated"}, {"routing", "pregated"},
                         {"backend", "cpu"},     {"device", "cpu: test"}, {"threads", "1"},
                         {"link_gbps", "0"},     {"batch", "1"},         {"prompt_len", "4"},
                         {"gen_len", "4"},       {"requests", "1"},      {"repetitions", "3"},
                         {"status", "ok"},       {"max_logit_diff", value}};
  for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++) res_set(r, kv[i][0], kv[i][1]);
  moe_error err = {0};
  ck_assert(res_write_csv(tmp_path(name), &t, &err) == MOE_OK);
  res_table_free(&t);
}

/* A computed float (max_logit_diff) moved in its sixth digit by another
 * CPU's summation order is not a regression (it was: exact match held it);
 * a real change is, and an explicit tolerance still rules. */
START_TEST(compare_float_sums_tolerate_summation_order) {
  logit_diff_file("ld-base.csv", "0.263246");
  logit_diff_file("ld-cpu.csv", "0.263247");
  logit_diff_file("ld-worse.csv", "0.2634");
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("ld-base.csv"), tmp_path("ld-cpu.csv"),
                        "--deterministic-only", NULL), 0);
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("ld-base.csv"), tmp_path("ld-worse.csv"),
                        "--deterministic-only", NULL), 1);
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("ld-base.csv"), tmp_path("ld-cpu.csv"),
                        "--tolerance", "max_logit_diff=0", NULL), 1);
}
END_TEST

/* A results file of one measured row: tokens/s tps, noisy flag (empty:
 * none). */
static void noisy_file(const char *name, const char *tps, const char *noisy) {
  logit_diff_file(name, "0.1");
  res_table t;
  moe_error err = {0};
  ck_assert(res_read_csv(tmp_path(name), &t, &err) == MOE_OK);
  res_set(&t.rows[0], "tokens_per_s", tps);
  res_set(&t.rows[0], "rel_spread", "0");
  res_set(&t.rows[0], "noisy", noisy);
  ck_assert(res_write_csv(tmp_path(name), &t, &err) == MOE_OK);
  res_table_free(&t);
}

/* A row measured on a busy machine has unknown times: 50% slower is
 * noise, not a regression; on a quiet one it is a regression.  And the
 * noise figures from two samples: other processes' cores, steal, flag. */
START_TEST(noisy_rows_are_not_regressions) {
  noisy_file("q-base.csv", "10", "0");
  noisy_file("q-slow.csv", "5", "0");
  noisy_file("n-slow.csv", "5", "1");
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("q-base.csv"), tmp_path("q-slow.csv"), NULL), 1);
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("q-base.csv"), tmp_path("n-slow.csv"), NULL), 0);
  /* 2 cores, 1 s of ticks (100 each): others busy 120, this process 50, steal 10 */
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  const noise_sample a = {true, 1000, 500, 0, 100}, b = {true, 1200, 520, 10, 150};
  const noise_figures f = noise_between(&a, &b);
  ck_assert(f.ok);
  ck_assert_double_eq_tol(f.steal_share, 10.0 / 200.0, 1e-12);
  ck_assert_double_eq_tol(f.other_cores, (200.0 - 20.0 - 10.0 - 50.0) / 200.0 * (double)cpus, 1e-12);
  ck_assert(f.noisy == (f.other_cores > NOISE_OTHER_CORES_MAX || f.steal_share > NOISE_STEAL_MAX));
  const noise_sample q = {true, 1200, 600, 0, 200};
  ck_assert(!noise_between(&a, &q).noisy); /* only this process and idle */
  ck_assert(!noise_between(&b, &a).ok);   /* no time passed */
  /* a measured row records them (long enough to span many of /proc/stat's
   * 10 ms ticks: a row shorter than a tick leaves them empty) */
  ck_assert_int_eq(call(cmd_run, "run", "--preset", "ci-small", "--gen-len", "64", "--prompt-len",
                        "32", "--reps", "3", "-o", tmp_path("nz"), NULL), 0);
  res_table t;
  moe_error err = {0};
  char csv[1200];
  snprintf(csv, sizeof csv, "%s.csv", tmp_path("nz"));
  ck_assert(res_read_csv(csv, &t, &err) == MOE_OK);
  const char *nz = res_get(&t.rows[0], "noisy");
  ck_assert_msg(!strcmp(nz, "0") || !strcmp(nz, "1"), "noisy '%s'", nz);
  ck_assert(atof(res_get(&t.rows[0], "other_cores")) >= 0);
  const double st = atof(res_get(&t.rows[0], "steal_share"));
  ck_assert(st >= 0 && st <= 1);
  res_table_free(&t);
}
END_TEST

START_TEST(compare_fails_closed) {
  results_file("base.csv", RES_SCHEMA_VERSION, "1000", "10", true, "ok");
  /* 0x10 and " 5" were taken by strtod (hex, leading space) */
  const char *bad_values[] = {"nan", "-5", "12abc", "inf", "1e999", " ", "0x10", " 5", "5e", ".", "+5"};
  for (size_t i = 0; i < sizeof bad_values / sizeof bad_values[0]; i++) {
    results_file("bad.csv", RES_SCHEMA_VERSION, bad_values[i], "10", true, "ok");
    ck_assert_msg(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("bad.csv"), NULL) == 2,
                  "value '%s' passed", bad_values[i]);
  }
  /* an empty value where BASE has one */
  results_file("empty.csv", RES_SCHEMA_VERSION, "", "10", true, "ok");
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("empty.csv"), NULL), 2);
  /* a duplicate row hiding a regression */
  FILE *f;
  results_file("worse.csv", RES_SCHEMA_VERSION, "2000", "10", true, "ok");
  char both[65536];
  FILE *a = fopen(tmp_path("base.csv"), "r"), *b = fopen(tmp_path("worse.csv"), "r");
  size_t na = fread(both, 1, sizeof both / 2, a);
  char line[32768];
  ck_assert_ptr_nonnull(fgets(line, sizeof line, b)); /* skip the header */
  size_t nb = fread(both + na, 1, sizeof both / 2 - 1, b);
  fclose(a);
  fclose(b);
  f = fopen(tmp_path("dup.csv"), "w");
  fwrite(both, 1, na + nb, f);
  fclose(f);
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("dup.csv"), NULL), 2);
  /* a file cut inside its last record */
  f = fopen(tmp_path("cut.csv"), "w");
  fwrite(both, 1, na - 3, f);
  fclose(f);
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("cut.csv"), NULL), 2);
  /* a metric column BASE has and NEW lacks */
  char hdr[8192];
  a = fopen(tmp_path("base.csv"), "r");
  ck_assert_ptr_nonnull(fgets(hdr, sizeof hdr, a));
  fclose(a);
  char *col = strstr(hdr, "\"h2d_bytes\"");
  ck_assert_ptr_nonnull(col);
  memcpy(col, "\"xxx_bytes\"", 11);
  f = fopen(tmp_path("nocol.csv"), "w");
  fputs(hdr, f);
  fclose(f);
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), tmp_path("nocol.csv"), NULL), 2);
  /* not a regular file */
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("base.csv"), "/dev/null", NULL), 2);
  /* a baseline with a header and no rows gates nothing: refused */
  f = fopen(tmp_path("header-only.csv"), "w");
  fputs(hdr, f);
  fclose(f);
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("header-only.csv"), tmp_path("base.csv"), NULL), 2);
}
END_TEST

static const char *k_tiny_suite =
    "{\"name\": \"tiny\", \"models\": [\"ci-small\"], \"policies\": [\"gpu-only\", \"ondemand\", "
    "\"pregated\"], \"workloads\": [{\"name\": \"w\", \"batch\": [1, 2], \"prompt_len\": 4, "
    "\"gen_len\": 4}], \"device_mem\": [\"capacity\", \"2MiB\"], \"repetitions\": 2, \"warmup\": 1}";

START_TEST(sweep_resume_and_report) {
  write_file("tiny.json", k_tiny_suite);
  char prefix[1024]; /* tmp_path reuses its buffers: keep a copy */
  snprintf(prefix, sizeof prefix, "%s", tmp_path("out/tiny"));
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("tiny.json"), "-o", prefix, "--quiet", NULL), 0);
  char csv[1100], json[1100];
  snprintf(csv, sizeof csv, "%s.csv", prefix);
  snprintf(json, sizeof json, "%s.json", prefix);
  res_table t;
  moe_error err = {0};
  ck_assert_msg(res_read_csv(csv, &t, &err) == MOE_OK, "%s", err.msg);
  ck_assert_uint_eq(t.n, 12); /* 2 batches x 2 budgets x 3 policies */
  int oom = 0;
  for (size_t i = 0; i < t.n; i++) {
    const res_row *r = &t.rows[i];
    if (!strcmp(res_get(r, "status"), "OOM")) {
      oom++;
      ck_assert_ptr_nonnull(strstr(res_get(r, "error"), "budget"));
      continue;
    }
    ck_assert_str_eq(res_get(r, "status"), "ok");
    /* measured peak equals the plan, for every policy and budget */
    ck_assert_str_eq(res_get(r, "peak_device_bytes"), res_get(r, "planned_device_bytes"));
    ck_assert_str_eq(res_get(r, "repetitions"), "2");
    /* parity measured against gpu-only, also under the budget where gpu-only is OOM */
    if (strcmp(res_get(r, "policy"), "gpu-only") != 0) {
      ck_assert(res_get(r, "token_match_rate")[0] != '\0');
      if (!strcmp(res_get(r, "policy"), "ondemand")) {
        ck_assert_str_eq(res_get(r, "token_match_rate"), "1.000000");
        ck_assert_str_eq(res_get(r, "max_logit_diff"), "0");
      }
    }
  }
  ck_assert_int_eq(oom, 2); /* gpu-only under 2 MiB, for both batches */
  json_error_t je;
  json_t *j = json_load_file(json, 0, &je);
  ck_assert_ptr_nonnull(j);
  json_t *meta = json_object_get(j, "metadata");
  ck_assert(json_is_string(json_object_get(meta, "start_time")));
  ck_assert(json_is_string(json_object_get(meta, "end_time")));
  ck_assert(json_is_array(json_object_get(meta, "argv")));
  ck_assert_uint_eq(json_array_size(json_object_get(j, "rows")), 12);
  json_decref(j);

  /* resume: mark one kept row, drop another; the kept row survives, the
   * dropped one is run again, nothing is duplicated */
  res_set(&t.rows[1], "error", "KEPT-BY-RESUME");
  char dropped_key[1024];
  res_key(&t.rows[5], dropped_key, sizeof dropped_key);
  for (size_t c = 0; c < res_ncols; c++) free(t.rows[5].v[c]);
  free(t.rows[5].v);
  memmove(&t.rows[5], &t.rows[6], (t.n - 6) * sizeof t.rows[0]);
  t.n--;
  ck_assert(res_write_csv(csv, &t, &err) == MOE_OK);
  res_table_free(&t);
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("tiny.json"), "-o", prefix, "--resume", "--quiet", NULL), 0);
  ck_assert(res_read_csv(csv, &t, &err) == MOE_OK);
  ck_assert_uint_eq(t.n, 12);
  ck_assert_str_eq(res_get(&t.rows[1], "error"), "KEPT-BY-RESUME");
  bool found = false;
  for (size_t i = 0; i < t.n; i++) {
    char k[1024];
    res_key(&t.rows[i], k, sizeof k);
    found |= strcmp(k, dropped_key) == 0;
  }
  ck_assert(found);
  res_table_free(&t);

  /* a changed suite: every row's inputs changed (gen_len), so every row runs
   * again and the old rows are dropped: the file holds this suite's rows */
  char changed[2048];
  snprintf(changed, sizeof changed, "%s", k_tiny_suite);
  char *g = strstr(changed, "\"gen_len\": 4");
  ck_assert_ptr_nonnull(g);
  g[11] = '5';
  write_file("tiny5.json", changed);
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("tiny5.json"), "-o", prefix, "--resume", "--quiet", NULL), 0);
  ck_assert(res_read_csv(csv, &t, &err) == MOE_OK);
  ck_assert_uint_eq(t.n, 12);
  for (size_t i = 0; i < t.n; i++) ck_assert_str_eq(res_get(&t.rows[i], "gen_len"), "5");
  res_table_free(&t);
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("tiny.json"), "-o", prefix, "--resume", "--quiet", NULL), 0);

  /* resume is as strict as compare: a kept row with a garbage figure is refused */
  ck_assert(res_read_csv(csv, &t, &err) == MOE_OK);
  res_set(&t.rows[2], "h2d_bytes", "nan");
  char bad_prefix[1100], bad_csv[1200];
  snprintf(bad_prefix, sizeof bad_prefix, "%s-bad", prefix);
  snprintf(bad_csv, sizeof bad_csv, "%s.csv", bad_prefix);
  ck_assert(res_write_csv(bad_csv, &t, &err) == MOE_OK);
  res_table_free(&t);
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("tiny.json"), "-o", bad_prefix, "--resume", "--quiet", NULL), 1);

  /* report: markdown with the paper's ratios */
  const char *md = tmp_path("report.md");
  ck_assert_int_eq(call(cmd_report, "report", csv, "--paper", "-o", md, NULL), 0);
  FILE *f = fopen(md, "r");
  ck_assert_ptr_nonnull(f);
  char buf[16384];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  fclose(f);
  ck_assert_ptr_nonnull(strstr(buf, "| pregated | pregated | ok |"));
  ck_assert_ptr_nonnull(strstr(buf, "| gpu-only | conventional | OOM |"));
  ck_assert_ptr_nonnull(strstr(buf, "pregated peak device memory vs gpu-only"));
}
END_TEST

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

/* Fault injection: the Nth device allocation, copy or event of each run
 * fails.  Every row ends as an error row naming the fault, the sweep goes
 * on, and the CSV and JSON are complete (ASan/LSan in CI: nothing leaks). */
START_TEST(injected_faults_end_as_error_rows) {
  write_file("tiny.json", k_tiny_suite);
  const char *faults[] = {"alloc:3", "alloc:12", "copy:1", "copy:7", "event:1", "event:5"};
  for (size_t i = 0; i < sizeof faults / sizeof faults[0]; i++) {
    char prefix[1100];
    snprintf(prefix, sizeof prefix, "%s/fault%zu", g_dir, i);
    setenv("MOE_CPU_FAULT", faults[i], 1);
    int rc = call(cmd_sweep, "sweep", tmp_path("tiny.json"), "-o", prefix, "--quiet", NULL);
    unsetenv("MOE_CPU_FAULT");
    ck_assert_int_eq(rc, 1); /* rows in error fail the sweep (every row is still written) */
    char csv[1200], json[1200];
    snprintf(csv, sizeof csv, "%s.csv", prefix);
    snprintf(json, sizeof json, "%s.json", prefix);
    res_table t;
    moe_error err = {0};
    ck_assert_msg(res_read_csv(csv, &t, &err) == MOE_OK, "%s: %s", faults[i], err.msg);
    ck_assert_uint_eq(t.n, 12);
    int errors = 0;
    for (size_t r = 0; r < t.n; r++)
      if (!strcmp(res_get(&t.rows[r], "status"), "error")) {
        errors++;
        ck_assert_ptr_nonnull(strstr(res_get(&t.rows[r], "error"), "injected fault"));
      }
    ck_assert_msg(errors > 0, "%s: no row failed", faults[i]);
    res_table_free(&t);
    json_error_t je;
    json_t *j = json_load_file(json, 0, &je);
    ck_assert_msg(j != NULL, "%s: %s", json, je.text);
    ck_assert_uint_eq(json_array_size(json_object_get(j, "rows")), 12);
    json_decref(j);
  }
}
END_TEST

/* Inputs that are not regular files (a FIFO nobody writes, a device) are
 * refused at once with one line, never read or waited on. */
START_TEST(inputs_must_be_regular_files) {
  char fifo[1100];
  snprintf(fifo, sizeof fifo, "%s/fifo.json", g_dir);
  ck_assert_int_eq(mkfifo(fifo, 0600), 0);
  moe_error err = {0};
  moe_config c;
  ck_assert_int_eq(moe_config_load(&c, fifo, &err), MOE_ERR_IO);
  ck_assert_ptr_nonnull(strstr(err.msg, "not a regular file"));
  suite *s = calloc(1, sizeof *s);
  moe_error_clear(&err);
  ck_assert_int_eq(suite_load(s, fifo, &err), MOE_ERR_IO);
  ck_assert_ptr_nonnull(strstr(err.msg, "not a regular file"));
  free(s);
  cli_preset p;
  moe_error_clear(&err);
  ck_assert_int_eq(cli_preset_load(&p, fifo, &err), MOE_ERR_IO);
  res_table t;
  moe_error_clear(&err);
  ck_assert_int_eq(res_read_csv(fifo, &t, &err), MOE_ERR_IO);
  int32_t *ids = NULL;
  int n = 0, len = 0;
  ck_assert_int_eq(cli_read_token_file(fifo, -1, &ids, &n, &len), -1);
  ck_assert_int_eq(cli_read_token_file("/dev/zero", -1, &ids, &n, &len), -1);
  ck_assert_int_eq(call(cmd_compare, "compare", fifo, fifo, NULL), 2);
}
END_TEST

/* A plugin runs everywhere a built-in does: built as docs/PLUGINS.md says,
 * named by its path (relative to the suite file) in a suite, it gets rows
 * with parity columns, and shows up in compare and report; run and
 * bench-policies take it with --policy-plugin. */
START_TEST(plugins_through_the_harness) {
  char dir[1100], cmd[4096], out[16384];
  snprintf(dir, sizeof dir, "%s/plugins", g_dir);
  ck_assert_int_eq(mkdir(dir, 0755), 0);
  snprintf(cmd, sizeof cmd,
           "cc -std=c11 -O2 -fPIC -shared -I %s/engine/include %s/baselines/plugins/lru_cache.c "
           "-o %s/lru.so",
           MOE_SOURCE_DIR, MOE_SOURCE_DIR, dir);
  ck_assert_msg(tu_run(cmd, out, sizeof out) == 0, "%s", out);
  write_file("plugsuite.json",
             "{\"name\": \"plug\", \"models\": [\"ci-small\"], \"policies\": [\"gpu-only\", "
             "\"plugins/lru.so\"], \"workloads\": [{\"name\": \"w\", \"prompt_len\": 4, \"gen_len\": 4}], "
             "\"device_mem\": [\"capacity\", \"4MiB\"]}");
  const char *prefix = tmp_path("plugout");
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("plugsuite.json"), "-o", prefix, "--quiet", NULL), 0);
  char csv[1200];
  snprintf(csv, sizeof csv, "%s.csv", prefix);
  res_table t;
  moe_error err = {0};
  ck_assert_msg(res_read_csv(csv, &t, &err) == MOE_OK, "%s", err.msg);
  ck_assert_uint_eq(t.n, 4);
  int plugin_rows = 0;
  for (size_t i = 0; i < t.n; i++)
    if (!strcmp(res_get(&t.rows[i], "policy"), "lru-cache")) {
      plugin_rows++;
      ck_assert_str_eq(res_get(&t.rows[i], "status"), "ok");
      ck_assert_str_eq(res_get(&t.rows[i], "token_match_rate"), "1.000000");
      ck_assert_str_eq(res_get(&t.rows[i], "max_logit_diff"), "0");
    }
  ck_assert_int_eq(plugin_rows, 2);
  res_table_free(&t);
  ck_assert_int_eq(call(cmd_compare, "compare", csv, csv, NULL), 0);
  ck_assert_int_eq(call(cmd_report, "report", csv, "-o", tmp_path("plug.md"), NULL), 0);
  FILE *f = fopen(tmp_path("plug.md"), "r");
  ck_assert_ptr_nonnull(f);
  size_t n = fread(out, 1, sizeof out - 1, f);
  out[n] = '\0';
  fclose(f);
  ck_assert_ptr_nonnull(strstr(out, "| lru-cache |"));
  /* run and bench-policies */
  snprintf(cmd, sizeof cmd, "%s/lru.so", dir);
  ck_assert_int_eq(call(cmd_run, "run", "--preset", "ci-small", "--policy-plugin", cmd, "--gen-len", "4",
                        "--prompt-len", "4", NULL), 0);
  ck_assert_int_eq(call(cmd_bench_policies, "bench-policies", "--preset", "ci-small", "--policies",
                        "gpu-only", "--policy-plugin", cmd, "--gen-len", "4", "--prompt-len", "4",
                        "--reps", "1", NULL), 0);
  /* a plugin path that does not load is one line, before any run */
  write_file("badplug.json",
             "{\"name\": \"plug\", \"models\": [\"ci-small\"], \"policies\": [\"plugins/none.so\"], "
             "\"workloads\": [\"ci\"]}");
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("badplug.json"), "-o", tmp_path("never2"), NULL), 1);
  ck_assert_int_ne(access(tmp_path("never2.csv"), F_OK), 0);
}
END_TEST

/* Copies a fixture checkpoint's two files into DIR (created). */
static void copy_checkpoint(const char *fixture, const char *dir) {
  char cmd[3000], out[4096];
  snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s/tests/fixtures/%s/config.json' "
           "'%s/tests/fixtures/%s/model.safetensors' '%s/'", dir, MOE_SOURCE_DIR, fixture,
           MOE_SOURCE_DIR, fixture, dir);
  ck_assert_msg(tu_run(cmd, out, sizeof out) == 0, "%s", out);
}

/* A suite may name checkpoint directories (relative to the suite file)
 * next to presets; each runs end to end, and a row's model is the
 * directory's name and a hash of its config and index, so two checkpoints
 * that differ (here only in config.json) never share a key. */
START_TEST(suites_take_checkpoint_directories) {
  char a[1100], b[1100];
  snprintf(a, sizeof a, "%s/ck/qwen", g_dir);
  snprintf(b, sizeof b, "%s/ck2/qwen", g_dir);
  copy_checkpoint("qwen2moe-tiny", a);
  copy_checkpoint("qwen2moe-tiny", b);
  char cfgpath[1200];
  snprintf(cfgpath, sizeof cfgpath, "%s/config.json", b);
  FILE *f = fopen(cfgpath, "a");
  ck_assert_ptr_nonnull(f);
  fputs("\n", f); /* the same model, another file */
  fclose(f);
  write_file("cksuite.json",
             "{\"name\": \"ck\", \"models\": [\"ck/qwen\", \"ck2/qwen\", \"ci-small\"], "
             "\"policies\": [\"gpu-only\", \"ondemand\"], \"workloads\": [{\"name\": \"w\", "
             "\"prompt_len\": 4, \"gen_len\": 4}]}");
  const char *prefix = tmp_path("ckout");
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("cksuite.json"), "-o", prefix, "--quiet", NULL), 0);
  char csv[1200];
  snprintf(csv, sizeof csv, "%s.csv", prefix);
  res_table t;
  moe_error err = {0};
  ck_assert_msg(res_read_csv(csv, &t, &err) == MOE_OK, "%s", err.msg);
  ck_assert_uint_eq(t.n, 6);
  const char *m0 = res_get(&t.rows[0], "model");
  char first[64] = "";
  int ck_rows = 0;
  for (size_t i = 0; i < t.n; i++) {
    const char *m = res_get(&t.rows[i], "model");
    ck_assert_str_eq(res_get(&t.rows[i], "status"), "ok");
    if (strncmp(m, "qwen@", 5) != 0) continue;
    ck_rows++;
    ck_assert_int_eq((int)strlen(m), 5 + 8);
    if (!first[0]) snprintf(first, sizeof first, "%s", m);
  }
  ck_assert_int_eq(ck_rows, 4);
  /* two checkpoint names, different */
  int other = 0;
  for (size_t i = 0; i < t.n; i++)
    other += strncmp(res_get(&t.rows[i], "model"), "qwen@", 5) == 0 &&
             strcmp(res_get(&t.rows[i], "model"), first) != 0;
  ck_assert_int_eq(other, 2);
  ck_assert_ptr_nonnull(m0);
  res_table_free(&t);
  /* run and bench-policies take --model-dir; a missing directory is one line */
  ck_assert_int_eq(call(cmd_run, "run", "--model-dir", a, "--gen-len", "4", "--prompt-len", "4", NULL), 0);
  ck_assert_int_eq(call(cmd_run, "run", "--model-dir", tmp_path("none"), NULL), 1);
  ck_assert_int_eq(call(cmd_run, "run", "--model-dir", a, "--preset", "ci-small", NULL), 2);
  write_file("badck.json", "{\"name\": \"ck\", \"models\": [\"nowhere/x\"], "
             "\"policies\": [\"gpu-only\"], \"workloads\": [\"ci\"]}");
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("badck.json"), "-o", tmp_path("never3"), NULL), 1);
}
END_TEST

/* sweep --shard K/N then merge: the merged file holds exactly the single
 * sweep's rows with the same deterministic figures; a missing shard, a
 * shard given twice and a bad --shard are refused and write nothing. */
START_TEST(sharded_sweep_merges_to_the_single_sweep) {
  char full[1100], all[1100], csv_full[1200], csv_all[1200], sh[3][1100];
  snprintf(full, sizeof full, "%s", tmp_path("full"));
  snprintf(all, sizeof all, "%s", tmp_path("all"));
  ck_assert_int_eq(call(cmd_sweep, "sweep", "ci", "-o", full, "--quiet", NULL), 0);
  for (int k = 0; k < 3; k++) {
    char spec[16];
    snprintf(sh[k], sizeof sh[k], "%s/shard%d", g_dir, k + 1);
    snprintf(spec, sizeof spec, "%d/3", k + 1);
    ck_assert_int_eq(call(cmd_sweep, "sweep", "ci", "--shard", spec, "-o", sh[k], "--quiet", NULL), 0);
  }
  ck_assert_int_eq(call(cmd_merge, "merge", sh[0], sh[1], sh[2], "-o", all, NULL), 0);
  snprintf(csv_full, sizeof csv_full, "%s.csv", full);
  snprintf(csv_all, sizeof csv_all, "%s.csv", all);
  res_table a, b;
  moe_error err = {0};
  ck_assert_msg(res_read_csv(csv_full, &a, &err) == MOE_OK, "%s", err.msg);
  ck_assert_msg(res_read_csv(csv_all, &b, &err) == MOE_OK, "%s", err.msg);
  ck_assert_uint_eq(a.n, b.n);
  ck_assert_uint_gt(a.n, 0);
  /* every row of the single sweep is in the merge, deterministic columns equal */
  for (size_t i = 0; i < a.n; i++) {
    long j = res_find(&b, &a.rows[i]);
    ck_assert_msg(j >= 0, "row %zu of the single sweep is missing from the merge", i);
    for (size_t c = 0; c < res_ncols; c++)
      if (res_columns[c].kind == RES_DETERMINISTIC || res_columns[c].kind == RES_KEY)
        ck_assert_msg(strcmp(a.rows[i].v[c], b.rows[j].v[c]) == 0, "row %zu column %s: %s vs %s", i,
                      res_columns[c].name, a.rows[i].v[c], b.rows[j].v[c]);
  }
  res_table_free(&a);
  res_table_free(&b);
  ck_assert_int_eq(call(cmd_compare, "compare", csv_full, csv_all, "--deterministic-only", NULL), 0);
  /* missing shard: exit 1, nothing written; repeated shard: exit 2 */
  ck_assert_int_eq(call(cmd_merge, "merge", sh[0], sh[2], "-o", tmp_path("part"), NULL), 1);
  ck_assert_int_ne(access(tmp_path("part.csv"), F_OK), 0);
  ck_assert_int_eq(call(cmd_merge, "merge", sh[0], sh[0], sh[1], sh[2], "-o", tmp_path("dup"), NULL), 2);
  ck_assert_int_ne(access(tmp_path("dup.csv"), F_OK), 0);
  ck_assert_int_eq(call(cmd_merge, "merge", sh[0], sh[2], "-o", tmp_path("part2"), "--allow-partial",
                        NULL), 1);
  ck_assert_int_eq(access(tmp_path("part2.csv"), F_OK), 0);
  ck_assert_int_eq(call(cmd_sweep, "sweep", "ci", "--shard", "4/3", "-o", tmp_path("x"), NULL), 2);
  ck_assert_int_eq(call(cmd_sweep, "sweep", "ci", "--shard", "0/3", "-o", tmp_path("x"), NULL), 2);
  ck_assert_int_eq(call(cmd_sweep, "sweep", "ci", "--shard", "1", "-o", tmp_path("x"), NULL), 2);
  ck_assert_int_eq(call(cmd_merge, "merge", "-o", tmp_path("x"), NULL), 2);
}
END_TEST

/* The Slurm scripts (harness/slurm): submit.sh submits the array of shards
 * and the merge; here through local-sbatch.sh, the stand-in that runs each
 * array task as a process (no Slurm on the test machines).  The merged
 * file equals a plain sweep of the suite on every deterministic figure; a
 * failing shard makes the submission fail before a merge. */
START_TEST(slurm_array_with_the_local_stand_in) {
  char cmd[4096], out[16384];
  snprintf(cmd, sizeof cmd,
           "cd '%s' && SBATCH=harness/slurm/local-sbatch.sh LOCAL_SBATCH_DIR='%s' MOEBENCH='%s' "
           "harness/slurm/submit.sh ci 3 '%s/cluster' 2>&1",
           MOE_SOURCE_DIR, g_dir, MOEBENCH_PATH, g_dir);
  ck_assert_msg(tu_run(cmd, out, sizeof out) == 0, "%s", out);
  ck_assert_int_eq(call(cmd_sweep, "sweep", "ci", "-o", tmp_path("plain"), "--quiet", NULL), 0);
  char a[1200], b[1200];
  snprintf(a, sizeof a, "%s.csv", tmp_path("plain"));
  snprintf(b, sizeof b, "%s/cluster/merged.csv", g_dir);
  ck_assert_int_eq(call(cmd_compare, "compare", a, b, "--deterministic-only", NULL), 0);
  res_table ta, tb;
  moe_error err = {0};
  ck_assert_msg(res_read_csv(a, &ta, &err) == MOE_OK, "%s", err.msg);
  ck_assert_msg(res_read_csv(b, &tb, &err) == MOE_OK, "%s", err.msg);
  ck_assert_uint_eq(ta.n, tb.n);
  res_table_free(&ta);
  res_table_free(&tb);
  /* a suite that does not exist: every shard fails, the submission too */
  snprintf(cmd, sizeof cmd,
           "cd '%s' && SBATCH=harness/slurm/local-sbatch.sh LOCAL_SBATCH_DIR='%s' MOEBENCH='%s' "
           "harness/slurm/submit.sh no-such-suite 2 '%s/cluster2' 2>&1",
           MOE_SOURCE_DIR, g_dir, MOEBENCH_PATH, g_dir);
  ck_assert_int_ne(tu_run(cmd, out, sizeof out), 0);
  snprintf(b, sizeof b, "%s/cluster2/merged.csv", g_dir);
  ck_assert_int_ne(access(b, F_OK), 0);
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

/* A workload naming eval windows gives every row its quality (schema
 * 2.2): conventional-routing policies equal gpu-only's figures, and the
 * change columns are against the gpu-only row; a missing eval file is one
 * line before any run. */
START_TEST(sweep_quality_columns) {
  write_file("ev.tokens", "# windows\n1 2 3 4 5 6 7 8\n8 7 6 5 4 3 2 1\n3 3 3 3 9 9 9 9\n");
  char text[1024];
  snprintf(text, sizeof text,
           "{\"name\": \"q\", \"models\": [\"ci-small\"], \"policies\": [\"gpu-only\", \"ondemand\", "
           "\"pregated\"], \"workloads\": [{\"name\": \"w\", \"prompt_len\": 4, \"gen_len\": 4, "
           "\"eval_tokens\": \"%s\", \"eval_windows\": 2}]}", tmp_path("ev.tokens"));
  write_file("qs.json", text);
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("qs.json"), "-o", tmp_path("qs-out"), "--quiet", NULL), 0);
  char csv[1200];
  snprintf(csv, sizeof csv, "%s.csv", tmp_path("qs-out"));
  res_table t;
  moe_error err = {0};
  ck_assert_msg(res_read_csv(csv, &t, &err) == MOE_OK, "%s", err.msg);
  ck_assert_uint_eq(t.n, 3);
  const char *ppl0 = NULL;
  for (size_t i = 0; i < t.n; i++) {
    const res_row *r = &t.rows[i];
    ck_assert_str_eq(res_get(r, "schema_version"), RES_SCHEMA_VERSION);
    ck_assert_str_eq(res_get(r, "eval_tokens"), "14"); /* 2 windows x 7 */
    ck_assert(res_get(r, "eval_perplexity")[0] && res_get(r, "eval_accuracy")[0]);
    if (!strcmp(res_get(r, "policy"), "gpu-only")) ppl0 = res_get(r, "eval_perplexity");
  }
  ck_assert_ptr_nonnull(ppl0);
  for (size_t i = 0; i < t.n; i++)
    if (!strcmp(res_get(&t.rows[i], "policy"), "ondemand")) {
      ck_assert_str_eq(res_get(&t.rows[i], "eval_perplexity"), ppl0);
      ck_assert_str_eq(res_get(&t.rows[i], "eval_perplexity_change"), "0");
    }
  res_table_free(&t);
  snprintf(text, sizeof text,
           "{\"name\": \"q\", \"models\": [\"ci-small\"], \"policies\": [\"gpu-only\"], "
           "\"workloads\": [{\"name\": \"w\", \"prompt_len\": 4, \"gen_len\": 4, "
           "\"eval_tokens\": \"%s\"}]}", tmp_path("none.tokens"));
  write_file("qs2.json", text);
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("qs2.json"), "-o", tmp_path("qs2-out"), "--quiet", NULL), 1);
}
END_TEST

/* A results file written before the pregate_lookahead key column (schema
 * 2.1) still reads, its rows keyed as lookahead 1 (the column's empty
 * default): compare and --resume keep working across the version. */
START_TEST(older_files_without_the_lookahead_column) {
  write_file("old.csv",
             "\"schema_version\",\"model\",\"model_seed\",\"dtype\",\"workload\",\"policy\","
             "\"routing\",\"backend\",\"device\",\"threads\",\"link_gbps\","
             "\"device_mem_budget_bytes\",\"batch\",\"prompt_len\",\"gen_len\",\"requests\","
             "\"prompt_seed\",\"repetitions\",\"status\",\"h2d_bytes\"\n"
             "\"2.1\",\"m\",\"1\",\"f32\",\"w\",\"ondemand\",\"conventional\",\"cpu\",\"cpu\","
             "\"1\",\"0\",\"0\",\"1\",\"4\",\"4\",\"1\",\"1\",\"1\",\"ok\",\"1000\"\n");
  res_table t;
  moe_error err = {0};
  ck_assert_msg(res_read_csv(tmp_path("old.csv"), &t, &err) == MOE_OK, "%s", err.msg);
  ck_assert_uint_eq(t.n, 1);
  ck_assert_str_eq(res_get(&t.rows[0], "pregate_lookahead"), "");
  res_table_free(&t);
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("old.csv"), tmp_path("old.csv"), NULL), 0);
}
END_TEST

/* Expert caches from suites and run: NAME+KIND:SIZE policy entries; rows
 * keep gpu-only's tokens, record the cache's slots and hit rate, and
 * move fewer bytes than the policy alone (the drop equals the hit rate
 * here: every miss costs one copy); malformed specs are refused. */
START_TEST(expert_caches_through_the_harness) {
  write_file("cache.json",
             "{\"name\": \"c\", \"models\": [\"ci-small\"], \"policies\": [\"gpu-only\", "
             "\"ondemand\", \"ondemand+lru:25%\", \"ondemand+lfu:16\", \"ondemand+static:25%\"], "
             "\"workloads\": [{\"name\": \"w\", \"prompt_len\": 8, \"gen_len\": 16}]}");
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("cache.json"), "-o", tmp_path("cache-out"), "--quiet", NULL), 0);
  char csv[1200];
  snprintf(csv, sizeof csv, "%s.csv", tmp_path("cache-out"));
  res_table t;
  moe_error err = {0};
  ck_assert_msg(res_read_csv(csv, &t, &err) == MOE_OK, "%s", err.msg);
  ck_assert_uint_eq(t.n, 5);
  double base = -1;
  for (size_t i = 0; i < t.n; i++)
    if (!strcmp(res_get(&t.rows[i], "policy"), "ondemand")) base = atof(res_get(&t.rows[i], "h2d_bytes"));
  ck_assert(base > 0);
  int cached = 0;
  for (size_t i = 0; i < t.n; i++) {
    const res_row *r = &t.rows[i];
    if (!strchr(res_get(r, "policy"), '+')) continue;
    cached++;
    ck_assert_str_eq(res_get(r, "status"), "ok");
    ck_assert_str_eq(res_get(r, "cache_slots"), "16"); /* 25% of 4 x 16 experts, or 16 */
    ck_assert_str_eq(res_get(r, "token_match_rate"), "1.000000");
    const double hit = atof(res_get(r, "expert_hit_rate")), bytes = atof(res_get(r, "h2d_bytes"));
    ck_assert_msg(hit > 0 && bytes < base, "%s: hit %g bytes %g vs %g", res_get(r, "policy"), hit,
                  bytes, base);
    ck_assert_msg(1.0 - bytes / base >= hit - 1e-5, "%s: bytes dropped %g, hit rate %g",
                  res_get(r, "policy"), 1.0 - bytes / base, hit);
  }
  ck_assert_int_eq(cached, 3);
  res_table_free(&t);
  write_file("badcache.json", "{\"name\": \"c\", \"models\": [\"ci-small\"], \"policies\": "
             "[\"ondemand+fifo:4\"], \"workloads\": [\"ci\"]}");
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("badcache.json"), "-o", tmp_path("nc"), NULL), 1);
  ck_assert_int_eq(call(cmd_run, "run", "--preset", "ci-small", "--policy", "ondemand+lru:0%", NULL), 2);
  ck_assert_int_eq(call(cmd_run, "run", "--preset", "ci-small", "--policy", "ondemand+lru:2MiB",
                        "--gen-len", "4", "--prompt-len", "4", NULL), 0);
}
END_TEST

/* Hardware profiles and moebench plan: every shipped profile loads with a
 * source for each figure; Switch-Large-128 does not fit the A100's 80 GiB
 * under gpu-only (the paper's OOM) and does under pregated; the planned
 * bytes of a small preset equal what a run of it measures; a profile
 * without a source is refused naming the field. */
START_TEST(hardware_profiles_and_plan) {
  char cmd[4096], out[16384];
  snprintf(cmd, sizeof cmd, "'%s' list hardware", MOEBENCH_PATH);
  ck_assert_msg(tu_run(cmd, out, sizeof out) == 0, "%s", out);
  const char *names[] = {"a100-80g-pcie4", "h100-pcie5", "h200", "rtx4090", "l4"};
  for (int i = 0; i < 5; i++) ck_assert_msg(strstr(out, names[i]) != NULL, "%s not listed", names[i]);
  snprintf(cmd, sizeof cmd, "'%s' plan --preset switch-large-128 --hardware a100-80g-pcie4", MOEBENCH_PATH);
  ck_assert_msg(tu_run(cmd, out, sizeof out) == 0, "%s", out);
  ck_assert_ptr_nonnull(strstr(out, "| gpu-only | 3072 | 105.37 | 103.08 | no (OOM) |"));
  ck_assert_ptr_nonnull(strstr(out, "| pregated | 2 | "));
  ck_assert_ptr_nonnull(strstr(strstr(out, "| pregated | 2 | "), "| yes |"));
  /* plan against measurement: ci-small under ondemand, batch 2, 8 + 8 */
  snprintf(cmd, sizeof cmd, "'%s' plan --preset ci-small --batch 2 --prompt-len 8 --gen-len 8", MOEBENCH_PATH);
  ck_assert_msg(tu_run(cmd, out, sizeof out) == 0, "%s", out);
  const char *row = strstr(out, "| ondemand | ");
  ck_assert_ptr_nonnull(row);
  int slots = 0;
  double gb = 0;
  ck_assert_int_eq(sscanf(row, "| ondemand | %d | %lf |", &slots, &gb), 2);
  ck_assert_int_eq(call(cmd_run, "run", "--preset", "ci-small", "--policy", "ondemand", "--batch", "2",
                        "--prompt-len", "8", "--gen-len", "8", "-o", tmp_path("planrun"), NULL), 0);
  char csv[1200];
  snprintf(csv, sizeof csv, "%s.csv", tmp_path("planrun"));
  res_table t;
  moe_error err = {0};
  ck_assert_msg(res_read_csv(csv, &t, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(atoi(res_get(&t.rows[0], "expert_slots")), slots);
  const double peak = atof(res_get(&t.rows[0], "peak_device_bytes")) / 1e9;
  ck_assert_msg(peak > gb - 0.005 && peak < gb + 0.005, "plan %.3f GB, measured %.3f GB", gb, peak);
  res_table_free(&t);
  /* a figure without its source */
  write_file("hw.json", "{\"name\": \"x\", \"memory_bytes\": 1e9, \"memory_gbps\": 100, "
             "\"matmul_tflops\": {\"f32\": 1, \"bf16\": 2}, \"h2d_gbps\": {\"pinned\": 10, "
             "\"pageable\": 5}, \"h2d_latency_us\": 1, \"launch_overhead_us\": 1, "
             "\"sources\": {\"memory_bytes\": \"a datasheet\"}}");
  snprintf(cmd, sizeof cmd, "'%s' plan --preset ci-small --hardware '%s'", MOEBENCH_PATH, tmp_path("hw.json"));
  ck_assert_int_eq(tu_run(cmd, out, sizeof out), 1);
  ck_assert_ptr_nonnull(strstr(out, "sources.memory_gbps"));
}
END_TEST

/* moebench timeline: one forward of a run's trace as SVG with compute and
 * copy rectangles (names escaped); a file that is not a trace, a forward
 * the trace does not hold and a missing -o are refused. */
START_TEST(timeline_draws_a_forward) {
  char trace[1200], svg[1200];
  snprintf(trace, sizeof trace, "%s", tmp_path("tl.json"));
  snprintf(svg, sizeof svg, "%s", tmp_path("tl.svg"));
  ck_assert_int_eq(call(cmd_run, "run", "--preset", "ci-small", "--policy", "ondemand", "--link-gbps", "2",
                        "--prompt-len", "4", "--gen-len", "4", "--trace", trace, NULL), 0);
  ck_assert_int_eq(call(cmd_timeline, "timeline", trace, "-o", svg, NULL), 0);
  FILE *f = fopen(svg, "r");
  ck_assert_ptr_nonnull(f);
  static char buf[1 << 20];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  fclose(f);
  ck_assert(strncmp(buf, "<svg ", 5) == 0);
  ck_assert_ptr_nonnull(strstr(buf, "</svg>"));
  ck_assert_ptr_nonnull(strstr(buf, "y=\"45\""));  /* a compute op */
  ck_assert_ptr_nonnull(strstr(buf, "y=\"115\"")); /* a copy */
  ck_assert_ptr_nonnull(strstr(buf, "<title>matmul"));
  ck_assert_int_eq(call(cmd_timeline, "timeline", trace, "-o", svg, "--forward", "4", NULL), 0);
  ck_assert_int_eq(call(cmd_timeline, "timeline", trace, "-o", svg, "--forward", "99", NULL), 1);
  write_file("nottrace.json", "{\"rows\": []}");
  ck_assert_int_eq(call(cmd_timeline, "timeline", tmp_path("nottrace.json"), "-o", svg, NULL), 1);
  write_file("hostile.json", "{\"traceEvents\": [{\"ph\": \"X\", \"tid\": 1, \"ts\": 0, \"dur\": 5, "
             "\"name\": \"embed\"}, {\"ph\": \"X\", \"tid\": 1, \"ts\": 5, \"dur\": 5, "
             "\"name\": \"</title><script>x</script>\"}]}");
  ck_assert_int_eq(call(cmd_timeline, "timeline", tmp_path("hostile.json"), "-o", svg, NULL), 0);
  f = fopen(svg, "r");
  n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  fclose(f);
  ck_assert_ptr_null(strstr(buf, "<script>"));
  ck_assert_int_eq(call(cmd_timeline, "timeline", trace, NULL), 2);
}
END_TEST

/* run --trace writes Chrome trace-event JSON: it parses back, names a
 * compute and a copy track, every event has a time span, and the copy
 * track holds exactly the row's expert copies. */
/* moebench eval: usage errors exit 2, bad files 1 naming the file, a
 * suite of rows writes CSV and JSON with one row per entry; the same
 * model under another policy (conventional routing) has the same figures. */
START_TEST(eval_command) {
  write_file("w.tokens", "# windows\n1 2 3 4 5 6\n6 5 4 3 2 1\n\n7,8,9,10,11,12\n");
  write_file("short.tokens", "1 2 3\n4 5\n");
  write_file("one.tokens", "5\n6\n");
  ck_assert_int_eq(call(cmd_eval, "eval", "--preset", "tiny-mixtral", NULL), 2);
  ck_assert_int_eq(call(cmd_eval, "eval", "--tokens", tmp_path("w.tokens"), NULL), 2);
  ck_assert_int_eq(call(cmd_eval, "eval", "--preset", "tiny-mixtral", "--tokens",
                        tmp_path("w.tokens"), "--policy", "lifo", NULL), 2);
  ck_assert_int_eq(call(cmd_eval, "eval", "--preset", "tiny-mixtral", "--tokens",
                        tmp_path("missing.tokens"), NULL), 1);
  ck_assert_int_eq(call(cmd_eval, "eval", "--preset", "tiny-mixtral", "--tokens",
                        tmp_path("short.tokens"), NULL), 1);
  ck_assert_int_eq(call(cmd_eval, "eval", "--preset", "tiny-mixtral", "--tokens",
                        tmp_path("one.tokens"), NULL), 1);
  /* an encoder-decoder model is refused at run time */
  ck_assert_int_eq(call(cmd_eval, "eval", "--preset", "switch-tiny", "--tokens",
                        tmp_path("w.tokens"), NULL), 1);
  ck_assert_int_eq(call(cmd_eval, "eval", "--preset", "tiny-mixtral", "--tokens",
                        tmp_path("w.tokens"), "--policy", "ondemand", NULL), 0);
  char suite_text[1024];
  snprintf(suite_text, sizeof suite_text,
           "{\"tokens\": \"%s\", \"rows\": ["
           "{\"label\": \"ref\", \"preset\": \"tiny-mixtral\"},"
           "{\"label\": \"q\\\"uoted\", \"preset\": \"tiny-mixtral\", \"policy\": \"ondemand\", "
           "\"routing\": \"conventional\"},"
           "{\"label\": \"pg\", \"preset\": \"tiny-mixtral\", \"policy\": \"pregated\"}]}",
           tmp_path("w.tokens"));
  write_file("q.json", suite_text);
  ck_assert_int_eq(call(cmd_eval, "eval", "--suite", tmp_path("q.json"), "-o", tmp_path("q-out"), NULL), 0);
  json_error_t je;
  char out[600];
  snprintf(out, sizeof out, "%s", tmp_path("q-out"));
  strcat(out, ".json");
  json_t *j = json_load_file(out, 0, &je);
  ck_assert_msg(j != NULL, "%s", je.text);
  ck_assert_int_eq((int)json_array_size(j), 3);
  json_t *r0 = json_array_get(j, 0), *r1 = json_array_get(j, 1);
  ck_assert_int_eq(json_integer_value(json_object_get(r0, "tokens")), 15);
  ck_assert(json_real_value(json_object_get(r0, "cross_entropy")) ==
            json_real_value(json_object_get(r1, "cross_entropy")));
  ck_assert_str_eq(json_string_value(json_object_get(r1, "label")), "q\"uoted");
  json_decref(j);
  /* a suite with an unknown key or a bad row */
  write_file("bad.json", "{\"tokens\": \"x\", \"rowz\": []}");
  ck_assert_int_eq(call(cmd_eval, "eval", "--suite", tmp_path("bad.json"), NULL), 1);
  write_file("bad2.json", "{\"tokens\": \"/nonexistent\", \"rows\": [{\"label\": \"x\"}]}");
  ck_assert_int_eq(call(cmd_eval, "eval", "--suite", tmp_path("bad2.json"), NULL), 1);
}
END_TEST

START_TEST(trace_is_chrome_trace_json) {
  char trace[1100], prefix[1100], csv[1200];
  snprintf(trace, sizeof trace, "%s/run.trace.json", g_dir);
  snprintf(prefix, sizeof prefix, "%s/traced", g_dir);
  snprintf(csv, sizeof csv, "%s.csv", prefix);
  ck_assert_int_eq(call(cmd_run, "run", "--preset", "ci-small", "--policy", "prefetch-all",
                        "--link-gbps", "1", "--gen-len", "6", "--prompt-len", "4", "--trace", trace,
                        "-o", prefix, NULL), 0);
  json_error_t je;
  json_t *j = json_load_file(trace, JSON_REJECT_DUPLICATES, &je);
  ck_assert_msg(j != NULL, "%s:%d: %s", trace, je.line, je.text);
  json_t *ev = json_object_get(j, "traceEvents");
  ck_assert(json_is_array(ev));
  size_t i;
  json_t *e;
  int compute = 0, copy = 0, waits = 0, named = 0, issues = 0, forwards = 0;
  json_int_t signalled[4096] = {0}; /* event ids a copy issue signals */
  int n_signalled = 0;
  json_array_foreach(ev, i, e) {
    const char *ph = json_string_value(json_object_get(e, "ph"));
    ck_assert_ptr_nonnull(ph);
    if (!strcmp(ph, "M")) {
      named++;
      continue;
    }
    const char *name = json_string_value(json_object_get(e, "name"));
    ck_assert_ptr_nonnull(name);
    if (!strcmp(ph, "i")) { /* an instant: what the host issued, with its event id */
      ck_assert_str_eq(json_string_value(json_object_get(e, "s")), "t");
      ck_assert(json_is_number(json_object_get(e, "ts")));
      ck_assert_int_eq(json_integer_value(json_object_get(e, "tid")), 1);
      json_t *id = json_object_get(json_object_get(e, "args"), "event");
      ck_assert(json_is_integer(id));
      if (!strcmp(name, "copy issue")) {
        issues++;
        if (json_integer_value(id) > 0 && n_signalled < 4096)
          signalled[n_signalled++] = json_integer_value(id);
      }
      forwards += !strcmp(name, "forward");
      continue;
    }
    ck_assert_str_eq(ph, "X");
    if (!strcmp(name, "wait for copy")) {
      /* it waits for an event a copy issued before it signals */
      const json_int_t id = json_integer_value(json_object_get(json_object_get(e, "args"), "event"));
      bool seen = false;
      for (int k = 0; k < n_signalled && !seen; k++) seen = signalled[k] == id;
      ck_assert_msg(seen, "wait for event %lld before any copy signals it", (long long)id);
    }
    ck_assert(json_is_number(json_object_get(e, "ts")));
    ck_assert(json_number_value(json_object_get(e, "dur")) >= 0);
    json_t *args = json_object_get(e, "args");
    ck_assert(json_is_integer(json_object_get(args, "layer")));
    ck_assert(json_is_integer(json_object_get(args, "expert")));
    const json_int_t tid = json_integer_value(json_object_get(e, "tid"));
    if (tid == 1) compute++;
    else if (tid == 2) copy++;
    else ck_abort_msg("event on track %lld", (long long)tid);
    waits += !strcmp(json_string_value(json_object_get(e, "name")), "wait for copy");
  }
  ck_assert_int_eq(named, 4); /* the process, its two tracks and the clock */
  ck_assert_int_gt(compute, 0);
  ck_assert_int_gt(waits, 0);
  ck_assert_int_eq(forwards, 6); /* the prefill and five decode steps */
  ck_assert_int_eq(issues, copy); /* every copy issued is also on the copy track */
  res_table t;
  moe_error err = {0};
  ck_assert(res_read_csv(csv, &t, &err) == MOE_OK);
  ck_assert_int_eq(copy, atoi(res_get(&t.rows[0], "expert_fetches")));
  res_table_free(&t);
  json_decref(j);
  /* a trace that cannot be written is one line and a failed run */
  ck_assert_int_ne(call(cmd_run, "run", "--preset", "ci-small", "--gen-len", "4", "--prompt-len", "4",
                        "--trace", "/nonexistent-dir/t.json", NULL), 0);
}
END_TEST

/* A sweep on the sim backend: rows say sim and the profile, their modeled
 * times are deterministic (a rerun gives the same file), and compare holds
 * them exactly, also under --deterministic-only (the CI gate). */
START_TEST(modeled_sweep_is_gated_exactly) {
  write_file("sim.json",
             "{\"name\": \"sim\", \"models\": [\"switch-base-8\"], \"workloads\": [\"paper-short\"],"
             " \"policies\": [\"gpu-only\", \"pregated\"], \"backend\": \"sim\","
             " \"hardware\": \"a100-80g-pcie4\", \"sim_routing\": \"zipf:1\"}");
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("sim.json"), "-o", tmp_path("a"), "--quiet", NULL), 0);
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("sim.json"), "-o", tmp_path("b"), "--quiet", NULL), 0);
  res_table a, b;
  moe_error err = {0};
  ck_assert(res_read_csv(tmp_path("a.csv"), &a, &err) == MOE_OK);
  ck_assert(res_read_csv(tmp_path("b.csv"), &b, &err) == MOE_OK);
  ck_assert_uint_eq(a.n, 2);
  for (size_t i = 0; i < a.n; i++) {
    ck_assert_str_eq(res_get(&a.rows[i], "backend"), "sim");
    ck_assert_str_eq(res_get(&a.rows[i], "device"), "a100-80g-pcie4");
    ck_assert_str_eq(res_get(&a.rows[i], "tokens_per_s"), res_get(&b.rows[i], "tokens_per_s"));
    ck_assert_str_eq(res_get(&a.rows[i], "ttft_s"), res_get(&b.rows[i], "ttft_s"));
    ck_assert(atof(res_get(&a.rows[i], "tokens_per_s")) > 0);
  }
  /* pregated 0.1% slower: a regression even under --deterministic-only */
  res_row *pg = &a.rows[0];
  if (strcmp(res_get(pg, "policy"), "pregated") != 0) pg = &a.rows[1];
  res_setf(pg, "tokens_per_s", "%.6g", atof(res_get(pg, "tokens_per_s")) * 0.999);
  ck_assert(res_write_csv(tmp_path("slow.csv"), &a, &err) == MOE_OK);
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("b.csv"), tmp_path("b.csv"),
                        "--deterministic-only", NULL), 0);
  ck_assert_int_eq(call(cmd_compare, "compare", tmp_path("b.csv"), tmp_path("slow.csv"),
                        "--deterministic-only", NULL), 1);
  res_table_free(&a);
  res_table_free(&b);
  /* generate and eval compute tokens and logits: not on a modeled backend */
  ck_assert_int_eq(call(cmd_generate, "generate", "--preset", "ci-small", "--backend", "sim", NULL), 2);
  ck_assert_int_eq(call(cmd_eval, "eval", "--preset", "ci-small", "--backend", "sim", "--tokens",
                        tmp_path("none.txt"), NULL), 2);
  /* a sim suite without a profile, or a profile for a real backend, is refused */
  write_file("nohw.json", "{\"name\": \"x\", \"models\": [\"ci-small\"], \"workloads\": [\"ci\"],"
                          " \"policies\": [\"gpu-only\"], \"backend\": \"sim\"}");
  ck_assert_int_ne(call(cmd_sweep, "sweep", tmp_path("nohw.json"), "-o", tmp_path("c"), "--quiet", NULL), 0);
  write_file("cpuhw.json", "{\"name\": \"x\", \"models\": [\"ci-small\"], \"workloads\": [\"ci\"],"
                           " \"policies\": [\"gpu-only\"], \"hardware\": \"h200\"}");
  ck_assert_int_ne(call(cmd_sweep, "sweep", tmp_path("cpuhw.json"), "-o", tmp_path("d"), "--quiet", NULL), 0);
}
END_TEST

/* link_ratio: the cap comes from a gpu-only warm-up on this machine; the
 * key holds the ratio (machine-independent), link_gbps_derived the cap. */
START_TEST(link_ratio_sets_the_link_from_measured_compute) {
  write_file("ratio.json",
             "{\"name\": \"ratio\", \"models\": [\"ci-small\"], \"workloads\": [\"ci\"],"
             " \"policies\": [\"gpu-only\", \"pregated\"], \"link_ratio\": 0.5}");
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("ratio.json"), "-o", tmp_path("r"), "--quiet", NULL), 0);
  res_table t;
  moe_error err = {0};
  ck_assert(res_read_csv(tmp_path("r.csv"), &t, &err) == MOE_OK);
  ck_assert_uint_eq(t.n, 2);
  for (size_t i = 0; i < t.n; i++) {
    ck_assert_str_eq(res_get(&t.rows[i], "link_ratio"), "0.5");
    ck_assert_str_eq(res_get(&t.rows[i], "link_gbps"), "");
    ck_assert(atof(res_get(&t.rows[i], "link_gbps_derived")) > 0);
    ck_assert_str_eq(res_get(&t.rows[i], "status"), "ok");
  }
  /* every row of the group ran on the same cap */
  ck_assert_str_eq(res_get(&t.rows[0], "link_gbps_derived"), res_get(&t.rows[1], "link_gbps_derived"));
  res_table_free(&t);
  /* both ways of setting the link, a ratio out of range, a ratio on a real link: refused */
  write_file("both.json", "{\"name\": \"x\", \"models\": [\"ci-small\"], \"workloads\": [\"ci\"],"
                          " \"policies\": [\"gpu-only\"], \"link_ratio\": 1, \"link_gbps\": 2}");
  ck_assert_int_ne(call(cmd_sweep, "sweep", tmp_path("both.json"), "-o", tmp_path("b"), "--quiet", NULL), 0);
  write_file("neg.json", "{\"name\": \"x\", \"models\": [\"ci-small\"], \"workloads\": [\"ci\"],"
                         " \"policies\": [\"gpu-only\"], \"link_ratio\": -1}");
  ck_assert_int_ne(call(cmd_sweep, "sweep", tmp_path("neg.json"), "-o", tmp_path("n"), "--quiet", NULL), 0);
  /* a backend with its own link (here the sim's modeled one) ignores the ratio, as a cap */
  write_file("simr.json", "{\"name\": \"x\", \"models\": [\"ci-small\"], \"workloads\": [\"ci\"],"
                          " \"policies\": [\"gpu-only\"], \"backend\": \"sim\", \"hardware\": \"h200\","
                          " \"link_ratio\": 1}");
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("simr.json"), "-o", tmp_path("s"), "--quiet", NULL), 0);
  ck_assert(res_read_csv(tmp_path("s.csv"), &t, &err) == MOE_OK);
  ck_assert_str_eq(res_get(&t.rows[0], "link_ratio"), "");
  ck_assert_str_eq(res_get(&t.rows[0], "link_gbps"), "0");
  res_table_free(&t);
  ck_assert_int_eq(call(cmd_bench_policies, "bench-policies", "--preset", "ci-small", "--link-ratio", "1",
                        "--link-gbps", "2", NULL), 2);
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

/* The command table: every command has a name, a handler, a summary and a
 * usage; names are unique; moebench --help lists each; help text goes where
 * it is asked.  The policy registry's roles: the reference is gpu-only and
 * the paper's four are the headline's, in order; a plugin plays none.  The
 * shared flag specs keep one bound per flag. */
START_TEST(command_table_roles_and_flags) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  ck_assert_ptr_nonnull(f);
  moebench_usage(f);
  fclose(f);
  for (size_t i = 0; i < moebench_n_commands; i++) {
    const moebench_command *c = &moebench_commands[i];
    ck_assert(c->name && c->run && c->summary && c->usage);
    ck_assert_ptr_eq(moebench_command_find(c->name), c);
    char line[64];
    snprintf(line, sizeof line, "  %s ", c->name);
    ck_assert_msg(strstr(buf, line) != NULL, "--help lacks %s", c->name);
    for (size_t j = 0; j < i; j++) ck_assert_str_ne(c->name, moebench_commands[j].name);
  }
  free(buf);
  ck_assert_ptr_null(moebench_command_find("frobnicate"));
  ck_assert_str_eq(moe_policy_reference()->name, "gpu-only");
  const moe_policy *four[4];
  ck_assert_uint_eq(moe_policy_paper_baselines(four, 4), 4);
  static const char *const want[] = {"gpu-only", "ondemand", "prefetch-all", "pregated"};
  for (int i = 0; i < 4; i++) ck_assert_str_eq(four[i]->name, want[i]);
  ck_assert(moe_policy_has_role(moe_policy_find("pregated"), MOE_POLICY_ROLE_PREGATED));
  ck_assert(!moe_policy_has_role(moe_policy_find("pregated-spec"), MOE_POLICY_ROLE_PAPER));
  ck_assert_ptr_eq(moe_policy_with_role(MOE_POLICY_ROLE_ONDEMAND), moe_policy_find("ondemand"));
  long v = 0;
  ck_assert(!flag_long(FLAG_GEN_LEN, "1", &v) && flag_long(FLAG_GEN_LEN, "2", &v) && v == 2);
  ck_assert(!flag_long(FLAG_BATCH, "4097", &v));
  double x = 0;
  ck_assert(!flag_double(FLAG_LINK_RATIO, "0", &x) && flag_double(FLAG_LINK_RATIO, "0.72", &x));
  for (int i = 0; i < FLAG_COUNT; i++) ck_assert_ptr_nonnull(flag_spec_of((flag_id)i)->name);
}
END_TEST

int main(void) {
  Suite *s = suite_create("harness");
  TCase *tc = tcase_create("harness");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, shipped_suites_and_workloads_parse);
  tcase_add_test(tc, suite_errors_name_file_and_field);
  tcase_add_test(tc, csv_and_json_round_trip);
  tcase_add_test(tc, compare_verdicts);
  tcase_add_test(tc, compare_float_sums_tolerate_summation_order);
  tcase_add_test(tc, noisy_rows_are_not_regressions);
  tcase_add_test(tc, compare_fails_closed);
  tcase_add_test(tc, report_plots_never_run_a_shell);
  tcase_add_test(tc, injected_faults_end_as_error_rows);
  tcase_add_test(tc, inputs_must_be_regular_files);
  tcase_add_test(tc, plugins_through_the_harness);
  tcase_add_test(tc, trace_is_chrome_trace_json);
  tcase_add_test(tc, modeled_sweep_is_gated_exactly);
  tcase_add_test(tc, link_ratio_sets_the_link_from_measured_compute);
  tcase_add_test(tc, eval_command);
  tcase_add_test(tc, suites_take_checkpoint_directories);
  tcase_add_test(tc, sharded_sweep_merges_to_the_single_sweep);
  tcase_add_test(tc, slurm_array_with_the_local_stand_in);
  tcase_add_test(tc, report_figure_and_plots);
  tcase_add_test(tc, report_plots_hostile_names_real_gnuplot);
  tcase_add_test(tc, report_plots_fail_when_not_drawn);
  tcase_add_test(tc, report_refuses_unsafe_plot_paths);
  tcase_add_test(tc, sweep_quality_columns);
  tcase_add_test(tc, older_files_without_the_lookahead_column);
  tcase_add_test(tc, expert_caches_through_the_harness);
  tcase_add_test(tc, hardware_profiles_and_plan);
  tcase_add_test(tc, timeline_draws_a_forward);
  tcase_add_test(tc, sweep_resume_and_report);
  tcase_add_test(tc, command_table_roles_and_flags);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
