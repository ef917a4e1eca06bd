/* The backend table (engine/include/moe/backend.h): validation, the op
 * query (moe_backend_supports), tables built against the older ABI 1.0
 * header, and the legacy ops' adapters over the _ex methods, on every
 * compiled-in backend whose device is present (see conformance_util.h). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/device.h"
#include "moe/backend.h"
#include "moe/dtype.h"
#include "conformance_util.h"
#include "testutil.h"

/* ---- the legacy ops: one adapter each over the _ex methods (backend.h) */

/* The legacy rope, attention and router of a backend through the adapters
 * equal its _ex methods called directly with the arguments backend.h says
 * the adapters pass, bit for bit; and the legacy router ranks on the
 * biased logits, never on rounded probabilities. */
START_TEST(legacy_adapters_are_the_ex_ops) {
  moe_error err = {0};
  const int heads = 3, hd = 16, m = 5, half = hd / 2;
  const size_t xn = (size_t)m * heads * hd;
  float x[5 * 3 * 16], a[5 * 3 * 16], b[5 * 3 * 16], freq[8];
  tu_fill(x, xn, 41);
  int32_t pos[5] = {0, 1, 7, 300, 4095};
  for (int i = 0; i < half; i++) freq[i] = 1.0f / powf(1e6f, (float)(2 * i) / (float)hd);
  int32_t *dpos = dev_bytes(pos, sizeof pos);
  float *dfreq = dev_f(freq, half), *da = dev_f(x, xn), *db = dev_f(x, xn), *dc = dev_f(x, xn);
  const moe_rope_ex re = {heads, (size_t)heads * hd, hd, 0, hd, false, dfreq, 1.0f, 0};
  ck_assert(moe_backend_rope(OPS, BE, da, m, dpos, heads, hd, 1e6f, NULL, &err) == MOE_OK);
  ck_assert(moe_backend_rope(OPS, BE, dc, m, dpos, heads, hd, 1e6f, dfreq, &err) == MOE_OK);
  ck_assert(OPS->rope_ex(BE, db, m, dpos, &re, &err) == MOE_OK);
  down(a, da, sizeof a);
  down(b, db, sizeof b);
  ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
  down(a, dc, sizeof a);
  ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
  ck_assert_int_eq(moe_backend_rope(OPS, BE, da, m, dpos, heads, 7, 1e4f, NULL, &err), MOE_ERR_INVALID);
  /* attention: 2 sequences, 3 new tokens at 4..6 of a cache of 8 (the
   * rope buffers serve as q and the caches) */
  const moe_attn_shape sh = {2, 3, 4, 8, 4, 2, 8};
  const moe_attn_ex ax = {2, 3, 4, 7, 8, 4, 2, 8, true, 1.0f / sqrtf(8.0f), NULL, NULL, 0};
  float *kc = dev_f(NULL, 2 * 2 * 8 * 8), *vc = dev_f(NULL, 2 * 2 * 8 * 8);
  float cache[2 * 2 * 8 * 8];
  tu_fill(cache, 256, 42);
  ck_assert(OPS->upload(BE, kc, cache, sizeof cache, &err) == MOE_OK);
  tu_fill(cache, 256, 43);
  ck_assert(OPS->upload(BE, vc, cache, sizeof cache, &err) == MOE_OK);
  ck_assert(moe_backend_attention(OPS, BE, da, dc, kc, vc, &sh, &err) == MOE_OK);
  ck_assert(OPS->attention_ex(BE, db, dc, kc, vc, &ax, &err) == MOE_OK);
  down(a, da, 6 * 32 * sizeof(float));
  down(b, db, 6 * 32 * sizeof(float));
  ck_assert_int_eq(memcmp(a, b, 6 * 32 * sizeof(float)), 0);
  /* router: random rows and a row whose two best logits differ by less
   * than their probabilities can show (0 and 1e-9: both round to the same
   * probability); the larger logit, expert 1, ranks first */
  const int n = 8, k = 3;
  float lg[4 * 8], biasf[8], w1[12], w2[12];
  int32_t i1[12], i2[12];
  tu_fill(lg, 32, 44);
  tu_fill(biasf, 8, 45);
  for (int e = 0; e < n; e++) lg[e] = -10.0f;
  lg[0] = 0.0f;
  lg[1] = 1e-9f;
  float *dl = dev_f(lg, 32), *dw = dev_f(NULL, 12);
  int32_t *di = dev_bytes(NULL, sizeof i1);
  moe_weight bw = dev_weight(biasf, 1, n, MOE_F32, NULL);
  for (int with_bias = 0; with_bias < 2; with_bias++)
    for (int renorm = 0; renorm < 2; renorm++) {
      const moe_weight *bias = with_bias ? &bw : NULL;
      const moe_router_ex rx = {k, MOE_SCORING_SOFTMAX_LOGITS, bias, 0, 0, MOE_GROUP_MAX,
                                renorm, 1.0f, false};
      if (OPS->set_context) OPS->set_context(BE, 1, -1, 5); /* the same draw for both (sim) */
      ck_assert(moe_backend_router_topk(OPS, BE, di, dw, dl, 4, n, k, renorm, bias, &err) == MOE_OK);
      down(i1, di, sizeof i1);
      down(w1, dw, sizeof w1);
      if (OPS->set_context) OPS->set_context(BE, 1, -1, 5);
      ck_assert(OPS->router_topk_ex(BE, di, dw, dl, 4, n, &rx, &err) == MOE_OK);
      down(i2, di, sizeof i2);
      down(w2, dw, sizeof w2);
      ck_assert_int_eq(memcmp(i1, i2, sizeof i1), 0);
      ck_assert_int_eq(memcmp(w1, w2, sizeof w1), 0);
      if (!(OPS->caps & MOE_BACKEND_CAP_MODELED) && !with_bias)
        ck_assert_msg(i1[0] == 1 && i1[1] == 0, "ranked %d, %d: not on the logits", i1[0], i1[1]);
    }
  /* SOFTMAX_LOGITS takes no groups */
  const moe_router_ex grouped = {k, MOE_SCORING_SOFTMAX_LOGITS, NULL, 2, 1, MOE_GROUP_MAX, true,
                                 1.0f, false};
  ck_assert_int_eq(OPS->router_topk_ex(BE, di, dw, dl, 4, n, &grouped, &err), MOE_ERR_INVALID);
  void *bufs[] = {dpos, dfreq, da, db, dc, kc, vc, dl, dw, di, (void *)bw.data};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) OPS->device_free(BE, bufs[i]);
}
END_TEST

