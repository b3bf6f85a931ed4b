/* Test helper: `cma` prints its pid and the address of a secret, then waits;
 * `cma PID ADDR` reads it with process_vm_readv (what MPI's intra-node transports do)
 * and prints what it got, or the error. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

static char secret[32] = "secret-of-the-target";

int main(int argc, char **argv)
{
    if (argc == 1) {
        printf("%d %p\n", getpid(), (void *) secret);
        fflush(stdout);
        sleep(10);
        return 0;
    }
    char buf[32] = {0};
    struct iovec local = {buf, 20}, remote = {(void *) strtoul(argv[2], NULL, 16), 20};
    ssize_t n = process_vm_readv((pid_t) atoi(argv[1]), &local, 1, &remote, 1, 0);
    if (n < 0) {
        printf("error: %s\n", strerror(errno));
        return 1;
    }
    printf("read: %s\n", buf);
    return 0;
}
