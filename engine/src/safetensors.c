/* safetensors reader (validating; header and tensor bytes read with pread) and writer. */
#include "moe/publish.h"
#include "moe/safetensors.h"

#include "moe/jsonfile.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct moe_st_file {
  char *path;
  int fd;           /* the open file (tensor reads), or -1 for memory images */
  void *map;        /* mmap'd image behind the tensors' data views, or NULL */
  size_t map_len;
  size_t len;       /* bytes in the file when opened / in the image */
  const uint8_t *data; /* where the data section's views start */
  uint64_t data_off;   /* the data section's offset in the file */
  json_t *header;   /* owns the name strings */
  moe_st_tensor *tensors;
  size_t n;
};

static const struct {
  const char *name;
  size_t size;
} k_st_dtypes[] = {{"F64", 8}, {"F32", 4}, {"F16", 2},   {"BF16", 2},   {"I64", 8},
                   {"I32", 4}, {"I16", 2}, {"I8", 1},    {"U8", 1},     {"BOOL", 1},
                   {"U16", 2}, {"U32", 4}, {"U64", 8},   {"F8_E4M3", 1}, {"F8_E5M2", 1}};

static size_t st_dtype_size(const char *name) {
  for (size_t i = 0; i < sizeof k_st_dtypes / sizeof k_st_dtypes[0]; i++)
    if (strcmp(name, k_st_dtypes[i].name) == 0) return k_st_dtypes[i].size;
  return 0;
}

static int cmp_name(const void *a, const void *b) {
  return strcmp(((const moe_st_tensor *)a)->name, ((const moe_st_tensor *)b)->name);
}

static int cmp_offset(const void *a, const void *b) {
  const moe_st_tensor *x = *(const moe_st_tensor *const *)a, *y = *(const moe_st_tensor *const *)b;
  uintptr_t px = (uintptr_t)x->data, py = (uintptr_t)y->data;
  if (px != py) return px < py ? -1 : 1;
  return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

void moe_st_close(moe_st_file *f) {
  if (f == NULL) return;
  if (f->map != NULL) munmap(f->map, f->map_len);
  if (f->fd >= 0) close(f->fd);
  json_decref(f->header);
  free(f->tensors);
  free(f->path);
  free(f);
}

/* Reads one tensor entry of the header into t; data offsets are checked
 * against data_len.  All checks happen before any pointer is formed. */
static moe_status parse_entry(moe_st_tensor *t, const char *name, json_t *v, const uint8_t *data,
                              size_t data_len, const char *origin, moe_error *err) {
  if (!json_is_object(v))
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: tensor '%s': entry is not an object", origin, name);
  json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
         *offs = json_object_get(v, "data_offsets");
  if (!json_is_string(dt))
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: tensor '%s': missing dtype", origin, name);
  size_t esize = st_dtype_size(json_string_value(dt));
  if (esize == 0)
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%s'", origin, name,
                    json_string_value(dt));
  if (!json_is_array(shape) || json_array_size(shape) > MOE_ST_MAX_DIMS)
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: tensor '%s': shape must be an array of at most %d dims",
                    origin, name, MOE_ST_MAX_DIMS);
  if (!json_is_array(offs) || json_array_size(offs) != 2)
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: tensor '%s': data_offsets must be [begin, end]",
                    origin, name);
  t->name = name;
  snprintf(t->dtype, sizeof t->dtype, "%s", json_string_value(dt));
  t->has_dtype = moe_dtype_parse(strcmp(t->dtype, "F32") == 0   ? "f32"
                                 : strcmp(t->dtype, "F16") == 0 ? "f16"
                                 : strcmp(t->dtype, "BF16") == 0 ? "bf16"
                                                                 : "-",
                                 &t->mdtype) == 0;
  t->ndim = (int)json_array_size(shape);
  size_t count = 1;
  for (int d = 0; d < t->ndim; d++) {
    json_t *x = json_array_get(shape, (size_t)d);
    if (!json_is_integer(x) || json_integer_value(x) < 0)
      return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer",
                      origin, name, d);
    uint64_t dim = (uint64_t)json_integer_value(x);
    if (dim != 0 && count > SIZE_MAX / dim)
      return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: tensor '%s': shape product overflows", origin, name);
    count *= (size_t)dim;
    t->shape[d] = (int64_t)dim;
  }
  if (count > SIZE_MAX / esize)
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: tensor '%s': byte size overflows", origin, name);
  json_t *b = json_array_get(offs, 0), *e = json_array_get(offs, 1);
  if (!json_is_integer(b) || !json_is_integer(e) || json_integer_value(b) < 0 ||
      json_integer_value(e) < json_integer_value(b))
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: tensor '%s': data_offsets must satisfy 0 <= begin <= end",
                    origin, name);
  uint64_t begin = (uint64_t)json_integer_value(b), end = (uint64_t)json_integer_value(e);
  if (end > data_len)
    return MOE_FAIL(err, MOE_ERR_FORMAT,
                    "%s: tensor '%s': data_offsets end %llu is past the data section (%zu bytes)",
                    origin, name, (unsigned long long)end, data_len);
  if (end - begin != count * esize)
    return MOE_FAIL(err, MOE_ERR_FORMAT,
                    "%s: tensor '%s': shape x dtype size is %zu bytes but data_offsets span %llu",
                    origin, name, count * esize, (unsigned long long)(end - begin));
  t->n_elements = count;
  t->nbytes = count * esize;
  t->data = data + begin;
  return MOE_OK;
}

