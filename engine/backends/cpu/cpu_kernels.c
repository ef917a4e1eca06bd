/* The cpu backend's math ops: products through OpenBLAS and fused 16-bit
 * kernels split over the math threads, attention, RoPE, routing and the
 * element-wise ops, all issued on the calling thread (the compute stream
 * is synchronous).  The rest of the backend is cpu_backend.c. */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "moe/model.h"
#include "cpu_internal.h"

/* y[m, rows] (row stride ldy) = x[m, k] . w[rows, k]^T, all f32, on the
 * calling thread (OpenBLAS runs single-threaded: the backend's own math
 * threads split a product's weight rows, see gemm_task).
 *
 * OpenBLAS's sgemm is slow when the x side is thin (it packs the whole
 * weight for a handful of rows), and MoE experts see thin inputs: a decode
 * step gives each expert a few tokens.  So: one or two rows go through
 * sgemv (one weight pass each); up to CPU_SMALL_M rows through the
 * transposed product w . x^T, whose thin side is the packed one, then a
 * transpose (tbuf: rows x m floats); larger inputs through plain sgemm.
 * The choice depends only on m, so the same inputs always take the same
 * path (same bits). */
static void blas_rows(float *y, size_t ldy, const float *x, size_t m, const float *w, size_t rows,
                      size_t k, float *tbuf) {
  if (rows == 0 || m == 0) return;
  if (m <= 2) {
    for (size_t i = 0; i < m; i++)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)rows, (int)k, 1.0f, w, (int)k, x + i * k, 1,
                  0.0f, y + i * ldy, 1);
  } else if (m <= CPU_SMALL_M) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)m, (int)k, 1.0f, w, (int)k,
                x, (int)k, 0.0f, tbuf, (int)m);
    for (size_t i = 0; i < m; i++)
      for (size_t r = 0; r < rows; r++) y[i * ldy + r] = tbuf[r * m + i];
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)rows, (int)k, 1.0f, x, (int)k,
                w, (int)k, 0.0f, y, (int)ldy);
  }
}

/* A product through OpenBLAS split by weight rows over the math threads.
 * The rows form blocks whose size depends on k alone (about 512 KiB of f32
 * weights, or 256 KiB of converted 16-bit ones, which stay in the core's
 * cache while they are multiplied), and task t of T takes a contiguous
 * share of the blocks: the BLAS calls are the same at any thread count,
 * so are the bits (OpenBLAS's own bits depend on the shape of each call).
 * 16-bit weights are converted a block at a time into the task's own
 * buffer, next to its product. */
typedef struct gemm_job {
  moe_backend *be;
  float *y;
  size_t ldy;
  const float *x;
  size_t m;
  const void *w;
  moe_dtype dt;
  size_t n, k, block;
  int tasks;
} gemm_job;

static size_t gemm_block(moe_dtype dt, size_t k) {
  size_t b = (dt == MOE_F32 ? (size_t)1 << 17 : (size_t)1 << 16) / (k ? k : 1) / 16 * 16;
  return b < 16 ? 16 : b;
}

static void gemm_task(void *ctx, int t) {
  const gemm_job *j = ctx;
  task_buf *b = &j->be->tb[t];
  const size_t nb = (j->n + j->block - 1) / j->block;
  const size_t b0 = nb * (size_t)t / (size_t)j->tasks, b1 = nb * ((size_t)t + 1) / (size_t)j->tasks;
  const size_t es = moe_dtype_size(j->dt);
  for (size_t bi = b0; bi < b1; bi++) {
    const size_t c0 = bi * j->block, rows = j->n - c0 < j->block ? j->n - c0 : j->block;
    const float *w = (const float *)j->w + c0 * j->k;
    if (j->dt != MOE_F32) {
      moe_cpu_half_convert(j->be->half, b->conv, (const char *)j->w + c0 * j->k * es, j->dt,
                           rows * j->k);
      w = b->conv;
    }
    blas_rows(j->y + c0, j->ldy, j->x, j->m, w, rows, j->k, b->tbuf);
  }
}

