/*
 * shifter: the squashfs FUSE server of a replayed user container, in the helper
 * process itself (replay.c: helper_main), instead of exec'ing squashfuse_ll.
 *
 * Exec'ing the server puts its start-up (exec, dynamic linking, opening the image) on
 * the critical path: it can only start once the builder has mounted and handed over
 * the /dev/fuse fd.  Here the helper loads libsquashfuse_ll and libfuse3 (dlopen: the
 * launcher itself never links them; its fast path stays lean) and opens the image while
 * the builder is still creating its namespaces; once the fd arrives it only starts the
 * session.  The same library functions squashfuse_ll's own main uses, so the same
 * filesystem is served.
 *
 * Built only where the headers are (libsquashfuse-dev, libfuse3-dev); without them, or
 * when the libraries can't be loaded at run time, sqfs_inproc_prepare() returns -1 and
 * the helper execs squashfuse_ll as before.
 */
#include "sqfs_inproc.h"
#include "exit_codes.h" /* generated at build time from shifter/exit_codes.py */

#if defined(__has_include)
#if __has_include(<squashfuse/ll.h>) && __has_include(<fuse3/fuse_lowlevel.h>)
#define HAVE_SQFS_LL 1
#endif
#endif

#ifdef HAVE_SQFS_LL
#include <squashfuse/ll.h>

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static struct {
    sqfs_ll *ll;
    struct fuse_lowlevel_ops ops;
    struct fuse_session *(*session_new)(struct fuse_args *, const struct fuse_lowlevel_ops *, size_t, void *);
    int (*session_mount)(struct fuse_session *, const char *);
    int (*session_loop)(struct fuse_session *);
} S;

#define LOAD(lib, var, name)                         \
    do {                                             \
        *(void **) &(var) = dlsym((lib), (name));    \
        if ((var) == NULL) return -1;                \
    } while (0)

int sqfs_inproc_prepare(const char *image)
{
    void *fuse = dlopen("libfuse3.so.3", RTLD_NOW | RTLD_GLOBAL);
    void *sq = fuse ? dlopen("libsquashfuse_ll.so.0", RTLD_NOW) : NULL;
    if (sq == NULL) return -1;
    sqfs_ll *(*open_image)(const char *, size_t);
    LOAD(sq, open_image, "sqfs_ll_open");
    LOAD(fuse, S.session_new, "fuse_session_new");
    LOAD(fuse, S.session_mount, "fuse_session_mount");
    LOAD(fuse, S.session_loop, "fuse_session_loop");
    /* the operations squashfuse_ll's own main serves */
    static const char *const names[] = {"getattr", "opendir", "releasedir", "readdir", "lookup", "open",
                                        "create", "release", "read", "readlink", "listxattr", "getxattr",
                                        "forget"};
    void **slots[] = {(void **) &S.ops.getattr, (void **) &S.ops.opendir, (void **) &S.ops.releasedir,
                      (void **) &S.ops.readdir, (void **) &S.ops.lookup, (void **) &S.ops.open,
                      (void **) &S.ops.create, (void **) &S.ops.release, (void **) &S.ops.read,
                      (void **) &S.ops.readlink, (void **) &S.ops.listxattr, (void **) &S.ops.getxattr,
                      (void **) &S.ops.forget};
    memset(&S.ops, 0, sizeof(S.ops));
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        char symbol[64];
        snprintf(symbol, sizeof(symbol), "sqfs_ll_op_%s", names[k]);
        if ((*slots[k] = dlsym(sq, symbol)) == NULL) return -1;
    }
    S.ll = open_image(image, 0);
    return S.ll ? 0 : -1;
}

void sqfs_inproc_serve(int fuse_fd)
{
    char *argv[] = {"squashfuse_ll", NULL};
    struct fuse_args args = FUSE_ARGS_INIT(1, argv);
    struct fuse_session *se = S.session_new(&args, &S.ops, sizeof(S.ops), S.ll);
    char dev[32];
    snprintf(dev, sizeof(dev), "/dev/fd/%d", fuse_fd);
    if (se == NULL || S.session_mount(se, dev) != 0) _exit(SHIFTER_EXIT_FAILURE);
    /* returns when the mount goes away (the container's namespace died) */
    _exit(S.session_loop(se) < 0 ? SHIFTER_EXIT_FAILURE : SHIFTER_EXIT_OK);
}

#else

int sqfs_inproc_prepare(const char *image)
{
    (void) image;
    return -1;
}

void sqfs_inproc_serve(int fuse_fd)
{
    (void) fuse_fd;
    _exit(SHIFTER_EXIT_NOT_FOUND); /* as when the helper's execv of squashfuse fails */
}

#endif
