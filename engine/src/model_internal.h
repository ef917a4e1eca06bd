/* Private layout of moe_model, shared by model.c (the model: tensors, loading,
 * saving), expert_store.c and the engine (engine.c). */
#ifndef MOE_MODEL_INTERNAL_H
#define MOE_MODEL_INTERNAL_H

#include "family.h"
#include "moe/model.h"

typedef enum moe_role {
  ROLE_EMBED, ROLE_FINAL_NORM, ROLE_LM_HEAD,
  ROLE_ATTN_NORM, ROLE_WQ, ROLE_WK, ROLE_WV, ROLE_WO, ROLE_BQ, ROLE_BK, ROLE_BV,
  ROLE_FFN_NORM,
  ROLE_ROUTER, ROLE_ROUTER_BIAS, ROLE_PREGATE,
  ROLE_SH_GATE, ROLE_SH_UP, ROLE_SH_DOWN, ROLE_SH_EXPERT_GATE,
  ROLE_D_GATE, ROLE_D_UP, ROLE_D_DOWN,
  ROLE_E_GATE, ROLE_E_UP, ROLE_E_DOWN,
  /* encoder-decoder (Switch) */
  ROLE_ENC_EMBED,      /* the encoder's embedding when not the shared one (model level) */
  ROLE_ENC_FINAL_NORM, /* model level */
  ROLE_REL_BIAS,       /* [buckets, heads], on the first layer of each stack */
  ROLE_XATTN_NORM, ROLE_XQ, ROLE_XK, ROLE_XV, ROLE_XO, /* decoder cross-attention */
  ROLE_BO, ROLE_QNORM, ROLE_KNORM, /* output bias, q/k norms (Qwen3-MoE, OLMoE) */
  /* multi-head latent attention (DeepSeek): q_a_proj (+ bias) and its norm,
   * kv_a_proj_with_mqa (+ bias) and the latent's norm, kv_b_proj; the
   * query's second projection (q_b_proj) or plain q_proj is ROLE_WQ */
  ROLE_QA, ROLE_BQA, ROLE_QA_NORM, ROLE_KVA, ROLE_BKVA, ROLE_KVA_NORM, ROLE_KVB,
  ROLE_COUNT
} moe_role;

typedef struct moe_tensor_spec {
  char name[128];  /* Hugging Face tensor name */
  char alt[128];   /* another name the tensor may have in a checkpoint, or "" */
  moe_role role;
  int layer;       /* -1 for model-level tensors */
  int expert;      /* -1 unless a routed expert's */
  size_t rows, cols;
  bool vector;     /* stored as 1-d [cols] in checkpoints */
  bool optional;   /* may be absent from a checkpoint */
  bool present;
  bool is_expert;
  size_t offset;   /* bytes into its slab (dense or experts) */
  /* a slice of a stacked 3-D checkpoint tensor [n, stack_rows, cols]:
   * entry `expert`, rows stack_row0 .. stack_row0 + rows; stack_rows 0: a
   * tensor of its own */
  size_t stack_rows, stack_row0;
} moe_tensor_spec;

struct moe_model {
  moe_config cfg;
  moe_dtype dtype;
  moe_tensor_spec *specs;
  size_t n_specs;
  int dense_index[MOE_MAX_LAYERS + 1][ROLE_COUNT]; /* spec index or -1; [n_layers] = model-level */
  int moe_index[MOE_MAX_LAYERS];                   /* layer -> MoE layer index, or -1 */
  int n_moe;
  uint8_t *dense;       /* dense slab, host */
  size_t dense_bytes;
  uint8_t *experts;     /* expert slab, host: [n_moe][n_experts][gate|up|down] */
  size_t expert_bytes;  /* one expert */
  size_t experts_total;
  bool is_virtual;      /* slabs are reserved address space (moe_model_virtual) */
};

/* Builds a model's tensor table (the families' spec builders). */
struct moe_spec_builder {
  moe_model *m;
  size_t cap;
  moe_error *err;
};

/* Appends a tensor: its role, layer (-1: model level), expert (-1: none),
 * shape, whether stored 1-d, whether it may be absent, and its name. */
moe_status moe_spec_add(moe_spec_builder *b, moe_role role, int layer, int expert, size_t rows,
                        size_t cols, bool vector, bool optional, const char *fmt, ...)
    __attribute__((format(printf, 9, 10)));
#define MOE_ADD_SPEC(b, ...) MOE_TRY_RET(moe_spec_add((b), __VA_ARGS__))
/* The last tensor added may also be found under another name. */
void moe_spec_alt(moe_spec_builder *b, const char *alt);
/* The last tensor added is rows row0 .. of entry `expert` of a stacked
 * tensor [n, rows_per_entry, cols]. */
void moe_spec_stacked(moe_spec_builder *b, size_t rows_per_entry, size_t row0);
/* The config being laid out. */
const moe_config *moe_spec_config(const moe_spec_builder *b);

/* The spec of a dense tensor (layer -1: model level); NULL when absent. */
const moe_tensor_spec *moe_model_spec(const moe_model *m, int layer, moe_role role);

/* Host pointer to expert e of layer `layer` (whole block, gate first). */
const void *moe_model_expert_host(const moe_model *m, int layer, int expert);

#endif
