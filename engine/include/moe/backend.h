/* The backend interface: where memory lives, how bytes move, how math runs.
 *
 * A backend is a versioned const table of function pointers (moe_backend_ops)
 * plus an opaque instance (moe_backend).  It is shaped for asynchronous
 * devices from the start:
 *   - device memory vs host memory (host memory may be pinned);
 *   - a compute stream, on which every math op is issued in order;
 *   - a copy stream, on which host-to-device copies run in order, each
 *     signalling a moe_event when its bytes have landed;
 *   - compute_wait(ev) orders later compute after a copy, without blocking
 *     the host where the device can do that itself.
 * Activations are f32.  Weights are moe_weight views in their storage dtype
 * (f32, f16, bf16); backends convert to f32 (or accumulate in f32).
 *
 * Fields are only ever appended; callers check abi_version and struct_size
 * before using a field added after version 1. */
#ifndef MOE_BACKEND_H
#define MOE_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe/dtype.h"
#include "moe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_BACKEND_ABI 1

typedef struct moe_backend moe_backend; /* a backend instance */
typedef struct moe_event moe_event;     /* completion of a copy */

/* A weight matrix in device memory: rows x cols, row-major, in dtype.  A
 * vector is a 1 x n matrix.  data NULL means "absent" (e.g. no bias). */
typedef struct moe_weight {
  const void *data;
  moe_dtype dtype;
  size_t rows, cols;
} moe_weight;

typedef struct moe_backend_options {
  int threads;           /* math threads (cpu: OpenBLAS threads); 0 = default */
  int device_index;      /* cuda: which GPU */
  double link_gbps;      /* cpu: cap on the emulated host-to-device link in GB/s
                            (1e9 bytes/s), 0 = none */
  size_t device_budget;  /* device-memory budget in bytes, 0 = the device's capacity */
} moe_backend_options;

/* Attention over a KV cache.  n_seq sequences each bring n_new tokens at
 * positions pos0 .. pos0 + n_new - 1 (causal).  Cache layout:
 * [n_seq][n_kv_heads][max_seq][head_dim]. */
typedef struct moe_attn_shape {
  int n_seq, n_new, pos0, max_seq;
  int n_heads, n_kv_heads, head_dim;
} moe_attn_shape;

