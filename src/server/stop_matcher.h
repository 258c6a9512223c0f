// Stop strings over streamed text: text that could be the start of a stop string is held back
// until the next piece decides, so a stop string is never emitted, not even split across tokens.
// After a match, everything from the stop string on is dropped.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace clawmine::server {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}

  // Text that is now safe to emit.
  std::string feed(std::string_view text);
  // End of output: the held-back text (nothing after a match).
  std::string finish();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace clawmine::server
