/* What the machine was doing while a row was measured: the share of the
 * CPUs other processes kept busy and the share stolen by a hypervisor,
 * from /proc/stat and /proc/self/stat over the row.  A measured row on a
 * busy machine is flagged noisy, and compare treats its times as unknown
 * rather than as a regression.
 *
 * The thresholds: noisy when other processes kept more than half a core
 * busy on average (the emulated link's copy thread needs a free core, and
 * a run's own threads another each), or more than 5% of the CPU time was
 * stolen. */
#ifndef MOE_NOISE_H
#define MOE_NOISE_H

#include <stdbool.h>

#define NOISE_OTHER_CORES_MAX 0.5
#define NOISE_STEAL_MAX 0.05

typedef struct noise_sample {
  bool ok;                    /* /proc was readable */
  unsigned long long total, idle, steal; /* /proc/stat's cpu line, all CPUs */
  unsigned long long self;    /* this process's user + system ticks */
} noise_sample;

typedef struct noise_figures {
  bool ok;
  double other_cores; /* cores other processes kept busy, on average */
  double steal_share; /* CPU time stolen, of all */
  bool noisy;
} noise_figures;

/* Reads the counters now.  MOE_PROC_ROOT (tests) replaces /proc. */
noise_sample noise_now(void);

/* The figures between two samples (ok false when either was not read or
 * no clock tick passed: a row shorter than a tick, 10 ms, says nothing). */
noise_figures noise_between(const noise_sample *a, const noise_sample *b);

#endif
