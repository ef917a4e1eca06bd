/* The regime model (moe/regime.h). */
#include "moe/regime.h"

#include <math.h>
#include <stdbool.h>

static bool positive(double x) { return isfinite(x) && x > 0; }

const char *moe_regime_policy_name(moe_regime_policy p) {
  static const char *const names[] = {"gpu-only", "ondemand", "pregated", "prefetch-all"};
  return (unsigned)p < MOE_REGIME_POLICIES ? names[p] : "?";
}

double moe_regime_step_s(const moe_regime *r, moe_regime_policy p) {
  if (r->n_blocks < 1 || r->top_k < 1 || r->n_experts < r->top_k || !positive(r->step_s) ||
      !positive(r->window_s) || !positive(r->copy_s) ||
      r->window_s * r->n_blocks > r->step_s * (1 + 1e-9))
    return NAN;
  const double n = r->n_blocks, w = r->window_s;
  const double per_block = (p == MOE_REGIME_PREFETCH_ALL ? r->n_experts : r->top_k) * r->copy_s;
  switch (p) {
  case MOE_REGIME_GPU_ONLY: return r->step_s;
  case MOE_REGIME_ONDEMAND: return r->step_s + n * per_block;
  case MOE_REGIME_PREGATED:
  case MOE_REGIME_PREFETCH_ALL: return r->step_s + per_block + (n - 1) * fmax(0.0, per_block - w);
  case MOE_REGIME_POLICIES: break;
  }
  return NAN;
}
