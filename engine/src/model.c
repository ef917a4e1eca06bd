/* Model weights in host memory: the tensor table (Hugging Face names for
 * both families), synthetic initialisation, checkpoint loading and saving. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <string.h>

#include "checked.h"
#include "model_internal.h"
#include "moe/device.h"
#include "moe/publish.h"
#include "moe/safetensors.h"
#include "moe/rng.h"

/* ------------------------------------------------------------ tensor table */

typedef struct spec_builder {
  moe_model *m;
  size_t cap;
  moe_error *err;
} spec_builder;

static moe_status add_spec(spec_builder *b, moe_role role, int layer, int expert, size_t rows,
                           size_t cols, bool vector, bool optional, const char *fmt, ...)
    __attribute__((format(printf, 9, 10)));

static moe_status add_spec(spec_builder *b, moe_role role, int layer, int expert, size_t rows,
                           size_t cols, bool vector, bool optional, const char *fmt, ...) {
  moe_model *m = b->m;
  if (m->n_specs == b->cap) {
    size_t cap = b->cap ? 2 * b->cap : 64;
    moe_tensor_spec *p = realloc(m->specs, cap * sizeof *p);
    if (p == NULL) return MOE_FAIL(b->err, MOE_ERR_OOM, "out of host memory (tensor table)");
    m->specs = p;
    b->cap = cap;
  }
  moe_tensor_spec *s = &m->specs[m->n_specs];
  memset(s, 0, sizeof *s);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->name, sizeof s->name, fmt, ap);
  va_end(ap);
  s->role = role;
  s->layer = layer;
  s->expert = expert;
  s->rows = rows;
  s->cols = cols;
  s->vector = vector;
  s->optional = optional;
  s->is_expert = expert >= 0;
  if (!s->is_expert) m->dense_index[layer < 0 ? m->cfg.n_layers : layer][role] = (int)m->n_specs;
  m->n_specs++;
  return MOE_OK;
}

#define ADD(...)                                  \
  do {                                            \
    if ((st = add_spec(&b, __VA_ARGS__)) != MOE_OK) \
      return st;                                  \
  } while (0)

/* The last spec added may also be found under another name. */
static void set_alt(moe_model *m, const char *alt) {
  snprintf(m->specs[m->n_specs - 1].alt, sizeof m->specs[0].alt, "%s", alt);
}

/* The name of the embedding whose dtype a checkpoint's weights take, and
 * another name for it (may be ""). */
static void embed_names(const moe_config *c, const char **name, const char **alt) {
  if (c->arch != MOE_ARCH_SWITCH) {
    *name = "model.embed_tokens.weight";
    *alt = "";
  } else if (c->tie_embeddings) {
    *name = "shared.weight";
    *alt = "decoder.embed_tokens.weight";
  } else {
    *name = "decoder.embed_tokens.weight";
    *alt = "shared.weight";
  }
}

/* Switch Transformers, as SwitchTransformersForConditionalGeneration
 * (transformers 5.24, and 4.x: the names did not change) names its
 * tensors.  Embeddings: with tied embeddings everything is shared.weight;
 * untied, transformers 5 gives the encoder and the decoder their own
 * tables (encoder.embed_tokens / decoder.embed_tokens), which 4.x
 * checkpoints hold as copies of shared.weight, so either name serves.
 * Experts are wi (up) and wo (down), no gate. */
static moe_status build_switch_specs(moe_model *m, spec_builder *bp) {
  spec_builder b = *bp;
  moe_status st;
  const moe_config *c = &m->cfg;
  const size_t H = (size_t)c->hidden, V = (size_t)c->vocab, hd = (size_t)c->head_dim;
  const size_t inner = (size_t)c->n_heads * hd, E = (size_t)c->n_experts,
               F = (size_t)c->expert_ffn, NB = (size_t)c->rel_buckets;
  const char *emb, *emb_alt;
  embed_names(c, &emb, &emb_alt);
  ADD(ROLE_EMBED, -1, -1, V, H, false, false, "%s", emb);
  set_alt(m, emb_alt);
  if (!c->tie_embeddings) {
    ADD(ROLE_ENC_EMBED, -1, -1, V, H, false, false, "encoder.embed_tokens.weight");
    set_alt(m, "shared.weight");
    ADD(ROLE_LM_HEAD, -1, -1, V, H, false, false, "lm_head.weight");
  }
  ADD(ROLE_ENC_FINAL_NORM, -1, -1, 1, H, true, false, "encoder.final_layer_norm.weight");
  ADD(ROLE_FINAL_NORM, -1, -1, 1, H, true, false, "decoder.final_layer_norm.weight");
  m->n_moe = 0;
  for (int l = 0; l < c->n_layers; l++) {
    const bool dec = l >= c->n_enc_layers;
    const char *p = dec ? "decoder.block" : "encoder.block";
    const int i = dec ? l - c->n_enc_layers : l;
    const int ff = dec ? 2 : 1; /* the FFN sub-layer's index */
    ADD(ROLE_ATTN_NORM, l, -1, 1, H, true, false, "%s.%d.layer.0.layer_norm.weight", p, i);
    ADD(ROLE_WQ, l, -1, inner, H, false, false, "%s.%d.layer.0.SelfAttention.q.weight", p, i);
    ADD(ROLE_WK, l, -1, inner, H, false, false, "%s.%d.layer.0.SelfAttention.k.weight", p, i);
    ADD(ROLE_WV, l, -1, inner, H, false, false, "%s.%d.layer.0.SelfAttention.v.weight", p, i);
    ADD(ROLE_WO, l, -1, H, inner, false, false, "%s.%d.layer.0.SelfAttention.o.weight", p, i);
    if (i == 0)
      ADD(ROLE_REL_BIAS, l, -1, NB, (size_t)c->n_heads, false, false,
          "%s.0.layer.0.SelfAttention.relative_attention_bias.weight", p);
    if (dec) {
      ADD(ROLE_XATTN_NORM, l, -1, 1, H, true, false, "%s.%d.layer.1.layer_norm.weight", p, i);
      ADD(ROLE_XQ, l, -1, inner, H, false, false, "%s.%d.layer.1.EncDecAttention.q.weight", p, i);
      ADD(ROLE_XK, l, -1, inner, H, false, false, "%s.%d.layer.1.EncDecAttention.k.weight", p, i);
      ADD(ROLE_XV, l, -1, inner, H, false, false, "%s.%d.layer.1.EncDecAttention.v.weight", p, i);
      ADD(ROLE_XO, l, -1, H, inner, false, false, "%s.%d.layer.1.EncDecAttention.o.weight", p, i);
    }
    ADD(ROLE_FFN_NORM, l, -1, 1, H, true, false, "%s.%d.layer.%d.layer_norm.weight", p, i, ff);
    if (c->is_moe[l]) {
      m->moe_index[l] = m->n_moe++;
      ADD(ROLE_ROUTER, l, -1, E, H, false, false, "%s.%d.layer.%d.mlp.router.classifier.weight",
          p, i, ff);
      if (c->router_logit_bias)
        ADD(ROLE_ROUTER_BIAS, l, -1, 1, E, true, false,
            "%s.%d.layer.%d.mlp.router.classifier.bias", p, i, ff);
      /* Not a transformers tensor: the pre-gate of a model fine-tuned for
       * pre-gating, predicting the next MoE block of the same stack from
       * this block's MoE input.  Optional. */
      int sb, se;
      moe_config_stack(c, l, &sb, &se);
      bool has_next = false;
      for (int n = l + 1; n < se; n++) has_next |= c->is_moe[n];
      if (has_next)
        ADD(ROLE_PREGATE, l, -1, E, H, false, true, "%s.%d.layer.%d.mlp.pregate.weight", p, i, ff);
      for (int e = 0; e < c->n_experts; e++) {
        ADD(ROLE_E_UP, l, e, F, H, false, false, "%s.%d.layer.%d.mlp.experts.expert_%d.wi.weight",
            p, i, ff, e);
        ADD(ROLE_E_DOWN, l, e, H, F, false, false,
            "%s.%d.layer.%d.mlp.experts.expert_%d.wo.weight", p, i, ff, e);
      }
    } else {
      m->moe_index[l] = -1;
      ADD(ROLE_D_UP, l, -1, F, H, false, false, "%s.%d.layer.%d.mlp.wi.weight", p, i, ff);
      ADD(ROLE_D_DOWN, l, -1, H, F, false, false, "%s.%d.layer.%d.mlp.wo.weight", p, i, ff);
    }
  }
  *bp = b;
  return MOE_OK;
}

