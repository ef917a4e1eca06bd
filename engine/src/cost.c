/* The cost model: hardware profiles and the two-stream clock (cost.h). */
#include "moe/publish.h"
#include "moe/cost.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checked.h"
#include "moe/jsonfile.h"

/* ---------------------------------------------------------------- profiles */

/* A number in lo..hi at root.key or root.a.b (bounds that no real device
 * leaves, so every modeled time stays finite and meaningful). */
static moe_status num_in(json_t *root, const char *key, double lo, double hi, double *out,
                         bool optional, const char *path, moe_error *err) {
  char k[64];
  snprintf(k, sizeof k, "%s", key);
  char *dot = strchr(k, '.');
  json_t *v;
  if (dot) {
    *dot = '\0';
    v = json_object_get(root, k);
    v = json_is_object(v) ? json_object_get(v, dot + 1) : NULL;
  } else {
    v = json_object_get(root, k);
  }
  if (v == NULL && optional) return MOE_OK;
  if (!json_is_number(v) || !(json_number_value(v) >= lo && json_number_value(v) <= hi))
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: field '%s' must be a number in %g..%g", path, key,
                    lo, hi);
  *out = json_number_value(v);
  return MOE_OK;
}

/* Bounds of the figures (units as cost.h): rates in TFLOP/s or GFLOP/s,
 * bandwidths in GB/s, latencies in us. */
#define BW_LO 1e-3
#define BW_HI 1e5
#define TF_LO 1e-6
#define TF_HI 1e5
#define US_LO 1e-6
#define US_HI 1e6

/* The optional host section: every figure given, and a source for it. */
static moe_status host_at(json_t *root, moe_hw_profile *p, const char *path, moe_error *err) {
  moe_status st = MOE_OK;
  json_t *h = json_object_get(root, "host");
  if (h == NULL) return MOE_OK;
  MOE_CHECK(json_is_object(h), err, MOE_ERR_FORMAT, "%s: field 'host' must be an object", path);
  MOE_TRY(num_in(root, "host.cores", 1, 1e5, &p->host_cores, false, path, err));
  MOE_TRY(num_in(root, "host.memory_gbps", BW_LO, BW_HI, &p->host_memory_gbps, false, path, err));
  MOE_TRY(num_in(root, "host.matmul_gflops_f32", TF_LO * 1e3, TF_HI * 1e3, &p->host_gflops_f32, false,
                 path, err));
  p->host_gflops_bf16 = p->host_gflops_f32;
  MOE_TRY(num_in(root, "host.matmul_gflops_bf16", TF_LO * 1e3, TF_HI * 1e3, &p->host_gflops_bf16, true,
                 path, err));
  json_t *s = json_object_get(json_object_get(root, "sources"), "host");
  MOE_CHECK(json_is_string(s) && json_string_length(s) > 0, err, MOE_ERR_FORMAT,
            "%s: sources.host must say where the host figures come from", path);
cleanup:
  return st;
}

static moe_status rates_at(json_t *root, moe_hw_profile *p, const char *path, moe_error *err) {
  json_t *t = json_object_get(root, "matmul_gflops_by_rows");
  if (t == NULL) return MOE_OK;
  json_t *f = json_is_object(t) ? json_object_get(t, "f32") : NULL;
  if (!json_is_object(t) || json_object_size(t) != 1 || !json_is_array(f) ||
      json_array_size(f) < 1 || json_array_size(f) > MOE_HW_MAX_RATES)
    return MOE_FAIL(err, MOE_ERR_FORMAT,
                    "%s: field 'matmul_gflops_by_rows' must be {\"f32\": [[rows, GFLOP/s], ...]} "
                    "with 1 to %d points", path, MOE_HW_MAX_RATES);
  for (size_t i = 0; i < json_array_size(f); i++) {
    json_t *pt = json_array_get(f, i);
    json_t *m = json_array_get(pt, 0), *r = json_array_get(pt, 1);
    if (!json_is_array(pt) || json_array_size(pt) != 2 || !json_is_number(m) ||
        !json_is_number(r) || !(json_number_value(m) >= 1 && json_number_value(m) <= 1e6) ||
        !(json_number_value(r) >= 1e-3 && json_number_value(r) <= 1e8) ||
        (i > 0 && !(json_number_value(m) > p->rate_m[i - 1])))
      return MOE_FAIL(err, MOE_ERR_FORMAT,
                      "%s: matmul_gflops_by_rows.f32[%zu] must be [rows 1..1e6, GFLOP/s "
                      "1e-3..1e8], rows ascending", path, i);
    p->rate_m[i] = json_number_value(m);
    p->rate_gflops[i] = json_number_value(r);
  }
  p->n_rates = (int)json_array_size(f);
  return MOE_OK;
}

