/* The cpu backend: the reference every other backend is checked against,
 * and an honest emulation of an offloading device.
 *
 * Math: gemm through cblas (OpenBLAS, one thread by default so the copy
 * thread can have the other core); everything else plain C, issued on the
 * calling thread (the compute stream is synchronous).
 * Memory: "device" memory is a separate arena of host allocations, counted
 * against the budget by the engine's allocator front; expert weights stay in
 * the model's host slab.
 * Copies: host-to-device copies are real memcpys done in order by one copy
 * thread, which signals each copy's event when its last byte has landed.
 * With a link cap (link_gbps) the thread paces itself so the copy rate never
 * exceeds the cap, emulating PCIe.  compute_wait blocks the compute thread
 * until the event is signalled, so copy/compute overlap is real wall-clock
 * overlap. */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "moe/clock.h"
#include "moe/backend.h"
#include "moe/model.h"
#include "cpu_half.h"

typedef struct copy_req {
  void *dst;
  const void *src;
  size_t bytes;
  moe_event *ev;      /* signalled when done (may be NULL) */
  moe_event *wait_ev; /* a copy_wait marker: wait for this event, copy nothing */
  unsigned long wait_target; /* ... until its completed count reaches this */
} copy_req;

/* A pool of math threads (threads - 1 workers and the caller): one job at
 * a time, split into tasks taken in turn.  The copy thread is separate.
 * Between jobs a worker first spins for POOL_SPIN_S (a decode step's
 * products come back to back, tens of microseconds apart, and a sleeping
 * thread takes about as long to wake), then sleeps on the condition
 * variable; the caller spins the same while waiting for the workers. */
#define POOL_SPIN_S 100e-6
#if defined(__SSE2__)
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif
typedef struct pool {
  pthread_t *tid;
  int n_workers, started;
  pthread_mutex_t mu;
  pthread_cond_t go, done;
  _Atomic unsigned long gen;
  _Atomic int stop, busy;
  int sleepers; /* workers waiting on go (under mu) */
  void (*fn)(void *ctx, int task);
  void *ctx;
  int tasks, next;
} pool;

/* A math task's own buffers (gemm_task): 16-bit weights converted to
 * f32, and the transposed output of the small-m product. */
typedef struct task_buf {
  float *conv, *tbuf, *sc; /* sc: attention scores */
  size_t conv_cap, tbuf_cap, sc_cap;
} task_buf;

struct moe_backend {
  int threads;
  pool pool;
  moe_cpu_half_path half; /* f16/bf16 product path */
  double link_bps;    /* 0: uncapped */
  pthread_t copier;
  int copier_started;
  pthread_mutex_t mu;
  pthread_cond_t cv;  /* queue changes and event completions */
  copy_req *queue;    /* ring buffer */
  size_t q_cap, q_head, q_len;
  int busy;           /* the copier is working on a popped request */
  int stop;
  float *scratch; /* f32 conversion / attention scores; grown on demand */
  size_t scratch_cap;
  task_buf *tb;   /* per task of a row-split product: [threads] */
  void (*observer)(void *ctx, size_t bytes, double t0, double t1); /* copy observer */
  void *observer_ctx;
  char desc[160];
  char device[160]; /* "cpu: <model name>" */
  /* fault injection (MOE_CPU_FAULT=KIND:N): the Nth call of that kind on
   * this instance fails as a device error would */
  int fault_kind;   /* 0 none, 1 device_alloc, 2 copy_h2d_async, 3 event_create */
  unsigned long fault_n, calls[4];
};

/* Counts a call of kind k; true when it is the one to fail. */
static bool fault_now(moe_backend *be, int k) {
  return be->fault_kind == k && ++be->calls[k] == be->fault_n;
}

/* MOE_CPU_FAULT=alloc:N | copy:N | event:N (tests: every failure path ends
 * in an error result, with nothing leaked and no file left half written). */
static moe_status parse_fault(moe_backend *be, moe_error *err) {
  const char *f = getenv("MOE_CPU_FAULT");
  if (f == NULL || *f == '\0') return MOE_OK;
  static const char *kinds[] = {"", "alloc:", "copy:", "event:"};
  for (int k = 1; k < 4; k++) {
    size_t n = strlen(kinds[k]);
    if (strncmp(f, kinds[k], n) != 0) continue;
    /* digits only: strtoul would take " 5", "+5" and wrap "-1" */
    const char *d = f + n;
    if (*d == '\0' || strspn(d, "0123456789") != strlen(d) || strlen(d) > 9) break;
    char *end;
    unsigned long v = strtoul(d, &end, 10);
    if (*end != '\0' || v == 0) break;
    be->fault_kind = k;
    be->fault_n = v;
    return MOE_OK;
  }
  return MOE_FAIL(err, MOE_ERR_INVALID,
                  "MOE_CPU_FAULT='%s': expected alloc:N, copy:N or event:N with N >= 1", f);
}

/* Copies tagged with an event are counted when queued and when done; a wait
 * is for the copies queued before it (like a CUDA event's latest record).
 * refs counts queued requests that name the event; a destroyed event with
 * refs left is freed by the copy thread when the last one is done.
 * Guarded by be->mu. */
struct moe_event {
  unsigned long issued;
  unsigned long completed;
  unsigned long refs;
  int destroyed;
};

/* Drops one queued request's reference; frees a destroyed event with none
 * left.  Called with be->mu held. */
static void event_unref(moe_event *ev) {
  if (ev && --ev->refs == 0 && ev->destroyed) free(ev);
}

#define CPU_ALIGN 64
/* Allocations of at least this many bytes are aligned to it, rounded up to
 * a multiple of it, and offered to the kernel's transparent huge pages
 * (madvise; nothing changes where THP is off): a decode reads each weight
 * row as its own stream, a 4 KiB page per f32 row of 1024, and with 4 KiB
 * pages every row costs a TLB miss.  Measured here (512 MiB of f32
 * weights, the fused kernel, paired runs): 14.0 -> 15.2 GB/s at one
 * thread, 17.7 -> 19.1 at two. */
#define CPU_HUGE ((size_t)2 << 20)
#define CPU_SMALL_M 64      /* up to this many rows of x, use the W . x^T form */

static moe_status scratch_reserve(moe_backend *be, size_t n, moe_error *err) {
  if (n <= be->scratch_cap) return MOE_OK;
  float *p = realloc(be->scratch, n * sizeof(float));
  if (p == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "cpu backend: scratch of %zu floats failed", n);
  be->scratch = p;
  be->scratch_cap = n;
  return MOE_OK;
}

