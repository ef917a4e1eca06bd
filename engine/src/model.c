/* Model weights in host memory: the tensor table (Hugging Face names from
 * the model's family, families/), synthetic initialisation, checkpoint
 * loading and saving. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <string.h>

#include "checked.h"
#include "model_internal.h"
#include "moe/device.h"
#include "moe/publish.h"
#include "moe/safetensors.h"
#include "moe/rng.h"

/* ------------------------------------------------------------ tensor table */

moe_status moe_spec_add(moe_spec_builder *b, moe_role role, int layer, int expert, size_t rows,
                        size_t cols, bool vector, bool optional, const char *fmt, ...) {
  moe_model *m = b->m;
  if (m->n_specs == b->cap) {
    size_t cap = b->cap ? 2 * b->cap : 64;
    moe_tensor_spec *p = realloc(m->specs, cap * sizeof *p);
    if (p == NULL) return MOE_FAIL(b->err, MOE_ERR_OOM, "out of host memory (tensor table)");
    m->specs = p;
    b->cap = cap;
  }
  moe_tensor_spec *s = &m->specs[m->n_specs];
  memset(s, 0, sizeof *s);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->name, sizeof s->name, fmt, ap);
  va_end(ap);
  s->role = role;
  s->layer = layer;
  s->expert = expert;
  s->rows = rows;
  s->cols = cols;
  s->vector = vector;
  s->optional = optional;
  s->is_expert = expert >= 0;
  if (!s->is_expert) m->dense_index[layer < 0 ? m->cfg.n_layers : layer][role] = (int)m->n_specs;
  m->n_specs++;
  return MOE_OK;
}

void moe_spec_alt(moe_spec_builder *b, const char *alt) {
  moe_model *m = b->m;
  snprintf(m->specs[m->n_specs - 1].alt, sizeof m->specs[0].alt, "%s", alt);
}

void moe_spec_stacked(moe_spec_builder *b, size_t rows_per_entry, size_t row0) {
  moe_tensor_spec *s = &b->m->specs[b->m->n_specs - 1];
  s->stack_rows = rows_per_entry;
  s->stack_row0 = row0;
}

const moe_config *moe_spec_config(const moe_spec_builder *b) { return &b->m->cfg; }

/* The name of the embedding whose dtype a checkpoint's weights take, and
 * another name for it (may be ""). */
static void embed_names(const moe_config *c, const char **name, const char **alt) {
  const moe_family *fam = moe_family_by_arch(c->arch);
  *name = "model.embed_tokens.weight";
  *alt = "";
  if (fam && fam->embed_names) fam->embed_names(c, name, alt);
}

/* Lays out both slabs (offsets, sizes) for m->specs.  Dense tensors are
 * packed with 64-byte alignment; each expert is gate, up, down back to
 * back (up, down without a gate), experts back to back.  Every size is
 * overflow-checked: a config whose dimensions are each in range can still
 * describe tensors larger than memory can address. */
static moe_status layout(moe_model *m, moe_error *err) {
  const moe_config *c = &m->cfg;
  const size_t H = (size_t)c->hidden, E = (size_t)c->n_experts, F = (size_t)c->expert_ffn;
  const size_t es = moe_dtype_size(m->dtype);
  const size_t mats = c->ffn_act == MOE_FFN_RELU ? 2 : 3;
  m->expert_bytes = moe_prod(mats, F, H, es);
  size_t total = moe_prod((size_t)m->n_moe, E, m->expert_bytes, 1);
  if (m->expert_bytes == SIZE_MAX || total == SIZE_MAX)
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "model too large: %d MoE layers x %zu experts x %zu x %zu x %zu x %zu bytes "
                    "overflows the address space", m->n_moe, E, mats, F, H, es);
  size_t off = 0;
  for (size_t i = 0; i < m->n_specs; i++) {
    moe_tensor_spec *s = &m->specs[i];
    size_t nb = moe_prod(s->rows, s->cols, es, 1);
    if (s->is_expert) {
      size_t base = ((size_t)m->moe_index[s->layer] * E + (size_t)s->expert) * m->expert_bytes;
      size_t part = s->role == ROLE_E_GATE ? 0 : s->role == ROLE_E_UP ? 1 : 2;
      if (mats == 2) part--; /* no gate: up, down */
      s->offset = base + part * F * H * es; /* < total, which did not overflow */
    } else {
      s->offset = off;
      size_t padded = nb;
      if (!moe_add_ok(&padded, 63) || !moe_add_ok(&off, padded & ~(size_t)63))
        return MOE_FAIL(err, MOE_ERR_INVALID,
                        "model too large: tensor %s (%zu x %zu) overflows the dense layout",
                        s->name, s->rows, s->cols);
    }
  }
  m->dense_bytes = off;
  m->experts_total = total;
  if (!moe_add_ok(&total, off) || !moe_add_ok(&total, 128))
    return MOE_FAIL(err, MOE_ERR_INVALID, "model too large: its weights overflow the address space");
  return MOE_OK;
}


