/* The cuda backend against the cpu backend (label: gpu).  Exits 77 (ctest's
 * skip) when this build has no CUDA backend or no device is present.
 *
 * - every op on random data, per-op tolerances: f32 near 1e-5 relative,
 *   f16/bf16 weights near 1e-2 (the activations are rounded to the weight
 *   dtype for cublasGemmEx);
 * - whole models (the Hugging Face fixtures): logits within 1e-4 x max
 *   |logit| of the cpu backend's, greedy tokens identical;
 * - each policy bit-identical to gpu-only on the same GPU, and the
 *   accounted peak equal to each policy's plan;
 * - graph mode (MOE_CUDA_GRAPHS=1), with and without overtakable copies:
 *   each policy bit-identical to the plain mode's gpu-only. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/cuda.h"
#include "moe/device.h"
#include "moe/backend.h"
#include "moe/model.h"
#include "moe/policy.h"
#include "moe/rng.h"
#include "testutil.h"

static moe_device g_cpu, g_gpu;

static void setup(void) {
  moe_error err = {0};
  ck_assert(moe_device_open(&g_cpu, "cpu", NULL, &err) == MOE_OK);
  ck_assert_msg(moe_device_open(&g_gpu, "cuda", NULL, &err) == MOE_OK, "%s", err.msg);
}

static void teardown(void) {
  moe_device_close(&g_gpu);
  moe_device_close(&g_cpu);
}

/* Device copy of host data. */
static void *up(const void *h, size_t bytes) {
  void *d = NULL;
  moe_error err = {0};
  ck_assert(g_gpu.ops->device_alloc(g_gpu.be, bytes ? bytes : 4, &d, &err) == MOE_OK);
  ck_assert(g_gpu.ops->upload(g_gpu.be, d, h, bytes, &err) == MOE_OK);
  return d;
}

static void down(void *h, const void *d, size_t bytes) {
  moe_error err = {0};
  ck_assert_msg(g_gpu.ops->download(g_gpu.be, h, d, bytes, &err) == MOE_OK, "%s", err.msg);
}

static double rel_err(const float *a, const float *b, size_t n) {
  double mx = 1e-30, d = 0;
  for (size_t i = 0; i < n; i++) {
    mx = fmax(mx, fabs(b[i]));
    d = fmax(d, fabs((double)a[i] - b[i]));
    if (isnan(a[i])) return INFINITY;
  }
  return d / mx;
}

START_TEST(matmul_matches_cpu) {
  const moe_dtype dts[] = {MOE_F32, MOE_F16, MOE_BF16};
  const double tol[] = {1e-5, 1e-2, 1e-2};
  const size_t shapes[][3] = {{1, 130, 96}, {7, 200, 64}, {80, 130, 48}};
  for (int d = 0; d < 3; d++)
    for (int s = 0; s < 3; s++) {
      size_t m = shapes[s][0], rows = shapes[s][1], cols = shapes[s][2];
      float *wf = malloc(rows * cols * 4), *x = malloc(m * cols * 4), *bf = malloc(rows * 4);
      float *yc = malloc(m * rows * 4), *yg = malloc(m * rows * 4);
      tu_fill(wf, rows * cols, 1);
      tu_fill(x, m * cols, 2);
      tu_fill(bf, rows, 3);
      void *w = malloc(rows * cols * 4), *b = malloc(rows * 4);
      moe_convert_from_f32(w, dts[d], wf, rows * cols);
      moe_convert_from_f32(b, dts[d], bf, rows);
      moe_weight W = {w, dts[d], rows, cols}, B = {b, dts[d], 1, rows};
      moe_error err = {0};
      ck_assert(g_cpu.ops->matmul(g_cpu.be, yc, x, m, &W, &B, &err) == MOE_OK);
      void *dw = up(w, rows * cols * moe_dtype_size(dts[d])), *db = up(b, rows * moe_dtype_size(dts[d]));
      /* the output starts as NaN: a GEMM that writes nothing fails */
      for (size_t i = 0; i < m * rows; i++) yg[i] = NAN;
      float *dx = up(x, m * cols * 4), *dy = up(yg, m * rows * 4);
      void *ws = up(x, m * cols * 2 + 16);
      if (g_gpu.ops->set_workspace) g_gpu.ops->set_workspace(g_gpu.be, ws, m * cols * 2 + 16);
      moe_weight DW = {dw, dts[d], rows, cols}, DB = {db, dts[d], 1, rows};
      ck_assert_msg(g_gpu.ops->matmul(g_gpu.be, dy, dx, m, &DW, &DB, &err) == MOE_OK, "%s", err.msg);
      down(yg, dy, m * rows * 4);
      double e = rel_err(yg, yc, m * rows);
      ck_assert_msg(e < tol[d], "matmul %s m=%zu: rel err %g", moe_dtype_name(dts[d]), m, e);
      g_gpu.ops->set_workspace(g_gpu.be, NULL, 0);
      void *frees[] = {dw, db, dx, dy, ws};
      for (int i = 0; i < 5; i++) g_gpu.ops->device_free(g_gpu.be, frees[i]);
      free(wf); free(x); free(bf); free(yc); free(yg); free(w); free(b);
    }
}
END_TEST

