/* Model configuration, read from a Hugging Face style config.json.
 *
 * Five families are understood.  Decoder-only: Mixtral (model_type
 * "mixtral", every layer an MoE block), Qwen2-MoE (model_type
 * "qwen2_moe": MoE blocks every decoder_sparse_step layers except
 * mlp_only_layers, a shared expert with a sigmoid gate, biases on q/k/v),
 * Qwen3-MoE ("qwen3_moe": as Qwen2-MoE without the shared expert, with an
 * RMS norm per head on q and k, optional attention biases) and OLMoE
 * ("olmoe": every layer MoE, RMS norms over the whole q and k
 * projections).
 * Encoder-decoder: Switch Transformers (model_type "switch_transformers":
 * T5 layers with relative position buckets, top-1 routing with an expert
 * capacity, ReLU experts).  An encoder-decoder model's layers are numbered
 * encoder first: layers 0 .. n_enc_layers - 1 are the encoder's, the rest
 * the decoder's. */
#ifndef MOE_CONFIG_H
#define MOE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "moe/status.h"

#define MOE_MAX_LAYERS 256
#define MOE_MAX_EXPERTS 1024
#define MOE_MAX_TOPK 16

typedef enum moe_arch {
  MOE_ARCH_MIXTRAL = 0,
  MOE_ARCH_QWEN2_MOE = 1,
  MOE_ARCH_SWITCH = 2, /* encoder-decoder */
  MOE_ARCH_QWEN3_MOE = 3,
  MOE_ARCH_OLMOE = 4
} moe_arch;

/* RMS norms on the query and key projections, before RoPE. */
typedef enum moe_qk_norm {
  MOE_QK_NORM_NONE = 0,
  MOE_QK_NORM_HEAD = 1, /* per head, weight [head_dim] (Qwen3-MoE) */
  MOE_QK_NORM_FULL = 2  /* over the whole projection, weight [heads x head_dim] (OLMoE) */
} moe_qk_norm;

/* The activation of the feed-forward networks (dense and experts). */
typedef enum moe_ffn_act {
  MOE_FFN_SWIGLU = 0, /* down(silu(gate x) * up x): Mixtral, Qwen2-MoE */
  MOE_FFN_RELU = 1    /* wo(relu(wi x)): Switch (no gate matrix) */
} moe_ffn_act;

typedef struct moe_config {
  moe_arch arch;
  int hidden;       /* d_model */
  int n_layers;
  int n_heads;
  int n_kv_heads;   /* grouped-query attention: n_heads % n_kv_heads == 0 */
  int head_dim;
  int vocab;
  int max_pos;      /* max_position_embeddings */
  int n_experts;    /* experts per MoE block */
  int top_k;        /* experts per token */
  int expert_ffn;   /* intermediate size of one routed expert */
  int dense_ffn;    /* intermediate size of a dense (non-MoE) layer's FFN */
  int shared_ffn;   /* intermediate size of the shared expert, 0 when none */
  bool norm_topk;   /* renormalise the top-k routing weights to sum to 1 */
  bool qkv_bias;    /* q/k/v projections carry a bias */
  bool o_bias;      /* the output projection carries a bias (attention_bias) */
  moe_qk_norm qk_norm;
  bool tie_embeddings;
  float rms_eps;
  float rope_theta;
  int sliding_window; /* 0: none; else a query at position i attends to keys
                         j > i - sliding_window (as transformers masks): only
                         runs longer than the window differ from full
                         attention, and the engine refuses those */
  bool is_moe[MOE_MAX_LAYERS]; /* layer i has an MoE block (else dense FFN) */
  /* ---- encoder-decoder (Switch); zero for decoder-only families */
  int n_enc_layers;     /* encoder layers (layers 0 .. n_enc_layers - 1) */
  int enc_sparse_step;  /* as transformers: layer i of a stack is sparse when */
  int dec_sparse_step;  /* i % step == 1 or step == 1 (step 0: none) */
  int rel_buckets;      /* relative_attention_num_buckets */
  int rel_max_distance; /* relative_attention_max_distance */
  int expert_capacity;  /* tokens per expert per sequence per forward; those past
                           it skip the expert (their FFN output is 0) */
  bool router_logit_bias; /* router_bias: the classifier's bias is part of the
                             logits (softmax included), unlike the ranking-only
                             routing-skew bias of the decoder-only families */
  int decoder_start;    /* decoder_start_token_id */
  int eos_id, pad_id;   /* eos_token_id, pad_token_id (-1: none) */
  moe_ffn_act ffn_act;
} moe_config;

/* True for encoder-decoder configurations. */
static inline bool moe_config_is_encdec(const moe_config *cfg) { return cfg->n_enc_layers > 0; }

/* The stack of layer l: its first layer and one past its last (decoder-only
 * models have one stack, layers 0 .. n_layers - 1). */
static inline void moe_config_stack(const moe_config *cfg, int l, int *begin, int *end) {
  const bool enc = cfg->n_enc_layers > 0 && l < cfg->n_enc_layers;
  *begin = enc || cfg->n_enc_layers == 0 ? 0 : cfg->n_enc_layers;
  *end = enc ? cfg->n_enc_layers : cfg->n_layers;
}

/* Parses a config.json file.  A field that is absent takes the value
 * transformers gives it for that family (MixtralConfig, Qwen2MoeConfig).
 * Errors name the file and the field: MOE_ERR_IO when unreadable,
 * MOE_ERR_FORMAT for bad JSON or a mistyped field, MOE_ERR_INVALID for
 * contradictory values, MOE_ERR_UNSUPPORTED for an unknown model_type or a
 * RoPE variant other than the default one (rope_scaling or
 * rope_parameters with rope_type linear, dynamic, yarn, llama3, longrope,
 * ...). */
moe_status moe_config_load(moe_config *cfg, const char *path, moe_error *err);

/* Same, from an already parsed JSON object (a json_t *); `origin` names it
 * in messages (a file name, or "preset NAME"). */
moe_status moe_config_from_json(moe_config *cfg, const void *json_obj, const char *origin,
                                moe_error *err);

/* Checks the invariants the engine relies on (positive sizes, heads divide,
 * limits).  Called by the loaders; exposed for configs built in code. */
moe_status moe_config_validate(const moe_config *cfg, const char *origin, moe_error *err);

/* Number of MoE layers. */
int moe_config_n_moe_layers(const moe_config *cfg);

/* Bytes of one routed expert (gate + up + down, or wi + wo for ReLU
 * experts) in the given element size. */
size_t moe_config_expert_bytes(const moe_config *cfg, size_t elem_size);

#endif
