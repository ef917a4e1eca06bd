/* The sim backend: the backend table with no math and no weight memory.
 * Every operation advances a modeled clock of three streams (compute, copy,
 * host: moe/cost.h) by its roofline time on a hardware profile; host_run
 * jobs are charged at the profile's host rates and never run; copies move
 * no bytes; device
 * memory is reserved address space that is never touched (so the engine's
 * accounting and the policies run unchanged on models far larger than this
 * machine); routing comes from a seeded routing source.  See README.md. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "moe/backend.h"
#include "moe/config.h"
#include "moe/cost.h"
#include "moe/jsonfile.h"

#define MOE_SIM_MAX_K 64 /* experts per token a routing log may hold */

struct moe_event {
  double t; /* modeled time of its most recent record or signalling copy (0: complete) */
};

struct moe_backend {
  moe_hw_profile prof;
  moe_cost_clock clk;
  double zipf_s;      /* 0: uniform */
  double stay;        /* temporal correlation: P(a row keeps its previous step's experts) */
  double miss;        /* P(a pre-gate's prediction of a row is drawn afresh, not the routing) */
  bool predicting;    /* set_context: the next routing is a prediction */
  uint64_t seed;
  int layer;          /* set_context */
  unsigned long long step;
  double *zw;         /* scratch: popularity weights (n experts) */
  int zw_n;
  double *pop[MOE_MAX_LAYERS + 1]; /* per layer (+1): Zipf weights of its experts, or NULL */
  int pop_n;                       /* experts they were made for */
  char desc[400];
  char routing[64];
  void (*observer)(void *ctx, size_t bytes, double t0, double t1);
  void *observer_ctx;
  /* routing source trace:FILE: recorded choices by (step, layer, row) */
  struct rec_route *rec;   /* open-addressing table, rec_cap entries (a power of 2) */
  size_t rec_cap, rec_n;
  int rec_k;
  unsigned long long rec_hits, rec_misses;
  char rec_path[512]; /* the log, for errors that name it */
};

/* One recorded routing: the router's top-k of (step, layer, row). */
typedef struct rec_route {
  unsigned long long step;
  int layer;               /* -2: empty entry */
  size_t row;
  int32_t experts[MOE_SIM_MAX_K];
  long line; /* in the log */
} rec_route;

/* ---------------------------------------------------------------- memory */

/* Reserved, never-touched address space: pages only become memory when
 * written (the few buffers the engine reads back).  A 64-byte header
 * before the block keeps its length. */
enum { HDR = 4096 };

