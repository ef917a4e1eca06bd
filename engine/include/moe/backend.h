/* The backend interface: where memory lives, how bytes move, how math runs.
 *
 * A backend is a versioned const table of function pointers (moe_backend_ops)
 * plus an opaque instance (moe_backend).  This header is its contract: every
 * backend (cpu, cuda, and any later one) must behave as written here, and
 * tests/test_backend_conformance.c holds each compiled-in backend to it.
 *
 * The model.  A backend has device memory (device_alloc) and host memory
 * (host_alloc, or host ranges pinned with host_register), and two streams
 * (three since ABI 1.7, whose host stream runs host jobs: host_run below):
 *   - the compute stream runs every math op, upload and download, in the
 *     order they were issued;
 *   - the copy stream runs copy_h2d_async copies (and copy_wait markers) in
 *     the order they were issued (since ABI 1.8 an urgent copy overtakes
 *     them at a chunk boundary, and a copy can be cancelled: copy_h2d_ex).
 * Nothing orders one stream against the other except events: a copy
 * signals its event when its last byte has landed (copy_h2d_async), compute
 * records an event when all compute issued so far has finished
 * (compute_record), and either stream can be told to wait for an event
 * (compute_wait, copy_wait).  A wait is for the event's most recent record
 * (or signalling copy) issued before the wait; later records do not count.
 * An event never recorded is complete.  This is CUDA's stream/event model;
 * a synchronous backend (cpu) may satisfy it by blocking, since only the
 * order of effects is promised, never that a call returns early.
 *
 * What blocks the host: download (until the bytes are in host memory, after
 * all earlier compute), upload (until the host buffer may be reused),
 * event_sync (until the event is complete), synchronize (until both
 * streams are idle), and event_destroy never (see there).  Math calls and
 * copy_h2d_async may return before their work is done.  A backend that
 * feeds its copies from the host (cuda with MOE_CUDA_OVERTAKE=1, ABI 1.8)
 * also blocks compute_wait, compute_record and host_run naming an event
 * that queued copies signal, until the last of those copies is issued to
 * the device (not until it has landed); so an event that a copy held
 * behind a host job signals must not be recorded elsewhere before the job
 * may return.
 *
 * Errors: a method that returns moe_status records the first failure in
 * err (with file:line, see status.h) and returns its code; no method exits
 * or prints.  Methods returning void or a value cannot fail.
 *
 * Data: activations are f32.  Weights are moe_weight views in their storage
 * dtype (f32, f16, bf16).  All pointers handed to math ops are device
 * memory, already allocated by the caller with room for what the op
 * writes.  Any m or n of 0 is valid and does nothing.
 *
 * Numerics: f32 weights give f32 results matching a plain f32
 * implementation to within accumulation order (relative 1e-5 of the row's
 * magnitude).  For f16/bf16 weights a backend may round the activations to
 * the weight's dtype before the product (cuda does, cublasGemmEx takes one
 * input type); the result then differs from the f32-activation reference
 * (cpu) by up to 2^-11 (f16) or 2^-8 (bf16) of sum |x_i| |w_i| per output.
 * Rounding saturates: an activation past the 16-bit format's largest
 * finite value (65504 for f16) becomes that value, never infinity, so a
 * finite input gives a finite output (the bound above then does not hold
 * for that row: the result is the product of the saturated values).
 * Each backend is deterministic: the same inputs give the same bits.
 *
 * Versions: abi_version is the major version; a table of another major
 * version is refused.  Fields are only ever appended: a table whose
 * struct_size is smaller than this header's (built against an older
 * header, at least MOE_BACKEND_SIZE_1_0) is accepted and the fields it
 * lacks read as absent; moe_device_open copies every table into a
 * full-size one, so nothing reads past an older table's end.  Since ABI
 * 1.6 a table also says its minor version (abi_minor): what an argument
 * struct's new values mean cannot be told from the table's size.
 *
 * Legacy ops.  rope, attention and router_topk are the first forms of
 * rope_ex, attention_ex and router_topk_ex.  They are written once, as
 * adapters in the engine (moe_backend_rope, moe_backend_attention,
 * moe_backend_router_topk below), over the _ex methods; a backend built
 * against ABI 1.6 implements the _ex methods only and leaves the legacy
 * ones NULL.  A table of ABI 1.0 .. 1.5 may have only the legacy methods:
 * the adapters then call them.  Callers never call the legacy methods
 * directly.  RoPE frequencies: for scaled RoPE (YaRN, DeepSeek's) the
 * engine computes the table once on the host (moe_config_rope_freqs: f32,
 * as transformers computes inv_freq), uploads it and passes it to rope_ex;
 * for plain RoPE it passes none and rope_ex computes 1 / theta^(2i /
 * rot_dim) itself (since 1.6, moe_rope_ex.theta), so plain-RoPE models need
 * no device table (their memory is what it was before 1.6). */
#ifndef MOE_BACKEND_H
#define MOE_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe/dtype.h"
#include "moe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_BACKEND_ABI 1
/* The minor version of this header (moe_backend_ops.abi_minor). */
#define MOE_BACKEND_ABI_MINOR 8

typedef struct moe_backend moe_backend; /* a backend instance */
typedef struct moe_event moe_event;     /* completion of a copy or of compute */

/* A weight matrix in device memory: rows x cols, row-major, in dtype.  A
 * vector is a 1 x n matrix.  data NULL means "absent" (e.g. no bias). */
typedef struct moe_weight {
  const void *data;
  moe_dtype dtype;
  size_t rows, cols;
} moe_weight;

