/*
 * whole_api: every call of the library that the examples do not make, against a running
 * daemon: status, put/delete, scans (a page and every key), policy install and get, CRL put
 * and get, the refusal of a CRL whose issuer is not held, and a watch resumed from a
 * position.
 *
 *   whole_api SOCKET DOMAIN CRL_DER_FILE ISSUER_TEXT UNKNOWN_CRL_DER_FILE
 *
 * Prints "ok" and exits 0 when every check held; otherwise prints the failed check with the
 * library's message on stderr and exits 1.
 */
#define _POSIX_C_SOURCE 200809L
#include <domsync.h>

#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failed = 0;

#define CHECK(cond, what)                                                                    \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "whole_api: %s (line %d): %s\n", what, __LINE__,                  \
                    domsync_last_error());                                                   \
            failed = 1;                                                                      \
            goto out;                                                                        \
        }                                                                                    \
    } while (0)

static unsigned char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 20, n = 0;
    unsigned char *buf = malloc(cap);
    if (buf)
        n = fread(buf, 1, cap, f);
    fclose(f);
    *len = n;
    return buf;
}

static const uint8_t *k(const char *s) { return (const uint8_t *)s; }

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: whole_api SOCKET DOMAIN CRL_DER_FILE ISSUER_TEXT UNKNOWN_CRL_DER_FILE\n");
        return 2;
    }
    const char *socket = argv[1], *domain = argv[2], *issuer = argv[4];
    domsync_client *client = NULL;
    domsync_entries *entries = NULL;
    domsync_watch *watch = NULL;
    domsync_buf status = {0};
    domsync_policy policy;
    domsync_crl crl;
    domsync_event event;
    memset(&policy, 0, sizeof policy);
    memset(&crl, 0, sizeof crl);
    memset(&event, 0, sizeof event);
    size_t der_len = 0, unknown_len = 0;
    unsigned char *der = slurp(argv[3], &der_len);
    unsigned char *unknown = slurp(argv[5], &unknown_len);
    int rc;

    CHECK(der && der_len > 0 && unknown && unknown_len > 0, "reading the CRL files");
    CHECK(domsync_connect_local(socket, &client) == DOMSYNC_OK, "connect");

    /* Status names the domain, active here. */
    CHECK(domsync_status_json(client, &status) == DOMSYNC_OK, "status");
    CHECK(status.data && strstr((const char *)status.data, domain) &&
              strstr((const char *)status.data, "\"role\":\"active\""),
          "status names the domain as active");

    /* Three keys under s/, one outside; then scans. */
    domsync_position at;
    const char *keys[] = {"s/a", "s/b", "s/c", "t/x"};
    for (int i = 0; i < 4; i++)
        CHECK(domsync_put(client, domain, k(keys[i]), strlen(keys[i]), k("v"), 1, &at) == DOMSYNC_OK,
              "put");
    CHECK(domsync_delete(client, domain, k("t/x"), 3, &at) == DOMSYNC_OK, "delete");
    domsync_value gone;
    rc = domsync_get(client, domain, k("t/x"), 3, at.lsn, 1000, &gone);
    CHECK(rc == DOMSYNC_ERR_NOT_FOUND && gone.served.position.lsn >= at.lsn,
          "a deleted key is not found, at the position of the delete or later");

    size_t count = 0;
    int truncated = 0;
    domsync_entry entry;
    CHECK(domsync_scan(client, domain, k("s/"), 2, 2, 0, 0, &entries) == DOMSYNC_OK, "scan a page");
    CHECK(domsync_entries_count(entries, &count) == DOMSYNC_OK && count == 2, "a page holds 2 keys");
    CHECK(domsync_entries_truncated(entries, &truncated) == DOMSYNC_OK && truncated == 1,
          "a page of 2 out of 3 says more keys follow");
    CHECK(domsync_entries_at(entries, 1, &entry) == DOMSYNC_OK && entry.key_len == 3 &&
              memcmp(entry.key, "s/b", 3) == 0 && entry.version > 0,
          "the second key is s/b, with its version");
    CHECK(domsync_entries_at(entries, 2, &entry) == DOMSYNC_ERR_INVALID_ARGUMENT,
          "an index past the list is refused");
    domsync_entries_free(entries);
    entries = NULL;
    CHECK(domsync_scan(client, domain, k("s/"), 2, 0, 0, 0, &entries) == DOMSYNC_OK, "scan all");
    CHECK(domsync_entries_count(entries, &count) == DOMSYNC_OK && count == 3, "every key under s/");
    CHECK(domsync_entries_truncated(entries, &truncated) == DOMSYNC_OK && truncated == 0,
          "a whole scan is not truncated");
    domsync_served served;
    CHECK(domsync_entries_served(entries, &served) == DOMSYNC_OK &&
              served.role == DOMSYNC_ROLE_ACTIVE && served.position.lsn >= at.lsn,
          "the scan names its role and position");
    domsync_entries_free(entries);
    entries = NULL;

    /* A policy package: installed, read back with its version and content. */
    const char content[] = "allow 443\ndeny all\n";
    domsync_position installed;
    CHECK(domsync_policy_install(client, domain, "edge", k(content), sizeof content - 1, &installed) ==
              DOMSYNC_OK,
          "policy install");
    CHECK(domsync_policy_get(client, domain, "edge", installed.lsn, 1000, &policy) == DOMSYNC_OK,
          "policy get");
    CHECK(policy.version == installed.lsn && policy.content.len == sizeof content - 1 &&
              memcmp(policy.content.data, content, policy.content.len) == 0,
          "the package comes back with its version and content");
    domsync_buf_free(&policy.content);
    rc = domsync_policy_get(client, domain, "nope", 0, 0, &policy);
    CHECK(rc == DOMSYNC_ERR_NOT_FOUND, "a missing package is not found");

    /* CRLs: one of a held issuer is stored and read back; one of an unknown issuer refused. */
    domsync_position put_at;
    CHECK(domsync_crl_put(client, domain, der, der_len, 1, &put_at) == DOMSYNC_OK, "CRL put");
    CHECK(domsync_crl_get(client, domain, issuer, 0, put_at.lsn, 1000, &crl) == DOMSYNC_OK,
          "CRL get");
    CHECK(crl.der.len == der_len && memcmp(crl.der.data, der, der_len) == 0 && crl.number[0] != 0,
          "the CRL comes back byte for byte, with its number");
    domsync_buf_free(&crl.der);
    rc = domsync_crl_put(client, domain, unknown, unknown_len, 1, &put_at);
    CHECK(rc == DOMSYNC_ERR_REFUSED && strstr(domsync_last_error(), "issuer"),
          "a CRL of an issuer not held is refused, naming the issuer check");
    rc = domsync_crl_get(client, domain, "CN=Nobody", 0, 0, 0, &crl);
    CHECK(rc == DOMSYNC_ERR_NOT_FOUND, "no CRL of an unknown issuer");

    /* A watch from the position before the delete sees exactly the delete of t/x first. */
    domsync_position from;
    memset(&from, 0, sizeof from);
    rc = domsync_get(client, domain, k("s/c"), 3, 0, 0, &gone);
    CHECK(rc == DOMSYNC_OK, "get s/c");
    from = gone.served.position;
    domsync_buf_free(&gone.value);
    CHECK(domsync_watch_start(client, domain, k("s/"), 2, &from, &watch) == DOMSYNC_OK, "watch");
    int fd = -1;
    CHECK(domsync_watch_fd(watch, &fd) == DOMSYNC_OK && fd >= 0, "watch fd");
    CHECK(domsync_put(client, domain, k("s/d"), 3, k("w"), 1, &at) == DOMSYNC_OK, "put s/d");
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        CHECK(poll(&p, 1, 20000) == 1, "the watch fd becomes readable");
        rc = domsync_watch_next(watch, &event);
        if (rc == DOMSYNC_AGAIN)
            continue;
        CHECK(rc == DOMSYNC_OK, "watch next");
        break;
    }
    CHECK(event.lsn == at.lsn && event.deleted == 0 && event.key.len == 3 &&
              memcmp(event.key.data, "s/d", 3) == 0,
          "the first event after the position is the put of s/d, at its lsn");
    domsync_position resume;
    CHECK(domsync_watch_position(watch, &resume) == DOMSYNC_OK && resume.lsn >= at.lsn,
          "the resume position covers the event");

    printf("ok\n");
out:
    domsync_event_free(&event);
    domsync_watch_free(watch);
    domsync_entries_free(entries);
    domsync_buf_free(&policy.content);
    domsync_buf_free(&crl.der);
    domsync_buf_free(&status);
    domsync_client_free(client);
    free(der);
    free(unknown);
    return failed;
}
