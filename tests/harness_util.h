/* Shared by the harness suites (test_harness.c, test_harness_sweep.c,
 * test_harness_run.c, test_harness_report.c): a fresh temporary directory
 * per test, files in it, in-process subcommands, small results files. */
#ifndef MOE_HARNESS_UTIL_H
#define MOE_HARNESS_UTIL_H

#include <stdbool.h>

/* The fixture: g_dir is a fresh temporary directory, removed afterwards. */
extern char g_dir[512];
void setup(void);
void teardown(void);

/* g_dir/name (four rotating buffers: up to four paths live at once). */
const char *tmp_path(const char *name);
/* Writes text to g_dir/name. */
void write_file(const char *name, const char *text);
/* Runs a subcommand in-process with a NULL-terminated argument list. */
int call(int (*cmd)(int, char **), ...);

/* Builds a small results file g_dir/name with given values for two rows
 * (the second only with with_b), on device with the given rel_spread. */
void results_file_dev(const char *name, const char *schema, const char *bytes_a,
                      const char *tps_a, bool with_b, const char *status_a,
                      const char *device, const char *spread);
/* The same on device "cpu: test" with no spread. */
void results_file(const char *name, const char *schema, const char *bytes_a,
                  const char *tps_a, bool with_b, const char *status_a);

#endif
