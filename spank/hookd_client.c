/*
 * The shim's side of the node's hook server (shifter.spank.hookd, docs/dev.md): the job
 * prolog and epilog are sent to a server that has Python and the runtime loaded, instead
 * of starting Python in this slurmstepd.  The request's records and the answer's lines are
 * defined by shifter.spank.hookd (tests/unit/test_hookd.py runs this code against it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <slurm/spank.h>

#include "hookd_client.h"

extern char **environ;

struct buf { char *data; size_t len, cap; int failed; };

static void put(struct buf *b, const char *key, const char *value)
{
    size_t need = strlen(key) + 1 + strlen(value) + 1;
    if (b->failed) return;
    if (b->len + need > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 8192);
        while (cap < b->len + need) cap *= 2;
        char *d = realloc(b->data, cap);
        if (d == NULL) { b->failed = 1; return; }
        b->data = d;
        b->cap = cap;
    }
    b->len += (size_t) sprintf(b->data + b->len, "%s=%s", key, value) + 1; /* keeps the NUL */
}

static int valid_node(const char *node)
{
    return node != NULL && *node && node[0] != '.' && strchr(node, '/') == NULL && strlen(node) <= 64;
}

static int safe_dir(void)
{
    struct stat st;
    return lstat(HOOKD_DIR, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == 0 && (st.st_mode & 077) == 0;
}

static int send_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        data += n;
        len -= (size_t) n;
    }
    return 0;
}

static int build_request(struct buf *b, const char *hook, spank_t sp, int ac, char **av, int nopt,
                         const char **names, const char **values)
{
    char num[32], opt[8192];
    uint32_t job = 0;
    uid_t uid;
    gid_t gid;
    put(b, "hook", hook);
    snprintf(num, sizeof(num), "%d", (int) spank_context());
    put(b, "ctx", num);
    if (spank_get_item(sp, S_JOB_ID, &job) == ESPANK_SUCCESS) {
        snprintf(num, sizeof(num), "%u", job);
        put(b, "job", num);
    }
    if (spank_get_item(sp, S_JOB_UID, &uid) == ESPANK_SUCCESS) {
        snprintf(num, sizeof(num), "%u", (unsigned) uid);
        put(b, "uid", num);
    }
    if (spank_get_item(sp, S_JOB_GID, &gid) == ESPANK_SUCCESS) {
        snprintf(num, sizeof(num), "%u", (unsigned) gid);
        put(b, "gid", num);
    }
    for (int i = 0; i < ac; i++) put(b, "arg", av[i]);
    for (int i = 0; i < nopt; i++) {
        if ((size_t) snprintf(opt, sizeof(opt), "%s=%s", names[i], values[i]) >= sizeof(opt)) return -1;
        put(b, "opt", opt);
    }
    for (char **e = environ; e && *e; e++)
        if (strchr(*e, '=') != NULL && **e != '=') put(b, "env", *e);
    if (b->failed) return -1;
    if (b->len + 4 > b->cap) {
        char *d = realloc(b->data, b->len + 4);
        if (d == NULL) return -1;
        b->data = d;
    }
    memcpy(b->data + b->len, "end", 4);
    b->len += 4;
    return 0;
}

/* One answer line: log it; returns 1 for "R 1", -1 for "R -1", 2 for "S", 0 otherwise. */
static int answer_line(char *line, int first)
{
    if (line[0] == 'S' && line[1] == '\0') return first ? 2 : 0;
    if (line[0] == '\0' || line[1] != ' ') return 0;
    const char *text = line + 2;
    switch (line[0]) {
    case 'I': slurm_info("%s", text); return 0;
    case 'E': slurm_error("%s", text); return 0;
    case 'V': slurm_verbose("%s", text); return 0;
    case 'R': return strcmp(text, "1") == 0 ? 1 : -1;
    default: return 0;
    }
}

int hookd_call(const char *hook, spank_t sp, int ac, char **av, int nopt,
               const char **names, const char **values)
{
    const char *node = getenv("SLURMD_NODENAME");
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    struct buf req = { 0 };
    char in[65536];
    size_t have = 0;
    int fd, result = -3, lines = 0;

    if (!valid_node(node) || !safe_dir()) return -2;
    if ((size_t) snprintf(addr.sun_path, sizeof(addr.sun_path), HOOKD_DIR "/%s.sock", node)
        >= sizeof(addr.sun_path)) return -2;
    if (build_request(&req, hook, sp, ac, av, nopt, names, values) != 0) {
        free(req.data);
        return -2;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *) &addr, sizeof(addr)) != 0 ||
        send_all(fd, req.data, req.len) != 0) {
        if (fd >= 0) close(fd);
        free(req.data);
        return -2;
    }
    free(req.data);
    while (result == -3) {
        ssize_t n = read(fd, in + have, sizeof(in) - 1 - have);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        have += (size_t) n;
        in[have] = '\0';
        char *start = in, *nl;
        while (result == -3 && (nl = strchr(start, '\n')) != NULL) {
            *nl = '\0';
            int r = answer_line(start, lines++ == 0);
            if (r == 1) result = 0;
            else if (r == -1) result = -1;
            else if (r == 2) result = -2;
            start = nl + 1;
        }
        have = (size_t) (in + have - start);
        memmove(in, start, have);
        if (have == sizeof(in) - 1) have = 0; /* an overlong line: dropped */
    }
    close(fd);
    if (result == -3) {
        slurm_error("shifter: the node's hook server stopped during %s (its log: " HOOKD_DIR "/%s.log)",
                    hook, node);
        return -1;
    }
    return result;
}

void start_hookd(const char *python)
{
    const char *node = getenv("SLURMD_NODENAME");
    if (!valid_node(node)) return;
    pid_t pid = fork();
    if (pid < 0) return;
    if (pid == 0) {
        sigset_t none;
        char log[256];
        if (setsid() < 0 || fork() != 0) _exit(0);
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
        umask(022);
        if (chdir("/") != 0) _exit(1);
        int null = open("/dev/null", O_RDWR);
        int out = -1;
        (void) mkdir("/run/shifter", 0755);
        (void) mkdir(HOOKD_DIR, 0700);
        snprintf(log, sizeof(log), HOOKD_DIR "/%s.log", node);
        if (safe_dir()) out = open(log, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW, 0600);
        if (null < 0) _exit(1);
        dup2(null, 0);
        dup2(out >= 0 ? out : null, 1);
        dup2(out >= 0 ? out : null, 2);
        for (int i = 3; i < 65536; i++) close(i);
        char *argv[] = { (char *) python, "-I", "-m", "shifter.spank.hookd", (char *) node, NULL };
        char *envp[] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL };
        execve(python, argv, envp);
        _exit(127);
    }
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
}