static void sleep_until(double t) {
  double d = t - moe_clock_s();
  if (d <= 0) return;
  struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

#define COPY_CHUNK ((size_t)1 << 20) /* pacing granularity of a capped link */

/* The emulated link writes "device" memory with streaming stores where the
 * CPU has them: a DMA engine does not pull the destination into the cache,
 * and an ordinary memcpy would (reading every destination line before
 * writing it), stealing a third more memory bandwidth from compute than a
 * real copy engine does. */
static void link_copy(void *dst, const void *src, size_t n) {
#if defined(__SSE2__)
  if ((((uintptr_t)dst | (uintptr_t)src) & 15) == 0) {
    __m128i *d = dst;
    const __m128i *s = src;
    size_t blocks = n / 64;
    for (size_t i = 0; i < blocks; i++, d += 4, s += 4) {
      __m128i a = _mm_load_si128(s), b = _mm_load_si128(s + 1), c = _mm_load_si128(s + 2),
              e = _mm_load_si128(s + 3);
      _mm_stream_si128(d, a);
      _mm_stream_si128(d + 1, b);
      _mm_stream_si128(d + 2, c);
      _mm_stream_si128(d + 3, e);
    }
    _mm_sfence();
    size_t done = blocks * 64;
    if (done < n) memcpy((char *)dst + done, (const char *)src + done, n - done);
    return;
  }
#endif
  memcpy(dst, src, n);
}

static void *copier_main(void *arg) {
  moe_backend *be = arg;
  pthread_mutex_lock(&be->mu);
  for (;;) {
    while (be->q_len == 0 && !be->stop) pthread_cond_wait(&be->cv, &be->mu);
    if (be->q_len == 0 && be->stop) break;
    copy_req r = be->queue[be->q_head];
    be->q_head = (be->q_head + 1) % be->q_cap;
    be->q_len--;
    be->busy = 1;
    if (r.wait_ev) {
      while (r.wait_ev->completed < r.wait_target) pthread_cond_wait(&be->cv, &be->mu);
    } else {
      void (*obs)(void *, size_t, double, double) = be->observer;
      void *obs_ctx = be->observer_ctx;
      pthread_mutex_unlock(&be->mu);
      double start = moe_clock_s();
      for (size_t off = 0; off < r.bytes; off += COPY_CHUNK) {
        size_t c = r.bytes - off < COPY_CHUNK ? r.bytes - off : COPY_CHUNK;
        link_copy((char *)r.dst + off, (const char *)r.src + off, c);
        if (be->link_bps > 0) sleep_until(start + (double)(off + c) / be->link_bps);
      }
      if (obs) obs(obs_ctx, r.bytes, start, moe_clock_s());
      pthread_mutex_lock(&be->mu);
    }
    if (r.ev) r.ev->completed++;
    event_unref(r.ev);
    event_unref(r.wait_ev);
    be->busy = 0;
    pthread_cond_broadcast(&be->cv);
  }
  pthread_mutex_unlock(&be->mu);
  return NULL;
}

static void *pool_main(void *arg) {
  pool *p = arg;
  unsigned long seen = 0;
  for (;;) {
    const double t0 = moe_clock_s();
    while (atomic_load(&p->gen) == seen && !atomic_load(&p->stop) && moe_clock_s() - t0 < POOL_SPIN_S)
      cpu_relax();
    pthread_mutex_lock(&p->mu);
    while (atomic_load(&p->gen) == seen && !atomic_load(&p->stop)) {
      p->sleepers++;
      pthread_cond_wait(&p->go, &p->mu);
      p->sleepers--;
    }
    if (atomic_load(&p->stop)) break;
    seen = atomic_load(&p->gen);
    while (p->next < p->tasks) {
      int t = p->next++;
      pthread_mutex_unlock(&p->mu);
      p->fn(p->ctx, t);
      pthread_mutex_lock(&p->mu);
    }
    if (atomic_fetch_sub(&p->busy, 1) == 1) pthread_cond_broadcast(&p->done);
    pthread_mutex_unlock(&p->mu);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

static int pool_start(pool *p, int workers) {
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->go, NULL);
  pthread_cond_init(&p->done, NULL);
  if (workers <= 0) return 0;
  p->tid = calloc((size_t)workers, sizeof *p->tid);
  if (p->tid == NULL) return -1;
  for (int i = 0; i < workers; i++) {
    if (pthread_create(&p->tid[i], NULL, pool_main, p) != 0) return -1;
    p->started++;
  }
  p->n_workers = workers;
  return 0;
}

static void pool_stop(pool *p) {
  pthread_mutex_lock(&p->mu);
  atomic_store(&p->stop, 1);
  pthread_cond_broadcast(&p->go);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->started; i++) pthread_join(p->tid[i], NULL);
  free(p->tid);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->go);
  pthread_cond_destroy(&p->done);
}

/* Runs fn(ctx, 0 .. tasks - 1) on the pool and the calling thread; returns
 * when all are done. */
static void pool_run(pool *p, void (*fn)(void *, int), void *ctx, int tasks) {
  if (p->n_workers == 0 || tasks <= 1) {
    for (int t = 0; t < tasks; t++) fn(ctx, t);
    return;
  }
  pthread_mutex_lock(&p->mu);
  p->fn = fn;
  p->ctx = ctx;
  p->tasks = tasks;
  p->next = 0;
  atomic_store(&p->busy, p->n_workers);
  atomic_fetch_add(&p->gen, 1);
  if (p->sleepers > 0) pthread_cond_broadcast(&p->go);
  while (p->next < p->tasks) {
    int t = p->next++;
    pthread_mutex_unlock(&p->mu);
    fn(ctx, t);
    pthread_mutex_lock(&p->mu);
  }
  pthread_mutex_unlock(&p->mu);
  const double t0 = moe_clock_s();
  while (atomic_load(&p->busy) > 0 && moe_clock_s() - t0 < POOL_SPIN_S) cpu_relax();
  pthread_mutex_lock(&p->mu);
  while (atomic_load(&p->busy) > 0) pthread_cond_wait(&p->done, &p->mu);
  pthread_mutex_unlock(&p->mu);
}

static void cpu_destroy(moe_backend *be);

/* "cpu: " and the processor's model name from /proc/cpuinfo (or the
 * machine type), for result rows. */
static void cpu_model_name(char *buf, size_t cap) {
  snprintf(buf, cap, "cpu");
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (f == NULL) return;
  char line[256];
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "model name", 10) != 0) continue;
    const char *v = strchr(line, ':');
    if (v == NULL) break;
    v++;
    while (*v == ' ' || *v == '\t') v++;
    size_t n = strcspn(v, "\n");
    snprintf(buf, cap, "cpu: %.*s", (int)n, v);
    break;
  }
  fclose(f);
}

