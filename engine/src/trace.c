/* Op trace: a streaming Chrome trace-event writer, and a backend decorator
 * that records every operation of a device in it. */
#include "moe/device.h"
#include "moe/trace.h"

#include <errno.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "capture_gate.h"
#include "moe/clock.h"
#include "moe/cost.h"
#include "moe/dtype.h"
#include "moe/publish.h"

struct moe_trace {
  moe_publish out; /* the file, published whole at close */
  FILE *f;         /* out.f */
  pthread_mutex_t mu;
  double t_origin;   /* host clock at open: trace time 0 */
  int layer, expert; /* context of the next ops */
  unsigned long n;   /* events written */
  int io_failed;
  /* the traced device's clock, when it has its own (modeled) */
  double (*clock_fn)(moe_backend *be);
  moe_backend *clock_be;
  /* backend calls and host waits (totals, and at the last "forward" mark),
   * and per forward pass: the calls and waits between two marks */
  unsigned long calls, syncs, calls_mark, syncs_mark;
  unsigned long *step_calls, *step_syncs;
  size_t n_steps, cap_steps;
  bool marked;
  /* the captures the cuda backend's graph mode would make of these calls
   * (capture_gate.h's rules; its own flushes for its staging and timing
   * rings are not modelled): graphs with at least one op, their ops, and
   * per forward pass */
  moe_capture_gate gate;
  unsigned long cap_ops, graphs, graph_ops, graphs_mark;
  unsigned long *step_graphs;
};

moe_status moe_trace_open(moe_trace **out, const char *path, moe_error *err) {
  *out = NULL;
  moe_trace *t = calloc(1, sizeof *t);
  if (t == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "out of host memory (trace)");
  const moe_status st = moe_publish_open(&t->out, path, "the trace", err);
  if (st != MOE_OK) {
    free(t);
    return st;
  }
  t->f = t->out.f;
  pthread_mutex_init(&t->mu, NULL);
  t->t_origin = moe_clock_s();
  t->layer = t->expert = -1;
  fputs("{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n", t->f);
  /* name the process and the two tracks */
  fputs("{\"ph\": \"M\", \"pid\": 1, \"name\": \"process_name\", \"args\": {\"name\": \"moe engine\"}},\n"
        "{\"ph\": \"M\", \"pid\": 1, \"tid\": 1, \"name\": \"thread_name\", \"args\": {\"name\": \"compute\"}},\n"
        "{\"ph\": \"M\", \"pid\": 1, \"tid\": 2, \"name\": \"thread_name\", \"args\": {\"name\": \"copy\"}}",
        t->f);
  *out = t;
  return MOE_OK;
}

moe_status moe_trace_close(moe_trace *t, moe_error *err) {
  if (t == NULL) return MOE_OK;
  pthread_mutex_lock(&t->mu);
  if (fputs("\n]}\n", t->f) == EOF || t->io_failed) moe_publish_fail(&t->out);
  pthread_mutex_unlock(&t->mu);
  const moe_status st = moe_publish_commit(&t->out, err);
  pthread_mutex_destroy(&t->mu);
  free(t->step_calls);
  free(t->step_syncs);
  free(t->step_graphs);
  free(t);
  return st;
}

/* Whether an op of this name makes the host wait for the device (the
 * contract's blocking calls: download, synchronize, event_sync). */
static bool blocks_host(const char *name) {
  return strcmp(name, "download") == 0 || strcmp(name, "download many") == 0 ||
         strcmp(name, "synchronize") == 0 || strcmp(name, "host waits") == 0;
}

/* Closes the interval since the last forward mark (t->mu held). */
static void close_step(moe_trace *t) {
  if (!t->marked) return;
  if (t->n_steps == t->cap_steps) {
    size_t cap = t->cap_steps ? 2 * t->cap_steps : 64;
    unsigned long *a = realloc(t->step_calls, cap * sizeof *a);
    if (a) t->step_calls = a;
    unsigned long *b = a ? realloc(t->step_syncs, cap * sizeof *b) : NULL;
    if (b) t->step_syncs = b;
    unsigned long *g = b ? realloc(t->step_graphs, cap * sizeof *g) : NULL;
    if (g) t->step_graphs = g;
    if (a == NULL || b == NULL || g == NULL) return; /* out of memory: the step is not counted */
    t->cap_steps = cap;
  }
  t->step_calls[t->n_steps] = t->calls - t->calls_mark;
  t->step_syncs[t->n_steps] = t->syncs - t->syncs_mark;
  t->step_graphs[t->n_steps] = t->graphs - t->graphs_mark;
  t->n_steps++;
}

