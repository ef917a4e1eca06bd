/* Replaying an op trace (generate/run --trace) on a hardware profile: the
 * cost model (moe/cost.h) applied to the operations the trace recorded, in
 * the order the host issued them, with the events that ordered the two
 * streams.  Deterministic: the same trace and profile give the same
 * figures.  The trace's own timestamps give the measured side. */
#ifndef MOEBENCH_REPLAY_H
#define MOEBENCH_REPLAY_H

#include <stdbool.h>

#include "moe/cost.h"
#include "moe/status.h"

typedef struct replay_result {
  int n_forwards;           /* forward passes (embed ops) */
  double *fwd_modeled;      /* [n_forwards] modeled seconds of each */
  double *fwd_measured;     /* [n_forwards] the trace's own seconds of each */
  double modeled_s;         /* modeled makespan: first forward's start to the end */
  double measured_s;        /* the same span in the trace's times */
  double stall_s;           /* modeled compute stall on copies */
  double copy_s;            /* modeled copy-stream busy time */
  double hidden_share;      /* moe_cost_hidden_share */
  unsigned long long ops, copies;
  /* copies the trace's backend let overtake (urgent) or cut short
   * (cancelled): the replay models every copy whole, in issue order */
  unsigned long long urgent, cancelled;
  bool trace_modeled;       /* the trace's own times are modeled (a sim run) */
  /* per op name on the compute track, after the first forward mark: how
   * many, the trace's own seconds and the modeled seconds (REPLAY_KINDS at most) */
  int n_kinds;
  struct replay_kind {
    char name[32];
    unsigned long long count;
    double trace_s, modeled_s;
  } kinds[24];
} replay_result;

/* Replays the trace at path on p.  Errors name the file and the event. */
moe_status replay_trace(const char *path, const moe_hw_profile *p, replay_result *out,
                        moe_error *err);
/* The same from a parsed trace (a json_t *); path names it in errors. */
moe_status replay_trace_json(const void *json, const char *path, const moe_hw_profile *p,
                             replay_result *out, moe_error *err);
void replay_result_free(replay_result *r);

#endif
