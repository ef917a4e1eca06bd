/* The engine's forward pass: MoE blocks (routing, pre-gating, experts),
 * dense FFNs, the attention kinds, the layer loop, embedding. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"

/* ---------------------------------------------------------------- blocks */

/* Runs the top-k selection on logits already in e->router (plus bias, which
 * may be absent) and downloads indices and weights. */
static moe_status topk_download(moe_engine *e, int layer, bool prediction, size_t T,
                                const moe_weight *bias, int32_t *d_idx, float *d_w,
                                int32_t *h_idx, float *h_w, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = &e->model->cfg;
  const moe_backend_ops *o = e->dev->ops;
  const size_t K = (size_t)c->top_k;
  /* the routing is layer's (a pre-gate's: the block it predicts, expert -2) */
  if (o->set_context) o->set_context(e->dev->be, layer, prediction ? -2 : -1, e->step);
  if (c->router_ex) {
    const moe_router_ex r = {c->top_k, (moe_router_scoring)c->scoring, bias, c->n_group,
                             c->topk_group, (moe_router_group_score)c->group_score, c->norm_topk,
                             c->routed_scale, c->group_mask_neg_inf};
    MOE_TRY(o->router_topk_ex(e->dev->be, d_idx, d_w, e->router, T, c->n_experts, &r, err));
  } else {
    MOE_TRY(moe_backend_router_topk(o, e->dev->be, d_idx, d_w, e->router, T, c->n_experts,
                                    c->top_k, c->norm_topk, bias, err));
  }
  {
    /* indices and weights with one wait of the host */
    const moe_xfer x[2] = {{h_idx, d_idx, T * K * sizeof(int32_t)}, {h_w, d_w, T * K * sizeof(float)}};
    MOE_TRY(moe_device_download_many(e->dev, x, 2, err));
  }
cleanup:
  return st;
}

/* Router logits of MoE layer `layer` for in[T, H] into e->router, then its
 * top-k.  A Switch router's classifier bias is part of the logits (the
 * softmax sees it); the decoder-only families' optional bias only ranks. */
static moe_status route(moe_engine *e, int layer, bool prediction, const float *in, size_t T,
                        int32_t *d_idx, float *d_w, int32_t *h_idx, float *h_w, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_weight router = dw(e, layer, ROLE_ROUTER), bias = dw(e, layer, ROLE_ROUTER_BIAS);
  const moe_weight none = {NULL, e->model->dtype, 0, 0};
  const bool in_logits = e->model->cfg.router_logit_bias;
  MOE_TRY(e->dev->ops->matmul(e->dev->be, e->router, in, T, &router, in_logits ? &bias : NULL, err));
  MOE_TRY(topk_download(e, layer, prediction, T, in_logits ? &none : &bias, d_idx, d_w, h_idx, h_w,
                        err));
cleanup:
  return st;
}

/* pregate_second: each token's best expert outside its top-k by the
 * pre-gate's logits (still in e->router), into p->second, and marked as
 * predicted with a score below every top-k choice's. */
static moe_status second_choices(moe_engine *e, struct pending_pred *p, size_t T, moe_error *err) {
  const size_t K = (size_t)e->model->cfg.top_k, E = (size_t)e->model->cfg.n_experts;
  const moe_status st = e->dev->ops->download(e->dev->be, e->h_plogits, e->router,
                                              T * E * sizeof(float), err);
  if (st != MOE_OK) return st;
  for (size_t t = 0; t < T; t++) {
    const float *l = e->h_plogits + t * E;
    int best = -1;
    for (size_t x = 0; x < E; x++) {
      bool taken = false;
      for (size_t a = 0; a < K && !taken; a++) taken = p->idx[t * K + a] == (int32_t)x;
      if (!taken && (best < 0 || l[x] > l[best])) best = (int)x;
    }
    p->second[t] = best;
    if (best >= 0 && !e->h_pmark[best]) {
      e->h_pmark[best] = 1;
      e->h_pscore[best] = -1.0f;
    }
  }
  return MOE_OK;
}

/* Predicts the experts of MoE layer `next` for the current tokens and tells
 * the policy.  from_input: the checkpoint pre-gate applied to this block's
 * MoE input (e->h); otherwise next's norm and router applied to the
 * residual stream after this block. */
