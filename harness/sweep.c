/* moebench sweep: every run of a suite; progress on stderr; rows written as
 * they complete (CSV + JSON, published atomically); --resume skips finished
 * rows; --shard K/N runs a deterministic share of the suite. */
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
#include "moe/backend.h"
#include "moe/clock.h"
#include "moe/publish.h"
#include "results.h"
#include "row.h"
#include "runner.h"
#include "suite.h"

/* ------------------------------------------------------------ sweep */

void sweep_usage(FILE *f) {
  fprintf(f,
          "usage: moebench sweep SUITE [options]\n\n"
          "Runs every configuration of a suite (workloads/suites/SUITE.json or a path):\n"
          "models x workloads (x batch sizes) x device budgets x policies.  Rows are written\n"
          "to PREFIX.csv and PREFIX.json after each run (temporary file + rename); a lock\n"
          "file PREFIX.lock keeps a second sweep from writing the same files.\n\n"
          "  -o, --out PREFIX   output prefix (default results/runs/SUITE)\n"
          "  --resume           keep rows already in PREFIX.csv whose key (every input that\n"
          "                     changes a figure) matches, and skip their runs\n"
          "  --reps N           override the suite's repetitions (1..%d)\n"
          "  --shard K/N        run the K-th of N shards: a deterministic share of the\n"
          "                     suite's (model, workload, batch) groups, balanced by their\n"
          "                     estimated cost; 'moebench merge' joins the shards' files\n"
          "  --quiet            no progress output\n"
          "  -h, --help         this text\n\n"
          "Exit status: 0 when every row's status is ok or OOM (a configuration that does\n"
          "not fit its budget is a result); 1 when any row's status is error (all rows,\n"
          "failed ones with their message, are still written) or a file could not be\n"
          "written; 2 bad arguments or a bad suite.\n",
          SUITE_MAX_REPS);
}

typedef struct progress {
  int total, done;
  double start;
  bool tty, quiet;
} progress;

static void progress_show(progress *p, const char *what) {
  if (p->quiet) return;
  double el = moe_clock_s() - p->start;
  /* no estimate before a row has ended: say so rather than "ETA 0 s" */
  char eta[48] = "ETA after the first row";
  if (p->done > 0) snprintf(eta, sizeof eta, "ETA %.0f s", el / p->done * (p->total - p->done));
  if (p->tty) {
    int width = 24, fill = p->total ? width * p->done / p->total : 0;
    fprintf(stderr, "\r\033[K[%.*s%*s] %d/%d %s  elapsed %.0fs  %s", fill,
            "########################", width - fill, "", p->done, p->total, what, el, eta);
  } else {
    fprintf(stderr, "[%d/%d] %s (elapsed %.0f s, %s)\n", p->done, p->total, what, el, eta);
  }
  fflush(stderr);
}

/* One sweep's state, shared by its loops. */
typedef struct sweep_ctx {
  suite *s;
  cli_preset *presets;
  const char *backend;
  char device[256];
  char prefix[MOE_PUBLISH_PATH_MAX + 1];
  bool resume;
  res_table t;
  json_t *meta;
  progress pr;
  int ran, skipped, reruns; /* rows run, rows kept by --resume, kept rows rerun as references */
  res_index *done_ix;    /* keys of the rows --resume kept (read once) */
  bool *kept;            /* [rows read by --resume]: the suite still has this row */
  size_t n_read;         /* rows read by --resume */
  const moe_policy *pol[SUITE_MAX];        /* the suite's policies, resolved */
  char label[SUITE_MAX][SUITE_NAME_MAX];   /* their rows' policy column */
  const char *cache[SUITE_MAX];            /* their expert caches (NULL: none) */
  moe_policy_library libs[SUITE_MAX];      /* plugins among them, open for the sweep */
  char plugin_path[SUITE_MAX][1200];       /* their files ("" for a built-in) */
  char model_hash[SUITE_MAX][17];          /* cli_model_hash of each model */
  moe_device *holder;    /* keeps the current model pinned across rows (NULL: none) */
  bool pinned;
  double pin_s;          /* how long pinning the current model took */
  int shard_k, shard_n;  /* --shard K/N (1-based); 0/0: every row */
  const int32_t *eval;   /* the current workload's quality windows (NULL: none) */
  int eval_n, eval_len;
  int *group_shard;      /* [model x workload x batch group] -> its shard (1-based) */
  int n_groups;
} sweep_ctx;

/* The index of group (model mi, workload w, batch bi) in loop order. */
static int group_of(const sweep_ctx *x, int mi, int w, int bi) {
  int g = 0;
  for (int m = 0; m < x->s->n_models; m++)
    for (int k = 0; k < x->s->n_workloads; k++)
      for (int b = 0; b < x->s->workloads[k].n_batches; b++, g++)
        if (m == mi && k == w && b == bi) return g;
  return -1;
}

