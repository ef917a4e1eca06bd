/* Models (weights in host memory) and engines (a model placed on a device).
 *
 * A moe_model owns the configuration and every weight in its storage dtype,
 * in two host slabs: dense weights, and experts laid out
 * [moe_layer][expert][gate | up | down] so that one expert is one contiguous
 * block of moe_config_expert_bytes() bytes (one copy moves it).
 *
 * A moe_engine puts a model on a backend: dense weights in device memory,
 * experts reached through the expert store, a KV cache, activation buffers.
 * It runs prefill and greedy decode. */
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "moe/backend.h"
#include "moe/config.h"
#include "moe/dtype.h"
#include "moe/status.h"

typedef struct moe_model moe_model;

typedef struct moe_synth_options {
  moe_dtype dtype;     /* storage dtype */
  uint64_t seed;
  double routing_skew; /* 0: none; s > 0: per-layer router bias -s*ln(rank),
                          i.e. a Zipf(s) prior on expert popularity */
  bool pregate;        /* also draw pre-gate weights, as a model fine-tuned
                          for pre-gating would carry */
} moe_synth_options;

/* Builds a model from a configuration and a seed alone.  Same inputs give
 * bit-identical weights on every run and platform.  Weights are uniform with
 * the variance of a scaled normal init (1/fan_in; residual-branch outputs
 * further scaled by 1/sqrt(2 * layers)) so activations stay O(1) through
 * many layers. */
moe_status moe_model_synthetic(moe_model **out, const moe_config *cfg,
                               const moe_synth_options *opt, moe_error *err);

/* The layout a model of cfg would have, without allocating its weights:
 * bytes of the dense slab and of all experts.  MOE_ERR_INVALID when a
 * tensor size or their sum overflows (a config whose dimensions are each
 * in range can still describe more bytes than memory can address). */
moe_status moe_model_plan_layout(const moe_config *cfg, moe_dtype dtype, size_t *dense_bytes,
                                 size_t *experts_bytes, moe_error *err);

/* A model's tensor table and layout without its weights, for planning
 * models larger than this machine's memory: only moe_model_config,
 * moe_model_dtype, the moe_model_*_bytes sizes, moe_engine_plan_slots,
 * moe_engine_plan_memory and moe_model_free may be used with it. */
moe_status moe_model_plan_only(moe_model **out, const moe_config *cfg, moe_dtype dtype,
                               moe_error *err);

/* A model with the tensors moe_model_synthetic(cfg, opt) would have, whose
 * weight slabs are reserved address space, never written (no memory is
 * used for them; they read as zeros), for the sim backend, which reads no
 * weights: a run of such a model on a computing backend gives meaningless
 * numbers.  MOE_ERR_OOM when the address space cannot be reserved. */
moe_status moe_model_virtual(moe_model **out, const moe_config *cfg, const moe_synth_options *opt,
                             moe_error *err);
/* Whether m was made by moe_model_virtual. */
bool moe_model_is_virtual(const moe_model *m);

/* Loads DIR/config.json and DIR's checkpoint (model.safetensors or a sharded
 * index).  dtype: the storage dtype to convert to, or NULL to keep the
 * checkpoint's (that of the embedding table).  A missing or mis-shaped tensor
 * is MOE_ERR_FORMAT naming it. */
moe_status moe_model_load(moe_model **out, const char *dir, const moe_dtype *dtype,
                          moe_error *err);

/* The storage dtype of the checkpoint in ckpt_dir for cfg (that of its
 * embedding table), read from the safetensors headers only. */
moe_status moe_model_checkpoint_dtype(const moe_config *cfg, const char *ckpt_dir, moe_dtype *out,
                                      moe_error *err);

/* Loads weights for an already parsed config from a checkpoint directory. */
moe_status moe_model_load_weights(moe_model **out, const moe_config *cfg, const char *ckpt_dir,
                                  const moe_dtype *dtype, moe_error *err);

/* Writes the weights as DIR/model.safetensors (Hugging Face tensor names)
 * and the configuration as DIR/config.json.  DIR must exist. */
moe_status moe_model_save(const moe_model *m, const char *dir, moe_error *err);

void moe_model_free(moe_model *m);
const moe_config *moe_model_config(const moe_model *m);
moe_dtype moe_model_dtype(const moe_model *m);
size_t moe_model_dense_bytes(const moe_model *m);  /* non-expert weights */
size_t moe_model_expert_bytes(const moe_model *m); /* one expert */

