/*
 * The SPANK shim: the requests it hands over without Python (shim.h), in
 * slurm_spank_init_post_opt of sbatch, salloc and srun.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <slurm/spank.h>

#include "shifter_contracts.h" /* the contracts' names, written by the build from their Python owners */
#include "shim.h"

/* ------------------------------------------------------------------------ */
/* requests the shim handles without Python                                  */
/*
 * The contract (Python's side: shifter.spank.request; vectors both follow:
 * tests/data/contracts/shim_route.json, run through this compiled shim and through Python by
 * tests/unit/test_shim_route.py):
 *
 *  - the job's request (srun inside an allocation, SLURM_JOB_ID set): every shifter
 *    option of the step is byte-identical to what the job carries -- --image is
 *    "id:" SLURM_SPANK_SHIFTER_IMAGE (SLURM_SPANK_SHIFTER_IMAGETYPE=id), --volume
 *    SLURM_SPANK_SHIFTER_VOLUME, --module SLURM_SPANK_SHIFTER_MODULE, --ccm
 *    SLURM_SPANK_SHIFTER_CCM=1 -- and the step has an option exactly where the job has a
 *    value.  Submission rewrote the job's inherited options to that text, so a step that
 *    only inherits them matches.  It was validated at submission, as this user: the
 *    step's tasks get the request (SHIFTER_IMAGE, SHIFTER_IMAGETYPE, SHIFTER_IMAGEREQUEST
 *    = the job's, SHIFTER_VOLUME, SHIFTER_MODULE, SHIFTER_CCM) and nothing is checked again.
 *  - a step of a --ccm job whose only shifter option is the job's --ccm (the job's
 *    SLURM_SPANK_SHIFTER_CCM=1, IMAGETYPE=local, IMAGE=/, no volume or module): the
 *    tasks get SHIFTER_IMAGE=/, SHIFTER_IMAGETYPE=local, SHIFTER_CCM=1 (route_ccm_step).
 *  - a submission (sbatch, salloc, an srun creating its allocation) whose only shifter
 *    option is --image=id:<64 lowercase hex>, whose udiRoot.conf gives imagePath
 *    (udiconf_key.h), and whose <imagePath>/<id>.meta and .squashfs this process (the
 *    user) can open: image files follow the image's ACL on disk, so opening them is the
 *    access check.  Any failure is Python's to decide and word.
 *
 * Anything else loads Python.
 */

#define ID_HEX 64

static int is_image_id(const char *s)
{
    size_t n = 0;
    for (; s[n] != '\0'; n++)
        if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f'))) return 0;
    return n == ID_HEX;
}

/* The step has the option exactly when the job has the value, and then the same bytes. */
static int same_as_job(int set, const char *value, const char *job_name)
{
    const char *job = getenv(job_name);
    if (!set) return job == NULL;
    return job != NULL && strcmp(value ? value : "", job) == 0;
}

struct request_env {
    const char *names[6], *values[6];
    int n;
};

static void add_env(struct request_env *r, const char *name, const char *value)
{
    r->names[r->n] = name;
    r->values[r->n++] = value;
}

/* Hands the request to the job (job-control environment; `required`: failing to is an
 * error) and, in srun, to its tasks (srun's own environment). */
static int hand_over(spank_t sp, const struct request_env *r, int required, int to_tasks)
{
    for (int i = 0; i < r->n; i++) {
        if (spank_job_control_setenv(sp, r->names[i], r->values[i], 1) != ESPANK_SUCCESS && required) {
            slurm_error(PLUGIN ": can't hand %s to the job: spank_job_control_setenv failed",
                        r->names[i]);
            return -1;
        }
    }
    for (int i = 0; to_tasks && i < r->n; i++) {
        if (setenv(r->names[i], r->values[i], 1) != 0) {
            slurm_error(PLUGIN ": can't hand %s to the step's tasks: %s", r->names[i],
                        strerror(errno));
            return -1;
        }
    }
    return 0;
}

/* A step of a --ccm job that asks for nothing but the job's --ccm: the tasks get the
 * job's request (the host root, local:/) as Python would give it.  1 = handled, 0 = not. */
static int route_ccm_step(spank_t sp)
{
    if (!opt_ccm || opt_image_set || opt_volume_set || opt_module_set) return 0;
    const char *ccm = getenv(ENV_JOB_CCM);
    const char *type = getenv(ENV_JOB_IMAGETYPE);
    const char *image = getenv(ENV_JOB_IMAGE);
    if (ccm == NULL || strcmp(ccm, "1") != 0 || type == NULL || strcmp(type, "local") != 0
        || image == NULL || strcmp(image, "/") != 0)
        return 0;
    if (getenv(ENV_JOB_VOLUME) != NULL || getenv(ENV_JOB_MODULE) != NULL) return 0;
    struct request_env r = {.n = 0};
    add_env(&r, ENV_IMAGE, "/");
    add_env(&r, ENV_IMAGETYPE, "local");
    add_env(&r, ENV_CCM, "1");
    if (hand_over(sp, &r, 0, 1) != 0) return -1;
    slurm_debug(PLUGIN ": the step uses its job's --ccm");
    return 1;
}

