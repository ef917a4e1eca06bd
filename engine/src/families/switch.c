/* Switch Transformers (SwitchTransformersForConditionalGeneration and
 * SwitchTransformersConfig of transformers 5.24: the same fields and
 * defaults; T5's legacy feed_forward_proj / is_gated_act are accepted when
 * they say ReLU): T5 layers with relative position buckets, top-1 routing
 * with an expert capacity, ReLU experts, encoder layers first. */
#include "family.h"
#include "model_internal.h"

/* n_layers holds num_decoder_layers (-1: as the encoder) while the fields
 * are read; finish makes it the total */
static const moe_config defaults = {
    .arch = MOE_ARCH_SWITCH, .vocab = 32128, .hidden = 768, .head_dim = 64, .expert_ffn = 2048,
    .expert_capacity = 64, .n_enc_layers = 12, .n_layers = -1, .n_heads = 12, .n_experts = 8,
    .top_k = 1, .rel_buckets = 32, .rel_max_distance = 128, .rms_eps = 1e-6f,
    .tie_embeddings = true, .pad_id = 0, .eos_id = 1, .decoder_start = -1,
    .ffn_act = MOE_FFN_RELU,
    .rope_theta = 10000.0f, /* unused: positions are relative buckets */
    .max_pos = 1 << 20,     /* no position table: any length */
};

/* An optional token id: absent keeps it, null means none (-1), a list
 * (eos) its first entry. */
static moe_status read_token_id(moe_config *cfg, const moe_field_ctx *c, const moe_field *f) {
  int *out = (int *)(void *)((char *)cfg + f->off);
  json_t *v = json_object_get(c->obj, f->key);
  if (v != NULL && (json_is_null(v) || (json_is_array(v) && json_array_size(v) == 0))) {
    *out = -1;
    return MOE_OK;
  }
  if (v == NULL || !json_is_array(v)) return moe_field_int(c, f->key, out);
  v = json_array_get(v, 0);
  if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1 << 30)
    return MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s: field '%s' must hold token ids", c->origin, f->key);
  *out = (int)json_integer_value(v);
  return MOE_OK;
}

static json_t *save_true(const moe_config *cfg, const moe_field *f) { return json_true(); }
static json_t *save_dec_layers(const moe_config *cfg, const moe_field *f) {
  return json_integer(cfg->n_layers - cfg->n_enc_layers);
}
static json_t *save_experts(const moe_config *cfg, const moe_field *f) {
  return json_integer(cfg->n_experts > 0 ? cfg->n_experts : 8);
}

static const char *const relu[] = {"relu", NULL}, *const f32[] = {"float32", NULL};

static const moe_field fields[] = {
    {.key = "is_encoder_decoder", .read = moe_read_true, .save = save_true,
     .why = "only the encoder-decoder model is"},
    MOE_INT("vocab_size", vocab),
    MOE_INT("d_model", hidden),
    MOE_INT("d_kv", head_dim),
    MOE_INT("d_ff", expert_ffn),
    MOE_INT("num_heads", n_heads),
    MOE_INT("num_layers", n_enc_layers),
    MOE_INT("num_decoder_layers", n_layers, .save = save_dec_layers),
    MOE_INT("encoder_sparse_step", enc_sparse_step, .flags = MOE_F_NO_READ),
    MOE_INT("decoder_sparse_step", dec_sparse_step, .flags = MOE_F_NO_READ),
    MOE_INT("num_experts", n_experts, .save = save_experts),
    MOE_INT("expert_capacity", expert_capacity),
    MOE_INT("relative_attention_num_buckets", rel_buckets),
    MOE_INT("relative_attention_max_distance", rel_max_distance),
    MOE_FLOAT("layer_norm_epsilon", rms_eps),
    MOE_BOOL("router_bias", router_logit_bias),
    MOE_STRING("router_dtype", f32, "the router runs in float32, as the Switch paper's selective "
               "precision"),
    MOE_STRING("dense_act_fn", relu, "transformers' Switch FFN is wi, activation, wo; only relu "
               "is implemented"),
    MOE_STRING("feed_forward_proj", relu, "gated feed-forward layers are not part of "
               "transformers' Switch model", .flags = MOE_F_NO_SAVE),
    {.key = "is_gated_act", .read = moe_read_false, .flags = MOE_F_NO_SAVE,
     .why = "transformers' Switch FFN is not gated"},
    MOE_BOOL("tie_word_embeddings", tie_embeddings),
    MOE_INT("decoder_start_token_id", decoder_start, .read = read_token_id),
    MOE_INT("pad_token_id", pad_id, .read = read_token_id, .flags = MOE_F_NEG_NULL),
    MOE_INT("eos_token_id", eos_id, .read = read_token_id, .flags = MOE_F_NEG_NULL),
    MOE_FIELD_END,
};

