/*
 * LD_PRELOAD shim for wrk: every new connection makes a full TLS handshake.
 *
 * wrk reconnects a closed connection with the same SSL object: ssl_close() calls SSL_shutdown()
 * and SSL_clear(), and SSL_clear() keeps the session, so the next SSL_connect() offers it and the
 * server resumes it (a TLS 1.3 PSK from its ticket, or a TLS 1.2 ticket or session id): no
 * certificate, no signature. (h2load 1.52 does the same: it reuses the SSL object of a closed
 * connection.) Here SSL_clear() also drops the session, so nothing is offered. bench/https.sh
 * builds this with `cc -shared -fPIC` and checks against an nginx that logs
 * $ssl_session_reused that no handshake made with it was resumed, and that wrk without it does
 * resume (so the check can see resumption).
 *
 * No OpenSSL headers needed: both functions are looked up in the libssl wrk links.
 */
#define _GNU_SOURCE
#include <dlfcn.h>

typedef struct ssl_st SSL;

static int (*real_clear)(SSL *);
static int (*set_session)(SSL *, void *);

__attribute__((constructor)) static void init(void)
{
    real_clear = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
    set_session = (int (*)(SSL *, void *))dlsym(RTLD_NEXT, "SSL_set_session");
}

int SSL_clear(SSL *s)
{
    int rc = real_clear(s);
    set_session(s, 0); /* SSL_set_session(s, NULL): forget the last connection's session */
    return rc;
}
