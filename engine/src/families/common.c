/* What the decoder-only families share: the fields of their config.json
 * files, readers of fields several families spell alike and the MoE layer
 * patterns. */
#include <string.h>

#include "family.h"

/* ------------------------------------------------------------ fields */

/* num_key_value_heads: an explicit null means "as many as the query heads"
 * (transformers 4), and so does a family default of -1 (None). */
static moe_status read_kv_heads(moe_config *cfg, const moe_field_ctx *c, const moe_field *f) {
  json_t *v = json_object_get(c->obj, f->key);
  if (v != NULL && json_is_null(v)) cfg->n_kv_heads = cfg->n_heads;
  MOE_TRY_RET(moe_field_int(c, f->key, &cfg->n_kv_heads));
  if (cfg->n_kv_heads < 0) cfg->n_kv_heads = cfg->n_heads;
  return MOE_OK;
}

/* head_dim: hidden_size / num_attention_heads unless given. */
static moe_status read_head_dim(moe_config *cfg, const moe_field_ctx *c, const moe_field *f) {
  if (!(cfg->hidden > 0 && cfg->n_heads > 0))
    return MOE_FAIL(c->err, MOE_ERR_INVALID,
                    "%s: hidden_size and num_attention_heads must be positive", c->origin);
  cfg->head_dim = cfg->hidden / cfg->n_heads;
  MOE_TRY_RET(moe_field_int(c, f->key, &cfg->head_dim));
  if (!json_is_integer(json_object_get(c->obj, f->key)) && cfg->hidden % cfg->n_heads != 0)
    return MOE_FAIL(c->err, MOE_ERR_INVALID,
                    "%s: hidden_size (%d) is not a multiple of num_attention_heads (%d)",
                    c->origin, cfg->hidden, cfg->n_heads);
  return MOE_OK;
}

/* DeepSeek's config.json head_dim is the rotary one: not written. */
static json_t *save_head_dim(const moe_config *cfg, const moe_field *f) {
  return moe_config_is_mla(cfg) ? NULL : json_integer(cfg->head_dim);
}

static const char *const silu[] = {"silu", NULL};

const moe_field moe_fields_decoder_head[] = {
    MOE_INT("hidden_size", hidden),
    MOE_INT("num_hidden_layers", n_layers),
    MOE_INT("num_attention_heads", n_heads),
    MOE_INT("num_key_value_heads", n_kv_heads, .read = read_kv_heads),
    MOE_INT("head_dim", head_dim, .read = read_head_dim, .save = save_head_dim),
    MOE_INT("vocab_size", vocab),
    MOE_INT("max_position_embeddings", max_pos),
    MOE_INT("num_experts_per_tok", top_k),
    MOE_FLOAT("rms_norm_eps", rms_eps),
    MOE_BOOL("tie_word_embeddings", tie_embeddings),
    MOE_STRING("hidden_act", silu, "the experts and dense layers are SwiGLU: silu only",
               .flags = MOE_F_NULL_BAD),
    MOE_FIELD_END,
};

/* The experts of a family whose transformers 5 config writes
 * num_local_experts (its attribute_map) and whose checkpoints say
 * num_experts: either, and both only when they agree. */
moe_status moe_read_experts(moe_config *cfg, const moe_field_ctx *c, const moe_field *f) {
  int a = -1, b = -1;
  MOE_TRY_RET(moe_field_int(c, "num_experts", &a));
  MOE_TRY_RET(moe_field_int(c, "num_local_experts", &b));
  if (a >= 0 && b >= 0 && a != b)
    return MOE_FAIL(c->err, MOE_ERR_INVALID,
                    "%s: num_experts (%d) contradicts num_local_experts (%d)", c->origin, a, b);
  if (a >= 0) cfg->n_experts = a;
  else if (b >= 0) cfg->n_experts = b;
  return MOE_OK;
}

/* attention_bias: biases on q, k, v and o alike. */
moe_status moe_read_attention_bias(moe_config *cfg, const moe_field_ctx *c, const moe_field *f) {
  bool ab = false;
  MOE_TRY_RET(moe_field_bool(c, f->key, &ab));
  cfg->qkv_bias = cfg->o_bias = ab;
  return MOE_OK;
}

/* The dense layers of a model that says which by mlp_only_layers. */
static json_t *moe_save_mlp_only_layers(const moe_config *cfg, const moe_field *f) {
  json_t *only = json_array();
  for (int l = 0; l < cfg->n_layers; l++)
    if (!cfg->is_moe[l]) json_array_append_new(only, json_integer(l));
  return only;
}

