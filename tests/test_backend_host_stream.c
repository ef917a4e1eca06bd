/* The host stream (backend.h, host_run, since ABI 1.7), held against every
 * compiled-in backend that has one (cpu always, with a capped link too;
 * cuda when a GPU is there): jobs run in the order issued on a thread of
 * the backend's, never the caller's; done_ev orders the compute stream,
 * the copy stream and the host after a job; wait_ev orders a job after a
 * copy; synchronize waits for queued jobs; an event destroyed while jobs
 * still name it, or a backend closed with jobs queued, is safe (ASan
 * builds run this).  The ordering is checked by data and by flags the
 * jobs set, never by measured time.  A modeled backend (sim) runs no job:
 * it charges the job's work on its clock at its profile's host rates, and
 * refuses host_run on a profile without a host section. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moe/backend.h"
#include "moe/cost.h"
#include "moe/device.h"
#include "conformance_util.h"
#include "testutil.h"

enum { BIG = 4 << 20, MAX_JOBS = 32 };

/* What the jobs of one test write: the ids of the jobs that ran, in the
 * order they ran, and the thread each ran on.  File-scope: a failed
 * assertion leaves the test while its jobs may still run, and teardown
 * (which drains the backend) comes before the next test reuses it. */
typedef struct job_log {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int n;
  int ids[MAX_JOBS];
  pthread_t tid[MAX_JOBS];
  int gate_open;      /* a gated job waits for this (5 s at most) */
  int gate_timed_out; /* ... and says here when it gave up */
} job_log;

typedef struct job {
  int id;
  int gated;                /* waits at the gate first */
  int sleep_ms;             /* then sleeps */
  unsigned char *buf;       /* then fills buf[0 .. bytes) with fill */
  size_t bytes;
  unsigned char fill;
  atomic_int *flag;         /* and last sets *flag to 1 */
} job;

static job_log g_log = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, {0}, {0}, 0, 0};
static job g_jobs[MAX_JOBS];
static atomic_int g_flag[4];

static void reset_jobs(void) {
  pthread_mutex_lock(&g_log.mu);
  g_log.n = 0;
  g_log.gate_open = 0;
  g_log.gate_timed_out = 0;
  pthread_mutex_unlock(&g_log.mu);
  memset(g_jobs, 0, sizeof g_jobs);
  for (int i = 0; i < MAX_JOBS; i++) g_jobs[i].id = i;
  for (int i = 0; i < 4; i++) atomic_store(&g_flag[i], 0);
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static void job_fn(void *ctx) {
  const job *j = ctx;
  if (j->gated) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 5;
    pthread_mutex_lock(&g_log.mu);
    while (!g_log.gate_open)
      if (pthread_cond_timedwait(&g_log.cv, &g_log.mu, &until) == ETIMEDOUT) {
        g_log.gate_timed_out = 1;
        break;
      }
    pthread_mutex_unlock(&g_log.mu);
  }
  if (j->sleep_ms > 0) sleep_ms(j->sleep_ms);
  if (j->buf) memset(j->buf, j->fill, j->bytes);
  pthread_mutex_lock(&g_log.mu);
  if (g_log.n < MAX_JOBS) g_log.ids[g_log.n] = j->id, g_log.tid[g_log.n] = pthread_self();
  g_log.n++;
  pthread_mutex_unlock(&g_log.mu);
  if (j->flag) atomic_store(j->flag, 1);
}

static int jobs_run(void) {
  pthread_mutex_lock(&g_log.mu);
  const int n = g_log.n;
  pthread_mutex_unlock(&g_log.mu);
  return n;
}

static void open_gate(void) {
  pthread_mutex_lock(&g_log.mu);
  g_log.gate_open = 1;
  pthread_cond_broadcast(&g_log.cv);
  pthread_mutex_unlock(&g_log.mu);
}

/* Whether the backend has a host stream: the in-tree device backends must
 * (their cases would otherwise pass without testing anything). */
