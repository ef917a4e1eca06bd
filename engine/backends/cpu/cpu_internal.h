/* The cpu backend's private layout, shared by cpu_backend.c (the table,
 * memory, the copy and host stream threads, events, the math thread pool)
 * and cpu_kernels.c (the math ops). */
#ifndef MOE_CPU_INTERNAL_H
#define MOE_CPU_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

#include "moe/backend.h"
#include "cpu_half.h"

#define CPU_SMALL_M 64 /* up to this many rows of x, use the W . x^T form */

/* One request of a stream: on the copy stream a copy, or a copy_wait
 * marker (wait_ev set: wait, copy nothing); on the host stream a job
 * (host_run: wait for wait_ev if set, then fn(fn_ctx)). */
typedef struct copy_req {
  void *dst;
  const void *src;
  size_t bytes;
  moe_event *ev;      /* signalled when done (may be NULL) */
  moe_event *wait_ev; /* wait for this event first (may be NULL) */
  unsigned long wait_target; /* ... until its completed count reaches this */
  void (*fn)(void *ctx); /* a host-stream job */
  void *fn_ctx;
  /* copies (ABI 1.8): moved a chunk at a time, the most urgent first */
  size_t done;      /* bytes landed so far */
  size_t moving;    /* bytes of the chunk in progress (0: none) */
  int urgent;       /* runs before the normal requests queued */
  int cancelled;    /* copy_cancel: no further chunk starts */
  double t0;        /* when its first chunk started (the observer's) */
} copy_req;

/* When a chunk starts on the capped link, which was last free at
 * link_free (0: it went idle since): at link_free while the chunks run
 * back to back, so a sleep that overshot is made up by the next chunks
 * (the cap holds over the run, not each chunk, else every overshoot
 * would be lost: 1 MiB chunks at 7 GB/s lost a third of the rate);
 * after an idle link, or a wait longer than a chunk's time (chunk_s),
 * at now. */
static inline double cpu_link_start(double link_free, double now, double chunk_s) {
  return link_free > 0 && now < link_free + chunk_s ? link_free : now;
}

/* A stream: requests in issue order, run by its own thread: the host
 * stream's strictly in order, the copy stream's urgent ones first (a copy
 * stays queued, at its index, until its last chunk has landed).  The copy
 * and the host stream share the backend's mutex and condition variable
 * (one waits for the other's events).  Fields guarded by be->mu. */
typedef struct cpu_stream {
  moe_backend *be;
  copy_req *ring;   /* [len] in issue order (not a ring since ABI 1.8) */
  size_t cap, len;
  double link_free; /* the copy stream: when the capped link is next free */
  int busy;    /* its thread is working on a popped request */
  pthread_t tid;
  int started; /* tid is running */
} cpu_stream;

/* A pool of math threads (threads - 1 workers and the caller): one job at
 * a time, split into tasks taken in turn.  The stream threads (copy,
 * host) are separate.
 * Between jobs a worker first spins for POOL_SPIN_S (a decode step's
 * products come back to back, tens of microseconds apart, and a sleeping
 * thread takes about as long to wake), then sleeps on the condition
 * variable; the caller spins the same while waiting for the workers. */
typedef struct pool {
  pthread_t *tid;
  int n_workers, started;
  pthread_mutex_t mu;
  pthread_cond_t go, done;
  _Atomic unsigned long gen;
  _Atomic int stop, busy;
  int sleepers; /* workers waiting on go (under mu) */
  void (*fn)(void *ctx, int task);
  void *ctx;
  int tasks, next;
} pool;

/* A math task's own buffers (gemm_task): 16-bit weights converted to
 * f32, and the transposed output of the small-m product. */
typedef struct task_buf {
  float *conv, *tbuf, *sc; /* sc: attention scores */
  size_t conv_cap, tbuf_cap, sc_cap;
} task_buf;

