/* Shared test helpers. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "moe/rng.h"

const char *tu_tempdir(char *buf, size_t cap) {
  const char *base = getenv("TMPDIR");
  snprintf(buf, cap, "%s/moe-test-XXXXXX", base && *base ? base : "/tmp");
  return mkdtemp(buf);
}

void tu_rmtree(const char *dir) {
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
}

int tu_run(const char *cmd, char *out, size_t cap) {
  char full[4200];
  snprintf(full, sizeof full, "%s 2>&1", cmd);
  FILE *p = popen(full, "r");
  if (p == NULL) return -1;
  size_t n = 0;
  char tmp[4096];
  size_t got;
  while ((got = fread(tmp, 1, sizeof tmp, p)) > 0) {
    if (out && n + 1 < cap) {
      size_t c = got < cap - 1 - n ? got : cap - 1 - n;
      memcpy(out + n, tmp, c);
      n += c;
    }
  }
  if (out && cap) out[n] = '\0';
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

void tu_fill(float *p, size_t n, uint64_t seed) {
  moe_rng r;
  moe_rng_seed(&r, seed, 99);
  for (size_t i = 0; i < n; i++) p[i] = (float)(2.0 * moe_rng_uniform(&r) - 1.0);
}

int tu_run_suite_nofork(Suite *s) {
  SRunner *sr = srunner_create(s);
  srunner_set_fork_status(sr, CK_NOFORK);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}

int tu_run_suite(Suite *s) {
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}
