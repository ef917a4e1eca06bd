/* DeepSeek-V2 and V3 (DeepseekV2ForCausalLM / DeepseekV3ForCausalLM,
 * DeepseekV2Config / DeepseekV3Config of transformers 5.24, defaults
 * included): multi-head latent attention with a latent KV cache, shared
 * experts without a gate, the first first_k_dense_replace layers dense,
 * grouped routing with softmax (V2) or sigmoid plus a correction bias (V3)
 * and a routed scaling factor.  What transformers' own model ignores is
 * ignored here too: V2 never renormalises the top-k weights
 * (norm_topk_prob is unused), V3 always routes by sigmoid, bias and top-2
 * group sums (topk_method, scoring_func are unused), moe_layer_freq is
 * unused, and the multi-token-prediction layers (num_nextn_predict_layers)
 * are not part of the causal LM. */
#include <math.h>
#include <string.h>

#include "checked.h"
#include "family.h"
#include "model_internal.h"

/* shared_ffn holds n_shared_experts while the fields are read (finish
 * multiplies it out) */
#define DEEPSEEK_DEFAULTS                                                                    \
  .n_kv_heads = -1, .rms_eps = 1e-6f, .rope_theta = 10000.0f, .q_rank = 1536, .kv_rank = 512, \
  .nope_dim = 128, .rope_dim = 64, .v_dim = 128, .router_ex = true, .rope_interleave = true

static const moe_config defaults_v2 = {
    DEEPSEEK_DEFAULTS, .vocab = 102400, .hidden = 4096, .dense_ffn = 11008, .n_layers = 32,
    .n_heads = 32, .max_pos = 2048, .expert_ffn = 1407, .n_experts = 64, .routed_scale = 1.0f,
    .shared_ffn = 2, .scoring = MOE_SCORING_SOFTMAX, .group_score = MOE_GROUP_MAX,
};

static const moe_config defaults_v3 = {
    DEEPSEEK_DEFAULTS, .vocab = 129280, .hidden = 7168, .dense_ffn = 18432, .n_layers = 61,
    .n_heads = 128, .max_pos = 4096, .expert_ffn = 2048, .n_experts = 256, .top_k = 8,
    .n_group = 8, .topk_group = 4, .routed_scale = 2.5f, .norm_topk = true, .shared_ffn = 1,
    .scoring = MOE_SCORING_SIGMOID, .group_score = MOE_GROUP_TOP2_SUM, .group_mask_neg_inf = true,
};

static moe_status read_first_dense(moe_config *cfg, const moe_field_ctx *c, const moe_field *f) {
  int first_dense = cfg->arch == MOE_ARCH_DEEPSEEK_V3 ? 3 : 0;
  MOE_TRY_RET(moe_field_int(c, f->key, &first_dense));
  MOE_TRY_RET(moe_family_all_moe(cfg, c));
  for (int i = 0; i < cfg->n_layers; i++) cfg->is_moe[i] = i >= first_dense;
  return MOE_OK;
}

static json_t *save_first_dense(const moe_config *cfg, const moe_field *f) {
  int first_dense = 0;
  while (first_dense < cfg->n_layers && !cfg->is_moe[first_dense]) first_dense++;
  return json_integer(first_dense);
}

static json_t *save_n_shared(const moe_config *cfg, const moe_field *f) {
  return json_integer(cfg->expert_ffn > 0 ? cfg->shared_ffn / cfg->expert_ffn : 0);
}

/* V2: greedy, or group_limited_greedy with n_group and topk_group. */
static moe_status read_topk_method(moe_config *cfg, const moe_field_ctx *c, const moe_field *f) {
  json_t *tm = json_object_get(c->obj, f->key);
  const char *method = tm == NULL || json_is_null(tm) ? "greedy"
                       : json_is_string(tm)           ? json_string_value(tm)
                                                      : NULL;
  if (method == NULL)
    return MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s: field 'topk_method' must be a string", c->origin);
  if (strcmp(method, "greedy") == 0) {
    cfg->n_group = cfg->topk_group = 0;
    return MOE_OK;
  }
  if (strcmp(method, "group_limited_greedy") != 0)
    return MOE_FAIL(c->err, MOE_ERR_UNSUPPORTED, "%s: field 'topk_method' = \"%s\" is not "
                    "supported (transformers' DeepSeek-V2 routes by greedy or "
                    "group_limited_greedy)", c->origin, method);
  if (cfg->n_group < 1 || cfg->topk_group < 1)
    return MOE_FAIL(c->err, MOE_ERR_INVALID,
                    "%s: group_limited_greedy routing needs n_group and topk_group", c->origin);
  return MOE_OK;
}