static moe_status pregate(moe_engine *e, int layer, int next, size_t T, bool from_input,
                          bool first, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  const moe_config *c = &e->model->cfg;
  struct pending_pred *p = NULL;
  for (int i = 0; i <= MOE_MAX_LOOKAHEAD && p == NULL; i++)
    if (e->pred[i].layer < 0) p = &e->pred[i];
  MOE_CHECK(p != NULL, err, MOE_ERR_INTERNAL, "more pending predictions than the lookahead allows");
  if (from_input) {
    const moe_weight pg = dw(e, layer, ROLE_PREGATE);
    const moe_weight no_bias = {NULL, e->model->dtype, 0, 0};
    MOE_TRY(o->matmul(be, e->router, e->h, T, &pg, NULL, err));
    MOE_TRY(topk_download(e, next, true, T, &no_bias, e->pidx, e->pw, p->idx, p->w, err));
  } else {
    const moe_weight fn = dw(e, next, ROLE_FFN_NORM);
    MOE_TRY(o->rmsnorm(be, e->tmp, e->x, T, &fn, c->rms_eps, err));
    MOE_TRY(route(e, next, true, e->tmp, T, e->pidx, e->pw, p->idx, p->w, err));
  }
  p->layer = next;
  p->first = first;
  /* the distinct predicted experts, ascending, each with its confidence:
   * the gate weight its tokens give it, summed (the store copies the
   * surest first); with pregate_second each token's next choice too,
   * below every top-k choice (copied last, while slots are left) */
  const size_t K = (size_t)c->top_k;
  memset(e->h_pmark, 0, (size_t)c->n_experts * sizeof(int));
  memset(e->h_pscore, 0, (size_t)c->n_experts * sizeof(float));
  for (size_t i = 0; i < T * K; i++) {
    e->h_pmark[p->idx[i]] = 1;
    e->h_pscore[p->idx[i]] += p->w[i];
  }
  if (e->opt.pregate_second) MOE_TRY(second_choices(e, p, T, err));
  int n = 0;
  for (int x = 0; x < c->n_experts; x++)
    if (e->h_pmark[x]) e->h_pneeded[n++] = x;
  if (e->policy->experts_predicted) moe_expert_store_speculate(e->store, next, e->h_pscore);
  POLICY_CALL(e, experts_predicted, next, e->h_pneeded, n);
cleanup:
  return st;
}

/* Whether the blocks of layer l's stack predict their successors. */
static bool stack_predicts(const moe_engine *e, int l) {
  const unsigned which = e->opt.pregate_stacks ? e->opt.pregate_stacks
                                               : MOE_PREGATE_ENCODER | MOE_PREGATE_DECODER;
  if (!moe_config_is_encdec(&e->model->cfg)) return true;
  return (which & (l < e->model->cfg.n_enc_layers ? MOE_PREGATE_ENCODER : MOE_PREGATE_DECODER)) != 0;
}

/* Expert capacity (Switch, as transformers 5.24 applies it): per sequence,
 * in token order, each expert takes its first `capacity` tokens; a token
 * past it skips the expert, so its FFN output is 0 and the residual passes
 * unchanged.  Dropped (token, expert) pairs get index -1. */
static void apply_capacity(moe_engine *e, size_t T) {
  const moe_config *c = &e->model->cfg;
  const size_t K = (size_t)c->top_k, per_seq = (size_t)e->cur_n_new;
  if (!moe_config_is_encdec(c)) return;
  for (size_t t0 = 0; t0 < T; t0 += per_seq) {
    memset(e->h_cap, 0, (size_t)c->n_experts * sizeof(int));
    for (size_t i = t0 * K; i < (t0 + per_seq) * K && i < T * K; i++)
      if (++e->h_cap[e->h_idx[i]] > c->expert_capacity) e->h_idx[i] = -1;
  }
}

moe_status engine_expert_ffn(const moe_backend_ops *o, moe_backend *be, const moe_expert_weights *w,
                             const float *x, float *ge, float *ue, float *y, size_t n,
                             moe_error *err) {
  moe_status st = MOE_OK;
  const size_t F = w->up.rows;
  if (w->gate.data == NULL) { /* ReLU: wo(relu(wi x)) */
    MOE_TRY(o->matmul(be, ue, x, n, &w->up, NULL, err));
    MOE_TRY(o->unary(be, ue, ue, n * F, MOE_UNARY_RELU, 0.0f, err));
    MOE_TRY(o->matmul(be, y, ue, n, &w->down, NULL, err));
  } else {
    MOE_TRY(o->matmul(be, ge, x, n, &w->gate, NULL, err));
    MOE_TRY(o->matmul(be, ue, x, n, &w->up, NULL, err));
    MOE_TRY(o->swiglu(be, ge, ge, ue, n * F, err));
    MOE_TRY(o->matmul(be, y, ge, n, &w->down, NULL, err));
  }
cleanup:
  return st;
}

/* The MoE block of layer l on h[T, H], accumulated into x. */
/* Scores the predictions made for block l against its router's choice
 * (e->h_idx) and, in pre-gated routing, routes by them instead (the first
 * block is routed by its own router, as the paper does). */
static void take_predictions(moe_engine *e, int l, size_t T, size_t K) {
  for (int i = 0; i <= MOE_MAX_LOOKAHEAD; i++) {
    struct pending_pred *p = &e->pred[i];
    if (p->layer != l) continue;
    unsigned long long *hits = p->first ? &e->first_hits : &e->pregate_hits;
    unsigned long long *total = p->first ? &e->first_total : &e->pregate_total;
    for (size_t t = 0; t < T; t++)
      for (size_t a = 0; a < K; a++) {
        for (size_t b = 0; b < K; b++) *hits += p->idx[t * K + a] == e->h_idx[t * K + b];
        (*total)++;
        if (e->opt.pregate_second && !p->first)
          e->pregate_second_hits += p->second[t] == e->h_idx[t * K + a];
      }
    if (e->opt.routing == MOE_ROUTING_PREGATED && !p->first) {
      memcpy(e->h_idx, p->idx, T * K * sizeof(int32_t));
      memcpy(e->h_wts, p->w, T * K * sizeof(float));
    }
    p->layer = -1;
  }
}

