/* Every cpu backend op against a naive double-precision reference on random
 * data.  Tolerances are relative to the largest reference value: 2e-6 for
 * elementwise ops, 1e-5 for reductions (gemm, norm, attention).  Weights in
 * f16/bf16 are compared against the reference on the same rounded weights:
 * these tests check kernels, not quantisation. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moe/device.h"
#include "moe/backend.h"
#include "testutil.h"

static moe_device g_dev;
static void setup(void) {
  moe_error err = {0};
  ck_assert_msg(moe_device_open(&g_dev, "cpu", NULL, &err) == MOE_OK, "%s", err.msg);
}
static void teardown(void) { moe_device_close(&g_dev); }
#define OPS g_dev.ops
#define BE g_dev.be

/* max |got - want| / max(|want|, tiny) */
static double rel_err(const float *got, const double *want, size_t n) {
  double mx = 1e-30, d = 0;
  for (size_t i = 0; i < n; i++) {
    mx = fmax(mx, fabs(want[i]));
    d = fmax(d, fabs((double)got[i] - want[i]));
    if (isnan(got[i])) return INFINITY;
  }
  return d / mx;
}

/* Weights in dtype dt, plus their exact values as doubles. */
static void *make_weight(moe_dtype dt, size_t n, uint64_t seed, double *exact) {
  float *f = malloc(n * sizeof *f);
  tu_fill(f, n, seed);
  void *w = malloc(n * moe_dtype_size(dt));
  moe_convert_from_f32(w, dt, f, n);
  moe_convert_to_f32(f, w, dt, n);
  for (size_t i = 0; i < n; i++) exact[i] = f[i];
  free(f);
  return w;
}

static void check_matmul(moe_dtype dt, size_t m, size_t rows, size_t cols, bool bias) {
  double *we = malloc(rows * cols * sizeof *we), *be = malloc(rows * sizeof *be);
  void *w = make_weight(dt, rows * cols, 11, we);
  void *b = make_weight(dt, rows, 12, be);
  float *x = malloc(m * cols * sizeof *x), *y = malloc(m * rows * sizeof *y);
  double *ref = malloc(m * rows * sizeof *ref);
  tu_fill(x, m * cols, 13);
  for (size_t i = 0; i < m; i++)
    for (size_t r = 0; r < rows; r++) {
      double s = bias ? be[r] : 0.0;
      for (size_t k = 0; k < cols; k++) s += (double)x[i * cols + k] * we[r * cols + k];
      ref[i * rows + r] = s;
    }
  moe_weight W = {w, dt, rows, cols}, B = {bias ? b : NULL, dt, 1, rows};
  moe_error err = {0};
  ck_assert(OPS->matmul(BE, y, x, m, &W, &B, &err) == MOE_OK);
  double e = rel_err(y, ref, m * rows);
  ck_assert_msg(e < 1e-5, "matmul %s m=%zu %zux%zu bias=%d: rel err %g", moe_dtype_name(dt), m,
                rows, cols, bias, e);
  free(we); free(be); free(w); free(b); free(x); free(y); free(ref);
}

START_TEST(matmul_all_dtypes) {
  const moe_dtype dts[] = {MOE_F32, MOE_F16, MOE_BF16};
  for (int d = 0; d < 3; d++) {
    check_matmul(dts[d], 1, 130, 96, false);  /* gemv path, rows not a band multiple */
    check_matmul(dts[d], 1, 64, 33, true);
    check_matmul(dts[d], 7, 200, 64, true);   /* gemm path */
    check_matmul(dts[d], 32, 64, 256, false);
    check_matmul(dts[d], 2, 70, 40, true);    /* two gemv passes */
    check_matmul(dts[d], 80, 130, 48, true);  /* plain sgemm, banded when converted */
  }
}
END_TEST

START_TEST(rmsnorm_matches) {
  const size_t m = 5, n = 96;
  double ge[96];
  void *g = make_weight(MOE_BF16, n, 3, ge);
  float x[5 * 96], y[5 * 96];
  double ref[5 * 96];
  tu_fill(x, m * n, 4);
  for (size_t i = 0; i < m; i++) {
    double ss = 0;
    for (size_t j = 0; j < n; j++) ss += (double)x[i * n + j] * x[i * n + j];
    double inv = 1.0 / sqrt(ss / n + 1e-5);
    for (size_t j = 0; j < n; j++) ref[i * n + j] = x[i * n + j] * inv * ge[j];
  }
  moe_weight G = {g, MOE_BF16, 1, n};
  moe_error err = {0};
  ck_assert(OPS->rmsnorm(BE, y, x, m, &G, 1e-5f, &err) == MOE_OK);
  ck_assert_msg(rel_err(y, ref, m * n) < 1e-5, "rmsnorm err %g", rel_err(y, ref, m * n));
  free(g);
}
END_TEST

