/* The backend contract (engine/include/moe/backend.h), held against every
 * compiled-in backend whose device is present: cpu always, cpu again with a
 * capped link (slow copies, so ordering is exercised), cuda when a GPU is
 * there.  Each math op is checked against a plain double-precision
 * reference written here, not against another backend; ordering is checked
 * by data (what compute sees after a wait), never by time. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/device.h"
#include "moe/backend.h"
#include "moe/dtype.h"
#include "testutil.h"

static const char *g_backend = "cpu";
static double g_link = 0.0;
static int g_threads = 1;
static moe_device g_dev;

static const char *g_hardware = NULL; /* modeled backends: the profile */

static void setup(void) {
  moe_error err = {0};
  moe_backend_options o = {.link_gbps = g_link, .threads = g_threads, .hardware = g_hardware};
  ck_assert_msg(moe_device_open(&g_dev, g_backend, &o, &err) == MOE_OK, "%s", err.msg);
}

static void teardown(void) { moe_device_close(&g_dev); }

#define OPS (g_dev.ops)
#define BE (g_dev.be)
#define OK(call)                                                                   \
  do {                                                                             \
    moe_error e_ = {0};                                                            \
    moe_status s_ = (call);                                                        \
    ck_assert_msg(s_ == MOE_OK, "%s: %s (%s)", #call, moe_status_name(s_), e_.msg); \
  } while (0)

/* Device buffer holding host data (n floats or bytes). */
static void *dev_bytes(const void *host, size_t bytes) {
  void *p = NULL;
  moe_error err = {0};
  ck_assert_msg(OPS->device_alloc(BE, bytes ? bytes : 1, &p, &err) == MOE_OK, "%s", err.msg);
  if (host && bytes) ck_assert(OPS->upload(BE, p, host, bytes, &err) == MOE_OK);
  return p;
}
static float *dev_f(const float *host, size_t n) { return dev_bytes(host, n * sizeof(float)); }

static void down(void *host, const void *dev, size_t bytes) {
  moe_error err = {0};
  ck_assert_msg(OPS->download(BE, host, dev, bytes, &err) == MOE_OK, "%s", err.msg);
}

/* A weight in dtype dt from f32 values; *exact receives the values the
 * weight really holds (rounded to dt). */
static moe_weight dev_weight(const float *v, size_t rows, size_t cols, moe_dtype dt, float *exact) {
  size_t n = rows * cols;
  void *h = malloc(n * moe_dtype_size(dt));
  moe_convert_from_f32(h, dt, v, n);
  if (exact) moe_convert_to_f32(exact, h, dt, n);
  moe_weight w = {dev_bytes(h, n * moe_dtype_size(dt)), dt, rows, cols};
  free(h);
  return w;
}

START_TEST(identity_and_memory) {
  ck_assert_ptr_nonnull(OPS->describe(BE));
  ck_assert_uint_gt(strlen(OPS->describe(BE)), 0);
  ck_assert_uint_gt(strlen(moe_backend_device_name(OPS, BE)), 0);
  ck_assert_uint_gt(OPS->device_capacity(BE), 0);
  unsigned char src[1000], back[1000];
  for (int i = 0; i < 1000; i++) src[i] = (unsigned char)(i * 7 + 3);
  void *d = dev_bytes(src, sizeof src);
  ck_assert_uint_eq((uintptr_t)d % 64, 0);
  down(back, d, sizeof back);
  ck_assert_int_eq(memcmp(src, back, sizeof src), 0);
  moe_error err = {0};
  ck_assert(OPS->upload(BE, d, src, 0, &err) == MOE_OK); /* zero bytes: no-op */
  ck_assert(OPS->download(BE, back, d, 0, &err) == MOE_OK);
  OPS->device_free(BE, d);
}
END_TEST

enum { BIG = 4 << 20 }; /* bytes: several ms on a capped link */

START_TEST(copies_and_events) {
  moe_error err = {0};
  unsigned char *a = NULL, *b = NULL, *back = malloc(BIG);
  ck_assert(OPS->host_alloc(BE, BIG, (void **)&a, &err) == MOE_OK);
  ck_assert(OPS->host_alloc(BE, BIG, (void **)&b, &err) == MOE_OK);
  for (size_t i = 0; i < BIG; i++) a[i] = (unsigned char)i, b[i] = (unsigned char)(i * 31 + 1);
  void *d = dev_bytes(NULL, BIG);
  moe_event *ev = NULL, *never = NULL;
  ck_assert(OPS->event_create(BE, &ev, &err) == MOE_OK);
  ck_assert(OPS->event_create(BE, &never, &err) == MOE_OK);
  /* an event never used is complete */
  ck_assert_int_eq(OPS->event_done(BE, never), 1);
  ck_assert(OPS->event_sync(BE, never, &err) == MOE_OK);
  ck_assert(OPS->compute_wait(BE, never, &err) == MOE_OK);
  ck_assert(OPS->copy_wait(BE, never, &err) == MOE_OK);
  /* copies on the copy stream run in order: the second one wins */
  ck_assert(OPS->copy_h2d_async(BE, d, a, BIG, NULL, &err) == MOE_OK);
  ck_assert(OPS->copy_h2d_async(BE, d, b, BIG, ev, &err) == MOE_OK);
  ck_assert(OPS->event_sync(BE, ev, &err) == MOE_OK);
  ck_assert_int_eq(OPS->event_done(BE, ev), 1);
  down(back, d, BIG);
  ck_assert_int_eq(memcmp(back, b, BIG), 0);
  /* a wait is for the most recent signalling copy issued before it */
  ck_assert(OPS->copy_h2d_async(BE, d, a, BIG, ev, &err) == MOE_OK);
  ck_assert(OPS->event_sync(BE, ev, &err) == MOE_OK);
  down(back, d, BIG);
  ck_assert_int_eq(memcmp(back, a, BIG), 0);
  ck_assert(OPS->synchronize(BE, &err) == MOE_OK);
  OPS->event_destroy(BE, ev);
  OPS->event_destroy(BE, never);
  OPS->device_free(BE, d);
  OPS->host_free(BE, a);
  OPS->host_free(BE, b);
  free(back);
}
END_TEST

/* compute_wait: compute issued after it sees the copy's bytes. */
START_TEST(compute_waits_for_copies) {
  moe_error err = {0};
  const size_t n = BIG / sizeof(float);
  float *src = NULL, *back = malloc(BIG), *zeros = calloc(n, sizeof(float));
  ck_assert(OPS->host_alloc(BE, BIG, (void **)&src, &err) == MOE_OK);
  tu_fill(src, n, 5);
  float *d = dev_f(NULL, n), *y = dev_f(zeros, n);
  moe_event *ev = NULL;
  ck_assert(OPS->event_create(BE, &ev, &err) == MOE_OK);
  for (int round = 0; round < 3; round++) {
    ck_assert(OPS->upload(BE, y, zeros, BIG, &err) == MOE_OK);
    ck_assert(OPS->copy_h2d_async(BE, d, src, BIG, ev, &err) == MOE_OK);
    ck_assert(OPS->compute_wait(BE, ev, &err) == MOE_OK);
    ck_assert(OPS->add(BE, y, d, n, &err) == MOE_OK); /* y = 0 + copied bytes */
    down(back, y, BIG);
    ck_assert_int_eq(memcmp(back, src, BIG), 0);
    for (size_t i = 0; i < n; i++) src[i] += 1.0f; /* next round copies new bytes */
    ck_assert(OPS->synchronize(BE, &err) == MOE_OK);
  }
  OPS->event_destroy(BE, ev);
  OPS->device_free(BE, d);
  OPS->device_free(BE, y);
  OPS->host_free(BE, src);
  free(back);
  free(zeros);
}
END_TEST

/* copy_wait: a copy issued after it lands after the recorded compute, so
 * it overwrites what compute wrote. */
START_TEST(copies_wait_for_compute) {
  moe_error err = {0};
  const size_t n = 1 << 16;
  float *ones = malloc(n * sizeof(float)), *src = NULL, *back = malloc(n * sizeof(float));
  for (size_t i = 0; i < n; i++) ones[i] = 1.0f;
  ck_assert(OPS->host_alloc(BE, n * sizeof(float), (void **)&src, &err) == MOE_OK);
  tu_fill(src, n, 9);
  float *x = dev_f(ones, n), *inc = dev_f(ones, n);
  moe_event *done = NULL, *landed = NULL;
  ck_assert(OPS->event_create(BE, &done, &err) == MOE_OK);
  ck_assert(OPS->event_create(BE, &landed, &err) == MOE_OK);
  for (int i = 0; i < 8; i++) ck_assert(OPS->add(BE, x, inc, n, &err) == MOE_OK);
  ck_assert(OPS->compute_record(BE, done, &err) == MOE_OK);
  ck_assert(OPS->copy_wait(BE, done, &err) == MOE_OK);
  ck_assert(OPS->copy_h2d_async(BE, x, src, n * sizeof(float), landed, &err) == MOE_OK);
  ck_assert(OPS->event_sync(BE, landed, &err) == MOE_OK);
  ck_assert(OPS->synchronize(BE, &err) == MOE_OK);
  down(back, x, n * sizeof(float));
  ck_assert_int_eq(memcmp(back, src, n * sizeof(float)), 0);
  OPS->event_destroy(BE, done);
  OPS->event_destroy(BE, landed);
  OPS->device_free(BE, x);
  OPS->device_free(BE, inc);
  OPS->host_free(BE, src);
  free(ones);
  free(back);
}
END_TEST

/* event_destroy with its copies still queued, and a backend destroyed with
 * copies in flight: neither blocks forever nor touches freed memory
 * (ASan/TSan builds run this). */
START_TEST(teardown_with_copies_in_flight) {
  moe_error err = {0};
  unsigned char *src = NULL;
  ck_assert(OPS->host_alloc(BE, BIG, (void **)&src, &err) == MOE_OK);
  memset(src, 0x5a, BIG);
  void *d = dev_bytes(NULL, BIG);
  moe_event *ev = NULL;
  ck_assert(OPS->event_create(BE, &ev, &err) == MOE_OK);
  for (int i = 0; i < 4; i++) ck_assert(OPS->copy_h2d_async(BE, d, src, BIG, ev, &err) == MOE_OK);
  ck_assert(OPS->copy_wait(BE, ev, &err) == MOE_OK);
  OPS->event_destroy(BE, ev); /* copies and a wait still name it */
  ck_assert(OPS->synchronize(BE, &err) == MOE_OK);
  unsigned char *back = malloc(BIG);
  down(back, d, BIG);
  ck_assert_int_eq(back[0], 0x5a);
  ck_assert_int_eq(back[BIG - 1], 0x5a);
  free(back);
  /* now a whole instance goes while its copies run */
  moe_device other;
  moe_backend_options o = {.link_gbps = g_link};
  ck_assert(moe_device_open(&other, g_backend, &o, &err) == MOE_OK);
  void *d2 = NULL;
  ck_assert(moe_device_alloc(&other, MOE_MEM_EXPERTS, BIG, "slots", &d2, &err) == MOE_OK);
  moe_event *ev2 = NULL;
  ck_assert(other.ops->event_create(other.be, &ev2, &err) == MOE_OK);
  for (int i = 0; i < 4; i++)
    ck_assert(other.ops->copy_h2d_async(other.be, d2, src, BIG, ev2, &err) == MOE_OK);
  other.ops->event_destroy(other.be, ev2);
  moe_device_close(&other); /* waits for the copies, then frees */
  OPS->device_free(BE, d);
  OPS->host_free(BE, src); /* safe only because the copies are done */
}
END_TEST

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

/* download_many (or the engine's fallback, n downloads): the bytes of
 * each transfer, zero-byte ones allowed, in the order issued after
 * earlier compute. */
START_TEST(download_many_definition) {
  float a[5] = {1, 2, 3, 4, 5}, b[3] = {-1, -2, -3}, ga[5], gb[3], gz = 42.0f;
  int32_t c[4] = {7, 8, 9, 10}, gc[4];
  float *da = dev_f(a, 5), *db = dev_f(b, 3);
  int32_t *dc = dev_bytes(c, sizeof c);
  OK(OPS->add(BE, db, db, 3, &e_)); /* compute before the download: b doubled */
  const moe_xfer x[4] = {{ga, da, sizeof ga}, {&gz, da, 0}, {gb, db, sizeof gb}, {gc, dc, sizeof gc}};
  OK(moe_device_download_many(&g_dev, x, 4, &e_));
  ck_assert_mem_eq(ga, a, sizeof a);
  for (int i = 0; i < 3; i++) ck_assert_float_eq(gb[i], 2 * b[i]);
  ck_assert_mem_eq(gc, c, sizeof c);
  ck_assert_float_eq(gz, 42.0f); /* zero bytes: untouched */
  OK(moe_device_download_many(&g_dev, x, 0, &e_));
  OPS->device_free(BE, da);
  OPS->device_free(BE, db);
  OPS->device_free(BE, dc);
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

START_TEST(embed_gather_scatter) {
  moe_error err = {0};
  const size_t V = 10, D = 12;
  float table[10 * 12], tex[10 * 12];
  tu_fill(table, V * D, 21);
  moe_weight tw = dev_weight(table, V, D, MOE_F16, tex);
  int32_t ids[4] = {9, 0, 9, 3};
  int32_t *dids = dev_bytes(ids, sizeof ids);
  float *dy = dev_f(NULL, 4 * D), y[4 * 12];
  ck_assert(OPS->embed(BE, dy, &tw, dids, 4, &err) == MOE_OK);
  down(y, dy, sizeof y);
  for (int i = 0; i < 4; i++)
    for (size_t j = 0; j < D; j++) ck_assert_float_eq(y[i * D + j], tex[ids[i] * D + j]);
  /* gather: rows may repeat */
  float src[5 * 12], g[4 * 12];
  tu_fill(src, 5 * D, 22);
  int32_t rows[4] = {4, 4, 0, 2};
  float *dsrc = dev_f(src, 5 * D), *dg = dev_f(NULL, 4 * D);
  int32_t *drows = dev_bytes(rows, sizeof rows);
  ck_assert(OPS->gather_rows(BE, dg, dsrc, drows, 4, D, &err) == MOE_OK);
  down(g, dg, sizeof g);
  for (int i = 0; i < 4; i++) ck_assert_int_eq(memcmp(g + i * D, src + rows[i] * D, D * sizeof(float)), 0);
  /* scatter-add: distinct rows, strided scale, with and without sigmoid */
  float base[5 * 12], part[3 * 12], scale[6] = {0.5f, 99.0f, -2.0f, 99.0f, 1.25f, 99.0f};
  tu_fill(base, 5 * D, 23);
  tu_fill(part, 3 * D, 24);
  int32_t srows[3] = {3, 0, 4};
  int32_t *dsrows = dev_bytes(srows, sizeof srows);
  float *dscale = dev_f(scale, 6), *dpart = dev_f(part, 3 * D);
  for (int sig = 0; sig < 2; sig++) {
    float *ddst = dev_f(base, 5 * D), out[5 * 12];
    ck_assert(OPS->scatter_add_rows(BE, ddst, dpart, dsrows, dscale, 2, sig, 3, D, &err) == MOE_OK);
    down(out, ddst, sizeof out);
    for (int r = 0; r < 5; r++)
      for (size_t j = 0; j < D; j++) {
        double want = base[r * D + j];
        for (int i = 0; i < 3; i++)
          if (srows[i] == r) {
            double s = scale[2 * i];
            if (sig) s = 1.0 / (1.0 + exp(-s));
            want += s * part[i * D + j];
          }
        ck_assert_double_eq_tol(out[r * D + j], want, 1e-6);
      }
    OPS->device_free(BE, ddst);
  }
  void *bufs[] = {(void *)tw.data, dids, dy, dsrc, dg, drows, dsrows, dscale, dpart};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) OPS->device_free(BE, bufs[i]);
}
END_TEST

/* Every op accepts an empty input and does nothing (no launch of an empty
 * grid, no read). */
START_TEST(empty_inputs_are_no_ops) {
  moe_error err = {0};
  float one = 1.0f;
  float *d = dev_f(&one, 1);
  int32_t *di = dev_bytes(NULL, sizeof(int32_t));
  moe_weight w = dev_weight(&one, 1, 1, MOE_F32, NULL);
  moe_attn_shape sh = {0, 1, 0, 4, 2, 1, 4};
  OK(OPS->matmul(BE, d, d, 0, &w, NULL, &e_));
  OK(OPS->rmsnorm(BE, d, d, 0, &w, 1e-5f, &e_));
  OK(moe_backend_rope(OPS, BE, d, 0, di, 2, 4, 10000.0f, NULL, &e_));
  OK(OPS->kv_store(BE, d, d, d, d, &sh, &e_));
  OK(moe_backend_attention(OPS, BE, d, d, d, d, &sh, &e_));
  OK(moe_backend_router_topk(OPS, BE, di, d, d, 0, 1, 1, true, NULL, &e_));
  OK(OPS->swiglu(BE, d, d, d, 0, &e_));
  OK(OPS->add(BE, d, d, 0, &e_));
  OK(OPS->embed(BE, d, &w, di, 0, &e_));
  OK(OPS->gather_rows(BE, d, d, di, 0, 4, &e_));
  OK(OPS->scatter_add_rows(BE, d, d, di, d, 1, false, 0, 4, &e_));
  if (OPS->attention_ex) {
    const moe_attn_ex ax = {0, 1, 0, 4, 4, 2, 1, 4, true, 1.0f, NULL, NULL, 0};
    OK(OPS->attention_ex(BE, d, d, d, d, &ax, &e_));
  }
  if (OPS->unary) OK(OPS->unary(BE, d, d, 0, MOE_UNARY_SCALE, 3.0f, &e_));
  ck_assert(OPS->synchronize(BE, &err) == MOE_OK);
  float back;
  down(&back, d, sizeof back);
  ck_assert_float_eq(back, 1.0f);
  OPS->device_free(BE, d);
  OPS->device_free(BE, di);
  OPS->device_free(BE, (void *)w.data);
}
END_TEST

/* ---- the contract of a modeled backend (MOE_BACKEND_CAP_MODELED): no
 * math and no copied bytes, so what is held is memory, small transfers,
 * routing and the ordering of its clock. */

#define CLOCK() (OPS->modeled_seconds(BE))

START_TEST(modeled_memory_and_small_transfers) {
  ck_assert_ptr_nonnull(OPS->modeled_seconds);
  ck_assert_uint_gt(strlen(OPS->describe(BE)), 0);
  ck_assert_uint_gt(OPS->device_capacity(BE), 0);
  int32_t ids[300], back[300];
  for (int i = 0; i < 300; i++) ids[i] = i * 13 - 7;
  void *d = dev_bytes(ids, sizeof ids);
  ck_assert_uint_eq((uintptr_t)d % 64, 0);
  const double t0 = CLOCK();
  down(back, d, sizeof back);
  ck_assert_int_eq(memcmp(ids, back, sizeof ids), 0); /* small buffers move */
  ck_assert(CLOCK() > t0);                             /* and take time */
  /* a huge allocation costs no memory: it is never touched */
  void *big = NULL;
  moe_error err = {0};
  ck_assert(OPS->device_alloc(BE, (size_t)64 << 30, &big, &err) == MOE_OK);
  OPS->device_free(BE, big);
  OPS->device_free(BE, d);
}
END_TEST

START_TEST(modeled_streams_and_events) {
  moe_error err = {0};
  moe_event *ev = NULL, *rec = NULL, *never = NULL;
  ck_assert(OPS->event_create(BE, &ev, &err) == MOE_OK);
  ck_assert(OPS->event_create(BE, &rec, &err) == MOE_OK);
  ck_assert(OPS->event_create(BE, &never, &err) == MOE_OK);
  ck_assert_int_eq(OPS->event_done(BE, never), 1);
  ck_assert(OPS->compute_wait(BE, never, &err) == MOE_OK);
  void *dst = dev_bytes(NULL, BIG), *src = NULL;
  ck_assert(OPS->host_alloc(BE, BIG, &src, &err) == MOE_OK);
  /* a copy overlaps compute: issuing it takes no compute time */
  const double t0 = CLOCK();
  ck_assert(OPS->copy_h2d_async(BE, dst, src, BIG, ev, &err) == MOE_OK);
  ck_assert(CLOCK() == t0);
  ck_assert_int_eq(OPS->event_done(BE, ev), 0);
  /* compute that waits for it starts after it: the stall is counted */
  const double s0 = OPS->stall_seconds(BE);
  ck_assert(OPS->compute_wait(BE, ev, &err) == MOE_OK);
  const double t1 = CLOCK();
  ck_assert(t1 > t0);
  ck_assert_double_eq_tol(OPS->stall_seconds(BE) - s0, t1 - t0, 1e-12);
  ck_assert_int_eq(OPS->event_done(BE, ev), 1);
  /* copies wait for compute: a copy issued after copy_wait(record) ends
   * one copy time after the record at the earliest */
  float *y = dev_f(NULL, 1024), *x = dev_f(NULL, 1024);
  for (int i = 0; i < 50; i++) ck_assert(OPS->add(BE, y, x, 1024, &err) == MOE_OK);
  ck_assert(OPS->compute_record(BE, rec, &err) == MOE_OK);
  const double t_rec = CLOCK();
  ck_assert(t_rec > t1);
  ck_assert(OPS->copy_wait(BE, rec, &err) == MOE_OK);
  ck_assert(OPS->copy_h2d_async(BE, dst, src, BIG, ev, &err) == MOE_OK);
  ck_assert(OPS->event_sync(BE, ev, &err) == MOE_OK);
  ck_assert(CLOCK() >= t_rec + (t1 - t0) - 1e-12);
  ck_assert(OPS->synchronize(BE, &err) == MOE_OK);
  OPS->event_destroy(BE, ev);
  OPS->event_destroy(BE, rec);
  OPS->event_destroy(BE, never);
  OPS->device_free(BE, dst);
  OPS->device_free(BE, x);
  OPS->device_free(BE, y);
  OPS->host_free(BE, src);
}
END_TEST

START_TEST(modeled_router_gives_valid_routing) {
  moe_error err = {0};
  const size_t m = 37;
  const int n = 20, k = 3;
  int32_t *d_idx = dev_bytes(NULL, m * k * sizeof(int32_t)), idx[37 * 3];
  float *d_w = dev_f(NULL, m * k), w[37 * 3];
  float *logits = dev_f(NULL, m * n);
  for (int renorm = 0; renorm < 2; renorm++) {
    ck_assert(moe_backend_router_topk(OPS, BE, d_idx, d_w, logits, m, n, k, renorm, NULL, &err) ==
              MOE_OK);
    down(idx, d_idx, sizeof idx);
    down(w, d_w, sizeof w);
    for (size_t r = 0; r < m; r++) {
      double sum = 0;
      for (int a = 0; a < k; a++) {
        ck_assert(idx[r * k + a] >= 0 && idx[r * k + a] < n);
        for (int b = 0; b < a; b++) ck_assert_int_ne(idx[r * k + a], idx[r * k + b]);
        ck_assert(w[r * k + a] > 0 && w[r * k + a] <= 1);
        sum += w[r * k + a];
      }
      if (renorm) ck_assert_double_eq_tol(sum, 1.0, 1e-6);
    }
  }
  /* the DeepSeek-style router too: valid experts, weights renormalised and scaled */
  moe_router_ex r = {3, MOE_SCORING_SIGMOID, NULL, 4, 2, MOE_GROUP_TOP2_SUM, true, 2.5f, false};
  ck_assert(OPS->router_topk_ex(BE, d_idx, d_w, logits, m, n, &r, &err) == MOE_OK);
  down(idx, d_idx, sizeof idx);
  down(w, d_w, sizeof w);
  for (size_t t = 0; t < m; t++) {
    double sum = 0;
    for (int a = 0; a < k; a++) {
      ck_assert(idx[t * k + a] >= 0 && idx[t * k + a] < n);
      for (int b = 0; b < a; b++) ck_assert_int_ne(idx[t * k + a], idx[t * k + b]);
      sum += w[t * k + a];
    }
    ck_assert_double_eq_tol(sum, 2.5, 1e-5);
  }
  moe_router_ex bad = {3, MOE_SCORING_SIGMOID, NULL, 3, 1, MOE_GROUP_MAX, true, 1.0f, false}; /* 20 % 3 */
  ck_assert_int_eq(OPS->router_topk_ex(BE, d_idx, d_w, logits, m, n, &bad, &err), MOE_ERR_INVALID);
  OPS->device_free(BE, d_idx);
  OPS->device_free(BE, d_w);
  OPS->device_free(BE, logits);
}
END_TEST

START_TEST(modeled_ops_take_time_and_empty_ones_none) {
  moe_error err = {0};
  float *y = dev_f(NULL, 4096), *x = dev_f(NULL, 4096);
  moe_weight w = {dev_bytes(NULL, 4096 * 4), MOE_F32, 64, 64};
  double t = CLOCK();
  ck_assert(OPS->matmul(BE, y, x, 0, &w, NULL, &err) == MOE_OK);
  ck_assert(OPS->add(BE, y, x, 0, &err) == MOE_OK);
  ck_assert(OPS->upload(BE, y, x, 0, &err) == MOE_OK);
  ck_assert(CLOCK() == t);
  ck_assert(OPS->matmul(BE, y, x, 4, &w, NULL, &err) == MOE_OK);
  ck_assert(CLOCK() > t);
  t = CLOCK();
  ck_assert(OPS->rmsnorm(BE, y, x, 4, &w, 1e-6f, &err) == MOE_OK);
  ck_assert(OPS->swiglu(BE, y, y, x, 256, &err) == MOE_OK);
  ck_assert(CLOCK() > t);
  OPS->device_free(BE, y);
  OPS->device_free(BE, x);
  OPS->device_free(BE, (void *)w.data);
}
END_TEST

/* ---- the legacy ops: one adapter each over the _ex methods (backend.h) */

/* The legacy rope, attention and router of a backend through the adapters
 * equal its _ex methods called directly with the arguments backend.h says
 * the adapters pass, bit for bit; and the legacy router ranks on the
 * biased logits, never on rounded probabilities. */
START_TEST(legacy_adapters_are_the_ex_ops) {
  moe_error err = {0};
  const int heads = 3, hd = 16, m = 5, half = hd / 2;
  const size_t xn = (size_t)m * heads * hd;
  float x[5 * 3 * 16], a[5 * 3 * 16], b[5 * 3 * 16], freq[8];
  tu_fill(x, xn, 41);
  int32_t pos[5] = {0, 1, 7, 300, 4095};
  for (int i = 0; i < half; i++) freq[i] = 1.0f / powf(1e6f, (float)(2 * i) / (float)hd);
  int32_t *dpos = dev_bytes(pos, sizeof pos);
  float *dfreq = dev_f(freq, half), *da = dev_f(x, xn), *db = dev_f(x, xn), *dc = dev_f(x, xn);
  const moe_rope_ex re = {heads, (size_t)heads * hd, hd, 0, hd, false, dfreq, 1.0f, 0};
  ck_assert(moe_backend_rope(OPS, BE, da, m, dpos, heads, hd, 1e6f, NULL, &err) == MOE_OK);
  ck_assert(moe_backend_rope(OPS, BE, dc, m, dpos, heads, hd, 1e6f, dfreq, &err) == MOE_OK);
  ck_assert(OPS->rope_ex(BE, db, m, dpos, &re, &err) == MOE_OK);
  down(a, da, sizeof a);
  down(b, db, sizeof b);
  ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
  down(a, dc, sizeof a);
  ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
  ck_assert_int_eq(moe_backend_rope(OPS, BE, da, m, dpos, heads, 7, 1e4f, NULL, &err), MOE_ERR_INVALID);
  /* attention: 2 sequences, 3 new tokens at 4..6 of a cache of 8 (the
   * rope buffers serve as q and the caches) */
  const moe_attn_shape sh = {2, 3, 4, 8, 4, 2, 8};
  const moe_attn_ex ax = {2, 3, 4, 7, 8, 4, 2, 8, true, 1.0f / sqrtf(8.0f), NULL, NULL, 0};
  float *kc = dev_f(NULL, 2 * 2 * 8 * 8), *vc = dev_f(NULL, 2 * 2 * 8 * 8);
  float cache[2 * 2 * 8 * 8];
  tu_fill(cache, 256, 42);
  ck_assert(OPS->upload(BE, kc, cache, sizeof cache, &err) == MOE_OK);
  tu_fill(cache, 256, 43);
  ck_assert(OPS->upload(BE, vc, cache, sizeof cache, &err) == MOE_OK);
  ck_assert(moe_backend_attention(OPS, BE, da, dc, kc, vc, &sh, &err) == MOE_OK);
  ck_assert(OPS->attention_ex(BE, db, dc, kc, vc, &ax, &err) == MOE_OK);
  down(a, da, 6 * 32 * sizeof(float));
  down(b, db, 6 * 32 * sizeof(float));
  ck_assert_int_eq(memcmp(a, b, 6 * 32 * sizeof(float)), 0);
  /* router: random rows and a row whose two best logits differ by less
   * than their probabilities can show (0 and 1e-9: both round to the same
   * probability); the larger logit, expert 1, ranks first */
  const int n = 8, k = 3;
  float lg[4 * 8], biasf[8], w1[12], w2[12];
  int32_t i1[12], i2[12];
  tu_fill(lg, 32, 44);
  tu_fill(biasf, 8, 45);
  for (int e = 0; e < n; e++) lg[e] = -10.0f;
  lg[0] = 0.0f;
  lg[1] = 1e-9f;
  float *dl = dev_f(lg, 32), *dw = dev_f(NULL, 12);
  int32_t *di = dev_bytes(NULL, sizeof i1);
  moe_weight bw = dev_weight(biasf, 1, n, MOE_F32, NULL);
  for (int with_bias = 0; with_bias < 2; with_bias++)
    for (int renorm = 0; renorm < 2; renorm++) {
      const moe_weight *bias = with_bias ? &bw : NULL;
      const moe_router_ex rx = {k, MOE_SCORING_SOFTMAX_LOGITS, bias, 0, 0, MOE_GROUP_MAX,
                                renorm, 1.0f, false};
      if (OPS->set_context) OPS->set_context(BE, 1, -1, 5); /* the same draw for both (sim) */
      ck_assert(moe_backend_router_topk(OPS, BE, di, dw, dl, 4, n, k, renorm, bias, &err) == MOE_OK);
      down(i1, di, sizeof i1);
      down(w1, dw, sizeof w1);
      if (OPS->set_context) OPS->set_context(BE, 1, -1, 5);
      ck_assert(OPS->router_topk_ex(BE, di, dw, dl, 4, n, &rx, &err) == MOE_OK);
      down(i2, di, sizeof i2);
      down(w2, dw, sizeof w2);
      ck_assert_int_eq(memcmp(i1, i2, sizeof i1), 0);
      ck_assert_int_eq(memcmp(w1, w2, sizeof w1), 0);
      if (!(OPS->caps & MOE_BACKEND_CAP_MODELED) && !with_bias)
        ck_assert_msg(i1[0] == 1 && i1[1] == 0, "ranked %d, %d: not on the logits", i1[0], i1[1]);
    }
  /* SOFTMAX_LOGITS takes no groups */
  const moe_router_ex grouped = {k, MOE_SCORING_SOFTMAX_LOGITS, NULL, 2, 1, MOE_GROUP_MAX, true,
                                 1.0f, false};
  ck_assert_int_eq(OPS->router_topk_ex(BE, di, dw, dl, 4, n, &grouped, &err), MOE_ERR_INVALID);
  void *bufs[] = {dpos, dfreq, da, db, dc, kc, vc, dl, dw, di, (void *)bw.data};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) OPS->device_free(BE, bufs[i]);
}
END_TEST

