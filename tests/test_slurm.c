/* The Slurm scripts on a real single-node Slurm (tests/slurm/single_node.sh
 * starts munged, slurmctld and slurmd in a temporary directory, submits
 * harness/slurm/submit.sh's job array and merge with the real sbatch, and
 * stops them): the merged file equals a plain sweep of the same suite on
 * every key and deterministic column.  Skipped (exit 77) where Slurm or
 * munge is not installed or the test is not root; test_harness runs the
 * same scripts through the local stand-in everywhere. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "testutil.h"

static char g_dir[512];
static int g_skip;

START_TEST(array_and_merge_on_single_node_slurm) {
  char cmd[4096], out[16384];
  snprintf(cmd, sizeof cmd, "'%s/tests/slurm/single_node.sh' '%s/slurm' '%s' ci 3", MOE_SOURCE_DIR,
           g_dir, MOEBENCH_PATH);
  const int rc = tu_run(cmd, out, sizeof out);
  if (rc == 77) {
    g_skip = 1;
    printf("skipped: %s", out);
    return;
  }
  ck_assert_msg(rc == 0, "single-node Slurm run failed (%d):\n%s", rc, out);
  char plain[1100], merged[1100];
  snprintf(plain, sizeof plain, "%s/plain", g_dir);
  char *argv[] = {"sweep", "ci", "-o", plain, "--quiet", NULL};
  ck_assert_int_eq(cmd_sweep(5, argv), 0);
  snprintf(plain, sizeof plain, "%s/plain.csv", g_dir);
  snprintf(merged, sizeof merged, "%s/slurm/out/merged.csv", g_dir);
  char *cargv[] = {"compare", plain, merged, "--deterministic-only", NULL};
  ck_assert_int_eq(cmd_compare(4, cargv), 0);
  char *rargv[] = {"compare", merged, plain, "--deterministic-only", NULL};
  ck_assert_int_eq(cmd_compare(4, rargv), 0); /* and no extra rows either way */
}
END_TEST

int main(void) {
  if (tu_tempdir(g_dir, sizeof g_dir) == NULL) {
    fprintf(stderr, "test_slurm: no temporary directory\n");
    return 1;
  }
  Suite *s = suite_create("slurm");
  TCase *tc = tcase_create("single-node");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, array_and_merge_on_single_node_slurm);
  suite_add_tcase(s, tc);
  /* CK_FORK=no keeps g_skip visible here */
  setenv("CK_FORK", "no", 1);
  int rc = tu_run_suite(s);
  tu_rmtree(g_dir);
  return rc == 0 && g_skip ? 77 : rc;
}
