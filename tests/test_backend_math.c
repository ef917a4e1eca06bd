/* The backend contract's math ops (engine/include/moe/backend.h), each
 * against a plain double-precision reference written here, not against
 * another backend, on every compiled-in backend whose device is present
 * (cpu, cpu with a capped link, cuda on a GPU; see conformance_util.h). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/device.h"
#include "moe/backend.h"
#include "moe/dtype.h"
#include "conformance_util.h"
#include "testutil.h"

/* ---------------------------------------------------------------- math */

static void ref_matmul(double *y, const float *x, size_t m, const float *w, const float *b,
                       size_t n, size_t k, double *mag) {
  for (size_t i = 0; i < m; i++)
    for (size_t r = 0; r < n; r++) {
      double s = 0, a = 0;
      for (size_t j = 0; j < k; j++) {
        s += (double)x[i * k + j] * w[r * k + j];
        a += fabs((double)x[i * k + j] * w[r * k + j]);
      }
      y[i * n + r] = s + (b ? b[r] : 0.0);
      mag[i * n + r] = a;
    }
}

START_TEST(matmul_all_dtypes_and_shapes) {
  /* ragged on purpose: rows not a multiple of 4, columns not of 16, and
   * enough of both (n x k >= 2^16) that the math threads split the rows */
  const size_t n = 37 + (_i ? 1000 : 0), k = 70 + (_i ? 31 : 0);
  const size_t ms[] = {1, 2, 3, 4, 5, 8, 9, 64, 70};
  const moe_dtype dts[] = {MOE_F32, MOE_F16, MOE_BF16};
  float *wv = malloc(n * k * sizeof(float)), *wex = malloc(n * k * sizeof(float));
  float *bv = malloc(n * sizeof(float)), *bex = malloc(n * sizeof(float));
  tu_fill(wv, n * k, 1);
  tu_fill(bv, n, 2);
  for (int d = 0; d < 3; d++) {
    moe_weight w = dev_weight(wv, n, k, dts[d], wex);
    moe_weight b = dev_weight(bv, 1, n, dts[d], bex);
    /* the tolerance the contract states for this dtype */
    const double rel = dts[d] == MOE_F32 ? 1e-5 : dts[d] == MOE_F16 ? 2.0 / 2048 : 2.0 / 256;
    for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
      const size_t m = ms[mi];
      float *x = malloc(m * k * sizeof(float)), *y = malloc(m * n * sizeof(float));
      double *ref = malloc(m * n * sizeof(double)), *mag = malloc(m * n * sizeof(double));
      tu_fill(x, m * k, 10 + m);
      float *dx = dev_f(x, m * k), *dy = dev_f(NULL, m * n);
      for (int with_bias = 0; with_bias < 2; with_bias++) {
        moe_error err = {0};
        ck_assert_msg(OPS->matmul(BE, dy, dx, m, &w, with_bias ? &b : NULL, &err) == MOE_OK, "%s",
                      err.msg);
        down(y, dy, m * n * sizeof(float));
        ref_matmul(ref, x, m, wex, with_bias ? bex : NULL, n, k, mag);
        for (size_t i = 0; i < m * n; i++)
          ck_assert_msg(fabs(y[i] - ref[i]) <= rel * mag[i] + 1e-6,
                        "%s m=%zu bias=%d [%zu]: %g vs %g", moe_dtype_name(dts[d]), m, with_bias,
                        i, (double)y[i], ref[i]);
      }
      OPS->device_free(BE, dx);
      OPS->device_free(BE, dy);
      free(x);
      free(y);
      free(ref);
      free(mag);
    }
    OPS->device_free(BE, (void *)w.data);
    OPS->device_free(BE, (void *)b.data);
  }
  free(wv);
  free(wex);
  free(bv);
  free(bex);
}
END_TEST

/* Weights with subnormals, a large finite value, infinities and NaN: a
 * NaN weight makes its row NaN, an infinity makes it infinite (x > 0
 * everywhere, one infinity per row), subnormals count at their value.
 * One input row and three (the fused paths' two kernels), columns in the
 * vector loop, the eight-wide remainder and the scalar tail. */