static moe_status reserve(float **p, size_t *cap, size_t n, moe_error *err) {
  if (n <= *cap) return MOE_OK;
  float *q = realloc(*p, n * sizeof(float));
  if (q == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "cpu backend: gemm buffer of %zu floats", n);
  *p = q;
  *cap = n;
  return MOE_OK;
}

/* y[m, n] (row stride ldy) = x[m, k] . w[n, k]^T for f32 weights, or 16-bit
 * weights through conversion (the wide inputs' path, and the portable
 * path's always). */
static moe_status gemm_split(moe_backend *be, float *y, size_t ldy, const float *x, size_t m,
                             const void *w, moe_dtype dt, size_t n, size_t k, moe_error *err) {
  if (m == 0 || n == 0) return MOE_OK;
  const size_t block = gemm_block(dt, k), nb = (n + block - 1) / block;
  const int tasks = m * n * k >= ((size_t)1 << 17) && nb >= (size_t)be->threads ? be->threads : 1;
  for (int t = 0; t < tasks; t++) {
    const size_t span = block < n ? block : n;
    moe_status st = reserve(&be->tb[t].tbuf, &be->tb[t].tbuf_cap,
                            m > 2 && m <= CPU_SMALL_M ? span * m : 0, err);
    if (st == MOE_OK && dt != MOE_F32)
      st = reserve(&be->tb[t].conv, &be->tb[t].conv_cap, span * k, err);
    if (st != MOE_OK) return st;
  }
  gemm_job j = {be, y, ldy, x, m, w, dt, n, k, block, tasks};
  moe_cpu_pool_run(&be->pool, gemm_task, &j, tasks);
  return MOE_OK;
}

/* ---- fused products (16-bit weights, thin f32 inputs): jobs for the pool */

/* Up to this many input rows, the fused product: 16-bit weights up to 8
 * (two weight passes beat converting), f32 up to 4 (one weight pass;
 * wider inputs go to OpenBLAS, which reads the weights once at any width) */
#define CPU_FUSED_M 8
#define CPU_FUSED_M_F32 4

typedef struct fused_job {
  moe_backend *be;
  float *y;
  const float *x;
  size_t m;
  const moe_weight *w;
  size_t n, k;
} fused_job;

/* Tasks for n rows of k: one per thread when the product is big enough to
 * pay for the hand-off, else one. */
static int row_tasks(const moe_backend *be, size_t n, size_t k) {
  return n * k >= ((size_t)1 << 16) && n >= (size_t)be->threads ? be->threads : 1;
}

static void fused_rows_task(void *ctx, int t) {
  const fused_job *j = ctx;
  const size_t T = (size_t)row_tasks(j->be, j->n, j->k);
  const size_t r0 = j->n * (size_t)t / T, r1 = j->n * ((size_t)t + 1) / T;
  moe_cpu_fused_rows(j->be->half, j->y, j->n, j->x, j->m, j->w->data, j->w->dtype, r0, r1, j->k);
}

moe_status moe_cpu_matmul(moe_backend *be, float *y, const float *x, size_t m,
                             const moe_weight *w, const moe_weight *bias, moe_error *err) {
  const int n = (int)w->rows, k = (int)w->cols;
  moe_status st = MOE_OK;
  if (m <= (w->dtype == MOE_F32 ? CPU_FUSED_M_F32 : CPU_FUSED_M) &&
      be->half != MOE_CPU_HALF_PORTABLE) {
    /* thin input (decode): products straight from the weights as stored,
     * rows split across the math threads */
    fused_job j = {be, y, x, m, w, (size_t)n, (size_t)k};
    moe_cpu_pool_run(&be->pool, fused_rows_task, &j, row_tasks(be, (size_t)n, (size_t)k));
  } else {
    st = gemm_split(be, y, (size_t)n, x, m, w->data, w->dtype, (size_t)n, (size_t)k, err);
    if (st != MOE_OK) return st;
  }
  if (bias && bias->data) {
    float tmp[256];
    for (int c0 = 0; c0 < n; c0 += 256) {
      int c = n - c0 < 256 ? n - c0 : 256;
      moe_convert_to_f32(tmp, (const char *)bias->data + (size_t)c0 * moe_dtype_size(bias->dtype),
                         bias->dtype, (size_t)c);
      for (size_t i = 0; i < m; i++) {
        float *row = y + i * (size_t)n + c0;
        for (int j = 0; j < c; j++) row[j] += tmp[j];
      }
    }
  }
  return MOE_OK;
}