static int host_stream(void) {
  reset_jobs();
  if (OPS->host_run) return 1;
  ck_assert_msg(strcmp(g_backend, "cpu") != 0 && strcmp(g_backend, "cuda") != 0,
                "the %s backend has no host_run (ABI 1.7)", g_backend);
  return 0;
}

#define RUN(j, wait, done) OK(OPS->host_run(BE, job_fn, (j), NULL, (wait), (done), &e_))

static moe_event *event(void) {
  moe_event *ev = NULL;
  OK(OPS->event_create(BE, &ev, &e_));
  return ev;
}

static int all_bytes(const unsigned char *p, size_t n, unsigned char v) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != v) return 0;
  return 1;
}

/* Jobs run in the order issued, on a thread that is not the caller's (so
 * host_run returns at once): the first job waits at a gate the test opens
 * only after issuing them all; run on the caller's thread it would give up
 * after 5 s and say so, run out of order the ids would say so. */
START_TEST(host_jobs_run_in_order_off_the_calling_thread) {
  if (!host_stream()) return;
  enum { N = 16 };
  moe_event *done = event();
  g_jobs[0].gated = 1;
  for (int i = 0; i < N; i++) RUN(&g_jobs[i], NULL, i == N - 1 ? done : NULL);
  ck_assert_int_eq(jobs_run(), 0); /* the first waits at the gate, the rest behind it */
  ck_assert_int_eq(OPS->event_done(BE, done), 0);
  open_gate();
  OK(OPS->event_sync(BE, done, &e_));
  ck_assert_int_eq(OPS->event_done(BE, done), 1);
  ck_assert_int_eq(jobs_run(), N);
  ck_assert_msg(!g_log.gate_timed_out, "host_run ran the job on the calling thread");
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(g_log.ids[i], i);
    ck_assert_msg(!pthread_equal(g_log.tid[i], pthread_self()), "job %d ran on the caller", i);
  }
  OK(OPS->synchronize(BE, &e_));
  OPS->event_destroy(BE, done);
}
END_TEST

/* done_ev orders the other streams and the host after the job: compute
 * (a download after compute_wait returns only once the job has), the copy
 * stream (a copy after copy_wait reads what the job wrote into its pinned
 * source), and the host (event_sync; then upload and download give the
 * job's bytes).  Each job sleeps first, so an order that does not hold
 * shows. */
START_TEST(done_event_orders_compute_copies_and_host) {
  if (!host_stream()) return;
  const size_t n = 1 << 20;
  unsigned char *pinned = NULL, *plain = malloc(n), *back = malloc(n);
  OK(OPS->host_alloc(BE, n, (void **)&pinned, &e_));
  memset(pinned, 0x11, n);
  memset(plain, 0x22, n);
  unsigned char *d = dev_bytes(plain, n);
  moe_event *done = event(), *landed = event();
  /* compute */
  g_jobs[0].sleep_ms = 30;
  g_jobs[0].flag = &g_flag[0];
  RUN(&g_jobs[0], NULL, done);
  OK(OPS->compute_wait(BE, done, &e_));
  unsigned char one;
  down(&one, d, 1); /* after all earlier compute, so after the job */
  ck_assert_msg(atomic_load(&g_flag[0]) == 1, "compute did not wait for the host job");
  /* the copy stream */
  g_jobs[1] = (job){.id = 1, .sleep_ms = 10, .buf = pinned, .bytes = n, .fill = 0x5c};
  RUN(&g_jobs[1], NULL, done);
  OK(OPS->copy_wait(BE, done, &e_));
  OK(OPS->copy_h2d_async(BE, d, pinned, n, landed, &e_));
  OK(OPS->compute_wait(BE, landed, &e_));
  down(back, d, n);
  ck_assert_msg(all_bytes(back, n, 0x5c), "the copy did not wait for the host job");
  /* the host, then upload and download */
  g_jobs[2] = (job){.id = 2, .sleep_ms = 10, .buf = plain, .bytes = n, .fill = 0x7e};
  RUN(&g_jobs[2], NULL, done);
  OK(OPS->event_sync(BE, done, &e_));
  ck_assert_int_eq(OPS->event_done(BE, done), 1);
  ck_assert_msg(all_bytes(plain, n, 0x7e), "event_sync did not wait for the host job");
  OK(OPS->upload(BE, d, plain, n, &e_));
  memset(back, 0, n);
  down(back, d, n);
  ck_assert(all_bytes(back, n, 0x7e));
  ck_assert_int_eq(jobs_run(), 3);
  OK(OPS->synchronize(BE, &e_));
  OPS->event_destroy(BE, done);
  OPS->event_destroy(BE, landed);
  OPS->device_free(BE, d);
  OPS->host_free(BE, pinned);
  free(plain);
  free(back);
}
END_TEST

