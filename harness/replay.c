/* Replaying an op trace on a hardware profile (replay.h). */
#include "replay.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/dtype.h"
#include "trace_reader.h"

/* A number in 0 .. 1e18 at args.key (absent: 0); false when malformed (no
 * real op moves an exabyte: the bound keeps every sum finite). */
static bool arg_num(json_t *args, const char *key, double *out) {
  json_t *v = json_is_object(args) ? json_object_get(args, key) : NULL;
  *out = 0;
  if (v == NULL) return true;
  if (!json_is_number(v) || !(json_number_value(v) >= 0) || !(json_number_value(v) <= 1e18))
    return false;
  *out = json_number_value(v);
  return true;
}

/* Event times by id (ids from 1, as the trace numbers them). */
typedef struct ev_times {
  double *t;
  size_t cap;
} ev_times;

static double *ev_slot(ev_times *e, double id) {
  if (!(id >= 1) || id > (double)(1 << 20)) return NULL; /* engines create thousands */
  const size_t i = (size_t)id;
  if (i >= e->cap) {
    size_t nc = e->cap ? e->cap : 64;
    while (nc <= i) nc *= 2;
    double *nt = realloc(e->t, nc * sizeof *nt);
    if (nt == NULL) return NULL;
    memset(nt + e->cap, 0, (nc - e->cap) * sizeof *nt);
    e->t = nt;
    e->cap = nc;
  }
  return &e->t[i];
}

void replay_result_free(replay_result *r) {
  free(r->fwd_modeled);
  free(r->fwd_measured);
  memset(r, 0, sizeof *r);
}

/* Adds one op to its kind's totals. */
static void tally(replay_result *out, const char *name, double trace_s, double modeled_s) {
  int i = 0;
  while (i < out->n_kinds && strcmp(out->kinds[i].name, name) != 0) i++;
  if (i == out->n_kinds) {
    if (out->n_kinds == (int)(sizeof out->kinds / sizeof out->kinds[0])) i = out->n_kinds - 1;
    else snprintf(out->kinds[out->n_kinds++].name, sizeof out->kinds[0].name, "%.31s", name);
  }
  out->kinds[i].count++;
  out->kinds[i].trace_s += trace_s;
  out->kinds[i].modeled_s += modeled_s;
}

/* The replay's state, fed one event at a time. */
typedef struct replay_state {
  const moe_hw_profile *p;
  const char *path;
  replay_result *out;
  moe_cost_clock c;
  ev_times evs;
  const char *boundary;  /* the op that starts a forward pass */
  bool marks;
  size_t fwd_cap;
  double meas_start, meas_end, fwd_model0, fwd_meas0, model_start;
  double dl_model, dl_meas; /* after the last download (a forward's logits) */
} replay_state;

static void state_init(replay_state *s, const moe_hw_profile *p, const char *path,
                       replay_result *out, bool marks) {
  memset(s, 0, sizeof *s);
  memset(out, 0, sizeof *out);
  s->p = p;
  s->path = path;
  s->out = out;
  s->marks = marks;
  s->boundary = marks ? "forward" : "embed";
  s->meas_start = s->meas_end = -1;
  s->dl_model = s->dl_meas = -1;
  moe_cost_clock_init(&s->c, p);
}

/* Room for one more forward's figures. */
static bool fwd_room(replay_state *s) {
  if ((size_t)s->out->n_forwards < s->fwd_cap) return true;
  const size_t nc = s->fwd_cap ? 2 * s->fwd_cap : 256;
  double *a = realloc(s->out->fwd_modeled, nc * sizeof *a);
  if (a == NULL) return false;
  s->out->fwd_modeled = a;
  double *b = realloc(s->out->fwd_measured, nc * sizeof *b);
  if (b == NULL) return false;
  s->out->fwd_measured = b;
  s->fwd_cap = nc;
  return true;
}

/* One op of the compute track, as the trace recorded it. */
typedef struct replay_op {
  const char *name;
  bool instant;           /* an instant event ("i"), else a span ("X") */
  json_t *args;
  double t0, t1;          /* the trace's own seconds */
  double flops, bytes, m, rows, cols;
  double *slot;           /* its event id's time, or NULL */
} replay_op;