/* Splits the suite's groups (one model, workload and batch with all their
 * budgets and policies: a group's rows share the gpu-only parity reference)
 * over N shards, balanced by an estimate of each group's cost (weight
 * bytes x tokens x batch x runs), largest first to the least loaded shard,
 * ties to the earlier group and the lower shard.  Depends on the suite
 * only, so every shard computes the same split and --resume keeps it. */
static int plan_shards(sweep_ctx *x) {
  const suite *s = x->s;
  int n = 0;
  for (int k = 0; k < s->n_workloads; k++) n += s->workloads[k].n_batches;
  n *= s->n_models;
  x->n_groups = n;
  x->group_shard = calloc((size_t)(n ? n : 1), sizeof *x->group_shard);
  double *cost = calloc((size_t)(n ? n : 1), sizeof *cost), load[FLAG_MAX_SHARDS] = {0};
  int *order = calloc((size_t)(n ? n : 1), sizeof *order);
  if (!x->group_shard || !cost || !order) {
    free(cost);
    free(order);
    cli_error("out of host memory planning shards");
    return 1;
  }
  int g = 0;
  for (int m = 0; m < s->n_models; m++) {
    size_t dense = 0, experts = 0;
    moe_error err = {0};
    if (moe_model_plan_layout(&x->presets[m].cfg, x->presets[m].dtype, &dense, &experts, &err) != MOE_OK)
      dense = experts = 1;
    for (int k = 0; k < s->n_workloads; k++)
      for (int b = 0; b < s->workloads[k].n_batches; b++, g++) {
        const workload *wl = &s->workloads[k];
        cost[g] = ((double)dense + (double)experts) * (double)(wl->prompt_len + wl->gen_len) *
                  (double)wl->batches[b] * (double)wl->requests *
                  (double)(s->repetitions + s->warmup) * s->n_budgets * s->n_policies;
        order[g] = g;
      }
  }
  for (int i = 1; i < n; i++) /* insertion sort: cost descending, index ascending */
    for (int j = i; j > 0 && cost[order[j]] > cost[order[j - 1]]; j--) {
      int t = order[j];
      order[j] = order[j - 1];
      order[j - 1] = t;
    }
  for (int i = 0; i < n; i++) {
    int best = 0;
    for (int k = 1; k < x->shard_n; k++)
      if (load[k] < load[best]) best = k;
    load[best] += cost[order[i]];
    x->group_shard[order[i]] = best + 1;
  }
  free(cost);
  free(order);
  return 0;
}

/* The routing a suite row runs: the suite's, else the policy's own. */
static moe_routing suite_routing(const suite *s, const moe_policy *pol) {
  moe_routing r;
  return moe_routing_parse(s->routing, &r) == 0 ? r : runner_policy_routing(pol);
}

/* A finished row with rc's key is in the resumed table (an index lookup:
 * resuming a sweep of thousands of rows stays fast); it is marked kept. */
static bool row_done(sweep_ctx *x, const row_config *rc) {
  if (!x->resume || x->done_ix == NULL) return false;
  res_table probe;
  res_table_init(&probe);
  res_row *r = res_table_add(&probe);
  bool done = false;
  if (r) {
    row_key_columns(rc, r);
    char key[RES_KEY_MAX];
    res_key(r, key, sizeof key);
    long at = res_index_find(x->done_ix, key);
    done = at >= 0;
    if (done) x->kept[at] = true;
  }
  res_table_free(&probe);
  return done;
}

/* Pins a newly built model once for the whole sweep (a backend that pins
 * host memory would otherwise pin gigabytes again for every row); rows'
 * own registrations then share it.  Failure is only slower copies. */
static void sweep_pin(sweep_ctx *x, moe_model *m) {
  moe_error err = {0};
  const moe_backend_ops *o = moe_backend_find(x->backend);
  if (o == NULL || o->host_register == NULL || (o->caps & MOE_BACKEND_CAP_MODELED))
    return; /* this backend does not pin */
  if (x->holder == NULL) {
    moe_backend_options bo = {.threads = 1};
    if (moe_device_create(&x->holder, x->backend, &bo, &err) != MOE_OK) return;
  }
  const double t0 = moe_clock_s();
  x->pinned = moe_model_pin(m, x->holder, &err) == MOE_OK;
  x->pin_s = moe_clock_s() - t0;
  if (!x->pinned) fprintf(stderr, "moebench: note: %s; rows pin the model themselves\n", err.msg);
}

static void sweep_unpin(sweep_ctx *x, moe_model *m) {
  if (x->pinned && m) moe_model_unpin(m, x->holder);
  x->pinned = false;
}

