/* safetensors: writer/reader round trip, sharded checkpoints, and one
 * deliberately broken file per failure mode, each rejected with
 * MOE_ERR_FORMAT (run under ASan/LSan to see that nothing leaks). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/safetensors.h"
#include "testutil.h"

static char g_dir[512];
static void setup(void) { ck_assert_ptr_nonnull(tu_tempdir(g_dir, sizeof g_dir)); }
static void teardown(void) { tu_rmtree(g_dir); }

/* Writes <8-byte length><header><data_len bytes> to g_dir/name. */
static const char *write_raw(const char *name, uint64_t declared_len, const char *header,
                             size_t data_len) {
  static char path[1024];
  snprintf(path, sizeof path, "%s/%s", g_dir, name);
  FILE *f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  uint8_t len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (uint8_t)(declared_len >> (8 * i));
  fwrite(len8, 1, 8, f);
  fwrite(header, 1, strlen(header), f);
  for (size_t i = 0; i < data_len; i++) fputc((int)(i & 0xff), f);
  fclose(f);
  return path;
}

static const char *write_st(const char *name, const char *header, size_t data_len) {
  return write_raw(name, strlen(header), header, data_len);
}

START_TEST(round_trip) {
  float a[6] = {1, 2, 3, 4, 5, 6};
  uint16_t b[4] = {0x3f80, 0x4000, 0xbf80, 0x0001};
  moe_st_entry ents[] = {
      {"layer.a", MOE_F32, 2, {2, 3}, a},
      {"layer.b", MOE_BF16, 1, {4}, b},
      {"empty", MOE_F16, 2, {0, 5}, NULL},
  };
  char path[1024];
  snprintf(path, sizeof path, "%s/rt.safetensors", g_dir);
  moe_error err = {0};
  ck_assert_msg(moe_st_write(path, ents, 3, &err) == MOE_OK, "%s", err.msg);
  moe_st_file *f = NULL;
  ck_assert_msg(moe_st_open(&f, path, &err) == MOE_OK, "%s", err.msg);
  ck_assert_uint_eq(moe_st_count(f), 3);
  const moe_st_tensor *t = moe_st_find(f, "layer.a");
  ck_assert_ptr_nonnull(t);
  ck_assert_str_eq(t->dtype, "F32");
  ck_assert(t->has_dtype && t->mdtype == MOE_F32);
  ck_assert_int_eq(t->ndim, 2);
  ck_assert_int_eq(t->shape[0], 2);
  ck_assert_int_eq(t->shape[1], 3);
  ck_assert_int_eq(memcmp(t->data, a, sizeof a), 0);
  t = moe_st_find(f, "layer.b");
  ck_assert(t && t->mdtype == MOE_BF16 && t->nbytes == 8);
  ck_assert_int_eq(memcmp(t->data, b, sizeof b), 0);
  t = moe_st_find(f, "empty");
  ck_assert(t && t->nbytes == 0 && t->n_elements == 0);
  ck_assert_ptr_null(moe_st_find(f, "nope"));
  moe_st_close(f);
  /* no temporary file left behind */
  char tmp[1100];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  ck_assert_ptr_null(fopen(tmp, "rb"));
}
END_TEST

START_TEST(accepts_metadata_and_other_dtypes) {
  const char *p = write_st("ok.safetensors",
                           "{\"__metadata__\":{\"format\":\"pt\"},"
                           "\"ids\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]},"
                           "\"w\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[16,24]}}",
                           24);
  moe_st_file *f = NULL;
  moe_error err = {0};
  ck_assert_msg(moe_st_open(&f, p, &err) == MOE_OK, "%s", err.msg);
  ck_assert_uint_eq(moe_st_count(f), 2);
  ck_assert(!moe_st_find(f, "ids")->has_dtype);
  ck_assert(moe_st_find(f, "w")->has_dtype);
  moe_st_close(f);
}
END_TEST

typedef struct broken {
  const char *header;
  size_t data_len;
  int64_t declared; /* -1: the header's own length */
  const char *needle;
} broken;

START_TEST(broken_files) {
  static const broken cases[] = {
      {"{}", 0, 1 << 20, "past the end"},
      {"{}", 0, (int64_t)MOE_ST_MAX_HEADER + 1, "exceeds"},
      {"{\"a\":", 0, -1, "not valid JSON"},
      {"[1,2,3]", 0, -1, "JSON object"},
      {"{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, "unknown dtype"},
      {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, "missing dtype"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, -1, "shape[0]"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":3,\"data_offsets\":[0,4]}}", 4, -1, "shape"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 4,
       -1, "overflows"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,4]}}", 4, -1,
       "overflows"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8, -1, "span"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, -1, "past the data"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8, -1, "begin <= end"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 8, -1, "data_offsets"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, -1, "overlap"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
       "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, -1, "duplicate"},
      {"{\"__metadata__\":[1]}", 0, -1, "__metadata__"},
      {"{\"a\":[1,2]}", 0, -1, "not an object"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char name[32];
    snprintf(name, sizeof name, "bad%zu.safetensors", i);
    uint64_t declared = cases[i].declared < 0 ? strlen(cases[i].header) : (uint64_t)cases[i].declared;
    const char *p = write_raw(name, declared, cases[i].header, cases[i].data_len);
    moe_st_file *f = (moe_st_file *)0x1;
    moe_error err = {0};
    moe_status st = moe_st_open(&f, p, &err);
    ck_assert_msg(st == MOE_ERR_FORMAT, "case %zu: got %s (%s)", i, moe_status_name(st), err.msg);
    ck_assert_ptr_null(f);
    ck_assert_msg(strstr(err.msg, cases[i].needle) != NULL, "case %zu: '%s' lacks '%s'", i,
                  err.msg, cases[i].needle);
    ck_assert_msg(strstr(err.msg, name) != NULL, "case %zu: '%s' does not name the file", i, err.msg);
  }
  /* shorter than the length field */
  char path[1024];
  snprintf(path, sizeof path, "%s/short.safetensors", g_dir);
  FILE *fp = fopen(path, "wb");
  fwrite("abc", 1, 3, fp);
  fclose(fp);
  moe_st_file *f = NULL;
  moe_error err = {0};
  ck_assert_int_eq(moe_st_open(&f, path, &err), MOE_ERR_FORMAT);
  ck_assert_ptr_nonnull(strstr(err.msg, "shorter"));
  moe_error_clear(&err);
  ck_assert_int_eq(moe_st_open(&f, "/nonexistent.safetensors", &err), MOE_ERR_IO);
}
END_TEST

