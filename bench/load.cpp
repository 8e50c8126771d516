// ringframe-load: an end-to-end load generator on its own io_uring executor.
//
//   ringframe-load [-c C] [-d D] [-s S] [-t T | -m M] [--mode LABEL] [--app] [--server-pid PID] [-q] HOST PORT
//   ringframe-load idle -c N --server-pid PID [-s S] [-q] HOST PORT
//
// C connections each keep D requests in flight: a request is one framed
// message with S bytes of content whose first bytes carry its sequence
// number. Against `ringframe-server --mode frame-echo` (framed) or
// `--mode echo` (raw) every reply must be the request, byte for byte, in
// order: every byte is checked. The client does the same work in both modes
// (it compares whole frames, it does not parse them), so the two modes compare
// the servers. Per message it allocates nothing and reads the clock once per
// batch of replies. Exit status 1 on any validation error or failed connection.
//
// `idle` opens N connections and reports the server's resident memory per
// connection (from /proc/PID/status), then the same after one message on each.
// A --server-pid that names no running process is a usage error (exit 2); a
// server that exits while it is measured is an error (exit 1, no figures).
#include <ringframe/app.hpp>
#include <ringframe/event.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>
#include <ringframe/when_all.hpp>

#include <getopt.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

// Log-linear latency histogram in nanoseconds: 32 buckets per power of two,
// so a percentile is reported within 3% above the true value.
class histogram {
 public:
  void add(std::uint64_t ns) {
    ++counts_[index(ns)];
    ++total_;
  }
  std::uint64_t total() const { return total_; }
  double percentile_us(double p) const {
    if (total_ == 0) return 0;
    auto want = static_cast<std::uint64_t>(std::ceil(p / 100.0 * static_cast<double>(total_)));
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < counts_.size(); ++i) {
      seen += counts_[i];
      if (seen >= want) return static_cast<double>(upper(i)) / 1000.0;
    }
    return static_cast<double>(upper(counts_.size() - 1)) / 1000.0;
  }

 private:
  // Values below 64 ns get a bucket each; above, 32 buckets per power of two.
  static std::size_t index(std::uint64_t v) {
    if (v < 64) return static_cast<std::size_t>(v);
    unsigned msb = 63u - static_cast<unsigned>(std::countl_zero(v));
    unsigned shift = msb - 5;
    return 64 + (msb - 6) * 32 + static_cast<std::size_t>((v >> shift) - 32);
  }
  static std::uint64_t upper(std::size_t i) {
    if (i < 64) return i;
    std::size_t k = i - 64;
    unsigned shift = static_cast<unsigned>(k / 32) + 1;
    return ((32 + k % 32 + 1) << shift) - 1;
  }
  std::array<std::uint64_t, 64 + 58 * 32> counts_{};
  std::uint64_t total_ = 0;
};

struct config {
  std::string mode = "framed";
  int connections = 50;
  int depth = 16;
  std::size_t size = 64;
  double seconds = 5;
  std::uint64_t messages = 0;  // 0: run for `seconds`
  bool quiet = false;
  bool app = false;  // --app: the tutorial's search request, for --mode app servers
  pid_t server_pid = 0;
};

struct run_state {
  executor* ex = nullptr;
  address to;
  config cfg;
  std::string frame;       // the request template
  std::string reply;       // the reply expected (with the same sequence number)
  std::size_t seq_offset = 0;  // where the sequence number goes, in both
  std::size_t seq_room = 0;    // how many of its 8 bytes fit (0: none, --app)
  clk::time_point start, deadline;
  bool stop_sending = false;
  std::uint64_t sent = 0, completed = 0, completed_in_window = 0, bytes = 0;
  std::uint64_t errors = 0, failed = 0;
  int running = 0;
  histogram lat;
  std::string first_error;
};

// The 2-byte prefix and the JSON header of an encoded frame.
std::size_t frame_header_size(const std::string& f) {
  return 2 + ((static_cast<std::size_t>(static_cast<unsigned char>(f[0])) << 8) | static_cast<unsigned char>(f[1]));
}

void put_seq(char* frame, std::size_t off, std::size_t room, std::uint64_t seq) {
  std::size_t n = std::min<std::size_t>(8, room);
  std::memcpy(frame + off, &seq, n);
}

void fail(run_state* st, const std::string& what) {
  ++st->errors;
  if (st->first_error.empty()) st->first_error = what;
}

