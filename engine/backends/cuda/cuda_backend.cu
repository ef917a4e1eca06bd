/* The cuda backend: the same engine and policies on an NVIDIA GPU.
 *
 * Streams: `compute` runs every kernel and cuBLAS call in order; `copy`
 * runs host-to-device expert copies, each followed by a cudaEvent record,
 * so copies overlap compute for real.  compute_wait is cudaStreamWaitEvent:
 * the host does not block, the GPU orders the work.  Expert weights are
 * copied from pinned host memory (the engine registers the model's expert
 * slab with host_register), so the copies are truly asynchronous.  `host`
 * (ABI 1.7, host_run) runs host jobs with cudaLaunchHostFunc on the
 * runtime's own thread, in issue order, ordered against the other streams
 * by cudaStreamWaitEvent and an event record, as copies are.
 *
 * Files: this one (the table, lifecycle, memory, copies, events),
 * cuda_ops.cu (the math ops), cuda_kernels.cu (the kernels they launch),
 * cuda_internal.h (what they share).
 *
 * Math: cuBLAS for every matmul (f32 weights: SGEMM; f16/bf16 weights: the
 * activations are converted to the weight dtype in the engine-provided
 * workspace and multiplied with cublasGemmEx, f32 accumulation and
 * output; backend.h states the resulting tolerance against the cpu
 * backend's f32 activations); small CUDA C kernels for the rest, all f32.
 * Results follow the backend contract op by op
 * (tests/test_backend_conformance.c and tests/cuda check them).
 *
 * Host synchronisation: upload copies through a pinned staging ring and
 * returns without waiting for the GPU; download waits (the host needs the
 * routing decisions to drive the policy), through a pinned buffer so the
 * copy is a true DMA; download_many queues a block's routing (indices and
 * weights) and waits once.
 *
 * Scratch: 16-bit matmuls convert activations into the engine's workspace
 * (set_workspace, inside the device-memory accounting); without one, or
 * when it is too small (a conformance test, or two engines on one device
 * after one of them took its workspace back), into the backend's own
 * scratch, grown on demand outside the accounting.  DeepSeek-style routing
 * keeps its per-row choice scores there too (no allocation per call).
 *
 * cuBLAS math mode: CUBLAS_DEFAULT_MATH (f32 products stay f32: TF32 is
 * used only under CUBLAS_TF32_TENSOR_OP_MATH; 16-bit products may use
 * tensor cores).  MOE_CUBLAS_MATH=pedantic selects CUBLAS_PEDANTIC_MATH, to
 * compare both in one run.
 *
 * Activations converted to f16 saturate at +-65504 (bf16: at its largest
 * finite value) instead of overflowing to infinity; NaN and infinity stay.
 *
 * RoPE: rope_ex applies the caller's device table of frequencies (the
 * engine computes them on the host once); the legacy rope is the engine's
 * adapter over it (backend.h).  Stalls are measured on the GPU:
 * every compute_wait is bracketed by two timing events on the compute
 * stream, and stall_seconds sums their elapsed times.
 *
 * Pinned memory: host_register keeps a process-wide, reference-counted
 * table of registered ranges, so two engines on one model share one
 * registration (cudaHostRegister of a registered range fails). 
 *
 * Errors: every runtime and cuBLAS call is checked (CUDA_TRY, CUBLAS_TRY,
 * built on MOE_TRY_GEN); after each kernel launch cudaGetLastError is
 * checked.  Failures come back as MOE_ERR_DEVICE with the call and
 * file:line; no device or no driver is MOE_ERR_NO_DEVICE.  The calls that
 * cannot return a status (the free paths) clear the runtime's last error
 * and keep the first failure, which the next synchronize returns.  A query
 * answering cudaErrorNotReady (event_done, the stall timing) clears the
 * last error as well, so the next launch check does not report it. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/cuda.h"
#include "cuda_internal.h"

/* A call that cannot return its status (a free path): the runtime's last
 * error is cleared (else the next launch check would report it) and the
 * first failure is kept for the next synchronize. */
#define NOTE(be, call) note_failure((be), (call), #call, __FILE__, __LINE__)
static void note_failure(moe_backend *be, cudaError_t e, const char *what, const char *file,
                         int line) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();
  if (be && be->deferred[0] == '\0')
    snprintf(be->deferred, sizeof be->deferred, "%s failed: %s (%s:%d)", what,
             cudaGetErrorString(e), file, line);
}

/* A capture ended in a call that cannot return its status (graph mode):
 * a failure is kept for the next synchronize, as above. */
static void graph_flush_noted(moe_backend *be, cu_flush_reason why) {
  moe_error e;
  if (moe_cu_graph_flush(be, why, &e) != MOE_OK && be->deferred[0] == '\0')
    snprintf(be->deferred, sizeof be->deferred, "%.200s", e.msg);
}