/* Fills m->specs for m->cfg (the family's tensor names) and lays it out. */
static moe_status build_specs(moe_model *m, moe_error *err) {
  const moe_family *fam = moe_family_by_arch(m->cfg.arch);
  moe_spec_builder b = {m, 0, err};
  for (int i = 0; i <= MOE_MAX_LAYERS; i++)
    for (int r = 0; r < ROLE_COUNT; r++) m->dense_index[i][r] = -1;
  if (fam == NULL) return MOE_FAIL(err, MOE_ERR_INVALID, "unknown model family %d", (int)m->cfg.arch);
  MOE_TRY_RET(fam->build_specs ? fam->build_specs(&b) : moe_decoder_specs(&b));
  m->n_moe = 0;
  for (int l = 0; l < m->cfg.n_layers; l++) m->moe_index[l] = m->cfg.is_moe[l] ? m->n_moe++ : -1;
  return layout(m, err);
}

/* A model with its tensor table and layout for cfg, no weight slabs. */
static moe_status model_table(moe_model **out, const moe_config *cfg, moe_dtype dtype,
                              moe_error *err) {
  moe_status st = MOE_OK;
  *out = NULL;
  moe_model *m = calloc(1, sizeof *m);
  MOE_CHECK_ALLOC(m, err, sizeof *m);
  m->cfg = *cfg;
  m->dtype = dtype;
  MOE_TRY(moe_config_validate(cfg, "model config", err));
  MOE_TRY(build_specs(m, err));
  *out = m;
  return MOE_OK;
cleanup:
  moe_model_free(m);
  return st;
}

moe_status moe_model_plan_only(moe_model **out, const moe_config *cfg, moe_dtype dtype,
                               moe_error *err) {
  return model_table(out, cfg, dtype, err);
}

moe_status moe_model_plan_layout(const moe_config *cfg, moe_dtype dtype, size_t *dense_bytes,
                                 size_t *experts_bytes, moe_error *err) {
  moe_model *m = NULL;
  moe_status st = model_table(&m, cfg, dtype, err);
  if (st != MOE_OK) return st;
  *dense_bytes = m->dense_bytes;
  *experts_bytes = m->experts_total;
  moe_model_free(m);
  return MOE_OK;
}