/* A forward pass begins at op (the boundary op or mark). */
static moe_status replay_forward(replay_state *s, const replay_op *op, moe_error *err) {
  replay_result *out = s->out;
  if (!fwd_room(s)) return MOE_FAIL(err, MOE_ERR_OOM, "%s: out of host memory", s->path);
  if (out->n_forwards > 0) {
    out->fwd_modeled[out->n_forwards - 1] = s->c.compute - s->fwd_model0;
    out->fwd_measured[out->n_forwards - 1] = op->t0 - s->fwd_meas0;
  } else {
    s->meas_start = op->t0;
    s->model_start = s->c.compute;
  }
  out->n_forwards++;
  s->fwd_model0 = s->c.compute;
  s->fwd_meas0 = op->t0;
  return MOE_OK;
}

/* The cost model applied to one op (event number i, for messages). */
static moe_status replay_cost(replay_state *s, const replay_op *op, size_t i, moe_error *err) {
  moe_cost_clock *c = &s->c;
  const moe_hw_profile *p = s->p;
  const char *name = op->name;
  const double before = c->compute;
  if (s->out->n_forwards > 0 && !strcmp(name, "download")) {
    moe_cost_compute(c, op->bytes > 0 ? moe_cost_transfer(p, op->bytes) : 0.0);
    tally(s->out, name, op->t1 - op->t0, c->compute - before);
    s->dl_model = c->compute;
    s->dl_meas = op->t1;
    return MOE_OK;
  }
  if (op->instant) {
    if (!strcmp(name, "host job"))
      return MOE_FAIL(err, MOE_ERR_UNSUPPORTED,
                      "%s: event %zu: a host job (experts computed on the host): the replay "
                      "does not model the host stream",
                      s->path, i);
    s->out->urgent += !strcmp(name, "urgent copy issue");
    s->out->cancelled += !strcmp(name, "copy cancel");
    if (!strcmp(name, "copy issue") || !strcmp(name, "urgent copy issue")) {
      const double done = moe_cost_copy_issue(c, op->bytes, true);
      if (op->slot) *op->slot = done;
    } else if (!strcmp(name, "record")) {
      if (op->slot) *op->slot = c->compute;
    } else if (!strcmp(name, "copy waits")) {
      if (op->slot) moe_cost_copy_wait(c, *op->slot);
    }
    return MOE_OK;
  }
  if (!strcmp(name, "wait for copy")) {
    if (op->slot) moe_cost_compute_wait(c, *op->slot);
  } else if (!strcmp(name, "host waits")) {
    if (op->slot) moe_cost_host_wait(c, *op->slot);
  } else if (!strcmp(name, "synchronize")) {
    moe_cost_sync(c);
  } else if (!strcmp(name, "matmul")) {
    json_t *dt = json_is_object(op->args) ? json_object_get(op->args, "dtype") : NULL;
    moe_dtype d = MOE_F32;
    if (dt && (!json_is_string(dt) || moe_dtype_parse(json_string_value(dt), &d) != 0))
      return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: event %zu: unknown dtype", s->path, i);
    if (json_object_get(op->args, "rows") != NULL)
      moe_cost_compute(c, moe_cost_matmul(p, op->m, op->rows, op->cols, d));
    else /* an older trace without the shape: its FLOPs and bytes */
      moe_cost_compute(c, moe_cost_count(p, (moe_op_count){op->flops, op->bytes}));
  } else if (!strcmp(name, "upload") || !strcmp(name, "download") ||
             !strcmp(name, "download many")) { /* download many: a block's routing, one wait */
    moe_cost_compute(c, op->bytes > 0 ? moe_cost_transfer(p, op->bytes) : 0.0);
  } else {
    moe_cost_compute(c, moe_cost_count(p, (moe_op_count){op->flops, op->bytes}));
  }
  if (s->out->n_forwards > 0) tally(s->out, name, op->t1 - op->t0, c->compute - before);
  return MOE_OK;
}

