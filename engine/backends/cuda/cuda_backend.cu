/* The cuda backend: the same engine and policies on an NVIDIA GPU.
 *
 * Streams: `compute` runs every kernel and cuBLAS call in order; `copy`
 * runs host-to-device expert copies, each followed by a cudaEvent record,
 * so copies overlap compute for real.  compute_wait is cudaStreamWaitEvent:
 * the host does not block, the GPU orders the work.  Expert weights are
 * copied from pinned host memory (the engine registers the model's expert
 * slab with host_register), so the copies are truly asynchronous.
 *
 * Math: cuBLAS for every matmul (f32 weights: SGEMM; f16/bf16 weights: the
 * activations are converted to the weight dtype in the engine-provided
 * workspace and multiplied with cublasGemmEx, f32 accumulation and
 * output; backend.h states the resulting tolerance against the cpu
 * backend's f32 activations); small CUDA C kernels for the rest, all f32.
 * Results follow the backend contract op by op
 * (tests/test_backend_conformance.c and tests/cuda check them).
 *
 * Host synchronisation: upload copies through a pinned staging ring and
 * returns without waiting for the GPU; download waits (the host needs the
 * routing decisions to drive the policy), through a pinned buffer so the
 * copy is a true DMA; download_many queues a block's routing (indices and
 * weights) and waits once.
 *
 * Scratch: 16-bit matmuls convert activations into the engine's workspace
 * (set_workspace, inside the device-memory accounting); without one, or
 * when it is too small (a conformance test, or two engines on one device
 * after one of them took its workspace back), into the backend's own
 * scratch, grown on demand outside the accounting.  DeepSeek-style routing
 * keeps its per-row choice scores there too (no allocation per call).
 *
 * cuBLAS math mode: CUBLAS_DEFAULT_MATH (f32 products stay f32: TF32 is
 * used only under CUBLAS_TF32_TENSOR_OP_MATH; 16-bit products may use
 * tensor cores).  MOE_CUBLAS_MATH=pedantic selects CUBLAS_PEDANTIC_MATH, to
 * compare both in one run.
 *
 * Activations converted to f16 saturate at +-65504 (bf16: at its largest
 * finite value) instead of overflowing to infinity; NaN and infinity stay.
 *
 * RoPE: the frequencies are computed on the host, as the cpu backend and
 * rope_ex's callers do, and kept in a small device table per (theta,
 * head_dim); the kernel only applies them.  Stalls are measured on the GPU:
 * every compute_wait is bracketed by two timing events on the compute
 * stream, and stall_seconds sums their elapsed times.
 *
 * Pinned memory: host_register keeps a process-wide, reference-counted
 * table of registered ranges, so two engines on one model share one
 * registration (cudaHostRegister of a registered range fails). 
 *
 * Errors: every runtime and cuBLAS call is checked (CUDA_TRY, CUBLAS_TRY,
 * built on MOE_TRY_GEN); after each kernel launch cudaGetLastError is
 * checked.  Failures come back as MOE_ERR_DEVICE with the call and
 * file:line; no device or no driver is MOE_ERR_NO_DEVICE.  The calls that
 * cannot return a status (the free paths) clear the runtime's last error
 * and keep the first failure, which the next synchronize returns.  A query
 * answering cudaErrorNotReady (event_done, the stall timing) clears the
 * last error as well, so the next launch check does not report it. */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/backend.h"
#include "moe/cuda.h"

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
#define STAGE_SLOTS 8                   /* in-flight uploads it tracks */
#define STALL_PAIRS 64                  /* timing-event pairs in flight */
#define DSTAGE_BYTES ((size_t)1 << 20) /* pinned landing buffer for downloads */
#define ROPE_TABLES 4                   /* cached RoPE frequency tables */
#define MAX_ROPE_HALF 512               /* head_dim / 2 at most for the legacy rope */

typedef struct stall_pair {
  cudaEvent_t before, after;
  int pending;
} stall_pair;

struct moe_backend {
  int device;
  cudaStream_t compute, copy;
  cublasHandle_t blas;
  void *ws; /* matmul workspace from the engine */
  size_t ws_bytes;
  size_t capacity;
  /* upload staging: a ring of pinned bytes; each upload's end offset and
   * the event its copy recorded, reused once the event is done */
  unsigned char *stage;
  size_t stage_head;
  cudaEvent_t stage_ev[STAGE_SLOTS];
  size_t stage_start[STAGE_SLOTS], stage_end[STAGE_SLOTS];
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
  /* host-computed RoPE frequencies on the device, per (theta, head_dim) */
  struct {
    float theta;
    int head_dim;
    float *freq;
  } rope[ROPE_TABLES];
  int rope_next;
  /* the first failure of a call that could not return it (free paths) */
  char deferred[256];
  bool pedantic;
  char desc[400];
  char name[256];
};

struct moe_event {
  cudaEvent_t ev;
};

static const int kThreads = 256;
static const int kAttnThreads = 128;
/* The block reductions halve the active threads each round. */
static_assert((kThreads & (kThreads - 1)) == 0, "kThreads must be a power of two");
static_assert((kAttnThreads & (kAttnThreads - 1)) == 0, "kAttnThreads must be a power of two");

static unsigned blocks_for(size_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

/* A call that cannot return its status (a free path): the runtime's last
 * error is cleared (else the next launch check would report it) and the
 * first failure is kept for the next synchronize. */
#define NOTE(be, call) note_failure((be), (call), #call, __FILE__, __LINE__)
static void note_failure(moe_backend *be, cudaError_t e, const char *what, const char *file,
                         int line) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();
  if (be && be->deferred[0] == '\0')
    snprintf(be->deferred, sizeof be->deferred, "%s failed: %s (%s:%d)", what,
             cudaGetErrorString(e), file, line);
}

/* An event query: 1 complete, 0 not yet (cudaErrorNotReady, which is then
 * cleared from the runtime's last error: it is an answer, not a failure),
 * -1 an error (left for the next checked call to report). */
static int query_event(cudaEvent_t ev) {
  const cudaError_t e = cudaEventQuery(ev);
  if (e == cudaSuccess) return 1;
  if (e == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return 0;
  }
  return -1;
}

__device__ __forceinline__ float load_w(const void *p, int dt, size_t i) {
  if (dt == MOE_F32) return ((const float *)p)[i];
  if (dt == MOE_F16) return __half2float(((const __half *)p)[i]);
  return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
}

/* ------------------------------------------------------------ kernels */

__global__ void k_rmsnorm(float *y, const float *x, const void *g, int dt, int n, float eps) {
  __shared__ float part[kThreads];
  const float *xr = x + (size_t)blockIdx.x * n;
  float *yr = y + (size_t)blockIdx.x * n;
  float s = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) s += xr[j] * xr[j];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    if ((int)threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  const float inv = 1.0f / sqrtf(part[0] / (float)n + eps);
  for (int j = threadIdx.x; j < n; j += blockDim.x) yr[j] = load_w(g, dt, j) * (xr[j] * inv);
}

__global__ void k_kv_store(float *kc, float *vc, const float *k, const float *v, moe_attn_shape s) {
  const size_t hd = s.head_dim, row = (size_t)s.n_kv_heads * hd;
  const size_t total = (size_t)s.n_seq * s.n_new * row;
  size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const size_t i = idx % hd, h = (idx / hd) % s.n_kv_heads, tok = idx / row;
  const size_t b = tok / s.n_new, t = tok % s.n_new;
  const size_t dst = ((b * s.n_kv_heads + h) * s.max_seq + s.pos0 + t) * hd + i;
  kc[dst] = k[idx];
  vc[dst] = v[idx];
}

/* Attention (moe_attn_ex; the decoder-only attention is its causal,
 * 1/sqrt(d)-scaled case).  One block per (sequence, query, head).  Keys
 * are read in tiles of blockDim; a running maximum and sum (online
 * softmax) rescale the output accumulated so far, so shared memory is a
 * tile, not the context: any context length runs.  blockDim must be
 * kAttnThreads.  Keys 0 .. n_keys - 1 (causal: up to the query's
 * position), score scale * q.k plus the relative-position bias of the
 * query's head when rel is not NULL. */
