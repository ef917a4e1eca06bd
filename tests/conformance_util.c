/* Shared by the backend conformance suites: see conformance_util.h. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conformance_util.h"
#include "testutil.h"

const char *g_backend = "cpu";
double g_link = 0.0;
int g_threads = 1;
moe_device g_dev;

const char *g_hardware = NULL; /* modeled backends: the profile */

void setup(void) {
  moe_error err = {0};
  moe_backend_options o = {.link_gbps = g_link, .threads = g_threads, .hardware = g_hardware};
  ck_assert_msg(moe_device_open(&g_dev, g_backend, &o, &err) == MOE_OK, "%s", err.msg);
}

void teardown(void) { moe_device_close(&g_dev); }

/* Device buffer holding host data (n floats or bytes). */
void *dev_bytes(const void *host, size_t bytes) {
  void *p = NULL;
  moe_error err = {0};
  ck_assert_msg(OPS->device_alloc(BE, bytes ? bytes : 1, &p, &err) == MOE_OK, "%s", err.msg);
  if (host && bytes) ck_assert(OPS->upload(BE, p, host, bytes, &err) == MOE_OK);
  return p;
}
float *dev_f(const float *host, size_t n) { return dev_bytes(host, n * sizeof(float)); }

void down(void *host, const void *dev, size_t bytes) {
  moe_error err = {0};
  ck_assert_msg(OPS->download(BE, host, dev, bytes, &err) == MOE_OK, "%s", err.msg);
}

/* A weight in dtype dt from f32 values; *exact receives the values the
 * weight really holds (rounded to dt). */
moe_weight dev_weight(const float *v, size_t rows, size_t cols, moe_dtype dt, float *exact) {
  size_t n = rows * cols;
  void *h = malloc(n * moe_dtype_size(dt));
  moe_convert_from_f32(h, dt, v, n);
  if (exact) moe_convert_to_f32(exact, h, dt, n);
  moe_weight w = {dev_bytes(h, n * moe_dtype_size(dt)), dt, rows, cols};
  free(h);
  return w;
}
static int run_contract(const conformance_cases *cases) {
  Suite *s = suite_create("backend conformance");
  TCase *tc = tcase_create("the table contract");
  cases->contract(tc);
  suite_add_tcase(s, tc);
  printf("== the table contract\n");
  return tu_run_suite_nofork(s);
}

static int run_modeled(const conformance_cases *cases, const char *backend) {
  g_backend = backend;
  g_link = 0;
  g_threads = 1;
  g_hardware = MOE_SOURCE_DIR "/workloads/hardware/a100-80g-pcie4.json";
  char name[160];
  snprintf(name, sizeof name, "%s (modeled, a100-80g-pcie4)", backend);
  Suite *s = suite_create("backend conformance");
  TCase *tc = tcase_create(name);
  tcase_add_checked_fixture(tc, setup, teardown);
  cases->modeled(tc);
  suite_add_tcase(s, tc);
  printf("== %s\n", name);
  int rc = tu_run_suite_nofork(s);
  g_hardware = NULL;
  return rc;
}

static int run_for(const conformance_cases *cases, const char *backend, double link, int threads,
                   const char *variant) {
  g_backend = backend;
  g_link = link;
  g_threads = threads;
  char name[160];
  snprintf(name, sizeof name, "%s%s, %d thread%s%s%s", backend, link > 0 ? " (capped link)" : "",
           threads, threads == 1 ? "" : "s", variant ? ", " : "", variant ? variant : "");
  Suite *s = suite_create("backend conformance");
  TCase *tc = tcase_create(name);
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  cases->device(tc);
  suite_add_tcase(s, tc);
  printf("== %s\n", name);
  return tu_run_suite_nofork(s);
}

int conformance_main(const conformance_cases *cases) {
  int failed = 0;
  const char *only = getenv("MOE_CONFORMANCE_BACKEND");
  if (!(only && *only) && cases->contract) failed |= run_contract(cases);
  if (only && *only && moe_backend_find(only) == NULL) {
    fprintf(stderr, "MOE_CONFORMANCE_BACKEND=%s: no such backend in this build\n", only);
    return 2;
  }
  for (size_t i = 0; i < moe_backend_count(); i++) {
    const moe_backend_ops *o = moe_backend_at(i);
    if (only && *only && strcmp(o->name, only) != 0) continue;
    char desc[256];
    moe_error err = {0};
    if (o->probe &&
        o->probe(desc, sizeof desc, &err) != MOE_OK) {
      printf("== %s: skipped (%s)\n", o->name, err.msg);
      if (only && *only) return 77; /* the one backend asked for cannot run here */
      continue;
    }
    if (o->caps & MOE_BACKEND_CAP_MODELED) {
      if (cases->modeled) failed |= run_modeled(cases, o->name);
      continue;
    }
    if (!cases->device) continue;
    failed |= run_for(cases, o->name, 0.0, 1, NULL);
    failed |= run_for(cases, o->name, 0.0, 2, NULL);
    if (o->caps & MOE_BACKEND_CAP_LINK_CAP) failed |= run_for(cases, o->name, 0.5, 1, NULL);
    if (strcmp(o->name, "cpu") == 0) {
      /* the cpu backend's reference path for 16-bit weights, forced */
      setenv("MOE_CPU_HALF", "portable", 1);
      failed |= run_for(cases, o->name, 0.0, 2, "portable 16-bit path");
      unsetenv("MOE_CPU_HALF");
    }
  }
  return failed;
}
