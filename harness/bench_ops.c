/* moebench bench-ops: side-by-side measurements of the cpu backend.
 *
 * 1. gemm: the engine's matmul path vs a direct cblas_sgemm call on the same
 *    operands, interleaved repetitions, medians.
 * 2. memory: memcpy, and read-only streaming bandwidth with vector loads at
 *    1 and N threads: the floor of a memory-bound decode.
 * 3. models: the preset in f32, f16 and bf16 at 1 and N threads: batch-1
 *    greedy decode (bytes read per token over the median step time, against
 *    the read floor) and prefills of 64 and 256 tokens (GFLOP/s against
 *    OpenBLAS sgemm). */
#include <cblas.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "moe/clock.h"
#include "cli.h"
#include "flags.h"
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
  const moe_backend_ops *ops = moe_device_ops(dev);
  moe_backend *be = moe_device_backend(dev);
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
      for (int i = 0; i < inner; i++) ops->matmul(be, y, x, (size_t)M, &wt, NULL, &err);
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

/* ---------------------------------------------------------------- memory */

#if defined(__x86_64__)
#include <immintrin.h>
/* Sums floats with vector loads from four streams at once (four quarters
 * of the slice): the loads, not the adds, set the pace, and four streams
 * keep more memory requests in flight than one (a scalar or one-stream loop
 * measures the adder or the latency, not the bandwidth). */
__attribute__((target("avx2"), noinline)) static float read_avx2(const float *a, size_t n,
                                                                   size_t prefetch) {
  __m256 s[8];
  for (int i = 0; i < 8; i++) s[i] = _mm256_setzero_ps();
  const size_t q = n / 4 / 16 * 16;
  for (size_t i = 0; i < q; i += 16)
    for (int u = 0; u < 4; u++) {
      const float *p = a + (size_t)u * q + i;
      if (prefetch) _mm_prefetch((const char *)p + prefetch, _MM_HINT_T0);
      s[2 * u] = _mm256_add_ps(s[2 * u], _mm256_loadu_ps(p));
      s[2 * u + 1] = _mm256_add_ps(s[2 * u + 1], _mm256_loadu_ps(p + 8));
    }
  for (int i = 1; i < 8; i++) s[0] = _mm256_add_ps(s[0], s[i]);
  float out[8];
  _mm256_storeu_ps(out, s[0]);
  return out[0] + out[7];
}

/* One sequential stream with a software prefetch 1 KiB ahead: on some
 * machines (the development one) this reads faster than four streams. */
__attribute__((target("avx2"), noinline)) static float read_avx2_seq(const float *a, size_t n) {
  __m256 s[4];
  for (int i = 0; i < 4; i++) s[i] = _mm256_setzero_ps();
  const size_t q = n / 32 * 32;
  for (size_t i = 0; i < q; i += 32) {
    _mm_prefetch((const char *)(a + i) + 1024, _MM_HINT_T0);
    for (int u = 0; u < 4; u++) s[u] = _mm256_add_ps(s[u], _mm256_loadu_ps(a + i + 8 * (size_t)u));
  }
  for (int i = 1; i < 4; i++) s[0] = _mm256_add_ps(s[0], s[i]);
  float out[8];
  _mm256_storeu_ps(out, s[0]);
  return out[0] + out[7];
}
#endif

__attribute__((noinline)) static float read_scalar(const float *a, size_t n) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
  for (size_t i = 0; i + 8 <= n; i += 8) {
    s0 += a[i], s1 += a[i + 1], s2 += a[i + 2], s3 += a[i + 3];
    s4 += a[i + 4], s5 += a[i + 5], s6 += a[i + 6], s7 += a[i + 7];
  }
  return s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
}

typedef struct read_arg {
  const float *a;
  size_t n;
  float sum;
  int pattern; /* 0: four streams, 1: one stream with a prefetch, 2: four with a prefetch 1 KiB
                 * ahead, 3: four with a prefetch 512 bytes ahead */
} read_arg;

static void *read_thread(void *p) {
  read_arg *r = p;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) {
    static const size_t ahead[] = {0, 0, 1024, 512};
    r->sum = r->pattern == 1 ? read_avx2_seq(r->a, r->n) : read_avx2(r->a, r->n, ahead[r->pattern]);
    return NULL;
  }
