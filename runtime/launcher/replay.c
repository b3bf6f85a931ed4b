/*
 * shifter: replay of private plans (docs/private-plans.md).  No setuid bit, no Python.
 *
 * The first `shifter CMD` for a request no prepared UDI matches is built by Python,
 * which records every step that changed the container and writes the recording as a
 * private plan: <plan directory>/<FNV-1a of the request key>.plan (plandir.h).  The next
 * identical request is built here, by replaying the plan's operations:
 *
 *   root  in a new mount namespace (/ recursively slave), in this process;
 *   user  the three processes of shifter.runtime.launcher.private_user: this process stays in
 *         the host's namespaces and supervises; a helper in its own session receives
 *         the /dev/fuse fd and execs squashfuse; the builder unshares a user and mount
 *         namespace, runs the operations and becomes the command.
 *
 * Then, chrooted into the plan's root, the fast path's last steps (enter_container):
 * no_new_privs, the caller's directory, the environment, userhooks, exec.
 *
 * Anything that does not fit (no plan, a plan for another request, a malformed one, a
 * changed input file) returns to the caller, which hands the request to Python.  An
 * operation that fails throws the new namespaces away, removes the plan and execs
 * Python, which builds the container (or reports the error) and writes a fresh plan.
 * SHIFTER_REPLAY_DEBUG (set to anything) prints why a plan was not used.
 *
 * This is the replay's driver; the plan is found and read by replay_plan.c, each
 * operation run by replay_ops.c, the container entered by container.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "container.h"
#include "replay.h"
#include "replay_ops.h"
#include "replay_plan.h"
#include "sqfs_inproc.h"

#define REPORT_REPLAY 'R' /* the builder's report: an operation failed, build through Python */

/* ------------------------------------------------------------------ replay */
/* Run the operations, then chroot into the root.  0, or -1 (errno set). */
static int build(struct pplan *p, struct ctx *c)
{
    for (int k = 0; k < p->n_ops; k++) {
        if (run_op(&p->ops[k], c) != 0) {
            say("%s %s: %s", RECORDS[p->ops[k].type].name, p->ops[k].s[0], strerror(errno));
            return -1;
        }
    }
    if (chdir(p->root) != 0 || chroot(".") != 0 || chdir("/") != 0) {
        say("chroot %s: %s", p->root, strerror(errno));
        return -1;
    }
    return 0;
}

static struct entry entry_of(const struct pplan *p, const char *cwd)
{
    struct entry e = {cwd, p->env, p->n_env, p->userhook, p->n_userhook, p->cmd, p->n_cmd};
    return e;
}

/* ------------------------------------------------------------------ root */
static void replay_root(int argc, char **argv, struct pplan *p, const struct plan_file *pf, const char *cwd)
{
    int ns = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
    if (ns < 0) return;
    if (unshare(CLONE_NEWNS) != 0) {
        close(ns);
        return;
    }
    /* slave: our mounts stay ours, and the host's teardown of its UDI still reaches the
     * copies this namespace holds (see linux.ensure_anchor) */
    struct ctx c = {0, 0, NULL, -1, NULL, -1};
    int failed = mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) != 0;
    if (!failed && build(p, &c) != 0) {
        failed = 1;
        remove_plan(pf);
    }
    if (failed) {
        /* back to the host's namespace: the new one and its mounts die with the last
         * reference, the loop device clears itself */
        if (setns(ns, CLONE_NEWNS) != 0) {
            fprintf(stderr, "shifter: can't return to the host's mount namespace: %s\n", strerror(errno));
            exit(SHIFTER_EXIT_LAUNCH);
        }
        if (chdir(cwd) != 0 && chdir("/") != 0) exit(SHIFTER_EXIT_LAUNCH);
        to_python(argc, argv);
    }
    close(ns);
    struct entry e = entry_of(p, cwd);
    exit(enter_container(&e, argc, argv));
}