/* On a modeled backend the adapters charge what the _ex ops charge. */
START_TEST(modeled_legacy_adapters_charge_as_ex) {
  moe_error err = {0};
  float *a = dev_f(NULL, 4096), *b = dev_f(NULL, 4096);
  int32_t *ix = dev_bytes(NULL, 4096);
  const moe_attn_shape sh = {2, 3, 5, 16, 4, 2, 32};
  const moe_attn_ex ax = {2, 3, 5, 8, 16, 4, 2, 32, true, 1.0f / sqrtf(32.0f), NULL, NULL, 0};
  const moe_rope_ex re = {4, 128, 32, 0, 32, false, a, 1.0f, 0};
  const moe_router_ex rx = {2, MOE_SCORING_SOFTMAX_LOGITS, NULL, 0, 0, MOE_GROUP_MAX, true, 1.0f,
                            false};
  double t0 = CLOCK();
  ck_assert(moe_backend_rope(OPS, BE, a, 6, ix, 4, 32, 1e4f, a, &err) == MOE_OK);
  const double legacy_rope = CLOCK() - t0;
  t0 = CLOCK();
  ck_assert(OPS->rope_ex(BE, a, 6, ix, &re, &err) == MOE_OK);
  ck_assert(legacy_rope > 0 && CLOCK() - t0 == legacy_rope);
  t0 = CLOCK();
  ck_assert(moe_backend_attention(OPS, BE, b, a, a, a, &sh, &err) == MOE_OK);
  const double legacy_attn = CLOCK() - t0;
  t0 = CLOCK();
  ck_assert(OPS->attention_ex(BE, b, a, a, a, &ax, &err) == MOE_OK);
  ck_assert(legacy_attn > 0 && CLOCK() - t0 == legacy_attn);
  t0 = CLOCK();
  ck_assert(moe_backend_router_topk(OPS, BE, ix, b, a, 6, 16, 2, true, NULL, &err) == MOE_OK);
  const double legacy_route = CLOCK() - t0;
  t0 = CLOCK();
  ck_assert(OPS->router_topk_ex(BE, ix, b, a, 6, 16, &rx, &err) == MOE_OK);
  ck_assert(legacy_route > 0 && CLOCK() - t0 == legacy_route);
  OPS->device_free(BE, a);
  OPS->device_free(BE, b);
  OPS->device_free(BE, ix);
}
END_TEST