/* Groups the T x K (token, weight) pairs by expert: a counting sort, stable
 * in token order (pairs dropped by the capacity, index -1, are left out).
 * After it h_count[x] is the end of expert x's run in h_rows/h_scale (its
 * start h_count[x-1]) and h_needed[0..n) the experts with tokens, in index
 * order.  Returns n; *routed is the number of pairs kept. */
static int group_by_expert(moe_engine *e, size_t T, size_t K, size_t E, size_t *routed) {
  memset(e->h_count, 0, (E + 1) * sizeof(int));
  for (size_t i = 0; i < T * K; i++)
    if (e->h_idx[i] >= 0) e->h_count[e->h_idx[i] + 1]++;
  int n_needed = 0;
  for (size_t x = 0; x < E; x++)
    if (e->h_count[x + 1] > 0) e->h_needed[n_needed++] = (int)x;
  for (size_t x = 0; x < E; x++) e->h_count[x + 1] += e->h_count[x];
  for (size_t i = 0; i < T * K; i++) {
    if (e->h_idx[i] < 0) continue;
    int slot = e->h_count[e->h_idx[i]]++;
    e->h_rows[slot] = (int32_t)(i / K);
    e->h_scale[slot] = e->h_wts[i] * moe_config_residual_mult(&e->model->cfg);
  }
  *routed = (size_t)e->h_count[E - 1];
  return n_needed;
}

/* Runs block l's device experts in index order, each acquired from the
 * store, its rows gathered from e->h and its weighted output added into
 * e->x; with experts on the host (deferred), each output is kept in yh at
 * its rows' place instead, and engine_host_finish adds them all, in the
 * same order, once the host's are back.  With a streaming ring (cache
 * kind ring) the next `cache_slots` experts of the block are on their way
 * while one computes, in the order they will run (double-buffered at
 * one). */
static moe_status run_experts(moe_engine *e, int l, int n_needed, bool deferred, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  const size_t H = (size_t)e->model->cfg.hidden, E = (size_t)e->model->cfg.n_experts;
  const int stream = e->opt.cache == MOE_CACHE_RING ? e->cache_slots : 0;
  int pos = 0;
  for (size_t x = 0; x < E; x++) {
    size_t begin = x ? (size_t)e->h_count[x - 1] : 0, n = (size_t)e->h_count[x] - begin;
    if (n == 0 || (deferred && e->h_onhost[x])) continue;
    moe_expert_weights w;
    op_context(e, l, (int)x);
    for (int j = pos + 1; j <= pos + stream && j < n_needed; j++)
      if (moe_expert_store_fetch(e->store, l, e->h_dneeded[j], true, err) < 0)
        MOE_TRY(err ? err->status : MOE_ERR_DEVICE);
    pos++;
    float *y = deferred ? e->yh + begin * H : e->ye;
    MOE_TRY(moe_expert_store_acquire(e->store, l, (int)x, &w, err));
    MOE_TRY(o->gather_rows(be, e->xe, e->h, e->rows + begin, n, H, err));
    MOE_TRY(engine_expert_ffn(o, be, &w, e->xe, e->ge, e->ue, y, n, err));
    if (!deferred)
      MOE_TRY(o->scatter_add_rows(be, e->x, y, e->rows + begin, e->rw + begin, 1, false, n, H, err));
    MOE_TRY(moe_expert_store_release(e->store, l, (int)x, err));
  }
cleanup:
  return st;
}

/* Scales a sublayer's output y[n] before its residual add by the model's
 * residual multiplier (Granite's; 1 for the other families: nothing). */
static moe_status residual_scale(moe_engine *e, float *y, size_t n, moe_error *err) {
  const float r = moe_config_residual_mult(&e->model->cfg);
  return r == 1.0f ? MOE_OK : e->dev->ops->unary(e->dev->be, y, y, n, MOE_UNARY_SCALE, r, err);
}

/* The shared expert of block l over all T rows, added into e->x: gated per
 * token by a sigmoid (Qwen2-MoE) or as it is (DeepSeek). */
static moe_status shared_expert(moe_engine *e, int l, size_t T, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  const size_t H = (size_t)e->model->cfg.hidden;
  const moe_weight g = dw(e, l, ROLE_SH_GATE), u = dw(e, l, ROLE_SH_UP),
                   d = dw(e, l, ROLE_SH_DOWN), sg = dw(e, l, ROLE_SH_EXPERT_GATE);
  MOE_TRY(o->matmul(be, e->ge, e->h, T, &g, NULL, err));
  MOE_TRY(o->matmul(be, e->ue, e->h, T, &u, NULL, err));
  MOE_TRY(o->swiglu(be, e->ge, e->ge, e->ue, T * g.rows, err));
  MOE_TRY(o->matmul(be, e->ye, e->ge, T, &d, NULL, err));
  MOE_TRY(residual_scale(e, e->ye, T * H, err));
  if (sg.data) {
    MOE_TRY(o->matmul(be, e->sg, e->h, T, &sg, NULL, err));
    MOE_TRY(o->scatter_add_rows(be, e->x, e->ye, e->iota, e->sg, 1, true, T, H, err));
  } else {
    MOE_TRY(o->add(be, e->x, e->ye, T * H, err));
  }
cleanup:
  return st;
}