/* Pins the model's expert weights for asynchronous copies on dev's backend
 * (when it pins at all: host_register) and keeps them pinned until
 * moe_model_unpin, so engines built on the model later (a sweep's rows)
 * share the registration instead of pinning gigabytes each time.  MOE_OK
 * when pinned or when the backend does not pin. */
moe_status moe_model_pin(moe_model *m, moe_device *dev, moe_error *err);
void moe_model_unpin(moe_model *m, moe_device *dev);
size_t moe_model_total_bytes(const moe_model *m);

/* Writes a Hugging Face style config.json for cfg (temporary file + rename). */
moe_status moe_config_save(const moe_config *cfg, const char *path, moe_error *err);

/* ---------------------------------------------------------------- engine */

typedef struct moe_engine moe_engine;
struct moe_policy;

/* How MoE blocks pick their experts.
 * conventional: each block's router routes its own tokens.
 * pregated: the pre-gate of MoE block N picks block N+1's experts and their
 *   weights, and block N+1 uses exactly those (the paper's algorithm).  The
 *   first MoE block routes itself.  The pre-gate is the checkpoint's
 *   "<block>.pregate.weight" applied to block N's MoE input when present;
 *   otherwise it is derived: block N+1's norm and router applied to block
 *   N's output hidden state (an approximation for checkpoints that were
 *   not fine-tuned for pre-gating). */
typedef enum moe_routing { MOE_ROUTING_CONVENTIONAL = 0, MOE_ROUTING_PREGATED = 1 } moe_routing;

/* "conventional" / "pregated"; parse returns -1 for an unknown name. */
const char *moe_routing_name(moe_routing r);
int moe_routing_parse(const char *s, moe_routing *out);

/* Which stacks of an encoder-decoder model pre-gate (moe_engine_options.
 * pregate_stacks; 0 means both).  The paper's artifact pre-gates the
 * decoder only. */
#define MOE_PREGATE_ENCODER 1u
#define MOE_PREGATE_DECODER 2u

/* An expert cache on top of the policy's slots (moe_engine_options.cache):
 * cache_experts more slots, kept by least-recently-used or least-
 * frequently-used eviction, or pinned to the most popular experts
 * (static: cache_popularity, acquire counts from a warm-up run, picks
 * them; ties to the lower layer and expert). */
typedef enum moe_cache_kind {
  MOE_CACHE_NONE = 0,
  MOE_CACHE_LRU = 1,
  MOE_CACHE_LFU = 2,
  MOE_CACHE_STATIC = 3,
  MOE_CACHE_RING = 4 /* streaming: cache_experts slots that carry the next
                        experts of a block while the current one computes */
} moe_cache_kind;

/* "lru", "lfu", "static", "ring" (and "none"); -1 for another name. */
int moe_cache_kind_parse(const char *s, moe_cache_kind *out);
const char *moe_cache_kind_name(moe_cache_kind k);

/* "both" (0), "encoder", "decoder"; -1 for another name. */
int moe_pregate_stacks_parse(const char *s, unsigned *out);

typedef struct moe_engine_options {
  int max_batch;   /* sequences per forward */
  int max_seq;     /* prompt + generated tokens per sequence */
  int max_prefill; /* tokens per sequence in one forward call (default max_seq) */
  bool all_logits; /* keep logits of every position (tests), not only the last */
  const struct moe_policy *policy; /* NULL: gpu-only */
  moe_routing routing;
  unsigned pregate_stacks; /* encoder-decoder: MOE_PREGATE_* mask, 0 = both */
  moe_cache_kind cache;    /* an expert cache on top of the policy's slots */
  int cache_experts;       /* its size in experts (capped at what is not a slot yet) */
  const unsigned long long *cache_popularity; /* static: [MoE layer][expert] counts */
  int pregate_second;      /* 1: a prediction also names each token's next choice
                              (the pre-gate's best expert outside its top-k, by
                              logit), copied after the top-k ones while slots are
                              left (a prefetch only: the routing never uses it) */
  int pregate_lookahead;   /* a block predicts the k-th MoE block after it in its
                              stack, k in 1..MOE_MAX_LOOKAHEAD (0 = 1); for k > 1
                              the prediction is the derived one (a checkpoint
                              pre-gate is trained for the next block) */
  /* Called after each MoE block's own router ran (NULL: not called), with
   * the block's layer, the engine's forward-step counter (the one a
   * backend's set_context gets), the router's top-k experts [rows][k] (the
   * routing of conventional mode; under pregated routing the prediction
   * may differ) and the tokens' rows.  For recording a run's routing. */
  void (*on_route)(void *ctx, int layer, unsigned long long step, const int32_t *idx, size_t rows,
                   int k);
  void *on_route_ctx;
  /* Experts computed on the host (policies with place, policy.h): */
  int host_threads;        /* the host's math threads (0 = 1) */
  double host_gbps;        /* emulation (measured backends): a host job takes at least its
                              weight bytes at this rate, GB/s, as the link cap paces copies,
                              so that this machine plays a host of that bandwidth (0: none) */
  /* The hardware profile (cost.h) whose figures the policy's environment
   * carries (expert_copy_s, host_*: modeled); NULL: unknown (0). */
  const struct moe_hw_profile *cost_profile;
} moe_engine_options;

