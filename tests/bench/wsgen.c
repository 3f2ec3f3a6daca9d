/* wsgen: the load generator of tests/bench/compare.py.
 *
 * One process, one thread, one epoll set, raw non-blocking TCP sockets and a
 * minimal RFC 6455 client (handshake, masked client frames, unmasked server
 * frames). It answers every ping with a pong for about 12 us of its own CPU,
 * system calls included, so it stays far cheaper than any server it measures. Commands arrive
 * one per line on stdin; every answer is one JSON line on stdout. EOF on
 * stdin ends the process (the controller went away).
 *
 *   wsgen HOST PORT SRC_IP_BASE NSRC
 *     connect N CONC SECS     open N more connections, at most CONC handshakes at once,
 *                             starting none after SECS seconds
 *     stats                   counters (pings answered, messages, server closes, ...)
 *     silent MOD              connections with idx % MOD == MOD-1 stop reading and
 *                             answering, TCP kept open; teardown times are recorded
 *     detect                  the teardown times of the silent ones (microseconds)
 *     echo C SIZE             C connections (never a silent candidate) run a closed
 *                             loop of SIZE-byte binary messages, one in flight each
 *     echo_stop               stop starting new round trips
 *     subscribe CH FROM       connections idx >= FROM send {"type":"subscribe",...}
 *     publish CH              connection 0 publishes {"t": <CLOCK_MONOTONIC ns>}
 *     spread PREFIX K         every open connection subscribes to PREFIX<idx % K>
 *     pubrate PREFIX K RATE SECS
 *                             publish RATE messages a second for SECS seconds, the open
 *                             connections taking turns, channel PREFIX<n % K> for the
 *                             n-th, each {"t": <CLOCK_MONOTONIC ns>}; "pubrate" when done
 *     lat                     delivery latencies of received "t" stamps (microseconds)
 *     cycles TOTAL CONC SECS  connect, handshake, close(1000), wait for the server's
 *                             close and FIN; TOTAL times, CONC at once, SECS at most
 *     quit
 *
 * Source addresses rotate over SRC_IP_BASE .. +NSRC-1 (any 127.x address is
 * local on Linux) with IP_BIND_ADDRESS_NO_PORT, so ephemeral ports never run
 * out across runs and cycles.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum { ST_FREE = 0, ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_DONE };
enum {
    F_SILENT = 1,
    F_ECHO = 2,
    F_CYCLE = 4,
    F_CLOSE_SENT = 8,   /* we sent a close frame */
    F_CLOSE_RECV = 16,  /* the server's close frame arrived */
    F_SERVER_CLOSED = 32,
    F_WANT_OUT = 64,
    F_ECHO_WAIT = 128,  /* an echo is in flight */
};

typedef struct {
    int fd;
    uint8_t state;
    uint8_t flags;
    uint8_t *in;
    uint32_t in_len, in_cap;
    uint8_t *out;
    uint32_t out_len, out_cap;
    uint64_t t0; /* connect start, or silent start */
} conn_t;

static conn_t *conns;
static uint32_t nconns, conns_cap;
static int ep;
static struct sockaddr_in server_addr;
static uint32_t src_base, nsrc, src_next;

/* counters */
static uint64_t n_open, n_failed, n_pings, n_msgs, n_server_closed, n_subscribed;
static uint64_t n_echo, n_bytes_in;
static uint64_t n_published, n_errors, n_drift; /* relay replies: published, error, drift */
/* pubrate */
static char pub_prefix[64];
static uint64_t pub_k, pub_rate, pub_sent, pub_start_ns, pub_end_ns;
static uint32_t pub_next_conn;
static int pub_active;
/* connect batch */
static uint64_t connect_remaining, connect_inflight, connect_conc, connect_ok, connect_failed;
static uint64_t connect_started_ns, connect_deadline_ns, connect_skipped;
static int connect_active;
/* cycles */
static uint64_t cyc_target, cyc_started, cyc_done, cyc_failed, cyc_inflight, cyc_conc;
static uint64_t cyc_start_ns, cyc_deadline_ns, cyc_nofin;
static int cyc_active;
/* silent */
static int64_t *detect_us;
static uint64_t n_detect, detect_cap, n_silent;
/* latency */
static int64_t *lat_us;
static uint64_t n_lat, lat_cap;
/* echo */
static uint8_t *echo_frame;
static uint32_t echo_frame_len, echo_payload_len;
static int echo_on;

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint32_t rand32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q) {
        fprintf(stderr, "wsgen: out of memory\n");
        exit(3);
    }
    return q;
}

