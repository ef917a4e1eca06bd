/* The cuda backend's graph mode (MOE_CUDA_GRAPHS=1; off by default until a
 * GPU run has measured it: harness/gpu_check.sh, step g).
 *
 * The compute stream's work between two host waits (a stretch: the
 * experts of block N, then block N+1's attention, router and top-k, up to
 * the routing download) is captured into a CUDA graph and launched as one:
 * each compute-stream op opens a capture if none is open
 * (moe_cu_graph_op), and the capture is ended and launched (a flush) when
 * the host needs its results (download, synchronize, event_sync) or when
 * another stream or the host would otherwise see an event out of order
 * (the rules are engine/src/capture_gate.h's, tested there).
 *
 * A decode step's stretches differ (which experts run, how many tokens
 * each), so a graph is captured again every time, not replayed as it is;
 * what is saved is the GPU's per-launch gap (the graph's kernels follow
 * each other without the host) and, with an update instead of an
 * instantiation, most of the graph's set-up.  The executable graphs are
 * cached by a signature of the ops captured (their kinds and matmul
 * shapes): a stretch with a cached signature updates that graph in place
 * (cudaGraphExecUpdate: new kernel arguments, same topology); any other,
 * or an update the runtime refuses, instantiates a new one.
 *
 * Capture mode: relaxed, since the copy feeder's thread and the runtime's
 * host-function thread go on using the other streams meanwhile.  Waits on
 * copies (compute_wait) are captured as external event-wait nodes, records
 * (compute_record, the stall timing) as external event-record nodes.
 * cuBLAS has a fixed workspace in both modes (cu_create), so it never
 * allocates while captured and picks its kernels from the same workspace
 * in both (the same bits).
 *
 * A call that fails while a capture is open: if the failure invalidated
 * the capture (a CUDA error on the stream), the capture is ended and
 * dropped at once (its ops never run, as the failing op's caller is told),
 * so the next call starts clean; a failure before any stream call (a bad
 * argument) leaves the capture as it was.
 *
 * The counts (graphs launched, ops in them, updates, instantiations, what
 * ended each capture) are added to process-wide totals when a backend is
 * destroyed; moe_cuda_graph_summary (moe/cuda.h) gives them as one line,
 * which `moebench run` prints.  The backend itself prints nothing. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/cuda.h"
#include "cuda_internal.h"

#define GRAPH_CACHE 64

typedef struct cu_graph_entry {
  uint64_t sig;
  cudaGraphExec_t exec;
  uint64_t used;
} cu_graph_entry;

typedef struct cu_graph_counts {
  unsigned long launched, ops, instantiated, updated, refused, empty, aborted;
  unsigned long flushes[CU_FLUSH_N];
} cu_graph_counts;

struct cu_graphs {
  uint64_t sig; /* the open capture's signature so far */
  unsigned long n_ops;
  cu_graph_entry cache[GRAPH_CACHE];
  uint64_t tick;
  cu_graph_counts n;
};

/* Every destroyed instance's counts (moe_cuda_graph_summary). */
static pthread_mutex_t g_totals_mu = PTHREAD_MUTEX_INITIALIZER;
static cu_graph_counts g_totals;

static const char *const kFlushNames[CU_FLUSH_N] = {
    "download", "synchronize", "event use", "event record", "event destroy",
    "staging", "scratch", "free", "stall timing", "large upload", "allocation"};

/* ------------------------------------------------------------ lifecycle */

moe_status moe_cu_graph_env(bool *on, moe_error *err) {
  const char *v = getenv("MOE_CUDA_GRAPHS");
  *on = false;
  if (v == NULL || *v == '\0' || strcmp(v, "0") == 0) return MOE_OK;
  if (strcmp(v, "1") != 0)
    return MOE_FAIL(err, MOE_ERR_INVALID, "MOE_CUDA_GRAPHS='%.40s': expected 0 or 1", v);
  *on = true;
  return MOE_OK;
}

