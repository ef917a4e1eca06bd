/* config.json parsing for the Mixtral and Qwen2-MoE families. */
#include "moe/config.h"

#include "checked.h"
#include "moe/backend.h"
#include "moe/jsonfile.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct field_ctx {
  json_t *obj;
  const char *origin;
  moe_error *err;
} field_ctx;

/* Reads an integer field.  required: missing is an error; otherwise *out
 * keeps its default.  A JSON null counts as missing. */
static moe_status get_int(const field_ctx *c, const char *key, bool required, int *out) {
  json_t *v = json_object_get(c->obj, key);
  if (v == NULL || json_is_null(v)) {
    if (required)
      return MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s: required field '%s' is missing", c->origin, key);
    return MOE_OK;
  }
  if (!json_is_integer(v))
    return MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s: field '%s' must be an integer", c->origin, key);
  json_int_t x = json_integer_value(v);
  if (x < 0 || x > 1 << 30)
    return MOE_FAIL(c->err, MOE_ERR_INVALID, "%s: field '%s' = %lld is out of range", c->origin,
                    key, (long long)x);
  *out = (int)x;
  return MOE_OK;
}

static moe_status get_num(const field_ctx *c, json_t *obj, const char *key, bool required,
                          float *out) {
  json_t *v = json_object_get(obj, key);
  if (v == NULL || json_is_null(v)) {
    if (required)
      return MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s: required field '%s' is missing", c->origin, key);
    return MOE_OK;
  }
  if (!json_is_number(v))
    return MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s: field '%s' must be a number", c->origin, key);
  *out = (float)json_number_value(v);
  return MOE_OK;
}

static moe_status get_bool(const field_ctx *c, const char *key, bool *out) {
  json_t *v = json_object_get(c->obj, key);
  if (v == NULL || json_is_null(v)) return MOE_OK;
  if (!json_is_boolean(v))
    return MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s: field '%s' must be true or false", c->origin, key);
  *out = json_is_true(v);
  return MOE_OK;
}

moe_status moe_config_validate(const moe_config *cfg, const char *origin, moe_error *err) {
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
  if (moe_config_is_mla(cfg)) {
    if (cfg->rope_dim < 2 || cfg->nope_dim < 0 || cfg->v_dim < 1 || cfg->q_rank < 0 ||
        cfg->head_dim != cfg->nope_dim + cfg->rope_dim)
      return MOE_FAIL(err, MOE_ERR_INVALID,
                      "%s: multi-head latent attention dimensions out of range (qk_nope_head_dim "
                      "%d, qk_rope_head_dim %d, v_head_dim %d, q_lora_rank %d)", origin,
                      cfg->nope_dim, cfg->rope_dim, cfg->v_dim, cfg->q_rank);
  }
  if (moe_config_rot_dim(cfg) % 2 != 0 && cfg->arch != MOE_ARCH_SWITCH)
    return MOE_FAIL(err, MOE_ERR_INVALID, "%s: the rotated head dimension (%d) must be even for "
                    "RoPE", origin, moe_config_rot_dim(cfg));
  if (cfg->rope_kind == MOE_ROPE_YARN) {
    const double f = cfg->rope_factor > 0 ? cfg->rope_factor
                                          : (double)cfg->max_pos / (cfg->rope_orig_max > 0 ? cfg->rope_orig_max : 1);
    if (cfg->arch == MOE_ARCH_SWITCH || !(cfg->rope_factor >= 0.0f) || !isfinite(cfg->rope_factor) ||
        !(f > 0) || cfg->rope_orig_max < 1 || !(cfg->rope_theta > 1.0f) ||
        !(cfg->rope_beta_fast > 0.0f) ||
        !(cfg->rope_beta_slow > 0.0f) || !isfinite(cfg->rope_beta_fast) ||
        !isfinite(cfg->rope_beta_slow) || !isfinite(cfg->rope_mscale) ||
        !isfinite(cfg->rope_mscale_all_dim) || !(cfg->rope_attn_factor >= 0.0f) ||
        !isfinite(cfg->rope_attn_factor))
      return MOE_FAIL(err, MOE_ERR_INVALID,
                      "%s: yarn RoPE parameters out of range (factor %g, original_max_position_"
                      "embeddings %d, beta_fast %g, beta_slow %g, attention_factor %g)",
                      origin, cfg->rope_factor, cfg->rope_orig_max, cfg->rope_beta_fast,
                      cfg->rope_beta_slow, cfg->rope_attn_factor);
  }
  int n_moe = moe_config_n_moe_layers(cfg);
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
  /* sizes the layout will multiply out: each must fit (f32, the widest) */
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
      moe_status st = get_num(c, obj, "factor", false, &cfg->rope_factor);
      if (st == MOE_OK) st = get_int(&sub, "original_max_position_embeddings", false, &cfg->rope_orig_max);
      if (st == MOE_OK) st = get_num(c, obj, "beta_fast", false, &cfg->rope_beta_fast);
      if (st == MOE_OK) st = get_num(c, obj, "beta_slow", false, &cfg->rope_beta_slow);
      if (st == MOE_OK) st = get_num(c, obj, "mscale", false, &cfg->rope_mscale);
      if (st == MOE_OK) st = get_num(c, obj, "mscale_all_dim", false, &cfg->rope_mscale_all_dim);
      if (st == MOE_OK) st = get_num(c, obj, "attention_factor", false, &cfg->rope_attn_factor);
      if (st == MOE_OK) st = get_bool(&sub, "truncate", &cfg->rope_truncate);
      if (st != MOE_OK) return st;
      /* transformers: "or 32", "or 1" (a 0 takes the default too) */
      if (cfg->rope_beta_fast == 0.0f) cfg->rope_beta_fast = 32.0f;
      if (cfg->rope_beta_slow == 0.0f) cfg->rope_beta_slow = 1.0f;
      float prf = 1.0f;
      st = get_num(c, obj, "partial_rotary_factor", false, &prf);
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
  moe_status st = get_num(c, obj, "rope_theta", false, theta);
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
  if (!moe_config_is_mla(cfg)) return 1.0f / sqrtf((float)cfg->head_dim);
  double scale = pow((double)(cfg->nope_dim + cfg->rope_dim), -0.5);
  if (cfg->rope_kind == MOE_ROPE_YARN && cfg->rope_mscale_all_dim != 0.0f) {
    const double m = yarn_mscale(yarn_factor(cfg), cfg->rope_mscale_all_dim);
    scale = scale * m * m;
  }
  return (float)scale;
}

