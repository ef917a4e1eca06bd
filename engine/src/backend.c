/* The registry of built-in backends and the checks every table must pass. */
#include "moe/backend.h"
#include "moe/device.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const moe_backend_ops moe_cpu_backend;
extern const moe_backend_ops moe_sim_backend;
#ifdef MOE_HAVE_CUDA
extern const moe_backend_ops moe_cuda_backend;
#endif

static const moe_backend_ops *const k_backends[] = {
    &moe_cpu_backend,
#ifdef MOE_HAVE_CUDA
    &moe_cuda_backend,
#endif
    &moe_sim_backend,
};

moe_status moe_router_ex_check(const moe_router_ex *r, int n, moe_error *err) {
  if (r == NULL || !(r->k >= 1 && r->k <= n && n <= MOE_ROUTER_MAX_N))
    return MOE_FAIL(err, MOE_ERR_INVALID, "router: top-%d of %d experts (1 <= k <= n <= %d)",
                    r ? r->k : 0, n, MOE_ROUTER_MAX_N);
  if ((unsigned)r->scoring > MOE_SCORING_SOFTMAX_LOGITS ||
      (unsigned)r->group_score > MOE_GROUP_TOP2_SUM || r->n_group < 0 || !isfinite(r->scale))
    return MOE_FAIL(err, MOE_ERR_INVALID, "router: unknown scoring or group score, or a bad scale");
  if (r->scoring == MOE_SCORING_SOFTMAX_LOGITS && r->n_group > 1)
    return MOE_FAIL(err, MOE_ERR_INVALID, "router: softmax-of-logits scoring takes no groups (%d)",
                    r->n_group);
  if (r->n_group > 1) {
    const int size = n / r->n_group;
    if (n % r->n_group != 0 || r->topk_group < 1 || r->topk_group > r->n_group ||
        r->k > r->topk_group * size || (r->group_score == MOE_GROUP_TOP2_SUM && size < 2))
      return MOE_FAIL(err, MOE_ERR_INVALID,
                      "router: %d experts in %d groups keeping %d cannot give top-%d", n,
                      r->n_group, r->topk_group, r->k);
  }
  return MOE_OK;
}

moe_status moe_rope_ex_check(const moe_rope_ex *r, moe_error *err) {
  if (r == NULL || r->n_heads < 1 || r->rot_dim < 2 || r->rot_dim % 2 != 0 || r->offset < 0 ||
      (r->inv_freq == NULL && !(isfinite(r->theta) && r->theta > 0.0f)) || !isfinite(r->attn_scale) ||
      (r->n_heads > 1 && (size_t)r->offset + (size_t)r->rot_dim > r->head_stride) ||
      (size_t)r->offset + (size_t)r->rot_dim + (size_t)(r->n_heads - 1) * r->head_stride >
          (r->row_stride ? r->row_stride : SIZE_MAX))
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "rope: %d heads of stride %zu rotating %d at offset %d do not fit rows of %zu "
                    "(rot_dim even and positive, inv_freq or a positive theta given)",
                    r ? r->n_heads : 0, r ? r->head_stride : 0, r ? r->rot_dim : 0,
                    r ? r->offset : 0, r ? r->row_stride : 0);
  return MOE_OK;
}

moe_status moe_mla_check(const moe_mla_shape *s, const moe_weight *kv_b, moe_error *err) {
  if (s == NULL || kv_b == NULL || kv_b->data == NULL || s->n_seq < 0 || s->n_new < 0 ||
      s->pos0 < 0 || s->n_heads < 1 || s->nope_dim < 0 || s->rope_dim < 0 || s->v_dim < 1 ||
      s->kv_rank < 1 || (long)s->pos0 + s->n_new > s->max_seq || !isfinite(s->scale) ||
      kv_b->rows != (size_t)s->n_heads * ((size_t)s->nope_dim + (size_t)s->v_dim) ||
      kv_b->cols != (size_t)s->kv_rank)
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "mla attention: shape (heads %d, nope %d, rope %d, v %d, rank %d, positions "
                    "%d..%d of %d) does not match kv_b [%zu, %zu]",
                    s ? s->n_heads : 0, s ? s->nope_dim : 0, s ? s->rope_dim : 0,
                    s ? s->v_dim : 0, s ? s->kv_rank : 0, s ? s->pos0 : 0,
                    s ? s->pos0 + s->n_new - 1 : 0, s ? s->max_seq : 0, kv_b ? kv_b->rows : 0,
                    kv_b ? kv_b->cols : 0);
  return MOE_OK;
}

