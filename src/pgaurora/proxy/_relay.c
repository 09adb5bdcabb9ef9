/* Native relay: established sessions relayed socket to socket by C threads, outside the GIL.
 *
 * Python authenticates and routes a session, then hands its two sockets to `Relay.add()`. From then
 * on one worker thread (chosen by session id) owns them: a level-triggered epoll loop that does one
 * recv() and one send() per chunk, with no parsing beyond the 5-byte headers of the server's stream,
 * which it tracks so that an ErrorResponse can be injected only between messages. When a send would
 * block, the rest of the chunk waits in a per-socket buffer and the other side stops being read
 * (backpressure), so memory stays bounded by one chunk per direction.
 *
 * The thread tells Python that a session ended by writing its 8-byte id to a pipe (`notify_fd`).
 * Python tells a thread to end a session through a command queue and an eventfd.
 *
 * TLS (built with PGAURORA_TLS, where OpenSSL's headers were found): Python completes the handshake with
 * ssl.SSLObject over memory BIOs, then hands over that very SSL object (a reference of our own, taken with
 * SSL_up_ref). The thread keeps driving the same memory BIOs: ciphertext received goes into the read
 * BIO, SSL_read gives plaintext; plaintext to send goes through SSL_write in records of at most 8 kB (as
 * PostgreSQL's; libpq needs that) and out of the write BIO to the socket. Python never touches a handed-
 * over SSL object again: only this thread does, until the session ends.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#ifdef PGAURORA_TLS
#include <dlfcn.h>
#include <openssl/bio.h>
#include <openssl/ssl.h>
#endif

#define CHUNK (256 * 1024)
#define TLS_RECORD 8192             /* plaintext per TLS record written */
#define TLS_SLACK (17 * 1024)       /* room for one undecrypted record left in the read BIO */
#define BUCKETS 4096
#define MAX_EVENTS 256

typedef struct session session;

typedef struct side {
    int fd;
    uint32_t mask;           /* events registered with epoll */
    char *pend;              /* bytes waiting to be written to this socket (ciphertext on a TLS side) */
    size_t pend_len, pend_off;
    session *s;
    void *ssl;               /* SSL * when this socket carries TLS, else NULL */
    int peer_done;           /* TLS: the peer's close_notify arrived with the last plaintext delivered */
} side;

struct session {
    uint64_t id;
    side client, server;
    uint32_t left;           /* bytes left in the server's current message */
    unsigned char hdr[5];
    int hdr_have;
    char last_type;          /* type of the server's last message that was not asynchronous */
    int ended;
    char *lost_msg;          /* ErrorResponse for the client if the server goes away */
    size_t lost_len;
    session *next_in_bucket, *next_dead;
};

typedef struct command {
    int kind;                /* CMD_ADD, CMD_TERMINATE */
    session *s;              /* CMD_ADD */
    uint64_t id;             /* CMD_TERMINATE */
    char *msg;
    size_t msg_len;
    struct command *next;
} command;

enum { CMD_ADD, CMD_TERMINATE };

typedef struct worker {
    int ep, ctl, notify;
    pthread_t thread;
    int started;
    pthread_mutex_t lock;
    command *head, *tail;
    int stop;
    int quiet;               /* shutting down: nobody reads notify any more */
    session *table[BUCKETS];
    session *dead;
    char *buf;
    char *cbuf;              /* ciphertext, in and out of TLS sides */
} worker;

/* -- small helpers ------------------------------------------------------------------------------ */
static uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static int is_async(char type) { return type == 'A' || type == 'N' || type == 'S'; }