static void push_i64(int64_t **arr, uint64_t *len, uint64_t *cap, int64_t v) {
    if (*len == *cap) {
        *cap = *cap ? *cap * 2 : 1024;
        *arr = xrealloc(*arr, *cap * sizeof(int64_t));
    }
    (*arr)[(*len)++] = v;
}

static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void emit(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

static void ep_set(uint32_t idx, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data = {.u64 = idx}};
    if (epoll_ctl(ep, op, conns[idx].fd, &ev) < 0 && op != EPOLL_CTL_DEL) {
        fprintf(stderr, "wsgen: epoll_ctl: %s\n", strerror(errno));
    }
}

static uint32_t read_events(const conn_t *c) {
    if (c->flags & F_SILENT) return EPOLLRDHUP; /* hang-ups only: never read */
    uint32_t e = EPOLLIN | EPOLLRDHUP;
    if (c->flags & F_WANT_OUT) e |= EPOLLOUT;
    return e;
}

/* ------------------------------------------------------------------ frames */

static uint32_t frame_header(uint8_t *h, int opcode, uint64_t len, const uint8_t key[4]) {
    uint32_t n = 0;
    h[n++] = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        h[n++] = (uint8_t)(0x80 | len);
    } else if (len < 65536) {
        h[n++] = 0x80 | 126;
        h[n++] = (uint8_t)(len >> 8);
        h[n++] = (uint8_t)len;
    } else {
        h[n++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) h[n++] = (uint8_t)(len >> (8 * i));
    }
    memcpy(h + n, key, 4);
    return n + 4;
}

static uint32_t build_frame(uint8_t *dst, int opcode, const uint8_t *payload, uint64_t len) {
    uint8_t key[4];
    uint32_t k = rand32() | 0x01010101u; /* a non-zero key: servers really unmask */
    memcpy(key, &k, 4);
    uint32_t n = frame_header(dst, opcode, len, key);
    for (uint64_t i = 0; i < len; i++) dst[n + i] = payload[i] ^ key[i & 3];
    return n + (uint32_t)len;
}

static void conn_close(uint32_t idx);

static void flush_out(uint32_t idx) {
    conn_t *c = &conns[idx];
    while (c->out_len) {
        ssize_t w = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            conn_close(idx);
            return;
        }
        memmove(c->out, c->out + w, c->out_len - (uint32_t)w);
        c->out_len -= (uint32_t)w;
    }
    int want = c->out_len > 0;
    if (want != !!(c->flags & F_WANT_OUT)) {
        if (want)
            c->flags |= F_WANT_OUT;
        else
            c->flags &= (uint8_t)~F_WANT_OUT;
        ep_set(idx, read_events(c), EPOLL_CTL_MOD);
    }
}

static void send_bytes(uint32_t idx, const uint8_t *data, uint32_t len) {
    conn_t *c = &conns[idx];
    if (c->state != ST_OPEN && c->state != ST_HANDSHAKE) return;
    uint32_t off = 0;
    if (!c->out_len) {
        ssize_t w = send(c->fd, data, len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                conn_close(idx);
                return;
            }
            w = 0;
        }
        off = (uint32_t)w;
        if (off == len) return;
    }
    if (c->out_len + (len - off) > c->out_cap) {
        c->out_cap = (c->out_len + (len - off)) * 2;
        c->out = xrealloc(c->out, c->out_cap);
    }
    memcpy(c->out + c->out_len, data + off, len - off);
    c->out_len += len - off;
    flush_out(idx);
}