typedef struct moe_backend_options {
  int threads;           /* math threads (cpu: OpenBLAS threads); 0 = default */
  int device_index;      /* cuda: which GPU */
  double link_gbps;      /* cap on an emulated host-to-device link in GB/s (1e9
                            bytes/s), 0 = none; only backends with
                            MOE_BACKEND_CAP_LINK_CAP accept a nonzero cap */
  size_t device_budget;  /* device-memory budget in bytes, 0 = device_capacity */
  /* modeled backends (MOE_BACKEND_CAP_MODELED) only: */
  const char *hardware;  /* hardware profile file (cost.h) the times are modeled on */
  const char *routing;   /* routing source: "uniform" (default), "zipf:S", "correlated:P",
                            or "zipf:S,correlated:P" (sim/README.md) */
  uint64_t seed;         /* seed of the routing source */
} moe_backend_options;

/* Attention over a KV cache.  n_seq sequences each bring n_new tokens at
 * positions pos0 .. pos0 + n_new - 1 (causal).  Cache layout:
 * [n_seq][n_kv_heads][max_seq][head_dim]. */
typedef struct moe_attn_shape {
  int n_seq, n_new, pos0, max_seq;
  int n_heads, n_kv_heads, head_dim;
} moe_attn_shape;

/* Attention in the general form encoder-decoder models need (since ABI
 * 1.2).  n_seq sequences, each with n_q queries at positions q_pos0 ..
 * q_pos0 + n_q - 1 (rows of q and out: [n_seq * n_q, n_heads * head_dim]),
 * attend over keys at cache positions 0 .. n_keys - 1 (cache layout as
 * moe_attn_shape: [n_seq][n_kv_heads][max_seq][head_dim]).  causal: the
 * query at position p sees keys j <= p only.  score(j) = scale * q.k_j,
 * plus, when rel_bias is given ([buckets, n_heads] in its dtype),
 * rel_bias[buckets[j - p + bucket_offset], h]; buckets are device int32,
 * indexed for every j - p the call can form.  Softmax over the visible
 * keys, then the weighted sum of v. */
typedef struct moe_attn_ex {
  int n_seq, n_q, q_pos0, n_keys, max_seq;
  int n_heads, n_kv_heads, head_dim;
  bool causal;
  float scale;
  const moe_weight *rel_bias; /* NULL or data NULL: no bias */
  const int32_t *buckets;
  int bucket_offset;
} moe_attn_ex;

/* Routing in the general form of DeepSeek-V2/V3 (router_topk_ex, since ABI
 * 1.3).  Per row of logits[m, n]:
 *   s[e] = softmax(logits)[e]            (scoring SOFTMAX), or
 *          sigmoid(logits[e])            (scoring SIGMOID), or
 *          softmax(z)[e], z = logits + choice_bias
 *                                        (scoring SOFTMAX_LOGITS, since ABI
 *                                        1.6: the legacy router_topk);
 *   c[e] = s[e] + choice_bias[e]         (the ranking score; no bias: s;
 *                                        SOFTMAX_LOGITS: c = z, so experts
 *                                        are ranked on the biased logits,
 *                                        never on rounded probabilities);
 *   with n_group > 1: the experts form n_group equal groups in index
 *   order; a group's value is the max of its c (GROUP_MAX) or the sum of
 *   its two largest c (GROUP_TOP2_SUM); the topk_group groups of largest
 *   value are kept (ties to the lower group), and c of every expert outside
 *   them becomes 0 (as transformers' masked_fill(0.0));
 *   idx = the k experts of largest c, ties to the lower index;
 *   w[j] = s[idx[j]], divided by (sum_j w + 1e-20) when renorm, then times
 *   scale.
 * Requirements (MOE_ERR_INVALID otherwise): 1 <= k <= n <= MOE_ROUTER_MAX_N;
 * with n_group > 1, n % n_group == 0, 1 <= topk_group <= n_group, k <=
 * topk_group * n / n_group, and groups of at least 2 for GROUP_TOP2_SUM;
 * SOFTMAX_LOGITS takes no groups (n_group 0 or 1).  A table before ABI 1.6
 * does not know SOFTMAX_LOGITS: moe_backend_router_topk never sends it
 * one. */
#define MOE_ROUTER_MAX_N 1024
typedef enum moe_router_scoring {
  MOE_SCORING_SOFTMAX = 0,
  MOE_SCORING_SIGMOID = 1,
  MOE_SCORING_SOFTMAX_LOGITS = 2 /* since ABI 1.6 */
} moe_router_scoring;
typedef enum moe_router_group_score { MOE_GROUP_MAX = 0, MOE_GROUP_TOP2_SUM = 1 } moe_router_group_score;
typedef struct moe_router_ex {
  int k;
  moe_router_scoring scoring;
  const moe_weight *choice_bias; /* 1 x n, or NULL / data NULL: none */
  int n_group, topk_group;       /* n_group 0 or 1: no group limit */
  moe_router_group_score group_score;
  bool renorm;
  float scale;
  /* since ABI 1.4: experts outside the kept groups rank below every kept
   * one (-inf, as DeepSeek-V3's masked_fill(-inf)) instead of at 0
   * (DeepSeek-V2's masked_fill(0.0)); the two differ only when a kept
   * expert's choice score is negative (sigmoid scores plus a negative
   * bias).  A table built against 1.3 leaves it false. */
  bool mask_neg_inf;
} moe_router_ex;

/* Rotary embedding in its general form (rope_ex, since ABI 1.4): on
 * x[m rows], row t's head h rotates the rot_dim elements starting at
 * x + t * row_stride + h * head_stride + offset, by angles pos[t] *
 * inv_freq[i] (inv_freq: rot_dim / 2 device floats, computed by the
 * caller: plain RoPE, YaRN, ...):
 *   pairs (i, i + rot_dim / 2) (rotate-half, Llama/Mixtral layout), or
 *   pairs (2i, 2i + 1) when interleaved (DeepSeek's layout; transformers
 *   de-interleaves them first, which permutes the output but leaves
 *   every dot product of two such vectors the same; here the pairs are
 *   rotated in place);
 * cos and sin are multiplied by attn_scale (YaRN's attention factor; 1
 * for plain RoPE).  The angle is the f32 product pos * inv_freq, as
 * transformers computes it.  rot_dim even, offset + rot_dim <=
 * head_stride when n_heads > 1.  inv_freq NULL (since 1.6): plain RoPE's
 * frequencies from theta (below). */