/* The multi-head latent attention tensors of DeepSeek-V2/V3 layer l, as
 * DeepseekV2ForCausalLM / DeepseekV3ForCausalLM (transformers 5.24) name
 * them: attention_bias puts biases on q_a_proj, kv_a_proj_with_mqa and
 * o_proj (never on q_proj, q_b_proj, kv_b_proj).  The rest of a DeepSeek
 * layer is named as the other decoder-only families' (build_specs). */
static moe_status add_mla_attention(moe_model *m, spec_builder *bp, int l) {
  spec_builder b = *bp;
  moe_status st;
  const moe_config *c = &m->cfg;
  const size_t H = (size_t)c->hidden, NH = (size_t)c->n_heads;
  const size_t qw = NH * (size_t)(c->nope_dim + c->rope_dim), R = (size_t)c->kv_rank,
               P = (size_t)c->rope_dim;
  const bool bias = c->o_bias;
  const char *p = "model.layers";
  if (c->q_rank > 0) {
    const size_t Q = (size_t)c->q_rank;
    ADD(ROLE_QA, l, -1, Q, H, false, false, "%s.%d.self_attn.q_a_proj.weight", p, l);
    if (bias) ADD(ROLE_BQA, l, -1, 1, Q, true, false, "%s.%d.self_attn.q_a_proj.bias", p, l);
    ADD(ROLE_QA_NORM, l, -1, 1, Q, true, false, "%s.%d.self_attn.q_a_layernorm.weight", p, l);
    ADD(ROLE_WQ, l, -1, qw, Q, false, false, "%s.%d.self_attn.q_b_proj.weight", p, l);
  } else {
    ADD(ROLE_WQ, l, -1, qw, H, false, false, "%s.%d.self_attn.q_proj.weight", p, l);
  }
  ADD(ROLE_KVA, l, -1, R + P, H, false, false, "%s.%d.self_attn.kv_a_proj_with_mqa.weight", p, l);
  if (bias)
    ADD(ROLE_BKVA, l, -1, 1, R + P, true, false, "%s.%d.self_attn.kv_a_proj_with_mqa.bias", p, l);
  ADD(ROLE_KVA_NORM, l, -1, 1, R, true, false, "%s.%d.self_attn.kv_a_layernorm.weight", p, l);
  ADD(ROLE_KVB, l, -1, NH * (size_t)(c->nope_dim + c->v_dim), R, false, false,
      "%s.%d.self_attn.kv_b_proj.weight", p, l);
  ADD(ROLE_WO, l, -1, H, NH * (size_t)c->v_dim, false, false, "%s.%d.self_attn.o_proj.weight", p, l);
  if (bias) ADD(ROLE_BO, l, -1, 1, H, true, false, "%s.%d.self_attn.o_proj.bias", p, l);
  *bp = b;
  return MOE_OK;
}