static void *reserve(size_t bytes) {
  void *p = mmap(NULL, bytes + HDR, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return NULL;
  *(size_t *)p = bytes + HDR;
  return (char *)p + HDR;
}

static void release(void *ptr) {
  if (ptr == NULL) return;
  char *base = (char *)ptr - HDR;
  munmap(base, *(size_t *)(void *)base);
}

static moe_status sim_alloc(moe_backend *be, size_t bytes, void **ptr, moe_error *err) {
  (void)be;
  *ptr = reserve(bytes);
  if (*ptr == NULL)
    return MOE_FAIL(err, MOE_ERR_OOM, "sim backend: cannot reserve %zu bytes of address space: %s",
                    bytes, strerror(errno));
  return MOE_OK;
}

static void sim_free(moe_backend *be, void *ptr) {
  (void)be;
  release(ptr);
}

/* ---------------------------------------------------------------- routing */

static uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static double unit(uint64_t h) { return (double)(h >> 11) * 0x1.0p-53; }

static uint64_t key(const moe_backend *be, int layer, unsigned long long step, size_t row,
                    uint64_t salt) {
  return mix(mix(mix(mix(be->seed ^ salt) + (uint64_t)(layer + 1)) + step) + row);
}

/* k distinct experts of n for (layer, step, row): weighted draws without
 * replacement; weights 1/rank^s over a per-layer permutation (s = 0:
 * uniform). */
/* The popularity weights of a layer's n experts: 1/rank^s, ranks a
 * permutation fixed by the seed and the layer (sorted hashes). */
static const double *popularity(moe_backend *be, int layer, int n) {
  const int li = layer < 0 ? 0 : layer > MOE_MAX_LAYERS - 1 ? MOE_MAX_LAYERS : layer + 1;
  if (be->pop_n != n)
    for (int i = 0; i <= MOE_MAX_LAYERS; i++) free(be->pop[i]), be->pop[i] = NULL;
  be->pop_n = n;
  if (be->pop[li]) return be->pop[li];
  double *w = malloc((size_t)n * sizeof *w);
  if (w == NULL) return NULL;
  for (int x = 0; x < n; x++) {
    const uint64_t hx = key(be, layer, 0, (size_t)x, 77);
    int rank = 1;
    for (int y = 0; y < n; y++) {
      const uint64_t hy = key(be, layer, 0, (size_t)y, 77);
      rank += hy < hx || (hy == hx && y < x);
    }
    w[x] = pow((double)rank, -be->zipf_s);
  }
  be->pop[li] = w;
  return w;
}

/* k distinct experts of n for (layer, step, row): weighted draws without
 * replacement; weights 1/rank^s (s = 0: uniform). */
static int draw(moe_backend *be, int layer, unsigned long long step, size_t row, int n, int k,
                int32_t *out) {
  double *w = be->zw, total = 0;
  const double *pw = be->zipf_s > 0 ? popularity(be, layer, n) : NULL;
  if (be->zipf_s > 0 && pw == NULL) return -1;
  for (int x = 0; x < n; x++) {
    w[x] = pw ? pw[x] : 1.0;
    total += w[x];
  }
  for (int j = 0; j < k; j++) {
    double u = unit(key(be, layer, step, row, 1000u + (uint64_t)j)) * total, acc = 0;
    int pick = -1;
    for (int x = 0; x < n && pick < 0; x++) {
      if (w[x] == 0) continue;
      acc += w[x];
      if (u < acc) pick = x;
    }
    if (pick < 0) /* rounding at the top end: the last expert still in the draw */
      for (int x = n - 1; x >= 0 && pick < 0; x--)
        if (w[x] > 0) pick = x;
    out[j] = pick;
    total -= w[pick];
    w[pick] = 0;
  }
  return 0;
}

static size_t rec_slot(const moe_backend *be, unsigned long long step, int layer, size_t row) {
  return (size_t)mix(mix(step * 1315423911ull + (uint64_t)(layer + 2)) + row) & (be->rec_cap - 1);
}

static const rec_route *rec_find(const moe_backend *be, unsigned long long step, int layer,
                                 size_t row) {
  if (be->rec_cap == 0) return NULL;
  for (size_t i = rec_slot(be, step, layer, row);; i = (i + 1) & (be->rec_cap - 1)) {
    const rec_route *r = &be->rec[i];
    if (r->layer == -2) return NULL;
    if (r->step == step && r->layer == layer && r->row == row) return r;
  }
}

/* Parses one log line p (lineno) into r, with every expert checked. */
static moe_status rec_parse(moe_backend *be, const char *p, long lineno, rec_route *r,
                            moe_error *err) {
  const char *path = be->rec_path;
  memset(r, 0, sizeof *r);
  char *end;
  long long v[3 + MOE_SIM_MAX_K];
  int n = 0;
  errno = 0;
  while (n < 3 + MOE_SIM_MAX_K) {
    p += strspn(p, " \t");
    if (*p == '\n' || *p == '\0') break;
    v[n] = strtoll(p, &end, 10);
    if (end == p || errno || v[n] < 0 || v[n] > (1ll << 40) || (*end != ' ' && *end != '\t' &&
                                                           *end != '\n' && *end != '\0'))
      return MOE_FAIL(err, MOE_ERR_FORMAT, "%s:%ld: expected 'step layer row expert...', "
                      "non-negative integers", path, lineno);
    p = end;
    n++;
  }
  p += strspn(p, " \t");
  const int k = n - 3;
  if (k < 1 || (*p != '\n' && *p != '\0') || v[1] >= 100000 || (be->rec_k && k != be->rec_k))
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s:%ld: expected 'step layer row' and 1 to %d experts, "
                    "as many on every line", path, lineno, MOE_SIM_MAX_K);
  be->rec_k = k;
  r->step = (unsigned long long)v[0];
  r->layer = (int)v[1];
  r->row = (size_t)v[2];
  for (int j = 0; j < k; j++) {
    if (v[3 + j] > 1000000)
      return MOE_FAIL(err, MOE_ERR_FORMAT, "%s:%ld: expert %lld out of range", path, lineno, v[3 + j]);
    r->experts[j] = (int32_t)v[3 + j];
    for (int q = 0; q < j; q++)
      if (r->experts[q] == r->experts[j])
        return MOE_FAIL(err, MOE_ERR_FORMAT, "%s:%ld: expert %d twice in one row (a router picks "
                        "distinct experts)", path, lineno, (int)r->experts[j]);
  }
  r->line = lineno;
  return MOE_OK;
}

