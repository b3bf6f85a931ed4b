/*
 * The SPANK shim: the job's extern step (shim.h).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <slurm/slurm.h> /* SLURM_EXTERN_CONT, slurm_step_id_t (no libslurm is linked) */
#include <slurm/spank.h>

#include "cgroup_path.h"
#include "shifter_contracts.h" /* the contracts' names, written by the build from their Python owners */
#include "shim.h"

#ifndef SLURM_EXTERN_CONT
#define SLURM_EXTERN_CONT (0xfffffffc)
#endif
#define PLAN_RELPATH LAUNCH_PLAN_RELPATH

/* ------------------------------------------------------------------------ */
/* the job's extern step (PrologFlags=Contain): extern_cgroup, extern_setup  */
/*
 * In the extern step's slurmstepd (task_post_fork of step SLURM_EXTERN_CONT, which Slurm
 * starts after the prolog), for a job that has a shifter container on this node:
 *  - extern_cgroup=1: every process of the job's cgroup (memory_cgroup; cgroup_path.h),
 *    i.e. what the prolog left running, such as the per-node sshd, is adopted into the
 *    extern step through slurmstepd's own stepd_add_extern_pid: Slurm then tracks it
 *    (proctrack), accounts for it and kills it with the job;
 *  - extern_setup=<script>: the site's script runs (as root, no arguments, cwd /), each
 *    line of its output logged (slurmd log); a failure is logged and fails the hook.
 * All in C: the extern step never starts Python.
 */

typedef int (*stepd_connect_f)(const char *dir, const char *node, slurm_step_id_t *step, uint16_t *proto);
typedef int (*stepd_add_extern_pid_f)(int fd, uint16_t proto, pid_t pid);

static void node_name(spank_t sp, char *out, size_t len)
{
    out[0] = '\0';
    if (spank_getenv(sp, "SLURMD_NODENAME", out, (int) len) == ESPANK_SUCCESS && out[0] != '\0') return;
    const char *env = getenv("SLURMD_NODENAME");
    if (env != NULL && env[0] != '\0') { snprintf(out, len, "%s", env); return; }
    if (gethostname(out, len) != 0) out[0] = '\0';
    out[len - 1] = '\0';
}

/* Does job `job` have a shifter container on this node (its launch plan, root's)? */
static int job_has_container(uint32_t job)
{
    char mount[PATH_MAX], plan[2 * PATH_MAX];
    struct stat st;
    if (site_udi_mount(mount, sizeof(mount)) != 0) return 0;
    size_t m = strlen(mount);
    while (m > 1 && mount[m - 1] == '/') m--;
    snprintf(plan, sizeof(plan), "%.*s.jobs/%u/root/" PLAN_RELPATH, (int) m, mount, job);
    return lstat(plan, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == 0;
}

static int adopt_cgroup(spank_t sp, uint32_t job, uid_t uid)
{
    char node[256], path[PATH_MAX], procs[PATH_MAX + 16];
    node_name(sp, node, sizeof(node));
    if (cgroup_job_path(memory_cgroup, uid, job, cgroup_per_node ? node : NULL, path, sizeof(path)) != 0) {
        slurm_error(PLUGIN ": extern step: job %u: no cgroup path for node '%s'", job, node);
        return -1;
    }
    snprintf(procs, sizeof(procs), "%s/cgroup.procs", path);
    FILE *f = fopen(procs, "re");
    if (f == NULL) {
        slurm_info(PLUGIN ": extern step: job %u: no cgroup %s (%s): nothing to adopt", job, path, strerror(errno));
        return 0;
    }
    stepd_connect_f connect_f = (stepd_connect_f) dlsym(RTLD_DEFAULT, "stepd_connect");
    stepd_add_extern_pid_f add_f = (stepd_add_extern_pid_f) dlsym(RTLD_DEFAULT, "stepd_add_extern_pid");
    if (connect_f == NULL || add_f == NULL) {
        fclose(f);
        slurm_error(PLUGIN ": extern step: job %u: this slurmstepd has no stepd_connect/stepd_add_extern_pid",
                    job);
        return -1;
    }
    slurm_step_id_t step = {.job_id = job, .step_id = SLURM_EXTERN_CONT, .step_het_comp = NO_VAL};
    uint16_t proto = 0;
    int fd = connect_f(NULL, node, &step, &proto);
    if (fd < 0) {
        fclose(f);
        slurm_error(PLUGIN ": extern step: job %u: can't connect to the extern step on %s", job, node);
        return -1;
    }
    int rc = 0, n = 0;
    long pid;
    while (fscanf(f, "%ld", &pid) == 1) {
        if (pid <= 1) continue;
        if (add_f(fd, proto, (pid_t) pid) != 0) {
            slurm_error(PLUGIN ": extern step: job %u: can't adopt pid %ld", job, pid);
            rc = -1;
        } else {
            n++;
        }
    }
    fclose(f);
    close(fd);
    slurm_info(PLUGIN ": extern step: job %u: adopted %d process(es) of %s", job, n, path);
    return rc;
}

static int run_extern_setup(uint32_t job)
{
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) {
        slurm_error(PLUGIN ": extern_setup: job %u: pipe: %s", job, strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        close(pipefd[0]);
        close(pipefd[1]);
        slurm_error(PLUGIN ": extern_setup: job %u: fork: %s", job, strerror(errno));
        return -1;
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0) dup2(null, STDIN_FILENO);
        dup2(pipefd[1], STDOUT_FILENO);
        dup2(pipefd[1], STDERR_FILENO);
        if (chdir("/") != 0) _exit(126);
        char jobid[32];
        snprintf(jobid, sizeof(jobid), "%u", job);
        setenv("SLURM_JOB_ID", jobid, 1);
        execl(extern_setup, extern_setup, (char *) NULL);
        dprintf(STDERR_FILENO, "can't run %s: %s\n", extern_setup, strerror(errno));
        _exit(127);
    }
    close(pipefd[1]);
    FILE *out = fdopen(pipefd[0], "r");
    char line[1024];
    while (out != NULL && fgets(line, sizeof(line), out) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        slurm_info(PLUGIN ": extern_setup: job %u: %s", job, line);
    }
    if (out != NULL) fclose(out); else close(pipefd[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        slurm_error(PLUGIN ": extern_setup: job %u: %s failed (%s %d)", job, extern_setup,
                    WIFEXITED(status) ? "exit" : "signal",
                    WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
        return -1;
    }
    slurm_info(PLUGIN ": extern_setup: job %u: %s done", job, extern_setup);
    return 0;
}

int extern_step_setup(spank_t sp)
{
    uint32_t job = 0, step = 0;
    uid_t uid = 0;
    if (spank_get_item(sp, S_JOB_STEPID, &step) != ESPANK_SUCCESS || step != SLURM_EXTERN_CONT) return 0;
    if (!(extern_cgroup && memory_cgroup) && extern_setup == NULL) return 0;
    if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS || spank_get_item(sp, S_JOB_UID, &uid) != ESPANK_SUCCESS)
        return 0;
    if (!job_has_container(job)) return 0;
    int rc = 0;
    if (extern_cgroup && memory_cgroup && adopt_cgroup(sp, job, uid) != 0) rc = -1;
    if (extern_setup != NULL && run_extern_setup(job) != 0) rc = -1;
    return rc;
}
