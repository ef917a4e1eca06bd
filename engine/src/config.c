/* config.json: a generic reader, checker and writer driven by the model
 * families' field tables (family.h, families/). */
#include "moe/config.h"

#include "checked.h"
#include "family.h"
#include "moe/backend.h"
#include "moe/jsonfile.h"
#include "moe/model.h"
#include "moe/publish.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef moe_field_ctx field_ctx;

bool moe_field_given(json_t *obj, const char *key) {
  json_t *v = json_object_get(obj, key);
  return v != NULL && !json_is_null(v);
}

/* Reads an integer field: absent or null keeps *out. */
moe_status moe_field_int(const field_ctx *c, const char *key, int *out) {
  json_t *v = json_object_get(c->obj, key);
  if (v == NULL || json_is_null(v)) return MOE_OK;
  if (!json_is_integer(v))
    return MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s: field '%s' must be an integer", c->origin, key);
  json_int_t x = json_integer_value(v);
  if (x < 0 || x > 1 << 30)
    return MOE_FAIL(c->err, MOE_ERR_INVALID, "%s: field '%s' = %lld is out of range", c->origin,
                    key, (long long)x);
  *out = (int)x;
  return MOE_OK;
}

moe_status moe_field_num(const field_ctx *c, json_t *obj, const char *key, float *out) {
  json_t *v = json_object_get(obj, key);
  if (v == NULL || json_is_null(v)) return MOE_OK;
  if (!json_is_number(v))
    return MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s: field '%s' must be a number", c->origin, key);
  *out = (float)json_number_value(v);
  return MOE_OK;
}

moe_status moe_field_bool(const field_ctx *c, const char *key, bool *out) {
  json_t *v = json_object_get(c->obj, key);
  if (v == NULL || json_is_null(v)) return MOE_OK;
  if (!json_is_boolean(v))
    return MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s: field '%s' must be true or false", c->origin, key);
  *out = json_is_true(v);
  return MOE_OK;
}

/* A string field that must be one of f->choices when present. */
static moe_status get_choice(const field_ctx *c, const moe_field *f) {
  json_t *v = json_object_get(c->obj, f->key);
  if (v == NULL || (json_is_null(v) && !(f->flags & MOE_F_NULL_BAD))) return MOE_OK;
  if (!json_is_string(v))
    return MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s: field '%s' must be a string", c->origin, f->key);
  for (const char *const *ok = f->choices; *ok; ok++)
    if (strcmp(json_string_value(v), *ok) == 0) return MOE_OK;
  return MOE_FAIL(c->err, MOE_ERR_UNSUPPORTED, "%s: field '%s' = \"%s\" is not supported (%s)",
                  c->origin, f->key, json_string_value(v), f->why);
}

/* ------------------------------------------------------------ checks */

static moe_status validate_dims(const moe_config *cfg, const char *origin, moe_error *err) {
  const struct {
    const char *name;
    int value;
  } positive[] = {{"hidden_size", cfg->hidden},
                  {"num_hidden_layers", cfg->n_layers},
                  {"num_attention_heads", cfg->n_heads},
                  {"num_key_value_heads", cfg->n_kv_heads},
                  {"vocab_size", cfg->vocab},
                  {"max_position_embeddings", cfg->max_pos},
                  {"head_dim", cfg->head_dim}};
  for (size_t i = 0; i < sizeof positive / sizeof positive[0]; i++)
    if (positive[i].value <= 0)
      return MOE_FAIL(err, MOE_ERR_INVALID, "%s: field '%s' must be positive (got %d)", origin,
                      positive[i].name, positive[i].value);
  if (cfg->n_layers > MOE_MAX_LAYERS)
    return MOE_FAIL(err, MOE_ERR_UNSUPPORTED, "%s: num_hidden_layers = %d exceeds the limit %d",
                    origin, cfg->n_layers, MOE_MAX_LAYERS);
  if (cfg->n_heads % cfg->n_kv_heads != 0)
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "%s: num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)",
                    origin, cfg->n_heads, cfg->n_kv_heads);
  if (moe_config_is_mla(cfg) &&
      (cfg->rope_dim < 2 || cfg->nope_dim < 0 || cfg->v_dim < 1 || cfg->q_rank < 0 ||
       cfg->head_dim != cfg->nope_dim + cfg->rope_dim))
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "%s: multi-head latent attention dimensions out of range (qk_nope_head_dim "
                    "%d, qk_rope_head_dim %d, v_head_dim %d, q_lora_rank %d)", origin,
                    cfg->nope_dim, cfg->rope_dim, cfg->v_dim, cfg->q_rank);
  return MOE_OK;
}