START_TEST(rope_matches) {
  const int m = 6, heads = 3, hd = 16;
  float x[6 * 3 * 16];
  double ref[6 * 3 * 16];
  int32_t pos[6] = {0, 1, 2, 17, 100, 511};
  tu_fill(x, sizeof x / sizeof x[0], 5);
  for (int t = 0; t < m; t++)
    for (int h = 0; h < heads; h++)
      for (int i = 0; i < hd / 2; i++) {
        double f = pos[t] / pow(10000.0, 2.0 * i / hd);
        const float *v = x + (t * heads + h) * hd;
        double a = v[i], b = v[i + hd / 2];
        ref[(t * heads + h) * hd + i] = a * cos(f) - b * sin(f);
        ref[(t * heads + h) * hd + i + hd / 2] = b * cos(f) + a * sin(f);
      }
  moe_error err = {0};
  ck_assert(moe_backend_rope(OPS, BE, x, m, pos, heads, hd, 10000.0f, NULL, &err) == MOE_OK);
  /* angles up to ~500 rad in f32 lose ~3e-5 absolute: the tolerance says so */
  ck_assert_msg(rel_err(x, ref, sizeof x / sizeof x[0]) < 1e-4, "rope err %g",
                rel_err(x, ref, sizeof x / sizeof x[0]));
}
END_TEST

START_TEST(attention_matches) {
  /* 2 sequences, 3 new tokens at positions 4..6 over a cache that already
   * holds positions 0..3; 4 query heads sharing 2 kv heads. */
  const moe_attn_shape s = {2, 3, 4, 8, 4, 2, 8};
  const int hd = 8, kvd = 2 * hd, qd = 4 * hd;
  const size_t cache_n = 2 * 2 * 8 * 8;
  float *kc = calloc(cache_n, 4), *vc = calloc(cache_n, 4);
  float k[6 * 16], v[6 * 16], q[6 * 32], out[6 * 32];
  double ref[6 * 32];
  /* earlier positions, written directly */
  tu_fill(kc, cache_n, 6);
  tu_fill(vc, cache_n, 7);
  tu_fill(k, sizeof k / 4, 8);
  tu_fill(v, sizeof v / 4, 9);
  tu_fill(q, sizeof q / 4, 10);
  moe_error err = {0};
  ck_assert(OPS->kv_store(BE, kc, vc, k, v, &s, &err) == MOE_OK);
  for (int b = 0; b < 2; b++)
    for (int t = 0; t < 3; t++)
      for (int kh = 0; kh < 2; kh++)
        for (int i = 0; i < hd; i++) {
          size_t ci = (((size_t)b * 2 + kh) * 8 + 4 + t) * hd + i;
          ck_assert(kc[ci] == k[(b * 3 + t) * kvd + kh * hd + i]);
          ck_assert(vc[ci] == v[(b * 3 + t) * kvd + kh * hd + i]);
        }
  ck_assert(moe_backend_attention(OPS, BE, out, q, kc, vc, &s, &err) == MOE_OK);
  for (int b = 0; b < 2; b++)
    for (int t = 0; t < 3; t++)
      for (int h = 0; h < 4; h++) {
        const int p = 4 + t, kh = h / 2;
        double sc[8], mx = -1e300, sum = 0;
        const float *qh = q + (b * 3 + t) * qd + h * hd;
        for (int j = 0; j <= p; j++) {
          double d = 0;
          for (int i = 0; i < hd; i++) d += (double)qh[i] * kc[(((size_t)b * 2 + kh) * 8 + j) * hd + i];
          sc[j] = d / sqrt((double)hd);
          mx = fmax(mx, sc[j]);
        }
        for (int j = 0; j <= p; j++) sum += (sc[j] = exp(sc[j] - mx));
        for (int i = 0; i < hd; i++) {
          double o = 0;
          for (int j = 0; j <= p; j++) o += sc[j] / sum * vc[(((size_t)b * 2 + kh) * 8 + j) * hd + i];
          ref[(b * 3 + t) * qd + h * hd + i] = o;
        }
      }
  ck_assert_msg(rel_err(out, ref, 6 * 32) < 1e-5, "attention err %g", rel_err(out, ref, 6 * 32));
  free(kc);
  free(vc);
}
END_TEST