static int cmp_ulong(const void *a, const void *b) {
  const unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;
  return (x > y) - (x < y);
}

static double median_ulong(const unsigned long *v, size_t n) {
  if (n == 0) return 0.0;
  unsigned long *c = malloc(n * sizeof *c);
  if (c == NULL) return 0.0;
  memcpy(c, v, n * sizeof *c);
  qsort(c, n, sizeof *c, cmp_ulong);
  const double m = n % 2 ? (double)c[n / 2] : 0.5 * ((double)c[n / 2 - 1] + (double)c[n / 2]);
  free(c);
  return m;
}

void moe_trace_get_counts(moe_trace *t, moe_trace_counts *out) {
  memset(out, 0, sizeof *out);
  if (t == NULL) return;
  pthread_mutex_lock(&t->mu);
  out->calls = t->calls;
  out->host_syncs = t->syncs;
  /* the passes: every closed interval, and the open one up to now */
  size_t n = t->n_steps;
  close_step(t);
  const size_t all = t->n_steps;
  t->n_steps = n;
  out->forward_passes = (int)all;
  /* decode steps: every pass after the first (the prefill) */
  if (all > 1) {
    out->calls_per_step = median_ulong(t->step_calls + 1, all - 1);
    out->syncs_per_step = median_ulong(t->step_syncs + 1, all - 1);
    out->graphs_per_step = median_ulong(t->step_graphs + 1, all - 1);
  } else if (all == 1) {
    out->calls_per_step = (double)t->step_calls[0];
    out->syncs_per_step = (double)t->step_syncs[0];
    out->graphs_per_step = (double)t->step_graphs[0];
  }
  out->graphs = t->graphs;
  out->ops_per_graph = t->graphs ? (double)t->graph_ops / (double)t->graphs : 0.0;
  pthread_mutex_unlock(&t->mu);
}

void moe_trace_context(moe_trace *t, int layer, int expert) {
  if (t == NULL) return;
  pthread_mutex_lock(&t->mu);
  t->layer = layer;
  t->expert = expert;
  pthread_mutex_unlock(&t->mu);
}

/* One event: a complete span ("X"), or an instant ("i", t1 ignored).
 * ev: the event object it records, signals or waits for (0: none); mm: a
 * matmul's m, rows, cols and weight dtype (NULL: not a matmul). */
typedef struct op_shape {
  size_t m, rows, cols;
  int dtype;
} op_shape;

static void emit(moe_trace *t, int track, const char *name, bool instant, double t0, double t1,
                 double flops, double bytes, unsigned long ev, const op_shape *mm) {
  if (t == NULL) return;
  pthread_mutex_lock(&t->mu);
  const double ts = (t0 - t->t_origin) * 1e6, dur = (t1 - t0) * 1e6;
  int w;
  if (instant)
    w = fprintf(t->f, ",\n{\"ph\": \"i\", \"s\": \"t\", \"pid\": 1, \"tid\": %d, \"name\": \"%s\", "
                      "\"ts\": %.3f, \"args\": {\"event\": %lu, \"bytes\": %.0f}}",
                track, name, ts, ev, bytes);
  else
    w = fprintf(t->f,
                ",\n{\"ph\": \"X\", \"pid\": 1, \"tid\": %d, \"name\": \"%s\", \"ts\": %.3f, "
                "\"dur\": %.3f, \"args\": {\"layer\": %d, \"expert\": %d, \"flops\": %.0f, "
                "\"bytes\": %.0f",
                track, name, ts, dur < 0 ? 0.0 : dur, track == MOE_TRACE_COPY ? -1 : t->layer,
                track == MOE_TRACE_COPY ? -1 : t->expert, flops, bytes);
  if (w >= 0 && !instant && ev) w = fprintf(t->f, ", \"event\": %lu", ev);
  if (w >= 0 && !instant && mm)
    w = fprintf(t->f, ", \"m\": %zu, \"rows\": %zu, \"cols\": %zu, \"dtype\": \"%s\"", mm->m,
                mm->rows, mm->cols, moe_dtype_name((moe_dtype)mm->dtype));
  if (w >= 0 && !instant) w = fputs("}}", t->f);
  if (w < 0) t->io_failed = 1;
  t->n++;
  if (track == MOE_TRACE_COMPUTE) { /* a backend call (marks of the engine are not) */
    t->calls++;
    if (blocks_host(name)) t->syncs++;
  }
  pthread_mutex_unlock(&t->mu);
}

