/* Publishing output files (moe/publish.h) and the output lock, held by
 * the engine's function and by the commands that use it: a planted link
 * is never written through, a device or FIFO is never replaced, a path
 * too long is refused rather than cut, and a prefix another writer holds
 * is refused. */
#include <check.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "moe/publish.h"
#include "results.h"
#include "testutil.h"

static char g_dir[256];
static char g_out[8192];

static void setup(void) { ck_assert_ptr_nonnull(tu_tempdir(g_dir, sizeof g_dir)); }
static void teardown(void) { tu_rmtree(g_dir); }

static const char *in_dir(const char *name) {
  static char buf[4][600];
  static int k;
  k = (k + 1) % 4;
  snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
  return buf[k];
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs(text, f);
  fclose(f);
}

static void read_text(const char *path, char *buf, size_t cap) {
  FILE *f = fopen(path, "r");
  ck_assert_msg(f != NULL, "%s: cannot read", path);
  size_t n = fread(buf, 1, cap - 1, f);
  buf[n] = '\0';
  fclose(f);
}

/* moebench with the arguments after the binary; its exit status. */
static int moebench(const char *args) {
  char cmd[12000];
  snprintf(cmd, sizeof cmd, "cd '%s' && MOE_MODELS_DIR='%s/workloads/models' '%s' %s", g_dir,
           MOE_SOURCE_DIR, MOEBENCH_PATH, args);
  return tu_run(cmd, g_out, sizeof g_out);
}

static mode_t kind_of(const char *path) {
  struct stat st;
  ck_assert_int_eq(lstat(path, &st), 0);
  return st.st_mode & S_IFMT;
}

START_TEST(planted_link_is_not_followed) {
  char buf[64];
  write_text(in_dir("victim"), "precious\n");
  /* the old fixed temporary name and any link at the target itself */
  ck_assert_int_eq(symlink(in_dir("victim"), in_dir("out.txt.tmp")), 0);
  moe_error err = {0};
  ck_assert_msg(moe_publish_bytes(in_dir("out.txt"), "new\n", 4, NULL, &err) == MOE_OK, "%s", err.msg);
  read_text(in_dir("victim"), buf, sizeof buf);
  ck_assert_str_eq(buf, "precious\n");
  read_text(in_dir("out.txt"), buf, sizeof buf);
  ck_assert_str_eq(buf, "new\n");
  /* a link at the target is replaced by the file, the file it led to kept */
  ck_assert_int_eq(symlink(in_dir("victim"), in_dir("linked.txt")), 0);
  ck_assert(moe_publish_bytes(in_dir("linked.txt"), "x\n", 2, NULL, &err) == MOE_OK);
  ck_assert_int_eq(kind_of(in_dir("linked.txt")), S_IFREG);
  read_text(in_dir("victim"), buf, sizeof buf);
  ck_assert_str_eq(buf, "precious\n");
  /* the commands: timeline -o with a link planted at OUT.tmp */
  ck_assert_int_eq(moebench("run --preset ci-small --gen-len 2 --prompt-len 4 --trace t.json"), 0);
  ck_assert_int_eq(symlink(in_dir("victim"), in_dir("step.svg.tmp")), 0);
  ck_assert_msg(moebench("timeline t.json -o step.svg") == 0, "%s", g_out);
  read_text(in_dir("victim"), buf, sizeof buf);
  ck_assert_str_eq(buf, "precious\n");
  ck_assert_int_eq(kind_of(in_dir("step.svg")), S_IFREG);
}
END_TEST

