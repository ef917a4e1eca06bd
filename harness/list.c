/* moebench list WHAT: backends, models, policies, suites, workloads or
 * hardware profiles, one line each. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "paper.h"
#include "cli.h"
#include "commands.h"
#include "moe/backend.h"
#include "moe/cost.h"
#include "moe/cuda.h"
#include "moe/policy.h"
#include "suite.h"

/* One line per JSON file of a presets/suites/profiles directory; a file
 * that does not parse is reported and makes the listing fail. */
static int print_model(const char *path, void *ctx) {
  cli_preset p;
  moe_error err = {0};
  if (cli_preset_load(&p, path, &err) != MOE_OK) return *(int *)ctx = cli_fail(&err), 0;
  printf("%-24s %-5s %s\n", p.name, moe_dtype_name(p.dtype), p.description);
  return 0;
}

static int print_suite(const char *path, void *ctx) {
  moe_error err = {0};
  suite *s = calloc(1, sizeof *s);
  if (s && suite_load(s, path, &err) == MOE_OK)
    printf("%-16s %s\n", s->name, s->description);
  else
    *(int *)ctx = cli_fail(&err);
  free(s);
  return 0;
}

static int print_workload(const char *path, void *ctx) {
  workload w;
  moe_error err = {0};
  if (workload_load(&w, path, &err) == MOE_OK)
    printf("%-22s %s\n", w.name, w.description);
  else
    *(int *)ctx = cli_fail(&err);
  return 0;
}

/* One line per hardware profile (moebench list hardware). */
static int print_hw(const char *path, void *ctx) {
  moe_hw_profile p;
  moe_error err = {0};
  if (moe_hw_profile_load(&p, path, &err) != MOE_OK) return *(int *)ctx = cli_fail(&err), 0;
  printf("%-16s %6.0f GiB  %6.0f GB/s memory  %5.1f GB/s pinned link  %s\n", p.name,
         p.memory_bytes / 1073741824.0, p.memory_gbps, p.h2d_pinned_gbps, p.description);
  return 0;
}

static int hw_list(void) {
  int rc = 0;
  if (cli_for_each_json(cli_hw_dir(), print_hw, &rc) < 0) {
    cli_error("%s: cannot list", cli_hw_dir());
    return 1;
  }
  return rc;
}

static int list_dir(const char *dir, int (*fn)(const char *, void *)) {
  int rc = 0;
  if (cli_for_each_json(dir, fn, &rc) < 0) {
    cli_error("%s: cannot list", dir);
    return 1;
  }
  return rc;
}

void list_usage(FILE *f) {
  fprintf(f,
            "usage: moebench list backends|models|policies|suites|workloads|hardware\n\n"
            "  backends  compiled-in backends and whether their device is present\n"
            "  policies  built-in offload policies\n"
            "  models    model presets in the presets directory ($MOE_MODELS_DIR)\n"
            "  suites    benchmark suites ($MOE_SUITES_DIR)\n"
            "  workloads workload profiles ($MOE_PROFILES_DIR)\n"
            "  hardware  hardware profiles ($MOE_HARDWARE_DIR)\n"
            "  paper     the Pre-gated MoE paper's figures the harness quotes ($MOE_PAPER_FILE)\n");
}

/* list paper: every figure, its value as printed, its model and source. */
static int paper_list(void) {
  size_t n;
  const char *why;
  const paper_figure *f = paper_all(&n, &why);
  if (f == NULL) {
    cli_error("list: %s", why);
    return 1;
  }
  printf("%s\n", paper_path());
  for (size_t i = 0; i < n; i++) {
    char v[48];
    printf("%s\t%s\t%s; %s\n", f[i].key, paper_fmt(v, sizeof v, f[i].key), f[i].model,
           f[i].source); /* tab-separated: run_all.sh reads it */
  }
  return 0;
}

int cmd_list(int argc, char **argv) {
  const char *what = argc > 1 ? argv[1] : "";
  if (strcmp(what, "--help") == 0 || strcmp(what, "-h") == 0 || argc != 2) {
    list_usage(argc == 2 ? stdout : stderr);
    return argc == 2 ? 0 : 2;
  }
  if (strcmp(what, "backends") == 0) {
    for (size_t i = 0; i < moe_backend_count(); i++) {
      const moe_backend_ops *o = moe_backend_at(i);
      printf("%-8s %s\n", o->name, o->summary);
    }
    /* what each backend's probe finds, by table (no backend named here) */
    for (size_t i = 0; i < moe_backend_count(); i++) {
      const moe_backend_ops *o = moe_backend_at(i);
      if (o->probe == NULL) continue;
      char desc[256];
      moe_error err = {0};
      if (o->probe(desc, sizeof desc, &err) == MOE_OK)
        printf("%s device: %s\n", o->name, desc);
      else
        printf("%s device: none (%s)\n", o->name, err.msg);
    }
    printf("auto: %s\n", moe_backend_auto()->name);
    if (!moe_cuda_compiled()) printf("cuda: not compiled in this build (-DMOE_WITH_CUDA=ON)\n");
    return 0;
  }
  if (strcmp(what, "policies") == 0) {
    moe_error err = {0};
    if (moe_policy_registry_check(&err) != MOE_OK) return cli_fail(&err);
    for (size_t i = 0; i < moe_policy_count(); i++)
      printf("%-14s %s\n", moe_policy_at(i)->name, moe_policy_at(i)->summary);
    return 0;
  }
  if (strcmp(what, "models") == 0) return list_dir(cli_models_dir(), print_model);
  if (strcmp(what, "suites") == 0) return list_dir(suite_dir(), print_suite);
  if (strcmp(what, "workloads") == 0) return list_dir(suite_profiles_dir(), print_workload);
  if (strcmp(what, "hardware") == 0) return hw_list();
  if (strcmp(what, "paper") == 0) return paper_list();
  cli_error("list: unknown category '%s' (expected backends, models, policies, suites, workloads, "
            "hardware or paper)", what);
  return 2;
}

