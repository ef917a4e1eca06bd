/* The engine end to end on synthetic models: KV-cache decode equals full
 * recomputation, determinism, save/load round trip, missing and mis-shaped
 * tensors, activation scale through many layers, routing skew. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"
#include "moe/device.h"
#include "moe/expert_store.h"
#include "moe/model.h"
#include "moe/rng.h"
#include "moe/trace.h"
#include "testutil.h"

static moe_config tiny(moe_arch arch) {
  moe_config c;
  memset(&c, 0, sizeof c);
  c.arch = arch;
  c.hidden = 32;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.vocab = 50;
  c.max_pos = 128;
  c.n_experts = 6;
  c.top_k = 2;
  c.expert_ffn = 40;
  c.rms_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  for (int i = 0; i < c.n_layers; i++) c.is_moe[i] = true;
  if (arch == MOE_ARCH_MIXTRAL) {
    c.norm_topk = true;
  } else {
    c.qkv_bias = true;
    c.shared_ffn = 24;
    c.dense_ffn = 56;
    c.is_moe[1] = false;
  }
  return c;
}

static moe_model *synth(const moe_config *c, moe_dtype dt, uint64_t seed, double skew) {
  moe_model *m = NULL;
  moe_error err = {0};
  moe_synth_options o = {dt, seed, skew, false};
  ck_assert_msg(moe_model_synthetic(&m, c, &o, &err) == MOE_OK, "%s", err.msg);
  return m;
}

static moe_engine *engine(moe_model *m, moe_device *dev, int batch, int seq, bool all) {
  moe_engine *e = NULL;
  moe_error err = {0};
  moe_engine_options o = {.max_batch = batch, .max_seq = seq, .all_logits = all};
  ck_assert_msg(moe_engine_create(&e, m, dev, &o, &err) == MOE_OK, "%s", err.msg);
  return e;
}

static moe_device g_dev;
static void setup(void) {
  moe_error err = {0};
  ck_assert(moe_device_open(&g_dev, "cpu", NULL, &err) == MOE_OK);
}
static void teardown(void) { moe_device_close(&g_dev); }

static void random_ids(int32_t *ids, size_t n, int vocab, uint64_t seed) {
  moe_rng r;
  moe_rng_seed(&r, seed, 1);
  for (size_t i = 0; i < n; i++) ids[i] = (int32_t)(moe_rng_next(&r) % (uint64_t)vocab);
}

/* Decoding token L with the KV cache gives the logits that recomputing the
 * whole sequence gives at position L (relative 1e-5). */
static void check_kv_cache(moe_arch arch, moe_dtype dt) {
  moe_config c = tiny(arch);
  moe_model *m = synth(&c, dt, 3, 0.0);
  const int B = 2, L = 12, V = c.vocab;
  int32_t ids[2 * 12];
  random_ids(ids, (size_t)B * L, V, 9);
  moe_error err = {0};
  /* full recomputation: all L tokens in one forward, logits of every position */
  moe_engine *full = engine(m, &g_dev, B, L, true);
  float *lf = malloc((size_t)B * L * V * sizeof(float));
  ck_assert(moe_engine_forward(full, ids, B, L, 0, lf, &err) == MOE_OK);
  /* incremental: prefill 7, then 5 single-token steps */
  moe_engine *inc = engine(m, &g_dev, B, L, false);
  float *li = malloc((size_t)B * V * sizeof(float));
  int32_t pre[2 * 7], step[2];
  for (int b = 0; b < B; b++) memcpy(pre + b * 7, ids + b * L, 7 * sizeof(int32_t));
  ck_assert(moe_engine_forward(inc, pre, B, 7, 0, li, &err) == MOE_OK);
  for (int t = 7; t <= L; t++) {
    double mx = 0, d = 0;
    for (int b = 0; b < B; b++)
      for (int v = 0; v < V; v++) {
        double want = lf[((size_t)b * L + t - 1) * V + v];
        mx = fmax(mx, fabs(want));
        d = fmax(d, fabs(want - li[(size_t)b * V + v]));
      }
    ck_assert_msg(d <= 1e-5 * mx, "%s %s position %d: |diff| %g vs max %g",
                  arch == MOE_ARCH_MIXTRAL ? "mixtral" : "qwen", moe_dtype_name(dt), t - 1, d, mx);
    if (t == L) break;
    for (int b = 0; b < B; b++) step[b] = ids[b * L + t];
    ck_assert(moe_engine_forward(inc, step, B, 1, t, li, &err) == MOE_OK);
  }
  free(lf);
  free(li);
  moe_engine_free(full);
  moe_engine_free(inc);
  moe_model_free(m);
}

