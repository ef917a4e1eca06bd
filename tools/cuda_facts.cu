/* cuda_facts: a one-second probe of the CUDA facts the engine and its tests
 * rely on, for harness/gpu_check.sh.  Build and run:
 *
 *   nvcc -O2 -arch=sm_90 -o cuda_facts tools/cuda_facts.cu && ./cuda_facts
 *
 * Prints one fact per line as `key=value` (values never contain a newline):
 *
 *   device_name, compute_capability, device_memory_bytes
 *   fork_after_init      does CUDA work in a child process forked after the
 *                        parent initialised CUDA?  Check forks a child per
 *                        test unless CK_FORK=no; we expect "no".
 *   event_query_*        cudaEventQuery on an event recorded behind a ~50 ms
 *                        spin kernel: what it returns, and whether that
 *                        cudaErrorNotReady is left as the last error (what
 *                        cudaPeekAtLastError and cudaGetLastError return
 *                        right after it)
 *   h2d_*                host-to-device copies of 256 MiB from pinned
 *                        (cudaMallocHost) and pageable (malloc) memory,
 *                        timed with cudaEvents, median of 3; and the time
 *                        cudaHostRegister takes to pin a 256 MiB malloc'd
 *                        buffer (what pinning a model's slab costs per byte)
 *
 * Exit status: 0 all facts measured; 77 no usable GPU (the reason printed);
 * 1 a CUDA call failed (the call, file:line and the error printed). */
#include <cuda_runtime.h>

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHECK(call)                                                                   \
  do {                                                                                \
    cudaError_t e_ = (call);                                                          \
    if (e_ != cudaSuccess) {                                                          \
      printf("error=%s failed at %s:%d: %s (%s)\n", #call, __FILE__, __LINE__,        \
             cudaGetErrorName(e_), cudaGetErrorString(e_));                           \
      fflush(stdout);                                                                 \
      exit(1);                                                                        \
    }                                                                                 \
  } while (0)

enum { COPY_BYTES = 256 << 20, SPIN_NS = 50 * 1000 * 1000, REPS = 3 };

/* Spins for ns nanoseconds of the GPU's global timer. */
__global__ void spin(unsigned long long ns, int *out) {
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
  if (out != NULL) *out = 1;
}

__global__ void touch(int *p) { p[threadIdx.x] = (int)threadIdx.x; }

static double host_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double median3(double a, double b, double c) {
  if (a > b) { double t = a; a = b; b = t; }
  if (b > c) { double t = b; b = c; c = t; }
  if (a > b) { double t = a; a = b; b = t; }
  return b;
}

/* The child's side of the fork test: CUDA work on the parent's context.
 * Reports through its exit status: 0 worked, 2 a call failed (printed). */
