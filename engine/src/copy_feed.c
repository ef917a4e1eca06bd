/* The copy feeder (copy_feed.h): a host queue of copies and a thread that
 * hands the device one chunk at a time, the most urgent work first. */
#include "copy_feed.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FEED_POLL_NS 20000L /* a wait on the device is polled this often */

typedef struct feed_req {
  void *dst;
  const void *src;
  size_t bytes, done; /* done: bytes issued so far */
  size_t moving;      /* bytes of the chunk being issued (mu released) */
  void *ev;           /* signalled after the last chunk (NULL: none) */
  void *snap;         /* the wait's capture, until it is complete */
  void *dep;          /* the wait's event: copies signalling it queued before this one */
  unsigned long seq;  /* issue order */
  int urgent, cancelled;
} feed_req;

struct moe_feed {
  moe_feed_dev dev;
  pthread_mutex_t mu;
  pthread_cond_t cv; /* work for the thread, progress for waiters */
  feed_req *q;       /* in issue order; only the thread removes */
  size_t len, cap;
  unsigned long seq;
  int head, inflight; /* marks: the oldest, and how many are out */
  void **doomed;      /* released events that queued copies still signal */
  size_t n_doomed, cap_doomed;
  int stop, failed, started;
  int init; /* 0 while the thread starts, 1 ready, -1 its thread_init failed */
  char fail[256];
  pthread_t tid;
};

/* Whether a queued copy signals ev (before seq: issued before it). */
static int names(const moe_feed *f, const void *ev, unsigned long before) {
  for (size_t i = 0; i < f->len; i++)
    if (f->q[i].ev == ev && f->q[i].seq < before) return 1;
  return 0;
}

/* The first failure, kept; the queue is dropped and everyone woken. */
static void fail(moe_feed *f, const char *msg) {
  if (!f->failed) {
    f->failed = 1;
    snprintf(f->fail, sizeof f->fail, "copy feeder: %s", msg[0] ? msg : "device call failed");
  }
  for (size_t i = 0; i < f->len; i++)
    if (f->q[i].snap) f->dev.snap_release(f->dev.ctx, f->q[i].snap);
  f->len = 0;
  for (size_t i = 0; i < f->n_doomed; i++) f->dev.ev_release(f->dev.ctx, f->doomed[i]);
  f->n_doomed = 0;
  pthread_cond_broadcast(&f->cv);
}

/* Whether request r may start: its capture is complete and the copies
 * its wait names, queued before it, are issued.  mu held. */
static int ready(moe_feed *f, feed_req *r) {
  if (r->dep && names(f, r->dep, r->seq)) return 0;
  r->dep = NULL;
  if (r->snap) {
    char msg[200] = "";
    const int q = f->dev.snap_query(f->dev.ctx, r->snap, msg, sizeof msg);
    if (q < 0) {
      fail(f, msg);
      return 0;
    }
    if (q == 0) return 0;
    f->dev.snap_release(f->dev.ctx, r->snap);
    r->snap = NULL;
  }
  return 1;
}

/* The request to run next, or -1: a cancelled one (at once, wherever it
 * waits), else the first urgent one if it may start, else the first normal
 * one if it may.  *waiting: something is queued that only a device event
 * can free (poll it).  mu held. */
static long pick(moe_feed *f, int *waiting) {
  long urgent = -1, normal = -1;
  for (size_t i = 0; i < f->len; i++) {
    if (f->q[i].cancelled) return (long)i;
    if (f->q[i].urgent && urgent < 0) urgent = (long)i;
    if (!f->q[i].urgent && normal < 0) normal = (long)i;
  }
  *waiting = 0;
  if (urgent >= 0 && ready(f, &f->q[urgent])) return urgent;
  if (f->failed) return -1;
  if (normal >= 0 && ready(f, &f->q[normal])) return normal;
  *waiting = urgent >= 0 || normal >= 0;
  return -1;
}

/* Request i is issued (or cancelled): its event is recorded behind its
 * chunks, it leaves the queue, and an event released meanwhile is freed
 * after its last copy.  mu held. */
static void finish(moe_feed *f, size_t i) {
  const feed_req r = f->q[i];
  memmove(f->q + i, f->q + i + 1, (f->len - i - 1) * sizeof *f->q);
  f->len--;
  if (r.snap) f->dev.snap_release(f->dev.ctx, r.snap);
  if (r.ev) {
    char msg[200] = "";
    if (f->dev.signal(f->dev.ctx, r.ev, msg, sizeof msg) != 0) fail(f, msg);
  }
  for (size_t k = 0; r.ev && k < f->n_doomed; k++) {
    if (f->doomed[k] != r.ev || names(f, r.ev, f->seq + 1)) continue;
    f->dev.ev_release(f->dev.ctx, r.ev);
    f->doomed[k] = f->doomed[--f->n_doomed];
    break;
  }
  pthread_cond_broadcast(&f->cv);
}

