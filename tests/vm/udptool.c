/* UDP bursts inside the test guest (busybox has no sender that puts many datagrams
 * on the virtio-net queue at once, nor a receiver that keeps datagram boundaries).
 * Built static by build.sh.
 *
 *   udptool send DST PORT COUNT SIZE LAST DELAY_MS
 *       Returns at once; DELAY_MS later a child sends COUNT datagrams to DST:PORT in
 *       one sendmmsg: datagram k is SIZE bytes of the value k % 256, the last LAST
 *       bytes. (The delay lets the test freeze the switch after the shell command
 *       that started it has come back through the switch.)
 *   udptool recv PORT COUNT OUT
 *       Binds PORT, then returns (the socket is ready when the command is done); a
 *       child receives up to COUNT datagrams (5 s at most for each) and writes
 *       "k:size" per datagram, k its first byte, to OUT — "k:size!" when its bytes
 *       are not all k — by a rename once complete.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX 1024

static void detach(void) {
  pid_t p = fork();
  if (p < 0) {
    perror("fork");
    exit(1);
  }
  if (p > 0)
    exit(0);
  /* The shell command's output is a TCP connection: let it close. */
  int fd = open("/dev/null", O_RDWR);
  dup2(fd, 0);
  dup2(fd, 1);
  dup2(fd, 2);
  setsid();
}

static int do_send(char **a) {
  int count = atoi(a[2]), size = atoi(a[3]), last = atoi(a[4]), delay = atoi(a[5]);
  if (count < 1 || count > MAX || size < 1 || size > 1400 || last < 1 || last > 1400)
    return 2;
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(a[1]))};
  if (inet_pton(AF_INET, a[0], &to.sin_addr) != 1)
    return 2;
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  if (s < 0 || connect(s, (struct sockaddr *)&to, sizeof to) < 0) {
    perror("socket");
    return 1;
  }
  static unsigned char buf[MAX][1400];
  static struct iovec iov[MAX];
  static struct mmsghdr msgs[MAX];
  for (int k = 0; k < count; k++) {
    int n = k + 1 == count ? last : size;
    memset(buf[k], k & 0xff, n);
    iov[k] = (struct iovec){buf[k], n};
    msgs[k].msg_hdr = (struct msghdr){.msg_iov = &iov[k], .msg_iovlen = 1};
  }
  detach();
  struct timespec d = {delay / 1000, (delay % 1000) * 1000000L};
  nanosleep(&d, NULL);
  int sent = 0;
  while (sent < count) {
    int r = sendmmsg(s, msgs + sent, count - sent, 0);
    if (r <= 0)
      return 1;
    sent += r;
  }
  return 0;
}

static int do_recv(char **a) {
  int count = atoi(a[1]);
  if (count < 1 || count > MAX)
    return 2;
  struct sockaddr_in at = {.sin_family = AF_INET, .sin_port = htons(atoi(a[0]))};
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  if (s < 0 || bind(s, (struct sockaddr *)&at, sizeof at) < 0) {
    perror("bind");
    return 1;
  }
  struct timeval tv = {5, 0};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", a[2]);
  FILE *out = fopen(tmp, "w");
  if (!out) {
    perror(tmp);
    return 1;
  }
  detach();
  static unsigned char buf[65536];
  for (int got = 0; got < count; got++) {
    ssize_t n = recv(s, buf, sizeof buf, 0);
    if (n <= 0)
      break;
    int same = 1;
    for (ssize_t i = 1; i < n; i++)
      same &= buf[i] == buf[0];
    fprintf(out, "%s%d:%zd%s", got ? " " : "", buf[0], n, same ? "" : "!");
  }
  fprintf(out, "\n");
  fclose(out);
  return rename(tmp, a[2]) == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc == 8 && !strcmp(argv[1], "send"))
    return do_send(argv + 2);
  if (argc == 5 && !strcmp(argv[1], "recv"))
    return do_recv(argv + 2);
  fprintf(stderr, "usage: udptool send DST PORT COUNT SIZE LAST DELAY_MS | recv PORT COUNT OUT\n");
  return 2;
}
