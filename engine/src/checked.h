/* Overflow-checked size arithmetic for layouts and buffer plans.  Every
 * product and sum of sizes that comes from a config goes through these, so
 * a config whose dimensions are each in range but whose tensors are not is
 * refused instead of wrapping around to a small allocation. */
#ifndef MOE_CHECKED_H
#define MOE_CHECKED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* *acc = *acc * b; false (and *acc = SIZE_MAX) on overflow or an earlier
 * overflow (SIZE_MAX is sticky). */
static inline bool moe_mul_ok(size_t *acc, size_t b) {
  if (*acc == SIZE_MAX || __builtin_mul_overflow(*acc, b, acc)) {
    *acc = SIZE_MAX;
    return false;
  }
  return true;
}

static inline bool moe_add_ok(size_t *acc, size_t b) {
  if (*acc == SIZE_MAX || b == SIZE_MAX || __builtin_add_overflow(*acc, b, acc)) {
    *acc = SIZE_MAX;
    return false;
  }
  return true;
}

/* a * b * c * d (pass 1 for unused factors), SIZE_MAX on overflow. */
static inline size_t moe_prod(size_t a, size_t b, size_t c, size_t d) {
  size_t r = a;
  moe_mul_ok(&r, b);
  moe_mul_ok(&r, c);
  moe_mul_ok(&r, d);
  return r;
}

#endif
