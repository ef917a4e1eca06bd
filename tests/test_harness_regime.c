/* The regime map (moebench regime), the paper's figures as data (list
 * paper, report --paper), and the labels a new user reads: run's MODELED
 * line, the result file's hardware_profile, the timeline's waits. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "harness_util.h"
#include "common.h"
#include "moe/cost.h"
#include "noise.h"
#include "results.h"

/* Runs the moebench binary with args (a trusted test string) in g_dir;
 * its stdout and stderr in out; the exit status. */
static int moebench_out(const char *args, char *out, size_t cap) {
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "cd '%s' && '%s' %s 2>&1", g_dir, MOEBENCH_PATH, args);
  FILE *p = popen(cmd, "r");
  ck_assert_ptr_nonnull(p);
  size_t n = fread(out, 1, cap - 1, p);
  out[n] = '\0';
  const int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The regime CSV read back: a header and up to 16 rows of plain fields
 * (the command writes no quoting). */
typedef struct rcsv {
  char head[32][48];
  char cell[16][32][48];
  int n_cols, n_rows;
} rcsv;

static int split(char *line, char out[32][48]) {
  int n = 0;
  line[strcspn(line, "\r\n")] = '\0';
  for (char *save = NULL, *t = strtok_r(line, ",", &save); t && n < 32; t = strtok_r(NULL, ",", &save))
    snprintf(out[n++], 48, "%s", t);
  return n;
}

static void read_rcsv(const char *path, rcsv *c) {
  FILE *f = fopen(path, "r");
  ck_assert_msg(f != NULL, "%s", path);
  char line[2048];
  ck_assert_ptr_nonnull(fgets(line, sizeof line, f));
  c->n_cols = split(line, c->head);
  c->n_rows = 0;
  while (c->n_rows < 16 && fgets(line, sizeof line, f))
    ck_assert_int_eq(split(line, c->cell[c->n_rows++]), c->n_cols);
  fclose(f);
}

/* Row r's value in column name. */
static const char *get(const rcsv *c, int r, const char *name) {
  for (int i = 0; i < c->n_cols; i++)
    if (strcmp(c->head[i], name) == 0) return c->cell[r][i];
  ck_abort_msg("no column %s", name);
  return "";
}
static double num(const rcsv *c, int r, const char *name) { return atof(get(c, r, name)); }

/* The modeled side: deterministic, pregated's share of gpu-only falls as R
 * grows, the model columns too, the paper's band recorded, host-compute's
 * share flat; the measured side adds one row per R. */
START_TEST(regime_map_rows_follow_the_model) {
  ck_assert_int_eq(call(cmd_regime, "regime", "--preset", "ci-small", "--ratios", "0.5,2",
                        "--gen-len", "8", "--prompt-len", "8", "--reps", "1", "-o",
                        tmp_path("r"), NULL), 0);
  static rcsv t, u;
  read_rcsv(tmp_path("r.csv"), &t);
  ck_assert_int_eq(t.n_rows, 4); /* measured and modeled at two ratios */
  int m05 = -1, m2 = -1;
  for (int i = 0; i < t.n_rows; i++)
    if (strcmp(get(&t, i, "side"), "modeled") == 0) *(num(&t, i, "ratio") < 1 ? &m05 : &m2) = i;
  ck_assert(m05 >= 0 && m2 >= 0);
  ck_assert_double_lt(num(&t, m2, "pregated_vs_gpu_only"), num(&t, m05, "pregated_vs_gpu_only"));
  ck_assert_double_gt(num(&t, m05, "pregated_vs_gpu_only"), 0);
  ck_assert_double_le(num(&t, m05, "pregated_vs_gpu_only"), 1.0 + 1e-9);
  ck_assert_double_eq_tol(num(&t, m2, "paper_r_lo"), 0.72, 1e-12);
  ck_assert_double_eq_tol(num(&t, m2, "paper_r_hi"), 1.07, 1e-12);
  ck_assert_double_gt(num(&t, m2, "model_pregated_vs_gpu_only"), 0);
  ck_assert_double_lt(num(&t, m2, "model_pregated_vs_gpu_only"),
                      num(&t, m05, "model_pregated_vs_gpu_only"));
  /* host-compute (modeled, half the decoder's experts on the host) copies
   * nothing: one figure at every R (gpu-only's own step moves by a hair),
   * below gpu-only; the measured side has none */
  const double h05 = num(&t, m05, "host_compute_vs_gpu_only");
  ck_assert_msg(h05 > 0.05 && h05 < 1.0, "host-compute / gpu-only %g", h05);
  ck_assert_double_eq_tol(num(&t, m2, "host_compute_vs_gpu_only"), h05, 0.01 * h05);
  for (int i = 0; i < t.n_rows; i++)
    if (strcmp(get(&t, i, "side"), "measured") == 0)
      ck_assert_str_eq(get(&t, i, "host_compute_vs_gpu_only"), "nan");
  /* the same modeled figures again: the sim is deterministic */
  ck_assert_int_eq(call(cmd_regime, "regime", "--preset", "ci-small", "--ratios", "0.5,2",
                        "--gen-len", "8", "--prompt-len", "8", "--modeled-only", "-o",
                        tmp_path("again"), NULL), 0);
  read_rcsv(tmp_path("again.csv"), &u);
  ck_assert_int_eq(u.n_rows, 2);
  ck_assert_str_eq(get(&u, 1, "pregated_vs_gpu_only"), get(&t, m2, "pregated_vs_gpu_only"));
}
END_TEST

