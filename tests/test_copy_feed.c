/* The copy feeder (engine/src/copy_feed.h) against an emulated device: a
 * thread that runs what it is given in order, as a CUDA copy stream does
 * (copies, marks, event records), and events kept like CUDA's: each
 * record completes on its own, and a wait is for the record most recent
 * when it was taken, whatever the others do.  Order is checked by
 * the device's log and by data, never by time; "not yet" is checked after
 * a pause long enough for a broken feeder to have done it. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "copy_feed.h"
#include "testutil.h"

enum { CHUNK = 4096, DEPTH = 2, MAXLOG = 4096, N = 3 * CHUNK + 100 };

/* An event: records 1..issued; bit k of done is set once record k has
 * completed (records on different streams complete in any order). */
typedef struct fev {
  unsigned long issued;
  unsigned long long done;
} fev;

/* Whether e's most recent record has completed (never recorded: yes).
 * D.mu held. */
static int latest_done(const fev *e) { return e->issued == 0 || ((e->done >> e->issued) & 1); }

typedef struct op {
  int kind; /* 0 copy, 1 mark, 2 signal, 3 free the event (as CUDA, after its records) */
  void *dst;
  const void *src;
  size_t n;
  int mark;
  unsigned long gen;
  fev *ev;
} op;

/* The emulated device.  Guarded by mu. */
static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  op q[MAXLOG];
  size_t head, tail;
  void *log[MAXLOG]; /* the destination of each chunk, in the order it ran */
  size_t n_log;
  unsigned long mark_issued[DEPTH], mark_done[DEPTH];
  int outstanding, max_outstanding; /* chunks issued and not landed */
  int fail_at;                      /* the issue call that fails (0: none) */
  int fail_signal, fail_query, fail_mark, fail_init; /* the call of each that fails */
  int issues, signals, queries, marks, released;
  int allow;   /* issue calls that may return (-1: all); the others block, as a pageable copy does */
  int entered; /* issue calls begun */
  int stop;
  useconds_t delay; /* per chunk */
  pthread_t tid;
} D;

static void *dev_main(void *arg) {
  (void)arg;
  pthread_mutex_lock(&D.mu);
  for (;;) {
    while (D.head == D.tail && !D.stop) pthread_cond_wait(&D.cv, &D.mu);
    if (D.head == D.tail) break;
    const op o = D.q[D.head % MAXLOG];
    pthread_mutex_unlock(&D.mu);
    if (o.kind == 0) {
      if (D.delay) usleep(D.delay);
      memcpy(o.dst, o.src, o.n);
    }
    pthread_mutex_lock(&D.mu);
    D.head++;
    if (o.kind == 0) {
      D.log[D.n_log++ % MAXLOG] = o.dst;
      D.outstanding--;
    } else if (o.kind == 1) {
      D.mark_done[o.mark] = o.gen;
    } else if (o.kind == 2) {
      o.ev->done |= 1ull << o.gen;
    } else {
      D.released++;
      free(o.ev);
    }
    pthread_cond_broadcast(&D.cv);
  }
  pthread_mutex_unlock(&D.mu);
  return NULL;
}

static void push(op o) {
  D.q[D.tail++ % MAXLOG] = o;
  pthread_cond_broadcast(&D.cv);
}

static int d_issue(void *ctx, void *dst, const void *src, size_t n, int mark, char *msg,
                   size_t cap) {
  (void)ctx;
  pthread_mutex_lock(&D.mu);
  D.entered++;
  pthread_cond_broadcast(&D.cv);
  while (D.allow == 0) pthread_cond_wait(&D.cv, &D.mu);
  if (D.allow > 0) D.allow--;
  const int fails = ++D.issues == D.fail_at;
  if (!fails) {
    push((op){.kind = 0, .dst = dst, .src = src, .n = n});
    push((op){.kind = 1, .mark = mark, .gen = ++D.mark_issued[mark]});
    if (++D.outstanding > D.max_outstanding) D.max_outstanding = D.outstanding;
  }
  pthread_mutex_unlock(&D.mu);
  if (fails) snprintf(msg, cap, "emulated copy failure");
  return fails ? -1 : 0;
}

