/*
 * spawn - run one command and report its wall time and peak resident memory.
 *
 *   spawn REPORT CMD [ARG...]   writes "seconds=<s> maxrss_kib=<k> status=<exit code or 128+signal>"
 *                               to the file REPORT (stdout and stderr stay the command's own)
 *
 * Why not time it from Python: a child's ru_maxrss includes the memory of the process it was
 * forked from (Linux folds the pre-exec address space into the high-water mark), so a child of a
 * Python process that imported torch reports >= 230 MiB whatever it does. Forking from this
 * ~1 MiB program keeps the figure the command's own. wait4 reaps exactly that child, so its
 * rusage covers it and the children it waited for (dd under sh), nothing else.
 * Built by benches/run.py with `gcc -O2`.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: spawn REPORT CMD [ARG...]\n");
        return 2;
    }
    FILE *report = fopen(argv[1], "w");
    if (!report) {
        perror(argv[1]);
        return 2;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid < 0) {
        perror("spawn: fork");
        return 2;
    }
    if (pid == 0) {
        fclose(report); /* the command must not inherit our report channel */
        execvp(argv[2], argv + 2);
        perror(argv[2]);
        _exit(127);
    }
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) {
        perror("spawn: wait4");
        return 2;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    fprintf(report, "seconds=%.6f maxrss_kib=%ld status=%d\n", s, ru.ru_maxrss, code);
    fclose(report);
    return 0;
}
