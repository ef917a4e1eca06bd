/* The expert store on a backend with overtakable copies (backend ABI 1.8):
 * predictions copied surest first, a block's needs ahead of every queued
 * prediction, predictions it does not need cancelled, and no copy into a
 * slot ever landing after a later one into the same slot.  The copy
 * stream is held closed by a host job (a gate) where a case needs copies
 * to be still queued, so what it checks is order, never timing. */
#include <check.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moe/expert_store.h"
#include "moe/model.h"
#include "moe/policy.h"
#include "../engine/backends/cpu/cpu_internal.h" /* cpu_link_start */
#include "model_internal.h" /* moe_model_expert_host: the bytes a slot must hold */
#include "policy_util.h"
#include "testutil.h"

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int open;
} g_gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};

static void gate_job(void *ctx) {
  (void)ctx;
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 20; /* a failed case cannot hang the suite */
  pthread_mutex_lock(&g_gate.mu);
  while (!g_gate.open)
    if (pthread_cond_timedwait(&g_gate.cv, &g_gate.mu, &until) != 0) break;
  pthread_mutex_unlock(&g_gate.mu);
}

/* Closes the copy stream of dev for normal copies until open_gate. */
static moe_event *close_gate(moe_device *dev) {
  moe_error err = {0};
  moe_event *gate = NULL;
  g_gate.open = 0;
  ck_assert(dev->ops->event_create(dev->be, &gate, &err) == MOE_OK);
  ck_assert(dev->ops->host_run(dev->be, gate_job, NULL, NULL, NULL, gate, &err) == MOE_OK);
  ck_assert(dev->ops->copy_wait(dev->be, gate, &err) == MOE_OK);
  return gate;
}

static void open_gate(moe_device *dev, moe_event *gate) {
  pthread_mutex_lock(&g_gate.mu);
  g_gate.open = 1;
  pthread_cond_broadcast(&g_gate.cv);
  pthread_mutex_unlock(&g_gate.mu);
  moe_error err = {0};
  ck_assert(dev->ops->synchronize(dev->be, &err) == MOE_OK);
  dev->ops->event_destroy(dev->be, gate);
}

/* Acquires (layer, expert) and checks its slot holds the expert's bytes. */
static void holds_its_bytes(moe_expert_store *s, int layer, int expert) {
  moe_error err = {0};
  moe_expert_weights w;
  ck_assert_msg(moe_expert_store_acquire(s, layer, expert, &w, &err) == MOE_OK, "%s", err.msg);
  ck_assert_msg(memcmp(w.gate.data, moe_model_expert_host(g_model, layer, expert),
                       moe_model_expert_bytes(g_model)) == 0,
                "layer %d expert %d: its slot holds other bytes", layer, expert);
  ck_assert(moe_expert_store_release(s, layer, expert, &err) == MOE_OK);
}

/* One slot: a prefetch of expert 2 is queued behind the gate; block 1
 * then begins needing expert 5, whose urgent copy takes that slot and
 * overtakes the queued one.  The queued copy must not land afterwards
 * (it is cancelled), so the slot holds expert 5's bytes. */
START_TEST(a_slot_is_never_overwritten_by_an_older_copy) {
  moe_error err = {0};
  moe_expert_store *s = NULL;
  ck_assert(moe_expert_store_create(&s, g_model, &g_dev, 1, &err) == MOE_OK);
  moe_event *gate = close_gate(&g_dev);
  moe_expert_store_round_begin(s);
  ck_assert_int_eq(moe_expert_store_fetch(s, 1, 2, true, &err), 1);
  ck_assert_int_eq(moe_expert_store_round_end(s, &err), 0);
  const int need = 5;
  moe_expert_store_begin_block(s, 1, &need, 1);
  ck_assert_int_eq(moe_expert_store_settle(s, 1, &need, 1, &err), 0);
  ck_assert(moe_expert_store_resident(s, 1, 5) && !moe_expert_store_resident(s, 1, 2));
  ck_assert_uint_eq(moe_expert_store_stats(s)->misses, 1);
  open_gate(&g_dev, gate);
  holds_its_bytes(s, 1, 5);
  moe_expert_store_end_block(s, 1);
  ck_assert(moe_expert_store_check(s, &err) == MOE_OK);
  moe_expert_store_free(s);
}
END_TEST

