/* Storage dtypes: sizes, names and round-to-nearest-even conversions. */
#include "moe/dtype.h"

#include <string.h>

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

size_t moe_dtype_size(moe_dtype dt) { return dt == MOE_F32 ? 4 : 2; }

const char *moe_dtype_name(moe_dtype dt) {
  switch (dt) {
    case MOE_F32: return "f32";
    case MOE_F16: return "f16";
    case MOE_BF16: return "bf16";
  }
  return "?";
}

int moe_dtype_parse(const char *name, moe_dtype *out) {
  static const struct {
    const char *name;
    moe_dtype dt;
  } names[] = {{"f32", MOE_F32},  {"float32", MOE_F32}, {"fp32", MOE_F32},
               {"f16", MOE_F16},  {"float16", MOE_F16}, {"fp16", MOE_F16},
               {"bf16", MOE_BF16}, {"bfloat16", MOE_BF16}};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    if (strcmp(name, names[i].name) == 0) {
      *out = names[i].dt;
      return 0;
    }
  }
  return -1;
}

uint16_t moe_f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) /* NaN: keep the top payload bits, force quiet */
    return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
  if (ax >= 0x477ff000u) /* >= 65520 rounds to infinity (65520 is a tie to even) */
    return (uint16_t)(sign | 0x7c00u);
  if (ax < 0x38800000u) { /* below 2^-14: f16 subnormal or zero */
    if (ax < 0x33000000u) return sign; /* below 2^-25: rounds to zero */
    uint32_t e = ax >> 23;
    uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e; /* 14..24 */
    uint32_t r = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) r++;
    return (uint16_t)(sign | r); /* r == 0x400 is the smallest normal: correct */
  }
  uint32_t h = (ax - 0x38000000u) >> 13; /* rebias exponent 127 -> 15 */
  uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; /* carry may reach inf: correct */
  return (uint16_t)(sign | h);
}

float moe_f16_to_f32(uint16_t h) {
  uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu;
  uint32_t m = h & 0x3ffu;
  if (e == 0) {
    if (m == 0) return bits_f32(sign);
    /* subnormal: m * 2^-24, exact in f32 */
    float v = (float)m * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13));
  return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

uint16_t moe_f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
  uint32_t lsb = (x >> 16) & 1u;
  x += 0x7fffu + lsb;
  return (uint16_t)(x >> 16);
}

float moe_bf16_to_f32(uint16_t b) { return bits_f32((uint32_t)b << 16); }

void moe_convert_to_f32(float *dst, const void *src, moe_dtype dt, size_t n) {
  if (dt == MOE_F32) {
    memcpy(dst, src, n * sizeof(float));
  } else if (dt == MOE_F16) {
    const uint16_t *s = src;
    for (size_t i = 0; i < n; i++) dst[i] = moe_f16_to_f32(s[i]);
  } else {
    const uint16_t *s = src;
    for (size_t i = 0; i < n; i++) dst[i] = bits_f32((uint32_t)s[i] << 16);
  }
}

void moe_convert_from_f32(void *dst, moe_dtype dt, const float *src, size_t n) {
  if (dt == MOE_F32) {
    memcpy(dst, src, n * sizeof(float));
  } else if (dt == MOE_F16) {
    uint16_t *d = dst;
    for (size_t i = 0; i < n; i++) d[i] = moe_f32_to_f16(src[i]);
  } else {
    uint16_t *d = dst;
    for (size_t i = 0; i < n; i++) d[i] = moe_f32_to_bf16(src[i]);
  }
}