/* The slot of (step, layer, row) in be->rec: its entry or the empty one
 * where it goes. */
static size_t rec_place(const moe_backend *be, unsigned long long step, int layer, size_t row) {
  size_t s = rec_slot(be, step, layer, row);
  while (be->rec[s].layer != -2 &&
         !(be->rec[s].step == step && be->rec[s].layer == layer && be->rec[s].row == row))
    s = (s + 1) & (be->rec_cap - 1);
  return s;
}

/* Stores r (a later line of the same key replaces an earlier one),
 * rehashing into twice the room when the table is half full. */
static moe_status rec_insert(moe_backend *be, const rec_route *r, moe_error *err) {
  if (2 * (be->rec_n + 1) > be->rec_cap) {
    rec_route *old = be->rec;
    const size_t old_cap = be->rec_cap;
    be->rec = malloc(2 * old_cap * sizeof *be->rec);
    if (be->rec == NULL) {
      be->rec = old;
      return MOE_FAIL(err, MOE_ERR_OOM, "sim backend: out of host memory for the routing log");
    }
    be->rec_cap = 2 * old_cap;
    for (size_t i = 0; i < be->rec_cap; i++) be->rec[i].layer = -2;
    for (size_t i = 0; i < old_cap; i++)
      if (old[i].layer != -2) be->rec[rec_place(be, old[i].step, old[i].layer, old[i].row)] = old[i];
    free(old);
  }
  const size_t s = rec_place(be, r->step, r->layer, r->row);
  if (be->rec[s].layer == -2) be->rec_n++;
  be->rec[s] = *r;
  return MOE_OK;
}

/* Loads a routing log ("step layer row expert..." lines, '#' comments):
 * errors name the file and line. */
static moe_status rec_load(moe_backend *be, const char *path, moe_error *err) {
  FILE *f = moe_fopen_regular(path, err); /* never blocks on a FIFO or a device */
  if (f == NULL) return err ? err->status : MOE_ERR_IO;
  moe_status st = MOE_OK;
  char *line = NULL;
  size_t cap = 0;
  long lineno = 0;
  be->rec_cap = 1024;
  be->rec = malloc(be->rec_cap * sizeof *be->rec);
  if (be->rec == NULL) {
    fclose(f);
    return MOE_FAIL(err, MOE_ERR_OOM, "sim backend: out of host memory");
  }
  for (size_t i = 0; i < be->rec_cap; i++) be->rec[i].layer = -2;
  snprintf(be->rec_path, sizeof be->rec_path, "%s", path);
  ssize_t len;
  while (st == MOE_OK && (len = getline(&line, &cap, f)) >= 0) {
    lineno++;
    if (memchr(line, '\0', (size_t)len) != NULL) {
      st = MOE_FAIL(err, MOE_ERR_FORMAT, "%s:%ld: a NUL byte inside the line", path, lineno);
      break;
    }
    const char *p = line + strspn(line, " \t");
    if (*p == '#' || *p == '\n' || *p == '\0') continue;
    rec_route r;
    st = rec_parse(be, p, lineno, &r, err);
    if (st == MOE_OK) st = rec_insert(be, &r, err);
  }
  if (st == MOE_OK && be->rec_n == 0)
    st = MOE_FAIL(err, MOE_ERR_FORMAT, "%s: the routing log is empty", path);
  free(line);
  fclose(f);
  return st;
}

