/* Suite and workload parsing. */
#include "suite.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "moe/jsonfile.h"

const char *suite_profiles_dir(void) {
  const char *e = getenv("MOE_PROFILES_DIR");
  return e && *e ? e : MOE_SOURCE_DIR "/workloads/profiles";
}

const char *suite_dir(void) {
  const char *e = getenv("MOE_SUITES_DIR");
  return e && *e ? e : MOE_SOURCE_DIR "/workloads/suites";
}

static void resolve(char *out, size_t cap, const char *dir, const char *name) {
  if (strchr(name, '/') || strstr(name, ".json"))
    snprintf(out, cap, "%s", name);
  else
    snprintf(out, cap, "%s/%s.json", dir, name);
}

static json_t *load_json(const char *path, const char *what, moe_error *err) {
  moe_error lerr = {0};
  json_t *root = moe_json_load_file(path, &lerr);
  if (root == NULL) {
    if (lerr.status == MOE_ERR_IO && access(path, F_OK) != 0)
      MOE_FAIL(err, MOE_ERR_IO, "%s: no such %s", path, what);
    else
      MOE_FAIL(err, lerr.status, "%s", lerr.msg);
    return NULL;
  }
  if (!json_is_object(root)) {
    json_decref(root);
    MOE_FAIL(err, MOE_ERR_FORMAT, "%s: top level must be an object", path);
    return NULL;
  }
  return root;
}

/* An integer field in lo..hi; absent: def, or an error when def < 0.  The
 * same bounds as the command-line flags of the same name. */
static moe_status get_int_in(json_t *o, const char *key, int def, int lo, int hi, int *out,
                             const char *origin, moe_error *err) {
  json_t *v = json_object_get(o, key);
  if (v == NULL) {
    if (def < 0) return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: field '%s' is missing", origin, key);
    *out = def;
    return MOE_OK;
  }
  if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: field '%s' must be an integer in %d..%d", origin, key,
                    lo, hi);
  *out = (int)json_integer_value(v);
  return MOE_OK;
}

static moe_status get_str(json_t *o, const char *key, bool required, char *out, size_t cap,
                          const char *origin, moe_error *err) {
  json_t *v = json_object_get(o, key);
  if (v == NULL) {
    if (required) return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: field '%s' is missing", origin, key);
    return MOE_OK;
  }
  if (!json_is_string(v) || json_string_length(v) >= cap)
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: field '%s' must be a string of under %zu characters",
                    origin, key, cap);
  snprintf(out, cap, "%s", json_string_value(v));
  return MOE_OK;
}

/* A path named in the file `base`: absolute as it is, relative to base's
 * directory otherwise (the one rule for every path in a suite or workload
 * file).  MOE_ERR_FORMAT naming field when it does not fit. */
static moe_status rel_to(const char *base, const char *rel, char *out, size_t cap, const char *field,
                         moe_error *err) {
  int len;
  if (rel[0] == '/') {
    len = snprintf(out, cap, "%s", rel);
  } else {
    const char *slash = strrchr(base, '/');
    len = slash ? snprintf(out, cap, "%.*s/%s", (int)(slash - base), base, rel)
                : snprintf(out, cap, "%s", rel);
  }
  if (len < 0 || (size_t)len >= cap)
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: field '%s': the path is too long", base, field);
  return MOE_OK;
}

