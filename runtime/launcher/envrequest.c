/*
 * shifter: the request `shifter CMD` reads from its environment, in C (the launcher's fast
 * path, launcher.c, and the private plan's request key, replay_plan.c).  The rule's owner
 * is shifter.runtime.envrequest; tests/data/contracts/image_request.json runs through both
 * (docs/dev.md, "Contracts").  It uses no other unit of the launcher.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envrequest.h"
#include "shifter_contracts.h" /* the contracts' names, written by the build from their Python owners */

const char *env2(const char *a, const char *b)
{
    const char *v = getenv(a);
    if (v == NULL) v = getenv(b);
    return v;
}

static int is_hex64(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f'))) return 0;
    return n == 64;
}

/* The image the environment requests, as a descriptor: the rule of
 * shifter.runtime.envrequest.env_image_spec, its owner (docs/launcher.md "Which image";
 * both are checked against tests/data/contracts/image_request.json).
 *   1. SHIFTER_IMAGE (non-empty): "SHIFTER_IMAGETYPE:SHIFTER_IMAGE" when the type is set
 *      too (but a type id with an image that is not 64 hex digits is no pair), else
 *      SHIFTER_IMAGE itself (a descriptor: id:<hex>, docker:repo:tag, ...);
 *   2. else SLURM_SPANK_SHIFTER_IMAGE likewise with SLURM_SPANK_SHIFTER_IMAGETYPE;
 *   3. else the first non-empty fallback: SHIFTER_IMAGEREQUEST (Shifter's request
 *      variable), SLURM_SPANK_SHIFTER_IMAGEREQUEST, the old SHIFTER_IMAGE_REQUEST names,
 *      old Shifter's SHIFTER (and SLURM_SPANK_SHIFTER).
 * 1 and the descriptor in `out`; 0 when there is none; -1 when it does not fit. */
int env_image_request(char *out, size_t outlen)
{
    static const char *const pairs[] = {ENV_IMAGE_PAIRS}; /* image, type; image, type */
    static const char *const fallbacks[] = {ENV_FALLBACK_IMAGE_VARS};
    int n = -1;
    for (int i = 0; i + 1 < ENV_IMAGE_PAIRS_N && n < 0; i += 2) {
        const char *tag = getenv(pairs[i]);
        if (tag == NULL || tag[0] == '\0') continue;
        const char *type = getenv(pairs[i + 1]);
        if (type != NULL && type[0] != '\0' && !(strcmp(type, "id") == 0 && !is_hex64(tag)))
            n = snprintf(out, outlen, "%s:%s", type, tag);
        else n = snprintf(out, outlen, "%s", tag);
    }
    for (size_t i = 0; n < 0 && i < ENV_FALLBACK_IMAGE_VARS_N; i++) {
        const char *v = getenv(fallbacks[i]);
        if (v != NULL && v[0] != '\0') n = snprintf(out, outlen, "%s", v);
    }
    if (n < 0) return 0;
    return (size_t) n < outlen ? 1 : -1;
}

static int cmpstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *) a, *(const char *const *) b);
}

/* The module request in canonical form, as shifter.runtime.modules.normalize: "b,a,,b"
 * -> "a,b" (sorted, unique; ',' and ' ' separate); "none" -> "".  NULL when "none" is
 * combined with anything (refused, as in Shifter: Python says why) or on overflow. */
char *normal_modules(const char *spec)
{
    char *copy = strdup(spec), *save = NULL;
    const char *items[256];
    int n = 0, none = 0;
    if (copy == NULL) return NULL;
    for (char *t = strtok_r(copy, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        if (n == 256) {
            free(copy);
            return NULL;
        }
        if (strcmp(t, "none") == 0) none = 1;
        items[n++] = t;
    }
    if (none && n > 1) {
        free(copy);
        return NULL;
    }
    if (none) n = 0;
    qsort(items, (size_t) n, sizeof(char *), cmpstr);
    char *out = calloc(strlen(spec) + 1, 1);
    for (int i = 0; out && i < n; i++) {
        if (i > 0 && strcmp(items[i], items[i - 1]) == 0) continue;
        if (out[0]) strcat(out, ",");
        strcat(out, items[i]);
    }
    free(copy);
    return out;
}