/* Fills m->specs for m->cfg and lays out both slabs (offsets, sizes). */
static moe_status build_specs(moe_model *m, moe_error *err) {
  const moe_config *c = &m->cfg;
  spec_builder b = {m, 0, err};
  moe_status st;
  const size_t H = (size_t)c->hidden, V = (size_t)c->vocab, hd = (size_t)c->head_dim;
  const size_t qd = (size_t)c->n_heads * hd, kvd = (size_t)c->n_kv_heads * hd;
  const size_t E = (size_t)c->n_experts, F = (size_t)c->expert_ffn;
  const bool mixtral = c->arch == MOE_ARCH_MIXTRAL, deepseek = moe_config_is_mla(c);
  const char *moe = mixtral ? "block_sparse_moe" : "mlp";
  for (int i = 0; i <= MOE_MAX_LAYERS; i++)
    for (int r = 0; r < ROLE_COUNT; r++) m->dense_index[i][r] = -1;

  if (c->arch == MOE_ARCH_SWITCH) {
    if ((st = build_switch_specs(m, &b)) != MOE_OK) return st;
    goto layout;
  }
  ADD(ROLE_EMBED, -1, -1, V, H, false, false, "model.embed_tokens.weight");
  ADD(ROLE_FINAL_NORM, -1, -1, 1, H, true, false, "model.norm.weight");
  if (!c->tie_embeddings) ADD(ROLE_LM_HEAD, -1, -1, V, H, false, false, "lm_head.weight");
  m->n_moe = 0;
  for (int l = 0; l < c->n_layers; l++) {
    const char *p = "model.layers";
    ADD(ROLE_ATTN_NORM, l, -1, 1, H, true, false, "%s.%d.input_layernorm.weight", p, l);
    if (deepseek) {
      if ((st = add_mla_attention(m, &b, l)) != MOE_OK) return st;
      goto ffn;
    }
    ADD(ROLE_WQ, l, -1, qd, H, false, false, "%s.%d.self_attn.q_proj.weight", p, l);
    ADD(ROLE_WK, l, -1, kvd, H, false, false, "%s.%d.self_attn.k_proj.weight", p, l);
    ADD(ROLE_WV, l, -1, kvd, H, false, false, "%s.%d.self_attn.v_proj.weight", p, l);
    ADD(ROLE_WO, l, -1, H, qd, false, false, "%s.%d.self_attn.o_proj.weight", p, l);
    if (c->qkv_bias) {
      ADD(ROLE_BQ, l, -1, 1, qd, true, false, "%s.%d.self_attn.q_proj.bias", p, l);
      ADD(ROLE_BK, l, -1, 1, kvd, true, false, "%s.%d.self_attn.k_proj.bias", p, l);
      ADD(ROLE_BV, l, -1, 1, kvd, true, false, "%s.%d.self_attn.v_proj.bias", p, l);
    }
    if (c->o_bias) ADD(ROLE_BO, l, -1, 1, H, true, false, "%s.%d.self_attn.o_proj.bias", p, l);
    if (c->qk_norm != MOE_QK_NORM_NONE) {
      const bool head = c->qk_norm == MOE_QK_NORM_HEAD;
      ADD(ROLE_QNORM, l, -1, 1, head ? hd : qd, true, false, "%s.%d.self_attn.q_norm.weight", p, l);
      ADD(ROLE_KNORM, l, -1, 1, head ? hd : kvd, true, false, "%s.%d.self_attn.k_norm.weight", p, l);
    }
  ffn:
    ADD(ROLE_FFN_NORM, l, -1, 1, H, true, false, "%s.%d.post_attention_layernorm.weight", p, l);
    if (c->is_moe[l]) {
      m->moe_index[l] = m->n_moe++;
      ADD(ROLE_ROUTER, l, -1, E, H, false, false, "%s.%d.%s.gate.weight", p, l, moe);
      /* DeepSeek-V3's ranking bias (a buffer: zeros when a checkpoint lacks
       * it, as transformers initialises it); for the other families not a
       * Hugging Face tensor: our routing-skew bias, loaded when present. */
      if (c->arch == MOE_ARCH_DEEPSEEK_V3)
        ADD(ROLE_ROUTER_BIAS, l, -1, 1, E, true, true, "%s.%d.mlp.gate.e_score_correction_bias", p, l);
      else
        ADD(ROLE_ROUTER_BIAS, l, -1, 1, E, true, true, "%s.%d.%s.gate.bias", p, l, moe);
      /* Pre-gate of a model fine-tuned for pre-gating: predicts the next
       * MoE block's experts from this block's MoE input.  Optional. */
      bool has_next = false;
      for (int n = l + 1; n < c->n_layers; n++) has_next |= c->is_moe[n];
      if (has_next)
        ADD(ROLE_PREGATE, l, -1, E, H, false, true, "%s.%d.%s.pregate.weight", p, l, moe);
      if (c->shared_ffn > 0) {
        /* Qwen2-MoE: one gated shared_expert; DeepSeek: shared_experts,
         * added without a gate */
        const size_t S = (size_t)c->shared_ffn;
        const char *sh = deepseek ? "shared_experts" : "shared_expert";
        ADD(ROLE_SH_GATE, l, -1, S, H, false, false, "%s.%d.mlp.%s.gate_proj.weight", p, l, sh);
        ADD(ROLE_SH_UP, l, -1, S, H, false, false, "%s.%d.mlp.%s.up_proj.weight", p, l, sh);
        ADD(ROLE_SH_DOWN, l, -1, H, S, false, false, "%s.%d.mlp.%s.down_proj.weight", p, l, sh);
        if (!deepseek)
          ADD(ROLE_SH_EXPERT_GATE, l, -1, 1, H, false, false, "%s.%d.mlp.shared_expert_gate.weight", p, l);
      }
      for (int e = 0; e < c->n_experts; e++) {
        if (mixtral) {
          ADD(ROLE_E_GATE, l, e, F, H, false, false, "%s.%d.%s.experts.%d.w1.weight", p, l, moe, e);
          ADD(ROLE_E_UP, l, e, F, H, false, false, "%s.%d.%s.experts.%d.w3.weight", p, l, moe, e);
          ADD(ROLE_E_DOWN, l, e, H, F, false, false, "%s.%d.%s.experts.%d.w2.weight", p, l, moe, e);
        } else {
          ADD(ROLE_E_GATE, l, e, F, H, false, false, "%s.%d.mlp.experts.%d.gate_proj.weight", p, l, e);
          ADD(ROLE_E_UP, l, e, F, H, false, false, "%s.%d.mlp.experts.%d.up_proj.weight", p, l, e);
          ADD(ROLE_E_DOWN, l, e, H, F, false, false, "%s.%d.mlp.experts.%d.down_proj.weight", p, l, e);
        }
      }
    } else {
      m->moe_index[l] = -1;
      const size_t D = (size_t)c->dense_ffn;
      ADD(ROLE_D_GATE, l, -1, D, H, false, false, "%s.%d.mlp.gate_proj.weight", p, l);
      ADD(ROLE_D_UP, l, -1, D, H, false, false, "%s.%d.mlp.up_proj.weight", p, l);
      ADD(ROLE_D_DOWN, l, -1, H, D, false, false, "%s.%d.mlp.down_proj.weight", p, l);
    }
  }
  /* Layout.  Dense tensors are packed with 64-byte alignment; each expert is
   * gate, up, down back to back (up, down without a gate), experts back to
   * back.  Every size is overflow-checked: a config whose dimensions are
   * each in range can still describe tensors larger than memory can
   * address. */
layout:;
  const size_t es = moe_dtype_size(m->dtype);
  const size_t mats = c->ffn_act == MOE_FFN_RELU ? 2 : 3;
  m->expert_bytes = moe_prod(mats, F, H, es);
  size_t total = moe_prod((size_t)m->n_moe, E, m->expert_bytes, 1);
  if (m->expert_bytes == SIZE_MAX || total == SIZE_MAX)
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "model too large: %d MoE layers x %zu experts x %zu x %zu x %zu x %zu bytes "
                    "overflows the address space", m->n_moe, E, mats, F, H, es);
  size_t off = 0;
  for (size_t i = 0; i < m->n_specs; i++) {
    moe_tensor_spec *s = &m->specs[i];
    size_t nb = moe_prod(s->rows, s->cols, es, 1);
    if (s->is_expert) {
      size_t base = ((size_t)m->moe_index[s->layer] * E + (size_t)s->expert) * m->expert_bytes;
      size_t part = s->role == ROLE_E_GATE ? 0 : s->role == ROLE_E_UP ? 1 : 2;
      if (mats == 2) part--; /* no gate: up, down */
      s->offset = base + part * F * H * es; /* < total, which did not overflow */
    } else {
      s->offset = off;
      size_t padded = nb;
      if (!moe_add_ok(&padded, 63) || !moe_add_ok(&off, padded & ~(size_t)63))
        return MOE_FAIL(err, MOE_ERR_INVALID,
                        "model too large: tensor %s (%zu x %zu) overflows the dense layout",
                        s->name, s->rows, s->cols);
    }
  }
  m->dense_bytes = off;
  m->experts_total = total;
  if (!moe_add_ok(&total, off) || !moe_add_ok(&total, 128))
    return MOE_FAIL(err, MOE_ERR_INVALID, "model too large: its weights overflow the address space");
  return MOE_OK;
}

