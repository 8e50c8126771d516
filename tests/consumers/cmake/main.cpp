// A program built against an installed ringframe (.ci/consumers): it parses an
// address, round-trips a frame and runs an executor briefly; non-zero on failure.
#include <ringframe/address.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/timer.hpp>
#include <ringframe/version.hpp>

#include <chrono>
#include <cstdio>
#include <string>

static ringframe::task<bool> nap(ringframe::executor* ex) {
  auto slept = co_await ringframe::sleep_for(*ex, std::chrono::milliseconds(1));
  co_return bool(slept);
}

int main() {
  auto addr = ringframe::address::from_ip("::1", 65432);
  std::string wire;
  ringframe::frame_decoder decoder;
  ringframe::message_view got;
  if (!addr || !ringframe::encode_frame(ringframe::message::json(R"({"action":"search"})"), wire)) return 1;
  decoder.feed(wire);
  if (decoder.next(got) != ringframe::frame_decoder::status::message || got.content_text() != R"({"action":"search"})") return 1;
  ringframe::executor ex;
  if (!ex.run(nap(&ex))) return 1;
  std::printf("ringframe %s: %s, %zu-byte frame, executor on %s\n", RINGFRAME_VERSION, addr->to_string().c_str(), wire.size(),
              ex.backend_name());
  return 0;
}
