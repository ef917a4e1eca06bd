/* moebench bench-ops: side-by-side measurements of the cpu backend.
 *
 * 1. gemm: the engine's matmul path vs a direct cblas_sgemm call on the same
 *    operands, interleaved repetitions, medians.
 * 2. memory: single-thread memcpy and read-only streaming bandwidth.
 * 3. decode: batch-1 greedy decode of a model whose weights exceed the CPU
 *    caches; bytes read per token (weights touched + KV cache) over the
 *    median step time gives the achieved weight-read bandwidth. */
#include <cblas.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moe/clock.h"
#include "cli.h"
#include "commands.h"
#include "moe/backend.h"
#include "moe/model.h"
#include "moe/rng.h"

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void fill(float *p, size_t n, uint64_t seed) {
  moe_rng r;
  moe_rng_seed(&r, seed, 0);
  for (size_t i = 0; i < n; i++) p[i] = (float)(moe_rng_uniform(&r) - 0.5);
}

static int bench_gemm(moe_device *dev, int reps) {
  static const int shapes[][3] = {{1, 4096, 1024}, {8, 4096, 1024}, {64, 4096, 1024}, {256, 1024, 1024}};
  printf("## gemm: engine matmul vs direct cblas_sgemm (f32, measured, median of %d)\n", reps);
  printf("%6s %6s %6s %12s %12s %10s %10s\n", "M", "N", "K", "engine_us", "cblas_us", "GFLOP/s",
         "overhead");
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
    float *x = malloc((size_t)M * K * 4), *w = malloc((size_t)N * K * 4), *y = malloc((size_t)M * N * 4);
    double *te = malloc((size_t)reps * sizeof(double)), *tc = malloc((size_t)reps * sizeof(double));
    if (!x || !w || !y || !te || !tc) return 1;
    fill(x, (size_t)M * K, 1);
    fill(w, (size_t)N * K, 2);
    moe_weight wt = {w, MOE_F32, (size_t)N, (size_t)K};
    moe_error err = {0};
    /* enough inner iterations for ~10 ms per sample */
    int inner = (int)(2e8 / (2.0 * M * N * K)) + 1;
    for (int r = 0; r < reps; r++) {
      double t0 = moe_clock_s();
      for (int i = 0; i < inner; i++) dev->ops->matmul(dev->be, y, x, (size_t)M, &wt, NULL, &err);
      double t1 = moe_clock_s();
      for (int i = 0; i < inner; i++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, w, K, 0.0f, y, N);
      double t2 = moe_clock_s();
      te[r] = (t1 - t0) / inner;
      tc[r] = (t2 - t1) / inner;
    }
    double me = median(te, reps), mc = median(tc, reps);
    printf("%6d %6d %6d %12.1f %12.1f %10.2f %+9.1f%%\n", M, N, K, me * 1e6, mc * 1e6,
           2.0 * M * N * K / me * 1e-9, (me / mc - 1.0) * 100.0);
    free(x); free(w); free(y); free(te); free(tc);
  }
  return 0;
}

/* Returns memcpy bytes/s and read-only bytes/s over a 256 MiB buffer. */
static void bench_memory(int reps, double *copy_bps, double *read_bps) {
  const size_t n = (size_t)256 << 20;
  float *a = malloc(n), *b = malloc(n);
  double *tc = malloc((size_t)reps * sizeof(double)), *tr = malloc((size_t)reps * sizeof(double));
  if (!a || !b || !tc || !tr) {
    *copy_bps = *read_bps = 0;
    return;
  }
  memset(a, 1, n);
  memset(b, 2, n);
  volatile float sink = 0;
  for (int r = 0; r < reps; r++) {
    double t0 = moe_clock_s();
    memcpy(b, a, n);
    double t1 = moe_clock_s();
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i < n / 4; i += 4) {
      s0 += a[i]; s1 += a[i + 1]; s2 += a[i + 2]; s3 += a[i + 3];
    }
    sink = s0 + s1 + s2 + s3;
    double t2 = moe_clock_s();
    tc[r] = t1 - t0;
    tr[r] = t2 - t1;
  }
  (void)sink;
  *copy_bps = (double)n / median(tc, reps);
  *read_bps = (double)n / median(tr, reps);
  free(a); free(b); free(tc); free(tr);
}

