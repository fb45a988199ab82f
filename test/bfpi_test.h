/* test/bfpi.c: pi's digits for checking bfpi.h (see there). */
#define BFPI_WORDS (18 + 1024)
void bfpi_compute(uint32_t out[BFPI_WORDS]);
