/* lru-cache: an example out-of-tree policy, built as a shared object.
 *
 * On-demand fetching with an expert cache: it plans as many slots as the
 * device budget leaves room for (at least one block's worth, at most every
 * expert), fetches what each router picks, and lets the expert store's
 * least-recently-used eviction keep the hot experts resident across blocks
 * and tokens.  Load it with
 *
 *     moebench generate --policy-plugin build/baselines/libmoe_policy_lru_cache.so ...
 *
 * docs/PLUGINS.md walks through this file. */
#include "moe/policy.h"

static moe_status lru_plan(const moe_policy_env *env, moe_policy_plan *plan, moe_error *err) {
  long all = (long)env->n_moe_layers * env->n_experts;
  long fit = env->expert_bytes ? (long)(env->slot_budget / env->expert_bytes) : all;
  long floor = (long)env->max_batch * env->top_k;
  if (floor > env->n_experts) floor = env->n_experts;
  long slots = fit < all ? fit : all;
  if (slots < floor) slots = floor; /* below one block's worth: let the run report OOM */
  plan->slots = (int)slots;
  return MOE_OK;
}

static moe_status lru_needed(void *state, moe_policy_ctx *ctx, int layer, const int *experts,
                             int n, moe_error *err) {
  for (int i = 0; i < n; i++) ctx->fetch(ctx, layer, experts[i]);
  return MOE_OK;
}

static const moe_policy lru_cache = {
    .abi_version = MOE_POLICY_ABI,
    .struct_size = sizeof(moe_policy),
    .name = "lru-cache",
    .summary = "on-demand fetches into an LRU expert cache sized by the device budget (example plugin)",
    .plan = lru_plan,
    .experts_needed = lru_needed,
};

const moe_policy *moe_policy_plugin(void);
const moe_policy *moe_policy_plugin(void) { return &lru_cache; }