/* An event query: 1 complete, 0 not yet (cudaErrorNotReady, which is then
 * cleared from the runtime's last error: it is an answer, not a failure),
 * -1 an error (left for the next checked call to report). */
static int query_event(cudaEvent_t ev) {
  const cudaError_t e = cudaEventQuery(ev);
  if (e == cudaSuccess) return 1;
  if (e == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return 0;
  }
  return -1;
}

/* ------------------------------------------------------------ lifecycle */

static void cu_destroy(moe_backend *be) {
  if (be == NULL) return;
  moe_error ignored;
  (void)moe_cu_graph_flush(be, CU_FLUSH_SYNC, &ignored); /* a captured stretch still runs */
  /* copies or kernels may still be in flight: let them finish before their
   * streams, events and staging memory go (the feeder's queue first) */
  moe_cu_feed_stop(be);
  if (be->host) (void)cudaStreamSynchronize(be->host); /* host jobs may wait for the others */
  if (be->copy) (void)cudaStreamSynchronize(be->copy);
  if (be->compute) (void)cudaStreamSynchronize(be->compute);
  for (int i = 0; i < STAGE_SLOTS; i++)
    if (be->stage_ev[i]) (void)cudaEventDestroy(be->stage_ev[i]);
  for (int i = 0; i < STALL_PAIRS; i++) {
    if (be->pairs[i].before) (void)cudaEventDestroy(be->pairs[i].before);
    if (be->pairs[i].after) (void)cudaEventDestroy(be->pairs[i].after);
  }
  if (be->stage) (void)cudaFreeHost(be->stage);
  if (be->dstage) (void)cudaFreeHost(be->dstage);
  if (be->own_ws) (void)cudaFree(be->own_ws);
  moe_cu_graph_stop(be); /* its cached graphs */
  if (be->blas) (void)cublasDestroy(be->blas);
  if (be->blas_ws) (void)cudaFree(be->blas_ws);
  if (be->compute) (void)cudaStreamDestroy(be->compute);
  if (be->copy) (void)cudaStreamDestroy(be->copy);
  if (be->host) (void)cudaStreamDestroy(be->host);
  (void)cudaGetLastError(); /* nothing is left to report to */
  free(be);
}

/* The switches (MOE_CUBLAS_MATH, MOE_CUDA_OVERTAKE, MOE_CUDA_GRAPHS),
 * checked before the device: a wrong value is the user's to fix, device
 * or not. */
static moe_status check_switches(moe_error *err) {
  moe_status st = MOE_OK;
  bool graphs = false;
  const char *math = getenv("MOE_CUBLAS_MATH");
  if (math && *math && strcmp(math, "default") != 0 && strcmp(math, "pedantic") != 0)
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "MOE_CUBLAS_MATH='%.40s': expected 'default' or 'pedantic'", math);
  if ((st = moe_cu_feed_env(err)) != MOE_OK) return st;
  return moe_cu_graph_env(&graphs, err);
}