struct attn_ex_args {
  int n_seq, n_q, q_pos0, n_keys, max_seq, n_heads, n_kv_heads, head_dim;
  bool causal;
  float scale;
  const void *rel;   /* [buckets, n_heads] in rel_dt, or NULL */
  int rel_dt;
  const int32_t *buckets;
  int bucket_offset;
};

/* One tile of an online softmax, called by every thread of a
 * kAttnThreads block with its key's score d (valid: the key exists):
 * sc[thread] receives exp(d - the new running maximum) (0 when not
 * valid), the running maximum and sum (the same in every thread) are
 * updated, and the factor that rescales what was accumulated over the
 * earlier tiles is returned (0 on the first tile). */
__device__ float softmax_tile(float d, bool valid, float *sc, float *red, float &m_run,
                              float &l_run) {
  red[threadIdx.x] = d;
  __syncthreads();
  for (int w = kAttnThreads / 2; w > 0; w /= 2) {
    if ((int)threadIdx.x < w) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + w]);
    __syncthreads();
  }
  const float m_new = fmaxf(m_run, red[0]);
  __syncthreads();
  const float e = valid ? expf(d - m_new) : 0.0f;
  sc[threadIdx.x] = e;
  red[threadIdx.x] = e;
  __syncthreads();
  for (int w = kAttnThreads / 2; w > 0; w /= 2) {
    if ((int)threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  const float corr = expf(m_run - m_new);
  l_run = l_run * corr + red[0];
  m_run = m_new;
  return corr;
}

__global__ void k_attention_ex(float *out, const float *q, const float *kc, const float *vc,
                               attn_ex_args a) {
  extern __shared__ float sm[]; /* [kAttnThreads] scores, [kAttnThreads] reduction, [head_dim] acc */
  float *sc = sm, *red = sm + kAttnThreads, *acc = sm + 2 * kAttnThreads;
  const int h = blockIdx.x % a.n_heads;
  const int t = (blockIdx.x / a.n_heads) % a.n_q;
  const int b = blockIdx.x / (a.n_heads * a.n_q);
  const int p = a.q_pos0 + t, hd = a.head_dim, group = a.n_heads / a.n_kv_heads;
  const int nk = a.causal && p + 1 < a.n_keys ? p + 1 : a.n_keys;
  const size_t row = ((size_t)b * a.n_q + t) * (size_t)a.n_heads * hd;
  const float *qh = q + row + (size_t)h * hd;
  const size_t base = (((size_t)b * a.n_kv_heads + h / group) * a.max_seq) * hd;
  for (int i = threadIdx.x; i < hd; i += blockDim.x) acc[i] = 0.0f;
  float m_run = -INFINITY, l_run = 0.0f; /* the same in every thread */
  for (int j0 = 0; j0 < nk; j0 += kAttnThreads) {
    const int j = j0 + (int)threadIdx.x;
    float d = -INFINITY;
    if (j < nk) {
      const float *kj = kc + base + (size_t)j * hd;
      d = 0.0f;
      for (int i = 0; i < hd; i++) d += qh[i] * kj[i];
      d *= a.scale;
      if (a.rel)
        d += load_w(a.rel, a.rel_dt, (size_t)a.buckets[j - p + a.bucket_offset] * a.n_heads + h);
    }
    const float corr = softmax_tile(d, j < nk, sc, red, m_run, l_run);
    const int n_tile = nk - j0 < kAttnThreads ? nk - j0 : kAttnThreads;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
      float o = acc[i] * corr;
      for (int jj = 0; jj < n_tile; jj++) o += sc[jj] * vc[base + (size_t)(j0 + jj) * hd + i];
      acc[i] = o;
    }
    __syncthreads();
  }
  float *oh = out + row + (size_t)h * hd;
  const float inv = nk > 0 ? 1.0f / l_run : 0.0f;
  for (int i = threadIdx.x; i < hd; i += blockDim.x) oh[i] = acc[i] * inv;
}

/* rope_ex (backend.h): one thread per (row, head, pair). */
struct rope_ex_args {
  int n_heads;
  size_t row_stride, head_stride;
  int offset, rot_dim;
  bool interleaved;
  const float *inv_freq;
  float attn_scale;
};

__global__ void k_rope_ex(float *x, size_t m, const int32_t *pos, rope_ex_args r) {
  const int half = r.rot_dim / 2;
  const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= m * (size_t)r.n_heads * (size_t)half) return;
  const int i = (int)(idx % half);
  const size_t th = idx / half;
  const size_t t = th / r.n_heads, h = th % r.n_heads;
  const float ang = (float)pos[t] * r.inv_freq[i];
  const float c = cosf(ang) * r.attn_scale, sn = sinf(ang) * r.attn_scale;
  float *v = x + t * r.row_stride + h * r.head_stride + r.offset;
  float *pa = r.interleaved ? v + 2 * i : v + i;
  float *pb = r.interleaved ? v + 2 * i + 1 : v + i + half;
  const float a = *pa, b = *pb;
  *pa = a * c - b * sn;
  *pb = b * c + a * sn;
}

/* mla_attention, cache write: one thread per element of the new rows. */
__global__ void k_mla_store(float *ckv_cache, float *kpe_cache, const float *ckv, const float *kpe,
                            moe_mla_shape s) {
  const size_t w = (size_t)s.kv_rank + s.rope_dim;
  const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (size_t)s.n_seq * s.n_new * w) return;
  const size_t row = idx / w, i = idx % w;
  const size_t b = row / s.n_new, t = row % s.n_new;
  const size_t dst = b * s.max_seq + s.pos0 + t;
  if (i < (size_t)s.kv_rank)
    ckv_cache[dst * s.kv_rank + i] = ckv[row * s.kv_rank + i];
  else
    kpe_cache[dst * s.rope_dim + (i - s.kv_rank)] = kpe[row * s.rope_dim + (i - s.kv_rank)];
}

/* mla_attention in the absorbed form, one block per (sequence, query,
 * head): q_lat = W_k,h^T q_nope in shared memory, keys in tiles of
 * kAttnThreads with a running maximum and sum (as k_attention_ex), the
 * latent output accumulated per dimension, then W_v,h applied.  Shared:
 * q_lat and o_lat (kv_rank each), q_pe (rope_dim), a tile of scores and
 * a reduction buffer. */
__global__ void k_mla_attention(float *out, const float *q, const float *ckv_cache,
                                const float *kpe_cache, const void *w, int wdt, moe_mla_shape s) {
  extern __shared__ float sm[];
  const int R = s.kv_rank, P = s.rope_dim, N = s.nope_dim, V = s.v_dim;
  float *qlat = sm, *olat = sm + R, *qpe = olat + R, *sc = qpe + P, *red = sc + kAttnThreads;
  const int h = blockIdx.x % s.n_heads;
  const int t = (blockIdx.x / s.n_heads) % s.n_new;
  const int b = blockIdx.x / (s.n_heads * s.n_new);
  const int nk = s.pos0 + t + 1;
  const size_t row = (size_t)b * s.n_new + t;
  const float *qh = q + (row * s.n_heads + h) * (size_t)(N + P);
  const size_t wk = (size_t)h * (N + V) * R, wv = wk + (size_t)N * R;
  for (int r = threadIdx.x; r < R; r += blockDim.x) {
    float a = 0.0f;
    for (int n = 0; n < N; n++) a += qh[n] * load_w(w, wdt, wk + (size_t)n * R + r);
    qlat[r] = a;
    olat[r] = 0.0f;
  }
  for (int i = threadIdx.x; i < P; i += blockDim.x) qpe[i] = qh[N + i];
  __syncthreads();
  const float *cb = ckv_cache + (size_t)b * s.max_seq * R;
  const float *pb = kpe_cache + (size_t)b * s.max_seq * P;
  float m_run = -INFINITY, l_run = 0.0f;
  for (int j0 = 0; j0 < nk; j0 += kAttnThreads) {
    const int j = j0 + (int)threadIdx.x;
    float d = -INFINITY;
    if (j < nk) {
      d = 0.0f;
      for (int r = 0; r < R; r++) d += qlat[r] * cb[(size_t)j * R + r];
      for (int i = 0; i < P; i++) d += qpe[i] * pb[(size_t)j * P + i];
      d *= s.scale;
    }
    const float corr = softmax_tile(d, j < nk, sc, red, m_run, l_run);
    const int n_tile = nk - j0 < kAttnThreads ? nk - j0 : kAttnThreads;
    for (int r = threadIdx.x; r < R; r += blockDim.x) {
      float o = olat[r] * corr;
      for (int jj = 0; jj < n_tile; jj++) o += sc[jj] * cb[(size_t)(j0 + jj) * R + r];
      olat[r] = o;
    }
    __syncthreads();
  }
  const float inv = 1.0f / l_run;
  float *oh = out + (row * s.n_heads + h) * (size_t)V;
  for (int v = threadIdx.x; v < V; v += blockDim.x) {
    float o = 0.0f;
    for (int r = 0; r < R; r++) o += load_w(w, wdt, wv + (size_t)v * R + r) * olat[r];
    oh[v] = o * inv;
  }
}

