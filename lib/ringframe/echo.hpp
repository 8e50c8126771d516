// The raw echo handler: bytes in, the same bytes out, no framing (the
// tutorial's first two servers). Written with the public server API.
#pragma once

#include <ringframe/server.hpp>

namespace ringframe {

task<void> echo_handler(socket s, connection_info info);

}  // namespace ringframe