#endif
  r->sum = read_scalar(r->a, r->n);
  return NULL;
}

/* Read-only stream bandwidth (bytes/s) with `threads` threads, each over
 * its slice of a 512 MiB buffer, in one of the patterns of read_arg;
 * median of reps. */
static double bench_read(int threads, int reps, int pattern) {
  const size_t n = ((size_t)512 << 20) / sizeof(float);
  /* in transparent huge pages where the kernel offers them, as the cpu
   * backend's weights are (cpu_alloc) */
  float *a = aligned_alloc((size_t)2 << 20, n * sizeof *a);
#ifdef MADV_HUGEPAGE
  if (a) (void)madvise(a, n * sizeof *a, MADV_HUGEPAGE);
#endif
  double *t = malloc((size_t)reps * sizeof *t);
  if (!a || !t) {
    free(a);
    free(t);
    return 0;
  }
  /* non-zero bytes, and a barrier: the compiler must not know what the
   * buffer holds (it would drop the loads of memory it knows is zero) */
  memset(a, 0x3c, n * sizeof *a);
  __asm__ volatile("" : : "r"(a) : "memory");
  volatile float sink = 0;
  for (int r = 0; r < reps; r++) {
    pthread_t tid[64];
    read_arg args[64];
    const int T = threads < 64 ? threads : 64;
    double t0 = moe_clock_s();
    for (int i = 0; i < T; i++) {
      args[i] = (read_arg){a + n / (size_t)T * (size_t)i, n / (size_t)T, 0, pattern};
      if (i > 0) pthread_create(&tid[i], NULL, read_thread, &args[i]);
    }
    read_thread(&args[0]);
    for (int i = 1; i < T; i++) pthread_join(tid[i], NULL);
    t[r] = moe_clock_s() - t0;
    for (int i = 0; i < T; i++) sink += args[i].sum;
  }
  (void)sink;
  double bps = (double)(n * sizeof *a) / median(t, reps);
  free(a);
  free(t);
  return bps;
}

/* The read floor: the fastest of the read patterns (each's figure into
 * each[N_PATTERNS] when not NULL). */
#define N_PATTERNS 4
static double read_floor(int threads, int reps, double *each) {
  double best = 0;
  for (int p = 0; p < N_PATTERNS; p++) {
    const double b = bench_read(threads, reps, p);
    if (each) each[p] = b;
    if (b > best) best = b;
  }
  return best;
}

/* memcpy bytes/s over 256 MiB buffers. */
static double bench_copy(int reps) {
  const size_t n = (size_t)256 << 20;
  char *a = malloc(n), *b = malloc(n);
  double *t = malloc((size_t)reps * sizeof *t);
  double bps = 0;
  if (a && b && t) {
    memset(a, 1, n);
    memset(b, 2, n);
    for (int r = 0; r < reps; r++) {
      double t0 = moe_clock_s();
      memcpy(b, a, n);
      t[r] = moe_clock_s() - t0;
    }
    bps = (double)n / median(t, reps);
  }
  free(a);
  free(b);
  free(t);
  return bps;
}

/* ---------------------------------------------------------------- model runs */

/* Bytes of weights (and KV) read per decode step at batch 1: every dense
 * weight but the embedding table (one row is read; tied, it is the lm_head
 * too and read whole), top_k experts per MoE layer, the KV cache at the
 * middle position. */
static double decode_bytes(const moe_model *m, double mid_pos) {
  const moe_config *c = moe_model_config(m);
  const size_t es = moe_dtype_size(moe_model_dtype(m));
  size_t emb = (size_t)c->vocab * (size_t)c->hidden * es;
  size_t dense = moe_model_dense_bytes(m) - (c->tie_embeddings ? 0 : emb);
  size_t experts = (size_t)moe_config_n_moe_layers(c) * (size_t)c->top_k * moe_model_expert_bytes(m);
  double kv = 2.0 * c->n_layers * c->n_kv_heads * c->head_dim * 4.0 * mid_pos;
  return (double)dense + (double)experts + kv;
}

/* FLOPs of a prefill of T tokens (batch 1): 2 per weight touched per token
 * (dense weights but the embedding, lm_head once for the last token, top_k
 * experts per MoE layer) plus causal attention. */
