/* Suites and workloads as data (JSON files under workloads/suites and
 * workloads/profiles), parsed with jansson; every error names the
 * file and the field. */
#ifndef MOEBENCH_SUITE_H
#define MOEBENCH_SUITE_H

#include <stddef.h>
#include <stdint.h>

#include "moe/status.h"

#define SUITE_MAX 16
#define SUITE_NAME_MAX 512  /* a models or policies entry (names and paths) */
/* Bounds shared by suites and the command-line flags of the same name. */
#define SUITE_MAX_BATCH 4096
#define SUITE_MAX_LEN (1 << 16)   /* prompt_len, gen_len, requests */
#define SUITE_MAX_REPS 100        /* repetitions, warmup */
#define SUITE_MAX_THREADS 1024

typedef struct workload {
  char name[64];
  char description[160];
  int batches[SUITE_MAX];   /* one run per entry */
  int n_batches;
  int prompt_len, gen_len, requests;
  uint64_t seed;            /* random token ids */
  char token_file[512];     /* or ids from this file ("" = random) */
  char eval_file[512];      /* quality windows, one per line ("" = no eval) */
  int eval_windows;         /* at most this many of them (0 = all) */
} workload;

typedef struct suite {
  char name[64];
  char description[200];
  char path[512];
  char models[SUITE_MAX][SUITE_NAME_MAX]; /* preset names, or checkpoint directories */
  int n_models;
  workload workloads[SUITE_MAX];
  int n_workloads;
  char policies[SUITE_MAX][SUITE_NAME_MAX];
  int n_policies;
  char backend[16];         /* a backend name, or "auto" */
  size_t budgets[SUITE_MAX];/* 0 = device capacity */
  int n_budgets;
  double link_gbps;
  double link_ratio;        /* > 0: the link is set per row group so one expert's copy takes
                               this many times a decoder MoE block window's compute */
  int threads;
  int host_threads;         /* experts computed on the host: their math threads (default 1) */
  double host_gbps;         /* measured backends: the emulated host's cap, GB/s (0: none) */
  int repetitions, warmup;
  char routing[16];         /* "default", "conventional", "pregated" */
  int lookahead;            /* pre-gate lookahead of every row, 1..3 (default 1) */
  char hardware[SUITE_NAME_MAX]; /* sim backend: the hardware profile's file ("" otherwise) */
  char sim_routing[SUITE_NAME_MAX]; /* sim backend: its routing source ("" = uniform) */
} suite;

/* Directory of workload profiles: $MOE_PROFILES_DIR, else the source tree's
 * workloads/profiles. */
const char *suite_profiles_dir(void);
/* Directory of suites: $MOE_SUITES_DIR, else workloads/suites. */
const char *suite_dir(void);

/* Loads a workload profile by name (profiles dir) or path. */
moe_status workload_load(workload *w, const char *name_or_path, moe_error *err);
/* Parses a workload object; origin names it in messages. */
/* base: the file relative paths in it are relative to (the workload
 * profile's, or the suite's for a workload written inside a suite). */
moe_status workload_from_json(workload *w, const void *json, const char *origin, const char *base,
                              moe_error *err);
/* Loads a suite by name (suites dir) or path. */
moe_status suite_load(suite *s, const char *name_or_path, moe_error *err);
/* Parses a suite object (a json_t *); origin names it in messages.  Named
 * workloads are read from the profiles directory. */
moe_status suite_from_json(suite *s, const void *json, const char *origin, moe_error *err);

#endif
