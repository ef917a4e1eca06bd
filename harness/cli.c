/* Helpers shared by the moebench subcommands. */
#include "cli.h"

#include "moe/backend.h"
#include "moe/jsonfile.h"
#include "moe/policy.h"
#include "moe/publish.h"

#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void cli_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("moebench: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

int cli_fail(const moe_error *err) {
  char buf[700];
  fprintf(stderr, "moebench: %s\n", cli_error_text(err, buf, sizeof buf));
  return 1;
}

const char *cli_models_dir(void) {
  const char *env = getenv("MOE_MODELS_DIR");
  return env && *env ? env : MOE_SOURCE_DIR "/workloads/models";
}

/* FNV-1a 64 of a file's first `limit` bytes (all when 0) into *h; false
 * when it cannot be read. */
static bool hash_file(const char *path, size_t limit, uint64_t *h) {
  moe_error err = {0};
  FILE *f = moe_fopen_regular(path, &err);
  if (f == NULL) return false;
  unsigned char buf[4096];
  size_t n, total = 0;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
    for (size_t i = 0; i < n && (limit == 0 || total < limit); i++, total++) {
      *h ^= buf[i];
      *h *= 1099511628211ull;
    }
    if (limit && total >= limit) break;
  }
  fclose(f);
  return true;
}

bool cli_file_hash_hex(const char *path, char out[17]) {
  uint64_t h = 1469598103934665603ull;
  if (!hash_file(path, 0, &h)) return false;
  snprintf(out, 17, "%016llx", (unsigned long long)h);
  return true;
}

/* A checkpoint directory as a preset (see cli_preset_load). */
static moe_status checkpoint_preset(cli_preset *p, const char *dir, moe_error *err) {
  char path[4200];
  moe_status st = MOE_OK;
  snprintf(p->checkpoint, sizeof p->checkpoint, "%s", dir);
  MOE_CHECK(strlen(dir) < sizeof p->checkpoint, err, MOE_ERR_INVALID, "%s: path too long", dir);
  snprintf(path, sizeof path, "%s/config.json", dir);
  MOE_TRY(moe_config_load(&p->cfg, path, err));
  MOE_TRY(moe_model_checkpoint_dtype(&p->cfg, dir, &p->dtype, err));
  uint64_t h = 1469598103934665603ull;
  hash_file(path, 0, &h);
  snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
  if (!hash_file(path, 0, &h)) {
    /* one file: its 8-byte length and JSON header (names, dtypes, shapes,
     * offsets), capped at 1 MiB */
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    hash_file(path, 1 << 20, &h);
  }
  size_t len = strlen(dir);
  while (len > 1 && dir[len - 1] == '/') len--;
  const char *base = dir + len;
  while (base > dir && base[-1] != '/') base--;
  snprintf(p->name, sizeof p->name, "%.*s@%08x", (int)((size_t)(dir + len - base) < 40 ? dir + len - base : 40),
           base, (unsigned)(h ^ (h >> 32)));
  snprintf(p->description, sizeof p->description, "checkpoint %.140s", dir);
cleanup:
  return st;
}

