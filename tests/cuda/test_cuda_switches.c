/* The cuda backend's environment switches (MOE_CUBLAS_MATH,
 * MOE_CUDA_OVERTAKE, MOE_CUDA_GRAPHS): a wrong value is refused when the
 * backend is created, with MOE_ERR_INVALID and a message naming the
 * variable and the value, whether or not a device is present (the
 * switches are read before the device).  A right value is never refused
 * as invalid: the backend opens, or reports that there is no device; on a
 * device, the description says which switches are on.  Exits 77 (ctest's
 * skip) when this build has no CUDA backend; needs no GPU. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/backend.h"
#include "moe/cuda.h"
#include "moe/device.h"
#include "testutil.h"

static const char *const kVars[] = {"MOE_CUBLAS_MATH", "MOE_CUDA_OVERTAKE", "MOE_CUDA_GRAPHS"};

static void clear_switches(void) {
  for (size_t i = 0; i < sizeof kVars / sizeof *kVars; i++) unsetenv(kVars[i]);
}

/* Opens the cuda backend with var=value; the status, and the description
 * (empty without a device) in desc. */
static moe_status open_with(const char *var, const char *value, moe_error *err, char *desc,
                            size_t cap) {
  moe_device dev;
  clear_switches();
  setenv(var, value, 1);
  desc[0] = '\0';
  const moe_status st = moe_device_open(&dev, "cuda", NULL, err);
  if (st == MOE_OK) {
    snprintf(desc, cap, "%s", dev.ops->describe(dev.be));
    moe_device_close(&dev);
  }
  clear_switches();
  return st;
}

START_TEST(a_wrong_value_is_refused_naming_the_variable) {
  const char *bad[][2] = {{"MOE_CUBLAS_MATH", "fast"},  {"MOE_CUDA_OVERTAKE", "yes"},
                          {"MOE_CUDA_OVERTAKE", "2"},   {"MOE_CUDA_GRAPHS", "on"},
                          {"MOE_CUDA_GRAPHS", "10"},    {"MOE_CUDA_GRAPHS", " 1"}};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    moe_error err = {0};
    char desc[512];
    const moe_status st = open_with(bad[i][0], bad[i][1], &err, desc, sizeof desc);
    ck_assert_msg(st == MOE_ERR_INVALID, "%s=%s: status %d (%s)", bad[i][0], bad[i][1], (int)st,
                  err.msg);
    ck_assert_msg(strstr(err.msg, bad[i][0]) != NULL && strstr(err.msg, bad[i][1]) != NULL,
                  "%s=%s: message '%s' names neither", bad[i][0], bad[i][1], err.msg);
  }
}
END_TEST

/* No graph has run in this process: the summary line is empty. */
START_TEST(no_graph_no_summary) {
  char line[64] = "x";
  ck_assert_uint_eq(moe_cuda_graph_summary(line, sizeof line), 0);
  ck_assert_str_eq(line, "");
}
END_TEST

START_TEST(a_right_value_opens_or_finds_no_device) {
  const char *good[][3] = {{"MOE_CUBLAS_MATH", "pedantic", "pedantic math"},
                           {"MOE_CUBLAS_MATH", "default", "default math"},
                           {"MOE_CUDA_OVERTAKE", "1", "overtakable copies"},
                           {"MOE_CUDA_OVERTAKE", "0", NULL},
                           {"MOE_CUDA_GRAPHS", "1", "CUDA graphs"},
                           {"MOE_CUDA_GRAPHS", "0", NULL},
                           {"MOE_CUDA_GRAPHS", "", NULL}};
  for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
    moe_error err = {0};
    char desc[512];
    const moe_status st = open_with(good[i][0], good[i][1], &err, desc, sizeof desc);
    ck_assert_msg(st == MOE_OK || st == MOE_ERR_NO_DEVICE, "%s=%s: status %d (%s)", good[i][0],
                  good[i][1], (int)st, err.msg);
    if (st != MOE_OK) continue;
    if (good[i][2])
      ck_assert_msg(strstr(desc, good[i][2]) != NULL, "%s=%s: '%s'", good[i][0], good[i][1], desc);
    else
      ck_assert_msg(strstr(desc, "CUDA graphs") == NULL && strstr(desc, "overtakable") == NULL,
                    "%s=%s: '%s'", good[i][0], good[i][1], desc);
  }
}
END_TEST

int main(void) {
  if (!moe_cuda_compiled()) {
    printf("skipping: this build has no CUDA backend\n");
    return 77;
  }
  Suite *s = suite_create("cuda_switches");
  TCase *tc = tcase_create("env");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, a_wrong_value_is_refused_naming_the_variable);
  tcase_add_test(tc, a_right_value_opens_or_finds_no_device);
  tcase_add_test(tc, no_graph_no_summary);
  suite_add_tcase(s, tc);
  /* in this process: a device opened here initialises CUDA, which a
   * forked child could not use */
  return tu_run_suite_nofork(s);
}