/* An injected failure: the n-th call (counted in *calls) fails. */
static int injected(int *calls, int n, const char *what, char *msg, size_t cap) {
  if (++*calls != n) return 0;
  snprintf(msg, cap, "emulated %s failure", what);
  return 1;
}

static int d_mark_wait(void *ctx, int mark, char *msg, size_t cap) {
  (void)ctx;
  pthread_mutex_lock(&D.mu);
  while (D.mark_done[mark] < D.mark_issued[mark]) pthread_cond_wait(&D.cv, &D.mu);
  const int fails = injected(&D.marks, D.fail_mark, "mark", msg, cap);
  pthread_mutex_unlock(&D.mu);
  return fails ? -1 : 0;
}

static int d_signal(void *ctx, void *ev, char *msg, size_t cap) {
  (void)ctx;
  fev *e = ev;
  pthread_mutex_lock(&D.mu);
  const int fails = injected(&D.signals, D.fail_signal, "signal", msg, cap);
  if (!fails) push((op){.kind = 2, .ev = e, .gen = ++e->issued});
  pthread_mutex_unlock(&D.mu);
  return fails ? -1 : 0;
}

static int d_init(void *ctx, char *msg, size_t cap) {
  (void)ctx;
  if (!D.fail_init) return 0;
  snprintf(msg, cap, "emulated init failure");
  return -1;
}

typedef struct snap {
  fev *ev;
  unsigned long target;
} snap;

static int d_snap(void *ctx, void *wait, void **out, char *msg, size_t cap) {
  (void)ctx, (void)msg, (void)cap;
  fev *w = wait;
  pthread_mutex_lock(&D.mu);
  snap *s = NULL;
  if (!latest_done(w)) {
    s = malloc(sizeof *s);
    ck_assert_ptr_nonnull(s);
    *s = (snap){w, w->issued};
  }
  pthread_mutex_unlock(&D.mu);
  *out = s;
  return 0;
}

static int d_snap_query(void *ctx, void *sn, char *msg, size_t cap) {
  (void)ctx;
  const snap *s = sn;
  pthread_mutex_lock(&D.mu);
  const int fails = injected(&D.queries, D.fail_query, "query", msg, cap);
  const int done = (s->ev->done >> s->target) & 1;
  pthread_mutex_unlock(&D.mu);
  return fails ? -1 : done;
}

static void d_snap_release(void *ctx, void *s) {
  (void)ctx;
  free(s);
}

/* cudaEventDestroy with records still to run: freed once they have. */
static void d_ev_release(void *ctx, void *ev) {
  (void)ctx;
  pthread_mutex_lock(&D.mu);
  push((op){.kind = 3, .ev = ev});
  pthread_mutex_unlock(&D.mu);
}

static moe_feed *F;
static char msg[256];
static const moe_feed_dev DEV = {NULL, CHUNK, DEPTH, d_init, d_issue, d_mark_wait, d_signal,
                                 d_snap, d_snap_query, d_snap_release, d_ev_release};

static void setup(void) {
  pthread_mutex_init(&D.mu, NULL);
  pthread_cond_init(&D.cv, NULL);
  D.head = D.tail = D.n_log = 0;
  memset(D.mark_issued, 0, sizeof D.mark_issued);
  memset(D.mark_done, 0, sizeof D.mark_done);
  D.outstanding = D.max_outstanding = D.fail_at = D.issues = D.released = D.stop = 0;
  D.fail_signal = D.fail_query = D.fail_mark = D.fail_init = 0;
  D.signals = D.queries = D.marks = D.entered = 0;
  D.allow = -1;
  D.delay = 0;
  ck_assert_int_eq(pthread_create(&D.tid, NULL, dev_main, NULL), 0);
  ck_assert_int_eq(moe_feed_create(&DEV, &F, msg, sizeof msg), 0);
}