void moe_trace_op(moe_trace *t, int track, const char *name, double t0, double t1, double flops,
                  double bytes) {
  emit(t, track, name, false, t0, t1, flops, bytes, 0, NULL);
}

void moe_trace_mark(moe_trace *t, const char *name) {
  if (t == NULL) return;
  const double now = t->clock_fn ? t->clock_fn(t->clock_be) : moe_clock_s();
  emit(t, MOE_TRACE_COMPUTE, name, true, now, now, 0, 0, 0, NULL);
  pthread_mutex_lock(&t->mu);
  t->calls--; /* the engine's mark is not a backend call */
  if (strcmp(name, "forward") == 0) {
    close_step(t);
    t->calls_mark = t->calls;
    t->syncs_mark = t->syncs;
    t->graphs_mark = t->graphs;
    t->marked = true;
  }
  pthread_mutex_unlock(&t->mu);
}

/* ---------------------------------------------------------------- decorator */

/* The wrapped instance: what the device's table now receives as `be`. */
typedef struct traced {
  moe_backend *be;          /* the real instance */
  moe_backend_ops *ops;     /* the real (normalized) table, owned */
  moe_trace *t;
  unsigned long next_event; /* ids of the events it created, from 1 */
} traced;

/* An event as the engine sees it through the decorator: the real one and
 * the id the trace names it by. */
typedef struct traced_event {
  moe_event *real;
  unsigned long id;
  moe_capture_mark mark; /* graph mode's model (capture_gate.h) */
} traced_event;

#define EV(ev) ((ev) ? ((traced_event *)(void *)(ev))->real : NULL)
#define EVID(ev) ((ev) ? ((traced_event *)(void *)(ev))->id : 0ul)

#define T(be) ((traced *)(void *)(be))
#define REAL(be) T(be)->ops
#define INNER(be) T(be)->be

/* ---- graph mode's model: the captures the cuda backend would make of
 * these calls with MOE_CUDA_GRAPHS=1 (cuda_graph.cu), by capture_gate.h's
 * rules: each compute-stream call joins the open capture (opening one),
 * host waits end it, and event uses and records end it where the gate
 * says.  A capture with no call is not a graph. */
#define MARK(ev) ((ev) ? &((traced_event *)(void *)(ev))->mark : NULL)

enum { G_OP, G_FLUSH, G_DOWNLOAD, G_USE, G_RECORD, G_FOREIGN, G_WAIT, G_DESTROY };

static void g_flush(moe_trace *t) { /* t->mu held */
  if (t->gate.open == 0) return;
  moe_gate_end(&t->gate);
  if (t->cap_ops) {
    t->graphs++;
    t->graph_ops += t->cap_ops;
  }
  t->cap_ops = 0;
}

static void g_op(moe_trace *t) { /* t->mu held */
  if (t->gate.open == 0) moe_gate_begin(&t->gate);
  t->cap_ops++;
}

/* One call of kind (G_*) on ev (NULL: none). */
static void gate(moe_trace *t, int kind, moe_event *ev) {
  moe_capture_mark *m = MARK(ev);
  pthread_mutex_lock(&t->mu);
  switch (kind) {
  case G_OP: g_op(t); break;
  case G_FLUSH: g_flush(t); break;
  case G_DOWNLOAD: g_op(t), g_flush(t); break; /* the copies join, then the host waits */
  case G_USE:
    if (m && moe_gate_flush_for_use(&t->gate, m)) g_flush(t);
    break;
  case G_RECORD:
    if (m && moe_gate_flush_for_record(&t->gate, m, 1)) g_flush(t);
    g_op(t);
    if (m) moe_gate_recorded(&t->gate, m, 1);
    break;
  case G_FOREIGN:
    if (m && moe_gate_flush_for_record(&t->gate, m, 0)) g_flush(t);
    if (m) moe_gate_recorded(&t->gate, m, 0);
    break;
  case G_WAIT: /* dropped when the open capture recorded ev (the stream orders it) */
    if (m && !moe_gate_ordered(&t->gate, m)) {
      g_op(t);
      (void)moe_gate_wait(&t->gate, m);
    }
    break;
  default: /* G_DESTROY */
    if (m && moe_gate_flush_for_destroy(&t->gate, m)) g_flush(t);
    break;
  }
  pthread_mutex_unlock(&t->mu);
}
#define GATE(be, kind, ev) gate(T(be)->t, (kind), (ev))

