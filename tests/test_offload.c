/* The engine under every offload policy: bit-identical outputs across
 * policies (f32, f16, bf16, pregated routing, Switch, the newer families,
 * math thread counts), lookahead, expert caches, no re-copies while slots
 * suffice, and on a tracing backend the store's counters, the issue order
 * of pregated copies, two engines on one model and teardown with copies in
 * flight.  The registry and plugins are test_policy.c's. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/device.h"
#include "moe/expert_store.h"
#include "moe/model.h"
#include "moe/policy.h"
#include "moe/rng.h"
#include "cli.h"
#include "runner.h"
#include "policy_util.h"
#include "testutil.h"

/* Same backend, same inputs: ondemand, prefetch-all and pregated (with
 * conventional routing) give bit-identical logits and tokens to gpu-only. */
START_TEST(policies_are_bit_identical) {
  run_out *ref = calloc(1, sizeof *ref), *o = calloc(1, sizeof *o);
  moe_error err = {0};
  ck_assert(run(g_model, moe_policy_find("gpu-only"), MOE_ROUTING_CONVENTIONAL, 0, ref, &err) == MOE_OK);
  ck_assert_uint_eq(ref->stats.fetches, 0); /* everything was loaded in warm-up */
  ck_assert_uint_gt(ref->stats.warm_bytes, 0);
  const char *names[] = {"ondemand", "prefetch-all", "pregated"};
  for (int i = 0; i < 3; i++) {
    ck_assert_msg(run(g_model, moe_policy_find(names[i]), MOE_ROUTING_CONVENTIONAL, 0, o, &err) ==
                      MOE_OK, "%s: %s", names[i], err.msg);
    ck_assert_msg(memcmp(o->logits, ref->logits, sizeof o->logits) == 0, "%s: logits differ", names[i]);
    ck_assert_msg(memcmp(o->tokens, ref->tokens, sizeof o->tokens) == 0, "%s: tokens differ", names[i]);
    ck_assert_uint_gt(o->stats.fetches, 0);
  }
  free(ref);
  free(o);
}
END_TEST

/* pregated-spec: pregated's copies under conventional routing.  Outputs
 * are gpu-only's bit for bit whatever the pre-gate; its hit rate is
 * measured; wrong guesses are misses, and their copies, evicted unused,
 * are counted as wasted.  Policies that copy only what they use waste
 * nothing. */
