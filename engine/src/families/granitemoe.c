/* Granite MoE (GraniteMoeForCausalLM of transformers 5.25): Mixtral-like
 * (RMSNorm, RoPE with grouped-query attention, top-k router whose softmax
 * runs over the top-k logits, i.e. renormalised top-k weights, SwiGLU
 * experts), the experts stored stacked (input_linear [E, 2F, H]: gate rows,
 * then up rows; output_linear [E, H, F]), no shared experts, no sliding
 * window, and four multipliers: embeddings scaled after the lookup, the
 * attention softmax scale, each sublayer's output before its residual add,
 * and a divisor of the logits.  Defaults of GraniteMoeConfig(). */
#include "family.h"

static const moe_config defaults = {
    .vocab = 32000, .hidden = 4096, .expert_ffn = 11008, .n_layers = 32, .n_heads = 32,
    .n_kv_heads = -1, /* None: as many as the query heads */
    .max_pos = 2048, .rms_eps = 1e-6f, .rope_theta = 10000.0f, .top_k = 2, .n_experts = 8,
    .norm_topk = true, .embed_mult = 1.0f, .attn_mult = 1.0f, .residual_mult = 1.0f,
    .logit_div = 1.0f,
};

#define MULTIPLIER(key, member) MOE_FLOAT(key, member, .lo = 1e-30, .hi = 1e30)

static const moe_field fields[] = {
    MOE_BOOL("attention_bias", qkv_bias, .read = moe_read_attention_bias),
    MOE_INT("num_local_experts", n_experts),
    MOE_INT("intermediate_size", expert_ffn),
    MULTIPLIER("embedding_multiplier", embed_mult),
    MULTIPLIER("attention_multiplier", attn_mult),
    MULTIPLIER("residual_multiplier", residual_mult),
    MULTIPLIER("logits_scaling", logit_div),
    MOE_FIELD_END,
};


const moe_family moe_family_granitemoe = {
    .name = "granitemoe", .arch = MOE_ARCH_GRANITE_MOE, MOE_TYPES("granitemoe"),
    .defaults = &defaults, MOE_DECODER_TABLES(fields), .finish = moe_family_all_moe,
    .attention = MOE_ATTN_GQA,
    /* the scaled softmax (attention_ex) and the multipliers (unary scale) */
    .required_ops = MOE_OP_BIT(MOE_OP_ATTENTION_EX) | MOE_OP_BIT(MOE_OP_UNARY),
    .names = {.router = "model.layers.%d.block_sparse_moe.router.layer.weight",
              .router_bias = "model.layers.%d.block_sparse_moe.router.layer.bias",
              .pregate = "model.layers.%d.block_sparse_moe.pregate.weight",
              .e_gate = "model.layers.%d.block_sparse_moe.input_linear.weight",
              .e_down = "model.layers.%d.block_sparse_moe.output_linear.weight",
              .stacked = true},
};
