/* moebench: the command-line front of the engine and harness.  The commands
 * are one table (commands.c), each in a file named after it; `moebench
 * --help` lists them and every command takes --help.  Exit codes: 0 ok, 1 a
 * run failed, 2 bad usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "moe/cuda.h"
#include "moe/version.h"

static bool is_help(const char *a) {
  return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0 || strcmp(a, "help") == 0;
}

int main(int argc, char **argv) {
  if (argc >= 2 && (strcmp(argv[1], "--verbose") == 0 || strcmp(argv[1], "-v") == 0)) {
    setenv("MOE_VERBOSE", "1", 1); /* errors carry their source file:line */
    argc--, argv++;
    argv[0] = "moebench";
  }
  if (argc < 2) {
    moebench_usage(stderr);
    return 2;
  }
  const char *cmd = argv[1];
  if (is_help(cmd)) {
    /* moebench help COMMAND: that command's --help */
    const moebench_command *c = argc > 2 && strcmp(cmd, "help") == 0 ? moebench_command_find(argv[2]) : NULL;
    if (c) c->usage(stdout);
    else moebench_usage(stdout);
    return 0;
  }
  if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
    printf("moebench %s (cuda backend %s)\n", moe_version(),
           moe_cuda_compiled() ? "compiled" : "not compiled");
    return 0;
  }
  const moebench_command *c = moebench_command_find(cmd);
  if (c) return c->run(argc - 1, argv + 1);
  cli_error("unknown command '%s' (run 'moebench --help' for the list)", cmd);
  return 2;
}