/* Predictions for block 1 {1, 3, 6} queued behind the gate; the block
 * needs {3, 7}: 1 and 6 are dropped with their copies cancelled (no chunk
 * had moved), 3's copy is made urgent, 7 is fetched at once (a miss), and
 * both hold their bytes. */
START_TEST(settle_cancels_what_the_block_does_not_need) {
  moe_error err = {0};
  moe_expert_store *s = NULL;
  ck_assert(moe_expert_store_create(&s, g_model, &g_dev, 4, &err) == MOE_OK);
  moe_event *gate = close_gate(&g_dev);
  float score[8] = {0};
  score[1] = 0.9f, score[3] = 0.5f, score[6] = 0.7f;
  moe_expert_store_speculate(s, 1, score);
  moe_expert_store_round_begin(s);
  const int pred[3] = {1, 3, 6};
  for (int i = 0; i < 3; i++) ck_assert_int_eq(moe_expert_store_fetch(s, 1, pred[i], true, &err), 1);
  ck_assert_int_eq(moe_expert_store_round_end(s, &err), 0);
  const int need[2] = {3, 7};
  moe_expert_store_begin_block(s, 1, need, 2);
  ck_assert_int_eq(moe_expert_store_settle(s, 1, need, 2, &err), 0);
  const moe_expert_stats *st = moe_expert_store_stats(s);
  ck_assert_uint_eq(st->cancelled, 2);
  ck_assert_uint_eq(st->urged, 1);
  ck_assert_uint_eq(st->misses, 1);
  ck_assert_uint_eq(st->fetches, 4);
  ck_assert(!moe_expert_store_resident(s, 1, 1) && !moe_expert_store_resident(s, 1, 6));
  open_gate(&g_dev, gate);
  for (int i = 0; i < 2; i++) holds_its_bytes(s, 1, need[i]);
  moe_expert_store_end_block(s, 1);
  ck_assert_uint_eq(st->misses, 1); /* 7 was on its way: acquire did not count it again */
  ck_assert(moe_expert_store_check(s, &err) == MOE_OK);
  moe_expert_store_free(s);
}
END_TEST

/* The order of the copies the cpu backend is given, by destination. */
static const void *g_dst[64];
static int g_ndst;
static moe_backend_ops g_log_ops;
static moe_status log_copy_ex(moe_backend *be, void *dst, const void *src, size_t bytes,
                              moe_event *wait_ev, moe_event *ev, int urgent, moe_error *err) {
  if (g_ndst < 64) g_dst[g_ndst++] = dst;
  return moe_backend_find("cpu")->copy_h2d_ex(be, dst, src, bytes, wait_ev, ev, urgent, err);
}

/* A round of predictions, requested in index order, is copied in
 * descending score (ties keep the order of request). */
START_TEST(predictions_are_copied_surest_first) {
  g_log_ops = *moe_backend_find("cpu");
  g_log_ops.name = "cpu-log";
  g_log_ops.copy_h2d_ex = log_copy_ex;
  moe_device dev;
  moe_error err = {0};
  ck_assert(moe_device_open_ops(&dev, &g_log_ops, NULL, &err) == MOE_OK);
  moe_expert_store *s = NULL;
  ck_assert(moe_expert_store_create(&s, g_model, &dev, 5, &err) == MOE_OK);
  float score[8] = {0.1f, 0.4f, 0.0f, 0.9f, 0.4f, 0.0f, 0.2f, 0.0f};
  const int want[5] = {0, 1, 3, 4, 6}, order[5] = {3, 1, 4, 6, 0};
  g_ndst = 0;
  moe_expert_store_speculate(s, 3, score);
  moe_expert_store_round_begin(s);
  for (int i = 0; i < 5; i++) ck_assert_int_eq(moe_expert_store_fetch(s, 3, want[i], true, &err), 1);
  ck_assert_int_eq(moe_expert_store_round_end(s, &err), 0);
  ck_assert_int_eq(g_ndst, 5);
  moe_expert_store_begin_block(s, 3, want, 5);
  for (int i = 0; i < 5; i++) {
    moe_expert_weights w;
    ck_assert(moe_expert_store_acquire(s, 3, order[i], &w, &err) == MOE_OK);
    ck_assert_msg(w.gate.data == g_dst[i], "copy %d was not expert %d's", i, order[i]);
    ck_assert(moe_expert_store_release(s, 3, order[i], &err) == MOE_OK);
  }
  moe_expert_store_free(s);
  moe_device_close(&dev);
}
END_TEST