/* wait_ev orders the job after a copy: the job overwrites the copy's
 * source, which the contract allows once the copy's event is signalled,
 * so the device must hold the source as it was.  Copies queued ahead
 * (slow on a capped link) widen the window a missing wait would show in.
 * A job also waits for a compute record, and for another job's event. */
START_TEST(wait_event_orders_a_job_after_a_copy) {
  if (!host_stream()) return;
  unsigned char *src = NULL, *back = malloc(BIG);
  OK(OPS->host_alloc(BE, BIG, (void **)&src, &e_));
  memset(src, 0xa5, BIG);
  unsigned char *d = dev_bytes(NULL, BIG), *other = dev_bytes(NULL, BIG);
  moe_event *landed = event(), *done = event(), *rec = event();
  for (int i = 0; i < 3; i++) OK(OPS->copy_h2d_async(BE, other, src, BIG, NULL, &e_));
  OK(OPS->copy_h2d_async(BE, d, src, BIG, landed, &e_));
  g_jobs[0] = (job){.id = 0, .buf = src, .bytes = BIG, .fill = 0x00, .flag = &g_flag[0]};
  RUN(&g_jobs[0], landed, done);
  OK(OPS->event_sync(BE, done, &e_));
  ck_assert_msg(atomic_load(&g_flag[0]) == 1, "event_sync did not wait for the job");
  ck_assert(all_bytes(src, BIG, 0x00)); /* the job ran */
  down(back, d, BIG);
  ck_assert_msg(all_bytes(back, BIG, 0xa5), "the job ran before the copy it waits for landed");
  /* a compute record, and another job's event, as wait_ev */
  float *x = dev_f(NULL, 1024);
  OK(OPS->add(BE, x, x, 1024, &e_));
  OK(OPS->compute_record(BE, rec, &e_));
  g_jobs[1].flag = &g_flag[1];
  g_jobs[1].sleep_ms = 10;
  RUN(&g_jobs[1], rec, landed);
  g_jobs[2].flag = &g_flag[2];
  RUN(&g_jobs[2], landed, done);
  OK(OPS->event_sync(BE, done, &e_));
  ck_assert_msg(atomic_load(&g_flag[1]) == 1 && atomic_load(&g_flag[2]) == 1,
                "a job waiting for a compute record or another job's event did not run");
  ck_assert_int_eq(g_log.ids[1], 1);
  ck_assert_int_eq(g_log.ids[2], 2);
  OK(OPS->synchronize(BE, &e_));
  OPS->event_destroy(BE, landed);
  OPS->event_destroy(BE, done);
  OPS->event_destroy(BE, rec);
  OPS->device_free(BE, d);
  OPS->device_free(BE, other);
  OPS->device_free(BE, x);
  OPS->host_free(BE, src);
  free(back);
}
END_TEST

/* synchronize waits for the host stream: a slow job and one queued behind
 * it have both run when it returns. */