__global__ void k_unary(float *y, const float *x, size_t n, int op, float alpha) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  y[i] = op == MOE_UNARY_RELU ? fmaxf(x[i], 0.0f) : alpha * x[i];
}

/* One thread per row: top-k ranked on logit + bias, ties to the lower
 * index; weights are the softmax probabilities of the chosen experts,
 * optionally renormalised.  The same definition as the cpu backend. */
__global__ void k_router_topk(int32_t *idx, float *wts, const float *logits, size_t m, int n,
                              int k, bool renorm, const void *bias, int bdt) {
  size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= m) return;
  const float *l = logits + t * n;
  float mx = -INFINITY;
  for (int e = 0; e < n; e++) mx = fmaxf(mx, l[e] + (bias ? load_w(bias, bdt, e) : 0.0f));
  float sum = 0.0f;
  for (int e = 0; e < n; e++) sum += expf(l[e] + (bias ? load_w(bias, bdt, e) : 0.0f) - mx);
  int32_t *ti = idx + t * k;
  float *tw = wts + t * k, tsum = 0.0f;
  for (int j = 0; j < k; j++) {
    int best = -1;
    float bz = 0.0f;
    for (int e = 0; e < n; e++) {
      bool taken = false;
      for (int q = 0; q < j; q++) taken |= ti[q] == e;
      if (taken) continue;
      const float z = l[e] + (bias ? load_w(bias, bdt, e) : 0.0f);
      if (best < 0 || z > bz) best = e, bz = z;
    }
    ti[j] = best;
    tw[j] = expf(bz - mx) / sum;
    tsum += tw[j];
  }
  if (renorm)
    for (int j = 0; j < k; j++) tw[j] /= tsum;
}

/* DeepSeek-style routing (backend.h, moe_router_ex), one thread per row,
 * the same definition as the cpu backend: scores, choice = score + bias,
 * group limit (c outside the kept groups = 0), top-k on c with ties to the
 * lower index, weights = scores (renormalised, scaled). */
__global__ void k_router_topk_ex(int32_t *idx, float *wts, const float *logits, size_t m, int n,
                                 int k, int scoring, const void *bias, int bdt, int n_group,
                                 int topk_group, int group_score, bool renorm, float scale,
                                 bool mask_neg_inf, float *cbuf) {
  size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= m) return;
  const float *l = logits + t * n;
  float *c = cbuf + t * n; /* the row's choice scores */
  float mx = -INFINITY, sum = 0.0f;
  if (scoring == 0) {
    for (int e = 0; e < n; e++) mx = fmaxf(mx, l[e]);
    for (int e = 0; e < n; e++) sum += expf(l[e] - mx);
  }
  for (int e = 0; e < n; e++) {
    const float s = scoring == 0 ? expf(l[e] - mx) / sum : 1.0f / (1.0f + expf(-l[e]));
    c[e] = s + (bias ? load_w(bias, bdt, e) : 0.0f);
  }
  if (n_group > 1) {
    const int size = n / n_group;
    unsigned keep[MOE_ROUTER_MAX_N / 32] = {0};
    for (int j = 0; j < topk_group; j++) {
      int best = -1;
      float bv = 0.0f;
      for (int g = 0; g < n_group; g++) {
        if (keep[g / 32] >> (g % 32) & 1u) continue;
        float a = -INFINITY, a2 = -INFINITY;
        for (int e = 0; e < size; e++) {
          const float v = c[g * size + e];
          if (v > a) a2 = a, a = v;
          else if (v > a2) a2 = v;
        }
        const float gv = group_score == 0 ? a : a + a2;
        if (best < 0 || gv > bv) best = g, bv = gv;
      }
      keep[best / 32] |= 1u << (best % 32);
    }
    for (int e = 0; e < n; e++)
      if (!(keep[(e / size) / 32] >> ((e / size) % 32) & 1u)) c[e] = mask_neg_inf ? -INFINITY : 0.0f;
  }
  int32_t *ti = idx + t * k;
  float *tw = wts + t * k, tsum = 0.0f;
  for (int j = 0; j < k; j++) {
    int best = -1;
    for (int e = 0; e < n; e++) {
      bool taken = false;
      for (int q = 0; q < j; q++) taken |= ti[q] == e;
      if (!taken && (best < 0 || c[e] > c[best])) best = e;
    }
    ti[j] = best;
    tw[j] = scoring == 0 ? expf(l[best] - mx) / sum : 1.0f / (1.0f + expf(-l[best]));
    tsum += tw[j];
  }
  for (int j = 0; j < k; j++) tw[j] = (renorm ? tw[j] / (tsum + 1e-20f) : tw[j]) * scale;
}

__global__ void k_swiglu(float *y, const float *g, const float *u, size_t n) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

__global__ void k_add(float *y, const float *x, size_t n) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] += x[i];
}

__global__ void k_add_bias(float *y, const void *b, int dt, size_t m, size_t n) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < m * n) y[i] += load_w(b, dt, i % n);
}

__global__ void k_embed(float *y, const void *table, int dt, const int32_t *ids, size_t m,
                        size_t dim) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < m * dim) y[i] = load_w(table, dt, (size_t)ids[i / dim] * dim + i % dim);
}

__global__ void k_gather(float *dst, const float *src, const int32_t *rows, size_t n, size_t dim) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n * dim) dst[i] = src[(size_t)rows[i / dim] * dim + i % dim];
}

/* Rows within one call are distinct (a token picks an expert once), so
 * plain read-modify-write is race free and deterministic. */
__global__ void k_scatter_add(float *dst, const float *src, const int32_t *rows, const float *scale,
                              size_t stride, bool sig, size_t n, size_t dim) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n * dim) return;
  const size_t r = i / dim;
  float s = scale[r * stride];
  if (sig) s = 1.0f / (1.0f + expf(-s));
  dst[(size_t)rows[r] * dim + i % dim] += s * src[i];
}

/* Activations to 16 bits, saturating: a value past the format's largest
 * finite one becomes that value, not infinity (which would turn the whole
 * product row into inf or NaN); NaN and infinity stay as they are. */
__device__ __forceinline__ float saturate(float v, float lim) {
  return v != v || isinf(v) ? v : fminf(fmaxf(v, -lim), lim); /* NaN and inf pass */
}

__global__ void k_to_half(__half *dst, const float *src, size_t n) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = __float2half_rn(saturate(src[i], 65504.0f));
}

__global__ void k_to_bf16(__nv_bfloat16 *dst, const float *src, size_t n) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  /* 0x7f7f: the largest finite bf16, 3.3895314e38 */
  if (i < n) dst[i] = __float2bfloat16_rn(saturate(src[i], 3.3895313892515355e38f));
}

/* argmax_rows (backend.h): one block per row; each thread keeps the first
 * index of its largest non-NaN value, then a reduction keeps the larger
 * value, the lower index on ties.  That is the sequential scan's answer
 * except when x[0] is NaN, where the scan keeps 0. */