static moe_status validate_rope(const moe_config *cfg, bool t5, const char *origin,
                                moe_error *err) {
  if (moe_config_rot_dim(cfg) % 2 != 0 && !t5)
    return MOE_FAIL(err, MOE_ERR_INVALID, "%s: the rotated head dimension (%d) must be even for "
                    "RoPE", origin, moe_config_rot_dim(cfg));
  if (cfg->rope_kind != MOE_ROPE_YARN) return MOE_OK;
  const double f = cfg->rope_factor > 0 ? cfg->rope_factor
                                        : (double)cfg->max_pos / (cfg->rope_orig_max > 0 ? cfg->rope_orig_max : 1);
  if (t5 || !(cfg->rope_factor >= 0.0f) || !isfinite(cfg->rope_factor) || !(f > 0) ||
      cfg->rope_orig_max < 1 || !(cfg->rope_theta > 1.0f) || !(cfg->rope_beta_fast > 0.0f) ||
      !(cfg->rope_beta_slow > 0.0f) || !isfinite(cfg->rope_beta_fast) ||
      !isfinite(cfg->rope_beta_slow) || !isfinite(cfg->rope_mscale) ||
      !isfinite(cfg->rope_mscale_all_dim) || !(cfg->rope_attn_factor >= 0.0f) ||
      !isfinite(cfg->rope_attn_factor))
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "%s: yarn RoPE parameters out of range (factor %g, original_max_position_"
                    "embeddings %d, beta_fast %g, beta_slow %g, attention_factor %g)",
                    origin, cfg->rope_factor, cfg->rope_orig_max, cfg->rope_beta_fast,
                    cfg->rope_beta_slow, cfg->rope_attn_factor);
  return MOE_OK;
}

static moe_status validate_moe(const moe_config *cfg, const char *origin, moe_error *err) {
  const int n_moe = moe_config_n_moe_layers(cfg);
  if (n_moe > 0) {
    if (cfg->n_experts <= 0 || cfg->n_experts > MOE_MAX_EXPERTS)
      return MOE_FAIL(err, MOE_ERR_INVALID, "%s: number of experts %d must be in 1..%d", origin,
                      cfg->n_experts, MOE_MAX_EXPERTS);
    if (cfg->top_k <= 0 || cfg->top_k > cfg->n_experts || cfg->top_k > MOE_MAX_TOPK)
      return MOE_FAIL(err, MOE_ERR_INVALID,
                      "%s: num_experts_per_tok (%d) must be in 1..min(experts=%d, %d)", origin,
                      cfg->top_k, cfg->n_experts, MOE_MAX_TOPK);
    if (cfg->expert_ffn <= 0)
      return MOE_FAIL(err, MOE_ERR_INVALID, "%s: expert intermediate size must be positive",
                      origin);
    if (cfg->router_ex) {
      const moe_router_ex r = {cfg->top_k, (moe_router_scoring)cfg->scoring, NULL, cfg->n_group,
                               cfg->topk_group, (moe_router_group_score)cfg->group_score,
                               cfg->norm_topk, cfg->routed_scale, cfg->group_mask_neg_inf};
      moe_error why = {0};
      if (moe_router_ex_check(&r, cfg->n_experts, &why) != MOE_OK)
        return MOE_FAIL(err, MOE_ERR_INVALID,
                        "%s: %d experts, n_group %d, topk_group %d, num_experts_per_tok %d: %s",
                        origin, cfg->n_experts, cfg->n_group, cfg->topk_group, cfg->top_k,
                        why.msg);
    }
  }
  if (n_moe < cfg->n_layers && cfg->dense_ffn <= 0)
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "%s: field 'intermediate_size' must be positive for the dense layers", origin);
  return MOE_OK;
}

