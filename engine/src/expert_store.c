/* Expert store: device slots, residency map, async fetch, eviction. */
#include "moe/device.h"
#include "moe/clock.h"
#include "moe/expert_store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model_internal.h"

typedef struct slot {
  int layer, expert;       /* owner, -1 when free */
  moe_event *ready;        /* signalled when the owner's bytes have landed */
  moe_event *free_ev;      /* recorded when compute last finished with it */
  unsigned long long tick; /* last touch, for LRU */
  bool hold;               /* needed by the current block, or a prefetch of this round */
  bool in_use;             /* between acquire and release */
  bool pinned;             /* a policy's pin: never a victim */
  bool used;               /* acquired since its copy */
  bool copied;             /* holds a copy made since the last stats reset */
  bool spec;               /* its copy is a prediction for a block not begun yet */
} slot;

struct moe_expert_store {
  const moe_model *model;
  moe_device *dev;
  uint8_t *slab;           /* device: n_slots x expert_bytes */
  slot *slots;
  int n_slots;
  int *slot_of;            /* [n_moe * n_experts] -> slot or -1 */
  int n_pinned;
  unsigned long long *uses;
  unsigned long long *copied_in; /* [key]: 1 + the run of its block it was last copied for, 0 never */
  unsigned long long *block_runs; /* [MoE layer]: runs of the block finished so far */
  unsigned long long tick;
  bool round_open;         /* between round_begin and round_end */
  struct queued {
    int layer, expert;
    long key;
  } *queued;               /* a round's absent targets, in request order */
  int n_queued;
  bool *queued_mark;       /* [key]: in the queue */
  int round_free;          /* slots a round may still take (-1: not counted yet) */
  int n_next;              /* of the queued, next choices (they do not count against it) */
  int spec_layer;          /* the round is predictions for this layer (-1: not) */
  const float *spec_score; /* ... how sure of each expert (NULL: request order) */
  bool urgent_ok;          /* the backend has overtakable copies (ABI 1.8) */
  bool timed;              /* its copies move no bytes (copy_timed): read the host's */
  bool registered;         /* the model's expert slab is pinned for async copies */
  int pinned;              /* 1 pinned, 0 pageable (pinning failed), -1 the backend does not pin */
  double pin_s;            /* seconds host_register took (0 when already pinned by another) */
  moe_eviction eviction;
  moe_expert_stats stats;
};

void moe_expert_store_free(moe_expert_store *s) {
  if (s == NULL) return;
  const moe_backend_ops *o = s->dev->ops;
  /* copies into the slots (from the pinned slab) may be in flight: they
   * finish before the slots are freed and the slab unpinned */
  moe_error ignored = {0};
  if (s->n_slots > 0) (void)o->synchronize(s->dev->be, &ignored);
  for (int i = 0; s->slots && i < s->n_slots; i++) {
    if (s->slots[i].ready) o->event_destroy(s->dev->be, s->slots[i].ready);
    if (s->slots[i].free_ev) o->event_destroy(s->dev->be, s->slots[i].free_ev);
  }
  free(s->slots);
  free(s->slot_of);
  free(s->uses);
  free(s->copied_in);
  free(s->block_runs);
  free(s->queued);
  free(s->queued_mark);
  if (s->registered) o->host_unregister(s->dev->be, s->model->experts);
  moe_device_free(s->dev, s->slab);
  free(s);
}

