/*
 * shifter: the operations a private plan replays (docs/private-plans.md): mounts (bind
 * keeping flags, read-only trees, the image's squashfs on a loop device or FUSE, shared
 * with a mount of the same image on the node), files and directories, and tree copies.
 * Each does what its Python twin does (shifter.runtime.linux, the executor
 * shifter.runtime.builder.execute); run_op is the one way in (replay_ops.h).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/loop.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "replay_ops.h"

#define LOOP_RETRY_NS 10000000000LL /* racing launchers and prologs may take each free loop device first */

#ifndef MS_STRICTATIME
#define MS_STRICTATIME (1 << 24)
#endif

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

int run_op(struct op *op, struct ctx *c)
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