START_TEST(devices_fifos_and_directories_are_never_replaced) {
  moe_error err = {0};
  ck_assert_int_eq(mkfifo(in_dir("fifo"), 0600), 0);
  /* no reader: refused at once (opening it would block), still a FIFO */
  ck_assert(moe_publish_bytes(in_dir("fifo"), "x", 1, "the test output", &err) == MOE_ERR_IO);
  ck_assert_ptr_nonnull(strstr(err.msg, "no reader"));
  ck_assert_int_eq(kind_of(in_dir("fifo")), S_IFIFO);
  /* with a reader: written directly */
  int fds[2];
  ck_assert_int_eq(pipe(fds), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    char buf[16] = {0};
    const int fd = open(in_dir("fifo"), O_RDONLY);
    const ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
    (void)!write(fds[1], buf, n > 0 ? (size_t)n : 0);
    _exit(0);
  }
  moe_status st = MOE_ERR_IO;
  for (int i = 0; i < 200 && st != MOE_OK; i++) { /* until the child has opened it */
    st = moe_publish_bytes(in_dir("fifo"), "hello", 5, NULL, &err);
    if (st != MOE_OK) usleep(10000);
  }
  ck_assert_msg(st == MOE_OK, "%s", err.msg);
  close(fds[1]);
  char got[16] = {0};
  ck_assert_int_eq(read(fds[0], got, sizeof got - 1), 5);
  ck_assert_str_eq(got, "hello");
  waitpid(pid, NULL, 0);
  ck_assert_int_eq(kind_of(in_dir("fifo")), S_IFIFO);
  /* a directory: refused, kept */
  ck_assert_int_eq(mkdir(in_dir("adir"), 0700), 0);
  ck_assert(moe_publish_bytes(in_dir("adir"), "x", 1, NULL, &err) == MOE_ERR_IO);
  ck_assert_int_eq(kind_of(in_dir("adir")), S_IFDIR);
  /* the commands: --trace onto a FIFO without a reader fails, the FIFO stays */
  ck_assert_int_ne(moebench("run --preset ci-small --gen-len 2 --prompt-len 4 --trace fifo"), 0);
  ck_assert_int_eq(kind_of(in_dir("fifo")), S_IFIFO);
  /* a character device is written as it is: /dev/null stays a device */
  ck_assert(moe_publish_bytes("/dev/null", "x", 1, NULL, &err) == MOE_OK);
  ck_assert_int_eq(kind_of("/dev/null"), S_IFCHR);
}
END_TEST

START_TEST(long_paths_are_refused_not_cut) {
  moe_error err = {0};
  char *p = malloc(MOE_PUBLISH_PATH_MAX + 64);
  ck_assert_ptr_nonnull(p);
  memset(p, 'a', MOE_PUBLISH_PATH_MAX + 10);
  for (int i = 200; i < MOE_PUBLISH_PATH_MAX; i += 200) p[i] = '/';
  p[MOE_PUBLISH_PATH_MAX + 10] = '\0';
  ck_assert(moe_publish_bytes(p, "x", 1, NULL, &err) == MOE_ERR_INVALID);
  ck_assert_ptr_nonnull(strstr(err.msg, "refused"));
  /* the commands: -o of such a prefix exits 2 and writes nothing */
  char args[MOE_PUBLISH_PATH_MAX + 200];
  snprintf(args, sizeof args, "run --preset ci-small --gen-len 2 --prompt-len 4 -o %s", p);
  ck_assert_int_eq(moebench(args), 2);
  ck_assert_ptr_nonnull(strstr(g_out, "refused"));
  ck_assert_int_ne(access(in_dir("aaaa"), F_OK), 0);
  snprintf(args, sizeof args, "eval --preset ci-small -o %s", p);
  ck_assert_int_eq(moebench(args), 2);
  /* -o naming a directory */
  ck_assert_int_eq(moebench("run --preset ci-small --gen-len 2 --prompt-len 4 -o out/"), 2);
  free(p);
}
END_TEST

START_TEST(a_held_prefix_is_refused) {
  char buf[64];
  /* another writer holds res.lock: run -o res refuses, res.csv untouched */
  write_text(in_dir("res.csv"), "theirs\n");
  const int fd = open(in_dir("res.lock"), O_RDWR | O_CREAT, 0600);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(flock(fd, LOCK_EX | LOCK_NB), 0);
  ck_assert_int_ne(moebench("run --preset ci-small --gen-len 2 --prompt-len 4 -o res"), 0);
  ck_assert_ptr_nonnull(strstr(g_out, "another command is writing"));
  read_text(in_dir("res.csv"), buf, sizeof buf);
  ck_assert_str_eq(buf, "theirs\n");
  close(fd);
  ck_assert_msg(moebench("run --preset ci-small --gen-len 2 --prompt-len 4 -o res") == 0, "%s", g_out);
  /* a lock file planted as a link is not followed */
  write_text(in_dir("victim"), "precious\n");
  ck_assert_int_eq(symlink(in_dir("victim"), in_dir("other.lock")), 0);
  ck_assert_int_ne(moebench("run --preset ci-small --gen-len 2 --prompt-len 4 -o other"), 0);
  read_text(in_dir("victim"), buf, sizeof buf);
  ck_assert_str_eq(buf, "precious\n");
  ck_assert_int_ne(access(in_dir("other.csv"), F_OK), 0);
}
END_TEST

