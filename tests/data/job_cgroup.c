/* The tests' driver for spank/cgroup_path.h: `job_cgroup MOUNT UID JOB [NODE]` prints the
 * job's cgroup path, or exits 1 (tests/unit/test_cgroup.py, tests/data/contracts/job_cgroup.json). */
#include <limits.h>
#include <stdlib.h>

#include "cgroup_path.h"

int main(int argc, char **argv)
{
    char out[PATH_MAX];
    if (argc != 4 && argc != 5) return 2;
    if (cgroup_job_path(argv[1], (uid_t) strtoul(argv[2], NULL, 10), (uint32_t) strtoul(argv[3], NULL, 10),
                        argc == 5 ? argv[4] : NULL, out, sizeof(out)) != 0)
        return 1;
    printf("%s\n", out);
    return 0;
}
