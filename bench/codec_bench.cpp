// ringframe-bench-codec: the framing hot path, alone (no sockets), on Google
// Benchmark (libbenchmark-dev; without it bench/codec_bench_handtimed.cpp is
// built under the same name).
//
// Benchmarks, one per content size (0, 64, 1024, 65536, 1048576 B) and feed:
//   decode/ringframe/FEED/SIZE   frame_decoder over a stream of messages
//   decode/nlohmann/FEED/SIZE    the same bytes, decoded the way most users
//                                would (only with nlohmann-json3-dev and
//                                -Dnlohmann_bench not disabled)
//   decode/memcpy/FEED/SIZE      memcpy of the same bytes in the same chunks:
//                                the ceiling each decode is compared with
//   encode/SIZE                  encode_frame into a reused std::string
//   decode/ringframe/app-request/{text-json,binary}
//                                the tutorial's search request, whole buffer,
//                                its 41-byte content checked as JSON or not
// FEED: whole (one buffer), 4KiB and 1B (chunks of that size), all with the
// same header on every message; whole-distinct gives every message a
// different header (an extra "seq" key), so no parse can be reused. Bytes
// reach the decoder by copy in every feed, as recv copies them.
//
// One iteration is one pass over the stream; items/s is messages per second
// and bytes/s is stream bytes (headers included) per second, both per second
// of the benchmark thread's CPU time (the library's default; the development
// machine is shared, and wall time counts other processes' turns). Repetitions, aggregates and JSON are the
// library's: by default 7 repetitions of at least 0.05 s each, aggregates
// only (mean, median, stddev, cv).
#include "codec_streams.hpp"

#include <ringframe/frame.hpp>

#include <benchmark/benchmark.h>

#if RINGFRAME_BENCH_NLOHMANN
#include <nlohmann/json.hpp>
#endif

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using namespace ringframe;

namespace {

using codec_bench::make_app_stream;
using codec_bench::make_stream;

std::size_t decode_ours(const std::string& stream, std::size_t chunk) {
  std::size_t bytes;
  std::size_t n = codec_bench::decode_ours(stream, chunk, bytes);
  benchmark::DoNotOptimize(bytes);
  return n;
}

#if RINGFRAME_BENCH_NLOHMANN
std::size_t decode_nlohmann(const std::string& stream, std::size_t chunk) {
  std::size_t bytes;
  std::size_t n = codec_bench::decode_nlohmann(stream, chunk, bytes);
  benchmark::DoNotOptimize(bytes);
  return n;
}
#endif

struct feed {
  const char* name;
  std::size_t chunk;  // 0: whole buffer
  std::size_t target_bytes;
  bool distinct;
};
const feed feeds[] = {{"whole", 0, 16u << 20, false},
                      {"4KiB", 4096, 16u << 20, false},
                      {"1B", 1, 2u << 20, false},
                      {"whole-distinct", 0, 16u << 20, true}};
const std::size_t sizes[] = {0, 64, 1024, 64 * 1024, 1024 * 1024};

// The stream of the (size, feed) being measured. Benchmarks run in
// registration order, grouped by stream, so one slot is enough: each stream
// is built (and checked) once, not once per repetition.
struct stream_slot {
  std::size_t size = ~std::size_t{0};
  const feed* f = nullptr;
  std::string bytes;
  std::size_t count = 0;
} slot;

const stream_slot& stream_for(std::size_t size, const feed& f) {
  if (slot.size != size || slot.f != &f) {
    slot.bytes = make_stream(size, std::max<std::size_t>(f.target_bytes, size * 4), slot.count, f.distinct);
    slot.size = size;
    slot.f = &f;
    if (decode_ours(slot.bytes, f.chunk ? f.chunk : slot.bytes.size()) != slot.count) std::abort();
#if RINGFRAME_BENCH_NLOHMANN
    if (decode_nlohmann(slot.bytes, f.chunk ? f.chunk : slot.bytes.size()) != slot.count) std::abort();
#endif
  }
  return slot;
}

template <class Decode>
void bench_decode(benchmark::State& state, std::size_t size, const feed& f, Decode decode) {
  const stream_slot& s = stream_for(size, f);
  const std::size_t chunk = f.chunk ? f.chunk : s.bytes.size();
  for (auto _ : state) benchmark::DoNotOptimize(decode(s.bytes, chunk));
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * s.count));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * s.bytes.size()));
}

void bench_memcpy(benchmark::State& state, std::size_t size, const feed& f) {
  const stream_slot& s = stream_for(size, f);
  const std::size_t chunk = f.chunk ? f.chunk : s.bytes.size();
  std::string dst(s.bytes.size(), '\0');
  for (auto _ : state) {
    for (std::size_t pos = 0; pos < s.bytes.size(); pos += chunk)
      std::memcpy(dst.data() + pos, s.bytes.data() + pos, std::min(chunk, s.bytes.size() - pos));
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * s.count));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * s.bytes.size()));
}

