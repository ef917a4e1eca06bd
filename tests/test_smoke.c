/* Smoke test of the build: the library links, the CLI answers --help and
 * --version with exit 0, refuses unknown commands with exit 2 and a clear
 * message. */
#include <check.h>
#include <string.h>

#include "moe/backend.h"
#include "moe/version.h"
#include "testutil.h"

START_TEST(library_links) {
  ck_assert_str_eq(moe_version(), MOE_VERSION_EXPECTED);
  ck_assert_ptr_nonnull(moe_backend_find("cpu"));
  moe_error err = {0};
  ck_assert_int_eq(moe_backend_validate(moe_backend_find("cpu"), &err), MOE_OK);
}
END_TEST

START_TEST(cli_help_and_version) {
  char out[8192];
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " --help", out, sizeof out), 0);
  ck_assert_ptr_nonnull(strstr(out, "usage: moebench"));
  ck_assert_ptr_nonnull(strstr(out, "generate"));
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " --version", out, sizeof out), 0);
  ck_assert_ptr_nonnull(strstr(out, moe_version()));
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " generate --help", out, sizeof out), 0);
  ck_assert_ptr_nonnull(strstr(out, "--max-new-tokens"));
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " bench-ops --help", out, sizeof out), 0);
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " list --help", out, sizeof out), 0);
}
END_TEST

START_TEST(cli_rejects_bad_usage) {
  char out[8192];
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " frobnicate", out, sizeof out), 2);
  ck_assert_ptr_nonnull(strstr(out, "unknown command 'frobnicate'"));
  ck_assert_int_eq(tu_run(MOEBENCH_PATH, out, sizeof out), 2);
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " generate --no-such-flag", out, sizeof out), 2);
  ck_assert_ptr_nonnull(strstr(out, "--no-such-flag"));
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " generate --preset tiny-mixtral --max-new-tokens x", out, sizeof out), 2);
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " list nothing", out, sizeof out), 2);
}
END_TEST

START_TEST(cli_lists_and_generates) {
  char out[16384];
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " list backends", out, sizeof out), 0);
  ck_assert_ptr_nonnull(strstr(out, "cpu"));
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " list models", out, sizeof out), 0);
  ck_assert_ptr_nonnull(strstr(out, "tiny-mixtral"));
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " generate --preset tiny-mixtral --prompt-ids 1,2,3 "
                          "--max-new-tokens 5 --batch 2", out, sizeof out), 0);
  ck_assert_ptr_nonnull(strstr(out, "seq 1:"));
  ck_assert_ptr_nonnull(strstr(out, "generated tokens/s"));
  /* a missing preset is a one-line error naming the file, exit 1 */
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " generate --preset no-such-model", out, sizeof out), 1);
  ck_assert_ptr_nonnull(strstr(out, "no-such-model.json"));
  /* an out-of-vocabulary prompt id is refused */
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " generate --preset tiny-mixtral --prompt-ids 1,999", out, sizeof out), 1);
  ck_assert_ptr_nonnull(strstr(out, "vocabulary"));
}
END_TEST

int main(void) {
  Suite *s = suite_create("smoke");
  TCase *tc = tcase_create("cli");
  tcase_add_test(tc, library_links);
  tcase_add_test(tc, cli_help_and_version);
  tcase_add_test(tc, cli_rejects_bad_usage);
  tcase_add_test(tc, cli_lists_and_generates);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
