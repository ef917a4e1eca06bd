/* Products with f16 and bf16 weights on the cpu backend: the conversion is
 * fused into the product, so a weight is read once, as 16 bits, and never
 * stored as f32 (batch-1 decode is bound by the bytes of weights read).
 *
 * Paths, chosen at run time (cpu_backend.c):
 *   - portable (the reference): a band of rows converted to f32 in portable
 *     C, then the f32 product (OpenBLAS);
 *   - AVX2 + FMA + F16C when the CPU has them: for thin inputs (decode),
 *     the product is computed straight from the 16-bit weights, eight lanes,
 *     four weight rows far apart read side by side, each front to back
 *     with a software prefetch ahead, a fixed accumulation order per row;
 *     for wide inputs (prefill) bands are converted with F16C / shifts and
 *     multiplied by OpenBLAS.  The same thin-input kernels serve f32
 *     weights (read faster than OpenBLAS's sgemv here); the portable path
 *     leaves f32 to OpenBLAS at every width.
 * Results may differ between paths in the last bits (summation order); each
 * path is deterministic, and independent of the thread count (threads split
 * rows, never a row's sum). */
#include "cpu_half.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define CPU_HALF_X86 1
#endif

#include "moe/dtype.h"

static inline float half_at(const uint16_t *w, moe_dtype dt, size_t j) {
  return dt == MOE_F16 ? moe_f16_to_f32(w[j]) : moe_bf16_to_f32(w[j]);
}

/* ---------------------------------------------------------------- AVX2 */

#ifdef CPU_HALF_X86
#define TGT __attribute__((target("avx2,fma,f16c")))

TGT static inline __m256 load8_f16(const uint16_t *p) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
}