moe_status moe_cpu_rmsnorm(moe_backend *be, float *y, const float *x, size_t m,
                              const moe_weight *g, float eps, moe_error *err) {
  const size_t n = g->cols;
  moe_status st = moe_cpu_scratch_reserve(be, n, err);
  if (st != MOE_OK) return st;
  moe_convert_to_f32(be->scratch, g->data, g->dtype, n);
  for (size_t i = 0; i < m; i++) {
    const float *xr = x + i * n;
    float *yr = y + i * n;
    float ss = 0.0f;
    for (size_t j = 0; j < n; j++) ss += xr[j] * xr[j];
    float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (size_t j = 0; j < n; j++) yr[j] = be->scratch[j] * (xr[j] * inv);
  }
  return MOE_OK;
}

/* rope_ex (backend.h): the caller's frequencies, either pairing, cos and
 * sin scaled by attn_scale. */
moe_status moe_cpu_rope_ex(moe_backend *be, float *x, size_t m, const int32_t *pos,
                              const moe_rope_ex *r, moe_error *err) {
  if (m == 0) return MOE_OK;
  moe_status st = moe_rope_ex_check(r, err);
  if (st != MOE_OK) return st;
  const int half = r->rot_dim / 2;
  for (size_t t = 0; t < m; t++)
    for (int i = 0; i < half; i++) {
      const float f = r->inv_freq ? r->inv_freq[i]
                                  : 1.0f / powf(r->theta, (float)(2 * i) / (float)r->rot_dim);
      const float ang = (float)pos[t] * f;
      const float c = cosf(ang) * r->attn_scale, sn = sinf(ang) * r->attn_scale;
      for (int h = 0; h < r->n_heads; h++) {
        float *v = x + t * r->row_stride + (size_t)h * r->head_stride + (size_t)r->offset;
        float *pa = r->interleaved ? v + 2 * i : v + i;
        float *pb = r->interleaved ? v + 2 * i + 1 : v + i + half;
        const float a = *pa, b = *pb;
        *pa = a * c - b * sn;
        *pb = b * c + a * sn;
      }
    }
  return MOE_OK;
}

/* mla_attention (backend.h) in the absorbed form: per query and head,
 * q_lat = W_k,h^T q_nope (kv_rank), scores scale * (q_lat . c_j + q_pe .
 * k_pe_j), o_lat = sum_j p_j c_j, out = W_v,h o_lat.  kv_b is converted
 * to f32 once per call. */
