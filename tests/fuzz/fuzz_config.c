/* libFuzzer target: config.json parsing (jansson + our field checks) and
 * the layout of the model it describes.  Any input is accepted or rejected
 * with an error message; an accepted config must satisfy the engine's
 * invariants, and its layout is either refused with a message or has sizes
 * that add up without wrapping. */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "moe/config.h"
#include "moe/model.h"

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
    /* RoPE frequencies and the softmax scale are finite */
    if (moe_config_rot_dim(&c) <= 4096 && c.arch != MOE_ARCH_SWITCH) {
      static float f[2048];
      float af;
      moe_config_rope_freqs(&c, f, &af);
      for (int i = 0; i < moe_config_rot_dim(&c) / 2; i++)
        if (!isfinite(f[i])) abort();
      if (!isfinite(af) || !(moe_config_attn_scale(&c) > 0) || !isfinite(moe_config_attn_scale(&c)))
        abort();
    }
    /* the tensor table has layers x experts entries: keep fuzzing fast */
    if ((long)c.n_layers * (c.n_experts + 8) <= 4096) {
      const moe_dtype dts[] = {MOE_F32, MOE_F16};
      for (int d = 0; d < 2; d++) {
        size_t dense = 0, experts = 0;
        moe_error e3 = {0};
        if (moe_model_plan_layout(&c, dts[d], &dense, &experts, &e3) == MOE_OK) {
          /* the slabs hold at least the embedding and one expert each */
          if (dense < (size_t)c.vocab * (size_t)c.hidden * 2) abort();
          if (moe_config_n_moe_layers(&c) > 0 && experts < moe_config_expert_bytes(&c, 2)) abort();
        } else if (e3.msg[0] == '\0') {
          abort();
        }
      }
    }
  } else if (err.msg[0] == '\0') {
    abort(); /* every failure says why */
  }
  json_decref(root);
  return 0;
}
