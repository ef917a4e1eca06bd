/* The cuda backend's overtakable copies (backend.h, ABI 1.8), behind
 * MOE_CUDA_OVERTAKE=1 until a GPU run has measured them (off: copy_chunk
 * answers 0 and every copy runs in issue order, as before).
 *
 * A CUDA stream cannot reorder or drop a cudaMemcpyAsync once issued, so
 * the copies go to a copy feeder (engine/src/copy_feed.h): a host queue
 * and a thread that gives the copy stream FEED_CHUNK bytes at a time, at
 * most FEED_DEPTH chunks ahead of what has landed (each chunk is followed
 * by a mark event the thread waits on), the most urgent copy first.  So an
 * urgent copy waits behind at most FEED_DEPTH chunks already on the link.
 *
 * Waits: a copy's wait event is captured when the copy is issued (if it
 * is not already complete: a pooled capture's own stream waits for it and
 * records the capture's event), and the feeder issues no chunk of the copy
 * until that capture is complete, so no wait ever sits on the copy stream in front of
 * an urgent copy, and a later record of the wait event (a slot's next free
 * event) cannot deadlock the copy against compute.  copy_wait markers are
 * captured the same way and hold only the normal copies behind them.
 *
 * An event is recorded by the feeder after its copy's last chunk; before
 * that, a device wait on it would see its previous record.  So
 * compute_wait, event_sync, host_run's wait and event_done first settle
 * the event with the feeder, and so do compute_record and host_run's
 * done event before recording it elsewhere (the event's records then stay
 * in issue order, which a wait on a queued copy's event relies on) (the host waits until the record is issued;
 * that wait is not in stall_seconds, which times the GPU's waits only).
 * Every stream drain (synchronize, device_free, host_free, unregister,
 * destroy) empties the feeder first. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "copy_feed.h"
#include "cuda_internal.h"

#define FEED_CHUNK ((size_t)1 << 20)
#define FEED_DEPTH 2

/* ------------------------------------------------------------ the feeder's device */

static int feed_err(cudaError_t e, const char *what, char *msg, size_t cap) {
  if (e == cudaSuccess) return 0;
  (void)cudaGetLastError();
  snprintf(msg, cap, "%s failed: %s", what, cudaGetErrorString(e));
  return -1;
}

static int fd_thread_init(void *ctx, char *msg, size_t cap) {
  return feed_err(cudaSetDevice(((moe_backend *)ctx)->device), "cudaSetDevice (feeder)", msg, cap);
}

static int fd_issue(void *ctx, void *dst, const void *src, size_t n, int mark, char *msg,
                    size_t cap) {
  moe_backend *be = (moe_backend *)ctx;
  if (feed_err(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, be->copy),
               "cudaMemcpyAsync (a copy's chunk)", msg, cap))
    return -1;
  return feed_err(cudaEventRecord(be->feed_marks[mark], be->copy), "cudaEventRecord (chunk mark)",
                  msg, cap);
}

static int fd_mark_wait(void *ctx, int mark, char *msg, size_t cap) {
  moe_backend *be = (moe_backend *)ctx;
  return feed_err(cudaEventSynchronize(be->feed_marks[mark]), "cudaEventSynchronize (chunk mark)",
                  msg, cap);
}

static int fd_signal(void *ctx, void *ev, char *msg, size_t cap) {
  moe_backend *be = (moe_backend *)ctx;
  return feed_err(cudaEventRecord(((moe_event *)ev)->ev, be->copy), "cudaEventRecord (a copy's event)",
                  msg, cap);
}

/* A capture of a wait: its own stream waits for the wait event and then
 * records e, so a capture completes when its wait does, never later
 * because of another capture (one shared stream would make an urgent
 * copy's capture wait for every earlier capture's wait).  Pooled once
 * complete; the feeder takes and returns captures with its lock held, so
 * the pool needs no lock of its own. */
struct cu_capture {
  cudaStream_t s;
  cudaEvent_t e;
};

static void capture_free(cu_capture *c) {
  if (c == NULL) return;
  if (c->e) (void)cudaEventDestroy(c->e);
  if (c->s) (void)cudaStreamDestroy(c->s); /* returns at once; pending work still runs */
  (void)cudaGetLastError();
  free(c);
}

