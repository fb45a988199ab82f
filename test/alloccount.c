/*
 * alloccount.so - count the heap allocations of the process it is
 * preloaded into, so a test can check that serving requests allocates
 * nothing (DESIGN.md, Memory): the count after 200 requests must equal
 * the count after 2000.
 *
 *	LD_PRELOAD=test/alloccount.so ALLOC_COUNT_FILE=out ./proxy ...
 *
 * Counts malloc, calloc, realloc, posix_memalign, aligned_alloc and
 * memalign (strdup and friends call malloc). At exit the count is written
 * to $ALLOC_COUNT_FILE as one decimal line. A process that ends in _exit
 * or a signal writes nothing.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void *malloc(size_t n);
void *calloc(size_t k, size_t n);
void *realloc(void *p, size_t n);
void free(void *p);
int posix_memalign(void **pp, size_t align, size_t n);
void *aligned_alloc(size_t align, size_t n);
void *memalign(size_t align, size_t n);

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void (*real_free)(void *);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);

static unsigned long count;

/*
 * dlsym may itself allocate (glibc: calloc for its error state) before
 * the real functions are known. Those few early blocks come from this
 * arena; each carries its size in front so realloc can copy it, and free
 * ignores them.
 */
#define ARENA 8192
#define HDR 16
static _Alignas(16) unsigned char arena[ARENA];
static size_t arena_used;
static int resolving;

static int
in_arena(const void *p)
{
	return (const unsigned char *)p >= arena &&
	    (const unsigned char *)p < arena + ARENA;
}

static void *
arena_alloc(size_t n)
{
	size_t need = HDR + ((n + 15) & ~(size_t)15);
	unsigned char *p;

	if (n > ARENA || need > ARENA - arena_used)
		return NULL;
	p = arena + arena_used;
	arena_used += need;
	memcpy(p, &n, sizeof(n));
	return p + HDR;	/* static storage: already zero */
}

static void
resolve(void)
{
	if (real_free != NULL || resolving)
		return;
	resolving = 1;
	real_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
	real_calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
	real_realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT,
	    "realloc");
	real_posix_memalign = (int (*)(void **, size_t, size_t))dlsym(
	    RTLD_NEXT, "posix_memalign");
	real_aligned_alloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT,
	    "aligned_alloc");
	real_memalign = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT,
	    "memalign");
	real_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
	resolving = 0;
}

static void
counted(void)
{
	__atomic_fetch_add(&count, 1, __ATOMIC_RELAXED);
}

void *
malloc(size_t n)
{
	resolve();
	if (real_malloc == NULL)
		return arena_alloc(n);
	counted();
	return real_malloc(n);
}

void *
calloc(size_t k, size_t n)
{
	resolve();
	if (real_calloc == NULL) {
		if (n != 0 && k > (size_t)-1 / n)
			return NULL;
		return arena_alloc(k * n);
	}
	counted();
	return real_calloc(k, n);
}

void *
realloc(void *p, size_t n)
{
	size_t old;
	void *q;

	resolve();
	if (p != NULL && in_arena(p)) {
		/* Move an early block to the real heap (or a new arena one). */
		memcpy(&old, (unsigned char *)p - HDR, sizeof(old));
		if ((q = malloc(n)) != NULL)
			memcpy(q, p, old < n ? old : n);
		return q;
	}
	if (real_realloc == NULL)
		return p == NULL ? arena_alloc(n) : NULL;
	counted();
	return real_realloc(p, n);
}

void
free(void *p)
{
	if (p == NULL || in_arena(p))
		return;
	resolve();
	if (real_free != NULL)
		real_free(p);
}

int
posix_memalign(void **pp, size_t align, size_t n)
{
	resolve();
	if (real_posix_memalign == NULL)
		return ENOMEM;	/* nothing aligned this early */
	counted();
	return real_posix_memalign(pp, align, n);
}

void *
aligned_alloc(size_t align, size_t n)
{
	resolve();
	if (real_aligned_alloc == NULL)
		return NULL;
	counted();
	return real_aligned_alloc(align, n);
}

void *
memalign(size_t align, size_t n)
{
	resolve();
	if (real_memalign == NULL)
		return NULL;
	counted();
	return real_memalign(align, n);
}

/* No stdio here: it may allocate, and it may already be shut down. */
__attribute__((destructor)) static void
report(void)
{
	const char *path = getenv("ALLOC_COUNT_FILE");
	char buf[32];
	unsigned long n = __atomic_load_n(&count, __ATOMIC_RELAXED);
	size_t i = sizeof(buf);
	ssize_t w;
	int fd;

	if (path == NULL || *path == '\0')
		return;
	buf[--i] = '\n';
	do {
		buf[--i] = (char)('0' + n % 10);
		n /= 10;
	} while (n != 0);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	while (i < sizeof(buf)) {
		w = write(fd, buf + i, sizeof(buf) - i);
		if (w < 0)
			break;
		i += (size_t)w;
	}
	close(fd);
}