/* ------------------------------------------------------------------ user */
static const int FORWARDED[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
#define N_FORWARDED ((int) (sizeof(FORWARDED) / sizeof(FORWARDED[0])))

static pid_t launcher_pid; /* the supervising process, for its children */

/* A child of the launcher goes when the launcher goes (SIGKILLed, say): the command, like
 * the single process of the other paths, and the image's server. */
static void die_with_launcher(void)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (getppid() != launcher_pid) _exit(SHIFTER_EXIT_LAUNCH); /* it went before prctl */
}

/* The squashfuse helper: own session (the terminal's ^C is for the command), waits
 * for the mounted /dev/fuse fd, then becomes `PROG -f IMAGE /dev/fd/N`.  Its output
 * goes to /dev/null: if it fails, the fusemount operation fails and Python, replaying
 * the build, reports why. */
static __attribute__((noreturn)) void helper_main(const char *prog, const char *image, int sock,
                                                  const sigset_t *old_mask)
{
    die_with_launcher();
    setsid();
    /* the image's server must outlive every signal the command may get and handle:
     * Slurm signals all of a step's processes (scancel -s USR1, SIGTERM then KillWait),
     * and without its server every page of the image the command touches is SIGBUS */
    static const int ignored[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGPIPE, SIGALRM,
                                  SIGVTALRM, SIGPROF, SIGXCPU, SIGXFSZ};
    struct sigaction ign;
    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    for (size_t k = 0; k < sizeof(ignored) / sizeof(ignored[0]); k++) sigaction(ignored[k], &ign, NULL);
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        if (null > 2) close(null);
    }
    sigprocmask(SIG_SETMASK, old_mask, NULL);
    /* squashfuse_ll's libraries and the image, loaded while the builder makes its
     * namespaces (sqfs_inproc.c); else exec squashfuse_ll once the fd is here */
    const char *slash = strrchr(prog, '/');
    int inproc = strcmp(slash ? slash + 1 : prog, "squashfuse_ll") == 0 && sqfs_inproc_prepare(image) == 0;
    char payload[16];
    struct iovec iov = {payload, sizeof(payload)};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
    ssize_t r;
    do r = recvmsg(sock, &msg, 0);
    while (r < 0 && errno == EINTR);
    struct cmsghdr *c = r > 0 ? CMSG_FIRSTHDR(&msg) : NULL;
    if (c == NULL || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(int)))
        _exit(SHIFTER_EXIT_OK); /* the builder gave up before mounting */
    int fd; /* received without MSG_CMSG_CLOEXEC: squashfuse inherits it */
    memcpy(&fd, CMSG_DATA(c), sizeof(int));
    if (inproc) sqfs_inproc_serve(fd);
    char dev[32];
    snprintf(dev, sizeof(dev), "/dev/fd/%d", fd);
    char *args[] = {(char *) (slash ? slash + 1 : prog), "-f", (char *) image, dev, NULL};
    execv(prog, args);
    _exit(SHIFTER_EXIT_NOT_FOUND);
}

/* ------------------------------------------------------------------ shared user namespace */
/* One user namespace for all of a user's private containers on the node (see
 * shifter.runtime.launcher.userns): processes in sibling user namespaces can't ptrace,
 * process_vm_readv or open each other's /proc/PID/fd, which MPI's shared memory needs.
 * Join the one named in <plan dir>/userns.<gid> (under an exclusive flock) if it is the
 * caller's with the mapping a new one would have; else create it and name it. */
#ifndef NS_GET_OWNER_UID
#define NS_GET_OWNER_UID _IO(0xb7, 0x4)
#endif

static int read_at(int dirfd, const char *name, char *buf, size_t size)
{
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n < 0) return -1;
    buf[n] = '\0';
    return 0;
}

/* Does `text` read exactly the three numbers a b c? */
static int is_map(const char *text, unsigned a, unsigned b, unsigned c)
{
    unsigned x, y, z;
    char rest;
    return sscanf(text, " %u %u %u %c", &x, &y, &z, &rest) == 3 && x == a && y == b && z == c;
}

