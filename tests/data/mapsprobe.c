/* LD_PRELOAD probe for the module tests: when the process exits, print where it loaded
 * libmpich.so.12 from, as /proc/self/maps shows it ("maps RANK PATH"; RANK from
 * SLURM_PROCID, else "-").  ldd alone would miss what is loaded with dlopen. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((destructor)) static void probe(void)
{
    char line[4096], out[4200];
    FILE *maps = fopen("/proc/self/maps", "r");
    const char *rank = getenv("SLURM_PROCID");
    while (maps && fgets(line, sizeof(line), maps)) {
        char *path = strchr(line, '/');
        if (path && strstr(path, "/libmpich.so.12")) {
            int n = snprintf(out, sizeof(out), "maps %s %s", rank ? rank : "-", path);
            if (n > 0 && write(1, out, (size_t) n) < 0) break;
            break;
        }
    }
    if (maps) fclose(maps);
}