START_TEST(regime_refuses_bad_arguments) {
  ck_assert_int_eq(call(cmd_regime, "regime", "--ratios", "2,1", NULL), 2);   /* not ascending */
  ck_assert_int_eq(call(cmd_regime, "regime", "--ratios", "0,1", NULL), 2);   /* not > 0 */
  ck_assert_int_eq(call(cmd_regime, "regime", "--ratios", "", NULL), 2);
  ck_assert_int_eq(call(cmd_regime, "regime", "--figure", tmp_path("x.png"), NULL), 2); /* no -o */
  ck_assert_int_eq(call(cmd_regime, "regime", "--preset", "no-such-model", NULL), 2);
  ck_assert_int_eq(call(cmd_regime, "regime", "stray", NULL), 2);
}
END_TEST

/* The paper's figures come from the data file: list paper prints what the
 * file says (a changed file, changed figures); a bad file is one line
 * naming it. */
START_TEST(paper_figures_are_read_from_the_file) {
  static char out[1 << 16];
  ck_assert_int_eq(moebench_out("list paper", out, sizeof out), 0);
  ck_assert_ptr_nonnull(strstr(out, "pregated_vs_gpu_only_throughput\t81%"));
  ck_assert_ptr_nonnull(strstr(out, "large128_ondemand_tokens_per_s\t26 tokens/s"));
  write_file("paper.json", "{\"figures\": [{\"key\": \"pregated_vs_gpu_only_throughput\", "
                           "\"value\": 0.5, \"unit\": \"ratio\", \"source\": \"test\"}]}");
  setenv("MOE_PAPER_FILE", tmp_path("paper.json"), 1);
  ck_assert_int_eq(moebench_out("list paper", out, sizeof out), 0);
  ck_assert_ptr_nonnull(strstr(out, "pregated_vs_gpu_only_throughput\t50%"));
  ck_assert_ptr_null(strstr(out, "81%"));
  write_file("bad.json", "{\"figures\": [{\"key\": \"x\", \"value\": \"no\"}]}");
  setenv("MOE_PAPER_FILE", tmp_path("bad.json"), 1);
  ck_assert_int_eq(moebench_out("list paper", out, sizeof out), 1);
  ck_assert_ptr_nonnull(strstr(out, "bad.json"));
  unsetenv("MOE_PAPER_FILE");
}
END_TEST

/* What a run's figures are says so: MODELED on the sim, measured on the
 * cpu backend, in the printed table and in the result file's metadata. */
