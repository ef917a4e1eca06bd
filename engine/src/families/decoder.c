/* The tensor table of the decoder-only families, as their transformers
 * causal LMs name it: model.embed_tokens, model.norm, lm_head when untied,
 * and per layer input_layernorm, the attention, post_attention_layernorm
 * and the MoE block (names from the family) or a dense SwiGLU mlp. */
#include <stdio.h>

#include "family.h"
#include "model_internal.h"

/* q/k/v/o with the config's biases and q/k norms. */
static moe_status gqa_specs(moe_spec_builder *b, int l) {
  const moe_config *c = moe_spec_config(b);
  const size_t H = (size_t)c->hidden, hd = (size_t)c->head_dim;
  const size_t qd = (size_t)c->n_heads * hd, kvd = (size_t)c->n_kv_heads * hd;
  const char *p = "model.layers";
  MOE_ADD_SPEC(b, ROLE_WQ, l, -1, qd, H, false, false, "%s.%d.self_attn.q_proj.weight", p, l);
  MOE_ADD_SPEC(b, ROLE_WK, l, -1, kvd, H, false, false, "%s.%d.self_attn.k_proj.weight", p, l);
  MOE_ADD_SPEC(b, ROLE_WV, l, -1, kvd, H, false, false, "%s.%d.self_attn.v_proj.weight", p, l);
  MOE_ADD_SPEC(b, ROLE_WO, l, -1, H, qd, false, false, "%s.%d.self_attn.o_proj.weight", p, l);
  if (c->qkv_bias) {
    MOE_ADD_SPEC(b, ROLE_BQ, l, -1, 1, qd, true, false, "%s.%d.self_attn.q_proj.bias", p, l);
    MOE_ADD_SPEC(b, ROLE_BK, l, -1, 1, kvd, true, false, "%s.%d.self_attn.k_proj.bias", p, l);
    MOE_ADD_SPEC(b, ROLE_BV, l, -1, 1, kvd, true, false, "%s.%d.self_attn.v_proj.bias", p, l);
  }
  if (c->o_bias) MOE_ADD_SPEC(b, ROLE_BO, l, -1, 1, H, true, false, "%s.%d.self_attn.o_proj.bias", p, l);
  if (c->qk_norm != MOE_QK_NORM_NONE) {
    const bool head = c->qk_norm == MOE_QK_NORM_HEAD;
    MOE_ADD_SPEC(b, ROLE_QNORM, l, -1, 1, head ? hd : qd, true, false, "%s.%d.self_attn.q_norm.weight", p, l);
    MOE_ADD_SPEC(b, ROLE_KNORM, l, -1, 1, head ? hd : kvd, true, false, "%s.%d.self_attn.k_norm.weight", p, l);
  }
  return MOE_OK;
}

/* The routed experts of layer l: one tensor per expert and matrix, or
 * stacked ones (gate and up in one [E, 2F, H], down [E, H, F]). */
static moe_status expert_specs(moe_spec_builder *b, const moe_tensor_names *n, int l) {
  const moe_config *c = moe_spec_config(b);
  const size_t H = (size_t)c->hidden, F = (size_t)c->expert_ffn;
  for (int e = 0; e < c->n_experts; e++) {
    if (n->stacked) {
      MOE_ADD_SPEC(b, ROLE_E_GATE, l, e, F, H, false, false, n->e_gate, l);
      moe_spec_stacked(b, 2 * F, 0);
      MOE_ADD_SPEC(b, ROLE_E_UP, l, e, F, H, false, false, n->e_gate, l);
      moe_spec_stacked(b, 2 * F, F);
      MOE_ADD_SPEC(b, ROLE_E_DOWN, l, e, H, F, false, false, n->e_down, l);
      moe_spec_stacked(b, H, 0);
      continue;
    }
    MOE_ADD_SPEC(b, ROLE_E_GATE, l, e, F, H, false, false, n->e_gate, l, e);
    MOE_ADD_SPEC(b, ROLE_E_UP, l, e, F, H, false, false, n->e_up, l, e);
    MOE_ADD_SPEC(b, ROLE_E_DOWN, l, e, H, F, false, false, n->e_down, l, e);
  }
  return MOE_OK;
}

