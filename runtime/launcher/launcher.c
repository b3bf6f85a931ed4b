/*
 * shifter: the launcher's compiled fast path.  No setuid bit, no Python.
 *
 * It handles exactly one case: `shifter CMD...` with no option, when the UDI that
 * setupRoot prepared on this node (its launch plan at <udiMount>/var/shifter/launch.plan,
 * see shifter.runtime.plan) was made for this very request: same uid, gid, job id,
 * image, volumes and modules.  Then it
 *   - joins the user namespace setupRoot made for the UDI's user (one per node for all
 *     of the job's tasks) or else creates one, mapping the caller to their own uid/gid
 *     (setgroups denied: supplementary groups still grant access; root needs none),
 *   - chroots into the UDI in-process, sets no_new_privs,
 *   - applies the plan's environment rules, changes to the caller's directory,
 *   - runs the modules' userhooks, and execs the command (capabilities are gone at
 *     exec: the caller is not uid 0 in the namespace).
 * When no prepared UDI matches, a private container may still be built here: by
 * replaying the private plan Python recorded for this very request the first time
 * (replay.c, docs/private-plans.md).  The last steps (no_new_privs, environment,
 * userhooks, exec) are container.c's, shared with the replay; the request's rule is
 * envrequest.c's.  Units: launcher.c -> replay.c -> replay_ops.c, replay_plan.c;
 * each of them -> container.c, envrequest.c (below nothing of the launcher's).
 * A plan whose modules have per-GPU device files (`gpudev`) gets a mount namespace of
 * the step's own in which the GPUs that are not the step's are covered (cover_gpus).
 * Everything else (options, another image, no plan, no user namespaces, a failed
 * replay) is handed, unchanged, to the Python implementation:
 *   <prefix>/bin/python -I -m shifter.runtime.launcher.launch ARGS...
 *
 * The request is read from the environment by the rule of
 * shifter.runtime.launcher.launch.env_image_spec (env_image_request here); with
 * SHIFTER_LAUNCHER_PRINT_REQUEST set, the launcher prints what it took (JSON) and runs
 * nothing: tests/data/contracts/image_request.json runs through both.
 *
 * Exit status: the command's; 127 command not found, 126 not executable; 125 the
 * container could not be entered (one line on stderr).  The codes are the SHIFTER_EXIT_*
 * of exit_codes.h, generated at build time from the one table, shifter/exit_codes.py;
 * SHIFTER_LAUNCHER_PRINT_EXIT_CODES=1 prints them (NAME=CODE lines) and runs nothing.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <ctype.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "container.h"
#include "envrequest.h"
#include "replay.h"
#include "shifter_contracts.h" /* the contracts' names, written by the build from their Python owners */

#define PLAN_REL "/" LAUNCH_PLAN_RELPATH
#define GPU_BLANK "/var/shifter/nodevice" /* shifter.runtime.devices.BLANK */
#define PLAN_MAX (1 << 20)

/* ------------------------------------------------------------------ helpers */
static char *read_file(const char *path, size_t *len, int need_root_owned)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > PLAN_MAX ||
        (need_root_owned && (st.st_uid != 0 || (st.st_mode & 022)))) {
        close(fd);
        return NULL;
    }
    char *buf = malloc((size_t) st.st_size + 1);
    if (buf == NULL) {
        close(fd);
        return NULL;
    }
    size_t got = 0;
    while (got < (size_t) st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t) st.st_size - got);
        if (r <= 0) break;
        got += (size_t) r;
    }
    close(fd);
    buf[got] = '\0';
    *len = got;
    return buf;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t') s++;
    char *end = s + strlen(s);
    while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r' || end[-1] == '\n')) *--end = '\0';
    return s;
}

