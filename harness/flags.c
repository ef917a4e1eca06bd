/* The shared command-line flags (flags.h). */
#include "flags.h"

#include <assert.h>
#include <getopt.h>
#include <stdio.h>

#include "cli.h"
#include "common.h"
#include "moe/backend.h"
#include "moe/model.h"

static const flag_spec k_flags[FLAG_COUNT] = {
    [FLAG_BATCH] = {"batch", FLAG_INT, 1, SUITE_MAX_BATCH, false, "sequences per step"},
    [FLAG_PROMPT_LEN] = {"prompt-len", FLAG_INT, 1, SUITE_MAX_LEN, false, "prompt tokens"},
    [FLAG_GEN_LEN] = {"gen-len", FLAG_INT, FLAG_MIN_GEN_LEN, SUITE_MAX_LEN, false,
                      "generated tokens (the prefill's and at least one decode step's)"},
    [FLAG_REQUESTS] = {"requests", FLAG_INT, 1, SUITE_MAX_LEN, false, "generate calls per repetition"},
    [FLAG_REPS] = {"reps", FLAG_INT, 1, SUITE_MAX_REPS, false, "measured repetitions"},
    [FLAG_WARMUP] = {"warmup", FLAG_INT, 0, SUITE_MAX_REPS, false, "unmeasured warm-up runs"},
    [FLAG_THREADS] = {"threads", FLAG_INT, 1, SUITE_MAX_THREADS, false, "math threads"},
    [FLAG_LOOKAHEAD] = {"lookahead", FLAG_INT, 1, MOE_MAX_LOOKAHEAD, false,
                        "a block's pre-gate predicts the K-th MoE block after it"},
    [FLAG_LINK_GBPS] = {"link-gbps", FLAG_LINK, 0, MOE_LINK_GBPS_MAX, false,
                        "host-to-device link cap in GB/s (0: none)"},
    [FLAG_LINK_RATIO] = {"link-ratio", FLAG_NUMBER, 0, FLAG_MAX_LINK_RATIO, true,
                         "one expert's copy over a decoder MoE block window's compute"},
    [FLAG_DEVICE_MEM] = {"device-mem", FLAG_BYTES, 1, 0, false, "device-memory budget"},
    [FLAG_SEED] = {"seed", FLAG_U64, 0, 0, false, "weight seed of a preset's model"},
    [FLAG_PROMPT_SEED] = {"prompt-seed", FLAG_U64, 0, 0, false, "seed of the random prompts"},
    [FLAG_SKEW] = {"routing-skew", FLAG_NUMBER, 0, 1e300, false, "synthetic router skew"},
    [FLAG_WINDOWS] = {"windows", FLAG_INT, 1, FLAG_MAX_WINDOWS, false, "token windows evaluated"},
    [FLAG_FORWARD] = {"forward", FLAG_INT, 1, FLAG_MAX_FORWARD, false, "the N-th forward from the end"},
    [FLAG_PATHS] = {"paths", FLAG_INT, 1, FLAG_MAX_PATHS, false, "repetitions of the gemm path benchmark"},
    [FLAG_SHARD] = {"shard", FLAG_INT, 1, FLAG_MAX_SHARDS, false, "K/N: the K-th of N shards"},
    [FLAG_HOST_THREADS] = {"host-threads", FLAG_INT, 1, SUITE_MAX_THREADS, false,
                           "math threads of the experts computed on the host"},
    [FLAG_HOST_GBPS] = {"host-gbps", FLAG_NUMBER, 0, MOE_LINK_GBPS_MAX, false,
                        "the emulated host's memory bandwidth cap in GB/s (0: none)"},
};

const flag_spec *flag_spec_of(flag_id id) { return id < FLAG_COUNT ? &k_flags[id] : NULL; }

bool flag_long(flag_id id, const char *arg, long *out) {
  const flag_spec *f = flag_spec_of(id);
  assert(f && f->kind == FLAG_INT);
  return cli_parse_int(arg, (long)f->lo, (long)f->hi, out);
}

