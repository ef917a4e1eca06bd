/* Overtakable copies (backend.h, copy_chunk / copy_h2d_ex / copy_cancel /
 * copy_urge, since ABI 1.8), held against every compiled-in backend that
 * has them (cpu must; cpu again with a capped link).  Ordering is shown by
 * data, never by time: the normal copies are held behind a copy_wait on a
 * host job that does not return until the case opens it, so whatever
 * lands while it is closed has overtaken them. */
#include <check.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moe/backend.h"
#include "conformance_util.h"
#include "testutil.h"

enum { N = 3 << 20 }; /* bytes: several chunks */

/* The gate: a host job that returns once opened (or after 20 s, so a
 * failed case cannot hang the suite), after writing `after` into `src`
 * when set (what a copy waiting for it must see). */
static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int open, returned;
  unsigned char *src, after;
} g_gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, NULL, 0};

static void gate_job(void *ctx) {
  (void)ctx;
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 20;
  pthread_mutex_lock(&g_gate.mu);
  while (!g_gate.open)
    if (pthread_cond_timedwait(&g_gate.cv, &g_gate.mu, &until) != 0) break;
  if (g_gate.src) memset(g_gate.src, g_gate.after, N);
  g_gate.returned = 1;
  pthread_mutex_unlock(&g_gate.mu);
}

static void open_gate(void) {
  pthread_mutex_lock(&g_gate.mu);
  g_gate.open = 1;
  pthread_cond_broadcast(&g_gate.cv);
  pthread_mutex_unlock(&g_gate.mu);
}

static moe_event *event(void) {
  moe_event *ev = NULL;
  OK(OPS->event_create(BE, &ev, &e_));
  return ev;
}

/* Whether the backend has overtakable copies: all four methods or none,
 * and the cpu backend must (its cases would otherwise pass untested).
 * With them, a closed gate (whose done event is returned) and one normal
 * copy_wait on it, so normal copies issued next wait for open_gate. */
static moe_event *urgent_setup(void) {
  const int n = (OPS->copy_chunk != NULL) + (OPS->copy_h2d_ex != NULL) +
                (OPS->copy_cancel != NULL) + (OPS->copy_urge != NULL);
  ck_assert_msg(n == 0 || n == 4, "%s: %d of the 4 methods", g_backend, n);
  if (n == 0) {
    ck_assert_msg(strcmp(g_backend, "cpu") != 0, "the cpu backend has no copy_h2d_ex (ABI 1.8)");
    return NULL;
  }
  ck_assert_msg(OPS->host_run != NULL, "%s: these cases need host_run for their gate", g_backend);
  const size_t chunk = OPS->copy_chunk(BE);
  if (chunk == 0) { /* this instance does not overtake (cuda without MOE_CUDA_OVERTAKE=1) */
    ck_assert_msg(strcmp(g_backend, "cpu") != 0, "the cpu backend's copy_chunk is 0");
    ck_assert_int_eq(OPS->copy_urge(BE, NULL), 0);
    return NULL;
  }
  ck_assert_msg(chunk <= N / 3, "%s: chunk %zu bytes", g_backend, chunk);
  g_gate.open = g_gate.returned = 0;
  g_gate.src = NULL;
  moe_event *gate = event();
  OK(OPS->host_run(BE, gate_job, NULL, NULL, NULL, gate, &e_));
  OK(OPS->copy_wait(BE, gate, &e_));
  return gate;
}

static unsigned char *host_pattern(unsigned char v) {
  unsigned char *p = NULL;
  OK(OPS->host_alloc(BE, N, (void **)&p, &e_));
  memset(p, v, N);
  return p;
}

static int device_is(const void *d, unsigned char v) {
  unsigned char *back = malloc(N);
  down(back, d, N);
  int ok = 1;
  for (size_t i = 0; i < N && ok; i++) ok = back[i] == v;
  free(back);
  return ok;
}

/* Two copies' worth: host sources of bytes va and vb, device targets,
 * their events; and the gate's event, closed behind with all of them. */
typedef struct two_copies {
  unsigned char *a, *b;
  void *d1, *d2;
  moe_event *e1, *e2, *gate;
} two_copies;

static two_copies two_open(moe_event *gate, unsigned char va, unsigned char vb) {
  return (two_copies){host_pattern(va), host_pattern(vb), dev_bytes(NULL, N), dev_bytes(NULL, N),
                      event(), event(), gate};
}

