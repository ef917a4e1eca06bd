/* The backend contract (engine/include/moe/backend.h), held against every
 * compiled-in backend whose device is present: cpu always, cpu again with a
 * capped link (slow copies, so ordering is exercised), cuda when a GPU is
 * there.  This suite: identity, memory, streams and events, ordering by
 * data (what compute sees after a wait), never by time; downloads, gathers
 * and scatters, empty inputs; and a modeled backend (sim) against its own
 * part of the contract.  The math ops are test_backend_math.c's, the table
 * and the legacy adapters test_backend_table.c's. */
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

START_TEST(identity_and_memory) {
  ck_assert_ptr_nonnull(OPS->describe(BE));
  ck_assert_uint_gt(strlen(OPS->describe(BE)), 0);
  ck_assert_uint_gt(strlen(moe_backend_device_name(OPS, BE)), 0);
  ck_assert_uint_gt(OPS->device_capacity(BE), 0);
  unsigned char src[1000], back[1000];
  for (int i = 0; i < 1000; i++) src[i] = (unsigned char)(i * 7 + 3);
  void *d = dev_bytes(src, sizeof src);
  ck_assert_uint_eq((uintptr_t)d % 64, 0);
  down(back, d, sizeof back);
  ck_assert_int_eq(memcmp(src, back, sizeof src), 0);
  moe_error err = {0};
  ck_assert(OPS->upload(BE, d, src, 0, &err) == MOE_OK); /* zero bytes: no-op */
  ck_assert(OPS->download(BE, back, d, 0, &err) == MOE_OK);
  OPS->device_free(BE, d);
}
END_TEST

enum { BIG = 4 << 20 }; /* bytes: several ms on a capped link */

START_TEST(copies_and_events) {
  moe_error err = {0};
  unsigned char *a = NULL, *b = NULL, *back = malloc(BIG);
  ck_assert(OPS->host_alloc(BE, BIG, (void **)&a, &err) == MOE_OK);
  ck_assert(OPS->host_alloc(BE, BIG, (void **)&b, &err) == MOE_OK);
  for (size_t i = 0; i < BIG; i++) a[i] = (unsigned char)i, b[i] = (unsigned char)(i * 31 + 1);
  void *d = dev_bytes(NULL, BIG);
  moe_event *ev = NULL, *never = NULL;
  ck_assert(OPS->event_create(BE, &ev, &err) == MOE_OK);
  ck_assert(OPS->event_create(BE, &never, &err) == MOE_OK);
  /* an event never used is complete */
  ck_assert_int_eq(OPS->event_done(BE, never), 1);
  ck_assert(OPS->event_sync(BE, never, &err) == MOE_OK);
  ck_assert(OPS->compute_wait(BE, never, &err) == MOE_OK);
  ck_assert(OPS->copy_wait(BE, never, &err) == MOE_OK);
  /* copies on the copy stream run in order: the second one wins */
  ck_assert(OPS->copy_h2d_async(BE, d, a, BIG, NULL, &err) == MOE_OK);
  ck_assert(OPS->copy_h2d_async(BE, d, b, BIG, ev, &err) == MOE_OK);
  ck_assert(OPS->event_sync(BE, ev, &err) == MOE_OK);
  ck_assert_int_eq(OPS->event_done(BE, ev), 1);
  down(back, d, BIG);
  ck_assert_int_eq(memcmp(back, b, BIG), 0);
  /* a wait is for the most recent signalling copy issued before it */
  ck_assert(OPS->copy_h2d_async(BE, d, a, BIG, ev, &err) == MOE_OK);
  ck_assert(OPS->event_sync(BE, ev, &err) == MOE_OK);
  down(back, d, BIG);
  ck_assert_int_eq(memcmp(back, a, BIG), 0);
  ck_assert(OPS->synchronize(BE, &err) == MOE_OK);
  OPS->event_destroy(BE, ev);
  OPS->event_destroy(BE, never);
  OPS->device_free(BE, d);
  OPS->host_free(BE, a);
  OPS->host_free(BE, b);
  free(back);
}
END_TEST