#undef ADD

/* A model with its tensor table and layout for cfg, no weight slabs. */
static moe_status model_table(moe_model **out, const moe_config *cfg, moe_dtype dtype,
                              moe_error *err) {
  moe_status st = MOE_OK;
  *out = NULL;
  moe_model *m = calloc(1, sizeof *m);
  MOE_CHECK_ALLOC(m, err, sizeof *m);
  m->cfg = *cfg;
  m->dtype = dtype;
  MOE_TRY(moe_config_validate(cfg, "model config", err));
  MOE_TRY(build_specs(m, err));
  *out = m;
  return MOE_OK;
cleanup:
  moe_model_free(m);
  return st;
}

moe_status moe_model_plan_only(moe_model **out, const moe_config *cfg, moe_dtype dtype,
                               moe_error *err) {
  return model_table(out, cfg, dtype, err);
}

moe_status moe_model_plan_layout(const moe_config *cfg, moe_dtype dtype, size_t *dense_bytes,
                                 size_t *experts_bytes, moe_error *err) {
  moe_model *m = NULL;
  moe_status st = model_table(&m, cfg, dtype, err);
  if (st != MOE_OK) return st;
  *dense_bytes = m->dense_bytes;
  *experts_bytes = m->experts_total;
  moe_model_free(m);
  return MOE_OK;
}

