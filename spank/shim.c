/*
 * shifter SPANK plugin: the C shim that plugstack.conf loads.
 *
 * This object is deliberately NOT linked to libpython.  It
 *   - exports the SPANK symbols and registers shifter's options itself,
 *   - parses the plugstack.conf arguments itself (unknown key = error naming it),
 *   - stores the option values,
 * and only when a shifter option is present (in the prolog/epilog: only when the job
 * carries one) dlopens the cffi-embedded Python module that sits beside it
 * (_shifter_spank_py.so), starts Python from the install prefix's venv and hands the
 * hook to the Python dispatcher (shifter.spank.dispatch).
 *
 * A job that uses no shifter option never maps libpython.  Neither does a step that
 * inherits its job's validated, pinned request (route_job_request), nor a submission that
 * asks for nothing but `--image=id:<id>` of an image the user can read (route_image_id):
 * the shim handles those itself.
 *
 * Return convention of the Python entry point: 1 = success, anything else = failure.
 * cffi returns 0 when its own Python init fails, so 0 must never mean success here.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <slurm/spank.h>

#include "udiconf_key.h"

SPANK_PLUGIN(shifter, 1)

#define PLUGIN "shifter"
#define PYMOD_NAME "_shifter_spank_py.so"

/* ------------------------------------------------------------------------ */
/* stored option values                                                      */

enum { OPT_IMAGE = 1, OPT_VOLUME, OPT_MODULE, OPT_CCM };

static char *opt_image = NULL;   /* last --image value (validated in Python) */
static char *opt_volume = NULL;  /* every --volume value, joined with ';' */
static char *opt_module = NULL;  /* last --module value */
static int opt_image_set = 0, opt_volume_set = 0, opt_module_set = 0, opt_ccm = 0;

static int set_string(char **dst, const char *value)
{
    char *copy = strdup(value ? value : "");
    if (copy == NULL) return -1;
    free(*dst);
    *dst = copy;
    return 0;
}

static int append_volume(const char *value)
{
    const char *v = value ? value : "";
    if (opt_volume == NULL || !opt_volume_set) return set_string(&opt_volume, v);
    size_t n = strlen(opt_volume) + strlen(v) + 2;
    char *joined = malloc(n);
    if (joined == NULL) return -1;
    snprintf(joined, n, "%s;%s", opt_volume, v);
    free(opt_volume);
    opt_volume = joined;
    return 0;
}

static int opt_cb(int val, const char *optarg, int remote)
{
    (void) remote;
    switch (val) {
    case OPT_IMAGE:
        opt_image_set = 1;
        return set_string(&opt_image, optarg);
    case OPT_VOLUME: {
        int rc = append_volume(optarg);
        opt_volume_set = 1;
        return rc;
    }
    case OPT_MODULE:
        opt_module_set = 1;
        return set_string(&opt_module, optarg);
    case OPT_CCM:
        opt_ccm = 1;
        return 0;
    }
    return -1;
}

/* The option tables stay alive for the life of the process: spank_option_getopt needs
 * them in the prolog/epilog context too, where slurm_spank_init is not called. */
static struct spank_option options[] = {
    {"image", "image", "shifter image to use (docker:repo:tag, repo:tag, id:<hex>)", 1, OPT_IMAGE,
     (spank_opt_cb_f) opt_cb},
    {"volume", "volume", "shifter volume bindings (src:dst[:flags][;...])", 1, OPT_VOLUME,
     (spank_opt_cb_f) opt_cb},
    {"module", "module", "shifter modules to load (comma separated, 'none' for none)", 1,
     OPT_MODULE, (spank_opt_cb_f) opt_cb},
    {"ccm", NULL, "ccm emulation mode", 0, OPT_CCM, (spank_opt_cb_f) opt_cb},
    SPANK_OPTIONS_TABLE_END
};

/* long_options=1: the same options also as --shifter-image, --shifter-volume, ... for
 * sites where another plugin already owns one of the short names. */
