/* The registry of model families: every family the engine knows, found
 * by model_type (config.json) or arch. */
#include <stdio.h>
#include <string.h>

#include "family.h"

extern const moe_family moe_family_mixtral, moe_family_qwen2_moe, moe_family_qwen3_moe,
    moe_family_olmoe, moe_family_deepseek_v2, moe_family_deepseek_v3, moe_family_granitemoe,
    moe_family_switch;

/* The registry: every family the engine knows, in the order messages list them. */
static const moe_family *const families[] = {
    &moe_family_mixtral,     &moe_family_qwen2_moe,     &moe_family_qwen3_moe,
    &moe_family_olmoe,       &moe_family_deepseek_v2,   &moe_family_deepseek_v3,
    &moe_family_granitemoe,  &moe_family_switch,        NULL,
};

const moe_family *moe_family_by_type(const char *model_type) {
  for (const moe_family *const *f = families; *f; f++)
    for (const char *const *t = (*f)->model_types; *t; t++)
      if (strcmp(*t, model_type) == 0) return *f;
  return NULL;
}

const moe_family *moe_family_by_arch(moe_arch arch) {
  for (const moe_family *const *f = families; *f; f++)
    if ((*f)->arch == arch) return *f;
  return NULL;
}

void moe_family_type_list(char *buf, size_t n) {
  size_t total = 0, at = 0, len = 0;
  for (const moe_family *const *f = families; *f; f++)
    for (const char *const *t = (*f)->model_types; *t; t++) total++;
  buf[0] = '\0';
  for (const moe_family *const *f = families; *f; f++)
    for (const char *const *t = (*f)->model_types; *t; t++, at++) {
      const char *sep = at == 0 ? "" : at + 1 == total ? " or " : ", ";
      int w = snprintf(buf + len, n - len, "%s%s", sep, *t);
      if (w < 0 || (size_t)w >= n - len) return;
      len += (size_t)w;
    }
}

unsigned moe_family_required_ops(const moe_family *fam, const moe_config *cfg) {
  unsigned ops = fam->required_ops;
  if (cfg->rope_kind != MOE_ROPE_DEFAULT) ops |= MOE_OP_BIT(MOE_OP_ROPE_EX);
  if (cfg->router_ex) ops |= MOE_OP_BIT(MOE_OP_ROUTER_TOPK_EX);
  return ops;
}