/* ---- the table contract: validation, the op query, old tables */

/* An independent account of each optional op's method (not
 * moe_backend_supports) and of where it sits in the table. */
static bool has_op(const moe_backend_ops *o, moe_backend_op op, size_t *end) {
#define SLOT(f) (*end = offsetof(moe_backend_ops, f) + sizeof o->f, o->f != NULL)
  switch (op) {
  case MOE_OP_ATTENTION_EX: return SLOT(attention_ex);
  case MOE_OP_UNARY: return SLOT(unary);
  case MOE_OP_ROUTER_TOPK_EX: return SLOT(router_topk_ex);
  case MOE_OP_ROPE_EX: return SLOT(rope_ex);
  case MOE_OP_MLA_ATTENTION: return SLOT(mla_attention);
  case MOE_OP_DOWNLOAD_MANY: return SLOT(download_many);
  case MOE_OP_ARGMAX_ROWS: return SLOT(argmax_rows);
  case MOE_OP_HOST_REGISTER: return SLOT(host_register);
  case MOE_OP_COUNT: break;
  }
#undef SLOT
  ck_abort_msg("op %d unknown to the test", (int)op);
  return false;
}

static void clear_op(moe_backend_ops *o, moe_backend_op op) {
  switch (op) {
  case MOE_OP_ATTENTION_EX: o->attention_ex = NULL; break;
  case MOE_OP_UNARY: o->unary = NULL; break;
  case MOE_OP_ROUTER_TOPK_EX: o->router_topk_ex = NULL; break;
  case MOE_OP_ROPE_EX: o->rope_ex = NULL; break;
  case MOE_OP_MLA_ATTENTION: o->mla_attention = NULL; break;
  case MOE_OP_DOWNLOAD_MANY: o->download_many = NULL; break;
  case MOE_OP_ARGMAX_ROWS: o->argmax_rows = NULL; break;
  case MOE_OP_HOST_REGISTER: o->host_register = NULL; break;
  case MOE_OP_COUNT: break;
  }
}