START_TEST(pointwise_ops_match_cpu) {
  moe_error err = {0};
  enum { M = 6, H = 64, E = 8, K = 2 };
  float x[M * H], g[H], yc[M * H], yg[M * H];
  tu_fill(x, M * H, 4);
  tu_fill(g, H, 5);
  moe_weight G = {g, MOE_F32, 1, H};
  float *dx = up(x, sizeof x), *dy = up(x, sizeof x), *dg = up(g, sizeof g);
  moe_weight DG = {dg, MOE_F32, 1, H};
  /* rmsnorm */
  ck_assert(g_cpu.ops->rmsnorm(g_cpu.be, yc, x, M, &G, 1e-5f, &err) == MOE_OK);
  ck_assert(g_gpu.ops->rmsnorm(g_gpu.be, dy, dx, M, &DG, 1e-5f, &err) == MOE_OK);
  down(yg, dy, sizeof yg);
  ck_assert_msg(rel_err(yg, yc, M * H) < 1e-5, "rmsnorm %g", rel_err(yg, yc, M * H));
  /* rope: 4 heads of 16 */
  int32_t pos[M] = {0, 1, 5, 17, 100, 300};
  int32_t *dpos = up(pos, sizeof pos);
  memcpy(yc, x, sizeof x);
  g_gpu.ops->upload(g_gpu.be, dy, x, sizeof x, &err);
  ck_assert(moe_backend_rope(g_cpu.ops, g_cpu.be, yc, M, pos, 4, 16, 10000.0f, NULL, &err) ==
            MOE_OK);
  ck_assert(moe_backend_rope(g_gpu.ops, g_gpu.be, dy, M, dpos, 4, 16, 10000.0f, NULL, &err) ==
            MOE_OK);
  down(yg, dy, sizeof yg);
  ck_assert_msg(rel_err(yg, yc, M * H) < 1e-4, "rope %g", rel_err(yg, yc, M * H));
  /* swiglu, add */
  float u[M * H];
  tu_fill(u, M * H, 6);
  float *du = up(u, sizeof u);
  ck_assert(g_cpu.ops->swiglu(g_cpu.be, yc, x, u, M * H, &err) == MOE_OK);
  ck_assert(g_gpu.ops->swiglu(g_gpu.be, dy, dx, du, M * H, &err) == MOE_OK);
  down(yg, dy, sizeof yg);
  ck_assert(rel_err(yg, yc, M * H) < 1e-5);
  ck_assert(g_cpu.ops->add(g_cpu.be, yc, u, M * H, &err) == MOE_OK);
  ck_assert(g_gpu.ops->add(g_gpu.be, dy, du, M * H, &err) == MOE_OK);
  down(yg, dy, sizeof yg);
  ck_assert(rel_err(yg, yc, M * H) < 1e-5);
  /* router top-k with a bias */
  float lg[M * E], bias[E], wc[M * K], wg[M * K];
  int32_t ic[M * K], ig[M * K];
  tu_fill(lg, M * E, 7);
  tu_fill(bias, E, 8);
  moe_weight BI = {bias, MOE_F32, 1, E};
  for (int i = 0; i < M * K; i++) wg[i] = NAN, ig[i] = -1; /* outputs start as garbage */
  float *dlg = up(lg, sizeof lg), *dbias = up(bias, sizeof bias), *dw = up(wg, sizeof wg);
  int32_t *di = up(ig, sizeof ig);
  moe_weight DBI = {dbias, MOE_F32, 1, E};
  ck_assert(moe_backend_router_topk(g_cpu.ops, g_cpu.be, ic, wc, lg, M, E, K, true, &BI, &err) ==
            MOE_OK);
  ck_assert(moe_backend_router_topk(g_gpu.ops, g_gpu.be, di, dw, dlg, M, E, K, true, &DBI,
                                    &err) == MOE_OK);
  down(ig, di, sizeof ig);
  down(wg, dw, sizeof wg);
  ck_assert_int_eq(memcmp(ic, ig, sizeof ic), 0);
  ck_assert(rel_err(wg, wc, M * K) < 1e-5);
  /* embed (bf16 table), gather, scatter-add with sigmoid */
  uint16_t tab[10 * H];
  float tf[10 * H];
  tu_fill(tf, 10 * H, 9);
  moe_convert_from_f32(tab, MOE_BF16, tf, 10 * H);
  int32_t ids[M] = {3, 0, 9, 3, 1, 2};
  void *dtab = up(tab, sizeof tab);
  int32_t *dids = up(ids, sizeof ids);
  moe_weight T = {tab, MOE_BF16, 10, H}, DT = {dtab, MOE_BF16, 10, H};
  ck_assert(g_cpu.ops->embed(g_cpu.be, yc, &T, ids, M, &err) == MOE_OK);
  ck_assert(g_gpu.ops->embed(g_gpu.be, dy, &DT, dids, M, &err) == MOE_OK);
  down(yg, dy, sizeof yg);
  ck_assert_int_eq(memcmp(yc, yg, sizeof yc), 0);
  int32_t rows[3] = {4, 1, 2};
  float sc[3] = {0.5f, -2.0f, 1.5f};
  int32_t *drows = up(rows, sizeof rows);
  float *dsc = up(sc, sizeof sc);
  ck_assert(g_cpu.ops->gather_rows(g_cpu.be, yc, x, rows, 3, H, &err) == MOE_OK);
  ck_assert(g_gpu.ops->gather_rows(g_gpu.be, dy, dx, drows, 3, H, &err) == MOE_OK);
  down(yg, dy, 3 * H * 4);
  ck_assert_int_eq(memcmp(yc, yg, 3 * H * 4), 0);
  float acc_c[M * H], acc_g[M * H];
  memcpy(acc_c, u, sizeof u);
  float *dacc = up(u, sizeof u);
  ck_assert(g_cpu.ops->scatter_add_rows(g_cpu.be, acc_c, x, rows, sc, 1, true, 3, H, &err) == MOE_OK);
  ck_assert(g_gpu.ops->scatter_add_rows(g_gpu.be, dacc, dx, drows, dsc, 1, true, 3, H, &err) == MOE_OK);
  down(acc_g, dacc, sizeof acc_g);
  ck_assert(rel_err(acc_g, acc_c, M * H) < 1e-5);
  void *frees[] = {dx, dy, dg, dpos, du, dlg, dbias, dw, di, dtab, dids, drows, dsc, dacc};
  for (size_t i = 0; i < sizeof frees / sizeof frees[0]; i++) g_gpu.ops->device_free(g_gpu.be, frees[i]);
}
END_TEST