/* The routing of m rows from the source (no time charged). */
static moe_status route_rows(moe_backend *be, int32_t *idx, float *wts, size_t m, int n, int k,
                             bool renorm, moe_error *err) {
  if (k < 1 || k > n)
    return MOE_FAIL(err, MOE_ERR_INVALID, "sim router: top-%d of %d experts", k, n);
  if (be->zw_n < n) {
    double *nw = realloc(be->zw, (size_t)n * sizeof *nw);
    if (nw == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "sim backend: out of host memory");
    be->zw = nw;
    be->zw_n = n;
  }
  for (size_t r = 0; r < m; r++) {
    /* a recorded run's routing, where it has this (step, layer, row) and
     * the same k, with experts in range; else the seeded draw */
    const bool mispredict = be->predicting && be->miss > 0 &&
                            unit(key(be, be->layer, be->step, r, 999)) < be->miss;
    const rec_route *rec = mispredict ? NULL : rec_find(be, be->step, be->layer, r);
    bool used = rec != NULL && be->rec_k == k;
    for (int j = 0; used && j < k; j++)
      if (rec->experts[j] >= n) /* a log of another model: refused, not redrawn */
        return MOE_FAIL(err, MOE_ERR_INVALID, "%s:%ld: expert %d is outside this model's %d "
                        "experts (a log of another model?)", be->rec_path, rec->line,
                        (int)rec->experts[j], n);
    if (rec) be->rec_hits += used, be->rec_misses += !used;
    else if (be->rec_cap) be->rec_misses++;
    if (used) {
      memcpy(idx + r * (size_t)k, rec->experts, (size_t)k * sizeof(int32_t));
      for (int j = 0; j < k; j++) wts[r * (size_t)k + (size_t)j] = renorm ? 1.0f / (float)k : 1.0f / (float)n;
      continue;
    }
    /* temporal correlation: walk back while the row kept its experts */
    unsigned long long s = be->step;
    while (s > 0 && be->stay > 0 && unit(key(be, be->layer, s, r, 555)) < be->stay) s--;
    /* a mispredicted row: the pre-gate draws from another stream */
    if (mispredict) s = mix(s ^ 0x5bd1e995ull) | (1ull << 63);
    if (draw(be, be->layer, s, r, n, k, idx + r * (size_t)k) != 0)
      return MOE_FAIL(err, MOE_ERR_OOM, "sim backend: out of host memory");
    for (int j = 0; j < k; j++) wts[r * (size_t)k + (size_t)j] = renorm ? 1.0f / (float)k : 1.0f / (float)n;
  }
  return MOE_OK;
}

/* Charges an op its counts (moe/cost.h: what the trace records). */
static void charge(moe_backend *be, moe_op_count c) {
  moe_cost_compute(&be->clk, moe_cost_count(&be->prof, c));
}

/* Routing: the routing source's draw; weights as the contract shapes them
 * (renormalised, scaled).  The legacy router (SOFTMAX_LOGITS scoring) is
 * charged as the plain top-k, the others as the grouped one. */
