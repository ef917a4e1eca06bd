/* The regime model: what an offload policy's decode step can take at best,
 * from four figures of a run.
 *
 * R = one expert's copy time / one MoE block window's compute decides how
 * much of the copying a policy can hide.  The model (derived in
 * docs/PERFORMANCE.md, "The regime map"): a decode step of gpu-only takes
 * step_s, of which n_blocks MoE block windows of window_s each (the compute
 * from one MoE block's prediction point to the next block's use of its
 * experts) and the rest outside them; each block needs k experts (top-k at
 * batch 1, distinct); one expert's copy takes copy_s on one link that
 * copies one thing at a time.  Assumptions: no expert is reused from an
 * earlier step (slots hold one block's experts), predictions are exact
 * (pre-gated routing uses them), and nothing predicts a stack's first MoE
 * block (its copies are exposed, as in the paper).
 *
 *   gpu-only      step_s
 *   ondemand      step_s + n k c                       (every copy exposed)
 *   pregated      step_s + k c + (n - 1) max(0, k c - w)
 *   prefetch-all  step_s + E c + (n - 1) max(0, E c - w)
 *
 * with c = copy_s, w = window_s, E experts per block.  A pregated block's
 * copies start when the previous block predicts them and run while its
 * window computes; what the window cannot cover is a stall.  These are
 * bounds on the schedule (a real run adds issue overheads and, on the cpu
 * backend, the copy thread's contention for memory bandwidth), not
 * measurements. */
#ifndef MOE_REGIME_H
#define MOE_REGIME_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moe_regime_policy {
  MOE_REGIME_GPU_ONLY = 0,
  MOE_REGIME_ONDEMAND,
  MOE_REGIME_PREGATED,
  MOE_REGIME_PREFETCH_ALL,
  MOE_REGIME_POLICIES
} moe_regime_policy;

typedef struct moe_regime {
  int n_blocks;    /* MoE blocks in the decoding stack */
  int top_k;       /* experts each block needs per token (batch 1) */
  int n_experts;   /* experts per block (prefetch-all copies them all) */
  double step_s;   /* gpu-only decode step */
  double window_s; /* one MoE block window's compute */
  double copy_s;   /* one expert's copy */
} moe_regime;

/* The model's decode step time for policy p; NAN for a policy the model
 * does not cover or figures that are not positive and finite (n_blocks,
 * top_k, n_experts >= 1, window_s <= step_s / n_blocks). */
double moe_regime_step_s(const moe_regime *r, moe_regime_policy p);
/* "gpu-only", "ondemand", "pregated", "prefetch-all". */
const char *moe_regime_policy_name(moe_regime_policy p);

#ifdef __cplusplus
}
#endif

#endif