/* compute_wait: compute issued after it sees the copy's bytes. */
START_TEST(compute_waits_for_copies) {
  moe_error err = {0};
  const size_t n = BIG / sizeof(float);
  float *src = NULL, *back = malloc(BIG), *zeros = calloc(n, sizeof(float));
  ck_assert(OPS->host_alloc(BE, BIG, (void **)&src, &err) == MOE_OK);
  tu_fill(src, n, 5);
  float *d = dev_f(NULL, n), *y = dev_f(zeros, n);
  moe_event *ev = NULL;
  ck_assert(OPS->event_create(BE, &ev, &err) == MOE_OK);
  for (int round = 0; round < 3; round++) {
    ck_assert(OPS->upload(BE, y, zeros, BIG, &err) == MOE_OK);
    ck_assert(OPS->copy_h2d_async(BE, d, src, BIG, ev, &err) == MOE_OK);
    ck_assert(OPS->compute_wait(BE, ev, &err) == MOE_OK);
    ck_assert(OPS->add(BE, y, d, n, &err) == MOE_OK); /* y = 0 + copied bytes */
    down(back, y, BIG);
    ck_assert_int_eq(memcmp(back, src, BIG), 0);
    for (size_t i = 0; i < n; i++) src[i] += 1.0f; /* next round copies new bytes */
    ck_assert(OPS->synchronize(BE, &err) == MOE_OK);
  }
  OPS->event_destroy(BE, ev);
  OPS->device_free(BE, d);
  OPS->device_free(BE, y);
  OPS->host_free(BE, src);
  free(back);
  free(zeros);
}
END_TEST

/* copy_wait: a copy issued after it lands after the recorded compute, so
 * it overwrites what compute wrote. */
START_TEST(copies_wait_for_compute) {
  moe_error err = {0};
  const size_t n = 1 << 16;
  float *ones = malloc(n * sizeof(float)), *src = NULL, *back = malloc(n * sizeof(float));
  for (size_t i = 0; i < n; i++) ones[i] = 1.0f;
  ck_assert(OPS->host_alloc(BE, n * sizeof(float), (void **)&src, &err) == MOE_OK);
  tu_fill(src, n, 9);
  float *x = dev_f(ones, n), *inc = dev_f(ones, n);
  moe_event *done = NULL, *landed = NULL;
  ck_assert(OPS->event_create(BE, &done, &err) == MOE_OK);
  ck_assert(OPS->event_create(BE, &landed, &err) == MOE_OK);
  for (int i = 0; i < 8; i++) ck_assert(OPS->add(BE, x, inc, n, &err) == MOE_OK);
  ck_assert(OPS->compute_record(BE, done, &err) == MOE_OK);
  ck_assert(OPS->copy_wait(BE, done, &err) == MOE_OK);
  ck_assert(OPS->copy_h2d_async(BE, x, src, n * sizeof(float), landed, &err) == MOE_OK);
  ck_assert(OPS->event_sync(BE, landed, &err) == MOE_OK);
  ck_assert(OPS->synchronize(BE, &err) == MOE_OK);
  down(back, x, n * sizeof(float));
  ck_assert_int_eq(memcmp(back, src, n * sizeof(float)), 0);
  OPS->event_destroy(BE, done);
  OPS->event_destroy(BE, landed);
  OPS->device_free(BE, x);
  OPS->device_free(BE, inc);
  OPS->host_free(BE, src);
  free(ones);
  free(back);
}
END_TEST

/* event_destroy with its copies still queued, and a backend destroyed with
 * copies in flight: neither blocks forever nor touches freed memory
 * (ASan/TSan builds run this). */
