/* Qwen3-MoE (Qwen3MoeForCausalLM): as Qwen2-MoE without the shared expert,
 * with an RMS norm per head on q and k and optional attention biases;
 * defaults of transformers 5.24 Qwen3MoeConfig(). */
#include "family.h"

static const moe_field fields[] = {
    MOE_BOOL("attention_bias", qkv_bias, .read = moe_read_attention_bias),
    MOE_INT("num_experts", n_experts, .read = moe_read_experts),
    MOE_INT("moe_intermediate_size", expert_ffn),
    MOE_INT("intermediate_size", dense_ffn),
    MOE_BOOL("norm_topk_prob", norm_topk),
    MOE_FIELD_END,
};


static const moe_config defaults = {
    .vocab = 151936, .hidden = 2048, .dense_ffn = 6144, .n_layers = 24, .n_heads = 32,
    .n_kv_heads = 4, .max_pos = 32768, .rms_eps = 1e-6f, .rope_theta = 10000.0f,
    .expert_ffn = 768, .top_k = 8, .n_experts = 128, .qk_norm = MOE_QK_NORM_HEAD,
};

const moe_family moe_family_qwen3_moe = {
    .name = "qwen3_moe", .arch = MOE_ARCH_QWEN3_MOE, MOE_TYPES("qwen3_moe"),
    .defaults = &defaults, MOE_DECODER_TABLES(fields, moe_fields_sparse_step), .finish = moe_family_sparse_step_layers,
    .attention = MOE_ATTN_GQA,
    .names = {MOE_NAMES_MLP},
};