/* udiMount from udiRoot.conf (the key=value syntax of shifter.runtime.confsyntax). */
static int udi_mount(char *out, size_t outlen)
{
    char path[PATH_MAX + 32];
    const char *conf = getenv(ENV_CONFIG);
    if (conf == NULL || conf[0] == '\0') {
        snprintf(path, sizeof(path), "%s/etc/udiRoot.conf", prefix);
        conf = path;
    }
    snprintf(out, outlen, "/var/udiMount");
    size_t len = 0;
    char *text = read_file(conf, &len, 0);
    if (text == NULL) return -1;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *hash = strchr(line, '#');
        if (hash) *hash = '\0';
        char *eq = strchr(line, '=');
        if (eq == NULL) continue;
        *eq = '\0';
        if (strcmp(trim(line), "udiMount") == 0) {
            char *value = trim(eq + 1);
            if (value[0] != '/' || value[strlen(value) - 1] == '\\') {
                free(text);
                return -1;
            }
            snprintf(out, outlen, "%s", value);
        }
    }
    free(text);
    return 0;
}

static void json_string(const char *s);

/* The job's prepared UDI (shifter.runtime.jobpath; tests/data/contracts/job_udi.json runs through
 * both): <udiMount>.jobs/<SLURM_JOB_ID>/root, for a job id of 1 to 20 ASCII digits. */
static int job_udi(const char *udi_mount, char *out, size_t outlen)
{
    const char *job = getenv("SLURM_JOB_ID");
    size_t n = job ? strlen(job) : 0;
    if (n == 0 || n > 20) return -1;
    for (size_t i = 0; i < n; i++)
        if (job[i] < '0' || job[i] > '9') return -1;
    size_t m = strlen(udi_mount);
    while (m > 1 && udi_mount[m - 1] == '/') m--;
    int w = snprintf(out, outlen, "%.*s.jobs/%s/root", (int) m, udi_mount, job);
    return (w < 0 || (size_t) w >= outlen) ? -1 : 0;
}

static int print_udi(void)
{
    char mount[PATH_MAX], udi[PATH_MAX];
    if (udi_mount(mount, sizeof(mount)) != 0) return SHIFTER_EXIT_LAUNCH;
    fputs("{\"udi\": ", stdout);
    json_string(job_udi(mount, udi, sizeof(udi)) == 0 ? udi : NULL);
    fputs("}\n", stdout);
    return 0;
}

struct plan {
    const char *uid, *gid, *jobid, *image_type, *image_id, *volumes, *modules, *modules_default, *workdir;
    const char **entry, **cmd, **env, **userhook;
    int n_cmd, n_env, n_userhook;
    const char **gpudev; /* the modules' per-GPU device files (shifter.runtime.devices) */
    int n_gpudev;
};

/* 1 to 10 ASCII digits */
static int is_number(const char *s)
{
    size_t n = strspn(s, "0123456789");
    return n > 0 && n <= 10 && s[n] == '\0';
}

static int in_list(const char *s, const char *const *list, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s, list[i]) == 0) return 1;
    return 0;
}

/* The launch plan (shifter.runtime.plan, its owner; tests/data/contracts/launch_plan.json
 * runs through both): an unknown key, a missing single key or no END make it invalid. */