static json_t *moe_save_one(const moe_config *cfg, const moe_field *f) { return json_integer(1); }

/* ------------------------------------------------------------ layers */

moe_status moe_family_all_moe(moe_config *cfg, const moe_field_ctx *c) {
  if (cfg->n_layers > MOE_MAX_LAYERS)
    return MOE_FAIL(c->err, MOE_ERR_UNSUPPORTED, "%s: num_hidden_layers = %d exceeds the limit %d",
                    c->origin, cfg->n_layers, MOE_MAX_LAYERS);
  for (int i = 0; i < cfg->n_layers; i++) cfg->is_moe[i] = true;
  return MOE_OK;
}

void moe_family_sliding_layers(moe_config *cfg, const moe_field_ctx *c) {
  json_t *lt = json_object_get(c->obj, "layer_types");
  if (cfg->sliding_window <= 0 || !json_is_array(lt)) return;
  bool any = false;
  size_t i;
  json_t *v;
  json_array_foreach(lt, i, v) any |= json_is_string(v) && strcmp(json_string_value(v), "sliding_attention") == 0;
  if (!any) cfg->sliding_window = 0;
}

/* Qwen's layer pattern: MoE blocks every decoder_sparse_step layers except
 * mlp_only_layers; a window only with use_sliding_window. */
moe_status moe_family_sparse_step_layers(moe_config *cfg, const moe_field_ctx *c) {
  bool sliding = false;
  MOE_TRY_RET(moe_field_bool(c, "use_sliding_window", &sliding));
  if (sliding) {
    cfg->sliding_window = 4096;
    MOE_TRY_RET(moe_field_int(c, "sliding_window", &cfg->sliding_window));
  }
  int step = 1;
  MOE_TRY_RET(moe_field_int(c, "decoder_sparse_step", &step));
  if (step < 1)
    return MOE_FAIL(c->err, MOE_ERR_INVALID, "%s: field 'decoder_sparse_step' must be >= 1",
                    c->origin);
  MOE_TRY_RET(moe_family_all_moe(cfg, c));
  for (int i = 0; i < cfg->n_layers; i++) cfg->is_moe[i] = cfg->n_experts > 0 && (i + 1) % step == 0;
  json_t *only = json_object_get(c->obj, "mlp_only_layers");
  if (only != NULL && !json_is_null(only)) {
    if (!json_is_array(only))
      return MOE_FAIL(c->err, MOE_ERR_FORMAT,
                      "%s: field 'mlp_only_layers' must be an array of layer indices", c->origin);
    size_t i;
    json_t *v;
    json_array_foreach(only, i, v) {
      if (!(json_is_integer(v) && json_integer_value(v) >= 0 &&
            json_integer_value(v) < cfg->n_layers))
        return MOE_FAIL(c->err, MOE_ERR_INVALID,
                        "%s: field 'mlp_only_layers' entry %zu is not a layer index in 0..%d",
                        c->origin, i, cfg->n_layers - 1);
      cfg->is_moe[json_integer_value(v)] = false;
    }
  }
  moe_family_sliding_layers(cfg, c);
  return MOE_OK;
}

/* A flag of which one value is implemented (`want`); f->why says why. */
static moe_status read_fixed_bool(const moe_field_ctx *c, const moe_field *f, bool want) {
  bool v = want;
  MOE_TRY_RET(moe_field_bool(c, f->key, &v));
  if (v != want)
    return MOE_FAIL(c->err, MOE_ERR_UNSUPPORTED, "%s: field '%s' = %s is not supported (%s)",
                    c->origin, f->key, v ? "true" : "false", f->why);
  return MOE_OK;
}

moe_status moe_read_false(moe_config *cfg, const moe_field_ctx *c, const moe_field *f) {
  return read_fixed_bool(c, f, false);
}

moe_status moe_read_true(moe_config *cfg, const moe_field_ctx *c, const moe_field *f) {
  return read_fixed_bool(c, f, true);
}

/* Qwen's layer pattern, as saved: a step of 1 and the dense layers listed. */
const moe_field moe_fields_sparse_step[] = {
    {.key = "decoder_sparse_step", .flags = MOE_F_NO_READ, .save = moe_save_one},
    {.key = "mlp_only_layers", .flags = MOE_F_NO_READ, .save = moe_save_mlp_only_layers},
    MOE_FIELD_END,
};
