/* Shared by the policy suites: see policy_util.h. */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "moe/rng.h"
#include "policy_util.h"

/* 4 layers, MoE in 0, 1, 3; 8 experts, top-2: more experts than most
 * policies' slots, so slots are reused within and across blocks. */
moe_config cfg(void) {
  moe_config c;
  memset(&c, 0, sizeof c);
  c.arch = MOE_ARCH_QWEN2_MOE;
  c.hidden = 32;
  c.n_layers = 4;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.vocab = 40;
  c.max_pos = 64;
  c.n_experts = 8;
  c.top_k = 2;
  c.expert_ffn = 24;
  c.dense_ffn = 40;
  c.shared_ffn = 16;
  c.qkv_bias = true;
  c.rms_eps = 1e-6f;
  c.rope_theta = 10000.0f;
  c.is_moe[0] = c.is_moe[1] = c.is_moe[3] = true;
  return c;
}

moe_model *g_model, *g_model_pg;
moe_device g_dev;
double g_link_gbps;

void setup(void) {
  moe_config c = cfg();
  moe_error err = {0};
  moe_synth_options o = {MOE_F32, 77, 0.5, false};
  ck_assert_msg(moe_model_synthetic(&g_model, &c, &o, &err) == MOE_OK, "%s", err.msg);
  o.pregate = true;
  ck_assert_msg(moe_model_synthetic(&g_model_pg, &c, &o, &err) == MOE_OK, "%s", err.msg);
  ck_assert(moe_device_open(&g_dev, "cpu", NULL, &err) == MOE_OK);
}

void teardown(void) {
  moe_device_close(&g_dev);
  moe_model_free(g_model);
  moe_model_free(g_model_pg);
}

/* Generates on a fresh device so peaks are the run's own: opt's policy,
 * routing, stacks, lookahead and cache with this file's batch and lengths;
 * budget 0 is the device's capacity, seed that of the random prompt ids. */
moe_status run_opts(moe_model *m, const moe_engine_options *opt, size_t budget,
                    uint64_t seed, run_out *out, moe_error *err) {
  moe_device dev;
  moe_backend_options bo = {.device_budget = budget, .link_gbps = g_link_gbps};
  moe_status st = moe_device_open(&dev, "cpu", &bo, err);
  if (st != MOE_OK) return st;
  moe_engine *e = NULL;
  moe_engine_options eo = *opt;
  eo.max_batch = B;
  eo.max_seq = P + N;
  eo.all_logits = true;
  st = moe_engine_create(&e, m, &dev, &eo, err);
  if (st == MOE_OK) {
    int32_t ids[B * P];
    moe_rng r;
    moe_rng_seed(&r, seed, 0);
    for (int i = 0; i < B * P; i++) ids[i] = (int32_t)(moe_rng_next(&r) % 40);
    st = moe_engine_generate(e, ids, B, P, N, out->tokens, out->logits, NULL, err);
    moe_engine_stats(e, &out->stats);
    out->slots = out->stats.slots;
    size_t by_cat[MOE_MEM_CATEGORIES];
    moe_engine_plan_memory(m, &dev, &eo, out->slots, by_cat, &out->planned);
    out->peak = dev.mem.peak_total;
    if (st == MOE_OK) st = moe_expert_store_check(moe_engine_store(e), err);
  }
  moe_engine_free(e);
  moe_device_close(&dev);
  return st;
}

moe_status run(moe_model *m, const moe_policy *pol, moe_routing routing, size_t budget,
               run_out *out, moe_error *err) {
  const moe_engine_options eo = {.policy = pol, .routing = routing};
  return run_opts(m, &eo, budget, 5, out, err);
}

/* A synthetic Switch (encoder-decoder) model: 4 encoder layers (MoE in 1
 * and 3) and 3 decoder layers (all MoE), 8 experts, top-1, capacity 4 so
 * the 7-token inputs overflow it now and then. */
moe_model *switch_model(moe_error *err) {
  moe_config c;
  memset(&c, 0, sizeof c);
  c.arch = MOE_ARCH_SWITCH;
  c.hidden = 32;
  c.n_enc_layers = 4;
  c.n_layers = 7;
  c.n_heads = 4;
  c.n_kv_heads = 4;
  c.head_dim = 6;
  c.vocab = 40;
  c.max_pos = 1 << 20;
  c.n_experts = 8;
  c.top_k = 1;
  c.expert_ffn = 24;
  c.dense_ffn = 24;
  c.rms_eps = 1e-6f;
  c.rope_theta = 10000.0f;
  c.rel_buckets = 8;
  c.rel_max_distance = 16;
  c.expert_capacity = 4;
  c.ffn_act = MOE_FFN_RELU;
  c.tie_embeddings = true;
  c.enc_sparse_step = 2;
  c.dec_sparse_step = 1;
  c.is_moe[1] = c.is_moe[3] = c.is_moe[4] = c.is_moe[5] = c.is_moe[6] = true;
  moe_synth_options o = {MOE_F32, 91, 0.3, false};
  moe_model *m = NULL;
  return moe_model_synthetic(&m, &c, &o, err) == MOE_OK ? m : NULL;
}

/* A hardware profile for fiddler's cost figures: a link of link_gbps and
 * a host whose memory reads host_gbps (its FLOP rate ample). */
moe_hw_profile host_profile(double link_gbps, double host_gbps) {
  moe_hw_profile p;
  memset(&p, 0, sizeof p);
  snprintf(p.name, sizeof p.name, "test");
  p.memory_bytes = 1e12;
  p.memory_gbps = 1000;
  p.tflops[0] = p.tflops[1] = p.tflops[2] = 100;
  p.h2d_pinned_gbps = p.h2d_pageable_gbps = link_gbps;
  p.h2d_latency_us = p.launch_us = p.transfer_latency_us = 1;
  p.copy_slowdown = 1;
  p.host_cores = 8;
  p.host_memory_gbps = host_gbps;
  p.host_gflops_f32 = p.host_gflops_bf16 = 1e4;
  return p;
}
