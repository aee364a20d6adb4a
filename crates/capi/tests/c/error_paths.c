/*
 * The error paths of libdomsync seen from C, without a daemon: NULL arguments, bad names,
 * text that is not UTF-8, a missing socket, the free functions on NULL. Prints one line per
 * failed check and "N passed, M failed"; exits 0 only when every check passed.
 *
 *   error_paths MISSING_SOCKET_PATH
 */
#define _POSIX_C_SOURCE 200809L
#include <domsync.h>

#include <stdio.h>
#include <string.h>

static int passed, failed;

static void check(int ok, const char *what) {
    if (ok) {
        passed++;
    } else {
        failed++;
        printf("FAILED: %s (last error: %s)\n", what, domsync_last_error());
    }
}

static int message_has(const char *text) { return strstr(domsync_last_error(), text) != NULL; }

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: error_paths MISSING_SOCKET_PATH\n");
        return 2;
    }
    const char *missing = argv[1];
    domsync_client *client = (domsync_client *)1;

    int rc = domsync_connect_local(missing, &client);
    check(rc == DOMSYNC_ERR_CONNECT, "connect to a missing socket gives DOMSYNC_ERR_CONNECT");
    check(message_has(missing), "the message names the socket");
    check(client == NULL, "the handle is NULL after a failed connect");
    check(strcmp(domsync_code_name(rc), "DOMSYNC_ERR_CONNECT") == 0, "code names");

    check(domsync_connect_local(NULL, &client) == DOMSYNC_ERR_INVALID_ARGUMENT, "NULL socket path");
    check(message_has("socket_path is NULL"), "the message names the NULL argument");
    check(domsync_connect_local(missing, NULL) == DOMSYNC_ERR_INVALID_ARGUMENT, "NULL out");
    check(domsync_connect_remote("a=127.0.0.1", "/nonexistent", "app", &client) == DOMSYNC_ERR_INVALID_ARGUMENT,
          "a node without a port");
    check(message_has("node a"), "the message names the node");

    /* Calls on a NULL client. */
    domsync_value value;
    check(domsync_get(NULL, "fw", (const uint8_t *)"k", 1, 0, 0, &value) == DOMSYNC_ERR_INVALID_ARGUMENT, "get on NULL client");
    check(value.value.data == NULL && value.version == 0, "the value is zeroed after a failure");
    domsync_buf_free(&value.value);
    domsync_entries *entries = (domsync_entries *)1;
    check(domsync_scan(NULL, "fw", NULL, 0, 0, 0, 0, &entries) == DOMSYNC_ERR_INVALID_ARGUMENT && entries == NULL,
          "scan on NULL client");
    check(domsync_put(NULL, "fw", (const uint8_t *)"k", 1, (const uint8_t *)"v", 1, NULL) == DOMSYNC_ERR_INVALID_ARGUMENT,
          "put on NULL client");
    domsync_watch *watch = (domsync_watch *)1;
    check(domsync_watch_start(NULL, "fw", NULL, 0, NULL, &watch) == DOMSYNC_ERR_INVALID_ARGUMENT && watch == NULL,
          "watch on NULL client");
    domsync_buf status;
    check(domsync_status_json(NULL, &status) == DOMSYNC_ERR_INVALID_ARGUMENT && status.data == NULL, "status on NULL client");

    /* Names and text. */
    domsync_txn *txn = NULL;
    check(domsync_txn_new("../etc", &txn) == DOMSYNC_ERR_INVALID_ARGUMENT && txn == NULL, "bad domain name");
    check(message_has("invalid domain name \"../etc\""), "the message names the domain");
    check(domsync_txn_new("\xff\xfe", &txn) == DOMSYNC_ERR_INVALID_ARGUMENT, "domain not UTF-8");
    check(message_has("not UTF-8"), "the message says UTF-8");
    check(domsync_txn_new("fw-east", &txn) == DOMSYNC_OK && txn != NULL, "a good domain");
    check(strcmp(domsync_last_error(), "") == 0, "no message after a success");
    check(domsync_txn_put(txn, NULL, 3, (const uint8_t *)"v", 1) == DOMSYNC_ERR_INVALID_ARGUMENT, "NULL key with a length");
    check(domsync_txn_put(txn, (const uint8_t *)"", 0, (const uint8_t *)"v", 1) == DOMSYNC_ERR_INVALID_ARGUMENT, "empty key");
    check(domsync_txn_put(txn, (const uint8_t *)"k", 1, NULL, 0) == DOMSYNC_OK, "NULL value of length 0");
    check(domsync_txn_if_version(txn, (const uint8_t *)"k", 1, 7) == DOMSYNC_OK, "a condition");
    check(domsync_txn_install_policy(txn, "bad name!", (const uint8_t *)"x", 1) == DOMSYNC_ERR_INVALID_ARGUMENT,
          "bad policy name");
    check(message_has("invalid policy name"), "the message names the policy");
    check(domsync_txn_put_crl(txn, (const uint8_t *)"not a crl", 9, 0) == DOMSYNC_ERR_INVALID_ARGUMENT, "bytes that are no CRL");
    domsync_conflict conflict;
    check(domsync_txn_conflict(txn, &conflict) == DOMSYNC_ERR_NOT_FOUND, "no conflict before a commit");
    check(domsync_txn_commit(NULL, txn, NULL) == DOMSYNC_ERR_INVALID_ARGUMENT, "commit on NULL client");
    domsync_txn_free(txn);

    /* Watches and lists. */
    int fd = -1;
    check(domsync_watch_fd(NULL, &fd) == DOMSYNC_ERR_INVALID_ARGUMENT, "fd of NULL watch");
    domsync_event ev;
    check(domsync_watch_next(NULL, &ev) == DOMSYNC_ERR_INVALID_ARGUMENT && ev.key.data == NULL, "next of NULL watch");
    size_t count;
    check(domsync_entries_count(NULL, &count) == DOMSYNC_ERR_INVALID_ARGUMENT, "count of NULL list");

    /* Freeing NULL and zeroed things is harmless. */
    domsync_client_free(NULL);
    domsync_txn_free(NULL);
    domsync_watch_free(NULL);
    domsync_entries_free(NULL);
    domsync_buf_free(NULL);
    domsync_event_free(NULL);
    domsync_event_free(&ev);
    domsync_buf_free(&status);

    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