static int join_userns(int reg, uid_t uid, gid_t gid)
{
    char buf[32];
    ssize_t n = pread(reg, buf, sizeof(buf) - 1, 0);
    if (n <= 0) return -1;
    buf[n] = '\0';
    char *end;
    long pid = strtol(buf, &end, 10);
    if (pid <= 0 || (*end != '\0' && *end != '\n')) return -1;
    char path[64];
    snprintf(path, sizeof(path), "/proc/%ld", pid);
    /* everything through the /proc/PID fd: a recycled pid fails instead of lying */
    int proc = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (proc < 0) return -1;
    int rc = -1, ns = openat(proc, "ns/user", O_RDONLY | O_CLOEXEC);
    uid_t owner;
    char text[256];
    if (ns >= 0 && ioctl(ns, NS_GET_OWNER_UID, &owner) == 0 && owner == uid &&
        read_at(proc, "setgroups", text, sizeof(text)) == 0 && strncmp(text, "deny", 4) == 0 &&
        read_at(proc, "uid_map", text, sizeof(text)) == 0 && is_map(text, uid, uid, 1) &&
        read_at(proc, "gid_map", text, sizeof(text)) == 0 && is_map(text, gid, gid, 1))
        rc = setns(ns, CLONE_NEWUSER);
    if (ns >= 0) close(ns);
    close(proc);
    return rc;
}

/* The shared user namespace (joined or created) and a new mount namespace: 0, or -1. */
static int enter_userns(int plan_dir, uid_t uid, gid_t gid)
{
    char name[32];
    snprintf(name, sizeof(name), "userns.%u", (unsigned) gid);
    int reg = plan_dir >= 0 ? openat(plan_dir, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600) : -1;
    struct stat st;
    if (reg >= 0 && (fstat(reg, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != uid)) {
        close(reg);
        reg = -1;
    }
    if (reg >= 0 && flock(reg, LOCK_EX) == 0 && join_userns(reg, uid, gid) == 0) {
        close(reg);
        return unshare(CLONE_NEWNS);
    }
    int rc = unshare(CLONE_NEWUSER | CLONE_NEWNS) == 0 ? map_self(uid, gid) : -1;
    if (rc == 0 && reg >= 0) { /* name it (if that fails, it is just not shared) */
        char pid[32];
        int len = snprintf(pid, sizeof(pid), "%d", (int) getpid());
        if (ftruncate(reg, 0) == 0 && pwrite(reg, pid, (size_t) len, 0) != len) ftruncate(reg, 0);
    }
    if (reg >= 0) close(reg); /* and with it the lock */
    return rc;
}

/* The builder: a new user namespace (the caller mapped to themselves, setgroups
 * denied) and mount namespace (/ recursively private), the operations, chroot, then
 * the command.  A failure before the command reports 'R' on `err` (replay through
 * Python); the exec of the command closes `err` (O_CLOEXEC). */
static __attribute__((noreturn)) void builder_main(int argc, char **argv, struct pplan *p, struct ctx *c,
                                                   const char *cwd, int err, const sigset_t *old_mask)
{
    die_with_launcher();
    sigprocmask(SIG_SETMASK, old_mask, NULL);
    if (enter_userns(c->plan_dir, c->uid, c->gid) != 0) goto failed;
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) goto failed;
    if (build(p, c) != 0) goto failed;
    if (c->sock >= 0) close(c->sock);
    struct entry e = entry_of(p, cwd);
    _exit(enter_container(&e, argc, argv));
failed:
    say("building the private container: %s", strerror(errno));
    char report = REPORT_REPLAY;
    if (write(err, &report, 1) < 0) _exit(SHIFTER_EXIT_LAUNCH);
    _exit(SHIFTER_EXIT_LAUNCH);
}

