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
    if (d->ops->matmul(d->be, y, x, m, &w[i], NULL, err) != MOE_OK) return NAN;
  if (d->ops->synchronize(d->be, err) != MOE_OK) return NAN;
  return moe_clock_s() - t0;
}

/* Measures this machine's cpu backend into *out (name and description
 * left to the caller).  quiet: no progress on stderr.  Every device buffer
 * goes through moe_device_alloc, so moe_device_close frees it on every
 * path; the one host buffer is freed before it. */
static moe_status calibrate_measure(int threads, double link, const cal_shapes *shapes, bool quiet,
                                    moe_hw_profile *out, moe_error *errp) {
  moe_device d = {0};
  moe_error err = {0};
  moe_backend_options bo = {.threads = threads, .link_gbps = link};
  if (moe_device_open(&d, "cpu", &bo, errp) != MOE_OK) return errp->status;
  int rc = 1;
  /* weights of the given shapes in turn, 256 MB in all: far beyond the caches */
  moe_weight *w = calloc(CAL_MAX_W, sizeof *w);
  int nw = 0;
  size_t set_bytes = 0, max_dim = 1;
  double flops_per_row = 0; /* of one pass at m = 1 */
  float *x = NULL, *y = NULL, *small = NULL;
  void *src = NULL, *dst = NULL;
  const size_t big = cal_copy_bytes(link);
  moe_event *ev = NULL;
  moe_hw_profile p = {0};
  if (w == NULL) {
    MOE_FAIL(&err, MOE_ERR_OOM, "calibrate: out of host memory");
    goto done;
  }
  for (int k = 0; k < shapes->n; k++) {
    max_dim = shapes->rows[k] > max_dim ? shapes->rows[k] : max_dim;
    max_dim = shapes->cols[k] > max_dim ? shapes->cols[k] : max_dim;
  }
  while (set_bytes < (size_t)CAL_SET_BYTES && nw < CAL_MAX_W) {
    const int k = nw % shapes->n;
    const size_t wbytes = shapes->rows[k] * shapes->cols[k] * sizeof(float);
    void *buf = NULL;
    if (moe_device_alloc(&d, MOE_MEM_WORKSPACE, wbytes, "calibration weights", &buf, &err) != MOE_OK)
      goto done;
    memset(buf, 0, wbytes); /* the cpu backend's device memory is host memory */
    for (size_t q = 0; q < wbytes / 4; q += 97) ((float *)buf)[q] = 1e-3f * (float)(q % 13);
    w[nw++] = (moe_weight){buf, MOE_F32, shapes->rows[k], shapes->cols[k]};
    set_bytes += wbytes;
    flops_per_row += 2.0 * (double)shapes->rows[k] * (double)shapes->cols[k];
  }
  if (moe_device_alloc(&d, MOE_MEM_WORKSPACE, 256 * max_dim * sizeof(float), "calibration input",
                       (void **)&x, &err) != MOE_OK ||
      moe_device_alloc(&d, MOE_MEM_WORKSPACE, 256 * max_dim * sizeof(float), "calibration output",
                       (void **)&y, &err) != MOE_OK ||
      moe_device_alloc(&d, MOE_MEM_WORKSPACE, 64 * sizeof(float), "calibration scratch",
                       (void **)&small, &err) != MOE_OK)
    goto done;
  for (size_t k = 0; k < 256 * max_dim; k++) x[k] = 0.01f * (float)(k % 7);
  memset(small, 0, 64 * sizeof(float));
  /* matmul rates by rows (f32), one pass over the set, median of 3 */
  static const int ms[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
  const int n_ms = (int)(sizeof ms / sizeof *ms);
  double t1 = NAN;
  if (!quiet) {
    fprintf(stderr, "calibrate: matmul over %d f32 weights (%.0f MB) of shapes", nw, (double)set_bytes / 1e6);
    for (int k = 0; k < shapes->n; k++) fprintf(stderr, " %zux%zu", shapes->rows[k], shapes->cols[k]);
    fprintf(stderr, " at");
  }
  for (int i = 0; i < n_ms; i++) {
    (void)pass_time(&d, y, x, (size_t)ms[i], w, nw, &err); /* warm */
    const double t = median3(pass_time(&d, y, x, (size_t)ms[i], w, nw, &err),
                             pass_time(&d, y, x, (size_t)ms[i], w, nw, &err),
                             pass_time(&d, y, x, (size_t)ms[i], w, nw, &err));
    if (!(t > 0)) goto done;
    if (ms[i] == 1) t1 = t;
    p.rate_m[i] = ms[i];
    p.rate_gflops[i] = ms[i] * flops_per_row / t / 1e9;
    if (!quiet) fprintf(stderr, " m=%d %.1f GFLOP/s", ms[i], p.rate_gflops[i]);
  }
  if (!quiet) fprintf(stderr, "\n");
  p.n_rates = n_ms;
  /* weights read by a one-row product: the bandwidth thin products see */
  p.memory_gbps = (double)set_bytes / t1 / 1e9;
  double best = 0;
  for (int i = 0; i < n_ms; i++) best = fmax(best, p.rate_gflops[i]);
  p.tflops[MOE_F32] = p.tflops[MOE_F16] = p.tflops[MOE_BF16] = best / 1e3;
  /* per-op overhead: a tiny element-wise op */
  {
    double t[3];
    for (int r = 0; r < 3; r++) {
      const double a = moe_clock_s();
      for (int k = 0; k < 20000; k++)
        if (d.ops->add(d.be, small, small + 32, 16, &err) != MOE_OK) goto done;
      t[r] = (moe_clock_s() - a) / 20000;
    }
    p.launch_us = fmax(runner_median(t, 3) * 1e6, 0.01);
  }
  /* the ops that are not matmuls: attention at a decode shape (FLOPs) and
   * an element-wise op over 4 MB (bytes), as the engine issues them */
  {
    enum { HEADS = 12, HD = 64, KEYS = 512, MAXS = 512, EW = 1 << 20 };
    float *q = NULL, *kc = NULL, *vc = NULL, *o = NULL, *ew = NULL;
    const size_t cache_f = (size_t)HEADS * MAXS * HD;
    if (moe_device_alloc(&d, MOE_MEM_WORKSPACE, HEADS * HD * sizeof(float), "calibration q",
                         (void **)&q, &err) != MOE_OK ||
        moe_device_alloc(&d, MOE_MEM_WORKSPACE, cache_f * sizeof(float), "calibration k cache",
                         (void **)&kc, &err) != MOE_OK ||
        moe_device_alloc(&d, MOE_MEM_WORKSPACE, cache_f * sizeof(float), "calibration v cache",
                         (void **)&vc, &err) != MOE_OK ||
        moe_device_alloc(&d, MOE_MEM_WORKSPACE, HEADS * HD * sizeof(float), "calibration o",
                         (void **)&o, &err) != MOE_OK ||
        moe_device_alloc(&d, MOE_MEM_WORKSPACE, EW * sizeof(float), "calibration vector",
                         (void **)&ew, &err) != MOE_OK)
      goto done;
    for (size_t k = 0; k < cache_f; k++) kc[k] = vc[k] = 0.01f * (float)(k % 11);
    for (size_t k = 0; k < HEADS * HD; k++) q[k] = 0.02f * (float)(k % 5);
    for (size_t k = 0; k < EW; k++) ew[k] = (float)(k % 9) - 4.0f;
    const moe_attn_ex a = {1, 1, KEYS - 1, KEYS, MAXS, HEADS, HEADS, HD, true, 0.125f, NULL, NULL, 0};
    double ta[5], te[5];
    for (int r = 0; r < 5; r++) {
      double t0 = moe_clock_s();
      for (int k = 0; k < 20; k++)
        if (d.ops->attention_ex(d.be, o, q, kc, vc, &a, &err) != MOE_OK) goto done;
      ta[r] = (moe_clock_s() - t0) / 20;
      t0 = moe_clock_s();
      for (int k = 0; k < 5; k++)
        if (d.ops->unary(d.be, ew, ew, EW, MOE_UNARY_RELU, 0.0f, &err) != MOE_OK) goto done;
      te[r] = (moe_clock_s() - t0) / 5;
    }
    /* the cost model's own FLOP and byte counts of these ops (trace.c, sim) */
    p.vector_gflops = 4.0 * HEADS * HD * (double)KEYS / runner_median(ta, 5) / 1e9;
    p.vector_gbps = 8.0 * EW / runner_median(te, 5) / 1e9;
    moe_device_free(&d, q);
    moe_device_free(&d, kc);
    moe_device_free(&d, vc);
    moe_device_free(&d, o);
    moe_device_free(&d, ew);
  }
  /* the link: a 64 MB copy, or a smaller one under a low cap (bandwidth:
   * cal_copy_bytes), and a 4 KB one (latency) */
  if (d.ops->host_alloc(d.be, big, &src, &err) != MOE_OK ||
      moe_device_alloc(&d, MOE_MEM_WORKSPACE, big, "calibration copy target", &dst, &err) != MOE_OK ||
      d.ops->event_create(d.be, &ev, &err) != MOE_OK)
    goto done;
  memset(src, 1, big);
  double tb[3], tl[21];
  for (int r = 0; r < 3; r++) {
    const double a = moe_clock_s();
    if (d.ops->copy_h2d_async(d.be, dst, src, big, ev, &err) != MOE_OK ||
        d.ops->event_sync(d.be, ev, &err) != MOE_OK)
      goto done;
    tb[r] = moe_clock_s() - a;
  }
  for (int r = 0; r < 21; r++) {
    const double a = moe_clock_s();
    if (d.ops->copy_h2d_async(d.be, dst, src, 4096, ev, &err) != MOE_OK ||
        d.ops->event_sync(d.be, ev, &err) != MOE_OK)
      goto done;
    tl[r] = moe_clock_s() - a;
  }
  p.h2d_pinned_gbps = p.h2d_pageable_gbps = (double)big / runner_median(tb, 3) / 1e9;
  p.h2d_latency_us = fmax((runner_median(tl, 21) - 4096.0 / (p.h2d_pinned_gbps * 1e9)) * 1e6, 0.01);
  /* a synchronous upload's fixed cost (ids, routing: on the compute stream) */
  for (int r = 0; r < 21; r++) {
    const double a = moe_clock_s();
    for (int k = 0; k < 100; k++)
      if (d.ops->upload(d.be, dst, src, 256, &err) != MOE_OK) goto done;
    tl[r] = (moe_clock_s() - a) / 100;
  }
  p.transfer_latency_us = fmax(runner_median(tl, 21) * 1e6, 0.01);
  /* a copy in flight slows compute (the emulated device shares DRAM): a
   * one-row pass with copies queued for longer than the pass, against one
   * without */
  {
    double with[3], without[3];
    for (int r = 0; r < 3; r++) {
      without[r] = pass_time(&d, y, x, 1, w, nw, &err);
      const int n_copies = (int)ceil(1.5 * t1 * p.h2d_pinned_gbps * 1e9 / (double)big) + 1;
      for (int k = 0; k < n_copies; k++)
        if (d.ops->copy_h2d_async(d.be, dst, src, big, k == n_copies - 1 ? ev : NULL, &err) != MOE_OK)
          goto done;
      with[r] = pass_time(&d, y, x, 1, w, nw, &err);
      if (d.ops->event_sync(d.be, ev, &err) != MOE_OK) goto done;
    }
    p.copy_slowdown = fmin(fmax(runner_median(with, 3) / runner_median(without, 3), 1.0), 100.0);
  }
  p.memory_bytes = (double)d.ops->device_capacity(d.be);
  p.calibrated = true;
  snprintf(p.description, sizeof p.description, "calibrated on %s: cpu backend, %d thread%s, link cap %g GB/s",
           moe_backend_device_name(d.ops, d.be), threads, threads == 1 ? "" : "s", link);
  *out = p;
  rc = 0;
done:
  if (rc) *errp = err.status != MOE_OK ? err : *errp;
  if (ev) d.ops->event_destroy(d.be, ev);
  if (src) {
    moe_error ignored = {0};
    (void)d.ops->synchronize(d.be, &ignored); /* no copy still reading it */
    d.ops->host_free(d.be, src);
  }
  moe_device_close(&d); /* frees every device buffer still allocated */
  free(w);
  return rc ? (errp->status != MOE_OK ? errp->status : MOE_ERR_DEVICE) : MOE_OK;
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
  for (int k = 0; k < v[0].n_rates; k++) MED(rate_gflops[k]);
#undef MED
  out->tflops[MOE_F16] = out->tflops[MOE_BF16] = out->tflops[MOE_F32];
  out->h2d_pageable_gbps = out->h2d_pinned_gbps;
}

static int calibrate(int threads, double link, const char *name, const char *out) {
  moe_hw_profile p;
  moe_error err = {0};
  if (calibrate_measure(threads, link, &k_default_shapes, false, &p, &err) != MOE_OK)
    return cli_fail(&err);
  const int n_ms = p.n_rates;
  snprintf(p.name, sizeof p.name, "%s", name);
  time_t now = time(NULL);
  char day[32], desc[sizeof p.description];
  strftime(day, sizeof day, "%Y-%m-%d", gmtime(&now));
  snprintf(desc, sizeof desc, "%.180s (%.12s)", p.description, day);
  memcpy(p.description, desc, sizeof desc);
  char source[160];
  snprintf(source, sizeof source, "measured by moebench calibrate (--threads %d --link-gbps %g), %s",
           threads, link, day);
  if (moe_hw_profile_save(&p, out, source, &err) != MOE_OK) return cli_fail(&err);
  printf("wrote %s (measured): matmul %.1f GFLOP/s at 1 row .. %.1f at 256; thin-product weight "
         "reads %.2f GB/s; other ops %.2f GFLOP/s, %.2f GB/s; op overhead %.2f us; link %.2f GB/s, "
         "latency %.1f us; compute slowdown under a copy %.2fx\n",
         out, p.rate_gflops[0], p.rate_gflops[n_ms - 1], p.memory_gbps, p.vector_gflops,
         p.vector_gbps, p.launch_us, p.h2d_pinned_gbps, p.h2d_latency_us, p.copy_slowdown);
  return 0;
}

int cmd_calibrate(int argc, char **argv) {
  static const struct option opts[] = {
      {"threads", required_argument, 0, 't'}, {"link-gbps", required_argument, 0, 'L'},
      {"name", required_argument, 0, 'n'},    {"out", required_argument, 0, 'o'},
      {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
  long threads = 1;
  double link = 0;
  const char *name = "this-machine", *out = NULL;
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
      case 'h':
        printf("usage: moebench calibrate -o PROFILE.json [--link-gbps X] [--threads N] [--name NAME]\n\n"
               "Measures this machine's cpu backend and writes it as a hardware profile\n"
               "(workloads/hardware format, every figure's source 'measured'): f32 matmul\n"
               "rates by rows (1..256, over 256 MB of weights of Switch-Base's shapes, beyond\n"
               "the caches), the weight-read bandwidth of one-row products, the per-op\n"
               "overhead, the emulated link (64 MB copies, or about 0.1 s of transfer each\n"
               "under a cap below 0.64 GB/s; latency from 4 KB ones), and how\n"
               "much a copy in flight slows compute (the emulated device shares DRAM).\n"
               "replay and validate model runs on it.  Takes about 30 s.\n\n"
               "  -o, --out FILE     the profile to write (temporary file + rename)\n"
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
      cli_error("calibrate: invalid value '%s' for %s", optarg, argv[optind - 1]);
      return 2;
    }
  }
  if (out == NULL || optind < argc) {
    cli_error("calibrate: give -o PROFILE.json and no positional arguments (see --help)");
    return 2;
  }
  return calibrate((int)threads, link, name, out);
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
          "cpu backend (untraced, repetitions interleaved, medians), and one traced run\n"
          "of the same inputs replayed on a profile of this machine; prints both with\n"
          "the model's error (modeled / measured - 1).  Without --hardware the profile\n"
          "is calibrated in the same run, once before each repetition's runs and the\n"
          "median taken (as 'moebench calibrate', with the same --link-gbps and\n"
          "--threads, on the model's own weight shapes), so that machine noise hits\n"
          "both sides alike.\n\n"
          "  --hardware NAME      a profile to replay on instead (calibrated earlier)\n"
          "  --preset NAME        model preset (or --model-dir DIR)\n"
          "  --policies LIST      default gpu-only,ondemand,prefetch-all,pregated\n"
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
      {"help", no_argument, 0, 'h'},           {0, 0, 0, 0}};
  const char *hw = NULL, *preset = NULL, *plist = "gpu-only,ondemand,prefetch-all,pregated";
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
      case 'h': usage_validate(stdout); return 0;
      default:
        cli_error("validate: unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
        return 2;
    }
    if (!ok) {
      cli_error("validate: invalid value '%s' for --%s", optarg, idx >= 0 ? opts[idx].name : "?");
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
  char buf[256];
  if (strlen(plist) >= sizeof buf) {
    cli_error("validate: --policies is too long");
    return 2;
  }
  snprintf(buf, sizeof buf, "%s", plist);
  /* every comma-separated entry names a policy: strtok would skip empty
   * ones, and ',' would leave no policy at all */
  for (char *tok = buf, *next; tok; tok = next) {
    next = strchr(tok, ',');
    if (next) *next++ = '\0';
    if (tok[0] == '\0') {
      cli_error("validate: --policies: empty policy name in '%s'", plist);
      return 2;
    }
    if (np == 8 || (pol[np] = moe_policy_find(tok)) == NULL) {
      cli_error("validate: unknown policy '%s' (at most 8; see 'moebench list policies')", tok);
      return 2;
    }
    np++;
  }
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
        if (calibrate_measure((int)threads, link, &shapes, true, &cal[r], &err) != MOE_OK) {
          rc = cli_fail(&err);
          break;
        }
        fprintf(stderr, "validate: rep %d/%ld calibrated\n", r + 1, reps);
      }
      run_spec sp = {.model = m, .policy = pol[i],
                     .routing = pol[i]->default_routing == MOE_POLICY_ROUTING_PREGATED
                                    ? MOE_ROUTING_PREGATED : MOE_ROUTING_CONVENTIONAL,
                     .backend = "cpu", .threads = (int)threads, .link_gbps = link,
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
    printf("## %s: batch %ld, prompt %ld, generated %ld, link %s, %ld thread%s; profile %s\n\n",
           preset, batch, plen, glen, link > 0 ? "capped" : "uncapped", threads,
           threads == 1 ? "" : "s", prof.name);
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
                   .backend = "cpu", .threads = (int)threads, .link_gbps = link,
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