// One connection's two sides: the writer tops the window up, the reader
// checks the replies. They run at once: a client that sent its whole window
// before reading a reply deadlocked against a correct server once the window
// was larger than the sockets' buffers (depth 16 x 1 MiB): the server's
// replies were not taken, so it stopped reading (backpressure), so the
// client's send never finished; the run ended after 10 s with "send:
// Connection timed out" and 0 messages.
struct conn_io {
  explicit conn_io(executor& ex) : room(ex), more(ex) {}
  run_state* st = nullptr;
  int id = 0;
  ringframe::socket* s = nullptr;
  std::vector<clk::time_point> sent_at;
  std::uint64_t first = 0, next = 0, acked = 0;
  bool writer_done = false;  // it sends nothing more
  bool failed = false;       // one side failed (counted once): the other stops
  event room;   // set by the reader when replies free slots of the window
  event more;   // set by the writer when it has sent more (or is done)
  std::stop_source stop;  // ends the other side's operation when one side fails

  void failure(const std::string& what) {
    if (failed) return;
    failed = true;
    fail(st, what);
    stop.request_stop();
  }
};

task<void> load_writer(conn_io* io) {
  run_state* st = io->st;
  const config& c = st->cfg;
  const std::size_t L = st->frame.size();
  const std::uint64_t depth = static_cast<std::uint64_t>(c.depth);
  std::vector<char> out(static_cast<std::size_t>(c.depth) * L);
  std::stop_token tok = io->stop.get_token();
  while (!io->failed) {
    // Top the window up in one send.
    std::size_t batch = 0;
    auto now = clk::now();
    while (!st->stop_sending && io->next - io->acked < depth) {
      if (c.messages && st->sent >= c.messages) break;
      char* f = out.data() + batch * L;
      std::memcpy(f, st->frame.data(), L);
      put_seq(f, st->seq_offset, st->seq_room, io->next);
      io->sent_at[(io->next - io->first) % depth] = now;
      ++io->next;
      ++batch;
      ++st->sent;
    }
    if (batch) {
      io->more.set();  // the reader may wait for these replies already: they come while this sends
      result<std::size_t> w = co_await io->s->send_all(
          std::span<const std::byte>(reinterpret_cast<std::byte*>(out.data()), batch * L), {.timeout = 10s, .stop = &tok});
      if (!w) {
        io->failure("send: " + w.error().message());
        break;
      }
      continue;  // replies may have freed slots meanwhile
    }
    if (st->stop_sending || (c.messages && st->sent >= c.messages)) break;
    // The window is full: wait for a reply.
    io->room.reset();
    result<void> r = co_await io->room.wait(&tok);
    if (!r) break;  // the reader failed
  }
  io->writer_done = true;
  io->more.set();
}

task<void> load_reader(conn_io* io) {
  run_state* st = io->st;
  const std::size_t R = st->reply.size();
  const std::uint64_t depth = static_cast<std::uint64_t>(st->cfg.depth);
  std::vector<char> in(std::max<std::size_t>(256 * 1024, 2 * R));
  std::vector<char> expect(st->reply.begin(), st->reply.end());
  std::stop_token tok = io->stop.get_token();
  std::size_t have = 0;
  while (!io->failed) {
    if (io->acked == io->next) {
      if (io->writer_done) break;  // nothing in flight and nothing more to send
      io->more.reset();
      result<void> r = co_await io->more.wait(&tok);
      if (!r) break;
      continue;
    }
    result<std::size_t> n = co_await io->s->recv(
        std::span<std::byte>(reinterpret_cast<std::byte*>(in.data() + have), in.size() - have), {.timeout = 10s, .stop = &tok});
    if (io->failed) break;
    if (!n || *n == 0) {
      io->failure(n ? "the server closed a connection with replies outstanding" : "recv: " + n.error().message());
      break;
    }
    have += *n;
    auto now = clk::now();
    std::size_t off = 0;
    // A reply only for a request sent: with no room for a sequence number
    // (--app, -s 0) an extra reply looks like the next one.
    while (have - off >= R && io->acked < io->next) {
      put_seq(expect.data(), st->seq_offset, st->seq_room, io->acked);
      if (std::memcmp(in.data() + off, expect.data(), R) != 0) {
        io->failure("reply " + std::to_string(io->acked - io->first) + " on connection " + std::to_string(io->id) +
                    " differs from its request");
        co_return;
      }
      auto t = io->sent_at[(io->acked - io->first) % depth];
      st->lat.add(static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now - t).count()));
      ++io->acked;
      ++st->completed;
      st->bytes += R;
      if (now <= st->deadline) ++st->completed_in_window;
      off += R;
    }
    if (off) {
      std::memmove(in.data(), in.data() + off, have - off);
      have -= off;
      io->room.set();
    }
    // Every request answered, and bytes left over: the server sent more than
    // it was asked for (a stray byte, a second reply). The writer may still
    // send, but no reply can start before its request is sent.
    if (io->acked == io->next && have > 0) {
      io->failure("connection " + std::to_string(io->id) + ": " + std::to_string(have) +
                  " bytes more than the replies to the requests sent");
      break;
    }
  }
}

