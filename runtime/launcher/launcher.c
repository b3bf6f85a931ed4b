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
 * (replay.c, docs/private-plans.md).
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

#include "replay.h"
#include "shifter_contracts.h" /* the contracts' names, written by the build from their Python owners */

#define PLAN_REL "/" LAUNCH_PLAN_RELPATH
#define GPU_BLANK "/var/shifter/nodevice" /* shifter.runtime.devices.BLANK */
#define PLAN_MAX (1 << 20)

extern char **environ;

char prefix[PATH_MAX];

/* ------------------------------------------------------------------ fallback */
void to_python(int argc, char **argv)
{
    char python[PATH_MAX + 32];
    snprintf(python, sizeof(python), "%s/bin/python", prefix);
    char **args = calloc((size_t) argc + 5, sizeof(char *));
    if (args == NULL) {
        fprintf(stderr, "shifter: out of memory\n");
        exit(SHIFTER_EXIT_LAUNCH);
    }
    int n = 0;
    args[n++] = python;
    args[n++] = "-I";
    args[n++] = "-m";
    args[n++] = "shifter.runtime.launcher.launch";
    for (int i = 1; i < argc; i++) args[n++] = argv[i];
    args[n] = NULL;
    execv(python, args);
    fprintf(stderr, "shifter: can't start %s: %s\n", python, strerror(errno));
    exit(SHIFTER_EXIT_LAUNCH);
}

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

static const char *env2(const char *a, const char *b)
{
    const char *v = getenv(a);
    if (v == NULL) v = getenv(b);
    return v;
}

static int is_hex64(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f'))) return 0;
    return n == 64;
}

/* The image the environment requests, as a descriptor: the rule of
 * shifter.runtime.envrequest.env_image_spec, its owner (docs/launcher.md "Which image";
 * both are checked against tests/data/contracts/image_request.json).
 *   1. SHIFTER_IMAGE (non-empty): "SHIFTER_IMAGETYPE:SHIFTER_IMAGE" when the type is set
 *      too (but a type id with an image that is not 64 hex digits is no pair), else
 *      SHIFTER_IMAGE itself (a descriptor: id:<hex>, docker:repo:tag, ...);
 *   2. else SLURM_SPANK_SHIFTER_IMAGE likewise with SLURM_SPANK_SHIFTER_IMAGETYPE;
 *   3. else the first non-empty fallback: SHIFTER_IMAGEREQUEST (Shifter's request
 *      variable), SLURM_SPANK_SHIFTER_IMAGEREQUEST, the old SHIFTER_IMAGE_REQUEST names,
 *      old Shifter's SHIFTER (and SLURM_SPANK_SHIFTER).
 * 1 and the descriptor in `out`; 0 when there is none; -1 when it does not fit. */
int env_image_request(char *out, size_t outlen)
{
    static const char *const pairs[] = {ENV_IMAGE_PAIRS}; /* image, type; image, type */
    static const char *const fallbacks[] = {ENV_FALLBACK_IMAGE_VARS};
    int n = -1;
    for (int i = 0; i + 1 < ENV_IMAGE_PAIRS_N && n < 0; i += 2) {
        const char *tag = getenv(pairs[i]);
        if (tag == NULL || tag[0] == '\0') continue;
        const char *type = getenv(pairs[i + 1]);
        if (type != NULL && type[0] != '\0' && !(strcmp(type, "id") == 0 && !is_hex64(tag)))
            n = snprintf(out, outlen, "%s:%s", type, tag);
        else n = snprintf(out, outlen, "%s", tag);
    }
    for (size_t i = 0; n < 0 && i < ENV_FALLBACK_IMAGE_VARS_N; i++) {
        const char *v = getenv(fallbacks[i]);
        if (v != NULL && v[0] != '\0') n = snprintf(out, outlen, "%s", v);
    }
    if (n < 0) return 0;
    return (size_t) n < outlen ? 1 : -1;
}

static int cmpstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *) a, *(const char *const *) b);
}

/* The module request in canonical form, as shifter.runtime.modules.normalize: "b,a,,b"
 * -> "a,b" (sorted, unique; ',' and ' ' separate); "none" -> "".  NULL when "none" is
 * combined with anything (refused, as in Shifter: Python says why) or on overflow. */
