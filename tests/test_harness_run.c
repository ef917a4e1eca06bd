/* moebench run, bench-policies and the commands around them: plugins
 * through run, sweep and bench-policies; hardware profiles and plan;
 * --trace JSON parsed back; a modeled sweep gated exactly by compare; the
 * link ratio; timeline; eval. */
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

/* run --trace writes Chrome trace-event JSON: it parses back, names a
 * compute and a copy track, every event has a time span, the issues are
 * the row's expert copies, and the copy track holds those not cancelled. */

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
  int compute = 0, copy = 0, waits = 0, named = 0, issues = 0, forwards = 0, cancels = 0;
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
      cancels += !strcmp(name, "copy cancel");
      if (!strcmp(name, "copy issue") || !strcmp(name, "urgent copy issue")) {
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
  /* every copy issued is on the copy track, but for those cut short (a
   * copy into a slot given to another expert before it landed) */
  ck_assert_int_eq(issues - cancels, copy);
  res_table t;
  moe_error err = {0};
  ck_assert(res_read_csv(csv, &t, &err) == MOE_OK);
  ck_assert_int_eq(issues, atoi(res_get(&t.rows[0], "expert_fetches")));
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

/* A suite's host_threads and host_gbps reach the rows (keys) and the runs:
 * host-compute in a budget that does not hold every expert computes some
 * on the host, with gpu-only's tokens; out-of-range values are refused. */
START_TEST(suites_set_the_host) {
  write_file("host.json", "{\"name\": \"x\", \"models\": [\"ci-small\"], \"workloads\": [\"ci\"],"
                          " \"policies\": [\"gpu-only\", \"host-compute\"], \"device_mem\": [\"capacity\", \"2MiB\"],"
                          " \"host_threads\": 2, \"host_gbps\": 50}");
  ck_assert_int_eq(call(cmd_sweep, "sweep", tmp_path("host.json"), "-o", tmp_path("h"), "--quiet", NULL), 0);
  res_table t;
  moe_error err = {0};
  ck_assert_msg(res_read_csv(tmp_path("h.csv"), &t, &err) == MOE_OK, "%s", err.msg);
  int host_rows = 0;
  for (size_t i = 0; i < t.n; i++) {
    const res_row *r = &t.rows[i];
    /* keys of the host-compute rows only: gpu-only's rows stay the rows a
     * suite without a host makes (a reference compares with them) */
    const bool host = strcmp(res_get(r, "policy"), "host-compute") == 0;
    ck_assert_str_eq(res_get(r, "host_threads"), host ? "2" : "");
    ck_assert_str_eq(res_get(r, "host_gbps"), host ? "50" : "");
    if (!host || strcmp(res_get(r, "status"), "ok")) continue;
    ck_assert_str_eq(res_get(r, "token_match_rate"), "1.000000");
    if (atof(res_get(r, "host_experts")) > 0) {
      host_rows++;
      ck_assert(atof(res_get(r, "host_xfer_bytes")) > 0 && atof(res_get(r, "host_wait_s")) >= 0);
    }
  }
  ck_assert_int_eq(host_rows, 1); /* the 2 MiB row; at capacity every expert is resident */
  res_table_free(&t);
  const char *bad[] = {"\"host_gbps\": -1", "\"host_threads\": 0", "\"host_gbps\": \"fast\""};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char text[512];
    snprintf(text, sizeof text, "{\"name\": \"x\", \"models\": [\"ci-small\"], \"workloads\": [\"ci\"],"
                                " \"policies\": [\"gpu-only\"], %s}", bad[i]);
    write_file("badhost.json", text);
    ck_assert_int_ne(call(cmd_sweep, "sweep", tmp_path("badhost.json"), "-o", tmp_path("bh"), "--quiet", NULL), 0);
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("harness_run");
  TCase *tc = tcase_create("harness_run");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, suites_set_the_host);
  tcase_add_test(tc, plugins_through_the_harness);
  tcase_add_test(tc, trace_is_chrome_trace_json);
  tcase_add_test(tc, modeled_sweep_is_gated_exactly);
  tcase_add_test(tc, link_ratio_sets_the_link_from_measured_compute);
  tcase_add_test(tc, eval_command);
  tcase_add_test(tc, hardware_profiles_and_plan);
  tcase_add_test(tc, timeline_draws_a_forward);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