typedef struct moe_rope_ex {
  int n_heads;
  size_t row_stride, head_stride; /* floats */
  int offset, rot_dim;
  bool interleaved;
  const float *inv_freq;
  float attn_scale;
  /* since ABI 1.6: with inv_freq NULL the frequencies are plain RoPE's,
   * inv_freq[i] = 1 / theta^(2i / rot_dim) computed by the backend in f32
   * as transformers computes them (1.0f / powf(theta, (float)(2 i) /
   * (float)rot_dim)): plain RoPE needs no device table.  Read only when
   * inv_freq is NULL, so a caller built against 1.4 (which always gives a
   * table) never has it read. */
  float theta;
} moe_rope_ex;

/* Multi-head latent attention (mla_attention, since ABI 1.4; DeepSeek-V2/
 * V3).  The cache keeps per token the compressed latent c (kv_rank
 * floats, normed) and the shared rotated key k_pe (rope_dim floats):
 * ckv_cache [n_seq][max_seq][kv_rank], kpe_cache [n_seq][max_seq]
 * [rope_dim].  One call first writes the new tokens' rows (ckv
 * [n_seq * n_new, kv_rank], kpe [n_seq * n_new, rope_dim]) at positions
 * pos0 .. pos0 + n_new - 1, then computes for every query (q [n_seq *
 * n_new, n_heads * (nope_dim + rope_dim)], per head its no-position part
 * then its rotated part) and head h, over the keys j <= its position:
 *   k_j = [W_k,h c_j ; k_pe_j],  v_j = W_v,h c_j,
 *   out = softmax_j(scale * q . k_j) . v_j    (out [n_seq * n_new, n_heads * v_dim])
 * where kv_b ([n_heads * (nope_dim + v_dim), kv_rank], in its dtype)
 * holds per head W_k,h (nope_dim rows) then W_v,h (v_dim rows), as
 * transformers' kv_b_proj.  A backend may reassociate (absorb W_k,h into
 * the query and apply W_v,h after the weighted sum; the cpu backend does):
 * the result is the same to within f32 accumulation order. */
typedef struct moe_mla_shape {
  int n_seq, n_new, pos0, max_seq;
  int n_heads, nope_dim, rope_dim, v_dim, kv_rank;
  float scale;
} moe_mla_shape;

/* Checks r against n (the requirements above); MOE_OK or MOE_ERR_INVALID
 * with the reason. */
moe_status moe_router_ex_check(const moe_router_ex *r, int n, moe_error *err);

/* Check a rope_ex or mla_attention call's arguments (the requirements
 * above); MOE_OK or MOE_ERR_INVALID with the reason. */
moe_status moe_rope_ex_check(const moe_rope_ex *r, moe_error *err);
moe_status moe_mla_check(const moe_mla_shape *s, const moe_weight *kv_b, moe_error *err);

/* Element-wise operations (moe_backend_ops.unary, since ABI 1.2). */
typedef enum moe_unary_op {
  MOE_UNARY_RELU = 0, /* y = max(x, 0) */
  MOE_UNARY_SCALE = 1 /* y = alpha * x */
} moe_unary_op;

/* The link caps an emulating backend accepts (GB/s); 0 means uncapped. */
#define MOE_LINK_GBPS_MIN 0.001
#define MOE_LINK_GBPS_MAX 1e6

/* Capabilities (moe_backend_ops.caps, since ABI 1.1). */
#define MOE_BACKEND_CAP_LINK_CAP 1u  /* honours moe_backend_options.link_gbps */
#define MOE_BACKEND_CAP_PREFERRED 2u /* "auto" picks it when its probe finds a device */
/* A modeled backend (sim): no math, and copies move no bytes.  What it
 * promises instead: allocation, events and stream order as below; upload
 * and download move the bytes of small buffers (ids, routing: up to 16
 * MiB; larger uploads, weights, only take time); router_topk_ex
 * writes valid routing (k distinct experts in 0 .. n-1 per row, weights
 * summing to 1 when renorm) drawn from its routing source, ignoring the
 * logits; every other op writes nothing.  Its clock is modeled_seconds. */
#define MOE_BACKEND_CAP_MODELED 4u

/* What one job on the host stream costs (host_run, since ABI 1.7), for a
 * modeled backend, which runs no job: the FLOPs it does and the bytes of
 * host memory it reads, and the dtype of its weights (the host's matmul
 * rate depends on it). */
typedef struct moe_host_work {
  double flops, bytes;
  moe_dtype dtype;
} moe_host_work;

/* One device-to-host transfer of download_many. */
typedef struct moe_xfer {
  void *dst;       /* host */
  const void *src; /* device */
  size_t bytes;
} moe_xfer;

