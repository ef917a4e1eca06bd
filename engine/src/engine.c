/* The engine: a model placed on a backend, forward pass and greedy decode,
 * with the offload policy called at fixed points.
 *
 * Per layer: RMSNorm, grouped-query attention with RoPE and a KV cache,
 * residual; RMSNorm, then an MoE block or a dense SwiGLU FFN; residual.
 * Final norm and lm_head.  All math goes through the backend; every device
 * buffer comes from one size table (engine_buffers), so the memory plan and
 * the allocations cannot disagree.
 *
 * MoE block: router (or the previous block's pre-gate, in pregated
 * routing), top-k, tokens grouped by expert with a stable counting sort so
 * each expert's weights are read once per block per step; experts run in
 * index order (the same bits whatever the policy), each acquired from the
 * expert store, which waits for its copy or fetches it as a miss. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine_internal.h"
#include "moe/cost.h"


int moe_argmax(const float *x, int n) {
  int best = 0;
  for (int i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return best;
}

const char *moe_routing_name(moe_routing r) {
  return r == MOE_ROUTING_PREGATED ? "pregated" : "conventional";
}

int moe_cache_kind_parse(const char *s, moe_cache_kind *out) {
  static const char *const names[] = {"none", "lru", "lfu", "static", "ring"};
  for (int i = 0; i < 5; i++)
    if (strcmp(s, names[i]) == 0) {
      *out = (moe_cache_kind)i;
      return 0;
    }
  return -1;
}

const char *moe_cache_kind_name(moe_cache_kind k) {
  static const char *const names[] = {"none", "lru", "lfu", "static", "ring"};
  return (unsigned)k < 5 ? names[k] : "?";
}

int moe_pregate_stacks_parse(const char *s, unsigned *out) {
  if (strcmp(s, "both") == 0) *out = 0;
  else if (strcmp(s, "encoder") == 0) *out = MOE_PREGATE_ENCODER;
  else if (strcmp(s, "decoder") == 0) *out = MOE_PREGATE_DECODER;
  else return -1;
  return 0;
}

int moe_routing_parse(const char *s, moe_routing *out) {
  if (strcmp(s, "conventional") == 0) *out = MOE_ROUTING_CONVENTIONAL;
  else if (strcmp(s, "pregated") == 0) *out = MOE_ROUTING_PREGATED;
  else return -1;
  return 0;
}

/* The bucket of relative position rel = memory - query, as transformers'
 * T5/Switch _relative_position_bucket computes it (its float32 steps kept:
 * the logarithmic buckets truncate a float32 value). */
int moe_rel_bucket(int rel, bool bidirectional, int nb, int max_distance) {
  int bucket = 0;
  if (bidirectional) {
    nb /= 2;
    if (rel > 0) bucket += nb;
    rel = rel < 0 ? -rel : rel;
  } else {
    rel = rel < 0 ? -rel : 0;
  }
  const int max_exact = nb / 2;
  if (rel < max_exact) return bucket + rel;
  const float ratio = logf((float)rel / (float)max_exact);
  const float span = (float)log((double)max_distance / (double)max_exact);
  const float v = ratio / span * (float)(nb - max_exact);
  int large = max_exact + (int)v;
  if (large > nb - 1) large = nb - 1;
  return bucket + large;
}

/* ---------------------------------------------------------------- sizes */

typedef struct buf_spec {
  void *pp; /* address of the engine field that receives the pointer */
  moe_mem_category cat;
  size_t bytes;
  const char *name;
} buf_spec;

enum { MAX_BUFS = 32, MOE_MAX_ROT = 4096 };

static moe_engine_options normalized(const moe_engine_options *opt) {
  moe_engine_options o = *opt;
  if (o.max_prefill <= 0 || o.max_prefill > o.max_seq) o.max_prefill = o.max_seq;
  return o;
}

/* The K and V caches' bytes (an encoder-decoder model caches the
 * decoder's layers; MLA one latent and one rotated key per token, not per
 * head). */
