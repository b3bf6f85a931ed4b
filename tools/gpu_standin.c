/* A stand-in GPU driver for the local site, which has no GPU (tools.gpu).
 *
 * Built twice:
 *   cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o libcuda.so.1 gpu_standin.c
 *       the driver library: standin_devices() reports which device files of the stand-in
 *       devices directory (STANDIN_DEVDIR: nvidiactl, nvidia0 ... nvidia63) it can open;
 *   cc -DSTANDIN_SMI -o nvidia-smi gpu_standin.c libcuda.so.1
 *       the tool: prints where libcuda.so.1 was loaded from (its line of /proc/self/maps)
 *       and one line per device file it could open:
 *           libcuda /opt/udiImage/modules/gpu/lib64/libcuda.so.1
 *           device /gpu-standin/nvidiactl
 *           gpu 1 /gpu-standin/nvidia1
 *       or "no devices were found" when it opened no GPU.
 * The device files are empty regular files standing in for /dev/nvidia*: a real driver
 * opens /dev/nvidia<N>, this one STANDIN_DEVDIR/nvidia<N>.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#ifndef STANDIN_DEVDIR
#define STANDIN_DEVDIR "/gpu-standin"
#endif

#ifndef STANDIN_SMI
/* Calls report(kind, number, path) for each device file it can open; returns the number
 * of GPUs opened. */
int standin_devices(void (*report)(const char *kind, int number, const char *path))
{
    char path[256];
    int gpus = 0;
    snprintf(path, sizeof(path), "%s/nvidiactl", STANDIN_DEVDIR);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        close(fd);
        report("device", -1, path);
    }
    for (int i = 0; i < 64; i++) {
        snprintf(path, sizeof(path), "%s/nvidia%d", STANDIN_DEVDIR, i);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        close(fd);
        report("gpu", i, path);
        gpus++;
    }
    return gpus;
}
#else
int standin_devices(void (*report)(const char *kind, int number, const char *path));

static void print(const char *kind, int number, const char *path)
{
    if (number >= 0) printf("%s %d %s\n", kind, number, path);
    else printf("%s %s\n", kind, path);
}

int main(void)
{
    char line[4096];
    FILE *maps = fopen("/proc/self/maps", "r");
    while (maps && fgets(line, sizeof(line), maps)) {
        char *path = strchr(line, '/');
        if (path && strstr(path, "libcuda.so")) {
            printf("libcuda %s", path);
            break;
        }
    }
    if (maps) fclose(maps);
    if (standin_devices(print) == 0) printf("no devices were found\n");
    return 0;
}
#endif
