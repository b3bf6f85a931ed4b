/*
 * The tests' stand-in for srun/sbatch around the compiled SPANK shim (tests/unit/test_shim_route.py).
 *
 *   shim_harness SHIM.so CONTEXT [PLUGSTACK_ARG...] [-- NAME=VALUE...]
 *
 * CONTEXT is local or allocator.  It dlopens the shim as Slurm does (local scope; this
 * executable, linked with -rdynamic, provides the SPANK API and slurm_* logging), calls
 * slurm_spank_init, then gives the options as Slurm does: first those inherited through
 * the environment (SLURM_SPANK__SLURM_SPANK_OPTION_shifter_<name>, what srun inside a job
 * reads), then the command line's (NAME=VALUE after --, in order); sets each given
 * option's _SLURM_SPANK_OPTION_ variable in its environment and job-control environment
 * as spank_init_post_opt does, and calls slurm_spank_init_post_opt.  If the shim loads
 * Python, Python runs for real (over this same fake SPANK API).
 *
 * Prints one JSON object: rc, registered (the names of the options the shim registered),
 * python (libpython mapped afterwards), control (the
 * job-control environment as set), env (SHIFTER_* and _SLURM_SPANK_OPTION_* of the
 * process environment afterwards), errors, infos, debug (the slurm_* lines).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <slurm/spank.h>

extern char **environ;

#define MAX_ITEMS 256

static spank_context_t context = S_CTX_LOCAL;
static struct spank_option *registered[64];
static int n_registered = 0;
static char *control_names[MAX_ITEMS], *control_values[MAX_ITEMS];
static int n_control = 0;
static char *errors[MAX_ITEMS], *infos[MAX_ITEMS], *debugs[MAX_ITEMS];
static int n_errors = 0, n_infos = 0, n_debugs = 0;

/* ---- the SPANK API, as srun/sbatch give it ---------------------------------------- */
spank_context_t spank_context(void) { return context; }
int spank_remote(spank_t sp) { return 0; }
const char *spank_strerror(spank_err_t err) { return "harness error"; }
int spank_symbol_supported(const char *symbol) { return 1; }

spank_err_t spank_option_register(spank_t sp, struct spank_option *opt)
{
    if (n_registered >= 64) return ESPANK_ERROR;
    registered[n_registered++] = opt;
    return ESPANK_SUCCESS;
}

spank_err_t spank_option_getopt(spank_t sp, struct spank_option *opt, char **arg)
{
    return ESPANK_ERROR;
}

spank_err_t spank_get_item(spank_t sp, spank_item_t item, ...)
{
    va_list ap;
    spank_err_t rc = ESPANK_SUCCESS;
    va_start(ap, item);
    switch (item) {
    case S_JOB_UID: *va_arg(ap, uid_t *) = getuid(); break;
    case S_JOB_GID: *va_arg(ap, gid_t *) = getgid(); break;
    default: rc = ESPANK_NOT_AVAIL;
    }
    va_end(ap);
    return rc;
}

spank_err_t spank_getenv(spank_t sp, const char *var, char *buf, int len) { return ESPANK_NOT_REMOTE; }
spank_err_t spank_setenv(spank_t sp, const char *var, const char *val, int ow) { return ESPANK_NOT_REMOTE; }
spank_err_t spank_unsetenv(spank_t sp, const char *var) { return ESPANK_NOT_REMOTE; }

spank_err_t spank_job_control_setenv(spank_t sp, const char *name, const char *value, int overwrite)
{
    if (getenv("HARNESS_CONTROL_FAILS") != NULL) return ESPANK_BAD_ARG;
    for (int i = 0; i < n_control; i++) {
        if (strcmp(control_names[i], name) == 0) {
            if (!overwrite) return ESPANK_ENV_EXISTS;
            free(control_values[i]);
            control_values[i] = strdup(value);
            return ESPANK_SUCCESS;
        }
    }
    if (n_control >= MAX_ITEMS) return ESPANK_ERROR;
    control_names[n_control] = strdup(name);
    control_values[n_control++] = strdup(value);
    return ESPANK_SUCCESS;
}

spank_err_t spank_job_control_getenv(spank_t sp, const char *name, char *buf, int len)
{
    for (int i = 0; i < n_control; i++) {
        if (strcmp(control_names[i], name) == 0) {
            if ((int) strlen(control_values[i]) >= len) return ESPANK_NOSPACE;
            strcpy(buf, control_values[i]);
            return ESPANK_SUCCESS;
        }
    }
    return ESPANK_ENV_NOEXIST;
}

spank_err_t spank_job_control_unsetenv(spank_t sp, const char *name) { return ESPANK_SUCCESS; }

static void record(char **lines, int *n, const char *fmt, va_list ap)
{
    char *line = NULL;
    if (vasprintf(&line, fmt, ap) < 0) return;
    if (*n < MAX_ITEMS) lines[(*n)++] = line; else free(line);
}

#define LOGGER(fn, lines, n) \
    void fn(const char *fmt, ...) { va_list ap; va_start(ap, fmt); record(lines, &n, fmt, ap); va_end(ap); }
LOGGER(slurm_error, errors, n_errors)
LOGGER(slurm_info, infos, n_infos)
LOGGER(slurm_verbose, infos, n_infos)
LOGGER(slurm_debug, debugs, n_debugs)
LOGGER(slurm_debug2, debugs, n_debugs)
LOGGER(slurm_debug3, debugs, n_debugs)
LOGGER(slurm_spank_log, infos, n_infos)