static void kv_cache_bytes(const moe_config *c, const moe_engine_options *o, size_t *kv,
                           size_t *vkv) {
  const size_t B = (size_t)o->max_batch, S = (size_t)o->max_seq;
  const size_t cached = (size_t)(c->n_layers - c->n_enc_layers);
  if (moe_config_is_mla(c)) {
    *kv = moe_prod(moe_prod(cached, B, S, 1), (size_t)c->kv_rank, 4, 1);
    *vkv = moe_prod(moe_prod(cached, B, S, 1), (size_t)c->rope_dim, 4, 1);
  } else {
    *kv = *vkv = moe_prod(moe_prod(cached, B, (size_t)c->n_kv_heads, 1), S, (size_t)c->head_dim, 4);
  }
}

/* The engine's device buffers, in allocation order.  The one size table.
 * Sizes are overflow-checked: SIZE_MAX marks one that does not fit. */
static size_t engine_buffers(moe_engine *e, const moe_model *m, const moe_device *dev,
                             const moe_engine_options *o, buf_spec *out) {
  const moe_config *c = &m->cfg;
  const size_t B = (size_t)o->max_batch, T = moe_prod(B, (size_t)o->max_prefill, 1, 1);
  const size_t H = (size_t)c->hidden, hd = (size_t)c->head_dim;
  const size_t qd = (size_t)c->n_heads * hd, kvd = (size_t)c->n_kv_heads * hd;
  size_t ffn = (size_t)c->expert_ffn;
  if ((size_t)c->dense_ffn > ffn) ffn = (size_t)c->dense_ffn;
  if ((size_t)c->shared_ffn > ffn) ffn = (size_t)c->shared_ffn;
  const size_t E = (size_t)(c->n_experts > 0 ? c->n_experts : 1);
  const size_t K = (size_t)(c->top_k > 0 ? c->top_k : 1);
  /* an encoder-decoder model caches the decoder's layers (its encoder
   * uses the first decoder layer's cache as scratch before the decoder
   * starts), and the cross-attention K/V of each decoder layer */
  const bool encdec = moe_config_is_encdec(c);
  const bool mla = moe_config_is_mla(c);
  size_t kv, vkv;
  kv_cache_bytes(c, o, &kv, &vkv);
  /* the k/v activation buffers carry the latent and the rotated key (and
   * q_a_proj's output) under MLA; att the heads' v_dim outputs */
  size_t kbuf = kvd, vbuf = kvd, attw = qd;
  if (mla) {
    kbuf = (size_t)c->kv_rank > (size_t)c->q_rank ? (size_t)c->kv_rank : (size_t)c->q_rank;
    vbuf = (size_t)c->rope_dim;
    attw = (size_t)c->n_heads * (size_t)c->v_dim;
  }
  /* scaled RoPE's (and MLA's) frequencies; plain RoPE's rope_ex computes
   * them from theta (backend.h) */
  const bool rope_table = mla || c->rope_kind != MOE_ROPE_DEFAULT;
  const size_t nfreq = rope_table ? (size_t)moe_config_rot_dim(c) / 2 * sizeof(float) : 0;
  const size_t xkv = encdec ? kv : 0;
  const size_t nbk = encdec ? moe_prod(2, 2 * (size_t)o->max_seq - 1, sizeof(int32_t), 1) : 0;
  const size_t f = sizeof(float), i32 = sizeof(int32_t);
  size_t max_cols = H > ffn ? H : ffn;
  if (qd > max_cols) max_cols = qd;
  if (attw > max_cols) max_cols = attw;
  if (kbuf > max_cols) max_cols = kbuf;
  /* a block's rows in expert-sorted order, for experts computed on the host */
  const size_t hrows = engine_policy_places(o->policy) ? moe_prod(T, K, H, f) : 0;
  const size_t ws = dev && dev->ops->workspace_bytes && T != SIZE_MAX
                        ? dev->ops->workspace_bytes(dev->be, T, max_cols) : 0;
  const buf_spec t[] = {
      {&e->dense_dev, MOE_MEM_DENSE, m->dense_bytes, "dense weights"},
      {&e->k_cache, MOE_MEM_KV, kv, mla ? "latent cache" : "K cache"},
      {&e->v_cache, MOE_MEM_KV, vkv, mla ? "rotated-key cache" : "V cache"},
      {&e->xk_cache, MOE_MEM_KV, xkv, "cross-attention K"},
      {&e->xv_cache, MOE_MEM_KV, xkv, "cross-attention V"},
      {&e->buckets, MOE_MEM_WORKSPACE, nbk, "relative-position buckets"},
      {&e->x, MOE_MEM_ACTIVATIONS, moe_prod(T, H, f, 1), "residual stream"},
      {&e->h, MOE_MEM_ACTIVATIONS, moe_prod(T, H, f, 1), "normed activations"},
      {&e->q, MOE_MEM_ACTIVATIONS, moe_prod(T, qd, f, 1), "queries"},
      {&e->k, MOE_MEM_ACTIVATIONS, moe_prod(T, kbuf, f, 1), mla ? "latents" : "keys"},
      {&e->v, MOE_MEM_ACTIVATIONS, moe_prod(T, vbuf, f, 1), mla ? "rotated keys" : "values"},
      {&e->att, MOE_MEM_ACTIVATIONS, moe_prod(T, attw, f, 1), "attention output"},
      {&e->tmp, MOE_MEM_ACTIVATIONS, moe_prod(T, H, f, 1), "block output"},
      {&e->router, MOE_MEM_ACTIVATIONS, moe_prod(T, E, f, 1), "router logits"},
      {&e->rw, MOE_MEM_ACTIVATIONS, moe_prod(T, K, f, 1), "routing weights"},
      {&e->pw, MOE_MEM_ACTIVATIONS, moe_prod(T, K, f, 1), "pre-gate weights"},
      {&e->xe, MOE_MEM_ACTIVATIONS, moe_prod(T, H, f, 1), "expert input"},
      {&e->ge, MOE_MEM_ACTIVATIONS, moe_prod(T, ffn, f, 1), "expert gate"},
      {&e->ue, MOE_MEM_ACTIVATIONS, moe_prod(T, ffn, f, 1), "expert up"},
      {&e->ye, MOE_MEM_ACTIVATIONS, moe_prod(T, H, f, 1), "expert output"},
      {&e->sg, MOE_MEM_ACTIVATIONS, moe_prod(T, f, 1, 1), "shared-expert gate"},
      {&e->logits, MOE_MEM_ACTIVATIONS, moe_prod(o->all_logits ? T : B, (size_t)c->vocab, f, 1), "logits"},
      {&e->ids, MOE_MEM_WORKSPACE, moe_prod(T, i32, 1, 1), "token ids"},
      {&e->pos, MOE_MEM_WORKSPACE, moe_prod(T, i32, 1, 1), "positions"},
      {&e->rows, MOE_MEM_WORKSPACE, moe_prod(T, K, i32, 1), "expert rows"},
      {&e->iota, MOE_MEM_WORKSPACE, moe_prod(T, i32, 1, 1), "row indices"},
      {&e->ridx, MOE_MEM_WORKSPACE, moe_prod(T, K, i32, 1), "routing indices"},
      {&e->pidx, MOE_MEM_WORKSPACE, moe_prod(T, K, i32, 1), "pre-gate indices"},
      {&e->gemm_ws, MOE_MEM_WORKSPACE, T == SIZE_MAX ? SIZE_MAX : ws, "matmul workspace"},
      {&e->inv_freq, MOE_MEM_WORKSPACE, nfreq, "RoPE frequencies"},
      {&e->xh, MOE_MEM_ACTIVATIONS, hrows, "host experts' input rows"},
      {&e->yh, MOE_MEM_ACTIVATIONS, hrows, "expert output rows"},
  };
  size_t n = sizeof t / sizeof t[0];
  memcpy(out, t, sizeof t);
  return n;
}

