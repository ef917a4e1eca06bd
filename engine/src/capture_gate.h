/* When a capture of the compute stream must end (device-neutral; used by
 * the cuda backend's graph mode, engine/backends/cuda/cuda_graph.cu, and
 * tested on its own against a model of CUDA's event semantics in
 * tests/test_capture_gate.c).
 *
 * While a stream is captured, nothing it is given runs: its work becomes
 * a graph, launched later (the "flush").  An event recorded in the capture
 * is recorded when the graph runs, not when the record was called, and a
 * wait on an event recorded outside the capture (an external wait node)
 * sees the event's record as of the launch, not as of the call.  Stream
 * semantics, which the backend contract promises, hold if and only if the
 * capture is flushed first in these cases:
 *
 *   - use: another stream or the host waits on, queries or destroys an
 *     event recorded in the open capture (it would see the previous
 *     record, or none);
 *   - re-record: an event waited on in the open capture is recorded again,
 *     on any stream (at the launch the wait would see the new record: a
 *     later one, or, recorded by the same graph, one that waits for
 *     itself), or an event recorded in the open capture is recorded on
 *     another stream (the capture's record, made at the launch, would
 *     then be the event's last, and it is the earlier one).
 *
 * A wait by the captured stream on an event recorded in the same capture
 * is already ordered by the stream: it is dropped (moe_gate_wait answers
 * 0).  Ids: each capture gets the next id (never 0); a mark holds the id
 * of the last capture that recorded or waited on the event. */
#ifndef MOE_CAPTURE_GATE_H
#define MOE_CAPTURE_GATE_H

#include <stdint.h>

typedef struct moe_capture_gate {
  uint64_t open; /* id of the open capture, 0 when none is open */
  uint64_t last; /* the last id given */
} moe_capture_gate;

typedef struct moe_capture_mark {
  uint64_t rec;  /* the capture that last recorded the event */
  uint64_t wait; /* the capture that last waited on it */
} moe_capture_mark;

static inline void moe_gate_begin(moe_capture_gate *g) { g->open = ++g->last; }

static inline void moe_gate_end(moe_capture_gate *g) { g->open = 0; }

/* 1: flush before another stream or the host waits on, queries or
 * destroys the event. */
static inline int moe_gate_flush_for_use(const moe_capture_gate *g, const moe_capture_mark *m) {
  return g->open != 0 && m->rec == g->open;
}

/* 1: flush before the event is recorded again: by the open capture
 * (in_capture 1) when the capture waited on it, on another stream when
 * the capture waited on it or recorded it (at the launch the capture's
 * record would land after the other stream's, which is the later one). */
static inline int moe_gate_flush_for_record(const moe_capture_gate *g, const moe_capture_mark *m,
                                            int in_capture) {
  if (g->open == 0) return 0;
  return m->wait == g->open || (!in_capture && m->rec == g->open);
}

/* Destroying an event a node of the open capture refers to. */
static inline int moe_gate_flush_for_destroy(const moe_capture_gate *g, const moe_capture_mark *m) {
  return g->open != 0 && (m->rec == g->open || m->wait == g->open);
}

/* A record (after moe_gate_flush_for_record): by the open capture, or on
 * another stream. */
static inline void moe_gate_recorded(const moe_capture_gate *g, moe_capture_mark *m,
                                     int in_capture) {
  m->rec = in_capture ? g->open : 0;
}

/* 1 when the open capture recorded the event: a wait by the captured
 * stream is then ordered by the stream already (and dropped). */
static inline int moe_gate_ordered(const moe_capture_gate *g, const moe_capture_mark *m) {
  return g->open != 0 && m->rec == g->open;
}

/* A wait by the captured stream: 1 to capture it (an external wait node),
 * 0 when the capture itself recorded the event (the stream orders it). */
static inline int moe_gate_wait(const moe_capture_gate *g, moe_capture_mark *m) {
  if (moe_gate_ordered(g, m)) return 0;
  m->wait = g->open;
  return 1;
}

#endif