START_TEST(matmul_special_weight_values) {
  const size_t n = 9, k = 45, col = 43; /* col: in the scalar tail of every kernel */
  const moe_dtype dts[] = {MOE_F16, MOE_BF16, MOE_F32};
  for (int d = 0; d < 3; d++) {
    const moe_dtype dt = dts[d];
    const size_t es = moe_dtype_size(dt);
    /* the special values in each dtype's bits */
    uint32_t one, sub = 1, big, inf, ninf, nan;
    if (dt == MOE_F16) one = 0x3c00, big = 0x7bff, inf = 0x7c00, ninf = 0xfc00, nan = 0x7e00;
    else if (dt == MOE_BF16) one = 0x3f80, big = 0x7e80, inf = 0x7f80, ninf = 0xff80, nan = 0x7fc0;
    else one = 0x3f800000, big = 0x7e800000, inf = 0x7f800000, ninf = 0xff800000, nan = 0x7fc00000;
    uint32_t *bits = malloc(n * k * sizeof *bits);
    for (size_t i = 0; i < n * k; i++) bits[i] = one;
    bits[0 * k + 3] = nan;
    bits[1 * k + col] = nan;
    bits[2 * k + 5] = inf;
    bits[3 * k + col] = ninf;
    for (size_t j = 0; j < k; j++) bits[4 * k + j] = sub;
    bits[5 * k + 8] = big; /* a large value whose products fit f32 */
    bits[6 * k + 36] = ninf; /* in the eight-wide remainder of the f32 kernel */
    bits[7 * k + 20] = nan;
    unsigned char *h = malloc(n * k * es);
    for (size_t i = 0; i < n * k; i++) {
      if (es == 2) {
        const uint16_t v = (uint16_t)bits[i];
        memcpy(h + i * 2, &v, 2);
      } else {
        memcpy(h + i * 4, &bits[i], 4);
      }
    }
    float *wf = malloc(n * k * sizeof *wf);
    moe_convert_to_f32(wf, h, dt, n * k);
    moe_weight w = {dev_bytes(h, n * k * es), dt, n, k};
    const size_t ms[] = {1, 3};
    for (size_t mi = 0; mi < 2; mi++) {
      const size_t m = ms[mi];
      float x[3 * 45], y[3 * 9];
      for (size_t i = 0; i < m * k; i++) x[i] = 0.5f + (float)(i % 7) * 0.25f;
      float *dx = dev_f(x, m * k), *dy = dev_f(NULL, m * n);
      moe_error err = {0};
      ck_assert(OPS->matmul(BE, dy, dx, m, &w, NULL, &err) == MOE_OK);
      down(y, dy, m * n * sizeof(float));
      for (size_t i = 0; i < m; i++)
        for (size_t r = 0; r < n; r++) {
          double ref = 0;
          for (size_t j = 0; j < k; j++) ref += (double)x[i * k + j] * wf[r * k + j];
          const float got = y[i * n + r];
          if (isnan(ref))
            ck_assert_msg(isnan(got), "%s m=%zu row %zu: %g, want NaN", moe_dtype_name(dt), m, r, got);
          else if (isinf(ref))
            ck_assert_msg(got == (float)ref, "%s m=%zu row %zu: %g, want %g", moe_dtype_name(dt), m, r,
                          got, ref);
          else
            ck_assert_msg(fabs(got - ref) <= 1e-5 * fabs(ref) + 1e-30, "%s m=%zu row %zu: %g vs %g",
                          moe_dtype_name(dt), m, r, got, ref);
        }
      OPS->device_free(BE, dx);
      OPS->device_free(BE, dy);
    }
    OPS->device_free(BE, (void *)w.data);
    free(h);
    free(bits);
    free(wf);
  }
}
END_TEST

/* 16-bit weights with activations past f16's range: a backend that
 * rounds activations to 16 bits saturates (never inf), so the output is
 * finite and of the right sign. */
START_TEST(matmul_16bit_activations_saturate) {
  enum { K = 64, N = 8 };
  float x[K], w[N * K], exact[N * K], y[N];
  for (int i = 0; i < K; i++) x[i] = i % 2 ? 1.0e5f : 3.0e5f;
  for (int i = 0; i < N * K; i++) w[i] = 0.5f;
  for (int d = 0; d < 2; d++) {
    const moe_weight W = dev_weight(w, N, K, d ? MOE_BF16 : MOE_F16, exact);
    float *dx = dev_f(x, K), *dy = dev_f(NULL, N);
    OK(OPS->matmul(BE, dy, dx, 1, &W, NULL, &e_));
    down(y, dy, sizeof y);
    for (int j = 0; j < N; j++)
      ck_assert_msg(isfinite(y[j]) && y[j] > 0.0f, "%s: y[%d] = %g", d ? "bf16" : "f16", j,
                    (double)y[j]);
    OPS->device_free(BE, (void *)W.data);
    OPS->device_free(BE, dx);
    OPS->device_free(BE, dy);
  }
}
END_TEST

/* argmax_rows (optional): the sequential scan's index, ties to the lowest,
 * NaN never chosen except at index 0, -inf and wide rows. */
START_TEST(argmax_rows_definition) {
  if (OPS->argmax_rows == NULL) return;
  enum { R = 6, N = 700 };
  static float x[R * N];
  int32_t got[R];
  for (int i = 0; i < R * N; i++) x[i] = (float)((i * 37) % 101) * 0.01f;
  x[0 * N + 650] = 5.0f, x[0 * N + 651] = 5.0f;            /* a tie: the first */
  x[1 * N + 0] = NAN, x[1 * N + 3] = 9.0f;                  /* NaN at 0: stays 0 */
  x[2 * N + 1] = NAN, x[2 * N + 2] = 7.0f, x[2 * N + 5] = NAN; /* NaN elsewhere: skipped */
  for (int i = 0; i < N; i++) x[3 * N + i] = -INFINITY;     /* all -inf: 0 */
  x[4 * N + N - 1] = 3.0f;                                  /* the last element */
  for (int i = 0; i < N; i++) x[5 * N + i] = 1.0f;          /* all equal: 0 */
  float *dx = dev_f(x, R * N);
  int32_t *di = dev_bytes(NULL, sizeof got);
  OK(OPS->argmax_rows(BE, di, dx, R, N, &e_));
  down(got, di, sizeof got);
  for (int r = 0; r < R; r++) {
    int best = 0;
    for (int i = 1; i < N; i++)
      if (x[r * N + i] > x[r * N + best]) best = i;
    ck_assert_msg(got[r] == best, "row %d: %d, the scan gives %d", r, got[r], best);
  }
  OK(OPS->argmax_rows(BE, di, dx, 0, N, &e_)); /* no rows: nothing */
  OPS->device_free(BE, dx);
  OPS->device_free(BE, di);
}
END_TEST

