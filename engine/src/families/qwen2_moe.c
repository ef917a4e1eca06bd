/* Qwen2-MoE (Qwen2MoeForCausalLM): MoE blocks every decoder_sparse_step
 * layers except mlp_only_layers, a shared expert with a sigmoid gate,
 * biases on q/k/v; defaults of transformers 5.24 Qwen2MoeConfig(). */
#include "family.h"

static const moe_config defaults = {
    .vocab = 151936, .hidden = 2048, .dense_ffn = 5632, .n_layers = 24, .n_heads = 16,
    .n_kv_heads = 16, .max_pos = 32768, .rms_eps = 1e-6f, .rope_theta = 10000.0f,
    .expert_ffn = 1408, .shared_ffn = 5632, .top_k = 4, .n_experts = 60, .qkv_bias = true,
};

static const moe_field fields[] = {
    MOE_INT("num_experts", n_experts),
    MOE_INT("moe_intermediate_size", expert_ffn),
    MOE_INT("intermediate_size", dense_ffn),
    MOE_INT("shared_expert_intermediate_size", shared_ffn),
    MOE_BOOL("norm_topk_prob", norm_topk),
    MOE_BOOL("qkv_bias", qkv_bias),
    MOE_FIELD_END,
};


const moe_family moe_family_qwen2_moe = {
    .name = "qwen2_moe", .arch = MOE_ARCH_QWEN2_MOE, MOE_TYPES("qwen2_moe"),
    .defaults = &defaults, MOE_DECODER_TABLES(fields, moe_fields_sparse_step), .finish = moe_family_sparse_step_layers,
    .attention = MOE_ATTN_GQA,
    .names = {MOE_NAMES_MLP, .shared = "model.layers.%d.mlp.shared_expert", .shared_gate = true},
};