static int parse_plan(char *buf, size_t len, struct plan *p)
{
    static const char *const single[] = {LAUNCH_PLAN_SINGLE_KEYS}, *const lists[] = {LAUNCH_PLAN_LIST_KEYS};
    int have[LAUNCH_PLAN_SINGLE_KEYS_N] = {0};
    /* count strings */
    size_t count = 0;
    for (size_t i = 0; i < len; i++)
        if (buf[i] == '\0') count++;
    if (len == 0 || count < 4 || buf[len - 1] != '\0') return -1;
    char **s = calloc(count + 1, sizeof(char *));
    if (s == NULL) return -1;
    size_t n = 0;
    for (size_t i = 0; i < len; i += strlen(buf + i) + 1) s[n++] = buf + i;
    if (strcmp(s[0], LAUNCH_PLAN_MAGIC) != 0 || strcmp(s[1], LAUNCH_PLAN_VERSION) != 0) return -1;
    memset(p, 0, sizeof(*p));
    p->cmd = calloc(count, sizeof(char *));
    p->env = calloc(count, sizeof(char *));
    p->userhook = calloc(count, sizeof(char *));
    p->gpudev = calloc(count, sizeof(char *));
    if (!p->cmd || !p->env || !p->userhook || !p->gpudev) return -1;
    int ended = 0;
    for (size_t i = 2; i + 1 < n; i += 2) {
        const char *k = s[i], *v = s[i + 1];
        if (strcmp(k, "END") == 0) { ended = 1; break; }
        for (int j = 0; j < LAUNCH_PLAN_SINGLE_KEYS_N; j++)
            if (strcmp(k, single[j]) == 0) have[j] = 1;
        if (!in_list(k, single, LAUNCH_PLAN_SINGLE_KEYS_N) && !in_list(k, lists, LAUNCH_PLAN_LIST_KEYS_N)) return -1;
        if (strcmp(k, "uid") == 0) p->uid = v;
        else if (strcmp(k, "gid") == 0) p->gid = v;
        else if (strcmp(k, "jobid") == 0) p->jobid = v;
        else if (strcmp(k, "image_type") == 0) p->image_type = v;
        else if (strcmp(k, "image_id") == 0) p->image_id = v;
        else if (strcmp(k, "volumes") == 0) p->volumes = v;
        else if (strcmp(k, "modules") == 0) p->modules = v;
        else if (strcmp(k, "modules_default") == 0) p->modules_default = v;
        else if (strcmp(k, "workdir") == 0) p->workdir = v;
        else if (strcmp(k, "cmd") == 0) p->cmd[p->n_cmd++] = v;
        else if (strcmp(k, "env") == 0) p->env[p->n_env++] = v;
        else if (strcmp(k, "userhook") == 0) p->userhook[p->n_userhook++] = v;
        else if (strcmp(k, "gpudev") == 0) p->gpudev[p->n_gpudev++] = v;
        /* udi, entry: not needed here */
    }
    if (!ended) return -1;
    for (int j = 0; j < LAUNCH_PLAN_SINGLE_KEYS_N; j++)
        if (!have[j]) return -1;
    return is_number(p->uid) && is_number(p->gid) ? 0 : -1;
}

/* Does the caller's request match the prepared UDI? */
static int matches(const struct plan *p, uid_t uid, gid_t gid)
{
    char num[32];
    snprintf(num, sizeof(num), "%u", (unsigned) uid);
    if (strcmp(p->uid, num) != 0) return 0;
    snprintf(num, sizeof(num), "%u", (unsigned) gid);
    if (strcmp(p->gid, num) != 0) return 0;
    const char *job = getenv("SLURM_JOB_ID");
    if (strcmp(p->jobid, job ? job : "") != 0) return 0;
    char spec[PATH_MAX];
    size_t tlen = strlen(p->image_type);
    if (env_image_request(spec, sizeof(spec)) != 1 || strncmp(spec, p->image_type, tlen) != 0 ||
        spec[tlen] != ':' || strcmp(spec + tlen + 1, p->image_id) != 0)
        return 0;
    const char *vol = env2(ENV_VOLUME, ENV_JOB_VOLUME);
    if (strcmp(vol ? vol : "", p->volumes) != 0) return 0;
    const char *mod = env2(ENV_MODULE, ENV_JOB_MODULE);
    if (mod == NULL) return strcmp(p->modules_default, "1") == 0;
    char *norm = normal_modules(mod);
    int same = norm != NULL && strcmp(norm, p->modules) == 0;
    free(norm);
    return same;
}

/* SHIFTER_LAUNCHER_PRINT_REQUEST=1: print what this program takes from the environment,
 * as JSON (shifter.runtime.launcher.launch.env_request's keys; tests/data/contracts/image_request.json runs
 * through both), and run nothing. */
static void json_string(const char *s)
{
    if (s == NULL) {
        fputs("null", stdout);
        return;
    }
    putchar('"');
    for (const unsigned char *c = (const unsigned char *) s; *c; c++) {
        if (*c == '"' || *c == '\\') printf("\\%c", *c);
        else if (*c < 0x20) printf("\\u%04x", *c);
        else putchar(*c);
    }
    putchar('"');
}