/* On a modeled backend the adapters charge what the _ex ops charge. */
START_TEST(modeled_legacy_adapters_charge_as_ex) {
  moe_error err = {0};
  float *a = dev_f(NULL, 4096), *b = dev_f(NULL, 4096);
  int32_t *ix = dev_bytes(NULL, 4096);
  const moe_attn_shape sh = {2, 3, 5, 16, 4, 2, 32};
  const moe_attn_ex ax = {2, 3, 5, 8, 16, 4, 2, 32, true, 1.0f / sqrtf(32.0f), NULL, NULL, 0};
  const moe_rope_ex re = {4, 128, 32, 0, 32, false, a, 1.0f, 0};
  const moe_router_ex rx = {2, MOE_SCORING_SOFTMAX_LOGITS, NULL, 0, 0, MOE_GROUP_MAX, true, 1.0f,
                            false};
  double t0 = CLOCK();
  ck_assert(moe_backend_rope(OPS, BE, a, 6, ix, 4, 32, 1e4f, a, &err) == MOE_OK);
  const double legacy_rope = CLOCK() - t0;
  t0 = CLOCK();
  ck_assert(OPS->rope_ex(BE, a, 6, ix, &re, &err) == MOE_OK);
  ck_assert(legacy_rope > 0 && CLOCK() - t0 == legacy_rope);
  t0 = CLOCK();
  ck_assert(moe_backend_attention(OPS, BE, b, a, a, a, &sh, &err) == MOE_OK);
  const double legacy_attn = CLOCK() - t0;
  t0 = CLOCK();
  ck_assert(OPS->attention_ex(BE, b, a, a, a, &ax, &err) == MOE_OK);
  ck_assert(legacy_attn > 0 && CLOCK() - t0 == legacy_attn);
  t0 = CLOCK();
  ck_assert(moe_backend_router_topk(OPS, BE, ix, b, a, 6, 16, 2, true, NULL, &err) == MOE_OK);
  const double legacy_route = CLOCK() - t0;
  t0 = CLOCK();
  ck_assert(OPS->router_topk_ex(BE, ix, b, a, 6, 16, &rx, &err) == MOE_OK);
  ck_assert(legacy_route > 0 && CLOCK() - t0 == legacy_route);
  OPS->device_free(BE, a);
  OPS->device_free(BE, b);
  OPS->device_free(BE, ix);
}
END_TEST

