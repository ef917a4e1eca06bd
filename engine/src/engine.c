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
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "checked.h"
#include "moe/device.h"
#include "moe/clock.h"
#include "model_internal.h"
#include "moe/expert_store.h"
#include "moe/policy.h"
#include "moe/trace.h"

struct moe_engine {
  moe_model *model;
  moe_device *dev;
  moe_engine_options opt;
  const moe_policy *policy;  /* &policy_table */
  moe_policy policy_table;   /* normalized copy of the caller's table */
  void *policy_state;
  moe_policy_ctx ctx;
  moe_error *cb_err;         /* where policy callbacks report backend errors */
  moe_expert_store *store;
  int slots;
  int cache_slots;           /* of slots, those an expert cache added */
  uint8_t *dense_dev;        /* device copy of the dense slab */
  float *k_cache, *v_cache;  /* [layers][max_batch][kv_heads][max_seq][head_dim]; under MLA
                                the latents [layers][max_batch][max_seq][kv_rank] and the
                                rotated keys [layers][max_batch][max_seq][rope_dim] */
  size_t cache_layer_floats;   /* per layer, of k_cache (and v_cache unless MLA) */
  size_t vcache_layer_floats;  /* per layer, of v_cache */
  float *inv_freq;           /* RoPE frequencies for rope_ex (YaRN, MLA), or NULL */
  float rope_attn;           /* rope_ex's cos/sin factor */
  float attn_scale;          /* the attention softmax scale (moe_config_attn_scale) */
  bool use_rope_ex;
  /* activations, device */
  float *x, *h, *q, *k, *v, *att, *tmp, *router, *rw, *pw, *xe, *ge, *ue, *ye, *sg, *logits;
  /* index buffers, device */
  int32_t *ids, *pos, *rows, *iota, *ridx, *pidx;
  void *gemm_ws;             /* the backend's matmul workspace (may be 0 bytes) */
  size_t last_rows;          /* rows of the last forward call */
  /* host scratch */
  int32_t *h_ids, *h_pos, *h_idx, *h_rows;
  float *h_wts, *h_scale;
  /* predictions waiting for their block: with lookahead k a block predicts
   * the k-th MoE block after it, so up to k are pending (one slot spare
   * for the first block's own prediction) */
  struct pending_pred {
    int layer;               /* the MoE layer it predicts, or -1 (free) */
    bool first;              /* the first block's, from its layer input (never the routing) */
    int32_t *idx;            /* [T][K] */
    float *w;                /* [T][K] */
  } pred[MOE_MAX_LOOKAHEAD + 1];
  int *h_count, *h_needed, *h_pmark, *h_pneeded;
  /* encoder-decoder models */
  float *xk_cache, *xv_cache; /* cross-attention K/V of the encoder output:
                                 [decoder layers][max_batch][heads][max_seq][head_dim] */
  int32_t *buckets;          /* relative-position buckets, [2][2 max_seq - 1]:
                                encoder (bidirectional), decoder (causal) */
  int enc_seq, src_len;      /* the batch encode() ran (0: none yet) */
  int *h_cap;                /* tokens per expert of one sequence (expert capacity) */
  int cur_n_new;             /* tokens per sequence of the running forward */

  unsigned long long first_hits, first_total;
  double stall_base;         /* backend-measured stall at the last reset */
  unsigned long long pregate_hits, pregate_total, warm_bytes;
  unsigned long long invalid_requests; /* policy requests refused for bad arguments */
  unsigned long long step;   /* layer runs so far (the backend's context counter) */
};

/* The engine's clock: the backend's (modeled) clock where it has one, else
 * the host clock. */
static double now(const moe_engine *e) {
  return e->dev->ops->modeled_seconds ? e->dev->ops->modeled_seconds(e->dev->be) : moe_clock_s();
}

/* Tells the trace and the backend what the next ops belong to. */
static void op_context(moe_engine *e, int layer, int expert) {
  moe_trace_context(e->dev->trace, layer, expert);
  if (e->dev->ops->set_context) e->dev->ops->set_context(e->dev->be, layer, expert, e->step);
}

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

/* Device view of a dense tensor; an absent tensor gives data == NULL. */
static moe_weight dw(const moe_engine *e, int layer, moe_role role) {
  const moe_tensor_spec *s = moe_model_spec(e->model, layer, role);
  if (s == NULL) return (moe_weight){NULL, e->model->dtype, 0, 0};
  return (moe_weight){e->dense_dev + s->offset, e->model->dtype, s->rows, s->cols};
}

/* The next MoE layer after `layer` in model order (-1: the first one), or
 * -1: what policies see (ctx->next_moe_layer), encoder then decoder. */
static int next_moe(const moe_model *m, int layer) {
  if (layer >= m->cfg.n_layers) return -1;
  for (int l = layer < 0 ? 0 : layer + 1; l < m->cfg.n_layers; l++)
    if (m->cfg.is_moe[l]) return l;
  return -1;
}

/* The next MoE layer after `layer` in the same stack, or -1: what a block
 * predicts.  The encoder's last MoE block predicts nothing, and nothing
 * predicts the decoder's first (as in the paper). */