/* Follow the server's message framing over a chunk: headers only, bodies skipped. */
static void frame(session *s, const unsigned char *p, size_t n) {
    while (n) {
        if (s->left) {
            size_t k = n < s->left ? n : s->left;
            s->left -= k; p += k; n -= k;
            continue;
        }
        size_t k = 5 - s->hdr_have;
        if (k > n) k = n;
        memcpy(s->hdr + s->hdr_have, p, k);
        s->hdr_have += k; p += k; n -= k;
        if (s->hdr_have == 5) {
            uint32_t len = be32(s->hdr + 1);
            if (!is_async((char)s->hdr[0])) s->last_type = (char)s->hdr[0];
            s->left = len >= 4 ? len - 4 : 0;
            s->hdr_have = 0;
        }
    }
}

static int at_boundary(const session *s) {
    return s->left == 0 && s->hdr_have == 0 && s->last_type == 'Z' && s->client.pend_len == 0;
}

static void watch(worker *w, side *sd, uint32_t mask) {
    if (sd->mask == mask) return;
    struct epoll_event ev = {.events = mask, .data.ptr = sd};
    epoll_ctl(w->ep, EPOLL_CTL_MOD, sd->fd, &ev);
    sd->mask = mask;
}

static side *peer_of(side *sd) { return sd == &sd->s->client ? &sd->s->server : &sd->s->client; }

/* Read a side only while its peer has nothing pending; write-watch a side only while it has. */
static void rewatch(worker *w, session *s) {
    watch(w, &s->client, (s->server.pend_len ? 0 : EPOLLIN) | (s->client.pend_len ? EPOLLOUT : 0));
    watch(w, &s->server, (s->client.pend_len ? 0 : EPOLLIN) | (s->server.pend_len ? EPOLLOUT : 0));
}

/* -- the session table (one per worker, touched only by its thread) ----------------------------- */
static session **slot(worker *w, uint64_t id) {
    session **p = &w->table[id % BUCKETS];
    while (*p && (*p)->id != id) p = &(*p)->next_in_bucket;
    return p;
}

static void send_all(int fd, const char *data, size_t len) {
    while (len) {  /* best effort: a closing socket's last words are small */
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n <= 0) return;
        data += n; len -= n;
    }
}

static ssize_t seal(worker *w, side *to, const char *data, size_t len);
static void tls_close_notify(worker *w, side *sd);
static void tls_release(side *sd);

static void end_session(worker *w, session *s, const char *last_words, size_t len) {
    if (s->ended) return;
    s->ended = 1;
    if (last_words && at_boundary(s)) {
        if (!s->client.ssl) send_all(s->client.fd, last_words, len);
        else {
            ssize_t m = seal(w, &s->client, last_words, len);
            if (m > 0) send_all(s->client.fd, w->cbuf, (size_t)m);
        }
    }
    tls_close_notify(w, &s->client);
    tls_close_notify(w, &s->server);
    epoll_ctl(w->ep, EPOLL_CTL_DEL, s->client.fd, NULL);
    epoll_ctl(w->ep, EPOLL_CTL_DEL, s->server.fd, NULL);
    shutdown(s->client.fd, SHUT_RDWR);  /* Python still holds its own descriptors: shutdown ends */
    shutdown(s->server.fd, SHUT_RDWR);  /* the connections now, whoever closes last */
    close(s->client.fd);
    close(s->server.fd);
    *slot(w, s->id) = s->next_in_bucket;
    s->next_dead = w->dead;
    w->dead = s;
    uint64_t id = s->id;
    if (w->quiet) return;
    while (write(w->notify, &id, sizeof id) < 0 && errno == EINTR) {}
}

static void free_session(session *s) {
    tls_release(&s->client);
    tls_release(&s->server);
    free(s->client.pend);
    free(s->server.pend);
    free(s->lost_msg);
    free(s);
}

/* -- TLS: the SSL object's memory BIOs, driven by this thread ------------------------------------- */
#ifdef PGAURORA_TLS
/* Encrypt len plaintext bytes for `to` into w->cbuf, in records of at most TLS_RECORD bytes.
 * Returns the ciphertext length, or -1. */
