/* Offload policies: when experts move between host and device.
 *
 * A policy is a versioned const table of callbacks (moe_policy).  The engine
 * calls it at fixed points of each forward pass; the policy answers by
 * asking the engine, through the moe_policy_ctx it is handed, to fetch or
 * evict experts.  Correctness never depends on a policy: before an expert's
 * matmul the engine waits for its copy, and fetches it itself (a "miss")
 * when the policy did not.  A policy can make a run slow, never wrong.
 *
 * Built-in policies live in baselines/, one file each, listed in one
 * registry table.  Out-of-tree policies are shared objects exporting
 *
 *     const moe_policy *moe_policy_plugin(void);
 *
 * loaded with --policy-plugin PATH.  See docs/PLUGINS.md.
 *
 * Versions.  abi_version is the major version: a table built for another
 * one is refused.  Within a major version fields are only ever appended,
 * and struct_size says how much of the table its builder knew: a table
 * built against an older header (smaller struct_size, down to
 * MOE_POLICY_SIZE_1_0) is accepted, and the fields it lacks read as absent
 * (NULL, 0); a table from a newer header is accepted too, and the fields
 * this engine does not know are ignored.  The engine copies every table it
 * is given into a full-size one (moe_policy_normalize) and reads only the
 * copy, so it never reads past the end of an older plugin's table. */
#ifndef MOE_POLICY_H
#define MOE_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "moe/status.h"

#define MOE_POLICY_ABI 1
#define MOE_POLICY_PLUGIN_SYMBOL "moe_policy_plugin"

/* What a policy may know about the run when it plans. */
typedef struct moe_policy_env {
  int n_layers;          /* all layers (encoder-decoder: the encoder's, then
                            the decoder's) */
  int n_moe_layers;      /* layers with an MoE block */
  int n_experts;         /* experts per MoE block */
  int top_k;             /* experts per token */
  int max_batch;         /* sequences per decode step */
  size_t expert_bytes;   /* one expert in its storage dtype */
  size_t slot_budget;    /* device bytes left for expert slots after every
                            other engine buffer; a plan may exceed it, the
                            run then ends as OOM */
  int lookahead;         /* since ABI 1.2: a block's prediction is for the
                            lookahead-th MoE block after it (1 = the next);
                            the engine always fills it; a policy built
                            against an older header just does not read it */
  /* since ABI 1.3: what the engine knows of the costs a placement weighs
   * (seconds, from the hardware profile the run was given: modeled, not
   * measured; 0 when unknown).  A policy built against an older header
   * does not read them. */
  int host_exec;         /* 1: the engine computes experts on the host for this
                            policy (it has place; the engine refuses, at create,
                            a backend without a host stream) */
  double expert_copy_s;  /* one expert copied host-to-device (pinned) */
  double host_read_s;    /* one expert's weights read once by the host's cores */
  double host_token_s;   /* one token through one expert on the host (FLOPs / rate) */
  double xfer_token_s;   /* one token's activations down and its result back up */
} moe_policy_env;

typedef struct moe_policy_plan {
  int slots;             /* device expert slots, >= 1 */
} moe_policy_plan;

/* The engine's side, handed to every callback.  Function pointers, so a
 * plugin needs only this header. */
typedef struct moe_policy_ctx moe_policy_ctx;
struct moe_policy_ctx {
  void *engine; /* opaque */
  /* Starts an asynchronous copy of (layer, expert) into a device slot
   * unless it is resident or on its way.  Returns 1 when the expert is or
   * will be resident, 0 when no slot could be freed for it (a prefetch never
   * evicts an expert the current block still needs). */
  int (*fetch)(moe_policy_ctx *ctx, int layer, int expert);
  /* 1 when (layer, expert) holds a slot (loaded or loading). */
  int (*resident)(moe_policy_ctx *ctx, int layer, int expert);
  /* Drops (layer, expert) from its slot unless the current block needs it. */
  void (*evict)(moe_policy_ctx *ctx, int layer, int expert);
  /* The next layer with an MoE block after `layer`, or -1. */
  int (*next_moe_layer)(moe_policy_ctx *ctx, int layer);
  /* Experts per MoE block. */
  int (*n_experts)(moe_policy_ctx *ctx);
  /* Fetches (layer, expert) if needed and pins it: never evicted until
   * unpinned.  Returns 0 when no slot could be had.  Pinned slots still
   * count against the policy's planned slots. */
  int (*pin)(moe_policy_ctx *ctx, int layer, int expert);
  void (*unpin)(moe_policy_ctx *ctx, int layer, int expert);
};

