// Review of 2015a36 + b7e0c4a: the fast read path with direct reads, and
// send_queue::extend_last. A randomized echo: a raw client thread sends
// pipelined frames in random chunks while another thread reads the echoes,
// byte-exact; the server is a ringframe connection with varied options.
#include "loopback.hpp"

#include <ringframe/connection.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/message.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;

namespace {

struct params {
  backend_kind k;
  bool provided;
  bool multishot;
  bool rws;
  std::size_t read_size;
  std::size_t gather;
  std::size_t max_unsent;
  std::size_t budget;
  unsigned seed;
};

struct server_stats {
  int messages = 0;
  std::error_code end;
  bool write_failed = false;
};

task<void> echo_server(executor* ex, ringframe::socket s, params p, server_stats* st) {
  connection_options o;
  o.provided_buffers = p.provided;
  o.multishot_recv = p.multishot;
  o.read_while_sending = p.rws;
  o.read_size = p.read_size;
  o.gather_threshold = p.gather;
  o.max_unsent_bytes = p.max_unsent;
  o.thread_receive_budget = p.budget;
  o.idle_timeout = 10s;
  o.message_timeout = 10s;
  o.write_timeout = 10s;
  connection conn(std::move(s), o);
  std::mt19937 rng(p.seed ^ 0x5555);
  for (;;) {
    result<message_view> m = co_await conn.read_message();
    if (!m) {
      st->end = m.error();
      break;
    }
    ++st->messages;
    switch (rng() % 4) {
      case 0:
      case 1: {
        result<void> w = co_await conn.write_raw(m->wire);
        if (!w) { st->end = w.error(); st->write_failed = true; co_return; }
        break;
      }
      case 2: {
        header_fields h{m->content_type, m->content_encoding, m->byteorder};
        result<void> w = co_await conn.write(h, m->content);
        if (!w) { st->end = w.error(); st->write_failed = true; co_return; }
        break;
      }
      case 3: {
        message c = message::binary(std::string(m->content_text()), std::string(m->content_type));
        c.byteorder = std::string(m->byteorder);
        c.content_encoding = std::string(m->content_encoding);
        conn.done_with_message();
        result<void> w = co_await conn.write(c);
        if (!w) { st->end = w.error(); st->write_failed = true; co_return; }
        break;
      }
    }
    if (rng() % 8 == 0) (void)co_await sleep_for(*ex, 0ms);
  }
  (void)co_await conn.flush();
}

std::size_t pick_size(std::mt19937& rng) {
  switch (rng() % 6) {
    case 0: return rng() % 64;
    case 1: return rng() % 2048;
    case 2: return 1000 + rng() % 20000;
    case 3: return 16000 + rng() % 2000;
    case 4: return 30000 + rng() % 100000;
    default: return rng() % 5000;
  }
}

struct client_side {
  std::string stream, got;
  int reader_err = -1, sender_err = -1;
  int fd = -1;
  std::thread t;
};

void run_echo(const params& p, int frames, int conns = 1, unsigned ring = 0) {
  executor_options eo = testing::on(p.k);
  if (ring) {
    eo.receive_buffers = ring;
    eo.receive_buffers_max = ring;
  }
  executor ex(eo);
  address at;
  ringframe::socket l = testing::loopback_listener(ex, at);
  std::vector<client_side> cs(static_cast<std::size_t>(conns));
  for (int c = 0; c < conns; ++c) {
    std::mt19937 rng(p.seed + 101u * static_cast<unsigned>(c));
    for (int i = 0; i < frames; ++i) {
      std::size_t n = pick_size(rng);
      std::string content(n, '\0');
      for (std::size_t j = 0; j < n; ++j) content[j] = static_cast<char>('a' + (j * 7 + i * 13 + c) % 26);
      if (n >= 8) std::memcpy(content.data(), &i, sizeof i);
      REQUIRE(encode_frame(message::binary(content, "binary/test"), cs[c].stream));
    }
  }
  for (int c = 0; c < conns; ++c) {
    client_side* me = &cs[c];
    unsigned seed = p.seed + 7u * static_cast<unsigned>(c);
    me->t = std::thread([me, seed, at] {
      int fd = testing::connect_blocking(at);
      me->fd = fd;
      if (fd < 0) return;
      timeval tv{30, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      std::thread reader([me, seed, fd] {
        char buf[65536];
        std::mt19937 r3(seed * 17 + 3);
        while (me->got.size() < me->stream.size()) {
          if (r3() % 64 == 0) std::this_thread::sleep_for(std::chrono::microseconds(500));
          ssize_t n = ::recv(fd, buf, 1 + r3() % sizeof buf, 0);
          if (n <= 0) { me->reader_err = n < 0 ? errno : 0; break; }
          me->got.append(buf, static_cast<std::size_t>(n));
        }
      });
      std::mt19937 r2(seed * 31 + 7);
      std::size_t off = 0;
      while (off < me->stream.size()) {
        std::size_t chunk = std::min<std::size_t>(me->stream.size() - off, 1 + r2() % (r2() % 3 == 0 ? 200 : 70000));
        ssize_t n = ::send(fd, me->stream.data() + off, chunk, MSG_NOSIGNAL);
        if (n <= 0) { me->sender_err = errno; break; }
        off += static_cast<std::size_t>(n);
        if (r2() % 16 == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      ::shutdown(fd, SHUT_WR);
      reader.join();
    });
  }
  std::vector<server_stats> st(static_cast<std::size_t>(conns));
  for (int c = 0; c < conns; ++c) {
    result<ringframe::socket> s = ex.run([](ringframe::socket* l) -> task<result<ringframe::socket>> {
      co_return co_await l->accept(nullptr, {.timeout = 5s});
    }(&l));
    REQUIRE(s);
    params q = p;
    q.seed = p.seed + 13u * static_cast<unsigned>(c);
    ex.spawn(echo_server(&ex, std::move(*s), q, &st[c]));
  }
  ex.run_until_idle();
  for (int c = 0; c < conns; ++c) {
    cs[c].t.join();
    if (cs[c].fd >= 0) ::close(cs[c].fd);
    INFO("seed " << p.seed << " conn " << c << " of " << conns << " ring " << ring << " provided " << p.provided
                 << " multishot " << p.multishot << " rws " << p.rws << " read_size " << p.read_size << " gather "
                 << p.gather << " max_unsent " << p.max_unsent << " budget " << p.budget << " messages "
                 << st[c].messages << " end " << st[c].end.message() << " write_failed " << st[c].write_failed
                 << " reader_err " << cs[c].reader_err << " sender_err " << cs[c].sender_err);
    CHECK(st[c].messages == frames);
    CHECK(cs[c].got.size() == cs[c].stream.size());
    if (cs[c].got.size() != cs[c].stream.size()) continue;
    std::size_t first = 0;
    while (first < cs[c].got.size() && cs[c].got[first] == cs[c].stream[first]) ++first;
    INFO("first difference at " << first);
    CHECK(cs[c].got == cs[c].stream);
  }
}

// Each round draws its options from its seed; R44_ROUNDS, R44_SEED (one
// round), R44_CONNS and R44_RING (connections, and receive buffers in the
// ring: few force ENOBUFS and the reads into the decoder) reproduce one.
void rounds(backend_kind k, int default_rounds, int default_conns, unsigned default_ring) {
  const char* env = std::getenv("R44_ROUNDS");
  const int n = env ? std::atoi(env) : default_rounds;
  const char* only = std::getenv("R44_SEED");
  const int conns = std::getenv("R44_CONNS") ? std::atoi(std::getenv("R44_CONNS")) : default_conns;
  const unsigned ring =
      std::getenv("R44_RING") ? static_cast<unsigned>(std::atoi(std::getenv("R44_RING"))) : default_ring;
  for (int i = 0; i < n; ++i) {
    if (only && 1000 + i != std::atoi(only)) continue;
    std::mt19937 r(static_cast<unsigned>(1000 + i));
    params p{};
    p.k = k;
    p.seed = static_cast<unsigned>(1000 + i);
    p.provided = r() % 3 != 0;
    p.multishot = r() % 2;
    p.rws = r() % 2;
    const std::size_t rs[] = {64, 1024, 4096, 16 * 1024};
    p.read_size = rs[r() % 4];
    p.gather = r() % 2 ? 1 : 1024;
    const std::size_t mu[] = {4096, 64 * 1024, 1024 * 1024};
    p.max_unsent = mu[r() % 3];
    const std::size_t bu[] = {0, 64 * 1024, receive_budget::default_limit};
    p.budget = bu[r() % 3];
    run_echo(p, conns > 1 ? 120 : 300, conns, ring);
  }
}

}  // namespace

TEST_CASE("review44: randomized echo, byte-exact, across read paths") {
  testing::on_each_backend([](backend_kind k) { rounds(k, 24, 1, 0); });
}

TEST_CASE("review44: randomized echo on several connections sharing two receive buffers") {
  testing::on_each_backend([](backend_kind k) { rounds(k, 6, 4, 2); });
}