static void teardown(void) {
  moe_feed_destroy(F);
  pthread_mutex_lock(&D.mu);
  D.stop = 1;
  pthread_cond_broadcast(&D.cv);
  pthread_mutex_unlock(&D.mu);
  pthread_join(D.tid, NULL);
}

/* A host event of the test's own: recorded (not complete), or its oldest
 * record still pending completed. */
static void record(fev *e) {
  pthread_mutex_lock(&D.mu);
  e->issued++;
  pthread_mutex_unlock(&D.mu);
}

static void complete(fev *e) {
  pthread_mutex_lock(&D.mu);
  for (unsigned long k = 1; k <= e->issued; k++)
    if (!((e->done >> k) & 1)) {
      e->done |= 1ull << k;
      break;
    }
  pthread_cond_broadcast(&D.cv);
  pthread_mutex_unlock(&D.mu);
}

/* A marker waiting for gate, recorded and not complete: the normal copies
 * queued after it wait until the case completes it. */
static void close_gate(fev *gate) {
  record(gate);
  ck_assert_int_eq(moe_feed_copy(F, NULL, NULL, 0, gate, NULL, 0, msg, sizeof msg), 0);
}

/* Settles ev, then waits for its record to run on the device. */
static void sync_ev(fev *e) {
  ck_assert_msg(moe_feed_settle(F, e, msg, sizeof msg) == 0, "%s", msg);
  pthread_mutex_lock(&D.mu);
  while (!latest_done(e)) pthread_cond_wait(&D.cv, &D.mu);
  pthread_mutex_unlock(&D.mu);
}

/* Waits until the device has run everything it was given. */
static void drain_device(void) {
  pthread_mutex_lock(&D.mu);
  while (D.head != D.tail) pthread_cond_wait(&D.cv, &D.mu);
  pthread_mutex_unlock(&D.mu);
}

static void sync_all(void) {
  ck_assert_msg(moe_feed_settle(F, NULL, msg, sizeof msg) == 0, "%s", msg);
  drain_device();
}

static void copy(void *dst, const void *src, void *wait, fev *ev, int urgent) {
  ck_assert_msg(moe_feed_copy(F, dst, src, N, wait, ev, urgent, msg, sizeof msg) == 0, "%s", msg);
}

/* Chunks in the device's log that wrote into dst, and the position of the
 * first and last. */
static int chunks_of(const void *dst, size_t *first, size_t *last) {
  int k = 0;
  pthread_mutex_lock(&D.mu);
  for (size_t i = 0; i < D.n_log; i++) {
    const char *p = D.log[i];
    if (p < (const char *)dst || p >= (const char *)dst + N) continue;
    if (k++ == 0 && first) *first = i;
    if (last) *last = i;
  }
  pthread_mutex_unlock(&D.mu);
  return k;
}

static int all(const unsigned char *p, unsigned char v) {
  for (size_t i = 0; i < N; i++)
    if (p[i] != v) return 0;
  return 1;
}

static void pause_ms(int ms) { usleep((useconds_t)ms * 1000); }

/* Copies land whole, a chunk at a time, and signal their events. */
START_TEST(copies_land_in_chunks) {
  static unsigned char src[3][N], dst[3][N];
  fev ev[3] = {{0, 0}};
  for (int i = 0; i < 3; i++) {
    memset(src[i], 0x10 + i, N);
    copy(dst[i], src[i], NULL, &ev[i], 0);
  }
  sync_all();
  for (int i = 0; i < 3; i++) {
    ck_assert(all(dst[i], (unsigned char)(0x10 + i)));
    ck_assert_int_eq(chunks_of(dst[i], NULL, NULL), (N + CHUNK - 1) / CHUNK);
    ck_assert_uint_eq(ev[i].issued, 1);
    ck_assert_uint_eq(ev[i].done, 2);
  }
}
END_TEST

