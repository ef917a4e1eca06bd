/* Result tables: CSV with libcsv, JSON with jansson, atomic writes. */
#include "results.h"

#include "moe/backend.h"

#include "moe/publish.h"

#include "moe/jsonfile.h"

#include <csv.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const res_column res_columns[] = {
    {"schema_version", RES_TEXT, 0, false, "result schema, major.minor"},
    {"model", RES_KEY, 0, false, "model preset name"},
    {"model_seed", RES_KEY, 0, true, "seed the synthetic model's weights were drawn from"},
    {"dtype", RES_KEY, 0, false, "weight storage dtype: f32, f16 or bf16"},
    {"workload", RES_KEY, 0, false, "workload name"},
    {"policy", RES_KEY, 0, false, "offload policy"},
    {"routing", RES_KEY, 0, false, "conventional or pregated: the routing that ran"},
    {"backend", RES_KEY, 0, false, "backend name (cpu, cuda, ...)"},
    {"device", RES_KEY, 0, false, "the device the row ran on, as the backend names it"},
    {"threads", RES_KEY, 0, true, "math threads"},
    {"link_gbps", RES_KEY, 0, false, "host-to-device link cap, GB/s (0 = none; empty: set by link_ratio)"},
    {"device_mem_budget_bytes", RES_KEY, 0, true, "device-memory budget; 0 = device capacity"},
    {"batch", RES_KEY, 0, true, "sequences per step"},
    {"prompt_len", RES_KEY, 0, true, "prompt tokens per sequence"},
    {"gen_len", RES_KEY, 0, true, "generated tokens per sequence"},
    {"requests", RES_KEY, 0, true, "generate calls per repetition"},
    {"prompt_seed", RES_KEY, 0, false, "seed of the random prompts (empty: prompts from a token file)"},
    {"repetitions", RES_KEY, 0, true, "measured repetitions (warm-up excluded)"},
    {"status", RES_DETERMINISTIC, 0, false, "ok, OOM or error"},
    {"error", RES_TEXT, 0, false, "one-line error when status is not ok"},
    {"tokens_per_s", RES_MEASURED, +1, false, "generated tokens / end-to-end time, median"},
    {"tokens_per_s_min", RES_MEASURED, +1, false, "minimum over repetitions"},
    {"tokens_per_s_max", RES_MEASURED, +1, false, "maximum over repetitions"},
    {"rel_spread", RES_TEXT, 0, false, "(max - min) / median of tokens_per_s over the repetitions: the row's noise"},
    {"ttft_s", RES_MEASURED, -1, false, "time to first token (prefill + first token), median"},
    {"token_latency_p50_s", RES_MEASURED, -1, false, "per-token decode latency, 50th percentile"},
    {"token_latency_p90_s", RES_MEASURED, -1, false, "per-token decode latency, 90th percentile"},
    {"token_latency_p99_s", RES_MEASURED, -1, false, "per-token decode latency, 99th percentile"},
    {"e2e_s", RES_MEASURED, -1, false, "end-to-end time of all requests, median"},
    {"stall_s", RES_MEASURED, -1, false, "compute time waiting on expert copies, median"},
    {"peak_device_bytes", RES_DETERMINISTIC, -1, true, "peak device bytes (allocator)"},
    {"peak_dense_bytes", RES_DETERMINISTIC, -1, true, "at the peak: dense weights"},
    {"peak_expert_slots_bytes", RES_DETERMINISTIC, -1, true, "at the peak: expert slots"},
    {"peak_kv_cache_bytes", RES_DETERMINISTIC, -1, true, "at the peak: KV cache"},
    {"peak_activations_bytes", RES_DETERMINISTIC, -1, true, "at the peak: activations"},
    {"peak_workspace_bytes", RES_DETERMINISTIC, -1, true, "at the peak: workspace"},
    {"planned_device_bytes", RES_DETERMINISTIC, -1, true, "the engine's plan for the policy's slots"},
    {"expert_slots", RES_DETERMINISTIC, 0, true, "device expert slots the policy planned"},
    {"h2d_bytes", RES_DETERMINISTIC, -1, true, "expert bytes copied host-to-device per repetition"},
    {"expert_fetches", RES_DETERMINISTIC, -1, true, "expert copies per repetition"},
    {"expert_misses", RES_DETERMINISTIC, -1, true, "copies the engine made itself per repetition"},
    {"expert_recopies", RES_DETERMINISTIC, -1, true, "copies of an expert already copied for the same run of its block, per repetition"},
    {"expert_wasted_copies", RES_DETERMINISTIC, -1, true, "copies evicted before any use (a wrong speculation, or a prefetch the slots could not keep), per repetition"},
    {"pregate_hit_rate", RES_DETERMINISTIC, +1, false, "predicted (token, expert) pairs the block's router also chose"},
    {"token_match_rate", RES_DETERMINISTIC, +1, false, "generated tokens equal to gpu-only's, same inputs"},
    {"max_logit_diff", RES_DETERMINISTIC, -1, false, "max |logit - gpu-only logit| over all steps"},
    /* schema 2.2: quality over the workload's eval token windows */
    {"eval_tokens", RES_DETERMINISTIC, 0, true, "predicted tokens of the workload's eval windows (empty: no eval)"},
    {"eval_cross_entropy", RES_DETERMINISTIC, -1, false, "mean cross-entropy over them, nats per token"},
    {"eval_perplexity", RES_DETERMINISTIC, -1, false, "exp(eval_cross_entropy)"},
    {"eval_accuracy", RES_DETERMINISTIC, +1, false, "next-token top-1 accuracy over them"},
    {"eval_perplexity_change", RES_TEXT, 0, false, "eval_perplexity / the gpu-only reference's - 1 (conventional routing, same model)"},
    {"eval_accuracy_change", RES_TEXT, 0, false, "eval_accuracy - the gpu-only reference's"},
    {"pregate_lookahead", RES_KEY, 0, true, "a block predicts the k-th MoE block after it (empty: 1, the next)"},
    {"cache_slots", RES_DETERMINISTIC, 0, true, "expert slots an expert cache added to the policy's (policy NAME+KIND:SIZE)"},
    {"expert_hit_rate", RES_DETERMINISTIC, +1, false, "expert acquires served without a copy in that run of the block (cache hits)"},
    /* schema 2.3: the emulated link set as a ratio of measured compute */
    {"link_ratio", RES_KEY, 0, false, "link set so one expert's copy takes this many times the compute of a decoder MoE block window, measured in a warm-up (empty: link_gbps is the cap)"},
    {"link_gbps_derived", RES_TEXT, 0, false, "with link_ratio: the cap in GB/s the warm-up derived on this machine"},
    /* schema 2.4: what the host side of the copies was, and host waits */
    {"pinned", RES_TEXT, 0, false, "1: the expert weights were pinned host memory; 0: pageable (pinning failed: copies serialise with compute); empty: the backend does not pin"},
    {"pin_s", RES_TEXT, 0, false, "seconds spent pinning the model's expert weights (the sweep's once per model, else the run's own)"},
    {"calls_per_step", RES_TEXT, 0, false, "traced runs: backend calls per decode step, median (the trace's count)"},
    {"host_syncs_per_step", RES_TEXT, 0, false, "traced runs: calls that made the host wait for the device per decode step, median"},
    /* schema 2.5: the contents of the inputs the other key columns only name */
    {"inputs", RES_KEY, 0, false, "hash of the contents of the model (preset file; checkpoint config, index and weights), token and eval files, hardware profile, sim routing source and plugin binary the row used"},
    /* schema 2.6: what the machine was doing while the row was measured */
    {"other_cores", RES_TEXT, 0, false, "measured rows: cores other processes kept busy during the row, on average (/proc/stat less this process)"},
    {"steal_share", RES_TEXT, 0, false, "measured rows: share of CPU time stolen by a hypervisor during the row"},
    {"noisy", RES_TEXT, 0, false, "measured rows: 1 when other_cores > 0.5, steal_share > 0.05, compute_probe_ratio < 0.8 or link_achieved_gbps < 0.8 x link_gbps; compare treats such a row's times as unknown"},
    /* schema 2.7: the machine's own rates over the row */
    {"compute_probe_ratio", RES_TEXT, 0, false, "measured rows: the rate of a fixed arithmetic probe (about 5 ms on one thread) after the row over its rate before it"},
    {"link_achieved_gbps", RES_TEXT, 0, false, "measured rows with copies: bytes copied / the copy stream's time on them (the backend's copy observer), last repetition; against link_gbps when capped"},
    /* schema 2.8: experts computed where they live (host-compute policies) */
    {"host_threads", RES_KEY, 0, true, "math threads of the experts computed on the host (empty: 1, or no such expert)"},
    {"host_gbps", RES_KEY, 0, false, "measured rows: the emulated host's memory bandwidth cap, GB/s (empty: none)"},
    {"host_experts", RES_DETERMINISTIC, 0, true, "expert runs computed on the host per repetition (host-compute policies; empty: none)"},
    {"host_xfer_bytes", RES_DETERMINISTIC, 0, true, "activation bytes moved for them per repetition: token rows down, results up"},
    {"host_wait_s", RES_TEXT, 0, false, "seconds the device side waited for the host's results, last repetition (modeled on a modeled backend)"},
};
const size_t res_ncols = sizeof res_columns / sizeof res_columns[0];

