/*
 * timeit — run a sequence of commands N times and print one stats line.
 *
 * usage: N=200 timeit [-w WARMUP] NAME -- CMD1 [ARGS...] [--- CMD2 [ARGS...]]...
 *
 * Each iteration runs CMD1, CMD2, ... one after another (posix_spawn + waitpid, PATH lookup);
 * the time of the whole sequence is one sample (CLOCK_MONOTONIC). "{}" inside an argument is
 * replaced by the iteration number: 0..N-1 for measured runs, N+1..N+WARMUP for the WARMUP
 * (default 1) unmeasured warm-up iterations that run first. PAUSE_MS (env, default 0) is an
 * unmeasured pause before every iteration.
 * Prints exactly "<NAME>\t<median_ms>\t<p90_ms>\t<n>" on stdout; the commands' stdout is sent
 * to stderr and their stdin is /dev/null. If any command fails, prints the reason to stderr,
 * prints nothing on stdout and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "stats.h"

#define MAX_CMDS 16

extern char **environ;

struct cmd {
	char **argv;  /* template, NULL-terminated */
	int argc;
	int has_subst;
};

static struct cmd cmds[MAX_CMDS];
static int ncmds;

static char *subst(const char *tmpl, int it)
{
	char num[16], *out, *o;
	size_t n = 0;

	snprintf(num, sizeof(num), "%d", it);
	for (const char *p = tmpl; *p; p++, n++)
		if (p[0] == '{' && p[1] == '}')
			n += strlen(num);
	out = o = malloc(n + 1);
	if (!out) {
		perror("timeit: malloc");
		exit(1);
	}
	for (const char *p = tmpl; *p;) {
		if (p[0] == '{' && p[1] == '}') {
			o = stpcpy(o, num);
			p += 2;
		} else {
			*o++ = *p++;
		}
	}
	*o = '\0';
	return out;
}

static int run_cmd(const struct cmd *c, int it, const posix_spawn_file_actions_t *fa)
{
	char **argv = c->argv, *buf[256];
	int status, rc = 0;
	pid_t pid;

	if (c->has_subst) {
		for (int i = 0; i < c->argc; i++)
			buf[i] = subst(c->argv[i], it);
		buf[c->argc] = NULL;
		argv = buf;
	}
	rc = posix_spawnp(&pid, argv[0], fa, NULL, argv, environ);
	if (rc != 0) {
		fprintf(stderr, "timeit: cannot run %s: %s\n", argv[0], strerror(rc));
		rc = -1;
		goto out;
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR) {
			perror("timeit: waitpid");
			rc = -1;
			goto out;
		}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "timeit: iteration %d: '%s", it, argv[0]);
		for (int i = 1; argv[i]; i++)
			fprintf(stderr, " %s", argv[i]);
		if (WIFEXITED(status))
			fprintf(stderr, "' exited with status %d\n", WEXITSTATUS(status));
		else
			fprintf(stderr, "' killed by signal %d\n", WTERMSIG(status));
		rc = -1;
	}
out:
	if (c->has_subst)
		for (int i = 0; i < c->argc; i++)
			free(buf[i]);
	return rc;
}

static void usage(void)
{
	fprintf(stderr, "usage: N=200 timeit [-w WARMUP] NAME -- CMD [ARGS...] [--- CMD [ARGS...]]...\n");
	exit(2);
}

int main(int argc, char **argv)
{
	posix_spawn_file_actions_t fa;
	int warm = 1, i = 1, n;
	const char *name;
	double cpu0 = 0;
	double *t;

	if (i + 1 < argc && !strcmp(argv[i], "-w")) {
		warm = atoi(argv[i + 1]);
		i += 2;
	}
	if (i + 2 >= argc || strcmp(argv[i + 1], "--"))
		usage();
	name = argv[i];
	i += 2;
	while (i < argc) {
		struct cmd *c;

		if (ncmds == MAX_CMDS)
			usage();
		c = &cmds[ncmds++];
		c->argv = &argv[i];
		while (i < argc && strcmp(argv[i], "---")) {
			if (strstr(argv[i], "{}"))
				c->has_subst = 1;
			c->argc++;
			i++;
		}
		if (c->argc == 0 || c->argc > 250)
			usage();
		if (i < argc)
			argv[i++] = NULL;  /* terminate this command's argv in place */
	}
	if (ncmds == 0)
		usage();

	n = iterations(200);
	t = calloc((size_t)n, sizeof(*t));
	if (!t)
		return 1;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, 2, 1);

	for (int it = -warm; it < n; it++) {
		double t0;

		idle_pause();
		t0 = now_ms();
		if (it == 0)
			cpu0 = machine_cpu_ms();

		for (int k = 0; k < ncmds; k++)
			if (run_cmd(&cmds[k], it < 0 ? n - it : it, &fa) < 0)
				return 1;
		if (it >= 0)
			t[it] = now_ms() - t0;
	}
	print_stats(name, t, n, (machine_cpu_ms() - cpu0) / n);
	return 0;
}
