/* Experts computed where they live: the engine's side of the host-compute
 * policies (policy.h, moe_policy.place).
 *
 * A block whose policy sends some experts to the host runs in four steps:
 *   1. place: the policy marks experts for the host; the device experts
 *      go on to experts_needed and the store as ever;
 *   2. issue: each host expert's token rows are gathered on the device
 *      (into xh, at their place in the expert-sorted order), downloaded in
 *      one host wait, and one job on the backend's host stream (host_run)
 *      computes them all with the host's math: a cpu backend instance of
 *      the engine's own, reading the weights from the model's host slab;
 *   3. meanwhile the device runs its experts, each keeping its output in
 *      yh at its rows' place instead of adding it into x;
 *   4. finish: the host waits for the job, uploads its outputs into yh,
 *      and every expert's output is added into x in index order, the
 *      order the reference adds them in.  On the cpu backend the host's
 *      math is the device's own kernels (their bits do not depend on the
 *      thread count), so the outputs are the reference's bit for bit.
 * On a modeled backend (sim) the job is charged, not run: host_run
 * models it from the profile's host section. */
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"
#include "moe/cost.h"

typedef struct host_item {
  moe_expert_weights w; /* views into the model's host slab */
  size_t begin, n;      /* its rows in the block's expert-sorted order */
} host_item;

struct host_exec {
  const moe_backend_ops *ops; /* the host's math (a cpu backend), NULL on a modeled device */
  moe_backend *be;
  moe_event *done;            /* the block's job has returned */
  float *xin, *yout;          /* host (the device's host_alloc), [T x K][H] */
  float *ge, *ue;             /* the job's scratch, [T][F] */
  host_item *items;           /* [E] */
  moe_xfer *xfers;            /* [E] */
  unsigned char *flags;       /* [E] the policy's answer */
  int n_items;
  double host_bps;            /* the emulated host's cap (opt.host_gbps), 0: none */
  double expert_bytes;
  bool pending;               /* a job issued and not yet waited for */
  moe_status st;              /* the job's result, read once done */
  moe_error err;
};

static void host_job(void *arg);

void engine_host_free(moe_engine *e) {
  struct host_exec *hx = e->hx;
  if (hx == NULL) return;
  const moe_backend_ops *o = e->dev->ops;
  if (hx->pending) (void)o->event_sync(e->dev->be, hx->done, NULL);
  if (hx->done) o->event_destroy(e->dev->be, hx->done);
  if (hx->xin) o->host_free(e->dev->be, hx->xin);
  if (hx->yout) o->host_free(e->dev->be, hx->yout);
  if (hx->be) hx->ops->destroy(hx->be);
  free(hx->ge);
  free(hx->ue);
  free(hx->items);
  free(hx->xfers);
  free(hx->flags);
  free(hx);
  e->hx = NULL;
}

