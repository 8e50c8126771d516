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
//   --multishot-recv: one multishot recv per connection into a provided
//     buffer ring (1,024 x 16 KiB), each buffer echoed and then recycled: to
//     measure what multishot recv would save ringframe at most.
#include <liburing.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <utility>

namespace {

enum kind : unsigned { accept_op = 1, recv_op = 2, send_op = 3 };

struct conn {
  int fd;
  unsigned len = 0;   // bytes received, being sent
  unsigned sent = 0;  // of those, sent so far
  char buf[16384];
  // --multishot-recv: ring buffers received and not yet echoed, in order.
  std::deque<std::pair<unsigned short, unsigned>> queue;
  bool sending = false;
  bool closing = false;
};

inline unsigned long long tag(kind k, conn* c) { return reinterpret_cast<unsigned long long>(c) | k; }

io_uring ring;
bool fixed_files = false;
int table_size = 0;
bool multishot = false;
constexpr unsigned ring_buffers = 1024, buffer_size = 16384;
constexpr unsigned short buffer_group = 7;
io_uring_buf_ring* bufs = nullptr;
char* buf_base = nullptr;

// io_uring_setup_buf_ring arrived in liburing 2.4; this is its few lines.
io_uring_buf_ring* io_uring_setup_buf_ring_compat(unsigned entries, unsigned short bgid, int* err) {
  void* mem = mmap(nullptr, entries * sizeof(io_uring_buf), PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (mem == MAP_FAILED) {
    *err = -errno;
    return nullptr;
  }
  auto* br = static_cast<io_uring_buf_ring*>(mem);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<unsigned long>(br);
  reg.ring_entries = entries;
  reg.bgid = bgid;
  if (int r = io_uring_register_buf_ring(&ring, &reg, 0); r < 0) {
    *err = r;
    return nullptr;
  }
  io_uring_buf_ring_init(br);
  return br;
}

char* ring_buffer(unsigned short bid) { return buf_base + static_cast<std::size_t>(bid) * buffer_size; }

void recycle(unsigned short bid) {
  io_uring_buf_ring_add(bufs, ring_buffer(bid), buffer_size, bid, io_uring_buf_ring_mask(ring_buffers), 0);
  io_uring_buf_ring_advance(bufs, 1);
}

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
  if (multishot) {
    io_uring_prep_recv_multishot(s, c->fd, nullptr, 0, 0);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = buffer_group;
    use_fd(s, c->fd);
    io_uring_sqe_set_data64(s, tag(recv_op, c));
    return;
  }
  io_uring_prep_recv(s, c->fd, c->buf, sizeof c->buf, 0);
  use_fd(s, c->fd);
  io_uring_sqe_set_data64(s, tag(recv_op, c));
}

void arm_send(conn* c) {
  io_uring_sqe* s = sqe();
  if (multishot) {
    auto [bid, len] = c->queue.front();
    c->sending = true;
    io_uring_prep_send(s, c->fd, ring_buffer(bid) + c->sent, len - c->sent, MSG_NOSIGNAL);
    use_fd(s, c->fd);
    io_uring_sqe_set_data64(s, tag(send_op, c));
    return;
  }
  io_uring_prep_send(s, c->fd, c->buf + c->sent, c->len - c->sent, MSG_NOSIGNAL);
  use_fd(s, c->fd);
  io_uring_sqe_set_data64(s, tag(send_op, c));
}

}  // namespace

int main(int argc, char** argv) {
  int argi = 1;
  for (; argi < argc && argv[argi][0] == '-' && argv[argi][1] == '-'; ++argi) {
    if (std::strcmp(argv[argi], "--fixed-files") == 0) {
      fixed_files = true;
    } else if (std::strcmp(argv[argi], "--multishot-recv") == 0) {
      multishot = true;
    } else {
      std::fprintf(stderr, "usage: peer-uring-echo [--fixed-files] [--multishot-recv] PORT\n");
      return 2;
    }
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
  if (multishot) {
    int r = 0;
    bufs = io_uring_setup_buf_ring_compat(ring_buffers, buffer_group, &r);
    if (!bufs) {
      std::fprintf(stderr, "peer-uring-echo: provided buffer ring: %s\n", std::strerror(-r));
      return 1;
    }
    buf_base = new char[static_cast<std::size_t>(ring_buffers) * buffer_size];
    for (unsigned i = 0; i < ring_buffers; ++i)
      io_uring_buf_ring_add(bufs, ring_buffer(static_cast<unsigned short>(i)), buffer_size,
                            static_cast<unsigned short>(i), io_uring_buf_ring_mask(ring_buffers), static_cast<int>(i));
    io_uring_buf_ring_advance(bufs, static_cast<int>(ring_buffers));
    std::printf("multishot recv: on\n");
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
      } else if (k == recv_op && multishot) {
        if (res > 0 && (cqe->flags & IORING_CQE_F_BUFFER)) {
          c->queue.emplace_back(static_cast<unsigned short>(cqe->flags >> IORING_CQE_BUFFER_SHIFT), static_cast<unsigned>(res));
          if (!c->sending) arm_send(c);
        }
        if (!(cqe->flags & IORING_CQE_F_MORE)) {
          if (res > 0 || res == -ENOBUFS) {
            arm_recv(c);  // the kernel ended the multishot (ring empty): re-arm
          } else {
            c->closing = true;  // the peer closed: finish echoing, then close
            if (!c->sending) end_conn(c);
          }
        }
      } else if (k == send_op && multishot) {
        if (res <= 0) {  // the peer is gone: drop what is queued; the recv ends too
          for (auto& q : c->queue) recycle(q.first);
          c->queue.clear();
          c->sending = false;
          shutdown(c->fd, SHUT_RDWR);
          if (c->closing) end_conn(c);
        } else if ((c->sent += static_cast<unsigned>(res)) < c->queue.front().second) {
          arm_send(c);
        } else {
          recycle(c->queue.front().first);
          c->queue.pop_front();
          c->sent = 0;
          c->sending = false;
          if (!c->queue.empty()) arm_send(c);
          else if (c->closing) end_conn(c);
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