static int child_work(void) {
  alarm(5); /* a hung driver call must not hang the probe */
  int *d = NULL;
  cudaError_t e = cudaMalloc((void **)&d, 64 * sizeof(int));
  if (e == cudaSuccess) {
    touch<<<1, 64>>>(d);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  int h[64] = {0};
  if (e == cudaSuccess) e = cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
  if (e == cudaSuccess && h[63] != 63) {
    printf("fork_child=ran but read back %d, not 63\n", h[63]);
    fflush(stdout);
    return 2;
  }
  if (e != cudaSuccess) {
    printf("fork_child_error=%s (%s)\n", cudaGetErrorName(e), cudaGetErrorString(e));
    fflush(stdout);
    return 2;
  }
  return 0;
}

static void fork_fact(void) {
  /* the parent initialises CUDA and uses it first, as a test runner would */
  int *d = NULL;
  CHECK(cudaMalloc((void **)&d, 64 * sizeof(int)));
  touch<<<1, 64>>>(d);
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  fflush(stdout);
  pid_t pid = fork();
  if (pid < 0) {
    printf("fork_after_init=unknown (fork: %s)\n", strerror(errno));
    CHECK(cudaFree(d));
    return;
  }
  if (pid == 0) _exit(child_work());
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    printf("fork_after_init=yes (the child allocated, ran a kernel and read back)\n");
  else if (WIFEXITED(status))
    printf("fork_after_init=no (the child's CUDA calls failed, exit %d)\n", WEXITSTATUS(status));
  else if (WIFSIGNALED(status))
    printf("fork_after_init=no (the child died of signal %d%s)\n", WTERMSIG(status),
           WTERMSIG(status) == SIGALRM ? ": hung for 5 s" : "");
  else
    printf("fork_after_init=unknown (wait status %d)\n", status);
  /* the parent's own context must be unharmed */
  touch<<<1, 64>>>(d);
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  CHECK(cudaFree(d));
  printf("fork_parent_after=ok\n");
}

static void event_fact(void) {
  cudaStream_t s;
  cudaEvent_t ev;
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  (void)cudaGetLastError(); /* start from a clean slate (nothing is pending here) */
  CHECK(cudaPeekAtLastError());
  spin<<<1, 1, 0, s>>>((unsigned long long)SPIN_NS, NULL);
  CHECK(cudaGetLastError());
  CHECK(cudaEventRecord(ev, s));
  const cudaError_t q = cudaEventQuery(ev);
  const cudaError_t peek = cudaPeekAtLastError();
  const cudaError_t get = cudaGetLastError();
  const cudaError_t get2 = cudaGetLastError();
  printf("event_query_pending=%s\n", cudaGetErrorName(q));
  printf("event_query_then_peek_at_last_error=%s\n", cudaGetErrorName(peek));
  printf("event_query_then_get_last_error=%s\n", cudaGetErrorName(get));
  printf("event_query_then_get_last_error_again=%s\n", cudaGetErrorName(get2));
  if (q != cudaErrorNotReady)
    printf("event_query_note=the query did not see the event pending (the 50 ms spin ended early?)\n");
  else
    printf("event_query_sticky=%s\n",
           (peek == cudaErrorNotReady || get == cudaErrorNotReady)
               ? "yes (cudaErrorNotReady is left as the last error: clear it after a query)"
               : "no (a not-ready query leaves no last error)");
  CHECK(cudaEventSynchronize(ev));
  const cudaError_t done = cudaEventQuery(ev);
  printf("event_query_complete=%s\n", cudaGetErrorName(done));
  CHECK(done);
  CHECK(cudaEventDestroy(ev));
  CHECK(cudaStreamDestroy(s));
}

/* Median over REPS of one COPY_BYTES host-to-device copy, in GB/s (1e9). */
static double h2d_gbps(void *dst, const void *src, cudaStream_t s) {
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  CHECK(cudaMemcpyAsync(dst, src, COPY_BYTES, cudaMemcpyHostToDevice, s)); /* warm */
  CHECK(cudaStreamSynchronize(s));
  double g[REPS];
  for (int r = 0; r < REPS; r++) {
    CHECK(cudaEventRecord(a, s));
    CHECK(cudaMemcpyAsync(dst, src, COPY_BYTES, cudaMemcpyHostToDevice, s));
    CHECK(cudaEventRecord(b, s));
    CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    g[r] = (double)COPY_BYTES / (ms * 1e-3) / 1e9;
  }
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  return median3(g[0], g[1], g[2]);
}

static void bandwidth_fact(void) {
  cudaStream_t s;
  void *dev = NULL, *pinned = NULL;
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CHECK(cudaMalloc(&dev, COPY_BYTES));
  CHECK(cudaMallocHost(&pinned, COPY_BYTES));
  memset(pinned, 1, COPY_BYTES);
  const double gp = h2d_gbps(dev, pinned, s);
  CHECK(cudaFreeHost(pinned));
  void *pageable = malloc(COPY_BYTES);
  if (pageable == NULL) {
    printf("error=malloc of %d bytes failed\n", COPY_BYTES);
    exit(1);
  }
  memset(pageable, 2, COPY_BYTES); /* touch every page first */
  const double gq = h2d_gbps(dev, pageable, s);
  const double t0 = host_s();
  CHECK(cudaHostRegister(pageable, COPY_BYTES, cudaHostRegisterDefault));
  const double reg_s = host_s() - t0;
  const double gr = h2d_gbps(dev, pageable, s);
  const double t1 = host_s();
  CHECK(cudaHostUnregister(pageable));
  const double unreg_s = host_s() - t1;
  free(pageable);
  CHECK(cudaFree(dev));
  CHECK(cudaStreamDestroy(s));
  printf("h2d_copy_bytes=%d\n", COPY_BYTES);
  printf("h2d_pinned_gbps=%.2f\n", gp);
  printf("h2d_pageable_gbps=%.2f\n", gq);
  printf("h2d_registered_gbps=%.2f\n", gr);
  printf("h2d_pinned_over_pageable=%.2f\n", gq > 0 ? gp / gq : 0.0);
  printf("host_register_256MiB_ms=%.2f\n", reg_s * 1e3);
  printf("host_unregister_256MiB_ms=%.2f\n", unreg_s * 1e3);
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  const double t0 = host_s();
  int n = 0, driver = 0, runtime = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    printf("gpu=none (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device");
    return 77;
  }
  CHECK(cudaDriverGetVersion(&driver));
  CHECK(cudaRuntimeGetVersion(&runtime));
  cudaDeviceProp p;
  CHECK(cudaGetDeviceProperties(&p, 0));
  CHECK(cudaSetDevice(0));
  printf("device_count=%d\n", n);
  printf("device_name=%s\n", p.name);
  printf("compute_capability=%d.%d\n", p.major, p.minor);
  printf("device_memory_bytes=%zu\n", p.totalGlobalMem);
  printf("multiprocessors=%d\n", p.multiProcessorCount);
  printf("cuda_driver_version=%d.%d\n", driver / 1000, (driver % 1000) / 10);
  printf("cuda_runtime_version=%d.%d\n", runtime / 1000, (runtime % 1000) / 10);
  fork_fact();
  event_fact();
  bandwidth_fact();
  printf("probe_seconds=%.2f\n", host_s() - t0);
  return 0;
}
