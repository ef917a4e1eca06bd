/* host-compute and fiddler: experts that do not fit on the device are
 * computed where they live, on the host, instead of being copied in.
 *
 * host-compute: a static placement, as llama.cpp's `--n-cpu-moe N` (and
 * `-ot exps=CPU`) does: the experts of the first N MoE blocks stay in
 * host memory and always run on the host's cores; every other block's
 * experts are resident on the device for the whole run.  N is the
 * smallest that fits the device budget (0 when everything fits: then it
 * is gpu-only).  llama.cpp's user picks N by hand; here the budget does.
 *
 * fiddler: as Fiddler (Kamahori et al., 2024) does: as many experts as the
 * budget allows stay resident (here the last MoE blocks' first, so an
 * encoder-decoder model keeps its decoder's, which run at every step;
 * Fiddler orders them by a profiled popularity), a few slots are
 * kept for copies, and each step, per expert that is not resident, the
 * cost model decides: compute it on the host (its weights read once by
 * the host's cores, its tokens' FLOPs at the host's rate, their
 * activations down and back) or copy it in, whichever finishes first.
 * One token favours the host; a prefill's many tokens on one expert
 * favour the copy.  The times come from the run's hardware profile
 * (moe_policy_env, modeled): without one fiddler cannot decide and
 * refuses to run.
 *
 * pregated-hybrid (new): fiddler's residents, and the pre-gate's
 * prediction of the next block (routing stays conventional, as
 * pregated-spec) decides ahead of time: a predicted expert that is not
 * resident is copied in while this block computes when the copy is worth
 * it (fiddler's rule, for the tokens a predicted expert takes on average;
 * every prediction without the figures), so the copies it makes are
 * hidden; an expert the router picks that is neither resident nor on its
 * way (a wrong guess, or one not worth copying) is computed on the host,
 * never fetched: a wrong guess never stalls on the link. */
#include <stdbool.h>
#include <stdlib.h>

#include "moe/policy.h"

/* ---------------------------------------------------------------- shared */

/* Per-run state: which MoE layers run on the host (host-compute), and the
 * environment the costs and budgets come from. */
typedef struct placement {
  int n_layers;
  unsigned char *host_layer; /* [n_layers] */
  moe_policy_env env;
} placement;

static moe_status placement_create(const moe_policy_env *env, void **state, moe_error *err) {
  placement *s = calloc(1, sizeof *s);
  if (s) s->host_layer = calloc((size_t)(env->n_layers > 0 ? env->n_layers : 1), 1);
  if (s == NULL || s->host_layer == NULL) {
    if (s) free(s->host_layer);
    free(s);
    return MOE_FAIL(err, MOE_ERR_OOM, "host-compute: out of host memory");
  }
  s->n_layers = env->n_layers;
  s->env = *env;
  *state = s;
  return MOE_OK;
}

static void placement_destroy(void *state) {
  placement *s = state;
  if (s) free(s->host_layer);
  free(s);
}

/* Whole experts that fit in the slot budget, at most every expert. */
static long experts_that_fit(const moe_policy_env *env) {
  const long all = (long)env->n_moe_layers * env->n_experts;
  if (env->expert_bytes == 0) return all;
  const size_t fit = env->slot_budget / env->expert_bytes;
  return fit < (size_t)all ? (long)fit : all;
}

static moe_status needs_host(const moe_policy_env *env, const char *name, moe_error *err) {
  if (env->host_exec) return MOE_OK;
  return MOE_FAIL(err, MOE_ERR_UNSUPPORTED, "%s: this engine cannot compute experts on the host",
                  name);
}

/* ---------------------------------------------------------------- host-compute */

/* MoE blocks whose experts stay on the host: the first N, N the fewest
 * that leave the rest inside the budget. */
static int host_blocks(const moe_policy_env *env) {
  const long fit = experts_that_fit(env);
  const int resident_blocks = (int)(fit / (env->n_experts > 0 ? env->n_experts : 1));
  return resident_blocks >= env->n_moe_layers ? 0 : env->n_moe_layers - resident_blocks;
}

static moe_status host_compute_plan(const moe_policy_env *env, moe_policy_plan *plan,
                                    moe_error *err) {
  moe_status st = needs_host(env, "host-compute", err);
  if (st != MOE_OK) return st;
  const int resident = (env->n_moe_layers - host_blocks(env)) * env->n_experts;
  plan->slots = resident > 0 ? resident : 1;
  return MOE_OK;
}