moe_status moe_expert_store_create(moe_expert_store **out, const moe_model *m, moe_device *dev,
                                   int slots, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_backend_ops *o = dev->ops;
  *out = NULL;
  const size_t n = (size_t)m->n_moe * (size_t)m->cfg.n_experts;
  moe_expert_store *s = calloc(1, sizeof *s);
  MOE_CHECK_ALLOC(s, err, sizeof *s);
  s->model = m;
  s->dev = dev;
  s->spec_layer = -1;
  /* the methods, and this instance uses them (cuda: MOE_CUDA_OVERTAKE=1) */
  s->urgent_ok = o->copy_h2d_ex != NULL && o->copy_chunk(dev->be) > 0;
  s->timed = o->copy_timed != NULL && o->copy_timed(dev->be);
  if (n == 0) {
    *out = s;
    return MOE_OK;
  }
  MOE_CHECK(slots >= 1 && (size_t)slots <= n, err, MOE_ERR_INVALID,
            "expert slots must be in 1..%zu (MoE layers x experts), got %d", n, slots);
  s->n_slots = slots;
  s->slots = calloc((size_t)slots, sizeof *s->slots);
  s->slot_of = malloc(n * sizeof *s->slot_of);
  s->uses = calloc(n, sizeof *s->uses);
  s->copied_in = calloc(n, sizeof *s->copied_in);
  s->block_runs = calloc((size_t)m->n_moe, sizeof *s->block_runs);
  s->queued = malloc(n * sizeof *s->queued);
  s->queued_mark = calloc(n, sizeof *s->queued_mark);
  MOE_CHECK(s->slots && s->slot_of && s->uses && s->copied_in && s->block_runs && s->queued && s->queued_mark, err, MOE_ERR_OOM, "out of host memory (expert store)");
  for (size_t i = 0; i < n; i++) s->slot_of[i] = -1;
  MOE_TRY(moe_device_alloc(dev, MOE_MEM_EXPERTS, (size_t)slots * m->expert_bytes, "expert slots",
                           (void **)&s->slab, err));
  s->pinned = -1; /* a modeled backend's pinning is not a fact about this host */
  if (o->host_register && o->host_unregister && !(o->caps & MOE_BACKEND_CAP_MODELED)) {
    /* Pinned, the copies are truly asynchronous; when the range cannot be
     * pinned the run goes on from pageable memory (slower copies, the same
     * results), says so once, and the result row records it (pinned 0). */
    moe_error perr = {0};
    const double t0 = moe_clock_s();
    const moe_status pst = o->host_register(dev->be, m->experts, m->experts_total, &perr);
    s->pin_s = moe_clock_s() - t0;
    s->pinned = pst == MOE_OK;
    if (pst == MOE_OK) {
      s->registered = true;
    } else {
      static int warned;
      if (!warned++)
        fprintf(stderr, "moe: warning: expert weights stay in pageable host memory (%s); "
                        "copies will not overlap compute fully\n", perr.msg);
    }
  }
  for (int i = 0; i < slots; i++) {
    s->slots[i].layer = s->slots[i].expert = -1;
    MOE_TRY(o->event_create(dev->be, &s->slots[i].ready, err));
    MOE_TRY(o->event_create(dev->be, &s->slots[i].free_ev, err));
  }
  *out = s;
  return MOE_OK;
cleanup:
  moe_expert_store_free(s);
  return st;
}

/* Index into the residency map, or -1 for a bad (layer, expert). */
static long key_of(const moe_expert_store *s, int layer, int expert) {
  const moe_model *m = s->model;
  if (layer < 0 || layer >= m->cfg.n_layers || m->moe_index[layer] < 0 || expert < 0 ||
      expert >= m->cfg.n_experts)
    return -1;
  return (long)m->moe_index[layer] * m->cfg.n_experts + expert;
}

/* Picks a slot to load into: a free one, else the least recently used one
 * that is neither held nor in use; when forced (a demand fetch), else the
 * least recently used one not in use.  -1 when none. */
static bool better_victim(const moe_expert_store *s, int i, int best) {
  if (best < 0) return true;
  const slot *a = &s->slots[i], *b = &s->slots[best];
  if (s->eviction == MOE_EVICT_LFU && a->layer >= 0 && b->layer >= 0) {
    const unsigned long long ua = s->uses[key_of(s, a->layer, a->expert)],
                             ub = s->uses[key_of(s, b->layer, b->expert)];
    if (ua != ub) return ua < ub;
  }
  return a->tick < b->tick;
}

