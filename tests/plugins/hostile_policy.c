/* A hostile policy (tests only): every context call with arguments out of
 * range, in every callback.  The engine must refuse each request, count
 * it, read nothing out of bounds, and finish the run with correct outputs. */
#include <limits.h>

#include "moe/policy.h"

static moe_status plan(const moe_policy_env *env, moe_policy_plan *p, moe_error *err) {
  p->slots = 2;
  return MOE_OK;
}

static void abuse(moe_policy_ctx *ctx, int layer) {
  const int bad_layers[] = {-1, -5, INT_MIN, INT_MAX, 1 << 20, layer + 1000};
  const int bad_experts[] = {-1, INT_MIN, INT_MAX, ctx->n_experts(ctx)};
  for (unsigned i = 0; i < sizeof bad_layers / sizeof bad_layers[0]; i++) {
    ctx->fetch(ctx, bad_layers[i], 0);
    ctx->pin(ctx, bad_layers[i], 0);
    ctx->unpin(ctx, bad_layers[i], 0);
    ctx->evict(ctx, bad_layers[i], 0);
    (void)ctx->resident(ctx, bad_layers[i], 0);
    (void)ctx->next_moe_layer(ctx, bad_layers[i]);
  }
  for (unsigned i = 0; i < sizeof bad_experts / sizeof bad_experts[0]; i++) {
    int l = ctx->next_moe_layer(ctx, -1);
    ctx->fetch(ctx, l, bad_experts[i]);
    ctx->pin(ctx, l, bad_experts[i]);
    ctx->evict(ctx, l, bad_experts[i]);
    ctx->unpin(ctx, l, bad_experts[i]);
    (void)ctx->resident(ctx, l, bad_experts[i]);
  }
  (void)ctx->next_moe_layer(ctx, INT_MIN);
  (void)ctx->next_moe_layer(ctx, INT_MAX);
}

static moe_status begin(void *state, moe_policy_ctx *ctx, int layer, moe_error *err) {
  abuse(ctx, layer);
  return MOE_OK;
}

static moe_status needed(void *state, moe_policy_ctx *ctx, int layer, const int *experts, int n,
                         moe_error *err) {
  abuse(ctx, layer);
  return MOE_OK;
}

static const moe_policy hostile = {
    .abi_version = MOE_POLICY_ABI,
    .struct_size = sizeof(moe_policy),
    .name = "hostile",
    .summary = "asks for layers and experts that do not exist (tests only)",
    .plan = plan,
    .layer_begin = begin,
    .experts_needed = needed,
};

const moe_policy *moe_policy_plugin(void);
const moe_policy *moe_policy_plugin(void) { return &hostile; }