/* An instance whose copy_chunk answers 0 does not overtake (the cuda
 * backend without MOE_CUDA_OVERTAKE=1): the store copies in issue order,
 * through copy_h2d_async, and settle urges and cancels nothing. */
static size_t no_chunk(moe_backend *be) {
  (void)be;
  return 0;
}

START_TEST(an_instance_without_chunks_copies_in_issue_order) {
  g_log_ops = *moe_backend_find("cpu");
  g_log_ops.name = "cpu-no-overtake";
  g_log_ops.copy_chunk = no_chunk;
  g_log_ops.copy_h2d_ex = log_copy_ex;
  moe_device dev;
  moe_error err = {0};
  ck_assert(moe_device_open_ops(&dev, &g_log_ops, NULL, &err) == MOE_OK);
  moe_expert_store *s = NULL;
  ck_assert(moe_expert_store_create(&s, g_model, &dev, 4, &err) == MOE_OK);
  float score[8] = {0};
  score[1] = 0.9f, score[3] = 0.5f;
  g_ndst = 0;
  moe_expert_store_speculate(s, 1, score);
  moe_expert_store_round_begin(s);
  ck_assert_int_eq(moe_expert_store_fetch(s, 1, 1, true, &err), 1);
  ck_assert_int_eq(moe_expert_store_fetch(s, 1, 3, true, &err), 1);
  ck_assert_int_eq(moe_expert_store_round_end(s, &err), 0);
  const int need[2] = {3, 7};
  moe_expert_store_begin_block(s, 1, need, 2);
  ck_assert_int_eq(moe_expert_store_settle(s, 1, need, 2, &err), 0);
  for (int i = 0; i < 2; i++) holds_its_bytes(s, 1, need[i]);
  moe_expert_store_end_block(s, 1);
  const moe_expert_stats *st = moe_expert_store_stats(s);
  ck_assert_int_eq(g_ndst, 0);
  ck_assert_uint_eq(st->cancelled + st->urged, 0);
  ck_assert_uint_eq(st->fetches, 3);
  moe_expert_store_free(s);
  moe_device_close(&dev);
}
END_TEST

/* One policy's run, conventional routing, on a link capped so that copies
 * stay queued (one expert, 9 KB, in about 0.2 ms), into o: gpu-only's
 * (ref) logits and tokens. */
static void capped_run_keeps_bits(const char *name, const run_out *ref, run_out *o) {
  moe_engine_options opt = {.policy = moe_policy_find(name), .routing = MOE_ROUTING_CONVENTIONAL};
  moe_error err = {0};
  g_link_gbps = 0.05;
  const moe_status st = run_opts(g_model_pg, &opt, 0, 5, o, &err);
  g_link_gbps = 0;
  ck_assert_msg(st == MOE_OK, "%s: %s", name, err.msg);
  ck_assert_msg(memcmp(o->logits, ref->logits, sizeof o->logits) == 0, "%s: logits differ", name);
  ck_assert_msg(memcmp(o->tokens, ref->tokens, sizeof o->tokens) == 0, "%s: tokens differ", name);
}

/* Whole runs with copies slow enough to stay queued (a capped link) and
 * few slots: every policy's tokens and logits are gpu-only's, and the
 * speculative one cancels some of its wrong guesses' copies. */
START_TEST(policies_keep_their_bits_with_overtaking_copies) {
  run_out *ref = calloc(1, sizeof *ref), *o = calloc(1, sizeof *o);
  moe_error err = {0};
  moe_engine_options opt = {.policy = moe_policy_find("gpu-only")};
  ck_assert(run_opts(g_model_pg, &opt, 0, 5, ref, &err) == MOE_OK);
  const char *names[] = {"ondemand", "prefetch-all", "pregated-spec", "pregated"};
  for (int i = 0; i < 4; i++) {
    capped_run_keeps_bits(names[i], ref, o);
    /* a policy's own prefetches keep their place and their bytes: only
     * predictions are urged or cancelled (prefetch-all stays the paper's
     * baseline, every expert of the next block copied in issue order) */
    if (i < 2)
      ck_assert_msg(o->stats.copies_urged == 0 && o->stats.copies_cancelled == 0,
                    "%s: %llu copies urged, %llu cancelled", names[i], o->stats.copies_urged,
                    o->stats.copies_cancelled);
  }
  free(ref);
  free(o);
}
END_TEST

/* pregate_second: each token's next choice is copied after the top-k
 * ones while slots are left (here an LRU cache's), never routes (bits
 * stay gpu-only's), and its hits are counted apart: the top-k plus it
 * cover more routed pairs than the top-k alone. */
