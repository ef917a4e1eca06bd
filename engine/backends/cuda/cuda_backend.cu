/* CUDA part of the engine: checked runtime calls and the device probe.
 *
 * Every runtime call goes through CUDA_TRY, which turns a failure into a
 * moe_status with the call's text and file:line (never an abort).  The
 * backend's streams and math kernels come with the CUDA backend work; this
 * file is compiled on every CI run so the toolchain setup cannot rot. */
#include <cuda_runtime.h>
#include <stdio.h>

#include "moe/cuda.h"

/* Built from the generator in status.h; needs `moe_status st` and `cleanup:`. */
#define CUDA_TRY(call, err)                                                            \
  do {                                                                                 \
    cudaError_t cuda_e_ = (call);                                                      \
    MOE_TRY_GEN(cuda_e_ == cudaSuccess,                                                \
                st = MOE_FAIL((err), MOE_ERR_DEVICE, "%s failed: %s", #call,           \
                              cudaGetErrorString(cuda_e_)));                           \
  } while (0)

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