void moe_engine_plan_memory(const moe_model *model, const moe_device *dev,
                            const moe_engine_options *opt, int slots,
                            size_t bytes[MOE_MEM_CATEGORIES], size_t *total) {
  moe_engine dummy;
  buf_spec t[MAX_BUFS];
  moe_engine_options o = normalized(opt);
  size_t n = engine_buffers(&dummy, model, dev, &o, t);
  memset(bytes, 0, MOE_MEM_CATEGORIES * sizeof bytes[0]);
  for (size_t i = 0; i < n; i++) moe_add_ok(&bytes[t[i].cat], t[i].bytes);
  if (model->n_moe > 0) moe_add_ok(&bytes[MOE_MEM_EXPERTS], moe_prod((size_t)slots, model->expert_bytes, 1, 1));
  *total = 0;
  for (int c = 0; c < MOE_MEM_CATEGORIES; c++) moe_add_ok(total, bytes[c]);
}

/* ---------------------------------------------------------------- policy ctx */

/* The policy context validates every argument: a request for a layer
 * without an MoE block or an expert out of range is refused (0) and
 * counted, and the run goes on; a plugin cannot make the engine read out of
 * bounds or fail a run by asking for nonsense. */
static bool ctx_valid(moe_engine *e, int layer, int expert) {
  const moe_model *m = e->model;
  if (layer >= 0 && layer < m->cfg.n_layers && m->moe_index[layer] >= 0 && expert >= 0 &&
      expert < m->cfg.n_experts)
    return true;
  e->invalid_requests++;
  return false;
}

