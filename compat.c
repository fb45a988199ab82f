/*
 * compat.c - glibc's _FORTIFY_SOURCE entry points, for the static build
 * against musl (make STATIC=1 CC=musl-gcc); compiled for STATIC=1 only,
 * and empty with glibc, which has its own.
 *
 * Debian compiles libbearssl.a and libinih.a with _FORTIFY_SOURCE=2, so
 * their objects call __memcpy_chk and friends instead of memcpy when the
 * compiler knew the size of the destination. musl has no such symbols.
 * Each shim checks as glibc's does: a write past the destination is a
 * bug being exploited, and the process aborts rather than go on.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef __GLIBC__		/* set by any glibc header, never by musl's */
void *__memcpy_chk(void *dst, const void *src, size_t n, size_t dstlen);
void *__memmove_chk(void *dst, const void *src, size_t n, size_t dstlen);
void *__memset_chk(void *dst, int c, size_t n, size_t dstlen);
int __snprintf_chk(char *dst, size_t n, int flag, size_t dstlen,
    const char *fmt, ...);

void *
__memcpy_chk(void *dst, const void *src, size_t n, size_t dstlen)
{
	if (n > dstlen)
		abort();
	return memcpy(dst, src, n);
}

void *
__memmove_chk(void *dst, const void *src, size_t n, size_t dstlen)
{
	if (n > dstlen)
		abort();
	return memmove(dst, src, n);
}

void *
__memset_chk(void *dst, int c, size_t n, size_t dstlen)
{
	if (n > dstlen)
		abort();
	return memset(dst, c, n);
}

int
__snprintf_chk(char *dst, size_t n, int flag, size_t dstlen,
    const char *fmt, ...)
{
	va_list ap;
	int r;

	if (n > dstlen)
		abort();
	va_start(ap, fmt);
	r = vsnprintf(dst, n, fmt, ap);
	va_end(ap);
	return r;
}

#else
/* ISO C wants at least one declaration in a translation unit. */
typedef int compat_empty;
#endif