/* The minor version whose table first holds a field ending at end. */
static int field_minor(size_t end) {
  const size_t sizes[] = {MOE_BACKEND_SIZE_1_0, MOE_BACKEND_SIZE_1_1, MOE_BACKEND_SIZE_1_2,
                          MOE_BACKEND_SIZE_1_3, MOE_BACKEND_SIZE_1_4, MOE_BACKEND_SIZE_1_5,
                          MOE_BACKEND_SIZE_1_6};
  for (int v = 0; v < (int)(sizeof sizes / sizeof *sizes); v++)
    if (end <= sizes[v]) return v;
  return -1;
}

/* Every compiled-in table: valid, of this minor version, the _ex forms
 * only (the legacy ops are the engine's adapters), and supports(op) as
 * the table says; require on a table lacking an op names the backend, the
 * op, the ABI version it arrived in (as the table's layout says) and who
 * needs it. */
START_TEST(tables_and_the_op_query) {
  ck_assert_str_eq(moe_backend_op_name(MOE_OP_COUNT), "?");
  for (size_t i = 0; i < moe_backend_count(); i++) {
    const moe_backend_ops *raw = moe_backend_at(i);
    moe_error err = {0};
    ck_assert_msg(moe_backend_validate(raw, &err) == MOE_OK, "%s: %s", raw->name, err.msg);
    moe_backend_ops o;
    moe_backend_normalize(raw, &o);
    ck_assert_uint_eq(moe_backend_abi_minor(&o), MOE_BACKEND_ABI_MINOR);
    ck_assert_msg(!o.rope && !o.attention && !o.router_topk, "%s has legacy methods", o.name);
    ck_assert(o.rope_ex && o.attention_ex && o.router_topk_ex);
    unsigned all = 0;
    for (int op = 0; op < MOE_OP_COUNT; op++) {
      size_t end = 0;
      const bool has = has_op(&o, (moe_backend_op)op, &end);
      ck_assert_msg(moe_backend_supports(&o, (moe_backend_op)op) == has, "%s: %s", o.name,
                    moe_backend_op_name((moe_backend_op)op));
      for (int p = 0; p < op; p++)
        ck_assert_str_ne(moe_backend_op_name((moe_backend_op)op), moe_backend_op_name((moe_backend_op)p));
      if (!has) continue;
      all |= MOE_OP_BIT(op);
      moe_backend_ops lacking = o;
      clear_op(&lacking, (moe_backend_op)op);
      ck_assert(!moe_backend_supports(&lacking, (moe_backend_op)op));
      moe_error e2 = {0};
      ck_assert_int_eq(moe_backend_require(&lacking, MOE_OP_BIT(op), "the test family", &e2),
                       MOE_ERR_UNSUPPORTED);
      char abi[32];
      snprintf(abi, sizeof abi, "ABI 1.%d", field_minor(end));
      const char *want[] = {o.name, moe_backend_op_name((moe_backend_op)op), abi, "the test family"};
      for (size_t w = 0; w < sizeof want / sizeof *want; w++)
        ck_assert_msg(strstr(e2.msg, want[w]), "'%s' lacks '%s'", e2.msg, want[w]);
    }
    ck_assert_int_eq(moe_backend_require(&o, all, "all", &err), MOE_OK);
    ck_assert_int_eq(moe_backend_require(&o, 0, "nothing", &err), MOE_OK);
  }
}
END_TEST

