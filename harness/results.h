/* Result tables: one row per model x workload x policy x backend x budget,
 * written as CSV (libcsv) and JSON (jansson), read back for compare,
 * report and resume.  Files are written to NAME.tmp and renamed, so an
 * interrupted run never leaves a truncated file.  Columns are documented in
 * docs/RESULTS.md; their order and names are part of the schema. */
#ifndef MOEBENCH_RESULTS_H
#define MOEBENCH_RESULTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "moe/status.h"

#define RES_SCHEMA_MAJOR 2
#define RES_SCHEMA_MINOR 3
#define RES_SCHEMA_VERSION "2.8"
#define RES_KEY_MAX 2048 /* bytes of a row key, escaped */

typedef enum res_kind {
  RES_KEY,           /* identifies the row */
  RES_TEXT,          /* descriptive, not compared */
  RES_MEASURED,      /* wall-clock measurement: compared loosely */
  RES_DETERMINISTIC  /* counted or computed, the same on every rerun: compared exactly */
} res_kind;

typedef struct res_column {
  const char *name;
  res_kind kind;
  int better;        /* +1 higher is better, -1 lower is better, 0 not a metric */
  bool integer;      /* exact integer (bytes, counts) */
  const char *doc;
} res_column;

extern const res_column res_columns[];
extern const size_t res_ncols;

/* Column index by name, or -1. */
int res_col(const char *name);

typedef struct res_row {
  char **v; /* res_ncols strings, "" when empty */
} res_row;

#define RES_MAX_COLS 128

typedef struct res_table {
  res_row *rows;
  size_t n, cap;
  bool from_file;             /* read by res_read_csv: `has` says which columns it had */
  bool has[RES_MAX_COLS];     /* column c was in the file's header */
} res_table;

void res_table_init(res_table *t);
void res_table_free(res_table *t);
/* Appends an empty row; returns it (NULL when out of memory). */
res_row *res_table_add(res_table *t);
/* Sets a field (copied). */
void res_set(res_row *r, const char *col, const char *value);
void res_setf(res_row *r, const char *col, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
const char *res_get(const res_row *r, const char *col);
/* The row key: key columns joined with '|' ('|' and '\\' in values
 * escaped with '\\').  The key holds every input that changes a figure. */
void res_key(const res_row *r, char *buf, size_t cap);
/* The same without some key columns (skip: comma-separated names, NULL:
 * none), e.g. "device" to pair rows measured on two machines. */
void res_key_except(const res_row *r, const char *skip, char *buf, size_t cap);
/* Index of the row with the same key, or -1 (a linear scan). */
long res_find(const res_table *t, const res_row *like);

/* Sorted index of a table's keys (res_key_except with skip): lookups in
 * O(log n).  *dup (when non-NULL) receives the index of a row whose key
 * another row also has, or -1. */
typedef struct res_index res_index;
res_index *res_index_build(const res_table *t, const char *skip, long *dup);
long res_index_find(const res_index *ix, const char *key);
void res_index_free(res_index *ix);

/* Reads a CSV written by res_write_csv.  MOE_ERR_FORMAT naming the file and
 * line for a bad header, a ragged row or a schema major version other than
 * this build's. */
moe_status res_read_csv(const char *path, res_table *t, moe_error *err);
/* Same, from an open stream; origin names it in messages (the fuzzer's entry). */
moe_status res_read_csv_stream(FILE *f, const char *origin, res_table *t, moe_error *err);
moe_status res_write_csv(const char *path, const res_table *t, moe_error *err);
/* A metric value: the whole string a plain decimal number >= 0 (digits,
 * fraction, exponent; not hex, inf, nan, signs or spaces) that is finite;
 * -1 otherwise. */
double res_strict_number(const char *v);
/* Every row's status is ok, OOM or error and every metric is empty or a
 * strict number: MOE_ERR_FORMAT naming file, row and column otherwise (what
 * --resume keeps must be as sound as what compare accepts). */
moe_status res_check_values(const res_table *t, const char *path, moe_error *err);
/* JSON: {"schema_version", "metadata": meta (stolen reference, may be NULL),
 * "columns": [{name, kind, unit docs}], "rows": [{col: value}]}; integers
 * stay integers, reals reals, empty fields null. */
moe_status res_write_json(const char *path, const res_table *t, void *meta, moe_error *err);

/* Whether a row's times are modeled (its backend is a modeled one: sim)
 * rather than measured. */
bool res_row_modeled(const res_row *r);

#endif