START_TEST(router_topk_matches) {
  const int m = 9, n = 8, k = 3;
  float logits[9 * 8], w[9 * 3];
  int32_t idx[9 * 3];
  tu_fill(logits, m * n, 14);
  /* row 0: a tie between experts 2 and 5 for the top spot -> lower index first */
  for (int e = 0; e < n; e++) logits[e] = (float)e * 0.01f;
  logits[2] = logits[5] = 1.0f;
  float biasf[8];
  tu_fill(biasf, 8, 15);
  moe_weight bias = {biasf, MOE_F32, 1, 8};
  for (int renorm = 0; renorm < 2; renorm++)
    for (int use_bias = 0; use_bias < 2; use_bias++) {
      moe_error err = {0};
      ck_assert(moe_backend_router_topk(OPS, BE, idx, w, logits, m, n, k, renorm,
                                        use_bias ? &bias : NULL, &err) == MOE_OK);
      for (int t = 0; t < m; t++) {
        double p[8], mx = -1e300, s = 0;
        for (int e = 0; e < n; e++) mx = fmax(mx, p[e] = logits[t * n + e] + (use_bias ? biasf[e] : 0));
        for (int e = 0; e < n; e++) s += (p[e] = exp(p[e] - mx));
        for (int e = 0; e < n; e++) p[e] /= s;
        bool used[8] = {0};
        double sel = 0, want_w[3];
        int want_i[3];
        for (int j = 0; j < k; j++) {
          int best = -1;
          for (int e = 0; e < n; e++)
            if (!used[e] && (best < 0 || p[e] > p[best])) best = e;
          used[best] = true;
          want_i[j] = best;
          sel += want_w[j] = p[best];
        }
        for (int j = 0; j < k; j++) {
          ck_assert_int_eq(idx[t * k + j], want_i[j]);
          double ww = renorm ? want_w[j] / sel : want_w[j];
          ck_assert_msg(fabs(w[t * k + j] - ww) < 2e-6, "weight %g vs %g", w[t * k + j], ww);
        }
      }
      if (!use_bias) {
        ck_assert_int_eq(idx[0], 2);
        ck_assert_int_eq(idx[1], 5);
      }
    }
}
END_TEST

START_TEST(elementwise_and_rows) {
  enum { N = 300, DIM = 12 };
  float g[N], u[N], y[N], a[N];
  double ref[N];
  tu_fill(g, N, 16);
  tu_fill(u, N, 17);
  for (int i = 0; i < N; i++) g[i] *= 8; /* reach both tails of silu */
  for (int i = 0; i < N; i++) ref[i] = g[i] / (1 + exp(-(double)g[i])) * u[i];
  moe_error err = {0};
  ck_assert(OPS->swiglu(BE, y, g, u, N, &err) == MOE_OK);
  ck_assert_msg(rel_err(y, ref, N) < 2e-6, "swiglu err %g", rel_err(y, ref, N));
  memcpy(a, g, sizeof a);
  for (int i = 0; i < N; i++) ref[i] = (double)g[i] + u[i];
  ck_assert(OPS->add(BE, a, u, N, &err) == MOE_OK);
  ck_assert(rel_err(a, ref, N) < 2e-6);

  /* embedding from a bf16 table */
  double te[10 * DIM];
  void *table = make_weight(MOE_BF16, 10 * DIM, 18, te);
  moe_weight T = {table, MOE_BF16, 10, DIM};
  int32_t ids[4] = {3, 0, 9, 3};
  float emb[4 * DIM];
  ck_assert(OPS->embed(BE, emb, &T, ids, 4, &err) == MOE_OK);
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < DIM; j++) ck_assert(emb[i * DIM + j] == (float)te[ids[i] * DIM + j]);
  int32_t bad = 10;
  ck_assert_int_eq(OPS->embed(BE, emb, &T, &bad, 1, &err), MOE_ERR_INVALID);
  free(table);

  /* gather, then scatter-add with plain and sigmoid scales */
  float src[5 * DIM], gath[3 * DIM], dst[5 * DIM], dst0[5 * DIM], sc[3] = {0.5f, -2.0f, 1.5f};
  int32_t rows[3] = {4, 1, 4};
  tu_fill(src, 5 * DIM, 19);
  ck_assert(OPS->gather_rows(BE, gath, src, rows, 3, DIM, &err) == MOE_OK);
  for (int i = 0; i < 3; i++) ck_assert_int_eq(memcmp(gath + i * DIM, src + rows[i] * DIM, DIM * 4), 0);
  for (int sig = 0; sig < 2; sig++) {
    tu_fill(dst0, 5 * DIM, 20);
    memcpy(dst, dst0, sizeof dst);
    double r[5 * DIM];
    for (int i = 0; i < 5 * DIM; i++) r[i] = dst0[i];
    for (int i = 0; i < 3; i++) {
      double s = sig ? 1 / (1 + exp(-(double)sc[i])) : sc[i];
      for (int j = 0; j < DIM; j++) r[rows[i] * DIM + j] += s * gath[i * DIM + j];
    }
    ck_assert(OPS->scatter_add_rows(BE, dst, gath, rows, sc, 1, sig, 3, DIM, &err) == MOE_OK);
    ck_assert_msg(rel_err(dst, r, 5 * DIM) < 2e-6, "scatter err %g", rel_err(dst, r, 5 * DIM));
  }
}
END_TEST