START_TEST(norm_rope_elementwise) {
  moe_error err = {0};
  const size_t m = 3, n = 48;
  float x[3 * 48], g[48], y[3 * 48];
  tu_fill(x, m * n, 3);
  tu_fill(g, n, 4);
  for (size_t i = 0; i < n; i++) g[i] += 1.5f; /* a norm weight that is not all ones */
  float gex[48];
  moe_weight gw = dev_weight(g, 1, n, MOE_BF16, gex);
  float *dx = dev_f(x, m * n), *dy = dev_f(NULL, m * n);
  ck_assert(OPS->rmsnorm(BE, dy, dx, m, &gw, 1e-5f, &err) == MOE_OK);
  down(y, dy, sizeof y);
  for (size_t i = 0; i < m; i++) {
    double ss = 0;
    for (size_t j = 0; j < n; j++) ss += (double)x[i * n + j] * x[i * n + j];
    double inv = 1.0 / sqrt(ss / n + 1e-5);
    for (size_t j = 0; j < n; j++)
      ck_assert_double_eq_tol(y[i * n + j], gex[j] * x[i * n + j] * inv, 1e-5);
  }
  /* rope: 2 tokens at positions 3 and 700, 2 heads of 8 */
  const int heads = 2, hd = 8;
  float q[2 * 16], qr[2 * 16];
  tu_fill(q, 32, 6);
  int32_t pos[2] = {3, 700};
  int32_t *dpos = dev_bytes(pos, sizeof pos);
  float *dq = dev_f(q, 32);
  ck_assert(moe_backend_rope(OPS, BE, dq, 2, dpos, heads, hd, 10000.0f, NULL, &err) == MOE_OK);
  down(qr, dq, sizeof qr);
  for (int t = 0; t < 2; t++)
    for (int h = 0; h < heads; h++)
      for (int i = 0; i < hd / 2; i++) {
        double ang = pos[t] * pow(10000.0, -2.0 * i / hd);
        const float *v = q + (t * heads + h) * hd;
        double a = v[i] * cos(ang) - v[i + hd / 2] * sin(ang);
        double b = v[i + hd / 2] * cos(ang) + v[i] * sin(ang);
        ck_assert_double_eq_tol(qr[(t * heads + h) * hd + i], a, 2e-4);
        ck_assert_double_eq_tol(qr[(t * heads + h) * hd + i + hd / 2], b, 2e-4);
      }
  /* swiglu (aliased output) and add */
  float gate[40], up[40], out[40];
  tu_fill(gate, 40, 7);
  tu_fill(up, 40, 8);
  float *dg = dev_f(gate, 40), *du = dev_f(up, 40);
  ck_assert(OPS->swiglu(BE, dg, dg, du, 40, &err) == MOE_OK);
  down(out, dg, sizeof out);
  for (int i = 0; i < 40; i++)
    ck_assert_double_eq_tol(out[i], gate[i] / (1.0 + exp(-gate[i])) * up[i], 1e-6);
  ck_assert(OPS->add(BE, dg, du, 40, &err) == MOE_OK);
  float sum[40];
  down(sum, dg, sizeof sum);
  for (int i = 0; i < 40; i++) ck_assert_float_eq(sum[i], out[i] + up[i]);
  void *bufs[] = {dx, dy, dpos, dq, dg, du, (void *)gw.data};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) OPS->device_free(BE, bufs[i]);
}
END_TEST

/* Attention over a context longer than any one tile a kernel might use,
 * grouped-query heads, a prefill chunk at pos0 > 0. */
START_TEST(kv_store_and_attention) {
  moe_error err = {0};
  const int S = 2, max_seq = 700, KVH = 2, NH = 4, HD = 16;
  const int ctx = 650, n_new = 3; /* tokens 0..ctx-1 stored first, then 3 more */
  const size_t cache = (size_t)S * KVH * max_seq * HD;
  float *kc = dev_f(NULL, cache), *vc = dev_f(NULL, cache);
  float *kh = malloc((size_t)S * (ctx + n_new) * KVH * HD * sizeof(float));
  float *vh = malloc((size_t)S * (ctx + n_new) * KVH * HD * sizeof(float));
  tu_fill(kh, (size_t)S * (ctx + n_new) * KVH * HD, 11);
  tu_fill(vh, (size_t)S * (ctx + n_new) * KVH * HD, 12);
  /* store positions 0..ctx-1 and then ctx..ctx+2, sequence-major rows */
  for (int phase = 0; phase < 2; phase++) {
    const int p0 = phase ? ctx : 0, nn = phase ? n_new : ctx;
    const size_t row = (size_t)KVH * HD;
    float *k = malloc((size_t)S * nn * row * sizeof(float)), *v = malloc((size_t)S * nn * row * sizeof(float));
    for (int b = 0; b < S; b++)
      for (int t = 0; t < nn; t++) {
        memcpy(k + ((size_t)b * nn + t) * row, kh + ((size_t)b * (ctx + n_new) + p0 + t) * row, row * sizeof(float));
        memcpy(v + ((size_t)b * nn + t) * row, vh + ((size_t)b * (ctx + n_new) + p0 + t) * row, row * sizeof(float));
      }
    float *dk = dev_f(k, (size_t)S * nn * row), *dv = dev_f(v, (size_t)S * nn * row);
    moe_attn_shape sh = {S, nn, p0, max_seq, NH, KVH, HD};
    ck_assert(OPS->kv_store(BE, kc, vc, dk, dv, &sh, &err) == MOE_OK);
    OPS->device_free(BE, dk);
    OPS->device_free(BE, dv);
    free(k);
    free(v);
  }
  const size_t qn = (size_t)S * n_new * NH * HD;
  float *q = malloc(qn * sizeof(float)), *o = malloc(qn * sizeof(float));
  tu_fill(q, qn, 13);
  float *dq = dev_f(q, qn), *dout = dev_f(NULL, qn);
  moe_attn_shape sh = {S, n_new, ctx, max_seq, NH, KVH, HD};
  ck_assert_msg(moe_backend_attention(OPS, BE, dout, dq, kc, vc, &sh, &err) == MOE_OK, "%s", err.msg);
  down(o, dout, qn * sizeof(float));
  double *sc = malloc((size_t)(ctx + n_new) * sizeof(double));
  for (int b = 0; b < S; b++)
    for (int t = 0; t < n_new; t++)
      for (int h = 0; h < NH; h++) {
        const int p = ctx + t, kvh = h / (NH / KVH);
        const float *qh = q + (((size_t)b * n_new + t) * NH + h) * HD;
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j <= p; j++) {
          const float *kj = kh + (((size_t)b * (ctx + n_new) + j) * KVH + kvh) * HD;
          double d = 0;
          for (int i = 0; i < HD; i++) d += (double)qh[i] * kj[i];
          sc[j] = d / sqrt((double)HD);
          if (sc[j] > mx) mx = sc[j];
        }
        for (int j = 0; j <= p; j++) sum += sc[j] = exp(sc[j] - mx);
        for (int i = 0; i < HD; i++) {
          double acc = 0;
          for (int j = 0; j <= p; j++)
            acc += sc[j] / sum * vh[(((size_t)b * (ctx + n_new) + j) * KVH + kvh) * HD + i];
          ck_assert_double_eq_tol(o[(((size_t)b * n_new + t) * NH + h) * HD + i], acc, 1e-5);
        }
      }
  free(sc);
  free(q);
  free(o);
  free(kh);
  free(vh);
  void *bufs[] = {kc, vc, dq, dout};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) OPS->device_free(BE, bufs[i]);
}
END_TEST