static double prefill_flops(const moe_model *m, int T) {
  const moe_config *c = moe_model_config(m);
  const double es = (double)moe_dtype_size(moe_model_dtype(m));
  const double head = (double)c->vocab * c->hidden;
  const double dense = (double)moe_model_dense_bytes(m) / es - head * (c->tie_embeddings ? 1 : 2);
  const double expert = (double)moe_model_expert_bytes(m) / es;
  const double per_token = dense + (double)moe_config_n_moe_layers(c) * c->top_k * expert;
  const double attn = 2.0 * c->n_layers * (double)c->n_heads * c->head_dim * (double)T * (T + 1);
  return 2.0 * per_token * T + 2.0 * head + attn;
}

typedef struct model_times {
  double step_s;                /* median decode step */
  double prefill_s[2];          /* prefill of 64 and 256 tokens, median */
} model_times;

static const int k_prefill[2] = {64, 256};

/* Decode steps (median) and prefills of 64 and 256 tokens (reps of each;
 * none when reps is 0) on a fresh engine with `threads` math threads. */
static moe_status time_model(moe_model *m, int threads, int steps, int reps, model_times *out,
                             moe_error *err) {
  moe_status st = MOE_OK;
  moe_device *dev = NULL;
  moe_engine *e = NULL;
  int32_t *ids = NULL, *toks = NULL;
  double *step_s = NULL, *t = NULL;
  float *logits = NULL;
  const moe_config *c = moe_model_config(m);
  moe_backend_options bo = {.threads = threads};
  MOE_TRY(moe_device_create(&dev, "cpu", &bo, err));
  const int prompt = 8, max_pre = k_prefill[1];
  moe_engine_options eo = {.max_batch = 1, .max_seq = max_pre + steps + 1};
  MOE_TRY(moe_engine_create(&e, m, dev, &eo, err));
  ids = malloc((size_t)max_pre * sizeof *ids);
  toks = malloc((size_t)(steps + 1) * sizeof *toks);
  step_s = calloc((size_t)steps, sizeof *step_s);
  t = calloc((size_t)reps + 1, sizeof *t);
  logits = malloc((size_t)c->vocab * sizeof *logits);
  MOE_CHECK(ids && toks && step_s && t && logits, err, MOE_ERR_OOM, "out of host memory");
  for (int i = 0; i < max_pre; i++) ids[i] = (int32_t)((i * 7919) % c->vocab);
  moe_gen_stats gs = {.step_s = step_s};
  MOE_TRY(moe_engine_generate(e, ids, 1, prompt, steps + 1, toks, NULL, &gs, err));
  out->step_s = median(step_s, steps);
  out->prefill_s[0] = out->prefill_s[1] = 0;
  for (int p = 0; p < 2 && reps > 0; p++) {
    for (int r = 0; r < reps; r++) {
      double t0 = moe_clock_s();
      /* an encoder-decoder model's prefill of k tokens is its encoder pass */
      if (moe_config_is_encdec(c))
        MOE_TRY(moe_engine_encode(e, ids, 1, k_prefill[p], err));
      else
        MOE_TRY(moe_engine_forward(e, ids, 1, k_prefill[p], 0, logits, err));
      t[r] = moe_clock_s() - t0;
    }
    out->prefill_s[p] = median(t, reps);
  }
cleanup:
  moe_engine_free(e);
  moe_device_destroy(dev);
  free(ids);
  free(toks);
  free(step_s);
  free(t);
  free(logits);
  return st;
}

/* f32 sgemm GFLOP/s for T x 2048 x 1024 with `threads` OpenBLAS threads:
 * what a prefill's matmuls could reach. */
static double sgemm_gflops(int T, int threads, int reps) {
  moe_device *dev = NULL;
  moe_error err = {0};
  moe_backend_options bo = {.threads = threads};
  if (moe_device_create(&dev, "cpu", &bo, &err) != MOE_OK) return 0;
  /* the cpu backend runs OpenBLAS single-threaded (its own threads split
   * products); the reference is OpenBLAS's own threading */
  openblas_set_num_threads(threads);
  const int N = 2048, K = 1024;
  float *x = malloc((size_t)T * K * 4), *w = malloc((size_t)N * K * 4), *y = malloc((size_t)T * N * 4);
  double *tt = malloc((size_t)reps * sizeof *tt), g = 0;
  if (x && w && y && tt) {
    fill(x, (size_t)T * K, 3);
    fill(w, (size_t)N * K, 4);
    for (int r = 0; r < reps; r++) {
      double t0 = moe_clock_s();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f, x, K, w, K, 0.0f, y, N);
      tt[r] = moe_clock_s() - t0;
    }
    g = 2.0 * T * N * K / median(tt, reps) * 1e-9;
  }
  free(x);
  free(w);
  free(y);
  free(tt);
  openblas_set_num_threads(1);
  moe_device_destroy(dev);
  return g;
}

