/* Shared pieces of the moebench subcommands: option parsing helpers, model
 * presets, prompt sources. */
#ifndef MOEBENCH_CLI_H
#define MOEBENCH_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "moe/model.h"

/* Prints "moebench: <msg>" to stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints the engine error as one line and returns 1 (the exit code). */
int cli_fail(const moe_error *err);

/* Strict integer / number parsing: the whole string, in range. */
bool cli_parse_int(const char *s, long lo, long hi, long *out);
bool cli_parse_u64(const char *s, uint64_t *out);
bool cli_parse_double(const char *s, double *out);

/* Directory holding model presets: $MOE_MODELS_DIR, else the source tree's
 * workloads/models. */
const char *cli_models_dir(void);

/* A model preset: workloads/models/NAME.json. */
typedef struct cli_preset {
  char name[64];
  char description[160];
  moe_config cfg;
  moe_dtype dtype;
  uint64_t seed;
  double routing_skew;
} cli_preset;

/* Reads preset NAME (or a path to a preset file).  Errors name the file and
 * field. */
moe_status cli_preset_load(cli_preset *p, const char *name_or_path, moe_error *err);

/* Parses "1,2,3" or "1 2 3" into ids (malloc'd); returns count or -1. */
int cli_parse_ids(const char *s, int32_t **ids);

#endif