/* Behind a marker whose wait is not complete, normal copies wait and an
 * urgent one does not. */
START_TEST(urgent_copy_overtakes_a_waiting_queue) {
  static unsigned char a[N], b[N], da[N], db[N];
  memset(a, 0xa1, N), memset(b, 0xb2, N);
  fev gate = {0, 0}, ea = {0, 0}, eb = {0, 0};
  close_gate(&gate);
  copy(da, a, NULL, &ea, 0);
  copy(db, b, NULL, &eb, 1);
  sync_ev(&eb);
  ck_assert(all(db, 0xb2));
  ck_assert_int_eq(moe_feed_pending(F, &ea), 1);
  ck_assert_int_eq(chunks_of(da, NULL, NULL), 0);
  complete(&gate);
  sync_ev(&ea);
  ck_assert(all(da, 0xa1));
}
END_TEST

/* A cancelled copy issues nothing more, and its event is signalled
 * without waiting for the queue before it. */
START_TEST(cancel_signals_at_once) {
  static unsigned char a[N], da[N];
  memset(a, 0x5a, N);
  fev gate = {0, 0}, ea = {0, 0};
  close_gate(&gate);
  copy(da, a, NULL, &ea, 0);
  ck_assert_int_eq(moe_feed_cancel(F, &ea), 1);
  ck_assert_int_eq(moe_feed_cancel(F, &ea), 0);
  sync_ev(&ea);
  ck_assert_uint_eq(gate.done, 0);
  complete(&gate);
  sync_all();
  ck_assert_int_eq(chunks_of(da, NULL, NULL), 0);
  ck_assert(all(da, 0));
}
END_TEST

/* copy_urge moves the most recent pending copy of an event ahead. */
START_TEST(urge_moves_a_copy_ahead) {
  static unsigned char a[N], b[N], da[N], db[N];
  memset(a, 0x11, N), memset(b, 0x22, N);
  fev gate = {0, 0}, ea = {0, 0}, eb = {0, 0}, idle = {0, 0};
  close_gate(&gate);
  copy(da, a, NULL, &ea, 0);
  copy(db, b, NULL, &eb, 0);
  ck_assert_int_eq(moe_feed_urge(F, &idle), 0);
  ck_assert_int_eq(moe_feed_urge(F, &eb), 1);
  sync_ev(&eb);
  ck_assert(all(db, 0x22));
  ck_assert_int_eq(chunks_of(da, NULL, NULL), 0);
  complete(&gate);
  sync_ev(&ea);
  ck_assert(all(da, 0x11));
}
END_TEST

/* An urgent copy whose wait is a queued copy's event runs after that copy
 * (which is normal, behind a marker): no overtaking it, and no deadlock. */
START_TEST(urgent_copy_waits_for_a_queued_copy) {
  static unsigned char a[N], b[N], da[N], db[N];
  memset(a, 0x31, N), memset(b, 0x32, N);
  fev gate = {0, 0}, ea = {0, 0}, eb = {0, 0};
  close_gate(&gate);
  copy(da, a, NULL, &ea, 0);
  copy(db, b, &ea, &eb, 1);
  pause_ms(30);
  ck_assert_int_eq(chunks_of(db, NULL, NULL), 0);
  complete(&gate);
  sync_ev(&eb);
  size_t a_last = 0, b_first = 0;
  ck_assert_int_gt(chunks_of(da, NULL, &a_last), 0);
  ck_assert_int_gt(chunks_of(db, &b_first, NULL), 0);
  ck_assert_uint_lt(a_last, b_first);
  ck_assert(all(db, 0x32));
}
END_TEST

/* A copy's wait is the record most recent when it was queued: a later
 * record of the event does not hold it. */
