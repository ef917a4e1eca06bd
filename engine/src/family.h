/* Model families.  Each family is one descriptor (engine/src/families/
 * <family>.c) listed in the registry (families/registry.c): the
 * model_type strings of its config.json, transformers' defaults, ONE field
 * table that drives reading, defaulting, range checks and saving, a hook
 * for what a table cannot say (derived fields, cross-field checks), its
 * tensor names, its attention kind and the optional backend ops its
 * forward pass needs.  config.c and model.c are generic over these. */
#ifndef MOE_FAMILY_H
#define MOE_FAMILY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "moe/backend.h"
#include "moe/config.h"
#include "moe/status.h"

/* Returns the status of expr when it is not MOE_OK. */
#define MOE_TRY_RET(expr)            \
  do {                               \
    moe_status st_ = (expr);         \
    if (st_ != MOE_OK) return st_;   \
  } while (0)

/* The object being read, and where errors go. */
typedef struct moe_field_ctx {
  json_t *obj;
  const char *origin; /* the file or "preset NAME", for messages */
  moe_error *err;
} moe_field_ctx;

typedef enum moe_field_kind {
  MOE_FIELD_INT,    /* int member; absent or null keeps the default */
  MOE_FIELD_FLOAT,  /* float member */
  MOE_FIELD_BOOL,   /* bool member */
  MOE_FIELD_STRING, /* no member: one of `choices` when present; the first is saved */
} moe_field_kind;

typedef struct moe_field moe_field;

struct moe_field {
  const char *key; /* the config.json key */
  moe_field_kind kind;
  size_t off;      /* offsetof(moe_config, member) */
  unsigned flags;  /* MOE_F_* */
  double lo, hi;   /* FLOAT: the accepted range, checked by moe_config_validate (lo < hi) */
  const char *const *choices; /* STRING: accepted values, NULL-terminated */
  const char *why;            /* STRING: why others are refused */
  /* instead of the kind's reader / writer (a NULL json_t: not saved) */
  moe_status (*read)(moe_config *cfg, const moe_field_ctx *c, const moe_field *f);
  json_t *(*save)(const moe_config *cfg, const moe_field *f);
};

#define MOE_F_NO_READ 1u   /* written by moe_config_save only (read by the family's finish) */
#define MOE_F_NO_SAVE 2u   /* read only */
#define MOE_F_NULL_ZERO 4u /* INT: null reads as 0 and 0 is saved as null */
#define MOE_F_NEG_NULL 8u  /* INT: a negative value is saved as null */
#define MOE_F_NULL_BAD 16u /* STRING: null is refused like a wrong value */

#define MOE_FIELD(k, kd, member, ...) \
  {.key = (k), .kind = (kd), .off = offsetof(moe_config, member), __VA_ARGS__}
#define MOE_INT(k, member, ...) MOE_FIELD(k, MOE_FIELD_INT, member, __VA_ARGS__)
#define MOE_FLOAT(k, member, ...) MOE_FIELD(k, MOE_FIELD_FLOAT, member, __VA_ARGS__)
#define MOE_BOOL(k, member, ...) MOE_FIELD(k, MOE_FIELD_BOOL, member, __VA_ARGS__)
#define MOE_STRING(k, ok, reason, ...) \
  {.key = (k), .kind = MOE_FIELD_STRING, .choices = (ok), .why = (reason), __VA_ARGS__}
#define MOE_FIELD_END {.key = NULL}

/* Descriptor shorthands: the model_type names, and a decoder-only
 * family's tables (the shared head, its own fields, the RoPE tail). */
#define MOE_TYPES(...) .model_types = (const char *const[]){__VA_ARGS__, NULL}
#define MOE_DECODER_TABLES(...) \
  .tables = (const moe_field *const[]){moe_fields_decoder_head, __VA_ARGS__, moe_fields_decoder_tail, NULL}

/* The attention a family's layers use. */
typedef enum moe_attn_kind {
  MOE_ATTN_GQA = 0, /* q/k/v/o projections, RoPE, grouped-query heads */
  MOE_ATTN_MLA = 1, /* multi-head latent attention (DeepSeek) */
  MOE_ATTN_T5 = 2   /* relative-position buckets, no RoPE (Switch) */
} moe_attn_kind;

/* Tensor names of the MoE part of a decoder-only layer, printf formats of
 * the layer index (and for experts then the expert index). */
typedef struct moe_tensor_names {
  const char *router, *router_bias, *pregate; /* the bias and pre-gate are optional */
  const char *e_gate, *e_up, *e_down;
  /* experts stored stacked, one 3-D tensor per layer (format of the layer
   * only): e_gate is [E, 2F, H] with the gate's rows first and the up
   * projection's after them (e_up unused), e_down is [E, H, F] */
  bool stacked;
  const char *shared; /* the shared expert's module (format of the layer), NULL: none */
  bool shared_gate;   /* a sigmoid gate shared_expert_gate on the shared expert */
} moe_tensor_names;

