/* The expert store: device slots for experts, and the only way the MoE
 * block reaches an expert's weights.
 *
 * A fixed number of slots, each the size of one expert in its storage dtype,
 * in one device allocation (category "expert_slots").  A residency map sends
 * (layer, expert) to a slot.  Fetches are asynchronous copies on the
 * backend's copy stream, each slot with a completion event.
 *
 * Correctness belongs here, not to the policy: moe_expert_store_acquire
 * makes the expert resident if it is not (a demand fetch, counted as a
 * miss), waits for its copy (time blocked is counted as stall), and keeps
 * the slot from being overwritten until moe_expert_store_release. */
#ifndef MOE_EXPERT_STORE_H
#define MOE_EXPERT_STORE_H

#include <stdbool.h>

#include "moe/backend.h"
#include "moe/model.h"

typedef struct moe_expert_store moe_expert_store;

typedef struct moe_expert_weights {
  moe_weight gate; /* [ffn, hidden]; data NULL for ReLU experts (wi = up, wo = down) */
  moe_weight up;   /* [ffn, hidden] */
  moe_weight down; /* [hidden, ffn] */
} moe_expert_weights;

typedef struct moe_expert_stats {
  unsigned long long fetches;   /* host-to-device expert copies issued */
  unsigned long long bytes_h2d; /* bytes those copies moved */
  unsigned long long misses;    /* fetches the engine had to make itself */
  unsigned long long refused;   /* prefetches refused for want of a free slot */
  unsigned long long evictions; /* residents dropped to make room */
  unsigned long long wasted;    /* copies evicted before any use: speculation that
                                   missed, or a prefetch the slots could not keep */
  unsigned long long recopies;  /* fetches of an expert already copied for the same
                                   run of its block (its first copy was evicted
                                   before use): bytes moved twice */
  unsigned long long gets;      /* acquire calls */
  unsigned long long reused;    /* acquires served by a copy made for an earlier run of the
                                   block (or by warm()): no copy in this run, a cache hit */
  unsigned long long cancelled; /* copies cut short, some chunks not moved (ABI 1.8;
                                   depends on timing): a prediction its block did not
                                   need, or a copy whose slot went to another expert
                                   before it landed */
  unsigned long long urged;     /* copies made urgent: their block began with them
                                   still queued or moving (ABI 1.8) */
  double stall_s;               /* compute time spent waiting on copies */
} moe_expert_stats;

/* Creates a store with `slots` slots for model on dev (slots in 1 ..
 * MoE layers x experts). */
/* Whether the model's expert weights are pinned host memory (1), pageable
 * because pinning failed (0), or the backend does not pin (-1), and the
 * seconds the registration took (near 0 when the range was already pinned
 * by another user). */
void moe_expert_store_pinning(const moe_expert_store *s, int *pinned, double *pin_s);

moe_status moe_expert_store_create(moe_expert_store **out, const moe_model *model,
                                   moe_device *dev, int slots, moe_error *err);
void moe_expert_store_free(moe_expert_store *s);


/* Starts fetching (layer, expert) unless resident.  prefetch: may only
 * evict experts that are neither held, in use nor pinned, and marks the
 * expert held; returns 0 when no slot can be had (counted as refused).
 * Inside a round (round_begin .. round_end) a prefetch of an absent expert
 * is queued and placed at round_end (in a round of predictions,
 * moe_expert_store_speculate, a next choice, scored below 0, is queued
 * whatever the room and placed only if a slot is left after the others).  Returns 1 when resident, on its way
 * or queued, -1 on a backend error (recorded in err). */
int moe_expert_store_fetch(moe_expert_store *s, int layer, int expert, bool prefetch,
                           moe_error *err);

/* A round of prefetches: between round_begin and round_end, a prefetch
 * (moe_expert_store_fetch with prefetch) of a resident expert marks it held
 * at once, and one of an absent expert is queued; round_end places the
 * queued ones, so victims are chosen only after every target of the round
 * is marked, and no target evicts a sibling.  round_end returns 0, or -1 on
 * a backend error (recorded in err); a queued fetch that finds no slot
 * then is counted as refused. */