static moe_status moe_block(moe_engine *e, int l, size_t T, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = &e->model->cfg;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  const size_t K = (size_t)c->top_k, E = (size_t)c->n_experts;
  /* the block this one predicts: the lookahead-th MoE block after it in
   * its stack; a checkpoint pre-gate is trained for the next one only */
  const int ahead = e->opt.pregate_lookahead > 0 ? e->opt.pregate_lookahead : 1;
  int next = l;
  for (int k = 0; k < ahead && next >= 0; k++) next = next_moe_in_stack(e->model, next);
  const bool want_pred = next >= 0 && stack_predicts(e, l) &&
                         (e->opt.routing == MOE_ROUTING_PREGATED ||
                          e->policy->experts_predicted != NULL);
  const bool pred_from_input = ahead == 1 && moe_model_spec(e->model, l, ROLE_PREGATE) != NULL;

  /* The block's own router: the routing in conventional mode, the yardstick
   * of the prediction otherwise. */
  MOE_TRY(route(e, l, false, e->h, T, e->ridx, e->rw, e->h_idx, e->h_wts, err));
  if (e->opt.on_route) e->opt.on_route(e->opt.on_route_ctx, l, e->step, e->h_idx, T, (int)K);
  take_predictions(e, l, T, K);
  apply_capacity(e, T);
  size_t routed;
  const int n_needed = group_by_expert(e, T, K, E, &routed);
  int n_dev = n_needed, n_host = 0;
  MOE_TRY(engine_host_place(e, l, n_needed, &n_dev, &n_host, err));
  moe_expert_store_begin_block(e->store, l, e->h_dneeded, n_dev);
  POLICY_CALL(e, experts_needed, l, e->h_dneeded, n_dev);
  if (moe_expert_store_settle(e->store, l, e->h_dneeded, n_dev, err) < 0)
    MOE_TRY(err ? err->status : MOE_ERR_DEVICE);
  if (want_pred && pred_from_input) MOE_TRY(pregate(e, l, next, T, true, false, err));
  if (routed > 0) {
    MOE_TRY(o->upload(be, e->rows, e->h_rows, routed * sizeof(int32_t), err));
    MOE_TRY(o->upload(be, e->rw, e->h_scale, routed * sizeof(float), err));
  }
  if (n_host > 0) MOE_TRY(engine_host_issue(e, l, err));
  MOE_TRY(run_experts(e, l, n_dev, n_host > 0, err));
  if (n_host > 0) MOE_TRY(engine_host_finish(e, l, err));
  moe_expert_store_end_block(e->store, l);
  op_context(e, l, -1);
  if (c->shared_ffn > 0) MOE_TRY(shared_expert(e, l, T, err));
  if (want_pred && !pred_from_input) MOE_TRY(pregate(e, l, next, T, false, false, err));
cleanup:
  /* a failure between issue and finish leaves the host's job running:
   * it ends before the block returns (its first error stays the one said) */
  if (st != MOE_OK) (void)engine_host_settle(e, NULL);
  return st;
}

static moe_status dense_ffn(moe_engine *e, int l, size_t T, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  const moe_weight g = dw(e, l, ROLE_D_GATE), u = dw(e, l, ROLE_D_UP), d = dw(e, l, ROLE_D_DOWN);
  if (e->model->cfg.ffn_act == MOE_FFN_RELU) {
    MOE_TRY(o->matmul(be, e->ue, e->h, T, &u, NULL, err));
    MOE_TRY(o->unary(be, e->ue, e->ue, T * u.rows, MOE_UNARY_RELU, 0.0f, err));
    MOE_TRY(o->matmul(be, e->tmp, e->ue, T, &d, NULL, err));
  } else {
    MOE_TRY(o->matmul(be, e->ge, e->h, T, &g, NULL, err));
    MOE_TRY(o->matmul(be, e->ue, e->h, T, &u, NULL, err));
    MOE_TRY(o->swiglu(be, e->ge, e->ge, e->ue, T * g.rows, err));
    MOE_TRY(o->matmul(be, e->tmp, e->ge, T, &d, NULL, err));
  }
  MOE_TRY(residual_scale(e, e->tmp, T * (size_t)e->model->cfg.hidden, err));
  MOE_TRY(o->add(be, e->x, e->tmp, T * (size_t)e->model->cfg.hidden, err));
cleanup:
  return st;
}

/* Self-attention of a decoder-only layer: RoPE, the KV cache, causal
 * attention scaled by 1/sqrt(head_dim), or by the model's own scale
 * (attn_mult, Granite's attention_multiplier).  e->h in, e->att out. */