/* ---- driving the shim --------------------------------------------------------------- */
static void env_name(const struct spank_option *opt, char *out, size_t len)
{
    int n = snprintf(out, len, "_SLURM_SPANK_OPTION_shifter_");
    for (const char *p = opt->name; *p && (size_t) n + 1 < len; p++, n++)
        out[n] = ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')) ? *p : '_';
    out[n] = '\0';
}

static struct spank_option *find_option(const char *name)
{
    for (int i = 0; i < n_registered; i++)
        if (strcmp(registered[i]->name, name) == 0) return registered[i];
    return NULL;
}

static void json_string(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *) s; *p; p++) {
        if (*p == '"' || *p == '\\') printf("\\%c", *p);
        else if (*p < 0x20) printf("\\u%04x", *p);
        else putchar(*p);
    }
    putchar('"');
}

static void json_list(const char *key, char **lines, int n)
{
    printf(", \"%s\": [", key);
    for (int i = 0; i < n; i++) {
        if (i) printf(", ");
        json_string(lines[i]);
    }
    printf("]");
}

static int python_mapped(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[4096];
    int found = 0;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (strstr(line, "libpython") != NULL) found = 1;
    if (f) fclose(f);
    return found;
}

/* The options as Slurm gives them after slurm_spank_init: those inherited through the
 * environment, then the command line's (NAME=VALUE, argv[first..]); each given option's
 * _SLURM_SPANK_OPTION_ variable set in the environment and the job-control environment
 * (spank_init_post_opt).  The first callback's failure, or 0. */
static int give_options(spank_t sp, int argc, char **argv, int first)
{
    int rc = 0, found[64] = {0};
    char name[256];
    for (int i = 0; i < n_registered && rc == 0; i++) { /* inherited through the environment */
        char var[300];
        env_name(registered[i], name, sizeof(name));
        snprintf(var, sizeof(var), "SLURM_SPANK_%s", name);
        const char *value = getenv(var);
        if (value == NULL) continue;
        rc = registered[i]->cb(registered[i]->val, value, 0);
        found[i] = 1;
        setenv(name, value, 1); /* spank_init_post_opt: the last value of each option */
    }
    for (int i = first; i < argc && rc == 0; i++) { /* the command line */
        char *eq = strchr(argv[i], '=');
        if (eq) *eq = '\0';
        struct spank_option *opt = find_option(argv[i]);
        if (opt == NULL) { fprintf(stderr, "unknown option %s\n", argv[i]); exit(2); }
        rc = opt->cb(opt->val, eq ? eq + 1 : NULL, 0);
        for (int j = 0; j < n_registered; j++) if (registered[j] == opt) found[j] = 1;
        env_name(opt, name, sizeof(name));
        setenv(name, eq ? eq + 1 : "", 1);
    }
    for (int i = 0; i < n_registered; i++) {
        env_name(registered[i], name, sizeof(name));
        const char *value = getenv(name);
        if (found[i] && value != NULL) spank_job_control_setenv(sp, name, value, 1);
    }
    return rc;
}

/* The one JSON object (see the top of this file). */
static void print_result(int rc)
{
    printf("{\"rc\": %d, \"python\": %s, \"control\": {", rc, python_mapped() ? "true" : "false");
    for (int i = 0; i < n_control; i++) {
        if (i) printf(", ");
        json_string(control_names[i]);
        printf(": ");
        json_string(control_values[i]);
    }
    printf("}, \"env\": {");
    int first = 1;
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, "SHIFTER_", 8) != 0 && strncmp(*e, "_SLURM_SPANK_OPTION_", 20) != 0) continue;
        if (strncmp(*e, "SHIFTER_CONFIG=", 15) == 0) continue;
        char *eq = strchr(*e, '=');
        if (!first) printf(", ");
        first = 0;
        *eq = '\0';
        json_string(*e);
        *eq = '=';
        printf(": ");
        json_string(eq + 1);
    }
    printf("}");
    char *names[64];
    for (int i = 0; i < n_registered; i++) names[i] = (char *) registered[i]->name;
    json_list("registered", names, n_registered);
    json_list("errors", errors, n_errors);
    json_list("infos", infos, n_infos);
    json_list("debug", debugs, n_debugs);
    printf("}\n");
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: shim_harness SHIM.so local|allocator [ARG...] [-- NAME=VALUE...]\n");
        return 2;
    }
    if (strcmp(argv[2], "allocator") == 0) context = S_CTX_ALLOCATOR;
    else if (strcmp(argv[2], "local") != 0) return 2;
    int ac = 0, first_opt = argc;
    char *av[32];
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) { first_opt = i + 1; break; }
        if (ac < 32) av[ac++] = argv[i];
    }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 2; }
    spank_f *init = (spank_f *) dlsym(h, "slurm_spank_init");
    spank_f *post_opt = (spank_f *) dlsym(h, "slurm_spank_init_post_opt");
    if (init == NULL || post_opt == NULL) { fprintf(stderr, "missing SPANK symbols\n"); return 2; }
    spank_t sp = (spank_t) &context; /* opaque to the shim */

    int rc = init(sp, ac, av);
    if (rc == 0) rc = give_options(sp, argc, argv, first_opt);
    if (rc == 0) rc = post_opt(sp, ac, av);
    print_result(rc);
    fflush(stdout);
    _exit(0); /* no atexit: an embedded interpreter is not finalised, as in srun */
}