static int ctx_fetch(moe_policy_ctx *ctx, int layer, int expert) {
  moe_engine *e = ctx->engine;
  if (!ctx_valid(e, layer, expert)) return 0;
  int r = moe_expert_store_fetch(e->store, layer, expert, true, e->cb_err);
  return r > 0;
}

static int ctx_resident(moe_policy_ctx *ctx, int layer, int expert) {
  moe_engine *e = ctx->engine;
  return moe_expert_store_resident(e->store, layer, expert);
}

static void ctx_evict(moe_policy_ctx *ctx, int layer, int expert) {
  moe_engine *e = ctx->engine;
  if (ctx_valid(e, layer, expert)) moe_expert_store_evict(e->store, layer, expert);
}

static int ctx_next_moe_layer(moe_policy_ctx *ctx, int layer) {
  moe_engine *e = ctx->engine;
  return next_moe(e->model, layer);
}

static int ctx_pin(moe_policy_ctx *ctx, int layer, int expert) {
  moe_engine *e = ctx->engine;
  if (!ctx_valid(e, layer, expert)) return 0;
  return moe_expert_store_pin(e->store, layer, expert, e->cb_err) > 0;
}

static void ctx_unpin(moe_policy_ctx *ctx, int layer, int expert) {
  moe_engine *e = ctx->engine;
  if (ctx_valid(e, layer, expert)) moe_expert_store_unpin(e->store, layer, expert);
}

static int ctx_n_experts(moe_policy_ctx *ctx) {
  moe_engine *e = ctx->engine;
  return e->model->cfg.n_experts;
}

/* A policy method's status: a failure it reported without a message gets
 * one naming the policy and the method. */
moe_status engine_policy_result(const moe_engine *e, moe_status st, const char *method,
                                  moe_error *err) {
  if (st == MOE_OK) return MOE_OK;
  if (err && err->status == MOE_OK)
    MOE_FAIL(err, st, "policy '%s': %s failed (%s) without saying why", e->policy->name, method,
             moe_status_name(st));
  return st;
}

/* ---------------------------------------------------------------- planning */

bool engine_policy_places(const moe_policy *p) {
  return p && p->struct_size >= MOE_POLICY_SIZE_1_3 && p->place != NULL;
}

/* What a policy may know of the run (moe_policy_env): the model's shape,
 * the budget left for slots, and, from the run's hardware profile (modeled
 * figures), what copying an expert and computing it on the host cost. */
static void engine_policy_env(const moe_model *model, const moe_engine_options *opt,
                              const moe_policy *policy, size_t slot_budget, moe_policy_env *env) {
  const moe_config *c = &model->cfg;
  *env = (moe_policy_env){.n_layers = c->n_layers,
                          .n_moe_layers = model->n_moe,
                          .n_experts = c->n_experts,
                          .top_k = c->top_k,
                          .max_batch = opt->max_batch,
                          .expert_bytes = model->expert_bytes,
                          .slot_budget = slot_budget,
                          .lookahead = opt->pregate_lookahead > 0 ? opt->pregate_lookahead : 1,
                          .host_exec = engine_policy_places(policy)};
  const moe_hw_profile *p = opt->cost_profile;
  if (p == NULL || model->n_moe == 0) return;
  const double bytes = (double)model->expert_bytes, H = c->hidden, F = c->expert_ffn;
  const double flops = 2.0 * H * F * (c->ffn_act == MOE_FFN_RELU ? 2.0 : 3.0);
  env->expert_copy_s = moe_cost_copy(p, bytes, true);
  if (p->host_memory_gbps > 0) {
    const moe_host_work read = {0.0, bytes, model->dtype}, tok = {flops, 0.0, model->dtype};
    env->host_read_s = moe_cost_host_work(p, &read);
    env->host_token_s = moe_cost_host_work(p, &tok);
  }
  /* down as f32 rows, up as f32 rows: the transfers' bandwidth part */
  env->xfer_token_s = 2.0 * 4.0 * H / (p->h2d_pageable_gbps * 1e9);
}