static moe_status cu_create(const moe_backend_options *opt, moe_backend **out, moe_error *err) {
  moe_status st = MOE_OK;
  *out = NULL;
  int count = 0;
  if ((st = check_switches(err)) != MOE_OK) return st;
  const char *math = getenv("MOE_CUBLAS_MATH");
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
    return MOE_FAIL(err, MOE_ERR_NO_DEVICE, "no CUDA device; use --backend cpu (%s)",
                    e != cudaSuccess ? cudaGetErrorString(e) : "device count is 0");
  }
  if (opt && opt->link_gbps != 0)
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "the cuda backend copies over the real host link; --link-gbps emulates one on "
                    "the cpu backend only");
  moe_backend *be = (moe_backend *)calloc(1, sizeof *be);
  if (be == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "cuda backend: out of host memory");
  be->pedantic = math && strcmp(math, "pedantic") == 0;
  be->device = opt ? opt->device_index : 0;
  MOE_CHECK(be->device >= 0 && be->device < count, err, MOE_ERR_INVALID,
            "CUDA device %d does not exist (%d present)", be->device, count);
  cudaDeviceProp prop;
  size_t free_b, total_b;
  CUDA_TRY(cudaSetDevice(be->device), err);
  CUDA_TRY(cudaGetDeviceProperties(&prop, be->device), err);
  CUDA_TRY(cudaStreamCreateWithFlags(&be->compute, cudaStreamNonBlocking), err);
  CUDA_TRY(cudaStreamCreateWithFlags(&be->copy, cudaStreamNonBlocking), err);
  CUDA_TRY(cudaStreamCreateWithFlags(&be->host, cudaStreamNonBlocking), err);
  CUBLAS_TRY(cublasCreate(&be->blas), err);
  CUBLAS_TRY(cublasSetStream(be->blas, be->compute), err);
  CUBLAS_TRY(cublasSetAtomicsMode(be->blas, CUBLAS_ATOMICS_NOT_ALLOWED), err);
  /* the default mode keeps f32 products in f32 (TF32 only under
   * CUBLAS_TF32_TENSOR_OP_MATH) and lets 16-bit products use tensor cores */
  CUBLAS_TRY(cublasSetMathMode(be->blas, be->pedantic ? CUBLAS_PEDANTIC_MATH : CUBLAS_DEFAULT_MATH),
             err);
  {
    /* a fixed workspace (cuBLAS's recommended sizes: 32 MiB from sm_90, 4
     * MiB before), set after the stream (cublasSetStream resets it): cuBLAS
     * never allocates while a graph is captured, and picks its kernels
     * from the same workspace in both modes; outside the accounting, and
     * taken before the free memory (the default budget) is measured */
    const size_t ws = prop.major >= 9 ? ((size_t)32 << 20) : ((size_t)4 << 20);
    CUDA_TRY(cudaMalloc(&be->blas_ws, ws), err);
    CUBLAS_TRY(cublasSetWorkspace(be->blas, be->blas_ws, ws), err);
  }
  CUDA_TRY(cudaHostAlloc((void **)&be->stage, STAGE_BYTES, cudaHostAllocDefault), err);
  CUDA_TRY(cudaHostAlloc((void **)&be->dstage, DSTAGE_BYTES, cudaHostAllocDefault), err);
  for (int i = 0; i < STAGE_SLOTS; i++)
    CUDA_TRY(cudaEventCreateWithFlags(&be->stage_ev[i], cudaEventDisableTiming), err);
  for (int i = 0; i < STALL_PAIRS; i++) {
    CUDA_TRY(cudaEventCreate(&be->pairs[i].before), err);
    CUDA_TRY(cudaEventCreate(&be->pairs[i].after), err);
  }
  /* the default budget is what is free now (other processes, the context
   * and cuBLAS already hold some), not the card's total */
  CUDA_TRY(cudaMemGetInfo(&free_b, &total_b), err);
  be->capacity = free_b;
  snprintf(be->name, sizeof be->name, "%s", prop.name);
  snprintf(be->desc, sizeof be->desc, "cuda (%s, %.1f GiB, %.1f GiB free, sm_%d%d, cuBLAS %s math)",
           prop.name, (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0),
           (double)free_b / (1024.0 * 1024.0 * 1024.0), prop.major, prop.minor,
           be->pedantic ? "pedantic" : "default");
  MOE_TRY(moe_cu_feed_start(be, err));
  if (be->feed)
    snprintf(be->desc + strlen(be->desc), sizeof be->desc - strlen(be->desc),
             ", overtakable copies");
  MOE_TRY(moe_cu_graph_start(be, err));
  if (be->graphs)
    snprintf(be->desc + strlen(be->desc), sizeof be->desc - strlen(be->desc), ", CUDA graphs");
  *out = be;
  return MOE_OK;
cleanup:
  cu_destroy(be);
  return st;
}

static const char *cu_describe(moe_backend *be) { return be->desc; }

static const char *cu_device_name(moe_backend *be) { return be->name; }

static size_t cu_capacity(moe_backend *be) { return be->capacity; }

static size_t cu_device_used(moe_backend *be) {
  size_t free_b = 0, total = 0;
  if (cudaMemGetInfo(&free_b, &total) != cudaSuccess) return 0;
  return total - free_b;
}

/* ------------------------------------------------------------ memory, copies */

static moe_status cu_alloc(moe_backend *be, size_t bytes, void **ptr, moe_error *err) {
  *ptr = NULL;
  const moe_status fst = moe_cu_graph_flush(be, CU_FLUSH_ALLOC, err); /* none while captured */
  if (fst != MOE_OK) return fst;
  cudaError_t e = cudaMalloc(ptr, bytes);
  if (e == cudaSuccess) return MOE_OK;
  (void)cudaGetLastError();
  return MOE_FAIL(err, e == cudaErrorMemoryAllocation ? MOE_ERR_OOM : MOE_ERR_DEVICE,
                  "cudaMalloc of %zu bytes failed: %s", bytes, cudaGetErrorString(e));
}

/* The contract: free after all work issued so far on either stream that
 * uses ptr.  cudaFree's own implicit synchronisation is not relied on:
 * both streams are drained first. */
static void cu_free(moe_backend *be, void *ptr) {
  if (ptr == NULL) return;
  graph_flush_noted(be, CU_FLUSH_FREE);
  moe_cu_feed_drain(be);
  NOTE(be, cudaStreamSynchronize(be->copy));
  NOTE(be, cudaStreamSynchronize(be->compute));
  NOTE(be, cudaFree(ptr));
}

