/* Op trace: every backend operation of a device, written as it happens to a
 * Chrome trace-event JSON file (opens in Perfetto or chrome://tracing).
 *
 * Tracks (threads of one process): "compute" (every math op, upload,
 * download, and the time compute stood waiting for a copy), and "copy"
 * (each host-to-device copy from when the copy stream started it until its
 * last byte landed, where the backend reports that: set_copy_observer).
 * Times are the host clock (moe_clock_s): on the cpu backend, whose
 * compute is synchronous, a compute op's span is its execution; on an
 * asynchronous backend it is the time the host spent issuing it.
 *
 * Events are written as they complete (streaming, no buffer that grows
 * with the run), to NAME.tmp.XXXXXX, renamed to NAME when the trace is
 * closed. */
#ifndef MOE_TRACE_H
#define MOE_TRACE_H

#include <stddef.h>

#include "moe/backend.h"
#include "moe/status.h"

typedef struct moe_trace moe_trace;

enum { MOE_TRACE_COMPUTE = 1, MOE_TRACE_COPY = 2 };

moe_status moe_trace_open(moe_trace **out, const char *path, moe_error *err);
/* Writes the closing brackets and publishes the file (rename); frees t.
 * NULL is a no-op. */
moe_status moe_trace_close(moe_trace *t, moe_error *err);

/* The decoder layer and expert (-1: none) the next ops belong to. */
void moe_trace_context(moe_trace *t, int layer, int expert);

/* One complete event on a track; thread-safe. */
void moe_trace_op(moe_trace *t, int track, const char *name, double t0, double t1, double flops,
                  double bytes);

/* An instant on the compute track at the device's current time: the engine
 * marks where each forward pass begins ("forward"), which is what a replay
 * of the trace measures per-step times between. */
void moe_trace_mark(moe_trace *t, const char *name);

/* What the trace counted: backend calls (every op recorded on the compute
 * track, each at least one runtime call on a GPU: math, upload, download,
 * copy issues, records, waits, event queries) and host waits among them
 * (download, download_many, synchronize, event_sync: the calls that make
 * the host wait for the device), in total and per forward pass (between
 * two "forward" marks of the engine): the median over the passes after
 * the first (the decode steps; the first is the prefill). */
typedef struct moe_trace_counts {
  unsigned long calls, host_syncs;
  int forward_passes;
  double calls_per_step, syncs_per_step;
  /* Graph mode's model: the captures the cuda backend would make of these
   * calls with MOE_CUDA_GRAPHS=1 (engine/src/capture_gate.h's rules; its
   * flushes for its own staging and timing rings are not modelled):
   * graphs (captures holding at least one call), the median per decode
   * step, and the calls per graph (mean).  Counted, on any backend. */
  unsigned long graphs;
  double graphs_per_step, ops_per_graph;
} moe_trace_counts;
void moe_trace_get_counts(moe_trace *t, moe_trace_counts *out);

/* Wraps dev's backend so that every operation is recorded in t; the device
 * keeps working as before.  Call right after moe_device_open, before any
 * allocation; moe_device_close unwraps.  Copies get their real spans when
 * the backend has set_copy_observer. */
moe_status moe_device_trace(moe_device *dev, moe_trace *t, moe_error *err);

#endif
