/* The command-line flags several commands share, specified once: each
 * flag's long name, the kind of its value, its bounds (from the named
 * constants below, the same ones suite files are checked against) and a
 * help line.  A command's parser keeps its getopt table and calls
 * flag_long/flag_u64/flag_double/flag_size with the flag's id, so a bound
 * is never spelled twice; a refused value is reported by cli_bad_value
 * with the bounds ("run: --gen-len '1': expected an integer in 2..65536"). */
#ifndef MOEBENCH_FLAGS_H
#define MOEBENCH_FLAGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "suite.h" /* SUITE_MAX_BATCH, SUITE_MAX_LEN, SUITE_MAX_REPS, SUITE_MAX_THREADS */

/* Bounds that only the command line has. */
#define FLAG_MIN_GEN_LEN 2        /* a prefill's token and at least one decode step */
#define FLAG_MAX_WINDOWS (1 << 24) /* eval --windows */
#define FLAG_MAX_FORWARD (1 << 20) /* timeline --forward */
#define FLAG_MAX_LINK_RATIO 100.0  /* --link-ratio: copy / compute */
#define FLAG_MAX_PATHS 1000        /* bench-ops --paths: repetitions of the path benchmark */
#define FLAG_MAX_SHARDS 1024       /* sweep --shard K/N: N at most this */

typedef enum flag_kind {
  FLAG_INT,    /* an integer in lo..hi (flag_long) */
  FLAG_U64,    /* a non-negative integer below 2^64 (flag_u64) */
  FLAG_NUMBER, /* a finite number in lo..hi, lo excluded when lo_open (flag_double) */
  FLAG_LINK,   /* 0 or MOE_LINK_GBPS_MIN..MOE_LINK_GBPS_MAX GB/s (flag_double) */
  FLAG_BYTES,  /* a byte size with its unit, > 0 (flag_size) */
} flag_kind;

typedef enum flag_id {
  FLAG_BATCH,
  FLAG_PROMPT_LEN,
  FLAG_GEN_LEN,
  FLAG_REQUESTS,
  FLAG_REPS,
  FLAG_WARMUP,
  FLAG_THREADS,
  FLAG_LOOKAHEAD,
  FLAG_LINK_GBPS,
  FLAG_LINK_RATIO,
  FLAG_DEVICE_MEM,
  FLAG_SEED,
  FLAG_PROMPT_SEED,
  FLAG_SKEW,
  FLAG_WINDOWS,
  FLAG_FORWARD,
  FLAG_PATHS,
  FLAG_SHARD,
  FLAG_HOST_THREADS,
  FLAG_HOST_GBPS,
  FLAG_COUNT
} flag_id;

typedef struct flag_spec {
  const char *name; /* the long name, without "--" */
  flag_kind kind;
  double lo, hi;    /* FLAG_INT, FLAG_NUMBER: lo..hi */
  bool lo_open;     /* FLAG_NUMBER: lo itself is refused */
  const char *help; /* one line: what the value is */
} flag_spec;

/* The spec of a flag. */
const flag_spec *flag_spec_of(flag_id id);

/* Parses arg as flag id's value into *out; false when it is refused (the
 * bounds are then what cli_bad_value reports).  Each takes the kinds its
 * type holds: flag_long FLAG_INT, flag_u64 FLAG_U64, flag_double
 * FLAG_NUMBER and FLAG_LINK, flag_size FLAG_BYTES. */
bool flag_long(flag_id id, const char *arg, long *out);
bool flag_u64(flag_id id, const char *arg, uint64_t *out);
bool flag_double(flag_id id, const char *arg, double *out);
bool flag_size(flag_id id, const char *arg, size_t *out);

/* The model and workload flags a measured run takes (run, bench-policies),
 * defined once: FLAGS_RUN_OPTIONS in a command's getopt table, and
 * flags_take_run in its take function, into a flags_run. */
typedef struct flags_run {
  const char *preset, *model_dir, *backend, *hw_name, *sim_routing;
  long batch, plen, glen, reps, threads, lookahead;
  long host_threads; /* experts computed on the host: their math threads (0 = 1) */
  double host_gbps;  /* measured backends: the emulated host's cap, GB/s (0: none) */
  double link;
  size_t devmem;
} flags_run;

#define FLAGS_RUN_OPTIONS                                                              \
  {"preset", required_argument, 0, 'p'}, {"model-dir", required_argument, 0, 'M'},     \
      {"lookahead", required_argument, 0, 'K'}, {"batch", required_argument, 0, 'b'},  \
      {"prompt-len", required_argument, 0, 'l'}, {"gen-len", required_argument, 0, 'g'}, \
      {"reps", required_argument, 0, 'r'}, {"link-gbps", required_argument, 0, 'L'},   \
      {"device-mem", required_argument, 0, 'm'}, {"backend", required_argument, 0, 'B'}, \
      {"threads", required_argument, 0, 't'}, {"hardware", required_argument, 0, 'H'}, \
      {"sim-routing", required_argument, 0, 'U'}, {"host-threads", required_argument, 0, 'J'},     \
      {"host-gbps", required_argument, 0, 'W'}

/* One of FLAGS_RUN_OPTIONS into f: 0 taken, -1 refused, 1 when c is not one
 * of them. */
int flags_take_run(flags_run *f, int c, const char *arg);

/* A flag that names a file or a choice into *to: 0, or -1 when it is
 * empty (flags_getopt's take convention). */
int flag_text(const char **to, const char *arg);

/* --backend of a command that measures (calibrate, validate): a backend
 * this build knows that is not a modeled one; 0, or -1. */
int flag_backend_measured(const char **to, const char *arg);

/* The getopt loop every command shares.  -h/--help prints usage to
 * stdout (returns 0); an unknown or incomplete option is one line naming
 * cmd (returns 2); every other option goes to take(ctx, c, arg), which
 * returns 0 (taken), -1 (a refused value: reported by cli_bad_value with
 * the flag's bounds; returns 2) or an exit code after printing why
 * (returned).  -1 when every option was taken; optind is then the first
 * positional argument. */
struct option;
int flags_getopt(const char *cmd, int argc, char **argv, const char *shortopts,
                 const struct option *opts, int (*take)(void *ctx, int c, const char *arg),
                 void *ctx, void (*usage)(FILE *f));

#endif