static ssize_t seal(worker *w, side *to, const char *data, size_t len) {
    SSL *ssl = to->ssl;
    for (size_t off = 0; off < len; off += TLS_RECORD) {
        int piece = (int)(len - off < TLS_RECORD ? len - off : TLS_RECORD);
        if (SSL_write(ssl, data + off, piece) != piece) return -1;
    }
    size_t have = BIO_ctrl_pending(SSL_get_wbio(ssl));
    if (have > 2 * CHUNK) return -1;  /* cannot happen for len <= CHUNK */
    int m = have ? BIO_read(SSL_get_wbio(ssl), w->cbuf, (int)have) : 0;
    return m < 0 ? -1 : m;
}

/* Receive ciphertext from a TLS side and decrypt what it completes into w->buf. Returns the plaintext
 * length; 0 at the end of the stream (socket closed or close_notify); -1 on error; -2 when nothing
 * could be decrypted yet. Receives at most what leaves room for every record it may complete. */
static ssize_t unseal(worker *w, side *from) {
    SSL *ssl = from->ssl;
    ssize_t n = recv(from->fd, w->cbuf, CHUNK - TLS_SLACK, 0);
    if (n < 0) return (errno == EAGAIN || errno == EINTR) ? -2 : -1;
    if (n == 0) return 0;
    if (BIO_write(SSL_get_rbio(ssl), w->cbuf, (int)n) != n) return -1;
    size_t got = 0;
    for (;;) {
        int r = SSL_read(ssl, w->buf + got, (int)(CHUNK - got));
        if (r > 0) { got += (size_t)r; if (got == CHUNK) break; continue; }
        int err = SSL_get_error(ssl, r);
        if (err == SSL_ERROR_WANT_READ) break;
        if (err == SSL_ERROR_ZERO_RETURN) {
            from->peer_done = 1;  /* deliver what came before close_notify, then end the session */
            return got ? (ssize_t)got : 0;
        }
        return -1;
    }
    return got ? (ssize_t)got : -2;
}

static void tls_close_notify(worker *w, side *sd) {
    if (!sd->ssl) return;
    SSL_shutdown(sd->ssl);
    BIO *out = SSL_get_wbio(sd->ssl);
    int m = BIO_read(out, w->cbuf, CHUNK);
    if (m > 0) send_all(sd->fd, w->cbuf, (size_t)m);
}

static void tls_release(side *sd) {
    if (sd->ssl) SSL_free(sd->ssl);
    sd->ssl = NULL;
}
#else
static ssize_t seal(worker *w, side *to, const char *data, size_t len) { return -1; }
static ssize_t unseal(worker *w, side *from) { return -1; }
static void tls_close_notify(worker *w, side *sd) {}
static void tls_release(side *sd) {}
#endif

/* -- the data path ------------------------------------------------------------------------------ */
static int stash(side *to, const char *data, size_t len) {
    to->pend = malloc(len);
    if (!to->pend) return -1;
    memcpy(to->pend, data, len);
    to->pend_len = len;
    to->pend_off = 0;
    return 0;
}

/* The side `gone` ended the stream: the client hears why when that was the server. */
static void end_by(worker *w, side *gone) {
    session *s = gone->s;
    if (gone == &s->server) end_session(w, s, s->lost_msg, s->lost_len);
    else end_session(w, s, NULL, 0);
}

