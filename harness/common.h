/* The helpers the library layer (runner, results, suite, replay, row) and
 * the command line (cli.h) share: strict value parsers, the one-line text
 * of an error, hardware-profile paths, expert-cache specs, JSON key checks.
 * Nothing here prints.  (The cli_ prefix is historical: these were part of
 * cli.c.) */
#ifndef MOEBENCH_COMMON_H
#define MOEBENCH_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe/model.h"

/* The one-line text of an error, with file:line only when verbose. */
const char *cli_error_text(const moe_error *err, char *buf, size_t cap);
/* moebench --verbose (or MOE_VERBOSE=1): errors name the source file:line. */
bool cli_verbose(void);

/* Strict integer / number parsing: the whole string, in range. */
bool cli_parse_int(const char *s, long lo, long hi, long *out);

bool cli_parse_u64(const char *s, uint64_t *out);
bool cli_parse_double(const char *s, double *out);
/* A link cap in GB/s: 0 (uncapped) or MOE_LINK_GBPS_MIN..MOE_LINK_GBPS_MAX;
 * a cap too small to emulate is refused, never read as "uncapped". */
bool cli_parse_link(const char *s, double *out);

/* Whether the backend of that name is a modeled one (MOE_BACKEND_CAP_MODELED: the sim). */
bool cli_backend_modeled(const char *backend);

/* Parses a byte size: "123", "64KiB", "512MiB", "24GiB", "1.5GB", "2TB".
 * Binary suffixes are powers of 1024, decimal ones of 1000. */
bool cli_parse_bytes(const char *s, size_t *out);

/* Hardware profiles: the directory (workloads/hardware, or
 * $MOE_HARDWARE_DIR) and the file a name means there (a name with a '/'
 * or ending in .json is a path already). */
const char *cli_hw_dir(void);
void cli_hw_path(const char *name, char *path, size_t cap);

/* Every key of a JSON object (a json_t *) must be one of known (NULL-ended):
 * MOE_ERR_FORMAT "ORIGIN: unknown field 'repetitons' (did you mean
 * 'repetitions'?)" otherwise.  A typo must never silently fall back to a
 * default. */
moe_status cli_check_keys(const void *obj, const char *const *known, const char *origin,
                          moe_error *err);

/* An expert cache spec "KIND:SIZE": KIND lru, lfu, static or ring; SIZE a number
 * of experts ("64", 1 .. 2^24; a plain number is never bytes), a share of all
 * experts of the model ("25%"), or a byte size with its unit ("2GiB", "512B":
 * whole experts of it).  Returns the experts it means for model m (m NULL:
 * only checks the syntax, returning 1; 0 when the share or size is less
 * than one expert of m), or -1 when malformed.  *kind receives the kind. */
int cli_cache_experts(const char *spec, const moe_model *m, moe_cache_kind *kind);

/* Splits a policy entry "NAME+KIND:SIZE" (a policy with an expert cache)
 * into NAME (into base) and the cache spec (*cache, NULL when none).
 * false when the cache part is malformed or NAME does not fit. */
bool cli_split_policy(const char *entry, char *base, size_t cap, const char **cache);

/* What the last parser above expected of arg ("an integer in 1..4096"),
 * when arg is the string it was last given; NULL otherwise. */
const char *cli_expected(const char *arg);

/* The two-sided 95% t quantile for df degrees of freedom (a table to 30,
 * 1.96 + 2.4 / df beyond: within 0.002 of the exact value). */
double cli_t975(int df);
/* Mean of x[0..n) and the half-width of its 95% t interval (NAN for n < 2). */
void cli_mean_ci95(const double *x, int n, double *mean, double *half);

#endif