static int bench_decode(moe_device *dev, const char *preset, int steps, double copy_bps,
                        double read_bps) {
  cli_preset p;
  moe_error err = {0};
  moe_model *m = NULL;
  moe_engine *e = NULL;
  int rc = 1;
  int32_t *out = NULL;
  double *step_s = NULL;
  double t0 = moe_clock_s();
  if (cli_preset_model(preset, &p, &m, &err) != MOE_OK) goto done;
  double t_init = moe_clock_s() - t0;
  const moe_config *c = moe_model_config(m);
  const int prompt = 8;
  moe_engine_options eo = {.max_batch = 1, .max_seq = prompt + steps + 1};
  if (moe_engine_create(&e, m, dev, &eo, &err) != MOE_OK) goto done;
  int32_t ids[8];
  for (int i = 0; i < prompt; i++) ids[i] = (int32_t)((i * 7919) % c->vocab);
  out = malloc((size_t)(steps + 1) * sizeof *out);
  step_s = calloc((size_t)steps, sizeof *step_s);
  if (!out || !step_s) goto done;
  moe_gen_stats gs = {.step_s = step_s};
  if (moe_engine_generate(e, ids, 1, prompt, steps + 1, out, NULL, &gs, &err) != MOE_OK) goto done;
  double med = median(step_s, steps);
  /* Bytes read per decode step at batch 1: every dense weight except the
   * embedding table (one row is read; when tied it is also the lm_head and
   * read whole), top_k experts in each MoE layer, and the KV cache. */
  const size_t es = moe_dtype_size(moe_model_dtype(m));
  size_t emb = (size_t)c->vocab * (size_t)c->hidden * es;
  size_t dense = moe_model_dense_bytes(m) - (c->tie_embeddings ? 0 : emb);
  size_t experts = (size_t)moe_config_n_moe_layers(c) * (size_t)c->top_k * moe_model_expert_bytes(m);
  double mid_pos = prompt + steps / 2.0;
  double kv = 2.0 * c->n_layers * c->n_kv_heads * c->head_dim * 4.0 * mid_pos;
  double bytes = (double)dense + (double)experts + kv;
  double bw = bytes / med;
  printf("\n## decode: preset %s (%s, %.2f GB of weights, synthetic init %.1f s)\n", preset,
         moe_dtype_name(p.dtype), (double)moe_model_total_bytes(m) * 1e-9, t_init);
  printf("batch 1, prompt %d, %d decode steps on %s\n", prompt, steps, dev->ops->describe(dev->be));
  printf("bytes read per step (computed from the model shape): %.1f MB "
         "(dense %.1f MB, experts %.1f MB, KV %.2f MB)\n",
         bytes * 1e-6, (double)dense * 1e-6, (double)experts * 1e-6, kv * 1e-6);
  printf("median step time (measured): %.2f ms  -> %.2f tokens/s\n", med * 1e3, 1.0 / med);
  printf("achieved weight-read bandwidth: %.2f GB/s\n", bw * 1e-9);
  printf("memcpy bandwidth (measured, bytes copied/s): %.2f GB/s -> decode reaches %.0f%%\n",
         copy_bps * 1e-9, 100.0 * bw / copy_bps);
  printf("read-only stream bandwidth (measured): %.2f GB/s -> decode reaches %.0f%%\n",
         read_bps * 1e-9, 100.0 * bw / read_bps);
  rc = 0;
done:
  if (rc != 0 && err.status != MOE_OK) cli_fail(&err);
  moe_engine_free(e);
  moe_model_free(m);
  free(out);
  free(step_s);
  return rc;
}

int cmd_bench_ops(int argc, char **argv) {
  static const struct option opts[] = {{"preset", required_argument, 0, 'p'},
                                       {"reps", required_argument, 0, 'r'},
                                       {"gen-len", required_argument, 0, 's'},
                                       {"threads", required_argument, 0, 't'},
                                       {"skip-decode", no_argument, 0, 'D'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *preset = "bench-decode";
  long reps = 9, steps = 16, threads = 1;
  bool skip_decode = false;
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    bool ok = true;
    switch (c) {
      case 'p': preset = optarg; break;
      case 'r': ok = cli_parse_int(optarg, 1, 1000, &reps); break;
      case 's': /* generated tokens; the first comes from the prefill */
        ok = cli_parse_int(optarg, 2, 100001, &steps);
        steps--;
        break;
      case 't': ok = cli_parse_int(optarg, 1, 1024, &threads); break;
      case 'D': skip_decode = true; break;
      case 'h':
        printf("usage: moebench bench-ops [options]\n\n"
               "Benchmarks of the cpu backend, measured side by side in one run:\n"
               "gemm overhead of the engine's matmul path vs direct cblas_sgemm; memcpy and\n"
               "read-only bandwidth; batch-1 decode as achieved weight-read bandwidth.\n\n"
               "  --preset NAME   model for the decode benchmark (default bench-decode)\n"
               "  --reps N        repetitions per gemm/memory figure (default 9)\n"
               "  --gen-len N     generated tokens, N - 1 of them timed decode steps (default 17)\n"
               "  --threads N     OpenBLAS threads (default 1)\n"
               "  --skip-decode   only the gemm and memory parts\n"
               "  -h, --help      this text\n");
        return 0;
      default:
        cli_error("bench-ops: unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
        return 2;
    }
    if (!ok) {
      cli_error("bench-ops: invalid value '%s'", optarg);
      return 2;
    }
  }
  moe_error err = {0};
  moe_device dev;
  moe_backend_options bo = {.threads = (int)threads};
  if (moe_device_open(&dev, "cpu", &bo, &err) != MOE_OK) return cli_fail(&err);
  int rc = bench_gemm(&dev, (int)reps);
  double copy_bps = 0, read_bps = 0;
  bench_memory((int)reps, &copy_bps, &read_bps);
  printf("\n## memory (measured, 256 MiB buffers, median of %ld)\n", reps);
  printf("memcpy: %.2f GB/s copied; read-only stream: %.2f GB/s\n", copy_bps * 1e-9,
         read_bps * 1e-9);
  if (rc == 0 && !skip_decode) rc = bench_decode(&dev, preset, (int)steps, copy_bps, read_bps);
  moe_device_close(&dev);
  return rc;
}