/* attention_ex (ABI 1.2): scale, causal or not, any key count (past one
 * CUDA tile), grouped kv heads, a bucketed relative-position bias in a
 * 16-bit dtype; checked against a double-precision reference. */
START_TEST(attention_ex_definition) {
  if (OPS->attention_ex == NULL) return; /* an older backend: optional */
  moe_error err = {0};
  enum { S = 2, NH = 4, KVH = 2, HD = 6, MAXS = 300, NK = 260, NQ = 3, NB = 8 };
  const size_t cache = (size_t)S * KVH * MAXS * HD;
  float *kh = calloc(cache, sizeof(float)), *vh = calloc(cache, sizeof(float));
  tu_fill(kh, cache, 21);
  tu_fill(vh, cache, 22);
  float *kc = dev_f(kh, cache), *vc = dev_f(vh, cache);
  float relv[NB * NH], rel_exact[NB * NH];
  tu_fill(relv, NB * NH, 23);
  moe_weight rel = dev_weight(relv, NB, NH, MOE_BF16, rel_exact);
  int32_t bk[2 * MAXS - 1];
  for (int i = 0; i < 2 * MAXS - 1; i++) bk[i] = (i * 7 + i / 5) % NB;
  int32_t *dbk = dev_bytes(bk, sizeof bk);
  const size_t qn = (size_t)S * NQ * NH * HD;
  float *q = malloc(qn * sizeof(float)), *o = malloc(qn * sizeof(float));
  tu_fill(q, qn, 24);
  float *dq = dev_f(q, qn), *dout = dev_f(NULL, qn);
  double sc[NK];
  for (int mode = 0; mode < 2; mode++) {
    const bool causal = mode == 0;
    const int pos0 = causal ? NK - NQ : 5;
    const float scale = causal ? 0.7f : 1.0f;
    const moe_attn_ex a = {S, NQ, pos0, NK, MAXS, NH, KVH, HD, causal, scale,
                           causal ? &rel : NULL, dbk, MAXS - 1};
    ck_assert_msg(OPS->attention_ex(BE, dout, dq, kc, vc, &a, &err) == MOE_OK, "%s", err.msg);
    down(o, dout, qn * sizeof(float));
    for (int b = 0; b < S; b++)
      for (int t = 0; t < NQ; t++)
        for (int h = 0; h < NH; h++) {
          const int p = pos0 + t, kvh = h / (NH / KVH), nk = causal ? p + 1 : NK;
          const float *qh = q + (((size_t)b * NQ + t) * NH + h) * HD;
          const size_t base = (((size_t)b * KVH + kvh) * MAXS) * HD;
          double mx = -INFINITY, sum = 0;
          for (int j = 0; j < nk; j++) {
            double d = 0;
            for (int i = 0; i < HD; i++) d += (double)qh[i] * kh[base + (size_t)j * HD + i];
            sc[j] = d * scale + (causal ? rel_exact[bk[j - p + MAXS - 1] * NH + h] : 0.0);
            if (sc[j] > mx) mx = sc[j];
          }
          for (int j = 0; j < nk; j++) sum += sc[j] = exp(sc[j] - mx);
          for (int i = 0; i < HD; i++) {
            double acc = 0;
            for (int j = 0; j < nk; j++) acc += sc[j] / sum * vh[base + (size_t)j * HD + i];
            ck_assert_double_eq_tol(o[(((size_t)b * NQ + t) * NH + h) * HD + i], acc, 1e-5);
          }
        }
  }
  free(kh);
  free(vh);
  free(q);
  free(o);
  void *bufs[] = {kc, vc, dq, dout, dbk, (void *)rel.data};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) OPS->device_free(BE, bufs[i]);
}
END_TEST

