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
 * output); small CUDA C kernels for the rest, all f32.  Results follow the
 * cpu backend's definitions op by op (tests/cuda compares them).
 *
 * Errors: every runtime and cuBLAS call is checked (CUDA_TRY, CUBLAS_TRY,
 * built on MOE_TRY_GEN); after each kernel launch cudaGetLastError is
 * checked.  Failures come back as MOE_ERR_DEVICE with the call and
 * file:line; no device or no driver is MOE_ERR_NO_DEVICE. */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/backend.h"
#include "moe/cuda.h"

#define CUDA_TRY(call, err)                                                            \
  do {                                                                                 \
    cudaError_t cuda_e_ = (call);                                                      \
    MOE_TRY_GEN(cuda_e_ == cudaSuccess,                                                \
                st = MOE_FAIL((err), MOE_ERR_DEVICE, "%s failed: %s", #call,           \
                              cudaGetErrorString(cuda_e_)));                           \
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

struct moe_backend {
  int device;
  cudaStream_t compute, copy;
  cublasHandle_t blas;
  void *ws; /* matmul workspace from the engine */
  size_t ws_bytes;
  size_t capacity;
  char desc[400];
};

struct moe_event {
  cudaEvent_t ev;
};

static const int kThreads = 256;

static unsigned blocks_for(size_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

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

__global__ void k_rope(float *x, size_t m, const int32_t *pos, int heads, int hd, float theta) {
  const int half = hd / 2;
  size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= m * (size_t)heads * (size_t)half) return;
  const int i = (int)(idx % half);
  const size_t th = idx / half; /* token * heads + head */
  const size_t t = th / heads;
  const float inv = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
  const float ang = (float)pos[t] * inv;
  const float c = cosf(ang), s = sinf(ang);
  float *v = x + th * hd;
  const float a = v[i], b = v[i + half];
  v[i] = a * c - b * s;
  v[i + half] = b * c + a * s;
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

/* One block per (sequence, new token, head); scores in shared memory. */
__global__ void k_attention(float *out, const float *q, const float *kc, const float *vc,
                            moe_attn_shape s) {
  extern __shared__ float sc[]; /* [max_seq] then [blockDim] reduction space */
  float *red = sc + s.max_seq;
  const int h = blockIdx.x % s.n_heads;
  const int t = (blockIdx.x / s.n_heads) % s.n_new;
  const int b = blockIdx.x / (s.n_heads * s.n_new);
  const int p = s.pos0 + t, hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
  const size_t row = ((size_t)b * s.n_new + t) * (size_t)s.n_heads * hd;
  const float *qh = q + row + (size_t)h * hd;
  const size_t base = (((size_t)b * s.n_kv_heads + h / group) * s.max_seq) * hd;
  const float scale = 1.0f / sqrtf((float)hd);
  float mx = -INFINITY;
  for (int j = threadIdx.x; j <= p; j += blockDim.x) {
    const float *kj = kc + base + (size_t)j * hd;
    float d = 0.0f;
    for (int i = 0; i < hd; i++) d += qh[i] * kj[i];
    sc[j] = d * scale;
    mx = fmaxf(mx, sc[j]);
  }
  red[threadIdx.x] = mx;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    if ((int)threadIdx.x < w) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + w]);
    __syncthreads();
  }
  mx = red[0];
  __syncthreads();
  float sum = 0.0f;
  for (int j = threadIdx.x; j <= p; j += blockDim.x) {
    sc[j] = expf(sc[j] - mx);
    sum += sc[j];
  }
  red[threadIdx.x] = sum;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    if ((int)threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  const float inv = 1.0f / red[0];
  float *oh = out + row + (size_t)h * hd;
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    float o = 0.0f;
    for (int j = 0; j <= p; j++) o += sc[j] * inv * vc[base + (size_t)j * hd + i];
    oh[i] = o;
  }
}

/* One thread per row: softmax (bias added first), top-k with ties to the
 * lower index, optional renormalisation. */
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
    float bp = 0.0f;
    for (int e = 0; e < n; e++) {
      bool taken = false;
      for (int q = 0; q < j; q++) taken |= ti[q] == e;
      if (taken) continue;
      float pe = expf(l[e] + (bias ? load_w(bias, bdt, e) : 0.0f) - mx) / sum;
      if (best < 0 || pe > bp) best = e, bp = pe;
    }
    ti[j] = best;
    tw[j] = bp;
    tsum += bp;
  }
  if (renorm)
    for (int j = 0; j < k; j++) tw[j] /= tsum;
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

__global__ void k_to_half(__half *dst, const float *src, size_t n) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = __float2half_rn(src[i]);
}

__global__ void k_to_bf16(__nv_bfloat16 *dst, const float *src, size_t n) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = __float2bfloat16_rn(src[i]);
}

/* ------------------------------------------------------------ lifecycle */

