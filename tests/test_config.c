/* config.json parsing: both families, and one broken file per failure mode,
 * each rejected with the right code and a message naming the field. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "moe/device.h"
#include "moe/backend.h"
#include "moe/config.h"
#include "moe/jsonfile.h"
#include "moe/model.h"
#include "testutil.h"

static char g_dir[512];

static const char *write_cfg(const char *name, const char *text) {
  static char path[1024];
  snprintf(path, sizeof path, "%s/%s", g_dir, name);
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs(text, f);
  fclose(f);
  return path;
}

#define MIXTRAL_FIELDS                                                                       \
  "\"hidden_size\": 64, \"intermediate_size\": 96, \"num_hidden_layers\": 3, "              \
  "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"num_local_experts\": 4, "       \
  "\"num_experts_per_tok\": 2, \"rms_norm_eps\": 1e-5, \"vocab_size\": 96, "                 \
  "\"max_position_embeddings\": 128"

static void setup(void) { ck_assert_ptr_nonnull(tu_tempdir(g_dir, sizeof g_dir)); }
static void teardown(void) { tu_rmtree(g_dir); }

START_TEST(hf_fixture_configs) {
  moe_config c;
  moe_error err = {0};
  ck_assert_msg(moe_config_load(&c, MOE_SOURCE_DIR "/tests/fixtures/mixtral-tiny/config.json", &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(c.arch, MOE_ARCH_MIXTRAL);
  ck_assert_int_eq(c.head_dim, 16); /* "head_dim": null -> hidden / heads */
  ck_assert(c.norm_topk);
  ck_assert_int_eq(moe_config_n_moe_layers(&c), 3);
  ck_assert(c.rope_theta == 10000.0f); /* from rope_parameters */
  ck_assert_msg(moe_config_load(&c, MOE_SOURCE_DIR "/tests/fixtures/qwen2moe-tiny/config.json", &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(c.arch, MOE_ARCH_QWEN2_MOE);
  ck_assert(c.is_moe[0] && !c.is_moe[1] && c.is_moe[2] && c.is_moe[3]);
  ck_assert_int_eq(c.shared_ffn, 80);
  ck_assert(c.qkv_bias && c.tie_embeddings && !c.norm_topk);
  ck_assert_uint_eq(moe_config_expert_bytes(&c, 4), 3u * 48 * 64 * 4);
}
END_TEST

START_TEST(qwen_sparse_step) {
  moe_config c;
  moe_error err = {0};
  const char *p = write_cfg("q.json",
      "{\"model_type\": \"qwen2_moe\", \"hidden_size\": 32, \"intermediate_size\": 64, "
      "\"moe_intermediate_size\": 16, \"num_hidden_layers\": 6, \"num_attention_heads\": 4, "
      "\"num_key_value_heads\": null, \"shared_expert_intermediate_size\": 0, "
      "\"num_experts\": 4, \"num_experts_per_tok\": 1, \"vocab_size\": 10, "
      "\"max_position_embeddings\": 32, \"decoder_sparse_step\": 2, \"mlp_only_layers\": [3]}");
  ck_assert_msg(moe_config_load(&c, p, &err) == MOE_OK, "%s", err.msg);
  /* layers 1, 3, 5 are sparse by the step; 3 is forced dense */
  bool want[6] = {false, true, false, false, false, true};
  for (int i = 0; i < 6; i++) ck_assert_int_eq(c.is_moe[i], want[i]);
  ck_assert_int_eq(c.n_kv_heads, 4); /* an explicit null: as many as the query heads */
  ck_assert_int_eq(c.shared_ffn, 0);
}
END_TEST

typedef struct bad_case {
  const char *text;
  moe_status code;
  const char *needle; /* must appear in the message */
} bad_case;

START_TEST(broken_configs) {
  static const bad_case cases[] = {
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS, MOE_ERR_FORMAT, "malformed JSON"},
      {"[1, 2]", MOE_ERR_FORMAT, "object"},
      {"{" MIXTRAL_FIELDS "}", MOE_ERR_FORMAT, "model_type"},
      {"{\"model_type\": \"llama\", " MIXTRAL_FIELDS "}", MOE_ERR_UNSUPPORTED, "llama"},
      {"{\"model_type\": \"mixtral\", \"hidden_size\": \"64\", \"num_hidden_layers\": 1}",
       MOE_ERR_FORMAT, "'hidden_size' must be an integer"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"rope_theta\": 1e4, "
       "\"rope_parameters\": {\"rope_theta\": 1e6}}", MOE_ERR_INVALID, "contradicts"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"rope_parameters\": {\"rope_type\": \"yarn\", "
       "\"factor\": -2.0}}", MOE_ERR_INVALID, "yarn"},
      {"{\"model_type\": \"mixtral\", \"hidden_size\": 64, \"intermediate_size\": 96, "
       "\"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"num_key_value_heads\": 3, "
       "\"num_local_experts\": 4, \"num_experts_per_tok\": 2, \"vocab_size\": 96, "
       "\"max_position_embeddings\": 128}", MOE_ERR_INVALID, "num_key_value_heads"},
      {"{\"model_type\": \"mixtral\", \"hidden_size\": 64, \"intermediate_size\": 96, "
       "\"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, "
       "\"num_local_experts\": 4, \"num_experts_per_tok\": 5, \"vocab_size\": 96, \"max_position_embeddings\": 128}",
       MOE_ERR_INVALID, "num_experts_per_tok"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"hidden_act\": \"gelu\"}",
       MOE_ERR_UNSUPPORTED, "hidden_act"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 2.0}}",
       MOE_ERR_UNSUPPORTED, "rope_scaling.rope_type 'linear'"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2.0}}",
       MOE_ERR_UNSUPPORTED, "'dynamic'"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"rope_parameters\": {\"rope_type\": \"llama3\", "
       "\"factor\": 8.0, \"rope_theta\": 5e5}}", MOE_ERR_UNSUPPORTED, "'llama3'"},
      {"{\"model_type\": \"qwen2_moe\", \"rope_scaling\": {\"rope_type\": \"longrope\", \"short_factor\": [1.0]}}",
       MOE_ERR_UNSUPPORTED, "'longrope'"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"rope_parameters\": {\"full_attention\": "
       "{\"rope_type\": \"yarn\", \"factor\": 4.0}}}", MOE_ERR_UNSUPPORTED, "rope_parameters.full_attention"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"rope_scaling\": {\"factor\": 4.0}}",
       MOE_ERR_UNSUPPORTED, "no rope_type"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"sliding_window\": -4}",
       MOE_ERR_INVALID, "sliding_window"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"hidden_size\": 64}", MOE_ERR_FORMAT,
       "malformed JSON"}, /* duplicate key */
      {"{\"model_type\": \"qwen2_moe\", \"hidden_size\": 32, \"intermediate_size\": 64, "
       "\"moe_intermediate_size\": 16, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
       "\"num_experts\": 4, \"num_experts_per_tok\": 1, \"vocab_size\": 10, "
       "\"max_position_embeddings\": 32, \"mlp_only_layers\": [2]}", MOE_ERR_INVALID, "mlp_only_layers"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"tie_word_embeddings\": 1}",
       MOE_ERR_FORMAT, "tie_word_embeddings"},
      /* rope_theta given as 0, negative or tiny was silently replaced by 10000 */
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"rope_theta\": 0}", MOE_ERR_INVALID,
       "rope_theta 0 must be"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"rope_theta\": -5}", MOE_ERR_INVALID,
       "rope_theta -5 must be"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"rope_theta\": 1e-30}", MOE_ERR_INVALID,
       "must be a finite number > 1"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"rope_parameters\": {\"rope_type\": "
       "\"default\", \"rope_theta\": 0.5}}", MOE_ERR_INVALID, "rope_parameters.rope_theta 0.5"},
      /* an epsilon that underflows float, or overflows it */
      {"{\"model_type\": \"qwen2_moe\", \"rms_norm_eps\": 1e-50}", MOE_ERR_INVALID,
       "rms_norm_eps"},
      {"{\"model_type\": \"qwen2_moe\", \"rms_norm_eps\": 1e39}", MOE_ERR_INVALID,
       "rms_norm_eps"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char name[32];
    snprintf(name, sizeof name, "bad%zu.json", i);
    const char *p = write_cfg(name, cases[i].text);
    moe_config c;
    moe_error err = {0};
    moe_status st = moe_config_load(&c, p, &err);
    ck_assert_msg(st == cases[i].code, "case %zu: got %s (%s), want %s", i, moe_status_name(st),
                  err.msg, moe_status_name(cases[i].code));
    ck_assert_msg(strstr(err.msg, cases[i].needle) != NULL, "case %zu: message '%s' lacks '%s'", i,
                  err.msg, cases[i].needle);
    ck_assert_msg(strstr(err.msg, name) != NULL, "case %zu: message '%s' lacks the file name", i,
                  err.msg);
  }
}
END_TEST

