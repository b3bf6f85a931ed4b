/* The job prolog/epilog through the node's hook server (shifter.spank.hookd). */
#ifndef SHIFTER_HOOKD_CLIENT_H
#define SHIFTER_HOOKD_CLIENT_H

#include <slurm/spank.h>

#pragma GCC visibility push(hidden) /* the plugin exports only the SPANK symbols (shim.h) */

/* The hook server's directory; its sockets are <dir>/<node>.sock (shifter.spank.hookd.RUN_DIR). */
#define HOOKD_DIR "/run/shifter/hookd"

/* Run `hook` (job_prolog/job_epilog) in the node's hook server: 0 = succeeded, -1 = failed
 * (its messages are logged), -2 = no usable server (run it in-process; start_hookd). */
int hookd_call(const char *hook, spank_t sp, int ac, char **av, int nopt,
               const char **names, const char **values);

/* Start the node's hook server (detached) with the Python at `python`. */
void start_hookd(const char *python);

#pragma GCC visibility pop

#endif
