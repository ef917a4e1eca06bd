/* Expert store, all-resident version: one device slab holding every expert,
 * filled by one async copy per expert, each with its own completion event. */
#include "moe/expert_store.h"

#include <stdlib.h>

#include "model_internal.h"

struct moe_expert_store {
  const moe_model *model;
  const moe_device *dev;
  uint8_t *slab;       /* device: [n_moe][n_experts][gate|up|down] */
  moe_event **events;  /* one per (moe layer, expert) */
  size_t n_events;
  unsigned long long *uses; /* per (moe layer, expert) */
  moe_expert_stats stats;
};

void moe_expert_store_free(moe_expert_store *s) {
  if (s == NULL) return;
  const moe_backend_ops *o = s->dev->ops;
  for (size_t i = 0; i < s->n_events; i++)
    if (s->events[i]) o->event_destroy(s->dev->be, s->events[i]);
  free(s->events);
  free(s->uses);
  if (s->slab) o->device_free(s->dev->be, s->slab);
  free(s);
}

moe_status moe_expert_store_create(moe_expert_store **out, const moe_model *m,
                                   const moe_device *dev, moe_error *err) {
  moe_status st = MOE_OK;
  const moe_backend_ops *o = dev->ops;
  *out = NULL;
  moe_expert_store *s = calloc(1, sizeof *s);
  MOE_CHECK_ALLOC(s, err, sizeof *s);
  s->model = m;
  s->dev = dev;
  size_t n = (size_t)m->n_moe * (size_t)m->cfg.n_experts;
  if (n > 0) {
    s->events = calloc(n, sizeof *s->events);
    MOE_CHECK_ALLOC(s->events, err, n * sizeof *s->events);
    s->uses = calloc(n, sizeof *s->uses);
    MOE_CHECK_ALLOC(s->uses, err, n * sizeof *s->uses);
    MOE_TRY(o->device_alloc(dev->be, m->experts_total, (void **)&s->slab, err));
    for (size_t i = 0; i < n; i++) {
      MOE_TRY(o->event_create(dev->be, &s->events[i], err));
      s->n_events++;
      MOE_TRY(o->copy_h2d_async(dev->be, s->slab + i * m->expert_bytes,
                                m->experts + i * m->expert_bytes, m->expert_bytes, s->events[i],
                                err));
      s->stats.fetches++;
      s->stats.bytes_h2d += m->expert_bytes;
    }
  }
  *out = s;
  return MOE_OK;
cleanup:
  moe_expert_store_free(s);
  return st;
}

moe_status moe_expert_store_get(moe_expert_store *s, int layer, int expert,
                                moe_expert_weights *w, moe_error *err) {
  const moe_model *m = s->model;
  if (layer < 0 || layer >= m->cfg.n_layers || m->moe_index[layer] < 0)
    return MOE_FAIL(err, MOE_ERR_INVALID, "layer %d has no MoE block", layer);
  if (expert < 0 || expert >= m->cfg.n_experts)
    return MOE_FAIL(err, MOE_ERR_INVALID, "expert %d is out of range (0..%d)", expert,
                    m->cfg.n_experts - 1);
  size_t i = (size_t)m->moe_index[layer] * (size_t)m->cfg.n_experts + (size_t)expert;
  moe_status st = s->dev->ops->compute_wait(s->dev->be, s->events[i], err);
  if (st != MOE_OK) return st;
  s->stats.gets++;
  s->uses[i]++;
  const uint8_t *base = s->slab + i * m->expert_bytes;
  const size_t F = (size_t)m->cfg.expert_ffn, H = (size_t)m->cfg.hidden;
  const size_t part = F * H * moe_dtype_size(m->dtype);
  w->gate = (moe_weight){base, m->dtype, F, H};
  w->up = (moe_weight){base + part, m->dtype, F, H};
  w->down = (moe_weight){base + 2 * part, m->dtype, H, F};
  return MOE_OK;
}

const moe_expert_stats *moe_expert_store_stats(const moe_expert_store *s) { return &s->stats; }
size_t moe_expert_store_device_bytes(const moe_expert_store *s) { return s->model->experts_total; }

unsigned long long moe_expert_store_uses(const moe_expert_store *s, int layer, int expert) {
  const moe_model *m = s->model;
  if (layer < 0 || layer >= m->cfg.n_layers || m->moe_index[layer] < 0 || expert < 0 ||
      expert >= m->cfg.n_experts)
    return 0;
  return s->uses[(size_t)m->moe_index[layer] * (size_t)m->cfg.n_experts + (size_t)expert];
}