START_TEST(synchronize_waits_for_queued_host_jobs) {
  if (!host_stream()) return;
  g_jobs[0].sleep_ms = 50;
  g_jobs[0].flag = &g_flag[0];
  g_jobs[1].flag = &g_flag[1];
  RUN(&g_jobs[0], NULL, NULL);
  RUN(&g_jobs[1], NULL, NULL);
  OK(OPS->synchronize(BE, &e_));
  ck_assert_msg(atomic_load(&g_flag[0]) == 1, "synchronize returned before the slow job ended");
  ck_assert_msg(atomic_load(&g_flag[1]) == 1, "synchronize returned before a queued job ran");
  ck_assert_int_eq(jobs_run(), 2);
}
END_TEST

/* event_destroy of a done_ev (and of a wait_ev) while jobs that name it
 * are queued does not block, and nothing touches freed memory (ASan); a
 * backend closed with jobs queued runs them first. */
START_TEST(events_destroyed_and_backend_closed_with_jobs_queued) {
  if (!host_stream()) return;
  moe_event *ev = event();
  g_jobs[0].gated = 1;
  RUN(&g_jobs[0], NULL, NULL);
  RUN(&g_jobs[1], NULL, ev);
  RUN(&g_jobs[2], ev, ev);
  g_jobs[3].flag = &g_flag[0];
  RUN(&g_jobs[3], ev, NULL);
  OPS->event_destroy(BE, ev); /* three queued jobs still name it */
  ck_assert_int_eq(jobs_run(), 0);
  open_gate();
  OK(OPS->synchronize(BE, &e_));
  ck_assert_int_eq(jobs_run(), 4);
  ck_assert_msg(atomic_load(&g_flag[0]) == 1, "a job waiting for a destroyed event did not run");
  ck_assert(!g_log.gate_timed_out);
  /* a whole instance goes while its jobs are queued: destroy itself (not
   * moe_device_close, which synchronizes first) */
  moe_backend *other = NULL;
  moe_backend_options o = {.link_gbps = g_link, .threads = g_threads};
  OK(OPS->create(&o, &other, &e_));
  moe_event *ev2 = NULL;
  OK(OPS->event_create(other, &ev2, &e_));
  g_jobs[4].sleep_ms = 20;
  g_jobs[5].flag = &g_flag[1];
  OK(OPS->host_run(other, job_fn, &g_jobs[4], NULL, NULL, ev2, &e_));
  OK(OPS->host_run(other, job_fn, &g_jobs[5], NULL, ev2, NULL, &e_));
  OPS->event_destroy(other, ev2);
  OPS->destroy(other); /* waits for the jobs, then frees */
  ck_assert_msg(atomic_load(&g_flag[1]) == 1, "destroy returned before its queued jobs ran");
  ck_assert_int_eq(jobs_run(), 6);
}
END_TEST

/* ---- a modeled backend: no job runs; its work takes the profile's host
 * time on the host stream of the modeled clock. */

/* The sim must have a host stream; another modeled backend may not. */
static int modeled_host_stream(void) {
  if (OPS->host_run) return 1;
  ck_assert_msg(strcmp(g_backend, "sim") != 0, "the sim backend has no host_run (ABI 1.7)");
  return 0;
}

