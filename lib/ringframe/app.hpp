// The tutorial's application (docs/protocol.md section 3): text/json
// {"action": "search", "value": V} looked up in a small table; any other
// content-type answered with the first 10 bytes of the request. Written with
// the public handler API, like user code, in both of its styles.
#pragma once

#include <ringframe/handler.hpp>

namespace ringframe {

// As a per-request handler: a message and a coroutine per request.
task<message> app_handler(message_view request, connection_info info);
// As a connection handler, what ringframe-server --mode app runs: its own
// loop, the reply encoded from a per-thread buffer straight into the send
// queue (no allocation per request; bench/RESULTS.md, "--mode app").
task<void> app_connection_handler(connection& conn, connection_info info);

// The search table, exactly as in the tutorial (emoji included).
std::string_view app_search(std::string_view value);  // empty when no match

// Framed echo (docs/protocol.md section 4): every message back unchanged, the
// same bytes on the wire.
task<void> frame_echo_handler(connection& conn, connection_info info);

}  // namespace ringframe