START_TEST(modeled_and_measured_say_which) {
  static char out[1 << 16];
  ck_assert_int_eq(moebench_out("run --preset ci-small --gen-len 4 --prompt-len 4 --backend sim "
                                "--hardware a100-80g-pcie4 -o sim", out, sizeof out), 0);
  ck_assert_ptr_nonnull(strstr(out, "times MODELED by the sim backend"));
  json_error_t je;
  json_t *j = json_load_file(tmp_path("sim.json"), 0, &je);
  ck_assert_ptr_nonnull(j);
  const char *hp = json_string_value(json_object_get(json_object_get(j, "metadata"), "hardware_profile"));
  ck_assert_msg(hp && strstr(hp, "a100-80g-pcie4") && strstr(hp, "MODELED"), "%s", hp ? hp : "(none)");
  json_decref(j);
  ck_assert_int_eq(moebench_out("run --preset ci-small --gen-len 4 --prompt-len 4 -o cpu", out,
                                sizeof out), 0);
  ck_assert_ptr_nonnull(strstr(out, "times measured on this machine"));
  j = json_load_file(tmp_path("cpu.json"), 0, &je);
  ck_assert_ptr_nonnull(j);
  hp = json_string_value(json_object_get(json_object_get(j, "metadata"), "hardware_profile"));
  ck_assert_msg(hp && strncmp(hp, "none", 4) == 0, "%s", hp ? hp : "(none)");
  json_decref(j);
  /* report says the same of each file: whose link, whose machine */
  ck_assert_int_eq(moebench_out("report sim.csv", out, sizeof out), 0);
  ck_assert_ptr_nonnull(strstr(out, "link: the hardware profile's, modeled"));
  ck_assert_ptr_nonnull(strstr(out, "MODELED"));
  ck_assert_ptr_null(strstr(out, "link 0 GB/s"));
  ck_assert_int_eq(moebench_out("report cpu.csv", out, sizeof out), 0);
  ck_assert_ptr_nonnull(strstr(out, "measured on the machine that wrote the file"));
  ck_assert_ptr_nonnull(strstr(out, "link: the backend's own, uncapped"));
}
END_TEST

/* The timeline's compute share counts no wait as busy: a modeled
 * ondemand step on a slow link waits for most of its copies, and the
 * picture says how long, apart from the compute. */
START_TEST(timeline_counts_waits_apart) {
  static char out[1 << 16];
  ck_assert_int_eq(moebench_out("run --preset ci-small --gen-len 4 --prompt-len 4 --backend sim "
                                "--hardware a100-80g-pcie4 --policy ondemand --link-gbps 0.01 "
                                "--trace t.json", out, sizeof out), 0);
  ck_assert_int_eq(call(cmd_timeline, "timeline", tmp_path("t.json"), "-o", tmp_path("t.svg"), NULL), 0);
  FILE *f = fopen(tmp_path("t.svg"), "r");
  ck_assert_ptr_nonnull(f);
  size_t n = fread(out, 1, sizeof out - 1, f);
  out[n] = '\0';
  fclose(f);
  const char *s = strstr(out, "compute busy ");
  ck_assert_ptr_nonnull(s);
  double busy = -1, wait = -1;
  ck_assert_int_eq(sscanf(s, "compute busy %lf%%, waiting for copies %lf%%", &busy, &wait), 2);
  ck_assert_double_gt(wait, 50); /* copies of 0.01 GB/s dominate */
  ck_assert_double_le(busy + wait, 100.5);
}
END_TEST

/* run --link-ratio: the cap from a gpu-only warm-up, recorded as the
 * row's ratio and derived cap; refused beside --link-gbps or on a backend
 * with its own link. */
START_TEST(run_takes_a_link_ratio) {
  ck_assert_int_eq(call(cmd_run, "run", "--preset", "ci-small", "--gen-len", "4", "--prompt-len", "4",
                        "--link-ratio", "0.5", "-o", tmp_path("lr"), NULL), 0);
  res_table t;
  moe_error err = {0};
  ck_assert_msg(res_read_csv(tmp_path("lr.csv"), &t, &err) == MOE_OK, "%s", err.msg);
  ck_assert_str_eq(res_get(&t.rows[0], "link_ratio"), "0.5");
  ck_assert_double_gt(atof(res_get(&t.rows[0], "link_gbps_derived")), 0);
  res_table_free(&t);
  ck_assert_int_eq(call(cmd_run, "run", "--preset", "ci-small", "--link-ratio", "0.5", "--link-gbps",
                        "2", NULL), 2);
  ck_assert_int_eq(call(cmd_run, "run", "--preset", "ci-small", "--link-ratio", "0.5", "--backend",
                        "sim", "--hardware", "h200", NULL), 2);
  ck_assert_int_eq(call(cmd_run, "run", "--preset", "ci-small", "--link-ratio", "-1", NULL), 2);
}
END_TEST

