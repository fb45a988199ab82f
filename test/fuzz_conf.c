/*
 * libFuzzer target: the config loader (conf_load, and through it the
 * value parsers and inih). The input is written to a memory file and
 * loaded; whatever happens, conf_free must release everything (LSan) and
 * an error must read "FILE:LINE: message" or "FILE: message".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "proxy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ASSERT(c) do { if (!(c)) { fprintf(stderr, "assert %s\n", #c); \
	abort(); } } while (0)

/* conf.c calls these for auth files; the fuzzer's inputs name none that
 * exist, but the symbols must link. acl.c is linked in for real. */

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int fd = -1;
	static char path[64];
	struct config c;
	char err[512];
	int rc;

	if (fd == -1) {
		fd = memfd_create("conf", 0);
		ASSERT(fd != -1);
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	}
	ASSERT(ftruncate(fd, 0) == 0);
	ASSERT(pwrite(fd, data, size, 0) == (ssize_t)size);
	rc = conf_load(path, &c, err, sizeof(err));
	if (rc == 0) {
		ASSERT(c.nroutes >= 0 && c.nbackends >= 0);
		ASSERT(c.buffer_size >= 4096);
	} else {
		ASSERT(strncmp(err, path, strlen(path)) == 0);
		ASSERT(err[strlen(path)] == ':');
	}
	conf_free(&c);
	return 0;
}