int res_col(const char *name) {
  for (size_t i = 0; i < res_ncols; i++)
    if (strcmp(res_columns[i].name, name) == 0) return (int)i;
  return -1;
}

void res_table_init(res_table *t) { memset(t, 0, sizeof *t); }

void res_table_free(res_table *t) {
  for (size_t i = 0; i < t->n; i++) {
    for (size_t c = 0; c < res_ncols; c++) free(t->rows[i].v[c]);
    free(t->rows[i].v);
  }
  free(t->rows);
  memset(t, 0, sizeof *t);
}

res_row *res_table_add(res_table *t) {
  if (t->n == t->cap) {
    size_t cap = t->cap ? 2 * t->cap : 16;
    res_row *r = realloc(t->rows, cap * sizeof *r);
    if (r == NULL) return NULL;
    t->rows = r;
    t->cap = cap;
  }
  res_row *r = &t->rows[t->n];
  r->v = calloc(res_ncols, sizeof *r->v);
  if (r->v == NULL) return NULL;
  for (size_t c = 0; c < res_ncols; c++) r->v[c] = strdup("");
  t->n++;
  res_set(r, "schema_version", RES_SCHEMA_VERSION);
  return r;
}

void res_set(res_row *r, const char *col, const char *value) {
  int c = res_col(col);
  if (c < 0) return;
  char *d = strdup(value ? value : "");
  if (d == NULL) return;
  free(r->v[c]);
  r->v[c] = d;
}