static moe_status cu_host_alloc(moe_backend *be, size_t bytes, void **ptr, moe_error *err) {
  moe_status st = MOE_OK;
  MOE_TRY(moe_cu_graph_flush(be, CU_FLUSH_ALLOC, err)); /* no allocation while captured */
  CUDA_TRY(cudaHostAlloc(ptr, bytes ? bytes : 1, cudaHostAllocDefault), err);
cleanup:
  return st;
}

static void cu_host_free(moe_backend *be, void *ptr) {
  if (ptr == NULL) return;
  graph_flush_noted(be, CU_FLUSH_FREE);
  moe_cu_feed_drain(be);
  NOTE(be, cudaStreamSynchronize(be->copy)); /* a copy may still read it */
  NOTE(be, cudaStreamSynchronize(be->host)); /* a host job may still use it */
  NOTE(be, cudaFreeHost(ptr));
}

/* Registered host ranges, process-wide (registration belongs to the
 * process, not to a backend instance), with a count of users each. */
typedef struct pin_entry {
  void *ptr;
  size_t bytes;
  int users;
} pin_entry;
static pthread_mutex_t g_pin_mu = PTHREAD_MUTEX_INITIALIZER;
static pin_entry *g_pins;
static size_t g_n_pins, g_cap_pins;

static moe_status cu_host_register(moe_backend *be, void *ptr, size_t bytes, moe_error *err) {
  moe_status st = MOE_OK;
  if (bytes == 0 || ptr == NULL) return MOE_OK;
  if ((st = moe_cu_graph_flush(be, CU_FLUSH_ALLOC, err)) != MOE_OK) return st; /* none while captured */
  pthread_mutex_lock(&g_pin_mu);
  for (size_t i = 0; i < g_n_pins; i++)
    if (g_pins[i].ptr == ptr) {
      if (g_pins[i].bytes < bytes) {
        pthread_mutex_unlock(&g_pin_mu);
        return MOE_FAIL(err, MOE_ERR_INVALID,
                        "host range at %p is pinned for %zu bytes, not the %zu asked for", ptr,
                        g_pins[i].bytes, bytes);
      }
      g_pins[i].users++;
      pthread_mutex_unlock(&g_pin_mu);
      return MOE_OK;
    }
  if (g_n_pins == g_cap_pins) {
    size_t cap = g_cap_pins ? 2 * g_cap_pins : 8;
    pin_entry *p = (pin_entry *)realloc(g_pins, cap * sizeof *p);
    if (p == NULL) {
      pthread_mutex_unlock(&g_pin_mu);
      return MOE_FAIL(err, MOE_ERR_OOM, "out of host memory (pinned-range table)");
    }
    g_pins = p;
    g_cap_pins = cap;
  }
  cudaError_t e = cudaHostRegister(ptr, bytes, cudaHostRegisterDefault);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    pthread_mutex_unlock(&g_pin_mu);
    return MOE_FAIL(err, MOE_ERR_DEVICE, "cudaHostRegister of %zu bytes failed: %s", bytes,
                    cudaGetErrorString(e));
  }
  g_pins[g_n_pins++] = (pin_entry){ptr, bytes, 1};
  pthread_mutex_unlock(&g_pin_mu);
  return st;
}

static void cu_host_unregister(moe_backend *be, void *ptr) {
  graph_flush_noted(be, CU_FLUSH_FREE);
  pthread_mutex_lock(&g_pin_mu);
  for (size_t i = 0; i < g_n_pins; i++)
    if (g_pins[i].ptr == ptr) {
      if (--g_pins[i].users == 0) {
        moe_cu_feed_drain(be);
        NOTE(be, cudaStreamSynchronize(be->copy)); /* no copy may still read the range */
        NOTE(be, cudaHostUnregister(ptr));
        g_pins[i] = g_pins[--g_n_pins];
      }
      break;
    }
  pthread_mutex_unlock(&g_pin_mu);
}

static moe_status cu_event_create(moe_backend *be, moe_event **ev, moe_error *err) {
  moe_status st = MOE_OK;
  *ev = (moe_event *)calloc(1, sizeof **ev);
  MOE_CHECK_ALLOC(*ev, err, sizeof **ev);
  CUDA_TRY(cudaEventCreateWithFlags(&(*ev)->ev, cudaEventDisableTiming), err);
  return MOE_OK;
cleanup:
  free(*ev);
  *ev = NULL;
  return st;
}

/* cudaEventDestroy does not block: with work still to record the event,
 * the runtime releases it once that work completes (the contract). */
