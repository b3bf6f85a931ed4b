/*
 * The SPANK shim: --ccm tasks enter their job's host-root container (shim.h), in C in
 * slurmstepd (a task never starts Python).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <slurm/slurm.h> /* SLURM_EXTERN_CONT (no libslurm is linked) */
#include <slurm/spank.h>

#include "shifter_contracts.h" /* the contracts' names, written by the build from their Python owners */
#include "shim.h"

/* ------------------------------------------------------------------------ */
/* --ccm: a task enters its job's host-root container (no Python)            */
/*
 * The prolog of a --ccm job builds, on every node, the job's container of the host's own
 * root (local:/) at the job's path <udiMount>.jobs/<job id>/root (shifter.runtime.jobpath).
 * Each task of the job, in slurmstepd, still root, before Slurm drops to the user
 * (task_init_privileged), chroots into it and goes back to its working directory there,
 * as the user (a root-squashed filesystem refuses root); if that fails it says so and
 * goes to /tmp, as Shifter does.  Only a container root built for this job with the
 * image local:/ is entered (its launch plan says so: written by root, at the end of the
 * setup).  A step that asks for its own --image does not enter it (Shifter's rule).
 */

#ifndef SLURM_EXTERN_CONT
#define SLURM_EXTERN_CONT (0xfffffffc)
#endif
#define PLAN_RELPATH LAUNCH_PLAN_RELPATH
#define PLAN_MAX (1024 * 1024)

/* Does the plan at `fd` (root's, a regular file) describe a local:/ container of `job`? */
static int plan_is_ccm(int fd, uint32_t job)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != 0 || st.st_size <= 0
        || st.st_size > PLAN_MAX)
        return 0;
    size_t len = (size_t) st.st_size;
    char *buf = malloc(len + 1);
    if (buf == NULL) return 0;
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t) n;
    }
    int ok = 0, type = 0, image = 0, jobid = 0;
    char want_job[32];
    snprintf(want_job, sizeof(want_job), "%u", job);
    if (got == len && buf[len - 1] == '\0') {
        /* NUL-terminated strings: magic, version, then KEY VALUE pairs, "END" "" (shifter.runtime.plan) */
        const char *p = buf, *end = buf + len;
        const char *magic = p;
        p += strlen(p) + 1;
        if (strcmp(magic, LAUNCH_PLAN_MAGIC) == 0 && p < end && strcmp(p, LAUNCH_PLAN_VERSION) == 0) {
            p += strlen(p) + 1;
            while (p < end) {
                const char *key = p;
                p += strlen(p) + 1;
                if (p >= end) break;
                const char *value = p;
                p += strlen(p) + 1;
                if (strcmp(key, "END") == 0) { ok = 1; break; }
                if (strcmp(key, "image_type") == 0) type = strcmp(value, "local") == 0;
                if (strcmp(key, "image_id") == 0) image = strcmp(value, "/") == 0;
                if (strcmp(key, "jobid") == 0) jobid = strcmp(value, want_job) == 0;
            }
        }
    }
    free(buf);
    return ok && type && image && jobid;
}

/* The user's mistake the prolog recorded for the job (<udiMount>.jobs/<job>/error), if any. */
static void report_job_error(const char *job_dir)
{
    char path[PATH_MAX + 16], text[1024];
    if ((size_t) snprintf(path, sizeof(path), "%s/error", job_dir) >= sizeof(path)) return;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t n = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (n <= 0) return;
    text[n] = '\0';
    text[strcspn(text, "\n")] = '\0';
    slurm_error(PLUGIN ": %s", text);
}

/* Says `msg` as an error: slurmstepd logs it and forwards it to the step's srun (the
 * user sees "slurmstepd-<node>: error: shifter: ..."). */
static void task_say(const char *msg)
{
    slurm_error(PLUGIN ": %s", msg);
}

/* 2 = the step has --ccm (its own or inherited option), 1 = only the job's environment
 * says SHIFTER_CCM=1 (which a job submitted from a --ccm job's shell inherits too), 0 = no. */
static int ccm_requested(spank_t sp)
{
    char value[8] = "";
    if (opt_image_set) return 0; /* a step's own image: not the host root */
    if (opt_ccm) return 2;
    return spank_getenv(sp, ENV_JOB_CCM, value, (int) sizeof(value)) == ESPANK_SUCCESS
           && strcmp(value, "1") == 0;
}

