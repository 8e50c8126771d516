// metrics: a stats_snapshot (stats.hpp) in the Prometheus text exposition
// format, version 0.0.4: every series with HELP and TYPE lines, per-thread
// series labelled thread="N", counters named ..._total.
//
//   std::string body = prometheus_text(snapshot, "frame-echo");
//   // served as: Content-Type: text/plain; version=0.0.4; charset=utf-8
//
// README.md ("Running in production") lists the series.
#pragma once

#include <ringframe/stats.hpp>

#include <string>
#include <string_view>

namespace ringframe {

// The Content-Type of prometheus_text's output.
inline constexpr std::string_view prometheus_content_type = "text/plain; version=0.0.4; charset=utf-8";

// `mode`: the value of the mode label on the message series (the server's
// --mode); "" leaves the label out.
std::string prometheus_text(const stats_snapshot& s, std::string_view mode = {});

// A label value with '\\', '"' and newlines escaped as the format requires.
void append_label_value(std::string& out, std::string_view v);

}  // namespace ringframe