START_TEST(teardown_with_copies_in_flight) {
  moe_error err = {0};
  unsigned char *src = NULL;
  ck_assert(OPS->host_alloc(BE, BIG, (void **)&src, &err) == MOE_OK);
  memset(src, 0x5a, BIG);
  void *d = dev_bytes(NULL, BIG);
  moe_event *ev = NULL;
  ck_assert(OPS->event_create(BE, &ev, &err) == MOE_OK);
  for (int i = 0; i < 4; i++) ck_assert(OPS->copy_h2d_async(BE, d, src, BIG, ev, &err) == MOE_OK);
  ck_assert(OPS->copy_wait(BE, ev, &err) == MOE_OK);
  OPS->event_destroy(BE, ev); /* copies and a wait still name it */
  ck_assert(OPS->synchronize(BE, &err) == MOE_OK);
  unsigned char *back = malloc(BIG);
  down(back, d, BIG);
  ck_assert_int_eq(back[0], 0x5a);
  ck_assert_int_eq(back[BIG - 1], 0x5a);
  free(back);
  /* now a whole instance goes while its copies run */
  moe_device other;
  moe_backend_options o = {.link_gbps = g_link};
  ck_assert(moe_device_open(&other, g_backend, &o, &err) == MOE_OK);
  void *d2 = NULL;
  ck_assert(moe_device_alloc(&other, MOE_MEM_EXPERTS, BIG, "slots", &d2, &err) == MOE_OK);
  moe_event *ev2 = NULL;
  ck_assert(other.ops->event_create(other.be, &ev2, &err) == MOE_OK);
  for (int i = 0; i < 4; i++)
    ck_assert(other.ops->copy_h2d_async(other.be, d2, src, BIG, ev2, &err) == MOE_OK);
  other.ops->event_destroy(other.be, ev2);
  moe_device_close(&other); /* waits for the copies, then frees */
  OPS->device_free(BE, d);
  OPS->host_free(BE, src); /* safe only because the copies are done */
}
END_TEST

/* download_many (or the engine's fallback, n downloads): the bytes of
 * each transfer, zero-byte ones allowed, in the order issued after
 * earlier compute. */
START_TEST(download_many_definition) {
  float a[5] = {1, 2, 3, 4, 5}, b[3] = {-1, -2, -3}, ga[5], gb[3], gz = 42.0f;
  int32_t c[4] = {7, 8, 9, 10}, gc[4];
  float *da = dev_f(a, 5), *db = dev_f(b, 3);
  int32_t *dc = dev_bytes(c, sizeof c);
  OK(OPS->add(BE, db, db, 3, &e_)); /* compute before the download: b doubled */
  const moe_xfer x[4] = {{ga, da, sizeof ga}, {&gz, da, 0}, {gb, db, sizeof gb}, {gc, dc, sizeof gc}};
  OK(moe_device_download_many(&g_dev, x, 4, &e_));
  ck_assert_mem_eq(ga, a, sizeof a);
  for (int i = 0; i < 3; i++) ck_assert_float_eq(gb[i], 2 * b[i]);
  ck_assert_mem_eq(gc, c, sizeof c);
  ck_assert_float_eq(gz, 42.0f); /* zero bytes: untouched */
  OK(moe_device_download_many(&g_dev, x, 0, &e_));
  OPS->device_free(BE, da);
  OPS->device_free(BE, db);
  OPS->device_free(BE, dc);
}
END_TEST

START_TEST(embed_gather_scatter) {
  moe_error err = {0};
  const size_t V = 10, D = 12;
  float table[10 * 12], tex[10 * 12];
  tu_fill(table, V * D, 21);
  moe_weight tw = dev_weight(table, V, D, MOE_F16, tex);
  int32_t ids[4] = {9, 0, 9, 3};
  int32_t *dids = dev_bytes(ids, sizeof ids);
  float *dy = dev_f(NULL, 4 * D), y[4 * 12];
  ck_assert(OPS->embed(BE, dy, &tw, dids, 4, &err) == MOE_OK);
  down(y, dy, sizeof y);
  for (int i = 0; i < 4; i++)
    for (size_t j = 0; j < D; j++) ck_assert_float_eq(y[i * D + j], tex[ids[i] * D + j]);
  /* gather: rows may repeat */
  float src[5 * 12], g[4 * 12];
  tu_fill(src, 5 * D, 22);
  int32_t rows[4] = {4, 4, 0, 2};
  float *dsrc = dev_f(src, 5 * D), *dg = dev_f(NULL, 4 * D);
  int32_t *drows = dev_bytes(rows, sizeof rows);
  ck_assert(OPS->gather_rows(BE, dg, dsrc, drows, 4, D, &err) == MOE_OK);
  down(g, dg, sizeof g);
  for (int i = 0; i < 4; i++) ck_assert_int_eq(memcmp(g + i * D, src + rows[i] * D, D * sizeof(float)), 0);
  /* scatter-add: distinct rows, strided scale, with and without sigmoid */
  float base[5 * 12], part[3 * 12], scale[6] = {0.5f, 99.0f, -2.0f, 99.0f, 1.25f, 99.0f};
  tu_fill(base, 5 * D, 23);
  tu_fill(part, 3 * D, 24);
  int32_t srows[3] = {3, 0, 4};
  int32_t *dsrows = dev_bytes(srows, sizeof srows);
  float *dscale = dev_f(scale, 6), *dpart = dev_f(part, 3 * D);
  for (int sig = 0; sig < 2; sig++) {
    float *ddst = dev_f(base, 5 * D), out[5 * 12];
    ck_assert(OPS->scatter_add_rows(BE, ddst, dpart, dsrows, dscale, 2, sig, 3, D, &err) == MOE_OK);
    down(out, ddst, sizeof out);
    for (int r = 0; r < 5; r++)
      for (size_t j = 0; j < D; j++) {
        double want = base[r * D + j];
        for (int i = 0; i < 3; i++)
          if (srows[i] == r) {
            double s = scale[2 * i];
            if (sig) s = 1.0 / (1.0 + exp(-s));
            want += s * part[i * D + j];
          }
        ck_assert_double_eq_tol(out[r * D + j], want, 1e-6);
      }
    OPS->device_free(BE, ddst);
  }
  void *bufs[] = {(void *)tw.data, dids, dy, dsrc, dg, drows, dsrows, dscale, dpart};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) OPS->device_free(BE, bufs[i]);
}
END_TEST

