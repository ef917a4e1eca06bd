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
/* and when the machine's own rates fell over the row: a fixed arithmetic
 * probe ran below 80% of its rate before the row, or the capped link
 * achieved below 80% of its cap (the copy thread was starved) */
#define NOISE_COMPUTE_MIN 0.8
#define NOISE_LINK_MIN 0.8
/* the link's rate is judged on copies of 1 MiB or more on average (a
 * small copy is mostly its fixed cost: 0.1 MB experts reach 37% of a 2
 * GB/s cap on a quiet machine, 18.9 MB ones 97.5% of 6 GB/s) */
#define NOISE_LINK_COPY_MIN (1ull << 20)

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

/* The rate (operations per second) of a fixed arithmetic loop of about 5
 * ms on this thread: run before and after a row, their ratio says whether
 * the machine computed as fast at the end as at the start. */
double noise_compute_probe(void);

/* Whether the machine's own rates make a row noisy: the compute probe's
 * ratio (after / before; NAN: not measured), the link rate achieved
 * (0: not observed) against its cap (0: uncapped) with copies of avg_copy
 * bytes on average. */
bool noise_rates_noisy(double probe_ratio, double achieved_gbps, double cap_gbps, double avg_copy);

/* Reads the counters now.  MOE_PROC_ROOT (tests) replaces /proc. */
noise_sample noise_now(void);

/* The figures between two samples (ok false when either was not read or
 * no clock tick passed: a row shorter than a tick, 10 ms, says nothing). */
noise_figures noise_between(const noise_sample *a, const noise_sample *b);

#endif
