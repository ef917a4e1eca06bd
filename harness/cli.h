/* Shared pieces of the moebench subcommands: option parsing helpers, model
 * presets, prompt sources. */
#ifndef MOEBENCH_CLI_H
#define MOEBENCH_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common.h"
#include "moe/model.h"

/* Prints "moebench: <msg>" to stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints the engine error as one line and returns 1 (the exit code).  The
 * source file:line of the failure is added only when verbose. */
int cli_fail(const moe_error *err);


/* A refused option value, in one line naming the command, the flag (by
 * its long name when it has one) and what the parser expected, with the
 * limits ("run: --gen-len '1': expected an integer in 2..65536"). */
struct option;
void cli_bad_value(const char *cmd, const struct option *opts, int idx, int c, const char *arg);

/* Directory holding model presets: $MOE_MODELS_DIR, else the source tree's
 * workloads/models. */
const char *cli_models_dir(void);

/* A model preset: workloads/models/NAME.json. */
typedef struct cli_preset {
  char name[64];      /* a checkpoint's: BASENAME@HASH (see cli_preset_load) */
  char checkpoint[1024]; /* a checkpoint directory, or "" for a synthetic preset */
  char file[4096];       /* a synthetic preset's file */
  char description[160];
  moe_config cfg;
  moe_dtype dtype;
  uint64_t seed;
  double routing_skew;
  bool pregate;       /* synthetic weights include a pre-gate */
} cli_preset;

/* Synthetic-model options of a preset. */
moe_synth_options cli_preset_synth(const cli_preset *p);

/* Loads preset NAME (into *p when non-NULL) and builds its model. */
moe_status cli_preset_model(const char *name, cli_preset *p, moe_model **out, moe_error *err);
/* The same for a run on `backend`: the sim backend reads no weights, so it
 * gets a virtual model (moe_model_virtual: shapes only, any size). */
moe_status cli_preset_model_for(const char *name, const char *backend, cli_preset *p,
                                moe_model **out, moe_error *err);

/* Builds a loaded preset's model: its checkpoint, or synthetic weights. */
moe_status cli_preset_build(const cli_preset *p, moe_model **out, moe_error *err);
/* The virtual model (moe_model_virtual) of a preset, for the sim backend. */
moe_status cli_preset_virtual(const cli_preset *p, moe_model **out, moe_error *err);
/* The model of p for a run on backend: virtual on a modeled backend (it
 * reads no weights), else cli_preset_build's. */
moe_status cli_preset_build_for(const cli_preset *p, const char *backend, moe_model **out,
                                moe_error *err);

/* Calls fn(path, ctx) for every *.json file of dir in name order; returns
 * the first non-zero fn result, 0, or -1 when dir cannot be read. */
int cli_for_each_json(const char *dir, int (*fn)(const char *path, void *ctx), void *ctx);

/* Reads preset NAME (or a path to a preset file), or a Hugging Face
 * checkpoint directory: its config.json is read, its dtype taken from the
 * embedding's, and its name is the directory's base name, '@', and 8 hex
 * digits of a hash of config.json and of the weights' index (the index
 * file, or the safetensors header), so two different checkpoints never
 * share a result key.  Errors name the file and field. */
moe_status cli_preset_load(cli_preset *p, const char *name_or_path, moe_error *err);

/* FNV-1a 64 of a whole file's bytes as 16 hex digits into out (17 bytes);
 * false when it cannot be read. */
bool cli_file_hash_hex(const char *path, char out[17]);

/* The content of a model as 16 hex digits: a preset's file, or a
 * checkpoint's config, index and every weight file (read whole: a hash
 * over 8-byte words, gigabytes per second).  false when unreadable. */
bool cli_model_hash(const cli_preset *p, char out[17]);

/* The contents of what a result row's other key columns only name, as one
 * hash (16 hex digits; the row's `inputs` column): the model (its
 * cli_model_hash), and the contents of token_file, eval_file, hardware (a
 * profile file), the sim routing trace (routing "trace:FILE"; the spec
 * itself otherwise) and a policy plugin's binary, each when given (NULL or
 * "" otherwise).  Two spellings of one file give one hash; a rebuilt
 * plugin or an edited token file another.  false when a named file cannot
 * be read. */
bool cli_inputs_hash(const char *model_hash, const char *token_file, const char *eval_file,
                     const char *hardware, const char *sim_routing, const char *plugin,
                     char out[17]);



/* Parses "1,2,3" or "1 2 3" into ids (malloc'd); returns count or -1. */
int cli_parse_ids(const char *s, int32_t **ids);