/* The decode and prefill table: the preset in f32, f16 and bf16 at each
 * thread count, side by side in one run. */
static int bench_models(const char *preset, int max_threads, int steps, int reps) {
  cli_preset p;
  moe_error err = {0};
  if (cli_preset_load(&p, preset, &err) != MOE_OK) return cli_fail(&err);
  const moe_dtype dts[] = {MOE_F32, MOE_F16, MOE_BF16};
  model_times tm[3][2];
  double bytes[3], flops[3][2], floor_bps[3][2];
  int nt = max_threads >= 2 ? 2 : 1;
  const int thr[2] = {1, max_threads >= 2 ? max_threads : 1};
  char desc[200] = "";
  for (int d = 0; d < 3; d++) {
    moe_synth_options so = cli_preset_synth(&p);
    so.dtype = dts[d];
    moe_model *m = NULL;
    if (moe_model_synthetic(&m, &p.cfg, &so, &err) != MOE_OK) return cli_fail(&err);
    bytes[d] = decode_bytes(m, 8 + steps / 2.0);
    for (int q = 0; q < 2; q++) flops[d][q] = prefill_flops(m, k_prefill[q]);
    for (int ti = 0; ti < nt; ti++) {
      fprintf(stderr, "bench-ops: %s %s, %d thread%s\n", preset, moe_dtype_name(dts[d]), thr[ti],
              thr[ti] == 1 ? "" : "s");
      if (time_model(m, thr[ti], steps, reps, &tm[d][ti], &err) != MOE_OK) {
        moe_model_free(m);
        return cli_fail(&err);
      }
      /* the row's floor, measured right after it: this machine's speed
       * drifts by tens of percent from one minute to the next */
      floor_bps[d][ti] = read_floor(thr[ti], 3, NULL);
    }
    moe_model_free(m);
  }
  {
    moe_device *dev = NULL;
    moe_backend_options bo = {.threads = 1};
    if (moe_device_create(&dev, "cpu", &bo, &err) == MOE_OK) {
      snprintf(desc, sizeof desc, "%s", moe_device_ops(dev)->describe(moe_device_backend(dev)));
      moe_device_destroy(dev);
    }
  }
  printf("\n## decode and prefill: preset %s (%s), batch 1 (measured, medians)\n", preset, desc);
  printf("decode: %d steps after an 8-token prompt; bytes read per step computed from the model "
         "shape; floor = bytes / the fastest of four read-only stream patterns at the same thread "
         "count, measured right after the row\n", steps);
  printf("prefill: one forward of 64 and 256 tokens; GFLOP/s from the model's FLOPs; sgemm = "
         "OpenBLAS f32 T x 2048 x 1024 at the same thread count\n\n");
  printf("| dtype | threads | MB/step | ms/token | tokens/s | GB/s | floor GB/s | %% of read floor | "
         "prefill 64 GFLOP/s | prefill 256 GFLOP/s | sgemm 64 / 256 GFLOP/s |\n");
  printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (int d = 0; d < 3; d++)
    for (int ti = 0; ti < nt; ti++) {
      const model_times *x = &tm[d][ti];
      const double bw = bytes[d] / x->step_s;
      printf("| %s | %d | %.1f | %.2f | %.2f | %.2f | %.2f | %.0f%% | %.2f | %.2f | %.1f / %.1f |\n",
             moe_dtype_name(dts[d]), thr[ti], bytes[d] * 1e-6, x->step_s * 1e3, 1.0 / x->step_s,
             bw * 1e-9, floor_bps[d][ti] * 1e-9, 100.0 * bw / floor_bps[d][ti], flops[d][0] / x->prefill_s[0] * 1e-9,
             flops[d][1] / x->prefill_s[1] * 1e-9, sgemm_gflops(64, thr[ti], reps),
             sgemm_gflops(256, thr[ti], reps));
    }
  printf("\ndecode speed-up of 16-bit weights over f32 (tokens/s), 1 thread: f16 %.2fx, bf16 %.2fx\n",
         tm[0][0].step_s / tm[1][0].step_s, tm[0][0].step_s / tm[2][0].step_s);
  if (nt == 2)
    for (int d = 0; d < 3; d++)
      printf("%s, %d threads vs 1: decode %.2fx, prefill 64 %.2fx, prefill 256 %.2fx\n",
             moe_dtype_name(dts[d]), thr[1], tm[d][0].step_s / tm[d][1].step_s,
             tm[d][0].prefill_s[0] / tm[d][1].prefill_s[0],
             tm[d][0].prefill_s[1] / tm[d][1].prefill_s[1]);
  return 0;
}

