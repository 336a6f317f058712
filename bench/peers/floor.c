/*
 * floor — the raw cost floor that DMS benchmarks compare against.
 *
 * usage: floor start    # N x: mkdir group in each controller, write limits, clone+join+exec
 *                       #      /bin/true, waitpid, rmdir; prints "floor-start" stats line
 *        floor start-ns # as start, but the child is cloned into new pid, mount, uts, ipc and
 *                       #      net namespaces; it joins the groups, unshares its cgroup
 *                       #      namespace (rooted at the group, as crun does), makes / rslave,
 *                       #      mounts a fresh /proc, sets the hostname and execs /bin/true;
 *                       #      prints "floor-start-ns"
 *        floor exec     # once: a limited group and an init holding those six namespaces (set
 *                       #      up as in start-ns, then pause()); N x: setns(pidfd, pid) in this
 *                       #      process, clone a child that joins the groups, enters the other
 *                       #      five namespaces with one setns(pidfd) and execs /bin/true,
 *                       #      waitpid; prints "floor-exec" (the pidfd is opened once)
 *        floor freeze   # N x: freeze+poll+thaw+poll a group holding 100 sleeping processes;
 *                       #      prints "floor-freeze-thaw" stats line
 *
 * N (env, default 200) sets the iteration count; PAUSE_MS (env, default 0) an unmeasured pause
 * before each start and start-ns iteration. Stdout gets exactly one line:
 *   <name>\t<median_ms>\t<p90_ms>\t<n>
 * Everything else goes to stderr. Uses cgroup v2 if /sys/fs/cgroup/cgroup.controllers lists
 * cpu, memory and pids, otherwise the v1 hierarchies cpu, cpuacct, memory, pids, freezer
 * (co-mounted hierarchies are used once). All groups live under dms-bench-floor-<pid> and are
 * removed on exit, also on SIGINT/SIGTERM/SIGHUP (the exec mode's init is killed first; it also
 * dies with this process through PR_SET_PDEATHSIG). No network traffic: the new net namespaces
 * only hold their loopback device, which stays down.
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
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "stats.h"

#define CG_ROOT "/sys/fs/cgroup"
#define MAX_H 8
#define NPROC_FREEZE 100
#define TRUE_BIN "/bin/true"
#define HOSTNAME "dms-bench"
/* The namespaces of start-ns and exec; the cgroup namespace is unshared after joining. */
#define NS_CLONE (CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET)
#define NS_ENTER (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWCGROUP)

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
static pid_t ns_init;          /* exec mode: the init holding the namespaces */

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
	if (ns_init > 0) {
		kill(ns_init, SIGKILL);
		while (waitpid(ns_init, NULL, 0) < 0 && errno == EINTR)
			;
		ns_init = 0;
	}
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

/* Child setup of start-ns and of the exec mode's init (only raw syscalls; CLONE_VM-safe):
 * returns 0, or the exit code that names the failed step. */
static int ns_setup(void)
{
	for (int i = 0; i < nh; i++) {
		int fd = open(H[i].procs, O_WRONLY | O_CLOEXEC);

		if (fd < 0 || write(fd, "0", 1) != 1)
			return 126;
		close(fd);
	}
	/* After the join, so that the namespace's root is the domain's group. */
	if (unshare(CLONE_NEWCGROUP) < 0)
		return 125;
	if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0)
		return 124;
	if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		return 123;
	if (sethostname(HOSTNAME, strlen(HOSTNAME)) < 0)
		return 122;
	return 0;
}

#define NS_CODES "126 = join cgroup, 125 = unshare cgroupns, 124 = rslave /, 123 = mount /proc, " \
		 "122 = sethostname, 127 = exec " TRUE_BIN

/* Runs in the clone(CLONE_VM|CLONE_VFORK|NS_CLONE) child of start-ns. */
static int child_ns_fn(void *arg)
{
	static char *const argv[] = { TRUE_BIN, NULL };
	static char *const envp[] = { NULL };
	int rc = ns_setup();

	(void)arg;
	if (rc)
		_exit(rc);
	execve(TRUE_BIN, argv, envp);
	_exit(127);
}

static int run_start(int n, const char *name, int (*fn)(void *), int ns_flags, const char *codes)
{
	static const char *const need[] = { "cpu", "cpuacct", "memory", "pids", "freezer" };
	double *t = calloc((size_t)n, sizeof(*t));
	int done = 0;

	if (!t)
		die("out of memory");
	setup_hierarchies(need, 5);
	make_bases();
	double cpu0 = machine_cpu_ms();
	for (int it = 0; it < n && !g_stop; it++) {
		double t0;
		int status;
		pid_t pid;

		idle_pause();
		t0 = now_ms();
		for (int i = 0; i < nh; i++) {
			if (mkdir(H[i].child, 0755) < 0)
				die("mkdir %s: %s", H[i].child, strerror(errno));
			set_limits(&H[i]);
		}
		pid = clone(fn, child_stack + sizeof(child_stack),
			    CLONE_VM | CLONE_VFORK | ns_flags | SIGCHLD, NULL);
		if (pid < 0)
			die("clone: %s", strerror(errno));
		while (waitpid(pid, &status, 0) < 0)
			if (errno != EINTR)
				die("waitpid: %s", strerror(errno));
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			die("child failed (status 0x%x): %s", status, codes);
		for (int i = 0; i < nh; i++)
			if (rmdir_retry(H[i].child) < 0)
				die("rmdir %s: %s", H[i].child, strerror(errno));
		t[done++] = now_ms() - t0;
	}
	cleanup();
	if (g_stop)
		return 130;
	print_stats(name, t, done, done ? (machine_cpu_ms() - cpu0) / done : -1);
	free(t);
	return 0;
}

