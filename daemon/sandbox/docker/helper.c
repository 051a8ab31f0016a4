/* tbhud's helper inside every task container, bind-mounted read-only at /.tbhud/helper and
 * linked statically, so that an agent running as root can neither replace it nor reach it
 * through PATH, LD_PRELOAD or the image's libc.
 *
 *   helper init     PID 1 of the container: reaps every orphan (zombies would exhaust the
 *                   pids limit) and lives until the container is removed. As the init of
 *                   the PID namespace it gets no signal from inside that it does not handle,
 *                   so `kill -9 -1` in the container leaves it running.
 *   helper killall  SIGKILL every process but PID 1 and itself, again until none is left
 *                   alive (a fork racing the first kill); exit 0 when none is, 1 otherwise.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void on_child(int sig) { (void)sig; }

static int init(void) {
    sigset_t block, empty;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_child; /* SIGCHLD only: any other signal from inside stays ignored */
    sigaction(SIGCHLD, &sa, NULL);
    sigemptyset(&block);
    sigaddset(&block, SIGCHLD);
    sigprocmask(SIG_BLOCK, &block, NULL);
    sigemptyset(&empty);
    for (;;) {
        while (waitpid(-1, NULL, WNOHANG) > 0) {
        }
        sigsuspend(&empty); /* SIGCHLD is blocked outside, so none is missed in between */
    }
}

/* Another process alive (not a zombie) besides PID 1 and us? */
static int others_alive(void) {
    DIR *proc = opendir("/proc");
    struct dirent *entry;
    int alive = 0;
    pid_t self = getpid();
    if (proc == NULL)
        return 1;
    while (!alive && (entry = readdir(proc)) != NULL) {
        char path[64], buf[512], *state;
        FILE *f;
        long pid = strtol(entry->d_name, NULL, 10);
        if (pid <= 1 || pid == self)
            continue;
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        f = fopen(path, "r");
        if (f == NULL)
            continue; /* gone meanwhile */
        if (fgets(buf, sizeof buf, f) != NULL && (state = strrchr(buf, ')')) != NULL &&
            state[1] == ' ' && state[2] != 'Z' && state[2] != 'X')
            alive = 1;
        fclose(f);
    }
    closedir(proc);
    return alive;
}

static int killall(void) {
    struct timespec pause = {0, 10 * 1000 * 1000};
    for (int i = 0; i < 200; i++) {
        kill(-1, SIGKILL); /* everything we may signal but ourselves and PID 1 */
        if (!others_alive())
            return 0;
        nanosleep(&pause, NULL); /* killed processes take a moment to become zombies */
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "init") == 0)
        return init();
    if (argc == 2 && strcmp(argv[1], "killall") == 0)
        return killall();
    fprintf(stderr, "usage: %s init|killall\n", argv[0]);
    return 2;
}