static void on_copy(void *ctx, size_t bytes, double t0, double t1) {
  moe_trace_op(ctx, MOE_TRACE_COPY, "copy h2d", t0, t1, 0, (double)bytes);
}

/* The time of a traced device: its modeled clock, else the host's. */
static double clock_of(moe_backend *be) {
  return REAL(be)->modeled_seconds ? REAL(be)->modeled_seconds(INNER(be)) : moe_clock_s();
}

/* Times a compute-stream call and records it; gkind and gev are what the
 * graph-mode model makes of it. */
#define TIMED_G(be, gkind, gev, name, flops, bytes, ev, mm, call)            \
  do {                                                                       \
    GATE(be, (gkind), (gev));                                                \
    const double t0_ = clock_of(be);                                         \
    moe_status st_ = (call);                                                 \
    emit(T(be)->t, MOE_TRACE_COMPUTE, name, false, t0_, clock_of(be), (flops), (bytes), (ev), (mm)); \
    return st_;                                                              \
  } while (0)
#define TIMED_EX(be, name, flops, bytes, ev, mm, call) \
  TIMED_G(be, G_OP, NULL, name, flops, bytes, ev, mm, call)
#define TIMED(be, name, flops, bytes, call) TIMED_EX(be, name, flops, bytes, 0, NULL, call)

/* An instant on the compute track: what the host issued that orders the
 * streams (copy issues, records, waits), for a replay of the trace. */
static void mark(moe_backend *be, const char *name, unsigned long ev, double bytes) {
  const double now = clock_of(be);
  emit(T(be)->t, MOE_TRACE_COMPUTE, name, true, now, now, 0, bytes, ev, NULL);
}

static void tr_destroy(moe_backend *be) {
  traced *w = T(be);
  if (w->ops->set_copy_observer) {
    moe_error ignored = {0};
    w->ops->set_copy_observer(w->be, NULL, NULL);
    (void)w->ops->synchronize(w->be, &ignored); /* no observer call left in flight */
  }
  w->ops->destroy(w->be);
  free(w->ops);
  free(w);
}

static const char *tr_describe(moe_backend *be) { return REAL(be)->describe(INNER(be)); }
static size_t tr_capacity(moe_backend *be) { return REAL(be)->device_capacity(INNER(be)); }
/* memory calls end a capture (the cuda backend's graph mode flushes) */
static moe_status tr_alloc(moe_backend *be, size_t n, void **p, moe_error *e) {
  GATE(be, G_FLUSH, NULL);
  return REAL(be)->device_alloc(INNER(be), n, p, e);
}
static void tr_free(moe_backend *be, void *p) {
  GATE(be, G_FLUSH, NULL);
  REAL(be)->device_free(INNER(be), p);
}
static moe_status tr_halloc(moe_backend *be, size_t n, void **p, moe_error *e) {
  GATE(be, G_FLUSH, NULL);
  return REAL(be)->host_alloc(INNER(be), n, p, e);
}
static void tr_hfree(moe_backend *be, void *p) {
  GATE(be, G_FLUSH, NULL);
  REAL(be)->host_free(INNER(be), p);
}
static moe_status tr_ev_create(moe_backend *be, moe_event **ev, moe_error *e) {
  *ev = NULL;
  traced_event *w = calloc(1, sizeof *w);
  if (w == NULL) return MOE_FAIL(e, MOE_ERR_OOM, "out of host memory (trace)");
  moe_status st = REAL(be)->event_create(INNER(be), &w->real, e);
  if (st != MOE_OK) return free(w), st;
  w->id = ++T(be)->next_event;
  *ev = (moe_event *)(void *)w;
  return MOE_OK;
}
static void tr_ev_destroy(moe_backend *be, moe_event *ev) {
  if (ev == NULL) return;
  GATE(be, G_DESTROY, ev);
  REAL(be)->event_destroy(INNER(be), EV(ev));
  free(ev);
}
static moe_status tr_copy(moe_backend *be, void *d, const void *s, size_t n, moe_event *ev, moe_error *e) {
  mark(be, "copy issue", EVID(ev), (double)n);
  GATE(be, G_FOREIGN, ev);
  return REAL(be)->copy_h2d_async(INNER(be), d, s, n, EV(ev), e);
}
/* Overtakable copies (ABI 1.8): a normal one is marked as a copy_wait
 * plus a copy issue (what a FIFO model needs); an urgent one, a cancel
 * and an urge are marks of their own. */
