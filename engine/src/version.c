/* Version string, and the CUDA probe of builds without CUDA. */
#include "moe/version.h"

#include "moe/cuda.h"

const char *moe_version(void) { return MOE_VERSION_STRING; }

#ifndef MOE_HAVE_CUDA
int moe_cuda_compiled(void) { return 0; }

moe_status moe_cuda_probe(char *desc, size_t cap, moe_error *err) {
  if (cap) desc[0] = '\0';
  return MOE_FAIL(err, MOE_ERR_UNSUPPORTED,
                  "this build has no CUDA backend (configure with -DMOE_WITH_CUDA=ON)");
}

size_t moe_cuda_graph_summary(char *buf, size_t cap) {
  if (cap) buf[0] = '\0';
  return 0;
}
#endif
