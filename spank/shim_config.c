/*
 * The SPANK shim: what the plugin is given (shim.h).
 *   - its options --image, --volume, --module, --ccm: registered (or under the
 *     long_options names), their values stored by the callbacks, fetched from Slurm where
 *     the callbacks are not run (prolog/epilog, slurmstepd);
 *   - its plugstack.conf arguments, each checked (unknown key = error naming it; the keys'
 *     owner is shifter.spank.plugstack: tests/data/contracts/plugstack_args.json);
 *   - where its files are: its own directory, the site's udiRoot.conf (udiconf_key.h).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <slurm/spank.h>

#include "shifter_contracts.h" /* the contracts' names, written by the build from their Python owners */
#include "shim.h"
#include "udiconf_key.h"

/* ------------------------------------------------------------------------ */
/* stored option values                                                      */

enum { OPT_IMAGE = 1, OPT_VOLUME, OPT_MODULE, OPT_CCM };

char *opt_image = NULL;   /* last --image value (validated in Python) */
char *opt_volume = NULL;  /* every --volume value, joined with ';' */
char *opt_module = NULL;  /* last --module value */
int opt_image_set = 0, opt_volume_set = 0, opt_module_set = 0, opt_ccm = 0;

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

int enable_ccm = 0, enable_sshd = 0, extern_cgroup = 0, cgroup_per_node = 0;
static int use_long_options = 0;
int hook_server = 1; /* hook_server=0: the prolog/epilog start Python in slurmstepd */
static char *shifter_config = NULL; /* plugstack shifter_config=, if given */
char *memory_cgroup = NULL;  /* memory_cgroup=, if given */
char *extern_setup = NULL;   /* extern_setup=, if given */

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
int parse_plugstack(int ac, char **av)
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

int register_options(spank_t sp)
{
    return register_table(sp, use_long_options ? long_options : options);
}

/* Is this process (or, in the prolog/epilog, this job) using shifter at all? */
int active(spank_t sp)
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
/* the plugin's files                                                        */

const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return (v != NULL && v[0] != '\0') ? v : NULL;
}


/* Directory holding this shim (symlinks resolved). */
int shim_dir(char *out, size_t len)
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

int site_image_path(char *out, size_t len)
{
    char conf[PATH_MAX];
    if (config_path(conf, sizeof(conf)) != 0) return -1;
    return udiconf_read_image_path(conf, out, len);
}

int site_udi_mount(char *out, size_t len)
{
    char conf[PATH_MAX];
    if (config_path(conf, sizeof(conf)) != 0) return -1;
    return udiconf_read_udi_mount(conf, out, len);
}