/* ---- the table contract: validation, the op query, old tables */

/* An independent account of each optional op's method (not
 * moe_backend_supports) and of where it sits in the table. */
static bool has_op(const moe_backend_ops *o, moe_backend_op op, size_t *end) {
#define SLOT(f) (*end = offsetof(moe_backend_ops, f) + sizeof o->f, o->f != NULL)
  switch (op) {
  case MOE_OP_ATTENTION_EX: return SLOT(attention_ex);
  case MOE_OP_UNARY: return SLOT(unary);
  case MOE_OP_ROUTER_TOPK_EX: return SLOT(router_topk_ex);
  case MOE_OP_ROPE_EX: return SLOT(rope_ex);
  case MOE_OP_MLA_ATTENTION: return SLOT(mla_attention);
  case MOE_OP_DOWNLOAD_MANY: return SLOT(download_many);
  case MOE_OP_ARGMAX_ROWS: return SLOT(argmax_rows);
  case MOE_OP_HOST_REGISTER: return SLOT(host_register);
  case MOE_OP_HOST_RUN: return SLOT(host_run);
  case MOE_OP_COPY_URGENT: return SLOT(copy_h2d_ex);
  case MOE_OP_COUNT: break;
  }
#undef SLOT
  ck_abort_msg("op %d unknown to the test", (int)op);
  return false;
}

static void clear_op(moe_backend_ops *o, moe_backend_op op) {
  switch (op) {
  case MOE_OP_ATTENTION_EX: o->attention_ex = NULL; break;
  case MOE_OP_UNARY: o->unary = NULL; break;
  case MOE_OP_ROUTER_TOPK_EX: o->router_topk_ex = NULL; break;
  case MOE_OP_ROPE_EX: o->rope_ex = NULL; break;
  case MOE_OP_MLA_ATTENTION: o->mla_attention = NULL; break;
  case MOE_OP_DOWNLOAD_MANY: o->download_many = NULL; break;
  case MOE_OP_ARGMAX_ROWS: o->argmax_rows = NULL; break;
  case MOE_OP_HOST_REGISTER: o->host_register = NULL; break;
  case MOE_OP_HOST_RUN: o->host_run = NULL; break;
  case MOE_OP_COPY_URGENT:
    o->copy_chunk = NULL;
    o->copy_h2d_ex = NULL;
    o->copy_cancel = NULL;
    o->copy_urge = NULL;
    break;
  case MOE_OP_COUNT: break;
  }
}

/* The minor version whose table first holds a field ending at end. */
static int field_minor(size_t end) {
  const size_t sizes[] = {MOE_BACKEND_SIZE_1_0, MOE_BACKEND_SIZE_1_1, MOE_BACKEND_SIZE_1_2,
                          MOE_BACKEND_SIZE_1_3, MOE_BACKEND_SIZE_1_4, MOE_BACKEND_SIZE_1_5,
                          MOE_BACKEND_SIZE_1_6, MOE_BACKEND_SIZE_1_7, MOE_BACKEND_SIZE_1_8};
  for (int v = 0; v < (int)(sizeof sizes / sizeof *sizes); v++)
    if (end <= sizes[v]) return v;
  return -1;
}

