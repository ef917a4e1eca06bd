/* The cost model (moe/cost.h) and the sim backend: profile parsing, op
 * costs against hand-computed rooflines, the two-stream clock's overlap,
 * stall and slowdown, the sim's routing sources, and engine runs on a
 * virtual model under every policy (plan == peak, determinism). */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "moe/regime.h"
#include "moe/device.h"
#include "moe/backend.h"
#include "moe/cost.h"
#include "moe/model.h"
#include "moe/policy.h"
#include "moe/trace.h"
#include "replay.h"
#include "runner.h"
#include "testutil.h"

#define HW(name) MOE_SOURCE_DIR "/workloads/hardware/" name ".json"

/* A round-numbered profile: 1 TFLOP/s f32, 100 GB/s memory, 10 GB/s
 * pinned link, 2 us copy latency, 1 us launch. */
static moe_hw_profile toy(void) {
  moe_hw_profile p = {0};
  snprintf(p.name, sizeof p.name, "toy");
  p.memory_bytes = 1e9;
  p.memory_gbps = 100;
  p.tflops[MOE_F32] = 1;
  p.tflops[MOE_F16] = p.tflops[MOE_BF16] = 4;
  p.h2d_pinned_gbps = 10;
  p.h2d_pageable_gbps = 5;
  p.h2d_latency_us = 2;
  p.launch_us = 1;
  p.transfer_latency_us = 3;
  p.copy_slowdown = 1;
  return p;
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs(text, f);
  fclose(f);
}

START_TEST(shipped_profiles_load) {
  static const char *const names[] = {"a100-80g-pcie4", "h100-pcie5", "h200", "rtx4090", "l4"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    char path[1200];
    snprintf(path, sizeof path, MOE_SOURCE_DIR "/workloads/hardware/%s.json", names[i]);
    moe_hw_profile p;
    moe_error err = {0};
    ck_assert_msg(moe_hw_profile_load(&p, path, &err) == MOE_OK, "%s", err.msg);
    ck_assert_str_eq(p.name, names[i]);
    ck_assert(p.memory_gbps > 0 && p.tflops[MOE_F32] > 0 && p.h2d_pinned_gbps > 0);
    ck_assert(p.copy_slowdown == 1.0 && p.n_rates == 0);
  }
}
END_TEST

/* A profile with the given matmul_tflops and h2d_gbps objects, loaded. */
static moe_status load_rates(const char *mm, const char *h2d, moe_hw_profile *p, moe_error *err,
                             char *path, size_t cap) {
  char dir[256], text[2048];
  tu_tempdir(dir, sizeof dir);
  snprintf(path, cap, "%s/rates.json", dir);
  snprintf(text, sizeof text,
           "{\"name\": \"x\", \"memory_bytes\": 1e9, \"memory_gbps\": 100, \"matmul_tflops\": %s, "
           "\"h2d_gbps\": %s, \"h2d_latency_us\": 2, \"launch_overhead_us\": 1, \"sources\": "
           "{\"memory_bytes\": \"a\", \"memory_gbps\": \"a\", \"matmul_tflops\": \"a\", "
           "\"h2d_gbps.pinned\": \"a\", \"h2d_gbps.pageable\": \"a\", \"h2d_latency_us\": \"a\", "
           "\"launch_overhead_us\": \"a\"}}",
           mm, h2d);
  write_file(path, text);
  return moe_hw_profile_load(p, path, err);
}

/* Every figure of a profile is read: the link's theoretical rate bounds the
 * pinned one (and pinned the pageable one); a TF32 rate, which nothing
 * would use, is refused by name.  The theoretical rate survives a save. */
