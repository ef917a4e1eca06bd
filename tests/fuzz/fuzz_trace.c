/* libFuzzer target: op traces (generate/run --trace) as moebench replay and
 * validate read them back, both readers: the whole-document one and the
 * line-streaming one for our own format (an input starting with our
 * header goes through a file).  Any input is replayed or refused with a
 * message; a replay's figures are finite and non-negative. */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "replay.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(moe_status st, const replay_result *r, const moe_error *err) {
  if (st == MOE_OK) {
    if (r->n_forwards < 1 || !isfinite(r->modeled_s) || r->modeled_s < 0 || !(r->stall_s >= 0) ||
        !(r->hidden_share >= 0 && r->hidden_share <= 1))
      abort();
    for (int i = 0; i < r->n_forwards; i++)
      if (!isfinite(r->fwd_modeled[i]) || r->fwd_modeled[i] < 0) abort();
  } else if (err->msg[0] == '\0') {
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char header[] = "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [";
  if (size >= sizeof header - 1 && memcmp(data, header, sizeof header - 1) == 0) {
    static char path[64] = "";
    if (path[0] == '\0') snprintf(path, sizeof path, "/tmp/fuzz-trace-%ld.json", (long)getpid());
    FILE *f = fopen(path, "wb");
    if (f) {
      fwrite(data, 1, size, f);
      fclose(f);
      moe_hw_profile q = {.memory_bytes = 1e10, .memory_gbps = 1000, .tflops = {100, 400, 400},
                          .h2d_pinned_gbps = 25, .h2d_pageable_gbps = 10, .h2d_latency_us = 10,
                          .launch_us = 5, .transfer_latency_us = 10, .copy_slowdown = 1.5};
      replay_result r;
      moe_error err = {0};
      moe_status st = replay_trace(path, &q, &r, &err);
      check(st, &r, &err);
      if (st == MOE_OK) replay_result_free(&r);
    }
  }
  json_error_t jerr;
  json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
  if (root == NULL) return 0;
  moe_hw_profile p = {.memory_bytes = 1e10, .memory_gbps = 1000, .tflops = {100, 400, 400},
                      .h2d_pinned_gbps = 25, .h2d_pageable_gbps = 10, .h2d_latency_us = 10,
                      .launch_us = 5, .transfer_latency_us = 10, .copy_slowdown = 1.5};
  replay_result r;
  moe_error err = {0};
  if (replay_trace_json(root, "fuzz", &p, &r, &err) == MOE_OK) {
    if (r.n_forwards < 1 || !isfinite(r.modeled_s) || r.modeled_s < 0 || !(r.stall_s >= 0) ||
        !(r.hidden_share >= 0 && r.hidden_share <= 1))
      abort();
    for (int i = 0; i < r.n_forwards; i++)
      if (!isfinite(r.fwd_modeled[i]) || r.fwd_modeled[i] < 0) abort();
    replay_result_free(&r);
  } else if (err.msg[0] == '\0') {
    abort();
  }
  json_decref(root);
  return 0;
}
