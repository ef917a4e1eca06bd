/* moebench eval: language-model quality of a model over token windows,
 * under any policy and routing.
 *
 * One model:  moebench eval --model-dir DIR --tokens FILE [--policy P] [--routing R]
 * A table:    moebench eval --suite FILE   (rows of model, routing and policy on one
 *             token file; deltas against the first row; CSV and JSON with -o)
 *
 * Each line of the token file is one window (all of one length); every
 * position but the first is predicted from its prefix, in one forward per
 * batch of windows.  Figures: mean cross-entropy in nats per predicted
 * token, perplexity exp(cross-entropy), next-token top-1 accuracy.  All
 * measured by the engine (moe_engine_eval), never modeled. */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "flags.h"
#include "commands.h"
#include "moe/jsonfile.h"
#include "moe/publish.h"
#include "moe/model.h"
#include "moe/policy.h"

enum { EVAL_MAX_ROWS = 32 };

typedef struct eval_row {
  char label[128];
  char model[1024];   /* a model directory or a preset name */
  char policy[64];
  moe_routing routing;
  bool have_routing;
} eval_row;

typedef struct eval_figures {
  moe_eval_result r;          /* with its per-window arrays (freed by eval_figures_free) */
  moe_run_stats stats;
  int windows, len;
} eval_figures;

static void eval_figures_free(eval_figures *f) {
  free(f->r.window_nll);
  free(f->r.window_correct);
  f->r.window_nll = NULL;
  f->r.window_correct = NULL;
}

void eval_usage(FILE *f) {
  fprintf(f,
          "usage: moebench eval (--model-dir DIR | --preset NAME) --tokens FILE [options]\n"
          "       moebench eval --suite FILE [-o PREFIX]\n"
          "\n"
          "Language-model quality of a decoder-only model over a token file, measured by\n"
          "the engine: each line of FILE is one window of token ids (all lines of one\n"
          "length; blank lines and lines starting with '#' skipped), and every position\n"
          "but the first is predicted from its prefix. Prints the mean cross-entropy\n"
          "(nats per predicted token), the perplexity exp(cross-entropy) and the\n"
          "next-token top-1 accuracy.\n"
          "\n"
          "  --model-dir DIR       Hugging Face style directory (config.json + safetensors)\n"
          "  --preset NAME         synthetic model from workloads/models/NAME.json\n"
          "  --tokens FILE         the windows\n"
          "  --windows N           only the first N windows (default: all)\n"
          "  --batch B             windows per forward (default 8)\n"
          "  --policy NAME         offload policy (default gpu-only)\n"
          "  --routing MODE        conventional or pregated (default: the policy's own);\n"
          "                        pregated uses the checkpoint's pre-gates when it has\n"
          "                        them, else the derived pre-gate (zero-shot)\n"
          "  --backend NAME        cpu (default)\n"
          "  --threads N           math threads (default 1)\n"
          "  --suite FILE          rows to evaluate (JSON: tokens, rows of label, model_dir\n"
          "                        or preset, policy, routing); prints one table with each\n"
          "                        row's change against the first row\n"
          "  -o PREFIX             with --suite: also write PREFIX.csv and PREFIX.json\n"
          "  -h, --help            this text\n");
}