moe_status moe_cpu_mla_attention(moe_backend *be, float *out, const float *q, float *ckv_cache,
                                    float *kpe_cache, const float *ckv, const float *kpe,
                                    const moe_weight *kv_b, const moe_mla_shape *s,
                                    moe_error *err) {
  if ((size_t)s->n_seq * (size_t)s->n_new == 0) return MOE_OK;
  moe_status st = moe_mla_check(s, kv_b, err);
  if (st != MOE_OK) return st;
  const size_t R = (size_t)s->kv_rank, P = (size_t)s->rope_dim, N = (size_t)s->nope_dim,
               V = (size_t)s->v_dim, H = (size_t)s->n_heads, S = (size_t)s->max_seq;
  const size_t W = H * (N + V) * R, nk_max = (size_t)s->pos0 + (size_t)s->n_new;
  /* f32 weights are read in place; 16-bit ones converted once per call */
  const bool convert = kv_b->dtype != MOE_F32;
  st = moe_cpu_scratch_reserve(be, (convert ? W : 0) + 2 * R + nk_max, err);
  if (st != MOE_OK) return st;
  float *qlat = be->scratch + (convert ? W : 0), *olat = qlat + R, *sc = olat + R;
  const float *w = convert ? be->scratch : kv_b->data;
  if (convert) moe_convert_to_f32(be->scratch, kv_b->data, kv_b->dtype, W);
  for (int b = 0; b < s->n_seq; b++)
    for (int t = 0; t < s->n_new; t++) {
      const size_t src = (size_t)b * (size_t)s->n_new + (size_t)t;
      const size_t dst = (size_t)b * S + (size_t)s->pos0 + (size_t)t;
      memcpy(ckv_cache + dst * R, ckv + src * R, R * sizeof(float));
      memcpy(kpe_cache + dst * P, kpe + src * P, P * sizeof(float));
    }
  for (int b = 0; b < s->n_seq; b++)
    for (int t = 0; t < s->n_new; t++) {
      const size_t row = (size_t)b * (size_t)s->n_new + (size_t)t;
      const size_t nk = (size_t)s->pos0 + (size_t)t + 1;
      const float *cb = ckv_cache + (size_t)b * S * R, *pb = kpe_cache + (size_t)b * S * P;
      for (size_t h = 0; h < H; h++) {
        const float *qh = q + (row * H + h) * (N + P), *wk = w + h * (N + V) * R,
                    *wv = wk + N * R;
        for (size_t r = 0; r < R; r++) qlat[r] = 0.0f;
        for (size_t n = 0; n < N; n++)
          for (size_t r = 0; r < R; r++) qlat[r] += qh[n] * wk[n * R + r];
        float mx = -INFINITY;
        for (size_t j = 0; j < nk; j++) {
          float d = 0.0f;
          for (size_t r = 0; r < R; r++) d += qlat[r] * cb[j * R + r];
          for (size_t i = 0; i < P; i++) d += qh[N + i] * pb[j * P + i];
          sc[j] = d * s->scale;
          if (sc[j] > mx) mx = sc[j];
        }
        float sum = 0.0f;
        for (size_t j = 0; j < nk; j++) sum += sc[j] = expf(sc[j] - mx);
        const float inv = 1.0f / sum;
        for (size_t r = 0; r < R; r++) olat[r] = 0.0f;
        for (size_t j = 0; j < nk; j++) {
          const float p = sc[j] * inv;
          for (size_t r = 0; r < R; r++) olat[r] += p * cb[j * R + r];
        }
        float *oh = out + (row * H + h) * V;
        for (size_t v = 0; v < V; v++) {
          float o = 0.0f;
          for (size_t r = 0; r < R; r++) o += wv[v * R + r] * olat[r];
          oh[v] = o;
        }
      }
    }
  return MOE_OK;
}

static size_t cache_index(const moe_attn_shape *s, int seq, int kvh, int pos) {
  return (((size_t)seq * (size_t)s->n_kv_heads + (size_t)kvh) * (size_t)s->max_seq + (size_t)pos) *
         (size_t)s->head_dim;
}

moe_status moe_cpu_kv_store(moe_backend *be, float *kc, float *vc, const float *k,
                               const float *v, const moe_attn_shape *s, moe_error *err) {
  const size_t hd = (size_t)s->head_dim, row = (size_t)s->n_kv_heads * hd;
  for (int b = 0; b < s->n_seq; b++)
    for (int t = 0; t < s->n_new; t++) {
      size_t src = ((size_t)b * (size_t)s->n_new + (size_t)t) * row;
      for (int h = 0; h < s->n_kv_heads; h++) {
        size_t dst = cache_index(s, b, h, s->pos0 + t);
        memcpy(kc + dst, k + src + (size_t)h * hd, hd * sizeof(float));
        memcpy(vc + dst, v + src + (size_t)h * hd, hd * sizeof(float));
      }
    }
  return MOE_OK;
}

