/* Publishing an output file (moe/publish.h). */
#include "moe/publish.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *label(const char *what) { return what ? what : "the output"; }

moe_status moe_publish_check_path(const char *path, size_t extra, moe_error *err) {
  if (path == NULL || path[0] == '\0')
    return MOE_FAIL(err, MOE_ERR_INVALID, "an output path is empty");
  const size_t n = strlen(path);
  if (extra >= MOE_PUBLISH_PATH_MAX || n > MOE_PUBLISH_PATH_MAX - extra)
    return MOE_FAIL(err, MOE_ERR_INVALID, "output path of %zu bytes refused (at most %zu): %.60s...",
                    n, (size_t)MOE_PUBLISH_PATH_MAX - (extra < MOE_PUBLISH_PATH_MAX ? extra : 0),
                    path);
  return MOE_OK;
}

/* A character device, or a FIFO that has a reader, opened for writing as
 * it is (never replaced).  The descriptor is checked again after the open:
 * the path may have changed since it was looked at. */
static moe_status open_direct(moe_publish *p, const char *what, moe_error *err) {
  const int fd = open(p->path, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0)
    return MOE_FAIL(err, MOE_ERR_IO, "%s: cannot write %s: %s", p->path, label(what),
                    errno == ENXIO ? "a FIFO with no reader (it would block)" : strerror(errno));
  struct stat st;
  const int flags = fcntl(fd, F_GETFL);
  if (fstat(fd, &st) != 0 || !(S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode)) || flags < 0 ||
      fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    close(fd);
    return MOE_FAIL(err, MOE_ERR_IO, "%s: changed while it was opened; refusing to write %s",
                    p->path, label(what));
  }
  p->f = fdopen(fd, "wb");
  if (p->f == NULL) {
    close(fd);
    return MOE_FAIL(err, MOE_ERR_IO, "%s: cannot write %s: %s", p->path, label(what), strerror(errno));
  }
  return MOE_OK;
}

/* A new temporary beside the target: PATH.tmp.XXXXXXXX with random
 * letters, created O_EXCL | O_NOFOLLOW (a planted link fails the create;
 * a name already taken is drawn again). */
static moe_status open_temp(moe_publish *p, const char *what, moe_error *err) {
  static const char abc[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  const size_t n = strlen(p->path);
  p->tmp = malloc(n + 16);
  if (p->tmp == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "out of host memory");
  int fd = -1, e = EEXIST;
  for (int tries = 0; tries < 64 && fd < 0 && e == EEXIST; tries++) {
    unsigned char r[8];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
      const uint64_t x = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)p ^
                         (uint64_t)tries * 0xbf58476d1ce4e5b9ull;
      memcpy(r, &x, sizeof r);
    }
    memcpy(p->tmp, p->path, n);
    memcpy(p->tmp + n, ".tmp.", 5);
    for (int i = 0; i < 8; i++) p->tmp[n + 5 + i] = abc[r[i] % (sizeof abc - 1)];
    p->tmp[n + 13] = '\0';
    fd = open(p->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    e = fd < 0 ? errno : 0;
  }
  if (fd < 0) {
    const moe_status st = MOE_FAIL(err, MOE_ERR_IO, "%s: cannot create %s beside it: %s", p->path,
                                   label(what), strerror(e));
    free(p->tmp);
    p->tmp = NULL;
    return st;
  }
  p->f = fdopen(fd, "wb");
  if (p->f == NULL) {
    close(fd);
    unlink(p->tmp);
    free(p->tmp);
    p->tmp = NULL;
    return MOE_FAIL(err, MOE_ERR_IO, "%s: cannot write %s: %s", p->path, label(what), strerror(errno));
  }
  return MOE_OK;
}

moe_status moe_publish_open(moe_publish *p, const char *path, const char *what, moe_error *err) {
  memset(p, 0, sizeof *p);
  moe_status st = moe_publish_check_path(path, 16, err);
  if (st != MOE_OK) return st;
  p->path = strdup(path);
  if (p->path == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "out of host memory");
  struct stat ls, fs;
  bool direct = false;
  if (lstat(path, &ls) == 0) {
    /* a link is replaced unless it leads to a device or a FIFO */
    const bool follow = S_ISLNK(ls.st_mode) && stat(path, &fs) == 0;
    const mode_t m = follow ? fs.st_mode : ls.st_mode;
    if (S_ISCHR(m) || S_ISFIFO(m)) {
      direct = true;
    } else if (!S_ISREG(m) && !S_ISLNK(m)) {
      st = MOE_FAIL(err, MOE_ERR_IO, "%s: exists and is not a regular file (%s); refusing to "
                    "replace it with %s", path, S_ISDIR(m) ? "a directory" : "a special file",
                    label(what));
    }
  } else if (errno != ENOENT) {
    st = MOE_FAIL(err, MOE_ERR_IO, "%s: %s", path, strerror(errno));
  }
  if (st == MOE_OK) st = direct ? open_direct(p, what, err) : open_temp(p, what, err);
  if (st != MOE_OK) {
    free(p->path);
    p->path = NULL;
  }
  return st;
}

void moe_publish_fail(moe_publish *p) { p->failed = true; }

static void publish_free(moe_publish *p) {
  free(p->path);
  free(p->tmp);
  p->path = p->tmp = NULL;
  p->f = NULL;
}

moe_status moe_publish_commit(moe_publish *p, moe_error *err) {
  if (p->f == NULL) {
    publish_free(p);
    return MOE_FAIL(err, MOE_ERR_INTERNAL, "publish: nothing open");
  }
  int e = 0;
  bool bad = p->failed;
  if (fflush(p->f) != 0 || ferror(p->f)) bad = true, e = errno;
  if (!bad && p->tmp && fsync(fileno(p->f)) != 0) bad = true, e = errno;
  if (fclose(p->f) != 0 && !bad) bad = true, e = errno;
  p->f = NULL;
  moe_status st = MOE_OK;
  if (bad)
    st = MOE_FAIL(err, MOE_ERR_IO, "%s: writing failed%s%s", p->path, e ? ": " : "",
                  e ? strerror(e) : "");
  else if (p->tmp && rename(p->tmp, p->path) != 0)
    st = MOE_FAIL(err, MOE_ERR_IO, "%s: rename into place failed: %s", p->path, strerror(errno));
  if (st != MOE_OK && p->tmp) unlink(p->tmp);
  publish_free(p);
  return st;
}

void moe_publish_abort(moe_publish *p) {
  if (p->f) fclose(p->f);
  if (p->tmp) unlink(p->tmp);
  publish_free(p);
}

moe_status moe_publish_bytes(const char *path, const void *data, size_t n, const char *what,
                             moe_error *err) {
  moe_publish p;
  moe_status st = moe_publish_open(&p, path, what, err);
  if (st != MOE_OK) return st;
  if (n > 0 && fwrite(data, 1, n, p.f) != n) moe_publish_fail(&p);
  return moe_publish_commit(&p, err);
}
