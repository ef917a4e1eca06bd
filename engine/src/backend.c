/* The registry of built-in backends and the checks every table must pass. */
#include "moe/backend.h"

#include <string.h>

extern const moe_backend_ops moe_cpu_backend;

static const moe_backend_ops *const k_backends[] = {&moe_cpu_backend};

size_t moe_backend_count(void) { return sizeof k_backends / sizeof k_backends[0]; }

const moe_backend_ops *moe_backend_at(size_t i) {
  return i < moe_backend_count() ? k_backends[i] : NULL;
}

const moe_backend_ops *moe_backend_find(const char *name) {
  for (size_t i = 0; i < moe_backend_count(); i++)
    if (strcmp(k_backends[i]->name, name) == 0) return k_backends[i];
  return NULL;
}

moe_status moe_backend_validate(const moe_backend_ops *o, moe_error *err) {
  if (o == NULL) return MOE_FAIL(err, MOE_ERR_INVALID, "backend table is NULL");
  if (o->abi_version != MOE_BACKEND_ABI)
    return MOE_FAIL(err, MOE_ERR_UNSUPPORTED,
                    "backend '%s' has ABI version %u, this engine speaks version %u",
                    o->name ? o->name : "?", o->abi_version, MOE_BACKEND_ABI);
  if (o->struct_size < sizeof(moe_backend_ops))
    return MOE_FAIL(err, MOE_ERR_UNSUPPORTED, "backend '%s' table is %u bytes, expected %zu",
                    o->name ? o->name : "?", o->struct_size, sizeof(moe_backend_ops));
  const struct {
    const char *name;
    int present;
  } req[] = {
      {"name", o->name != NULL},
      {"create", o->create != NULL},
      {"destroy", o->destroy != NULL},
      {"describe", o->describe != NULL},
      {"device_alloc", o->device_alloc != NULL},
      {"device_free", o->device_free != NULL},
      {"host_alloc", o->host_alloc != NULL},
      {"host_free", o->host_free != NULL},
      {"event_create", o->event_create != NULL},
      {"event_destroy", o->event_destroy != NULL},
      {"copy_h2d_async", o->copy_h2d_async != NULL},
      {"compute_wait", o->compute_wait != NULL},
      {"event_sync", o->event_sync != NULL},
      {"upload", o->upload != NULL},
      {"download", o->download != NULL},
      {"synchronize", o->synchronize != NULL},
      {"matmul", o->matmul != NULL},
      {"rmsnorm", o->rmsnorm != NULL},
      {"rope", o->rope != NULL},
      {"kv_store", o->kv_store != NULL},
      {"attention", o->attention != NULL},
      {"router_topk", o->router_topk != NULL},
      {"swiglu", o->swiglu != NULL},
      {"add", o->add != NULL},
      {"embed", o->embed != NULL},
      {"gather_rows", o->gather_rows != NULL},
      {"scatter_add_rows", o->scatter_add_rows != NULL},
  };
  for (size_t i = 0; i < sizeof req / sizeof req[0]; i++)
    if (!req[i].present)
      return MOE_FAIL(err, MOE_ERR_INVALID, "backend '%s' lacks required method '%s'",
                      o->name ? o->name : "?", req[i].name);
  return MOE_OK;
}

moe_status moe_device_open(moe_device *dev, const char *name, const moe_backend_options *opt,
                           moe_error *err) {
  memset(dev, 0, sizeof *dev);
  const moe_backend_ops *o = moe_backend_find(name);
  if (o == NULL) {
    if (strcmp(name, "cuda") == 0)
      return MOE_FAIL(err, MOE_ERR_UNSUPPORTED,
                      "backend 'cuda' cannot run models yet (its math ops are not implemented); "
                      "use --backend cpu");
    return MOE_FAIL(err, MOE_ERR_INVALID, "unknown backend '%s' (see 'moebench list backends')",
                    name);
  }
  moe_status st = moe_backend_validate(o, err);
  if (st != MOE_OK) return st;
  moe_backend_options defaults = {0};
  st = o->create(opt ? opt : &defaults, &dev->be, err);
  if (st != MOE_OK) return st;
  dev->ops = o;
  return MOE_OK;
}

void moe_device_close(moe_device *dev) {
  if (dev->ops && dev->be) dev->ops->destroy(dev->be);
  dev->ops = NULL;
  dev->be = NULL;
}