static void cu_destroy(moe_backend *be) {
  if (be == NULL) return;
  if (be->blas) cublasDestroy(be->blas);
  if (be->compute) cudaStreamDestroy(be->compute);
  if (be->copy) cudaStreamDestroy(be->copy);
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
  if (opt && opt->link_gbps > 0)
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "the cuda backend copies over the real host link; --link-gbps emulates one on "
                    "the cpu backend only");
  moe_backend *be = (moe_backend *)calloc(1, sizeof *be);
  if (be == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "cuda backend: out of host memory");
  be->device = opt ? opt->device_index : 0;
  MOE_CHECK(be->device >= 0 && be->device < count, err, MOE_ERR_INVALID,
            "CUDA device %d does not exist (%d present)", be->device, count);
  cudaDeviceProp prop;
  CUDA_TRY(cudaSetDevice(be->device), err);
  CUDA_TRY(cudaGetDeviceProperties(&prop, be->device), err);
  CUDA_TRY(cudaStreamCreateWithFlags(&be->compute, cudaStreamNonBlocking), err);
  CUDA_TRY(cudaStreamCreateWithFlags(&be->copy, cudaStreamNonBlocking), err);
  CUBLAS_TRY(cublasCreate(&be->blas), err);
  CUBLAS_TRY(cublasSetStream(be->blas, be->compute), err);
  CUBLAS_TRY(cublasSetAtomicsMode(be->blas, CUBLAS_ATOMICS_NOT_ALLOWED), err);
  CUBLAS_TRY(cublasSetMathMode(be->blas, CUBLAS_PEDANTIC_MATH), err); /* f32 stays f32 (no TF32) */
  be->capacity = prop.totalGlobalMem;
  snprintf(be->desc, sizeof be->desc, "cuda (%s, %.1f GiB, sm_%d%d)", prop.name,
           (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), prop.major, prop.minor);
  *out = be;
  return MOE_OK;
cleanup:
  cu_destroy(be);
  return st;
}

static const char *cu_describe(moe_backend *be) { return be->desc; }

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

static void cu_free(moe_backend *be, void *ptr) { cudaFree(ptr); }

static moe_status cu_host_alloc(moe_backend *be, size_t bytes, void **ptr, moe_error *err) {
  moe_status st = MOE_OK;
  CUDA_TRY(cudaHostAlloc(ptr, bytes ? bytes : 1, cudaHostAllocDefault), err);
cleanup:
  return st;
}

static void cu_host_free(moe_backend *be, void *ptr) { cudaFreeHost(ptr); }

static moe_status cu_host_register(moe_backend *be, void *ptr, size_t bytes, moe_error *err) {
  moe_status st = MOE_OK;
  if (bytes == 0) return MOE_OK;
  CUDA_TRY(cudaHostRegister(ptr, bytes, cudaHostRegisterDefault), err);
cleanup:
  return st;
}

static void cu_host_unregister(moe_backend *be, void *ptr) { cudaHostUnregister(ptr); }

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

static void cu_event_destroy(moe_backend *be, moe_event *ev) {
  if (ev == NULL) return;
  cudaEventDestroy(ev->ev);
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

static moe_status cu_compute_wait(moe_backend *be, moe_event *ev, moe_error *err) {
  moe_status st = MOE_OK;
  if (ev) CUDA_TRY(cudaStreamWaitEvent(be->compute, ev->ev, 0), err);
cleanup:
  return st;
}

static moe_status cu_event_sync(moe_backend *be, moe_event *ev, moe_error *err) {
  moe_status st = MOE_OK;
  if (ev) CUDA_TRY(cudaEventSynchronize(ev->ev), err);
cleanup:
  return st;
}

static moe_status cu_compute_record(moe_backend *be, moe_event *ev, moe_error *err) {
  moe_status st = MOE_OK;
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

static int cu_event_done(moe_backend *be, moe_event *ev) {
  if (ev == NULL) return 1;
  cudaError_t e = cudaEventQuery(ev->ev);
  if (e == cudaErrorNotReady) return 0;
  if (e != cudaSuccess) (void)cudaGetLastError(); /* reported by the next checked call */
  return 1;
}

/* Small host inputs: ordered on the compute stream; returns once the host
 * buffer may be reused. */
static moe_status cu_upload(moe_backend *be, void *dst, const void *src, size_t bytes, moe_error *err) {
  moe_status st = MOE_OK;
  if (bytes == 0) return MOE_OK;
  CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, be->compute), err);
  CUDA_TRY(cudaStreamSynchronize(be->compute), err);
cleanup:
  return st;
}

static moe_status cu_download(moe_backend *be, void *dst, const void *src, size_t bytes, moe_error *err) {
  moe_status st = MOE_OK;
  if (bytes == 0) return MOE_OK;
  CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, be->compute), err);
  CUDA_TRY(cudaStreamSynchronize(be->compute), err);
cleanup:
  return st;
}

static moe_status cu_sync(moe_backend *be, moe_error *err) {
  moe_status st = MOE_OK;
  CUDA_TRY(cudaStreamSynchronize(be->copy), err);
  CUDA_TRY(cudaStreamSynchronize(be->compute), err);
cleanup:
  return st;
}

static size_t cu_workspace_bytes(moe_backend *be, size_t max_rows, size_t max_cols) {
  return max_rows * max_cols * 2; /* activations as f16/bf16 for cublasGemmEx */
}

