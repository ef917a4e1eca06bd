/* The moebench commands, as one table (commands.c): main dispatches through
 * it and moebench --help lists it.  Each command lives in a file named after
 * it (run.c, sweep.c, ...), takes (argc, argv) with argv[0] its name, and
 * returns the process exit code (0 ok, 1 failure or regression, 2 bad usage
 * or input); its usage function prints its --help text. */
#ifndef MOEBENCH_COMMANDS_H
#define MOEBENCH_COMMANDS_H

#include <stddef.h>
#include <stdio.h>

typedef struct moebench_command {
  const char *name;                 /* as typed: "bench-policies" */
  int (*run)(int argc, char **argv);
  const char *summary;              /* one line of moebench --help */
  void (*usage)(FILE *f);           /* the command's --help text */
} moebench_command;

/* Every command, in the order moebench --help lists them. */
extern const moebench_command moebench_commands[];
extern const size_t moebench_n_commands;
/* The command of that name, or NULL. */
const moebench_command *moebench_command_find(const char *name);
/* moebench --help: the global usage with one line per command. */
void moebench_usage(FILE *f);

#define MOEBENCH_COMMAND(fn)          \
  int cmd_##fn(int argc, char **argv); \
  void fn##_usage(FILE *f)

MOEBENCH_COMMAND(run);
MOEBENCH_COMMAND(sweep);
MOEBENCH_COMMAND(compare);
MOEBENCH_COMMAND(merge);
MOEBENCH_COMMAND(plan);
MOEBENCH_COMMAND(timeline);
MOEBENCH_COMMAND(calibrate);
MOEBENCH_COMMAND(replay);
MOEBENCH_COMMAND(validate);
MOEBENCH_COMMAND(report);
MOEBENCH_COMMAND(generate);
MOEBENCH_COMMAND(eval);
MOEBENCH_COMMAND(bench_ops);
MOEBENCH_COMMAND(bench_policies);
MOEBENCH_COMMAND(list);
MOEBENCH_COMMAND(regime);
MOEBENCH_COMMAND(crossover);
MOEBENCH_COMMAND(sensitivity);

#endif