void res_setf(res_row *r, const char *col, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  res_set(r, col, buf);
}

const char *res_get(const res_row *r, const char *col) {
  int c = res_col(col);
  return c < 0 ? "" : r->v[c];
}

/* Appends v to buf (at *n), escaping '|' and '\\' so keys cannot collide. */
static void key_append(char *buf, size_t cap, size_t *n, const char *v) {
  for (const char *c = v; *c; c++) {
    if (*c == '|' || *c == '\\') {
      if (*n + 1 < cap) buf[(*n)++] = '\\';
    }
    if (*n + 1 < cap) buf[(*n)++] = *c;
  }
  buf[*n < cap ? *n : cap - 1] = '\0';
}

/* Whether name is one of list's comma-separated names. */
static bool in_list(const char *list, const char *name) {
  const size_t n = strlen(name);
  for (const char *p = list; *p;) {
    const size_t len = strcspn(p, ",");
    if (len == n && strncmp(p, name, n) == 0) return true;
    p += len + (p[len] == ',');
  }
  return false;
}

void res_key_except(const res_row *r, const char *skip, char *buf, size_t cap) {
  size_t n = 0;
  bool first = true;
  buf[0] = '\0';
  for (size_t c = 0; c < res_ncols; c++) {
    if (res_columns[c].kind != RES_KEY) continue;
    if (skip && in_list(skip, res_columns[c].name)) continue;
    if (!first && n + 1 < cap) buf[n++] = '|', buf[n] = '\0';
    key_append(buf, cap, &n, r->v[c]);
    first = false;
  }
}

void res_key(const res_row *r, char *buf, size_t cap) { res_key_except(r, NULL, buf, cap); }

long res_find(const res_table *t, const res_row *like) {
  char a[RES_KEY_MAX], b[RES_KEY_MAX];
  res_key(like, a, sizeof a);
  for (size_t i = 0; i < t->n; i++) {
    res_key(&t->rows[i], b, sizeof b);
    if (strcmp(a, b) == 0) return (long)i;
  }
  return -1;
}