// A window of at most this many bytes is sent and answered in lockstep, by
// one coroutine: top the window up in one send, read, check, repeat. The
// figures in bench/RESULTS.md were measured so; a writer and a reader that
// hand over to each other cost a load generator more per message (0.89x the
// liburing loop's messages/s at 50 x 16 x 64 B, 0.73x at 1 x 16 x 1 KiB,
// measured side by side: bench/results/2026-12-02-session9/load-split.txt),
// and a costlier load generator narrows the gap between the servers it
// measures. A larger window cannot be sent whole before reading: see
// conn_io.
constexpr std::size_t lockstep_window = 256 * 1024;

task<void> load_lockstep(run_state* st, ringframe::socket* s, int id) {
  const config& c = st->cfg;
  const std::size_t L = st->frame.size(), R = st->reply.size();
  const std::size_t room = st->seq_room;
  std::vector<char> out(static_cast<std::size_t>(c.depth) * L);
  std::vector<char> in(std::max<std::size_t>(256 * 1024, 2 * R));
  std::vector<char> expect(st->reply.begin(), st->reply.end());
  std::vector<clk::time_point> sent_at(static_cast<std::size_t>(c.depth));
  std::uint64_t next = static_cast<std::uint64_t>(id) << 40;  // distinct per connection
  const std::uint64_t first = next;
  std::uint64_t acked = next;
  std::size_t have = 0;

  for (;;) {
    // Top the window up in one send.
    std::size_t batch = 0;
    auto now = clk::now();
    while (!st->stop_sending && next - acked < static_cast<std::uint64_t>(c.depth)) {
      if (c.messages && st->sent >= c.messages) break;
      char* f = out.data() + batch * L;
      std::memcpy(f, st->frame.data(), L);
      put_seq(f, st->seq_offset, room, next);
      sent_at[(next - first) % static_cast<std::uint64_t>(c.depth)] = now;
      ++next;
      ++batch;
      ++st->sent;
    }
    if (batch) {
      result<std::size_t> w = co_await s->send_all(std::span<const std::byte>(reinterpret_cast<std::byte*>(out.data()), batch * L),
                                                   {.timeout = 10s});
      if (!w) {
        fail(st, "send: " + w.error().message());
        co_return;
      }
    }
    if (acked == next) co_return;  // nothing in flight and nothing more to send
    result<std::size_t> n = co_await s->recv(std::span<std::byte>(reinterpret_cast<std::byte*>(in.data() + have), in.size() - have),
                                             {.timeout = 10s});
    if (!n || *n == 0) {
      fail(st, n ? "the server closed a connection with replies outstanding" : "recv: " + n.error().message());
      co_return;
    }
    have += *n;
    now = clk::now();
    std::size_t off = 0;
    // A reply only for a request sent: with no room for a sequence number
    // (--app, -s 0) an extra reply looks like the next one.
    while (have - off >= R && acked < next) {
      put_seq(expect.data(), st->seq_offset, room, acked);
      if (std::memcmp(in.data() + off, expect.data(), R) != 0) {
        fail(st, "reply " + std::to_string(acked - first) + " on connection " + std::to_string(id) +
                     " differs from its request");
        co_return;
      }
      auto t = sent_at[(acked - first) % static_cast<std::uint64_t>(c.depth)];
      st->lat.add(static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now - t).count()));
      ++acked;
      ++st->completed;
      st->bytes += R;
      if (now <= st->deadline) ++st->completed_in_window;
      off += R;
    }
    if (off) {
      std::memmove(in.data(), in.data() + off, have - off);
      have -= off;
    }
    // Every request answered, and bytes left over: the server sent more than
    // it was asked for (a stray byte, a second reply).
    if (acked == next && have > 0) {
      fail(st, "connection " + std::to_string(id) + ": " + std::to_string(have) +
                   " bytes more than the replies to the requests sent");
      co_return;
    }
  }
}

