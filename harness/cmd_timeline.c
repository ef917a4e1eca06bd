/* moebench timeline: one forward pass of an op trace (--trace FILE of
 * generate or run) drawn as an SVG picture: the compute and copy tracks
 * on one time axis, so copies overlapping compute, waits and misses can
 * be seen without a trace viewer.  A forward starts at an "embed" op; the
 * picture spans it to the next one (or the end of the trace). */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "moe/jsonfile.h"
#include "moe/publish.h"

typedef struct tl_event {
  int tid;            /* 1 compute, 2 copy */
  double ts, dur;     /* microseconds */
  const char *name;
  int layer, expert;
} tl_event;

/* name with &, <, >, " escaped for SVG text and attributes */
static void xml(FILE *f, const char *s) {
  for (; *s; s++) {
    if (*s == '&') fputs("&amp;", f);
    else if (*s == '<') fputs("&lt;", f);
    else if (*s == '>') fputs("&gt;", f);
    else if (*s == '"') fputs("&quot;", f);
    else if ((unsigned char)*s < 0x20) fputc(' ', f);
    else fputc(*s, f);
  }
}

static const char *color(const tl_event *e) {
  if (e->tid == 2) return "#ee8833";
  if (!strcmp(e->name, "wait for copy")) return "#cc2222";
  if (!strcmp(e->name, "matmul")) return "#4477aa";
  if (!strcmp(e->name, "attention")) return "#228833";
  return "#99aabb";
}