__global__ void k_argmax_rows(int32_t *idx, const float *x, int n) {
  __shared__ float bv[kThreads];
  __shared__ int bi[kThreads];
  const float *row = x + (size_t)blockIdx.x * n;
  float v = 0.0f;
  int at = -1;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float y = row[i];
    if (y == y && (at < 0 || y > v)) v = y, at = i;
  }
  bv[threadIdx.x] = v;
  bi[threadIdx.x] = at;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    if ((int)threadIdx.x < w) {
      const int j = threadIdx.x + w;
      const bool take = bi[j] >= 0 && (bi[threadIdx.x] < 0 || bv[j] > bv[threadIdx.x] ||
                                       (bv[j] == bv[threadIdx.x] && bi[j] < bi[threadIdx.x]));
      if (take) bv[threadIdx.x] = bv[j], bi[threadIdx.x] = bi[j];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) idx[blockIdx.x] = row[0] != row[0] || bi[0] < 0 ? 0 : bi[0];
}

/* ------------------------------------------------------------ lifecycle */

static void cu_destroy(moe_backend *be) {
  if (be == NULL) return;
  /* copies or kernels may still be in flight: let them finish before their
   * streams, events and staging memory go */
  if (be->copy) (void)cudaStreamSynchronize(be->copy);
  if (be->compute) (void)cudaStreamSynchronize(be->compute);
  for (int i = 0; i < STAGE_SLOTS; i++)
    if (be->stage_ev[i]) (void)cudaEventDestroy(be->stage_ev[i]);
  for (int i = 0; i < STALL_PAIRS; i++) {
    if (be->pairs[i].before) (void)cudaEventDestroy(be->pairs[i].before);
    if (be->pairs[i].after) (void)cudaEventDestroy(be->pairs[i].after);
  }
  if (be->stage) (void)cudaFreeHost(be->stage);
  if (be->dstage) (void)cudaFreeHost(be->dstage);
  if (be->own_ws) (void)cudaFree(be->own_ws);
  for (int i = 0; i < ROPE_TABLES; i++)
    if (be->rope[i].freq) (void)cudaFree(be->rope[i].freq);
  if (be->blas) (void)cublasDestroy(be->blas);
  if (be->compute) (void)cudaStreamDestroy(be->compute);
  if (be->copy) (void)cudaStreamDestroy(be->copy);
  (void)cudaGetLastError(); /* nothing is left to report to */
  free(be);
}

static moe_status cu_create(const moe_backend_options *opt, moe_backend **out, moe_error *err) {
  moe_status st = MOE_OK;
  *out = NULL;
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
    return MOE_FAIL(err, MOE_ERR_NO_DEVICE, "no CUDA device; use --backend cpu (%s)",
                    e != cudaSuccess ? cudaGetErrorString(e) : "device count is 0");
  }
  if (opt && opt->link_gbps != 0)
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "the cuda backend copies over the real host link; --link-gbps emulates one on "
                    "the cpu backend only");
  const char *math = getenv("MOE_CUBLAS_MATH");
  if (math && *math && strcmp(math, "default") != 0 && strcmp(math, "pedantic") != 0)
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "MOE_CUBLAS_MATH='%.40s': expected 'default' or 'pedantic'", math);
  moe_backend *be = (moe_backend *)calloc(1, sizeof *be);
  if (be == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "cuda backend: out of host memory");
  be->pedantic = math && strcmp(math, "pedantic") == 0;
  be->device = opt ? opt->device_index : 0;
  MOE_CHECK(be->device >= 0 && be->device < count, err, MOE_ERR_INVALID,
            "CUDA device %d does not exist (%d present)", be->device, count);
  cudaDeviceProp prop;
  size_t free_b, total_b;
  CUDA_TRY(cudaSetDevice(be->device), err);
  CUDA_TRY(cudaGetDeviceProperties(&prop, be->device), err);
  CUDA_TRY(cudaStreamCreateWithFlags(&be->compute, cudaStreamNonBlocking), err);
  CUDA_TRY(cudaStreamCreateWithFlags(&be->copy, cudaStreamNonBlocking), err);
  CUBLAS_TRY(cublasCreate(&be->blas), err);
  CUBLAS_TRY(cublasSetStream(be->blas, be->compute), err);
  CUBLAS_TRY(cublasSetAtomicsMode(be->blas, CUBLAS_ATOMICS_NOT_ALLOWED), err);
  /* the default mode keeps f32 products in f32 (TF32 only under
   * CUBLAS_TF32_TENSOR_OP_MATH) and lets 16-bit products use tensor cores */
  CUBLAS_TRY(cublasSetMathMode(be->blas, be->pedantic ? CUBLAS_PEDANTIC_MATH : CUBLAS_DEFAULT_MATH),
             err);
  CUDA_TRY(cudaHostAlloc((void **)&be->stage, STAGE_BYTES, cudaHostAllocDefault), err);
  CUDA_TRY(cudaHostAlloc((void **)&be->dstage, DSTAGE_BYTES, cudaHostAllocDefault), err);
  for (int i = 0; i < STAGE_SLOTS; i++)
    CUDA_TRY(cudaEventCreateWithFlags(&be->stage_ev[i], cudaEventDisableTiming), err);
  for (int i = 0; i < STALL_PAIRS; i++) {
    CUDA_TRY(cudaEventCreate(&be->pairs[i].before), err);
    CUDA_TRY(cudaEventCreate(&be->pairs[i].after), err);
  }
  /* the default budget is what is free now (other processes, the context
   * and cuBLAS already hold some), not the card's total */
  CUDA_TRY(cudaMemGetInfo(&free_b, &total_b), err);
  be->capacity = free_b;
  snprintf(be->name, sizeof be->name, "%s", prop.name);
  snprintf(be->desc, sizeof be->desc, "cuda (%s, %.1f GiB, %.1f GiB free, sm_%d%d, cuBLAS %s math)",
           prop.name, (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0),
           (double)free_b / (1024.0 * 1024.0 * 1024.0), prop.major, prop.minor,
           be->pedantic ? "pedantic" : "default");
  *out = be;
  return MOE_OK;
cleanup:
  cu_destroy(be);
  return st;
}

static const char *cu_describe(moe_backend *be) { return be->desc; }

static const char *cu_device_name(moe_backend *be) { return be->name; }

static size_t cu_capacity(moe_backend *be) { return be->capacity; }

static size_t cu_device_used(moe_backend *be) {
  size_t free_b = 0, total = 0;
  if (cudaMemGetInfo(&free_b, &total) != cudaSuccess) return 0;
  return total - free_b;
}

/* ------------------------------------------------------------ memory, copies */

static moe_status cu_alloc(moe_backend *be, size_t bytes, void **ptr, moe_error *err) {
  *ptr = NULL;
  cudaError_t e = cudaMalloc(ptr, bytes);
  if (e == cudaSuccess) return MOE_OK;
  (void)cudaGetLastError();
  return MOE_FAIL(err, e == cudaErrorMemoryAllocation ? MOE_ERR_OOM : MOE_ERR_DEVICE,
                  "cudaMalloc of %zu bytes failed: %s", bytes, cudaGetErrorString(e));
}

/* The contract: free after all work issued so far on either stream that
 * uses ptr.  cudaFree's own implicit synchronisation is not relied on:
 * both streams are drained first. */
static void cu_free(moe_backend *be, void *ptr) {
  if (ptr == NULL) return;
  NOTE(be, cudaStreamSynchronize(be->copy));
  NOTE(be, cudaStreamSynchronize(be->compute));
  NOTE(be, cudaFree(ptr));
}

static moe_status cu_host_alloc(moe_backend *be, size_t bytes, void **ptr, moe_error *err) {
  moe_status st = MOE_OK;
  CUDA_TRY(cudaHostAlloc(ptr, bytes ? bytes : 1, cudaHostAllocDefault), err);
cleanup:
  return st;
}