static moe_status sim_router_topk_ex(moe_backend *be, int32_t *idx, float *wts, const float *logits,
                                     size_t m, int n, const moe_router_ex *r, moe_error *err) {
  if (m == 0) return MOE_OK;
  (void)logits;
  moe_status st = moe_router_ex_check(r, n, err);
  if (st == MOE_OK) st = route_rows(be, idx, wts, m, n, r->k, r->renorm, err);
  if (st != MOE_OK) return st;
  for (size_t i = 0; i < m * (size_t)r->k; i++) wts[i] *= r->scale;
  charge(be, moe_count_router(m, n, r->scoring != MOE_SCORING_SOFTMAX_LOGITS));
  return MOE_OK;
}

static moe_status parse_routing(moe_backend *be, const char *spec, moe_error *err) {
  snprintf(be->routing, sizeof be->routing, "%s", spec && *spec ? spec : "uniform");
  if (spec == NULL || *spec == '\0' || strcmp(spec, "uniform") == 0) return MOE_OK;
  if (strncmp(spec, "trace:", 6) == 0) { /* a recorded run's routing (run --record-routing) */
    if (spec[6] == '\0')
      return MOE_FAIL(err, MOE_ERR_INVALID, "sim routing 'trace:': give the routing log's path");
    return rec_load(be, spec + 6, err);
  }
  char buf[64];
  const size_t len = strlen(spec);
  if (len >= sizeof buf || spec[0] == ',' || spec[len - 1] == ',' || strstr(spec, ",,")) goto bad;
  snprintf(buf, sizeof buf, "%s", spec);
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    char *colon = strchr(tok, ':'), *end = NULL;
    if (colon == NULL) goto bad;
    *colon = '\0';
    errno = 0;
    double v = strtod(colon + 1, &end);
    if (errno || end == colon + 1 || *end != '\0' || !isfinite(v)) goto bad;
    if (strcmp(tok, "zipf") == 0 && v > 0 && v <= 10)
      be->zipf_s = v;
    else if (strcmp(tok, "correlated") == 0 && v >= 0 && v < 1)
      be->stay = v;
    else if (strcmp(tok, "miss") == 0 && v >= 0 && v <= 1)
      be->miss = v;
    else
      goto bad;
  }
  return MOE_OK;
bad:
  return MOE_FAIL(err, MOE_ERR_INVALID,
                  "sim routing '%.60s': expected uniform, zipf:S (0 < S <= 10), correlated:P "
                  "(0 <= P < 1), miss:P (0 <= P <= 1), comma-separated, or trace:FILE", spec);
}

/* ---------------------------------------------------------------- instance */

static moe_status sim_create(const moe_backend_options *opt, moe_backend **out, moe_error *err) {
  *out = NULL;
  if (opt == NULL || opt->hardware == NULL || opt->hardware[0] == '\0')
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "the sim backend models a device: give a hardware profile (--hardware NAME)");
  moe_backend *be = calloc(1, sizeof *be);
  if (be == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "sim backend: out of host memory");
  moe_status st = moe_hw_profile_load(&be->prof, opt->hardware, err);
  if (st == MOE_OK) st = parse_routing(be, opt->routing, err);
  if (st != MOE_OK) {
    free(be->rec);
    free(be);
    return st;
  }
  be->seed = opt->seed;
  be->layer = -1;
  if (opt->link_gbps > 0) { /* a modeled link cap: the profile's link at that rate */
    be->prof.h2d_pinned_gbps = opt->link_gbps;
    if (be->prof.h2d_pageable_gbps > opt->link_gbps) be->prof.h2d_pageable_gbps = opt->link_gbps;
  }
  moe_cost_clock_init(&be->clk, &be->prof);
  char link[48] = "";
  if (opt->link_gbps > 0) snprintf(link, sizeof link, ", link capped at %g GB/s", opt->link_gbps);
  snprintf(be->desc, sizeof be->desc, "sim (modeled on %s%s, routing %s; no math, no weight memory)",
           be->prof.name, link, be->routing);
  *out = be;
  return MOE_OK;
}

static void sim_destroy(moe_backend *be) {
  free(be->rec);
  for (int i = 0; i <= MOE_MAX_LAYERS; i++) free(be->pop[i]);
  free(be->zw);
  free(be);
}

