/* A plugin built for another policy ABI: must be refused with both numbers. */
#include "moe/policy.h"

static moe_status plan(const moe_policy_env *env, moe_policy_plan *p, moe_error *err) {
  p->slots = 1;
  return MOE_OK;
}

static const moe_policy future = {
    .abi_version = 999,
    .struct_size = sizeof(moe_policy),
    .name = "from-the-future",
    .summary = "wrong ABI version (tests only)",
    .plan = plan,
};

const moe_policy *moe_policy_plugin(void);
const moe_policy *moe_policy_plugin(void) { return &future; }