static void cu_set_workspace(moe_backend *be, void *ptr, size_t bytes) {
  be->ws = ptr;
  be->ws_bytes = bytes;
}

/* ------------------------------------------------------------ math */

static moe_status cu_matmul(moe_backend *be, float *y, const float *x, size_t m,
                            const moe_weight *w, const moe_weight *bias, moe_error *err) {
  moe_status st = MOE_OK;
  const int n = (int)w->rows, k = (int)w->cols;
  const float one = 1.0f, zero = 0.0f;
  if (m == 0) return MOE_OK;
  /* Row-major y[m,n] = x[m,k] . W[n,k]^T is column-major y^T = W^T' ... :
   * C(n x m) = op(A = W as col-major k x n, transposed) . B (x as col-major k x m). */
  if (w->dtype == MOE_F32) {
    CUBLAS_TRY(cublasSgemm(be->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, (int)m, k, &one,
                           (const float *)w->data, k, x, k, &zero, y, n),
               err);
  } else {
    const size_t elems = m * (size_t)k;
    MOE_CHECK(be->ws != NULL && elems * 2 <= be->ws_bytes, err, MOE_ERR_INTERNAL,
              "cuda matmul: workspace of %zu bytes is too small for %zu x %d activations",
              be->ws_bytes, m, k);
    cudaDataType_t t;
    if (w->dtype == MOE_F16) {
      k_to_half<<<blocks_for(elems), kThreads, 0, be->compute>>>((__half *)be->ws, x, elems);
      t = CUDA_R_16F;
    } else {
      k_to_bf16<<<blocks_for(elems), kThreads, 0, be->compute>>>((__nv_bfloat16 *)be->ws, x, elems);
      t = CUDA_R_16BF;
    }
    KERNEL_CHECK(err);
    CUBLAS_TRY(cublasGemmEx(be->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, (int)m, k, &one, w->data, t, k,
                            be->ws, t, k, &zero, y, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
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
  if (m == 0) return MOE_OK;
  k_rmsnorm<<<(unsigned)m, kThreads, 0, be->compute>>>(y, x, g->data, (int)g->dtype, (int)g->cols, eps);
  KERNEL_CHECK(err);
cleanup:
  return st;
}

static moe_status cu_rope(moe_backend *be, float *x, size_t m, const int32_t *pos, int n_heads,
                          int head_dim, float theta, moe_error *err) {
  moe_status st = MOE_OK;
  const size_t n = m * (size_t)n_heads * (size_t)(head_dim / 2);
  if (n == 0) return MOE_OK;
  k_rope<<<blocks_for(n), kThreads, 0, be->compute>>>(x, m, pos, n_heads, head_dim, theta);
  KERNEL_CHECK(err);
cleanup:
  return st;
}

static moe_status cu_kv_store(moe_backend *be, float *kc, float *vc, const float *k, const float *v,
                              const moe_attn_shape *s, moe_error *err) {
  moe_status st = MOE_OK;
  const size_t n = (size_t)s->n_seq * s->n_new * s->n_kv_heads * s->head_dim;
  k_kv_store<<<blocks_for(n), kThreads, 0, be->compute>>>(kc, vc, k, v, *s);
  KERNEL_CHECK(err);
cleanup:
  return st;
}

static moe_status cu_attention(moe_backend *be, float *out, const float *q, const float *kc,
                               const float *vc, const moe_attn_shape *s, moe_error *err) {
  moe_status st = MOE_OK;
  const int threads = 128;
  const size_t smem = ((size_t)s->max_seq + threads) * sizeof(float);
  MOE_CHECK(smem <= 48 * 1024, err, MOE_ERR_UNSUPPORTED,
            "cuda attention: a context of %d tokens exceeds this kernel's shared-memory limit",
            s->max_seq);
  k_attention<<<(unsigned)(s->n_seq * s->n_new * s->n_heads), threads, smem, be->compute>>>(
      out, q, kc, vc, *s);
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
  if (m == 0) return MOE_OK;
  k_embed<<<blocks_for(m * t->cols), kThreads, 0, be->compute>>>(y, t->data, (int)t->dtype, ids, m,
                                                                  t->cols);
  KERNEL_CHECK(err);
cleanup:
  return st;
}

static moe_status cu_gather(moe_backend *be, float *dst, const float *src, const int32_t *rows,
                            size_t n, size_t dim, moe_error *err) {
  moe_status st = MOE_OK;
  if (n == 0) return MOE_OK;
  k_gather<<<blocks_for(n * dim), kThreads, 0, be->compute>>>(dst, src, rows, n, dim);
  KERNEL_CHECK(err);
cleanup:
  return st;
}

static moe_status cu_scatter_add(moe_backend *be, float *dst, const float *src, const int32_t *rows,
                                 const float *scale, size_t stride, bool sig, size_t n, size_t dim,
                                 moe_error *err) {
  moe_status st = MOE_OK;
  if (n == 0) return MOE_OK;
  k_scatter_add<<<blocks_for(n * dim), kThreads, 0, be->compute>>>(dst, src, rows, scale, stride,
                                                                    sig, n, dim);
  KERNEL_CHECK(err);
cleanup:
  return st;
}

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