int cmd_timeline(int argc, char **argv) {
  static const struct option opts[] = {{"out", required_argument, 0, 'o'},
                                       {"forward", required_argument, 0, 'f'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *out = NULL;
  long back = 1;
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
    switch (c) {
      case 'o': out = optarg; break;
      case 'f':
        if (!cli_parse_int(optarg, 1, 1 << 20, &back)) {
          cli_error("timeline: invalid value '%s' for --forward", optarg);
          return 2;
        }
        break;
      case 'h':
        printf("usage: moebench timeline TRACE.json -o OUT.svg [--forward N]\n\n"
               "Draws one forward pass of an op trace (generate/run --trace) as SVG: the\n"
               "compute track (matmuls blue, attention green, other ops grey, waits for\n"
               "copies red) above the copy track (orange), on one time axis.\n\n"
               "  -o, --out FILE   the SVG to write (temporary file + rename)\n"
               "  --forward N      the N-th forward from the end (default 1: the last, a\n"
               "                   decode step; the first forward is the prefill)\n"
               "  -h, --help       this text\n");
        return 0;
      default:
        cli_error("timeline: unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
        return 2;
    }
  }
  if (argc - optind != 1 || out == NULL || out[0] == '\0') {
    cli_error("timeline: give one trace file and -o OUT.svg");
    return 2;
  }
  const char *path = argv[optind];
  if (cli_output_clobbers("timeline", out, path)) return 2;
  moe_error err = {0};
  json_t *root = moe_json_load_file(path, &err);
  if (root == NULL) return cli_fail(&err);
  int rc = 1;
  tl_event *ev = NULL;
  FILE *f = NULL;
  moe_publish pub = {0};
  json_t *arr = json_is_object(root) ? json_object_get(root, "traceEvents") : NULL;
  if (!json_is_array(arr)) {
    cli_error("%s: not a trace (no traceEvents array)", path);
    goto done;
  }
  size_t n = 0, i;
  json_t *e;
  ev = calloc(json_array_size(arr) + 1, sizeof *ev);
  if (ev == NULL) {
    cli_error("%s: out of memory", path);
    goto done;
  }
  bool modeled = false;
  json_array_foreach(arr, i, e) {
    json_t *ph = json_object_get(e, "ph");
    if (json_is_string(ph) && !strcmp(json_string_value(ph), "M") &&
        json_is_string(json_object_get(e, "name")) &&
        !strcmp(json_string_value(json_object_get(e, "name")), "moe_clock")) {
      json_t *ck = json_object_get(json_object_get(e, "args"), "clock");
      modeled = json_is_string(ck) && !strcmp(json_string_value(ck), "modeled");
    }
    if (!json_is_string(ph) || strcmp(json_string_value(ph), "X") != 0) continue;
    json_t *tid = json_object_get(e, "tid"), *ts = json_object_get(e, "ts"),
           *dur = json_object_get(e, "dur"), *nm = json_object_get(e, "name"),
           *args = json_object_get(e, "args");
    if (!json_is_integer(tid) || !json_is_number(ts) || !json_is_number(dur) || !json_is_string(nm) ||
        json_number_value(dur) < 0) {
      cli_error("%s: event %zu is not a complete event (tid, ts, dur, name)", path, i);
      goto done;
    }
    tl_event *t = &ev[n++];
    t->tid = (int)json_integer_value(tid);
    t->ts = json_number_value(ts);
    t->dur = json_number_value(dur);
    t->name = json_string_value(nm);
    json_t *ly = json_is_object(args) ? json_object_get(args, "layer") : NULL,
           *ex = json_is_object(args) ? json_object_get(args, "expert") : NULL;
    t->layer = json_is_integer(ly) ? (int)json_integer_value(ly) : -1;
    t->expert = json_is_integer(ex) ? (int)json_integer_value(ex) : -1;
  }
  /* the forward: from the back-th last "embed" on the compute track */
  double t0 = -1, t1 = -1;
  long seen = 0;
  for (size_t k = n; k-- > 0;)
    if (ev[k].tid == 1 && !strcmp(ev[k].name, "embed") && ++seen == back) {
      t0 = ev[k].ts;
      for (size_t j = k + 1; j < n; j++)
        if (ev[j].tid == 1 && !strcmp(ev[j].name, "embed")) {
          t1 = ev[j].ts;
          break;
        }
      break;
    }
  if (t0 < 0) {
    cli_error("%s: the trace holds %ld forward pass(es) (embed ops); --forward %ld is not one", path,
              seen, back);
    goto done;
  }
  if (t1 < 0)
    for (size_t k = 0; k < n; k++)
      if (ev[k].ts + ev[k].dur > t1) t1 = ev[k].ts + ev[k].dur;
  const double span = t1 > t0 ? t1 - t0 : 1.0, W = 1100.0, x0 = 80.0;
  {
    moe_error perr = {0};
    if (moe_publish_open(&pub, out, "the timeline", &perr) != MOE_OK) {
      cli_fail(&perr);
      goto done;
    }
    f = pub.f;
  }
  double busy[3] = {0, 0, 0};
  fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1200\" height=\"230\" "
             "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"1200\" height=\"230\" fill=\"white\"/>\n");
  fprintf(f, "<text x=\"10\" y=\"18\">");
  xml(f, path);
  fprintf(f, ": forward %ld from the end, %.3f ms (%s trace times)</text>\n", back, span / 1e3,
          modeled ? "MODELED" : "measured");
  fprintf(f, "<text x=\"10\" y=\"70\">compute</text><text x=\"10\" y=\"140\">copy</text>\n");
  for (size_t k = 0; k < n; k++) {
    const tl_event *t = &ev[k];
    if (t->tid != 1 && t->tid != 2) continue;
    double a = t->ts, b = t->ts + t->dur;
    if (b < t0 || a > t1) continue;
    if (a < t0) a = t0;
    if (b > t1) b = t1;
    busy[t->tid] += b - a;
    const double x = x0 + (a - t0) / span * W, w = (b - a) / span * W;
    fprintf(f, "<rect x=\"%.2f\" y=\"%d\" width=\"%.2f\" height=\"40\" fill=\"%s\"><title>", x,
            t->tid == 1 ? 45 : 115, w < 0.3 ? 0.3 : w, color(t));
    xml(f, t->name);
    fprintf(f, " layer %d expert %d, %.1f us</title></rect>\n", t->layer, t->expert, t->dur);
  }
  for (int k = 0; k <= 10; k++)
    fprintf(f, "<line x1=\"%.1f\" y1=\"165\" x2=\"%.1f\" y2=\"170\" stroke=\"black\"/>"
               "<text x=\"%.1f\" y=\"185\" text-anchor=\"middle\">%.2f ms</text>\n",
            x0 + W * k / 10, x0 + W * k / 10, x0 + W * k / 10, span * k / 10 / 1e3);
  fprintf(f, "<text x=\"10\" y=\"215\">compute busy %.0f%%, copy busy %.0f%% of the forward; "
             "blue matmul, green attention, grey other ops, red waiting for a copy, orange "
             "copies</text>\n</svg>\n",
          100 * busy[1] / span, 100 * busy[2] / span);
  f = NULL;
  {
    moe_error perr = {0};
    if (moe_publish_commit(&pub, &perr) != MOE_OK) {
      cli_fail(&perr);
      goto done;
    }
  }
  rc = 0;
done:
  if (f) moe_publish_abort(&pub);
  free(ev);
  json_decref(root);
  return rc;
}