static void send_frame(uint32_t idx, int opcode, const uint8_t *payload, uint32_t len) {
    uint8_t stackbuf[512];
    uint8_t *buf = len + 14 <= sizeof stackbuf ? stackbuf : xrealloc(NULL, len + 14);
    uint32_t n = build_frame(buf, opcode, payload, len);
    send_bytes(idx, buf, n);
    if (buf != stackbuf) free(buf);
}

static void send_close(uint32_t idx, uint16_t code) {
    uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    conns[idx].flags |= F_CLOSE_SENT;
    send_frame(idx, 8, p, 2);
}

static void send_echo(uint32_t idx) {
    conns[idx].flags |= F_ECHO_WAIT;
    send_bytes(idx, echo_frame, echo_frame_len);
}

/* ------------------------------------------------------------- lifecycle */

static void start_connects(void);
static void start_cycles(void);

static void finish_connect(int ok) {
    if (!connect_active) return;
    connect_inflight--;
    if (ok)
        connect_ok++;
    else
        connect_failed++;
    start_connects();
}

static void conn_close(uint32_t idx) {
    conn_t *c = &conns[idx];
    if (c->state == ST_DONE || c->state == ST_FREE) return;
    uint64_t t = now_ns();
    int was_open = c->state == ST_OPEN;
    int handshaking = c->state == ST_CONNECTING || c->state == ST_HANDSHAKE;
    if (c->flags & F_CYCLE) {
        cyc_inflight--;
        if (was_open && (c->flags & F_CLOSE_RECV))
            cyc_done++;
        else
            cyc_failed++;
    } else if (handshaking) {
        n_failed++;
        finish_connect(0);
    } else if (c->flags & F_SILENT) {
        push_i64(&detect_us, &n_detect, &detect_cap, (int64_t)((t - c->t0) / 1000));
    } else if (!(c->flags & F_SERVER_CLOSED) && !(c->flags & F_CLOSE_SENT)) {
        n_server_closed++; /* dropped by the server without a close frame */
    }
    if (was_open) n_open--;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = ST_DONE;
    free(c->in);
    free(c->out);
    c->in = c->out = NULL;
    c->in_len = c->in_cap = c->out_len = c->out_cap = 0;
    if (cyc_active) start_cycles();
}

static uint32_t new_conn(uint8_t flags) {
    if (nconns == conns_cap) {
        conns_cap = conns_cap ? conns_cap * 2 : 4096;
        conns = xrealloc(conns, conns_cap * sizeof(conn_t));
    }
    uint32_t idx = nconns++;
    conn_t *c = &conns[idx];
    memset(c, 0, sizeof *c);
    c->flags = flags;
    c->t0 = now_ns();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        fprintf(stderr, "wsgen: socket: %s\n", strerror(errno));
        c->state = ST_HANDSHAKE; /* counted as a failed handshake */
        conn_close(idx);
        return idx;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    struct sockaddr_in src = {.sin_family = AF_INET, .sin_port = 0};
    src.sin_addr.s_addr = htonl(src_base + (src_next++ % nsrc));
    if (bind(c->fd, (struct sockaddr *)&src, sizeof src) < 0)
        fprintf(stderr, "wsgen: bind: %s\n", strerror(errno));
    c->state = ST_CONNECTING;
    int r = connect(c->fd, (struct sockaddr *)&server_addr, sizeof server_addr);
    if (r < 0 && errno != EINPROGRESS) {
        c->state = ST_HANDSHAKE; /* counted as a failed handshake below */
        ep_set(idx, EPOLLOUT, EPOLL_CTL_ADD);
        conn_close(idx);
        return idx;
    }
    ep_set(idx, EPOLLOUT, EPOLL_CTL_ADD);
    return idx;
}