// The tutorial's search request, its content checked as JSON or not.
void bench_app_request(benchmark::State& state, bool as_json) {
  std::size_t count = 0;
  const std::string bytes = make_app_stream(as_json, 16u << 20, count);
  if (decode_ours(bytes, bytes.size()) != count) std::abort();
  for (auto _ : state) benchmark::DoNotOptimize(decode_ours(bytes, bytes.size()));
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * count));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes.size()));
}

void bench_encode(benchmark::State& state, std::size_t size) {
  std::string content(size, 'x');
  std::string out;
  const std::size_t per_pass = std::max<std::size_t>(1, (8u << 20) / (size + 100));
  header_fields h{"binary/custom-client-binary-type", "binary"};
  auto bytes = std::as_bytes(std::span(content.data(), content.size()));
  for (auto _ : state) {
    out.clear();
    for (std::size_t i = 0; i < per_pass; ++i)
      if (!encode_frame(h, bytes, out)) std::abort();
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * per_pass));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * out.size()));
}

void usage() {
  std::printf(
      "Usage: ringframe-bench-codec [--quick] [--json] [--size N] [--benchmark_...]\n"
      "Decode/encode throughput of the framing codec on Google Benchmark.\n"
      "  --quick    3 repetitions of at least 0.02 s (default: 7 of at least 0.05 s)\n"
      "  --json     same as --benchmark_format=json\n"
      "  --size N   only content size N (e.g. under callgrind); a --benchmark_filter\n"
      "Any Google Benchmark flag is passed on, e.g. --benchmark_repetitions=20,\n"
      "--benchmark_report_aggregates_only=false, --benchmark_out=FILE\n"
      "--benchmark_out_format=json, --benchmark_filter=REGEX, --benchmark_list_tests.\n");
}

}  // namespace

int main(int argc, char** argv) {
  // Defaults first, so that the same flags given later on the command line win.
  std::vector<std::string> args = {argv[0], "--benchmark_repetitions=7", "--benchmark_min_time=0.05",
                                   "--benchmark_report_aggregates_only=true"};
  const std::size_t first_user_arg = args.size();
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") {
      args.insert(args.begin() + static_cast<long>(first_user_arg), "--benchmark_min_time=0.02");
      args.insert(args.begin() + static_cast<long>(first_user_arg), "--benchmark_repetitions=3");
    } else if (a == "--json") {
      args.push_back("--benchmark_format=json");
    } else if (a == "--size" && i + 1 < argc) {
      args.push_back(std::string("--benchmark_filter=/") + std::to_string(std::atol(argv[++i])) + "(/|$)");
    } else if (a == "--help" || a == "-h") {
      usage();
      return 0;
    } else if (a.rfind("--benchmark_", 0) == 0 || a.rfind("--v=", 0) == 0) {
      args.push_back(a);
    } else {
      std::fprintf(stderr, "ringframe-bench-codec: unknown argument '%s'\n", a.c_str());
      return 2;
    }
  }

  for (std::size_t size : sizes) {
    for (const feed& f : feeds) {
      const std::string suffix = std::string("/") + f.name + "/" + std::to_string(size);
      benchmark::RegisterBenchmark(("decode/ringframe" + suffix).c_str(),
                                   [size, &f](benchmark::State& st) { bench_decode(st, size, f, decode_ours); });
      benchmark::RegisterBenchmark(("decode/memcpy" + suffix).c_str(),
                                   [size, &f](benchmark::State& st) { bench_memcpy(st, size, f); });
#if RINGFRAME_BENCH_NLOHMANN
      benchmark::RegisterBenchmark(("decode/nlohmann" + suffix).c_str(),
                                   [size, &f](benchmark::State& st) { bench_decode(st, size, f, decode_nlohmann); });
#endif
    }
  }
  for (bool as_json : {true, false})
    benchmark::RegisterBenchmark(as_json ? "decode/ringframe/app-request/text-json" : "decode/ringframe/app-request/binary",
                                 [as_json](benchmark::State& st) { bench_app_request(st, as_json); });
  for (std::size_t size : sizes)
    benchmark::RegisterBenchmark(("encode/" + std::to_string(size)).c_str(),
                                 [size](benchmark::State& st) { bench_encode(st, size); });

  std::vector<char*> cargs;
  for (auto& a : args) cargs.push_back(a.data());
  int cargc = static_cast<int>(cargs.size());
  cargs.push_back(nullptr);
  benchmark::Initialize(&cargc, cargs.data());
  if (benchmark::ReportUnrecognizedArguments(cargc, cargs.data())) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