/* Runs as the job's user (effective ids; real ids stay root): back to `cwd`, else /tmp. */
static int enter_cwd_as_user(spank_t sp, const char *cwd)
{
    uid_t uid;
    gid_t gid, *gids = NULL;
    int ngids = 0;
    if (spank_get_item(sp, S_JOB_UID, &uid) != ESPANK_SUCCESS
        || spank_get_item(sp, S_JOB_GID, &gid) != ESPANK_SUCCESS) {
        task_say("ccm: can't get the job's user and group");
        return -1;
    }
    if (spank_get_item(sp, S_JOB_SUPPLEMENTARY_GIDS, &gids, &ngids) != ESPANK_SUCCESS) {
        gids = NULL;
        ngids = 0;
    }
    gid_t old_gid = getegid();
    int nold = getgroups(0, NULL);
    gid_t *old = nold > 0 ? calloc((size_t) nold, sizeof(gid_t)) : NULL;
    if (nold < 0 || (nold > 0 && (old == NULL || getgroups(nold, old) < 0))) {
        free(old);
        task_say("ccm: can't read the task's groups");
        return -1;
    }
    int rc = 0;
    if (setgroups((size_t) ngids, gids) != 0 || setegid(gid) != 0 || seteuid(uid) != 0) {
        task_say("ccm: can't take the job user's identity to enter the working directory");
        rc = -1;
    } else if (chdir(cwd) != 0) {
        char msg[PATH_MAX + 160];
        snprintf(msg, sizeof(msg), "ccm: can't enter the working directory %s in the host-root "
                 "container (%s): going to /tmp instead", cwd, strerror(errno));
        task_say(msg);
        if (chdir("/tmp") != 0) {
            task_say("ccm: can't enter /tmp in the host-root container either");
            rc = -1;
        }
    }
    /* back to root's effective ids: Slurm drops privileges itself after this hook */
    if (seteuid(0) != 0 || setegid(old_gid) != 0 || setgroups((size_t) (nold > 0 ? nold : 0), old) != 0) {
        task_say("ccm: can't return to root's identity");
        rc = -1;
    }
    free(old);
    return rc;
}

/* 0 = entered (or nothing to do), -1 = the task must fail (said why). */
int ccm_enter(spank_t sp, int ac, char **av)
{
    uint32_t job = 0, step = 0;
    if (spank_get_item(sp, S_JOB_STEPID, &step) == ESPANK_SUCCESS && step == SLURM_EXTERN_CONT) return 0;
    int requested = ccm_requested(sp);
    if (!requested) return 0;
    if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS || job == 0) {
        task_say("ccm: can't get the job id");
        return -1;
    }
    char mount[PATH_MAX], job_dir[PATH_MAX + 48], root[PATH_MAX + 64];
    if (site_udi_mount(mount, sizeof(mount)) != 0) {
        task_say("ccm: can't read udiMount from udiRoot.conf (hint: udiMount must be set at most once, "
                 "to an absolute path)");
        return -1;
    }
    size_t m = strlen(mount);
    while (m > 1 && mount[m - 1] == '/') m--;
    snprintf(job_dir, sizeof(job_dir), "%.*s.jobs/%u", (int) m, mount, job);
    snprintf(root, sizeof(root), "%s/root", job_dir);

    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof(cwd)) == NULL) snprintf(cwd, sizeof(cwd), "/tmp");
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int plan = fd < 0 ? -1 : openat(fd, PLAN_RELPATH, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    int ccm = plan >= 0 && plan_is_ccm(plan, job);
    if (plan >= 0) close(plan);
    if (!ccm && requested == 1) { /* only an environment variable: not a --ccm job here */
        if (fd >= 0) close(fd);
        return 0;
    }
    if (!ccm) {
        if (fd >= 0) close(fd);
        char msg[PATH_MAX + 200];
        snprintf(msg, sizeof(msg), "ccm: job %u has no host-root container on this node (%s); "
                 "the prolog did not prepare it (see the slurmd log)", job, root);
        report_job_error(job_dir);
        task_say(msg);
        return -1;
    }
    if (fchdir(fd) != 0 || chroot(".") != 0 || chdir("/") != 0) {
        char msg[2 * PATH_MAX];
        snprintf(msg, sizeof(msg), "ccm: can't enter the host-root container %s: %s", root, strerror(errno));
        close(fd);
        task_say(msg);
        return -1;
    }
    close(fd);
    (void) ac;
    (void) av;
    return enter_cwd_as_user(sp, cwd);
}