static void start_connects(void) {
    if (connect_active && connect_remaining && now_ns() > connect_deadline_ns) {
        connect_skipped += connect_remaining; /* out of time: never started */
        connect_remaining = 0;
    }
    while (connect_active && connect_remaining && connect_inflight < connect_conc) {
        connect_remaining--;
        connect_inflight++;
        new_conn(0);
    }
    if (connect_active && !connect_remaining && !connect_inflight) {
        connect_active = 0;
        emit("{\"ev\":\"connected\",\"ok\":%lu,\"failed\":%lu,\"skipped\":%lu,\"open\":%lu,"
             "\"seconds\":%.3f}",
             connect_ok, connect_failed, connect_skipped, n_open,
             (now_ns() - connect_started_ns) / 1e9);
    }
}

static void report_cycles(void) {
    cyc_active = 0;
    emit("{\"ev\":\"cycles\",\"done\":%lu,\"failed\":%lu,\"nofin\":%lu,\"seconds\":%.3f}",
         cyc_done, cyc_failed, cyc_nofin, (now_ns() - cyc_start_ns) / 1e9);
}

static void start_cycles(void) {
    if (!cyc_active) return;
    uint64_t t = now_ns();
    while (cyc_started < cyc_target && cyc_inflight < cyc_conc && t < cyc_deadline_ns) {
        cyc_started++;
        cyc_inflight++;
        new_conn(F_CYCLE);
    }
    if (!cyc_inflight && (cyc_started >= cyc_target || t >= cyc_deadline_ns)) report_cycles();
}

static const char handshake_fmt[] =
    "GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
static char handshake[256];
static uint32_t handshake_len;

static void on_connected(uint32_t idx) {
    conn_t *c = &conns[idx];
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        c->state = ST_HANDSHAKE;
        conn_close(idx);
        return;
    }
    c->state = ST_HANDSHAKE;
    ep_set(idx, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_MOD);
    send_bytes(idx, (const uint8_t *)handshake, handshake_len);
}

static void on_message(uint32_t idx, int opcode, const uint8_t *p, uint64_t len) {
    conn_t *c = &conns[idx];
    n_msgs++;
    if (c->flags & F_ECHO_WAIT) {
        c->flags &= (uint8_t)~F_ECHO_WAIT;
        if (len == echo_payload_len) n_echo++;
        if (echo_on && (c->flags & F_ECHO)) send_echo(idx);
        return;
    }
    if (opcode != 1 && opcode != 0) return;
    static const char tkey[] = "\"t\":";
    const uint8_t *t = memmem(p, len, tkey, 4);
    if (t) {
        int64_t stamp = strtoll((const char *)t + 4, NULL, 10);
        push_i64(&lat_us, &n_lat, &lat_cap, ((int64_t)now_ns() - stamp) / 1000);
        return;
    }
    if (memmem(p, len, "\"subscribed\"", 12))
        n_subscribed++;
    else if (memmem(p, len, "\"published\"", 11))
        n_published++;
    else if (memmem(p, len, "\"drift\"", 7))
        n_drift++;
    else if (memmem(p, len, "\"error\"", 7))
        n_errors++;
}