typedef struct moe_backend_ops {
  uint32_t abi_version; /* MOE_BACKEND_ABI at the time the table was built */
  uint32_t struct_size; /* sizeof(moe_backend_ops) of that build */
  const char *name;
  const char *summary;

  moe_status (*create)(const moe_backend_options *opt, moe_backend **out, moe_error *err);
  void (*destroy)(moe_backend *be);
  /* A one-line description of the device (e.g. "cpu: 2 threads"). */
  const char *(*describe)(moe_backend *be);

  /* ---- memory */
  moe_status (*device_alloc)(moe_backend *be, size_t bytes, void **ptr, moe_error *err);
  void (*device_free)(moe_backend *be, void *ptr);
  moe_status (*host_alloc)(moe_backend *be, size_t bytes, void **ptr, moe_error *err); /* pinned */
  void (*host_free)(moe_backend *be, void *ptr);

  /* ---- copies and ordering */
  moe_status (*event_create)(moe_backend *be, moe_event **ev, moe_error *err);
  void (*event_destroy)(moe_backend *be, moe_event *ev);
  /* Enqueue a host-to-device copy on the copy stream; ev (may be NULL) is
   * signalled when it completes.  src must stay valid until then. */
  moe_status (*copy_h2d_async)(moe_backend *be, void *dst, const void *src, size_t bytes,
                               moe_event *ev, moe_error *err);
  /* Later compute-stream work runs after ev has been signalled. */
  moe_status (*compute_wait)(moe_backend *be, moe_event *ev, moe_error *err);
  /* Host blocks until ev is signalled. */
  moe_status (*event_sync)(moe_backend *be, moe_event *ev, moe_error *err);
  /* Host-to-device copy ordered on the compute stream (small inputs). */
  moe_status (*upload)(moe_backend *be, void *dst, const void *src, size_t bytes, moe_error *err);
  /* Device-to-host copy after all prior compute; returns when done. */
  moe_status (*download)(moe_backend *be, void *dst, const void *src, size_t bytes, moe_error *err);
  moe_status (*synchronize)(moe_backend *be, moe_error *err);
  /* Records ev on the compute stream: signalled once all compute issued so
   * far has finished (the store uses it before a slot is overwritten). */
  moe_status (*compute_record)(moe_backend *be, moe_event *ev, moe_error *err);
  /* Later copies on the copy stream start after ev has been signalled. */
  moe_status (*copy_wait)(moe_backend *be, moe_event *ev, moe_error *err);
  /* Non-blocking: 1 when ev has been signalled (or never used), else 0. */
  int (*event_done)(moe_backend *be, moe_event *ev);
  /* Device memory capacity in bytes (the default budget). */
  size_t (*device_capacity)(moe_backend *be);

  /* ---- math on the compute stream (all pointers device memory) */
  /* y[m, w.rows] = x[m, w.cols] . w^T (+ bias[w.rows] when bias.data). */
  moe_status (*matmul)(moe_backend *be, float *y, const float *x, size_t m, const moe_weight *w,
                       const moe_weight *bias, moe_error *err);
  /* y[m, n] = x / rms(x) * g, row-wise; g is 1 x n. */
  moe_status (*rmsnorm)(moe_backend *be, float *y, const float *x, size_t m, const moe_weight *g,
                        float eps, moe_error *err);
  /* Rotary embedding in place on x[m, n_heads * head_dim], rotate-half pairing
   * (i, i + head_dim/2); pos[m] are device int32 positions. */
  moe_status (*rope)(moe_backend *be, float *x, size_t m, const int32_t *pos, int n_heads,
                     int head_dim, float theta, moe_error *err);
  /* Writes k, v rows ([n_seq * n_new, n_kv_heads * head_dim]) into the caches. */
  moe_status (*kv_store)(moe_backend *be, float *k_cache, float *v_cache, const float *k,
                         const float *v, const moe_attn_shape *s, moe_error *err);
  /* out[n_seq * n_new, n_heads * head_dim] = softmax(q k^T / sqrt(d)) v, causal. */
  moe_status (*attention)(moe_backend *be, float *out, const float *q, const float *k_cache,
                          const float *v_cache, const moe_attn_shape *s, moe_error *err);
  /* Per row of logits[m, n]: softmax, top-k (ties to the lower index), weights
   * renormalised to sum 1 when renorm.  idx[m, k] int32, wts[m, k] f32.
   * bias (1 x n, may be absent) is added to the logits first. */
  moe_status (*router_topk)(moe_backend *be, int32_t *idx, float *wts, const float *logits,
                            size_t m, int n, int k, bool renorm, const moe_weight *bias,
                            moe_error *err);
  /* y[i] = silu(gate[i]) * up[i] for n elements (y may alias gate). */
  moe_status (*swiglu)(moe_backend *be, float *y, const float *gate, const float *up, size_t n,
                       moe_error *err);
  /* y[i] += x[i] for n elements. */
  moe_status (*add)(moe_backend *be, float *y, const float *x, size_t n, moe_error *err);
  /* y[m, dim] = table[ids[i], :] converted to f32; ids are device int32. */
  moe_status (*embed)(moe_backend *be, float *y, const moe_weight *table, const int32_t *ids,
                      size_t m, moe_error *err);
  /* dst[i, :] = src[rows[i], :] for i < n (rows on device). */
  moe_status (*gather_rows)(moe_backend *be, float *dst, const float *src, const int32_t *rows,
                            size_t n, size_t dim, moe_error *err);
  /* dst[rows[i], :] += scale[i * scale_stride] * src[i, :]; scale_sigmoid
   * applies a logistic to the scale first (the shared-expert gate). */
  moe_status (*scatter_add_rows)(moe_backend *be, float *dst, const float *src,
                                 const int32_t *rows, const float *scale, size_t scale_stride,
                                 bool scale_sigmoid, size_t n, size_t dim, moe_error *err);

  /* ---- optional (may be NULL) */
  /* Device scratch the backend needs for matmuls of up to max_rows x
   * max_cols activations; the engine allocates it through its accounting
   * front and hands it over with set_workspace. */
  size_t (*workspace_bytes)(moe_backend *be, size_t max_rows, size_t max_cols);
  void (*set_workspace)(moe_backend *be, void *ptr, size_t bytes);
  /* Pins an existing host range for asynchronous copies (and unpins it). */
  moe_status (*host_register)(moe_backend *be, void *ptr, size_t bytes, moe_error *err);
  void (*host_unregister)(moe_backend *be, void *ptr);
  /* Device bytes in use as the driver sees them (cross-check of the
   * engine's accounting), or 0 when unknown. */
  size_t (*device_used)(moe_backend *be);
} moe_backend_ops;

