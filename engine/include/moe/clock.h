/* One monotonic clock for every wall-clock figure the project measures. */
#ifndef MOE_CLOCK_H
#define MOE_CLOCK_H

#ifdef __cplusplus
extern "C" {
#endif

/* Seconds on CLOCK_MONOTONIC (an arbitrary origin: use differences). */
double moe_clock_s(void);

#ifdef __cplusplus
}
#endif

#endif
