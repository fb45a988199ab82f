/* Unit tests: the pure functions (parsers, chunked decoder, config). */
#include "unit.h"

int unit_pass, unit_fail;

int
main(void)
{
	unit_http();
	unit_conf();
	printf("unit: %d passed, %d failed\n", unit_pass, unit_fail);
	return unit_fail != 0;
}
