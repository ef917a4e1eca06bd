/* The cpu backend: the reference every other backend is checked against,
 * and an honest emulation of an offloading device.
 *
 * Math (cpu_kernels.c): gemm through cblas (OpenBLAS, one thread by
 * default so the copy thread can have the other core); everything else
 * plain C, issued on the calling thread (the compute stream is
 * synchronous).  This file: the table, memory, the copy and host stream
 * threads, events, the math thread pool.
 * Memory: "device" memory is a separate arena of host allocations, counted
 * against the budget by the engine's allocator front; expert weights stay in
 * the model's host slab.
 * Copies: host-to-device copies are real memcpys done by one copy thread,
 * a chunk (COPY_CHUNK) at a time, which signals each copy's event when its
 * last byte has landed; between chunks it takes the most urgent copy
 * queued (ABI 1.8: urgent ones first, then in issue order), and skips the
 * rest of a cancelled one.  With a link cap (link_gbps) the thread paces
 * itself so the copy rate never exceeds the cap, emulating PCIe.  compute_wait blocks the compute thread
 * until the event is signalled, so copy/compute overlap is real wall-clock
 * overlap.
 * Host stream (host_run, ABI 1.7): a second thread like the copy thread
 * runs the jobs in order, each after its wait event, with the backend's
 * mutex released while fn runs; its done event is signalled as a copy's. */
#include <cblas.h> /* openblas_set_num_threads */
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
#include "cpu_internal.h"

#define POOL_SPIN_S 100e-6
#if defined(__SSE2__)
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

/* The copy stream moves a copy this many bytes at a time (copy_chunk):
 * an urgent copy waits behind one chunk at most. */
#define COPY_CHUNK ((size_t)1 << 20)

/* The emulated link's knobs: MOE_CPU_LINK_SLICE=BYTES paces the capped
 * link in smaller steps (4096 .. COPY_CHUNK; default COPY_CHUNK);
 * MOE_CPU_LINK=copy|timed: a timed link's copies keep their pacing and
 * events but move no bytes (copy_timed; default copy). */
static moe_status parse_link_env(moe_backend *be, moe_error *err) {
  be->link_slice = COPY_CHUNK;
  const char *ls = getenv("MOE_CPU_LINK_SLICE");
  if (ls && *ls) {
    char *end;
    const unsigned long v = strtoul(ls, &end, 10);
    if (*end != '\0' || strspn(ls, "0123456789") != strlen(ls) || v < 4096 || v > COPY_CHUNK)
      return MOE_FAIL(err, MOE_ERR_INVALID, "MOE_CPU_LINK_SLICE='%s': expected bytes from 4096 to %zu",
                      ls, (size_t)COPY_CHUNK);
    be->link_slice = v;
  }
  const char *lm = getenv("MOE_CPU_LINK");
  if (lm && *lm && strcmp(lm, "timed") != 0 && strcmp(lm, "copy") != 0)
    return MOE_FAIL(err, MOE_ERR_INVALID, "MOE_CPU_LINK='%s': expected copy or timed", lm);
  be->link_timed = lm && strcmp(lm, "timed") == 0;
  return MOE_OK;
}

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

/* Copies and host jobs tagged with an event are counted when queued and
 * when done; a wait is for the ones queued before it (like a CUDA event's
 * latest record).  refs counts queued requests (of either stream) that
 * name the event; a destroyed event with refs left is freed by the stream
 * thread that finishes the last one.  Guarded by be->mu. */
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

moe_status moe_cpu_scratch_reserve(moe_backend *be, size_t n, moe_error *err) {
  if (n <= be->scratch_cap) return MOE_OK;
  float *p = realloc(be->scratch, n * sizeof(float));
  if (p == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "cpu backend: scratch of %zu floats failed", n);
  be->scratch = p;
  be->scratch_cap = n;
  return MOE_OK;
}


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

