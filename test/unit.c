/* Unit tests: the pure functions (parsers, chunked decoder, config). */
#include "proxy.h"
#include "unit.h"

int unit_pass, unit_fail;

/* balance.c talks to the loop; the unit tests have none. */
int
loop_watch(int fd, int kind, int idx)
{
	return 0;
}

void
loop_unwatch(int slot)
{
}

void
loop_events(int slot, short events)
{
}

int
loop_server_index(const struct server *s)
{
	return 0;
}

void
logmsg(int prio, const char *fmt, ...)
{
}

int
main(void)
{
	unit_http();
	unit_conf();
	unit_acl();
	unit_cache();
	printf("unit: %d passed, %d failed\n", unit_pass, unit_fail);
	return unit_fail != 0;
}