/* ---- registry of built-in backends */

/* Number of compiled-in backends and the i-th table. */
size_t moe_backend_count(void);
const moe_backend_ops *moe_backend_at(size_t i);
/* Looks a backend up by name; NULL when unknown or not compiled in. */
const moe_backend_ops *moe_backend_find(const char *name);
/* Checks a table: ABI version, struct size, required methods present. */
moe_status moe_backend_validate(const moe_backend_ops *ops, moe_error *err);

/* Categories of device memory, for accounting. */
typedef enum moe_mem_category {
  MOE_MEM_DENSE = 0,   /* non-expert weights */
  MOE_MEM_EXPERTS,     /* expert slots */
  MOE_MEM_KV,          /* KV cache */
  MOE_MEM_ACTIVATIONS, /* activation buffers */
  MOE_MEM_WORKSPACE,   /* index and scratch buffers */
  MOE_MEM_CATEGORIES
} moe_mem_category;

/* "dense", "expert_slots", "kv_cache", "activations", "workspace". */
const char *moe_mem_category_name(moe_mem_category c);

typedef struct moe_mem_stats {
  size_t budget;                          /* hard limit, bytes */
  size_t current[MOE_MEM_CATEGORIES];
  size_t peak[MOE_MEM_CATEGORIES];        /* each category's own peak */
  size_t current_total;
  size_t peak_total;                      /* peak of the sum */
  size_t at_peak[MOE_MEM_CATEGORIES];     /* breakdown when peak_total was reached */
  unsigned long allocations;
} moe_mem_stats;

/* A created backend: its table, instance and device-memory accounting.
 * Every device allocation of the engine goes through moe_device_alloc. */
typedef struct moe_device {
  const moe_backend_ops *ops;
  moe_backend *be;
  moe_mem_stats mem;
  struct moe_dev_alloc *allocs; /* live allocations (pointer, size, category) */
  size_t n_allocs, cap_allocs;
} moe_device;

/* Validates ops and creates an instance; the budget is opt->device_budget
 * or, when 0, the device's capacity. */
moe_status moe_device_open(moe_device *dev, const char *name, const moe_backend_options *opt,
                           moe_error *err);
/* Frees any allocation still live, then the instance. */
void moe_device_close(moe_device *dev);

/* Allocates device memory under the budget.  Past the budget: MOE_ERR_OOM
 * with bytes needed, bytes in use and the budget in the message; `what`
 * names the buffer. */
moe_status moe_device_alloc(moe_device *dev, moe_mem_category cat, size_t bytes, const char *what,
                            void **ptr, moe_error *err);
/* Frees ptr (NULL is a no-op). */
void moe_device_free(moe_device *dev, void *ptr);
/* Restarts the peak counters from the current usage. */
void moe_device_reset_peak(moe_device *dev);

#ifdef __cplusplus
}
#endif

#endif
