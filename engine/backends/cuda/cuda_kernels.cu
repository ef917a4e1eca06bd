/* The cuda backend's CUDA C kernels (all f32 activations; weights read in
 * their storage dtype through load_w).  The math ops that launch them are
 * in cuda_ops.cu. */
#include <math.h>

#include "cuda_internal.h"

__device__ __forceinline__ float load_w(const void *p, int dt, size_t i) {
  if (dt == MOE_F32) return ((const float *)p)[i];
  if (dt == MOE_F16) return __half2float(((const __half *)p)[i]);
  return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
}

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


__global__ void k_rope_ex(float *x, size_t m, const int32_t *pos, rope_ex_args r) {
  const int half = r.rot_dim / 2;
  const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= m * (size_t)r.n_heads * (size_t)half) return;
  const int i = (int)(idx % half);
  const size_t th = idx / half;
  const size_t t = th / r.n_heads, h = th % r.n_heads;
  const float f = r.inv_freq ? r.inv_freq[i] : 1.0f / powf(r.theta, (float)(2 * i) / (float)r.rot_dim);
  const float ang = (float)pos[t] * f;
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

/* The group limit of k_router_topk_ex: keeps the topk_group best of
 * n_group groups (max, or sum of the top two), c elsewhere becomes 0 or
 * -inf. */
static __device__ void group_limit(float *c, int n, int n_group, int topk_group,
                                   int group_score, bool mask_neg_inf) {
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

/* Routing (backend.h, moe_router_ex), one thread per row, the same
 * definition as the cpu backend: scores, choice = score + bias (scoring
 * SOFTMAX_LOGITS, the legacy router: the biased logits, whose softmax the
 * scores are), group limit (c outside the kept groups = 0 or -inf), top-k
 * on c with ties to the lower index, weights = scores (renormalised,
 * scaled). */
__global__ void k_router_topk_ex(int32_t *idx, float *wts, const float *logits, size_t m, int n,
                                 int k, int scoring, const void *bias, int bdt, int n_group,
                                 int topk_group, int group_score, bool renorm, float scale,
                                 bool mask_neg_inf, float *cbuf) {
  size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= m) return;
  const float *l = logits + t * n;
  float *c = cbuf + t * n; /* the row's choice scores */
  const bool on_logits = scoring == MOE_SCORING_SOFTMAX_LOGITS;
  float mx = -INFINITY, sum = 0.0f;
  if (scoring != MOE_SCORING_SIGMOID) {
    for (int e = 0; e < n; e++) {
      c[e] = on_logits ? l[e] + (bias ? load_w(bias, bdt, e) : 0.0f) : l[e];
      mx = fmaxf(mx, c[e]);
    }
    for (int e = 0; e < n; e++) sum += expf(c[e] - mx);
  }
  if (!on_logits)
    for (int e = 0; e < n; e++) {
      const float s = scoring == MOE_SCORING_SOFTMAX ? expf(l[e] - mx) / sum : 1.0f / (1.0f + expf(-l[e]));
      c[e] = s + (bias ? load_w(bias, bdt, e) : 0.0f);
    }
  if (n_group > 1) group_limit(c, n, n_group, topk_group, group_score, mask_neg_inf);
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
    if (scoring == MOE_SCORING_SIGMOID)
      tw[j] = 1.0f / (1.0f + expf(-l[best]));
    else
      tw[j] = expf((on_logits ? c[best] : l[best]) - mx) / sum;
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
