/*
 * The job's cgroup on a node, in C: <mount>/shifter/uid_<uid>/job_<job>[/<node>] (the
 * node's level with plugstack cgroup_per_node=1).  Python's side is shifter.wlm.cgroup
 * (job_path); the vectors both follow: tests/data/contracts/job_cgroup.json.  The SPANK shim uses it
 * in the job's extern step, to adopt the cgroup's processes (extern_cgroup=1).
 */
#ifndef SHIFTER_CGROUP_PATH_H
#define SHIFTER_CGROUP_PATH_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

/* A node name that can be a cgroup level: [A-Za-z0-9][A-Za-z0-9._-]{0,63}. */
static int cgroup_node_ok(const char *node)
{
    size_t n = strlen(node);
    if (n == 0 || n > 64) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = node[i];
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-'))) return 0;
    }
    return 1;
}

/* 0 = the path in out; -1 = no such cgroup (bad job id, node name or too long).
 * node NULL: no node level. */
static int cgroup_job_path(const char *mount, uid_t uid, uint32_t job, const char *node, char *out,
                           size_t outlen)
{
    size_t m = strlen(mount);
    while (m > 1 && mount[m - 1] == '/') m--;
    if (m == 1 && mount[0] == '/') m = 0; /* "/" + "/shifter" */
    if (job == 0) return -1;
    int w;
    if (node != NULL) {
        if (!cgroup_node_ok(node)) return -1;
        w = snprintf(out, outlen, "%.*s/shifter/uid_%u/job_%u/%s", (int) m, mount, (unsigned) uid, job, node);
    } else {
        w = snprintf(out, outlen, "%.*s/shifter/uid_%u/job_%u", (int) m, mount, (unsigned) uid, job);
    }
    return (w < 0 || (size_t) w >= outlen) ? -1 : 0;
}

#endif