/* Whether the suite's p-th policy is the parity reference (without a cache). */
static bool is_reference(const sweep_ctx *x, int p) {
  return moe_policy_has_role(x->pol[p], MOE_POLICY_ROLE_REFERENCE) && x->cache[p] == NULL;
}

/* The row of the suite's policy p in one (model mi, workload, batch,
 * budget bu): its configuration and its inputs hash (into inputs), and its
 * progress label (into what).  0, or 1 after printing why. */
static int sweep_row_config(const sweep_ctx *x, int mi, moe_model *model, const workload *wl,
                            int batch, const int32_t *ids, int n_ids, int bu, int p, double link,
                            row_config *rc, char inputs[17], char *what, size_t cap) {
  const suite *s = x->s;
  const cli_preset *ps = &x->presets[mi];
  *rc = (row_config){.model_name = ps->name, .model_seed = ps->seed, .model = model,
                     .dtype = ps->dtype, .wl = wl, .batch = batch, .policy = x->pol[p],
                     .routing = suite_routing(s, x->pol[p]), .backend = x->backend,
                     .device = x->device, .budget = s->budgets[bu], .link_gbps = link,
                     .threads = s->threads, .host_threads = s->host_threads,
                     .host_gbps = s->host_gbps, .reps = s->repetitions, .warmup = s->warmup,
                     .prompts = ids, .n_prompts = n_ids, .eval = x->eval, .eval_n = x->eval_n,
                     .eval_len = x->eval_len, .lookahead = s->lookahead,
                     .policy_label = x->label[p], .cache = x->cache[p],
                     .hardware = s->hardware[0] ? s->hardware : NULL,
                     .sim_routing = s->sim_routing[0] ? s->sim_routing : NULL,
                     .link_ratio = s->link_ratio, .model_pin_s = x->pinned ? x->pin_s : 0.0,
                     .inputs = inputs};
  if (!cli_inputs_hash(x->model_hash[mi], wl->token_file, wl->eval_file, s->hardware,
                       s->sim_routing, x->plugin_path[p], inputs)) {
    cli_error("sweep: an input of row %s cannot be read to key it", x->label[p]);
    return 1;
  }
  char budget[32] = "capacity";
  if (s->budgets[bu]) snprintf(budget, sizeof budget, "%zuB", s->budgets[bu]);
  snprintf(what, cap, "%s/%s/b%d/%s/%.120s", ps->name, wl->name, batch, budget, x->label[p]);
  return 0;
}

/* link_ratio: the group's link cap from a gpu-only warm-up on this
 * machine (NAN after printing why). */
static double sweep_link(const sweep_ctx *x, int mi, moe_model *model, const workload *wl,
                         int batch, const int32_t *ids, int n_ids) {
  const suite *s = x->s;
  run_spec ws = {.model = model, .backend = x->backend, .threads = s->threads, .batch = batch,
                 .prompt_len = wl->prompt_len, .gen_len = wl->gen_len, .prompt_seed = wl->seed,
                 .prompts = ids, .n_prompts = n_ids};
  char why[700];
  double window = 0, copy = 0;
  const double link = runner_link_for_ratio(&ws, s->link_ratio, &window, &copy, why, sizeof why);
  if (isnan(link)) {
    cli_error("%s: %s", x->presets[mi].name, why);
  } else if (!x->pr.quiet) {
    fprintf(stderr, "moebench: %s/%s/b%d: link ratio %g: a decoder MoE block window "
                    "computes in %.2f ms (gpu-only warm-up, measured), so one expert's "
                    "copy takes %.2f ms: link %.3f GB/s\n",
            x->presets[mi].name, wl->name, batch, s->link_ratio, window * 1e3, copy * 1e3, link);
  }
  return link;
}

/* Runs one row into the table (or, a finished parity reference rerun by
 * --resume, into a scratch table); the reference's result is kept in *ref.
 * 0, or 1 after printing why. */
static int sweep_run_row(sweep_ctx *x, const row_config *rc, bool done_before, bool is_ref,
                         run_result *ref, bool *have_ref) {
  const moe_config *mc = moe_model_config(rc->model);
  const bool want_logits = (double)rc->batch * rc->wl->gen_len * mc->vocab <= 64e6;
  run_result cur = {0};
  res_table scratch;
  res_table_init(&scratch);
  res_row *row = done_before ? res_table_add(&scratch) : res_table_add(&x->t);
  if (row == NULL) {
    cli_error("out of host memory for result rows");
    res_table_free(&scratch);
    return 1;
  }
  run_row(rc, row, *have_ref ? ref : NULL, is_ref ? &cur : NULL, want_logits);
  res_table_free(&scratch);
  if (is_ref && cur.status == MOE_OK) {
    run_result_free(ref);
    *ref = cur;
    *have_ref = true;
  } else if (is_ref) {
    run_result_free(&cur);
  }
  moe_error err = {0};
  if (done_before) {
    x->skipped++; /* kept; its run was only the parity reference */
    x->reruns++;
  } else {
    x->ran++;
    if (row_write_outputs(x->prefix, &x->t, x->meta, &err) != MOE_OK) return cli_fail(&err);
  }
  return 0;
}