/* An absent field takes transformers' default for the family (values of
 * transformers 5.24 MixtralConfig() / Qwen2MoeConfig()); the families
 * differ, e.g. in rms_norm_eps and rope_theta. */
START_TEST(absent_fields_take_family_defaults) {
  moe_config c;
  moe_error err = {0};
  const char *p = write_cfg("m.json", "{\"model_type\": \"mixtral\"}");
  ck_assert_msg(moe_config_load(&c, p, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(c.hidden, 4096);
  ck_assert_int_eq(c.expert_ffn, 14336);
  ck_assert_int_eq(c.n_layers, 32);
  ck_assert_int_eq(c.n_heads, 32);
  ck_assert_int_eq(c.n_kv_heads, 8);
  ck_assert_int_eq(c.head_dim, 128);
  ck_assert_int_eq(c.vocab, 32000);
  ck_assert_int_eq(c.max_pos, 131072);
  ck_assert_int_eq(c.n_experts, 8);
  ck_assert_int_eq(c.top_k, 2);
  ck_assert(c.rms_eps == 1e-5f);
  ck_assert(c.rope_theta == 1e6f);
  ck_assert(c.norm_topk && !c.qkv_bias && !c.tie_embeddings);
  ck_assert_int_eq(c.sliding_window, 0);
  p = write_cfg("q.json", "{\"model_type\": \"qwen2_moe\"}");
  ck_assert_msg(moe_config_load(&c, p, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(c.hidden, 2048);
  ck_assert_int_eq(c.dense_ffn, 5632);
  ck_assert_int_eq(c.expert_ffn, 1408);
  ck_assert_int_eq(c.shared_ffn, 5632);
  ck_assert_int_eq(c.n_layers, 24);
  ck_assert_int_eq(c.n_heads, 16);
  ck_assert_int_eq(c.n_kv_heads, 16);
  ck_assert_int_eq(c.vocab, 151936);
  ck_assert_int_eq(c.max_pos, 32768);
  ck_assert_int_eq(c.n_experts, 60);
  ck_assert_int_eq(c.top_k, 4);
  ck_assert(c.rms_eps == 1e-6f);
  ck_assert(c.rope_theta == 10000.0f);
  ck_assert(!c.norm_topk && c.qkv_bias);
  ck_assert_int_eq(moe_config_n_moe_layers(&c), 24);
  ck_assert_int_eq(c.sliding_window, 0);
  /* qwen2_moe: a window only when use_sliding_window, and only on the
   * layers layer_types names */
  p = write_cfg("w.json", "{\"model_type\": \"qwen2_moe\", \"sliding_window\": 64}");
  ck_assert(moe_config_load(&c, p, &err) == MOE_OK);
  ck_assert_int_eq(c.sliding_window, 0);
  p = write_cfg("w2.json", "{\"model_type\": \"qwen2_moe\", \"use_sliding_window\": true, "
                           "\"sliding_window\": 64, \"num_hidden_layers\": 2, "
                           "\"layer_types\": [\"full_attention\", \"full_attention\"]}");
  ck_assert(moe_config_load(&c, p, &err) == MOE_OK);
  ck_assert_int_eq(c.sliding_window, 0);
  p = write_cfg("w3.json", "{\"model_type\": \"qwen2_moe\", \"use_sliding_window\": true, "
                           "\"sliding_window\": 64}");
  ck_assert(moe_config_load(&c, p, &err) == MOE_OK);
  ck_assert_int_eq(c.sliding_window, 64);
}
END_TEST

/* A sliding window never refuses the model: a run inside the window is
 * exact (the mask changes nothing there); a run past it is refused when the
 * engine is built, with the reason. */
START_TEST(sliding_window_is_checked_per_run) {
  moe_config c;
  moe_error err = {0};
  const char *p = write_cfg("s.json", "{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS
                                      ", \"sliding_window\": 16}");
  ck_assert_msg(moe_config_load(&c, p, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(c.sliding_window, 16);
  moe_model *m = NULL;
  moe_synth_options so = {MOE_F32, 1, 0.0, false};
  ck_assert(moe_model_synthetic(&m, &c, &so, &err) == MOE_OK);
  moe_device dev;
  ck_assert(moe_device_open(&dev, "cpu", NULL, &err) == MOE_OK);
  moe_engine *e = NULL;
  moe_engine_options eo = {.max_batch = 1, .max_seq = 16};
  ck_assert_msg(moe_engine_create(&e, m, &dev, &eo, &err) == MOE_OK, "%s", err.msg);
  moe_engine_free(e);
  eo.max_seq = 17;
  ck_assert_int_eq(moe_engine_create(&e, m, &dev, &eo, &err), MOE_ERR_UNSUPPORTED);
  ck_assert_msg(strstr(err.msg, "sliding_window 16") != NULL, "%s", err.msg);
  moe_device_close(&dev);
  moe_model_free(m);
}
END_TEST

/* Dimensions each in range whose products or sums overflow size_t are
 * refused with a message, in the config check, the layout and the engine's
 * buffer plan; never a wrapped-around small allocation. */
START_TEST(oversized_models_are_refused) {
  moe_config c;
  moe_error err = {0};
  /* heads x head_dim x hidden x 4 overflows */
  const char *p = write_cfg("big1.json", "{\"model_type\": \"mixtral\", \"hidden_size\": 1073741824, "
                                        "\"vocab_size\": 16, \"num_attention_heads\": 1048576, "
                                        "\"head_dim\": 1048576, "
                                        "\"num_key_value_heads\": 1048576, \"intermediate_size\": 16}");
  ck_assert_int_eq(moe_config_load(&c, p, &err), MOE_ERR_INVALID);
  ck_assert_msg(strstr(err.msg, "overflows") && strstr(err.msg, "big1.json"), "%s", err.msg);
  /* experts x expert size overflows while one expert fits */
  moe_error_clear(&err);
  p = write_cfg("big2.json", "{\"model_type\": \"mixtral\", \"hidden_size\": 1048576, "
                             "\"intermediate_size\": 8388608, \"num_local_experts\": 1024, "
                             "\"num_hidden_layers\": 256, \"num_attention_heads\": 8, "
                             "\"num_key_value_heads\": 8, \"vocab_size\": 16}");
  ck_assert_int_eq(moe_config_load(&c, p, &err), MOE_ERR_INVALID);
  ck_assert_msg(strstr(err.msg, "experts x expert size"), "%s", err.msg);
  /* a config built in code that passes the field checks: the layout still
   * refuses a dense slab that overflows in its sum */
  memset(&c, 0, sizeof c);
  c.arch = MOE_ARCH_QWEN2_MOE;
  c.hidden = 1 << 30; /* each projection 2^62 bytes: fits; 4 x 256 of them do not */
  c.n_layers = 256;
  c.n_heads = 1;
  c.n_kv_heads = 1;
  c.head_dim = 1 << 30;
  c.vocab = 16;
  c.max_pos = 64;
  c.dense_ffn = 16;
  c.rms_eps = 1e-6f;
  c.rope_theta = 1e4f;
  size_t dense = 0, experts = 0;
  moe_error_clear(&err);
  ck_assert_int_eq(moe_model_plan_layout(&c, MOE_F32, &dense, &experts, &err), MOE_ERR_INVALID);
  ck_assert_msg(strstr(err.msg, "too large"), "%s", err.msg);
  moe_model *m = NULL;
  moe_synth_options so = {MOE_F32, 1, 0.0, false};
  moe_error_clear(&err);
  ck_assert_int_eq(moe_model_synthetic(&m, &c, &so, &err), MOE_ERR_INVALID);
  ck_assert_ptr_null(m);
  /* the engine's buffers: batch x sequence that overflows */
  p = write_cfg("small.json", "{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS "}");
  ck_assert(moe_config_load(&c, p, &err) == MOE_OK);
  c.max_pos = 1 << 30;
  ck_assert(moe_model_synthetic(&m, &c, &so, &err) == MOE_OK);
  moe_device dev;
  ck_assert(moe_device_open(&dev, "cpu", NULL, &err) == MOE_OK);
  moe_engine *e = NULL;
  moe_engine_options eo = {.max_batch = 1 << 30, .max_seq = 1 << 30, .max_prefill = 1 << 30};
  moe_error_clear(&err);
  ck_assert_int_eq(moe_engine_create(&e, m, &dev, &eo, &err), MOE_ERR_INVALID);
  ck_assert_msg(strstr(err.msg, "overflows"), "%s", err.msg);
  ck_assert_uint_eq(dev.mem.current_total, 0);
  moe_device_close(&dev);
  moe_model_free(m);
}
END_TEST

/* config.json files as transformers writes them with every scaled RoPE
 * variant (tests/fixtures/rope-configs, made by make_hf_fixtures.py): YaRN
 * is read, every other one refused with its type named, never run as plain
 * RoPE. */
START_TEST(transformers_rope_configs_are_refused) {
  static const char *yarn[] = {"mixtral-yarn", "qwen2moe-yarn"};
  for (size_t i = 0; i < 2; i++) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fixtures/rope-configs/%s.json", MOE_SOURCE_DIR, yarn[i]);
    moe_config c;
    moe_error err = {0};
    ck_assert_msg(moe_config_load(&c, path, &err) == MOE_OK, "%s: %s", yarn[i], err.msg);
    ck_assert_int_eq(c.rope_kind, MOE_ROPE_YARN);
    ck_assert_float_eq(c.rope_factor, 4.0f);
    ck_assert_int_eq(c.rope_orig_max, 32);
  }
  static const char *files[] = {"mixtral-linear", "mixtral-dynamic", "mixtral-llama3",
                                "qwen2moe-linear", "qwen2moe-dynamic",
                                "qwen2moe-llama3", "qwen2moe-longrope"};
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fixtures/rope-configs/%s.json", MOE_SOURCE_DIR, files[i]);
    moe_config c;
    moe_error err = {0};
    ck_assert_msg(moe_config_load(&c, path, &err) == MOE_ERR_UNSUPPORTED, "%s: accepted", files[i]);
    const char *type = strchr(files[i], '-') + 1;
    char want[64];
    snprintf(want, sizeof want, "'%s'", type);
    ck_assert_msg(strstr(err.msg, want) != NULL, "%s: '%s' lacks %s", files[i], err.msg, want);
  }
}
END_TEST

/* Switch Transformers: the fixtures' sparse layers, transformers' defaults
 * (SwitchTransformersConfig of 5.24), and the refusals. */
START_TEST(switch_configs) {
  moe_config c;
  moe_error err = {0};
  ck_assert_msg(moe_config_load(&c, MOE_SOURCE_DIR "/tests/fixtures/switch-tiny/config.json", &err) ==
                    MOE_OK, "%s", err.msg);
  ck_assert_int_eq(c.arch, MOE_ARCH_SWITCH);
  ck_assert_int_eq(c.n_enc_layers, 4);
  ck_assert_int_eq(c.n_layers, 7);
  /* encoder step 2: layers 1, 3; decoder step 1: all */
  const bool want_a[] = {false, true, false, true, true, true, true};
  for (int i = 0; i < 7; i++) ck_assert_int_eq(c.is_moe[i], want_a[i]);
  ck_assert_int_eq(c.top_k, 1);
  ck_assert_int_eq(c.rel_buckets, 8);
  ck_assert_int_eq(c.rel_max_distance, 20);
  ck_assert(c.tie_embeddings && !c.router_logit_bias);
  ck_assert_int_eq(c.n_kv_heads, c.n_heads);
  ck_assert_uint_eq(moe_config_expert_bytes(&c, 4), 2u * 48 * 32 * 4); /* wi + wo */
  ck_assert_msg(moe_config_load(&c, MOE_SOURCE_DIR "/tests/fixtures/switch-tiny-untied/config.json",
                                &err) == MOE_OK, "%s", err.msg);
  /* encoder step 1: all 4; decoder step 3: layer 1 only (global 5) */
  const bool want_b[] = {true, true, true, true, false, true, false};
  for (int i = 0; i < 7; i++) ck_assert_int_eq(c.is_moe[i], want_b[i]);
  ck_assert(!c.tie_embeddings && c.router_logit_bias);
  ck_assert_int_eq(c.expert_capacity, 3);
  ck_assert_int_eq(c.head_dim, 6);

  /* absent fields: transformers' defaults; 12 // 3 = a step of 4 */
  const char *p = write_cfg("sw.json", "{\"model_type\": \"switch_transformers\"}");
  ck_assert_msg(moe_config_load(&c, p, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(c.hidden, 768);
  ck_assert_int_eq(c.head_dim, 64);
  ck_assert_int_eq(c.expert_ffn, 2048);
  ck_assert_int_eq(c.n_enc_layers, 12);
  ck_assert_int_eq(c.n_layers, 24);
  ck_assert_int_eq(c.n_experts, 8);
  ck_assert_int_eq(c.expert_capacity, 64);
  ck_assert_int_eq(c.vocab, 32128);
  ck_assert_int_eq(c.decoder_start, 0); /* the pad id */
  ck_assert_int_eq(c.eos_id, 1);
  ck_assert(c.rms_eps == 1e-6f && c.tie_embeddings);
  ck_assert_int_eq(moe_config_n_moe_layers(&c), 6);
  ck_assert(c.is_moe[1] && c.is_moe[5] && c.is_moe[9] && !c.is_moe[4]);
  ck_assert(c.is_moe[12 + 1] && c.is_moe[12 + 9] && !c.is_moe[12]);
  p = write_cfg("sw2.json", "{\"model_type\": \"switch_transformers\", \"num_layers\": 4, "
                            "\"num_decoder_layers\": null, \"num_sparse_encoder_layers\": 0}");
  ck_assert_msg(moe_config_load(&c, p, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(c.n_layers, 8); /* null: as many as the encoder */
  /* no sparse encoder layers asked for gives a step of num_layers, and
   * transformers then still makes layer 1 sparse (1 % 4 == 1): we follow */
  ck_assert(!c.is_moe[0] && c.is_moe[1] && !c.is_moe[2] && !c.is_moe[3]);
  ck_assert(c.is_moe[4] && c.is_moe[7]); /* decoder: 4 // 3 = step 1, all */

  const struct {
    const char *json, *needle;
    moe_status code;
  } bad[] = {
      {"\"num_layers\": 12, \"num_sparse_encoder_layers\": 3, \"encoder_sparse_step\": 2",
       "encoder_sparse_step", MOE_ERR_INVALID},
      {"\"router_dtype\": \"bfloat16\"", "router_dtype", MOE_ERR_UNSUPPORTED},
      {"\"dense_act_fn\": \"gelu_new\"", "dense_act_fn", MOE_ERR_UNSUPPORTED},
      {"\"feed_forward_proj\": \"gated-gelu\"", "feed_forward_proj", MOE_ERR_UNSUPPORTED},
      {"\"is_gated_act\": true", "is_gated_act", MOE_ERR_UNSUPPORTED},
      {"\"relative_attention_num_buckets\": 2", "relative_attention_num_buckets", MOE_ERR_INVALID},
      {"\"relative_attention_num_buckets\": 32, \"relative_attention_max_distance\": 8",
       "relative_attention_max_distance", MOE_ERR_INVALID},
      {"\"num_layers\": 0", "num_layers", MOE_ERR_INVALID},
      {"\"num_layers\": 200, \"num_decoder_layers\": 100", "limit", MOE_ERR_UNSUPPORTED},
      {"\"vocab_size\": 100, \"decoder_start_token_id\": 100", "decoder_start_token_id",
       MOE_ERR_INVALID},
      {"\"is_encoder_decoder\": false", "is_encoder_decoder", MOE_ERR_UNSUPPORTED},
      {"\"d_model\": \"768\"", "d_model", MOE_ERR_FORMAT},
      {"\"expert_capacity\": -1", "expert_capacity", MOE_ERR_INVALID},
      {"\"router_bias\": 1", "router_bias", MOE_ERR_FORMAT},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char text[512];
    snprintf(text, sizeof text, "{\"model_type\": \"switch_transformers\", %s}", bad[i].json);
    p = write_cfg("bad.json", text);
    moe_error e2 = {0};
    ck_assert_int_eq(moe_config_load(&c, p, &e2), bad[i].code);
    ck_assert_msg(strstr(e2.msg, bad[i].needle) != NULL, "case %zu: '%s' lacks '%s'", i, e2.msg,
                  bad[i].needle);
    ck_assert_msg(strstr(e2.msg, "bad.json") != NULL, "case %zu: '%s' does not name the file", i,
                  e2.msg);
  }
}
END_TEST

/* Qwen3-MoE and OLMoE: the fixtures, transformers' defaults for absent
 * fields (Qwen3MoeConfig, OlmoeConfig of 5.24), num_experts or
 * num_local_experts (transformers 5 writes the latter), refusals. */
START_TEST(qwen3_and_olmoe_configs) {
  moe_config c;
  moe_error err = {0};
  ck_assert_msg(moe_config_load(&c, MOE_SOURCE_DIR "/tests/fixtures/qwen3moe-tiny/config.json", &err) ==
                    MOE_OK, "%s", err.msg);
  ck_assert_int_eq(c.arch, MOE_ARCH_QWEN3_MOE);
  ck_assert_int_eq(c.n_experts, 8); /* from num_local_experts */
  ck_assert_int_eq(c.head_dim, 24);
  ck_assert_int_eq(c.qk_norm, MOE_QK_NORM_HEAD);
  ck_assert(c.qkv_bias && c.o_bias && c.norm_topk && c.shared_ffn == 0);
  ck_assert(c.is_moe[0] && c.is_moe[1] && !c.is_moe[2] && c.is_moe[3]);
  ck_assert_msg(moe_config_load(&c, MOE_SOURCE_DIR "/tests/fixtures/olmoe-tiny/config.json", &err) ==
                    MOE_OK, "%s", err.msg);
  ck_assert_int_eq(c.arch, MOE_ARCH_OLMOE);
  ck_assert_int_eq(c.qk_norm, MOE_QK_NORM_FULL);
  ck_assert_int_eq(c.expert_ffn, 40);
  ck_assert(!c.norm_topk && !c.qkv_bias && c.is_moe[0] && c.is_moe[2]);
  const char *p = write_cfg("q3.json", "{\"model_type\": \"qwen3_moe\"}");
  ck_assert_msg(moe_config_load(&c, p, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(c.n_experts, 128);
  ck_assert_int_eq(c.top_k, 8);
  ck_assert_int_eq(c.n_kv_heads, 4);
  ck_assert_int_eq(c.expert_ffn, 768);
  ck_assert_int_eq(c.head_dim, 64); /* hidden / heads */
  ck_assert(!c.norm_topk && !c.qkv_bias);
  p = write_cfg("ol.json", "{\"model_type\": \"olmoe\", \"num_attention_heads\": 8}");
  ck_assert_msg(moe_config_load(&c, p, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(c.n_kv_heads, 8); /* None: as many as the query heads */
  ck_assert_int_eq(c.n_experts, 64);
  ck_assert_int_eq(c.vocab, 50304);
  ck_assert(c.rms_eps == 1e-5f);
  const struct {
    const char *json, *needle;
    moe_status code;
  } bad[] = {
      {"{\"model_type\": \"olmoe\", \"clip_qkv\": 8.0}", "clip_qkv", MOE_ERR_UNSUPPORTED},
      {"{\"model_type\": \"qwen3_moe\", \"num_experts\": 8, \"num_local_experts\": 4}",
       "num_local_experts", MOE_ERR_INVALID},
      {"{\"model_type\": \"qwen3_moe\", \"attention_bias\": \"yes\"}", "attention_bias",
       MOE_ERR_FORMAT},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    p = write_cfg("bad.json", bad[i].json);
    moe_error e2 = {0};
    ck_assert_int_eq(moe_config_load(&c, p, &e2), bad[i].code);
    ck_assert_msg(strstr(e2.msg, bad[i].needle) != NULL, "case %zu: '%s'", i, e2.msg);
  }
}
END_TEST

/* A synthetic Switch model saved as config.json + safetensors loads back
 * with the same configuration and weights: the same tokens. */
START_TEST(switch_save_load_roundtrip) {
  moe_config c;
  moe_error err = {0};
  ck_assert_msg(moe_config_load(&c, MOE_SOURCE_DIR "/tests/fixtures/switch-tiny-untied/config.json",
                                &err) == MOE_OK, "%s", err.msg);
  moe_synth_options so = {MOE_F32, 3, 0.0, true};
  moe_model *a = NULL, *b = NULL;
  ck_assert_msg(moe_model_synthetic(&a, &c, &so, &err) == MOE_OK, "%s", err.msg);
  ck_assert_msg(moe_model_save(a, g_dir, &err) == MOE_OK, "%s", err.msg);
  ck_assert_msg(moe_model_load(&b, g_dir, NULL, &err) == MOE_OK, "%s", err.msg);
  const moe_config *cb = moe_model_config(b);
  ck_assert_int_eq(cb->n_enc_layers, c.n_enc_layers);
  ck_assert_int_eq(cb->n_layers, c.n_layers);
  ck_assert_int_eq(cb->expert_capacity, c.expert_capacity);
  ck_assert(cb->router_logit_bias && !cb->tie_embeddings);
  for (int i = 0; i < c.n_layers; i++) ck_assert_int_eq(cb->is_moe[i], c.is_moe[i]);
  ck_assert_uint_eq(moe_model_total_bytes(a), moe_model_total_bytes(b));
  moe_model *ms[2] = {a, b};
  int32_t toks[2][2 * 5];
  for (int k = 0; k < 2; k++) {
    moe_device dev;
    ck_assert(moe_device_open(&dev, "cpu", NULL, &err) == MOE_OK);
    moe_engine *e = NULL;
    moe_engine_options eo = {.max_batch = 2, .max_seq = 16};
    ck_assert_msg(moe_engine_create(&e, ms[k], &dev, &eo, &err) == MOE_OK, "%s", err.msg);
    const int32_t src[2 * 6] = {5, 9, 2, 7, 7, 3, 11, 4, 4, 60, 1, 0};
    ck_assert_msg(moe_engine_generate(e, src, 2, 6, 5, toks[k], NULL, NULL, &err) == MOE_OK, "%s",
                  err.msg);
    moe_engine_free(e);
    moe_device_close(&dev);
  }
  ck_assert_int_eq(memcmp(toks[0], toks[1], sizeof toks[0]), 0);
  moe_model_free(a);
  moe_model_free(b);
}
END_TEST

/* YaRN's inverse frequencies and attention factor against transformers'
 * own (tests/fixtures/rope-configs/yarn-expected.json): DeepSeek-V3's and
 * V2-Lite's real parameters, a Qwen3-MoE one, and one with truncate off
 * and an explicit attention factor. */
START_TEST(yarn_frequencies_match_transformers) {
  moe_error err = {0};
  json_t *want = moe_json_load_file(MOE_SOURCE_DIR "/tests/fixtures/rope-configs/yarn-expected.json", &err);
  ck_assert_msg(want != NULL, "%s", err.msg);
  const char *name;
  json_t *v;
  int n_cases = 0;
  json_object_foreach(want, name, v) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fixtures/rope-configs/yarn-%s.json", MOE_SOURCE_DIR, name);
    moe_config c;
    ck_assert_msg(moe_config_load(&c, path, &err) == MOE_OK, "%s: %s", name, err.msg);
    ck_assert_int_eq(c.rope_kind, MOE_ROPE_YARN);
    json_t *inv = json_object_get(v, "inv_freq");
    const int half = moe_config_rot_dim(&c) / 2;
    ck_assert_int_eq((int)json_array_size(inv), half);
    float f[4096], af;
    moe_config_rope_freqs(&c, f, &af);
    for (int i = 0; i < half; i++) {
      const double w = json_real_value(json_array_get(inv, (size_t)i));
      ck_assert_msg(fabs(f[i] - w) <= 2e-7 * fabs(w), "%s: inv_freq[%d] %.9g, transformers %.9g",
                    name, i, f[i], w);
    }
    const double wa = json_real_value(json_object_get(v, "attention_factor"));
    ck_assert_msg(fabs(af - wa) <= 1e-6 * wa, "%s: attention factor %.9g, transformers %.9g", name,
                  af, wa);
    n_cases++;
  }
  ck_assert_int_eq(n_cases, 4);
  json_decref(want);
}
END_TEST

/* DeepSeek-V2/V3: the fixtures' fields, transformers' defaults when a
 * field is absent, the refusals, and a save/load round trip. */
START_TEST(deepseek_configs) {
  moe_config c;
  moe_error err = {0};
  ck_assert_msg(moe_config_load(&c, MOE_SOURCE_DIR "/tests/fixtures/deepseekv3-tiny/config.json",
                                &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(c.arch, MOE_ARCH_DEEPSEEK_V3);
  ck_assert(moe_config_is_mla(&c));
  ck_assert_int_eq(c.q_rank, 40);
  ck_assert_int_eq(c.kv_rank, 24);
  ck_assert_int_eq(c.head_dim, 24); /* nope + rope, not config.json's head_dim (8) */
  ck_assert_int_eq(c.n_kv_heads, c.n_heads);
  ck_assert_int_eq(c.shared_ffn, 32);
  ck_assert(!c.is_moe[0] && c.is_moe[1] && c.is_moe[2]);
  ck_assert(c.router_ex && c.scoring == MOE_SCORING_SIGMOID && c.group_mask_neg_inf);
  ck_assert_int_eq(c.group_score, MOE_GROUP_TOP2_SUM);
  ck_assert(c.rope_interleave && c.norm_topk);
  ck_assert_float_eq(c.routed_scale, 2.5f);
  ck_assert_int_eq(c.rope_kind, MOE_ROPE_YARN);
  /* softmax scale: 24^-0.5 x mscale(4, 0.8)^2 */
  const double m = 0.1 * 0.8 * log(4.0) + 1.0;
  ck_assert_double_eq_tol(moe_config_attn_scale(&c), pow(24.0, -0.5) * m * m, 1e-7);
  ck_assert_msg(moe_config_load(&c, MOE_SOURCE_DIR "/tests/fixtures/deepseekv2-tiny/config.json",
                                &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(c.arch, MOE_ARCH_DEEPSEEK_V2);
  ck_assert_int_eq(c.q_rank, 0); /* q_lora_rank null: a plain q_proj */
  ck_assert(c.scoring == MOE_SCORING_SOFTMAX && !c.group_mask_neg_inf && !c.norm_topk);
  ck_assert_int_eq(c.group_score, MOE_GROUP_MAX);
  ck_assert_int_eq(c.n_group, 4);
  ck_assert_int_eq(c.shared_ffn, 64);
  ck_assert(c.o_bias && c.rope_interleave);
  /* defaults (DeepseekV3Config(), DeepseekV2Config() of transformers 5.24) */
  const char *p = write_cfg("ds3.json", "{\"model_type\": \"deepseek_v3\"}");
  ck_assert_msg(moe_config_load(&c, p, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(c.hidden, 7168);
  ck_assert_int_eq(c.n_layers, 61);
  ck_assert_int_eq(c.n_experts, 256);
  ck_assert_int_eq(c.top_k, 8);
  ck_assert_int_eq(c.n_group, 8);
  ck_assert_int_eq(c.topk_group, 4);
  ck_assert_int_eq(c.q_rank, 1536);
  ck_assert_int_eq(c.kv_rank, 512);
  ck_assert_int_eq(c.head_dim, 192);
  ck_assert_int_eq(c.v_dim, 128);
  ck_assert_int_eq(c.shared_ffn, 2048);
  ck_assert_int_eq(c.vocab, 129280);
  ck_assert(!c.is_moe[2] && c.is_moe[3]);
  ck_assert_int_eq(c.rope_kind, MOE_ROPE_DEFAULT);
  p = write_cfg("ds2.json", "{\"model_type\": \"deepseek_v2\", \"num_experts_per_tok\": 6}");
  ck_assert_msg(moe_config_load(&c, p, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(c.hidden, 4096);
  ck_assert_int_eq(c.n_experts, 64);
  ck_assert_int_eq(c.expert_ffn, 1407);
  ck_assert_int_eq(c.shared_ffn, 2 * 1407);
  ck_assert_int_eq(c.n_group, 0);
  ck_assert(c.is_moe[0]);
  /* DeepSeek-V3's own config.json spells its YaRN rope_scaling "type" */
  p = write_cfg("ds3y.json", "{\"model_type\": \"deepseek_v3\", \"max_position_embeddings\": 163840, "
                             "\"rope_scaling\": {\"beta_fast\": 32, \"beta_slow\": 1, \"factor\": 40, "
                             "\"mscale\": 1.0, \"mscale_all_dim\": 1.0, "
                             "\"original_max_position_embeddings\": 4096, \"type\": \"yarn\"}}");
  ck_assert_msg(moe_config_load(&c, p, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(c.rope_kind, MOE_ROPE_YARN);
  ck_assert_float_eq(c.rope_factor, 40.0f);
  const bad_case bad[] = {
      {"{\"model_type\": \"deepseek_v2\"}", MOE_ERR_FORMAT, "num_experts_per_tok"},
      {"{\"model_type\": \"deepseek_v2\", \"num_experts_per_tok\": 6, \"topk_method\": \"noaux_tc\"}",
       MOE_ERR_UNSUPPORTED, "topk_method"},
      {"{\"model_type\": \"deepseek_v2\", \"num_experts_per_tok\": 6, \"topk_method\": "
       "\"group_limited_greedy\"}", MOE_ERR_INVALID, "n_group"},
      {"{\"model_type\": \"deepseek_v3\", \"n_group\": null}", MOE_ERR_INVALID, "n_group"},
      {"{\"model_type\": \"deepseek_v3\", \"n_group\": 7}", MOE_ERR_INVALID, "n_group 7"},
      {"{\"model_type\": \"deepseek_v3\", \"num_key_value_heads\": 16}", MOE_ERR_UNSUPPORTED,
       "num_key_value_heads"},
      {"{\"model_type\": \"deepseek_v2\", \"num_experts_per_tok\": 6, \"mlp_bias\": true}",
       MOE_ERR_UNSUPPORTED, "mlp_bias"},
      {"{\"model_type\": \"deepseek_v3\", \"qk_rope_head_dim\": 7}", MOE_ERR_INVALID, "even"},
      {"{\"model_type\": \"deepseek_v3\", \"routed_scaling_factor\": 0}", MOE_ERR_INVALID,
       "routed_scaling_factor"},
      {"{\"model_type\": \"deepseek_v3\", \"kv_lora_rank\": 0}", MOE_ERR_INVALID, "kv_lora_rank"},
      {"{\"model_type\": \"deepseek_v3\", \"rope_parameters\": {\"rope_type\": \"yarn\", "
       "\"factor\": 4, \"beta_fast\": -1}}", MOE_ERR_INVALID, "yarn"},
      {"{\"model_type\": \"deepseek_v3\", \"rope_parameters\": {\"rope_type\": \"yarn\", "
       "\"factor\": 4, \"partial_rotary_factor\": 0.5}}", MOE_ERR_UNSUPPORTED, "partial_rotary_factor"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    p = write_cfg("dsbad.json", bad[i].text);
    moe_error e2 = {0};
    ck_assert_msg(moe_config_load(&c, p, &e2) == bad[i].code, "case %zu: %s", i, e2.msg);
    ck_assert_msg(strstr(e2.msg, bad[i].needle) != NULL, "case %zu: '%s' lacks '%s'", i, e2.msg,
                  bad[i].needle);
  }
  /* save and load back: the same configuration */
  ck_assert(moe_config_load(&c, MOE_SOURCE_DIR "/tests/fixtures/deepseekv3-tiny/config.json", &err) == MOE_OK);
  char out[1100];
  snprintf(out, sizeof out, "%s/ds-saved.json", g_dir);
  ck_assert_msg(moe_config_save(&c, out, &err) == MOE_OK, "%s", err.msg);
  moe_config d;
  ck_assert_msg(moe_config_load(&d, out, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(memcmp(&c, &d, sizeof c), 0);
  ck_assert(moe_config_load(&c, MOE_SOURCE_DIR "/tests/fixtures/deepseekv2-tiny/config.json", &err) == MOE_OK);
  ck_assert_msg(moe_config_save(&c, out, &err) == MOE_OK, "%s", err.msg);
  ck_assert_msg(moe_config_load(&d, out, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(memcmp(&c, &d, sizeof c), 0);
}
END_TEST

/* Granite MoE: the fixture's multipliers, GraniteMoeConfig()'s defaults
 * (multipliers 1, the attention's too: a softmax scale of 1), a multiplier
 * out of range refused, and a save/load round trip. */
START_TEST(granite_configs) {
  moe_config c, d;
  moe_error err = {0};
  ck_assert_msg(moe_config_load(&c, MOE_SOURCE_DIR "/tests/fixtures/granitemoe-tiny/config.json",
                                &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(c.arch, MOE_ARCH_GRANITE_MOE);
  ck_assert_float_eq(c.embed_mult, 12.0f);
  ck_assert_float_eq(moe_config_attn_scale(&c), 0.2f);
  ck_assert_float_eq(moe_config_residual_mult(&c), 0.3f);
  ck_assert_float_eq(moe_config_logit_div(&c), 4.0f);
  ck_assert(c.norm_topk && c.tie_embeddings && !c.qkv_bias && !c.o_bias);
  ck_assert_int_eq(moe_config_n_moe_layers(&c), 3);
  char out[1100];
  snprintf(out, sizeof out, "%s/granite-saved.json", g_dir);
  ck_assert_msg(moe_config_save(&c, out, &err) == MOE_OK, "%s", err.msg);
  ck_assert_msg(moe_config_load(&d, out, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(memcmp(&c, &d, sizeof c), 0);
  const char *p = write_cfg("g.json", "{\"model_type\": \"granitemoe\", \"num_attention_heads\": 8}");
  ck_assert_msg(moe_config_load(&c, p, &err) == MOE_OK, "%s", err.msg);
  ck_assert_int_eq(c.n_kv_heads, 8); /* None: as many as the query heads */
  ck_assert_int_eq(c.expert_ffn, 11008);
  ck_assert_int_eq(c.max_pos, 2048);
  ck_assert_float_eq(moe_config_attn_scale(&c), 1.0f);
  ck_assert(c.embed_mult == 1.0f && c.residual_mult == 1.0f && c.logit_div == 1.0f);
  p = write_cfg("gbad.json", "{\"model_type\": \"granitemoe\", \"logits_scaling\": 0}");
  ck_assert_int_eq(moe_config_load(&c, p, &err), MOE_ERR_INVALID);
  ck_assert_msg(strstr(err.msg, "logits_scaling") != NULL, "%s", err.msg);
  /* the other families' multipliers are none: the neutral values */
  ck_assert(moe_config_load(&c, MOE_SOURCE_DIR "/tests/fixtures/mixtral-tiny/config.json", &err) == MOE_OK);
  ck_assert(c.embed_mult == 0.0f && moe_config_embed_mult(&c) == 1.0f);
  ck_assert_float_eq(moe_config_attn_scale(&c), 0.25f);
}
END_TEST

START_TEST(missing_file_is_io) {
  moe_config c;
  moe_error err = {0};
  ck_assert_int_eq(moe_config_load(&c, "/nonexistent/config.json", &err), MOE_ERR_IO);
  ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent/config.json"));
}
END_TEST

int main(void) {
  Suite *s = suite_create("config");
  TCase *tc = tcase_create("parse");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, hf_fixture_configs);
  tcase_add_test(tc, qwen_sparse_step);
  tcase_add_test(tc, broken_configs);
  tcase_add_test(tc, missing_file_is_io);
  tcase_add_test(tc, switch_configs);
  tcase_add_test(tc, switch_save_load_roundtrip);
  tcase_add_test(tc, qwen3_and_olmoe_configs);
  tcase_add_test(tc, absent_fields_take_family_defaults);
  tcase_add_test(tc, sliding_window_is_checked_per_run);
  tcase_add_test(tc, oversized_models_are_refused);
  tcase_add_test(tc, transformers_rope_configs_are_refused);
  tcase_add_test(tc, yarn_frequencies_match_transformers);
  tcase_add_test(tc, deepseek_configs);
  tcase_add_test(tc, granite_configs);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
