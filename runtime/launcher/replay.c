/*
 * shifter: replay of private plans (docs/private-plans.md).  No setuid bit, no Python.
 *
 * The first `shifter CMD` for a request no prepared UDI matches is built by Python,
 * which records every step that changed the container and writes the recording as a
 * private plan: <plan directory>/<FNV-1a of the request key>.plan (plandir.h).  The next
 * identical request is built here, by replaying the plan's operations:
 *
 *   root  in a new mount namespace (/ recursively slave), in this process;
 *   user  the three processes of shifter.runtime.launcher.private_user: this process stays in
 *         the host's namespaces and supervises; a helper in its own session receives
 *         the /dev/fuse fd and execs squashfuse; the builder unshares a user and mount
 *         namespace, runs the operations and becomes the command.
 *
 * Then, chrooted into the plan's root, the fast path's last steps (enter_container):
 * no_new_privs, the caller's directory, the environment, userhooks, exec.
 *
 * Anything that does not fit (no plan, a plan for another request, a malformed one, a
 * changed input file) returns to the caller, which hands the request to Python.  An
 * operation that fails throws the new namespaces away, removes the plan and execs
 * Python, which builds the container (or reports the error) and writes a fresh plan.
 * SHIFTER_REPLAY_DEBUG (set to anything) prints why a plan was not used.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/loop.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "plandir.h"
#include "replay.h"
#include "shifter_contracts.h" /* the contracts' names, written by the build from their Python owners */
#include "sqfs_inproc.h"

#define PLAN_MAX (1 << 20)
#define PLAN_MAGIC PRIVATE_PLAN_MAGIC     /* shifter.runtime.privplan */
#define PLAN_VERSION PRIVATE_PLAN_VERSION
#define KEY_VERSION PRIVATE_PLAN_KEY_VERSION
#define LOOP_RETRY_NS 10000000000LL /* racing launchers and prologs may take each free loop device first */
#define REPORT_REPLAY 'R' /* the builder's report: an operation failed, build through Python */

#ifndef MS_STRICTATIME
#define MS_STRICTATIME (1 << 24)
#endif

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

static const struct {
    const char *name;
    int arity;      /* strings after the name */
    unsigned paths; /* bit i: string i is a path ('@' = the staging directory) */
} RECORDS[N_RECORDS] = {
    [R_KEY] = {"key", 1, 0},
    [R_KIND] = {"kind", 1, 0},
    [R_ROOT] = {"root", 1, 1},
    [R_FUSE] = {"fuse", 1, 0},
    [R_INPUT] = {"input", 2, 0},
    [R_ENV] = {"env", 1, 0},
    [R_USERHOOK] = {"userhook", 1, 0},
    [R_CMD] = {"cmd", 1, 0},
    [O_MKDIR] = {"mkdir", 2, 1},          /* PATH MODE */
    [O_MKDIRP] = {"mkdirp", 1, 1},        /* PATH */
    [O_CHMOD] = {"chmod", 2, 1},          /* PATH MODE */
    [O_SYMLINK] = {"symlink", 2, 2},      /* TARGET (the link's text: not a path) PATH */
    [O_TOUCH] = {"touch", 2, 1},          /* PATH MODE */
    [O_FILE] = {"file", 3, 1},            /* PATH MODE CONTENT */
    [O_MOUNT] = {"mount", 5, 3},          /* SRC TARGET FSTYPE FLAGS DATA */
    [O_UMOUNT] = {"umount", 2, 1},        /* PATH FLAGS */
    [O_BINDKEEP] = {"bindkeep", 4, 3},    /* SRC TARGET FLAGS REC */
    [O_HARDENTREE] = {"hardentree", 2, 1}, /* PATH FLAGS */
    [O_TREEKEEP] = {"treekeep", 3, 1},    /* PATH FLAGS BELOW */
    [O_LOOPMOUNT] = {"loopmount", 3, 3},  /* IMAGE TARGET FLAGS */
    [O_FUSEMOUNT] = {"fusemount", 3, 3},  /* IMAGE TARGET FLAGS */
    [O_COPYTREE] = {"copytree", 2, 3},    /* SRC DST */
    [O_CHDIR] = {"chdir", 1, 1},          /* PATH */
    [O_DROPSTAGING] = {"dropstaging", 2, 3}, /* TARGET SRC */
};

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

static int debug;

