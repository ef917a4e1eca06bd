/* The Pre-gated MoE paper's figures as data (workloads/paper/pregated-moe.json,
 * or $MOE_PAPER_FILE): the one place the harness takes them from, for
 * report, bench-policies, list paper and run_all.sh. */
#ifndef MOEBENCH_PAPER_H
#define MOEBENCH_PAPER_H

#include <stddef.h>

typedef struct paper_figure {
  char key[64], unit[16], model[96], source[200];
  double value;
} paper_figure;

/* The file's path. */
const char *paper_path(void);
/* The figure named key, or NULL (file missing or bad, or no such key:
 * callers print "?" for it).  The file is read once (again when
 * $MOE_PAPER_FILE names another). */
const paper_figure *paper_get(const char *key);
/* The value of key, or NAN. */
double paper_value(const char *key);
/* key's value as the tables print it ("81%", "1.5x", "+0.2%", "42
 * tokens/s"), or "?" when the file lacks it; returns buf. */
const char *paper_fmt(char *buf, size_t cap, const char *key);
/* Every figure (n in *n; NULL when the file cannot be read, with why). */
const paper_figure *paper_all(size_t *n, const char **why);

#endif