static int pick_victim(const moe_expert_store *s, bool forced) {
  int best = -1;
  for (int pass = 0; pass < (forced ? 3 : 2) && best < 0; pass++)
    for (int i = 0; i < s->n_slots; i++) {
      const slot *sl = &s->slots[i];
      bool ok = pass == 0   ? sl->layer < 0
                : pass == 1 ? !sl->hold && !sl->in_use && !sl->pinned
                            : !sl->in_use && !sl->pinned;
      if (ok && better_victim(s, i, best)) best = i;
    }
  return best;
}

void moe_expert_store_set_eviction(moe_expert_store *s, moe_eviction how) { s->eviction = how; }

static void drop(moe_expert_store *s, int i) {
  slot *sl = &s->slots[i];
  if (sl->layer >= 0) {
    s->slot_of[key_of(s, sl->layer, sl->expert)] = -1;
    s->stats.evictions++;
    if (!sl->used && sl->copied) s->stats.wasted++; /* copied, never used */
  }
  sl->layer = sl->expert = -1;
  sl->hold = false;
  sl->pinned = false;
  sl->spec = false;
}

/* Candidates a prefetch may take: free slots, and residents neither held,
 * in use nor pinned. */
static int prefetch_candidates(const moe_expert_store *s) {
  int n = 0;
  for (int i = 0; i < s->n_slots; i++) {
    const slot *sl = &s->slots[i];
    n += sl->layer < 0 || (!sl->hold && !sl->in_use && !sl->pinned);
  }
  return n;
}

/* How place copies: a demand fetch may take a held slot (FORCE) and its
 * copy overtakes queued ones (URGENT); a prefetch marks its slot held
 * (HOLD); a prediction's copy may be cancelled once its block begins
 * (SPEC). */
enum { PLACE_FORCE = 1, PLACE_URGENT = 2, PLACE_HOLD = 4, PLACE_SPEC = 8 };
#define PLACE_PREFETCH PLACE_HOLD
#define PLACE_DEMAND (PLACE_FORCE | PLACE_URGENT)

/* Copies (layer, expert), key k, not resident, into a victim slot.  1 when
 * placed, 0 when no slot can be had (counted as refused), -1 on error. */
static int place(moe_expert_store *s, int layer, int expert, long k, int how, moe_error *err) {
  int v = pick_victim(s, (how & PLACE_FORCE) != 0);
  if (v < 0) {
    s->stats.refused++;
    return 0;
  }
  const bool was_spec = s->slots[v].spec;
  if (s->slots[v].layer >= 0) drop(s, v);
  const moe_model *m = s->model;
  const moe_backend_ops *o = s->dev->ops;
  slot *sl = &s->slots[v];
  /* The copy stream must not overwrite the slot before compute is done with
   * its previous contents. */
  uint8_t *dst = s->slab + (size_t)v * m->expert_bytes;
  const void *src = moe_model_expert_host(m, layer, expert);
  moe_status st;
  if (s->urgent_ok) {
    /* The slot's previous copies, if still queued, must not land after
     * this one where it may overtake them: now (an urgent copy) or once
     * urged (a prediction).  Their expert was just evicted, so what is
     * left of them is cancelled (counted when a chunk was dropped); so is
     * a prediction's, evicted before its block began.  A policy's own
     * prefetch evicted by another (prefetch-all's) keeps moving its bytes,
     * in issue order, as the policy asked. */
    if (how & (PLACE_URGENT | PLACE_SPEC) || was_spec)
      s->stats.cancelled += (unsigned long long)o->copy_cancel(s->dev->be, sl->ready);
    st = o->copy_h2d_ex(s->dev->be, dst, src, m->expert_bytes, sl->free_ev, sl->ready,
                        (how & PLACE_URGENT) != 0, err);
  } else {
    st = o->copy_wait(s->dev->be, sl->free_ev, err);
    if (st == MOE_OK) st = o->copy_h2d_async(s->dev->be, dst, src, m->expert_bytes, sl->ready, err);
  }
  if (st != MOE_OK) return -1;
  sl->layer = layer;
  sl->expert = expert;
  sl->tick = s->tick;
  sl->hold = (how & PLACE_HOLD) != 0;
  sl->spec = (how & PLACE_SPEC) != 0;
  sl->used = false;
  sl->copied = true;
  s->slot_of[k] = v;
  /* Copied before for this same run of its block: the earlier copy was
   * evicted unused, and these bytes move twice. */
  const unsigned long long run = s->block_runs[m->moe_index[layer]] + 1;
  if (s->copied_in[k] == run) s->stats.recopies++;
  s->copied_in[k] = run;
  s->stats.fetches++;
  s->stats.bytes_h2d += m->expert_bytes;
  return 1;
}