static struct spank_option long_options[] = {
    {"shifter-image", "image", "shifter image to use (alias of --image)", 1, OPT_IMAGE,
     (spank_opt_cb_f) opt_cb},
    {"shifter-volume", "volume", "shifter volume bindings (alias of --volume)", 1, OPT_VOLUME,
     (spank_opt_cb_f) opt_cb},
    {"shifter-module", "module", "shifter modules (alias of --module)", 1, OPT_MODULE,
     (spank_opt_cb_f) opt_cb},
    {"shifter-ccm", NULL, "ccm emulation mode (alias of --ccm)", 0, OPT_CCM,
     (spank_opt_cb_f) opt_cb},
    SPANK_OPTIONS_TABLE_END
};

/* ------------------------------------------------------------------------ */
/* plugstack.conf arguments                                                  */

static const char *const known_keys[] = {
    "shifter_config", "enable_sshd", "enable_ccm", "memory_cgroup",
    "extern_cgroup",  "extern_setup", "long_options", NULL
};
static const char *const bool_keys[] = {
    "enable_sshd", "enable_ccm", "extern_cgroup", "long_options", NULL
};

static int enable_ccm = 0, enable_sshd = 0, use_long_options = 0;
static char *shifter_config = NULL; /* plugstack shifter_config=, if given */

static int in_list(const char *key, size_t keylen, const char *const *list)
{
    for (int i = 0; list[i] != NULL; i++)
        if (strlen(list[i]) == keylen && strncmp(list[i], key, keylen) == 0) return 1;
    return 0;
}

/* Validates every plugstack argument; 0 = ok, -1 = error already reported. */
static int parse_plugstack(int ac, char **av)
{
    enable_ccm = 0;
    enable_sshd = 0;
    use_long_options = 0;
    free(shifter_config);
    shifter_config = NULL;
    for (int i = 0; i < ac; i++) {
        const char *arg = av[i];
        const char *eq = strchr(arg, '=');
        if (eq == NULL || eq == arg) {
            slurm_error(PLUGIN ": plugstack.conf: argument '%s' is not key=value "
                        "(known keys: shifter_config, enable_sshd, enable_ccm, memory_cgroup, "
                        "extern_cgroup, extern_setup, long_options)", arg);
            return -1;
        }
        size_t keylen = (size_t) (eq - arg);
        if (!in_list(arg, keylen, known_keys)) {
            slurm_error(PLUGIN ": plugstack.conf: unknown argument '%.*s' in '%s' "
                        "(known keys: shifter_config, enable_sshd, enable_ccm, memory_cgroup, "
                        "extern_cgroup, extern_setup, long_options)", (int) keylen, arg, arg);
            return -1;
        }
        const char *value = eq + 1;
        if (in_list(arg, keylen, bool_keys)) {
            if (strcmp(value, "0") != 0 && strcmp(value, "1") != 0) {
                slurm_error(PLUGIN ": plugstack.conf: '%.*s' must be 0 or 1, not '%s'",
                            (int) keylen, arg, value);
                return -1;
            }
            if (strncmp(arg, "enable_ccm", keylen) == 0) enable_ccm = value[0] == '1';
            if (strncmp(arg, "enable_sshd", keylen) == 0) enable_sshd = value[0] == '1';
            if (strncmp(arg, "long_options", keylen) == 0) use_long_options = value[0] == '1';
        } else if (value[0] == '\0') {
            slurm_error(PLUGIN ": plugstack.conf: '%.*s' needs a value", (int) keylen, arg);
            return -1;
        } else if (keylen == 14 && strncmp(arg, "shifter_config", keylen) == 0) {
            free(shifter_config);
            shifter_config = strdup(value);
        }
    }
    return 0;
}

static int register_table(spank_t sp, struct spank_option *table)
{
    for (int i = 0; table[i].name != NULL; i++) {
        if (table[i].val == OPT_CCM && !enable_ccm) continue;
        if (spank_option_register(sp, &table[i]) != ESPANK_SUCCESS) {
            slurm_error(PLUGIN ": cannot register option --%s", table[i].name);
            return -1;
        }
    }
    return 0;
}

