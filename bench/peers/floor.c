/*
 * floor — the raw cost floor that DMS benchmarks compare against.
 *
 * usage: floor start    # N x: mkdir group in each controller, write limits, clone+join+exec
 *                       #      /bin/true, waitpid, rmdir; prints "floor-start" stats line
 *        floor freeze   # N x: freeze+poll+thaw+poll a group holding 100 sleeping processes;
 *                       #      prints "floor-freeze-thaw" stats line
 *
 * N (env, default 200) sets the iteration count. Stdout gets exactly one line:
 *   <name>\t<median_ms>\t<p90_ms>\t<n>
 * Everything else goes to stderr. Uses cgroup v2 if /sys/fs/cgroup/cgroup.controllers lists
 * cpu, memory and pids, otherwise the v1 hierarchies cpu, cpuacct, memory, pids, freezer
 * (co-mounted hierarchies are used once). All groups live under dms-bench-floor-<pid> and are
 * removed on exit, also on SIGINT/SIGTERM/SIGHUP.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "stats.h"

#define CG_ROOT "/sys/fs/cgroup"
#define MAX_H 8
#define NPROC_FREEZE 100
#define TRUE_BIN "/bin/true"

struct hier {
	const char *ctrl;  /* controller whose limits this hierarchy gets ("" for none) */
	char base[256];    /* .../dms-bench-floor-<pid> */
	char child[300];   /* base/c */
	char procs[320];   /* child/cgroup.procs */
	int base_made;
};

static struct hier H[MAX_H];
static int nh;
static int v2;
static volatile sig_atomic_t g_stop;
static pid_t frozen_kids[NPROC_FREEZE];
static int nkids;
static char freeze_ctl[400];  /* v1 freezer.state or v2 cgroup.freeze of the freeze group */

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static void on_signal(int sig)
{
	(void)sig;
	g_stop = 1;
}

static int write_file(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t len = (ssize_t)strlen(val), r;

	if (fd < 0)
		return -1;
	r = write(fd, val, (size_t)len);
	if (r != len) {
		int e = errno;

		close(fd);
		errno = r < 0 ? e : EIO;
		return -1;
	}
	return close(fd);
}

static void must_write(const char *path, const char *val)
{
	if (write_file(path, val) < 0)
		die("write %s to %s: %s", val, path, strerror(errno));
}

static int rmdir_retry(const char *path)
{
	for (int i = 0; i < 2000; i++) {
		if (rmdir(path) == 0 || errno == ENOENT)
			return 0;
		if (errno != EBUSY)
			return -1;
		usleep(i < 100 ? 10 : 1000);  /* a reaped task can linger for a moment */
	}
	return -1;
}

static void cleanup(void)
{
	if (nkids > 0) {
		if (freeze_ctl[0])
			write_file(freeze_ctl, v2 ? "0" : "THAWED");
		for (int i = 0; i < nkids; i++)
			kill(frozen_kids[i], SIGKILL);
		for (int i = 0; i < nkids; i++)
			while (waitpid(frozen_kids[i], NULL, 0) < 0 && errno == EINTR)
				;
		nkids = 0;
	}
	for (int i = 0; i < nh; i++) {
		if (!H[i].base_made)
			continue;
		char p[400];

		snprintf(p, sizeof(p), "%s/f", H[i].base);
		rmdir_retry(p);
		rmdir_retry(H[i].child);
		if (rmdir_retry(H[i].base) < 0)
			fprintf(stderr, "floor: cannot remove %s: %s\n", H[i].base, strerror(errno));
		H[i].base_made = 0;
	}
}

static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "floor: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	cleanup();
	exit(1);
}

static int has_word(const char *text, const char *word)
{
	size_t n = strlen(word);

	for (const char *p = text; (p = strstr(p, word)); p += n)
		if ((p == text || p[-1] == ' ' || p[-1] == '\n') &&
		    (p[n] == ' ' || p[n] == '\n' || p[n] == '\0'))
			return 1;
	return 0;
}

static int read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t r;

	if (fd < 0)
		return -1;
	r = read(fd, buf, len - 1);
	close(fd);
	if (r < 0)
		return -1;
	buf[r] = '\0';
	return 0;
}

static void add_hier(const char *dir, const char *ctrl)
{
	struct hier *h = &H[nh];
	char base[256];

	snprintf(base, sizeof(base), "%s/dms-bench-floor-%d", dir, (int)getpid());
	snprintf(h->base, sizeof(h->base), "%s", base);
	snprintf(h->child, sizeof(h->child), "%s/c", base);
	snprintf(h->procs, sizeof(h->procs), "%s/c/cgroup.procs", base);
	h->ctrl = ctrl;
	nh++;
}