/* Evaluates one row on the windows. */
static moe_status eval_one(const eval_row *row, const int32_t *windows, int n_windows, int len,
                           int batch, const char *backend, int threads, eval_figures *out,
                           moe_error *err) {
  moe_status st = MOE_OK;
  moe_model *m = NULL;
  moe_device *dev = NULL;
  moe_engine *e = NULL;
  bool dev_open = false;
  const moe_policy *pol = moe_policy_find(row->policy);
  MOE_CHECK(pol != NULL, err, MOE_ERR_INVALID, "unknown policy '%s' (see 'moebench list policies')",
            row->policy);
  /* a preset name, or a checkpoint directory (cli_preset_load tells) */
  MOE_TRY(cli_preset_model(row->model, NULL, &m, err));
  moe_backend_options bo = {.threads = threads};
  MOE_TRY(moe_device_create(&dev, backend, &bo, err));
  dev_open = true;
  moe_routing routing = row->have_routing ? row->routing
                        : pol->default_routing == MOE_POLICY_ROUTING_PREGATED
                            ? MOE_ROUTING_PREGATED
                            : MOE_ROUTING_CONVENTIONAL;
  moe_engine_options eo = {.max_batch = batch < n_windows ? batch : n_windows, .max_seq = len,
                           .all_logits = true, .policy = pol, .routing = routing};
  MOE_TRY(moe_engine_create(&e, m, dev, &eo, err));
  eval_figures_free(out);
  memset(out, 0, sizeof *out);
  out->r.window_nll = calloc((size_t)n_windows, sizeof *out->r.window_nll);
  out->r.window_correct = calloc((size_t)n_windows, sizeof *out->r.window_correct);
  MOE_CHECK(out->r.window_nll && out->r.window_correct, err, MOE_ERR_OOM,
            "out of host memory for %d windows' figures", n_windows);
  MOE_TRY(moe_engine_eval(e, windows, n_windows, len, &out->r, err));
  moe_engine_stats(e, &out->stats);
  out->windows = n_windows;
  out->len = len;
cleanup:
  moe_engine_free(e);
  if (dev_open) moe_device_destroy(dev);
  moe_model_free(m);
  return st;
}

static double ce_of(const eval_figures *f) { return f->r.nll / (double)f->r.tokens; }
static double acc_of(const eval_figures *f) { return (double)f->r.correct / (double)f->r.tokens; }

static void print_header(void) {
  printf("| row | model | policy | routing | cross-entropy (nats/token) | perplexity (95%% CI) | "
         "top-1 accuracy | change in perplexity (95%% CI, paired) | change in accuracy | "
         "pre-gate hit |\n");
  printf("|---|---|---|---|---|---|---|---|---|---|\n");
}

/* The 95% t interval over windows of the per-window cross-entropy of f
 * (minus ref's on the same window when ref is given: the paired change),
 * as [lo, hi] in nats; false when there are fewer than two windows. */
static bool ce_interval(const eval_figures *f, const eval_figures *ref, double *lo, double *hi) {
  const int n = f->windows;
  double *x = malloc((size_t)(n > 0 ? n : 1) * sizeof *x), mean, half;
  if (x == NULL || n < 2 || f->r.window_nll == NULL || (ref && ref->r.window_nll == NULL)) {
    free(x);
    return false;
  }
  for (int i = 0; i < n; i++)
    x[i] = (f->r.window_nll[i] - (ref ? ref->r.window_nll[i] : 0.0)) / (double)(f->len - 1);
  cli_mean_ci95(x, n, &mean, &half);
  free(x);
  *lo = mean - half;
  *hi = mean + half;
  return isfinite(half);
}

static void print_row(const eval_row *row, const eval_figures *f, const eval_figures *ref) {
  char dppl[64] = "-", dacc[32] = "-", hit[32] = "-", ppl[64];
  double lo, hi;
  if (ce_interval(f, NULL, &lo, &hi))
    snprintf(ppl, sizeof ppl, "%.4f (%.4f-%.4f)", exp(ce_of(f)), exp(lo), exp(hi));
  else
    snprintf(ppl, sizeof ppl, "%.4f", exp(ce_of(f)));
  if (ref) {
    snprintf(dppl, sizeof dppl, "%+.2f%%", 100.0 * (exp(ce_of(f)) / exp(ce_of(ref)) - 1.0));
    if (ce_interval(f, ref, &lo, &hi))
      snprintf(dppl, sizeof dppl, "%+.2f%% (%+.2f to %+.2f)",
               100.0 * (exp(ce_of(f)) / exp(ce_of(ref)) - 1.0), 100.0 * (exp(lo) - 1.0),
               100.0 * (exp(hi) - 1.0));
    snprintf(dacc, sizeof dacc, "%+.2f pt", 100.0 * (acc_of(f) - acc_of(ref)));
    if (f->r.nll == ref->r.nll && f->r.correct == ref->r.correct) snprintf(dppl, sizeof dppl, "0 (same bits)");
  }
  if (f->stats.pregate_total > 0)
    snprintf(hit, sizeof hit, "%.3f", (double)f->stats.pregate_hits / (double)f->stats.pregate_total);
  printf("| %s | %s | %s | %s | %.6f | %s | %.4f | %s | %s | %s |\n", cli_md(row->label), cli_md(row->model),
         row->policy, row->have_routing ? moe_routing_name(row->routing) : "(policy's)", ce_of(f),
         ppl, acc_of(f), dppl, dacc, hit);
}

