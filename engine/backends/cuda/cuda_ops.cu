/* The cuda backend's math ops: cuBLAS products and the launches of the
 * kernels in cuda_kernels.cu, all on the compute stream, each followed by
 * a launch check (KERNEL_CHECK). */
#include <math.h>

#include "cuda_internal.h"

/* Graph mode (cuda_graph.cu): each launch first joins the open capture,
 * folding its kind (and a matmul's shape) into the capture's signature;
 * nothing when graph mode is off. */
#define CAPTURE(tag) MOE_TRY(moe_cu_graph_op(be, (uint64_t)(tag), err))

/* A cuBLAS product's signature: its shape and dtype (cuBLAS may pick
 * another kernel, or a split, for another shape). */
static uint64_t matmul_tag(size_t m, int n, int k, moe_dtype dt) {
  return moe_cu_graph_tag(0x6d6d, (uint64_t)m, (uint64_t)(unsigned)n, (uint64_t)(unsigned)k,
                          (uint64_t)dt);
}

static moe_status cu_matmul(moe_backend *be, float *y, const float *x, size_t m,
                            const moe_weight *w, const moe_weight *bias, moe_error *err) {
  moe_status st = MOE_OK;
  const int n = (int)w->rows, k = (int)w->cols;
  const float one = 1.0f, zero = 0.0f;
  if (m == 0 || n == 0) return MOE_OK;
  /* Row-major y[m,n] = x[m,k] . W[n,k]^T is column-major y^T = W^T' ... :
   * C(n x m) = op(A = W as col-major k x n, transposed) . B (x as col-major k x m). */
  if (w->dtype == MOE_F32) {
    CAPTURE(matmul_tag(m, n, k, w->dtype));
    CUBLAS_TRY(cublasSgemm(be->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, (int)m, k, &one,
                           (const float *)w->data, k, x, k, &zero, y, n),
               err);
  } else {
    const size_t elems = m * (size_t)k;
    void *xs = NULL;
    MOE_TRY(moe_cu_scratch(be, elems * 2, &xs, err));
    cudaDataType_t t;
    if (w->dtype == MOE_F16) {
      CAPTURE(1);
      k_to_half<<<blocks_for(elems), kThreads, 0, be->compute>>>((__half *)xs, x, elems);
      t = CUDA_R_16F;
    } else {
      CAPTURE(2);
      k_to_bf16<<<blocks_for(elems), kThreads, 0, be->compute>>>((__nv_bfloat16 *)xs, x, elems);
      t = CUDA_R_16BF;
    }
    KERNEL_CHECK(err);
    CAPTURE(matmul_tag(m, n, k, w->dtype));
    CUBLAS_TRY(cublasGemmEx(be->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, (int)m, k, &one, w->data, t, k,
                            xs, t, k, &zero, y, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT),
               err);
  }
  if (bias && bias->data) {
    CAPTURE(3);
    k_add_bias<<<blocks_for(m * (size_t)n), kThreads, 0, be->compute>>>(y, bias->data,
                                                                        (int)bias->dtype, m, (size_t)n);
    KERNEL_CHECK(err);
  }
cleanup:
  return moe_cu_graph_fail(be, st);
}

static moe_status cu_rmsnorm(moe_backend *be, float *y, const float *x, size_t m,
                             const moe_weight *g, float eps, moe_error *err) {
  moe_status st = MOE_OK;
  if (m == 0 || g->cols == 0) return MOE_OK;
  CAPTURE(4);
  k_rmsnorm<<<(unsigned)m, kThreads, 0, be->compute>>>(y, x, g->data, (int)g->dtype, (int)g->cols, eps);
  KERNEL_CHECK(err);
cleanup:
  return moe_cu_graph_fail(be, st);
}

