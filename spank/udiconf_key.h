/*
 * udiRoot.conf's imagePath and udiMount, read in C by the SPANK shim: imagePath so that
 * `--image=id:<id>` needs no Python at submission, udiMount so that a `--ccm` task enters
 * the job's host-root container without Python in slurmstepd (spank/shim_config.c reads both for the
 * other units of the shim).
 *
 * This is a deliberately partial reader of the syntax that shifter.runtime.confsyntax owns
 * (`key=value` lines, `#` comments, a trailing `\` continues a line).  It answers only when
 * it is sure to give what Python's parser gives (shifter.runtime.config.parse(...).imagePath):
 * a file of printable ASCII, tabs and newlines, every non-empty line `key=value`, imagePath
 * set exactly once to an absolute path.  Anything else returns -1 ("ask Python"), and the
 * caller then lets Python read the file.  It does not check the rest of the file (unknown
 * keys, bad values): every Python reader of the configuration does, the prolog included.
 *
 * udiMount follows the same rules (not set: Python's default /var/udiMount).
 *
 * The vectors both parsers must follow: tests/data/contracts/udiconf_imagepath.json
 * (tests/unit/test_shim_route.py).
 */
#ifndef SHIFTER_UDICONF_KEY_H
#define SHIFTER_UDICONF_KEY_H

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define UDICONF_MAX_SIZE (1024 * 1024)

static int udiconf_blank(char c) { return c == ' ' || c == '\t'; }

/* One logical line [s, e) (continuations already joined): the comment cut, then
 * `key=value` split and both sides trimmed, as confsyntax.entries does.  Returns 1 when
 * the line sets imagePath (its value and length given back), 0 for another key or none,
 * -1 for a line Python refuses (no '=' or an empty key). */
static int udiconf_entry(const char *s, const char *e, const char *key, const char **val, size_t *vlen)
{
    const char *hash = memchr(s, '#', (size_t) (e - s));
    if (hash != NULL) e = hash;
    while (s < e && udiconf_blank(*s)) s++;
    while (e > s && udiconf_blank(e[-1])) e--;
    if (s == e) return 0;
    const char *eq = memchr(s, '=', (size_t) (e - s));
    if (eq == NULL) return -1;
    const char *ke = eq;
    while (ke > s && udiconf_blank(ke[-1])) ke--;
    if (ke == s) return -1;
    const char *v = eq + 1;
    while (v < e && udiconf_blank(*v)) v++;
    size_t klen = strlen(key);
    if ((size_t) (ke - s) != klen || memcmp(s, key, klen) != 0) return 0;
    *val = v;
    *vlen = (size_t) (e - v);
    return 1;
}

/* The value of `key` in the configuration text [text, text+len) into out: 0 = set once
 * (its value given back), 1 = not set, -1 = not sure (Python refuses the file, or would
 * read it otherwise). */
static int udiconf_value(const char *text, size_t len, const char *key, char *out, size_t outlen)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char) text[i];
        if (!(c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7f))) return -1;
    }
    char *logical = malloc(len + 1);
    if (logical == NULL) return -1;
    size_t used = 0;
    int pending = 0, found = 0, rc = 0;
    const char *val = NULL;
    size_t vlen = 0;
    const char *p = text, *end = text + len;
    while (p < end && rc == 0) {
        const char *nl = memchr(p, '\n', (size_t) (end - p));
        const char *le = nl ? nl : end;
        const char *re = le; /* line.rstrip() */
        while (re > p && udiconf_blank(re[-1])) re--;
        pending = 1;
        if (re > p && re[-1] == '\\') {
            memcpy(logical + used, p, (size_t) (re - 1 - p));
            used += (size_t) (re - 1 - p);
        } else {
            memcpy(logical + used, p, (size_t) (le - p));
            used += (size_t) (le - p);
            const char *v;
            size_t n;
            int r = udiconf_entry(logical, logical + used, key, &v, &n);
            if (r < 0) rc = -1;
            if (r == 1) {
                if (found++) rc = -1; /* set twice: Python refuses the file */
                /* copied now: the buffer is reused for the next logical line */
                if (n + 1 > outlen) rc = -1; else { memcpy(out, v, n); out[n] = '\0'; val = out; vlen = n; }
            }
            used = 0;
            pending = 0;
        }
        p = nl ? nl + 1 : end;
    }
    if (rc == 0 && pending) { /* a continuation at the end of the file */
        const char *v;
        size_t n;
        int r = udiconf_entry(logical, logical + used, key, &v, &n);
        if (r < 0) rc = -1;
        if (r == 1) {
            if (found++) rc = -1;
            if (n + 1 > outlen) rc = -1; else { memcpy(out, v, n); out[n] = '\0'; val = out; vlen = n; }
        }
    }
    free(logical);
    (void) vlen;
    if (rc != 0) return -1;
    if (found == 0) return 1;
    return val == NULL ? -1 : 0;
}

/* imagePath of the configuration text into out; 0 = found, -1 = ask Python. */
static int udiconf_image_path(const char *text, size_t len, char *out, size_t outlen)
{
    if (udiconf_value(text, len, "imagePath", out, outlen) != 0) return -1;
    /* empty: Python's default imagePath; relative: Python refuses it */
    if (out[0] != '/') return -1;
    return 0;
}

/* udiMount of the configuration text into out (Python's default /var/udiMount when it is
 * not set); 0 = found, -1 = not sure. */
static int udiconf_udi_mount(const char *text, size_t len, char *out, size_t outlen)
{
    int r = udiconf_value(text, len, "udiMount", out, outlen);
    if (r == 1) return (size_t) snprintf(out, outlen, "/var/udiMount") < outlen ? 0 : -1;
    if (r != 0 || out[0] != '/') return -1;
    return 0;
}

typedef int (*udiconf_reader_f)(const char *text, size_t len, char *out, size_t outlen);

/* Reads the file at `path` (as the calling process) and gives what `reader` finds there;
 * -1 = not sure (ask Python where it can be asked). */
static int udiconf_read(const char *path, udiconf_reader_f reader, char *out, size_t outlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > UDICONF_MAX_SIZE) {
        close(fd);
        return -1;
    }
    size_t size = (size_t) st.st_size;
    char *buf = malloc(size + 1);
    if (buf == NULL) { close(fd); return -1; }
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t) n;
    }
    close(fd);
    int rc = got == size ? reader(buf, got, out, outlen) : -1;
    free(buf);
    return rc;
}

static int udiconf_read_image_path(const char *path, char *out, size_t outlen)
{
    return udiconf_read(path, udiconf_image_path, out, outlen);
}

static int udiconf_read_udi_mount(const char *path, char *out, size_t outlen)
{
    return udiconf_read(path, udiconf_udi_mount, out, outlen);
}

#endif
