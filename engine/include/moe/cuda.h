/* What the CUDA part of the build can tell without creating a backend
 * instance: whether the build has CUDA and, if so, whether a device is
 * reachable, through checked runtime calls.  The cuda backend itself
 * (engine/backends/cuda) is reached through the backend table; its probe
 * method is moe_cuda_probe. */
#ifndef MOE_CUDA_H
#define MOE_CUDA_H

#include <stddef.h>

#include "moe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when this build compiled the CUDA sources. */
int moe_cuda_compiled(void);

/* Fills desc with the first device's name, memory and compute capability.
 * MOE_ERR_NO_DEVICE (message "no CUDA device; use --backend cpu" plus the
 * runtime's reason) when there is no driver or no device;
 * MOE_ERR_UNSUPPORTED when the build has no CUDA. */
moe_status moe_cuda_probe(char *desc, size_t cap, moe_error *err);

/* Graph mode (MOE_CUDA_GRAPHS=1): what the cuda backend instances this
 * process has destroyed did, as one line ("N launched (ops, per graph),
 * instantiated, updated, refused, aborted; ended by: ..."), counted by the
 * backend.  Returns the line's length: 0 (an empty line) when no graph
 * ran, or in a build without CUDA.  The backend itself never prints. */
size_t moe_cuda_graph_summary(char *buf, size_t cap);

#ifdef __cplusplus
}
#endif

#endif