static moe_status rope_attention(moe_engine *e, int l, size_t T, const moe_attn_shape *shape,
                                 moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = &e->model->cfg;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  const moe_weight wq = dw(e, l, ROLE_WQ), wk = dw(e, l, ROLE_WK), wv = dw(e, l, ROLE_WV),
                   bq = dw(e, l, ROLE_BQ), bk = dw(e, l, ROLE_BK), bv = dw(e, l, ROLE_BV);
  float *kc = e->k_cache + (size_t)l * e->cache_layer_floats;
  float *vc = e->v_cache + (size_t)l * e->cache_layer_floats;
  MOE_TRY(o->matmul(be, e->q, e->h, T, &wq, &bq, err));
  MOE_TRY(o->matmul(be, e->k, e->h, T, &wk, &bk, err));
  MOE_TRY(o->matmul(be, e->v, e->h, T, &wv, &bv, err));
  if (c->qk_norm != MOE_QK_NORM_NONE) {
    /* per head: rows of head_dim (the projection is [T, heads x head_dim],
     * so [T x heads, head_dim]); full: rows of the whole projection */
    const bool head = c->qk_norm == MOE_QK_NORM_HEAD;
    const moe_weight qn = dw(e, l, ROLE_QNORM), kn = dw(e, l, ROLE_KNORM);
    MOE_TRY(o->rmsnorm(be, e->q, e->q, head ? T * (size_t)c->n_heads : T, &qn, c->rms_eps, err));
    MOE_TRY(o->rmsnorm(be, e->k, e->k, head ? T * (size_t)c->n_kv_heads : T, &kn, c->rms_eps, err));
  }
  if (e->use_rope_ex) { /* scaled RoPE: the engine's frequencies */
    const size_t hd = (size_t)c->head_dim;
    const moe_rope_ex rq = {c->n_heads, (size_t)c->n_heads * hd, hd, 0, c->head_dim, false,
                            e->inv_freq, e->rope_attn, c->rope_theta};
    const moe_rope_ex rk = {c->n_kv_heads, (size_t)c->n_kv_heads * hd, hd, 0, c->head_dim, false,
                            e->inv_freq, e->rope_attn, c->rope_theta};
    MOE_TRY(o->rope_ex(be, e->q, T, e->pos, &rq, err));
    MOE_TRY(o->rope_ex(be, e->k, T, e->pos, &rk, err));
  } else { /* plain RoPE: rope_ex from theta (no table), or a legacy table's rope */
    MOE_TRY(moe_backend_rope(o, be, e->q, T, e->pos, c->n_heads, c->head_dim, c->rope_theta,
                             NULL, err));
    MOE_TRY(moe_backend_rope(o, be, e->k, T, e->pos, c->n_kv_heads, c->head_dim, c->rope_theta,
                             NULL, err));
  }
  MOE_TRY(o->kv_store(be, kc, vc, e->k, e->v, shape, err));
  if (c->attn_mult > 0.0f) {
    const moe_attn_ex a = {shape->n_seq, shape->n_new, shape->pos0, shape->pos0 + shape->n_new,
                           shape->max_seq, c->n_heads, c->n_kv_heads, c->head_dim, true,
                           e->attn_scale, NULL, NULL, 0};
    MOE_TRY(o->attention_ex(be, e->att, e->q, kc, vc, &a, err));
  } else {
    MOE_TRY(moe_backend_attention(o, be, e->att, e->q, kc, vc, shape, err));
  }
cleanup:
  return st;
}

/* Multi-head latent attention of a DeepSeek layer (e->h in, e->att out):
 * the query (through q_a_proj, its norm and q_b_proj, or q_proj), the
 * latent c = norm(kv_a_proj's first kv_rank outputs) into e->k and the
 * shared key k_pe = its last rope_dim outputs into e->v (two products on
 * row views of the one weight), RoPE on the query's rotated part and on
 * k_pe, then the backend's mla_attention over the latent cache. */
static moe_status latent_attention(moe_engine *e, int l, size_t T, const moe_attn_shape *shape,
                                   moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = &e->model->cfg;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  const moe_weight wq = dw(e, l, ROLE_WQ), kva = dw(e, l, ROLE_KVA), bkva = dw(e, l, ROLE_BKVA),
                   kvn = dw(e, l, ROLE_KVA_NORM), kvb = dw(e, l, ROLE_KVB);
  const size_t es = moe_dtype_size(kva.dtype), R = (size_t)c->kv_rank, P = (size_t)c->rope_dim;
  if (c->q_rank > 0) {
    const moe_weight qa = dw(e, l, ROLE_QA), bqa = dw(e, l, ROLE_BQA), qn = dw(e, l, ROLE_QA_NORM);
    MOE_TRY(o->matmul(be, e->k, e->h, T, &qa, &bqa, err));
    MOE_TRY(o->rmsnorm(be, e->k, e->k, T, &qn, c->rms_eps, err));
    MOE_TRY(o->matmul(be, e->q, e->k, T, &wq, NULL, err));
  } else {
    MOE_TRY(o->matmul(be, e->q, e->h, T, &wq, NULL, err));
  }
  const moe_weight lat = {kva.data, kva.dtype, R, kva.cols};
  const moe_weight rot = {(const uint8_t *)kva.data + R * kva.cols * es, kva.dtype, P, kva.cols};
  const moe_weight blat = {bkva.data, bkva.dtype, 1, R};
  const moe_weight brot = {bkva.data ? (const uint8_t *)bkva.data + R * es : NULL, bkva.dtype, 1, P};
  MOE_TRY(o->matmul(be, e->k, e->h, T, &lat, &blat, err));
  MOE_TRY(o->rmsnorm(be, e->k, e->k, T, &kvn, c->rms_eps, err));
  MOE_TRY(o->matmul(be, e->v, e->h, T, &rot, &brot, err));
  const size_t qw = (size_t)c->nope_dim + P;
  const moe_rope_ex rq = {c->n_heads, (size_t)c->n_heads * qw, qw, c->nope_dim, c->rope_dim,
                          c->rope_interleave, e->inv_freq, e->rope_attn, c->rope_theta};
  const moe_rope_ex rk = {1, P, P, 0, c->rope_dim, c->rope_interleave, e->inv_freq, e->rope_attn,
                          c->rope_theta};
  MOE_TRY(o->rope_ex(be, e->q, T, e->pos, &rq, err));
  MOE_TRY(o->rope_ex(be, e->v, T, e->pos, &rk, err));
  const moe_mla_shape ms = {shape->n_seq, shape->n_new, shape->pos0, shape->max_seq, c->n_heads,
                            c->nope_dim, c->rope_dim, c->v_dim, c->kv_rank,
                            e->attn_scale};
  MOE_TRY(o->mla_attention(be, e->att, e->q, e->k_cache + (size_t)l * e->cache_layer_floats,
                           e->v_cache + (size_t)l * e->vcache_layer_floats, e->k, e->v, &kvb, &ms,
                           err));
cleanup:
  return st;
}

