/* ondemand: experts live in host memory; after block N's router picks them
 * they are copied in, and compute waits for each (as Hugging Face
 * Accelerate's offloading does).  Device slots: one block's activated
 * experts at the decode batch, min(E, batch x top_k). */
#include "moe/policy.h"

static moe_status ondemand_plan(const moe_policy_env *env, moe_policy_plan *plan, moe_error *err) {
  int active = env->max_batch * env->top_k;
  plan->slots = active < env->n_experts ? active : env->n_experts;
  return MOE_OK;
}

static moe_status ondemand_needed(void *state, moe_policy_ctx *ctx, int layer, const int *experts,
                                  int n, moe_error *err) {
  /* Queue them all now: the copy of the second overlaps the first's matmul,
   * as a real on-demand loader's pipelined copies would. */
  for (int i = 0; i < n; i++) ctx->fetch(ctx, layer, experts[i]);
  return MOE_OK;
}

const moe_policy moe_policy_ondemand = {
    .abi_version = MOE_POLICY_ABI,
    .struct_size = sizeof(moe_policy),
    .name = "ondemand",
    .summary = "copy the experts block N's router picked, then compute (least memory, stalls)",
    .plan = ondemand_plan,
    .experts_needed = ondemand_needed,
};