moe_status cli_preset_load(cli_preset *p, const char *name, moe_error *err) {
  char path[4096];
  moe_status st = MOE_OK;
  memset(p, 0, sizeof *p);
  struct stat sb;
  if (stat(name, &sb) == 0 && S_ISDIR(sb.st_mode)) return checkpoint_preset(p, name, err);
  if (strchr(name, '/') || strstr(name, ".json"))
    snprintf(path, sizeof path, "%s", name);
  else
    snprintf(path, sizeof path, "%s/%s.json", cli_models_dir(), name);
  snprintf(p->file, sizeof p->file, "%s", path);
  moe_error lerr = {0};
  json_t *root = moe_json_load_file(path, &lerr);
  if (root == NULL) {
    if (lerr.status == MOE_ERR_IO && access(path, F_OK) != 0)
      return MOE_FAIL(err, MOE_ERR_IO, "%s: no such model preset (see 'moebench list models')",
                      path);
    return MOE_FAIL(err, lerr.status, "%s", lerr.msg);
  }
  json_t *v;
  MOE_CHECK(json_is_object(root), err, MOE_ERR_FORMAT, "%s: top level must be an object", path);
  static const char *const known[] = {"name",         "description", "dtype",  "seed",
                                      "routing_skew", "pregate",     "config", NULL};
  MOE_TRY(cli_check_keys(root, known, path, err));
  v = json_object_get(root, "name");
  MOE_CHECK(json_is_string(v), err, MOE_ERR_FORMAT, "%s: field 'name' must be a string", path);
  snprintf(p->name, sizeof p->name, "%s", json_string_value(v));
  v = json_object_get(root, "description");
  if (json_is_string(v)) snprintf(p->description, sizeof p->description, "%s", json_string_value(v));
  v = json_object_get(root, "dtype");
  MOE_CHECK(json_is_string(v) && moe_dtype_parse(json_string_value(v), &p->dtype) == 0, err,
            MOE_ERR_FORMAT, "%s: field 'dtype' must be one of f32, f16, bf16", path);
  v = json_object_get(root, "seed");
  MOE_CHECK(v == NULL || (json_is_integer(v) && json_integer_value(v) >= 0), err, MOE_ERR_FORMAT,
            "%s: field 'seed' must be a non-negative integer", path);
  p->seed = v ? (uint64_t)json_integer_value(v) : 0;
  v = json_object_get(root, "routing_skew");
  MOE_CHECK(v == NULL || (json_is_number(v) && json_number_value(v) >= 0), err, MOE_ERR_FORMAT,
            "%s: field 'routing_skew' must be a number >= 0", path);
  p->routing_skew = v ? json_number_value(v) : 0.0;
  v = json_object_get(root, "pregate");
  MOE_CHECK(v == NULL || json_is_boolean(v), err, MOE_ERR_FORMAT,
            "%s: field 'pregate' must be true or false", path);
  p->pregate = v ? json_is_true(v) : false;
  v = json_object_get(root, "config");
  MOE_CHECK(json_is_object(v), err, MOE_ERR_FORMAT, "%s: field 'config' must be an object", path);
  char origin[4200];
  snprintf(origin, sizeof origin, "%s: config", path);
  MOE_TRY(moe_config_from_json(&p->cfg, v, origin, err));
cleanup:
  json_decref(root);
  return st;
}

int cli_parse_ids(const char *s, int32_t **ids) {
  size_t cap = 16, n = 0;
  int32_t *a = malloc(cap * sizeof *a);
  if (a == NULL) return -1;
  const char *p = s;
  while (*p) {
    while (*p && (isspace((unsigned char)*p) || *p == ',')) p++;
    if (!*p) break;
    char *end;
    errno = 0;
    long v = strtol(p, &end, 10);
    if (end == p || errno || v < 0 || v > INT32_MAX ||
        (*end && !isspace((unsigned char)*end) && *end != ',')) {
      free(a);
      return -1;
    }
    if (n == cap) {
      int32_t *b = realloc(a, 2 * cap * sizeof *a);
      if (b == NULL) {
        free(a);
        return -1;
      }
      a = b;
      cap *= 2;
    }
    a[n++] = (int32_t)v;
    p = end;
  }
  *ids = a;
  return (int)n;
}

moe_synth_options cli_preset_synth(const cli_preset *p) {
  moe_synth_options o = {p->dtype, p->seed, p->routing_skew, p->pregate};
  return o;
}

moe_status cli_preset_build(const cli_preset *p, moe_model **out, moe_error *err) {
  *out = NULL;
  if (p->checkpoint[0]) return moe_model_load(out, p->checkpoint, NULL, err);
  moe_synth_options so = cli_preset_synth(p);
  return moe_model_synthetic(out, &p->cfg, &so, err);
}

moe_status cli_preset_virtual(const cli_preset *p, moe_model **out, moe_error *err) {
  moe_synth_options so = cli_preset_synth(p);
  if (p->checkpoint[0]) so.pregate = false; /* a checkpoint's own tensors: no synthetic pre-gate */
  return moe_model_virtual(out, &p->cfg, &so, err);
}

moe_status cli_preset_model(const char *name, cli_preset *p, moe_model **out, moe_error *err) {
  cli_preset local;
  if (p == NULL) p = &local;
  *out = NULL;
  moe_status st = cli_preset_load(p, name, err);
  if (st != MOE_OK) return st;
  return cli_preset_build(p, out, err);
}

moe_status cli_preset_build_for(const cli_preset *p, const char *backend, moe_model **out,
                                moe_error *err) {
  return cli_backend_modeled(backend) ? cli_preset_virtual(p, out, err)
                                      : cli_preset_build(p, out, err);
}