#define MOE_MAX_LOOKAHEAD 3



/* The expert slots an engine of model, opt and policy would have with
 * slot_budget bytes left for them: the policy's plan, capped at every
 * expert, plus an expert cache's (into *cache_slots too).  What
 * moe_engine_create computes; for planning without a device. */
moe_status moe_engine_plan_slots(const moe_model *model, const moe_engine_options *opt,
                                 const struct moe_policy *policy, size_t slot_budget, int *slots,
                                 int *cache_slots, moe_error *err);

/* Device bytes the engine will allocate, by category, for model, options
 * and a number of expert slots on dev (NULL: a backend that needs no matmul
 * workspace, as the cpu backend): the plan that measured peaks are checked
 * against.  Computed from the same size table the engine allocates from. */
void moe_engine_plan_memory(const moe_model *model, const moe_device *dev,
                            const moe_engine_options *opt, int slots,
                            size_t bytes[MOE_MEM_CATEGORIES], size_t *total);

typedef struct moe_gen_stats {
  double prefill_s;     /* wall time of the prefill forward, incl. first token */
  double decode_s;      /* wall time of all decode steps */
  double total_s;
  int generated;        /* tokens per sequence */
  double *step_s;       /* per decode step wall time (caller-owned, may be NULL) */
  float *step_logits;   /* caller-owned, may be NULL: [max_new][n_seq][vocab], the
                           logits each generated token was chosen from */
  unsigned long long prefill_bytes_h2d; /* expert bytes copied during prefill */
  double prefill_stall_s;               /* stall during prefill */
} moe_gen_stats;

/* Counters of the offload machinery since the last reset (engine creation
 * or moe_engine_reset_stats); warm-up copies of the policy are excluded. */
typedef struct moe_run_stats {
  int slots;                         /* expert slots the policy planned */
  unsigned long long fetches;        /* expert copies host-to-device */
  unsigned long long bytes_h2d;      /* bytes they moved */
  unsigned long long misses;         /* copies the engine made itself */
  unsigned long long refused;        /* prefetches refused for want of a slot */
  unsigned long long wasted;         /* copies evicted before any use (bytes moved
                                        for nothing) */
  unsigned long long recopies;       /* copies of an expert already copied for the
                                        same run of its block (bytes moved twice) */
  double stall_s;                    /* compute waiting on copies */
  unsigned long long pregate_hits;   /* predicted (token, expert) pairs that the
                                        block's own router also chose */
  unsigned long long pregate_total;  /* (token, expert) pairs predicted */
  unsigned long long copies_cancelled, copies_urged; /* the store's cancelled and urged
                                        (expert_store.h; timing-dependent) */
  unsigned long long pregate_second_hits; /* with pregate_second: routed (token, expert)
                                        pairs that were the token's next choice (so the
                                        top-k plus it cover pregate_hits + these) */
  unsigned long long warm_bytes;     /* bytes the policy's warm() moved */
  unsigned long long first_block_hits;  /* the first MoE block predicted from its layer
                                          input (policies with predict_first_block): */
  unsigned long long first_block_total; /* (token, expert) pairs right, and predicted */
  unsigned long long invalid_requests; /* policy requests refused for arguments out of
                                          range (a layer without an MoE block, an
                                          expert id past the last) */
  unsigned long long gets, reused;   /* expert acquires, and those served without a copy
                                        in this run of the block (cache hits) */
  int cache_slots;                   /* of slots, those the cache added */
  int pinned;                        /* expert weights in pinned host memory: 1, pageable
                                        (pinning failed; copies serialise with compute): 0,
                                        a backend that does not pin: -1 */
  double pin_s;                      /* seconds the engine spent pinning them */
  unsigned long long host_experts;   /* expert runs on the host (policies with place) */
  unsigned long long host_tokens;    /* (token, expert) pairs they computed */
  unsigned long long host_xfer_bytes; /* activations down and results up for them */
  double host_wait_s;                /* the device side waiting for the host's results */
} moe_run_stats;