/* The experts of a family whose transformers 5 config writes
 * num_local_experts (its attribute_map) and whose checkpoints say
 * num_experts: either, and both only when they agree. */
static moe_status get_experts(const field_ctx *c, int *out) {
  int a = -1, b = -1;
  moe_status st = get_int(c, "num_experts", false, &a);
  if (st == MOE_OK) st = get_int(c, "num_local_experts", false, &b);
  if (st != MOE_OK) return st;
  if (a >= 0 && b >= 0 && a != b)
    return MOE_FAIL(c->err, MOE_ERR_INVALID,
                    "%s: num_experts (%d) contradicts num_local_experts (%d)", c->origin, a, b);
  if (a >= 0) *out = a;
  else if (b >= 0) *out = b;
  return MOE_OK;
}

/* The defaults transformers gives each family's config fields (checked
 * against transformers 5.24 MixtralConfig() and Qwen2MoeConfig(); the
 * peer fixtures mixtral-defaults and qwen2moe-defaults omit them).  A field
 * absent from config.json takes these values. */
static void family_defaults(moe_config *cfg) {
  if (cfg->arch == MOE_ARCH_MIXTRAL) {
    cfg->vocab = 32000;
    cfg->hidden = 4096;
    cfg->expert_ffn = 14336;
    cfg->n_layers = 32;
    cfg->n_heads = 32;
    cfg->n_kv_heads = 8;
    cfg->max_pos = 4096 * 32;
    cfg->rms_eps = 1e-5f;
    cfg->rope_theta = 1e6f;
    cfg->top_k = 2;
    cfg->n_experts = 8;
    cfg->norm_topk = true; /* Mixtral always renormalises the top-k weights */
  } else if (cfg->arch == MOE_ARCH_QWEN3_MOE) { /* Qwen3MoeConfig() */
    cfg->vocab = 151936;
    cfg->hidden = 2048;
    cfg->dense_ffn = 6144;
    cfg->n_layers = 24;
    cfg->n_heads = 32;
    cfg->n_kv_heads = 4;
    cfg->max_pos = 32768;
    cfg->rms_eps = 1e-6f;
    cfg->rope_theta = 10000.0f;
    cfg->expert_ffn = 768;
    cfg->top_k = 8;
    cfg->n_experts = 128;
    cfg->norm_topk = false;
    cfg->qk_norm = MOE_QK_NORM_HEAD;
  } else if (cfg->arch == MOE_ARCH_OLMOE) { /* OlmoeConfig() */
    cfg->vocab = 50304;
    cfg->hidden = 2048;
    cfg->expert_ffn = 2048;
    cfg->n_layers = 16;
    cfg->n_heads = 16;
    cfg->n_kv_heads = -1; /* None: as many as the query heads */
    cfg->max_pos = 4096;
    cfg->rms_eps = 1e-5f;
    cfg->rope_theta = 10000.0f;
    cfg->top_k = 8;
    cfg->n_experts = 64;
    cfg->norm_topk = false;
    cfg->qk_norm = MOE_QK_NORM_FULL;
  } else if (cfg->arch == MOE_ARCH_DEEPSEEK_V2) { /* DeepseekV2Config() */
    cfg->vocab = 102400;
    cfg->hidden = 4096;
    cfg->dense_ffn = 11008;
    cfg->n_layers = 32;
    cfg->n_heads = 32;
    cfg->n_kv_heads = -1;
    cfg->max_pos = 2048;
    cfg->rms_eps = 1e-6f;
    cfg->rope_theta = 10000.0f;
    cfg->expert_ffn = 1407;
    cfg->n_experts = 64;
    cfg->q_rank = 1536;
    cfg->kv_rank = 512;
    cfg->nope_dim = 128;
    cfg->rope_dim = 64;
    cfg->v_dim = 128;
    cfg->routed_scale = 1.0f;
  } else if (cfg->arch == MOE_ARCH_DEEPSEEK_V3) { /* DeepseekV3Config() */
    cfg->vocab = 129280;
    cfg->hidden = 7168;
    cfg->dense_ffn = 18432;
    cfg->n_layers = 61;
    cfg->n_heads = 128;
    cfg->n_kv_heads = -1;
    cfg->max_pos = 4096;
    cfg->rms_eps = 1e-6f;
    cfg->rope_theta = 10000.0f;
    cfg->expert_ffn = 2048;
    cfg->n_experts = 256;
    cfg->top_k = 8;
    cfg->q_rank = 1536;
    cfg->kv_rank = 512;
    cfg->nope_dim = 128;
    cfg->rope_dim = 64;
    cfg->v_dim = 128;
    cfg->n_group = 8;
    cfg->topk_group = 4;
    cfg->routed_scale = 2.5f;
    cfg->norm_topk = true;
    cfg->rope_interleave = true;
  } else {
    cfg->vocab = 151936;
    cfg->hidden = 2048;
    cfg->dense_ffn = 5632;
    cfg->n_layers = 24;
    cfg->n_heads = 16;
    cfg->n_kv_heads = 16;
    cfg->max_pos = 32768;
    cfg->rms_eps = 1e-6f;
    cfg->rope_theta = 10000.0f;
    cfg->expert_ffn = 1408;
    cfg->shared_ffn = 5632;
    cfg->top_k = 4;
    cfg->n_experts = 60;
    cfg->norm_topk = false;
    cfg->qkv_bias = true;
  }
}

