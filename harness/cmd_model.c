/* The cost model's commands:
 *
 *   moebench calibrate   measure this machine's cpu backend as a hardware
 *                        profile (matmul rates by rows, weight-read
 *                        bandwidth, op overhead, the emulated link, how much
 *                        a copy in flight slows compute)
 *   moebench replay      an op trace replayed on a profile: modeled figures
 *                        beside the trace's own
 *   moebench validate    the cost model against measured runs: per policy,
 *                        measured on the cpu backend (untraced repetitions)
 *                        and modeled from a traced run replayed on a
 *                        (calibrated) profile, with the error
 *
 * Every figure is labelled measured or modeled. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "moe/backend.h"
#include "moe/clock.h"
#include "moe/cost.h"
#include "moe/model.h"
#include "moe/policy.h"
#include "replay.h"
#include "runner.h"
#include "suite.h"

/* ---------------------------------------------------------------- calibrate */

enum { CAL_SET_BYTES = 256 << 20, CAL_MAX_W = 512, CAL_MAX_SHAPES = 8 };
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

/* Weight shapes a calibration multiplies by (rows x cols, f32). */
typedef struct cal_shapes {
  size_t rows[CAL_MAX_SHAPES], cols[CAL_MAX_SHAPES];
  int n;
} cal_shapes;

/* Switch-Base's expert and attention shapes: the default. */
static const cal_shapes k_default_shapes = {{3072, 768, 768}, {768, 3072, 768}, 3};

static double median3(double a, double b, double c) {
  double v[3] = {a, b, c};
  return runner_median(v, 3);
}

/* Seconds for one pass of y = x w^T over the whole set of weights at m rows. */
static double pass_time(moe_device *d, float *y, const float *x, size_t m, const moe_weight *w,
                        int nw, moe_error *err) {
  const double t0 = moe_clock_s();
  for (int i = 0; i < nw; i++)
    if (moe_device_ops(d)->matmul(moe_device_backend(d), y, x, m, &w[i], NULL, err) != MOE_OK) return NAN;
  if (moe_device_ops(d)->synchronize(moe_device_backend(d), err) != MOE_OK) return NAN;
  return moe_clock_s() - t0;
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
  moe_event *ev = NULL;
  moe_hw_profile *p = &c->p;
  MOE_TRY(c->o->host_alloc(c->be, big, &src, &c->err));
  pageable = malloc(big);
  MOE_CHECK(pageable != NULL, &c->err, MOE_ERR_OOM, "calibrate: out of host memory");
  MOE_TRY(moe_device_alloc(c->d, MOE_MEM_WORKSPACE, big, "calibration copy target", &dst, &c->err));
  MOE_TRY(c->o->event_create(c->be, &ev, &c->err));
  memset(src, 1, big);
  memset(pageable, 1, big);
  {
    const double tb = copy_time(c, dst, src, big, ev, 3), tp = copy_time(c, dst, pageable, big, ev, 3);
    const double tl = copy_time(c, dst, src, 4096, ev, 21);
    MOE_CHECK(tb > 0 && tp > 0 && tl > 0, &c->err, MOE_ERR_DEVICE, "calibrate: a copy failed: %s", c->err.msg);
    p->h2d_pinned_gbps = (double)big / tb / 1e9;
    p->h2d_pageable_gbps = (double)big / tp / 1e9;
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
    /* a one-row pass with copies queued for longer than the pass, against one without */
    double with[3], without[3];
    const double t1 = (double)c->set_bytes / (p->memory_gbps * 1e9);
    for (int r = 0; r < 3; r++) {
      without[r] = pass_time(c->d, c->y, c->x, 1, c->w, c->nw, &c->err);
      const int n_copies = (int)ceil(1.5 * t1 * p->h2d_pinned_gbps * 1e9 / (double)big) + 1;
      for (int k = 0; k < n_copies; k++)
        MOE_TRY(c->o->copy_h2d_async(c->be, dst, src, big, k == n_copies - 1 ? ev : NULL, &c->err));
      with[r] = pass_time(c->d, c->y, c->x, 1, c->w, c->nw, &c->err);
      MOE_TRY(c->o->event_sync(c->be, ev, &c->err));
    }
    p->copy_slowdown = fmin(fmax(runner_median(with, 3) / runner_median(without, 3), 1.0), 100.0);
  }
cleanup:
  if (ev) c->o->event_destroy(c->be, ev);
  if (src || dst) {
    moe_error ignored = {0};
    (void)c->o->synchronize(c->be, &ignored); /* no copy still reading them */
  }
  if (src) c->o->host_free(c->be, src);
  free(pageable);
  moe_device_free(c->d, dst);
  return st;
}

