/*
 * A disk stand-in for the power-cut tests (tests/common/powercut.rs), loaded
 * into the broker with LD_PRELOAD. It changes nothing the broker sees: each
 * wrapped call goes to the C library's own. It keeps a journal of what the
 * disk would have made durable, for files under $QB_SYNC_DIR, in the file
 * $QB_SYNC_JOURNAL, one line per call, in the order the calls returned:
 *
 *   S <size> <path>          fsync/fdatasync succeeded; <size> is the file's
 *                            length just before the call (what was written
 *                            before it is on disk; later writes may not be)
 *   T <size> <path>          ftruncate succeeded: no more than <size> bytes of
 *                            what was synced survive (the bytes past it are
 *                            gone, new bytes there are not synced)
 *   R <old path>\t<new path> rename succeeded
 *
 * Paths are absolute. Each line is one write(2) on an O_APPEND descriptor, so
 * lines from concurrent threads stay whole. Without both variables set, the
 * wrappers only pass the calls on.
 *
 * Rust's File::sync_all / sync_data call fsync / fdatasync, File::set_len
 * calls ftruncate64, std::fs::rename calls rename: all through the dynamic
 * C library, so these wrappers see them.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static __thread int busy;

/* The absolute form of `path` (relative ones against the working directory),
 * without resolving links. */
static int absolute(const char *path, char *out, size_t cap)
{
    if (path[0] == '/') {
        if (strlen(path) >= cap)
            return -1;
        strcpy(out, path);
        return 0;
    }
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        return -1;
    int n = snprintf(out, cap, "%s/%s", cwd, path);
    return (n < 0 || (size_t)n >= cap) ? -1 : 0;
}

static const char *watched(void)
{
    const char *dir = getenv("QB_SYNC_DIR");
    const char *journal = getenv("QB_SYNC_JOURNAL");
    if (!dir || !*dir || !journal || !*journal)
        return NULL;
    return dir;
}

static int under(const char *dir, const char *path)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    return strncmp(path, dir, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

static void journal(const char *line, size_t len)
{
    int saved = errno;
    int fd = open(getenv("QB_SYNC_JOURNAL"), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        ssize_t w = write(fd, line, len);
        (void)w;
        close(fd);
    }
    errno = saved;
}

static int fd_path(int fd, char *out, size_t cap)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, cap - 1);
    if (n < 0)
        return -1;
    out[n] = '\0';
    return 0;
}

/* The length of fd's file, or -1 when it is not one to watch. */
static long long watched_size(int fd, char *path, size_t cap)
{
    const char *dir = watched();
    struct stat st;
    if (!dir || fd_path(fd, path, cap) != 0 || !under(dir, path) || fstat(fd, &st) != 0)
        return -1;
    return (long long)st.st_size;
}

static void record(char kind, long long size, const char *path)
{
    char line[PATH_MAX + 64];
    int n = snprintf(line, sizeof line, "%c %lld %s\n", kind, size, path);
    if (n > 0 && (size_t)n < sizeof line)
        journal(line, (size_t)n);
}

typedef int (*sync_fn)(int);

static int synced(const char *name, int fd)
{
    static sync_fn real_fsync, real_fdatasync;
    sync_fn *slot = name[1] == 's' ? &real_fsync : &real_fdatasync;
    if (!*slot)
        *slot = (sync_fn)dlsym(RTLD_NEXT, name);
    if (busy)
        return (*slot)(fd);
    busy = 1;
    char path[PATH_MAX];
    /* Taken before the call: what was written by then is what it covers. */
    long long size = watched_size(fd, path, sizeof path);
    int rc = (*slot)(fd);
    if (rc == 0 && size >= 0)
        record('S', size, path);
    busy = 0;
    return rc;
}

int fsync(int fd)
{
    return synced("fsync", fd);
}

int fdatasync(int fd)
{
    return synced("fdatasync", fd);
}

typedef int (*truncate_fn)(int, off64_t);

static int truncated(const char *name, int fd, off_t len)
{
    static truncate_fn real_ftruncate, real_ftruncate64;
    truncate_fn *slot = strcmp(name, "ftruncate") == 0 ? &real_ftruncate : &real_ftruncate64;
    if (!*slot)
        *slot = (truncate_fn)dlsym(RTLD_NEXT, name);
    if (busy)
        return (*slot)(fd, len);
    busy = 1;
    int rc = (*slot)(fd, len);
    char path[PATH_MAX];
    if (rc == 0 && watched_size(fd, path, sizeof path) >= 0)
        record('T', (long long)len, path);
    busy = 0;
    return rc;
}

int ftruncate(int fd, off_t len)
{
    return truncated("ftruncate", fd, len);
}

int ftruncate64(int fd, off64_t len)
{
    return truncated("ftruncate64", fd, len);
}

int rename(const char *old, const char *new)
{
    static int (*real_rename)(const char *, const char *);
    if (!real_rename)
        real_rename = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    if (busy)
        return real_rename(old, new);
    busy = 1;
    const char *dir = watched();
    char from[PATH_MAX], to[PATH_MAX];
    int known = dir && absolute(old, from, sizeof from) == 0 && absolute(new, to, sizeof to) == 0;
    int rc = real_rename(old, new);
    if (rc == 0 && known && (under(dir, from) || under(dir, to))) {
        char line[2 * PATH_MAX + 8];
        int n = snprintf(line, sizeof line, "R %s\t%s\n", from, to);
        if (n > 0 && (size_t)n < sizeof line)
            journal(line, (size_t)n);
    }
    busy = 0;
    return rc;
}