/* The device blocks' experts, loaded once before the first token. */
static moe_status host_compute_warm(void *state, moe_policy_ctx *ctx, moe_error *err) {
  placement *s = state;
  const int n_host = host_blocks(&s->env);
  int ordinal = 0;
  for (int l = ctx->next_moe_layer(ctx, -1); l >= 0; l = ctx->next_moe_layer(ctx, l), ordinal++) {
    if (ordinal < n_host) {
      if (l < s->n_layers) s->host_layer[l] = 1;
      continue;
    }
    for (int e = 0; e < ctx->n_experts(ctx); e++)
      if (ctx->fetch(ctx, l, e) != 1)
        return MOE_FAIL(err, MOE_ERR_INTERNAL, "host-compute: no slot for layer %d expert %d", l, e);
  }
  return MOE_OK;
}

static moe_status host_compute_place(void *state, moe_policy_ctx *ctx, int layer,
                                     const int *experts, const int *tokens, int n,
                                     unsigned char *on_host, moe_error *err) {
  placement *s = state;
  const int host = layer >= 0 && layer < s->n_layers && s->host_layer[layer];
  for (int i = 0; i < n; i++) on_host[i] = (unsigned char)host;
  return MOE_OK;
}

const moe_policy moe_policy_host_compute = {
    .abi_version = MOE_POLICY_ABI,
    .struct_size = sizeof(moe_policy),
    .name = "host-compute",
    .summary = "experts of the first N MoE blocks computed on the host, the rest resident "
               "(llama.cpp --n-cpu-moe; N the fewest that fit the budget)",
    .plan = host_compute_plan,
    .create = placement_create,
    .destroy = placement_destroy,
    .warm = host_compute_warm,
    .place = host_compute_place,
};

/* Makes n experts resident for the whole run, the last MoE blocks' first
 * (in an encoder-decoder model those are the decoder's, which run at every
 * step; the encoder's run once per request), each block's in index order;
 * pinned, so that copies never evict them, unless every expert fits
 * (all: fetched).  Returns how many, or -1 when a slot could not be had. */
static long place_residents(moe_policy_ctx *ctx, long n, bool all) {
  int layers[1024], nl = 0;
  for (int l = ctx->next_moe_layer(ctx, -1); l >= 0 && nl < 1024; l = ctx->next_moe_layer(ctx, l))
    layers[nl++] = l;
  long placed = 0;
  for (int i = nl - 1; i >= 0 && placed < n; i--)
    for (int e = 0; e < ctx->n_experts(ctx) && placed < n; e++, placed++)
      if ((all ? ctx->fetch(ctx, layers[i], e) : ctx->pin(ctx, layers[i], e)) != 1) return -1;
  return placed;
}

/* ---------------------------------------------------------------- fiddler */

/* Slots kept free for copies: one block's activated experts. */
static int copy_slots(const moe_policy_env *env) {
  const int active = env->max_batch * env->top_k;
  return active < env->n_experts ? active : env->n_experts;
}

static moe_status fiddler_plan(const moe_policy_env *env, moe_policy_plan *plan, moe_error *err) {
  moe_status st = needs_host(env, "fiddler", err);
  if (st != MOE_OK) return st;
  const long fit = experts_that_fit(env), all = (long)env->n_moe_layers * env->n_experts;
  plan->slots = (int)(fit > 1 ? fit : 1);
  if (fit >= all) plan->slots = (int)all;
  return MOE_OK;
}

/* A run needs the figures it weighs (planning does not). */
static moe_status fiddler_create(const moe_policy_env *env, void **state, moe_error *err) {
  if (!(env->expert_copy_s > 0) || !(env->host_read_s > 0) || !(env->host_token_s > 0))
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "fiddler: it weighs copying an expert against computing it on the host, and "
                    "this run has no such figures: give it a hardware profile with a host "
                    "section (--hardware), or on the cpu backend a link cap and --host-gbps");
  return placement_create(env, state, err);
}

/* Residents for the whole run: every expert when all fit, else what fits
 * less `spare` slots kept free for copies (place_residents). */
static moe_status warm_residents(const placement *s, moe_policy_ctx *ctx, long spare,
                                 const char *who, moe_error *err) {
  const long all = (long)s->env.n_moe_layers * s->env.n_experts;
  long fit = experts_that_fit(&s->env);
  if (fit < all) fit -= spare;
  if (place_residents(ctx, fit, fit >= all) < 0)
    return MOE_FAIL(err, MOE_ERR_INTERNAL, "%s: no slot for its residents", who);
  return MOE_OK;
}

/* Residents: as many experts as leave copy_slots free. */
static moe_status fiddler_warm(void *state, moe_policy_ctx *ctx, moe_error *err) {
  const placement *s = state;
  return warm_residents(s, ctx, copy_slots(&s->env), "fiddler", err);
}