/* Every op accepts an empty input and does nothing (no launch of an empty
 * grid, no read). */
START_TEST(empty_inputs_are_no_ops) {
  moe_error err = {0};
  float one = 1.0f;
  float *d = dev_f(&one, 1);
  int32_t *di = dev_bytes(NULL, sizeof(int32_t));
  moe_weight w = dev_weight(&one, 1, 1, MOE_F32, NULL);
  moe_attn_shape sh = {0, 1, 0, 4, 2, 1, 4};
  OK(OPS->matmul(BE, d, d, 0, &w, NULL, &e_));
  OK(OPS->rmsnorm(BE, d, d, 0, &w, 1e-5f, &e_));
  OK(moe_backend_rope(OPS, BE, d, 0, di, 2, 4, 10000.0f, NULL, &e_));
  OK(OPS->kv_store(BE, d, d, d, d, &sh, &e_));
  OK(moe_backend_attention(OPS, BE, d, d, d, d, &sh, &e_));
  OK(moe_backend_router_topk(OPS, BE, di, d, d, 0, 1, 1, true, NULL, &e_));
  OK(OPS->swiglu(BE, d, d, d, 0, &e_));
  OK(OPS->add(BE, d, d, 0, &e_));
  OK(OPS->embed(BE, d, &w, di, 0, &e_));
  OK(OPS->gather_rows(BE, d, d, di, 0, 4, &e_));
  OK(OPS->scatter_add_rows(BE, d, d, di, d, 1, false, 0, 4, &e_));
  if (OPS->attention_ex) {
    const moe_attn_ex ax = {0, 1, 0, 4, 4, 2, 1, 4, true, 1.0f, NULL, NULL, 0};
    OK(OPS->attention_ex(BE, d, d, d, d, &ax, &e_));
  }
  if (OPS->unary) OK(OPS->unary(BE, d, d, 0, MOE_UNARY_SCALE, 3.0f, &e_));
  ck_assert(OPS->synchronize(BE, &err) == MOE_OK);
  float back;
  down(&back, d, sizeof back);
  ck_assert_float_eq(back, 1.0f);
  OPS->device_free(BE, d);
  OPS->device_free(BE, di);
  OPS->device_free(BE, (void *)w.data);
}
END_TEST

/* ---- the contract of a modeled backend (MOE_BACKEND_CAP_MODELED): no
 * math and no copied bytes, so what is held is memory, small transfers,
 * routing and the ordering of its clock. */