moe_status workload_from_json(workload *w, const void *json, const char *origin, const char *base,
                              moe_error *err) {
  moe_status st = MOE_OK;
  json_t *o = (json_t *)json;
  memset(w, 0, sizeof *w);
  MOE_CHECK(json_is_object(o), err, MOE_ERR_FORMAT, "%s: a workload must be an object", origin);
  static const char *const known[] = {"name",     "description", "batch",       "prompt_len",
                                      "gen_len",  "requests",    "tokens",      "eval_tokens",
                                      "eval_windows", NULL};
  MOE_TRY(cli_check_keys(o, known, origin, err));
  MOE_TRY(get_str(o, "name", true, w->name, sizeof w->name, origin, err));
  MOE_TRY(get_str(o, "description", false, w->description, sizeof w->description, origin, err));
  json_t *b = json_object_get(o, "batch");
  if (json_is_array(b)) {
    MOE_CHECK(json_array_size(b) >= 1 && json_array_size(b) <= SUITE_MAX, err, MOE_ERR_FORMAT,
              "%s: field 'batch' must list 1..%d batch sizes", origin, SUITE_MAX);
    size_t i;
    json_t *x;
    json_array_foreach(b, i, x) {
      MOE_CHECK(json_is_integer(x) && json_integer_value(x) >= 1 &&
                    json_integer_value(x) <= SUITE_MAX_BATCH,
                err, MOE_ERR_FORMAT, "%s: field 'batch' entry %zu must be an integer in 1..%d",
                origin, i, SUITE_MAX_BATCH);
      w->batches[w->n_batches++] = (int)json_integer_value(x);
    }
  } else {
    MOE_TRY(get_int_in(o, "batch", 1, 1, SUITE_MAX_BATCH, &w->batches[0], origin, err));
    w->n_batches = 1;
  }
  for (int a = 0; a < w->n_batches; a++)
    for (int c = 0; c < a; c++)
      MOE_CHECK(w->batches[a] != w->batches[c], err, MOE_ERR_FORMAT,
                "%s: field 'batch' lists %d twice", origin, w->batches[a]);
  MOE_TRY(get_int_in(o, "prompt_len", -1, 1, SUITE_MAX_LEN, &w->prompt_len, origin, err));
  MOE_TRY(get_int_in(o, "gen_len", -1, 2, SUITE_MAX_LEN, &w->gen_len, origin, err));
  MOE_TRY(get_int_in(o, "requests", 1, 1, SUITE_MAX_LEN, &w->requests, origin, err));
  /* absent: every window of the file; given: 1 or more (0 meant 'all' silently) */
  MOE_TRY(get_int_in(o, "eval_windows", 0, 1, 1 << 20, &w->eval_windows, origin, err));
  json_t *ev = json_object_get(o, "eval_tokens");
  if (ev != NULL) {
    MOE_CHECK(json_is_string(ev) && json_string_length(ev) > 0, err, MOE_ERR_FORMAT,
              "%s: field 'eval_tokens' must be a path (relative to this file)", origin);
    MOE_TRY(rel_to(base, json_string_value(ev), w->eval_file, sizeof w->eval_file, "eval_tokens", err));
  }
  w->seed = 1;
  json_t *t = json_object_get(o, "tokens");
  if (t != NULL) {
    MOE_CHECK(json_is_object(t), err, MOE_ERR_FORMAT, "%s: field 'tokens' must be an object", origin);
    char src[16] = "";
    char sub[600];
    snprintf(sub, sizeof sub, "%s: tokens", origin);
    static const char *const tknown[] = {"source", "seed", "path", NULL};
    MOE_TRY(cli_check_keys(t, tknown, sub, err));
    MOE_TRY(get_str(t, "source", true, src, sizeof src, sub, err));
    if (strcmp(src, "random") == 0) {
      json_t *sd = json_object_get(t, "seed");
      MOE_CHECK(sd == NULL || (json_is_integer(sd) && json_integer_value(sd) >= 0), err,
                MOE_ERR_FORMAT, "%s: field 'seed' must be a non-negative integer", sub);
      if (sd) w->seed = (uint64_t)json_integer_value(sd);
    } else if (strcmp(src, "file") == 0) {
      char rel[512] = "";
      MOE_TRY(get_str(t, "path", true, rel, sizeof rel, sub, err));
      MOE_TRY(rel_to(base, rel, w->token_file, sizeof w->token_file, "tokens.path", err));
    } else {
      MOE_CHECK(0, err, MOE_ERR_FORMAT, "%s: field 'source' must be \"random\" or \"file\", not '%s'",
                sub, src);
    }
  }
cleanup:
  return st;
}

moe_status workload_load(workload *w, const char *name, moe_error *err) {
  char path[1024];
  resolve(path, sizeof path, suite_profiles_dir(), name);
  json_t *root = load_json(path, "workload profile", err);
  if (root == NULL) return err ? err->status : MOE_ERR_IO;
  moe_status st = workload_from_json(w, root, path, path, err);
  json_decref(root);
  return st;
}

