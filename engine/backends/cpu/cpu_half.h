/* Fused weight products for the cpu backend: f16/bf16 weights read as 16
 * bits, and thin f32 products (see cpu_half.c). */
#ifndef MOE_CPU_HALF_H
#define MOE_CPU_HALF_H

#include <stdbool.h>
#include <stddef.h>

#include "moe/dtype.h"

typedef enum moe_cpu_half_path {
  MOE_CPU_HALF_PORTABLE = 0, /* the reference: plain C */
  MOE_CPU_HALF_AVX2 = 1      /* AVX2 + FMA + F16C */
} moe_cpu_half_path;

/* The fastest path this CPU supports. */
moe_cpu_half_path moe_cpu_half_best(void);
bool moe_cpu_half_supported(moe_cpu_half_path p);
const char *moe_cpu_half_path_name(moe_cpu_half_path p);

/* y[i, r] (row stride ldy) = x[i, :] . w[r, :] for i < m and r0 <= r < r1;
 * w is rows x k in dt (f32, f16 or bf16), x is m x k f32.  Fused paths
 * only: false (nothing written) on the portable path. */
bool moe_cpu_fused_rows(moe_cpu_half_path p, float *y, size_t ldy, const float *x, size_t m,
                       const void *w, moe_dtype dt, size_t r0, size_t r1, size_t k);

/* dst[i] = src[i] converted to f32 (exact for every f16 and bf16 value). */
void moe_cpu_half_convert(moe_cpu_half_path p, float *dst, const void *src, moe_dtype dt,
                          size_t n);

#endif