typedef struct moe_backend_ops {
  uint32_t abi_version; /* MOE_BACKEND_ABI at the time the table was built */
  uint32_t struct_size; /* sizeof(moe_backend_ops) of that build */
  const char *name;     /* unique, [a-z0-9-] */
  const char *summary;  /* one line */

  /* Creates an instance with its streams.  opt may be NULL (defaults).
   * MOE_ERR_NO_DEVICE when the device is absent, MOE_ERR_INVALID for an
   * option the backend cannot honour (e.g. a link cap without
   * MOE_BACKEND_CAP_LINK_CAP). */
  moe_status (*create)(const moe_backend_options *opt, moe_backend **out, moe_error *err);
  /* Waits for every stream, then frees the instance.  Device memory and
   * events still live are the caller's bug, but must not crash. */
  void (*destroy)(moe_backend *be);
  /* A one-line description of the instance (e.g. "cpu (OpenBLAS, 2 threads; ...)"),
   * valid until destroy. */
  const char *(*describe)(moe_backend *be);

  /* ---- memory */
  /* bytes > 0.  Device memory, aligned to at least 64 bytes, contents
   * undefined.  MOE_ERR_OOM when the device has no room. */
  moe_status (*device_alloc)(moe_backend *be, size_t bytes, void **ptr, moe_error *err);
  /* Frees after all work issued so far on either stream that uses ptr. */
  void (*device_free)(moe_backend *be, void *ptr);
  /* Host memory usable as the source of asynchronous copies (pinned). */
  moe_status (*host_alloc)(moe_backend *be, size_t bytes, void **ptr, moe_error *err);
  void (*host_free)(moe_backend *be, void *ptr);

  /* ---- copies and ordering */
  moe_status (*event_create)(moe_backend *be, moe_event **ev, moe_error *err);
  /* May be called while copies that signal ev are still queued: it does
   * not block, and the backend keeps what those copies need until they
   * complete.  ev must not be used again. */
  void (*event_destroy)(moe_backend *be, moe_event *ev);
  /* Enqueues a host-to-device copy on the copy stream; ev (may be NULL) is
   * signalled when its last byte has landed.  src must stay valid and
   * unchanged until then.  Returns at once. */
  moe_status (*copy_h2d_async)(moe_backend *be, void *dst, const void *src, size_t bytes,
                               moe_event *ev, moe_error *err);
  /* Compute issued after this call runs after ev's most recent signalling
   * copy or record issued before this call.  May block the host (cpu,
   * and cuda while the copy is still being fed) or not (cuda otherwise).
   * ev NULL: no-op. */
  moe_status (*compute_wait)(moe_backend *be, moe_event *ev, moe_error *err);
  /* Host blocks until ev's most recent signalling copy or record is done. */
  moe_status (*event_sync)(moe_backend *be, moe_event *ev, moe_error *err);
  /* Host-to-device copy ordered on the compute stream (small inputs):
   * compute issued later sees the bytes; returns once src may be reused. */
  moe_status (*upload)(moe_backend *be, void *dst, const void *src, size_t bytes, moe_error *err);
  /* Device-to-host copy after all earlier compute; returns when the bytes
   * are in dst. */
  moe_status (*download)(moe_backend *be, void *dst, const void *src, size_t bytes, moe_error *err);
  /* Host blocks until every stream is idle; reports a pending device
   * error. */
  moe_status (*synchronize)(moe_backend *be, moe_error *err);
  /* Records ev on the compute stream: complete once all compute issued so
   * far has finished (the store records one before a slot may be
   * overwritten). */
  moe_status (*compute_record)(moe_backend *be, moe_event *ev, moe_error *err);
  /* Copies issued after this call start after ev's most recent record or
   * signalling copy issued before it.  ev NULL: no-op. */
  moe_status (*copy_wait)(moe_backend *be, moe_event *ev, moe_error *err);
  /* Non-blocking: 1 when ev's most recent record or signalling copy is
   * done (or ev was never used), else 0.  A hint only: the engine always
   * orders compute after a copy with compute_wait, never by this answer. */
  int (*event_done)(moe_backend *be, moe_event *ev);
  /* Device memory available to this instance in bytes (the default
   * budget): physical memory on cpu, free memory at create on cuda. */
  size_t (*device_capacity)(moe_backend *be);

  /* ---- math on the compute stream (all pointers device memory).  Every
   * method here is required, except the three legacy ones (rope, attention,
   * router_topk): validation asks for the legacy method or its _ex form. */
  /* y[m, w.rows] = x[m, w.cols] . w^T (+ bias[w.rows] when bias.data).
   * y must not alias x. */
  moe_status (*matmul)(moe_backend *be, float *y, const float *x, size_t m, const moe_weight *w,
                       const moe_weight *bias, moe_error *err);
  /* y[m, n] = x / sqrt(mean(x^2) + eps) * g, row-wise; g is 1 x n (n = g.cols).
   * y may alias x. */
  moe_status (*rmsnorm)(moe_backend *be, float *y, const float *x, size_t m, const moe_weight *g,
                        float eps, moe_error *err);
  /* Legacy: may be NULL when the table has rope_ex (the in-tree backends,
   * ABI 1.6, leave it NULL); moe_backend_rope is the only caller.  Rotary
   * embedding in place on x[m, n_heads * head_dim], rotate-half pairing
   * (i, i + head_dim/2), angle pos * theta^(-2i/head_dim); pos[m] are
   * device int32 positions; head_dim even. */
  moe_status (*rope)(moe_backend *be, float *x, size_t m, const int32_t *pos, int n_heads,
                     int head_dim, float theta, moe_error *err);
  /* Writes k, v rows ([n_seq * n_new, n_kv_heads * head_dim]) into the
   * caches at positions pos0 .. pos0 + n_new - 1. */
  moe_status (*kv_store)(moe_backend *be, float *k_cache, float *v_cache, const float *k,
                         const float *v, const moe_attn_shape *s, moe_error *err);
  /* Legacy: may be NULL when the table has attention_ex (the in-tree
   * backends, ABI 1.6, leave it NULL); moe_backend_attention is the only
   * caller.
   * out[n_seq * n_new, n_heads * head_dim] = softmax(q k^T / sqrt(head_dim)) v,
   * causal over cache positions 0 .. pos; query head h reads kv head
   * h / (n_heads / n_kv_heads).  Any max_seq the caches were sized for is
   * supported (MOE_ERR_UNSUPPORTED names the limit where one exists). */
  moe_status (*attention)(moe_backend *be, float *out, const float *q, const float *k_cache,
                          const float *v_cache, const moe_attn_shape *s, moe_error *err);
  /* Legacy: may be NULL in a table of ABI 1.6 or later that has
   * router_topk_ex (the in-tree backends leave it NULL);
   * moe_backend_router_topk is the only caller.  router_topk_ex with
   * scoring SOFTMAX_LOGITS, choice_bias = bias, no groups, scale 1:
   * per row of logits[m, n], with bias (1 x n, may be absent) added: top-k
   * ranked on logit + bias, ties to the lower index (never on rounded
   * probabilities, so every backend picks the same experts); weights are
   * the softmax probabilities of the chosen ones, renormalised to sum 1
   * when renorm.  idx[m, k] int32 (k distinct experts per row), wts[m, k]. */
  moe_status (*router_topk)(moe_backend *be, int32_t *idx, float *wts, const float *logits,
                            size_t m, int n, int k, bool renorm, const moe_weight *bias,
                            moe_error *err);
  /* y[i] = silu(gate[i]) * up[i] for n elements (y may alias gate). */
  moe_status (*swiglu)(moe_backend *be, float *y, const float *gate, const float *up, size_t n,
                       moe_error *err);
  /* y[i] += x[i] for n elements. */
  moe_status (*add)(moe_backend *be, float *y, const float *x, size_t n, moe_error *err);
  /* y[m, dim] = table[ids[i], :] converted to f32; ids are device int32 in
   * 0 .. table.rows - 1 (the engine checks them on the host). */
  moe_status (*embed)(moe_backend *be, float *y, const moe_weight *table, const int32_t *ids,
                      size_t m, moe_error *err);
  /* dst[i, :] = src[rows[i], :] for i < n (rows on device; may repeat). */
  moe_status (*gather_rows)(moe_backend *be, float *dst, const float *src, const int32_t *rows,
                            size_t n, size_t dim, moe_error *err);
  /* dst[rows[i], :] += scale[i * scale_stride] * src[i, :]; scale_sigmoid
   * applies a logistic to the scale first (the shared-expert gate).  The
   * rows of one call must be distinct (a token picks an expert once); the
   * result is then deterministic. */
  moe_status (*scatter_add_rows)(moe_backend *be, float *dst, const float *src,
                                 const int32_t *rows, const float *scale, size_t scale_stride,
                                 bool scale_sigmoid, size_t n, size_t dim, moe_error *err);

  /* ---- optional (may be NULL) */
  /* Device scratch the backend needs for matmuls of up to max_rows x
   * max_cols activations; the engine allocates it through its accounting
   * front and hands it over with set_workspace (NULL, 0 takes it back). */
  size_t (*workspace_bytes)(moe_backend *be, size_t max_rows, size_t max_cols);
  void (*set_workspace)(moe_backend *be, void *ptr, size_t bytes);
  /* Pins an existing host range for asynchronous copies (and unpins it).
   * Pinning a range that is already pinned is MOE_OK (shared: pins are
   * counted, the last unregister unpins).  A failure to pin is reported,
   * and the caller may go on with pageable memory. */
  moe_status (*host_register)(moe_backend *be, void *ptr, size_t bytes, moe_error *err);
  void (*host_unregister)(moe_backend *be, void *ptr);
  /* Device bytes in use as the driver sees them (cross-check of the
   * engine's accounting), or 0 when unknown. */
  size_t (*device_used)(moe_backend *be);

  /* ---- since ABI 1.1 (absent in older tables) */
  uint32_t caps; /* MOE_BACKEND_CAP_* */
  /* Without an instance: MOE_OK and a one-line description of the device
   * in desc when one can be used, MOE_ERR_NO_DEVICE (with the reason)
   * when not.  NULL: the device is always there. */
  moe_status (*probe)(char *desc, size_t cap, moe_error *err);
  /* A short, stable name of the device for result rows and keys (e.g.
   * "NVIDIA H200", "cpu: AMD EPYC 7B13").  NULL: the backend's name. */
  const char *(*device_name)(moe_backend *be);
  /* Seconds the compute stream has stood waiting on events since create,
   * as the device measured it; waits to finish the timings it needs.
   * NULL: compute_wait blocks the host for the stall, and the engine times
   * it with the host clock. */
  double (*stall_seconds)(moe_backend *be);
  /* Calls fn(ctx, bytes, t0, t1) for every host-to-device copy once its
   * last byte has landed, with the host-clock (moe_clock_s) times it
   * started and ended, in copy-stream order, from any thread; fn NULL
   * removes the observer.  NULL: copies cannot be observed (op traces
   * then show when copies were issued only). */
  void (*set_copy_observer)(moe_backend *be, void (*fn)(void *ctx, size_t bytes, double t0, double t1),
                            void *ctx);

  /* ---- since ABI 1.2 (absent in older tables): the ops of encoder-decoder
   * models; the engine refuses such a model on a backend without them. */
  /* See moe_attn_ex.  out must not alias q or the caches. */
  moe_status (*attention_ex)(moe_backend *be, float *out, const float *q, const float *k_cache,
                             const float *v_cache, const moe_attn_ex *a, moe_error *err);
  /* y[i] = op(x[i]) for n elements (y may alias x). */
  moe_status (*unary)(moe_backend *be, float *y, const float *x, size_t n, moe_unary_op op,
                      float alpha, moe_error *err);

  /* ---- since ABI 1.3 (absent in older tables) */
  /* The time on the backend's own clock, in seconds since create: a
   * modeled backend's modeled time (when the host would see the results of
   * everything issued so far).  When present, the engine times runs with it
   * instead of the host clock.  NULL: the host clock is the time. */
  double (*modeled_seconds)(moe_backend *be);
  /* What the next ops belong to: MoE layer (-1: none), expert (-1: none;
   * -2: the routing computed next is a pre-gate's prediction of that
   * layer's) and the engine's forward-pass counter.  Only a hint (a
   * modeled backend's routing source keys its draws on it); NULL: not
   * wanted. */
  void (*set_context)(moe_backend *be, int layer, int expert, unsigned long long step);
  /* See moe_router_ex: idx[m, k] int32, wts[m, k].  NULL: the backend has
   * no DeepSeek-style routing (the engine refuses such a model on it). */
  moe_status (*router_topk_ex)(moe_backend *be, int32_t *idx, float *wts, const float *logits,
                               size_t m, int n, const moe_router_ex *r, moe_error *err);

  /* ---- since ABI 1.4 (absent in older tables): the ops of DeepSeek-V2/V3
   * models (the engine refuses such a model on a backend without them) and
   * of scaled RoPE. */
  /* See moe_rope_ex.  In place on x. */
  moe_status (*rope_ex)(moe_backend *be, float *x, size_t m, const int32_t *pos,
                        const moe_rope_ex *r, moe_error *err);
  /* See moe_mla_shape.  out must not alias any other argument. */
  moe_status (*mla_attention)(moe_backend *be, float *out, const float *q, float *ckv_cache,
                              float *kpe_cache, const float *ckv, const float *kpe,
                              const moe_weight *kv_b, const moe_mla_shape *s, moe_error *err);

  /* ---- since ABI 1.5 (absent in older tables) */
  /* n downloads (n >= 0; zero-byte ones allowed) with one wait of the
   * host: the same bytes, in the same compute-stream position, as n calls
   * of download in order, but the host waits once (a GPU backend queues
   * every copy, then synchronises once).  The engine uses it for a block's
   * routing (indices and weights together).  NULL: the engine calls
   * download n times. */
  moe_status (*download_many)(moe_backend *be, const moe_xfer *x, int n, moe_error *err);
  /* Greedy choice on the device: idx[r] = the index of the largest of
   * x[r, 0 .. n-1] (n >= 1), ties to the lowest index, exactly as the
   * sequential scan best = 0; for i: if x[i] > x[best] then best = i
   * (moe_argmax): NaN is never chosen, except at index 0 where nothing
   * replaces it.  The engine uses it for the decode steps whose logits
   * the caller does not keep, downloading m ids instead of m x vocab
   * logits.  NULL: the engine downloads the logits and scans them. */
  moe_status (*argmax_rows)(moe_backend *be, int32_t *idx, const float *x, size_t m, int n,
                            moe_error *err);

  /* ---- since ABI 1.6 (absent in older tables) */
  /* MOE_BACKEND_ABI_MINOR at the time the table was built (at least 6 in a
   * table that has this field).  What 1.6 changed: the legacy rope,
   * attention and router_topk became optional next to their _ex forms
   * (the engine's adapters translate), and router_topk_ex takes scoring
   * SOFTMAX_LOGITS, so that one method serves both routers. */
  uint32_t abi_minor;

  /* ---- since ABI 1.7 (absent in older tables): the host stream, where
   * experts that live in host memory are computed (the host-compute
   * policies).  A third stream next to compute and copy: jobs run in the
   * order issued, each after wait_ev's most recent record or signalling
   * op issued before the call (NULL: no wait), and done_ev (may be NULL)
   * is signalled when the job has returned; compute_wait, copy_wait and
   * event_sync on done_ev then order the other streams and the host after
   * it, as for a copy's event.  fn(ctx) runs on a thread of the
   * backend's (never the caller's, so the call returns at once, but for
   * the copy feeding described at the top); it must
   * not call the backend, and everything it reads and writes is host
   * memory.  synchronize waits for the host stream too.  A modeled
   * backend (MOE_BACKEND_CAP_MODELED) calls no fn: it charges `work` on
   * its host stream at its profile's host rates (MOE_ERR_UNSUPPORTED when
   * its profile has no host section).  work may be NULL on a backend that
   * runs the job.  NULL method: the backend has no host stream (the
   * engine refuses a host-compute policy on it). */
  moe_status (*host_run)(moe_backend *be, void (*fn)(void *ctx), void *ctx,
                         const moe_host_work *work, moe_event *wait_ev, moe_event *done_ev,
                         moe_error *err);

  /* ---- since ABI 1.8 (absent in older tables): copies that a more urgent
   * one can overtake, and that can be cancelled.  The copy stream moves
   * bytes a chunk at a time; between two chunks it takes the most urgent
   * work queued: an urgent copy (copy_h2d_ex, copy_urge) waits for at most
   * the one chunk in progress, then runs before every normal copy still
   * queued, whatever their order of issue.  Copies of the same urgency
   * run in the order issued (copy_h2d_async copies and copy_wait markers
   * are normal ones).  The four methods come together or not at all;
   * NULL: every copy runs in issue order, none can be cancelled. */
  /* The chunk in bytes: what an urgent copy may wait behind (on a device
   * that keeps a few chunks in flight, each of them).  0: this instance
   * does not overtake (the cuda backend unless MOE_CUDA_OVERTAKE=1): its
   * copies run in issue order, copy_h2d_ex ignores urgent, copy_cancel
   * and copy_urge answer 0; a caller treats it as a backend without the
   * methods.  Constant for the instance's life. */
  size_t (*copy_chunk)(moe_backend *be);
  /* Enqueues a host-to-device copy, as copy_h2d_async, that starts after
   * wait_ev's most recent record or signalling op issued before this call
   * (NULL: no wait; a copy_wait marker orders normal copies only, so an
   * urgent copy names its own wait here).  urgent: 1 overtakes the normal
   * copies queued, 0 is a normal copy. */
  moe_status (*copy_h2d_ex)(moe_backend *be, void *dst, const void *src, size_t bytes,
                            moe_event *wait_ev, moe_event *ev, int urgent, moe_error *err);
  /* Cancels every pending copy that signals ev: the chunks they have not
   * started are dropped, and ev is signalled once a chunk in progress has
   * landed, without waiting for the copies and waits queued before them.  1: at least one chunk was dropped, so their destinations
   * hold undefined bytes; 0: nothing was dropped (no such copy is
   * pending, or only last chunks are already moving): the destinations
   * hold the copies once ev is signalled.  Never blocks. */
  int (*copy_cancel)(moe_backend *be, moe_event *ev);
  /* Makes the pending copy most recently issued that signals ev urgent
   * (its wait, and the bytes already moved, kept).  1 when such a copy
   * was pending, else 0.  Never blocks. */
  int (*copy_urge)(moe_backend *be, moe_event *ev);
  /* Optional (NULL: 0), apart from the four above: 1 when this instance's
   * copies only take the link's time and move no bytes (an emulated
   * link that must not load the memory compute reads, as a DMA engine
   * does not load a GPU's); the caller then reads a copy's source, which
   * must be memory compute can read, where it would read the destination.
   * Constant for the instance's life. */
  int (*copy_timed)(moe_backend *be);
} moe_backend_ops;