static moe_status cpu_create(const moe_backend_options *opt, moe_backend **out, moe_error *err) {
  moe_backend *be = calloc(1, sizeof *be);
  if (be == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "cpu backend: out of host memory");
  be->threads = opt && opt->threads > 0 ? opt->threads : 1;
  if (parse_fault(be, err) != MOE_OK) return free(be), MOE_ERR_INVALID;
  /* MOE_CPU_HALF=portable|avx2 forces a product path (tests, benchmarks) */
  be->half = moe_cpu_half_best();
  const char *hp = getenv("MOE_CPU_HALF");
  if (hp && *hp) {
    moe_cpu_half_path want = strcmp(hp, "portable") == 0 ? MOE_CPU_HALF_PORTABLE
                             : strcmp(hp, "avx2") == 0   ? MOE_CPU_HALF_AVX2
                                                         : (moe_cpu_half_path)-1;
    if ((int)want < 0 || !moe_cpu_half_supported(want)) {
      moe_status bad = MOE_FAIL(err, MOE_ERR_INVALID,
                                "MOE_CPU_HALF='%s': expected portable or avx2 (this CPU: best %s)",
                                hp, moe_cpu_half_path_name(be->half));
      free(be);
      return bad;
    }
    be->half = want;
  }
  if (opt && opt->link_gbps != 0 &&
      !(opt->link_gbps >= MOE_LINK_GBPS_MIN && opt->link_gbps <= MOE_LINK_GBPS_MAX))
    return free(be), MOE_FAIL(err, MOE_ERR_INVALID,
                              "link cap %g GB/s cannot be emulated: give 0 (uncapped) or %g..%g GB/s",
                              opt->link_gbps, MOE_LINK_GBPS_MIN, MOE_LINK_GBPS_MAX);
  be->link_bps = opt ? opt->link_gbps * 1e9 : 0.0;
  /* OpenBLAS single-threaded: the backend's own threads split every
   * product (OpenBLAS's idle workers would otherwise spin on the cores
   * the conversion and fused products need) */
  openblas_set_num_threads(1);
  be->tb = calloc((size_t)be->threads, sizeof *be->tb);
  if (be->tb == NULL) return free(be), MOE_FAIL(err, MOE_ERR_OOM, "cpu backend: out of host memory");
  pthread_mutex_init(&be->mu, NULL);
  pthread_cond_init(&be->cv, NULL);
  be->q_cap = 64;
  be->queue = malloc(be->q_cap * sizeof *be->queue);
  if (pool_start(&be->pool, be->threads - 1) != 0) {
    cpu_destroy(be);
    return MOE_FAIL(err, MOE_ERR_OOM, "cpu backend: cannot start %d math threads", be->threads);
  }
  if (be->queue == NULL || pthread_create(&be->copier, NULL, copier_main, be) != 0) {
    cpu_destroy(be);
    return MOE_FAIL(err, MOE_ERR_OOM, "cpu backend: cannot start the copy thread");
  }
  be->copier_started = 1;
  cpu_model_name(be->device, sizeof be->device);
  if (be->link_bps > 0)
    snprintf(be->desc, sizeof be->desc, "cpu (OpenBLAS, %d thread%s, 16-bit %s; copy link capped at %.2f GB/s)",
             be->threads, be->threads == 1 ? "" : "s", moe_cpu_half_path_name(be->half),
             be->link_bps * 1e-9);
  else
    snprintf(be->desc, sizeof be->desc, "cpu (OpenBLAS, %d thread%s, 16-bit %s; copy link uncapped)",
             be->threads, be->threads == 1 ? "" : "s", moe_cpu_half_path_name(be->half));
  *out = be;
  return MOE_OK;
}

static void cpu_destroy(moe_backend *be) {
  if (be == NULL) return;
  if (be->copier_started) {
    pthread_mutex_lock(&be->mu);
    be->stop = 1;
    pthread_cond_broadcast(&be->cv);
    pthread_mutex_unlock(&be->mu);
    pthread_join(be->copier, NULL);
  }
  pool_stop(&be->pool);
  pthread_mutex_destroy(&be->mu);
  pthread_cond_destroy(&be->cv);
  free(be->queue);
  free(be->scratch);
  for (int t = 0; be->tb && t < be->threads; t++)
    free(be->tb[t].conv), free(be->tb[t].tbuf), free(be->tb[t].sc);
  free(be->tb);
  free(be);
}

static const char *cpu_describe(moe_backend *be) { return be->desc; }

static const char *cpu_device_name(moe_backend *be) { return be->device; }

static void cpu_set_copy_observer(moe_backend *be,
                                  void (*fn)(void *ctx, size_t bytes, double t0, double t1),
                                  void *ctx) {
  pthread_mutex_lock(&be->mu);
  be->observer = fn;
  be->observer_ctx = ctx;
  pthread_mutex_unlock(&be->mu);
}

static moe_status cpu_alloc(moe_backend *be, size_t bytes, void **ptr, moe_error *err);

static moe_status cpu_device_alloc(moe_backend *be, size_t bytes, void **ptr, moe_error *err) {
  if (fault_now(be, 1)) {
    *ptr = NULL;
    return MOE_FAIL(err, MOE_ERR_DEVICE, "cpu backend: injected fault: device allocation %lu fails",
                    be->fault_n);
  }
  return cpu_alloc(be, bytes, ptr, err);
}

static moe_status cpu_alloc(moe_backend *be, size_t bytes, void **ptr, moe_error *err) {
  const size_t align = bytes >= CPU_HUGE ? CPU_HUGE : CPU_ALIGN;
  size_t rounded = (bytes + align - 1) / align * align;
  if (rounded < bytes) return MOE_FAIL(err, MOE_ERR_OOM, "allocation of %zu bytes overflows", bytes);
  *ptr = aligned_alloc(align, rounded ? rounded : align);
  if (*ptr == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "cpu backend: allocation of %zu bytes failed", bytes);
#ifdef MADV_HUGEPAGE
  /* advice only: a kernel without THP refuses it, and nothing changes */
  if (align == CPU_HUGE) (void)madvise(*ptr, rounded, MADV_HUGEPAGE);
#endif
  return MOE_OK;
}

static moe_status cpu_sync(moe_backend *be, moe_error *err);

/* The copy thread may still be writing into ptr: drain it first (as
 * cudaFree waits for the device). */
static void cpu_free(moe_backend *be, void *ptr) {
  if (ptr == NULL) return;
  cpu_sync(be, NULL);
  free(ptr);
}

static size_t cpu_capacity(moe_backend *be) {
  long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
  return pages > 0 && psz > 0 ? (size_t)pages * (size_t)psz : (size_t)1 << 34;
}

static moe_status cpu_event_create(moe_backend *be, moe_event **ev, moe_error *err) {
  if (fault_now(be, 3)) {
    *ev = NULL;
    return MOE_FAIL(err, MOE_ERR_DEVICE, "cpu backend: injected fault: event %lu fails", be->fault_n);
  }
  *ev = calloc(1, sizeof **ev);
  if (*ev == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "cpu backend: out of host memory");
  return MOE_OK;
}

static void cpu_event_destroy(moe_backend *be, moe_event *ev) {
  if (ev == NULL) return;
  /* queued requests still name ev: the copy thread frees it after them */
  pthread_mutex_lock(&be->mu);
  ev->destroyed = 1;
  const int now = ev->refs == 0;
  pthread_mutex_unlock(&be->mu);
  if (now) free(ev);
}

static moe_status enqueue(moe_backend *be, copy_req r, moe_error *err) {
  pthread_mutex_lock(&be->mu);
  if (be->q_len == be->q_cap) {
    copy_req *q = malloc(2 * be->q_cap * sizeof *q);
    if (q == NULL) {
      pthread_mutex_unlock(&be->mu);
      return MOE_FAIL(err, MOE_ERR_OOM, "cpu backend: copy queue full and cannot grow");
    }
    for (size_t i = 0; i < be->q_len; i++) q[i] = be->queue[(be->q_head + i) % be->q_cap];
    free(be->queue);
    be->queue = q;
    be->q_head = 0;
    be->q_cap *= 2;
  }
  if (r.wait_ev) {
    r.wait_target = r.wait_ev->issued;
    r.wait_ev->refs++;
  }
  be->queue[(be->q_head + be->q_len) % be->q_cap] = r;
  be->q_len++;
  if (r.ev) {
    r.ev->issued++;
    r.ev->refs++;
  }
  pthread_cond_broadcast(&be->cv);
  pthread_mutex_unlock(&be->mu);
  return MOE_OK;
}

static moe_status cpu_copy_h2d_async(moe_backend *be, void *dst, const void *src, size_t bytes,
                                     moe_event *ev, moe_error *err) {
  if (fault_now(be, 2))
    return MOE_FAIL(err, MOE_ERR_DEVICE, "cpu backend: injected fault: copy %lu fails", be->fault_n);
  return enqueue(be, (copy_req){dst, src, bytes, ev, NULL, 0}, err);
}

