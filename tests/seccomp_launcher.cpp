// ringframe-seccomp-run: run a program with io_uring refused, as Docker's
// default seccomp profile refuses it.
//
// It installs a seccomp BPF filter under which io_uring_setup (425),
// io_uring_enter (426) and io_uring_register (427) fail with EPERM and every
// other system call is allowed, then execvp()s the program. The filter is
// kept across execve and inherited by every thread and child the program
// creates; nothing can remove it. Written by hand (no libseccomp) so the test
// suite needs nothing more than the kernel headers.
//
// The filter first checks seccomp_data.arch: syscall numbers are only
// meaningful for one ABI, so a call made through another one (a 32-bit i386
// or AArch32 program) is allowed, not misjudged; the launcher warns when the
// program it is asked to run is such a foreign binary. On x86-64 the x32 ABI
// reports AUDIT_ARCH_X86_64 with __X32_SYSCALL_BIT set in the number; that bit
// is cleared before the comparison, so x32 io_uring calls are refused too.
#include <elf.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr const char* prog_name = "ringframe-seccomp-run";

const char* const usage_text =
    "Usage: ringframe-seccomp-run [--] PROGRAM [ARGS...]\n"
    "\n"
    "Run PROGRAM (looked up in PATH as execvp does) with io_uring refused, the way\n"
    "Docker's default seccomp profile refuses it: a seccomp filter makes\n"
    "io_uring_setup (425), io_uring_enter (426) and io_uring_register (427) fail\n"
    "with EPERM and allows every other system call. The filter is inherited by\n"
    "every thread and child of PROGRAM and cannot be removed. It applies to the\n"
    "native ABI only (x86-64, including x32, or AArch64); a program of another\n"
    "ABI (a 32-bit binary) is run unfiltered, with a warning.\n"
    "\n"
    "Options (before PROGRAM only; everything after it is PROGRAM's):\n"
    "  -h, --help   show this help and exit\n"
    "  --           end of options (for a PROGRAM whose name starts with '-')\n"
    "\n"
    "Exit status: PROGRAM's; 1 if the filter cannot be installed, 2 for bad usage,\n"
    "126 if PROGRAM cannot be executed, 127 if it is not found.\n";

constexpr std::uint32_t nr_io_uring_setup = 425;
constexpr std::uint32_t nr_io_uring_enter = 426;
constexpr std::uint32_t nr_io_uring_register = 427;

#if defined(__x86_64__)
constexpr bool arch_supported = true;
constexpr std::uint32_t native_arch = AUDIT_ARCH_X86_64;
constexpr const char* native_arch_name = "x86-64";
constexpr std::uint32_t nr_mask = ~std::uint32_t{0x40000000};  // __X32_SYSCALL_BIT
#elif defined(__aarch64__)
constexpr bool arch_supported = true;
constexpr std::uint32_t native_arch = AUDIT_ARCH_AARCH64;
constexpr const char* native_arch_name = "AArch64";
constexpr std::uint32_t nr_mask = ~std::uint32_t{0};
#else
constexpr bool arch_supported = false;
constexpr std::uint32_t native_arch = 0;
constexpr const char* native_arch_name = "this architecture";
constexpr std::uint32_t nr_mask = ~std::uint32_t{0};
#endif

constexpr sock_filter stmt(std::uint16_t code, std::uint32_t k) { return sock_filter{code, 0, 0, k}; }
constexpr sock_filter jump(std::uint16_t code, std::uint32_t k, std::uint8_t jt, std::uint8_t jf) {
  return sock_filter{code, jt, jf, k};
}

std::vector<sock_filter> build_filter() {
  std::vector<sock_filter> f;
  // A foreign ABI numbers its system calls differently: allow, do not misjudge.
  f.push_back(stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)));
  f.push_back(jump(BPF_JMP | BPF_JEQ | BPF_K, native_arch, 1, 0));
  f.push_back(stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  f.push_back(stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)));
  if (nr_mask != ~std::uint32_t{0}) f.push_back(stmt(BPF_ALU | BPF_AND | BPF_K, nr_mask));
  // Three comparisons, each jumping to the EPERM return after the ALLOW one.
  f.push_back(jump(BPF_JMP | BPF_JEQ | BPF_K, nr_io_uring_setup, 3, 0));
  f.push_back(jump(BPF_JMP | BPF_JEQ | BPF_K, nr_io_uring_enter, 2, 0));
  f.push_back(jump(BPF_JMP | BPF_JEQ | BPF_K, nr_io_uring_register, 1, 0));
  f.push_back(stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  f.push_back(stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)));
  return f;
}