static void *reserve_zeros(size_t bytes) {
  void *p = mmap(NULL, bytes ? bytes : 64, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

moe_status moe_model_virtual(moe_model **out, const moe_config *cfg, const moe_synth_options *opt,
                             moe_error *err) {
  moe_status st = MOE_OK;
  moe_model *m = NULL;
  MOE_TRY(model_table(&m, cfg, opt->dtype, err));
  m->is_virtual = true;
  /* the tensors a synthetic model of these options would have */
  for (size_t i = 0; i < m->n_specs; i++) {
    moe_tensor_spec *s = &m->specs[i];
    s->present = !(s->role == ROLE_ROUTER_BIAS && opt->routing_skew <= 0.0 && s->optional) &&
                 !(s->role == ROLE_PREGATE && !opt->pregate);
  }
  m->dense = reserve_zeros(m->dense_bytes);
  MOE_CHECK(m->dense != NULL, err, MOE_ERR_OOM,
            "cannot reserve %zu bytes of address space for a virtual model", m->dense_bytes);
  if (m->experts_total) {
    m->experts = reserve_zeros(m->experts_total);
    MOE_CHECK(m->experts != NULL, err, MOE_ERR_OOM,
              "cannot reserve %zu bytes of address space for a virtual model", m->experts_total);
  }
  *out = m;
  return MOE_OK;
cleanup:
  moe_model_free(m);
  return st;
}

bool moe_model_is_virtual(const moe_model *m) { return m->is_virtual; }

/* Allocates an empty model with its table and slabs for cfg. */
static moe_status model_alloc(moe_model **out, const moe_config *cfg, moe_dtype dtype,
                              moe_error *err) {
  moe_status st = MOE_OK;
  moe_model *m = NULL;
  MOE_TRY(model_table(&m, cfg, dtype, err));
  m->dense = aligned_alloc(64, m->dense_bytes ? m->dense_bytes : 64);
  MOE_CHECK_ALLOC(m->dense, err, m->dense_bytes);
  if (m->experts_total) {
    m->experts = aligned_alloc(64, (m->experts_total + 63) & ~(size_t)63);
    MOE_CHECK_ALLOC(m->experts, err, m->experts_total);
  }
  *out = m;
  return MOE_OK;
cleanup:
  moe_model_free(m);
  return st;
}

void moe_model_free(moe_model *m) {
  if (m == NULL) return;
  free(m->specs);
  if (m->is_virtual) {
    if (m->dense) munmap(m->dense, m->dense_bytes ? m->dense_bytes : 64);
    if (m->experts) munmap(m->experts, m->experts_total);
  } else {
    free(m->dense);
    free(m->experts);
  }
  free(m);
}

static uint8_t *spec_ptr(const moe_model *m, const moe_tensor_spec *s) {
  return (s->is_expert ? m->experts : m->dense) + s->offset;
}

const moe_tensor_spec *moe_model_spec(const moe_model *m, int layer, moe_role role) {
  int i = m->dense_index[layer < 0 ? m->cfg.n_layers : layer][role];
  return i < 0 || !m->specs[i].present ? NULL : &m->specs[i];
}

const void *moe_model_expert_host(const moe_model *m, int layer, int expert) {
  return m->experts +
         ((size_t)m->moe_index[layer] * (size_t)m->cfg.n_experts + (size_t)expert) * m->expert_bytes;
}

const moe_config *moe_model_config(const moe_model *m) { return &m->cfg; }
moe_dtype moe_model_dtype(const moe_model *m) { return m->dtype; }
size_t moe_model_dense_bytes(const moe_model *m) { return m->dense_bytes; }
size_t moe_model_expert_bytes(const moe_model *m) { return m->expert_bytes; }

moe_status moe_model_pin(moe_model *m, moe_device *dev, moe_error *err) {
  if (!dev->ops->host_register || !dev->ops->host_unregister || m->experts_total == 0) return MOE_OK;
  return dev->ops->host_register(dev->be, m->experts, m->experts_total, err);
}

void moe_model_unpin(moe_model *m, moe_device *dev) {
  if (dev->ops->host_register && dev->ops->host_unregister && m->experts_total > 0)
    dev->ops->host_unregister(dev->be, m->experts);
}
size_t moe_model_total_bytes(const moe_model *m) { return m->dense_bytes + m->experts_total; }

/* ------------------------------------------------------------ synthetic */

/* Standard deviation of a tensor's init, or a negative code: -1 ones,
 * -2 small bias, -3 routing-skew bias. */
static double init_std(const moe_config *c, const moe_tensor_spec *s) {
  const double branch = 1.0 / sqrt(2.0 * c->n_layers);
  switch (s->role) {
    case ROLE_EMBED: case ROLE_ENC_EMBED: return 1.0;
    case ROLE_FINAL_NORM: case ROLE_ATTN_NORM: case ROLE_FFN_NORM: case ROLE_ENC_FINAL_NORM:
    case ROLE_XATTN_NORM: case ROLE_QNORM: case ROLE_KNORM: case ROLE_QA_NORM:
    case ROLE_KVA_NORM: return -1;
    case ROLE_REL_BIAS: return 1.0 / sqrt((double)c->hidden);
    case ROLE_BQ: case ROLE_BK: case ROLE_BV: case ROLE_BO: case ROLE_BQA: case ROLE_BKVA:
      return -2;
    case ROLE_ROUTER_BIAS: return -3;
    case ROLE_WO: case ROLE_XO: case ROLE_SH_DOWN: case ROLE_D_DOWN: case ROLE_E_DOWN:
      return branch / sqrt((double)s->cols);
    default: return 1.0 / sqrt((double)s->cols);
  }
}

static void fill_tensor(moe_model *m, moe_tensor_spec *s, size_t stream, uint64_t seed,
                        double skew, float *buf, size_t buf_n) {
  const size_t n = s->rows * s->cols, es = moe_dtype_size(m->dtype);
  uint8_t *dst = spec_ptr(m, s);
  moe_rng r;
  moe_rng_seed(&r, seed, stream);
  double sd = init_std(&m->cfg, s);
  if (sd == -3) {
    /* Zipf prior: a random permutation gives each expert a rank. */
    int rank[MOE_MAX_EXPERTS];
    for (size_t i = 0; i < n; i++) rank[i] = (int)i;
    for (size_t i = n; i > 1; i--) {
      size_t j = (size_t)(moe_rng_next(&r) % i);
      int t = rank[i - 1];
      rank[i - 1] = rank[j];
      rank[j] = t;
    }
    for (size_t i = 0; i < n; i++) buf[i] = (float)(-skew * log((double)rank[i] + 1.0));
    moe_convert_from_f32(dst, m->dtype, buf, n);
    return;
  }
  const double half_width = sd > 0 ? sqrt(3.0) * sd : 0.0; /* uniform with std sd */
  for (size_t done = 0; done < n; done += buf_n) {
    size_t c = n - done < buf_n ? n - done : buf_n;
    for (size_t i = 0; i < c; i++) {
      if (sd == -1)
        buf[i] = 1.0f;
      else if (sd == -2)
        buf[i] = (float)(0.02 * (2.0 * moe_rng_uniform(&r) - 1.0));
      else
        buf[i] = (float)(half_width * (2.0 * moe_rng_uniform(&r) - 1.0));
    }
    moe_convert_from_f32(dst + done * es, m->dtype, buf, c);
  }
}

moe_status moe_model_synthetic(moe_model **out, const moe_config *cfg,
                               const moe_synth_options *opt, moe_error *err) {
  moe_status st = MOE_OK;
  moe_model *m = NULL;
  *out = NULL;
  MOE_CHECK(opt->routing_skew >= 0.0 && isfinite(opt->routing_skew), err, MOE_ERR_INVALID,
            "routing skew must be a finite number >= 0 (got %g)", opt->routing_skew);
  MOE_TRY(model_alloc(&m, cfg, opt->dtype, err));
  enum { BUF_N = 1 << 16 };
  float *buf = malloc(BUF_N * sizeof *buf > (size_t)cfg->n_experts * sizeof(float)
                          ? BUF_N * sizeof *buf
                          : (size_t)cfg->n_experts * sizeof(float));
  MOE_CHECK_ALLOC(buf, err, BUF_N * sizeof *buf);
  for (size_t i = 0; i < m->n_specs; i++) {
    moe_tensor_spec *s = &m->specs[i];
    if (s->role == ROLE_ROUTER_BIAS && opt->routing_skew <= 0.0 && s->optional) continue;
    if (s->role == ROLE_PREGATE && !opt->pregate) continue;
    fill_tensor(m, s, i, opt->seed, opt->routing_skew, buf, BUF_N);
    s->present = true;
  }
  free(buf);
  /* A synthetic pre-gate stands for one fine-tuned to predict the next
   * block's routing: it starts as the next MoE block's router (applied one
   * block early), plus the seeded perturbation drawn above at 1/4 scale, so
   * predictions are good but not perfect. */
  for (size_t i = 0; opt->pregate && i < m->n_specs; i++) {
    moe_tensor_spec *s = &m->specs[i];
    if (s->role != ROLE_PREGATE || !s->present) continue;
    int next = s->layer + 1;
    while (next < cfg->n_layers && !cfg->is_moe[next]) next++;
    const moe_tensor_spec *r = moe_model_spec(m, next, ROLE_ROUTER);
    MOE_CHECK(r != NULL, err, MOE_ERR_INTERNAL, "no router for the pre-gate of layer %d", s->layer);
    const size_t n = s->rows * s->cols;
    float a, b;
    for (size_t j = 0; j < n; j++) {
      moe_convert_to_f32(&a, spec_ptr(m, s) + j * moe_dtype_size(m->dtype), m->dtype, 1);
      moe_convert_to_f32(&b, spec_ptr(m, r) + j * moe_dtype_size(m->dtype), m->dtype, 1);
      a = b + 0.25f * a;
      moe_convert_from_f32(spec_ptr(m, s) + j * moe_dtype_size(m->dtype), m->dtype, &a, 1);
    }
  }
  *out = m;
  return MOE_OK;
cleanup:
  moe_model_free(m);
  return st;
}

/* ------------------------------------------------------------ checkpoints */

/* Values of a loaded tensor (n of dtype dt at p) that are NaN or infinite:
 * an exponent of all ones in the format's own bits. */
static size_t count_nonfinite(const uint8_t *p, moe_dtype dt, size_t n) {
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) {
    if (dt == MOE_F32) {
      uint32_t u;
      memcpy(&u, p + 4 * i, 4);
      bad += (u & 0x7f800000u) == 0x7f800000u;
    } else {
      uint16_t u;
      memcpy(&u, p + 2 * i, 2);
      bad += dt == MOE_F16 ? (u & 0x7c00u) == 0x7c00u : (u & 0x7f80u) == 0x7f80u;
    }
  }
  return bad;
}

/* A tensor every value of which is NaN or infinite is refused (the model
 * could only compute NaN); one with some is loaded with a warning naming
 * it. */
static moe_status check_finite(const moe_model *m, const moe_tensor_spec *s, const char *file,
                               moe_error *err) {
  const size_t n = s->rows * s->cols;
  const size_t bad = n ? count_nonfinite(spec_ptr(m, s), m->dtype, n) : 0;
  if (bad == 0) return MOE_OK;
  if (bad == n)
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: tensor '%s': every one of its %zu values is NaN or "
                    "infinite", file, s->name, n);
  fprintf(stderr, "moe: warning: %s: tensor '%s' holds %zu NaN or infinite values of %zu\n", file,
          s->name, bad, n);
  return MOE_OK;
}