/* No output of a command overwrites one of its inputs, however spelled,
 * and --resume never drops another suite's rows. */
START_TEST(outputs_never_overwrite_inputs) {
  static char before[1 << 20], after[1 << 20], json[1 << 20];
  ck_assert_int_eq(moebench("run --preset ci-small --gen-len 2 --prompt-len 4 --trace t.json"), 0);
  read_text(in_dir("t.json"), before, sizeof before);
  ck_assert_int_eq(moebench("timeline t.json -o ./t.json"), 2);
  read_text(in_dir("t.json"), after, sizeof after);
  ck_assert_str_eq(before, after);
  /* report -o onto the results it reads */
  ck_assert_int_eq(moebench("run --preset ci-small --gen-len 2 --prompt-len 4 -o rep"), 0);
  read_text(in_dir("rep.csv"), before, sizeof before);
  ck_assert_int_eq(moebench("report rep.csv -o ./rep.csv"), 2);
  read_text(in_dir("rep.csv"), after, sizeof after);
  ck_assert_str_eq(before, after);
  /* run: the trace and the CSV named the same */
  ck_assert_int_eq(moebench("run --preset ci-small --gen-len 2 --prompt-len 4 --trace r.csv -o r"), 2);
  ck_assert_int_ne(access(in_dir("r.csv"), F_OK), 0);
  /* sweep -o onto its own suite file */
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "cp '%s/workloads/suites/ci.json' '%s/mine.json'", MOE_SOURCE_DIR, g_dir);
  ck_assert_int_eq(system(cmd), 0);
  read_text(in_dir("mine.json"), before, sizeof before);
  ck_assert_int_eq(moebench("sweep mine.json -o mine --quiet"), 1);
  ck_assert_ptr_nonnull(strstr(g_out, "is an input of this command"));
  read_text(in_dir("mine.json"), after, sizeof after);
  ck_assert_str_eq(before, after);
  /* --resume onto rows another command wrote (no suite named) or another suite wrote */
  ck_assert_int_eq(moebench("run --preset ci-small --gen-len 2 --prompt-len 4 -o theirs"), 0);
  read_text(in_dir("theirs.csv"), before, sizeof before);
  ck_assert_int_eq(moebench("sweep ci -o theirs --resume --quiet"), 1);
  ck_assert_ptr_nonnull(strstr(g_out, "refusing to resume"));
  read_text(in_dir("theirs.json"), after, sizeof after);
  char *at = strstr(after, "\"suite\": null");
  ck_assert_ptr_nonnull(at);
  snprintf(json, sizeof json, "%.*s\"suite\": \"other\"%s", (int)(at - after), after,
           at + strlen("\"suite\": null"));
  write_text(in_dir("theirs.json"), json);
  ck_assert_int_eq(moebench("sweep ci -o theirs --resume --quiet"), 1);
  ck_assert_ptr_nonnull(strstr(g_out, "written by suite 'other'"));
  read_text(in_dir("theirs.csv"), after, sizeof after);
  ck_assert_str_eq(before, after);
}
END_TEST

/* merge refuses an input without its JSON and shards of two versions of
 * one suite; the shards of one version merge. */
START_TEST(merge_refuses_incomplete_or_mixed) {
  char cmd[1400];
  snprintf(cmd, sizeof cmd, "cp '%s/workloads/suites/ci.json' '%s/v1.json' && sed "
           "'s/\"repetitions\": 1/\"repetitions\": 1, \"warmup\": 0/' '%s/v1.json' > '%s/v2.json'",
           MOE_SOURCE_DIR, g_dir, g_dir, g_dir);
  ck_assert_int_eq(system(cmd), 0);
  ck_assert_msg(moebench("sweep v1.json --shard 1/2 -o s1 --quiet") == 0, "%s", g_out);
  ck_assert_msg(moebench("sweep v1.json --shard 2/2 -o s2 --quiet") == 0, "%s", g_out);
  ck_assert_msg(moebench("sweep v2.json --shard 2/2 -o t2 --quiet") == 0, "%s", g_out);
  ck_assert_msg(moebench("merge s1 s2 -o all") == 0, "%s", g_out);
  ck_assert_int_eq(moebench("merge s1 t2 -o mixed"), 2);
  ck_assert_ptr_nonnull(strstr(g_out, "another version of suite"));
  ck_assert_int_ne(access(in_dir("mixed.csv"), F_OK), 0);
  ck_assert_int_eq(unlink(in_dir("s2.json")), 0);
  ck_assert_int_eq(moebench("merge s1 s2 -o nojson"), 2);
  ck_assert_ptr_nonnull(strstr(g_out, "s2.json"));
  ck_assert_int_ne(access(in_dir("nojson.csv"), F_OK), 0);
}
END_TEST