moe_status moe_hw_profile_load(moe_hw_profile *p, const char *path, moe_error *err) {
  memset(p, 0, sizeof *p);
  json_t *root = moe_json_load_file(path, err);
  if (root == NULL) return err ? err->status : MOE_ERR_IO;
  moe_status st = moe_hw_profile_from_json(p, root, path, err);
  json_decref(root);
  return st;
}

/* The keys of the object at field (absent: fine) must be among allowed;
 * a misspelt nested key ("f23", "pinnned") would otherwise be ignored and
 * its figure taken from a default. */
static moe_status only_keys(json_t *root, const char *field, const char *const *allowed,
                            const char *path, moe_error *err) {
  json_t *o = json_object_get(root, field);
  if (o == NULL || !json_is_object(o)) return MOE_OK; /* the field's own check says more */
  const char *key;
  json_t *v;
  json_object_foreach(o, key, v) {
    bool ok = false;
    for (size_t i = 0; allowed[i] && !ok; i++) ok = strcmp(key, allowed[i]) == 0;
    if (!ok) return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: unknown field '%s.%.60s'", path, field, key);
  }
  return MOE_OK;
}

/* Every key of a profile is known, at the top level and inside its
 * objects: a misspelt one would leave its figure at a default. */
static moe_status profile_keys(json_t *root, const char *path, moe_error *err) {
  moe_status st = MOE_OK;
  static const char *const known[] = {
      "name",           "description",        "memory_bytes", "memory_gbps",
      "matmul_tflops",  "h2d_gbps",           "h2d_latency_us", "launch_overhead_us",
      "sources",        "matmul_gflops_by_rows", "copy_slowdown", "calibrated",
      "transfer_latency_us", "vector_gflops", "vector_gbps", "host", NULL};
  const char *key;
  json_t *v;
  json_object_foreach(root, key, v) {
    bool ok = false;
    for (size_t i = 0; known[i] && !ok; i++) ok = strcmp(key, known[i]) == 0;
    MOE_CHECK(ok, err, MOE_ERR_FORMAT, "%s: unknown field '%.60s'", path, key);
  }
  {
    /* TF32 is refused by name: the engine's f32 matmuls run in full f32
     * (cuBLAS's default math), so a TF32 rate would model nothing */
    MOE_CHECK(json_object_get(json_object_get(root, "matmul_tflops"), "tf32") == NULL, err,
              MOE_ERR_FORMAT,
              "%s: matmul_tflops.tf32 is not used (f32 matmuls run in full f32, not TF32); "
              "remove it", path);
    static const char *const dtypes[] = {"f32", "bf16", "f16", NULL};
    static const char *const links[] = {"pinned", "pageable", "theoretical", NULL};
    static const char *const rows[] = {"f32", NULL};
    static const char *const host[] = {"cores", "memory_gbps", "matmul_gflops_f32",
                                       "matmul_gflops_bf16", NULL};
    static const char *const sourced[] = {
        "memory_bytes", "memory_gbps", "matmul_tflops", "matmul_tflops.f32", "matmul_tflops.bf16",
        "matmul_tflops.f16", "h2d_gbps", "h2d_gbps.pinned", "h2d_gbps.pageable",
        "h2d_gbps.theoretical", "h2d_latency_us",
        "launch_overhead_us", "matmul_gflops_by_rows", "copy_slowdown", "transfer_latency_us",
        "vector_gflops", "vector_gbps", "calibrated", "host", NULL};
    MOE_TRY(only_keys(root, "matmul_tflops", dtypes, path, err));
    MOE_TRY(only_keys(root, "h2d_gbps", links, path, err));
    MOE_TRY(only_keys(root, "matmul_gflops_by_rows", rows, path, err));
    MOE_TRY(only_keys(root, "host", host, path, err));
    MOE_TRY(only_keys(root, "sources", sourced, path, err));
  }
cleanup:
  return st;
}