/* Parse complete frames from c->in; returns 0 if the connection was closed. */
static int parse_frames(uint32_t idx, const uint8_t *buf, uint32_t avail, uint32_t *used) {
    uint32_t pos = 0;
    while (avail - pos >= 2) {
        const uint8_t *f = buf + pos;
        int fin = f[0] & 0x80, opcode = f[0] & 0x0f, masked = f[1] & 0x80;
        uint64_t len = f[1] & 0x7f;
        uint32_t hdr = 2;
        if (len == 126) {
            if (avail - pos < 4) break;
            len = ((uint64_t)f[2] << 8) | f[3];
            hdr = 4;
        } else if (len == 127) {
            if (avail - pos < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = (len << 8) | f[2 + i];
            hdr = 10;
        }
        if (masked) hdr += 4;
        if ((uint64_t)(avail - pos) < hdr + len) break;
        const uint8_t *payload = f + hdr;
        pos += hdr + (uint32_t)len;
        if (opcode == 9) { /* ping: answer at once with the same payload */
            n_pings++;
            send_frame(idx, 10, payload, (uint32_t)len);
        } else if (opcode == 10) {
            /* pong: nothing to do */
        } else if (opcode == 8) {
            conn_t *c = &conns[idx];
            c->flags |= F_CLOSE_RECV;
            if (!(c->flags & F_CLOSE_SENT)) {
                if (!(c->flags & F_SERVER_CLOSED) && !(c->flags & F_SILENT)) n_server_closed++;
                c->flags |= F_SERVER_CLOSED;
                uint16_t code = len >= 2 ? (uint16_t)((payload[0] << 8) | payload[1]) : 1000;
                send_close(idx, code);
            }
            /* Now wait for the server's FIN (RFC 6455 §7.1.1: the server closes first). */
        } else if (fin) {
            on_message(idx, opcode, payload, len);
        }
        if (conns[idx].state != ST_OPEN) {
            *used = pos;
            return 0;
        }
    }
    *used = pos;
    return 1;
}

static void on_handshake_data(uint32_t idx, const uint8_t *data, uint32_t len);

static void append_in(conn_t *c, const uint8_t *data, uint32_t len) {
    if (c->in_len + len > c->in_cap) {
        c->in_cap = (c->in_len + len) * 2;
        c->in = xrealloc(c->in, c->in_cap);
    }
    memcpy(c->in + c->in_len, data, len);
    c->in_len += len;
}

static void on_frames_data(uint32_t idx, const uint8_t *data, uint32_t len) {
    conn_t *c = &conns[idx];
    uint32_t used = 0;
    if (!c->in_len) {
        if (!parse_frames(idx, data, len, &used)) return;
        if (used < len) append_in(&conns[idx], data + used, len - used);
        return;
    }
    append_in(c, data, len);
    if (!parse_frames(idx, c->in, c->in_len, &used)) return;
    c = &conns[idx];
    memmove(c->in, c->in + used, c->in_len - used);
    c->in_len -= used;
    if (!c->in_len) {
        free(c->in);
        c->in = NULL;
        c->in_cap = 0;
    }
}

static void on_handshake_data(uint32_t idx, const uint8_t *data, uint32_t len) {
    conn_t *c = &conns[idx];
    append_in(c, data, len);
    uint8_t *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!end) return;
    if (c->in_len < 12 || memcmp(c->in + 9, "101", 3) != 0) {
        conn_close(idx);
        return;
    }
    uint32_t head = (uint32_t)(end + 4 - c->in);
    uint32_t rest = c->in_len - head;
    uint8_t *tail = NULL;
    if (rest) {
        tail = xrealloc(NULL, rest);
        memcpy(tail, c->in + head, rest);
    }
    free(c->in);
    c->in = NULL;
    c->in_len = c->in_cap = 0;
    c->state = ST_OPEN;
    n_open++;
    if (c->flags & F_CYCLE) {
        send_close(idx, 1000);
    } else {
        finish_connect(1);
    }
    if (rest && conns[idx].state == ST_OPEN) on_frames_data(idx, tail, rest);
    free(tail);
}

static uint8_t rbuf[1 << 18];

static void on_readable(uint32_t idx) {
    for (int rounds = 0; rounds < 4; rounds++) {
        conn_t *c = &conns[idx];
        if (c->state != ST_OPEN && c->state != ST_HANDSHAKE) return;
        ssize_t r = recv(c->fd, rbuf, sizeof rbuf, 0);
        if (r == 0) {
            conn_close(idx);
            return;
        }
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            conn_close(idx);
            return;
        }
        n_bytes_in += (uint64_t)r;
        if (c->state == ST_HANDSHAKE)
            on_handshake_data(idx, rbuf, (uint32_t)r);
        else
            on_frames_data(idx, rbuf, (uint32_t)r);
        if ((size_t)r < sizeof rbuf) return;
    }
}

/* ---------------------------------------------------------------- pubrate */

/* Send every publish due by now (RATE a second since the start), the open
 * connections taking turns; a stamp is taken as each one is sent. */
