/* Experts computed where they live: the host-compute policies
 * (host-compute, fiddler, pregated-hybrid) give gpu-only's bits on the cpu
 * backend (f32, f16, bf16; a qwen2-moe-style model, Mixtral, Switch,
 * DeepSeek-V3) with experts really on the host, each policy's choices as
 * defined (which blocks, copy or host by the cost model, predictions
 * copied when they pay, no demand fetch after a wrong guess), the measured
 * peak equals the plan, and the clear
 * errors: a backend without a host stream, fiddler without figures. */
#include <check.h>
#include <stdatomic.h>
#include <time.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/cost.h"
#include "moe/device.h"
#include "moe/model.h"
#include "moe/policy.h"
#include "policy_util.h"
#include "testutil.h"

/* The device budget that leaves room for all but `host_experts` experts
 * under policy pol (its host buffers counted). */
static size_t budget_for(moe_model *m, const moe_policy *pol, int host_experts) {
  const moe_config *c = moe_model_config(m);
  moe_engine_options eo = {.max_batch = B, .max_seq = P + N, .all_logits = true, .policy = pol};
  size_t by_cat[MOE_MEM_CATEGORIES], total;
  const int slots = moe_config_n_moe_layers(c) * c->n_experts - host_experts;
  moe_engine_plan_memory(m, NULL, &eo, slots, by_cat, &total);
  return total;
}

static moe_status run_host(moe_model *m, const char *name, size_t budget, const moe_hw_profile *p,
                           run_out *out, moe_error *err) {
  const moe_policy *pol = moe_policy_find(name);
  ck_assert_msg(pol != NULL, "no policy %s", name);
  const moe_engine_options eo = {.policy = pol, .cost_profile = p, .host_threads = 2};
  return run_opts(m, &eo, budget, 5, out, err);
}

/* Logits compared: every row, or one per sequence for an encoder-decoder
 * model (what run_opts keeps of it). */
static size_t logit_bytes(const moe_model *m) {
  return (moe_config_is_encdec(moe_model_config(m)) ? (size_t)B : (size_t)B * P) * 40 * sizeof(float);
}

/* The three policies on model m, each with some experts on the host: the
 * reference's bits, and each policy's choices as it defines them. */
static void check_model(moe_model *m, const char *what) {
  moe_error err = {0};
  const moe_config *c = moe_model_config(m);
  run_out *ref = calloc(1, sizeof *ref), *o = calloc(1, sizeof *o);
  ck_assert_msg(run(m, moe_policy_reference(), MOE_ROUTING_CONVENTIONAL, 0, ref, &err) == MOE_OK,
                "%s: %s", what, err.msg);
  ck_assert_uint_eq(ref->stats.host_experts, 0);
  /* host-compute: one block's experts do not fit, so the first block runs
   * on the host and nothing is copied during the run */
  const moe_policy *hc = moe_policy_find("host-compute");
  ck_assert_msg(run_host(m, "host-compute", budget_for(m, hc, 1), NULL, o, &err) == MOE_OK,
                "%s: host-compute: %s", what, err.msg);
  ck_assert_int_eq(o->slots, (moe_config_n_moe_layers(c) - 1) * c->n_experts);
  ck_assert_uint_gt(o->stats.host_experts, 0);
  ck_assert_uint_eq(o->stats.fetches, 0);
  ck_assert_uint_gt(o->stats.host_xfer_bytes, 0);
  ck_assert_msg(o->peak == o->planned, "%s: host-compute: peak %zu, plan %zu", what, o->peak,
                o->planned);
  ck_assert_msg(memcmp(o->logits, ref->logits, logit_bytes(m)) == 0, "%s: host-compute: logits differ", what);
  ck_assert_msg(memcmp(o->tokens, ref->tokens, sizeof o->tokens) == 0, "%s: host-compute: tokens differ", what);
  /* fiddler, a slow link: every expert that is not resident runs on the host */
  const moe_policy *fd = moe_policy_find("fiddler");
  const moe_hw_profile slow_link = host_profile(0.001, 1000), slow_host = host_profile(1000, 0.001);
  const size_t fb = budget_for(m, fd, c->n_experts + 2);
  ck_assert_msg(run_host(m, "fiddler", fb, &slow_link, o, &err) == MOE_OK, "%s: fiddler: %s", what,
                err.msg);
  ck_assert_uint_gt(o->stats.host_experts, 0);
  ck_assert_uint_eq(o->stats.fetches, 0);
  ck_assert_msg(memcmp(o->logits, ref->logits, logit_bytes(m)) == 0, "%s: fiddler: logits differ", what);
  ck_assert_msg(memcmp(o->tokens, ref->tokens, sizeof o->tokens) == 0, "%s: fiddler: tokens differ", what);
  /* ... a slow host: it copies instead, and never computes on the host */
  ck_assert_msg(run_host(m, "fiddler", fb, &slow_host, o, &err) == MOE_OK, "%s: fiddler: %s", what,
                err.msg);
  ck_assert_uint_eq(o->stats.host_experts, 0);
  ck_assert_uint_gt(o->stats.fetches, 0);
  ck_assert_msg(memcmp(o->tokens, ref->tokens, sizeof o->tokens) == 0, "%s: fiddler: tokens differ", what);
  /* pregated-hybrid (no figures: every prediction copied): what is
   * neither resident nor predicted runs on the host, so no expert is ever
   * fetched on demand */
  const moe_policy *hy = moe_policy_find("pregated-hybrid");
  ck_assert_msg(run_host(m, "pregated-hybrid", budget_for(m, hy, c->n_experts), NULL, o, &err) ==
                    MOE_OK, "%s: pregated-hybrid: %s", what, err.msg);
  ck_assert_uint_gt(o->stats.host_experts, 0);
  ck_assert_uint_eq(o->stats.misses, 0);
  ck_assert_msg(o->peak == o->planned, "%s: pregated-hybrid: peak %zu, plan %zu", what, o->peak,
                o->planned);
  ck_assert_msg(memcmp(o->logits, ref->logits, logit_bytes(m)) == 0, "%s: pregated-hybrid: logits differ", what);
  ck_assert_msg(memcmp(o->tokens, ref->tokens, sizeof o->tokens) == 0, "%s: pregated-hybrid: tokens differ", what);
  free(ref);
  free(o);
}