/* The MoE block of layer l: the router, its optional bias (DeepSeek-V3's
 * ranking bias; for the others our routing-skew bias, not a Hugging Face
 * tensor), the optional pre-gate of a model fine-tuned for pre-gating
 * (predicts the next MoE block's experts from this block's MoE input), the
 * shared expert (Qwen2-MoE: gated; DeepSeek: added without a gate) and
 * the experts. */
static moe_status moe_block_specs(moe_spec_builder *b, const moe_tensor_names *n, int l) {
  const moe_config *c = moe_spec_config(b);
  const size_t H = (size_t)c->hidden, E = (size_t)c->n_experts;
  MOE_ADD_SPEC(b, ROLE_ROUTER, l, -1, E, H, false, false, n->router, l);
  MOE_ADD_SPEC(b, ROLE_ROUTER_BIAS, l, -1, 1, E, true, true, n->router_bias, l);
  bool has_next = false;
  for (int k = l + 1; k < c->n_layers; k++) has_next |= c->is_moe[k];
  if (has_next) MOE_ADD_SPEC(b, ROLE_PREGATE, l, -1, E, H, false, true, n->pregate, l);
  if (c->shared_ffn > 0 && n->shared) {
    const size_t S = (size_t)c->shared_ffn;
    char sh[96];
    snprintf(sh, sizeof sh, n->shared, l);
    MOE_ADD_SPEC(b, ROLE_SH_GATE, l, -1, S, H, false, false, "%s.gate_proj.weight", sh);
    MOE_ADD_SPEC(b, ROLE_SH_UP, l, -1, S, H, false, false, "%s.up_proj.weight", sh);
    MOE_ADD_SPEC(b, ROLE_SH_DOWN, l, -1, H, S, false, false, "%s.down_proj.weight", sh);
    if (n->shared_gate)
      MOE_ADD_SPEC(b, ROLE_SH_EXPERT_GATE, l, -1, 1, H, false, false,
                   "model.layers.%d.mlp.shared_expert_gate.weight", l);
  }
  return expert_specs(b, n, l);
}

moe_status moe_decoder_specs(moe_spec_builder *b) {
  const moe_config *c = moe_spec_config(b);
  const moe_family *fam = moe_family_by_arch(c->arch);
  const size_t H = (size_t)c->hidden, V = (size_t)c->vocab, D = (size_t)c->dense_ffn;
  MOE_ADD_SPEC(b, ROLE_EMBED, -1, -1, V, H, false, false, "model.embed_tokens.weight");
  MOE_ADD_SPEC(b, ROLE_FINAL_NORM, -1, -1, 1, H, true, false, "model.norm.weight");
  if (!c->tie_embeddings) MOE_ADD_SPEC(b, ROLE_LM_HEAD, -1, -1, V, H, false, false, "lm_head.weight");
  for (int l = 0; l < c->n_layers; l++) {
    const char *p = "model.layers";
    MOE_ADD_SPEC(b, ROLE_ATTN_NORM, l, -1, 1, H, true, false, "%s.%d.input_layernorm.weight", p, l);
    MOE_TRY_RET(fam->attention_specs ? fam->attention_specs(b, l) : gqa_specs(b, l));
    MOE_ADD_SPEC(b, ROLE_FFN_NORM, l, -1, 1, H, true, false, "%s.%d.post_attention_layernorm.weight", p, l);
    if (c->is_moe[l]) {
      MOE_TRY_RET(moe_block_specs(b, &fam->names, l));
      continue;
    }
    MOE_ADD_SPEC(b, ROLE_D_GATE, l, -1, D, H, false, false, "%s.%d.mlp.gate_proj.weight", p, l);
    MOE_ADD_SPEC(b, ROLE_D_UP, l, -1, D, H, false, false, "%s.%d.mlp.up_proj.weight", p, l);
    MOE_ADD_SPEC(b, ROLE_D_DOWN, l, -1, H, D, false, false, "%s.%d.mlp.down_proj.weight", p, l);
  }
  return MOE_OK;
}