/* Sizes the layout will multiply out: each must fit (f32, the widest). */
static moe_status validate_sizes(const moe_config *cfg, const char *origin, moe_error *err) {
  const int n_moe = moe_config_n_moe_layers(cfg);
  const size_t hd = (size_t)cfg->head_dim;
  const struct {
    const char *what;
    size_t bytes;
  } sizes[] = {
      {"vocab_size x hidden_size", moe_prod((size_t)cfg->vocab, (size_t)cfg->hidden, 4, 1)},
      {"num_attention_heads x head_dim x hidden_size",
       moe_prod((size_t)cfg->n_heads, hd, (size_t)cfg->hidden, 4)},
      {"3 x expert intermediate size x hidden_size", moe_config_expert_bytes(cfg, 4)},
      {"experts x expert size",
       moe_prod((size_t)(n_moe > 0 ? cfg->n_experts : 0), moe_config_expert_bytes(cfg, 4),
                (size_t)n_moe, 1)},
      {"intermediate_size x hidden_size", moe_prod((size_t)cfg->dense_ffn, (size_t)cfg->hidden, 12, 1)},
      {"shared_expert_intermediate_size x hidden_size",
       moe_prod((size_t)cfg->shared_ffn, (size_t)cfg->hidden, 12, 1)},
      {"num_attention_heads x (qk_nope_head_dim + v_head_dim) x kv_lora_rank",
       moe_prod((size_t)cfg->n_heads, (size_t)cfg->nope_dim + (size_t)cfg->v_dim,
                (size_t)cfg->kv_rank, 4)},
      {"num_attention_heads x head_dim x q_lora_rank",
       moe_prod((size_t)cfg->n_heads, hd, (size_t)cfg->q_rank, 4)},
  };
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    if (sizes[i].bytes == SIZE_MAX)
      return MOE_FAIL(err, MOE_ERR_INVALID, "%s: %s overflows the address space (model too large)",
                      origin, sizes[i].what);
  return MOE_OK;
}

static moe_status validate_misc(const moe_config *cfg, const char *origin, moe_error *err) {
  if (cfg->n_enc_layers < 0 || cfg->n_enc_layers >= cfg->n_layers)
    return MOE_FAIL(err, MOE_ERR_INVALID, "%s: %d encoder layers of %d layers leave no decoder",
                    origin, cfg->n_enc_layers, cfg->n_layers);
  if (cfg->n_enc_layers > 0 &&
      (cfg->rel_buckets < 4 || cfg->rel_max_distance <= cfg->rel_buckets / 2 ||
       cfg->expert_capacity < 0 || cfg->decoder_start < 0 || cfg->decoder_start >= cfg->vocab))
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "%s: encoder-decoder fields out of range (buckets %d, max distance %d, "
                    "capacity %d, decoder start %d)", origin, cfg->rel_buckets,
                    cfg->rel_max_distance, cfg->expert_capacity, cfg->decoder_start);
  if (cfg->sliding_window < 0)
    return MOE_FAIL(err, MOE_ERR_INVALID, "%s: sliding_window must be >= 0", origin);
  /* an epsilon below float's normal range (or 0) lets an all-zero row's
   * norm divide by zero; theta <= 1 gives no rotation or growing angles */
  if (!(cfg->rms_eps >= 1e-30f) || !isfinite(cfg->rms_eps))
    return MOE_FAIL(err, MOE_ERR_INVALID, "%s: rms_norm_eps %g must be finite and at least 1e-30",
                    origin, (double)cfg->rms_eps);
  if (!(cfg->rope_theta > 1.0f) || !isfinite(cfg->rope_theta))
    return MOE_FAIL(err, MOE_ERR_INVALID, "%s: rope_theta %g must be a finite number > 1", origin,
                    (double)cfg->rope_theta);
  return MOE_OK;
}