/* sensitivity: the modeled ratio moves with the launch overhead (more
 * overhead, more compute to hide copies behind), and the shares add up
 * to at most the whole step; bad lists are refused. */
START_TEST(sensitivity_moves_with_the_estimates) {
  static char out[1 << 16];
  ck_assert_int_eq(moebench_out("sensitivity --preset ci-small --launch-us 2,10 --latency-us 10 "
                                "--prompt-len 8 --gen-len 8", out, sizeof out), 0);
  const char *r2 = strstr(out, "\n| 2 | 10 | "), *r10 = strstr(out, "\n| 10 | 10 | ");
  ck_assert_msg(r2 && r10, "%s", out);
  double g2, p2, o2, l2, t2, g10, p10, o10, l10, t10;
  ck_assert_int_eq(sscanf(r2, "\n| 2 | 10 | %lf | %lf%% | %lfx | %lf%% | %lf%% |", &g2, &p2, &o2, &l2, &t2), 5);
  ck_assert_int_eq(sscanf(r10, "\n| 10 | 10 | %lf | %lf%% | %lfx | %lf%% | %lf%% |", &g10, &p10, &o10, &l10, &t10), 5);
  ck_assert_double_gt(g10, g2);
  ck_assert_double_gt(l10, l2);
  ck_assert_double_le(l10 + t10, 100.5);
  ck_assert_ptr_nonnull(strstr(out, "MODELED"));
  ck_assert_int_eq(call(cmd_sensitivity, "sensitivity", "--launch-us", "0", NULL), 2);
  ck_assert_int_eq(call(cmd_sensitivity, "sensitivity", "--latency-us", "a,b", NULL), 2);
  ck_assert_int_eq(call(cmd_sensitivity, "sensitivity", "--hardware", "", NULL), 2);
}
END_TEST

/* A results file of one group: gpu-only and pregated at the given
 * tokens/s, measured on device. */
static void pair_file(const char *name, const char *device, const char *tps_go, const char *tps_pg) {
  res_table t;
  res_table_init(&t);
  const char *pols[2] = {"gpu-only", "pregated"}, *tps[2] = {tps_go, tps_pg};
  for (int i = 0; i < 2; i++) {
    res_row *r = res_table_add(&t);
    static const char *const kv[][2] = {
        {"schema_version", RES_SCHEMA_VERSION}, {"model", "m"}, {"model_seed", "1"}, {"dtype", "f32"},
        {"workload", "w"}, {"routing", "conventional"}, {"backend", "cpu"}, {"threads", "1"},
        {"link_gbps", "0"}, {"device_mem_budget_bytes", "0"}, {"batch", "1"}, {"prompt_len", "4"},
        {"gen_len", "4"}, {"requests", "1"}, {"prompt_seed", "1"}, {"repetitions", "3"},
        {"status", "ok"}, {"rel_spread", "0.01"}, {"h2d_bytes", "500"}};
    for (size_t k = 0; k < sizeof kv / sizeof kv[0]; k++) res_set(r, kv[k][0], kv[k][1]);
    res_set(r, "policy", pols[i]);
    res_set(r, "device", device);
    res_set(r, "tokens_per_s", tps[i]);
  }
  moe_error err = {0};
  ck_assert_msg(res_write_csv(tmp_path(name), &t, &err) == MOE_OK, "%s", err.msg);
  res_table_free(&t);
}

/* Rows from another machine compare ratios, not times: a machine 40%
 * slower throughout is no regression, and is said in one line; a
 * pregated / gpu-only ratio that falls is one. */
START_TEST(another_device_compares_ratios) {
  static char out[1 << 16];
  pair_file("base.csv", "cpu: A", "100", "80");
  pair_file("slow.csv", "cpu: B", "60", "48");
  pair_file("worse.csv", "cpu: B", "60", "30");
  ck_assert_int_eq(moebench_out("compare base.csv slow.csv --allow-device-change", out, sizeof out), 0);
  ck_assert_msg(strstr(out, "NEW ran 40% slower than BASE"), "%s", out);
  ck_assert_ptr_null(strstr(out, "REGRESSION"));
  ck_assert_int_eq(moebench_out("compare base.csv worse.csv --allow-device-change", out, sizeof out), 1);
  ck_assert_msg(strstr(out, "| ratio | 0.800 | 0.500 | -37.50% | REGRESSION |"), "%s", out);
}
END_TEST