/* In the prolog/epilog the option callbacks are not run: fetch the job's values. */
static void fetch_job_options(spank_t sp, struct spank_option *table)
{
    for (int i = 0; table[i].name != NULL; i++) {
        char *optarg = NULL;
        if (spank_option_getopt(sp, &table[i], &optarg) == ESPANK_SUCCESS)
            opt_cb(table[i].val, optarg, 1);
    }
}

static int have_option(void)
{
    return opt_image_set || opt_volume_set || opt_module_set || opt_ccm;
}

/* ------------------------------------------------------------------------ */
/* loading Python on demand                                                  */

typedef int (*py_boot_f)(const char *python_executable, char *err, int errlen);
typedef int (*py_hook_f)(const char *hook, void *sp, int ctx, int ac, char **av, int nopt,
                         const char **names, const char **values);

static py_hook_f py_hook = NULL;
static int py_failed = 0;

/* Directory holding this shim (symlinks resolved). */
static int shim_dir(char *out, size_t len)
{
    Dl_info info;
    char real[PATH_MAX];
    if (dladdr((void *) &shim_dir, &info) == 0 || info.dli_fname == NULL) return -1;
    if (realpath(info.dli_fname, real) == NULL) return -1;
    char *slash = strrchr(real, '/');
    if (slash == NULL) return -1;
    *slash = '\0';
    if ((size_t) snprintf(out, len, "%s", real) >= len) return -1;
    return 0;
}

static int load_python(void)
{
    char dir[PATH_MAX], path[PATH_MAX + 64], exe[PATH_MAX + 64], err[512] = "";
    struct stat st;

    if (py_hook != NULL) return 0;
    if (py_failed) return -1;
    py_failed = 1; /* until proven otherwise */

    if (shim_dir(dir, sizeof(dir)) != 0) {
        slurm_error(PLUGIN ": can't locate the plugin's own directory");
        return -1;
    }
    /* <prefix>/lib/shifter/shifter_slurm.so -> python at <prefix>/bin/python */
    snprintf(path, sizeof(path), "%s/" PYMOD_NAME, dir);
    snprintf(exe, sizeof(exe), "%s/../../bin/python", dir);
    char exe_real[PATH_MAX + 64];
    snprintf(exe_real, sizeof(exe_real), "%s/../../pyvenv.cfg", dir);
    if (stat(exe_real, &st) != 0) {
        slurm_error(PLUGIN ": can't start Python: %s is missing (hint: install shifter "
                    "into a venv and point plugstack.conf at <prefix>/lib/shifter/)", exe_real);
        return -1;
    }
    void *h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
    if (h == NULL) {
        slurm_error(PLUGIN ": can't load %s: %s", path, dlerror());
        return -1;
    }
    py_boot_f boot = (py_boot_f) dlsym(h, "shifter_py_boot");
    py_hook_f hook = (py_hook_f) dlsym(h, "shifter_py_hook");
    if (boot == NULL || hook == NULL) {
        slurm_error(PLUGIN ": %s lacks its entry points (rebuild shifter)", path);
        return -1;
    }
    if (boot(exe, err, (int) sizeof(err)) != 0) {
        slurm_error(PLUGIN ": can't start Python (%s): %s", exe, err);
        return -1;
    }
    /* A first call proves the embedded init code ran: it must answer 1. */
    if (hook("ping", NULL, 0, 0, NULL, 0, NULL, NULL) != 1) {
        slurm_error(PLUGIN ": the embedded Python module failed to initialise "
                    "(see the traceback above in this log)");
        return -1;
    }
    py_hook = hook;
    py_failed = 0;
    return 0;
}

static int call_python(const char *name, spank_t sp, int ac, char **av)
{
    const char *names[4], *values[4];
    int n = 0;
    if (opt_image_set) { names[n] = "image"; values[n++] = opt_image ? opt_image : ""; }
    if (opt_volume_set) { names[n] = "volume"; values[n++] = opt_volume ? opt_volume : ""; }
    if (opt_module_set) { names[n] = "module"; values[n++] = opt_module ? opt_module : ""; }
    if (opt_ccm) { names[n] = "ccm"; values[n++] = "1"; }

    if (load_python() != 0) return -1;
    int rc = py_hook(name, (void *) sp, (int) spank_context(), ac, av, n, names, values);
    return rc == 1 ? 0 : -1;
}