static int next_moe_in_stack(const moe_model *m, int layer) {
  int b, end;
  moe_config_stack(&m->cfg, layer, &b, &end);
  for (int l = layer + 1; l < end; l++)
    if (m->cfg.is_moe[l]) return l;
  return -1;
}

/* The first MoE layer of the stack [begin, end), or -1. */
static int first_moe_in(const moe_model *m, int begin, int end) {
  for (int l = begin; l < end; l++)
    if (m->cfg.is_moe[l]) return l;
  return -1;
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
  const size_t cached = (size_t)(c->n_layers - c->n_enc_layers);
  const bool mla = moe_config_is_mla(c);
  /* MLA caches one latent and one rotated key per token, not per head */
  const size_t kv = mla ? moe_prod(moe_prod(cached, B, (size_t)o->max_seq, 1), (size_t)c->kv_rank, 4, 1)
                        : moe_prod(moe_prod(cached, B, (size_t)c->n_kv_heads, 1),
                                   (size_t)o->max_seq, hd, 4);
  const size_t vkv = mla ? moe_prod(moe_prod(cached, B, (size_t)o->max_seq, 1), (size_t)c->rope_dim, 4, 1)
                         : kv;
  /* the k/v activation buffers carry the latent and the rotated key (and
   * q_a_proj's output) under MLA; att the heads' v_dim outputs */
  size_t kbuf = kvd, vbuf = kvd, attw = qd;
  if (mla) {
    kbuf = (size_t)c->kv_rank > (size_t)c->q_rank ? (size_t)c->kv_rank : (size_t)c->q_rank;
    vbuf = (size_t)c->rope_dim;
    attw = (size_t)c->n_heads * (size_t)c->v_dim;
  }
  const bool rope_ex = mla || c->rope_kind != MOE_ROPE_DEFAULT;
  const size_t nfreq = rope_ex ? (size_t)moe_config_rot_dim(c) / 2 * sizeof(float) : 0;
  const size_t xkv = encdec ? kv : 0;
  const size_t nbk = encdec ? moe_prod(2, 2 * (size_t)o->max_seq - 1, sizeof(int32_t), 1) : 0;
  const size_t f = sizeof(float), i32 = sizeof(int32_t);
  size_t max_cols = H > ffn ? H : ffn;
  if (qd > max_cols) max_cols = qd;
  if (attw > max_cols) max_cols = attw;
  if (kbuf > max_cols) max_cols = kbuf;
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

/* Calls an optional policy method inside one round of prefetches (the
 * store places them once the callback has named them all); a backend
 * failure inside a callback (recorded in cb_err) fails the call too. */
#define POLICY_CALL(e, method, ...)                                                      \
  do {                                                                                   \
    if ((e)->policy->method != NULL) {                                                   \
      moe_expert_store_round_begin((e)->store);                                          \
      moe_status pst_ = (e)->policy->method((e)->policy_state, &(e)->ctx, __VA_ARGS__, err); \
      int prc_ = moe_expert_store_round_end((e)->store, err);                            \
      MOE_TRY(policy_result((e), pst_, #method, err));                                   \
      MOE_CHECK(prc_ == 0 && (err == NULL || err->status == MOE_OK), err,                \
                err && err->status != MOE_OK ? err->status : MOE_ERR_DEVICE,             \
                "policy '%s': %s failed", (e)->policy->name, #method);                   \
    }                                                                                    \
  } while (0)

/* A policy method's status: a failure it reported without a message gets
 * one naming the policy and the method. */
static moe_status policy_result(const moe_engine *e, moe_status st, const char *method,
                                moe_error *err) {
  if (st == MOE_OK) return MOE_OK;
  if (err && err->status == MOE_OK)
    MOE_FAIL(err, st, "policy '%s': %s failed (%s) without saying why", e->policy->name, method,
             moe_status_name(st));
  return st;
}

/* ---------------------------------------------------------------- planning */

moe_status moe_engine_plan_slots(const moe_model *model, const moe_engine_options *opt,
                                 const moe_policy *policy, size_t slot_budget, int *slots,
                                 int *cache_slots, moe_error *err) {
  const moe_config *c = &model->cfg;
  *slots = *cache_slots = 0;
  if (model->n_moe == 0) return MOE_OK;
  moe_policy_env env = {c->n_layers,     model->n_moe,        c->n_experts, c->top_k,
                        opt->max_batch,  model->expert_bytes, slot_budget,
                        opt->pregate_lookahead > 0 ? opt->pregate_lookahead : 1};
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
  moe_expert_store_free(e->store);
  buf_spec t[MAX_BUFS];
  size_t n = engine_buffers(e, e->model, e->dev, &e->opt, t);
  if (e->gemm_ws && e->dev->ops->set_workspace) e->dev->ops->set_workspace(e->dev->be, NULL, 0);
  for (size_t i = 0; i < n; i++) moe_device_free(e->dev, *(void **)t[i].pp);
  free(e->h_ids);
  free(e->h_pos);
  free(e->h_idx);
  free(e->h_rows);
  for (int i = 0; i <= MOE_MAX_LOOKAHEAD; i++) free(e->pred[i].idx), free(e->pred[i].w);
  free(e->h_wts);
  free(e->h_scale);

  free(e->h_count);
  free(e->h_needed);
  free(e->h_pmark);
  free(e->h_pneeded);
  free(e->h_cap);
  free(e);
}

extern const moe_policy moe_policy_gpu_only;

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
  {
    const moe_policy *given = opt->policy ? opt->policy : &moe_policy_gpu_only;
    MOE_TRY(moe_policy_validate(given, err));
    moe_policy_normalize(given, &e->policy_table);
    e->policy = &e->policy_table;
  }
  MOE_CHECK(opt->pregate_lookahead >= 0 && opt->pregate_lookahead <= MOE_MAX_LOOKAHEAD, err,
            MOE_ERR_INVALID, "pre-gate lookahead %d is outside 1..%d", opt->pregate_lookahead,
            MOE_MAX_LOOKAHEAD);
  MOE_CHECK(opt->max_batch > 0 && opt->max_seq > 0, err, MOE_ERR_INVALID,
            "batch (%d) and sequence length (%d) must be positive", opt->max_batch, opt->max_seq);
  MOE_CHECK(!moe_config_is_encdec(c) || (dev->ops->attention_ex && dev->ops->unary), err,
            MOE_ERR_UNSUPPORTED,
            "backend '%s' lacks the encoder-decoder ops (attention_ex, unary; ABI 1.2) that "
            "this model needs", dev->ops->name);
  MOE_CHECK(opt->max_seq <= c->max_pos, err, MOE_ERR_INVALID,
            "sequence length %d exceeds max_position_embeddings %d", opt->max_seq, c->max_pos);
  MOE_CHECK(c->sliding_window == 0 || opt->max_seq <= c->sliding_window, err, MOE_ERR_UNSUPPORTED,
            "sequence length %d exceeds the model's sliding_window %d: sliding-window attention "
            "is not implemented (runs of up to %d tokens are exact)",
            opt->max_seq, c->sliding_window, c->sliding_window);
  const size_t T = moe_prod((size_t)opt->max_batch, (size_t)e->opt.max_prefill, 1, 1);
  const size_t E = (size_t)(c->n_experts > 0 ? c->n_experts : 1), K = (size_t)(c->top_k > 0 ? c->top_k : 1);
  e->cache_layer_floats = (size_t)opt->max_batch * (size_t)c->n_kv_heads * (size_t)opt->max_seq *
                          (size_t)c->head_dim;
  e->vcache_layer_floats = e->cache_layer_floats;
  if (moe_config_is_mla(c)) {
    e->cache_layer_floats = (size_t)opt->max_batch * (size_t)opt->max_seq * (size_t)c->kv_rank;
    e->vcache_layer_floats = (size_t)opt->max_batch * (size_t)opt->max_seq * (size_t)c->rope_dim;
    MOE_CHECK(dev->ops->mla_attention && dev->ops->rope_ex && dev->ops->router_topk_ex, err,
              MOE_ERR_UNSUPPORTED,
              "backend '%s' lacks the DeepSeek ops (mla_attention, rope_ex, router_topk_ex; ABI "
              "1.4) that this model needs", dev->ops->name);
  }
  e->use_rope_ex = moe_config_is_mla(c) || c->rope_kind != MOE_ROPE_DEFAULT;
  e->attn_scale = moe_config_attn_scale(c);
  MOE_CHECK(!e->use_rope_ex || dev->ops->rope_ex, err, MOE_ERR_UNSUPPORTED,
            "backend '%s' lacks rope_ex (ABI 1.4), which this model's scaled RoPE needs",
            dev->ops->name);
  MOE_CHECK(!c->router_ex || dev->ops->router_topk_ex, err, MOE_ERR_UNSUPPORTED,
            "backend '%s' lacks router_topk_ex (ABI 1.3), which this model's routing needs",
            dev->ops->name);

  /* Plan: the policy sizes its slots against what the budget leaves. */
  size_t used = dev->mem.current_total;
  {
    size_t plan[MOE_MEM_CATEGORIES], fixed;
    moe_engine_plan_memory(model, dev, &e->opt, 0, plan, &fixed);
    moe_add_ok(&used, fixed);
  }
  moe_policy_env env = {c->n_layers,    model->n_moe,        c->n_experts, c->top_k,
                        opt->max_batch, model->expert_bytes,
                        dev->mem.budget > used ? dev->mem.budget - used : 0,
                        opt->pregate_lookahead > 0 ? opt->pregate_lookahead : 1};
  MOE_TRY(moe_engine_plan_slots(model, &e->opt, e->policy, env.slot_budget, &e->slots,
                                &e->cache_slots, err));

  buf_spec t[MAX_BUFS];
  size_t nb = engine_buffers(e, model, dev, &e->opt, t);
  for (size_t i = 0; i < nb; i++)
    MOE_CHECK(t[i].bytes != SIZE_MAX, err, MOE_ERR_INVALID,
              "the %s of batch %d x sequence %d overflows the address space", t[i].name,
              opt->max_batch, opt->max_seq);
  MOE_CHECK(model->n_moe == 0 || moe_prod((size_t)e->slots, model->expert_bytes, 1, 1) != SIZE_MAX,
            err, MOE_ERR_INVALID, "%d expert slots overflow the address space", e->slots);
  for (size_t i = 0; i < nb; i++) {
    MOE_TRY(moe_device_alloc(dev, t[i].cat, t[i].bytes, t[i].name, (void **)t[i].pp, err));
    if (t[i].pp == (void *)&e->gemm_ws && dev->ops->set_workspace)
      dev->ops->set_workspace(dev->be, e->gemm_ws, t[i].bytes);
  }
  MOE_TRY(moe_expert_store_create(&e->store, model, dev, e->slots, err));
  if (e->use_rope_ex) {
    float freqs[MOE_MAX_ROT / 2];
    MOE_CHECK(moe_config_rot_dim(c) <= MOE_MAX_ROT, err, MOE_ERR_UNSUPPORTED,
              "rotated head dimension %d exceeds the limit %d", moe_config_rot_dim(c), MOE_MAX_ROT);
    moe_config_rope_freqs(c, freqs, &e->rope_attn);
    MOE_TRY(dev->ops->upload(dev->be, e->inv_freq, freqs,
                             (size_t)moe_config_rot_dim(c) / 2 * sizeof(float), err));
  }
  if (opt->cache == MOE_CACHE_LFU) moe_expert_store_set_eviction(e->store, MOE_EVICT_LFU);
  MOE_TRY(dev->ops->upload(dev->be, e->dense_dev, model->dense, model->dense_bytes, err));
  e->h_ids = malloc(T * sizeof(int32_t));
  e->h_pos = malloc(T * sizeof(int32_t));
  e->h_idx = malloc(T * K * sizeof(int32_t));
  e->h_rows = malloc(T * K * sizeof(int32_t));
  bool preds_ok = true;
  for (int i = 0; i <= MOE_MAX_LOOKAHEAD; i++) {
    e->pred[i].idx = malloc(T * K * sizeof(int32_t));
    e->pred[i].w = malloc(T * K * sizeof(float));
    preds_ok &= e->pred[i].idx && e->pred[i].w;
  }
  e->h_wts = malloc(T * K * sizeof(float));
  e->h_scale = malloc(T * K * sizeof(float));

  e->h_count = malloc((E + 1) * sizeof(int));
  e->h_needed = malloc(E * sizeof(int));
  e->h_pmark = malloc(E * sizeof(int));
  e->h_pneeded = malloc(E * sizeof(int));
  e->h_cap = malloc(E * sizeof(int));
  MOE_CHECK(e->h_ids && e->h_pos && e->h_idx && e->h_rows && preds_ok && e->h_wts && e->h_scale &&
                e->h_count && e->h_needed && e->h_pmark && e->h_pneeded && e->h_cap,
            err, MOE_ERR_OOM, "out of host memory for engine scratch");
  for (size_t i = 0; i < T; i++) e->h_ids[i] = (int32_t)i;
  MOE_TRY(dev->ops->upload(dev->be, e->iota, e->h_ids, T * sizeof(int32_t), err));
  if (moe_config_is_encdec(c)) {
    /* bucket of memory - query = r at index r + max_seq - 1 */
    const size_t n = 2 * (size_t)opt->max_seq - 1;
    int32_t *bk = malloc(2 * n * sizeof *bk);
    MOE_CHECK_ALLOC(bk, err, 2 * n * sizeof *bk);
    for (size_t i = 0; i < n; i++) {
      const int r = (int)i - (opt->max_seq - 1);
      bk[i] = moe_rel_bucket(r, true, c->rel_buckets, c->rel_max_distance);
      bk[n + i] = moe_rel_bucket(r, false, c->rel_buckets, c->rel_max_distance);
    }
    st = dev->ops->upload(dev->be, e->buckets, bk, 2 * n * sizeof *bk, err);
    free(bk);
    MOE_TRY(st);
  }

  if (e->policy->create)
    MOE_TRY(policy_result(e, e->policy->create(&env, &e->policy_state, err), "create", err));
  e->cb_err = err;
  if (e->policy->warm && model->n_moe > 0) {
    moe_expert_store_round_begin(e->store);
    moe_status pst = e->policy->warm(e->policy_state, &e->ctx, err);
    int prc = moe_expert_store_round_end(e->store, err);
    MOE_TRY(policy_result(e, pst, "warm", err));
    MOE_CHECK(prc == 0 && (err == NULL || err->status == MOE_OK), err,
              err && err->status != MOE_OK ? err->status : MOE_ERR_DEVICE,
              "policy '%s': warm failed", e->policy->name);
  }
  if (opt->cache == MOE_CACHE_STATIC && e->cache_slots > 0 && model->n_moe > 0) {
    /* pin the cache_slots most popular experts (warm-up counts) */
    MOE_CHECK(opt->cache_popularity != NULL, err, MOE_ERR_INVALID,
              "a static expert cache needs popularity counts from a warm-up run");
    const long keys = (long)model->n_moe * c->n_experts;
    bool *taken = calloc((size_t)keys, sizeof *taken);
    MOE_CHECK_ALLOC(taken, err, (size_t)keys);
    for (int n = 0; n < e->cache_slots; n++) {
      long best = -1;
      for (long k = 0; k < keys; k++)
        if (!taken[k] && (best < 0 || opt->cache_popularity[k] > opt->cache_popularity[best])) best = k;
      if (best < 0) break;
      taken[best] = true;
      int layer = -1;
      for (int l = 0, mi = 0; l < c->n_layers && layer < 0; l++)
        if (c->is_moe[l] && mi++ == best / c->n_experts) layer = l;
      moe_expert_store_round_begin(e->store);
      int r = moe_expert_store_pin(e->store, layer, (int)(best % c->n_experts), err);
      int rr = moe_expert_store_round_end(e->store, err);
      if (r < 0 || rr < 0) {
        free(taken);
        st = err ? err->status : MOE_ERR_DEVICE;
        goto cleanup;
      }
    }
    free(taken);
  }
  MOE_TRY(dev->ops->synchronize(dev->be, err));
  e->warm_bytes = e->store ? moe_expert_store_stats(e->store)->bytes_h2d : 0;
  moe_engine_reset_stats(e);
  *out = e;
  return MOE_OK;
cleanup:
  moe_engine_free(e);
  return st;
}

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
    MOE_TRY(o->router_topk(e->dev->be, d_idx, d_w, e->router, T, c->n_experts, c->top_k,
                           c->norm_topk, bias, err));
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
  /* the distinct predicted experts, ascending */
  const size_t K = (size_t)c->top_k;
  memset(e->h_pmark, 0, (size_t)c->n_experts * sizeof(int));
  for (size_t i = 0; i < T * K; i++) e->h_pmark[p->idx[i]] = 1;
  int n = 0;
  for (int x = 0; x < c->n_experts; x++)
    if (e->h_pmark[x]) e->h_pneeded[n++] = x;
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

/* One expert's FFN on n gathered rows in e->xe, result in e->ye. */
static moe_status expert_ffn(moe_engine *e, const moe_expert_weights *w, size_t n, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  const size_t F = w->up.rows;
  if (w->gate.data == NULL) { /* ReLU: wo(relu(wi x)) */
    MOE_TRY(o->matmul(be, e->ue, e->xe, n, &w->up, NULL, err));
    MOE_TRY(o->unary(be, e->ue, e->ue, n * F, MOE_UNARY_RELU, 0.0f, err));
    MOE_TRY(o->matmul(be, e->ye, e->ue, n, &w->down, NULL, err));
  } else {
    MOE_TRY(o->matmul(be, e->ge, e->xe, n, &w->gate, NULL, err));
    MOE_TRY(o->matmul(be, e->ue, e->xe, n, &w->up, NULL, err));
    MOE_TRY(o->swiglu(be, e->ge, e->ge, e->ue, n * F, err));
    MOE_TRY(o->matmul(be, e->ye, e->ge, n, &w->down, NULL, err));
  }
cleanup:
  return st;
}

/* The MoE block of layer l on h[T, H], accumulated into x. */
static moe_status moe_block(moe_engine *e, int l, size_t T, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = &e->model->cfg;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  const size_t H = (size_t)c->hidden, K = (size_t)c->top_k, E = (size_t)c->n_experts;
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
  for (int i = 0; i <= MOE_MAX_LOOKAHEAD; i++) {
    struct pending_pred *p = &e->pred[i];
    if (p->layer != l) continue;
    unsigned long long *hits = p->first ? &e->first_hits : &e->pregate_hits;
    unsigned long long *total = p->first ? &e->first_total : &e->pregate_total;
    for (size_t t = 0; t < T; t++)
      for (size_t a = 0; a < K; a++) {
        for (size_t b = 0; b < K; b++) *hits += p->idx[t * K + a] == e->h_idx[t * K + b];
        (*total)++;
      }
    /* the first block is routed by its own router, as the paper does */
    if (e->opt.routing == MOE_ROUTING_PREGATED && !p->first) {
      memcpy(e->h_idx, p->idx, T * K * sizeof(int32_t));
      memcpy(e->h_wts, p->w, T * K * sizeof(float));
    }
    p->layer = -1;
  }
  apply_capacity(e, T);

  /* Group (token, weight) pairs by expert: counting sort, stable in token
   * order (pairs dropped by the capacity, index -1, are left out). */
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
    e->h_scale[slot] = e->h_wts[i];
  }
  const size_t routed = (size_t)e->h_count[E - 1];
  /* h_count[x] is now the end of expert x's run; its start is h_count[x-1]. */
  moe_expert_store_begin_block(e->store, l, e->h_needed, n_needed);
  POLICY_CALL(e, experts_needed, l, e->h_needed, n_needed);
  if (want_pred && pred_from_input) MOE_TRY(pregate(e, l, next, T, true, false, err));

  if (routed > 0) {
    MOE_TRY(o->upload(be, e->rows, e->h_rows, routed * sizeof(int32_t), err));
    MOE_TRY(o->upload(be, e->rw, e->h_scale, routed * sizeof(float), err));
  }
  /* a streaming ring (cache kind ring): while an expert computes, the
   * next `ahead` experts of the block are on their way, in the order they
   * will run (double-buffered at ahead 1) */
  const int stream = e->opt.cache == MOE_CACHE_RING ? e->cache_slots : 0;
  int pos = 0;
  for (size_t x = 0; x < E; x++) {
    size_t begin = x ? (size_t)e->h_count[x - 1] : 0, n = (size_t)e->h_count[x] - begin;
    if (n == 0) continue;
    moe_expert_weights w;
    op_context(e, l, (int)x);
    for (int j = pos + 1; j <= pos + stream && j < n_needed; j++)
      if (moe_expert_store_fetch(e->store, l, e->h_needed[j], true, err) < 0)
        MOE_TRY(err ? err->status : MOE_ERR_DEVICE);
    pos++;
    MOE_TRY(moe_expert_store_acquire(e->store, l, (int)x, &w, err));
    MOE_TRY(o->gather_rows(be, e->xe, e->h, e->rows + begin, n, H, err));
    MOE_TRY(expert_ffn(e, &w, n, err));
    MOE_TRY(o->scatter_add_rows(be, e->x, e->ye, e->rows + begin, e->rw + begin, 1, false, n, H,
                                err));
    MOE_TRY(moe_expert_store_release(e->store, l, (int)x, err));
  }
  moe_expert_store_end_block(e->store, l);
  op_context(e, l, -1);
  if (c->shared_ffn > 0) {
    const moe_weight g = dw(e, l, ROLE_SH_GATE), u = dw(e, l, ROLE_SH_UP),
                     d = dw(e, l, ROLE_SH_DOWN), sg = dw(e, l, ROLE_SH_EXPERT_GATE);
    MOE_TRY(o->matmul(be, e->ge, e->h, T, &g, NULL, err));
    MOE_TRY(o->matmul(be, e->ue, e->h, T, &u, NULL, err));
    MOE_TRY(o->swiglu(be, e->ge, e->ge, e->ue, T * g.rows, err));
    MOE_TRY(o->matmul(be, e->ye, e->ge, T, &d, NULL, err));
    if (sg.data) { /* Qwen2-MoE: a sigmoid gate per token */
      MOE_TRY(o->matmul(be, e->sg, e->h, T, &sg, NULL, err));
      MOE_TRY(o->scatter_add_rows(be, e->x, e->ye, e->iota, e->sg, 1, true, T, H, err));
    } else { /* DeepSeek: added as it is */
      MOE_TRY(o->add(be, e->x, e->ye, T * H, err));
    }
  }
  if (want_pred && !pred_from_input) MOE_TRY(pregate(e, l, next, T, false, false, err));
cleanup:
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
  MOE_TRY(o->add(be, e->x, e->tmp, T * (size_t)e->model->cfg.hidden, err));
cleanup:
  return st;
}

/* Self-attention of a decoder-only layer: RoPE, the KV cache, causal
 * attention scaled by 1/sqrt(head_dim).  e->h in, e->att out. */
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
                            e->inv_freq, e->rope_attn};
    const moe_rope_ex rk = {c->n_kv_heads, (size_t)c->n_kv_heads * hd, hd, 0, c->head_dim, false,
                            e->inv_freq, e->rope_attn};
    MOE_TRY(o->rope_ex(be, e->q, T, e->pos, &rq, err));
    MOE_TRY(o->rope_ex(be, e->k, T, e->pos, &rk, err));
  } else {
    MOE_TRY(o->rope(be, e->q, T, e->pos, c->n_heads, c->head_dim, c->rope_theta, err));
    MOE_TRY(o->rope(be, e->k, T, e->pos, c->n_kv_heads, c->head_dim, c->rope_theta, err));
  }
  MOE_TRY(o->kv_store(be, kc, vc, e->k, e->v, shape, err));
  MOE_TRY(o->attention(be, e->att, e->q, kc, vc, shape, err));
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
                          c->rope_interleave, e->inv_freq, e->rope_attn};
  const moe_rope_ex rk = {1, P, P, 0, c->rope_dim, c->rope_interleave, e->inv_freq, e->rope_attn};
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
  const bool t5 = c->arch == MOE_ARCH_SWITCH;
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
    else if (moe_config_is_mla(c))
      MOE_TRY(latent_attention(e, l, T, &shape, err));
    else
      MOE_TRY(rope_attention(e, l, T, &shape, err));
    MOE_TRY(o->matmul(be, e->tmp, e->att, T, &wo, &bo, err));
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
static moe_status forward(moe_engine *e, const int32_t *tokens, int n_seq, int n_new, int pos0,
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
  if (logits) MOE_TRY(o->download(be, logits, e->logits, rows * (size_t)c->vocab * sizeof(float), err));
cleanup:
  return st;
}

