/* A copy feeder: overtakable, cancellable copies (backend.h, ABI 1.8) on a
 * device whose copy stream runs what it is given in order and cannot drop
 * it (a CUDA stream).  The feeder keeps the copies on the host, in a
 * queue, and a thread of its own hands the device a chunk at a time, at
 * most `depth` chunks ahead of what has landed; between two chunks it
 * takes the most urgent work queued.  So an urgent copy waits behind at
 * most `depth` chunks, and a cancelled copy's remaining chunks are never
 * issued.
 *
 * Waits are the host's too: a copy's wait is captured when the copy is
 * queued (`snap`: what the wait event stands for then, or nothing when it
 * is already complete) and the feeder issues no chunk of it before the
 * capture is complete (`snap_query`); a wait on an event that a queued
 * copy signals is for that copy (no capture), met once the copy is
 * issued, since the copy stream runs in order.  Nothing is ever made to wait on the device's copy
 * stream, so an urgent copy is never stuck behind a normal copy's wait.
 *
 * The feeder records a copy's event (`signal`) after its last chunk; until
 * then a device-side wait on that event would see its previous record.
 * So a caller must `moe_feed_settle(ev)` before any device wait on, or
 * query of, an event that queued copies signal, and before recording it
 * anywhere else (its records then stay in issue order).
 *
 * One thread issues work (the backend's caller); the feeder's own thread
 * makes every device call but `snap` (made by the caller, with the
 * feeder's lock held, so no signal of the feeder's slips between the
 * capture and the check for queued copies) and `snap_release`.  The device calls return 0, or non-zero with a message;
 * after a failure the feeder drops its queue and every later call reports
 * the failure.  Tested against an emulated device in
 * tests/test_copy_feed.c; driven by the cuda backend (MOE_CUDA_OVERTAKE). */
#ifndef MOE_COPY_FEED_H
#define MOE_COPY_FEED_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_feed moe_feed;

typedef struct moe_feed_dev {
  void *ctx;
  size_t chunk; /* bytes per chunk, > 0 */
  int depth;    /* chunks issued and not yet landed, at most (1..8) */
  /* On the feeder's thread before its first device call (may be NULL). */
  int (*thread_init)(void *ctx, char *msg, size_t cap);
  /* Issues n bytes dst <- src on the copy stream, then mark `mark`
   * (0..depth-1) behind them. */
  int (*issue)(void *ctx, void *dst, const void *src, size_t n, int mark, char *msg, size_t cap);
  /* The host blocks until mark `mark`'s bytes have landed. */
  int (*mark_wait)(void *ctx, int mark, char *msg, size_t cap);
  /* Records ev behind everything issued so far on the copy stream. */
  int (*signal)(void *ctx, void *ev, char *msg, size_t cap);
  /* The caller's thread, the feeder's lock held: a capture of wait's most
   * recent record (*out), or *out = NULL when it is already complete. */
  int (*snap)(void *ctx, void *wait, void **out, char *msg, size_t cap);
  /* 1: the capture is complete; 0: not yet; -1: failed (msg). */
  int (*snap_query)(void *ctx, void *snap, char *msg, size_t cap);
  void (*snap_release)(void *ctx, void *snap);
  /* Frees an event handed to moe_feed_release_event, once no queued copy
   * signals it. */
  void (*ev_release)(void *ctx, void *ev);
} moe_feed_dev;

/* Starts the feeder's thread; 0, or -1 with msg. */
int moe_feed_create(const moe_feed_dev *dev, moe_feed **out, char *msg, size_t cap);
/* Issues everything queued (waiting for its waits), then stops the thread;
 * events still held are released.  NULL: no-op. */
void moe_feed_destroy(moe_feed *f);

/* Queues a copy of n bytes signalling ev (may be NULL) when its last
 * byte has landed, after wait's most recent record or signalling copy
 * (may be NULL); urgent copies run before every normal one queued.  n 0
 * with ev NULL is a marker: the normal copies queued after it wait for
 * wait too (backend.h's copy_wait).  0, or -1 with msg (the feeder
 * failed, or no memory). */
int moe_feed_copy(moe_feed *f, void *dst, const void *src, size_t n, void *wait, void *ev,
                  int urgent, char *msg, size_t cap);
/* Cancels every queued copy signalling ev: 1 when a chunk of one was
 * dropped.  Its event is signalled behind the chunks already issued. */
int moe_feed_cancel(moe_feed *f, void *ev);
/* Makes the queued copy most recently issued that signals ev urgent: 1
 * when there was one. */
int moe_feed_urge(moe_feed *f, void *ev);
/* 1 when a queued copy signals ev (its record is still to come). */
int moe_feed_pending(moe_feed *f, void *ev);
/* Blocks until no queued copy signals ev (ev NULL: until the queue is
 * empty), so a device wait on ev sees its last record.  0, or -1 with
 * msg when the feeder has failed. */
int moe_feed_settle(moe_feed *f, void *ev, char *msg, size_t cap);
/* The caller is done with ev: 1 when queued copies still signal it (the
 * feeder calls ev_release after the last), 0 when none does (the caller
 * frees it now). */
int moe_feed_release_event(moe_feed *f, void *ev);

#ifdef __cplusplus
}
#endif

#endif
