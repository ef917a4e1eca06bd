/* Offload policies: the registry, plan vs measured peak bytes, OOM as a
 * result, the expert store's own contract (residency, pins), plugins
 * (loading, ABI refusal, a table built against the older ABI 1.0 header,
 * hostile plugins) and correctness under a useless policy.  The engine's
 * runs under every policy are test_offload.c's. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moe/device.h"
#include "moe/expert_store.h"
#include "moe/model.h"
#include "moe/policy.h"
#include "moe/rng.h"
#include "cli.h"
#include "runner.h"
#include "policy_util.h"
#include "testutil.h"

START_TEST(registry_is_valid) {
  moe_error err = {0};
  ck_assert_msg(moe_policy_registry_check(&err) == MOE_OK, "%s", err.msg);
  ck_assert_uint_eq(moe_policy_count(), 8);
  const char *names[] = {"gpu-only",     "ondemand", "prefetch-all",   "pregated", "pregated-spec",
                         "host-compute", "fiddler",  "pregated-hybrid"};
  for (int i = 0; i < 8; i++) ck_assert_ptr_nonnull(moe_policy_find(names[i]));
  ck_assert_ptr_null(moe_policy_find("lru-cache"));
  moe_policy bad = *moe_policy_find("ondemand");
  bad.plan = NULL;
  ck_assert_int_eq(moe_policy_validate(&bad, &err), MOE_ERR_INVALID);
  ck_assert_ptr_nonnull(strstr(err.msg, "plan"));
}
END_TEST

/* Every policy's slots follow its definition, and the allocator's measured
 * peak equals the plan computed for those slots, byte for byte. */
START_TEST(plan_equals_measured_peak) {
  const int E = 8, n_moe = 3, active = B * 2; /* batch x top_k */
  const struct {
    const char *name;
    int slots;
  } want[] = {{"gpu-only", n_moe * E}, {"ondemand", active}, {"prefetch-all", 2 * E},
              {"pregated", 2 * active}};
  for (int i = 0; i < 4; i++) {
    run_out *o = calloc(1, sizeof *o);
    moe_error err = {0};
    ck_assert_msg(run(g_model, moe_policy_find(want[i].name), MOE_ROUTING_CONVENTIONAL, 0, o, &err) ==
                      MOE_OK, "%s: %s", want[i].name, err.msg);
    ck_assert_int_eq(o->slots, want[i].slots);
    ck_assert_msg(o->peak == o->planned, "%s: measured peak %zu, plan %zu", want[i].name, o->peak,
                  o->planned);
    free(o);
  }
}
END_TEST

START_TEST(oom_is_a_clear_result) {
  run_out *o = calloc(1, sizeof *o);
  moe_error err = {0};
  size_t by_cat[MOE_MEM_CATEGORIES], gpu_only_total, pregated_total;
  moe_engine_options eo = {.max_batch = B, .max_seq = P + N, .all_logits = true};
  moe_engine_plan_memory(g_model, NULL, &eo, 24, by_cat, &gpu_only_total);
  moe_engine_plan_memory(g_model, NULL, &eo, 8, by_cat, &pregated_total);
  size_t budget = (gpu_only_total + pregated_total) / 2;
  ck_assert_int_eq(run(g_model, moe_policy_find("gpu-only"), MOE_ROUTING_CONVENTIONAL, budget, o, &err),
                   MOE_ERR_OOM);
  ck_assert_msg(strstr(err.msg, "expert slots") && strstr(err.msg, "need") &&
                    strstr(err.msg, "in use") && strstr(err.msg, "budget"),
                "%s", err.msg);
  moe_error_clear(&err);
  ck_assert_msg(run(g_model, moe_policy_find("pregated"), MOE_ROUTING_CONVENTIONAL, budget, o, &err) ==
                    MOE_OK, "%s", err.msg);
  ck_assert_uint_le(o->peak, budget);
  free(o);
}
END_TEST

