/* One result row of run and sweep: the configuration (row_config), its
 * repetitions run through the runner and their figures set as columns of a
 * res_row; and the metadata and outputs (PREFIX.csv and .json, published
 * atomically) of a result file.  Library layer: no command-line parts. */
#ifndef MOEBENCH_ROW_H
#define MOEBENCH_ROW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe/model.h"
#include "moe/policy.h"
#include "results.h"
#include "runner.h"
#include "suite.h"

typedef struct row_config {
  const char *model_name;
  uint64_t model_seed;
  moe_model *model;
  moe_dtype dtype;
  const workload *wl;
  int batch;
  const moe_policy *policy;
  moe_routing routing;
  const char *backend;
  const char *device;           /* the backend's device name */
  size_t budget;
  double link_gbps;
  int threads, reps, warmup;
  int host_threads;             /* experts computed on the host: their math threads (0 = 1) */
  double host_gbps;             /* measured backends: the emulated host's cap, GB/s (0: none) */
  const int32_t *prompts;
  int n_prompts;
  const char *trace_path;       /* run: --trace (the last repetition's) */
  const int32_t *eval;          /* quality windows (NULL: none) */
  int eval_n, eval_len;
  int lookahead;                /* pre-gate lookahead (0, 1: the next block) */
  const char *policy_label;     /* the policy column: NAME or NAME+KIND:SIZE (NULL: the name) */
  const char *cache;            /* the expert cache spec, or NULL */
  const char *hardware;         /* sim backend: the profile file (NULL otherwise) */
  const char *sim_routing;      /* sim backend: the routing source (NULL: uniform) */
  double link_ratio;            /* > 0: link_gbps was derived from this ratio (the key holds
                                   the ratio, link_gbps_derived the cap) */
  const char *routing_log;      /* run: --record-routing (the last repetition's) */
  double model_pin_s;           /* > 0: the sweep pinned the model, in this many seconds
                                   (the rows' own registrations then only share it) */
  const char *inputs;           /* the inputs column (cli_inputs_hash), or NULL */
} row_config;

/* The key columns of a row: every input that changes a figure. */
void row_key_columns(const row_config *rc, res_row *row);

/* Runs warm-up and measured repetitions of one configuration and fills a
 * result row.  ref (may be NULL) is the parity reference's result on the
 * same inputs; *keep receives this run's last result when keep is non-NULL. */
void run_row(const row_config *rc, res_row *row, const run_result *ref, run_result *keep,
             bool want_logits);

/* The current UTC time, ISO 8601. */
void iso_now(char *buf, size_t cap);
/* argv as given (before getopt reorders it), "moebench" first, as JSON. */
struct json_t;
struct json_t *row_argv_json(int argc, char **argv);
/* A result file's metadata: versions, commit, host, backend and devices;
 * hardware: the profile file a modeled backend ran on (NULL or "": none,
 * the times are measured). */
struct json_t *row_metadata(struct json_t *av, const char *suite_name, const char *backend,
                            double link, const char *hardware, const char *start);
/* PREFIX.csv and PREFIX.json (with meta and its end time), each published
 * whole (moe/publish.h). */
moe_status row_write_outputs(const char *prefix, const res_table *t, struct json_t *meta,
                             moe_error *err);

#endif
