/*
 * What the units of the SPANK shim (shifter_slurm.so) share.  shim.c holds Slurm's entry
 * points and calls the others; each unit says below what it gives:
 *
 *   shim_config.c  the options (registered, stored), the plugstack.conf arguments, the
 *                  plugin's own directory and the site's udiRoot.conf
 *   shim_route.c   the submissions and steps handled without Python
 *   shim_python.c  the embedded Python, loaded on demand (or the node's hook server)
 *   shim_ccm.c     a --ccm task entering its job's host-root container
 *   shim_extern.c  the job's extern step: extern_cgroup, extern_setup
 *
 * All of it is hidden in the shared object: Slurm sees only the SPANK symbols of shim.c,
 * and a name here can never bind to a symbol of the slurmstepd that loads the plugin.
 */
#ifndef SHIFTER_SHIM_H
#define SHIFTER_SHIM_H

#include <stddef.h>

#include <slurm/spank.h>

#define PLUGIN "shifter"

#pragma GCC visibility push(hidden)

/* ---- shim_config.c: the options' values (set by their callbacks; validated in Python) */
extern char *opt_image;  /* last --image value */
extern char *opt_volume; /* every --volume value, joined with ';' */
extern char *opt_module; /* last --module value */
extern int opt_image_set, opt_volume_set, opt_module_set, opt_ccm;

/* ---- shim_config.c: the plugstack.conf arguments (parse_plugstack) */
extern int enable_ccm, enable_sshd, extern_cgroup, cgroup_per_node;
extern int hook_server;     /* hook_server=0: the prolog/epilog start Python in slurmstepd */
extern char *memory_cgroup; /* memory_cgroup=, if given */
extern char *extern_setup;  /* extern_setup=, if given */

/* Validates every plugstack argument; 0 = ok, -1 = error already reported. */
int parse_plugstack(int ac, char **av);

/* Registers the options (the long_options names, if asked); 0, or -1 (said why). */
int register_options(spank_t sp);

/* Is this process (or, in the prolog/epilog, this job) using shifter at all? */
int active(spank_t sp);

/* getenv, NULL when unset or empty */
const char *env_nonempty(const char *name);

/* Directory holding this shim (symlinks resolved): 0, or -1. */
int shim_dir(char *out, size_t len);

/* udiRoot.conf's imagePath / udiMount (the file as Python finds it: the plugstack
 * argument shifter_config, else SHIFTER_CONFIG, else <prefix>/etc/udiRoot.conf): 0, or -1. */
int site_image_path(char *out, size_t len);
int site_udi_mount(char *out, size_t len);

/* ---- shim_route.c */
/* init_post_opt in sbatch/salloc/srun: 1 = handled here, 0 = ask Python, -1 = error. */
int route_without_python(spank_t sp);

/* ---- shim_python.c */
/* Hands the hook to Python (the node's hook server for the prolog/epilog, else the
 * embedded module, loaded now if need be): 0, or -1. */
int call_python(const char *name, spank_t sp, int ac, char **av);

/* ---- shim_ccm.c */
/* A --ccm task enters its job's host-root container: 0 = entered (or nothing to do),
 * -1 = the task must fail (said why). */
int ccm_enter(spank_t sp, int ac, char **av);

/* ---- shim_extern.c */
/* The job's extern step adopts the job's cgroup and runs extern_setup: 0, or -1. */
int extern_step_setup(spank_t sp);

#pragma GCC visibility pop

#endif