/* Every compiled-in table: valid, of this minor version, the _ex forms
 * only (the legacy ops are the engine's adapters), and supports(op) as
 * the table says; require on a table lacking an op names the backend, the
 * op, the ABI version it arrived in (as the table's layout says) and who
 * needs it. */
START_TEST(tables_and_the_op_query) {
  ck_assert_str_eq(moe_backend_op_name(MOE_OP_COUNT), "?");
  for (size_t i = 0; i < moe_backend_count(); i++) {
    const moe_backend_ops *raw = moe_backend_at(i);
    moe_error err = {0};
    ck_assert_msg(moe_backend_validate(raw, &err) == MOE_OK, "%s: %s", raw->name, err.msg);
    moe_backend_ops o;
    moe_backend_normalize(raw, &o);
    ck_assert_uint_eq(moe_backend_abi_minor(&o), MOE_BACKEND_ABI_MINOR);
    ck_assert_msg(!o.rope && !o.attention && !o.router_topk, "%s has legacy methods", o.name);
    ck_assert(o.rope_ex && o.attention_ex && o.router_topk_ex);
    unsigned all = 0;
    for (int op = 0; op < MOE_OP_COUNT; op++) {
      size_t end = 0;
      const bool has = has_op(&o, (moe_backend_op)op, &end);
      ck_assert_msg(moe_backend_supports(&o, (moe_backend_op)op) == has, "%s: %s", o.name,
                    moe_backend_op_name((moe_backend_op)op));
      for (int p = 0; p < op; p++)
        ck_assert_str_ne(moe_backend_op_name((moe_backend_op)op), moe_backend_op_name((moe_backend_op)p));
      if (!has) continue;
      all |= MOE_OP_BIT(op);
      moe_backend_ops lacking = o;
      clear_op(&lacking, (moe_backend_op)op);
      ck_assert(!moe_backend_supports(&lacking, (moe_backend_op)op));
      moe_error e2 = {0};
      ck_assert_int_eq(moe_backend_require(&lacking, MOE_OP_BIT(op), "the test family", &e2),
                       MOE_ERR_UNSUPPORTED);
      char abi[32];
      snprintf(abi, sizeof abi, "ABI 1.%d", field_minor(end));
      const char *want[] = {o.name, moe_backend_op_name((moe_backend_op)op), abi, "the test family"};
      for (size_t w = 0; w < sizeof want / sizeof *want; w++)
        ck_assert_msg(strstr(e2.msg, want[w]), "'%s' lacks '%s'", e2.msg, want[w]);
    }
    ck_assert_int_eq(moe_backend_require(&o, all, "all", &err), MOE_OK);
    ck_assert_int_eq(moe_backend_require(&o, 0, "nothing", &err), MOE_OK);
  }
}
END_TEST

/* The legacy methods of an ABI 1.0 table, in plain C on the cpu backend's
 * memory (host memory), counting their calls. */
