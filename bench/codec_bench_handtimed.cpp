// ringframe-bench-codec, hand-timed: built instead of codec_bench.cpp only
// when Google Benchmark (libbenchmark-dev) is not installed. Same streams and
// decoders; its own timing loop and JSON lines (bench/run reads either).
//
// For each content size, decode throughput fed three ways (the whole buffer
// at once, 4 KiB chunks as a typical recv returns, 1-byte chunks as the worst
// case) and encode throughput; each figure is the median of several timed
// repetitions after a warm-up. Bytes reach the decoder by copy in every mode,
// as recv copies them from the kernel, so memcpy of the same bytes is printed
// as the ceiling and each decode figure as a fraction of it. With
// nlohmann-json3-dev installed, a decoder written the way most users would
// (std::string buffer, nlohmann::json for the header) runs on the same bytes.
#include "codec_streams.hpp"

#include <ringframe/frame.hpp>

#if RINGFRAME_BENCH_NLOHMANN
#include <nlohmann/json.hpp>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace ringframe;
using clk = std::chrono::steady_clock;

namespace {

struct options {
  int reps = 7;
  double min_seconds = 0.05;  // per repetition, at least
  bool json = false;
  long only_size = -1;  // --size N: just that content size (for profiling)
};

// Median seconds per pass of `fn` over the stream.
template <class F>
double median_seconds(const options& o, F&& fn) {
  fn();  // warm-up: caches, allocations, branch predictors
  std::vector<double> t;
  for (int r = 0; r < o.reps; ++r) {
    int passes = 0;
    auto t0 = clk::now();
    double el = 0;
    do {
      fn();
      ++passes;
      el = std::chrono::duration<double>(clk::now() - t0).count();
    } while (el < o.min_seconds);
    t.push_back(el / passes);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

volatile std::size_t sink;

using codec_bench::make_app_stream;
using codec_bench::make_stream;

std::size_t decode_ours(const std::string& stream, std::size_t chunk) {
  std::size_t bytes;
  std::size_t n = codec_bench::decode_ours(stream, chunk, bytes);
  sink = bytes;
  return n;
}

#if RINGFRAME_BENCH_NLOHMANN
std::size_t decode_nlohmann(const std::string& stream, std::size_t chunk) {
  std::size_t bytes;
  std::size_t n = codec_bench::decode_nlohmann(stream, chunk, bytes);
  sink = bytes;
  return n;
}
#endif

struct row {
  std::size_t size;
  const char* feed;
  double msgs_per_s, gb_per_s, memcpy_gb_per_s, nl_msgs_per_s;
};

}  // namespace

int main(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") o.reps = 3, o.min_seconds = 0.02;
    else if (a == "--json") o.json = true;
    else if (a == "--size" && i + 1 < argc) o.only_size = std::atol(argv[++i]);
    else if (a == "--help" || a == "-h") {
      std::printf("Usage: ringframe-bench-codec [--quick] [--json]\n"
                  "       ringframe-bench-codec --size N   (one content size, e.g. under callgrind)\n"
                  "Decode/encode throughput of the framing codec; prints a table (and JSON lines with --json).\n");
      return 0;
    } else {
      std::fprintf(stderr, "ringframe-bench-codec: unknown argument '%s'\n", a.c_str());
      return 2;
    }
  }
  const std::size_t sizes[] = {0, 64, 1024, 64 * 1024, 1024 * 1024};
  struct feed {
    const char* name;
    std::size_t chunk;  // 0: whole buffer
    std::size_t target_bytes;
    bool distinct;
  } feeds[] = {{"whole", 0, 16u << 20, false},
               {"4KiB", 4096, 16u << 20, false},
               {"1B", 1, 2u << 20, false},
               {"whole-distinct", 0, 16u << 20, true}};

  std::printf("feed: whole = one buffer, 4KiB / 1B = chunks of that size; -distinct = every header differs\n");
  std::printf("%-8s %-14s %14s %10s %10s %8s %14s %8s\n", "size", "feed", "decode msg/s", "GB/s", "memcpy GB/s",
              "of cpy", "nlohmann msg/s", "ours/nl");
  std::vector<row> rows;
  for (std::size_t size : sizes) {
    if (o.only_size >= 0 && size != static_cast<std::size_t>(o.only_size)) continue;
    for (const feed& f : feeds) {
      std::size_t count = 0;
      std::string stream = make_stream(size, std::max<std::size_t>(f.target_bytes, size * 4), count, f.distinct);
      const std::size_t chunk = f.chunk ? f.chunk : stream.size();
      if (decode_ours(stream, chunk) != count) std::abort();
      double t = median_seconds(o, [&] { decode_ours(stream, chunk); });
      std::string dst(stream.size(), '\0');
      double tc = median_seconds(o, [&] {
        for (std::size_t pos = 0; pos < stream.size(); pos += chunk)
          std::memcpy(dst.data() + pos, stream.data() + pos, std::min(chunk, stream.size() - pos));
        sink = static_cast<unsigned char>(dst[dst.size() / 2]);
      });
      row r{size, f.name, count / t, stream.size() / t / 1e9, stream.size() / tc / 1e9, 0};
#if RINGFRAME_BENCH_NLOHMANN
      if (decode_nlohmann(stream, chunk) != count) std::abort();
      r.nl_msgs_per_s = count / median_seconds(o, [&] { decode_nlohmann(stream, chunk); });
#endif
      rows.push_back(r);
      char nl[32] = "-", ratio[32] = "-";
      if (r.nl_msgs_per_s > 0) {
        std::snprintf(nl, sizeof nl, "%.0f", r.nl_msgs_per_s);
        std::snprintf(ratio, sizeof ratio, "%.1fx", r.msgs_per_s / r.nl_msgs_per_s);
      }
      std::printf("%-8zu %-14s %14.0f %10.3f %10.3f %7.0f%% %14s %8s\n", size, f.name, r.msgs_per_s, r.gb_per_s,
                  r.memcpy_gb_per_s, 100 * r.gb_per_s / r.memcpy_gb_per_s, nl, ratio);
      std::fflush(stdout);
    }
  }

  // The tutorial's search request, its 41-byte content checked as JSON or not.
  if (o.only_size < 0) {
    std::printf("\n%-22s %14s\n", "app request", "decode msg/s");
    for (bool as_json : {true, false}) {
      std::size_t count = 0;
      std::string stream = make_app_stream(as_json, 16u << 20, count);
      if (decode_ours(stream, stream.size()) != count) std::abort();
      double t = median_seconds(o, [&] { decode_ours(stream, stream.size()); });
      std::printf("%-22s %14.0f\n", as_json ? "text-json" : "binary", count / t);
    }
  }

  std::printf("\n%-8s %14s %10s\n", "size", "encode msg/s", "GB/s");
  std::vector<std::pair<std::size_t, std::pair<double, double>>> enc;
  for (std::size_t size : sizes) {
    if (o.only_size >= 0) break;
    std::string content(size, 'x');
    std::string out;
    std::size_t per_pass = std::max<std::size_t>(1, (8u << 20) / (size + 100));
    header_fields h{"binary/custom-client-binary-type", "binary"};
    auto bytes = std::as_bytes(std::span(content.data(), content.size()));
    double t = median_seconds(o, [&] {
      out.clear();
      for (std::size_t i = 0; i < per_pass; ++i)
        if (!encode_frame(h, bytes, out)) std::abort();
      sink = out.size();
    });
    double mps = per_pass / t, gbs = static_cast<double>(out.size()) / t / 1e9;
    enc.push_back({size, {mps, gbs}});
    std::printf("%-8zu %14.0f %10.3f\n", size, mps, gbs);
  }

  // Whole-buffer versus 1-byte chunks, per message: the cost of tiny reads.
  std::printf("\n%-8s %22s\n", "size", "1B/whole time per msg");
  for (std::size_t size : sizes) {
    if (o.only_size >= 0 && size != static_cast<std::size_t>(o.only_size)) continue;
    double whole = 0, byte = 0;
    for (auto& r : rows) {
      if (r.size != size) continue;
      if (std::string(r.feed) == "whole") whole = r.msgs_per_s;
      if (std::string(r.feed) == "1B") byte = r.msgs_per_s;
    }
    std::printf("%-8zu %21.1fx\n", size, whole / byte);
  }

  if (o.json) {
    for (auto& r : rows)
      std::printf("{\"bench\":\"decode\",\"size\":%zu,\"feed\":\"%s\",\"msgs_per_s\":%.0f,\"gb_per_s\":%.4f,"
                  "\"memcpy_gb_per_s\":%.4f,\"nlohmann_msgs_per_s\":%.0f}\n",
                  r.size, r.feed, r.msgs_per_s, r.gb_per_s, r.memcpy_gb_per_s, r.nl_msgs_per_s);
    for (auto& [size, v] : enc)
      std::printf("{\"bench\":\"encode\",\"size\":%zu,\"msgs_per_s\":%.0f,\"gb_per_s\":%.4f}\n", size, v.first, v.second);
  }
  return 0;
}
