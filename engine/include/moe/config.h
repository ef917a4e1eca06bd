/* Model configuration, read from a Hugging Face style config.json.
 *
 * Eight families are understood (each one a descriptor in
 * engine/src/families/, listed in its registry).  Decoder-only: Mixtral (model_type
 * "mixtral", every layer an MoE block), Qwen2-MoE (model_type
 * "qwen2_moe": MoE blocks every decoder_sparse_step layers except
 * mlp_only_layers, a shared expert with a sigmoid gate, biases on q/k/v),
 * Qwen3-MoE ("qwen3_moe": as Qwen2-MoE without the shared expert, with an
 * RMS norm per head on q and k, optional attention biases), OLMoE
 * ("olmoe": every layer MoE, RMS norms over the whole q and k
 * projections) and DeepSeek-V2/V3 ("deepseek_v2", "deepseek_v3":
 * multi-head latent attention with a latent KV cache, shared experts
 * without a gate, the first first_k_dense_replace layers dense, grouped
 * routing with softmax (V2) or sigmoid plus a correction bias (V3) and a
 * routed scaling factor; multi-token-prediction layers are ignored) and
 * Granite MoE ("granitemoe": Mixtral-like, experts stored stacked, with
 * multipliers on the embeddings, the attention scale, the residual
 * branches and the logits).
 * Decoder-only families take plain RoPE or YaRN.
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
  MOE_ARCH_OLMOE = 4,
  MOE_ARCH_DEEPSEEK_V2 = 5,
  MOE_ARCH_DEEPSEEK_V3 = 6,
  MOE_ARCH_GRANITE_MOE = 7
} moe_arch;

/* The RoPE frequencies (rope_parameters, or the legacy rope_scaling). */
typedef enum moe_rope_kind {
  MOE_ROPE_DEFAULT = 0, /* theta^(-2i/d) */
  MOE_ROPE_YARN = 1     /* YaRN: interpolated low frequencies, a ramp between, and an
                           attention factor on cos and sin (transformers'
                           _compute_yarn_parameters) */
} moe_rope_kind;

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
  /* ---- RoPE scaling (decoder-only families); MOE_ROPE_DEFAULT: none */
  moe_rope_kind rope_kind;
  float rope_factor;          /* YaRN factor */
  int rope_orig_max;          /* original_max_position_embeddings */
  float rope_beta_fast, rope_beta_slow;
  float rope_mscale, rope_mscale_all_dim; /* 0: absent */
  float rope_attn_factor;     /* attention_factor as given, 0: derived from the others */
  bool rope_truncate;         /* round the correction range outwards (default true) */
  /* ---- DeepSeek-V2/V3: multi-head latent attention (kv_rank 0: none) */
  int q_rank;                 /* q_lora_rank; 0: a plain q_proj */
  int kv_rank;                /* kv_lora_rank: the cached latent's width */
  int nope_dim, rope_dim, v_dim; /* qk_nope_head_dim, qk_rope_head_dim, v_head_dim;
                                    head_dim = nope_dim + rope_dim */
  bool rope_interleave;       /* rotary pairs (2i, 2i+1) (DeepSeek) */
  /* ---- DeepSeek routing (router_topk_ex); router_ex false: plain top-k */
  bool router_ex;
  int scoring;                /* moe_router_scoring */
  int n_group, topk_group;    /* n_group 0: no group limit */
  int group_score;            /* moe_router_group_score */
  bool group_mask_neg_inf;
  float routed_scale;         /* routed_scaling_factor */
  /* ---- multipliers (Granite); 0: none, i.e. the neutral value (1, and for
   * the attention 1/sqrt(head_dim) or the MLA scale) */
  float embed_mult;     /* embedding_multiplier: embeddings scaled after the lookup */
  float attn_mult;      /* attention_multiplier: the attention softmax scale */
  float residual_mult;  /* residual_multiplier: each attention and FFN output scaled
                           before its residual add */
  float logit_div;      /* logits_scaling: the logits divided by it */
} moe_config;

/* The multipliers with 0 read as none (1). */
static inline float moe_config_embed_mult(const moe_config *cfg) {
  return cfg->embed_mult > 0.0f ? cfg->embed_mult : 1.0f;
}
static inline float moe_config_residual_mult(const moe_config *cfg) {
  return cfg->residual_mult > 0.0f ? cfg->residual_mult : 1.0f;
}
static inline float moe_config_logit_div(const moe_config *cfg) {
  return cfg->logit_div > 0.0f ? cfg->logit_div : 1.0f;
}

/* Whether the model's attention is multi-head latent attention. */
static inline bool moe_config_is_mla(const moe_config *cfg) { return cfg->kv_rank > 0; }

/* The rotated dimensions of a head: rope_dim under MLA, else head_dim. */
static inline int moe_config_rot_dim(const moe_config *cfg) {
  return cfg->kv_rank > 0 ? cfg->rope_dim : cfg->head_dim;
}

/* The RoPE inverse frequencies (moe_config_rot_dim / 2 of them, in f32 as
 * transformers computes them) and the factor cos and sin are multiplied
 * by (1 for plain RoPE). */
void moe_config_rope_freqs(const moe_config *cfg, float *inv_freq, float *attn_factor);

/* The attention softmax scale: attn_mult when set (Granite); else
 * 1/sqrt(head_dim), and for DeepSeek
 * (nope + rope)^-0.5, times mscale(factor, mscale_all_dim)^2 under YaRN
 * with mscale_all_dim set (transformers' yarn_apply_mscale). */
float moe_config_attn_scale(const moe_config *cfg);

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
 * transformers gives it for that family (MixtralConfig, Qwen2MoeConfig,
 * ...: the family descriptor's defaults).
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