/* The legacy methods of an ABI 1.0 table, in plain C on the cpu backend's
 * memory (host memory), counting their calls. */
static int g_legacy_calls;
static moe_status legacy_rope(moe_backend *be, float *x, size_t m, const int32_t *pos, int nh,
                              int hd, float theta, moe_error *err) {
  g_legacy_calls++;
  for (size_t t = 0; t < m; t++)
    for (int i = 0; i < hd / 2; i++) {
      const float ang = (float)pos[t] * (1.0f / powf(theta, (float)(2 * i) / (float)hd));
      const float c = cosf(ang), s = sinf(ang);
      for (int h = 0; h < nh; h++) {
        float *v = x + (t * (size_t)nh + (size_t)h) * (size_t)hd;
        const float a = v[i], b = v[i + hd / 2];
        v[i] = a * c - b * s;
        v[i + hd / 2] = b * c + a * s;
      }
    }
  return MOE_OK;
}
static moe_status legacy_attention(moe_backend *be, float *out, const float *q, const float *kc,
                                   const float *vc, const moe_attn_shape *s, moe_error *err) {
  g_legacy_calls++;
  const int hd = s->head_dim, group = s->n_heads / s->n_kv_heads;
  for (int b = 0; b < s->n_seq; b++)
    for (int t = 0; t < s->n_new; t++)
      for (int h = 0; h < s->n_heads; h++) {
        const size_t row = ((size_t)b * s->n_new + t) * s->n_heads * hd + (size_t)h * hd;
        const size_t base = ((size_t)b * s->n_kv_heads + h / group) * s->max_seq * hd;
        float sc[64], mx = -INFINITY, sum = 0.0f;
        for (int j = 0; j <= s->pos0 + t; j++) {
          float d = 0.0f;
          for (int i = 0; i < hd; i++) d += q[row + i] * kc[base + (size_t)j * hd + i];
          sc[j] = d / sqrtf((float)hd);
          mx = fmaxf(mx, sc[j]);
        }
        for (int j = 0; j <= s->pos0 + t; j++) sum += sc[j] = expf(sc[j] - mx);
        for (int i = 0; i < hd; i++) {
          float o = 0.0f;
          for (int j = 0; j <= s->pos0 + t; j++) o += sc[j] / sum * vc[base + (size_t)j * hd + i];
          out[row + i] = o;
        }
      }
  return MOE_OK;
}
static moe_status legacy_router(moe_backend *be, int32_t *idx, float *wts, const float *logits,
                                size_t m, int n, int k, bool renorm, const moe_weight *bias,
                                moe_error *err) {
  g_legacy_calls++;
  for (size_t t = 0; t < m; t++) {
    float z[64], mx = -INFINITY, sum = 0.0f, tsum = 0.0f;
    for (int e = 0; e < n; e++) {
      z[e] = logits[t * n + e] + (bias ? ((const float *)bias->data)[e] : 0.0f);
      mx = z[e] > mx ? z[e] : mx;
    }
    for (int e = 0; e < n; e++) sum += expf(z[e] - mx);
    for (int j = 0; j < k; j++) {
      int best = -1;
      for (int e = 0; e < n; e++) {
        bool taken = false;
        for (int q = 0; q < j; q++) taken |= idx[t * k + q] == e;
        if (!taken && (best < 0 || z[e] > z[best])) best = e;
      }
      idx[t * k + j] = best;
      tsum += wts[t * k + j] = expf(z[best] - mx) / sum;
    }
    for (int j = 0; renorm && j < k; j++) wts[t * k + j] /= tsum;
  }
  return MOE_OK;
}

