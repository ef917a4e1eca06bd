/* libFuzzer target: config.json parsing (jansson + our field checks).  Any
 * input is accepted or rejected with an error message; an accepted config
 * must satisfy the engine's invariants. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>

#include "moe/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  json_error_t jerr;
  json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
  if (root == NULL) return 0;
  moe_config c;
  moe_error err = {0};
  moe_status st = moe_config_from_json(&c, root, "fuzz", &err);
  if (st == MOE_OK) {
    moe_error err2 = {0};
    if (moe_config_validate(&c, "fuzz", &err2) != MOE_OK) abort();
    if (c.n_layers > MOE_MAX_LAYERS || c.n_heads % c.n_kv_heads != 0) abort();
  } else if (err.msg[0] == '\0') {
    abort(); /* every failure says why */
  }
  json_decref(root);
  return 0;
}