/* Waits for the oldest chunk out to land (mu released meanwhile). */
static void land_oldest(moe_feed *f) {
  const int mark = f->head;
  char msg[200] = "";
  pthread_mutex_unlock(&f->mu);
  const int rc = f->dev.mark_wait(f->dev.ctx, mark, msg, sizeof msg);
  pthread_mutex_lock(&f->mu);
  f->head = (f->head + 1) % f->dev.depth;
  f->inflight--;
  if (rc != 0) fail(f, msg);
}

/* Issues the next chunk of request i, with mu released meanwhile (a copy
 * from pageable memory can block in the device call): the request stays
 * at index i, since only this thread removes requests, but the array may
 * move (an enqueue grows it). */
static void issue_chunk(moe_feed *f, size_t i) {
  feed_req *r = &f->q[i];
  const size_t n = r->bytes - r->done < f->dev.chunk ? r->bytes - r->done : f->dev.chunk;
  const int mark = (f->head + f->inflight) % f->dev.depth;
  char *dst = (char *)r->dst + r->done;
  const char *src = (const char *)r->src + r->done;
  char msg[200] = "";
  r->moving = n;
  pthread_mutex_unlock(&f->mu);
  const int rc = f->dev.issue(f->dev.ctx, dst, src, n, mark, msg, sizeof msg);
  pthread_mutex_lock(&f->mu);
  r = &f->q[i];
  r->moving = 0;
  if (rc != 0) {
    fail(f, msg);
    return;
  }
  f->inflight++;
  r->done += n;
  if (r->done == r->bytes) finish(f, i);
}

static void idle_wait(moe_feed *f, int waiting) {
  if (!waiting) {
    pthread_cond_wait(&f->cv, &f->mu);
    return;
  }
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  t.tv_nsec += FEED_POLL_NS;
  if (t.tv_nsec >= 1000000000L) {
    t.tv_sec++;
    t.tv_nsec -= 1000000000L;
  }
  (void)pthread_cond_timedwait(&f->cv, &f->mu, &t);
}

static void *feed_main(void *arg) {
  moe_feed *f = arg;
  char msg[200] = "";
  const int init = f->dev.thread_init ? f->dev.thread_init(f->dev.ctx, msg, sizeof msg) : 0;
  pthread_mutex_lock(&f->mu);
  if (init != 0) fail(f, msg);
  f->init = init != 0 ? -1 : 1;
  pthread_cond_broadcast(&f->cv);
  for (;;) {
    int waiting = 0;
    const long i = f->failed ? -1 : pick(f, &waiting);
    if (i >= 0 && (f->q[i].cancelled || f->q[i].done == f->q[i].bytes)) {
      finish(f, (size_t)i); /* cancelled, a marker whose wait is met, or 0 bytes */
    } else if (i >= 0 && f->inflight < f->dev.depth) {
      issue_chunk(f, (size_t)i);
    } else if (f->inflight > 0) {
      land_oldest(f);
    } else if (f->len == 0 && f->stop) {
      break;
    } else {
      idle_wait(f, waiting);
    }
  }
  pthread_mutex_unlock(&f->mu);
  return NULL;
}

int moe_feed_create(const moe_feed_dev *dev, moe_feed **out, char *msg, size_t cap) {
  *out = NULL;
  if (dev->chunk == 0 || dev->depth < 1 || dev->depth > 8) {
    snprintf(msg, cap, "copy feeder: chunk %zu bytes and depth %d (must be > 0 and 1..8)",
             dev->chunk, dev->depth);
    return -1;
  }
  moe_feed *f = calloc(1, sizeof *f);
  pthread_condattr_t ca;
  int ok = f != NULL && pthread_condattr_init(&ca) == 0;
  if (ok) {
    ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
         pthread_cond_init(&f->cv, &ca) == 0;
    pthread_condattr_destroy(&ca);
  }
  if (ok) {
    f->dev = *dev;
    pthread_mutex_init(&f->mu, NULL);
    f->started = pthread_create(&f->tid, NULL, feed_main, f) == 0;
    if (!f->started) {
      pthread_cond_destroy(&f->cv);
      pthread_mutex_destroy(&f->mu);
    }
  }
  if (!ok || !f->started) {
    snprintf(msg, cap, "copy feeder: cannot start its thread (%s)",
             ok ? strerror(EAGAIN) : "no memory or condition variable");
    free(f);
    return -1;
  }
  /* the thread's device set-up must have worked before the first copy */
  pthread_mutex_lock(&f->mu);
  while (f->init == 0) pthread_cond_wait(&f->cv, &f->mu);
  const int init = f->init;
  if (init < 0) snprintf(msg, cap, "%s", f->fail);
  pthread_mutex_unlock(&f->mu);
  if (init < 0) {
    moe_feed_destroy(f);
    return -1;
  }
  *out = f;
  return 0;
}