TGT static inline __m256 load8_bf16(const uint16_t *p) {
  __m128i h = _mm_loadu_si128((const __m128i *)(const void *)p);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float at_f16(const uint16_t *w, size_t j) { return moe_f16_to_f32(w[j]); }
static inline float at_bf16(const uint16_t *w, size_t j) { return moe_bf16_to_f32(w[j]); }
static inline float at_f32(const float *w, size_t j) { return w[j]; }

TGT static inline __m256 load8(const uint16_t *p, moe_dtype dt) {
  return dt == MOE_F16 ? load8_f16(p) : load8_bf16(p);
}

TGT static inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  __m128 s = _mm_add_ps(lo, hi);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

/* The kernels, instantiated per weight dtype (LOAD) so the inner loops
 * carry no dtype test.  G input rows (2..4) share each weight load; G is a
 * constant in each instance, so the accumulators stay in registers. */
/* Software prefetch distance of each weight stream, in bytes: 8 cache
 * lines ahead (measured against 16 in a micro-benchmark, 512 MiB of
 * weights in huge pages, paired runs: f32 1.07-1.10x at one thread,
 * 0.99-1.04x at two; f16 1.03-1.04x and 1.02-1.04x). */
#define FUSED_PREFETCH 512

/* One input row.  Four weight rows a quarter of the range apart are read
 * side by side, each front to back with a software prefetch ahead: four
 * sequential streams far apart, which this machine's memory serves
 * fastest (measured in a micro-benchmark on 512 MiB of f16 weights: about
 * 14 GB/s at one thread, against 10 for one row at a time and 7 for four
 * adjacent rows; on f32 weights 1.13-1.23x OpenBLAS sgemv on the same
 * rows at one thread, 1.03-1.11x at two, medians of paired runs).  A step reads one 64-byte line of each row (32 16-bit
 * weights or 16 f32 ones, L of them) with one prefetch.  Every row is
 * summed the same way (two accumulators taking alternate groups of eight,
 * then the remainder, then the scalar tail) whichever rows it is read
 * beside, so the bits do not depend on how rows are split between
 * threads. */
#define ROW_STEP(LOAD, L, wr, a0, a1, j, x0, x1, x2, x3)                                      \
  do {                                                                                        \
    _mm_prefetch((const char *)((wr) + (j)) + FUSED_PREFETCH, _MM_HINT_T0);                    \
    a0 = _mm256_fmadd_ps(LOAD((wr) + (j)), x0, a0);                                           \
    a1 = _mm256_fmadd_ps(LOAD((wr) + (j) + 8), x1, a1);                                       \
    if (L == 32) {                                                                            \
      a0 = _mm256_fmadd_ps(LOAD((wr) + (j) + 16), x2, a0);                                    \
      a1 = _mm256_fmadd_ps(LOAD((wr) + (j) + 24), x3, a1);                                    \
    }                                                                                         \
  } while (0)

#define LOAD_X(x, L, j, x0, x1, x2, x3)                                                       \
  const __m256 x0 = _mm256_loadu_ps((x) + (j)), x1 = _mm256_loadu_ps((x) + (j) + 8);          \
  const __m256 x2 = L == 32 ? _mm256_loadu_ps((x) + (j) + 16) : x0;                           \
  const __m256 x3 = L == 32 ? _mm256_loadu_ps((x) + (j) + 24) : x1

#define ROWS_1(SFX, T, LOAD, AT)                                                              \
  TGT static float row_tail_##SFX(const float *x, const T *wr, size_t k, __m256 a0,           \
                                  __m256 a1) {                                                \
    const size_t kl = k / (64 / sizeof(T)) * (64 / sizeof(T)), k8 = k / 8 * 8;                \
    size_t j = kl;                                                                            \
    for (; j < k8; j += 8) a0 = _mm256_fmadd_ps(LOAD(wr + j), _mm256_loadu_ps(x + j), a0);    \
    float s = hsum(_mm256_add_ps(a0, a1));                                                    \
    for (; j < k; j++) s += x[j] * AT(wr, j);                                                 \
    return s;                                                                                 \
  }                                                                                           \
  TGT static void rows1_##SFX(float *y, const float *x, const T *w, size_t r0, size_t r1,      \
                              size_t k) {                                                     \
    enum { L = 64 / sizeof(T) };                                                              \
    const size_t kl = k / L * L, q = (r1 - r0) / 4;                                           \
    for (size_t i = 0; i < q; i++) {                                                          \
      const T *w0 = w + (r0 + i) * k, *w1 = w + (r0 + q + i) * k;                             \
      const T *w2 = w + (r0 + 2 * q + i) * k, *w3 = w + (r0 + 3 * q + i) * k;                 \
      __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, \
             a30 = a00, a31 = a00;                                                            \
      for (size_t j = 0; j < kl; j += L) {                                                    \
        LOAD_X(x, L, j, x0, x1, x2, x3);                                                      \
        ROW_STEP(LOAD, L, w0, a00, a01, j, x0, x1, x2, x3);                                   \
        ROW_STEP(LOAD, L, w1, a10, a11, j, x0, x1, x2, x3);                                   \
        ROW_STEP(LOAD, L, w2, a20, a21, j, x0, x1, x2, x3);                                   \
        ROW_STEP(LOAD, L, w3, a30, a31, j, x0, x1, x2, x3);                                   \
      }                                                                                       \
      y[r0 + i] = row_tail_##SFX(x, w0, k, a00, a01);                                         \
      y[r0 + q + i] = row_tail_##SFX(x, w1, k, a10, a11);                                     \
      y[r0 + 2 * q + i] = row_tail_##SFX(x, w2, k, a20, a21);                                 \
      y[r0 + 3 * q + i] = row_tail_##SFX(x, w3, k, a30, a31);                                 \
    }                                                                                         \
    for (size_t r = r0 + 4 * q; r < r1; r++) {                                                \
      const T *wr = w + r * k;                                                                \
      __m256 a0 = _mm256_setzero_ps(), a1 = a0;                                               \
      for (size_t j = 0; j < kl; j += L) {                                                    \
        LOAD_X(x, L, j, x0, x1, x2, x3);                                                      \
        ROW_STEP(LOAD, L, wr, a0, a1, j, x0, x1, x2, x3);                                     \
      }                                                                                       \
      y[r] = row_tail_##SFX(x, wr, k, a0, a1);                                                \
    }                                                                                         \
  }

#define ROWS_G(G, SFX, T, LOAD, AT)                                                           \
  TGT static void rows##G##_##SFX(float *y, size_t ldy, const float *x, const T *w,           \
                                  size_t r0, size_t r1, size_t k) {                           \
    const size_t k16 = k / 16 * 16;                                                           \
    for (size_t r = r0; r < r1; r++) {                                                        \
      const T *wr = w + r * k;                                                                \
      __m256 a0[G], a1[G];                                                                    \
      for (int i = 0; i < G; i++) a0[i] = a1[i] = _mm256_setzero_ps();                        \
      for (size_t j = 0; j < k16; j += 16) {                                                  \
        _mm_prefetch((const char *)(wr + j) + FUSED_PREFETCH, _MM_HINT_T0);                    \
        const __m256 w0 = LOAD(wr + j), w1 = LOAD(wr + j + 8);                                \
        for (int i = 0; i < G; i++) {                                                         \
          a0[i] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + (size_t)i * k + j), a0[i]);          \
          a1[i] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + (size_t)i * k + j + 8), a1[i]);      \
        }                                                                                     \
      }                                                                                       \
      for (int i = 0; i < G; i++) {                                                           \
        const float *xi = x + (size_t)i * k;                                                  \
        float s = hsum(_mm256_add_ps(a0[i], a1[i]));                                          \
        for (size_t j = k16; j < k; j++) s += xi[j] * AT(wr, j);                              \
        y[(size_t)i * ldy + r] = s;                                                           \
      }                                                                                       \
    }                                                                                         \
  }