static int g_legacy_calls;
static moe_status legacy_rope(moe_backend *be, float *x, size_t m, const int32_t *pos, int nh,
                              int hd, float theta, moe_error *err) {
  g_legacy_calls++;
  for (size_t t = 0; t < m; t++)
    for (int i = 0; i < hd / 2; i++) {
      const float ang = (float)pos[t] * (1.0f / powf(theta, (float)(2 * i) / (float)hd));
      const float c = cosf(ang), s = sinf(ang);
      for (int h = 0; h < nh; h++) {
        float *v = x + (t * (size_t)nh + (size_t)h) * (size_t)hd;
        const float a = v[i], b = v[i + hd / 2];
        v[i] = a * c - b * s;
        v[i + hd / 2] = b * c + a * s;
      }
    }
  return MOE_OK;
}
static moe_status legacy_attention(moe_backend *be, float *out, const float *q, const float *kc,
                                   const float *vc, const moe_attn_shape *s, moe_error *err) {
  g_legacy_calls++;
  const int hd = s->head_dim, group = s->n_heads / s->n_kv_heads;
  for (int b = 0; b < s->n_seq; b++)
    for (int t = 0; t < s->n_new; t++)
      for (int h = 0; h < s->n_heads; h++) {
        const size_t row = ((size_t)b * s->n_new + t) * s->n_heads * hd + (size_t)h * hd;
        const size_t base = ((size_t)b * s->n_kv_heads + h / group) * s->max_seq * hd;
        float sc[64], mx = -INFINITY, sum = 0.0f;
        for (int j = 0; j <= s->pos0 + t; j++) {
          float d = 0.0f;
          for (int i = 0; i < hd; i++) d += q[row + i] * kc[base + (size_t)j * hd + i];
          sc[j] = d / sqrtf((float)hd);
          mx = fmaxf(mx, sc[j]);
        }
        for (int j = 0; j <= s->pos0 + t; j++) sum += sc[j] = expf(sc[j] - mx);
        for (int i = 0; i < hd; i++) {
          float o = 0.0f;
          for (int j = 0; j <= s->pos0 + t; j++) o += sc[j] / sum * vc[base + (size_t)j * hd + i];
          out[row + i] = o;
        }
      }
  return MOE_OK;
}
static moe_status legacy_router(moe_backend *be, int32_t *idx, float *wts, const float *logits,
                                size_t m, int n, int k, bool renorm, const moe_weight *bias,
                                moe_error *err) {
  g_legacy_calls++;
  for (size_t t = 0; t < m; t++) {
    float z[64], mx = -INFINITY, sum = 0.0f, tsum = 0.0f;
    for (int e = 0; e < n; e++) {
      z[e] = logits[t * n + e] + (bias ? ((const float *)bias->data)[e] : 0.0f);
      mx = z[e] > mx ? z[e] : mx;
    }
    for (int e = 0; e < n; e++) sum += expf(z[e] - mx);
    for (int j = 0; j < k; j++) {
      int best = -1;
      for (int e = 0; e < n; e++) {
        bool taken = false;
        for (int q = 0; q < j; q++) taken |= idx[t * k + q] == e;
        if (!taken && (best < 0 || z[e] > z[best])) best = e;
      }
      idx[t * k + j] = best;
      tsum += wts[t * k + j] = expf(z[best] - mx) / sum;
    }
    for (int j = 0; renorm && j < k; j++) wts[t * k + j] /= tsum;
  }
  return MOE_OK;
}

/* Runs the three legacy ops through the adapters on dev; out: rope,
 * attention and router outputs in order. */
static void legacy_ops_on(moe_device *dev, float *out_f, int32_t *out_i) {
  const moe_backend_ops *o = dev->ops;
  moe_error err = {0};
  float x[4 * 2 * 8], cache[2 * 8 * 8], lg[4 * 8], bias[8];
  int32_t pos[4] = {0, 1, 2, 3};
  tu_fill(x, 64, 51);
  tu_fill(cache, 128, 52);
  tu_fill(lg, 32, 53);
  tu_fill(bias, 8, 54);
  void *dx, *dq, *dc, *dp, *dl, *db, *di, *dw;
  const size_t sizes[] = {sizeof x, sizeof x, sizeof cache, sizeof pos, sizeof lg, sizeof bias,
                          12 * sizeof(int32_t), 12 * sizeof(float)};
  void **bufs[] = {&dx, &dq, &dc, &dp, &dl, &db, &di, &dw};
  const void *init[] = {x, x, cache, pos, lg, bias, NULL, NULL};
  for (int i = 0; i < 8; i++) {
    ck_assert(moe_device_alloc(dev, MOE_MEM_WORKSPACE, sizes[i], "test", bufs[i], &err) == MOE_OK);
    if (init[i]) ck_assert(o->upload(dev->be, *bufs[i], init[i], sizes[i], &err) == MOE_OK);
  }
  ck_assert(moe_backend_rope(o, dev->be, dx, 4, dp, 2, 8, 1e4f, NULL, &err) == MOE_OK);
  const moe_attn_shape sh = {1, 4, 0, 8, 2, 1, 8}; /* the new rows over a cache of 8 */
  ck_assert(moe_backend_attention(o, dev->be, dq, dx, dc, dc, &sh, &err) == MOE_OK);
  const moe_weight bw = {db, MOE_F32, 1, 8};
  ck_assert(moe_backend_router_topk(o, dev->be, di, dw, dl, 4, 8, 3, true, &bw, &err) == MOE_OK);
  ck_assert(o->download(dev->be, out_f, dx, sizeof x, &err) == MOE_OK);
  ck_assert(o->download(dev->be, out_f + 64, dq, sizeof x, &err) == MOE_OK);
  ck_assert(o->download(dev->be, out_f + 128, dw, 12 * sizeof(float), &err) == MOE_OK);
  ck_assert(o->download(dev->be, out_i, di, 12 * sizeof(int32_t), &err) == MOE_OK);
}