void moe_feed_destroy(moe_feed *f) {
  if (f == NULL) return;
  pthread_mutex_lock(&f->mu);
  f->stop = 1;
  pthread_cond_broadcast(&f->cv);
  pthread_mutex_unlock(&f->mu);
  pthread_join(f->tid, NULL);
  for (size_t i = 0; i < f->n_doomed; i++) f->dev.ev_release(f->dev.ctx, f->doomed[i]);
  pthread_cond_destroy(&f->cv);
  pthread_mutex_destroy(&f->mu);
  free(f->q);
  free(f->doomed);
  free(f);
}

/* Room for one more request or released event.  mu held. */
static int grow(void **arr, size_t *cap, size_t len, size_t elem) {
  if (len < *cap) return 0;
  const size_t n = *cap ? 2 * *cap : 16;
  void *p = realloc(*arr, n * elem);
  if (p == NULL) return -1;
  *arr = p;
  *cap = n;
  return 0;
}

int moe_feed_copy(moe_feed *f, void *dst, const void *src, size_t n, void *wait, void *ev,
                  int urgent, char *msg, size_t cap) {
  pthread_mutex_lock(&f->mu);
  int rc = 0;
  /* a queued copy signals wait: the most recent signalling op is that
   * copy (a record of wait made elsewhere settles the feeder first), so
   * this copy waits for it; else wait's record is captured now, under mu,
   * so that no signal of the feeder's slips between capture and check */
  void *dep = wait && names(f, wait, f->seq + 1) ? wait : NULL, *snap = NULL;
  if (f->failed) {
    snprintf(msg, cap, "%s", f->fail);
    rc = -1;
  } else if (grow((void **)&f->q, &f->cap, f->len, sizeof *f->q) != 0) {
    snprintf(msg, cap, "copy feeder: no memory for a queue of %zu copies", f->len + 1);
    rc = -1;
  } else if (wait && !dep && f->dev.snap(f->dev.ctx, wait, &snap, msg, cap) != 0) {
    rc = -1;
  } else {
    f->q[f->len] = (feed_req){.dst = dst, .src = src, .bytes = n, .ev = ev, .snap = snap,
                              .dep = dep, .seq = f->seq + 1, .urgent = urgent != 0};
    f->len++;
    f->seq++;
    pthread_cond_broadcast(&f->cv);
  }
  pthread_mutex_unlock(&f->mu);
  return rc;
}

int moe_feed_cancel(moe_feed *f, void *ev) {
  int dropped = 0;
  pthread_mutex_lock(&f->mu);
  for (size_t i = 0; ev && i < f->len; i++) {
    feed_req *r = &f->q[i];
    if (r->ev != ev || r->cancelled || r->bytes == 0) continue;
    r->cancelled = 1;
    dropped |= r->done + r->moving < r->bytes; /* a chunk is left after the one being issued */
  }
  pthread_cond_broadcast(&f->cv);
  pthread_mutex_unlock(&f->mu);
  return dropped;
}

int moe_feed_urge(moe_feed *f, void *ev) {
  int found = 0;
  pthread_mutex_lock(&f->mu);
  for (size_t i = f->len; ev && i-- > 0;) {
    feed_req *r = &f->q[i];
    if (r->ev != ev || r->cancelled || r->bytes == 0) continue;
    r->urgent = 1;
    found = 1;
    break;
  }
  pthread_cond_broadcast(&f->cv);
  pthread_mutex_unlock(&f->mu);
  return found;
}

int moe_feed_pending(moe_feed *f, void *ev) {
  pthread_mutex_lock(&f->mu);
  const int p = ev != NULL && names(f, ev, f->seq + 1);
  pthread_mutex_unlock(&f->mu);
  return p;
}

int moe_feed_settle(moe_feed *f, void *ev, char *msg, size_t cap) {
  pthread_mutex_lock(&f->mu);
  while (!f->failed && (ev ? names(f, ev, f->seq + 1) : f->len > 0))
    pthread_cond_wait(&f->cv, &f->mu);
  const int rc = f->failed ? -1 : 0;
  if (rc) snprintf(msg, cap, "%s", f->fail);
  pthread_mutex_unlock(&f->mu);
  return rc;
}

int moe_feed_release_event(moe_feed *f, void *ev) {
  pthread_mutex_lock(&f->mu);
  int held = ev != NULL && names(f, ev, f->seq + 1);
  if (held) {
    if (grow((void **)&f->doomed, &f->cap_doomed, f->n_doomed, sizeof *f->doomed) == 0) {
      f->doomed[f->n_doomed++] = ev;
    } else { /* no memory to remember it: wait for its copies instead */
      while (!f->failed && names(f, ev, f->seq + 1)) pthread_cond_wait(&f->cv, &f->mu);
      held = 0;
    }
  }
  pthread_mutex_unlock(&f->mu);
  return held;
}
