/* OLMoE (OlmoeForCausalLM): every layer MoE, RMS norms over the whole q
 * and k projections; defaults of transformers 5.24 OlmoeConfig(). */
#include "family.h"

static const moe_config defaults = {
    .vocab = 50304, .hidden = 2048, .expert_ffn = 2048, .n_layers = 16, .n_heads = 16,
    .n_kv_heads = -1, /* None: as many as the query heads */
    .max_pos = 4096, .rms_eps = 1e-5f, .rope_theta = 10000.0f, .top_k = 8, .n_experts = 64,
    .qk_norm = MOE_QK_NORM_FULL,
};

static const moe_field fields[] = {
    MOE_BOOL("attention_bias", qkv_bias, .read = moe_read_attention_bias),
    MOE_INT("num_experts", n_experts, .read = moe_read_experts),
    MOE_INT("intermediate_size", expert_ffn),
    MOE_BOOL("norm_topk_prob", norm_topk),
    MOE_FIELD_END,
};

static moe_status finish(moe_config *cfg, const moe_field_ctx *c) {
  if (moe_field_given(c->obj, "clip_qkv"))
    return MOE_FAIL(c->err, MOE_ERR_UNSUPPORTED,
                    "%s: field 'clip_qkv' is set: clamping q/k/v is not implemented", c->origin);
  return moe_family_all_moe(cfg, c);
}


const moe_family moe_family_olmoe = {
    .name = "olmoe", .arch = MOE_ARCH_OLMOE, MOE_TYPES("olmoe"), .defaults = &defaults,
    MOE_DECODER_TABLES(fields), .finish = finish, .attention = MOE_ATTN_GQA,
    .names = {MOE_NAMES_MLP},
};