/* The ranges the family's tables give its float fields. */
static moe_status validate_fields(const moe_family *fam, const moe_config *cfg, const char *origin,
                                  moe_error *err) {
  for (const moe_field *const *t = fam->tables; *t; t++)
    for (const moe_field *f = *t; f->key; f++) {
      if (f->kind != MOE_FIELD_FLOAT || !(f->lo < f->hi)) continue;
      const float v = *(const float *)(const void *)((const char *)cfg + f->off);
      if (!(v >= f->lo && v <= f->hi) || !isfinite(v))
        return MOE_FAIL(err, MOE_ERR_INVALID, "%s: field '%s' = %g must be in %g .. %g", origin,
                        f->key, (double)v, f->lo, f->hi);
    }
  return MOE_OK;
}

moe_status moe_config_validate(const moe_config *cfg, const char *origin, moe_error *err) {
  const moe_family *fam = moe_family_by_arch(cfg->arch);
  if (fam == NULL)
    return MOE_FAIL(err, MOE_ERR_INVALID, "%s: unknown model family %d", origin, (int)cfg->arch);
  moe_status st = validate_dims(cfg, origin, err);
  if (st == MOE_OK) st = validate_rope(cfg, fam->attention == MOE_ATTN_T5, origin, err);
  if (st == MOE_OK) st = validate_moe(cfg, origin, err);
  if (st == MOE_OK) st = validate_sizes(cfg, origin, err);
  if (st == MOE_OK) st = validate_misc(cfg, origin, err);
  if (st == MOE_OK) st = validate_fields(fam, cfg, origin, err);
  return st;
}

/* ------------------------------------------------------------ RoPE */

/* Reads the RoPE parameters of obj, rope_scaling (legacy) or
 * rope_parameters (transformers 5), which may also hold one such object
 * per attention type (depth 1).  The default RoPE and, where yarn_ok,
 * YaRN are read into cfg; every other variant (linear, dynamic, llama3,
 * longrope, ...) is refused rather than run with wrong positions. */