moe_status moe_hw_profile_from_json(moe_hw_profile *p, const void *json, const char *path,
                                    moe_error *err) {
  memset(p, 0, sizeof *p);
  json_t *root = (json_t *)json;
  moe_status st = MOE_OK;
  MOE_CHECK(json_is_object(root), err, MOE_ERR_FORMAT, "%s: top level must be an object", path);
  MOE_TRY(profile_keys(root, path, err));
  json_t *nm = json_object_get(root, "name"), *ds = json_object_get(root, "description");
  MOE_CHECK(json_is_string(nm) && json_string_length(nm) > 0 &&
                json_string_length(nm) < sizeof p->name,
            err, MOE_ERR_FORMAT, "%s: field 'name' must be a string of 1 to %zu characters", path,
            sizeof p->name - 1);
  snprintf(p->name, sizeof p->name, "%s", json_string_value(nm));
  if (json_is_string(ds)) snprintf(p->description, sizeof p->description, "%s", json_string_value(ds));
  MOE_TRY(num_in(root, "memory_bytes", 1e6, 1e15, &p->memory_bytes, false, path, err));
  MOE_TRY(num_in(root, "memory_gbps", BW_LO, BW_HI, &p->memory_gbps, false, path, err));
  MOE_TRY(num_in(root, "matmul_tflops.f32", TF_LO, TF_HI, &p->tflops[MOE_F32], false, path, err));
  MOE_TRY(num_in(root, "matmul_tflops.bf16", TF_LO, TF_HI, &p->tflops[MOE_BF16], false, path, err));
  p->tflops[MOE_F16] = p->tflops[MOE_BF16];
  MOE_TRY(num_in(root, "matmul_tflops.f16", TF_LO, TF_HI, &p->tflops[MOE_F16], true, path, err));
  MOE_TRY(num_in(root, "h2d_gbps.pinned", BW_LO, BW_HI, &p->h2d_pinned_gbps, false, path, err));
  MOE_TRY(num_in(root, "h2d_gbps.pageable", BW_LO, BW_HI, &p->h2d_pageable_gbps, false, path, err));
  MOE_TRY(num_in(root, "h2d_gbps.theoretical", BW_LO, BW_HI, &p->h2d_theoretical_gbps, true, path,
                 err));
  MOE_CHECK(p->h2d_theoretical_gbps == 0 || p->h2d_pinned_gbps <= p->h2d_theoretical_gbps, err,
            MOE_ERR_FORMAT, "%s: h2d_gbps.pinned (%g) exceeds the link's theoretical rate (%g)",
            path, p->h2d_pinned_gbps, p->h2d_theoretical_gbps);
  MOE_CHECK(p->h2d_pageable_gbps <= p->h2d_pinned_gbps, err, MOE_ERR_FORMAT,
            "%s: h2d_gbps.pageable (%g) exceeds h2d_gbps.pinned (%g)", path,
            p->h2d_pageable_gbps, p->h2d_pinned_gbps);
  MOE_TRY(num_in(root, "h2d_latency_us", US_LO, US_HI, &p->h2d_latency_us, false, path, err));
  MOE_TRY(num_in(root, "launch_overhead_us", US_LO, US_HI, &p->launch_us, false, path, err));
  p->transfer_latency_us = p->h2d_latency_us;
  MOE_TRY(num_in(root, "transfer_latency_us", US_LO, US_HI, &p->transfer_latency_us, true, path, err));
  p->copy_slowdown = 1.0;
  MOE_TRY(num_in(root, "copy_slowdown", 1.0, 100.0, &p->copy_slowdown, true, path, err));
  p->vector_gflops = p->tflops[MOE_F32] * 1e3;
  MOE_TRY(num_in(root, "vector_gflops", TF_LO * 1e3, TF_HI * 1e3, &p->vector_gflops, true, path, err));
  p->vector_gbps = p->memory_gbps;
  MOE_TRY(num_in(root, "vector_gbps", BW_LO, BW_HI, &p->vector_gbps, true, path, err));
  MOE_TRY(rates_at(root, p, path, err));
  MOE_TRY(host_at(root, p, path, err));
  json_t *cal = json_object_get(root, "calibrated");
  MOE_CHECK(cal == NULL || json_is_boolean(cal), err, MOE_ERR_FORMAT,
            "%s: field 'calibrated' must be true or false", path);
  p->calibrated = cal && json_is_true(cal);
  /* every figure names where it comes from */
  json_t *src = json_object_get(root, "sources");
  MOE_CHECK(json_is_object(src), err, MOE_ERR_FORMAT, "%s: field 'sources' must be an object", path);
  static const char *const need[] = {"memory_bytes",       "memory_gbps",     "matmul_tflops",
                                     "h2d_gbps.pinned",    "h2d_gbps.pageable", "h2d_latency_us",
                                     "launch_overhead_us", NULL};
  for (const char *const *k = need; *k; k++) {
    json_t *s = json_object_get(src, *k);
    MOE_CHECK(json_is_string(s) && json_string_length(s) > 0, err, MOE_ERR_FORMAT,
              "%s: sources.%s must say where the figure comes from", path, *k);
  }
cleanup:
  return st;
}

