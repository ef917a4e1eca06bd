/* Calibration of this machine's backend as a hardware profile (calibration.h). */
#include "calibration.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "moe/backend.h"
#include "moe/clock.h"
#include "moe/model.h"
#include "runner.h"
#include "suite.h"

const cal_shapes cal_default_shapes = {{3072, 768, 768}, {768, 3072, 768}, 3};


enum { CAL_SET_BYTES = 256 << 20, CAL_MAX_W = 512 };
/* The link's bandwidth copies: 64 MB, or under a cap about CAL_COPY_S
 * seconds' worth (64 MB at the smallest cap, 1 MB/s, would take over a
 * minute a copy, and calibrate makes about ten of them). */
#define CAL_COPY_BYTES ((size_t)64 << 20)
#define CAL_COPY_MIN ((size_t)64 << 10)
#define CAL_COPY_S 0.1

/* Bytes per bandwidth copy of calibrate at link cap `link` GB/s (0: none). */
static size_t cal_copy_bytes(double link) {
  if (!(link > 0) || link * 1e9 * CAL_COPY_S >= (double)CAL_COPY_BYTES) return CAL_COPY_BYTES;
  size_t b = (size_t)(link * 1e9 * CAL_COPY_S) & ~(size_t)4095;
  return b < CAL_COPY_MIN ? CAL_COPY_MIN : b;
}


static double median3(double a, double b, double c) {
  double v[3] = {a, b, c};
  return runner_median(v, 3);
}

/* Seconds for one pass of y = x w^T over the whole set of weights at m rows:
 * until the device is idle, or with done (an event) until the compute
 * stream is, whatever the copy stream still has queued. */
static double pass_time_until(moe_device *d, float *y, const float *x, size_t m,
                              const moe_weight *w, int nw, moe_event *done, moe_error *err) {
  const moe_backend_ops *o = moe_device_ops(d);
  moe_backend *be = moe_device_backend(d);
  const double t0 = moe_clock_s();
  for (int i = 0; i < nw; i++)
    if (o->matmul(be, y, x, m, &w[i], NULL, err) != MOE_OK) return NAN;
  if (done ? o->compute_record(be, done, err) != MOE_OK || o->event_sync(be, done, err) != MOE_OK
           : o->synchronize(be, err) != MOE_OK)
    return NAN;
  return moe_clock_s() - t0;
}

static double pass_time(moe_device *d, float *y, const float *x, size_t m, const moe_weight *w,
                        int nw, moe_error *err) {
  return pass_time_until(d, y, x, m, w, nw, NULL, err);
}

/* One calibration's state: the device, its buffers (all through
 * moe_device_alloc, so moe_device_close frees them on every path) and the
 * profile being filled. */
typedef struct cal_ctx {
  moe_device *d;
  const moe_backend_ops *o; /* its table and instance */
  moe_backend *be;
  const char *backend;
  moe_error err;
  bool quiet;
  moe_weight w[CAL_MAX_W], w16[CAL_MAX_W]; /* f32 weights, and the same in bf16 */
  int nw;
  size_t set_bytes, max_dim;
  double flops_per_row; /* of one pass at m = 1 */
  float *x, *y, *small;
  moe_hw_profile p;
} cal_ctx;

/* A device buffer of `bytes` filled with a small repeating f32 pattern
 * (in dtype dt), uploaded from the host: the device's memory may not be
 * the host's (cuda). */
static moe_status cal_buffer(cal_ctx *c, size_t bytes, moe_dtype dt, const char *what, void **out) {
  moe_status st = moe_device_alloc(c->d, MOE_MEM_WORKSPACE, bytes, what, out, &c->err);
  if (st != MOE_OK) return st;
  const size_t n = bytes / moe_dtype_size(dt);
  float *f = malloc(n * sizeof *f);
  void *h = dt == MOE_F32 ? (void *)f : malloc(bytes);
  if (f == NULL || h == NULL) {
    free(f);
    if (h != (void *)f) free(h);
    return MOE_FAIL(&c->err, MOE_ERR_OOM, "calibrate: out of host memory");
  }
  for (size_t q = 0; q < n; q++) f[q] = 1e-3f * (float)(q % 13);
  if (dt != MOE_F32) moe_convert_from_f32(h, dt, f, n);
  st = c->o->upload(c->be, *out, h, bytes, &c->err);
  if (h != (void *)f) free(h);
  free(f);
  return st;
}