static void say(const char *fmt, ...)
{
    if (!debug) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "shifter: private plan: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ------------------------------------------------------------------ the request key */
/* The image the environment requests (env_image_request, the launcher's one rule),
 * if it is `id:` + 64 lowercase hex digits, the only kind replayed; NULL otherwise.
 * `out` holds 68 bytes. */
static const char *image_id_spec(char *out)
{
    if (env_image_request(out, 68) != 1 || strlen(out) != 67 || strncmp(out, "id:", 3) != 0) return NULL;
    for (int k = 3; k < 67; k++)
        if (!((out[k] >= '0' && out[k] <= '9') || (out[k] >= 'a' && out[k] <= 'f'))) return NULL;
    return out;
}

struct sbuf {
    char *p;
    size_t len, cap;
};

static void sb_add(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (b->len + (size_t) n + 1 > b->cap) {
        b->cap = (b->len + (size_t) n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        if (b->p == NULL) {
            fprintf(stderr, "shifter: out of memory\n");
            exit(SHIFTER_EXIT_LAUNCH);
        }
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t) n;
}

static int cmp_gid(const void *a, const void *b)
{
    gid_t x = *(const gid_t *) a, y = *(const gid_t *) b;
    return x < y ? -1 : x > y;
}

/* The request key (docs/private-plans.md, "The request key"; its owner is
 * shifter.runtime.privplan.request_key, tests/data/contracts/request_key.json runs through
 * both) of a caller with these ids and `n` supplementary groups (sorted here). */
static char *request_key_of(uid_t uid, gid_t gid, gid_t *groups, int n, const char *spec)
{
    struct sbuf b = {0};
    sb_add(&b, KEY_VERSION "\nuid=%u\ngid=%u\ngroups=", (unsigned) uid, (unsigned) gid);
    qsort(groups, (size_t) n, sizeof(gid_t), cmp_gid);
    for (int i = 0; i < n; i++)
        if (i == 0 || groups[i] != groups[i - 1]) sb_add(&b, "%s%u", i ? "," : "", (unsigned) groups[i]);
    const char *conf = getenv(ENV_CONFIG);
    if (conf != NULL && conf[0] != '\0') sb_add(&b, "\nconfig=%s", conf);
    else sb_add(&b, "\nconfig=%s/etc/udiRoot.conf", prefix);
    sb_add(&b, "\nimage=%s", spec);
    const char *vol = getenv(ENV_VOLUME);
    if (vol == NULL) vol = getenv(ENV_JOB_VOLUME);
    sb_add(&b, "\nvolume=%s", vol ? vol : "");
    const char *mod = getenv(ENV_MODULE);
    if (mod == NULL) mod = getenv(ENV_JOB_MODULE);
    if (mod != NULL) sb_add(&b, "\nmodule=%s", mod);
    else sb_add(&b, "\nmodule-default");
    return b.p;
}

/* The caller's request key (its own supplementary groups). */
static char *request_key(uid_t uid, gid_t gid, const char *spec)
{
    gid_t small[256], *groups = small;
    int n = getgroups(256, small);
    if (n < 0 && errno == EINVAL) {
        n = getgroups(0, NULL);
        groups = n > 0 ? calloc((size_t) n, sizeof(gid_t)) : NULL;
        n = groups ? getgroups(n, groups) : -1;
    }
    if (n < 0) return NULL;
    return request_key_of(uid, gid, groups, n, spec);
}

static unsigned long long fnv1a(const char *s)
{
    unsigned long long h = 0xcbf29ce484222325ULL;
    for (; *s; s++) {
        h ^= (unsigned char) *s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* ------------------------------------------------------------------ the plan file */
/* The caller's plan directory on this node, if one is theirs alone (plandir.h). */
static int open_plan_dir(uid_t uid)
{
    char path[PLANDIR_MAX];
    const char *why = "";
    int fd = plandir_open(uid, path, &why);
    if (fd < 0) say("no private plan directory of uid %u: %s", (unsigned) uid, why);
    else say("private plan directory %s", path);
    return fd;
}

/* The plan file's content (NUL-terminated after `len` bytes), or NULL. */
static char *read_plan(struct plan_file *pf, uid_t uid, size_t *len)
{
    int fd = openat(pf->dirfd, pf->name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return NULL;
    struct stat st;
    char *buf = NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != uid || (st.st_mode & 022) ||
        st.st_size > PLAN_MAX || (buf = malloc((size_t) st.st_size + 1)) == NULL) {
        say("%s: not a regular file of uid %u, not group/other writable, at most 1 MiB", pf->name, (unsigned) uid);
        close(fd);
        return NULL;
    }
    size_t got = 0;
    while (got < (size_t) st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t) st.st_size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t) r;
    }
    close(fd);
    if (got != (size_t) st.st_size) {
        free(buf);
        return NULL;
    }
    buf[got] = '\0';
    *len = got;
    pf->dev = st.st_dev;
    pf->ino = st.st_ino;
    return buf;
}

/* Remove the plan (its replay failed), unless Python already replaced it. */
static void remove_plan(const struct plan_file *pf)
{
    struct stat st;
    if (fstatat(pf->dirfd, pf->name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_dev == pf->dev && st.st_ino == pf->ino)
        unlinkat(pf->dirfd, pf->name, 0);
}

/* An unsigned number in `base` (8 or 10), at most `max`. */
static int parse_num(const char *s, unsigned base, unsigned long max, unsigned long *out)
{
    if (*s == '\0') return -1;
    unsigned long v = 0;
    for (; *s; s++) {
        unsigned d = (unsigned) (*s - '0');
        if (d >= base || v > max / base) return -1;
        v *= base;
        if (d > max - v) return -1;
        v += d;
    }
    *out = v;
    return 0;
}

/* The numbers of an operation; 0, or -1 if one is malformed. */
static int parse_numbers(struct op *op)
{
    unsigned long v = 0;
    switch (op->type) {
    case O_MKDIR: case O_CHMOD: case O_TOUCH: case O_FILE:
        return parse_num(op->s[1], 8, 07777, &op->mode);
    case O_MOUNT:
        return parse_num(op->s[3], 10, 0xffffffffUL, &op->flags);
    case O_UMOUNT: case O_HARDENTREE: case O_LOOPMOUNT: case O_FUSEMOUNT:
        return parse_num(op->s[op->type == O_UMOUNT || op->type == O_HARDENTREE ? 1 : 2], 10,
                         op->type == O_UMOUNT ? INT_MAX : 0xffffffffUL, &op->flags);
    case O_BINDKEEP:
        if (parse_num(op->s[2], 10, 0xffffffffUL, &op->flags) != 0 || parse_num(op->s[3], 10, 1, &v) != 0) return -1;
        op->below = (long) v;
        return 0;
    case O_TREEKEEP:
        if (parse_num(op->s[1], 10, 0xffffffffUL, &op->flags) != 0) return -1;
        if (strcmp(op->s[2], "-1") == 0) op->below = -1;
        else if (parse_num(op->s[2], 10, 0xffffffffUL, &v) == 0) op->below = (long) v;
        else return -1;
        return 0;
    default:
        return 0;
    }
}

/* A path string: `@`, `@/...` (user plans: the staging directory) or anything else. */
static int bad_at_path(const char *s, int user)
{
    if (s[0] != '@') return 0;
    return !user || !(s[1] == '\0' || s[1] == '/');
}

/* Parse the plan (in place: its strings stay in `buf`).  0, or -1 if it is malformed
 * or not for this caller (key, kind). */
static int parse(char *buf, size_t len, const char *key, uid_t uid, struct pplan *p)
{
    if (len == 0 || buf[len - 1] != '\0') return -1;
    size_t count = 0;
    for (size_t i = 0; i < len; i++)
        if (buf[i] == '\0') count++;
    char **s = calloc(count, sizeof(char *));
    memset(p, 0, sizeof(*p));
    p->input = calloc(count, sizeof(char *));
    p->env = calloc(count, sizeof(char *));
    p->userhook = calloc(count, sizeof(char *));
    p->cmd = calloc(count, sizeof(char *));
    p->ops = calloc(count, sizeof(struct op));
    if (!s || !p->input || !p->env || !p->userhook || !p->cmd || !p->ops) return -1;
    size_t n = 0;
    for (size_t i = 0; i < len; i += strlen(buf + i) + 1) s[n++] = buf + i;
    if (n < 3 || strcmp(s[0], PLAN_MAGIC) != 0 || strcmp(s[1], PLAN_VERSION) != 0) return -1;

    size_t i = 2;
    int ended = 0;
    while (i < n) {
        const char *name = s[i];
        if (strcmp(name, "END") == 0) {
            ended = i == n - 1; /* nothing after END */
            break;
        }
        int type = 0;
        while (type < N_RECORDS && strcmp(RECORDS[type].name, name) != 0) type++;
        if (type == N_RECORDS) {
            say("unknown record %s", name);
            return -1;
        }
        int arity = RECORDS[type].arity;
        if (i + (size_t) arity >= n) return -1; /* and END after it */
        char **a = s + i + 1;
        i += 1 + (size_t) arity;
        switch (type) {
        case R_KEY: if (p->key) return -1; p->key = a[0]; continue;
        case R_KIND: if (p->kind) return -1; p->kind = a[0]; continue;
        case R_ROOT: if (p->root) return -1; p->root = a[0]; continue;
        case R_FUSE: if (p->fuse) return -1; p->fuse = a[0]; continue;
        case R_INPUT:
            p->input[2 * p->n_input] = a[0];
            p->input[2 * p->n_input + 1] = a[1];
            p->n_input++;
            continue;
        case R_ENV: p->env[p->n_env++] = a[0]; continue;
        case R_USERHOOK: p->userhook[p->n_userhook++] = a[0]; continue;
        case R_CMD: p->cmd[p->n_cmd++] = a[0]; continue;
        default: {
            struct op *op = &p->ops[p->n_ops++];
            op->type = type;
            for (int k = 0; k < arity; k++) op->s[k] = a[k];
            if (parse_numbers(op) != 0) {
                say("malformed %s record", name);
                return -1;
            }
            if (type == O_FUSEMOUNT) {
                if (p->fusemount) return -1; /* one image, one helper */
                p->fusemount = op;
            }
        }
        }
    }
    if (!ended || !p->key || !p->kind || !p->root) return -1;
    if (strcmp(p->key, key) != 0) {
        say("the plan is another request's (hash collision)");
        return -1;
    }
    if (strcmp(p->kind, "user") == 0) p->user = 1;
    else if (strcmp(p->kind, "root") != 0) return -1;
    if (p->user != (uid != 0)) return -1;
    if ((p->fuse || p->fusemount) && !(p->user && p->fuse)) return -1;
    for (int k = 0; k < p->n_ops; k++)
        if (p->ops[k].type == O_DROPSTAGING && !p->user) return -1; /* root plans have no staging */

    /* '@' paths: user plans only, `@` or `@/...` */
    if (bad_at_path(p->root, p->user)) return -1;
    for (int k = 0; k < p->n_ops; k++)
        for (int j = 0; j < RECORDS[p->ops[k].type].arity; j++)
            if ((RECORDS[p->ops[k].type].paths >> j & 1) && bad_at_path(p->ops[k].s[j], p->user)) return -1;
    for (int k = 0; k < p->n_input; k++)
        if (p->input[2 * k][0] == '@') return -1;
    return 0;
}

/* Has any file the build read changed?  SIG: dev:ino:size:mtime_s:mtime_ns:ctime_s:ctime_ns
 * (the _ns parts are the nanoseconds within the second), or `-` for a missing file. */
static int inputs_fresh(const struct pplan *p)
{
    for (int k = 0; k < p->n_input; k++) {
        const char *path = p->input[2 * k], *sig = p->input[2 * k + 1];
        struct stat st;
        int same;
        if (stat(path, &st) != 0) {
            same = (errno == ENOENT || errno == ENOTDIR) && strcmp(sig, "-") == 0;
        } else {
            char now[192];
            snprintf(now, sizeof(now), "%llu:%llu:%lld:%lld:%ld:%lld:%ld", (unsigned long long) st.st_dev,
                     (unsigned long long) st.st_ino, (long long) st.st_size, (long long) st.st_mtim.tv_sec,
                     st.st_mtim.tv_nsec, (long long) st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
            same = strcmp(now, sig) == 0;
        }
        if (!same) {
            say("%s changed", path);
            return 0;
        }
    }
    return 1;
}

/* `@` -> staging, `@/x` -> staging/x, in every path of the plan. */
static char *expand(char *s, const char *staging)
{
    if (s[0] != '@') return s;
    size_t size = strlen(staging) + strlen(s);
    char *out = malloc(size);
    if (out == NULL) {
        fprintf(stderr, "shifter: out of memory\n");
        exit(SHIFTER_EXIT_LAUNCH);
    }
    snprintf(out, size, "%s%s", staging, s + 1);
    return out;
}

static void expand_paths(struct pplan *p, const char *staging)
{
    p->root = expand(p->root, staging);
    for (int k = 0; k < p->n_ops; k++)
        for (int j = 0; j < RECORDS[p->ops[k].type].arity; j++)
            if (RECORDS[p->ops[k].type].paths >> j & 1) p->ops[k].s[j] = expand(p->ops[k].s[j], staging);
}

/* ------------------------------------------------------------------ mounts */
static const char *or_null(const char *s)
{
    return s[0] ? s : NULL;
}

static int remount(const char *path, unsigned long flags)
{
    return mount(NULL, path, NULL, MS_REMOUNT | MS_BIND | flags, NULL);
}

/* Add `flags` (only MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC) to the mount at `path`,
 * and with `recursive` to every mount below it, leaving all their other flags alone:
 * what a remount with the mount's own flags added does (bind_keep, tree_keep), without
 * reading them first (a statfs of a FUSE mount is a round trip to its server; mountinfo
 * is the whole mount table).  Adding these flags is allowed on locked mounts too.
 * 1 if done; 0 if not possible here (other flags, or no mount_setattr(2): the caller
 * does it the long way); -1 on error. */
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
struct shifter_mount_attr {
    unsigned long long attr_set, attr_clr, propagation, userns_fd;
};
static int add_mount_flags(const char *path, unsigned long flags, int recursive)
{
    static int unsupported;
    if (unsupported || (flags & ~(unsigned long) (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)) != 0) return 0;
    /* MOUNT_ATTR_RDONLY 1, _NOSUID 2, _NODEV 4, _NOEXEC 8: the MS_ values, as it happens */
    struct shifter_mount_attr attr = {flags, 0, 0, 0};
    if (syscall(SYS_mount_setattr, AT_FDCWD, path, AT_SYMLINK_NOFOLLOW | (recursive ? AT_RECURSIVE : 0), &attr,
                sizeof(attr)) == 0)
        return 1;
    if (errno == ENOSYS) {
        unsupported = 1;
        return 0;
    }
    return -1;
}

/* The per-mount flags of the mount at `path` (statvfs), as linux.mount_flags. */
static int statvfs_flags(const char *path, unsigned long *out)
{
    struct statvfs sv;
    if (statvfs(path, &sv) != 0) return -1;
    unsigned long f = sv.f_flag, flags = 0;
    if (f & ST_RDONLY) flags |= MS_RDONLY;
    if (f & ST_NOSUID) flags |= MS_NOSUID;
    if (f & ST_NODEV) flags |= MS_NODEV;
    if (f & ST_NOEXEC) flags |= MS_NOEXEC;
    if (f & ST_NODIRATIME) flags |= MS_NODIRATIME;
    if (f & ST_NOATIME) flags |= MS_NOATIME;
    else if (f & ST_RELATIME) flags |= MS_RELATIME;
    else flags |= MS_STRICTATIME; /* keep a (locked) strictatime */
    *out = flags;
    return 0;
}

/* A mount's own flags from its mountinfo options (field 6), as linux._opts_flags. */
static unsigned long options_flags(char *opts)
{
    static const struct { const char *name; unsigned long flag; } known[] = {
        {"ro", MS_RDONLY}, {"nosuid", MS_NOSUID}, {"nodev", MS_NODEV}, {"noexec", MS_NOEXEC},
        {"noatime", MS_NOATIME}, {"nodiratime", MS_NODIRATIME}, {"relatime", MS_RELATIME},
    };
    unsigned long flags = 0;
    char *save = NULL;
    for (char *o = strtok_r(opts, ",", &save); o; o = strtok_r(NULL, ",", &save))
        for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++)
            if (strcmp(o, known[k].name) == 0) flags |= known[k].flag;
    if (!(flags & (MS_NOATIME | MS_RELATIME))) flags |= MS_STRICTATIME;
    return flags;
}

/* mountinfo escapes space, tab, newline and backslash as \ooo */
static void unescape(char *s)
{
    char *out = s;
    for (; *s; s++) {
        if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
            *out++ = (char) ((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
            s += 3;
        } else {
            *out++ = *s;
        }
    }
    *out = '\0';
}

struct mnt {
    char *path;
    unsigned long flags; /* its own flags (options_flags) */
};

/* The mounts at `path` (unless `below_only`) and below it, from /proc/self/mountinfo,
 * in mount order; a mount point listed twice (stacked mounts): the later, top one.
 * Returns the count (-1 on error); *list and *text are to be freed. */
/* /proc/self/mountinfo, NUL-terminated (to be freed), or NULL (errno set). */
static char *read_mountinfo(void)
{
    int fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (buf == NULL) {
            close(fd);
            errno = ENOMEM;
            return NULL;
        }
        ssize_t r = read(fd, buf + len, cap - len - 1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int err = errno;
            close(fd);
            free(buf);
            errno = err;
            return NULL;
        }
        if (r == 0) break;
        len += (size_t) r;
        if (cap - len - 1 == 0) {
            char *more = realloc(buf, cap *= 2);
            if (more == NULL) free(buf);
            buf = more;
        }
    }
    close(fd);
    buf[len] = '\0';
    return buf;
}

static int mounts_under(const char *path, int below_only, struct mnt **list, char **text)
{
    char *buf = read_mountinfo();
    if (buf == NULL) return -1;

    size_t plen = strlen(path);
    while (plen > 0 && path[plen - 1] == '/') plen--; /* prefix: path without trailing '/', then '/' */
    int n = 0, cap_list = 16;
    struct mnt *out = malloc((size_t) cap_list * sizeof(*out));
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line && out; line = strtok_r(NULL, "\n", &save)) {
        /* id parent maj:min root MOUNTPOINT OPTIONS ... */
        char *f[6];
        char *c = line;
        int k = 0;
        for (; k < 6 && c; k++) {
            f[k] = c;
            c = strchr(c, ' ');
            if (c) *c++ = '\0';
        }
        if (k < 6) continue;
        unescape(f[4]);
        char *mp = f[4];
        int at = strcmp(mp, path) == 0;
        int under = strncmp(mp, path, plen) == 0 && mp[plen] == '/';
        if (!(under || (at && !below_only))) continue;
        unsigned long flags = options_flags(f[5]);
        int j = 0;
        while (j < n && strcmp(out[j].path, mp) != 0) j++;
        if (j == n) {
            if (n == cap_list) out = realloc(out, (size_t) (cap_list *= 2) * sizeof(*out));
            if (out == NULL) break;
            out[n++].path = mp;
        }
        out[j].flags = flags;
    }
    if (out == NULL) {
        free(buf);
        errno = ENOMEM;
        return -1;
    }
    *list = out;
    *text = buf;
    return n;
}

/* May the caller search the directory holding `mp`? */
static int parent_searchable(const char *mp)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", mp);
    char *slash = strrchr(dir, '/');
    if (slash == NULL) return 0;
    if (slash == dir) slash[1] = '\0';
    else *slash = '\0';
    return access(dir, X_OK) == 0;
}

/* treekeep PATH FLAGS BELOW (linux.remount_tree_keep) */
static int tree_keep(const char *path, unsigned long flags, long below)
{
    if (below < 0 || (unsigned long) below == flags) {
        int done = add_mount_flags(path, flags, 1);
        if (done != 0) return done > 0 ? 0 : -1;
    }
    struct mnt *m;
    char *text;
    int n = mounts_under(path, 0, &m, &text);
    if (n < 0) return -1;
    int rc = 0;
    for (int k = 0; k < n && rc == 0; k++) {
        int top = strcmp(m[k].path, path) == 0;
        unsigned long add = (top || below < 0) ? flags : (unsigned long) below;
        if (remount(m[k].path, add | m[k].flags) != 0) {
            /* a submount below a directory the caller can't search (another user's
             * private dir under /tmp, say): out of the caller's reach anyway */
            if ((errno == EPERM || errno == EACCES) && !top && !parent_searchable(m[k].path)) continue;
            rc = -1;
        }
    }
    free(m);
    free(text);
    return rc;
}

/* hardentree PATH FLAGS (linux.harden_tree) */
static int harden_tree(const char *path, unsigned long flags)
{
    struct mnt *m;
    char *text;
    int n = mounts_under(path, 1, &m, &text);
    if (n < 0) return -1;
    int rc = 0;
    for (int k = 0; k < n && rc == 0; k++)
        rc = remount(m[k].path, flags | (m[k].flags & MS_RDONLY));
    free(m);
    free(text);
    return rc;
}

/* bindkeep SRC TARGET FLAGS REC (linux.bind_keep) */
static int bind_keep(const char *src, const char *target, unsigned long flags, int rec)
{
    if (mount(src, target, NULL, MS_BIND | (rec ? MS_REC : 0), NULL) != 0) return -1;
    int done = flags ? add_mount_flags(target, flags, rec) : 0;
    if (done != 0) return done > 0 ? 0 : -1;
    if (rec) return tree_keep(target, flags, -1);
    if (flags == 0) return 0;
    unsigned long own;
    if (statvfs_flags(target, &own) != 0) return -1;
    return remount(target, flags | own);
}

/* Is the loop device maj:min backed by the file at `real` (a canonical path)? */
static int loop_backed_by(unsigned maj, unsigned min, const char *real)
{
    char path[80], buf[PATH_MAX + 2];
    snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/loop/backing_file", maj, min);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    if (buf[n - 1] == '\n') buf[n - 1] = '\0';
    return strcmp(buf, real) == 0;
}

/* Share a squashfs mount of `image` that already exists on the node (the prepared
 * UDI's, say: a loop device backed by the image, mounted at the image's root) instead
 * of mounting it afresh: bound on `target`, the container uses its superblock and so
 * its warm caches.  Images are named by content (id), so the same file is the same
 * image.  0 when shared; -1 when there is none (nothing changed).  After the bind,
 * which holds the device, the device and its backing file are checked again. */
static int share_image(const char *image, const char *target, unsigned long flags)
{
    char real[PATH_MAX];
    char *text;
    if (realpath(image, real) == NULL || (text = read_mountinfo()) == NULL) return -1;
    int rc = -1;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line && rc != 0; line = strtok_r(NULL, "\n", &save)) {
        /* id parent maj:min root MOUNTPOINT options [optional...] - FSTYPE source superoptions */
        unsigned maj, min;
        char root[8], mp[PATH_MAX];
        char *sep = strstr(line, " - ");
        if (sep == NULL || strncmp(sep + 3, "squashfs ", 9) != 0) continue;
        if (sscanf(line, "%*s %*s %u:%u %7s %4095s", &maj, &min, root, mp) != 4 || strcmp(root, "/") != 0) continue;
        if (!loop_backed_by(maj, min, real)) continue;
        unescape(mp);
        if (bind_keep(mp, target, flags, 0) != 0) continue;
        struct stat st;
        if (stat(target, &st) == 0 && st.st_dev == makedev(maj, min) && loop_backed_by(maj, min, real)) rc = 0;
        else umount2(target, MNT_DETACH);
    }
    free(text);
    return rc;
}

