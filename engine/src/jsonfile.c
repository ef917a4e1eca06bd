/* Input files through a non-blocking, regular-file-only open; JSON on top. */
#include "moe/jsonfile.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

FILE *moe_fopen_regular(const char *path, moe_error *err) {
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    MOE_FAIL(err, MOE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    return NULL;
  }
  struct stat sb;
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    close(fd);
    MOE_FAIL(err, MOE_ERR_IO, "%s: not a regular file", path);
    return NULL;
  }
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  FILE *f = fdopen(fd, "rb");
  if (f == NULL) {
    close(fd);
    MOE_FAIL(err, MOE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  }
  return f;
}

void *moe_json_load_file(const char *path, moe_error *err) {
  FILE *f = moe_fopen_regular(path, err);
  if (f == NULL) return NULL;
  json_error_t je;
  json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &je);
  fclose(f);
  if (root == NULL)
    MOE_FAIL(err, MOE_ERR_FORMAT, "%s:%d:%d: malformed JSON: %s", path, je.line, je.column, je.text);
  return root;
}