START_TEST(attention_matches_cpu) {
  const moe_attn_shape s = {2, 3, 4, 16, 4, 2, 16};
  const size_t cache = 2 * 2 * 16 * 16, qn = 6 * 4 * 16, kn = 6 * 2 * 16;
  float *kc = calloc(cache, 4), *vc = calloc(cache, 4), *q = malloc(qn * 4), *k = malloc(kn * 4),
        *v = malloc(kn * 4), *oc = malloc(qn * 4), *og = malloc(qn * 4);
  tu_fill(kc, cache, 10);
  tu_fill(vc, cache, 11);
  tu_fill(q, qn, 12);
  tu_fill(k, kn, 13);
  tu_fill(v, kn, 14);
  float *dkc = up(kc, cache * 4), *dvc = up(vc, cache * 4), *dq = up(q, qn * 4), *dk = up(k, kn * 4),
        *dv = up(v, kn * 4), *dout = up(q, qn * 4);
  moe_error err = {0};
  ck_assert(g_cpu.ops->kv_store(g_cpu.be, kc, vc, k, v, &s, &err) == MOE_OK);
  ck_assert(moe_backend_attention(g_cpu.ops, g_cpu.be, oc, q, kc, vc, &s, &err) == MOE_OK);
  ck_assert(g_gpu.ops->kv_store(g_gpu.be, dkc, dvc, dk, dv, &s, &err) == MOE_OK);
  ck_assert(moe_backend_attention(g_gpu.ops, g_gpu.be, dout, dq, dkc, dvc, &s, &err) == MOE_OK);
  down(og, dout, qn * 4);
  ck_assert_msg(rel_err(og, oc, qn) < 1e-5, "attention %g", rel_err(og, oc, qn));
  void *frees[] = {dkc, dvc, dq, dk, dv, dout};
  for (int i = 0; i < 6; i++) g_gpu.ops->device_free(g_gpu.be, frees[i]);
  free(kc); free(vc); free(q); free(k); free(v); free(oc); free(og);
}
END_TEST