static moe_status cu_kv_store(moe_backend *be, float *kc, float *vc, const float *k, const float *v,
                              const moe_attn_shape *s, moe_error *err) {
  moe_status st = MOE_OK;
  const size_t n = (size_t)s->n_seq * s->n_new * s->n_kv_heads * s->head_dim;
  if (n == 0) return MOE_OK;
  CAPTURE(5);
  k_kv_store<<<blocks_for(n), kThreads, 0, be->compute>>>(kc, vc, k, v, *s);
  KERNEL_CHECK(err);
cleanup:
  return moe_cu_graph_fail(be, st);
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
    CAPTURE(6);
    k_attention_ex<<<(unsigned)blocks, kAttnThreads, smem, be->compute>>>(out, q, kc, vc, args);
  }
  KERNEL_CHECK(err);
cleanup:
  return moe_cu_graph_fail(be, st);
}

static moe_status cu_rope_ex(moe_backend *be, float *x, size_t m, const int32_t *pos,
                             const moe_rope_ex *r, moe_error *err) {
  moe_status st = MOE_OK;
  if (m == 0) return MOE_OK;
  MOE_TRY(moe_rope_ex_check(r, err));
  {
    const size_t n = m * (size_t)r->n_heads * (size_t)(r->rot_dim / 2);
    const rope_ex_args a = {r->n_heads, r->row_stride, r->head_stride, r->offset,
                            r->rot_dim,  r->interleaved, r->inv_freq, r->attn_scale,
                            r->theta};
    CAPTURE(7);
    k_rope_ex<<<blocks_for(n), kThreads, 0, be->compute>>>(x, m, pos, a);
  }
  KERNEL_CHECK(err);
cleanup:
  return moe_cu_graph_fail(be, st);
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
    CAPTURE(8);
    k_mla_store<<<blocks_for(n), kThreads, 0, be->compute>>>(ckv_cache, kpe_cache, ckv, kpe, *s);
    KERNEL_CHECK(err);
    CAPTURE(9);
    k_mla_attention<<<(unsigned)blocks, kAttnThreads, smem, be->compute>>>(
        out, q, ckv_cache, kpe_cache, kv_b->data, (int)kv_b->dtype, *s);
  }
  KERNEL_CHECK(err);
cleanup:
  return moe_cu_graph_fail(be, st);
}

static moe_status cu_unary(moe_backend *be, float *y, const float *x, size_t n, moe_unary_op op,
                           float alpha, moe_error *err) {
  moe_status st = MOE_OK;
  MOE_CHECK(op == MOE_UNARY_RELU || op == MOE_UNARY_SCALE, err, MOE_ERR_INVALID,
            "unary: unknown operation %d", (int)op);
  if (n == 0) return MOE_OK;
  CAPTURE(10);
  k_unary<<<blocks_for(n), kThreads, 0, be->compute>>>(y, x, n, (int)op, alpha);
  KERNEL_CHECK(err);
cleanup:
  return moe_cu_graph_fail(be, st);
}

static moe_status cu_router_topk_ex(moe_backend *be, int32_t *idx, float *wts, const float *logits,
                                    size_t m, int n, const moe_router_ex *r, moe_error *err) {
  moe_status st = MOE_OK;
  if (m == 0) return MOE_OK;
  MOE_TRY(moe_router_ex_check(r, n, err));
  {
    /* the rows' choice scores: the scratch (no allocation per call) */
    void *cbuf = NULL;
    MOE_TRY(moe_cu_scratch(be, m * (size_t)n * sizeof(float), &cbuf, err));
    CAPTURE(11);
    k_router_topk_ex<<<(unsigned)((m + 127) / 128), 128, 0, be->compute>>>(
        idx, wts, logits, m, n, r->k, (int)r->scoring,
        r->choice_bias && r->choice_bias->data ? r->choice_bias->data : NULL,
        r->choice_bias ? (int)r->choice_bias->dtype : 0, r->n_group, r->topk_group,
        (int)r->group_score, r->renorm, r->scale, r->mask_neg_inf, (float *)cbuf);
  }
  KERNEL_CHECK(err);
cleanup:
  return moe_cu_graph_fail(be, st);
}