struct moe_backend {
  int threads;
  pool pool;
  moe_cpu_half_path half; /* f16/bf16 product path */
  double link_bps;    /* 0: uncapped */
  size_t link_slice;  /* the capped link's pacing step in bytes (MOE_CPU_LINK_SLICE) */
  int link_timed;     /* MOE_CPU_LINK=timed: copies pace but move no bytes (copy_timed) */
  pthread_mutex_t mu;
  pthread_cond_t cv;  /* queue changes and event completions (both streams) */
  cpu_stream copy;    /* copy_h2d_async copies and copy_wait markers */
  cpu_stream host;    /* host_run jobs (since ABI 1.7) */
  int stop;           /* destroy: the stream threads drain and exit */
  float *scratch; /* f32 conversion / attention scores; grown on demand */
  size_t scratch_cap;
  task_buf *tb;   /* per task of a row-split product: [threads] */
  void (*observer)(void *ctx, size_t bytes, double t0, double t1); /* copy observer */
  void *observer_ctx;
  char desc[160];
  char device[160]; /* "cpu: <model name>" */
  /* fault injection (MOE_CPU_FAULT=KIND:N): the Nth call of that kind on
   * this instance fails as a device error would */
  int fault_kind;   /* 0 none, 1 device_alloc, 2 copy_h2d_async, 3 event_create */
  unsigned long fault_n, calls[4];
};

/* Grows be->scratch to n floats. */
moe_status moe_cpu_scratch_reserve(moe_backend *be, size_t n, moe_error *err);
/* Runs fn(ctx, 0 .. tasks - 1) on the pool and the calling thread; returns
 * when all are done. */
void moe_cpu_pool_run(pool *p, void (*fn)(void *, int), void *ctx, int tasks);

/* The math ops (cpu_kernels.c), as backend.h describes them. */
moe_status moe_cpu_matmul(moe_backend *be, float *y, const float *x, size_t m, const moe_weight *w,
                          const moe_weight *bias, moe_error *err);
moe_status moe_cpu_rmsnorm(moe_backend *be, float *y, const float *x, size_t m, const moe_weight *g,
                           float eps, moe_error *err);
moe_status moe_cpu_rope_ex(moe_backend *be, float *x, size_t m, const int32_t *pos,
                           const moe_rope_ex *r, moe_error *err);
moe_status moe_cpu_mla_attention(moe_backend *be, float *out, const float *q, float *ckv_cache,
                                 float *kpe_cache, const float *ckv, const float *kpe,
                                 const moe_weight *kv_b, const moe_mla_shape *s, moe_error *err);
moe_status moe_cpu_kv_store(moe_backend *be, float *kc, float *vc, const float *k, const float *v,
                            const moe_attn_shape *s, moe_error *err);
moe_status moe_cpu_attention_ex(moe_backend *be, float *out, const float *q, const float *kc,
                                const float *vc, const moe_attn_ex *a, moe_error *err);
moe_status moe_cpu_unary(moe_backend *be, float *y, const float *x, size_t n, moe_unary_op op,
                         float alpha, moe_error *err);
moe_status moe_cpu_router_topk_ex(moe_backend *be, int32_t *idx, float *wts, const float *logits,
                                  size_t m, int n, const moe_router_ex *r, moe_error *err);
moe_status moe_cpu_swiglu(moe_backend *be, float *y, const float *g, const float *u, size_t n,
                          moe_error *err);
moe_status moe_cpu_add(moe_backend *be, float *y, const float *x, size_t n, moe_error *err);
moe_status moe_cpu_embed(moe_backend *be, float *y, const moe_weight *table, const int32_t *ids,
                         size_t m, moe_error *err);
moe_status moe_cpu_gather_rows(moe_backend *be, float *dst, const float *src, const int32_t *rows,
                               size_t n, size_t dim, moe_error *err);
moe_status moe_cpu_scatter_add_rows(moe_backend *be, float *dst, const float *src,
                                    const int32_t *rows, const float *scale, size_t scale_stride,
                                    bool scale_sigmoid, size_t n, size_t dim, moe_error *err);
moe_status moe_cpu_argmax_rows(moe_backend *be, int32_t *idx, const float *x, size_t m, int n,
                               moe_error *err);

#endif
