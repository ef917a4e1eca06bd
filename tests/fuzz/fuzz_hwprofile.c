/* libFuzzer target: hardware profiles (workloads/hardware/NAME.json, or a
 * user's), as the cost model, the sim backend, replay and plan read them.
 * Any input is accepted or refused with a message; an accepted profile's
 * figures are positive and finite, and the cost model gives finite,
 * non-negative times on it. */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "moe/cost.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  json_error_t jerr;
  json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
  if (root == NULL) return 0;
  moe_hw_profile p;
  moe_error err = {0};
  if (moe_hw_profile_from_json(&p, root, "fuzz", &err) == MOE_OK) {
    if (!(p.memory_gbps > 0) || !(p.tflops[MOE_F32] > 0) || !(p.h2d_pinned_gbps > 0) ||
        !(p.copy_slowdown >= 1) || p.n_rates < 0 || p.n_rates > MOE_HW_MAX_RATES)
      abort();
    const double ms[] = {0.5, 1, 3, 64, 1e6};
    for (int i = 0; i < 5; i++) {
      const double t = moe_cost_matmul(&p, ms[i], 4096, 1024, MOE_BF16);
      if (!isfinite(t) || t < 0) abort();
    }
    moe_cost_clock c;
    moe_cost_clock_init(&c, &p);
    const double done = moe_cost_copy_issue(&c, 1e8, true);
    moe_cost_compute(&c, moe_cost_vector(&p, 1e9, 1e9));
    moe_cost_compute_wait(&c, done);
    if (!isfinite(c.compute) || c.compute < done || c.stall < 0) abort();
  } else if (err.msg[0] == '\0') {
    abort(); /* every refusal says why */
  }
  json_decref(root);
  return 0;
}
