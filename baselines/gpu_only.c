/* gpu-only: every expert of every MoE block stays resident for the whole
 * run.  The upper bound on speed and on memory; a budget too small for it
 * ends the run as OOM, which is a result. */
#include "moe/policy.h"

static moe_status gpu_only_plan(const moe_policy_env *env, moe_policy_plan *plan, moe_error *err) {
  plan->slots = env->n_moe_layers * env->n_experts;
  return MOE_OK;
}

/* Load everything once, before the first token. */
static moe_status gpu_only_warm(void *state, moe_policy_ctx *ctx, moe_error *err) {
  for (int l = ctx->next_moe_layer(ctx, -1); l >= 0; l = ctx->next_moe_layer(ctx, l))
    for (int e = 0; e < ctx->n_experts(ctx); e++)
      if (ctx->fetch(ctx, l, e) != 1)
        return MOE_FAIL(err, MOE_ERR_INTERNAL, "gpu-only: no slot for layer %d expert %d", l, e);
  return MOE_OK;
}

const moe_policy moe_policy_gpu_only = {
    .abi_version = MOE_POLICY_ABI,
    .struct_size = sizeof(moe_policy),
    .name = "gpu-only",
    .summary = "all experts resident on the device for the whole run (fastest, most memory)",
    .plan = gpu_only_plan,
    .warm = gpu_only_warm,
};