static void *reserve_zeros(size_t bytes) {
  void *p = mmap(NULL, bytes ? bytes : 64, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

moe_status moe_model_virtual(moe_model **out, const moe_config *cfg, const moe_synth_options *opt,
                             moe_error *err) {
  moe_status st = MOE_OK;
  moe_model *m = NULL;
  MOE_TRY(model_table(&m, cfg, opt->dtype, err));
  m->is_virtual = true;
  /* the tensors a synthetic model of these options would have */
  for (size_t i = 0; i < m->n_specs; i++) {
    moe_tensor_spec *s = &m->specs[i];
    s->present = !(s->role == ROLE_ROUTER_BIAS && opt->routing_skew <= 0.0 && s->optional) &&
                 !(s->role == ROLE_PREGATE && !opt->pregate);
  }
  m->dense = reserve_zeros(m->dense_bytes);
  MOE_CHECK(m->dense != NULL, err, MOE_ERR_OOM,
            "cannot reserve %zu bytes of address space for a virtual model", m->dense_bytes);
  if (m->experts_total) {
    m->experts = reserve_zeros(m->experts_total);
    MOE_CHECK(m->experts != NULL, err, MOE_ERR_OOM,
              "cannot reserve %zu bytes of address space for a virtual model", m->experts_total);
  }
  *out = m;
  return MOE_OK;
cleanup:
  moe_model_free(m);
  return st;
}

bool moe_model_is_virtual(const moe_model *m) { return m->is_virtual; }

/* Allocates an empty model with its table and slabs for cfg. */
static moe_status model_alloc(moe_model **out, const moe_config *cfg, moe_dtype dtype,
                              moe_error *err) {
  moe_status st = MOE_OK;
  moe_model *m = NULL;
  MOE_TRY(model_table(&m, cfg, dtype, err));
  m->dense = aligned_alloc(64, m->dense_bytes ? m->dense_bytes : 64);
  MOE_CHECK_ALLOC(m->dense, err, m->dense_bytes);
  if (m->experts_total) {
    m->experts = aligned_alloc(64, (m->experts_total + 63) & ~(size_t)63);
    MOE_CHECK_ALLOC(m->experts, err, m->experts_total);
  }
  *out = m;
  return MOE_OK;
cleanup:
  moe_model_free(m);
  return st;
}

void moe_model_free(moe_model *m) {
  if (m == NULL) return;
  free(m->specs);
  if (m->is_virtual) {
    if (m->dense) munmap(m->dense, m->dense_bytes ? m->dense_bytes : 64);
    if (m->experts) munmap(m->experts, m->experts_total);
  } else {
    free(m->dense);
    free(m->experts);
  }
  free(m);
}

static uint8_t *spec_ptr(const moe_model *m, const moe_tensor_spec *s) {
  return (s->is_expert ? m->experts : m->dense) + s->offset;
}

const moe_tensor_spec *moe_model_spec(const moe_model *m, int layer, moe_role role) {
  int i = m->dense_index[layer < 0 ? m->cfg.n_layers : layer][role];
  return i < 0 || !m->specs[i].present ? NULL : &m->specs[i];
}

const void *moe_model_expert_host(const moe_model *m, int layer, int expert) {
  return m->experts +
         ((size_t)m->moe_index[layer] * (size_t)m->cfg.n_experts + (size_t)expert) * m->expert_bytes;
}

const moe_config *moe_model_config(const moe_model *m) { return &m->cfg; }
moe_dtype moe_model_dtype(const moe_model *m) { return m->dtype; }
size_t moe_model_dense_bytes(const moe_model *m) { return m->dense_bytes; }
size_t moe_model_expert_bytes(const moe_model *m) { return m->expert_bytes; }

moe_status moe_model_pin(moe_model *m, moe_device *dev, moe_error *err) {
  if (!dev->ops->host_register || !dev->ops->host_unregister || m->experts_total == 0) return MOE_OK;
  return dev->ops->host_register(dev->be, m->experts, m->experts_total, err);
}

void moe_model_unpin(moe_model *m, moe_device *dev) {
  if (dev->ops->host_register && dev->ops->host_unregister && m->experts_total > 0)
    dev->ops->host_unregister(dev->be, m->experts);
}
size_t moe_model_total_bytes(const moe_model *m) { return m->dense_bytes + m->experts_total; }

/* ------------------------------------------------------------ synthetic */

/* Standard deviation of a tensor's init, or a negative code: -1 ones,
 * -2 small bias, -3 routing-skew bias. */
static double init_std(const moe_config *c, const moe_tensor_spec *s) {
  const double branch = 1.0 / sqrt(2.0 * c->n_layers);
  switch (s->role) {
    case ROLE_EMBED: case ROLE_ENC_EMBED: return 1.0;
    case ROLE_FINAL_NORM: case ROLE_ATTN_NORM: case ROLE_FFN_NORM: case ROLE_ENC_FINAL_NORM:
    case ROLE_XATTN_NORM: case ROLE_QNORM: case ROLE_KNORM: case ROLE_QA_NORM:
    case ROLE_KVA_NORM: return -1;
    case ROLE_REL_BIAS: return 1.0 / sqrt((double)c->hidden);
    case ROLE_BQ: case ROLE_BK: case ROLE_BV: case ROLE_BO: case ROLE_BQA: case ROLE_BKVA:
      return -2;
    case ROLE_ROUTER_BIAS: return -3;
    case ROLE_WO: case ROLE_XO: case ROLE_SH_DOWN: case ROLE_D_DOWN: case ROLE_E_DOWN:
      return branch / sqrt((double)s->cols);
    default: return 1.0 / sqrt((double)s->cols);
  }
}

static void fill_tensor(moe_model *m, moe_tensor_spec *s, size_t stream, uint64_t seed,
                        double skew, float *buf, size_t buf_n) {
  const size_t n = s->rows * s->cols, es = moe_dtype_size(m->dtype);
  uint8_t *dst = spec_ptr(m, s);
  moe_rng r;
  moe_rng_seed(&r, seed, stream);
  double sd = init_std(&m->cfg, s);
  if (sd == -3) {
    /* Zipf prior: a random permutation gives each expert a rank. */
    int rank[MOE_MAX_EXPERTS];
    for (size_t i = 0; i < n; i++) rank[i] = (int)i;
    for (size_t i = n; i > 1; i--) {
      size_t j = (size_t)(moe_rng_next(&r) % i);
      int t = rank[i - 1];
      rank[i - 1] = rank[j];
      rank[j] = t;
    }
    for (size_t i = 0; i < n; i++) buf[i] = (float)(-skew * log((double)rank[i] + 1.0));
    moe_convert_from_f32(dst, m->dtype, buf, n);
    return;
  }
  const double half_width = sd > 0 ? sqrt(3.0) * sd : 0.0; /* uniform with std sd */
  for (size_t done = 0; done < n; done += buf_n) {
    size_t c = n - done < buf_n ? n - done : buf_n;
    for (size_t i = 0; i < c; i++) {
      if (sd == -1)
        buf[i] = 1.0f;
      else if (sd == -2)
        buf[i] = (float)(0.02 * (2.0 * moe_rng_uniform(&r) - 1.0));
      else
        buf[i] = (float)(half_width * (2.0 * moe_rng_uniform(&r) - 1.0));
    }
    moe_convert_from_f32(dst + done * es, m->dtype, buf, c);
  }
}

moe_status moe_model_synthetic(moe_model **out, const moe_config *cfg,
                               const moe_synth_options *opt, moe_error *err) {
  moe_status st = MOE_OK;
  moe_model *m = NULL;
  *out = NULL;
  MOE_CHECK(opt->routing_skew >= 0.0 && isfinite(opt->routing_skew), err, MOE_ERR_INVALID,
            "routing skew must be a finite number >= 0 (got %g)", opt->routing_skew);
  MOE_TRY(model_alloc(&m, cfg, opt->dtype, err));
  enum { BUF_N = 1 << 16 };
  float *buf = malloc(BUF_N * sizeof *buf > (size_t)cfg->n_experts * sizeof(float)
                          ? BUF_N * sizeof *buf
                          : (size_t)cfg->n_experts * sizeof(float));
  MOE_CHECK_ALLOC(buf, err, BUF_N * sizeof *buf);
  for (size_t i = 0; i < m->n_specs; i++) {
    moe_tensor_spec *s = &m->specs[i];
    if (s->role == ROLE_ROUTER_BIAS && opt->routing_skew <= 0.0 && s->optional) continue;
    if (s->role == ROLE_PREGATE && !opt->pregate) continue;
    fill_tensor(m, s, i, opt->seed, opt->routing_skew, buf, BUF_N);
    s->present = true;
  }
  free(buf);
  /* A synthetic pre-gate stands for one fine-tuned to predict the next
   * block's routing: it starts as the next MoE block's router (applied one
   * block early), plus the seeded perturbation drawn above at 1/4 scale, so
   * predictions are good but not perfect. */
  for (size_t i = 0; opt->pregate && i < m->n_specs; i++) {
    moe_tensor_spec *s = &m->specs[i];
    if (s->role != ROLE_PREGATE || !s->present) continue;
    int next = s->layer + 1;
    while (next < cfg->n_layers && !cfg->is_moe[next]) next++;
    const moe_tensor_spec *r = moe_model_spec(m, next, ROLE_ROUTER);
    MOE_CHECK(r != NULL, err, MOE_ERR_INTERNAL, "no router for the pre-gate of layer %d", s->layer);
    const size_t n = s->rows * s->cols;
    float a, b;
    for (size_t j = 0; j < n; j++) {
      moe_convert_to_f32(&a, spec_ptr(m, s) + j * moe_dtype_size(m->dtype), m->dtype, 1);
      moe_convert_to_f32(&b, spec_ptr(m, r) + j * moe_dtype_size(m->dtype), m->dtype, 1);
      a = b + 0.25f * a;
      moe_convert_from_f32(spec_ptr(m, s) + j * moe_dtype_size(m->dtype), m->dtype, &a, 1);
    }
  }
  *out = m;
  return MOE_OK;
cleanup:
  moe_model_free(m);
  return st;
}

/* ------------------------------------------------------------ checkpoints */

/* Values of a loaded tensor (n of dtype dt at p) that are NaN or infinite:
 * an exponent of all ones in the format's own bits. */
static size_t count_nonfinite(const uint8_t *p, moe_dtype dt, size_t n) {
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) {
    if (dt == MOE_F32) {
      uint32_t u;
      memcpy(&u, p + 4 * i, 4);
      bad += (u & 0x7f800000u) == 0x7f800000u;
    } else {
      uint16_t u;
      memcpy(&u, p + 2 * i, 2);
      bad += dt == MOE_F16 ? (u & 0x7c00u) == 0x7c00u : (u & 0x7f80u) == 0x7f80u;
    }
  }
  return bad;
}

/* A tensor every value of which is NaN or infinite is refused (the model
 * could only compute NaN); one with some is loaded with a warning naming
 * it. */
static moe_status check_finite(const moe_model *m, const moe_tensor_spec *s, const char *file,
                               moe_error *err) {
  const size_t n = s->rows * s->cols;
  const size_t bad = n ? count_nonfinite(spec_ptr(m, s), m->dtype, n) : 0;
  if (bad == 0) return MOE_OK;
  if (bad == n)
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: tensor '%s': every one of its %zu values is NaN or "
                    "infinite", file, s->name, n);
  fprintf(stderr, "moe: warning: %s: tensor '%s' holds %zu NaN or infinite values of %zu\n", file,
          s->name, bad, n);
  return MOE_OK;
}

