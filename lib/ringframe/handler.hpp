// Framed-message handlers for server: the two styles of user code.
//
// Per connection: the handler owns the loop.
//   task<void> chat(connection& conn, connection_info info) {
//     for (;;) {
//       auto m = co_await conn.read_message();
//       if (!m) { if (co_await answer_read_error(conn, info, m.error())) continue; co_return; }
//       co_await conn.write(message::json("{\"ok\":true}"));
//     }
//   }
//   srv.serve(framed(&chat));
//
// Per request: a coroutine from request to response; the library runs the
// loop, answers malformed input and keeps pipelined responses in order.
//   task<message> hello(message_view req, connection_info) { co_return message::json("{}"); }
//   srv.serve(per_request(&hello));
//
// Handlers are coroutines with plain parameters; to give one state, pass a
// pointer (std::bind_front(&store::handle, &my_store)) rather than writing a
// coroutine lambda with captures (g++ 12 miscompiles those).
#pragma once

#include <ringframe/connection.hpp>
#include <ringframe/server.hpp>

#include <functional>

namespace ringframe {

using connection_handler = std::function<task<void>(connection&, connection_info)>;
using request_handler = std::function<task<message>(message_view, connection_info)>;

server::stream_handler framed(connection_handler h, connection_options o = {});
server::stream_handler per_request(request_handler h, connection_options o = {});

// What the built-in loops do with a failed read_message(), for handlers that
// run their own loop: a malformed message is logged (one line naming the
// peer and the reason), counted and answered with a framed error; true when
// the stream is still in sync and reading may go on. Timeouts are logged;
// end of stream, resets and cancellation end the connection quietly.
task<bool> answer_read_error(connection& conn, connection_info info, std::error_code ec);

}  // namespace ringframe
