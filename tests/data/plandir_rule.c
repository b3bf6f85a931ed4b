/* The tests' driver for runtime/launcher/plandir.h: `plandir_rule UID HOSTNAME [HOME]` prints the
 * node key, then the candidates, one per line (tests/unit/test_plandir.py). */
#include <stdlib.h>

#include "plandir.h"

int main(int argc, char **argv)
{
    if (argc < 3) return 2;
    char node[512], out[2][PLANDIR_MAX];
    plandir_node_key(argv[2], node, sizeof(node));
    int n = plandir_candidates((unsigned) strtoul(argv[1], NULL, 10), node, argc > 3 ? argv[3] : NULL, out);
    if (n < 0) return 1;
    printf("%s\n", node);
    for (int i = 0; i < n; i++) printf("%s\n", out[i]);
    return 0;
}
