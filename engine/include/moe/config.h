/* Model configuration, read from a Hugging Face style config.json.
 *
 * Two decoder-only families are understood: Mixtral (model_type "mixtral",
 * every layer an MoE block) and Qwen2-MoE (model_type "qwen2_moe": MoE blocks
 * every decoder_sparse_step layers except mlp_only_layers, a shared expert
 * with a sigmoid gate, biases on q/k/v). */
#ifndef MOE_CONFIG_H
#define MOE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "moe/status.h"

#define MOE_MAX_LAYERS 256
#define MOE_MAX_EXPERTS 1024
#define MOE_MAX_TOPK 16

typedef enum moe_arch { MOE_ARCH_MIXTRAL = 0, MOE_ARCH_QWEN2_MOE = 1 } moe_arch;

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
  bool tie_embeddings;
  float rms_eps;
  float rope_theta;
  int sliding_window; /* 0: none; else a query at position i attends to keys
                         j > i - sliding_window (as transformers masks): only
                         runs longer than the window differ from full
                         attention, and the engine refuses those */
  bool is_moe[MOE_MAX_LAYERS]; /* layer i has an MoE block (else dense FFN) */
} moe_config;

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

/* Bytes of one routed expert (gate + up + down) in the given element size. */
size_t moe_config_expert_bytes(const moe_config *cfg, size_t elem_size);

#endif
