"""Build the cffi-embedded Python module that the SPANK shim loads on demand.

``ffibuilder.compile()`` (not setuptools' ``cffi_modules``) is used on purpose: it links
the module to libpython, which Slurm's local-scope dlopen needs (docs/spank.md).

The module exports two C entry points the shim looks up with dlsym:
  - ``shifter_py_boot(exe, err, errlen)`` starts Python with an isolated PyConfig whose
    executable is the venv's ``bin/python`` (so the venv's site-packages are on sys.path)
    and promotes libpython to global symbol scope;
  - ``shifter_py_hook(...)`` (an ``extern "Python"`` function) runs the dispatcher.
It also wraps the SPANK API's variadic calls in fixed-signature helpers for Python.
"""

from __future__ import annotations

import os
import sys

import cffi

MODULE = "_shifter_spank_py"

API = r"""
int shifter_py_hook(const char *hook, void *sp, int ctx, int ac, char **av,
                    int nopt, const char **names, const char **values);
"""

CDEF = r"""
int shifter_sp_get_u32(void *sp, int item, uint32_t *out);
int shifter_sp_get_uid(void *sp, uint32_t *out);
int shifter_sp_get_gid(void *sp, uint32_t *out);
int shifter_sp_get_supplementary_gids(void *sp, uint32_t *out, int max);
int shifter_sp_getenv(void *sp, const char *name, char *buf, int len);
int shifter_sp_setenv(void *sp, const char *name, const char *value, int overwrite);
int shifter_sp_unsetenv(void *sp, const char *name);
int shifter_sp_job_control_setenv(void *sp, const char *name, const char *value, int overwrite);
int shifter_sp_job_control_getenv(void *sp, const char *name, char *buf, int len);
int shifter_sp_remote(void *sp);
const char *shifter_sp_strerror(int err);
void shifter_log_error(const char *msg);
void shifter_log_info(const char *msg);
void shifter_log_verbose(const char *msg);
void shifter_log_debug(const char *msg);

/* item numbers, mirrored from spank.h by the C compiler */
#define S_JOB_ID ...
#define S_JOB_STEPID ...
#define S_JOB_NNODES ...
#define S_JOB_NODEID ...
#define S_JOB_LOCAL_TASK_COUNT ...
#define S_JOB_TOTAL_TASK_COUNT ...
#define S_TASK_ID ...
#define S_TASK_GLOBAL_ID ...
#define S_TASK_PID ...
#define S_JOB_ARRAY_ID ...
#define S_JOB_ARRAY_TASK_ID ...
#define ESPANK_SUCCESS ...
"""

SOURCE = r"""
/* cffi includes Python.h first, which already defines _GNU_SOURCE (needed for dladdr) */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <slurm/spank.h>

#define PY_SSIZE_T_CLEAN
#include <Python.h>

int shifter_sp_get_u32(void *sp, int item, uint32_t *out)
{ return spank_get_item((spank_t) sp, (spank_item_t) item, out); }
int shifter_sp_get_uid(void *sp, uint32_t *out)
{ uid_t u; int rc = spank_get_item((spank_t) sp, S_JOB_UID, &u); *out = (uint32_t) u; return rc; }
int shifter_sp_get_gid(void *sp, uint32_t *out)
{ gid_t g; int rc = spank_get_item((spank_t) sp, S_JOB_GID, &g); *out = (uint32_t) g; return rc; }
int shifter_sp_get_supplementary_gids(void *sp, uint32_t *out, int max)
{
    gid_t *gids = NULL; int n = 0;
    int rc = spank_get_item((spank_t) sp, S_JOB_SUPPLEMENTARY_GIDS, &gids, &n);
    if (rc != ESPANK_SUCCESS) return -1;
    for (int i = 0; i < n && i < max; i++) out[i] = (uint32_t) gids[i];
    return n;
}
int shifter_sp_getenv(void *sp, const char *name, char *buf, int len)
{ return spank_getenv((spank_t) sp, name, buf, len); }
int shifter_sp_setenv(void *sp, const char *name, const char *value, int overwrite)
{ return spank_setenv((spank_t) sp, name, value, overwrite); }
int shifter_sp_unsetenv(void *sp, const char *name)
{ return spank_unsetenv((spank_t) sp, name); }
int shifter_sp_job_control_setenv(void *sp, const char *name, const char *value, int overwrite)
{ return spank_job_control_setenv((spank_t) sp, name, value, overwrite); }
int shifter_sp_job_control_getenv(void *sp, const char *name, char *buf, int len)
{ return spank_job_control_getenv((spank_t) sp, name, buf, len); }
int shifter_sp_remote(void *sp) { return spank_remote((spank_t) sp); }
const char *shifter_sp_strerror(int err) { return spank_strerror((spank_err_t) err); }
void shifter_log_error(const char *msg) { slurm_error("%s", msg); }
void shifter_log_info(const char *msg) { slurm_info("%s", msg); }
void shifter_log_verbose(const char *msg) { slurm_verbose("%s", msg); }
void shifter_log_debug(const char *msg) { slurm_debug("%s", msg); }

/* Start Python from the venv.  Called by the shim before the first hook. */
__attribute__((visibility("default")))
int shifter_py_boot(const char *exe, char *err, int errlen)
{
    Dl_info info;
    if (Py_IsInitialized()) return 0;
    /* Slurm dlopens plugins with local scope: make libpython's symbols global, or every
       compiled extension module fails to import (undefined symbol: PyExc_...). */
    if (dladdr((void *) &Py_IsInitialized, &info) != 0 && info.dli_fname != NULL)
        dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);

    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.install_signal_handlers = 0;   /* never touch slurmstepd's/srun's signals */
    config.write_bytecode = 0;            /* hooks run as users: never write into the prefix */
    config.site_import = 1;
    config.parse_argv = 0;
    PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, exe);
    if (!PyStatus_Exception(status))
        status = PyConfig_SetBytesString(&config, &config.executable, exe);
    if (!PyStatus_Exception(status))
        status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        snprintf(err, (size_t) errlen, "%s%s%s", status.func ? status.func : "",
                 status.func ? ": " : "", status.err_msg ? status.err_msg : "unknown error");
        return -1;
    }
    PyEval_SaveThread();   /* release the GIL: cffi takes it per call */
    return 0;
}
"""

INIT_CODE = r"""
from _shifter_spank_py import ffi, lib
from shifter.spank import dispatch

@ffi.def_extern(error=-1)
def shifter_py_hook(hook, sp, ctx, ac, av, nopt, names, values):
    return dispatch.entry(ffi, lib, hook, sp, ctx, ac, av, nopt, names, values)
"""


def build(outdir: str, tmpdir: str, verbose: bool = False) -> str:
    """Compile the module into ``outdir/_shifter_spank_py.so``; returns its path."""
    ffi = cffi.FFI()
    ffi.embedding_api(API)
    ffi.cdef(CDEF)
    ffi.set_source(MODULE, SOURCE, extra_compile_args=["-O2", "-Wall"], libraries=["dl"])
    ffi.embedding_init_code(INIT_CODE)
    outdir, tmpdir = os.path.abspath(outdir), os.path.abspath(tmpdir)
    os.makedirs(outdir, exist_ok=True)
    os.makedirs(tmpdir, exist_ok=True)
    target = os.path.join(outdir, MODULE + ".so")
    built = ffi.compile(tmpdir=tmpdir, target=target, verbose=verbose)
    return built


if __name__ == "__main__":
    print(build(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else sys.argv[1] + "/tmp", verbose=True))