/* Removes request i of stream q and returns it.  be->mu held. */
static copy_req take(cpu_stream *q, size_t i) {
  copy_req r = q->ring[i];
  memmove(q->ring + i, q->ring + i + 1, (q->len - i - 1) * sizeof *q->ring);
  q->len--;
  return r;
}

/* A request is over: its event is signalled, its references dropped. */
static void retire(copy_req r) {
  if (r.ev) r.ev->completed++;
  event_unref(r.ev);
  event_unref(r.wait_ev);
}

/* The request stream q runs next: a cancelled copy (retired at once,
 * wherever it waits: its event is signalled without waiting for the
 * requests before it), else the first urgent one queued, else the oldest
 * (the host stream has neither). */
static size_t next_req(const cpu_stream *q) {
  size_t urgent = q->len;
  for (size_t i = 0; i < q->len; i++) {
    if (q->ring[i].cancelled) return i;
    if (q->ring[i].urgent && urgent == q->len) urgent = i;
  }
  return urgent < q->len ? urgent : 0;
}

/* Whether request r may start: cancelled, started, or its wait met. */
static bool req_ready(const copy_req *r) {
  return r->cancelled || r->done > 0 || r->wait_ev == NULL ||
         r->wait_ev->completed >= r->wait_target;
}

/* The request to run now, or q->len: next_req's if it may start, else
 * the oldest normal one if it may (an urgent copy waiting for a copy
 * queued behind it must not stall the stream).  be->mu held. */
static size_t runnable_req(const cpu_stream *q) {
  const size_t i = next_req(q);
  if (req_ready(&q->ring[i])) return i;
  for (size_t j = 0; j < q->len; j++)
    if (!q->ring[j].urgent) return req_ready(&q->ring[j]) ? j : q->len;
  return q->len;
}

/* The copy thread waits for the link: a sleep, which may overshoot by
 * tens of microseconds (made up by the next chunks), or with spin, a
 * sleep for all but the last 100 us and a spin for those. */
static void link_wait_until(double t, bool spin) {
  if (!spin) {
    moe_clock_sleep_until(t);
    return;
  }
  if (t - moe_clock_s() > 100e-6) moe_clock_sleep_until(t - 100e-6);
  while (moe_clock_s() < t) cpu_relax();
}

/* Moves the next chunk of copy i of the copy stream q (be->mu held on
 * entry and exit, released while the bytes move).  The request stays at
 * index i meanwhile: only this thread removes requests, and an enqueue
 * only appends. */
static void copy_chunk_of(moe_backend *be, cpu_stream *q, size_t i) {
  copy_req *r = &q->ring[i];
  const size_t off = r->done, c = r->bytes - off < COPY_CHUNK ? r->bytes - off : COPY_CHUNK;
  char *dst = (char *)r->dst + off;
  const char *src = (const char *)r->src + off;
  r->moving = c;
  pthread_mutex_unlock(&be->mu);
  const double now = moe_clock_s();
  if (be->link_bps > 0) {
    /* the chunk in slices, each ending no sooner than its bytes over the
     * cap; a slice under 1 MiB (MOE_CPU_LINK_SLICE) waits by spinning
     * for the short gaps a sleep would overshoot */
    const double start = cpu_link_start(q->link_free, now, (double)COPY_CHUNK / be->link_bps);
    for (size_t o = 0; o < c; o += be->link_slice) {
      const size_t n = c - o < be->link_slice ? c - o : be->link_slice;
      if (!be->link_timed) link_copy(dst + o, src + o, n);
      q->link_free = start + (double)(o + n) / be->link_bps;
      link_wait_until(q->link_free, be->link_slice < COPY_CHUNK);
    }
  } else if (!be->link_timed) {
    link_copy(dst, src, c);
  }
  pthread_mutex_lock(&be->mu);
  r = &q->ring[i]; /* an enqueue may have moved the array */
  if (off == 0) r->t0 = now;
  r->done += c;
  r->moving = 0;
}