static size_t tr_copy_chunk(moe_backend *be) { return REAL(be)->copy_chunk(INNER(be)); }
static moe_status tr_copy_ex(moe_backend *be, void *d, const void *s, size_t n, moe_event *wait_ev,
                             moe_event *ev, int urgent, moe_error *e) {
  if (wait_ev) mark(be, "copy waits", EVID(wait_ev), 0);
  mark(be, urgent ? "urgent copy issue" : "copy issue", EVID(ev), (double)n);
  GATE(be, G_USE, wait_ev);
  GATE(be, G_FOREIGN, ev);
  return REAL(be)->copy_h2d_ex(INNER(be), d, s, n, EV(wait_ev), EV(ev), urgent, e);
}
static int tr_copy_cancel(moe_backend *be, moe_event *ev) {
  const int r = REAL(be)->copy_cancel(INNER(be), EV(ev));
  if (r) mark(be, "copy cancel", EVID(ev), 0);
  return r;
}
static int tr_copy_timed(moe_backend *be) { return REAL(be)->copy_timed(INNER(be)); }
static int tr_copy_urge(moe_backend *be, moe_event *ev) {
  const int r = REAL(be)->copy_urge(INNER(be), EV(ev));
  if (r) mark(be, "copy urge", EVID(ev), 0);
  return r;
}
static moe_status tr_cwait(moe_backend *be, moe_event *ev, moe_error *e) {
  TIMED_G(be, G_WAIT, ev, "wait for copy", 0, 0, EVID(ev), NULL,
          REAL(be)->compute_wait(INNER(be), EV(ev), e));
}
static moe_status tr_esync(moe_backend *be, moe_event *ev, moe_error *e) {
  TIMED_G(be, G_USE, ev, "host waits", 0, 0, EVID(ev), NULL,
          REAL(be)->event_sync(INNER(be), EV(ev), e));
}
static moe_status tr_upload(moe_backend *be, void *d, const void *s, size_t n, moe_error *e) {
  TIMED(be, "upload", 0, (double)n, REAL(be)->upload(INNER(be), d, s, n, e));
}
static moe_status tr_download(moe_backend *be, void *d, const void *s, size_t n, moe_error *e) {
  TIMED_G(be, G_DOWNLOAD, NULL, "download", 0, (double)n, 0, NULL,
          REAL(be)->download(INNER(be), d, s, n, e));
}
static moe_status tr_download_many(moe_backend *be, const moe_xfer *x, int n, moe_error *e) {
  double bytes = 0;
  for (int i = 0; i < n; i++) bytes += (double)x[i].bytes;
  TIMED_G(be, G_DOWNLOAD, NULL, "download many", 0, bytes, 0, NULL,
          REAL(be)->download_many(INNER(be), x, n, e));
}
static moe_status tr_argmax(moe_backend *be, int32_t *idx, const float *x, size_t m, int n,
                            moe_error *e) {
  TIMED(be, "argmax", (double)m * (double)n, (double)m * (double)n * sizeof(float),
        REAL(be)->argmax_rows(INNER(be), idx, x, m, n, e));
}
static moe_status tr_sync(moe_backend *be, moe_error *e) {
  TIMED_G(be, G_FLUSH, NULL, "synchronize", 0, 0, 0, NULL, REAL(be)->synchronize(INNER(be), e));
}
static moe_status tr_crecord(moe_backend *be, moe_event *ev, moe_error *e) {
  mark(be, "record", EVID(ev), 0);
  GATE(be, G_RECORD, ev);
  return REAL(be)->compute_record(INNER(be), EV(ev), e);
}
static moe_status tr_copy_wait(moe_backend *be, moe_event *ev, moe_error *e) {
  mark(be, "copy waits", EVID(ev), 0);
  GATE(be, G_USE, ev);
  return REAL(be)->copy_wait(INNER(be), EV(ev), e);
}
/* A host job: an instant at its issue (the job itself runs on the host
 * stream, off the compute track), with the work a modeled backend charges. */