static void cu_event_destroy(moe_backend *be, moe_event *ev) {
  if (ev == NULL) return;
  if (be->graphs && (ev->mark.rec > be->graph_done || ev->mark.wait > be->graph_done)) {
    /* a node of a graph not known to have run refers to it: let it run
     * first (cudaEventDestroy's deferred release is promised for stream
     * records only; rare: engines destroy their events when they close) */
    graph_flush_noted(be, CU_FLUSH_DESTROY);
    NOTE(be, cudaStreamSynchronize(be->compute));
    be->graph_done = be->gate.last;
  }
  if (moe_cu_feed_holds(be, ev)) return; /* the feeder frees it after its copies */
  NOTE(be, cudaEventDestroy(ev->ev));
  free(ev);
}

static moe_status cu_copy_h2d_async(moe_backend *be, void *dst, const void *src, size_t bytes,
                                    moe_event *ev, moe_error *err) {
  moe_status st = MOE_OK;
  MOE_TRY(moe_cu_graph_foreign_record(be, ev, err));
  if (be->feed) return moe_cu_feed_copy(be, dst, src, bytes, NULL, ev, 0, err);
  CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, be->copy), err);
  if (ev) CUDA_TRY(cudaEventRecord(ev->ev, be->copy), err);
cleanup:
  return st;
}

/* Adds the elapsed time of completed timing pairs to stall_s; with wait,
 * waits for every pending pair first. */
static void harvest_stalls(moe_backend *be, bool wait) {
  for (int i = 0; i < STALL_PAIRS; i++) {
    stall_pair *p = &be->pairs[i];
    if (!p->pending || moe_gate_flush_for_use(&be->gate, &p->mark)) continue; /* not launched yet */
    cudaError_t e = cudaSuccess;
    if (wait) {
      e = cudaEventSynchronize(p->after);
    } else {
      const int done = query_event(p->after); /* clears cudaErrorNotReady */
      if (done == 0) continue;
      if (done < 0) e = cudaErrorUnknown;
    }
    float ms = 0.0f;
    if (e == cudaSuccess && cudaEventElapsedTime(&ms, p->before, p->after) == cudaSuccess)
      be->stall_s += (double)ms * 1e-3;
    else
      (void)cudaGetLastError(); /* timing lost; the stream's own error surfaces on its next call */
    p->pending = 0;
  }
}

/* cudaStreamWaitEvent orders the compute stream after the copy without
 * blocking the host.  Two timing events bracket the wait: the time between
 * them is how long the compute stream stood still for the copy. */
static moe_status cu_compute_wait(moe_backend *be, moe_event *ev, moe_error *err) {
  moe_status st = MOE_OK;
  if (ev == NULL) return MOE_OK;
  stall_pair *p = &be->pairs[be->pair_next];
  MOE_TRY(moe_cu_feed_settle(be, ev, err));
  /* graph mode: the open capture recorded ev, so the stream orders it */
  if (moe_gate_ordered(&be->gate, &ev->mark)) return MOE_OK;
  if (p->pending && moe_gate_flush_for_use(&be->gate, &p->mark))
    MOE_TRY(moe_cu_graph_flush(be, CU_FLUSH_STALL, err)); /* the ring came round in one capture */
  if (p->pending) harvest_stalls(be, false);
  if (p->pending) {
    CUDA_TRY(cudaEventSynchronize(p->after), err);
    harvest_stalls(be, false);
  }
  be->pair_next = (be->pair_next + 1) % STALL_PAIRS;
  MOE_TRY(moe_cu_graph_record(be, p->before, &p->mark, err));
  MOE_TRY(moe_cu_graph_wait(be, ev, err));
  MOE_TRY(moe_cu_graph_record(be, p->after, &p->mark, err));
  p->pending = 1;
cleanup:
  return moe_cu_graph_fail(be, st);
}

static double cu_stall_seconds(moe_backend *be) {
  graph_flush_noted(be, CU_FLUSH_STALL);
  harvest_stalls(be, true);
  return be->stall_s;
}

static moe_status cu_event_sync(moe_backend *be, moe_event *ev, moe_error *err) {
  moe_status st = MOE_OK;
  if (ev == NULL) return MOE_OK;
  MOE_TRY(moe_cu_feed_settle(be, ev, err));
  MOE_TRY(moe_cu_graph_use(be, ev, err));
  CUDA_TRY(cudaEventSynchronize(ev->ev), err);
cleanup:
  return st;
}

static moe_status cu_compute_record(moe_backend *be, moe_event *ev, moe_error *err) {
  moe_status st = MOE_OK;
  if (ev == NULL) return MOE_OK;
  MOE_TRY(moe_cu_feed_settle(be, ev, err)); /* its queued copies record first */
  MOE_TRY(moe_cu_graph_record(be, ev->ev, &ev->mark, err));
cleanup:
  return moe_cu_graph_fail(be, st);
}