START_TEST(copies_and_events) {
  moe_error err = {0};
  void *d = NULL;
  moe_event *ev = NULL, *ev2 = NULL;
  ck_assert(OPS->device_alloc(BE, 1000, &d, &err) == MOE_OK);
  ck_assert(OPS->event_create(BE, &ev, &err) == MOE_OK);
  ck_assert(OPS->event_create(BE, &ev2, &err) == MOE_OK);
  ck_assert(OPS->event_done(BE, ev)); /* never used: complete */
  char src[1000], src2[1000], back[1000];
  for (int i = 0; i < 1000; i++) src[i] = (char)(i * 7), src2[i] = (char)(i * 3 + 1);
  /* two copies into the same place run in order: the second one's bytes win */
  ck_assert(OPS->copy_h2d_async(BE, d, src, 1000, ev, &err) == MOE_OK);
  ck_assert(OPS->copy_wait(BE, ev2, &err) == MOE_OK);
  ck_assert(OPS->copy_h2d_async(BE, d, src2, 1000, ev2, &err) == MOE_OK);
  ck_assert(OPS->compute_wait(BE, ev2, &err) == MOE_OK);
  ck_assert(OPS->event_done(BE, ev));
  ck_assert(OPS->download(BE, back, d, 1000, &err) == MOE_OK);
  ck_assert_int_eq(memcmp(src2, back, 1000), 0);
  ck_assert(OPS->synchronize(BE, &err) == MOE_OK);
  OPS->event_destroy(BE, ev);
  OPS->event_destroy(BE, ev2);
  OPS->device_free(BE, d);
}
END_TEST

/* A capped link paces copies: 16 MiB at 0.5 GB/s takes >= 33 ms, measured
 * from issue to the event; the copy runs on its own thread, so issuing it
 * returns at once. */
START_TEST(link_cap_paces_copies) {
  moe_device dev;
  moe_error err = {0};
  moe_backend_options bo = {.link_gbps = 0.5};
  ck_assert(moe_device_open(&dev, "cpu", &bo, &err) == MOE_OK);
  const size_t n = (size_t)16 << 20;
  char *src = malloc(n);
  memset(src, 5, n);
  void *d = NULL;
  moe_event *ev = NULL;
  ck_assert(dev.ops->device_alloc(dev.be, n, &d, &err) == MOE_OK);
  ck_assert(dev.ops->event_create(dev.be, &ev, &err) == MOE_OK);
  struct timespec t0, t1, t2;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  ck_assert(dev.ops->copy_h2d_async(dev.be, d, src, n, ev, &err) == MOE_OK);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  ck_assert(!dev.ops->event_done(dev.be, ev));
  ck_assert(dev.ops->compute_wait(dev.be, ev, &err) == MOE_OK);
  clock_gettime(CLOCK_MONOTONIC, &t2);
  double issue = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  double total = (t2.tv_sec - t0.tv_sec) + 1e-9 * (t2.tv_nsec - t0.tv_nsec);
  ck_assert_msg(total >= (double)n / 0.5e9 * 0.98, "16 MiB at 0.5 GB/s took %.4f s", total);
  ck_assert_msg(issue < 0.5 * total, "issuing took %.4f s of %.4f", issue, total);
  ck_assert_int_eq(((char *)d)[n - 1], 5);
  dev.ops->event_destroy(dev.be, ev);
  dev.ops->device_free(dev.be, d);
  free(src);
  moe_device_close(&dev);
}
END_TEST