int moe_expert_store_fetch(moe_expert_store *s, int layer, int expert, bool prefetch,
                           moe_error *err) {
  long k = key_of(s, layer, expert);
  if (k < 0) {
    MOE_FAIL(err, MOE_ERR_INVALID, "fetch of layer %d expert %d: no such MoE expert", layer, expert);
    return -1;
  }
  s->tick++;
  if (s->slot_of[k] >= 0) {
    slot *sl = &s->slots[s->slot_of[k]];
    sl->tick = s->tick;
    /* a candidate of this round just became one of its targets */
    if (prefetch && s->round_open && s->round_free > 0 && !sl->hold && !sl->in_use && !sl->pinned)
      s->round_free--;
    if (prefetch) sl->hold = true;
    return 1;
  }
  if (prefetch && s->round_open) {
    if (s->queued_mark[k]) return 1;
    if (s->round_free < 0) s->round_free = prefetch_candidates(s); /* once a round */
    /* a next choice (a prediction scored below 0) waits for round_end,
     * which places it only if a slot is left once the others have theirs */
    const bool next_choice = s->spec_layer == layer && s->spec_score && s->spec_score[expert] < 0;
    if (s->round_free <= s->n_queued - s->n_next && !next_choice) {
      s->stats.refused++;
      return 0;
    }
    s->queued_mark[k] = true;
    s->queued[s->n_queued++] = (struct queued){layer, expert, k};
    s->n_next += next_choice;
    return 1;
  }
  return place(s, layer, expert, k, prefetch ? PLACE_PREFETCH : PLACE_DEMAND, err);
}

void moe_expert_store_round_begin(moe_expert_store *s) {
  s->round_open = s->n_slots > 0;
  s->n_queued = 0;
  s->n_next = 0;
  s->round_free = -1;
}

void moe_expert_store_speculate(moe_expert_store *s, int layer, const float *score) {
  s->spec_layer = layer;
  s->spec_score = score;
}

/* A round of predictions: its queued copies, surest first (stable: ties
 * keep the order of request).  An insertion sort: a round holds at most a
 * block's experts. */
static void sort_by_score(moe_expert_store *s) {
  const float *score = s->spec_score;
  for (int i = 1; score && i < s->n_queued; i++) {
    const struct queued q = s->queued[i];
    int j = i;
    for (; j > 0 && score[s->queued[j - 1].expert] < score[q.expert]; j--)
      s->queued[j] = s->queued[j - 1];
    s->queued[j] = q;
  }
}

int moe_expert_store_round_end(moe_expert_store *s, moe_error *err) {
  int rc = 0;
  s->round_open = false;
  for (int i = 0; i < s->n_queued; i++) s->queued_mark[s->queued[i].key] = false;
  const int spec_layer = s->spec_layer;
  /* a round of predictions: the surest first (next choices last), as
   * many as there is room for (its resident targets are held by now, so
   * not counted) */
  const int room = spec_layer >= 0 && s->n_queued > 0 ? prefetch_candidates(s) : s->n_queued;
  if (spec_layer >= 0) sort_by_score(s);
  s->spec_layer = -1;
  s->spec_score = NULL;
  for (int i = 0; i < s->n_queued && rc == 0; i++) {
    const struct queued *q = &s->queued[i];
    if (s->slot_of[q->key] >= 0) continue; /* placed meanwhile (a pin) */
    if (i >= room) { /* the slots went to surer ones */
      s->stats.refused++;
      continue;
    }
    s->tick++;
    const int how = PLACE_PREFETCH | (q->layer == spec_layer ? PLACE_SPEC : 0);
    if (place(s, q->layer, q->expert, q->key, how, err) < 0) rc = -1;
  }
  s->n_queued = 0;
  s->n_next = 0;
  return rc;
}