moe_status moe_hw_profile_save(const moe_hw_profile *p, const char *path, const char *source,
                               moe_error *err) {
  moe_status st = MOE_OK;
  json_t *o = json_object(), *mm = json_object(), *h2d = json_object(), *src = json_object();
  MOE_CHECK(o && mm && h2d && src, err, MOE_ERR_OOM, "out of host memory (profile)");
  json_object_set_new(o, "name", json_string(p->name));
  json_object_set_new(o, "description", json_string(p->description));
  json_object_set_new(o, "calibrated", json_boolean(p->calibrated));
  json_object_set_new(o, "memory_bytes", json_real(p->memory_bytes));
  json_object_set_new(o, "memory_gbps", json_real(p->memory_gbps));
  json_object_set_new(mm, "f32", json_real(p->tflops[MOE_F32]));
  json_object_set_new(mm, "f16", json_real(p->tflops[MOE_F16]));
  json_object_set_new(mm, "bf16", json_real(p->tflops[MOE_BF16]));
  json_object_set(o, "matmul_tflops", mm);
  if (p->n_rates > 0) {
    json_t *arr = json_array(), *by = json_object();
    for (int i = 0; i < p->n_rates; i++)
      json_array_append_new(arr, json_pack("[f, f]", p->rate_m[i], p->rate_gflops[i]));
    json_object_set_new(by, "f32", arr);
    json_object_set_new(o, "matmul_gflops_by_rows", by);
  }
  json_object_set_new(h2d, "pinned", json_real(p->h2d_pinned_gbps));
  json_object_set_new(h2d, "pageable", json_real(p->h2d_pageable_gbps));
  if (p->h2d_theoretical_gbps > 0)
    json_object_set_new(h2d, "theoretical", json_real(p->h2d_theoretical_gbps));
  json_object_set(o, "h2d_gbps", h2d);
  json_object_set_new(o, "h2d_latency_us", json_real(p->h2d_latency_us));
  json_object_set_new(o, "launch_overhead_us", json_real(p->launch_us));
  json_object_set_new(o, "transfer_latency_us", json_real(p->transfer_latency_us));
  if (p->vector_gflops > 0) json_object_set_new(o, "vector_gflops", json_real(p->vector_gflops));
  if (p->vector_gbps > 0) json_object_set_new(o, "vector_gbps", json_real(p->vector_gbps));
  json_object_set_new(o, "copy_slowdown", json_real(p->copy_slowdown));
  if (p->host_cores > 0) {
    json_t *h = json_pack("{s:f, s:f, s:f, s:f}", "cores", p->host_cores, "memory_gbps",
                          p->host_memory_gbps, "matmul_gflops_f32", p->host_gflops_f32,
                          "matmul_gflops_bf16", p->host_gflops_bf16);
    MOE_CHECK(h != NULL, err, MOE_ERR_OOM, "out of host memory (profile)");
    json_object_set_new(o, "host", h);
    json_object_set_new(src, "host", json_string(source));
  }
  static const char *const keys[] = {"memory_bytes",    "memory_gbps",       "matmul_tflops",
                                     "h2d_gbps.pinned", "h2d_gbps.pageable", "h2d_latency_us",
                                     "launch_overhead_us", "matmul_gflops_by_rows",
                                     "copy_slowdown", "transfer_latency_us", "vector_gflops",
                                     "vector_gbps", NULL};
  for (const char *const *k = keys; *k; k++) json_object_set_new(src, *k, json_string(source));
  json_object_set(o, "sources", src);
  {
    moe_publish pub;
    MOE_TRY(moe_publish_open(&pub, path, "the hardware profile", err));
    int bad = json_dumpf(o, pub.f, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6)) != 0;
    bad |= fputc('\n', pub.f) == EOF;
    if (bad) moe_publish_fail(&pub);
    MOE_TRY(moe_publish_commit(&pub, err));
  }