static moe_status cpu_copy_wait(moe_backend *be, moe_event *ev, moe_error *err) {
  if (ev == NULL) return MOE_OK;
  return enqueue(be, (copy_req){NULL, NULL, 0, NULL, ev, 0}, err);
}

static moe_status cpu_compute_wait(moe_backend *be, moe_event *ev, moe_error *err) {
  if (ev == NULL) return MOE_OK;
  pthread_mutex_lock(&be->mu);
  const unsigned long target = ev->issued;
  while (ev->completed < target) pthread_cond_wait(&be->cv, &be->mu);
  pthread_mutex_unlock(&be->mu);
  return MOE_OK;
}

static int cpu_event_done(moe_backend *be, moe_event *ev) {
  pthread_mutex_lock(&be->mu);
  int done = ev == NULL || ev->completed >= ev->issued;
  pthread_mutex_unlock(&be->mu);
  return done;
}

/* Compute is synchronous here: everything issued has finished, so a
 * recorded event is complete at once. */
static moe_status cpu_compute_record(moe_backend *be, moe_event *ev, moe_error *err) {
  return MOE_OK;
}

static moe_status cpu_copy(moe_backend *be, void *dst, const void *src, size_t bytes, moe_error *err) {
  if (bytes) memcpy(dst, src, bytes);
  return MOE_OK;
}

static moe_status cpu_sync(moe_backend *be, moe_error *err) {
  pthread_mutex_lock(&be->mu);
  while (be->q_len > 0 || be->busy) pthread_cond_wait(&be->cv, &be->mu);
  pthread_mutex_unlock(&be->mu);
  return MOE_OK;
}

/* ------------------------------------------------------------------ math */

/* y[m, rows] (row stride ldy) = x[m, k] . w[rows, k]^T, all f32, on the
 * calling thread (OpenBLAS runs single-threaded: the backend's own math
 * threads split a product's weight rows, see gemm_task).
 *
 * OpenBLAS's sgemm is slow when the x side is thin (it packs the whole
 * weight for a handful of rows), and MoE experts see thin inputs: a decode
 * step gives each expert a few tokens.  So: one or two rows go through
 * sgemv (one weight pass each); up to CPU_SMALL_M rows through the
 * transposed product w . x^T, whose thin side is the packed one, then a
 * transpose (tbuf: rows x m floats); larger inputs through plain sgemm.
 * The choice depends only on m, so the same inputs always take the same
 * path (same bits). */
static void blas_rows(float *y, size_t ldy, const float *x, size_t m, const float *w, size_t rows,
                      size_t k, float *tbuf) {
  if (rows == 0 || m == 0) return;
  if (m <= 2) {
    for (size_t i = 0; i < m; i++)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)rows, (int)k, 1.0f, w, (int)k, x + i * k, 1,
                  0.0f, y + i * ldy, 1);
  } else if (m <= CPU_SMALL_M) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)m, (int)k, 1.0f, w, (int)k,
                x, (int)k, 0.0f, tbuf, (int)m);
    for (size_t i = 0; i < m; i++)
      for (size_t r = 0; r < rows; r++) y[i * ldy + r] = tbuf[r * m + i];
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)rows, (int)k, 1.0f, x, (int)k,
                w, (int)k, 0.0f, y, (int)ldy);
  }
}

/* A product through OpenBLAS split by weight rows over the math threads.
 * The rows form blocks whose size depends on k alone (about 512 KiB of f32
 * weights, or 256 KiB of converted 16-bit ones, which stay in the core's
 * cache while they are multiplied), and task t of T takes a contiguous
 * share of the blocks: the BLAS calls are the same at any thread count,
 * so are the bits (OpenBLAS's own bits depend on the shape of each call).
 * 16-bit weights are converted a block at a time into the task's own
 * buffer, next to its product. */
typedef struct gemm_job {
  moe_backend *be;
  float *y;
  size_t ldy;
  const float *x;
  size_t m;
  const void *w;
  moe_dtype dt;
  size_t n, k, block;
  int tasks;
} gemm_job;

static size_t gemm_block(moe_dtype dt, size_t k) {
  size_t b = (dt == MOE_F32 ? (size_t)1 << 17 : (size_t)1 << 16) / (k ? k : 1) / 16 * 16;
  return b < 16 ? 16 : b;
}

static void gemm_task(void *ctx, int t) {
  const gemm_job *j = ctx;
  task_buf *b = &j->be->tb[t];
  const size_t nb = (j->n + j->block - 1) / j->block;
  const size_t b0 = nb * (size_t)t / (size_t)j->tasks, b1 = nb * ((size_t)t + 1) / (size_t)j->tasks;
  const size_t es = moe_dtype_size(j->dt);
  for (size_t bi = b0; bi < b1; bi++) {
    const size_t c0 = bi * j->block, rows = j->n - c0 < j->block ? j->n - c0 : j->block;
    const float *w = (const float *)j->w + c0 * j->k;
    if (j->dt != MOE_F32) {
      moe_cpu_half_convert(j->be->half, b->conv, (const char *)j->w + c0 * j->k * es, j->dt,
                           rows * j->k);
      w = b->conv;
    }
    blas_rows(j->y + c0, j->ldy, j->x, j->m, w, rows, j->k, b->tbuf);
  }
}

static moe_status reserve(float **p, size_t *cap, size_t n, moe_error *err) {
  if (n <= *cap) return MOE_OK;
  float *q = realloc(*p, n * sizeof(float));
  if (q == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "cpu backend: gemm buffer of %zu floats", n);
  *p = q;
  *cap = n;
  return MOE_OK;
}

/* y[m, n] (row stride ldy) = x[m, k] . w[n, k]^T for f32 weights, or 16-bit
 * weights through conversion (the wide inputs' path, and the portable
 * path's always). */
static moe_status gemm_split(moe_backend *be, float *y, size_t ldy, const float *x, size_t m,
                             const void *w, moe_dtype dt, size_t n, size_t k, moe_error *err) {
  if (m == 0 || n == 0) return MOE_OK;
  const size_t block = gemm_block(dt, k), nb = (n + block - 1) / block;
  const int tasks = m * n * k >= ((size_t)1 << 17) && nb >= (size_t)be->threads ? be->threads : 1;
  for (int t = 0; t < tasks; t++) {
    const size_t span = block < n ? block : n;
    moe_status st = reserve(&be->tb[t].tbuf, &be->tb[t].tbuf_cap,
                            m > 2 && m <= CPU_SMALL_M ? span * m : 0, err);
    if (st == MOE_OK && dt != MOE_F32)
      st = reserve(&be->tb[t].conv, &be->tb[t].conv_cap, span * k, err);
    if (st != MOE_OK) return st;
  }
  gemm_job j = {be, y, ldy, x, m, w, dt, n, k, block, tasks};
  pool_run(&be->pool, gemm_task, &j, tasks);
  return MOE_OK;
}

/* ---- fused products (16-bit weights, thin f32 inputs): jobs for the pool */

/* Up to this many input rows, the fused product: 16-bit weights up to 8
 * (two weight passes beat converting), f32 up to 4 (one weight pass;
 * wider inputs go to OpenBLAS, which reads the weights once at any width) */
#define CPU_FUSED_M 8
#define CPU_FUSED_M_F32 4

typedef struct fused_job {
  moe_backend *be;
  float *y;
  const float *x;
  size_t m;
  const moe_weight *w;
  size_t n, k;
} fused_job;

