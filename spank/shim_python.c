/*
 * The SPANK shim: Python, started only when a hook has work for it (shim.h).  The
 * cffi-embedded module beside the shim (_shifter_spank_py.so) is dlopened and started
 * from the install prefix's venv, and the hook handed to the Python dispatcher
 * (shifter.spank.dispatch); the prolog and epilog go to the node's hook server
 * (shifter.spank.hookd, hookd_client.c) when there is one.
 *
 * Return convention of the Python entry point: 1 = success, anything else = failure.
 * cffi returns 0 when its own Python init fails, so 0 must never mean success here.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <slurm/spank.h>

#include "hookd_client.h"
#include "shim.h"

#define PYMOD_NAME "_shifter_spank_py.so"

/* ------------------------------------------------------------------------ */
/* loading Python on demand                                                  */

typedef int (*py_boot_f)(const char *python_executable, char *err, int errlen);
typedef int (*py_hook_f)(const char *hook, void *sp, int ctx, int ac, char **av, int nopt,
                         const char **names, const char **values);

static py_hook_f py_hook = NULL;
static int py_failed = 0;


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

int call_python(const char *name, spank_t sp, int ac, char **av)
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
