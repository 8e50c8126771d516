// Tests that must not take the suite with them (out-of-memory turns, a
// possible std::terminate or hang) run in a child process: `run` returns 0
// when all went right, another code saying what did not; an exception out
// of it is code 6. A signal (an abort, or the alarm that bounds a hang)
// fails the check and is reported.
#pragma once

#include <doctest/doctest.h>

#include <csignal>

#include <sys/wait.h>
#include <unistd.h>

namespace testing {

template <class F>
int exit_code_in_child(F run, unsigned alarm_seconds = 60) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::signal(SIGABRT, SIG_DFL);  // not doctest's handler: the parent reports
    std::signal(SIGALRM, SIG_DFL);
    ::alarm(alarm_seconds);
    int code = 1;
    try {
      code = run();
    } catch (...) {
      code = 6;
    }
    ::_exit(code);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK_FALSE(WIFSIGNALED(status));
  if (WIFSIGNALED(status)) MESSAGE("the child died of signal " << WTERMSIG(status));
  REQUIRE(WIFEXITED(status));
  return WEXITSTATUS(status);
}

// The same, checking that it exited 0.
template <class F>
void check_in_child(F run) {
  CHECK(exit_code_in_child(run) == 0);
}

}  // namespace testing
