/*
 * shifter: entering a container, the last steps every way in shares (the launcher's fast
 * path, launcher.c, and both kinds of plan replay, replay.c), and the way out to Python.
 *
 *   to_python        exec <prefix>/bin/python -I -m shifter.runtime.launcher.launch ARGS...
 *   map_self         a new user namespace's maps: the caller as themselves, setgroups denied
 *   enter_container  once chrooted into the container: no_new_privs, the caller's directory,
 *                    the environment (the caller's, then the plan's rules), the modules'
 *                    userhooks, exec of the command
 *
 * It uses no other unit of the launcher (container.h says what it gives).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "container.h"

extern char **environ;

char prefix[PATH_MAX];

/* ------------------------------------------------------------------ fallback */
void to_python(int argc, char **argv)
{
    char python[PATH_MAX + 32];
    snprintf(python, sizeof(python), "%s/bin/python", prefix);
    char **args = calloc((size_t) argc + 5, sizeof(char *));
    if (args == NULL) {
        fprintf(stderr, "shifter: out of memory\n");
        exit(SHIFTER_EXIT_LAUNCH);
    }
    int n = 0;
    args[n++] = python;
    args[n++] = "-I";
    args[n++] = "-m";
    args[n++] = "shifter.runtime.launcher.launch";
    for (int i = 1; i < argc; i++) args[n++] = argv[i];
    args[n] = NULL;
    execv(python, args);
    fprintf(stderr, "shifter: can't start %s: %s\n", python, strerror(errno));
    exit(SHIFTER_EXIT_LAUNCH);
}

/* ------------------------------------------------------------------ user namespace */
static int write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t len = (ssize_t) strlen(text);
    int ok = write(fd, text, (size_t) len) == len;
    close(fd);
    return ok ? 0 : -1;
}

int map_self(uid_t uid, gid_t gid)
{
    char map[64];
    if (write_file("/proc/self/setgroups", "deny") != 0) return -1;
    snprintf(map, sizeof(map), "%u %u 1", (unsigned) uid, (unsigned) uid);
    if (write_file("/proc/self/uid_map", map) != 0) return -1;
    snprintf(map, sizeof(map), "%u %u 1", (unsigned) gid, (unsigned) gid);
    return write_file("/proc/self/gid_map", map);
}

/* ------------------------------------------------------------------ environment */
static char **env_copy;
static int env_n, env_cap;

static int env_find(const char *name, size_t len)
{
    for (int i = 0; i < env_n; i++)
        if (strncmp(env_copy[i], name, len) == 0 && env_copy[i][len] == '=') return i;
    return -1;
}

static void env_put(const char *name, size_t len, const char *value)
{
    size_t size = len + strlen(value) + 2;
    char *entry = malloc(size);
    snprintf(entry, size, "%.*s=%s", (int) len, name, value);
    int i = env_find(name, len);
    if (i >= 0) {
        env_copy[i] = entry;
        return;
    }
    if (env_n + 2 > env_cap) {
        env_cap = env_cap * 2 + 16;
        env_copy = realloc(env_copy, (size_t) env_cap * sizeof(char *));
    }
    env_copy[env_n++] = entry;
    env_copy[env_n] = NULL;
}

static void env_apply(const char *op)
{
    char kind = op[0];
    const char *body = op + 1;
    if (kind == '-') {
        int i = env_find(body, strlen(body));
        if (i >= 0) {
            env_copy[i] = env_copy[--env_n];
            env_copy[env_n] = NULL;
        }
        return;
    }
    const char *eq = strchr(body, '=');
    if (eq == NULL) return;
    size_t len = (size_t) (eq - body);
    const char *value = eq + 1;
    int i = env_find(body, len);
    const char *old = (i >= 0) ? env_copy[i] + len + 1 : NULL;
    if (kind == '=' || old == NULL || old[0] == '\0') {
        env_put(body, len, value);
    } else {
        size_t size = strlen(old) + strlen(value) + 2;
        char *joined = malloc(size);
        if (kind == '<') snprintf(joined, size, "%s:%s", value, old);
        else snprintf(joined, size, "%s:%s", old, value);
        env_put(body, len, joined);
    }
}

/* ------------------------------------------------------------------ entering */
/* The last steps of every way in (the fast path and both kinds of replay), once
 * chrooted into the container: no_new_privs, the caller's working directory, the
 * environment (the caller's, then the plan's rules, SHIFTER_RUNTIME=1), the modules'
 * userhooks, exec of the command (argv[1..], else the image's CMD, else /bin/sh).
 * Returns only on failure, the exit status (one line on stderr). */
int enter_container(const struct entry *e, int argc, char **argv)
{
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        fprintf(stderr, "shifter: can't enter the container: no_new_privs: %s\n", strerror(errno));
        return SHIFTER_EXIT_LAUNCH;
    }
    if (chdir(e->cwd) != 0) {
        fprintf(stderr, "shifter: %s does not exist in the container, starting in /\n", e->cwd);
        if (chdir("/") != 0) {
            fprintf(stderr, "shifter: can't enter the container: /: %s\n", strerror(errno));
            return SHIFTER_EXIT_LAUNCH;
        }
    }

    /* environment: the caller's, then the plan's rules */
    for (char **v = environ; *v; v++) env_n++;
    env_cap = env_n + 16;
    env_copy = calloc((size_t) env_cap, sizeof(char *));
    for (int i = 0; i < env_n; i++) env_copy[i] = environ[i];
    for (int i = 0; i < e->n_env; i++) env_apply(e->env[i]);
    env_put("SHIFTER_RUNTIME", 15, "1");
    environ = env_copy; /* execvp searches the container's PATH */

    for (int i = 0; i < e->n_userhook; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            execl("/bin/sh", "sh", e->userhook[i], (char *) NULL);
            _exit(SHIFTER_EXIT_NOT_FOUND);
        }
        int status = 0;
        if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "shifter: module userhook %s failed\n", e->userhook[i]);
            return SHIFTER_EXIT_LAUNCH;
        }
    }

    char **cmd = argv + 1;
    char *shell[] = {"/bin/sh", NULL};
    if (argc < 2) cmd = e->n_cmd > 0 ? (char **) e->cmd : shell; /* e->cmd[n_cmd] is NULL */
    execvp(cmd[0], cmd);
    int err = errno;
    fprintf(stderr, "shifter: can't run %s: %s\n", cmd[0], strerror(err));
    return (err == ENOENT || err == ENOTDIR) ? SHIFTER_EXIT_NOT_FOUND : SHIFTER_EXIT_NOT_EXECUTABLE;
}
