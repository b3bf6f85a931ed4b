/*
 * shifter: the private plan, read (docs/private-plans.md).  No setuid bit, no Python.
 *
 * The caller's plan for the request their environment makes: its request key (the
 * owner is shifter.runtime.privplan.request_key; tests/data/contracts/request_key.json),
 * its file <plan directory>/<FNV-1a of the key>.plan (plandir.h) read when it is the
 * caller's alone, parsed strictly (tests/data/contracts/private_plan.json), and its
 * input files checked unchanged.  The replay (replay.c) runs what this finds.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "container.h"
#include "envrequest.h"
#include "plandir.h"
#include "replay_plan.h"
#include "shifter_contracts.h" /* the contracts' names, written by the build from their Python owners */

#define PLAN_MAX (1 << 20)
#define PLAN_MAGIC PRIVATE_PLAN_MAGIC     /* shifter.runtime.privplan */
#define PLAN_VERSION PRIVATE_PLAN_VERSION
#define KEY_VERSION PRIVATE_PLAN_KEY_VERSION

const struct record RECORDS[N_RECORDS] = {
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

static int debug;

void say(const char *fmt, ...)
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
void remove_plan(const struct plan_file *pf)
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

/* One record of the plan into `p`: a setting, or an operation (its numbers parsed).
 * 0, or -1 if it is malformed or repeats a setting there is one of. */
static int add_record(struct pplan *p, int type, char **a)
{
    switch (type) {
    case R_KEY: if (p->key) return -1; p->key = a[0]; return 0;
    case R_KIND: if (p->kind) return -1; p->kind = a[0]; return 0;
    case R_ROOT: if (p->root) return -1; p->root = a[0]; return 0;
    case R_FUSE: if (p->fuse) return -1; p->fuse = a[0]; return 0;
    case R_INPUT:
        p->input[2 * p->n_input] = a[0];
        p->input[2 * p->n_input + 1] = a[1];
        p->n_input++;
        return 0;
    case R_ENV: p->env[p->n_env++] = a[0]; return 0;
    case R_USERHOOK: p->userhook[p->n_userhook++] = a[0]; return 0;
    case R_CMD: p->cmd[p->n_cmd++] = a[0]; return 0;
    }
    struct op *op = &p->ops[p->n_ops++];
    op->type = type;
    for (int k = 0; k < RECORDS[type].arity; k++) op->s[k] = a[k];
    if (parse_numbers(op) != 0) {
        say("malformed %s record", RECORDS[type].name);
        return -1;
    }
    if (type == O_FUSEMOUNT) {
        if (p->fusemount) return -1; /* one image, one helper */
        p->fusemount = op;
    }
    return 0;
}

/* The records read: is the plan this caller's (key, kind), with the settings it must
 * have and only the operations and `@` paths its kind may have?  0, or -1. */
static int check_plan(struct pplan *p, const char *key, uid_t uid)
{
    if (!p->key || !p->kind || !p->root) return -1;
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
        if (add_record(p, type, s + i + 1) != 0) return -1;
        i += 1 + (size_t) arity;
    }
    if (!ended) return -1;
    return check_plan(p, key, uid);
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

/* `@` -> staging, `@/x` -> staging/x */
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

void expand_paths(struct pplan *p, const char *staging)
{
    p->root = expand(p->root, staging);
    for (int k = 0; k < p->n_ops; k++)
        for (int j = 0; j < RECORDS[p->ops[k].type].arity; j++)
            if (RECORDS[p->ops[k].type].paths >> j & 1) p->ops[k].s[j] = expand(p->ops[k].s[j], staging);
}

/* ------------------------------------------------------------------ the plan */
int find_plan(uid_t uid, gid_t gid, struct plan_file *pf, struct pplan *p)
{
    debug = getenv("SHIFTER_REPLAY_DEBUG") != NULL;
    char spec_buf[68];
    const char *spec = image_id_spec(spec_buf);
    if (spec == NULL) return -1;
    pf->dirfd = open_plan_dir(uid);
    if (pf->dirfd < 0) return -1;
    char *key = request_key(uid, gid, spec);
    if (key == NULL) goto no_plan;
    snprintf(pf->name, sizeof(pf->name), "%016llx.plan", fnv1a(key));
    size_t len = 0;
    char *buf = read_plan(pf, uid, &len);
    if (buf == NULL) goto no_plan;
    if (parse(buf, len, key, uid, p) != 0) {
        say("%s is malformed or not for this request", pf->name);
        goto no_plan;
    }
    if (!inputs_fresh(p)) goto no_plan;
    return 0;
no_plan:
    close(pf->dirfd);
    return -1;
}