/* The size of a table built against the ABI 1.8 header: everything up to
 * and including copy_timed. */
#define MOE_BACKEND_SIZE_1_8 (offsetof(moe_backend_ops, copy_timed) + sizeof(void (*)(void)))

/* The size of a table built against the ABI 1.7 header: everything up to
 * and including host_run. */
#define MOE_BACKEND_SIZE_1_7 (offsetof(moe_backend_ops, host_run) + sizeof(void (*)(void)))

/* The size of a table built against the ABI 1.6 header: everything up to
 * and including abi_minor. */
#define MOE_BACKEND_SIZE_1_6 (offsetof(moe_backend_ops, abi_minor) + sizeof(uint32_t))

/* The size of a table built against the ABI 1.5 header: everything up to
 * and including argmax_rows. */
#define MOE_BACKEND_SIZE_1_5 (offsetof(moe_backend_ops, argmax_rows) + sizeof(void (*)(void)))

/* The size of a table built against the ABI 1.4 header: everything up to
 * and including mla_attention. */
#define MOE_BACKEND_SIZE_1_4 (offsetof(moe_backend_ops, mla_attention) + sizeof(void (*)(void)))

/* The size of a table built against the ABI 1.3 header: everything up to
 * and including router_topk_ex. */
#define MOE_BACKEND_SIZE_1_3 (offsetof(moe_backend_ops, router_topk_ex) + sizeof(void (*)(void)))

