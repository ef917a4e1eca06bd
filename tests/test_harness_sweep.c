/* moebench sweep: warm-up, repetitions, OOM rows, parity, resume and the
 * report of a sweep; injected faults as error rows; checkpoint directories
 * in suites; sharded sweeps merged equal to the single sweep and merge
 * refusals; the Slurm scripts through the local stand-in; quality and
 * expert-cache columns in sweep rows. */
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

int main(void) {
  Suite *s = suite_create("harness_sweep");
  TCase *tc = tcase_create("harness_sweep");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, injected_faults_end_as_error_rows);
  tcase_add_test(tc, suites_take_checkpoint_directories);
  tcase_add_test(tc, sharded_sweep_merges_to_the_single_sweep);
  tcase_add_test(tc, slurm_array_with_the_local_stand_in);
  tcase_add_test(tc, sweep_quality_columns);
  tcase_add_test(tc, expert_caches_through_the_harness);
  tcase_add_test(tc, sweep_resume_and_report);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