/* Runs the three legacy ops through the adapters on dev; out: rope,
 * attention and router outputs in order. */
static void legacy_ops_on(moe_device *dev, float *out_f, int32_t *out_i) {
  const moe_backend_ops *o = dev->ops;
  moe_error err = {0};
  float x[4 * 2 * 8], cache[2 * 8 * 8], lg[4 * 8], bias[8];
  int32_t pos[4] = {0, 1, 2, 3};
  tu_fill(x, 64, 51);
  tu_fill(cache, 128, 52);
  tu_fill(lg, 32, 53);
  tu_fill(bias, 8, 54);
  void *dx, *dq, *dc, *dp, *dl, *db, *di, *dw;
  const size_t sizes[] = {sizeof x, sizeof x, sizeof cache, sizeof pos, sizeof lg, sizeof bias,
                          12 * sizeof(int32_t), 12 * sizeof(float)};
  void **bufs[] = {&dx, &dq, &dc, &dp, &dl, &db, &di, &dw};
  const void *init[] = {x, x, cache, pos, lg, bias, NULL, NULL};
  for (int i = 0; i < 8; i++) {
    ck_assert(moe_device_alloc(dev, MOE_MEM_WORKSPACE, sizes[i], "test", bufs[i], &err) == MOE_OK);
    if (init[i]) ck_assert(o->upload(dev->be, *bufs[i], init[i], sizes[i], &err) == MOE_OK);
  }
  ck_assert(moe_backend_rope(o, dev->be, dx, 4, dp, 2, 8, 1e4f, NULL, &err) == MOE_OK);
  const moe_attn_shape sh = {1, 4, 0, 8, 2, 1, 8}; /* the new rows over a cache of 8 */
  ck_assert(moe_backend_attention(o, dev->be, dq, dx, dc, dc, &sh, &err) == MOE_OK);
  const moe_weight bw = {db, MOE_F32, 1, 8};
  ck_assert(moe_backend_router_topk(o, dev->be, di, dw, dl, 4, 8, 3, true, &bw, &err) == MOE_OK);
  ck_assert(o->download(dev->be, out_f, dx, sizeof x, &err) == MOE_OK);
  ck_assert(o->download(dev->be, out_f + 64, dq, sizeof x, &err) == MOE_OK);
  ck_assert(o->download(dev->be, out_f + 128, dw, 12 * sizeof(float), &err) == MOE_OK);
  ck_assert(o->download(dev->be, out_i, di, 12 * sizeof(int32_t), &err) == MOE_OK);
}