/* The allocator front counts by category, tracks peaks and refuses past the
 * budget with needed, in-use and budget in the message. */
START_TEST(device_budget_and_accounting) {
  moe_device dev;
  moe_error err = {0};
  moe_backend_options bo = {.device_budget = 10000};
  ck_assert(moe_device_open(&dev, "cpu", &bo, &err) == MOE_OK);
  ck_assert_uint_eq(dev.mem.budget, 10000);
  void *a = NULL, *b = NULL, *c = NULL;
  ck_assert(moe_device_alloc(&dev, MOE_MEM_KV, 4000, "a", &a, &err) == MOE_OK);
  ck_assert(moe_device_alloc(&dev, MOE_MEM_EXPERTS, 5000, "b", &b, &err) == MOE_OK);
  ck_assert_int_eq(moe_device_alloc(&dev, MOE_MEM_DENSE, 1001, "the big one", &c, &err), MOE_ERR_OOM);
  ck_assert_ptr_null(c);
  ck_assert_msg(strstr(err.msg, "the big one") && strstr(err.msg, "need 1001 bytes") &&
                    strstr(err.msg, "9000 bytes") && strstr(err.msg, "budget 10000 bytes"),
                "%s", err.msg);
  ck_assert_uint_eq(dev.mem.current_total, 9000);
  ck_assert_uint_eq(dev.mem.peak_total, 9000);
  moe_device_free(&dev, a);
  ck_assert_uint_eq(dev.mem.current_total, 5000);
  ck_assert_uint_eq(dev.mem.current[MOE_MEM_KV], 0);
  ck_assert_uint_eq(dev.mem.peak[MOE_MEM_KV], 4000);
  ck_assert_uint_eq(dev.mem.at_peak[MOE_MEM_EXPERTS], 5000);
  moe_error_clear(&err);
  ck_assert(moe_device_alloc(&dev, MOE_MEM_DENSE, 5000, "c", &c, &err) == MOE_OK);
  ck_assert_uint_eq(dev.mem.peak_total, 10000);
  ck_assert_uint_eq(dev.mem.at_peak[MOE_MEM_DENSE], 5000);
  ck_assert_uint_eq(dev.mem.at_peak[MOE_MEM_KV], 0);
  moe_device_close(&dev); /* frees b and c */
}
END_TEST

START_TEST(registry_refuses_bad_tables) {
  moe_backend_ops bad = *moe_backend_find("cpu");
  moe_error err = {0};
  bad.abi_version = 99;
  ck_assert_int_eq(moe_backend_validate(&bad, &err), MOE_ERR_UNSUPPORTED);
  ck_assert_ptr_nonnull(strstr(err.msg, "99"));
  bad = *moe_backend_find("cpu");
  bad.attention_ex = NULL; /* and no legacy attention either */
  moe_error_clear(&err);
  ck_assert_int_eq(moe_backend_validate(&bad, &err), MOE_ERR_INVALID);
  ck_assert_ptr_nonnull(strstr(err.msg, "attention"));
  moe_device dev;
  moe_error_clear(&err);
  ck_assert_int_eq(moe_device_open(&dev, "tpu", NULL, &err), MOE_ERR_INVALID);
  ck_assert_ptr_nonnull(strstr(err.msg, "tpu"));
}
END_TEST

int main(void) {
  Suite *s = suite_create("ops");
  TCase *tc = tcase_create("cpu");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, matmul_all_dtypes);
  tcase_add_test(tc, rmsnorm_matches);
  tcase_add_test(tc, rope_matches);
  tcase_add_test(tc, attention_matches);
  tcase_add_test(tc, router_topk_matches);
  tcase_add_test(tc, elementwise_and_rows);
  tcase_add_test(tc, copies_and_events);
  tcase_add_test(tc, link_cap_paces_copies);
  tcase_add_test(tc, device_budget_and_accounting);
  tcase_add_test(tc, registry_refuses_bad_tables);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