/* Tensor bytes are read from the file (moe_checkpoint_read, pread), never
 * copied out of the mapping: a checkpoint truncated while it loads is an
 * error naming the file, not a SIGBUS. */
static moe_status load_tensor(moe_model *m, moe_tensor_spec *s, const moe_checkpoint *ck,
                              const moe_st_tensor *t, const char *file, moe_error *err) {
  if (!t->has_dtype)
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: tensor '%s' has dtype %s; expected F32, F16 or BF16",
                    file, s->name, t->dtype);
  bool ok = s->vector ? (t->ndim == 1 && (size_t)t->shape[0] == s->cols)
                      : (t->ndim == 2 && (size_t)t->shape[0] == s->rows && (size_t)t->shape[1] == s->cols);
  if (!ok) {
    char got[64] = "";
    for (int d = 0; d < t->ndim && strlen(got) < 48; d++)
      snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "",
               (long long)t->shape[d]);
    if (s->vector)
      return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: tensor '%s' has shape [%s], expected [%zu]", file,
                      s->name, got, s->cols);
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: tensor '%s' has shape [%s], expected [%zu, %zu]",
                    file, s->name, got, s->rows, s->cols);
  }
  uint8_t *dst = spec_ptr(m, s);
  const size_t n = s->rows * s->cols;
  if (t->mdtype == m->dtype) return moe_checkpoint_read(ck, t, 0, dst, t->nbytes, err);
  /* Convert through an aligned f32 buffer. */
  enum { CHUNK = 4096 };
  float f[CHUNK];
  uint8_t raw[CHUNK * 4];
  const size_t ses = moe_dtype_size(t->mdtype), des = moe_dtype_size(m->dtype);
  for (size_t i = 0; i < n; i += CHUNK) {
    size_t c = n - i < CHUNK ? n - i : CHUNK;
    moe_status st = moe_checkpoint_read(ck, t, i * ses, raw, c * ses, err);
    if (st != MOE_OK) return st;
    moe_convert_to_f32(f, raw, t->mdtype, c);
    moe_convert_from_f32(dst + i * des, m->dtype, f, c);
  }
  return MOE_OK;
}

moe_status moe_model_checkpoint_dtype(const moe_config *cfg, const char *ckpt_dir, moe_dtype *out,
                                      moe_error *err) {
  moe_status st = MOE_OK;
  moe_checkpoint *ck = NULL;
  const char *file = NULL, *emb_name, *emb_alt;
  embed_names(cfg, &emb_name, &emb_alt);
  MOE_TRY(moe_checkpoint_open(&ck, ckpt_dir, err));
  const moe_st_tensor *emb = moe_checkpoint_find(ck, emb_name, &file);
  if (emb == NULL && emb_alt[0]) emb = moe_checkpoint_find(ck, emb_alt, &file);
  MOE_CHECK(emb != NULL, err, MOE_ERR_FORMAT, "%s: tensor '%s' is missing", ckpt_dir, emb_name);
  MOE_CHECK(emb->has_dtype, err, MOE_ERR_FORMAT,
            "%s: tensor '%s' has dtype %s; expected F32, F16 or BF16", file, emb_name, emb->dtype);
  *out = emb->mdtype;
cleanup:
  moe_checkpoint_close(ck);
  return st;
}