/* loopmount IMAGE TARGET FLAGS: the image's mount on the node, shared (share_image),
 * else a free loop device (read-only, autoclear), mounted squashfs; the mount holds the
 * device, which frees itself when unmounted. */
static int loop_mount(const char *image, const char *target, unsigned long flags)
{
    if (share_image(image, target, flags) == 0) return 0;
    int img = open(image, O_RDONLY | O_CLOEXEC);
    if (img < 0) return -1;
    int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) {
        close(img);
        return -1;
    }
    struct loop_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.fd = (unsigned) img;
    cfg.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
    char dev[32];
    int fd = -1, err = EBUSY;
    struct timespec now, start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    long pause_ns = 500000; /* doubled up to 20 ms; a random part of it is slept */
    unsigned seed = (unsigned) getpid() ^ (unsigned) start.tv_nsec;
    for (;;) {
        int number = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (number < 0) {
            err = errno;
            break;
        }
        snprintf(dev, sizeof(dev), "/dev/loop%d", number);
        fd = open(dev, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            err = errno;
            break;
        }
        if (ioctl(fd, LOOP_CONFIGURE, &cfg) == 0) break;
        err = errno;
        close(fd);
        fd = -1;
        if (err != EBUSY) break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - start.tv_sec) * 1000000000LL + (now.tv_nsec - start.tv_nsec) > LOOP_RETRY_NS) break;
        struct timespec nap = {0, (long) (rand_r(&seed) % (unsigned) pause_ns)};
        nanosleep(&nap, NULL);
        if (pause_ns < 20000000) pause_ns *= 2;
    }
    close(ctl);
    close(img); /* the device holds the file now */
    if (fd < 0) {
        errno = err;
        return -1;
    }
    int rc = mount(dev, target, "squashfs", flags, NULL);
    err = errno;
    close(fd); /* the mount holds the device (autoclear: freed if the mount failed) */
    errno = err;
    return rc;
}