/* unary (ABI 1.2): ReLU and scale, in place and out of place. */
START_TEST(unary_definition) {
  if (OPS->unary == NULL) return;
  moe_error err = {0};
  enum { N = 1000 };
  float x[N], y[N];
  tu_fill(x, N, 31);
  x[0] = 0.0f;
  x[1] = -0.0f;
  float *dx = dev_f(x, N), *dy = dev_f(NULL, N);
  ck_assert(OPS->unary(BE, dy, dx, N, MOE_UNARY_RELU, 0.0f, &err) == MOE_OK);
  down(y, dy, sizeof y);
  for (int i = 0; i < N; i++) ck_assert_float_eq(y[i], x[i] > 0.0f ? x[i] : 0.0f);
  ck_assert(OPS->unary(BE, dx, dx, N, MOE_UNARY_SCALE, -0.25f, &err) == MOE_OK);
  down(y, dx, sizeof y);
  for (int i = 0; i < N; i++) ck_assert_float_eq(y[i], -0.25f * x[i]);
  ck_assert_int_eq(OPS->unary(BE, dy, dx, N, (moe_unary_op)77, 1.0f, &err), MOE_ERR_INVALID);
  OPS->device_free(BE, dx);
  OPS->device_free(BE, dy);
}
END_TEST

/* Top-k ranks on logit + bias with ties to the lower index; weights are
 * softmax probabilities of the chosen, renormalised on request. */
START_TEST(router_topk_definition) {
  moe_error err = {0};
  const int n = 6, k = 3;
  const size_t m = 3;
  float logits[3 * 6] = {
      0.5f, 2.0f, 2.0f, -1.0f, 2.0f, 0.0f,    /* a three-way tie: 1, 2, 4 */
      1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f,     /* all equal: 0, 1, 2 */
      3.0f, -2.0f, 0.25f, 0.5f, 0.0f, 1.0f,   /* with the bias below: 0, 1, 5 */
  };
  float bias[6] = {0.0f, 4.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  const int want[3][2][3] = {{{1, 2, 4}, {1, 2, 4}}, {{0, 1, 2}, {1, 0, 2}}, {{0, 5, 3}, {0, 1, 5}}};
  float *dl = dev_f(logits, m * n);
  int32_t *di = dev_bytes(NULL, m * k * sizeof(int32_t));
  float *dw = dev_f(NULL, m * k);
  moe_weight bw = dev_weight(bias, 1, n, MOE_F32, NULL);
  for (int with_bias = 0; with_bias < 2; with_bias++)
    for (int renorm = 0; renorm < 2; renorm++) {
      ck_assert(moe_backend_router_topk(OPS, BE, di, dw, dl, m, n, k, renorm,
                                        with_bias ? &bw : NULL, &err) == MOE_OK);
      int32_t idx[9];
      float w[9];
      down(idx, di, sizeof idx);
      down(w, dw, sizeof w);
      for (size_t t = 0; t < m; t++) {
        double z[6], mx = -INFINITY, sum = 0, tsum = 0;
        for (int e = 0; e < n; e++) {
          z[e] = logits[t * n + e] + (with_bias ? bias[e] : 0.0f);
          if (z[e] > mx) mx = z[e];
        }
        for (int e = 0; e < n; e++) sum += exp(z[e] - mx);
        for (int j = 0; j < k; j++) {
          ck_assert_msg(idx[t * k + j] == want[t][with_bias][j], "row %zu bias %d: slot %d is %d",
                        t, with_bias, j, idx[t * k + j]);
          tsum += exp(z[idx[t * k + j]] - mx) / sum;
        }
        for (int j = 0; j < k; j++) {
          double p = exp(z[idx[t * k + j]] - mx) / sum;
          ck_assert_double_eq_tol(w[t * k + j], renorm ? p / tsum : p, 1e-6);
        }
      }
    }
  void *bufs[] = {dl, di, dw, (void *)bw.data};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) OPS->device_free(BE, bufs[i]);
}
END_TEST

/* The DeepSeek-style router (moe_router_ex) against a double-precision
 * reference written here, on hand-made rows whose answer is fixed by the
 * definition (groups, the zero fill, ties) and on random rows at the
 * shapes of DeepSeek-V3 (256 experts, 8 groups keeping 4, top-8, sigmoid,
 * bias, renormalised, scaled) and V2 (softmax, group max, no renorm). */
