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
#include <grp.h>
#include <limits.h>
#include <pwd.h>
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
#include "hookd_client.h"
#include "shifter_contracts.h" /* the contracts' names, written by the build from their Python owners */
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

/* long_options (Shifter's bare word, or long_options=1): the options are registered only
 * under these names, for sites where another plugin owns --image or --volume; --ccm is
 * not offered then (as in Shifter).  Slurm hands them to the job's steps as
 * _SLURM_SPANK_OPTION_shifter_shifter_image etc. */
static struct spank_option long_options[] = {
    {"shifter.image", "image", "shifter image to use (docker:repo:tag, repo:tag, id:<hex>)", 1,
     OPT_IMAGE, (spank_opt_cb_f) opt_cb},
    {"shifter.volume", "volume", "shifter volume bindings (src:dst[:flags][;...])", 1, OPT_VOLUME,
     (spank_opt_cb_f) opt_cb},
    {"shifter.module", "module", "shifter modules to load (comma separated, 'none' for none)", 1,
     OPT_MODULE, (spank_opt_cb_f) opt_cb},
    SPANK_OPTIONS_TABLE_END
};

/* ------------------------------------------------------------------------ */
/* plugstack.conf arguments                                                  */

/* the keys' owner is shifter.spank.plugstack (tests/data/contracts/plugstack_args.json) */
static const char *const known_keys[] = {PLUGSTACK_KNOWN_KEYS, NULL};
static const char *const bool_keys[] = {PLUGSTACK_BOOL_KEYS, NULL};

static int enable_ccm = 0, enable_sshd = 0, use_long_options = 0, extern_cgroup = 0, cgroup_per_node = 0;
static int hook_server = 1; /* hook_server=0: the prolog/epilog start Python in slurmstepd */
static char *shifter_config = NULL; /* plugstack shifter_config=, if given */
static char *memory_cgroup = NULL;  /* memory_cgroup=, if given */
static char *extern_setup = NULL;   /* extern_setup=, if given */

static int is_key(const char *arg, size_t keylen, const char *key)
{
    return strlen(key) == keylen && strncmp(arg, key, keylen) == 0;
}

static void set_arg(char **dst, const char *value)
{
    free(*dst);
    *dst = strdup(value);
}

static int in_list(const char *key, size_t keylen, const char *const *list)
{
    for (int i = 0; list[i] != NULL; i++)
        if (strlen(list[i]) == keylen && strncmp(list[i], key, keylen) == 0) return 1;
    return 0;
}

