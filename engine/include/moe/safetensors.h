/* safetensors checkpoints: a validating reader and a writer.
 *
 * Format: an 8-byte little-endian header length N, N bytes of JSON mapping
 * tensor names to {dtype, shape, data_offsets}, then the data.  The reader
 * trusts nothing: header bounds, dtype names, shape products (overflow),
 * shape x dtype size == byte range, ranges inside the file, no overlaps and
 * no duplicate names are all checked before a tensor is handed out. */
#ifndef MOE_SAFETENSORS_H
#define MOE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "moe/dtype.h"
#include "moe/status.h"

#define MOE_ST_MAX_DIMS 8
#define MOE_ST_MAX_HEADER (100u << 20) /* 100 MiB, as the reference reader */

typedef struct moe_st_tensor {
  const char *name;
  char dtype[12];   /* safetensors dtype name, e.g. "F32", "BF16", "I64" */
  int has_dtype;    /* 1 when dtype is f32/f16/bf16 (usable as weights) */
  moe_dtype mdtype; /* valid when has_dtype */
  int ndim;
  int64_t shape[MOE_ST_MAX_DIMS];
  size_t n_elements;
  size_t nbytes;
  /* A view of the bytes inside a read-only mapping of the file (not aligned
   * in general).  A file truncated after it was opened makes reading the
   * view die of SIGBUS: the engine reads tensors with moe_st_read /
   * moe_checkpoint_read, which report that as an error. */
  const void *data;
} moe_st_tensor;

typedef struct moe_st_file moe_st_file;

/* Opens and validates a .safetensors file (the header is read, the data
 * mapped for the views).  MOE_ERR_IO when it cannot be
 * read, MOE_ERR_FORMAT naming the file and the problem otherwise.  On
 * failure *out is NULL and nothing is leaked. */
moe_status moe_st_open(moe_st_file **out, const char *path, moe_error *err);

/* Validates a safetensors image already in memory (not copied: buf must
 * outlive the handle).  `origin` names it in messages.  Used by the fuzzer. */
moe_status moe_st_open_memory(moe_st_file **out, const void *buf, size_t len, const char *origin,
                              moe_error *err);

void moe_st_close(moe_st_file *f);
size_t moe_st_count(const moe_st_file *f);
const moe_st_tensor *moe_st_at(const moe_st_file *f, size_t i); /* sorted by name */
const moe_st_tensor *moe_st_find(const moe_st_file *f, const char *name);
const char *moe_st_path(const moe_st_file *f);
/* Copies n bytes at offset off of tensor t (one of f's) into dst: read from
 * the file with pread, so that a file that shrank since it was opened is
 * MOE_ERR_IO naming the file and the tensor, never a SIGBUS.  A range past
 * the tensor's bytes is MOE_ERR_INVALID. */
moe_status moe_st_read(const moe_st_file *f, const moe_st_tensor *t, size_t off, void *dst,
                       size_t n, moe_error *err);

/* A checkpoint directory: model.safetensors, or shards listed by
 * model.safetensors.index.json ("weight_map": name -> file). */
typedef struct moe_checkpoint moe_checkpoint;

moe_status moe_checkpoint_open(moe_checkpoint **out, const char *dir, moe_error *err);
void moe_checkpoint_close(moe_checkpoint *ck);
/* Finds a tensor by name across shards; NULL when absent.  *file_out (may be
 * NULL) receives the path of the shard holding it. */
const moe_st_tensor *moe_checkpoint_find(const moe_checkpoint *ck, const char *name,
                                         const char **file_out);
/* moe_st_read for a tensor moe_checkpoint_find returned. */
moe_status moe_checkpoint_read(const moe_checkpoint *ck, const moe_st_tensor *t, size_t off,
                               void *dst, size_t n, moe_error *err);

/* One tensor to write.  data holds n_elements of dtype, densely packed. */
typedef struct moe_st_entry {
  const char *name;
  moe_dtype dtype;
  int ndim;
  int64_t shape[MOE_ST_MAX_DIMS];
  const void *data;
} moe_st_entry;

/* Writes a .safetensors file, published whole (moe/publish.h). */
moe_status moe_st_write(const char *path, const moe_st_entry *entries, size_t n, moe_error *err);

#endif
