// The tutorial's application (docs/protocol.md section 3), as a per-request
// handler: text/json {"action": "search", "value": V} looked up in a small
// table; any other content-type answered with the first 10 bytes of the
// request. Written with the public handler API, like user code.
#pragma once

#include <ringframe/handler.hpp>

namespace ringframe {

task<message> app_handler(message_view request, connection_info info);

// The search table, exactly as in the tutorial (emoji included).
std::string_view app_search(std::string_view value);  // empty when no match

// Framed echo (docs/protocol.md section 4): every message back unchanged, the
// same bytes on the wire.
task<void> frame_echo_handler(connection& conn, connection_info info);

}  // namespace ringframe