/* transformers' is_sparse of layer i in a stack with this sparse step. */
static bool sparse(int i, int step) { return step > 0 && (i % step == 1 || step == 1); }

/* The sparse step of one stack: the explicit *_sparse_step field when
 * present, else num_layers // num_sparse_*_layers (num_layers when that is
 * 0).  Both present and different is a contradiction. */
static moe_status read_step(const moe_field_ctx *c, const char *step_key, const char *count_key,
                            int layers, int *step) {
  int count = 3, explicit_step = -1;
  MOE_TRY_RET(moe_field_int(c, count_key, &count));
  MOE_TRY_RET(moe_field_int(c, step_key, &explicit_step));
  const int derived = count > 0 ? layers / count : layers;
  if (explicit_step >= 0 && moe_field_given(c->obj, count_key) && explicit_step != derived)
    return MOE_FAIL(c->err, MOE_ERR_INVALID,
                    "%s: field '%s' = %d contradicts %s = %d (%d layers give a step of %d)",
                    c->origin, step_key, explicit_step, count_key, count, layers, derived);
  *step = explicit_step >= 0 ? explicit_step : derived;
  return MOE_OK;
}

static moe_status check_fields(const moe_config *cfg, int enc, int dec, const moe_field_ctx *c) {
  /* transformers' _shift_right and generate() need a start token; Switch
   * checkpoints use the pad token, and so do we when none is given */
  if (cfg->decoder_start < 0)
    return MOE_FAIL(c->err, MOE_ERR_INVALID, "%s: neither decoder_start_token_id nor "
                    "pad_token_id is set (the decoder needs a start token)", c->origin);
  if (cfg->decoder_start >= cfg->vocab)
    return MOE_FAIL(c->err, MOE_ERR_INVALID, "%s: decoder_start_token_id %d is outside the "
                    "vocabulary (0..%d)", c->origin, cfg->decoder_start, cfg->vocab - 1);
  if (enc < 1 || dec < 1)
    return MOE_FAIL(c->err, MOE_ERR_INVALID, "%s: num_layers (%d) and num_decoder_layers (%d) "
                    "must be positive", c->origin, enc, dec);
  if (enc + dec > MOE_MAX_LAYERS)
    return MOE_FAIL(c->err, MOE_ERR_UNSUPPORTED, "%s: num_layers + num_decoder_layers = %d "
                    "exceeds the limit %d", c->origin, enc + dec, MOE_MAX_LAYERS);
  if (cfg->rel_buckets < 4)
    return MOE_FAIL(c->err, MOE_ERR_INVALID, "%s: field 'relative_attention_num_buckets' = %d "
                    "must be >= 4 (half of the encoder's buckets per direction, half of those "
                    "exact)", c->origin, cfg->rel_buckets);
  if (cfg->rel_max_distance <= cfg->rel_buckets / 2)
    return MOE_FAIL(c->err, MOE_ERR_INVALID, "%s: field 'relative_attention_max_distance' = %d "
                    "must exceed half the buckets (%d)", c->origin, cfg->rel_max_distance,
                    cfg->rel_buckets / 2);
  return MOE_OK;
}