/* Reads a list of strings (or one string) into out. */
static moe_status get_list(json_t *o, const char *key, char (*out)[SUITE_NAME_MAX], int *n,
                           const char *origin, moe_error *err) {
  json_t *v = json_object_get(o, key);
  *n = 0;
  if (json_is_string(v)) v = json_pack("[O]", v);
  else json_incref(v);
  moe_status st = MOE_OK;
  MOE_CHECK(json_is_array(v) && json_array_size(v) >= 1 && json_array_size(v) <= SUITE_MAX, err,
            MOE_ERR_FORMAT, "%s: field '%s' must list 1..%d names", origin, key, SUITE_MAX);
  size_t i;
  json_t *x;
  json_array_foreach(v, i, x) {
    MOE_CHECK(json_is_string(x) && json_string_length(x) > 0 && json_string_length(x) < SUITE_NAME_MAX,
              err, MOE_ERR_FORMAT, "%s: field '%s' entry %zu must be a name or a path (under %d bytes)",
              origin, key, i, SUITE_NAME_MAX);
    for (int k = 0; k < *n; k++)
      MOE_CHECK(strcmp(out[k], json_string_value(x)) != 0, err, MOE_ERR_FORMAT,
                "%s: field '%s' lists '%s' twice", origin, key, json_string_value(x));
    snprintf(out[(*n)++], SUITE_NAME_MAX, "%s", json_string_value(x));
  }
cleanup:
  json_decref(v);
  return st;
}

moe_status suite_load(suite *s, const char *name, moe_error *err) {
  char path[512];
  resolve(path, sizeof path, suite_dir(), name);
  json_t *root = load_json(path, "suite", err);
  if (root == NULL) return err ? err->status : MOE_ERR_IO;
  moe_status st = suite_from_json(s, root, path, err);
  json_decref(root);
  return st;
}

/* "workloads": names of profiles or inline objects, distinct names. */
static moe_status get_workloads(suite *s, json_t *root, const char *origin, moe_error *err) {
  moe_status st = MOE_OK;
  json_t *wl = json_object_get(root, "workloads");
  MOE_CHECK(json_is_array(wl) && json_array_size(wl) >= 1 && json_array_size(wl) <= SUITE_MAX, err,
            MOE_ERR_FORMAT, "%s: field 'workloads' must list 1..%d workloads (names or objects)",
            origin, SUITE_MAX);
  size_t i;
  json_t *x;
  json_array_foreach(wl, i, x) {
    char sub[700];
    snprintf(sub, sizeof sub, "%s: workloads[%zu]", origin, i);
    if (json_is_string(x))
      MOE_TRY(workload_load(&s->workloads[s->n_workloads], json_string_value(x), err));
    else
      MOE_TRY(workload_from_json(&s->workloads[s->n_workloads], x, sub, origin, err));
    for (int k = 0; k < s->n_workloads; k++)
      MOE_CHECK(strcmp(s->workloads[k].name, s->workloads[s->n_workloads].name) != 0, err,
                MOE_ERR_FORMAT, "%s: two workloads are named '%s'", origin,
                s->workloads[k].name);
    s->n_workloads++;
  }
cleanup:
  return st;
}

/* "device_mem": sizes or "capacity" (0), distinct; absent: capacity. */
static moe_status get_budgets(suite *s, json_t *root, const char *origin, moe_error *err) {
  moe_status st = MOE_OK;
  if (json_object_get(root, "device_mem") == NULL) {
    s->n_budgets = 1;
    return MOE_OK;
  }
  char names[SUITE_MAX][SUITE_NAME_MAX];
  int n = 0;
  MOE_TRY(get_list(root, "device_mem", names, &n, origin, err));
  for (int k = 0; k < n; k++) {
    if (strcmp(names[k], "capacity") == 0) {
      s->budgets[k] = 0;
    } else {
      MOE_CHECK(cli_parse_bytes(names[k], &s->budgets[k]) && s->budgets[k] > 0, err,
                MOE_ERR_FORMAT, "%s: field 'device_mem' entry '%s' is not a size like 24GiB",
                origin, names[k]);
    }
  }
  s->n_budgets = n;
  for (int a = 0; a < n; a++)
    for (int c = 0; c < a; c++)
      MOE_CHECK(s->budgets[a] != s->budgets[c], err, MOE_ERR_FORMAT,
                "%s: field 'device_mem' lists the same budget twice ('%s' and '%s')", origin,
                names[c], names[a]);
cleanup:
  return st;
}