/* The qwen2-moe-style test model (shared expert, dense layer) in each
 * storage dtype. */
START_TEST(bit_identical_in_every_dtype) {
  const moe_dtype dts[] = {MOE_F32, MOE_F16, MOE_BF16};
  moe_config c = cfg();
  moe_error err = {0};
  moe_synth_options so = {dts[_i], 77, 0.5, false};
  moe_model *m = NULL;
  ck_assert_msg(moe_model_synthetic(&m, &c, &so, &err) == MOE_OK, "%s", err.msg);
  check_model(m, moe_dtype_name(dts[_i]));
  moe_model_free(m);
}
END_TEST

/* Mixtral and DeepSeek-V3 (synthetic weights on the fixtures' configs),
 * and Switch (ReLU experts, encoder and decoder, expert capacity). */
START_TEST(bit_identical_across_families) {
  const char *cfgs[] = {MOE_SOURCE_DIR "/tests/fixtures/mixtral-tiny/config.json",
                        MOE_SOURCE_DIR "/tests/fixtures/deepseekv3-tiny/config.json", NULL};
  moe_error err = {0};
  moe_model *m = NULL;
  if (cfgs[_i] == NULL) {
    m = switch_model(&err);
    ck_assert_msg(m != NULL, "%s", err.msg);
  } else {
    moe_config c;
    ck_assert_msg(moe_config_load(&c, cfgs[_i], &err) == MOE_OK, "%s", err.msg);
    c.vocab = 40;
    moe_synth_options so = {MOE_BF16, 5, 0.5, false};
    ck_assert_msg(moe_model_synthetic(&m, &c, &so, &err) == MOE_OK, "%s", err.msg);
  }
  check_model(m, cfgs[_i] ? cfgs[_i] : "switch");
  moe_model_free(m);
}
END_TEST

/* A backend without a host stream: the engine refuses the policy, naming
 * both and the method; gpu-only still runs on it. */
START_TEST(needs_a_host_stream) {
  moe_backend_ops ops = *moe_backend_find("cpu");
  ops.host_run = NULL;
  moe_device dev;
  moe_error err = {0};
  ck_assert_msg(moe_device_open_ops(&dev, &ops, NULL, &err) == MOE_OK, "%s", err.msg);
  moe_engine *e = NULL;
  moe_engine_options eo = {.max_batch = 1, .max_seq = 8, .policy = moe_policy_find("host-compute")};
  ck_assert_int_eq(moe_engine_create(&e, g_model, &dev, &eo, &err), MOE_ERR_UNSUPPORTED);
  ck_assert_ptr_null(e);
  ck_assert_msg(strstr(err.msg, "host-compute") && strstr(err.msg, "host_run") && strstr(err.msg, "cpu"),
                "%s", err.msg);
  moe_error_clear(&err);
  eo.policy = moe_policy_reference();
  ck_assert_msg(moe_engine_create(&e, g_model, &dev, &eo, &err) == MOE_OK, "%s", err.msg);
  moe_engine_free(e);
  moe_device_close(&dev);
}
END_TEST