/* Whether copying an expert that takes `tokens` tokens beats computing it
 * on the host: the host's time (weights read once, or the tokens' FLOPs if
 * more, plus the tokens' activations both ways) against one copy; without
 * the figures, always. */
static bool copy_pays(const moe_policy_env *env, double tokens) {
  if (!(env->expert_copy_s > 0) || !(env->host_read_s > 0)) return true;
  double host = tokens * env->host_token_s;
  if (host < env->host_read_s) host = env->host_read_s;
  return env->expert_copy_s <= host + tokens * env->xfer_token_s;
}

/* Copy or compute on the host, per expert that is not resident
 * (copy_pays). */
static moe_status fiddler_place(void *state, moe_policy_ctx *ctx, int layer, const int *experts,
                                const int *tokens, int n, unsigned char *on_host, moe_error *err) {
  const placement *s = state;
  for (int i = 0; i < n; i++)
    if (!ctx->resident(ctx, layer, experts[i])) on_host[i] = !copy_pays(&s->env, (double)tokens[i]);
  return MOE_OK;
}

/* The experts it chose to copy. */
static moe_status fiddler_needed(void *state, moe_policy_ctx *ctx, int layer, const int *experts,
                                 int n, moe_error *err) {
  for (int i = 0; i < n; i++) ctx->fetch(ctx, layer, experts[i]);
  return MOE_OK;
}

const moe_policy moe_policy_fiddler = {
    .abi_version = MOE_POLICY_ABI,
    .struct_size = sizeof(moe_policy),
    .name = "fiddler",
    .summary = "what fits resident; each other expert computed on the host or copied in, "
               "whichever the cost model says is sooner (Fiddler)",
    .plan = fiddler_plan,
    .create = fiddler_create,
    .destroy = placement_destroy,
    .warm = fiddler_warm,
    .place = fiddler_place,
    .experts_needed = fiddler_needed,
};

/* ---------------------------------------------------------------- pregated-hybrid */

/* Slots for predictions in flight: the current block's and lookahead
 * blocks' activated experts (pregated's plan). */
static int predict_slots(const moe_policy_env *env) {
  const int ahead = env->lookahead >= 1 && env->lookahead <= 3 ? env->lookahead : 1;
  return (env->n_moe_layers > ahead ? ahead + 1 : env->n_moe_layers) * copy_slots(env);
}

static moe_status hybrid_plan(const moe_policy_env *env, moe_policy_plan *plan, moe_error *err) {
  moe_status st = needs_host(env, "pregated-hybrid", err);
  if (st != MOE_OK) return st;
  const long fit = experts_that_fit(env), ahead = predict_slots(env);
  plan->slots = (int)(fit > ahead ? fit : ahead);
  return MOE_OK;
}

/* Residents: what fits beside the prediction slots. */
static moe_status hybrid_warm(void *state, moe_policy_ctx *ctx, moe_error *err) {
  const placement *s = state;
  return warm_residents(s, ctx, predict_slots(&s->env), "pregated-hybrid", err);
}

static moe_status hybrid_predicted(void *state, moe_policy_ctx *ctx, int next_layer,
                                   const int *experts, int n, moe_error *err) {
  const placement *s = state;
  const double tokens = n > 0 ? (double)s->env.max_batch * s->env.top_k / n : 1.0;
  if (!copy_pays(&s->env, tokens < 1.0 ? 1.0 : tokens)) return MOE_OK;
  for (int i = 0; i < n; i++) ctx->fetch(ctx, next_layer, experts[i]);
  return MOE_OK;
}

/* What is neither resident nor on its way runs on the host. */
static moe_status hybrid_place(void *state, moe_policy_ctx *ctx, int layer, const int *experts,
                               const int *tokens, int n, unsigned char *on_host, moe_error *err) {
  for (int i = 0; i < n; i++) on_host[i] = !ctx->resident(ctx, layer, experts[i]);
  return MOE_OK;
}

const moe_policy moe_policy_pregated_hybrid = {
    .abi_version = MOE_POLICY_ABI,
    .struct_size = sizeof(moe_policy),
    .name = "pregated-hybrid",
    .summary = "what fits resident; the pre-gate's predictions copied ahead when worth it; any "
               "other expert computed on the host, never fetched",
    .plan = hybrid_plan,
    .create = placement_create,
    .destroy = placement_destroy,
    .warm = hybrid_warm,
    .experts_predicted = hybrid_predicted,
    .place = hybrid_place,
    .default_routing = MOE_POLICY_ROUTING_CONVENTIONAL,
    .predict_first_block = 1,
};