/* One (sequence, query, head) of attention_ex, scores in sc. */
static void attend_one(float *out, const float *q, const float *kc, const float *vc,
                       const moe_attn_ex *a, const float *bias, int b, int t, int h, float *sc) {
  const int hd = a->head_dim, group = a->n_heads / a->n_kv_heads;
  const moe_attn_shape s = {a->n_seq, a->n_q, a->q_pos0, a->max_seq,
                            a->n_heads, a->n_kv_heads, a->head_dim};
  const size_t nh = (size_t)a->n_heads;
  const int p = a->q_pos0 + t;
  const int nk = a->causal && p + 1 < a->n_keys ? p + 1 : a->n_keys;
  const size_t row = ((size_t)b * (size_t)a->n_q + (size_t)t) * nh * (size_t)hd;
  const float *qh = q + row + (size_t)h * (size_t)hd;
  float *oh = out + row + (size_t)h * (size_t)hd;
  const float *kb = kc + cache_index(&s, b, h / group, 0);
  const float *vb = vc + cache_index(&s, b, h / group, 0);
  float mx = -INFINITY;
  for (int j = 0; j < nk; j++) {
    float d = 0.0f;
    const float *kj = kb + (size_t)j * (size_t)hd;
    for (int i = 0; i < hd; i++) d += qh[i] * kj[i];
    sc[j] = d * a->scale;
    if (bias) sc[j] += bias[(size_t)a->buckets[j - p + a->bucket_offset] * nh + (size_t)h];
    if (sc[j] > mx) mx = sc[j];
  }
  float sum = 0.0f;
  for (int j = 0; j < nk; j++) {
    sc[j] = expf(sc[j] - mx);
    sum += sc[j];
  }
  const float inv = nk > 0 ? 1.0f / sum : 0.0f;
  memset(oh, 0, (size_t)hd * sizeof(float));
  for (int j = 0; j < nk; j++) {
    const float wgt = sc[j] * inv;
    const float *vj = vb + (size_t)j * (size_t)hd;
    for (int i = 0; i < hd; i++) oh[i] += wgt * vj[i];
  }
}

/* Queries [t0, t1) of sequence b, head h, through two BLAS products:
 * S = scale Q K^T over the keys any of them sees, the bias, the causal
 * mask and the softmax row by row (masked keys get weight 0), then
 * out = S V.  S: (t1 - t0) x n_keys floats. */
static void attend_block(float *out, const float *q, const float *kc, const float *vc,
                         const moe_attn_ex *a, const float *bias, int b, int h, int t0, int t1,
                         float *S) {
  const int hd = a->head_dim, group = a->n_heads / a->n_kv_heads, nq = t1 - t0;
  const moe_attn_shape s = {a->n_seq, a->n_q, a->q_pos0, a->max_seq,
                            a->n_heads, a->n_kv_heads, a->head_dim};
  const size_t nh = (size_t)a->n_heads, ld = nh * (size_t)hd;
  const int p_last = a->q_pos0 + t1 - 1;
  const int nk = a->causal && p_last + 1 < a->n_keys ? p_last + 1 : a->n_keys;
  const size_t row0 = (size_t)b * (size_t)a->n_q + (size_t)t0;
  const float *Q = q + row0 * ld + (size_t)h * (size_t)hd;
  float *O = out + row0 * ld + (size_t)h * (size_t)hd;
  if (nk <= 0) {
    for (int i = 0; i < nq; i++) memset(O + (size_t)i * ld, 0, (size_t)hd * sizeof(float));
    return;
  }
  const float *K = kc + cache_index(&s, b, h / group, 0), *V = vc + cache_index(&s, b, h / group, 0);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, hd, a->scale, Q, (int)ld, K, hd,
              0.0f, S, nk);
  for (int i = 0; i < nq; i++) {
    float *r = S + (size_t)i * (size_t)nk;
    const int p = a->q_pos0 + t0 + i;
    const int vis = a->causal && p + 1 < a->n_keys ? p + 1 : a->n_keys;
    float mx = -INFINITY;
    for (int j = 0; j < vis; j++) {
      if (bias) r[j] += bias[(size_t)a->buckets[j - p + a->bucket_offset] * nh + (size_t)h];
      if (r[j] > mx) mx = r[j];
    }
    float sum = 0.0f;
    for (int j = 0; j < vis; j++) sum += r[j] = expf(r[j] - mx);
    const float inv = vis > 0 ? 1.0f / sum : 0.0f;
    for (int j = 0; j < vis; j++) r[j] *= inv;
    for (int j = vis; j < nk; j++) r[j] = 0.0f;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hd, nk, 1.0f, S, nk, V, hd, 0.0f, O,
              (int)ld);
}

