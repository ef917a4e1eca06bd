/* The device's fields, for the engine and its tests.
 *
 * moe/backend.h declares moe_device as an opaque handle; code that needs
 * the struct itself (storage on the stack, direct access to the table and
 * the accounting) includes this header.  The harness must not: it builds
 * with MOE_DEVICE_OPAQUE defined and uses moe_device_create and the
 * accessors instead. */
#ifndef MOE_DEVICE_H
#define MOE_DEVICE_H

#ifdef MOE_DEVICE_OPAQUE
#error "moe/device.h is the engine's: use moe_device_create and the accessors in moe/backend.h"
#endif

#include "moe/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_device {
  const moe_backend_ops *ops; /* normalized copy of the backend's table, owned */
  moe_backend *be;
  moe_mem_stats mem;
  struct moe_dev_alloc *allocs; /* live allocations (pointer, size, category) */
  size_t n_allocs, cap_allocs;
  struct moe_trace *trace;      /* op trace attached with moe_device_trace, or NULL */
};

/* Opens into caller storage: as moe_device_create without the heap. */
moe_status moe_device_open(moe_device *dev, const char *name, const moe_backend_options *opt,
                           moe_error *err);
moe_status moe_device_open_ops(moe_device *dev, const moe_backend_ops *ops,
                               const moe_backend_options *opt, moe_error *err);
/* Frees any allocation still live, then the instance. */
void moe_device_close(moe_device *dev);

#ifdef __cplusplus
}
#endif

#endif
