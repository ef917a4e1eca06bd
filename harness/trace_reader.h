/* The one reader of op traces (the Chrome trace-event JSON that
 * engine/src/trace.c writes for run/generate --trace) in the harness: the
 * replay (replay.c) and the timeline read every trace through it.  Our own
 * traces hold one event per line after a fixed first line: those stream, a
 * line at a time, so memory does not grow with the trace; any other
 * trace-event file is parsed whole.  Library layer. */
#ifndef MOEBENCH_TRACE_READER_H
#define MOEBENCH_TRACE_READER_H

#include <stdbool.h>
#include <stddef.h>

#include "moe/status.h"

/* What a reader is handed.  begin (may be NULL) is called once before the
 * first event, with whether the engine marked its forward passes (an
 * instant event named "forward"; older traces: each starts at an embed
 * op).  event is called for every event (a json_t * object, valid during
 * the call) with its index; a status other than MOE_OK stops the read. */
typedef struct trace_reader {
  moe_status (*begin)(void *ctx, bool forward_marks, moe_error *err);
  moe_status (*event)(void *ctx, void *event, size_t index, moe_error *err);
  void *ctx;
} trace_reader;

/* Reads the trace at path.  Errors name the file (and the event). */
moe_status trace_read(const char *path, const trace_reader *r, moe_error *err);
/* The same over a parsed trace (a json_t *); path names it in errors. */
moe_status trace_read_json(const void *root, const char *path, const trace_reader *r,
                           moe_error *err);

/* Fields of an event: the string at key (NULL when absent or not a
 * string), and whether the metadata event e says the trace's clock is
 * modeled (a "moe_clock" event with args.clock "modeled"). */
const char *trace_str(const void *e, const char *key);
bool trace_clock_modeled(const void *e);

#endif
