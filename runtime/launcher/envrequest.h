/*
 * The environment's request (envrequest.c), used by the fast path (launcher.c) and the
 * private plan's request key (replay_plan.c).  Owner: shifter.runtime.envrequest.
 */
#ifndef SHIFTER_ENVREQUEST_H
#define SHIFTER_ENVREQUEST_H

#include <stddef.h>

/* getenv(a), else getenv(b) */
const char *env2(const char *a, const char *b);

/* The image descriptor the environment requests (shifter.runtime.envrequest.env_image_spec's
 * rule): 1 and the descriptor in out; 0 none; -1 too long for out. */
int env_image_request(char *out, size_t outlen);

/* The module request in canonical form (shifter.runtime.modules.normalize), malloc'ed;
 * NULL when "none" is combined with anything, or on overflow. */
char *normal_modules(const char *spec);

#endif