START_TEST(plugins_load_and_refuse) {
  moe_policy_library pl;
  moe_error err = {0};
  ck_assert_msg(moe_policy_plugin_load(&pl, PLUGIN_LRU, &err) == MOE_OK, "%s", err.msg);
  ck_assert_str_eq(pl.policy->name, "lru-cache");
  run_out *ref = calloc(1, sizeof *ref), *o = calloc(1, sizeof *o), *od = calloc(1, sizeof *od);
  ck_assert(run(g_model, moe_policy_find("gpu-only"), MOE_ROUTING_CONVENTIONAL, 0, ref, &err) == MOE_OK);
  ck_assert(run(g_model, moe_policy_find("ondemand"), MOE_ROUTING_CONVENTIONAL, 0, od, &err) == MOE_OK);
  /* a budget with room for 12 of the 24 experts */
  size_t by_cat[MOE_MEM_CATEGORIES], total;
  moe_engine_options eo = {.max_batch = B, .max_seq = P + N, .all_logits = true};
  moe_engine_plan_memory(g_model, NULL, &eo, 12, by_cat, &total);
  ck_assert_msg(run(g_model, pl.policy, MOE_ROUTING_CONVENTIONAL, total, o, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(o->slots, 12);
  ck_assert_int_eq(memcmp(o->logits, ref->logits, sizeof o->logits), 0);
  ck_assert_int_eq(memcmp(o->tokens, ref->tokens, sizeof o->tokens), 0);
  ck_assert_uint_lt(o->stats.fetches, od->stats.fetches); /* the cache hits */
  moe_policy_plugin_close(&pl);

  moe_error_clear(&err);
  ck_assert_int_eq(moe_policy_plugin_load(&pl, PLUGIN_BAD_ABI, &err), MOE_ERR_UNSUPPORTED);
  ck_assert_msg(strstr(err.msg, "999") && strstr(err.msg, "version 1"), "%s", err.msg);
  ck_assert_ptr_null(pl.handle);
  moe_error_clear(&err);
  ck_assert_int_eq(moe_policy_plugin_load(&pl, PLUGIN_NO_SYMBOL, &err), MOE_ERR_FORMAT);
  ck_assert_ptr_nonnull(strstr(err.msg, MOE_POLICY_PLUGIN_SYMBOL));
  moe_error_clear(&err);
  ck_assert_int_eq(moe_policy_plugin_load(&pl, "/nonexistent/policy.so", &err), MOE_ERR_IO);
  ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent/policy.so"));
  /* a bare name that exists in the working directory is that file (as the
   * README writes --policy-plugin my_policy.so), not one for dlopen to
   * look for in the system's library path */
  {
    char dir[512], cwd[4096], cmd[1300];
    ck_assert_ptr_nonnull(tu_tempdir(dir, sizeof dir));
    snprintf(cmd, sizeof cmd, "cp '%s' '%s/my_policy.so'", PLUGIN_LRU, dir);
    ck_assert_int_eq(system(cmd), 0);
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    ck_assert_int_eq(chdir(dir), 0);
    moe_error_clear(&err);
    const moe_status st = moe_policy_plugin_load(&pl, "my_policy.so", &err);
    ck_assert_int_eq(chdir(cwd), 0);
    ck_assert_msg(st == MOE_OK, "%s", err.msg);
    ck_assert_str_eq(pl.policy->name, "lru-cache");
    moe_policy_plugin_close(&pl);
    tu_rmtree(dir);
  }
  free(ref);
  free(o);
  free(od);
}
END_TEST

/* A useless policy (one slot, wrong prefetches) makes the run slow, never
 * wrong: outputs match gpu-only bit for bit, every expert use is a miss. */
START_TEST(useless_policy_is_still_correct) {
  moe_policy_library pl;
  moe_error err = {0};
  ck_assert_msg(moe_policy_plugin_load(&pl, PLUGIN_USELESS, &err) == MOE_OK, "%s", err.msg);
  run_out *ref = calloc(1, sizeof *ref), *o = calloc(1, sizeof *o);
  ck_assert(run(g_model, moe_policy_find("gpu-only"), MOE_ROUTING_CONVENTIONAL, 0, ref, &err) == MOE_OK);
  ck_assert_msg(run(g_model, pl.policy, MOE_ROUTING_CONVENTIONAL, 0, o, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(o->slots, 1);
  ck_assert_int_eq(memcmp(o->logits, ref->logits, sizeof o->logits), 0);
  ck_assert_int_eq(memcmp(o->tokens, ref->tokens, sizeof o->tokens), 0);
  ck_assert_uint_gt(o->stats.misses, 0);
  ck_assert_uint_eq(o->peak, o->planned);
  free(ref);
  free(o);
  moe_policy_plugin_close(&pl);
}
END_TEST

/* Plugins: slow, never wrong, for real.  A hostile plugin's requests with
 * arguments out of range are refused and counted and the run is correct;
 * a callback failing without a message gets one naming the policy and the
 * callback; a plugin taking a built-in's name is refused by name. */
START_TEST(hostile_plugins) {
  moe_policy_library pl;
  moe_error err = {0};
  ck_assert_msg(moe_policy_plugin_load(&pl, PLUGIN_HOSTILE, &err) == MOE_OK, "%s", err.msg);
  run_out *ref = calloc(1, sizeof *ref), *o = calloc(1, sizeof *o);
  ck_assert(run(g_model, moe_policy_find("gpu-only"), MOE_ROUTING_CONVENTIONAL, 0, ref, &err) == MOE_OK);
  ck_assert_msg(run(g_model, pl.policy, MOE_ROUTING_CONVENTIONAL, 0, o, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(memcmp(o->tokens, ref->tokens, sizeof o->tokens), 0);
  ck_assert_int_eq(memcmp(o->logits, ref->logits, sizeof o->logits), 0);
  ck_assert_uint_gt(o->stats.invalid_requests, 0);
  moe_policy_plugin_close(&pl);

  ck_assert_msg(moe_policy_plugin_load(&pl, PLUGIN_SILENT, &err) == MOE_OK, "%s", err.msg);
  moe_error_clear(&err);
  ck_assert_int_eq(run(g_model, pl.policy, MOE_ROUTING_CONVENTIONAL, 0, o, &err), MOE_ERR_INTERNAL);
  ck_assert_msg(strstr(err.msg, "'silent'") && strstr(err.msg, "experts_needed"), "%s", err.msg);
  moe_policy_plugin_close(&pl);

  moe_error_clear(&err);
  ck_assert_int_eq(moe_policy_plugin_load(&pl, PLUGIN_CLASH, &err), MOE_ERR_INVALID);
  ck_assert_msg(strstr(err.msg, "'ondemand'") && strstr(err.msg, "built-in"), "%s", err.msg);
  ck_assert_ptr_null(pl.handle);
  free(ref);
  free(o);
}
END_TEST

/* The store's own contract, driven directly. */
START_TEST(store_residency) {
  moe_expert_store *s = NULL;
  moe_error err = {0};
  ck_assert(moe_expert_store_create(&s, g_model, &g_dev, 3, &err) == MOE_OK);
  ck_assert_int_eq(moe_expert_store_fetch(s, 0, 1, true, &err), 1);
  ck_assert_int_eq(moe_expert_store_fetch(s, 0, 2, true, &err), 1);
  ck_assert_int_eq(moe_expert_store_fetch(s, 1, 5, true, &err), 1);
  ck_assert(moe_expert_store_check(s, &err) == MOE_OK);
  /* all three held by this round of prefetches: a fourth is refused */
  ck_assert_int_eq(moe_expert_store_fetch(s, 3, 0, true, &err), 0);
  /* a new block needing (0, 2) frees the others for prefetch */
  int need[1] = {2};
  moe_expert_store_begin_block(s, 0, need, 1);
  ck_assert_int_eq(moe_expert_store_fetch(s, 3, 0, true, &err), 1);
  ck_assert(moe_expert_store_resident(s, 0, 2));
  ck_assert(moe_expert_store_resident(s, 3, 0));
  /* held experts are not evicted on request; others are */
  ck_assert_int_eq(moe_expert_store_evict(s, 0, 2), 0);
  moe_expert_weights w;
  ck_assert(moe_expert_store_acquire(s, 0, 2, &w, &err) == MOE_OK);
  ck_assert_uint_eq(w.gate.rows, 24);
  ck_assert_uint_eq(w.down.rows, 32);
  ck_assert(moe_expert_store_release(s, 0, 2, &err) == MOE_OK);
  ck_assert_int_eq(moe_expert_store_evict(s, 0, 2), 1);
  ck_assert(!moe_expert_store_resident(s, 0, 2));
  /* a miss: acquire of a non-resident expert fetches it */
  unsigned long long misses = moe_expert_store_stats(s)->misses;
  ck_assert(moe_expert_store_acquire(s, 1, 7, &w, &err) == MOE_OK);
  ck_assert_uint_eq(moe_expert_store_stats(s)->misses, misses + 1);
  ck_assert(moe_expert_store_release(s, 1, 7, &err) == MOE_OK);
  ck_assert(moe_expert_store_check(s, &err) == MOE_OK);
  /* bad requests */
  ck_assert_int_eq(moe_expert_store_acquire(s, 2, 0, &w, &err), MOE_ERR_INVALID); /* dense layer */
  moe_error_clear(&err);
  ck_assert_int_eq(moe_expert_store_release(s, 0, 1, &err), MOE_ERR_INTERNAL);
  /* pins: never evicted, even by demand fetches; one slot stays free of pins */
  moe_expert_store_begin_block(s, 1, NULL, 0);
  ck_assert_int_eq(moe_expert_store_pin(s, 0, 3, &err), 1);
  ck_assert_int_eq(moe_expert_store_pin(s, 0, 4, &err), 1);
  ck_assert_int_eq(moe_expert_store_pin(s, 0, 5, &err), 0); /* would pin the last slot */
  ck_assert_int_eq(moe_expert_store_evict(s, 0, 3), 0);
  for (int x = 0; x < 8; x++) { /* demand fetches cycle through the one unpinned slot */
    ck_assert(moe_expert_store_acquire(s, 3, x, &w, &err) == MOE_OK);
    ck_assert(moe_expert_store_release(s, 3, x, &err) == MOE_OK);
  }
  ck_assert(moe_expert_store_resident(s, 0, 3) && moe_expert_store_resident(s, 0, 4));
  ck_assert(moe_expert_store_check(s, &err) == MOE_OK);
  moe_expert_store_unpin(s, 0, 3);
  ck_assert_int_eq(moe_expert_store_evict(s, 0, 3), 1);
  ck_assert(moe_expert_store_check(s, &err) == MOE_OK);
  moe_expert_store_free(s);
  moe_error_clear(&err);
  ck_assert_int_eq(moe_expert_store_create(&s, g_model, &g_dev, 0, &err), MOE_ERR_INVALID);
}
END_TEST

/* ABI promise: a table built against an older (smaller) version-1 header
 * is accepted and its missing fields read as absent; a newer major version
 * and a table too small for any version are refused. */
START_TEST(older_tables_are_accepted) {
  moe_policy_library pl;
  moe_error err = {0};
  ck_assert_msg(moe_policy_plugin_load(&pl, PLUGIN_OLD_ABI, &err) == MOE_OK, "%s", err.msg);
  ck_assert_str_eq(pl.policy->name, "old-abi");
  ck_assert_uint_eq(pl.policy->struct_size, sizeof(moe_policy));
  ck_assert_uint_eq(pl.policy->default_routing, MOE_POLICY_ROUTING_CONVENTIONAL);
  run_out *ref = calloc(1, sizeof *ref), *o = calloc(1, sizeof *o);
  ck_assert(run(g_model, moe_policy_find("gpu-only"), MOE_ROUTING_CONVENTIONAL, 0, ref, &err) == MOE_OK);
  ck_assert_msg(run(g_model, pl.policy, MOE_ROUTING_CONVENTIONAL, 0, o, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(memcmp(o->tokens, ref->tokens, sizeof o->tokens), 0);
  moe_policy_plugin_close(&pl);
  /* a 1.0-sized table handed to the engine directly is copied, not read past */
  moe_policy small = *moe_policy_find("ondemand");
  small.struct_size = (uint32_t)MOE_POLICY_SIZE_1_0;
  small.default_routing = 7; /* past the table's end: must be ignored */
  ck_assert_msg(moe_policy_validate(&small, &err) == MOE_OK, "%s", err.msg);
  moe_policy norm;
  moe_policy_normalize(&small, &norm);
  ck_assert_uint_eq(norm.default_routing, 0);
  small.struct_size = (uint32_t)MOE_POLICY_SIZE_1_0 - 1;
  ck_assert_int_eq(moe_policy_validate(&small, &err), MOE_ERR_UNSUPPORTED);
  moe_error_clear(&err);
  /* a newer table (larger) of the same major version is accepted */
  small.struct_size = (uint32_t)sizeof(moe_policy) + 64;
  small.default_routing = 0;
  ck_assert_msg(moe_policy_validate(&small, &err) == MOE_OK, "%s", err.msg);
  /* the built-in pregated policy asks for pregated routing; the others not */
  ck_assert_uint_eq(moe_policy_find("pregated")->default_routing, MOE_POLICY_ROUTING_PREGATED);
  ck_assert_uint_eq(moe_policy_find("ondemand")->default_routing, MOE_POLICY_ROUTING_CONVENTIONAL);
  free(ref);
  free(o);
}
END_TEST

int main(void) {
  Suite *s = suite_create("policy");
  TCase *tc = tcase_create("policy");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, registry_is_valid);
  tcase_add_test(tc, plan_equals_measured_peak);
  tcase_add_test(tc, oom_is_a_clear_result);
  tcase_add_test(tc, plugins_load_and_refuse);
  tcase_add_test(tc, useless_policy_is_still_correct);
  tcase_add_test(tc, store_residency);
  tcase_add_test(tc, older_tables_are_accepted);
  tcase_add_test(tc, hostile_plugins);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
