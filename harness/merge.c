/* moebench merge: joins the result files of a sharded sweep (sweep --shard
 * K/N) into one CSV + JSON, as if one machine had run the whole suite.
 *
 * Refused (exit 2, nothing written): a file that does not read as this
 * schema, two rows with one key (a shard given twice, or overlapping
 * shards), rows measured on different devices unless
 * --allow-device-change, shards of different suites or shard counts, an
 * input without its JSON, shards of two versions of one suite (the suite
 * file's hash in their metadata differs), an output that is an input.
 * Incomplete (exit 1, nothing written unless --allow-partial): a shard of
 * 1..N missing, or fewer rows than the shards expected. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moe/jsonfile.h"
#include "moe/publish.h"
#include "cli.h"
#include "flags.h"
#include "commands.h"
#include "results.h"

enum { MERGE_MAX = 1024 };

void merge_usage(FILE *f) {
  fprintf(f,
          "usage: moebench merge SHARD... -o OUT [options]\n\n"
          "Joins the results of 'moebench sweep SUITE --shard K/N' (each SHARD a prefix\n"
          "or its .csv) into OUT.csv and OUT.json.  Checks that every shard 1..N of one\n"
          "suite is there and that the rows add up to what the shards planned; refuses\n"
          "files of another schema, repeated row keys, rows from different devices, an\n"
          "input without its JSON (SHARD.json, which names the suite, shard and version),\n"
          "shards of two versions of a suite (their suite file differed) and an OUT that\n"
          "is one of the inputs.\n\n"
          "  -o, --out OUT            output prefix (required)\n"
          "  --allow-device-change    merge rows measured on different devices\n"
          "  --allow-partial          write what is there even when shards or rows are missing\n"
          "  -h, --help               this text\n");
}

/* The prefix of a shard argument: without a trailing .csv. */
static void prefix_of(const char *arg, char *buf, size_t cap) {
  snprintf(buf, cap, "%s", arg);
  size_t n = strlen(buf);
  if (n > 4 && strcmp(buf + n - 4, ".csv") == 0) buf[n - 4] = '\0';
}

/* The suite a results file's metadata names ("?" when none). */
static const char *sn_of(json_t *m) {
  const char *s = json_string_value(json_object_get(m, "suite"));
  return s ? s : "?";
}

/* A shard's metadata (PATH.json beside its CSV, a regular file): *j the
 * document, *m its metadata.  The suite file's hash must be the one the
 * earlier shards had (suite_hash, from hash_src; set by the first).
 * Returns 0, or 1 after a line naming the file. */
static int shard_metadata(const char *path, json_t **j, json_t **m, char suite_hash[17],
                          char hash_src[1200]) {
  moe_error jerr = {0};
  *j = moe_json_load_file(path, &jerr);
  *m = *j ? json_object_get(*j, "metadata") : NULL;
  if (!json_is_object(*m)) {
    if (*j) cli_error("%s: no 'metadata' object; merge needs every input's JSON beside its CSV "
                      "(the suite, shard and version it was written by)", path);
    else cli_error("%s; merge needs every input's JSON beside its CSV (the suite, shard and "
                   "version it was written by)", jerr.msg);
    json_decref(*j);
    return 1;
  }
  const char *hash = json_string_value(json_object_get(*m, "suite_hash"));
  if (hash && suite_hash[0] && strcmp(hash, suite_hash) != 0) {
    cli_error("%s: written by another version of suite '%s' (suite file hash %s, not %s as "
              "%s's); rerun the shards from one version", path, sn_of(*m), hash, suite_hash,
              hash_src);
    json_decref(*j);
    return 1;
  }
  if (hash && !suite_hash[0]) {
    snprintf(suite_hash, 17, "%s", hash);
    snprintf(hash_src, 1200, "%s", path);
  }
  return 0;
}

/* Whether OUT.csv or OUT.json is one of the n inputs' files (printed). */
static int merge_clobbers(char **inputs, int n, const char *out) {
  for (int i = 0; i < n; i++) {
    char prefix[1100], in[1200], o[MOE_PUBLISH_PATH_MAX + 8];
    prefix_of(inputs[i], prefix, sizeof prefix);
    for (int k = 0; k < 4; k++) {
      snprintf(in, sizeof in, "%s.%s", prefix, k % 2 ? "json" : "csv");
      snprintf(o, sizeof o, "%s.%s", out, k / 2 ? "json" : "csv");
      if (cli_output_clobbers("merge", o, in)) return 1;
    }
  }
  return 0;
}

/* One merge's state, shared by its steps. */
typedef struct merge_state {
  char **inputs;           /* the shard arguments */
  int n_in;
  bool allow_device;
  res_table all;
  int *from;               /* input index of each row */
  json_t *sources, *meta;
  char suite_name[256], device[256], suite_hash[17], hash_src[1200];
  int shard_n, expected, suite_rows;
  bool seen[MERGE_MAX + 1], have_shards;
} merge_state;

/* merge's flags. */
typedef struct merge_flags {
  const char *out;
  bool allow_device, allow_partial;
} merge_flags;

