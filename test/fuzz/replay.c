/* SPDX-License-Identifier: MIT */
/*
 * Runs files through a fuzz target without libFuzzer, so every build (gcc
 * included) checks the seed corpus and any saved crash input:
 *
 *   fuzz_addr_replay test/fuzz/corpus/fuzz_addr [more files or folders]
 *
 * Each argument is a file or a folder whose files (not starting with '.')
 * run in name order. Prints TAP; a failing property aborts. An argument
 * that holds no file fails, so a lost corpus does not pass unnoticed.
 */
#include "fuzz.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static size_t count;


static void run_file(const char* path) {
  unsigned char* data;
  FILE* f;
  long size;

  f = fopen(path, "rb");
  if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 ||
      fseek(f, 0, SEEK_SET) != 0) {
    printf("Bail out! cannot read %s\n", path);
    exit(1);
  }
  /* Exactly the input's size, so ASan sees a read past it. */
  data = malloc(size > 0 ? (size_t) size : 1);
  if (data == NULL || fread(data, 1, (size_t) size, f) != (size_t) size) {
    printf("Bail out! cannot read %s\n", path);
    exit(1);
  }
  fclose(f);
  LLVMFuzzerTestOneInput(data, (size_t) size);
  free(data);
  printf("ok %zu - %s\n", ++count, path);
}


static int skip_hidden(const struct dirent* ent) {
  return ent->d_name[0] != '.';
}


/* Returns how many files ran. */
static size_t run_path(const char* path) {
  struct dirent** ents;
  struct stat st;
  size_t before = count;
  char* file;
  int n;
  int i;

  if (stat(path, &st) != 0) {
    printf("Bail out! no such file or folder: %s\n", path);
    exit(1);
  }
  if (!S_ISDIR(st.st_mode)) {
    run_file(path);
    return 1;
  }
  n = scandir(path, &ents, skip_hidden, alphasort);
  if (n < 0) {
    printf("Bail out! cannot list %s\n", path);
    exit(1);
  }
  for (i = 0; i < n; i++) {
    file = malloc(strlen(path) + strlen(ents[i]->d_name) + 2);
    if (file == NULL)
      exit(1);
    sprintf(file, "%s/%s", path, ents[i]->d_name);
    if (stat(file, &st) == 0 && S_ISREG(st.st_mode))
      run_file(file);
    free(file);
    free(ents[i]);
  }
  free(ents);
  return count - before;
}


int main(int argc, char** argv) {
  int i;

  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 2) {
    fprintf(stderr, "usage: %s FILE_OR_FOLDER...\n", argv[0]);
    return 2;
  }
  for (i = 1; i < argc; i++) {
    if (run_path(argv[i]) == 0) {
      printf("Bail out! no input in %s\n", argv[i]);
      return 1;
    }
  }
  printf("1..%zu\n", count);
  return 0;
}
