/* A plugin built against the first version-1 header: its table ends at
 * layer_end (no default_routing).  The engine must accept it, read nothing
 * past its end, and treat the fields it lacks as absent (tests only). */
#include <stddef.h>
#include <stdint.h>

#include "moe/policy.h"

/* The moe_policy layout of ABI 1.0, as that header declared it. */
typedef struct policy_1_0 {
  uint32_t abi_version, struct_size;
  const char *name, *summary;
  moe_status (*plan)(const moe_policy_env *, moe_policy_plan *, moe_error *);
  moe_status (*create)(const moe_policy_env *, void **, moe_error *);
  void (*destroy)(void *);
  moe_status (*warm)(void *, moe_policy_ctx *, moe_error *);
  moe_status (*layer_begin)(void *, moe_policy_ctx *, int, moe_error *);
  moe_status (*experts_needed)(void *, moe_policy_ctx *, int, const int *, int, moe_error *);
  moe_status (*experts_predicted)(void *, moe_policy_ctx *, int, const int *, int, moe_error *);
  moe_status (*layer_end)(void *, moe_policy_ctx *, int, moe_error *);
} policy_1_0;

static moe_status plan(const moe_policy_env *env, moe_policy_plan *p, moe_error *err) {
  int active = env->max_batch * env->top_k;
  p->slots = active < env->n_experts ? active : env->n_experts;
  return MOE_OK;
}

static moe_status needed(void *state, moe_policy_ctx *ctx, int layer, const int *experts, int n,
                         moe_error *err) {
  for (int i = 0; i < n; i++) ctx->fetch(ctx, layer, experts[i]);
  return MOE_OK;
}

static const policy_1_0 old = {
    .abi_version = 1,
    .struct_size = sizeof(policy_1_0),
    .name = "old-abi",
    .summary = "a table built against ABI 1.0 (tests only)",
    .plan = plan,
    .experts_needed = needed,
};

const moe_policy *moe_policy_plugin(void);
const moe_policy *moe_policy_plugin(void) { return (const moe_policy *)(const void *)&old; }