moe_status engine_host_create(moe_engine *e, moe_error *err) {
  moe_status st = MOE_OK;
  if (!engine_policy_places(e->policy) || e->model->n_moe == 0) return MOE_OK;
  const moe_backend_ops *o = e->dev->ops;
  const moe_config *c = &e->model->cfg;
  MOE_CHECK(o->host_run != NULL, err, MOE_ERR_UNSUPPORTED,
            "policy '%s' computes experts on the host, and backend '%s' has no host stream "
            "(host_run, backend ABI 1.7)",
            e->policy->name, o->name);
  struct host_exec *hx = calloc(1, sizeof *hx);
  MOE_CHECK_ALLOC(hx, err, sizeof *hx);
  e->hx = hx;
  const size_t T = moe_prod((size_t)e->opt.max_batch, (size_t)e->opt.max_prefill, 1, 1);
  const size_t rows = moe_prod(T, (size_t)c->top_k, (size_t)c->hidden, sizeof(float));
  const size_t E = (size_t)c->n_experts, F = (size_t)c->expert_ffn;
  MOE_CHECK(rows != SIZE_MAX, err, MOE_ERR_INVALID, "host expert rows overflow the address space");
  MOE_TRY(o->host_alloc(e->dev->be, rows, (void **)&hx->xin, err));
  MOE_TRY(o->host_alloc(e->dev->be, rows, (void **)&hx->yout, err));
  MOE_TRY(o->event_create(e->dev->be, &hx->done, err));
  hx->items = calloc(E, sizeof *hx->items);
  hx->xfers = calloc(E, sizeof *hx->xfers);
  hx->flags = calloc(E, 1);
  MOE_CHECK(hx->items && hx->xfers && hx->flags, err, MOE_ERR_OOM, "out of host memory for host experts");
  hx->expert_bytes = (double)e->model->expert_bytes;
  if (o->caps & MOE_BACKEND_CAP_MODELED) {
    /* jobs are charged, not run: an empty one says now, not mid-run, when
     * the profile has no host to charge them to */
    const moe_host_work none = {0.0, 0.0, e->model->dtype};
    MOE_TRY(o->host_run(e->dev->be, host_job, hx, &none, NULL, NULL, err));
    return MOE_OK;
  }
  MOE_CHECK(e->opt.host_gbps >= 0 && e->opt.host_gbps <= MOE_LINK_GBPS_MAX, err, MOE_ERR_INVALID,
            "host cap %g GB/s is outside 0..%g", e->opt.host_gbps, MOE_LINK_GBPS_MAX);
  hx->host_bps = e->opt.host_gbps * 1e9;
  const moe_backend_ops *cpu = moe_backend_find("cpu");
  MOE_CHECK(cpu != NULL, err, MOE_ERR_UNSUPPORTED, "the host's math needs the cpu backend");
  const moe_backend_options bo = {.threads = e->opt.host_threads > 0 ? e->opt.host_threads : 1};
  MOE_TRY(cpu->create(&bo, &hx->be, err));
  hx->ops = cpu;
  const size_t scratch = moe_prod(T, F, sizeof(float), 1);
  MOE_CHECK(scratch != SIZE_MAX, err, MOE_ERR_INVALID, "host expert scratch overflows");
  hx->ge = malloc(scratch);
  hx->ue = malloc(scratch);
  MOE_CHECK(hx->ge && hx->ue, err, MOE_ERR_OOM, "host allocation of 2 x %zu bytes failed", scratch);
cleanup:
  return st;
}

/* The tokens of expert x in the block's expert-sorted rows: [begin, begin + n). */
static size_t expert_rows(const moe_engine *e, int x, size_t *begin) {
  *begin = x ? (size_t)e->h_count[x - 1] : 0;
  return (size_t)e->h_count[x] - *begin;
}

moe_status engine_host_place(moe_engine *e, int l, int n_needed, int *n_dev, int *n_host,
                             moe_error *err) {
  moe_status st = MOE_OK;
  struct host_exec *hx = e->hx;
  const size_t E = (size_t)e->model->cfg.n_experts;
  memset(e->h_onhost, 0, E);
  *n_dev = n_needed;
  *n_host = 0;
  memcpy(e->h_dneeded, e->h_needed, (size_t)n_needed * sizeof(int));
  if (hx == NULL || n_needed == 0) return MOE_OK;
  for (int i = 0; i < n_needed; i++) {
    size_t begin;
    e->h_tokens[i] = (int)expert_rows(e, e->h_needed[i], &begin);
  }
  memset(hx->flags, 0, (size_t)n_needed);
  POLICY_CALL(e, place, l, e->h_needed, e->h_tokens, n_needed, hx->flags);
  *n_dev = 0;
  for (int i = 0; i < n_needed; i++) {
    if (hx->flags[i]) {
      e->h_onhost[e->h_needed[i]] = 1;
      (*n_host)++;
      e->host_experts++;
      e->host_tokens += (unsigned long long)e->h_tokens[i];
    } else {
      e->h_dneeded[(*n_dev)++] = e->h_needed[i];
    }
  }
cleanup:
  return st;
}

/* The host stream's job: every host expert of the block, in index order,
 * with the host's math; the first failure is kept for finish.  Under an
 * emulated host cap each expert ends no sooner than its weights' bytes at
 * that rate after the job began (as the cpu backend paces a capped link). */