static void ref_router_ex(const float *l, int n, const moe_router_ex *r, const float *bias,
                          int *idx, double *w) {
  double s[1024], c[1024];
  double mx = -INFINITY, sum = 0;
  for (int e = 0; e < n; e++) mx = l[e] > mx ? l[e] : mx;
  for (int e = 0; e < n; e++) sum += exp(l[e] - mx);
  for (int e = 0; e < n; e++) {
    s[e] = r->scoring == MOE_SCORING_SOFTMAX ? exp(l[e] - mx) / sum : 1.0 / (1.0 + exp(-(double)l[e]));
    c[e] = s[e] + (bias ? bias[e] : 0.0);
  }
  if (r->n_group > 1) {
    const int size = n / r->n_group;
    bool keep[64] = {false};
    double gv[64];
    for (int g = 0; g < r->n_group; g++) {
      double a = -INFINITY, b = -INFINITY;
      for (int e = 0; e < size; e++) {
        double v = c[g * size + e];
        if (v > a) b = a, a = v;
        else if (v > b) b = v;
      }
      gv[g] = r->group_score == MOE_GROUP_MAX ? a : a + b;
    }
    for (int j = 0; j < r->topk_group; j++) {
      int best = -1;
      for (int g = 0; g < r->n_group; g++)
        if (!keep[g] && (best < 0 || gv[g] > gv[best])) best = g;
      keep[best] = true;
    }
    for (int e = 0; e < n; e++)
      if (!keep[e / size]) c[e] = r->mask_neg_inf ? -INFINITY : 0.0;
  }
  double tsum = 0;
  for (int j = 0; j < r->k; j++) {
    int best = -1;
    for (int e = 0; e < n; e++) {
      bool taken = false;
      for (int q = 0; q < j; q++) taken |= idx[q] == e;
      if (!taken && (best < 0 || c[e] > c[best])) best = e;
    }
    idx[j] = best;
    w[j] = s[best];
    tsum += w[j];
  }
  for (int j = 0; j < r->k; j++) w[j] = (r->renorm ? w[j] / (tsum + 1e-20) : w[j]) * r->scale;
}

static void check_router_ex(const float *logits, size_t m, int n, const moe_router_ex *r,
                            const float *bias, const int *want) {
  moe_error err = {0};
  float *dl = dev_f(logits, m * (size_t)n);
  int32_t *di = dev_bytes(NULL, m * (size_t)r->k * sizeof(int32_t));
  float *dw = dev_f(NULL, m * (size_t)r->k);
  moe_weight bw = {0};
  moe_router_ex rr = *r;
  if (bias) {
    bw = dev_weight(bias, 1, (size_t)n, MOE_F32, NULL);
    rr.choice_bias = &bw;
  }
  ck_assert_msg(OPS->router_topk_ex(BE, di, dw, dl, m, n, &rr, &err) == MOE_OK, "%s", err.msg);
  int32_t *idx = malloc(m * (size_t)r->k * sizeof *idx);
  float *w = malloc(m * (size_t)r->k * sizeof *w);
  down(idx, di, m * (size_t)r->k * sizeof *idx);
  down(w, dw, m * (size_t)r->k * sizeof *w);
  for (size_t t = 0; t < m; t++) {
    int ri[64];
    double rw[64];
    ref_router_ex(logits + t * (size_t)n, n, r, bias, ri, rw);
    for (int j = 0; j < r->k; j++) {
      ck_assert_msg(idx[t * r->k + j] == ri[j], "row %zu slot %d: %d, reference %d", t, j,
                    idx[t * r->k + j], ri[j]);
      if (want) ck_assert_int_eq(idx[t * r->k + j], want[t * r->k + j]);
      ck_assert_msg(fabs(w[t * r->k + j] - rw[j]) <= 1e-5 * fabs(rw[j]) + 1e-7,
                    "row %zu slot %d: weight %g, reference %g", t, j, w[t * r->k + j], rw[j]);
    }
  }
  free(idx);
  free(w);
  OPS->device_free(BE, dl);
  OPS->device_free(BE, di);
  OPS->device_free(BE, dw);
  if (bias) OPS->device_free(BE, (void *)bw.data);
}