/* backend, routing, link cap, threads, repetitions, warm-up. */
static moe_status get_run_settings(suite *s, json_t *root, const char *origin, moe_error *err) {
  moe_status st = MOE_OK;
  snprintf(s->backend, sizeof s->backend, "cpu");
  MOE_TRY(get_str(root, "backend", false, s->backend, sizeof s->backend, origin, err));
  /* any backend name; the sweep asks the registry (moebench list backends) */
  MOE_CHECK(s->backend[0] != '\0' && strspn(s->backend, "abcdefghijklmnopqrstuvwxyz0123456789-") ==
                                         strlen(s->backend),
            err, MOE_ERR_FORMAT, "%s: field 'backend' must be a backend name (a-z, 0-9, '-') or auto",
            origin);
  MOE_TRY(get_int_in(root, "lookahead", 1, 1, 3, &s->lookahead, origin, err));
  snprintf(s->routing, sizeof s->routing, "default");
  MOE_TRY(get_str(root, "routing", false, s->routing, sizeof s->routing, origin, err));
  moe_routing routing;
  MOE_CHECK(!strcmp(s->routing, "default") || moe_routing_parse(s->routing, &routing) == 0,
            err, MOE_ERR_FORMAT, "%s: field 'routing' must be default, conventional or pregated",
            origin);
  json_t *lk = json_object_get(root, "link_gbps");
  MOE_CHECK(lk == NULL || (json_is_number(lk) && (json_number_value(lk) == 0 ||
                                                   (json_number_value(lk) >= MOE_LINK_GBPS_MIN &&
                                                    json_number_value(lk) <= MOE_LINK_GBPS_MAX))),
            err, MOE_ERR_FORMAT, "%s: field 'link_gbps' must be 0 (uncapped) or in %g..%g GB/s",
            origin, MOE_LINK_GBPS_MIN, MOE_LINK_GBPS_MAX);
  s->link_gbps = lk ? json_number_value(lk) : 0.0;
  json_t *lr = json_object_get(root, "link_ratio");
  MOE_CHECK(lr == NULL || (json_is_number(lr) && json_number_value(lr) > 0 &&
                           json_number_value(lr) <= 100),
            err, MOE_ERR_FORMAT, "%s: field 'link_ratio' must be a number in (0, 100]", origin);
  s->link_ratio = lr ? json_number_value(lr) : 0.0;
  MOE_CHECK(!(s->link_ratio > 0 && s->link_gbps > 0), err, MOE_ERR_FORMAT,
            "%s: give at most one of 'link_gbps' and 'link_ratio'", origin);
  MOE_TRY(get_int_in(root, "threads", 1, 1, SUITE_MAX_THREADS, &s->threads, origin, err));
  MOE_TRY(get_int_in(root, "host_threads", 1, 1, SUITE_MAX_THREADS, &s->host_threads, origin, err));
  json_t *hg = json_object_get(root, "host_gbps");
  MOE_CHECK(hg == NULL || (json_is_number(hg) && json_number_value(hg) >= 0 &&
                           json_number_value(hg) <= MOE_LINK_GBPS_MAX),
            err, MOE_ERR_FORMAT, "%s: field 'host_gbps' must be 0 (uncapped) or up to %g GB/s",
            origin, MOE_LINK_GBPS_MAX);
  s->host_gbps = hg ? json_number_value(hg) : 0.0;
  MOE_TRY(get_int_in(root, "repetitions", 1, 1, SUITE_MAX_REPS, &s->repetitions, origin, err));
  json_t *wu = json_object_get(root, "warmup");
  MOE_CHECK(wu == NULL || (json_is_integer(wu) && json_integer_value(wu) >= 0 &&
                           json_integer_value(wu) <= SUITE_MAX_REPS),
            err, MOE_ERR_FORMAT, "%s: field 'warmup' must be an integer in 0..%d", origin,
            SUITE_MAX_REPS);
  s->warmup = wu ? (int)json_integer_value(wu) : 0;
  /* the sim backend models a device: which one, and its routing source */
  char hw[SUITE_NAME_MAX] = "";
  MOE_TRY(get_str(root, "hardware", false, hw, sizeof hw, origin, err));
  MOE_TRY(get_str(root, "sim_routing", false, s->sim_routing, sizeof s->sim_routing, origin, err));
  MOE_CHECK(cli_backend_modeled(s->backend) == (hw[0] != '\0'), err, MOE_ERR_FORMAT,
            "%s: field 'hardware' %s", origin,
            hw[0] ? "is for backend sim only" : "is needed with backend sim (a hardware profile)");
  MOE_CHECK(s->sim_routing[0] == '\0' || cli_backend_modeled(s->backend), err, MOE_ERR_FORMAT,
            "%s: field 'sim_routing' is for backend sim only", origin);
  if (strncmp(s->sim_routing, "trace:", 6) == 0) { /* the routing log, relative to this file */
    char file[SUITE_NAME_MAX];
    MOE_TRY(rel_to(origin, s->sim_routing + 6, file, sizeof file, "sim_routing", err));
    MOE_CHECK(strlen(file) + 6 < sizeof s->sim_routing, err, MOE_ERR_FORMAT,
              "%s: field 'sim_routing': the path is too long", origin);
    memcpy(s->sim_routing + 6, file, strlen(file) + 1); /* after "trace:", length checked */
  }
  if (hw[0]) {
    /* a bare name means workloads/hardware/NAME.json; a path is relative to the suite file */
    if (strchr(hw, '/')) {
      MOE_TRY(rel_to(origin, hw, s->hardware, sizeof s->hardware, "hardware", err));
    } else {
      cli_hw_path(hw, s->hardware, sizeof s->hardware);
    }
  }
cleanup:
  return st;
}