/* Creates the directories above an output prefix (as mkdir -p of its
 * parent; errors show when the file is written). */
void cli_mkdir_parent(const char *prefix);

/* An output prefix (PREFIX.csv, .json, .lock): not empty, short enough
 * that every name built from it fits (refused, never cut), not a
 * directory ("-o dir/").  Returns 0, or 1 after printing why, naming the
 * command. */
int cli_check_prefix(const char *cmd, const char *prefix);

/* Takes PREFIX.lock for the life of the process (advisory flock; the file
 * opened O_NOFOLLOW and only when it is a regular file): every command that
 * writes PREFIX.csv and .json (run -o, sweep, merge -o, eval -o) takes it,
 * so two writers of one prefix never interleave.  Returns the descriptor,
 * or -1 after printing why. */
int cli_lock_prefix(const char *cmd, const char *prefix);

/* Whether writing output would overwrite input (the same file, however
 * spelled: the same device and inode when both exist, else the same
 * resolved directory and name).  Prints why and returns 1 when it would;
 * 0 otherwise (also when either is NULL or empty). */
int cli_output_clobbers(const char *cmd, const char *output, const char *input);

/* Text for a markdown table cell or heading: '|' escaped as '\|', '\' as
 * '\\', newlines, tabs and other control bytes as one space.
 * cli_md_into writes into out (cut to cap - 1 bytes); cli_md returns one of
 * 32 rotating static buffers of 1 KiB (enough for one printf's cells). */
void cli_md_into(char *out, size_t cap, const char *s);
const char *cli_md(const char *s);


/* A --model-dir argument as a path the preset loader reads as a directory:
 * "ck" (relative, no slash, which would read as a preset name) becomes
 * "./ck"; other paths are returned as they are.  One of 8 rotating static
 * buffers. */
const char *cli_model_dir_arg(const char *arg);

/* --policies LIST: comma-separated built-in policy names into pol[0..*np)
 * (at most max): 0, or 2 after one line naming cmd (an empty entry, an
 * unknown name, one listed twice, too many).  With cache non-NULL an entry
 * may be NAME+KIND:SIZE as run's --policy takes it; cache[i] gets its
 * "KIND:SIZE" ("" for none). */
#define CLI_CACHE_MAX 48
struct moe_policy;
int cli_parse_policies(const char *cmd, const char *list, const struct moe_policy **pol,
                       char (*cache)[CLI_CACHE_MAX], int max, int *np);

/* A fresh private directory $TMPDIR/moebench-CMD-XXXXXX (or under /tmp)
 * into dir: 0, or 1 after one line naming cmd. */
int cli_temp_dir(const char *cmd, char *dir, size_t cap);

/* A --model-dir that is not a directory: one line, -1 (else 0). */
int cli_check_model_dir(const char *cmd, const char *dir);

/* Usage check of names given on the command line: a preset name with no
 * preset file, or a backend name no build knows ("cuda" is known even
 * where it is not compiled: that is a runtime failure), is bad usage.
 * Prints one line and returns 2, else 0. */
int cli_check_names(const char *cmd, const char *preset, const char *backend);

/* Opens an input file for reading: refuses anything but a regular file
 * (a FIFO or device would block or never end) with one line naming the
 * file and `what`; NULL then. */
FILE *cli_open_input(const char *path, const char *what);

/* The one reader of token files: one prompt per line, ids separated by
 * commas or spaces, blank lines and lines starting with '#' skipped, all prompts of one length
 * (want_len, or the first prompt's when want_len < 0).  Returns 0 with
 * *out (malloc'd, n_prompts x len), or -1 after printing one line naming
 * the file and line. */
int cli_read_token_file(const char *path, int want_len, int32_t **out, int *n_prompts, int *len);

/* Resolves a backend name ("auto": moe_backend_auto) and learns its device
 * name by opening it once.  A link cap on a backend that cannot emulate one
 * is dropped (*link = 0) with a note, since its copies use the real link.
 * Returns the table, or NULL after printing why. */
struct moe_backend_ops;
const struct moe_backend_ops *cli_resolve_backend(const char *name, int threads, double *link,
                                                  const char *hardware, char *device, size_t cap);

/* --hardware and --sim-routing against the backend: the sim needs a
 * profile, and only the sim takes either.  Prints one line naming cmd and
 * returns 2; else 0 with the profile's file in hw_path (when named). */
int cli_check_sim(const char *cmd, const char *backend, const char *hw_name, const char *sim_routing,
                  char *hw_path, size_t cap);

#endif