moe_status cli_preset_model_for(const char *name, const char *backend, cli_preset *p,
                                moe_model **out, moe_error *err) {
  cli_preset local;
  if (p == NULL) p = &local;
  *out = NULL;
  moe_status st = cli_preset_load(p, name, err);
  if (st != MOE_OK) return st;
  return cli_preset_build_for(p, backend, out, err);
}

int cli_for_each_json(const char *dir, int (*fn)(const char *path, void *ctx), void *ctx) {
  struct dirent **names = NULL;
  int n = scandir(dir, &names, NULL, alphasort);
  if (n < 0) return -1;
  int rc = 0;
  for (int i = 0; i < n; i++) {
    const char *nm = names[i]->d_name;
    size_t len = strlen(nm);
    if (rc == 0 && len > 5 && strcmp(nm + len - 5, ".json") == 0) {
      char path[4096];
      snprintf(path, sizeof path, "%s/%s", dir, nm);
      rc = fn(path, ctx);
    }
    free(names[i]);
  }
  free(names);
  return rc;
}

FILE *cli_open_input(const char *path, const char *what) {
  moe_error err = {0};
  FILE *f = moe_fopen_regular(path, &err);
  if (f == NULL) cli_error("%s (%s)", err.msg, what);
  return f;
}

int cli_read_token_file(const char *path, int want_len, int32_t **out, int *n_prompts, int *len) {
  FILE *f = cli_open_input(path, "token file");
  if (f == NULL) return -1;
  char *line = NULL;
  size_t cap = 0;
  int32_t *all = NULL;
  int count = 0, plen = want_len, lineno = 0, rc = 0;
  ssize_t got;
  while ((got = getline(&line, &cap, f)) >= 0) {
    lineno++;
    if (memchr(line, '\0', (size_t)got) != NULL) { /* the ids after it would be dropped */
      cli_error("%s:%d: a NUL byte inside the line", path, lineno);
      rc = -1;
      break;
    }
    const char *first = line + strspn(line, " \t");
    if (*first == '#') continue; /* a comment line */
    int32_t *ids;
    int n = cli_parse_ids(line, &ids);
    if (n < 0) {
      cli_error("%s:%d: not a list of non-negative token ids", path, lineno);
      rc = -1;
      break;
    }
    if (n == 0) {
      free(ids);
      continue;
    }
    if (plen >= 0 && n != plen) {
      if (want_len >= 0)
        cli_error("%s:%d: %d ids per prompt are wanted, the line has %d", path, lineno, want_len, n);
      else
        cli_error("%s:%d: prompt has %d ids but earlier prompts have %d (equal lengths required)",
                  path, lineno, n, plen);
      free(ids);
      rc = -1;
      break;
    }
    plen = n;
    int32_t *grown = count < INT_MAX ? realloc(all, ((size_t)count + 1) * (size_t)n * sizeof *all) : NULL;
    if (grown == NULL) {
      cli_error("%s:%d: out of memory reading prompts", path, lineno);
      free(ids);
      rc = -1;
      break;
    }
    all = grown;
    memcpy(all + (size_t)count * (size_t)n, ids, (size_t)n * sizeof *ids);
    free(ids);
    count++;
  }
  free(line);
  fclose(f);
  if (rc == 0 && count == 0) {
    cli_error("%s: no prompts in file", path);
    rc = -1;
  }
  if (rc != 0) {
    free(all);
    return -1;
  }
  *out = all;
  *n_prompts = count;
  *len = plen;
  return 0;
}

void cli_mkdir_parent(const char *prefix) {
  char d[1100];
  snprintf(d, sizeof d, "%s", prefix);
  for (char *p = d + 1; *p; p++)
    if (*p == '/') {
      *p = '\0';
      mkdir(d, 0777);
      *p = '/';
    }
}

int cli_check_model_dir(const char *cmd, const char *dir) {
  struct stat sb;
  if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
    cli_error("%s: %s: not a checkpoint directory (config.json + safetensors)", cmd, dir);
    return -1;
  }
  return 0;
}

