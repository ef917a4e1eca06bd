/* prefetch-all: while block N computes, every expert of the next MoE block
 * is copied in (as SE-MoE does), so nothing waits on the router, at the
 * price of moving E / top_k times the bytes needed.  Device slots: the
 * current block's experts plus the next block's, 2E (E with one MoE
 * block).  The first MoE block of each forward has no predecessor and
 * fetches what its router picked. */
#include "moe/policy.h"

static moe_status prefetch_all_plan(const moe_policy_env *env, moe_policy_plan *plan,
                                    moe_error *err) {
  plan->slots = (env->n_moe_layers > 1 ? 2 : 1) * env->n_experts;
  return MOE_OK;
}

static moe_status prefetch_all_begin(void *state, moe_policy_ctx *ctx, int layer, moe_error *err) {
  int next = ctx->next_moe_layer(ctx, layer);
  /* only MoE layers start a prefetch: the layer's own experts are then
   * being read, and the next block's all move during its compute */
  if (next < 0 || ctx->next_moe_layer(ctx, layer - 1) != layer) return MOE_OK;
  for (int e = 0; e < ctx->n_experts(ctx); e++) ctx->fetch(ctx, next, e);
  return MOE_OK;
}

static moe_status prefetch_all_needed(void *state, moe_policy_ctx *ctx, int layer,
                                      const int *experts, int n, moe_error *err) {
  for (int i = 0; i < n; i++) ctx->fetch(ctx, layer, experts[i]);
  return MOE_OK;
}

const moe_policy moe_policy_prefetch_all = {
    .abi_version = MOE_POLICY_ABI,
    .struct_size = sizeof(moe_policy),
    .name = "prefetch-all",
    .summary = "copy all experts of block N+1 while block N computes (no stalls, E/k x the bytes)",
    .plan = prefetch_all_plan,
    .layer_begin = prefetch_all_begin,
    .experts_needed = prefetch_all_needed,
};