static moe_status cu_copy_wait(moe_backend *be, moe_event *ev, moe_error *err) {
  moe_status st = MOE_OK;
  MOE_TRY(moe_cu_graph_use(be, ev, err));
  if (ev && be->feed) return moe_cu_feed_copy(be, NULL, NULL, 0, ev, NULL, 0, err); /* a marker */
  if (ev) CUDA_TRY(cudaStreamWaitEvent(be->copy, ev->ev, 0), err);
cleanup:
  return st;
}

/* A hint only.  cudaErrorNotReady is cleared (an answer, not a failure);
 * another error is not: the answer is "not done", and the caller's next
 * checked call (its compute_wait) reports it. */
static int cu_event_done(moe_backend *be, moe_event *ev) {
  if (ev == NULL) return 1;
  if (moe_cu_feed_pending(be, ev)) return 0;
  if (moe_gate_flush_for_use(&be->gate, &ev->mark)) { /* else it would never be done */
    graph_flush_noted(be, CU_FLUSH_USE);
    return 0;
  }
  return query_event(ev->ev) == 1;
}

/* Small host inputs: staged through the pinned ring and copied on the
 * compute stream, so the call returns without waiting for the GPU; the
 * ring space is reused once the copy that read it has completed.  Inputs
 * larger than the ring are copied synchronously. */
static moe_status cu_upload(moe_backend *be, void *dst, const void *src, size_t bytes, moe_error *err) {
  moe_status st = MOE_OK;
  if (bytes == 0) return MOE_OK;
  if (bytes > STAGE_BYTES / 2) {
    MOE_TRY(moe_cu_graph_flush(be, CU_FLUSH_LARGE_UPLOAD, err));
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, be->compute), err);
    CUDA_TRY(cudaStreamSynchronize(be->compute), err);
    return MOE_OK;
  }
  {
    size_t off = (be->stage_head + 255) / 256 * 256;
    if (off + bytes > STAGE_BYTES) off = 0;
    /* the slot's previous upload (and every older one) must have been read */
    const int slot = be->stage_next;
    /* (graph mode: a copy still in the open capture has not even started) */
    if (moe_gate_flush_for_use(&be->gate, &be->stage_mark[slot]))
      MOE_TRY(moe_cu_graph_flush(be, CU_FLUSH_STAGE, err));
    CUDA_TRY(cudaEventSynchronize(be->stage_ev[slot]), err);
    /* and no upload still in flight may use [off, off + bytes) */
    for (int i = 0; i < STAGE_SLOTS; i++) {
      if (i == slot || be->stage_end[i] <= off || be->stage_start[i] >= off + bytes) continue;
      if (moe_gate_flush_for_use(&be->gate, &be->stage_mark[i]))
        MOE_TRY(moe_cu_graph_flush(be, CU_FLUSH_STAGE, err));
      CUDA_TRY(cudaEventSynchronize(be->stage_ev[i]), err);
      be->stage_start[i] = be->stage_end[i] = 0;
    }
    memcpy(be->stage + off, src, bytes);
    MOE_TRY(moe_cu_graph_op(be, 0x75706c6f6164ull /* "upload" */, err));
    CUDA_TRY(cudaMemcpyAsync(dst, be->stage + off, bytes, cudaMemcpyHostToDevice, be->compute), err);
    MOE_TRY(moe_cu_graph_record(be, be->stage_ev[slot], &be->stage_mark[slot], err));
    be->stage_start[slot] = off;
    be->stage_end[slot] = off + bytes;
    be->stage_head = off + bytes;
    be->stage_next = (slot + 1) % STAGE_SLOTS;
  }
cleanup:
  return moe_cu_graph_fail(be, st);
}

/* n downloads, one wait.  Those that fit (together) in the pinned landing
 * buffer are copied there (a true asynchronous DMA) and moved to their
 * destinations after the one wait; larger ones go straight to their
 * destination (the runtime stages pageable memory itself). */
