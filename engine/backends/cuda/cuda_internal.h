/* The cuda backend's private layout, shared by cuda_backend.cu (the table,
 * lifecycle, memory, copies, events), cuda_kernels.cu (the CUDA C
 * kernels) and cuda_ops.cu (the math ops, which launch them).  C++ (nvcc)
 * only. */
#ifndef MOE_CUDA_INTERNAL_H
#define MOE_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "capture_gate.h"
#include "moe/backend.h"

struct moe_feed;
struct cu_capture;
struct cu_graphs;

/* A failure is reported here, and cleared from the runtime's last error
 * so that the next launch check does not report it again (a sticky error
 * comes back from the next call anyway). */
#define CUDA_TRY(call, err)                                                            \
  do {                                                                                 \
    cudaError_t cuda_e_ = (call);                                                      \
    MOE_TRY_GEN(cuda_e_ == cudaSuccess,                                                \
                ((void)cudaGetLastError(),                                             \
                 st = MOE_FAIL((err), MOE_ERR_DEVICE, "%s failed: %s", #call,          \
                               cudaGetErrorString(cuda_e_))));                         \
  } while (0)

#define CUBLAS_TRY(call, err)                                                          \
  do {                                                                                 \
    cublasStatus_t blas_s_ = (call);                                                   \
    MOE_TRY_GEN(blas_s_ == CUBLAS_STATUS_SUCCESS,                                      \
                st = MOE_FAIL((err), MOE_ERR_DEVICE, "%s failed: cuBLAS status %d", #call, \
                              (int)blas_s_));                                          \
  } while (0)

/* After a kernel launch: configuration errors surface here. */
#define KERNEL_CHECK(err) CUDA_TRY(cudaGetLastError(), err)

#define STAGE_BYTES ((size_t)4 << 20) /* pinned staging ring for uploads */
#define STAGE_SLOTS 64                  /* in-flight uploads it tracks */
/* timing-event pairs in flight: more than the compute_waits of one MoE
 * block's experts (256 in DeepSeek-V3), so that in graph mode the ring
 * does not come round inside one capture (which would flush it early) */
#define STALL_PAIRS 512
#define DSTAGE_BYTES ((size_t)1 << 20) /* pinned landing buffer for downloads */

typedef struct stall_pair {
  cudaEvent_t before, after;
  int pending;
  moe_capture_mark mark; /* graph mode: the capture that recorded the pair */
} stall_pair;

struct moe_backend {
  int device;
  cudaStream_t compute, copy;
  cudaStream_t host; /* host_run jobs (ABI 1.7): cudaLaunchHostFunc in issue order */
  cublasHandle_t blas;
  void *blas_ws; /* cuBLAS's fixed workspace (both modes; outside the accounting) */
  void *ws; /* matmul workspace from the engine */
  size_t ws_bytes;
  size_t capacity;
  /* upload staging: a ring of pinned bytes; each upload's end offset and
   * the event its copy recorded, reused once the event is done */
  unsigned char *stage;
  size_t stage_head;
  cudaEvent_t stage_ev[STAGE_SLOTS];
  size_t stage_start[STAGE_SLOTS], stage_end[STAGE_SLOTS];
  moe_capture_mark stage_mark[STAGE_SLOTS]; /* graph mode: the capture that recorded each */
  int stage_next;
  /* GPU-side stall timing */
  stall_pair pairs[STALL_PAIRS];
  int pair_next;
  double stall_s;
  /* downloads land in pinned memory first (a true DMA, then a host copy) */
  unsigned char *dstage;
  /* the backend's own scratch, when the engine's workspace is absent or
   * too small (outside the accounting) */
  void *own_ws;
  size_t own_ws_bytes;
  /* the first failure of a call that could not return it (free paths) */
  char deferred[256];
  bool pedantic;
  /* overtakable copies (cuda_feed.cu, MOE_CUDA_OVERTAKE=1; NULL: off) */
  struct moe_feed *feed;
  cudaEvent_t feed_marks[8]; /* one per chunk in flight */
  /* captures of copies' waits, each its own stream so none waits for
   * another; used only under the feeder's lock (snap, snap_release) */
  struct cu_capture **snap_pool;
  size_t n_snap_pool, cap_snap_pool;
  /* graph mode (cuda_graph.cu, MOE_CUDA_GRAPHS=1; NULL: off, and the
   * gate then never opens) */
  struct cu_graphs *graphs;
  moe_capture_gate gate;
  uint64_t graph_done; /* every capture up to this id is known to have run */
  char desc[400];
  char name[256];
};