/* The sweep's progress has no estimate before a row has ended and says
 * so (it printed "ETA 0 s"). */
START_TEST(progress_waits_for_a_row_before_an_eta) {
  static char out[1 << 16];
  write_file("p.json", "{\"name\": \"p\", \"models\": [\"ci-small\"], \"workloads\": [\"ci\"],"
                       " \"policies\": [\"gpu-only\", \"ondemand\"]}");
  ck_assert_int_eq(moebench_out("sweep p.json -o rows", out, sizeof out), 0);
  const char *first = strstr(out, "[0/2] ");
  ck_assert_msg(first != NULL, "%s", out);
  char line[512];
  snprintf(line, sizeof line, "%.*s", (int)strcspn(first, "\n"), first);
  ck_assert_msg(strstr(line, "ETA after the first row") && !strstr(line, "ETA 0 s"), "%s", line);
  ck_assert_ptr_nonnull(strstr(out, "[1/2] "));
}
END_TEST

/* plan takes a policy plugin: its planned slots as a row after the
 * built-ins; a plugin that cannot be loaded is one line naming it. */
START_TEST(plan_takes_a_policy_plugin) {
  static char out[1 << 16];
  char args[1200];
  snprintf(args, sizeof args, "plan --preset ci-small --policy-plugin '%s'", PLUGIN_LRU);
  ck_assert_int_eq(moebench_out(args, out, sizeof out), 0);
  ck_assert_msg(strstr(out, "\n| lru-cache | ") && strstr(out, "\n| gpu-only | "), "%s", out);
  ck_assert_int_eq(moebench_out("plan --preset ci-small --policy-plugin nope.so", out, sizeof out), 1);
  ck_assert_ptr_nonnull(strstr(out, "nope.so"));
}
END_TEST

/* bench-policies takes run's cache syntax: the cached entry is its own
 * row with the cache's slots on top of the policy's, its outputs
 * gpu-only's; a bad or repeated entry is refused. */
START_TEST(bench_policies_takes_caches) {
  static char out[1 << 16];
  ck_assert_int_eq(moebench_out("bench-policies --preset ci-small --policies gpu-only,ondemand,"
                                "ondemand+lru:4 --reps 1 --gen-len 8 --prompt-len 8", out, sizeof out), 0);
  const char *od = strstr(out, "\n| ondemand | "), *lru = strstr(out, "\n| ondemand+lru:4 | ");
  ck_assert_msg(od && lru, "%s", out);
  int s_od = -1, s_lru = -1;
  char match[16] = "";
  ck_assert_int_eq(sscanf(od, "\n| ondemand | %*s | %*s | %*s | %*s | %*s | %d |", &s_od), 1);
  ck_assert_int_eq(sscanf(lru, "\n| ondemand+lru:4 | %*s | %*s | %*s | %*s | %*s | %d | %*s | %*s | %*s "
                               "| %*s | %*s | %15s |", &s_lru, match), 2);
  ck_assert_int_eq(s_lru, s_od + 4);
  ck_assert_str_eq(match, "1.000");
  ck_assert_int_eq(call(cmd_bench_policies, "bench-policies", "--preset", "ci-small", "--policies",
                        "ondemand+fifo:4", NULL), 2);
  ck_assert_int_eq(call(cmd_bench_policies, "bench-policies", "--preset", "ci-small", "--policies",
                        "ondemand+lru:4,ondemand+lru:4", NULL), 2);
}
END_TEST

/* eval's intervals: the t interval by hand, and the printed table carries
 * the perplexity's interval and the paired change's. */
