/*
 * contrib/musl/crypt.h - <crypt.h> for the static musl build (make
 * STATIC=1 CC=musl-gcc), found before Debian's. musl declares crypt()
 * in <unistd.h>, as POSIX does; the <crypt.h> of glibc's libxcrypt needs
 * glibc's <sys/cdefs.h>. crypt() itself comes from that libxcrypt's
 * libcrypt.a, linked by path.
 */
#include <unistd.h>