/* Validates every plugstack argument; 0 = ok, -1 = error already reported. */
static int parse_plugstack(int ac, char **av)
{
    enable_ccm = enable_sshd = use_long_options = extern_cgroup = cgroup_per_node = 0;
    hook_server = 1;
    free(shifter_config);
    free(memory_cgroup);
    free(extern_setup);
    shifter_config = memory_cgroup = extern_setup = NULL;
    for (int i = 0; i < ac; i++) {
        const char *arg = av[i];
        const char *eq = strchr(arg, '=');
        if (strcmp(arg, "long_options") == 0) { /* Shifter's form: a bare word */
            use_long_options = 1;
            continue;
        }
        if (eq == NULL || eq == arg) {
            slurm_error(PLUGIN ": plugstack.conf: argument '%s' is not key=value "
                        "(known keys: " PLUGSTACK_KNOWN_KEYS_TEXT "; long_options may stand alone)", arg);
            return -1;
        }
        size_t keylen = (size_t) (eq - arg);
        if (!in_list(arg, keylen, known_keys)) {
            slurm_error(PLUGIN ": plugstack.conf: unknown argument '%.*s' in '%s' "
                        "(known keys: " PLUGSTACK_KNOWN_KEYS_TEXT ")", (int) keylen, arg, arg);
            return -1;
        }
        const char *value = eq + 1;
        if (in_list(arg, keylen, bool_keys)) {
            if (strcmp(value, "0") != 0 && strcmp(value, "1") != 0) {
                slurm_error(PLUGIN ": plugstack.conf: '%.*s' must be 0 or 1, not '%s'",
                            (int) keylen, arg, value);
                return -1;
            }
            int on = value[0] == '1';
            if (is_key(arg, keylen, "enable_ccm")) enable_ccm = on;
            if (is_key(arg, keylen, "long_options")) use_long_options = on;
            if (is_key(arg, keylen, "extern_cgroup")) extern_cgroup = on;
            if (is_key(arg, keylen, "cgroup_per_node")) cgroup_per_node = on;
            if (is_key(arg, keylen, "enable_sshd")) enable_sshd = on;
            if (is_key(arg, keylen, "hook_server")) hook_server = on;
        } else if (value[0] == '\0') {
            slurm_error(PLUGIN ": plugstack.conf: '%.*s' needs a value", (int) keylen, arg);
            return -1;
        } else if (is_key(arg, keylen, "shifter_config")) {
            set_arg(&shifter_config, value);
        } else if (is_key(arg, keylen, "memory_cgroup")) {
            set_arg(&memory_cgroup, value);
        } else if (is_key(arg, keylen, "extern_setup")) {
            set_arg(&extern_setup, value);
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

    if (hook_server && (strcmp(name, "job_prolog") == 0 || strcmp(name, "job_epilog") == 0)) {
        /* the node's hook server (shifter.spank.hookd) has Python and the runtime loaded */
        int rc = hookd_call(name, sp, ac, av, n, names, values);
        if (rc != -2) return rc;
        char dir[PATH_MAX], exe[PATH_MAX + 64];
        if (shim_dir(dir, sizeof(dir)) == 0) { /* none yet, or stale: start one for the next job */
            snprintf(exe, sizeof(exe), "%s/../../bin/python", dir);
            start_hookd(exe);
        }
    }
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
        fetch_job_options(sp, use_long_options ? long_options : options);
    }
    if (ctx == S_CTX_JOB_SCRIPT) {
        const char *img = getenv(ENV_PROLOG_PREFIX ENV_IMAGE);
        return have_option() || (img != NULL && img[0] != '\0');
    }
    return have_option();
}

/* ------------------------------------------------------------------------ */
/* requests the shim handles without Python                                  */
/*
 * The contract (Python's side: shifter.spank.request; vectors both follow:
 * tests/data/contracts/shim_route.json, run through this compiled shim and through Python by
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
 *  - a step of a --ccm job whose only shifter option is the job's --ccm (the job's
 *    SLURM_SPANK_SHIFTER_CCM=1, IMAGETYPE=local, IMAGE=/, no volume or module): the
 *    tasks get SHIFTER_IMAGE=/, SHIFTER_IMAGETYPE=local, SHIFTER_CCM=1 (route_ccm_step).
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

/* A step of a --ccm job that asks for nothing but the job's --ccm: the tasks get the
 * job's request (the host root, local:/) as Python would give it.  1 = handled, 0 = not. */
static int route_ccm_step(spank_t sp)
{
    if (!opt_ccm || opt_image_set || opt_volume_set || opt_module_set) return 0;
    const char *ccm = getenv(ENV_JOB_CCM);
    const char *type = getenv(ENV_JOB_IMAGETYPE);
    const char *image = getenv(ENV_JOB_IMAGE);
    if (ccm == NULL || strcmp(ccm, "1") != 0 || type == NULL || strcmp(type, "local") != 0
        || image == NULL || strcmp(image, "/") != 0)
        return 0;
    if (getenv(ENV_JOB_VOLUME) != NULL || getenv(ENV_JOB_MODULE) != NULL) return 0;
    struct request_env r = {.n = 0};
    add_env(&r, ENV_IMAGE, "/");
    add_env(&r, ENV_IMAGETYPE, "local");
    add_env(&r, ENV_CCM, "1");
    if (hand_over(sp, &r, 0, 1) != 0) return -1;
    slurm_debug(PLUGIN ": the step uses its job's --ccm");
    return 1;
}

/* 1 = handled, 0 = ask Python, -1 = error reported. */
static int route_job_request(spank_t sp)
{
    int ccm_step = route_ccm_step(sp);
    if (ccm_step != 0) return ccm_step;
    const char *type = env_nonempty(ENV_JOB_IMAGETYPE);
    const char *id = env_nonempty(ENV_JOB_IMAGE);
    if (!opt_image_set || opt_image == NULL || type == NULL || id == NULL) return 0;
    if (strcmp(type, "id") != 0 || !is_image_id(id)) return 0;
    if (strncmp(opt_image, "id:", 3) != 0 || strcmp(opt_image + 3, id) != 0) return 0;
    if (!same_as_job(opt_volume_set, opt_volume, ENV_JOB_VOLUME)) return 0;
    if (!same_as_job(opt_module_set, opt_module, ENV_JOB_MODULE)) return 0;
    const char *ccm = getenv(ENV_JOB_CCM);
    if (opt_ccm != (ccm != NULL && strcmp(ccm, "1") == 0)) return 0;

    const char *request = env_nonempty(ENV_JOB_IMAGEREQUEST);
    if (request == NULL) request = env_nonempty(ENV_JOB_IMAGEREQUEST_OLD);
    struct request_env r = {.n = 0};
    add_env(&r, ENV_IMAGE, id);
    add_env(&r, ENV_IMAGETYPE, "id");
    add_env(&r, ENV_IMAGEREQUEST, request ? request : opt_image);
    if (opt_volume_set) add_env(&r, ENV_VOLUME, opt_volume ? opt_volume : "");
    if (opt_module_set) add_env(&r, ENV_MODULE, opt_module ? opt_module : "");
    if (opt_ccm) add_env(&r, ENV_CCM, "1");
    if (hand_over(sp, &r, 0, 1) != 0) return -1;
    slurm_debug(PLUGIN ": the step uses its job's request (image id:%s)", id);
    return 1;
}

/* udiRoot.conf as Python finds it (shifter.paths.config_path): the plugstack argument,
 * else SHIFTER_CONFIG, else <prefix>/etc/udiRoot.conf. */
static int config_path(char *out, size_t len)
{
    const char *path = shifter_config;
    if (path == NULL || path[0] == '\0') path = env_nonempty(ENV_CONFIG);
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
    add_env(&r, ENV_IMAGE, id);
    add_env(&r, ENV_IMAGETYPE, "id");
    add_env(&r, ENV_IMAGEREQUEST, opt_image);
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
static int ccm_enter(spank_t sp, int ac, char **av)
{
    uint32_t job = 0, step = 0;
    if (spank_get_item(sp, S_JOB_STEPID, &step) == ESPANK_SUCCESS && step == SLURM_EXTERN_CONT) return 0;
    int requested = ccm_requested(sp);
    if (!requested) return 0;
    if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS || job == 0) {
        task_say("ccm: can't get the job id");
        return -1;
    }
    char conf[PATH_MAX], mount[PATH_MAX], job_dir[PATH_MAX + 48], root[PATH_MAX + 64];
    if (config_path(conf, sizeof(conf)) != 0 || udiconf_read_udi_mount(conf, mount, sizeof(mount)) != 0) {
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
    char conf[PATH_MAX], mount[PATH_MAX], plan[2 * PATH_MAX];
    struct stat st;
    if (config_path(conf, sizeof(conf)) != 0 || udiconf_read_udi_mount(conf, mount, sizeof(mount)) != 0) return 0;
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

static int extern_step_setup(spank_t sp)
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

/* ------------------------------------------------------------------------ */
/* SPANK entry points                                                        */

int slurm_spank_init(spank_t sp, int ac, char **av)
{
    if (parse_plugstack(ac, av) != 0) return -1;
    spank_context_t ctx = spank_context();
    if (ctx == S_CTX_LOCAL || ctx == S_CTX_REMOTE || ctx == S_CTX_ALLOCATOR) {
        if (register_table(sp, use_long_options ? long_options : options) != 0) return -1;
    }
    return 0;
}

/* Python is started only where a context module has work: submission (allocator and
 * local init_post_opt) and the job's prolog/epilog.  In the remote context (slurmstepd)
 * the shim does the work itself, in C (task_init_privileged: --ccm; task_post_fork: the
 * extern step), so steps never pay for an interpreter. */
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

/* --ccm tasks enter the job's host-root container here, in C (a task never starts Python). */
int slurm_spank_task_init_privileged(spank_t sp, int ac, char **av)
{
    if (!enable_ccm || spank_context() != S_CTX_REMOTE) return 0;
    (void) active(sp); /* fetches the step's shifter options from Slurm */
    return ccm_enter(sp, ac, av);
}
FORWARD(task_init)

/* The job's extern step adopts the job's cgroup and runs extern_setup (in C). */
int slurm_spank_task_post_fork(spank_t sp, int ac, char **av)
{
    if (spank_context() != S_CTX_REMOTE) return 0;
    return extern_step_setup(sp);
}
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
