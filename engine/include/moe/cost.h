/* The cost model: hardware profiles and a two-stream clock that turns a
 * sequence of backend operations into modeled time.
 *
 * A hardware profile (workloads/hardware/NAME.json) gives a device's
 * memory, memory bandwidth, matmul rate per dtype, host-to-device link and
 * fixed overheads, each figure with its source.  An operation's modeled
 * time is a roofline plus the launch overhead:
 *
 *   matmul   launch + max(2 m rows cols / rate(m, dtype), bytes / memory bandwidth)
 *   other    launch + max(flops / vector rate, bytes / vector bandwidth)
 *            (the f32 matmul rate and the memory bandwidth unless the
 *            profile measured its own: calibrated profiles)
 *   copy     h2d latency + bytes / link bandwidth (pinned or pageable)
 *   upload, download  transfer latency + bytes / pageable link bandwidth
 *
 * where rate(m, dtype) is the profile's matmul rate for the dtype, or, when
 * the profile has a measured table of f32 rates by rows (calibrated
 * profiles), that table interpolated in log2(m) and scaled by dtype.
 *
 * The clock follows the backend contract's stream model (backend.h): a
 * compute stream and a copy stream, each in issue order, ordered against
 * each other by events only.  A copy starts when the copy stream is free,
 * when the host has issued it (the compute stream's time at the issue:
 * the engine issues copies after reading back the routing, a host-device
 * synchronisation), and after any event the copy stream was told to wait
 * for; it pays the link's latency when it finds the link idle (a copy
 * queued behind another starts as that one ends).  A compute wait on an event moves the compute stream to the event's
 * time and counts the difference as stall.  While a copy is on the link,
 * compute runs `copy_slowdown` times slower (calibrated profiles of an
 * emulated device whose copies share its memory; 1 on a real PCIe link).
 *
 * Everything is deterministic: the same operations and profile give the
 * same figures, bit for bit. */
#ifndef MOE_COST_H
#define MOE_COST_H

#include <stdbool.h>
#include <stddef.h>

#include "moe/backend.h"
#include "moe/dtype.h"
#include "moe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_HW_MAX_RATES 16

typedef struct moe_hw_profile {
  char name[64], description[200];
  double memory_bytes;       /* device memory */
  double memory_gbps;        /* device memory bandwidth, GB/s (1e9 bytes/s) */
  double tflops[3];          /* dense matmul rate by moe_dtype (f32, f16, bf16), TFLOP/s */
  double h2d_pinned_gbps, h2d_pageable_gbps;
  double h2d_theoretical_gbps; /* optional: the bus's own rate (0: not given); pinned and
                                  pageable copies cannot beat it, nor pageable pinned */
  double h2d_latency_us, launch_us;
  double transfer_latency_us; /* a synchronous upload/download's fixed cost (optional:
                                 h2d_latency_us when absent) */
  /* optional: measured f32 matmul rates (GFLOP/s) at rows rate_m[i],
   * ascending; n_rates 0 when absent */
  int n_rates;
  double rate_m[MOE_HW_MAX_RATES], rate_gflops[MOE_HW_MAX_RATES];
  double copy_slowdown;      /* >= 1; 1 when absent */
  double vector_gflops;      /* optional: FLOP rate of the ops that are not matmuls (attention,
                                norms, element-wise), GFLOP/s; the f32 matmul rate when absent */
  double vector_gbps;        /* optional: their memory bandwidth, GB/s; memory_gbps when absent */
  bool calibrated;           /* written by moebench calibrate */
  /* optional "host" section: the machine the experts live on, for
   * computing an expert where it lives instead of copying it (0: absent) */
  double host_cores;         /* physical cores */
  double host_memory_gbps;   /* host memory bandwidth, GB/s */
  double host_gflops_f32;    /* dense f32 matmul rate over all cores, GFLOP/s */
  double host_gflops_bf16;   /* the same for bf16 weights (the f32 rate when absent) */
} moe_hw_profile;

/* Loads a profile from a JSON file.  Every figure must be a positive number
 * and name its source (sources.KEY); a calibrated profile's sources may all
 * say "measured".  Errors name the file and the field. */