START_TEST(eval_prints_intervals) {
  const double x[5] = {1, 2, 3, 4, 5};
  double mean, half;
  cli_mean_ci95(x, 5, &mean, &half);
  ck_assert_double_eq_tol(mean, 3.0, 1e-12);
  ck_assert_double_eq_tol(half, 2.776 * sqrt(2.5) / sqrt(5.0), 1e-9); /* t(0.975, 4) s / sqrt(n) */
  ck_assert_double_eq_tol(cli_t975(60), 2.000, 0.002);
  ck_assert(isnan(cli_t975(0)));
  cli_mean_ci95(x, 1, &mean, &half);
  ck_assert(isnan(half));
  static char out[1 << 16];
  ck_assert_int_eq(moebench_out("eval --model-dir " MOE_SOURCE_DIR "/workloads/trained/control "
                                "--tokens " MOE_SOURCE_DIR "/workloads/trained/test.tokens "
                                "--windows 24", out, sizeof out), 0);
  const char *row = strstr(out, "\n| ");
  ck_assert_msg(row && strstr(out, "95% t over windows"), "%s", out);
  double ppl = 0, lo = 0, hi = 0;
  const char *p = strstr(out, " | gpu-only | ");
  ck_assert_ptr_nonnull(p);
  ck_assert_int_eq(sscanf(p, " | gpu-only | %*[^|]| %*f | %lf (%lf-%lf)", &ppl, &lo, &hi), 3);
  ck_assert(lo < ppl && ppl < hi);
}
END_TEST

/* The machine's own rates over a row: a measured row records its compute
 * probe's ratio and the link rate its copies achieved; the thresholds
 * (noise.h) by hand. */
START_TEST(rows_record_the_machines_rates) {
  ck_assert_int_eq(call(cmd_run, "run", "--preset", "ci-small", "--gen-len", "8", "--prompt-len", "4",
                        "--policy", "ondemand", "--link-gbps", "2", "-o", tmp_path("nz"), NULL), 0);
  res_table t;
  moe_error err = {0};
  ck_assert_msg(res_read_csv(tmp_path("nz.csv"), &t, &err) == MOE_OK, "%s", err.msg);
  const double probe = atof(res_get(&t.rows[0], "compute_probe_ratio"));
  ck_assert_msg(probe > 0.2 && probe < 5, "%s", res_get(&t.rows[0], "compute_probe_ratio"));
  const double achieved = atof(res_get(&t.rows[0], "link_achieved_gbps"));
  ck_assert_msg(achieved > 0 && achieved < 2 * 1.05, "%s", res_get(&t.rows[0], "link_achieved_gbps"));
  ck_assert(res_get(&t.rows[0], "noisy")[0] == '0' || res_get(&t.rows[0], "noisy")[0] == '1');
  res_table_free(&t);
  ck_assert(noise_rates_noisy(0.7, 0, 0, 0));              /* the probe fell */
  ck_assert(!noise_rates_noisy(0.95, 0, 0, 0));
  ck_assert(!noise_rates_noisy(NAN, 0, 0, 0));
  ck_assert(noise_rates_noisy(1.0, 3.0, 6.0, 18.9e6));     /* half the cap on big copies */
  ck_assert(!noise_rates_noisy(1.0, 5.9, 6.0, 18.9e6));
  ck_assert(!noise_rates_noisy(1.0, 0.7, 2.0, 0.1e6));     /* small copies: no verdict */
  ck_assert(!noise_rates_noisy(1.0, 3.0, 0.0, 18.9e6));    /* uncapped: no cap to miss */
}
END_TEST

/* A profile's host section (issue 30's cost model, first slice): read,
 * checked, saved and read back; the host's time for an expert by hand;
 * plan says where one expert is better computed. */