struct moe_event {
  cudaEvent_t ev;
  moe_capture_mark mark; /* graph mode: the captures that last recorded and waited on it */
};


static const int kThreads = 256;
static const int kAttnThreads = 128;
/* The block reductions halve the active threads each round. */
static_assert((kThreads & (kThreads - 1)) == 0, "kThreads must be a power of two");
static_assert((kAttnThreads & (kAttnThreads - 1)) == 0, "kAttnThreads must be a power of two");

static inline unsigned blocks_for(size_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

/* ------------------------------------------------------------ kernels (cuda_kernels.cu) */

struct attn_ex_args {
  int n_seq, n_q, q_pos0, n_keys, max_seq, n_heads, n_kv_heads, head_dim;
  bool causal;
  float scale;
  const void *rel;   /* [buckets, n_heads] in rel_dt, or NULL */
  int rel_dt;
  const int32_t *buckets;
  int bucket_offset;
};

/* rope_ex (backend.h): one thread per (row, head, pair). */
struct rope_ex_args {
  int n_heads;
  size_t row_stride, head_stride;
  int offset, rot_dim;
  bool interleaved;
  const float *inv_freq; /* NULL: plain RoPE from theta */
  float attn_scale;
  float theta;
};

__global__ void k_rmsnorm(float *y, const float *x, const void *g, int dt, int n, float eps);
__global__ void k_kv_store(float *kc, float *vc, const float *k, const float *v, moe_attn_shape s);
__global__ void k_attention_ex(float *out, const float *q, const float *kc, const float *vc,
                               attn_ex_args a);
__global__ void k_rope_ex(float *x, size_t m, const int32_t *pos, rope_ex_args r);
__global__ void k_mla_store(float *ckv_cache, float *kpe_cache, const float *ckv, const float *kpe,
                            moe_mla_shape s);
__global__ void k_mla_attention(float *out, const float *q, const float *ckv_cache,
                                const float *kpe_cache, const void *w, int wdt, moe_mla_shape s);
__global__ void k_unary(float *y, const float *x, size_t n, int op, float alpha);
__global__ void k_router_topk_ex(int32_t *idx, float *wts, const float *logits, size_t m, int n,
                                 int k, int scoring, const void *bias, int bdt, int n_group,
                                 int topk_group, int group_score, bool renorm, float scale,
                                 bool mask_neg_inf, float *cbuf);
__global__ void k_swiglu(float *y, const float *g, const float *u, size_t n);
__global__ void k_add(float *y, const float *x, size_t n);
__global__ void k_add_bias(float *y, const void *b, int dt, size_t m, size_t n);
__global__ void k_embed(float *y, const void *table, int dt, const int32_t *ids, size_t m,
                        size_t dim);
__global__ void k_gather(float *dst, const float *src, const int32_t *rows, size_t n, size_t dim);
__global__ void k_scatter_add(float *dst, const float *src, const int32_t *rows, const float *scale,
                              size_t stride, bool sig, size_t n, size_t dim);
__global__ void k_to_half(__half *dst, const float *src, size_t n);
__global__ void k_to_bf16(__nv_bfloat16 *dst, const float *src, size_t n);
__global__ void k_argmax_rows(int32_t *idx, const float *x, int n);

/* ------------------------------------------------------------ shared helpers */

/* Device scratch of at least bytes for the next compute-stream op
 * (cuda_backend.cu). */
moe_status moe_cu_scratch(moe_backend *be, size_t bytes, void **out, moe_error *err);

/* ------------------------------------------------------------ copy feeder (cuda_feed.cu) */

/* MOE_CUDA_OVERTAKE: unset, empty, 0 or 1; anything else refused. */
moe_status moe_cu_feed_env(moe_error *err);
/* Starts the feeder when MOE_CUDA_OVERTAKE=1 (else nothing); stops it. */
moe_status moe_cu_feed_start(moe_backend *be, moe_error *err);
void moe_cu_feed_stop(moe_backend *be);
/* A copy through the feeder (be->feed set). */
moe_status moe_cu_feed_copy(moe_backend *be, void *dst, const void *src, size_t bytes,
                            moe_event *wait_ev, moe_event *ev, int urgent, moe_error *err);
/* Before a device wait on ev: the host waits until the feeder has
 * recorded every queued copy of ev (no-op without the feeder). */
moe_status moe_cu_feed_settle(moe_backend *be, moe_event *ev, moe_error *err);
/* Before draining the copy stream: the feeder's queue is issued (a
 * failure is kept for the next synchronize). */
void moe_cu_feed_drain(moe_backend *be);
/* 1 when a queued copy of ev is still to be recorded. */
int moe_cu_feed_pending(moe_backend *be, moe_event *ev);
/* 1 when queued copies still signal ev: the feeder frees it after them. */
int moe_cu_feed_holds(moe_backend *be, moe_event *ev);
/* Fills copy_chunk, copy_h2d_ex, copy_cancel, copy_urge. */
void moe_cu_feed_ops(moe_backend_ops *o);

/* ------------------------------------------------------------ graph mode (cuda_graph.cu) */

/* Why a capture ended (counted for the closing line). */
typedef enum cu_flush_reason {
  CU_FLUSH_DOWNLOAD,
  CU_FLUSH_SYNC,
  CU_FLUSH_USE,
  CU_FLUSH_RECORD,
  CU_FLUSH_DESTROY,
  CU_FLUSH_STAGE,
  CU_FLUSH_SCRATCH,
  CU_FLUSH_FREE,
  CU_FLUSH_STALL,
  CU_FLUSH_LARGE_UPLOAD,
  CU_FLUSH_ALLOC,
  CU_FLUSH_N
} cu_flush_reason;

/* MOE_CUDA_GRAPHS: unset, empty or 0 off, 1 on, anything else refused. */
moe_status moe_cu_graph_env(bool *on, moe_error *err);
/* Turns graph mode on when MOE_CUDA_GRAPHS=1; stops it after the streams
 * are drained, adding its counts to the process's totals. */
moe_status moe_cu_graph_start(moe_backend *be, moe_error *err);
void moe_cu_graph_stop(moe_backend *be);
/* A signature tag: an op's kind and up to four shape fields, each folded
 * in on its own. */
uint64_t moe_cu_graph_tag(uint64_t kind, uint64_t a, uint64_t b, uint64_t c, uint64_t d);
/* On the way out of a method that joins the capture: when st is a failure
 * that invalidated the open capture, the capture is ended and dropped
 * (its ops never run) so that the next call starts clean.  Returns st. */
moe_status moe_cu_graph_fail(moe_backend *be, moe_status st);
/* Before compute-stream work: opens a capture if none is open and folds
 * tag (the op and its shape) into its signature.  No-op when off. */
moe_status moe_cu_graph_op(moe_backend *be, uint64_t tag, moe_error *err);
/* Ends the open capture, if any, and launches it on the compute stream. */
moe_status moe_cu_graph_flush(moe_backend *be, cu_flush_reason why, moe_error *err);
/* Before another stream or the host waits on or queries ev. */
moe_status moe_cu_graph_use(moe_backend *be, moe_event *ev, moe_error *err);
/* Before ev is recorded on another stream (copy, host, the feeder). */
moe_status moe_cu_graph_foreign_record(moe_backend *be, moe_event *ev, moe_error *err);
/* Records ev on the compute stream (an external record node when
 * captured). */
moe_status moe_cu_graph_record(moe_backend *be, cudaEvent_t ev, moe_capture_mark *mark,
                               moe_error *err);
/* The compute stream waits on ev (an external wait node when captured;
 * nothing when the open capture recorded ev itself). */
moe_status moe_cu_graph_wait(moe_backend *be, moe_event *ev, moe_error *err);

/* ------------------------------------------------------------ math ops (cuda_ops.cu) */

/* Fills the math methods of the table (matmul .. argmax_rows). */
void moe_cu_math_ops(moe_backend_ops *o);

#endif
