/* The helpers the library layer and the command line share (common.h). */
#include "common.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/backend.h"

bool cli_verbose(void) {
  const char *v = getenv("MOE_VERBOSE");
  return v && *v && strcmp(v, "0") != 0;
}

const char *cli_error_text(const moe_error *err, char *buf, size_t cap) {
  if (cli_verbose()) return moe_error_text(err, buf, cap);
  snprintf(buf, cap, "%s", err->msg[0] ? err->msg : moe_status_name(err->status));
  return buf;
}

/* What the last parser wanted, and of which argument (cli_bad_value). */
static char g_expect[96];
static const char *g_expect_of;

const char *cli_expected(const char *arg) {
  return arg && g_expect_of == arg && g_expect[0] ? g_expect : NULL;
}
static void expect(const char *s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_expect, sizeof g_expect, fmt, ap);
  va_end(ap);
  g_expect_of = s;
}

bool cli_parse_int(const char *s, long lo, long hi, long *out) {
  expect(s, "an integer in %ld..%ld", lo, hi);
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end != '\0' || v < lo || v > hi) return false;
  *out = v;
  return true;
}

bool cli_parse_u64(const char *s, uint64_t *out) {
  expect(s, "a non-negative integer below 2^64");
  char *end;
  errno = 0;
  if (*s == '-') return false;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *end != '\0') return false;
  *out = (uint64_t)v;
  return true;
}

bool cli_parse_double(const char *s, double *out) {
  expect(s, "a finite number");
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end != '\0' || !isfinite(v)) return false;
  *out = v;
  return true;
}

bool cli_parse_link(const char *s, double *out) {
  double v;
  if (!cli_parse_double(s, &v)) return false;
  expect(s, "0 (no cap) or GB/s in %g..%g", MOE_LINK_GBPS_MIN, MOE_LINK_GBPS_MAX);
  if (v != 0 && !(v >= MOE_LINK_GBPS_MIN && v <= MOE_LINK_GBPS_MAX)) return false;
  *out = v;
  return true;
}

bool cli_parse_bytes(const char *s, size_t *out) {
  expect(s, "a size: bytes, or a number with B, KiB, MiB, GiB, TiB, KB, MB, GB or TB");
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || !(v >= 0) || !isfinite(v)) return false;
  static const struct {
    const char *suffix;
    double mult;
  } units[] = {{"", 1},          {"B", 1},           {"KiB", 1024.0},   {"MiB", 1048576.0},
               {"GiB", 1073741824.0}, {"TiB", 1099511627776.0}, {"KB", 1e3}, {"MB", 1e6},
               {"GB", 1e9},      {"TB", 1e12},       {"K", 1024.0},     {"M", 1048576.0},
               {"G", 1073741824.0}};
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
    if (strcmp(end, units[i].suffix) == 0) {
      double b = v * units[i].mult;
      if (b >= 1.8e19) return false;
      *out = (size_t)b;
      return true;
    }
  return false;
}

const char *cli_hw_dir(void) {
  const char *d = getenv("MOE_HARDWARE_DIR");
  return d && d[0] ? d : MOE_SOURCE_DIR "/workloads/hardware";
}

void cli_hw_path(const char *name, char *path, size_t cap) {
  if (strchr(name, '/') || strstr(name, ".json"))
    snprintf(path, cap, "%s", name);
  else
    snprintf(path, cap, "%s/%s.json", cli_hw_dir(), name);
}

bool cli_backend_modeled(const char *backend) {
  const moe_backend_ops *o = backend ? moe_backend_find(backend) : NULL;
  return o != NULL && (o->caps & MOE_BACKEND_CAP_MODELED);
}

/* Edit distance (insertions, deletions, substitutions), capped inputs. */
static size_t edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 63 || lb > 63) return 99;
  size_t prev[64], cur[64];
  for (size_t j = 0; j <= lb; j++) prev[j] = j;
  for (size_t i = 1; i <= la; i++) {
    cur[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
      size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
      cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
    }
    memcpy(prev, cur, (lb + 1) * sizeof *prev);
  }
  return prev[lb];
}

