// Duplicate keys are found with nlohmann's parser callback: one frame per open object or
// array, each object frame remembering the keys seen so far.
#include "io/json_parse.h"

#include <set>
#include <vector>

#include "core/error.h"

namespace clawmine::io {

namespace {

struct Frame {
  bool is_object = false;
  std::string name;  // key under which this value sits in its parent object, "" otherwise
  std::set<std::string> keys;
};

std::string describe_duplicate(const std::vector<Frame>& stack, const std::string& key,
                               const std::string& top_level_noun) {
  if (stack.size() <= 1) return str_cat("duplicate ", top_level_noun, " \"", key, "\"");
  return str_cat("duplicate key \"", key, "\" in object \"", stack.back().name, "\"");
}

}  // namespace

nlohmann::json parse_json_strict(std::string_view text, const std::string& source,
                                 const std::string& top_level_noun) {
  using nlohmann::json;
  std::vector<Frame> stack;
  std::string pending_key, duplicate;
  auto callback = [&](int, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start: {
        Frame f;
        f.is_object = event == json::parse_event_t::object_start;
        if (!stack.empty() && stack.back().is_object) f.name = pending_key;
        stack.push_back(std::move(f));
        break;
      }
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!stack.empty()) stack.pop_back();
        break;
      case json::parse_event_t::key:
        pending_key = parsed.get<std::string>();
        if (duplicate.empty() && !stack.empty() && !stack.back().keys.insert(pending_key).second) {
          duplicate = describe_duplicate(stack, pending_key, top_level_noun);
        }
        break;
      case json::parse_event_t::value:
        break;
    }
    return true;
  };
  json result;
  try {
    result = json::parse(text.begin(), text.end(), callback);
  } catch (const json::exception& e) {
    std::string what = e.what();  // may quote raw header bytes: keep the message one printable line
    for (char& c : what) {
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
    }
    throw Error(str_cat(source, ": invalid JSON: ", what));
  }
  if (!duplicate.empty()) throw Error(str_cat(source, ": ", duplicate));
  return result;
}

}  // namespace clawmine::io
