/* The host stream of the modeled clock (moe/cost.h: moe_cost_host_work,
 * moe_cost_host_run, moe_cost_sync): a job's time from the profile's host
 * section (NAN without one), when jobs start (host stream free, issued by
 * the compute stream, after their event) and what waiting for them costs.
 * The sim backend that charges them: test_backend_host_stream.c. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "moe/backend.h"
#include "moe/cost.h"
#include "testutil.h"

#define HW(name) MOE_SOURCE_DIR "/workloads/hardware/" name ".json"

/* A round-numbered device with a host: 100 GB/s host memory, 1 TFLOP/s
 * f32 and 2 TFLOP/s bf16 on the host. */
static moe_hw_profile toy_host(void) {
  moe_hw_profile p = {0};
  snprintf(p.name, sizeof p.name, "toy-host");
  p.memory_bytes = 1e9;
  p.memory_gbps = 1000;
  p.tflops[MOE_F32] = 10;
  p.tflops[MOE_F16] = p.tflops[MOE_BF16] = 40;
  p.h2d_pinned_gbps = 10;
  p.h2d_pageable_gbps = 5;
  p.copy_slowdown = 1;
  p.host_cores = 16;
  p.host_memory_gbps = 100;
  p.host_gflops_f32 = 1000;
  p.host_gflops_bf16 = 2000;
  return p;
}

START_TEST(host_work_is_the_larger_of_reading_and_math) {
  moe_hw_profile p = toy_host();
  /* 1 GB at 100 GB/s: 10 ms; 1 GFLOP at 1 TFLOP/s: 1 ms */
  moe_host_work w = {.flops = 1e9, .bytes = 1e9, .dtype = MOE_F32};
  ck_assert_double_eq_tol(moe_cost_host_work(&p, &w), 10e-3, 1e-15);
  /* 30 GFLOP: 30 ms at the f32 rate, 15 ms at the bf16 rate (f16 too) */
  w.flops = 30e9;
  ck_assert_double_eq_tol(moe_cost_host_work(&p, &w), 30e-3, 1e-15);
  w.dtype = MOE_BF16;
  ck_assert_double_eq_tol(moe_cost_host_work(&p, &w), 15e-3, 1e-15);
  w.dtype = MOE_F16;
  ck_assert_double_eq_tol(moe_cost_host_work(&p, &w), 15e-3, 1e-15);
  /* no bf16 rate: the f32 one */
  p.host_gflops_bf16 = 0;
  ck_assert_double_eq_tol(moe_cost_host_work(&p, &w), 30e-3, 1e-15);
  /* nothing to do: no time */
  const moe_host_work none = {0, 0, MOE_F32};
  ck_assert(moe_cost_host_work(&p, &none) == 0.0);
  /* no host section: NAN */
  p.host_memory_gbps = 0;
  ck_assert(isnan(moe_cost_host_work(&p, &w)));
}
END_TEST

/* The shipped profiles: those with a host section give a finite, positive
 * time; those without give NAN (the sim then refuses host_run). */
START_TEST(shipped_profiles_with_and_without_a_host_section) {
  const struct {
    const char *path;
    int host;
  } cases[] = {{HW("h200"), 1}, {HW("a100-80g-pcie4"), 1}, {HW("h100-pcie5"), 0}, {HW("l4"), 0},
               {HW("rtx4090"), 0}};
  const moe_host_work w = {.flops = 2e9, .bytes = 1e9, .dtype = MOE_BF16};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    moe_hw_profile p;
    moe_error err = {0};
    ck_assert_msg(moe_hw_profile_load(&p, cases[i].path, &err) == MOE_OK, "%s", err.msg);
    const double t = moe_cost_host_work(&p, &w);
    if (cases[i].host)
      ck_assert_msg(isfinite(t) && t > 0, "%s: %g", cases[i].path, t);
    else
      ck_assert_msg(isnan(t), "%s: %g (a host section now?)", cases[i].path, t);
  }
}
END_TEST

START_TEST(host_jobs_queue_and_start_when_issued_and_after_their_event) {
  moe_hw_profile p = toy_host();
  moe_cost_clock c;
  moe_cost_clock_init(&c, &p);
  /* two jobs back to back on the host stream; compute does not move */
  ck_assert_double_eq_tol(moe_cost_host_run(&c, 2e-3, 0), 2e-3, 1e-15);
  ck_assert_double_eq_tol(moe_cost_host_run(&c, 3e-3, 0), 5e-3, 1e-15);
  ck_assert(c.compute == 0);
  ck_assert_double_eq_tol(c.host_busy, 5e-3, 1e-15);
  ck_assert_int_eq(c.host_jobs, 2);
  /* a job issued later starts when the host issues it (compute's time) */
  moe_cost_compute(&c, 8e-3);
  ck_assert_double_eq_tol(moe_cost_host_run(&c, 1e-3, 0), 9e-3, 1e-15);
  /* ... and not before its event */
  ck_assert_double_eq_tol(moe_cost_host_run(&c, 1e-3, 20e-3), 21e-3, 1e-15);
  /* an event already past costs nothing */
  ck_assert_double_eq_tol(moe_cost_host_run(&c, 1e-3, 1e-3), 22e-3, 1e-15);
  /* a negative time is none */
  ck_assert_double_eq_tol(moe_cost_host_run(&c, -5.0, 0), 22e-3, 1e-15);
  ck_assert_double_eq_tol(c.host_busy, 8e-3, 1e-15);
  ck_assert_int_eq(c.host_jobs, 6);
  /* compute waiting for a job stalls as for a copy */
  const double end = moe_cost_host_run(&c, 4e-3, 0); /* 26 ms */
  moe_cost_compute_wait(&c, end);
  ck_assert_double_eq_tol(c.compute, 26e-3, 1e-15);
  ck_assert_double_eq_tol(c.stall, 18e-3, 1e-15);
}
END_TEST

START_TEST(sync_waits_for_the_host_stream) {
  moe_hw_profile p = toy_host();
  moe_cost_clock c;
  moe_cost_clock_init(&c, &p);
  moe_cost_compute(&c, 1e-3);
  moe_cost_host_run(&c, 5e-3, 0); /* ends at 6 ms */
  ck_assert_double_eq_tol(moe_cost_sync(&c), 6e-3, 1e-15);
  ck_assert_double_eq_tol(c.compute, 6e-3, 1e-15);
  /* the copy stream later than the host stream: the copy's end */
  const double copy = moe_cost_copy_issue(&c, 1e8, true); /* 10 ms at 10 GB/s */
  moe_cost_host_run(&c, 1e-3, 0);
  ck_assert(copy > c.host);
  ck_assert_double_eq_tol(moe_cost_sync(&c), copy, 1e-15);
  /* and the other way round */
  const double h = moe_cost_host_run(&c, 50e-3, 0);
  ck_assert_double_eq_tol(moe_cost_sync(&c), h, 1e-15);
}
END_TEST

int main(void) {
  Suite *s = suite_create("cost model: the host stream");
  TCase *tc = tcase_create("host stream");
  tcase_add_test(tc, host_work_is_the_larger_of_reading_and_math);
  tcase_add_test(tc, shipped_profiles_with_and_without_a_host_section);
  tcase_add_test(tc, host_jobs_queue_and_start_when_issued_and_after_their_event);
  tcase_add_test(tc, sync_waits_for_the_host_stream);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