int cli_check_names(const char *cmd, const char *preset, const char *backend) {
  if (preset && !strchr(preset, '/') && !strstr(preset, ".json")) {
    char path[1100];
    snprintf(path, sizeof path, "%s/%s.json", cli_models_dir(), preset);
    if (access(path, F_OK) != 0) {
      cli_error("%s: unknown model preset '%s' (no %s; see 'moebench list models')", cmd, preset,
                path);
      return 2;
    }
  }
  if (backend && strcmp(backend, "auto") != 0 && moe_backend_find(backend) == NULL &&
      strcmp(backend, "cuda") != 0) {
    cli_error("%s: unknown backend '%s' (see 'moebench list backends')", cmd, backend);
    return 2;
  }
  return 0;
}

int cli_check_prefix(const char *cmd, const char *prefix) {
  moe_error err = {0};
  if (moe_publish_check_path(prefix, 16, &err) != MOE_OK) {
    cli_error("%s: -o: %s", cmd, err.msg);
    return 1;
  }
  const size_t n = strlen(prefix);
  struct stat st;
  if (prefix[n - 1] == '/' || (stat(prefix, &st) == 0 && S_ISDIR(st.st_mode))) {
    cli_error("%s: -o %s: a directory; give a prefix (DIR/NAME writes DIR/NAME.csv and .json)",
              cmd, prefix);
    return 1;
  }
  return 0;
}

int cli_lock_prefix(const char *cmd, const char *prefix) {
  char path[MOE_PUBLISH_PATH_MAX + 8];
  if (cli_check_prefix(cmd, prefix) != 0) return -1;
  snprintf(path, sizeof path, "%s.lock", prefix);
  const int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0666);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    cli_error("%s: %s: cannot use as the lock file: %s", cmd, path,
              fd < 0 ? strerror(errno) : "not a regular file");
    if (fd >= 0) close(fd);
    return -1;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    cli_error("%s: %s: another command is writing %s.csv and .json; refusing a second writer", cmd,
              path, prefix);
    close(fd);
    return -1;
  }
  return fd;
}

/* The resolved form of path: realpath of its directory, plus its name. */
static bool resolved_name(const char *path, char *out, size_t cap) {
  char dir[PATH_MAX], real[PATH_MAX];
  const char *slash = strrchr(path, '/');
  const char *base = slash ? slash + 1 : path;
  if (slash == path) snprintf(dir, sizeof dir, "/");
  else if (slash) snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
  else snprintf(dir, sizeof dir, ".");
  if (realpath(dir, real) == NULL) return false;
  return snprintf(out, cap, "%s/%s", real, base) < (int)cap;
}

int cli_output_clobbers(const char *cmd, const char *output, const char *input) {
  if (output == NULL || input == NULL || !output[0] || !input[0]) return 0;
  struct stat so, si;
  bool same = false;
  if (stat(output, &so) == 0 && stat(input, &si) == 0) {
    same = so.st_dev == si.st_dev && so.st_ino == si.st_ino;
  } else {
    char a[PATH_MAX + 256], b[PATH_MAX + 256];
    same = resolved_name(output, a, sizeof a) && resolved_name(input, b, sizeof b) && !strcmp(a, b);
  }
  if (same) cli_error("%s: the output %s is an input of this command; refusing to overwrite it", cmd, output);
  return same ? 1 : 0;
}

void cli_md_into(char *out, size_t cap, const char *s) {
  size_t n = 0;
  for (const unsigned char *c = (const unsigned char *)s; *c && n + 2 < cap; c++) {
    if (*c == '|' || *c == '\\') out[n++] = '\\', out[n++] = (char)*c;
    else out[n++] = *c < 0x20 || *c == 0x7f ? ' ' : (char)*c;
  }
  if (cap) out[n < cap ? n : cap - 1] = '\0';
}

const char *cli_md(const char *s) {
  static char buf[32][1024];
  static int k;
  k = (k + 1) % 32;
  cli_md_into(buf[k], sizeof buf[k], s ? s : "");
  return buf[k];
}

const char *cli_model_dir_arg(const char *arg) {
  static char buf[8][MOE_PUBLISH_PATH_MAX + 3];
  static int k;
  if (arg == NULL || strchr(arg, '/') != NULL || strlen(arg) > MOE_PUBLISH_PATH_MAX) return arg;
  k = (k + 1) % 8;
  snprintf(buf[k], sizeof buf[k], "./%s", arg);
  return buf[k];
}