static moe_status cu_swiglu(moe_backend *be, float *y, const float *g, const float *u, size_t n,
                           moe_error *err) {
  moe_status st = MOE_OK;
  if (n == 0) return MOE_OK;
  CAPTURE(12);
  k_swiglu<<<blocks_for(n), kThreads, 0, be->compute>>>(y, g, u, n);
  KERNEL_CHECK(err);
cleanup:
  return moe_cu_graph_fail(be, st);
}

static moe_status cu_add(moe_backend *be, float *y, const float *x, size_t n, moe_error *err) {
  moe_status st = MOE_OK;
  if (n == 0) return MOE_OK;
  CAPTURE(13);
  k_add<<<blocks_for(n), kThreads, 0, be->compute>>>(y, x, n);
  KERNEL_CHECK(err);
cleanup:
  return moe_cu_graph_fail(be, st);
}

static moe_status cu_embed(moe_backend *be, float *y, const moe_weight *t, const int32_t *ids,
                           size_t m, moe_error *err) {
  moe_status st = MOE_OK;
  if (m == 0 || t->cols == 0) return MOE_OK;
  CAPTURE(14);
  k_embed<<<blocks_for(m * t->cols), kThreads, 0, be->compute>>>(y, t->data, (int)t->dtype, ids, m,
                                                                  t->cols);
  KERNEL_CHECK(err);
cleanup:
  return moe_cu_graph_fail(be, st);
}

static moe_status cu_gather(moe_backend *be, float *dst, const float *src, const int32_t *rows,
                            size_t n, size_t dim, moe_error *err) {
  moe_status st = MOE_OK;
  if (n == 0 || dim == 0) return MOE_OK;
  CAPTURE(15);
  k_gather<<<blocks_for(n * dim), kThreads, 0, be->compute>>>(dst, src, rows, n, dim);
  KERNEL_CHECK(err);
cleanup:
  return moe_cu_graph_fail(be, st);
}

static moe_status cu_scatter_add(moe_backend *be, float *dst, const float *src, const int32_t *rows,
                                 const float *scale, size_t stride, bool sig, size_t n, size_t dim,
                                 moe_error *err) {
  moe_status st = MOE_OK;
  if (n == 0 || dim == 0) return MOE_OK;
  CAPTURE(16);
  k_scatter_add<<<blocks_for(n * dim), kThreads, 0, be->compute>>>(dst, src, rows, scale, stride,
                                                                    sig, n, dim);
  KERNEL_CHECK(err);
cleanup:
  return moe_cu_graph_fail(be, st);
}

static moe_status cu_argmax_rows(moe_backend *be, int32_t *idx, const float *x, size_t m, int n,
                                 moe_error *err) {
  moe_status st = MOE_OK;
  if (m == 0) return MOE_OK;
  MOE_CHECK(n >= 1 && m <= 0x7fffffffu, err, MOE_ERR_INVALID,
            "argmax_rows: n must be >= 1 (got %d), rows at most 2^31 - 1 (got %zu)", n, m);
  CAPTURE(17);
  k_argmax_rows<<<(unsigned)m, kThreads, 0, be->compute>>>(idx, x, n);
  KERNEL_CHECK(err);
cleanup:
  return moe_cu_graph_fail(be, st);
}

void moe_cu_math_ops(moe_backend_ops *o) {
  o->matmul = cu_matmul;
  o->rmsnorm = cu_rmsnorm;
  o->kv_store = cu_kv_store;
  o->swiglu = cu_swiglu;
  o->add = cu_add;
  o->embed = cu_embed;
  o->gather_rows = cu_gather;
  o->scatter_add_rows = cu_scatter_add;
  o->attention_ex = cu_attention_ex;
  o->unary = cu_unary;
  o->router_topk_ex = cu_router_topk_ex;
  o->rope_ex = cu_rope_ex;
  o->mla_attention = cu_mla_attention;
  o->argmax_rows = cu_argmax_rows;
}