/* Measures this machine's backend (cpu by default: its emulated device;
 * cuda: the GPU) into *out (name and description left to the caller).
 * quiet: no progress on stderr. */
static moe_status calibrate_measure(const char *backend, int threads, double link,
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

/* The median of n profiles, figure by figure (noise: a machine shared with
 * others changes speed from minute to minute). */
static void profile_median(const moe_hw_profile *v, int n, moe_hw_profile *out) {
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
  for (int k = 0; k < v[0].n_rates; k++) MED(rate_gflops[k]);
#undef MED
  out->tflops[MOE_F16] = out->tflops[MOE_BF16];
}

static int calibrate(const char *backend, int threads, double link, const char *name,
                     const char *out) {
  moe_hw_profile p;
  moe_error err = {0};
  if (calibrate_measure(backend, threads, link, &k_default_shapes, false, &p, &err) != MOE_OK)
    return cli_fail(&err);
  const int n_ms = p.n_rates;
  snprintf(p.name, sizeof p.name, "%s", name);
  time_t now = time(NULL);
  char day[32], desc[sizeof p.description];
  strftime(day, sizeof day, "%Y-%m-%d", gmtime(&now));
  snprintf(desc, sizeof desc, "%.180s (%.12s)", p.description, day);
  memcpy(p.description, desc, sizeof desc);
  char source[160];
  snprintf(source, sizeof source, "measured by moebench calibrate (--backend %s --threads %d "
           "--link-gbps %g), %s", backend, threads, link, day);
  if (moe_hw_profile_save(&p, out, source, &err) != MOE_OK) return cli_fail(&err);
  printf("wrote %s (measured on %s): matmul f32 %.1f GFLOP/s at 1 row .. %.1f at 256, bf16 best "
         "%.1f; thin-product weight reads %.2f GB/s; other ops %.2f GFLOP/s, %.2f GB/s; op "
         "overhead %.2f us; link %.2f GB/s pinned, %.2f pageable, latency %.1f us; compute "
         "slowdown under a copy %.2fx\n",
         out, backend, p.rate_gflops[0], p.rate_gflops[n_ms - 1], p.tflops[MOE_BF16] * 1e3,
         p.memory_gbps, p.vector_gflops, p.vector_gbps, p.launch_us, p.h2d_pinned_gbps,
         p.h2d_pageable_gbps, p.h2d_latency_us, p.copy_slowdown);
  return 0;
}

int cmd_calibrate(int argc, char **argv) {
  static const struct option opts[] = {
      {"threads", required_argument, 0, 't'}, {"link-gbps", required_argument, 0, 'L'},
      {"name", required_argument, 0, 'n'},    {"out", required_argument, 0, 'o'},
      {"backend", required_argument, 0, 'B'}, {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  long threads = 1;
  double link = 0;
  const char *name = "this-machine", *out = NULL, *backend = "cpu";
  optind = 1;
  opterr = 0;
  int c, idx = -1;
  while ((idx = -1, c = getopt_long(argc, argv, "ho:", opts, &idx)) != -1) {
    bool ok = true;
    switch (c) {
      case 't': ok = cli_parse_int(optarg, 1, 1024, &threads); break;
      case 'L': ok = cli_parse_link(optarg, &link); break;
      case 'n':
        ok = optarg[0] != '\0' && strlen(optarg) < 64 &&
             strspn(optarg, "abcdefghijklmnopqrstuvwxyz0123456789-_.") == strlen(optarg);
        name = optarg;
        break;
      case 'o': ok = optarg[0] != '\0'; out = optarg; break;
      case 'B': {
        const moe_backend_ops *bo = moe_backend_find(optarg);
        ok = bo != NULL && !(bo->caps & MOE_BACKEND_CAP_MODELED);
        backend = optarg;
        break;
      }
      case 'h':
        printf("usage: moebench calibrate -o PROFILE.json [--backend cpu|cuda] [--link-gbps X] [--threads N] [--name NAME]\n\n"
               "Measures a backend of this machine (the cpu backend's emulated device, or\n"
               "the GPU with --backend cuda) and writes it as a hardware profile\n"
               "(workloads/hardware format, every figure's source 'measured'): f32 matmul\n"
               "rates by rows (1..256, over 256 MB of weights of Switch-Base's shapes, beyond\n"
               "the caches) and the bf16 rate (1 and 256 rows), the weight-read bandwidth of\n"
               "one-row products, the per-op overhead, the link from pinned and from pageable\n"
               "memory (64 MB copies, or about 0.1 s of transfer each under a cap below\n"
               "0.64 GB/s; latency from 4 KB ones), and how much a copy in flight slows\n"
               "compute (the emulated device shares DRAM; a GPU's DMA should not).\n"
               "replay and validate model runs on it.  Takes about 30 s on a CPU.\n\n"
               "  -o, --out FILE     the profile to write (temporary file + rename)\n"
               "  --backend NAME     cpu (default) or cuda; not a modeled backend (sim)\n"
               "  --link-gbps X      the link cap the runs to be modeled use (default none)\n"
               "  --threads N        math threads, as those runs (default 1)\n"
               "  --name NAME        the profile's name (default this-machine)\n"
               "  -h, --help         this text\n");
        return 0;
      default:
        cli_error("calibrate: unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
        return 2;
    }
    if (!ok) {
      cli_bad_value("calibrate", opts, idx, c, optarg);
      return 2;
    }
  }
  if (out == NULL || optind < argc) {
    cli_error("calibrate: give -o PROFILE.json and no positional arguments (see --help)");
    return 2;
  }
  return calibrate(backend, (int)threads, link, name, out);
}

/* ---------------------------------------------------------------- replay */

static double median_of(const double *v, int n) {
  double *c = malloc((size_t)(n > 0 ? n : 1) * sizeof *c);
  if (c == NULL || n <= 0) return free(c), NAN;
  memcpy(c, v, (size_t)n * sizeof *c);
  double m = runner_median(c, n);
  free(c);
  return m;
}

int cmd_replay(int argc, char **argv) {
  static const struct option opts[] = {{"hardware", required_argument, 0, 'H'},
                                       {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
  const char *hw = NULL;
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    if (c == 'H' && optarg[0]) {
      hw = optarg;
    } else if (c == 'h') {
      printf("usage: moebench replay TRACE.json --hardware NAME\n\n"
             "Replays an op trace (generate/run --trace) on a hardware profile: every\n"
             "operation costed by the cost model (roofline + overheads, engine/include/\n"
             "moe/cost.h), copies and compute on two streams ordered by the trace's\n"
             "events.  Prints the modeled figures beside the trace's own times.\n\n"
             "  --hardware NAME   a profile ('moebench list hardware') or a file\n"
             "  -h, --help        this text\n");
      return 0;
    } else {
      cli_error("replay: unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
      return 2;
    }
  }
  if (hw == NULL || optind != argc - 1) {
    cli_error("replay: give one TRACE.json and --hardware NAME (see --help)");
    return 2;
  }
  char path[1200];
  cli_hw_path(hw, path, sizeof path);
  moe_hw_profile p;
  moe_error err = {0};
  if (moe_hw_profile_load(&p, path, &err) != MOE_OK) return cli_fail(&err);
  replay_result r;
  if (replay_trace(argv[optind], &p, &r, &err) != MOE_OK) return cli_fail(&err);
  const char *own = r.trace_modeled ? "modeled by the run" : "measured";
  printf("# %s replayed on %s (modeled)\n\n", argv[optind], p.name);
  printf("| figure | modeled on %s | trace (%s) |\n|---|---|---|\n", p.name, own);
  printf("| forward passes | %d | %d |\n", r.n_forwards, r.n_forwards);
  printf("| total s | %.6f | %.6f |\n", r.modeled_s, r.measured_s);
  printf("| first forward s | %.6f | %.6f |\n", r.fwd_modeled[0], r.fwd_measured[0]);
  if (r.n_forwards > 1)
    printf("| later forwards, median ms | %.4f | %.4f |\n",
           median_of(r.fwd_modeled + 1, r.n_forwards - 1) * 1e3,
           median_of(r.fwd_measured + 1, r.n_forwards - 1) * 1e3);
  printf("| compute stall on copies s | %.6f | - |\n", r.stall_s);
  printf("| copy stream busy s | %.6f | - |\n", r.copy_s);
  printf("| hidden copy share | %.3f | - |\n", r.hidden_share);
  printf("| ops, copies | %llu, %llu | |\n", r.ops, r.copies);
  printf("\nBy op on the compute track, from the first forward (waits include the stall):\n\n"
         "| op | count | trace s (%s) | modeled s | modeled / trace |\n|---|---|---|---|---|\n", own);
  for (int k = 0; k < r.n_kinds; k++)
    printf("| %s | %llu | %.6f | %.6f | %.2f |\n", r.kinds[k].name, r.kinds[k].count,
           r.kinds[k].trace_s, r.kinds[k].modeled_s,
           r.kinds[k].trace_s > 0 ? r.kinds[k].modeled_s / r.kinds[k].trace_s : NAN);
  replay_result_free(&r);
  return 0;
}

/* ---------------------------------------------------------------- validate */

static void usage_validate(FILE *f) {
  fprintf(f,
          "usage: moebench validate (--preset NAME | --model-dir DIR) [--hardware PROFILE] [options]\n\n"
          "The cost model against measured runs.  Per policy: the run measured on the\n"
          "backend (cpu, or cuda on a GPU; untraced, repetitions interleaved, medians),\n"
          "and one traced run\n"
          "of the same inputs replayed on a profile of this machine; prints both with\n"
          "the model's error (modeled / measured - 1).  Without --hardware the profile\n"
          "is calibrated in the same run, once before each repetition's runs and the\n"
          "median taken (as 'moebench calibrate', with the same --link-gbps and\n"
          "--threads, on the model's own weight shapes), so that machine noise hits\n"
          "both sides alike.\n\n"
          "  --hardware NAME      a profile to replay on instead (calibrated earlier)\n"
          "  --preset NAME        model preset (or --model-dir DIR)\n"
          "  --policies LIST      default gpu-only,ondemand,prefetch-all,pregated\n"
          "  --backend NAME       cpu (default) or cuda: the backend measured and calibrated\n"
          "  --link-gbps X        the cpu backend's link cap (default none)\n"
          "  --threads N          math threads (default 1)\n"
          "  --batch B            sequences (default 1)\n"
          "  --prompt-len N       prompt tokens (default 32)\n"
          "  --gen-len N          generated tokens (default 32)\n"
          "  --reps N             measured repetitions per policy (default 3)\n"
          "  -h, --help           this text\n");
}

int cmd_validate(int argc, char **argv) {
  static const struct option opts[] = {
      {"hardware", required_argument, 0, 'H'}, {"preset", required_argument, 0, 'p'},
      {"model-dir", required_argument, 0, 'M'}, {"policies", required_argument, 0, 'P'},
      {"link-gbps", required_argument, 0, 'L'}, {"threads", required_argument, 0, 't'},
      {"batch", required_argument, 0, 'b'},    {"prompt-len", required_argument, 0, 'l'},
      {"gen-len", required_argument, 0, 'g'},  {"reps", required_argument, 0, 'r'},
      {"backend", required_argument, 0, 'B'},  {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  const char *hw = NULL, *preset = NULL, *plist = "gpu-only,ondemand,prefetch-all,pregated";
  const char *backend = "cpu";
  long threads = 1, batch = 1, plen = 32, glen = 32, reps = 3;
  double link = 0;
  optind = 1;
  opterr = 0;
  int c, idx = -1;
  while ((idx = -1, c = getopt_long(argc, argv, "h", opts, &idx)) != -1) {
    bool ok = true;
    switch (c) {
      case 'H': ok = optarg[0] != '\0'; hw = optarg; break;
      case 'p': ok = optarg[0] != '\0'; preset = optarg; break;
      case 'M': ok = optarg[0] != '\0'; preset = cli_model_dir_arg(optarg); break;
      case 'P': ok = optarg[0] != '\0'; plist = optarg; break;
      case 'L': ok = cli_parse_link(optarg, &link); break;
      case 't': ok = cli_parse_int(optarg, 1, 1024, &threads); break;
      case 'b': ok = cli_parse_int(optarg, 1, SUITE_MAX_BATCH, &batch); break;
      case 'l': ok = cli_parse_int(optarg, 1, SUITE_MAX_LEN, &plen); break;
      case 'g': ok = cli_parse_int(optarg, 2, SUITE_MAX_LEN, &glen); break;
      case 'r': ok = cli_parse_int(optarg, 1, SUITE_MAX_REPS, &reps); break;
      case 'B': {
        const moe_backend_ops *bo = moe_backend_find(optarg);
        ok = bo != NULL && !(bo->caps & MOE_BACKEND_CAP_MODELED);
        backend = optarg;
        break;
      }
      case 'h': usage_validate(stdout); return 0;
      default:
        cli_error("validate: unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
        return 2;
    }
    if (!ok) {
      cli_bad_value("validate", opts, idx, c, optarg);
      return 2;
    }
  }
  if (preset == NULL || optind < argc) {
    cli_error("validate: give --preset (or --model-dir); see --help");
    return 2;
  }
  if (strchr(preset, '/') ? cli_check_model_dir("validate", preset) != 0
                          : cli_check_names("validate", preset, NULL) != 0)
    return 2;
  const moe_policy *pol[8];
  int np = 0;
  if (cli_parse_policies("validate", plist, pol, 8, &np) != 0) return 2;
  moe_hw_profile prof;
  moe_error err = {0};
  if (hw) {
    char hw_path[1200];
    cli_hw_path(hw, hw_path, sizeof hw_path);
    if (moe_hw_profile_load(&prof, hw_path, &err) != MOE_OK) return cli_fail(&err);
  }
  moe_hw_profile *cal = hw ? NULL : calloc((size_t)reps, sizeof *cal);
  if (!hw && cal == NULL) {
    cli_error("validate: out of host memory");
    return 1;
  }
  moe_model *m = NULL;
  if (cli_preset_model(preset, NULL, &m, &err) != MOE_OK) return free(cal), cli_fail(&err);
  /* calibrated on the model's own weight shapes: attention, experts, dense FFN */
  const moe_config *mc = moe_model_config(m);
  cal_shapes shapes = {{0}, {0}, 0};
  const size_t H = (size_t)mc->hidden, QD = (size_t)mc->n_heads * (size_t)mc->head_dim;
  const size_t EF = (size_t)mc->expert_ffn, DF = (size_t)mc->dense_ffn;
  const size_t sr[] = {QD, H, EF, H, DF, H}, sc[] = {H, QD, H, EF, H, DF};
  for (int k = 0; k < 6; k++)
    if (sr[k] > 0 && sc[k] > 0) {
      bool dup = false;
      for (int q = 0; q < shapes.n; q++) dup |= shapes.rows[q] == sr[k] && shapes.cols[q] == sc[k];
      if (!dup) shapes.rows[shapes.n] = sr[k], shapes.cols[shapes.n++] = sc[k];
    }
  if (shapes.n == 0) shapes = k_default_shapes;
  const char *tmpdir = getenv("TMPDIR");
  char dir[1100];
  snprintf(dir, sizeof dir, "%s/moebench-validate-XXXXXX", tmpdir && tmpdir[0] ? tmpdir : "/tmp");
  if (mkdtemp(dir) == NULL) {
    moe_model_free(m);
    free(cal);
    cli_error("validate: cannot create a temporary directory: %s", strerror(errno));
    return 1;
  }
  int rc = 0;
  double meas_total[8][SUITE_MAX_REPS], meas_step[8][SUITE_MAX_REPS];
  for (int r = 0; r < reps && rc == 0; r++)
    for (int i = 0; i < np && rc == 0; i++) {
      if (i == 0 && cal) {
        if (calibrate_measure(backend, (int)threads, link, &shapes, true, &cal[r], &err) != MOE_OK) {
          rc = cli_fail(&err);
          break;
        }
        fprintf(stderr, "validate: rep %d/%ld calibrated\n", r + 1, reps);
      }
      run_spec sp = {.model = m, .policy = pol[i],
                     .routing = pol[i]->default_routing == MOE_POLICY_ROUTING_PREGATED
                                    ? MOE_ROUTING_PREGATED : MOE_ROUTING_CONVENTIONAL,
                     .backend = backend, .threads = (int)threads, .link_gbps = link,
                     .batch = (int)batch, .prompt_len = (int)plen, .gen_len = (int)glen,
                     .prompt_seed = 1, .requests = 1};
      run_result o;
      runner_run(&sp, &o);
      if (o.status != MOE_OK) {
        cli_error("validate: %s: %s", pol[i]->name, o.error);
        rc = 1;
      }
      meas_total[i][r] = o.total_s;
      meas_step[i][r] = o.decode_s / (double)(glen - 1);
      run_result_free(&o);
      fprintf(stderr, "validate: rep %d/%ld %s measured\n", r + 1, reps, pol[i]->name);
    }
  if (rc == 0 && cal) {
    profile_median(cal, (int)reps, &prof);
    snprintf(prof.name, sizeof prof.name, "this machine, calibrated in this run");
  }
  if (rc == 0) {
    printf("## %s on the %s backend: batch %ld, prompt %ld, generated %ld, link %s, %ld thread%s; "
           "profile %s\n\n", preset, backend, batch, plen, glen, link > 0 ? "capped" : "uncapped",
           threads, threads == 1 ? "" : "s", prof.name);
    if (link > 0) printf("link cap %g GB/s\n\n", link);
    printf("| policy | total s measured | total s modeled | error | decode ms/token measured | "
           "decode ms/token modeled | error | modeled stall s | modeled hidden share |\n");
    printf("|---|---|---|---|---|---|---|---|---|\n");
  }
  for (int i = 0; i < np && rc == 0; i++) {
    char tpath[1200];
    snprintf(tpath, sizeof tpath, "%s/%s.trace.json", dir, pol[i]->name);
    run_spec sp = {.model = m, .policy = pol[i],
                   .routing = pol[i]->default_routing == MOE_POLICY_ROUTING_PREGATED
                                  ? MOE_ROUTING_PREGATED : MOE_ROUTING_CONVENTIONAL,
                   .backend = backend, .threads = (int)threads, .link_gbps = link,
                   .batch = (int)batch, .prompt_len = (int)plen, .gen_len = (int)glen,
                   .prompt_seed = 1, .requests = 1, .trace_path = tpath};
    run_result o;
    runner_run(&sp, &o);
    replay_result rr = {0};
    if (o.status != MOE_OK || replay_trace(tpath, &prof, &rr, &err) != MOE_OK) {
      if (o.status != MOE_OK) cli_error("validate: %s (traced): %s", pol[i]->name, o.error);
      else cli_fail(&err);
      rc = 1;
    } else {
      const double mt = runner_median(meas_total[i], (int)reps),
                   ms = runner_median(meas_step[i], (int)reps);
      /* decode: every forward after the prefill's (an encoder-decoder
       * prefill is two: the encoder and the decoder's first step) */
      const int first = moe_config_is_encdec(moe_model_config(m)) ? 2 : 1;
      double dec = 0;
      for (int k = first; k < rr.n_forwards; k++) dec += rr.fwd_modeled[k];
      const int n_dec = rr.n_forwards - first;
      const double mdl_step = n_dec > 0 ? dec / n_dec : NAN;
      printf("| %s | %.4f | %.4f | %+.1f%% | %.3f | %.3f | %+.1f%% | %.4f | %.2f |\n", pol[i]->name,
             mt, rr.modeled_s, 100 * (rr.modeled_s / mt - 1), ms * 1e3, mdl_step * 1e3,
             100 * (mdl_step / ms - 1), rr.stall_s, rr.hidden_share);
    }
    replay_result_free(&rr);
    run_result_free(&o);
    remove(tpath);
  }
  rmdir(dir);
  moe_model_free(m);
  if (rc == 0 && cal)
    printf("\nprofile (measured, medians of %ld calibrations interleaved with the runs): matmul "
           "%.1f GFLOP/s at 1 row .. %.1f at %g rows; thin-product weight reads %.2f GB/s; other "
           "ops %.2f GFLOP/s, %.2f GB/s; op overhead %.2f us; link %.2f GB/s, latency %.1f us; "
           "compute slowdown under a copy %.2fx\n",
           reps, prof.rate_gflops[0], prof.rate_gflops[prof.n_rates - 1],
           prof.rate_m[prof.n_rates - 1], prof.memory_gbps, prof.vector_gflops, prof.vector_gbps,
           prof.launch_us, prof.h2d_pinned_gbps, prof.h2d_latency_us, prof.copy_slowdown);
  free(cal);
  if (rc == 0)
    printf("\nmeasured: wall clock of untraced runs on this machine (medians of %ld); modeled: a "
           "traced run of the same inputs replayed on %s (deterministic)\n", reps, prof.name);
  return rc;
}
