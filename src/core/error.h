// One exception type for load-time and request-time failures, and the few assertion macros.
// Library code throws clawmine::Error with a message that names the thing (file, tensor,
// field, flag); only apps/ decides to print and exit. CLAWMINE_CHECK is for invariants and
// adds file:line and the condition text.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace clawmine {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Concatenates any streamable values: str_cat("tensor ", name, " has ", n, " dims").
template <typename... Args>
std::string str_cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

[[noreturn]] void throw_check_failure(const char* file, int line, const char* cond,
                                      const std::string& message);

}  // namespace clawmine

#define CLAWMINE_CHECK(cond, ...)                                                        \
  do {                                                                                   \
    if (!(cond)) ::clawmine::throw_check_failure(__FILE__, __LINE__, #cond,               \
                                                 ::clawmine::str_cat(__VA_ARGS__));      \
  } while (0)
