/* The engine: a model placed on a backend, forward pass and greedy decode.
 *
 * Per layer: RMSNorm, grouped-query attention with RoPE and a KV cache,
 * residual; RMSNorm, then an MoE block (router, softmax, top-k, experts
 * grouped so each expert's weights are read once per block per step, shared
 * expert with a sigmoid gate where configured) or a dense SwiGLU FFN;
 * residual.  Final norm and lm_head.  All math goes through the backend. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model_internal.h"
#include "moe/expert_store.h"

struct moe_engine {
  moe_model *model;
  moe_device *dev;
  moe_engine_options opt;
  moe_expert_store *store;
  uint8_t *dense_dev;        /* device copy of the dense slab */
  float *k_cache, *v_cache;  /* [layers][max_batch][kv_heads][max_seq][head_dim] */
  size_t cache_layer_floats;
  /* activations, device */
  float *x, *h, *q, *k, *v, *att, *tmp, *router, *rw, *xe, *ge, *ue, *ye, *sg, *logits;
  int32_t *ids, *pos, *rows, *iota, *ridx;
  size_t max_tokens;
  size_t last_rows;          /* rows of the last forward call */
  /* host scratch */
  int32_t *h_ids, *h_pos, *h_idx, *h_rows;
  float *h_wts, *h_scale;
  int *h_count;
};