/* Under lazy module loading (CUDA's default) a kernel is loaded at its
 * first launch, which graph mode would put inside a capture: ours are
 * loaded here (cudaFuncGetAttributes loads a function).  cuBLAS's own
 * kernels still load at their first use (the GPU check retries a failure
 * with CUDA_MODULE_LOADING=EAGER to tell). */
static moe_status load_kernels(moe_error *err) {
  moe_status st = MOE_OK;
  cudaFuncAttributes a;
  const void *const fns[] = {
      (const void *)k_rmsnorm,     (const void *)k_kv_store,   (const void *)k_attention_ex,
      (const void *)k_rope_ex,     (const void *)k_mla_store,  (const void *)k_mla_attention,
      (const void *)k_unary,       (const void *)k_router_topk_ex, (const void *)k_swiglu,
      (const void *)k_add,         (const void *)k_add_bias,   (const void *)k_embed,
      (const void *)k_gather,      (const void *)k_scatter_add, (const void *)k_to_half,
      (const void *)k_to_bf16,     (const void *)k_argmax_rows};
  for (size_t i = 0; i < sizeof fns / sizeof *fns; i++)
    CUDA_TRY(cudaFuncGetAttributes(&a, fns[i]), err);
cleanup:
  return st;
}

moe_status moe_cu_graph_start(moe_backend *be, moe_error *err) {
  moe_status st = MOE_OK;
  bool on = false;
  MOE_TRY(moe_cu_graph_env(&on, err));
  if (!on) return MOE_OK;
  MOE_TRY(load_kernels(err));
  be->graphs = (cu_graphs *)calloc(1, sizeof *be->graphs);
  MOE_CHECK_ALLOC(be->graphs, err, sizeof *be->graphs);
cleanup:
  return st;
}

/* After the streams are drained (cu_destroy): the counts go to the
 * process's totals, the cached graphs are destroyed. */
void moe_cu_graph_stop(moe_backend *be) {
  cu_graphs *g = be->graphs;
  if (g == NULL) return;
  pthread_mutex_lock(&g_totals_mu);
  g_totals.launched += g->n.launched;
  g_totals.ops += g->n.ops;
  g_totals.instantiated += g->n.instantiated;
  g_totals.updated += g->n.updated;
  g_totals.refused += g->n.refused;
  g_totals.empty += g->n.empty;
  g_totals.aborted += g->n.aborted;
  for (int i = 0; i < CU_FLUSH_N; i++) g_totals.flushes[i] += g->n.flushes[i];
  pthread_mutex_unlock(&g_totals_mu);
  for (int i = 0; i < GRAPH_CACHE; i++)
    if (g->cache[i].exec) (void)cudaGraphExecDestroy(g->cache[i].exec);
  (void)cudaGetLastError();
  free(g);
  be->graphs = NULL;
}

extern "C" size_t moe_cuda_graph_summary(char *buf, size_t cap) {
  if (cap == 0) return 0;
  buf[0] = '\0';
  pthread_mutex_lock(&g_totals_mu);
  const cu_graph_counts t = g_totals;
  pthread_mutex_unlock(&g_totals_mu);
  if (t.launched == 0 && t.aborted == 0) return 0;
  char why[400] = "";
  size_t at = 0;
  for (int i = 0; i < CU_FLUSH_N; i++)
    if (t.flushes[i] && at < sizeof why)
      at += (size_t)snprintf(why + at, sizeof why - at, "%s%s %lu", at ? ", " : "", kFlushNames[i],
                             t.flushes[i]);
  const int n = snprintf(buf, cap,
                         "%lu launched (%lu ops, %.1f per graph), %lu instantiated, %lu updated in "
                         "place, %lu updates refused, %lu empty, %lu aborted; ended by: %s",
                         t.launched, t.ops, t.launched ? (double)t.ops / (double)t.launched : 0.0,
                         t.instantiated, t.updated, t.refused, t.empty, t.aborted,
                         at ? why : "nothing");
  return n < 0 ? 0 : ((size_t)n < cap ? (size_t)n : cap - 1);
}

