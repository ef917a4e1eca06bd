/* The monotonic clock behind every measured time. */
#include "moe/clock.h"

#include <errno.h>
#include <time.h>

double moe_clock_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void moe_clock_sleep_until(double t) {
  double d = t - moe_clock_s();
  if (d <= 0) return;
  struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}