/* ---- exec ---- */

static int init_pipe[2];

/* The exec mode's init: a fork (not CLONE_VM) cloned with NS_CLONE; sets up, reports, waits. */
static int init_fn(void *arg)
{
	int rc;

	(void)arg;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	close(init_pipe[0]);
	rc = ns_setup();
	if (rc)
		_exit(rc);
	if (write(init_pipe[1], "r", 1) != 1)
		_exit(121);
	close(init_pipe[1]);
	for (;;)
		pause();
}

/* Runs in the clone(CLONE_VM|CLONE_VFORK) child, already in the init's pid namespace. */
static int exec_child_fn(void *arg)
{
	static char *const argv[] = { TRUE_BIN, NULL };
	static char *const envp[] = { NULL };
	int pidfd = *(int *)arg;

	for (int i = 0; i < nh; i++) {
		int fd = open(H[i].procs, O_WRONLY | O_CLOEXEC);

		if (fd < 0 || write(fd, "0", 1) != 1)
			_exit(126);
		close(fd);
	}
	if (setns(pidfd, NS_ENTER) < 0)
		_exit(125);
	execve(TRUE_BIN, argv, envp);
	_exit(127);
}

static int run_exec(int n)
{
	static const char *const need[] = { "cpu", "cpuacct", "memory", "pids", "freezer" };
	double *t = calloc((size_t)n, sizeof(*t));
	int done = 0, pidfd, status;
	char c;

	if (!t)
		die("out of memory");
	setup_hierarchies(need, 5);
	make_bases();
	for (int i = 0; i < nh; i++) {
		if (mkdir(H[i].child, 0755) < 0)
			die("mkdir %s: %s", H[i].child, strerror(errno));
		set_limits(&H[i]);
	}
	if (pipe2(init_pipe, O_CLOEXEC) < 0)
		die("pipe2: %s", strerror(errno));
	ns_init = clone(init_fn, child_stack + sizeof(child_stack), NS_CLONE | SIGCHLD, NULL);
	if (ns_init < 0)
		die("clone init: %s", strerror(errno));
	close(init_pipe[1]);
	if (read(init_pipe[0], &c, 1) != 1) {
		pid_t p = ns_init;

		ns_init = 0;
		while (waitpid(p, &status, 0) < 0)
			if (errno != EINTR)
				die("init failed; waitpid: %s", strerror(errno));
		die("init failed (status 0x%x): %s", status, NS_CODES);
	}
	close(init_pipe[0]);
	pidfd = (int)syscall(SYS_pidfd_open, ns_init, 0);
	if (pidfd < 0)
		die("pidfd_open: %s", strerror(errno));
	for (int it = 0; it < n && !g_stop; it++) {
		double t0 = now_ms();
		pid_t pid;

		/* Only the pid namespace for children: this process itself stays where it is. */
		if (setns(pidfd, CLONE_NEWPID) < 0)
			die("setns pid: %s", strerror(errno));
		pid = clone(exec_child_fn, child_stack + sizeof(child_stack),
			    CLONE_VM | CLONE_VFORK | SIGCHLD, &pidfd);
		if (pid < 0)
			die("clone: %s", strerror(errno));
		while (waitpid(pid, &status, 0) < 0)
			if (errno != EINTR)
				die("waitpid: %s", strerror(errno));
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			die("child failed (status 0x%x): 126 = join cgroup, 125 = setns, 127 = exec %s",
			    status, TRUE_BIN);
		t[done++] = now_ms() - t0;
	}
	close(pidfd);
	cleanup();
	if (g_stop)
		return 130;
	print_stats("floor-exec", t, done, -1);
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
	print_stats("floor-freeze-thaw", t, done, -1);
	free(t);
	return 0;
}

int main(int argc, char **argv)
{
	struct sigaction sa;

	int n;

	if (argc < 2 || argc > 3 ||
	    (strcmp(argv[1], "start") && strcmp(argv[1], "start-ns") && strcmp(argv[1], "exec") &&
	     strcmp(argv[1], "freeze"))) {
		fprintf(stderr, "usage: N=200 %s start|start-ns|exec|freeze [COUNT]\n", argv[0]);
		return 2;
	}
	/* COUNT overrides N: the one-shot runs (one start per process, under timeit, which reads
	 * N itself) then need no env(1) exec, whose cost is not the floor's. */
	n = argc == 3 ? atoi(argv[2]) : iterations(200);
	if (n <= 0) {
		fprintf(stderr, "bad COUNT %s\n", argv[2]);
		return 2;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	if (!strcmp(argv[1], "start"))
		return run_start(n, "floor-start", child_fn, 0,
				 "126 = join cgroup, 127 = exec " TRUE_BIN);
	if (!strcmp(argv[1], "start-ns"))
		return run_start(n, "floor-start-ns", child_ns_fn, NS_CLONE, NS_CODES);
	if (!strcmp(argv[1], "exec"))
		return run_exec(n);
	return run_freeze(n);
}
