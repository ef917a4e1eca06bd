/* Publishing an output file: the one way every command and the engine
 * write a file a user named.
 *
 * A regular file (or a path that does not exist yet) is written whole or
 * not at all: the bytes go to a new temporary file in the target's own
 * directory, created with O_CREAT | O_EXCL | O_NOFOLLOW under a name no
 * one can predict (so a symbolic link planted in its place is refused,
 * never followed), and renamed over the target once written and flushed;
 * any failure removes the temporary and leaves the target as it was.  A
 * target that is a symbolic link is replaced, not written through, unless
 * it leads to a character device or a FIFO.
 *
 * A character device (/dev/null, a terminal) or a FIFO with a reader is
 * written directly: such a target is never removed or replaced.  A FIFO
 * without a reader is refused (opening it would block), and so is any
 * other kind of file (a directory, a socket, a block device).
 *
 * A path longer than MOE_PUBLISH_PATH_MAX is refused, never cut. */
#ifndef MOE_PUBLISH_H
#define MOE_PUBLISH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "moe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_PUBLISH_PATH_MAX 4000

typedef struct moe_publish {
  char *path;  /* the target */
  char *tmp;   /* the temporary beside it; NULL when writing directly */
  FILE *f;     /* where to write */
  bool failed; /* a write the caller saw fail (moe_publish_fail) */
} moe_publish;

/* Opens path for writing (see above).  what names the output in errors
 * ("the trace", "the CSV"); may be NULL. */
moe_status moe_publish_open(moe_publish *p, const char *path, const char *what, moe_error *err);

/* Marks the output bad: commit will fail and publish nothing. */
void moe_publish_fail(moe_publish *p);

/* Flushes, closes and renames the temporary over the target (or closes a
 * direct target).  MOE_ERR_IO naming the file when any write, the close
 * or the rename failed; the temporary is removed then.  Frees p's
 * strings either way. */
moe_status moe_publish_commit(moe_publish *p, moe_error *err);

/* Abandons the output: the temporary is removed, the target untouched. */
void moe_publish_abort(moe_publish *p);

/* The whole file in one call. */
moe_status moe_publish_bytes(const char *path, const void *data, size_t n, const char *what,
                             moe_error *err);

/* Checks a path the caller will build output names from (PREFIX.csv ...):
 * not empty, no longer than MOE_PUBLISH_PATH_MAX - extra.  MOE_ERR_INVALID
 * naming it otherwise. */
moe_status moe_publish_check_path(const char *path, size_t extra, moe_error *err);

#ifdef __cplusplus
}
#endif

#endif