/* A table built for ABI 1.0 (the cpu backend's methods, the three legacy
 * ops of its time, nothing past the 1.0 size: the bytes there are
 * garbage) validates, opens and runs through the adapters, which call its
 * legacy methods; the results are the cpu backend's (rope and router bit
 * for bit). */
START_TEST(abi_1_0_table_runs_through_the_adapters) {
  union {
    moe_backend_ops ops;
    unsigned char bytes[sizeof(moe_backend_ops)];
  } t;
  memcpy(&t.ops, moe_backend_find("cpu"), MOE_BACKEND_SIZE_1_0);
  memset(t.bytes + MOE_BACKEND_SIZE_1_0, 0xa5, sizeof t - MOE_BACKEND_SIZE_1_0);
  t.ops.name = "legacy-1.0";
  t.ops.struct_size = (uint32_t)MOE_BACKEND_SIZE_1_0;
  t.ops.rope = legacy_rope;
  t.ops.attention = legacy_attention;
  t.ops.router_topk = legacy_router;
  moe_error err = {0};
  ck_assert_msg(moe_backend_validate(&t.ops, &err) == MOE_OK, "%s", err.msg);
  ck_assert_uint_eq(moe_backend_abi_minor(&t.ops), 0);
  moe_device legacy, cpu;
  ck_assert_msg(moe_device_open_ops(&legacy, &t.ops, NULL, &err) == MOE_OK, "%s", err.msg);
  ck_assert(legacy.ops->rope_ex == NULL && legacy.ops->router_topk_ex == NULL);
  ck_assert_uint_eq(moe_backend_abi_minor(legacy.ops), 0);
  ck_assert(moe_device_open(&cpu, "cpu", NULL, &err) == MOE_OK);
  float f1[64 + 64 + 12], f2[64 + 64 + 12];
  int32_t i1[12], i2[12];
  g_legacy_calls = 0;
  legacy_ops_on(&legacy, f1, i1);
  ck_assert_int_eq(g_legacy_calls, 3);
  legacy_ops_on(&cpu, f2, i2);
  ck_assert_int_eq(g_legacy_calls, 3);
  ck_assert_int_eq(memcmp(f1, f2, 64 * sizeof(float)), 0);        /* rope */
  for (int i = 64; i < 128; i++) ck_assert_float_eq_tol(f1[i], f2[i], 1e-5f); /* attention */
  ck_assert_int_eq(memcmp(i1, i2, sizeof i1), 0);                  /* router */
  ck_assert_int_eq(memcmp(f1 + 128, f2 + 128, 12 * sizeof(float)), 0);
  moe_device_close(&legacy);
  moe_device_close(&cpu);
}
END_TEST

/* Validation asks for each legacy op or its _ex form; router_topk_ex stands
 * in for router_topk from ABI 1.6 on only (an older table's does not know
 * SOFTMAX_LOGITS, so the adapter calls its router_topk); a 1.6 table says
 * its minor version. */