moe_status moe_hw_profile_load(moe_hw_profile *p, const char *path, moe_error *err);
/* The same from a parsed document (a json_t *); path names it in errors. */
moe_status moe_hw_profile_from_json(moe_hw_profile *p, const void *json, const char *path,
                                    moe_error *err);

/* Writes p as a profile JSON file (atomically: NAME.tmp, then rename), with
 * `source` as every figure's source. */
moe_status moe_hw_profile_save(const moe_hw_profile *p, const char *path, const char *source,
                               moe_error *err);

/* One expert of `bytes` bytes and `flops_per_token` FLOPs computed on the
 * host for `tokens` tokens: the larger of reading its weights at the host's
 * memory bandwidth and its FLOPs at the host's rate for dtype.  NAN when
 * the profile has no host section. */
double moe_cost_host_expert(const moe_hw_profile *p, double bytes, double flops_per_token,
                            double tokens, moe_dtype dt);

/* The f32-equivalent matmul rate in FLOP/s for m input rows and dtype. */
double moe_cost_matmul_rate(const moe_hw_profile *p, double m, moe_dtype dt);
/* Modeled seconds of y[m, rows] = x[m, cols] w^T with w in dtype. */
double moe_cost_matmul(const moe_hw_profile *p, double m, double rows, double cols, moe_dtype dt);
/* Modeled seconds of any other compute op of `flops` and `bytes` moved. */
double moe_cost_vector(const moe_hw_profile *p, double flops, double bytes);
/* Modeled seconds of a host-to-device copy of `bytes`. */
double moe_cost_copy(const moe_hw_profile *p, double bytes, bool pinned);
/* Modeled seconds of a synchronous upload or download of `bytes` on the
 * compute stream (ids, routing, logits). */
double moe_cost_transfer(const moe_hw_profile *p, double bytes);

/* The FLOPs and bytes the cost model charges each op that is not a matmul
 * or a transfer: one definition, which the op trace records and the sim
 * charges, so that a replay of a sim run's trace gives back its times. */
typedef struct moe_op_count {
  double flops, bytes;
} moe_op_count;

static inline moe_op_count moe_count_rmsnorm(size_t m, size_t cols) {
  return (moe_op_count){4.0 * (double)m * (double)cols, 8.0 * (double)m * (double)cols};
}
static inline moe_op_count moe_count_rope(size_t m, int nh, int hd) {
  return (moe_op_count){6.0 * (double)m * nh * hd, 8.0 * (double)m * nh * hd};
}
static inline moe_op_count moe_count_rope_ex(size_t m, const moe_rope_ex *r) {
  return (moe_op_count){6.0 * (double)m * r->n_heads * r->rot_dim,
                        8.0 * (double)m * r->n_heads * r->rot_dim};
}
/* Multi-head latent attention as the cpu backend computes it (the
 * absorbed form: per query and head, W_k,h into the query and W_v,h after
 * the weighted sum, so every key is read as its latent): the keys every
 * query sees, the kv_b weight once, the cache rows written and read. */
