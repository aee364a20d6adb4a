/*
 * config_editor: read a key, change it, write it back only if nobody changed it meanwhile.
 *
 *   config_editor SOCKET DOMAIN KEY [STEP]
 *
 * The key holds a decimal counter (a missing key counts as 0). The editor reads it with its
 * version, adds STEP (default 1) and commits with the condition "still at that version" (or
 * "still absent"); on DOMSYNC_ERR_CONFLICT another writer got there first, so it reads again
 * and retries, up to MAX_ATTEMPTS times.
 *
 * Exit status: 0 written (prints "KEY=VALUE lsn N"), 1 usage, 2 cannot connect, 3 still
 * conflicting after MAX_ATTEMPTS, 4 any other failure (message on stderr).
 */
#define _POSIX_C_SOURCE 200809L
#include <domsync.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ATTEMPTS 20

static int fail(const char *what, int rc) {
    fprintf(stderr, "config_editor: %s: %s: %s\n", what, domsync_code_name(rc), domsync_last_error());
    return rc == DOMSYNC_ERR_CONNECT ? 2 : 4;
}

/* One attempt: DOMSYNC_OK, DOMSYNC_ERR_CONFLICT (retry) or another failure. */
static int attempt(domsync_client *client, const char *domain, const char *key, long step,
                   long *written, domsync_position *at) {
    size_t key_len = strlen(key);
    domsync_value current;
    int rc = domsync_get(client, domain, (const uint8_t *)key, key_len, 0, 0, &current);
    if (rc != DOMSYNC_OK && rc != DOMSYNC_ERR_NOT_FOUND)
        return rc;
    int exists = rc == DOMSYNC_OK;
    long value = exists ? strtol((const char *)current.value.data, NULL, 10) : 0;
    uint64_t version = current.version;
    domsync_buf_free(&current.value);

    char text[32];
    snprintf(text, sizeof text, "%ld", value + step);

    domsync_txn *txn = NULL;
    rc = domsync_txn_new(domain, &txn);
    if (rc != DOMSYNC_OK)
        return rc;
    if (exists)
        rc = domsync_txn_if_version(txn, (const uint8_t *)key, key_len, version);
    else
        rc = domsync_txn_if_absent(txn, (const uint8_t *)key, key_len);
    if (rc == DOMSYNC_OK)
        rc = domsync_txn_put(txn, (const uint8_t *)key, key_len, (const uint8_t *)text, strlen(text));
    if (rc == DOMSYNC_OK)
        rc = domsync_txn_commit(client, txn, at);
    if (rc == DOMSYNC_ERR_CONFLICT) {
        domsync_conflict why;
        if (domsync_txn_conflict(txn, &why) == DOMSYNC_OK)
            fprintf(stderr, "config_editor: conflict on condition %" PRIu32 " (%s, version %" PRIu64 "), retrying\n",
                    why.index, why.exists ? "exists" : "absent", why.version);
    }
    domsync_txn_free(txn);
    if (rc == DOMSYNC_OK)
        *written = value + step;
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: config_editor SOCKET DOMAIN KEY [STEP]\n");
        return 1;
    }
    const char *socket = argv[1], *domain = argv[2], *key = argv[3];
    long step = argc == 5 ? strtol(argv[4], NULL, 10) : 1;

    domsync_client *client = NULL;
    int rc = domsync_connect_local(socket, &client);
    if (rc != DOMSYNC_OK)
        return fail("connect", rc);

    int status = 3;
    for (int i = 0; i < MAX_ATTEMPTS; i++) {
        long written = 0;
        domsync_position at;
        rc = attempt(client, domain, key, step, &written, &at);
        if (rc == DOMSYNC_OK) {
            printf("%s=%ld lsn %" PRIu64 "\n", key, written, at.lsn);
            status = 0;
            break;
        }
        if (rc != DOMSYNC_ERR_CONFLICT) {
            status = fail("edit", rc);
            break;
        }
    }
    if (status == 3)
        fprintf(stderr, "config_editor: key %s of domain %s still conflicting after %d attempts: other writers are busy, try later\n",
                key, domain, MAX_ATTEMPTS);
    domsync_client_free(client);
    return status;
}