/* transformers' is_sparse of layer i in a stack with this sparse step. */
static bool switch_sparse(int i, int step) { return step > 0 && (i % step == 1 || step == 1); }

/* The sparse step of one stack as SwitchTransformersConfig (5.24) has it:
 * the explicit *_sparse_step field when present, else num_layers //
 * num_sparse_*_layers (num_layers when that is 0).  Both present and
 * different is a contradiction. */
static moe_status switch_step(const field_ctx *c, const char *step_key, const char *count_key,
                              int layers, int *step) {
  int count = 3, explicit_step = -1;
  moe_status st = get_int(c, count_key, false, &count);
  if (st == MOE_OK) st = get_int(c, step_key, false, &explicit_step);
  if (st != MOE_OK) return st;
  const int derived = count > 0 ? layers / count : layers;
  const bool has_count = json_object_get(c->obj, count_key) != NULL &&
                         !json_is_null(json_object_get(c->obj, count_key));
  if (explicit_step >= 0 && has_count && explicit_step != derived)
    return MOE_FAIL(c->err, MOE_ERR_INVALID,
                    "%s: field '%s' = %d contradicts %s = %d (%d layers give a step of %d)",
                    c->origin, step_key, explicit_step, count_key, count, layers, derived);
  *step = explicit_step >= 0 ? explicit_step : derived;
  return MOE_OK;
}

/* A string field that must be one of the accepted values when present. */
static moe_status get_choice(const field_ctx *c, const char *key, const char *const *ok,
                             const char *why) {
  json_t *v = json_object_get(c->obj, key);
  if (v == NULL || json_is_null(v)) return MOE_OK;
  if (!json_is_string(v))
    return MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s: field '%s' must be a string", c->origin, key);
  for (; *ok; ok++)
    if (strcmp(json_string_value(v), *ok) == 0) return MOE_OK;
  return MOE_FAIL(c->err, MOE_ERR_UNSUPPORTED, "%s: field '%s' = \"%s\" is not supported (%s)",
                  c->origin, key, json_string_value(v), why);
}

/* An optional token id: absent keeps *out, null means none (-1). */
static moe_status get_token_id(const field_ctx *c, const char *key, int *out) {
  json_t *v = json_object_get(c->obj, key);
  if (v != NULL && json_is_null(v)) {
    *out = -1;
    return MOE_OK;
  }
  if (v != NULL && json_is_array(v)) { /* eos may be a list: the first one ends */
    if (json_array_size(v) == 0) {
      *out = -1;
      return MOE_OK;
    }
    v = json_array_get(v, 0);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1 << 30)
      return MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s: field '%s' must hold token ids", c->origin, key);
    *out = (int)json_integer_value(v);
    return MOE_OK;
  }
  return get_int(c, key, false, out);
}

/* Switch Transformers (SwitchTransformersConfig of transformers 5.24: the
 * same fields and defaults; T5's legacy feed_forward_proj / is_gated_act
 * are accepted when they say ReLU). */