static inline moe_op_count moe_count_mla(const moe_mla_shape *s, moe_dtype wdt) {
  const double T = (double)s->n_seq * s->n_new, H = s->n_heads, r = s->kv_rank;
  const double keys = (double)s->n_seq * ((double)s->n_new * s->pos0 +
                                          (double)s->n_new * (s->n_new + 1) / 2.0);
  const double row = r + s->rope_dim;
  if (T == 0) return (moe_op_count){0, 0};
  return (moe_op_count){T * H * 2.0 * r * (s->nope_dim + s->v_dim) + keys * H * (4.0 * r + 2.0 * s->rope_dim),
                        H * (s->nope_dim + s->v_dim) * r * (double)moe_dtype_size(wdt) +
                            4.0 * (double)s->n_seq * ((double)s->pos0 + s->n_new) * row +
                            8.0 * T * row + 4.0 * T * H * (s->nope_dim + s->rope_dim + s->v_dim)};
}
static inline moe_op_count moe_count_kv_store(const moe_attn_shape *s) {
  return (moe_op_count){0, 16.0 * s->n_seq * s->n_new * s->n_kv_heads * s->head_dim};
}
static inline moe_op_count moe_count_attention(const moe_attn_shape *s) {
  const double ctx = (double)s->pos0 + s->n_new;
  return (moe_op_count){4.0 * s->n_seq * s->n_new * s->n_heads * s->head_dim * ctx,
                        8.0 * s->n_seq * s->n_kv_heads * s->head_dim * ctx};
}
static inline moe_op_count moe_count_attention_ex(const moe_attn_ex *a) {
  return (moe_op_count){4.0 * a->n_seq * a->n_q * a->n_heads * a->head_dim * (double)a->n_keys,
                        8.0 * a->n_seq * a->n_kv_heads * a->head_dim * (double)a->n_keys};
}
static inline moe_op_count moe_count_unary(size_t n) {
  return (moe_op_count){(double)n, 8.0 * (double)n};
}
static inline moe_op_count moe_count_swiglu(size_t n) {
  return (moe_op_count){6.0 * (double)n, 12.0 * (double)n};
}
static inline moe_op_count moe_count_add(size_t n) {
  return (moe_op_count){(double)n, 12.0 * (double)n};
}
static inline moe_op_count moe_count_router(size_t m, int n, bool grouped) {
  return (moe_op_count){(grouped ? 6.0 : 4.0) * (double)m * n, 4.0 * (double)m * n};
}
static inline moe_op_count moe_count_embed(size_t m, size_t cols) {
  return (moe_op_count){0, 8.0 * (double)m * (double)cols};
}
static inline moe_op_count moe_count_gather(size_t n, size_t dim) {
  return (moe_op_count){0, 8.0 * (double)n * (double)dim};
}
static inline moe_op_count moe_count_scatter(size_t n, size_t dim) {
  return (moe_op_count){2.0 * (double)n * (double)dim, 12.0 * (double)n * (double)dim};
}

/* Modeled seconds of an op of those counts: moe_cost_vector, and 0 for an
 * op with neither (an empty op does nothing). */
double moe_cost_count(const moe_hw_profile *p, moe_op_count c);

/* The two-stream clock.  Times are seconds from 0. */
typedef struct moe_cost_clock {
  const moe_hw_profile *p;
  double compute;     /* when the compute stream is next free */
  double copy;        /* when the copy stream is next free */
  double copy_from;   /* start of the copy stream's current busy run */
  double copy_end;    /* when the last copy's last byte landed */
  double stall;       /* compute stood waiting on events */
  double compute_busy, copy_busy;
  unsigned long long ops, copies;
  double host;        /* when the host stream (host_run jobs) is next free */
  double host_busy;
  unsigned long long host_jobs;
} moe_cost_clock;

void moe_cost_clock_init(moe_cost_clock *c, const moe_hw_profile *p);
/* Runs `seconds` of work on the compute stream (slowed while a copy is on
 * the link, see above). */
void moe_cost_compute(moe_cost_clock *c, double seconds);
/* Issues a copy of `bytes`; returns the time its last byte lands. */
double moe_cost_copy_issue(moe_cost_clock *c, double bytes, bool pinned);
/* Compute waits for time t (an event): stall when t is later. */
void moe_cost_compute_wait(moe_cost_clock *c, double t);
/* The host waits for time t (event_sync): work issued afterwards starts no
 * earlier (counted as stall when t is later than the compute stream). */
void moe_cost_host_wait(moe_cost_clock *c, double t);
/* Copies issued after this start no earlier than t. */
void moe_cost_copy_wait(moe_cost_clock *c, double t);
/* Runs a job of `seconds` on the host stream (backend.h, host_run): it
 * starts when the host stream is free, when the host issues it (the
 * compute stream's time) and not before `after` (an event's time); returns
 * when it ends.  A compute wait on that time stalls as for a copy. */
double moe_cost_host_run(moe_cost_clock *c, double seconds, double after);
/* Modeled seconds of a host job: the larger of its bytes at the host's
 * memory bandwidth and its FLOPs at the host's matmul rate for its dtype
 * (the bf16 rate for f16 and bf16); NAN when the profile has no host
 * section. */
double moe_cost_host_work(const moe_hw_profile *p, const moe_host_work *w);
/* All three streams drained (synchronize): the time the host resumes. */
double moe_cost_sync(moe_cost_clock *c);
/* Share of copy time that did not stall compute: 1 - stall / copy time,
 * clamped to [0, 1]; 1 when nothing was copied. */
double moe_cost_hidden_share(const moe_cost_clock *c);

#ifdef __cplusplus
}
#endif

#endif