/* 1 = handled, 0 = ask Python, -1 = error reported. */
static int route_job_request(spank_t sp)
{
    int ccm_step = route_ccm_step(sp);
    if (ccm_step != 0) return ccm_step;
    const char *type = env_nonempty(ENV_JOB_IMAGETYPE);
    const char *id = env_nonempty(ENV_JOB_IMAGE);
    if (!opt_image_set || opt_image == NULL || type == NULL || id == NULL) return 0;
    if (strcmp(type, "id") != 0 || !is_image_id(id)) return 0;
    if (strncmp(opt_image, "id:", 3) != 0 || strcmp(opt_image + 3, id) != 0) return 0;
    if (!same_as_job(opt_volume_set, opt_volume, ENV_JOB_VOLUME)) return 0;
    if (!same_as_job(opt_module_set, opt_module, ENV_JOB_MODULE)) return 0;
    const char *ccm = getenv(ENV_JOB_CCM);
    if (opt_ccm != (ccm != NULL && strcmp(ccm, "1") == 0)) return 0;

    const char *request = env_nonempty(ENV_JOB_IMAGEREQUEST);
    if (request == NULL) request = env_nonempty(ENV_JOB_IMAGEREQUEST_OLD);
    struct request_env r = {.n = 0};
    add_env(&r, ENV_IMAGE, id);
    add_env(&r, ENV_IMAGETYPE, "id");
    add_env(&r, ENV_IMAGEREQUEST, request ? request : opt_image);
    if (opt_volume_set) add_env(&r, ENV_VOLUME, opt_volume ? opt_volume : "");
    if (opt_module_set) add_env(&r, ENV_MODULE, opt_module ? opt_module : "");
    if (opt_ccm) add_env(&r, ENV_CCM, "1");
    if (hand_over(sp, &r, 0, 1) != 0) return -1;
    slurm_debug(PLUGIN ": the step uses its job's request (image id:%s)", id);
    return 1;
}


static int can_open(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return 0;
    close(fd);
    return 1;
}

/* With enable_sshd=1 a submission needs the user's container key pair
 * (~/.udiRoot/id_rsa.key, docs/sshd.md): when it is missing, Python makes it.  Root's
 * jobs get no sshd.  1 = present (or not needed), 0 = ask Python. */
static int have_ssh_key(void)
{
    if (!enable_sshd || getuid() == 0) return 1;
    struct passwd *pw = getpwuid(getuid());
    if (pw == NULL || pw->pw_dir == NULL) return 0;
    char path[PATH_MAX];
    if ((size_t) snprintf(path, sizeof(path), "%s/.udiRoot/id_rsa.key", pw->pw_dir) >= sizeof(path)) return 0;
    return access(path, R_OK) == 0;
}

/* 1 = handled, 0 = ask Python, -1 = error reported. */
static int route_image_id(spank_t sp, int to_tasks)
{
    if (!opt_image_set || opt_image == NULL || opt_volume_set || opt_module_set || opt_ccm) return 0;
    if (!have_ssh_key()) return 0;
    if (strncmp(opt_image, "id:", 3) != 0 || !is_image_id(opt_image + 3)) return 0;
    const char *id = opt_image + 3;
    char images[PATH_MAX], path[PATH_MAX + 2 * ID_HEX];
    if (site_image_path(images, sizeof(images)) != 0) return 0;
    if ((size_t) snprintf(path, sizeof(path), "%s/%s.meta", images, id) >= sizeof(path)) return 0;
    if (!can_open(path)) return 0;
    snprintf(path, sizeof(path), "%s/%s.squashfs", images, id);
    if (!can_open(path)) return 0;

    struct request_env r = {.n = 0};
    add_env(&r, ENV_IMAGE, id);
    add_env(&r, ENV_IMAGETYPE, "id");
    add_env(&r, ENV_IMAGEREQUEST, opt_image);
    if (hand_over(sp, &r, 1, to_tasks) != 0) return -1;
    slurm_debug(PLUGIN ": image id:%s is readable: no Python needed", id);
    return 1;
}

/* init_post_opt in sbatch/salloc/srun: 1 = handled here, 0 = ask Python, -1 = error. */
int route_without_python(spank_t sp)
{
    spank_context_t ctx = spank_context();
    int in_allocation = env_nonempty("SLURM_JOB_ID") != NULL;
    if (ctx == S_CTX_LOCAL && in_allocation) return route_job_request(sp);
    if (ctx == S_CTX_ALLOCATOR) return route_image_id(sp, 0);
    if (ctx == S_CTX_LOCAL) return route_image_id(sp, 1);
    return 0;
}