int moe_argmax(const float *x, int n) {
  int best = 0;
  for (int i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return best;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Device view of a dense tensor; an absent tensor gives data == NULL. */
static moe_weight dw(const moe_engine *e, int layer, moe_role role) {
  const moe_tensor_spec *s = moe_model_spec(e->model, layer, role);
  if (s == NULL) return (moe_weight){NULL, e->model->dtype, 0, 0};
  return (moe_weight){e->dense_dev + s->offset, e->model->dtype, s->rows, s->cols};
}

void moe_engine_free(moe_engine *e) {
  if (e == NULL) return;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  void *dev_bufs[] = {e->dense_dev, e->k_cache, e->v_cache, e->x,   e->h,   e->q,    e->k,
                      e->v,         e->att,     e->tmp,     e->router, e->rw, e->xe, e->ge,
                      e->ue,        e->ye,      e->sg,      e->logits, e->ids, e->pos, e->rows,
                      e->iota,      e->ridx};
  for (size_t i = 0; i < sizeof dev_bufs / sizeof dev_bufs[0]; i++)
    if (dev_bufs[i]) o->device_free(be, dev_bufs[i]);
  moe_expert_store_free(e->store);
  free(e->h_ids);
  free(e->h_pos);
  free(e->h_idx);
  free(e->h_rows);
  free(e->h_wts);
  free(e->h_scale);
  free(e->h_count);
  free(e);
}

static moe_status dalloc(moe_engine *e, void *pptr, size_t bytes, moe_error *err) {
  return e->dev->ops->device_alloc(e->dev->be, bytes ? bytes : 4, (void **)pptr, err);
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
  e->opt = *opt;
  if (e->opt.max_prefill <= 0 || e->opt.max_prefill > e->opt.max_seq) e->opt.max_prefill = e->opt.max_seq;
  MOE_CHECK(opt->max_batch > 0 && opt->max_seq > 0, err, MOE_ERR_INVALID,
            "batch (%d) and sequence length (%d) must be positive", opt->max_batch, opt->max_seq);
  MOE_CHECK(opt->max_seq <= c->max_pos, err, MOE_ERR_INVALID,
            "sequence length %d exceeds max_position_embeddings %d", opt->max_seq, c->max_pos);
  const size_t B = (size_t)opt->max_batch, T = B * (size_t)e->opt.max_prefill;
  const size_t H = (size_t)c->hidden, hd = (size_t)c->head_dim;
  const size_t qd = (size_t)c->n_heads * hd, kvd = (size_t)c->n_kv_heads * hd;
  size_t ffn = (size_t)c->expert_ffn;
  if ((size_t)c->dense_ffn > ffn) ffn = (size_t)c->dense_ffn;
  if ((size_t)c->shared_ffn > ffn) ffn = (size_t)c->shared_ffn;
  const size_t E = (size_t)(c->n_experts > 0 ? c->n_experts : 1), K = (size_t)(c->top_k > 0 ? c->top_k : 1);
  e->max_tokens = T;

  MOE_TRY(dalloc(e, &e->dense_dev, model->dense_bytes, err));
  MOE_TRY(dev->ops->upload(dev->be, e->dense_dev, model->dense, model->dense_bytes, err));
  MOE_TRY(moe_expert_store_create(&e->store, model, dev, err));
  e->cache_layer_floats = B * (size_t)c->n_kv_heads * (size_t)opt->max_seq * hd;
  MOE_TRY(dalloc(e, &e->k_cache, (size_t)c->n_layers * e->cache_layer_floats * sizeof(float), err));
  MOE_TRY(dalloc(e, &e->v_cache, (size_t)c->n_layers * e->cache_layer_floats * sizeof(float), err));
  const struct {
    void *pp;
    size_t n;
  } bufs[] = {
      {&e->x, T * H},   {&e->h, T * H},    {&e->q, T * qd},  {&e->k, T * kvd},
      {&e->v, T * kvd}, {&e->att, T * qd}, {&e->tmp, T * H}, {&e->router, T * E},
      {&e->rw, T * K},  {&e->xe, T * H},   {&e->ge, T * ffn}, {&e->ue, T * ffn},
      {&e->ye, T * H},  {&e->sg, T},
      {&e->logits, (opt->all_logits ? T : B) * (size_t)c->vocab},
      {&e->ids, T},     {&e->pos, T},      {&e->rows, T * K}, {&e->iota, T},
      {&e->ridx, T * K},
  };
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
    MOE_TRY(dalloc(e, bufs[i].pp, bufs[i].n * 4, err));
  e->h_ids = malloc(T * sizeof(int32_t));
  e->h_pos = malloc(T * sizeof(int32_t));
  e->h_idx = malloc(T * K * sizeof(int32_t));
  e->h_rows = malloc(T * K * sizeof(int32_t));
  e->h_wts = malloc(T * K * sizeof(float));
  e->h_scale = malloc(T * K * sizeof(float));
  e->h_count = malloc((E + 1) * sizeof(int));
  MOE_CHECK(e->h_ids && e->h_pos && e->h_idx && e->h_rows && e->h_wts && e->h_scale && e->h_count,
            err, MOE_ERR_OOM, "out of host memory for engine scratch");
  for (size_t i = 0; i < T; i++) e->h_ids[i] = (int32_t)i;
  MOE_TRY(dev->ops->upload(dev->be, e->iota, e->h_ids, T * sizeof(int32_t), err));
  *out = e;
  return MOE_OK;
cleanup:
  moe_engine_free(e);
  return st;
}

/* The MoE block of layer l on h[T, H], accumulated into x. */
static moe_status moe_block(moe_engine *e, int l, size_t T, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_config *c = &e->model->cfg;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  const size_t H = (size_t)c->hidden, K = (size_t)c->top_k, E = (size_t)c->n_experts;
  const moe_weight router = dw(e, l, ROLE_ROUTER), rbias = dw(e, l, ROLE_ROUTER_BIAS);
  MOE_TRY(o->matmul(be, e->router, e->h, T, &router, NULL, err));
  MOE_TRY(o->router_topk(be, e->ridx, e->rw, e->router, T, c->n_experts, c->top_k, c->norm_topk,
                         &rbias, err));
  MOE_TRY(o->download(be, e->h_idx, e->ridx, T * K * sizeof(int32_t), err));
  MOE_TRY(o->download(be, e->h_wts, e->rw, T * K * sizeof(float), err));
  /* Group (token, weight) pairs by expert: counting sort, stable in token order. */
  memset(e->h_count, 0, (E + 1) * sizeof(int));
  for (size_t i = 0; i < T * K; i++) e->h_count[e->h_idx[i] + 1]++;
  for (size_t x = 0; x < E; x++) e->h_count[x + 1] += e->h_count[x];
  for (size_t i = 0; i < T * K; i++) {
    int slot = e->h_count[e->h_idx[i]]++;
    e->h_rows[slot] = (int32_t)(i / K);
    e->h_scale[slot] = e->h_wts[i];
  }
  /* h_count[x] is now the end of expert x's run; its start is h_count[x-1]. */
  MOE_TRY(o->upload(be, e->rows, e->h_rows, T * K * sizeof(int32_t), err));
  MOE_TRY(o->upload(be, e->rw, e->h_scale, T * K * sizeof(float), err));
  for (size_t x = 0; x < E; x++) {
    size_t begin = x ? (size_t)e->h_count[x - 1] : 0, n = (size_t)e->h_count[x] - begin;
    if (n == 0) continue;
    moe_expert_weights w;
    MOE_TRY(moe_expert_store_get(e->store, l, (int)x, &w, err));
    const size_t F = w.gate.rows;
    MOE_TRY(o->gather_rows(be, e->xe, e->h, e->rows + begin, n, H, err));
    MOE_TRY(o->matmul(be, e->ge, e->xe, n, &w.gate, NULL, err));
    MOE_TRY(o->matmul(be, e->ue, e->xe, n, &w.up, NULL, err));
    MOE_TRY(o->swiglu(be, e->ge, e->ge, e->ue, n * F, err));
    MOE_TRY(o->matmul(be, e->ye, e->ge, n, &w.down, NULL, err));
    MOE_TRY(o->scatter_add_rows(be, e->x, e->ye, e->rows + begin, e->rw + begin, 1, false, n, H,
                                err));
  }
  if (c->shared_ffn > 0) {
    const moe_weight g = dw(e, l, ROLE_SH_GATE), u = dw(e, l, ROLE_SH_UP),
                     d = dw(e, l, ROLE_SH_DOWN), sg = dw(e, l, ROLE_SH_EXPERT_GATE);
    MOE_TRY(o->matmul(be, e->ge, e->h, T, &g, NULL, err));
    MOE_TRY(o->matmul(be, e->ue, e->h, T, &u, NULL, err));
    MOE_TRY(o->swiglu(be, e->ge, e->ge, e->ue, T * g.rows, err));
    MOE_TRY(o->matmul(be, e->ye, e->ge, T, &d, NULL, err));
    MOE_TRY(o->matmul(be, e->sg, e->h, T, &sg, NULL, err));
    MOE_TRY(o->scatter_add_rows(be, e->x, e->ye, e->iota, e->sg, 1, true, T, H, err));
  }
cleanup:
  return st;
}

static moe_status dense_ffn(moe_engine *e, int l, size_t T, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  const moe_weight g = dw(e, l, ROLE_D_GATE), u = dw(e, l, ROLE_D_UP), d = dw(e, l, ROLE_D_DOWN);
  MOE_TRY(o->matmul(be, e->ge, e->h, T, &g, NULL, err));
  MOE_TRY(o->matmul(be, e->ue, e->h, T, &u, NULL, err));
  MOE_TRY(o->swiglu(be, e->ge, e->ge, e->ue, T * g.rows, err));
  MOE_TRY(o->matmul(be, e->tmp, e->ge, T, &d, NULL, err));
  MOE_TRY(o->add(be, e->x, e->tmp, T * (size_t)e->model->cfg.hidden, err));
cleanup:
  return st;
}

moe_status moe_engine_forward(moe_engine *e, const int32_t *tokens, int n_seq, int n_new, int pos0,
                              float *logits, moe_error *err) {
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
  const size_t T = (size_t)n_seq * (size_t)n_new, H = (size_t)c->hidden;
  e->last_rows = T;
  for (size_t i = 0; i < T; i++) {
    MOE_CHECK(tokens[i] >= 0 && tokens[i] < c->vocab, err, MOE_ERR_INVALID,
              "token id %d at index %zu is outside the vocabulary (0..%d)", (int)tokens[i], i,
              c->vocab - 1);
    e->h_pos[i] = pos0 + (int32_t)(i % (size_t)n_new);
  }
  MOE_TRY(o->upload(be, e->ids, tokens, T * sizeof(int32_t), err));
  MOE_TRY(o->upload(be, e->pos, e->h_pos, T * sizeof(int32_t), err));
  const moe_weight emb = dw(e, -1, ROLE_EMBED);
  MOE_TRY(o->embed(be, e->x, &emb, e->ids, T, err));
  const moe_attn_shape shape = {n_seq, n_new, pos0, e->opt.max_seq, c->n_heads, c->n_kv_heads,
                                c->head_dim};
  for (int l = 0; l < c->n_layers; l++) {
    const moe_weight an = dw(e, l, ROLE_ATTN_NORM), fn = dw(e, l, ROLE_FFN_NORM);
    const moe_weight wq = dw(e, l, ROLE_WQ), wk = dw(e, l, ROLE_WK), wv = dw(e, l, ROLE_WV),
                     wo = dw(e, l, ROLE_WO), bq = dw(e, l, ROLE_BQ), bk = dw(e, l, ROLE_BK),
                     bv = dw(e, l, ROLE_BV);
    float *kc = e->k_cache + (size_t)l * e->cache_layer_floats;
    float *vc = e->v_cache + (size_t)l * e->cache_layer_floats;
    MOE_TRY(o->rmsnorm(be, e->h, e->x, T, &an, c->rms_eps, err));
    MOE_TRY(o->matmul(be, e->q, e->h, T, &wq, &bq, err));
    MOE_TRY(o->matmul(be, e->k, e->h, T, &wk, &bk, err));
    MOE_TRY(o->matmul(be, e->v, e->h, T, &wv, &bv, err));
    MOE_TRY(o->rope(be, e->q, T, e->pos, c->n_heads, c->head_dim, c->rope_theta, err));
    MOE_TRY(o->rope(be, e->k, T, e->pos, c->n_kv_heads, c->head_dim, c->rope_theta, err));
    MOE_TRY(o->kv_store(be, kc, vc, e->k, e->v, &shape, err));
    MOE_TRY(o->attention(be, e->att, e->q, kc, vc, &shape, err));
    MOE_TRY(o->matmul(be, e->tmp, e->att, T, &wo, NULL, err));
    MOE_TRY(o->add(be, e->x, e->tmp, T * H, err));
    MOE_TRY(o->rmsnorm(be, e->h, e->x, T, &fn, c->rms_eps, err));
    if (c->is_moe[l])
      MOE_TRY(moe_block(e, l, T, err));
    else
      MOE_TRY(dense_ffn(e, l, T, err));
  }
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
  MOE_TRY(o->matmul(be, e->logits, e->h, rows, &head, NULL, err));
  MOE_TRY(o->download(be, logits, e->logits, rows * (size_t)c->vocab * sizeof(float), err));
cleanup:
  return st;
}

moe_status moe_engine_generate(moe_engine *e, const int32_t *prompts, int n_seq, int prompt_len,
                               int max_new, int32_t *out, float *prefill_logits,
                               moe_gen_stats *stats, moe_error *err) {
  moe_status st = MOE_OK;
  const int V = e->model->cfg.vocab;
  const size_t rows = e->opt.all_logits ? (size_t)n_seq * (size_t)prompt_len : (size_t)n_seq;
  float *logits = malloc(rows * (size_t)V * sizeof(float));
  int32_t *next = malloc((size_t)n_seq * sizeof(int32_t));
  MOE_CHECK(logits && next, err, MOE_ERR_OOM, "out of host memory for logits");
  MOE_CHECK(max_new >= 1, err, MOE_ERR_INVALID, "max new tokens must be >= 1 (got %d)", max_new);
  MOE_CHECK(prompt_len >= 1, err, MOE_ERR_INVALID, "prompt length must be >= 1 (got %d)", prompt_len);
  MOE_CHECK(prompt_len + max_new - 1 <= e->opt.max_seq, err, MOE_ERR_INVALID,
            "prompt (%d) + new tokens (%d) exceed the engine's sequence limit %d", prompt_len,
            max_new, e->opt.max_seq);
  double t0 = now_s();
  MOE_TRY(moe_engine_forward(e, prompts, n_seq, prompt_len, 0, logits, err));
  if (prefill_logits) memcpy(prefill_logits, logits, rows * (size_t)V * sizeof(float));
  for (int b = 0; b < n_seq; b++) {
    size_t r = e->opt.all_logits ? (size_t)b * (size_t)prompt_len + (size_t)prompt_len - 1 : (size_t)b;
    next[b] = moe_argmax(logits + r * (size_t)V, V);
    out[(size_t)b * (size_t)max_new] = next[b];
  }
  double t1 = now_s();
  for (int step = 1; step < max_new; step++) {
    double ts = now_s();
    MOE_TRY(moe_engine_forward(e, next, n_seq, 1, prompt_len + step - 1, logits, err));
    for (int b = 0; b < n_seq; b++) {
      next[b] = moe_argmax(logits + (size_t)b * (size_t)V, V);
      out[(size_t)b * (size_t)max_new + (size_t)step] = next[b];
    }
    if (stats && stats->step_s) stats->step_s[step - 1] = now_s() - ts;
  }
  double t2 = now_s();
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
