// Boost.Asio framed echo servers, for side-by-side comparison only.
//
//   peer-asio-doc     the way Asio's documentation teaches it: one async_read
//                     for the 2-byte prefix, one for the header (parsed with
//                     nlohmann::json), one for the content, one async_write
//                     per message.
//   peer-asio-expert  the way an expert would: large reads into one buffer,
//                     every whole message in it decoded (nlohmann::json for
//                     the header), all the replies written in one go.
//
// Each is built twice: on Asio's default (epoll) backend and on its io_uring
// backend (BOOST_ASIO_HAS_IO_URING + BOOST_ASIO_DISABLE_EPOLL).
//
//   peer-asio-... PORT     (127.0.0.1; prints "Listening on ('127.0.0.1', PORT)")
#include <boost/asio.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using asio::ip::tcp;

#ifndef PEER_EXPERT
#define PEER_EXPERT 0
#endif

namespace {

#if PEER_EXPERT
awaitable<void> session(tcp::socket s) {
  std::vector<char> buf(64 * 1024);
  std::size_t have = 0;
  std::string out;
  for (;;) {
    if (have == buf.size()) buf.resize(buf.size() * 2);
    std::size_t n = co_await s.async_read_some(asio::buffer(buf.data() + have, buf.size() - have), use_awaitable);
    have += n;
    std::size_t pos = 0;
    out.clear();
    for (;;) {
      if (have - pos < 2) break;
      std::size_t hlen = (static_cast<unsigned char>(buf[pos]) << 8) | static_cast<unsigned char>(buf[pos + 1]);
      if (have - pos < 2 + hlen) break;
      auto header = nlohmann::json::parse(buf.begin() + static_cast<long>(pos + 2),
                                          buf.begin() + static_cast<long>(pos + 2 + hlen));
      std::size_t clen = header.at("content-length").get<std::size_t>();
      if (have - pos < 2 + hlen + clen) break;
      out.append(buf.data() + pos, 2 + hlen + clen);  // the echo: the same frame
      pos += 2 + hlen + clen;
    }
    if (pos) {
      std::memmove(buf.data(), buf.data() + pos, have - pos);
      have -= pos;
    }
    if (!out.empty()) co_await asio::async_write(s, asio::buffer(out), use_awaitable);
  }
}
#else
awaitable<void> session(tcp::socket s) {
  for (;;) {
    unsigned char prefix[2];
    co_await asio::async_read(s, asio::buffer(prefix), use_awaitable);
    std::size_t hlen = (prefix[0] << 8) | prefix[1];
    std::string header(hlen, '\0');
    co_await asio::async_read(s, asio::buffer(header), use_awaitable);
    auto j = nlohmann::json::parse(header);
    std::size_t clen = j.at("content-length").get<std::size_t>();
    std::string content(clen, '\0');
    co_await asio::async_read(s, asio::buffer(content), use_awaitable);
    std::string out(reinterpret_cast<char*>(prefix), 2);
    out += header;
    out += content;
    co_await asio::async_write(s, asio::buffer(out), use_awaitable);
  }
}
#endif

awaitable<void> guarded(tcp::socket s) {
  try {
    co_await session(std::move(s));
  } catch (const std::exception&) {
    // peer closed or sent garbage: the connection ends
  }
}

awaitable<void> listener(tcp::acceptor a) {
  for (;;) {
    tcp::socket s = co_await a.async_accept(use_awaitable);
    s.set_option(tcp::no_delay(true));
    asio::co_spawn(a.get_executor(), guarded(std::move(s)), asio::detached);
  }
}

}  // namespace

int main(int argc, char** argv) {
  unsigned short port = argc > 1 ? static_cast<unsigned short>(std::atoi(argv[1])) : 0;
  asio::io_context io(1);
  tcp::acceptor a(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  std::printf("Listening on ('127.0.0.1', %u)\n", a.local_endpoint().port());
  std::fflush(stdout);
  asio::co_spawn(io, listener(std::move(a)), asio::detached);
  io.run();
}