static void pub_tick(void) {
    if (!pub_active) return;
    uint64_t t = now_ns();
    uint64_t until = t < pub_end_ns ? t : pub_end_ns;
    uint64_t due = (until - pub_start_ns) * pub_rate / 1000000000ull;
    char msg[300];
    for (uint32_t tries = 0; pub_sent < due && nconns && tries < nconns;) {
        uint32_t idx = pub_next_conn++ % nconns;
        if (conns[idx].state != ST_OPEN || (conns[idx].flags & (F_SILENT | F_CYCLE))) {
            tries++;
            continue;
        }
        tries = 0;
        int len = snprintf(msg, sizeof msg,
                           "{\"type\":\"publish\",\"channel\":\"%s%lu\",\"data\":{\"t\":%lu}}",
                           pub_prefix, pub_sent % pub_k, now_ns());
        send_frame(idx, 1, (const uint8_t *)msg, (uint32_t)len);
        pub_sent++;
    }
    if (t >= pub_end_ns) {
        pub_active = 0;
        emit("{\"ev\":\"pubrate\",\"sent\":%lu,\"seconds\":%.3f}", pub_sent,
             (t - pub_start_ns) / 1e9);
    }
}

/* --------------------------------------------------------------- commands */

static void print_i64_list(const char *ev, const char *key, int64_t *arr, uint64_t n,
                           const char *extra) {
    fprintf(stdout, "{\"ev\":\"%s\",%s\"%s\":[", ev, extra, key);
    for (uint64_t i = 0; i < n; i++) fprintf(stdout, i ? ",%ld" : "%ld", arr[i]);
    fputs("]}\n", stdout);
    fflush(stdout);
}