static moe_status tr_host_run(moe_backend *be, void (*fn)(void *), void *ctx,
                              const moe_host_work *w, moe_event *wait_ev, moe_event *done_ev,
                              moe_error *e) {
  const double now = clock_of(be);
  emit(T(be)->t, MOE_TRACE_COMPUTE, "host job", true, now, now, w ? w->flops : 0,
       w ? w->bytes : 0, EVID(done_ev), NULL);
  GATE(be, G_USE, wait_ev);
  GATE(be, G_FOREIGN, done_ev);
  return REAL(be)->host_run(INNER(be), fn, ctx, w, EV(wait_ev), EV(done_ev), e);
}
static int tr_done(moe_backend *be, moe_event *ev) {
  moe_trace *t = T(be)->t;
  pthread_mutex_lock(&t->mu);
  t->calls++; /* a query (cudaEventQuery): a call, not recorded as an event */
  pthread_mutex_unlock(&t->mu);
  gate(t, G_USE, ev);
  return REAL(be)->event_done(INNER(be), EV(ev));
}

static moe_status tr_matmul(moe_backend *be, float *y, const float *x, size_t m, const moe_weight *w,
                            const moe_weight *b, moe_error *e) {
  const double wbytes = (double)w->rows * (double)w->cols * (double)moe_dtype_size(w->dtype);
  const op_shape mm = {m, w->rows, w->cols, (int)w->dtype};
  TIMED_EX(be, "matmul", 2.0 * (double)m * (double)w->rows * (double)w->cols,
           wbytes + 4.0 * (double)m * (double)(w->rows + w->cols), 0, &mm,
           REAL(be)->matmul(INNER(be), y, x, m, w, b, e));
}
static moe_status tr_rmsnorm(moe_backend *be, float *y, const float *x, size_t m, const moe_weight *g,
                             float eps, moe_error *e) {
  const moe_op_count k = moe_count_rmsnorm(m, g->cols);
  TIMED(be, "rmsnorm", k.flops, k.bytes,
        REAL(be)->rmsnorm(INNER(be), y, x, m, g, eps, e));
}
static moe_status tr_rope(moe_backend *be, float *x, size_t m, const int32_t *pos, int nh, int hd,
                          float theta, moe_error *e) {
  const moe_op_count k = moe_count_rope(m, nh, hd);
  TIMED(be, "rope", k.flops, k.bytes,
        REAL(be)->rope(INNER(be), x, m, pos, nh, hd, theta, e));
}
static moe_status tr_kv(moe_backend *be, float *kc, float *vc, const float *k, const float *v,
                        const moe_attn_shape *s, moe_error *e) {
  const moe_op_count c = moe_count_kv_store(s);
  TIMED(be, "kv store", c.flops, c.bytes,
        REAL(be)->kv_store(INNER(be), kc, vc, k, v, s, e));
}
static moe_status tr_attn(moe_backend *be, float *o, const float *q, const float *kc, const float *vc,
                          const moe_attn_shape *s, moe_error *e) {
  const moe_op_count k = moe_count_attention(s);
  TIMED(be, "attention", k.flops, k.bytes, REAL(be)->attention(INNER(be), o, q, kc, vc, s, e));
}
static moe_status tr_attn_ex(moe_backend *be, float *o, const float *q, const float *kc,
                             const float *vc, const moe_attn_ex *a, moe_error *e) {
  const moe_op_count k = moe_count_attention_ex(a);
  TIMED(be, "attention", k.flops, k.bytes, REAL(be)->attention_ex(INNER(be), o, q, kc, vc, a, e));
}
static moe_status tr_unary(moe_backend *be, float *y, const float *x, size_t n, moe_unary_op op,
                           float alpha, moe_error *e) {
  const moe_op_count k = moe_count_unary(n);
  TIMED(be, op == MOE_UNARY_RELU ? "relu" : "scale", k.flops, k.bytes,
        REAL(be)->unary(INNER(be), y, x, n, op, alpha, e));
}
static moe_status tr_topk(moe_backend *be, int32_t *idx, float *w, const float *l, size_t m, int n,
                          int k, bool renorm, const moe_weight *b, moe_error *e) {
  const moe_op_count c = moe_count_router(m, n, false);
  TIMED(be, "router top-k", c.flops, c.bytes,
        REAL(be)->router_topk(INNER(be), idx, w, l, m, n, k, renorm, b, e));
}
static moe_status tr_topk_ex(moe_backend *be, int32_t *idx, float *w, const float *l, size_t m, int n,
                             const moe_router_ex *r, moe_error *e) {
  /* the legacy router (SOFTMAX_LOGITS) counts as the plain top-k, as the sim charges it */
  const moe_op_count c = moe_count_router(m, n, r->scoring != MOE_SCORING_SOFTMAX_LOGITS);
  TIMED(be, "router top-k", c.flops, c.bytes,
        REAL(be)->router_topk_ex(INNER(be), idx, w, l, m, n, r, e));
}
static moe_status tr_rope_ex(moe_backend *be, float *x, size_t m, const int32_t *pos,
                             const moe_rope_ex *r, moe_error *e) {
  const moe_op_count k = m ? moe_count_rope_ex(m, r) : (moe_op_count){0, 0};
  TIMED(be, "rope", k.flops, k.bytes, REAL(be)->rope_ex(INNER(be), x, m, pos, r, e));
}
static moe_status tr_mla(moe_backend *be, float *o, const float *q, float *cc, float *pc,
                         const float *c, const float *p, const moe_weight *w,
                         const moe_mla_shape *s, moe_error *e) {
  const moe_op_count k = moe_count_mla(s, w->dtype);
  TIMED(be, "attention", k.flops, k.bytes,
        REAL(be)->mla_attention(INNER(be), o, q, cc, pc, c, p, w, s, e));
}
static moe_status tr_swiglu(moe_backend *be, float *y, const float *g, const float *u, size_t n,
                            moe_error *e) {
  const moe_op_count k = moe_count_swiglu(n);
  TIMED(be, "swiglu", k.flops, k.bytes, REAL(be)->swiglu(INNER(be), y, g, u, n, e));
}
static moe_status tr_add(moe_backend *be, float *y, const float *x, size_t n, moe_error *e) {
  const moe_op_count k = moe_count_add(n);
  TIMED(be, "add", k.flops, k.bytes, REAL(be)->add(INNER(be), y, x, n, e));
}
static moe_status tr_embed(moe_backend *be, float *y, const moe_weight *t, const int32_t *ids, size_t m,
                           moe_error *e) {
  const moe_op_count k = moe_count_embed(m, t->cols);
  TIMED(be, "embed", k.flops, k.bytes, REAL(be)->embed(INNER(be), y, t, ids, m, e));
}
static moe_status tr_gather(moe_backend *be, float *d, const float *s, const int32_t *r, size_t n,
                            size_t dim, moe_error *e) {
  const moe_op_count k = moe_count_gather(n, dim);
  TIMED(be, "gather rows", k.flops, k.bytes, REAL(be)->gather_rows(INNER(be), d, s, r, n, dim, e));
}
static moe_status tr_scatter(moe_backend *be, float *d, const float *s, const int32_t *r,
                             const float *sc, size_t st, bool sig, size_t n, size_t dim, moe_error *e) {
  const moe_op_count k = moe_count_scatter(n, dim);
  TIMED(be, "scatter-add rows", k.flops, k.bytes,
        REAL(be)->scatter_add_rows(INNER(be), d, s, r, sc, st, sig, n, dim, e));
}
static size_t tr_ws_bytes(moe_backend *be, size_t r, size_t c) {
  return REAL(be)->workspace_bytes(INNER(be), r, c);
}
static void tr_set_ws(moe_backend *be, void *p, size_t n) { REAL(be)->set_workspace(INNER(be), p, n); }
static moe_status tr_hreg(moe_backend *be, void *p, size_t n, moe_error *e) {
  GATE(be, G_FLUSH, NULL);
  return REAL(be)->host_register(INNER(be), p, n, e);
}
static void tr_hunreg(moe_backend *be, void *p) {
  GATE(be, G_FLUSH, NULL);
  REAL(be)->host_unregister(INNER(be), p);
}
static size_t tr_used(moe_backend *be) { return REAL(be)->device_used(INNER(be)); }
static const char *tr_name(moe_backend *be) { return moe_backend_device_name(REAL(be), INNER(be)); }
static double tr_stall(moe_backend *be) { return REAL(be)->stall_seconds(INNER(be)); }
static double tr_modeled(moe_backend *be) { return REAL(be)->modeled_seconds(INNER(be)); }
static void tr_context(moe_backend *be, int layer, int expert, unsigned long long step) {
  REAL(be)->set_context(INNER(be), layer, expert, step);
}

