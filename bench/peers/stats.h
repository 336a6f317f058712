/* Timing helpers shared by floor.c and timeit.c (header-only). */
#ifndef DMS_BENCH_STATS_H
#define DMS_BENCH_STATS_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static inline double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Machine-wide busy CPU time in ms (user, nice, system, irq, softirq; not idle, iowait or
 * the hypervisor's steal), from /proc/stat. Divided over a loop's iterations it is steadier
 * than wall time on a busy VM, and it includes the kernel work a start leaves to workers. */
static inline double machine_cpu_ms(void)
{
	unsigned long long v[7] = { 0 };
	FILE *f = fopen("/proc/stat", "r");
	long hz = sysconf(_SC_CLK_TCK);

	if (!f)
		return 0;
	if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
		   &v[5], &v[6]) != 7)
		v[0] = v[1] = v[2] = v[5] = v[6] = 0;
	fclose(f);
	return (double)(v[0] + v[1] + v[2] + v[5] + v[6]) * 1e3 / (double)(hz > 0 ? hz : 100);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Print "<name>\t<median_ms>\t<p90_ms>\t<n>\t<cpu_ms>" (sorts samples in place); cpu_ms is
 * the machine's busy CPU per iteration (see machine_cpu_ms), omitted when negative. */
static inline void print_stats(const char *name, double *samples, int n, double cpu_ms)
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
	if (cpu_ms >= 0)
		printf("%s\t%.3f\t%.3f\t%d\t%.2f\n", name, median, p90, n, cpu_ms);
	else
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

/* An unmeasured pause before an iteration: PAUSE_MS (env, default 0) milliseconds, so that
 * each start meets an idle machine. */
static inline void idle_pause(void)
{
	static long ms = -1;

	if (ms < 0) {
		const char *s = getenv("PAUSE_MS");
		char *end;

		ms = 0;
		if (s && *s) {
			ms = strtol(s, &end, 10);
			if (*end || ms < 0 || ms > 10000) {
				fprintf(stderr, "bad PAUSE_MS=%s\n", s);
				exit(2);
			}
		}
	}
	if (ms > 0) {
		struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
	}
}

#endif
