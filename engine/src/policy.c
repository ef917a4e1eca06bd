/* The registry of built-in policies, table validation and plugin loading. */
#include "moe/policy.h"

#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

extern const moe_policy moe_policy_gpu_only;
extern const moe_policy moe_policy_ondemand;
extern const moe_policy moe_policy_prefetch_all;
extern const moe_policy moe_policy_pregated;
extern const moe_policy moe_policy_pregated_spec;
extern const moe_policy moe_policy_pregated_hybrid;
extern const moe_policy moe_policy_host_compute;
extern const moe_policy moe_policy_fiddler;

/* The registry: each built-in with the roles it plays (moe_policy_role);
 * the paper's four are listed in the headline's order. */
static const struct {
  const moe_policy *policy;
  unsigned roles;
} k_registry[] = {
    {&moe_policy_gpu_only, MOE_POLICY_ROLE_REFERENCE | MOE_POLICY_ROLE_PAPER},
    {&moe_policy_ondemand, MOE_POLICY_ROLE_ONDEMAND | MOE_POLICY_ROLE_PAPER},
    {&moe_policy_prefetch_all, MOE_POLICY_ROLE_PREFETCH_ALL | MOE_POLICY_ROLE_PAPER},
    {&moe_policy_pregated, MOE_POLICY_ROLE_PREGATED | MOE_POLICY_ROLE_PAPER},
    {&moe_policy_pregated_spec, 0},
    {&moe_policy_host_compute, MOE_POLICY_ROLE_HOST},
    {&moe_policy_fiddler, MOE_POLICY_ROLE_HOST},
    {&moe_policy_pregated_hybrid, MOE_POLICY_ROLE_HOST},
};

static const moe_policy *builtin(size_t i) { return k_registry[i].policy; }

size_t moe_policy_count(void) { return sizeof k_registry / sizeof k_registry[0]; }

const moe_policy *moe_policy_at(size_t i) { return i < moe_policy_count() ? builtin(i) : NULL; }

const moe_policy *moe_policy_with_role(moe_policy_role role) {
  for (size_t i = 0; i < moe_policy_count(); i++)
    if (k_registry[i].roles & (unsigned)role) return builtin(i);
  return NULL;
}

const moe_policy *moe_policy_reference(void) {
  return moe_policy_with_role(MOE_POLICY_ROLE_REFERENCE);
}

int moe_policy_has_role(const moe_policy *p, moe_policy_role role) {
  for (size_t i = 0; p && i < moe_policy_count(); i++)
    if (builtin(i) == p || strcmp(builtin(i)->name, p->name) == 0)
      return (k_registry[i].roles & (unsigned)role) != 0;
  return 0;
}

size_t moe_policy_with_roles(moe_policy_role role, const moe_policy **out, size_t cap) {
  size_t n = 0;
  for (size_t i = 0; i < moe_policy_count(); i++)
    if (k_registry[i].roles & (unsigned)role) {
      if (n < cap) out[n] = builtin(i);
      n++;
    }
  return n;
}

size_t moe_policy_paper_baselines(const moe_policy **out, size_t cap) {
  return moe_policy_with_roles(MOE_POLICY_ROLE_PAPER, out, cap);
}

const moe_policy *moe_policy_find(const char *name) {
  for (size_t i = 0; i < moe_policy_count(); i++)
    if (strcmp(builtin(i)->name, name) == 0) return builtin(i);
  return NULL;
}

moe_status moe_policy_validate(const moe_policy *p, moe_error *err) {
  if (p == NULL) return MOE_FAIL(err, MOE_ERR_INVALID, "policy table is NULL");
  const char *name = p->name ? p->name : "?";
  if (p->abi_version != MOE_POLICY_ABI)
    return MOE_FAIL(err, MOE_ERR_UNSUPPORTED,
                    "policy '%s' was built for policy ABI version %u; this engine speaks version %u",
                    name, p->abi_version, MOE_POLICY_ABI);
  if (p->struct_size < MOE_POLICY_SIZE_1_0)
    return MOE_FAIL(err, MOE_ERR_UNSUPPORTED,
                    "policy '%s' table is %u bytes, smaller than any version-%u table (%zu)", name,
                    p->struct_size, MOE_POLICY_ABI, (size_t)MOE_POLICY_SIZE_1_0);
  if (p->name == NULL || p->name[0] == '\0')
    return MOE_FAIL(err, MOE_ERR_INVALID, "policy table has no name");
  for (const char *c = p->name; *c; c++)
    if (!(islower((unsigned char)*c) || isdigit((unsigned char)*c) || *c == '-'))
      return MOE_FAIL(err, MOE_ERR_INVALID, "policy name '%s' may only use a-z, 0-9 and '-'", name);
  if (p->summary == NULL)
    return MOE_FAIL(err, MOE_ERR_INVALID, "policy '%s' has no summary", name);
  if (p->plan == NULL)
    return MOE_FAIL(err, MOE_ERR_INVALID, "policy '%s' lacks the required method 'plan'", name);
  if (p->create != NULL && p->destroy == NULL)
    return MOE_FAIL(err, MOE_ERR_INVALID, "policy '%s' has 'create' but no 'destroy'", name);
  if (p->struct_size >= MOE_POLICY_SIZE_1_1 &&
      p->default_routing > MOE_POLICY_ROUTING_PREGATED)
    return MOE_FAIL(err, MOE_ERR_INVALID, "policy '%s' has an unknown default_routing %u", name,
                    p->default_routing);
  if (p->struct_size >= MOE_POLICY_SIZE_1_2 &&
      p->predict_first_block > 1)
    return MOE_FAIL(err, MOE_ERR_INVALID, "policy '%s': predict_first_block must be 0 or 1", name);
  return MOE_OK;
}