static const char *sim_describe(moe_backend *be) { return be->desc; }
static const char *sim_device_name(moe_backend *be) { return be->prof.name; }
static size_t sim_capacity(moe_backend *be) { return (size_t)be->prof.memory_bytes; }
static double sim_seconds(moe_backend *be) { return be->clk.compute; }
static double sim_stall(moe_backend *be) { return be->clk.stall; }

/* Copies are reported when issued, with their modeled spans. */
static void sim_set_observer(moe_backend *be, void (*fn)(void *, size_t, double, double), void *ctx) {
  be->observer = fn;
  be->observer_ctx = ctx;
}

static void sim_context(moe_backend *be, int layer, int expert, unsigned long long step) {
  be->predicting = expert == -2;
  be->layer = layer;
  be->step = step;
}

/* ---------------------------------------------------------------- streams */

static moe_status sim_host_register(moe_backend *be, void *p, size_t n, moe_error *err) {
  (void)be, (void)p, (void)n, (void)err;
  return MOE_OK; /* modeled as pinned */
}
static void sim_host_unregister(moe_backend *be, void *p) { (void)be, (void)p; }

static moe_status sim_event_create(moe_backend *be, moe_event **ev, moe_error *err) {
  (void)be;
  *ev = calloc(1, sizeof **ev);
  return *ev ? MOE_OK : MOE_FAIL(err, MOE_ERR_OOM, "sim backend: out of host memory");
}

static void sim_event_destroy(moe_backend *be, moe_event *ev) {
  (void)be;
  free(ev);
}

static moe_status sim_copy(moe_backend *be, void *dst, const void *src, size_t bytes,
                           moe_event *ev, moe_error *err) {
  (void)dst, (void)src, (void)err;
  /* copies come from the model's registered (pinned) host slab */
  const double start = be->clk.copy > be->clk.compute ? be->clk.copy : be->clk.compute;
  const double t = moe_cost_copy_issue(&be->clk, (double)bytes, true);
  if (ev) ev->t = t;
  if (be->observer) be->observer(be->observer_ctx, bytes, start, t);
  return MOE_OK;
}

static moe_status sim_compute_wait(moe_backend *be, moe_event *ev, moe_error *err) {
  (void)err;
  if (ev) moe_cost_compute_wait(&be->clk, ev->t);
  return MOE_OK;
}

static moe_status sim_event_sync(moe_backend *be, moe_event *ev, moe_error *err) {
  (void)err;
  if (ev) moe_cost_host_wait(&be->clk, ev->t);
  return MOE_OK;
}

static moe_status sim_record(moe_backend *be, moe_event *ev, moe_error *err) {
  (void)err;
  if (ev) ev->t = be->clk.compute;
  return MOE_OK;
}

static moe_status sim_copy_wait(moe_backend *be, moe_event *ev, moe_error *err) {
  (void)err;
  if (ev) moe_cost_copy_wait(&be->clk, ev->t);
  return MOE_OK;
}

/* Done once the host's time (the compute stream's: it issues everything
 * and waits with it) has reached the event's: a copy's or a host job's
 * event becomes done when compute has waited for it, or after synchronize. */
static int sim_event_done(moe_backend *be, moe_event *ev) { return ev == NULL || ev->t <= be->clk.compute; }

/* A job on the host stream (ABI 1.7): fn is never called; `work` takes its
 * modeled time at the profile's host rates, starting when the host stream
 * is free, once issued and after wait_ev. */