/* Tensor bytes are read from the file (moe_checkpoint_read, pread), never
 * copied out of the mapping: a checkpoint truncated while it loads is an
 * error naming the file, not a SIGBUS. */
static moe_status load_tensor(moe_model *m, moe_tensor_spec *s, const moe_checkpoint *ck,
                              const moe_st_tensor *t, const char *file, moe_error *err) {
  if (!t->has_dtype)
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: tensor '%s' has dtype %s; expected F32, F16 or BF16",
                    file, s->name, t->dtype);
  const size_t E = (size_t)m->cfg.n_experts;
  bool ok = s->stack_rows ? (t->ndim == 3 && (size_t)t->shape[0] == E &&
                             (size_t)t->shape[1] == s->stack_rows && (size_t)t->shape[2] == s->cols)
            : s->vector   ? (t->ndim == 1 && (size_t)t->shape[0] == s->cols)
                          : (t->ndim == 2 && (size_t)t->shape[0] == s->rows && (size_t)t->shape[1] == s->cols);
  if (!ok) {
    char got[64] = "";
    for (int d = 0; d < t->ndim && strlen(got) < 48; d++)
      snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "",
               (long long)t->shape[d]);
    if (s->stack_rows)
      return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: tensor '%s' has shape [%s], expected [%zu, %zu, "
                      "%zu]", file, s->name, got, E, s->stack_rows, s->cols);
    if (s->vector)
      return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: tensor '%s' has shape [%s], expected [%zu]", file,
                      s->name, got, s->cols);
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: tensor '%s' has shape [%s], expected [%zu, %zu]",
                    file, s->name, got, s->rows, s->cols);
  }
  uint8_t *dst = spec_ptr(m, s);
  const size_t n = s->rows * s->cols, ses = moe_dtype_size(t->mdtype), des = moe_dtype_size(m->dtype);
  /* a stacked tensor's slice: its rows are contiguous */
  const size_t at = s->stack_rows
                        ? ((size_t)s->expert * s->stack_rows + s->stack_row0) * s->cols * ses
                        : 0;
  if (t->mdtype == m->dtype) return moe_checkpoint_read(ck, t, at, dst, n * ses, err);
  /* Convert through an aligned f32 buffer. */
  enum { CHUNK = 4096 };
  float f[CHUNK];
  uint8_t raw[CHUNK * 4];
  for (size_t i = 0; i < n; i += CHUNK) {
    size_t c = n - i < CHUNK ? n - i : CHUNK;
    moe_status st = moe_checkpoint_read(ck, t, at + i * ses, raw, c * ses, err);
    if (st != MOE_OK) return st;
    moe_convert_to_f32(f, raw, t->mdtype, c);
    moe_convert_from_f32(dst + i * des, m->dtype, f, c);
  }
  return MOE_OK;
}