/* The policies of one (model, workload, batch) across the budgets, the
 * parity reference (gpu-only) first: the others are checked against it.
 * The budget does not change the math, so a reference run that fitted an
 * earlier budget also serves the budgets where it is OOM. */
static int sweep_batch(sweep_ctx *x, int mi, moe_model **model, const workload *wl, int batch,
                       const int32_t *ids, int n_ids) {
  const suite *s = x->s;
  moe_error err = {0};
  int rc = 0;
  run_result ref = {0};
  bool have_ref = false, derived = false;
  int order[SUITE_MAX], no = 0;
  for (int p = 0; p < s->n_policies; p++)
    if (is_reference(x, p)) order[no++] = p;
  for (int p = 0; p < s->n_policies; p++)
    if (!is_reference(x, p)) order[no++] = p;
  double link = s->link_gbps;
  for (int bu = 0; bu < s->n_budgets && rc == 0; bu++)
    for (int k = 0; k < no && rc == 0; k++) {
      row_config rcfg;
      char inputs[17], what[512];
      rc = sweep_row_config(x, mi, *model, wl, batch, ids, n_ids, bu, order[k], link, &rcfg, inputs,
                            what, sizeof what);
      if (rc != 0) break;
      const bool done_before = row_done(x, &rcfg), is_ref = is_reference(x, order[k]);
      if (done_before && (!is_ref || have_ref)) {
        x->pr.done++;
        x->skipped++;
        progress_show(&x->pr, what);
        continue;
      }
      if (*model == NULL) { /* the sim reads no weights: a virtual model of any size */
        if (cli_preset_build_for(&x->presets[mi], x->backend, model, &err) != MOE_OK) {
          rc = cli_fail(&err);
          break;
        }
        sweep_pin(x, *model);
      }
      rcfg.model = *model;
      if (s->link_ratio > 0 && !derived) {
        if (isnan(link = sweep_link(x, mi, *model, wl, batch, ids, n_ids))) rc = 1;
        derived = true;
        rcfg.link_gbps = link;
      }
      if (rc == 0) {
        progress_show(&x->pr, what);
        rc = sweep_run_row(x, &rcfg, done_before, is_ref, &ref, &have_ref);
        x->pr.done++;
      }
    }
  run_result_free(&ref);
  return rc;
}

/* Every workload and batch of model mi; the model is built on first need. */
static int sweep_model(sweep_ctx *x, int mi) {
  moe_model *model = NULL;
  int rc = 0;
  /* the model's content keys its rows (a checkpoint's weights read whole, once) */
  if (!cli_model_hash(&x->presets[mi], x->model_hash[mi])) {
    cli_error("sweep: model %s cannot be read to key its rows", x->presets[mi].name);
    return 1;
  }
  for (int w = 0; w < x->s->n_workloads && rc == 0; w++) {
    const workload *wl = &x->s->workloads[w];
    int32_t *ids = NULL;
    int n_ids = 0, len = 0;
    if (wl->token_file[0] &&
        cli_read_token_file(wl->token_file, wl->prompt_len, &ids, &n_ids, &len) != 0) {
      rc = 1;
      break;
    }
    int32_t *ev = NULL;
    x->eval = NULL;
    x->eval_n = x->eval_len = 0;
    if (wl->eval_file[0]) {
      if (cli_read_token_file(wl->eval_file, -1, &ev, &x->eval_n, &x->eval_len) != 0) {
        free(ids);
        rc = 1;
        break;
      }
      if (x->eval_len < 2) {
        cli_error("%s: eval windows of %d token(s): at least 2 are needed", wl->eval_file, x->eval_len);
        free(ids);
        free(ev);
        rc = 1;
        break;
      }
      if (wl->eval_windows > 0 && wl->eval_windows < x->eval_n) x->eval_n = wl->eval_windows;
      x->eval = ev;
    }
    for (int bi = 0; bi < wl->n_batches && rc == 0; bi++)
      if (!x->shard_n || x->group_shard[group_of(x, mi, w, bi)] == x->shard_k)
        rc = sweep_batch(x, mi, &model, wl, wl->batches[bi], ids, n_ids);
    free(ids);
    free(ev);
    x->eval = NULL;
  }
  sweep_unpin(x, model);
  moe_model_free(model);
  return rc;
}