size_t moe_backend_count(void) { return sizeof k_backends / sizeof k_backends[0]; }

const moe_backend_ops *moe_backend_at(size_t i) {
  return i < moe_backend_count() ? k_backends[i] : NULL;
}

const moe_backend_ops *moe_backend_find(const char *name) {
  for (size_t i = 0; i < moe_backend_count(); i++)
    if (strcmp(k_backends[i]->name, name) == 0) return k_backends[i];
  return NULL;
}

/* The optional fields of a raw table of any size, read as absent past its
 * end. */
#define FIELD(o, f) \
  ((o)->struct_size >= offsetof(moe_backend_ops, f) + sizeof((o)->f) ? (o)->f : 0)

unsigned moe_backend_abi_minor(const moe_backend_ops *o) {
  if (o->struct_size >= MOE_BACKEND_SIZE_1_6) return o->abi_minor;
  if (o->struct_size >= MOE_BACKEND_SIZE_1_5) return 5;
  if (o->struct_size >= MOE_BACKEND_SIZE_1_4) return 4;
  if (o->struct_size >= MOE_BACKEND_SIZE_1_3) return 3;
  if (o->struct_size >= MOE_BACKEND_SIZE_1_2) return 2;
  return o->struct_size >= MOE_BACKEND_SIZE_1_1 ? 1 : 0;
}

/* Each legacy op needs its method or its _ex form (backend.h); a table of
 * 1.6 or later says so in abi_minor. */
static moe_status validate_legacy(const moe_backend_ops *o, moe_error *err) {
  const unsigned minor = moe_backend_abi_minor(o);
  if (o->struct_size >= MOE_BACKEND_SIZE_1_6 && minor < 6)
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "backend '%s' has a table of ABI 1.6 or later but abi_minor %u (set it to "
                    "MOE_BACKEND_ABI_MINOR)", o->name, minor);
  const struct {
    const char *legacy, *ex;
    int present;
  } alt[] = {
      {"rope", "rope_ex", o->rope != NULL || FIELD(o, rope_ex) != NULL},
      {"attention", "attention_ex", o->attention != NULL || FIELD(o, attention_ex) != NULL},
      {"router_topk", "router_topk_ex (ABI 1.6 or later)",
       o->router_topk != NULL || (minor >= 6 && FIELD(o, router_topk_ex) != NULL)},
  };
  for (size_t i = 0; i < sizeof alt / sizeof alt[0]; i++)
    if (!alt[i].present)
      return MOE_FAIL(err, MOE_ERR_INVALID, "backend '%s' lacks both '%s' and '%s'", o->name,
                      alt[i].legacy, alt[i].ex);
  /* ABI 1.8's overtakable copies: all four methods or none */
  const int urgent = (FIELD(o, copy_chunk) != NULL) + (FIELD(o, copy_h2d_ex) != NULL) +
                     (FIELD(o, copy_cancel) != NULL) + (FIELD(o, copy_urge) != NULL);
  if (urgent != 0 && urgent != 4)
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "backend '%s' has %d of the 4 methods of overtakable copies (copy_chunk, "
                    "copy_h2d_ex, copy_cancel, copy_urge): give all or none", o->name, urgent);
  return MOE_OK;
}