static json_t *save_topk_method(const moe_config *cfg, const moe_field *f) {
  return json_string(cfg->n_group > 0 ? "group_limited_greedy" : "greedy");
}

static const moe_field fields[] = {
    MOE_BOOL("attention_bias", o_bias),
    MOE_INT("n_routed_experts", n_experts),
    MOE_INT("n_shared_experts", shared_ffn, .save = save_n_shared),
    MOE_INT("moe_intermediate_size", expert_ffn),
    MOE_INT("intermediate_size", dense_ffn),
    MOE_INT("first_k_dense_replace", n_layers, .read = read_first_dense, .save = save_first_dense),
    MOE_INT("q_lora_rank", q_rank, .flags = MOE_F_NULL_ZERO),
    MOE_INT("kv_lora_rank", kv_rank),
    MOE_INT("qk_nope_head_dim", nope_dim),
    MOE_INT("qk_rope_head_dim", rope_dim),
    MOE_INT("v_head_dim", v_dim),
    MOE_FLOAT("routed_scaling_factor", routed_scale),
    MOE_INT("n_group", n_group, .flags = MOE_F_NULL_ZERO),
    MOE_INT("topk_group", topk_group, .flags = MOE_F_NULL_ZERO),
    {.key = "mlp_bias", .read = moe_read_false, .why = "biases on the feed-forward layers",
     .flags = MOE_F_NO_SAVE},
    MOE_FIELD_END,
};

static const moe_field fields_v2[] = {
    {.key = "topk_method", .read = read_topk_method, .save = save_topk_method},
    MOE_FIELD_END,
};

static const moe_field fields_v3[] = {
    MOE_BOOL("norm_topk_prob", norm_topk),
    MOE_BOOL("rope_interleave", rope_interleave),
    MOE_FIELD_END,
};

static moe_status finish(moe_config *cfg, const moe_field_ctx *c) {
  const char *origin = c->origin;
  moe_error *err = c->err;
  /* MLA has one latent for all heads; transformers expands it to every
   * query head, which only works when the key/value heads are as many */
  if (cfg->n_kv_heads != cfg->n_heads)
    return MOE_FAIL(err, MOE_ERR_UNSUPPORTED, "%s: num_key_value_heads = %d differs from "
                    "num_attention_heads = %d (multi-head latent attention expands its latent to "
                    "every head)", origin, cfg->n_kv_heads, cfg->n_heads);
  cfg->head_dim = cfg->nope_dim + cfg->rope_dim; /* config.json's head_dim is the rope dim */
  if (cfg->arch == MOE_ARCH_DEEPSEEK_V3 && (cfg->n_group < 1 || cfg->topk_group < 1))
    return MOE_FAIL(err, MOE_ERR_INVALID, "%s: n_group and topk_group must be set (DeepSeek-V3 "
                    "always routes by groups)", origin);
  /* num_experts_per_tok has no default in DeepseekV2Config */
  if (cfg->arch == MOE_ARCH_DEEPSEEK_V2 && !json_is_integer(json_object_get(c->obj, "num_experts_per_tok")))
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: required field 'num_experts_per_tok' is missing",
                    origin);
  if (!(isfinite(cfg->routed_scale) && cfg->routed_scale > 0.0f))
    return MOE_FAIL(err, MOE_ERR_INVALID, "%s: routed_scaling_factor must be a positive number",
                    origin);
  if (!(cfg->kv_rank >= 1 && cfg->rope_dim >= 2 && cfg->v_dim >= 1))
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "%s: kv_lora_rank, qk_rope_head_dim and v_head_dim must be positive", origin);
  if (cfg->shared_ffn > (1 << 16))
    return MOE_FAIL(err, MOE_ERR_INVALID, "%s: n_shared_experts %d is out of range", origin,
                    cfg->shared_ffn);
  const size_t shared = moe_prod((size_t)cfg->shared_ffn, (size_t)cfg->expert_ffn, 1, 1);
  if (shared > (size_t)1 << 30)
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "%s: n_shared_experts x moe_intermediate_size is out of range", origin);
  cfg->shared_ffn = (int)shared;
  for (int i = 0; i < cfg->n_layers; i++) cfg->is_moe[i] &= cfg->n_experts > 0;
  return MOE_OK;
}

/* The multi-head latent attention tensors of layer l: attention_bias puts
 * biases on q_a_proj, kv_a_proj_with_mqa and o_proj (never on q_proj,
 * q_b_proj, kv_b_proj). */
