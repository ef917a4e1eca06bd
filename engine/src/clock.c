/* The monotonic clock behind every measured time. */
#include "moe/clock.h"

#include <time.h>

double moe_clock_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
