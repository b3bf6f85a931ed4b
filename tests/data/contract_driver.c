/*
 * The contract driver: the compiled launcher's own code (runtime/launcher/launcher.c and
 * runtime/launcher/replay_plan.c included whole, for their static functions; the
 * launcher's other sources linked beside it; all compiled with the flags and the
 * generated shifter_contracts.h of the shipped launcher) answering for the contract
 * vectors in tests/data/contracts/ (tests/unit/test_contracts.py).  It prints each
 * decision as one JSON object and runs nothing.
 *
 *   contract_driver request                      the environment's request (image, volume, modules)
 *   contract_driver key UID GID GROUPS PREFIX    the private plan's request key and file name
 *   contract_driver launchplan FILE              the launch plan, parsed (or invalid)
 *   contract_driver match FILE UID GID           does the environment's request use this prepared UDI
 *   contract_driver privateplan FILE KEY UID     the private plan, parsed (or invalid)
 *   contract_driver records                      the private plan's records: [arity, path bits]
 */
#define main shifter_launcher_main
#include "launcher.c"
#undef main
#include "replay_plan.c"

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) buf = realloc(buf, (cap *= 2) + 1);
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    *len = n;
    return buf;
}

static void json_list(const char *name, const char *const *items, int n)
{
    printf(", \"%s\": [", name);
    for (int i = 0; i < n; i++) {
        if (i) fputs(", ", stdout);
        json_string(items[i]);
    }
    putchar(']');
}

static void json_field(const char *name, const char *value)
{
    printf(", \"%s\": ", name);
    json_string(value);
}

static int do_key(char **argv)
{
    gid_t groups[256];
    int n = 0;
    char *copy = strdup(argv[4]), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t && n < 256; t = strtok_r(NULL, ",", &save))
        groups[n++] = (gid_t) strtoul(t, NULL, 10);
    snprintf(prefix, PATH_MAX, "%s", argv[5]);
    char spec_buf[68];
    const char *spec = image_id_spec(spec_buf);
    char *key = spec ? request_key_of((uid_t) strtoul(argv[2], NULL, 10), (gid_t) strtoul(argv[3], NULL, 10),
                                      groups, n, spec) : NULL;
    char name[32];
    if (key) snprintf(name, sizeof(name), "%016llx.plan", fnv1a(key));
    fputs("{\"key\": ", stdout);
    json_string(key);
    json_field("name", key ? name : NULL);
    fputs("}\n", stdout);
    return 0;
}

static int do_launchplan(const char *path)
{
    size_t len = 0;
    char *buf = slurp(path, &len);
    struct plan p;
    if (buf == NULL || parse_plan(buf, len, &p) != 0) {
        fputs("{\"valid\": false}\n", stdout);
        return 0;
    }
    fputs("{\"valid\": true", stdout);
    json_field("uid", p.uid);
    json_field("gid", p.gid);
    json_field("jobid", p.jobid);
    json_field("image_type", p.image_type);
    json_field("image_id", p.image_id);
    json_field("volumes", p.volumes);
    json_field("modules", p.modules);
    json_field("modules_default", p.modules_default);
    json_field("workdir", p.workdir);
    json_list("cmd", p.cmd, p.n_cmd);
    json_list("env", p.env, p.n_env);
    json_list("userhook", p.userhook, p.n_userhook);
    json_list("gpudev", p.gpudev, p.n_gpudev);
    fputs("}\n", stdout);
    return 0;
}

static int do_match(char **argv)
{
    size_t len = 0;
    char *buf = slurp(argv[2], &len);
    struct plan p;
    int ok = buf != NULL && parse_plan(buf, len, &p) == 0 &&
             matches(&p, (uid_t) strtoul(argv[3], NULL, 10), (gid_t) strtoul(argv[4], NULL, 10));
    printf("{\"match\": %s}\n", ok ? "true" : "false");
    return 0;
}

static int do_privateplan(char **argv)
{
    size_t len = 0;
    char *buf = slurp(argv[2], &len);
    struct pplan p;
    if (buf == NULL || parse(buf, len, argv[3], (uid_t) strtoul(argv[4], NULL, 10), &p) != 0) {
        fputs("{\"valid\": false}\n", stdout);
        return 0;
    }
    fputs("{\"valid\": true", stdout);
    json_field("kind", p.kind);
    json_field("root", p.root);
    json_field("fuse", p.fuse);
    json_list("input", (const char *const *) p.input, 2 * p.n_input);
    json_list("env", p.env, p.n_env);
    json_list("userhook", p.userhook, p.n_userhook);
    json_list("cmd", p.cmd, p.n_cmd);
    fputs(", \"ops\": [", stdout);
    for (int k = 0; k < p.n_ops; k++) {
        fputs(k ? ", [" : "[", stdout);
        json_string(RECORDS[p.ops[k].type].name);
        for (int j = 0; j < RECORDS[p.ops[k].type].arity; j++) {
            fputs(", ", stdout);
            json_string(p.ops[k].s[j]);
        }
        putchar(']');
    }
    fputs("]}\n", stdout);
    return 0;
}

static int do_records(void)
{
    fputs("{", stdout);
    for (int t = 0; t < N_RECORDS; t++) {
        if (t) fputs(", ", stdout);
        json_string(RECORDS[t].name);
        printf(": [%d, %u]", RECORDS[t].arity, RECORDS[t].paths);
    }
    fputs("}\n", stdout);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "request") == 0) return print_request();
    if (argc == 6 && strcmp(argv[1], "key") == 0) return do_key(argv);
    if (argc == 3 && strcmp(argv[1], "launchplan") == 0) return do_launchplan(argv[2]);
    if (argc == 5 && strcmp(argv[1], "match") == 0) return do_match(argv);
    if (argc == 5 && strcmp(argv[1], "privateplan") == 0) return do_privateplan(argv);
    if (argc == 2 && strcmp(argv[1], "records") == 0) return do_records();
    fprintf(stderr, "usage: contract_driver request|key|launchplan|match|privateplan|records ...\n");
    return 2;
}