/* A stream's thread (copy or host): runs its requests until destroy,
 * after draining what is queued.  A host job is popped and runs with the
 * lock released (busy set); a copy moves a chunk at a time, choosing
 * again between chunks, so an urgent copy waits for one chunk at most. */
static void *stream_main(void *arg) {
  cpu_stream *q = arg;
  moe_backend *be = q->be;
  pthread_mutex_lock(&be->mu);
  for (;;) {
    while (q->len == 0 && !be->stop) {
      q->link_free = 0; /* idle: the next copy's schedule starts when it does */
      pthread_cond_wait(&be->cv, &be->mu);
    }
    if (q->len == 0 && be->stop) break;
    const size_t i = runnable_req(q);
    if (i == q->len) {
      pthread_cond_wait(&be->cv, &be->mu); /* a wait, or more urgent work, may come */
      continue;
    }
    copy_req *r = &q->ring[i];
    if (r->fn) { /* a host job: runs without the lock */
      const copy_req job = take(q, i);
      q->busy = 1;
      pthread_mutex_unlock(&be->mu);
      job.fn(job.fn_ctx);
      pthread_mutex_lock(&be->mu);
      retire(job);
      q->busy = 0;
    } else {
      if (!r->cancelled && r->done < r->bytes) copy_chunk_of(be, q, i);
      r = &q->ring[i];
      /* a chunk that does not end its copy changes nothing anyone waits
       * for: no wake-up (one per chunk would cost the copy a third of its
       * speed in context switches) */
      if (!r->cancelled && r->done < r->bytes) continue;
      const copy_req c = take(q, i);
      if (be->observer && c.bytes > 0 && !c.cancelled)
        be->observer(be->observer_ctx, c.bytes, c.t0, moe_clock_s());
      retire(c);
    }
    pthread_cond_broadcast(&be->cv);
  }
  pthread_mutex_unlock(&be->mu);
  return NULL;
}

