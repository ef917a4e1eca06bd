/* A deliberately useless policy for the tests: one slot, and it prefetches
 * the wrong experts.  The engine must still produce correct outputs, paying
 * misses. */
#include "moe/policy.h"

static moe_status useless_plan(const moe_policy_env *env, moe_policy_plan *plan, moe_error *err) {
  plan->slots = 1;
  return MOE_OK;
}

static moe_status useless_needed(void *state, moe_policy_ctx *ctx, int layer, const int *experts,
                                 int n, moe_error *err) {
  int e = ctx->n_experts(ctx);
  for (int i = 0; i < n; i++) ctx->fetch(ctx, layer, (experts[i] + 1) % e);
  return MOE_OK;
}

static const moe_policy useless = {
    .abi_version = MOE_POLICY_ABI,
    .struct_size = sizeof(moe_policy),
    .name = "useless",
    .summary = "fetches the wrong experts into one slot (tests only)",
    .plan = useless_plan,
    .experts_needed = useless_needed,
};

const moe_policy *moe_policy_plugin(void);
const moe_policy *moe_policy_plugin(void) { return &useless; }