/* The weights (256 MB of f32 in the given shapes, and the same shapes in
 * bf16) and the activations. */
static moe_status cal_alloc(cal_ctx *c, const cal_shapes *shapes) {
  moe_status st = MOE_OK;
  c->max_dim = 1;
  for (int k = 0; k < shapes->n; k++) {
    c->max_dim = shapes->rows[k] > c->max_dim ? shapes->rows[k] : c->max_dim;
    c->max_dim = shapes->cols[k] > c->max_dim ? shapes->cols[k] : c->max_dim;
  }
  while (c->set_bytes < (size_t)CAL_SET_BYTES && c->nw < CAL_MAX_W) {
    const int k = c->nw % shapes->n;
    const size_t rows = shapes->rows[k], cols = shapes->cols[k], n = rows * cols;
    void *buf = NULL, *b16 = NULL;
    MOE_TRY(cal_buffer(c, n * sizeof(float), MOE_F32, "calibration weights", &buf));
    MOE_TRY(cal_buffer(c, n * 2, MOE_BF16, "calibration bf16 weights", &b16));
    c->w[c->nw] = (moe_weight){buf, MOE_F32, rows, cols};
    c->w16[c->nw++] = (moe_weight){b16, MOE_BF16, rows, cols};
    c->set_bytes += n * sizeof(float);
    c->flops_per_row += 2.0 * (double)n;
  }
  MOE_TRY(cal_buffer(c, 256 * c->max_dim * sizeof(float), MOE_F32, "calibration input", (void **)&c->x));
  MOE_TRY(cal_buffer(c, 256 * c->max_dim * sizeof(float), MOE_F32, "calibration output", (void **)&c->y));
  MOE_TRY(cal_buffer(c, 64 * sizeof(float), MOE_F32, "calibration scratch", (void **)&c->small));
cleanup:
  return st;
}

/* Matmul rates by rows (f32: every m, median of 3 passes over the set;
 * bf16: at 1 and 256 rows), the weight read rate of one-row products, and
 * the per-op overhead of a tiny element-wise op. */
