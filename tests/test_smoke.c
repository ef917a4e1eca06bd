/* Smoke test of the build: the library links, the CLI answers --help and
 * --version with exit 0, refuses unknown commands with exit 2 and a clear
 * message. */
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
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
  ck_assert_ptr_nonnull(strstr(out, "--gen-len"));
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " bench-ops --help", out, sizeof out), 0);
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " list --help", out, sizeof out), 0);
  const char *cmds[] = {"run", "sweep", "compare", "report", "bench-policies"};
  for (int i = 0; i < 5; i++) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, MOEBENCH_PATH " %s --help", cmds[i]);
    ck_assert_msg(tu_run(cmd, out, sizeof out) == 0, "%s --help", cmds[i]);
    ck_assert_msg(strstr(out, "usage: moebench") != NULL, "%s --help: %s", cmds[i], out);
  }
}
END_TEST

START_TEST(cli_rejects_bad_usage) {
  char out[8192];
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " frobnicate", out, sizeof out), 2);
  ck_assert_ptr_nonnull(strstr(out, "unknown command 'frobnicate'"));
  ck_assert_int_eq(tu_run(MOEBENCH_PATH, out, sizeof out), 2);
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " generate --no-such-flag", out, sizeof out), 2);
  ck_assert_ptr_nonnull(strstr(out, "--no-such-flag"));
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " generate --preset tiny-mixtral --gen-len x", out, sizeof out), 2);
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " list nothing", out, sizeof out), 2);
  /* a plugin that uses MOE_FAIL links against the executable and its
   * message reaches the user */
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " generate --preset tiny-mixtral --policy-plugin " PLUGIN_FAILING,
                          out, sizeof out), 1);
  ck_assert_msg(strstr(out, "failing-policy says no") != NULL, "%s", out);
  /* empty values and lists are usage errors, never undefined behaviour */
  static const char *bad[] = {
      " bench-policies --preset ci-small --policies ''",
      " bench-policies --preset ci-small --policies ,ondemand",
      " bench-policies --preset ci-small --policies gpu-only,gpu-only",
      " bench-policies --preset ci-small --batch ''",
      " run --preset ci-small --link-gbps 1e-9",   /* too small to emulate, not "uncapped" */
      " run --preset ci-small --link-gbps 1e-400",
      " run --preset ci-small --reps 101",
      " run --preset ci-small --out ''",
      " sweep ci --out ''",
      " generate --preset tiny-mixtral --gen-len ''",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s%s", MOEBENCH_PATH, bad[i]);
    ck_assert_msg(tu_run(cmd, out, sizeof out) == 2, "%s: %s", bad[i], out);
  }
}
END_TEST

START_TEST(cli_lists_and_generates) {
  char out[16384];
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " list backends", out, sizeof out), 0);
  ck_assert_ptr_nonnull(strstr(out, "cpu"));
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " list models", out, sizeof out), 0);
  ck_assert_ptr_nonnull(strstr(out, "tiny-mixtral"));
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " generate --preset tiny-mixtral --prompt-ids 1,2,3 "
                          "--gen-len 5 --batch 2", out, sizeof out), 0);
  ck_assert_ptr_nonnull(strstr(out, "seq 1:"));
  ck_assert_ptr_nonnull(strstr(out, "generated tokens/s"));
  /* an unknown preset name is bad usage: one line naming the file, exit 2 */
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " generate --preset no-such-model", out, sizeof out), 2);
  ck_assert_ptr_nonnull(strstr(out, "no-such-model.json"));
  /* --backend cuda: runs where a GPU is usable; elsewhere (no device, or no
   * CUDA in the build) one clear line and exit 1 */
  const moe_backend_ops *cuda = moe_backend_find("cuda");
  char desc[256];
  moe_error perr = {0};
  const bool gpu = cuda && (!cuda->probe || cuda->probe(desc, sizeof desc, &perr) == MOE_OK);
  int rc = tu_run(MOEBENCH_PATH " generate --preset tiny-mixtral --backend cuda --gen-len 3",
                  out, sizeof out);
  if (gpu) {
    ck_assert_msg(rc == 0, "%s", out);
    ck_assert_ptr_nonnull(strstr(out, "generated tokens/s"));
  } else {
    ck_assert_int_eq(rc, 1);
    ck_assert_msg(strstr(out, "use --backend cpu") != NULL, "%s", out);
  }
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " generate --preset tiny-mixtral --backend tpu", out, sizeof out), 2);
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " run --preset nope --backend cpu", out, sizeof out), 2);
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " bench-policies --preset ci-small --backend tpu", out, sizeof out), 2);
  ck_assert_ptr_nonnull(strstr(out, "unknown backend 'tpu'"));
  /* run prints a result row; list knows suites, workloads and policies */
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " run --preset ci-small --policy pregated --gen-len 4 --prompt-len 4",
                          out, sizeof out), 0);
  ck_assert_ptr_nonnull(strstr(out, "| ci-small | p4-g4 | pregated | pregated | ok |"));
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " run --preset ci-small --policy gpu-only --device-mem 1MiB", out, sizeof out), 1);
  ck_assert_ptr_nonnull(strstr(out, "OOM"));
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " list suites", out, sizeof out), 0);
  ck_assert_ptr_nonnull(strstr(out, "headline"));
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " list workloads", out, sizeof out), 0);
  ck_assert_ptr_nonnull(strstr(out, "batch-sweep"));
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " list policies", out, sizeof out), 0);
  ck_assert_ptr_nonnull(strstr(out, "prefetch-all"));
  ck_assert_int_eq(tu_run(MOEBENCH_PATH " generate --preset tiny-mixtral --policy lifo", out, sizeof out), 2);
  ck_assert_ptr_nonnull(strstr(out, "unknown policy 'lifo'"));
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
