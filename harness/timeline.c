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
#include "flags.h"
#include "commands.h"
#include "trace_reader.h"
#include "moe/publish.h"

typedef struct tl_event {
  int tid;            /* 1 compute, 2 copy */
  double ts, dur;     /* microseconds */
  char name[48];      /* the op's name (cut) */
  int layer, expert;
} tl_event;

/* The complete events of a trace, read through the trace reader. */
typedef struct tl_trace {
  const char *path;
  tl_event *ev;
  size_t n, cap;
  bool modeled;       /* the trace's times are modeled (a sim run) */
} tl_trace;

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

void timeline_usage(FILE *f) {
  fprintf(f, "usage: moebench timeline TRACE.json -o OUT.svg [--forward N]\n\n"
          "Draws one forward pass of an op trace (generate/run --trace) as SVG: the\n"
          "compute track (matmuls blue, attention green, other ops grey, waits for\n"
          "copies red) above the copy track (orange), on one time axis.\n\n"
          "  -o, --out FILE   the SVG to write (temporary file + rename)\n"
          "  --forward N      the N-th forward from the end (default 1: the last, a\n"
          "                   decode step; the first forward is the prefill)\n"
          "  -h, --help       this text\n");
}

/* One trace event: a complete ("X") event is kept. */
static moe_status tl_on_event(void *ctx, void *ev, size_t i, moe_error *err) {
  tl_trace *tr = ctx;
  json_t *e = ev;
  if (trace_clock_modeled(e)) tr->modeled = true;
  const char *ph = trace_str(e, "ph");
  if (ph == NULL || strcmp(ph, "X") != 0) return MOE_OK;
  json_t *tid = json_object_get(e, "tid"), *ts = json_object_get(e, "ts"),
         *dur = json_object_get(e, "dur"), *args = json_object_get(e, "args");
  const char *name = trace_str(e, "name");
  if (!json_is_integer(tid) || !json_is_number(ts) || !json_is_number(dur) || name == NULL ||
      json_number_value(dur) < 0)
    return MOE_FAIL(err, MOE_ERR_FORMAT, "%s: event %zu is not a complete event (tid, ts, dur, name)",
                    tr->path, i);
  if (tr->n == tr->cap) {
    const size_t nc = tr->cap ? 2 * tr->cap : 1024;
    tl_event *m = realloc(tr->ev, nc * sizeof *m);
    if (m == NULL) return MOE_FAIL(err, MOE_ERR_OOM, "%s: out of memory", tr->path);
    tr->ev = m;
    tr->cap = nc;
  }
  tl_event *t = &tr->ev[tr->n++];
  t->tid = (int)json_integer_value(tid);
  t->ts = json_number_value(ts);
  t->dur = json_number_value(dur);
  snprintf(t->name, sizeof t->name, "%s", name);
  json_t *ly = json_is_object(args) ? json_object_get(args, "layer") : NULL,
         *ex = json_is_object(args) ? json_object_get(args, "expert") : NULL;
  t->layer = json_is_integer(ly) ? (int)json_integer_value(ly) : -1;
  t->expert = json_is_integer(ex) ? (int)json_integer_value(ex) : -1;
  return MOE_OK;
}

/* The span [*t0, *t1] of the back-th last forward (from an embed op on
 * the compute track to the next, or the end); false when there is none. */
static bool tl_forward(const tl_trace *tr, long back, double *t0, double *t1, long *seen) {
  const tl_event *ev = tr->ev;
  *t0 = *t1 = -1;
  *seen = 0;
  for (size_t k = tr->n; k-- > 0;)
    if (ev[k].tid == 1 && !strcmp(ev[k].name, "embed") && ++*seen == back) {
      *t0 = ev[k].ts;
      for (size_t j = k + 1; j < tr->n; j++)
        if (ev[j].tid == 1 && !strcmp(ev[j].name, "embed")) {
          *t1 = ev[j].ts;
          break;
        }
      break;
    }
  if (*t0 < 0) return false;
  if (*t1 < 0)
    for (size_t k = 0; k < tr->n; k++)
      if (ev[k].ts + ev[k].dur > *t1) *t1 = ev[k].ts + ev[k].dur;
  return true;
}

