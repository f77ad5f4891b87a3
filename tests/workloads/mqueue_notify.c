/* Refusal workload: a POSIX message queue with a notification registered (mq_notify, SIGUSR1
 * with a value). Its signal value cannot be read, so `crest dump` must refuse naming the
 * notification, and leave it registered: a message sent at the check raises SIGUSR1 with the
 * value, once. */
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "workload.h"

static volatile sig_atomic_t got, value;

static void on_usr1(int sig, siginfo_t* si, void* uc) {
  (void)sig, (void)uc;
  got++;
  value = si->si_value.sival_int;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  char name[64];
  snprintf(name, sizeof name, "/crest-wl-mqn.%d", (int)getpid());
  mq_unlink(name);
  struct mq_attr a = {.mq_maxmsg = 4, .mq_msgsize = 16};
  mqd_t q = mq_open(name, O_RDWR | O_CREAT | O_EXCL, 0600, &a);
  if (q < 0) wl_die("mq_open: %m");
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_usr1;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGUSR1, &sa, NULL);
  struct sigevent ev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGUSR1,
                        .sigev_value = {.sival_int = 4242}};
  if (mq_notify(q, &ev) != 0) wl_die("mq_notify: %m");

  wl_ready();
  wl_wait_term();

  wl_expect(mq_send(q, "x", 1, 0) == 0, "mq_send: %m");
  for (int i = 0; i < 1000 && !got; i++) usleep(1000);
  wl_expect(got == 1 && value == 4242, "the notification came %d times with value %d", (int)got, (int)value);
  mq_unlink(name);
  wl_finish();
}