static void host_job(void *arg) {
  struct host_exec *hx = arg;
  const double t0 = moe_clock_s();
  for (int i = 0; i < hx->n_items && hx->st == MOE_OK; i++) {
    const host_item *it = &hx->items[i];
    const size_t H = it->w.down.rows;
    hx->st = engine_expert_ffn(hx->ops, hx->be, &it->w, hx->xin + it->begin * H, hx->ge, hx->ue,
                               hx->yout + it->begin * H, it->n, &hx->err);
    if (hx->host_bps > 0) moe_clock_sleep_until(t0 + (double)(i + 1) * hx->expert_bytes / hx->host_bps);
  }
}

moe_status engine_host_issue(moe_engine *e, int l, moe_error *err) {
  moe_status st = MOE_OK;
  struct host_exec *hx = e->hx;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  MOE_TRY(engine_host_settle(e, err)); /* a job a failed forward left behind */
  const moe_config *c = &e->model->cfg;
  const size_t H = (size_t)c->hidden, F = (size_t)c->expert_ffn;
  const double per_token = 2.0 * (double)H * (double)F * (c->ffn_act == MOE_FFN_RELU ? 2.0 : 3.0);
  moe_host_work work = {0.0, 0.0, e->model->dtype};
  hx->n_items = 0;
  op_context(e, l, -1);
  for (int x = 0; x < c->n_experts; x++) {
    size_t begin, n = expert_rows(e, x, &begin);
    if (n == 0 || !e->h_onhost[x]) continue;
    MOE_TRY(o->gather_rows(be, e->xh + begin * H, e->h, e->rows + begin, n, H, err));
    hx->xfers[hx->n_items] = (moe_xfer){hx->xin + begin * H, e->xh + begin * H, n * H * sizeof(float)};
    host_item *it = &hx->items[hx->n_items++];
    moe_expert_views(e->model, moe_model_expert_host(e->model, l, x), &it->w);
    it->begin = begin;
    it->n = n;
    work.flops += per_token * (double)n;
    work.bytes += (double)e->model->expert_bytes;
    e->host_xfer_bytes += 2 * n * H * sizeof(float);
  }
  MOE_TRY(moe_device_download_many(e->dev, hx->xfers, hx->n_items, err));
  hx->st = MOE_OK;
  memset(&hx->err, 0, sizeof hx->err);
  MOE_TRY(o->host_run(be, host_job, hx, &work, NULL, hx->done, err));
  hx->pending = true;
cleanup:
  return st;
}

moe_status engine_host_settle(moe_engine *e, moe_error *err) {
  struct host_exec *hx = e->hx;
  if (hx == NULL || !hx->pending) return MOE_OK;
  hx->pending = false;
  return e->dev->ops->event_sync(e->dev->be, hx->done, err);
}

moe_status engine_host_finish(moe_engine *e, int l, moe_error *err) {
  moe_status st = MOE_OK;
  struct host_exec *hx = e->hx;
  const moe_backend_ops *o = e->dev->ops;
  moe_backend *be = e->dev->be;
  const size_t H = (size_t)e->model->cfg.hidden;
  const double t0 = now(e);
  MOE_TRY(o->event_sync(be, hx->done, err));
  hx->pending = false;
  e->host_wait_s += now(e) - t0;
  MOE_CHECK(hx->st == MOE_OK, err, hx->st, "layer %d: an expert computed on the host failed: %s",
            l, hx->err.msg);
  for (int i = 0; i < hx->n_items; i++) {
    const host_item *it = &hx->items[i];
    MOE_TRY(o->upload(be, e->yh + it->begin * H, hx->yout + it->begin * H,
                      it->n * H * sizeof(float), err));
  }
  for (int x = 0; x < e->model->cfg.n_experts; x++) {
    size_t begin, n = expert_rows(e, x, &begin);
    if (n == 0) continue;
    op_context(e, l, x);
    MOE_TRY(o->scatter_add_rows(be, e->x, e->yh + begin * H, e->rows + begin, e->rw + begin, 1,
                                false, n, H, err));
  }
cleanup:
  return st;
}
