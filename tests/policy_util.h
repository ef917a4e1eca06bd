/* Shared by the policy suites (test_policy.c, test_offload.c): the small
 * synthetic model each test gets from the fixture, and runs of it on a
 * fresh cpu device. */
#ifndef MOE_POLICY_UTIL_H
#define MOE_POLICY_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "moe/cost.h"
#include "moe/device.h"
#include "moe/expert_store.h"
#include "moe/model.h"
#include "moe/policy.h"

/* 4 layers, MoE in 0, 1, 3; 8 experts, top-2 (policy_util.c). */
moe_config cfg(void);

/* The fixture: g_model (f32), g_model_pg (the same with pre-gates) and
 * g_dev (cpu). */
extern moe_model *g_model, *g_model_pg;
extern moe_device g_dev;
void setup(void);
void teardown(void);

enum { B = 2, P = 7, N = 9 };

typedef struct run_out {
  float logits[B * P * 40];
  int32_t tokens[B * N];
  moe_run_stats stats;
  size_t peak, planned;
  int slots;
} run_out;

/* The link cap run_opts opens its device with (GB/s; 0, the default:
 * uncapped). */
extern double g_link_gbps;

/* Generates on a fresh device so peaks are the run's own: opt's policy,
 * routing, stacks, lookahead and cache with this file's batch and lengths;
 * budget 0 is the device's capacity, seed that of the random prompt ids. */
moe_status run_opts(moe_model *m, const moe_engine_options *opt, size_t budget, uint64_t seed,
                    run_out *out, moe_error *err);
/* run_opts with a policy and a routing, seed 5. */
moe_status run(moe_model *m, const moe_policy *pol, moe_routing routing, size_t budget,
               run_out *out, moe_error *err);

/* A synthetic Switch (encoder-decoder) model: 4 encoder layers (MoE in 1
 * and 3) and 3 decoder layers (all MoE), 8 experts, top-1, capacity 4 so
 * the 7-token inputs overflow it now and then; NULL with err on failure. */
moe_model *switch_model(moe_error *err);

/* A hardware profile for fiddler's cost figures: a link of link_gbps and
 * a host whose memory reads host_gbps (its FLOP rate ample). */
moe_hw_profile host_profile(double link_gbps, double host_gbps);

#endif