/* The size of a table built against the ABI 1.2 header: everything up to
 * and including unary. */
#define MOE_BACKEND_SIZE_1_2 (offsetof(moe_backend_ops, unary) + sizeof(void (*)(void)))

/* The size of a table built against the ABI 1.1 header: everything up to
 * and including set_copy_observer. */
#define MOE_BACKEND_SIZE_1_1 \
  (offsetof(moe_backend_ops, set_copy_observer) + sizeof(void (*)(void)))

/* The size of a table built against the first header of major version 1:
 * everything up to and including device_used. */
#define MOE_BACKEND_SIZE_1_0 (offsetof(moe_backend_ops, device_used) + sizeof(void (*)(void)))

/* ---- registry of built-in backends */

/* Number of compiled-in backends and the i-th table. */
size_t moe_backend_count(void);
const moe_backend_ops *moe_backend_at(size_t i);
/* Looks a backend up by name; NULL when unknown or not compiled in. */
const moe_backend_ops *moe_backend_find(const char *name);
/* Checks a table: ABI version, struct size, required methods present
 * (for each legacy op, the legacy method or its _ex form: router_topk_ex
 * stands in for router_topk only in a table of ABI 1.6 or later). */
moe_status moe_backend_validate(const moe_backend_ops *ops, moe_error *err);
/* Copies a validated table into *out at this header's full size: fields
 * past ops->struct_size are zero (absent). */