static int capture_get(moe_backend *be, cu_capture **out, char *msg, size_t cap) {
  cu_capture *c = be->n_snap_pool > 0 ? be->snap_pool[--be->n_snap_pool] : NULL;
  if (c == NULL) {
    c = (cu_capture *)calloc(1, sizeof *c);
    if (c == NULL) {
      snprintf(msg, cap, "no memory for a copy's wait capture");
      return -1;
    }
    if (feed_err(cudaStreamCreateWithFlags(&c->s, cudaStreamNonBlocking),
                 "cudaStreamCreateWithFlags (a wait's capture)", msg, cap) ||
        feed_err(cudaEventCreateWithFlags(&c->e, cudaEventDisableTiming),
                 "cudaEventCreateWithFlags (a wait's capture)", msg, cap)) {
      capture_free(c);
      return -1;
    }
  }
  *out = c;
  return 0;
}

/* Back to the pool if complete; one dropped while its wait is pending (a
 * cancelled copy's) is freed instead, so no capture queues behind it. */
static void fd_snap_release(void *ctx, void *snap) {
  moe_backend *be = (moe_backend *)ctx;
  cu_capture *c = (cu_capture *)snap;
  const cudaError_t q = cudaEventQuery(c->e);
  (void)cudaGetLastError();
  bool kept = false;
  if (q == cudaSuccess) {
    if (be->n_snap_pool == be->cap_snap_pool) {
      const size_t n = be->cap_snap_pool ? 2 * be->cap_snap_pool : 16;
      cu_capture **p = (cu_capture **)realloc(be->snap_pool, n * sizeof *p);
      if (p) {
        be->snap_pool = p;
        be->cap_snap_pool = n;
      }
    }
    kept = be->n_snap_pool < be->cap_snap_pool;
    if (kept) be->snap_pool[be->n_snap_pool++] = c;
  }
  if (!kept) capture_free(c);
}

/* The caller's thread: what wait stands for now, or NULL when complete. */
static int fd_snap(void *ctx, void *wait, void **out, char *msg, size_t cap) {
  moe_backend *be = (moe_backend *)ctx;
  cudaEvent_t w = ((moe_event *)wait)->ev;
  *out = NULL;
  const cudaError_t q = cudaEventQuery(w);
  if (q == cudaSuccess) return 0;
  if (q != cudaErrorNotReady) return feed_err(q, "cudaEventQuery (a copy's wait)", msg, cap);
  (void)cudaGetLastError(); /* not ready: an answer, not a failure */
  cu_capture *c = NULL;
  if (capture_get(be, &c, msg, cap)) return -1;
  if (feed_err(cudaStreamWaitEvent(c->s, w, 0), "cudaStreamWaitEvent (a wait's capture)", msg,
               cap) ||
      feed_err(cudaEventRecord(c->e, c->s), "cudaEventRecord (a wait's capture)", msg, cap)) {
    capture_free(c);
    return -1;
  }
  *out = (void *)c;
  return 0;
}

static int fd_snap_query(void *ctx, void *snap, char *msg, size_t cap) {
  const cudaError_t q = cudaEventQuery(((cu_capture *)snap)->e);
  if (q == cudaSuccess) return 1;
  (void)cudaGetLastError();
  if (q == cudaErrorNotReady) return 0;
  snprintf(msg, cap, "cudaEventQuery (a wait's capture) failed: %s", cudaGetErrorString(q));
  return -1;
}

static void fd_ev_release(void *ctx, void *ev) {
  moe_event *e = (moe_event *)ev;
  (void)cudaEventDestroy(e->ev); /* nothing is left to report to */
  (void)cudaGetLastError();
  free(e);
}

/* ------------------------------------------------------------ lifecycle */

moe_status moe_cu_feed_env(moe_error *err) {
  const char *v = getenv("MOE_CUDA_OVERTAKE");
  if (v == NULL || *v == '\0' || strcmp(v, "0") == 0 || strcmp(v, "1") == 0) return MOE_OK;
  return MOE_FAIL(err, MOE_ERR_INVALID, "MOE_CUDA_OVERTAKE='%.40s': expected 0 or 1", v);
}

moe_status moe_cu_feed_start(moe_backend *be, moe_error *err) {
  moe_status st = MOE_OK;
  const char *v = getenv("MOE_CUDA_OVERTAKE");
  if (v == NULL || strcmp(v, "1") != 0) return moe_cu_feed_env(err); /* off, or refused */
  char msg[256] = "";
  moe_feed_dev dev;
  memset(&dev, 0, sizeof dev);
  for (int i = 0; i < FEED_DEPTH; i++)
    CUDA_TRY(cudaEventCreateWithFlags(&be->feed_marks[i], cudaEventDisableTiming), err);
  dev.ctx = be;
  dev.chunk = FEED_CHUNK;
  dev.depth = FEED_DEPTH;
  dev.thread_init = fd_thread_init;
  dev.issue = fd_issue;
  dev.mark_wait = fd_mark_wait;
  dev.signal = fd_signal;
  dev.snap = fd_snap;
  dev.snap_query = fd_snap_query;
  dev.snap_release = fd_snap_release;
  dev.ev_release = fd_ev_release;
  MOE_CHECK(moe_feed_create(&dev, &be->feed, msg, sizeof msg) == 0, err, MOE_ERR_DEVICE, "%s", msg);
cleanup:
  return st;
}