/* A CSV field in quotes, quotes doubled (RFC 4180). */
static void csv_quoted(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"') fputc('"', f);
    fputc(*s, f);
  }
  fputc('"', f);
}

/* Reads the windows; -1 after printing the reason. */
static int read_windows(const char *path, long limit, int32_t **w, int *n, int *len) {
  if (cli_read_token_file(path, -1, w, n, len) != 0) return -1;
  if (*len < 2) {
    cli_error("%s: windows of %d token(s): at least 2 are needed", path, *len);
    free(*w);
    return -1;
  }
  if (limit > 0 && limit < *n) *n = (int)limit;
  return 0;
}

/* --suite FILE: the rows, run in order. */
/* eval --suite -o PREFIX: the rows' figures as PREFIX.csv and .json,
 * under PREFIX.lock, never over the suite file or its tokens.  0, or 1
 * after a line. */
static int eval_write(const char *prefix, const char *path, const char *tpath, const eval_row *rows,
                      const eval_figures *figs, int n_rows) {
  FILE *csv = NULL;
  moe_publish pub = {0};
  json_t *out = NULL;
  int rc = 1, lock = -1;
  char p[MOE_PUBLISH_PATH_MAX + 8];
  moe_error perr = {0};
  if ((lock = cli_lock_prefix("eval", prefix)) < 0) goto done;
  char js[MOE_PUBLISH_PATH_MAX + 8];
  snprintf(p, sizeof p, "%s.csv", prefix);
  snprintf(js, sizeof js, "%s.json", prefix);
  if (cli_output_clobbers("eval", p, tpath) || cli_output_clobbers("eval", js, tpath) ||
      cli_output_clobbers("eval", p, path) || cli_output_clobbers("eval", js, path))
    goto done;
  if (moe_publish_open(&pub, p, "the CSV", &perr) != MOE_OK) { /* the prefix's length was checked */
    cli_fail(&perr);
    goto done;
  }
  csv = pub.f;
  fprintf(csv, "label,model,policy,routing,windows,window_len,tokens,cross_entropy,perplexity,"
               "accuracy,pregate_hits,pregate_total\n");
  out = json_array();
  for (int k = 0; k < n_rows; k++) {
    const eval_figures *f = &figs[k];
    const char *routing = rows[k].have_routing ? moe_routing_name(rows[k].routing) : "";
    /* labels and paths are quoted, with quotes doubled (RFC 4180) */
    csv_quoted(csv, rows[k].label);
    fputc(',', csv);
    csv_quoted(csv, rows[k].model);
    fprintf(csv, ",%s,%s,%d,%d,%llu,%.9g,%.9g,%.9g,%llu,%llu\n", rows[k].policy, routing,
            f->windows, f->len, f->r.tokens, ce_of(f), exp(ce_of(f)), acc_of(f),
            f->stats.pregate_hits, f->stats.pregate_total);
    json_array_append_new(
        out, json_pack("{s:s, s:s, s:s, s:s, s:i, s:i, s:I, s:f, s:f, s:f}", "label", rows[k].label,
                       "model", rows[k].model, "policy", rows[k].policy, "routing", routing,
                       "windows", f->windows, "window_len", f->len, "tokens", (json_int_t)f->r.tokens,
                       "cross_entropy", ce_of(f), "perplexity", exp(ce_of(f)), "accuracy",
                       acc_of(f)));
  }
  csv = NULL;
  if (moe_publish_commit(&pub, &perr) != MOE_OK) {
    cli_fail(&perr);
    goto done;
  }
  snprintf(p, sizeof p, "%s.json", prefix);
  char *text = json_dumps(out, JSON_INDENT(1));
  const moe_status jst = text ? moe_publish_bytes(p, text, strlen(text), "the JSON", &perr)
                              : MOE_FAIL(&perr, MOE_ERR_OOM, "out of host memory");
  free(text);
  if (jst != MOE_OK) {
    cli_fail(&perr);
    goto done;
  }
  rc = 0;
done:
  if (csv) moe_publish_abort(&pub);
  if (lock >= 0) close(lock);
  json_decref(out);
  return rc;
}