/* ------------------------------------------------------------ capture */

/* FNV-1a over the 8 bytes of v. */
static uint64_t fold(uint64_t h, uint64_t v) {
  for (int i = 0; i < 8; i++) {
    h ^= (v >> (8 * i)) & 0xffu;
    h *= 0x100000001b3ull;
  }
  return h;
}

uint64_t moe_cu_graph_tag(uint64_t kind, uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
  return fold(fold(fold(fold(fold(0xcbf29ce484222325ull, kind), a), b), c), d);
}

moe_status moe_cu_graph_op(moe_backend *be, uint64_t tag, moe_error *err) {
  moe_status st = MOE_OK;
  cu_graphs *g = be->graphs;
  if (g == NULL) return MOE_OK;
  if (be->gate.open == 0) {
    CUDA_TRY(cudaStreamBeginCapture(be->compute, cudaStreamCaptureModeRelaxed), err);
    moe_gate_begin(&be->gate);
    g->sig = 0xcbf29ce484222325ull;
    g->n_ops = 0;
  }
  g->sig = fold(g->sig, tag);
  g->n_ops++;
cleanup:
  return st;
}

/* The cached graph for sig, or the least recently used entry. */
static cu_graph_entry *entry_for(cu_graphs *g, uint64_t sig) {
  cu_graph_entry *victim = &g->cache[0];
  for (int i = 0; i < GRAPH_CACHE; i++) {
    cu_graph_entry *e = &g->cache[i];
    if (e->exec && e->sig == sig) return e;
    if (e->exec == NULL || (victim->exec && e->used < victim->used)) victim = e;
  }
  if (victim->exec) (void)cudaGraphExecDestroy(victim->exec); /* a launch in flight completes */
  victim->exec = NULL;
  return victim;
}

/* Updates a cached graph in place, or instantiates one; then launches it. */
static moe_status launch(moe_backend *be, cudaGraph_t graph, moe_error *err) {
  moe_status st = MOE_OK;
  cu_graphs *g = be->graphs;
  cu_graph_entry *e = entry_for(g, g->sig);
  if (e->exec) {
    cudaGraphExecUpdateResultInfo info;
    memset(&info, 0, sizeof info);
    const cudaError_t u = cudaGraphExecUpdate(e->exec, graph, &info);
    if (u == cudaSuccess) {
      g->n.updated++;
    } else if (u == cudaErrorGraphExecUpdateFailure) {
      /* another topology under the same signature (a cuBLAS split, a
       * hash collision): an answer, not a failure */
      (void)cudaGetLastError();
      g->n.refused++;
      (void)cudaGraphExecDestroy(e->exec);
      e->exec = NULL;
    } else {
      (void)cudaGetLastError();
      st = MOE_FAIL(err, MOE_ERR_DEVICE, "cudaGraphExecUpdate failed: %s", cudaGetErrorString(u));
      goto cleanup;
    }
  }
  if (e->exec == NULL) {
    CUDA_TRY(cudaGraphInstantiate(&e->exec, graph, 0), err);
    g->n.instantiated++;
  }
  e->sig = g->sig;
  e->used = ++g->tick;
  CUDA_TRY(cudaGraphLaunch(e->exec, be->compute), err);
  g->n.launched++;
  g->n.ops += g->n_ops;
cleanup:
  return st;
}

/* A capture whose ops will never run: timing pairs recorded in it are
 * not pending any more (their events keep older records). */
static void dropped(moe_backend *be, uint64_t id) {
  be->graphs->n.aborted++;
  for (int i = 0; i < STALL_PAIRS; i++)
    if (be->pairs[i].pending && be->pairs[i].mark.rec == id) be->pairs[i].pending = 0;
}