moe_status moe_model_checkpoint_dtype(const moe_config *cfg, const char *ckpt_dir, moe_dtype *out,
                                      moe_error *err) {
  moe_status st = MOE_OK;
  moe_checkpoint *ck = NULL;
  const char *file = NULL, *emb_name, *emb_alt;
  embed_names(cfg, &emb_name, &emb_alt);
  MOE_TRY(moe_checkpoint_open(&ck, ckpt_dir, err));
  const moe_st_tensor *emb = moe_checkpoint_find(ck, emb_name, &file);
  if (emb == NULL && emb_alt[0]) emb = moe_checkpoint_find(ck, emb_alt, &file);
  MOE_CHECK(emb != NULL, err, MOE_ERR_FORMAT, "%s: tensor '%s' is missing", ckpt_dir, emb_name);
  MOE_CHECK(emb->has_dtype, err, MOE_ERR_FORMAT,
            "%s: tensor '%s' has dtype %s; expected F32, F16 or BF16", file, emb_name, emb->dtype);
  *out = emb->mdtype;
cleanup:
  moe_checkpoint_close(ck);
  return st;
}

moe_status moe_model_load_weights(moe_model **out, const moe_config *cfg, const char *ckpt_dir,
                                  const moe_dtype *dtype, moe_error *err) {
  moe_status st = MOE_OK;
  moe_checkpoint *ck = NULL;
  moe_model *m = NULL;
  *out = NULL;
  MOE_TRY(moe_checkpoint_open(&ck, ckpt_dir, err));
  const char *file = NULL, *emb_name, *emb_alt;
  embed_names(cfg, &emb_name, &emb_alt);
  const moe_st_tensor *emb = moe_checkpoint_find(ck, emb_name, &file);
  if (emb == NULL && emb_alt[0]) emb = moe_checkpoint_find(ck, emb_alt, &file);
  MOE_CHECK(emb != NULL, err, MOE_ERR_FORMAT, "%s: tensor '%s' is missing", ckpt_dir, emb_name);
  MOE_CHECK(emb->has_dtype, err, MOE_ERR_FORMAT,
            "%s: tensor '%s' has dtype %s; expected F32, F16 or BF16", file, emb_name,
            emb->dtype);
  MOE_TRY(model_alloc(&m, cfg, dtype ? *dtype : emb->mdtype, err));
  for (size_t i = 0; i < m->n_specs; i++) {
    moe_tensor_spec *s = &m->specs[i];
    const moe_st_tensor *t = moe_checkpoint_find(ck, s->name, &file);
    if (t == NULL && s->alt[0]) t = moe_checkpoint_find(ck, s->alt, &file);
    if (t == NULL) {
      MOE_CHECK(s->optional, err, MOE_ERR_FORMAT, "%s: tensor '%s' is missing", ckpt_dir, s->name);
      continue;
    }
    MOE_TRY(load_tensor(m, s, ck, t, file, err));
    MOE_TRY(check_finite(m, s, file, err));
    s->present = true;
  }
  *out = m;
  m = NULL;
cleanup:
  moe_model_free(m);
  moe_checkpoint_close(ck);
  return st;
}

