/*
 * balance.c - choosing a route for a request and a server for a route.
 *
 * Called once per request from the loop: no allocation, no I/O, and only
 * the config's own tables.
 */
#include <string.h>

#include "proxy.h"

/* ASCII only: host names are compared the same in every locale. */
static int
lower(int ch)
{
	return ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch;
}

static int
same_nocase(const char *a, const char *b, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
			return 0;
	return 1;
}

/*
 * pat is lower-case (conf.c): "example.org" matches that host only,
 * "*.example.org" matches one or more labels in front of the suffix but
 * not the bare "example.org".
 */
static int
host_match(const char *pat, const char *h, size_t n)
{
	size_t pn = strlen(pat);

	if (pat[0] == '*') {
		pat++;
		pn--;
		return n > pn && same_nocase(h + n - pn, pat, pn);
	}
	return n == pn && same_nocase(h, pat, pn);
}

int
bal_route(const struct config *c, struct slice host, const char *path,
    size_t pathlen)
{
	const struct route *r;
	const char *h = host.p;
	size_t n = h != NULL ? host.n : 0, i;
	int k;

	/* Host is "name[:port]" or "[v6]:port" (RFC 9110 7.2): drop the port */
	if (n > 0 && h[0] == '[') {
		for (i = 0; i < n && h[i] != ']'; i++)
			;
		if (i < n)
			n = i + 1;
	} else {
		for (i = 0; i < n && h[i] != ':'; i++)
			;
		n = i;
	}
	/* "example.org." is the fully qualified spelling of the same name. */
	if (n > 1 && h[n - 1] == '.')
		n--;

	for (k = 0; k < c->nroutes; k++) {
		r = &c->routes[k];
		if (r->host != NULL && !host_match(r->host, h, n))
			continue;
		if (r->path != NULL && (pathlen < r->pathlen ||
		    memcmp(path, r->path, r->pathlen) != 0))
			continue;
		return k;
	}
	return -1;
}

/*
 * Smooth weighted round-robin (as in nginx): every pick raises each
 * server's cur by its weight, takes the highest (the first on ties) and
 * lowers it by the total. Over sum(weights) picks each server is chosen
 * exactly weight times, and the heavy ones are spread out rather than
 * sent in a burst: weights 5:1:1 give a a b a c a a.
 */
struct server *
bal_pick(struct backend *b)
{
	struct server *s, *best = NULL;
	int i, total = 0;

	for (i = 0; i < b->nsrv; i++) {
		s = &b->srv[i];
		s->cur += s->weight;
		total += s->weight;
		if (best == NULL || s->cur > best->cur)
			best = s;
	}
	if (best != NULL)
		best->cur -= total;
	return best;
}