static moe_status finish(moe_config *cfg, const moe_field_ctx *c) {
  const int enc = cfg->n_enc_layers, dec = cfg->n_layers < 0 ? enc : cfg->n_layers;
  if (cfg->decoder_start < 0) cfg->decoder_start = cfg->pad_id;
  MOE_TRY_RET(check_fields(cfg, enc, dec, c));
  MOE_TRY_RET(read_step(c, "encoder_sparse_step", "num_sparse_encoder_layers", enc,
                        &cfg->enc_sparse_step));
  MOE_TRY_RET(read_step(c, "decoder_sparse_step", "num_sparse_decoder_layers", dec,
                        &cfg->dec_sparse_step));
  cfg->n_layers = enc + dec;
  cfg->n_kv_heads = cfg->n_heads;
  cfg->dense_ffn = cfg->expert_ffn;
  for (int i = 0; i < enc; i++) cfg->is_moe[i] = sparse(i, cfg->enc_sparse_step);
  for (int i = 0; i < dec; i++) cfg->is_moe[enc + i] = sparse(i, cfg->dec_sparse_step);
  if (moe_config_n_moe_layers(cfg) == 0) cfg->n_experts = 0;
  return MOE_OK;
}

/* Embeddings: with tied embeddings everything is shared.weight; untied,
 * transformers 5 gives the encoder and the decoder their own tables
 * (encoder.embed_tokens / decoder.embed_tokens), which 4.x checkpoints
 * hold as copies of shared.weight, so either name serves. */
static void embed_names(const moe_config *c, const char **name, const char **alt) {
  *name = c->tie_embeddings ? "shared.weight" : "decoder.embed_tokens.weight";
  *alt = c->tie_embeddings ? "decoder.embed_tokens.weight" : "shared.weight";
}

/* One layer's attention sub-layer (self: layer.0.SelfAttention, or the
 * decoder's cross-attention: layer.1.EncDecAttention). */
static moe_status attention(moe_spec_builder *b, int l, const char *p, int i, bool cross) {
  const moe_config *c = moe_spec_config(b);
  const size_t H = (size_t)c->hidden, inner = (size_t)c->n_heads * (size_t)c->head_dim;
  const int k = cross ? 1 : 0;
  const char *a = cross ? "EncDecAttention" : "SelfAttention";
  MOE_ADD_SPEC(b, cross ? ROLE_XATTN_NORM : ROLE_ATTN_NORM, l, -1, 1, H, true, false,
               "%s.%d.layer.%d.layer_norm.weight", p, i, k);
  MOE_ADD_SPEC(b, cross ? ROLE_XQ : ROLE_WQ, l, -1, inner, H, false, false, "%s.%d.layer.%d.%s.q.weight", p, i, k, a);
  MOE_ADD_SPEC(b, cross ? ROLE_XK : ROLE_WK, l, -1, inner, H, false, false, "%s.%d.layer.%d.%s.k.weight", p, i, k, a);
  MOE_ADD_SPEC(b, cross ? ROLE_XV : ROLE_WV, l, -1, inner, H, false, false, "%s.%d.layer.%d.%s.v.weight", p, i, k, a);
  MOE_ADD_SPEC(b, cross ? ROLE_XO : ROLE_WO, l, -1, H, inner, false, false, "%s.%d.layer.%d.%s.o.weight", p, i, k, a);
  if (i == 0 && !cross)
    MOE_ADD_SPEC(b, ROLE_REL_BIAS, l, -1, (size_t)c->rel_buckets, (size_t)c->n_heads, false, false,
                 "%s.0.layer.0.SelfAttention.relative_attention_bias.weight", p);
  return MOE_OK;
}

/* One layer's FFN sub-layer: a router (with its bias when router_bias),
 * an optional pre-gate (not a transformers tensor: the pre-gate of a model
 * fine-tuned for pre-gating, predicting the next MoE block of the same
 * stack) and experts wi (up), wo (down), no gate; or a dense wi, wo. */