cleanup:
  json_decref(mm);
  json_decref(h2d);
  json_decref(src);
  json_decref(o);
  return st;
}

/* ---------------------------------------------------------------- op costs */

double moe_cost_matmul_rate(const moe_hw_profile *p, double m, moe_dtype dt) {
  const double peak = p->tflops[dt] * 1e12;
  if (p->n_rates == 0) return peak;
  double g;
  if (m <= p->rate_m[0]) {
    g = p->rate_gflops[0] * m / p->rate_m[0]; /* below the table: proportional to rows */
  } else if (m >= p->rate_m[p->n_rates - 1]) {
    g = p->rate_gflops[p->n_rates - 1];
  } else {
    int i = 1;
    while (p->rate_m[i] < m) i++;
    const double a = log2(p->rate_m[i - 1]), b = log2(p->rate_m[i]), u = (log2(m) - a) / (b - a);
    g = p->rate_gflops[i - 1] + u * (p->rate_gflops[i] - p->rate_gflops[i - 1]);
  }
  return g * 1e9 * p->tflops[dt] / p->tflops[MOE_F32];
}

double moe_cost_matmul(const moe_hw_profile *p, double m, double rows, double cols, moe_dtype dt) {
  if (m <= 0 || rows <= 0 || cols <= 0) return 0;
  const double flops = 2.0 * m * rows * cols;
  const double bytes = rows * cols * (double)moe_dtype_size(dt) + 4.0 * m * (rows + cols);
  const double tc = flops / moe_cost_matmul_rate(p, m, dt), tm = bytes / (p->memory_gbps * 1e9);
  return p->launch_us * 1e-6 + (tc > tm ? tc : tm);
}

double moe_cost_vector(const moe_hw_profile *p, double flops, double bytes) {
  const double gf = p->vector_gflops > 0 ? p->vector_gflops : p->tflops[MOE_F32] * 1e3;
  const double gb = p->vector_gbps > 0 ? p->vector_gbps : p->memory_gbps;
  const double tc = flops / (gf * 1e9), tm = bytes / (gb * 1e9);
  return p->launch_us * 1e-6 + (tc > tm ? tc : tm);
}

double moe_cost_count(const moe_hw_profile *p, moe_op_count c) {
  return c.flops <= 0 && c.bytes <= 0 ? 0.0 : moe_cost_vector(p, c.flops, c.bytes);
}

double moe_cost_transfer(const moe_hw_profile *p, double bytes) {
  return p->transfer_latency_us * 1e-6 + bytes / (p->h2d_pageable_gbps * 1e9);
}