/* fusemount IMAGE TARGET FLAGS: the image's kernel mount on the node, shared
 * (share_image: the kernel enforces the image's modes there too, and the helper, given
 * nothing, exits); else open /dev/fuse (in the new user namespace: the kernel refuses a
 * fd opened outside it), mount, hand the fd to the helper, wait until it serves the
 * mount. */
static int fuse_mount(const struct op *op, const char *fstype, int *sock, uid_t uid, gid_t gid)
{
    if (share_image(op->s[0], op->s[1], op->flags) == 0) {
        close(*sock);
        *sock = -1;
        return 0;
    }
    int fuse = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    int rc = -1;
    if (fuse >= 0) {
        char data[128];
        snprintf(data, sizeof(data), "fd=%d,rootmode=40000,user_id=%u,group_id=%u,default_permissions", fuse,
                 (unsigned) uid, (unsigned) gid);
        rc = mount(op->s[0], op->s[1], fstype, op->flags, data);
        if (rc == 0) {
            char payload[2] = {'f', 'd'};
            struct iovec iov = {payload, sizeof(payload)};
            union {
                char buf[CMSG_SPACE(sizeof(int))];
                struct cmsghdr align;
            } u;
            memset(&u, 0, sizeof(u));
            struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                                 .msg_controllen = sizeof(u.buf)};
            struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &fuse, sizeof(int));
            rc = sendmsg(*sock, &msg, MSG_NOSIGNAL) == (ssize_t) sizeof(payload) ? 0 : -1;
        }
    }
    int err = errno;
    if (fuse >= 0) close(fuse);
    close(*sock); /* the helper gives up if it got nothing */
    *sock = -1;
    errno = err;
    struct stat st;
    if (rc == 0) rc = stat(op->s[1], &st); /* answers once squashfuse serves the mount */
    return rc;
}

