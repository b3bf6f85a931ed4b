/*
 * What launcher.c (the fast path) and replay.c (private plans) share.  Both are
 * compiled into the one program <prefix>/bin/shifter.
 */
#ifndef SHIFTER_REPLAY_H
#define SHIFTER_REPLAY_H

#include <sys/types.h>

/* SHIFTER_EXIT_*: generated at build time from shifter/exit_codes.py (setup.py) */
#include "exit_codes.h"

/* launcher.c */
extern char prefix[]; /* <prefix> of <prefix>/bin/shifter */

/* exec <prefix>/bin/python -I -m shifter.runtime.launcher.launch ARGS... (never returns) */
__attribute__((noreturn)) void to_python(int argc, char **argv);

/* The image descriptor the environment requests (shifter.runtime.launcher.launch.env_image_spec's
 * rule): 1 and the descriptor in out; 0 none; -1 too long for out. */
int env_image_request(char *out, size_t outlen);

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

/* replay.c */

/* Build the private container from the caller's private plan for this request and
 * run the command in it.  Returns only when there is no valid plan (the caller then
 * hands the request to Python); a replay that fails part-way execs Python itself. */
void replay_private(int argc, char **argv, uid_t uid, gid_t gid);

#endif
