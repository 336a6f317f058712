/* The floor of one scrape: pread every file of a list (kept open), N times; prints the median
 * CPU (user+system) and wall time of one pass in ms. usage: rawloop N < files */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static double now_ms(clockid_t c) {
	struct timespec t;
	clock_gettime(c, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b) {
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv) {
	int n = argc > 1 ? atoi(argv[1]) : 50;
	int cap = 1024, nfd = 0, *fds = malloc(cap * sizeof(int));
	char line[4096];
	while (fgets(line, sizeof line, stdin)) {
		line[strcspn(line, "\n")] = 0;
		int fd = open(line, O_RDONLY | O_CLOEXEC);
		if (fd < 0) { perror(line); continue; }
		if (nfd == cap) fds = realloc(fds, (cap *= 2) * sizeof(int));
		fds[nfd++] = fd;
	}
	double *cpu = malloc(n * sizeof(double)), *wall = malloc(n * sizeof(double));
	static char buf[65536];
	long bytes = 0;
	for (int i = 0; i < n; i++) {
		double c0 = now_ms(CLOCK_PROCESS_CPUTIME_ID), w0 = now_ms(CLOCK_MONOTONIC);
		for (int f = 0; f < nfd; f++) {
			ssize_t r = pread(fds[f], buf, sizeof buf, 0);
			if (r > 0) bytes += r;
		}
		cpu[i] = now_ms(CLOCK_PROCESS_CPUTIME_ID) - c0;
		wall[i] = now_ms(CLOCK_MONOTONIC) - w0;
	}
	qsort(cpu, n, sizeof(double), cmp);
	qsort(wall, n, sizeof(double), cmp);
	printf("%d %.3f %.3f %ld\n", nfd, cpu[n / 2], wall[n / 2], bytes / n);
	return 0;
}
