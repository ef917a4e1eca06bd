/* dtype conversions: round-to-nearest-even on ties, subnormals, infinities,
 * NaN, signed zero; checked against exact arithmetic, not stored answers. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "moe/dtype.h"
#include "testutil.h"

static uint32_t bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

START_TEST(sizes_and_names) {
  ck_assert_uint_eq(moe_dtype_size(MOE_F32), 4);
  ck_assert_uint_eq(moe_dtype_size(MOE_F16), 2);
  ck_assert_uint_eq(moe_dtype_size(MOE_BF16), 2);
  moe_dtype d;
  ck_assert_int_eq(moe_dtype_parse("bfloat16", &d), 0);
  ck_assert_int_eq(d, MOE_BF16);
  ck_assert_int_eq(moe_dtype_parse("float16", &d), 0);
  ck_assert_int_eq(d, MOE_F16);
  ck_assert_int_eq(moe_dtype_parse("f8", &d), -1);
  ck_assert_str_eq(moe_dtype_name(MOE_BF16), "bf16");
}
END_TEST

/* Every f16 value converts to f32 and back to itself (NaN stays NaN). */
START_TEST(f16_round_trip_all) {
  for (uint32_t h = 0; h < 65536; h++) {
    float f = moe_f16_to_f32((uint16_t)h);
    uint16_t back = moe_f32_to_f16(f);
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff))
      ck_assert_msg(isnan(f) && (back & 0x7c00) == 0x7c00 && (back & 0x3ff), "NaN %04x", h);
    else
      ck_assert_msg(back == h, "f16 %04x -> %a -> %04x", h, (double)f, back);
  }
}
END_TEST

/* Values exactly between two f16 neighbours round to the even one; values
 * just off the midpoint round to the nearer one.  Covers normals and
 * subnormals. */
START_TEST(f16_ties_to_even) {
  for (uint32_t h = 0; h < 0x7bff; h += 7) {
    double lo = moe_f16_to_f32((uint16_t)h), hi = moe_f16_to_f32((uint16_t)(h + 1));
    float mid = (float)((lo + hi) / 2); /* exact in f32 */
    uint16_t want = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
    ck_assert_msg(moe_f32_to_f16(mid) == want, "tie after %04x", h);
    ck_assert_uint_eq(moe_f32_to_f16(nextafterf(mid, INFINITY)), h + 1);
    ck_assert_uint_eq(moe_f32_to_f16(nextafterf(mid, -INFINITY)), h);
  }
}
END_TEST

START_TEST(f16_edges) {
  ck_assert_uint_eq(moe_f32_to_f16(0.0f), 0x0000);
  ck_assert_uint_eq(moe_f32_to_f16(-0.0f), 0x8000);
  ck_assert_uint_eq(moe_f32_to_f16(INFINITY), 0x7c00);
  ck_assert_uint_eq(moe_f32_to_f16(-INFINITY), 0xfc00);
  ck_assert_uint_eq(moe_f32_to_f16(65504.0f), 0x7bff);      /* largest finite */
  ck_assert_uint_eq(moe_f32_to_f16(65519.99f), 0x7bff);     /* below the midpoint */
  ck_assert_uint_eq(moe_f32_to_f16(65520.0f), 0x7c00);      /* midpoint: ties to even = inf */
  ck_assert_uint_eq(moe_f32_to_f16(1e10f), 0x7c00);
  ck_assert_uint_eq(moe_f32_to_f16(ldexpf(1, -24)), 0x0001); /* smallest subnormal */
  ck_assert_uint_eq(moe_f32_to_f16(ldexpf(1, -25)), 0x0000); /* half of it: tie to even 0 */
  ck_assert_uint_eq(moe_f32_to_f16(nextafterf(ldexpf(1, -25), 1)), 0x0001);
  ck_assert_uint_eq(moe_f32_to_f16(ldexpf(3, -26)), 0x0001);
  ck_assert_uint_eq(moe_f32_to_f16(ldexpf(1, -14)), 0x0400); /* smallest normal */
  ck_assert_uint_eq(moe_f32_to_f16(ldexpf(1023, -24) + ldexpf(1, -25)), 0x0400); /* tie -> even */
  uint16_t n = moe_f32_to_f16(NAN);
  ck_assert((n & 0x7c00) == 0x7c00 && (n & 0x3ff) != 0);
  ck_assert(isnan(moe_f16_to_f32(0x7e00)));
  ck_assert(moe_f16_to_f32(0x0001) == ldexpf(1, -24));
  ck_assert(moe_f16_to_f32(0x8001) == -ldexpf(1, -24));
}
END_TEST