moe_status moe_engine_forward(moe_engine *e, const int32_t *tokens, int n_seq, int n_new, int pos0,
                              float *logits, moe_error *err) {
  if (logits == NULL) return MOE_FAIL(err, MOE_ERR_INVALID, "forward: logits is NULL");
  return forward(e, tokens, n_seq, n_new, pos0, logits, err);
}

/* A decode step whose logits nobody keeps: the greedy choice on the device
 * (argmax_rows) and n_seq ids downloaded, not n_seq x vocab logits.  The
 * same tokens as scanning the downloaded logits (the op's contract). */
static moe_status decode_step_on_device(moe_engine *e, const int32_t *tokens, int n_seq, int pos0,
                                        int32_t *next, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_backend_ops *o = e->dev->ops;
  MOE_TRY(forward(e, tokens, n_seq, 1, pos0, NULL, err));
  /* e->rows (T x top_k ids) is free once the forward has gathered with it */
  MOE_TRY(o->argmax_rows(e->dev->be, e->rows, e->logits, (size_t)n_seq, e->model->cfg.vocab, err));
  MOE_TRY(o->download(e->dev->be, next, e->rows, (size_t)n_seq * sizeof(int32_t), err));
cleanup:
  return st;
}

/* Stall since the last reset: measured by the device where the backend can
 * (stall_seconds), else by the store with the host clock. */