/* The optional methods of r, wrapped where r has them (absent stays
 * absent). */
static void wrap_optional(moe_backend_ops *o, const moe_backend_ops *r) {
  /* the legacy methods of a table before ABI 1.6 (backend.h) */
  o->rope = r->rope ? tr_rope : NULL;
  o->attention = r->attention ? tr_attn : NULL;
  o->router_topk = r->router_topk ? tr_topk : NULL;
  o->workspace_bytes = r->workspace_bytes ? tr_ws_bytes : NULL;
  o->set_workspace = r->set_workspace ? tr_set_ws : NULL;
  o->host_register = r->host_register ? tr_hreg : NULL;
  o->host_unregister = r->host_unregister ? tr_hunreg : NULL;
  o->device_used = r->device_used ? tr_used : NULL;
  o->device_name = tr_name;
  o->stall_seconds = r->stall_seconds ? tr_stall : NULL;
  o->attention_ex = r->attention_ex ? tr_attn_ex : NULL;
  o->unary = r->unary ? tr_unary : NULL;
  o->modeled_seconds = r->modeled_seconds ? tr_modeled : NULL;
  o->set_context = r->set_context ? tr_context : NULL;
  o->router_topk_ex = r->router_topk_ex ? tr_topk_ex : NULL;
  o->rope_ex = r->rope_ex ? tr_rope_ex : NULL;
  o->mla_attention = r->mla_attention ? tr_mla : NULL;
  o->download_many = r->download_many ? tr_download_many : NULL;
  o->argmax_rows = r->argmax_rows ? tr_argmax : NULL;
  o->host_run = r->host_run ? tr_host_run : NULL;
  const bool urgent = r->copy_h2d_ex != NULL; /* all four or none (validated) */
  o->copy_chunk = urgent ? tr_copy_chunk : NULL;
  o->copy_h2d_ex = urgent ? tr_copy_ex : NULL;
  o->copy_cancel = urgent ? tr_copy_cancel : NULL;
  o->copy_urge = urgent ? tr_copy_urge : NULL;
  o->copy_timed = r->copy_timed ? tr_copy_timed : NULL;
}