START_TEST(router_topk_ex_definition) {
  ck_assert_ptr_nonnull(OPS->router_topk_ex);
  /* 8 experts in 4 groups of 2, keep 2 groups, top-3, sigmoid: the best
   * single expert (4) is in a group whose top-2 sum loses */
  const float l1[2 * 8] = {1.0f, 0.9f, -3.0f, -3.0f, 4.0f, -4.0f, 0.5f, 0.6f,
                           0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  moe_router_ex r = {3, MOE_SCORING_SIGMOID, NULL, 4, 2, MOE_GROUP_TOP2_SUM, true, 2.5f, false};
  const int want1[2 * 3] = {0, 1, 7, 0, 1, 2};
  check_router_ex(l1, 2, 8, &r, NULL, want1);
  /* a negative bias: the kept groups' second experts rank below 0, so an
   * expert of a dropped group (its score filled with 0, as transformers'
   * masked_fill does) takes the third slot */
  const float l2[8] = {2.0f, -10.0f, 2.0f, -10.0f, -10.0f, -10.0f, -10.0f, -10.0f};
  const float bias2[8] = {0.0f, -0.5f, 0.0f, -0.5f, 0.0f, 0.0f, 0.0f, 0.0f};
  const int want2[3] = {0, 2, 4};
  check_router_ex(l2, 1, 8, &r, bias2, want2);
  /* DeepSeek-V3 fills them with -inf instead: the kept group's own
   * expert, ties to the lower index */
  moe_router_ex r_inf = r;
  r_inf.mask_neg_inf = true;
  const int want3[3] = {0, 2, 1};
  check_router_ex(l2, 1, 8, &r_inf, bias2, want3);
  /* DeepSeek-V3's shape, random rows and bias */
  enum { M = 9, N = 256 };
  float *l = malloc(M * N * sizeof *l), b[N];
  tu_fill(l, M * N, 31);
  tu_fill(b, N, 32);
  for (int i = 0; i < M * N; i++) l[i] *= 4.0f;
  for (int i = 0; i < N; i++) b[i] *= 0.1f;
  moe_router_ex v3 = {8, MOE_SCORING_SIGMOID, NULL, 8, 4, MOE_GROUP_TOP2_SUM, true, 2.5f, false};
  check_router_ex(l, M, N, &v3, b, NULL);
  /* V2's: softmax, group max, no renorm; and greedy (no groups) */
  moe_router_ex v2 = {6, MOE_SCORING_SOFTMAX, NULL, 8, 3, MOE_GROUP_MAX, false, 16.0f, false};
  check_router_ex(l, M, 64, &v2, NULL, NULL);
  moe_router_ex greedy = {6, MOE_SCORING_SOFTMAX, NULL, 0, 0, MOE_GROUP_MAX, false, 1.0f, false};
  check_router_ex(l, M, 64, &greedy, NULL, NULL);
  free(l);
  /* what cannot be routed is refused */
  moe_error err = {0};
  int32_t *di = dev_bytes(NULL, 64 * sizeof(int32_t));
  float *dw = dev_f(NULL, 64), *dl = dev_f(NULL, 64);
  const moe_router_ex bad[] = {
      {0, MOE_SCORING_SIGMOID, NULL, 0, 0, MOE_GROUP_MAX, false, 1.0f, false},   /* k = 0 */
      {4, MOE_SCORING_SIGMOID, NULL, 3, 1, MOE_GROUP_MAX, false, 1.0f, false},   /* 8 % 3 */
      {5, MOE_SCORING_SIGMOID, NULL, 4, 2, MOE_GROUP_MAX, false, 1.0f, false},   /* 5 > 2 x 2 */
      {2, MOE_SCORING_SIGMOID, NULL, 8, 2, MOE_GROUP_TOP2_SUM, false, 1.0f, false}, /* groups of 1 */
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    ck_assert_msg(OPS->router_topk_ex(BE, di, dw, dl, 1, 8, &bad[i], &err) == MOE_ERR_INVALID,
                  "case %zu accepted", i);
  OPS->device_free(BE, di);
  OPS->device_free(BE, dw);
  OPS->device_free(BE, dl);
}
END_TEST

/* rope_ex against a double-precision rotation (the angle the f32 product
 * pos * inv_freq, as the contract says): both pairings, strided heads,
 * an offset and a scale; elements outside the rotated range untouched. */
START_TEST(rope_ex_definition) {
  ck_assert_ptr_nonnull(OPS->rope_ex);
  moe_error err = {0};
  enum { M = 3, NH = 3, HS = 20, RS = 64, OFF = 12, RD = 8 };
  float x[M * RS], y[M * RS], inv[RD / 2] = {1.0f, 0.3f, 0.031f, 0.0007f};
  int32_t pos[M] = {0, 5, 1000};
  tu_fill(x, M * RS, 41);
  float *dx = dev_f(x, M * RS), *dinv = dev_f(inv, RD / 2);
  int32_t *dpos = dev_bytes(pos, sizeof pos);
  for (int il = 0; il < 2; il++) {
    OPS->upload(BE, dx, x, sizeof x, &err);
    const moe_rope_ex r = {NH, RS, HS, OFF, RD, il == 1, dinv, 0.8f, 0};
    ck_assert_msg(OPS->rope_ex(BE, dx, M, dpos, &r, &err) == MOE_OK, "%s", err.msg);
    down(y, dx, sizeof y);
    for (int t = 0; t < M; t++)
      for (int h = 0; h < NH; h++) {
        const float *v = x + t * RS + h * HS + OFF;
        const float *o = y + t * RS + h * HS + OFF;
        for (int i = 0; i < RD / 2; i++) {
          const double ang = (double)((float)pos[t] * inv[i]);
          const double c = cos(ang) * 0.8, sn = sin(ang) * 0.8;
          const int ia = il ? 2 * i : i, ib = il ? 2 * i + 1 : i + RD / 2;
          ck_assert_msg(fabs(o[ia] - (v[ia] * c - v[ib] * sn)) < 2e-5, "row %d head %d pair %d", t, h, i);
          ck_assert_msg(fabs(o[ib] - (v[ib] * c + v[ia] * sn)) < 2e-5, "row %d head %d pair %d", t, h, i);
        }
      }
    /* outside the rotated ranges: unchanged */
    for (int t = 0; t < M; t++)
      for (int j = 0; j < RS; j++) {
        const int h = j / HS, in = j % HS;
        if (h < NH && in >= OFF && in < OFF + RD) continue;
        ck_assert_float_eq(y[t * RS + j], x[t * RS + j]);
      }
  }
  const moe_rope_ex odd = {NH, RS, HS, OFF, 7, false, dinv, 1.0f, 0};
  ck_assert_int_eq(OPS->rope_ex(BE, dx, M, dpos, &odd, &err), MOE_ERR_INVALID);
  const moe_rope_ex spill = {NH, RS, HS, 14, RD, false, dinv, 1.0f, 0}; /* 14 + 8 > 20 */
  ck_assert_int_eq(OPS->rope_ex(BE, dx, M, dpos, &spill, &err), MOE_ERR_INVALID);
  OPS->device_free(BE, dx);
  OPS->device_free(BE, dinv);
  OPS->device_free(BE, dpos);
}
END_TEST

/* mla_attention against its definition in double precision, in the
 * expanded form transformers computes (keys and values of every head
 * from the latents), so a backend's absorbed form is held to the same
 * numbers; the new rows land in both caches and nothing else moves. */
START_TEST(mla_attention_definition) {
  ck_assert_ptr_nonnull(OPS->mla_attention);
  moe_error err = {0};
  enum { B = 2, NEW = 2, P0 = 3, S = 8, NH = 3, NO = 5, RO = 4, VD = 6, R = 7 };
  const int T = B * NEW, QW = NH * (NO + RO);
  float q[B * NEW * NH * (NO + RO)], cnew[B * NEW * R], pnew[B * NEW * RO];
  float cc[B * S * R], pc[B * S * RO], w[NH * (NO + VD) * R], wex[NH * (NO + VD) * R];
  tu_fill(q, (size_t)T * QW, 51);
  tu_fill(cnew, (size_t)T * R, 52);
  tu_fill(pnew, (size_t)T * RO, 53);
  tu_fill(cc, B * S * R, 54);
  tu_fill(pc, B * S * RO, 55);
  tu_fill(w, NH * (NO + VD) * R, 56);
  for (int dt = 0; dt < 2; dt++) {
    const moe_weight kvb = dev_weight(w, NH * (NO + VD), R, dt ? MOE_BF16 : MOE_F32, wex);
    float *dq = dev_f(q, (size_t)T * QW), *dcn = dev_f(cnew, (size_t)T * R),
          *dpn = dev_f(pnew, (size_t)T * RO), *dcc = dev_f(cc, B * S * R),
          *dpc = dev_f(pc, B * S * RO), *dout = dev_f(NULL, (size_t)T * NH * VD);
    const moe_mla_shape sh = {B, NEW, P0, S, NH, NO, RO, VD, R, 0.37f};
    ck_assert_msg(OPS->mla_attention(BE, dout, dq, dcc, dpc, dcn, dpn, &kvb, &sh, &err) == MOE_OK,
                  "%s", err.msg);
    float out[B * NEW * NH * VD], cc2[B * S * R], pc2[B * S * RO];
    down(out, dout, sizeof out);
    down(cc2, dcc, sizeof cc2);
    down(pc2, dpc, sizeof pc2);
    /* the caches: the new rows at pos0.., the rest as it was */
    float c_all[B * S * R], p_all[B * S * RO];
    memcpy(c_all, cc, sizeof cc);
    memcpy(p_all, pc, sizeof pc);
    for (int b = 0; b < B; b++)
      for (int t = 0; t < NEW; t++) {
        memcpy(c_all + (b * S + P0 + t) * R, cnew + (b * NEW + t) * R, R * sizeof(float));
        memcpy(p_all + (b * S + P0 + t) * RO, pnew + (b * NEW + t) * RO, RO * sizeof(float));
      }
    ck_assert_int_eq(memcmp(cc2, c_all, sizeof cc2), 0);
    ck_assert_int_eq(memcmp(pc2, p_all, sizeof pc2), 0);
    for (int b = 0; b < B; b++)
      for (int t = 0; t < NEW; t++)
        for (int h = 0; h < NH; h++) {
          const float *qh = q + ((b * NEW + t) * NH + h) * (NO + RO);
          const int nk = P0 + t + 1;
          double sc[S], mx = -INFINITY, sum = 0, mag = 0;
          for (int j = 0; j < nk; j++) {
            const float *c = c_all + (b * S + j) * R, *pe = p_all + (b * S + j) * RO;
            double d = 0;
            for (int n = 0; n < NO; n++) {
              double k = 0;
              for (int r = 0; r < R; r++) k += (double)wex[(h * (NO + VD) + n) * R + r] * c[r];
              d += qh[n] * k;
            }
            for (int i = 0; i < RO; i++) d += (double)qh[NO + i] * pe[i];
            sc[j] = d * 0.37;
            mx = sc[j] > mx ? sc[j] : mx;
          }
          for (int j = 0; j < nk; j++) sum += sc[j] = exp(sc[j] - mx);
          for (int v = 0; v < VD; v++) {
            double o = 0;
            for (int j = 0; j < nk; j++) {
              const float *c = c_all + (b * S + j) * R;
              double val = 0;
              for (int r = 0; r < R; r++) val += (double)wex[(h * (NO + VD) + NO + v) * R + r] * c[r];
              o += sc[j] / sum * val;
              mag += fabs(val);
            }
            const float got = out[((b * NEW + t) * NH + h) * VD + v];
            ck_assert_msg(fabs(got - o) <= 1e-5 * (mag + 1.0), "seq %d token %d head %d v %d: %g, reference %g",
                          b, t, h, v, got, o);
          }
        }
    const moe_mla_shape bad = {B, NEW, P0, S, NH, NO, RO, VD, R + 1, 0.37f}; /* kv_b has R columns */
    ck_assert_int_eq(OPS->mla_attention(BE, dout, dq, dcc, dpc, dcn, dpn, &kvb, &bad, &err),
                     MOE_ERR_INVALID);
    void *bufs[] = {dq, dcn, dpn, dcc, dpc, dout, (void *)kvb.data};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) OPS->device_free(BE, bufs[i]);
  }
}
END_TEST

static void add_device(TCase *tc) {
  tcase_add_loop_test(tc, matmul_all_dtypes_and_shapes, 0, 2);
  tcase_add_test(tc, matmul_special_weight_values);
  tcase_add_test(tc, norm_rope_elementwise);
  tcase_add_test(tc, kv_store_and_attention);
  tcase_add_test(tc, attention_ex_definition);
  tcase_add_test(tc, unary_definition);
  tcase_add_test(tc, router_topk_definition);
  tcase_add_test(tc, router_topk_ex_definition);
  tcase_add_test(tc, rope_ex_definition);
  tcase_add_test(tc, mla_attention_definition);
  tcase_add_test(tc, matmul_16bit_activations_saturate);
  tcase_add_test(tc, argmax_rows_definition);
}

int main(void) {
  const conformance_cases cases = {NULL, NULL, add_device};
  return conformance_main(&cases);
}