static double engine_stall(const moe_engine *e) {
  if (e->dev->ops->stall_seconds) return e->dev->ops->stall_seconds(e->dev->be) - e->stall_base;
  return e->store ? moe_expert_store_stats(e->store)->stall_s : 0.0;
}

moe_status moe_engine_generate(moe_engine *e, const int32_t *prompts, int n_seq, int prompt_len,
                               int max_new, int32_t *out, float *prefill_logits,
                               moe_gen_stats *stats, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = &e->model->cfg;
  const int V = c->vocab;
  const bool encdec = moe_config_is_encdec(c);
  /* an encoder-decoder prefill is the encoder plus the decoder's first
   * step (the start token): one logits row per sequence */
  const int pre_new = encdec ? 1 : prompt_len;
  const size_t rows = e->opt.all_logits ? (size_t)n_seq * (size_t)pre_new : (size_t)n_seq;
  float *logits = malloc(rows * (size_t)V * sizeof(float));
  int32_t *next = malloc((size_t)n_seq * sizeof(int32_t));
  MOE_CHECK(logits && next, err, MOE_ERR_OOM, "out of host memory for logits");
  MOE_CHECK(max_new >= 1, err, MOE_ERR_INVALID, "max new tokens must be >= 1 (got %d)", max_new);
  MOE_CHECK(prompt_len >= 1, err, MOE_ERR_INVALID, "prompt length must be >= 1 (got %d)", prompt_len);
  if (encdec)
    MOE_CHECK(prompt_len <= e->opt.max_prefill && max_new <= e->opt.max_seq, err, MOE_ERR_INVALID,
              "input (%d) or new tokens (%d) exceed the engine's limits (%d input tokens, %d "
              "decoder positions)", prompt_len, max_new, e->opt.max_prefill, e->opt.max_seq);
  else
    MOE_CHECK(prompt_len + max_new - 1 <= e->opt.max_seq, err, MOE_ERR_INVALID,
              "prompt (%d) + new tokens (%d) exceed the engine's sequence limit %d", prompt_len,
              max_new, e->opt.max_seq);
  /* decoder positions: the prompt's (decoder-only), or the start token's */
  const int dec0 = encdec ? 0 : prompt_len - 1;
  double t0 = now(e);
  if (encdec) {
    MOE_TRY(moe_engine_encode(e, prompts, n_seq, prompt_len, err));
    for (int b = 0; b < n_seq; b++) next[b] = c->decoder_start;
    MOE_TRY(moe_engine_forward(e, next, n_seq, 1, 0, logits, err));
  } else {
    MOE_TRY(moe_engine_forward(e, prompts, n_seq, prompt_len, 0, logits, err));
  }
  if (prefill_logits) memcpy(prefill_logits, logits, rows * (size_t)V * sizeof(float));
  float *keep = stats ? stats->step_logits : NULL;
  for (int b = 0; b < n_seq; b++) {
    size_t r = e->opt.all_logits ? (size_t)b * (size_t)pre_new + (size_t)pre_new - 1 : (size_t)b;
    next[b] = moe_argmax(logits + r * (size_t)V, V);
    out[(size_t)b * (size_t)max_new] = next[b];
    if (keep) memcpy(keep + (size_t)b * (size_t)V, logits + r * (size_t)V, (size_t)V * sizeof(float));
  }
  double t1 = now(e);
  if (stats && e->store) {
    stats->prefill_bytes_h2d = moe_expert_store_stats(e->store)->bytes_h2d;
    stats->prefill_stall_s = engine_stall(e);
  }
  /* (e->rows holds top_k ids per token: room for the n_seq ids) */
  const bool on_device = keep == NULL && e->dev->ops->argmax_rows != NULL && c->top_k >= 1;
  for (int step = 1; step < max_new; step++) {
    double ts = now(e);
    if (on_device) {
      MOE_TRY(decode_step_on_device(e, next, n_seq, dec0 + step, next, err));
    } else {
      MOE_TRY(moe_engine_forward(e, next, n_seq, 1, dec0 + step, logits, err));
      for (int b = 0; b < n_seq; b++) next[b] = moe_argmax(logits + (size_t)b * (size_t)V, V);
    }
    for (int b = 0; b < n_seq; b++) out[(size_t)b * (size_t)max_new + (size_t)step] = next[b];
    if (keep)
      memcpy(keep + (size_t)step * (size_t)n_seq * (size_t)V, logits,
             (size_t)n_seq * (size_t)V * sizeof(float));
    if (stats && stats->step_s) stats->step_s[step - 1] = now(e) - ts;
  }
  double t2 = now(e);
  if (stats) {
    stats->prefill_s = t1 - t0;
    stats->decode_s = t2 - t1;
    stats->total_s = t2 - t0;
    stats->generated = max_new;
  }
cleanup:
  free(logits);
  free(next);
  return st;
}