/* One trace event (event number i, for messages). */
static moe_status replay_event(replay_state *s, json_t *e, size_t i, moe_error *err) {
  const char *path = s->path;
  const char *kind = trace_str(e, "ph"), *name = trace_str(e, "name");
  json_t *tid = json_object_get(e, "tid"), *args = json_object_get(e, "args");
  if (kind == NULL || name == NULL)
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: event %zu has no ph or name", path, i);
  if (!strcmp(kind, "M")) {
    if (!strcmp(name, "moe_clock")) s->out->trace_modeled = trace_clock_modeled(e);
    return MOE_OK;
  }
  const bool span = !strcmp(kind, "X"), instant = !strcmp(kind, "i");
  if (!span && !instant) return MOE_OK;
  /* the copy track holds the copies' own spans; the replay models them
   * from their issues on the compute track */
  if (!json_is_integer(tid) || json_integer_value(tid) != 1) return MOE_OK;
  json_t *ts = json_object_get(e, "ts"), *du = json_object_get(e, "dur");
  if (!json_is_number(ts) || !(fabs(json_number_value(ts)) <= 1e15) ||
      (span && (!json_is_number(du) || !(json_number_value(du) >= 0) ||
                !(json_number_value(du) <= 1e15))))
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: event %zu ('%.40s') has no valid ts/dur", path, i, name);
  replay_op op = {.name = name, .instant = instant, .args = args,
                  .t0 = json_number_value(ts) * 1e-6};
  op.t1 = op.t0 + (span ? json_number_value(du) * 1e-6 : 0);
  double ev;
  if (!arg_num(args, "flops", &op.flops) || !arg_num(args, "bytes", &op.bytes) ||
      !arg_num(args, "event", &ev) || !arg_num(args, "m", &op.m) || !arg_num(args, "rows", &op.rows) ||
      !arg_num(args, "cols", &op.cols))
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: event %zu ('%.40s') has a malformed argument", path, i,
                    name);
  if (ev >= 1 && (op.slot = ev_slot(&s->evs, ev)) == NULL)
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: event %zu: event id %.0f out of range", path, i, ev);
  if (!strcmp(name, s->boundary)) { /* a forward pass begins */
    const moe_status st = replay_forward(s, &op, err);
    if (st != MOE_OK) return st;
  }
  if (s->out->n_forwards > 0 && op.t1 > s->meas_end) s->meas_end = op.t1;
  return replay_cost(s, &op, i, err);
}

/* The figures, once every event is in. */
static moe_status replay_finish(replay_state *s, moe_error *err) {
  replay_result *out = s->out;
  if (out->n_forwards == 0)
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: the trace holds no forward pass (no %s)", s->path,
                    s->marks ? "forward mark" : "embed op");
  /* the run ends with its last forward's logits read back (later ops are
   * teardown) */
  const double end_model = s->dl_model >= s->fwd_model0 ? s->dl_model : s->c.compute;
  const double end_meas = s->dl_meas >= s->fwd_meas0 ? s->dl_meas : s->meas_end;
  out->fwd_modeled[out->n_forwards - 1] = end_model - s->fwd_model0;
  out->fwd_measured[out->n_forwards - 1] = end_meas - s->fwd_meas0;
  out->modeled_s = end_model - s->model_start;
  out->measured_s = end_meas - s->meas_start;
  out->stall_s = s->c.stall;
  out->copy_s = s->c.copy_busy;
  out->hidden_share = moe_cost_hidden_share(&s->c);
  out->ops = s->c.ops;
  out->copies = s->c.copies;
  return MOE_OK;
}

/* The reader's callbacks (trace_reader.h). */
static moe_status on_begin(void *ctx, bool marks, moe_error *err) {
  replay_state *s = ctx;
  (void)err;
  state_init(s, s->p, s->path, s->out, marks);
  return MOE_OK;
}

static moe_status on_event(void *ctx, void *e, size_t i, moe_error *err) {
  return replay_event(ctx, e, i, err);
}

/* Replays through read (trace_read or trace_read_json), then finishes. */
static moe_status replay_with(replay_state *s, moe_status st, moe_error *err) {
  if (st == MOE_OK) st = replay_finish(s, err);
  if (st != MOE_OK) replay_result_free(s->out);
  free(s->evs.t);
  return st;
}

moe_status replay_trace_json(const void *json, const char *path, const moe_hw_profile *p,
                             replay_result *out, moe_error *err) {
  replay_state s;
  state_init(&s, p, path, out, false);
  const trace_reader rd = {on_begin, on_event, &s};
  return replay_with(&s, trace_read_json(json, path, &rd, err), err);
}

moe_status replay_trace(const char *path, const moe_hw_profile *p, replay_result *out,
                        moe_error *err) {
  replay_state s;
  state_init(&s, p, path, out, false);
  const trace_reader rd = {on_begin, on_event, &s};
  return replay_with(&s, trace_read(path, &rd, err), err);
}