/* Builds the engine: plans slots with the policy under the device budget,
 * allocates every device buffer (MOE_ERR_OOM with the allocator's message
 * when it does not fit), uploads dense weights, runs the policy's warm(). */
moe_status moe_engine_create(moe_engine **out, moe_model *model, moe_device *dev,
                             const moe_engine_options *opt, moe_error *err);
void moe_engine_free(moe_engine *e);

/* Runs n_seq sequences of n_new tokens each (tokens[n_seq * n_new]) at
 * positions pos0.. through the model (the decoder of an encoder-decoder
 * model, after encode() of the same n_seq sequences), filling the KV cache.  logits (host)
 * receives [n_seq, vocab] for each sequence's last token, or
 * [n_seq * n_new, vocab] when the engine keeps all logits. */
moe_status moe_engine_forward(moe_engine *e, const int32_t *tokens, int n_seq, int n_new, int pos0,
                              float *logits, moe_error *err);

/* Encoder-decoder models: runs the encoder on n_seq inputs of src_len
 * tokens each (src_len <= max_prefill) and computes every decoder layer's
 * cross-attention K/V from its output, once per request; forward() then
 * runs the decoder for these sequences.  MOE_ERR_INVALID on a
 * decoder-only model. */
moe_status moe_engine_encode(moe_engine *e, const int32_t *src, int n_seq, int src_len,
                             moe_error *err);

/* The encoder output of the last encode() ([n_seq * src_len, hidden],
 * after the encoder's final norm), until the next forward (tests). */
moe_status moe_engine_encoder_output(moe_engine *e, float *out, moe_error *err);

/* Prefill of n_seq prompts of equal length, then greedy decode.  out receives
 * [n_seq, max_new] tokens; prefill_logits (may be NULL) the prefill logits as
 * forward() returns them.  Encoder-decoder models: the prompts are the
 * encoder inputs; the prefill is the encoder plus the decoder's first step
 * from decoder_start_token_id (one logits row per sequence); decoder
 * positions run 0 .. max_new - 1; EOS does not stop the run. */
moe_status moe_engine_generate(moe_engine *e, const int32_t *prompts, int n_seq, int prompt_len,
                               int max_new, int32_t *out, float *prefill_logits,
                               moe_gen_stats *stats, moe_error *err);

/* Language-model quality over token windows (decoder-only models): each
 * window is a sequence of `len` ids; every position but the first is
 * predicted from its prefix (teacher forcing, one forward per batch of
 * windows).  Sums over all predicted tokens, in double precision. */
typedef struct moe_eval_result {
  double nll;                  /* sum of -log p(token | prefix), nats */
  unsigned long long tokens;   /* predicted tokens: windows x (len - 1) */
  unsigned long long correct;  /* tokens that were the top-1 prediction (ties to the
                                  lowest id) */
  /* optional, the caller's [n_windows] arrays (NULL: not kept): each
   * window's nll and correct added in, for intervals over windows */
  double *window_nll;
  unsigned long long *window_correct;
} moe_eval_result;

/* Runs n_windows windows ([n_windows, len] ids) in batches of the
 * engine's max_batch; the engine must keep all logits (all_logits) and
 * allow len tokens per sequence.  Results accumulate into *out (zero it
 * first). */
moe_status moe_engine_eval(moe_engine *e, const int32_t *windows, int n_windows, int len,
                           moe_eval_result *out, moe_error *err);

void moe_engine_stats(const moe_engine *e, moe_run_stats *out);
void moe_engine_reset_stats(moe_engine *e);

/* The engine's expert store (for its statistics and invariants). */
struct moe_expert_store *moe_engine_store(moe_engine *e);

/* Diagnostic: root mean square of the residual stream (before the final
 * norm) over the rows of the last forward call.  Downloads it. */
moe_status moe_engine_residual_rms(moe_engine *e, double *rms, moe_error *err);

/* The relative-position bucket of rel = memory position - query position
 * in a T5/Switch attention with nb buckets up to max_distance, as
 * transformers computes it (bidirectional in encoders, causal in
 * decoders). */
int moe_rel_bucket(int rel, bool bidirectional, int nb, int max_distance);

/* Index of the largest value; ties to the lowest index. */
int moe_argmax(const float *x, int n);

#endif