static void cu_host_free(moe_backend *be, void *ptr) {
  if (ptr == NULL) return;
  NOTE(be, cudaStreamSynchronize(be->copy)); /* a copy may still read it */
  NOTE(be, cudaFreeHost(ptr));
}

/* Registered host ranges, process-wide (registration belongs to the
 * process, not to a backend instance), with a count of users each. */
typedef struct pin_entry {
  void *ptr;
  size_t bytes;
  int users;
} pin_entry;
static pthread_mutex_t g_pin_mu = PTHREAD_MUTEX_INITIALIZER;
static pin_entry *g_pins;
static size_t g_n_pins, g_cap_pins;

static moe_status cu_host_register(moe_backend *be, void *ptr, size_t bytes, moe_error *err) {
  moe_status st = MOE_OK;
  if (bytes == 0 || ptr == NULL) return MOE_OK;
  pthread_mutex_lock(&g_pin_mu);
  for (size_t i = 0; i < g_n_pins; i++)
    if (g_pins[i].ptr == ptr) {
      if (g_pins[i].bytes < bytes) {
        pthread_mutex_unlock(&g_pin_mu);
        return MOE_FAIL(err, MOE_ERR_INVALID,
                        "host range at %p is pinned for %zu bytes, not the %zu asked for", ptr,
                        g_pins[i].bytes, bytes);
      }
      g_pins[i].users++;
      pthread_mutex_unlock(&g_pin_mu);
      return MOE_OK;
    }
  if (g_n_pins == g_cap_pins) {
    size_t cap = g_cap_pins ? 2 * g_cap_pins : 8;
    pin_entry *p = (pin_entry *)realloc(g_pins, cap * sizeof *p);
    if (p == NULL) {
      pthread_mutex_unlock(&g_pin_mu);
      return MOE_FAIL(err, MOE_ERR_OOM, "out of host memory (pinned-range table)");
    }
    g_pins = p;
    g_cap_pins = cap;
  }
  cudaError_t e = cudaHostRegister(ptr, bytes, cudaHostRegisterDefault);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    pthread_mutex_unlock(&g_pin_mu);
    return MOE_FAIL(err, MOE_ERR_DEVICE, "cudaHostRegister of %zu bytes failed: %s", bytes,
                    cudaGetErrorString(e));
  }
  g_pins[g_n_pins++] = (pin_entry){ptr, bytes, 1};
  pthread_mutex_unlock(&g_pin_mu);
  return st;
}

static void cu_host_unregister(moe_backend *be, void *ptr) {
  pthread_mutex_lock(&g_pin_mu);
  for (size_t i = 0; i < g_n_pins; i++)
    if (g_pins[i].ptr == ptr) {
      if (--g_pins[i].users == 0) {
        NOTE(be, cudaStreamSynchronize(be->copy)); /* no copy may still read the range */
        NOTE(be, cudaHostUnregister(ptr));
        g_pins[i] = g_pins[--g_n_pins];
      }
      break;
    }
  pthread_mutex_unlock(&g_pin_mu);
}

static moe_status cu_event_create(moe_backend *be, moe_event **ev, moe_error *err) {
  moe_status st = MOE_OK;
  *ev = (moe_event *)calloc(1, sizeof **ev);
  MOE_CHECK_ALLOC(*ev, err, sizeof **ev);
  CUDA_TRY(cudaEventCreateWithFlags(&(*ev)->ev, cudaEventDisableTiming), err);
  return MOE_OK;
cleanup:
  free(*ev);
  *ev = NULL;
  return st;
}

/* cudaEventDestroy does not block: with work still to record the event,
 * the runtime releases it once that work completes (the contract). */
static void cu_event_destroy(moe_backend *be, moe_event *ev) {
  if (ev == NULL) return;
  NOTE(be, cudaEventDestroy(ev->ev));
  free(ev);
}

static moe_status cu_copy_h2d_async(moe_backend *be, void *dst, const void *src, size_t bytes,
                                    moe_event *ev, moe_error *err) {
  moe_status st = MOE_OK;
  CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, be->copy), err);
  if (ev) CUDA_TRY(cudaEventRecord(ev->ev, be->copy), err);
cleanup:
  return st;
}

/* Adds the elapsed time of completed timing pairs to stall_s; with wait,
 * waits for every pending pair first. */
static void harvest_stalls(moe_backend *be, bool wait) {
  for (int i = 0; i < STALL_PAIRS; i++) {
    stall_pair *p = &be->pairs[i];
    if (!p->pending) continue;
    cudaError_t e = cudaSuccess;
    if (wait) {
      e = cudaEventSynchronize(p->after);
    } else {
      const int done = query_event(p->after); /* clears cudaErrorNotReady */
      if (done == 0) continue;
      if (done < 0) e = cudaErrorUnknown;
    }
    float ms = 0.0f;
    if (e == cudaSuccess && cudaEventElapsedTime(&ms, p->before, p->after) == cudaSuccess)
      be->stall_s += (double)ms * 1e-3;
    else
      (void)cudaGetLastError(); /* timing lost; the stream's own error surfaces on its next call */
    p->pending = 0;
  }
}

/* cudaStreamWaitEvent orders the compute stream after the copy without
 * blocking the host.  Two timing events bracket the wait: the time between
 * them is how long the compute stream stood still for the copy. */
static moe_status cu_compute_wait(moe_backend *be, moe_event *ev, moe_error *err) {
  moe_status st = MOE_OK;
  if (ev == NULL) return MOE_OK;
  stall_pair *p = &be->pairs[be->pair_next];
  if (p->pending) harvest_stalls(be, false);
  if (p->pending) {
    CUDA_TRY(cudaEventSynchronize(p->after), err);
    harvest_stalls(be, false);
  }
  be->pair_next = (be->pair_next + 1) % STALL_PAIRS;
  CUDA_TRY(cudaEventRecord(p->before, be->compute), err);
  CUDA_TRY(cudaStreamWaitEvent(be->compute, ev->ev, 0), err);
  CUDA_TRY(cudaEventRecord(p->after, be->compute), err);
  p->pending = 1;
cleanup:
  return st;
}

static double cu_stall_seconds(moe_backend *be) {
  harvest_stalls(be, true);
  return be->stall_s;
}

static moe_status cu_event_sync(moe_backend *be, moe_event *ev, moe_error *err) {
  moe_status st = MOE_OK;
  if (ev) CUDA_TRY(cudaEventSynchronize(ev->ev), err);
cleanup:
  return st;
}

static moe_status cu_compute_record(moe_backend *be, moe_event *ev, moe_error *err) {
  moe_status st = MOE_OK;
  if (ev == NULL) return MOE_OK;
  CUDA_TRY(cudaEventRecord(ev->ev, be->compute), err);
cleanup:
  return st;
}

static moe_status cu_copy_wait(moe_backend *be, moe_event *ev, moe_error *err) {
  moe_status st = MOE_OK;
  if (ev) CUDA_TRY(cudaStreamWaitEvent(be->copy, ev->ev, 0), err);
cleanup:
  return st;
}

/* A hint only.  cudaErrorNotReady is cleared (an answer, not a failure);
 * another error is not: the answer is "not done", and the caller's next
 * checked call (its compute_wait) reports it. */
static int cu_event_done(moe_backend *be, moe_event *ev) {
  if (ev == NULL) return 1;
  return query_event(ev->ev) == 1;
}

/* Small host inputs: staged through the pinned ring and copied on the
 * compute stream, so the call returns without waiting for the GPU; the
 * ring space is reused once the copy that read it has completed.  Inputs
 * larger than the ring are copied synchronously. */