/* attention_ex split over the math threads.  Few queries per sequence
 * (decode): one (sequence, query, head) at a time in plain C.  Many
 * (prefill, encoders): blocks of CPU_ATTN_QBLOCK queries of one head
 * through BLAS.  Task t takes a contiguous share of the units; each unit
 * is computed the same way at any thread count. */
#define CPU_ATTN_BLAS_Q 8
#define CPU_ATTN_QBLOCK 64
typedef struct attn_job {
  moe_backend *be;
  float *out;
  const float *q, *kc, *vc, *bias;
  const moe_attn_ex *a;
  int tasks;
  bool blocks;
} attn_job;

static void attn_task(void *ctx, int t) {
  const attn_job *j = ctx;
  const moe_attn_ex *a = j->a;
  const size_t nqb = ((size_t)a->n_q + CPU_ATTN_QBLOCK - 1) / CPU_ATTN_QBLOCK;
  const size_t per = j->blocks ? nqb : (size_t)a->n_q;
  const size_t total = (size_t)a->n_seq * per * (size_t)a->n_heads;
  const size_t i0 = total * (size_t)t / (size_t)j->tasks, i1 = total * ((size_t)t + 1) / (size_t)j->tasks;
  for (size_t i = i0; i < i1; i++) {
    const int h = (int)(i % (size_t)a->n_heads), u = (int)(i / (size_t)a->n_heads % per);
    const int b = (int)(i / ((size_t)a->n_heads * per));
    if (j->blocks) {
      const int t0 = u * CPU_ATTN_QBLOCK, t1 = t0 + CPU_ATTN_QBLOCK < a->n_q ? t0 + CPU_ATTN_QBLOCK : a->n_q;
      attend_block(j->out, j->q, j->kc, j->vc, a, j->bias, b, h, t0, t1, j->be->tb[t].sc);
    } else {
      attend_one(j->out, j->q, j->kc, j->vc, a, j->bias, b, u, h, j->be->tb[t].sc);
    }
  }
}

moe_status moe_cpu_attention_ex(moe_backend *be, float *out, const float *q, const float *kc,
                                   const float *vc, const moe_attn_ex *a, moe_error *err) {
  const bool biased = a->rel_bias && a->rel_bias->data;
  const size_t nb = biased ? a->rel_bias->rows : 0, nh = (size_t)a->n_heads;
  moe_status st = moe_cpu_scratch_reserve(be, nb * nh, err);
  if (st != MOE_OK) return st;
  if (biased) moe_convert_to_f32(be->scratch, a->rel_bias->data, a->rel_bias->dtype, nb * nh);
  const bool blocks = a->n_q >= CPU_ATTN_BLAS_Q;
  const size_t triples = (size_t)a->n_seq * (size_t)a->n_q * nh;
  const double work = (double)triples * (double)a->n_keys * (double)a->head_dim;
  const size_t units = blocks ? (size_t)a->n_seq * nh * (((size_t)a->n_q + CPU_ATTN_QBLOCK - 1) / CPU_ATTN_QBLOCK)
                              : triples;
  const int tasks = work >= 1 << 18 && units >= (size_t)be->threads ? be->threads : 1;
  const size_t sc = (blocks ? (size_t)CPU_ATTN_QBLOCK : 1) * ((size_t)a->n_keys + 1);
  for (int t = 0; t < tasks; t++) {
    st = reserve(&be->tb[t].sc, &be->tb[t].sc_cap, sc, err);
    if (st != MOE_OK) return st;
  }
  attn_job j = {be, out, q, kc, vc, biased ? be->scratch : NULL, a, tasks, blocks};
  moe_cpu_pool_run(&be->pool, attn_task, &j, tasks);
  return MOE_OK;
}

