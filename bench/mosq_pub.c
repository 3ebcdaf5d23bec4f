/* The libmosquitto reference publisher for scripts/bench.sh: publishes each
 * line of a file at QoS 1 with N in flight and exits when every PUBACK has
 * arrived. Usage: mosq_pub HOST PORT TOPIC FILE INFLIGHT */
#include <mosquitto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long confirmed = 0, total = 0;

static void on_publish(struct mosquitto *m, void *obj, int mid) {
    (void)obj; (void)mid;
    if (++confirmed == total) mosquitto_disconnect(m);
}

int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: mosq_pub HOST PORT TOPIC FILE INFLIGHT\n"); return 2; }
    FILE *f = fopen(argv[4], "r");
    if (!f) { perror(argv[4]); return 2; }
    size_t cap = 1024, n = 0; char **lines = malloc(cap * sizeof *lines);
    char *line = NULL; size_t len = 0; ssize_t got;
    while ((got = getline(&line, &len, f)) > 0) {
        if (line[got - 1] == '\n') line[--got] = 0;
        if (n == cap) { cap *= 2; lines = realloc(lines, cap * sizeof *lines); }
        lines[n++] = strdup(line);
    }
    total = (long)n;
    mosquitto_lib_init();
    struct mosquitto *m = mosquitto_new(NULL, true, NULL);
    mosquitto_int_option(m, MOSQ_OPT_SEND_MAXIMUM, atoi(argv[5]));
    mosquitto_max_inflight_messages_set(m, (unsigned)atoi(argv[5]));
    mosquitto_publish_callback_set(m, on_publish);
    if (mosquitto_connect(m, argv[1], atoi(argv[2]), 60) != MOSQ_ERR_SUCCESS) { fprintf(stderr, "connect failed\n"); return 1; }
    /* The network loop runs in its own thread; the main thread queues every
     * message and libmosquitto keeps INFLIGHT of them unconfirmed at once. */
    mosquitto_loop_start(m);
    for (size_t i = 0; i < n; i++)
        mosquitto_publish(m, NULL, argv[3], (int)strlen(lines[i]), lines[i], 1, false);
    mosquitto_loop_stop(m, false);
    fprintf(stderr, "mosq_pub: %ld of %ld confirmed\n", confirmed, total);
    return confirmed == total ? 0 : 1;
}
