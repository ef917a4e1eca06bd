/* Docs true to the code: every ```sh block of README.md and the docs/ pages that
 * is marked `<!-- runnable -->` on the line before it runs, as written,
 * from the source tree, and must succeed.  `build/` in a command means the
 * build directory these tests were built in. */
#include <check.h>
#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* The build directory: MOEBENCH_PATH is BUILD/harness/moebench. */
static void build_dir(char *out, size_t cap) {
  snprintf(out, cap, "%s", MOEBENCH_PATH);
  char *h = strstr(out, "/harness/moebench");
  if (h) *h = '\0';
}

/* Appends line to script, with a leading "build/" of each word replaced. */
static void append_line(char *script, size_t cap, const char *line, const char *bdir) {
  size_t n = strlen(script);
  for (const char *p = line; *p && n + 1 < cap;) {
    const bool word_start = p == line || p[-1] == ' ' || p[-1] == '\t';
    if (word_start && strncmp(p, "build/", 6) == 0) {
      int w = snprintf(script + n, cap - n, "%s/", bdir);
      if (w > 0) n += (size_t)w;
      p += 6;
      continue;
    }
    script[n++] = *p++;
  }
  script[n < cap ? n : cap - 1] = '\0';
}

/* Runs the marked blocks of one file; returns how many it ran. */
static int run_file(const char *path, const char *bdir) {
  FILE *f = fopen(path, "r");
  ck_assert_msg(f != NULL, "%s: cannot open", path);
  char line[4096], script[65536];
  bool marked = false, in_block = false;
  int ran = 0, lineno = 0, start = 0;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    if (!in_block) {
      if (strncmp(line, "<!-- runnable -->", 17) == 0) {
        marked = true;
      } else if (marked && strncmp(line, "```sh", 5) == 0) {
        in_block = true;
        start = lineno;
        snprintf(script, sizeof script, "set -e\ncd '%s'\n", MOE_SOURCE_DIR);
      } else if (line[0] != '\n') {
        marked = false;
      }
      continue;
    }
    if (strncmp(line, "```", 3) != 0) {
      append_line(script, sizeof script, line, bdir);
      continue;
    }
    in_block = marked = false;
    char tmp[1100], cmd[1300];
    ck_assert_ptr_nonnull(tu_tempdir(tmp, sizeof tmp));
    char sh[1200];
    snprintf(sh, sizeof sh, "%s/block.sh", tmp);
    FILE *o = fopen(sh, "w");
    ck_assert_ptr_nonnull(o);
    fputs(script, o);
    fclose(o);
    snprintf(cmd, sizeof cmd, "bash '%s'", sh);
    static char out[1 << 16];
    int rc = tu_run(cmd, out, sizeof out);
    ck_assert_msg(rc == 0, "%s:%d: the block failed (exit %d):\n%s\n--- output ---\n%s", path, start, rc,
                  script, out);
    tu_rmtree(tmp);
    ran++;
  }
  fclose(f);
  ck_assert_msg(!in_block, "%s: a runnable block is not closed", path);
  return ran;
}

START_TEST(marked_command_blocks_run) {
  char bdir[1024];
  build_dir(bdir, sizeof bdir);
  int ran = run_file(MOE_SOURCE_DIR "/README.md", bdir);
  char docs[1100];
  snprintf(docs, sizeof docs, "%s/docs", MOE_SOURCE_DIR);
  DIR *d = opendir(docs);
  ck_assert_ptr_nonnull(d);
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    size_t n = strlen(e->d_name);
    if (n < 4 || strcmp(e->d_name + n - 3, ".md") != 0) continue;
    char p[2200];
    snprintf(p, sizeof p, "%s/%s", docs, e->d_name);
    ran += run_file(p, bdir);
  }
  closedir(d);
  printf("docs: %d runnable blocks ran\n", ran);
  ck_assert_int_ge(ran, 2); /* the README's first look and the CI gate at least */
}
END_TEST

int main(void) {
  Suite *s = suite_create("docs");
  TCase *tc = tcase_create("docs");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, marked_command_blocks_run);
  suite_add_tcase(s, tc);
  return tu_run_suite(s);
}