/* Self-attention of a Switch (T5) layer: no position embedding and no
 * 1/sqrt(d) scale; the relative-position bias of the stack's first layer,
 * bidirectional in the encoder, causal in the decoder.  The encoder writes
 * its K/V into the first decoder layer's cache as scratch (positions 0 ..
 * src_len - 1); the decoder into its own layer's cache. */
static moe_status t5_self_attention(moe_engine *e, int l, size_t T, const moe_attn_shape *shape,
                                    moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = &e->model->cfg;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  const bool dec = l >= c->n_enc_layers;
  const moe_weight wq = dw(e, l, ROLE_WQ), wk = dw(e, l, ROLE_WK), wv = dw(e, l, ROLE_WV);
  const moe_weight rb = dw(e, dec ? c->n_enc_layers : 0, ROLE_REL_BIAS);
  const size_t slot = dec ? (size_t)(l - c->n_enc_layers) : 0;
  float *kc = e->k_cache + slot * e->cache_layer_floats;
  float *vc = e->v_cache + slot * e->cache_layer_floats;
  MOE_TRY(o->matmul(be, e->q, e->h, T, &wq, NULL, err));
  MOE_TRY(o->matmul(be, e->k, e->h, T, &wk, NULL, err));
  MOE_TRY(o->matmul(be, e->v, e->h, T, &wv, NULL, err));
  MOE_TRY(o->kv_store(be, kc, vc, e->k, e->v, shape, err));
  const size_t nbk = 2 * (size_t)e->opt.max_seq - 1;
  const moe_attn_ex a = {shape->n_seq, shape->n_new, shape->pos0,
                         dec ? shape->pos0 + shape->n_new : shape->n_new, shape->max_seq,
                         c->n_heads, c->n_kv_heads, c->head_dim, dec, 1.0f, &rb,
                         e->buckets + (dec ? nbk : 0), e->opt.max_seq - 1};
  MOE_TRY(o->attention_ex(be, e->att, e->q, kc, vc, &a, err));
cleanup:
  return st;
}

/* Cross-attention of decoder layer l over the encoder output's K/V. */
static moe_status cross_attention(moe_engine *e, int l, size_t T, const moe_attn_shape *shape,
                                  moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = &e->model->cfg;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  const moe_weight xn = dw(e, l, ROLE_XATTN_NORM), xq = dw(e, l, ROLE_XQ), xo = dw(e, l, ROLE_XO);
  const size_t slot = (size_t)(l - c->n_enc_layers);
  MOE_TRY(o->rmsnorm(be, e->h, e->x, T, &xn, c->rms_eps, err));
  MOE_TRY(o->matmul(be, e->q, e->h, T, &xq, NULL, err));
  const moe_attn_ex a = {shape->n_seq, shape->n_new, shape->pos0, e->src_len, shape->max_seq,
                         c->n_heads, c->n_kv_heads, c->head_dim, false, 1.0f, NULL, NULL, 0};
  MOE_TRY(o->attention_ex(be, e->att, e->q, e->xk_cache + slot * e->cache_layer_floats,
                          e->xv_cache + slot * e->cache_layer_floats, &a, err));
  MOE_TRY(o->matmul(be, e->tmp, e->att, T, &xo, NULL, err));
  MOE_TRY(o->add(be, e->x, e->tmp, T * (size_t)c->hidden, err));
cleanup:
  return st;
}

/* Layers [l0, l1) on the residual stream e->x of n_seq x n_new tokens at
 * positions pos0.. (e->pos uploaded). */
