/* Calibration: this machine's backend measured as a hardware profile
 * (matmul rates by rows, weight-read bandwidth, op overhead, the link, how
 * much a copy in flight slows compute), for moebench calibrate and
 * validate.  Library layer: progress goes to stderr unless quiet. */
#ifndef MOEBENCH_CALIBRATION_H
#define MOEBENCH_CALIBRATION_H

#include <stdbool.h>
#include <stddef.h>

#include "moe/cost.h"
#include "moe/status.h"

enum { CAL_MAX_SHAPES = 8 };

/* Weight shapes a calibration multiplies by (rows x cols, f32). */
typedef struct cal_shapes {
  size_t rows[CAL_MAX_SHAPES], cols[CAL_MAX_SHAPES];
  int n;
} cal_shapes;

/* Switch-Base's expert and attention shapes: the default. */
extern const cal_shapes cal_default_shapes;

/* Measures this machine's backend (cpu by default: its emulated device;
 * cuda: the GPU) into *out (name and description left to the caller).
 * quiet: no progress on stderr. */
moe_status calibrate_measure(const char *backend, int threads, double link,
                             const cal_shapes *shapes, bool quiet, moe_hw_profile *out,
                             moe_error *errp);
/* The median of n profiles, figure by figure (noise: a machine shared with
 * others changes speed from minute to minute). */
void profile_median(const moe_hw_profile *v, int n, moe_hw_profile *out);

/* The host section of *p (cores, memory bandwidth, f32 and bf16 matmul
 * rates) measured on this machine's cpu backend at `threads` threads: the
 * host of a GPU backend's profile (the cpu backend's own profile gets it
 * from its own measurements). */
moe_status calibrate_host(int threads, const cal_shapes *shapes, bool quiet, moe_hw_profile *p,
                          moe_error *err);

#endif
