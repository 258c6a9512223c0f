// Rendering follows encode_messages of encoding_dsv4.py step by step: merge tool messages into
// user turns, sort tool results by call order, resolve drop_thinking (forced off when any message
// carries tools), drop reasoning/developer turns before the last user turn, then render each
// message and the transition after it. The fixed texts below are the release's wording.
#include "tokenizer/chat_encoding.h"

#include <algorithm>
#include <map>

#include "core/error.h"
#include "tokenizer/python_json.h"

namespace clawmine::tokenizer {
namespace {

using Json = nlohmann::ordered_json;

constexpr const char* kReasoningEffortMax =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root "
    "cause, rigorously stress-testing your logic against all potential paths, edge cases, and adversarial "
    "scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered "
    "alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n";

constexpr const char* kResponseFormatPrefix =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

// TOOLS_TEMPLATE with {dsml_token} = ｜DSML｜ and the think tokens substituted; the schemas go
// between kToolsHead and kToolsTail.
constexpr const char* kToolsHead = R"(## Tools

You have access to a set of tools to help answer the user's question. You can invoke tools by writing a "<｜DSML｜tool_calls>" block like the following:

<｜DSML｜tool_calls>
<｜DSML｜invoke name="$TOOL_NAME">
<｜DSML｜parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</｜DSML｜parameter>
...
</｜DSML｜invoke>
<｜DSML｜invoke name="$TOOL_NAME2">
...
</｜DSML｜invoke>
</｜DSML｜tool_calls>

String parameters should be specified as is and set `string="true"`. For all other types (numbers, booleans, arrays, objects), pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning inside <think>...</think> BEFORE any tool calls or final response.

Otherwise, output directly after </think> with tool calls or final response.

### Available Tool Schemas

)";
constexpr const char* kToolsTail = R"(

You MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.
)";

const std::map<std::string, std::string>& task_tokens() {
  static const std::map<std::string, std::string> m = {
      {"action", "<｜action｜>"}, {"query", "<｜query｜>"},  {"authority", "<｜authority｜>"},
      {"domain", "<｜domain｜>"}, {"title", "<｜title｜>"},  {"read_url", "<｜read_url｜>"}};
  return m;
}

struct Block {
  bool tool_result = false;
  std::string text;  // text block text, or tool result content
  std::string tool_use_id;
};

// A message after merge_tool_messages: user turns carry blocks.
struct Turn {
  ChatMessage msg;
  bool has_blocks = false;
  std::vector<Block> blocks;
};

bool is_user_like(const Turn& t) { return t.msg.role == "user" || t.msg.role == "developer"; }

int last_user_index(const std::vector<Turn>& turns) {
  for (int i = static_cast<int>(turns.size()) - 1; i >= 0; --i) {
    if (is_user_like(turns[i])) return i;
  }
  return -1;
}

std::vector<Turn> merge_tool_messages(const std::vector<ChatMessage>& messages) {
  std::vector<Turn> merged;
  for (const ChatMessage& m : messages) {
    const bool into_last = !merged.empty() && merged.back().msg.role == "user" && merged.back().has_blocks;
    if (m.role == "tool") {
      Block b{true, m.content.value_or(""), m.tool_call_id};
      if (into_last) {
        merged.back().blocks.push_back(std::move(b));
      } else {
        Turn t;
        t.msg.role = "user";
        t.has_blocks = true;
        t.blocks.push_back(std::move(b));
        merged.push_back(std::move(t));
      }
    } else if (m.role == "user") {
      Block b{false, m.content.value_or(""), ""};
      if (into_last && !merged.back().msg.task) {
        merged.back().blocks.push_back(std::move(b));
      } else {
        Turn t;
        t.msg.role = "user";
        t.msg.content = m.content.value_or("");
        t.msg.task = m.task;
        t.msg.wo_eos = m.wo_eos;
        t.has_blocks = true;
        t.blocks.push_back(std::move(b));
        merged.push_back(std::move(t));
      }
    } else {
      merged.push_back(Turn{m, false, {}});
    }
  }
  return merged;
}

// Stable-sorts each user turn's tool results by the position of their call in the latest
// assistant turn with tool calls; unknown ids sort as position 0.
void sort_tool_results(std::vector<Turn>& turns) {
  std::map<std::string, size_t> order;
  for (Turn& t : turns) {
    if (t.msg.role == "assistant" && !t.msg.tool_calls.empty()) {
      order.clear();
      for (size_t i = 0; i < t.msg.tool_calls.size(); ++i) {
        if (!t.msg.tool_calls[i].id.empty()) order[t.msg.tool_calls[i].id] = i;
      }
    } else if (t.msg.role == "user" && t.has_blocks) {
      std::vector<Block> results;
      for (const Block& b : t.blocks) if (b.tool_result) results.push_back(b);
      if (results.size() <= 1 || order.empty()) continue;
      std::stable_sort(results.begin(), results.end(), [&](const Block& a, const Block& b) {
        const auto ia = order.find(a.tool_use_id), ib = order.find(b.tool_use_id);
        return (ia == order.end() ? 0 : ia->second) < (ib == order.end() ? 0 : ib->second);
      });
      size_t next = 0;
      for (Block& b : t.blocks) if (b.tool_result) b = results[next++];
    }
  }
}