/* Allocates a stream's ring and starts its thread; 0 on success. */
static int stream_start(moe_backend *be, cpu_stream *q) {
  q->be = be;
  q->cap = 64;
  q->ring = malloc(q->cap * sizeof *q->ring);
  if (q->ring == NULL || pthread_create(&q->tid, NULL, stream_main, q) != 0) return -1;
  q->started = 1;
  return 0;
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

void moe_cpu_pool_run(pool *p, void (*fn)(void *, int), void *ctx, int tasks) {
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
  if (parse_link_env(be, err) != MOE_OK) return free(be), MOE_ERR_INVALID;
  /* OpenBLAS single-threaded: the backend's own threads split every
   * product (OpenBLAS's idle workers would otherwise spin on the cores
   * the conversion and fused products need) */
  openblas_set_num_threads(1);
  be->tb = calloc((size_t)be->threads, sizeof *be->tb);
  if (be->tb == NULL) return free(be), MOE_FAIL(err, MOE_ERR_OOM, "cpu backend: out of host memory");
  pthread_mutex_init(&be->mu, NULL);
  pthread_cond_init(&be->cv, NULL);
  if (pool_start(&be->pool, be->threads - 1) != 0) {
    cpu_destroy(be);
    return MOE_FAIL(err, MOE_ERR_OOM, "cpu backend: cannot start %d math threads", be->threads);
  }
  if (stream_start(be, &be->copy) != 0) {
    cpu_destroy(be);
    return MOE_FAIL(err, MOE_ERR_OOM, "cpu backend: cannot start the copy thread");
  }
  if (stream_start(be, &be->host) != 0) {
    cpu_destroy(be);
    return MOE_FAIL(err, MOE_ERR_OOM, "cpu backend: cannot start the host stream thread");
  }
  cpu_model_name(be->device, sizeof be->device);
  if (be->link_bps > 0)
    snprintf(be->desc, sizeof be->desc, "cpu (OpenBLAS, %d thread%s, 16-bit %s; %s link capped at %.2f GB/s)",
             be->threads, be->threads == 1 ? "" : "s", moe_cpu_half_path_name(be->half),
             be->link_timed ? "timed" : "copy", be->link_bps * 1e-9);
  else
    snprintf(be->desc, sizeof be->desc, "cpu (OpenBLAS, %d thread%s, 16-bit %s; %s link uncapped)",
             be->threads, be->threads == 1 ? "" : "s", moe_cpu_half_path_name(be->half),
             be->link_timed ? "timed" : "copy");
  *out = be;
  return MOE_OK;
}

static void cpu_destroy(moe_backend *be) {
  if (be == NULL) return;
  /* both threads drain their queues, then exit (a host job may wait for
   * a copy, so neither is joined before both are told) */
  pthread_mutex_lock(&be->mu);
  be->stop = 1;
  pthread_cond_broadcast(&be->cv);
  pthread_mutex_unlock(&be->mu);
  if (be->copy.started) pthread_join(be->copy.tid, NULL);
  if (be->host.started) pthread_join(be->host.tid, NULL);
  pool_stop(&be->pool);
  pthread_mutex_destroy(&be->mu);
  pthread_cond_destroy(&be->cv);
  free(be->copy.ring);
  free(be->host.ring);
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

/* The copy thread may still be writing into ptr, a host job using it:
 * drain both streams first (as cudaFree waits for the device). */
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
  /* queued requests still name ev: a stream thread frees it after them */
  pthread_mutex_lock(&be->mu);
  ev->destroyed = 1;
  const int now = ev->refs == 0;
  pthread_mutex_unlock(&be->mu);
  if (now) free(ev);
}

/* Queues r on stream q: a wait is for wait_ev's signalling requests
 * queued so far; ev counts one more. */
static moe_status enqueue(moe_backend *be, cpu_stream *q, copy_req r, moe_error *err) {
  pthread_mutex_lock(&be->mu);
  if (q->len == q->cap) {
    copy_req *ring = malloc(2 * q->cap * sizeof *ring);
    if (ring == NULL) {
      pthread_mutex_unlock(&be->mu);
      return MOE_FAIL(err, MOE_ERR_OOM, "cpu backend: %s queue full and cannot grow",
                      q == &be->host ? "host stream" : "copy");
    }
    memcpy(ring, q->ring, q->len * sizeof *ring);
    free(q->ring);
    q->ring = ring;
    q->cap *= 2;
  }
  if (r.wait_ev) {
    r.wait_target = r.wait_ev->issued;
    r.wait_ev->refs++;
  }
  q->ring[q->len++] = r;
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
  return enqueue(be, &be->copy, (copy_req){.dst = dst, .src = src, .bytes = bytes, .ev = ev}, err);
}

static moe_status cpu_copy_wait(moe_backend *be, moe_event *ev, moe_error *err) {
  if (ev == NULL) return MOE_OK;
  return enqueue(be, &be->copy, (copy_req){.wait_ev = ev}, err);
}

/* Overtakable copies (ABI 1.8): see stream_main. */
static size_t cpu_copy_chunk(moe_backend *be) { return COPY_CHUNK; }

static moe_status cpu_copy_h2d_ex(moe_backend *be, void *dst, const void *src, size_t bytes,
                                  moe_event *wait_ev, moe_event *ev, int urgent, moe_error *err) {
  if (fault_now(be, 2))
    return MOE_FAIL(err, MOE_ERR_DEVICE, "cpu backend: injected fault: copy %lu fails", be->fault_n);
  return enqueue(be, &be->copy,
                 (copy_req){.dst = dst, .src = src, .bytes = bytes, .ev = ev, .wait_ev = wait_ev,
                            .urgent = urgent != 0},
                 err);
}

/* The pending copy most recently issued that signals ev, or NULL (a
 * cancelled one no longer counts).  be->mu held. */
static copy_req *pending_copy(cpu_stream *q, const moe_event *ev) {
  for (size_t i = q->len; ev && i-- > 0;) {
    copy_req *r = &q->ring[i];
    if (r->ev == ev && r->fn == NULL && r->bytes > 0 && !r->cancelled) return r;
  }
  return NULL;
}

static int cpu_copy_cancel(moe_backend *be, moe_event *ev) {
  pthread_mutex_lock(&be->mu);
  int dropped = 0;
  for (size_t i = 0; ev && i < be->copy.len; i++) {
    copy_req *r = &be->copy.ring[i];
    /* dropped only if a chunk is left after the one moving */
    if (r->ev != ev || r->fn || r->bytes == 0 || r->cancelled || r->done + r->moving >= r->bytes)
      continue;
    r->cancelled = 1;
    dropped = 1;
  }
  pthread_cond_broadcast(&be->cv);
  pthread_mutex_unlock(&be->mu);
  return dropped;
}

static int cpu_copy_timed(moe_backend *be) { return be->link_timed; }

static int cpu_copy_urge(moe_backend *be, moe_event *ev) {
  pthread_mutex_lock(&be->mu);
  copy_req *r = pending_copy(&be->copy, ev);
  if (r) r->urgent = 1;
  pthread_cond_broadcast(&be->cv);
  pthread_mutex_unlock(&be->mu);
  return r != NULL;
}

/* A job on the host stream (ABI 1.7): runs on the host stream's thread,
 * after wait_ev's signalling requests queued so far; done_ev is then
 * signalled as a copy's event.  work is for modeled backends only. */
static moe_status cpu_host_run(moe_backend *be, void (*fn)(void *ctx), void *ctx,
                               const moe_host_work *work, moe_event *wait_ev, moe_event *done_ev,
                               moe_error *err) {
  (void)work;
  if (fn == NULL)
    return MOE_FAIL(err, MOE_ERR_INVALID, "cpu backend: host_run without a job (fn NULL)");
  return enqueue(be, &be->host,
                 (copy_req){.ev = done_ev, .wait_ev = wait_ev, .fn = fn, .fn_ctx = ctx}, err);
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
  while (be->copy.len > 0 || be->copy.busy || be->host.len > 0 || be->host.busy)
    pthread_cond_wait(&be->cv, &be->mu);
  pthread_mutex_unlock(&be->mu);
  return MOE_OK;
}

const moe_backend_ops moe_cpu_backend = {
    .abi_version = MOE_BACKEND_ABI,
    .struct_size = sizeof(moe_backend_ops),
    .name = "cpu",
    .summary = "reference backend: OpenBLAS gemm, plain C ops, emulated device (arena, copy and host-stream threads, link cap)",
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
    .matmul = moe_cpu_matmul,
    .rmsnorm = moe_cpu_rmsnorm,
    .kv_store = moe_cpu_kv_store,
    .swiglu = moe_cpu_swiglu,
    .add = moe_cpu_add,
    .embed = moe_cpu_embed,
    .gather_rows = moe_cpu_gather_rows,
    .scatter_add_rows = moe_cpu_scatter_add_rows,
    .caps = MOE_BACKEND_CAP_LINK_CAP,
    .device_name = cpu_device_name,
    .set_copy_observer = cpu_set_copy_observer,
    .attention_ex = moe_cpu_attention_ex,
    .unary = moe_cpu_unary,
    .router_topk_ex = moe_cpu_router_topk_ex,
    .rope_ex = moe_cpu_rope_ex,
    .mla_attention = moe_cpu_mla_attention,
    .argmax_rows = moe_cpu_argmax_rows,
    .abi_minor = MOE_BACKEND_ABI_MINOR,
    .host_run = cpu_host_run,
    .copy_chunk = cpu_copy_chunk,
    .copy_h2d_ex = cpu_copy_h2d_ex,
    .copy_cancel = cpu_copy_cancel,
    .copy_urge = cpu_copy_urge,
    .copy_timed = cpu_copy_timed,
};
