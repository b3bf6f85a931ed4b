/*
 * The plan directory: where a user's private plans and the rendezvous of their shared
 * user namespace live on a node.  The rule is shifter.runtime.plandir's (read its
 * docstring); this is the same in C, checked against the same vectors
 * (tests/data/contracts/plandir.json).  Candidates, in order, the first that is the caller's
 * alone is used (this side never creates one):
 *   1. /var/lib/shifter/users/<node>/<uid>   made by the job prolog (root)
 *   2. <home>/.shifter/<node>                made by Python (the user)
 * Included by replay_plan.c only (and by the tests' driver).
 */
#ifndef SHIFTER_PLANDIR_H
#define SHIFTER_PLANDIR_H

#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <unistd.h>

#define PLANDIR_TOP "/var/lib"
#define PLANDIR_PARTS "shifter/users"
#define PLANDIR_HOME ".shifter"
#define PLANDIR_MAX 4096

/* The node's name as a path component: bytes outside [A-Za-z0-9._-] become '_', and a
 * '_' goes in front of an empty name or one starting with a dot. */
static void plandir_node_key(const char *host, char *out, size_t size)
{
    size_t n = 0;
    if (host[0] == '\0' || host[0] == '.') out[n++] = '_';
    for (const char *p = host; *p && n + 1 < size; p++) {
        unsigned char c = (unsigned char) *p;
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
                 c == '_' || c == '-';
        out[n++] = ok ? (char) c : '_';
    }
    out[n] = '\0';
}

/* The candidates of `uid` on `node` (a node key) with home directory `home` (NULL: none
 * known): how many (1 or 2); -1 if one does not fit. */
static int plandir_candidates(unsigned uid, const char *node, const char *home, char out[2][PLANDIR_MAX])
{
    int n = snprintf(out[0], PLANDIR_MAX, "%s/%s/%s/%u", PLANDIR_TOP, PLANDIR_PARTS, node, uid);
    if (n < 0 || n >= PLANDIR_MAX) return -1;
    if (home == NULL || home[0] != '/') return 1;
    size_t len = strlen(home);
    while (len > 0 && home[len - 1] == '/') len--;
    n = snprintf(out[1], PLANDIR_MAX, "%.*s/%s/%s", (int) len, home, PLANDIR_HOME, node);
    if (n < 0 || n >= PLANDIR_MAX) return -1;
    return 2;
}

/* Open the directory `name` in `dfd` without following a symlink; it must be owned by
 * `owner` with none of the `forbidden` mode bits.  The fd, or -1. */
static int plandir_openat(int dfd, const char *name, uid_t owner, mode_t forbidden)
{
    int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != owner || (st.st_mode & forbidden)) {
        close(fd);
        errno = EPERM;
        return -1;
    }
    return fd;
}

/* Walk `rel` (components separated by '/') from `dfd`, each as plandir_openat; the last
 * one must be `owner`'s with none of `last_forbidden`, the others root's and not
 * group/other writable.  Consumes `dfd`.  The fd, or -1. */
static int plandir_walk(int dfd, const char *rel, uid_t owner, mode_t last_forbidden)
{
    char part[256];
    const char *p = rel;
    while (dfd >= 0 && *p) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t) (slash - p) : strlen(p);
        if (n == 0 || n >= sizeof(part)) {
            close(dfd);
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(part, p, n);
        part[n] = '\0';
        p += n + (slash ? 1 : 0);
        int last = *p == '\0';
        int fd = plandir_openat(dfd, part, last ? owner : 0, last ? last_forbidden : 022);
        close(dfd);
        dfd = fd;
    }
    return dfd;
}

/* The caller's plan directory on this node, opened, its path in `path` (PLANDIR_MAX
 * bytes); -1 if there is none that is theirs alone (`why` says which failed). */
static int plandir_open(uid_t uid, char *path, const char **why)
{
    struct utsname u;
    char node[sizeof(u.nodename) + 2], cand[2][PLANDIR_MAX], rel[PLANDIR_MAX];
    if (uname(&u) != 0) return -1;
    plandir_node_key(u.nodename, node, sizeof(node));
    /* 1: the prolog's, below root's directories */
    snprintf(rel, sizeof(rel), "%s/%s/%u", PLANDIR_PARTS, node, (unsigned) uid);
    int fd = plandir_walk(open(PLANDIR_TOP, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rel, uid, 077);
    if (plandir_candidates((unsigned) uid, node, NULL, cand) < 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    if (fd >= 0) {
        snprintf(path, PLANDIR_MAX, "%s", cand[0]);
        return fd;
    }
    /* 2: the user's, in the home directory; ~/.shifter must not be writable by others */
    struct passwd *pw = getpwuid(uid);
    if (pw == NULL || plandir_candidates((unsigned) uid, node, pw->pw_dir, cand) != 2) {
        *why = "no prolog-made directory and no home directory";
        return -1;
    }
    int home = open(pw->pw_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int base = home >= 0 ? plandir_openat(home, PLANDIR_HOME, uid, 022) : -1;
    if (home >= 0) close(home);
    fd = base >= 0 ? plandir_openat(base, node, uid, 077) : -1;
    if (base >= 0) close(base);
    if (fd < 0) {
        *why = "neither candidate is a directory of the caller's alone";
        return -1;
    }
    snprintf(path, PLANDIR_MAX, "%s", cand[1]);
    return fd;
}

#endif