std::vector<Turn> drop_thinking_turns(const std::vector<Turn>& turns) {
  const int last_user = last_user_index(turns);
  std::vector<Turn> out;
  for (int i = 0; i < static_cast<int>(turns.size()); ++i) {
    const std::string& role = turns[i].msg.role;
    if (role == "user" || role == "system" || role == "tool" || role == "latest_reminder" || i >= last_user) {
      out.push_back(turns[i]);
    } else if (role == "assistant") {
      out.push_back(turns[i]);
      out.back().msg.reasoning_content.clear();
    }
  }
  return out;
}

std::string tools_and_format(const ChatMessage& m) {
  std::string s;
  if (!m.tools.is_null() && !m.tools.empty()) s += "\n\n" + render_tools(m.tools);
  if (!m.response_format.is_null() && !m.response_format.empty()) {
    s += "\n\n" + std::string(kResponseFormatPrefix) + python_json(m.response_format);
  }
  return s;
}

std::string dsml_arguments(const ChatToolCall& call) {
  Json args;
  try {
    args = Json::parse(call.arguments.empty() ? std::string("{}") : call.arguments);
  } catch (const Json::parse_error& e) {
    throw Error(str_cat("tool call '", call.name, "': arguments are not valid JSON: ", e.what()));
  }
  if (!args.is_object()) throw Error(str_cat("tool call '", call.name, "': arguments must be a JSON object"));
  std::string out;
  for (const auto& [key, value] : args.items()) {
    if (!out.empty()) out += "\n";
    const bool is_string = value.is_string();
    out += str_cat("<", tokens::kDsml, "parameter name=\"", key, "\" string=\"", is_string ? "true" : "false", "\">",
                   is_string ? value.get<std::string>() : python_json(value), "</", tokens::kDsml, "parameter>");
  }
  return out;
}

std::string render_tool_calls(const std::vector<ChatToolCall>& calls) {
  std::string invokes;
  for (const ChatToolCall& c : calls) {
    if (!invokes.empty()) invokes += "\n";
    invokes += str_cat("<", tokens::kDsml, "invoke name=\"", c.name, "\">\n", dsml_arguments(c), "\n</", tokens::kDsml,
                       "invoke>");
  }
  return str_cat("\n\n<", tokens::kDsml, "tool_calls>\n", invokes, "\n</", tokens::kDsml, "tool_calls>");
}

std::string render_user_blocks(const Turn& t) {
  std::string out;
  for (size_t i = 0; i < t.blocks.size(); ++i) {
    if (i) out += "\n\n";
    out += t.blocks[i].tool_result ? "<tool_result>" + t.blocks[i].text + "</tool_result>" : t.blocks[i].text;
  }
  return out;
}

std::string render_turn(size_t index, const std::vector<Turn>& turns, const ChatEncodeOptions& o, bool drop) {
  const Turn& t = turns[index];
  const ChatMessage& m = t.msg;
  const int last_user = last_user_index(turns);
  std::string p;
  if (index == 0 && o.thinking && o.reasoning_effort == "max") p += kReasoningEffortMax;

  if (m.role == "system") {
    p += m.content.value_or("") + tools_and_format(m);
  } else if (m.role == "developer") {
    if (!m.content || m.content->empty()) throw Error("developer message needs non-empty content");
    p += tokens::kUser + *m.content + tools_and_format(m);
  } else if (m.role == "user") {
    p += tokens::kUser;
    p += t.has_blocks && !t.blocks.empty() ? render_user_blocks(t) : m.content.value_or("");
  } else if (m.role == "latest_reminder") {
    p += tokens::kLatestReminder + m.content.value_or("");
  } else if (m.role == "assistant") {
    const bool prev_has_task = index > 0 && turns[index - 1].msg.task.has_value();
    std::string thinking;
    if (o.thinking && !prev_has_task && (!drop || static_cast<int>(index) > last_user)) {
      thinking = m.reasoning_content + tokens::kThinkEnd;
    }
    p += thinking + m.content.value_or("");
    if (!m.tool_calls.empty()) p += render_tool_calls(m.tool_calls);
    if (!m.wo_eos) p += tokens::kEos;
  } else {
    throw Error(str_cat("chat message ", index, ": unknown role '", m.role, "'"));
  }

  if (index + 1 < turns.size()) {
    const std::string& next = turns[index + 1].msg.role;
    if (next != "assistant" && next != "latest_reminder") return p;
  }
  if (m.task) {
    const auto it = task_tokens().find(*m.task);
    if (it == task_tokens().end()) throw Error(str_cat("chat message ", index, ": unknown task '", *m.task, "'"));
    if (*m.task != "action") {
      p += it->second;
    } else {
      p += std::string(tokens::kAssistant) + (o.thinking ? tokens::kThinkStart : tokens::kThinkEnd) + it->second;
    }
  } else if (is_user_like(t)) {
    p += tokens::kAssistant;
    const bool think = o.thinking && (!drop || static_cast<int>(index) >= last_user);
    p += think ? tokens::kThinkStart : tokens::kThinkEnd;
  }
  return p;
}

}  // namespace