/* Row i of an eval suite's 'rows' (r) into *row.  0, or 1 after printing why. */
static int eval_row_of(json_t *r, const char *path, size_t i, eval_row *row) {
  static const char *const row_keys[] = {"label", "model_dir", "preset", "policy", "routing", NULL};
  moe_error err = {0};
  char origin[1200];
  snprintf(origin, sizeof origin, "%s: rows[%zu]", path, i);
  if (!json_is_object(r) || cli_check_keys(r, row_keys, origin, &err) != MOE_OK) {
    if (err.status == MOE_OK) cli_error("%s: must be an object", origin);
    else cli_fail(&err);
    return 1;
  }
  json_t *lab = json_object_get(r, "label"), *md = json_object_get(r, "model_dir"),
         *pr = json_object_get(r, "preset"), *po = json_object_get(r, "policy"),
         *ro = json_object_get(r, "routing");
  if (!json_is_string(lab) || (md == NULL) == (pr == NULL) || (md && !json_is_string(md)) ||
      (pr && !json_is_string(pr)) || (po && !json_is_string(po)) || (ro && !json_is_string(ro))) {
    cli_error("%s: needs a 'label' and exactly one of 'model_dir' or 'preset' (strings)", origin);
    return 1;
  }
  snprintf(row->label, sizeof row->label, "%s", json_string_value(lab));
  const char *mv = json_string_value(md ? md : pr);
  if (md && mv[0] != '/')
    snprintf(row->model, sizeof row->model, "%s/%s", MOE_SOURCE_DIR, mv);
  else
    snprintf(row->model, sizeof row->model, "%s", mv);
  snprintf(row->policy, sizeof row->policy, "%s",
           po ? json_string_value(po) : moe_policy_reference()->name);
  if (ro) {
    if (moe_routing_parse(json_string_value(ro), &row->routing) != 0) {
      cli_error("%s: routing '%s' is not conventional or pregated", origin, json_string_value(ro));
      return 1;
    }
    row->have_routing = true;
  }
  return 0;
}

/* Evaluates the rows and prints a line each (the first is the others'
 * reference).  0, or 1 after printing why. */
static int eval_rows_run(const eval_row *rows, eval_figures *figs, int n_rows, const char *path,
                         const int32_t *windows, int n_windows, int len, int batch,
                         const char *backend, int threads) {
  moe_error err = {0};
  print_header();
  for (int k = 0; k < n_rows; k++) {
    if (eval_one(&rows[k], windows, n_windows, len, batch, backend, threads, &figs[k], &err) != MOE_OK) {
      char msg[600];
      cli_error("%s: row '%s': %s", path, rows[k].label, cli_error_text(&err, msg, sizeof msg));
      return 1;
    }
    /* show the directory as given in the file, not the resolved path */
    eval_row shown = rows[k];
    const char *src = MOE_SOURCE_DIR "/";
    if (strncmp(shown.model, src, strlen(src)) == 0)
      memmove(shown.model, shown.model + strlen(src), strlen(shown.model + strlen(src)) + 1);
    print_row(&shown, &figs[k], k ? &figs[0] : NULL);
    fflush(stdout);
  }
  return 0;
}