moe_status moe_engine_plan_slots(const moe_model *model, const moe_engine_options *opt,
                                 const moe_policy *policy, size_t slot_budget, int *slots,
                                 int *cache_slots, moe_error *err) {
  const moe_config *c = &model->cfg;
  *slots = *cache_slots = 0;
  if (model->n_moe == 0) return MOE_OK;
  moe_policy_env env;
  engine_policy_env(model, opt, policy, slot_budget, &env);
  moe_policy_plan pp = {0};
  moe_status st = policy->plan(&env, &pp, err);
  if (st != MOE_OK) {
    if (err && err->status == MOE_OK)
      MOE_FAIL(err, st, "policy '%s': plan failed (%s) without saying why", policy->name,
               moe_status_name(st));
    return st;
  }
  if (pp.slots < 1)
    return MOE_FAIL(err, MOE_ERR_INVALID, "policy '%s' planned %d expert slots (need >= 1)",
                    policy->name, pp.slots);
  const int max_slots = model->n_moe * c->n_experts;
  *slots = pp.slots < max_slots ? pp.slots : max_slots;
  if (opt->cache != MOE_CACHE_NONE && opt->cache_experts > 0) {
    const int add = opt->cache_experts < max_slots - *slots ? opt->cache_experts : max_slots - *slots;
    *cache_slots = add;
    *slots += add;
  }
  return MOE_OK;
}

/* ---------------------------------------------------------------- lifecycle */

void moe_engine_free(moe_engine *e) {
  if (e == NULL) return;
  if (e->policy && e->policy->destroy) e->policy->destroy(e->policy_state);
  engine_host_free(e);
  moe_expert_store_free(e->store);
  buf_spec t[MAX_BUFS];
  size_t n = engine_buffers(e, e->model, e->dev, &e->opt, t);
  if (e->gemm_ws && e->dev->ops->set_workspace) e->dev->ops->set_workspace(e->dev->be, NULL, 0);
  for (size_t i = 0; i < n; i++) moe_device_free(e->dev, *(void **)t[i].pp);
  free(e->h_ids);
  free(e->h_pos);
  free(e->h_idx);
  free(e->h_rows);
  for (int i = 0; i <= MOE_MAX_LOOKAHEAD; i++)
    free(e->pred[i].idx), free(e->pred[i].w), free(e->pred[i].second);
  free(e->h_plogits);
  free(e->h_wts);
  free(e->h_scale);

  free(e->h_count);
  free(e->h_needed);
  free(e->h_pmark);
  free(e->h_pscore);
  free(e->h_pneeded);
  free(e->h_cap);
  free(e->h_onhost);
  free(e->h_dneeded);
  free(e->h_tokens);
  free(e);
}

/* What the options and the backend allow for this model: checked before
 * anything is allocated. */
static moe_status engine_check(const moe_engine *e, const moe_config *c, const moe_device *dev,
                               moe_error *err) {
  moe_status st = MOE_OK;
  const moe_engine_options *opt = &e->opt;
  MOE_CHECK(opt->pregate_lookahead >= 0 && opt->pregate_lookahead <= MOE_MAX_LOOKAHEAD, err,
            MOE_ERR_INVALID, "pre-gate lookahead %d is outside 1..%d", opt->pregate_lookahead,
            MOE_MAX_LOOKAHEAD);
  MOE_CHECK(opt->max_batch > 0 && opt->max_seq > 0, err, MOE_ERR_INVALID,
            "batch (%d) and sequence length (%d) must be positive", opt->max_batch, opt->max_seq);
  /* the optional backend ops the model's family (and its RoPE and routing) needs */
  const moe_family *fam = moe_family_by_arch(c->arch);
  MOE_CHECK(fam != NULL, err, MOE_ERR_INVALID, "unknown model family %d", (int)c->arch);
  char who[64];
  snprintf(who, sizeof who, "the %s family", fam->name);
  MOE_TRY(moe_backend_require(dev->ops, moe_family_required_ops(fam, c), who, err));
  MOE_CHECK(opt->max_seq <= c->max_pos, err, MOE_ERR_INVALID,
            "sequence length %d exceeds max_position_embeddings %d", opt->max_seq, c->max_pos);
  MOE_CHECK(c->sliding_window == 0 || opt->max_seq <= c->sliding_window, err, MOE_ERR_UNSUPPORTED,
            "sequence length %d exceeds the model's sliding_window %d: sliding-window attention "
            "is not implemented (runs of up to %d tokens are exact)",
            opt->max_seq, c->sliding_window, c->sliding_window);
cleanup:
  return st;
}