static moe_status sim_host_run(moe_backend *be, void (*fn)(void *ctx), void *ctx,
                               const moe_host_work *work, moe_event *wait_ev, moe_event *done_ev,
                               moe_error *err) {
  (void)fn, (void)ctx;
  if (work == NULL)
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "sim backend: host_run without its work (a modeled backend charges the work, "
                    "it runs no job)");
  const double secs = moe_cost_host_work(&be->prof, work);
  if (isnan(secs))
    return MOE_FAIL(err, MOE_ERR_UNSUPPORTED,
                    "sim backend: hardware profile '%s' has no host section; computing experts on "
                    "the host needs one", be->prof.name);
  const double t = moe_cost_host_run(&be->clk, secs, wait_ev ? wait_ev->t : 0);
  if (done_ev) done_ev->t = t;
  return MOE_OK;
}

static moe_status sim_sync(moe_backend *be, moe_error *err) {
  (void)err;
  moe_cost_sync(&be->clk);
  return MOE_OK;
}

/* upload and download take a copy's time on the compute stream; they move
 * the bytes of small buffers (ids, positions, routing rows: up to
 * SIM_UPLOAD_MAX), never those of weights, whose host memory a virtual
 * model does not have */
#define SIM_UPLOAD_MAX ((size_t)16 << 20)
static moe_status sim_upload(moe_backend *be, void *dst, const void *src, size_t bytes,
                             moe_error *err) {
  (void)err;
  if (bytes == 0) return MOE_OK;
  if (bytes <= SIM_UPLOAD_MAX) memcpy(dst, src, bytes);
  moe_cost_compute(&be->clk, moe_cost_transfer(&be->prof, (double)bytes));
  return MOE_OK;
}

static moe_status sim_download(moe_backend *be, void *dst, const void *src, size_t bytes,
                               moe_error *err) {
  (void)err;
  if (bytes == 0) return MOE_OK;
  memcpy(dst, src, bytes);
  moe_cost_compute(&be->clk, moe_cost_transfer(&be->prof, (double)bytes));
  return MOE_OK;
}

/* ---------------------------------------------------------------- math: time only */

static moe_status sim_matmul(moe_backend *be, float *y, const float *x, size_t m, const moe_weight *w,
                             const moe_weight *b, moe_error *err) {
  (void)y, (void)x, (void)b, (void)err;
  moe_cost_compute(&be->clk, moe_cost_matmul(&be->prof, (double)m, (double)w->rows, (double)w->cols, w->dtype));
  return MOE_OK;
}

static moe_status sim_rmsnorm(moe_backend *be, float *y, const float *x, size_t m, const moe_weight *g,
                              float eps, moe_error *err) {
  (void)y, (void)x, (void)eps, (void)err;
  charge(be, moe_count_rmsnorm(m, g->cols));
  return MOE_OK;
}

static moe_status sim_rope_ex(moe_backend *be, float *x, size_t m, const int32_t *pos,
                              const moe_rope_ex *r, moe_error *err) {
  (void)x, (void)pos;
  if (m == 0) return MOE_OK;
  moe_status st = moe_rope_ex_check(r, err);
  if (st == MOE_OK) charge(be, moe_count_rope_ex(m, r));
  return st;
}

static moe_status sim_mla_attention(moe_backend *be, float *o, const float *q, float *ckv_cache,
                                    float *kpe_cache, const float *ckv, const float *kpe,
                                    const moe_weight *kv_b, const moe_mla_shape *s,
                                    moe_error *err) {
  (void)o, (void)q, (void)ckv_cache, (void)kpe_cache, (void)ckv, (void)kpe;
  if ((size_t)s->n_seq * (size_t)s->n_new == 0) return MOE_OK;
  moe_status st = moe_mla_check(s, kv_b, err);
  if (st == MOE_OK) charge(be, moe_count_mla(s, kv_b->dtype));
  return st;
}

static moe_status sim_kv_store(moe_backend *be, float *kc, float *vc, const float *k, const float *v,
                               const moe_attn_shape *s, moe_error *err) {
  (void)kc, (void)vc, (void)k, (void)v, (void)err;
  charge(be, moe_count_kv_store(s));
  return MOE_OK;
}