moe_status moe_engine_eval(moe_engine *e, const int32_t *windows, int n_windows, int len,
                           moe_eval_result *out, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = &e->model->cfg;
  const int V = c->vocab, B = e->opt.max_batch;
  float *logits = NULL;
  MOE_CHECK(!moe_config_is_encdec(c), err, MOE_ERR_UNSUPPORTED,
            "eval scores a decoder-only language model; this model is encoder-decoder");
  MOE_CHECK(e->opt.all_logits, err, MOE_ERR_INVALID,
            "eval needs an engine that keeps all logits (all_logits)");
  MOE_CHECK(len >= 2 && n_windows >= 1, err, MOE_ERR_INVALID,
            "eval needs windows of at least 2 tokens (got %d windows of %d)", n_windows, len);
  logits = malloc((size_t)B * (size_t)len * (size_t)V * sizeof *logits);
  MOE_CHECK_ALLOC(logits, err, (size_t)B * (size_t)len * (size_t)V * sizeof *logits);
  for (int w0 = 0; w0 < n_windows; w0 += B) {
    const int nb = n_windows - w0 < B ? n_windows - w0 : B;
    const int32_t *ids = windows + (size_t)w0 * (size_t)len;
    MOE_TRY(moe_engine_forward(e, ids, nb, len, 0, logits, err));
    for (int b = 0; b < nb; b++)
      for (int t = 0; t + 1 < len; t++) {
        const float *l = logits + ((size_t)b * (size_t)len + (size_t)t) * (size_t)V;
        const int32_t target = ids[(size_t)b * (size_t)len + (size_t)t + 1];
        const int best = moe_argmax(l, V);
        double sum = 0.0;
        for (int v = 0; v < V; v++) sum += exp((double)l[v] - (double)l[best]);
        out->nll += (double)l[best] + log(sum) - (double)l[target];
        out->correct += best == target;
        out->tokens++;
      }
  }
cleanup:
  free(logits);
  return st;
}