static moe_status cal_matmul(cal_ctx *c) {
  static const int ms[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
  const int n_ms = (int)(sizeof ms / sizeof *ms);
  moe_hw_profile *p = &c->p;
  double t1 = NAN, best = 0, best16 = 0;
  if (!c->quiet)
    fprintf(stderr, "calibrate: matmul over %d f32 weights (%.0f MB) at", c->nw, (double)c->set_bytes / 1e6);
  for (int i = 0; i < n_ms; i++) {
    const size_t m = (size_t)ms[i];
    (void)pass_time(c->d, c->y, c->x, m, c->w, c->nw, &c->err); /* warm */
    const double t = median3(pass_time(c->d, c->y, c->x, m, c->w, c->nw, &c->err),
                             pass_time(c->d, c->y, c->x, m, c->w, c->nw, &c->err),
                             pass_time(c->d, c->y, c->x, m, c->w, c->nw, &c->err));
    if (!(t > 0)) return c->err.status != MOE_OK ? c->err.status : MOE_ERR_DEVICE;
    if (m == 1) t1 = t;
    p->rate_m[i] = ms[i];
    p->rate_gflops[i] = ms[i] * c->flops_per_row / t / 1e9;
    best = fmax(best, p->rate_gflops[i]);
    if (!c->quiet) fprintf(stderr, " m=%d %.1f GFLOP/s", ms[i], p->rate_gflops[i]);
    if (m == 1 || m == 256) {
      (void)pass_time(c->d, c->y, c->x, m, c->w16, c->nw, &c->err);
      const double t16 = median3(pass_time(c->d, c->y, c->x, m, c->w16, c->nw, &c->err),
                                 pass_time(c->d, c->y, c->x, m, c->w16, c->nw, &c->err),
                                 pass_time(c->d, c->y, c->x, m, c->w16, c->nw, &c->err));
      if (!(t16 > 0)) return c->err.status != MOE_OK ? c->err.status : MOE_ERR_DEVICE;
      best16 = fmax(best16, (double)m * c->flops_per_row / t16 / 1e9);
    }
  }
  if (!c->quiet) fprintf(stderr, "; bf16 best %.1f GFLOP/s\n", best16);
  p->n_rates = n_ms;
  p->memory_gbps = (double)c->set_bytes / t1 / 1e9; /* what thin products read at */
  p->tflops[MOE_F32] = best / 1e3;
  p->tflops[MOE_F16] = p->tflops[MOE_BF16] = best16 / 1e3;
  double t[3];
  for (int r = 0; r < 3; r++) {
    const double a = moe_clock_s();
    for (int k = 0; k < 20000; k++)
      if (c->o->add(c->be, c->small, c->small + 32, 16, &c->err) != MOE_OK) return c->err.status;
    if (c->o->synchronize(c->be, &c->err) != MOE_OK) return c->err.status;
    t[r] = (moe_clock_s() - a) / 20000;
  }
  p->launch_us = fmax(runner_median(t, 3) * 1e6, 0.01);
  return MOE_OK;
}

/* The ops that are not matmuls: attention at a decode shape (FLOPs) and an
 * element-wise op over 4 MB (bytes), as the engine issues them. */
static moe_status cal_vector(cal_ctx *c) {
  enum { HEADS = 12, HD = 64, KEYS = 512, MAXS = 512, EW = 1 << 20 };
  moe_status st = MOE_OK;
  float *q = NULL, *kc = NULL, *vc = NULL, *o = NULL, *ew = NULL;
  const size_t cache_f = (size_t)HEADS * MAXS * HD;
  MOE_TRY(cal_buffer(c, HEADS * HD * sizeof(float), MOE_F32, "calibration q", (void **)&q));
  MOE_TRY(cal_buffer(c, cache_f * sizeof(float), MOE_F32, "calibration k cache", (void **)&kc));
  MOE_TRY(cal_buffer(c, cache_f * sizeof(float), MOE_F32, "calibration v cache", (void **)&vc));
  MOE_TRY(cal_buffer(c, HEADS * HD * sizeof(float), MOE_F32, "calibration o", (void **)&o));
  MOE_TRY(cal_buffer(c, EW * sizeof(float), MOE_F32, "calibration vector", (void **)&ew));
  {
    const moe_attn_ex a = {1, 1, KEYS - 1, KEYS, MAXS, HEADS, HEADS, HD, true, 0.125f, NULL, NULL, 0};
    double ta[5], te[5];
    for (int r = 0; r < 5; r++) {
      double t0 = moe_clock_s();
      for (int k = 0; k < 20; k++) MOE_TRY(c->o->attention_ex(c->be, o, q, kc, vc, &a, &c->err));
      MOE_TRY(c->o->synchronize(c->be, &c->err));
      ta[r] = (moe_clock_s() - t0) / 20;
      t0 = moe_clock_s();
      for (int k = 0; k < 5; k++) MOE_TRY(c->o->unary(c->be, ew, ew, EW, MOE_UNARY_RELU, 0.0f, &c->err));
      MOE_TRY(c->o->synchronize(c->be, &c->err));
      te[r] = (moe_clock_s() - t0) / 5;
    }
    /* the cost model's own FLOP and byte counts of these ops (trace.c, sim) */
    c->p.vector_gflops = 4.0 * HEADS * HD * (double)KEYS / runner_median(ta, 5) / 1e9;
    c->p.vector_gbps = 8.0 * EW / runner_median(te, 5) / 1e9;
  }
cleanup:
  moe_device_free(c->d, q);
  moe_device_free(c->d, kc);
  moe_device_free(c->d, vc);
  moe_device_free(c->d, o);
  moe_device_free(c->d, ew);
  return st;
}

/* Seconds of one copy of `bytes` from src (median of reps). */
static double copy_time(cal_ctx *c, void *dst, const void *src, size_t bytes, moe_event *ev, int reps) {
  double t[21];
  for (int r = 0; r < reps && r < 21; r++) {
    const double a = moe_clock_s();
    if (c->o->copy_h2d_async(c->be, dst, src, bytes, ev, &c->err) != MOE_OK ||
        c->o->event_sync(c->be, ev, &c->err) != MOE_OK)
      return NAN;
    t[r] = moe_clock_s() - a;
  }
  return runner_median(t, reps < 21 ? reps : 21);
}

/* The link: a 64 MB copy (or a smaller one under a low cap:
 * cal_copy_bytes) from pinned memory and from pageable memory (bandwidth),
 * a 4 KB one (latency), a small upload's fixed cost, and how much a copy
 * in flight slows compute (the emulated device shares DRAM). */
static moe_status cal_link(cal_ctx *c, double link) {
  moe_status st = MOE_OK;
  const size_t big = cal_copy_bytes(link);
  void *src = NULL, *pageable = NULL, *dst = NULL;
  moe_event *ev = NULL, *cev = NULL; /* the copies' last, and compute's end */
  moe_hw_profile *p = &c->p;
  MOE_TRY(c->o->host_alloc(c->be, big, &src, &c->err));
  pageable = malloc(big);
  MOE_CHECK(pageable != NULL, &c->err, MOE_ERR_OOM, "calibrate: out of host memory");
  MOE_TRY(moe_device_alloc(c->d, MOE_MEM_WORKSPACE, big, "calibration copy target", &dst, &c->err));
  MOE_TRY(c->o->event_create(c->be, &ev, &c->err));
  MOE_TRY(c->o->event_create(c->be, &cev, &c->err));
  memset(src, 1, big);
  memset(pageable, 1, big);
  {
    const double tb = copy_time(c, dst, src, big, ev, 3), tp = copy_time(c, dst, pageable, big, ev, 3);
    const double tl = copy_time(c, dst, src, 4096, ev, 21);
    MOE_CHECK(tb > 0 && tp > 0 && tl > 0, &c->err, MOE_ERR_DEVICE, "calibrate: a copy failed: %s", c->err.msg);
    p->h2d_pinned_gbps = (double)big / tb / 1e9;
    /* a pageable copy is a pinned one plus staging: it cannot be faster,
     * and a profile saying so is refused; where the two are the same path
     * (the cpu backend's emulated link) a noisy machine can measure it
     * faster, and the pinned rate is then the better estimate of both */
    p->h2d_pageable_gbps = fmin((double)big / tp / 1e9, p->h2d_pinned_gbps);
    p->h2d_latency_us = fmax((tl - 4096.0 / (p->h2d_pinned_gbps * 1e9)) * 1e6, 0.01);
  }
  {
    double tl[21]; /* a small upload's fixed cost (ids, routing: on the compute stream) */
    for (int r = 0; r < 21; r++) {
      const double a = moe_clock_s();
      for (int k = 0; k < 100; k++) MOE_TRY(c->o->upload(c->be, dst, src, 256, &c->err));
      MOE_TRY(c->o->synchronize(c->be, &c->err));
      tl[r] = (moe_clock_s() - a) / 100;
    }
    p->transfer_latency_us = fmax(runner_median(tl, 21) * 1e6, 0.01);
  }
  {
    /* a one-row pass with copies queued for longer than the pass, against
     * one without; each timed to the end of its compute (a synchronize
     * would wait for the copies too, and the figure would be the copies'
     * time: 2.2-3.5x "slowdowns" measured that way were the copy queue) */
    double with[3], without[3];
    const double t1 = (double)c->set_bytes / (p->memory_gbps * 1e9);
    for (int r = 0; r < 3; r++) {
      without[r] = pass_time(c->d, c->y, c->x, 1, c->w, c->nw, &c->err);
      const int n_copies = (int)ceil(1.5 * t1 * p->h2d_pinned_gbps * 1e9 / (double)big) + 1;
      for (int k = 0; k < n_copies; k++)
        MOE_TRY(c->o->copy_h2d_async(c->be, dst, src, big, k == n_copies - 1 ? ev : NULL, &c->err));
      with[r] = pass_time_until(c->d, c->y, c->x, 1, c->w, c->nw, cev, &c->err);
      MOE_TRY(c->o->event_sync(c->be, ev, &c->err));
    }
    p->copy_slowdown = fmin(fmax(runner_median(with, 3) / runner_median(without, 3), 1.0), 100.0);
  }
cleanup:
  if (ev) c->o->event_destroy(c->be, ev);
  if (cev) c->o->event_destroy(c->be, cev);
  if (src || dst) {
    moe_error ignored = {0};
    (void)c->o->synchronize(c->be, &ignored); /* no copy still reading them */
  }
  if (src) c->o->host_free(c->be, src);
  free(pageable);
  moe_device_free(c->d, dst);
  return st;
}

/* The host the experts live on (the profile's host section, for the
 * host-compute policies): on the cpu backend, the device is this machine's
 * memory and its kernels are the host's math, so the host's figures are
 * the same measurements (the weight-read bandwidth of thin products, the
 * best f32 and the bf16 matmul rates) at the same threads; cores are the
 * online processors.  On a GPU backend the host is measured apart by
 * calibrate_host. */
static void host_section(cal_ctx *c, int threads) {
  moe_hw_profile *p = &c->p;
  if (strcmp(c->o->name, "cpu") != 0) return;
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  p->host_cores = cores > 0 ? (double)cores : (double)threads;
  p->host_memory_gbps = p->memory_gbps;
  double best = 0;
  for (int i = 0; i < p->n_rates; i++) best = fmax(best, p->rate_gflops[i]);
  p->host_gflops_f32 = best;
  p->host_gflops_bf16 = p->tflops[MOE_BF16] * 1e3 > 0 ? p->tflops[MOE_BF16] * 1e3 : best;
}

/* Measures this machine's backend (cpu by default: its emulated device;
 * cuda: the GPU) into *out (name and description left to the caller).
 * quiet: no progress on stderr. */
moe_status calibrate_measure(const char *backend, int threads, double link,
                                    const cal_shapes *shapes, bool quiet, moe_hw_profile *out,
                                    moe_error *errp) {
  cal_ctx *c = calloc(1, sizeof *c);
  if (c == NULL) return MOE_FAIL(errp, MOE_ERR_OOM, "calibrate: out of host memory");
  c->backend = backend;
  c->quiet = quiet;
  moe_backend_options bo = {.threads = threads, .link_gbps = link};
  moe_status st = moe_device_create(&c->d, backend, &bo, errp);
  if (st != MOE_OK) {
    free(c);
    return st;
  }
  c->o = moe_device_ops(c->d);
  c->be = moe_device_backend(c->d);
  st = cal_alloc(c, shapes);
  if (st == MOE_OK) st = cal_matmul(c);
  if (st == MOE_OK) st = cal_vector(c);
  if (st == MOE_OK) st = cal_link(c, link);
  if (st == MOE_OK) {
    host_section(c, threads);
    c->p.memory_bytes = (double)c->o->device_capacity(c->be);
    c->p.calibrated = true;
    snprintf(c->p.description, sizeof c->p.description,
             "calibrated on %s: %s backend, %d thread%s, link cap %g GB/s",
             moe_backend_device_name(c->o, c->be), c->o->name, threads,
             threads == 1 ? "" : "s", link);
    *out = c->p;
  } else {
    *errp = c->err.status != MOE_OK ? c->err : *errp;
    if (errp->status == MOE_OK) st = MOE_FAIL(errp, MOE_ERR_DEVICE, "calibrate: a measurement failed");
  }
  moe_device_destroy(c->d); /* frees every device buffer still allocated */
  free(c);
  return st;
}

moe_status calibrate_host(int threads, const cal_shapes *shapes, bool quiet, moe_hw_profile *p,
                          moe_error *err) {
  moe_hw_profile h;
  const moe_status st = calibrate_measure("cpu", threads, 0, shapes, quiet, &h, err);
  if (st != MOE_OK) return st;
  p->host_cores = h.host_cores;
  p->host_memory_gbps = h.host_memory_gbps;
  p->host_gflops_f32 = h.host_gflops_f32;
  p->host_gflops_bf16 = h.host_gflops_bf16;
  return MOE_OK;
}

/* The median of n profiles, figure by figure (noise: a machine shared with
 * others changes speed from minute to minute). */
void profile_median(const moe_hw_profile *v, int n, moe_hw_profile *out) {
  *out = v[0];
  double x[SUITE_MAX_REPS];
#define MED(field)                                  \
  do {                                              \
    for (int i = 0; i < n; i++) x[i] = v[i].field;  \
    out->field = runner_median(x, n);               \
  } while (0)
  MED(memory_gbps);
  MED(tflops[MOE_F32]);
  MED(h2d_pinned_gbps);
  MED(h2d_latency_us);
  MED(launch_us);
  MED(transfer_latency_us);
  MED(vector_gflops);
  MED(vector_gbps);
  MED(copy_slowdown);
  MED(tflops[MOE_BF16]);
  MED(h2d_pageable_gbps);
  out->h2d_pageable_gbps = fmin(out->h2d_pageable_gbps, out->h2d_pinned_gbps);
  MED(host_memory_gbps);
  MED(host_gflops_f32);
  MED(host_gflops_bf16);
  for (int k = 0; k < v[0].n_rates; k++) MED(rate_gflops[k]);
#undef MED
  out->tflops[MOE_F16] = out->tflops[MOE_BF16];
}