START_TEST(wait_is_taken_when_queued) {
  static unsigned char a[N], da[N];
  memset(a, 0x44, N);
  fev w = {0, 0}, ea = {0, 0};
  record(&w);
  copy(da, a, &w, &ea, 1);
  pause_ms(30);
  ck_assert_int_eq(chunks_of(da, NULL, NULL), 0);
  record(&w); /* a later record, never completed */
  complete(&w);
  sync_ev(&ea);
  ck_assert(all(da, 0x44));
}
END_TEST

/* At most DEPTH chunks are out on the device, and it does get there. */
START_TEST(depth_bounds_the_chunks_out) {
  static unsigned char a[N], da[N], db[N];
  fev ea = {0, 0}, eb = {0, 0};
  D.delay = 2000;
  copy(da, a, NULL, &ea, 0);
  copy(db, a, NULL, &eb, 0);
  sync_all();
  ck_assert_int_eq(D.max_outstanding, DEPTH);
}
END_TEST

/* An event released while a queued copy signals it is freed by the
 * feeder after that copy (the sanitizer build checks the memory). */
START_TEST(released_event_freed_after_its_copy) {
  static unsigned char a[N], da[N];
  fev gate = {0, 0}, *ea = calloc(1, sizeof *ea), *idle = calloc(1, sizeof *idle);
  ck_assert_ptr_nonnull(ea);
  ck_assert_ptr_nonnull(idle);
  close_gate(&gate);
  copy(da, a, NULL, ea, 0);
  ck_assert_int_eq(moe_feed_release_event(F, idle), 0);
  free(idle);
  ck_assert_int_eq(moe_feed_release_event(F, ea), 1);
  ck_assert_int_eq(D.released, 0);
  complete(&gate);
  sync_all();
  ck_assert_int_eq(D.released, 1);
}
END_TEST

/* A device failure reaches every waiter and every later call, with its
 * message; nothing hangs. */
START_TEST(device_failure_is_reported) {
  static unsigned char a[N], da[N], db[N];
  fev ea = {0, 0}, eb = {0, 0};
  D.fail_at = 2;
  copy(da, a, NULL, &ea, 0);
  ck_assert_int_eq(moe_feed_settle(F, &ea, msg, sizeof msg), -1);
  ck_assert_msg(strstr(msg, "copy feeder: emulated copy failure") != NULL, "%s", msg);
  msg[0] = '\0';
  ck_assert_int_eq(moe_feed_copy(F, db, a, N, NULL, &eb, 0, msg, sizeof msg), -1);
  ck_assert_msg(strstr(msg, "emulated copy failure") != NULL, "%s", msg);
  ck_assert_int_eq(moe_feed_settle(F, NULL, msg, sizeof msg), -1);
}
END_TEST

/* Destroying the feeder issues what is queued first. */
START_TEST(destroy_issues_the_queue) {
  static unsigned char a[N], da[N];
  memset(a, 0x66, N);
  fev ea = {0, 0};
  D.delay = 500;
  copy(da, a, NULL, &ea, 0);
  moe_feed_destroy(F);
  F = NULL;
  drain_device();
  ck_assert(all(da, 0x66));
  ck_assert_uint_eq(ea.done, 2);
}
END_TEST

/* A wait on an event whose most recent signalling op is a queued copy is
 * for that copy: an older record of the event, made elsewhere and still
 * pending, does not hold the waiting copy once the queued one is issued. */
START_TEST(a_wait_on_a_queued_copy_is_that_copy) {
  static unsigned char a[N], b[N], da[N], db[N];
  memset(a, 0x71, N), memset(b, 0x72, N);
  fev e = {0, 0}, eb = {0, 0}, gate = {0, 0};
  record(&e);               /* record 1, elsewhere, left pending */
  close_gate(&gate);        /* holds the copy below in the queue */
  copy(da, a, NULL, &e, 0); /* record 2 when issued */
  copy(db, b, &e, &eb, 1);
  complete(&gate);
  ck_assert_msg(moe_feed_settle(F, &eb, msg, sizeof msg) == 0, "%s", msg);
  sync_ev(&eb);
  ck_assert(all(db, 0x72));
  size_t a_last = 0, b_first = 0;
  chunks_of(da, NULL, &a_last);
  chunks_of(db, &b_first, NULL);
  ck_assert_uint_lt(a_last, b_first);
  complete(&e);
}
END_TEST

