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
#include "commands.h"
#include "results.h"

enum { MERGE_MAX = 1024 };

static void merge_usage(FILE *f) {
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

int cmd_merge(int argc, char **argv) {
  static const struct option opts[] = {{"out", required_argument, 0, 'o'},
                                       {"allow-device-change", no_argument, 0, 'D'},
                                       {"allow-partial", no_argument, 0, 'P'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *out = NULL;
  bool allow_device = false, allow_partial = false;
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
    switch (c) {
      case 'o':
        if (cli_check_prefix("merge", optarg) != 0) return 2;
        out = optarg;
        break;
      case 'D': allow_device = true; break;
      case 'P': allow_partial = true; break;
      case 'h': merge_usage(stdout); return 0;
      default:
        cli_error("merge: unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
        return 2;
    }
  }
  const int n_in = argc - optind;
  if (out == NULL || n_in < 1 || n_in > MERGE_MAX) {
    cli_error("merge: give 1..%d shard files and -o OUT (see --help)", MERGE_MAX);
    return 2;
  }
  int rc = 2;
  res_table all;
  res_table_init(&all);
  res_index *ix = NULL;
  json_t *sources = json_array(), *meta = NULL;
  int *from = NULL; /* input index of each row */
  char suite_name[256] = "", device[256] = "", suite_hash[17] = "", hash_src[1200] = "";
  int shard_n = 0, expected = 0, suite_rows = -1;
  bool seen[MERGE_MAX + 1] = {false}, have_shards = false;
  moe_error err = {0};
  int lock = -1; /* OUT.lock while OUT is written */
  for (int i = 0; i < n_in; i++) {
    char prefix[1100], path[1200];
    prefix_of(argv[optind + i], prefix, sizeof prefix);
    snprintf(path, sizeof path, "%s.csv", prefix);
    res_table t;
    res_table_init(&t);
    if (res_read_csv(path, &t, &err) != MOE_OK || res_check_values(&t, path, &err) != MOE_OK) {
      cli_fail(&err);
      res_table_free(&t);
      goto done;
    }
    /* the file's metadata: required (which suite, shard and version wrote
     * the rows cannot be checked without it) */
    snprintf(path, sizeof path, "%s.json", prefix);
    json_t *j = NULL, *m = NULL;
    if (shard_metadata(path, &j, &m, suite_hash, hash_src) != 0) {
      res_table_free(&t);
      goto done;
    }
    /* m is the metadata object (shard_metadata refused a file without one) */
    const char *sn = json_string_value(json_object_get(m, "suite"));
    const char *sh = json_string_value(json_object_get(m, "shard"));
    json_t *re = json_object_get(m, "rows_expected"), *sr = json_object_get(m, "suite_rows");
    int k = 0, n = 0;
    if (sh && sscanf(sh, "%d/%d", &k, &n) == 2 && k >= 1 && k <= n && n <= MERGE_MAX) {
      if ((shard_n && n != shard_n) || (suite_name[0] && sn && strcmp(sn, suite_name) != 0)) {
        cli_error("%s: shard %d/%d of suite '%s' does not belong with the others (%d shards of "
                  "'%s')", path, k, n, sn ? sn : "?", shard_n, suite_name);
        json_decref(j);
        res_table_free(&t);
        goto done;
      }
      if (seen[k]) {
        cli_error("%s: shard %d/%d is given twice", path, k, n);
        json_decref(j);
        res_table_free(&t);
        goto done;
      }
      seen[k] = true;
      shard_n = n;
      have_shards = true;
      if (sn) snprintf(suite_name, sizeof suite_name, "%s", sn);
      if (json_is_integer(re)) expected += (int)json_integer_value(re);
      if (json_is_integer(sr)) suite_rows = (int)json_integer_value(sr);
    }
    if (meta == NULL) meta = json_deep_copy(m);
    json_decref(j);
    json_array_append_new(sources, json_string(argv[optind + i]));
    int *grown = realloc(from, (all.n + t.n + 1) * sizeof *from);
    if (grown == NULL) {
      cli_error("merge: out of host memory");
      res_table_free(&t);
      goto done;
    }
    from = grown;
    for (size_t r = 0; r < t.n; r++) {
      const char *dv = res_get(&t.rows[r], "device");
      if (!device[0]) snprintf(device, sizeof device, "%s", dv ? dv : "");
      if (!allow_device && dv && strcmp(dv, device) != 0) {
        cli_error("%s.csv: row %zu was measured on '%s', other rows on '%s' (merge them with "
                  "--allow-device-change)", prefix, r + 2, dv, device);
        res_table_free(&t);
        goto done;
      }
      res_row *nr = res_table_add(&all);
      if (nr == NULL) {
        cli_error("merge: out of host memory");
        res_table_free(&t);
        goto done;
      }
      for (size_t col = 0; col < res_ncols; col++) res_set(nr, res_columns[col].name, t.rows[r].v[col]);
      from[all.n - 1] = i;
    }
    res_table_free(&t);
  }
  long dup = -1;
  ix = res_index_build(&all, NULL, &dup);
  if (ix == NULL) {
    cli_error("merge: out of host memory");
    goto done;
  }
  if (dup >= 0) {
    char key[RES_KEY_MAX];
    res_key(&all.rows[dup], key, sizeof key);
    long other = -1;
    for (size_t r = 0; r < all.n && other < 0; r++) {
      char k2[RES_KEY_MAX];
      res_key(&all.rows[r], k2, sizeof k2);
      if ((long)r != dup && strcmp(k2, key) == 0) other = (long)r;
    }
    cli_error("merge: the row %s is in %s and in %s: shards must not overlap", key,
              argv[optind + from[other >= 0 ? other : dup]], argv[optind + from[dup]]);
    goto done;
  }
  /* completeness */
  rc = 1;
  bool partial = false;
  if (have_shards) {
    for (int k = 1; k <= shard_n; k++)
      if (!seen[k]) {
        fprintf(stderr, "moebench: merge: shard %d/%d of suite '%s' is missing\n", k, shard_n,
                suite_name);
        partial = true;
      }
    if (!partial && (size_t)expected != all.n) {
      fprintf(stderr, "moebench: merge: the shards planned %d rows and hold %zu (%d missing)\n",
              expected, all.n, expected - (int)all.n);
      partial = true;
    }
    if (!partial && suite_rows >= 0 && (size_t)suite_rows != all.n) {
      fprintf(stderr, "moebench: merge: suite '%s' has %d rows, the shards %zu\n", suite_name,
              suite_rows, all.n);
      partial = true;
    }
  }
  if (partial && !allow_partial) {
    cli_error("merge: incomplete; nothing written (--allow-partial writes what is there)");
    goto done;
  }
  if (meta == NULL) meta = json_object();
  json_object_del(meta, "shard");
  json_object_del(meta, "rows_expected");
  json_object_set_new(meta, "merged_from", sources);
  sources = NULL;
  json_object_set_new(meta, "merged_complete", json_boolean(!partial));
  char path[MOE_PUBLISH_PATH_MAX + 8];
  cli_mkdir_parent(out);
  if ((lock = cli_lock_prefix("merge", out)) < 0) goto done;
  if (merge_clobbers(argv + optind, n_in, out)) goto done;
  snprintf(path, sizeof path, "%s.csv", out);
  if (res_write_csv(path, &all, &err) != MOE_OK) {
    cli_fail(&err);
    goto done;
  }
  snprintf(path, sizeof path, "%s.json", out);
  json_t *m2 = meta;
  meta = NULL;
  if (res_write_json(path, &all, m2, &err) != MOE_OK) {
    cli_fail(&err);
    goto done;
  }
  fprintf(stderr, "merge: %zu rows from %d file%s%s into %s.csv and %s.json\n", all.n, n_in,
          n_in == 1 ? "" : "s", partial ? " (partial)" : "", out, out);
  rc = partial ? 1 : 0;
done:
  if (lock >= 0) close(lock);
  res_index_free(ix);
  res_table_free(&all);
  json_decref(sources);
  json_decref(meta);
  free(from);
  return rc;
}