static int print_request(void)
{
    char spec[PATH_MAX];
    int found = env_image_request(spec, sizeof(spec));
    const char *mod = env2(ENV_MODULE, ENV_JOB_MODULE);
    char *norm = mod ? normal_modules(mod) : NULL;
    fputs("{\"image\": ", stdout);
    json_string(found == 1 ? spec : NULL);
    fputs(", \"volume\": ", stdout);
    json_string(env2(ENV_VOLUME, ENV_JOB_VOLUME));
    if (mod != NULL && norm == NULL) {
        fputs(", \"error\": \"module\"}\n", stdout);
    } else {
        fputs(", \"modules\": ", stdout);
        json_string(norm);
        fputs("}\n", stdout);
    }
    free(norm);
    return 0;
}
/* The job's own request (what its SLURM_SPANK_SHIFTER_* pin) is what the environment asks. */
static int own_request(void)
{
    char spec[PATH_MAX], job[PATH_MAX];
    const char *type = getenv(ENV_JOB_IMAGETYPE), *tag = getenv(ENV_JOB_IMAGE);
    if (type == NULL || tag == NULL || env_image_request(spec, sizeof(spec)) != 1) return 0;
    snprintf(job, sizeof(job), "%s:%s", type, tag);
    const char *pairs[2][2] = {{ENV_VOLUME, ENV_JOB_VOLUME}, {ENV_MODULE, ENV_JOB_MODULE}};
    for (int i = 0; i < 2; i++) {
        const char *asked = env2(pairs[i][0], pairs[i][1]), *pinned = getenv(pairs[i][1]);
        if ((asked == NULL) != (pinned == NULL) || (asked && strcmp(asked, pinned) != 0)) return 0;
    }
    return strcmp(spec, job) == 0;
}

/* The prolog could not prepare the job's container because of the user's mistake: it
 * recorded the reason (shifter.wlm.prolog.record_error) beside the job's UDI.  A step that
 * asks for the job's own request says it and fails, never quietly building a private
 * container instead. */
static void job_error(const char *mount)
{
    char path[PATH_MAX];
    if (job_udi(mount, path, sizeof(path)) != 0) return;
    char *slash = strrchr(path, '/');
    snprintf(slash, sizeof(path) - (size_t) (slash - path), "/error");
    size_t len = 0;
    char *text = read_file(path, &len, 1);
    if (text == NULL) return;
    if (own_request()) {
        while (len > 0 && text[len - 1] == '\n') text[--len] = '\0';
        fprintf(stderr, "shifter: %s\n", text);
        exit(SHIFTER_EXIT_LAUNCH);
    }
    free(text);
}

/* ------------------------------------------------------------------ GPUs */
/* The step's GPUs, by the rule of shifter.runtime.devices.step_gpus (tests/data/contracts/gpu_steps.json
 * runs through both): SLURM_STEP_GPUS, else SLURM_JOB_GPUS; comma-separated numbers or
 * ranges a-b (1 to 6 digits, spaces around allowed, hi >= lo, hi - lo <= 4096).  Neither
 * set, empty, or malformed: no GPU.  `lo`/`hi` get the ranges; returns their number. */
static int step_gpus(long *lo, long *hi, int max)
{
    const char *v = getenv("SLURM_STEP_GPUS");
    if (v == NULL) v = getenv("SLURM_JOB_GPUS");
    if (v == NULL || v[0] == '\0') return 0;
    int n = 0;
    const char *s = v;
    for (;;) {
        long num[2] = {-1, -1};
        while (isspace((unsigned char) *s)) s++;
        for (int k = 0; k < 2; k++) {
            int digits = 0;
            long x = 0;
            while (*s >= '0' && *s <= '9') {
                if (++digits > 6) return 0;
                x = x * 10 + (*s++ - '0');
            }
            if (digits == 0) return 0;
            num[k] = x;
            if (k == 0 && *s == '-') s++;
            else break;
        }
        while (isspace((unsigned char) *s)) s++;
        long a = num[0], b = num[1] < 0 ? num[0] : num[1];
        if (b < a || b - a > 4096 || n == max) return 0;
        lo[n] = a;
        hi[n] = b;
        n++;
        if (*s == '\0') return n;
        if (*s++ != ',') return 0;
    }
}

