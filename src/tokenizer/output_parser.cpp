// Grammar of the tool block (what encoding_dsv4.py writes, and what its parser accepts):
//   "\n\n<｜DSML｜tool_calls>" { "\n<｜DSML｜invoke name=\"N\">\n" PARAMS "</｜DSML｜invoke>" }
//   "\n</｜DSML｜tool_calls>"
// where PARAMS is either "\n" (no parameters) or one or more
//   "<｜DSML｜parameter name=\"K\" string=\"true|false\">V</｜DSML｜parameter>\n".
// string="true" values are JSON-quoted; string="false" values are inserted as JSON text when they
// parse as JSON, else quoted. Holding back any suffix that is a prefix of a marker keeps the
// streamed result identical to the whole-text result for every split of the input.
#include "tokenizer/output_parser.h"

#include <set>

#include <nlohmann/json.hpp>

#include "tokenizer/chat_encoding.h"
#include "tokenizer/python_json.h"

namespace clawmine::tokenizer {
namespace {

const std::string kToolsOpen = std::string("<") + tokens::kDsml + "tool_calls>";
const std::string kToolsOpenNl = "\n\n" + kToolsOpen;
const std::string kToolsClose = std::string("</") + tokens::kDsml + "tool_calls>";
const std::string kInvokeOpen = std::string("<") + tokens::kDsml + "invoke name=\"";
const std::string kInvokeClose = std::string("</") + tokens::kDsml + "invoke>";
const std::string kParamOpen = std::string("<") + tokens::kDsml + "parameter name=\"";
const std::string kParamClose = std::string("</") + tokens::kDsml + "parameter>";
const std::string kEos = tokens::kEos;
const std::string kThinkEnd = tokens::kThinkEnd;

// Length of the longest suffix of s that is a proper prefix of one of `markers`.
size_t held_suffix(std::string_view s, std::initializer_list<std::string_view> markers) {
  size_t best = 0;
  for (std::string_view m : markers) {
    for (size_t n = std::min(s.size(), m.size() - 1); n > best; --n) {
      if (s.substr(s.size() - n) == m.substr(0, n)) {
        best = n;
        break;
      }
    }
  }
  return best;
}

enum class Match { kYes, kNeedMore, kNo };

// Does s at pos start with lit? Advances pos on kYes.
Match expect(std::string_view s, size_t& pos, std::string_view lit) {
  const std::string_view rest = s.substr(pos);
  if (rest.size() >= lit.size()) {
    if (rest.substr(0, lit.size()) != lit) return Match::kNo;
    pos += lit.size();
    return Match::kYes;
  }
  return lit.substr(0, rest.size()) == rest ? Match::kNeedMore : Match::kNo;
}

// Text up to the next '"', which must be followed by `after`.
Match quoted(std::string_view s, size_t& pos, std::string_view after, std::string& value) {
  const size_t q = s.find('"', pos);
  if (q == std::string_view::npos) {
    return s.find('\n', pos) == std::string_view::npos ? Match::kNeedMore : Match::kNo;
  }
  size_t p = q + 1;
  const Match m = expect(s, p, after);
  if (m != Match::kYes) return m;
  value = std::string(s.substr(pos, q - pos));
  pos = p;
  return Match::kYes;
}

// Parses one invoke (or the block end) at the front of s.
enum class Invoke { kParsed, kBlockEnd, kNeedMore, kMalformed };
Invoke parse_invoke(std::string_view s, size_t& consumed, ParsedToolCall& call) {
  size_t pos = 0;
  Match m = expect(s, pos, "\n");
  if (m != Match::kYes) return m == Match::kNeedMore ? Invoke::kNeedMore : Invoke::kMalformed;
  size_t end_pos = pos;
  const Match end = expect(s, end_pos, kToolsClose);
  if (end == Match::kYes) {
    consumed = end_pos;
    return Invoke::kBlockEnd;
  }
  m = expect(s, pos, kInvokeOpen);
  if (m != Match::kYes) return (m == Match::kNeedMore || end == Match::kNeedMore) ? Invoke::kNeedMore : Invoke::kMalformed;
  std::string name;
  if ((m = quoted(s, pos, ">\n", name)) != Match::kYes) return m == Match::kNeedMore ? Invoke::kNeedMore : Invoke::kMalformed;

  std::string args;
  std::set<std::string> keys;
  bool any = false;
  for (;;) {
    size_t p = pos;
    const Match close = expect(s, p, kInvokeClose);
    if (close == Match::kYes && any) {
      pos = p;
      break;
    }
    p = pos;
    const Match empty = any ? Match::kNo : expect(s, p, "\n" + kInvokeClose);
    if (empty == Match::kYes) {
      pos = p;
      break;
    }
    p = pos;
    const Match param = expect(s, p, kParamOpen);
    if (param == Match::kNeedMore || (any && close == Match::kNeedMore) || empty == Match::kNeedMore) {
      return Invoke::kNeedMore;
    }
    if (param == Match::kNo) return Invoke::kMalformed;
    std::string key, flag;
    if ((m = quoted(s, p, " string=\"", key)) != Match::kYes) return m == Match::kNeedMore ? Invoke::kNeedMore : Invoke::kMalformed;
    if ((m = quoted(s, p, ">", flag)) != Match::kYes) return m == Match::kNeedMore ? Invoke::kNeedMore : Invoke::kMalformed;
    if ((flag != "true" && flag != "false") || !keys.insert(key).second) return Invoke::kMalformed;
    const size_t value_end = s.find(kParamClose, p);
    if (value_end == std::string_view::npos) return Invoke::kNeedMore;
    const std::string value(s.substr(p, value_end - p));
    p = value_end + kParamClose.size();
    if ((m = expect(s, p, "\n")) != Match::kYes) return m == Match::kNeedMore ? Invoke::kNeedMore : Invoke::kMalformed;
    std::string json_value = python_json(value);
    if (flag == "false" && nlohmann::json::accept(value)) json_value = value;
    args += (any ? ", " : "") + python_json(key) + ": " + json_value;
    any = true;
    pos = p;
  }
  call = ParsedToolCall{name, "{" + args + "}"};
  consumed = pos;
  return Invoke::kParsed;
}

}  // namespace

OutputParser::OutputParser(bool thinking) : state_(thinking ? State::kReasoning : State::kContent) {}

void OutputParser::emit_reasoning(ParseDelta& d, std::string_view s) {
  d.reasoning_content += s;
  message_.reasoning_content += s;
}

void OutputParser::emit_content(ParseDelta& d, std::string_view s) {
  d.content += s;
  message_.content += s;
}

ParseDelta OutputParser::feed(std::string_view piece) {
  ParseDelta d;
  if (state_ == State::kDone) return d;
  buffer_ += piece;
  step(d, false);
  return d;
}

ParseDelta OutputParser::finish() {
  ParseDelta d;
  step(d, true);
  return d;
}

void OutputParser::step(ParseDelta& d, bool final) {
  for (;;) {
    if (state_ == State::kDone) {
      buffer_.clear();
      return;
    }
    if (state_ == State::kReasoning) {
      const size_t end = buffer_.find(kThinkEnd), eos = buffer_.find(kEos);
      if (eos != std::string::npos && (end == std::string::npos || eos < end)) {
        emit_reasoning(d, std::string_view(buffer_).substr(0, eos));
        state_ = State::kDone;
        continue;
      }
      if (end != std::string::npos) {
        emit_reasoning(d, std::string_view(buffer_).substr(0, end));
        buffer_.erase(0, end + kThinkEnd.size());
        state_ = State::kContent;
        continue;
      }
      const size_t hold = final ? 0 : held_suffix(buffer_, {kThinkEnd, kEos});
      emit_reasoning(d, std::string_view(buffer_).substr(0, buffer_.size() - hold));
      buffer_.erase(0, buffer_.size() - hold);
      return;
    }
    if (state_ == State::kContent || state_ == State::kRawContent) {
      const size_t eos = buffer_.find(kEos);
      const size_t open = state_ == State::kContent ? buffer_.find(kToolsOpen) : std::string::npos;
      if (eos != std::string::npos && (open == std::string::npos || eos < open)) {
        emit_content(d, std::string_view(buffer_).substr(0, eos));
        state_ = State::kDone;
        continue;
      }
      if (open != std::string::npos) {
        const bool newlines = open >= 2 && buffer_.compare(open - 2, 2, "\n\n") == 0;
        const size_t text_end = newlines ? open - 2 : open;
        emit_content(d, std::string_view(buffer_).substr(0, text_end));
        block_raw_ = buffer_.substr(text_end, open + kToolsOpen.size() - text_end);
        buffer_.erase(0, open + kToolsOpen.size());
        state_ = State::kToolCalls;
        continue;
      }
      const size_t hold = final ? 0
                          : state_ == State::kContent ? held_suffix(buffer_, {kToolsOpenNl, kToolsOpen, kEos})
                                                      : held_suffix(buffer_, {kEos});
      emit_content(d, std::string_view(buffer_).substr(0, buffer_.size() - hold));
      buffer_.erase(0, buffer_.size() - hold);
      return;
    }
    // kToolCalls
    if (!parse_invokes(d, final)) {
      // Malformed or truncated: the block's unparsed text is content from here on.
      buffer_ = block_raw_ + buffer_;
      block_raw_.clear();
      state_ = State::kRawContent;
      continue;
    }
    if (state_ == State::kToolCalls) return;
  }
}

bool OutputParser::parse_invokes(ParseDelta& d, bool final) {
  for (;;) {
    // EOS inside the block truncates it: only text before EOS is considered.
    const size_t eos = buffer_.find(kEos);
    const std::string_view view = std::string_view(buffer_).substr(0, eos == std::string::npos ? buffer_.size() : eos);
    size_t consumed = 0;
    ParsedToolCall call;
    const Invoke r = parse_invoke(view, consumed, call);
    if (r == Invoke::kMalformed || (r == Invoke::kNeedMore && (final || eos != std::string::npos))) return false;
    if (r == Invoke::kNeedMore) return true;
    if (r == Invoke::kParsed) {
      d.tool_calls.emplace_back(message_.tool_calls.size(), call);
      message_.tool_calls.push_back(std::move(call));
      buffer_.erase(0, consumed);
      block_raw_.clear();  // a malformed later part re-emits only text after this invoke
      continue;
    }
    // Block end: what follows (normally just EOS) is plain content.
    buffer_.erase(0, consumed);
    block_raw_.clear();
    state_ = State::kRawContent;
    return true;
  }
}

ParsedMessage parse_completion(std::string_view text, bool thinking) {
  OutputParser p(thinking);
  p.feed(text);
  p.finish();
  return p.message();
}

}  // namespace clawmine::tokenizer