static void pump(worker *w, side *from) {
    session *s = from->s;
    side *to = peer_of(from);
    if (to->pend_len) return;
    ssize_t n;
    if (from->ssl) {
        n = unseal(w, from);
        if (n == -2) return;
    } else {
        n = recv(from->fd, w->buf, CHUNK, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    }
    if (n <= 0) {
        end_by(w, from);
        return;
    }
    if (from == &s->server) frame(s, (unsigned char *)w->buf, (size_t)n);
    const char *out = w->buf;
    if (to->ssl) {
        n = seal(w, to, w->buf, (size_t)n);
        if (n < 0) { end_session(w, s, NULL, 0); return; }
        out = w->cbuf;
    }
    ssize_t sent = send(to->fd, out, (size_t)n, MSG_NOSIGNAL);
    if (sent < 0 && (errno == EAGAIN || errno == EINTR)) sent = 0;
    if (sent < 0) { end_session(w, s, NULL, 0); return; }
    if (sent < n) {
        if (stash(to, out + sent, (size_t)(n - sent)) < 0) { end_session(w, s, NULL, 0); return; }
        rewatch(w, s);
    }
    if (from->peer_done && !to->pend_len) end_by(w, from);
}

static void flush(worker *w, side *to) {
    session *s = to->s;
    ssize_t n = send(to->fd, to->pend + to->pend_off, to->pend_len - to->pend_off, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n < 0) { end_session(w, s, NULL, 0); return; }
    to->pend_off += (size_t)n;
    if (to->pend_off == to->pend_len) {
        free(to->pend);
        to->pend = NULL;
        to->pend_len = to->pend_off = 0;
        if (peer_of(to)->peer_done) { end_by(w, peer_of(to)); return; }
        rewatch(w, s);
    }
}

static void on_event(worker *w, side *sd, uint32_t events) {
    if (sd->s->ended) return;
    if (events & EPOLLERR) {
        /* A reset socket may still hold what came before the reset (a backend's FATAL before it exits
         * with a query unread): pass that on first; the read after it reports the error and ends. */
        if ((events & EPOLLIN) && !peer_of(sd)->pend_len) pump(w, sd);
        else end_by(w, sd);
        return;
    }
    if (events & EPOLLOUT) flush(w, sd);
    if (!sd->s->ended && (events & (EPOLLIN | EPOLLHUP))) {
        if (peer_of(sd)->pend_len && (events & EPOLLHUP)) end_session(w, sd->s, NULL, 0);
        else pump(w, sd);
    }
}

/* -- commands from Python ----------------------------------------------------------------------- */
static void adopt(worker *w, session *s) {
    struct epoll_event ev = {.events = EPOLLIN};
    s->client.mask = s->server.mask = EPOLLIN;
    ev.data.ptr = &s->client;
    int a = epoll_ctl(w->ep, EPOLL_CTL_ADD, s->client.fd, &ev);
    ev.data.ptr = &s->server;
    int b = epoll_ctl(w->ep, EPOLL_CTL_ADD, s->server.fd, &ev);
    session **p = slot(w, s->id);
    s->next_in_bucket = *p;  /* a reused id (never, in practice) shadows the older entry */
    *p = s;
    if (a < 0 || b < 0) end_session(w, s, NULL, 0);
}

static void run_command(worker *w, command *c) {
    if (c->kind == CMD_ADD) {
        adopt(w, c->s);
    } else {
        session *s = *slot(w, c->id);
        if (s) end_session(w, s, c->msg, c->msg_len);
    }
    free(c->msg);
    free(c);
}

static int drain_commands(worker *w) {
    uint64_t v;
    while (read(w->ctl, &v, sizeof v) < 0 && errno == EINTR) {}
    pthread_mutex_lock(&w->lock);
    command *c = w->head;
    w->head = w->tail = NULL;
    int stop = w->stop;
    pthread_mutex_unlock(&w->lock);
    while (c) {
        command *next = c->next;
        run_command(w, c);
        c = next;
    }
    return stop;
}

static void reap(worker *w) {
    while (w->dead) {
        session *s = w->dead;
        w->dead = s->next_dead;
        free_session(s);
    }
}

static void close_all(worker *w) {
    w->quiet = 1;
    for (int i = 0; i < BUCKETS; i++)
        while (w->table[i]) end_session(w, w->table[i], NULL, 0);
    reap(w);
}

static void *worker_main(void *arg) {
    worker *w = arg;
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(w->ep, evs, MAX_EVENTS, -1);
        int stop = 0;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) stop |= drain_commands(w);
            else on_event(w, evs[i].data.ptr, evs[i].events);
        }
        reap(w);  /* only after the batch: later events in it may point at a session that ended */
        if (stop) break;
    }
    close_all(w);
    return NULL;
}

