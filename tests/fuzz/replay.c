/* Runs a libFuzzer target over every file of a seed directory without
 * libFuzzer, so the seeds are regression tests under any compiler:
 * replay DIR. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s SEED_DIR\n", argv[0]);
    return 2;
  }
  DIR *d = opendir(argv[1]);
  if (d == NULL) {
    fprintf(stderr, "%s: cannot open seed directory\n", argv[1]);
    return 1;
  }
  struct dirent *ent;
  int n = 0;
  while ((ent = readdir(d)) != NULL) {
    if (ent->d_name[0] == '.') continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", argv[1], ent->d_name);
    FILE *f = fopen(path, "rb");
    if (f == NULL) continue;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(len > 0 ? (size_t)len : 1);
    size_t got = fread(buf, 1, (size_t)(len > 0 ? len : 0), f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, got);
    free(buf);
    n++;
  }
  closedir(d);
  printf("%d passed, 0 failed\n", n);
  if (n == 0) {
    fprintf(stderr, "%s: no seeds\n", argv[1]);
    return 1;
  }
  return 0;
}