moe_status moe_cu_graph_flush(moe_backend *be, cu_flush_reason why, moe_error *err) {
  moe_status st = MOE_OK;
  cudaGraph_t graph = NULL;
  size_t nodes = 0;
  if (be->graphs == NULL || be->gate.open == 0) return MOE_OK;
  const uint64_t id = be->gate.open;
  moe_gate_end(&be->gate);
  be->graphs->n.flushes[why]++;
  CUDA_TRY(cudaStreamEndCapture(be->compute, &graph), err);
  CUDA_TRY(cudaGraphGetNodes(graph, NULL, &nodes), err);
  if (nodes == 0)
    be->graphs->n.empty++;
  else
    MOE_TRY(launch(be, graph, err));
cleanup:
  if (st != MOE_OK) dropped(be, id);
  if (graph) (void)cudaGraphDestroy(graph);
  return st;
}

moe_status moe_cu_graph_fail(moe_backend *be, moe_status st) {
  cudaStreamCaptureStatus cs = cudaStreamCaptureStatusActive;
  if (st == MOE_OK || be->graphs == NULL || be->gate.open == 0) return st;
  const cudaError_t q = cudaStreamIsCapturing(be->compute, &cs);
  if (q == cudaSuccess && cs == cudaStreamCaptureStatusActive) return st; /* untouched: go on */
  const uint64_t id = be->gate.open;
  cudaGraph_t graph = NULL;
  (void)cudaStreamEndCapture(be->compute, &graph); /* ends it, whatever it answers */
  if (graph) (void)cudaGraphDestroy(graph);
  (void)cudaGetLastError();
  moe_gate_end(&be->gate);
  dropped(be, id);
  return st;
}

/* ------------------------------------------------------------ events */

moe_status moe_cu_graph_use(moe_backend *be, moe_event *ev, moe_error *err) {
  if (ev == NULL || !moe_gate_flush_for_use(&be->gate, &ev->mark)) return MOE_OK;
  return moe_cu_graph_flush(be, CU_FLUSH_USE, err);
}

moe_status moe_cu_graph_foreign_record(moe_backend *be, moe_event *ev, moe_error *err) {
  moe_status st = MOE_OK;
  if (ev == NULL) return MOE_OK;
  if (moe_gate_flush_for_record(&be->gate, &ev->mark, 0))
    MOE_TRY(moe_cu_graph_flush(be, CU_FLUSH_RECORD, err));
  moe_gate_recorded(&be->gate, &ev->mark, 0);
cleanup:
  return st;
}

moe_status moe_cu_graph_record(moe_backend *be, cudaEvent_t ev, moe_capture_mark *mark,
                               moe_error *err) {
  moe_status st = MOE_OK;
  if (moe_gate_flush_for_record(&be->gate, mark, 1)) /* never open without graph mode */
    MOE_TRY(moe_cu_graph_flush(be, CU_FLUSH_RECORD, err));
  MOE_TRY(moe_cu_graph_op(be, 0x7265636f7264ull /* "record" */, err));
  if (be->gate.open) {
    CUDA_TRY(cudaEventRecordWithFlags(ev, be->compute, cudaEventRecordExternal), err);
  } else {
    CUDA_TRY(cudaEventRecord(ev, be->compute), err);
  }
  moe_gate_recorded(&be->gate, mark, 1);
cleanup:
  return st;
}

moe_status moe_cu_graph_wait(moe_backend *be, moe_event *ev, moe_error *err) {
  moe_status st = MOE_OK;
  MOE_TRY(moe_cu_graph_op(be, 0x77616974ull /* "wait" */, err));
  if (!moe_gate_wait(&be->gate, &ev->mark)) return MOE_OK; /* the stream orders it */
  CUDA_TRY(cudaStreamWaitEvent(be->compute, ev->ev, be->gate.open ? cudaEventWaitExternal : 0),
           err);
cleanup:
  return st;
}
