// peer-uring-echo: the smallest liburing echo server we could write, as the
// zero-parse ceiling for the end-to-end benchmarks. Multishot accept; per
// connection one 16 KiB buffer and the cycle recv -> send (all of it) -> recv.
// Fed framed messages it echoes them without looking at them. No coroutines,
// no timeouts, no limits: only what the kernel must do for an echo.
//
//   peer-uring-echo [--fixed-files] PORT
//     (listens on 127.0.0.1; prints "Listening on ('127.0.0.1', PORT)")
//   --fixed-files: every connection's recv and send use a registered ("direct")
//     descriptor (IOSQE_FIXED_FILE), to measure what registered files would
//     save ringframe at most (docs/io-path.md).
#include <liburing.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

enum kind : unsigned { accept_op = 1, recv_op = 2, send_op = 3 };

struct conn {
  int fd;
  unsigned len = 0;   // bytes received, being sent
  unsigned sent = 0;  // of those, sent so far
  char buf[16384];
};

inline unsigned long long tag(kind k, conn* c) { return reinterpret_cast<unsigned long long>(c) | k; }

io_uring ring;
bool fixed_files = false;
int table_size = 0;

void use_fd(io_uring_sqe* s, int fd) {
  if (fixed_files) s->flags |= IOSQE_FIXED_FILE;  // slot number == descriptor number
  (void)fd;
}

void end_conn(conn* c) {
  if (fixed_files) {
    int empty = -1;
    io_uring_register_files_update(&ring, static_cast<unsigned>(c->fd), &empty, 1);
  }
  close(c->fd);
  delete c;
}

io_uring_sqe* sqe() {
  io_uring_sqe* s = io_uring_get_sqe(&ring);
  if (!s) {
    io_uring_submit(&ring);
    s = io_uring_get_sqe(&ring);
  }
  return s;
}

void arm_recv(conn* c) {
  io_uring_sqe* s = sqe();
  io_uring_prep_recv(s, c->fd, c->buf, sizeof c->buf, 0);
  use_fd(s, c->fd);
  io_uring_sqe_set_data64(s, tag(recv_op, c));
}

void arm_send(conn* c) {
  io_uring_sqe* s = sqe();
  io_uring_prep_send(s, c->fd, c->buf + c->sent, c->len - c->sent, MSG_NOSIGNAL);
  use_fd(s, c->fd);
  io_uring_sqe_set_data64(s, tag(send_op, c));
}

}  // namespace

int main(int argc, char** argv) {
  int argi = 1;
  if (argc > 1 && std::strcmp(argv[1], "--fixed-files") == 0) {
    fixed_files = true;
    ++argi;
  }
  int port = argc > argi ? std::atoi(argv[argi]) : 0;
  signal(SIGPIPE, SIG_IGN);
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) || listen(lfd, SOMAXCONN)) {
    std::perror("peer-uring-echo: bind/listen");
    return 1;
  }
  socklen_t al = sizeof a;
  getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &al);
  std::printf("Listening on ('127.0.0.1', %d)\n", ntohs(a.sin_port));
  std::fflush(stdout);

  io_uring_params p{};
  p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  p.cq_entries = 4096;
  if (int r = io_uring_queue_init_params(1024, &ring, &p); r < 0) {
    p.flags = IORING_SETUP_CQSIZE;
    if ((r = io_uring_queue_init_params(1024, &ring, &p)) < 0) {
      std::fprintf(stderr, "peer-uring-echo: io_uring: %s\n", std::strerror(-r));
      return 1;
    }
  }
  if (fixed_files) {
    // A file table is bounded by RLIMIT_NOFILE: raise the soft limit first.
    rlimit rl{};
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    table_size = rl.rlim_cur < 65536 ? static_cast<int>(rl.rlim_cur) : 65536;
    if (int r = io_uring_register_files_sparse(&ring, static_cast<unsigned>(table_size)); r < 0) {
      std::fprintf(stderr, "peer-uring-echo: registering a file table: %s\n", std::strerror(-r));
      return 1;
    }
    std::printf("fixed files: on\n");
    std::fflush(stdout);
  }
  io_uring_sqe* s = sqe();
  io_uring_prep_multishot_accept(s, lfd, nullptr, nullptr, SOCK_CLOEXEC);
  io_uring_sqe_set_data64(s, accept_op);

  for (;;) {
    io_uring_submit_and_wait(&ring, 1);
    io_uring_cqe* cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      ++n;
      unsigned long long ud = cqe->user_data;
      auto k = static_cast<kind>(ud & 3);
      conn* c = reinterpret_cast<conn*>(ud & ~3ull);
      int res = cqe->res;
      if (k == accept_op) {
        if (res >= 0) {
          setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          if (fixed_files && (res >= table_size || io_uring_register_files_update(&ring, static_cast<unsigned>(res), &res, 1) != 1)) {
            std::fprintf(stderr, "peer-uring-echo: cannot register descriptor %d\n", res);
            close(res);
          } else {
            conn* nc = new conn;
            nc->fd = res;
            arm_recv(nc);
          }
        }
        if (!(cqe->flags & IORING_CQE_F_MORE)) {  // re-arm
          io_uring_sqe* r = sqe();
          io_uring_prep_multishot_accept(r, lfd, nullptr, nullptr, SOCK_CLOEXEC);
          io_uring_sqe_set_data64(r, accept_op);
        }
      } else if (k == recv_op) {
        if (res <= 0) {
          end_conn(c);
        } else {
          c->len = static_cast<unsigned>(res);
          c->sent = 0;
          arm_send(c);
        }
      } else if (k == send_op) {
        if (res <= 0) {
          end_conn(c);
        } else if ((c->sent += static_cast<unsigned>(res)) < c->len) {
          arm_send(c);
        } else {
          arm_recv(c);
        }
      }
    }
    io_uring_cq_advance(&ring, n);
  }
}