/* Reap `pid` within `seconds` (< 0: wait as long as it takes): 1 reaped (or gone),
 * 0 still running.  SIGCHLD is blocked: wait for it with sigtimedwait. */
static int wait_child(pid_t pid, int *status, double seconds)
{
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    struct timespec now, end;
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += (time_t) seconds;
    end.tv_nsec += (long) ((seconds - (double) (time_t) seconds) * 1e9);
    if (end.tv_nsec >= 1000000000L) {
        end.tv_sec++;
        end.tv_nsec -= 1000000000L;
    }
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid || (r < 0 && errno != EINTR)) return 1;
        struct timespec left = {1, 0};
        if (seconds >= 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            left.tv_sec = end.tv_sec - now.tv_sec;
            left.tv_nsec = end.tv_nsec - now.tv_nsec;
            if (left.tv_nsec < 0) {
                left.tv_sec--;
                left.tv_nsec += 1000000000L;
            }
            if (left.tv_sec < 0) return 0;
        }
        sigtimedwait(&chld, NULL, &left);
    }
}

/* squashfuse exits by itself when the namespace (and so the FUSE mount) is gone; if
 * processes the command left behind keep it alive, stop it: they lose the image. */
static void stop_helper(pid_t helper)
{
    int status;
    if (wait_child(helper, &status, 1.0)) return;
    kill(helper, SIGKILL); /* it ignores the others (helper_main) */
    wait_child(helper, &status, -1);
}

/* Was a signal sent by Slurm's step daemon?  It signals every process of the step,
 * the command included: forwarding it would deliver it twice. */
static int from_step_daemon(const siginfo_t *si)
{
    if (si->si_code != SI_USER && si->si_code != SI_QUEUE) return 0;
    char path[64], comm[32];
    snprintf(path, sizeof(path), "/proc/%d/comm", (int) si->si_pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, comm, sizeof(comm) - 1);
    close(fd);
    return n > 0 && strncmp(comm, "slurmstepd\n", (size_t) n) == 0 && (size_t) n == strlen("slurmstepd\n");
}

/* Forward the listed signals to the builder (later: the command) until it exits,
 * except those the kernel sent (a terminal's ^C already reached the whole foreground
 * process group); its wait status. */
static int supervise(pid_t builder, const sigset_t *waitset)
{
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(waitset, &si);
        if (sig < 0) continue; /* EINTR */
        if (sig == SIGCHLD) {
            int status;
            pid_t r = waitpid(builder, &status, WNOHANG);
            if (r == builder) return status;
            if (r < 0 && errno == ECHILD) return SHIFTER_EXIT_LAUNCH << 8; /* can't happen: SIGCHLD is not ignored */
        } else if (si.si_code != SI_KERNEL && !from_step_daemon(&si)) {
            kill(builder, sig); /* not the terminal's (it signalled the command too), not Slurm's */
        }
    }
}

/* ${TMPDIR:-/tmp}/shifter.<uid>.<pid>.<8 hex>, created 0700 (TMPDIR only if absolute
 * and a directory); the only thing the user kind creates on the host. */
static int make_staging(char *out, size_t size, uid_t uid)
{
    const char *tmp = getenv("TMPDIR");
    struct stat st;
    if (tmp == NULL || tmp[0] != '/' || stat(tmp, &st) != 0 || !S_ISDIR(st.st_mode)) tmp = "/tmp";
    unsigned char rnd[4];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t) sizeof(rnd)) return -1;
    size_t tlen = strlen(tmp);
    int n = snprintf(out, size, "%s%sshifter.%u.%d.%02x%02x%02x%02x", tmp, tmp[tlen - 1] == '/' ? "" : "/",
                     (unsigned) uid, (int) getpid(), rnd[0], rnd[1], rnd[2], rnd[3]);
    if (n < 0 || (size_t) n >= size) return -1;
    return mkdir(out, 0700);
}