/* Metadata for the sweep's JSON: run facts plus the seeds of every model
 * and workload. */
static json_t *sweep_metadata(const sweep_ctx *x, int argc, char **argv) {
  char start[32];
  iso_now(start, sizeof start);
  json_t *meta = row_metadata(row_argv_json(argc, argv), x->s->name, x->backend, x->s->link_gbps,
                              x->s->hardware, start);
  json_object_set_new(meta, "device", json_string(x->device));
  json_t *seeds = json_object();
  for (int i = 0; i < x->s->n_models; i++)
    json_object_set_new(seeds, x->presets[i].name, json_integer((json_int_t)x->presets[i].seed));
  json_object_set_new(meta, "model_seeds", seeds);
  json_t *wseeds = json_object();
  for (int i = 0; i < x->s->n_workloads; i++) {
    const workload *w = &x->s->workloads[i];
    json_object_set_new(wseeds, w->name,
                        w->token_file[0] ? json_string(w->token_file) : json_integer((json_int_t)w->seed));
  }
  json_object_set_new(meta, "prompt_seeds", wseeds);
  /* the suite file's contents: merge refuses shards of two versions of it */
  char hex[17];
  if (x->s->path[0] && cli_file_hash_hex(x->s->path, hex))
    json_object_set_new(meta, "suite_hash", json_string(hex));
  return meta;
}

/* Whether PREFIX.csv or .json would overwrite one of the suite's inputs:
 * the suite file, a workload's token or eval file, the hardware profile,
 * a routing trace.  Prints why and returns 1 when it would. */
static int sweep_clobbers(const sweep_ctx *x) {
  char csv[MOE_PUBLISH_PATH_MAX + 8], json[MOE_PUBLISH_PATH_MAX + 8];
  snprintf(csv, sizeof csv, "%s.csv", x->prefix);
  snprintf(json, sizeof json, "%s.json", x->prefix);
  const suite *s = x->s;
  const char *trace = !strncmp(s->sim_routing, "trace:", 6) ? s->sim_routing + 6 : NULL;
  const char *ins[3 + 2 * SUITE_MAX] = {s->path, s->hardware, trace};
  int n = 3;
  for (int w = 0; w < s->n_workloads && w < SUITE_MAX; w++) {
    ins[n++] = s->workloads[w].token_file;
    ins[n++] = s->workloads[w].eval_file;
  }
  for (int i = 0; i < n; i++)
    if (cli_output_clobbers("sweep", csv, ins[i]) || cli_output_clobbers("sweep", json, ins[i]))
      return 1;
  return 0;
}

/* --resume onto PREFIX.csv written by another suite would drop that
 * suite's rows (they are not this suite's): refused.  The suite is the
 * one PREFIX.json names; a CSV without its JSON is refused too (which
 * suite wrote it cannot be told).  Returns 1 after printing why. */
static int resume_other_suite(const sweep_ctx *x, const char *csv) {
  char path[MOE_PUBLISH_PATH_MAX + 8];
  snprintf(path, sizeof path, "%s.json", x->prefix);
  json_error_t je;
  json_t *j = json_load_file(path, 0, &je), *m = j ? json_object_get(j, "metadata") : NULL;
  const char *name = m ? json_string_value(json_object_get(m, "suite")) : NULL;
  int rc = 0;
  if (name == NULL) {
    cli_error("sweep --resume: %s has no %s naming the suite that wrote it; refusing to resume "
              "(its rows could be another suite's); move it away or run without --resume", csv, path);
    rc = 1;
  } else if (strcmp(name, x->s->name) != 0) {
    cli_error("sweep --resume: %s was written by suite '%s', not '%s'; refusing to resume onto "
              "it (that would drop its rows); use another -o", csv, name, x->s->name);
    rc = 1;
  }
  json_decref(j);
  return rc;
}

/* Removes the rows read by --resume that the suite did not visit (its
 * inputs changed, or the suite no longer lists them); returns how many. */
static int drop_stale_rows(sweep_ctx *x) {
  size_t w = 0;
  int dropped = 0;
  for (size_t i = 0; i < x->t.n; i++) {
    if (i < x->n_read && !x->kept[i]) {
      for (size_t c = 0; c < res_ncols; c++) free(x->t.rows[i].v[c]);
      free(x->t.rows[i].v);
      dropped++;
      continue;
    }
    x->t.rows[w++] = x->t.rows[i];
  }
  x->t.n = w;
  return dropped;
}

/* A suite's policy entry: a built-in name, or the path of a plugin (it has
 * a '/' or ends in .so), relative to the suite file.  Returns 0, or 1
 * after printing why. */
