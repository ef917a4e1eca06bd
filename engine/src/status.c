/* Status names and the first-failure error record. */
#include "moe/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *moe_status_name(moe_status st) {
  switch (st) {
    case MOE_OK: return "MOE_OK";
    case MOE_ERR_IO: return "MOE_ERR_IO";
    case MOE_ERR_FORMAT: return "MOE_ERR_FORMAT";
    case MOE_ERR_OOM: return "MOE_ERR_OOM";
    case MOE_ERR_INVALID: return "MOE_ERR_INVALID";
    case MOE_ERR_UNSUPPORTED: return "MOE_ERR_UNSUPPORTED";
    case MOE_ERR_NO_DEVICE: return "MOE_ERR_NO_DEVICE";
    case MOE_ERR_DEVICE: return "MOE_ERR_DEVICE";
    case MOE_ERR_INTERNAL: return "MOE_ERR_INTERNAL";
  }
  return "MOE_ERR_UNKNOWN";
}

moe_status moe_error_set(moe_error *err, moe_status st, const char *file, int line,
                         const char *fmt, ...) {
  if (err == NULL || err->status != MOE_OK || st == MOE_OK) return st;
  err->status = st;
  /* Keep the path from the project root only: engine/src/x.c, not the build
   * machine's absolute path. */
  const char *rel = file;
  const char *roots[] = {"/engine/", "/harness/", "/baselines/", "/tests/"};
  for (size_t i = 0; i < sizeof roots / sizeof roots[0]; i++) {
    const char *p = strstr(file, roots[i]);
    if (p != NULL) {
      rel = p + 1;
      break;
    }
  }
  err->file = rel;
  err->line = line;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->msg, sizeof err->msg, fmt, ap);
  va_end(ap);
  return st;
}

void moe_error_clear(moe_error *err) {
  if (err == NULL) return;
  memset(err, 0, sizeof *err);
}

const char *moe_error_text(const moe_error *err, char *buf, size_t cap) {
  if (err == NULL || err->status == MOE_OK) {
    snprintf(buf, cap, "no error");
  } else {
    snprintf(buf, cap, "%s (%s:%d)", err->msg, err->file ? err->file : "?", err->line);
  }
  return buf;
}
