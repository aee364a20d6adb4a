/*
 * watcher: print the changes of a domain's keys from inside a poll() event loop.
 *
 *   watcher SOCKET DOMAIN PREFIX COUNT TIMEOUT_MS
 *
 * Starts a watch of the keys starting with PREFIX (from now), prints "watching from lsn N"
 * once it runs, then one line per change: "lsn N KEY=VALUE" or "lsn N KEY deleted". Exits
 * after COUNT changes, or when TIMEOUT_MS pass without them.
 *
 * Exit status: 0 COUNT changes seen, 1 usage, 2 cannot connect, 3 timed out, 4 the watch
 * failed (message on stderr).
 */
#define _POSIX_C_SOURCE 200809L
#include <domsync.h>

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: watcher SOCKET DOMAIN PREFIX COUNT TIMEOUT_MS\n");
        return 1;
    }
    const char *socket = argv[1], *domain = argv[2], *prefix = argv[3];
    long count = strtol(argv[4], NULL, 10);
    long long deadline = now_ms() + strtol(argv[5], NULL, 10);

    domsync_client *client = NULL;
    int rc = domsync_connect_local(socket, &client);
    if (rc != DOMSYNC_OK) {
        fprintf(stderr, "watcher: connect: %s: %s\n", domsync_code_name(rc), domsync_last_error());
        return 2;
    }
    domsync_watch *watch = NULL;
    rc = domsync_watch_start(client, domain, (const uint8_t *)prefix, strlen(prefix), NULL, &watch);
    if (rc != DOMSYNC_OK) {
        fprintf(stderr, "watcher: watch: %s: %s\n", domsync_code_name(rc), domsync_last_error());
        domsync_client_free(client);
        return 4;
    }
    domsync_position start;
    domsync_watch_position(watch, &start);
    printf("watching from lsn %" PRIu64 "\n", start.lsn);
    fflush(stdout);

    struct pollfd pfd = {.events = POLLIN};
    domsync_watch_fd(watch, &pfd.fd);
    long seen = 0;
    int status = 0;
    while (seen < count) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            fprintf(stderr, "watcher: timed out after %ld of %ld changes\n", seen, count);
            status = 3;
            break;
        }
        int ready = poll(&pfd, 1, (int)left);
        if (ready < 0 && errno != EINTR) {
            perror("watcher: poll");
            status = 4;
            break;
        }
        if (ready <= 0)
            continue;
        /* Take everything queued, then wait again. */
        for (;;) {
            domsync_event ev;
            rc = domsync_watch_next(watch, &ev);
            if (rc == DOMSYNC_AGAIN)
                break;
            if (rc != DOMSYNC_OK) {
                fprintf(stderr, "watcher: watch ended: %s: %s\n", domsync_code_name(rc), domsync_last_error());
                status = 4;
                break;
            }
            if (ev.deleted)
                printf("lsn %" PRIu64 " %s deleted\n", ev.lsn, (const char *)ev.key.data);
            else
                printf("lsn %" PRIu64 " %s=%s\n", ev.lsn, (const char *)ev.key.data, (const char *)ev.value.data);
            fflush(stdout);
            domsync_event_free(&ev);
            if (++seen == count)
                break;
        }
        if (status != 0)
            break;
    }
    domsync_watch_free(watch);
    domsync_client_free(client);
    return status;
}
