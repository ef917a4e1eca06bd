/* pregated and pregated-spec.
 *
 * pregated: the pre-gate of block N names the experts block N+1 will use;
 * they are copied in while block N computes (Pre-gated MoE, Hwang et al.,
 * ISCA 2024).  Device slots: the current block's activated experts plus the
 * next block's, 2 x min(E, batch x top_k).
 *
 * The first MoE block has no pre-gate before it: its experts are fetched
 * when its router picks them; so are those of any block nothing predicted
 * (an encoder-decoder model's first decoder block, or a stack that does
 * not pre-gate).  With conventional routing a wrong prediction
 * is fetched by the engine when needed (a miss); with pregated routing the
 * prediction is the routing, so there are no misses.
 *
 * pregated-spec: the same copies, but the routing stays conventional by
 * default: the pre-gate's choice is only a speculation about what block
 * N+1's own router will pick.  Outputs are gpu-only's bit for bit, whatever
 * the pre-gate; a right guess hides its copy, a wrong one costs a miss (the
 * engine fetches the routed expert) and a wasted copy (counted in
 * expert_wasted_copies when evicted unused).  It also asks the engine to
 * predict the first MoE block from its layer input (predict_first_block),
 * so that block's copies overlap its attention instead of being exposed.
 *
 * pregated-hybrid (host_compute.c) adds computing on the host to these
 * copies. */
#include <stdlib.h>

#include "moe/policy.h"

static moe_status pregated_plan(const moe_policy_env *env, moe_policy_plan *plan, moe_error *err) {
  int active = env->max_batch * env->top_k;
  if (active > env->n_experts) active = env->n_experts;
  /* the current block's experts and those of the blocks predicted ahead
   * of it: lookahead k keeps k predictions in flight */
  const int ahead = env->lookahead >= 1 && env->lookahead <= 3 ? env->lookahead : 1;
  const int blocks = env->n_moe_layers > ahead ? ahead + 1 : env->n_moe_layers;
  plan->slots = (blocks > 1 ? blocks : 1) * active;
  return MOE_OK;
}

/* Which MoE layers a previous block has predicted in this forward: their
 * experts are already on their way, and only they may skip the fetch in
 * experts_needed.  A block nothing predicted (the first block, the first
 * block of a decoder, a stack that does not pre-gate) fetches what its
 * router picked.  A first-block prediction (predict_first_block, made at
 * that block's own layer_begin) is only a head start: the block still
 * fetches its routed experts. */
typedef struct pregated_state {
  int n_layers, cur_layer;
  unsigned char *predicted;
} pregated_state;

static moe_status pregated_create(const moe_policy_env *env, void **state, moe_error *err) {
  pregated_state *s = calloc(1, sizeof *s);
  if (s) s->predicted = calloc((size_t)(env->n_layers > 0 ? env->n_layers : 1), 1);
  if (s == NULL || s->predicted == NULL) {
    if (s) free(s->predicted);
    free(s);
    return MOE_FAIL(err, MOE_ERR_OOM, "pregated: out of host memory");
  }
  s->n_layers = env->n_layers;
  s->cur_layer = -1;
  *state = s;
  return MOE_OK;
}

static void pregated_destroy(void *state) {
  pregated_state *s = state;
  if (s) free(s->predicted);
  free(s);
}

static moe_status pregated_begin(void *state, moe_policy_ctx *ctx, int layer, moe_error *err) {
  ((pregated_state *)state)->cur_layer = layer;
  return MOE_OK;
}

static moe_status pregated_needed(void *state, moe_policy_ctx *ctx, int layer, const int *experts,
                                  int n, moe_error *err) {
  pregated_state *s = state;
  if (layer >= 0 && layer < s->n_layers && s->predicted[layer]) {
    s->predicted[layer] = 0; /* predicted by the block before it: on their way */
    return MOE_OK;
  }
  for (int i = 0; i < n; i++) ctx->fetch(ctx, layer, experts[i]);
  return MOE_OK;
}

static moe_status pregated_predicted(void *state, moe_policy_ctx *ctx, int next_layer,
                                     const int *experts, int n, moe_error *err) {
  pregated_state *s = state;
  for (int i = 0; i < n; i++) ctx->fetch(ctx, next_layer, experts[i]);
  if (next_layer != s->cur_layer && next_layer >= 0 && next_layer < s->n_layers)
    s->predicted[next_layer] = 1;
  return MOE_OK;
}

const moe_policy moe_policy_pregated_spec = {
    .abi_version = MOE_POLICY_ABI,
    .struct_size = sizeof(moe_policy),
    .name = "pregated-spec",
    .summary = "speculative pre-gating: prefetch block N+1's predicted experts, route conventionally "
               "(gpu-only's outputs, misses for wrong guesses)",
    .plan = pregated_plan,
    .create = pregated_create,
    .destroy = pregated_destroy,
    .layer_begin = pregated_begin,
    .experts_needed = pregated_needed,
    .experts_predicted = pregated_predicted,
    .default_routing = MOE_POLICY_ROUTING_CONVENTIONAL,
    .predict_first_block = 1,
};

const moe_policy moe_policy_pregated = {
    .abi_version = MOE_POLICY_ABI,
    .struct_size = sizeof(moe_policy),
    .name = "pregated",
    .summary = "copy the experts block N's pre-gate picked for block N+1 while block N computes",
    .plan = pregated_plan,
    .create = pregated_create,
    .destroy = pregated_destroy,
    .layer_begin = pregated_begin,
    .experts_needed = pregated_needed,
    .experts_predicted = pregated_predicted,
    .default_routing = MOE_POLICY_ROUTING_PREGATED,
};