/* Sizes the expert slots against what the budget leaves (the policy's
 * plan), allocates every device buffer of the size table, creates the
 * expert store and uploads the dense weights and RoPE frequencies. */
static moe_status engine_place(moe_engine *e, moe_policy_env *env, moe_error *err) {
  moe_status st = MOE_OK;
  moe_model *model = e->model;
  moe_device *dev = e->dev;
  const moe_config *c = &model->cfg;
  size_t used = dev->mem.current_total;
  {
    size_t plan[MOE_MEM_CATEGORIES], fixed;
    moe_engine_plan_memory(model, dev, &e->opt, 0, plan, &fixed);
    moe_add_ok(&used, fixed);
  }
  engine_policy_env(model, &e->opt, e->policy, dev->mem.budget > used ? dev->mem.budget - used : 0,
                    env);
  MOE_TRY(moe_engine_plan_slots(model, &e->opt, e->policy, env->slot_budget, &e->slots,
                                &e->cache_slots, err));
  buf_spec t[MAX_BUFS];
  size_t nb = engine_buffers(e, model, dev, &e->opt, t);
  for (size_t i = 0; i < nb; i++)
    MOE_CHECK(t[i].bytes != SIZE_MAX, err, MOE_ERR_INVALID,
              "the %s of batch %d x sequence %d overflows the address space", t[i].name,
              e->opt.max_batch, e->opt.max_seq);
  MOE_CHECK(model->n_moe == 0 || moe_prod((size_t)e->slots, model->expert_bytes, 1, 1) != SIZE_MAX,
            err, MOE_ERR_INVALID, "%d expert slots overflow the address space", e->slots);
  for (size_t i = 0; i < nb; i++) {
    MOE_TRY(moe_device_alloc(dev, t[i].cat, t[i].bytes, t[i].name, (void **)t[i].pp, err));
    if (t[i].pp == (void *)&e->gemm_ws && dev->ops->set_workspace)
      dev->ops->set_workspace(dev->be, e->gemm_ws, t[i].bytes);
  }
  MOE_TRY(moe_expert_store_create(&e->store, model, dev, e->slots, err));
  if (e->use_rope_ex) { /* scaled RoPE: its frequencies for rope_ex, uploaded once */
    float freqs[MOE_MAX_ROT / 2];
    MOE_CHECK(moe_config_rot_dim(c) <= MOE_MAX_ROT, err, MOE_ERR_UNSUPPORTED,
              "rotated head dimension %d exceeds the limit %d", moe_config_rot_dim(c), MOE_MAX_ROT);
    moe_config_rope_freqs(c, freqs, &e->rope_attn);
    MOE_TRY(dev->ops->upload(dev->be, e->inv_freq, freqs,
                             (size_t)moe_config_rot_dim(c) / 2 * sizeof(float), err));
  }
  if (e->opt.cache == MOE_CACHE_LFU) moe_expert_store_set_eviction(e->store, MOE_EVICT_LFU);
  MOE_TRY(dev->ops->upload(dev->be, e->dense_dev, model->dense, model->dense_bytes, err));
cleanup:
  return st;
}