/* The SVG of the forward [t0, t1]. */
static void tl_draw(FILE *f, const tl_trace *tr, long back, double t0, double t1) {
  const double span = t1 > t0 ? t1 - t0 : 1.0, W = 1100.0, x0 = 80.0;
  double busy[3] = {0, 0, 0};
  fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1200\" height=\"230\" "
             "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"1200\" height=\"230\" fill=\"white\"/>\n");
  fprintf(f, "<text x=\"10\" y=\"18\">");
  xml(f, tr->path);
  fprintf(f, ": forward %ld from the end, %.3f ms (%s trace times)</text>\n", back, span / 1e3,
          tr->modeled ? "MODELED" : "measured");
  fprintf(f, "<text x=\"10\" y=\"70\">compute</text><text x=\"10\" y=\"140\">copy</text>\n");
  for (size_t k = 0; k < tr->n; k++) {
    const tl_event *t = &tr->ev[k];
    if (t->tid != 1 && t->tid != 2) continue;
    double a = t->ts, b = t->ts + t->dur;
    if (b < t0 || a > t1) continue;
    if (a < t0) a = t0;
    if (b > t1) b = t1;
    busy[t->tid == 1 && strcmp(t->name, "wait for copy") == 0 ? 0 : t->tid] += b - a;
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
  fprintf(f, "<text x=\"10\" y=\"215\">compute busy %.0f%%, waiting for copies %.0f%%, copy "
             "busy %.0f%% of the forward; blue matmul, green attention, grey other ops, red "
             "waiting for a copy, orange copies</text>\n</svg>\n",
          100 * busy[1] / span, 100 * busy[0] / span, 100 * busy[2] / span);
}

/* timeline's flags. */
typedef struct tl_args {
  const char *out;
  long *back;
} tl_args;

/* One flag into a tl_args (flags_getopt). */
static int tl_take(void *ctx, int c, const char *arg) {
  tl_args *a = ctx;
  if (c == 'o') {
    a->out = arg;
    return 0;
  }
  if (c != 'f') return -1;
  if (flag_long(FLAG_FORWARD, arg, a->back)) return 0;
  cli_error("timeline: invalid value '%s' for --forward", arg);
  return 2;
}

/* The flags; -1 to go on, else the exit code. */
static int tl_parse(int argc, char **argv, const char **out, long *back) {
  static const struct option opts[] = {{"out", required_argument, 0, 'o'},
                                       {"forward", required_argument, 0, 'f'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  tl_args a = {.out = NULL, .back = back};
  const int rc = flags_getopt("timeline", argc, argv, "ho:", opts, tl_take, &a, timeline_usage);
  if (rc >= 0) return rc;
  *out = a.out;
  if (argc - optind != 1 || *out == NULL || (*out)[0] == '\0') {
    cli_error("timeline: give one trace file and -o OUT.svg");
    return 2;
  }
  return -1;
}

int cmd_timeline(int argc, char **argv) {
  const char *out = NULL;
  long back = 1;
  int rc = tl_parse(argc, argv, &out, &back);
  if (rc >= 0) return rc;
  tl_trace tr = {.path = argv[optind]};
  if (cli_output_clobbers("timeline", out, tr.path)) return 2;
  moe_error err = {0};
  const trace_reader rd = {NULL, tl_on_event, &tr};
  double t0, t1;
  long seen;
  moe_publish pub = {0};
  if (trace_read(tr.path, &rd, &err) != MOE_OK) {
    cli_fail(&err);
  } else if (!tl_forward(&tr, back, &t0, &t1, &seen)) {
    cli_error("%s: the trace holds %ld forward pass(es) (embed ops); --forward %ld is not one",
              tr.path, seen, back);
  } else if (moe_publish_open(&pub, out, "the timeline", &err) != MOE_OK) {
    cli_fail(&err);
  } else {
    tl_draw(pub.f, &tr, back, t0, t1);
    rc = moe_publish_commit(&pub, &err) == MOE_OK ? 0 : cli_fail(&err);
  }
  free(tr.ev);
  return rc < 0 ? 1 : rc;
}