moe_status moe_device_trace(moe_device *dev, moe_trace *t, moe_error *err) {
  if (dev->ops == NULL || dev->be == NULL)
    return MOE_FAIL(err, MOE_ERR_INVALID, "trace: the device is not open");
  if (dev->n_allocs > 0)
    return MOE_FAIL(err, MOE_ERR_INVALID, "trace: attach it before the first allocation");
  traced *w = calloc(1, sizeof *w);
  moe_backend_ops *o = malloc(sizeof *o);
  if (w == NULL || o == NULL) {
    free(w);
    free(o);
    return MOE_FAIL(err, MOE_ERR_OOM, "out of host memory (trace)");
  }
  const moe_backend_ops *r = dev->ops;
  w->be = dev->be;
  w->ops = (moe_backend_ops *)r; /* the device's own copy; freed by tr_destroy */
  w->t = t;
  *o = *r;
  o->destroy = tr_destroy;
  o->describe = tr_describe;
  o->device_capacity = tr_capacity;
  o->device_alloc = tr_alloc;
  o->device_free = tr_free;
  o->host_alloc = tr_halloc;
  o->host_free = tr_hfree;
  o->event_create = tr_ev_create;
  o->event_destroy = tr_ev_destroy;
  o->copy_h2d_async = tr_copy;
  o->compute_wait = tr_cwait;
  o->event_sync = tr_esync;
  o->upload = tr_upload;
  o->download = tr_download;
  o->synchronize = tr_sync;
  o->compute_record = tr_crecord;
  o->copy_wait = tr_copy_wait;
  o->event_done = tr_done;
  o->matmul = tr_matmul;
  o->rmsnorm = tr_rmsnorm;
  o->kv_store = tr_kv;
  o->swiglu = tr_swiglu;
  o->add = tr_add;
  o->embed = tr_embed;
  o->gather_rows = tr_gather;
  o->scatter_add_rows = tr_scatter;
  wrap_optional(o, r);
  if (r->modeled_seconds) {
    t->t_origin = 0; /* modeled time starts at 0 */
    t->clock_fn = r->modeled_seconds;
    t->clock_be = w->be;
  }
  /* which clock the times are: the host's (measured) or the device's model */
  pthread_mutex_lock(&t->mu);
  fprintf(t->f, ",\n{\"ph\": \"M\", \"pid\": 1, \"name\": \"moe_clock\", \"args\": {\"clock\": \"%s\", "
                "\"backend\": \"%s\"}}",
          r->modeled_seconds ? "modeled" : "measured",
          strspn(r->name, "abcdefghijklmnopqrstuvwxyz0123456789-") == strlen(r->name) ? r->name : "?");
  pthread_mutex_unlock(&t->mu);
  o->set_copy_observer = NULL; /* the trace owns the real one */
  if (r->set_copy_observer) r->set_copy_observer(w->be, on_copy, t);
  dev->ops = o;
  dev->be = (moe_backend *)(void *)w;
  dev->trace = t;
  return MOE_OK;
}