START_TEST(modeled_memory_and_small_transfers) {
  ck_assert_ptr_nonnull(OPS->modeled_seconds);
  ck_assert_uint_gt(strlen(OPS->describe(BE)), 0);
  ck_assert_uint_gt(OPS->device_capacity(BE), 0);
  int32_t ids[300], back[300];
  for (int i = 0; i < 300; i++) ids[i] = i * 13 - 7;
  void *d = dev_bytes(ids, sizeof ids);
  ck_assert_uint_eq((uintptr_t)d % 64, 0);
  const double t0 = CLOCK();
  down(back, d, sizeof back);
  ck_assert_int_eq(memcmp(ids, back, sizeof ids), 0); /* small buffers move */
  ck_assert(CLOCK() > t0);                             /* and take time */
  /* a huge allocation costs no memory: it is never touched */
  void *big = NULL;
  moe_error err = {0};
  ck_assert(OPS->device_alloc(BE, (size_t)64 << 30, &big, &err) == MOE_OK);
  OPS->device_free(BE, big);
  OPS->device_free(BE, d);
}
END_TEST

START_TEST(modeled_streams_and_events) {
  moe_error err = {0};
  moe_event *ev = NULL, *rec = NULL, *never = NULL;
  ck_assert(OPS->event_create(BE, &ev, &err) == MOE_OK);
  ck_assert(OPS->event_create(BE, &rec, &err) == MOE_OK);
  ck_assert(OPS->event_create(BE, &never, &err) == MOE_OK);
  ck_assert_int_eq(OPS->event_done(BE, never), 1);
  ck_assert(OPS->compute_wait(BE, never, &err) == MOE_OK);
  void *dst = dev_bytes(NULL, BIG), *src = NULL;
  ck_assert(OPS->host_alloc(BE, BIG, &src, &err) == MOE_OK);
  /* a copy overlaps compute: issuing it takes no compute time */
  const double t0 = CLOCK();
  ck_assert(OPS->copy_h2d_async(BE, dst, src, BIG, ev, &err) == MOE_OK);
  ck_assert(CLOCK() == t0);
  ck_assert_int_eq(OPS->event_done(BE, ev), 0);
  /* compute that waits for it starts after it: the stall is counted */
  const double s0 = OPS->stall_seconds(BE);
  ck_assert(OPS->compute_wait(BE, ev, &err) == MOE_OK);
  const double t1 = CLOCK();
  ck_assert(t1 > t0);
  ck_assert_double_eq_tol(OPS->stall_seconds(BE) - s0, t1 - t0, 1e-12);
  ck_assert_int_eq(OPS->event_done(BE, ev), 1);
  /* copies wait for compute: a copy issued after copy_wait(record) ends
   * one copy time after the record at the earliest */
  float *y = dev_f(NULL, 1024), *x = dev_f(NULL, 1024);
  for (int i = 0; i < 50; i++) ck_assert(OPS->add(BE, y, x, 1024, &err) == MOE_OK);
  ck_assert(OPS->compute_record(BE, rec, &err) == MOE_OK);
  const double t_rec = CLOCK();
  ck_assert(t_rec > t1);
  ck_assert(OPS->copy_wait(BE, rec, &err) == MOE_OK);
  ck_assert(OPS->copy_h2d_async(BE, dst, src, BIG, ev, &err) == MOE_OK);
  ck_assert(OPS->event_sync(BE, ev, &err) == MOE_OK);
  ck_assert(CLOCK() >= t_rec + (t1 - t0) - 1e-12);
  ck_assert(OPS->synchronize(BE, &err) == MOE_OK);
  OPS->event_destroy(BE, ev);
  OPS->event_destroy(BE, rec);
  OPS->event_destroy(BE, never);
  OPS->device_free(BE, dst);
  OPS->device_free(BE, x);
  OPS->device_free(BE, y);
  OPS->host_free(BE, src);
}
END_TEST

