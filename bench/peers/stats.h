/* Timing helpers shared by floor.c and timeit.c (header-only). */
#ifndef DMS_BENCH_STATS_H
#define DMS_BENCH_STATS_H

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static inline double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Print "<name>\t<median_ms>\t<p90_ms>\t<n>" (sorts samples in place). */
static inline void print_stats(const char *name, double *samples, int n)
{
	double median, p90;
	int idx;

	if (n <= 0) {
		printf("%s\tNA\tNA\t0\n", name);
		fflush(stdout);
		return;
	}
	qsort(samples, (size_t)n, sizeof(*samples), cmp_double);
	median = (n % 2) ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2.0;
	idx = (int)((9 * (long)n + 9) / 10) - 1; /* nearest rank: ceil(0.9 n) - 1 */
	if (idx < 0)
		idx = 0;
	p90 = samples[idx];
	printf("%s\t%.3f\t%.3f\t%d\n", name, median, p90, n);
	fflush(stdout);
}

/* Iteration count from env var N, else def. */
static inline int iterations(int def)
{
	const char *s = getenv("N");
	char *end;
	long v;

	if (!s || !*s)
		return def;
	v = strtol(s, &end, 10);
	if (*end || v <= 0 || v > 10000000) {
		fprintf(stderr, "bad N=%s\n", s);
		exit(2);
	}
	return (int)v;
}

#endif