static moe_status cu_upload(moe_backend *be, void *dst, const void *src, size_t bytes, moe_error *err) {
  moe_status st = MOE_OK;
  if (bytes == 0) return MOE_OK;
  if (bytes > STAGE_BYTES / 2) {
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, be->compute), err);
    CUDA_TRY(cudaStreamSynchronize(be->compute), err);
    return MOE_OK;
  }
  {
    size_t off = (be->stage_head + 255) / 256 * 256;
    if (off + bytes > STAGE_BYTES) off = 0;
    /* the slot's previous upload (and every older one) must have been read */
    const int slot = be->stage_next;
    CUDA_TRY(cudaEventSynchronize(be->stage_ev[slot]), err);
    /* and no upload still in flight may use [off, off + bytes) */
    for (int i = 0; i < STAGE_SLOTS; i++) {
      if (i == slot || be->stage_end[i] <= off || be->stage_start[i] >= off + bytes) continue;
      CUDA_TRY(cudaEventSynchronize(be->stage_ev[i]), err);
      be->stage_start[i] = be->stage_end[i] = 0;
    }
    memcpy(be->stage + off, src, bytes);
    CUDA_TRY(cudaMemcpyAsync(dst, be->stage + off, bytes, cudaMemcpyHostToDevice, be->compute), err);
    CUDA_TRY(cudaEventRecord(be->stage_ev[slot], be->compute), err);
    be->stage_start[slot] = off;
    be->stage_end[slot] = off + bytes;
    be->stage_head = off + bytes;
    be->stage_next = (slot + 1) % STAGE_SLOTS;
  }
cleanup:
  return st;
}

/* n downloads, one wait.  Those that fit (together) in the pinned landing
 * buffer are copied there (a true asynchronous DMA) and moved to their
 * destinations after the one wait; larger ones go straight to their
 * destination (the runtime stages pageable memory itself). */
static moe_status cu_download_many(moe_backend *be, const moe_xfer *x, int n, moe_error *err) {
  moe_status st = MOE_OK;
  size_t off = 0;
  bool any = false;
  for (int i = 0; i < n; i++) {
    if (x[i].bytes == 0) continue;
    any = true;
    const size_t at = (off + 255) / 256 * 256;
    if (at + x[i].bytes <= DSTAGE_BYTES) {
      CUDA_TRY(cudaMemcpyAsync(be->dstage + at, x[i].src, x[i].bytes, cudaMemcpyDeviceToHost,
                               be->compute), err);
      off = at + x[i].bytes;
    } else {
      CUDA_TRY(cudaMemcpyAsync(x[i].dst, x[i].src, x[i].bytes, cudaMemcpyDeviceToHost, be->compute),
               err);
    }
  }
  if (!any) return MOE_OK;
  CUDA_TRY(cudaStreamSynchronize(be->compute), err);
  off = 0;
  for (int i = 0; i < n; i++) {
    if (x[i].bytes == 0) continue;
    const size_t at = (off + 255) / 256 * 256;
    if (at + x[i].bytes <= DSTAGE_BYTES) {
      memcpy(x[i].dst, be->dstage + at, x[i].bytes);
      off = at + x[i].bytes;
    }
  }
  if (be->deferred[0]) { /* a free path's failure: reported at the step's host wait */
    st = MOE_FAIL(err, MOE_ERR_DEVICE, "an earlier call failed: %s", be->deferred);
    be->deferred[0] = '\0';
  }
  return st;
cleanup:
  /* a copy queued before the failure may still be writing: let it land */
  (void)cudaStreamSynchronize(be->compute);
  (void)cudaGetLastError();
  return st;
}

static moe_status cu_download(moe_backend *be, void *dst, const void *src, size_t bytes, moe_error *err) {
  const moe_xfer x = {dst, src, bytes};
  return cu_download_many(be, &x, 1, err);
}

static moe_status cu_sync(moe_backend *be, moe_error *err) {
  moe_status st = MOE_OK;
  CUDA_TRY(cudaStreamSynchronize(be->copy), err);
  CUDA_TRY(cudaStreamSynchronize(be->compute), err);
  if (be->deferred[0]) {
    st = MOE_FAIL(err, MOE_ERR_DEVICE, "an earlier call failed: %s", be->deferred);
    be->deferred[0] = '\0';
  }
cleanup:
  return st;
}

static size_t cu_workspace_bytes(moe_backend *be, size_t max_rows, size_t max_cols) {
  return max_rows * max_cols * 2; /* activations as f16/bf16 for cublasGemmEx */
}

static void cu_set_workspace(moe_backend *be, void *ptr, size_t bytes) {
  be->ws = ptr;
  be->ws_bytes = ptr ? bytes : 0;
}

/* Device scratch of at least bytes for the next compute-stream op: the
 * engine's workspace when it is large enough, else the backend's own,
 * grown on demand (the old one is freed once the compute stream has
 * finished with it).  Every user is on the compute stream, so one scratch
 * serves them in turn. */
static moe_status scratch(moe_backend *be, size_t bytes, void **out, moe_error *err) {
  moe_status st = MOE_OK;
  if (be->ws && be->ws_bytes >= bytes) {
    *out = be->ws;
    return MOE_OK;
  }
  if (be->own_ws_bytes < bytes) {
    const size_t grow = (bytes + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1); /* 1 MiB steps */
    if (be->own_ws) {
      CUDA_TRY(cudaStreamSynchronize(be->compute), err);
      CUDA_TRY(cudaFree(be->own_ws), err);
      be->own_ws = NULL;
      be->own_ws_bytes = 0;
    }
    const cudaError_t e = cudaMalloc(&be->own_ws, grow);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      be->own_ws = NULL;
      return MOE_FAIL(err, e == cudaErrorMemoryAllocation ? MOE_ERR_OOM : MOE_ERR_DEVICE,
                      "cuda scratch of %zu bytes (outside the engine's workspace) failed: %s",
                      grow, cudaGetErrorString(e));
    }
    be->own_ws_bytes = grow;
  }
  *out = be->own_ws;
cleanup:
  return st;
}

/* ------------------------------------------------------------ math */

static moe_status cu_matmul(moe_backend *be, float *y, const float *x, size_t m,
                            const moe_weight *w, const moe_weight *bias, moe_error *err) {
  moe_status st = MOE_OK;
  const int n = (int)w->rows, k = (int)w->cols;
  const float one = 1.0f, zero = 0.0f;
  if (m == 0 || n == 0) return MOE_OK;
  /* Row-major y[m,n] = x[m,k] . W[n,k]^T is column-major y^T = W^T' ... :
   * C(n x m) = op(A = W as col-major k x n, transposed) . B (x as col-major k x m). */
  if (w->dtype == MOE_F32) {
    CUBLAS_TRY(cublasSgemm(be->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, (int)m, k, &one,
                           (const float *)w->data, k, x, k, &zero, y, n),
               err);
  } else {
    const size_t elems = m * (size_t)k;
    void *xs = NULL;
    MOE_TRY(scratch(be, elems * 2, &xs, err));
    cudaDataType_t t;
    if (w->dtype == MOE_F16) {
      k_to_half<<<blocks_for(elems), kThreads, 0, be->compute>>>((__half *)xs, x, elems);
      t = CUDA_R_16F;
    } else {
      k_to_bf16<<<blocks_for(elems), kThreads, 0, be->compute>>>((__nv_bfloat16 *)xs, x, elems);
      t = CUDA_R_16BF;
    }
    KERNEL_CHECK(err);
    CUBLAS_TRY(cublasGemmEx(be->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, (int)m, k, &one, w->data, t, k,
                            xs, t, k, &zero, y, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT),
               err);
  }
  if (bias && bias->data) {
    k_add_bias<<<blocks_for(m * (size_t)n), kThreads, 0, be->compute>>>(y, bias->data,
                                                                        (int)bias->dtype, m, (size_t)n);
    KERNEL_CHECK(err);
  }
cleanup:
  return st;
}

static moe_status cu_rmsnorm(moe_backend *be, float *y, const float *x, size_t m,
                             const moe_weight *g, float eps, moe_error *err) {
  moe_status st = MOE_OK;
  if (m == 0 || g->cols == 0) return MOE_OK;
  k_rmsnorm<<<(unsigned)m, kThreads, 0, be->compute>>>(y, x, g->data, (int)g->dtype, (int)g->cols, eps);
  KERNEL_CHECK(err);
cleanup:
  return st;
}

static moe_status cu_upload(moe_backend *be, void *dst, const void *src, size_t bytes, moe_error *err);

