/* Shared by the backend conformance suites (test_backend_conformance.c,
 * test_backend_math.c, test_backend_table.c): the device each case runs
 * on, its fixture, buffer helpers, and the driver that runs a suite's
 * cases against every compiled-in backend whose device is present. */
#ifndef MOE_CONFORMANCE_UTIL_H
#define MOE_CONFORMANCE_UTIL_H

#include <check.h>
#include <stddef.h>

#include "moe/device.h"
#include "moe/backend.h"
#include "moe/dtype.h"

extern const char *g_backend;
extern double g_link;
extern int g_threads;
extern moe_device g_dev;
extern const char *g_hardware; /* modeled backends: the profile */

/* The fixture: opens g_dev on g_backend with g_link, g_threads and
 * g_hardware; closes it. */
void setup(void);
void teardown(void);

#define OPS (g_dev.ops)
#define BE (g_dev.be)
#define OK(call)                                                                   \
  do {                                                                             \
    moe_error e_ = {0};                                                            \
    moe_status s_ = (call);                                                        \
    ck_assert_msg(s_ == MOE_OK, "%s: %s (%s)", #call, moe_status_name(s_), e_.msg); \
  } while (0)
/* A modeled backend's clock. */
#define CLOCK() (OPS->modeled_seconds(BE))

/* Device buffer holding host data (n floats or bytes). */
void *dev_bytes(const void *host, size_t bytes);
float *dev_f(const float *host, size_t n);
void down(void *host, const void *dev, size_t bytes);
/* A weight in dtype dt from f32 values; *exact receives the values the
 * weight really holds (rounded to dt). */
moe_weight dev_weight(const float *v, size_t rows, size_t cols, moe_dtype dt, float *exact);

/* A suite's cases: each function adds its tests to a TCase; NULL for none.
 * contract: backend-independent cases, run once (no fixture).
 * modeled: the cases for a modeled backend (MOE_BACKEND_CAP_MODELED).
 * device: the cases for every other backend, run per thread count, with a
 * capped link where the backend has one, and on the cpu backend's portable
 * 16-bit path. */
typedef struct conformance_cases {
  void (*contract)(TCase *tc);
  void (*modeled)(TCase *tc);
  void (*device)(TCase *tc);
} conformance_cases;

/* The suites' main: Check runs each test in a forked child by default; a
 * CUDA context does not survive fork (the probe initialises CUDA in this
 * process), so every suite runs in this process (CK_FORK=no, set by ctest
 * as well).  MOE_CONFORMANCE_BACKEND=NAME limits the run to one backend
 * (the GPU check runs the cuda cases alone under compute-sanitizer): 2 when
 * the build has no such backend, 77 when its device is not present. */
int conformance_main(const conformance_cases *cases);

#endif