/* Is this process (or, in the prolog/epilog, this job) using shifter at all? */
static int active(spank_t sp)
{
    static int fetched = 0;
    spank_context_t ctx = spank_context();
    if (ctx == S_CTX_SLURMD || ctx == S_CTX_ERROR) return 0;
    /* slurmstepd and the prolog/epilog: ask Slurm for the job's option values (the
     * callbacks are not reliably run there), once and before any Python. */
    if ((ctx == S_CTX_JOB_SCRIPT || ctx == S_CTX_REMOTE) && !fetched && !have_option()) {
        fetched = 1;
        fetch_job_options(sp, options);
        if (use_long_options) fetch_job_options(sp, long_options);
    }
    if (ctx == S_CTX_JOB_SCRIPT) {
        const char *img = getenv("SPANK_SHIFTER_IMAGE");
        return have_option() || (img != NULL && img[0] != '\0');
    }
    return have_option();
}

/* ------------------------------------------------------------------------ */
/* requests the shim handles without Python                                  */
/*
 * The contract (Python's side: shifter.spank.request; vectors both follow:
 * tests/data/shim_route.json, run through this compiled shim and through Python by
 * tests/unit/test_shim_route.py):
 *
 *  - the job's request (srun inside an allocation, SLURM_JOB_ID set): every shifter
 *    option of the step is byte-identical to what the job carries -- --image is
 *    "id:" SLURM_SPANK_SHIFTER_IMAGE (SLURM_SPANK_SHIFTER_IMAGETYPE=id), --volume
 *    SLURM_SPANK_SHIFTER_VOLUME, --module SLURM_SPANK_SHIFTER_MODULE, --ccm
 *    SLURM_SPANK_SHIFTER_CCM=1 -- and the step has an option exactly where the job has a
 *    value.  Submission rewrote the job's inherited options to that text, so a step that
 *    only inherits them matches.  It was validated at submission, as this user: the
 *    step's tasks get the request (SHIFTER_IMAGE, SHIFTER_IMAGETYPE, SHIFTER_IMAGEREQUEST
 *    = the job's, SHIFTER_VOLUME, SHIFTER_MODULE, SHIFTER_CCM) and nothing is checked again.
 *  - a submission (sbatch, salloc, an srun creating its allocation) whose only shifter
 *    option is --image=id:<64 lowercase hex>, whose udiRoot.conf gives imagePath
 *    (udiconf_key.h), and whose <imagePath>/<id>.meta and .squashfs this process (the
 *    user) can open: image files follow the image's ACL on disk, so opening them is the
 *    access check.  Any failure is Python's to decide and word.
 *
 * Anything else loads Python.
 */

#define ID_HEX 64

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return (v != NULL && v[0] != '\0') ? v : NULL;
}

static int is_image_id(const char *s)
{
    size_t n = 0;
    for (; s[n] != '\0'; n++)
        if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f'))) return 0;
    return n == ID_HEX;
}

/* The step has the option exactly when the job has the value, and then the same bytes. */
static int same_as_job(int set, const char *value, const char *job_name)
{
    const char *job = getenv(job_name);
    if (!set) return job == NULL;
    return job != NULL && strcmp(value ? value : "", job) == 0;
}

struct request_env {
    const char *names[6], *values[6];
    int n;
};

static void add_env(struct request_env *r, const char *name, const char *value)
{
    r->names[r->n] = name;
    r->values[r->n++] = value;
}

/* Hands the request to the job (job-control environment; `required`: failing to is an
 * error) and, in srun, to its tasks (srun's own environment). */