static int resolve_policy(const suite *s, const char *entry, const moe_policy **pol,
                          moe_policy_library *lib, char file[1200]) {
  memset(lib, 0, sizeof *lib);
  file[0] = '\0';
  const size_t n = strlen(entry);
  if (strchr(entry, '/') == NULL && !(n > 3 && strcmp(entry + n - 3, ".so") == 0)) {
    *pol = moe_policy_find(entry);
    if (*pol == NULL) {
      cli_error("%s: unknown policy '%s' in field 'policies' (a built-in name, or a plugin's path)",
                s->path, entry);
      return 1;
    }
    return 0;
  }
  char path[1200];
  if (entry[0] == '/') {
    snprintf(path, sizeof path, "%s", entry);
  } else {
    const char *slash = strrchr(s->path, '/');
    int dl = slash ? (int)(slash - s->path) : 1;
    snprintf(path, sizeof path, "%.*s/%s", dl, slash ? s->path : ".", entry);
  }
  moe_error err = {0};
  if (moe_policy_plugin_load(lib, path, &err) != MOE_OK) {
    cli_fail(&err);
    return 1;
  }
  *pol = lib->policy;
  memcpy(file, path, sizeof path < 1200 ? sizeof path : 1200);
  return 0;
}

/* sweep's options. */
typedef struct sweep_opts {
  const char *suite_arg, *out;
  bool resume, quiet;
  long reps;
  int shard_k, shard_n;
} sweep_opts;

/* --shard K/N: 0, or 2 after printing why. */
static int sweep_shard(sweep_opts *o, const char *arg) {
  char spec[64];
  snprintf(spec, sizeof spec, "%s", arg); /* arg may be read-only */
  char *slash = strchr(spec, '/');
  long k = 0, n = 0;
  bool ok = slash != NULL && strlen(arg) < sizeof spec;
  if (ok) {
    *slash = '\0';
    ok = flag_long(FLAG_SHARD, spec, &k) && flag_long(FLAG_SHARD, slash + 1, &n) && k <= n;
  }
  if (!ok) {
    cli_error("sweep: invalid value '%s' for --shard (K/N with 1 <= K <= N <= %d)", arg,
              FLAG_MAX_SHARDS);
    return 2;
  }
  o->shard_k = (int)k;
  o->shard_n = (int)n;
  return 0;
}

/* One flag into o (flags_getopt). */
static int sweep_take(void *ctx, int c, const char *arg) {
  sweep_opts *o = ctx;
  switch (c) {
    case 'o':
      if (cli_check_prefix("sweep", arg) != 0) return 2;
      o->out = arg;
      return 0;
    case 'R': o->resume = true; return 0;
    case 'q': o->quiet = true; return 0;
    case 'S': return sweep_shard(o, arg);
    case 'r':
      if (flag_long(FLAG_REPS, arg, &o->reps)) return 0;
      cli_error("sweep: invalid value '%s' for --reps (1..%d)", arg, SUITE_MAX_REPS);
      return 2;
    default: return -1;
  }
}