static moe_status parse_rope(const field_ctx *c, json_t *obj, const char *field, float *theta,
                             moe_config *cfg, bool yarn_ok, int depth) {
  if (obj == NULL || json_is_null(obj)) return MOE_OK;
  if (!json_is_object(obj))
    return MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s: field '%s' must be an object", c->origin, field);
  json_t *rt = json_object_get(obj, "rope_type");
  if (rt == NULL) rt = json_object_get(obj, "type"); /* the oldest spelling */
  if (rt != NULL && !json_is_null(rt)) {
    if (!json_is_string(rt))
      return MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s: %s.rope_type must be a string", c->origin,
                      field);
    const char *type = json_string_value(rt);
    if (strcmp(type, "yarn") == 0 && yarn_ok && depth == 0) {
      field_ctx sub = {obj, c->origin, c->err};
      cfg->rope_kind = MOE_ROPE_YARN;
      cfg->rope_factor = 0.0f;
      cfg->rope_orig_max = 0;
      cfg->rope_beta_fast = 32.0f;
      cfg->rope_beta_slow = 1.0f;
      cfg->rope_mscale = cfg->rope_mscale_all_dim = cfg->rope_attn_factor = 0.0f;
      cfg->rope_truncate = true;
      moe_status st = moe_field_num(c, obj, "factor", &cfg->rope_factor);
      if (st == MOE_OK) st = moe_field_int(&sub, "original_max_position_embeddings", &cfg->rope_orig_max);
      if (st == MOE_OK) st = moe_field_num(c, obj, "beta_fast", &cfg->rope_beta_fast);
      if (st == MOE_OK) st = moe_field_num(c, obj, "beta_slow", &cfg->rope_beta_slow);
      if (st == MOE_OK) st = moe_field_num(c, obj, "mscale", &cfg->rope_mscale);
      if (st == MOE_OK) st = moe_field_num(c, obj, "mscale_all_dim", &cfg->rope_mscale_all_dim);
      if (st == MOE_OK) st = moe_field_num(c, obj, "attention_factor", &cfg->rope_attn_factor);
      if (st == MOE_OK) st = moe_field_bool(&sub, "truncate", &cfg->rope_truncate);
      if (st != MOE_OK) return st;
      /* transformers: "or 32", "or 1" (a 0 takes the default too) */
      if (cfg->rope_beta_fast == 0.0f) cfg->rope_beta_fast = 32.0f;
      if (cfg->rope_beta_slow == 0.0f) cfg->rope_beta_slow = 1.0f;
      float prf = 1.0f;
      st = moe_field_num(c, obj, "partial_rotary_factor", &prf);
      if (st != MOE_OK) return st;
      if (prf != 1.0f)
        return MOE_FAIL(c->err, MOE_ERR_UNSUPPORTED,
                        "%s: %s.partial_rotary_factor %g is not supported (only whole heads "
                        "rotate)", c->origin, field, prf);
    } else if (strcmp(type, "default") != 0) {
      return MOE_FAIL(c->err, MOE_ERR_UNSUPPORTED,
                      "%s: %s.rope_type '%s' is not supported (%s; linear, dynamic, llama3, "
                      "longrope are refused rather than run with wrong positions)",
                      c->origin, field, type,
                      yarn_ok ? "the default RoPE and yarn are implemented"
                              : "only the default RoPE is implemented");
    }
  } else if (json_object_get(obj, "factor") != NULL && depth == 0) {
    return MOE_FAIL(c->err, MOE_ERR_UNSUPPORTED,
                    "%s: %s has a scaling factor but no rope_type; only the default RoPE and "
                    "yarn are implemented", c->origin, field);
  }
  moe_status st = moe_field_num(c, obj, "rope_theta", theta);
  if (st != MOE_OK) return st;
  json_t *given = json_object_get(obj, "rope_theta");
  if (given && !json_is_null(given) && !(*theta > 1.0f && isfinite(*theta)))
    return MOE_FAIL(c->err, MOE_ERR_INVALID, "%s: %s.rope_theta %g must be a finite number > 1 "
                    "(it is not replaced by a default)", c->origin, field, (double)*theta);
  /* per-attention-type parameters: {"full_attention": {...}, ...} */
  const char *key;
  json_t *v;
  if (depth == 0)
    json_object_foreach(obj, key, v) {
      if (!json_is_object(v)) continue;
      char sub[160];
      snprintf(sub, sizeof sub, "%s.%s", field, key);
      st = parse_rope(c, v, sub, theta, cfg, false, depth + 1);
      if (st != MOE_OK) return st;
    }
  return MOE_OK;
}

/* YaRN's mscale (transformers' get_mscale). */
static double yarn_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

/* The YaRN factor, as transformers derives a missing one. */
static double yarn_factor(const moe_config *cfg) {
  if (cfg->rope_factor > 0.0f) return cfg->rope_factor;
  return (double)cfg->max_pos / (double)cfg->rope_orig_max;
}