typedef struct moe_policy {
  uint32_t abi_version; /* MOE_POLICY_ABI when the table was built */
  uint32_t struct_size; /* sizeof(moe_policy) when the table was built */
  const char *name;     /* unique, [a-z0-9-] */
  const char *summary;  /* one line */

  /* Required: how many device slots this policy needs. */
  moe_status (*plan)(const moe_policy_env *env, moe_policy_plan *plan, moe_error *err);

  /* Optional: per-run state.  *state may stay NULL. */
  moe_status (*create)(const moe_policy_env *env, void **state, moe_error *err);
  void (*destroy)(void *state);

  /* Optional: after the engine is built, before the first forward (e.g.
   * load everything that should stay resident).  Copies made here are setup,
   * not counted as run traffic. */
  moe_status (*warm)(void *state, moe_policy_ctx *ctx, moe_error *err);

  /* Optional: at the start of every layer (before attention). */
  moe_status (*layer_begin)(void *state, moe_policy_ctx *ctx, int layer, moe_error *err);

  /* Optional: the router of MoE layer `layer` has chosen these experts (each
   * once, ascending); their matmuls follow. */
  moe_status (*experts_needed)(void *state, moe_policy_ctx *ctx, int layer, const int *experts,
                               int n, moe_error *err);

  /* Optional: the pre-gate of the current MoE block predicts these experts
   * for MoE layer `next_layer` (ascending; with the engine option
   * pregate_second the list also holds each token's next choice, which
   * the store copies after the others and only while slots are left: a
   * policy fetches the list as it is). */
  moe_status (*experts_predicted)(void *state, moe_policy_ctx *ctx, int next_layer,
                                  const int *experts, int n, moe_error *err);

  /* Optional: at the end of every layer. */
  moe_status (*layer_end)(void *state, moe_policy_ctx *ctx, int layer, moe_error *err);

  /* ---- since ABI 1.1 (MOE_POLICY_SIZE_1_1; absent in older tables) */
  /* The routing the policy is meant for when the user names none:
   * MOE_POLICY_ROUTING_CONVENTIONAL (0, also what an older table gets) or
   * MOE_POLICY_ROUTING_PREGATED (the pre-gate's choice is the routing). */
  uint32_t default_routing;
  /* ---- since ABI 1.2 (MOE_POLICY_SIZE_1_2; absent in older tables; the
   * same version gave moe_policy_env its lookahead) */
  /* 1: before the first MoE block's attention, the engine applies that
   * block's router to the layer input and calls experts_predicted for it,
   * so its copies can overlap the attention (no block precedes it to
   * predict it).  The block is still routed by its own router.  0 (also
   * an older table): the first block is fetched when its router picks. */
  uint32_t predict_first_block;
  /* ---- since ABI 1.3 (MOE_POLICY_SIZE_1_3; absent in older tables) */
  /* Optional: where block `layer`'s experts run.  Called after its router
   * picked (experts[0..n): each once, ascending; tokens[i]: how many of
   * the block's tokens experts[i] takes), before experts_needed.  Setting
   * on_host[i] = 1 computes experts[i] on the host, from host memory: its
   * tokens' activations go down, the host's cores run it, the result comes
   * back and is added in the same order as a device expert's (the outputs
   * stay the reference's bit for bit on the cpu backend).  on_host arrives
   * all 0 (every expert on the device); experts_needed then gets the
   * device experts only.  Only when env->host_exec is 1; NULL: every
   * expert runs on the device. */
  moe_status (*place)(void *state, moe_policy_ctx *ctx, int layer, const int *experts,
                      const int *tokens, int n, unsigned char *on_host, moe_error *err);
} moe_policy;

#define MOE_POLICY_ROUTING_CONVENTIONAL 0u
#define MOE_POLICY_ROUTING_PREGATED 1u

/* The size of a table built against the first header of major version 1:
 * everything up to and including layer_end. */