/* Exit codes tell the truth: a sweep or bench-policies in which runs end
 * in an error exits 1 (the rows are still written); OOM is a result. */
START_TEST(failed_rows_fail_the_command) {
  char suite[1200];
  snprintf(suite, sizeof suite,
           "{\"name\": \"fails\", \"models\": [\"ci-small\"], \"workloads\": [\"ci\"], "
           "\"policies\": [\"%s\"], \"backend\": \"cpu\", \"repetitions\": 1}\n",
           PLUGIN_FAILING);
  write_text(in_dir("fails.json"), suite);
  ck_assert_int_eq(moebench("sweep fails.json -o failed --quiet"), 1);
  ck_assert_ptr_nonnull(strstr(g_out, "ended in an error"));
  char csv[8192];
  read_text(in_dir("failed.csv"), csv, sizeof csv);
  ck_assert_ptr_nonnull(strstr(csv, "failing-policy says no"));
  char args[1200];
  snprintf(args, sizeof args,
           "bench-policies --preset ci-small --policies gpu-only --policy-plugin %s --gen-len 4 "
           "--prompt-len 4 --reps 1", PLUGIN_FAILING);
  ck_assert_int_eq(moebench(args), 1);
  ck_assert_ptr_nonnull(strstr(g_out, "failing-policy says no"));
  /* OOM only: a result, exit 0 */
  ck_assert_msg(moebench("bench-policies --preset ci-small --policies gpu-only,ondemand "
                         "--device-mem 2MiB --gen-len 4 --prompt-len 4 --reps 1") == 0, "%s", g_out);
}
END_TEST

/* An expert cache that rounds to no expert, or a plain number past the
 * count limit (it was taken as bytes), is refused. */
START_TEST(cache_sizes_that_mean_nothing_are_refused) {
  ck_assert_int_ne(moebench("run --preset ci-small --gen-len 2 --prompt-len 4 --policy gpu-only+lru:1B"), 0);
  ck_assert_ptr_nonnull(strstr(g_out, "holds no whole expert"));
  ck_assert_int_ne(moebench("run --preset ci-small --gen-len 2 --prompt-len 4 --policy 'gpu-only+lru:0.001%'"), 0);
  ck_assert_ptr_nonnull(strstr(g_out, "holds no whole expert"));
  ck_assert_int_eq(moebench("run --preset ci-small --gen-len 2 --prompt-len 4 --policy gpu-only+lru:16777217"), 2);
  ck_assert_msg(moebench("run --preset ci-small --gen-len 2 --prompt-len 4 --policy gpu-only+lru:4") == 0, "%s", g_out);
  ck_assert_msg(moebench("run --preset ci-small --gen-len 2 --prompt-len 4 --policy gpu-only+lru:1MiB") == 0, "%s", g_out);
}
END_TEST

/* Input lines: a NUL byte inside a token file's line (the ids after it
 * were dropped), a routing log naming an expert twice in a row or one
 * outside the model (it was silently redrawn): refused, naming file:line. */