moe_status moe_cpu_unary(moe_backend *be, float *y, const float *x, size_t n, moe_unary_op op,
                            float alpha, moe_error *err) {
  switch (op) {
    case MOE_UNARY_RELU:
      for (size_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
      return MOE_OK;
    case MOE_UNARY_SCALE:
      for (size_t i = 0; i < n; i++) y[i] = alpha * x[i];
      return MOE_OK;
  }
  return MOE_FAIL(err, MOE_ERR_INVALID, "unary: unknown operation %d", (int)op);
}

/* One row's scores sc and choice scores c (backend.h, moe_router_ex); b
 * is the choice bias in f32 (zeros when absent). */
static void router_scores(const float *l, const float *b, int n, moe_router_scoring scoring,
                          float *sc, float *c) {
  if (scoring == MOE_SCORING_SIGMOID) {
    for (int e = 0; e < n; e++) sc[e] = 1.0f / (1.0f + expf(-l[e]));
    for (int e = 0; e < n; e++) c[e] = sc[e] + b[e];
    return;
  }
  /* softmax of the logits, or (SOFTMAX_LOGITS) of the biased logits,
   * which are then the choice scores */
  const bool on_logits = scoring == MOE_SCORING_SOFTMAX_LOGITS;
  float mx = -INFINITY, sum = 0.0f;
  for (int e = 0; e < n; e++) {
    c[e] = on_logits ? l[e] + b[e] : l[e];
    mx = c[e] > mx ? c[e] : mx;
  }
  for (int e = 0; e < n; e++) sum += sc[e] = expf(c[e] - mx);
  for (int e = 0; e < n; e++) sc[e] /= sum;
  if (!on_logits)
    for (int e = 0; e < n; e++) c[e] = sc[e] + b[e];
}

/* The group limit: keeps the topk_group best of G groups of size, c of
 * every expert elsewhere becomes 0 (or -inf). */
static void router_groups(const moe_router_ex *r, int G, int size, float *c) {
  bool keep[MOE_ROUTER_MAX_N];
  float gv[MOE_ROUTER_MAX_N];
  for (int g = 0; g < G; g++) {
    const float *cg = c + (size_t)g * (size_t)size;
    float a = -INFINITY, a2 = -INFINITY;
    for (int e = 0; e < size; e++) {
      if (cg[e] > a) a2 = a, a = cg[e];
      else if (cg[e] > a2) a2 = cg[e];
    }
    gv[g] = r->group_score == MOE_GROUP_MAX ? a : a + a2;
    keep[g] = false;
  }
  for (int j = 0; j < r->topk_group; j++) {
    int best = -1;
    for (int g = 0; g < G; g++)
      if (!keep[g] && (best < 0 || gv[g] > gv[best])) best = g;
    keep[best] = true;
  }
  const float fill = r->mask_neg_inf ? -INFINITY : 0.0f;
  for (int e = 0; e < G * size; e++)
    if (!keep[e / size]) c[e] = fill;
}

/* ti = the k experts of largest c, in order, ties to the lower index. */
static void router_pick(const float *c, int n, int k, int32_t *ti) {
  for (int j = 0; j < k; j++) {
    int best = -1;
    for (int e = 0; e < n; e++) {
      bool taken = false;
      for (int q = 0; q < j; q++) taken |= ti[q] == e;
      if (!taken && (best < 0 || c[e] > c[best])) best = e;
    }
    ti[j] = best;
  }
}

/* Routing (backend.h, moe_router_ex), the reference; the legacy
 * router_topk is its SOFTMAX_LOGITS scoring (moe_backend_router_topk). */
moe_status moe_cpu_router_topk_ex(moe_backend *be, int32_t *idx, float *wts, const float *logits,
                                  size_t m, int n, const moe_router_ex *r, moe_error *err) {
  if (m == 0) return MOE_OK;
  moe_status st = moe_router_ex_check(r, n, err);
  if (st != MOE_OK) return st;
  st = moe_cpu_scratch_reserve(be, 3 * (size_t)n, err);
  if (st != MOE_OK) return st;
  float *sc = be->scratch, *c = sc + n, *b = c + n;
  if (r->choice_bias && r->choice_bias->data)
    moe_convert_to_f32(b, r->choice_bias->data, r->choice_bias->dtype, (size_t)n);
  else
    memset(b, 0, (size_t)n * sizeof(float));
  const int G = r->n_group > 1 ? r->n_group : 1;
  for (size_t t = 0; t < m; t++) {
    router_scores(logits + t * (size_t)n, b, n, r->scoring, sc, c);
    if (G > 1) router_groups(r, G, n / G, c);
    int32_t *ti = idx + t * (size_t)r->k;
    float *tw = wts + t * (size_t)r->k, tsum = 0.0f;
    router_pick(c, n, r->k, ti);
    for (int j = 0; j < r->k; j++) tsum += tw[j] = sc[ti[j]];
    for (int j = 0; j < r->k; j++) tw[j] = (r->renorm ? tw[j] / (tsum + 1e-20f) : tw[j]) * r->scale;
  }
  return MOE_OK;
}

/* swiglu over ranges of elements split across the math threads (element
 * by element: the same bits at any thread count). */
typedef struct swiglu_job {
  float *y;
  const float *g, *u;
  size_t n;
  int tasks;
} swiglu_job;

static void swiglu_task(void *ctx, int t) {
  const swiglu_job *j = ctx;
  const size_t i0 = j->n * (size_t)t / (size_t)j->tasks, i1 = j->n * ((size_t)t + 1) / (size_t)j->tasks;
  for (size_t i = i0; i < i1; i++) j->y[i] = j->g[i] / (1.0f + expf(-j->g[i])) * j->u[i];
}

moe_status moe_cpu_swiglu(moe_backend *be, float *y, const float *g, const float *u, size_t n,
                             moe_error *err) {
  swiglu_job j = {y, g, u, n, n >= ((size_t)1 << 16) ? be->threads : 1};
  moe_cpu_pool_run(&be->pool, swiglu_task, &j, j.tasks);
  return MOE_OK;
}

moe_status moe_cpu_add(moe_backend *be, float *y, const float *x, size_t n, moe_error *err) {
  for (size_t i = 0; i < n; i++) y[i] += x[i];
  return MOE_OK;
}

moe_status moe_cpu_embed(moe_backend *be, float *y, const moe_weight *table, const int32_t *ids,
                            size_t m, moe_error *err) {
  const size_t dim = table->cols, esz = moe_dtype_size(table->dtype);
  for (size_t i = 0; i < m; i++) {
    if (ids[i] < 0 || (size_t)ids[i] >= table->rows)
      return MOE_FAIL(err, MOE_ERR_INVALID, "token id %d is outside the vocabulary (%zu)",
                      (int)ids[i], table->rows);
    moe_convert_to_f32(y + i * dim, (const char *)table->data + (size_t)ids[i] * dim * esz,
                       table->dtype, dim);
  }
  return MOE_OK;
}

moe_status moe_cpu_gather_rows(moe_backend *be, float *dst, const float *src,
                                  const int32_t *rows, size_t n, size_t dim, moe_error *err) {
  for (size_t i = 0; i < n; i++) memcpy(dst + i * dim, src + (size_t)rows[i] * dim, dim * sizeof(float));
  return MOE_OK;
}

moe_status moe_cpu_scatter_add_rows(moe_backend *be, float *dst, const float *src,
                                       const int32_t *rows, const float *scale,
                                       size_t scale_stride, bool scale_sigmoid, size_t n,
                                       size_t dim, moe_error *err) {
  for (size_t i = 0; i < n; i++) {
    float s = scale[i * scale_stride];
    if (scale_sigmoid) s = 1.0f / (1.0f + expf(-s));
    float *d = dst + (size_t)rows[i] * dim;
    const float *x = src + i * dim;
    for (size_t j = 0; j < dim; j++) d[j] += s * x[j];
  }
  return MOE_OK;
}

/* argmax_rows (backend.h): the engine's own sequential scan (moe_argmax),
 * row by row, so the two agree by construction. */
moe_status moe_cpu_argmax_rows(moe_backend *be, int32_t *idx, const float *x, size_t m, int n,
                                  moe_error *err) {
  if (m > 0 && n < 1) return MOE_FAIL(err, MOE_ERR_INVALID, "argmax_rows: n must be >= 1, got %d", n);
  for (size_t r = 0; r < m; r++) idx[r] = moe_argmax(x + r * (size_t)n, n);
  return MOE_OK;
}