/* ------------------------------------------------------------ index */

typedef struct idx_ent {
  char *key;
  size_t row;
} idx_ent;

struct res_index {
  idx_ent *e;
  size_t n;
};

static int cmp_ent(const void *a, const void *b) {
  const idx_ent *x = a, *y = b;
  int c = strcmp(x->key, y->key);
  return c ? c : (x->row > y->row) - (x->row < y->row);
}

void res_index_free(res_index *ix) {
  if (ix == NULL) return;
  for (size_t i = 0; i < ix->n; i++) free(ix->e[i].key);
  free(ix->e);
  free(ix);
}

res_index *res_index_build(const res_table *t, const char *skip, long *dup) {
  res_index *ix = calloc(1, sizeof *ix);
  if (ix == NULL) return NULL;
  ix->e = calloc(t->n ? t->n : 1, sizeof *ix->e);
  if (ix->e == NULL) return free(ix), NULL;
  char k[RES_KEY_MAX];
  for (size_t i = 0; i < t->n; i++) {
    res_key_except(&t->rows[i], skip, k, sizeof k);
    ix->e[i].key = strdup(k);
    ix->e[i].row = i;
    ix->n++;
    if (ix->e[i].key == NULL) return res_index_free(ix), NULL;
  }
  qsort(ix->e, ix->n, sizeof *ix->e, cmp_ent);
  if (dup) {
    *dup = -1;
    for (size_t i = 1; i < ix->n && *dup < 0; i++)
      if (strcmp(ix->e[i].key, ix->e[i - 1].key) == 0) *dup = (long)ix->e[i].row;
  }
  return ix;
}

long res_index_find(const res_index *ix, const char *key) {
  size_t lo = 0, hi = ix->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(ix->e[mid].key, key);
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo < ix->n && strcmp(ix->e[lo].key, key) == 0 ? (long)ix->e[lo].row : -1;
}

/* ------------------------------------------------------------ CSV */

typedef struct csv_ctx {
  res_table *t;
  const char *path;
  moe_error *err;
  moe_status st;
  int map[128];       /* file column -> our column, -1 unknown */
  size_t ncol_file;
  size_t field;
  long line;
  bool header_done;
  char *fields[128];
} csv_ctx;

static void on_field(void *data, size_t len, void *ctx_) {
  csv_ctx *c = ctx_;
  if (c->st != MOE_OK) return;
  if (c->field >= 128) {
    c->st = MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s:%ld: too many fields", c->path, c->line);
    return;
  }
  char *s = malloc(len + 1);
  if (s == NULL) {
    c->st = MOE_FAIL(c->err, MOE_ERR_OOM, "out of host memory reading %s", c->path);
    return;
  }
  if (len) memcpy(s, data, len);
  s[len] = '\0';
  c->fields[c->field++] = s;
}

static void on_row(int term, void *ctx_) {
  csv_ctx *c = ctx_;
  c->line++;
  if (c->st == MOE_OK) {
    if (!c->header_done) {
      c->ncol_file = c->field;
      c->t->from_file = true;
      for (size_t i = 0; i < c->field; i++) {
        c->map[i] = res_col(c->fields[i]);
        for (size_t j = 0; j < i && c->map[i] >= 0; j++)
          if (c->map[j] == c->map[i]) {
            c->st = MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s:1: column '%s' appears twice", c->path,
                             c->fields[i]);
            break;
          }
        if (c->map[i] >= 0) c->t->has[c->map[i]] = true;
      }
      int sv = res_col("schema_version");
      if (c->field == 0 || c->map[0] != sv)
        c->st = MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s:1: not a moebench results file (first column must be schema_version)",
                         c->path);
      for (size_t k = 0; c->st == MOE_OK && k < res_ncols; k++) {
        if (res_columns[k].kind != RES_KEY) continue;
        /* columns are only appended: a key column after schema 2.1's last
         * column came in a later minor version and reads as empty (its
         * default) in files written before it */
        if ((int)k > res_col("max_logit_diff")) continue;
        bool found = false;
        for (size_t i = 0; i < c->field; i++) found |= c->map[i] == (int)k;
        if (!found)
          c->st = MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s:1: key column '%s' is missing", c->path,
                           res_columns[k].name);
      }
      c->header_done = true;
    } else if (c->field != c->ncol_file) {
      c->st = MOE_FAIL(c->err, MOE_ERR_FORMAT, "%s:%ld: %zu fields, the header has %zu", c->path,
                       c->line, c->field, c->ncol_file);
    } else {
      res_row *r = res_table_add(c->t);
      if (r == NULL) {
        c->st = MOE_FAIL(c->err, MOE_ERR_OOM, "out of host memory reading %s", c->path);
      } else {
        for (size_t i = 0; i < c->field; i++)
          if (c->map[i] >= 0) res_set(r, res_columns[c->map[i]].name, c->fields[i]);
        const char *sv = res_get(r, "schema_version");
        if (atoi(sv) != RES_SCHEMA_MAJOR)
          c->st = MOE_FAIL(c->err, MOE_ERR_FORMAT,
                           "%s:%ld: schema version %s, this moebench reads major version %d", c->path,
                           c->line, sv, RES_SCHEMA_MAJOR);
      }
    }
  }
  for (size_t i = 0; i < c->field; i++) free(c->fields[i]);
  c->field = 0;
}

