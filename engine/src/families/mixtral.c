/* Mixtral (MixtralForCausalLM): every layer an MoE block of SwiGLU
 * experts w1 (gate), w3 (up), w2 (down) under block_sparse_moe, the top-k
 * weights renormalised; defaults of transformers 5.24 MixtralConfig(). */
#include "family.h"

static const moe_config defaults = {
    .vocab = 32000, .hidden = 4096, .expert_ffn = 14336, .n_layers = 32, .n_heads = 32,
    .n_kv_heads = 8, .max_pos = 4096 * 32, .rms_eps = 1e-5f, .rope_theta = 1e6f, .top_k = 2,
    .n_experts = 8, .norm_topk = true, /* Mixtral always renormalises the top-k weights */
};

static const moe_field fields[] = {
    MOE_INT("num_local_experts", n_experts),
    MOE_INT("intermediate_size", expert_ffn),
    MOE_INT("sliding_window", sliding_window, .flags = MOE_F_NO_SAVE),
    MOE_FIELD_END,
};

static moe_status finish(moe_config *cfg, const moe_field_ctx *c) {
  MOE_TRY_RET(moe_family_all_moe(cfg, c));
  moe_family_sliding_layers(cfg, c);
  return MOE_OK;
}


const moe_family moe_family_mixtral = {
    .name = "mixtral", .arch = MOE_ARCH_MIXTRAL, MOE_TYPES("mixtral"), .defaults = &defaults,
    MOE_DECODER_TABLES(fields), .finish = finish, .attention = MOE_ATTN_GQA,
    .names = {.router = "model.layers.%d.block_sparse_moe.gate.weight",
              .router_bias = "model.layers.%d.block_sparse_moe.gate.bias",
              .pregate = "model.layers.%d.block_sparse_moe.pregate.weight",
              .e_gate = "model.layers.%d.block_sparse_moe.experts.%d.w1.weight",
              .e_up = "model.layers.%d.block_sparse_moe.experts.%d.w3.weight",
              .e_down = "model.layers.%d.block_sparse_moe.experts.%d.w2.weight"},
};
