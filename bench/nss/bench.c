/* getpwnam/getpwuid latency through whatever /etc/nsswitch.conf says.
 *
 * usage: bench N ROUNDS ITERS
 * Entries are dmsbench00001..dmsbenchN with uids 60001..60000+N. Each round makes ITERS calls
 * of one kind on random entries (fixed seed); misses use names dmsbenchx%05d and uids above
 * 80000 (entries whose uid the host already uses, e.g. nobody's 65534, are not drawn for
 * uid lookups). Prints the median ns per call over ROUNDS rounds for each kind, one line each:
 *   <kind> <median ns> <min ns> <max ns>
 * Exits 1 if a hit is not found, has the wrong uid or a miss is found.
 */
#include <pwd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next(void) {
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static double now_ns(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Marks in taken[1..n] the entries whose uid the host's own /etc/passwd gives to another name
 * (e.g. nobody, 65534): a getpwuid of those rightly answers with the host's account, so they are
 * left out of the random draws. Read directly, not through NSS. */
static void host_uids(long n, unsigned char *taken) {
	FILE *f = fopen("/etc/passwd", "r");
	char line[4096];
	if (!f)
		return;
	while (fgets(line, sizeof line, f)) {
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		if (!c2 || strncmp(line, "dmsbench", 8) == 0)
			continue;
		long uid = strtol(c2 + 1, NULL, 10);
		if (uid > 60000 && uid <= 60000 + n)
			taken[uid - 60000] = 1;
	}
	fclose(f);
}

enum kind { NAM_HIT, UID_HIT, NAM_MISS, UID_MISS, KINDS };
static const char *names[KINDS] = {"getpwnam_hit", "getpwuid_hit", "getpwnam_miss", "getpwuid_miss"};

int main(int argc, char **argv) {
	if (argc != 4) {
		fprintf(stderr, "usage: bench N ROUNDS ITERS\n");
		return 2;
	}
	long n = atol(argv[1]), rounds = atol(argv[2]), iters = atol(argv[3]);
	if (n < 1 || n > 99999 || rounds < 1 || iters < 1) {
		fprintf(stderr, "bench: bad arguments\n");
		return 2;
	}
	char(*keys)[24] = malloc(iters * sizeof *keys);
	long *idx = malloc(iters * sizeof *idx);
	double *t = malloc(rounds * sizeof *t);
	if (!keys || !idx || !t)
		return 2;
	unsigned char *taken = calloc(n + 1, 1);
	if (!taken)
		return 2;
	host_uids(n, taken);
	int bad = 0;
	long wrong[KINDS] = {0};
	/* Warm up: loads the modules. */
	if (!getpwnam("dmsbench00001"))
		fprintf(stderr, "bench: dmsbench00001 not found\n"), bad = 1;
	for (int k = 0; k < KINDS; k++) {
		for (long r = 0; r < rounds; r++) {
			for (long i = 0; i < iters; i++) {
				do
					idx[i] = 1 + (long)(next() % (uint64_t)n);
				while (k == UID_HIT && taken[idx[i]]);
				snprintf(keys[i], sizeof keys[i], k == NAM_MISS ? "dmsbenchx%05ld" : "dmsbench%05ld", idx[i]);
			}
			double t0 = now_ns();
			for (long i = 0; i < iters; i++) {
				struct passwd *p;
				switch (k) {
				case NAM_HIT:
					p = getpwnam(keys[i]);
					if (!p || p->pw_uid != (uid_t)(60000 + idx[i]))
						wrong[k]++;
					break;
				case UID_HIT:
					p = getpwuid((uid_t)(60000 + idx[i]));
					if (!p || strcmp(p->pw_name, keys[i]) != 0)
						wrong[k]++;
					break;
				case NAM_MISS:
					if (getpwnam(keys[i]))
						wrong[k]++;
					break;
				default:
					if (getpwuid((uid_t)(80000 + idx[i])))
						wrong[k]++;
					break;
				}
			}
			t[r] = (now_ns() - t0) / iters;
		}
		if (wrong[k]) {
			fprintf(stderr, "bench: %s: %ld wrong results of %ld\n", names[k], wrong[k], rounds * iters);
			bad = 1;
		}
		qsort(t, rounds, sizeof *t, cmp);
		printf("%s %.0f %.0f %.0f\n", names[k], t[rounds / 2], t[0], t[rounds - 1]);
		fflush(stdout);
	}
	return bad;
}