START_TEST(modeled_host_jobs_take_the_profiles_host_time) {
  if (!modeled_host_stream()) return;
  moe_hw_profile p;
  OK(moe_hw_profile_load(&p, g_hardware, &e_));
  ck_assert_msg(p.host_memory_gbps > 0, "%s: the test needs a profile with a host section",
                g_hardware);
  const moe_host_work w = {.flops = 4e9, .bytes = 3e9, .dtype = MOE_BF16};
  const double secs = moe_cost_host_work(&p, &w);
  ck_assert(isfinite(secs) && secs > 0);
  moe_event *done = event(), *landed = event();
  OK(OPS->synchronize(BE, &e_));
  const double t0 = CLOCK();
  /* issuing takes no compute time; two jobs run one after the other; fn
   * is never called (NULL here) */
  OK(OPS->host_run(BE, NULL, NULL, &w, NULL, done, &e_));
  ck_assert(CLOCK() == t0);
  ck_assert_int_eq(OPS->event_done(BE, done), 0);
  OK(OPS->host_run(BE, NULL, NULL, &w, NULL, NULL, &e_));
  OK(OPS->synchronize(BE, &e_));
  ck_assert_double_eq_tol(CLOCK() - t0, 2 * secs, 1e-9 * secs);
  ck_assert_int_eq(OPS->event_done(BE, done), 1);
  /* compute waiting for a job's event stalls until the job ends */
  const double t1 = CLOCK(), s1 = OPS->stall_seconds(BE);
  OK(OPS->host_run(BE, NULL, NULL, &w, NULL, done, &e_));
  OK(OPS->compute_wait(BE, done, &e_));
  ck_assert_double_eq_tol(CLOCK() - t1, secs, 1e-9 * secs);
  ck_assert_double_eq_tol(OPS->stall_seconds(BE) - s1, secs, 1e-9 * secs);
  /* a job waiting for a copy starts when the copy ends (the first copy:
   * the link is idle, the copy takes its full time) */
  void *dst = dev_bytes(NULL, BIG), *src = NULL;
  OK(OPS->host_alloc(BE, BIG, &src, &e_));
  const double t2 = CLOCK(), copy = moe_cost_copy(&p, BIG, true);
  OK(OPS->copy_h2d_async(BE, dst, src, BIG, landed, &e_));
  OK(OPS->host_run(BE, NULL, NULL, &w, landed, done, &e_));
  OK(OPS->event_sync(BE, done, &e_));
  ck_assert_double_eq_tol(CLOCK() - t2, copy + secs, 1e-9 * (copy + secs));
  /* a job's work is required */
  moe_error err = {0};
  ck_assert_int_eq(OPS->host_run(BE, NULL, NULL, NULL, NULL, NULL, &err), MOE_ERR_INVALID);
  OPS->event_destroy(BE, done);
  OPS->event_destroy(BE, landed);
  OPS->device_free(BE, dst);
  OPS->host_free(BE, src);
}
END_TEST

/* A profile without a host section: host_run is refused, naming it. */
START_TEST(modeled_host_run_needs_a_host_section) {
  if (!modeled_host_stream()) return;
  const char *path = MOE_SOURCE_DIR "/workloads/hardware/h100-pcie5.json";
  moe_hw_profile p;
  OK(moe_hw_profile_load(&p, path, &e_));
  ck_assert_msg(!(p.host_memory_gbps > 0), "%s has a host section now: pick another profile", path);
  moe_device other;
  moe_backend_options o = {.hardware = path};
  OK(moe_device_open(&other, g_backend, &o, &e_));
  const moe_host_work w = {.flops = 1e6, .bytes = 1e6, .dtype = MOE_F32};
  moe_error err = {0};
  const double t0 = other.ops->modeled_seconds(other.be);
  ck_assert_int_eq(other.ops->host_run(other.be, NULL, NULL, &w, NULL, NULL, &err),
                   MOE_ERR_UNSUPPORTED);
  ck_assert_msg(strstr(err.msg, p.name) && strstr(err.msg, "no host section"), "%s", err.msg);
  OK(other.ops->synchronize(other.be, &e_));
  ck_assert(other.ops->modeled_seconds(other.be) == t0); /* nothing was charged */
  moe_device_close(&other);
}
END_TEST

static void add_modeled(TCase *tc) {
  tcase_add_test(tc, modeled_host_jobs_take_the_profiles_host_time);
  tcase_add_test(tc, modeled_host_run_needs_a_host_section);
}

static void add_device(TCase *tc) {
  tcase_add_test(tc, host_jobs_run_in_order_off_the_calling_thread);
  tcase_add_test(tc, done_event_orders_compute_copies_and_host);
  tcase_add_test(tc, wait_event_orders_a_job_after_a_copy);
  tcase_add_test(tc, synchronize_waits_for_queued_host_jobs);
  tcase_add_test(tc, events_destroyed_and_backend_closed_with_jobs_queued);
}

int main(void) {
  const conformance_cases cases = {NULL, add_modeled, add_device};
  return conformance_main(&cases);
}