/* Host scratch sized for T = batch x prefill rows, K routed experts of E. */
static moe_status engine_host_scratch(moe_engine *e, size_t T, size_t K, size_t E, moe_error *err) {
  moe_status st = MOE_OK;
  e->h_ids = malloc(T * sizeof(int32_t));
  e->h_pos = malloc(T * sizeof(int32_t));
  e->h_idx = malloc(T * K * sizeof(int32_t));
  e->h_rows = malloc(T * K * sizeof(int32_t));
  bool preds_ok = true;
  for (int i = 0; i <= MOE_MAX_LOOKAHEAD; i++) {
    e->pred[i].idx = malloc(T * K * sizeof(int32_t));
    e->pred[i].w = malloc(T * K * sizeof(float));
    e->pred[i].second = malloc(T * sizeof(int32_t));
    preds_ok &= e->pred[i].idx && e->pred[i].w && e->pred[i].second;
  }
  e->h_wts = malloc(T * K * sizeof(float));
  e->h_scale = malloc(T * K * sizeof(float));
  e->h_count = malloc((E + 1) * sizeof(int));
  e->h_needed = malloc(E * sizeof(int));
  e->h_pmark = malloc(E * sizeof(int));
  e->h_pscore = malloc(E * sizeof(float));
  if (e->opt.pregate_second) {
    e->h_plogits = malloc(T * E * sizeof(float));
    preds_ok &= e->h_plogits != NULL;
  }
  e->h_pneeded = malloc(E * sizeof(int));
  e->h_cap = malloc(E * sizeof(int));
  e->h_onhost = calloc(E, 1);
  e->h_dneeded = malloc(E * sizeof(int));
  e->h_tokens = malloc(E * sizeof(int));
  MOE_CHECK(e->h_ids && e->h_pos && e->h_idx && e->h_rows && preds_ok && e->h_wts && e->h_scale &&
                e->h_count && e->h_needed && e->h_pmark && e->h_pscore && e->h_pneeded && e->h_cap &&
                e->h_onhost && e->h_dneeded && e->h_tokens,
            err, MOE_ERR_OOM, "out of host memory for engine scratch");
cleanup:
  return st;
}

/* The device's constant index tables: row ids 0..T-1 (e->iota) and, for an
 * encoder-decoder model, the relative-position buckets. */
static moe_status engine_tables(moe_engine *e, size_t T, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = &e->model->cfg;
  const moe_backend_ops *o = e->dev->ops;
  for (size_t i = 0; i < T; i++) e->h_ids[i] = (int32_t)i;
  MOE_TRY(o->upload(e->dev->be, e->iota, e->h_ids, T * sizeof(int32_t), err));
  if (moe_config_is_encdec(c)) {
    /* bucket of memory - query = r at index r + max_seq - 1 */
    const int max_seq = e->opt.max_seq;
    const size_t n = 2 * (size_t)max_seq - 1;
    int32_t *bk = malloc(2 * n * sizeof *bk);
    MOE_CHECK_ALLOC(bk, err, 2 * n * sizeof *bk);
    for (size_t i = 0; i < n; i++) {
      const int r = (int)i - (max_seq - 1);
      bk[i] = moe_rel_bucket(r, true, c->rel_buckets, c->rel_max_distance);
      bk[n + i] = moe_rel_bucket(r, false, c->rel_buckets, c->rel_max_distance);
    }
    st = o->upload(e->dev->be, e->buckets, bk, 2 * n * sizeof *bk, err);
    free(bk);
  }
cleanup:
  return st;
}

/* The policy's create and warm callbacks. */
static moe_status engine_start_policy(moe_engine *e, const moe_policy_env *env, moe_error *err) {
  moe_status st = MOE_OK;
  if (e->policy->create)
    MOE_TRY(engine_policy_result(e, e->policy->create(env, &e->policy_state, err), "create", err));
  e->cb_err = err;
  if (e->policy->warm && e->model->n_moe > 0) {
    moe_expert_store_round_begin(e->store);
    moe_status pst = e->policy->warm(e->policy_state, &e->ctx, err);
    int prc = moe_expert_store_round_end(e->store, err);
    MOE_TRY(engine_policy_result(e, pst, "warm", err));
    MOE_CHECK(prc == 0 && (err == NULL || err->status == MOE_OK), err,
              err && err->status != MOE_OK ? err->status : MOE_ERR_DEVICE,
              "policy '%s': warm failed", e->policy->name);
  }
cleanup:
  return st;
}

/* A static expert cache: pins the cache_slots most popular experts of a
 * warm-up's counts. */