/* Generates with a backend; logits of every generated step. */
static void gen(moe_device *dev, moe_model *m, const moe_policy *pol, moe_routing r, int B, int P,
                int N, int32_t *tokens, float *logits, size_t *peak, size_t *plan) {
  moe_engine *e = NULL;
  moe_error err = {0};
  moe_engine_options eo = {.max_batch = B, .max_seq = P + N, .policy = pol, .routing = r};
  size_t before = dev->mem.current_total;
  moe_device_reset_peak(dev);
  ck_assert_msg(moe_engine_create(&e, m, dev, &eo, &err) == MOE_OK, "%s", err.msg);
  int32_t *ids = malloc((size_t)B * P * 4);
  moe_rng rng;
  moe_rng_seed(&rng, 3, 0);
  for (int i = 0; i < B * P; i++) ids[i] = (int32_t)(moe_rng_next(&rng) % (uint64_t)moe_model_config(m)->vocab);
  moe_gen_stats gs = {.step_logits = logits};
  ck_assert_msg(moe_engine_generate(e, ids, B, P, N, tokens, NULL, &gs, &err) == MOE_OK, "%s", err.msg);
  if (peak) {
    moe_run_stats rs;
    moe_engine_stats(e, &rs);
    size_t cats[MOE_MEM_CATEGORIES];
    moe_engine_plan_memory(m, dev, &eo, rs.slots, cats, plan);
    *peak = dev->mem.peak_total - before;
    if (dev->ops->device_used)
      printf("%s: accounted %zu bytes, driver reports %zu bytes in use\n", pol ? pol->name : "gpu-only",
             dev->mem.current_total, dev->ops->device_used(dev->be));
  }
  free(ids);
  moe_engine_free(e);
}