#define MOE_POLICY_SIZE_1_0 (offsetof(moe_policy, layer_end) + sizeof(void (*)(void)))
/* The size of a table built against the ABI 1.1 header: up to and
 * including default_routing. */
#define MOE_POLICY_SIZE_1_1 (offsetof(moe_policy, default_routing) + sizeof(uint32_t))
/* The size of a table built against the ABI 1.2 header: up to and
 * including predict_first_block. */
#define MOE_POLICY_SIZE_1_2 (offsetof(moe_policy, predict_first_block) + sizeof(uint32_t))

/* The size of a table built against the ABI 1.3 header (this one): up to
 * and including place. */
#define MOE_POLICY_SIZE_1_3 (offsetof(moe_policy, place) + sizeof(void (*)(void)))

/* The built-in policies. */
size_t moe_policy_count(void);
const moe_policy *moe_policy_at(size_t i);
const moe_policy *moe_policy_find(const char *name);

/* Roles a built-in policy plays in comparisons, asked of the registry so
 * that no tool spells a policy's name to mean its role.  Roles belong to
 * the registry, not to the table: a plugin has none. */
typedef enum moe_policy_role {
  /* every expert resident, nothing copied during a run: the parity
   * reference whose tokens and logits the others are checked against
   * (gpu-only) */
  MOE_POLICY_ROLE_REFERENCE = 1u << 0,
  /* an expert copied when its router picks it (ondemand: the paper's
   * CPU-offload baseline) */
  MOE_POLICY_ROLE_ONDEMAND = 1u << 1,
  /* every expert of the next block copied ahead (prefetch-all) */
  MOE_POLICY_ROLE_PREFETCH_ALL = 1u << 2,
  /* the pre-gate's prediction copied ahead (pregated: the paper's design) */
  MOE_POLICY_ROLE_PREGATED = 1u << 3,
  /* one of the paper's four policies in the headline comparison */
  MOE_POLICY_ROLE_PAPER = 1u << 4,
  /* computes experts where they live, on the host (the class of
   * host-compute, fiddler, pregated-hybrid: policies with place) */
  MOE_POLICY_ROLE_HOST = 1u << 5,
} moe_policy_role;

/* The built-in policy that plays `role` (exactly one does for each role
 * but MOE_POLICY_ROLE_PAPER and MOE_POLICY_ROLE_HOST, which ask for the
 * first of several), or NULL. */
const moe_policy *moe_policy_with_role(moe_policy_role role);
/* The parity reference: moe_policy_with_role(MOE_POLICY_ROLE_REFERENCE). */
const moe_policy *moe_policy_reference(void);
/* Whether p (a built-in; a plugin plays no role) plays role. */
int moe_policy_has_role(const moe_policy *p, moe_policy_role role);
/* The built-in policies that play role, in registry order, into
 * out[0..cap); returns how many there are, also when cap is smaller. */
size_t moe_policy_with_roles(moe_policy_role role, const moe_policy **out, size_t cap);
/* The paper's four policies in the headline's order (reference, ondemand,
 * prefetch-all, pregated) into out[0..cap); returns how many there are
 * (4), also when cap is smaller. */
size_t moe_policy_paper_baselines(const moe_policy **out, size_t cap);

/* Checks a table: version, size, name, required methods.  A wrong ABI
 * version is refused with both numbers in the message; so is a table
 * smaller than MOE_POLICY_SIZE_1_0. */
moe_status moe_policy_validate(const moe_policy *p, moe_error *err);

/* Copies a validated table into *out at this header's full size: fields
 * past p->struct_size are zero (absent); out->struct_size is sizeof. */
void moe_policy_normalize(const moe_policy *p, moe_policy *out);

/* Validates the built-in registry (versions, methods, unique names). */
moe_status moe_policy_registry_check(moe_error *err);

/* A policy loaded from a shared object; keeps the library open.  policy
 * points to a normalized copy of the plugin's table, owned here. */
typedef struct moe_policy_library {
  void *handle;
  const moe_policy *policy;
} moe_policy_library;

/* dlopen()s path, resolves moe_policy_plugin(), validates the table.
 * Errors name the file. */
moe_status moe_policy_plugin_load(moe_policy_library *pl, const char *path, moe_error *err);
void moe_policy_plugin_close(moe_policy_library *pl);

#endif