/* One flag into a merge_flags (flags_getopt). */
static int merge_take(void *ctx, int c, const char *arg) {
  merge_flags *f = ctx;
  switch (c) {
    case 'o':
      if (cli_check_prefix("merge", arg) != 0) return 2;
      f->out = arg;
      return 0;
    case 'D': f->allow_device = true; return 0;
    case 'P': f->allow_partial = true; return 0;
    default: return -1;
  }
}

/* The flags; -1 to go on, else the exit code. */
static int merge_parse(int argc, char **argv, merge_flags *f) {
  static const struct option opts[] = {{"out", required_argument, 0, 'o'},
                                       {"allow-device-change", no_argument, 0, 'D'},
                                       {"allow-partial", no_argument, 0, 'P'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const int rc = flags_getopt("merge", argc, argv, "ho:", opts, merge_take, f, merge_usage);
  if (rc >= 0) return rc;
  const int n_in = argc - optind;
  if (f->out == NULL || n_in < 1 || n_in > MERGE_MAX) {
    cli_error("merge: give 1..%d shard files and -o OUT (see --help)", MERGE_MAX);
    return 2;
  }
  return -1;
}

/* The shard a file's metadata m names (none: a whole suite's file), which
 * must belong with the others'.  0, or 1 after a line naming path. */
static int merge_shard(merge_state *ms, const char *path, json_t *m) {
  const char *sn = json_string_value(json_object_get(m, "suite"));
  const char *sh = json_string_value(json_object_get(m, "shard"));
  json_t *re = json_object_get(m, "rows_expected"), *sr = json_object_get(m, "suite_rows");
  int k = 0, n = 0;
  if (!(sh && sscanf(sh, "%d/%d", &k, &n) == 2 && k >= 1 && k <= n && n <= MERGE_MAX)) return 0;
  if ((ms->shard_n && n != ms->shard_n) || (ms->suite_name[0] && sn && strcmp(sn, ms->suite_name) != 0)) {
    cli_error("%s: shard %d/%d of suite '%s' does not belong with the others (%d shards of "
              "'%s')", path, k, n, sn ? sn : "?", ms->shard_n, ms->suite_name);
    return 1;
  }
  if (ms->seen[k]) {
    cli_error("%s: shard %d/%d is given twice", path, k, n);
    return 1;
  }
  ms->seen[k] = true;
  ms->shard_n = n;
  ms->have_shards = true;
  if (sn) snprintf(ms->suite_name, sizeof ms->suite_name, "%s", sn);
  if (json_is_integer(re)) ms->expected += (int)json_integer_value(re);
  if (json_is_integer(sr)) ms->suite_rows = (int)json_integer_value(sr);
  return 0;
}

/* Appends input i's rows t (its CSV, PREFIX.csv), all on one device unless
 * allowed.  0, or 1 after printing why. */
static int merge_rows(merge_state *ms, int i, const char *prefix, const res_table *t) {
  int *grown = realloc(ms->from, (ms->all.n + t->n + 1) * sizeof *ms->from);
  if (grown == NULL) {
    cli_error("merge: out of host memory");
    return 1;
  }
  ms->from = grown;
  for (size_t r = 0; r < t->n; r++) {
    const char *dv = res_get(&t->rows[r], "device");
    if (!ms->device[0]) snprintf(ms->device, sizeof ms->device, "%s", dv ? dv : "");
    if (!ms->allow_device && dv && strcmp(dv, ms->device) != 0) {
      cli_error("%s.csv: row %zu was measured on '%s', other rows on '%s' (merge them with "
                "--allow-device-change)", prefix, r + 2, dv, ms->device);
      return 1;
    }
    res_row *nr = res_table_add(&ms->all);
    if (nr == NULL) {
      cli_error("merge: out of host memory");
      return 1;
    }
    for (size_t col = 0; col < res_ncols; col++) res_set(nr, res_columns[col].name, t->rows[r].v[col]);
    ms->from[ms->all.n - 1] = i;
  }
  return 0;
}

/* Input i: its CSV and its metadata (required: which suite, shard and
 * version wrote the rows cannot be checked without it).  0, or 1. */
static int merge_input(merge_state *ms, int i) {
  char prefix[1100], path[1200];
  prefix_of(ms->inputs[i], prefix, sizeof prefix);
  snprintf(path, sizeof path, "%s.csv", prefix);
  res_table t;
  res_table_init(&t);
  moe_error err = {0};
  int rc = 1;
  json_t *j = NULL, *m = NULL;
  if (res_read_csv(path, &t, &err) != MOE_OK || res_check_values(&t, path, &err) != MOE_OK) {
    cli_fail(&err);
    res_table_free(&t);
    return 1;
  }
  snprintf(path, sizeof path, "%s.json", prefix);
  if (shard_metadata(path, &j, &m, ms->suite_hash, ms->hash_src) != 0) { /* it freed j */
    res_table_free(&t);
    return 1;
  }
  if (merge_shard(ms, path, m) == 0) {
    if (ms->meta == NULL) ms->meta = json_deep_copy(m);
    json_array_append_new(ms->sources, json_string(ms->inputs[i]));
    rc = merge_rows(ms, i, prefix, &t);
  }
  json_decref(j);
  res_table_free(&t);
  return rc;
}

/* A row in two inputs: shards must not overlap.  0, or 1 after printing. */
static int merge_overlap(merge_state *ms, res_index **ix) {
  long dup = -1;
  *ix = res_index_build(&ms->all, NULL, &dup);
  if (*ix == NULL) {
    cli_error("merge: out of host memory");
    return 1;
  }
  if (dup < 0) return 0;
  char key[RES_KEY_MAX];
  res_key(&ms->all.rows[dup], key, sizeof key);
  long other = -1;
  for (size_t r = 0; r < ms->all.n && other < 0; r++) {
    char k2[RES_KEY_MAX];
    res_key(&ms->all.rows[r], k2, sizeof k2);
    if ((long)r != dup && strcmp(k2, key) == 0) other = (long)r;
  }
  cli_error("merge: the row %s is in %s and in %s: shards must not overlap", key,
            ms->inputs[ms->from[other >= 0 ? other : dup]], ms->inputs[ms->from[dup]]);
  return 1;
}

/* Whether the shards leave rows out (each gap printed). */
static bool merge_partial(const merge_state *ms) {
  if (!ms->have_shards) return false;
  bool partial = false;
  for (int k = 1; k <= ms->shard_n; k++)
    if (!ms->seen[k]) {
      fprintf(stderr, "moebench: merge: shard %d/%d of suite '%s' is missing\n", k, ms->shard_n,
              ms->suite_name);
      partial = true;
    }
  if (!partial && (size_t)ms->expected != ms->all.n) {
    fprintf(stderr, "moebench: merge: the shards planned %d rows and hold %zu (%d missing)\n",
            ms->expected, ms->all.n, ms->expected - (int)ms->all.n);
    partial = true;
  }
  if (!partial && ms->suite_rows >= 0 && (size_t)ms->suite_rows != ms->all.n) {
    fprintf(stderr, "moebench: merge: suite '%s' has %d rows, the shards %zu\n", ms->suite_name,
            ms->suite_rows, ms->all.n);
    partial = true;
  }
  return partial;
}

/* OUT.csv and OUT.json, under OUT.lock.  0, or 1 after printing why. */
static int merge_write(merge_state *ms, const char *out, bool partial) {
  if (ms->meta == NULL) ms->meta = json_object();
  json_object_del(ms->meta, "shard");
  json_object_del(ms->meta, "rows_expected");
  json_object_set_new(ms->meta, "merged_from", ms->sources);
  ms->sources = NULL;
  json_object_set_new(ms->meta, "merged_complete", json_boolean(!partial));
  cli_mkdir_parent(out);
  const int lock = cli_lock_prefix("merge", out);
  if (lock < 0) return 1;
  int rc = 1;
  char path[MOE_PUBLISH_PATH_MAX + 8];
  moe_error err = {0};
  snprintf(path, sizeof path, "%s.csv", out);
  if (merge_clobbers(ms->inputs, ms->n_in, out)) {
    /* printed */
  } else if (res_write_csv(path, &ms->all, &err) != MOE_OK) {
    cli_fail(&err);
  } else {
    snprintf(path, sizeof path, "%s.json", out);
    json_t *m2 = ms->meta; /* res_write_json takes it */
    ms->meta = NULL;
    rc = res_write_json(path, &ms->all, m2, &err) != MOE_OK ? cli_fail(&err) : 0;
  }
  close(lock);
  return rc;
}

int cmd_merge(int argc, char **argv) {
  merge_flags f = {0};
  int rc = merge_parse(argc, argv, &f);
  if (rc >= 0) return rc;
  const char *out = f.out;
  const bool allow_partial = f.allow_partial;
  merge_state ms = {.suite_rows = -1, .allow_device = f.allow_device};
  ms.inputs = argv + optind;
  ms.n_in = argc - optind;
  res_table_init(&ms.all);
  ms.sources = json_array();
  res_index *ix = NULL;
  rc = 2;
  int i = 0;
  while (i < ms.n_in && merge_input(&ms, i) == 0) i++;
  if (i == ms.n_in && merge_overlap(&ms, &ix) == 0) {
    const bool partial = merge_partial(&ms);
    rc = 1;
    if (partial && !allow_partial)
      cli_error("merge: incomplete; nothing written (--allow-partial writes what is there)");
    else if (merge_write(&ms, out, partial) == 0) {
      fprintf(stderr, "merge: %zu rows from %d file%s%s into %s.csv and %s.json\n", ms.all.n,
              ms.n_in, ms.n_in == 1 ? "" : "s", partial ? " (partial)" : "", out, out);
      rc = partial ? 1 : 0;
    }
  }
  res_index_free(ix);
  res_table_free(&ms.all);
  json_decref(ms.sources);
  json_decref(ms.meta);
  free(ms.from);
  return rc;
}