static moe_status cu_download_many(moe_backend *be, const moe_xfer *x, int n, moe_error *err) {
  moe_status st = MOE_OK;
  size_t off = 0;
  bool any = false, fit = true;
  for (int i = 0; i < n; i++) { /* graph mode captures the copies only into the pinned buffer */
    if (x[i].bytes == 0) continue;
    const size_t at = (off + 255) / 256 * 256;
    fit = fit && at + x[i].bytes <= DSTAGE_BYTES;
    off = at + x[i].bytes;
  }
  if (!fit) MOE_TRY(moe_cu_graph_flush(be, CU_FLUSH_DOWNLOAD, err));
  off = 0;
  for (int i = 0; i < n; i++) {
    if (x[i].bytes == 0) continue;
    any = true;
    const size_t at = (off + 255) / 256 * 256;
    if (at + x[i].bytes <= DSTAGE_BYTES) {
      if (fit) MOE_TRY(moe_cu_graph_op(be, 0x6432680000ull + (uint64_t)x[i].bytes, err));
      CUDA_TRY(cudaMemcpyAsync(be->dstage + at, x[i].src, x[i].bytes, cudaMemcpyDeviceToHost,
                               be->compute), err);
      off = at + x[i].bytes;
    } else {
      CUDA_TRY(cudaMemcpyAsync(x[i].dst, x[i].src, x[i].bytes, cudaMemcpyDeviceToHost, be->compute),
               err);
    }
  }
  if (!any) return MOE_OK;
  MOE_TRY(moe_cu_graph_flush(be, CU_FLUSH_DOWNLOAD, err));
  CUDA_TRY(cudaStreamSynchronize(be->compute), err);
  be->graph_done = be->gate.last; /* every graph so far has run */
  off = 0;
  for (int i = 0; i < n; i++) {
    if (x[i].bytes == 0) continue;
    const size_t at = (off + 255) / 256 * 256;
    if (at + x[i].bytes <= DSTAGE_BYTES) {
      memcpy(x[i].dst, be->dstage + at, x[i].bytes);
      off = at + x[i].bytes;
    }
  }
  if (be->deferred[0]) { /* a free path's failure: reported at the step's host wait */
    st = MOE_FAIL(err, MOE_ERR_DEVICE, "an earlier call failed: %s", be->deferred);
    be->deferred[0] = '\0';
  }
  return st;
cleanup:
  /* a copy queued before the failure may still be writing: let it land */
  st = moe_cu_graph_fail(be, st);
  graph_flush_noted(be, CU_FLUSH_DOWNLOAD);
  (void)cudaStreamSynchronize(be->compute);
  (void)cudaGetLastError();
  return st;
}

static moe_status cu_download(moe_backend *be, void *dst, const void *src, size_t bytes, moe_error *err) {
  const moe_xfer x = {dst, src, bytes};
  return cu_download_many(be, &x, 1, err);
}

/* A job on the host stream (ABI 1.7): the runtime calls fn(ctx) on its own
 * thread once the host stream reaches it, after wait_ev; done_ev is
 * recorded behind it, so the other streams and the host can wait for it.
 * work is for modeled backends only. */
static moe_status cu_host_run(moe_backend *be, void (*fn)(void *ctx), void *ctx,
                              const moe_host_work *work, moe_event *wait_ev, moe_event *done_ev,
                              moe_error *err) {
  moe_status st = MOE_OK;
  (void)work;
  if (fn == NULL)
    return MOE_FAIL(err, MOE_ERR_INVALID, "cuda backend: host_run without a job (fn NULL)");
  if (wait_ev) MOE_TRY(moe_cu_feed_settle(be, wait_ev, err));
  if (done_ev) MOE_TRY(moe_cu_feed_settle(be, done_ev, err));
  MOE_TRY(moe_cu_graph_use(be, wait_ev, err));
  MOE_TRY(moe_cu_graph_foreign_record(be, done_ev, err));
  if (wait_ev) CUDA_TRY(cudaStreamWaitEvent(be->host, wait_ev->ev, 0), err);
  CUDA_TRY(cudaLaunchHostFunc(be->host, fn, ctx), err);
  if (done_ev) CUDA_TRY(cudaEventRecord(done_ev->ev, be->host), err);
cleanup:
  return st;
}

/* Every step runs whatever failed before it (the contract: the host
 * blocks until every stream is idle); the first failure is returned. */
static moe_status cu_sync(moe_backend *be, moe_error *err) {
  moe_error e1;
  const cudaStream_t streams[3] = {be->host, be->copy, be->compute};
  moe_status st = moe_cu_graph_flush(be, CU_FLUSH_SYNC, err);
  if (moe_cu_feed_settle(be, NULL, st == MOE_OK ? err : &e1) != MOE_OK && st == MOE_OK)
    st = MOE_ERR_DEVICE;
  for (int i = 0; i < 3; i++) {
    const cudaError_t e = cudaStreamSynchronize(streams[i]);
    if (e == cudaSuccess) continue;
    (void)cudaGetLastError();
    if (st == MOE_OK)
      st = MOE_FAIL(err, MOE_ERR_DEVICE, "cudaStreamSynchronize (%s stream) failed: %s",
                    i == 0 ? "host" : i == 1 ? "copy" : "compute", cudaGetErrorString(e));
  }
  if (st == MOE_OK) be->graph_done = be->gate.last; /* every graph so far has run */
  if (be->deferred[0]) {
    if (st == MOE_OK) st = MOE_FAIL(err, MOE_ERR_DEVICE, "an earlier call failed: %s", be->deferred);
    be->deferred[0] = '\0';
  }
  return st;
}

static size_t cu_workspace_bytes(moe_backend *be, size_t max_rows, size_t max_cols) {
  return max_rows * max_cols * 2; /* activations as f16/bf16 for cublasGemmEx */
}