START_TEST(second_choices_prefetch_when_slots_allow) {
  run_out *ref = calloc(1, sizeof *ref), *one = calloc(1, sizeof *one), *two = calloc(1, sizeof *two);
  moe_error err = {0};
  moe_engine_options opt = {.policy = moe_policy_find("gpu-only")};
  ck_assert(run_opts(g_model_pg, &opt, 0, 5, ref, &err) == MOE_OK);
  opt = (moe_engine_options){.policy = moe_policy_find("pregated-spec"),
                             .routing = MOE_ROUTING_CONVENTIONAL, .cache = MOE_CACHE_LRU,
                             .cache_experts = 6};
  ck_assert_msg(run_opts(g_model_pg, &opt, 0, 5, one, &err) == MOE_OK, "%s", err.msg);
  opt.pregate_second = 1;
  ck_assert_msg(run_opts(g_model_pg, &opt, 0, 5, two, &err) == MOE_OK, "%s", err.msg);
  ck_assert(memcmp(two->logits, ref->logits, sizeof ref->logits) == 0);
  ck_assert(memcmp(two->tokens, ref->tokens, sizeof ref->tokens) == 0);
  ck_assert_uint_eq(one->stats.pregate_second_hits, 0);
  ck_assert_uint_gt(two->stats.pregate_second_hits, 0);
  ck_assert_uint_eq(two->stats.pregate_hits, one->stats.pregate_hits); /* the same top-k */
  ck_assert_uint_le(two->stats.pregate_hits + two->stats.pregate_second_hits,
                    two->stats.pregate_total);
  ck_assert_uint_gt(two->stats.fetches, one->stats.fetches); /* the next choices were copied */
  /* where the slots hold only the top-k (pregated's own plan), a next
   * choice never takes a top-k choice's place: the same copies, the
   * same misses */
  for (int second = 0; second < 2; second++) {
    opt = (moe_engine_options){.policy = moe_policy_find("pregated"),
                               .routing = MOE_ROUTING_PREGATED, .pregate_second = second};
    ck_assert_msg(run_opts(g_model_pg, &opt, 0, 5, second ? two : one, &err) == MOE_OK, "%s", err.msg);
  }
  ck_assert_uint_eq(two->stats.misses, one->stats.misses);
  free(ref);
  free(one);
  free(two);
}
END_TEST

/* The capped link's schedule (the cpu backend): chunks back to back keep
 * it even when a sleep overshot, so the rate is the cap over the run;
 * after idling, a chunk starts when it starts. */
START_TEST(the_capped_link_makes_up_for_late_wakeups) {
  const double chunk_s = 145e-6; /* 1 MiB at 7.25 GB/s */
  ck_assert(cpu_link_start(1.0, 1.0 + 60e-6, chunk_s) == 1.0); /* woke 60 us late */
  ck_assert(cpu_link_start(1.0, 0.9, chunk_s) == 1.0);         /* ahead: waits for it */
  ck_assert(cpu_link_start(1.0, 1.0 + 2 * chunk_s, chunk_s) == 1.0 + 2 * chunk_s); /* a gap */
  ck_assert(cpu_link_start(0.0, 5.0, chunk_s) == 5.0);         /* idle since */
}
END_TEST

/* MOE_CPU_LINK_SLICE (the capped link's pacing step): a bad value is
 * refused with the variable named; a good one still moves every byte. */
START_TEST(link_slice_is_checked_and_keeps_bytes) {
  moe_device dev;
  moe_error err = {0};
  moe_backend_options bo = {.link_gbps = 0.5};
  const char *bad[] = {"abc", "100", "4096x", "-4096", "2097152"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    setenv("MOE_CPU_LINK_SLICE", bad[i], 1);
    err = (moe_error){0};
    ck_assert_int_eq(moe_device_open(&dev, "cpu", &bo, &err), MOE_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "MOE_CPU_LINK_SLICE") != NULL, "%s", err.msg);
  }
  setenv("MOE_CPU_LINK_SLICE", "65536", 1);
  ck_assert_msg(moe_device_open(&dev, "cpu", &bo, &err) == MOE_OK, "%s", err.msg);
  unsetenv("MOE_CPU_LINK_SLICE");
  const size_t n = (3 << 20) + 1000;
  unsigned char *src = malloc(n), *back = malloc(n);
  for (size_t i = 0; i < n; i++) src[i] = (unsigned char)(i * 13 + 7);
  void *d = NULL;
  moe_event *ev = NULL;
  ck_assert(dev.ops->device_alloc(dev.be, n, &d, &err) == MOE_OK);
  ck_assert(dev.ops->event_create(dev.be, &ev, &err) == MOE_OK);
  ck_assert(dev.ops->copy_h2d_async(dev.be, d, src, n, ev, &err) == MOE_OK);
  ck_assert(dev.ops->event_sync(dev.be, ev, &err) == MOE_OK);
  ck_assert(dev.ops->download(dev.be, back, d, n, &err) == MOE_OK);
  ck_assert(memcmp(back, src, n) == 0);
  dev.ops->event_destroy(dev.be, ev);
  dev.ops->device_free(dev.be, d);
  moe_device_close(&dev);
  free(src);
  free(back);
}
END_TEST

