/* The moebench subcommands: each takes (argc, argv) with argv[0] the
 * subcommand's name and returns the process exit code (0 ok, 1 failure or
 * regression, 2 bad usage or input). */
#ifndef MOEBENCH_COMMANDS_H
#define MOEBENCH_COMMANDS_H

int cmd_generate(int argc, char **argv);
int cmd_bench_ops(int argc, char **argv);
int cmd_bench_policies(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_sweep(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_report(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_timeline(int argc, char **argv);
int cmd_calibrate(int argc, char **argv);
int cmd_replay(int argc, char **argv);
int cmd_validate(int argc, char **argv);
/* moebench list hardware */
int hw_list(void);

#endif