START_TEST(profiles_describe_the_host) {
  moe_hw_profile p, back;
  moe_error err = {0};
  char path[600];
  snprintf(path, sizeof path, "%s/workloads/hardware/a100-80g-pcie4.json", MOE_SOURCE_DIR);
  ck_assert_msg(moe_hw_profile_load(&p, path, &err) == MOE_OK, "%s", err.msg);
  ck_assert_double_eq(p.host_cores, 64);
  ck_assert_double_eq_tol(p.host_memory_gbps, 204.8, 1e-9);
  ck_assert_int_eq(moe_hw_profile_save(&p, tmp_path("p.json"), "test", &err), MOE_OK);
  ck_assert_msg(moe_hw_profile_load(&back, tmp_path("p.json"), &err) == MOE_OK, "%s", err.msg);
  ck_assert_double_eq_tol(back.host_gflops_bf16, p.host_gflops_bf16, 1e-6);
  /* 1 GB at 100 GB/s: 10 ms to read; 2 GFLOP a token at 1 TFLOP/s: 2 ms a token */
  moe_hw_profile h = {.host_cores = 8, .host_memory_gbps = 100, .host_gflops_f32 = 1000,
                      .host_gflops_bf16 = 1000};
  ck_assert_double_eq_tol(moe_cost_host_expert(&h, 1e9, 2e9, 1, MOE_F32), 0.010, 1e-12);
  ck_assert_double_eq_tol(moe_cost_host_expert(&h, 1e9, 2e9, 100, MOE_F32), 0.200, 1e-12);
  h.host_memory_gbps = 0;
  ck_assert(isnan(moe_cost_host_expert(&h, 1e9, 2e9, 1, MOE_F32)));
  /* a host section without its source, or with a field out of range: refused */
  static const char *const bad[][2] = {
      {"\"host\": {\"cores\": 8, \"memory_gbps\": 100, \"matmul_gflops_f32\": 100}, ", "sources.host"},
      {"\"host\": {\"cores\": 0, \"memory_gbps\": 100, \"matmul_gflops_f32\": 100}, ", "host.cores"},
      {"\"host\": {\"cores\": 8, \"memory_gbps\": 100, \"matmul_gflops\": 100}, ", "host.matmul_gflops"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char text[2048];
    snprintf(text, sizeof text,
             "{\"name\": \"x\", \"memory_bytes\": 1e9, \"memory_gbps\": 100, %s\"matmul_tflops\": "
             "{\"f32\": 1, \"bf16\": 2}, \"h2d_gbps\": {\"pinned\": 10, \"pageable\": 5}, "
             "\"h2d_latency_us\": 2, \"launch_overhead_us\": 1, \"sources\": {\"memory_bytes\": "
             "\"a\", \"memory_gbps\": \"a\", \"matmul_tflops\": \"a\", \"h2d_gbps.pinned\": \"a\", "
             "\"h2d_gbps.pageable\": \"a\", \"h2d_latency_us\": \"a\", \"launch_overhead_us\": \"a\"}}",
             bad[i][0]);
    write_file("bad.json", text);
    moe_error e2 = {0};
    ck_assert_int_eq(moe_hw_profile_load(&p, tmp_path("bad.json"), &e2), MOE_ERR_FORMAT);
    ck_assert_msg(strstr(e2.msg, bad[i][1]), "case %zu: %s", i, e2.msg);
  }
  static char out[1 << 16];
  ck_assert_int_eq(moebench_out("plan --preset switch-base-8 --hardware a100-80g-pcie4", out, sizeof out), 0);
  ck_assert_msg(strstr(out, "one expert computed where it lives") && strstr(out, "MODELED"), "%s", out);
}
END_TEST

/* crossover (MODELED): the host class scales with the host's bandwidth
 * and the copy class does not, so they cross (the copy class ahead on a
 * slow host, behind on a fast one); fiddler copies instead of computing
 * on a slow host.  Bad lists, a profile without a host and --figure
 * without -o are refused.  On the command line: --hardware on a measured
 * backend gives fiddler its figures, a sim profile without a host is
 * refused at create, report --host stands alone. */
START_TEST(crossover_finds_where_the_host_wins) {
  static char out[1 << 16];
  char cmd[1400];
  snprintf(cmd, sizeof cmd, "crossover --host-gbps 10,800 --batches 1,64 --prompt-len 4 --gen-len 2 -o %s",
           tmp_path("xo"));
  ck_assert_msg(moebench_out(cmd, out, sizeof out) == 0, "%s", out);
  ck_assert_msg(strstr(out, "MODELED") && strstr(out, "host-compute") && strstr(out, "fiddler"), "%s", out);
  FILE *f = fopen(tmp_path("xo.csv"), "r");
  ck_assert_ptr_nonnull(f);
  char line[512], axis[32];
  double x, od, pg, hc, fd, hy, slow[5] = {0}, fast[5] = {0};
  int rows = 0;
  ck_assert_ptr_nonnull(fgets(line, sizeof line, f));
  ck_assert_msg(strstr(line, "axis,x,ondemand,pregated,host-compute,fiddler,pregated-hybrid"), "%s", line);
  while (fgets(line, sizeof line, f)) {
    ck_assert_int_eq(sscanf(line, "%31[^,],%lf,%lf,%lf,%lf,%lf,%lf", axis, &x, &od, &pg, &hc, &fd, &hy), 7);
    double *d = strcmp(axis, "host_gbps") == 0 ? (x < 100 ? slow : fast) : NULL;
    if (d) d[0] = od, d[1] = pg, d[2] = hc, d[3] = fd, d[4] = hy;
    rows++;
  }
  fclose(f);
  ck_assert_int_eq(rows, 4);
  ck_assert_msg(slow[2] < slow[0] && fast[2] > 4 * fast[0], "host-compute %g / %g, ondemand %g / %g",
                slow[2], fast[2], slow[0], fast[0]);
  ck_assert_msg(fabs(slow[0] - fast[0]) < 1e-9 * fast[0], "the copy class does not use the host");
  ck_assert_msg(slow[3] >= slow[0], "fiddler on a slow host %g, ondemand %g", slow[3], slow[0]);
  const char *bad[] = {"crossover --host-gbps 0", "crossover --host-gbps 50,20", "crossover --batches 0",
                       "crossover --figure x.png"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ck_assert_msg(moebench_out(bad[i], out, sizeof out) == 2, "%s: %s", bad[i], out);
  ck_assert_int_eq(moebench_out("crossover --hardware no-such-profile", out, sizeof out), 1);
  /* on a measured backend a profile is only fiddler's figures: the run is
   * measured, and fiddler decides by the profile (H200: the host is the
   * faster for one token, so it computes there) */
  ck_assert_msg(moebench_out("run --preset ci-small --backend cpu --hardware h200 --policy fiddler "
                             "--device-mem 2MiB --prompt-len 4 --gen-len 4 -o fd", out, sizeof out) == 0,
                "%s", out);
  ck_assert_msg(strstr(out, "measured") && !strstr(out, "MODELED"), "%s", out);
  res_table t;
  moe_error err = {0};
  ck_assert_msg(res_read_csv(tmp_path("fd.csv"), &t, &err) == MOE_OK, "%s", err.msg);
  ck_assert_uint_eq(t.n, 1);
  ck_assert_msg(atof(res_get(&t.rows[0], "host_experts")) > 0, "host_experts '%s'",
                res_get(&t.rows[0], "host_experts"));
  res_table_free(&t);
  ck_assert_int_eq(moebench_out("crossover --hardware l4", out, sizeof out), 1);
  ck_assert_msg(strstr(out, "l4.json") && strstr(out, "no host section"), "%s", out);
  /* a host-compute policy on the sim with a profile without a host: said
   * at create, not at the first block with host experts (a model that
   * fits never has one, and its row would pass for a measured placement) */
  ck_assert_int_eq(moebench_out("run --preset ci-small --backend sim --hardware l4 --policy "
                                "host-compute --gen-len 2 --prompt-len 2", out, sizeof out), 1);
  ck_assert_msg(strstr(out, "'l4' has no host section"), "%s", out);
  ck_assert_int_eq(moebench_out("report --host --summary x.csv", out, sizeof out), 2);
}
END_TEST

int main(void) {
  Suite *s = suite_create("harness_regime");
  TCase *tc = tcase_create("regime");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 240);
  tcase_add_test(tc, regime_map_rows_follow_the_model);
  tcase_add_test(tc, regime_refuses_bad_arguments);
  tcase_add_test(tc, paper_figures_are_read_from_the_file);
  tcase_add_test(tc, modeled_and_measured_say_which);
  tcase_add_test(tc, timeline_counts_waits_apart);
  tcase_add_test(tc, run_takes_a_link_ratio);
  tcase_add_test(tc, sensitivity_moves_with_the_estimates);
  tcase_add_test(tc, another_device_compares_ratios);
  tcase_add_test(tc, progress_waits_for_a_row_before_an_eta);
  tcase_add_test(tc, plan_takes_a_policy_plugin);
  tcase_add_test(tc, bench_policies_takes_caches);
  tcase_add_test(tc, eval_prints_intervals);
  tcase_add_test(tc, rows_record_the_machines_rates);
  tcase_add_test(tc, profiles_describe_the_host);
  tcase_add_test(tc, crossover_finds_where_the_host_wins);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  const int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