moe_status moe_model_load(moe_model **out, const char *dir, const moe_dtype *dtype, moe_error *err) {
  moe_config cfg;
  size_t n = strlen(dir) + 16;
  char *path = malloc(n);
  if (path == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "out of host memory");
  snprintf(path, n, "%s/config.json", dir);
  moe_status st = moe_config_load(&cfg, path, err);
  free(path);
  if (st != MOE_OK) return st;
  return moe_model_load_weights(out, &cfg, dir, dtype, err);
}

/* A stacked checkpoint tensor [n_experts, stack_rows, cols] assembled from
 * its slices, the specs of layer `layer` named as spec i; NULL when out of
 * memory. */
static void *gather_stacked(const moe_model *m, size_t i) {
  const moe_tensor_spec *s = &m->specs[i];
  const size_t es = moe_dtype_size(m->dtype), row = s->cols * es;
  uint8_t *buf = malloc(moe_prod((size_t)m->cfg.n_experts, s->stack_rows, row, 1));
  if (buf == NULL) return NULL;
  for (size_t j = i; j < m->n_specs && m->specs[j].layer == s->layer; j++) {
    const moe_tensor_spec *p = &m->specs[j];
    if (p->stack_rows && strcmp(p->name, s->name) == 0)
      memcpy(buf + ((size_t)p->expert * p->stack_rows + p->stack_row0) * row, spec_ptr(m, p),
             p->rows * row);
  }
  return buf;
}

