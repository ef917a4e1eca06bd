/* The engine's private layout and the helpers its files share: engine.c
 * (options, sizes, planning, lifecycle, the policy context), engine_forward.c
 * (blocks, attention, the forward pass) and engine_run.c (generate, eval,
 * statistics). */
#ifndef MOE_ENGINE_INTERNAL_H
#define MOE_ENGINE_INTERNAL_H

#include "checked.h"
#include "model_internal.h"
#include "moe/clock.h"
#include "moe/device.h"
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
  float *inv_freq;           /* scaled RoPE's frequencies for rope_ex (YaRN, MLA); NULL for
                                plain RoPE, whose rope_ex computes them from theta */
  float rope_attn;           /* rope_ex's cos/sin factor */
  float attn_scale;          /* the attention softmax scale (moe_config_attn_scale) */
  bool use_rope_ex;
  /* Activations, device, f32.  Shapes in rows of T = max_batch x
   * max_prefill (a forward's n_seq x n_new rows, token-major); sizes and
   * names in engine_buffers, the one size table.  H hidden, Q = heads x
   * head_dim, KV = kv_heads x head_dim, F the widest FFN (expert, dense or
   * shared), E experts, K top-k, V vocab. */
  float *x;      /* [T][H] the residual stream */
  float *h;      /* [T][H] normed activations, the input of attention and FFNs; after
                    encode() the encoder's output until the decoder's first forward */
  float *q;      /* [T][Q] queries */
  float *k, *v;  /* [T][KV] keys, values; under MLA k is [T][max(kv_rank, q_rank)] (the
                    latents, and q_a_proj's output) and v [T][rope_dim] (rotated keys) */
  float *att;    /* [T][Q] attention output (under MLA [T][heads x v_dim]) */
  float *tmp;    /* [T][H] a block's output before the residual add; [n_seq][H] the
                    gathered last rows before the final norm */
  float *router; /* [T][E] router (and pre-gate) logits */
  float *rw, *pw; /* [T][K] routing, pre-gate weights; rw also the per-pair scales of
                     the expert-sorted rows (routed <= T x K) */
  float *xe;     /* [T][H] an expert's gathered input rows */
  float *ge, *ue; /* [T][F] gate and up projections (expert, dense, shared) */
  float *ye;     /* [T][H] an expert's (or the dense/shared FFN's) output */
  float *sg;     /* [T] the shared expert's sigmoid gate */
  float *logits; /* [T][V] with all_logits, else [max_batch][V] */
  /* Index buffers, device, int32. */
  int32_t *ids, *pos; /* [T] token ids, positions */
  int32_t *rows;      /* [T][K] expert-sorted token rows; after a forward has gathered with
                         them, a decode step's greedy ids [n_seq] (decode_step_on_device) */
  int32_t *iota;      /* [T] 0 .. T-1 */
  int32_t *ridx, *pidx; /* [T][K] routing, pre-gate expert indices */
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
    int32_t *second;         /* [T]: each token's next choice (pregate_second), -1 none */
  } pred[MOE_MAX_LOOKAHEAD + 1];
  float *h_plogits;          /* [T][E]: a pre-gate's logits, host (pregate_second) */
  int *h_count, *h_needed, *h_pmark, *h_pneeded;
  float *h_pscore; /* [E]: a prediction's summed gate weight per expert (its confidence) */
  /* encoder-decoder models */
  float *xk_cache, *xv_cache; /* cross-attention K/V of the encoder output:
                                 [decoder layers][max_batch][heads][max_seq][head_dim] */
  int32_t *buckets;          /* relative-position buckets, [2][2 max_seq - 1]:
                                encoder (bidirectional), decoder (causal) */
  int enc_seq, src_len;      /* the batch encode() ran (0: none yet) */
  int *h_cap;                /* tokens per expert of one sequence (expert capacity) */
  int cur_n_new;             /* tokens per sequence of the running forward */

  /* experts computed on the host (policies with place; engine_host.c) */
  struct host_exec *hx;      /* NULL when the policy places nothing on the host */
  float *xh, *yh;            /* device, [T x K][H]: a block's expert rows in expert-sorted
                                order: the host experts' gathered inputs, and every
                                expert's output before the in-order adds (0 bytes
                                without host placement) */
  unsigned char *h_onhost;   /* [E] of the running block: expert computed on the host */
  int *h_dneeded;            /* [E] the block's device experts, ascending */
  int *h_tokens;             /* [E] tokens of each needed expert */
  unsigned long long host_experts, host_tokens, host_xfer_bytes;
  double host_wait_s;

  unsigned long long first_hits, first_total;
  double stall_base;         /* backend-measured stall at the last reset */
  unsigned long long pregate_hits, pregate_total, warm_bytes, pregate_second_hits;
  unsigned long long invalid_requests; /* policy requests refused for bad arguments */
  unsigned long long step;   /* layer runs so far (the backend's context counter) */
};