static void cu_set_workspace(moe_backend *be, void *ptr, size_t bytes) {
  be->ws = ptr;
  be->ws_bytes = ptr ? bytes : 0;
}

/* Device scratch of at least bytes for the next compute-stream op: the
 * engine's workspace when it is large enough, else the backend's own,
 * grown on demand (the old one is freed once the compute stream has
 * finished with it).  Every user is on the compute stream, so one scratch
 * serves them in turn. */
moe_status moe_cu_scratch(moe_backend *be, size_t bytes, void **out, moe_error *err) {
  moe_status st = MOE_OK;
  if (be->ws && be->ws_bytes >= bytes) {
    *out = be->ws;
    return MOE_OK;
  }
  if (be->own_ws_bytes < bytes) {
    const size_t grow = (bytes + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1); /* 1 MiB steps */
    MOE_TRY(moe_cu_graph_flush(be, CU_FLUSH_SCRATCH, err)); /* a captured op may use it */
    if (be->own_ws) {
      CUDA_TRY(cudaStreamSynchronize(be->compute), err);
      CUDA_TRY(cudaFree(be->own_ws), err);
      be->own_ws = NULL;
      be->own_ws_bytes = 0;
    }
    const cudaError_t e = cudaMalloc(&be->own_ws, grow);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      be->own_ws = NULL;
      return MOE_FAIL(err, e == cudaErrorMemoryAllocation ? MOE_ERR_OOM : MOE_ERR_DEVICE,
                      "cuda scratch of %zu bytes (outside the engine's workspace) failed: %s",
                      grow, cudaGetErrorString(e));
    }
    be->own_ws_bytes = grow;
  }
  *out = be->own_ws;
cleanup:
  return st;
}

extern "C" moe_status moe_cuda_probe(char *desc, size_t cap, moe_error *err);

static moe_backend_ops make_ops(void) {
  moe_backend_ops o;
  memset(&o, 0, sizeof o);
  o.abi_version = MOE_BACKEND_ABI;
  o.struct_size = sizeof(moe_backend_ops);
  o.name = "cuda";
  o.summary = "NVIDIA GPU: cuBLAS matmuls, CUDA C kernels, compute, copy and host streams, pinned host memory";
  o.create = cu_create;
  o.destroy = cu_destroy;
  o.describe = cu_describe;
  o.device_alloc = cu_alloc;
  o.device_free = cu_free;
  o.host_alloc = cu_host_alloc;
  o.host_free = cu_host_free;
  o.event_create = cu_event_create;
  o.event_destroy = cu_event_destroy;
  o.copy_h2d_async = cu_copy_h2d_async;
  o.compute_wait = cu_compute_wait;
  o.event_sync = cu_event_sync;
  o.upload = cu_upload;
  o.download = cu_download;
  o.synchronize = cu_sync;
  o.compute_record = cu_compute_record;
  o.copy_wait = cu_copy_wait;
  o.event_done = cu_event_done;
  o.device_capacity = cu_capacity;
  o.workspace_bytes = cu_workspace_bytes;
  o.set_workspace = cu_set_workspace;
  o.host_register = cu_host_register;
  o.host_unregister = cu_host_unregister;
  o.device_used = cu_device_used;
  o.caps = MOE_BACKEND_CAP_PREFERRED;
  o.probe = moe_cuda_probe;
  o.device_name = cu_device_name;
  o.stall_seconds = cu_stall_seconds;
  o.download_many = cu_download_many;
  o.abi_minor = MOE_BACKEND_ABI_MINOR;
  o.host_run = cu_host_run;
  moe_cu_feed_ops(&o);   /* cuda_feed.cu */
  moe_cu_math_ops(&o); /* cuda_ops.cu */
  return o;
}

extern "C" const moe_backend_ops moe_cuda_backend = make_ops();

/* ------------------------------------------------------------ probe */

extern "C" int moe_cuda_compiled(void) { return 1; }

extern "C" moe_status moe_cuda_probe(char *desc, size_t cap, moe_error *err) {
  moe_status st = MOE_OK;
  int count = 0;
  cudaDeviceProp prop;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    (void)cudaGetLastError(); /* leave no pending error for later calls */
    return MOE_FAIL(err, MOE_ERR_NO_DEVICE, "no CUDA device; use --backend cpu (%s)",
                    e != cudaSuccess ? cudaGetErrorString(e) : "device count is 0");
  }
  CUDA_TRY(cudaGetDeviceProperties(&prop, 0), err);
  snprintf(desc, cap, "%s, %.1f GiB, sm_%d%d, %d device%s", prop.name,
           (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), prop.major, prop.minor,
           count, count == 1 ? "" : "s");
cleanup:
  return st;
}