void moe_expert_store_begin_block(moe_expert_store *s, int layer, const int *experts, int n) {
  /* Holds for this block or earlier ones end here; a prefetch round for a
   * later block keeps its holds until that block begins. */
  for (int i = 0; i < s->n_slots; i++)
    if (s->slots[i].layer <= layer) s->slots[i].hold = false;
  for (int j = 0; j < n; j++) {
    long k = key_of(s, layer, experts[j]);
    if (k >= 0 && s->slot_of[k] >= 0) s->slots[s->slot_of[k]].hold = true;
  }
}

int moe_expert_store_settle(moe_expert_store *s, int layer, const int *experts, int n,
                            moe_error *err) {
  if (!s->urgent_ok || s->n_slots == 0) return 0;
  const moe_backend_ops *o = s->dev->ops;
  moe_backend *be = s->dev->be;
  /* predictions for this block that its router did not pick (begin_block
   * held the ones it did): the rest of their copies would be wasted.  The
   * slot is freed whether or not the copy had finished, so residency (and
   * every count but `cancelled`) does not depend on the copy's timing. */
  for (int i = 0; i < s->n_slots; i++) {
    slot *sl = &s->slots[i];
    if (sl->layer != layer || !sl->spec || sl->hold || sl->in_use || sl->pinned) continue;
    s->stats.cancelled += (unsigned long long)o->copy_cancel(be, sl->ready);
    drop(s, i);
  }
  /* the block's experts, in the order it runs them: predicted ones on
   * their way go ahead of every queued prediction, the absent ones start
   * now (into a free or unheld slot; when none is left, acquire fetches
   * them).  A policy's own prefetches keep their place in the queue. */
  for (int j = 0; j < n; j++) {
    const long k = key_of(s, layer, experts[j]);
    if (k < 0) continue;
    if (s->slot_of[k] >= 0) {
      slot *sl = &s->slots[s->slot_of[k]];
      if (sl->spec) s->stats.urged += (unsigned long long)o->copy_urge(be, sl->ready);
      sl->spec = false;
      continue;
    }
    if (pick_victim(s, false) < 0) continue;
    s->tick++;
    if (place(s, layer, experts[j], k, PLACE_URGENT | PLACE_HOLD, err) < 0) return -1;
    s->stats.misses++;
  }
  return 0;
}

moe_status moe_expert_store_acquire(moe_expert_store *s, int layer, int expert,
                                    moe_expert_weights *w, moe_error *err) {
  const moe_model *m = s->model;
  long k = key_of(s, layer, expert);
  if (k < 0) {
    if (layer < 0 || layer >= m->cfg.n_layers || m->moe_index[layer] < 0)
      return MOE_FAIL(err, MOE_ERR_INVALID, "layer %d has no MoE block", layer);
    return MOE_FAIL(err, MOE_ERR_INVALID, "expert %d is out of range (0..%d)", expert,
                    m->cfg.n_experts - 1);
  }
  if (s->slot_of[k] < 0) {
    int r = moe_expert_store_fetch(s, layer, expert, false, err);
    if (r < 0) return err ? err->status : MOE_ERR_INTERNAL;
    if (r == 0)
      return MOE_FAIL(err, MOE_ERR_INTERNAL, "no expert slot can be freed (all %d in use)",
                      s->n_slots);
    s->stats.misses++;
  }
  /* served by a copy made before this run of the block: a cache hit */
  if (s->copied_in[k] != s->block_runs[m->moe_index[layer]] + 1) s->stats.reused++;
  int v = s->slot_of[k];
  slot *sl = &s->slots[v];
  const moe_backend_ops *o = s->dev->ops;
  /* Always ordered by the device (event_done is only a hint).  Where the
   * backend measures stalls itself (stall_seconds) the host clock would
   * see nothing; elsewhere compute_wait blocks the host for the stall. */
  double t0 = moe_clock_s();
  moe_status st = o->compute_wait(s->dev->be, sl->ready, err);
  if (o->stall_seconds == NULL) s->stats.stall_s += moe_clock_s() - t0;
  if (st != MOE_OK) return st;
  sl->in_use = true;
  sl->used = true;
  sl->tick = ++s->tick;
  s->stats.gets++;
  s->uses[k]++;
  /* a timed link moved no bytes: the weights are read where they live */
  moe_expert_views(m, s->timed ? moe_model_expert_host(m, layer, expert)
                               : s->slab + (size_t)v * m->expert_bytes, w);
  return MOE_OK;
}