static void two_close(two_copies *t) {
  OK(OPS->synchronize(BE, &e_));
  OPS->event_destroy(BE, t->e1);
  OPS->event_destroy(BE, t->e2);
  OPS->event_destroy(BE, t->gate);
  OPS->device_free(BE, t->d1);
  OPS->device_free(BE, t->d2);
  OPS->host_free(BE, t->a);
  OPS->host_free(BE, t->b);
}

/* An urgent copy lands while the normal copies queued before it still
 * wait; they land afterwards, in their order. */
START_TEST(urgent_copy_overtakes_queued_normal_ones) {
  moe_event *gate = urgent_setup();
  if (gate == NULL) return;
  two_copies t = two_open(gate, 0xa1, 0xb2);
  OK(OPS->copy_h2d_ex(BE, t.d1, t.a, N, NULL, t.e1, 0, &e_)); /* normal: behind the gate */
  OK(OPS->copy_h2d_ex(BE, t.d2, t.b, N, NULL, t.e2, 1, &e_)); /* urgent */
  OK(OPS->event_sync(BE, t.e2, &e_));
  ck_assert_int_eq(OPS->event_done(BE, t.e1), 0);
  ck_assert(device_is(t.d2, 0xb2));
  open_gate();
  OK(OPS->event_sync(BE, t.e1, &e_));
  ck_assert(device_is(t.d1, 0xa1));
  two_close(&t);
}
END_TEST

/* copy_urge moves a queued normal copy ahead of the others (and of their
 * copy_wait); 0 for an event with no copy pending. */
START_TEST(urge_moves_a_queued_copy_ahead) {
  moe_event *gate = urgent_setup();
  if (gate == NULL) return;
  two_copies t = two_open(gate, 0x11, 0x22);
  moe_event *idle = event();
  OK(OPS->copy_h2d_async(BE, t.d1, t.a, N, t.e1, &e_));
  OK(OPS->copy_h2d_async(BE, t.d2, t.b, N, t.e2, &e_));
  ck_assert_int_eq(OPS->copy_urge(BE, idle), 0);
  ck_assert_int_eq(OPS->copy_urge(BE, t.e2), 1);
  OK(OPS->event_sync(BE, t.e2, &e_));
  ck_assert(device_is(t.d2, 0x22));
  ck_assert_int_eq(OPS->event_done(BE, t.e1), 0);
  open_gate();
  OK(OPS->event_sync(BE, t.e1, &e_));
  ck_assert(device_is(t.d1, 0x11));
  ck_assert_int_eq(OPS->copy_urge(BE, t.e1), 0); /* done: nothing pending */
  OPS->event_destroy(BE, idle);
  two_close(&t);
}
END_TEST

/* A cancelled copy that had not started moves nothing, and its event is
 * still signalled; a finished one cannot be cancelled (0) and its bytes
 * stay. */
START_TEST(cancel_drops_what_has_not_moved) {
  moe_event *gate = urgent_setup();
  if (gate == NULL) return;
  unsigned char *a = host_pattern(0x5a), *z = host_pattern(0x00);
  void *d = dev_bytes(z, N);
  moe_event *ev = event();
  OK(OPS->copy_h2d_ex(BE, d, a, N, NULL, ev, 0, &e_));
  ck_assert_int_eq(OPS->copy_cancel(BE, ev), 1);
  ck_assert_int_eq(OPS->copy_cancel(BE, ev), 0); /* already cancelled: nothing left */
  /* signalled at once, not when the gate's copy_wait lets the queue on */
  OK(OPS->event_sync(BE, ev, &e_));
  pthread_mutex_lock(&g_gate.mu);
  const int gate_returned = g_gate.returned;
  pthread_mutex_unlock(&g_gate.mu);
  ck_assert_msg(!gate_returned, "a cancelled copy's event waited for the copies before it");
  open_gate();
  OK(OPS->synchronize(BE, &e_));
  ck_assert(device_is(d, 0x00));
  OK(OPS->copy_h2d_ex(BE, d, a, N, NULL, ev, 1, &e_));
  OK(OPS->event_sync(BE, ev, &e_));
  ck_assert_int_eq(OPS->copy_cancel(BE, ev), 0);
  ck_assert(device_is(d, 0x5a));
  OPS->event_destroy(BE, ev);
  OPS->event_destroy(BE, gate);
  OPS->device_free(BE, d);
  OPS->host_free(BE, a);
  OPS->host_free(BE, z);
}
END_TEST

