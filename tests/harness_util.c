/* Shared by the harness suites: see harness_util.h. */
#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "results.h"
#include "harness_util.h"
#include "testutil.h"

char g_dir[512];
void setup(void) { ck_assert_ptr_nonnull(tu_tempdir(g_dir, sizeof g_dir)); }
void teardown(void) { tu_rmtree(g_dir); }

const char *tmp_path(const char *name) {
  static char p[4][1024];
  static int k;
  k = (k + 1) % 4;
  snprintf(p[k], sizeof p[k], "%s/%s", g_dir, name);
  return p[k];
}

void write_file(const char *name, const char *text) {
  FILE *f = fopen(tmp_path(name), "w");
  ck_assert_ptr_nonnull(f);
  fputs(text, f);
  fclose(f);
}

/* Runs a subcommand in-process with a NULL-terminated argument list. */
int call(int (*cmd)(int, char **), ...) {
  char *argv[32];
  int argc = 0;
  va_list ap;
  va_start(ap, cmd);
  const char *a;
  while ((a = va_arg(ap, const char *)) != NULL && argc < 31) argv[argc++] = (char *)a;
  va_end(ap);
  argv[argc] = NULL;
  fflush(stdout);
  return cmd(argc, argv);
}

/* Builds a small results file with given values for two rows. */
void results_file_dev(const char *name, const char *schema, const char *bytes_a,
                      const char *tps_a, bool with_b, const char *status_a,
                      const char *device, const char *spread) {
  res_table t;
  res_table_init(&t);
  const char *pols[2] = {"ondemand", "pregated"};
  for (int i = 0; i < (with_b ? 2 : 1); i++) {
    res_row *r = res_table_add(&t);
    res_set(r, "schema_version", schema);
    res_set(r, "model", "m");
    res_set(r, "model_seed", "1");
    res_set(r, "dtype", "f32");
    res_set(r, "workload", "w");
    res_set(r, "policy", pols[i]);
    res_set(r, "routing", "conventional");
    res_set(r, "backend", "cpu");
    res_set(r, "device", device);
    res_set(r, "threads", "1");
    res_set(r, "link_gbps", "0");
    res_set(r, "device_mem_budget_bytes", "0");
    res_set(r, "batch", "1");
    res_set(r, "prompt_len", "4");
    res_set(r, "gen_len", "4");
    res_set(r, "requests", "1");
    res_set(r, "prompt_seed", "1");
    res_set(r, "repetitions", "3");
    res_set(r, "status", i == 0 ? status_a : "ok");
    res_set(r, "rel_spread", spread);
    res_set(r, "h2d_bytes", i == 0 ? bytes_a : "500");
    res_set(r, "tokens_per_s", i == 0 ? tps_a : "10");
  }
  moe_error err = {0};
  ck_assert(res_write_csv(tmp_path(name), &t, &err) == MOE_OK);
  res_table_free(&t);
}

void results_file(const char *name, const char *schema, const char *bytes_a,
                  const char *tps_a, bool with_b, const char *status_a) {
  results_file_dev(name, schema, bytes_a, tps_a, with_b, status_a, "cpu: test", "0");
}

