/* Deterministic random numbers (splitmix64), the same bits on every
 * platform, for synthetic weights and random prompts. */
#ifndef MOE_RNG_H
#define MOE_RNG_H

#include <stdint.h>

typedef struct moe_rng {
  uint64_t state;
} moe_rng;

/* Seeds a stream from a base seed and a stream id (e.g. a tensor index), so
 * each tensor's values do not depend on the order tensors are filled in. */
void moe_rng_seed(moe_rng *r, uint64_t seed, uint64_t stream);
uint64_t moe_rng_next(moe_rng *r);
/* Uniform in [0, 1). */
double moe_rng_uniform(moe_rng *r);

#endif