/* Tasks for n rows of k: one per thread when the product is big enough to
 * pay for the hand-off, else one. */
static int row_tasks(const moe_backend *be, size_t n, size_t k) {
  return n * k >= ((size_t)1 << 16) && n >= (size_t)be->threads ? be->threads : 1;
}

static void fused_rows_task(void *ctx, int t) {
  const fused_job *j = ctx;
  const size_t T = (size_t)row_tasks(j->be, j->n, j->k);
  const size_t r0 = j->n * (size_t)t / T, r1 = j->n * ((size_t)t + 1) / T;
  moe_cpu_fused_rows(j->be->half, j->y, j->n, j->x, j->m, j->w->data, j->w->dtype, r0, r1, j->k);
}

static moe_status cpu_matmul(moe_backend *be, float *y, const float *x, size_t m,
                             const moe_weight *w, const moe_weight *bias, moe_error *err) {
  const int n = (int)w->rows, k = (int)w->cols;
  moe_status st = MOE_OK;
  if (m <= (w->dtype == MOE_F32 ? CPU_FUSED_M_F32 : CPU_FUSED_M) &&
      be->half != MOE_CPU_HALF_PORTABLE) {
    /* thin input (decode): products straight from the weights as stored,
     * rows split across the math threads */
    fused_job j = {be, y, x, m, w, (size_t)n, (size_t)k};
    pool_run(&be->pool, fused_rows_task, &j, row_tasks(be, (size_t)n, (size_t)k));
  } else {
    st = gemm_split(be, y, (size_t)n, x, m, w->data, w->dtype, (size_t)n, (size_t)k, err);
    if (st != MOE_OK) return st;
  }
  if (bias && bias->data) {
    float tmp[256];
    for (int c0 = 0; c0 < n; c0 += 256) {
      int c = n - c0 < 256 ? n - c0 : 256;
      moe_convert_to_f32(tmp, (const char *)bias->data + (size_t)c0 * moe_dtype_size(bias->dtype),
                         bias->dtype, (size_t)c);
      for (size_t i = 0; i < m; i++) {
        float *row = y + i * (size_t)n + c0;
        for (int j = 0; j < c; j++) row[j] += tmp[j];
      }
    }
  }
  return MOE_OK;
}

static moe_status cpu_rmsnorm(moe_backend *be, float *y, const float *x, size_t m,
                              const moe_weight *g, float eps, moe_error *err) {
  const size_t n = g->cols;
  moe_status st = scratch_reserve(be, n, err);
  if (st != MOE_OK) return st;
  moe_convert_to_f32(be->scratch, g->data, g->dtype, n);
  for (size_t i = 0; i < m; i++) {
    const float *xr = x + i * n;
    float *yr = y + i * n;
    float ss = 0.0f;
    for (size_t j = 0; j < n; j++) ss += xr[j] * xr[j];
    float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (size_t j = 0; j < n; j++) yr[j] = be->scratch[j] * (xr[j] * inv);
  }
  return MOE_OK;
}

static moe_status cpu_rope(moe_backend *be, float *x, size_t m, const int32_t *pos, int n_heads,
                           int head_dim, float theta, moe_error *err) {
  const int half = head_dim / 2;
  moe_status st = scratch_reserve(be, (size_t)head_dim, err);
  if (st != MOE_OK) return st;
  float *inv_freq = be->scratch;
  for (int i = 0; i < half; i++)
    inv_freq[i] = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
  for (size_t t = 0; t < m; t++) {
    for (int i = 0; i < half; i++) {
      float ang = (float)pos[t] * inv_freq[i];
      float c = cosf(ang), s = sinf(ang);
      for (int h = 0; h < n_heads; h++) {
        float *v = x + (t * (size_t)n_heads + (size_t)h) * (size_t)head_dim;
        float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
      }
    }
  }
  return MOE_OK;
}

/* rope_ex (backend.h): the caller's frequencies, either pairing, cos and
 * sin scaled by attn_scale. */
static moe_status cpu_rope_ex(moe_backend *be, float *x, size_t m, const int32_t *pos,
                              const moe_rope_ex *r, moe_error *err) {
  if (m == 0) return MOE_OK;
  moe_status st = moe_rope_ex_check(r, err);
  if (st != MOE_OK) return st;
  const int half = r->rot_dim / 2;
  for (size_t t = 0; t < m; t++)
    for (int i = 0; i < half; i++) {
      const float ang = (float)pos[t] * r->inv_freq[i];
      const float c = cosf(ang) * r->attn_scale, sn = sinf(ang) * r->attn_scale;
      for (int h = 0; h < r->n_heads; h++) {
        float *v = x + t * r->row_stride + (size_t)h * r->head_stride + (size_t)r->offset;
        float *pa = r->interleaved ? v + 2 * i : v + i;
        float *pb = r->interleaved ? v + 2 * i + 1 : v + i + half;
        const float a = *pa, b = *pb;
        *pa = a * c - b * sn;
        *pb = b * c + a * sn;
      }
    }
  return MOE_OK;
}

/* mla_attention (backend.h) in the absorbed form: per query and head,
 * q_lat = W_k,h^T q_nope (kv_rank), scores scale * (q_lat . c_j + q_pe .
 * k_pe_j), o_lat = sum_j p_j c_j, out = W_v,h o_lat.  kv_b is converted
 * to f32 once per call. */
static moe_status cpu_mla_attention(moe_backend *be, float *out, const float *q, float *ckv_cache,
                                    float *kpe_cache, const float *ckv, const float *kpe,
                                    const moe_weight *kv_b, const moe_mla_shape *s,
                                    moe_error *err) {
  if ((size_t)s->n_seq * (size_t)s->n_new == 0) return MOE_OK;
  moe_status st = moe_mla_check(s, kv_b, err);
  if (st != MOE_OK) return st;
  const size_t R = (size_t)s->kv_rank, P = (size_t)s->rope_dim, N = (size_t)s->nope_dim,
               V = (size_t)s->v_dim, H = (size_t)s->n_heads, S = (size_t)s->max_seq;
  const size_t W = H * (N + V) * R, nk_max = (size_t)s->pos0 + (size_t)s->n_new;
  /* f32 weights are read in place; 16-bit ones converted once per call */
  const bool convert = kv_b->dtype != MOE_F32;
  st = scratch_reserve(be, (convert ? W : 0) + 2 * R + nk_max, err);
  if (st != MOE_OK) return st;
  float *qlat = be->scratch + (convert ? W : 0), *olat = qlat + R, *sc = olat + R;
  const float *w = convert ? be->scratch : kv_b->data;
  if (convert) moe_convert_to_f32(be->scratch, kv_b->data, kv_b->dtype, W);
  for (int b = 0; b < s->n_seq; b++)
    for (int t = 0; t < s->n_new; t++) {
      const size_t src = (size_t)b * (size_t)s->n_new + (size_t)t;
      const size_t dst = (size_t)b * S + (size_t)s->pos0 + (size_t)t;
      memcpy(ckv_cache + dst * R, ckv + src * R, R * sizeof(float));
      memcpy(kpe_cache + dst * P, kpe + src * P, P * sizeof(float));
    }
  for (int b = 0; b < s->n_seq; b++)
    for (int t = 0; t < s->n_new; t++) {
      const size_t row = (size_t)b * (size_t)s->n_new + (size_t)t;
      const size_t nk = (size_t)s->pos0 + (size_t)t + 1;
      const float *cb = ckv_cache + (size_t)b * S * R, *pb = kpe_cache + (size_t)b * S * P;
      for (size_t h = 0; h < H; h++) {
        const float *qh = q + (row * H + h) * (N + P), *wk = w + h * (N + V) * R,
                    *wv = wk + N * R;
        for (size_t r = 0; r < R; r++) qlat[r] = 0.0f;
        for (size_t n = 0; n < N; n++)
          for (size_t r = 0; r < R; r++) qlat[r] += qh[n] * wk[n * R + r];
        float mx = -INFINITY;
        for (size_t j = 0; j < nk; j++) {
          float d = 0.0f;
          for (size_t r = 0; r < R; r++) d += qlat[r] * cb[j * R + r];
          for (size_t i = 0; i < P; i++) d += qh[N + i] * pb[j * P + i];
          sc[j] = d * s->scale;
          if (sc[j] > mx) mx = sc[j];
        }
        float sum = 0.0f;
        for (size_t j = 0; j < nk; j++) sum += sc[j] = expf(sc[j] - mx);
        const float inv = 1.0f / sum;
        for (size_t r = 0; r < R; r++) olat[r] = 0.0f;
        for (size_t j = 0; j < nk; j++) {
          const float p = sc[j] * inv;
          for (size_t r = 0; r < R; r++) olat[r] += p * cb[j * R + r];
        }
        float *oh = out + (row * H + h) * V;
        for (size_t v = 0; v < V; v++) {
          float o = 0.0f;
          for (size_t r = 0; r < R; r++) o += wv[v * R + r] * olat[r];
          oh[v] = o;
        }
      }
    }
  return MOE_OK;
}

