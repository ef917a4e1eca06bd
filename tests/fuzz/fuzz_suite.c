/* libFuzzer target: suite and workload JSON parsing.  Any input is accepted
 * or rejected with a message; an accepted suite respects its bounds. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>

#include "suite.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  json_error_t je;
  json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
  if (root == NULL) return 0;
  static suite s;
  moe_error err = {0};
  moe_status st = suite_from_json(&s, root, "fuzz", &err);
  if (st == MOE_OK) {
    if (s.n_models < 1 || s.n_models > SUITE_MAX || s.n_workloads < 1 ||
        s.n_workloads > SUITE_MAX || s.n_policies < 1 || s.n_budgets < 1 || s.repetitions < 1)
      abort();
    for (int i = 0; i < s.n_workloads; i++)
      if (s.workloads[i].n_batches < 1 || s.workloads[i].gen_len < 2) abort();
  } else if (err.msg[0] == '\0') {
    abort();
  }
  json_decref(root);
  return 0;
}
