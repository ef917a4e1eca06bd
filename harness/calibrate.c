/* moebench calibrate: this machine's backend measured as a hardware profile
 * (calibration.c), written as a profile file. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "flags.h"
#include "commands.h"
#include "moe/backend.h"
#include "moe/clock.h"
#include "moe/cost.h"
#include "moe/model.h"
#include "moe/policy.h"
#include "replay.h"
#include "calibration.h"
#include "runner.h"
#include "suite.h"


static int calibrate(const char *backend, int threads, double link, const char *name,
                     const char *out) {
  moe_hw_profile p;
  moe_error err = {0};
  if (calibrate_measure(backend, threads, link, &cal_default_shapes, false, &p, &err) != MOE_OK)
    return cli_fail(&err);
  /* a GPU's host: this machine's CPU, measured apart */
  if (!(p.host_memory_gbps > 0) &&
      calibrate_host(threads, &cal_default_shapes, false, &p, &err) != MOE_OK)
    return cli_fail(&err);
  const int n_ms = p.n_rates;
  snprintf(p.name, sizeof p.name, "%s", name);
  time_t now = time(NULL);
  char day[32], desc[sizeof p.description];
  strftime(day, sizeof day, "%Y-%m-%d", gmtime(&now));
  snprintf(desc, sizeof desc, "%.180s (%.12s)", p.description, day);
  memcpy(p.description, desc, sizeof desc);
  char source[160];
  snprintf(source, sizeof source, "measured by moebench calibrate (--backend %s --threads %d "
           "--link-gbps %g), %s", backend, threads, link, day);
  if (moe_hw_profile_save(&p, out, source, &err) != MOE_OK) return cli_fail(&err);
  printf("wrote %s (measured on %s): matmul f32 %.1f GFLOP/s at 1 row .. %.1f at 256, bf16 best "
         "%.1f; thin-product weight reads %.2f GB/s; other ops %.2f GFLOP/s, %.2f GB/s; op "
         "overhead %.2f us; link %.2f GB/s pinned, %.2f pageable, latency %.1f us; compute "
         "slowdown under a copy %.2fx; host: %.0f cores, %.2f GB/s, %.1f / %.1f GFLOP/s f32 / "
         "bf16\n",
         out, backend, p.rate_gflops[0], p.rate_gflops[n_ms - 1], p.tflops[MOE_BF16] * 1e3,
         p.memory_gbps, p.vector_gflops, p.vector_gbps, p.launch_us, p.h2d_pinned_gbps,
         p.h2d_pageable_gbps, p.h2d_latency_us, p.copy_slowdown, p.host_cores, p.host_memory_gbps,
         p.host_gflops_f32, p.host_gflops_bf16);
  return 0;
}

void calibrate_usage(FILE *f) {
  fprintf(f, "usage: moebench calibrate -o PROFILE.json [--backend cpu|cuda] [--link-gbps X] [--threads N] [--name NAME]\n\n"
          "Measures a backend of this machine (the cpu backend's emulated device, or\n"
          "the GPU with --backend cuda) and writes it as a hardware profile\n"
          "(workloads/hardware format, every figure's source 'measured'): f32 matmul\n"
          "rates by rows (1..256, over 256 MB of weights of Switch-Base's shapes, beyond\n"
          "the caches) and the bf16 rate (1 and 256 rows), the weight-read bandwidth of\n"
          "one-row products, the per-op overhead, the link from pinned and from pageable\n"
          "memory (64 MB copies, or about 0.1 s of transfer each under a cap below\n"
          "0.64 GB/s; latency from 4 KB ones), and how much a copy in flight slows\n"
          "compute (the emulated device shares DRAM; a GPU's DMA should not); and\n"
          "the host the experts live on (its cores, weight-read bandwidth and matmul\n"
          "rates: the host-compute policies' figures; with --backend cuda this\n"
          "machine's CPU is measured apart).\n"
          "replay and validate model runs on it.  Takes about 30 s on a CPU.\n\n"
          "  -o, --out FILE     the profile to write (temporary file + rename)\n"
          "  --backend NAME     cpu (default) or cuda; not a modeled backend (sim)\n"
          "  --link-gbps X      the link cap the runs to be modeled use (default none)\n"
          "  --threads N        math threads, as those runs (default 1)\n"
          "  --name NAME        the profile's name (default this-machine)\n"
          "  -h, --help         this text\n");
}

/* calibrate's options. */
typedef struct cal_opts {
  long threads;
  double link;
  const char *name, *out, *backend;
} cal_opts;

/* One flag into a cal_opts (flags_getopt). */
static int cal_take(void *ctx, int c, const char *arg) {
  cal_opts *o = ctx;
  switch (c) {
    case 't': return flag_long(FLAG_THREADS, arg, &o->threads) ? 0 : -1;
    case 'L': return flag_double(FLAG_LINK_GBPS, arg, &o->link) ? 0 : -1;
    case 'n':
      o->name = arg;
      return arg[0] != '\0' && strlen(arg) < 64 &&
                     strspn(arg, "abcdefghijklmnopqrstuvwxyz0123456789-_.") == strlen(arg)
                 ? 0
                 : -1;
    case 'o': return flag_text(&o->out, arg);
    case 'B': return flag_backend_measured(&o->backend, arg);
    default: return -1;
  }
}

int cmd_calibrate(int argc, char **argv) {
  static const struct option opts[] = {
      {"threads", required_argument, 0, 't'}, {"link-gbps", required_argument, 0, 'L'},
      {"name", required_argument, 0, 'n'},    {"out", required_argument, 0, 'o'},
      {"backend", required_argument, 0, 'B'}, {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  cal_opts o = {.threads = 1, .name = "this-machine", .backend = "cpu"};
  const int rc = flags_getopt("calibrate", argc, argv, "ho:", opts, cal_take, &o, calibrate_usage);
  if (rc >= 0) return rc;
  const char *out = o.out;
  if (out == NULL || optind < argc) {
    cli_error("calibrate: give -o PROFILE.json and no positional arguments (see --help)");
    return 2;
  }
  return calibrate(o.backend, (int)o.threads, o.link, o.name, out);
}

