/* The squashfs FUSE server in the helper process (sqfs_inproc.c). */
#ifndef SHIFTER_SQFS_INPROC_H
#define SHIFTER_SQFS_INPROC_H

/* Load the libraries and open the image: 0, or -1 (then exec squashfuse_ll). */
int sqfs_inproc_prepare(const char *image);
/* Serve the mounted /dev/fuse fd until the mount goes away; never returns. */
__attribute__((noreturn)) void sqfs_inproc_serve(int fuse_fd);

#endif