/* A per-GPU device file's number: its trailing digits (shifter.runtime.devices.gpu_id); -1
 * when it has none, or more than 6 significant digits (a number no step can be given). */
static long gpu_id(const char *path)
{
    size_t len = strlen(path), i = len;
    while (i > 0 && path[i - 1] >= '0' && path[i - 1] <= '9') i--;
    if (i == len || i == 0 || path[i - 1] == '/' || path[0] != '/') return -1;
    while (i < len - 1 && path[i] == '0') i++;
    if (len - i > 6) return -1;
    return strtol(path + i, NULL, 10);
}

/* Is device file `path` one of the step's GPUs? */
static int visible_gpu(const char *path, const long *lo, const long *hi, int n)
{
    long id = gpu_id(path);
    for (int i = 0; id >= 0 && i < n; i++)
        if (lo[i] <= id && id <= hi[i]) return 1;
    return 0;
}

#define MAX_GPU_RANGES 4096
static long gpu_lo[MAX_GPU_RANGES], gpu_hi[MAX_GPU_RANGES];

/* Once chrooted into a prepared container whose modules have per-GPU device files: a
 * mount namespace of the step's own (the job's user namespace gives the right; its
 * mounts are slaves, nothing goes back), and each device file of a GPU that is not the
 * step's covered by /var/shifter/nodevice (docs/modules.md).  0 ok; else one line. */
static int cover_gpus(const char **dev, int n_dev)
{
    int n = step_gpus(gpu_lo, gpu_hi, MAX_GPU_RANGES), made = 0;
    for (int i = 0; i < n_dev; i++) {
        struct stat st;
        if (visible_gpu(dev[i], gpu_lo, gpu_hi, n) || lstat(dev[i], &st) != 0) continue;
        if (!made) {
            if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) != 0) goto fail;
            made = 1;
        }
        if (mount(GPU_BLANK, dev[i], NULL, MS_BIND, NULL) != 0) goto fail;
    }
    return 0;
fail:
    fprintf(stderr, "shifter: can't limit the container to the step's GPUs: %s\n", strerror(errno));
    return -1;
}

/* SHIFTER_LAUNCHER_PRINT_GPUS="DEV DEV ...": print which of these device files this step
 * covers, as JSON, and run nothing (tests/data/contracts/gpu_steps.json). */
static int print_gpus(const char *devices)
{
    char *copy = strdup(devices), *save = NULL;
    int n = step_gpus(gpu_lo, gpu_hi, MAX_GPU_RANGES), first = 1;
    fputs("{\"covered\": [", stdout);
    for (char *t = strtok_r(copy, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        if (visible_gpu(t, gpu_lo, gpu_hi, n)) continue;
        if (!first) fputs(", ", stdout);
        json_string(t);
        first = 0;
    }
    fputs("]}\n", stdout);
    free(copy);
    return 0;
}

/* ------------------------------------------------------------------ main */
/* <prefix> from this program's own path, <prefix>/bin/shifter: 0, or -1 (said why). */
static int find_prefix(void)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) {
        fprintf(stderr, "shifter: can't find my own path: %s\n", strerror(errno));
        return -1;
    }
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    *slash = '\0';
    slash = strrchr(self, '/');
    if (slash) *slash = '\0';
    snprintf(prefix, sizeof(prefix), "%s", self);
    return 0;
}

/* SHIFTER_LAUNCHER_PRINT_*: print what the tests asked for and run nothing.  The exit
 * status, or -1 when none is asked. */
static int print_only(void)
{
    if (getenv("SHIFTER_LAUNCHER_PRINT_EXIT_CODES") != NULL) {
#define X(name, code) printf("%s=%d\n", #name, SHIFTER_EXIT_##name);
        SHIFTER_EXIT_TABLE
#undef X
        return SHIFTER_EXIT_OK;
    }
    if (getenv("SHIFTER_LAUNCHER_PRINT_REQUEST") != NULL) return print_request();
    if (getenv("SHIFTER_LAUNCHER_PRINT_UDI") != NULL) return print_udi();
    if (getenv("SHIFTER_LAUNCHER_PRINT_GPUS") != NULL) return print_gpus(getenv("SHIFTER_LAUNCHER_PRINT_GPUS"));
    return -1;
}