START_TEST(input_lines_that_lie_are_refused) {
  FILE *f = fopen(in_dir("nul.tok"), "wb");
  ck_assert_ptr_nonnull(f);
  fwrite("1 2 3\n4 5 6\0 7\n", 1, 15, f);
  fclose(f);
  ck_assert_int_ne(moebench("generate --preset ci-small --prompt-file nul.tok --gen-len 2"), 0);
  ck_assert_ptr_nonnull(strstr(g_out, "nul.tok:2: a NUL byte"));
  const char *sim = "run --preset ci-small --gen-len 2 --prompt-len 4 --backend sim "
                    "--hardware a100-80g-pcie4 --sim-routing trace:";
  char cmd[600];
  ck_assert_int_eq(moebench("run --preset ci-small --gen-len 2 --prompt-len 4 --record-routing log.txt"), 0);
  snprintf(cmd, sizeof cmd, "%slog.txt", sim);
  ck_assert_msg(moebench(cmd) == 0, "%s", g_out);
  /* the first routing line: an expert outside the model's 16, then twice */
  snprintf(cmd, sizeof cmd, "cd '%s' && awk '!/^#/ && !d {$4 = 99; d = 1} {print}' log.txt > far.txt && "
           "awk '!/^#/ && !d {$5 = $4; d = 1} {print}' log.txt > twice.txt", g_dir);
  ck_assert_int_eq(system(cmd), 0);
  snprintf(cmd, sizeof cmd, "%sfar.txt", sim);
  ck_assert_int_ne(moebench(cmd), 0);
  ck_assert_ptr_nonnull(strstr(g_out, "far.txt:2: expert 99 is outside"));
  snprintf(cmd, sizeof cmd, "%stwice.txt", sim);
  ck_assert_int_ne(moebench(cmd), 0);
  ck_assert_ptr_nonnull(strstr(g_out, "twice.txt:2: expert"));
}
END_TEST

/* More inputs that do not mean what they say: a fault spec strtoul would
 * have wrapped or trimmed, data after a trace's end, a zero or negative
 * window count. */
START_TEST(malformed_small_inputs_are_refused) {
  const char *bad_faults[] = {"alloc:-1", "alloc: 5", "alloc:+5", "alloc:5x", "copy:"};
  for (size_t i = 0; i < sizeof bad_faults / sizeof *bad_faults; i++) {
    setenv("MOE_CPU_FAULT", bad_faults[i], 1);
    const int rc = moebench("run --preset ci-small --gen-len 2 --prompt-len 4");
    unsetenv("MOE_CPU_FAULT");
    ck_assert_msg(rc != 0 && strstr(g_out, "MOE_CPU_FAULT") != NULL, "'%s' accepted: %s",
                  bad_faults[i], g_out);
  }
  ck_assert_int_eq(moebench("run --preset ci-small --gen-len 2 --prompt-len 4 --trace t.json"), 0);
  ck_assert_msg(moebench("replay t.json --hardware h200") == 0, "%s", g_out);
  FILE *f = fopen(in_dir("t.json"), "a");
  ck_assert_ptr_nonnull(f);
  fputs("{\"ph\": \"X\", \"name\": \"matmul\"}\n", f);
  fclose(f);
  ck_assert_int_ne(moebench("replay t.json --hardware h200"), 0);
  ck_assert_ptr_nonnull(strstr(g_out, "after the trace's end"));
  write_text(in_dir("w.tok"), "1 2 3 4\n5 6 7 8\n");
  char suite[1200];
  for (int bad = 0; bad < 2; bad++) {
    snprintf(suite, sizeof suite,
             "{\"name\": \"q\", \"models\": [\"ci-small\"], \"policies\": [\"gpu-only\"], "
             "\"workloads\": [{\"name\": \"w\", \"prompt_len\": 4, \"gen_len\": 2, "
             "\"eval_tokens\": \"%s\", \"eval_windows\": %d}]}", in_dir("w.tok"), bad ? -3 : 0);
    write_text(in_dir("q.json"), suite);
    ck_assert_int_ne(moebench("sweep q.json -o q-out --quiet"), 0);
    ck_assert_ptr_nonnull(strstr(g_out, "eval_windows"));
    snprintf(suite, sizeof suite, "{\"tokens\": \"%s\", \"windows\": %d, \"rows\": "
             "[{\"label\": \"a\", \"model\": \"ci-small\"}]}", in_dir("w.tok"), bad ? -3 : 0);
    write_text(in_dir("e.json"), suite);
    ck_assert_int_ne(moebench("eval --suite e.json"), 0);
    ck_assert_ptr_nonnull(strstr(g_out, "'windows'"));
  }
}
END_TEST

/* A suite's name cannot put its default output outside results/runs, and
 * the local Slurm stand-in reads array bounds as decimal (010 is ten). */