void moe_policy_normalize(const moe_policy *p, moe_policy *out) {
  size_t n = p->struct_size < sizeof *out ? p->struct_size : sizeof *out;
  memset(out, 0, sizeof *out);
  memcpy(out, p, n);
  out->struct_size = sizeof *out;
}

moe_status moe_policy_registry_check(moe_error *err) {
  for (size_t i = 0; i < moe_policy_count(); i++) {
    moe_status st = moe_policy_validate(builtin(i), err);
    if (st != MOE_OK) return st;
    for (size_t j = 0; j < i; j++)
      if (strcmp(builtin(i)->name, builtin(j)->name) == 0)
        return MOE_FAIL(err, MOE_ERR_INTERNAL, "two built-in policies are named '%s'",
                        builtin(i)->name);
  }
  return MOE_OK;
}

moe_status moe_policy_plugin_load(moe_policy_library *pl, const char *path, moe_error *err) {
  memset(pl, 0, sizeof *pl);
  /* Only a regular file (or a link to one) is loaded: dlopen() opens a FIFO
   * and waits for a writer, forever, and a device or a directory is no
   * library either.  A name without '/' is dlopen's to search for. */
  struct stat sb;
  /* a name without '/' that exists here is this file, not a library for
   * dlopen to search the system for */
  char here[4096];
  if (strchr(path, '/') == NULL && stat(path, &sb) == 0 && strlen(path) + 3 < sizeof here) {
    snprintf(here, sizeof here, "./%s", path);
    path = here;
  }
  if (strchr(path, '/') != NULL) {
    if (stat(path, &sb) != 0)
      return MOE_FAIL(err, MOE_ERR_IO, "%s: cannot load policy plugin: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode))
      return MOE_FAIL(err, MOE_ERR_IO, "%s: cannot load policy plugin: not a regular file", path);
  }
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (h == NULL) return MOE_FAIL(err, MOE_ERR_IO, "%s: cannot load policy plugin: %s", path, dlerror());
  typedef const moe_policy *(*entry_fn)(void);
  entry_fn entry;
  void *sym = dlsym(h, MOE_POLICY_PLUGIN_SYMBOL);
  if (sym == NULL) {
    dlclose(h);
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: policy plugin does not export '%s'", path,
                    MOE_POLICY_PLUGIN_SYMBOL);
  }
  memcpy(&entry, &sym, sizeof entry); /* object pointer to function pointer, POSIX-style */
  const moe_policy *p = entry();
  moe_error inner = {0};
  moe_status st = moe_policy_validate(p, &inner);
  if (st != MOE_OK) {
    dlclose(h);
    return MOE_FAIL(err, st, "%s: %s", path, inner.msg);
  }
  if (moe_policy_find(p->name) != NULL) {
    /* the message is made before dlclose: p->name lives in the library */
    st = MOE_FAIL(err, MOE_ERR_INVALID, "%s: policy name '%s' is taken by a built-in policy", path,
                  p->name);
    dlclose(h);
    return st;
  }
  moe_policy *copy = malloc(sizeof *copy);
  if (copy == NULL) {
    dlclose(h);
    return MOE_FAIL(err, MOE_ERR_OOM, "%s: out of host memory", path);
  }
  moe_policy_normalize(p, copy);
  pl->handle = h;
  pl->policy = copy;
  return MOE_OK;
}

void moe_policy_plugin_close(moe_policy_library *pl) {
  free((void *)pl->policy);
  if (pl->handle) dlclose(pl->handle);
  memset(pl, 0, sizeof *pl);
}
