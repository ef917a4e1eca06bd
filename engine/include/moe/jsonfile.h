/* Reading a JSON file safely: only a regular file is opened (a FIFO or a
 * device would block or never end), duplicate keys are refused, and every
 * failure is one line naming the file. */
#ifndef MOE_JSONFILE_H
#define MOE_JSONFILE_H

#include <stdio.h>

#include "moe/status.h"

/* Opens path for reading ("rb"), refusing anything but a regular file
 * without blocking on it (a FIFO nobody writes, a device): NULL with err
 * set, MOE_ERR_IO "PATH: cannot open: REASON" or "PATH: not a regular
 * file". */
FILE *moe_fopen_regular(const char *path, moe_error *err);

/* Returns the parsed document (a json_t *, caller decrefs), or NULL with
 * err set: MOE_ERR_IO "PATH: cannot open: REASON" or "PATH: not a regular
 * file", MOE_ERR_FORMAT "PATH:LINE:COL: malformed JSON: REASON". */
void *moe_json_load_file(const char *path, moe_error *err);

#endif
