#include "core/error.h"

namespace clawmine {

void throw_check_failure(const char* file, int line, const char* cond, const std::string& message) {
  throw Error(str_cat(message.empty() ? std::string("internal check failed") : message, " [", cond,
                      " at ", file, ":", line, "]"));
}

}  // namespace clawmine