static moe_status ffn(moe_spec_builder *b, int l, const char *p, int i, int ff) {
  const moe_config *c = moe_spec_config(b);
  const size_t H = (size_t)c->hidden, E = (size_t)c->n_experts, F = (size_t)c->expert_ffn;
  MOE_ADD_SPEC(b, ROLE_FFN_NORM, l, -1, 1, H, true, false, "%s.%d.layer.%d.layer_norm.weight", p, i, ff);
  if (!c->is_moe[l]) {
    MOE_ADD_SPEC(b, ROLE_D_UP, l, -1, F, H, false, false, "%s.%d.layer.%d.mlp.wi.weight", p, i, ff);
    MOE_ADD_SPEC(b, ROLE_D_DOWN, l, -1, H, F, false, false, "%s.%d.layer.%d.mlp.wo.weight", p, i, ff);
    return MOE_OK;
  }
  MOE_ADD_SPEC(b, ROLE_ROUTER, l, -1, E, H, false, false, "%s.%d.layer.%d.mlp.router.classifier.weight", p, i, ff);
  if (c->router_logit_bias)
    MOE_ADD_SPEC(b, ROLE_ROUTER_BIAS, l, -1, 1, E, true, false, "%s.%d.layer.%d.mlp.router.classifier.bias", p, i, ff);
  int sb, se;
  moe_config_stack(c, l, &sb, &se);
  bool has_next = false;
  for (int n = l + 1; n < se; n++) has_next |= c->is_moe[n];
  if (has_next)
    MOE_ADD_SPEC(b, ROLE_PREGATE, l, -1, E, H, false, true, "%s.%d.layer.%d.mlp.pregate.weight", p, i, ff);
  for (int e = 0; e < c->n_experts; e++) {
    MOE_ADD_SPEC(b, ROLE_E_UP, l, e, F, H, false, false, "%s.%d.layer.%d.mlp.experts.expert_%d.wi.weight", p, i, ff, e);
    MOE_ADD_SPEC(b, ROLE_E_DOWN, l, e, H, F, false, false, "%s.%d.layer.%d.mlp.experts.expert_%d.wo.weight", p, i, ff, e);
  }
  return MOE_OK;
}

static moe_status build_specs(moe_spec_builder *b) {
  const moe_config *c = moe_spec_config(b);
  const size_t H = (size_t)c->hidden, V = (size_t)c->vocab;
  const char *emb, *emb_alt;
  embed_names(c, &emb, &emb_alt);
  MOE_ADD_SPEC(b, ROLE_EMBED, -1, -1, V, H, false, false, "%s", emb);
  moe_spec_alt(b, emb_alt);
  if (!c->tie_embeddings) {
    MOE_ADD_SPEC(b, ROLE_ENC_EMBED, -1, -1, V, H, false, false, "encoder.embed_tokens.weight");
    moe_spec_alt(b, "shared.weight");
    MOE_ADD_SPEC(b, ROLE_LM_HEAD, -1, -1, V, H, false, false, "lm_head.weight");
  }
  MOE_ADD_SPEC(b, ROLE_ENC_FINAL_NORM, -1, -1, 1, H, true, false, "encoder.final_layer_norm.weight");
  MOE_ADD_SPEC(b, ROLE_FINAL_NORM, -1, -1, 1, H, true, false, "decoder.final_layer_norm.weight");
  for (int l = 0; l < c->n_layers; l++) {
    const bool dec = l >= c->n_enc_layers;
    const char *p = dec ? "decoder.block" : "encoder.block";
    const int i = dec ? l - c->n_enc_layers : l;
    MOE_TRY_RET(attention(b, l, p, i, false));
    if (dec) MOE_TRY_RET(attention(b, l, p, i, true));
    MOE_TRY_RET(ffn(b, l, p, i, dec ? 2 : 1));
  }
  return MOE_OK;
}

static const char *const types[] = {"switch_transformers", NULL};
static const moe_field *const tables[] = {fields, NULL};

const moe_family moe_family_switch = {
    .name = "switch_transformers",
    .arch = MOE_ARCH_SWITCH,
    .model_types = types,
    .defaults = &defaults,
    .tables = tables,
    .finish = finish,
    .attention = MOE_ATTN_T5,
    .required_ops = MOE_OP_BIT(MOE_OP_ATTENTION_EX) | MOE_OP_BIT(MOE_OP_UNARY),
    .build_specs = build_specs,
    .embed_names = embed_names,
};
