/*
 * The operations of a private plan (replay_ops.c), run by the replay (replay.c) one by
 * one in plan order: the mount, file and copy primitives, each with its Python twin in
 * shifter.runtime.linux or shifter.runtime.builder.execute.
 */
#ifndef SHIFTER_REPLAY_OPS_H
#define SHIFTER_REPLAY_OPS_H

#include <sys/types.h>

#include "replay_plan.h"

struct ctx {
    uid_t uid;
    gid_t gid;
    const char *fuse_type; /* "fuse.<basename of PROG>" */
    int sock;              /* to the squashfuse helper, or -1 */
    const char *staging;   /* the user kind's staging directory, or NULL */
    int plan_dir;          /* the plan directory (plandir.h), open */
};

/* Run one operation; 0, or -1 (errno set). */
int run_op(struct op *op, struct ctx *c);

#endif
