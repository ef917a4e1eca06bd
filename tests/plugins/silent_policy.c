/* A policy whose callback fails without a message (tests only): the engine
 * must name the policy and the callback.  Its name is also a built-in's
 * when built with -DCLASH, to test that refusal. */
#include "moe/policy.h"

static moe_status plan(const moe_policy_env *env, moe_policy_plan *p, moe_error *err) {
  p->slots = 4;
  return MOE_OK;
}

static moe_status needed(void *state, moe_policy_ctx *ctx, int layer, const int *experts, int n,
                         moe_error *err) {
  return MOE_ERR_INTERNAL; /* and no MOE_FAIL */
}

static const moe_policy silent = {
    .abi_version = MOE_POLICY_ABI,
    .struct_size = sizeof(moe_policy),
#ifdef CLASH
    .name = "ondemand",
#else
    .name = "silent",
#endif
    .summary = "fails without a message (tests only)",
    .plan = plan,
    .experts_needed = needed,
};

const moe_policy *moe_policy_plugin(void);
const moe_policy *moe_policy_plugin(void) { return &silent; }