void moe_backend_normalize(const moe_backend_ops *ops, moe_backend_ops *out);
/* The backend "auto" means: the first compiled-in backend with
 * MOE_BACKEND_CAP_PREFERRED whose probe finds a device, else "cpu". */
const moe_backend_ops *moe_backend_auto(void);
/* The device name for result rows: ops->device_name or the backend name. */
const char *moe_backend_device_name(const moe_backend_ops *ops, moe_backend *be);
/* The minor ABI version of a (normalized or raw, validated) table:
 * abi_minor where the table has it, else what its size tells (0 .. 5). */
unsigned moe_backend_abi_minor(const moe_backend_ops *ops);

/* ---- the legacy ops, written once over the _ex methods */

/* The legacy rope (see moe_backend_ops.rope) through rope_ex when the table
 * has it, else through its rope.  inv_freq: a device table of the
 * head_dim / 2 frequencies 1 / theta^(2i / head_dim) in f32 (as
 * moe_config_rope_freqs computes them), or NULL: rope_ex computes them
 * from theta (a 1.6 table), or, for a 1.4/1.5 table, its legacy rope runs
 * (or, without one, the adapter uploads a table for the call: device
 * memory outside any accounting, freed before it returns).  rope_ex gets
 * attn_scale 1, so the result is the legacy one bit for bit.
 * MOE_ERR_INVALID for an odd or non-positive head_dim or theta <= 0. */
moe_status moe_backend_rope(const moe_backend_ops *ops, moe_backend *be, float *x, size_t m,
                            const int32_t *pos, int n_heads, int head_dim, float theta,
                            const float *inv_freq, moe_error *err);