/* The engine's clock: the backend's (modeled) clock where it has one, else
 * the host clock. */
static inline double now(const moe_engine *e) {
  return e->dev->ops->modeled_seconds ? e->dev->ops->modeled_seconds(e->dev->be) : moe_clock_s();
}

/* Tells the trace and the backend what the next ops belong to. */
static inline void op_context(moe_engine *e, int layer, int expert) {
  moe_trace_context(e->dev->trace, layer, expert);
  if (e->dev->ops->set_context) e->dev->ops->set_context(e->dev->be, layer, expert, e->step);
}

/* Device view of a dense tensor; an absent tensor gives data == NULL. */
static inline moe_weight dw(const moe_engine *e, int layer, moe_role role) {
  const moe_tensor_spec *s = moe_model_spec(e->model, layer, role);
  if (s == NULL) return (moe_weight){NULL, e->model->dtype, 0, 0};
  return (moe_weight){e->dense_dev + s->offset, e->model->dtype, s->rows, s->cols};
}

/* The next MoE layer after `layer` in model order (-1: the first one), or
 * -1: what policies see (ctx->next_moe_layer), encoder then decoder. */
static inline int next_moe(const moe_model *m, int layer) {
  if (layer >= m->cfg.n_layers) return -1;
  for (int l = layer < 0 ? 0 : layer + 1; l < m->cfg.n_layers; l++)
    if (m->cfg.is_moe[l]) return l;
  return -1;
}

/* The next MoE layer after `layer` in the same stack, or -1: what a block
 * predicts.  The encoder's last MoE block predicts nothing, and nothing
 * predicts the decoder's first (as in the paper). */
static inline int next_moe_in_stack(const moe_model *m, int layer) {
  int b, end;
  moe_config_stack(&m->cfg, layer, &b, &end);
  for (int l = layer + 1; l < end; l++)
    if (m->cfg.is_moe[l]) return l;
  return -1;
}

/* The first MoE layer of the stack [begin, end), or -1. */
static inline int first_moe_in(const moe_model *m, int begin, int end) {
  for (int l = begin; l < end; l++)
    if (m->cfg.is_moe[l]) return l;
  return -1;
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
      MOE_TRY(engine_policy_result((e), pst_, #method, err));                                   \
      MOE_CHECK(prc_ == 0 && (err == NULL || err->status == MOE_OK), err,                \
                err && err->status != MOE_OK ? err->status : MOE_ERR_DEVICE,             \
                "policy '%s': %s failed", (e)->policy->name, #method);                   \
    }                                                                                    \
  } while (0)

/* A policy method's status: a failure it reported without a message gets
 * one naming the policy and the method (engine.c). */
moe_status engine_policy_result(const moe_engine *e, moe_status st, const char *method,
                                  moe_error *err);

/* Experts computed on the host (engine_host.c).  engine_host_create
 * prepares the host side when the policy has place (a no-op otherwise);
 * engine_host_place asks the policy where block l's n_needed experts run
 * (fills h_onhost and h_dneeded; returns the device experts' count);
 * engine_host_issue sends the host experts' rows down and starts their job
 * (after the block's rows and scales are uploaded); engine_host_finish
 * waits for it, brings the results up into yh and adds every expert's
 * output into x in index order. */
bool engine_policy_places(const struct moe_policy *p);
moe_status engine_host_create(moe_engine *e, moe_error *err);
void engine_host_free(moe_engine *e);
moe_status engine_host_place(moe_engine *e, int l, int n_needed, int *n_dev, int *n_host,
                             moe_error *err);
moe_status engine_host_issue(moe_engine *e, int l, moe_error *err);
moe_status engine_host_finish(moe_engine *e, int l, moe_error *err);
/* Waits for a host job still running (one a failed block left behind), so
 * that nothing it uses is reused under it; MOE_OK when none is. */
moe_status engine_host_settle(moe_engine *e, moe_error *err);

/* One expert's FFN: y[n, H] = ffn(x[n, H]) with ge, ue [n, F] scratch, on
 * the given backend (engine_forward.c; the host job calls it with the
 * host's math). */
moe_status engine_expert_ffn(const moe_backend_ops *o, moe_backend *be, const moe_expert_weights *w,
                             const float *x, float *ge, float *ue, float *y, size_t n,
                             moe_error *err);

/* The forward pass over n_new tokens of n_seq sequences from position pos0
 * (engine_forward.c); logits, when not NULL, receives the logits of the
 * rows the pass keeps (every row with opt.all_logits, else each sequence's
 * last); NULL leaves them on the device (e->logits). */
moe_status engine_forward(moe_engine *e, const int32_t *tokens, int n_seq, int n_new, int pos0,
                          float *logits, moe_error *err);

#endif