/* The 8-byte little-endian header length of an image or file of len bytes,
 * checked against the limit and the file's size. */
static moe_status st_header_len(const uint8_t len8[8], size_t len, const char *origin,
                                uint64_t *out, moe_error *err) {
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | len8[i];
  if (hlen > MOE_ST_MAX_HEADER)
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: header length %llu exceeds the %u-byte limit", origin,
                    (unsigned long long)hlen, MOE_ST_MAX_HEADER);
  if (hlen > len - 8)
    return MOE_FAIL(err, MOE_ERR_FORMAT,
                    "%s: header length %llu is past the end of the file (%zu bytes)", origin,
                    (unsigned long long)hlen, len);
  *out = hlen;
  return MOE_OK;
}

/* Parses and validates the header (hlen bytes at head) of an image or file
 * of f->len bytes; the tensors' data views start at f->data. */
static moe_status st_parse(moe_st_file *f, const uint8_t *head, uint64_t hlen, const char *origin,
                           moe_error *err) {
  moe_status st = MOE_OK;
  moe_st_tensor **by_off = NULL;
  MOE_CHECK(hlen >= 2 && head[0] == '{', err, MOE_ERR_FORMAT,
            "%s: header does not start with a JSON object", origin);
  json_error_t jerr;
  f->header = json_loadb((const char *)head, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
  MOE_CHECK(f->header != NULL, err, MOE_ERR_FORMAT, "%s: header is not valid JSON: %s", origin,
            jerr.text);
  MOE_CHECK(json_is_object(f->header), err, MOE_ERR_FORMAT, "%s: header is not a JSON object",
            origin);
  const uint8_t *data = f->data;
  size_t data_len = f->len - 8 - (size_t)hlen;
  size_t cap = json_object_size(f->header);
  f->tensors = calloc(cap ? cap : 1, sizeof *f->tensors);
  MOE_CHECK_ALLOC(f->tensors, err, cap * sizeof *f->tensors);
  const char *key;
  json_t *val;
  json_object_foreach(f->header, key, val) {
    if (strcmp(key, "__metadata__") == 0) {
      MOE_CHECK(json_is_object(val), err, MOE_ERR_FORMAT, "%s: __metadata__ is not an object", origin);
      continue;
    }
    MOE_TRY(parse_entry(&f->tensors[f->n], key, val, data, data_len, origin, err));
    f->n++;
  }
  qsort(f->tensors, f->n, sizeof *f->tensors, cmp_name);
  /* Overlap check: sort views by offset; each range must end before the next
   * begins.  Empty tensors overlap nothing. */
  by_off = malloc((f->n ? f->n : 1) * sizeof *by_off);
  MOE_CHECK_ALLOC(by_off, err, f->n * sizeof *by_off);
  size_t m = 0;
  for (size_t i = 0; i < f->n; i++)
    if (f->tensors[i].nbytes > 0) by_off[m++] = &f->tensors[i];
  qsort(by_off, m, sizeof *by_off, cmp_offset);
  for (size_t i = 1; i < m; i++) {
    const uint8_t *prev_end = (const uint8_t *)by_off[i - 1]->data + by_off[i - 1]->nbytes;
    MOE_CHECK(prev_end <= (const uint8_t *)by_off[i]->data, err, MOE_ERR_FORMAT,
              "%s: tensors '%s' and '%s' overlap", origin, by_off[i - 1]->name, by_off[i]->name);
  }
cleanup:
  free(by_off);
  return st;
}

moe_status moe_st_open_memory(moe_st_file **out, const void *buf, size_t len, const char *origin,
                              moe_error *err) {
  moe_status st = MOE_OK;
  *out = NULL;
  moe_st_file *f = calloc(1, sizeof *f);
  if (f == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "out of host memory");
  f->fd = -1;
  f->path = strdup(origin);
  MOE_CHECK_ALLOC(f->path, err, strlen(origin));
  f->len = len;
  MOE_CHECK(len >= 8, err, MOE_ERR_FORMAT,
            "%s: file is %zu bytes, shorter than the 8-byte header length", origin, len);
  uint64_t hlen = 0;
  MOE_TRY(st_header_len(buf, len, origin, &hlen, err));
  f->data = (const uint8_t *)buf + 8 + hlen;
  f->data_off = 8 + hlen;
  MOE_TRY(st_parse(f, (const uint8_t *)buf + 8, hlen, origin, err));
  *out = f;
  return MOE_OK;
cleanup:
  moe_st_close(f);
  return st;
}

/* Reads n bytes at byte pos of f's file into dst with pread.  *got: the
 * bytes read, fewer than n only where the file ends before pos + n. */
static moe_status read_at(const moe_st_file *f, uint64_t pos, void *dst, size_t n, size_t *got,
                          moe_error *err) {
  size_t done = 0;
  while (done < n) {
    size_t want = n - done < ((size_t)1 << 30) ? n - done : ((size_t)1 << 30);
    ssize_t r = pread(f->fd, (uint8_t *)dst + done, want, (off_t)(pos + done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0)
      return MOE_FAIL(err, MOE_ERR_IO, "%s: read failed at byte %llu: %s", f->path,
                      (unsigned long long)(pos + done), strerror(errno));
    if (r == 0) break; /* end of file */
    done += (size_t)r;
  }
  *got = done;
  return MOE_OK;
}

/* The header is read with pread into owned memory, and the tensors' bytes
 * are read with pread (moe_st_read): a file that shrinks after it was
 * opened gives a short read, an error naming it, where a copy out of a
 * mapping would die of SIGBUS.  The mapping stays only for the data views
 * of moe_st_tensor (see moe/safetensors.h). */
moe_status moe_st_open(moe_st_file **out, const char *path, moe_error *err) {
  moe_status st = MOE_OK;
  uint8_t *head = NULL;
  *out = NULL;
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* a FIFO must not block */
  if (fd < 0) return MOE_FAIL(err, MOE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    close(fd);
    return MOE_FAIL(err, MOE_ERR_IO, "%s: not a regular file", path);
  }
  moe_st_file *f = calloc(1, sizeof *f);
  if (f == NULL) {
    close(fd);
    return MOE_FAIL(err, MOE_ERR_OOM, "out of host memory");
  }
  f->fd = fd;
  f->path = strdup(path);
  MOE_CHECK_ALLOC(f->path, err, strlen(path));
  f->len = (size_t)sb.st_size;
  MOE_CHECK(f->len >= 8, err, MOE_ERR_FORMAT,
            "%s: file is %zu bytes, shorter than the 8-byte header length", path, f->len);
  uint8_t len8[8];
  size_t got = 0;
  MOE_TRY(read_at(f, 0, len8, 8, &got, err));
  MOE_CHECK(got == 8, err, MOE_ERR_IO, "%s: the file shrank to %zu bytes while it was opened", path,
            got);
  uint64_t hlen = 0;
  MOE_TRY(st_header_len(len8, f->len, path, &hlen, err));
  head = malloc(hlen ? (size_t)hlen : 1);
  MOE_CHECK_ALLOC(head, err, (size_t)hlen);
  MOE_TRY(read_at(f, 8, head, (size_t)hlen, &got, err));
  MOE_CHECK(got == hlen, err, MOE_ERR_IO,
            "%s: the file shrank to %llu bytes while its header was read (it was %zu)", path,
            (unsigned long long)(8 + got), f->len);
  void *map = mmap(NULL, f->len, PROT_READ, MAP_PRIVATE, fd, 0);
  MOE_CHECK(map != MAP_FAILED, err, MOE_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
  f->map = map;
  f->map_len = f->len;
  f->data = (const uint8_t *)map + 8 + hlen;
  f->data_off = 8 + hlen;
  MOE_TRY(st_parse(f, head, hlen, path, err));
  free(head);
  *out = f;
  return MOE_OK;
cleanup:
  free(head);
  moe_st_close(f);
  return st;
}

moe_status moe_st_read(const moe_st_file *f, const moe_st_tensor *t, size_t off, void *dst,
                       size_t n, moe_error *err) {
  const uintptr_t tp = (uintptr_t)t, first = (uintptr_t)f->tensors;
  if (t == NULL || tp < first || tp >= first + f->n * sizeof *f->tensors)
    return MOE_FAIL(err, MOE_ERR_INVALID, "%s: the tensor to read is not one of this file's", f->path);
  if (off > t->nbytes || n > t->nbytes - off)
    return MOE_FAIL(err, MOE_ERR_INVALID,
                    "%s: tensor '%s': %zu bytes at offset %zu are past its %zu bytes", f->path,
                    t->name, n, off, t->nbytes);
  if (n == 0) return MOE_OK;
  if (f->fd < 0) { /* a memory image */
    memcpy(dst, (const uint8_t *)t->data + off, n);
    return MOE_OK;
  }
  const uint64_t pos = f->data_off + (uint64_t)((const uint8_t *)t->data - f->data) + off;
  size_t got = 0;
  moe_status st = read_at(f, pos, dst, n, &got, err);
  if (st != MOE_OK) return st;
  if (got < n)
    return MOE_FAIL(err, MOE_ERR_IO,
                    "%s: tensor '%s': the file ends at byte %llu, before the tensor's bytes end at "
                    "%llu: it was truncated after it was opened (it had %zu bytes)",
                    f->path, t->name, (unsigned long long)(pos + got),
                    (unsigned long long)(pos + n), f->len);
  return MOE_OK;
}

size_t moe_st_count(const moe_st_file *f) { return f->n; }
const moe_st_tensor *moe_st_at(const moe_st_file *f, size_t i) { return i < f->n ? &f->tensors[i] : NULL; }
const char *moe_st_path(const moe_st_file *f) { return f->path; }

const moe_st_tensor *moe_st_find(const moe_st_file *f, const char *name) {
  moe_st_tensor key = {.name = name};
  return bsearch(&key, f->tensors, f->n, sizeof *f->tensors, cmp_name);
}

/* ------------------------------------------------------------ checkpoints */

struct moe_checkpoint {
  moe_st_file **files;
  size_t n_files;
};

void moe_checkpoint_close(moe_checkpoint *ck) {
  if (ck == NULL) return;
  for (size_t i = 0; i < ck->n_files; i++) moe_st_close(ck->files[i]);
  free(ck->files);
  free(ck);
}

static char *path_join(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s/%s", dir, name);
  return p;
}

moe_status moe_checkpoint_open(moe_checkpoint **out, const char *dir, moe_error *err) {
  moe_status st = MOE_OK;
  *out = NULL;
  json_t *index = NULL;
  char *path = NULL;
  moe_checkpoint *ck = calloc(1, sizeof *ck);
  MOE_CHECK_ALLOC(ck, err, sizeof *ck);
  path = path_join(dir, "model.safetensors.index.json");
  MOE_CHECK_ALLOC(path, err, strlen(dir));
  if (access(path, F_OK) == 0) {
    index = moe_json_load_file(path, err);
    if (index == NULL) {
      st = err ? err->status : MOE_ERR_FORMAT;
      goto cleanup;
    }
    json_t *wm = json_object_get(index, "weight_map");
    MOE_CHECK(json_is_object(wm), err, MOE_ERR_FORMAT, "%s: field 'weight_map' is missing", path);
    /* Distinct shard names, in first-seen order. */
    json_t *shards = json_object();
    MOE_CHECK_ALLOC(shards, err, 64);
    json_object_set_new(index, "__shards__", shards);
    const char *key;
    json_t *v;
    json_object_foreach(wm, key, v) {
      MOE_CHECK(json_is_string(v), err, MOE_ERR_FORMAT, "%s: weight_map['%s'] is not a file name",
                path, key);
      const char *shard = json_string_value(v);
      MOE_CHECK(strchr(shard, '/') == NULL && strcmp(shard, "..") != 0, err, MOE_ERR_FORMAT,
                "%s: weight_map['%s'] names '%s', which is outside the checkpoint directory", path,
                key, shard);
      json_object_set_new(shards, shard, json_true());
    }
    size_t n = json_object_size(shards);
    MOE_CHECK(n > 0, err, MOE_ERR_FORMAT, "%s: weight_map is empty", path);
    ck->files = calloc(n, sizeof *ck->files);
    MOE_CHECK_ALLOC(ck->files, err, n * sizeof *ck->files);
    json_object_foreach(shards, key, v) {
      char *sp = path_join(dir, key);
      MOE_CHECK_ALLOC(sp, err, strlen(key));
      st = moe_st_open(&ck->files[ck->n_files], sp, err);
      free(sp);
      if (st != MOE_OK) goto cleanup;
      ck->n_files++;
    }
    /* Every name the index promises must be in the shard it names. */
    json_object_foreach(wm, key, v) {
      const char *shard_path = NULL;
      const moe_st_tensor *t = moe_checkpoint_find(ck, key, &shard_path);
      MOE_CHECK(t != NULL, err, MOE_ERR_FORMAT, "%s: tensor '%s' is listed but not in any shard",
                path, key);
      const char *base = strrchr(shard_path, '/');
      MOE_CHECK(strcmp(base ? base + 1 : shard_path, json_string_value(v)) == 0, err,
                MOE_ERR_FORMAT, "%s: tensor '%s' is listed in %s but found in %s", path, key,
                json_string_value(v), shard_path);
    }
  } else {
    free(path);
    path = path_join(dir, "model.safetensors");
    MOE_CHECK_ALLOC(path, err, strlen(dir));
    ck->files = calloc(1, sizeof *ck->files);
    MOE_CHECK_ALLOC(ck->files, err, sizeof *ck->files);
    MOE_TRY(moe_st_open(&ck->files[0], path, err));
    ck->n_files = 1;
  }
  *out = ck;
  ck = NULL;
cleanup:
  json_decref(index);
  free(path);
  moe_checkpoint_close(ck);
  return st;
}

const moe_st_tensor *moe_checkpoint_find(const moe_checkpoint *ck, const char *name,
                                         const char **file_out) {
  for (size_t i = 0; i < ck->n_files; i++) {
    const moe_st_tensor *t = moe_st_find(ck->files[i], name);
    if (t != NULL) {
      if (file_out) *file_out = moe_st_path(ck->files[i]);
      return t;
    }
  }
  return NULL;
}

moe_status moe_checkpoint_read(const moe_checkpoint *ck, const moe_st_tensor *t, size_t off,
                               void *dst, size_t n, moe_error *err) {
  for (size_t i = 0; i < ck->n_files; i++) {
    const moe_st_file *f = ck->files[i];
    const uintptr_t tp = (uintptr_t)t, first = (uintptr_t)f->tensors;
    if (tp >= first && tp < first + f->n * sizeof *f->tensors)
      return moe_st_read(f, t, off, dst, n, err);
  }
  return MOE_FAIL(err, MOE_ERR_INVALID, "tensor '%s' is not one of this checkpoint's",
                  t ? t->name : "(null)");
}

/* ------------------------------------------------------------ writer */

static const char *st_name_of(moe_dtype dt) {
  return dt == MOE_F32 ? "F32" : dt == MOE_F16 ? "F16" : "BF16";
}

moe_status moe_st_write(const char *path, const moe_st_entry *entries, size_t n, moe_error *err) {
  moe_status st = MOE_OK;
  json_t *hdr = json_object();
  char *text = NULL;
  moe_publish pub = {0};
  FILE *fp = NULL;
  MOE_CHECK_ALLOC(hdr, err, 64);
  size_t off = 0;
  for (size_t i = 0; i < n; i++) {
    const moe_st_entry *e = &entries[i];
    MOE_CHECK(e->ndim >= 0 && e->ndim <= MOE_ST_MAX_DIMS, err, MOE_ERR_INVALID,
              "tensor '%s': %d dims is out of range", e->name, e->ndim);
    json_t *shape = json_array();
    size_t count = 1;
    for (int d = 0; d < e->ndim; d++) {
      json_array_append_new(shape, json_integer(e->shape[d]));
      count *= (size_t)e->shape[d];
    }
    size_t nb = count * moe_dtype_size(e->dtype);
    json_t *ent = json_pack("{s:s, s:o, s:[I,I]}", "dtype", st_name_of(e->dtype), "shape", shape,
                            "data_offsets", (json_int_t)off, (json_int_t)(off + nb));
    MOE_CHECK(ent != NULL, err, MOE_ERR_OOM, "out of host memory building the header");
    MOE_CHECK(json_object_set_new(hdr, e->name, ent) == 0, err, MOE_ERR_INVALID,
              "tensor name '%s' is not valid", e->name);
    off += nb;
  }
  text = json_dumps(hdr, JSON_COMPACT | JSON_PRESERVE_ORDER);
  MOE_CHECK_ALLOC(text, err, 64);
  size_t hlen = strlen(text);
  size_t padded = (hlen + 7) & ~(size_t)7;
  MOE_TRY(moe_publish_open(&pub, path, "the safetensors file", err));
  fp = pub.f;
  uint8_t len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
  int ok = fwrite(len8, 1, 8, fp) == 8 && fwrite(text, 1, hlen, fp) == hlen;
  for (size_t i = hlen; ok && i < padded; i++) ok = fputc(' ', fp) != EOF;
  for (size_t i = 0; ok && i < n; i++) {
    size_t count = 1;
    for (int d = 0; d < entries[i].ndim; d++) count *= (size_t)entries[i].shape[d];
    size_t nb = count * moe_dtype_size(entries[i].dtype);
    ok = nb == 0 || fwrite(entries[i].data, 1, nb, fp) == nb;
  }
  if (!ok) moe_publish_fail(&pub);
  fp = NULL;
  MOE_TRY(moe_publish_commit(&pub, err));
cleanup:
  if (fp) moe_publish_abort(&pub);
  free(text);
  json_decref(hdr);
  return st;
}