/* The prepared UDI's launch plan (`len` bytes), its UDI in `udi`; or NULL.  The job's
 * (the prolog made it; if it could not, and the request is the job's own, job_error
 * ends here), else the one setupRoot made at udiMount. */
static char *prepared_plan(char *udi, size_t size, size_t *len)
{
    char mount[PATH_MAX], plan_path[PATH_MAX + 64];
    char *buf = NULL;
    if (udi_mount(mount, sizeof(mount)) != 0) return NULL;
    if (job_udi(mount, udi, size) == 0) {
        snprintf(plan_path, sizeof(plan_path), "%s" PLAN_REL, udi);
        buf = read_file(plan_path, len, 1);
        if (buf == NULL) job_error(mount);
    }
    if (buf == NULL) {
        snprintf(udi, size, "%s", mount);
        snprintf(plan_path, sizeof(plan_path), "%s" PLAN_REL, udi);
        buf = read_file(plan_path, len, 1);
    }
    return buf;
}

/* Into the UDI: its user namespace (setupRoot made it, owned by the caller, so that
 * all of the job's tasks on this node share one: MPI ranks can then ptrace and
 * process_vm_readv each other), else an own one, the caller mapped to themselves (none
 * to be had: Python's turn); root needs none.  Then chroot.  0, or -1 (errno set). */
static int enter_udi(const char *udi, uid_t uid, gid_t gid, int argc, char **argv)
{
    char userns[PATH_MAX + 64];
    snprintf(userns, sizeof(userns), "%s/var/shifter/userns", udi);
    int nsfd = uid != 0 ? open(userns, O_RDONLY | O_CLOEXEC) : -1;
    if (nsfd >= 0 && setns(nsfd, CLONE_NEWUSER) == 0) {
        close(nsfd);
    } else if (uid != 0) {
        if (nsfd >= 0) close(nsfd);
        if (unshare(CLONE_NEWUSER) != 0) to_python(argc, argv);
        if (map_self(uid, gid) != 0) return -1;
    }
    if (chdir(udi) != 0 || chroot(udi) != 0 || chdir("/") != 0) return -1;
    return 0;
}

int main(int argc, char **argv)
{
    if (find_prefix() != 0) return SHIFTER_EXIT_LAUNCH;
    int printed = print_only();
    if (printed >= 0) return printed;
    if (argc >= 2 && argv[1][0] == '-') to_python(argc, argv);
    if (getenv("SHIFTER_NO_FAST_PATH") != NULL) to_python(argc, argv);
    uid_t uid = getuid();
    gid_t gid = getgid();
    if (geteuid() != uid || getegid() != gid) to_python(argc, argv);

    /* the prepared UDI, if it was made for this request; else a private container from
     * its plan (returns only when there is none), else Python */
    char udi[PATH_MAX];
    struct plan p;
    size_t len = 0;
    char *buf = prepared_plan(udi, sizeof(udi), &len);
    if (buf == NULL || parse_plan(buf, len, &p) != 0 || !matches(&p, uid, gid)) {
        replay_private(argc, argv, uid, gid);
        to_python(argc, argv);
    }

    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof(cwd)) == NULL) snprintf(cwd, sizeof(cwd), "/");
    if (enter_udi(udi, uid, gid, argc, argv) != 0) {
        fprintf(stderr, "shifter: can't enter the container at %s: %s\n", udi, strerror(errno));
        return SHIFTER_EXIT_LAUNCH;
    }
    if (cover_gpus(p.gpudev, p.n_gpudev) != 0) return SHIFTER_EXIT_LAUNCH;

    p.cmd[p.n_cmd] = NULL;
    struct entry e = {cwd, p.env, p.n_env, p.userhook, p.n_userhook, p.cmd, p.n_cmd};
    return enter_container(&e, argc, argv);
}