moe_status moe_model_load_weights(moe_model **out, const moe_config *cfg, const char *ckpt_dir,
                                  const moe_dtype *dtype, moe_error *err) {
  moe_status st = MOE_OK;
  moe_checkpoint *ck = NULL;
  moe_model *m = NULL;
  *out = NULL;
  MOE_TRY(moe_checkpoint_open(&ck, ckpt_dir, err));
  const char *file = NULL, *emb_name, *emb_alt;
  embed_names(cfg, &emb_name, &emb_alt);
  const moe_st_tensor *emb = moe_checkpoint_find(ck, emb_name, &file);
  if (emb == NULL && emb_alt[0]) emb = moe_checkpoint_find(ck, emb_alt, &file);
  MOE_CHECK(emb != NULL, err, MOE_ERR_FORMAT, "%s: tensor '%s' is missing", ckpt_dir, emb_name);
  MOE_CHECK(emb->has_dtype, err, MOE_ERR_FORMAT,
            "%s: tensor '%s' has dtype %s; expected F32, F16 or BF16", file, emb_name,
            emb->dtype);
  MOE_TRY(model_alloc(&m, cfg, dtype ? *dtype : emb->mdtype, err));
  for (size_t i = 0; i < m->n_specs; i++) {
    moe_tensor_spec *s = &m->specs[i];
    const moe_st_tensor *t = moe_checkpoint_find(ck, s->name, &file);
    if (t == NULL && s->alt[0]) t = moe_checkpoint_find(ck, s->alt, &file);
    if (t == NULL) {
      MOE_CHECK(s->optional, err, MOE_ERR_FORMAT, "%s: tensor '%s' is missing", ckpt_dir, s->name);
      continue;
    }
    MOE_TRY(load_tensor(m, s, ck, t, file, err));
    MOE_TRY(check_finite(m, s, file, err));
    s->present = true;
  }
  *out = m;
  m = NULL;
cleanup:
  moe_model_free(m);
  moe_checkpoint_close(ck);
  return st;
}

moe_status moe_model_load(moe_model **out, const char *dir, const moe_dtype *dtype, moe_error *err) {
  moe_config cfg;
  size_t n = strlen(dir) + 16;
  char *path = malloc(n);
  if (path == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "out of host memory");
  snprintf(path, n, "%s/config.json", dir);
  moe_status st = moe_config_load(&cfg, path, err);
  free(path);
  if (st != MOE_OK) return st;
  return moe_model_load_weights(out, &cfg, dir, dtype, err);
}

moe_status moe_model_save(const moe_model *m, const char *dir, moe_error *err) {
  moe_status st = MOE_OK;
  moe_st_entry *ents = calloc(m->n_specs ? m->n_specs : 1, sizeof *ents);
  size_t n = strlen(dir) + 32;
  char *path = malloc(n);
  MOE_CHECK_ALLOC(ents, err, m->n_specs * sizeof *ents);
  MOE_CHECK_ALLOC(path, err, n);
  size_t k = 0;
  for (size_t i = 0; i < m->n_specs; i++) {
    const moe_tensor_spec *s = &m->specs[i];
    if (!s->present) continue;
    ents[k].name = s->name;
    ents[k].dtype = m->dtype;
    ents[k].ndim = s->vector ? 1 : 2;
    ents[k].shape[0] = s->vector ? (int64_t)s->cols : (int64_t)s->rows;
    ents[k].shape[1] = (int64_t)s->cols;
    ents[k].data = spec_ptr(m, s);
    k++;
  }
  snprintf(path, n, "%s/model.safetensors", dir);
  MOE_TRY(moe_st_write(path, ents, k, err));
  snprintf(path, n, "%s/config.json", dir);
  MOE_TRY(moe_config_save(&m->cfg, path, err));
cleanup:
  free(ents);
  free(path);
  return st;
}

/* The fields every decoder-only family's config.json shares, in one
 * order (head_dim only where the family's config means the attention
 * head's size: DeepSeek's does not). */
static void put_decoder_common(json_t *o, const moe_config *c, const char *type, bool head_dim) {
  json_object_set_new(o, "model_type", json_string(type));
  json_object_set_new(o, "hidden_size", json_integer(c->hidden));
  json_object_set_new(o, "num_hidden_layers", json_integer(c->n_layers));
  json_object_set_new(o, "num_attention_heads", json_integer(c->n_heads));
  json_object_set_new(o, "num_key_value_heads", json_integer(c->n_kv_heads));
  if (head_dim) json_object_set_new(o, "head_dim", json_integer(c->head_dim));
  json_object_set_new(o, "vocab_size", json_integer(c->vocab));
  json_object_set_new(o, "max_position_embeddings", json_integer(c->max_pos));
  json_object_set_new(o, "num_experts_per_tok", json_integer(c->top_k));
  json_object_set_new(o, "rms_norm_eps", json_real(c->rms_eps));
  json_object_set_new(o, "tie_word_embeddings", json_boolean(c->tie_embeddings));
  json_object_set_new(o, "hidden_act", json_string("silu"));
}