[[noreturn]] void fail(const std::string& what, int exit_code = 1) {
  std::fprintf(stderr, "%s: %s\n", prog_name, what.c_str());
  std::exit(exit_code);
}

void install_filter() {
  if (!arch_supported)
    fail(std::string("unsupported architecture: the io_uring syscall numbers and the seccomp "
                     "audit architecture are only known for x86-64 and AArch64 (") +
         native_arch_name + "); not running the program unfiltered");
  std::vector<sock_filter> f = build_filter();
  sock_fprog prog{static_cast<unsigned short>(f.size()), f.data()};
  // Without no_new_privs an unprivileged process may not install a filter
  // (a setuid program could otherwise be run under a filter it does not expect).
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1L, 0L, 0L, 0L) != 0)
    fail(std::string("prctl(PR_SET_NO_NEW_PRIVS) failed: ") + std::strerror(errno));
  if (::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0L, 0L) != 0) {
    int e = errno;
    std::string why = std::strerror(e);
    if (e == EINVAL) why += " (is the kernel built without CONFIG_SECCOMP_FILTER?)";
    if (e == EACCES) why += " (no_new_privs is not set and CAP_SYS_ADMIN is missing)";
    fail("prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER) failed: " + why);
  }
}

// Where execvp will find PROGRAM, or "" if nowhere (execvp then reports why).
std::string resolve(const char* program) {
  if (std::strchr(program, '/')) return program;
  const char* path = std::getenv("PATH");
  std::string_view rest = path ? path : "/usr/local/bin:/bin:/usr/bin";
  for (;;) {
    std::size_t colon = rest.find(':');
    std::string dir(rest.substr(0, colon));
    std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + program;
    struct stat st{};
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(candidate.c_str(), X_OK) == 0)
      return candidate;
    if (colon == std::string_view::npos) return "";
    rest.remove_prefix(colon + 1);
  }
}

// The filter only judges the native ABI. Warn when PROGRAM is an ELF binary of
// another one, so a run that is not what it seems does not pass silently.
void warn_if_foreign(const char* program) {
  std::string file = resolve(program);
  if (file.empty()) return;
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;  // execvp will say what is wrong
  unsigned char ident[20] = {};
  ssize_t n = ::read(fd, ident, sizeof ident);
  ::close(fd);
  if (n != static_cast<ssize_t>(sizeof ident) || std::memcmp(ident, ELFMAG, SELFMAG) != 0) return;  // a script, ...
  unsigned machine = ident[EI_DATA] == ELFDATA2MSB ? (ident[18] << 8 | ident[19]) : (ident[19] << 8 | ident[18]);
#if defined(__x86_64__)
  bool native = machine == EM_X86_64;  // 64-bit or x32: both report AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
  bool native = machine == EM_AARCH64 && ident[EI_CLASS] == ELFCLASS64;
#else
  bool native = true;
#endif
  if (!native)
    std::fprintf(stderr,
                 "%s: warning: %s is not a binary for %s (ELF machine %u, class %u): its system calls have another "
                 "audit architecture and numbering, so the filter allows them and io_uring is NOT refused for it\n",
                 prog_name, file.c_str(), native_arch_name, machine, unsigned(ident[EI_CLASS]));
}

}  // namespace

int main(int argc, char** argv) {
  int first = 1;
  for (; first < argc; ++first) {
    std::string_view a = argv[first];
    if (a == "-h" || a == "--help") {
      std::fputs(usage_text, stdout);
      return 0;
    }
    if (a == "--") {
      ++first;
      break;
    }
    if (a.size() > 1 && a[0] == '-') {
      std::fprintf(stderr, "%s: unknown option '%s' (options go before PROGRAM; see --help)\n", prog_name, argv[first]);
      return 2;
    }
    break;
  }
  if (first >= argc) {
    std::fprintf(stderr, "%s: no PROGRAM given\nUsage: %s [--] PROGRAM [ARGS...]\n", prog_name, prog_name);
    return 2;
  }
  install_filter();
  warn_if_foreign(argv[first]);
  ::execvp(argv[first], argv + first);
  int e = errno;
  fail(std::string("cannot run '") + argv[first] + "': " + std::strerror(e), e == ENOENT ? 127 : 126);
}
