/* libFuzzer target: the safetensors header parser and validator.  Whatever
 * the bytes, the reader must accept or reject with MOE_ERR_FORMAT, never
 * read out of bounds, and hand out only tensors inside the image. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "moe/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  moe_st_file *f = NULL;
  moe_error err = {0};
  moe_status st = moe_st_open_memory(&f, data, size, "fuzz", &err);
  if (st == MOE_OK) {
    for (size_t i = 0; i < moe_st_count(f); i++) {
      const moe_st_tensor *t = moe_st_at(f, i);
      const uint8_t *p = t->data;
      if (t->nbytes > 0 && (p < data || p + t->nbytes > data + size)) abort();
      if (moe_st_find(f, t->name) != t) abort();
      volatile uint8_t sink = 0;
      if (t->nbytes > 0) sink ^= p[0] ^ p[t->nbytes - 1];
      (void)sink;
    }
    moe_st_close(f);
  } else if (st != MOE_ERR_FORMAT || f != NULL) {
    abort();
  }
  return 0;
}
