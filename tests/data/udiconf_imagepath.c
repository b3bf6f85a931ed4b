/* The tests' driver for spank/udiconf_key.h: `udiconf_imagepath FILE` prints the
 * imagePath the shim reads from FILE, or exits 1 when the shim would ask Python
 * (tests/unit/test_shim_route.py, vectors tests/data/udiconf_imagepath.json). */
#include <limits.h>
#include <stdio.h>

#include "udiconf_key.h"

int main(int argc, char **argv)
{
    char out[PATH_MAX];
    if (argc != 2) return 2;
    if (udiconf_read_image_path(argv[1], out, sizeof(out)) != 0) return 1;
    printf("%s\n", out);
    return 0;
}