START_TEST(bf16_rounding) {
  /* bf16 keeps the top 16 bits; check the RNE rule against integer math on
   * random bit patterns (finite ones). */
  uint64_t s = 88172645463325252ull;
  for (int i = 0; i < 200000; i++) {
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    uint32_t x = (uint32_t)s;
    if ((x & 0x7f800000u) == 0x7f800000u) continue;
    float f;
    memcpy(&f, &x, 4);
    uint16_t got = moe_f32_to_bf16(f);
    double v = f, lo = moe_bf16_to_f32((uint16_t)(x >> 16));
    double hi = moe_bf16_to_f32((uint16_t)((x >> 16) + 1));
    /* past the largest finite bf16 the next value is infinity; measure the
     * distance to where the next finite value would be (lo + one ulp) */
    if (isinf(hi)) hi = lo + (lo - moe_bf16_to_f32((uint16_t)((x >> 16) - 1)));
    double dlo = fabs(v - lo), dhi = fabs(hi - v);
    uint16_t want = dlo < dhi ? (uint16_t)(x >> 16)
                    : dhi < dlo ? (uint16_t)((x >> 16) + 1)
                                : (((x >> 16) & 1) ? (uint16_t)((x >> 16) + 1) : (uint16_t)(x >> 16));
    ck_assert_msg(got == want, "bf16(%08x) = %04x, want %04x", x, got, want);
  }
  ck_assert_uint_eq(moe_f32_to_bf16(1.0f), 0x3f80);
  ck_assert_uint_eq(bits(moe_bf16_to_f32(0x3f80)), bits(1.0f));
  /* ties: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 -> even (1.0) */
  ck_assert_uint_eq(moe_f32_to_bf16(1.0f + ldexpf(1, -8)), 0x3f80);
  ck_assert_uint_eq(moe_f32_to_bf16(1.0f + 3 * ldexpf(1, -8)), 0x3f82);
  ck_assert_uint_eq(moe_f32_to_bf16(-0.0f), 0x8000);
  ck_assert_uint_eq(moe_f32_to_bf16(INFINITY), 0x7f80);
  ck_assert_uint_eq(moe_f32_to_bf16(3.4028235e38f), 0x7f80); /* FLT_MAX rounds to inf */
  ck_assert(isnan(moe_bf16_to_f32(moe_f32_to_bf16(NAN))));
  /* subnormal f32 values are kept (bf16 has the f32 exponent range) */
  float sub = ldexpf(1, -130); /* a bf16 subnormal: 2^-133 is the smallest */
  ck_assert(moe_bf16_to_f32(moe_f32_to_bf16(sub)) == sub);
}
END_TEST

START_TEST(bulk_matches_scalar) {
  float src[257], back[257];
  uint16_t h[257];
  tu_fill(src, 257, 5);
  src[0] = 65520.0f;
  src[1] = ldexpf(1, -25);
  moe_convert_from_f32(h, MOE_F16, src, 257);
  moe_convert_to_f32(back, h, MOE_F16, 257);
  for (int i = 0; i < 257; i++) {
    ck_assert_uint_eq(h[i], moe_f32_to_f16(src[i]));
    ck_assert(back[i] == moe_f16_to_f32(h[i]));
  }
  moe_convert_from_f32(h, MOE_BF16, src, 257);
  for (int i = 0; i < 257; i++) ck_assert_uint_eq(h[i], moe_f32_to_bf16(src[i]));
}
END_TEST

int main(void) {
  Suite *s = suite_create("dtype");
  TCase *tc = tcase_create("convert");
  tcase_add_test(tc, sizes_and_names);
  tcase_add_test(tc, f16_round_trip_all);
  tcase_add_test(tc, f16_ties_to_even);
  tcase_add_test(tc, f16_edges);
  tcase_add_test(tc, bf16_rounding);
  tcase_add_test(tc, bulk_matches_scalar);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