START_TEST(validation_of_the_legacy_ops) {
  const moe_backend_ops *cpu = moe_backend_find("cpu");
  moe_error err = {0};
  moe_backend_ops t;
  memcpy(&t, cpu, sizeof t);
  t.attention_ex = NULL;
  ck_assert_int_eq(moe_backend_validate(&t, &err), MOE_ERR_INVALID);
  ck_assert_msg(strstr(err.msg, "'attention'") && strstr(err.msg, "attention_ex"), "%s", err.msg);
  memcpy(&t, cpu, sizeof t);
  moe_error_clear(&err);
  t.rope_ex = NULL;
  ck_assert_int_eq(moe_backend_validate(&t, &err), MOE_ERR_INVALID);
  ck_assert_msg(strstr(err.msg, "'rope'"), "%s", err.msg);
  memcpy(&t, cpu, sizeof t);
  moe_error_clear(&err);
  t.abi_minor = 5;
  ck_assert_int_eq(moe_backend_validate(&t, &err), MOE_ERR_INVALID);
  ck_assert_msg(strstr(err.msg, "abi_minor"), "%s", err.msg);
  /* a 1.5 table: router_topk_ex alone is not enough, with router_topk it is */
  memcpy(&t, cpu, sizeof t);
  moe_error_clear(&err);
  t.struct_size = (uint32_t)MOE_BACKEND_SIZE_1_5;
  ck_assert_int_eq(moe_backend_validate(&t, &err), MOE_ERR_INVALID);
  ck_assert_msg(strstr(err.msg, "'router_topk'"), "%s", err.msg);
  t.router_topk = legacy_router;
  ck_assert_msg(moe_backend_validate(&t, &err) == MOE_OK, "%s", err.msg);
  moe_device dev;
  ck_assert(moe_device_open_ops(&dev, &t, NULL, &err) == MOE_OK);
  ck_assert_uint_eq(moe_backend_abi_minor(dev.ops), 5);
  float lg[8] = {0, 1, 2, 3, 4, 5, 6, 7}, w[2];
  int32_t idx[2];
  float *dl = NULL, *dw = NULL;
  int32_t *di = NULL;
  ck_assert(moe_device_alloc(&dev, MOE_MEM_WORKSPACE, sizeof lg, "l", (void **)&dl, &err) == MOE_OK);
  ck_assert(moe_device_alloc(&dev, MOE_MEM_WORKSPACE, sizeof w, "w", (void **)&dw, &err) == MOE_OK);
  ck_assert(moe_device_alloc(&dev, MOE_MEM_WORKSPACE, sizeof idx, "i", (void **)&di, &err) == MOE_OK);
  ck_assert(dev.ops->upload(dev.be, dl, lg, sizeof lg, &err) == MOE_OK);
  g_legacy_calls = 0;
  ck_assert(moe_backend_router_topk(dev.ops, dev.be, di, dw, dl, 1, 8, 2, true, NULL, &err) == MOE_OK);
  ck_assert_int_eq(g_legacy_calls, 1); /* the legacy method, not router_topk_ex */
  ck_assert(dev.ops->download(dev.be, idx, di, sizeof idx, &err) == MOE_OK);
  ck_assert(idx[0] == 7 && idx[1] == 6);
  moe_device_close(&dev);
}
END_TEST

static int run_contract(void) {
  Suite *s = suite_create("backend conformance");
  TCase *tc = tcase_create("the table contract");
  tcase_add_test(tc, tables_and_the_op_query);
  tcase_add_test(tc, abi_1_0_table_runs_through_the_adapters);
  tcase_add_test(tc, validation_of_the_legacy_ops);
  suite_add_tcase(s, tc);
  printf("== the table contract\n");
  return tu_run_suite_nofork(s);
}

static int run_modeled(const char *backend) {
  g_backend = backend;
  g_link = 0;
  g_threads = 1;
  g_hardware = MOE_SOURCE_DIR "/workloads/hardware/a100-80g-pcie4.json";
  char name[160];
  snprintf(name, sizeof name, "%s (modeled, a100-80g-pcie4)", backend);
  Suite *s = suite_create("backend conformance");
  TCase *tc = tcase_create(name);
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, modeled_memory_and_small_transfers);
  tcase_add_test(tc, modeled_streams_and_events);
  tcase_add_test(tc, modeled_router_gives_valid_routing);
  tcase_add_test(tc, modeled_ops_take_time_and_empty_ones_none);
  tcase_add_test(tc, modeled_legacy_adapters_charge_as_ex);
  tcase_add_test(tc, legacy_adapters_are_the_ex_ops);
  suite_add_tcase(s, tc);
  printf("== %s\n", name);
  int rc = tu_run_suite_nofork(s);
  g_hardware = NULL;
  return rc;
}

static int run_for(const char *backend, double link, int threads, const char *variant) {
  g_backend = backend;
  g_link = link;
  g_threads = threads;
  char name[160];
  snprintf(name, sizeof name, "%s%s, %d thread%s%s%s", backend, link > 0 ? " (capped link)" : "",
           threads, threads == 1 ? "" : "s", variant ? ", " : "", variant ? variant : "");
  Suite *s = suite_create("backend conformance");
  TCase *tc = tcase_create(name);
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, identity_and_memory);
  tcase_add_test(tc, copies_and_events);
  tcase_add_test(tc, compute_waits_for_copies);
  tcase_add_test(tc, copies_wait_for_compute);
  tcase_add_test(tc, teardown_with_copies_in_flight);
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
  tcase_add_test(tc, embed_gather_scatter);
  tcase_add_test(tc, empty_inputs_are_no_ops);
  tcase_add_test(tc, matmul_16bit_activations_saturate);
  tcase_add_test(tc, download_many_definition);
  tcase_add_test(tc, argmax_rows_definition);
  tcase_add_test(tc, legacy_adapters_are_the_ex_ops);
  suite_add_tcase(s, tc);
  printf("== %s\n", name);
  return tu_run_suite_nofork(s);
}

/* Check runs each test in a forked child by default; a CUDA context does
 * not survive fork (the probe below initialises CUDA in this process), so
 * every suite runs in this process (CK_FORK=no, set by ctest as well).
 * MOE_CONFORMANCE_BACKEND=NAME limits the run to one backend (the GPU
 * check runs the cuda cases alone under compute-sanitizer). */
int main(void) {
  int failed = 0;
  const char *only = getenv("MOE_CONFORMANCE_BACKEND");
  if (!(only && *only)) failed |= run_contract();
  if (only && *only && moe_backend_find(only) == NULL) {
    fprintf(stderr, "MOE_CONFORMANCE_BACKEND=%s: no such backend in this build\n", only);
    return 2;
  }
  for (size_t i = 0; i < moe_backend_count(); i++) {
    const moe_backend_ops *o = moe_backend_at(i);
    if (only && *only && strcmp(o->name, only) != 0) continue;
    char desc[256];
    moe_error err = {0};
    if (o->probe &&
        o->probe(desc, sizeof desc, &err) != MOE_OK) {
      printf("== %s: skipped (%s)\n", o->name, err.msg);
      if (only && *only) return 77; /* the one backend asked for cannot run here */
      continue;
    }
    if (o->caps & MOE_BACKEND_CAP_MODELED) {
      failed |= run_modeled(o->name);
      continue;
    }
    failed |= run_for(o->name, 0.0, 1, NULL);
    failed |= run_for(o->name, 0.0, 2, NULL);
    if (o->caps & MOE_BACKEND_CAP_LINK_CAP) failed |= run_for(o->name, 0.5, 1, NULL);
    if (strcmp(o->name, "cpu") == 0) {
      /* the cpu backend's reference path for 16-bit weights, forced */
      setenv("MOE_CPU_HALF", "portable", 1);
      failed |= run_for(o->name, 0.0, 2, "portable 16-bit path");
      unsetenv("MOE_CPU_HALF");
    }
  }
  return failed;
}