void moe_config_rope_freqs(const moe_config *cfg, float *inv_freq, float *attn_factor) {
  const int dim = moe_config_rot_dim(cfg), half = dim / 2;
  const float base = cfg->rope_theta;
  *attn_factor = 1.0f;
  if (cfg->rope_kind != MOE_ROPE_YARN) {
    for (int i = 0; i < half; i++) inv_freq[i] = 1.0f / powf(base, (float)(2 * i) / (float)dim);
    return;
  }
  /* transformers 5.24 _compute_yarn_parameters: the correction range and
   * the attention factor in double (Python floats), the frequencies in
   * float32 (torch tensors) */
  const double factor = yarn_factor(cfg);
  if (cfg->rope_attn_factor > 0.0f)
    *attn_factor = cfg->rope_attn_factor;
  else if (cfg->rope_mscale != 0.0f && cfg->rope_mscale_all_dim != 0.0f)
    *attn_factor = (float)(yarn_mscale(factor, cfg->rope_mscale) /
                           yarn_mscale(factor, cfg->rope_mscale_all_dim));
  else
    *attn_factor = (float)yarn_mscale(factor, 1.0);
  const double two_pi = 2.0 * 3.14159265358979323846, lb = 2.0 * log((double)base);
  double low = (dim * log(cfg->rope_orig_max / (cfg->rope_beta_fast * two_pi))) / lb;
  double high = (dim * log(cfg->rope_orig_max / (cfg->rope_beta_slow * two_pi))) / lb;
  if (cfg->rope_truncate) {
    low = floor(low);
    high = ceil(high);
  }
  if (low < 0) low = 0;
  if (high > dim - 1) high = dim - 1;
  if (low == high) high += 0.001;
  const float lo = (float)low, span = (float)(high - low), f = (float)factor;
  for (int i = 0; i < half; i++) {
    const float pos_freq = powf(base, (float)(2 * i) / (float)dim);
    const float extra = 1.0f / pos_freq, inter = 1.0f / (f * pos_freq);
    float ramp = ((float)i - lo) / span;
    ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
    const float extra_factor = 1.0f - ramp;
    inv_freq[i] = inter * (1.0f - extra_factor) + extra * extra_factor;
  }
}

float moe_config_attn_scale(const moe_config *cfg) {
  if (cfg->attn_mult > 0.0f) return cfg->attn_mult;
  if (!moe_config_is_mla(cfg)) return 1.0f / sqrtf((float)cfg->head_dim);
  double scale = pow((double)(cfg->nope_dim + cfg->rope_dim), -0.5);
  if (cfg->rope_kind == MOE_ROPE_YARN && cfg->rope_mscale_all_dim != 0.0f) {
    const double m = yarn_mscale(yarn_factor(cfg), cfg->rope_mscale_all_dim);
    scale = scale * m * m;
  }
  return (float)scale;
}

/* ------------------------------------------------------------ RoPE fields */

/* rope_theta at the top level (older configs) and rope_parameters.rope_theta
 * (newer ones) must agree when both exist. */
static moe_status read_rope_theta(moe_config *cfg, const field_ctx *c, float theta_nested) {
  float theta_top = 0.0f;
  MOE_TRY_RET(moe_field_num(c, c->obj, "rope_theta", &theta_top));
  if (moe_field_given(c->obj, "rope_theta") && !(theta_top > 1.0f && isfinite(theta_top)))
    return MOE_FAIL(c->err, MOE_ERR_INVALID, "%s: rope_theta %g must be a finite number > 1 (it "
                    "is not replaced by a default)", c->origin, (double)theta_top);
  if (theta_top > 0 && theta_nested > 0 && theta_top != theta_nested)
    return MOE_FAIL(c->err, MOE_ERR_INVALID,
                    "%s: rope_theta (%g) contradicts rope_parameters.rope_theta (%g)", c->origin,
                    theta_top, theta_nested);
  if (theta_top > 0) cfg->rope_theta = theta_top;
  else if (theta_nested > 0) cfg->rope_theta = theta_nested;
  return MOE_OK;
}

/* The RoPE of a decoder-only config: rope_theta, rope_scaling (legacy) and
 * rope_parameters (transformers 5, which reads it when both exist: they
 * must not name different types); any scaled RoPE but YaRN is refused. */
