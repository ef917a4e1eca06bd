/* moebench replay: an op trace replayed on a hardware profile (replay.c):
 * modeled figures beside the trace's own. */
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

static double median_of(const double *v, int n) {
  double *c = malloc((size_t)(n > 0 ? n : 1) * sizeof *c);
  if (c == NULL || n <= 0) return free(c), NAN;
  memcpy(c, v, (size_t)n * sizeof *c);
  double m = runner_median(c, n);
  free(c);
  return m;
}

void replay_usage(FILE *f) {
  fprintf(f, "usage: moebench replay TRACE.json --hardware NAME\n\n"
          "Replays an op trace (generate/run --trace) on a hardware profile: every\n"
          "operation costed by the cost model (roofline + overheads, engine/include/\n"
          "moe/cost.h), copies and compute on two streams ordered by the trace's\n"
          "events.  Prints the modeled figures beside the trace's own times.\n\n"
          "  --hardware NAME   a profile ('moebench list hardware') or a file\n"
          "  -h, --help        this text\n");
}

/* --hardware into a const char * (flags_getopt). */
static int replay_take(void *ctx, int c, const char *arg) {
  return c == 'H' ? flag_text(ctx, arg) : -1;
}

int cmd_replay(int argc, char **argv) {
  static const struct option opts[] = {{"hardware", required_argument, 0, 'H'},
                                       {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
  const char *hw = NULL;
  const int prc = flags_getopt("replay", argc, argv, "h", opts, replay_take, &hw, replay_usage);
  if (prc >= 0) return prc;
  if (hw == NULL || optind != argc - 1) {
    cli_error("replay: give one TRACE.json and --hardware NAME (see --help)");
    return 2;
  }
  char path[1200];
  cli_hw_path(hw, path, sizeof path);
  moe_hw_profile p;
  moe_error err = {0};
  if (moe_hw_profile_load(&p, path, &err) != MOE_OK) return cli_fail(&err);
  replay_result r;
  if (replay_trace(argv[optind], &p, &r, &err) != MOE_OK) return cli_fail(&err);
  const char *own = r.trace_modeled ? "modeled by the run" : "measured";
  printf("# %s replayed on %s (modeled)\n\n", argv[optind], p.name);
  printf("| figure | modeled on %s | trace (%s) |\n|---|---|---|\n", p.name, own);
  printf("| forward passes | %d | %d |\n", r.n_forwards, r.n_forwards);
  printf("| total s | %.6f | %.6f |\n", r.modeled_s, r.measured_s);
  printf("| first forward s | %.6f | %.6f |\n", r.fwd_modeled[0], r.fwd_measured[0]);
  if (r.n_forwards > 1)
    printf("| later forwards, median ms | %.4f | %.4f |\n",
           median_of(r.fwd_modeled + 1, r.n_forwards - 1) * 1e3,
           median_of(r.fwd_measured + 1, r.n_forwards - 1) * 1e3);
  printf("| compute stall on copies s | %.6f | - |\n", r.stall_s);
  printf("| copy stream busy s | %.6f | - |\n", r.copy_s);
  printf("| hidden copy share | %.3f | - |\n", r.hidden_share);
  printf("| ops, copies | %llu, %llu | |\n", r.ops, r.copies);
  if (r.urgent + r.cancelled > 0)
    printf("\nThe trace's backend let %llu copies overtake and cut %llu short; the model runs "
           "every copy whole, in issue order.\n", r.urgent, r.cancelled);
  printf("\nBy op on the compute track, from the first forward (waits include the stall):\n\n"
         "| op | count | trace s (%s) | modeled s | modeled / trace |\n|---|---|---|---|---|\n", own);
  for (int k = 0; k < r.n_kinds; k++)
    printf("| %s | %llu | %.6f | %.6f | %.2f |\n", r.kinds[k].name, r.kinds[k].count,
           r.kinds[k].trace_s, r.kinds[k].modeled_s,
           r.kinds[k].trace_s > 0 ? r.kinds[k].modeled_s / r.kinds[k].trace_s : NAN);
  replay_result_free(&r);
  return 0;
}