static int post(worker *w, command *c) {
    pthread_mutex_lock(&w->lock);
    c->next = NULL;
    if (w->tail) w->tail->next = c; else w->head = c;
    w->tail = c;
    pthread_mutex_unlock(&w->lock);
    uint64_t one = 1;
    return write(w->ctl, &one, sizeof one) < 0 ? -1 : 0;
}

/* -- the Python type ---------------------------------------------------------------------------- */
typedef struct {
    PyObject_HEAD
    worker *workers;
    int nworkers;
    int notify_r, notify_w;
    int closed;
} Relay;

static int worker_init(worker *w, int notify) {
    memset(w, 0, sizeof *w);
    w->notify = notify;
    w->buf = malloc(CHUNK);
    w->cbuf = malloc(2 * CHUNK);
    w->ep = epoll_create1(EPOLL_CLOEXEC);
    w->ctl = eventfd(0, EFD_CLOEXEC);
    pthread_mutex_init(&w->lock, NULL);
    if (!w->buf || !w->cbuf || w->ep < 0 || w->ctl < 0) return -1;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, w->ctl, &ev) < 0) return -1;
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) return -1;
    w->started = 1;
    return 0;
}

static void worker_release(worker *w) {
    if (w->ep >= 0) close(w->ep);
    if (w->ctl >= 0) close(w->ctl);
    w->ep = w->ctl = -1;
    free(w->buf);
    free(w->cbuf);
    w->buf = w->cbuf = NULL;
}

static void worker_signal_stop(worker *w) {
    pthread_mutex_lock(&w->lock);
    w->stop = 1;
    pthread_mutex_unlock(&w->lock);
    uint64_t one = 1;
    if (write(w->ctl, &one, sizeof one) < 0) w->started = 0;  /* cannot wake it: do not wait for it */
}

/* Join a thread while discarding its notifications: nobody reads them any more, and a thread
 * blocked on a full pipe would otherwise never reach its exit. */
static void worker_join(worker *w, int notify_r) {
    char sink[4096];
    while (pthread_tryjoin_np(w->thread, NULL) == EBUSY) {
        if (read(notify_r, sink, sizeof sink) <= 0) usleep(1000);
    }
}

static void relay_shutdown(Relay *self) {
    if (self->closed) return;
    self->closed = 1;
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < self->nworkers; i++)
        if (self->workers[i].started) worker_signal_stop(&self->workers[i]);
    for (int i = 0; i < self->nworkers; i++) {
        if (self->workers[i].started) worker_join(&self->workers[i], self->notify_r);
        worker_release(&self->workers[i]);
    }
    Py_END_ALLOW_THREADS
    close(self->notify_r);
    close(self->notify_w);
    free(self->workers);
    self->workers = NULL;
}

static int Relay_init(Relay *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"threads", NULL};
    int threads;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i", kwlist, &threads)) return -1;
    if (self->workers || self->closed) {
        PyErr_SetString(PyExc_RuntimeError, "Relay is already initialised");
        return -1;
    }
    if (threads < 1 || threads > 256) {
        PyErr_SetString(PyExc_ValueError, "threads must be between 1 and 256");
        return -1;
    }
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0) { PyErr_SetFromErrno(PyExc_OSError); return -1; }
    fcntl(fds[0], F_SETFL, O_NONBLOCK);  /* Python's reader; the threads' end stays blocking */
    fcntl(fds[1], F_SETPIPE_SZ, 1 << 20);  /* room for 131072 endings between two reads (best effort) */
    self->notify_r = fds[0];
    self->notify_w = fds[1];
    self->workers = calloc((size_t)threads, sizeof(worker));
    if (!self->workers) { PyErr_NoMemory(); return -1; }
    for (int i = 0; i < threads; i++) {
        self->nworkers = i + 1;
        if (worker_init(&self->workers[i], fds[1]) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            relay_shutdown(self);
            return -1;
        }
    }
    return 0;
}