typedef struct moe_spec_builder moe_spec_builder;

typedef struct moe_family {
  const char *name;                /* "mixtral", in messages */
  moe_arch arch;
  const char *const *model_types;  /* NULL-terminated; the first one is saved */
  const moe_config *defaults;      /* transformers' defaults for absent fields */
  const moe_field *const *tables;  /* NULL-terminated; read and saved in this order */
  /* after the tables: derived fields and checks across fields (NULL: none) */
  moe_status (*finish)(moe_config *cfg, const moe_field_ctx *c);
  moe_attn_kind attention;
  unsigned required_ops;           /* MOE_OP_BIT(MOE_OP_...) the forward pass needs */
  moe_tensor_names names;
  /* the whole tensor table (NULL: the decoder-only one, moe_decoder_specs) */
  moe_status (*build_specs)(moe_spec_builder *b);
  /* one layer's attention tensors (NULL: q/k/v/o with the config's biases and norms) */
  moe_status (*attention_specs)(moe_spec_builder *b, int layer);
  /* the embedding whose dtype a checkpoint's weights take, and another name
   * it may have ("" none); NULL: model.embed_tokens.weight */
  void (*embed_names)(const moe_config *c, const char **name, const char **alt);
} moe_family;

/* The family of a config.json model_type, or NULL. */
const moe_family *moe_family_by_type(const char *model_type);
/* The family of an arch, or NULL. */
const moe_family *moe_family_by_arch(moe_arch arch);
/* "mixtral, qwen2_moe, ... or switch_transformers": every model_type known. */
void moe_family_type_list(char *buf, size_t n);
/* The backend ops a model of this config needs: the family's, plus
 * rope_ex for scaled RoPE and router_topk_ex for grouped routing. */
unsigned moe_family_required_ops(const moe_family *fam, const moe_config *cfg);

/* ---- shared by the families (config.c, families/common.c) */

/* Readers of one field of c->obj: absent or null keeps *out (an int's
 * range is 0 .. 2^30). */
moe_status moe_field_int(const moe_field_ctx *c, const char *key, int *out);
moe_status moe_field_num(const moe_field_ctx *c, json_t *obj, const char *key, float *out);
moe_status moe_field_bool(const moe_field_ctx *c, const char *key, bool *out);
/* Whether obj has key with a non-null value. */
bool moe_field_given(json_t *obj, const char *key);

/* The decoder-only families' fields: the ones every config.json of theirs
 * holds (head), and the RoPE parameters (tail, saved last). */
extern const moe_field moe_fields_decoder_head[];
extern const moe_field moe_fields_decoder_tail[];

/* Readers and writers shared by several tables. */
moe_status moe_read_experts(moe_config *cfg, const moe_field_ctx *c, const moe_field *f);
moe_status moe_read_attention_bias(moe_config *cfg, const moe_field_ctx *c, const moe_field *f);
/* A flag that must be false / true when given (f->why: the reason). */
moe_status moe_read_false(moe_config *cfg, const moe_field_ctx *c, const moe_field *f);
moe_status moe_read_true(moe_config *cfg, const moe_field_ctx *c, const moe_field *f);
/* decoder_sparse_step and mlp_only_layers, written (Qwen's pattern; read by
 * moe_family_sparse_step_layers). */
extern const moe_field moe_fields_sparse_step[];

/* Every layer an MoE block (refusing more layers than MOE_MAX_LAYERS). */
moe_status moe_family_all_moe(moe_config *cfg, const moe_field_ctx *c);
/* Which layers slide: layer_types when given; otherwise every layer once a
 * window is set (conservative: a run inside the window is unaffected). */
void moe_family_sliding_layers(moe_config *cfg, const moe_field_ctx *c);

/* Qwen's pattern: every decoder_sparse_step-th layer MoE but
 * mlp_only_layers (and use_sliding_window / sliding_window). */
moe_status moe_family_sparse_step_layers(moe_config *cfg, const moe_field_ctx *c);

/* The experts and router of the families that name them mlp.* */
#define MOE_NAMES_MLP                                        \
  MOE_NAMES_MLP_EXPERTS, .router_bias = "model.layers.%d.mlp.gate.bias"
#define MOE_NAMES_MLP_EXPERTS                                \
  .router = "model.layers.%d.mlp.gate.weight",               \
  .pregate = "model.layers.%d.mlp.pregate.weight",           \
  .e_gate = "model.layers.%d.mlp.experts.%d.gate_proj.weight", \
  .e_up = "model.layers.%d.mlp.experts.%d.up_proj.weight",   \
  .e_down = "model.layers.%d.mlp.experts.%d.down_proj.weight"

/* The decoder-only tensor table: embeddings, then per layer the attention
 * (the family's attention_specs or q/k/v/o), the router, optional bias and
 * pre-gate, shared expert and experts named by the family. */
moe_status moe_decoder_specs(moe_spec_builder *b);

#endif