/* fiddler weighs modeled times: without a profile it says what it needs;
 * the environment carries the profile's figures. */
START_TEST(fiddler_needs_figures) {
  run_out *o = calloc(1, sizeof *o);
  moe_error err = {0};
  ck_assert_int_eq(run_host(g_model, "fiddler", 0, NULL, o, &err), MOE_ERR_INVALID);
  ck_assert_msg(strstr(err.msg, "fiddler") && strstr(err.msg, "--hardware"), "%s", err.msg);
  moe_error_clear(&err);
  const moe_hw_profile no_host = {.h2d_pinned_gbps = 10, .h2d_pageable_gbps = 10};
  ck_assert_int_eq(run_host(g_model, "fiddler", 0, &no_host, o, &err), MOE_ERR_INVALID);
  moe_error_clear(&err);
  /* everything fits: fiddler is gpu-only, nothing on the host */
  const moe_hw_profile p = host_profile(1, 100);
  ck_assert_msg(run_host(g_model, "fiddler", 0, &p, o, &err) == MOE_OK, "%s", err.msg);
  ck_assert_uint_eq(o->stats.host_experts, 0);
  ck_assert_uint_eq(o->stats.fetches, 0);
  free(o);
}
END_TEST

/* pregated-hybrid weighs each prediction as fiddler weighs a fetch: over
 * a slow link it copies nothing during the run (the host computes what is
 * not resident), beside a slow host it copies the predictions ahead; the
 * bits are the reference's either way, and nothing is fetched on demand. */
START_TEST(hybrid_copies_predictions_when_they_pay) {
  const moe_config *c = moe_model_config(g_model_pg);
  const moe_policy *hy = moe_policy_find("pregated-hybrid");
  const size_t budget = budget_for(g_model_pg, hy, c->n_experts);
  const moe_hw_profile slow_link = host_profile(0.001, 1000), slow_host = host_profile(1000, 0.001);
  run_out *ref = calloc(1, sizeof *ref), *o = calloc(1, sizeof *o);
  moe_error err = {0};
  ck_assert(run(g_model_pg, moe_policy_reference(), MOE_ROUTING_CONVENTIONAL, 0, ref, &err) == MOE_OK);
  ck_assert_msg(run_host(g_model_pg, "pregated-hybrid", budget, &slow_link, o, &err) == MOE_OK, "%s",
                err.msg);
  ck_assert_uint_eq(o->stats.fetches, 0);
  ck_assert_uint_gt(o->stats.host_experts, 0);
  ck_assert_int_eq(memcmp(o->tokens, ref->tokens, sizeof o->tokens), 0);
  ck_assert_msg(run_host(g_model_pg, "pregated-hybrid", budget, &slow_host, o, &err) == MOE_OK, "%s",
                err.msg);
  ck_assert_uint_gt(o->stats.fetches, 0);
  ck_assert_uint_eq(o->stats.misses, 0);
  ck_assert_uint_gt(o->stats.pregate_total, 0);
  ck_assert_int_eq(memcmp(o->tokens, ref->tokens, sizeof o->tokens), 0);
  free(ref);
  free(o);
}
END_TEST

/* A backend whose device matmuls fail once armed (the host's math is the
 * engine's own cpu backend, not this table), and whose host jobs start
 * late, so that a block that fails between sending its host experts off
 * and collecting them would return while the job still runs. */
static const moe_backend_ops *g_real;
static atomic_int g_armed, g_fail, g_failed, g_issued, g_jobs;
static void (*g_fn)(void *);
static void *g_ctx;

static moe_status failing_matmul(moe_backend *be, float *y, const float *x, size_t m,
                                 const moe_weight *w, const moe_weight *b, moe_error *err) {
  if (atomic_load(&g_fail) && atomic_load(&g_armed)) {
    atomic_store(&g_failed, 1);
    return MOE_FAIL(err, MOE_ERR_DEVICE, "injected: a device expert's matmul fails");
  }
  return g_real->matmul(be, y, x, m, w, b, err);
}