/* Pick v2 or the v1 hierarchies; `need` lists the v1 controllers this mode uses. */
static void setup_hierarchies(const char *const *need, int nneed)
{
	char buf[512];
	dev_t seen[MAX_H];

	if (read_file(CG_ROOT "/cgroup.controllers", buf, sizeof(buf)) == 0 &&
	    has_word(buf, "cpu") && has_word(buf, "memory") && has_word(buf, "pids")) {
		v2 = 1;
		add_hier(CG_ROOT, "v2");
		return;
	}
	for (int i = 0; i < nneed; i++) {
		char dir[128];
		struct stat st;
		int dup = 0;

		snprintf(dir, sizeof(dir), CG_ROOT "/%s", need[i]);
		if (stat(dir, &st) < 0)
			die("cgroup v1 controller %s not mounted at %s (and no usable cgroup v2)",
			    need[i], dir);
		for (int j = 0; j < nh; j++)
			if (seen[j] == st.st_dev)
				dup = 1;
		if (dup)
			continue;  /* co-mounted, e.g. cpu,cpuacct */
		seen[nh] = st.st_dev;
		add_hier(dir, need[i]);
	}
}

static void make_bases(void)
{
	for (int i = 0; i < nh; i++) {
		if (mkdir(H[i].base, 0755) < 0)
			die("mkdir %s: %s", H[i].base, strerror(errno));
		H[i].base_made = 1;
	}
	if (v2) {
		char buf[512];

		if (read_file(CG_ROOT "/cgroup.subtree_control", buf, sizeof(buf)) < 0)
			die("read " CG_ROOT "/cgroup.subtree_control: %s", strerror(errno));
		if (!has_word(buf, "cpu") || !has_word(buf, "memory") || !has_word(buf, "pids"))
			must_write(CG_ROOT "/cgroup.subtree_control", "+cpu +memory +pids");
		char p[400];

		snprintf(p, sizeof(p), "%s/cgroup.subtree_control", H[0].base);
		must_write(p, "+cpu +memory +pids");
	}
}

/* ---- start ---- */

static char child_stack[64 * 1024] __attribute__((aligned(16)));

/* Runs in the clone(CLONE_VM|CLONE_VFORK) child: only raw syscalls, then exec. */
static int child_fn(void *arg)
{
	static char *const argv[] = { TRUE_BIN, NULL };
	static char *const envp[] = { NULL };

	(void)arg;
	for (int i = 0; i < nh; i++) {
		int fd = open(H[i].procs, O_WRONLY | O_CLOEXEC);

		if (fd < 0 || write(fd, "0", 1) != 1)
			_exit(126);
		close(fd);
	}
	execve(TRUE_BIN, argv, envp);
	_exit(127);
}

static void set_limits(const struct hier *h)
{
	char p[400];

	if (v2) {
		snprintf(p, sizeof(p), "%s/cpu.max", h->child);
		must_write(p, "50000 100000");
		snprintf(p, sizeof(p), "%s/memory.max", h->child);
		must_write(p, "268435456");
		snprintf(p, sizeof(p), "%s/pids.max", h->child);
		must_write(p, "64");
	} else if (!strcmp(h->ctrl, "cpu")) {
		snprintf(p, sizeof(p), "%s/cpu.cfs_period_us", h->child);
		must_write(p, "100000");
		snprintf(p, sizeof(p), "%s/cpu.cfs_quota_us", h->child);
		must_write(p, "50000");
	} else if (!strcmp(h->ctrl, "memory")) {
		snprintf(p, sizeof(p), "%s/memory.limit_in_bytes", h->child);
		must_write(p, "268435456");
	} else if (!strcmp(h->ctrl, "pids")) {
		snprintf(p, sizeof(p), "%s/pids.max", h->child);
		must_write(p, "64");
	}
}