static int eval_suite(const char *path, const char *prefix, const char *backend, int threads,
                      int batch) {
  moe_error err = {0};
  json_t *root = moe_json_load_file(path, &err);
  if (root == NULL) return cli_fail(&err);
  int rc = 1, n_rows = 0, n_windows = 0, len = 0;
  int32_t *windows = NULL;
  eval_row *rows = calloc(EVAL_MAX_ROWS, sizeof *rows);
  eval_figures *figs = calloc(EVAL_MAX_ROWS, sizeof *figs);
  static const char *const keys[] = {"name", "description", "tokens", "windows", "rows", NULL};
  if (rows == NULL || figs == NULL) {
    cli_error("%s: out of memory", path);
    goto done;
  }
  if (!json_is_object(root) || cli_check_keys(root, keys, path, &err) != MOE_OK) {
    if (err.status == MOE_OK) cli_error("%s: top level must be a JSON object", path);
    else cli_fail(&err);
    goto done;
  }
  json_t *tok = json_object_get(root, "tokens"), *jr = json_object_get(root, "rows"),
         *jw = json_object_get(root, "windows");
  if (!json_is_string(tok) || !json_is_array(jr) || json_array_size(jr) == 0 ||
      json_array_size(jr) > EVAL_MAX_ROWS || (jw && (!json_is_integer(jw) || json_integer_value(jw) < 1 ||
                                                     json_integer_value(jw) > FLAG_MAX_WINDOWS))) {
    cli_error("%s: needs 'tokens' (a path), 'rows' (1..%d objects) and optionally 'windows' (an "
              "integer in 1..%d)", path, EVAL_MAX_ROWS, FLAG_MAX_WINDOWS);
    goto done;
  }
  /* paths in the file are relative to the source tree, as suites' */
  char tpath[1100];
  const char *t = json_string_value(tok);
  snprintf(tpath, sizeof tpath, "%s%s%s", t[0] == '/' ? "" : MOE_SOURCE_DIR, t[0] == '/' ? "" : "/", t);
  if (read_windows(tpath, jw ? (long)json_integer_value(jw) : 0, &windows, &n_windows, &len) != 0)
    goto done;
  size_t i;
  json_t *r;
  json_array_foreach(jr, i, r) {
    if (eval_row_of(r, path, i, &rows[i]) != 0) goto done;
    n_rows++;
  }
  if (eval_rows_run(rows, figs, n_rows, path, windows, n_windows, len, batch, backend, threads) != 0)
    goto done;
  printf("\n%d windows of %d tokens from %s (%llu predicted tokens per row); cross-entropy, "
         "perplexity and accuracy measured by the engine on the cpu backend; intervals: 95%% t "
         "over windows (computed, windows taken as independent draws; the change against the "
         "first row paired on the same windows).\n",
         n_windows, len, t, figs[0].r.tokens);
  if (prefix && eval_write(prefix, path, tpath, rows, figs, n_rows) != 0) goto done;
  rc = 0;
done:
  json_decref(root);
  free(windows);
  free(rows);
  for (int k = 0; figs && k < EVAL_MAX_ROWS; k++) eval_figures_free(&figs[k]);
  free(figs);
  return rc;
}

/* One model over a token file: a line of figures. */
static int eval_single(eval_row *row, const char *model_dir, const char *preset, const char *tokens,
                       long windows, int batch, const char *backend, int threads) {
  if ((model_dir == NULL) == (preset == NULL) || tokens == NULL) {
    cli_error("eval: give --tokens and exactly one of --model-dir or --preset (see --help)");
    return 2;
  }
  if (cli_check_names("eval", preset, backend) != 0) return 2;
  if (cli_backend_modeled(backend)) {
    cli_error("eval: the sim backend computes no logits (it models time); evaluate on cpu or cuda");
    return 2;
  }
  snprintf(row->model, sizeof row->model, "%s", model_dir ? model_dir : preset);
  int32_t *w = NULL;
  int n = 0, len = 0;
  if (read_windows(tokens, windows, &w, &n, &len) != 0) return 1;
  eval_figures f = {0};
  moe_error err = {0};
  moe_status st = eval_one(row, w, n, len, batch, backend, threads, &f, &err);
  free(w);
  if (st != MOE_OK) {
    eval_figures_free(&f);
    return cli_fail(&err);
  }
  print_header();
  print_row(row, &f, NULL);
  printf("\n%d windows of %d tokens (%llu predicted); measured by the engine; intervals: 95%% t "
         "over windows (computed, windows taken as independent draws).\n", n, len, f.r.tokens);
  eval_figures_free(&f);
  return 0;
}