void moe_expert_views(const moe_model *m, const void *expert, moe_expert_weights *w) {
  const uint8_t *base = expert;
  const size_t F = (size_t)m->cfg.expert_ffn, H = (size_t)m->cfg.hidden;
  const size_t part = F * H * moe_dtype_size(m->dtype);
  if (m->cfg.ffn_act == MOE_FFN_RELU) { /* wi, wo: no gate */
    w->gate = (moe_weight){NULL, m->dtype, 0, 0};
    w->up = (moe_weight){base, m->dtype, F, H};
    w->down = (moe_weight){base + part, m->dtype, H, F};
  } else {
    w->gate = (moe_weight){base, m->dtype, F, H};
    w->up = (moe_weight){base + part, m->dtype, F, H};
    w->down = (moe_weight){base + 2 * part, m->dtype, H, F};
  }
}

moe_status moe_expert_store_release(moe_expert_store *s, int layer, int expert, moe_error *err) {
  long k = key_of(s, layer, expert);
  if (k < 0 || s->slot_of[k] < 0 || !s->slots[s->slot_of[k]].in_use)
    return MOE_FAIL(err, MOE_ERR_INTERNAL, "release of layer %d expert %d, which is not acquired",
                    layer, expert);
  slot *sl = &s->slots[s->slot_of[k]];
  sl->in_use = false;
  sl->hold = false; /* done for this block: the next block's prefetch may take it */
  return s->dev->ops->compute_record(s->dev->be, sl->free_ev, err);
}

int moe_expert_store_pin(moe_expert_store *s, int layer, int expert, moe_error *err) {
  long k = key_of(s, layer, expert);
  if (k < 0) {
    MOE_FAIL(err, MOE_ERR_INVALID, "pin of layer %d expert %d: no such MoE expert", layer, expert);
    return -1;
  }
  if (s->slot_of[k] >= 0 && s->slots[s->slot_of[k]].pinned) return 1;
  if (s->n_pinned + 1 >= s->n_slots) return 0; /* keep one slot for demand fetches */
  s->tick++;
  s->round_free = -1; /* the pin takes a slot from the round: recount when next needed */
  if (s->slot_of[k] >= 0) {
    s->slots[s->slot_of[k]].tick = s->tick;
  } else {
    int r = place(s, layer, expert, k, PLACE_PREFETCH, err); /* at once, even inside a round */
    if (r != 1) return r;
  }
  s->slots[s->slot_of[k]].pinned = true;
  s->slots[s->slot_of[k]].hold = false; /* the pin protects it; no hold left behind */
  s->n_pinned++;
  return 1;
}

void moe_expert_store_unpin(moe_expert_store *s, int layer, int expert) {
  long k = key_of(s, layer, expert);
  if (k < 0 || s->slot_of[k] < 0 || !s->slots[s->slot_of[k]].pinned) return;
  s->slots[s->slot_of[k]].pinned = false;
  s->n_pinned--;
}