static moe_status switch_from_json(moe_config *cfg, const field_ctx *c) {
  moe_status st = MOE_OK;
  moe_error *err = c->err;
  const char *origin = c->origin;
  cfg->vocab = 32128;
  cfg->hidden = 768;
  cfg->head_dim = 64;
  cfg->expert_ffn = 2048;
  cfg->expert_capacity = 64;
  int enc_layers = 12, dec_layers = -1;
  cfg->n_heads = 12;
  cfg->n_experts = 8;
  cfg->top_k = 1;
  cfg->norm_topk = false;
  cfg->rel_buckets = 32;
  cfg->rel_max_distance = 128;
  cfg->rms_eps = 1e-6f;
  cfg->tie_embeddings = true;
  cfg->pad_id = 0;
  cfg->eos_id = 1;
  cfg->decoder_start = -1;
  cfg->ffn_act = MOE_FFN_RELU;
  cfg->rope_theta = 10000.0f; /* unused: positions are relative buckets */
  cfg->max_pos = 1 << 20;     /* no position table: any length */
  MOE_TRY(get_int(c, "vocab_size", false, &cfg->vocab));
  MOE_TRY(get_int(c, "d_model", false, &cfg->hidden));
  MOE_TRY(get_int(c, "d_kv", false, &cfg->head_dim));
  MOE_TRY(get_int(c, "d_ff", false, &cfg->expert_ffn));
  MOE_TRY(get_int(c, "num_heads", false, &cfg->n_heads));
  MOE_TRY(get_int(c, "num_layers", false, &enc_layers));
  MOE_TRY(get_int(c, "num_decoder_layers", false, &dec_layers));
  if (dec_layers < 0) dec_layers = enc_layers; /* null or absent: symmetric */
  MOE_TRY(get_int(c, "num_experts", false, &cfg->n_experts));
  MOE_TRY(get_int(c, "expert_capacity", false, &cfg->expert_capacity));
  MOE_TRY(get_int(c, "relative_attention_num_buckets", false, &cfg->rel_buckets));
  MOE_TRY(get_int(c, "relative_attention_max_distance", false, &cfg->rel_max_distance));
  MOE_TRY(get_num(c, c->obj, "layer_norm_epsilon", false, &cfg->rms_eps));
  MOE_TRY(get_bool(c, "router_bias", &cfg->router_logit_bias));
  MOE_TRY(get_bool(c, "tie_word_embeddings", &cfg->tie_embeddings));
  MOE_TRY(get_token_id(c, "pad_token_id", &cfg->pad_id));
  MOE_TRY(get_token_id(c, "eos_token_id", &cfg->eos_id));
  MOE_TRY(get_token_id(c, "decoder_start_token_id", &cfg->decoder_start));
  /* transformers' _shift_right and generate() need a start token; Switch
   * checkpoints use the pad token, and so do we when none is given */
  if (cfg->decoder_start < 0) cfg->decoder_start = cfg->pad_id;
  MOE_CHECK(cfg->decoder_start >= 0, err, MOE_ERR_INVALID,
            "%s: neither decoder_start_token_id nor pad_token_id is set (the decoder needs a "
            "start token)", origin);
  MOE_CHECK(cfg->decoder_start < cfg->vocab, err, MOE_ERR_INVALID,
            "%s: decoder_start_token_id %d is outside the vocabulary (0..%d)", origin,
            cfg->decoder_start, cfg->vocab - 1);
  static const char *const relu[] = {"relu", NULL}, *const f32[] = {"float32", NULL};
  MOE_TRY(get_choice(c, "dense_act_fn", relu,
                     "transformers' Switch FFN is wi, activation, wo; only relu is implemented"));
  MOE_TRY(get_choice(c, "feed_forward_proj", relu,
                     "gated feed-forward layers are not part of transformers' Switch model"));
  bool gated = false;
  MOE_TRY(get_bool(c, "is_gated_act", &gated));
  MOE_CHECK(!gated, err, MOE_ERR_UNSUPPORTED,
            "%s: field 'is_gated_act' = true is not supported (transformers' Switch FFN is not "
            "gated)", origin);
  MOE_TRY(get_choice(c, "router_dtype", f32,
                     "the router runs in float32, as the Switch paper's selective precision"));
  bool enc_dec = true;
  MOE_TRY(get_bool(c, "is_encoder_decoder", &enc_dec));
  MOE_CHECK(enc_dec, err, MOE_ERR_UNSUPPORTED,
            "%s: field 'is_encoder_decoder' = false: only the encoder-decoder model is supported",
            origin);
  MOE_CHECK(enc_layers >= 1 && dec_layers >= 1, err, MOE_ERR_INVALID,
            "%s: num_layers (%d) and num_decoder_layers (%d) must be positive", origin, enc_layers,
            dec_layers);
  MOE_CHECK(enc_layers + dec_layers <= MOE_MAX_LAYERS, err, MOE_ERR_UNSUPPORTED,
            "%s: num_layers + num_decoder_layers = %d exceeds the limit %d", origin,
            enc_layers + dec_layers, MOE_MAX_LAYERS);
  MOE_CHECK(cfg->rel_buckets >= 4, err, MOE_ERR_INVALID,
            "%s: field 'relative_attention_num_buckets' = %d must be >= 4 (half of the "
            "encoder's buckets per direction, half of those exact)", origin, cfg->rel_buckets);
  MOE_CHECK(cfg->rel_max_distance > cfg->rel_buckets / 2, err, MOE_ERR_INVALID,
            "%s: field 'relative_attention_max_distance' = %d must exceed half the buckets (%d)",
            origin, cfg->rel_max_distance, cfg->rel_buckets / 2);
  MOE_TRY(switch_step(c, "encoder_sparse_step", "num_sparse_encoder_layers", enc_layers,
                      &cfg->enc_sparse_step));
  MOE_TRY(switch_step(c, "decoder_sparse_step", "num_sparse_decoder_layers", dec_layers,
                      &cfg->dec_sparse_step));
  cfg->n_enc_layers = enc_layers;
  cfg->n_layers = enc_layers + dec_layers;
  cfg->n_kv_heads = cfg->n_heads;
  cfg->dense_ffn = cfg->expert_ffn;
  for (int i = 0; i < enc_layers; i++) cfg->is_moe[i] = switch_sparse(i, cfg->enc_sparse_step);
  for (int i = 0; i < dec_layers; i++)
    cfg->is_moe[enc_layers + i] = switch_sparse(i, cfg->dec_sparse_step);
  if (moe_config_n_moe_layers(cfg) == 0) cfg->n_experts = 0;
  MOE_TRY(moe_config_validate(cfg, origin, err));
cleanup:
  return st;
}