/* MOE_CPU_LINK=timed: a copy paces but moves no bytes (copy_timed says
 * so), and the store then reads the weights where they live, so every
 * policy keeps gpu-only's bits; a bad value is refused by name. */
START_TEST(timed_link_moves_no_bytes_and_keeps_bits) {
  run_out *ref = calloc(1, sizeof *ref), *o = calloc(1, sizeof *o);
  moe_error err = {0};
  moe_engine_options opt = {.policy = moe_policy_find("gpu-only")};
  ck_assert(run_opts(g_model_pg, &opt, 0, 5, ref, &err) == MOE_OK);
  moe_device dev;
  moe_backend_options bo = {.link_gbps = 0.5};
  setenv("MOE_CPU_LINK", "dma", 1);
  ck_assert_int_eq(moe_device_open(&dev, "cpu", &bo, &err), MOE_ERR_INVALID);
  ck_assert_msg(strstr(err.msg, "MOE_CPU_LINK") != NULL, "%s", err.msg);
  setenv("MOE_CPU_LINK", "timed", 1);
  err = (moe_error){0};
  ck_assert_msg(moe_device_open(&dev, "cpu", &bo, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(dev.ops->copy_timed(dev.be), 1);
  enum { NB = 1 << 20 };
  unsigned char *src = malloc(NB), *back = malloc(NB), *zero = calloc(NB, 1);
  memset(src, 0x7e, NB);
  void *d = NULL;
  moe_event *ev = NULL;
  ck_assert(dev.ops->device_alloc(dev.be, NB, &d, &err) == MOE_OK);
  ck_assert(dev.ops->upload(dev.be, d, zero, NB, &err) == MOE_OK);
  ck_assert(dev.ops->event_create(dev.be, &ev, &err) == MOE_OK);
  ck_assert(dev.ops->copy_h2d_async(dev.be, d, src, NB, ev, &err) == MOE_OK);
  ck_assert(dev.ops->event_sync(dev.be, ev, &err) == MOE_OK);
  ck_assert(dev.ops->download(dev.be, back, d, NB, &err) == MOE_OK);
  ck_assert(memcmp(back, zero, NB) == 0); /* nothing moved */
  dev.ops->event_destroy(dev.be, ev);
  dev.ops->device_free(dev.be, d);
  moe_device_close(&dev);
  const char *names[] = {"ondemand", "prefetch-all", "pregated-spec"};
  for (int i = 0; i < 3; i++) {
    capped_run_keeps_bits(names[i], ref, o);
    ck_assert_uint_gt(o->stats.fetches, 0);
  }
  unsetenv("MOE_CPU_LINK");
  free(src);
  free(back);
  free(zero);
  free(ref);
  free(o);
}
END_TEST

int main(void) {
  Suite *s = suite_create("overtake");
  TCase *tc = tcase_create("overtake");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, a_slot_is_never_overwritten_by_an_older_copy);
  tcase_add_test(tc, settle_cancels_what_the_block_does_not_need);
  tcase_add_test(tc, predictions_are_copied_surest_first);
  tcase_add_test(tc, an_instance_without_chunks_copies_in_issue_order);
  tcase_add_test(tc, policies_keep_their_bits_with_overtaking_copies);
  tcase_add_test(tc, the_capped_link_makes_up_for_late_wakeups);
  tcase_add_test(tc, second_choices_prefetch_when_slots_allow);
  tcase_add_test(tc, link_slice_is_checked_and_keeps_bytes);
  tcase_add_test(tc, timed_link_moves_no_bytes_and_keeps_bits);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