START_TEST(kv_cache_equals_recompute) {
  check_kv_cache(MOE_ARCH_MIXTRAL, MOE_F32);
  check_kv_cache(MOE_ARCH_QWEN2_MOE, MOE_F32);
  check_kv_cache(MOE_ARCH_MIXTRAL, MOE_BF16);
  check_kv_cache(MOE_ARCH_QWEN2_MOE, MOE_F16);
}
END_TEST

START_TEST(synthetic_is_deterministic) {
  moe_config c = tiny(MOE_ARCH_QWEN2_MOE);
  moe_model *a = synth(&c, MOE_BF16, 42, 1.0), *b = synth(&c, MOE_BF16, 42, 1.0),
            *d = synth(&c, MOE_BF16, 43, 1.0);
  ck_assert_uint_eq(moe_model_total_bytes(a), moe_model_total_bytes(b));
  ck_assert_int_eq(memcmp(a->dense, b->dense, a->dense_bytes), 0);
  ck_assert_int_eq(memcmp(a->experts, b->experts, a->experts_total), 0);
  ck_assert_int_ne(memcmp(a->experts, d->experts, a->experts_total), 0);
  /* and the same run twice gives the same bits */
  const int B = 3, P = 5, N = 6;
  int32_t ids[15], o1[18], o2[18];
  random_ids(ids, 15, c.vocab, 1);
  float *l1 = malloc((size_t)B * c.vocab * 4), *l2 = malloc((size_t)B * c.vocab * 4);
  moe_error err = {0};
  moe_engine *e1 = engine(a, &g_dev, B, P + N, false), *e2 = engine(b, &g_dev, B, P + N, false);
  ck_assert(moe_engine_generate(e1, ids, B, P, N, o1, l1, NULL, &err) == MOE_OK);
  ck_assert(moe_engine_generate(e2, ids, B, P, N, o2, l2, NULL, &err) == MOE_OK);
  ck_assert_int_eq(memcmp(o1, o2, sizeof o1), 0);
  ck_assert_int_eq(memcmp(l1, l2, (size_t)B * c.vocab * 4), 0);
  free(l1);
  free(l2);
  moe_engine_free(e1);
  moe_engine_free(e2);
  moe_model_free(a);
  moe_model_free(b);
  moe_model_free(d);
}
END_TEST

/* Batched generation equals generating each sequence alone. */
START_TEST(batch_equals_single) {
  moe_config c = tiny(MOE_ARCH_MIXTRAL);
  moe_model *m = synth(&c, MOE_F32, 5, 0.0);
  const int B = 3, P = 6, N = 8;
  int32_t ids[18], ob[24], os[8];
  random_ids(ids, 18, c.vocab, 2);
  moe_error err = {0};
  moe_engine *eb = engine(m, &g_dev, B, P + N, false), *es = engine(m, &g_dev, 1, P + N, false);
  ck_assert(moe_engine_generate(eb, ids, B, P, N, ob, NULL, NULL, &err) == MOE_OK);
  for (int b = 0; b < B; b++) {
    ck_assert(moe_engine_generate(es, ids + b * P, 1, P, N, os, NULL, NULL, &err) == MOE_OK);
    ck_assert_int_eq(memcmp(os, ob + b * N, sizeof os), 0);
  }
  moe_engine_free(eb);
  moe_engine_free(es);
  moe_model_free(m);
}
END_TEST