moe_status moe_config_save(const moe_config *c, const char *path, moe_error *err) {
  moe_status st = MOE_OK;
  json_t *o = json_object();

  MOE_CHECK_ALLOC(o, err, 64);
  const bool mix = c->arch == MOE_ARCH_MIXTRAL;
  if (c->arch == MOE_ARCH_SWITCH) {
    const int dec = c->n_layers - c->n_enc_layers;
    json_object_set_new(o, "model_type", json_string("switch_transformers"));
    json_object_set_new(o, "is_encoder_decoder", json_true());
    json_object_set_new(o, "vocab_size", json_integer(c->vocab));
    json_object_set_new(o, "d_model", json_integer(c->hidden));
    json_object_set_new(o, "d_kv", json_integer(c->head_dim));
    json_object_set_new(o, "d_ff", json_integer(c->expert_ffn));
    json_object_set_new(o, "num_heads", json_integer(c->n_heads));
    json_object_set_new(o, "num_layers", json_integer(c->n_enc_layers));
    json_object_set_new(o, "num_decoder_layers", json_integer(dec));
    json_object_set_new(o, "encoder_sparse_step", json_integer(c->enc_sparse_step));
    json_object_set_new(o, "decoder_sparse_step", json_integer(c->dec_sparse_step));
    json_object_set_new(o, "num_experts", json_integer(c->n_experts > 0 ? c->n_experts : 8));
    json_object_set_new(o, "expert_capacity", json_integer(c->expert_capacity));
    json_object_set_new(o, "relative_attention_num_buckets", json_integer(c->rel_buckets));
    json_object_set_new(o, "relative_attention_max_distance", json_integer(c->rel_max_distance));
    json_object_set_new(o, "layer_norm_epsilon", json_real(c->rms_eps));
    json_object_set_new(o, "router_bias", json_boolean(c->router_logit_bias));
    json_object_set_new(o, "router_dtype", json_string("float32"));
    json_object_set_new(o, "dense_act_fn", json_string("relu"));
    json_object_set_new(o, "tie_word_embeddings", json_boolean(c->tie_embeddings));
    json_object_set_new(o, "decoder_start_token_id", json_integer(c->decoder_start));
    json_object_set_new(o, "pad_token_id", c->pad_id >= 0 ? json_integer(c->pad_id) : json_null());
    json_object_set_new(o, "eos_token_id", c->eos_id >= 0 ? json_integer(c->eos_id) : json_null());
    goto write;
  }
  if (moe_config_is_mla(c)) {
    const bool v3 = c->arch == MOE_ARCH_DEEPSEEK_V3;
    int first_dense = 0;
    while (first_dense < c->n_layers && !c->is_moe[first_dense]) first_dense++;
    put_decoder_common(o, c, v3 ? "deepseek_v3" : "deepseek_v2", false);
    json_object_set_new(o, "attention_bias", json_boolean(c->o_bias));
    json_object_set_new(o, "n_routed_experts", json_integer(c->n_experts));
    json_object_set_new(o, "n_shared_experts",
                        json_integer(c->expert_ffn > 0 ? c->shared_ffn / c->expert_ffn : 0));
    json_object_set_new(o, "moe_intermediate_size", json_integer(c->expert_ffn));
    json_object_set_new(o, "intermediate_size", json_integer(c->dense_ffn));
    json_object_set_new(o, "first_k_dense_replace", json_integer(first_dense));
    json_object_set_new(o, "q_lora_rank", c->q_rank > 0 ? json_integer(c->q_rank) : json_null());
    json_object_set_new(o, "kv_lora_rank", json_integer(c->kv_rank));
    json_object_set_new(o, "qk_nope_head_dim", json_integer(c->nope_dim));
    json_object_set_new(o, "qk_rope_head_dim", json_integer(c->rope_dim));
    json_object_set_new(o, "v_head_dim", json_integer(c->v_dim));
    json_object_set_new(o, "routed_scaling_factor", json_real(c->routed_scale));
    json_object_set_new(o, "n_group", c->n_group > 0 ? json_integer(c->n_group) : json_null());
    json_object_set_new(o, "topk_group",
                        c->topk_group > 0 ? json_integer(c->topk_group) : json_null());
    if (v3) {
      json_object_set_new(o, "norm_topk_prob", json_boolean(c->norm_topk));
      json_object_set_new(o, "rope_interleave", json_boolean(c->rope_interleave));
    } else {
      json_object_set_new(o, "topk_method",
                          json_string(c->n_group > 0 ? "group_limited_greedy" : "greedy"));
    }
    goto rope;
  }
  const char *type = mix ? "mixtral"
                     : c->arch == MOE_ARCH_QWEN3_MOE ? "qwen3_moe"
                     : c->arch == MOE_ARCH_OLMOE     ? "olmoe"
                                                     : "qwen2_moe";
  put_decoder_common(o, c, type, true);
  if (c->arch == MOE_ARCH_QWEN3_MOE || c->arch == MOE_ARCH_OLMOE)
    json_object_set_new(o, "attention_bias", json_boolean(c->qkv_bias));
  if (mix) {
    json_object_set_new(o, "num_local_experts", json_integer(c->n_experts));
    json_object_set_new(o, "intermediate_size", json_integer(c->expert_ffn));
  } else if (c->arch == MOE_ARCH_OLMOE) {
    json_object_set_new(o, "num_experts", json_integer(c->n_experts));
    json_object_set_new(o, "intermediate_size", json_integer(c->expert_ffn));
    json_object_set_new(o, "norm_topk_prob", json_boolean(c->norm_topk));
  } else if (c->arch == MOE_ARCH_QWEN3_MOE) {
    json_object_set_new(o, "num_experts", json_integer(c->n_experts));
    json_object_set_new(o, "moe_intermediate_size", json_integer(c->expert_ffn));
    json_object_set_new(o, "intermediate_size", json_integer(c->dense_ffn));
    json_object_set_new(o, "norm_topk_prob", json_boolean(c->norm_topk));
    json_object_set_new(o, "decoder_sparse_step", json_integer(1));
    json_t *only = json_array();
    for (int l = 0; l < c->n_layers; l++)
      if (!c->is_moe[l]) json_array_append_new(only, json_integer(l));
    json_object_set_new(o, "mlp_only_layers", only);
  } else {
    json_object_set_new(o, "num_experts", json_integer(c->n_experts));
    json_object_set_new(o, "moe_intermediate_size", json_integer(c->expert_ffn));
    json_object_set_new(o, "intermediate_size", json_integer(c->dense_ffn));
    json_object_set_new(o, "shared_expert_intermediate_size", json_integer(c->shared_ffn));
    json_object_set_new(o, "norm_topk_prob", json_boolean(c->norm_topk));
    json_object_set_new(o, "qkv_bias", json_boolean(c->qkv_bias));
    json_object_set_new(o, "decoder_sparse_step", json_integer(1));
    json_t *only = json_array();
    for (int l = 0; l < c->n_layers; l++)
      if (!c->is_moe[l]) json_array_append_new(only, json_integer(l));
    json_object_set_new(o, "mlp_only_layers", only);
  }
rope: {
    json_t *rp = json_object();
    json_object_set_new(rp, "rope_theta", json_real(c->rope_theta));
    if (c->rope_kind == MOE_ROPE_YARN) {
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
    } else {
      json_object_set_new(rp, "rope_type", json_string("default"));
    }
    json_object_set_new(o, "rope_parameters", rp);
  }
write:
  {
    moe_publish pub;
    MOE_TRY(moe_publish_open(&pub, path, "the config", err));
    if (json_dumpf(o, pub.f, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0) moe_publish_fail(&pub);
    MOE_TRY(moe_publish_commit(&pub, err));
  }
cleanup:
  json_decref(o);
  return st;
}