/* The device table of RoPE frequencies for (theta, head_dim), computed on
 * the host with the cpu backend's expression (1 / theta^(2i / d) in float)
 * the first time it is asked for; the oldest of ROPE_TABLES is replaced. */
static moe_status rope_table(moe_backend *be, float theta, int head_dim, const float **out,
                             moe_error *err) {
  moe_status st = MOE_OK;
  for (int i = 0; i < ROPE_TABLES; i++)
    if (be->rope[i].freq && be->rope[i].theta == theta && be->rope[i].head_dim == head_dim) {
      *out = be->rope[i].freq;
      return MOE_OK;
    }
  {
    const int half = head_dim / 2;
    float host[MAX_ROPE_HALF];
    for (int i = 0; i < half; i++) host[i] = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
    const int slot = be->rope_next;
    if (be->rope[slot].freq == NULL)
      CUDA_TRY(cudaMalloc((void **)&be->rope[slot].freq, MAX_ROPE_HALF * sizeof(float)), err);
    be->rope[slot].head_dim = 0; /* valid again once uploaded */
    /* stream-ordered: an earlier kernel still reading the old table runs first */
    MOE_TRY(cu_upload(be, be->rope[slot].freq, host, (size_t)half * sizeof(float), err));
    be->rope[slot].theta = theta;
    be->rope[slot].head_dim = head_dim;
    be->rope_next = (slot + 1) % ROPE_TABLES;
    *out = be->rope[slot].freq;
  }
cleanup:
  return st;
}

static moe_status cu_rope(moe_backend *be, float *x, size_t m, const int32_t *pos, int n_heads,
                          int head_dim, float theta, moe_error *err) {
  moe_status st = MOE_OK;
  const size_t n = m * (size_t)n_heads * (size_t)(head_dim / 2);
  if (n == 0) return MOE_OK;
  MOE_CHECK(head_dim > 0 && head_dim % 2 == 0 && head_dim / 2 <= MAX_ROPE_HALF && theta > 0.0f,
            err, MOE_ERR_UNSUPPORTED, "cuda rope: head_dim %d (even, at most %d) or theta %g",
            head_dim, 2 * MAX_ROPE_HALF, (double)theta);
  {
    const float *freq = NULL;
    MOE_TRY(rope_table(be, theta, head_dim, &freq, err));
    const rope_ex_args a = {n_heads, (size_t)n_heads * (size_t)head_dim, (size_t)head_dim, 0,
                            head_dim, false, freq, 1.0f};
    k_rope_ex<<<blocks_for(n), kThreads, 0, be->compute>>>(x, m, pos, a);
  }
  KERNEL_CHECK(err);
cleanup:
  return st;
}

static moe_status cu_kv_store(moe_backend *be, float *kc, float *vc, const float *k, const float *v,
                              const moe_attn_shape *s, moe_error *err) {
  moe_status st = MOE_OK;
  const size_t n = (size_t)s->n_seq * s->n_new * s->n_kv_heads * s->head_dim;
  if (n == 0) return MOE_OK;
  k_kv_store<<<blocks_for(n), kThreads, 0, be->compute>>>(kc, vc, k, v, *s);
  KERNEL_CHECK(err);
cleanup:
  return st;
}

static moe_status cu_attention_ex(moe_backend *be, float *out, const float *q, const float *kc,
                                  const float *vc, const moe_attn_ex *a, moe_error *err) {
  moe_status st = MOE_OK;
  const size_t blocks = (size_t)a->n_seq * (size_t)a->n_q * (size_t)a->n_heads;
  if (blocks == 0) return MOE_OK;
  const size_t smem = (2 * (size_t)kAttnThreads + (size_t)a->head_dim) * sizeof(float);
  MOE_CHECK(smem <= 48 * 1024 && blocks <= 0x7fffffffu, err, MOE_ERR_UNSUPPORTED,
            "cuda attention: head_dim %d or %zu (sequence, token, head) blocks exceed this kernel",
            a->head_dim, blocks);
  {
    const bool biased = a->rel_bias && a->rel_bias->data;
    const attn_ex_args args = {a->n_seq, a->n_q, a->q_pos0, a->n_keys, a->max_seq, a->n_heads,
                               a->n_kv_heads, a->head_dim, a->causal, a->scale,
                               biased ? a->rel_bias->data : NULL,
                               biased ? (int)a->rel_bias->dtype : 0, a->buckets, a->bucket_offset};
    k_attention_ex<<<(unsigned)blocks, kAttnThreads, smem, be->compute>>>(out, q, kc, vc, args);
  }
  KERNEL_CHECK(err);
cleanup:
  return st;
}

/* The decoder-only attention: attention_ex, causal over the cache up to
 * each query's position, scaled by 1/sqrt(head_dim), no bias. */
static moe_status cu_attention(moe_backend *be, float *out, const float *q, const float *kc,
                               const float *vc, const moe_attn_shape *s, moe_error *err) {
  const moe_attn_ex a = {s->n_seq,   s->n_new,      s->pos0,  s->pos0 + s->n_new,
                         s->max_seq, s->n_heads,    s->n_kv_heads, s->head_dim,
                         true,       1.0f / sqrtf((float)s->head_dim), NULL, NULL, 0};
  return cu_attention_ex(be, out, q, kc, vc, &a, err);
}

static moe_status cu_rope_ex(moe_backend *be, float *x, size_t m, const int32_t *pos,
                             const moe_rope_ex *r, moe_error *err) {
  moe_status st = MOE_OK;
  if (m == 0) return MOE_OK;
  MOE_TRY(moe_rope_ex_check(r, err));
  {
    const size_t n = m * (size_t)r->n_heads * (size_t)(r->rot_dim / 2);
    const rope_ex_args a = {r->n_heads, r->row_stride, r->head_stride, r->offset,
                            r->rot_dim,  r->interleaved, r->inv_freq, r->attn_scale};
    k_rope_ex<<<blocks_for(n), kThreads, 0, be->compute>>>(x, m, pos, a);
  }
  KERNEL_CHECK(err);
cleanup:
  return st;
}

static moe_status cu_mla_attention(moe_backend *be, float *out, const float *q, float *ckv_cache,
                                   float *kpe_cache, const float *ckv, const float *kpe,
                                   const moe_weight *kv_b, const moe_mla_shape *s, moe_error *err) {
  moe_status st = MOE_OK;
  const size_t rows = (size_t)s->n_seq * (size_t)s->n_new;
  if (rows == 0) return MOE_OK;
  MOE_TRY(moe_mla_check(s, kv_b, err));
  {
    const size_t blocks = rows * (size_t)s->n_heads;
    const size_t smem =
        (2 * (size_t)s->kv_rank + (size_t)s->rope_dim + 2 * (size_t)kAttnThreads) * sizeof(float);
    MOE_CHECK(smem <= 48 * 1024 && blocks <= 0x7fffffffu, err, MOE_ERR_UNSUPPORTED,
              "cuda mla attention: kv_lora_rank %d or %zu (sequence, token, head) blocks exceed "
              "this kernel", s->kv_rank, blocks);
    const size_t n = rows * ((size_t)s->kv_rank + (size_t)s->rope_dim);
    k_mla_store<<<blocks_for(n), kThreads, 0, be->compute>>>(ckv_cache, kpe_cache, ckv, kpe, *s);
    KERNEL_CHECK(err);
    k_mla_attention<<<(unsigned)blocks, kAttnThreads, smem, be->compute>>>(
        out, q, ckv_cache, kpe_cache, kv_b->data, (int)kv_b->dtype, *s);
  }
  KERNEL_CHECK(err);
cleanup:
  return st;
}

static moe_status cu_unary(moe_backend *be, float *y, const float *x, size_t n, moe_unary_op op,
                           float alpha, moe_error *err) {
  moe_status st = MOE_OK;
  MOE_CHECK(op == MOE_UNARY_RELU || op == MOE_UNARY_SCALE, err, MOE_ERR_INVALID,
            "unary: unknown operation %d", (int)op);
  if (n == 0) return MOE_OK;
  k_unary<<<blocks_for(n), kThreads, 0, be->compute>>>(y, x, n, (int)op, alpha);
  KERNEL_CHECK(err);
cleanup:
  return st;
}

