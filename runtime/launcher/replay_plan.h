/*
 * A private plan as the replay reads it (replay_plan.c): its records, the parsed plan
 * and where it came from.  Used by the replay (replay.c) and its operations
 * (replay_ops.c); the format's owner is shifter.runtime.privplan (docs/private-plans.md).
 */
#ifndef SHIFTER_REPLAY_PLAN_H
#define SHIFTER_REPLAY_PLAN_H

#include <sys/types.h>

/* ------------------------------------------------------------------ records */
enum {
    /* settings */
    R_KEY, R_KIND, R_ROOT, R_FUSE, R_INPUT, R_ENV, R_USERHOOK, R_CMD,
    /* operations, run in plan order */
    O_MKDIR, O_MKDIRP, O_CHMOD, O_SYMLINK, O_TOUCH, O_FILE, O_MOUNT, O_UMOUNT, O_BINDKEEP,
    O_HARDENTREE, O_TREEKEEP, O_LOOPMOUNT, O_FUSEMOUNT, O_COPYTREE, O_CHDIR, O_DROPSTAGING,
    N_RECORDS
};

#define MAX_ARITY 5

struct record {
    const char *name;
    int arity;      /* strings after the name */
    unsigned paths; /* bit i: string i is a path ('@' = the staging directory) */
};

/* every record's name, arity and paths, by type (replay_plan.c) */
extern const struct record RECORDS[N_RECORDS];

struct op {
    int type;
    char *s[MAX_ARITY];  /* its strings, '@' paths expanded */
    unsigned long mode;  /* MODE (octal in the plan) */
    unsigned long flags; /* FLAGS (decimal) */
    long below;          /* treekeep BELOW (-1: FLAGS); bindkeep REC (0/1) */
};

struct pplan {
    const char *key, *kind, *fuse;
    char *root;              /* the container's root, chrooted into at the end */
    int user;                /* kind user */
    char **input;            /* PATH SIG pairs */
    int n_input;
    const char **env, **userhook, **cmd; /* cmd: NULL-terminated */
    int n_env, n_userhook, n_cmd;
    struct op *ops;
    int n_ops;
    struct op *fusemount;    /* the fusemount operation (at most one), or NULL */
};

/* Where the plan came from, to remove it when its replay fails. */
struct plan_file {
    int dirfd;
    char name[32];
    dev_t dev;
    ino_t ino;
};

/* With SHIFTER_REPLAY_DEBUG set (find_plan reads it): say why, on stderr. */
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The caller's valid, fresh plan for the request their environment makes: 0 with the
 * plan in `p` and where it came from in `pf` (its directory open); -1 when there is none
 * (nothing left open). */
int find_plan(uid_t uid, gid_t gid, struct plan_file *pf, struct pplan *p);

/* Remove the plan (its replay failed), unless Python already replaced it. */
void remove_plan(const struct plan_file *pf);

/* `@` -> staging, `@/x` -> staging/x, in every path of the plan. */
void expand_paths(struct pplan *p, const char *staging);

#endif
