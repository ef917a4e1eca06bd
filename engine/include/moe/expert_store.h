/* The expert store: where the engine gets an expert's weights.
 *
 * The MoE block asks for expert e of layer l through moe_expert_store_get
 * and nothing else, so the residency policy can change without touching the
 * forward pass.  This version keeps every expert resident in device memory
 * (one slab, uploaded once at creation); device slots, fetch/evict and
 * policies build on the same call. */
#ifndef MOE_EXPERT_STORE_H
#define MOE_EXPERT_STORE_H

#include "moe/backend.h"
#include "moe/model.h"

typedef struct moe_expert_store moe_expert_store;

typedef struct moe_expert_weights {
  moe_weight gate; /* [ffn, hidden] */
  moe_weight up;   /* [ffn, hidden] */
  moe_weight down; /* [hidden, ffn] */
} moe_expert_weights;

typedef struct moe_expert_stats {
  unsigned long long fetches;     /* host-to-device expert copies */
  unsigned long long bytes_h2d;   /* bytes those copies moved */
  unsigned long long gets;        /* moe_expert_store_get calls */
} moe_expert_stats;

/* Creates the store for model on dev and uploads every expert. */
moe_status moe_expert_store_create(moe_expert_store **out, const moe_model *model,
                                   const moe_device *dev, moe_error *err);
void moe_expert_store_free(moe_expert_store *s);

/* Device views of expert `expert` of layer `layer` (an MoE layer).  Orders
 * later compute after the expert's copy.  MOE_ERR_INVALID for a layer that
 * has no MoE block or an expert out of range. */
moe_status moe_expert_store_get(moe_expert_store *s, int layer, int expert,
                                moe_expert_weights *out, moe_error *err);

const moe_expert_stats *moe_expert_store_stats(const moe_expert_store *s);

/* How many times expert `expert` of layer `layer` was asked for (once per
 * MoE block execution in which it had tokens); 0 for a non-MoE layer. */
unsigned long long moe_expert_store_uses(const moe_expert_store *s, int layer, int expert);
size_t moe_expert_store_device_bytes(const moe_expert_store *s);

#endif