static void write_text(const char *name, const char *text) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", g_dir, name);
  FILE *f = fopen(path, "w");
  fputs(text, f);
  fclose(f);
}

START_TEST(sharded_checkpoint) {
  float a[2] = {1, 2}, b[3] = {3, 4, 5};
  moe_st_entry e1 = {"a", MOE_F32, 1, {2}, a}, e2 = {"b", MOE_F32, 1, {3}, b};
  char path[1024];
  moe_error err = {0};
  snprintf(path, sizeof path, "%s/s1.safetensors", g_dir);
  ck_assert(moe_st_write(path, &e1, 1, &err) == MOE_OK);
  snprintf(path, sizeof path, "%s/s2.safetensors", g_dir);
  ck_assert(moe_st_write(path, &e2, 1, &err) == MOE_OK);
  write_text("model.safetensors.index.json",
             "{\"metadata\":{},\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}}");
  moe_checkpoint *ck = NULL;
  ck_assert_msg(moe_checkpoint_open(&ck, g_dir, &err) == MOE_OK, "%s", err.msg);
  const char *file = NULL;
  const moe_st_tensor *t = moe_checkpoint_find(ck, "b", &file);
  ck_assert(t && t->n_elements == 3);
  ck_assert_ptr_nonnull(strstr(file, "s2.safetensors"));
  ck_assert_ptr_null(moe_checkpoint_find(ck, "c", NULL));
  moe_checkpoint_close(ck);

  /* an index that lies about where a tensor is */
  write_text("model.safetensors.index.json",
             "{\"weight_map\":{\"a\":\"s2.safetensors\",\"b\":\"s2.safetensors\",\"x\":\"s1.safetensors\"}}");
  moe_error_clear(&err);
  ck_assert_int_eq(moe_checkpoint_open(&ck, g_dir, &err), MOE_ERR_FORMAT);
  ck_assert_ptr_null(ck);
  /* an index that escapes the directory */
  write_text("model.safetensors.index.json", "{\"weight_map\":{\"a\":\"../s1.safetensors\"}}");
  moe_error_clear(&err);
  ck_assert_int_eq(moe_checkpoint_open(&ck, g_dir, &err), MOE_ERR_FORMAT);
  ck_assert_ptr_nonnull(strstr(err.msg, "outside"));
  /* an index naming a shard that is not there */
  write_text("model.safetensors.index.json", "{\"weight_map\":{\"a\":\"s9.safetensors\"}}");
  moe_error_clear(&err);
  ck_assert_int_eq(moe_checkpoint_open(&ck, g_dir, &err), MOE_ERR_IO);
  ck_assert_ptr_nonnull(strstr(err.msg, "s9.safetensors"));
  /* a malformed index */
  write_text("model.safetensors.index.json", "{\"weight_map\":");
  moe_error_clear(&err);
  ck_assert_int_eq(moe_checkpoint_open(&ck, g_dir, &err), MOE_ERR_FORMAT);
}
END_TEST

/* In-memory images (the fuzzer's entry point): a valid one is accepted and
 * every truncation of it is rejected without reading past the end. */
START_TEST(memory_images) {
  const char hdr[] = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
  uint8_t buf[8 + sizeof hdr - 1 + 4];
  uint64_t n = sizeof hdr - 1;
  for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(n >> (8 * i));
  memcpy(buf + 8, hdr, n);
  memset(buf + 8 + n, 0, 4);
  moe_st_file *f = NULL;
  moe_error err = {0};
  ck_assert_msg(moe_st_open_memory(&f, buf, sizeof buf, "mem", &err) == MOE_OK, "%s", err.msg);
  moe_st_close(f);
  /* every truncation of a valid image is rejected, never read past */
  for (size_t len = 0; len < sizeof buf; len++) {
    moe_error_clear(&err);
    ck_assert_int_eq(moe_st_open_memory(&f, buf, len, "mem", &err), MOE_ERR_FORMAT);
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("safetensors");
  TCase *tc = tcase_create("files");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, round_trip);
  tcase_add_test(tc, accepts_metadata_and_other_dtypes);
  tcase_add_test(tc, broken_files);
  tcase_add_test(tc, sharded_checkpoint);
  tcase_add_test(tc, memory_images);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