START_TEST(fixture_models_match_cpu) {
  const char *names[] = {"mixtral-tiny",    "qwen2moe-tiny",   "switch-tiny",
                         "switch-tiny-untied", "qwen3moe-tiny", "olmoe-tiny",
                         "deepseekv2-tiny", "deepseekv3-tiny", "deepseekv3-plain"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/%s", MOE_SOURCE_DIR, names[i]);
    moe_model *m = NULL;
    moe_error err = {0};
    ck_assert(moe_model_load(&m, dir, NULL, &err) == MOE_OK);
    const int B = 2, P = 9, N = 16, V = moe_model_config(m)->vocab;
    int32_t tc[32], tg[32];
    float *lc = malloc((size_t)N * B * V * 4), *lg = malloc((size_t)N * B * V * 4);
    gen(&g_cpu, m, NULL, MOE_ROUTING_CONVENTIONAL, B, P, N, tc, lc, NULL, NULL);
    gen(&g_gpu, m, NULL, MOE_ROUTING_CONVENTIONAL, B, P, N, tg, lg, NULL, NULL);
    float mx = 0, d = 0;
    for (size_t j = 0; j < (size_t)N * B * V; j++) mx = fmaxf(mx, fabsf(lc[j])), d = fmaxf(d, fabsf(lc[j] - lg[j]));
    printf("%s: cuda vs cpu max |logit diff| %.3g (max |logit| %.3g)\n", names[i], d, mx);
    ck_assert_msg(d <= 1e-4f * mx, "%s: %g", names[i], d);
    ck_assert_int_eq(memcmp(tc, tg, (size_t)B * N * 4), 0);
    free(lc);
    free(lg);
    moe_model_free(m);
  }
}
END_TEST

/* The bit-identity cases' model, by loop index: 0 Mixtral; 1 Switch
 * (encoder-decoder, both stacks offloaded); 2 DeepSeek-V3 (latent
 * attention, grouped routing); bf16 synthetic weights. */
static moe_model *loop_model(int i, moe_config *c) {
  moe_error err = {0};
  const char *cfgs[] = {MOE_SOURCE_DIR "/tests/fixtures/mixtral-tiny/config.json",
                        MOE_SOURCE_DIR "/tests/fixtures/switch-tiny/config.json",
                        MOE_SOURCE_DIR "/tests/fixtures/deepseekv3-tiny/config.json"};
  ck_assert(moe_config_load(c, cfgs[i], &err) == MOE_OK);
  moe_model *m = NULL;
  moe_synth_options so = {MOE_BF16, 9, 0.5, true};
  ck_assert(moe_model_synthetic(&m, c, &so, &err) == MOE_OK);
  return m;
}

START_TEST(policies_bit_identical_on_gpu) {
  moe_config c;
  moe_model *m = loop_model(_i, &c);
  const int B = 2, P = 8, N = 8, V = c.vocab;
  int32_t tref[16], t[16];
  float *lref = malloc((size_t)N * B * V * 4), *l = malloc((size_t)N * B * V * 4);
  size_t peak, plan;
  gen(&g_gpu, m, moe_policy_find("gpu-only"), MOE_ROUTING_CONVENTIONAL, B, P, N, tref, lref, &peak, &plan);
  ck_assert_uint_eq(peak, plan);
  const char *names[] = {"ondemand", "prefetch-all", "pregated"};
  for (int i = 0; i < 3; i++) {
    gen(&g_gpu, m, moe_policy_find(names[i]), MOE_ROUTING_CONVENTIONAL, B, P, N, t, l, &peak, &plan);
    ck_assert_msg(peak == plan, "%s: peak %zu plan %zu", names[i], peak, plan);
    ck_assert_msg(memcmp(l, lref, (size_t)N * B * V * 4) == 0, "%s: logits differ", names[i]);
    ck_assert_int_eq(memcmp(t, tref, sizeof t), 0);
  }
  free(lref);
  free(l);
  moe_model_free(m);
}
END_TEST