moe_status res_read_csv_stream(FILE *f, const char *path, res_table *t, moe_error *err) {
  res_table_init(t);
  struct csv_parser p;
  if (csv_init(&p, CSV_APPEND_NULL) != 0) return MOE_FAIL(err, MOE_ERR_OOM, "csv_init failed");
  csv_ctx c = {.t = t, .path = path, .err = err, .st = MOE_OK};
  char buf[65536];
  size_t n;
  int last = -1; /* the file's last byte: a complete file ends its last record */
  while (c.st == MOE_OK && (n = fread(buf, 1, sizeof buf, f)) > 0) {
    last = (unsigned char)buf[n - 1];
    if (csv_parse(&p, buf, n, on_field, on_row, &c) != n && c.st == MOE_OK)
      c.st = MOE_FAIL(err, MOE_ERR_FORMAT, "%s: malformed CSV: %s", path, csv_strerror(csv_error(&p)));
  }
  if (c.st == MOE_OK && last >= 0 && last != '\n')
    c.st = MOE_FAIL(err, MOE_ERR_FORMAT,
                    "%s: truncated: the last record does not end with a newline (a cut file?)",
                    path);
  if (c.st == MOE_OK) csv_fini(&p, on_field, on_row, &c);
  for (size_t i = 0; i < c.field; i++) free(c.fields[i]);
  csv_free(&p);
  if (c.st == MOE_OK && !c.header_done)
    c.st = MOE_FAIL(err, MOE_ERR_FORMAT, "%s: empty file (no header)", path);
  if (c.st != MOE_OK) res_table_free(t);
  return c.st;
}

moe_status res_read_csv(const char *path, res_table *t, moe_error *err) {
  res_table_init(t);
  FILE *f = moe_fopen_regular(path, err);
  if (f == NULL) return err ? err->status : MOE_ERR_IO;
  moe_status st = res_read_csv_stream(f, path, t, err);
  fclose(f);
  return st;
}

/* Results files are published whole (moe/publish.h): a reader never sees
 * half a table, and a failed write leaves the old file. */
static moe_status atomic_begin(const char *path, moe_publish *p, FILE **f, moe_error *err) {
  moe_status st = moe_publish_open(p, path, "the results", err);
  *f = st == MOE_OK ? p->f : NULL;
  return st;
}

static moe_status atomic_end(moe_publish *p, bool ok, moe_error *err) {
  if (!ok) moe_publish_fail(p);
  return moe_publish_commit(p, err);
}

moe_status res_write_csv(const char *path, const res_table *t, moe_error *err) {
  moe_publish pub;
  FILE *f;
  moe_status st = atomic_begin(path, &pub, &f, err);
  if (st != MOE_OK) return st;
  bool ok = true;
  for (size_t c = 0; c < res_ncols; c++) {
    if (c) ok &= fputc(',', f) != EOF;
    ok &= csv_fwrite(f, res_columns[c].name, strlen(res_columns[c].name)) == 0;
  }
  ok &= fputc('\n', f) != EOF;
  for (size_t i = 0; i < t->n; i++) {
    for (size_t c = 0; c < res_ncols; c++) {
      if (c) ok &= fputc(',', f) != EOF;
      const char *v = t->rows[i].v[c];
      ok &= csv_fwrite(f, v, strlen(v)) == 0;
    }
    ok &= fputc('\n', f) != EOF;
  }
  return atomic_end(&pub, ok, err);
}

