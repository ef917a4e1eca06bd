/* libFuzzer target: the results CSV reader (libcsv plus our header, schema
 * and row checks), as compare, report and --resume use it on files users
 * hand them, then the value checks report and merge apply (res_check_values:
 * status words, metrics as plain decimals). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "results.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  FILE *f = fmemopen((void *)data, size, "rb");
  if (f == NULL) return 0;
  res_table t;
  moe_error err = {0};
  moe_status st = res_read_csv_stream(f, "fuzz", &t, &err);
  fclose(f);
  if (st == MOE_OK) {
    for (size_t i = 0; i < t.n; i++) {
      char key[1024];
      res_key(&t.rows[i], key, sizeof key);
      if (res_find(&t, &t.rows[i]) < 0) abort();
      /* a metric is a strict number (finite, >= 0) or refused with -1 */
      for (size_t c = 0; c < res_ncols; c++) {
        const double x = res_strict_number(t.rows[i].v[c]);
        if (x != -1 && !(isfinite(x) && x >= 0)) abort();
      }
    }
    /* the value checks report and merge apply: refused with a message */
    moe_error e2 = {0};
    moe_status vs = res_check_values(&t, "fuzz", &e2);
    if (vs != MOE_OK && (vs != MOE_ERR_FORMAT || e2.msg[0] == '\0')) abort();
    res_table_free(&t);
  } else if (st != MOE_ERR_FORMAT || t.n != 0) {
    abort();
  }
  return 0;
}