static moe_status read_rope(moe_config *cfg, const field_ctx *c, const moe_field *f) {
  float theta_nested = 0.0f, theta_legacy = 0.0f;
  moe_config legacy = *cfg;
  MOE_TRY_RET(parse_rope(c, json_object_get(c->obj, "rope_scaling"), "rope_scaling",
                         &theta_legacy, &legacy, true, 0));
  MOE_TRY_RET(parse_rope(c, json_object_get(c->obj, "rope_parameters"), "rope_parameters",
                         &theta_nested, cfg, true, 0));
  if (!moe_field_given(c->obj, "rope_parameters")) {
    legacy.rope_theta = cfg->rope_theta;
    *cfg = legacy;
  } else if (moe_field_given(c->obj, "rope_scaling") && legacy.rope_kind != cfg->rope_kind) {
    return MOE_FAIL(c->err, MOE_ERR_INVALID,
                    "%s: rope_scaling and rope_parameters name different RoPE types", c->origin);
  }
  MOE_TRY_RET(read_rope_theta(cfg, c, theta_nested));
  if (cfg->rope_kind == MOE_ROPE_YARN && cfg->rope_orig_max == 0) {
    /* transformers: the top-level original_max_position_embeddings, else
     * max_position_embeddings */
    cfg->rope_orig_max = cfg->max_pos;
    MOE_TRY_RET(moe_field_int(c, "original_max_position_embeddings", &cfg->rope_orig_max));
  }
  return MOE_OK;
}

static json_t *save_rope(const moe_config *c, const moe_field *f) {
  json_t *rp = json_object();
  json_object_set_new(rp, "rope_theta", json_real(c->rope_theta));
  if (c->rope_kind != MOE_ROPE_YARN) {
    json_object_set_new(rp, "rope_type", json_string("default"));
    return rp;
  }
  json_object_set_new(rp, "rope_type", json_string("yarn"));
  if (c->rope_factor > 0) json_object_set_new(rp, "factor", json_real(c->rope_factor));
  json_object_set_new(rp, "original_max_position_embeddings", json_integer(c->rope_orig_max));
  json_object_set_new(rp, "beta_fast", json_real(c->rope_beta_fast));
  json_object_set_new(rp, "beta_slow", json_real(c->rope_beta_slow));
  if (c->rope_mscale != 0) json_object_set_new(rp, "mscale", json_real(c->rope_mscale));
  if (c->rope_mscale_all_dim != 0)
    json_object_set_new(rp, "mscale_all_dim", json_real(c->rope_mscale_all_dim));
  if (c->rope_attn_factor > 0)
    json_object_set_new(rp, "attention_factor", json_real(c->rope_attn_factor));
  json_object_set_new(rp, "truncate", json_boolean(c->rope_truncate));
  return rp;
}

const moe_field moe_fields_decoder_tail[] = {
    {.key = "rope_parameters", .read = read_rope, .save = save_rope},
    MOE_FIELD_END,
};

/* ------------------------------------------------------------ the reader */

static void *member(moe_config *cfg, const moe_field *f) { return (char *)cfg + f->off; }

static const void *cmember(const moe_config *cfg, const moe_field *f) {
  return (const char *)cfg + f->off;
}

static moe_status read_field(moe_config *cfg, const field_ctx *c, const moe_field *f) {
  if (f->flags & MOE_F_NO_READ) return MOE_OK;
  if (f->read) return f->read(cfg, c, f);
  switch (f->kind) {
    case MOE_FIELD_INT: {
      json_t *v = json_object_get(c->obj, f->key);
      if ((f->flags & MOE_F_NULL_ZERO) && v != NULL && json_is_null(v)) {
        *(int *)member(cfg, f) = 0;
        return MOE_OK;
      }
      return moe_field_int(c, f->key, member(cfg, f));
    }
    case MOE_FIELD_FLOAT: return moe_field_num(c, c->obj, f->key, member(cfg, f));
    case MOE_FIELD_BOOL: return moe_field_bool(c, f->key, member(cfg, f));
    case MOE_FIELD_STRING: return get_choice(c, f);
  }
  return MOE_OK;
}