std::string render_tools(const Json& tools) {
  std::string schemas;
  for (size_t i = 0; i < tools.size(); ++i) {
    const Json& tool = tools[i];
    if (!tool.is_object() || !tool.contains("function")) throw Error(str_cat("tools[", i, "]: field function is missing"));
    if (i) schemas += "\n";
    schemas += python_json(tool["function"]);
  }
  return kToolsHead + schemas + kToolsTail;
}

std::string encode_messages(const std::vector<ChatMessage>& messages, const ChatEncodeOptions& o,
                            const std::vector<ChatMessage>& context) {
  if (!o.reasoning_effort.empty() && o.reasoning_effort != "high" && o.reasoning_effort != "max") {
    throw Error(str_cat("reasoning_effort must be high or max, got '", o.reasoning_effort, "'"));
  }
  std::vector<Turn> ctx = merge_tool_messages(context);
  std::vector<Turn> full = ctx;
  for (Turn& t : merge_tool_messages(messages)) full.push_back(std::move(t));
  sort_tool_results(full);

  std::string prompt = o.add_bos && context.empty() ? tokens::kBos : "";
  bool drop = o.drop_thinking;
  for (const Turn& t : full) {
    if (!t.msg.tools.is_null() && !t.msg.tools.empty()) drop = false;
  }
  size_t first = ctx.size();
  if (o.thinking && drop) {
    full = drop_thinking_turns(full);
    first = drop_thinking_turns(ctx).size();
  }
  for (size_t i = first; i < full.size(); ++i) prompt += render_turn(i, full, o, drop);
  return prompt;
}

std::vector<ChatMessage> parse_chat_messages(const Json& json) {
  const Json& list = json.is_object() && json.contains("messages") ? json["messages"] : json;
  if (!list.is_array()) throw Error("chat messages: expected an array or an object with \"messages\"");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < list.size(); ++i) {
    const Json& j = list[i];
    const std::string where = str_cat("messages[", i, "]");
    if (!j.is_object() || !j.contains("role") || !j["role"].is_string()) {
      throw Error(str_cat(where, ": field role must be a string"));
    }
    ChatMessage m;
    m.role = j["role"];
    if (j.contains("content") && !j["content"].is_null()) {
      const Json& c = j["content"];
      if (c.is_string()) {
        m.content = c.get<std::string>();
      } else if (c.is_array()) {  // content parts, joined like tool-result parts
        std::string text;
        for (size_t k = 0; k < c.size(); ++k) {
          if (k) text += "\n\n";
          const std::string type = c[k].value("type", "");
          text += type == "text" ? c[k].value("text", "") : "[Unsupported " + type + "]";
        }
        m.content = text;
      } else {
        throw Error(str_cat(where, ": field content must be a string, an array or null"));
      }
    }
    for (const char* key : {"reasoning_content", "reasoning"}) {
      if (j.contains(key) && j[key].is_string()) m.reasoning_content = j[key];
    }
    m.tool_call_id = j.value("tool_call_id", "");
    m.name = j.value("name", "");
    if (j.contains("tools")) m.tools = j["tools"];
    if (j.contains("response_format")) m.response_format = j["response_format"];
    if (j.contains("task") && j["task"].is_string()) m.task = j["task"].get<std::string>();
    m.wo_eos = j.value("wo_eos", false);
    if (j.contains("tool_calls") && j["tool_calls"].is_array()) {
      for (size_t k = 0; k < j["tool_calls"].size(); ++k) {
        const Json& tc = j["tool_calls"][k];
        const std::string tw = str_cat(where, ".tool_calls[", k, "]");
        if (!tc.is_object() || !tc.contains("function") || !tc["function"].is_object()) {
          throw Error(str_cat(tw, ": field function must be an object"));
        }
        const Json& f = tc["function"];
        ChatToolCall call;
        call.id = tc.value("id", f.value("id", ""));
        call.name = f.value("name", "");
        if (f.contains("arguments")) {
          call.arguments = f["arguments"].is_string() ? f["arguments"].get<std::string>() : f["arguments"].dump();
        }
        m.tool_calls.push_back(std::move(call));
      }
    }
    out.push_back(std::move(m));
  }
  return out;
}

}  // namespace clawmine::tokenizer