static size_t cache_index(const moe_attn_shape *s, int seq, int kvh, int pos) {
  return (((size_t)seq * (size_t)s->n_kv_heads + (size_t)kvh) * (size_t)s->max_seq + (size_t)pos) *
         (size_t)s->head_dim;
}

static moe_status cpu_kv_store(moe_backend *be, float *kc, float *vc, const float *k,
                               const float *v, const moe_attn_shape *s, moe_error *err) {
  const size_t hd = (size_t)s->head_dim, row = (size_t)s->n_kv_heads * hd;
  for (int b = 0; b < s->n_seq; b++)
    for (int t = 0; t < s->n_new; t++) {
      size_t src = ((size_t)b * (size_t)s->n_new + (size_t)t) * row;
      for (int h = 0; h < s->n_kv_heads; h++) {
        size_t dst = cache_index(s, b, h, s->pos0 + t);
        memcpy(kc + dst, k + src + (size_t)h * hd, hd * sizeof(float));
        memcpy(vc + dst, v + src + (size_t)h * hd, hd * sizeof(float));
      }
    }
  return MOE_OK;
}

/* One (sequence, query, head) of attention_ex, scores in sc. */
static void attend_one(float *out, const float *q, const float *kc, const float *vc,
                       const moe_attn_ex *a, const float *bias, int b, int t, int h, float *sc) {
  const int hd = a->head_dim, group = a->n_heads / a->n_kv_heads;
  const moe_attn_shape s = {a->n_seq, a->n_q, a->q_pos0, a->max_seq,
                            a->n_heads, a->n_kv_heads, a->head_dim};
  const size_t nh = (size_t)a->n_heads;
  const int p = a->q_pos0 + t;
  const int nk = a->causal && p + 1 < a->n_keys ? p + 1 : a->n_keys;
  const size_t row = ((size_t)b * (size_t)a->n_q + (size_t)t) * nh * (size_t)hd;
  const float *qh = q + row + (size_t)h * (size_t)hd;
  float *oh = out + row + (size_t)h * (size_t)hd;
  const float *kb = kc + cache_index(&s, b, h / group, 0);
  const float *vb = vc + cache_index(&s, b, h / group, 0);
  float mx = -INFINITY;
  for (int j = 0; j < nk; j++) {
    float d = 0.0f;
    const float *kj = kb + (size_t)j * (size_t)hd;
    for (int i = 0; i < hd; i++) d += qh[i] * kj[i];
    sc[j] = d * a->scale;
    if (bias) sc[j] += bias[(size_t)a->buckets[j - p + a->bucket_offset] * nh + (size_t)h];
    if (sc[j] > mx) mx = sc[j];
  }
  float sum = 0.0f;
  for (int j = 0; j < nk; j++) {
    sc[j] = expf(sc[j] - mx);
    sum += sc[j];
  }
  const float inv = nk > 0 ? 1.0f / sum : 0.0f;
  memset(oh, 0, (size_t)hd * sizeof(float));
  for (int j = 0; j < nk; j++) {
    const float wgt = sc[j] * inv;
    const float *vj = vb + (size_t)j * (size_t)hd;
    for (int i = 0; i < hd; i++) oh[i] += wgt * vj[i];
  }
}

/* Queries [t0, t1) of sequence b, head h, through two BLAS products:
 * S = scale Q K^T over the keys any of them sees, the bias, the causal
 * mask and the softmax row by row (masked keys get weight 0), then
 * out = S V.  S: (t1 - t0) x n_keys floats. */
static void attend_block(float *out, const float *q, const float *kc, const float *vc,
                         const moe_attn_ex *a, const float *bias, int b, int h, int t0, int t1,
                         float *S) {
  const int hd = a->head_dim, group = a->n_heads / a->n_kv_heads, nq = t1 - t0;
  const moe_attn_shape s = {a->n_seq, a->n_q, a->q_pos0, a->max_seq,
                            a->n_heads, a->n_kv_heads, a->head_dim};
  const size_t nh = (size_t)a->n_heads, ld = nh * (size_t)hd;
  const int p_last = a->q_pos0 + t1 - 1;
  const int nk = a->causal && p_last + 1 < a->n_keys ? p_last + 1 : a->n_keys;
  const size_t row0 = (size_t)b * (size_t)a->n_q + (size_t)t0;
  const float *Q = q + row0 * ld + (size_t)h * (size_t)hd;
  float *O = out + row0 * ld + (size_t)h * (size_t)hd;
  if (nk <= 0) {
    for (int i = 0; i < nq; i++) memset(O + (size_t)i * ld, 0, (size_t)hd * sizeof(float));
    return;
  }
  const float *K = kc + cache_index(&s, b, h / group, 0), *V = vc + cache_index(&s, b, h / group, 0);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, hd, a->scale, Q, (int)ld, K, hd,
              0.0f, S, nk);
  for (int i = 0; i < nq; i++) {
    float *r = S + (size_t)i * (size_t)nk;
    const int p = a->q_pos0 + t0 + i;
    const int vis = a->causal && p + 1 < a->n_keys ? p + 1 : a->n_keys;
    float mx = -INFINITY;
    for (int j = 0; j < vis; j++) {
      if (bias) r[j] += bias[(size_t)a->buckets[j - p + a->bucket_offset] * nh + (size_t)h];
      if (r[j] > mx) mx = r[j];
    }
    float sum = 0.0f;
    for (int j = 0; j < vis; j++) sum += r[j] = expf(r[j] - mx);
    const float inv = vis > 0 ? 1.0f / sum : 0.0f;
    for (int j = 0; j < vis; j++) r[j] *= inv;
    for (int j = vis; j < nk; j++) r[j] = 0.0f;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hd, nk, 1.0f, S, nk, V, hd, 0.0f, O,
              (int)ld);
}