START_TEST(speculative_pregating_is_exact) {
  const moe_policy *spec = moe_policy_find("pregated-spec");
  ck_assert_ptr_nonnull(spec);
  ck_assert_uint_eq(spec->default_routing, MOE_POLICY_ROUTING_CONVENTIONAL);
  run_out *ref = calloc(1, sizeof *ref), *o = calloc(1, sizeof *o), *od = calloc(1, sizeof *od);
  moe_error err = {0};
  ck_assert(run(g_model_pg, moe_policy_find("gpu-only"), MOE_ROUTING_CONVENTIONAL, 0, ref, &err) == MOE_OK);
  ck_assert_msg(run(g_model_pg, spec, MOE_ROUTING_CONVENTIONAL, 0, o, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(memcmp(o->logits, ref->logits, sizeof o->logits), 0);
  ck_assert_int_eq(memcmp(o->tokens, ref->tokens, sizeof o->tokens), 0);
  ck_assert_uint_gt(o->stats.pregate_total, 0);
  ck_assert_uint_lt(o->stats.pregate_hits, o->stats.pregate_total); /* an imperfect pre-gate */
  ck_assert_uint_gt(o->stats.misses, 0);
  ck_assert_uint_gt(o->stats.wasted, 0);
  ck_assert_uint_le(o->stats.wasted, o->stats.fetches);
  /* the first block was predicted from its layer input, and measured */
  ck_assert_uint_gt(o->stats.first_block_total, 0);
  ck_assert_uint_le(o->stats.first_block_hits, o->stats.first_block_total);
  ck_assert_uint_eq(ref->stats.first_block_total, 0);
  ck_assert_uint_eq(ref->stats.wasted, 0);
  ck_assert(run(g_model_pg, moe_policy_find("ondemand"), MOE_ROUTING_CONVENTIONAL, 0, od, &err) == MOE_OK);
  /* speculation can only add copies to what the routed experts need */
  ck_assert_uint_ge(o->stats.fetches + o->stats.wasted, od->stats.fetches - od->stats.wasted);
  free(ref);
  free(o);
  free(od);
}
END_TEST

/* Pregated routing: the pre-gate's choice is the routing, so with enough
 * slots nothing is fetched late; the hit rate against each block's own
 * router is measured, never assumed to be 1. */
START_TEST(pregated_routing) {
  moe_model *models[] = {g_model, g_model_pg}; /* derived pre-gate, checkpoint pre-gate */
  for (int i = 0; i < 2; i++) {
    run_out *o = calloc(1, sizeof *o), *o2 = calloc(1, sizeof *o2);
    moe_error err = {0};
    ck_assert_msg(run(models[i], moe_policy_find("pregated"), MOE_ROUTING_PREGATED, 0, o, &err) ==
                      MOE_OK, "%s", err.msg);
    ck_assert_uint_gt(o->stats.pregate_total, 0);
    ck_assert_uint_le(o->stats.pregate_hits, o->stats.pregate_total);
    /* same routing under another policy: same bits */
    ck_assert(run(models[i], moe_policy_find("ondemand"), MOE_ROUTING_PREGATED, 0, o2, &err) == MOE_OK);
    ck_assert_int_eq(memcmp(o->logits, o2->logits, sizeof o->logits), 0);
    ck_assert_int_eq(memcmp(o->tokens, o2->tokens, sizeof o->tokens), 0);
    free(o);
    free(o2);
  }
  /* the synthetic pre-gate is a perturbed copy of the next router: a good but
   * imperfect predictor, and the hit rate shows it */
  run_out *o = calloc(1, sizeof *o);
  moe_error err = {0};
  ck_assert(run(g_model_pg, moe_policy_find("pregated"), MOE_ROUTING_CONVENTIONAL, 0, o, &err) == MOE_OK);
  ck_assert_uint_lt(o->stats.pregate_hits, o->stats.pregate_total);
  ck_assert_uint_gt(o->stats.misses, 0); /* its wrong guesses were fetched late */
  free(o);
}
END_TEST

/* Like run(), for the Switch model, with a choice of pre-gated stacks. */
static moe_status run_switch(moe_model *m, const moe_policy *pol, moe_routing routing,
                             unsigned stacks, run_out *out, moe_error *err) {
  const moe_engine_options eo = {.policy = pol, .routing = routing, .pregate_stacks = stacks};
  return run_opts(m, &eo, 0, 6, out, err);
}

/* Switch: every policy gives gpu-only's bits under conventional routing
 * (encoder and decoder blocks both offloaded), and each run's measured
 * peak equals its plan (with the cross-attention K/V and the buckets). */
START_TEST(switch_policies_bit_identical) {
  moe_error err = {0};
  moe_model *m = switch_model(&err);
  ck_assert_msg(m != NULL, "%s", err.msg);
  run_out *ref = calloc(1, sizeof *ref), *o = calloc(1, sizeof *o);
  ck_assert_msg(run_switch(m, moe_policy_find("gpu-only"), MOE_ROUTING_CONVENTIONAL, 0, ref, &err) ==
                    MOE_OK, "%s", err.msg);
  ck_assert_int_eq(ref->slots, 5 * 8);
  ck_assert_msg(ref->peak == ref->planned, "gpu-only: peak %zu, plan %zu", ref->peak, ref->planned);
  const char *names[] = {"ondemand", "prefetch-all", "pregated", "pregated-spec"};
  for (int i = 0; i < 4; i++) {
    ck_assert_msg(run_switch(m, moe_policy_find(names[i]), MOE_ROUTING_CONVENTIONAL, 0, o, &err) ==
                      MOE_OK, "%s: %s", names[i], err.msg);
    ck_assert_msg(memcmp(o->logits, ref->logits, (size_t)B * 40 * sizeof(float)) == 0,
                  "%s: logits differ", names[i]);
    ck_assert_msg(memcmp(o->tokens, ref->tokens, sizeof o->tokens) == 0, "%s: tokens differ",
                  names[i]);
    ck_assert_uint_gt(o->stats.fetches, 0);
    ck_assert_msg(o->peak == o->planned, "%s: peak %zu, plan %zu", names[i], o->peak, o->planned);
  }
  free(ref);
  free(o);
  moe_model_free(m);
}
END_TEST

/* Misses of the decode steps alone (after the encoder and the first
 * decoder step), where batch x top_k experts per block fit the slots. */
static unsigned long long switch_decode_misses(moe_model *m, const moe_policy *pol,
                                               unsigned stacks, moe_error *err) {
  moe_device dev;
  ck_assert(moe_device_open(&dev, "cpu", NULL, err) == MOE_OK);
  moe_engine *e = NULL;
  moe_engine_options eo = {.max_batch = B, .max_seq = P + N, .policy = pol,
                           .routing = MOE_ROUTING_PREGATED, .pregate_stacks = stacks};
  ck_assert_msg(moe_engine_create(&e, m, &dev, &eo, err) == MOE_OK, "%s", err->msg);
  int32_t ids[B * P], tok[B];
  float logits[B * 40];
  for (int i = 0; i < B * P; i++) ids[i] = (int32_t)((i * 7 + 3) % 40);
  for (int b = 0; b < B; b++) tok[b] = 0;
  ck_assert_msg(moe_engine_encode(e, ids, B, P, err) == MOE_OK, "%s", err->msg);
  ck_assert_msg(moe_engine_forward(e, tok, B, 1, 0, logits, err) == MOE_OK, "%s", err->msg);
  moe_engine_reset_stats(e);
  for (int step = 1; step < N; step++) {
    for (int b = 0; b < B; b++) tok[b] = moe_argmax(logits + b * 40, 40);
    ck_assert_msg(moe_engine_forward(e, tok, B, 1, step, logits, err) == MOE_OK, "%s", err->msg);
  }
  moe_run_stats rs;
  moe_engine_stats(e, &rs);
  ck_assert_uint_gt(rs.fetches, 0);
  moe_engine_free(e);
  moe_device_close(&dev);
  return rs.misses;
}

/* Switch under pregated routing: predictions stay inside a stack (the
 * encoder's last MoE block predicts nothing), and the pregated policy
 * fetches the blocks nothing predicted (the decoder's first) when their
 * router picks, so decode steps have no misses.  Pre-gating the decoder
 * only predicts fewer blocks than both stacks, and another policy with the
 * same routing gives the same bits. */
START_TEST(switch_pregated_stacks) {
  moe_error err = {0};
  moe_model *m = switch_model(&err);
  ck_assert_msg(m != NULL, "%s", err.msg);
  const moe_policy *pg = moe_policy_find("pregated");
  ck_assert_uint_eq(switch_decode_misses(m, pg, 0, &err), 0);
  ck_assert_uint_eq(switch_decode_misses(m, pg, MOE_PREGATE_DECODER, &err), 0);
  run_out *both = calloc(1, sizeof *both), *dec = calloc(1, sizeof *dec),
          *dec2 = calloc(1, sizeof *dec2);
  ck_assert_msg(run_switch(m, pg, MOE_ROUTING_PREGATED, 0, both, &err) == MOE_OK, "%s", err.msg);
  ck_assert_msg(run_switch(m, pg, MOE_ROUTING_PREGATED, MOE_PREGATE_DECODER, dec, &err) == MOE_OK,
                "%s", err.msg);
  /* encoder: 1 -> 3 for 7 tokens x 2 sequences; decoder 4 -> 5 -> 6 for
   * 2 sequences x 9 steps */
  ck_assert_uint_eq(both->stats.pregate_total, (unsigned long long)(B * P + 2 * B * N));
  ck_assert_uint_eq(dec->stats.pregate_total, (unsigned long long)(2 * B * N));
  ck_assert(run_switch(m, moe_policy_find("ondemand"), MOE_ROUTING_PREGATED, MOE_PREGATE_DECODER,
                       dec2, &err) == MOE_OK);
  ck_assert_int_eq(memcmp(dec->tokens, dec2->tokens, sizeof dec->tokens), 0);
  free(both);
  free(dec);
  free(dec2);
  moe_model_free(m);
}
END_TEST

/* Qwen3-MoE, OLMoE and DeepSeek-V2/V3 (synthetic weights on the fixtures'
 * configs; DeepSeek: its grouped routing, correction bias, shared experts
 * and dense first layers in the derived pre-gate too): every
 * policy gives gpu-only's bits under conventional routing, each run's peak
 * equals its plan, and pregated routing (derived pre-gate) runs with its
 * hit rate measured.  Saved and loaded back, the model gives the same
 * tokens. */
START_TEST(new_families_under_every_policy) {
  const char *cfgs[] = {MOE_SOURCE_DIR "/tests/fixtures/qwen3moe-tiny/config.json",
                        MOE_SOURCE_DIR "/tests/fixtures/olmoe-tiny/config.json",
                        MOE_SOURCE_DIR "/tests/fixtures/deepseekv2-tiny/config.json",
                        MOE_SOURCE_DIR "/tests/fixtures/deepseekv3-tiny/config.json",
                        MOE_SOURCE_DIR "/tests/fixtures/deepseekv3-plain/config.json",
                        MOE_SOURCE_DIR "/tests/fixtures/granitemoe-tiny/config.json"};
  moe_error err = {0};
  moe_config c;
  ck_assert_msg(moe_config_load(&c, cfgs[_i], &err) == MOE_OK, "%s", err.msg);
  c.vocab = 40; /* run() draws ids below 40 and keeps 40 logits a row */
  moe_synth_options so = {MOE_F32, 5, 0.5, false};
  moe_model *m = NULL;
  ck_assert_msg(moe_model_synthetic(&m, &c, &so, &err) == MOE_OK, "%s", err.msg);
  run_out *ref = calloc(1, sizeof *ref), *o = calloc(1, sizeof *o);
  ck_assert_msg(run(m, moe_policy_find("gpu-only"), MOE_ROUTING_CONVENTIONAL, 0, ref, &err) == MOE_OK,
                "%s", err.msg);
  ck_assert(ref->peak == ref->planned);
  const char *names[] = {"ondemand", "prefetch-all", "pregated", "pregated-spec"};
  for (int i = 0; i < 4; i++) {
    ck_assert_msg(run(m, moe_policy_find(names[i]), MOE_ROUTING_CONVENTIONAL, 0, o, &err) == MOE_OK,
                  "%s: %s", names[i], err.msg);
    ck_assert_msg(memcmp(o->logits, ref->logits, sizeof o->logits) == 0, "%s: logits differ", names[i]);
    ck_assert_msg(memcmp(o->tokens, ref->tokens, sizeof o->tokens) == 0, "%s: tokens differ", names[i]);
    ck_assert_msg(o->peak == o->planned, "%s: peak %zu plan %zu", names[i], o->peak, o->planned);
  }
  ck_assert_msg(run(m, moe_policy_find("pregated"), MOE_ROUTING_PREGATED, 0, o, &err) == MOE_OK, "%s",
                err.msg);
  /* a model with one MoE block has nothing to predict */
  if (moe_config_n_moe_layers(&c) > 1) ck_assert_uint_gt(o->stats.pregate_total, 0);
  else ck_assert_uint_eq(o->stats.pregate_total, 0);
  ck_assert_uint_le(o->stats.pregate_hits, o->stats.pregate_total);
  /* save, load, same tokens */
  char dir[512];
  ck_assert_ptr_nonnull(tu_tempdir(dir, sizeof dir));
  moe_model *back = NULL;
  ck_assert_msg(moe_model_save(m, dir, &err) == MOE_OK, "%s", err.msg);
  ck_assert_msg(moe_model_load(&back, dir, NULL, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(moe_model_config(back)->arch, c.arch);
  ck_assert_int_eq(moe_model_config(back)->qk_norm, c.qk_norm);
  ck_assert(run(back, moe_policy_find("gpu-only"), MOE_ROUTING_CONVENTIONAL, 0, o, &err) == MOE_OK);
  ck_assert_int_eq(memcmp(o->tokens, ref->tokens, sizeof o->tokens), 0);
  tu_rmtree(dir);
  moe_model_free(back);
  free(ref);
  free(o);
  moe_model_free(m);
}
END_TEST

/* Lookahead k = 1..3 on a model with 6 MoE blocks: block N predicts block
 * N + k, so each forward predicts 6 - k blocks; pregated plans (k + 1) x
 * active slots and, with its planned slots, decode steps have no misses;
 * the measured peak equals the plan; under conventional routing the
 * speculative policy keeps gpu-only's bits at every k. */
START_TEST(lookahead_predicts_k_blocks_ahead) {
  moe_config c = cfg();
  c.n_layers = 6;
  for (int l = 0; l < 6; l++) c.is_moe[l] = true;
  moe_error err = {0};
  moe_synth_options so = {MOE_F32, 31, 0.5, false};
  moe_model *m = NULL;
  ck_assert_msg(moe_model_synthetic(&m, &c, &so, &err) == MOE_OK, "%s", err.msg);
  const int k = _i + 1, active = B * c.top_k;
  for (int routing = 0; routing < 2; routing++) {
    moe_device dev;
    ck_assert(moe_device_open(&dev, "cpu", NULL, &err) == MOE_OK);
    moe_engine *e = NULL;
    const moe_policy *pol = moe_policy_find(routing ? "pregated" : "pregated-spec");
    moe_engine_options eo = {.max_batch = B, .max_seq = P + N, .policy = pol,
                             .routing = routing ? MOE_ROUTING_PREGATED : MOE_ROUTING_CONVENTIONAL,
                             .pregate_lookahead = k};
    ck_assert_msg(moe_engine_create(&e, m, &dev, &eo, &err) == MOE_OK, "%s", err.msg);
    int32_t ids[B * P], tok[B];
    float logits[B * 40];
    for (int i = 0; i < B * P; i++) ids[i] = (int32_t)((i * 5 + 1) % 40);
    ck_assert(moe_engine_forward(e, ids, B, P, 0, logits, &err) == MOE_OK);
    moe_engine_reset_stats(e);
    for (int step = 0; step < N - 1; step++) {
      for (int b = 0; b < B; b++) tok[b] = moe_argmax(logits + b * 40, 40);
      ck_assert(moe_engine_forward(e, tok, B, 1, P + step, logits, &err) == MOE_OK);
    }
    moe_run_stats rs;
    moe_engine_stats(e, &rs);
    ck_assert_int_eq(rs.slots, (k + 1) * active);
    ck_assert_uint_eq(rs.pregate_total, (unsigned long long)((6 - k) * B * c.top_k * (N - 1)));
    if (routing) ck_assert_uint_eq(rs.misses, 0);
    size_t cats[MOE_MEM_CATEGORIES], plan;
    moe_engine_plan_memory(m, &dev, &eo, rs.slots, cats, &plan);
    ck_assert_uint_eq(dev.mem.peak_total, plan);
    moe_engine_free(e);
    moe_device_close(&dev);
  }
  /* exactness of the speculation at this k, whole generations */
  run_out *ref = calloc(1, sizeof *ref), *o = calloc(1, sizeof *o);
  ck_assert(run(m, moe_policy_find("gpu-only"), MOE_ROUTING_CONVENTIONAL, 0, ref, &err) == MOE_OK);
  const moe_engine_options spec = {.policy = moe_policy_find("pregated-spec"), .pregate_lookahead = k};
  ck_assert(run_opts(m, &spec, 0, 5, o, &err) == MOE_OK);
  ck_assert_int_eq(memcmp(o->tokens, ref->tokens, sizeof o->tokens), 0);
  ck_assert_int_eq(memcmp(o->logits, ref->logits, sizeof o->logits), 0);
  free(ref);
  free(o);
  moe_model_free(m);
}
END_TEST

/* Expert caches on top of a policy (LRU, LFU, static from a warm-up's
 * counts) and the streaming ring: outputs stay gpu-only's bit for bit, the cache adds its slots
 * to the plan and the measured peak equals the plan, and the cache serves
 * acquires without copies, so fewer bytes move than without it. */
START_TEST(expert_caches_keep_bits_and_save_copies) {
  moe_config c = cfg();
  moe_error err = {0};
  moe_synth_options so = {MOE_F32, 77, 1.5, false}; /* a skewed popularity */
  moe_model *m = NULL;
  ck_assert_msg(moe_model_synthetic(&m, &c, &so, &err) == MOE_OK, "%s", err.msg);
  run_out *ref = calloc(1, sizeof *ref), *none = calloc(1, sizeof *none), *o = calloc(1, sizeof *o);
  ck_assert(run(m, moe_policy_find("gpu-only"), MOE_ROUTING_CONVENTIONAL, 0, ref, &err) == MOE_OK);
  ck_assert(run(m, moe_policy_find("ondemand"), MOE_ROUTING_CONVENTIONAL, 0, none, &err) == MOE_OK);
  /* the popularity a warm-up would see: gpu-only's acquire counts */
  unsigned long long pop[3 * 8];
  {
    moe_device dev;
    ck_assert(moe_device_open(&dev, "cpu", NULL, &err) == MOE_OK);
    moe_engine *e = NULL;
    moe_engine_options eo = {.max_batch = B, .max_seq = P + N};
    ck_assert(moe_engine_create(&e, m, &dev, &eo, &err) == MOE_OK);
    int32_t ids[B * P], out[B * N];
    for (int i = 0; i < B * P; i++) ids[i] = (int32_t)((i * 11 + 7) % 40);
    ck_assert(moe_engine_generate(e, ids, B, P, N, out, NULL, NULL, &err) == MOE_OK);
    const int layers[3] = {0, 1, 3};
    for (int l = 0; l < 3; l++)
      for (int x = 0; x < 8; x++) pop[l * 8 + x] = moe_expert_store_uses(moe_engine_store(e), layers[l], x);
    moe_engine_free(e);
    moe_device_close(&dev);
  }
  const moe_cache_kind kinds[4] = {MOE_CACHE_LRU, MOE_CACHE_LFU, MOE_CACHE_STATIC, MOE_CACHE_RING};
  for (int i = 0; i < 4; i++) {
    const moe_engine_options eo = {.policy = moe_policy_find("ondemand"), .cache = kinds[i],
                                   .cache_experts = 6, .cache_popularity = pop};
    /* run_opts also checks the store's residency invariants */
    ck_assert_msg(run_opts(m, &eo, 0, 5, o, &err) == MOE_OK, "%s", err.msg);
    const moe_run_stats rs = o->stats;
    ck_assert_int_eq(rs.cache_slots, 6);
    ck_assert_int_eq(rs.slots, none->slots + 6);
    ck_assert_uint_eq(o->peak, o->planned);
    ck_assert_msg(memcmp(o->tokens, ref->tokens, sizeof o->tokens) == 0, "%s: tokens differ",
                  moe_cache_kind_name(kinds[i]));
    ck_assert_msg(memcmp(o->logits, ref->logits, sizeof o->logits) == 0, "%s: logits differ",
                  moe_cache_kind_name(kinds[i]));
    if (kinds[i] == MOE_CACHE_RING) /* streaming: the next experts are on their way */
      ck_assert_msg(rs.misses < none->stats.misses, "ring: misses %llu vs %llu", rs.misses,
                    none->stats.misses);
    else
      ck_assert_msg(rs.reused > none->stats.reused && rs.bytes_h2d < none->stats.bytes_h2d,
                    "%s: reused %llu vs %llu, bytes %llu vs %llu", moe_cache_kind_name(kinds[i]),
                    rs.reused, none->stats.reused, rs.bytes_h2d, none->stats.bytes_h2d);
  }
  free(ref);
  free(none);
  free(o);
  moe_model_free(m);
}
END_TEST

/* A cache never changes outputs, under every registered policy: each
 * cache kind on top of each policy gives gpu-only's tokens and logits bit
 * for bit, with the peak equal to the plan (the claim docs/ARCHITECTURE.md
 * makes; the test above checks the savings on ondemand). */
START_TEST(expert_caches_keep_bits_under_every_policy) {
  moe_config c = cfg();
  moe_error err = {0};
  moe_synth_options so = {MOE_F32, 78, 1.5, false};
  moe_model *m = NULL;
  ck_assert_msg(moe_model_synthetic(&m, &c, &so, &err) == MOE_OK, "%s", err.msg);
  run_out *ref = calloc(1, sizeof *ref), *o = calloc(1, sizeof *o);
  ck_assert(run(m, moe_policy_find("gpu-only"), MOE_ROUTING_CONVENTIONAL, 0, ref, &err) == MOE_OK);
  unsigned long long pop[3 * 8];
  for (int i = 0; i < 3 * 8; i++) pop[i] = (unsigned long long)((i * 7) % 11); /* any counts */
  const moe_cache_kind kinds[4] = {MOE_CACHE_LRU, MOE_CACHE_LFU, MOE_CACHE_STATIC, MOE_CACHE_RING};
  int checked = 0;
  for (size_t p = 0; p < moe_policy_count(); p++) {
    const moe_policy *pol = moe_policy_at(p);
    for (int k = 0; k < 4; k++) {
      const moe_hw_profile hw = host_profile(1, 100); /* figures for fiddler */
      const moe_engine_options eo = {.policy = pol, .cache = kinds[k], .cache_experts = 4,
                                     .cache_popularity = pop, .cost_profile = &hw};
      ck_assert_msg(run_opts(m, &eo, 0, 5, o, &err) == MOE_OK, "%s + %s: %s", pol->name,
                    moe_cache_kind_name(kinds[k]), err.msg);
      ck_assert_msg(memcmp(o->tokens, ref->tokens, sizeof o->tokens) == 0, "%s + %s: tokens differ",
                    pol->name, moe_cache_kind_name(kinds[k]));
      ck_assert_msg(memcmp(o->logits, ref->logits, sizeof o->logits) == 0, "%s + %s: logits differ",
                    pol->name, moe_cache_kind_name(kinds[k]));
      ck_assert_uint_eq(o->peak, o->planned);
      checked++;
    }
  }
  ck_assert_int_ge(checked, 4 * 4); /* at least the paper's four policies */
  free(ref);
  free(o);
  moe_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- tracing backend */

/* The cpu backend with its copies, waits, attention calls and host pins
 * logged in issue order: an independent count of what the store says it
 * did, and the order in which copies and compute were issued. */
enum { LOG_MAX = 1 << 16 };
typedef struct log_ent {
  char op;            /* 'c' copy, 'a' attention */
  const void *dst;    /* copy destination */
  size_t bytes;
} log_ent;
static log_ent g_log[LOG_MAX];
static int g_nlog;
static moe_backend_ops g_trace_ops;
static int g_pins; /* live host registrations */

static moe_status trace_copy(moe_backend *be, void *dst, const void *src, size_t bytes,
                             moe_event *ev, moe_error *err) {
  if (g_nlog < LOG_MAX) g_log[g_nlog++] = (log_ent){'c', dst, bytes};
  return moe_backend_find("cpu")->copy_h2d_async(be, dst, src, bytes, ev, err);
}
static moe_status trace_copy_ex(moe_backend *be, void *dst, const void *src, size_t bytes,
                                moe_event *wait_ev, moe_event *ev, int urgent, moe_error *err) {
  if (g_nlog < LOG_MAX) g_log[g_nlog++] = (log_ent){'c', dst, bytes};
  return moe_backend_find("cpu")->copy_h2d_ex(be, dst, src, bytes, wait_ev, ev, urgent, err);
}
/* attention_ex: what the engine's attention (moe_backend_attention) calls */
static moe_status trace_attention(moe_backend *be, float *out, const float *q, const float *kc,
                                  const float *vc, const moe_attn_ex *a, moe_error *err) {
  if (g_nlog < LOG_MAX) g_log[g_nlog++] = (log_ent){'a', NULL, 0};
  return moe_backend_find("cpu")->attention_ex(be, out, q, kc, vc, a, err);
}
/* Pinning as CUDA does it: registering a range twice fails. */
static moe_status trace_register(moe_backend *be, void *ptr, size_t bytes, moe_error *err) {
  if (g_pins > 0) return MOE_FAIL(err, MOE_ERR_DEVICE, "host range already registered");
  g_pins++;
  return MOE_OK;
}
static void trace_unregister(moe_backend *be, void *ptr) { g_pins--; }

static const moe_backend_ops *trace_ops(void) {
  g_trace_ops = *moe_backend_find("cpu");
  g_trace_ops.name = "cpu-trace";
  g_trace_ops.copy_h2d_async = trace_copy;
  g_trace_ops.copy_h2d_ex = trace_copy_ex;
  g_trace_ops.attention_ex = trace_attention;
  g_trace_ops.host_register = trace_register;
  g_trace_ops.host_unregister = trace_unregister;
  g_nlog = 0;
  g_pins = 0;
  return &g_trace_ops;
}

/* Runs a generation on the tracing backend. */
static moe_status traced_run(moe_model *m, const moe_policy *pol, moe_routing routing,
                             moe_run_stats *rs, moe_error *err) {
  moe_device dev;
  moe_status st = moe_device_open_ops(&dev, trace_ops(), NULL, err);
  if (st != MOE_OK) return st;
  moe_engine *e = NULL;
  moe_engine_options eo = {.max_batch = 1, .max_seq = 16, .policy = pol, .routing = routing};
  st = moe_engine_create(&e, m, &dev, &eo, err);
  int32_t ids[4] = {1, 2, 3, 4}, out[8];
  if (st == MOE_OK) {
    g_nlog = 0; /* warm-up copies are not the run's */
    st = moe_engine_generate(e, ids, 1, 4, 8, out, NULL, NULL, err);
    moe_engine_stats(e, rs);
  }
  moe_engine_free(e);
  moe_device_close(&dev);
  return st;
}

/* Copies counted by the backend equal what the store reports (the store's
 * counters are not checked against each other but against the device). */
START_TEST(store_counts_match_the_device) {
  const char *names[] = {"ondemand", "prefetch-all", "pregated"};
  for (int i = 0; i < 3; i++) {
    moe_run_stats rs;
    moe_error err = {0};
    ck_assert_msg(traced_run(g_model, moe_policy_find(names[i]), MOE_ROUTING_CONVENTIONAL, &rs,
                             &err) == MOE_OK, "%s", err.msg);
    unsigned long long copies = 0, bytes = 0;
    for (int j = 0; j < g_nlog; j++)
      if (g_log[j].op == 'c') copies++, bytes += g_log[j].bytes;
    ck_assert_uint_gt(copies, 0);
    ck_assert_uint_eq(rs.fetches, copies);
    ck_assert_uint_eq(rs.bytes_h2d, bytes);
  }
}
END_TEST

/* Overlap, by issue order (deterministic): in decode, pregated issues the
 * copies of the last MoE block (layer 3) during layer 1, while layer 1's
 * experts compute, and none in layer 3 itself; ondemand issues them in
 * layer 3, after its router, so compute waits for them. */
START_TEST(pregated_copies_are_issued_a_layer_early) {
  for (int pol = 0; pol < 2; pol++) {
    moe_run_stats rs;
    moe_error err = {0};
    ck_assert(traced_run(g_model_pg, moe_policy_find(pol ? "pregated" : "ondemand"),
                         MOE_ROUTING_PREGATED, &rs, &err) == MOE_OK);
    /* the layer of each copy: attention calls so far (4 layers a forward);
     * the first forward (prefill) is skipped */
    int attn = 0, per_layer[4] = {0, 0, 0, 0};
    for (int j = 0; j < g_nlog; j++) {
      if (g_log[j].op == 'a') attn++;
      else if (attn > 4) per_layer[(attn - 1) % 4]++;
    }
    if (pol) {
      ck_assert_int_eq(per_layer[3], 0);
      ck_assert_int_gt(per_layer[1], 0); /* block 3's experts, a block early */
    } else {
      ck_assert_int_gt(per_layer[3], 0);
      ck_assert_int_eq(per_layer[2], 0); /* a dense layer copies nothing */
    }
  }
}
END_TEST

/* Two engines on one model, one device: each pins the expert slab (the
 * second registration fails as on CUDA and falls back to pageable memory),
 * and both give the same tokens as a lone engine. */
START_TEST(two_engines_share_a_model) {
  moe_device dev;
  moe_error err = {0};
  ck_assert(moe_device_open_ops(&dev, trace_ops(), NULL, &err) == MOE_OK);
  moe_engine_options eo = {.max_batch = 1, .max_seq = 16, .policy = moe_policy_find("pregated"),
                           .routing = MOE_ROUTING_CONVENTIONAL};
  moe_engine *a = NULL, *b = NULL;
  ck_assert_msg(moe_engine_create(&a, g_model, &dev, &eo, &err) == MOE_OK, "%s", err.msg);
  eo.policy = moe_policy_find("ondemand");
  ck_assert_msg(moe_engine_create(&b, g_model, &dev, &eo, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(g_pins, 1);
  int32_t ids[4] = {5, 6, 7, 8}, ta[8], tb[8], tr[8];
  ck_assert(moe_engine_generate(a, ids, 1, 4, 8, ta, NULL, NULL, &err) == MOE_OK);
  ck_assert(moe_engine_generate(b, ids, 1, 4, 8, tb, NULL, NULL, &err) == MOE_OK);
  moe_engine_free(a);
  ck_assert(moe_engine_generate(b, ids, 1, 4, 8, tr, NULL, NULL, &err) == MOE_OK);
  moe_engine_free(b);
  ck_assert_int_eq(g_pins, 0);
  ck_assert_int_eq(memcmp(ta, tb, sizeof ta), 0);
  ck_assert_int_eq(memcmp(ta, tr, sizeof ta), 0);
  moe_device_close(&dev);
}
END_TEST

/* Freeing an engine while its prefetches are still on a slow link: the
 * copies finish before the slots and the slab go (ASan builds see any
 * write into freed memory). */
START_TEST(engine_teardown_with_copies_in_flight) {
  moe_device dev;
  moe_error err = {0};
  moe_backend_options bo = {.link_gbps = 0.01}; /* 10 MB/s: an expert takes ~1 ms */
  ck_assert(moe_device_open(&dev, "cpu", &bo, &err) == MOE_OK);
  moe_engine_options eo = {.max_batch = 2, .max_seq = 8, .policy = moe_policy_find("prefetch-all")};
  moe_engine *e = NULL;
  ck_assert(moe_engine_create(&e, g_model, &dev, &eo, &err) == MOE_OK);
  moe_expert_store *s = moe_engine_store(e);
  for (int x = 0; x < 8; x++) ck_assert_int_ge(moe_expert_store_fetch(s, 3, x, true, &err), 0);
  moe_engine_free(e); /* copies still queued */
  moe_device_close(&dev);
}
END_TEST

/* The backend's own math threads split rows (and attention's heads), never
 * a row's sum, and OpenBLAS runs single-threaded: 1 and 2 threads give the
 * same bits on every path: f32, the fused 16-bit products (decode), the
 * converted 16-bit products of a wide prefill, and the portable path. */
START_TEST(thread_count_does_not_change_bits) {
  const moe_dtype dts[] = {MOE_F32, MOE_F16, MOE_BF16, MOE_F16};
  for (int d = 0; d < 4; d++) {
    const bool portable = d == 3;
    moe_config c = cfg();
    c.hidden = 256; /* rows x cols past the size where the threads split the work */
    c.expert_ffn = 512;
    c.dense_ffn = 3072; /* f32 blocks are 512 rows at k = 256: six of them */
    c.shared_ffn = 256;
    c.n_heads = 8;
    c.n_kv_heads = 4;
    c.head_dim = 32;
    moe_model *m = NULL;
    moe_error err = {0};
    moe_synth_options o = {dts[d], 79, 0.5, false};
    ck_assert(moe_model_synthetic(&m, &c, &o, &err) == MOE_OK);
    float logits[2][B * 40], prefill[2][B * 40];
    if (portable) setenv("MOE_CPU_HALF", "portable", 1);
    for (int t = 0; t < 2; t++) {
      moe_device dev;
      moe_backend_options bo = {.threads = t + 1};
      ck_assert(moe_device_open(&dev, "cpu", &bo, &err) == MOE_OK);
      ck_assert(!portable || strstr(dev.ops->describe(dev.be), "portable") != NULL);
      moe_engine *e = NULL;
      moe_engine_options eo = {.max_batch = B, .max_seq = 40};
      ck_assert_msg(moe_engine_create(&e, m, &dev, &eo, &err) == MOE_OK, "%s", err.msg);
      /* a 20-token prompt: B x 20 rows, the wide products */
      int32_t ids[B * 20], out[B * 6];
      for (int i = 0; i < B * 20; i++) ids[i] = (i * 7 + 1) % 40;
      ck_assert(moe_engine_generate(e, ids, B, 20, 6, out, prefill[t], NULL, &err) == MOE_OK);
      ck_assert(moe_engine_forward(e, ids, B, 1, 25, logits[t], &err) == MOE_OK);
      moe_engine_free(e);
      moe_device_close(&dev);
    }
    unsetenv("MOE_CPU_HALF");
    ck_assert_msg(memcmp(prefill[0], prefill[1], sizeof prefill[0]) == 0,
                  "%s%s: 1 and 2 threads differ in the prefill", moe_dtype_name(dts[d]),
                  portable ? " (portable)" : "");
    ck_assert_msg(memcmp(logits[0], logits[1], sizeof logits[0]) == 0,
                  "%s%s: 1 and 2 threads differ", moe_dtype_name(dts[d]), portable ? " (portable)" : "");
    moe_model_free(m);
  }
}
END_TEST

/* Every policy gives gpu-only's bits in f16 and bf16 storage too. */
START_TEST(policies_bit_identical_in_half_precision) {
  const moe_dtype dts[] = {MOE_F16, MOE_BF16};
  for (int d = 0; d < 2; d++) {
    moe_config c = cfg();
    moe_model *m = NULL;
    moe_error err = {0};
    moe_synth_options o = {dts[d], 78, 0.5, true};
    ck_assert(moe_model_synthetic(&m, &c, &o, &err) == MOE_OK);
    run_out *ref = calloc(1, sizeof *ref), *x = calloc(1, sizeof *x);
    ck_assert(run(m, moe_policy_find("gpu-only"), MOE_ROUTING_CONVENTIONAL, 0, ref, &err) == MOE_OK);
    const char *names[] = {"ondemand", "prefetch-all", "pregated"};
    for (int i = 0; i < 3; i++) {
      ck_assert_msg(run(m, moe_policy_find(names[i]), MOE_ROUTING_CONVENTIONAL, 0, x, &err) == MOE_OK,
                    "%s", err.msg);
      ck_assert_msg(memcmp(x->logits, ref->logits, sizeof x->logits) == 0, "%s %s: logits differ",
                    moe_dtype_name(dts[d]), names[i]);
      ck_assert_int_eq(memcmp(x->tokens, ref->tokens, sizeof x->tokens), 0);
      ck_assert_uint_gt(x->stats.fetches, 0);
    }
    free(ref);
    free(x);
    moe_model_free(m);
  }
}
END_TEST

/* No expert is copied twice for the same run of its block while the
 * policy's slots can hold its round: the bytes a policy moves are the
 * bytes its definition says (issue: prefetch-all's round was evicted by
 * its own siblings and by the block it overlapped, and re-copied). */
START_TEST(no_recopies_when_slots_suffice) {
  moe_model *m = NULL;
  moe_error err = {0};
  ck_assert_msg(cli_preset_model("ci-small", NULL, &m, &err) == MOE_OK, "%s", err.msg);
  const char *names[] = {"gpu-only", "ondemand", "prefetch-all", "pregated"};
  for (int batch = 1; batch <= 4; batch *= 2) {
    unsigned long long ondemand_bytes = 0;
    for (int i = 0; i < 4; i++) {
      run_spec sp = {.model = m, .policy = moe_policy_find(names[i]), .backend = "cpu",
                     .batch = batch, .prompt_len = 8, .gen_len = 12, .prompt_seed = 3,
                     .requests = 1};
      run_result r;
      runner_run(&sp, &r);
      ck_assert_msg(r.status == MOE_OK, "%s: %s", names[i], r.error);
      ck_assert_msg(r.stats.recopies == 0, "%s, batch %d: %llu re-copies in %llu fetches", names[i],
                    batch, r.stats.recopies, r.stats.fetches);
      if (strcmp(names[i], "prefetch-all") == 0) ck_assert_uint_eq(r.stats.refused, 0);
      if (strcmp(names[i], "prefetch-all") == 0) {
        /* every block but the first of each forward was wholly prefetched:
         * its E experts, each once */
        ck_assert_uint_eq(r.stats.misses, 0);
        /* with 4 MoE blocks and room for 2, it moves E/k-ish times more */
        ck_assert_uint_gt(r.stats.bytes_h2d, 2 * ondemand_bytes);
      }
      if (strcmp(names[i], "ondemand") == 0) ondemand_bytes = r.stats.bytes_h2d;
      run_result_free(&r);
    }
  }
  moe_model_free(m);
}
END_TEST

/* A round of prefetches is placed only after all its targets are marked:
 * a resident target is never the victim of a sibling's copy. */
START_TEST(prefetch_round_keeps_its_targets) {
  moe_expert_store *s = NULL;
  moe_error err = {0};
  ck_assert(moe_expert_store_create(&s, g_model, &g_dev, 4, &err) == MOE_OK);
  /* layer 1's experts 0 and 1 resident, least recently used */
  ck_assert_int_eq(moe_expert_store_fetch(s, 1, 0, true, &err), 1);
  ck_assert_int_eq(moe_expert_store_fetch(s, 1, 1, true, &err), 1);
  ck_assert_int_eq(moe_expert_store_fetch(s, 0, 4, true, &err), 1);
  ck_assert_int_eq(moe_expert_store_fetch(s, 0, 5, true, &err), 1);
  int need[2] = {4, 5};
  moe_expert_store_begin_block(s, 0, need, 2);
  moe_expert_weights w;
  for (int i = 0; i < 2; i++) {
    ck_assert(moe_expert_store_acquire(s, 0, need[i], &w, &err) == MOE_OK);
    ck_assert(moe_expert_store_release(s, 0, need[i], &err) == MOE_OK);
  }
  moe_expert_store_end_block(s, 0);
  unsigned long long f0 = moe_expert_store_stats(s)->fetches;
  /* a round for layer 1 wants {2, 3, 0, 1}: 0 and 1 are resident and must
   * stay; 2 and 3 take layer 0's slots */
  moe_expert_store_round_begin(s);
  int want[4] = {2, 3, 0, 1};
  for (int i = 0; i < 4; i++) ck_assert_int_eq(moe_expert_store_fetch(s, 1, want[i], true, &err), 1);
  ck_assert_int_eq(moe_expert_store_round_end(s, &err), 0);
  ck_assert_uint_eq(moe_expert_store_stats(s)->fetches, f0 + 2);
  for (int i = 0; i < 4; i++) ck_assert(moe_expert_store_resident(s, 1, want[i]));
  /* the round's holds survive the next block's start (it is for layer 1) */
  moe_expert_store_begin_block(s, 0, NULL, 0);
  ck_assert_int_eq(moe_expert_store_fetch(s, 0, 7, true, &err), 0);
  ck_assert_uint_eq(moe_expert_store_stats(s)->recopies, 0);
  ck_assert(moe_expert_store_check(s, &err) == MOE_OK);
  moe_expert_store_free(s);
}
END_TEST


int main(void) {
  Suite *s = suite_create("offload");
  TCase *tc = tcase_create("offload");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, policies_are_bit_identical);
  tcase_add_test(tc, pregated_routing);
  tcase_add_test(tc, speculative_pregating_is_exact);
  tcase_add_test(tc, switch_policies_bit_identical);
  tcase_add_test(tc, switch_pregated_stacks);
  tcase_add_loop_test(tc, new_families_under_every_policy, 0, 6); /* the six configs */
  tcase_add_loop_test(tc, lookahead_predicts_k_blocks_ahead, 0, 3);
  tcase_add_test(tc, expert_caches_keep_bits_and_save_copies);
  tcase_add_test(tc, expert_caches_keep_bits_under_every_policy);
  tcase_add_test(tc, no_recopies_when_slots_suffice);
  tcase_add_test(tc, prefetch_round_keeps_its_targets);
  tcase_add_test(tc, store_counts_match_the_device);
  tcase_add_test(tc, pregated_copies_are_issued_a_layer_early);
  tcase_add_test(tc, two_engines_share_a_model);
  tcase_add_test(tc, engine_teardown_with_copies_in_flight);
  tcase_add_test(tc, policies_bit_identical_in_half_precision);
  tcase_add_test(tc, thread_count_does_not_change_bits);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