static moe_status mla_specs(moe_spec_builder *b, int l) {
  const moe_config *c = moe_spec_config(b);
  const size_t H = (size_t)c->hidden, NH = (size_t)c->n_heads;
  const size_t qw = NH * (size_t)(c->nope_dim + c->rope_dim), R = (size_t)c->kv_rank,
               P = (size_t)c->rope_dim;
  const bool bias = c->o_bias;
  const char *p = "model.layers";
  if (c->q_rank > 0) {
    const size_t Q = (size_t)c->q_rank;
    MOE_ADD_SPEC(b, ROLE_QA, l, -1, Q, H, false, false, "%s.%d.self_attn.q_a_proj.weight", p, l);
    if (bias) MOE_ADD_SPEC(b, ROLE_BQA, l, -1, 1, Q, true, false, "%s.%d.self_attn.q_a_proj.bias", p, l);
    MOE_ADD_SPEC(b, ROLE_QA_NORM, l, -1, 1, Q, true, false, "%s.%d.self_attn.q_a_layernorm.weight", p, l);
    MOE_ADD_SPEC(b, ROLE_WQ, l, -1, qw, Q, false, false, "%s.%d.self_attn.q_b_proj.weight", p, l);
  } else {
    MOE_ADD_SPEC(b, ROLE_WQ, l, -1, qw, H, false, false, "%s.%d.self_attn.q_proj.weight", p, l);
  }
  MOE_ADD_SPEC(b, ROLE_KVA, l, -1, R + P, H, false, false, "%s.%d.self_attn.kv_a_proj_with_mqa.weight", p, l);
  if (bias)
    MOE_ADD_SPEC(b, ROLE_BKVA, l, -1, 1, R + P, true, false, "%s.%d.self_attn.kv_a_proj_with_mqa.bias", p, l);
  MOE_ADD_SPEC(b, ROLE_KVA_NORM, l, -1, 1, R, true, false, "%s.%d.self_attn.kv_a_layernorm.weight", p, l);
  MOE_ADD_SPEC(b, ROLE_KVB, l, -1, NH * (size_t)(c->nope_dim + c->v_dim), R, false, false,
               "%s.%d.self_attn.kv_b_proj.weight", p, l);
  MOE_ADD_SPEC(b, ROLE_WO, l, -1, H, NH * (size_t)c->v_dim, false, false, "%s.%d.self_attn.o_proj.weight", p, l);
  if (bias) MOE_ADD_SPEC(b, ROLE_BO, l, -1, 1, H, true, false, "%s.%d.self_attn.o_proj.bias", p, l);
  return MOE_OK;
}

static const char *const types_v2[] = {"deepseek_v2", NULL}, *const types_v3[] = {"deepseek_v3", NULL};
static const moe_field *const tables_v2[] = {moe_fields_decoder_head, fields, fields_v2,
                                             moe_fields_decoder_tail, NULL};
static const moe_field *const tables_v3[] = {moe_fields_decoder_head, fields, fields_v3,
                                             moe_fields_decoder_tail, NULL};

#define DEEPSEEK_FAMILY                                                                     \
  .finish = finish, .attention = MOE_ATTN_MLA,                            \
  .required_ops = MOE_OP_BIT(MOE_OP_MLA_ATTENTION) | MOE_OP_BIT(MOE_OP_ROPE_EX) |           \
                  MOE_OP_BIT(MOE_OP_ROUTER_TOPK_EX),                                        \
  .attention_specs = mla_specs

/* V3's router bias is its ranking bias e_score_correction_bias (a buffer:
 * zeros when a checkpoint lacks it, as transformers initialises it); V2's
 * is our routing-skew bias, loaded when present */

const moe_family moe_family_deepseek_v2 = {
    DEEPSEEK_FAMILY, .name = "deepseek_v2", .arch = MOE_ARCH_DEEPSEEK_V2,
    .model_types = types_v2, .defaults = &defaults_v2, .tables = tables_v2,
    .names = {MOE_NAMES_MLP, .shared = "model.layers.%d.mlp.shared_experts"},
};

const moe_family moe_family_deepseek_v3 = {
    DEEPSEEK_FAMILY, .name = "deepseek_v3", .arch = MOE_ARCH_DEEPSEEK_V3,
    .model_types = types_v3, .defaults = &defaults_v3, .tables = tables_v3,
    .names = {MOE_NAMES_MLP_EXPERTS, .shared = "model.layers.%d.mlp.shared_experts",
              .router_bias = "model.layers.%d.mlp.gate.e_score_correction_bias"},
};
