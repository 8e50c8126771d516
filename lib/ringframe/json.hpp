// A message's text/json content as a simdjson DOM element, without parsing
// it a second time: the decoder has already parsed text/json content to
// check it (docs/protocol.md section 6), and the document it built is handed
// out while it is still there.
//
//   result<message_view> m = co_await conn.read_message();
//   simdjson::dom::object obj;
//   if (m && !content_json(*m).get(obj)) { ... obj["action"] ... }
//
// The element lives in the thread's shared parser: use it before the
// coroutine next suspends (any co_await), as simdjson's own rule is "until
// the parser parses again". After a suspension call content_json() again:
// it sees that another parse has happened on the thread since, and parses
// the content again (as it does for content the decoder did not parse:
// other content types, validation turned off, a view built by hand).
#pragma once

#include <ringframe/message.hpp>

#include <simdjson.h>

namespace ringframe {

// Errors are simdjson's (TAPE_ERROR, UTF8_ERROR, ...), as parser.parse gives them.
simdjson::simdjson_result<simdjson::dom::element> content_json(const message_view& m);

}  // namespace ringframe
