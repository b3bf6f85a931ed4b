/*
 * What entering a container takes (container.c), shared by the fast path (launcher.c)
 * and the plan replay (replay.c, replay_plan.c).  All of them are compiled into the one
 * program <prefix>/bin/shifter; container.c uses none of them.
 */
#ifndef SHIFTER_CONTAINER_H
#define SHIFTER_CONTAINER_H

#include <limits.h>
#include <sys/types.h>

/* SHIFTER_EXIT_*: generated at build time from shifter/exit_codes.py (setup.py) */
#include "exit_codes.h"

/* <prefix> of <prefix>/bin/shifter (set by launcher.c's main) */
extern char prefix[PATH_MAX];

/* exec <prefix>/bin/python -I -m shifter.runtime.launcher.launch ARGS... (never returns) */
__attribute__((noreturn)) void to_python(int argc, char **argv);

/* in a new user namespace: map the caller's uid/gid to themselves, setgroups denied; 0 or -1 */
int map_self(uid_t uid, gid_t gid);

/* What the command needs once the process is chrooted into the container. */
struct entry {
    const char *cwd;         /* the caller's working directory ("/" if the container lacks it) */
    const char **env;        /* environment operations (=N=V, <N=V, >N=V, -N), in order */
    int n_env;
    const char **userhook;   /* /bin/sh HOOK, each, before the command */
    int n_userhook;
    const char **cmd;        /* the image's CMD, NULL-terminated: used when argc < 2 */
    int n_cmd;
};

/* no_new_privs, cwd, environment, userhooks, exec argv[1..] (else the image's CMD,
 * else /bin/sh).  Returns only on failure: the exit status (message printed). */
int enter_container(const struct entry *e, int argc, char **argv);

#endif
