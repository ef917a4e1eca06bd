/* config.json parsing: both families, and one broken file per failure mode,
 * each rejected with the right code and a message naming the field. */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "moe/config.h"
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
      "\"num_experts\": 4, \"num_experts_per_tok\": 1, \"vocab_size\": 10, "
      "\"max_position_embeddings\": 32, \"decoder_sparse_step\": 2, \"mlp_only_layers\": [3]}");
  ck_assert_msg(moe_config_load(&c, p, &err) == MOE_OK, "%s", err.msg);
  /* layers 1, 3, 5 are sparse by the step; 3 is forced dense */
  bool want[6] = {false, true, false, false, false, true};
  for (int i = 0; i < 6; i++) ck_assert_int_eq(c.is_moe[i], want[i]);
  ck_assert_int_eq(c.n_kv_heads, 4); /* defaults to num_attention_heads */
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
      {"{\"model_type\": \"mixtral\", \"hidden_size\": 64}", MOE_ERR_FORMAT, "num_hidden_layers"},
      {"{\"model_type\": \"mixtral\", \"hidden_size\": \"64\", \"num_hidden_layers\": 1}",
       MOE_ERR_FORMAT, "'hidden_size' must be an integer"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"rope_theta\": 1e4, "
       "\"rope_parameters\": {\"rope_theta\": 1e6}}", MOE_ERR_INVALID, "contradicts"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"rope_parameters\": {\"rope_type\": \"yarn\"}}",
       MOE_ERR_UNSUPPORTED, "yarn"},
      {"{\"model_type\": \"mixtral\", \"hidden_size\": 64, \"intermediate_size\": 96, "
       "\"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"num_key_value_heads\": 3, "
       "\"num_local_experts\": 4, \"num_experts_per_tok\": 2, \"vocab_size\": 96, "
       "\"max_position_embeddings\": 128}", MOE_ERR_INVALID, "num_key_value_heads"},
      {"{\"model_type\": \"mixtral\", \"hidden_size\": 64, \"intermediate_size\": 96, "
       "\"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"num_local_experts\": 4, "
       "\"num_experts_per_tok\": 5, \"vocab_size\": 96, \"max_position_embeddings\": 128}",
       MOE_ERR_INVALID, "num_experts_per_tok"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"hidden_act\": \"gelu\"}",
       MOE_ERR_UNSUPPORTED, "hidden_act"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"sliding_window\": 16}",
       MOE_ERR_UNSUPPORTED, "sliding_window"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"hidden_size\": 64}", MOE_ERR_FORMAT,
       "malformed JSON"}, /* duplicate key */
      {"{\"model_type\": \"qwen2_moe\", \"hidden_size\": 32, \"intermediate_size\": 64, "
       "\"moe_intermediate_size\": 16, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
       "\"num_experts\": 4, \"num_experts_per_tok\": 1, \"vocab_size\": 10, "
       "\"max_position_embeddings\": 32, \"mlp_only_layers\": [2]}", MOE_ERR_INVALID, "mlp_only_layers"},
      {"{\"model_type\": \"qwen2_moe\", \"hidden_size\": 32, \"intermediate_size\": 64, "
       "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
       "\"num_experts\": 4, \"num_experts_per_tok\": 1, \"vocab_size\": 10, "
       "\"max_position_embeddings\": 32}", MOE_ERR_FORMAT, "moe_intermediate_size"},
      {"{\"model_type\": \"mixtral\", " MIXTRAL_FIELDS ", \"tie_word_embeddings\": 1}",
       MOE_ERR_FORMAT, "tie_word_embeddings"},
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
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
