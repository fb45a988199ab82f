/* A tiny table-test harness shared by the unit test files. */
#ifndef UNIT_H
#define UNIT_H
#include <stdio.h>

extern int unit_pass, unit_fail;

/* Record one named check; print only failures (and where). */
#define CHECK(cond, name) do { \
	if (cond) { \
		unit_pass++; \
	} else { \
		unit_fail++; \
		printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, (name)); \
	} \
} while (0)

void unit_http(void);
void unit_conf(void);
void unit_acl(void);
void unit_cache(void);
#endif
