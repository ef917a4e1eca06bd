/* The parts of moebench report shared by its table (report.c) and its
 * figures (report_plots.c). */
#ifndef MOEBENCH_REPORT_H
#define MOEBENCH_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "moe/policy.h"
#include "results.h"

/* A numeric column of a row (NAN when empty). */
double report_num(const res_row *r, const char *col);
/* Whether a and b are of one group: model, workload, backend, budget, batch. */
bool report_same_group(const res_row *a, const res_row *b);
/* The row of policy in like's group whose status is ok (NULL: none). */
const res_row *report_find_policy(const res_table *t, const res_row *like, const char *policy);
/* The same for the built-in policy that plays role (moe/policy.h). */
const res_row *report_find_role(const res_table *t, const res_row *like, moe_policy_role role);
/* The ok rows of the paper's four policies (moe_policy_paper_baselines:
 * gpu-only, ondemand, prefetch-all, pregated) in like's group (NULL: none). */
void report_paper_rows(const res_table *t, const res_row *like, const res_row *rows[4]);
/* [A-Za-z0-9], by bytes, whatever the locale. */
bool report_ascii_alnum(int c);
/* A file-name part from a CSV field: [A-Za-z0-9._-] kept, anything else
 * '_', never empty, never starting with '.', at most 48 characters. */
void report_safe_name(char *out, size_t cap, const char *v);

/* A --plots or --headline-png path: only characters gnuplot takes safely;
 * 0, or 2 after printing why, naming the option. */
int report_check_plot_path(const char *opt, const char *path);
/* A command's -o PREFIX and --figure PNG (either may be NULL): the prefix a
 * safe output (cli_check_prefix), and a figure only with a prefix whose
 * CSV it draws, both paths gnuplot takes.  0, or 2 after a line naming
 * cmd. */
int report_check_figure_out(const char *cmd, const char *out, const char *figure);
/* The headline figure of the group at first (the paper's four policies). */
int report_headline_figure(const res_table *t, size_t first, const char *png);
/* The figures of the group at first into dir, linked from md. */
int report_group_plots(const res_table *t, size_t first, const char *dir, FILE *md);

/* Drawing helpers of report_plots.c, for other commands' figures. */
struct moe_publish;
/* A single-quoted gnuplot string: the only way text enters a script. */
void report_gp_quote(FILE *f, const char *v);
/* A script or data file opened through moe/publish.h (NULL after a line
 * naming it) and published (0, or 1 after a line). */
FILE *report_plot_file(struct moe_publish *pub, const char *path);
int report_plot_close(struct moe_publish *pub);
/* Runs gnuplot (no shell) on script gp whose outputs are png[0..n-1]:
 * 0, or 1 after a line naming the file. */
int report_draw(const char *gp, const char *const *png, int n);

#endif