START_TEST(modeled_router_gives_valid_routing) {
  moe_error err = {0};
  const size_t m = 37;
  const int n = 20, k = 3;
  int32_t *d_idx = dev_bytes(NULL, m * k * sizeof(int32_t)), idx[37 * 3];
  float *d_w = dev_f(NULL, m * k), w[37 * 3];
  float *logits = dev_f(NULL, m * n);
  for (int renorm = 0; renorm < 2; renorm++) {
    ck_assert(moe_backend_router_topk(OPS, BE, d_idx, d_w, logits, m, n, k, renorm, NULL, &err) ==
              MOE_OK);
    down(idx, d_idx, sizeof idx);
    down(w, d_w, sizeof w);
    for (size_t r = 0; r < m; r++) {
      double sum = 0;
      for (int a = 0; a < k; a++) {
        ck_assert(idx[r * k + a] >= 0 && idx[r * k + a] < n);
        for (int b = 0; b < a; b++) ck_assert_int_ne(idx[r * k + a], idx[r * k + b]);
        ck_assert(w[r * k + a] > 0 && w[r * k + a] <= 1);
        sum += w[r * k + a];
      }
      if (renorm) ck_assert_double_eq_tol(sum, 1.0, 1e-6);
    }
  }
  /* the DeepSeek-style router too: valid experts, weights renormalised and scaled */
  moe_router_ex r = {3, MOE_SCORING_SIGMOID, NULL, 4, 2, MOE_GROUP_TOP2_SUM, true, 2.5f, false};
  ck_assert(OPS->router_topk_ex(BE, d_idx, d_w, logits, m, n, &r, &err) == MOE_OK);
  down(idx, d_idx, sizeof idx);
  down(w, d_w, sizeof w);
  for (size_t t = 0; t < m; t++) {
    double sum = 0;
    for (int a = 0; a < k; a++) {
      ck_assert(idx[t * k + a] >= 0 && idx[t * k + a] < n);
      for (int b = 0; b < a; b++) ck_assert_int_ne(idx[t * k + a], idx[t * k + b]);
      sum += w[t * k + a];
    }
    ck_assert_double_eq_tol(sum, 2.5, 1e-5);
  }
  moe_router_ex bad = {3, MOE_SCORING_SIGMOID, NULL, 3, 1, MOE_GROUP_MAX, true, 1.0f, false}; /* 20 % 3 */
  ck_assert_int_eq(OPS->router_topk_ex(BE, d_idx, d_w, logits, m, n, &bad, &err), MOE_ERR_INVALID);
  OPS->device_free(BE, d_idx);
  OPS->device_free(BE, d_w);
  OPS->device_free(BE, logits);
}
END_TEST

START_TEST(modeled_ops_take_time_and_empty_ones_none) {
  moe_error err = {0};
  float *y = dev_f(NULL, 4096), *x = dev_f(NULL, 4096);
  moe_weight w = {dev_bytes(NULL, 4096 * 4), MOE_F32, 64, 64};
  double t = CLOCK();
  ck_assert(OPS->matmul(BE, y, x, 0, &w, NULL, &err) == MOE_OK);
  ck_assert(OPS->add(BE, y, x, 0, &err) == MOE_OK);
  ck_assert(OPS->upload(BE, y, x, 0, &err) == MOE_OK);
  ck_assert(CLOCK() == t);
  ck_assert(OPS->matmul(BE, y, x, 4, &w, NULL, &err) == MOE_OK);
  ck_assert(CLOCK() > t);
  t = CLOCK();
  ck_assert(OPS->rmsnorm(BE, y, x, 4, &w, 1e-6f, &err) == MOE_OK);
  ck_assert(OPS->swiglu(BE, y, y, x, 256, &err) == MOE_OK);
  ck_assert(CLOCK() > t);
  OPS->device_free(BE, y);
  OPS->device_free(BE, x);
  OPS->device_free(BE, (void *)w.data);
}
END_TEST

static void add_modeled(TCase *tc) {
  tcase_add_test(tc, modeled_memory_and_small_transfers);
  tcase_add_test(tc, modeled_streams_and_events);
  tcase_add_test(tc, modeled_router_gives_valid_routing);
  tcase_add_test(tc, modeled_ops_take_time_and_empty_ones_none);
}

static void add_device(TCase *tc) {
  tcase_add_test(tc, identity_and_memory);
  tcase_add_test(tc, copies_and_events);
  tcase_add_test(tc, compute_waits_for_copies);
  tcase_add_test(tc, copies_wait_for_compute);
  tcase_add_test(tc, teardown_with_copies_in_flight);
  tcase_add_test(tc, embed_gather_scatter);
  tcase_add_test(tc, empty_inputs_are_no_ops);
  tcase_add_test(tc, download_many_definition);
}

int main(void) {
  const conformance_cases cases = {NULL, add_modeled, add_device};
  return conformance_main(&cases);
}