/* An integer field where JSON null means 0 ("none": q_lora_rank,
 * n_group, topk_group). */
static moe_status get_int_or_null(const field_ctx *c, const char *key, int *out) {
  json_t *v = json_object_get(c->obj, key);
  if (v != NULL && json_is_null(v)) {
    *out = 0;
    return MOE_OK;
  }
  return get_int(c, key, false, out);
}

/* DeepSeek-V2/V3 fields (DeepseekV2Config / DeepseekV3Config of
 * transformers 5.24, defaults included), after the common ones.  What
 * transformers' own model ignores is ignored here too: V2 never
 * renormalises the top-k weights (norm_topk_prob is unused), V3 always
 * routes by sigmoid, bias and top-2 group sums (topk_method,
 * scoring_func are unused), moe_layer_freq is unused, and the
 * multi-token-prediction layers (num_nextn_predict_layers) are not part
 * of the causal LM. */
static moe_status deepseek_from_json(moe_config *cfg, const field_ctx *c) {
  moe_status st = MOE_OK;
  moe_error *err = c->err;
  const char *origin = c->origin;
  const bool v3 = cfg->arch == MOE_ARCH_DEEPSEEK_V3;
  int n_shared = v3 ? 1 : 2, first_dense = v3 ? 3 : 0, kvh = -1;
  MOE_TRY(get_int(c, "n_routed_experts", false, &cfg->n_experts));
  MOE_TRY(get_int(c, "moe_intermediate_size", false, &cfg->expert_ffn));
  MOE_TRY(get_int(c, "intermediate_size", false, &cfg->dense_ffn));
  MOE_TRY(get_int(c, "n_shared_experts", false, &n_shared));
  MOE_TRY(get_int(c, "first_k_dense_replace", false, &first_dense));
  MOE_TRY(get_int_or_null(c, "q_lora_rank", &cfg->q_rank));
  MOE_TRY(get_int(c, "kv_lora_rank", false, &cfg->kv_rank));
  MOE_TRY(get_int(c, "qk_nope_head_dim", false, &cfg->nope_dim));
  MOE_TRY(get_int(c, "qk_rope_head_dim", false, &cfg->rope_dim));
  MOE_TRY(get_int(c, "v_head_dim", false, &cfg->v_dim));
  MOE_TRY(get_int_or_null(c, "n_group", &cfg->n_group));
  MOE_TRY(get_int_or_null(c, "topk_group", &cfg->topk_group));
  MOE_TRY(get_num(c, c->obj, "routed_scaling_factor", false, &cfg->routed_scale));
  MOE_TRY(get_bool(c, "attention_bias", &cfg->o_bias));
  MOE_TRY(get_int(c, "num_key_value_heads", false, &kvh));
  bool mlp_bias = false;
  MOE_TRY(get_bool(c, "mlp_bias", &mlp_bias));
  MOE_CHECK(!mlp_bias, err, MOE_ERR_UNSUPPORTED,
            "%s: field 'mlp_bias' = true is not supported (biases on the feed-forward layers)",
            origin);
  /* MLA has one latent for all heads; transformers expands it to every
   * query head, which only works when the key/value heads are as many */
  MOE_CHECK(kvh < 0 || kvh == cfg->n_heads, err, MOE_ERR_UNSUPPORTED,
            "%s: num_key_value_heads = %d differs from num_attention_heads = %d (multi-head "
            "latent attention expands its latent to every head)", origin, kvh, cfg->n_heads);
  cfg->n_kv_heads = cfg->n_heads;
  cfg->head_dim = cfg->nope_dim + cfg->rope_dim; /* config.json's head_dim is the rope dim */
  cfg->router_ex = true;
  if (v3) {
    MOE_TRY(get_bool(c, "norm_topk_prob", &cfg->norm_topk));
    MOE_TRY(get_bool(c, "rope_interleave", &cfg->rope_interleave));
    cfg->scoring = MOE_SCORING_SIGMOID;
    cfg->group_score = MOE_GROUP_TOP2_SUM;
    cfg->group_mask_neg_inf = true;
    MOE_CHECK(cfg->n_group >= 1 && cfg->topk_group >= 1, err, MOE_ERR_INVALID,
              "%s: n_group and topk_group must be set (DeepSeek-V3 always routes by groups)",
              origin);
  } else {
    /* V2's rotary embedding is the complex (interleaved-pair) form */
    cfg->rope_interleave = true;
    cfg->norm_topk = false;
    cfg->scoring = MOE_SCORING_SOFTMAX;
    cfg->group_score = MOE_GROUP_MAX;
    json_t *tm = json_object_get(c->obj, "topk_method");
    const char *method = tm == NULL || json_is_null(tm) ? "greedy"
                         : json_is_string(tm)           ? json_string_value(tm)
                                                        : NULL;
    MOE_CHECK(method != NULL, err, MOE_ERR_FORMAT, "%s: field 'topk_method' must be a string",
              origin);
    if (strcmp(method, "greedy") == 0) {
      cfg->n_group = cfg->topk_group = 0;
    } else {
      MOE_CHECK(strcmp(method, "group_limited_greedy") == 0, err, MOE_ERR_UNSUPPORTED,
                "%s: field 'topk_method' = \"%s\" is not supported (transformers' DeepSeek-V2 "
                "routes by greedy or group_limited_greedy)", origin, method);
      MOE_CHECK(cfg->n_group >= 1 && cfg->topk_group >= 1, err, MOE_ERR_INVALID,
                "%s: group_limited_greedy routing needs n_group and topk_group", origin);
    }
    /* num_experts_per_tok has no default in DeepseekV2Config */
    MOE_CHECK(json_is_integer(json_object_get(c->obj, "num_experts_per_tok")), err,
              MOE_ERR_FORMAT, "%s: required field 'num_experts_per_tok' is missing", origin);
  }
  MOE_CHECK(isfinite(cfg->routed_scale) && cfg->routed_scale > 0.0f, err, MOE_ERR_INVALID,
            "%s: routed_scaling_factor must be a positive number", origin);
  MOE_CHECK(cfg->kv_rank >= 1 && cfg->rope_dim >= 2 && cfg->v_dim >= 1, err, MOE_ERR_INVALID,
            "%s: kv_lora_rank, qk_rope_head_dim and v_head_dim must be positive", origin);
  MOE_CHECK(cfg->n_layers <= MOE_MAX_LAYERS, err, MOE_ERR_UNSUPPORTED,
            "%s: num_hidden_layers = %d exceeds the limit %d", origin, cfg->n_layers,
            MOE_MAX_LAYERS);
  MOE_CHECK(n_shared <= (1 << 16), err, MOE_ERR_INVALID, "%s: n_shared_experts %d is out of range",
            origin, n_shared);
  const size_t shared = moe_prod((size_t)n_shared, (size_t)cfg->expert_ffn, 1, 1);
  MOE_CHECK(shared <= (size_t)1 << 30, err, MOE_ERR_INVALID,
            "%s: n_shared_experts x moe_intermediate_size is out of range", origin);
  cfg->shared_ffn = (int)shared;
  for (int i = 0; i < cfg->n_layers; i++) cfg->is_moe[i] = cfg->n_experts > 0 && i >= first_dense;
cleanup:
  return st;
}

