/* libFuzzer target: routing logs (run --record-routing) as the sim's
 * routing source trace:FILE reads them.  Any input opens the sim or is
 * refused with a message; an accepted log routes validly, or is refused
 * with a message when it names an expert outside the model routed. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moe/device.h"
#include "moe/backend.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static char path[64] = "";
  if (path[0] == '\0') snprintf(path, sizeof path, "/tmp/fuzz-routing-%ld.log", (long)getpid());
  FILE *f = fopen(path, "wb");
  if (f == NULL) return 0;
  fwrite(data, 1, size, f);
  fclose(f);
  char spec[80];
  snprintf(spec, sizeof spec, "trace:%s", path);
  moe_backend_options o = {.hardware = MOE_SOURCE_DIR "/workloads/hardware/h200.json", .routing = spec};
  moe_device dev;
  moe_error err = {0};
  if (moe_device_open(&dev, "sim", &o, &err) == MOE_OK) {
    /* route a few rows of every layer and step the log may name; the one
     * refusal allowed is a logged expert outside this 64-expert model */
    int32_t idx[4 * 8];
    float w[4 * 8], logits[4 * 64] = {0};
    bool refused = false;
    for (unsigned long long step = 0; step < 3 && !refused; step++)
      for (int layer = 0; layer < 3 && !refused; layer++) {
        dev.ops->set_context(dev.be, layer, -1, step);
        moe_error e2 = {0};
        moe_status st = moe_backend_router_topk(dev.ops, dev.be, idx, w, logits, 4, 64, 8, true, NULL, &e2);
        if (st != MOE_OK) {
          if (st != MOE_ERR_INVALID || strstr(e2.msg, "outside this model") == NULL) abort();
          refused = true;
          continue;
        }
        for (int i = 0; i < 4 * 8; i++)
          if (idx[i] < 0 || idx[i] >= 64) abort();
      }
    moe_device_close(&dev);
  } else if (err.msg[0] == '\0') {
    abort();
  }
  return 0;
}