static void slow_job(void *arg) {
  (void)arg;
  struct timespec ts = {0, 50 * 1000 * 1000};
  nanosleep(&ts, NULL);
  g_fn(g_ctx);
  atomic_fetch_add(&g_jobs, 1);
}

/* The engine collecting a job disarms the failure: only a device matmul
 * issued while a job is out fails. */
static moe_status disarming_sync(moe_backend *be, moe_event *ev, moe_error *err) {
  atomic_store(&g_armed, 0);
  return g_real->event_sync(be, ev, err);
}

static moe_status slow_host_run(moe_backend *be, void (*fn)(void *), void *ctx, const moe_host_work *w,
                                moe_event *wait_ev, moe_event *done_ev, moe_error *err) {
  g_fn = fn;
  g_ctx = ctx;
  atomic_fetch_add(&g_issued, 1);
  atomic_store(&g_armed, 1);
  return g_real->host_run(be, slow_job, NULL, w, wait_ev, done_ev, err);
}

/* A forward that fails while the host computes (a device expert's matmul
 * after the job was sent) returns only once the job has ended, and the
 * engine runs again afterwards with the reference's tokens: the next
 * block never reuses the job's buffers under it. */
START_TEST(a_failed_block_waits_for_its_host_job) {
  g_real = moe_backend_find("cpu");
  moe_backend_ops ops = *g_real;
  ops.matmul = failing_matmul;
  ops.host_run = slow_host_run;
  ops.event_sync = disarming_sync;
  const moe_config *c = moe_model_config(g_model);
  const moe_policy *fd = moe_policy_find("fiddler");
  const moe_hw_profile slow_link = host_profile(0.001, 1000);
  /* 12 residents: the last block's 8 and half of the middle one's, so the
   * middle block runs experts on both sides */
  moe_backend_options bo = {.device_budget = budget_for(g_model, fd, c->n_experts)};
  moe_device dev;
  moe_error err = {0};
  ck_assert_msg(moe_device_open_ops(&dev, &ops, &bo, &err) == MOE_OK, "%s", err.msg);
  moe_engine *e = NULL;
  moe_engine_options eo = {.max_batch = B, .max_seq = P + N, .policy = fd, .cost_profile = &slow_link};
  ck_assert_msg(moe_engine_create(&e, g_model, &dev, &eo, &err) == MOE_OK, "%s", err.msg);
  int32_t ids[B * P];
  for (int i = 0; i < B * P; i++) ids[i] = (int32_t)((i * 7 + 3) % 40);
  atomic_store(&g_armed, 0);
  atomic_store(&g_fail, 1);
  float logits[B * 40];
  ck_assert_msg(moe_engine_forward(e, ids, B, P, 0, logits, &err) == MOE_ERR_DEVICE, "%s", err.msg);
  ck_assert_msg(strstr(err.msg, "injected"), "%s", err.msg);
  /* the failure came while a job was out (before the wait that disarms),
   * and every job sent had ended when the forward returned */
  ck_assert_int_eq(atomic_load(&g_failed), 1);
  const int issued = atomic_load(&g_issued), done = atomic_load(&g_jobs);
  ck_assert_msg(issued >= 1 && done == issued, "%d host jobs sent, %d ended", issued, done);
  moe_error_clear(&err);
  atomic_store(&g_fail, 0);
  int32_t out[B * N], ref[B * N];
  ck_assert_msg(moe_engine_generate(e, ids, B, P, N, out, NULL, NULL, &err) == MOE_OK, "%s", err.msg);
  moe_engine_free(e);
  eo.policy = moe_policy_reference();
  ck_assert_msg(moe_engine_create(&e, g_model, &g_dev, &eo, &err) == MOE_OK, "%s", err.msg);
  ck_assert_msg(moe_engine_generate(e, ids, B, P, N, ref, NULL, NULL, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(memcmp(out, ref, sizeof out), 0);
  moe_engine_free(e);
  moe_device_close(&dev);
}
END_TEST

int main(void) {
  Suite *s = suite_create("host");
  TCase *tc = tcase_create("core");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_loop_test(tc, bit_identical_in_every_dtype, 0, 3);
  tcase_add_loop_test(tc, bit_identical_across_families, 0, 3);
  tcase_add_test(tc, needs_a_host_stream);
  tcase_add_test(tc, fiddler_needs_figures);
  tcase_add_test(tc, hybrid_copies_predictions_when_they_pay);
  tcase_add_test(tc, a_failed_block_waits_for_its_host_job);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