static char *normal_modules(const char *spec)
{
    char *copy = strdup(spec), *save = NULL;
    const char *items[256];
    int n = 0, none = 0;
    if (copy == NULL) return NULL;
    for (char *t = strtok_r(copy, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        if (n == 256) {
            free(copy);
            return NULL;
        }
        if (strcmp(t, "none") == 0) none = 1;
        items[n++] = t;
    }
    if (none && n > 1) {
        free(copy);
        return NULL;
    }
    if (none) n = 0;
    qsort(items, (size_t) n, sizeof(char *), cmpstr);
    char *out = calloc(strlen(spec) + 1, 1);
    for (int i = 0; out && i < n; i++) {
        if (i > 0 && strcmp(items[i], items[i - 1]) == 0) continue;
        if (out[0]) strcat(out, ",");
        strcat(out, items[i]);
    }
    free(copy);
    return out;
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

static int write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t len = (ssize_t) strlen(text);
    int ok = write(fd, text, (size_t) len) == len;
    close(fd);
    return ok ? 0 : -1;
}

int map_self(uid_t uid, gid_t gid)
{
    char map[64];
    if (write_file("/proc/self/setgroups", "deny") != 0) return -1;
    snprintf(map, sizeof(map), "%u %u 1", (unsigned) uid, (unsigned) uid);
    if (write_file("/proc/self/uid_map", map) != 0) return -1;
    snprintf(map, sizeof(map), "%u %u 1", (unsigned) gid, (unsigned) gid);
    return write_file("/proc/self/gid_map", map);
}

/* ------------------------------------------------------------------ environment */
static char **env_copy;
static int env_n, env_cap;

static int env_find(const char *name, size_t len)
{
    for (int i = 0; i < env_n; i++)
        if (strncmp(env_copy[i], name, len) == 0 && env_copy[i][len] == '=') return i;
    return -1;
}

static void env_put(const char *name, size_t len, const char *value)
{
    size_t size = len + strlen(value) + 2;
    char *entry = malloc(size);
    snprintf(entry, size, "%.*s=%s", (int) len, name, value);
    int i = env_find(name, len);
    if (i >= 0) {
        env_copy[i] = entry;
        return;
    }
    if (env_n + 2 > env_cap) {
        env_cap = env_cap * 2 + 16;
        env_copy = realloc(env_copy, (size_t) env_cap * sizeof(char *));
    }
    env_copy[env_n++] = entry;
    env_copy[env_n] = NULL;
}

static void env_apply(const char *op)
{
    char kind = op[0];
    const char *body = op + 1;
    if (kind == '-') {
        int i = env_find(body, strlen(body));
        if (i >= 0) {
            env_copy[i] = env_copy[--env_n];
            env_copy[env_n] = NULL;
        }
        return;
    }
    const char *eq = strchr(body, '=');
    if (eq == NULL) return;
    size_t len = (size_t) (eq - body);
    const char *value = eq + 1;
    int i = env_find(body, len);
    const char *old = (i >= 0) ? env_copy[i] + len + 1 : NULL;
    if (kind == '=' || old == NULL || old[0] == '\0') {
        env_put(body, len, value);
    } else {
        size_t size = strlen(old) + strlen(value) + 2;
        char *joined = malloc(size);
        if (kind == '<') snprintf(joined, size, "%s:%s", value, old);
        else snprintf(joined, size, "%s:%s", old, value);
        env_put(body, len, joined);
    }
}

/* ------------------------------------------------------------------ entering */
/* The last steps of every way in (the fast path and both kinds of replay), once
 * chrooted into the container: no_new_privs, the caller's working directory, the
 * environment (the caller's, then the plan's rules, SHIFTER_RUNTIME=1), the modules'
 * userhooks, exec of the command (argv[1..], else the image's CMD, else /bin/sh).
 * Returns only on failure, the exit status (one line on stderr). */
int enter_container(const struct entry *e, int argc, char **argv)
{
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        fprintf(stderr, "shifter: can't enter the container: no_new_privs: %s\n", strerror(errno));
        return SHIFTER_EXIT_LAUNCH;
    }
    if (chdir(e->cwd) != 0) {
        fprintf(stderr, "shifter: %s does not exist in the container, starting in /\n", e->cwd);
        if (chdir("/") != 0) {
            fprintf(stderr, "shifter: can't enter the container: /: %s\n", strerror(errno));
            return SHIFTER_EXIT_LAUNCH;
        }
    }

    /* environment: the caller's, then the plan's rules */
    for (char **v = environ; *v; v++) env_n++;
    env_cap = env_n + 16;
    env_copy = calloc((size_t) env_cap, sizeof(char *));
    for (int i = 0; i < env_n; i++) env_copy[i] = environ[i];
    for (int i = 0; i < e->n_env; i++) env_apply(e->env[i]);
    env_put("SHIFTER_RUNTIME", 15, "1");
    environ = env_copy; /* execvp searches the container's PATH */

    for (int i = 0; i < e->n_userhook; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            execl("/bin/sh", "sh", e->userhook[i], (char *) NULL);
            _exit(SHIFTER_EXIT_NOT_FOUND);
        }
        int status = 0;
        if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "shifter: module userhook %s failed\n", e->userhook[i]);
            return SHIFTER_EXIT_LAUNCH;
        }
    }

    char **cmd = argv + 1;
    char *shell[] = {"/bin/sh", NULL};
    if (argc < 2) cmd = e->n_cmd > 0 ? (char **) e->cmd : shell; /* e->cmd[n_cmd] is NULL */
    execvp(cmd[0], cmd);
    int err = errno;
    fprintf(stderr, "shifter: can't run %s: %s\n", cmd[0], strerror(err));
    return (err == ENOENT || err == ENOTDIR) ? SHIFTER_EXIT_NOT_FOUND : SHIFTER_EXIT_NOT_EXECUTABLE;
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
int main(int argc, char **argv)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) {
        fprintf(stderr, "shifter: can't find my own path: %s\n", strerror(errno));
        return SHIFTER_EXIT_LAUNCH;
    }
    self[n] = '\0';
    /* <prefix>/bin/shifter */
    char *slash = strrchr(self, '/');
    *slash = '\0';
    slash = strrchr(self, '/');
    if (slash) *slash = '\0';
    snprintf(prefix, sizeof(prefix), "%s", self);

    if (getenv("SHIFTER_LAUNCHER_PRINT_EXIT_CODES") != NULL) {
#define X(name, code) printf("%s=%d\n", #name, SHIFTER_EXIT_##name);
        SHIFTER_EXIT_TABLE
#undef X
        return SHIFTER_EXIT_OK;
    }
    if (getenv("SHIFTER_LAUNCHER_PRINT_REQUEST") != NULL) return print_request();
    if (getenv("SHIFTER_LAUNCHER_PRINT_UDI") != NULL) return print_udi();
    if (getenv("SHIFTER_LAUNCHER_PRINT_GPUS") != NULL) return print_gpus(getenv("SHIFTER_LAUNCHER_PRINT_GPUS"));
    if (argc >= 2 && argv[1][0] == '-') to_python(argc, argv);
    if (getenv("SHIFTER_NO_FAST_PATH") != NULL) to_python(argc, argv);
    uid_t uid = getuid();
    gid_t gid = getgid();
    if (geteuid() != uid || getegid() != gid) to_python(argc, argv);

    /* the prepared UDI, if it was made for this request: the job's (the prolog made it),
     * else the one setupRoot made at udiMount; else a private container from its plan
     * (returns only when there is none), else Python */
    char mount[PATH_MAX], udi[PATH_MAX], plan_path[PATH_MAX + 64];
    struct plan p;
    size_t len = 0;
    char *buf = NULL;
    if (udi_mount(mount, sizeof(mount)) == 0) {
        if (job_udi(mount, udi, sizeof(udi)) == 0) {
            snprintf(plan_path, sizeof(plan_path), "%s" PLAN_REL, udi);
            buf = read_file(plan_path, &len, 1);
            if (buf == NULL) job_error(mount);
        }
        if (buf == NULL) {
            snprintf(udi, sizeof(udi), "%s", mount);
            snprintf(plan_path, sizeof(plan_path), "%s" PLAN_REL, udi);
            buf = read_file(plan_path, &len, 1);
        }
    }
    if (buf == NULL || parse_plan(buf, len, &p) != 0 || !matches(&p, uid, gid)) {
        replay_private(argc, argv, uid, gid);
        to_python(argc, argv);
    }

    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof(cwd)) == NULL) snprintf(cwd, sizeof(cwd), "/");

    /* enter: the UDI's user namespace (setupRoot made it, owned by the caller, so that
     * all of the job's tasks on this node share one: MPI ranks can then ptrace and
     * process_vm_readv each other); else an own one, the caller mapped to themselves.
     * Root needs none. */
    char userns[PATH_MAX + 64];
    snprintf(userns, sizeof(userns), "%s/var/shifter/userns", udi);
    int nsfd = uid != 0 ? open(userns, O_RDONLY | O_CLOEXEC) : -1;
    if (nsfd >= 0 && setns(nsfd, CLONE_NEWUSER) == 0) {
        close(nsfd);
    } else if (uid != 0) {
        if (nsfd >= 0) close(nsfd);
        if (unshare(CLONE_NEWUSER) != 0) to_python(argc, argv);
        if (map_self(uid, gid) != 0) goto fail;
    }
    if (chdir(udi) != 0 || chroot(udi) != 0 || chdir("/") != 0) goto fail;
    if (cover_gpus(p.gpudev, p.n_gpudev) != 0) return SHIFTER_EXIT_LAUNCH;

    p.cmd[p.n_cmd] = NULL;
    struct entry e = {cwd, p.env, p.n_env, p.userhook, p.n_userhook, p.cmd, p.n_cmd};
    return enter_container(&e, argc, argv);

fail:
    fprintf(stderr, "shifter: can't enter the container at %s: %s\n", udi, strerror(errno));
    return SHIFTER_EXIT_LAUNCH;
}
