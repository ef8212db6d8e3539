/*
 * The sandbox ("pause") process of the real-node tests' pods: containerd's
 * sandbox_image. It holds the pod's namespaces open, so it only has to stay
 * alive, reap the zombies that end up with it as PID 1 (a shared PID namespace
 * re-parents orphans to it), and leave promptly, with status 0, when the
 * kubelet stops the sandbox (SIGTERM, or SIGINT by hand).
 *
 * Built by scripts/image with `musl-gcc -static -Os`: no libc in the image.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int signo) {
    (void)signo;
    _exit(0);
}

static void on_child(int signo) {
    (void)signo;
    /* A handler must not clobber errno of the code it interrupted. */
    int saved = errno;
    /* One SIGCHLD may stand for several exited children: reap them all. */
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

static int install(int signo, void (*handler)(int), int flags) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    if (sigaction(signo, &sa, NULL) < 0) {
        perror("pause: sigaction");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("p12-testenv pause 1");
        return 0;
    }
    if (getpid() != 1) {
        /* Still useful outside a PID namespace (e.g. by hand), so only warn. */
        fputs("pause: warning: not PID 1, orphans will not be re-parented here\n", stderr);
    }
    if (install(SIGINT, on_stop, 0) < 0 || install(SIGTERM, on_stop, 0) < 0 ||
        install(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART) < 0) {
        return 1;
    }
    for (;;) {
        pause();
    }
}