static void command(char *line) {
    char name[32] = {0}, arg[128] = {0};
    unsigned long a = 0, b = 0, d = 0;
    int n = sscanf(line, "%31s", name);
    if (n < 1) return;
    if (!strcmp(name, "connect")) {
        sscanf(line, "%*s %lu %lu %lu", &a, &b, &d);
        connect_remaining = a;
        connect_conc = b ? b : 64;
        connect_inflight = connect_ok = connect_failed = connect_skipped = 0;
        connect_started_ns = now_ns();
        connect_deadline_ns = connect_started_ns + (uint64_t)(d ? d : 600) * 1000000000ull;
        connect_active = 1;
        start_connects();
    } else if (!strcmp(name, "stats")) {
        uint64_t silent_open = 0;
        for (uint32_t i = 0; i < nconns; i++)
            if ((conns[i].flags & F_SILENT) && conns[i].state == ST_OPEN) silent_open++;
        emit("{\"ev\":\"stats\",\"t\":%lu,\"open\":%lu,\"failed\":%lu,\"pings\":%lu,"
             "\"msgs\":%lu,\"echo\":%lu,\"server_closed\":%lu,\"subscribed\":%lu,"
             "\"silent\":%lu,\"silent_open\":%lu,\"bytes_in\":%lu,\"published\":%lu,"
             "\"errors\":%lu,\"drift\":%lu}",
             now_ns(), n_open, n_failed, n_pings, n_msgs, n_echo, n_server_closed, n_subscribed,
             n_silent, silent_open, n_bytes_in, n_published, n_errors, n_drift);
    } else if (!strcmp(name, "silent")) {
        sscanf(line, "%*s %lu", &a);
        uint64_t t = now_ns(), k = 0;
        for (uint32_t i = 0; a && i < nconns; i++) {
            conn_t *c = &conns[i];
            if (c->state != ST_OPEN || (c->flags & (F_ECHO | F_CYCLE)) || i % a != a - 1) continue;
            c->flags |= F_SILENT;
            c->t0 = t;
            ep_set(i, read_events(c), EPOLL_CTL_MOD);
            k++;
        }
        n_silent += k;
        emit("{\"ev\":\"silent\",\"count\":%lu,\"t\":%lu}", k, t);
    } else if (!strcmp(name, "detect")) {
        char extra[64];
        uint64_t silent_open = 0;
        for (uint32_t i = 0; i < nconns; i++)
            if ((conns[i].flags & F_SILENT) && conns[i].state == ST_OPEN) silent_open++;
        snprintf(extra, sizeof extra, "\"silent_open\":%lu,", silent_open);
        print_i64_list("detect", "us", detect_us, n_detect, extra);
    } else if (!strcmp(name, "echo")) {
        sscanf(line, "%*s %lu %lu", &a, &b);
        free(echo_frame);
        uint8_t *payload = xrealloc(NULL, b + 1);
        for (unsigned long i = 0; i < b; i++) payload[i] = (uint8_t)rand32();
        echo_frame = xrealloc(NULL, b + 14);
        echo_frame_len = build_frame(echo_frame, 2, payload, b);
        echo_payload_len = (uint32_t)b;
        free(payload);
        echo_on = 1;
        uint64_t k = 0;
        for (uint32_t i = 0; i < nconns && k < a; i++) {
            conn_t *c = &conns[i];
            if (c->state != ST_OPEN || (c->flags & (F_SILENT | F_CYCLE)) || i % 10 == 9) continue;
            c->flags |= F_ECHO;
            k++;
            if (!(c->flags & F_ECHO_WAIT)) send_echo(i);
        }
        emit("{\"ev\":\"echo\",\"count\":%lu}", k);
    } else if (!strcmp(name, "echo_stop")) {
        echo_on = 0;
        for (uint32_t i = 0; i < nconns; i++) conns[i].flags &= (uint8_t)~F_ECHO;
        emit("{\"ev\":\"echo_stop\",\"echo\":%lu}", n_echo);
    } else if (!strcmp(name, "subscribe")) {
        sscanf(line, "%*s %127s %lu", arg, &a);
        char msg[200];
        int len = snprintf(msg, sizeof msg, "{\"type\":\"subscribe\",\"channel\":\"%s\"}", arg);
        uint64_t k = 0;
        for (uint32_t i = (uint32_t)a; i < nconns; i++) {
            if (conns[i].state != ST_OPEN || (conns[i].flags & F_SILENT)) continue;
            send_frame(i, 1, (const uint8_t *)msg, (uint32_t)len);
            k++;
        }
        emit("{\"ev\":\"subscribing\",\"count\":%lu}", k);
    } else if (!strcmp(name, "publish")) {
        sscanf(line, "%*s %127s", arg);
        char msg[300];
        uint64_t t = now_ns();
        int len = snprintf(msg, sizeof msg,
                           "{\"type\":\"publish\",\"channel\":\"%s\",\"data\":{\"t\":%lu}}", arg, t);
        int ok = nconns > 0 && conns[0].state == ST_OPEN;
        if (ok) send_frame(0, 1, (const uint8_t *)msg, (uint32_t)len);
        emit("{\"ev\":\"published\",\"ok\":%d,\"t\":%lu}", ok, t);
    } else if (!strcmp(name, "spread")) {
        sscanf(line, "%*s %63s %lu", arg, &a);
        char msg[200];
        uint64_t k = 0;
        for (uint32_t i = 0; a && i < nconns; i++) {
            if (conns[i].state != ST_OPEN || (conns[i].flags & F_SILENT)) continue;
            int len = snprintf(msg, sizeof msg, "{\"type\":\"subscribe\",\"channel\":\"%s%lu\"}",
                               arg, (unsigned long)i % a);
            send_frame(i, 1, (const uint8_t *)msg, (uint32_t)len);
            k++;
        }
        emit("{\"ev\":\"subscribing\",\"count\":%lu}", k);
    } else if (!strcmp(name, "pubrate")) {
        double secs = 0;
        sscanf(line, "%*s %63s %lu %lu %lf", pub_prefix, &a, &b, &secs);
        pub_k = a ? a : 1;
        pub_rate = b;
        pub_sent = 0;
        pub_start_ns = now_ns();
        pub_end_ns = pub_start_ns + (uint64_t)(secs * 1e9);
        pub_active = 1;
        pub_tick();
    } else if (!strcmp(name, "lat")) {
        print_i64_list("lat", "us", lat_us, n_lat, "");
        n_lat = 0;
    } else if (!strcmp(name, "cycles")) {
        sscanf(line, "%*s %lu %lu %lu", &a, &b, &d);
        cyc_target = a;
        cyc_conc = b ? b : 32;
        cyc_started = cyc_done = cyc_failed = cyc_inflight = cyc_nofin = 0;
        cyc_start_ns = now_ns();
        cyc_deadline_ns = cyc_start_ns + (uint64_t)(d ? d : 60) * 1000000000ull;
        cyc_active = 1;
        start_cycles();
    } else if (!strcmp(name, "quit")) {
        exit(0);
    } else {
        emit("{\"ev\":\"error\",\"message\":\"unknown command\"}");
    }
}