double moe_cost_copy(const moe_hw_profile *p, double bytes, bool pinned) {
  return p->h2d_latency_us * 1e-6 + bytes / ((pinned ? p->h2d_pinned_gbps : p->h2d_pageable_gbps) * 1e9);
}

/* ---------------------------------------------------------------- clock */

void moe_cost_clock_init(moe_cost_clock *c, const moe_hw_profile *p) {
  memset(c, 0, sizeof *c);
  c->p = p;
}

void moe_cost_compute(moe_cost_clock *c, double dur) {
  const double c0 = c->compute, s = c->p->copy_slowdown;
  double end = c0 + dur;
  /* the copy stream is busy over [copy_from, copy]: work there runs s times slower */
  const double o0 = c->copy_from > c0 ? c->copy_from : c0, o1 = c->copy;
  if (s > 1.0 && o1 > c0 && o0 < end) {
    const double before = o0 - c0; /* full speed until the overlap */
    const double left = dur - before, slow_room = (o1 - o0) / s;
    end = left <= slow_room ? o0 + left * s : o1 + (left - slow_room);
  }
  c->compute_busy += end - c0;
  c->compute = end;
  c->ops++;
}

double moe_cost_copy_issue(moe_cost_clock *c, double bytes, bool pinned) {
  double start = c->copy > c->compute ? c->copy : c->compute;
  /* idle: no copy was still moving bytes when this one starts (a copy_wait
   * holds the stream back without using the link) */
  const bool idle = start > c->copy_end || c->copies == 0;
  if (idle) c->copy_from = start; /* the link was idle: a new busy run */
  /* the latency is paid by a copy that finds the link idle; one queued
   * behind another starts as that one ends */
  const double dur = moe_cost_copy(c->p, bytes, pinned) - (idle ? 0.0 : c->p->h2d_latency_us * 1e-6);
  c->copy = c->copy_end = start + dur;
  c->copy_busy += dur;
  c->copies++;
  return c->copy;
}

void moe_cost_compute_wait(moe_cost_clock *c, double t) {
  if (t > c->compute) {
    c->stall += t - c->compute;
    c->compute = t;
  }
}

void moe_cost_host_wait(moe_cost_clock *c, double t) { moe_cost_compute_wait(c, t); }

void moe_cost_copy_wait(moe_cost_clock *c, double t) {
  if (t > c->copy) {
    c->copy = t;
    c->copy_from = t;
  }
}

double moe_cost_sync(moe_cost_clock *c) {
  if (c->copy > c->compute) c->compute = c->copy;
  if (c->host > c->compute) c->compute = c->host;
  return c->compute;
}

double moe_cost_host_run(moe_cost_clock *c, double seconds, double after) {
  double start = c->host > c->compute ? c->host : c->compute;
  if (after > start) start = after;
  const double d = seconds > 0 ? seconds : 0;
  c->host = start + d;
  c->host_busy += d;
  c->host_jobs++;
  return c->host;
}

double moe_cost_host_work(const moe_hw_profile *p, const moe_host_work *w) {
  if (!(p->host_memory_gbps > 0)) return NAN;
  const double g = w->dtype == MOE_F32 || !(p->host_gflops_bf16 > 0) ? p->host_gflops_f32
                                                                      : p->host_gflops_bf16;
  const double read = w->bytes / (p->host_memory_gbps * 1e9), math = w->flops / (g * 1e9);
  return read > math ? read : math;
}

double moe_cost_hidden_share(const moe_cost_clock *c) {
  if (c->copy_busy <= 0) return 1.0;
  double h = 1.0 - c->stall / c->copy_busy;
  return h < 0 ? 0 : h > 1 ? 1 : h;
}

double moe_cost_host_expert(const moe_hw_profile *p, double bytes, double flops_per_token,
                            double tokens, moe_dtype dt) {
  if (!(p->host_memory_gbps > 0)) return NAN;
  const double rate = (dt == MOE_F32 ? p->host_gflops_f32 : p->host_gflops_bf16) * 1e9;
  const double read = bytes / (p->host_memory_gbps * 1e9), math = flops_per_token * tokens / rate;
  return read > math ? read : math;
}