static moe_status run_layers(moe_engine *e, int l0, int l1, int n_seq, int n_new, int pos0,
                             moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = &e->model->cfg;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  const size_t T = (size_t)n_seq * (size_t)n_new, H = (size_t)c->hidden;
  const moe_attn_kind attn = moe_family_by_arch(c->arch)->attention;
  const bool t5 = attn == MOE_ATTN_T5;
  const moe_attn_shape shape = {n_seq, n_new, pos0, e->opt.max_seq, c->n_heads, c->n_kv_heads,
                                c->head_dim};
  const int first_moe = first_moe_in(e->model, l0, l1);
  e->cur_n_new = n_new;
  e->step++;
  for (int i = 0; i <= MOE_MAX_LOOKAHEAD; i++) e->pred[i].layer = -1;
  for (int l = l0; l < l1; l++) {
    op_context(e, l, -1);
    POLICY_CALL(e, layer_begin, l);
    /* the first MoE block has no block before it to predict it: a policy
     * that asks gets its router applied to the layer input, before
     * attention, so the copies overlap this layer's attention */
    if (l == first_moe && e->policy->predict_first_block && e->policy->experts_predicted &&
        stack_predicts(e, l)) {
      MOE_TRY(pregate(e, l, l, T, false, true, err));
    }
    const moe_weight an = dw(e, l, ROLE_ATTN_NORM), fn = dw(e, l, ROLE_FFN_NORM),
                     wo = dw(e, l, ROLE_WO), bo = dw(e, l, ROLE_BO);
    MOE_TRY(o->rmsnorm(be, e->h, e->x, T, &an, c->rms_eps, err));
    if (t5)
      MOE_TRY(t5_self_attention(e, l, T, &shape, err));
    else if (attn == MOE_ATTN_MLA)
      MOE_TRY(latent_attention(e, l, T, &shape, err));
    else
      MOE_TRY(rope_attention(e, l, T, &shape, err));
    MOE_TRY(o->matmul(be, e->tmp, e->att, T, &wo, &bo, err));
    MOE_TRY(residual_scale(e, e->tmp, T * H, err));
    MOE_TRY(o->add(be, e->x, e->tmp, T * H, err));
    if (t5 && l >= c->n_enc_layers) MOE_TRY(cross_attention(e, l, T, &shape, err));
    MOE_TRY(o->rmsnorm(be, e->h, e->x, T, &fn, c->rms_eps, err));
    if (c->is_moe[l])
      MOE_TRY(moe_block(e, l, T, err));
    else
      MOE_TRY(dense_ffn(e, l, T, err));
    POLICY_CALL(e, layer_end, l);
  }
  op_context(e, -1, -1);
cleanup:
  return st;
}

/* Checks and uploads the token ids and positions of one forward call, and
 * embeds them into e->x with the given table. */
static moe_status embed_tokens(moe_engine *e, const int32_t *tokens, int n_seq, int n_new,
                               int pos0, const moe_weight *table, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = &e->model->cfg;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  MOE_CHECK(n_seq > 0 && n_seq <= e->opt.max_batch, err, MOE_ERR_INVALID,
            "batch %d is outside 1..%d", n_seq, e->opt.max_batch);
  MOE_CHECK(n_new > 0 && n_new <= e->opt.max_prefill, err, MOE_ERR_INVALID,
            "%d tokens per sequence exceed the engine's limit %d", n_new, e->opt.max_prefill);
  MOE_CHECK(pos0 >= 0 && pos0 + n_new <= e->opt.max_seq, err, MOE_ERR_INVALID,
            "positions %d..%d exceed the sequence limit %d", pos0, pos0 + n_new - 1,
            e->opt.max_seq);
  const size_t T = (size_t)n_seq * (size_t)n_new;
  e->last_rows = T;
  moe_trace_mark(e->dev->trace, "forward");
  for (size_t i = 0; i < T; i++) {
    MOE_CHECK(tokens[i] >= 0 && tokens[i] < c->vocab, err, MOE_ERR_INVALID,
              "token id %d at index %zu is outside the vocabulary (0..%d)", (int)tokens[i], i,
              c->vocab - 1);
    e->h_pos[i] = pos0 + (int32_t)(i % (size_t)n_new);
  }
  MOE_TRY(o->upload(be, e->ids, tokens, T * sizeof(int32_t), err));
  MOE_TRY(o->upload(be, e->pos, e->h_pos, T * sizeof(int32_t), err));
  MOE_TRY(o->embed(be, e->x, table, e->ids, T, err));
  if (moe_config_embed_mult(c) != 1.0f) /* Granite's embedding_multiplier */
    MOE_TRY(o->unary(be, e->x, e->x, T * (size_t)c->hidden, MOE_UNARY_SCALE,
                     moe_config_embed_mult(c), err));
cleanup:
  return st;
}