moe_status moe_backend_validate(const moe_backend_ops *o, moe_error *err) {
  if (o == NULL) return MOE_FAIL(err, MOE_ERR_INVALID, "backend table is NULL");
  if (o->abi_version != MOE_BACKEND_ABI)
    return MOE_FAIL(err, MOE_ERR_UNSUPPORTED,
                    "backend '%s' has ABI version %u, this engine speaks version %u",
                    o->name ? o->name : "?", o->abi_version, MOE_BACKEND_ABI);
  if (o->struct_size < MOE_BACKEND_SIZE_1_0)
    return MOE_FAIL(err, MOE_ERR_UNSUPPORTED,
                    "backend '%s' table is %u bytes, smaller than any version-%u table (%zu)",
                    o->name ? o->name : "?", o->struct_size, MOE_BACKEND_ABI,
                    (size_t)MOE_BACKEND_SIZE_1_0);
  const struct {
    const char *name;
    int present;
  } req[] = {
      {"name", o->name != NULL && o->name[0] != '\0'},
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
      {"compute_record", o->compute_record != NULL},
      {"copy_wait", o->copy_wait != NULL},
      {"event_done", o->event_done != NULL},
      {"device_capacity", o->device_capacity != NULL},
      {"matmul", o->matmul != NULL},
      {"rmsnorm", o->rmsnorm != NULL},
      {"kv_store", o->kv_store != NULL},
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
  return validate_legacy(o, err);
}

void moe_backend_normalize(const moe_backend_ops *o, moe_backend_ops *out) {
  size_t n = o->struct_size < sizeof *out ? o->struct_size : sizeof *out;
  memset(out, 0, sizeof *out);
  memcpy(out, o, n);
  out->abi_minor = moe_backend_abi_minor(o); /* an older table's, from its size */
  out->struct_size = sizeof *out;
}

const moe_backend_ops *moe_backend_auto(void) {
  for (size_t i = 0; i < moe_backend_count(); i++) {
    const moe_backend_ops *o = k_backends[i];
    if (!(o->caps & MOE_BACKEND_CAP_PREFERRED)) continue;
    char desc[256];
    moe_error err = {0};
    if (o->probe == NULL || o->probe(desc, sizeof desc, &err) == MOE_OK) return o;
  }
  return moe_backend_find("cpu");
}

const char *moe_backend_device_name(const moe_backend_ops *o, moe_backend *be) {
  const char *n = o->device_name ? o->device_name(be) : NULL;
  return n && n[0] ? n : o->name;
}

static const struct {
  const char *name, *since;
} op_info[MOE_OP_COUNT] = {
    [MOE_OP_ATTENTION_EX] = {"attention_ex", "1.2"}, [MOE_OP_UNARY] = {"unary", "1.2"},
    [MOE_OP_ROUTER_TOPK_EX] = {"router_topk_ex", "1.3"}, [MOE_OP_ROPE_EX] = {"rope_ex", "1.4"},
    [MOE_OP_MLA_ATTENTION] = {"mla_attention", "1.4"}, [MOE_OP_DOWNLOAD_MANY] = {"download_many", "1.5"},
    [MOE_OP_ARGMAX_ROWS] = {"argmax_rows", "1.5"}, [MOE_OP_HOST_REGISTER] = {"host_register", "1.0"},
    [MOE_OP_HOST_RUN] = {"host_run", "1.7"}, [MOE_OP_COPY_URGENT] = {"copy_h2d_ex", "1.8"},
};

bool moe_backend_supports(const moe_backend_ops *o, moe_backend_op op) {
  switch (op) {
  case MOE_OP_ATTENTION_EX: return o->attention_ex != NULL;
  case MOE_OP_UNARY: return o->unary != NULL;
  case MOE_OP_ROUTER_TOPK_EX: return o->router_topk_ex != NULL;
  case MOE_OP_ROPE_EX: return o->rope_ex != NULL;
  case MOE_OP_MLA_ATTENTION: return o->mla_attention != NULL;
  case MOE_OP_DOWNLOAD_MANY: return o->download_many != NULL;
  case MOE_OP_ARGMAX_ROWS: return o->argmax_rows != NULL;
  case MOE_OP_HOST_REGISTER: return o->host_register != NULL;
  case MOE_OP_HOST_RUN: return o->host_run != NULL;
  case MOE_OP_COPY_URGENT: return o->copy_h2d_ex != NULL;
  case MOE_OP_COUNT: break;
  }
  return false;
}

const char *moe_backend_op_name(moe_backend_op op) {
  return (unsigned)op < MOE_OP_COUNT ? op_info[op].name : "?";
}

moe_status moe_backend_require(const moe_backend_ops *o, unsigned mask, const char *who,
                               moe_error *err) {
  for (int op = 0; op < MOE_OP_COUNT; op++)
    if ((mask & MOE_OP_BIT(op)) && !moe_backend_supports(o, (moe_backend_op)op))
      return MOE_FAIL(err, MOE_ERR_UNSUPPORTED,
                      "the %s backend lacks the %s op (backend ABI %s) that %s needs", o->name,
                      op_info[op].name, op_info[op].since, who);
  return MOE_OK;
}

/* ---------------------------------------------------------- legacy ops */

/* rope_ex over a device table of plain RoPE's frequencies made for this
 * call: for a 1.4 or 1.5 table without the legacy rope (its rope_ex does
 * not know inv_freq NULL).  The table is outside the memory accounting. */
static moe_status rope_with_table(const moe_backend_ops *o, moe_backend *be, float *x, size_t m,
                                  const int32_t *pos, const moe_rope_ex *r, moe_error *err) {
  const int half = r->rot_dim / 2;
  float *host = malloc((size_t)half * sizeof *host);
  if (host == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "rope: out of host memory");
  for (int i = 0; i < half; i++) host[i] = 1.0f / powf(r->theta, (float)(2 * i) / (float)r->rot_dim);
  void *dev = NULL;
  moe_status st = o->device_alloc(be, (size_t)half * sizeof *host, &dev, err);
  if (st == MOE_OK) st = o->upload(be, dev, host, (size_t)half * sizeof *host, err);
  if (st == MOE_OK) {
    moe_rope_ex t = *r;
    t.inv_freq = dev;
    st = o->rope_ex(be, x, m, pos, &t, err);
  }
  if (dev) o->device_free(be, dev); /* after the rope_ex that reads it (backend.h) */
  free(host);
  return st;
}

moe_status moe_backend_rope(const moe_backend_ops *o, moe_backend *be, float *x, size_t m,
                            const int32_t *pos, int n_heads, int head_dim, float theta,
                            const float *inv_freq, moe_error *err) {
  if (head_dim < 2 || head_dim % 2 != 0 || n_heads < 1 || !(theta > 0.0f))
    return MOE_FAIL(err, MOE_ERR_INVALID, "rope: %d heads of %d (even) at theta %g", n_heads,
                    head_dim, (double)theta);
  const bool knows_theta = moe_backend_abi_minor(o) >= 6;
  if (o->rope_ex == NULL || (inv_freq == NULL && !knows_theta && o->rope != NULL))
    return o->rope(be, x, m, pos, n_heads, head_dim, theta, err);
  if (m == 0) return MOE_OK;
  const size_t hd = (size_t)head_dim;
  const moe_rope_ex r = {n_heads, (size_t)n_heads * hd, hd, 0, head_dim, false, inv_freq, 1.0f,
                         theta};
  if (inv_freq == NULL && !knows_theta) return rope_with_table(o, be, x, m, pos, &r, err);
  return o->rope_ex(be, x, m, pos, &r, err);
}

moe_status moe_backend_attention(const moe_backend_ops *o, moe_backend *be, float *out,
                                 const float *q, const float *kc, const float *vc,
                                 const moe_attn_shape *s, moe_error *err) {
  if (o->attention_ex == NULL) return o->attention(be, out, q, kc, vc, s, err);
  const moe_attn_ex a = {s->n_seq,     s->n_new,        s->pos0,     s->pos0 + s->n_new,
                         s->max_seq,   s->n_heads,      s->n_kv_heads, s->head_dim,
                         true,         1.0f / sqrtf((float)s->head_dim), NULL, NULL, 0};
  return o->attention_ex(be, out, q, kc, vc, &a, err);
}

moe_status moe_backend_router_topk(const moe_backend_ops *o, moe_backend *be, int32_t *idx,
                                   float *wts, const float *logits, size_t m, int n, int k,
                                   bool renorm, const moe_weight *bias, moe_error *err) {
  if (o->router_topk_ex == NULL || moe_backend_abi_minor(o) < 6) {
    if (o->router_topk == NULL) /* a validated table has one of the two */
      return MOE_FAIL(err, MOE_ERR_UNSUPPORTED, "the %s backend has no router", o->name);
    return o->router_topk(be, idx, wts, logits, m, n, k, renorm, bias, err);
  }
  const moe_router_ex r = {k, MOE_SCORING_SOFTMAX_LOGITS, bias, 0, 0, MOE_GROUP_MAX, renorm, 1.0f,
                           false};
  return o->router_topk_ex(be, idx, wts, logits, m, n, &r, err);
}

struct moe_dev_alloc {
  void *ptr;
  size_t bytes;
  moe_mem_category cat;
};

const char *moe_mem_category_name(moe_mem_category c) {
  static const char *names[] = {"dense", "expert_slots", "kv_cache", "activations", "workspace"};
  return (unsigned)c < MOE_MEM_CATEGORIES ? names[c] : "?";
}

moe_status moe_device_open(moe_device *dev, const char *name, const moe_backend_options *opt,
                           moe_error *err) {
  memset(dev, 0, sizeof *dev);
  const moe_backend_ops *o = strcmp(name, "auto") == 0 ? moe_backend_auto() : moe_backend_find(name);
  if (o == NULL) {
    if (strcmp(name, "cuda") == 0)
      return MOE_FAIL(err, MOE_ERR_UNSUPPORTED,
                      "this build has no CUDA backend (configure with -DMOE_WITH_CUDA=ON); "
                      "use --backend cpu");
    return MOE_FAIL(err, MOE_ERR_INVALID, "unknown backend '%s' (see 'moebench list backends')",
                    name);
  }
  return moe_device_open_ops(dev, o, opt, err);
}

moe_status moe_device_open_ops(moe_device *dev, const moe_backend_ops *o,
                               const moe_backend_options *opt, moe_error *err) {
  memset(dev, 0, sizeof *dev);
  moe_status st = moe_backend_validate(o, err);
  if (st != MOE_OK) return st;
  moe_backend_ops *copy = malloc(sizeof *copy);
  if (copy == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "out of host memory (backend table)");
  moe_backend_normalize(o, copy);
  moe_backend_options defaults = {0};
  if (opt == NULL) opt = &defaults;
  if (opt->link_gbps != 0 && !(copy->caps & MOE_BACKEND_CAP_LINK_CAP)) {
    free(copy);
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "the %s backend copies over the real host link; a link cap (--link-gbps) "
                    "is emulated by backends that have one (the cpu backend)",
                    o->name);
  }
  if ((opt->hardware || opt->routing) && !(copy->caps & MOE_BACKEND_CAP_MODELED)) {
    free(copy);
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "the %s backend runs for real; a hardware profile or a routing source is for "
                    "a modeled backend (--backend sim)", o->name);
  }
  st = copy->create(opt, &dev->be, err);
  if (st != MOE_OK) {
    free(copy);
    dev->be = NULL;
    return st;
  }
  dev->ops = copy;
  size_t cap = copy->device_capacity(dev->be);
  dev->mem.budget = opt->device_budget ? opt->device_budget : cap;
  return MOE_OK;
}