task<void> load_connection(run_state* st, int id) {
  result<ringframe::socket> s = co_await ringframe::connect(*st->ex, st->to, {.timeout = 10s});
  if (!s) {
    ++st->failed;
    if (st->first_error.empty()) st->first_error = "connect: " + s.error().message();
    --st->running;
    co_return;
  }
  if (static_cast<std::size_t>(st->cfg.depth) * st->frame.size() <= lockstep_window) {
    task<void> lockstep = load_lockstep(st, &*s, id);
    co_await std::move(lockstep);
    --st->running;
    co_return;
  }
  conn_io io(*st->ex);
  io.st = st;
  io.id = id;
  io.s = &*s;
  io.sent_at.resize(static_cast<std::size_t>(st->cfg.depth));
  io.first = io.next = io.acked = static_cast<std::uint64_t>(id) << 40;  // distinct per connection
  // Named before they are awaited (g++ 12, see framed_client.cpp).
  task<void> writing = load_writer(&io);
  task<void> reading = load_reader(&io);
  task<std::tuple<std::monostate, std::monostate>> both = when_all(std::move(writing), std::move(reading));
  co_await std::move(both);
  --st->running;
}

task<void> progress(run_state* st) {
  std::uint64_t last = 0;
  while (!st->stop_sending) {
    result<void> r = co_await sleep_for(*st->ex, 1s);
    if (!r || st->stop_sending) co_return;
    double el = std::chrono::duration<double>(clk::now() - st->start).count();
    std::fprintf(stderr, "  %5.1f s: %10llu msg/s\n", el, static_cast<unsigned long long>(st->completed - last));
    last = st->completed;
  }
}

task<void> stopper(run_state* st) {
  while (st->running > 0 && !st->stop_sending) {
    result<void> r = co_await sleep_for(*st->ex, 5ms);
    if (!r) co_return;
    if (clk::now() >= st->deadline || (st->cfg.messages && st->sent >= st->cfg.messages)) st->stop_sending = true;
  }
  st->stop_sending = true;
}

void raise_fd_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

std::string make_frame(std::size_t size, std::size_t& seq_offset) {
  std::string content(size, '\0');
  for (std::size_t i = 0; i < size; ++i) content[i] = static_cast<char>('a' + i % 26);
  std::string f;
  if (!encode_frame(message::binary(content, "binary/ringframe-load"), f)) std::abort();
  seq_offset = f.size() - size;
  return f;
}

// A process's /proc/PID/stat: its state letter and utime + stime in clock
// ticks; empty if the file cannot be read (no such process).
struct proc_stat {
  char state = '?';
  unsigned long long ticks = 0;
};

std::optional<proc_stat> read_proc_stat(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  if (!f) return std::nullopt;
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto close = stat.rfind(')');
  if (close == std::string::npos || close + 2 >= stat.size()) return std::nullopt;
  std::istringstream rest(stat.substr(close + 2));
  std::string field;
  proc_stat ps;
  int i = 3;
  for (; i <= 15 && rest >> field; ++i) {
    if (i == 3) ps.state = field[0];
    if (i == 14 || i == 15) ps.ticks += std::stoull(field);
  }
  if (i <= 15) return std::nullopt;
  return ps;
}

// Why the --server-pid process's CPU time and memory cannot be read, or
// empty if they can: it does not exist, or it has exited (a zombie whose
// parent has not reaped it yet has no memory left to measure).
std::string process_gone(pid_t pid) {
  std::optional<proc_stat> ps = read_proc_stat(pid);
  if (!ps) return "no such process";
  if (ps->state == 'Z' || ps->state == 'X') return "the process has exited";
  return "";
}