static int hand_over(spank_t sp, const struct request_env *r, int required, int to_tasks)
{
    for (int i = 0; i < r->n; i++) {
        if (spank_job_control_setenv(sp, r->names[i], r->values[i], 1) != ESPANK_SUCCESS && required) {
            slurm_error(PLUGIN ": can't hand %s to the job: spank_job_control_setenv failed",
                        r->names[i]);
            return -1;
        }
    }
    for (int i = 0; to_tasks && i < r->n; i++) {
        if (setenv(r->names[i], r->values[i], 1) != 0) {
            slurm_error(PLUGIN ": can't hand %s to the step's tasks: %s", r->names[i],
                        strerror(errno));
            return -1;
        }
    }
    return 0;
}

/* 1 = handled, 0 = ask Python, -1 = error reported. */
static int route_job_request(spank_t sp)
{
    const char *type = env_nonempty("SLURM_SPANK_SHIFTER_IMAGETYPE");
    const char *id = env_nonempty("SLURM_SPANK_SHIFTER_IMAGE");
    if (!opt_image_set || opt_image == NULL || type == NULL || id == NULL) return 0;
    if (strcmp(type, "id") != 0 || !is_image_id(id)) return 0;
    if (strncmp(opt_image, "id:", 3) != 0 || strcmp(opt_image + 3, id) != 0) return 0;
    if (!same_as_job(opt_volume_set, opt_volume, "SLURM_SPANK_SHIFTER_VOLUME")) return 0;
    if (!same_as_job(opt_module_set, opt_module, "SLURM_SPANK_SHIFTER_MODULE")) return 0;
    const char *ccm = getenv("SLURM_SPANK_SHIFTER_CCM");
    if (opt_ccm != (ccm != NULL && strcmp(ccm, "1") == 0)) return 0;

    const char *request = env_nonempty("SLURM_SPANK_SHIFTER_IMAGEREQUEST");
    if (request == NULL) request = env_nonempty("SLURM_SPANK_SHIFTER_IMAGE_REQUEST");
    struct request_env r = {.n = 0};
    add_env(&r, "SHIFTER_IMAGE", id);
    add_env(&r, "SHIFTER_IMAGETYPE", "id");
    add_env(&r, "SHIFTER_IMAGEREQUEST", request ? request : opt_image);
    if (opt_volume_set) add_env(&r, "SHIFTER_VOLUME", opt_volume ? opt_volume : "");
    if (opt_module_set) add_env(&r, "SHIFTER_MODULE", opt_module ? opt_module : "");
    if (opt_ccm) add_env(&r, "SHIFTER_CCM", "1");
    if (hand_over(sp, &r, 0, 1) != 0) return -1;
    slurm_debug(PLUGIN ": the step uses its job's request (image id:%s)", id);
    return 1;
}

/* udiRoot.conf as Python finds it (shifter.paths.config_path): the plugstack argument,
 * else SHIFTER_CONFIG, else <prefix>/etc/udiRoot.conf. */
static int config_path(char *out, size_t len)
{
    const char *path = shifter_config;
    if (path == NULL || path[0] == '\0') path = env_nonempty("SHIFTER_CONFIG");
    if (path != NULL) return (size_t) snprintf(out, len, "%s", path) < len ? 0 : -1;
    char dir[PATH_MAX];
    if (shim_dir(dir, sizeof(dir)) != 0) return -1;
    return (size_t) snprintf(out, len, "%s/../../etc/udiRoot.conf", dir) < len ? 0 : -1;
}

static int can_open(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return 0;
    close(fd);
    return 1;
}

/* With enable_sshd=1 a submission needs the user's container key pair
 * (~/.udiRoot/id_rsa.key, docs/sshd.md): when it is missing, Python makes it.  Root's
 * jobs get no sshd.  1 = present (or not needed), 0 = ask Python. */
static int have_ssh_key(void)
{
    if (!enable_sshd || getuid() == 0) return 1;
    struct passwd *pw = getpwuid(getuid());
    if (pw == NULL || pw->pw_dir == NULL) return 0;
    char path[PATH_MAX];
    if ((size_t) snprintf(path, sizeof(path), "%s/.udiRoot/id_rsa.key", pw->pw_dir) >= sizeof(path)) return 0;
    return access(path, R_OK) == 0;
}

