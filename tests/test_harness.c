/* The harness's files and compare: the shipped suites and workloads parse,
 * one broken suite per failure mode, CSV/JSON round trips read back with
 * libcsv and jansson, compare's verdicts, exit codes and failing closed,
 * inputs that must be regular files, older results files, and the command
 * table.  Sweeps are test_harness_sweep.c's, run/trace/eval
 * test_harness_run.c's, report test_harness_report.c's. */
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
  tcase_add_test(tc, inputs_must_be_regular_files);
  tcase_add_test(tc, older_files_without_the_lookahead_column);
  tcase_add_test(tc, command_table_roles_and_flags);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