/* An urgent copy keeps its own wait: issued after a job that rewrites its
 * source, with the job's event as its wait, it copies the new bytes. */
START_TEST(urgent_copy_waits_for_its_event) {
  moe_event *gate = urgent_setup();
  if (gate == NULL) return;
  unsigned char *src = host_pattern(0x01);
  g_gate.src = src;
  g_gate.after = 0x02;
  void *d = dev_bytes(NULL, N);
  moe_event *ev = event();
  OK(OPS->copy_h2d_ex(BE, d, src, N, gate, ev, 1, &e_));
  ck_assert_int_eq(OPS->event_done(BE, ev), 0);
  open_gate();
  OK(OPS->event_sync(BE, ev, &e_));
  ck_assert(device_is(d, 0x02));
  OK(OPS->synchronize(BE, &e_));
  g_gate.src = NULL;
  OPS->event_destroy(BE, ev);
  OPS->event_destroy(BE, gate);
  OPS->device_free(BE, d);
  OPS->host_free(BE, src);
}
END_TEST

/* Whether ev is done within 10 s (polled: a deadlocked copy stream must
 * fail the case, not hang it). */
static int done_soon(moe_event *ev) {
  for (int i = 0; i < 10000; i++) {
    if (OPS->event_done(BE, ev)) return 1;
    struct timespec ms = {0, 1000000};
    nanosleep(&ms, NULL);
  }
  return 0;
}

/* An urgent copy whose wait is a queued normal copy's event runs after
 * that copy: it may not overtake it, and the copy stream may not stall
 * on it either (it did: the urgent copy was taken first and waited for a
 * copy queued behind it).  Both write one destination, so the bytes show
 * the order. */
START_TEST(urgent_copy_waiting_on_a_queued_copy) {
  moe_event *gate = urgent_setup();
  if (gate == NULL) return;
  two_copies t = two_open(gate, 0x61, 0x62);
  OK(OPS->copy_h2d_ex(BE, t.d1, t.a, N, NULL, t.e1, 0, &e_)); /* normal: behind the gate */
  OK(OPS->copy_h2d_ex(BE, t.d1, t.b, N, t.e1, t.e2, 1, &e_)); /* urgent, after it */
  ck_assert_int_eq(OPS->event_done(BE, t.e2), 0);
  open_gate();
  ck_assert_msg(done_soon(t.e2), "%s: the urgent copy never ran", g_backend);
  OK(OPS->event_sync(BE, t.e1, &e_));
  ck_assert_msg(device_is(t.d1, 0x62), "%s: the urgent copy ran before its wait", g_backend);
  two_close(&t);
}
END_TEST

/* Closing the backend with cancelled and urgent copies queued, their
 * events destroyed first: nothing leaks or hangs (the sanitizer build
 * checks the memory). */
START_TEST(close_with_cancelled_copies_queued) {
  moe_event *gate = urgent_setup();
  if (gate == NULL) return;
  unsigned char *a = host_pattern(0x33);
  void *d = dev_bytes(NULL, N);
  moe_event *ev[4];
  for (int i = 0; i < 4; i++) {
    ev[i] = event();
    OK(OPS->copy_h2d_ex(BE, d, a, N, NULL, ev[i], i % 2, &e_));
  }
  ck_assert_int_eq(OPS->copy_cancel(BE, ev[0]), 1);
  for (int i = 0; i < 4; i++) OPS->event_destroy(BE, ev[i]);
  OPS->event_destroy(BE, gate);
  open_gate();
  OPS->device_free(BE, d); /* drains the streams first */
  OPS->host_free(BE, a);
}
END_TEST

static void add_device(TCase *tc) {
  tcase_add_test(tc, urgent_copy_overtakes_queued_normal_ones);
  tcase_add_test(tc, urge_moves_a_queued_copy_ahead);
  tcase_add_test(tc, cancel_drops_what_has_not_moved);
  tcase_add_test(tc, urgent_copy_waits_for_its_event);
  tcase_add_test(tc, urgent_copy_waiting_on_a_queued_copy);
  tcase_add_test(tc, close_with_cancelled_copies_queued);
}

int main(void) {
  const conformance_cases cases = {NULL, NULL, add_device};
  return conformance_main(&cases);
}