/* 1 = handled, 0 = ask Python, -1 = error reported. */
static int route_image_id(spank_t sp, int to_tasks)
{
    if (!opt_image_set || opt_image == NULL || opt_volume_set || opt_module_set || opt_ccm) return 0;
    if (!have_ssh_key()) return 0;
    if (strncmp(opt_image, "id:", 3) != 0 || !is_image_id(opt_image + 3)) return 0;
    const char *id = opt_image + 3;
    char conf[PATH_MAX], images[PATH_MAX], path[PATH_MAX + 2 * ID_HEX];
    if (config_path(conf, sizeof(conf)) != 0) return 0;
    if (udiconf_read_image_path(conf, images, sizeof(images)) != 0) return 0;
    if ((size_t) snprintf(path, sizeof(path), "%s/%s.meta", images, id) >= sizeof(path)) return 0;
    if (!can_open(path)) return 0;
    snprintf(path, sizeof(path), "%s/%s.squashfs", images, id);
    if (!can_open(path)) return 0;

    struct request_env r = {.n = 0};
    add_env(&r, "SHIFTER_IMAGE", id);
    add_env(&r, "SHIFTER_IMAGETYPE", "id");
    add_env(&r, "SHIFTER_IMAGEREQUEST", opt_image);
    if (hand_over(sp, &r, 1, to_tasks) != 0) return -1;
    slurm_debug(PLUGIN ": image id:%s is readable: no Python needed", id);
    return 1;
}

/* init_post_opt in sbatch/salloc/srun: 1 = handled here, 0 = ask Python, -1 = error. */
static int route_without_python(spank_t sp)
{
    spank_context_t ctx = spank_context();
    int in_allocation = env_nonempty("SLURM_JOB_ID") != NULL;
    if (ctx == S_CTX_LOCAL && in_allocation) return route_job_request(sp);
    if (ctx == S_CTX_ALLOCATOR) return route_image_id(sp, 0);
    if (ctx == S_CTX_LOCAL) return route_image_id(sp, 1);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* SPANK entry points                                                        */

int slurm_spank_init(spank_t sp, int ac, char **av)
{
    if (parse_plugstack(ac, av) != 0) return -1;
    spank_context_t ctx = spank_context();
    if (ctx == S_CTX_LOCAL || ctx == S_CTX_REMOTE || ctx == S_CTX_ALLOCATOR) {
        if (register_table(sp, options) != 0) return -1;
        if (use_long_options && register_table(sp, long_options) != 0) return -1;
    }
    return 0;
}

/* Python is started only where a context module has work: submission (allocator and
 * local init_post_opt) and the job's prolog/epilog.  Hooks of the remote context
 * (slurmstepd) have none yet, so steps never pay for an interpreter; when one gains
 * work, add its context to has_work(). */
static int has_work(const char *hook)
{
    spank_context_t ctx = spank_context();
    if (strcmp(hook, "init_post_opt") == 0) return ctx == S_CTX_ALLOCATOR || ctx == S_CTX_LOCAL;
    return 0;
}

#define FORWARD(hook)                                                   \
    int slurm_spank_##hook(spank_t sp, int ac, char **av)               \
    {                                                                   \
        if (!has_work(#hook) || !active(sp)) return 0;                  \
        return call_python(#hook, sp, ac, av);                          \
    }

int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
    if (!has_work("init_post_opt") || !active(sp)) return 0;
    int routed = route_without_python(sp);
    if (routed != 0) return routed > 0 ? 0 : -1;
    return call_python("init_post_opt", sp, ac, av);
}
FORWARD(local_user_init)
FORWARD(user_init)
FORWARD(task_init_privileged)
FORWARD(task_init)
FORWARD(task_post_fork)
FORWARD(task_exit)
FORWARD(exit)

int slurm_spank_job_prolog(spank_t sp, int ac, char **av)
{
    if (parse_plugstack(ac, av) != 0) return -1;
    if (!active(sp)) return 0;
    return call_python("job_prolog", sp, ac, av);
}

int slurm_spank_job_epilog(spank_t sp, int ac, char **av)
{
    if (parse_plugstack(ac, av) != 0) return -1;
    if (!active(sp)) return 0;
    return call_python("job_epilog", sp, ac, av);
}
