/* Storage dtypes and conversions.
 *
 * Weights are stored as f32, f16 or bf16; all compute is f32.  The storage
 * dtype decides every byte count the engine reports (moe_dtype_size). */
#ifndef MOE_DTYPE_H
#define MOE_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moe_dtype { MOE_F32 = 0, MOE_F16 = 1, MOE_BF16 = 2 } moe_dtype;

/* Bytes per element: 4, 2, 2. */
size_t moe_dtype_size(moe_dtype dt);

/* "f32", "f16", "bf16". */
const char *moe_dtype_name(moe_dtype dt);

/* Parses "f32"/"float32", "f16"/"float16", "bf16"/"bfloat16".  Returns 0 and
 * sets *out, or -1 for an unknown name. */
int moe_dtype_parse(const char *name, moe_dtype *out);

/* Round-to-nearest-even conversions.  NaN stays NaN (quiet), infinities and
 * signed zeros are kept, f32 values past the f16 range become infinities,
 * f16 subnormals are produced and read exactly. */
uint16_t moe_f32_to_f16(float f);
float moe_f16_to_f32(uint16_t h);
uint16_t moe_f32_to_bf16(float f);
float moe_bf16_to_f32(uint16_t b);

/* Converts n elements of src (in dtype dt) to f32. */
void moe_convert_to_f32(float *dst, const void *src, moe_dtype dt, size_t n);

/* Converts n f32 elements to dtype dt. */
void moe_convert_from_f32(void *dst, moe_dtype dt, const float *src, size_t n);

#ifdef __cplusplus
}
#endif

#endif