/* attention_ex split over the math threads.  Few queries per sequence
 * (decode): one (sequence, query, head) at a time in plain C.  Many
 * (prefill, encoders): blocks of CPU_ATTN_QBLOCK queries of one head
 * through BLAS.  Task t takes a contiguous share of the units; each unit
 * is computed the same way at any thread count. */
#define CPU_ATTN_BLAS_Q 8
#define CPU_ATTN_QBLOCK 64
typedef struct attn_job {
  moe_backend *be;
  float *out;
  const float *q, *kc, *vc, *bias;
  const moe_attn_ex *a;
  int tasks;
  bool blocks;
} attn_job;

static void attn_task(void *ctx, int t) {
  const attn_job *j = ctx;
  const moe_attn_ex *a = j->a;
  const size_t nqb = ((size_t)a->n_q + CPU_ATTN_QBLOCK - 1) / CPU_ATTN_QBLOCK;
  const size_t per = j->blocks ? nqb : (size_t)a->n_q;
  const size_t total = (size_t)a->n_seq * per * (size_t)a->n_heads;
  const size_t i0 = total * (size_t)t / (size_t)j->tasks, i1 = total * ((size_t)t + 1) / (size_t)j->tasks;
  for (size_t i = i0; i < i1; i++) {
    const int h = (int)(i % (size_t)a->n_heads), u = (int)(i / (size_t)a->n_heads % per);
    const int b = (int)(i / ((size_t)a->n_heads * per));
    if (j->blocks) {
      const int t0 = u * CPU_ATTN_QBLOCK, t1 = t0 + CPU_ATTN_QBLOCK < a->n_q ? t0 + CPU_ATTN_QBLOCK : a->n_q;
      attend_block(j->out, j->q, j->kc, j->vc, a, j->bias, b, h, t0, t1, j->be->tb[t].sc);
    } else {
      attend_one(j->out, j->q, j->kc, j->vc, a, j->bias, b, u, h, j->be->tb[t].sc);
    }
  }
}

static moe_status cpu_attention_ex(moe_backend *be, float *out, const float *q, const float *kc,
                                   const float *vc, const moe_attn_ex *a, moe_error *err) {
  const bool biased = a->rel_bias && a->rel_bias->data;
  const size_t nb = biased ? a->rel_bias->rows : 0, nh = (size_t)a->n_heads;
  moe_status st = scratch_reserve(be, nb * nh, err);
  if (st != MOE_OK) return st;
  if (biased) moe_convert_to_f32(be->scratch, a->rel_bias->data, a->rel_bias->dtype, nb * nh);
  const bool blocks = a->n_q >= CPU_ATTN_BLAS_Q;
  const size_t triples = (size_t)a->n_seq * (size_t)a->n_q * nh;
  const double work = (double)triples * (double)a->n_keys * (double)a->head_dim;
  const size_t units = blocks ? (size_t)a->n_seq * nh * (((size_t)a->n_q + CPU_ATTN_QBLOCK - 1) / CPU_ATTN_QBLOCK)
                              : triples;
  const int tasks = work >= 1 << 18 && units >= (size_t)be->threads ? be->threads : 1;
  const size_t sc = (blocks ? (size_t)CPU_ATTN_QBLOCK : 1) * ((size_t)a->n_keys + 1);
  for (int t = 0; t < tasks; t++) {
    st = reserve(&be->tb[t].sc, &be->tb[t].sc_cap, sc, err);
    if (st != MOE_OK) return st;
  }
  attn_job j = {be, out, q, kc, vc, biased ? be->scratch : NULL, a, tasks, blocks};
  pool_run(&be->pool, attn_task, &j, tasks);
  return MOE_OK;
}

/* The decoder-only attention: attention_ex, causal over the cache up to
 * each query's position, scaled by 1/sqrt(head_dim), no bias. */
static moe_status cpu_attention(moe_backend *be, float *out, const float *q, const float *kc,
                                const float *vc, const moe_attn_shape *s, moe_error *err) {
  const moe_attn_ex a = {s->n_seq,   s->n_new,      s->pos0,  s->pos0 + s->n_new,
                         s->max_seq, s->n_heads,    s->n_kv_heads, s->head_dim,
                         true,       1.0f / sqrtf((float)s->head_dim), NULL, NULL, 0};
  return cpu_attention_ex(be, out, q, kc, vc, &a, err);
}