/* A table built for ABI 1.0 (the cpu backend's methods, the three legacy
 * ops of its time, nothing past the 1.0 size: the bytes there are
 * garbage) validates, opens and runs through the adapters, which call its
 * legacy methods; the results are the cpu backend's (rope and router bit
 * for bit). */
START_TEST(abi_1_0_table_runs_through_the_adapters) {
  union {
    moe_backend_ops ops;
    unsigned char bytes[sizeof(moe_backend_ops)];
  } t;
  memcpy(&t.ops, moe_backend_find("cpu"), MOE_BACKEND_SIZE_1_0);
  memset(t.bytes + MOE_BACKEND_SIZE_1_0, 0xa5, sizeof t - MOE_BACKEND_SIZE_1_0);
  t.ops.name = "legacy-1.0";
  t.ops.struct_size = (uint32_t)MOE_BACKEND_SIZE_1_0;
  t.ops.rope = legacy_rope;
  t.ops.attention = legacy_attention;
  t.ops.router_topk = legacy_router;
  moe_error err = {0};
  ck_assert_msg(moe_backend_validate(&t.ops, &err) == MOE_OK, "%s", err.msg);
  ck_assert_uint_eq(moe_backend_abi_minor(&t.ops), 0);
  moe_device legacy, cpu;
  ck_assert_msg(moe_device_open_ops(&legacy, &t.ops, NULL, &err) == MOE_OK, "%s", err.msg);
  ck_assert(legacy.ops->rope_ex == NULL && legacy.ops->router_topk_ex == NULL);
  ck_assert_uint_eq(moe_backend_abi_minor(legacy.ops), 0);
  ck_assert(moe_device_open(&cpu, "cpu", NULL, &err) == MOE_OK);
  float f1[64 + 64 + 12], f2[64 + 64 + 12];
  int32_t i1[12], i2[12];
  g_legacy_calls = 0;
  legacy_ops_on(&legacy, f1, i1);
  ck_assert_int_eq(g_legacy_calls, 3);
  legacy_ops_on(&cpu, f2, i2);
  ck_assert_int_eq(g_legacy_calls, 3);
  ck_assert_int_eq(memcmp(f1, f2, 64 * sizeof(float)), 0);        /* rope */
  for (int i = 64; i < 128; i++) ck_assert_float_eq_tol(f1[i], f2[i], 1e-5f); /* attention */
  ck_assert_int_eq(memcmp(i1, i2, sizeof i1), 0);                  /* router */
  ck_assert_int_eq(memcmp(f1 + 128, f2 + 128, 12 * sizeof(float)), 0);
  moe_device_close(&legacy);
  moe_device_close(&cpu);
}
END_TEST

/* Validation asks for each legacy op or its _ex form; router_topk_ex stands
 * in for router_topk from ABI 1.6 on only (an older table's does not know
 * SOFTMAX_LOGITS, so the adapter calls its router_topk); a 1.6 table says
 * its minor version. */