static void Relay_dealloc(Relay *self) {
    if (self->workers) relay_shutdown(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int dup_nonblocking(int fd) {
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy >= 0) fcntl(copy, F_SETFL, fcntl(copy, F_GETFL) | O_NONBLOCK);
    return copy;
}

/* -- TLS objects from Python's ssl module ------------------------------------------------------- */
#ifdef PGAURORA_TLS
/* CPython's PySSLSocket (the _ssl._SSLSocket behind ssl.SSLObject) starts with these fields in every
 * version this builds for; tls_compatible() also checks that _ssl uses this very libssl. */
#if PY_VERSION_HEX < 0x03080000 || PY_VERSION_HEX >= 0x030E0000
#define TLS_LAYOUT_KNOWN 0
#else
#define TLS_LAYOUT_KNOWN 1
#endif
typedef struct { PyObject_HEAD PyObject *Socket; SSL *ssl; } ssl_socket_head;
static int tls_usable = 0;

static PyObject *tls_compatible(PyObject *module, PyObject *arg) {
    const char *path = PyUnicode_AsUTF8(arg);
    if (!path) return NULL;
    void *handle = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    tls_usable = TLS_LAYOUT_KNOWN && handle && dlsym(handle, "SSL_read") == (void *)SSL_read;
    if (handle) dlclose(handle);
    return PyBool_FromLong(tls_usable);
}

/* The SSL * of an _ssl._SSLSocket whose handshake completed, with a reference of our own; NULL for None. */
static int ssl_of(PyObject *obj, void **out) {
    *out = NULL;
    if (obj == Py_None) return 0;
    if (!tls_usable || strcmp(Py_TYPE(obj)->tp_name, "_ssl._SSLSocket") != 0) {
        PyErr_SetString(PyExc_TypeError, "this relay cannot take that TLS object");
        return -1;
    }
    SSL *ssl = ((ssl_socket_head *)obj)->ssl;
    if (!ssl || !SSL_is_init_finished(ssl) || SSL_pending(ssl) || BIO_ctrl_pending(SSL_get_rbio(ssl))) {
        PyErr_SetString(PyExc_ValueError, "TLS object is not idle after a completed handshake");
        return -1;
    }
    SSL_up_ref(ssl);
    *out = ssl;
    return 0;
}
#else
static PyObject *tls_compatible(PyObject *module, PyObject *arg) { Py_RETURN_FALSE; }
static int ssl_of(PyObject *obj, void **out) {
    *out = NULL;
    if (obj == Py_None) return 0;
    PyErr_SetString(PyExc_TypeError, "built without OpenSSL: this relay carries no TLS");
    return -1;
}
#endif

static PyObject *Relay_add(Relay *self, PyObject *args) {
    unsigned long long id;
    int cfd, sfd;
    const char *lost;
    Py_ssize_t lost_len;
    PyObject *client_tls = Py_None, *server_tls = Py_None;
    if (!PyArg_ParseTuple(args, "Kiiy#|OO", &id, &cfd, &sfd, &lost, &lost_len, &client_tls, &server_tls))
        return NULL;
    if (self->closed) { PyErr_SetString(PyExc_RuntimeError, "relay is closed"); return NULL; }
    void *client_ssl, *server_ssl;
    if (ssl_of(client_tls, &client_ssl) < 0) return NULL;
    if (ssl_of(server_tls, &server_ssl) < 0) {
        side tmp = {.ssl = client_ssl};
        tls_release(&tmp);
        return NULL;
    }
    session *s = calloc(1, sizeof *s);
    command *c = calloc(1, sizeof *c);
    char *msg = malloc((size_t)lost_len ? (size_t)lost_len : 1);
    if (!s || !c || !msg) {
        side tmp = {.ssl = client_ssl}, tmp2 = {.ssl = server_ssl};
        tls_release(&tmp);
        tls_release(&tmp2);
        free(s); free(c); free(msg);
        return PyErr_NoMemory();
    }
    memcpy(msg, lost, (size_t)lost_len);
    s->client.ssl = client_ssl;
    s->server.ssl = server_ssl;
    s->id = id;
    s->last_type = 'Z';  /* handed over right after ReadyForQuery */
    s->lost_msg = msg;
    s->lost_len = (size_t)lost_len;
    s->client.s = s->server.s = s;
    s->client.fd = dup_nonblocking(cfd);
    s->server.fd = dup_nonblocking(sfd);
    if (s->client.fd < 0 || s->server.fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        if (s->client.fd >= 0) close(s->client.fd);
        if (s->server.fd >= 0) close(s->server.fd);
        free_session(s);
        free(c);
        return NULL;
    }
    c->kind = CMD_ADD;
    c->s = s;
    post(&self->workers[id % (unsigned)self->nworkers], c);
    Py_RETURN_NONE;
}

static PyObject *Relay_terminate(Relay *self, PyObject *args) {
    unsigned long long id;
    const char *data;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "Ky#", &id, &data, &len)) return NULL;
    if (self->closed) Py_RETURN_NONE;
    command *c = calloc(1, sizeof *c);
    char *msg = malloc((size_t)len ? (size_t)len : 1);
    if (!c || !msg) { free(c); free(msg); return PyErr_NoMemory(); }
    memcpy(msg, data, (size_t)len);
    c->kind = CMD_TERMINATE;
    c->id = id;
    c->msg = msg;
    c->msg_len = (size_t)len;
    post(&self->workers[id % (unsigned)self->nworkers], c);
    Py_RETURN_NONE;
}