START_TEST(names_and_numbers_mean_what_they_say) {
  write_text(in_dir("esc.json"), "{\"name\": \"../../escaped\", \"models\": [\"ci-small\"], "
             "\"workloads\": [\"ci\"], \"policies\": [\"gpu-only\"]}\n");
  ck_assert_int_ne(moebench("sweep esc.json --quiet"), 0);
  ck_assert_ptr_nonnull(strstr(g_out, "field 'name'"));
  ck_assert_int_ne(access(in_dir("../escaped.csv"), F_OK), 0);
  write_text(in_dir("task.sh"), "echo \"$SLURM_ARRAY_TASK_ID\" > \"$1/task-$SLURM_ARRAY_TASK_ID\"\n");
  char cmd[2000];
  snprintf(cmd, sizeof cmd, "LOCAL_SBATCH_DIR='%s' bash '%s/harness/slurm/local-sbatch.sh' --parsable "
           "--array=009-010 '%s/task.sh' '%s'", g_dir, MOE_SOURCE_DIR, g_dir, g_dir);
  ck_assert_msg(tu_run(cmd, g_out, sizeof g_out) == 0, "%s", g_out);
  ck_assert_int_eq(access(in_dir("task-9"), F_OK), 0);
  ck_assert_int_eq(access(in_dir("task-10"), F_OK), 0);
  snprintf(cmd, sizeof cmd, "LOCAL_SBATCH_DIR='%s' bash '%s/harness/slurm/local-sbatch.sh' "
           "--array=1-x '%s/task.sh' '%s'", g_dir, MOE_SOURCE_DIR, g_dir, g_dir);
  ck_assert_int_eq(tu_run(cmd, g_out, sizeof g_out), 2);
}
END_TEST

/* The number of unescaped '|' on line. */
static int cells(const char *line, size_t n) {
  int k = 0;
  for (size_t i = 0; i < n; i++) k += line[i] == '|' && (i == 0 || line[i - 1] != '\\');
  return k;
}

/* '|' and newlines in names do not break markdown tables: every table
 * line of report and compare has as many cells as its header. */
START_TEST(markdown_tables_hold_hostile_text) {
  ck_assert_int_eq(moebench("run --preset ci-small --gen-len 2 --prompt-len 4 -o r"), 0);
  res_table t;
  moe_error err = {0};
  ck_assert(res_read_csv(in_dir("r.csv"), &t, &err) == MOE_OK);
  res_set(&t.rows[0], "model", "ci|small\nline two");
  res_set(&t.rows[0], "workload", "w|1\\");
  ck_assert(res_write_csv(in_dir("h.csv"), &t, &err) == MOE_OK);
  res_set(&t.rows[0], "model", "other|model");
  ck_assert(res_write_csv(in_dir("h2.csv"), &t, &err) == MOE_OK);
  res_table_free(&t);
  const char *cmds[] = {"report h.csv", "compare h.csv h2.csv --allow-missing"};
  for (int c = 0; c < 2; c++) {
    moebench(cmds[c]);
    int want = -1;
    for (char *line = g_out; *line;) {
      char *end = strchr(line, '\n');
      const size_t n = end ? (size_t)(end - line) : strlen(line);
      if (n > 0 && line[0] == '|') {
        if (want < 0 || strncmp(line, "|---", 4) == 0) want = cells(line, n);
        ck_assert_msg(cells(line, n) == want, "%s: a row of %d cells, the table has %d: %.*s",
                      cmds[c], cells(line, n), want, (int)n, line);
      } else {
        want = -1; /* a new table */
      }
      line = end ? end + 1 : line + n;
    }
    ck_assert_ptr_nonnull(strstr(g_out, "small"));
  }
}
END_TEST

/* --model-dir ck (relative, no slash: it read as a preset name) works in
 * every command that takes it. */
START_TEST(relative_model_dir_everywhere) {
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "cp -r '%s/tests/fixtures/mixtral-tiny' '%s/ck'", MOE_SOURCE_DIR, g_dir);
  ck_assert_int_eq(system(cmd), 0);
  write_text(in_dir("w.tok"), "1 2 3 4\n5 6 7 8\n");
  const char *cmds[] = {
      "run --model-dir ck --gen-len 2 --prompt-len 4",
      "bench-policies --model-dir ck --gen-len 2 --prompt-len 4 --reps 1 --policies gpu-only",
      "plan --model-dir ck",
      "generate --model-dir ck --prompt-ids 1,2,3 --gen-len 2",
      "eval --model-dir ck --tokens w.tok",
  };
  for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++)
    ck_assert_msg(moebench(cmds[i]) == 0, "%s: %s", cmds[i], g_out);
}
END_TEST