/* ------------------------------------------------------------------ files */
/* mkdir -p, as os.makedirs(path, mode, exist_ok=True): missing parents 0777 (before
 * the umask), the last one `mode`; an existing directory is fine. */
static int mkdir_p(const char *path, mode_t mode)
{
    if (mkdir(path, mode) == 0) return 0;
    if (errno == EEXIST) {
        struct stat st;
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return 0;
        errno = EEXIST;
        return -1;
    }
    if (errno != ENOENT) return -1;
    char parent[PATH_MAX];
    if (snprintf(parent, sizeof(parent), "%s", path) >= (int) sizeof(parent)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    size_t len = strlen(parent);
    while (len > 1 && parent[len - 1] == '/') parent[--len] = '\0';
    char *slash = strrchr(parent, '/');
    if (slash == NULL || slash == parent) {
        errno = ENOENT;
        return -1;
    }
    *slash = '\0';
    if (mkdir_p(parent, 0777) != 0) return -1;
    return (mkdir(path, mode) == 0 || errno == EEXIST) ? 0 : -1;
}

/* open(O_CREAT|O_TRUNC|O_NOFOLLOW, 0600), write it all, fchmod MODE */
static int write_whole(const char *path, const char *content, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    size_t len = strlen(content), done = 0;
    while (done < len) {
        ssize_t w = write(fd, content + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        done += (size_t) w;
    }
    int rc = (done == len && fchmod(fd, mode) == 0) ? 0 : -1;
    int err = errno;
    close(fd);
    errno = err;
    return rc;
}

static int copy_data(int in, int out)
{
    for (;;) {
        ssize_t n = sendfile(out, in, NULL, 8 << 20);
        if (n > 0) continue;
        if (n == 0) return 0;
        if (errno == EINTR) continue;
        if (errno != EINVAL && errno != ENOSYS) return -1;
        break; /* no sendfile between these: read/write */
    }
    char buf[65536];
    for (;;) {
        ssize_t r = read(in, buf, sizeof(buf));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return (int) r;
        for (ssize_t done = 0; done < r;) {
            ssize_t w = write(out, buf + done, (size_t) (r - done));
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) return -1;
            done += w;
        }
    }
}

/* Copy the directory open as `s` into the one open as `d` (both fds are consumed):
 * entries recursively, symlinks as symlinks, regular files with their mode and times,
 * then the directory's own mode and times (shutil.copytree(symlinks=True,
 * dirs_exist_ok=True); extended attributes are not copied). */
static int copy_tree(int s, int d)
{
    struct stat top;
    DIR *dir = fstat(s, &top) == 0 ? fdopendir(s) : NULL;
    if (dir == NULL) {
        close(s);
        close(d);
        return -1;
    }
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (errno = 0, de = readdir(dir)) != NULL) {
        const char *name = de->d_name;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) continue;
        struct stat st;
        if (fstatat(s, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            rc = -1;
            break;
        }
        struct timespec times[2] = {st.st_atim, st.st_mtim};
        if (S_ISLNK(st.st_mode)) {
            char target[PATH_MAX];
            ssize_t n = readlinkat(s, name, target, sizeof(target));
            if (n < 0 || n >= (ssize_t) sizeof(target)) {
                if (n >= 0) errno = ENAMETOOLONG;
                rc = -1;
                break;
            }
            target[n] = '\0';
            if (symlinkat(target, d, name) != 0 || utimensat(d, name, times, AT_SYMLINK_NOFOLLOW) != 0) rc = -1;
        } else if (S_ISDIR(st.st_mode)) {
            if (mkdirat(d, name, 0777) != 0 && errno != EEXIST) {
                rc = -1;
                break;
            }
            int cs = openat(s, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            int cd = cs < 0 ? -1 : openat(d, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (cd < 0) {
                if (cs >= 0) close(cs);
                rc = -1;
                break;
            }
            rc = copy_tree(cs, cd);
        } else if (S_ISREG(st.st_mode)) {
            int in = openat(s, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
            int out = in < 0 ? -1 : openat(d, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
            if (out < 0 || copy_data(in, out) != 0 || fchmod(out, st.st_mode & 07777) != 0 ||
                futimens(out, times) != 0)
                rc = -1;
            int err = errno;
            if (in >= 0) close(in);
            if (out >= 0) close(out);
            errno = err;
        } else {
            errno = EINVAL; /* sockets, fifos, devices: shutil fails on them too */
            rc = -1;
        }
    }
    if (rc == 0 && errno != 0) rc = -1; /* readdir failed */
    struct timespec times[2] = {top.st_atim, top.st_mtim};
    if (rc == 0 && (fchmod(d, top.st_mode & 07777) != 0 || futimens(d, times) != 0)) rc = -1;
    int err = errno;
    closedir(dir);
    close(d);
    errno = err;
    return rc;
}

static int copytree(const char *src, const char *dst)
{
    int s = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s < 0) return -1;
    int d = mkdir_p(dst, 0777) == 0 ? open(dst, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (d < 0) {
        close(s);
        return -1;
    }
    return copy_tree(s, d);
}

/* ------------------------------------------------------------------ replay */
struct ctx {
    uid_t uid;
    gid_t gid;
    const char *fuse_type; /* "fuse.<basename of PROG>" */
    int sock;              /* to the squashfuse helper, or -1 */
    const char *staging;   /* the user kind's staging directory, or NULL */
    int plan_dir;          /* the plan directory (plandir.h), open */
};

/* dropstaging TARGET SRC: a recursive bind of SRC on TARGET (bindkeep ... 1) brought
 * along the copy of the staging directory's mount when the staging directory is under
 * SRC (the host's /tmp, say): unmount that copy. */
static int drop_staging(const char *target, const char *src, const char *staging)
{
    if (staging == NULL) {
        errno = EINVAL;
        return -1;
    }
    size_t n = strlen(src), tn = strlen(target);
    while (n > 0 && src[n - 1] == '/') n--;
    while (tn > 0 && target[tn - 1] == '/') tn--;
    if (strncmp(staging, src, n) != 0 || (staging[n] != '/' && staging[n] != '\0')) return 0;
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%.*s%s", (int) tn, target, staging + n) >= (int) sizeof(path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    if (umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW) != 0 && errno != EINVAL && errno != ENOENT) return -1;
    return 0;
}

static int run_op(struct op *op, struct ctx *c)
{
    char **s = op->s;
    int fd;
    switch (op->type) {
    case O_MKDIR:
        return (mkdir(s[0], (mode_t) op->mode) == 0 || errno == EEXIST) ? 0 : -1;
    case O_MKDIRP:
        return mkdir_p(s[0], 0755);
    case O_CHMOD:
        return chmod(s[0], (mode_t) op->mode);
    case O_SYMLINK:
        return symlink(s[0], s[1]);
    case O_TOUCH:
        fd = open(s[0], O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode_t) op->mode);
        return fd < 0 ? -1 : close(fd);
    case O_FILE:
        return write_whole(s[0], s[2], (mode_t) op->mode);
    case O_MOUNT:
        return mount(or_null(s[0]), s[1], or_null(s[2]), op->flags, or_null(s[4]));
    case O_UMOUNT:
        return umount2(s[0], (int) op->flags);
    case O_BINDKEEP:
        return bind_keep(s[0], s[1], op->flags, (int) op->below);
    case O_HARDENTREE:
        return harden_tree(s[0], op->flags);
    case O_TREEKEEP:
        return tree_keep(s[0], op->flags, op->below);
    case O_LOOPMOUNT:
        return loop_mount(s[0], s[1], op->flags);
    case O_FUSEMOUNT:
        return fuse_mount(op, c->fuse_type, &c->sock, c->uid, c->gid);
    case O_COPYTREE:
        return copytree(s[0], s[1]);
    case O_CHDIR:
        return chdir(s[0]);
    case O_DROPSTAGING:
        return drop_staging(s[0], s[1], c->staging);
    }
    errno = EINVAL;
    return -1;
}

/* Run the operations, then chroot into the root.  0, or -1 (errno set). */
static int build(struct pplan *p, struct ctx *c)
{
    for (int k = 0; k < p->n_ops; k++) {
        if (run_op(&p->ops[k], c) != 0) {
            say("%s %s: %s", RECORDS[p->ops[k].type].name, p->ops[k].s[0], strerror(errno));
            return -1;
        }
    }
    if (chdir(p->root) != 0 || chroot(".") != 0 || chdir("/") != 0) {
        say("chroot %s: %s", p->root, strerror(errno));
        return -1;
    }
    return 0;
}

static struct entry entry_of(const struct pplan *p, const char *cwd)
{
    struct entry e = {cwd, p->env, p->n_env, p->userhook, p->n_userhook, p->cmd, p->n_cmd};
    return e;
}

/* ------------------------------------------------------------------ root */
static void replay_root(int argc, char **argv, struct pplan *p, const struct plan_file *pf, const char *cwd)
{
    int ns = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
    if (ns < 0) return;
    if (unshare(CLONE_NEWNS) != 0) {
        close(ns);
        return;
    }
    /* slave: our mounts stay ours, and the host's teardown of its UDI still reaches the
     * copies this namespace holds (see linux.ensure_anchor) */
    struct ctx c = {0, 0, NULL, -1, NULL, -1};
    int failed = mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) != 0;
    if (!failed && build(p, &c) != 0) {
        failed = 1;
        remove_plan(pf);
    }
    if (failed) {
        /* back to the host's namespace: the new one and its mounts die with the last
         * reference, the loop device clears itself */
        if (setns(ns, CLONE_NEWNS) != 0) {
            fprintf(stderr, "shifter: can't return to the host's mount namespace: %s\n", strerror(errno));
            exit(SHIFTER_EXIT_LAUNCH);
        }
        if (chdir(cwd) != 0 && chdir("/") != 0) exit(SHIFTER_EXIT_LAUNCH);
        to_python(argc, argv);
    }
    close(ns);
    struct entry e = entry_of(p, cwd);
    exit(enter_container(&e, argc, argv));
}

/* ------------------------------------------------------------------ user */
static const int FORWARDED[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
#define N_FORWARDED ((int) (sizeof(FORWARDED) / sizeof(FORWARDED[0])))

/* The squashfuse helper: own session (the terminal's ^C is for the command), waits
 * for the mounted /dev/fuse fd, then becomes `PROG -f IMAGE /dev/fd/N`.  Its output
 * goes to /dev/null: if it fails, the fusemount operation fails and Python, replaying
 * the build, reports why. */
static pid_t launcher_pid; /* the supervising process, for its children */

/* A child of the launcher goes when the launcher goes (SIGKILLed, say): the command, like
 * the single process of the other paths, and the image's server. */
static void die_with_launcher(void)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (getppid() != launcher_pid) _exit(SHIFTER_EXIT_LAUNCH); /* it went before prctl */
}

static __attribute__((noreturn)) void helper_main(const char *prog, const char *image, int sock,
                                                  const sigset_t *old_mask)
{
    die_with_launcher();
    setsid();
    /* the image's server must outlive every signal the command may get and handle:
     * Slurm signals all of a step's processes (scancel -s USR1, SIGTERM then KillWait),
     * and without its server every page of the image the command touches is SIGBUS */
    static const int ignored[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGPIPE, SIGALRM,
                                  SIGVTALRM, SIGPROF, SIGXCPU, SIGXFSZ};
    struct sigaction ign;
    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    for (size_t k = 0; k < sizeof(ignored) / sizeof(ignored[0]); k++) sigaction(ignored[k], &ign, NULL);
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        if (null > 2) close(null);
    }
    sigprocmask(SIG_SETMASK, old_mask, NULL);
    /* squashfuse_ll's libraries and the image, loaded while the builder makes its
     * namespaces (sqfs_inproc.c); else exec squashfuse_ll once the fd is here */
    const char *slash = strrchr(prog, '/');
    int inproc = strcmp(slash ? slash + 1 : prog, "squashfuse_ll") == 0 && sqfs_inproc_prepare(image) == 0;
    char payload[16];
    struct iovec iov = {payload, sizeof(payload)};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
    ssize_t r;
    do r = recvmsg(sock, &msg, 0);
    while (r < 0 && errno == EINTR);
    struct cmsghdr *c = r > 0 ? CMSG_FIRSTHDR(&msg) : NULL;
    if (c == NULL || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(int)))
        _exit(SHIFTER_EXIT_OK); /* the builder gave up before mounting */
    int fd; /* received without MSG_CMSG_CLOEXEC: squashfuse inherits it */
    memcpy(&fd, CMSG_DATA(c), sizeof(int));
    if (inproc) sqfs_inproc_serve(fd);
    char dev[32];
    snprintf(dev, sizeof(dev), "/dev/fd/%d", fd);
    char *args[] = {(char *) (slash ? slash + 1 : prog), "-f", (char *) image, dev, NULL};
    execv(prog, args);
    _exit(SHIFTER_EXIT_NOT_FOUND);
}