static PyObject *Relay_close(Relay *self, PyObject *unused) {
    relay_shutdown(self);
    Py_RETURN_NONE;
}

static PyObject *Relay_notify_fd(Relay *self, void *closure) { return PyLong_FromLong(self->notify_r); }
static PyObject *Relay_threads(Relay *self, void *closure) { return PyLong_FromLong(self->nworkers); }

static PyMethodDef Relay_methods[] = {
    {"add", (PyCFunction)Relay_add, METH_VARARGS,
     "add(id, client_fd, server_fd, lost_message[, client_tls, server_tls]): relay a session's sockets "
     "(duplicated) from now on; a TLS side is given as the _ssl._SSLSocket that completed its handshake"},
    {"terminate", (PyCFunction)Relay_terminate, METH_VARARGS,
     "terminate(id, message): end a session, sending message first if the server is between messages"},
    {"close", (PyCFunction)Relay_close, METH_NOARGS, "stop the threads, closing every session they hold"},
    {NULL}};

static PyGetSetDef Relay_getset[] = {
    {"notify_fd", (getter)Relay_notify_fd, NULL, "pipe of 8-byte ids of sessions that ended", NULL},
    {"threads", (getter)Relay_threads, NULL, "number of relay threads", NULL},
    {NULL}};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pgaurora.proxy._relay.Relay",
    .tp_basicsize = sizeof(Relay),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Relay threads for established sessions",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Relay_init,
    .tp_dealloc = (destructor)Relay_dealloc,
    .tp_methods = Relay_methods,
    .tp_getset = Relay_getset,
};

static PyMethodDef module_methods[] = {
    {"tls_compatible", (PyCFunction)tls_compatible, METH_O,
     "tls_compatible(path_of__ssl): can the relay drive ssl.SSLObject's TLS state (same libssl, known layout)?"},
    {NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_relay", .m_doc = "Native relay threads", .m_size = -1,
    .m_methods = module_methods};

PyMODINIT_FUNC PyInit__relay(void) {
    if (PyType_Ready(&RelayType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&RelayType);
    if (PyModule_AddObject(m, "Relay", (PyObject *)&RelayType) < 0) {
        Py_DECREF(&RelayType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