static int run_start(int n)
{
	static const char *const need[] = { "cpu", "cpuacct", "memory", "pids", "freezer" };
	double *t = calloc((size_t)n, sizeof(*t));
	int done = 0;

	if (!t)
		die("out of memory");
	setup_hierarchies(need, 5);
	make_bases();
	for (int it = 0; it < n && !g_stop; it++) {
		double t0 = now_ms();
		int status;
		pid_t pid;

		for (int i = 0; i < nh; i++) {
			if (mkdir(H[i].child, 0755) < 0)
				die("mkdir %s: %s", H[i].child, strerror(errno));
			set_limits(&H[i]);
		}
		pid = clone(child_fn, child_stack + sizeof(child_stack),
			    CLONE_VM | CLONE_VFORK | SIGCHLD, NULL);
		if (pid < 0)
			die("clone: %s", strerror(errno));
		while (waitpid(pid, &status, 0) < 0)
			if (errno != EINTR)
				die("waitpid: %s", strerror(errno));
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			die("child failed (status 0x%x): 126 = join cgroup, 127 = exec %s",
			    status, TRUE_BIN);
		for (int i = 0; i < nh; i++)
			if (rmdir_retry(H[i].child) < 0)
				die("rmdir %s: %s", H[i].child, strerror(errno));
		t[done++] = now_ms() - t0;
	}
	cleanup();
	if (g_stop)
		return 130;
	print_stats("floor-start", t, done);
	free(t);
	return 0;
}

/* ---- freeze ---- */

/* Spin on pread until the file contains `want` (v1 reads also advance FREEZING). */
static void wait_for(int fd, const char *want, double deadline)
{
	char buf[256];

	for (;;) {
		ssize_t r = pread(fd, buf, sizeof(buf) - 1, 0);

		if (r < 0)
			die("read %s: %s", freeze_ctl, strerror(errno));
		buf[r] = '\0';
		if (strstr(buf, want))
			return;
		if (g_stop)
			die("interrupted");
		if (now_ms() > deadline)
			die("timed out waiting for '%s' (have: %s)", want, buf);
	}
}

static int run_freeze(int n)
{
	static const char *const need[] = { "freezer" };
	double *t = calloc((size_t)n, sizeof(*t));
	char grp[320], procs[400], state[400];
	int wfd, rfd, done = 0;

	if (!t)
		die("out of memory");
	setup_hierarchies(need, 1);
	make_bases();
	snprintf(grp, sizeof(grp), "%s/f", H[0].base);
	if (mkdir(grp, 0755) < 0)
		die("mkdir %s: %s", grp, strerror(errno));
	snprintf(procs, sizeof(procs), "%s/cgroup.procs", grp);
	snprintf(freeze_ctl, sizeof(freeze_ctl), "%s/%s", grp, v2 ? "cgroup.freeze" : "freezer.state");
	snprintf(state, sizeof(state), "%s/%s", grp, v2 ? "cgroup.events" : "freezer.state");

	for (int i = 0; i < NPROC_FREEZE; i++) {
		char pidbuf[32];
		pid_t pid = fork();

		if (pid < 0)
			die("fork: %s", strerror(errno));
		if (pid == 0) {
			signal(SIGINT, SIG_DFL);
			signal(SIGTERM, SIG_DFL);
			signal(SIGHUP, SIG_DFL);
			for (;;)
				pause();
		}
		frozen_kids[nkids++] = pid;
		snprintf(pidbuf, sizeof(pidbuf), "%d", (int)pid);
		must_write(procs, pidbuf);
	}
	wfd = open(freeze_ctl, O_WRONLY | O_CLOEXEC);
	rfd = open(state, O_RDONLY | O_CLOEXEC);
	if (wfd < 0 || rfd < 0)
		die("open %s / %s: %s", freeze_ctl, state, strerror(errno));
	const char *frz = v2 ? "1" : "FROZEN", *thw = v2 ? "0" : "THAWED";
	const char *is_frz = v2 ? "frozen 1" : "FROZEN", *is_thw = v2 ? "frozen 0" : "THAWED";

	usleep(20000);  /* let the children reach pause() */
	for (int it = 0; it < n && !g_stop; it++) {
		double t0 = now_ms();

		if (pwrite(wfd, frz, strlen(frz), 0) < 0)
			die("write %s: %s", freeze_ctl, strerror(errno));
		wait_for(rfd, is_frz, t0 + 10000);
		if (pwrite(wfd, thw, strlen(thw), 0) < 0)
			die("write %s: %s", freeze_ctl, strerror(errno));
		wait_for(rfd, is_thw, t0 + 10000);
		t[done++] = now_ms() - t0;
	}
	close(wfd);
	close(rfd);
	cleanup();
	if (g_stop)
		return 130;
	print_stats("floor-freeze-thaw", t, done);
	free(t);
	return 0;
}

int main(int argc, char **argv)
{
	struct sigaction sa;

	if (argc != 2 || (strcmp(argv[1], "start") && strcmp(argv[1], "freeze"))) {
		fprintf(stderr, "usage: N=200 %s start|freeze\n", argv[0]);
		return 2;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	if (!strcmp(argv[1], "start"))
		return run_start(iterations(200));
	return run_freeze(iterations(200));
}