/* The builder: a new user namespace (the caller mapped to themselves, setgroups
 * denied) and mount namespace (/ recursively private), the operations, chroot, then
 * the command.  A failure before the command reports 'R' on `err` (replay through
 * Python); the exec of the command closes `err` (O_CLOEXEC). */
/* ------------------------------------------------------------------ shared user namespace */
/* One user namespace for all of a user's private containers on the node (see
 * shifter.runtime.launcher.userns): processes in sibling user namespaces can't ptrace,
 * process_vm_readv or open each other's /proc/PID/fd, which MPI's shared memory needs.
 * Join the one named in <plan dir>/userns.<gid> (under an exclusive flock) if it is the
 * caller's with the mapping a new one would have; else create it and name it. */
#ifndef NS_GET_OWNER_UID
#define NS_GET_OWNER_UID _IO(0xb7, 0x4)
#endif

static int read_at(int dirfd, const char *name, char *buf, size_t size)
{
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n < 0) return -1;
    buf[n] = '\0';
    return 0;
}

/* Does `text` read exactly the three numbers a b c? */
static int is_map(const char *text, unsigned a, unsigned b, unsigned c)
{
    unsigned x, y, z;
    char rest;
    return sscanf(text, " %u %u %u %c", &x, &y, &z, &rest) == 3 && x == a && y == b && z == c;
}