void cli_bad_value(const char *cmd, const struct option *opts, int idx, int c, const char *arg) {
  const char *name = idx >= 0 ? opts[idx].name : NULL;
  for (int i = 0; name == NULL && opts[i].name; i++)
    if (opts[i].val == c) name = opts[i].name;
  char flag[80];
  if (name) snprintf(flag, sizeof flag, "--%s", name);
  else snprintf(flag, sizeof flag, "-%c", c > 32 && c < 127 ? c : '?');
  const char *want = cli_expected(arg);
  if (want)
    cli_error("%s: %s '%s': expected %s", cmd, flag, arg, want);
  else
    cli_error("%s: %s '%s': not a valid value (see --help)", cmd, flag, arg ? arg : "");
}

/* FNV-1a over 8-byte words (then the tail's bytes) of a whole file: a
 * content hash fast enough for checkpoints of many gigabytes. */
static bool hash_file_words(const char *path, uint64_t *h) {
  moe_error err = {0};
  FILE *f = moe_fopen_regular(path, &err);
  if (f == NULL) return false;
  enum { CHUNK = 1 << 20 };
  unsigned char *buf = malloc(CHUNK);
  if (buf == NULL) return fclose(f), false;
  size_t n;
  while ((n = fread(buf, 1, CHUNK, f)) > 0) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      memcpy(&w, buf + i, 8);
      *h = (*h ^ w) * 1099511628211ull;
    }
    for (; i < n; i++) *h = (*h ^ buf[i]) * 1099511628211ull;
  }
  const bool ok = !ferror(f);
  free(buf);
  fclose(f);
  return ok;
}

static int by_name(const struct dirent **a, const struct dirent **b) {
  return strcmp((*a)->d_name, (*b)->d_name);
}

/* A checkpoint directory's content: config.json, the index when there is
 * one, and every *.safetensors file, in name order. */
static bool hash_checkpoint(const char *dir, uint64_t *h) {
  char path[4200];
  snprintf(path, sizeof path, "%s/config.json", dir);
  if (!hash_file_words(path, h)) return false;
  struct dirent **list = NULL;
  const int n = scandir(dir, &list, NULL, by_name);
  if (n < 0) return false;
  bool ok = true;
  for (int i = 0; i < n; i++) {
    const char *e = list[i]->d_name;
    const size_t len = strlen(e);
    const bool weights = len > 12 && strcmp(e + len - 12, ".safetensors") == 0;
    if (ok && (weights || strcmp(e, "model.safetensors.index.json") == 0)) {
      snprintf(path, sizeof path, "%s/%s", dir, e);
      *h = (*h ^ (uint64_t)len) * 1099511628211ull; /* the name too: a renamed shard differs */
      for (size_t k = 0; k < len; k++) *h = (*h ^ (unsigned char)e[k]) * 1099511628211ull;
      ok = hash_file_words(path, h);
    }
    free(list[i]);
  }
  free(list);
  return ok;
}

/* One named part of the inputs hash: its label, then its content. */
static bool mix_part(uint64_t *h, const char *label, const char *path) {
  for (const char *c = label; *c; c++) *h = (*h ^ (unsigned char)*c) * 1099511628211ull;
  return hash_file_words(path, h);
}

bool cli_model_hash(const cli_preset *p, char out[17]) {
  uint64_t h = 1469598103934665603ull;
  const bool ok = p->checkpoint[0] ? hash_checkpoint(p->checkpoint, &h)
                                   : p->file[0] ? mix_part(&h, "preset", p->file) : true;
  snprintf(out, 17, "%016llx", (unsigned long long)h);
  return ok;
}