/* The cpu backend's product paths side by side: batch-1 decode of the
 * preset in each dtype on the portable path (OpenBLAS on f32 weights and
 * on converted 16-bit ones) and on the fused one, runs interleaved
 * (portable, fused, portable, ...), fresh engine each, at 1 and N
 * threads; medians of each path's runs and of the paired ratios. */
static int bench_paths(const char *preset, int max_threads, int steps, int reps) {
  cli_preset p;
  moe_error err = {0};
  if (cli_preset_load(&p, preset, &err) != MOE_OK) return cli_fail(&err);
  const char *old = getenv("MOE_CPU_HALF");
  char *saved = old ? strdup(old) : NULL;
  const moe_dtype dts[] = {MOE_F32, MOE_F16, MOE_BF16};
  const int nt = max_threads >= 2 ? 2 : 1, thr[2] = {1, max_threads};
  double *t[2] = {calloc((size_t)reps, sizeof(double)), calloc((size_t)reps, sizeof(double))};
  double *ratio = calloc((size_t)reps, sizeof(double));
  int rc = 0;
  if (!t[0] || !t[1] || !ratio) {
    cli_error("bench-ops: out of memory");
    rc = 1;
  }
  printf("\n## product paths: preset %s, batch-1 decode, portable vs fused (measured, %d "
         "interleaved runs each, medians)\n\n", preset, reps);
  printf("| dtype | threads | portable ms/token | fused ms/token | fused speed-up (median of paired "
         "ratios) |\n|---|---|---|---|---|\n");
  for (int d = 0; d < 3 && rc == 0; d++) {
    moe_synth_options so = cli_preset_synth(&p);
    so.dtype = dts[d];
    moe_model *m = NULL;
    if (moe_model_synthetic(&m, &p.cfg, &so, &err) != MOE_OK) {
      rc = cli_fail(&err);
      break;
    }
    for (int ti = 0; ti < nt && rc == 0; ti++) {
      for (int r = 0; r < reps && rc == 0; r++)
        for (int path = 0; path < 2 && rc == 0; path++) {
          setenv("MOE_CPU_HALF", path == 0 ? "portable" : "avx2", 1);
          model_times x = {0};
          if (time_model(m, thr[ti], steps, 0, &x, &err) != MOE_OK) rc = cli_fail(&err);
          else t[path][r] = x.step_s; /* x is not set after a failure */
        }
      if (rc) break;
      for (int r = 0; r < reps; r++) ratio[r] = t[0][r] / t[1][r];
      printf("| %s | %d | %.2f | %.2f | %.2fx |\n", moe_dtype_name(dts[d]), thr[ti],
             median(t[0], reps) * 1e3, median(t[1], reps) * 1e3, median(ratio, reps));
      fflush(stdout);
    }
    moe_model_free(m);
  }
  if (saved) setenv("MOE_CPU_HALF", saved, 1);
  else unsetenv("MOE_CPU_HALF");
  free(saved);
  free(t[0]);
  free(t[1]);
  free(ratio);
  return rc;
}