static int join_userns(int reg, uid_t uid, gid_t gid)
{
    char buf[32];
    ssize_t n = pread(reg, buf, sizeof(buf) - 1, 0);
    if (n <= 0) return -1;
    buf[n] = '\0';
    char *end;
    long pid = strtol(buf, &end, 10);
    if (pid <= 0 || (*end != '\0' && *end != '\n')) return -1;
    char path[64];
    snprintf(path, sizeof(path), "/proc/%ld", pid);
    /* everything through the /proc/PID fd: a recycled pid fails instead of lying */
    int proc = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (proc < 0) return -1;
    int rc = -1, ns = openat(proc, "ns/user", O_RDONLY | O_CLOEXEC);
    uid_t owner;
    char text[256];
    if (ns >= 0 && ioctl(ns, NS_GET_OWNER_UID, &owner) == 0 && owner == uid &&
        read_at(proc, "setgroups", text, sizeof(text)) == 0 && strncmp(text, "deny", 4) == 0 &&
        read_at(proc, "uid_map", text, sizeof(text)) == 0 && is_map(text, uid, uid, 1) &&
        read_at(proc, "gid_map", text, sizeof(text)) == 0 && is_map(text, gid, gid, 1))
        rc = setns(ns, CLONE_NEWUSER);
    if (ns >= 0) close(ns);
    close(proc);
    return rc;
}

/* The shared user namespace (joined or created) and a new mount namespace: 0, or -1. */
static int enter_userns(int plan_dir, uid_t uid, gid_t gid)
{
    char name[32];
    snprintf(name, sizeof(name), "userns.%u", (unsigned) gid);
    int reg = plan_dir >= 0 ? openat(plan_dir, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600) : -1;
    struct stat st;
    if (reg >= 0 && (fstat(reg, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != uid)) {
        close(reg);
        reg = -1;
    }
    if (reg >= 0 && flock(reg, LOCK_EX) == 0 && join_userns(reg, uid, gid) == 0) {
        close(reg);
        return unshare(CLONE_NEWNS);
    }
    int rc = unshare(CLONE_NEWUSER | CLONE_NEWNS) == 0 ? map_self(uid, gid) : -1;
    if (rc == 0 && reg >= 0) { /* name it (if that fails, it is just not shared) */
        char pid[32];
        int len = snprintf(pid, sizeof(pid), "%d", (int) getpid());
        if (ftruncate(reg, 0) == 0 && pwrite(reg, pid, (size_t) len, 0) != len) ftruncate(reg, 0);
    }
    if (reg >= 0) close(reg); /* and with it the lock */
    return rc;
}

static __attribute__((noreturn)) void builder_main(int argc, char **argv, struct pplan *p, struct ctx *c,
                                                   const char *cwd, int err, const sigset_t *old_mask)
{
    die_with_launcher();
    sigprocmask(SIG_SETMASK, old_mask, NULL);
    if (enter_userns(c->plan_dir, c->uid, c->gid) != 0) goto failed;
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) goto failed;
    if (build(p, c) != 0) goto failed;
    if (c->sock >= 0) close(c->sock);
    struct entry e = entry_of(p, cwd);
    _exit(enter_container(&e, argc, argv));
failed:
    say("building the private container: %s", strerror(errno));
    char report = REPORT_REPLAY;
    if (write(err, &report, 1) < 0) _exit(SHIFTER_EXIT_LAUNCH);
    _exit(SHIFTER_EXIT_LAUNCH);
}

/* Reap `pid` within `seconds` (< 0: wait as long as it takes): 1 reaped (or gone),
 * 0 still running.  SIGCHLD is blocked: wait for it with sigtimedwait. */
static int wait_child(pid_t pid, int *status, double seconds)
{
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    struct timespec now, end;
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += (time_t) seconds;
    end.tv_nsec += (long) ((seconds - (double) (time_t) seconds) * 1e9);
    if (end.tv_nsec >= 1000000000L) {
        end.tv_sec++;
        end.tv_nsec -= 1000000000L;
    }
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid || (r < 0 && errno != EINTR)) return 1;
        struct timespec left = {1, 0};
        if (seconds >= 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            left.tv_sec = end.tv_sec - now.tv_sec;
            left.tv_nsec = end.tv_nsec - now.tv_nsec;
            if (left.tv_nsec < 0) {
                left.tv_sec--;
                left.tv_nsec += 1000000000L;
            }
            if (left.tv_sec < 0) return 0;
        }
        sigtimedwait(&chld, NULL, &left);
    }
}

/* squashfuse exits by itself when the namespace (and so the FUSE mount) is gone; if
 * processes the command left behind keep it alive, stop it: they lose the image. */
