/* Shared test helpers: temp dirs, random data, running the CLI. */
#ifndef MOE_TESTUTIL_H
#define MOE_TESTUTIL_H

#include <check.h>
#include <stddef.h>
#include <stdint.h>

/* Creates a fresh temporary directory; returns its path (static storage per call slot). */
const char *tu_tempdir(char *buf, size_t cap);
/* Removes a directory tree made by tu_tempdir. */
void tu_rmtree(const char *dir);
/* Runs a shell command, captures stdout+stderr into out (may be NULL), returns exit status. */
int tu_run(const char *cmd, char *out, size_t cap);
/* Uniform random floats in [-1, 1). */
void tu_fill(float *p, size_t n, uint64_t seed);
/* Runs a suite and returns the process exit code (0 when all passed). */
int tu_run_suite(Suite *s);
/* The same in this process (CK_NOFORK): for suites that initialise CUDA,
 * which does not work in a child forked after the parent initialised it. */
int tu_run_suite_nofork(Suite *s);

#endif
