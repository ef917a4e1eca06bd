/* A policy that fails with a message of its own through MOE_FAIL (tests
 * only): everything policy.h offers must link from a plugin. */
#include "moe/policy.h"

static moe_status plan(const moe_policy_env *env, moe_policy_plan *p, moe_error *err) {
  p->slots = 4;
  return MOE_OK;
}

static moe_status needed(void *state, moe_policy_ctx *ctx, int layer, const int *experts, int n,
                         moe_error *err) {
  return MOE_FAIL(err, MOE_ERR_INVALID, "failing-policy says no at layer %d", layer);
}

static const moe_policy failing = {
    .abi_version = MOE_POLICY_ABI,
    .struct_size = sizeof(moe_policy),
    .name = "failing-policy",
    .summary = "fails with its own message (tests only)",
    .plan = plan,
    .experts_needed = needed,
};

const moe_policy *moe_policy_plugin(void);
const moe_policy *moe_policy_plugin(void) { return &failing; }