#define KERNELS(SFX, T, LOAD, AT)                                                             \
  ROWS_1(SFX, T, LOAD, AT)                                                                    \
  ROWS_G(2, SFX, T, LOAD, AT)                                                                 \
  ROWS_G(3, SFX, T, LOAD, AT)                                                                 \
  ROWS_G(4, SFX, T, LOAD, AT)                                                                 \
  TGT static void rows_##SFX(float *y, size_t ldy, const float *x, size_t m, const T *w,      \
                             size_t r0, size_t r1, size_t k) {                                \
    for (size_t i0 = 0; i0 < m; i0 += 4) {                                                    \
      const size_t g = m - i0 < 4 ? m - i0 : 4;                                               \
      float *yi = y + i0 * ldy;                                                               \
      const float *xi = x + i0 * k;                                                           \
      if (g == 1) rows1_##SFX(yi, xi, w, r0, r1, k);                                          \
      else if (g == 2) rows2_##SFX(yi, ldy, xi, w, r0, r1, k);                                \
      else if (g == 3) rows3_##SFX(yi, ldy, xi, w, r0, r1, k);                                \
      else rows4_##SFX(yi, ldy, xi, w, r0, r1, k);                                            \
    }                                                                                         \
  }

KERNELS(f16, uint16_t, load8_f16, at_f16)
KERNELS(bf16, uint16_t, load8_bf16, at_bf16)
KERNELS(f32, float, _mm256_loadu_ps, at_f32)
#undef KERNELS
#undef ROWS_G
#undef ROWS_1
#undef ROW_STEP
#undef LOAD_X

/* Input rows in groups of up to four; each group streams the weights once. */
TGT static void rows_avx2(float *y, size_t ldy, const float *x, size_t m, const void *w,
                          moe_dtype dt, size_t r0, size_t r1, size_t k) {
  if (dt == MOE_F16) rows_f16(y, ldy, x, m, w, r0, r1, k);
  else if (dt == MOE_BF16) rows_bf16(y, ldy, x, m, w, r0, r1, k);
  else rows_f32(y, ldy, x, m, w, r0, r1, k);
}

TGT static void convert_avx2(float *dst, const uint16_t *src, moe_dtype dt, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8(src + i, dt));
  for (; i < n; i++) dst[i] = half_at(src, dt, i);
}
#endif

/* ---------------------------------------------------------------- dispatch */

const char *moe_cpu_half_path_name(moe_cpu_half_path p) {
  return p == MOE_CPU_HALF_AVX2 ? "avx2+fma+f16c" : "portable";
}

moe_cpu_half_path moe_cpu_half_best(void) {
#ifdef CPU_HALF_X86
  /* F16C from cpuid leaf 1 (ECX bit 29): clang before 15 does not know
   * "f16c" as a __builtin_cpu_supports feature */
  unsigned a = 0, b = 0, c = 0, d = 0;
  const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) != 0;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c)
    return MOE_CPU_HALF_AVX2;
#endif
  return MOE_CPU_HALF_PORTABLE;
}

bool moe_cpu_half_supported(moe_cpu_half_path p) {
  return p == MOE_CPU_HALF_PORTABLE || moe_cpu_half_best() == MOE_CPU_HALF_AVX2;
}

bool moe_cpu_fused_rows(moe_cpu_half_path p, float *y, size_t ldy, const float *x, size_t m,
                       const void *w, moe_dtype dt, size_t r0, size_t r1, size_t k) {
#ifdef CPU_HALF_X86
  if (p == MOE_CPU_HALF_AVX2) {
    rows_avx2(y, ldy, x, m, w, dt, r0, r1, k);
    return true;
  }
#endif
  (void)p, (void)y, (void)ldy, (void)x, (void)m, (void)w, (void)dt, (void)r0, (void)r1, (void)k;
  return false;
}

void moe_cpu_half_convert(moe_cpu_half_path p, float *dst, const void *src, moe_dtype dt,
                          size_t n) {
#ifdef CPU_HALF_X86
  if (p == MOE_CPU_HALF_AVX2) {
    convert_avx2(dst, src, dt, n);
    return;
  }
#endif
  moe_convert_to_f32(dst, src, dt, n);
}