START_TEST(profile_link_rates_are_read_and_checked) {
  char path[512];
  moe_hw_profile p;
  moe_error err = {0};
  const char *mm = "{\"f32\": 1, \"bf16\": 2}";
  ck_assert_int_eq(load_rates(mm, "{\"pinned\": 25, \"pageable\": 10, \"theoretical\": 31.5}", &p,
                              &err, path, sizeof path), MOE_OK);
  ck_assert(p.h2d_theoretical_gbps == 31.5);
  ck_assert_int_eq(moe_hw_profile_save(&p, path, "test", &err), MOE_OK);
  moe_hw_profile back;
  ck_assert_int_eq(moe_hw_profile_load(&back, path, &err), MOE_OK);
  ck_assert(back.h2d_theoretical_gbps == 31.5);
  const struct {
    const char *mm, *h2d, *expect;
  } bad[] = {
      {mm, "{\"pinned\": 40, \"pageable\": 10, \"theoretical\": 31.5}", "exceeds the link's theoretical"},
      {mm, "{\"pinned\": 10, \"pageable\": 20}", "pageable (20) exceeds h2d_gbps.pinned"},
      {"{\"f32\": 1, \"tf32\": 8, \"bf16\": 2}", "{\"pinned\": 10, \"pageable\": 5}", "tf32 is not used"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    moe_error e2 = {0};
    ck_assert_int_eq(load_rates(bad[i].mm, bad[i].h2d, &p, &e2, path, sizeof path), MOE_ERR_FORMAT);
    ck_assert_msg(strstr(e2.msg, bad[i].expect) && strstr(e2.msg, path), "case %zu: %s", i, e2.msg);
  }
}
END_TEST

/* The regime model against hand-worked steps: six blocks of one window
 * each filling a 6 s gpu-only step, one expert of eight per block. */
START_TEST(regime_model_by_hand) {
  moe_regime r = {.n_blocks = 6, .top_k = 1, .n_experts = 8, .step_s = 6, .window_s = 1, .copy_s = 0.72};
  ck_assert_double_eq_tol(moe_regime_step_s(&r, MOE_REGIME_GPU_ONLY), 6.0, 1e-12);
  ck_assert_double_eq_tol(moe_regime_step_s(&r, MOE_REGIME_ONDEMAND), 6 + 6 * 0.72, 1e-12);
  ck_assert_double_eq_tol(moe_regime_step_s(&r, MOE_REGIME_PREGATED), 6.72, 1e-12); /* all hidden but the first */
  ck_assert_double_eq_tol(moe_regime_step_s(&r, MOE_REGIME_PREFETCH_ALL), 6 + 5.76 + 5 * 4.76, 1e-12);
  r.copy_s = 2.6; /* copy-bound: each later block stalls 1.6 s */
  ck_assert_double_eq_tol(moe_regime_step_s(&r, MOE_REGIME_PREGATED), 6 + 2.6 + 5 * 1.6, 1e-12);
  r.top_k = 2; /* two experts a block: 5.2 s of copies a block */
  ck_assert_double_eq_tol(moe_regime_step_s(&r, MOE_REGIME_PREGATED), 6 + 5.2 + 5 * 4.2, 1e-12);
  ck_assert_str_eq(moe_regime_policy_name(MOE_REGIME_PREFETCH_ALL), "prefetch-all");
  const moe_regime bad[] = {
      {0, 1, 8, 6, 1, 1}, {6, 0, 8, 6, 1, 1}, {6, 2, 1, 6, 1, 1}, {6, 1, 8, -1, 1, 1},
      {6, 1, 8, 6, 2, 1}, /* windows longer than the step */
      {6, 1, 8, 6, 1, NAN},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    ck_assert_msg(isnan(moe_regime_step_s(&bad[i], MOE_REGIME_PREGATED)), "case %zu", i);
  ck_assert(isnan(moe_regime_step_s(&r, MOE_REGIME_POLICIES)));
}
END_TEST

START_TEST(bad_profiles_are_refused_naming_the_field) {
  char dir[256], path[512];
  tu_tempdir(dir, sizeof dir);
  snprintf(path, sizeof path, "%s/p.json", dir);
  static const char *const good_tail =
      "\"memory_gbps\": 100, \"matmul_tflops\": {\"f32\": 1, \"bf16\": 2},"
      "\"h2d_gbps\": {\"pinned\": 10, \"pageable\": 5}, \"h2d_latency_us\": 2,"
      "\"launch_overhead_us\": 1, \"sources\": {\"memory_bytes\": \"a\", \"memory_gbps\": \"a\","
      "\"matmul_tflops\": \"a\", \"h2d_gbps.pinned\": \"a\", \"h2d_gbps.pageable\": \"a\","
      "\"h2d_latency_us\": \"a\", \"launch_overhead_us\": \"a\"}";
  struct {
    const char *head, *expect;
  } cases[] = {
      {"{\"name\": \"x\", \"memory_bytes\": 0, ", "'memory_bytes' must be a number in"},
      {"{\"name\": \"x\", \"memory_bytes\": 1e9, \"vector_gbps\": 1e-300, ", "'vector_gbps' must be a number in"},
      {"{\"name\": \"x\", \"memory_bytes\": 1e300, ", "'memory_bytes' must be a number in"},
      {"{\"name\": \"x\", \"memory_bytes\": 1e9, \"memry\": 1, ", "unknown field 'memry'"},
      {"{\"name\": 3, \"memory_bytes\": 1e9, ", "field 'name'"},
      {"{\"name\": \"x\", \"memory_bytes\": 1e9, \"copy_slowdown\": 0.5, ", "copy_slowdown"},
      {"{\"name\": \"x\", \"memory_bytes\": 1e9, \"matmul_gflops_by_rows\": {\"f32\": [[4, 1], [2, 3]]}, ",
       "rows ascending"},
      {"{\"name\": \"x\", \"memory_bytes\": \"big\", ", "'memory_bytes'"},
      /* nested keys: a misspelt one was ignored and its figure defaulted */
      {"{\"name\": \"x\", \"memory_bytes\": 1e9, \"matmul_gflops_by_rows\": {\"f32\": [[1, 1]], "
       "\"bf61\": [[1, 1]]}, ", "unknown field 'matmul_gflops_by_rows.bf61'"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char text[2048];
    snprintf(text, sizeof text, "%s%s}", cases[i].head, good_tail);
    write_file(path, text);
    moe_hw_profile p;
    moe_error err = {0};
    ck_assert_int_eq(moe_hw_profile_load(&p, path, &err), MOE_ERR_FORMAT);
    ck_assert_msg(strstr(err.msg, cases[i].expect) && strstr(err.msg, path), "case %zu: %s", i,
                  err.msg);
  }
  /* misspelt keys inside matmul_tflops, h2d_gbps and sources */
  static const char *const nested[][2] = {
      {"{\"f32\": 1, \"bf16\": 2, \"fp8\": 4}", "unknown field 'matmul_tflops.fp8'"},
      {"{\"f32\": 1, \"bf16\": 2}, \"h2d_gbps\": {\"pinned\": 10, \"pageable\": 5, \"pinnned\": 30}, "
       "\"h2d_latency_us\": 2, \"launch_overhead_us\": 1, \"sources\": {\"memory_bytes\": \"a\", "
       "\"memory_gbps\": \"a\", \"matmul_tflops\": \"a\", \"h2d_gbps.pinned\": \"a\", "
       "\"h2d_gbps.pageable\": \"a\", \"h2d_latency_us\": \"a\", \"launch_overhead_us\": \"a\"}}",
       "unknown field 'h2d_gbps.pinnned'"},
  };
  for (size_t i = 0; i < 2; i++) {
    char text[2048];
    if (i == 0)
      snprintf(text, sizeof text, "{\"name\": \"x\", \"memory_bytes\": 1e9, \"memory_gbps\": 100, "
               "\"matmul_tflops\": %s, \"h2d_gbps\": {\"pinned\": 10, \"pageable\": 5}, "
               "\"h2d_latency_us\": 2, \"launch_overhead_us\": 1, \"sources\": {}}", nested[i][0]);
    else
      snprintf(text, sizeof text, "{\"name\": \"x\", \"memory_bytes\": 1e9, \"memory_gbps\": 100, "
               "\"matmul_tflops\": %s", nested[i][0]);
    write_file(path, text);
    moe_hw_profile q;
    moe_error e2 = {0};
    ck_assert_int_eq(moe_hw_profile_load(&q, path, &e2), MOE_ERR_FORMAT);
    ck_assert_msg(strstr(e2.msg, nested[i][1]) != NULL, "nested %zu: %s", i, e2.msg);
  }
  /* a figure without its source */
  write_file(path, "{\"name\": \"x\", \"memory_bytes\": 1e9, \"memory_gbps\": 100, \"matmul_tflops\": "
                   "{\"f32\": 1, \"bf16\": 2}, \"h2d_gbps\": {\"pinned\": 10, \"pageable\": 5}, "
                   "\"h2d_latency_us\": 2, \"launch_overhead_us\": 1, \"sources\": {}}");
  moe_hw_profile p;
  moe_error err = {0};
  ck_assert_int_eq(moe_hw_profile_load(&p, path, &err), MOE_ERR_FORMAT);
  ck_assert_msg(strstr(err.msg, "sources.memory_bytes"), "%s", err.msg);
  tu_rmtree(dir);
}
END_TEST

START_TEST(save_then_load_round_trips) {
  char dir[256], path[512];
  tu_tempdir(dir, sizeof dir);
  snprintf(path, sizeof path, "%s/cal.json", dir);
  moe_hw_profile a = toy(), b;
  a.calibrated = true;
  a.copy_slowdown = 1.25;
  a.n_rates = 3;
  const double m[] = {1, 8, 64}, g[] = {5, 30, 90};
  memcpy(a.rate_m, m, sizeof m);
  memcpy(a.rate_gflops, g, sizeof g);
  moe_error err = {0};
  ck_assert_msg(moe_hw_profile_save(&a, path, "measured", &err) == MOE_OK, "%s", err.msg);
  ck_assert_msg(moe_hw_profile_load(&b, path, &err) == MOE_OK, "%s", err.msg);
  ck_assert(b.calibrated);
  ck_assert_int_eq(b.n_rates, 3);
  ck_assert_double_eq_tol(b.rate_gflops[1], 30, 1e-9);
  ck_assert_double_eq_tol(b.copy_slowdown, 1.25, 1e-9);
  ck_assert_double_eq_tol(b.h2d_pinned_gbps, 10, 1e-9);
  tu_rmtree(dir);
}
END_TEST

START_TEST(op_costs_are_rooflines) {
  moe_hw_profile p = toy();
  /* decode: 1 x 1000 x 1000 f32, memory-bound: 4e6 + 8e3 bytes / 100 GB/s */
  ck_assert_double_eq_tol(moe_cost_matmul(&p, 1, 1000, 1000, MOE_F32), 1e-6 + 4.008e6 / 1e11, 1e-12);
  /* prefill: 1000 rows, compute-bound: 2e9 FLOP / 1e12 */
  ck_assert_double_eq_tol(moe_cost_matmul(&p, 1000, 1000, 1000, MOE_F32), 1e-6 + 2e-3, 1e-12);
  /* bf16 halves the weight bytes and has its own rate */
  ck_assert_double_eq_tol(moe_cost_matmul(&p, 1, 1000, 1000, MOE_BF16), 1e-6 + 2.008e6 / 1e11, 1e-12);
  ck_assert_double_eq_tol(moe_cost_matmul(&p, 1000, 1000, 1000, MOE_BF16), 1e-6 + 0.5e-3, 1e-12);
  ck_assert_double_eq_tol(moe_cost_vector(&p, 1e6, 1e6), 1e-6 + 1e-5, 1e-12);
  ck_assert_double_eq_tol(moe_cost_copy(&p, 1e7, true), 2e-6 + 1e-3, 1e-12);
  ck_assert_double_eq_tol(moe_cost_copy(&p, 1e7, false), 2e-6 + 2e-3, 1e-12);
  ck_assert_double_eq_tol(moe_cost_transfer(&p, 5e6), 3e-6 + 1e-3, 1e-12);
  ck_assert_double_eq(moe_cost_matmul(&p, 0, 10, 10, MOE_F32), 0);
  /* a measured rate table: interpolated in log2(rows), proportional below it */
  p.n_rates = 2;
  p.rate_m[0] = 2, p.rate_m[1] = 8;
  p.rate_gflops[0] = 10, p.rate_gflops[1] = 40;
  ck_assert_double_eq_tol(moe_cost_matmul_rate(&p, 4, MOE_F32), 25e9, 1e-3);
  ck_assert_double_eq_tol(moe_cost_matmul_rate(&p, 1, MOE_F32), 5e9, 1e-3);
  ck_assert_double_eq_tol(moe_cost_matmul_rate(&p, 100, MOE_F32), 40e9, 1e-3);
  ck_assert_double_eq_tol(moe_cost_matmul_rate(&p, 100, MOE_BF16), 160e9, 1e-3);
}
END_TEST

START_TEST(clock_overlaps_copies_with_compute) {
  moe_hw_profile p = toy();
  p.h2d_latency_us = 0;
  moe_cost_clock c;
  moe_cost_clock_init(&c, &p);
  /* a 1 ms copy behind 0.4 ms of compute: compute waits 0.6 ms */
  const double done = moe_cost_copy_issue(&c, 1e7, true);
  ck_assert_double_eq_tol(done, 1e-3, 1e-15);
  moe_cost_compute(&c, 0.4e-3);
  moe_cost_compute_wait(&c, done);
  ck_assert_double_eq_tol(c.compute, 1e-3, 1e-15);
  ck_assert_double_eq_tol(c.stall, 0.6e-3, 1e-15);
  ck_assert_double_eq_tol(moe_cost_hidden_share(&c), 0.4, 1e-12);
  /* copies queue on their stream and start no earlier than the host issues them */
  moe_cost_compute(&c, 1e-3); /* compute at 2 ms */
  const double a = moe_cost_copy_issue(&c, 1e7, true), b = moe_cost_copy_issue(&c, 1e7, true);
  ck_assert_double_eq_tol(a, 3e-3, 1e-15);
  ck_assert_double_eq_tol(b, 4e-3, 1e-15);
  /* a wait for an earlier time costs nothing */
  moe_cost_compute_wait(&c, 1e-3);
  ck_assert_double_eq_tol(c.stall, 0.6e-3, 1e-15);
  /* copy_wait: later copies start after the event */
  moe_cost_copy_wait(&c, 10e-3);
  ck_assert_double_eq_tol(moe_cost_copy_issue(&c, 1e7, true), 11e-3, 1e-15);
  ck_assert_double_eq_tol(moe_cost_sync(&c), 11e-3, 1e-15);
}
END_TEST

START_TEST(clock_charges_latency_to_a_copy_on_an_idle_link) {
  moe_hw_profile p = toy(); /* 2 us latency, 10 GB/s */
  moe_cost_clock c;
  moe_cost_clock_init(&c, &p);
  const double a = moe_cost_copy_issue(&c, 1e7, true), b = moe_cost_copy_issue(&c, 1e7, true);
  ck_assert_double_eq_tol(a, 2e-6 + 1e-3, 1e-15);
  ck_assert_double_eq_tol(b, 2e-6 + 2e-3, 1e-15); /* queued: no second latency */
  moe_cost_compute(&c, 5e-3);                     /* the link goes idle */
  ck_assert_double_eq_tol(moe_cost_copy_issue(&c, 1e7, true), 5e-3 + 2e-6 + 1e-3, 1e-15);
}
END_TEST

START_TEST(clock_slows_compute_under_a_copy) {
  moe_hw_profile p = toy();
  p.h2d_latency_us = 0;
  p.copy_slowdown = 2;
  moe_cost_clock c;
  moe_cost_clock_init(&c, &p);
  (void)moe_cost_copy_issue(&c, 1e7, true); /* link busy over [0, 1 ms] */
  moe_cost_compute(&c, 0.4e-3);             /* at half speed: 0.8 ms */
  ck_assert_double_eq_tol(c.compute, 0.8e-3, 1e-15);
  moe_cost_compute(&c, 0.4e-3); /* 0.2 ms of the link left: 0.1 ms of work, then 0.3 ms */
  ck_assert_double_eq_tol(c.compute, 1.3e-3, 1e-15);
  moe_cost_compute(&c, 0.1e-3); /* link idle: full speed */
  ck_assert_double_eq_tol(c.compute, 1.4e-3, 1e-15);
}
END_TEST

/* ---------------------------------------------------------------- sim backend */

static void open_sim(moe_device *dev, const char *routing) {
  moe_error err = {0};
  moe_backend_options o = {.hardware = HW("a100-80g-pcie4"), .routing = routing, .seed = 3};
  ck_assert_msg(moe_device_open(dev, "sim", &o, &err) == MOE_OK, "%s", err.msg);
}

START_TEST(sim_needs_a_profile_and_a_valid_routing) {
  moe_device dev;
  moe_error err = {0};
  moe_backend_options none = {0};
  ck_assert_int_eq(moe_device_open(&dev, "sim", &none, &err), MOE_ERR_INVALID);
  ck_assert_msg(strstr(err.msg, "hardware profile"), "%s", err.msg);
  static const char *const bad[] = {"zipf", "zipf:0", "zipf:x", "correlated:1", "uniform:1",
                                    "zipf:1,", "normal:2", "zipf:1e400", "miss:2", "miss:-0.1"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    moe_error e2 = {0};
    moe_backend_options o = {.hardware = HW("a100-80g-pcie4"), .routing = bad[i]};
    ck_assert_msg(moe_device_open(&dev, "sim", &o, &e2) == MOE_ERR_INVALID, "%s accepted", bad[i]);
  }
  /* and a real backend refuses the sim's options */
  moe_error e3 = {0};
  moe_backend_options o = {.hardware = HW("a100-80g-pcie4")};
  ck_assert_int_eq(moe_device_open(&dev, "cpu", &o, &e3), MOE_ERR_INVALID);
  ck_assert_msg(strstr(e3.msg, "--backend sim"), "%s", e3.msg);
}
END_TEST

/* Share of (row, step) draws whose top-1 equals the previous step's, and
 * the most popular expert's share, over 200 steps of 8 rows. */
static void routing_stats(const char *routing, double *same, double *top_share, int *bad) {
  moe_device dev;
  open_sim(&dev, routing);
  const int n = 16, k = 2, rows = 8, steps = 200;
  int32_t idx[8 * 2], prev[8 * 2] = {0};
  float w[8 * 2];
  int count[16] = {0}, repeats = 0;
  *bad = 0;
  moe_error err = {0};
  for (int s = 0; s < steps; s++) {
    dev.ops->set_context(dev.be, 5, -1, (unsigned long long)s + 1);
    ck_assert(moe_backend_router_topk(dev.ops, dev.be, idx, w, NULL, rows, n, k, true, NULL, &err) ==
              MOE_OK);
    for (int r = 0; r < rows; r++) {
      if (idx[r * k] < 0 || idx[r * k] >= n || idx[r * k + 1] < 0 || idx[r * k + 1] >= n ||
          idx[r * k] == idx[r * k + 1] || fabsf(w[r * k] + w[r * k + 1] - 1.0f) > 1e-6f)
        (*bad)++;
      if (idx[r * k] >= 0 && idx[r * k] < n) count[idx[r * k]]++;
      if (s > 0 && idx[r * k] == prev[r * k]) repeats++;
    }
    memcpy(prev, idx, sizeof idx);
  }
  int top = 0;
  for (int x = 0; x < n; x++) top = count[x] > top ? count[x] : top;
  *same = (double)repeats / (double)((steps - 1) * rows);
  *top_share = (double)top / (double)(steps * rows);
  moe_device_close(&dev);
}

START_TEST(sim_routing_sources) {
  double same, top;
  int bad;
  routing_stats("uniform", &same, &top, &bad);
  ck_assert_int_eq(bad, 0);
  ck_assert_msg(same < 0.15 && top < 0.15, "uniform: same %.3f top %.3f", same, top);
  routing_stats("zipf:1.5", &same, &top, &bad);
  ck_assert_int_eq(bad, 0);
  ck_assert_msg(top > 0.3, "zipf: top expert share %.3f", top);
  routing_stats("correlated:0.9", &same, &top, &bad);
  ck_assert_int_eq(bad, 0);
  ck_assert_msg(same > 0.85, "correlated: same as the previous step %.3f", same);
  /* the same context draws the same experts (a pre-gate and the router agree) */
  moe_device dev;
  open_sim(&dev, "zipf:1");
  int32_t a[4], b[4];
  float w[4];
  moe_error err = {0};
  dev.ops->set_context(dev.be, 2, -1, 7);
  ck_assert(moe_backend_router_topk(dev.ops, dev.be, a, w, NULL, 2, 8, 2, false, NULL, &err) == MOE_OK);
  dev.ops->set_context(dev.be, 3, -1, 7);
  dev.ops->set_context(dev.be, 2, -1, 7);
  ck_assert(moe_backend_router_topk(dev.ops, dev.be, b, w, NULL, 2, 8, 2, false, NULL, &err) == MOE_OK);
  ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
  moe_device_close(&dev);
}
END_TEST

/* Every built-in policy on a virtual model of `preset` on the sim. */
static void sim_policies(const char *preset, const char *hardware, run_result *res, int *np) {
  moe_model *m = NULL;
  moe_error err = {0};
  ck_assert_msg(cli_preset_model_for(preset, "sim", NULL, &m, &err) == MOE_OK, "%s", err.msg);
  ck_assert(moe_model_is_virtual(m));
  *np = (int)moe_policy_count();
  for (int i = 0; i < *np; i++) {
    const moe_policy *pol = moe_policy_at((size_t)i);
    run_spec sp = {.model = m, .policy = pol,
                   .routing = pol->default_routing == MOE_POLICY_ROUTING_PREGATED
                                  ? MOE_ROUTING_PREGATED : MOE_ROUTING_CONVENTIONAL,
                   .backend = "sim", .hardware = hardware, .batch = 1, .prompt_len = 32,
                   .gen_len = 16, .prompt_seed = 1, .requests = 1};
    runner_run(&sp, &res[i]);
  }
  moe_model_free(m);
}

START_TEST(sim_runs_every_policy_modeled_and_deterministic) {
  run_result a[16], b[16];
  int np = 0;
  sim_policies("switch-base-8", HW("a100-80g-pcie4"), a, &np);
  sim_policies("switch-base-8", HW("a100-80g-pcie4"), b, &np);
  int go = -1, od = -1, pg = -1;
  for (int i = 0; i < np; i++) {
    const char *n = moe_policy_at((size_t)i)->name;
    ck_assert_msg(a[i].status == MOE_OK, "%s: %s", n, a[i].error);
    ck_assert(a[i].modeled);
    /* deterministic: the same figures, bit for bit */
    ck_assert_msg(a[i].total_s == b[i].total_s && a[i].decode_s == b[i].decode_s, "%s", n);
    ck_assert(a[i].total_s > 0);
    /* the plan is the peak (the engine's accounting runs unchanged) */
    ck_assert_uint_eq(a[i].peak_bytes, a[i].planned_bytes);
    if (!strcmp(n, "gpu-only")) go = i;
    if (!strcmp(n, "ondemand")) od = i;
    if (!strcmp(n, "pregated")) pg = i;
  }
  ck_assert(go >= 0 && od >= 0 && pg >= 0);
  /* on an A100 profile the copies cost: gpu-only fastest, pre-gating beats on demand */
  ck_assert(a[go].tokens_per_s > a[pg].tokens_per_s);
  ck_assert(a[pg].tokens_per_s > a[od].tokens_per_s);
  ck_assert(a[go].stats.stall_s == 0 && a[od].stats.stall_s > 0);
  ck_assert(a[od].stats.bytes_h2d > 0);
  for (int i = 0; i < np; i++) run_result_free(&a[i]), run_result_free(&b[i]);
}
END_TEST

/* miss:P: a pre-gate's prediction of a row is drawn afresh with
 * probability P, so pregated-spec's hit rate falls and its wasted copies
 * and misses rise; miss:0 predicts every row. */
START_TEST(sim_mispredictions) {
  moe_model *m = NULL;
  moe_error err = {0};
  ck_assert(cli_preset_model_for("switch-base-8", "sim", NULL, &m, &err) == MOE_OK);
  const moe_policy *pol = moe_policy_find("pregated-spec");
  double hit[3];
  unsigned long long wasted[3];
  const char *specs[3] = {"uniform", "miss:0.5", "miss:1"};
  for (int i = 0; i < 3; i++) {
    run_spec sp = {.model = m, .policy = pol, .routing = MOE_ROUTING_CONVENTIONAL, .backend = "sim",
                   .hardware = HW("a100-80g-pcie4"), .sim_routing = specs[i], .batch = 1,
                   .prompt_len = 16, .gen_len = 24, .prompt_seed = 1, .requests = 1};
    run_result r;
    runner_run(&sp, &r);
    ck_assert_msg(r.status == MOE_OK, "%s", r.error);
    hit[i] = (double)r.stats.pregate_hits / (double)r.stats.pregate_total;
    wasted[i] = r.stats.wasted;
    run_result_free(&r);
  }
  ck_assert_msg(hit[0] == 1.0, "uniform: every prediction right (%g)", hit[0]);
  ck_assert_msg(hit[1] > 0.35 && hit[1] < 0.75, "miss:0.5: hit rate %g", hit[1]);
  ck_assert_msg(hit[2] < 0.3, "miss:1: hit rate %g", hit[2]);
  ck_assert_msg(wasted[0] < wasted[1] && wasted[1] < wasted[2], "wasted copies %llu %llu %llu",
                wasted[0], wasted[1], wasted[2]);
  moe_model_free(m);
}
END_TEST

START_TEST(sim_runs_a_model_larger_than_this_machine) {
  /* Switch-Large-128: 105 GB of f32 weights, modeled in well under a second */
  run_result r[16];
  int np = 0;
  sim_policies("switch-large-128", HW("a100-80g-pcie4"), r, &np);
  for (int i = 0; i < np; i++) {
    const char *n = moe_policy_at((size_t)i)->name;
    if (!strcmp(n, "gpu-only")) {
      ck_assert_msg(r[i].status == MOE_ERR_OOM, "gpu-only on 80 GB: %s", r[i].error);
    } else {
      ck_assert_msg(r[i].status == MOE_OK, "%s: %s", n, r[i].error);
      ck_assert_uint_eq(r[i].peak_bytes, r[i].planned_bytes);
      /* the host-compute class keeps what fits resident; the others copy */
      if (moe_policy_has_role(moe_policy_at((size_t)i), MOE_POLICY_ROLE_HOST))
        ck_assert(r[i].peak_bytes <= (size_t)80 << 30 && r[i].stats.host_experts > 0);
      else
        ck_assert(r[i].peak_bytes < (size_t)20e9);
    }
    run_result_free(&r[i]);
  }
}
END_TEST

/* A run's op trace replayed on the profile it ran on gives back the run's
 * own modeled times: the replay and the sim are one cost model. */
START_TEST(replay_of_a_sim_trace_reproduces_it) {
  char dir[256], trace[512];
  tu_tempdir(dir, sizeof dir);
  snprintf(trace, sizeof trace, "%s/t.json", dir);
  static const char *const presets[] = {"switch-base-8", "ci-small"};
  static const char *const policies[] = {"pregated", "ondemand", "prefetch-all"};
  moe_hw_profile p;
  moe_error err = {0};
  ck_assert(moe_hw_profile_load(&p, HW("h200"), &err) == MOE_OK);
  for (int k = 0; k < 2; k++)
    for (int j = 0; j < 3; j++) {
      moe_model *m = NULL;
      ck_assert_msg(cli_preset_model_for(presets[k], "sim", NULL, &m, &err) == MOE_OK, "%s", err.msg);
      const moe_policy *pol = moe_policy_find(policies[j]);
      run_spec sp = {.model = m, .policy = pol,
                     .routing = pol->default_routing == MOE_POLICY_ROUTING_PREGATED
                                    ? MOE_ROUTING_PREGATED : MOE_ROUTING_CONVENTIONAL,
                     .backend = "sim", .hardware = HW("h200"), .sim_routing = "zipf:1",
                     .batch = 2, .prompt_len = 16, .gen_len = 8, .prompt_seed = 5, .requests = 1,
                     .trace_path = trace};
      run_result r;
      runner_run(&sp, &r);
      ck_assert_msg(r.status == MOE_OK, "%s", r.error);
      replay_result rr;
      ck_assert_msg(replay_trace(trace, &p, &rr, &err) == MOE_OK, "%s", err.msg);
      ck_assert(rr.trace_modeled);
      const int fw = moe_config_is_encdec(moe_model_config(m)) ? 8 + 1 : 8;
      ck_assert_int_eq(rr.n_forwards, fw);
      /* the run's total (prefill + decode) is the replay's makespan */
      ck_assert_msg(fabs(rr.modeled_s - r.total_s) <= 1e-6 * r.total_s + 1e-9,
                    "%s/%s: replay %.9f run %.9f", presets[k], policies[j], rr.modeled_s, r.total_s);
      ck_assert_msg(fabs(rr.modeled_s - rr.measured_s) <= 1e-6 * rr.modeled_s + 1e-8,
                    "replay %.9f trace %.9f", rr.modeled_s, rr.measured_s);
      ck_assert(rr.copies > 0);
      /* the streaming reader (our own traces) and the whole-document one agree */
      json_error_t je;
      json_t *doc = json_load_file(trace, JSON_REJECT_DUPLICATES, &je);
      ck_assert_ptr_nonnull(doc);
      replay_result whole;
      ck_assert_msg(replay_trace_json(doc, trace, &p, &whole, &err) == MOE_OK, "%s", err.msg);
      ck_assert(whole.modeled_s == rr.modeled_s && whole.n_forwards == rr.n_forwards &&
                whole.stall_s == rr.stall_s && whole.ops == rr.ops);
      replay_result_free(&whole);
      json_decref(doc);
      replay_result_free(&rr);
      run_result_free(&r);
      moe_model_free(m);
    }
  tu_rmtree(dir);
}
END_TEST

/* --record-routing on the cpu backend, replayed by the sim's trace:FILE
 * routing source: the sim runs the recorded routing, so its own log is the
 * same file, line for line. */
START_TEST(sim_replays_a_recorded_routing) {
  char dir[256], a[512], b[512], spec[600];
  tu_tempdir(dir, sizeof dir);
  snprintf(a, sizeof a, "%s/cpu.log", dir);
  snprintf(b, sizeof b, "%s/sim.log", dir);
  snprintf(spec, sizeof spec, "trace:%s", a);
  const char *presets[] = {"ci-small", "switch-tiny"};
  for (int k = 0; k < 2; k++) {
    moe_model *real = NULL, *virt = NULL;
    moe_error err = {0};
    ck_assert(cli_preset_model(presets[k], NULL, &real, &err) == MOE_OK);
    ck_assert(cli_preset_model_for(presets[k], "sim", NULL, &virt, &err) == MOE_OK);
    const moe_policy *pol = moe_policy_find("ondemand");
    run_spec sp = {.model = real, .policy = pol, .backend = "cpu", .batch = 2, .prompt_len = 8,
                   .gen_len = 6, .prompt_seed = 3, .requests = 1, .routing_log = a};
    run_result r;
    runner_run(&sp, &r);
    ck_assert_msg(r.status == MOE_OK, "%s", r.error);
    run_result_free(&r);
    sp.model = virt;
    sp.backend = "sim";
    sp.hardware = HW("h200");
    sp.sim_routing = spec;
    sp.routing_log = b;
    runner_run(&sp, &r);
    ck_assert_msg(r.status == MOE_OK, "%s", r.error);
    run_result_free(&r);
    char cmd[1200], out[64];
    snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s' && echo same", a, b);
    ck_assert_int_eq(tu_run(cmd, out, sizeof out), 0);
    ck_assert_msg(strstr(out, "same"), "%s: the sim's routing differs from the recorded one", presets[k]);
    moe_model_free(real);
    moe_model_free(virt);
  }
  /* a FIFO nobody writes is refused, not waited on */
  char fifo[600];
  snprintf(fifo, sizeof fifo, "%s/fifo", dir);
  ck_assert_int_eq(mkfifo(fifo, 0600), 0);
  {
    char fspec[700];
    snprintf(fspec, sizeof fspec, "trace:%s", fifo);
    moe_device dev;
    moe_backend_options o = {.hardware = HW("h200"), .routing = fspec};
    moe_error err = {0};
    ck_assert_int_eq(moe_device_open(&dev, "sim", &o, &err), MOE_ERR_IO);
    ck_assert_msg(strstr(err.msg, "not a regular file"), "%s", err.msg);
  }
  /* bad logs: named, with the line */
  static const char *const bad[] = {"1 2 3 x\n", "1 2\n", "1 2 3 4\n1 2 3 4 5\n", "# only a comment\n",
                                    "-1 2 3 4\n", "1 2 3 99999999999\n"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    write_file(a, bad[i]);
    moe_device dev;
    moe_backend_options o = {.hardware = HW("h200"), .routing = spec};
    moe_error err = {0};
    ck_assert_msg(moe_device_open(&dev, "sim", &o, &err) == MOE_ERR_FORMAT, "case %zu accepted", i);
    ck_assert_msg(strstr(err.msg, a), "case %zu: %s", i, err.msg);
  }
  tu_rmtree(dir);
}
END_TEST

/* Every op, empty ones included, through a traced sim device: the replay
 * of the trace charges exactly what the sim did (one table of counts). */
START_TEST(replay_charges_what_the_sim_charges_op_by_op) {
  char dir[256], trace[512];
  tu_tempdir(dir, sizeof dir);
  snprintf(trace, sizeof trace, "%s/ops.json", dir);
  /* a profile where FLOPs and bytes both show: slow vector ops */
  char prof_path[512];
  snprintf(prof_path, sizeof prof_path, "%s/slow.json", dir);
  moe_hw_profile slow = toy();
  slow.vector_gflops = 0.01;
  slow.vector_gbps = 0.05;
  moe_device dev;
  moe_error err = {0};
  ck_assert(moe_hw_profile_save(&slow, prof_path, "test", &err) == MOE_OK);
  moe_backend_options o = {.hardware = prof_path};
  ck_assert(moe_device_open(&dev, "sim", &o, &err) == MOE_OK);
  moe_trace *t = NULL;
  ck_assert(moe_trace_open(&t, trace, &err) == MOE_OK);
  ck_assert(moe_device_trace(&dev, t, &err) == MOE_OK);
  const moe_backend_ops *ops = dev.ops;
  moe_backend *be = dev.be;
  float *a = NULL, *b = NULL;
  int32_t *ix = NULL;
  ck_assert(ops->device_alloc(be, 1 << 20, (void **)&a, &err) == MOE_OK);
  ck_assert(ops->device_alloc(be, 1 << 20, (void **)&b, &err) == MOE_OK);
  ck_assert(ops->device_alloc(be, 1 << 16, (void **)&ix, &err) == MOE_OK);
  const moe_weight w = {a, MOE_BF16, 256, 128}, g = {a, MOE_F32, 1, 128};
  const moe_attn_shape sh = {2, 3, 5, 16, 4, 2, 32};
  const moe_attn_ex ax = {2, 3, 0, 7, 16, 4, 2, 32, true, 0.5f, NULL, NULL, 0};
  const moe_router_ex rx = {2, MOE_SCORING_SIGMOID, NULL, 4, 2, MOE_GROUP_TOP2_SUM, true, 2.0f, true};
  const moe_rope_ex re = {4, 4 * 24, 24, 16, 8, true, a, 1.1f, 0};
  const moe_weight kvb = {a, MOE_BF16, 4 * (16 + 12), 24};
  const double t0 = ops->modeled_seconds(be);
  moe_trace_mark(t, "forward");
  for (size_t m = 0; m < 3; m += 2) { /* m = 0: every op empty, nothing charged */
    ck_assert(ops->matmul(be, b, a, m, &w, NULL, &err) == MOE_OK);
    ck_assert(ops->rmsnorm(be, b, a, m, &g, 1e-6f, &err) == MOE_OK);
    ck_assert(moe_backend_rope(ops, be, a, m, ix, 4, 32, 1e4f, a, &err) == MOE_OK);
    ck_assert(ops->kv_store(be, a, b, a, b, &sh, &err) == MOE_OK);
    ck_assert(moe_backend_attention(ops, be, b, a, a, a, &sh, &err) == MOE_OK);
    ck_assert(ops->attention_ex(be, b, a, a, a, &ax, &err) == MOE_OK);
    ck_assert(ops->rope_ex(be, a, m, ix, &re, &err) == MOE_OK);
    const moe_mla_shape ms = {2, (int)m, 3, 16, 4, 16, 8, 12, 24, 0.2f};
    ck_assert(ops->mla_attention(be, b, a, a, a, a, a, &kvb, &ms, &err) == MOE_OK);
    ck_assert(ops->unary(be, b, a, m * 100, MOE_UNARY_RELU, 0, &err) == MOE_OK);
    ck_assert(moe_backend_router_topk(ops, be, ix, b, a, m, 16, 2, true, NULL, &err) == MOE_OK);
    ck_assert(ops->router_topk_ex(be, ix, b, a, m, 16, &rx, &err) == MOE_OK);
    ck_assert(ops->swiglu(be, b, b, a, m * 100, &err) == MOE_OK);
    ck_assert(ops->add(be, b, a, m * 100, &err) == MOE_OK);
    ck_assert(ops->embed(be, b, &w, ix, m, &err) == MOE_OK);
    ck_assert(ops->gather_rows(be, b, a, ix, m, 128, &err) == MOE_OK);
    ck_assert(ops->scatter_add_rows(be, b, a, ix, b, 1, false, m, 128, &err) == MOE_OK);
    ck_assert(ops->upload(be, ix, ix, m * 4, &err) == MOE_OK);
  }
  float back[16];
  ck_assert(ops->download(be, back, b, sizeof back, &err) == MOE_OK);
  const double charged = ops->modeled_seconds(be) - t0;
  ck_assert(charged > 0);
  moe_device_close(&dev);
  ck_assert(moe_trace_close(t, &err) == MOE_OK);
  moe_hw_profile p;
  ck_assert(moe_hw_profile_load(&p, prof_path, &err) == MOE_OK);
  replay_result r;
  ck_assert_msg(replay_trace(trace, &p, &r, &err) == MOE_OK, "%s", err.msg);
  ck_assert_msg(fabs(r.modeled_s - charged) <= 1e-9 * charged, "replay %.12g, sim %.12g",
                r.modeled_s, charged);
  replay_result_free(&r);
  tu_rmtree(dir);
}
END_TEST

/* A trace of our own format cut short, or with a broken line, is refused
 * by the streaming reader, naming the file. */
START_TEST(replay_refuses_a_cut_trace) {
  char dir[256], trace[512], cut[512];
  tu_tempdir(dir, sizeof dir);
  snprintf(trace, sizeof trace, "%s/t.json", dir);
  snprintf(cut, sizeof cut, "%s/cut.json", dir);
  moe_model *m = NULL;
  moe_error err = {0};
  ck_assert(cli_preset_model_for("ci-small", "sim", NULL, &m, &err) == MOE_OK);
  run_spec sp = {.model = m, .policy = moe_policy_find("ondemand"), .backend = "sim",
                 .hardware = HW("h200"), .batch = 1, .prompt_len = 4, .gen_len = 4,
                 .prompt_seed = 1, .requests = 1, .trace_path = trace};
  run_result r;
  runner_run(&sp, &r);
  ck_assert_msg(r.status == MOE_OK, "%s", r.error);
  run_result_free(&r);
  moe_model_free(m);
  FILE *f = fopen(trace, "rb");
  ck_assert_ptr_nonnull(f);
  fseek(f, 0, SEEK_END);
  const long n = ftell(f);
  rewind(f);
  char *buf = malloc((size_t)n + 1);
  ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  moe_hw_profile p;
  ck_assert(moe_hw_profile_load(&p, HW("h200"), &err) == MOE_OK);
  /* cut in the middle of the events */
  f = fopen(cut, "wb");
  fwrite(buf, 1, (size_t)n / 2, f);
  fclose(f);
  replay_result rr;
  ck_assert_int_eq(replay_trace(cut, &p, &rr, &err), MOE_ERR_FORMAT);
  ck_assert_msg(strstr(err.msg, cut), "%s", err.msg);
  /* a broken line in the middle */
  char *mid = strstr(buf + n / 2, "\n{");
  ck_assert_ptr_nonnull(mid);
  mid[2] = '[';
  f = fopen(cut, "wb");
  fwrite(buf, 1, (size_t)n, f);
  fclose(f);
  err = (moe_error){0};
  ck_assert_int_eq(replay_trace(cut, &p, &rr, &err), MOE_ERR_FORMAT);
  ck_assert_msg(strstr(err.msg, cut), "%s", err.msg);
  free(buf);
  tu_rmtree(dir);
}
END_TEST

START_TEST(replay_refuses_bad_traces) {
  char dir[256], path[512];
  tu_tempdir(dir, sizeof dir);
  snprintf(path, sizeof path, "%s/bad.json", dir);
  moe_hw_profile p = toy();
  static const char *const bad[] = {
      "[]",
      "{\"traceEvents\": 3}",
      "{\"traceEvents\": [{\"ph\": \"X\", \"tid\": 1, \"name\": \"matmul\", \"ts\": 0, \"dur\": -1}]}",
      "{\"traceEvents\": [{\"ph\": \"X\", \"tid\": 1, \"name\": \"embed\", \"ts\": 0, \"dur\": 1, "
      "\"args\": {\"event\": 1e300}}]}",
      "{\"traceEvents\": [{\"ph\": \"X\", \"tid\": 1, \"name\": \"matmul\", \"ts\": 0, \"dur\": 1, "
      "\"args\": {\"m\": 1, \"rows\": 2, \"cols\": 2, \"dtype\": \"f64\"}}]}",
      "{\"traceEvents\": [{\"ph\": \"X\", \"tid\": 1, \"name\": \"add\", \"ts\": 0, \"dur\": 1}]}",
      "{\"traceEvents\": [{\"ph\": 1}]}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    write_file(path, bad[i]);
    replay_result r;
    moe_error err = {0};
    ck_assert_msg(replay_trace(path, &p, &r, &err) == MOE_ERR_FORMAT, "case %zu accepted", i);
    ck_assert_msg(strstr(err.msg, path), "case %zu: %s", i, err.msg);
  }
  tu_rmtree(dir);
}
END_TEST

int main(void) {
  Suite *s = suite_create("cost model and sim backend");
  TCase *tc = tcase_create("cost");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, shipped_profiles_load);
  tcase_add_test(tc, bad_profiles_are_refused_naming_the_field);
  tcase_add_test(tc, regime_model_by_hand);
  tcase_add_test(tc, profile_link_rates_are_read_and_checked);
  tcase_add_test(tc, save_then_load_round_trips);
  tcase_add_test(tc, op_costs_are_rooflines);
  tcase_add_test(tc, clock_overlaps_copies_with_compute);
  tcase_add_test(tc, clock_slows_compute_under_a_copy);
  tcase_add_test(tc, clock_charges_latency_to_a_copy_on_an_idle_link);
  tcase_add_test(tc, sim_needs_a_profile_and_a_valid_routing);
  tcase_add_test(tc, sim_routing_sources);
  tcase_add_test(tc, sim_runs_every_policy_modeled_and_deterministic);
  tcase_add_test(tc, sim_runs_a_model_larger_than_this_machine);
  tcase_add_test(tc, sim_mispredictions);
  tcase_add_test(tc, replay_of_a_sim_trace_reproduces_it);
  tcase_add_test(tc, replay_refuses_bad_traces);
  tcase_add_test(tc, replay_refuses_a_cut_trace);
  tcase_add_test(tc, replay_charges_what_the_sim_charges_op_by_op);
  tcase_add_test(tc, sim_replays_a_recorded_routing);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