static char cmdbuf[4096];
static size_t cmdlen;

static void on_stdin(void) {
    ssize_t r = read(0, cmdbuf + cmdlen, sizeof cmdbuf - 1 - cmdlen);
    if (r <= 0) exit(0); /* the controller is gone */
    cmdlen += (size_t)r;
    char *start = cmdbuf, *nl;
    while ((nl = memchr(start, '\n', cmdlen - (size_t)(start - cmdbuf)))) {
        *nl = 0;
        command(start);
        start = nl + 1;
    }
    cmdlen -= (size_t)(start - cmdbuf);
    memmove(cmdbuf, start, cmdlen);
}

/* Every 100 ms: handshakes stuck for 30 s fail; a cycle whose server never
 * sends FIN after the closing handshake is closed by us after 2 s. */
static void housekeeping(void) {
    uint64_t t = now_ns();
    for (uint32_t i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        if ((c->state == ST_CONNECTING || c->state == ST_HANDSHAKE) && t - c->t0 > 30000000000ull) {
            conn_close(i);
        } else if ((c->flags & F_CYCLE) && c->state == ST_OPEN && (c->flags & F_CLOSE_RECV) &&
                   t - c->t0 > 2000000000ull) {
            cyc_nofin++;
            conn_close(i);
        }
    }
    if (cyc_active) start_cycles();
    if (connect_active) start_connects();
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: wsgen HOST PORT SRC_IP_BASE NSRC\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t)atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &server_addr.sin_addr);
    struct in_addr base;
    inet_pton(AF_INET, argv[3], &base);
    src_base = ntohl(base.s_addr);
    nsrc = (uint32_t)atoi(argv[4]);
    if (!nsrc) nsrc = 1;
    rng ^= (uint64_t)getpid() * 0x2545F4914F6CDD1Dull ^ now_ns();
    handshake_len = (uint32_t)snprintf(handshake, sizeof handshake, handshake_fmt, atoi(argv[2]));
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event sev = {.events = EPOLLIN, .data = {.u64 = UINT64_MAX}};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev);
    emit("{\"ev\":\"ready\",\"pid\":%d}", getpid());
    struct epoll_event events[1024];
    uint64_t last_housekeeping = now_ns();
    for (;;) {
        int n = epoll_wait(ep, events, 1024, pub_active ? 1 : 50);
        for (int i = 0; i < n; i++) {
            uint64_t key = events[i].data.u64;
            if (key == UINT64_MAX) {
                on_stdin();
                continue;
            }
            uint32_t idx = (uint32_t)key;
            conn_t *c = &conns[idx];
            uint32_t e = events[i].events;
            if (c->state == ST_DONE || c->state == ST_FREE) continue;
            if (c->flags & F_SILENT) {
                /* never read: only a FIN (RDHUP) or an RST (ERR/HUP) ends it */
                if (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) conn_close(idx);
                continue;
            }
            if (c->state == ST_CONNECTING) {
                if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(idx);
                continue;
            }
            if (e & EPOLLOUT) flush_out(idx);
            if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) on_readable(idx);
        }
        pub_tick();
        uint64_t t = now_ns();
        if (t - last_housekeeping > 100000000ull) {
            last_housekeeping = t;
            housekeeping();
        }
    }
}