static void stop_helper(pid_t helper)
{
    int status;
    if (wait_child(helper, &status, 1.0)) return;
    kill(helper, SIGKILL); /* it ignores the others (helper_main) */
    wait_child(helper, &status, -1);
}

/* Was a signal sent by Slurm's step daemon?  It signals every process of the step,
 * the command included: forwarding it would deliver it twice. */
static int from_step_daemon(const siginfo_t *si)
{
    if (si->si_code != SI_USER && si->si_code != SI_QUEUE) return 0;
    char path[64], comm[32];
    snprintf(path, sizeof(path), "/proc/%d/comm", (int) si->si_pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, comm, sizeof(comm) - 1);
    close(fd);
    return n > 0 && strncmp(comm, "slurmstepd\n", (size_t) n) == 0 && (size_t) n == strlen("slurmstepd\n");
}

/* Forward the listed signals to the builder (later: the command) until it exits,
 * except those the kernel sent (a terminal's ^C already reached the whole foreground
 * process group); its wait status. */
static int supervise(pid_t builder, const sigset_t *waitset)
{
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(waitset, &si);
        if (sig < 0) continue; /* EINTR */
        if (sig == SIGCHLD) {
            int status;
            pid_t r = waitpid(builder, &status, WNOHANG);
            if (r == builder) return status;
            if (r < 0 && errno == ECHILD) return SHIFTER_EXIT_LAUNCH << 8; /* can't happen: SIGCHLD is not ignored */
        } else if (si.si_code != SI_KERNEL && !from_step_daemon(&si)) {
            kill(builder, sig); /* not the terminal's (it signalled the command too), not Slurm's */
        }
    }
}

/* ${TMPDIR:-/tmp}/shifter.<uid>.<pid>.<8 hex>, created 0700 (TMPDIR only if absolute
 * and a directory); the only thing the user kind creates on the host. */
static int make_staging(char *out, size_t size, uid_t uid)
{
    const char *tmp = getenv("TMPDIR");
    struct stat st;
    if (tmp == NULL || tmp[0] != '/' || stat(tmp, &st) != 0 || !S_ISDIR(st.st_mode)) tmp = "/tmp";
    unsigned char rnd[4];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t) sizeof(rnd)) return -1;
    size_t tlen = strlen(tmp);
    int n = snprintf(out, size, "%s%sshifter.%u.%d.%02x%02x%02x%02x", tmp, tmp[tlen - 1] == '/' ? "" : "/",
                     (unsigned) uid, (int) getpid(), rnd[0], rnd[1], rnd[2], rnd[3]);
    if (n < 0 || (size_t) n >= size) return -1;
    return mkdir(out, 0700);
}

static void replay_user(int argc, char **argv, struct pplan *p, const struct plan_file *pf, const char *cwd,
                        uid_t uid, gid_t gid)
{
    char staging[PATH_MAX];
    if (make_staging(staging, sizeof(staging), uid) != 0) {
        say("can't create the staging directory: %s", strerror(errno));
        return; /* Python says why */
    }
    expand_paths(p, staging);
    char fuse_type[PATH_MAX];
    if (p->fuse) {
        const char *slash = strrchr(p->fuse, '/');
        snprintf(fuse_type, sizeof(fuse_type), "fuse.%s", slash ? slash + 1 : p->fuse);
    }
    struct ctx c = {uid, gid, p->fuse ? fuse_type : NULL, -1, staging, pf->dirfd};

    /* the forwarded signals and SIGCHLD wait in sigwaitinfo; SIGCHLD must not be
     * ignored (children would reap themselves) */
    sigset_t waitset, forwarded, old_mask;
    sigemptyset(&forwarded);
    for (int k = 0; k < N_FORWARDED; k++) sigaddset(&forwarded, FORWARDED[k]);
    waitset = forwarded;
    sigaddset(&waitset, SIGCHLD);
    sigprocmask(SIG_BLOCK, &waitset, &old_mask);
    struct sigaction dfl, old_chld;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGCHLD, &dfl, &old_chld);

    pid_t helper = -1, builder = -1;
    launcher_pid = getpid();
    int sock[2] = {-1, -1}, err[2] = {-1, -1}, status = 0, replay_failed = 1;
    if (p->fusemount) {
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sock) != 0) goto done;
        helper = fork();
        if (helper == 0) {
            close(sock[0]);
            helper_main(p->fuse, p->fusemount->s[0], sock[1], &old_mask);
        }
        if (helper < 0) goto done;
        c.sock = sock[0];
    }
    if (pipe2(err, O_CLOEXEC | O_NONBLOCK) != 0) goto done;
    builder = fork();
    if (builder == 0) {
        close(err[0]);
        if (sock[1] >= 0) close(sock[1]);
        builder_main(argc, argv, p, &c, cwd, err[1], &old_mask);
    }
    if (builder < 0) goto done;
    close(err[1]);
    err[1] = -1;
    if (sock[0] >= 0) close(sock[0]);
    if (sock[1] >= 0) close(sock[1]);
    sock[0] = sock[1] = -1;

    status = supervise(builder, &waitset);
    char byte = 0;
    replay_failed = read(err[0], &byte, 1) == 1 && byte == REPORT_REPLAY;
    if (replay_failed) remove_plan(pf);

done:
    for (int k = 0; k < 2; k++) {
        if (sock[k] >= 0) close(sock[k]); /* the helper gives up without a fd */
        if (err[k] >= 0) close(err[k]);
    }
    if (helper > 0) stop_helper(helper);
    if (rmdir(staging) != 0 && errno != ENOENT)
        fprintf(stderr, "shifter: can't remove %s: %s\n", staging, strerror(errno));
    struct timespec zero = {0, 0};
    while (sigtimedwait(&forwarded, NULL, &zero) > 0) {} /* arrived after the command ended */
    if (replay_failed) {
        sigaction(SIGCHLD, &old_chld, NULL);
        sigprocmask(SIG_SETMASK, &old_mask, NULL);
        to_python(argc, argv);
    }
    exit(WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? SHIFTER_EXIT_SIGNAL_BASE + WTERMSIG(status) : SHIFTER_EXIT_LAUNCH);
}

/* ------------------------------------------------------------------ entry */
void replay_private(int argc, char **argv, uid_t uid, gid_t gid)
{
    debug = getenv("SHIFTER_REPLAY_DEBUG") != NULL;
    char spec_buf[68];
    const char *spec = image_id_spec(spec_buf);
    if (spec == NULL) return;
    struct plan_file pf;
    pf.dirfd = open_plan_dir(uid);
    if (pf.dirfd < 0) return;
    char *key = request_key(uid, gid, spec);
    if (key == NULL) goto no_plan;
    snprintf(pf.name, sizeof(pf.name), "%016llx.plan", fnv1a(key));
    size_t len = 0;
    char *buf = read_plan(&pf, uid, &len);
    if (buf == NULL) goto no_plan;
    struct pplan p;
    if (parse(buf, len, key, uid, &p) != 0) {
        say("%s is malformed or not for this request", pf.name);
        goto no_plan;
    }
    if (!inputs_fresh(&p)) goto no_plan;

    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof(cwd)) == NULL) snprintf(cwd, sizeof(cwd), "/");
    if (p.user) replay_user(argc, argv, &p, &pf, cwd, uid, gid);
    else replay_root(argc, argv, &p, &pf, cwd);
no_plan:
    close(pf.dirfd);
}