START_TEST(validation_of_the_legacy_ops) {
  const moe_backend_ops *cpu = moe_backend_find("cpu");
  moe_error err = {0};
  moe_backend_ops t;
  memcpy(&t, cpu, sizeof t);
  t.attention_ex = NULL;
  ck_assert_int_eq(moe_backend_validate(&t, &err), MOE_ERR_INVALID);
  ck_assert_msg(strstr(err.msg, "'attention'") && strstr(err.msg, "attention_ex"), "%s", err.msg);
  memcpy(&t, cpu, sizeof t);
  moe_error_clear(&err);
  t.rope_ex = NULL;
  ck_assert_int_eq(moe_backend_validate(&t, &err), MOE_ERR_INVALID);
  ck_assert_msg(strstr(err.msg, "'rope'"), "%s", err.msg);
  memcpy(&t, cpu, sizeof t);
  moe_error_clear(&err);
  t.abi_minor = 5;
  ck_assert_int_eq(moe_backend_validate(&t, &err), MOE_ERR_INVALID);
  ck_assert_msg(strstr(err.msg, "abi_minor"), "%s", err.msg);
  /* a 1.5 table: router_topk_ex alone is not enough, with router_topk it is */
  memcpy(&t, cpu, sizeof t);
  moe_error_clear(&err);
  t.struct_size = (uint32_t)MOE_BACKEND_SIZE_1_5;
  ck_assert_int_eq(moe_backend_validate(&t, &err), MOE_ERR_INVALID);
  ck_assert_msg(strstr(err.msg, "'router_topk'"), "%s", err.msg);
  t.router_topk = legacy_router;
  ck_assert_msg(moe_backend_validate(&t, &err) == MOE_OK, "%s", err.msg);
  moe_device dev;
  ck_assert(moe_device_open_ops(&dev, &t, NULL, &err) == MOE_OK);
  ck_assert_uint_eq(moe_backend_abi_minor(dev.ops), 5);
  float lg[8] = {0, 1, 2, 3, 4, 5, 6, 7}, w[2];
  int32_t idx[2];
  float *dl = NULL, *dw = NULL;
  int32_t *di = NULL;
  ck_assert(moe_device_alloc(&dev, MOE_MEM_WORKSPACE, sizeof lg, "l", (void **)&dl, &err) == MOE_OK);
  ck_assert(moe_device_alloc(&dev, MOE_MEM_WORKSPACE, sizeof w, "w", (void **)&dw, &err) == MOE_OK);
  ck_assert(moe_device_alloc(&dev, MOE_MEM_WORKSPACE, sizeof idx, "i", (void **)&di, &err) == MOE_OK);
  ck_assert(dev.ops->upload(dev.be, dl, lg, sizeof lg, &err) == MOE_OK);
  g_legacy_calls = 0;
  ck_assert(moe_backend_router_topk(dev.ops, dev.be, di, dw, dl, 1, 8, 2, true, NULL, &err) == MOE_OK);
  ck_assert_int_eq(g_legacy_calls, 1); /* the legacy method, not router_topk_ex */
  ck_assert(dev.ops->download(dev.be, idx, di, sizeof idx, &err) == MOE_OK);
  ck_assert(idx[0] == 7 && idx[1] == 6);
  moe_device_close(&dev);
}
END_TEST

static void add_contract(TCase *tc) {
  tcase_add_test(tc, tables_and_the_op_query);
  tcase_add_test(tc, abi_1_0_table_runs_through_the_adapters);
  tcase_add_test(tc, validation_of_the_legacy_ops);
}

static void add_modeled(TCase *tc) {
  tcase_add_test(tc, modeled_legacy_adapters_charge_as_ex);
  tcase_add_test(tc, legacy_adapters_are_the_ex_ops);
}

static void add_device(TCase *tc) {
  tcase_add_test(tc, legacy_adapters_are_the_ex_ops);
}

int main(void) {
  const conformance_cases cases = {add_contract, add_modeled, add_device};
  return conformance_main(&cases);
}
