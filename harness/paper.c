/* The paper's figures as data (paper.h). */
#include "paper.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAPER_MAX 64

static paper_figure figs[PAPER_MAX];
static size_t n_figs;
static int loaded; /* 0 not yet, 1 read, -1 failed */
static char failure[300];
static char loaded_path[1024]; /* the file read (a changed $MOE_PAPER_FILE reads again) */

const char *paper_path(void) {
  const char *env = getenv("MOE_PAPER_FILE");
  return env && env[0] ? env : MOE_SOURCE_DIR "/workloads/paper/pregated-moe.json";
}

static void copy_str(char *dst, size_t cap, json_t *v) {
  snprintf(dst, cap, "%s", json_is_string(v) ? json_string_value(v) : "");
}

/* One entry of "figures": 0, or -1 with why. */
static int read_figure(json_t *f, paper_figure *out) {
  json_t *k = json_object_get(f, "key"), *v = json_object_get(f, "value");
  if (!json_is_string(k) || json_string_length(k) == 0 || !json_is_number(v) ||
      !isfinite(json_number_value(v)) || !json_is_string(json_object_get(f, "source"))) {
    snprintf(failure, sizeof failure, "%s: a figure needs a key, a finite value and a source",
             paper_path());
    return -1;
  }
  copy_str(out->key, sizeof out->key, k);
  copy_str(out->unit, sizeof out->unit, json_object_get(f, "unit"));
  copy_str(out->model, sizeof out->model, json_object_get(f, "model"));
  copy_str(out->source, sizeof out->source, json_object_get(f, "source"));
  out->value = json_number_value(v);
  return 0;
}

static void load(void) {
  if (loaded && strcmp(loaded_path, paper_path()) == 0) return;
  snprintf(loaded_path, sizeof loaded_path, "%s", paper_path());
  n_figs = 0;
  loaded = -1;
  json_error_t je;
  json_t *root = json_load_file(paper_path(), JSON_REJECT_DUPLICATES, &je);
  json_t *arr = root ? json_object_get(root, "figures") : NULL;
  if (!json_is_array(arr) || json_array_size(arr) > PAPER_MAX) {
    snprintf(failure, sizeof failure, "%s: %s", paper_path(),
             root ? "expected an object with an array 'figures' (at most 64)" : je.text);
    json_decref(root);
    return;
  }
  size_t i;
  json_t *f;
  json_array_foreach(arr, i, f) {
    if (read_figure(f, &figs[i]) != 0) {
      json_decref(root);
      return;
    }
  }
  n_figs = json_array_size(arr);
  loaded = 1;
  json_decref(root);
}

const paper_figure *paper_all(size_t *n, const char **why) {
  load();
  *n = loaded == 1 ? n_figs : 0;
  if (why) *why = loaded == 1 ? NULL : failure;
  return loaded == 1 ? figs : NULL;
}

const paper_figure *paper_get(const char *key) {
  load();
  for (size_t i = 0; loaded == 1 && i < n_figs; i++)
    if (strcmp(figs[i].key, key) == 0) return &figs[i];
  return NULL;
}

double paper_value(const char *key) {
  const paper_figure *f = paper_get(key);
  return f ? f->value : NAN;
}

const char *paper_fmt(char *buf, size_t cap, const char *key) {
  const paper_figure *f = paper_get(key);
  if (f == NULL) snprintf(buf, cap, "?");
  else if (strcmp(f->unit, "ratio") == 0) snprintf(buf, cap, "%.0f%%", 100 * f->value);
  else if (strcmp(f->unit, "change") == 0) snprintf(buf, cap, "%+.1f%%", 100 * f->value);
  else if (strcmp(f->unit, "x") == 0) snprintf(buf, cap, "%gx", f->value);
  else if (strcmp(f->unit, "score") == 0) snprintf(buf, cap, "%g", f->value);
  else snprintf(buf, cap, "%g %s", f->value, f->unit);
  return buf;
}