/* Issues what is queued, stops the thread, frees what it used (the
 * streams are synchronised by the caller afterwards). */
void moe_cu_feed_stop(moe_backend *be) {
  moe_feed_destroy(be->feed);
  be->feed = NULL;
  for (int i = 0; i < FEED_DEPTH; i++)
    if (be->feed_marks[i]) (void)cudaEventDestroy(be->feed_marks[i]);
  for (size_t i = 0; i < be->n_snap_pool; i++) capture_free(be->snap_pool[i]);
  free(be->snap_pool);
  be->snap_pool = NULL;
  be->n_snap_pool = be->cap_snap_pool = 0;
  (void)cudaGetLastError();
}

/* ------------------------------------------------------------ for the other methods */

moe_status moe_cu_feed_copy(moe_backend *be, void *dst, const void *src, size_t bytes,
                            moe_event *wait_ev, moe_event *ev, int urgent, moe_error *err) {
  char msg[256] = "";
  if (moe_feed_copy(be->feed, dst, src, bytes, wait_ev, ev, urgent, msg, sizeof msg) != 0)
    return MOE_FAIL(err, MOE_ERR_DEVICE, "%s", msg);
  return MOE_OK;
}

moe_status moe_cu_feed_settle(moe_backend *be, moe_event *ev, moe_error *err) {
  char msg[256] = "";
  if (be->feed == NULL || moe_feed_settle(be->feed, ev, msg, sizeof msg) == 0) return MOE_OK;
  return MOE_FAIL(err, MOE_ERR_DEVICE, "%s", msg);
}

void moe_cu_feed_drain(moe_backend *be) {
  char msg[256] = "";
  if (be->feed == NULL || moe_feed_settle(be->feed, NULL, msg, sizeof msg) == 0) return;
  if (be->deferred[0] == '\0') snprintf(be->deferred, sizeof be->deferred, "%s", msg);
}

int moe_cu_feed_pending(moe_backend *be, moe_event *ev) {
  return be->feed != NULL && ev != NULL && moe_feed_pending(be->feed, ev);
}

int moe_cu_feed_holds(moe_backend *be, moe_event *ev) {
  return be->feed != NULL && moe_feed_release_event(be->feed, ev);
}

/* ------------------------------------------------------------ ABI 1.8 methods */

static size_t cu_copy_chunk(moe_backend *be) { return be->feed ? FEED_CHUNK : 0; }

/* Without the feeder (copy_chunk 0, so the engine does not ask): a copy in
 * issue order after its wait; urgent is ignored. */
static moe_status cu_copy_h2d_ex(moe_backend *be, void *dst, const void *src, size_t bytes,
                                 moe_event *wait_ev, moe_event *ev, int urgent, moe_error *err) {
  moe_status st = MOE_OK;
  MOE_TRY(moe_cu_graph_use(be, wait_ev, err));
  MOE_TRY(moe_cu_graph_foreign_record(be, ev, err));
  if (be->feed) return moe_cu_feed_copy(be, dst, src, bytes, wait_ev, ev, urgent, err);
  if (wait_ev) CUDA_TRY(cudaStreamWaitEvent(be->copy, wait_ev->ev, 0), err);
  CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, be->copy), err);
  if (ev) CUDA_TRY(cudaEventRecord(ev->ev, be->copy), err);
cleanup:
  return st;
}

static int cu_copy_cancel(moe_backend *be, moe_event *ev) {
  return be->feed != NULL && ev != NULL && moe_feed_cancel(be->feed, ev);
}

static int cu_copy_urge(moe_backend *be, moe_event *ev) {
  return be->feed != NULL && ev != NULL && moe_feed_urge(be->feed, ev);
}

void moe_cu_feed_ops(moe_backend_ops *o) {
  o->copy_chunk = cu_copy_chunk;
  o->copy_h2d_ex = cu_copy_h2d_ex;
  o->copy_cancel = cu_copy_cancel;
  o->copy_urge = cu_copy_urge;
}