START_TEST(save_load_round_trip) {
  char dir[512];
  ck_assert_ptr_nonnull(tu_tempdir(dir, sizeof dir));
  moe_config c = tiny(MOE_ARCH_QWEN2_MOE);
  moe_model *a = synth(&c, MOE_F16, 8, 0.7);
  moe_error err = {0};
  ck_assert_msg(moe_model_save(a, dir, &err) == MOE_OK, "%s", err.msg);
  moe_model *b = NULL;
  ck_assert_msg(moe_model_load(&b, dir, NULL, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(moe_model_dtype(b), MOE_F16);
  ck_assert_int_eq(memcmp(a->dense, b->dense, a->dense_bytes), 0);
  ck_assert_int_eq(memcmp(a->experts, b->experts, a->experts_total), 0);
  const moe_config *cb = moe_model_config(b);
  ck_assert(cb->is_moe[0] && !cb->is_moe[1] && cb->is_moe[2]);

  /* missing tensor: a config asking for one more layer */
  moe_config more = c;
  more.n_layers = 4;
  more.is_moe[3] = true;
  moe_model *x = NULL;
  moe_error_clear(&err);
  ck_assert_int_eq(moe_model_load_weights(&x, &more, dir, NULL, &err), MOE_ERR_FORMAT);
  ck_assert_ptr_null(x);
  ck_assert_msg(strstr(err.msg, "model.layers.3.input_layernorm.weight") != NULL, "%s", err.msg);
  /* mis-shaped tensor: wider experts than stored */
  moe_config wide = c;
  wide.expert_ffn = 41;
  moe_error_clear(&err);
  ck_assert_int_eq(moe_model_load_weights(&x, &wide, dir, NULL, &err), MOE_ERR_FORMAT);
  ck_assert_msg(strstr(err.msg, "experts.0.gate_proj.weight") != NULL &&
                    strstr(err.msg, "expected [41, 32]") != NULL,
                "%s", err.msg);
  /* a missing checkpoint */
  moe_error_clear(&err);
  ck_assert_int_eq(moe_model_load(&x, "/nonexistent-model-dir", NULL, &err), MOE_ERR_IO);
  moe_model_free(a);
  moe_model_free(b);
  tu_rmtree(dir);
}
END_TEST

/* With the synthetic init the residual stream stays O(1) however deep the
 * model: RMS within [0.5, 4] after 4 and after 48 layers. */
START_TEST(activations_stay_bounded) {
  const int depths[] = {4, 48};
  for (int d = 0; d < 2; d++) {
    moe_config c = tiny(MOE_ARCH_MIXTRAL);
    c.hidden = 64;
    c.n_heads = 8;
    c.n_layers = depths[d];
    for (int i = 0; i < c.n_layers; i++) c.is_moe[i] = true;
    moe_model *m = synth(&c, MOE_F32, 11, 0.0);
    moe_engine *e = engine(m, &g_dev, 2, 16, false);
    int32_t ids[32];
    random_ids(ids, 32, c.vocab, 3);
    float *lg = malloc((size_t)2 * c.vocab * 4);
    moe_error err = {0};
    ck_assert(moe_engine_forward(e, ids, 2, 16, 0, lg, &err) == MOE_OK);
    double rms = 0;
    ck_assert(moe_engine_residual_rms(e, &rms, &err) == MOE_OK);
    printf("depth %d: residual rms %.3f\n", depths[d], rms);
    ck_assert_msg(rms > 0.5 && rms < 4.0, "depth %d: residual rms %g", depths[d], rms);
    free(lg);
    moe_engine_free(e);
    moe_model_free(m);
  }
}
END_TEST

/* Routing skew makes expert popularity uneven; without it, use is spread. */
START_TEST(routing_skew_concentrates_use) {
  moe_config c = tiny(MOE_ARCH_MIXTRAL);
  c.n_experts = 16;
  c.top_k = 1;
  double share[2];
  for (int s = 0; s < 2; s++) {
    moe_model *m = synth(&c, MOE_F32, 4, s ? 2.0 : 0.0);
    moe_engine *e = engine(m, &g_dev, 1, 100, false);
    int32_t ids[4] = {1, 2, 3, 4}, out[96];
    moe_error err = {0};
    ck_assert(moe_engine_generate(e, ids, 1, 4, 96, out, NULL, NULL, &err) == MOE_OK);
    unsigned long long top = 0, total = 0;
    for (int x = 0; x < c.n_experts; x++) {
      unsigned long long u = moe_expert_store_uses(moe_engine_store(e), 0, x);
      total += u;
      if (u > top) top = u;
    }
    share[s] = (double)top / (double)total;
    moe_engine_free(e);
    moe_model_free(m);
  }
  printf("most used expert's share: no skew %.2f, skew 2.0 %.2f\n", share[0], share[1]);
  ck_assert_msg(share[1] > 0.3 && share[1] > 1.5 * share[0], "no skew %.2f, skew %.2f", share[0],
                share[1]);
}
END_TEST

/* A cpu backend with download_many (the cpu backend has none): n
 * downloads, counted, so the engine's use of it shows. */
static const moe_backend_ops *g_cpu_ops;
static int g_many_calls;
static moe_status dl_many(moe_backend *be, const moe_xfer *x, int n, moe_error *err) {
  g_many_calls++;
  for (int i = 0; i < n; i++) {
    moe_status st = g_cpu_ops->download(be, x[i].dst, x[i].src, x[i].bytes, err);
    if (st != MOE_OK) return st;
  }
  return MOE_OK;
}

/* Decode steps of a traced run: backend calls and host waits per step.
 * A block's routing (indices and weights) is one host wait where the
 * backend has download_many, two where it has not; the logits one more.
 * The tokens are the same either way. */
static void traced_steps(bool many, moe_trace_counts *c, int32_t *out) {
  moe_config cfg = tiny(MOE_ARCH_MIXTRAL);
  moe_model *m = synth(&cfg, MOE_F32, 5, 0.0);
  moe_error err = {0};
  g_cpu_ops = moe_backend_find("cpu");
  moe_backend_ops ops = *g_cpu_ops;
  if (many) ops.download_many = dl_many;
  moe_device dev;
  ck_assert_msg(moe_device_open_ops(&dev, &ops, NULL, &err) == MOE_OK, "%s", err.msg);
  moe_trace *t = NULL;
  char dir[256], path[300];
  tu_tempdir(dir, sizeof dir);
  snprintf(path, sizeof path, "%s/steps.trace.json", dir);
  ck_assert(moe_trace_open(&t, path, &err) == MOE_OK);
  ck_assert(moe_device_trace(&dev, t, &err) == MOE_OK);
  moe_engine *e = engine(m, &dev, 1, 16, false);
  int32_t ids[4] = {1, 2, 3, 4};
  g_many_calls = 0;
  ck_assert_msg(moe_engine_generate(e, ids, 1, 4, 6, out, NULL, NULL, &err) == MOE_OK, "%s", err.msg);
  moe_trace_get_counts(t, c);
  moe_engine_free(e);
  moe_device_close(&dev);
  ck_assert(moe_trace_close(t, &err) == MOE_OK);
  tu_rmtree(dir);
  moe_model_free(m);
}

/* Greedy decoding with the choice on the device (argmax_rows) gives the
 * tokens of scanning the downloaded logits, on a model whose logits have
 * near ties (bf16 weights); without the op the engine scans on the host. */
START_TEST(device_argmax_same_tokens) {
  moe_config cfg = tiny(MOE_ARCH_QWEN2_MOE);
  moe_model *m = synth(&cfg, MOE_BF16, 11, 0.0);
  moe_error err = {0};
  moe_backend_ops ops = *moe_backend_find("cpu");
  ck_assert_ptr_nonnull(ops.argmax_rows);
  int32_t ids[2 * 5], with[2 * 20], without[2 * 20];
  random_ids(ids, 10, cfg.vocab, 4);
  for (int pass = 0; pass < 2; pass++) {
    if (pass) ops.argmax_rows = NULL;
    moe_device dev;
    ck_assert(moe_device_open_ops(&dev, &ops, NULL, &err) == MOE_OK);
    moe_engine *e = engine(m, &dev, 2, 32, false);
    ck_assert_msg(moe_engine_generate(e, ids, 2, 5, 20, pass ? without : with, NULL, NULL, &err) ==
                      MOE_OK, "%s", err.msg);
    moe_engine_free(e);
    moe_device_close(&dev);
  }
  ck_assert_mem_eq(with, without, sizeof with);
  moe_model_free(m);
}
END_TEST

START_TEST(routing_downloads_wait_once_per_block) {
  moe_trace_counts plain, many;
  int32_t tok_plain[6], tok_many[6];
  traced_steps(false, &plain, tok_plain);
  ck_assert_int_eq(g_many_calls, 0);
  traced_steps(true, &many, tok_many);
  ck_assert_int_gt(g_many_calls, 0);
  const int blocks = 3; /* tiny(): every layer MoE */
  ck_assert_int_ge(plain.forward_passes, 6);
  ck_assert_double_eq(plain.syncs_per_step, 2 * blocks + 1);
  ck_assert_double_eq(many.syncs_per_step, blocks + 1);
  ck_assert_double_eq(plain.calls_per_step, many.calls_per_step + blocks);
  /* graph mode's model (capture_gate.h on these calls): one graph per
   * stretch between host waits; with two routing downloads a block, the
   * second is a graph of its own (its copy) */
  ck_assert_double_eq(many.graphs_per_step, blocks + 1);
  ck_assert_double_eq(plain.graphs_per_step, 2 * blocks + 1);
  ck_assert_double_gt(many.ops_per_graph, 2.0);
  ck_assert_uint_gt(many.graphs, (unsigned long)(blocks + 1));
  ck_assert_uint_gt(plain.calls, plain.host_syncs);
  ck_assert_mem_eq(tok_plain, tok_many, sizeof tok_plain);
}
END_TEST

START_TEST(engine_rejects_bad_calls) {
  moe_config c = tiny(MOE_ARCH_MIXTRAL);
  moe_model *m = synth(&c, MOE_F32, 1, 0.0);
  moe_engine *e = engine(m, &g_dev, 2, 10, false);
  int32_t ids[30] = {0};
  float lg[3 * 50];
  moe_error err = {0};
  ck_assert_int_eq(moe_engine_forward(e, ids, 3, 1, 0, lg, &err), MOE_ERR_INVALID);
  moe_error_clear(&err);
  ck_assert_int_eq(moe_engine_forward(e, ids, 1, 4, 8, lg, &err), MOE_ERR_INVALID);
  moe_error_clear(&err);
  ids[0] = 50;
  ck_assert_int_eq(moe_engine_forward(e, ids, 1, 1, 0, lg, &err), MOE_ERR_INVALID);
  ck_assert_ptr_nonnull(strstr(err.msg, "vocabulary"));
  moe_engine *e2 = NULL;
  moe_engine_options o = {.max_batch = 1, .max_seq = 1000};
  moe_error_clear(&err);
  ck_assert_int_eq(moe_engine_create(&e2, m, &g_dev, &o, &err), MOE_ERR_INVALID);
  ck_assert_ptr_null(e2);
  moe_engine_free(e);
  moe_model_free(m);
}
END_TEST

int main(void) {
  Suite *s = suite_create("model");
  TCase *tc = tcase_create("engine");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, kv_cache_equals_recompute);
  tcase_add_test(tc, synthetic_is_deterministic);
  tcase_add_test(tc, batch_equals_single);
  tcase_add_test(tc, save_load_round_trip);
  tcase_add_test(tc, activations_stay_bounded);
  tcase_add_test(tc, routing_skew_concentrates_use);
  tcase_add_test(tc, engine_rejects_bad_calls);
  tcase_add_test(tc, routing_downloads_wait_once_per_block);
  tcase_add_test(tc, device_argmax_same_tokens);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
