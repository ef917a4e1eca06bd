/* Peer fixtures: tiny models of every family made with Hugging Face
 * transformers (tests/fixtures/make_hf_fixtures.py).  Our engine loads the
 * same checkpoints and must give the same prefill logits (max |diff| <=
 * 1e-4 x max |logit|) and the same 16 greedy tokens. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/device.h"
#include "moe/model.h"
#include "moe/policy.h"
#include "moe/safetensors.h"
#include "testutil.h"

/* One run's output: 2 sequences x 6 prompt tokens of prefill logits (vocab
 * 96), 8 greedy tokens each. */
typedef struct dtype_run {
  float logits[2 * 6 * 96];
  int32_t tokens[2 * 8];
} dtype_run;

static void check_fixture(const char *name) {
  char dir[1024], path[1100];
  snprintf(dir, sizeof dir, "%s/tests/fixtures/%s", MOE_SOURCE_DIR, name);
  snprintf(path, sizeof path, "%s/expected.safetensors", dir);
  moe_error err = {0};
  moe_st_file *exp = NULL;
  ck_assert_msg(moe_st_open(&exp, path, &err) == MOE_OK, "%s", err.msg);
  const moe_st_tensor *ids = moe_st_find(exp, "prompt_ids"), *lg = moe_st_find(exp, "logits"),
                      *tok = moe_st_find(exp, "tokens");
  ck_assert_ptr_nonnull(ids);
  ck_assert_ptr_nonnull(lg);
  ck_assert_ptr_nonnull(tok);
  ck_assert_str_eq(ids->dtype, "I32");
  const int B = (int)ids->shape[0], P = (int)ids->shape[1], N = (int)tok->shape[1];
  const int V = (int)lg->shape[2];
  int32_t *prompts = malloc(ids->nbytes), *want_tokens = malloc(tok->nbytes);
  float *want_logits = malloc(lg->nbytes);
  memcpy(prompts, ids->data, ids->nbytes);
  memcpy(want_tokens, tok->data, tok->nbytes);
  memcpy(want_logits, lg->data, lg->nbytes);

  moe_model *m = NULL;
  ck_assert_msg(moe_model_load(&m, dir, NULL, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(moe_model_config(m)->vocab, V);
  moe_device dev;
  ck_assert_msg(moe_device_open(&dev, "cpu", NULL, &err) == MOE_OK, "%s", err.msg);
  moe_engine *e = NULL;
  moe_engine_options eo = {.max_batch = B, .max_seq = P + N, .all_logits = true};
  ck_assert_msg(moe_engine_create(&e, m, &dev, &eo, &err) == MOE_OK, "%s", err.msg);
  float *logits = malloc((size_t)B * P * V * sizeof(float));
  int32_t *out = malloc((size_t)B * N * sizeof(int32_t));
  ck_assert_msg(moe_engine_generate(e, prompts, B, P, N, out, logits, NULL, &err) == MOE_OK, "%s",
                err.msg);
  float max_abs = 0, max_diff = 0;
  for (size_t i = 0; i < (size_t)B * P * V; i++) {
    max_abs = fmaxf(max_abs, fabsf(want_logits[i]));
    max_diff = fmaxf(max_diff, fabsf(want_logits[i] - logits[i]));
  }
  printf("%s: max |logit| %.4f, max |diff| %.3g (limit %.3g)\n", name, max_abs, max_diff,
         1e-4 * max_abs);
  ck_assert_msg(max_diff <= 1e-4f * max_abs, "%s: logits differ by %g (max |logit| %g)", name,
                max_diff, max_abs);
  for (int i = 0; i < B * N; i++)
    ck_assert_msg(out[i] == want_tokens[i], "%s: token %d of seq %d: got %d, want %d", name,
                  i % N, i / N, out[i], want_tokens[i]);
  free(logits);
  free(out);
  free(prompts);
  free(want_tokens);
  free(want_logits);
  moe_engine_free(e);
  moe_device_close(&dev);
  moe_model_free(m);
  moe_st_close(exp);
}

/* A Switch (encoder-decoder) fixture: encoder output, the first decoder
 * step's logits (the prefill) and 16 greedy tokens from
 * decoder_start_token_id, with the same tolerance as the decoder-only
 * fixtures; and the relative-position buckets over -300 .. 300. */
static void check_switch(const char *name) {
  char dir[1024], path[1100];
  snprintf(dir, sizeof dir, "%s/tests/fixtures/%s", MOE_SOURCE_DIR, name);
  snprintf(path, sizeof path, "%s/expected.safetensors", dir);
  moe_error err = {0};
  moe_st_file *exp = NULL;
  ck_assert_msg(moe_st_open(&exp, path, &err) == MOE_OK, "%s", err.msg);
  const moe_st_tensor *ids = moe_st_find(exp, "prompt_ids"), *lg = moe_st_find(exp, "logits"),
                      *tok = moe_st_find(exp, "tokens"), *enc = moe_st_find(exp, "encoder_out"),
                      *bb = moe_st_find(exp, "buckets_bidirectional"),
                      *bc = moe_st_find(exp, "buckets_causal");
  ck_assert(ids && lg && tok && enc && bb && bc);
  const int B = (int)ids->shape[0], P = (int)ids->shape[1], N = (int)tok->shape[1];
  const int V = (int)lg->shape[2];
  ck_assert_int_eq((int)lg->shape[1], 1);
  int32_t *prompts = malloc(ids->nbytes), *want_tokens = malloc(tok->nbytes);
  float *want_logits = malloc(lg->nbytes), *want_enc = malloc(enc->nbytes);
  memcpy(prompts, ids->data, ids->nbytes);
  memcpy(want_tokens, tok->data, tok->nbytes);
  memcpy(want_logits, lg->data, lg->nbytes);
  memcpy(want_enc, enc->data, enc->nbytes);

  moe_model *m = NULL;
  ck_assert_msg(moe_model_load(&m, dir, NULL, &err) == MOE_OK, "%s", err.msg);
  const moe_config *c = moe_model_config(m);
  ck_assert_int_eq(c->vocab, V);
  /* buckets */
  const int R = (int)(bb->shape[0] / 2);
  for (int r = -R; r <= R; r++) {
    int32_t wb, wc;
    memcpy(&wb, (const char *)bb->data + (size_t)(r + R) * 4, 4);
    memcpy(&wc, (const char *)bc->data + (size_t)(r + R) * 4, 4);
    ck_assert_msg(moe_rel_bucket(r, true, c->rel_buckets, c->rel_max_distance) == wb,
                  "%s: bidirectional bucket of %d: got %d, want %d", name, r,
                  moe_rel_bucket(r, true, c->rel_buckets, c->rel_max_distance), wb);
    ck_assert_msg(moe_rel_bucket(r, false, c->rel_buckets, c->rel_max_distance) == wc,
                  "%s: causal bucket of %d: got %d, want %d", name, r,
                  moe_rel_bucket(r, false, c->rel_buckets, c->rel_max_distance), wc);
  }
  moe_device dev;
  ck_assert_msg(moe_device_open(&dev, "cpu", NULL, &err) == MOE_OK, "%s", err.msg);
  moe_engine *e = NULL;
  moe_engine_options eo = {.max_batch = B, .max_seq = P + N};
  ck_assert_msg(moe_engine_create(&e, m, &dev, &eo, &err) == MOE_OK, "%s", err.msg);
  /* the encoder alone */
  const size_t ne = (size_t)B * P * (size_t)c->hidden;
  float *got_enc = malloc(ne * sizeof(float));
  ck_assert_msg(moe_engine_encode(e, prompts, B, P, &err) == MOE_OK, "%s", err.msg);
  ck_assert_msg(moe_engine_encoder_output(e, got_enc, &err) == MOE_OK, "%s", err.msg);
  float emax = 0, ediff = 0;
  for (size_t i = 0; i < ne; i++) {
    emax = fmaxf(emax, fabsf(want_enc[i]));
    ediff = fmaxf(ediff, fabsf(want_enc[i] - got_enc[i]));
  }
  printf("%s: encoder max |h| %.4f, max |diff| %.3g\n", name, emax, ediff);
  ck_assert_msg(ediff <= 1e-4f * emax, "%s: encoder output differs by %g (max %g)", name, ediff,
                emax);
  float *logits = malloc((size_t)B * V * sizeof(float));
  int32_t *out = malloc((size_t)B * N * sizeof(int32_t));
  ck_assert_msg(moe_engine_generate(e, prompts, B, P, N, out, logits, NULL, &err) == MOE_OK, "%s",
                err.msg);
  float max_abs = 0, max_diff = 0;
  for (size_t i = 0; i < (size_t)B * V; i++) {
    max_abs = fmaxf(max_abs, fabsf(want_logits[i]));
    max_diff = fmaxf(max_diff, fabsf(want_logits[i] - logits[i]));
  }
  printf("%s: max |logit| %.4f, max |diff| %.3g (limit %.3g)\n", name, max_abs, max_diff,
         1e-4 * max_abs);
  ck_assert_msg(max_diff <= 1e-4f * max_abs, "%s: logits differ by %g (max |logit| %g)", name,
                max_diff, max_abs);
  for (int i = 0; i < B * N; i++)
    ck_assert_msg(out[i] == want_tokens[i], "%s: token %d of seq %d: got %d, want %d", name,
                  i % N, i / N, out[i], want_tokens[i]);
  free(got_enc);
  free(logits);
  free(out);
  free(prompts);
  free(want_tokens);
  free(want_logits);
  free(want_enc);
  moe_engine_free(e);
  moe_device_close(&dev);
  moe_model_free(m);
  moe_st_close(exp);
}

START_TEST(switch_matches_transformers) { check_switch("switch-tiny"); }
END_TEST

/* untied head and embeddings, router bias, capacity overflow in the encoder */
START_TEST(switch_untied_matches_transformers) { check_switch("switch-tiny-untied"); }
END_TEST

/* Qwen3-MoE: per-head q/k norms, attention biases (q, k, v and o), a dense
 * layer among the MoE ones, renormalised top-k */
START_TEST(qwen3moe_matches_transformers) { check_fixture("qwen3moe-tiny"); }
END_TEST

/* OLMoE: q/k norms over the whole projection, top-k not renormalised,
 * tied embeddings */
START_TEST(olmoe_matches_transformers) { check_fixture("olmoe-tiny"); }
END_TEST

/* DeepSeek-V2: multi-head latent attention without a query LoRA, YaRN
 * with mscale (softmax scale), interleaved RoPE, softmax routing limited
 * to the best groups by their max, routed scaling, two shared experts, a
 * dense first layer, biases on kv_a_proj and o_proj */
START_TEST(deepseekv2_matches_transformers) { check_fixture("deepseekv2-tiny"); }
END_TEST

/* DeepSeek-V3: a query LoRA, YaRN with a cos/sin attention factor,
 * sigmoid routing with a correction bias and top-2 group sums,
 * renormalised and scaled */
START_TEST(deepseekv3_matches_transformers) { check_fixture("deepseekv3-tiny"); }
END_TEST

/* DeepSeek-V3 with plain rotate-half RoPE, one group, no renormalisation,
 * attention biases, tied embeddings, two dense layers */
START_TEST(deepseekv3_plain_matches_transformers) { check_fixture("deepseekv3-plain"); }
END_TEST

START_TEST(mixtral_matches_transformers) { check_fixture("mixtral-tiny"); }
END_TEST

/* Granite MoE: experts stacked in input_linear (gate, then up) and
 * output_linear, the router softmax over the top-k logits, and the four
 * multipliers away from 1 (embeddings x12, attention scale 0.2, residual
 * branches x0.3, logits / 4); tied embeddings */
START_TEST(granitemoe_matches_transformers) { check_fixture("granitemoe-tiny"); }
END_TEST

/* Greedy tokens and every prefill logit of `m` under a policy (budget 0:
 * unlimited) on a fixed batch. */
static void run_policy(moe_model *m, const char *policy, dtype_run *out) {
  moe_error err = {0};
  moe_device dev;
  ck_assert_msg(moe_device_open(&dev, "cpu", NULL, &err) == MOE_OK, "%s", err.msg);
  moe_engine *e = NULL;
  moe_engine_options eo = {.max_batch = 2, .max_seq = 16, .all_logits = true,
                           .policy = moe_policy_find(policy)};
  ck_assert_ptr_nonnull(eo.policy);
  ck_assert_msg(moe_engine_create(&e, m, &dev, &eo, &err) == MOE_OK, "%s: %s", policy, err.msg);
  const int32_t prompts[2 * 6] = {5, 9, 2, 7, 7, 3, 11, 4, 4, 60, 1, 0};
  ck_assert_msg(moe_engine_generate(e, prompts, 2, 6, 8, out->tokens, out->logits, NULL, &err) ==
                    MOE_OK, "%s: %s", policy, err.msg);
  moe_engine_free(e);
  moe_device_close(&dev);
}

/* On the Granite fixture every policy gives gpu-only's bits; the model
 * saved (stacked experts written back as 3-D tensors) and loaded again
 * gives the same bits; loaded as bf16 or f16 it gives the same greedy
 * tokens as transformers. */
START_TEST(granitemoe_policies_save_and_dtypes) {
  char dir[1024], tmp[512];
  snprintf(dir, sizeof dir, "%s/tests/fixtures/granitemoe-tiny", MOE_SOURCE_DIR);
  moe_error err = {0};
  moe_model *m = NULL, *back = NULL;
  ck_assert_msg(moe_model_load(&m, dir, NULL, &err) == MOE_OK, "%s", err.msg);
  dtype_run *ref = calloc(1, sizeof *ref), *o = calloc(1, sizeof *o);
  run_policy(m, "gpu-only", ref);
  const char *names[] = {"ondemand", "prefetch-all", "pregated", "pregated-spec"};
  for (int i = 0; i < 4; i++) {
    run_policy(m, names[i], o);
    ck_assert_msg(memcmp(o->logits, ref->logits, sizeof o->logits) == 0, "%s: logits differ",
                  names[i]);
    ck_assert_msg(memcmp(o->tokens, ref->tokens, sizeof o->tokens) == 0, "%s: tokens differ",
                  names[i]);
  }
  ck_assert_ptr_nonnull(tu_tempdir(tmp, sizeof tmp));
  ck_assert_msg(moe_model_save(m, tmp, &err) == MOE_OK, "%s", err.msg);
  ck_assert_msg(moe_model_load(&back, tmp, NULL, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(memcmp(moe_model_config(back), moe_model_config(m), sizeof(moe_config)), 0);
  run_policy(back, "gpu-only", o);
  ck_assert_int_eq(memcmp(o->logits, ref->logits, sizeof o->logits), 0);
  tu_rmtree(tmp);
  moe_model_free(back);
  const moe_dtype half[] = {MOE_BF16, MOE_F16};
  for (int i = 0; i < 2; i++) {
    ck_assert_msg(moe_model_load(&back, dir, &half[i], &err) == MOE_OK, "%s", err.msg);
    run_policy(back, "gpu-only", o);
    ck_assert_msg(memcmp(o->tokens, ref->tokens, sizeof o->tokens) == 0, "dtype %d: tokens differ",
                  (int)half[i]);
    moe_model_free(back);
  }
  free(ref);
  free(o);
  moe_model_free(m);
}
END_TEST

START_TEST(qwen2moe_matches_transformers) { check_fixture("qwen2moe-tiny"); }
END_TEST

/* config.json without the fields whose family defaults differ (kv heads,
 * rms_norm_eps, rope_theta, qkv_bias, ...): the loader must supply the same
 * defaults transformers did. */
START_TEST(mixtral_defaults_match_transformers) { check_fixture("mixtral-defaults"); }
END_TEST

START_TEST(qwen2moe_defaults_match_transformers) { check_fixture("qwen2moe-defaults"); }
END_TEST

/* The same checkpoint stored as bf16 must load (conversion on load) and
 * stay close: a check of the dtype path on real data, not of parity. */
START_TEST(mixtral_loads_as_bf16) {
  char dir[1024];
  snprintf(dir, sizeof dir, "%s/tests/fixtures/mixtral-tiny", MOE_SOURCE_DIR);
  moe_error err = {0};
  moe_model *a = NULL, *b = NULL;
  moe_dtype bf = MOE_BF16;
  ck_assert_msg(moe_model_load(&a, dir, NULL, &err) == MOE_OK, "%s", err.msg);
  ck_assert_msg(moe_model_load(&b, dir, &bf, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(moe_model_dtype(b), MOE_BF16);
  ck_assert_uint_eq(moe_model_expert_bytes(a), 2 * moe_model_expert_bytes(b));
  moe_model_free(a);
  moe_model_free(b);
}
END_TEST

int main(void) {
  Suite *s = suite_create("hf_fixtures");
  TCase *tc = tcase_create("peer");
  tcase_add_test(tc, mixtral_matches_transformers);
  tcase_add_test(tc, qwen2moe_matches_transformers);
  tcase_add_test(tc, mixtral_loads_as_bf16);
  tcase_add_test(tc, mixtral_defaults_match_transformers);
  tcase_add_test(tc, qwen2moe_defaults_match_transformers);
  tcase_add_test(tc, switch_matches_transformers);
  tcase_add_test(tc, qwen3moe_matches_transformers);
  tcase_add_test(tc, olmoe_matches_transformers);
  tcase_add_test(tc, switch_untied_matches_transformers);
  tcase_add_test(tc, deepseekv2_matches_transformers);
  tcase_add_test(tc, deepseekv3_matches_transformers);
  tcase_add_test(tc, deepseekv3_plain_matches_transformers);
  tcase_add_test(tc, granitemoe_matches_transformers);
  tcase_add_test(tc, granitemoe_policies_save_and_dtypes);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