static moe_status cpu_unary(moe_backend *be, float *y, const float *x, size_t n, moe_unary_op op,
                            float alpha, moe_error *err) {
  switch (op) {
    case MOE_UNARY_RELU:
      for (size_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
      return MOE_OK;
    case MOE_UNARY_SCALE:
      for (size_t i = 0; i < n; i++) y[i] = alpha * x[i];
      return MOE_OK;
  }
  return MOE_FAIL(err, MOE_ERR_INVALID, "unary: unknown operation %d", (int)op);
}

static moe_status cpu_router_topk(moe_backend *be, int32_t *idx, float *wts, const float *logits,
                                  size_t m, int n, int k, bool renorm, const moe_weight *bias,
                                  moe_error *err) {
  moe_status st = scratch_reserve(be, 2 * (size_t)n, err);
  if (st != MOE_OK) return st;
  float *z = be->scratch, *b = be->scratch + n;
  if (bias && bias->data)
    moe_convert_to_f32(b, bias->data, bias->dtype, (size_t)n);
  else
    memset(b, 0, (size_t)n * sizeof(float));
  for (size_t t = 0; t < m; t++) {
    const float *l = logits + t * (size_t)n;
    float mx = -INFINITY;
    for (int e = 0; e < n; e++) {
      z[e] = l[e] + b[e];
      if (z[e] > mx) mx = z[e];
    }
    float sum = 0.0f;
    for (int e = 0; e < n; e++) sum += expf(z[e] - mx);
    /* ranked on the biased logits, ties to the lower index */
    int32_t *ti = idx + t * (size_t)k;
    float *tw = wts + t * (size_t)k, tsum = 0.0f;
    for (int j = 0; j < k; j++) {
      int best = -1;
      for (int e = 0; e < n; e++) {
        bool taken = false;
        for (int q = 0; q < j; q++) taken |= ti[q] == e;
        if (!taken && (best < 0 || z[e] > z[best])) best = e;
      }
      ti[j] = best;
      tw[j] = expf(z[best] - mx) / sum;
      tsum += tw[j];
    }
    if (renorm)
      for (int j = 0; j < k; j++) tw[j] /= tsum;
  }
  return MOE_OK;
}

/* DeepSeek-style routing (backend.h, moe_router_ex), the reference. */
static moe_status cpu_router_topk_ex(moe_backend *be, int32_t *idx, float *wts, const float *logits,
                                     size_t m, int n, const moe_router_ex *r, moe_error *err) {
  if (m == 0) return MOE_OK;
  moe_status st = moe_router_ex_check(r, n, err);
  if (st != MOE_OK) return st;
  st = scratch_reserve(be, 3 * (size_t)n, err);
  if (st != MOE_OK) return st;
  float *sc = be->scratch, *c = sc + n, *b = c + n;
  if (r->choice_bias && r->choice_bias->data)
    moe_convert_to_f32(b, r->choice_bias->data, r->choice_bias->dtype, (size_t)n);
  else
    memset(b, 0, (size_t)n * sizeof(float));
  const int G = r->n_group > 1 ? r->n_group : 1, size = n / G;
  for (size_t t = 0; t < m; t++) {
    const float *l = logits + t * (size_t)n;
    if (r->scoring == MOE_SCORING_SOFTMAX) {
      float mx = -INFINITY, sum = 0.0f;
      for (int e = 0; e < n; e++) mx = l[e] > mx ? l[e] : mx;
      for (int e = 0; e < n; e++) sum += sc[e] = expf(l[e] - mx);
      for (int e = 0; e < n; e++) sc[e] /= sum;
    } else {
      for (int e = 0; e < n; e++) sc[e] = 1.0f / (1.0f + expf(-l[e]));
    }
    for (int e = 0; e < n; e++) c[e] = sc[e] + b[e];
    if (G > 1) {
      /* keep the topk_group best groups; c elsewhere becomes 0 */
      bool keep[MOE_ROUTER_MAX_N];
      float gv[MOE_ROUTER_MAX_N];
      for (int g = 0; g < G; g++) {
        const float *cg = c + (size_t)g * (size_t)size;
        float a = -INFINITY, a2 = -INFINITY;
        for (int e = 0; e < size; e++) {
          if (cg[e] > a) a2 = a, a = cg[e];
          else if (cg[e] > a2) a2 = cg[e];
        }
        gv[g] = r->group_score == MOE_GROUP_MAX ? a : a + a2;
        keep[g] = false;
      }
      for (int j = 0; j < r->topk_group; j++) {
        int best = -1;
        for (int g = 0; g < G; g++)
          if (!keep[g] && (best < 0 || gv[g] > gv[best])) best = g;
        keep[best] = true;
      }
      const float fill = r->mask_neg_inf ? -INFINITY : 0.0f;
      for (int e = 0; e < n; e++)
        if (!keep[e / size]) c[e] = fill;
    }
    int32_t *ti = idx + t * (size_t)r->k;
    float *tw = wts + t * (size_t)r->k, tsum = 0.0f;
    for (int j = 0; j < r->k; j++) {
      int best = -1;
      for (int e = 0; e < n; e++) {
        bool taken = false;
        for (int q = 0; q < j; q++) taken |= ti[q] == e;
        if (!taken && (best < 0 || c[e] > c[best])) best = e;
      }
      ti[j] = best;
      tw[j] = sc[best];
      tsum += tw[j];
    }
    for (int j = 0; j < r->k; j++) tw[j] = (r->renorm ? tw[j] / (tsum + 1e-20f) : tw[j]) * r->scale;
  }
  return MOE_OK;
}

/* swiglu over ranges of elements split across the math threads (element
 * by element: the same bits at any thread count). */
typedef struct swiglu_job {
  float *y;
  const float *g, *u;
  size_t n;
  int tasks;
} swiglu_job;

static void swiglu_task(void *ctx, int t) {
  const swiglu_job *j = ctx;
  const size_t i0 = j->n * (size_t)t / (size_t)j->tasks, i1 = j->n * ((size_t)t + 1) / (size_t)j->tasks;
  for (size_t i = i0; i < i1; i++) j->y[i] = j->g[i] / (1.0f + expf(-j->g[i])) * j->u[i];
}

static moe_status cpu_swiglu(moe_backend *be, float *y, const float *g, const float *u, size_t n,
                             moe_error *err) {
  swiglu_job j = {y, g, u, n, n >= ((size_t)1 << 16) ? be->threads : 1};
  pool_run(&be->pool, swiglu_task, &j, j.tasks);
  return MOE_OK;
}

static moe_status cpu_add(moe_backend *be, float *y, const float *x, size_t n, moe_error *err) {
  for (size_t i = 0; i < n; i++) y[i] += x[i];
  return MOE_OK;
}

static moe_status cpu_embed(moe_backend *be, float *y, const moe_weight *table, const int32_t *ids,
                            size_t m, moe_error *err) {
  const size_t dim = table->cols, esz = moe_dtype_size(table->dtype);
  for (size_t i = 0; i < m; i++) {
    if (ids[i] < 0 || (size_t)ids[i] >= table->rows)
      return MOE_FAIL(err, MOE_ERR_INVALID, "token id %d is outside the vocabulary (%zu)",
                      (int)ids[i], table->rows);
    moe_convert_to_f32(y + i * dim, (const char *)table->data + (size_t)ids[i] * dim * esz,
                       table->dtype, dim);
  }
  return MOE_OK;
}

static moe_status cpu_gather_rows(moe_backend *be, float *dst, const float *src,
                                  const int32_t *rows, size_t n, size_t dim, moe_error *err) {
  for (size_t i = 0; i < n; i++) memcpy(dst + i * dim, src + (size_t)rows[i] * dim, dim * sizeof(float));
  return MOE_OK;
}

static moe_status cpu_scatter_add_rows(moe_backend *be, float *dst, const float *src,
                                       const int32_t *rows, const float *scale,
                                       size_t scale_stride, bool scale_sigmoid, size_t n,
                                       size_t dim, moe_error *err) {
  for (size_t i = 0; i < n; i++) {
    float s = scale[i * scale_stride];
    if (scale_sigmoid) s = 1.0f / (1.0f + expf(-s));
    float *d = dst + (size_t)rows[i] * dim;
    const float *x = src + i * dim;
    for (size_t j = 0; j < dim; j++) d[j] += s * x[j];
  }
  return MOE_OK;
}

/* argmax_rows (backend.h): the engine's own sequential scan (moe_argmax),
 * row by row, so the two agree by construction. */
static moe_status cpu_argmax_rows(moe_backend *be, int32_t *idx, const float *x, size_t m, int n,
                                  moe_error *err) {
  if (m > 0 && n < 1) return MOE_FAIL(err, MOE_ERR_INVALID, "argmax_rows: n must be >= 1, got %d", n);
  for (size_t r = 0; r < m; r++) idx[r] = moe_argmax(x + r * (size_t)n, n);
  return MOE_OK;
}

const moe_backend_ops moe_cpu_backend = {
    .abi_version = MOE_BACKEND_ABI,
    .struct_size = sizeof(moe_backend_ops),
    .name = "cpu",
    .summary = "reference backend: OpenBLAS gemm, plain C ops, emulated device (arena, copy thread, link cap)",
    .create = cpu_create,
    .destroy = cpu_destroy,
    .describe = cpu_describe,
    .device_alloc = cpu_device_alloc,
    .device_free = cpu_free,
    .host_alloc = cpu_alloc,
    .host_free = cpu_free,
    .event_create = cpu_event_create,
    .event_destroy = cpu_event_destroy,
    .copy_h2d_async = cpu_copy_h2d_async,
    .compute_wait = cpu_compute_wait,
    .event_sync = cpu_compute_wait,
    .compute_record = cpu_compute_record,
    .copy_wait = cpu_copy_wait,
    .event_done = cpu_event_done,
    .device_capacity = cpu_capacity,
    .upload = cpu_copy,
    .download = cpu_copy,
    .synchronize = cpu_sync,
    .matmul = cpu_matmul,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
    .router_topk = cpu_router_topk,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .embed = cpu_embed,
    .gather_rows = cpu_gather_rows,
    .scatter_add_rows = cpu_scatter_add_rows,
    .caps = MOE_BACKEND_CAP_LINK_CAP,
    .device_name = cpu_device_name,
    .set_copy_observer = cpu_set_copy_observer,
    .attention_ex = cpu_attention_ex,
    .unary = cpu_unary,
    .router_topk_ex = cpu_router_topk_ex,
    .rope_ex = cpu_rope_ex,
    .mla_attention = cpu_mla_attention,
    .argmax_rows = cpu_argmax_rows,
};