/* Graph mode (MOE_CUDA_GRAPHS=1) runs the same kernels with the same
 * arguments: every policy's logits are the plain mode's bit for bit, with
 * copies in issue order and overtaking (MOE_CUDA_OVERTAKE=1).  Loop: the
 * three models of loop_model. */
START_TEST(graph_mode_bit_identical_on_gpu) {
  moe_config c;
  moe_error err = {0};
  moe_model *m = loop_model(_i, &c);
  const int B = 2, P = 8, N = 8, V = c.vocab;
  int32_t tref[16], t[16];
  float *lref = malloc((size_t)N * B * V * 4), *l = malloc((size_t)N * B * V * 4);
  gen(&g_gpu, m, moe_policy_find("gpu-only"), MOE_ROUTING_CONVENTIONAL, B, P, N, tref, lref, NULL,
      NULL);
  const char *names[] = {"gpu-only", "ondemand", "prefetch-all", "pregated"};
  for (int overtake = 0; overtake < 2; overtake++) {
    char line[600];
    (void)moe_cuda_graph_summary(line, sizeof line);
    const unsigned long before = strtoul(line, NULL, 10); /* launched so far ("" before any) */
    setenv("MOE_CUDA_GRAPHS", "1", 1);
    setenv("MOE_CUDA_OVERTAKE", overtake ? "1" : "0", 1);
    moe_device dev;
    const moe_status st = moe_device_open(&dev, "cuda", NULL, &err);
    unsetenv("MOE_CUDA_GRAPHS");
    unsetenv("MOE_CUDA_OVERTAKE");
    ck_assert_msg(st == MOE_OK, "%s", err.msg);
    ck_assert_msg(strstr(dev.ops->describe(dev.be), "CUDA graphs") != NULL, "%s",
                  dev.ops->describe(dev.be));
    for (int i = 0; i < 4; i++) {
      size_t peak, plan;
      gen(&dev, m, moe_policy_find(names[i]), MOE_ROUTING_CONVENTIONAL, B, P, N, t, l, &peak, &plan);
      ck_assert_msg(peak == plan, "%s: peak %zu plan %zu", names[i], peak, plan);
      ck_assert_msg(memcmp(l, lref, (size_t)N * B * V * 4) == 0, "%s (graphs, overtake %d): logits differ",
                    names[i], overtake);
      ck_assert_int_eq(memcmp(t, tref, sizeof t), 0);
    }
    moe_error serr = {0};
    ck_assert_msg(dev.ops->synchronize(dev.be, &serr) == MOE_OK, "%s", serr.msg);
    moe_device_close(&dev);
    ck_assert_uint_gt(moe_cuda_graph_summary(line, sizeof line), 0); /* graphs did run */
    printf("graph mode (overtake %d, totals so far): %s\n", overtake, line);
    ck_assert_msg(strtoul(line, NULL, 10) > before, "no graph launched: %s", line);
  }
  free(lref);
  free(l);
  moe_model_free(m);
}
END_TEST

int main(void) {
  moe_device probe;
  moe_error err = {0};
  moe_status st = moe_device_open(&probe, "cuda", NULL, &err);
  if (st != MOE_OK) {
    printf("skipping: %s\n", err.msg);
    return 77;
  }
  moe_device_close(&probe);
  Suite *s = suite_create("cuda");
  TCase *tc = tcase_create("vs-cpu");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, matmul_matches_cpu);
  tcase_add_test(tc, pointwise_ops_match_cpu);
  tcase_add_test(tc, attention_matches_cpu);
  tcase_add_test(tc, fixture_models_match_cpu);
  tcase_add_loop_test(tc, policies_bit_identical_on_gpu, 0, 3);
  tcase_add_loop_test(tc, graph_mode_bit_identical_on_gpu, 0, 3);
  suite_add_tcase(s, tc);
  /* in this process: the probe above initialised CUDA, which a forked
   * child cannot use (ctest sets CK_FORK=no too) */
  return tu_run_suite_nofork(s);
}