bool flag_u64(flag_id id, const char *arg, uint64_t *out) {
  const flag_spec *f = flag_spec_of(id);
  assert(f && f->kind == FLAG_U64);
  (void)f;
  return cli_parse_u64(arg, out);
}

bool flag_double(flag_id id, const char *arg, double *out) {
  const flag_spec *f = flag_spec_of(id);
  assert(f && (f->kind == FLAG_NUMBER || f->kind == FLAG_LINK));
  if (f->kind == FLAG_LINK) return cli_parse_link(arg, out);
  double v;
  if (!cli_parse_double(arg, &v) || !(f->lo_open ? v > f->lo : v >= f->lo) || !(v <= f->hi)) return false;
  *out = v;
  return true;
}

bool flag_size(flag_id id, const char *arg, size_t *out) {
  const flag_spec *f = flag_spec_of(id);
  assert(f && f->kind == FLAG_BYTES);
  (void)f;
  size_t v;
  if (!cli_parse_bytes(arg, &v) || v == 0) return false;
  *out = v;
  return true;
}

int flags_take_run(flags_run *f, int c, const char *arg) {
  switch (c) {
    case 'p': f->preset = arg; return 0;
    case 'M': f->model_dir = cli_model_dir_arg(arg); return arg[0] ? 0 : -1;
    case 'K': return flag_long(FLAG_LOOKAHEAD, arg, &f->lookahead) ? 0 : -1;
    case 'b': return flag_long(FLAG_BATCH, arg, &f->batch) ? 0 : -1;
    case 'l': return flag_long(FLAG_PROMPT_LEN, arg, &f->plen) ? 0 : -1;
    case 'g': return flag_long(FLAG_GEN_LEN, arg, &f->glen) ? 0 : -1;
    case 'r': return flag_long(FLAG_REPS, arg, &f->reps) ? 0 : -1;
    case 'L': return flag_double(FLAG_LINK_GBPS, arg, &f->link) ? 0 : -1;
    case 'm': return flag_size(FLAG_DEVICE_MEM, arg, &f->devmem) ? 0 : -1;
    case 'B': f->backend = arg; return 0;
    case 't': return flag_long(FLAG_THREADS, arg, &f->threads) ? 0 : -1;
    case 'H': return flag_text(&f->hw_name, arg);
    case 'U': return flag_text(&f->sim_routing, arg);
    case 'J': return flag_long(FLAG_HOST_THREADS, arg, &f->host_threads) ? 0 : -1;
    case 'W': return flag_double(FLAG_HOST_GBPS, arg, &f->host_gbps) ? 0 : -1;
    default: return 1;
  }
}

int flag_text(const char **to, const char *arg) {
  *to = arg;
  return arg[0] ? 0 : -1;
}

int flag_backend_measured(const char **to, const char *arg) {
  const moe_backend_ops *bo = moe_backend_find(arg);
  *to = arg;
  return bo != NULL && !(bo->caps & MOE_BACKEND_CAP_MODELED) ? 0 : -1;
}

int flags_getopt(const char *cmd, int argc, char **argv, const char *shortopts,
                 const struct option *opts, int (*take)(void *ctx, int c, const char *arg),
                 void *ctx, void (*usage)(FILE *f)) {
  optind = 1;
  opterr = 0;
  int c, idx = -1;
  while ((idx = -1, c = getopt_long(argc, argv, shortopts, opts, &idx)) != -1) {
    if (c == 'h') {
      usage(stdout);
      return 0;
    }
    if (c == '?' || c == ':') {
      cli_error("%s: unknown or incomplete option '%s' (see --help)", cmd, argv[optind - 1]);
      return 2;
    }
    const int rc = take(ctx, c, optarg);
    if (rc == -1) {
      cli_bad_value(cmd, opts, idx, c, optarg);
      return 2;
    }
    if (rc != 0) return rc;
  }
  return -1;
}