/* A refused option value names the flag and the limit it passed (eval and
 * plan named the value twice: "invalid value '0' for 0"). */
START_TEST(refusals_name_the_flag_and_the_limit) {
  static const char *const cases[][2] = {
      {"eval --preset ci-small --tokens w.tok --windows 0", "eval: --windows '0': expected an integer in 1.."},
      {"plan --preset ci-small --batch=0", "plan: --batch '0': expected an integer in 1..4096"},
      {"run --preset ci-small --gen-len 1", "run: --gen-len '1': expected an integer in 2.."},
      {"run --preset ci-small --device-mem 12Q", "run: --device-mem '12Q': expected a size"},
      {"bench-policies --preset ci-small --link-gbps 1e-9", "--link-gbps '1e-9': expected 0 (no cap) or GB/s in"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    ck_assert_int_eq(moebench(cases[i][0]), 2);
    ck_assert_msg(strstr(g_out, cases[i][1]) != NULL, "%s: %s", cases[i][0], g_out);
  }
}
END_TEST

/* Every input that changes a figure keys the row (schema 2.5 'inputs'): a
 * rebuilt plugin or an edited token file gives another key (--resume used
 * to keep the old rows), two spellings of one checkpoint one key, and
 * compare does not pair rows whose inputs differ. */
START_TEST(row_keys_hold_input_contents) {
  char cmd[1600], a[64], b[64];
  snprintf(cmd, sizeof cmd, "cp '%s' '%s' && printf '1 2 3 4\\n5 6 7 8\\n' > '%s'", PLUGIN_USELESS,
           in_dir("p.so"), in_dir("t.tok"));
  ck_assert_int_eq(system(cmd), 0);
  write_text(in_dir("s.json"), "{\"name\": \"s\", \"models\": [\"ci-small\"], \"policies\": "
             "[\"./p.so\"], \"workloads\": [{\"name\": \"w\", \"prompt_len\": 4, \"gen_len\": 2, "
             "\"tokens\": {\"source\": \"file\", \"path\": \"TOK\"}}]}\n");
  snprintf(cmd, sizeof cmd, "sed -i 's#TOK#%s#' '%s'", in_dir("t.tok"), in_dir("s.json"));
  ck_assert_int_eq(system(cmd), 0);
  res_table t;
  moe_error err = {0};
  for (int step = 0; step < 3; step++) {
    if (step == 1) { /* the plugin rebuilt */
      snprintf(cmd, sizeof cmd, "printf 'x' >> '%s'", in_dir("p.so"));
      ck_assert_int_eq(system(cmd), 0);
    } else if (step == 2) { /* the token file edited */
      write_text(in_dir("t.tok"), "1 2 3 5\n5 6 7 8\n");
    }
    ck_assert_msg(moebench("sweep s.json -o out --resume --quiet") == 0, "%s", g_out);
    ck_assert(res_read_csv(in_dir("out.csv"), &t, &err) == MOE_OK);
    ck_assert_uint_eq(t.n, 1);
    snprintf(step ? b : a, sizeof a, "%s", res_get(&t.rows[0], "inputs"));
    res_table_free(&t);
    ck_assert_uint_eq(strlen(step ? b : a), 16);
    if (step) ck_assert_str_ne(a, b);
    if (step) memcpy(a, b, sizeof a);
  }
  /* one checkpoint, three spellings: one model, one key */
  snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp -r '%s/tests/fixtures/mixtral-tiny' '%s/ck'",
           in_dir("sub"), MOE_SOURCE_DIR, in_dir("sub"));
  ck_assert_int_eq(system(cmd), 0);
  const char *spell[] = {"sub/ck", "./sub/ck/", "sub/../sub/ck"};
  char keys[3][160];
  for (int i = 0; i < 3; i++) {
    snprintf(cmd, sizeof cmd, "run --model-dir %s --gen-len 2 --prompt-len 4 -o k%d", spell[i], i);
    ck_assert_msg(moebench(cmd) == 0, "%s", g_out);
    char name[16];
    snprintf(name, sizeof name, "k%d.csv", i);
    ck_assert(res_read_csv(in_dir(name), &t, &err) == MOE_OK);
    snprintf(keys[i], sizeof keys[i], "%s %s", res_get(&t.rows[0], "model"), res_get(&t.rows[0], "inputs"));
    res_table_free(&t);
    if (i) ck_assert_str_eq(keys[i], keys[0]);
  }
  /* compare: other inputs never pair (the row is missing from NEW) */
  ck_assert(res_read_csv(in_dir("k0.csv"), &t, &err) == MOE_OK);
  res_set(&t.rows[0], "inputs", "0000000000000000");
  ck_assert(res_write_csv(in_dir("k9.csv"), &t, &err) == MOE_OK);
  res_table_free(&t);
  ck_assert_int_eq(moebench("compare k0.csv k9.csv --deterministic-only"), 1);
  ck_assert_ptr_nonnull(strstr(g_out, "inputs: base"));
  ck_assert_int_eq(moebench("compare k0.csv k1.csv --deterministic-only"), 0);
}
END_TEST