static moe_status cu_router_topk(moe_backend *be, int32_t *idx, float *wts, const float *logits,
                                 size_t m, int n, int k, bool renorm, const moe_weight *bias,
                                 moe_error *err) {
  moe_status st = MOE_OK;
  if (m == 0) return MOE_OK;
  k_router_topk<<<(unsigned)((m + 127) / 128), 128, 0, be->compute>>>(
      idx, wts, logits, m, n, k, renorm, bias && bias->data ? bias->data : NULL,
      bias ? (int)bias->dtype : 0);
  KERNEL_CHECK(err);
cleanup:
  return st;
}

static moe_status cu_router_topk_ex(moe_backend *be, int32_t *idx, float *wts, const float *logits,
                                    size_t m, int n, const moe_router_ex *r, moe_error *err) {
  moe_status st = MOE_OK;
  if (m == 0) return MOE_OK;
  MOE_TRY(moe_router_ex_check(r, n, err));
  {
    /* the rows' choice scores: the scratch (no allocation per call) */
    void *cbuf = NULL;
    MOE_TRY(scratch(be, m * (size_t)n * sizeof(float), &cbuf, err));
    k_router_topk_ex<<<(unsigned)((m + 127) / 128), 128, 0, be->compute>>>(
        idx, wts, logits, m, n, r->k, (int)r->scoring,
        r->choice_bias && r->choice_bias->data ? r->choice_bias->data : NULL,
        r->choice_bias ? (int)r->choice_bias->dtype : 0, r->n_group, r->topk_group,
        (int)r->group_score, r->renorm, r->scale, r->mask_neg_inf, (float *)cbuf);
  }
  KERNEL_CHECK(err);
cleanup:
  return st;
}

static moe_status cu_swiglu(moe_backend *be, float *y, const float *g, const float *u, size_t n,
                           moe_error *err) {
  moe_status st = MOE_OK;
  if (n == 0) return MOE_OK;
  k_swiglu<<<blocks_for(n), kThreads, 0, be->compute>>>(y, g, u, n);
  KERNEL_CHECK(err);
cleanup:
  return st;
}

static moe_status cu_add(moe_backend *be, float *y, const float *x, size_t n, moe_error *err) {
  moe_status st = MOE_OK;
  if (n == 0) return MOE_OK;
  k_add<<<blocks_for(n), kThreads, 0, be->compute>>>(y, x, n);
  KERNEL_CHECK(err);
cleanup:
  return st;
}

static moe_status cu_embed(moe_backend *be, float *y, const moe_weight *t, const int32_t *ids,
                           size_t m, moe_error *err) {
  moe_status st = MOE_OK;
  if (m == 0 || t->cols == 0) return MOE_OK;
  k_embed<<<blocks_for(m * t->cols), kThreads, 0, be->compute>>>(y, t->data, (int)t->dtype, ids, m,
                                                                  t->cols);
  KERNEL_CHECK(err);
cleanup:
  return st;
}

static moe_status cu_gather(moe_backend *be, float *dst, const float *src, const int32_t *rows,
                            size_t n, size_t dim, moe_error *err) {
  moe_status st = MOE_OK;
  if (n == 0 || dim == 0) return MOE_OK;
  k_gather<<<blocks_for(n * dim), kThreads, 0, be->compute>>>(dst, src, rows, n, dim);
  KERNEL_CHECK(err);
cleanup:
  return st;
}

static moe_status cu_scatter_add(moe_backend *be, float *dst, const float *src, const int32_t *rows,
                                 const float *scale, size_t stride, bool sig, size_t n, size_t dim,
                                 moe_error *err) {
  moe_status st = MOE_OK;
  if (n == 0 || dim == 0) return MOE_OK;
  k_scatter_add<<<blocks_for(n * dim), kThreads, 0, be->compute>>>(dst, src, rows, scale, stride,
                                                                    sig, n, dim);
  KERNEL_CHECK(err);
cleanup:
  return st;
}

static moe_status cu_argmax_rows(moe_backend *be, int32_t *idx, const float *x, size_t m, int n,
                                 moe_error *err) {
  moe_status st = MOE_OK;
  if (m == 0) return MOE_OK;
  MOE_CHECK(n >= 1 && m <= 0x7fffffffu, err, MOE_ERR_INVALID,
            "argmax_rows: n must be >= 1 (got %d), rows at most 2^31 - 1 (got %zu)", n, m);
  k_argmax_rows<<<(unsigned)m, kThreads, 0, be->compute>>>(idx, x, n);
  KERNEL_CHECK(err);
cleanup:
  return st;
}

extern "C" moe_status moe_cuda_probe(char *desc, size_t cap, moe_error *err);

static moe_backend_ops make_ops(void) {
  moe_backend_ops o;
  memset(&o, 0, sizeof o);
  o.abi_version = MOE_BACKEND_ABI;
  o.struct_size = sizeof(moe_backend_ops);
  o.name = "cuda";
  o.summary = "NVIDIA GPU: cuBLAS matmuls, CUDA C kernels, compute and copy streams, pinned host memory";
  o.create = cu_create;
  o.destroy = cu_destroy;
  o.describe = cu_describe;
  o.device_alloc = cu_alloc;
  o.device_free = cu_free;
  o.host_alloc = cu_host_alloc;
  o.host_free = cu_host_free;
  o.event_create = cu_event_create;
  o.event_destroy = cu_event_destroy;
  o.copy_h2d_async = cu_copy_h2d_async;
  o.compute_wait = cu_compute_wait;
  o.event_sync = cu_event_sync;
  o.upload = cu_upload;
  o.download = cu_download;
  o.synchronize = cu_sync;
  o.compute_record = cu_compute_record;
  o.copy_wait = cu_copy_wait;
  o.event_done = cu_event_done;
  o.device_capacity = cu_capacity;
  o.matmul = cu_matmul;
  o.rmsnorm = cu_rmsnorm;
  o.rope = cu_rope;
  o.kv_store = cu_kv_store;
  o.attention = cu_attention;
  o.router_topk = cu_router_topk;
  o.swiglu = cu_swiglu;
  o.add = cu_add;
  o.embed = cu_embed;
  o.gather_rows = cu_gather;
  o.scatter_add_rows = cu_scatter_add;
  o.workspace_bytes = cu_workspace_bytes;
  o.set_workspace = cu_set_workspace;
  o.host_register = cu_host_register;
  o.host_unregister = cu_host_unregister;
  o.device_used = cu_device_used;
  o.caps = MOE_BACKEND_CAP_PREFERRED;
  o.probe = moe_cuda_probe;
  o.device_name = cu_device_name;
  o.stall_seconds = cu_stall_seconds;
  o.attention_ex = cu_attention_ex;
  o.unary = cu_unary;
  o.router_topk_ex = cu_router_topk_ex;
  o.rope_ex = cu_rope_ex;
  o.mla_attention = cu_mla_attention;
  o.download_many = cu_download_many;
  o.argmax_rows = cu_argmax_rows;
  return o;
}

extern "C" const moe_backend_ops moe_cuda_backend = make_ops();

/* ------------------------------------------------------------ probe */

extern "C" int moe_cuda_compiled(void) { return 1; }

extern "C" moe_status moe_cuda_probe(char *desc, size_t cap, moe_error *err) {
  moe_status st = MOE_OK;
  int count = 0;
  cudaDeviceProp prop;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    (void)cudaGetLastError(); /* leave no pending error for later calls */
    return MOE_FAIL(err, MOE_ERR_NO_DEVICE, "no CUDA device; use --backend cpu (%s)",
                    e != cudaSuccess ? cudaGetErrorString(e) : "device count is 0");
  }
  CUDA_TRY(cudaGetDeviceProperties(&prop, 0), err);
  snprintf(desc, cap, "%s, %.1f GiB, sm_%d%d, %d device%s", prop.name,
           (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), prop.major, prop.minor,
           count, count == 1 ? "" : "s");
cleanup:
  return st;
}