moe_status moe_config_from_json(moe_config *cfg, const void *json_obj, const char *origin,
                                moe_error *err) {
  json_t *root = (json_t *)json_obj;
  memset(cfg, 0, sizeof *cfg);
  if (!json_is_object(root))
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: top level must be a JSON object", origin);
  field_ctx c = {root, origin, err};
  json_t *mt = json_object_get(root, "model_type");
  if (!json_is_string(mt))
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: required field 'model_type' is missing", origin);
  const moe_family *fam = moe_family_by_type(json_string_value(mt));
  if (fam == NULL) {
    char known[256];
    moe_family_type_list(known, sizeof known);
    return MOE_FAIL(err, MOE_ERR_UNSUPPORTED, "%s: model_type '%s' is not supported (expected %s)",
                    origin, json_string_value(mt), known);
  }
  *cfg = *fam->defaults;
  cfg->arch = fam->arch;
  for (const moe_field *const *t = fam->tables; *t; t++)
    for (const moe_field *f = *t; f->key; f++) MOE_TRY_RET(read_field(cfg, &c, f));
  if (fam->finish) MOE_TRY_RET(fam->finish(cfg, &c));
  return moe_config_validate(cfg, origin, err);
}

moe_status moe_config_load(moe_config *cfg, const char *path, moe_error *err) {
  json_t *root = moe_json_load_file(path, err);
  if (root == NULL) return err ? err->status : MOE_ERR_IO;
  moe_status st = moe_config_from_json(cfg, root, path, err);
  json_decref(root);
  return st;
}

/* ------------------------------------------------------------ the writer */

static json_t *save_field(const moe_config *cfg, const moe_field *f) {
  if (f->flags & MOE_F_NO_SAVE) return NULL;
  if (f->save) return f->save(cfg, f);
  switch (f->kind) {
    case MOE_FIELD_INT: {
      const int v = *(const int *)cmember(cfg, f);
      if (((f->flags & MOE_F_NULL_ZERO) && v == 0) || ((f->flags & MOE_F_NEG_NULL) && v < 0))
        return json_null();
      return json_integer(v);
    }
    case MOE_FIELD_FLOAT: return json_real(*(const float *)cmember(cfg, f));
    case MOE_FIELD_BOOL: return json_boolean(*(const bool *)cmember(cfg, f));
    case MOE_FIELD_STRING: return json_string(f->choices[0]);
  }
  return NULL;
}

moe_status moe_config_save(const moe_config *c, const char *path, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_family *fam = moe_family_by_arch(c->arch);
  json_t *o = json_object();
  MOE_CHECK(fam != NULL, err, MOE_ERR_INVALID, "%s: unknown model family %d", path, (int)c->arch);
  MOE_CHECK_ALLOC(o, err, 64);
  json_object_set_new(o, "model_type", json_string(fam->model_types[0]));
  for (const moe_field *const *t = fam->tables; *t; t++)
    for (const moe_field *f = *t; f->key; f++) {
      json_t *v = save_field(c, f);
      if (v) json_object_set_new(o, f->key, v);
    }
  moe_publish pub;
  MOE_TRY(moe_publish_open(&pub, path, "the config", err));
  if (json_dumpf(o, pub.f, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0) moe_publish_fail(&pub);
  MOE_TRY(moe_publish_commit(&pub, err));
cleanup:
  json_decref(o);
  return st;
}

/* ------------------------------------------------------------ sizes */

int moe_config_n_moe_layers(const moe_config *cfg) {
  int n = 0;
  for (int i = 0; i < cfg->n_layers && i < MOE_MAX_LAYERS; i++) n += cfg->is_moe[i];
  return n;
}

size_t moe_config_expert_bytes(const moe_config *cfg, size_t elem_size) {
  const size_t mats = cfg->ffn_act == MOE_FFN_RELU ? 2u : 3u;
  return moe_prod(mats * (size_t)cfg->expert_ffn, (size_t)cfg->hidden, elem_size, 1);
}
