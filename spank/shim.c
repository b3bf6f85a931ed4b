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
 * This file holds Slurm's symbols, the plugin's entry points; the work is done by the
 * units shim.h lists (option and plugstack parsing, the routes without Python, Python,
 * --ccm, the extern step).
 */
#define _GNU_SOURCE
#include <string.h>

#include <slurm/spank.h>

#include "shim.h"

SPANK_PLUGIN(shifter, 1)

/* ------------------------------------------------------------------------ */
/* SPANK entry points                                                        */

int slurm_spank_init(spank_t sp, int ac, char **av)
{
    if (parse_plugstack(ac, av) != 0) return -1;
    spank_context_t ctx = spank_context();
    if (ctx == S_CTX_LOCAL || ctx == S_CTX_REMOTE || ctx == S_CTX_ALLOCATOR) {
        if (register_options(sp) != 0) return -1;
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