static json_t *json_value_of(const res_column *col, const char *v) {
  if (v[0] == '\0') return json_null();
  if (col->integer) {
    char *end;
    long long x = strtoll(v, &end, 10);
    if (*end == '\0') return json_integer(x);
  }
  if (col->kind == RES_MEASURED || (col->kind == RES_DETERMINISTIC && col->better != 0)) {
    char *end;
    double x = strtod(v, &end);
    if (*end == '\0') return json_real(x);
  }
  return json_string(v);
}

moe_status res_write_json(const char *path, const res_table *t, void *meta, moe_error *err) {
  json_t *root = json_object();
  json_object_set_new(root, "schema_version", json_string(RES_SCHEMA_VERSION));
  json_object_set_new(root, "metadata", meta ? (json_t *)meta : json_object());
  json_t *cols = json_array(), *rows = json_array();
  static const char *kinds[] = {"key", "text", "measured", "deterministic"};
  for (size_t c = 0; c < res_ncols; c++)
    json_array_append_new(cols, json_pack("{s:s, s:s, s:s}", "name", res_columns[c].name, "kind",
                                          kinds[res_columns[c].kind], "doc", res_columns[c].doc));
  for (size_t i = 0; i < t->n; i++) {
    json_t *o = json_object();
    for (size_t c = 0; c < res_ncols; c++)
      json_object_set_new(o, res_columns[c].name, json_value_of(&res_columns[c], t->rows[i].v[c]));
    json_array_append_new(rows, o);
  }
  json_object_set_new(root, "columns", cols);
  json_object_set_new(root, "rows", rows);
  moe_publish pub;
  FILE *f;
  moe_status st = atomic_begin(path, &pub, &f, err);
  if (st == MOE_OK) {
    bool ok = json_dumpf(root, f, JSON_INDENT(1) | JSON_PRESERVE_ORDER) == 0;
    ok &= fputc('\n', f) != EOF;
    st = atomic_end(&pub, ok, err);
  }
  json_decref(root);
  return st;
}

/* Whether v is a plain decimal number: digits, an optional fraction, an
 * optional exponent; no sign, space, hex (0x10), inf or nan, which strtod
 * would take. */
static bool plain_decimal(const char *v) {
  const char *p = v;
  size_t digits = strspn(p, "0123456789");
  p += digits;
  if (*p == '.') {
    const size_t frac = strspn(p + 1, "0123456789");
    digits += frac;
    p += 1 + frac;
  }
  if (digits == 0) return false;
  if (*p == 'e' || *p == 'E') {
    p++;
    if (*p == '+' || *p == '-') p++;
    const size_t exp = strspn(p, "0123456789");
    if (exp == 0) return false;
    p += exp;
  }
  return *p == '\0';
}

double res_strict_number(const char *v) {
  if (!plain_decimal(v)) return -1;
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (v[0] == '\0' || errno == ERANGE || *end != '\0' || !isfinite(x) || x < 0) return -1;
  return x;
}

moe_status res_check_values(const res_table *t, const char *path, moe_error *err) {
  for (size_t i = 0; i < t->n; i++) {
    const char *status = res_get(&t->rows[i], "status");
    if (strcmp(status, "ok") && strcmp(status, "OOM") && strcmp(status, "error"))
      return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: row %zu: status '%s' is not ok, OOM or error", path,
                      i + 2, status);
    for (size_t c = 0; c < res_ncols; c++) {
      const res_column *col = &res_columns[c];
      if (col->kind != RES_MEASURED && col->kind != RES_DETERMINISTIC) continue;
      if (strcmp(col->name, "status") == 0) continue;
      const char *v = t->rows[i].v[c];
      if (v[0] != '\0' && res_strict_number(v) < 0)
        return MOE_FAIL(err, MOE_ERR_FORMAT,
                        "%s: row %zu, column '%s': '%s' is not a finite number >= 0", path, i + 2,
                        col->name, v);
    }
  }
  return MOE_OK;
}

bool res_row_modeled(const res_row *r) {
  const moe_backend_ops *o = moe_backend_find(res_get(r, "backend"));
  return o && (o->caps & MOE_BACKEND_CAP_MODELED);
}
