/* The harness's reader of op traces (trace_reader.h). */
#include "trace_reader.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/jsonfile.h"

/* The first line of every trace engine/src/trace.c writes. */
#define TRACE_HEADER "{\"displayTimeUnit\": \"ms\", \"traceEvents\": ["

const char *trace_str(const void *e, const char *key) {
  json_t *v = json_is_object((json_t *)e) ? json_object_get((json_t *)e, key) : NULL;
  return json_is_string(v) ? json_string_value(v) : NULL;
}

bool trace_clock_modeled(const void *e) {
  const char *ph = trace_str(e, "ph"), *name = trace_str(e, "name");
  if (!ph || !name || strcmp(ph, "M") != 0 || strcmp(name, "moe_clock") != 0) return false;
  json_t *args = json_object_get((json_t *)e, "args");
  json_t *ck = json_is_object(args) ? json_object_get(args, "clock") : NULL;
  return json_is_string(ck) && !strcmp(json_string_value(ck), "modeled");
}

static bool is_forward_mark(json_t *e) {
  const char *ph = trace_str(e, "ph"), *name = trace_str(e, "name");
  return ph && name && !strcmp(ph, "i") && !strcmp(name, "forward");
}

moe_status trace_read_json(const void *json, const char *path, const trace_reader *r,
                           moe_error *err) {
  json_t *root = (json_t *)json;
  json_t *arr = json_is_object(root) ? json_object_get(root, "traceEvents") : NULL;
  if (!json_is_array(arr))
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: not a trace (no traceEvents array)", path);
  bool marks = false;
  size_t i;
  json_t *e;
  json_array_foreach(arr, i, e) if ((marks = is_forward_mark(e))) break;
  const moe_status st = r->begin ? r->begin(r->ctx, marks, err) : MOE_OK;
  if (st != MOE_OK) return st;
  json_array_foreach(arr, i, e) {
    const moe_status est = r->event(r->ctx, e, i, err);
    if (est != MOE_OK) return est;
  }
  return MOE_OK;
}

/* One line of a streamed trace: its event, or the end (']}'). */
static moe_status stream_line(char *line, ssize_t len, const char *path, const trace_reader *r,
                              size_t *i, bool *closed, moe_error *err) {
  while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' '))
    line[--len] = '\0';
  if (len > 0 && line[len - 1] == ',') line[--len] = '\0';
  if (len == 0) return MOE_OK;
  if (!strcmp(line, "]}")) {
    *closed = true;
    return MOE_OK;
  }
  json_error_t je;
  json_t *e = json_loadb(line, (size_t)len, JSON_REJECT_DUPLICATES, &je);
  moe_status st;
  if (!json_is_object(e))
    st = MOE_FAIL(err, MOE_ERR_FORMAT, "%s: event %zu is not a JSON object: %s", path, *i,
                  e ? "another JSON value" : je.text);
  else
    st = r->event(r->ctx, e, *i, err);
  json_decref(e);
  (*i)++;
  return st;
}

static moe_status trace_stream(FILE *f, const char *path, const trace_reader *r, moe_error *err) {
  char *line = NULL;
  size_t cap = 0, i = 0;
  ssize_t len;
  /* pass 1: does the engine mark its forward passes? */
  bool marks = false;
  while (!marks && (len = getline(&line, &cap, f)) >= 0)
    marks = strstr(line, "\"ph\": \"i\"") && strstr(line, "\"name\": \"forward\"");
  rewind(f);
  moe_status st = r->begin ? r->begin(r->ctx, marks, err) : MOE_OK;
  bool closed = false;
  if (st == MOE_OK) len = getline(&line, &cap, f); /* the header */
  while (st == MOE_OK && !closed && (len = getline(&line, &cap, f)) >= 0)
    st = stream_line(line, len, path, r, &i, &closed, err);
  /* nothing but white space may follow the end */
  while (st == MOE_OK && closed && (len = getline(&line, &cap, f)) >= 0)
    if (strspn(line, " \t\r\n") != (size_t)len)
      st = MOE_FAIL(err, MOE_ERR_FORMAT, "%s: data after the trace's end (']}')", path);
  if (st == MOE_OK && !closed)
    st = MOE_FAIL(err, MOE_ERR_FORMAT, "%s: the trace ends early (no closing ']}': a run cut short?)",
                  path);
  free(line);
  return st;
}

moe_status trace_read(const char *path, const trace_reader *r, moe_error *err) {
  FILE *f = moe_fopen_regular(path, err);
  if (f == NULL) return err ? err->status : MOE_ERR_IO;
  char head[sizeof TRACE_HEADER + 2] = "";
  const size_t got = fread(head, 1, sizeof TRACE_HEADER - 1, f);
  head[got] = '\0';
  if (strcmp(head, TRACE_HEADER) == 0) {
    rewind(f);
    const moe_status st = trace_stream(f, path, r, err);
    fclose(f);
    return st;
  }
  fclose(f);
  json_t *root = moe_json_load_file(path, err);
  if (root == NULL) return err ? err->status : MOE_ERR_IO;
  const moe_status st = trace_read_json(root, path, r, err);
  json_decref(root);
  return st;
}