moe_status moe_config_from_json(moe_config *cfg, const void *json_obj, const char *origin,
                                moe_error *err) {
  json_t *root = (json_t *)json_obj;
  moe_status st = MOE_OK;
  memset(cfg, 0, sizeof *cfg);
  if (!json_is_object(root))
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: top level must be a JSON object", origin);
  field_ctx c = {root, origin, err};

  json_t *mt = json_object_get(root, "model_type");
  if (!json_is_string(mt))
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: required field 'model_type' is missing", origin);
  const char *type = json_string_value(mt);
  if (strcmp(type, "mixtral") == 0) {
    cfg->arch = MOE_ARCH_MIXTRAL;
  } else if (strcmp(type, "qwen2_moe") == 0) {
    cfg->arch = MOE_ARCH_QWEN2_MOE;
  } else if (strcmp(type, "qwen3_moe") == 0) {
    cfg->arch = MOE_ARCH_QWEN3_MOE;
  } else if (strcmp(type, "olmoe") == 0) {
    cfg->arch = MOE_ARCH_OLMOE;
  } else if (strcmp(type, "deepseek_v2") == 0) {
    cfg->arch = MOE_ARCH_DEEPSEEK_V2;
  } else if (strcmp(type, "deepseek_v3") == 0) {
    cfg->arch = MOE_ARCH_DEEPSEEK_V3;
  } else if (strcmp(type, "switch_transformers") == 0) {
    cfg->arch = MOE_ARCH_SWITCH;
    return switch_from_json(cfg, &c);
  } else {
    return MOE_FAIL(err, MOE_ERR_UNSUPPORTED,
                    "%s: model_type '%s' is not supported (expected mixtral, qwen2_moe, qwen3_moe, "
                    "olmoe, deepseek_v2, deepseek_v3 or switch_transformers)", origin, type);
  }
  family_defaults(cfg);

  MOE_TRY(get_int(&c, "hidden_size", false, &cfg->hidden));
  MOE_TRY(get_int(&c, "num_hidden_layers", false, &cfg->n_layers));
  MOE_TRY(get_int(&c, "num_attention_heads", false, &cfg->n_heads));
  /* an explicit null means "as many as the query heads" (transformers 4) */
  json_t *kvh = json_object_get(root, "num_key_value_heads");
  if (kvh != NULL && json_is_null(kvh)) cfg->n_kv_heads = cfg->n_heads;
  MOE_TRY(get_int(&c, "num_key_value_heads", false, &cfg->n_kv_heads));
  MOE_TRY(get_int(&c, "vocab_size", false, &cfg->vocab));
  MOE_TRY(get_int(&c, "max_position_embeddings", false, &cfg->max_pos));
  MOE_TRY(get_int(&c, "num_experts_per_tok", false, &cfg->top_k));
  MOE_TRY(get_num(&c, root, "rms_norm_eps", false, &cfg->rms_eps));
  /* rope_theta sits at the top level in older configs and under
   * rope_parameters in newer ones; the two must agree when both exist.
   * Any scaled RoPE is refused. */
  float theta_top = 0.0f, theta_nested = 0.0f, theta_legacy = 0.0f;
  MOE_TRY(get_num(&c, root, "rope_theta", false, &theta_top));
  {
    json_t *given = json_object_get(root, "rope_theta");
    MOE_CHECK(given == NULL || json_is_null(given) || (theta_top > 1.0f && isfinite(theta_top)), err,
              MOE_ERR_INVALID, "%s: rope_theta %g must be a finite number > 1 (it is not replaced "
              "by a default)", origin, (double)theta_top);
  }
  {
    /* both present: transformers 5 reads rope_parameters; they must not
     * say different things */
    moe_config legacy = *cfg;
    MOE_TRY(parse_rope(&c, json_object_get(root, "rope_scaling"), "rope_scaling", &theta_legacy,
                       &legacy, true, 0));
    MOE_TRY(parse_rope(&c, json_object_get(root, "rope_parameters"), "rope_parameters",
                       &theta_nested, cfg, true, 0));
    json_t *rp = json_object_get(root, "rope_parameters"), *rs = json_object_get(root, "rope_scaling");
    if (rp == NULL || json_is_null(rp)) {
      legacy.rope_theta = cfg->rope_theta;
      *cfg = legacy;
    } else if (rs != NULL && !json_is_null(rs)) {
      MOE_CHECK(legacy.rope_kind == cfg->rope_kind, err, MOE_ERR_INVALID,
                "%s: rope_scaling and rope_parameters name different RoPE types", origin);
    }
  }
  MOE_CHECK(!(theta_top > 0 && theta_nested > 0 && theta_top != theta_nested), err,
            MOE_ERR_INVALID, "%s: rope_theta (%g) contradicts rope_parameters.rope_theta (%g)",
            origin, theta_top, theta_nested);
  if (theta_top > 0) cfg->rope_theta = theta_top;
  else if (theta_nested > 0) cfg->rope_theta = theta_nested;
  MOE_TRY(get_bool(&c, "tie_word_embeddings", &cfg->tie_embeddings));
  MOE_CHECK(cfg->hidden > 0 && cfg->n_heads > 0, err, MOE_ERR_INVALID,
            "%s: hidden_size and num_attention_heads must be positive", origin);
  cfg->head_dim = cfg->hidden / cfg->n_heads;
  MOE_TRY(get_int(&c, "head_dim", false, &cfg->head_dim));
  MOE_CHECK(json_is_integer(json_object_get(root, "head_dim")) || cfg->hidden % cfg->n_heads == 0,
            err, MOE_ERR_INVALID, "%s: hidden_size (%d) is not a multiple of num_attention_heads (%d)",
            origin, cfg->hidden, cfg->n_heads);
  json_t *hact = json_object_get(root, "hidden_act");
  MOE_CHECK(hact == NULL || (json_is_string(hact) && strcmp(json_string_value(hact), "silu") == 0),
            err, MOE_ERR_UNSUPPORTED, "%s: field 'hidden_act' must be \"silu\"", origin);

  if (cfg->n_kv_heads < 0) cfg->n_kv_heads = cfg->n_heads; /* OLMoE's None */
  if (cfg->arch == MOE_ARCH_DEEPSEEK_V2 || cfg->arch == MOE_ARCH_DEEPSEEK_V3) {
    MOE_TRY(deepseek_from_json(cfg, &c));
    goto validate;
  }
  if (cfg->arch == MOE_ARCH_QWEN3_MOE || cfg->arch == MOE_ARCH_OLMOE) {
    bool ab = false;
    MOE_TRY(get_bool(&c, "attention_bias", &ab));
    cfg->qkv_bias = cfg->o_bias = ab;
  }
  if (cfg->arch == MOE_ARCH_MIXTRAL) {
    MOE_TRY(get_int(&c, "num_local_experts", false, &cfg->n_experts));
    MOE_TRY(get_int(&c, "intermediate_size", false, &cfg->expert_ffn));
    MOE_TRY(get_int(&c, "sliding_window", false, &cfg->sliding_window));
    for (int i = 0; i < cfg->n_layers && i < MOE_MAX_LAYERS; i++) cfg->is_moe[i] = true;
  } else if (cfg->arch == MOE_ARCH_OLMOE) {
    MOE_TRY(get_experts(&c, &cfg->n_experts));
    MOE_TRY(get_int(&c, "intermediate_size", false, &cfg->expert_ffn));
    MOE_TRY(get_bool(&c, "norm_topk_prob", &cfg->norm_topk));
    json_t *clip = json_object_get(root, "clip_qkv");
    MOE_CHECK(clip == NULL || json_is_null(clip), err, MOE_ERR_UNSUPPORTED,
              "%s: field 'clip_qkv' is set: clamping q/k/v is not implemented", origin);
    MOE_CHECK(cfg->n_layers <= MOE_MAX_LAYERS, err, MOE_ERR_UNSUPPORTED,
              "%s: num_hidden_layers = %d exceeds the limit %d", origin, cfg->n_layers,
              MOE_MAX_LAYERS);
    for (int i = 0; i < cfg->n_layers; i++) cfg->is_moe[i] = true;
  } else {
    if (cfg->arch == MOE_ARCH_QWEN3_MOE)
      MOE_TRY(get_experts(&c, &cfg->n_experts));
    else
      MOE_TRY(get_int(&c, "num_experts", false, &cfg->n_experts));
    MOE_TRY(get_int(&c, "moe_intermediate_size", false, &cfg->expert_ffn));
    MOE_TRY(get_int(&c, "intermediate_size", false, &cfg->dense_ffn));
    if (cfg->arch == MOE_ARCH_QWEN2_MOE) {
      MOE_TRY(get_int(&c, "shared_expert_intermediate_size", false, &cfg->shared_ffn));
      MOE_TRY(get_bool(&c, "qkv_bias", &cfg->qkv_bias));
    }
    MOE_TRY(get_bool(&c, "norm_topk_prob", &cfg->norm_topk));
    bool sliding = false;
    MOE_TRY(get_bool(&c, "use_sliding_window", &sliding));
    if (sliding) {
      cfg->sliding_window = 4096;
      MOE_TRY(get_int(&c, "sliding_window", false, &cfg->sliding_window));
    }
    int step = 1;
    MOE_TRY(get_int(&c, "decoder_sparse_step", false, &step));
    MOE_CHECK(step >= 1, err, MOE_ERR_INVALID, "%s: field 'decoder_sparse_step' must be >= 1",
              origin);
    MOE_CHECK(cfg->n_layers <= MOE_MAX_LAYERS, err, MOE_ERR_UNSUPPORTED,
              "%s: num_hidden_layers = %d exceeds the limit %d", origin, cfg->n_layers,
              MOE_MAX_LAYERS);
    for (int i = 0; i < cfg->n_layers; i++)
      cfg->is_moe[i] = cfg->n_experts > 0 && (i + 1) % step == 0;
    json_t *only = json_object_get(root, "mlp_only_layers");
    if (only != NULL && !json_is_null(only)) {
      MOE_CHECK(json_is_array(only), err, MOE_ERR_FORMAT,
                "%s: field 'mlp_only_layers' must be an array of layer indices", origin);
      size_t i;
      json_t *v;
      json_array_foreach(only, i, v) {
        MOE_CHECK(json_is_integer(v) && json_integer_value(v) >= 0 &&
                      json_integer_value(v) < cfg->n_layers,
                  err, MOE_ERR_INVALID,
                  "%s: field 'mlp_only_layers' entry %zu is not a layer index in 0..%d", origin, i,
                  cfg->n_layers - 1);
        cfg->is_moe[json_integer_value(v)] = false;
      }
    }
  }
  /* Which layers slide: layer_types when given; otherwise every layer once
   * a window is set (conservative: a run that stays inside the window is
   * unaffected either way). */
  json_t *lt = json_object_get(root, "layer_types");
  if (cfg->sliding_window > 0 && json_is_array(lt)) {
    bool any = false;
    size_t i;
    json_t *v;
    json_array_foreach(lt, i, v) any |= json_is_string(v) && strcmp(json_string_value(v), "sliding_attention") == 0;
    if (!any) cfg->sliding_window = 0;
  }
validate:
  if (cfg->rope_kind == MOE_ROPE_YARN && cfg->rope_orig_max == 0) {
    /* transformers: the top-level original_max_position_embeddings, else
     * max_position_embeddings */
    cfg->rope_orig_max = cfg->max_pos;
    MOE_TRY(get_int(&c, "original_max_position_embeddings", false, &cfg->rope_orig_max));
  }
  MOE_TRY(moe_config_validate(cfg, origin, err));
cleanup:
  return st;
}

moe_status moe_config_load(moe_config *cfg, const char *path, moe_error *err) {
  json_t *root = moe_json_load_file(path, err);
  if (root == NULL) return err ? err->status : MOE_ERR_IO;
  moe_status st = moe_config_from_json(cfg, root, path, err);
  json_decref(root);
  return st;
}

int moe_config_n_moe_layers(const moe_config *cfg) {
  int n = 0;
  for (int i = 0; i < cfg->n_layers && i < MOE_MAX_LAYERS; i++) n += cfg->is_moe[i];
  return n;
}

size_t moe_config_expert_bytes(const moe_config *cfg, size_t elem_size) {
  const size_t mats = cfg->ffn_act == MOE_FFN_RELU ? 2u : 3u;
  return moe_prod(mats * (size_t)cfg->expert_ffn, (size_t)cfg->hidden, elem_size, 1);
}