void moe_device_close(moe_device *dev) {
  if (dev->ops && dev->be) {
    moe_error ignored = {0};
    (void)dev->ops->synchronize(dev->be, &ignored); /* nothing in flight into freed memory */
    for (size_t i = 0; i < dev->n_allocs; i++) dev->ops->device_free(dev->be, dev->allocs[i].ptr);
    dev->ops->destroy(dev->be);
  }
  free((void *)dev->ops);
  free(dev->allocs);
  memset(dev, 0, sizeof *dev);
}

/* Heap storage around moe_device_open (name) or moe_device_open_ops (ops). */
static moe_status device_new(moe_device **out, const char *name, const moe_backend_ops *ops,
                             const moe_backend_options *opt, moe_error *err) {
  *out = NULL;
  moe_device *dev = calloc(1, sizeof *dev);
  if (dev == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "out of host memory (device)");
  moe_status st = ops ? moe_device_open_ops(dev, ops, opt, err) : moe_device_open(dev, name, opt, err);
  if (st != MOE_OK) {
    free(dev);
    return st;
  }
  *out = dev;
  return MOE_OK;
}

moe_status moe_device_create(moe_device **out, const char *name, const moe_backend_options *opt,
                             moe_error *err) {
  return device_new(out, name, NULL, opt, err);
}