moe_status moe_model_save(const moe_model *m, const char *dir, moe_error *err) {
  moe_status st = MOE_OK;
  moe_st_entry *ents = calloc(m->n_specs ? m->n_specs : 1, sizeof *ents);
  void **bufs = calloc(m->n_specs ? m->n_specs : 1, sizeof *bufs);
  size_t n = strlen(dir) + 32, k = 0, nb = 0;
  char *path = malloc(n);
  MOE_CHECK_ALLOC(ents, err, m->n_specs * sizeof *ents);
  MOE_CHECK_ALLOC(bufs, err, m->n_specs * sizeof *bufs);
  MOE_CHECK_ALLOC(path, err, n);
  for (size_t i = 0; i < m->n_specs; i++) {
    const moe_tensor_spec *s = &m->specs[i];
    if (!s->present || (s->stack_rows && (s->expert != 0 || s->stack_row0 != 0))) continue;
    ents[k] = (moe_st_entry){.name = s->name, .dtype = m->dtype, .ndim = s->vector ? 1 : 2,
                             .data = spec_ptr(m, s)};
    ents[k].shape[0] = s->vector ? (int64_t)s->cols : (int64_t)s->rows;
    ents[k].shape[1] = (int64_t)s->cols;
    if (s->stack_rows) { /* one 3-D tensor for all the slices */
      ents[k].ndim = 3;
      ents[k].shape[0] = m->cfg.n_experts;
      ents[k].shape[1] = (int64_t)s->stack_rows;
      ents[k].shape[2] = (int64_t)s->cols;
      ents[k].data = bufs[nb++] = gather_stacked(m, i);
      MOE_CHECK_ALLOC(ents[k].data, err, s->stack_rows * s->cols);
    }
    k++;
  }
  snprintf(path, n, "%s/model.safetensors", dir);
  MOE_TRY(moe_st_write(path, ents, k, err));
  snprintf(path, n, "%s/config.json", dir);
  MOE_TRY(moe_config_save(&m->cfg, path, err));
cleanup:
  for (size_t i = 0; bufs && i < nb; i++) free(bufs[i]);
  free(bufs);
  free(ents);
  free(path);
  return st;
}