/* Every path in a suite is relative to the suite file (token and eval
 * files were relative to the source tree, routing traces to the working
 * directory), whatever the working directory. */
START_TEST(suite_paths_are_relative_to_the_suite) {
  char cmd[1600];
  snprintf(cmd, sizeof cmd, "mkdir -p '%s' && printf '1 2 3 4\\n5 6 7 8\\n' > '%s' && cp '%s' '%s'",
           in_dir("sub"), in_dir("sub/t.tok"), in_dir("sub/t.tok"), in_dir("sub/e.tok"));
  ck_assert_int_eq(system(cmd), 0);
  ck_assert_int_eq(moebench("run --preset ci-small --gen-len 2 --prompt-len 4 --record-routing sub/log.txt"), 0);
  write_text(in_dir("sub/s.json"),
             "{\"name\": \"rel\", \"models\": [\"ci-small\"], \"policies\": [\"gpu-only\"], "
             "\"workloads\": [{\"name\": \"w\", \"prompt_len\": 4, \"gen_len\": 2, "
             "\"tokens\": {\"source\": \"file\", \"path\": \"t.tok\"}, \"eval_tokens\": \"e.tok\"}]}\n");
  ck_assert_msg(moebench("sweep sub/s.json -o out1 --quiet") == 0, "%s", g_out);
  write_text(in_dir("sub/m.json"),
             "{\"name\": \"relsim\", \"models\": [\"ci-small\"], \"policies\": [\"gpu-only\"], "
             "\"workloads\": [{\"name\": \"w\", \"prompt_len\": 4, \"gen_len\": 2}], "
             "\"backend\": \"sim\", \"hardware\": \"h200\", \"sim_routing\": \"trace:log.txt\"}\n");
  ck_assert_msg(moebench("sweep sub/m.json -o out2 --quiet") == 0, "%s", g_out);
}
END_TEST

int main(void) {
  Suite *s = suite_create("publish");
  TCase *tc = tcase_create("publish");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, planted_link_is_not_followed);
  tcase_add_test(tc, devices_fifos_and_directories_are_never_replaced);
  tcase_add_test(tc, long_paths_are_refused_not_cut);
  tcase_add_test(tc, a_held_prefix_is_refused);
  tcase_add_test(tc, outputs_never_overwrite_inputs);
  tcase_add_test(tc, merge_refuses_incomplete_or_mixed);
  tcase_add_test(tc, failed_rows_fail_the_command);
  tcase_add_test(tc, cache_sizes_that_mean_nothing_are_refused);
  tcase_add_test(tc, input_lines_that_lie_are_refused);
  tcase_add_test(tc, malformed_small_inputs_are_refused);
  tcase_add_test(tc, names_and_numbers_mean_what_they_say);
  tcase_add_test(tc, markdown_tables_hold_hostile_text);
  tcase_add_test(tc, relative_model_dir_everywhere);
  tcase_add_test(tc, refusals_name_the_flag_and_the_limit);
  tcase_add_test(tc, row_keys_hold_input_contents);
  tcase_add_test(tc, suite_paths_are_relative_to_the_suite);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