/* Urgent copies run in the order issued, the first one's wait holding
 * the second. */
START_TEST(urgent_copies_keep_their_order) {
  static unsigned char a[N], da[N], db[N];
  fev w = {0, 0}, ea = {0, 0}, eb = {0, 0};
  record(&w);
  copy(da, a, &w, &ea, 1);
  copy(db, a, NULL, &eb, 1);
  pause_ms(30);
  ck_assert_int_eq(chunks_of(db, NULL, NULL), 0);
  complete(&w);
  sync_all();
  size_t a_last = 0, b_first = 0;
  ck_assert_int_gt(chunks_of(da, NULL, &a_last), 0);
  ck_assert_int_gt(chunks_of(db, &b_first, NULL), 0);
  ck_assert_uint_lt(a_last, b_first);
}
END_TEST

/* A copy cancelled while its wait's capture is pending issues nothing and
 * signals at once; the capture is released (the ASan build checks). */
START_TEST(cancel_with_a_pending_wait) {
  static unsigned char a[N], da[N];
  fev w = {0, 0}, ea = {0, 0};
  record(&w);
  copy(da, a, &w, &ea, 1);
  ck_assert_int_eq(moe_feed_cancel(F, &ea), 1);
  sync_ev(&ea);
  ck_assert_int_eq(chunks_of(da, NULL, NULL), 0);
  complete(&w);
}
END_TEST

/* Lets n more issue calls return (-1: all). */
static void allow_issues(int n) {
  pthread_mutex_lock(&D.mu);
  D.allow = n;
  pthread_cond_broadcast(&D.cv);
  pthread_mutex_unlock(&D.mu);
}

/* Waits until the n-th issue call has begun. */
static void issue_entered(int n) {
  pthread_mutex_lock(&D.mu);
  while (D.entered < n) pthread_cond_wait(&D.cv, &D.mu);
  pthread_mutex_unlock(&D.mu);
}

/* While the device call that issues a chunk blocks (a copy from pageable
 * memory), the queue stays open: a copy can be queued and cancelled.  A
 * cancel during a copy's last chunk drops nothing (0) and its bytes land
 * whole; during an earlier chunk, it drops the rest (1). */
START_TEST(a_blocked_issue_keeps_the_queue_open) {
  static unsigned char a[N], b[CHUNK], da[N], db[CHUNK];
  memset(a, 0x81, N), memset(b, 0x82, CHUNK);
  fev ea = {0, 0}, eb = {0, 0};
  allow_issues(0);
  ck_assert_msg(moe_feed_copy(F, db, b, CHUNK, NULL, &eb, 0, msg, sizeof msg) == 0, "%s", msg);
  issue_entered(1); /* b's only chunk is inside the device call */
  copy(da, a, NULL, &ea, 0);
  ck_assert_int_eq(moe_feed_cancel(F, &eb), 0);
  ck_assert_int_eq(moe_feed_pending(F, &eb), 1);
  allow_issues(1);
  issue_entered(2); /* a's first chunk */
  ck_assert_int_eq(moe_feed_cancel(F, &ea), 1);
  allow_issues(-1);
  sync_ev(&eb);
  sync_ev(&ea);
  ck_assert(memcmp(db, b, CHUNK) == 0);
  ck_assert_int_eq(chunks_of(da, NULL, NULL), 1);
}
END_TEST

/* Each device call's failure (signal, a wait's query, a chunk's mark)
 * reaches a waiter, with its message, and releases what the feeder held:
 * a capture, an event released to it (the ASan build checks). */