/* The legacy attention (see moe_backend_ops.attention) as attention_ex:
 * n_q = n_new, q_pos0 = pos0, n_keys = pos0 + n_new, causal, scale
 * 1 / sqrtf(head_dim), no bias; through the table's attention when it has
 * no attention_ex. */
moe_status moe_backend_attention(const moe_backend_ops *ops, moe_backend *be, float *out,
                                 const float *q, const float *k_cache, const float *v_cache,
                                 const moe_attn_shape *s, moe_error *err);
/* The legacy router (see moe_backend_ops.router_topk) as router_topk_ex
 * with scoring SOFTMAX_LOGITS when the table is of ABI 1.6 or later and
 * has it, else through its router_topk. */
moe_status moe_backend_router_topk(const moe_backend_ops *ops, moe_backend *be, int32_t *idx,
                                   float *wts, const float *logits, size_t m, int n, int k,
                                   bool renorm, const moe_weight *bias, moe_error *err);

/* The optional ops, for moe_backend_supports: what a model family lists as
 * required (a bit per op, MOE_OP_BIT) and moe_engine_create checks. */
typedef enum moe_backend_op {
  MOE_OP_ATTENTION_EX = 0, /* ABI 1.2 */
  MOE_OP_UNARY,            /* 1.2 */
  MOE_OP_ROUTER_TOPK_EX,   /* 1.3 */
  MOE_OP_ROPE_EX,          /* 1.4 */
  MOE_OP_MLA_ATTENTION,    /* 1.4 */
  MOE_OP_DOWNLOAD_MANY,    /* 1.5 */
  MOE_OP_ARGMAX_ROWS,      /* 1.5 */
  MOE_OP_HOST_REGISTER,    /* 1.0, optional */
  MOE_OP_HOST_RUN,         /* 1.7 */
  MOE_OP_COPY_URGENT,      /* 1.8: copy_chunk, copy_h2d_ex, copy_cancel, copy_urge */
  MOE_OP_COUNT
} moe_backend_op;
#define MOE_OP_BIT(op) (1u << (unsigned)(op))

/* Whether a (normalized) table has op: its method is present. */
bool moe_backend_supports(const moe_backend_ops *ops, moe_backend_op op);
/* "attention_ex", "unary", ...: the method's name; "?" out of range. */
const char *moe_backend_op_name(moe_backend_op op);
/* MOE_OK when ops has every op in the mask, else MOE_ERR_UNSUPPORTED naming
 * the backend, the first missing op, the ABI version it arrived in, and
 * `who` (what needs it, e.g. "the deepseek_v3 family"). */
moe_status moe_backend_require(const moe_backend_ops *ops, unsigned mask, const char *who,
                               moe_error *err);

/* Categories of device memory, for accounting. */
typedef enum moe_mem_category {
  MOE_MEM_DENSE = 0,   /* non-expert weights */
  MOE_MEM_EXPERTS,     /* expert slots */
  MOE_MEM_KV,          /* KV cache */
  MOE_MEM_ACTIVATIONS, /* activation buffers */
  MOE_MEM_WORKSPACE,   /* index and scratch buffers */
  MOE_MEM_CATEGORIES
} moe_mem_category;

/* "dense", "expert_slots", "kv_cache", "activations", "workspace". */
const char *moe_mem_category_name(moe_mem_category c);

typedef struct moe_mem_stats {
  size_t budget;                          /* hard limit, bytes */
  size_t current[MOE_MEM_CATEGORIES];
  size_t peak[MOE_MEM_CATEGORIES];        /* each category's own peak */
  size_t current_total;
  size_t peak_total;                      /* peak of the sum */
  size_t at_peak[MOE_MEM_CATEGORIES];     /* breakdown when peak_total was reached */
  unsigned long allocations;
} moe_mem_stats;

/* A created backend: its table, instance and device-memory accounting.
 * Every device allocation of the engine goes through moe_device_alloc.
 * Opaque here: the engine and the tests see its fields through
 * moe/device.h; everything else (the harness, plugins) uses the handle
 * functions and accessors below. */
typedef struct moe_device moe_device;

/* Validates ops and creates an instance on the heap; the budget is
 * opt->device_budget or, when 0, the device's capacity.  name "auto":
 * moe_backend_auto().  *out is NULL on failure. */
moe_status moe_device_create(moe_device **out, const char *name, const moe_backend_options *opt,
                             moe_error *err);
/* Same with a table that need not be registered. */
moe_status moe_device_create_ops(moe_device **out, const moe_backend_ops *ops,
                                 const moe_backend_options *opt, moe_error *err);
/* Closes (see moe_device_close) and frees; NULL is a no-op. */
void moe_device_destroy(moe_device *dev);

/* The normalized backend table, the instance, the memory accounting. */
const moe_backend_ops *moe_device_ops(const moe_device *dev);
moe_backend *moe_device_backend(const moe_device *dev);
const moe_mem_stats *moe_device_mem(const moe_device *dev);
/* moe_backend_device_name of the device's table and instance. */
const char *moe_device_name(const moe_device *dev);

/* Allocates device memory under the budget.  Past the budget: MOE_ERR_OOM
 * with bytes needed, bytes in use and the budget in the message; `what`
 * names the buffer. */
moe_status moe_device_alloc(moe_device *dev, moe_mem_category cat, size_t bytes, const char *what,
                            void **ptr, moe_error *err);
/* Frees ptr (NULL is a no-op). */
void moe_device_free(moe_device *dev, void *ptr);
/* Restarts the peak counters from the current usage. */
void moe_device_reset_peak(moe_device *dev);

/* n downloads with one wait of the host where the backend has
 * download_many, else n download calls. */
moe_status moe_device_download_many(moe_device *dev, const moe_xfer *x, int n, moe_error *err);

#ifdef __cplusplus
}
#endif

#endif
