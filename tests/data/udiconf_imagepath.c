/* The tests' driver for spank/udiconf_key.h: `udiconf_imagepath FILE [udiMount]` prints
 * the imagePath (or udiMount) the shim reads from FILE, or exits 1 when it is not sure
 * (tests/unit/test_shim_route.py, vectors tests/data/contracts/udiconf_imagepath.json). */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "udiconf_key.h"

int main(int argc, char **argv)
{
    char out[PATH_MAX];
    if (argc != 2 && !(argc == 3 && strcmp(argv[2], "udiMount") == 0)) return 2;
    if ((argc == 3 ? udiconf_read_udi_mount : udiconf_read_image_path)(argv[1], out, sizeof(out)) != 0)
        return 1;
    printf("%s\n", out);
    return 0;
}