void moe_expert_store_round_begin(moe_expert_store *s);
int moe_expert_store_round_end(moe_expert_store *s, moe_error *err);

/* Marks the experts the block of `layer` needs: they are protected from
 * prefetch eviction until released.  Ends the holds of blocks up to
 * `layer`; holds of later blocks (a prefetch round for them) stay. */
void moe_expert_store_begin_block(moe_expert_store *s, int layer, const int *experts, int n);

/* A round of predictions for `layer` (call just before round_begin):
 * round_end places its copies surest first, score[expert] descending
 * (ties in request order; NULL: request order), and marks them
 * predictions, which moe_expert_store_settle may cancel. */
void moe_expert_store_speculate(moe_expert_store *s, int layer, const float *score);

/* Orders the copy stream for the block of `layer`, which needs experts[0..n)
 * and runs them in that order (call after begin_block).  On a backend with
 * overtakable copies (ABI 1.8; a no-op elsewhere): drops the predictions
 * for this block that it does not need (not held, in use or pinned),
 * cancelling what is left of their copies (counted as cancelled when a
 * chunk was dropped; the slot is freed either way); makes the copies of
 * its predicted experts still on their way urgent (counted as urged; a
 * policy's own prefetches keep their place); and starts an
 * urgent copy of each absent one into a free or unheld slot (a demand
 * fetch, counted as a miss; when no such slot is left, acquire fetches
 * it).  So a demand fetch waits behind at most one chunk of a
 * prediction's copy.  0, or -1 on a backend error (recorded in err). */
int moe_expert_store_settle(moe_expert_store *s, int layer, const int *experts, int n,
                            moe_error *err);

/* The block of `layer` is done (its experts released): later copies of its
 * experts are for its next run, not re-copies. */
void moe_expert_store_end_block(moe_expert_store *s, int layer);

/* Device views of (layer, expert), resident and loaded, in use until
 * release.  MOE_ERR_INVALID for a layer without an MoE block or an expert
 * out of range. */
moe_status moe_expert_store_acquire(moe_expert_store *s, int layer, int expert,
                                    moe_expert_weights *out, moe_error *err);
/* Views of one expert's gate, up and down matrices laid out from `expert`
 * (gate first; its slot, or its block in the model's host slab). */
void moe_expert_views(const moe_model *m, const void *expert, moe_expert_weights *w);
moe_status moe_expert_store_release(moe_expert_store *s, int layer, int expert, moe_error *err);

/* Fetches (layer, expert) as a prefetch would and pins it: no eviction
 * (not even a demand fetch's) takes a pinned slot until it is unpinned.
 * Returns 1 when pinned, 0 when no slot could be had, -1 on error.  At
 * least one slot always stays unpinned, so demand fetches can proceed. */
int moe_expert_store_pin(moe_expert_store *s, int layer, int expert, moe_error *err);
void moe_expert_store_unpin(moe_expert_store *s, int layer, int expert);

/* Drops (layer, expert) unless held, pinned or in use.  Returns 1 when dropped. */
int moe_expert_store_evict(moe_expert_store *s, int layer, int expert);
int moe_expert_store_resident(const moe_expert_store *s, int layer, int expert);

/* Checks the residency invariants (map and slots agree, no expert in two
 * slots, counts consistent).  MOE_ERR_INTERNAL describing the first
 * violation. */
moe_status moe_expert_store_check(const moe_expert_store *s, moe_error *err);

const moe_expert_stats *moe_expert_store_stats(const moe_expert_store *s);
void moe_expert_store_reset_stats(moe_expert_store *s);

/* Which resident a fetch evicts when no slot is free: the least recently
 * used (the default) or the least frequently used (acquires since the
 * store was created; ties to the least recently used). */
typedef enum moe_eviction { MOE_EVICT_LRU = 0, MOE_EVICT_LFU = 1 } moe_eviction;
void moe_expert_store_set_eviction(moe_expert_store *s, moe_eviction how);

/* How many times expert `expert` of layer `layer` was acquired; 0 for a
 * layer without an MoE block. */
unsigned long long moe_expert_store_uses(const moe_expert_store *s, int layer, int expert);

#endif