/* Options of sweep; returns -1 to go on, else the exit code. */
static int sweep_args(int argc, char **argv, sweep_opts *o) {
  static const struct option opts[] = {
      {"out", required_argument, 0, 'o'}, {"shard", required_argument, 0, 'S'},
      {"resume", no_argument, 0, 'R'}, {"reps", required_argument, 0, 'r'},
      {"quiet", no_argument, 0, 'q'}, {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  const int rc = flags_getopt("sweep", argc, argv, "ho:", opts, sweep_take, o, sweep_usage);
  if (rc >= 0) return rc;
  if (optind != argc - 1) {
    cli_error("sweep: give exactly one suite (see 'moebench list suites')");
    return 2;
  }
  o->suite_arg = argv[optind];
  return -1;
}

/* The suite's policies resolved (built-ins or plugins, each with its
 * cache and row label), no two named alike.  0, or 1 after printing why. */
static int sweep_policies(sweep_ctx *x) {
  for (int i = 0; i < x->s->n_policies; i++) {
    /* NAME or NAME+KIND:SIZE (the policy with an expert cache) */
    char base[SUITE_NAME_MAX];
    if (!cli_split_policy(x->s->policies[i], base, sizeof base, &x->cache[i])) {
      cli_error("%s: policy entry '%s' is not NAME or NAME+KIND:SIZE (KIND lru, lfu, static or ring; "
                "SIZE experts, N%% or bytes)", x->s->path, x->s->policies[i]);
      return 1;
    }
    if (resolve_policy(x->s, base, &x->pol[i], &x->libs[i], x->plugin_path[i]) != 0) return 1;
    snprintf(x->label[i], sizeof x->label[i], "%s%s%s", x->pol[i]->name, x->cache[i] ? "+" : "",
             x->cache[i] ? x->cache[i] : "");
  }
  for (int i = 0; i < x->s->n_policies; i++)
    for (int j = 0; j < i; j++)
      if (strcmp(x->label[i], x->label[j]) == 0 || (x->pol[i] == x->pol[j] && !x->cache[i] && !x->cache[j])) {
        cli_error("%s: policies '%s' and '%s' are both named '%s'", x->s->path, x->s->policies[j],
                  x->s->policies[i], x->label[i]);
        return 1;
      }
  return 0;
}

/* The suite's models: presets, or checkpoint directories (an entry with a
 * '/', relative to the suite file unless absolute).  0, or 1. */
static int sweep_presets(sweep_ctx *x) {
  x->presets = calloc((size_t)x->s->n_models, sizeof *x->presets);
  if (x->presets == NULL) return cli_error("out of host memory"), 1;
  for (int i = 0; i < x->s->n_models; i++) {
    char mpath[1200];
    const char *entry = x->s->models[i];
    if (strchr(entry, '/') && entry[0] != '/') {
      const char *slash = strrchr(x->s->path, '/');
      snprintf(mpath, sizeof mpath, "%.*s/%s", slash ? (int)(slash - x->s->path) : 1,
               slash ? x->s->path : ".", entry);
      entry = mpath;
    }
    if (strchr(entry, '/') && cli_check_model_dir(x->s->path, entry) != 0) return 1;
    moe_error err = {0};
    if (cli_preset_load(&x->presets[i], entry, &err) != MOE_OK) return cli_fail(&err);
  }
  return 0;
}

/* The backend (its device named once) and the output prefix.  0, or 1. */
static int sweep_backend_prefix(sweep_ctx *x, const char *out) {
  const moe_backend_ops *bo =
      cli_resolve_backend(x->s->backend, x->s->threads, &x->s->link_gbps,
                          x->s->hardware[0] ? x->s->hardware : NULL, x->device, sizeof x->device);
  if (bo == NULL) return 1;
  x->backend = bo->name;
  if (x->s->link_ratio > 0 &&
      (!(bo->caps & MOE_BACKEND_CAP_LINK_CAP) || (bo->caps & MOE_BACKEND_CAP_MODELED))) {
    /* as a link cap: the backend's own link is the one measured (or
     * modeled: a suite's ratio is for the cpu backend's emulation; the sim
     * keeps its profile's link, `moebench regime` scales it) */
    fprintf(stderr, "moebench: note: the %s backend copies over its own link; link ratio %g "
                    "ignored (rows record none)\n", bo->name, x->s->link_ratio);
    x->s->link_ratio = 0;
  }
  if (out && cli_check_prefix("sweep", out) != 0) return 1;
  if (out)
    snprintf(x->prefix, sizeof x->prefix, "%s", out);
  else if (x->shard_n)
    snprintf(x->prefix, sizeof x->prefix, "results/runs/%s.shard%d-of-%d", x->s->name, x->shard_k,
             x->shard_n);
  else
    snprintf(x->prefix, sizeof x->prefix, "results/runs/%s", x->s->name);
  return x->shard_n && plan_shards(x) != 0;
}

/* --resume: the rows of PREFIX.csv (of this suite) indexed by key.  0, or 1. */
static int sweep_resume(sweep_ctx *x) {
  char path[MOE_PUBLISH_PATH_MAX + 8];
  moe_error err = {0};
  snprintf(path, sizeof path, "%s.csv", x->prefix);
  if (access(path, F_OK) == 0 && resume_other_suite(x, path)) return 1;
  if (access(path, F_OK) == 0 &&
      (res_read_csv(path, &x->t, &err) != MOE_OK || res_check_values(&x->t, path, &err) != MOE_OK))
    return cli_fail(&err);
  long dup = -1;
  x->done_ix = res_index_build(&x->t, NULL, &dup);
  x->n_read = x->t.n;
  x->kept = calloc(x->t.n ? x->t.n : 1, sizeof *x->kept);
  if (x->done_ix == NULL || x->kept == NULL) {
    cli_error("out of host memory indexing %s", path);
    return 1;
  }
  if (dup >= 0) {
    cli_error("%s: row %ld repeats the key of an earlier row; refusing to resume from it", path,
              dup + 1);
    return 1;
  }
  return 0;
}

/* The metadata and the progress totals (this shard's rows). */
static void sweep_start(sweep_ctx *x, int n_orig, char **orig, bool quiet) {
  x->meta = sweep_metadata(x, n_orig, orig);
  x->pr = (progress){0, 0, moe_clock_s(), isatty(2) != 0, quiet};
  for (int w = 0; w < x->s->n_workloads; w++) x->pr.total += x->s->workloads[w].n_batches;
  x->pr.total *= x->s->n_models * x->s->n_budgets * x->s->n_policies;
  const int suite_rows = x->pr.total;
  if (x->shard_n) {
    int groups_here = 0;
    for (int g = 0; g < x->n_groups; g++) groups_here += x->group_shard[g] == x->shard_k;
    x->pr.total = groups_here * x->s->n_budgets * x->s->n_policies;
    char shard[32];
    snprintf(shard, sizeof shard, "%d/%d", x->shard_k, x->shard_n);
    json_object_set_new(x->meta, "shard", json_string(shard));
  }
  json_object_set_new(x->meta, "suite_rows", json_integer(suite_rows));
  json_object_set_new(x->meta, "rows_expected", json_integer(x->pr.total));
}

/* After the rows: the summary, stale rows dropped and the files published
 * (also when nothing ran), and the rule of --help: any row in error fails
 * the sweep. */
static int sweep_finish(sweep_ctx *x, int rc, bool quiet) {
  if (!quiet) {
    if (x->pr.tty) fprintf(stderr, "\n");
    fprintf(stderr,
            "sweep %s: %d rows: %d run, %d kept from the earlier file (--resume; %d of them run "
            "again only as the parity reference), %.0f s; wrote %s.csv and %s.json\n",
            x->s->name, x->pr.total, x->ran, x->skipped, x->reruns, moe_clock_s() - x->pr.start,
            x->prefix, x->prefix);
  }
  int dropped = 0;
  moe_error err = {0};
  if (rc == 0 && x->resume) dropped = drop_stale_rows(x);
  if (rc == 0 && (x->ran == 0 || dropped > 0) && row_write_outputs(x->prefix, &x->t, x->meta, &err) != MOE_OK)
    rc = cli_fail(&err);
  if (rc == 0 && dropped > 0 && !quiet)
    fprintf(stderr, "sweep %s: dropped %d row%s of the earlier file that this suite no longer has\n",
            x->s->name, dropped, dropped == 1 ? "" : "s");
  if (rc != 0) return rc;
  size_t failed = 0;
  for (size_t i = 0; i < x->t.n; i++) failed += strcmp(res_get(&x->t.rows[i], "status"), "error") == 0;
  if (failed) {
    cli_error("sweep %s: %zu of %zu rows ended in an error (see their 'error' column in %s.csv)",
              x->s->name, failed, x->t.n, x->prefix);
    return 1;
  }
  return 0;
}

static void sweep_free(sweep_ctx *x) {
  for (int i = 0; i < SUITE_MAX; i++) moe_policy_plugin_close(&x->libs[i]);
  res_index_free(x->done_ix);
  free(x->kept);
  moe_device_destroy(x->holder);
  json_decref(x->meta);
  res_table_free(&x->t);
  free(x->presets);
  free(x->group_shard);
  free(x->s);
}

int cmd_sweep(int argc, char **argv) {
  char *orig[128]; /* getopt permutes argv; keep it as given for the metadata */
  const int n_orig = argc < 128 ? argc : 128;
  memcpy(orig, argv, (size_t)n_orig * sizeof *orig);
  sweep_opts so = {0};
  int rc = sweep_args(argc, argv, &so);
  if (rc >= 0) return rc;
  const char *suite_arg = so.suite_arg, *out = so.out;
  const bool resume = so.resume, quiet = so.quiet;
  const long reps = so.reps;
  sweep_ctx x = {.resume = resume, .shard_k = so.shard_k, .shard_n = so.shard_n};
  res_table_init(&x.t);
  x.s = calloc(1, sizeof *x.s);
  moe_error err = {0};
  int lock_fd = -1;
  rc = 1;
  if (x.s == NULL || suite_load(x.s, suite_arg, &err) != MOE_OK) {
    if (x.s) cli_fail(&err);
  } else {
    if (reps) x.s->repetitions = (int)reps;
    if (sweep_policies(&x) == 0 && sweep_presets(&x) == 0 && sweep_backend_prefix(&x, out) == 0) {
      cli_mkdir_parent(x.prefix);
      if ((lock_fd = cli_lock_prefix("sweep", x.prefix)) >= 0 && !sweep_clobbers(&x) &&
          (!resume || sweep_resume(&x) == 0)) {
        sweep_start(&x, n_orig, orig, quiet);
        rc = 0;
        for (int mi = 0; mi < x.s->n_models && rc == 0; mi++) rc = sweep_model(&x, mi);
        rc = sweep_finish(&x, rc, quiet);
      }
    }
  }
  if (lock_fd >= 0) close(lock_fd);
  sweep_free(&x);
  return rc;
}