// utime + stime of a process, in seconds; -1 if it is gone (see process_gone).
double cpu_seconds(pid_t pid) {
  std::optional<proc_stat> ps = read_proc_stat(pid);
  if (!ps || ps->state == 'Z' || ps->state == 'X') return -1;
  return static_cast<double>(ps->ticks) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// A --server-pid process that went away while it was being measured: the
// figure would be 0 or -1, so it is not reported.
void server_exited(const char* who, pid_t pid, const char* when, const char* figure) {
  std::fprintf(stderr, "%s: the server process %d (--server-pid) exited %s: cannot report its %s\n", who,
               static_cast<int>(pid), when, figure);
}

int run_load(const config& c, const address& to) {
  executor ex;
  run_state st;
  st.ex = &ex;
  st.to = to;
  st.cfg = c;
  if (c.app) {
    // The tutorial client's search, and the reply the tutorial's server (and
    // ringframe's --mode app) gives it, byte for byte: no sequence number.
    std::string result = "{\"result\": ";
    append_json_string(result, app_search("morpheus"));
    result += "}";
    if (!encode_frame(message::json(R"({"action": "search", "value": "morpheus"})"), st.frame) ||
        !encode_frame(message::json(result), st.reply))
      std::abort();
  } else {
    st.frame = make_frame(c.size, st.seq_offset);
    st.reply = st.frame;
    st.seq_room = c.size;
  }
  double cpu0 = c.server_pid ? cpu_seconds(c.server_pid) : 0;
  if (cpu0 < 0) {
    server_exited("ringframe-load", c.server_pid, "before the run", "CPU time per message");
    return 1;
  }
  st.start = clk::now();
  st.deadline = c.messages ? clk::time_point::max() : st.start + std::chrono::nanoseconds(static_cast<long long>(c.seconds * 1e9));
  st.running = c.connections;
  for (int i = 0; i < c.connections; ++i) ex.spawn(load_connection(&st, i));
  ex.spawn(stopper(&st));
  if (!c.quiet && !c.messages && c.seconds > 2) ex.spawn(progress(&st));
  ex.run_until_idle();
  double cpu1 = c.server_pid ? cpu_seconds(c.server_pid) : 0;
  const bool server_lost = cpu1 < 0;
  double server_cpu = c.server_pid && !server_lost ? cpu1 - cpu0 : -1;
  double secs = c.messages ? std::chrono::duration<double>(clk::now() - st.start).count() : c.seconds;
  std::uint64_t counted = c.messages ? st.completed : st.completed_in_window;
  double mps = counted / secs;
  double mibs = mps * static_cast<double>(st.frame.size()) / (1024.0 * 1024.0);
  const std::size_t content = c.app ? st.frame.size() - frame_header_size(st.frame) : c.size;
  if (!c.quiet)
    std::printf("%s: %d connections x depth %d, %zu B content (%zu B frames), %.1f s: %.0f msg/s, %.1f MiB/s, "
                "latency p50 %.0f us, p99 %.0f us, p99.9 %.0f us; %llu errors, %llu failed connections%s%s\n",
                c.mode.c_str(), c.connections, c.depth, content, st.frame.size(), secs, mps, mibs, st.lat.percentile_us(50),
                st.lat.percentile_us(99), st.lat.percentile_us(99.9), (unsigned long long)st.errors,
                (unsigned long long)st.failed, st.first_error.empty() ? "" : "; first: ", st.first_error.c_str());
  // Server CPU per message (all replies, drain included): the figure that
  // stays meaningful when the load generator's own core is the limit.
  double cpu_ns = server_cpu >= 0 && st.completed ? server_cpu * 1e9 / static_cast<double>(st.completed) : -1;
  if (!c.quiet && cpu_ns >= 0) std::printf("server CPU: %.2f s, %.0f ns per message\n", server_cpu, cpu_ns);
  if (server_lost) {
    // No JSON line: a script that collects them must not record this run.
    std::fflush(stdout);
    server_exited("ringframe-load", c.server_pid, "during the run", "CPU time per message");
    return 1;
  }
  std::printf("{\"bench\":\"load\",\"mode\":\"%s\",\"connections\":%d,\"depth\":%d,\"size\":%zu,\"seconds\":%.3f,"
              "\"messages\":%llu,\"msgs_per_s\":%.0f,\"mib_per_s\":%.2f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
              "\"errors\":%llu,\"failed_connections\":%llu,\"server_cpu_ns_per_msg\":%.0f}\n",
              c.mode.c_str(), c.connections, c.depth, content, secs, (unsigned long long)counted, mps, mibs,
              st.lat.percentile_us(50), st.lat.percentile_us(99), st.lat.percentile_us(99.9), (unsigned long long)st.errors,
              (unsigned long long)st.failed, cpu_ns);
  return st.errors || st.failed ? 1 : 0;
}

// ---- idle: memory per connection ----

// VmRSS of /proc/PID/status in KiB; -1 if the process is gone (a zombie has
// no VmRSS line).
long rss_kib(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

struct idle_state {
  executor* ex = nullptr;
  address to;
  std::vector<ringframe::socket> socks;
  std::uint64_t failed = 0;
  int pending = 0;
};

task<void> idle_connect(idle_state* st) {
  result<ringframe::socket> s = co_await ringframe::connect(*st->ex, st->to, {.timeout = 10s});
  if (s) st->socks.push_back(std::move(*s));
  else ++st->failed;
  --st->pending;
}

task<void> one_message(idle_state* st, ringframe::socket* s, const std::string* frame) {
  result<std::size_t> w = co_await s->send_all(*frame, {.timeout = 10s});
  std::string buf(frame->size(), '\0');
  std::size_t have = 0;
  while (w && have < buf.size()) {
    result<std::size_t> n = co_await s->recv(std::as_writable_bytes(std::span(buf.data() + have, buf.size() - have)), {.timeout = 10s});
    if (!n || *n == 0) break;
    have += *n;
  }
  if (have != buf.size() || buf != *frame) ++st->failed;
  --st->pending;
}

task<void> settle(executor* ex) {
  result<void> r = co_await sleep_for(*ex, 500ms);
  (void)r;
}

int run_idle(const config& c, const address& to) {
  if (!c.server_pid) {
    std::fprintf(stderr, "ringframe-load idle: --server-pid is required\n");
    return 2;
  }
  executor ex;
  idle_state st;
  st.ex = &ex;
  st.to = to;
  std::size_t seq_off;
  std::string frame = make_frame(c.size, seq_off);
  long before = rss_kib(c.server_pid);
  if (before < 0) {
    server_exited("ringframe-load idle", c.server_pid, "before the connections were opened", "memory per connection");
    return 1;
  }
  st.pending = c.connections;
  for (int i = 0; i < c.connections; ++i) ex.spawn(idle_connect(&st));
  ex.run_until_idle();
  ex.run(settle(&ex));
  long idle = rss_kib(c.server_pid);
  if (idle < 0) {
    server_exited("ringframe-load idle", c.server_pid, "while the connections were opened", "memory per connection");
    return 1;
  }
  st.pending = static_cast<int>(st.socks.size());
  for (auto& s : st.socks) ex.spawn(one_message(&st, &s, &frame));
  ex.run_until_idle();
  ex.run(settle(&ex));
  long after = rss_kib(c.server_pid);
  if (after < 0) {
    server_exited("ringframe-load idle", c.server_pid, "while the messages were sent", "memory per connection");
    return 1;
  }
  double n = static_cast<double>(st.socks.size());
  double idle_b = n ? (idle - before) * 1024.0 / n : 0, used_b = n ? (after - before) * 1024.0 / n : 0;
  if (!c.quiet)
    std::printf("idle: %zu connections: server RSS %ld KiB -> %ld KiB idle (%.0f B per connection) -> %ld KiB after one "
                "%zu-byte message each (%.0f B per connection); %llu failed\n",
                st.socks.size(), before, idle, idle_b, after, c.size, used_b, (unsigned long long)st.failed);
  std::printf("{\"bench\":\"memory\",\"connections\":%zu,\"rss_before_kib\":%ld,\"rss_idle_kib\":%ld,\"rss_after_kib\":%ld,"
              "\"idle_bytes_per_conn\":%.0f,\"after_message_bytes_per_conn\":%.0f,\"failed\":%llu}\n",
              st.socks.size(), before, idle, after, idle_b, used_b, (unsigned long long)st.failed);
  return st.failed ? 1 : 0;
}

const char* const usage_text =
    "Usage: ringframe-load [-c C] [-d D] [-s S] [-t T | -m M] [--mode LABEL] [--app] [--server-pid PID] [-q] HOST PORT\n"
    "       ringframe-load idle -c N --server-pid PID [-s S] [-q] HOST PORT\n"
    "\n"
    "Options:\n"
    "  -c, --connections C   concurrent connections (default 50)\n"
    "  -d, --depth D         requests in flight per connection (default 16)\n"
    "  -s, --size S          content bytes per message (default 64)\n"
    "  -t, --seconds T       run for T seconds (default 5)\n"
    "  -m, --messages M      stop after M requests instead (not with -t)\n"
    "      --mode LABEL      a label (framed, raw, ceiling, ...): the traffic is the same whatever\n"
    "                        the server, and every reply is checked byte for byte\n"
    "      --app             send the tutorial's search request (text/json, {\"action\": \"search\",\n"
    "                        \"value\": \"morpheus\"}) instead of binary frames, and expect its\n"
    "                        reply, for ringframe-server --mode app (or the tutorial's server);\n"
    "                        --size is then ignored\n"
    "      --server-pid PID  the server process: idle reads its memory; a load run reports its\n"
    "                        CPU time per message\n"
    "  -q, --quiet           print only the JSON line\n"
    "  -h, --help            this help\n";

}  // namespace

int main(int argc, char** argv) {
  config c;
  bool idle = argc > 1 && std::string(argv[1]) == "idle";
  if (idle) {
    --argc;
    ++argv;
  }
  static const option longopts[] = {
      {"connections", required_argument, nullptr, 'c'}, {"depth", required_argument, nullptr, 'd'},
      {"size", required_argument, nullptr, 's'},        {"seconds", required_argument, nullptr, 't'},
      {"messages", required_argument, nullptr, 'm'},    {"mode", required_argument, nullptr, 1},
      {"server-pid", required_argument, nullptr, 2},    {"quiet", no_argument, nullptr, 'q'},
      {"app", no_argument, nullptr, 3},
      {"help", no_argument, nullptr, 'h'},              {nullptr, 0, nullptr, 0}};
  int ch;
  bool seconds_given = false;
  auto number = [](const char* what, const char* s, double lo, double hi) {
    char* end = nullptr;
    double v = std::strtod(s, &end);
    if (!*s || *end || v < lo || v > hi) {
      std::fprintf(stderr, "ringframe-load: bad %s '%s'\n", what, s);
      std::exit(2);
    }
    return v;
  };
  while ((ch = getopt_long(argc, argv, "c:d:s:t:m:qh", longopts, nullptr)) != -1) {
    switch (ch) {
      case 'c': c.connections = static_cast<int>(number("--connections", optarg, 1, 1e6)); break;
      case 'd': c.depth = static_cast<int>(number("--depth", optarg, 1, 1e5)); break;
      case 's': c.size = static_cast<std::size_t>(number("--size", optarg, 0, 64 << 20)); break;
      case 't':
        c.seconds = number("--seconds", optarg, 0.01, 86400);
        seconds_given = true;
        break;
      case 'm': c.messages = static_cast<std::uint64_t>(number("--messages", optarg, 1, 1e15)); break;
      case 1:
        c.mode = optarg;
        break;
      case 3: c.app = true; break;
      case 2: c.server_pid = static_cast<pid_t>(number("--server-pid", optarg, 1, 1e9)); break;
      case 'q': c.quiet = true; break;
      case 'h': std::fputs(usage_text, stdout); return 0;
      default: std::fputs(usage_text, stderr); return 2;
    }
  }
  if (argc - optind != 2) {
    std::fputs(usage_text, stderr);
    return 2;
  }
  if (seconds_given && c.messages) {
    std::fprintf(stderr, "ringframe-load: give -t/--seconds or -m/--messages, not both\n");
    return 2;
  }
  if (c.server_pid) {
    std::string gone = process_gone(c.server_pid);
    if (!gone.empty()) {
      std::fprintf(stderr, "ringframe-load: bad --server-pid %d: %s\n", static_cast<int>(c.server_pid), gone.c_str());
      return 2;
    }
  }
  auto port = parse_port(argv[optind + 1]);
  if (!port || *port == 0) {
    std::fprintf(stderr, "ringframe-load: bad port '%s' (expected a whole number from 1 to 65535)\n", argv[optind + 1]);
    return 2;
  }
  auto addrs = address::resolve(argv[optind], *port);
  if (!addrs) {
    std::fprintf(stderr, "ringframe-load: bad address %s %s: %s\n", argv[optind], argv[optind + 1], addrs.error().message().c_str());
    return 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  raise_fd_limit();
  try {
    return idle ? run_idle(c, addrs->front()) : run_load(c, addrs->front());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ringframe-load: %s\n", e.what());
    return 1;
  }
}
