/*
 * What the plan replay (replay.c) gives the launcher's fast path (launcher.c), its only
 * user.  Both are compiled into the one program <prefix>/bin/shifter.
 */
#ifndef SHIFTER_REPLAY_H
#define SHIFTER_REPLAY_H

#include <sys/types.h>

/* Build the private container from the caller's private plan for this request and
 * run the command in it.  Returns only when there is no valid plan (the caller then
 * hands the request to Python); a replay that fails part-way execs Python itself. */
void replay_private(int argc, char **argv, uid_t uid, gid_t gid);

#endif