void bench_ops_usage(FILE *f) {
  fprintf(f, "usage: moebench bench-ops [options]\n\n"
          "Benchmarks of the cpu backend, measured side by side in one run:\n"
          "gemm overhead of the engine's matmul path vs direct cblas_sgemm; memcpy and\n"
          "read-only stream bandwidth at 1 and N threads; then the preset in f32, f16 and\n"
          "bf16 at 1 and N threads: batch-1 decode as achieved weight-read bandwidth\n"
          "against the read floor, prefill of 64 and 256 tokens as GFLOP/s against sgemm.\n\n"
          "  --preset NAME   model for the decode benchmark (default bench-decode)\n"
          "  --reps N        repetitions per gemm/memory figure (default 9)\n"
          "  --gen-len N     generated tokens, N - 1 of them timed decode steps (default 17)\n"
          "  --threads N     the second thread count of the table (default 2)\n"
          "  --skip-decode   only the gemm and memory parts\n"
          "  --paths N       only the product paths' A/B: decode of the preset in each\n"
          "                  dtype on the portable and the fused path, N interleaved\n"
          "                  runs each, at 1 and N threads (needs a CPU with the fused\n"
          "                  path)\n"
          "  -h, --help      this text\n");
}

/* bench-ops' options. */
typedef struct bo_opts {
  const char *preset;
  long reps, steps, threads, path_reps; /* steps: generated tokens, the first from the prefill */
  bool skip_decode;
} bo_opts;

/* One flag into a bo_opts (flags_getopt). */
static int bo_take(void *ctx, int c, const char *arg) {
  bo_opts *o = ctx;
  switch (c) {
    case 'p': o->preset = arg; return 0;
    case 'r': return flag_long(FLAG_REPS, arg, &o->reps) ? 0 : -1;
    case 's': return flag_long(FLAG_GEN_LEN, arg, &o->steps) ? 0 : -1;
    case 't': return flag_long(FLAG_THREADS, arg, &o->threads) ? 0 : -1;
    case 'D': o->skip_decode = true; return 0;
    case 'P': return flag_long(FLAG_PATHS, arg, &o->path_reps) ? 0 : -1;
    default: return -1;
  }
}

int cmd_bench_ops(int argc, char **argv) {
  static const struct option opts[] = {{"preset", required_argument, 0, 'p'},
                                       {"reps", required_argument, 0, 'r'},
                                       {"gen-len", required_argument, 0, 's'},
                                       {"threads", required_argument, 0, 't'},
                                       {"skip-decode", no_argument, 0, 'D'},
                                       {"paths", required_argument, 0, 'P'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  bo_opts o = {.preset = "bench-decode", .reps = 9, .steps = 16, .threads = 2};
  const int prc = flags_getopt("bench-ops", argc, argv, "h", opts, bo_take, &o, bench_ops_usage);
  if (prc >= 0) return prc;
  const char *preset = o.preset;
  const long reps = o.reps, steps = o.steps - 1, threads = o.threads, path_reps = o.path_reps;
  const bool skip_decode = o.skip_decode;
  if (path_reps > 0) return bench_paths(preset, (int)threads, (int)steps, (int)path_reps);
  moe_error err = {0};
  moe_device *dev = NULL;
  moe_backend_options bo = {.threads = 1};
  if (moe_device_create(&dev, "cpu", &bo, &err) != MOE_OK) return cli_fail(&err);
  int rc = bench_gemm(dev, (int)reps);
  moe_device_destroy(dev);
  const int nt = threads >= 2 ? 2 : 1;
  const int thr[2] = {1, (int)threads};
  /* the floor: the fastest of the read patterns (read_floor) */
  double read_bps[2] = {0, 0}, pat[2][N_PATTERNS];
  for (int i = 0; i < nt; i++) read_bps[i] = read_floor(thr[i], (int)reps, pat[i]);
  printf("\n## memory (measured, median of %ld)\n", reps);
  printf("memcpy (256 MiB, 1 thread): %.2f GB/s copied\n", bench_copy((int)reps) * 1e-9);
  for (int i = 0; i < nt; i++)
    printf("read-only stream (512 MiB, %d thread%s, vector loads): 4 streams a thread %.2f GB/s, "
           "1 stream with a prefetch %.2f GB/s, 4 streams with a prefetch 1 KiB ahead %.2f GB/s, "
           "512 bytes ahead %.2f GB/s; floor %.2f GB/s\n", thr[i], thr[i] == 1 ? "" : "s",
           pat[i][0] * 1e-9, pat[i][1] * 1e-9, pat[i][2] * 1e-9, pat[i][3] * 1e-9, read_bps[i] * 1e-9);
  if (rc == 0 && !skip_decode) rc = bench_models(preset, (int)threads, (int)steps, 3);
  return rc;
}