int moe_expert_store_evict(moe_expert_store *s, int layer, int expert) {
  long k = key_of(s, layer, expert);
  if (k < 0 || s->slot_of[k] < 0) return 0;
  int v = s->slot_of[k];
  if (s->slots[v].hold || s->slots[v].in_use || s->slots[v].pinned) return 0;
  drop(s, v);
  return 1;
}

int moe_expert_store_resident(const moe_expert_store *s, int layer, int expert) {
  long k = key_of(s, layer, expert);
  return k >= 0 && s->slot_of[k] >= 0;
}

moe_status moe_expert_store_check(const moe_expert_store *s, moe_error *err) {
  const moe_model *m = s->model;
  const long n = (long)m->n_moe * m->cfg.n_experts;
  long mapped = 0;
  for (long k = 0; k < n; k++) {
    int v = s->slot_of[k];
    if (v < 0) continue;
    mapped++;
    if (v >= s->n_slots)
      return MOE_FAIL(err, MOE_ERR_INTERNAL, "map entry %ld points at slot %d of %d", k, v, s->n_slots);
    const slot *sl = &s->slots[v];
    if (sl->layer < 0 || key_of(s, sl->layer, sl->expert) != k)
      return MOE_FAIL(err, MOE_ERR_INTERNAL, "map entry %ld -> slot %d, owned by layer %d expert %d",
                      k, v, sl->layer, sl->expert);
  }
  long owned = 0;
  int pinned = 0;
  for (int i = 0; i < s->n_slots; i++) {
    const slot *sl = &s->slots[i];
    pinned += sl->pinned;
    if (sl->layer < 0) {
      if (sl->in_use || sl->hold || sl->pinned)
        return MOE_FAIL(err, MOE_ERR_INTERNAL, "free slot %d is marked held or in use", i);
      continue;
    }
    owned++;
    long k = key_of(s, sl->layer, sl->expert);
    if (k < 0 || s->slot_of[k] != i)
      return MOE_FAIL(err, MOE_ERR_INTERNAL, "slot %d (layer %d expert %d) is not in the map", i,
                      sl->layer, sl->expert);
    if (sl->in_use)
      return MOE_FAIL(err, MOE_ERR_INTERNAL, "slot %d still in use between blocks", i);
  }
  if (owned != mapped)
    return MOE_FAIL(err, MOE_ERR_INTERNAL, "%ld slots owned but %ld map entries", owned, mapped);
  if (pinned != s->n_pinned || (s->n_slots > 0 && pinned >= s->n_slots))
    return MOE_FAIL(err, MOE_ERR_INTERNAL, "%d slots pinned, %d counted, of %d", pinned,
                    s->n_pinned, s->n_slots);
  return MOE_OK;
}

const moe_expert_stats *moe_expert_store_stats(const moe_expert_store *s) { return &s->stats; }

void moe_expert_store_pinning(const moe_expert_store *s, int *pinned, double *pin_s) {
  *pinned = s->pinned;
  *pin_s = s->pin_s;
}

void moe_expert_store_reset_stats(moe_expert_store *s) {
  memset(&s->stats, 0, sizeof s->stats);
  /* copies made before (warm-up) are not this run's to waste, and serve
   * it as a cache would */
  for (int i = 0; i < s->n_slots; i++) s->slots[i].copied = false;
  const size_t keys = (size_t)s->model->n_moe * (size_t)s->model->cfg.n_experts;
  if (s->copied_in) memset(s->copied_in, 0, keys * sizeof *s->copied_in);
}

unsigned long long moe_expert_store_uses(const moe_expert_store *s, int layer, int expert) {
  long k = key_of(s, layer, expert);
  return k < 0 ? 0 : s->uses[k];
}

void moe_expert_store_end_block(moe_expert_store *s, int layer) {
  if (s->block_runs == NULL || layer < 0 || layer >= s->model->cfg.n_layers) return;
  const int mi = s->model->moe_index[layer];
  if (mi >= 0) s->block_runs[mi]++;
}
