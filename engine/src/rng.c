/* splitmix64 and Box-Muller: small, portable and bit-reproducible. */
#include "moe/rng.h"

#include <math.h>

static uint64_t splitmix(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void moe_rng_seed(moe_rng *r, uint64_t seed, uint64_t stream) {
  uint64_t s = seed ^ (stream * 0xd1b54a32d192ed03ull);
  r->state = splitmix(&s);
  r->has_spare = 0;
  r->spare = 0.0;
}

uint64_t moe_rng_next(moe_rng *r) { return splitmix(&r->state); }

double moe_rng_uniform(moe_rng *r) { return (double)(moe_rng_next(r) >> 11) * 0x1.0p-53; }

double moe_rng_normal(moe_rng *r) {
  if (r->has_spare) {
    r->has_spare = 0;
    return r->spare;
  }
  double u1 = moe_rng_uniform(r), u2 = moe_rng_uniform(r);
  if (u1 < 1e-300) u1 = 1e-300;
  double rad = sqrt(-2.0 * log(u1));
  r->spare = rad * sin(6.283185307179586 * u2);
  r->has_spare = 1;
  return rad * cos(6.283185307179586 * u2);
}