moe_status cli_check_keys(const void *obj, const char *const *known, const char *origin,
                          moe_error *err) {
  const char *key;
  json_t *v;
  json_object_foreach((json_t *)obj, key, v) {
    bool ok = false;
    for (size_t i = 0; known[i] && !ok; i++) ok = strcmp(key, known[i]) == 0;
    if (ok) continue;
    const char *best = NULL;
    size_t bd = 99;
    for (size_t i = 0; known[i]; i++) {
      size_t d = edit_distance(key, known[i]);
      if (d < bd) bd = d, best = known[i];
    }
    if (best && bd <= 2)
      return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: unknown field '%s' (did you mean '%s'?)", origin,
                      key, best);
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: unknown field '%s'", origin, key);
  }
  return MOE_OK;
}

int cli_cache_experts(const char *spec, const moe_model *m, moe_cache_kind *kind) {
  const char *colon = strchr(spec, ':');
  char name[16];
  if (colon == NULL || (size_t)(colon - spec) >= sizeof name) return -1;
  snprintf(name, sizeof name, "%.*s", (int)(colon - spec), spec);
  if (moe_cache_kind_parse(name, kind) != 0 || *kind == MOE_CACHE_NONE) return -1;
  const char *sz = colon + 1;
  const size_t n = strlen(sz);
  if (n == 0) return -1;
  double amount;
  long experts;
  const double keys = m ? (double)moe_config_n_moe_layers(moe_model_config(m)) *
                              (double)moe_model_config(m)->n_experts
                        : 0;
  if (sz[n - 1] == '%') {
    char num[32];
    if (n >= sizeof num) return -1;
    snprintf(num, sizeof num, "%.*s", (int)(n - 1), sz);
    if (!cli_parse_double(num, &amount) || !(amount > 0) || amount > 100) return -1;
    return m ? (int)(keys * amount / 100.0 + 0.5) : 1; /* 0: less than one expert */
  }
  /* a plain number is a count of experts, never bytes: bytes take a unit */
  if (strspn(sz, "0123456789") == n) return cli_parse_int(sz, 1, 1 << 24, &experts) ? (m ? (int)experts : 1) : -1;
  size_t bytes;
  if (!cli_parse_bytes(sz, &bytes) || bytes == 0) return -1;
  return m ? (int)(bytes / moe_model_expert_bytes(m)) : 1; /* 0: less than one expert */
}

bool cli_split_policy(const char *entry, char *base, size_t cap, const char **cache) {
  const char *plus = strrchr(entry, '+');
  *cache = NULL;
  moe_cache_kind kind;
  if (plus && strchr(plus, ':') && cli_cache_experts(plus + 1, NULL, &kind) < 0) return false;
  const size_t len = plus && strchr(plus, ':') ? (size_t)(plus - entry) : strlen(entry);
  if (len == 0 || len >= cap) return false;
  snprintf(base, cap, "%.*s", (int)len, entry);
  if (plus && strchr(plus, ':')) *cache = plus + 1;
  return true;
}

double cli_t975(int df) {
  static const double t[31] = {NAN,   12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365,
                               2.306, 2.262,  2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
                               2.120, 2.110,  2.101, 2.093, 2.086, 2.080, 2.074, 2.069,
                               2.064, 2.060,  2.056, 2.052, 2.048, 2.045, 2.042};
  if (df < 1) return NAN;
  return df <= 30 ? t[df] : 1.96 + 2.4 / df;
}

void cli_mean_ci95(const double *x, int n, double *mean, double *half) {
  double s = 0, ss = 0;
  for (int i = 0; i < n; i++) s += x[i];
  *mean = n > 0 ? s / n : NAN;
  for (int i = 0; i < n; i++) ss += (x[i] - *mean) * (x[i] - *mean);
  *half = n > 1 ? cli_t975(n - 1) * sqrt(ss / (n - 1)) / sqrt((double)n) : NAN;
}
