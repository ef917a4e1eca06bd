/* Replaying an op trace on a hardware profile (replay.h). */
#include "replay.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moe/dtype.h"
#include "moe/jsonfile.h"

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

moe_status replay_trace(const char *path, const moe_hw_profile *p, replay_result *out,
                        moe_error *err) {
  memset(out, 0, sizeof *out);
  json_t *root = moe_json_load_file(path, err);
  if (root == NULL) return err ? err->status : MOE_ERR_IO;
  moe_status st = replay_trace_json(root, path, p, out, err);
  json_decref(root);
  return st;
}

moe_status replay_trace_json(const void *json, const char *path, const moe_hw_profile *p,
                             replay_result *out, moe_error *err) {
  memset(out, 0, sizeof *out);
  json_t *root = (json_t *)json;
  moe_status st = MOE_OK;
  ev_times evs = {0};
  json_t *arr = json_is_object(root) ? json_object_get(root, "traceEvents") : NULL;
  if (!json_is_array(arr)) {
    st = MOE_FAIL(err, MOE_ERR_FORMAT, "%s: not a trace (no traceEvents array)", path);
    goto done;
  }
  const size_t n = json_array_size(arr);
  out->fwd_modeled = calloc(n + 1, sizeof *out->fwd_modeled);
  out->fwd_measured = calloc(n + 1, sizeof *out->fwd_measured);
  if (!out->fwd_modeled || !out->fwd_measured) {
    st = MOE_FAIL(err, MOE_ERR_OOM, "%s: out of host memory", path);
    goto done;
  }
  moe_cost_clock c;
  moe_cost_clock_init(&c, p);
  double meas_start = -1, meas_end = -1, fwd_model0 = 0, fwd_meas0 = 0, model_start = 0;
  double dl_model = -1, dl_meas = -1; /* after the last download (a forward's logits) */
  size_t i;
  json_t *e;
  /* forward passes begin at the engine's "forward" marks (older traces:
   * at each embed op) */
  bool marks = false;
  json_array_foreach(arr, i, e) {
    json_t *nm = json_object_get(e, "name"), *ph = json_object_get(e, "ph");
    if (json_is_string(nm) && json_is_string(ph) && !strcmp(json_string_value(ph), "i") &&
        !strcmp(json_string_value(nm), "forward")) {
      marks = true;
      break;
    }
  }
  const char *boundary = marks ? "forward" : "embed";
  json_array_foreach(arr, i, e) {
    json_t *ph = json_object_get(e, "ph"), *nm = json_object_get(e, "name"),
           *tid = json_object_get(e, "tid"), *args = json_object_get(e, "args");
    if (!json_is_string(ph) || !json_is_string(nm)) {
      st = MOE_FAIL(err, MOE_ERR_FORMAT, "%s: event %zu has no ph or name", path, i);
      goto done;
    }
    const char *kind = json_string_value(ph), *name = json_string_value(nm);
    if (!strcmp(kind, "M")) {
      if (!strcmp(name, "moe_clock")) {
        json_t *ck = json_is_object(args) ? json_object_get(args, "clock") : NULL;
        out->trace_modeled = json_is_string(ck) && !strcmp(json_string_value(ck), "modeled");
      }
      continue;
    }
    const bool span = !strcmp(kind, "X"), instant = !strcmp(kind, "i");
    if (!span && !instant) continue;
    /* the copy track holds the copies' own spans; the replay models them
     * from their issues on the compute track */
    if (!json_is_integer(tid) || json_integer_value(tid) != 1) continue;
    json_t *ts = json_object_get(e, "ts"), *du = json_object_get(e, "dur");
    if (!json_is_number(ts) || !(fabs(json_number_value(ts)) <= 1e15) ||
        (span && (!json_is_number(du) || !(json_number_value(du) >= 0) ||
                  !(json_number_value(du) <= 1e15)))) {
      st = MOE_FAIL(err, MOE_ERR_FORMAT, "%s: event %zu ('%.40s') has no valid ts/dur", path, i, name);
      goto done;
    }
    const double t0 = json_number_value(ts) * 1e-6, t1 = t0 + (span ? json_number_value(du) * 1e-6 : 0);
    double flops, bytes, ev, m, rows, cols;
    if (!arg_num(args, "flops", &flops) || !arg_num(args, "bytes", &bytes) ||
        !arg_num(args, "event", &ev) || !arg_num(args, "m", &m) || !arg_num(args, "rows", &rows) ||
        !arg_num(args, "cols", &cols)) {
      st = MOE_FAIL(err, MOE_ERR_FORMAT, "%s: event %zu ('%.40s') has a malformed argument", path, i,
                    name);
      goto done;
    }
    double *slot = NULL;
    if (ev >= 1 && (slot = ev_slot(&evs, ev)) == NULL) {
      st = MOE_FAIL(err, MOE_ERR_FORMAT, "%s: event %zu: event id %.0f out of range", path, i, ev);
      goto done;
    }
    if (!strcmp(name, boundary)) { /* a forward pass begins */
      if (out->n_forwards > 0) {
        out->fwd_modeled[out->n_forwards - 1] = c.compute - fwd_model0;
        out->fwd_measured[out->n_forwards - 1] = t0 - fwd_meas0;
      } else {
        meas_start = t0;
        model_start = c.compute;
      }
      out->n_forwards++;
      fwd_model0 = c.compute;
      fwd_meas0 = t0;
    }
    if (out->n_forwards > 0 && t1 > meas_end) meas_end = t1;
    const double before = c.compute;
    if (out->n_forwards > 0 && !strcmp(name, "download")) {
      moe_cost_compute(&c, moe_cost_transfer(p, bytes));
      tally(out, name, t1 - t0, c.compute - before);
      dl_model = c.compute;
      dl_meas = t1;
      continue;
    }
    if (instant) {
      if (!strcmp(name, "copy issue")) {
        const double done = moe_cost_copy_issue(&c, bytes, true);
        if (slot) *slot = done;
      } else if (!strcmp(name, "record")) {
        if (slot) *slot = c.compute;
      } else if (!strcmp(name, "copy waits")) {
        if (slot) moe_cost_copy_wait(&c, *slot);
      }
      continue;
    }
    if (!strcmp(name, "wait for copy")) {
      if (slot) moe_cost_compute_wait(&c, *slot);
    } else if (!strcmp(name, "host waits")) {
      if (slot) moe_cost_host_wait(&c, *slot);
    } else if (!strcmp(name, "synchronize")) {
      moe_cost_sync(&c);
    } else if (!strcmp(name, "matmul")) {
      json_t *dt = json_is_object(args) ? json_object_get(args, "dtype") : NULL;
      moe_dtype d = MOE_F32;
      if (dt && (!json_is_string(dt) || moe_dtype_parse(json_string_value(dt), &d) != 0)) {
        st = MOE_FAIL(err, MOE_ERR_FORMAT, "%s: event %zu: unknown dtype", path, i);
        goto done;
      }
      if (rows > 0 && cols > 0)
        moe_cost_compute(&c, moe_cost_matmul(p, m, rows, cols, d));
      else /* an older trace without the shape: its FLOPs and bytes */
        moe_cost_compute(&c, moe_cost_vector(p, flops, bytes));
    } else if (!strcmp(name, "upload") || !strcmp(name, "download")) {
      moe_cost_compute(&c, moe_cost_transfer(p, bytes));
    } else {
      moe_cost_compute(&c, moe_cost_vector(p, flops, bytes));
    }
    if (out->n_forwards > 0) tally(out, name, t1 - t0, c.compute - before);
  }
  if (out->n_forwards == 0) {
    st = MOE_FAIL(err, MOE_ERR_FORMAT, "%s: the trace holds no forward pass (no %s)", path,
                  marks ? "forward mark" : "embed op");
    goto done;
  }
  /* the run ends with its last forward's logits read back (later ops are
   * teardown) */
  const double end_model = dl_model >= fwd_model0 ? dl_model : c.compute;
  const double end_meas = dl_meas >= fwd_meas0 ? dl_meas : meas_end;
  out->fwd_modeled[out->n_forwards - 1] = end_model - fwd_model0;
  out->fwd_measured[out->n_forwards - 1] = end_meas - fwd_meas0;
  out->modeled_s = end_model - model_start;
  out->measured_s = end_meas - meas_start;
  out->stall_s = c.stall;
  out->copy_s = c.copy_busy;
  out->hidden_share = moe_cost_hidden_share(&c);
  out->ops = c.ops;
  out->copies = c.copies;
done:
  if (st != MOE_OK) replay_result_free(out);
  free(evs.t);
  return st;
}