void moe_engine_stats(const moe_engine *e, moe_run_stats *out) {
  memset(out, 0, sizeof *out);
  out->slots = e->slots;
  if (e->store) {
    const moe_expert_stats *s = moe_expert_store_stats(e->store);
    out->fetches = s->fetches;
    out->bytes_h2d = s->bytes_h2d;
    out->misses = s->misses;
    out->refused = s->refused;
    out->recopies = s->recopies;
    out->wasted = s->wasted;
  }
  out->stall_s = engine_stall(e);
  out->invalid_requests = e->invalid_requests;
  out->cache_slots = e->cache_slots;
  if (e->store) {
    out->gets = moe_expert_store_stats(e->store)->gets;
    out->reused = moe_expert_store_stats(e->store)->reused;
  }
  out->first_block_hits = e->first_hits;
  out->first_block_total = e->first_total;
  out->pregate_hits = e->pregate_hits;
  out->pregate_total = e->pregate_total;
  out->warm_bytes = e->warm_bytes;
  out->pinned = -1;
  if (e->store) moe_expert_store_pinning(e->store, &out->pinned, &out->pin_s);
}

void moe_engine_reset_stats(moe_engine *e) {
  if (e->store) moe_expert_store_reset_stats(e->store);
  if (e->dev->ops->stall_seconds) e->stall_base = e->dev->ops->stall_seconds(e->dev->be);
  e->pregate_hits = e->pregate_total = 0;
  e->invalid_requests = 0;
  e->first_hits = e->first_total = 0;
}

struct moe_expert_store *moe_engine_store(moe_engine *e) { return e->store; }

moe_status moe_engine_residual_rms(moe_engine *e, double *rms, moe_error *err) {
  const size_t n = e->last_rows * (size_t)e->model->cfg.hidden;
  *rms = 0.0;
  if (n == 0) return MOE_OK;
  float *h = malloc(n * sizeof *h);
  if (h == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "out of host memory");
  moe_status st = e->dev->ops->download(e->dev->be, h, e->x, n * sizeof *h, err);
  double ss = 0.0;
  for (size_t i = 0; i < n && st == MOE_OK; i++) ss += (double)h[i] * h[i];
  free(h);
  *rms = sqrt(ss / (double)n);
  return st;
}