bool cli_inputs_hash(const char *model_hash, const char *token_file, const char *eval_file,
                     const char *hardware, const char *sim_routing, const char *plugin,
                     char out[17]) {
  uint64_t h = 1469598103934665603ull;
  for (const char *c = model_hash ? model_hash : ""; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ull;
  bool ok = true;
  if (ok && token_file && token_file[0]) ok = mix_part(&h, "tokens", token_file);
  if (ok && eval_file && eval_file[0]) ok = mix_part(&h, "eval", eval_file);
  if (ok && hardware && hardware[0]) ok = mix_part(&h, "hardware", hardware);
  if (ok && sim_routing && sim_routing[0]) {
    for (const char *c = sim_routing; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ull;
    if (strncmp(sim_routing, "trace:", 6) == 0) ok = mix_part(&h, "routing", sim_routing + 6);
  }
  if (ok && plugin && plugin[0]) ok = mix_part(&h, "plugin", plugin);
  snprintf(out, 17, "%016llx", (unsigned long long)h);
  return ok;
}

int cli_parse_policies(const char *cmd, const char *list, const struct moe_policy **pol,
                       char (*cache)[CLI_CACHE_MAX], int max, int *np) {
  char buf[256];
  *np = 0;
  if (strlen(list) >= sizeof buf) {
    cli_error("%s: --policies is too long", cmd);
    return 2;
  }
  snprintf(buf, sizeof buf, "%s", list);
  /* every comma-separated entry names a policy (strtok would skip empty ones) */
  for (char *tok = buf, *next; tok; tok = next) {
    next = strchr(tok, ',');
    if (next) *next++ = '\0';
    if (tok[0] == '\0') {
      cli_error("%s: --policies: empty policy name in '%s'", cmd, list);
      return 2;
    }
    char base[128];
    const char *c = NULL;
    if (cache && (!cli_split_policy(tok, base, sizeof base, &c) ||
                  (c && strlen(c) >= CLI_CACHE_MAX))) {
      cli_error("%s: --policies entry '%s' is not NAME or NAME+KIND:SIZE (KIND lru, lfu, static or "
                "ring)", cmd, tok);
      return 2;
    }
    if (*np == max || (pol[*np] = moe_policy_find(cache ? base : tok)) == NULL) {
      cli_error("%s: unknown policy '%s' (at most %d; see 'moebench list policies')", cmd, tok, max);
      return 2;
    }
    if (cache) snprintf(cache[*np], CLI_CACHE_MAX, "%s", c ? c : "");
    for (int k = 0; k < *np; k++)
      if (pol[k] == pol[*np] && (!cache || strcmp(cache[k], cache[*np]) == 0)) {
        cli_error("%s: --policies lists '%s' twice", cmd, tok);
        return 2;
      }
    (*np)++;
  }
  return 0;
}

const moe_backend_ops *cli_resolve_backend(const char *name, int threads, double *link,
                                           const char *hardware, char *device, size_t cap) {
  const moe_backend_ops *o = strcmp(name, "auto") == 0 ? moe_backend_auto() : moe_backend_find(name);
  moe_error err = {0};
  if (o == NULL) {
    moe_device *probe = NULL;
    (void)moe_device_create(&probe, name, NULL, &err); /* the registry's own message */
    cli_fail(&err);
    return NULL;
  }
  if (*link != 0 && !(o->caps & MOE_BACKEND_CAP_LINK_CAP)) {
    fprintf(stderr, "moebench: note: the %s backend copies over its real link; link cap %g GB/s "
                    "ignored (rows record 0)\n", o->name, *link);
    *link = 0;
  }
  moe_device *dev = NULL;
  moe_backend_options bo = {.threads = threads, .link_gbps = *link,
                            .hardware = (o->caps & MOE_BACKEND_CAP_MODELED) ? hardware : NULL};
  if (moe_device_create_ops(&dev, o, &bo, &err) != MOE_OK) {
    cli_fail(&err);
    return NULL;
  }
  snprintf(device, cap, "%s", moe_device_name(dev));
  moe_device_destroy(dev);
  return o;
}

int cli_check_sim(const char *cmd, const char *backend, const char *hw_name, const char *sim_routing,
                  char *hw_path, size_t cap) {
  const bool sim = cli_backend_modeled(backend);
  if (sim && hw_name == NULL) {
    cli_error("%s: --backend sim needs --hardware NAME (see 'moebench list hardware')", cmd);
    return 2;
  }
  /* on a measured backend a profile only gives a cost-weighing policy
   * (fiddler) its figures; the times stay measured */
  if (!sim && sim_routing) {
    cli_error("%s: --sim-routing is for --backend sim", cmd);
    return 2;
  }
  if (hw_name) cli_hw_path(hw_name, hw_path, cap);
  return 0;
}

int cli_temp_dir(const char *cmd, char *dir, size_t cap) {
  const char *tmpdir = getenv("TMPDIR");
  snprintf(dir, cap, "%s/moebench-%s-XXXXXX", tmpdir && tmpdir[0] ? tmpdir : "/tmp", cmd);
  if (mkdtemp(dir) != NULL) return 0;
  cli_error("%s: cannot create a temporary directory: %s", cmd, strerror(errno));
  return 1;
}