START_TEST(every_device_failure_reaches_the_waiter) {
  static unsigned char a[N], da[N], db[N];
  const char *what[3] = {"signal", "query", "mark"};
  for (int k = 0; k < 3; k++) {
    fev w = {0, 0}, *ea = calloc(1, sizeof *ea);
    ck_assert_ptr_nonnull(ea);
    record(&w);
    copy(da, a, &w, ea, 0);
    copy(db, a, &w, NULL, 1);
    ck_assert_int_eq(moe_feed_release_event(F, ea), 1);
    pthread_mutex_lock(&D.mu);
    if (k == 0) D.fail_signal = D.signals + 1;
    if (k == 1) D.fail_query = D.queries + 1;
    if (k == 2) D.fail_mark = D.marks + 1;
    pthread_mutex_unlock(&D.mu);
    complete(&w);
    ck_assert_int_eq(moe_feed_settle(F, NULL, msg, sizeof msg), -1);
    ck_assert_msg(strstr(msg, what[k]) != NULL, "%s: %s", what[k], msg);
    ck_assert_int_eq(moe_feed_pending(F, ea), 0);
    moe_feed_destroy(F);
    drain_device();
    ck_assert_int_eq(D.released, k + 1);
    D.fail_signal = D.fail_query = D.fail_mark = 0;
    ck_assert_int_eq(moe_feed_create(&DEV, &F, msg, sizeof msg), 0);
  }
}
END_TEST

/* A failed thread set-up (cudaSetDevice on cuda) is create's failure. */
START_TEST(thread_init_failure_fails_create) {
  moe_feed_destroy(F);
  F = NULL;
  D.fail_init = 1;
  moe_feed *g = NULL;
  ck_assert_int_eq(moe_feed_create(&DEV, &g, msg, sizeof msg), -1);
  ck_assert_ptr_null(g);
  ck_assert_msg(strstr(msg, "emulated init failure") != NULL, "%s", msg);
}
END_TEST

START_TEST(bad_geometry_is_refused) {
  const moe_feed_dev dev = {NULL, 0, DEPTH, NULL, d_issue, d_mark_wait, d_signal,
                            d_snap, d_snap_query, d_snap_release, d_ev_release};
  moe_feed *g = (moe_feed *)&dev;
  ck_assert_int_eq(moe_feed_create(&dev, &g, msg, sizeof msg), -1);
  ck_assert_ptr_null(g);
  ck_assert_msg(strstr(msg, "chunk 0 bytes") != NULL, "%s", msg);
}
END_TEST

int main(void) {
  Suite *s = suite_create("copy_feed");
  TCase *tc = tcase_create("feeder");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 20);
  tcase_add_test(tc, copies_land_in_chunks);
  tcase_add_test(tc, urgent_copy_overtakes_a_waiting_queue);
  tcase_add_test(tc, cancel_signals_at_once);
  tcase_add_test(tc, urge_moves_a_copy_ahead);
  tcase_add_test(tc, urgent_copy_waits_for_a_queued_copy);
  tcase_add_test(tc, wait_is_taken_when_queued);
  tcase_add_test(tc, depth_bounds_the_chunks_out);
  tcase_add_test(tc, released_event_freed_after_its_copy);
  tcase_add_test(tc, device_failure_is_reported);
  tcase_add_test(tc, destroy_issues_the_queue);
  tcase_add_test(tc, bad_geometry_is_refused);
  tcase_add_test(tc, a_wait_on_a_queued_copy_is_that_copy);
  tcase_add_test(tc, urgent_copies_keep_their_order);
  tcase_add_test(tc, cancel_with_a_pending_wait);
  tcase_add_test(tc, every_device_failure_reaches_the_waiter);
  tcase_add_test(tc, thread_init_failure_fails_create);
  tcase_add_test(tc, a_blocked_issue_keeps_the_queue_open);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
