/* Status codes and the error record every engine call fills on failure.
 *
 * Library code never exits: it returns a moe_status and, on failure, records
 * the first failure (code, file:line, message) in a caller-owned moe_error.
 * Only a tool's main() decides to exit. */
#ifndef MOE_STATUS_H
#define MOE_STATUS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moe_status {
  MOE_OK = 0,
  MOE_ERR_IO = -1,          /* a file could not be opened, read or written */
  MOE_ERR_FORMAT = -2,      /* a file's contents are malformed or lie */
  MOE_ERR_OOM = -3,         /* host allocation failed or device budget exceeded */
  MOE_ERR_INVALID = -4,     /* bad argument or configuration */
  MOE_ERR_UNSUPPORTED = -5, /* valid, but not implemented by this build */
  MOE_ERR_NO_DEVICE = -6,   /* the backend's device is absent */
  MOE_ERR_DEVICE = -7,      /* a device runtime call failed */
  MOE_ERR_INTERNAL = -8     /* a broken invariant: a bug in this project */
} moe_status;

typedef struct moe_error {
  moe_status status; /* MOE_OK until the first failure is recorded */
  const char *file;  /* source file of the first failure */
  int line;
  char msg[512];
} moe_error;

/* "MOE_ERR_FORMAT" etc.; never NULL. */
const char *moe_status_name(moe_status st);

/* Records a failure in err (when err is non-NULL and holds no failure yet)
 * and returns st, so `return MOE_FAIL(err, MOE_ERR_IO, "...")` reads well.
 * Later failures never overwrite the first: it is the cause. */
moe_status moe_error_set(moe_error *err, moe_status st, const char *file, int line,
                         const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Clears err back to MOE_OK. */
void moe_error_clear(moe_error *err);

/* One line for humans: "message (engine/src/x.c:12)". */
const char *moe_error_text(const moe_error *err, char *buf, size_t cap);

#define MOE_FAIL(err, st, ...) moe_error_set((err), (st), __FILE__, __LINE__, __VA_ARGS__)

/* The checking macros below expect a local `moe_status st` and a `cleanup:`
 * label; they jump there on failure.  MOE_TRY_GEN is the generator the
 * device-specific checks (CUDA_TRY, CUBLAS_TRY) are built from. */
#define MOE_TRY_GEN(ok_expr, fail_stmt) \
  do {                                  \
    if (!(ok_expr)) {                   \
      fail_stmt;                        \
      goto cleanup;                     \
    }                                   \
  } while (0)

/* Propagate a moe_status returned by a call that already filled err. */
#define MOE_TRY(expr) MOE_TRY_GEN((st = (expr)) == MOE_OK, (void)0)

/* Fail with code and message when cond is false. */
#define MOE_CHECK(cond, err, code, ...) \
  MOE_TRY_GEN((cond), st = MOE_FAIL((err), (code), __VA_ARGS__))

/* Fail with MOE_ERR_OOM when a host allocation returned NULL. */
#define MOE_CHECK_ALLOC(ptr, err, bytes) \
  MOE_CHECK((ptr) != NULL, (err), MOE_ERR_OOM, "host allocation of %zu bytes failed", (size_t)(bytes))

#ifdef __cplusplus
}
#endif

#endif
