/* One monotonic clock for every wall-clock figure the project measures. */
#ifndef MOE_CLOCK_H
#define MOE_CLOCK_H

#ifdef __cplusplus
extern "C" {
#endif

/* Seconds on CLOCK_MONOTONIC (an arbitrary origin: use differences). */
double moe_clock_s(void);
/* Sleeps until moe_clock_s() reaches t (returns at once when it has);
 * how an emulated link or host paces itself to its cap. */
void moe_clock_sleep_until(double t);

#ifdef __cplusplus
}
#endif

#endif