static void replay_user(int argc, char **argv, struct pplan *p, const struct plan_file *pf, const char *cwd,
                        uid_t uid, gid_t gid)
{
    char staging[PATH_MAX];
    if (make_staging(staging, sizeof(staging), uid) != 0) {
        say("can't create the staging directory: %s", strerror(errno));
        return; /* Python says why */
    }
    expand_paths(p, staging);
    char fuse_type[PATH_MAX];
    if (p->fuse) {
        const char *slash = strrchr(p->fuse, '/');
        snprintf(fuse_type, sizeof(fuse_type), "fuse.%s", slash ? slash + 1 : p->fuse);
    }
    struct ctx c = {uid, gid, p->fuse ? fuse_type : NULL, -1, staging, pf->dirfd};

    /* the forwarded signals and SIGCHLD wait in sigwaitinfo; SIGCHLD must not be
     * ignored (children would reap themselves) */
    sigset_t waitset, forwarded, old_mask;
    sigemptyset(&forwarded);
    for (int k = 0; k < N_FORWARDED; k++) sigaddset(&forwarded, FORWARDED[k]);
    waitset = forwarded;
    sigaddset(&waitset, SIGCHLD);
    sigprocmask(SIG_BLOCK, &waitset, &old_mask);
    struct sigaction dfl, old_chld;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGCHLD, &dfl, &old_chld);

    pid_t helper = -1, builder = -1;
    launcher_pid = getpid();
    int sock[2] = {-1, -1}, err[2] = {-1, -1}, status = 0, replay_failed = 1;
    if (p->fusemount) {
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sock) != 0) goto done;
        helper = fork();
        if (helper == 0) {
            close(sock[0]);
            helper_main(p->fuse, p->fusemount->s[0], sock[1], &old_mask);
        }
        if (helper < 0) goto done;
        c.sock = sock[0];
    }
    if (pipe2(err, O_CLOEXEC | O_NONBLOCK) != 0) goto done;
    builder = fork();
    if (builder == 0) {
        close(err[0]);
        if (sock[1] >= 0) close(sock[1]);
        builder_main(argc, argv, p, &c, cwd, err[1], &old_mask);
    }
    if (builder < 0) goto done;
    close(err[1]);
    err[1] = -1;
    if (sock[0] >= 0) close(sock[0]);
    if (sock[1] >= 0) close(sock[1]);
    sock[0] = sock[1] = -1;

    status = supervise(builder, &waitset);
    char byte = 0;
    replay_failed = read(err[0], &byte, 1) == 1 && byte == REPORT_REPLAY;
    if (replay_failed) remove_plan(pf);

done:
    for (int k = 0; k < 2; k++) {
        if (sock[k] >= 0) close(sock[k]); /* the helper gives up without a fd */
        if (err[k] >= 0) close(err[k]);
    }
    if (helper > 0) stop_helper(helper);
    if (rmdir(staging) != 0 && errno != ENOENT)
        fprintf(stderr, "shifter: can't remove %s: %s\n", staging, strerror(errno));
    struct timespec zero = {0, 0};
    while (sigtimedwait(&forwarded, NULL, &zero) > 0) {} /* arrived after the command ended */
    if (replay_failed) {
        sigaction(SIGCHLD, &old_chld, NULL);
        sigprocmask(SIG_SETMASK, &old_mask, NULL);
        to_python(argc, argv);
    }
    exit(WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? SHIFTER_EXIT_SIGNAL_BASE + WTERMSIG(status) : SHIFTER_EXIT_LAUNCH);
}


/* ------------------------------------------------------------------ entry */
void replay_private(int argc, char **argv, uid_t uid, gid_t gid)
{
    struct plan_file pf;
    struct pplan p;
    if (find_plan(uid, gid, &pf, &p) != 0) return;
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof(cwd)) == NULL) snprintf(cwd, sizeof(cwd), "/");
    if (p.user) replay_user(argc, argv, &p, &pf, cwd, uid, gid);
    else replay_root(argc, argv, &p, &pf, cwd);
    close(pf.dirfd);
}