moe_status suite_from_json(suite *s, const void *json, const char *origin_, moe_error *err) {
  moe_status st = MOE_OK;
  memset(s, 0, sizeof *s);
  snprintf(s->path, sizeof s->path, "%s", origin_);
  const char *origin = s->path;
  json_t *root = (json_t *)json;
  MOE_CHECK(json_is_object(root), err, MOE_ERR_FORMAT, "%s: top level must be an object", origin);
  static const char *const known[] = {"name",       "description", "models",  "workloads",
                                      "policies",   "backend",     "routing", "device_mem",
                                      "link_gbps",  "threads",     "repetitions", "warmup",
                                      "lookahead",  "hardware",    "sim_routing", "link_ratio",
                                      "host_threads", "host_gbps", NULL};
  MOE_TRY(cli_check_keys(root, known, origin, err));
  MOE_TRY(get_str(root, "name", true, s->name, sizeof s->name, origin, err));
  /* the name makes the default output results/runs/NAME: a file name, no
   * directory part, nothing hidden */
  MOE_CHECK(s->name[0] != '.' && strspn(s->name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                 "0123456789._-") == strlen(s->name),
            err, MOE_ERR_FORMAT, "%s: field 'name' '%.64s' must be letters, digits, '.', '_' or '-' "
            "(not starting with '.'): it names the output file", origin, s->name);
  MOE_TRY(get_str(root, "description", false, s->description, sizeof s->description, origin, err));
  MOE_TRY(get_list(root, "models", s->models, &s->n_models, origin, err));
  MOE_TRY(get_list(root, "policies", s->policies, &s->n_policies, origin, err));
  MOE_TRY(get_workloads(s, root, origin, err));
  MOE_TRY(get_budgets(s, root, origin, err));
  MOE_TRY(get_run_settings(s, root, origin, err));
cleanup:
  return st;
}