moe_status moe_engine_encode(moe_engine *e, const int32_t *src, int n_seq, int src_len,
                             moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = &e->model->cfg;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  e->cb_err = err;
  MOE_CHECK(moe_config_is_encdec(c), err, MOE_ERR_INVALID,
            "encode: the model has no encoder (decoder-only: use forward)");
  e->enc_seq = e->src_len = 0;
  const moe_weight enc_emb = moe_model_spec(e->model, -1, ROLE_ENC_EMBED)
                                 ? dw(e, -1, ROLE_ENC_EMBED)
                                 : dw(e, -1, ROLE_EMBED);
  MOE_TRY(embed_tokens(e, src, n_seq, src_len, 0, &enc_emb, err));
  MOE_TRY(run_layers(e, 0, c->n_enc_layers, n_seq, src_len, 0, err));
  /* the encoder output, then every decoder layer's cross K/V of it */
  const size_t T = (size_t)n_seq * (size_t)src_len;
  const moe_weight fn = dw(e, -1, ROLE_ENC_FINAL_NORM);
  MOE_TRY(o->rmsnorm(be, e->h, e->x, T, &fn, c->rms_eps, err));
  const moe_attn_shape shape = {n_seq, src_len, 0, e->opt.max_seq, c->n_heads, c->n_kv_heads,
                                c->head_dim};
  for (int l = c->n_enc_layers; l < c->n_layers; l++) {
    const moe_weight xk = dw(e, l, ROLE_XK), xv = dw(e, l, ROLE_XV);
    const size_t slot = (size_t)(l - c->n_enc_layers);
    MOE_TRY(o->matmul(be, e->k, e->h, T, &xk, NULL, err));
    MOE_TRY(o->matmul(be, e->v, e->h, T, &xv, NULL, err));
    MOE_TRY(o->kv_store(be, e->xk_cache + slot * e->cache_layer_floats,
                        e->xv_cache + slot * e->cache_layer_floats, e->k, e->v, &shape, err));
  }
  e->enc_seq = n_seq;
  e->src_len = src_len;
cleanup:
  return st;
}

moe_status moe_engine_encoder_output(moe_engine *e, float *out, moe_error *err) {
  if (e->src_len == 0)
    return MOE_FAIL(err, MOE_ERR_INVALID, "encoder output: nothing has been encoded");
  const size_t n = (size_t)e->enc_seq * (size_t)e->src_len * (size_t)e->model->cfg.hidden;
  /* e->h holds it until the decoder's first forward overwrites it */
  return e->dev->ops->download(e->dev->be, out, e->h, n * sizeof(float), err);
}

/* The forward pass; logits NULL: they stay on the device (e->logits). */
moe_status engine_forward(moe_engine *e, const int32_t *tokens, int n_seq, int n_new, int pos0,
                          float *logits, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = &e->model->cfg;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  const bool encdec = moe_config_is_encdec(c);
  e->cb_err = err;
  if (encdec)
    MOE_CHECK(e->src_len > 0 && n_seq == e->enc_seq, err, MOE_ERR_INVALID,
              "decoder forward of %d sequences: %s", n_seq,
              e->src_len > 0 ? "the encoder ran on a different batch" : "encode the inputs first");
  const size_t T = (size_t)n_seq * (size_t)n_new, H = (size_t)c->hidden;
  const moe_weight emb = dw(e, -1, ROLE_EMBED);
  MOE_TRY(embed_tokens(e, tokens, n_seq, n_new, pos0, &emb, err));
  MOE_TRY(run_layers(e, encdec ? c->n_enc_layers : 0, c->n_layers, n_seq, n_new, pos0, err));
  const moe_weight fnorm = dw(e, -1, ROLE_FINAL_NORM);
  const moe_weight head = c->tie_embeddings ? emb : dw(e, -1, ROLE_LM_HEAD);
  size_t rows = T;
  if (!e->opt.all_logits) {
    /* Only each sequence's last token feeds the next step. */
    for (int b = 0; b < n_seq; b++) e->h_rows[b] = b * n_new + n_new - 1;
    MOE_TRY(o->upload(be, e->rows, e->h_rows, (size_t)n_seq * sizeof(int32_t), err));
    MOE_TRY(o->gather_rows(be, e->tmp, e->x, e->rows, (size_t)n_seq, H, err));
    MOE_TRY(o->rmsnorm(be, e->h, e->tmp, (size_t)n_seq, &fnorm, c->rms_eps, err));
    rows = (size_t)n_seq;
  } else {
    MOE_TRY(o->rmsnorm(be, e->h, e->x, T, &fnorm, c->rms_eps, err));
  }
  /* Switch (T5) with tied embeddings rescales by d_model^-0.5 before the head */
  if (encdec && c->tie_embeddings)
    MOE_TRY(o->unary(be, e->h, e->h, rows * H, MOE_UNARY_SCALE, (float)pow((double)c->hidden, -0.5),
                     err));
  MOE_TRY(o->matmul(be, e->logits, e->h, rows, &head, NULL, err));
  if (moe_config_logit_div(c) != 1.0f) /* Granite's logits_scaling */
    MOE_TRY(o->unary(be, e->logits, e->logits, rows * (size_t)c->vocab, MOE_UNARY_SCALE,
                     1.0f / moe_config_logit_div(c), err));
  if (logits) MOE_TRY(o->download(be, logits, e->logits, rows * (size_t)c->vocab * sizeof(float), err));
cleanup:
  return st;
}

moe_status moe_engine_forward(moe_engine *e, const int32_t *tokens, int n_seq, int n_new, int pos0,
                              float *logits, moe_error *err) {
  if (logits == NULL) return MOE_FAIL(err, MOE_ERR_INVALID, "forward: logits is NULL");
  return engine_forward(e, tokens, n_seq, n_new, pos0, logits, err);
}