moe_status moe_device_create_ops(moe_device **out, const moe_backend_ops *ops,
                                 const moe_backend_options *opt, moe_error *err) {
  return device_new(out, NULL, ops, opt, err);
}

void moe_device_destroy(moe_device *dev) {
  if (dev == NULL) return;
  moe_device_close(dev);
  free(dev);
}

const moe_backend_ops *moe_device_ops(const moe_device *dev) { return dev->ops; }
moe_backend *moe_device_backend(const moe_device *dev) { return dev->be; }
const moe_mem_stats *moe_device_mem(const moe_device *dev) { return &dev->mem; }
const char *moe_device_name(const moe_device *dev) { return moe_backend_device_name(dev->ops, dev->be); }

static void format_bytes(char *buf, size_t cap, size_t b) {
  if (b >= ((size_t)1 << 30))
    snprintf(buf, cap, "%zu bytes (%.2f GiB)", b, (double)b / (double)((size_t)1 << 30));
  else
    snprintf(buf, cap, "%zu bytes (%.2f MiB)", b, (double)b / (double)((size_t)1 << 20));
}

moe_status moe_device_alloc(moe_device *dev, moe_mem_category cat, size_t bytes, const char *what,
                            void **ptr, moe_error *err) {
  moe_mem_stats *m = &dev->mem;
  *ptr = NULL;
  if (bytes > m->budget || m->current_total > m->budget - bytes) {
    char need[64], used[64], budget[64];
    format_bytes(need, sizeof need, bytes);
    format_bytes(used, sizeof used, m->current_total);
    format_bytes(budget, sizeof budget, m->budget);
    return MOE_FAIL(err, MOE_ERR_OOM,
                    "device memory budget exceeded allocating %s: need %s, %s in use, budget %s",
                    what, need, used, budget);
  }
  if (dev->n_allocs == dev->cap_allocs) {
    size_t cap = dev->cap_allocs ? 2 * dev->cap_allocs : 32;
    struct moe_dev_alloc *a = realloc(dev->allocs, cap * sizeof *a);
    if (a == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "out of host memory (allocation table)");
    dev->allocs = a;
    dev->cap_allocs = cap;
  }
  /* zero-byte buffers still get a distinct pointer; they count 0 bytes */
  moe_status st = dev->ops->device_alloc(dev->be, bytes ? bytes : 1, ptr, err);
  if (st != MOE_OK) return st;
  dev->allocs[dev->n_allocs++] = (struct moe_dev_alloc){*ptr, bytes, cat};
  m->current[cat] += bytes;
  m->current_total += bytes;
  m->allocations++;
  if (m->current[cat] > m->peak[cat]) m->peak[cat] = m->current[cat];
  if (m->current_total > m->peak_total) {
    m->peak_total = m->current_total;
    memcpy(m->at_peak, m->current, sizeof m->at_peak);
  }
  return MOE_OK;
}

void moe_device_free(moe_device *dev, void *ptr) {
  if (ptr == NULL) return;
  for (size_t i = 0; i < dev->n_allocs; i++) {
    if (dev->allocs[i].ptr != ptr) continue;
    dev->mem.current[dev->allocs[i].cat] -= dev->allocs[i].bytes;
    dev->mem.current_total -= dev->allocs[i].bytes;
    dev->allocs[i] = dev->allocs[--dev->n_allocs];
    dev->ops->device_free(dev->be, ptr);
    return;
  }
}

void moe_device_reset_peak(moe_device *dev) {
  moe_mem_stats *m = &dev->mem;
  memcpy(m->peak, m->current, sizeof m->peak);
  memcpy(m->at_peak, m->current, sizeof m->at_peak);
  m->peak_total = m->current_total;
}

moe_status moe_device_download_many(moe_device *dev, const moe_xfer *x, int n, moe_error *err) {
  if (dev->ops->download_many) return dev->ops->download_many(dev->be, x, n, err);
  for (int i = 0; i < n; i++) {
    moe_status st = dev->ops->download(dev->be, x[i].dst, x[i].src, x[i].bytes, err);
    if (st != MOE_OK) return st;
  }
  return MOE_OK;
}