/* eval's long options without a short letter. */
enum { O_MODEL = 256, O_PRESET, O_TOKENS, O_WINDOWS, O_BATCH, O_POLICY, O_ROUTING, O_BACKEND,
       O_THREADS, O_SUITE };

/* eval's options. */
typedef struct eval_opts {
  eval_row row;
  const char *model_dir, *preset, *tokens, *backend, *suite_file, *prefix;
  long windows, batch, threads;
} eval_opts;

/* One flag into o (flags_getopt). */
static int eval_take(void *ctx, int c, const char *arg) {
  eval_opts *o = ctx;
  switch (c) {
    case O_MODEL: o->model_dir = cli_model_dir_arg(arg); return arg[0] ? 0 : -1;
    case O_PRESET: return flag_text(&o->preset, arg);
    case O_TOKENS: return flag_text(&o->tokens, arg);
    case O_WINDOWS: return flag_long(FLAG_WINDOWS, arg, &o->windows) ? 0 : -1;
    case O_BATCH: return flag_long(FLAG_BATCH, arg, &o->batch) ? 0 : -1;
    case O_POLICY:
      if (arg[0] == '\0' || strlen(arg) >= sizeof o->row.policy) return -1;
      snprintf(o->row.policy, sizeof o->row.policy, "%s", arg);
      return 0;
    case O_ROUTING:
      o->row.have_routing = true;
      return moe_routing_parse(arg, &o->row.routing) == 0 ? 0 : -1;
    case O_BACKEND: return flag_text(&o->backend, arg);
    case O_THREADS: return flag_long(FLAG_THREADS, arg, &o->threads) ? 0 : -1;
    case O_SUITE: return flag_text(&o->suite_file, arg);
    case 'o':
      if (cli_check_prefix("eval", arg) != 0) return 2; /* refused, never cut */
      o->prefix = arg;
      return 0;
    default: return -1;
  }
}

int cmd_eval(int argc, char **argv) {
  static const struct option opts[] = {
      {"model-dir", required_argument, 0, O_MODEL}, {"preset", required_argument, 0, O_PRESET},
      {"tokens", required_argument, 0, O_TOKENS},   {"windows", required_argument, 0, O_WINDOWS},
      {"batch", required_argument, 0, O_BATCH},     {"policy", required_argument, 0, O_POLICY},
      {"routing", required_argument, 0, O_ROUTING}, {"backend", required_argument, 0, O_BACKEND},
      {"threads", required_argument, 0, O_THREADS}, {"suite", required_argument, 0, O_SUITE},
      {"help", no_argument, 0, 'h'},                {0, 0, 0, 0}};
  eval_opts o = {.row = {.label = "eval"}, .backend = "cpu", .batch = 8, .threads = 1};
  snprintf(o.row.policy, sizeof o.row.policy, "%s", moe_policy_reference()->name);
  const int rc = flags_getopt("eval", argc, argv, "ho:", opts, eval_take, &o, eval_usage);
  if (rc >= 0) return rc;
  eval_row row = o.row;
  const char *model_dir = o.model_dir, *preset = o.preset, *tokens = o.tokens,
             *backend = o.backend, *suite_file = o.suite_file, *prefix = o.prefix;
  const long windows = o.windows, batch = o.batch, threads = o.threads;
  if (optind < argc) {
    cli_error("eval: unexpected argument '%s'", argv[optind]);
    return 2;
  }
  if (moe_policy_find(row.policy) == NULL) {
    cli_error("eval: unknown policy '%s' (see 'moebench list policies')", row.policy);
    return 2;
  }
  if (suite_file) {
    if (model_dir || preset || tokens) {
      cli_error("eval: --suite names its own models and token file");
      return 2;
    }
    return eval_suite(suite_file, prefix, backend, (int)threads, (int)batch);
  }
  return eval_single(&row, model_dir, preset, tokens, windows, (int)batch, backend, (int)threads);
}