static moe_status engine_static_cache(moe_engine *e, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = &e->model->cfg;
  const unsigned long long *pop = e->opt.cache_popularity;
  MOE_CHECK(pop != NULL, err, MOE_ERR_INVALID,
            "a static expert cache needs popularity counts from a warm-up run");
  const long keys = (long)e->model->n_moe * c->n_experts;
  bool *taken = calloc((size_t)keys, sizeof *taken);
  MOE_CHECK_ALLOC(taken, err, (size_t)keys);
  for (int n = 0; n < e->cache_slots; n++) {
    long best = -1;
    for (long k = 0; k < keys; k++)
      if (!taken[k] && (best < 0 || pop[k] > pop[best])) best = k;
    if (best < 0) break;
    taken[best] = true;
    int layer = -1;
    for (int l = 0, mi = 0; l < c->n_layers && layer < 0; l++)
      if (c->is_moe[l] && mi++ == best / c->n_experts) layer = l;
    moe_expert_store_round_begin(e->store);
    int r = moe_expert_store_pin(e->store, layer, (int)(best % c->n_experts), err);
    int rr = moe_expert_store_round_end(e->store, err);
    if (r < 0 || rr < 0) {
      st = err ? err->status : MOE_ERR_DEVICE;
      break;
    }
  }
  free(taken);
cleanup:
  return st;
}

moe_status moe_engine_create(moe_engine **out, moe_model *model, moe_device *dev,
                             const moe_engine_options *opt, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = &model->cfg;
  *out = NULL;
  moe_engine *e = calloc(1, sizeof *e);
  MOE_CHECK_ALLOC(e, err, sizeof *e);
  e->model = model;
  e->dev = dev;
  e->opt = normalized(opt);
  for (int i = 0; i <= MOE_MAX_LOOKAHEAD; i++) e->pred[i].layer = -1;
  e->ctx = (moe_policy_ctx){e,         ctx_fetch,     ctx_resident, ctx_evict, ctx_next_moe_layer,
                            ctx_n_experts, ctx_pin, ctx_unpin};
  /* no policy named: the registry's parity reference (everything resident) */
  const moe_policy *given = opt->policy ? opt->policy : moe_policy_reference();
  MOE_TRY(moe_policy_validate(given, err));
  moe_policy_normalize(given, &e->policy_table);
  e->policy = &e->policy_table;
  e->use_rope_ex = moe_config_is_mla(c) || c->rope_kind != MOE_ROPE_DEFAULT;
  e->attn_scale = moe_config_attn_scale(c);
  MOE_TRY(engine_check(e, c, dev, err));
  const size_t T = moe_prod((size_t)opt->max_batch, (size_t)e->opt.max_prefill, 1, 1);
  const size_t E = (size_t)(c->n_experts > 0 ? c->n_experts : 1), K = (size_t)(c->top_k > 0 ? c->top_k : 1);
  e->cache_layer_floats = (size_t)opt->max_batch * (size_t)c->n_kv_heads * (size_t)opt->max_seq *
                          (size_t)c->head_dim;
  e->vcache_layer_floats = e->cache_layer_floats;
  if (moe_config_is_mla(c)) {
    e->cache_layer_floats = (size_t)opt->max_batch * (size_t)opt->max_seq * (size_t)c->kv_rank;
    e->vcache_layer_floats = (size_t)opt->max_batch * (size_t)opt->max_seq * (size_t)c->rope_dim;
  }
  moe_policy_env env;
  MOE_TRY(engine_place(e, &env, err));
  MOE_TRY(engine_host_scratch(e, T, K, E, err));
  MOE_TRY(engine_tables(e, T, err));
  MOE_TRY(engine_host_create(e, err));
  MOE_TRY(engine_start_policy(e, &env, err));
  if (opt->cache == MOE_CACHE_STATIC && e->cache_slots > 0 && model->n_moe > 0)
    MOE_TRY(engine_static_cache(e, err));
  MOE_TRY(dev->ops->synchronize(dev->be, err));
  e->warm_bytes = e->store ? moe_expert_store_stats(e->store)->bytes_h2d : 0;
  moe_engine_reset_stats(e);
  *out = e;
  return MOE_OK;
cleanup:
  moe_engine_free(e);
  return st;
}