static moe_status sim_attention_ex(moe_backend *be, float *o, const float *q, const float *kc,
                                   const float *vc, const moe_attn_ex *a, moe_error *err) {
  (void)o, (void)q, (void)kc, (void)vc, (void)err;
  charge(be, moe_count_attention_ex(a));
  return MOE_OK;
}

static moe_status sim_unary(moe_backend *be, float *y, const float *x, size_t n, moe_unary_op op,
                            float alpha, moe_error *err) {
  (void)y, (void)x, (void)op, (void)alpha, (void)err;
  charge(be, moe_count_unary(n));
  return MOE_OK;
}

static moe_status sim_swiglu(moe_backend *be, float *y, const float *g, const float *u, size_t n,
                             moe_error *err) {
  (void)y, (void)g, (void)u, (void)err;
  charge(be, moe_count_swiglu(n));
  return MOE_OK;
}

static moe_status sim_add(moe_backend *be, float *y, const float *x, size_t n, moe_error *err) {
  (void)y, (void)x, (void)err;
  charge(be, moe_count_add(n));
  return MOE_OK;
}

static moe_status sim_embed(moe_backend *be, float *y, const moe_weight *t, const int32_t *ids,
                            size_t m, moe_error *err) {
  (void)y, (void)ids, (void)err;
  charge(be, moe_count_embed(m, t->cols));
  return MOE_OK;
}

static moe_status sim_gather(moe_backend *be, float *d, const float *s, const int32_t *r, size_t n,
                             size_t dim, moe_error *err) {
  (void)d, (void)s, (void)r, (void)err;
  charge(be, moe_count_gather(n, dim));
  return MOE_OK;
}

static moe_status sim_scatter(moe_backend *be, float *d, const float *s, const int32_t *r,
                              const float *sc, size_t st, bool sig, size_t n, size_t dim,
                              moe_error *err) {
  (void)d, (void)s, (void)r, (void)sc, (void)st, (void)sig, (void)err;
  charge(be, moe_count_scatter(n, dim));
  return MOE_OK;
}

const moe_backend_ops moe_sim_backend = {
    .abi_version = MOE_BACKEND_ABI,
    .struct_size = sizeof(moe_backend_ops),
    .name = "sim",
    .summary = "modeled device: no math, no weight memory; times from a hardware profile (--hardware)",
    .create = sim_create,
    .destroy = sim_destroy,
    .describe = sim_describe,
    .device_alloc = sim_alloc,
    .device_free = sim_free,
    .host_alloc = sim_alloc,
    .host_free = sim_free,
    .event_create = sim_event_create,
    .event_destroy = sim_event_destroy,
    .copy_h2d_async = sim_copy,
    .compute_wait = sim_compute_wait,
    .event_sync = sim_event_sync,
    .compute_record = sim_record,
    .copy_wait = sim_copy_wait,
    .event_done = sim_event_done,
    .device_capacity = sim_capacity,
    .upload = sim_upload,
    .download = sim_download,
    .synchronize = sim_sync,
    .matmul = sim_matmul,
    .rmsnorm = sim_rmsnorm,
    .kv_store = sim_kv_store,
    .swiglu = sim_swiglu,
    .add = sim_add,
    .embed = sim_embed,
    .gather_rows = sim_gather,
    .scatter_add_rows = sim_scatter,
    .host_register = sim_host_register,
    .host_unregister = sim_host_unregister,
    .caps = MOE_BACKEND_CAP_MODELED | MOE_BACKEND_CAP_LINK_CAP,
    .device_name = sim_device_name,
    .stall_seconds = sim_stall,
    .set_copy_observer = sim_set_observer,
    .attention_ex = sim_attention_ex,
    .unary = sim_unary,
    .modeled_seconds = sim_seconds,
    .set_context = sim_context,
    .router_topk_ex = sim_router_topk_ex,
    .rope_ex = sim_rope_ex,
    .mla_attention = sim_mla_attention,
    .abi_minor = MOE_BACKEND_ABI_MINOR,
    .host_run = sim_host_run,
};
